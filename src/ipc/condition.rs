//! [`Condition`]: Python's `multiprocessing.Condition`, a condition variable across processes.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{HEADER, Kind, Lock, LockGuard, Shared};
use crate::sys::futex;
use crate::{Error, Result};

/// The sequence word: bumped by every notify; waiters sleep on the value they read while
/// still holding the lock, so a notify that follows their release is never missed.
const SEQ: usize = HEADER;

#[derive(Clone, Debug)]
struct Seq {
    shared: Shared,
}

super::shared_serde!(Seq, Kind::Condition);

/// A condition variable shared between processes (Python's `multiprocessing.Condition`).
///
/// It is used with a [`Lock`]: its own ([`Condition::new`]) or one you give
/// ([`Condition::with_lock`]). Take the lock with [`acquire`](Condition::acquire), then
/// [`wait`](Condition::wait) releases it, sleeps until a [`notify`](Condition::notify), and
/// takes it again. Wake-ups may be spurious: wait in a loop on your own condition, or use
/// [`wait_for`](Condition::wait_for). Notify while holding the lock, as Python requires, or a
/// waiter that is about to sleep can miss it.
///
/// If a process dies holding the lock, the next [`acquire`](Condition::acquire) or the
/// re-lock at the end of a wait gets a guard whose
/// [`was_abandoned`](LockGuard::was_abandoned) is `true`.
///
/// # Examples
/// A consumer process waits for a producer to publish a value in shared memory (here an
/// [`Event`](crate::Event) stands for the data, to keep the example short):
/// ```
/// use mproc::{Condition, Event, Process};
/// use std::time::Duration;
///
/// fn consumer((cond, ready): (Condition, Event)) -> bool {
///     let guard = cond.acquire().expect("lock");
///     let (_guard, ok) = cond
///         .wait_for(guard, || ready.is_set(), Duration::from_secs(30))
///         .expect("wait");
///     ok
/// }
///
/// let cond = Condition::new()?;
/// let ready = mproc::Event::new()?;
/// let mut p = Process::spawn(consumer, (cond.clone(), ready.clone()))?;
/// {
///     let _g = cond.acquire()?;
///     ready.set();
///     cond.notify_all();
/// }
/// assert!(p.join()?);
/// # Ok::<(), mproc::Error>(())
/// ```
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Condition {
    lock: Lock,
    seq: Seq,
}

impl Condition {
    /// A condition with a lock of its own.
    ///
    /// # Errors
    /// [`ErrorKind::Io`](crate::ErrorKind::Io) if the shared memory cannot be created.
    ///
    /// # Examples
    /// ```
    /// let cond = mproc::Condition::new()?;
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn new() -> Result<Condition> {
        Condition::with_lock(Lock::new()?)
    }

