//! Lazy, bounded `imap` and `imap_unordered`.
//!
//! Both pull chunks from the input only while fewer than a window of chunks (four per worker)
//! is in flight, so an endless input works and memory stays flat: Python's `imap` drains the
//! whole input first; these do not.

use std::collections::{HashMap, VecDeque};
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;

use super::batch::Sink;
use super::result::{Outcome, Part, Slot};
use super::{Pool, decode_chunk_at};
use crate::error::{Error, Result};
use crate::task::fnref::FnRef;

/// Encodes a chunk of items of the input's item type and queues it: `Pool::submit_chunk` for
/// the function's argument type, chosen where that type is known.
pub(crate) type Submit<T> = fn(&Pool, Option<FnRef>, &[T], Sink) -> Result<()>;

fn window(pool: &Pool) -> usize {
    pool.processes * 4
}

fn next_chunk<I: Iterator>(iter: &mut I, size: usize) -> Vec<I::Item> {
    iter.by_ref().take(size).collect()
}

/// Ordered lazy results of [`Pool::imap`]: an iterator of `Result<R>`, one per input item.
///
/// Besides `next`, [`next_timeout`](Imap::next_timeout) waits a bounded time.
///
/// ```
/// fn square(x: u64) -> u64 {
///     x * x
/// }
///
/// let pool = mproc::Pool::new(2)?;
/// let mut squares = pool.imap(square, 1..); // an endless input: pulled as workers free up
/// let big = squares.find(|r| r.as_ref().is_ok_and(|&s| s > 1000));
/// assert_eq!(big.transpose()?, Some(1024));
/// # Ok::<(), mproc::Error>(())
/// ```
pub struct Imap<'p, I: Iterator, R> {
    pool: &'p Pool,
    f: Option<FnRef>,
    submit: Submit<I::Item>,
    input: std::iter::Fuse<I>,
    chunksize: usize,
    /// Items taken from the input so far: the index of the next chunk's first item.
    taken: usize,
    /// Chunks in flight, in input order, with their first item's index and item counts.
    inflight: VecDeque<(Arc<Slot>, usize, usize)>,
    ready: VecDeque<Result<R>>,
    _r: PhantomData<fn() -> R>,
}

impl<'p, I, R> Imap<'p, I, R>
where
    I: Iterator,
    R: DeserializeOwned,
{
    pub(crate) fn new(
        pool: &'p Pool,
        f: Option<FnRef>,
        submit: Submit<I::Item>,
        input: I,
        chunksize: usize,
    ) -> Self {
        Imap {
            pool,
            f,
            submit,
            input: input.fuse(),
            chunksize,
            taken: 0,
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
            let sink = Sink::Slot(Arc::clone(&slot), 0);
            if let Err(e) = (self.submit)(self.pool, self.f, &chunk, sink) {
                slot.complete(0, vec![Part::rest(e)]);
            }
            self.inflight.push_back((slot, self.taken, chunk.len()));
            self.taken += chunk.len();
        }
    }

    /// The next result, waiting at most `timeout`; `Some(Err(e))` with `e.is_timeout()` if it
    /// is not ready yet (the iterator stays usable), `None` at the end of the input.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// fn nap(ms: u64) -> u64 {
    ///     std::thread::sleep(Duration::from_millis(ms));
    ///     ms
    /// }
    ///
    /// let pool = mproc::Pool::new(2)?;
    /// let mut naps = pool.imap(nap, [0, 60_000]);
    /// assert_eq!(naps.next_timeout(Duration::from_secs(60)).transpose()?, Some(0));
    /// let e = naps.next_timeout(Duration::from_millis(10)).expect("one more").unwrap_err();
    /// assert!(e.is_timeout()); // the second is still running
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn next_timeout(&mut self, timeout: Duration) -> Option<Result<R>> {
        self.next_deadline(Some(Instant::now() + timeout))
    }

    fn next_deadline(&mut self, deadline: Option<Instant>) -> Option<Result<R>> {
        loop {
            if let Some(r) = self.ready.pop_front() {
                return Some(r);
            }
            self.refill();
            let (slot, ..) = self.inflight.front()?;
            if !slot.wait(deadline) {
                return Some(Err(Error::timed_out()));
            }
            let (slot, first, n) = self.inflight.pop_front().expect("checked above");
            let outcome = slot
                .take()
                .pop()
                .unwrap_or_else(|| vec![Part::rest(Error::protocol("a result was lost"))]);
            self.ready.extend(decode_chunk_at(outcome, n, first));
            self.refill();
        }
    }
}

