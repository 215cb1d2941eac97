//! A job's fate: the one place that turns what happened to a worker into outcomes for the
//! items of the job it was running, re-runs and re-queues. Every path comes here — the
//! supervisor's workers, workers lent to `apply` (`lease`), a serving MPI rank's local pool.
//!
//! The rules, per item (a chunk is a transport detail):
//! - A worker that answers settles every item it ran, each with its own result or panic.
//! - A worker lost in the middle of a job (it died, was killed at a timeout, misbehaved):
//!   - the items it finished keep their results (read back from its arena);
//!   - the item it was running is the only one charged: on a death it is re-run while it has
//!     retries left (`max_retries`, counted per item), else it fails with `WorkerDied` and the
//!     exit status; at a timeout it fails with `TimedOut` (never re-run); on a protocol error
//!     it fails with that error;
//!   - the items after it never ran: they are re-queued, spending no retry;
//!   - no item runs again because another item failed.
//! - A worker lost before it began the job (it died between jobs, or before its first): the
//!   job is re-queued as it is, spending nothing.
//! - A failure of the whole chunk before any item ran (its arguments cannot be decoded, a
//!   foreign binary) fails every item with that error.
//! - A cancelled job (`AsyncResult::cancel`) never runs again: withdrawn from the queue, or
//!   lost with its worker (killed for it, or for any other reason), every item it has left
//!   fails with `Cancelled`. A job lost with a worker killed for another job's cancellation
//!   is that kill's collateral: re-run, spending nothing.

use super::batch::Batch;
use super::result::Answer;
use crate::error::{Error, ExitStatus};
use crate::task::chunk::{self, Items};
use crate::task::progress::{self, Watch};
use crate::trace::event;

