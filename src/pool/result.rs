//! Where a task's outcome lands ([`Slot`]) and the handle users hold ([`AsyncResult`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// What the supervisor delivers for one job: its items' outcomes, in order, in parts (one
/// part when a worker answered the whole chunk; several when a worker died in the middle and
/// the rest ran elsewhere).
pub(crate) type Outcome = Vec<Part>;

/// The outcomes of consecutive items of a job.
#[derive(Debug)]
pub(crate) struct Part {
    /// Items this part covers; for a failure, [`Part::REST`] means every item left.
    pub(crate) count: usize,
    /// A worker's answer for them (each item's result or panic is inside), or the one error
    /// they all share.
    pub(crate) what: Result<Answer>,
    /// The pid of the worker that settled them, if one did.
    pub(crate) worker: Option<u32>,
}

impl Part {
    /// The count of a failure that covers every item left.
    pub(crate) const REST: usize = usize::MAX;

    /// Every item left fails with `e`.
    pub(crate) fn rest(e: Error) -> Part {
        Part {
            count: Part::REST,
            what: Err(e),
            worker: None,
        }
    }

    /// One item fails with `e`.
    pub(crate) fn one(e: Error) -> Part {
        Part {
            count: 1,
            what: Err(e),
            worker: None,
        }
    }
}

/// A worker's answer to a task.
#[derive(Debug)]
pub(crate) enum Answer {
    /// The body of its `Done` frame: the message tag, then the payload.
    Frame(Vec<u8>),
    /// A payload too large for the socket, mapped from the anonymous file the worker wrote it
    /// to (see `msg::done_spilled`): read in place, never copied into a buffer first.
    Mapped(crate::sys::shm::Payload),
    /// The payload alone, as another MPI rank sent it.
    #[cfg(feature = "mpi")]
    Payload(Vec<u8>),
}

impl Answer {
    /// The payload: what follows the `Done` tag.
    pub(crate) fn payload(&self) -> &[u8] {
        match self {
            Answer::Frame(frame) => frame.get(1..).unwrap_or_default(),
            Answer::Mapped(region) => region.bytes(),
            #[cfg(feature = "mpi")]
            Answer::Payload(payload) => payload,
        }
    }
}

/// How long a waiter looks before it sleeps: a fast task's outcome then costs no wake-up.
const SPIN: Duration = Duration::from_micros(50);

/// One-shot cells for the outcomes of a request's jobs (one for `apply`, one per chunk for
/// `map`). The supervisor fills them in any order; waiters wake once, when the last arrives,
/// so a `map` of thousands of chunks costs its caller one wake-up, not thousands.
pub(crate) struct Slot {
    state: Mutex<SlotState>,
    ready: Condvar,
}

struct SlotState {
    outcomes: Vec<Option<Outcome>>,
    remaining: usize,
    taken: bool,
    waker: Option<Waker>,
}

impl Default for Slot {
    fn default() -> Slot {
        Slot::new(1)
    }
}

impl Slot {
    /// Cells for `n` outcomes.
    pub(crate) fn new(n: usize) -> Slot {
        Slot {
            state: Mutex::new(SlotState {
                outcomes: (0..n).map(|_| None).collect(),
                remaining: n,
                taken: false,
                waker: None,
            }),
            ready: Condvar::new(),
        }
    }

    /// Delivers outcome `i`; the last one wakes every waiter. Repeated deliveries are ignored.
    pub(crate) fn complete(&self, i: usize, outcome: Outcome) {
        let waker = {
            let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            if s.taken {
                return;
            }
            match s.outcomes.get_mut(i) {
                Some(cell @ None) => *cell = Some(outcome),
                _ => return,
            }
            s.remaining -= 1;
            if s.remaining > 0 {
                return;
            }
            s.waker.take()
        };
        self.ready.notify_all();
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// True once every outcome was delivered.
    pub(crate) fn is_done(&self) -> bool {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remaining
            == 0
    }

    /// Blocks until all are delivered or `deadline` passes; true if all were delivered.
    pub(crate) fn wait(&self, deadline: Option<Instant>) -> bool {
        // A short look first, yielding the CPU between looks; never past the deadline.
        let spin_until = deadline.map_or(Instant::now() + SPIN, |d| d.min(Instant::now() + SPIN));
        loop {
            if self
                .state
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remaining
                == 0
            {
                return true;
            }
            if Instant::now() >= spin_until {
                break;
            }
            std::thread::yield_now();
        }
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        while s.remaining > 0 {
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

    /// Takes every outcome (once; later calls get none).
    pub(crate) fn take(&self) -> Vec<Outcome> {
        // Lines the tasks printed through `Stdio::Prefixed` come out before their results.
        crate::output::sync();
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        s.taken = true;
        std::mem::take(&mut s.outcomes)
            .into_iter()
            .map(|o| o.unwrap_or_else(|| vec![Part::rest(Error::protocol("a result was lost"))]))
            .collect()
    }

    /// True if all delivered; otherwise remembers `waker` to wake on the last delivery.
    fn poll_done(&self, waker: &Waker) -> bool {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if s.remaining > 0 {
            s.waker = Some(waker.clone());
        }
        s.remaining == 0
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
    slot: Option<Arc<Slot>>,
    finish: Finish<R>,
    value: Mutex<Option<Result<R>>>,
    taken: bool,
}

impl<R> AsyncResult<R> {
    pub(crate) fn new(slot: Option<Arc<Slot>>, finish: Finish<R>) -> AsyncResult<R> {
        AsyncResult {
            slot,
            finish,
            value: Mutex::new(None),
            taken: false,
        }
    }

    /// An already failed result (the pool refused the request).
    pub(crate) fn failed(e: Error) -> AsyncResult<R> {
        let r = AsyncResult::new(None, |_| Err(Error::usage("unreachable")));
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
            || self.slot.as_ref().is_none_or(|s| s.is_done())
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
        if let Some(s) = &self.slot {
            s.wait(None);
        }
    }

    /// Blocks until the result is available or `timeout` passes; true if it is available.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        self.slot.as_ref().is_none_or(|s| s.wait(Some(deadline)))
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
        let outcomes = self.slot.as_ref().map(|s| s.take()).unwrap_or_default();
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
        if has_value || this.slot.as_ref().is_none_or(|s| s.poll_done(cx.waker())) {
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
