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
//!
//! `MPROC_SPIN=0` in the environment turns every such look off (each wait parks at once), in
//! the parent and in workers alike: it exists for measuring what spinning buys or costs
//! (`benches/pool.rs`, the oversubscription rows). It is read once per process, on the
//! first wait; under the fork server a worker sees the environment the server started with.

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

/// The environment variable that turns spinning off (`0`), for measuring.
const SPIN_ENV: &str = "MPROC_SPIN";

/// Spinning pays only with another CPU to run the other side, and not when `MPROC_SPIN=0`
/// asks for none. Asked once per process (the answer is cached).
pub(crate) fn worth_spinning() -> bool {
    use std::sync::OnceLock;
    static WORTH: OnceLock<bool> = OnceLock::new();
    *WORTH.get_or_init(|| {
        allowed(std::env::var_os(SPIN_ENV).as_deref(), || {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        })
    })
}

/// The rule of [`worth_spinning`], given the variable's value and the CPU count (asked only
/// if the variable leaves spinning on: it reads cgroup files).
fn allowed(var: Option<&std::ffi::OsStr>, cpus: impl FnOnce() -> usize) -> bool {
    var.is_none_or(|v| v != "0") && cpus() > 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mproc_spin_0_turns_spinning_off_and_one_cpu_never_spins() {
        use std::ffi::OsStr;
        assert!(allowed(None, || 2));
        assert!(allowed(Some(OsStr::new("1")), || 2));
        assert!(!allowed(Some(OsStr::new("0")), || 2));
        let unasked = || -> usize { unreachable!("MPROC_SPIN=0: the CPUs are not asked") };
        assert!(!allowed(Some(OsStr::new("0")), unasked));
        assert!(!allowed(None, || 1));
    }

    #[test]
    fn a_look_that_finds_returns_at_once_and_one_that_fails_halves_the_budget() {
        if !worth_spinning() {
            return; // one CPU or `MPROC_SPIN=0`: no look ever spins
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
