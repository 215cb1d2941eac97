//! A serving rank: what every rank but 0 runs, from the load-time constructor, instead of
//! `main`.
//!
//! It initializes MPI, waits for rank 0's settings, starts a local [`Pool`](crate::Pool) with
//! them, says hello to rank 0 and loops: tasks from rank 0 go to the local pool as their raw
//! `Run` frames (after the binary identity check); outcomes go back as replies, every outcome
//! ready at once in one message, and a heartbeat every second. A task that panics,
//! aborts or segfaults kills at most a local worker, which the local pool replaces: the rank
//! and the MPI job live on.

use std::collections::HashMap;
use std::sync::mpsc::{self, RecvTimeoutError};

use super::transport::{Idle, Link};
use super::wire::{
    self, Batch, HEARTBEAT, RankConfig, TAG_BEAT, TAG_CONFIG, TAG_HELLO, TAG_MALFORMED,
    TAG_REPLIES, TAG_STOP, TAG_TASKS,
};
use crate::pool::{Borrowed, Outcome};
use crate::sys::identity;
use crate::wire::{codec, frame, msg};

/// Environment variable: local worker processes per serving rank, when the builder does not
/// say (default: the rank's CPU count).
pub(crate) const PROCESSES_ENV: &str = "MPROC_MPI_PROCESSES";

/// Serves rank 0 until it says stop; returns the exit code.
pub(crate) fn serve() -> i32 {
    let Some((universe, _)) = mpi::initialize_with_threading(mpi::Threading::Serialized) else {
        eprintln!("mproc: MPI was already initialized in a serving rank");
        return crate::child::EXIT_INTERNAL;
    };
    let mut link = Link::new(universe.world());
    let Some(config) = wait_for_config(&mut link) else {
        return 0; // told to stop before any work
    };
    let pool = local_pool(&config);
    if let Err(e) = &pool {
        eprintln!("mproc: mpi rank cannot start its local pool: {e}");
    }
    let offered = pool.as_ref().map_or(0, |p| p.processes() as u32);
    let mut hello = offered.to_le_bytes().to_vec();
    hello.extend_from_slice(identity::own());
    link.send(0, TAG_HELLO, &hello);
    let skip_finalize = match pool {
        Ok(pool) => Server::new(pool).run(&mut link),
        Err(_) => wait_for_stop(&mut link),
    };
    drop(link);
    if skip_finalize {
        std::mem::forget(universe); // a rank was lost: finalizing could wait for it forever
    } else {
        drop(universe); // MPI_Finalize
    }
    0
}

/// The local pool, started once MPI runs. Its fork server is started by fork and exec at
/// once, which MPI tolerates (no registered memory is touched in between).
fn local_pool(config: &RankConfig) -> crate::Result<crate::Pool> {
    let processes = config
        .processes
        .map(|n| n as usize)
        .or_else(|| std::env::var(PROCESSES_ENV).ok()?.parse().ok())
        .unwrap_or_else(crate::cpu_count)
        .max(1);
    let mut b = crate::Pool::builder()
        .processes(processes)
        .max_retries(config.max_retries);
    if let Some(t) = config.task_timeout {
        b = b.task_timeout(t);
    }
    if let Some(n) = config.max_tasks_per_child {
        b = b.max_tasks_per_child(n as usize);
    }
    b.build()
}

/// Waits for rank 0's settings; `None` if it says stop first.
fn wait_for_config(link: &mut Link) -> Option<RankConfig> {
    let mut idle = Idle::new();
    loop {
        match link.try_receive() {
            Some(m) if m.tag == TAG_STOP => return None,
            Some(m) if m.tag == TAG_CONFIG => {
                return Some(codec::decode(&m.bytes).unwrap_or_default());
            }
            Some(_) => {}
            None => {
                std::thread::sleep(idle.pause(false).unwrap_or_default());
                continue;
            }
        }
        idle.active();
    }
}

