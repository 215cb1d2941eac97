//! [`Process`]: one function call in a child process, Python's `multiprocessing.Process`.

mod current;
pub(crate) mod forkserver;
pub(crate) mod launch;

pub use current::{ProcessInfo, active_children, current_process, parent_process};

use std::ffi::OsString;
use std::fmt;
use std::marker::PhantomData;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, ExitStatus, Result};
use crate::sys;
use crate::task::fnref::FnRef;
use crate::task::reply::{self, Classified};
use crate::task::run::{self, Large};
use crate::wire::codec::{Op, Role};
use crate::wire::frame::{self, FrameError, FrameReader};
use crate::wire::{codec, fds, msg};

/// How a new process is created.
///
/// All three run the same function the same way and report the same errors; they differ in
/// speed and in what the child inherits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StartMethod {
    /// The default on Linux. On first use, one clean *fork server* is started by re-executing
    /// this program; each new process is then forked from that server, not from the caller.
    /// Fast (a fork of a small process) and safe whatever threads and memory the caller has.
    /// The child sees the environment as it was when the server started, plus
    /// [`Builder::env`].
    ForkServer,
    /// Re-execute this program for every process. The slowest (an `exec` and the dynamic
    /// loader, about a millisecond) and the most isolated: nothing but the environment, the
    /// argument and stdio is inherited. The default where there is no fork server.
    Spawn,
    /// `fork` the calling process: the child sees a copy of the parent's memory at the moment
    /// of the call. About as fast as the fork server for a small parent (measured in
    /// `benches/process.rs`), and slower the more memory the parent has touched.
    ///
    /// The child inherits the parent's open fds, as with Python's `fork`, except the ends of
    /// mproc pipes: it lets go of its copies at once, so that when the parent drops its end of
    /// a [`pipe`](crate::pipe), the other end sees the hang-up (in Python, a forked child's
    /// copy keeps it open and a reader waits forever). Ends it is given in its argument
    /// arrive as usual.
    ///
    /// # Hazards
    /// Only the forking thread is copied. A lock that another thread held at that moment (a
    /// `Mutex` in the parent, a lock inside a C library, the stdout lock while another thread
    /// prints) stays locked forever in the child, which then deadlocks if it takes it. glibc's
    /// own locks (malloc, stdio) are reset. Forking a parent with gigabytes of touched memory
    /// costs tens of milliseconds. Python changed its default away from `fork` for these
    /// reasons; prefer [`ForkServer`](StartMethod::ForkServer).
    Fork,
}

/// The environment variable that overrides the default start method.
pub(crate) const START_METHOD_ENV: &str = "MPROC_START_METHOD";

impl Default for StartMethod {
    /// [`ForkServer`](StartMethod::ForkServer) on Linux, [`Spawn`](StartMethod::Spawn)
    /// elsewhere; the environment variable `MPROC_START_METHOD` (`forkserver`, `spawn` or
    /// `fork`, in any case) overrides it, which lets a whole test suite run under each method.
    ///
    /// Any other value is refused, as Python's `set_start_method` raises `ValueError`: while
    /// it is set, [`Process::spawn`] fails with [`ErrorKind::Usage`](crate::ErrorKind::Usage)
    /// and a pool's workers cannot start (its tasks fail with
    /// [`ErrorKind::Broken`](crate::ErrorKind::Broken) saying why), whatever start method
    /// they ask for. `default()` itself cannot fail: it then returns the platform's default.
    fn default() -> StartMethod {
        StartMethod::from_env()
            .ok()
            .flatten()
            .unwrap_or_else(StartMethod::platform_default)
    }
}

impl std::str::FromStr for StartMethod {
    type Err = Error;

    /// Python's names, in any case: `"forkserver"`, `"spawn"`, `"fork"`.
    ///
    /// # Errors
    /// [`ErrorKind::Usage`](crate::ErrorKind::Usage) for any other name, and for
    /// `"forkserver"` where there is no fork server.
    ///
    /// # Examples
    /// ```
    /// use mproc::StartMethod;
    ///
    /// assert_eq!("Spawn".parse::<StartMethod>()?, StartMethod::Spawn);
    /// assert!("bogus".parse::<StartMethod>().is_err());
    /// # Ok::<(), mproc::Error>(())
    /// ```
    fn from_str(name: &str) -> Result<StartMethod> {
        match name.to_ascii_lowercase().as_str() {
            "forkserver" if sys::HAS_FORK_SERVER => Ok(StartMethod::ForkServer),
            "forkserver" => Err(Error::usage(
                "the forkserver start method is not available on this platform",
            )),
            "spawn" => Ok(StartMethod::Spawn),
            "fork" => Ok(StartMethod::Fork),
            _ => Err(Error::usage(
                "unknown start method: expected forkserver, spawn or fork (in any case)",
            )),
        }
    }
}