/// How a worker was lost with a job in hand.
#[derive(Debug)]
pub(crate) enum Loss {
    /// It died (crashed, was killed from outside, exited), with the cause it announced as it
    /// died, if any (`"stack overflow"`).
    Died(ExitStatus, Option<&'static str>),
    /// It was killed because the running item passed `task_timeout`.
    TimedOut,
    /// It was killed for breaking the protocol (this error).
    Misbehaved(Error),
    /// It reported the running item's failure and is ending: a panic under
    /// `panic = "abort"`, sent by its panic hook just before the abort.
    Reported(Error),
    /// It was killed for another reason than the item it was running (a timeout raced with
    /// the item's end): that item is re-run, spending nothing.
    Collateral,
    /// It was killed because the job it was running was cancelled. If it was running another
    /// job by the time it died (the cancelled one finished first), that one is collateral.
    Cancelled,
}

/// Deaths before a job began that re-queue it for free; past them, its first item is charged
/// as if it had begun, so that a job that kills every worker before it begins (its argument
/// file cannot be mapped there, say) cannot respawn workers forever.
const FREE_UNSTARTED: u32 = 3;

/// How far a lost worker got through the job at the head of its queue.
pub(crate) enum Reached {
    /// It never began the job.
    NotStarted,
    /// It began it: these items (a count, and their outcomes) finished; the next was running,
    /// unless every item had finished.
    Began { finished: Option<(usize, Answer)> },
}

impl Reached {
    /// Reads a dead worker's control block: `answered` is how many jobs it answered, so the
    /// job at the head of its queue (`job`) is the one it began if it began more.
    pub(crate) fn read(watch: &Watch, answered: u64, job: &Batch) -> Reached {
        let snap = watch.snapshot();
        if snap.started <= answered {
            return Reached::NotStarted;
        }
        let counted =
            snap.count == job.items as u64 && (snap.skip..=snap.count).contains(&snap.done);
        // Died decoding its arguments: it began, but no item ran.
        let uncounted = snap.count == progress::UNCOUNTED && snap.done == snap.skip;
        let consistent =
            snap.started == answered + 1 && snap.skip == job.next as u64 && (counted || uncounted);
        if !consistent {
            // Not what this job's run would publish: trust nothing of it, but the job ran.
            event!(
                warn,
                ?snap,
                "a worker's control block does not match its job"
            );
            return Reached::Began { finished: None };
        }
        let count = snap.done - snap.skip;
        if count == 0 {
            return Reached::Began { finished: None };
        }
        let finished = match watch.recover(&snap, chunk::PREFIX) {
            Ok(items) => {
                let tagged = snap.tagged.saturating_sub(snap.skip);
                let body = chunk::rebuild(count, tagged, &items);
                Some((count as usize, Answer::Frame(body)))
            }
            Err(_e) => {
                event!(warn, error = %_e, "cannot read back a dead worker's results");
                None
            }
        };
        Reached::Began { finished }
    }
}

/// True if a panic report that arrives for a worker's head job is the running item's (a
/// worker under `panic = "abort"` reports it from its panic hook, then aborts) rather than
/// the whole run's (a panic decoding the arguments, before any item ran).
pub(crate) fn is_item_panic(watch: &Watch, answered: u64, what: &Result<Answer, Error>) -> bool {
    let Err(e) = what else { return false };
    let snap = watch.snapshot();
    e.kind() == crate::ErrorKind::Panicked
        && snap.started == answered + 1
        && snap.count != progress::UNCOUNTED
        && snap.done < snap.count
}

/// A worker answered `job` (the reply to its latest run). Delivers it.
pub(crate) fn answered(mut job: Batch, what: Result<Answer, Error>) {
    let left = job.left();
    match what {
        Ok(answer) => match Items::parse(answer.payload()).map(|items| items.count()) {
            Ok(count) if count == left => {
                job.settle(count, answer);
                job.deliver();
            }
            Ok(count) => job.fail_rest(Error::protocol(format!(
                "a worker answered {count} items of a chunk with {left} left"
            ))),
            Err(e) => job.fail_rest(e),
        },
        // The whole run failed before any item ran.
        Err(e) => job.fail_rest(e),
    }
}

/// `job` was cancelled: delivers its outcome, every item it has left failing with
/// `Cancelled`, instead of running it (again).
pub(crate) fn cancelled(job: Batch) {
    job.fail_rest(Error::cancelled());
}

/// Jobs to put back in the queue, but those cancelled meanwhile, which are settled instead.
pub(crate) fn requeued(jobs: impl Iterator<Item = Batch>) -> impl Iterator<Item = Batch> {
    jobs.filter_map(|j| {
        if j.is_cancelled() {
            cancelled(j);
            return None;
        }
        Some(j)
    })
}

/// A worker was lost (`loss`) with `job` at the head of its queue, having got this far
/// (`progress`). Returns the job if it must run again (re-queue it first); otherwise its
/// outcome has been delivered.
pub(crate) fn lost(mut job: Batch, progress: Reached, loss: &Loss) -> Option<Batch> {
    if job.is_cancelled() {
        // Whatever killed the worker: what the job has left is not to run.
        cancelled(job);
        return None;
    }
    let finished = match progress {
        Reached::Began { finished } => finished,
        Reached::NotStarted
            if matches!(loss, Loss::Died(..) | Loss::Collateral | Loss::Cancelled) =>
        {
            job.unstarted_losses += 1;
            if job.unstarted_losses <= FREE_UNSTARTED {
                return Some(job);
            }
            None
        }
        // Timed out or misbehaved before it began: charged to its first item, or the job
        // would time out on every worker forever.
        Reached::NotStarted => None,
    };
    if let Some((count, answer)) = finished {
        job.settle(count, answer);
    }
    if !job.is_settled() {
        // The item at `next` was running: it alone is charged.
        match loss {
            Loss::TimedOut => job.fail_one(Error::timed_out()),
            Loss::Misbehaved(e) | Loss::Reported(e) => job.fail_one(e.duplicate()),
            // Killed for another job's cancellation: this one is not to blame.
            Loss::Collateral | Loss::Cancelled => {}
            Loss::Died(..) if job.retries_left > 0 => {
                job.retries_left -= 1;
                event!(
                    warn,
                    item = job.next,
                    retries_left = job.retries_left,
                    "re-running a task lost to a dead worker"
                );
            }
            Loss::Died(status, None) => job.fail_one(Error::worker_died(*status)),
            Loss::Died(status, Some(cause)) => job.fail_one(Error::worker_died_of(*status, cause)),
        }
    }
    if job.is_settled() {
        job.deliver();
        return None;
    }
    Some(job)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::batch::Sink;
    use crate::pool::result::{Outcome, Slot};
    use crate::sys::RawExit;
    use crate::sys::arena::GrowMap;
    use crate::task::progress::Publisher;
    use crate::wire::codec;
    use std::sync::Arc;

    fn job(items: usize, retries: u32) -> (Batch, Arc<Slot>) {
        let slot = Arc::new(Slot::new(1));
        let frame = crate::wire::msg::begin_run(0, b"id", 0, 0).finish();
        let sink = Sink::Slot(Arc::clone(&slot), 0);
        (Batch::new(frame, None, items, sink, retries), slot)
    }

    fn outcome(slot: &Slot) -> Vec<crate::Result<u64>> {
        let o: Outcome = slot.take().pop().unwrap();
        crate::pool::decode_chunk::<u64>(o, 5)
    }

    fn died() -> Loss {
        Loss::Died(ExitStatus::from_raw(RawExit::Signal(9)), None)
    }

    /// A fake worker: runs items `from..to` of a 5-item job (value = 10 * index), commits them
    /// in its arena, and stops (dies) there.
    fn run_and_die(watch: &Watch, from: usize, to: usize) {
        let mut map = GrowMap::from_fd(watch.fd().try_clone_to_owned().unwrap()).unwrap();
        map.resize(4096).unwrap();
        let p = Publisher::begin(&map, from);
        p.counted(&map, 5);
        let mut pos = chunk::PREFIX;
        for k in from..to {
            pos = codec::encode_at(&(10 * k as u64), &mut map, pos).unwrap();
            p.commit(&map, k + 1, pos - chunk::PREFIX);
        }
    }

    #[test]
    fn a_death_mid_chunk_keeps_the_finished_charges_the_running_and_requeues_the_rest() {
        let watch = Watch::create(false).unwrap();
        let (j, slot) = job(5, 0);
        run_and_die(&watch, 0, 2);
        let progress = Reached::read(&watch, 0, &j);
        let mut j = lost(j, progress, &died()).expect("items 3 and 4 never ran");
        assert_eq!(j.next, 3, "0 and 1 kept, 2 failed");
        // The rest runs on another worker, which answers items 3..5.
        j.prepare();
        let run = crate::wire::msg::parse_run(&j.frame[crate::wire::frame::HEADER..]).unwrap();
        assert_eq!(run.skip, 3);
        let watch2 = Watch::create(false).unwrap();
        run_and_die(&watch2, 3, 5);
        let j = {
            let p = Reached::read(&watch2, 0, &j);
            lost(j, p, &died())
        };
        assert!(
            j.is_none(),
            "every item settled, although the worker died after the last"
        );
        let got = outcome(&slot);
        assert_eq!(got[0].as_ref().unwrap(), &0);
        assert_eq!(got[1].as_ref().unwrap(), &10);
        assert!(got[2].as_ref().unwrap_err().is_worker_lost());
        assert_eq!(got[3].as_ref().unwrap(), &30);
        assert_eq!(got[4].as_ref().unwrap(), &40);
    }

    #[test]
    fn retries_count_per_item_and_a_worker_that_never_began_costs_nothing() {
        let watch = Watch::create(false).unwrap();
        let (j, _slot) = job(5, 1);
        let j = {
            let p = Reached::read(&watch, 0, &j);
            lost(j, p, &died())
        }
        .unwrap();
        assert_eq!(
            (j.next, j.retries_left),
            (0, 1),
            "never began: nothing spent"
        );
        assert_eq!(j.unstarted_losses, 1);
        run_and_die(&watch, 0, 1);
        let j = {
            let p = Reached::read(&watch, 0, &j);
            lost(j, p, &died())
        }
        .unwrap();
        assert_eq!((j.next, j.retries_left), (1, 0), "item 1 spent its retry");
        let watch2 = Watch::create(false).unwrap();
        run_and_die(&watch2, 1, 2);
        let j = {
            let p = Reached::read(&watch2, 0, &j);
            lost(j, p, &died())
        }
        .unwrap();
        assert_eq!(
            (j.next, j.retries_left),
            (2, 0),
            "item 2 spent its own retry"
        );
    }

    #[test]
    fn a_timeout_fails_the_running_item_only_and_never_reruns_it() {
        let watch = Watch::create(true).unwrap();
        let (j, slot) = job(5, 3);
        run_and_die(&watch, 0, 4);
        let j = {
            let p = Reached::read(&watch, 0, &j);
            lost(j, p, &Loss::TimedOut)
        };
        assert!(j.is_none(), "item 4 timed out, with retries left: settled");
        let got = outcome(&slot);
        assert_eq!(got[3].as_ref().unwrap(), &30);
        assert!(got[4].as_ref().unwrap_err().is_timeout());
    }

    #[test]
    fn a_cancelled_job_is_never_run_again_and_its_kill_spares_other_jobs() {
        let watch = Watch::create(false).unwrap();
        let (j, slot) = job(5, 3);
        slot.cancel();
        run_and_die(&watch, 0, 2);
        let p = Reached::read(&watch, 0, &j);
        assert!(
            lost(j, p, &died()).is_none(),
            "not re-run, even with retries left"
        );
        assert!(
            slot.is_done() && slot.take().is_empty(),
            "nothing delivered"
        );
        // Another job, running when its worker was killed for a cancellation: collateral.
        let (j, _slot) = job(5, 1);
        let watch = Watch::create(false).unwrap();
        run_and_die(&watch, 0, 2);
        let p = Reached::read(&watch, 0, &j);
        let j = lost(j, p, &Loss::Cancelled).expect("re-run");
        assert_eq!(
            (j.next, j.retries_left),
            (2, 1),
            "items 0, 1 kept; nothing spent"
        );
        // Re-queued jobs: the cancelled ones are settled instead.
        let (keep, _k) = job(1, 0);
        let (drop, dropped) = job(1, 0);
        dropped.cancel();
        let again: Vec<Batch> = requeued([keep, drop].into_iter()).collect();
        assert_eq!(again.len(), 1);
        assert!(!again[0].is_cancelled());
    }

    #[test]
    fn a_control_block_that_lies_recovers_nothing_but_charges_the_running_item() {
        let watch = Watch::create(false).unwrap();
        let (j, _slot) = job(5, 0);
        run_and_die(&watch, 0, 2);
        // The head job is another one than the worker ran (answered count says so).
        assert!(matches!(Reached::read(&watch, 5, &j), Reached::NotStarted));
        let (j7, _s) = job(7, 0);
        let Reached::Began { finished } = Reached::read(&watch, 0, &j7) else {
            panic!("it began")
        };
        assert!(
            finished.is_none(),
            "a count that differs from the job's is not trusted"
        );
    }
}