    /// A condition using `lock` (or a clone of it, which is the same lock).
    ///
    /// # Errors
    /// [`ErrorKind::Io`](crate::ErrorKind::Io) if the shared memory cannot be created.
    ///
    /// # Examples
    /// ```
    /// let lock = mproc::Lock::new()?;
    /// let cond = mproc::Condition::with_lock(lock.clone())?;
    /// let guard = lock.acquire()?;
    /// cond.notify(1);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn with_lock(lock: Lock) -> Result<Condition> {
        Ok(Condition {
            lock,
            seq: Seq {
                shared: super::create(Kind::Condition, 4)?,
            },
        })
    }

    fn seq(&self) -> &AtomicU32 {
        self.seq.shared.region().atomic_u32(SEQ)
    }

    /// Takes the condition's lock (see [`Lock::acquire`]).
    ///
    /// # Errors
    /// As [`Lock::acquire`].
    ///
    /// # Examples
    /// ```
    /// let cond = mproc::Condition::new()?;
    /// let guard = cond.acquire()?;
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn acquire(&self) -> Result<LockGuard<'_>> {
        self.lock.acquire()
    }

    /// Takes the condition's lock, giving up after `timeout` (see [`Lock::acquire_timeout`]).
    ///
    /// # Errors
    /// [`ErrorKind::TimedOut`](crate::ErrorKind::TimedOut).
    ///
    /// # Examples
    /// ```
    /// let cond = mproc::Condition::new()?;
    /// let guard = cond.acquire_timeout(std::time::Duration::from_secs(1))?;
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn acquire_timeout(&self, timeout: Duration) -> Result<LockGuard<'_>> {
        self.lock.acquire_timeout(timeout)
    }

    /// Takes the condition's lock if it is free.
    ///
    /// # Examples
    /// ```
    /// let cond = mproc::Condition::new()?;
    /// assert!(cond.try_acquire().is_some());
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn try_acquire(&self) -> Option<LockGuard<'_>> {
        self.lock.try_acquire()
    }

    /// Releases the lock held by `guard`, sleeps until notified, and takes the lock again.
    ///
    /// # Errors
    /// [`ErrorKind::Usage`](crate::ErrorKind::Usage) if `guard` holds another lock than the
    /// condition's (the guard is then dropped, releasing that lock).
    ///
    /// # Examples
    /// ```
    /// # fn demo(cond: &mproc::Condition, ready: &mproc::Event) -> mproc::Result<()> {
    /// let mut guard = cond.acquire()?;
    /// while !ready.is_set() {
    ///     guard = cond.wait(guard)?;
    /// }
    /// # Ok(()) }
    /// ```
    pub fn wait<'g>(&self, guard: LockGuard<'g>) -> Result<LockGuard<'g>> {
        self.wait_deadline(guard, None).map(|(g, _)| g)
    }

    /// As [`wait`](Condition::wait), sleeping at most `timeout`. Returns the guard and `true`
    /// when notified, `false` when the time ran out. Taking the lock again afterwards is not
    /// bounded by `timeout` (as in Python); a dead holder cannot block it, the lock being
    /// robust.
    ///
    /// # Errors
    /// As [`wait`](Condition::wait).
    ///
    /// # Examples
    /// ```
    /// let cond = mproc::Condition::new()?;
    /// let guard = cond.acquire()?;
    /// let (guard, notified) = cond.wait_timeout(guard, std::time::Duration::from_millis(5))?;
    /// assert!(!notified);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn wait_timeout<'g>(
        &self,
        guard: LockGuard<'g>,
        timeout: Duration,
    ) -> Result<(LockGuard<'g>, bool)> {
        self.wait_deadline(guard, super::deadline(timeout))
    }

    /// Waits until `ready()` returns `true` (checked with the lock held), for at most
    /// `timeout` in all (Python's `wait_for(predicate, timeout)`). Returns the guard and the
    /// last value of `ready()`.
    ///
    /// # Errors
    /// As [`wait`](Condition::wait).
    ///
    /// # Examples
    /// ```
    /// let cond = mproc::Condition::new()?;
    /// let guard = cond.acquire()?;
    /// let (guard, ok) = cond.wait_for(guard, || true, std::time::Duration::from_secs(1))?;
    /// assert!(ok);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn wait_for<'g>(
        &self,
        mut guard: LockGuard<'g>,
        mut ready: impl FnMut() -> bool,
        timeout: Duration,
    ) -> Result<(LockGuard<'g>, bool)> {
        let deadline = super::deadline(timeout);
        loop {
            if ready() {
                return Ok((guard, true));
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok((guard, false));
            }
            guard = self.wait_deadline(guard, deadline)?.0;
        }
    }

    fn wait_deadline<'g>(
        &self,
        guard: LockGuard<'g>,
        deadline: Option<Instant>,
    ) -> Result<(LockGuard<'g>, bool)> {
        let lock = guard.lock();
        if !lock.same(&self.lock) {
            return Err(Error::usage(
                "Condition::wait needs a guard of the condition's own lock",
            ));
        }
        // Read while holding the lock: a notify can only come after we release it.
        let seen = self.seq().load(Ordering::SeqCst);
        drop(guard);
        let mut notified = true;
        while self.seq().load(Ordering::SeqCst) == seen {
            if !futex::wait(self.seq(), seen, deadline) {
                notified = self.seq().load(Ordering::SeqCst) != seen;
                break;
            }
        }
        Ok((lock.acquire()?, notified))
    }

    /// Wakes up to `n` waiters, in any process. Call it holding the lock.
    ///
    /// # Examples
    /// ```
    /// let cond = mproc::Condition::new()?;
    /// let _g = cond.acquire()?;
    /// cond.notify(1);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn notify(&self, n: u32) {
        self.seq().fetch_add(1, Ordering::SeqCst);
        futex::wake(self.seq(), n);
    }

    /// Wakes every waiter, in every process. Call it holding the lock.
    ///
    /// # Examples
    /// ```
    /// let cond = mproc::Condition::new()?;
    /// let _g = cond.acquire()?;
    /// cond.notify_all();
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn notify_all(&self) {
        self.notify(u32::MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    const LIMIT: Duration = Duration::from_secs(30);

    #[test]
    fn producer_and_consumer_threads() {
        let cond = Condition::new().unwrap();
        let items = AtomicU64::new(0);
        let consumed = std::thread::scope(|s| {
            let consumer = s.spawn(|| {
                let mut taken = 0;
                while taken < 1_000 {
                    let g = cond.acquire_timeout(LIMIT).unwrap();
                    let (_g, ok) = cond
                        .wait_for(g, || items.load(Ordering::SeqCst) > 0, LIMIT)
                        .unwrap();
                    assert!(ok, "producer stalled");
                    items.fetch_sub(1, Ordering::SeqCst);
                    taken += 1;
                }
                taken
            });
            for _ in 0..1_000 {
                let _g = cond.acquire_timeout(LIMIT).unwrap();
                items.fetch_add(1, Ordering::SeqCst);
                cond.notify(1);
            }
            consumer.join().unwrap()
        });
        assert_eq!(consumed, 1_000);
        assert_eq!(items.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_foreign_guard_is_refused() {
        let cond = Condition::new().unwrap();
        let other = Lock::new().unwrap();
        let g = other.acquire().unwrap();
        let err = cond.wait_timeout(g, LIMIT).unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Usage);
        assert!(
            other.try_acquire().is_some(),
            "the foreign lock was released"
        );
    }
}