impl StartMethod {
    fn platform_default() -> StartMethod {
        if sys::HAS_FORK_SERVER {
            StartMethod::ForkServer
        } else {
            StartMethod::Spawn
        }
    }

    /// The method `MPROC_START_METHOD` names: `None` when it is unset or empty.
    ///
    /// # Errors
    /// [`ErrorKind::Usage`](crate::ErrorKind::Usage), naming the variable, when it names no
    /// start method of this platform.
    pub(crate) fn from_env() -> Result<Option<StartMethod>> {
        let Some(value) = std::env::var_os(START_METHOD_ENV) else {
            return Ok(None);
        };
        if value.is_empty() {
            return Ok(None);
        }
        match value.to_str().map(str::parse::<StartMethod>) {
            Some(Ok(m)) => Ok(Some(m)),
            _ => Err(Error::usage(format!(
                "MPROC_START_METHOD={value:?} names no start method (expected forkserver, spawn or fork, in any case)"
            ))),
        }
    }

    /// The method to use: `explicit`, or the default. Fails while `MPROC_START_METHOD` holds
    /// an invalid value, even with an explicit method (see [`StartMethod::default`]).
    ///
    /// # Errors
    /// As [`StartMethod::from_env`].
    pub(crate) fn resolve(explicit: Option<StartMethod>) -> Result<StartMethod> {
        let from_env = StartMethod::from_env()?;
        Ok(explicit
            .or(from_env)
            .unwrap_or_else(StartMethod::platform_default))
    }

    /// Every start method available on this platform.
    pub fn all() -> &'static [StartMethod] {
        if sys::HAS_FORK_SERVER {
            &[
                StartMethod::ForkServer,
                StartMethod::Spawn,
                StartMethod::Fork,
            ]
        } else {
            &[StartMethod::Spawn, StartMethod::Fork]
        }
    }
}

/// What a child's standard stream is connected to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Stdio {
    /// The parent's stream, as it is when the process starts.
    #[default]
    Inherit,
    /// `/dev/null`.
    Null,
    /// The parent's stream, each line prefixed with the process's name and pid, as in
    /// `[PoolWorker 4242] started`. Lines are relayed whole by a thread of the parent, so
    /// output of many processes never tears mid-line, and a line written just before a process
    /// is killed is still printed. [`Process::join`] and the pool's calls return after the
    /// lines written before the answer are printed. For stdout and stderr; stdin takes it as
    /// [`Inherit`](Stdio::Inherit).
    Prefixed,
}

static NEXT_ID: AtomicUsize = AtomicUsize::new(1);

/// Configures and starts a [`Process`]; Python's `Process(name=..., ...)` keywords.
///
/// # Examples
/// ```
/// use mproc::{Process, StartMethod, Stdio};
///
/// fn greet(who: String) -> String {
///     format!("hello, {who}, from {}", std::env::var("GREETING_FROM").unwrap())
/// }
///
/// let mut p = Process::builder()
///     .name("greeter")
///     .start_method(StartMethod::Spawn)
///     .env("GREETING_FROM", "a child")
///     .stdout(Stdio::Null)
///     .spawn(greet, "world".to_string())?;
/// assert_eq!(p.name(), "greeter");
/// assert_eq!(p.join()?, "hello, world, from a child");
/// # Ok::<(), mproc::Error>(())
/// ```
#[derive(Clone, Debug, Default)]
#[must_use = "a builder does nothing until `spawn` is called"]
pub struct Builder {
    name: Option<String>,
    start_method: Option<StartMethod>,
    spec: launch::Spec,
}

