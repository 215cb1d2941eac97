//! Waiting on many handles at once: [`as_completed`] and [`wait`], Python's
//! `concurrent.futures.as_completed` and `concurrent.futures.wait`.
//!
//! Neither polls. Each watches every handle's slot with one shared [`Notify`], tagged with the
//! handle's index: a slot that becomes done (its last outcome arrived, or it was cancelled)
//! queues its tag there and wakes the waiter. Registering under the slot's lock either takes
//! (the slot will tell) or finds the slot done already (the waiter counts it now), so no
//! completion is missed, and each completion costs the waiter one wake-up and no scan.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::result::{AsyncResult, Notify};
use crate::error::{Error, Result};

/// Registers `n` on every handle; the indices of those already done, in order.
fn watch_all<R>(handles: &[AsyncResult<R>], n: &Arc<Notify>) -> VecDeque<usize> {
    (0..handles.len())
        .filter(|&i| !handles[i].watch(n, i))
        .collect()
}

/// Yields the results of `handles` as they complete, each with the handle's index in
/// `handles`: Python's `concurrent.futures.as_completed`.
///
/// The iterator blocks until the next handle completes (a result, an error, or
/// [`cancel`](AsyncResult::cancel)) and ends once every handle was yielded;
/// [`next_timeout`](AsCompleted::next_timeout) waits a bounded time. Handles that completed
/// before the call come first, in input order. It never polls: it sleeps until a handle
/// completes.
///
/// # Examples
/// ```
/// use std::time::Duration;
///
/// fn nap(ms: u64) -> u64 {
///     std::thread::sleep(Duration::from_millis(ms));
///     ms
/// }
///
/// let pool = mproc::Pool::new(2)?;
/// let handles = vec![pool.apply_async(nap, 500), pool.apply_async(nap, 0)];
/// let mut done = mproc::as_completed(handles);
/// let (first, value) = done.next().expect("two handles");
/// assert_eq!((first, value?), (1, 0)); // the quick one, second in the input, comes first
/// for (_, h) in done.pending() {
///     h.cancel(); // no need for the slow one any more
/// }
/// let (i, rest) = done.next().expect("one left");
/// assert_eq!(i, 0);
/// assert_eq!(rest.unwrap_err().kind(), mproc::ErrorKind::Cancelled);
/// assert!(done.next().is_none());
/// # Ok::<(), mproc::Error>(())
/// ```
pub fn as_completed<R, I>(handles: I) -> AsCompleted<R>
where
    I: IntoIterator<Item = AsyncResult<R>>,
{
    let handles: Vec<AsyncResult<R>> = handles.into_iter().collect();
    let notify = Arc::new(Notify::default());
    let ready = watch_all(&handles, &notify);
    AsCompleted {
        left: handles.len(),
        handles: handles.into_iter().map(Some).collect(),
        ready,
        notify,
    }
}

/// The iterator of [`as_completed`]: `(index, result)` pairs in completion order.
///
/// ```
/// fn square(x: u64) -> u64 {
///     x * x
/// }
///
/// let pool = mproc::Pool::new(2)?;
/// let handles: Vec<_> = (1..=3).map(|x| pool.apply_async(square, x)).collect();
/// let mut squares = vec![0; 3];
/// for (i, r) in mproc::as_completed(handles) {
///     squares[i] = r?; // in completion order, each with its handle's index
/// }
/// assert_eq!(squares, [1, 4, 9]);
/// # Ok::<(), mproc::Error>(())
/// ```
///
/// # Drop
/// Dropping it drops the handles not yielded yet, which does not cancel their tasks (see
/// [`AsyncResult`]); cancel them first through [`pending`](AsCompleted::pending) to stop them.
#[must_use = "iterators are lazy: results are only collected as it is iterated"]
pub struct AsCompleted<R> {
    /// The handles by index; `None` once yielded.
    handles: Vec<Option<AsyncResult<R>>>,
    /// Indices found done before the first wait, to yield first.
    ready: VecDeque<usize>,
    notify: Arc<Notify>,
    /// Handles not yielded yet.
    left: usize,
}

