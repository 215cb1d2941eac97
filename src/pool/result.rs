//! Where a task's outcome lands ([`Slot`]) and the handle users hold ([`AsyncResult`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// What the supervisor delivers for one job: the worker's reply payload (the codec bytes after
/// the message tag), or why there is none.
pub(crate) type Outcome = Result<Vec<u8>>;

/// A one-shot cell the supervisor fills and a client waits on (blocking or as a future).
#[derive(Default)]
pub(crate) struct Slot {
    state: Mutex<SlotState>,
    ready: Condvar,
}

#[derive(Default)]
struct SlotState {
    outcome: Option<Outcome>,
    done: bool,
    waker: Option<Waker>,
}

impl Slot {
    /// Delivers the outcome and wakes every waiter. Later deliveries are ignored.
    pub(crate) fn complete(&self, outcome: Outcome) {
        let waker = {
            let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            if s.done {
                return;
            }
            s.outcome = Some(outcome);
            s.done = true;
            s.waker.take()
        };
        self.ready.notify_all();
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// True once an outcome was delivered.
    pub(crate) fn is_done(&self) -> bool {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .done
    }

    /// Blocks until delivered or `deadline` passes; true if delivered.
    pub(crate) fn wait(&self, deadline: Option<Instant>) -> bool {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        while !s.done {
            match deadline {
                None => s = self.ready.wait(s).unwrap_or_else(PoisonError::into_inner),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return false;
                    }
                    s = self
                        .ready
                        .wait_timeout(s, d - now)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
            }
        }
        true
    }

    /// Takes the outcome (once).
    pub(crate) fn take(&self) -> Option<Outcome> {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .outcome
            .take()
    }

    /// True if delivered; otherwise remembers `waker` to wake on delivery.
    fn poll_done(&self, waker: &Waker) -> bool {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if !s.done {
            s.waker = Some(waker.clone());
        }
        s.done
    }
}

/// Turns the outcomes of a request's jobs, in order, into its result.
pub(crate) type Finish<R> = fn(Vec<Outcome>) -> Result<R>;

/// The pending result of [`Pool::apply_async`](crate::Pool::apply_async) or
/// [`Pool::map_async`](crate::Pool::map_async): Python's `AsyncResult`.
///
/// Block on it ([`get`](AsyncResult::get), [`get_timeout`](AsyncResult::get_timeout),
/// [`wait`](AsyncResult::wait)), poll it ([`ready`](AsyncResult::ready)), or `.await` it in any
/// async runtime: it implements [`Future`] and never blocks the runtime's thread.
///
/// # Examples
/// ```
/// use mproc::Pool;
///
/// fn square(x: u64) -> u64 {
///     x * x
/// }
///
/// let pool = Pool::new(2)?;
/// let handles: Vec<_> = (1..=4).map(|x| pool.apply_async(square, x)).collect();
/// let squares = handles.into_iter().map(|h| h.get()).collect::<mproc::Result<Vec<_>>>()?;
/// assert_eq!(squares, [1, 4, 9, 16]);
/// # Ok::<(), mproc::Error>(())
/// ```
///
/// # Drop
/// Dropping it does not cancel the task: the pool still runs it and discards the result.
#[must_use = "the result is only available through the handle"]
pub struct AsyncResult<R> {
    slots: Vec<Arc<Slot>>,
    finish: Finish<R>,
    value: Mutex<Option<Result<R>>>,
    taken: bool,
}

impl<R> AsyncResult<R> {
    pub(crate) fn new(slots: Vec<Arc<Slot>>, finish: Finish<R>) -> AsyncResult<R> {
        AsyncResult {
            slots,
            finish,
            value: Mutex::new(None),
            taken: false,
        }
    }

    /// An already failed result (the pool refused the request).
    pub(crate) fn failed(e: Error) -> AsyncResult<R> {
        let r = AsyncResult::new(Vec::new(), |_| Err(Error::usage("unreachable")));
        *r.value.lock().unwrap_or_else(PoisonError::into_inner) = Some(Err(e));
        r
    }

    /// True once the result is available (Python's `ready()`).
    pub fn ready(&self) -> bool {
        self.taken
            || self
                .value
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .is_some()
            || self.slots.iter().all(|s| s.is_done())
    }

    /// Once ready: whether the task(s) succeeded (Python's `successful()`); `None` before.
    pub fn successful(&self) -> Option<bool> {
        if !self.ready() || self.taken {
            return None;
        }
        let mut value = self.value.lock().unwrap_or_else(PoisonError::into_inner);
        let v = value.get_or_insert_with(|| self.compute());
        Some(v.is_ok())
    }

    /// Blocks until the result is available (Python's `wait()`).
    pub fn wait(&self) {
        for s in &self.slots {
            s.wait(None);
        }
    }

    /// Blocks until the result is available or `timeout` passes; true if it is available.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        self.slots.iter().all(|s| s.wait(Some(deadline)))
    }

    /// Waits for and returns the result (Python's `get()`).
    ///
    /// # Errors
    /// The task's panic ([`ErrorKind::Panicked`](crate::ErrorKind::Panicked)), the death of
    /// its worker ([`ErrorKind::WorkerDied`](crate::ErrorKind::WorkerDied)), its timeout
    /// ([`ErrorKind::TimedOut`](crate::ErrorKind::TimedOut), with
    /// [`task_timeout`](crate::PoolBuilder::task_timeout)), or why the pool refused it.
    pub fn get(mut self) -> Result<R> {
        self.wait();
        self.take_value()
    }

    /// As [`get`](AsyncResult::get), giving up after `timeout` with
    /// [`ErrorKind::TimedOut`](crate::ErrorKind::TimedOut) and leaving the handle usable.
    /// Once it has returned the result, later calls return
    /// [`ErrorKind::Usage`](crate::ErrorKind::Usage).
    pub fn get_timeout(&mut self, timeout: Duration) -> Result<R> {
        if self.taken {
            return Err(Error::usage(
                "this result was already returned by an earlier get",
            ));
        }
        if !self.wait_timeout(timeout) {
            return Err(Error::timed_out());
        }
        self.take_value()
    }

    fn take_value(&mut self) -> Result<R> {
        self.taken = true;
        let cached = self
            .value
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        cached.unwrap_or_else(|| self.compute())
    }

    fn compute(&self) -> Result<R> {
        let outcomes = self
            .slots
            .iter()
            .map(|s| {
                s.take()
                    .unwrap_or_else(|| Err(Error::usage("this result was already taken")))
            })
            .collect();
        (self.finish)(outcomes)
    }
}

// Nothing in an `AsyncResult` is ever pinned in place (the value lives behind a `Mutex`).
impl<R> Unpin for AsyncResult<R> {}

impl<R> Future for AsyncResult<R> {
    type Output = Result<R>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<R>> {
        let this = self.get_mut();
        if this.taken {
            return Poll::Ready(Err(Error::usage("this result was already returned")));
        }
        let has_value = this
            .value
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some();
        // Register with every slot not yet done, so whichever finishes last wakes us.
        if has_value || this.slots.iter().all(|s| s.poll_done(cx.waker())) {
            Poll::Ready(this.take_value())
        } else {
            Poll::Pending
        }
    }
}

impl<R> std::fmt::Debug for AsyncResult<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncResult")
            .field("ready", &self.ready())
            .finish()
    }
}
