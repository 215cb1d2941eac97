//! [`Lock`]: Python's `multiprocessing.Lock`, robust to the death of its holder.

use std::marker::PhantomData;
use std::time::{Duration, Instant};

use super::{HEADER, Kind, Shared};
use crate::sys::robust::{self, Acquired, MUTEX_SIZE};
use crate::{Error, Result};

/// Where the mutex sits in a lock's region.
const MUTEX: usize = HEADER;

/// A mutual-exclusion lock shared between processes (Python's `multiprocessing.Lock`).
///
/// Clones share the lock, and so does a copy sent to another process inside the argument of
/// a [`Process`](crate::Process) or a pool task. [`acquire`](Lock::acquire) returns a
/// [`LockGuard`]; dropping the guard releases the lock. The lock is not re-entrant: acquiring
/// it again from the thread that holds it waits (see [`RLock`](crate::RLock)).
///
/// # Abandoned locks
/// If the process holding the lock dies — panic with `panic = "abort"`, segfault, SIGKILL,
/// OOM kill, `exit` — the lock does not stay locked forever: the kernel releases it and the
/// next process to acquire it gets it, with [`LockGuard::was_abandoned`] returning `true`. The
/// lock is then yours and works as usual, but the data it guarded may be half-updated: check
/// or repair it before trusting it. Abandonment is reported to exactly one acquirer.
///
/// Robustness is per process: a thread that ends while its process lives does not release
/// the locks it holds (guards are released as its stack unwinds; a leaked guard keeps the
/// lock). The kernel releases at most 2048 locks held at once by one dying process
/// (`ROBUST_LIST_LIMIT`). On Linux only: elsewhere a dead holder's lock stays locked and only
/// `acquire_timeout` ends the wait.
///
/// # Examples
/// Four processes add to a counter they share; the lock makes each update whole:
/// ```
/// use mproc::{Lock, Process};
///
/// fn work((lock, id): (Lock, u32)) -> u32 {
///     let _held = lock.acquire().expect("lock");
///     println!("worker {id} holds the lock");
///     id
/// }
///
/// let lock = Lock::new()?;
/// let mut procs = Vec::new();
/// for id in 0..4 {
///     procs.push(Process::spawn(work, (lock.clone(), id))?);
/// }
/// for (id, p) in procs.iter_mut().enumerate() {
///     assert_eq!(p.join()?, id as u32);
/// }
/// # Ok::<(), mproc::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct Lock {
    shared: Shared,
}

super::shared_serde!(Lock, Kind::Lock);

impl Lock {
    /// A new, unlocked lock.
    ///
    /// # Errors
    /// [`ErrorKind::Io`](crate::ErrorKind::Io) if the shared memory cannot be created.
    ///
    /// # Examples
    /// ```
    /// let lock = mproc::Lock::new()?;
    /// drop(lock.acquire()?);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn new() -> Result<Lock> {
        Ok(Lock {
            shared: super::create(Kind::Lock, MUTEX_SIZE)?,
        })
    }

    /// Waits until the lock is free and takes it. The guard releases it when dropped.
    ///
    /// If its previous holder died holding it, the lock is still taken and the guard says so
    /// ([`LockGuard::was_abandoned`]).
    ///
    /// # Errors
    /// None today; the `Result` leaves room for platforms where waiting can fail.
    ///
    /// # Examples
    /// ```
    /// let lock = mproc::Lock::new()?;
    /// let guard = lock.acquire()?;
    /// assert!(!guard.was_abandoned());
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn acquire(&self) -> Result<LockGuard<'_>> {
        self.acquire_deadline(None)
    }

    /// As [`acquire`](Lock::acquire), giving up after `timeout`.
    ///
    /// # Errors
    /// [`ErrorKind::TimedOut`](crate::ErrorKind::TimedOut) when the lock stayed held for
    /// `timeout` ([`Error::is_timeout`]).
    ///
    /// # Examples
    /// ```
    /// use std::time::Duration;
    /// let lock = mproc::Lock::new()?;
    /// let _held = lock.acquire()?;
    /// let again = lock.acquire_timeout(Duration::from_millis(10));
    /// assert!(again.unwrap_err().is_timeout());
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn acquire_timeout(&self, timeout: Duration) -> Result<LockGuard<'_>> {
        self.acquire_deadline(super::deadline(timeout))
    }

    /// Takes the lock if it is free (or abandoned), without waiting.
    ///
    /// # Examples
    /// ```
    /// let lock = mproc::Lock::new()?;
    /// let held = lock.try_acquire().expect("free");
    /// assert!(lock.try_acquire().is_none());
    /// drop(held);
    /// assert!(lock.try_acquire().is_some());
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn try_acquire(&self) -> Option<LockGuard<'_>> {
        robust::try_lock(self.shared.region(), MUTEX).map(|how| LockGuard::new(self, how))
    }

    pub(crate) fn acquire_deadline(&self, deadline: Option<Instant>) -> Result<LockGuard<'_>> {
        match robust::lock(self.shared.region(), MUTEX, deadline) {
            Some(how) => Ok(LockGuard::new(self, how)),
            None => Err(Error::timed_out()),
        }
    }

    /// True when `other` is a handle to the same lock in this process.
    pub(crate) fn same(&self, other: &Lock) -> bool {
        self.shared.same(&other.shared)
    }
}

