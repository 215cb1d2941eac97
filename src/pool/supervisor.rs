//! The supervisor: one thread per pool that owns its workers.
//!
//! It waits in `poll` on: a wake socket (new jobs, close, terminate), every worker's socket
//! (results, EOF) and every worker's pidfd (death, noticed at once), with a timeout at the next
//! task deadline. Each turn of the loop it reads what arrived, delivers results, handles deaths
//! and timeouts, starts replacement workers and hands queued jobs to idle workers.
//!
//! Failure rules (see the `Pool` docs): a job whose worker dies is re-queued while it has
//! retries left, else it fails with `WorkerDied`; a job past its deadline has its worker killed
//! and fails with `TimedOut`; a failing initializer, or workers that die before serving
//! anything again and again, break the pool (every job fails with `Broken`) instead of
//! respawning forever.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::result::{Answer, Outcome, Slot};
use crate::error::{Error, ExitStatus, RemotePanic};
use crate::process::StartMethod;
use crate::process::launch::{self, Spec};
use crate::sys::{self, identity};
use crate::trace::event;
use crate::wire::codec;
use crate::wire::fds::{self, Fds, Received};
use crate::wire::frame::{self, FrameError, FrameReader};
use crate::wire::msg::{self, FromWorker};

/// Where a job's outcome goes.
pub(crate) enum Sink {
    /// Cell `i` of a slot someone waits on.
    Slot(Arc<Slot>, usize),
    /// A channel shared by the jobs of one `imap_unordered`, tagged with the job's item count.
    Channel(mpsc::Sender<(usize, Outcome)>, usize),
}

impl Sink {
    fn deliver(self, outcome: Outcome) {
        match self {
            Sink::Slot(s, i) => s.complete(i, outcome),
            Sink::Channel(tx, n) => {
                let _ = tx.send((n, outcome));
            }
        }
    }
}

/// One unit of work: an encoded `Run` frame and where its outcome goes.
pub(crate) struct Job {
    pub(crate) frame: Vec<u8>,
    /// Fds of handles inside the argument, sent with the frame (and again on a retry).
    pub(crate) fds: Fds,
    pub(crate) sink: Sink,
    pub(crate) retries_left: u32,
}

/// What clients and the supervisor share.
pub(crate) struct Shared {
    pub(crate) queue: Mutex<Queue>,
    wake_tx: UnixStream,
}

/// Pending jobs and the pool's life-cycle flags.
#[derive(Default)]
pub(crate) struct Queue {
    pub(crate) jobs: VecDeque<Job>,
    pub(crate) closed: bool,
    pub(crate) terminate: bool,
    pub(crate) broken: Option<String>,
    wake_pending: bool,
    /// Idle workers a client may borrow for one synchronous task (see `lease`).
    pub(crate) idle: Vec<Lease>,
    /// Borrowed workers handed back with news for the supervisor.
    pub(crate) returned: Vec<Returned>,
}

/// An idle worker lent to a client thread for one `apply`: the client writes the task and
/// reads the answer itself, saving two thread hand-offs per round trip. While lent, the
/// supervisor neither reads its socket nor reaps it.
pub(crate) struct Lease {
    pub(crate) id: u64,
    pub(crate) sock: Arc<UnixStream>,
    pub(crate) pidfd: Option<Arc<OwnedFd>>,
    /// Tasks run while lent since the supervisor last looked.
    pub(crate) tasks: usize,
    /// Tasks it may still run before it must retire (`max_tasks_per_child`).
    pub(crate) tasks_left: Option<usize>,
}

/// What a client hands back instead of an idle lease.
pub(crate) enum Returned {
    /// It reached `max_tasks_per_child`: retire it.
    Retire { id: u64, tasks: usize },
    /// It died, hung past its timeout (killed), or misbehaved while running `job`.
    Lost { id: u64, job: Job, timed_out: bool },
}

