//! [`RLock`]: Python's `multiprocessing.RLock`, a re-entrant robust lock.

use std::marker::PhantomData;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::{HEADER, Kind, Shared};
use crate::sys::robust::{self, Acquired, MUTEX_SIZE};
use crate::{Error, Result};

// Layout after the header: the mutex, then the owner (pid, thread number) and the depth.
const MUTEX: usize = HEADER;
const OWNER_PID: usize = HEADER + MUTEX_SIZE;
const OWNER_THREAD: usize = OWNER_PID + 4;
const DEPTH: usize = OWNER_THREAD + 4;
const LEN: usize = MUTEX_SIZE + 12;

/// A number for the calling thread, unique within its process (never reused while it runs).
fn thread_number() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(1);
    thread_local! {
        static ME: u32 = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    ME.with(|me| *me)
}

/// A re-entrant lock shared between processes (Python's `multiprocessing.RLock`).
///
/// The thread holding it may acquire it again; it is released when every guard is dropped.
/// The owner is a (process, thread) pair: another thread of the same process waits like
/// another process does. Like [`Lock`](crate::Lock), it survives the death of the process
/// holding it: the next acquirer gets it with [`RLockGuard::was_abandoned`] set, whatever
/// depth the dead holder had reached.
///
/// # Examples
/// ```
/// use mproc::{Process, RLock};
///
/// fn nested(lock: RLock) -> bool {
///     let outer = lock.acquire().expect("outer");
///     let inner = lock.acquire().expect("the owner may acquire again");
///     drop(inner);
///     drop(outer);
///     lock.try_acquire().is_some()
/// }
///
/// let lock = RLock::new()?;
/// assert!(Process::spawn(nested, lock.clone())?.join()?);
/// # Ok::<(), mproc::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct RLock {
    shared: Shared,
}

super::shared_serde!(RLock, Kind::RLock);

impl RLock {
    /// A new, unlocked re-entrant lock.
    ///
    /// # Errors
    /// [`ErrorKind::Io`](crate::ErrorKind::Io) if the shared memory cannot be created.
    ///
    /// # Examples
    /// ```
    /// let lock = mproc::RLock::new()?;
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn new() -> Result<RLock> {
        Ok(RLock {
            shared: super::create(Kind::RLock, LEN)?,
        })
    }

    /// Takes the lock, waiting while another thread or process holds it. Returns at once
    /// when the calling thread already holds it.
    ///
    /// # Errors
    /// [`ErrorKind::Usage`](crate::ErrorKind::Usage) if the calling thread already holds it
    /// `u32::MAX` times.
    ///
    /// # Examples
    /// ```
    /// let lock = mproc::RLock::new()?;
    /// let a = lock.acquire()?;
    /// let b = lock.acquire()?;
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn acquire(&self) -> Result<RLockGuard<'_>> {
        self.acquire_deadline(None)
    }

    /// As [`acquire`](RLock::acquire), giving up after `timeout`.
    ///
    /// # Errors
    /// [`ErrorKind::TimedOut`](crate::ErrorKind::TimedOut) when another owner kept it for
    /// `timeout`.
    ///
    /// # Examples
    /// ```
    /// let lock = mproc::RLock::new()?;
    /// let _g = lock.acquire_timeout(std::time::Duration::from_secs(1))?;
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn acquire_timeout(&self, timeout: Duration) -> Result<RLockGuard<'_>> {
        self.acquire_deadline(super::deadline(timeout))
    }

    /// Takes the lock if it is free, abandoned, or already held by the calling thread.
    ///
    /// # Examples
    /// ```
    /// let lock = mproc::RLock::new()?;
    /// let a = lock.try_acquire().expect("free");
    /// let b = lock.try_acquire().expect("ours already");
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn try_acquire(&self) -> Option<RLockGuard<'_>> {
        if let Some(again) = self.reenter() {
            return again.ok();
        }
        robust::try_lock(self.region(), MUTEX).map(|how| self.first(how))
    }

    fn acquire_deadline(&self, deadline: Option<Instant>) -> Result<RLockGuard<'_>> {
        if let Some(again) = self.reenter() {
            return again;
        }
        match robust::lock(self.region(), MUTEX, deadline) {
            Some(how) => Ok(self.first(how)),
            None => Err(Error::timed_out()),
        }
    }

    fn region(&self) -> &crate::sys::shm::Region {
        self.shared.region()
    }

    /// `Some` when the calling thread is the owner: one level deeper.
    fn reenter(&self) -> Option<Result<RLockGuard<'_>>> {
        let r = self.region();
        // The owner fields are written only by the owner, under the mutex: if they name us
        // and the mutex is held by this process, we wrote them and still hold it. (A dead
        // holder's mutex is not held by this process, whatever its stale fields say.)
        let ours = r.atomic_u32(OWNER_PID).load(Ordering::Relaxed) == std::process::id()
            && r.atomic_u32(OWNER_THREAD).load(Ordering::Relaxed) == thread_number()
            && robust::held_here(r, MUTEX);
        if !ours {
            return None;
        }
        let depth = r.atomic_u32(DEPTH);
        let Some(deeper) = depth.load(Ordering::Relaxed).checked_add(1) else {
            return Some(Err(Error::usage(
                "an RLock was acquired too many times by one thread",
            )));
        };
        depth.store(deeper, Ordering::Relaxed);
        Some(Ok(self.guard(false)))
    }

    /// Just took the mutex: become the owner at depth 1.
    fn first(&self, how: Acquired) -> RLockGuard<'_> {
        let r = self.region();
        r.atomic_u32(OWNER_PID)
            .store(std::process::id(), Ordering::Relaxed);
        r.atomic_u32(OWNER_THREAD)
            .store(thread_number(), Ordering::Relaxed);
        r.atomic_u32(DEPTH).store(1, Ordering::Relaxed);
        self.guard(how == Acquired::Abandoned)
    }

    fn guard(&self, abandoned: bool) -> RLockGuard<'_> {
        RLockGuard {
            lock: self,
            abandoned,
            _not_send: PhantomData,
        }
    }
}

