//! Spin, then park: a side that expects the other's answer within microseconds looks for it
//! for a short, adaptive while before it sleeps in the kernel.
//!
//! Waking a sleeping thread or process costs tens of microseconds on a virtual machine (an
//! idle vCPU must be woken first): more than the whole of a small task's round trip. So the
//! two ends of a hand-off (the caller of `apply` waiting for its answer, a worker waiting for
//! its next task) look with non-blocking reads first. Three rules keep it cheap:
//!
//! - **Only with a core to spin on**: never on a single CPU, and every look yields the CPU
//!   (`sched_yield`), so a runnable thread on the same core — the very one we may be waiting
//!   for, on an oversubscribed machine — runs first.
//! - **Bounded and adaptive** (in the spirit of crossbeam's `Backoff`): each waiter keeps its
//!   own budget, at most [`MAX`]. A look that fails halves it; a sleep that turns out short
//!   (the answer came within [`MAX`] of parking) restores it. A waiter whose answers come
//!   slowly (long tasks, a pool fed now and then) soon stops spinning at all.
//! - **Never idle**: spinning only follows activity. An idle pool sleeps.

use std::time::{Duration, Instant};

/// The longest a waiter looks before it sleeps.
pub(crate) const MAX: Duration = Duration::from_micros(50);

/// A waiter's spin budget.
#[derive(Debug)]
pub(crate) struct Spin {
    budget: Duration,
}

impl Default for Spin {
    fn default() -> Self {
        // Whether there is a core to spin on is asked on the first look, not here: a child that
        // never waits hot (a `Process`) must not pay for the question (`available_parallelism`
        // reads cgroup files: 50-100 µs of a spawn).
        Spin { budget: MAX }
    }
}

impl Spin {
    /// Looks (`look`: a non-blocking attempt) until it gives something or the budget is
    /// spent. `None`: park now, then call [`parked`](Spin::parked) with how long it slept.
    pub(crate) fn look<T>(&mut self, mut look: impl FnMut() -> Option<T>) -> Option<T> {
        if self.budget.is_zero() || !worth_spinning() {
            return None;
        }
        let start = Instant::now();
        loop {
            if let Some(found) = look() {
                return Some(found);
            }
            if start.elapsed() >= self.budget {
                self.budget /= 2;
                if self.budget < Duration::from_micros(2) {
                    self.budget = Duration::ZERO;
                }
                return None;
            }
            std::thread::yield_now();
        }
    }

    /// After a sleep of `slept`: a short one means looking longer would have found it.
    pub(crate) fn parked(&mut self, slept: Duration) {
        if slept <= MAX && worth_spinning() {
            self.budget = MAX;
        }
    }
}

/// Spinning pays only with another CPU to run the other side.
fn worth_spinning() -> bool {
    use std::sync::OnceLock;
    static CPUS: OnceLock<usize> = OnceLock::new();
    *CPUS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get())) > 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_look_that_finds_returns_at_once_and_one_that_fails_halves_the_budget() {
        if !worth_spinning() {
            return; // one CPU: no look ever spins (the rule under test below needs two)
        }
        let mut spin = Spin { budget: MAX };
        assert_eq!(spin.look(|| Some(7)), Some(7));
        assert_eq!(spin.budget, MAX);
        assert_eq!(spin.look(|| None::<()>), None);
        assert_eq!(spin.budget, MAX / 2);
        for _ in 0..10 {
            spin.look(|| None::<()>);
        }
        assert_eq!(
            spin.budget,
            Duration::ZERO,
            "a waiter that never finds stops spinning"
        );
        let mut calls = 0;
        assert_eq!(
            spin.look(|| {
                calls += 1;
                Some(())
            }),
            None
        );
        assert_eq!(calls, 0, "no budget: no look");
        spin.parked(Duration::from_micros(10));
        assert_eq!(spin.budget, MAX, "a short sleep restores it");
        spin.budget = Duration::from_micros(8);
        spin.parked(Duration::from_millis(5));
        assert_eq!(
            spin.budget,
            Duration::from_micros(8),
            "a long sleep changes nothing"
        );
    }
}