impl Builder {
    /// A builder with the defaults: a generated name (`Process-N`), the default start method,
    /// the parent's environment, stdin from `/dev/null` (as Python does) and stdout/stderr
    /// inherited.
    pub fn new() -> Builder {
        let mut b = Builder::default();
        b.spec.stdio[0] = Stdio::Null;
        b
    }
    /// The process's name, returned by [`Process::name`].
    pub fn name(mut self, name: impl Into<String>) -> Builder {
        self.name = Some(name.into());
        self
    }
    /// How the process is created; see [`StartMethod`].
    pub fn start_method(mut self, method: StartMethod) -> Builder {
        self.start_method = Some(method);
        self
    }
    /// Sets an environment variable in the child, on top of the inherited environment.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Builder {
        self.spec.env.push((key.into(), value.into()));
        self
    }
    /// The child's standard input (default [`Stdio::Null`], as in Python).
    ///
    /// [`Stdio::Inherit`] suits a pipe or a file. A terminal cannot be shared: the child leads
    /// its own process group, never the terminal's foreground one, so its reads of the terminal
    /// fail (`EIO`) instead of stealing what the user types.
    pub fn stdin(mut self, s: Stdio) -> Builder {
        self.spec.stdio[0] = s;
        self
    }
    /// The child's standard output (default [`Stdio::Inherit`]).
    pub fn stdout(mut self, s: Stdio) -> Builder {
        self.spec.stdio[1] = s;
        self
    }
    /// The child's standard error (default [`Stdio::Inherit`]).
    pub fn stderr(mut self, s: Stdio) -> Builder {
        self.spec.stdio[2] = s;
        self
    }

    /// Starts a child process running `f(arg)`.
    ///
    /// `f` must be a `fn` item or a closure that captures nothing: pass data as the argument.
    ///
    /// # Errors
    /// [`ErrorKind::Codec`](crate::ErrorKind::Codec) if `arg` cannot be serialized;
    /// [`ErrorKind::Io`](crate::ErrorKind::Io) if the OS refuses to create the process;
    /// [`ErrorKind::Usage`](crate::ErrorKind::Usage) when called in a process that mproc
    /// started but whose constructor did not run (see [`crate::init`]), or while
    /// `MPROC_START_METHOD` names no start method (see [`StartMethod::default`]).
    pub fn spawn<A, R>(self, f: fn(A) -> R, arg: A) -> Result<Process<R>>
    where
        A: Serialize + DeserializeOwned,
        R: Serialize + DeserializeOwned,
    {
        if crate::child::marker_unconsumed() {
            return Err(Error::usage(
                "this process was started as an mproc worker but mproc's constructor did not run; call mproc::init() first in main",
            ));
        }
        let name = self
            .name
            .unwrap_or_else(|| format!("Process-{}", NEXT_ID.fetch_add(1, Ordering::Relaxed)));
        let method = StartMethod::resolve(self.start_method)?;
        let func =
            FnRef::new(f).ok_or_else(|| Error::usage(crate::sys::fnptr::NOT_IN_MAIN_IMAGE))?;
        let (run, fds) = run::encode::<A>(msg::FLAG_LAST, func, &arg, Role::Argument, Large::Spill)
            .map_err(Error::codec)?;
        let mut spec = self.spec;
        spec.env
            .push((current::NAME_ENV.into(), name.clone().into()));
        let parent_name = current::own_name();
        spec.env
            .push((current::PARENT_NAME_ENV.into(), parent_name.into()));
        // The task goes in the socket before the child exists, unless fds go with it (they
        // travel in an `Fds` frame of their own, written after).
        let first: &[u8] = if fds.is_empty() { &run } else { &[] };
        let launched = launch::launch_primed(method, &spec, first)
            .map_err(|e| Error::io("cannot start a process", e))?;
        let primed = launched.primed;
        current::register(launched.child.pid() as u32, &name);
        let p = Process {
            child: launched.child,
            name,
            sock: Some(launched.sock),
            reader: FrameReader::new(frame::DEFAULT_LIMIT),
            received: fds::Received::default(),
            last_words: None,
            state: Collected::Running,
            exit: Mutex::new(None),
            _result: PhantomData,
        };
        // A worker that dies before reading its task makes this write fail; `join` then
        // reports how it died, which is more useful than the broken pipe.
        if let Some(sock) = &p.sock {
            let _ = match primed {
                0 => fds::write_frame(sock, &run, &fds),
                n => std::io::Write::write_all(&mut &*sock, &run[n..]),
            };
        }
        Ok(p)
    }
}

