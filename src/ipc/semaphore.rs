//! [`Semaphore`] and [`BoundedSemaphore`]: Python's counting semaphores, across processes.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::{HEADER, Kind, Shared};
use crate::sys::futex;
use crate::{Error, Result};

// Layout after the header: the value (the futex word), the number of sleepers, the bound
// (0: none).
const VALUE: usize = HEADER;
const SLEEPERS: usize = HEADER + 4;
const BOUND: usize = HEADER + 8;
const LEN: usize = 12;

/// The shared part of both semaphores.
#[derive(Clone, Debug)]
struct Core {
    shared: Shared,
}

impl Core {
    fn new(value: u32, bound: u32) -> Result<Core> {
        let shared = super::create(Kind::Semaphore, LEN)?;
        shared
            .region()
            .atomic_u32(BOUND)
            .store(bound, Ordering::Relaxed);
        shared
            .region()
            .atomic_u32(VALUE)
            .store(value, Ordering::Release);
        Ok(Core { shared })
    }

    fn value_word(&self) -> &AtomicU32 {
        self.shared.region().atomic_u32(VALUE)
    }

    fn try_take(&self) -> bool {
        self.value_word()
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| v.checked_sub(1))
            .is_ok()
    }

    fn take(&self, deadline: Option<Instant>) -> Result<()> {
        let sleepers = self.shared.region().atomic_u32(SLEEPERS);
        loop {
            if self.try_take() {
                return Ok(());
            }
            // Counted before sleeping, so a release that sees no sleeper happened before our
            // futex check of the value, which then sees its unit (SeqCst on both sides).
            sleepers.fetch_add(1, Ordering::SeqCst);
            let in_time = futex::wait(self.value_word(), 0, deadline);
            sleepers.fetch_sub(1, Ordering::SeqCst);
            if !in_time {
                return if self.try_take() {
                    Ok(())
                } else {
                    Err(Error::timed_out())
                };
            }
        }
    }

    fn give(&self) -> Result<()> {
        let bound = self
            .shared
            .region()
            .atomic_u32(BOUND)
            .load(Ordering::Relaxed);
        let limit = if bound == 0 { u32::MAX } else { bound };
        self.value_word()
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| {
                (v < limit).then_some(v + 1)
            })
            .map_err(|_| {
                Error::usage(if bound == 0 {
                    "a semaphore's value cannot exceed u32::MAX"
                } else {
                    "a bounded semaphore was released too many times"
                })
            })?;
        if self
            .shared
            .region()
            .atomic_u32(SLEEPERS)
            .load(Ordering::SeqCst)
            > 0
        {
            futex::wake(self.value_word(), 1);
        }
        Ok(())
    }

    fn value(&self) -> u32 {
        self.value_word().load(Ordering::Acquire)
    }
}

/// A counting semaphore shared between processes (Python's `multiprocessing.Semaphore`).
///
/// [`acquire`](Semaphore::acquire) takes one unit, waiting while there is none, and returns a
/// [`SemaphoreGuard`] that gives it back when dropped; [`release`](Semaphore::release) adds a
/// unit (Python-style signalling: one process releases, another acquires — use
/// [`SemaphoreGuard::forget`] to keep a unit taken).
///
/// A semaphore has no owner: a process that dies holding units loses them, as in Python.
/// (Locks, which do have an owner, are released on their holder's death.)
///
/// # Examples
/// At most two processes in the section at a time:
/// ```
/// use mproc::{Process, Semaphore};
///
/// fn work((slots, id): (Semaphore, u32)) -> u32 {
///     let _slot = slots.acquire().expect("slot");
///     id * 10
/// }
///
/// let slots = Semaphore::new(2)?;
/// let mut procs = Vec::new();
/// for id in 0..4 {
///     procs.push(Process::spawn(work, (slots.clone(), id))?);
/// }
/// for (id, p) in procs.iter_mut().enumerate() {
///     assert_eq!(p.join()?, id as u32 * 10);
/// }
/// assert_eq!(slots.value(), 2);
/// # Ok::<(), mproc::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct Semaphore {
    core: Core,
}

