//! Rank 0's driver thread: the only thread of rank 0 that calls MPI.
//!
//! Users' threads queue `Run` frames, each with the [`Sink`] its outcome goes to, on a
//! channel; the driver hands them to serving ranks (at most `prefetch` per local worker of a
//! rank in flight, so every rank's workers stay busy while the rest waits here, where any rank
//! that frees up can take it), every task a rank can take now in one message, and delivers
//! each reply into its sink, as a local pool's supervisor
//! would: the pool's results and iterators decode it.
//!
//! Lost ranks: every serving rank sends a heartbeat each second. Under Open MPI's default a
//! dead rank aborts the whole job anyway; under `mpirun --enable-recovery` the job goes on,
//! and a rank silent for longer than the rank timeout is written off here: its tasks are
//! re-run on other ranks while they have retries left (`max_retries`), else fail with
//! `WorkerDied`, and it gets no more tasks.

use std::collections::{HashMap, VecDeque};
use std::sync::mpsc::{self, RecvTimeoutError, TryRecvError};
use std::time::{Duration, Instant};

use super::transport::{Idle, Link};
use super::wire::{
    self, Batch, RankConfig, TAG_CONFIG, TAG_HELLO, TAG_MALFORMED, TAG_REPLIES, TAG_STOP, TAG_TASKS,
};
use crate::error::{Error, ExitStatus, Result};
use crate::pool::{Part, Sink};
use crate::sys::RawExit;
use crate::wire::codec;

/// A request from a user's thread.
pub(crate) enum Cmd {
    /// Run this frame of this many items; deliver its outcome into the sink.
    Run(Vec<u8>, usize, Sink),
    /// Once the channel closes, finish what is queued and out first (`Pool::join`), rather
    /// than failing it (`Pool::terminate`, drop).
    Drain,
}

/// A task waiting for a rank, or out on one.
struct Task {
    frame: Vec<u8>,
    items: usize,
    sink: Sink,
    /// Re-runs left should its rank be lost.
    retries_left: u32,
}

/// What rank 0 learnt from the serving ranks at start.
pub(crate) struct World {
    /// Serving ranks that took tasks (said hello with local workers).
    pub(crate) ranks: usize,
    /// Their local workers, summed.
    pub(crate) processes: usize,
}

struct Rank {
    rank: i32,
    /// Tasks it may still be sent now.
    credit: usize,
    last_heard: Instant,
    /// Written off: gets no more tasks.
    lost: bool,
    /// Written off for silence: gets no `STOP` either, and MPI is not finalized.
    silent: bool,
    /// Tasks for it being gathered into one message.
    batch: Batch,
}

pub(crate) struct Driver {
    link: Link,
    ranks: Vec<Rank>,
    queue: VecDeque<Task>,
    /// Batch id → the task and the rank running it.
    inflight: HashMap<u64, (Task, i32)>,
    next_id: u64,
    max_retries: u32,
    rank_timeout: Duration,
    last_check: Instant,
    /// Asked to finish the tasks it has before it stops (see [`Cmd::Drain`]).
    draining: bool,
}

impl Driver {
    /// Sends every serving rank its settings and collects its hello, for up to `timeout`.
    pub(crate) fn start(
        mut link: Link,
        config: &RankConfig,
        timeout: Duration,
        rank_timeout: Duration,
        prefetch: usize,
    ) -> Result<(Driver, World)> {
        let prefetch = prefetch.max(1);
        let size = mpi::traits::Communicator::size(&link.world);
        let mut encoded = Vec::new();
        codec::encode_into(config, &mut encoded).map_err(Error::codec)?;
        let max_retries = config.max_retries;
        let config = encoded;
        for rank in 1..size {
            link.send(rank, TAG_CONFIG, &config);
        }
        let mut ranks = Vec::new();
        let mut heard = 0;
        let deadline = Instant::now() + timeout;
        let mut idle = Idle::new();
        while heard + 1 < size {
            let Some(m) = link.try_receive() else {
                if Instant::now() > deadline {
                    return Err(Error::broken("serving ranks did not say hello in time"));
                }
                std::thread::sleep(idle.pause(false).unwrap_or_default());
                continue;
            };
            idle.active();
            if m.tag != TAG_HELLO {
                continue;
            }
            heard += 1;
            let (n, id) = m.bytes.split_at(4.min(m.bytes.len()));
            let n = u32::from_le_bytes(n.try_into().unwrap_or_default()) as usize;
            if id != crate::sys::identity::own() {
                eprintln!(
                    "mproc: mpi rank {} runs a different binary; it gets no tasks",
                    m.source
                );
            } else if n > 0 {
                ranks.push(Rank {
                    rank: m.source,
                    credit: prefetch * n,
                    last_heard: Instant::now(),
                    lost: false,
                    silent: false,
                    batch: Batch::default(),
                });
            }
        }
        let world = World {
            ranks: ranks.len(),
            processes: ranks.iter().map(|r| r.credit / prefetch).sum(),
        };
        let driver = Driver {
            link,
            ranks,
            queue: VecDeque::new(),
            inflight: HashMap::new(),
            next_id: 0,
            max_retries,
            rank_timeout,
            last_check: Instant::now(),
            draining: false,
        };
        Ok((driver, world))
    }

