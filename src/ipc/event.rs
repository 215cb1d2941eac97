//! [`Event`]: Python's `multiprocessing.Event`, a flag processes can wait on.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::{HEADER, Kind, Shared};
use crate::Result;
use crate::sys::futex;

/// The futex word: bit 0 is the flag, the bits above count `set`s (a generation), so a waiter
/// woken by a `set` returns even if a `clear` came before it ran, as Python's does.
const WORD: usize = HEADER;

/// A flag shared between processes (Python's `multiprocessing.Event`).
///
/// [`set`](Event::set) raises it and wakes every waiter in every process;
/// [`clear`](Event::clear) lowers it; [`wait`](Event::wait) blocks until it is raised.
///
/// # Examples
/// ```
/// use mproc::{Event, Process};
///
/// fn waiter(ready: Event) -> bool {
///     ready.wait_timeout(std::time::Duration::from_secs(30))
/// }
///
/// let ready = Event::new()?;
/// let mut p = Process::spawn(waiter, ready.clone())?;
/// ready.set();
/// assert!(p.join()?);
/// # Ok::<(), mproc::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct Event {
    shared: Shared,
}

super::shared_serde!(Event, Kind::Event);

impl Event {
    /// A new event, not set.
    ///
    /// # Errors
    /// [`ErrorKind::Io`](crate::ErrorKind::Io) if the shared memory cannot be created.
    ///
    /// # Examples
    /// ```
    /// assert!(!mproc::Event::new()?.is_set());
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn new() -> Result<Event> {
        Ok(Event {
            shared: super::create(Kind::Event, 4)?,
        })
    }

    fn word(&self) -> &AtomicU32 {
        self.shared.region().atomic_u32(WORD)
    }

    /// Raises the flag and wakes every waiter, in every process.
    ///
    /// # Examples
    /// ```
    /// let e = mproc::Event::new()?;
    /// e.set();
    /// assert!(e.is_set());
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn set(&self) {
        let raised = self
            .word()
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| {
                (v & 1 == 0).then_some(v.wrapping_add(2) | 1)
            });
        if raised.is_ok() {
            futex::wake(self.word(), u32::MAX);
        }
    }

    /// Lowers the flag.
    ///
    /// # Examples
    /// ```
    /// let e = mproc::Event::new()?;
    /// e.set();
    /// e.clear();
    /// assert!(!e.is_set());
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn clear(&self) {
        self.word().fetch_and(!1, Ordering::SeqCst);
    }

    /// True when the flag is raised.
    ///
    /// # Examples
    /// ```
    /// assert!(!mproc::Event::new()?.is_set());
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn is_set(&self) -> bool {
        self.word().load(Ordering::SeqCst) & 1 != 0
    }

    /// Blocks until the flag is raised (returns at once if it is).
    ///
    /// # Examples
    /// ```
    /// let e = mproc::Event::new()?;
    /// e.set();
    /// e.wait();
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn wait(&self) {
        self.wait_deadline(None);
    }

    /// As [`wait`](Event::wait), for at most `timeout`. Returns `true` when the flag was
    /// raised (Python's `wait(timeout)` return value), `false` on timeout.
    ///
    /// # Examples
    /// ```
    /// let e = mproc::Event::new()?;
    /// assert!(!e.wait_timeout(std::time::Duration::from_millis(5)));
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        self.wait_deadline(super::deadline(timeout))
    }

    fn wait_deadline(&self, deadline: Option<Instant>) -> bool {
        let seen = self.word().load(Ordering::SeqCst);
        if seen & 1 != 0 {
            return true;
        }
        loop {
            let in_time = futex::wait(self.word(), seen, deadline);
            // Any change from a cleared word is a `set` (clear leaves it as it is).
            if self.word().load(Ordering::SeqCst) != seen {
                return true;
            }
            if !in_time {
                return false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: Duration = Duration::from_secs(30);

    #[test]
    fn set_wakes_every_waiting_thread() {
        let e = Event::new().unwrap();
        std::thread::scope(|s| {
            let hs: Vec<_> = (0..3).map(|_| s.spawn(|| e.wait_timeout(LIMIT))).collect();
            e.set();
            for h in hs {
                assert!(h.join().unwrap());
            }
        });
    }

    #[test]
    fn a_set_then_clear_still_releases_a_waiter() {
        let e = Event::new().unwrap();
        let seen = e.word().load(Ordering::SeqCst);
        e.set();
        e.clear();
        assert_ne!(e.word().load(Ordering::SeqCst), seen, "generation moved");
        assert!(!e.is_set());
        assert!(!e.wait_timeout(Duration::from_millis(5)));
    }
}
