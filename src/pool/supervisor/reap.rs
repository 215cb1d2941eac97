//! What workers say and how they end: reading answers, deadlines, deaths — each handed to
//! `fate` for the jobs involved.

use std::os::fd::AsFd;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::worker::{Phase, retire, signal};
use super::*;

impl Supervisor {
    pub(super) fn read_worker(&mut self, i: usize) {
        loop {
            let w = &mut self.workers[i];
            let Some(sock) = &w.sock else { return };
            let mut src = fds::FdRead {
                sock: sock.as_fd(),
                fifo: &mut w.received.fifo,
                nowait: true,
            };
            match w.reader.advance(&mut src) {
                Ok(Some(frame)) => self.on_frame(i, frame),
                Ok(None) => continue,
                Err(FrameError::WouldBlock) => return,
                Err(FrameError::TooLong { len, limit }) => {
                    let e = format!(
                        "a worker sent a message of {len} bytes, over the limit of {limit}"
                    );
                    self.fail_worker(i, Error::protocol(e));
                    return;
                }
                // EOF or a broken socket: the death itself arrives through the pidfd.
                Err(FrameError::Eof | FrameError::Truncated { .. } | FrameError::Io(_)) => {
                    w.sock = None;
                    if !matches!(w.state, Phase::Init) {
                        w.state = Phase::Ending;
                    }
                    return;
                }
            }
        }
    }

    pub(super) fn on_frame(&mut self, i: usize, frame: Vec<u8>) {
        let what = match sort(&mut self.workers[i].received, frame) {
            Ok(None) => return, // fds for the next message
            Ok(Some(Classified::Answer(what))) => what,
            Ok(Some(Classified::Dying(cause))) => {
                self.workers[i].last_words = Some(cause);
                return; // its death follows, and is reported with this cause
            }
            Ok(Some(Classified::Hello)) => {
                // Alive and ours: with no initializer to wait for, the worker has started. A
                // later death (an idle worker killed, a task killed by its timeout) is not a
                // startup failure, or a stuck head task under kills would break the pool.
                let w = &mut self.workers[i];
                if !matches!(w.state, Phase::Init) {
                    w.served = true;
                    self.startup_failures = 0;
                    // Jobs may be sent before the hello: a slow start (exec on a loaded
                    // machine) never counts as task time.
                    w.head_since = Instant::now();
                }
                return;
            }
            Ok(Some(Classified::Foreign(e))) => {
                return self.break_pool(e.to_string());
            }
            Err(bad) => return self.fail_worker(i, Error::protocol(bad.0)),
        };
        let w = &mut self.workers[i];
        match w.state {
            Phase::Init => match what {
                Ok(_) => {
                    w.state = Phase::Active;
                    w.served = true;
                    self.startup_failures = 0;
                    w.head_since = Instant::now();
                }
                Err(e) => self.break_pool(format!("the initializer failed: {e}")),
            },
            // `Ending` with an open socket: a write to it failed, or it was killed at a
            // timeout, but what it wrote before dying answers its jobs in flight, in order.
            // A panic report from the middle of a chunk: the worker's panic hook under
            // `panic = "abort"`, about to abort. The item it ran fails with it, once the
            // worker is reaped; the items before it keep their results.
            Phase::Active | Phase::Ending
                if !w.inflight.is_empty() && fate::is_item_panic(&w.watch, w.answered, &what) =>
            {
                let snap = w.watch.snapshot();
                let e = what.expect_err("a panic");
                signal(w, sys::SIGKILL);
                w.state = Phase::Ending;
                w.loss = Some((Loss::Reported(e), (snap.started, snap.done)));
            }
            Phase::Active | Phase::Ending if !w.inflight.is_empty() => {
                let job = w.inflight.pop_front().expect("checked non-empty");
                // Per job it stands for: a merged run of fast tasks is still fast ones.
                let took = w.head_since.elapsed() / job.cells.max(1) as u32;
                w.head_since = Instant::now();
                w.answered += 1;
                w.served = true;
                w.tasks += 1;
                self.startup_failures = 0;
                fate::answered(job, what);
                // The job it runs next may have been cancelled while it waited there.
                self.kill_if_cancelled(i);
                let w = &mut self.workers[i];
                if self
                    .config
                    .max_tasks_per_child
                    .is_some_and(|max| w.tasks >= max)
                {
                    // Retire: the worker exits on `Exit`; reaped when its pidfd fires.
                    retire(w);
                }
                // Moving average over about eight tasks.
                self.avg_task = (self.avg_task * 7 + took) / 8;
            }
            _ => self.fail_worker(i, Error::protocol("a worker answered without a task")),
        }
    }

