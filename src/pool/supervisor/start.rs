//! Starting workers: as many as the pool keeps, with a backoff when the OS refuses; each one
//! gets its control block first, then the initializer.

use std::io;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::worker::{State, Worker};
use super::*;

impl Supervisor {
    /// Starts workers until there are `processes` of them serving or starting. A refusal of
    /// the OS (`fork` failing with `EAGAIN`, say) is retried with a growing backoff; the pool
    /// runs short meanwhile, and says so.
    pub(super) fn fill(&mut self) {
        if self.respawn_at.is_some_and(|t| Instant::now() < t) {
            return;
        }
        self.respawn_at = None;
        let live = |workers: &[Worker]| {
            workers
                .iter()
                .filter(|w| !matches!(w.state, State::Ending))
                .count()
        };
        // Several at once (a new pool, workers lost together) go to the fork server in one go.
        let missing = self.config.processes.saturating_sub(live(&self.workers));
        for l in launch::launch_many(self.config.method, &self.config.spec, missing) {
            if let Err(_e) = self.add(l) {
                event!(warn, error = %_e, "cannot set up a worker");
            }
        }
        while live(&self.workers) < self.config.processes {
            let started = launch::launch(self.config.method, &self.config.spec);
            if let Err(e) = started.and_then(|l| self.add(l)) {
                self.refused(e, live(&self.workers));
                break;
            }
        }
        let n = live(&self.workers);
        self.shared.live.store(n, Ordering::Relaxed);
        if n > 0 {
            self.backoff = MIN_BACKOFF;
            self.failing_since = None;
            self.shared.set_start(Start::Running);
        }
        if n == self.config.processes {
            self.short = false;
        }
    }

    /// The OS refused a new worker (`live` are running): try again later, or give up.
    pub(super) fn refused(&mut self, e: io::Error, live: usize) {
        event!(warn, error = %e, live, wanted = self.config.processes, "cannot start a worker");
        if live > 0 && !self.short {
            self.short = true;
            event!(
                warn,
                live,
                wanted = self.config.processes,
                "the pool runs short of workers"
            );
        }
        let since = *self.failing_since.get_or_insert_with(Instant::now);
        if live == 0 {
            let first = matches!(self.shared.lock().start, Start::Pending);
            let patience = if first { START_PATIENCE } else { LIVE_PATIENCE };
            if since.elapsed() >= patience {
                let why = format!(
                    "cannot start a worker: {e} (still failing after {:.1} s)",
                    since.elapsed().as_secs_f64()
                );
                self.shared.set_start(Start::Failed(why.clone()));
                self.break_pool(why);
                return;
            }
        }
        self.respawn_at = Some(Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }

    /// Takes on a worker just started; kills it if it cannot be set up.
    pub(super) fn add(&mut self, l: launch::Launched) -> io::Result<()> {
        let (pid, pidfd) = (
            l.pid,
            l.pidfd.as_ref().map(|p| p.as_fd().try_clone_to_owned()),
        );
        match self.adopt(l) {
            Ok(w) => {
                event!(info, pid = w.pid, id = w.id, "worker started");
                self.workers.push(w);
                Ok(())
            }
            Err(e) => {
                match pidfd {
                    Some(Ok(p)) => drop(sys::pidfd_send_signal(p.as_fd(), sys::SIGKILL)),
                    _ => drop(sys::kill(pid, sys::SIGKILL)),
                }
                let _ = sys::waitpid(pid, true);
                Err(e)
            }
        }
    }

    /// A worker just started: sends it its control block, then the initializer, if any.
    pub(super) fn adopt(&mut self, l: launch::Launched) -> io::Result<Worker> {
        let watch = Watch::create(self.config.task_timeout.is_some())?;
        let control = [watch.fd().try_clone_to_owned()?];
        // A failed write means it died: its pidfd says so on the next turn.
        let _ = fds::write_frame(&l.sock, &msg::control(), &control);
        drop(control);
        self.next_id += 1;
        let now = Instant::now();
        let mut w = Worker {
            id: self.next_id,
            pid: l.pid,
            pidfd: l.pidfd.map(Arc::new),
            sock: Some(Arc::new(l.sock)),
            published: false,
            reader: FrameReader::new(frame::DEFAULT_LIMIT),
            received: Received::default(),
            state: State::Active,
            inflight: VecDeque::new(),
            watch,
            answered: 0,
            head_since: now,
            credit: Duration::ZERO,
            credit_item: (0, 0),
            loss: None,
            tasks: 0,
            served: false,
        };
        if let Some(init) = &self.config.init {
            w.state = State::Init;
            if let Some(s) = &w.sock {
                let _ = fds::write_frame(s, &init.0, init.1.as_deref().unwrap_or_default());
            }
        }
        Ok(w)
    }
}