impl Shared {
    /// Queues jobs, or refuses them if the pool no longer accepts work.
    pub(crate) fn submit(&self, jobs: impl IntoIterator<Item = Job>) -> Result<(), Error> {
        let mut q = self.lock();
        if q.terminate {
            return Err(Error::closed("the pool was terminated"));
        }
        if q.closed {
            return Err(Error::closed(
                "the pool is closed: no new tasks after close()",
            ));
        }
        if let Some(why) = &q.broken {
            return Err(Error::broken(why.clone()));
        }
        q.jobs.extend(jobs);
        self.wake_locked(q);
        Ok(())
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Wakes the supervisor; at most one wake byte is in flight.
    pub(crate) fn wake_locked(&self, mut q: std::sync::MutexGuard<'_, Queue>) {
        if !q.wake_pending {
            q.wake_pending = true;
            drop(q);
            let _ = (&self.wake_tx).write(&[1]);
        }
    }
}

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

enum State {
    /// Running the initializer.
    Init,
    /// Serving; its jobs in flight are in `Worker::inflight` (none: idle).
    Active,
    /// Killed (timeout, protocol error), retiring, or found dead by a failed write; gets no new
    /// jobs and is reaped when its pidfd fires. Its socket is normally closed already; after a
    /// failed write it stays open, so that the answers it wrote before dying still settle its
    /// jobs in flight (see `assign`).
    Ending,
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

struct Worker {
    id: u64,
    pid: i32,
    pidfd: Option<Arc<OwnedFd>>,
    sock: Option<Arc<UnixStream>>,
    /// Offered to clients in `Queue::idle` (or lent to one right now).
    published: bool,
    reader: FrameReader,
    /// Fds it sent, waiting for the message that owns them.
    received: Received,
    state: State,
    /// Jobs written to the worker, in order: the first is running, the rest wait in its socket.
    inflight: VecDeque<Job>,
    /// When the running job started, and its deadline.
    head_started: Instant,
    head_deadline: Option<Instant>,
    tasks: usize,
    /// Reached the point of serving (hello checked and initializer done).
    served: bool,
}

impl Worker {
    /// The job at the head finished (or failed): the next one, if any, starts now.
    fn pop_head(&mut self, timeout: Option<Duration>) -> Option<Job> {
        let job = self.inflight.pop_front();
        self.restart_head_clock(timeout);
        job
    }

