//! Lazy, bounded `imap` and `imap_unordered`.
//!
//! Both pull chunks from the input only while fewer than a window of chunks (four per worker)
//! is in flight, so an endless input works and memory stays flat: Python's `imap` drains the
//! whole input first; these do not.

use std::collections::VecDeque;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::job::Sink;
use super::result::{Outcome, Part, Slot};
use super::{Pool, decode_chunk};
use crate::error::{Error, Result};
use crate::sys::fnptr::FnRef;

fn window(pool: &Pool) -> usize {
    pool.processes * 4
}

fn next_chunk<I: Iterator>(iter: &mut I, size: usize) -> Vec<I::Item> {
    iter.by_ref().take(size).collect()
}

/// Ordered lazy results of [`Pool::imap`]: an iterator of `Result<R>`, one per input item.
///
/// Besides `next`, [`next_timeout`](Imap::next_timeout) waits a bounded time.
pub struct Imap<'p, I, R> {
    pool: &'p Pool,
    f: Option<FnRef>,
    input: std::iter::Fuse<I>,
    chunksize: usize,
    /// Chunks in flight, in input order, with their item counts.
    inflight: VecDeque<(Arc<Slot>, usize)>,
    ready: VecDeque<Result<R>>,
    _r: PhantomData<fn() -> R>,
}

impl<'p, I, R> Imap<'p, I, R>
where
    I: Iterator,
    I::Item: Serialize,
    R: DeserializeOwned,
{
    pub(crate) fn new(pool: &'p Pool, f: Option<FnRef>, input: I, chunksize: usize) -> Self {
        Imap {
            pool,
            f,
            input: input.fuse(),
            chunksize,
            inflight: VecDeque::new(),
            ready: VecDeque::new(),
            _r: PhantomData,
        }
    }

    fn refill(&mut self) {
        while self.inflight.len() < window(self.pool) {
            let chunk = next_chunk(&mut self.input, self.chunksize);
            if chunk.is_empty() {
                return;
            }
            let slot = Arc::new(Slot::default());
            if let Err(e) = self
                .pool
                .submit_chunk(self.f, &chunk, Sink::Slot(Arc::clone(&slot), 0))
            {
                slot.complete(0, vec![Part::rest(e)]);
            }
            self.inflight.push_back((slot, chunk.len()));
        }
    }

    /// The next result, waiting at most `timeout`; `Some(Err(e))` with `e.is_timeout()` if it
    /// is not ready yet (the iterator stays usable), `None` at the end of the input.
    pub fn next_timeout(&mut self, timeout: Duration) -> Option<Result<R>> {
        self.next_deadline(Some(Instant::now() + timeout))
    }

    fn next_deadline(&mut self, deadline: Option<Instant>) -> Option<Result<R>> {
        loop {
            if let Some(r) = self.ready.pop_front() {
                return Some(r);
            }
            self.refill();
            let (slot, _) = self.inflight.front()?;
            if !slot.wait(deadline) {
                return Some(Err(Error::timed_out()));
            }
            let (slot, n) = self.inflight.pop_front().expect("checked above");
            let outcome = slot
                .take()
                .pop()
                .unwrap_or_else(|| vec![Part::rest(Error::protocol("a result was lost"))]);
            self.ready.extend(decode_chunk(outcome, n));
            self.refill();
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
        let queued: usize = self.inflight.iter().map(|(_, n)| n).sum();
        bounds(&self.input, queued + self.ready.len())
    }
}

/// Lazy results of [`Pool::imap_unordered`], in completion order.
pub struct ImapUnordered<'p, I, R> {
    pool: &'p Pool,
    f: Option<FnRef>,
    input: std::iter::Fuse<I>,
    chunksize: usize,
    inflight: usize,
    /// Items in the chunks in flight.
    inflight_items: usize,
    tx: mpsc::Sender<(usize, Outcome)>,
    rx: mpsc::Receiver<(usize, Outcome)>,
    ready: VecDeque<Result<R>>,
    _r: PhantomData<fn() -> R>,
}

impl<'p, I, R> ImapUnordered<'p, I, R>
where
    I: Iterator,
    I::Item: Serialize,
    R: DeserializeOwned,
{
    pub(crate) fn new(pool: &'p Pool, f: Option<FnRef>, input: I, chunksize: usize) -> Self {
        let (tx, rx) = mpsc::channel();
        ImapUnordered {
            pool,
            f,
            input: input.fuse(),
            chunksize,
            inflight: 0,
            inflight_items: 0,
            tx,
            rx,
            ready: VecDeque::new(),
            _r: PhantomData,
        }
    }

    fn refill(&mut self) {
        while self.inflight < window(self.pool) {
            let chunk = next_chunk(&mut self.input, self.chunksize);
            if chunk.is_empty() {
                return;
            }
            let sink = Sink::Channel(self.tx.clone(), chunk.len());
            if let Err(e) = self.pool.submit_chunk(self.f, &chunk, sink) {
                let _ = self.tx.send((chunk.len(), vec![Part::rest(e)]));
            }
            self.inflight += 1;
            self.inflight_items += chunk.len();
        }
    }

    /// As [`Imap::next_timeout`].
    pub fn next_timeout(&mut self, timeout: Duration) -> Option<Result<R>> {
        self.next_deadline(Some(Instant::now() + timeout))
    }

    fn next_deadline(&mut self, deadline: Option<Instant>) -> Option<Result<R>> {
        loop {
            if let Some(r) = self.ready.pop_front() {
                return Some(r);
            }
            self.refill();
            if self.inflight == 0 {
                return None;
            }
            let got = match deadline {
                None => self.rx.recv().map_err(|_| ()),
                Some(d) => self
                    .rx
                    .recv_timeout(d.saturating_duration_since(Instant::now()))
                    .map_err(|_| ()),
            };
            let Ok((n, outcome)) = got else {
                return Some(Err(Error::timed_out()));
            };
            self.inflight -= 1;
            self.inflight_items -= n;
            self.ready.extend(decode_chunk(outcome, n));
        }
    }
}

impl<I, R> Iterator for ImapUnordered<'_, I, R>
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
        bounds(&self.input, self.inflight_items + self.ready.len())
    }
}

/// Results still to come: `known` submitted or ready, plus what the input still holds.
fn bounds<I: Iterator>(input: &I, known: usize) -> (usize, Option<usize>) {
    let (low, high) = input.size_hint();
    (
        known.saturating_add(low),
        high.and_then(|h| h.checked_add(known)),
    )
}
