//! A batch: one chunk of items on its way through the pool, and where its outcome goes. The
//! pool's code calls a batch in flight a *job* (`jobs`, `job`), as Python's pool does; the type
//! is named `Batch` so that it is not mistaken for an MPI job or a public type.
//!
//! A batch collects its items' outcomes in parts as they are settled — by a worker's answer,
//! by the results a dead worker had committed, by the failure of the one item it was running
//! — and is delivered once every item has one. Until then it runs from [`Batch::next`], the
//! first unsettled item: a job re-queued after a death skips what is settled.

use std::sync::{Arc, mpsc};

use super::result::{Answer, Outcome, Part, Slot};
use crate::error::Error;
use crate::wire::fds::Fds;
use crate::wire::msg;

/// Where a job's outcome goes.
pub(crate) enum Sink {
    /// Cell `i` of a slot someone waits on.
    Slot(Arc<Slot>, usize),
    /// A channel shared by several jobs (of one `imap_unordered`: tagged with the index of
    /// the job's first item; of a serving MPI rank: with the task's key).
    Channel(mpsc::Sender<(usize, Outcome)>, usize),
}

impl Sink {
    /// Hands `outcome` to whoever waits for it.
    #[cfg_attr(not(feature = "mpi"), allow(dead_code))]
    pub(crate) fn deliver(self, outcome: Outcome) {
        self.deliver_cells(outcome, 1);
    }

    /// As `deliver`; for a slot, the outcome fills `cells` cells from `i` (the jobs a merged
    /// batch stands for; see [`Batch::absorb`]).
    fn deliver_cells(self, outcome: Outcome, cells: usize) {
        match self {
            Sink::Slot(s, i) => s.complete_span(i, cells, outcome),
            Sink::Channel(tx, n) => {
                let _ = tx.send((n, outcome));
            }
        }
    }
}

/// The largest frame merged jobs make: the size of a large `map`'s automatic chunks, which
/// are not merged further (one frame stays a few cache-warm pages).
const MERGED_BYTES: usize = 64 << 10;

/// One chunk of work: an encoded `Run` frame and where its outcome goes.
pub(crate) struct Batch {
    pub(crate) frame: Vec<u8>,
    /// Fds of handles inside the argument, sent with the frame (and again on a re-run).
    pub(crate) fds: Fds,
    sink: Sink,
    /// Items in the chunk.
    pub(crate) items: usize,
    /// The first item without an outcome: a run of this job starts there.
    pub(crate) next: usize,
    parts: Vec<Part>,
    /// Re-runs left for the item at `next`, if a worker dies running it.
    pub(crate) retries_left: u32,
    /// Re-runs each item may have (`max_retries`).
    max_retries: u32,
    /// Workers lost before they began this job (see `fate`).
    pub(crate) unstarted_losses: u32,
    /// The pid of the worker it was last written to: its items' errors name it.
    pub(crate) worker: Option<u32>,
    /// Jobs it stands for: 1, or more once consecutive jobs of one `map` were merged into it
    /// on their way to a worker ([`Batch::absorb`]).
    pub(crate) cells: usize,
}

impl Batch {
    /// A job of `items` items, nothing settled yet.
    pub(crate) fn new(frame: Vec<u8>, fds: Fds, items: usize, sink: Sink, retries: u32) -> Batch {
        Batch {
            frame,
            fds,
            sink,
            items,
            next: 0,
            parts: Vec::new(),
            retries_left: retries,
            max_retries: retries,
            unstarted_losses: 0,
            worker: None,
            cells: 1,
        }
    }

    /// Merges `next` into this job, to travel and run as one chunk: both fresh (never sent,
    /// nothing settled), without fds, of the same function and retry budget, for the cells of
    /// one slot side by side. Every item keeps its own outcome, retries and timeout (a chunk's
    /// items have them each), so the merge is invisible but for the syscalls it saves: one
    /// frame and one answer instead of one per job. False, changing nothing, when they cannot
    /// merge; when they did, `next` is spent: drop it.
    pub(crate) fn absorb(&mut self, next: &Batch) -> bool {
        let fresh = |b: &Batch| {
            b.next == 0
                && b.parts.is_empty()
                && b.unstarted_losses == 0
                && b.fds.is_none()
                && b.retries_left == b.max_retries
        };
        let side_by_side = match (&self.sink, &next.sink) {
            (Sink::Slot(a, i), Sink::Slot(b, j)) => Arc::ptr_eq(a, b) && *j == i + self.cells,
            _ => false,
        };
        let small = self.frame.len() + next.frame.len() <= MERGED_BYTES;
        let mergeable = small
            && fresh(self)
            && fresh(next)
            && side_by_side
            && self.max_retries == next.max_retries;
        if !mergeable || !msg::append_items(&mut self.frame, &next.frame) {
            return false;
        }
        self.items += next.items;
        self.cells += next.cells;
        true
    }

    /// The frame, item count and sink of a job for a remote flavor, which settles it whole
    /// (it holds no fds: the pool checked).
    pub(crate) fn into_remote(self) -> (Vec<u8>, usize, Sink) {
        (self.frame, self.items, self.sink)
    }

    /// True if the request it belongs to was cancelled: it is not to run any more.
    pub(crate) fn is_cancelled(&self) -> bool {
        match &self.sink {
            Sink::Slot(s, _) => s.is_cancelled(),
            Sink::Channel(..) => false,
        }
    }

    /// Items not settled yet.
    pub(crate) fn left(&self) -> usize {
        self.items - self.next
    }

    /// True once every item has its outcome.
    pub(crate) fn is_settled(&self) -> bool {
        self.next >= self.items
    }

    /// The frame to send for the next run: it starts at the first unsettled item.
    pub(crate) fn prepare(&mut self) {
        if self.next > 0 {
            let skip = u32::try_from(self.next).unwrap_or(u32::MAX);
            msg::set_skip(&mut self.frame, skip);
        }
    }

    /// The next `count` items have the outcomes in `answer`. Past the item that had
    /// retries, the budget starts afresh: retries count per item.
    pub(crate) fn settle(&mut self, count: usize, answer: Answer) {
        let count = count.min(self.left());
        if count == 0 {
            return;
        }
        self.parts.push(Part {
            count,
            what: Ok(answer),
            worker: self.worker,
        });
        self.advance(count);
    }

    /// The item at `next` fails with `e`.
    pub(crate) fn fail_one(&mut self, e: Error) {
        if self.is_settled() {
            return;
        }
        self.parts.push(Part {
            worker: self.worker,
            ..Part::one(e)
        });
        self.advance(1);
    }

    fn advance(&mut self, count: usize) {
        self.next += count;
        self.retries_left = self.max_retries;
    }

    /// Delivers the outcome; every item left fails with `e` (nothing, if all are settled).
    pub(crate) fn fail_rest(mut self, e: Error) {
        if !self.is_settled() {
            self.parts.push(Part {
                worker: self.worker,
                ..Part::rest(e)
            });
        }
        self.sink.deliver_cells(self.parts, self.cells);
    }

    /// Delivers the outcome of a settled job.
    pub(crate) fn deliver(self) {
        debug_assert!(self.is_settled());
        self.fail_rest(Error::protocol("a result was lost"));
    }
}
