//! Where a task's outcome lands ([`Slot`]) and the handle users hold ([`AsyncResult`]).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use super::registry::Registry;
use crate::error::{Error, Result};
use crate::task::spin;

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

pub(crate) use crate::task::reply::Answer;

/// How long a waiter looks before it sleeps: a fast task's outcome then costs no wake-up.
const SPIN: Duration = Duration::from_micros(50);

/// One-shot cells for the outcomes of a request's jobs (one for `apply`, one per chunk for
/// `map`). The supervisor fills them in any order; waiters wake once, when the last arrives,
/// so a `map` of thousands of chunks costs its caller one wake-up, not thousands.
///
/// A slot can be cancelled before its last outcome arrives: it is then done at once, its
/// waiters wake, and later deliveries are dropped. The supervisor reads [`Slot::is_cancelled`]
/// to withdraw the request's jobs (see `supervisor::cancel`).
pub(crate) struct Slot {
    state: Mutex<SlotState>,
    ready: Condvar,
    /// Set once, under the state lock, by `cancel`: read without it by the supervisor.
    cancelled: AtomicBool,
}

struct SlotState {
    outcomes: Vec<Option<Outcome>>,
    remaining: usize,
    /// Outcomes before this one were taken one by one ([`Slot::take_next`]); later
    /// deliveries to them are dropped.
    streamed: usize,
    /// The outcome a streaming waiter sleeps for: its delivery wakes it (others do not).
    wanted: Option<usize>,
    taken: bool,
    cancelled: bool,
    waker: Option<Waker>,
    /// Waiters on several slots at once (`as_completed`, `wait`), told when this one is done,
    /// with the tag each gave.
    watchers: Vec<(Arc<Notify>, usize)>,
}

impl SlotState {
    fn is_done(&self) -> bool {
        self.remaining == 0 || self.cancelled
    }

    /// Everyone to tell that the slot is done: called once, as it becomes done.
    fn wake_all(&mut self) -> Wake {
        (self.waker.take(), std::mem::take(&mut self.watchers))
    }
}

/// Who to wake as a slot becomes done: the task waiting on it, and the multi-waiters.
type Wake = (Option<Waker>, Vec<(Arc<Notify>, usize)>);

fn tell(ready: &Condvar, (waker, watchers): Wake) {
    ready.notify_all();
    if let Some(w) = waker {
        w.wake();
    }
    for (n, tag) in watchers {
        n.notify(tag);
    }
}

/// How [`Slot::cancel`] went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Cancel {
    /// Every outcome had arrived: too late.
    Finished,
    /// It was cancelled before.
    Already,
    /// Cancelled now.
    Now,
}

/// A wake-up shared by many slots: a waiter on several handles sleeps on one of these, and
/// learns which became done, in the order they did, from the tags they were watched with.
#[derive(Default)]
pub(crate) struct Notify {
    done: Mutex<VecDeque<usize>>,
    changed: Condvar,
}

impl Notify {
    fn notify(&self, tag: usize) {
        self.done
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push_back(tag);
        self.changed.notify_all();
    }

