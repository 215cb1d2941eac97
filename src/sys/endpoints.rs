//! Which fds are [`Connection`](crate::Connection) sockets, so that a child created by `fork`
//! can let go of its copies of the parent's pipe ends.
//!
//! Without this, `Fork` repeats Python's classic trap: the child inherits the parent's own end
//! of a pipe, so when the parent closes that end the other end never sees end-of-file (the
//! child's copy keeps the socket open) and a child reading until hang-up waits forever.
//!
//! The record is a fixed bitmap of atomics (no lock: a lock held by another thread at `fork`
//! would stay held in the child). Fds numbered [`TRACKED`] and above are not recorded; such a
//! pipe end keeps the old behaviour under `Fork` (a copy in each forked child).

use std::ops::Deref;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};

use super::child::ChildToken;

/// Fds below this number are recorded.
pub(crate) const TRACKED: usize = 1 << 16;

static MAP: [AtomicU64; TRACKED / 64] = [const { AtomicU64::new(0) }; TRACKED / 64];

fn slot(fd: RawFd) -> Option<(&'static AtomicU64, u64)> {
    let fd = usize::try_from(fd).ok().filter(|&fd| fd < TRACKED)?;
    Some((&MAP[fd / 64], 1u64 << (fd % 64)))
}

/// A pipe end's socket, recorded while it is open.
#[derive(Debug)]
pub(crate) struct Endpoint(UnixStream);

impl Endpoint {
    pub(crate) fn new(sock: UnixStream) -> Endpoint {
        if let Some((word, bit)) = slot(sock.as_raw_fd()) {
            word.fetch_or(bit, Ordering::Relaxed);
        }
        Endpoint(sock)
    }
}

impl Deref for Endpoint {
    type Target = UnixStream;
    fn deref(&self) -> &UnixStream {
        &self.0
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        // Unrecorded before the socket closes: a number reused by another thread's new end
        // between the two steps keeps its record. (A `fork` in that instant gives the child a
        // copy of this end, as without the record.)
        if let Some((word, bit)) = slot(self.0.as_raw_fd()) {
            word.fetch_and(!bit, Ordering::Relaxed);
        }
    }
}

/// In a child fresh from `fork`: lets go of every inherited pipe end.
///
/// Each recorded fd is replaced (`dup2`) by a socket whose peer is closed, rather than closed:
/// the number stays taken, so a parent's `Connection` the child's code still reaches (through
/// a global, say) fails cleanly — end-of-file on receive, `EPIPE` on send — instead of reading
/// or writing whatever file reuses the number.
pub(crate) fn release_inherited(_token: &ChildToken) {
    let Ok((dead, peer)) = UnixStream::pair() else {
        return; // out of fds: keep the copies (the old behaviour) rather than fail the child
    };
    drop(peer);
    let _ = dead.set_nonblocking(true);
    for (i, word) in MAP.iter().enumerate() {
        let mut bits = word.swap(0, Ordering::Relaxed);
        while bits != 0 {
            let fd = (i * 64 + bits.trailing_zeros() as usize) as RawFd;
            bits &= bits - 1;
            if fd != dead.as_raw_fd() {
                let _ = super::dup_over(dead.as_fd(), fd);
            }
        }
    }
}
