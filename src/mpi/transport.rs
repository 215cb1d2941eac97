//! Byte messages over MPI that cannot deadlock, and the idle policy of the polling loops.
//!
//! Both rank 0 and the serving ranks send while the peer may be sending to them. A blocking
//! `MPI_Send` of a message above the eager limit waits for the receiver to post a receive; if
//! both sides do that at once, neither ever receives. So a send here is immediate and, until it
//! completes, keeps receiving the messages this side expects (kept in an inbox).

use std::time::{Duration, Instant};

use mpi::Tag;
use mpi::point_to_point::Status;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;

/// A received message: who sent it, its tag, its bytes.
pub(crate) struct Incoming {
    pub(crate) source: i32,
    pub(crate) tag: Tag,
    pub(crate) bytes: Vec<u8>,
}

/// The world communicator, with the messages received while sending.
pub(crate) struct Link {
    pub(crate) world: SimpleCommunicator,
    inbox: Vec<Incoming>,
}

impl Link {
    pub(crate) fn new(world: SimpleCommunicator) -> Link {
        Link {
            world,
            inbox: Vec::new(),
        }
    }

    /// Sends `bytes` to `dest` with `tag`, receiving (into the inbox) meanwhile.
    pub(crate) fn send(&mut self, dest: i32, tag: Tag, bytes: &[u8]) {
        let world = &self.world;
        let inbox = &mut self.inbox;
        mpi::request::scope(|scope| {
            let mut req = world
                .process_at_rank(dest)
                .immediate_send_with_tag(scope, bytes, tag);
            loop {
                match req.test() {
                    Ok(_) => break,
                    Err(r) => req = r,
                }
                match try_receive(world) {
                    Some(m) => inbox.push(m),
                    None => std::thread::yield_now(),
                }
            }
        });
    }

    /// The next message: one kept while sending, else one waiting now, else `None`.
    pub(crate) fn try_receive(&mut self) -> Option<Incoming> {
        if !self.inbox.is_empty() {
            return Some(self.inbox.remove(0));
        }
        try_receive(&self.world)
    }
}

fn try_receive(world: &SimpleCommunicator) -> Option<Incoming> {
    let probed = world.any_process().immediate_matched_probe()?;
    let (bytes, status): (Vec<u8>, Status) = probed.matched_receive_vec();
    Some(Incoming {
        source: status.source_rank(),
        tag: status.tag(),
        bytes,
    })
}

/// How long a polling loop waits when nothing happened: it polls (yielding the CPU) for a short
/// while after the last activity — 200 µs, or 2 ms while it has tasks out, whose answers MPI
/// cannot wake it for — so back-to-back tasks see microsecond latency; then it sleeps in
/// growing steps up to 1 ms, so an idle rank costs next to no CPU.
pub(crate) struct Idle {
    last_active: Instant,
}

const SPIN: Duration = Duration::from_micros(200);
const SPIN_WAITING: Duration = Duration::from_millis(2);
const MAX_SLEEP: Duration = Duration::from_millis(1);

impl Idle {
    pub(crate) fn new() -> Idle {
        Idle {
            last_active: Instant::now(),
        }
    }
    /// Something happened.
    pub(crate) fn active(&mut self) {
        self.last_active = Instant::now();
    }
    /// How long to block now: `None` means poll again at once. `waiting`: tasks are out.
    pub(crate) fn pause(&self, waiting: bool) -> Option<Duration> {
        let idle = self.last_active.elapsed();
        if idle < if waiting { SPIN_WAITING } else { SPIN } {
            return None;
        }
        Some((idle / 8).clamp(Duration::from_micros(20), MAX_SLEEP))
    }
}