impl<R> AsCompleted<R> {
    /// The next handle to complete, waiting at most `timeout`: `Some(Ok((index, result)))`,
    /// `Some(Err(e))` with `e.is_timeout()` if none completed in time (the iterator stays
    /// usable), `None` once every handle was yielded.
    ///
    /// # Examples
    /// ```
    /// use std::time::Duration;
    ///
    /// fn nap(ms: u64) -> u64 {
    ///     std::thread::sleep(Duration::from_millis(ms));
    ///     ms
    /// }
    ///
    /// let pool = mproc::Pool::new(1)?;
    /// let mut done = mproc::as_completed([pool.apply_async(nap, 60_000)]);
    /// let e = done.next_timeout(Duration::from_millis(10)).expect("one pending").unwrap_err();
    /// assert!(e.is_timeout());
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn next_timeout(&mut self, timeout: Duration) -> Option<Result<(usize, Result<R>)>> {
        self.next_deadline(Some(Instant::now() + timeout))
    }

    /// The handles not yielded yet, with their indices: to [`cancel`](AsyncResult::cancel)
    /// them, or look at them.
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
    /// let handles = [pool.apply_async(nap, 60_000), pool.apply_async(nap, 0)];
    /// let mut done = mproc::as_completed(handles);
    /// let (first, _) = done.next().expect("two handles");
    /// assert_eq!(first, 1);
    /// assert_eq!(done.pending().map(|(i, _)| i).collect::<Vec<_>>(), [0]); // the slow one
    /// for (_, h) in done.pending() {
    ///     h.cancel();
    /// }
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn pending(&self) -> impl Iterator<Item = (usize, &AsyncResult<R>)> {
        self.handles
            .iter()
            .enumerate()
            .filter_map(|(i, h)| Some((i, h.as_ref()?)))
    }

    /// How many handles are not yielded yet.
    ///
    /// ```
    /// fn square(x: u64) -> u64 {
    ///     x * x
    /// }
    ///
    /// let pool = mproc::Pool::new(2)?;
    /// let handles = [pool.apply_async(square, 2), pool.apply_async(square, 3)];
    /// let mut done = mproc::as_completed(handles);
    /// assert_eq!(done.len(), 2);
    /// done.next();
    /// assert_eq!(done.len(), 1);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn len(&self) -> usize {
        self.left
    }

    /// True once every handle was yielded.
    ///
    /// ```
    /// fn square(x: u64) -> u64 {
    ///     x * x
    /// }
    ///
    /// let pool = mproc::Pool::new(2)?;
    /// let handles = [pool.apply_async(square, 2), pool.apply_async(square, 3)];
    /// let mut done = mproc::as_completed(handles);
    /// let mut sum = 0;
    /// while !done.is_empty() {
    ///     sum += done.next().expect("not empty").1?;
    /// }
    /// assert_eq!(sum, 13);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn is_empty(&self) -> bool {
        self.left == 0
    }

    fn next_deadline(&mut self, deadline: Option<Instant>) -> Option<Result<(usize, Result<R>)>> {
        loop {
            if self.left == 0 {
                return None;
            }
            let i = match self.ready.pop_front() {
                Some(i) => i,
                None => match self.notify.next(deadline) {
                    Some(i) => i,
                    None => return Some(Err(Error::timed_out())),
                },
            };
            // A slot tells once, but be safe against an index seen twice.
            let Some(h) = self.handles.get_mut(i).and_then(Option::take) else {
                continue;
            };
            self.left -= 1;
            // Done: `get` does not block.
            return Some(Ok((i, h.get())));
        }
    }
}

impl<R> Iterator for AsCompleted<R> {
    type Item = (usize, Result<R>);

