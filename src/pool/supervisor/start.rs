//! Starting workers: as many as the pool keeps, with a backoff when the OS refuses; each one
//! gets its control block first, then the initializer.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use super::worker::{Phase, Worker};
use super::*;
use crate::pool::registry::Launch;

impl Supervisor {
    /// Starts workers until there are `processes` of them serving or starting. The launches
    /// run on the starter thread, so that a slow or stuck fork server never holds up this
    /// loop: healthy workers keep serving meanwhile. A refusal of the OS (`fork` failing with
    /// `EAGAIN`, say) is retried with a growing backoff; the pool runs short meanwhile, and
    /// says so.
    pub(super) fn fill(&mut self) {
        if self.launching > 0 {
            self.absorb_launched();
        }
        let live = self.live();
        self.shared.live.store(live, Ordering::Relaxed);
        if live > 0 && !self.running {
            self.running = true;
            self.shared.set_start(Start::Running);
        }
        if live == self.config.processes {
            self.short = false;
        }
        if self.respawn_at.is_some_and(|t| Instant::now() < t) {
            return;
        }
        self.respawn_at = None;
        let missing = self.config.processes.saturating_sub(live + self.launching);
        if missing == 0 {
            return;
        }
        if !self.filled_once {
            // A new pool's workers start right here: nothing is running yet that a slow
            // fork server could hold up, and `build` is waiting for them. (A stuck server
            // costs `build` its reply timeout, then it is replaced.)
            self.filled_once = true;
            return self.fill_here(missing);
        }
        if self.starter.is_none() {
            match spawn_starter(&self.shared, &self.config) {
                Ok(tx) => self.starter = Some(tx),
                Err(e) => return self.refused(e, live),
            }
        }
        let sent = self
            .starter
            .as_ref()
            .is_some_and(|(tx, _)| tx.send(missing).is_ok());
        if sent {
            self.launching += missing;
        } else {
            self.starter = None;
            self.refused(io::Error::other("the starter thread is gone"), live);
        }
    }

    /// Starts `missing` workers on this thread (a new pool's).
    fn fill_here(&mut self, missing: usize) {
        let many = launch::launch_many(self.config.method, &self.config.spec, missing);
        let mut left = missing - many.len().min(missing);
        for l in many {
            self.shared.lock().launched.push(Launch::Started(l));
        }
        while left > 0 {
            match launch::launch(self.config.method, &self.config.spec) {
                Ok(l) => self.shared.lock().launched.push(Launch::Started(l)),
                Err(e) => {
                    self.shared.lock().launched.push(Launch::Failed(left, e));
                    break;
                }
            }
            left -= 1;
        }
        self.launching += missing;
        self.fill();
    }

    /// Workers started and not ending.
    pub(super) fn live(&self) -> usize {
        self.workers
            .iter()
            .filter(|w| !matches!(w.state, Phase::Ending))
            .count()
    }

    /// Takes on what the starter thread launched.
    fn absorb_launched(&mut self) {
        let launched: Vec<Launch> = std::mem::take(&mut self.shared.lock().launched);
        for l in launched {
            match l {
                Launch::Started(l) => {
                    self.launching = self.launching.saturating_sub(1);
                    if let Err(e) = self.add(l) {
                        let live = self.live();
                        self.refused(e, live);
                    } else {
                        self.backoff = MIN_BACKOFF;
                        self.failing_since = None;
                    }
                }
                Launch::Failed(n, e) => {
                    self.launching = self.launching.saturating_sub(n);
                    let live = self.live();
                    self.refused(e, live);
                }
            }
        }
    }