/// Proof that a [`Lock`] is held; releases it when dropped.
///
/// Not `Send`, like `std::sync::MutexGuard`: release the lock in the thread that took it.
///
/// # Examples
/// ```
/// let lock = mproc::Lock::new()?;
/// {
///     let guard = lock.acquire()?;
///     assert!(!guard.was_abandoned());
/// } // released here
/// assert!(lock.try_acquire().is_some());
/// # Ok::<(), mproc::Error>(())
/// ```
#[derive(Debug)]
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct LockGuard<'a> {
    lock: &'a Lock,
    abandoned: bool,
    _not_send: PhantomData<*const ()>,
}

impl<'a> LockGuard<'a> {
    fn new(lock: &'a Lock, how: Acquired) -> LockGuard<'a> {
        LockGuard {
            lock,
            abandoned: how == Acquired::Abandoned,
            _not_send: PhantomData,
        }
    }

    /// True when the previous holder died holding the lock. The lock is yours; the data it
    /// guards may be half-updated.
    ///
    /// # Examples
    /// ```
    /// let lock = mproc::Lock::new()?;
    /// assert!(!lock.acquire()?.was_abandoned());
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn was_abandoned(&self) -> bool {
        self.abandoned
    }

    /// The lock this guard holds.
    pub(crate) fn lock(&self) -> &'a Lock {
        self.lock
    }
}

impl Drop for LockGuard<'_> {
    fn drop(&mut self) {
        robust::unlock(self.lock.shared.region(), MUTEX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    const LIMIT: Duration = Duration::from_secs(30);

    #[test]
    fn handles_are_send_sync_clone_and_serde() {
        fn check<T: Send + Sync + Clone + serde::Serialize + serde::de::DeserializeOwned>() {}
        check::<Lock>();
    }

    #[test]
    fn clones_share_the_lock() {
        let a = Lock::new().unwrap();
        let b = a.clone();
        let held = a.acquire_timeout(LIMIT).unwrap();
        assert!(b.try_acquire().is_none());
        assert!(
            b.acquire_timeout(Duration::from_millis(5))
                .unwrap_err()
                .is_timeout()
        );
        drop(held);
        assert!(b.try_acquire().is_some());
    }

    #[test]
    fn four_threads_count_exactly() {
        let lock = Lock::new().unwrap();
        let count = AtomicU64::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..10_000 {
                        let _g = lock.acquire_timeout(LIMIT).unwrap();
                        // A non-atomic read-modify-write: only the lock keeps it whole.
                        let v = count.load(Ordering::Relaxed);
                        count.store(v + 1, Ordering::Relaxed);
                    }
                });
            }
        });
        assert_eq!(count.load(Ordering::Relaxed), 40_000);
    }
}