/// A [`Semaphore`] that refuses to be released above its initial value (Python's
/// `multiprocessing.BoundedSemaphore`, which raises `ValueError` there).
///
/// # Examples
/// ```
/// let sem = mproc::BoundedSemaphore::new(1)?;
/// assert!(sem.release().is_err(), "already at its initial value");
/// sem.acquire()?.forget();
/// sem.release()?;
/// # Ok::<(), mproc::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct BoundedSemaphore {
    core: Core,
}

macro_rules! semaphore_api {
    ($ty:ident) => {
        impl $ty {
            /// Takes one unit, waiting while the value is 0. The guard gives it back when
            /// dropped.
            ///
            /// # Errors
            /// None today; the `Result` leaves room for platforms where waiting can fail.
            ///
            /// # Examples
            /// ```
            #[doc = concat!("let sem = mproc::", stringify!($ty), "::new(1)?;")]
            /// let unit = sem.acquire()?;
            /// assert_eq!(sem.value(), 0);
            /// drop(unit);
            /// assert_eq!(sem.value(), 1);
            /// # Ok::<(), mproc::Error>(())
            /// ```
            pub fn acquire(&self) -> Result<SemaphoreGuard<'_>> {
                self.core.take(None)?;
                Ok(SemaphoreGuard { core: &self.core })
            }

            /// As `acquire`, giving up after `timeout`.
            ///
            /// # Errors
            /// [`ErrorKind::TimedOut`](crate::ErrorKind::TimedOut) when no unit came in time.
            ///
            /// # Examples
            /// ```
            #[doc = concat!("let sem = mproc::", stringify!($ty), "::new(1)?;")]
            /// let _unit = sem.acquire()?;
            /// let r = sem.acquire_timeout(std::time::Duration::from_millis(5));
            /// assert!(r.unwrap_err().is_timeout());
            /// # Ok::<(), mproc::Error>(())
            /// ```
            pub fn acquire_timeout(&self, timeout: Duration) -> Result<SemaphoreGuard<'_>> {
                self.core.take(super::deadline(timeout))?;
                Ok(SemaphoreGuard { core: &self.core })
            }

            /// Takes one unit if there is one, without waiting.
            ///
            /// # Examples
            /// ```
            #[doc = concat!("let sem = mproc::", stringify!($ty), "::new(1)?;")]
            /// let unit = sem.try_acquire().expect("one unit");
            /// assert!(sem.try_acquire().is_none());
            /// # Ok::<(), mproc::Error>(())
            /// ```
            pub fn try_acquire(&self) -> Option<SemaphoreGuard<'_>> {
                // `then`, not `then_some`: a guard built and dropped would give a unit back.
                self.core
                    .try_take()
                    .then(|| SemaphoreGuard { core: &self.core })
            }

            /// The current value (units available). Another process may change it at once.
            ///
            /// # Examples
            /// ```
            #[doc = concat!("let sem = mproc::", stringify!($ty), "::new(3)?;")]
            /// assert_eq!(sem.value(), 3);
            /// # Ok::<(), mproc::Error>(())
            /// ```
            pub fn value(&self) -> u32 {
                self.core.value()
            }
        }

        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                self.core.shared.serialize(s)
            }
        }

        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let shared = Shared::deserialize(d, Kind::Semaphore)?;
                Ok($ty {
                    core: Core { shared },
                })
            }
        }
    };
}

semaphore_api!(Semaphore);
semaphore_api!(BoundedSemaphore);

impl Semaphore {
    /// A semaphore with `value` units.
    ///
    /// # Errors
    /// [`ErrorKind::Io`](crate::ErrorKind::Io) if the shared memory cannot be created.
    ///
    /// # Examples
    /// ```
    /// let sem = mproc::Semaphore::new(2)?;
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn new(value: u32) -> Result<Semaphore> {
        Ok(Semaphore {
            core: Core::new(value, 0)?,
        })
    }

    /// Adds one unit, waking one waiter (Python's `release()`).
    ///
    /// # Errors
    /// [`ErrorKind::Usage`](crate::ErrorKind::Usage) if the value is already `u32::MAX`.
    ///
    /// # Examples
    /// ```
    /// let sem = mproc::Semaphore::new(0)?;
    /// sem.release()?;
    /// assert_eq!(sem.value(), 1);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn release(&self) -> Result<()> {
        self.core.give()
    }
}