/// A function running in a child process: Python's `multiprocessing.Process`, started at once.
///
/// [`join`](Process::join) returns the function's result, or an [`Error`] saying how the child
/// failed: its panic (message, location, backtrace), or its exit code or signal if it crashed,
/// aborted, called `exit` or was killed.
///
/// # Examples
/// ```
/// use mproc::Process;
///
/// fn square(x: u64) -> u64 {
///     x * x
/// }
///
/// let mut p = Process::spawn(square, 7)?;
/// assert!(p.pid() > 0);
/// assert_eq!(p.join()?, 49);
/// assert!(!p.is_alive());
/// assert_eq!(p.exit_status().unwrap().code(), Some(0));
/// # Ok::<(), mproc::Error>(())
/// ```
///
/// A capturing closure is refused at compile time; pass data as the argument instead:
/// ```compile_fail
/// let offset = 10;
/// let p = mproc::Process::spawn(move |x: u64| x + offset, 1);
/// ```
///
/// # Subprocesses
/// The child leads its own process group, which the subprocesses it starts belong to unless
/// they leave it. [`kill`](Process::kill) and [`terminate`](Process::terminate) signal the whole
/// group, and when the child has ended, whatever is left of its group is killed (SIGKILL) as
/// the child is reaped (by [`join`](Process::join), [`is_alive`](Process::is_alive),
/// [`exit_status`](Process::exit_status) or drop): a `sleep 60` started by the function does
/// not outlive it. Python leaves such subprocesses running.
///
/// What can still escape: a subprocess that leaves the group on purpose (`setsid`, `setpgid`,
/// a shell with job control), and every subprocess when this program itself is killed by
/// SIGKILL: the child then dies by its parent-death signal, and nothing is left to kill its
/// group. To keep a subprocess running after the child, start it in its own session.
///
/// A group of its own is never the terminal's foreground group: a terminal's Ctrl-C reaches
/// this program, not the child (see [`Builder::stdin`] for what reading the terminal does).
///
/// # Drop
/// Dropping a `Process` that is still running **kills it** and its process group (SIGKILL)
/// and reaps it; dropping one that has ended reaps it. Either way no zombie and no orphan is
/// left. Call [`join`](Process::join) to wait for the result instead.
pub struct Process<R> {
    /// Its pid and pidfd; the pidfd is closed, and `sock` dropped, once `join` has returned:
    /// a joined handle holds no fd.
    child: sys::ChildHandle,
    name: String,
    sock: Option<UnixStream>,
    reader: FrameReader,
    /// Fds it sent: a large result's file.
    received: fds::Received,
    /// Why it died, if it said so as it did ("stack overflow"); its exit status follows.
    last_words: Option<&'static str>,
    state: Collected<R>,
    /// The exit status once reaped. Reaping and signalling happen under this lock, so a
    /// signal never reaches a recycled pid.
    exit: Mutex<Option<ExitStatus>>,
    _result: PhantomData<fn() -> R>,
}

enum Collected<R> {
    /// No result yet.
    Running,
    /// The result (or failure) is known; `join` returns it once the child has been reaped.
    Finished(Result<R>),
    /// `join` returned it.
    Taken,
}

impl Process<()> {
    /// A [`Builder`], for a name, a start method, environment variables or stdio.
    pub fn builder() -> Builder {
        Builder::new()
    }
}

impl<R: Serialize + DeserializeOwned> Process<R> {
    /// Starts a child process running `f(arg)` with the default settings; the Rust form of
    /// `Process(target=f, args=(arg,)).start()`.
    ///
    /// # Errors
    /// As [`Builder::spawn`].
    pub fn spawn<A: Serialize + DeserializeOwned>(f: fn(A) -> R, arg: A) -> Result<Process<R>> {
        Builder::new().spawn(f, arg)
    }
}

impl<R: DeserializeOwned> Process<R> {
    /// Waits for the child to finish and returns the function's result.
    ///
    /// # Errors
    /// [`ErrorKind::Panicked`](crate::ErrorKind::Panicked) with the child's
    /// [`RemotePanic`](crate::RemotePanic);
    /// [`ErrorKind::WorkerDied`](crate::ErrorKind::WorkerDied) with its [`ExitStatus`] if it
    /// ended without a result; [`ErrorKind::Usage`](crate::ErrorKind::Usage) if the result
    /// was already returned by an earlier `join`.
    pub fn join(&mut self) -> Result<R> {
        self.join_deadline(None)
    }

    /// As [`join`](Process::join), giving up after `timeout` with
    /// [`ErrorKind::TimedOut`](crate::ErrorKind::TimedOut). The process keeps running and the
    /// handle stays usable: join again later, or kill it.
    pub fn join_timeout(&mut self, timeout: Duration) -> Result<R> {
        self.join_deadline(Some(Instant::now() + timeout))
    }

