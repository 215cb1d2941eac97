//! The supervisor's view of one worker: its process, socket, control block, the jobs it has
//! in hand, and the running item's deadline.

use std::collections::VecDeque;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::pool::batch::Batch;
use crate::pool::fate::Loss;
use crate::sys;
use crate::task::progress::Watch;
use crate::wire::fds::Received;
use crate::wire::frame::FrameReader;
use crate::wire::msg;

pub(super) enum Phase {
    /// Running the initializer.
    Init,
    /// Serving; its jobs in flight are in `Worker::inflight` (none: idle).
    Active,
    /// Killed (timeout, protocol error), retiring, or found dead by a failed write; gets no new
    /// jobs and is reaped when its pidfd fires. After a failed write or a timeout its socket
    /// stays open, so that the answers it wrote before dying still settle its jobs in flight.
    Ending,
}

pub(super) struct Worker {
    pub(super) id: u64,
    /// Its process: pid, and the pidfd that fires at its death where there is one.
    pub(super) child: Arc<sys::ChildHandle>,
    pub(super) sock: Option<Arc<UnixStream>>,
    /// Offered to clients in `Backlog::idle` (or lent to one right now).
    pub(super) published: bool,
    pub(super) reader: FrameReader,
    /// Fds it sent, waiting for the message that owns them.
    pub(super) received: Received,
    pub(super) state: Phase,
    /// Jobs written to the worker, in order: the first is running, the rest wait in its socket.
    pub(super) inflight: VecDeque<Batch>,
    /// Its control block: how far it is through the job at the head of `inflight`.
    pub(super) watch: Arc<Watch>,
    /// Jobs it answered, here or while lent: the head of `inflight` is the next one it begins.
    pub(super) answered: u64,
    /// Since when the head job can have run: when it was handed over, or the one before it
    /// was answered. The first item's start is never earlier.
    pub(super) head_since: Instant,
    /// Time the program spent stopped while the running item ran (see `WATCH_TICK`), and
    /// which item that is (tasks begun, item index).
    pub(super) credit: Duration,
    pub(super) credit_item: (u64, u64),
    /// Why mproc killed it, if it did, and which item was running then: settles the head job
    /// when it is reaped.
    pub(super) loss: Option<(Loss, (u64, u64))>,
    /// Why it said it is dying (`"stack overflow"`), before its exit status arrives.
    pub(super) last_words: Option<&'static str>,
    pub(super) tasks: usize,
    /// Reached the point of serving (hello checked and initializer done).
    pub(super) served: bool,
    /// Bytes of jobs that may wait in its socket beside the running one (see
    /// `LOOKAHEAD_BYTES`): a share of its socket's send buffer, so that writing them never
    /// blocks.
    pub(super) ahead_bytes: usize,
}

impl Worker {
    /// Serving, reachable and not offered to clients: queued jobs may go to it.
    pub(super) fn takes_jobs(&self) -> bool {
        matches!(self.state, Phase::Active) && self.sock.is_some() && !self.published
    }

    /// The running item's deadline, from the control block; a bound to look again at, if the
    /// worker has not begun its head job yet.
    pub(super) fn deadline(&mut self, timeout: Duration, now: Instant) -> Option<Instant> {
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

/// Asks a worker to exit and stops reading from it.
pub(super) fn retire(w: &mut Worker) {
    if let Some(s) = w.sock.take() {
        let _ = (&*s).write_all(&msg::exit());
    }
    w.state = Phase::Ending;
}

pub(super) fn signal(w: &Worker, sig: i32) {
    // The worker's process group too: a task's own subprocesses die with it.
    let _ = w.child.signal_group(sig);
}
