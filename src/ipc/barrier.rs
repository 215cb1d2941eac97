//! [`Barrier`]: Python's `multiprocessing.Barrier`, with its broken state.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::{HEADER, Kind, Shared};
use crate::sys::futex;
use crate::sys::robust::{self, Acquired, MUTEX_SIZE};
use crate::sys::shm::Region;
use crate::{Error, Result};

// Layout after the header. The mutex guards every field; `GEN` is also the futex word
// waiters sleep on, bumped when the barrier trips or breaks. `ENDED_BROKEN` is 1 + the last
// generation that ended by breaking (0: none), so a waiter woken by a bump knows which.
const MUTEX: usize = HEADER;
const COUNT: usize = HEADER + MUTEX_SIZE;
const GEN: usize = COUNT + 4;
const PARTIES: usize = GEN + 4;
const BROKEN: usize = PARTIES + 4;
const ENDED_BROKEN: usize = BROKEN + 4;
const LEN: usize = ENDED_BROKEN + 8 - HEADER;

/// A meeting point for a fixed number of processes (Python's `multiprocessing.Barrier`).
///
/// Each of `parties` callers of [`wait`](Barrier::wait) blocks until all have called it;
/// then all return and the barrier is ready for the next round. A waiter that times out, or
/// [`abort`](Barrier::abort), *breaks* the barrier: every waiter, and every later `wait`,
/// fails with [`ErrorKind::Broken`](crate::ErrorKind::Broken) until
/// [`reset`](Barrier::reset).
///
/// A process that dies while waiting stays counted as arrived; a process that dies inside
/// the barrier's own (very short) critical section breaks it. Use
/// [`wait_timeout`](Barrier::wait_timeout) when a party may die.
///
/// # Examples
/// ```
/// use mproc::{Barrier, Process};
///
/// fn party(b: Barrier) -> usize {
///     b.wait().expect("barrier").index()
/// }
///
/// let b = Barrier::new(3)?;
/// let mut procs = vec![Process::spawn(party, b.clone())?, Process::spawn(party, b.clone())?];
/// let mut seen = vec![b.wait()?.index()];
/// for p in &mut procs {
///     seen.push(p.join()?);
/// }
/// seen.sort();
/// assert_eq!(seen, [0, 1, 2]);
/// # Ok::<(), mproc::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct Barrier {
    shared: Shared,
}

super::shared_serde!(Barrier, Kind::Barrier);

/// What [`Barrier::wait`] returns: the caller's arrival index and whether it was the last.
///
/// # Examples
/// ```
/// let b = mproc::Barrier::new(1)?;
/// let r = b.wait()?;
/// assert_eq!((r.index(), r.is_leader()), (0, true));
/// # Ok::<(), mproc::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarrierWaitResult {
    index: usize,
    leader: bool,
}

impl BarrierWaitResult {
    /// The arrival index, from 0 to `parties - 1`, unique in each round (Python's return
    /// value of `wait`).
    pub fn index(&self) -> usize {
        self.index
    }

    /// True for exactly one caller per round: the last to arrive, whose call released the
    /// others.
    pub fn is_leader(&self) -> bool {
        self.leader
    }
}

