//! [`Imap`]: lazy, ordered `imap` over the ranks, with a bounded window of chunks in flight.

use std::collections::VecDeque;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::Pool;
use super::driver::Cmd;
use crate::error::{Error, Result};
use crate::pool::Slot;
use crate::task::fnref::FnRef;

/// The iterator of [`Pool::imap`]: results in input order, pulled from the input as chunks
/// complete, with at most two chunks per worker in flight.
///
/// Besides `next`, [`next_timeout`](Imap::next_timeout) waits a bounded time. The input is
/// fused: once it returns `None` it is never polled again.
pub struct Imap<'p, I, R> {
    pool: &'p Pool,
    f: Option<FnRef>,
    items: std::iter::Fuse<I>,
    chunksize: usize,
    /// Chunks sent, oldest first, with their item counts.
    inflight: VecDeque<(Arc<Slot>, usize)>,
    ready: VecDeque<Result<R>>,
    _out: PhantomData<fn() -> R>,
}

impl<'p, I, R> Imap<'p, I, R>
where
    I: Iterator,
    I::Item: Serialize,
{
    pub(super) fn new(pool: &'p Pool, f: Option<FnRef>, items: I, chunksize: usize) -> Self {
        Imap {
            pool,
            f,
            items: items.fuse(),
            chunksize: chunksize.max(1),
            inflight: VecDeque::new(),
            ready: VecDeque::new(),
            _out: PhantomData,
        }
    }

    /// Sends chunks until the window is full or the input ends.
    fn fill(&mut self) {
        let window = 2 * self.pool.processes.max(1);
        while self.inflight.len() < window {
            let chunk: Vec<I::Item> = self.items.by_ref().take(self.chunksize).collect();
            if chunk.is_empty() {
                return;
            }
            let slot = Arc::new(Slot::default());
            let sent = super::encode(self.f, &chunk)
                .and_then(|frame| self.pool.send(Cmd::Run(frame, Arc::clone(&slot), 0)));
            if let Err(e) = sent {
                slot.complete(0, vec![crate::pool::Part::rest(e)]);
            }
            self.inflight.push_back((slot, chunk.len()));
        }
    }
}

impl<I, R> Imap<'_, I, R>
where
    I: Iterator,
    I::Item: Serialize,
    R: DeserializeOwned,
{
    /// The next result, waiting at most `timeout`; `Some(Err(e))` with `e.is_timeout()` if it
    /// is not ready yet (the iterator stays usable), `None` at the end of the input.
    pub fn next_timeout(&mut self, timeout: Duration) -> Option<Result<R>> {
        self.next_deadline(Instant::now().checked_add(timeout))
    }

    fn next_deadline(&mut self, deadline: Option<Instant>) -> Option<Result<R>> {
        loop {
            if let Some(r) = self.ready.pop_front() {
                self.fill();
                return Some(r);
            }
            self.fill();
            let (slot, _) = self.inflight.front()?;
            if !slot.wait(deadline) {
                return Some(Err(Error::timed_out()));
            }
            let (slot, n) = self.inflight.pop_front().expect("checked above");
            for outcome in slot.take() {
                self.ready
                    .extend(crate::pool::decode_chunk::<R>(outcome, n));
            }
        }
    }
}

impl<I, R> Iterator for Imap<'_, I, R>
where
    I: Iterator,
    I::Item: Serialize,
    R: DeserializeOwned,
{
    type Item = Result<R>;

    fn next(&mut self) -> Option<Result<R>> {
        self.next_deadline(None)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let known = self.ready.len() + self.inflight.iter().map(|(_, n)| n).sum::<usize>();
        let (low, high) = self.items.size_hint();
        (
            known.saturating_add(low),
            high.and_then(|h| h.checked_add(known)),
        )
    }
}
