//! The supervisor: one thread per pool that owns its workers.
//!
//! It waits in `poll` on: a wake socket (new jobs, close, terminate), every worker's socket
//! (results, EOF) and every worker's pidfd (death, noticed at once), with a timeout at the next
//! task deadline. Each turn of the loop it reads what arrived, delivers results, handles deaths
//! and timeouts, starts replacement workers and hands queued jobs to idle workers.
//!
//! What a death or a timeout means for the job a worker was running is decided in `fate`,
//! from the worker's control block (`task::progress`): the supervisor only notices, kills
//! and reaps. A failing initializer, or workers that die before serving anything again and
//! again, break the pool (every job fails with `Broken`) instead of respawning forever.
//!
//! The parts: this file is the loop and the pool's life cycle; [`worker`] the supervisor's
//! view of one worker (and its running item's deadline); [`start`] starting workers;
//! [`assign`] handing jobs and idle workers out; [`reap`] reading answers, timeouts and
//! deaths, each settled by `fate`.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::batch::Batch;
use super::fate::{self, Loss, Reached};
use super::registry::{self, Lease, Registry, Returned, Start, WATCH_TICK};
use crate::error::{Error, ExitStatus};
use crate::process::StartMethod;
use crate::process::launch::{self, Spec};
use crate::sys;
use crate::task::progress::Watch;
use crate::task::reply::{Classified, sort};
use crate::trace::event;
use crate::wire::fds::{self, Fds, Received};
use crate::wire::frame::{self, FrameError, FrameReader};
use crate::wire::msg;

mod assign;
mod cancel;
mod reap;
mod start;
#[cfg(test)]
mod tests;
mod worker;

use worker::{Worker, retire, signal};

/// Settings the supervisor needs.
pub(crate) struct Config {
    pub(crate) processes: usize,
    pub(crate) method: StartMethod,
    pub(crate) spec: Spec,
    /// The initializer's `Run` frame, sent first to every new worker.
    pub(crate) init: Option<(Vec<u8>, Fds)>,
    pub(crate) max_tasks_per_child: Option<usize>,
    pub(crate) task_timeout: Option<Duration>,
}

/// Jobs sent ahead to a worker whose tasks are fast, so that it never waits for the supervisor
/// between them. Slow tasks get no look-ahead, so that a long task never holds back queued
/// ones while another worker is idle.
const MAX_DEPTH: usize = 64;
/// Tasks shorter than this (moving average) count as fast.
const FAST_TASK: Duration = Duration::from_micros(200);
/// Bytes of jobs sent ahead of the running one, at most. Well under a socket's send buffer,
/// so writing them never blocks: a blocked write here while the worker blocks writing a large
/// result to us would deadlock both.
const LOOKAHEAD_BYTES: usize = 48 << 10;
/// The most bytes of look-ahead, where a worker's socket has room for it: a few automatic
/// chunks (64 KiB each), so that a worker of a large `map` never waits for its next one.
const MAX_LOOKAHEAD_BYTES: usize = 256 << 10;
/// The first wait before starting workers again after the OS refused one (`EAGAIN` under
/// `ulimit -u`, `ENOMEM`...), and the longest, as it doubles.
const MIN_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// With no worker at all, how long starting one may keep failing: before the pool's first
/// worker, `build` then fails; later, the pool is broken (queued tasks fail, never hang).
const START_PATIENCE: Duration = Duration::from_secs(2);
const LIVE_PATIENCE: Duration = Duration::from_secs(10);

/// Starts the supervisor thread for a new pool.
pub(crate) fn start(config: Config) -> io::Result<(Arc<Registry>, std::thread::JoinHandle<()>)> {
    let (shared, wake_rx) = Registry::new()?;
    let sup = Supervisor::new(Arc::clone(&shared), config, wake_rx);
    let handle = std::thread::Builder::new()
        .name("mproc-pool".into())
        .spawn(move || sup.run())?;
    Ok((shared, handle))
}