    fn next(&mut self) -> Option<(usize, Result<R>)> {
        match self.next_deadline(None)? {
            Ok(item) => Some(item),
            Err(_) => unreachable!("no deadline, no timeout"),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl<R> ExactSizeIterator for AsCompleted<R> {}

impl<R> Drop for AsCompleted<R> {
    fn drop(&mut self) {
        for h in self.handles.iter().flatten() {
            h.unwatch(&self.notify);
        }
    }
}

impl<R> std::fmt::Debug for AsCompleted<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsCompleted")
            .field("left", &self.left)
            .finish()
    }
}

/// When [`wait`] returns: Python's `FIRST_COMPLETED`, `FIRST_EXCEPTION`, `ALL_COMPLETED`.
///
/// ```
/// use std::time::Duration;
/// use mproc::ReturnWhen;
///
/// fn nap(ms: u64) -> u64 {
///     std::thread::sleep(Duration::from_millis(ms));
///     ms
/// }
/// fn fail(_: ()) -> u64 {
///     panic!("no")
/// }
///
/// let pool = mproc::Pool::new(2)?;
/// let handles = vec![pool.apply_async(nap, 60_000), pool.apply_async(fail, ())];
/// let timeout = Some(Duration::from_secs(60));
/// let (done, not_done) = mproc::wait(&handles, ReturnWhen::FirstException, timeout);
/// assert_eq!((done, not_done), (vec![1], vec![0])); // at once: a failure is in
/// handles[0].cancel();
/// # Ok::<(), mproc::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReturnWhen {
    /// As soon as any handle completes (or is cancelled).
    FirstCompleted,
    /// As soon as any handle completes with an error — a cancelled one does not count, as in
    /// Python — or once every handle completed.
    FirstException,
    /// Once every handle completed.
    AllCompleted,
}

/// Waits until `return_when` holds for `handles`, or `timeout` passes (for ever: `None`);
/// returns the indices of the handles done and of those not done, each in input order:
/// Python's `concurrent.futures.wait` and its `(done, not_done)`.
///
/// A handle is done once its result is available, an error included, or it was cancelled.
/// Nothing is consumed: take the results with [`get`](AsyncResult::get) afterwards. With
/// [`ReturnWhen::FirstException`], the results of handles done are decoded to see whether they
/// failed (kept for `get`). It never polls: it sleeps until a handle completes.
///
/// # Examples
/// ```
/// use std::time::Duration;
/// use mproc::ReturnWhen;
///
/// fn nap(ms: u64) -> u64 {
///     std::thread::sleep(Duration::from_millis(ms));
///     ms
/// }
///
/// let pool = mproc::Pool::new(2)?;
/// let handles = vec![pool.apply_async(nap, 60_000), pool.apply_async(nap, 0)];
/// let (done, not_done) = mproc::wait(&handles, ReturnWhen::FirstCompleted, None);
/// assert_eq!((done, not_done), (vec![1], vec![0]));
///
/// let timeout = Some(Duration::from_millis(50));
/// let (done, not_done) = mproc::wait(&handles, ReturnWhen::AllCompleted, timeout);
/// assert_eq!((done, not_done), (vec![1], vec![0])); // the slow one is still running
/// handles[0].cancel();
/// # Ok::<(), mproc::Error>(())
/// ```
pub fn wait<R>(
    handles: &[AsyncResult<R>],
    return_when: ReturnWhen,
    timeout: Option<Duration>,
) -> (Vec<usize>, Vec<usize>) {
    let deadline = timeout.map(|t| Instant::now() + t);
    let notify = Arc::new(Notify::default());
    let mut done = vec![false; handles.len()];
    let mut count = 0;
    let mut news = watch_all(handles, &notify);
    loop {
        let mut failed = false;
        for i in news.drain(..) {
            if !std::mem::replace(&mut done[i], true) {
                count += 1;
                let h = &handles[i];
                failed |= !h.cancelled() && h.successful() == Some(false);
            }
        }
        let enough = match return_when {
            _ if count == handles.len() => true,
            ReturnWhen::FirstCompleted => count > 0,
            ReturnWhen::FirstException => failed,
            ReturnWhen::AllCompleted => false,
        };
        if enough {
            break;
        }
        match notify.next(deadline) {
            Some(i) => news.push_back(i),
            None => break,
        }
    }
    for h in handles {
        h.unwatch(&notify);
    }
    (0..handles.len()).partition(|&i| done[i])
}