    fn join_deadline(&mut self, deadline: Option<Instant>) -> Result<R> {
        while let Collected::Running = self.state {
            self.state = Collected::Finished(match self.next_frame(deadline)? {
                Some(frame) => match self.interpret(frame) {
                    Some(outcome) => outcome,
                    None => continue, // the hello, or fds for the next message
                },
                None => {
                    let status = self.wait_exit(deadline)?;
                    Err(match self.last_words {
                        Some(cause) => Error::worker_died_of(status, cause),
                        None => Error::worker_died(status),
                    })
                }
            });
        }
        if let Collected::Taken = self.state {
            return Err(Error::usage(
                "this process's result was already returned by an earlier join",
            ));
        }
        self.wait_exit(deadline)?;
        // Lines it printed through `Stdio::Prefixed` come out before `join` returns.
        crate::output::sync();
        self.sock = None;
        self.child.close_exit_fd();
        match std::mem::replace(&mut self.state, Collected::Taken) {
            Collected::Finished(outcome) => outcome,
            _ => unreachable!("checked above"),
        }
    }

    /// Turns a worker message into the outcome, or `None` for the hello (sorted as the pool
    /// sorts its workers' messages, `task::reply`). A child that breaks the protocol is killed.
    fn interpret(&mut self, frame: Vec<u8>) -> Option<Result<R>> {
        let outcome = match reply::sort(&mut self.received, frame) {
            Ok(None | Some(Classified::Hello)) => return None,
            Ok(Some(Classified::Dying(cause))) => {
                self.last_words = Some(cause);
                return None; // its death follows: `join` reports it with this cause
            }
            Ok(Some(Classified::Answer(Ok(answer)))) => {
                codec::decode(answer.payload()).map_err(decode_failure::<R>)
            }
            Ok(Some(Classified::Answer(Err(e)))) => {
                if e.kind() == crate::ErrorKind::Protocol {
                    let _ = self.signal(sys::SIGKILL);
                }
                Err(e)
            }
            Ok(Some(Classified::Foreign(e))) => {
                let _ = self.signal(sys::SIGKILL);
                Err(e)
            }
            Err(bad) => {
                let _ = self.signal(sys::SIGKILL);
                Err(Error::protocol(bad.0))
            }
        };
        Some(outcome)
    }
}

