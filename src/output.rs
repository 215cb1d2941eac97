//! [`Stdio::Prefixed`](crate::Stdio::Prefixed): children's output relayed line by line, each
//! line prefixed with the child's name and pid.
//!
//! A child's stdout or stderr is the write end of a pipe; the read end goes to one relay
//! thread per parent process, which polls every such pipe, cuts what arrives into lines and
//! writes each batch of whole lines to the parent's own stream in one call, under std's
//! stream lock. So lines from different children (and the parent's own `println!`s) never
//! tear into each other, and output written just before a child is killed is still printed:
//! the pipe outlives the child.
//!
//! [`sync`] lets a caller wait until every line written so far has been printed, so that a
//! child's output appears before what its parent prints after `join` or `map`.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::sys;
use crate::sys::fork_local::ForkLocal;

/// Bytes read from a pipe at a time.
const READ: usize = 64 << 10;

/// A line longer than this is printed in pieces (each with the prefix), to bound memory.
const MAX_LINE: usize = 64 << 10;

/// How long [`sync`] waits for the relay at most: if the parent's own stdout is blocked (a full
/// pipe nobody reads), a `join` must still return.
const SYNC_WAIT: Duration = Duration::from_secs(2);

/// Pipes being relayed, in every process (checked before any locking by [`sync`]).
static OPEN: AtomicUsize = AtomicUsize::new(0);

static RELAY: ForkLocal<Option<Arc<Relay>>> = ForkLocal::new();

/// One pipe to relay.
struct Source {
    pipe: File,
    /// 1 (stdout) or 2 (stderr).
    target: u8,
    prefix: String,
    /// The start of a line whose end has not arrived.
    partial: Vec<u8>,
}

struct Relay {
    /// New sources, taken by the relay thread when it wakes.
    incoming: Mutex<Vec<Source>>,
    /// Wakes the relay thread (a byte per wake).
    wake_tx: UnixStream,
    /// Sync requests: [`sync`] bumps `requested`; the relay sets `done` to the value it read
    /// before a pass that found every pipe empty.
    requested: AtomicU64,
    done: Mutex<u64>,
    synced: Condvar,
}

/// Starts relaying `pipe` (the read end of a `sys::pipe` whose write end a child has) to this process's stream `target` (1 or
/// 2), each line prefixed with `prefix`.
pub(crate) fn relay(pipe: OwnedFd, target: u8, prefix: String) -> io::Result<()> {
    let relay = relay_thread()?;
    relay
        .incoming
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(Source {
            pipe: File::from(pipe),
            target,
            prefix,
            partial: Vec::new(),
        });
    OPEN.fetch_add(1, Ordering::Relaxed);
    let _ = (&relay.wake_tx).write(&[1]);
    Ok(())
}

/// Waits (up to a couple of seconds) until everything children wrote to relayed pipes before
/// this call has been printed. Free when nothing is relayed.
pub(crate) fn sync() {
    if OPEN.load(Ordering::Relaxed) == 0 {
        return;
    }
    let Some(relay) = RELAY
        .get()
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
    else {
        return;
    };
    let want = relay.requested.fetch_add(1, Ordering::AcqRel) + 1;
    let _ = (&relay.wake_tx).write(&[1]);
    let deadline = Instant::now() + SYNC_WAIT;
    let mut done = relay.done.lock().unwrap_or_else(PoisonError::into_inner);
    while *done < want {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        done = relay
            .synced
            .wait_timeout(done, left)
            .unwrap_or_else(PoisonError::into_inner)
            .0;
    }
}

fn relay_thread() -> io::Result<Arc<Relay>> {
    let mut slot = RELAY.get().lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(r) = &*slot {
        return Ok(r.clone());
    }
    let (wake_tx, wake_rx) = sys::socket_pair()?;
    wake_tx.set_nonblocking(true)?;
    wake_rx.set_nonblocking(true)?;
    let relay = Arc::new(Relay {
        incoming: Mutex::new(Vec::new()),
        wake_tx,
        requested: AtomicU64::new(0),
        done: Mutex::new(0),
        synced: Condvar::new(),
    });
    let r = relay.clone();
    std::thread::Builder::new()
        .name("mproc-output".into())
        .spawn(move || run(&r, wake_rx))?;
    *slot = Some(relay.clone());
    Ok(relay)
}