impl BoundedSemaphore {
    /// A bounded semaphore with `value` units, which is also its maximum.
    ///
    /// # Errors
    /// [`ErrorKind::Usage`](crate::ErrorKind::Usage) for `value` 0 (it could never be
    /// released); [`ErrorKind::Io`](crate::ErrorKind::Io) if the shared memory cannot be
    /// created.
    ///
    /// # Examples
    /// ```
    /// let sem = mproc::BoundedSemaphore::new(2)?;
    /// assert!(mproc::BoundedSemaphore::new(0).is_err());
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn new(value: u32) -> Result<BoundedSemaphore> {
        if value == 0 {
            return Err(Error::usage(
                "a bounded semaphore needs an initial value of at least 1",
            ));
        }
        Ok(BoundedSemaphore {
            core: Core::new(value, value)?,
        })
    }

    /// Adds one unit, waking one waiter.
    ///
    /// # Errors
    /// [`ErrorKind::Usage`](crate::ErrorKind::Usage) when that would raise the value above
    /// the initial one (Python raises `ValueError`).
    ///
    /// # Examples
    /// ```
    /// let sem = mproc::BoundedSemaphore::new(1)?;
    /// sem.acquire()?.forget();
    /// sem.release()?;
    /// assert!(sem.release().is_err());
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn release(&self) -> Result<()> {
        self.core.give()
    }
}

/// One unit of a [`Semaphore`] or [`BoundedSemaphore`], given back when dropped.
///
/// # Examples
/// ```
/// let sem = mproc::Semaphore::new(1)?;
/// {
///     let _unit = sem.acquire()?;
///     assert_eq!(sem.value(), 0);
/// }
/// assert_eq!(sem.value(), 1);
/// # Ok::<(), mproc::Error>(())
/// ```
#[derive(Debug)]
#[must_use = "the unit is given back as soon as the guard is dropped"]
pub struct SemaphoreGuard<'a> {
    core: &'a Core,
}

impl SemaphoreGuard<'_> {
    /// Keeps the unit taken: nothing is given back (for signalling, where another process
    /// calls `release`).
    ///
    /// # Examples
    /// ```
    /// let sem = mproc::Semaphore::new(1)?;
    /// sem.acquire()?.forget();
    /// assert_eq!(sem.value(), 0);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn forget(self) {
        std::mem::forget(self);
    }
}

impl Drop for SemaphoreGuard<'_> {
    fn drop(&mut self) {
        // Cannot overflow the bound: this unit was taken from the semaphore, unless someone
        // else released beyond it meanwhile, which `give` refuses and we ignore.
        let _ = self.core.give();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: Duration = Duration::from_secs(30);

    #[test]
    fn units_are_counted_across_threads() {
        let sem = Semaphore::new(2).unwrap();
        let inside = AtomicU32::new(0);
        let most = AtomicU32::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..2_000 {
                        let _u = sem.acquire_timeout(LIMIT).unwrap();
                        let n = inside.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(n, Ordering::SeqCst);
                        inside.fetch_sub(1, Ordering::SeqCst);
                    }
                });
            }
        });
        assert!(most.load(Ordering::SeqCst) <= 2);
        assert_eq!(sem.value(), 2);
    }

    #[test]
    fn release_wakes_a_waiter_in_another_thread() {
        let sem = Semaphore::new(0).unwrap();
        std::thread::scope(|s| {
            let h = s.spawn(|| sem.acquire_timeout(LIMIT).map(SemaphoreGuard::forget));
            sem.release().unwrap();
            h.join().unwrap().unwrap();
        });
        assert_eq!(sem.value(), 0);
    }

    #[test]
    fn bounded_refuses_to_exceed_its_start() {
        let sem = BoundedSemaphore::new(2).unwrap();
        assert_eq!(sem.release().unwrap_err().kind(), crate::ErrorKind::Usage);
        let a = sem.try_acquire().unwrap();
        sem.try_acquire().unwrap().forget();
        assert!(sem.try_acquire().is_none());
        drop(a);
        sem.release().unwrap();
        assert_eq!(sem.value(), 2);
        assert!(sem.release().is_err());
    }
}