    /// The job at the head (if any) starts running now.
    fn restart_head_clock(&mut self, timeout: Option<Duration>) {
        self.head_started = Instant::now();
        self.head_deadline = timeout.map(|t| self.head_started + t);
    }
}

/// Starts the supervisor thread for a new pool.
pub(crate) fn start(config: Config) -> io::Result<(Arc<Shared>, std::thread::JoinHandle<()>)> {
    let (wake_tx, wake_rx) = sys::socket_pair()?;
    let shared = Arc::new(Shared {
        queue: Mutex::new(Queue::default()),
        wake_tx,
    });
    let sup = Supervisor {
        shared: Arc::clone(&shared),
        config,
        wake_rx,
        workers: Vec::new(),
        startup_failures: 0,
        respawn_at: None,
        avg_task: Duration::from_millis(1),
        next_id: 0,
    };
    let handle = std::thread::Builder::new()
        .name("mproc-pool".into())
        .spawn(move || sup.run())?;
    Ok((shared, handle))
}

struct Supervisor {
    shared: Arc<Shared>,
    config: Config,
    wake_rx: UnixStream,
    workers: Vec<Worker>,
    /// Workers that died before serving anything, since the last one that did.
    startup_failures: usize,
    /// When to try starting workers again after the OS refused.
    respawn_at: Option<Instant>,
    /// Moving average of task run time; it sets the look-ahead depth.
    avg_task: Duration,
    next_id: u64,
}

impl Supervisor {
    fn run(mut self) {
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

    /// Ids of published workers a client has borrowed right now.
    fn lent(&self) -> Vec<u64> {
        // Every turn of the loop asks; skip the lock while nothing is published (during a
        // `map`, say).
        if !self.workers.iter().any(|w| w.published) {
            return Vec::new();
        }
        let q = self.shared.lock();
        self.workers
            .iter()
            .filter(|w| w.published && !q.idle.iter().any(|l| l.id == w.id))
            .map(|w| w.id)
            .collect()
    }

    /// Offers idle workers to clients, when nothing is queued for them.
    fn publish(&mut self, closed: bool) {
        let mut q = self.shared.lock();
        if closed || !q.jobs.is_empty() {
            return;
        }
        for w in &mut self.workers {
            let idle = matches!(w.state, State::Active) && w.inflight.is_empty() && !w.published;
            let (Some(sock), true) = (&w.sock, idle) else {
                continue;
            };
            let tasks_left = self
                .config
                .max_tasks_per_child
                .map(|m| m.saturating_sub(w.tasks));
            if tasks_left == Some(0) {
                continue;
            }
            q.idle.push(Lease {
                id: w.id,
                sock: Arc::clone(sock),
                pidfd: w.pidfd.clone(),
                tasks: 0,
                tasks_left,
            });
            w.published = true;
        }
    }

    /// Takes back the published workers no client has borrowed, to give them queued jobs.
    fn reclaim(&mut self) {
        let leases: Vec<Lease> = self.shared.lock().idle.drain(..).collect();
        for l in leases {
            if let Some(w) = self.workers.iter_mut().find(|w| w.id == l.id) {
                w.published = false;
                w.tasks += l.tasks;
                if l.tasks > 0 {
                    w.served = true;
                    self.startup_failures = 0;
                }
            }
        }
    }

    /// Settles what borrowers handed back.
    fn absorb_returned(&mut self) {
        let returned: Vec<Returned> = self.shared.lock().returned.drain(..).collect();
        for r in returned {
            match r {
                Returned::Retire { id, tasks } => {
                    if let Some(w) = self.workers.iter_mut().find(|w| w.id == id) {
                        w.published = false;
                        w.tasks += tasks;
                        w.served = true;
                        self.startup_failures = 0;
                        retire(w);
                    }
                }
                Returned::Lost { id, job, timed_out } => {
                    let Some(w) = self.workers.iter_mut().find(|w| w.id == id) else {
                        job.sink
                            .deliver(Err(Error::protocol("a lent worker vanished")));
                        continue;
                    };
                    w.published = false;
                    signal(w, sys::SIGKILL);
                    w.sock = None;
                    w.state = State::Ending;
                    // Its fate is decided when it is reaped, not by an old deadline.
                    w.head_deadline = None;
                    if timed_out {
                        job.sink.deliver(Err(Error::timed_out()));
                    } else {
                        // Settled (retry or WorkerDied with its status) when it is reaped.
                        w.inflight.push_back(job);
                    }
                }
            }
        }
    }

    /// True when no job is queued or running (on a lent worker too).
    fn drained(&self) -> bool {
        self.lent().is_empty()
            && self.shared.lock().jobs.is_empty()
            && self
                .workers
                .iter()
                .all(|w| w.inflight.is_empty() && !matches!(w.state, State::Init))
    }

    /// Starts workers until there are `processes` of them serving or starting.
    fn fill(&mut self) {
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
            let w = self.adopt(l);
            event!(info, pid = w.pid, id = w.id, "worker started");
            self.workers.push(w);
        }
        while live(&self.workers) < self.config.processes {
            match self.launch() {
                Ok(w) => {
                    event!(info, pid = w.pid, id = w.id, "worker started");
                    self.workers.push(w);
                }
                Err(e) => {
                    event!(warn, error = %e, "cannot start a worker");
                    if self.workers.is_empty() {
                        self.break_pool(format!("cannot start a worker: {e}"));
                    }
                    self.respawn_at = Some(Instant::now() + Duration::from_millis(50));
                    return;
                }
            }
        }
    }