/// The relay thread: forever polls the pipes and prints whole lines.
fn run(relay: &Relay, wake_rx: UnixStream) {
    let mut sources: Vec<Source> = Vec::new();
    let mut buf = vec![0u8; READ];
    let mut done = 0u64;
    loop {
        let req = relay.requested.load(Ordering::Acquire);
        let mut fds = vec![wake_rx.as_fd()];
        fds.extend(sources.iter().map(|s| s.pipe.as_fd()));
        // A pending sync polls without waiting until a pass finds every pipe empty.
        let timeout = (req > done).then_some(Duration::ZERO);
        let Ok(ready) = sys::poll_readable(&fds, timeout) else {
            // Only EINTR is retried inside; anything else (ENOMEM) passes: try again later.
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        drop(fds);
        if ready[0].readable {
            let mut sink = [0u8; 64];
            while matches!((&wake_rx).read(&mut sink), Ok(n) if n > 0) {}
            let mut new = relay
                .incoming
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            sources.append(&mut new);
        }
        let mut any = false;
        let mut closed = Vec::new();
        for (i, r) in ready[1..].iter().enumerate() {
            if !r.readable {
                continue;
            }
            any = true;
            let s = &mut sources[i];
            match s.pipe.read(&mut buf) {
                Ok(0) | Err(_) => {
                    s.finish();
                    closed.push(i);
                }
                Ok(n) => s.feed(&buf[..n]),
            }
        }
        for &i in closed.iter().rev() {
            sources.swap_remove(i);
            OPEN.fetch_sub(1, Ordering::Relaxed);
        }
        // Sources that arrived with this wake were not polled yet: not a clean pass.
        if !any && !ready[0].readable && req > done {
            done = req;
            *relay.done.lock().unwrap_or_else(PoisonError::into_inner) = done;
            relay.synced.notify_all();
        }
    }
}

impl Source {
    /// Prints the whole lines of `data` (after what was pending), keeps the rest.
    fn feed(&mut self, data: &[u8]) {
        let mut out = Vec::with_capacity(data.len() + 64);
        let mut rest = data;
        while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
            self.line(&mut out, &rest[..=nl]);
            rest = &rest[nl + 1..];
        }
        self.partial.extend_from_slice(rest);
        while self.partial.len() >= MAX_LINE {
            let piece: Vec<u8> = self.partial.drain(..MAX_LINE).chain([b'\n']).collect();
            out.extend_from_slice(self.prefix.as_bytes());
            out.extend_from_slice(&piece);
        }
        self.write(&out);
    }

    /// Appends the pending start and `end` (which ends with a newline) as one prefixed line.
    fn line(&mut self, out: &mut Vec<u8>, end: &[u8]) {
        out.extend_from_slice(self.prefix.as_bytes());
        out.append(&mut self.partial);
        out.extend_from_slice(end);
    }

    /// At end of file: prints an unfinished last line, with a newline.
    fn finish(&mut self) {
        if !self.partial.is_empty() {
            let mut out = Vec::new();
            self.line(&mut out, b"\n");
            self.write(&out);
        }
    }

    /// One write of whole lines, under std's lock of the stream (so the parent's own prints
    /// never land inside a line). Errors (a closed stdout) drop the output, as a child writing
    /// to a closed stream itself would lose it.
    fn write(&self, out: &[u8]) {
        if out.is_empty() {
            return;
        }
        let _ = if self.target == 2 {
            let mut e = io::stderr().lock();
            e.write_all(out).and_then(|()| e.flush())
        } else {
            let mut o = io::stdout().lock();
            o.write_all(out).and_then(|()| o.flush())
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_cut_and_prefixed() {
        let (r, w) = sys::pipe().unwrap();
        let mut s = Source {
            pipe: File::from(r),
            target: 1,
            prefix: "[w 1] ".into(),
            partial: Vec::new(),
        };
        drop(w);
        let mut out = Vec::new();
        s.partial.extend_from_slice(b"hel");
        s.line(&mut out, b"lo\n");
        assert_eq!(out, b"[w 1] hello\n");
        assert!(s.partial.is_empty());
    }
}