/// Waits for `STOP`; true if it says to skip `MPI_Finalize`.
fn wait_for_stop(link: &mut Link) -> bool {
    let mut idle = Idle::new();
    loop {
        match link.try_receive() {
            Some(m) if m.tag == TAG_STOP => return skips_finalize(&m.bytes),
            Some(_) => {}
            None => std::thread::sleep(idle.pause(false).unwrap_or_default()),
        }
        idle.active();
    }
}

fn skips_finalize(stop: &[u8]) -> bool {
    stop == [wire::STOP_SKIP_FINALIZE]
}

struct Server {
    pool: crate::Pool,
    tx: mpsc::Sender<(usize, Outcome)>,
    rx: mpsc::Receiver<(usize, Outcome)>,
    /// Local key → rank 0's job id.
    jobs: HashMap<usize, u64>,
    /// Tasks written straight to an idle local worker (no supervisor hand-offs), by key.
    borrowed: Vec<(usize, Borrowed)>,
    next_key: usize,
    /// Replies gathered for the next message to rank 0.
    replies: Batch,
    /// Turns of `poll_borrowed` since the last that read the sockets.
    looks: u32,
}

/// One turn in this many of `poll_borrowed` reads the borrowed workers' sockets and pidfds.
const FULL_LOOK: u32 = 16;

impl Server {
    fn new(pool: crate::Pool) -> Server {
        let (tx, rx) = mpsc::channel();
        Server {
            pool,
            tx,
            rx,
            jobs: HashMap::new(),
            borrowed: Vec::new(),
            next_key: 0,
            replies: Batch::default(),
            looks: 0,
        }
    }

    /// Serves until `STOP`; true if it says to skip `MPI_Finalize`.
    fn run(mut self, link: &mut Link) -> bool {
        let mut idle = Idle::new();
        let mut last_beat = std::time::Instant::now();
        loop {
            if last_beat.elapsed() >= HEARTBEAT {
                link.send(0, TAG_BEAT, &[]);
                last_beat = std::time::Instant::now();
            }
            let mut busy = false;
            while let Some(m) = link.try_receive() {
                busy = true;
                match m.tag {
                    TAG_STOP => return skips_finalize(&m.bytes),
                    TAG_TASKS if m.source == 0 => self.start_all(link, &m.bytes),
                    _ => {}
                }
            }
            while let Ok((key, outcome)) = self.rx.try_recv() {
                busy = true;
                self.reply(link, key, &outcome);
            }
            busy |= self.poll_borrowed();
            self.flush(link);
            if busy {
                idle.active();
                continue;
            }
            // Nothing to do: wait for a local outcome (MPI cannot wake us, so bounded).
            match idle.pause(!self.jobs.is_empty()) {
                None => std::thread::yield_now(),
                Some(d) if !self.borrowed.is_empty() => {
                    // Wake for a borrowed worker's answer (it rings the socket for one it
                    // leaves in the mailbox, once we say we sleep); the supervisor's come next
                    // turn.
                    if self.park_borrowed() {
                        let socks: Vec<_> = self.borrowed.iter().map(|(_, b)| b.sock()).collect();
                        let _ = crate::sys::poll_readable(&socks, Some(d));
                    }
                    for (_, b) in &self.borrowed {
                        b.park(false);
                    }
                    self.looks = 0; // a full look next
                }
                Some(d) => match self.rx.recv_timeout(d) {
                    Ok((key, outcome)) => {
                        self.reply(link, key, &outcome);
                        idle.active();
                    }
                    Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {}
                },
            }
        }
    }

    /// Hands every task of a `TASKS` message to the local pool; if the message is malformed,
    /// none, and tells rank 0.
    fn start_all(&mut self, link: &mut Link, msg_bytes: &[u8]) {
        match wire::entries(msg_bytes) {
            Ok(tasks) => {
                for (id, task) in tasks {
                    self.start(link, id, task);
                }
            }
            Err(e) => {
                eprintln!("mproc: mpi rank cannot read tasks from rank 0: {e}");
                link.send(0, TAG_MALFORMED, &[]);
            }
        }
    }