    /// Kills a misbehaving worker; when it is reaped, the item it was running fails with `err`
    /// and the rest of its jobs go back to the queue (see `fate`).
    pub(super) fn fail_worker(&mut self, i: usize, err: Error) {
        let w = &mut self.workers[i];
        signal(w, sys::SIGKILL);
        w.sock = None;
        w.state = Phase::Ending;
        if w.loss.is_none() {
            let snap = w.watch.snapshot();
            w.loss = Some((Loss::Misbehaved(err), (snap.started, snap.done)));
        }
    }

    /// Kills every worker whose running item passed its deadline.
    pub(super) fn expire_deadlines(&mut self) {
        let Some(timeout) = self.config.task_timeout else {
            return;
        };
        let now = Instant::now();
        for w in &mut self.workers {
            if w.deadline(timeout, now).is_some_and(|d| d <= now) {
                event!(
                    warn,
                    pid = w.child.pid(),
                    "task timed out: killing its worker"
                );
                signal(w, sys::SIGKILL);
                // The socket stays open: answers written before the kill still count.
                w.state = Phase::Ending;
                let snap = w.watch.snapshot();
                w.loss = Some((Loss::TimedOut, (snap.started, snap.done)));
            }
        }
    }

    /// Reaps worker `i` if it has ended, and settles its jobs.
    pub(super) fn reap(&mut self, i: usize) {
        if self.workers[i].published {
            let id = self.workers[i].id;
            let mut q = self.shared.lock();
            let before = q.idle.len();
            q.idle.retain(|l| l.id != id);
            if q.idle.len() == before {
                return; // lent: its borrower reports what happened
            }
            drop(q);
            self.workers[i].published = false;
        }
        // A worker may write its last answer and exit between `poll`'s look at its socket and
        // at its pidfd: read whatever it left before settling its jobs.
        if self.workers[i].sock.is_some() {
            self.read_worker(i);
        }
        // Without a pidfd it was noticed by its closed socket: this then blocks until it ends.
        let status = match self.workers[i].child.reap_ending() {
            Ok(Some(raw)) => ExitStatus::from_raw(raw),
            Ok(None) => return, // not yet: the pidfd fires again
            Err(_) => ExitStatus::from_raw(sys::RawExit::Unknown),
        };
        let mut w = self.workers.swap_remove(i);
        let live = self
            .workers
            .iter()
            .filter(|w| !matches!(w.state, Phase::Ending));
        self.shared.live.store(live.count(), Ordering::Relaxed);
        event!(info, pid = w.child.pid(), id = w.id, status = %status, running = w.inflight.len(), "worker exited");
        let mut again = Vec::new();
        // Killed for a cancellation before its first task: not a worker that cannot start.
        let cancelled = matches!(w.loss, Some((Loss::Cancelled, _)));
        if let Some(job) = w.inflight.pop_front() {
            let snap = w.watch.snapshot();
            let loss = match w.loss.take() {
                // Killed for the item that is still the running one.
                Some((loss, item)) if item == (snap.started, snap.done) => loss,
                // Killed for an item that finished meanwhile: the next one is not to blame.
                Some(_) => Loss::Collateral,
                None => Loss::Died(status, w.last_words),
            };
            let progress = Reached::read(&w.watch, w.answered, &job);
            again.extend(fate::lost(job, progress, &loss));
        }
        again.extend(w.inflight.drain(..));
        self.requeue(again.into_iter());
        if let Phase::Init = w.state {
            self.break_pool(format!("the initializer died ({status})"));
        }
        if !w.served && w.watch.started() == 0 && !cancelled {
            self.startup_failures += 1;
            if self.startup_failures > 3 * self.config.processes.max(1) {
                self.break_pool(format!(
                    "workers keep dying before serving a task (last: {status})"
                ));
            }
        }
    }
}