    /// The supervisor returns: what the starter launched and nobody took on is killed (the
    /// starter kills what it launches from now on itself).
    pub(super) fn stop_starter(&mut self) {
        let launched: Vec<Launch> = {
            let mut q = self.shared.lock();
            q.stopped = true;
            std::mem::take(&mut q.launched)
        };
        for l in launched {
            if let Launch::Started(l) = l {
                discard(l);
            }
        }
        // Dropping the request channel ends the starter; an idle one ends at once, and is
        // waited for, so that nothing it holds outlives the pool. One stuck on a fork server
        // that does not answer is not: it finishes on its own (within the server's reply
        // timeout) and kills what it launched.
        if let Some((tx, done)) = self.starter.take() {
            drop(tx);
            let _ = done.recv_timeout(STARTER_EXIT);
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
        let child = Arc::new(l.child);
        let l = (Arc::clone(&child), l.sock);
        match self.adopt(l) {
            Ok(w) => {
                event!(info, pid = w.child.pid(), id = w.id, "worker started");
                self.workers.push(w);
                Ok(())
            }
            Err(e) => {
                child.kill_and_reap();
                Err(e)
            }
        }
    }

    /// A worker just started (its handle and our end of its socket): sends it its control
    /// block, then the initializer, if any.
    pub(super) fn adopt(
        &mut self,
        l: (Arc<sys::ChildHandle>, std::os::unix::net::UnixStream),
    ) -> io::Result<Worker> {
        let (child, sock) = l;
        let watch = Arc::new(Watch::create(self.config.task_timeout.is_some())?);
        let control = [watch.fd().try_clone_to_owned()?];
        // A failed write means it died: its pidfd says so on the next turn.
        let _ = fds::write_frame(&sock, &msg::control(), &control);
        drop(control);
        self.next_id += 1;
        let now = Instant::now();
        let ahead_bytes = lookahead_bytes(&sock);
        let mut w = Worker {
            id: self.next_id,
            child,
            ahead_bytes,
            sock: Some(Arc::new(sock)),
            published: false,
            reader: FrameReader::new(frame::DEFAULT_LIMIT),
            received: Received::default(),
            state: Phase::Active,
            inflight: VecDeque::new(),
            watch,
            answered: 0,
            head_since: now,
            credit: Duration::ZERO,
            credit_item: (0, 0),
            loss: None,
            last_words: None,
            tasks: 0,
            served: false,
        };
        if let Some(init) = &self.config.init {
            w.state = Phase::Init;
            if let Some(s) = &w.sock {
                let _ = fds::write_frame(s, &init.0, init.1.as_deref().unwrap_or_default());
            }
        }
        Ok(w)
    }
}

/// Starts the pool's starter thread: it launches the workers it is asked for (`launch_many`
/// through the fork server when it can, then one at a time), posts each to the backlog and
/// wakes the supervisor. It ends when the supervisor drops its end of the channel.
fn spawn_starter(shared: &Arc<Registry>, config: &Config) -> io::Result<Starter> {
    let (tx, rx) = mpsc::channel::<usize>();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    // Weak: the pool's backlog (and what it holds, the fds of idle workers) goes with the pool.
    let shared = Arc::downgrade(shared);
    let (method, spec) = (config.method, config.spec.clone());
    std::thread::Builder::new()
        .name("mproc-starter".into())
        .spawn(move || {
            // Dropped last, when the thread ends: tells `stop_starter` it is over.
            let _done = done_tx;
            while let Ok(n) = rx.recv() {
                let many = launch::launch_many(method, &spec, n);
                let mut left = n - many.len().min(n);
                for l in many {
                    post(&shared, Launch::Started(l));
                }
                while left > 0 {
                    match launch::launch(method, &spec) {
                        Ok(l) => post(&shared, Launch::Started(l)),
                        Err(e) => {
                            post(&shared, Launch::Failed(left, e));
                            break;
                        }
                    }
                    left -= 1;
                }
            }
        })?;
    Ok((tx, done_rx))
}

/// The starter's request channel, and the channel that closes when it ends.
pub(super) type Starter = (mpsc::Sender<usize>, mpsc::Receiver<()>);

/// How long a returning supervisor waits for its starter to end.
const STARTER_EXIT: Duration = Duration::from_millis(50);

/// Hands a launch to the supervisor, or kills the worker if the supervisor has returned.
fn post(shared: &std::sync::Weak<Registry>, l: Launch) {
    let Some(shared) = shared.upgrade() else {
        if let Launch::Started(l) = l {
            discard(l);
        }
        return;
    };
    let mut q = shared.lock();
    if q.stopped || q.terminate {
        drop(q);
        if let Launch::Started(l) = l {
            discard(l);
        }
        return;
    }
    q.launched.push(l);
    shared.wake_locked(q);
}

/// Kills and reaps a worker nobody will take on. Its fds close first, so that once it is
/// gone nothing of it is left open.
fn discard(l: launch::Launched) {
    let launch::Launched { child, sock, .. } = l;
    let _ = child.signal_group(sys::SIGKILL);
    drop(sock);
    let _ = child.reap();
}

/// The look-ahead a worker's socket allows: its send buffer grown (the kernel's cap, if
/// lower, stands), and a quarter of what it has, between [`LOOKAHEAD_BYTES`] and
/// [`MAX_LOOKAHEAD_BYTES`]. A quarter leaves room for the kernel's own overhead per message.
fn lookahead_bytes(sock: &UnixStream) -> usize {
    let granted = sys::grow_send_buffer(sock.as_fd(), 4 * MAX_LOOKAHEAD_BYTES);
    (granted / 4).clamp(LOOKAHEAD_BYTES, MAX_LOOKAHEAD_BYTES)
}