    /// Hands a task to the local pool, or refuses it at once if it comes from another binary
    /// (or is not a task at all).
    fn start(&mut self, link: &mut Link, id: u64, task: &[u8]) {
        let (items, run_frame) = wire::decode_task(task).unwrap_or((1, &[]));
        let body = run_frame.get(frame::HEADER..).unwrap_or_default();
        let me = identity::own();
        let foreign = match msg::parse_run(body) {
            Ok(run) => identity::verify(run.identity, me).is_none(),
            Err(_) => true,
        };
        if foreign {
            self.add_reply(link, id, |b| wire::refused(b, me));
            return;
        }
        let key = self.next_key;
        self.next_key = self.next_key.wrapping_add(1);
        // An idle worker takes it directly; otherwise the supervisor queues it.
        let frame = match self.pool.borrow_for_frame(run_frame.to_vec(), items) {
            Ok(b) => {
                self.jobs.insert(key, id);
                self.borrowed.push((key, b));
                return;
            }
            Err(frame) => frame,
        };
        match self.pool.submit_frame(frame, items, self.tx.clone(), key) {
            Ok(()) => {
                self.jobs.insert(key, id);
            }
            Err(e) => {
                let e = vec![crate::pool::Part::rest(e)];
                self.add_reply(link, id, |b| wire::encode_reply(b, &e));
            }
        }
    }

    /// Says to every borrowed worker that we are about to sleep, then looks in their
    /// mailboxes once more: false if an answer is there already (do not sleep).
    fn park_borrowed(&mut self) -> bool {
        for (_, b) in &self.borrowed {
            b.park(true);
        }
        !self
            .borrowed
            .iter_mut()
            .any(|(_, b)| !matches!(b.peek(), Ok(None)))
    }

    /// Collects the answers of borrowed workers; true if any task finished or was lost. Most
    /// turns look only in the mailboxes (no syscall); every [`FULL_LOOK`]th also reads the
    /// sockets and pidfds, for a worker that died or answered there.
    fn poll_borrowed(&mut self) -> bool {
        let full = self.looks % FULL_LOOK == 0;
        self.looks = self.looks.wrapping_add(1);
        let mut any = false;
        let mut i = 0;
        while i < self.borrowed.len() {
            let b = &mut self.borrowed[i].1;
            let looked = if full { b.poll() } else { b.peek() };
            let polled = match looked {
                Ok(None) => {
                    i += 1;
                    continue;
                }
                Ok(Some(outcome)) => Ok(outcome),
                Err(loss) => Err(loss),
            };
            any = true;
            let (key, b) = self.borrowed.swap_remove(i);
            // The outcome comes through `rx`: at once for an answer; from the supervisor, once
            // it settled the task, for a lost worker.
            self.pool.settle_borrowed(b, polled, self.tx.clone(), key);
        }
        any
    }

    fn reply(&mut self, link: &mut Link, key: usize, outcome: &Outcome) {
        if let Some(id) = self.jobs.remove(&key) {
            self.add_reply(link, id, |b| wire::encode_reply(b, outcome));
        }
    }

    /// Adds a reply to the next message; sends the message once it holds
    /// [`wire::BATCH_BYTES`], or first if the reply is too large to join it.
    fn add_reply(&mut self, link: &mut Link, id: u64, write: impl Fn(&mut Vec<u8>)) {
        if !self.replies.push_with(id, &write) {
            self.flush(link);
            if !self.replies.push_with(id, &write) {
                let e = vec![crate::pool::Part::rest(crate::Error::codec(
                    "a reply too large for one MPI message",
                ))];
                self.replies.push_with(id, |b| wire::encode_reply(b, &e));
            }
        }
        if self.replies.bytes().len() >= wire::BATCH_BYTES {
            self.flush(link);
        }
    }

    /// Sends the gathered replies, if any, in one message.
    fn flush(&mut self, link: &mut Link) {
        if !self.replies.is_empty() {
            link.send(0, TAG_REPLIES, self.replies.bytes());
            self.replies.clear();
        }
    }
}
