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

use std::collections::VecDeque;
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::fate::{self, Loss, Progress};
use super::job::Job;
use super::reply::{Classified, sort};
use super::shared::{Lease, Returned, Shared, Start};
use crate::error::{Error, ExitStatus};
use crate::process::StartMethod;
use crate::process::launch::{self, Spec};
use crate::sys::{self, identity};
use crate::task::progress::Watch;
use crate::trace::event;
use crate::wire::fds::{self, Fds, Received};
use crate::wire::frame::{self, FrameError, FrameReader};
use crate::wire::msg;

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
    /// jobs and is reaped when its pidfd fires. After a failed write or a timeout its socket
    /// stays open, so that the answers it wrote before dying still settle its jobs in flight.
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
/// The longest the supervisor sleeps while a task has a deadline: a pause of the whole
/// program longer than this (Ctrl-Z, `SIGSTOP`, a frozen container) is noticed, and does not
/// count against the running items.
const WATCH_TICK: Duration = Duration::from_millis(200);
/// Sleeping this much longer than asked counts as a pause.
const PAUSE_SLACK: Duration = Duration::from_millis(50);
/// The first wait before starting workers again after the OS refused one (`EAGAIN` under
/// `ulimit -u`, `ENOMEM`...), and the longest, as it doubles.
const MIN_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// With no worker at all, how long starting one may keep failing: before the pool's first
/// worker, `build` then fails; later, the pool is broken (queued tasks fail, never hang).
const START_PATIENCE: Duration = Duration::from_secs(2);
const LIVE_PATIENCE: Duration = Duration::from_secs(10);

struct Worker {
    id: u64,
    pid: i32,
    pidfd: Option<Arc<OwnedFd>>,
    sock: Option<Arc<UnixStream>>,
    /// Offered to clients in `Backlog::idle` (or lent to one right now).
    published: bool,
    reader: FrameReader,
    /// Fds it sent, waiting for the message that owns them.
    received: Received,
    state: State,
    /// Jobs written to the worker, in order: the first is running, the rest wait in its socket.
    inflight: VecDeque<Job>,
    /// Its control block: how far it is through the job at the head of `inflight`.
    watch: Watch,
    /// Jobs it answered, here or while lent: the head of `inflight` is the next one it begins.
    answered: u64,
    /// Since when the head job can have run: when it was handed over, or the one before it
    /// was answered. The first item's start is never earlier.
    head_since: Instant,
    /// Time the program spent stopped while the running item ran (see `WATCH_TICK`), and
    /// which item that is (tasks begun, item index).
    credit: Duration,
    credit_item: (u64, u64),
    /// Why mproc killed it, if it did, and which item was running then: settles the head job
    /// when it is reaped.
    loss: Option<(Loss, (u64, u64))>,
    tasks: usize,
    /// Reached the point of serving (hello checked and initializer done).
    served: bool,
}

impl Worker {
    /// The running item's deadline, from the control block; a bound to look again at, if the
    /// worker has not begun its head job yet.
    fn deadline(&mut self, timeout: Duration, now: Instant) -> Option<Instant> {
        if self.inflight.is_empty() || self.loss.is_some() {
            return None;
        }
        let snap = self.watch.snapshot();
        let item = (snap.started, snap.done);
        if item != self.credit_item {
            self.credit_item = item;
            self.credit = Duration::ZERO;
        }
        let began = snap.started == self.answered + 1 && snap.done < snap.count;
        let start = if began {
            instant_of(snap.item_start_ns, now).max(self.head_since)
        } else {
            self.head_since
        };
        Some(start + timeout + self.credit)
    }
}

/// The `Instant` of a `CLOCK_MONOTONIC` reading (the clock `Instant` uses).
fn instant_of(ns: u64, now: Instant) -> Instant {
    let now_ns = sys::arena::monotonic_ns();
    if ns <= now_ns {
        now.checked_sub(Duration::from_nanos(now_ns - ns))
            .unwrap_or(now)
    } else {
        now + Duration::from_nanos(ns - now_ns)
    }
}