    /// Serves until every sender is gone (the pool was terminated or dropped; after a
    /// [`Cmd::Drain`], once its tasks are done too), then stops every rank. Returns true if a
    /// rank went silent: then MPI must not be finalized (see [`wire::STOP_SKIP_FINALIZE`]).
    pub(crate) fn run(mut self, rx: mpsc::Receiver<Cmd>) -> bool {
        let mut idle = Idle::new();
        let mut open = true;
        loop {
            let mut busy = self.receive();
            self.check_lost();
            while open {
                match rx.try_recv() {
                    Ok(cmd) => {
                        busy = true;
                        self.enqueue(cmd);
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => open = false,
                }
            }
            busy |= self.dispatch();
            // Closed: stop, unless asked to finish what it has first.
            let finishing = self.draining && !(self.queue.is_empty() && self.inflight.is_empty());
            if !open && !finishing {
                return self.stop();
            }
            if busy {
                idle.active();
                continue;
            }
            match idle.pause(!self.inflight.is_empty()) {
                None => std::thread::yield_now(),
                Some(d) if !open => std::thread::sleep(d),
                Some(d) => match rx.recv_timeout(d) {
                    Ok(cmd) => {
                        self.enqueue(cmd);
                        idle.active();
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => open = false,
                },
            }
        }
    }

    /// Takes in what the ranks sent; true if anything came.
    fn receive(&mut self) -> bool {
        let mut busy = false;
        while let Some(m) = self.link.try_receive() {
            busy = true;
            self.heard(m.source);
            match m.tag {
                TAG_REPLIES => self.deliver(m.source, &m.bytes),
                TAG_MALFORMED => {
                    eprintln!("mproc: mpi rank {} could not read its tasks", m.source);
                    self.lose(m.source, false);
                }
                _ => {}
            }
        }
        busy
    }

    fn enqueue(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Run(frame, items, sink) => self.queue.push_back(Task {
                frame,
                items,
                sink,
                retries_left: self.max_retries,
            }),
            Cmd::Drain => self.draining = true,
        }
    }

    /// Sends queued tasks to ranks with credit left, all of a rank's in one message (up to
    /// [`wire::BATCH_BYTES`]); true if it sent any.
    fn dispatch(&mut self) -> bool {
        if !self.queue.is_empty() && self.ranks.iter().all(|r| r.lost) {
            for t in self.queue.drain(..) {
                let e = Error::broken("every serving MPI rank was lost");
                t.sink.deliver(vec![Part::rest(e)]);
            }
            return true;
        }
        let mut sent = false;
        while !self.queue.is_empty() {
            // The rank with the most room: spreads a map over every rank.
            let Some(r) = self
                .ranks
                .iter_mut()
                .filter(|r| r.credit > 0 && !r.lost)
                .max_by_key(|r| r.credit)
            else {
                break;
            };
            let Some(task) = self.queue.pop_front() else {
                break;
            };
            if !r.batch.fits(wire::TASK_HEAD + task.frame.len()) {
                flush(&mut self.link, r);
            }
            let id = self.next_id;
            if !r
                .batch
                .push_with(id, |b| wire::encode_task(b, task.items, &task.frame))
            {
                let e = Error::unsupported("a task above 2 GiB cannot cross MPI ranks");
                task.sink.deliver(vec![Part::rest(e)]);
                continue;
            }
            self.next_id += 1;
            r.credit -= 1;
            self.inflight.insert(id, (task, r.rank));
            sent = true;
        }
        for r in &mut self.ranks {
            flush(&mut self.link, r);
        }
        sent
    }

    fn heard(&mut self, source: i32) {
        if let Some(r) = self.ranks.iter_mut().find(|r| r.rank == source) {
            r.last_heard = Instant::now();
        }
    }

    /// Settles the tasks whose replies came in one message from `source`. A malformed
    /// message settles none: the rank is written off and its tasks re-run elsewhere, rather
    /// than some of them waiting forever for replies that were lost in it.
    fn deliver(&mut self, source: i32, bytes: &[u8]) {
        let entries = match wire::entries(bytes) {
            Ok(entries) => entries,
            Err(e) => {
                eprintln!("mproc: mpi rank {source} sent replies rank 0 cannot read: {e}");
                self.lose(source, false);
                return;
            }
        };
        let Some(r) = self.ranks.iter_mut().find(|r| r.rank == source) else {
            return;
        };
        for (id, reply) in entries {
            // Only the rank a task is out on settles it: a late reply from a rank written off
            // meanwhile finds its task re-queued under a new id.
            if self.inflight.get(&id).is_some_and(|(_, on)| *on == source) {
                if let Some((t, _)) = self.inflight.remove(&id) {
                    r.credit += 1;
                    t.sink.deliver(wire::decode_reply(source, reply));
                }
            }
        }
    }

    /// Writes off ranks silent for longer than the rank timeout (checked every 100 ms).
    fn check_lost(&mut self) {
        if self.last_check.elapsed() < Duration::from_millis(100) {
            return;
        }
        self.last_check = Instant::now();
        let timeout = self.rank_timeout;
        let silent: Vec<i32> = self
            .ranks
            .iter()
            .filter(|r| !r.lost && r.last_heard.elapsed() > timeout)
            .map(|r| r.rank)
            .collect();
        for rank in silent {
            eprintln!("mproc: mpi rank {rank} is silent; writing it off and re-running its tasks");
            self.lose(rank, true);
        }
    }

    /// Gives `rank` no more tasks and re-queues (or fails) those out on it. `silent`: it may be
    /// dead, so it gets no `STOP` either.
    fn lose(&mut self, rank: i32, silent: bool) {
        if let Some(r) = self.ranks.iter_mut().find(|r| r.rank == rank) {
            r.lost = true;
            r.silent |= silent;
            r.credit = 0;
        }
        let ids: Vec<u64> = self
            .inflight
            .iter()
            .filter(|(_, (_, on))| *on == rank)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            let Some((mut t, _)) = self.inflight.remove(&id) else {
                continue;
            };
            if t.retries_left > 0 {
                t.retries_left -= 1;
                self.queue.push_front(t);
            } else {
                let status = ExitStatus::from_raw(RawExit::Unknown);
                t.sink.deliver(vec![Part::rest(Error::worker_died(status))]);
            }
        }
    }

    /// Fails what is left, tells every serving rank still there to stop; true if a rank went
    /// silent.
    fn stop(mut self) -> bool {
        let left = self
            .queue
            .drain(..)
            .chain(self.inflight.drain().map(|(_, (t, _))| t));
        for t in left {
            let e = Error::closed("the MPI pool was terminated");
            t.sink.deliver(vec![Part::rest(e)]);
        }
        let lost = self.ranks.iter().any(|r| r.silent);
        let stop: &[u8] = if lost {
            &[wire::STOP_SKIP_FINALIZE]
        } else {
            &[]
        };
        let size = mpi::traits::Communicator::size(&self.link.world);
        for rank in 1..size {
            if !self.ranks.iter().any(|r| r.rank == rank && r.silent) {
                self.link.send(rank, TAG_STOP, stop);
            }
        }
        lost
    }
}

/// Sends the tasks gathered for `r`, if any, in one message.
fn flush(link: &mut Link, r: &mut Rank) {
    if !r.batch.is_empty() {
        link.send(r.rank, TAG_TASKS, r.batch.bytes());
        r.batch.clear();
    }
}
