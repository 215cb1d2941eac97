//! Capturing what a task prints: [`Pool::apply_captured`](crate::Pool::apply_captured) and
//! [`Pool::map_captured`](crate::Pool::map_captured).
//!
//! Around each call the worker points its stdout and stderr (fds 1 and 2) at two fresh
//! anonymous files, then puts the real streams back and returns the files' contents with the
//! result. Everything the task's process writes meanwhile is captured: `println!`, C code's
//! `printf`, threads the task started.

use std::borrow::Cow;
use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::panic::{self, AssertUnwindSafe};

use serde::{Deserialize, Serialize};

use crate::sys;
use crate::task::fnref::Callable;

/// A task's result with what it wrote to stdout and stderr while it ran.
///
/// # Examples
/// ```
/// use mproc::Pool;
///
/// fn shout(word: String) -> usize {
///     println!("{}!", word.to_uppercase());
///     word.len()
/// }
///
/// let pool = Pool::new(2)?;
/// let c = pool.apply_captured(shout, "hello".to_string())?;
/// assert_eq!(c.value, 5);
/// assert_eq!(c.stdout_text(), "HELLO!\n");
/// assert!(c.stderr.is_empty());
/// # Ok::<(), mproc::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Captured<R> {
    /// What the function returned.
    pub value: R,
    /// The bytes it wrote to stdout.
    pub stdout: Vec<u8>,
    /// The bytes it wrote to stderr.
    pub stderr: Vec<u8>,
}

impl<R> Captured<R> {
    /// [`stdout`](Captured::stdout) as text (invalid UTF-8 shown as `U+FFFD`).
    pub fn stdout_text(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.stdout)
    }

    /// [`stderr`](Captured::stderr) as text (invalid UTF-8 shown as `U+FFFD`).
    pub fn stderr_text(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.stderr)
    }
}

/// A task function whose output is captured: the same `fn` pointer, another trampoline.
///
/// The worker rebuilds it from the `fn` pointer that travels (`Callable::from_ptr`).
#[derive(Clone, Copy)]
pub(crate) struct CaptureOutput<F>(pub(crate) F);

impl<F: Callable> Callable for CaptureOutput<F> {
    type Args = F::Args;
    type Out = Captured<F::Out>;

    fn invoke(self, args: F::Args) -> Captured<F::Out> {
        let redirect = match Redirect::begin() {
            Ok(r) => r,
            // Cannot capture (out of fds, no memfd): a clear panic, reported as the task's.
            Err(e) => panic!("mproc cannot capture the task's output: {e}"),
        };
        let value = panic::catch_unwind(AssertUnwindSafe(|| self.0.invoke(args)));
        let (stdout, stderr) = redirect.end();
        match value {
            Ok(value) => Captured {
                value,
                stdout,
                stderr,
            },
            Err(payload) => {
                // Not lost: a failed task's output goes where it would have gone uncaptured.
                let _ = io::stdout().write_all(&stdout);
                let _ = io::stdout().flush();
                let _ = io::stderr().write_all(&stderr);
                panic::resume_unwind(payload)
            }
        }
    }

    type Ptr = F::Ptr;
    fn ptr(self) -> F::Ptr {
        self.0.ptr()
    }
    fn from_ptr(ptr: F::Ptr) -> Self {
        CaptureOutput(F::from_ptr(ptr))
    }
}

/// Fds 1 and 2 pointed at capture files, with the real streams saved.
struct Redirect {
    saved: [OwnedFd; 2],
    files: [File; 2],
}

impl Redirect {
    fn begin() -> io::Result<Redirect> {
        flush_std();
        let saved = [
            io::stdout().as_fd().try_clone_to_owned()?,
            io::stderr().as_fd().try_clone_to_owned()?,
        ];
        let files = [
            File::from(sys::shm::payload_file("stdout")?),
            File::from(sys::shm::payload_file("stderr")?),
        ];
        for (target, f) in [1, 2].into_iter().zip(&files) {
            sys::dup_to(f.as_fd(), target)?;
        }
        Ok(Redirect { saved, files })
    }

    /// Puts the real streams back and reads what was captured.
    fn end(self) -> (Vec<u8>, Vec<u8>) {
        flush_std();
        let [mut out, mut err] = self.files;
        for (target, s) in [1, 2].into_iter().zip(&self.saved) {
            // Cannot fail for an open fd and a target below the fd limit.
            let _ = sys::dup_to(s.as_fd(), target);
        }
        (read_all(&mut out), read_all(&mut err))
    }
}

fn flush_std() {
    let _ = io::stdout().flush();
    let _ = io::stderr().flush();
}

fn read_all(f: &mut File) -> Vec<u8> {
    let mut buf = Vec::new();
    if f.rewind().is_ok() {
        let _ = f.read_to_end(&mut buf);
    }
    buf
}