impl<I, R> Iterator for Imap<'_, I, R>
where
    I: Iterator,
    R: DeserializeOwned,
{
    type Item = Result<R>;

    fn next(&mut self) -> Option<Result<R>> {
        self.next_deadline(None)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let queued: usize = self.inflight.iter().map(|(.., n)| n).sum();
        bounds(&self.input, queued + self.ready.len())
    }
}

/// Lazy results of [`Pool::imap_unordered`], in completion order.
///
/// ```
/// fn square(x: u64) -> u64 {
///     x * x
/// }
///
/// let pool = mproc::Pool::new(2)?;
/// let total: u64 = pool.imap_unordered(square, 1..=10).sum::<mproc::Result<u64>>()?;
/// assert_eq!(total, 385);
/// # Ok::<(), mproc::Error>(())
/// ```
pub struct ImapUnordered<'p, I: Iterator, R> {
    pool: &'p Pool,
    f: Option<FnRef>,
    submit: Submit<I::Item>,
    input: std::iter::Fuse<I>,
    chunksize: usize,
    /// Items taken from the input so far: the index of the next chunk's first item.
    taken: usize,
    /// The item counts of the chunks in flight, by their first item's index (their key on
    /// the channel).
    inflight: HashMap<usize, usize>,
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
    R: DeserializeOwned,
{
    pub(crate) fn new(
        pool: &'p Pool,
        f: Option<FnRef>,
        submit: Submit<I::Item>,
        input: I,
        chunksize: usize,
    ) -> Self {
        let (tx, rx) = mpsc::channel();
        ImapUnordered {
            pool,
            f,
            submit,
            input: input.fuse(),
            chunksize,
            taken: 0,
            inflight: HashMap::new(),
            inflight_items: 0,
            tx,
            rx,
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
            let first = self.taken;
            let sink = Sink::Channel(self.tx.clone(), first);
            if let Err(e) = (self.submit)(self.pool, self.f, &chunk, sink) {
                let _ = self.tx.send((first, vec![Part::rest(e)]));
            }
            self.inflight.insert(first, chunk.len());
            self.taken += chunk.len();
            self.inflight_items += chunk.len();
        }
    }

    /// As [`Imap::next_timeout`].
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// fn nap(ms: u64) -> u64 {
    ///     std::thread::sleep(Duration::from_millis(ms));
    ///     ms
    /// }
    ///
    /// let pool = mproc::Pool::new(2)?;
    /// let mut naps = pool.imap_unordered(nap, [60_000, 0]);
    /// assert_eq!(naps.next_timeout(Duration::from_secs(60)).transpose()?, Some(0));
    /// let e = naps.next_timeout(Duration::from_millis(10)).expect("one more").unwrap_err();
    /// assert!(e.is_timeout()); // the slow one is still running
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn next_timeout(&mut self, timeout: Duration) -> Option<Result<R>> {
        self.next_deadline(Some(Instant::now() + timeout))
    }

    fn next_deadline(&mut self, deadline: Option<Instant>) -> Option<Result<R>> {
        loop {
            if let Some(r) = self.ready.pop_front() {
                return Some(r);
            }
            self.refill();
            if self.inflight.is_empty() {
                return None;
            }
            let got = match deadline {
                None => self.rx.recv().map_err(|_| ()),
                Some(d) => self
                    .rx
                    .recv_timeout(d.saturating_duration_since(Instant::now()))
                    .map_err(|_| ()),
            };
            let Ok((first, outcome)) = got else {
                return Some(Err(Error::timed_out()));
            };
            let Some(n) = self.inflight.remove(&first) else {
                continue; // not a chunk in flight: delivered twice
            };
            self.inflight_items -= n;
            self.ready.extend(decode_chunk_at(outcome, n, first));
        }
    }
}

impl<I, R> Iterator for ImapUnordered<'_, I, R>
where
    I: Iterator,
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
