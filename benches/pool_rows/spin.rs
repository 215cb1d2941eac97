//! The shared-memory floor of a hand-off: two processes spinning on one cache line.
//!
//! A page mapped `MAP_SHARED | MAP_ANONYMOUS` before `fork` is the same memory in both
//! processes. The parent writes an odd number into its first word; the child, spinning on that
//! word, answers with the next even number; the parent spins until it sees it. One such
//! exchange is the least a round trip between two processes can cost on this machine: no
//! syscall, no sleep, one cache line moving between two cores and back.
//!
//! A fresh child is forked for every round of samples and stopped after it, so that nothing
//! spins while the other series of the same run are measured. The child dies with the parent
//! (`PR_SET_PDEATHSIG`), and the parent gives up on a child that stopped answering.

use std::hint::spin_loop;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::common::{BoxResult, reap};

/// The value that tells the child to exit.
const STOP: u64 = u64::MAX;
/// Spins between two checks that the peer is still there.
const CHECK_EVERY: u64 = 1 << 22;
/// Longest wait for one answer before the round trip is called lost.
const LOST_AFTER: Duration = Duration::from_secs(5);
const PAGE: usize = 4096;

/// A forked child that answers every odd number written to a shared word with the next one.
pub struct SpinPeer {
    map: *mut libc::c_void,
    pid: libc::pid_t,
    next: u64,
}

impl SpinPeer {
    /// Maps the shared page and forks the child that spins on it.
    pub fn start() -> BoxResult<SpinPeer> {
        // SAFETY: an anonymous shared mapping of one page, not tied to any fd; the result is
        // checked against MAP_FAILED before use.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if map == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error().into());
        }
        // SAFETY: `getpid` has no preconditions.
        let parent = unsafe { libc::getpid() };
        // SAFETY: the child only touches the shared atomic word and calls `prctl`, `getppid`
        // and `_exit`, all async-signal-safe, so forking this multi-threaded process is sound.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            let err = std::io::Error::last_os_error();
            // SAFETY: `map` is our mapping of `PAGE` bytes and nothing refers to it any more.
            unsafe { libc::munmap(map, PAGE) };
            return Err(err.into());
        }
        if pid == 0 {
            // SAFETY: in the child, which owns its copy of the mapping; see `child_loop`.
            unsafe { child_loop(word(map), parent) }
        }
        Ok(SpinPeer { map, pid, next: 1 })
    }

    /// `n` round trips, one after the other; their total wall time.
    pub fn round_trips(&mut self, n: u64) -> BoxResult<Duration> {
        // SAFETY: `self.map` stays mapped until `self` is dropped.
        let w = unsafe { word(self.map) };
        let t = Instant::now();
        for _ in 0..n {
            let ask = self.next;
            w.store(ask, Ordering::Release);
            let mut spins = 0u64;
            while w.load(Ordering::Acquire) != ask + 1 {
                spin_loop();
                spins += 1;
                if spins % CHECK_EVERY == 0 && t.elapsed() > LOST_AFTER {
                    return Err("spin floor: the child stopped answering".into());
                }
            }
            self.next += 2;
        }
        Ok(t.elapsed())
    }

    /// Tells the child to exit and reaps it.
    pub fn stop(mut self) -> BoxResult<()> {
        let pid = std::mem::replace(&mut self.pid, 0);
        // SAFETY: the mapping is still ours (dropped after this).
        unsafe { word(self.map) }.store(STOP, Ordering::Release);
        reap(pid)
    }
}

impl Drop for SpinPeer {
    fn drop(&mut self) {
        if self.pid > 0 {
            // An error path: make sure the child is gone, whatever it was doing.
            // SAFETY: `self.pid` is our unreaped child; a null status pointer is allowed.
            unsafe {
                libc::kill(self.pid, libc::SIGKILL);
                libc::waitpid(self.pid, std::ptr::null_mut(), 0);
            }
        }
        // SAFETY: `self.map` is our mapping of `PAGE` bytes; the child (ours alone) is gone.
        unsafe { libc::munmap(self.map, PAGE) };
    }
}

/// The shared word at the start of the page.
///
/// # Safety
/// `map` must be a live, writable mapping of at least 8 bytes, page-aligned, that outlives the
/// returned reference.
unsafe fn word<'a>(map: *mut libc::c_void) -> &'a AtomicU64 {
    // SAFETY: by the contract, `map` is valid, aligned for a u64 and lives long enough; the
    // page is only ever accessed atomically, by both processes.
    unsafe { &*map.cast::<AtomicU64>() }
}

/// The child: answer every odd value with the next one, until `STOP` or the parent's death.
///
/// # Safety
/// Only in a freshly forked child of `parent`, with `w` in memory shared with it.
unsafe fn child_loop(w: &AtomicU64, parent: libc::pid_t) -> ! {
    // SAFETY: `prctl(PR_SET_PDEATHSIG)` and `getppid` are async-signal-safe; the check after
    // it covers a parent that died before the call.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        if libc::getppid() != parent {
            libc::_exit(1);
        }
    }
    let mut spins = 0u64;
    loop {
        let v = w.load(Ordering::Acquire);
        if v == STOP {
            break;
        }
        if v % 2 == 1 {
            w.store(v + 1, Ordering::Release);
        } else {
            spin_loop();
            spins += 1;
            // SAFETY: as above.
            if spins % CHECK_EVERY == 0 && unsafe { libc::getppid() } != parent {
                break;
            }
        }
    }
    // SAFETY: ends the child without running the parent's destructors.
    unsafe { libc::_exit(0) }
}