struct Supervisor {
    shared: Arc<Registry>,
    config: Config,
    wake_rx: UnixStream,
    workers: Vec<Worker>,
    /// Workers that died before serving anything, since the last one that did.
    startup_failures: usize,
    /// When to try starting workers again after the OS refused, and the wait after the next
    /// refusal (it doubles, up to `MAX_BACKOFF`).
    respawn_at: Option<Instant>,
    backoff: Duration,
    /// Since when starting workers fails without a break, while none is live.
    failing_since: Option<Instant>,
    /// The pool ran short of workers at the last count (said once per shortage).
    short: bool,
    /// Asks the starter thread for workers (made on first need), and how many it owes.
    starter: Option<start::Starter>,
    launching: usize,
    /// The pool's first workers were asked for (on this thread; later ones on the starter).
    filled_once: bool,
    /// `build` was told a first worker started.
    running: bool,
    /// Moving average of task run time; it sets the look-ahead depth.
    avg_task: Duration,
    next_id: u64,
}

impl Supervisor {
    /// A supervisor with no worker yet.
    fn new(shared: Arc<Registry>, config: Config, wake_rx: UnixStream) -> Supervisor {
        Supervisor {
            shared,
            config,
            wake_rx,
            workers: Vec::new(),
            startup_failures: 0,
            respawn_at: None,
            backoff: MIN_BACKOFF,
            failing_since: None,
            short: false,
            starter: None,
            launching: 0,
            filled_once: false,
            running: false,
            avg_task: Duration::from_millis(1),
            next_id: 0,
        }
    }

    fn run(mut self) {
        self.serve();
        self.stop_starter();
    }

    fn serve(&mut self) {
        loop {
            let (terminate, closed, broken) = {
                let q = self.shared.lock();
                (q.terminate, q.closed, q.broken.is_some())
            };
            if terminate {
                self.kill_all();
                self.fail_returned(|| Error::closed("the pool was terminated"));
                self.fail_queued(|| Error::closed("the pool was terminated"));
                return;
            }
            if broken {
                self.kill_all();
                let why = self.shared.lock().broken.clone().unwrap_or_default();
                self.fail_returned(|| Error::broken(why.clone()));
                self.fail_queued(|| Error::broken(why.clone()));
                if closed {
                    return;
                }
            } else {
                self.absorb_returned();
                self.withdraw_cancelled();
                self.fill();
                self.assign();
                self.publish(closed);
                if closed && self.drained() {
                    self.shutdown();
                    return;
                }
            }
            self.wait_and_handle();
        }
    }

    fn wait_and_handle(&mut self) {
        let now = Instant::now();
        let mut timeout = self.respawn_at.map(|t| t.saturating_duration_since(now));
        if let Some(t) = self.config.task_timeout {
            for w in &mut self.workers {
                if let Some(d) = w.deadline(t, now) {
                    let left = d.saturating_duration_since(now).min(WATCH_TICK);
                    timeout = Some(timeout.map_or(left, |t| t.min(left)));
                }
            }
        }
        // Poll set: the wake socket, then per worker its socket (if open) and its pidfd.
        let mut fds: Vec<BorrowedFd<'_>> = vec![self.wake_rx.as_fd()];
        let mut owners = Vec::new();
        let lent = self.lent();
        for (i, w) in self.workers.iter().enumerate() {
            // A published worker's socket belongs to whichever client borrows it; a lent
            // worker's death is its borrower's to notice.
            if let (Some(s), false) = (&w.sock, w.published) {
                fds.push(s.as_fd());
                owners.push((i, false));
            }
            if let (Some(p), false) = (w.child.exit_fd(), lent.contains(&w.id)) {
                fds.push(p);
                owners.push((i, true));
            }
        }
        let ready = match sys::poll_readable(&fds, timeout) {
            Ok(r) => r,
            Err(_) => return,
        };
        drop(fds);
        self.credit_pause(now, timeout);
        if ready[0].readable {
            self.drain_wake();
        }
        let mut readable = Vec::new();
        let mut exited = Vec::new();
        for (r, &(i, is_pidfd)) in ready[1..].iter().zip(&owners) {
            if r.readable {
                if is_pidfd {
                    exited.push(i)
                } else {
                    readable.push(i)
                }
            }
        }
        // Results first: a worker that answered and then died must not lose its answer.
        for i in readable {
            self.read_worker(i);
        }
        // Workers without pidfds are reaped when their socket closes.
        for i in 0..self.workers.len() {
            if self.workers[i].child.exit_fd().is_none()
                && self.workers[i].sock.is_none()
                && !exited.contains(&i)
            {
                exited.push(i);
            }
        }
        self.expire_deadlines();
        exited.sort_unstable();
        for &i in exited.iter().rev() {
            self.reap(i);
        }
    }