/// One level of ownership of an [`RLock`]; the lock is released when the last one drops.
///
/// # Examples
/// ```
/// let lock = mproc::RLock::new()?;
/// let guard = lock.acquire()?;
/// assert!(!guard.was_abandoned());
/// # Ok::<(), mproc::Error>(())
/// ```
#[derive(Debug)]
#[must_use = "the level is released as soon as the guard is dropped"]
pub struct RLockGuard<'a> {
    lock: &'a RLock,
    abandoned: bool,
    _not_send: PhantomData<*const ()>,
}

impl RLockGuard<'_> {
    /// True for the outermost guard when the previous owner died holding the lock. The lock
    /// is yours; the data it guards may be half-updated.
    ///
    /// # Examples
    /// ```
    /// let lock = mproc::RLock::new()?;
    /// assert!(!lock.acquire()?.was_abandoned());
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn was_abandoned(&self) -> bool {
        self.abandoned
    }
}

impl Drop for RLockGuard<'_> {
    fn drop(&mut self) {
        let r = self.lock.region();
        let depth = r.atomic_u32(DEPTH);
        let left = depth.load(Ordering::Relaxed).saturating_sub(1);
        depth.store(left, Ordering::Relaxed);
        if left == 0 {
            r.atomic_u32(OWNER_PID).store(0, Ordering::Relaxed);
            r.atomic_u32(OWNER_THREAD).store(0, Ordering::Relaxed);
            robust::unlock(r, MUTEX);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: Duration = Duration::from_secs(30);

    #[test]
    fn the_owner_reenters_and_others_wait() {
        let lock = RLock::new().unwrap();
        let a = lock.acquire_timeout(LIMIT).unwrap();
        let b = lock.acquire_timeout(LIMIT).unwrap();
        std::thread::scope(|s| {
            s.spawn(|| {
                assert!(
                    lock.try_acquire().is_none(),
                    "another thread is not the owner"
                );
                assert!(
                    lock.acquire_timeout(Duration::from_millis(5))
                        .unwrap_err()
                        .is_timeout()
                );
            });
        });
        drop(b);
        std::thread::scope(|s| {
            s.spawn(|| assert!(lock.try_acquire().is_none(), "still one level held"));
        });
        drop(a);
        std::thread::scope(|s| {
            s.spawn(|| assert!(lock.try_acquire().is_some(), "released"));
        });
    }

    #[test]
    fn threads_count_exactly_with_nesting() {
        let lock = RLock::new().unwrap();
        let count = std::sync::atomic::AtomicU64::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..5_000 {
                        let _outer = lock.acquire_timeout(LIMIT).unwrap();
                        let _inner = lock.acquire_timeout(LIMIT).unwrap();
                        let v = count.load(Ordering::Relaxed);
                        count.store(v + 1, Ordering::Relaxed);
                    }
                });
            }
        });
        assert_eq!(count.load(Ordering::Relaxed), 20_000);
    }
}