impl<R> Process<R> {
    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.pid() as u32
    }

    /// The name given by [`Builder::name`], or `Process-N`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// True until the child has ended. Never blocks.
    pub fn is_alive(&self) -> bool {
        self.exit_status().is_none()
    }

    /// How the child ended (exit code or signal), or `None` while it runs. Never blocks.
    /// [`ExitStatus::exitcode`] gives Python's `exitcode` (`-N` for signal `N`).
    pub fn exit_status(&self) -> Option<ExitStatus> {
        let mut exit = self.exit.lock().unwrap_or_else(PoisonError::into_inner);
        if exit.is_none() {
            if let Ok(Some(raw)) = self.child.try_reap() {
                *exit = Some(ExitStatus::from_raw(raw));
            }
        }
        *exit
    }

    /// Asks the child to stop with SIGTERM (Python's `terminate()`), sent to its process group
    /// too (see [Subprocesses](Process#subprocesses)). Does nothing if it has already ended.
    /// [`join`](Process::join) then reports `WorkerDied` with that signal, unless the function
    /// had already returned.
    pub fn terminate(&self) -> Result<()> {
        self.signal(sys::SIGTERM)
    }

    /// Kills the child and its process group with SIGKILL (Python's `kill()`). Does nothing if
    /// it has already ended.
    pub fn kill(&self) -> Result<()> {
        self.signal(sys::SIGKILL)
    }

    fn signal(&self, sig: i32) -> Result<()> {
        // Holding the lock: the pid cannot be reaped (and recycled) while we signal it.
        let exit = self.exit.lock().unwrap_or_else(PoisonError::into_inner);
        if exit.is_some() {
            return Ok(());
        }
        let sent = self.child.signal_group(sig);
        match sent {
            Err(e) if e.raw_os_error() != Some(libc_esrch()) => {
                Err(Error::io("cannot signal the process", e))
            }
            _ => Ok(()),
        }
    }

    /// The next whole frame from the child, or `None` once it has closed the socket or ended.
    fn next_frame(&mut self, deadline: Option<Instant>) -> Result<Option<Vec<u8>>> {
        let Some(sock) = &mut self.sock else {
            return Ok(None);
        };
        loop {
            // A frame already buffered does not make the socket readable: take it first.
            let mut src = fds::FdRead {
                sock: sock.as_fd(),
                fifo: &mut self.received.fifo,
                nowait: false,
            };
            if self.reader.has_frame() {
                if let Ok(Some(frame)) = self.reader.advance(&mut src) {
                    return Ok(Some(frame));
                }
            }
            let timeout = remaining(deadline);
            let ready = match self.child.exit_fd() {
                Some(pidfd) => sys::poll_readable(&[sock.as_fd(), pidfd], timeout),
                None => sys::poll_readable(&[sock.as_fd()], timeout),
            }
            .map_err(|e| Error::io("cannot wait for the process", e))?;
            let sock_ready = ready[0].readable;
            if !sock_ready {
                if ready.get(1).is_some_and(|r| r.readable) {
                    // The child has ended. Whatever it wrote before exiting is readable now,
                    // but it may have written between poll's look at the socket and at the
                    // pidfd: look at the socket once more before concluding it said nothing.
                    let again = sys::poll_readable(&[sock.as_fd()], Some(Duration::ZERO));
                    if !again.is_ok_and(|r| r[0].readable) {
                        return Ok(None);
                    }
                    continue;
                }
                if passed(deadline) {
                    return Err(Error::timed_out());
                }
                continue;
            }
            let mut src = fds::FdRead {
                sock: sock.as_fd(),
                fifo: &mut self.received.fifo,
                nowait: false,
            };
            match self.reader.advance(&mut src) {
                Ok(Some(frame)) => return Ok(Some(frame)),
                Ok(None) | Err(FrameError::WouldBlock) => continue,
                Err(FrameError::Eof | FrameError::Truncated { .. }) => return Ok(None),
                Err(FrameError::TooLong { len, limit }) => {
                    let _ = self.signal(sys::SIGKILL);
                    return Err(Error::protocol(format!(
                        "a message of {len} bytes exceeds the limit of {limit}"
                    )));
                }
                Err(FrameError::Io(e)) => {
                    if e.kind() == std::io::ErrorKind::ConnectionReset {
                        return Ok(None);
                    }
                    return Err(Error::io("cannot read from the process", e));
                }
            }
        }
    }

    /// Waits (until `deadline`) for the child to end and reaps it.
    fn wait_exit(&self, deadline: Option<Instant>) -> Result<ExitStatus> {
        // Held throughout: `join` (`&mut self`) is the only caller, so nothing else waits for
        // the lock meanwhile, and no signal can race the reap.
        let mut exit = self.exit.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(status) = *exit {
            return Ok(status);
        }
        match self.child.wait_deadline(deadline) {
            Ok(Some(raw)) => Ok(*exit.insert(ExitStatus::from_raw(raw))),
            Ok(None) => Err(Error::timed_out()),
            Err(e) => Err(Error::io("cannot wait for the process", e)),
        }
    }
}

/// The error of a result that arrived but cannot be decoded as an `R`.
fn decode_failure<R>(why: String) -> Error {
    Error::codec(codec::failure::<R>(Op::Decode, Role::Result, &why))
}

fn libc_esrch() -> i32 {
    3 // ESRCH on every Unix
}

/// Time left before `deadline` (`None`: no deadline), or `TimedOut` once it has passed.
/// Time left before `deadline` (`None`: no deadline; zero once passed, so that one last
/// non-blocking look still happens).
fn remaining(deadline: Option<Instant>) -> Option<Duration> {
    deadline.map(|d| d.saturating_duration_since(Instant::now()))
}

fn passed(deadline: Option<Instant>) -> bool {
    deadline.is_some_and(|d| Instant::now() >= d)
}

impl<R> Drop for Process<R> {
    fn drop(&mut self) {
        current::unregister(self.child.pid() as u32);
        let mut exit = self.exit.lock().unwrap_or_else(PoisonError::into_inner);
        if exit.is_some() {
            return;
        }
        // Reaped if it has ended; killed (with its group) and reaped otherwise.
        *exit = Some(ExitStatus::from_raw(self.child.end()));
    }
}