    fn launch(&mut self) -> io::Result<Worker> {
        let l = launch::launch(self.config.method, &self.config.spec)?;
        Ok(self.adopt(l))
    }

    /// A worker just started: sends it the initializer, if any.
    fn adopt(&mut self, l: launch::Launched) -> Worker {
        self.next_id += 1;
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
            head_started: Instant::now(),
            head_deadline: None,
            tasks: 0,
            served: false,
        };
        if let Some(init) = &self.config.init {
            w.state = State::Init;
            if let Some(s) = &w.sock {
                // A failed write means it died: its pidfd says so on the next turn.
                let _ = fds::write_frame(s, &init.0, init.1.as_deref().unwrap_or_default());
            }
        }
        w
    }

    /// Hands queued jobs to workers: one to each idle worker first, then, when tasks are fast,
    /// more to fill each worker's look-ahead. Several jobs go out in one write.
    fn assign(&mut self) {
        let depth = if self.avg_task < FAST_TASK {
            MAX_DEPTH
        } else {
            1
        };
        if !self.shared.lock().jobs.is_empty() {
            self.reclaim();
        }
        for round in [1, depth] {
            for w in &mut self.workers {
                let usable = matches!(w.state, State::Active) && w.sock.is_some() && !w.published;
                // Top a look-ahead up only once it is half used, so that one write carries
                // many jobs instead of one write per finished task.
                let low = if round == 1 { 1 } else { round / 2 + 1 };
                if !usable || w.inflight.len() >= low {
                    continue;
                }
                let mut want = round - w.inflight.len();
                if let Some(max) = self.config.max_tasks_per_child {
                    // Never send a worker more than it may still run before it retires.
                    want = want.min(max.saturating_sub(w.tasks + w.inflight.len()));
                }
                let mut jobs: Vec<Job> = {
                    let mut q = self.shared.lock();
                    let mut ahead: usize = w.inflight.iter().skip(1).map(|j| j.frame.len()).sum();
                    let mut n = 0;
                    for (k, j) in q.jobs.iter().take(want).enumerate() {
                        // The first job to an idle worker may be any size: it is reading.
                        if !(w.inflight.is_empty() && k == 0) {
                            ahead += j.frame.len();
                            if ahead > LOOKAHEAD_BYTES {
                                break;
                            }
                        }
                        n += 1;
                    }
                    q.jobs.drain(..n).collect()
                };
                if jobs.is_empty() {
                    continue;
                }
                let Some(sock) = w.sock.as_deref() else {
                    continue;
                };
                let sent = send_jobs(sock, &jobs);
                let unsent = jobs.split_off(sent);
                if !unsent.is_empty() {
                    // The worker died (the only way a write to it fails). A job whose frame was
                    // not written whole never started: it goes back to the queue without
                    // spending a retry. Those written whole may have run, so they join
                    // `inflight` like any other. Its pidfd reports the death.
                    //
                    // The socket stays open: the worker may have answered jobs already in
                    // flight (or just sent) before it died, and those answers must settle
                    // them. Treating them as unexpected would fail a finished task with a
                    // protocol error, or, had the jobs been re-queued, run them twice.
                    let mut q = self.shared.lock();
                    for j in unsent.into_iter().rev() {
                        q.jobs.push_front(j);
                    }
                    drop(q);
                    w.state = State::Ending;
                }
                if w.inflight.is_empty() && !jobs.is_empty() {
                    w.head_started = Instant::now();
                    w.head_deadline = self.config.task_timeout.map(|t| w.head_started + t);
                }
                w.inflight.extend(jobs);
            }
        }
    }