    /// The tag of the next slot to have become done, waiting until `deadline` (for ever:
    /// `None`) for one; `None` if none did by then.
    pub(crate) fn next(&self, deadline: Option<Instant>) -> Option<usize> {
        let mut done = self.done.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(tag) = done.pop_front() {
                return Some(tag);
            }
            match deadline {
                None => {
                    done = self
                        .changed
                        .wait(done)
                        .unwrap_or_else(PoisonError::into_inner)
                }
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return None;
                    }
                    done = self
                        .changed
                        .wait_timeout(done, left)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
            }
        }
    }
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
                streamed: 0,
                wanted: None,
                taken: false,
                cancelled: false,
                waker: None,
                watchers: Vec::new(),
            }),
            ready: Condvar::new(),
            cancelled: AtomicBool::new(false),
        }
    }

    /// Delivers outcome `i`; the last one wakes every waiter. Repeated deliveries, and those
    /// to a cancelled slot, are dropped.
    pub(crate) fn complete(&self, i: usize, outcome: Outcome) {
        self.complete_span(i, 1, outcome);
    }

    /// Delivers the outcome of a job that stood for the `cells` jobs from `i` (merged on the
    /// way: `Batch::absorb`): cell `i` gets all its items, the others none, so that reading
    /// the cells in order reads every item in order.
    pub(crate) fn complete_span(&self, i: usize, cells: usize, outcome: Outcome) {
        let wake = {
            let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            let end = i.saturating_add(cells.max(1));
            if s.taken || s.cancelled || i < s.streamed || end > s.outcomes.len() {
                return;
            }
            if s.outcomes[i..end].iter().any(Option::is_some) {
                return;
            }
            s.outcomes[i] = Some(outcome);
            for cell in &mut s.outcomes[i + 1..end] {
                *cell = Some(Vec::new());
            }
            s.remaining -= end - i;
            if s.remaining > 0 {
                if s.wanted.is_some_and(|w| (i..end).contains(&w)) {
                    s.wanted = None;
                    drop(s);
                    self.ready.notify_all();
                }
                return;
            }
            s.wake_all()
        };
        tell(&self.ready, wake);
    }

    /// Outcomes the slot holds.
    pub(crate) fn len(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .outcomes
            .len()
    }

    /// Blocks until outcome `i` — the next not yet taken: outcomes are taken one by one, in
    /// order, by a single caller — is delivered, then takes it; `None` once the slot is
    /// cancelled. Lets a caller decode each outcome while later ones are still running.
    pub(crate) fn take_next(&self, i: usize) -> Option<Outcome> {
        let look = look_window();
        let spin_until = Instant::now() + look;
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        debug_assert_eq!(s.streamed, i, "outcomes are taken in order");
        loop {
            if s.cancelled || s.taken {
                return None;
            }
            if let Some(o) = s.outcomes.get_mut(i).and_then(Option::take) {
                s.streamed = i + 1;
                return Some(o);
            }
            if i >= s.outcomes.len() {
                return None;
            }
            if Instant::now() < spin_until {
                // A short look first (as `wait`), yielding the CPU between looks.
                drop(s);
                std::thread::yield_now();
                s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
                continue;
            }
            s.wanted = Some(i);
            s = self.ready.wait(s).unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Cancels the request unless every outcome has arrived; wakes every waiter if it does.
    /// Outcomes delivered so far are dropped.
    pub(crate) fn cancel(&self) -> Cancel {
        let wake = {
            let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            if s.cancelled {
                return Cancel::Already;
            }
            if s.remaining == 0 || s.taken {
                return Cancel::Finished;
            }
            s.cancelled = true;
            self.cancelled.store(true, Ordering::Release);
            s.outcomes.clear();
            s.wake_all()
        };
        tell(&self.ready, wake);
        Cancel::Now
    }

    /// True once the request was cancelled: its jobs are not to run any more.
    pub(crate) fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
    }

    /// True once every outcome was delivered, or the request was cancelled.
    pub(crate) fn is_done(&self) -> bool {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_done()
    }

    /// Asks for `n` to be told `tag` when the slot is done; false (and nothing registered)
    /// if it is done already.
    pub(crate) fn watch(&self, n: &Arc<Notify>, tag: usize) -> bool {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if s.is_done() {
            return false;
        }
        s.watchers.push((Arc::clone(n), tag));
        true
    }

    /// Forgets every registration of `n` (by [`watch`](Slot::watch)).
    pub(crate) fn unwatch(&self, n: &Arc<Notify>) {
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        s.watchers.retain(|(w, _)| !Arc::ptr_eq(w, n));
    }

    /// Blocks until all are delivered or `deadline` passes; true if all were delivered.
    pub(crate) fn wait(&self, deadline: Option<Instant>) -> bool {
        // A short look first, yielding the CPU between looks; never past the deadline.
        let look = look_window();
        let spin_until = deadline.map_or(Instant::now() + look, |d| d.min(Instant::now() + look));
        loop {
            if self
                .state
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .is_done()
            {
                return true;
            }
            if Instant::now() >= spin_until {
                break;
            }
            std::thread::yield_now();
        }
        let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        while !s.is_done() {
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
        if !s.is_done() {
            s.waker = Some(waker.clone());
        }
        s.is_done()
    }
}

/// How long a waiter looks before it sleeps: [`SPIN`], or not at all where spinning does not
/// pay or is turned off (`task::spin`).
fn look_window() -> Duration {
    if spin::worth_spinning() {
        SPIN
    } else {
        Duration::ZERO
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
/// In async code, `.await` it (here in tokio):
///
/// ```
/// fn square(x: u64) -> u64 {
///     x * x
/// }
///
/// let pool = mproc::Pool::new(2)?;
/// let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
/// let sum = runtime.block_on(async {
///     let (a, b) = (pool.apply_async(square, 3), pool.apply_async(square, 4));
///     Ok::<_, mproc::Error>(a.await? + b.await?)
/// })?;
/// assert_eq!(sum, 25);
/// # Ok::<(), mproc::Error>(())
/// ```
///
/// # Drop
/// Dropping it does not cancel the task: the pool still runs it and discards the result.
/// To stop it, [`cancel`](AsyncResult::cancel) it.
#[must_use = "the result is only available through the handle"]
pub struct AsyncResult<R> {
    slot: Option<Arc<Slot>>,
    finish: Finish<R>,
    value: Mutex<Option<Result<R>>>,
    /// Whether the result was handed out, and if so whether it was a success.
    taken: bool,
    taken_ok: bool,
    /// The pool whose supervisor withdraws the jobs of a cancelled handle; `None` for a
    /// handle that cannot be cancelled (an MPI pool's).
    pool: Option<Weak<Registry>>,
}

impl<R> AsyncResult<R> {
    pub(crate) fn new(slot: Option<Arc<Slot>>, finish: Finish<R>) -> AsyncResult<R> {
        AsyncResult {
            slot,
            finish,
            value: Mutex::new(None),
            taken: false,
            taken_ok: false,
            pool: None,
        }
    }

    /// The handle of jobs queued on the local pool `shared`: [`cancel`](AsyncResult::cancel)
    /// works on it.
    pub(crate) fn cancellable(mut self, shared: &Arc<Registry>) -> AsyncResult<R> {
        self.pool = Some(Arc::downgrade(shared));
        self
    }

    /// Asks for `n` to be told `tag` when the result is available; false (and nothing
    /// registered) if it is already.
    pub(crate) fn watch(&self, n: &Arc<Notify>, tag: usize) -> bool {
        match &self.slot {
            Some(s) if !self.taken => s.watch(n, tag),
            _ => false,
        }
    }

    /// Forgets `n` (see [`watch`](AsyncResult::watch)).
    pub(crate) fn unwatch(&self, n: &Arc<Notify>) {
        if let Some(s) = &self.slot {
            s.unwatch(n);
        }
    }

    /// Cancels the task (every item of a `map_async` not finished yet), like Python's
    /// `Future.cancel()`, but a running task is stopped too: a queued task never runs, and
    /// the worker running it (with its process group: the task's subprocesses) is killed and
    /// replaced. [`get`](AsyncResult::get) then fails with
    /// [`ErrorKind::Cancelled`](crate::ErrorKind::Cancelled), at once, and
    /// [`ready`](AsyncResult::ready) and [`cancelled`](AsyncResult::cancelled) are true.
    ///
    /// Returns false if the result had already arrived (it stays available; nothing is
    /// stopped), true if the task is now cancelled — or was already. Other tasks are not
    /// affected, even those waiting in the killed worker: they run elsewhere. A `map_async`
    /// cancelled half-way loses the results of its finished items too.
    ///
    /// Cancelling does not wait for the worker to die; the pool kills it at once and starts
    /// a replacement. A task sent ahead to a worker (tasks shorter than about 200 µs are
    /// queued in the worker, behind the running one) counts as running: it may begin before
    /// its worker is killed. A handle from an MPI pool cannot be cancelled (false).
    ///
    /// # Examples
    /// ```
    /// use std::time::Duration;
    /// use mproc::{ErrorKind, Pool};
    ///
    /// fn nap(secs: u64) -> u64 {
    ///     std::thread::sleep(Duration::from_secs(secs));
    ///     secs
    /// }
    ///
    /// let pool = Pool::new(1)?;
    /// let slow = pool.apply_async(nap, 60);
    /// assert!(slow.cancel()); // its worker is killed, not left to sleep a minute
    /// assert!(slow.cancelled());
    /// assert_eq!(slow.get().unwrap_err().kind(), ErrorKind::Cancelled);
    ///
    /// let quick = pool.apply_async(nap, 0);
    /// quick.wait();
    /// assert!(!quick.cancel(), "too late: it finished");
    /// assert_eq!(quick.get()?, 0);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn cancel(&self) -> bool {
        let (Some(slot), Some(pool)) = (&self.slot, &self.pool) else {
            return false;
        };
        if self.taken {
            return false;
        }
        match slot.cancel() {
            Cancel::Finished => false,
            Cancel::Already => true,
            Cancel::Now => {
                // The supervisor withdraws the jobs (a pool gone has failed them already).
                if let Some(shared) = pool.upgrade() {
                    shared.cancelled();
                }
                true
            }
        }
    }

    /// True if [`cancel`](AsyncResult::cancel) stopped the task (Python's
    /// `Future.cancelled()`).
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
    /// let slow = pool.apply_async(nap, 60_000);
    /// assert!(!slow.cancelled());
    /// slow.cancel();
    /// assert!(slow.cancelled() && slow.ready());
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn cancelled(&self) -> bool {
        self.slot.as_ref().is_some_and(|s| s.is_cancelled())
    }

    /// An already failed result (the pool refused the request).
    pub(crate) fn failed(e: Error) -> AsyncResult<R> {
        let r = AsyncResult::new(None, |_| Err(Error::usage("unreachable")));
        *r.value.lock().unwrap_or_else(PoisonError::into_inner) = Some(Err(e));
        r
    }

    /// True once the result is available, or the task was cancelled (Python's `ready()`).
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
    /// let slow = pool.apply_async(nap, 60_000);
    /// let quick = pool.apply_async(nap, 0);
    /// assert!(quick.wait_timeout(Duration::from_secs(60)));
    /// assert!(quick.ready());
    /// assert!(!slow.ready()); // still sleeping
    /// slow.cancel();
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn ready(&self) -> bool {
        self.taken
            || self
                .value
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .is_some()
            || self.slot.as_ref().is_none_or(|s| s.is_done())
    }

    /// Once ready: whether the task(s) succeeded (Python's `successful()`); `None` before. A
    /// cancelled task did not succeed; a result already handed out still answers.
    ///
    /// ```
    /// fn check(x: i64) -> i64 {
    ///     assert!(x >= 0, "negative");
    ///     x
    /// }
    ///
    /// let pool = mproc::Pool::new(2)?;
    /// let (good, bad) = (pool.apply_async(check, 1), pool.apply_async(check, -1));
    /// good.wait();
    /// bad.wait();
    /// assert_eq!(good.successful(), Some(true));
    /// assert_eq!(bad.successful(), Some(false));
    /// assert_eq!(bad.get().unwrap_err().remote_panic().unwrap().message(), "negative");
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn successful(&self) -> Option<bool> {
        if self.taken {
            return Some(self.taken_ok);
        }
        if !self.ready() {
            return None;
        }
        let mut value = self.value.lock().unwrap_or_else(PoisonError::into_inner);
        let v = value.get_or_insert_with(|| self.compute());
        Some(v.is_ok())
    }

    /// Blocks until the result is available (Python's `wait()`).
    ///
    /// ```
    /// fn square(x: u64) -> u64 {
    ///     x * x
    /// }
    ///
    /// let pool = mproc::Pool::new(2)?;
    /// let r = pool.apply_async(square, 4);
    /// r.wait();
    /// assert!(r.ready());
    /// assert_eq!(r.get()?, 16); // does not block: the result is in
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn wait(&self) {
        if let Some(s) = &self.slot {
            s.wait(None);
        }
    }

    /// Blocks until the result is available or `timeout` passes; true if it is available.
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
    /// let slow = pool.apply_async(nap, 60_000);
    /// assert!(!slow.wait_timeout(Duration::from_millis(10)), "still sleeping");
    /// slow.cancel();
    /// assert!(slow.wait_timeout(Duration::ZERO), "a cancelled handle is ready");
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        self.slot.as_ref().is_none_or(|s| s.wait(Some(deadline)))
    }

    /// Waits for and returns the result (Python's `get()`).
    ///
    /// ```
    /// use mproc::ErrorKind;
    ///
    /// fn parse(s: String) -> u32 {
    ///     s.parse().expect("a number")
    /// }
    ///
    /// let pool = mproc::Pool::new(2)?;
    /// assert_eq!(pool.apply_async(parse, "42".to_string()).get()?, 42);
    /// let e = pool.apply_async(parse, "forty-two".to_string()).get().unwrap_err();
    /// assert_eq!(e.kind(), ErrorKind::Panicked);
    /// assert!(e.remote_panic().unwrap().message().starts_with("a number: "));
    /// # Ok::<(), mproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// The task's panic ([`ErrorKind::Panicked`](crate::ErrorKind::Panicked)), the death of
    /// its worker ([`ErrorKind::WorkerDied`](crate::ErrorKind::WorkerDied)), its timeout
    /// ([`ErrorKind::TimedOut`](crate::ErrorKind::TimedOut), with
    /// [`task_timeout`](crate::PoolBuilder::task_timeout)), its cancellation
    /// ([`ErrorKind::Cancelled`](crate::ErrorKind::Cancelled)), or why the pool refused it.
    pub fn get(mut self) -> Result<R> {
        self.wait();
        self.take_value()
    }

    /// As [`get`](AsyncResult::get), giving up after `timeout` with
    /// [`ErrorKind::TimedOut`](crate::ErrorKind::TimedOut) and leaving the handle usable.
    /// Once it has returned the result, later calls return
    /// [`ErrorKind::Usage`](crate::ErrorKind::Usage).
    ///
    /// ```
    /// use std::time::Duration;
    /// use mproc::ErrorKind;
    ///
    /// fn nap(ms: u64) -> u64 {
    ///     std::thread::sleep(Duration::from_millis(ms));
    ///     ms
    /// }
    ///
    /// let pool = mproc::Pool::new(2)?;
    /// let mut slow = pool.apply_async(nap, 60_000);
    /// assert!(slow.get_timeout(Duration::from_millis(10)).unwrap_err().is_timeout());
    /// slow.cancel(); // the handle was still usable
    ///
    /// let mut quick = pool.apply_async(nap, 0);
    /// assert_eq!(quick.get_timeout(Duration::from_secs(60))?, 0);
    /// let again = quick.get_timeout(Duration::from_secs(60)).unwrap_err();
    /// assert_eq!(again.kind(), ErrorKind::Usage); // the result was handed out already
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn get_timeout(&mut self, timeout: Duration) -> Result<R> {
        if self.taken {
            return Err(already_returned());
        }
        if !self.wait_timeout(timeout) {
            return Err(Error::timed_out());
        }
        self.take_value()
    }

    /// Hands the result out, once: later calls (`get` after `get_timeout`, say) say so.
    fn take_value(&mut self) -> Result<R> {
        if self.taken {
            return Err(already_returned());
        }
        let cached = self
            .value
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let value = cached.unwrap_or_else(|| self.compute());
        self.taken = true;
        self.taken_ok = value.is_ok();
        value
    }

    fn compute(&self) -> Result<R> {
        if self.cancelled() {
            return Err(Error::cancelled());
        }
        let outcomes = self.slot.as_ref().map(|s| s.take()).unwrap_or_default();
        (self.finish)(outcomes)
    }
}

/// A `map` of at most this many jobs decodes each job's outcome as it arrives
/// ([`AsyncResult::get_streaming`]); one of more (small chunks) waits for them all, so that
/// its caller wakes once, not once per chunk.
const STREAM_JOBS: usize = 256;

impl<R> AsyncResult<Vec<R>> {
    /// As [`get`](AsyncResult::get) for a `map`'s handle of `items` items: decodes each job's
    /// outcome (`decode` appends its items' values) as soon as it and those before it have
    /// arrived, while later jobs still run, instead of all of them at the end. The result is
    /// the same: every value in order, or the first failure in input order (returned once
    /// every job has settled, as `get` does).
    pub(crate) fn get_streaming(
        self,
        items: usize,
        decode: fn(&mut Vec<R>, Outcome) -> Result<()>,
    ) -> Result<Vec<R>> {
        let slot = match &self.slot {
            Some(slot) if slot.len() <= STREAM_JOBS && !self.taken => Arc::clone(slot),
            _ => return self.get(),
        };
        let mut out = Vec::with_capacity(items);
        let mut failure = None;
        for i in 0..slot.len() {
            let Some(outcome) = slot.take_next(i) else {
                failure = Some(if slot.is_cancelled() {
                    Error::cancelled()
                } else {
                    Error::protocol("a result was lost")
                });
                break;
            };
            if let Err(e) = decode(&mut out, outcome) {
                failure = Some(e);
                break;
            }
        }
        slot.wait(None);
        // Lines the tasks printed through `Stdio::Prefixed` come out before their results.
        crate::output::sync();
        match failure {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }
}

fn already_returned() -> Error {
    Error::usage("this result was already returned by an earlier get")
}

// Nothing in an `AsyncResult` is ever pinned in place (the value lives behind a `Mutex`).
impl<R> Unpin for AsyncResult<R> {}

impl<R> Future for AsyncResult<R> {
    type Output = Result<R>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<R>> {
        let this = self.get_mut();
        if this.taken {
            return Poll::Ready(Err(already_returned()));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn done() -> Outcome {
        vec![Part::rest(Error::timed_out())]
    }

    fn one(e: Error) -> Outcome {
        vec![Part::one(e)]
    }

    #[test]
    fn a_slot_hands_outcomes_out_in_order_as_they_arrive() {
        let slot = Arc::new(Slot::new(3));
        // Delivered out of order, from another thread, while the taker waits in order.
        let deliver = {
            let slot = Arc::clone(&slot);
            std::thread::spawn(move || {
                slot.complete(2, one(Error::closed("third")));
                slot.complete(0, one(Error::closed("first")));
                slot.complete(0, one(Error::closed("again"))); // repeated: dropped
                slot.complete(1, one(Error::closed("second")));
            })
        };
        let mut seen = Vec::new();
        for i in 0..3 {
            let o = slot.take_next(i).expect("delivered");
            seen.push(o[0].what.as_ref().unwrap_err().to_string());
        }
        deliver.join().unwrap();
        assert!(seen[0].contains("first") && seen[1].contains("second"));
        assert!(seen[2].contains("third"));
        assert!(
            slot.wait(Some(Instant::now())),
            "every outcome was delivered"
        );
        // Taken outcomes are not delivered again.
        slot.complete(1, one(Error::closed("late")));
        let left = slot.take();
        assert!(
            left.iter()
                .all(|o| !o[0].what.as_ref().unwrap_err().to_string().contains("late")),
            "{left:?}"
        );
    }

    #[test]
    fn a_cancelled_slot_ends_a_streaming_taker() {
        let slot = Arc::new(Slot::new(2));
        slot.complete(0, done());
        assert!(slot.take_next(0).is_some());
        let cancel = {
            let slot = Arc::clone(&slot);
            std::thread::spawn(move || slot.cancel())
        };
        assert!(slot.take_next(1).is_none(), "cancelled before it arrived");
        assert!(matches!(cancel.join().unwrap(), Cancel::Now));
    }

    #[test]
    fn a_slot_cancels_once_and_only_before_its_last_outcome() {
        let slot = Slot::new(2);
        slot.complete(0, done());
        assert!(!slot.is_done());
        assert_eq!(slot.cancel(), Cancel::Now);
        assert!(slot.is_done() && slot.is_cancelled());
        assert!(slot.wait(Some(Instant::now())), "a waiter returns at once");
        assert_eq!(slot.cancel(), Cancel::Already);
        slot.complete(1, done());
        assert!(
            slot.take().is_empty(),
            "deliveries after the cancel are dropped"
        );
        let finished = Slot::new(1);
        finished.complete(0, done());
        assert_eq!(finished.cancel(), Cancel::Finished);
        assert!(!finished.is_cancelled());
    }

    #[test]
    fn watchers_learn_completions_in_order_and_only_once() {
        let n = Arc::new(Notify::default());
        let slots: Vec<Slot> = (0..3).map(|_| Slot::new(1)).collect();
        for (i, s) in slots.iter().enumerate() {
            assert!(s.watch(&n, i));
        }
        slots[2].complete(0, done());
        slots[0].cancel();
        slots[1].unwatch(&n);
        slots[1].complete(0, done());
        let soon = Some(Instant::now() + Duration::from_millis(10));
        assert_eq!(n.next(soon), Some(2));
        assert_eq!(n.next(soon), Some(0));
        assert_eq!(n.next(soon), None, "unwatched: not told");
        assert!(!slots[1].watch(&n, 1), "done already: nothing to wait for");
    }
}