impl<R> fmt::Debug for Process<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Process")
            .field("name", &self.name)
            .field("pid", &self.child.pid())
            .field("exit_status", &self.exit_status())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::frame::FrameBuf;
    use std::io::Write;
    use std::os::unix::net::UnixStream;

    const LIMIT: Duration = Duration::from_secs(30);

    fn square(x: u64) -> u64 {
        x * x
    }

    /// The worker entry works in a unit-test harness too (this binary is libtest's).
    #[test]
    fn spawn_works_inside_a_unit_test() {
        for &m in StartMethod::all() {
            let mut p = Process::builder()
                .start_method(m)
                .spawn(square, 12)
                .unwrap();
            assert_eq!(p.join_timeout(LIMIT).unwrap(), 144, "{m:?}");
        }
    }

    /// A value holding an fd, serialized the way mproc's handles are.
    #[derive(Debug)]
    struct FdBox(std::os::fd::OwnedFd);
    impl serde::Serialize for FdBox {
        fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
            crate::wire::fds::serialize_fd(std::os::fd::AsFd::as_fd(&self.0), s)
        }
    }
    impl<'de> serde::Deserialize<'de> for FdBox {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
            crate::wire::fds::deserialize_fd(d).map(FdBox)
        }
    }

    fn write_through((tag, sock): (u8, FdBox)) -> usize {
        let mut s = UnixStream::from(sock.0);
        s.write(&[tag]).unwrap()
    }

    /// Fds inside an argument reach the child, under every start method.
    #[test]
    fn fds_inside_arguments_reach_the_child() {
        for &m in StartMethod::all() {
            let (mut ours, theirs) = UnixStream::pair().unwrap();
            let mut p = Process::builder()
                .start_method(m)
                .spawn(write_through, (7, FdBox(theirs.into())))
                .unwrap();
            assert_eq!(p.join_timeout(LIMIT).unwrap(), 1, "{m:?}");
            ours.set_read_timeout(Some(LIMIT)).unwrap();
            let mut b = [0u8];
            std::io::Read::read_exact(&mut ours, &mut b).unwrap();
            assert_eq!(b, [7], "{m:?}");
        }
    }

    /// A `Process` whose "worker" is this test: a real child (`sleep`) supplies the pid, and
    /// the test writes whatever it likes into the socket.
    fn fake_worker() -> (Process<u64>, UnixStream) {
        let child = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        drop(child); // the Process reaps it
        let (ours, theirs) = UnixStream::pair().unwrap();
        let p = Process {
            child: sys::ChildHandle::open(pid),
            name: "fake".into(),
            sock: Some(ours),
            reader: FrameReader::new(frame::DEFAULT_LIMIT),
            received: fds::Received::default(),
            last_words: None,
            state: Collected::Running,
            exit: Mutex::new(None),
            _result: PhantomData,
        };
        (p, theirs)
    }

    fn frame(body: &[u8]) -> Vec<u8> {
        let mut f = FrameBuf::new();
        f.buf.extend_from_slice(body);
        f.finish()
    }

    fn good_hello() -> Vec<u8> {
        msg::hello(1, crate::sys::identity::own())
    }

    #[test]
    fn an_absurd_length_is_a_protocol_error_and_the_worker_is_killed() {
        let (mut p, mut peer) = fake_worker();
        peer.write_all(&u64::MAX.to_le_bytes()).unwrap();
        let err = p.join_timeout(LIMIT).unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Protocol, "{err}");
        assert!(err.to_string().contains("exceeds the limit"), "{err}");
        assert!(p.wait_exit(Some(Instant::now() + LIMIT)).unwrap().signal() == Some(sys::SIGKILL));
    }

    #[test]
    fn an_unknown_message_type_is_a_protocol_error() {
        let (mut p, mut peer) = fake_worker();
        peer.write_all(&frame(&[0xEE, 1, 2, 3])).unwrap();
        let err = p.join_timeout(LIMIT).unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Protocol, "{err}");
    }

    #[test]
    fn a_message_meant_for_workers_is_refused() {
        let (mut p, mut peer) = fake_worker();
        let mut run = msg::begin_run(0, crate::sys::identity::own(), 0, 0);
        run.buf.push(0);
        peer.write_all(&run.finish()).unwrap();
        assert_eq!(
            p.join_timeout(LIMIT).unwrap_err().kind(),
            crate::ErrorKind::Protocol
        );
    }

    #[test]
    fn a_large_result_without_its_file_is_a_protocol_error() {
        let (mut p, mut peer) = fake_worker();
        peer.write_all(&good_hello()).unwrap();
        peer.write_all(&msg::done_spilled()).unwrap();
        let err = p.join_timeout(LIMIT).unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Protocol, "{err}");
        assert!(err.to_string().contains("without its file"), "{err}");
    }

    #[test]
    fn fds_announced_but_not_sent_are_a_protocol_error() {
        let (mut p, mut peer) = fake_worker();
        peer.write_all(&good_hello()).unwrap();
        peer.write_all(&msg::fds(1)).unwrap();
        peer.write_all(&msg::done_spilled()).unwrap();
        let err = p.join_timeout(LIMIT).unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Protocol, "{err}");
    }

    #[test]
    fn a_large_result_in_a_file_it_could_change_or_with_holes_is_refused() {
        use crate::sys::shm;
        // A file the worker could still write or truncate under our reader (a `SIGBUS`
        // here), and a sealed one with 1 GiB of holes: both a protocol error, nothing mapped.
        let unsealed = shm::Region::create("test", 1 << 20).unwrap();
        let sparse = shm::payload_file("test").unwrap();
        std::fs::File::from(sparse.try_clone().unwrap())
            .set_len(1 << 30)
            .unwrap();
        shm::seal_payload(sparse.as_fd()).unwrap();
        let files = [
            (unsealed.fd().try_clone_to_owned().unwrap(), "sealed"),
            (sparse, "holes"),
        ];
        for (file, why) in files {
            let (mut p, peer) = fake_worker();
            (&peer).write_all(&good_hello()).unwrap();
            fds::write_frame(&peer, &msg::done_spilled(), &[file]).unwrap();
            let err = p.join_timeout(LIMIT).unwrap_err();
            assert_eq!(err.kind(), crate::ErrorKind::Protocol, "{err}");
            assert!(err.to_string().contains(why), "{why}: {err}");
        }
    }

    #[test]
    fn fds_no_message_announces_are_refused_not_hoarded() {
        let (mut p, peer) = fake_worker();
        (&peer).write_all(&good_hello()).unwrap();
        // A frame of 10,000 bytes that never ends, its bytes sent one at a time, each with 64
        // fds attached: without a bound the reader would keep every one of them.
        (&peer).write_all(&10_000u64.to_le_bytes()).unwrap();
        let sender = std::thread::spawn(move || {
            let (a, _b) = UnixStream::pair().unwrap();
            let many = vec![a.as_fd(); 64];
            for _ in 0..40 {
                if sys::send_with_fds(peer.as_fd(), &[0], &many).is_err() {
                    break;
                }
            }
            peer
        });
        let err = p.join_timeout(LIMIT).unwrap_err();
        assert!(err.to_string().contains("no message announced"), "{err}");
        let kept = p.received.fifo.len();
        drop(p); // our end closes: a sender still sending stops on the broken pipe
        drop(sender.join().unwrap());
        assert!(kept <= 2 * fds::MAX_FDS, "{kept} fds kept");
    }

    #[test]
    fn a_foreign_identity_is_a_binary_mismatch() {
        let (mut p, mut peer) = fake_worker();
        peer.write_all(&msg::hello(1, b"Bsomeone-else")).unwrap();
        let err = p.join_timeout(LIMIT).unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::BinaryMismatch, "{err}");
    }

    #[test]
    fn a_garbage_result_is_a_codec_error_not_a_panic() {
        let (mut p, mut peer) = fake_worker();
        peer.write_all(&good_hello()).unwrap();
        let mut done = msg::begin_done();
        done.buf.extend_from_slice(&[0xff; 20]);
        peer.write_all(&done.finish()).unwrap();
        p.kill().unwrap(); // let `join` reap after the result
        let err = p.join_timeout(LIMIT).unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Codec, "{err}");
    }

    #[test]
    fn a_worker_closing_mid_frame_is_reported_by_its_exit_status() {
        let (mut p, mut peer) = fake_worker();
        peer.write_all(&good_hello()).unwrap();
        peer.write_all(&100u64.to_le_bytes()).unwrap();
        peer.write_all(&[1; 10]).unwrap();
        drop(peer);
        // The socket is closed but the process lives: join waits for its exit.
        assert!(
            p.join_timeout(Duration::from_millis(100))
                .unwrap_err()
                .is_timeout()
        );
        p.kill().unwrap();
        let err = p.join_timeout(LIMIT).unwrap_err();
        assert_eq!(
            err.exit_status().and_then(|s| s.signal()),
            Some(sys::SIGKILL),
            "{err}"
        );
    }
}
