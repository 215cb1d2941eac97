//! Cancelled handles: their queued jobs withdrawn, the workers running them killed. What each
//! job then gets is `fate`'s to say (`fate::cancelled`, and `fate::lost` once the worker is
//! reaped).

use super::worker::{Phase, signal};
use super::*;

impl Supervisor {
    /// After a handle was cancelled: settles its queued jobs without running them, and kills
    /// each worker whose running job is one of its jobs.
    pub(super) fn withdraw_cancelled(&mut self) {
        let withdrawn: VecDeque<Batch> = {
            let mut q = self.shared.lock();
            if !std::mem::take(&mut q.cancelled) {
                return;
            }
            let (withdrawn, kept) = std::mem::take(&mut q.jobs)
                .into_iter()
                .partition(Batch::is_cancelled);
            q.jobs = kept;
            withdrawn
        };
        for j in withdrawn {
            fate::cancelled(j);
        }
        for i in 0..self.workers.len() {
            self.kill_if_cancelled(i);
        }
        // Jobs sent ahead behind a running one are killed when they come to run (see
        // `on_frame`): the worker cannot be told to skip one, and killing it now would cost
        // the running job, which is not cancelled, a second run.
    }

    /// Kills worker `i` if the job it runs (the head of its queue) was cancelled; `fate`
    /// settles the job when the worker is reaped, and re-queues the ones behind it.
    pub(super) fn kill_if_cancelled(&mut self, i: usize) {
        let w = &mut self.workers[i];
        if !w.inflight.front().is_some_and(Batch::is_cancelled) {
            return;
        }
        if matches!(w.loss, Some((Loss::Cancelled, _))) {
            return; // killed already
        }
        event!(
            info,
            pid = w.child.pid(),
            "task cancelled: killing its worker"
        );
        signal(w, sys::SIGKILL);
        // The socket stays open: answers written before the kill still settle their jobs.
        w.state = Phase::Ending;
        if w.loss.is_none() {
            let snap = w.watch.snapshot();
            w.loss = Some((Loss::Cancelled, (snap.started, snap.done)));
        }
    }
}