impl Barrier {
    /// A barrier for `parties` callers.
    ///
    /// # Errors
    /// [`ErrorKind::Usage`](crate::ErrorKind::Usage) for 0 parties;
    /// [`ErrorKind::Io`](crate::ErrorKind::Io) if the shared memory cannot be created.
    ///
    /// # Examples
    /// ```
    /// let b = mproc::Barrier::new(4)?;
    /// assert_eq!(b.parties(), 4);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn new(parties: u32) -> Result<Barrier> {
        if parties == 0 {
            return Err(Error::usage("a barrier needs at least one party"));
        }
        let shared = super::create(Kind::Barrier, LEN)?;
        shared
            .region()
            .atomic_u32(PARTIES)
            .store(parties, Ordering::Release);
        Ok(Barrier { shared })
    }

    fn region(&self) -> &Region {
        self.shared.region()
    }

    fn field(&self, at: usize) -> &AtomicU32 {
        self.region().atomic_u32(at)
    }

    /// Waits until all parties have called `wait`.
    ///
    /// # Errors
    /// [`ErrorKind::Broken`](crate::ErrorKind::Broken) when the barrier is or becomes broken
    /// while waiting.
    ///
    /// # Examples
    /// ```
    /// let b = mproc::Barrier::new(1)?;
    /// b.wait()?;
    /// b.wait()?; // a new round
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn wait(&self) -> Result<BarrierWaitResult> {
        self.wait_deadline(None)
    }

    /// As [`wait`](Barrier::wait), for at most `timeout`. On timeout the barrier breaks (as
    /// in Python): the other waiters get `Broken`, this one gets
    /// [`ErrorKind::TimedOut`](crate::ErrorKind::TimedOut).
    ///
    /// # Errors
    /// `TimedOut` as above; `Broken` as for [`wait`](Barrier::wait).
    ///
    /// # Examples
    /// ```
    /// let b = mproc::Barrier::new(2)?;
    /// let r = b.wait_timeout(std::time::Duration::from_millis(5));
    /// assert!(r.unwrap_err().is_timeout());
    /// assert!(b.is_broken());
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn wait_timeout(&self, timeout: Duration) -> Result<BarrierWaitResult> {
        self.wait_deadline(super::deadline(timeout))
    }

    fn wait_deadline(&self, deadline: Option<Instant>) -> Result<BarrierWaitResult> {
        self.lock(deadline)?;
        if self.field(BROKEN).load(Ordering::SeqCst) != 0 {
            self.unlock();
            return Err(Error::broken_barrier());
        }
        let index = self.field(COUNT).load(Ordering::SeqCst);
        let parties = self.field(PARTIES).load(Ordering::SeqCst);
        if index + 1 >= parties {
            self.field(COUNT).store(0, Ordering::SeqCst);
            self.field(GEN).fetch_add(1, Ordering::SeqCst);
            futex::wake(self.field(GEN), u32::MAX);
            self.unlock();
            return Ok(BarrierWaitResult {
                index: index as usize,
                leader: true,
            });
        }
        self.field(COUNT).store(index + 1, Ordering::SeqCst);
        let round = self.field(GEN).load(Ordering::SeqCst);
        self.unlock();
        self.sleep(round, deadline)?;
        Ok(BarrierWaitResult {
            index: index as usize,
            leader: false,
        })
    }

    /// Sleeps until generation `round` ends; `Err` if it ended broken or our time ran out.
    fn sleep(&self, round: u32, deadline: Option<Instant>) -> Result<()> {
        loop {
            let in_time = futex::wait(self.field(GEN), round, deadline);
            if self.field(GEN).load(Ordering::SeqCst) != round {
                let ended_broken = self
                    .region()
                    .atomic_u64(ENDED_BROKEN)
                    .load(Ordering::SeqCst);
                return if ended_broken == u64::from(round) + 1 {
                    Err(Error::broken_barrier())
                } else {
                    Ok(())
                };
            }
            if !in_time {
                self.lock(None)?;
                let still = self.field(GEN).load(Ordering::SeqCst) == round;
                if still {
                    self.break_locked();
                }
                self.unlock();
                if still {
                    return Err(Error::timed_out());
                }
            }
        }
    }

    /// Takes the internal lock. A holder that died inside it leaves the fields suspect: the
    /// barrier breaks.
    fn lock(&self, deadline: Option<Instant>) -> Result<()> {
        match robust::lock(self.region(), MUTEX, deadline) {
            None => Err(Error::timed_out()),
            Some(Acquired::Clean) => Ok(()),
            Some(Acquired::Abandoned) => {
                self.break_locked();
                Ok(())
            }
        }
    }

    fn unlock(&self) {
        robust::unlock(self.region(), MUTEX);
    }

    /// Breaks the barrier, ending the current generation as broken. Lock held.
    fn break_locked(&self) {
        self.field(BROKEN).store(1, Ordering::SeqCst);
        self.end_round_broken();
    }

    /// Ends the current generation with its waiters failing. Lock held.
    fn end_round_broken(&self) {
        let round = self.field(GEN).load(Ordering::SeqCst);
        self.region()
            .atomic_u64(ENDED_BROKEN)
            .store(u64::from(round) + 1, Ordering::SeqCst);
        self.field(COUNT).store(0, Ordering::SeqCst);
        self.field(GEN)
            .store(round.wrapping_add(1), Ordering::SeqCst);
        futex::wake(self.field(GEN), u32::MAX);
    }

    /// Breaks the barrier: current and future waiters fail with `Broken` until
    /// [`reset`](Barrier::reset) (Python's `abort()`).
    ///
    /// # Errors
    /// [`ErrorKind::TimedOut`] never happens here (the internal lock is waited for without
    /// a deadline); the `Result` is for platforms where waiting can fail.
    ///
    /// # Examples
    /// ```
    /// let b = mproc::Barrier::new(2)?;
    /// b.abort()?;
    /// assert!(b.wait().is_err());
    /// # Ok::<(), mproc::Error>(())
    /// ```
    ///
    /// [`ErrorKind::TimedOut`]: crate::ErrorKind::TimedOut
    pub fn abort(&self) -> Result<()> {
        self.lock(None)?;
        self.break_locked();
        self.unlock();
        Ok(())
    }

    /// Back to the initial, unbroken state; current waiters fail with `Broken` (Python's
    /// `reset()`).
    ///
    /// # Errors
    /// As [`abort`](Barrier::abort).
    ///
    /// # Examples
    /// ```
    /// let b = mproc::Barrier::new(1)?;
    /// b.abort()?;
    /// b.reset()?;
    /// assert!(b.wait().is_ok());
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn reset(&self) -> Result<()> {
        self.lock(None)?;
        if self.field(COUNT).load(Ordering::SeqCst) > 0 {
            self.end_round_broken();
        }
        self.field(BROKEN).store(0, Ordering::SeqCst);
        self.unlock();
        Ok(())
    }

    /// The number of parties needed to trip the barrier.
    ///
    /// # Examples
    /// ```
    /// assert_eq!(mproc::Barrier::new(3)?.parties(), 3);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn parties(&self) -> u32 {
        self.field(PARTIES).load(Ordering::Acquire)
    }

    /// The number of parties waiting now (Python's `n_waiting`).
    ///
    /// # Examples
    /// ```
    /// assert_eq!(mproc::Barrier::new(3)?.n_waiting(), 0);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn n_waiting(&self) -> u32 {
        self.field(COUNT).load(Ordering::SeqCst)
    }

    /// True when broken (Python's `broken`).
    ///
    /// # Examples
    /// ```
    /// assert!(!mproc::Barrier::new(3)?.is_broken());
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn is_broken(&self) -> bool {
        self.field(BROKEN).load(Ordering::SeqCst) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: Duration = Duration::from_secs(30);

    #[test]
    fn four_threads_meet_many_times() {
        let b = Barrier::new(4).unwrap();
        std::thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        let mut leaders = 0;
                        for _ in 0..200 {
                            let r = b.wait_timeout(LIMIT).unwrap();
                            assert!(r.index() < 4);
                            leaders += usize::from(r.is_leader());
                        }
                        leaders
                    })
                })
                .collect();
            let leaders: usize = hs.into_iter().map(|h| h.join().unwrap()).sum();
            assert_eq!(leaders, 200, "one leader per round");
        });
        assert_eq!(b.n_waiting(), 0);
    }

    #[test]
    fn abort_breaks_a_waiter_and_reset_heals() {
        let b = Barrier::new(2).unwrap();
        std::thread::scope(|s| {
            let h = s.spawn(|| b.wait_timeout(LIMIT));
            // Abort only once the other thread is counted, so it is woken (not refused).
            let start = Instant::now();
            while b.n_waiting() == 0 && start.elapsed() < LIMIT {
                std::thread::yield_now();
            }
            b.abort().unwrap();
            let err = h.join().unwrap().unwrap_err();
            assert_eq!(err.kind(), crate::ErrorKind::Broken);
            assert_eq!(err.to_string(), "the barrier is broken");
        });
        assert!(b.is_broken());
        b.reset().unwrap();
        assert!(!b.is_broken());
        std::thread::scope(|s| {
            let h = s.spawn(|| b.wait_timeout(LIMIT).map(|r| r.index()));
            let mine = b.wait_timeout(LIMIT).unwrap().index();
            assert_eq!(mine + h.join().unwrap().unwrap(), 1);
        });
    }
}
