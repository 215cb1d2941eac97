//! Rank 0's driver thread: the only thread of rank 0 that calls MPI.
//!
//! Users' threads queue `Run` frames on a channel; the driver hands them to serving ranks
//! (at most two per local worker of a rank in flight, so every rank's workers stay busy while
//! the rest waits here), and delivers each reply into the slot its caller waits on.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError, TryRecvError};
use std::time::{Duration, Instant};

use super::transport::{Idle, Link};
use super::wire::{self, RankConfig, TAG_CONFIG, TAG_HELLO, TAG_REPLY, TAG_STOP, TAG_TASK};
use crate::error::{Error, Result};
use crate::pool::Slot;
use crate::wire::codec;

/// A request from a user's thread.
pub(crate) enum Cmd {
    /// Run this frame; deliver into cell `i` of the slot.
    Run(Vec<u8>, Arc<Slot>, usize),
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
}

struct Pending {
    slot: Arc<Slot>,
    cell: usize,
}

pub(crate) struct Driver {
    link: Link,
    ranks: Vec<Rank>,
    queue: VecDeque<Cmd>,
    inflight: HashMap<u64, Pending>,
    next_id: u64,
}

impl Driver {
    /// Sends every serving rank its settings and collects its hello, for up to `timeout`.
    pub(crate) fn start(
        mut link: Link,
        config: &RankConfig,
        timeout: Duration,
    ) -> Result<(Driver, World)> {
        let size = mpi::traits::Communicator::size(&link.world);
        let mut encoded = Vec::new();
        codec::encode_into(config, &mut encoded).map_err(Error::codec)?;
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
                    credit: 2 * n,
                });
            }
        }
        let world = World {
            ranks: ranks.len(),
            processes: ranks.iter().map(|r| r.credit / 2).sum(),
        };
        let driver = Driver {
            link,
            ranks,
            queue: VecDeque::new(),
            inflight: HashMap::new(),
            next_id: 0,
        };
        Ok((driver, world))
    }

    /// Serves until every sender is gone (the pool was dropped), then stops every rank.
    pub(crate) fn run(mut self, rx: mpsc::Receiver<Cmd>) {
        let mut idle = Idle::new();
        loop {
            let mut busy = false;
            while let Some(m) = self.link.try_receive() {
                busy = true;
                if m.tag == TAG_REPLY {
                    self.deliver(m.source, &m.bytes);
                }
            }
            let mut stopping = false;
            loop {
                match rx.try_recv() {
                    Ok(cmd) => {
                        busy = true;
                        self.queue.push_back(cmd);
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        stopping = true;
                        break;
                    }
                }
            }
            busy |= self.dispatch();
            if stopping {
                return self.stop();
            }
            if busy {
                idle.active();
                continue;
            }
            match idle.pause(!self.inflight.is_empty()) {
                None => std::thread::yield_now(),
                Some(d) => match rx.recv_timeout(d) {
                    Ok(cmd) => {
                        self.queue.push_back(cmd);
                        idle.active();
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => return self.stop(),
                },
            }
        }
    }

    /// Sends queued tasks to ranks with credit left; true if it sent any.
    fn dispatch(&mut self) -> bool {
        let mut sent = false;
        while !self.queue.is_empty() {
            // The rank with the most room: spreads a map over every rank.
            let Some(r) = self
                .ranks
                .iter_mut()
                .filter(|r| r.credit > 0)
                .max_by_key(|r| r.credit)
            else {
                break;
            };
            r.credit -= 1;
            let dest = r.rank;
            let Some(Cmd::Run(frame, slot, cell)) = self.queue.pop_front() else {
                break;
            };
            let id = self.next_id;
            self.next_id += 1;
            self.inflight.insert(id, Pending { slot, cell });
            self.link.send(dest, TAG_TASK, &wire::with_id(id, &frame));
            sent = true;
        }
        sent
    }

    fn deliver(&mut self, source: i32, bytes: &[u8]) {
        if let Some(r) = self.ranks.iter_mut().find(|r| r.rank == source) {
            r.credit += 1;
        }
        let Some((id, reply)) = wire::split_id(bytes) else {
            return;
        };
        if let Some(p) = self.inflight.remove(&id) {
            p.slot.complete(p.cell, wire::decode_reply(source, reply));
        }
    }

    /// Fails what is left, tells every serving rank to stop.
    fn stop(mut self) {
        for Cmd::Run(_, slot, cell) in self.queue.drain(..) {
            slot.complete(cell, Err(Error::closed("the MPI pool was dropped")));
        }
        for (_, p) in self.inflight.drain() {
            p.slot
                .complete(p.cell, Err(Error::closed("the MPI pool was dropped")));
        }
        let size = mpi::traits::Communicator::size(&self.link.world);
        for rank in 1..size {
            self.link.send(rank, TAG_STOP, &[]);
        }
    }
}