/// Starts the supervisor thread for a new pool.
pub(crate) fn start(config: Config) -> io::Result<(Arc<Shared>, std::thread::JoinHandle<()>)> {
    let (shared, wake_rx) = Shared::new()?;
    let sup = Supervisor {
        shared: Arc::clone(&shared),
        config,
        wake_rx,
        workers: Vec::new(),
        startup_failures: 0,
        respawn_at: None,
        backoff: MIN_BACKOFF,
        failing_since: None,
        short: false,
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
    /// When to try starting workers again after the OS refused, and the wait after the next
    /// refusal (it doubles, up to `MAX_BACKOFF`).
    respawn_at: Option<Instant>,
    backoff: Duration,
    /// Since when starting workers fails without a break, while none is live.
    failing_since: Option<Instant>,
    /// The pool ran short of workers at the last count (said once per shortage).
    short: bool,
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

    /// Offers idle workers to clients, when nothing is queued for them. Only workers whose
    /// hello has arrived: a borrower must never be the one to see a worker start.
    fn publish(&mut self, closed: bool) {
        let mut q = self.shared.lock();
        if closed || !q.jobs.is_empty() {
            return;
        }
        for w in &mut self.workers {
            let idle = matches!(w.state, State::Active)
                && w.served
                && w.inflight.is_empty()
                && !w.published;
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
                w.answered += l.tasks as u64;
                w.head_since = Instant::now();
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
                        w.answered += tasks as u64;
                        retire(w);
                    }
                }
                Returned::Lost {
                    id,
                    tasks,
                    job,
                    timed_out,
                } => {
                    let Some(w) = self.workers.iter_mut().find(|w| w.id == id) else {
                        job.fail_rest(Error::protocol("a lent worker vanished"));
                        continue;
                    };
                    w.published = false;
                    w.tasks += tasks;
                    w.answered += tasks as u64;
                    signal(w, sys::SIGKILL);
                    w.sock = None;
                    w.state = State::Ending;
                    if timed_out {
                        let snap = w.watch.snapshot();
                        w.loss = Some((Loss::TimedOut, (snap.started, snap.done)));
                    }
                    // Settled by `fate` when it is reaped, from how far it got.
                    w.inflight.push_front(job);
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

    /// Starts workers until there are `processes` of them serving or starting. A refusal of
    /// the OS (`fork` failing with `EAGAIN`, say) is retried with a growing backoff; the pool
    /// runs short meanwhile, and says so.
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
    fn refused(&mut self, e: io::Error, live: usize) {
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
    fn add(&mut self, l: launch::Launched) -> io::Result<()> {
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
    fn adopt(&mut self, l: launch::Launched) -> io::Result<Worker> {
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
                for j in &mut jobs {
                    j.prepare();
                }
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
                    w.head_since = Instant::now();
                }
                w.inflight.extend(jobs);
            }
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

    /// The loop slept much longer than it asked, from `since`: the program was stopped (or
    /// starved of CPU) meanwhile. That time does not count against the running items.
    fn credit_pause(&mut self, since: Instant, asked: Option<Duration>) {
        let Some(asked) = asked else { return };
        let slept = since.elapsed();
        if slept <= asked + PAUSE_SLACK {
            return;
        }
        let gap = slept - asked;
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
        let what = match sort(&mut self.workers[i].received, frame) {
            Ok(None) => return, // fds for the next message
            Ok(Some(Classified::Answer(what))) => what,
            Ok(Some(Classified::Hello { ours: true })) => {
                // Alive and ours: with no initializer to wait for, the worker has started. A
                // later death (an idle worker killed, a task killed by its timeout) is not a
                // startup failure, or a stuck head task under kills would break the pool.
                let w = &mut self.workers[i];
                if !matches!(w.state, State::Init) {
                    w.served = true;
                    self.startup_failures = 0;
                    // Jobs may be sent before the hello: a slow start (exec on a loaded
                    // machine) never counts as task time.
                    w.head_since = Instant::now();
                }
                return;
            }
            Ok(Some(Classified::Hello { ours: false })) => {
                let e = Error::binary_mismatch(identity::own(), b"(another build)");
                return self.break_pool(e.to_string());
            }
            Err(bad) => return self.fail_worker(i, Error::protocol(bad.0)),
        };
        let w = &mut self.workers[i];
        match w.state {
            State::Init => match what {
                Ok(_) => {
                    w.state = State::Active;
                    w.served = true;
                    self.startup_failures = 0;
                    w.head_since = Instant::now();
                }
                Err(e) => self.break_pool(format!("the initializer failed: {e}")),
            },
            // `Ending` with an open socket: a write to it failed, or it was killed at a
            // timeout, but what it wrote before dying answers its jobs in flight, in order.
            State::Active | State::Ending if !w.inflight.is_empty() => {
                let took = w.head_since.elapsed();
                let job = w.inflight.pop_front().expect("checked non-empty");
                w.head_since = Instant::now();
                w.answered += 1;
                w.served = true;
                w.tasks += 1;
                self.startup_failures = 0;
                fate::answered(job, what);
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
    fn fail_worker(&mut self, i: usize, err: Error) {
        let w = &mut self.workers[i];
        signal(w, sys::SIGKILL);
        w.sock = None;
        w.state = State::Ending;
        if w.loss.is_none() {
            let snap = w.watch.snapshot();
            w.loss = Some((Loss::Misbehaved(err), (snap.started, snap.done)));
        }
    }

    /// Puts jobs back at the front of the queue, in order.
    fn requeue(&mut self, jobs: impl DoubleEndedIterator<Item = Job>) {
        let mut q = self.shared.lock();
        for j in jobs.rev() {
            q.jobs.push_front(j);
        }
    }

    /// Kills every worker whose running item passed its deadline.
    fn expire_deadlines(&mut self) {
        let Some(timeout) = self.config.task_timeout else {
            return;
        };
        let now = Instant::now();
        for w in &mut self.workers {
            if w.deadline(timeout, now).is_some_and(|d| d <= now) {
                event!(warn, pid = w.pid, "task timed out: killing its worker");
                signal(w, sys::SIGKILL);
                // The socket stays open: answers written before the kill still count.
                w.state = State::Ending;
                let snap = w.watch.snapshot();
                w.loss = Some((Loss::TimedOut, (snap.started, snap.done)));
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
        let live = self
            .workers
            .iter()
            .filter(|w| !matches!(w.state, State::Ending));
        self.shared.live.store(live.count(), Ordering::Relaxed);
        event!(info, pid = w.pid, id = w.id, status = %status, running = w.inflight.len(), "worker exited");
        let mut again = Vec::new();
        if let Some(job) = w.inflight.pop_front() {
            let snap = w.watch.snapshot();
            let loss = match w.loss.take() {
                // Killed for the item that is still the running one.
                Some((loss, item)) if item == (snap.started, snap.done) => loss,
                // Killed for an item that finished meanwhile: the next one is not to blame.
                Some(_) => Loss::Collateral,
                None => Loss::Died(status),
            };
            let progress = Progress::read(&w.watch, w.answered, &job);
            again.extend(fate::lost(job, progress, &loss));
        }
        again.extend(w.inflight.drain(..));
        self.requeue(again.into_iter());
        if let State::Init = w.state {
            self.break_pool(format!("the initializer died ({status})"));
        }
        if !w.served && w.watch.started() == 0 {
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
        let jobs: Vec<Job> = self.shared.lock().jobs.drain(..).collect();
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
            let _ = sys::waitpid(w.pid, true);
            if terminating {
                for j in w.inflight.drain(..) {
                    j.fail_rest(Error::closed("the pool was terminated"));
                }
            } else {
                let jobs: Vec<Job> = w.inflight.drain(..).collect();
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
    let _ = match &w.pidfd {
        Some(fd) => sys::pidfd_send_signal(fd.as_fd(), sig),
        None => sys::kill(w.pid, sig),
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::job::Sink;
    use crate::pool::result::Slot;
    use std::io::Read;

    /// A one-item job with a `body`-byte frame, answered into its own slot.
    fn job(body: usize) -> (Job, Arc<Slot>) {
        let slot = Arc::new(Slot::new(1));
        let mut f = frame::FrameBuf::with_capacity(body);
        f.buf.resize(f.buf.len() + body, 0xAB);
        let job = Job::new(f.finish(), None, 1, Sink::Slot(Arc::clone(&slot), 0), 0);
        (job, slot)
    }

    /// A supervisor with one fake worker: `sock` is ours, the returned end plays the worker.
    /// Its pid is a `sleep` child, so that a wrong kill hits nothing else and can be seen.
    fn fake_pool() -> (Supervisor, UnixStream, std::process::Child) {
        let (shared, wake_rx) = Shared::new().unwrap();
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
            watch: Watch::create(false).unwrap(),
            answered: 0,
            head_since: Instant::now(),
            credit: Duration::ZERO,
            credit_item: (0, 0),
            loss: None,
            tasks: 0,
            served: true,
        };
        let sup = Supervisor {
            shared,
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
            backoff: MIN_BACKOFF,
            failing_since: None,
            short: false,
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
        let mut answer = frame::FrameBuf::new();
        answer
            .buf
            .extend_from_slice(&crate::task::chunk::rebuild(1, 1, &[0]));
        (&theirs).write_all(&answer.finish()).unwrap();
        theirs.shutdown(std::net::Shutdown::Both).unwrap();
        drop(theirs);

        sup.assign(); // the look-ahead write fails: the peer is gone
        assert!(matches!(sup.workers[0].state, State::Ending));
        assert_eq!(sup.shared.lock().jobs.len(), 8, "unsent jobs are re-queued");
        sup.read_worker(0);

        assert!(running_slot.is_done(), "the answer settles the running job");
        let outcome = running_slot.take().pop().unwrap();
        assert!(outcome.iter().all(|p| p.what.is_ok()), "{outcome:?}");
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