    /// The loop slept much longer than it asked, from `since`: the program was stopped (or
    /// starved of CPU) meanwhile. That time does not count against the running items.
    fn credit_pause(&mut self, since: Instant, asked: Option<Duration>) {
        let Some(gap) = registry::paused_for(since, asked) else {
            return;
        };
        event!(
            info,
            ?gap,
            "the pool was paused: running tasks get the time back"
        );
        for w in &mut self.workers {
            if !w.inflight.is_empty() {
                w.credit += gap;
                w.head_since += gap;
            }
        }
    }

    /// Consumes wake bytes, then re-arms waking. The order matters: while `wake_pending` is
    /// set no client writes a byte, so draining first cannot swallow a wake meant for later;
    /// and the queue is read (next turn of the loop) only after the flag is cleared, so a job
    /// queued before that is seen, and one queued after it writes a new byte.
    fn drain_wake(&mut self) {
        let mut buf = [0u8; 64];
        while let Ok(n) = sys::recv_nowait(self.wake_rx.as_fd(), &mut buf) {
            if n < buf.len() {
                break;
            }
        }
        self.shared.lock().wake_pending = false;
    }

    /// Puts jobs back at the front of the queue, in order (those cancelled meanwhile are
    /// settled instead).
    pub(super) fn requeue(&mut self, jobs: impl DoubleEndedIterator<Item = Batch>) {
        let jobs: Vec<Batch> = fate::requeued(jobs).collect();
        let mut q = self.shared.lock();
        for j in jobs.into_iter().rev() {
            q.jobs.push_front(j);
        }
    }

    pub(super) fn break_pool(&mut self, why: String) {
        event!(error, reason = %why, "pool broken");
        self.respawn_at = None;
        self.shared.set_start(Start::Failed(why.clone()));
        let mut q = self.shared.lock();
        if q.broken.is_none() {
            q.broken = Some(why);
        }
    }

    /// Settles jobs handed back by borrowers when the pool will not run them again.
    fn fail_returned(&mut self, err: impl Fn() -> Error) {
        let returned: Vec<Returned> = self.shared.lock().returned.drain(..).collect();
        for r in returned {
            if let Returned::Lost { job, .. } = r {
                job.fail_rest(err());
            }
        }
    }

    fn fail_queued(&mut self, err: impl Fn() -> Error) {
        let jobs: Vec<Batch> = self.shared.lock().jobs.drain(..).collect();
        for j in jobs {
            j.fail_rest(err());
        }
    }

    /// SIGKILLs and reaps every worker; running and waiting jobs fail as terminated (or, for
    /// a broken pool, with the reason, via `fail_queued`).
    fn kill_all(&mut self) {
        for w in &self.workers {
            signal(w, sys::SIGKILL);
        }
        let terminating = self.shared.lock().terminate;
        for mut w in std::mem::take(&mut self.workers) {
            let _ = w.child.reap();
            if terminating {
                for j in w.inflight.drain(..) {
                    j.fail_rest(Error::closed("the pool was terminated"));
                }
            } else {
                let jobs: Vec<Batch> = w.inflight.drain(..).collect();
                self.requeue(jobs.into_iter());
            }
        }
    }

    /// Closed and drained: tell every worker to exit, then reap it.
    fn shutdown(&mut self) {
        for w in &mut self.workers {
            retire(w);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for w in self.workers.drain(..) {
            if let Some(p) = w.child.exit_fd() {
                let left = deadline.saturating_duration_since(Instant::now());
                if !sys::poll_readable(&[p], Some(left)).is_ok_and(|r| r[0].readable) {
                    signal(&w, sys::SIGKILL);
                }
            }
            let _ = w.child.reap();
        }
    }
}