    fn wait_and_handle(&mut self) {
        let now = Instant::now();
        let mut timeout = self.respawn_at.map(|t| t.saturating_duration_since(now));
        for w in &self.workers {
            if let (false, Some(d)) = (w.inflight.is_empty(), w.head_deadline) {
                let left = d.saturating_duration_since(now);
                timeout = Some(timeout.map_or(left, |t| t.min(left)));
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
            if let (Some(p), false) = (&w.pidfd, lent.contains(&w.id)) {
                fds.push(p.as_fd());
                owners.push((i, true));
            }
        }
        let ready = match sys::poll_readable(&fds, timeout) {
            Ok(r) => r,
            Err(_) => return,
        };
        drop(fds);
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
            if self.workers[i].pidfd.is_none()
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

    fn read_worker(&mut self, i: usize) {
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
                    if !matches!(w.state, State::Init) {
                        w.state = State::Ending;
                    }
                    return;
                }
            }
        }
    }

    fn on_frame(&mut self, i: usize, frame: Vec<u8>) {
        let outcome = match sort(&mut self.workers[i].received, frame) {
            Ok(None) => return, // fds for the next message
            Ok(Some(Classified::Outcome(o))) => o,
            Ok(Some(Classified::Hello { ours: true })) => {
                // Alive and ours: with no initializer to wait for, the worker has started. A
                // later death (an idle worker killed, a task killed by its timeout) is not a
                // startup failure, or a stuck head task under kills would break the pool.
                let timeout = self.config.task_timeout;
                let w = &mut self.workers[i];
                if !matches!(w.state, State::Init) {
                    w.served = true;
                    self.startup_failures = 0;
                    // Jobs may be sent before the hello: the head's clock starts now, so a
                    // slow start (exec on a loaded machine) never counts as task time.
                    w.restart_head_clock(timeout);
                }
                return;
            }
            Ok(Some(Classified::Hello { ours: false })) => {
                let e = Error::binary_mismatch(identity::own(), b"(another build)");
                return self.break_pool(e.to_string());
            }
            Err(bad) => return self.fail_worker(i, Error::protocol(bad.0)),
        };
        let timeout = self.config.task_timeout;
        let w = &mut self.workers[i];
        match w.state {
            State::Init => match outcome {
                Ok(_) => {
                    w.state = State::Active;
                    w.served = true;
                    self.startup_failures = 0;
                    w.restart_head_clock(timeout);
                }
                Err(e) => self.break_pool(format!("the initializer failed: {e}")),
            },
            // `Ending` with an open socket: a write to it failed, but what it wrote before
            // dying answers its jobs in flight, in order (see `assign`).
            State::Active | State::Ending if !w.inflight.is_empty() => {
                let took = w.head_started.elapsed();
                let job = w.pop_head(timeout).expect("checked non-empty");
                w.served = true;
                w.tasks += 1;
                self.startup_failures = 0;
                job.sink.deliver(outcome);
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

    /// Kills a misbehaving worker: its running job fails with `err` (no retry); the jobs
    /// waiting behind it never started and go back to the queue.
    fn fail_worker(&mut self, i: usize, err: Error) {
        let w = &mut self.workers[i];
        signal(w, sys::SIGKILL);
        w.sock = None;
        w.state = State::Ending;
        if let Some(job) = w.inflight.pop_front() {
            job.sink.deliver(Err(err));
        }
        let waiting: Vec<Job> = w.inflight.drain(..).collect();
        self.requeue(waiting);
    }

    /// Puts jobs that never started back at the front of the queue, in order.
    fn requeue(&mut self, jobs: Vec<Job>) {
        let mut q = self.shared.lock();
        for j in jobs.into_iter().rev() {
            q.jobs.push_front(j);
        }
    }

    fn expire_deadlines(&mut self) {
        let now = Instant::now();
        for i in 0..self.workers.len() {
            let w = &self.workers[i];
            if !w.inflight.is_empty() && w.head_deadline.is_some_and(|d| d <= now) {
                event!(warn, pid = w.pid, "task timed out: killing its worker");
                self.fail_worker(i, Error::timed_out());
            }
        }
    }

    /// Reaps worker `i` if it has ended, and settles its jobs.
    fn reap(&mut self, i: usize) {
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
        let w = &self.workers[i];
        let block = w.pidfd.is_none();
        let status = match sys::waitpid(w.pid, block) {
            Ok(Some(raw)) => ExitStatus::from_raw(raw),
            Ok(None) => return, // not yet: the pidfd fires again
            Err(_) => ExitStatus::from_raw(sys::RawExit::Unknown),
        };
        let mut w = self.workers.swap_remove(i);
        event!(info, pid = w.pid, id = w.id, status = %status, running = w.inflight.len(), "worker exited");
        if let Some(mut job) = w.inflight.pop_front() {
            if job.retries_left > 0 {
                job.retries_left -= 1;
                event!(
                    warn,
                    pid = w.pid,
                    retries_left = job.retries_left,
                    "re-running a task lost to a dead worker"
                );
                w.inflight.push_front(job);
            } else {
                job.sink.deliver(Err(Error::worker_died(status)));
            }
        }
        let waiting: Vec<Job> = w.inflight.drain(..).collect();
        self.requeue(waiting);
        if let State::Init = w.state {
            self.break_pool(format!("the initializer died ({status})"));
        }
        if !w.served {
            self.startup_failures += 1;
            if self.startup_failures > 3 * self.config.processes.max(1) {
                self.break_pool(format!(
                    "workers keep dying before serving a task (last: {status})"
                ));
            }
        }
    }

    fn break_pool(&mut self, why: String) {
        event!(error, reason = %why, "pool broken");
        self.respawn_at = None;
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
                job.sink.deliver(Err(err()));
            }
        }
    }

    fn fail_queued(&mut self, err: impl Fn() -> Error) {
        let jobs: Vec<Job> = self.shared.lock().jobs.drain(..).collect();
        for j in jobs {
            j.sink.deliver(Err(err()));
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
            let _ = sys::waitpid(w.pid, true);
            let jobs: Vec<Job> = w.inflight.drain(..).collect();
            if terminating {
                for j in jobs {
                    j.sink
                        .deliver(Err(Error::closed("the pool was terminated")));
                }
            } else {
                self.requeue(jobs);
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
            if let Some(p) = &w.pidfd {
                let left = deadline.saturating_duration_since(Instant::now());
                if !sys::poll_readable(&[p.as_fd()], Some(left)).is_ok_and(|r| r[0].readable) {
                    signal(&w, sys::SIGKILL);
                }
            }
            let _ = sys::waitpid(w.pid, true);
        }
    }
}

/// A worker's message, sorted.
pub(crate) enum Classified {
    /// Its first message; `ours`: it runs this same executable.
    Hello { ours: bool },
    /// The answer to a task: the frame (for `Done`) or the failure.
    Outcome(Outcome),
}

/// Sorts a worker's message: `Ok(None)` for an `Fds` frame, whose fds wait for the next.
pub(crate) fn sort(
    received: &mut Received,
    frame: Vec<u8>,
) -> Result<Option<Classified>, msg::BadMessage> {
    if received.announce(&frame)? {
        return Ok(None);
    }
    let file = received.file()?;
    classify(frame, file).map(Some)
}

/// Sorts a worker's message; `file` is the fd sent with the `Fds` frame before it, if any.
pub(crate) fn classify(
    frame: Vec<u8>,
    file: Option<OwnedFd>,
) -> Result<Classified, msg::BadMessage> {
    let outcome = match msg::parse_from_worker(&frame)? {
        FromWorker::Hello { identity: id, .. } => {
            return Ok(Classified::Hello {
                ours: id == identity::own(),
            });
        }
        FromWorker::Done(_) => Ok(Answer::Frame(frame)),
        FromWorker::Spilled => {
            let file = file.ok_or(msg::BadMessage("a large result came without its file"))?;
            sys::shm::Payload::from_fd(file)
                .map(Answer::Mapped)
                .map_err(|e| Error::protocol(format!("cannot map a large result: {e}")))
        }
        FromWorker::Panic(bytes) => Err(match codec::decode::<RemotePanic>(bytes) {
            Ok(p) => Error::panicked(p),
            Err(e) => Error::protocol(format!("undecodable panic report: {e}")),
        }),
        FromWorker::Failed(text) => Err(Error::codec(text)),
        FromWorker::Refused { identity: id } => Err(Error::binary_mismatch(identity::own(), id)),
    };
    Ok(Classified::Outcome(outcome))
}

/// Writes `jobs` to a worker, in one write when it can; returns how many were written whole
/// (all of them unless the write failed).
fn send_jobs(sock: &UnixStream, jobs: &[Job]) -> usize {
    if jobs.iter().any(|j| j.fds.is_some()) {
        // Rare: handles inside arguments. Each such job goes with its own fds.
        return jobs
            .iter()
            .take_while(|j| {
                fds::write_frame(sock, &j.frame, j.fds.as_deref().unwrap_or_default()).is_ok()
            })
            .count();
    }
    let written = if let [one] = jobs {
        write_counted(sock, &one.frame)
    } else {
        let mut batch = Vec::with_capacity(jobs.iter().map(|j| j.frame.len()).sum());
        for j in jobs {
            batch.extend_from_slice(&j.frame);
        }
        write_counted(sock, &batch)
    };
    let mut end = 0;
    jobs.iter()
        .take_while(|j| {
            end += j.frame.len();
            end <= written
        })
        .count()
}

/// `write_all` that reports how far it got: a write can fail after part of the buffer went
/// out (the peer died while we were blocked on a full socket), and the frames in that part
/// may have been read and run.
fn write_counted(mut sock: &UnixStream, buf: &[u8]) -> usize {
    let mut done = 0;
    while done < buf.len() {
        match sock.write(&buf[done..]) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    done
}

/// Asks a worker to exit and stops reading from it.
fn retire(w: &mut Worker) {
    if let Some(s) = w.sock.take() {
        let _ = (&*s).write_all(&msg::exit());
    }
    w.state = State::Ending;
}

fn signal(w: &Worker, sig: i32) {
    // The worker's process group too: a task's own subprocesses die with it.
    let _ = sys::kill_group(w.pid, w.pidfd.as_deref().map(AsFd::as_fd), sig);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// A job with a `body`-byte frame, answered into its own slot.
    fn job(body: usize) -> (Job, Arc<Slot>) {
        let slot = Arc::new(Slot::new(1));
        let mut f = frame::FrameBuf::with_capacity(body);
        f.buf.resize(f.buf.len() + body, 0xAB);
        let job = Job {
            frame: f.finish(),
            fds: None,
            sink: Sink::Slot(Arc::clone(&slot), 0),
            retries_left: 0,
        };
        (job, slot)
    }

    /// A supervisor with one fake worker: `sock` is ours, the returned end plays the worker.
    /// Its pid is a `sleep` child, so that a wrong kill hits nothing else and can be seen.
    fn fake_pool() -> (Supervisor, UnixStream, std::process::Child) {
        let (wake_tx, wake_rx) = sys::socket_pair().unwrap();
        let (ours, theirs) = sys::socket_pair().unwrap();
        let child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let worker = Worker {
            id: 1,
            pid: child.id() as i32,
            pidfd: None,
            sock: Some(Arc::new(ours)),
            published: false,
            reader: FrameReader::new(frame::DEFAULT_LIMIT),
            received: Received::default(),
            state: State::Active,
            inflight: VecDeque::new(),
            head_started: Instant::now(),
            head_deadline: None,
            tasks: 0,
            served: true,
        };
        let sup = Supervisor {
            shared: Arc::new(Shared {
                queue: Mutex::new(Queue::default()),
                wake_tx,
            }),
            config: Config {
                processes: 1,
                method: StartMethod::Spawn,
                spec: Spec::default(),
                init: None,
                max_tasks_per_child: None,
                task_timeout: None,
            },
            wake_rx,
            workers: vec![worker],
            startup_failures: 0,
            respawn_at: None,
            // Fast tasks: `assign` tops up the look-ahead.
            avg_task: Duration::from_micros(1),
            next_id: 1,
        };
        (sup, theirs, child)
    }

    /// The chaos test's failure, step by step: a worker answers its running job and dies
    /// before the supervisor reads the answer; topping up its look-ahead then fails. The
    /// answer must still complete the job (it used to fail it with "a worker answered without
    /// a task" and kill the worker), and the jobs that were never sent go back to the queue.
    #[test]
    fn answer_from_a_worker_that_died_before_a_look_ahead_write_completes_its_job() {
        let (mut sup, theirs, mut child) = fake_pool();
        let (running, running_slot) = job(8);
        sup.workers[0].inflight.push_back(running);
        let mut queued_slots = Vec::new();
        {
            let mut q = sup.shared.lock();
            for _ in 0..8 {
                let (j, s) = job(8);
                q.jobs.push_back(j);
                queued_slots.push(s);
            }
        }
        // The worker answers, then dies: its end closes with the answer unread. `shutdown`,
        // not just `drop`: a `Fork` child of a parallel test may hold a copy of the fd.
        (&theirs).write_all(&msg::begin_done().finish()).unwrap();
        theirs.shutdown(std::net::Shutdown::Both).unwrap();
        drop(theirs);

        sup.assign(); // the look-ahead write fails: the peer is gone
        assert!(matches!(sup.workers[0].state, State::Ending));
        assert_eq!(sup.shared.lock().jobs.len(), 8, "unsent jobs are re-queued");
        sup.read_worker(0);

        assert!(running_slot.is_done(), "the answer settles the running job");
        let outcome = running_slot.take().pop().unwrap();
        assert!(outcome.is_ok(), "{outcome:?}");
        assert!(sup.workers[0].inflight.is_empty());
        assert_eq!(sup.shared.lock().jobs.len(), 8);
        assert!(queued_slots.iter().all(|s| !s.is_done()));
        assert!(
            child.try_wait().unwrap().is_none(),
            "no protocol error, so no kill"
        );
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// A worker that dies while a batch is half written: the jobs written whole may have run
    /// and are counted as sent; the rest are not.
    #[test]
    fn send_jobs_counts_the_jobs_written_whole_before_the_peer_died() {
        let (ours, theirs) = sys::socket_pair().unwrap();
        let small: libc::c_int = 4096;
        // SAFETY: a valid socket fd and a c_int option value with its exact size.
        let rc = unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&ours),
                libc::SOL_SOCKET,
                libc::SO_SNDBUF,
                (&small as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0);
        let jobs: Vec<Job> = (0..40).map(|_| job(1000).0).collect();
        let frame_len = jobs[0].frame.len();
        // The worker reads three whole frames, then dies; the writer is blocked by then, its
        // small send buffer long full.
        let reader = std::thread::spawn(move || {
            let mut buf = vec![0; 3 * frame_len];
            (&theirs).read_exact(&mut buf).unwrap();
            // Not just the drop: a `Fork` child of a parallel test may hold a copy of the fd.
            theirs.shutdown(std::net::Shutdown::Both).unwrap();
        });
        let sent = send_jobs(&ours, &jobs);
        reader.join().unwrap();
        assert!(
            (3..jobs.len()).contains(&sent),
            "{sent} of {} counted as sent",
            jobs.len()
        );
        assert_eq!(send_jobs(&ours, &jobs), 0, "nothing goes to a dead worker");
    }
}
