//! `Queue`, `JoinableQueue` and `SimpleQueue`: many producers and consumers in many processes.
//!
//! # How it works
//! A queue is one shared memory region: a header (a robust mutex, positions, counters, futex
//! words) and a ring of bytes. `put` encodes the value *before* taking the lock, then copies
//! the record `[len: u64][bytes]` in at `tail`; `get` copies the record at `head` out and
//! decodes it after releasing the lock. There is no feeder thread: when `put` returns, the
//! value is in shared memory, and it survives the exit (or SIGKILL) of the process that put
//! it. Python's `multiprocessing.Queue` buffers in a thread that loses items when its process
//! exits early.
//!
//! Blocked callers sleep on futex words (`not_empty`, `not_full`): a counter bumped under the
//! lock by every change, read under the lock before sleeping, so no wake-up is lost. Wakes
//! are issued only when someone sleeps (a waiter count), so an uncontended put/get makes no
//! system call at all.
//!
//! # Crash safety
//! State changes become visible by one final store (`tail` for a put, `head` for a get), so a
//! process killed mid-copy leaves the queue as it was before its operation. The robust mutex
//! tells the next locker that its holder died; that locker recounts the items from the
//! records, then wakes every sleeper, and the queue goes on.
//!
//! # Memory
//! The ring is sparse: its pages are allocated when first written. Whenever the queue runs
//! empty it rewinds to the start of the ring, so a busy queue keeps reusing the same warm
//! pages; pages beyond the first 8 MiB are given back to the kernel once consumed. A queue
//! thus holds memory in proportion to what is queued now (plus up to 8 MiB), not to its
//! capacity or to what ever passed through it.

use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{HEADER, Kind, Shared};
use crate::error::{Error, ErrorKind, Result};
use crate::sys::futex;
use crate::sys::robust::{self, Acquired};
use crate::sys::shm::Region;
use crate::wire::codec;

// Field offsets inside the region, after the common header.
const MUTEX: usize = HEADER;
const HEAD: usize = MUTEX + robust::MUTEX_SIZE;
const TAIL: usize = HEAD + 8;
const COUNT: usize = TAIL + 8;
const CAPACITY: usize = COUNT + 8;
const MAXSIZE: usize = CAPACITY + 8;
const UNFINISHED: usize = MAXSIZE + 8;
const DISCARDED: usize = UNFINISHED + 8;
const CLOSED: usize = DISCARDED + 8;
const NOT_EMPTY: usize = CLOSED + 4;
const NOT_FULL: usize = NOT_EMPTY + 4;
const ALL_DONE: usize = NOT_FULL + 4;
const GET_WAITERS: usize = ALL_DONE + 4;
const PUT_WAITERS: usize = GET_WAITERS + 4;
const JOIN_WAITERS: usize = PUT_WAITERS + 4;
/// Highest ring position written since the ring last rewound (see `Locked::rewind`).
const HIGH: usize = JOIN_WAITERS + 8;
/// The ring starts on its own page, so consumed pages can be discarded whole.
const RING: usize = 4096;
const _: () = assert!(HIGH + 8 <= RING && HIGH % 8 == 0);

/// Bytes before each record's payload.
const LEN: usize = 8;

/// Ring capacity of [`Queue::new`]: reserved address space, not memory (see "Memory" above).
pub(crate) const DEFAULT_CAPACITY_BYTES: usize = 1 << 30;

/// Consumed ring bytes are given back to the kernel in chunks of this size.
const DISCARD_CHUNK: u64 = 1 << 20;

/// The first bytes of the ring are never given back: an emptied queue rewinds to position 0,
/// so a busy queue writes into these warm pages instead of faulting in fresh ones.
const WARM: u64 = 8 << 20;

/// Spins on an empty (or full) queue before sleeping: a message usually arrives within a few
/// microseconds when a producer is busy, and a futex sleep + wake costs more than that.
const SPINS: u32 = 64;

/// A multi-producer, multi-consumer FIFO queue shared by processes: Python's
/// `multiprocessing.Queue`.
///
/// Clone the handle to share it between threads; pass it (or a clone) inside the argument of a
/// [`Process`](crate::Process) or pool task to share it with other processes. Every clone and
/// every process sees the same queue, which the kernel frees when the last one holding it exits.
///
/// Values cross as serde values (the crate's binary codec). A value cannot itself contain an
/// mproc handle (a queue, a lock...): pass those as task arguments instead.
///
/// # Examples
/// ```
/// use mproc::{Process, Queue};
///
/// fn produce((q, n): (Queue<u64>, u64)) {
///     for i in 0..n {
///         q.put(i * i).unwrap();
///     }
/// }
///
/// let q = Queue::new()?;
/// let mut p = Process::spawn(produce, (q.clone(), 4))?;
/// let got: Vec<u64> = (0..4).map(|_| q.get()).collect::<Result<_, _>>()?;
/// assert_eq!(got, [0, 1, 4, 9]);
/// p.join()?;
/// # Ok::<(), mproc::Error>(())
/// ```
pub struct Queue<T> {
    shared: Shared,
    _values: PhantomData<fn(T) -> T>,
}

/// A failed put: the reason and the value, handed back.
pub struct PutError<T> {
    value: T,
    error: Error,
}

impl<T> PutError<T> {
    /// The value that was not put.
    pub fn into_inner(self) -> T {
        self.value
    }
    /// Why: [`ErrorKind::Full`], [`ErrorKind::TimedOut`], [`ErrorKind::Closed`],
    /// [`ErrorKind::Codec`] (the value cannot be encoded) or [`ErrorKind::Usage`] (larger than
    /// the queue's capacity).
    pub fn kind(&self) -> ErrorKind {
        self.error.kind()
    }
    /// The error, dropping the value.
    pub fn into_error(self) -> Error {
        self.error
    }
}

impl<T> fmt::Debug for PutError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PutError")
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

impl<T> fmt::Display for PutError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot put: {}", self.error)
    }
}

impl<T> std::error::Error for PutError<T> {}

impl<T> From<PutError<T>> for Error {
    fn from(e: PutError<T>) -> Error {
        e.error
    }
}

/// The lock of a queue, held.
struct Locked<'a> {
    region: &'a Region,
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        robust::unlock(self.region, MUTEX);
    }
}

impl<'a> Locked<'a> {
    fn u64(&self, offset: usize) -> u64 {
        self.region.atomic_u64(offset).load(Ordering::Relaxed)
    }
    fn set(&self, offset: usize, v: u64) {
        self.region.atomic_u64(offset).store(v, Ordering::Relaxed);
    }
    fn capacity(&self) -> u64 {
        self.u64(CAPACITY)
    }
    fn closed(&self) -> bool {
        self.region.atomic_u32(CLOSED).load(Ordering::Relaxed) != 0
    }

    /// Copies `src` into the ring at logical position `pos`, wrapping at the end.
    fn ring_write(&self, pos: u64, src: &[u8]) {
        let cap = self.capacity();
        let at = (pos % cap) as usize;
        let first = src.len().min(cap as usize - at);
        self.region.write(RING + at, &src[..first]);
        self.region.write(RING, &src[first..]);
    }

    fn ring_read(&self, pos: u64, dst: &mut [u8]) {
        let cap = self.capacity();
        let at = (pos % cap) as usize;
        let first = dst.len().min(cap as usize - at);
        self.region.read(RING + at, &mut dst[..first]);
        self.region.read(RING, &mut dst[first..]);
    }

    fn record_len(&self, pos: u64) -> u64 {
        let mut len = [0u8; LEN];
        self.ring_read(pos, &mut len);
        u64::from_le_bytes(len)
    }

    /// After a holder died: make the counters agree with the records again, and wake everyone
    /// (a wake it owed may have died with it).
    fn recover(&self) {
        let (mut head, mut tail, cap) = (self.u64(HEAD), self.u64(TAIL), self.capacity());
        if head > tail {
            // Died rewinding (tail is reset first): the queue was empty.
            head = tail;
            self.set(HEAD, head);
        }
        // Pages written past the high mark may exist: let the next rewind discard them all.
        self.set(HIGH, cap);
        let mut count = 0;
        let mut pos = head;
        while pos < tail {
            let len = self.record_len(pos);
            let next = pos.saturating_add(LEN as u64).saturating_add(len);
            if tail - pos < LEN as u64 || next > tail || next - head > cap {
                tail = pos; // a record cut short: drop it and what follows
                break;
            }
            count += 1;
            pos = next;
        }
        self.set(TAIL, tail);
        self.set(COUNT, count);
        for word in [NOT_EMPTY, NOT_FULL] {
            self.region.atomic_u32(word).fetch_add(1, Ordering::Relaxed);
        }
        for word in [NOT_EMPTY, NOT_FULL, ALL_DONE] {
            futex::wake(self.region.atomic_u32(word), u32::MAX);
        }
    }

    /// Takes the record at the head (there is one: `count > 0`) and decodes it straight from
    /// the ring, under the lock, saving a copy. The record is consumed whatever the decoding
    /// does; a panic in a `Deserialize` impl is handed back to be resumed after unlocking.
    fn take<T: DeserializeOwned>(&self, count: u64) -> std::thread::Result<Result<T>> {
        let head = self.u64(HEAD);
        let len = self.record_len(head);
        let cap = self.capacity();
        let decoded = if LEN as u64 + len > self.u64(TAIL) - head {
            Ok(Err(Error::protocol(
                "the queue's shared memory is corrupted",
            )))
        } else {
            let at = (head + LEN as u64) % cap;
            let decode = |bytes: &[u8]| codec::decode(bytes).map_err(Error::codec);
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                if at + len <= cap {
                    decode(
                        self.region
                            .pod_slice::<u8, _>(self, RING + at as usize, len as usize),
                    )
                } else {
                    let mut bytes = vec![0; len as usize];
                    self.ring_read(head + LEN as u64, &mut bytes);
                    decode(&bytes)
                }
            }))
        };
        let size = (LEN as u64 + len).min(self.u64(TAIL) - head);
        self.set(HEAD, head + size);
        self.set(COUNT, count - 1);
        self.after_get();
        bump(self.region, NOT_FULL);
        decoded
    }

    /// After a get: rewinds an emptied ring, or gives back consumed chunks past the warm
    /// pages of a ring that stays busy.
    fn after_get(&self) {
        let (head, tail) = (self.u64(HEAD), self.u64(TAIL));
        if head == tail {
            self.rewind();
        } else {
            self.discard_consumed(head);
        }
    }

    /// Moves an empty ring back to position 0 (tail first: see `recover`), and gives back the
    /// pages a burst wrote past the warm ones.
    fn rewind(&self) {
        if self.u64(TAIL) != 0 {
            self.set(TAIL, 0);
            self.set(HEAD, 0);
        }
        self.set(DISCARDED, 0);
        let (cap, high) = (self.capacity(), self.u64(HIGH).min(self.capacity()));
        if high > WARM {
            self.region
                .discard(RING + WARM as usize, (high - WARM) as usize);
        }
        self.set(HIGH, high.min(WARM).min(cap));
    }

    /// Gives back the pages of chunks entirely consumed, except the warm ones.
    fn discard_consumed(&self, head: u64) {
        let cap = self.capacity();
        if cap <= WARM + 2 * DISCARD_CHUNK {
            return;
        }
        let done = head / DISCARD_CHUNK * DISCARD_CHUNK;
        let mut from = self.u64(DISCARDED);
        if done <= from {
            return;
        }
        // Never more than one ring's worth: older positions map to the same pages.
        from = from.max(done.saturating_sub(cap));
        while from < done {
            let at = from % cap;
            let len = (done - from).min(cap - at);
            let start = at.max(WARM);
            if start < at + len {
                self.region
                    .discard(RING + start as usize, (at + len - start) as usize);
            }
            from += len;
        }
        self.set(DISCARDED, done);
    }
}

/// A sleeper on one of the futex words: counted while it sleeps, so wakers know to wake.
fn sleep_on(region: &Region, word: usize, waiters: usize, seen: u32, deadline: Option<Instant>) {
    let w = region.atomic_u32(waiters);
    w.fetch_add(1, Ordering::SeqCst);
    futex::wait(region.atomic_u32(word), seen, deadline);
    w.fetch_sub(1, Ordering::SeqCst);
}

fn wake_if_waiting(region: &Region, word: usize, waiters: usize, n: u32) {
    if region.atomic_u32(waiters).load(Ordering::SeqCst) > 0 {
        futex::wake(region.atomic_u32(word), n);
    }
}

fn bump(region: &Region, word: usize) -> &AtomicU32 {
    let w = region.atomic_u32(word);
    w.fetch_add(1, Ordering::SeqCst);
    w
}

thread_local! {
    /// Encoding buffer reused by `put`, so a put allocates nothing once warm.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl<T: Serialize + DeserializeOwned> Queue<T> {
    /// An unbounded queue. Its ring holds up to 1 GiB of encoded
    /// values — address space reserved, memory used only as values are queued; beyond that
    /// `put` waits for room.
    ///
    /// # Errors
    /// [`ErrorKind::Io`] if the shared memory cannot be created.
    pub fn new() -> Result<Queue<T>> {
        Queue::create(0, DEFAULT_CAPACITY_BYTES)
    }

    /// A queue holding at most `maxsize` values: `put` waits (or `try_put` fails) when full,
    /// like Python's `Queue(maxsize)`. `maxsize == 0` means unbounded.
    ///
    /// # Errors
    /// As [`new`](Queue::new).
    pub fn bounded(maxsize: usize) -> Result<Queue<T>> {
        Queue::create(maxsize, DEFAULT_CAPACITY_BYTES)
    }

    /// A queue whose ring holds `bytes` of encoded values (records cost 8 bytes more than the
    /// value's encoding), and at most `maxsize` values (`0`: no count limit).
    ///
    /// # Errors
    /// [`ErrorKind::Usage`] if `bytes` is under 64; [`ErrorKind::Io`] as [`new`](Queue::new).
    pub fn with_capacity(maxsize: usize, bytes: usize) -> Result<Queue<T>> {
        if bytes < 64 {
            return Err(Error::usage("a queue needs at least 64 bytes of capacity"));
        }
        Queue::create(maxsize, bytes)
    }

    fn create(maxsize: usize, bytes: usize) -> Result<Queue<T>> {
        let len = (RING - HEADER)
            .checked_add(bytes)
            .ok_or_else(|| Error::usage("queue capacity too large"))?;
        let shared = Shared::create(Kind::Queue, len)
            .map_err(|e| Error::io("cannot create the queue's shared memory", e))?;
        let r = shared.region();
        r.atomic_u64(CAPACITY)
            .store(bytes as u64, Ordering::Relaxed);
        r.atomic_u64(MAXSIZE)
            .store(maxsize as u64, Ordering::Relaxed);
        Ok(Queue {
            shared,
            _values: PhantomData,
        })
    }

    fn region(&self) -> &Region {
        self.shared.region()
    }

    fn lock(&self, deadline: Option<Instant>) -> Option<Locked<'_>> {
        let region = self.region();
        let how = robust::lock(region, MUTEX, deadline)?;
        let locked = Locked { region };
        if how == Acquired::Abandoned {
            locked.recover();
        }
        Some(locked)
    }

    /// Puts `value` at the back, waiting for room if the queue is full.
    ///
    /// # Errors
    /// The value comes back inside the error if the queue is closed, the value cannot be
    /// encoded, or it is larger than the queue's capacity.
    pub fn put(&self, value: T) -> std::result::Result<(), PutError<T>> {
        self.put_until(value, None, false)
    }

    /// Puts `value` if there is room now, else fails with [`ErrorKind::Full`].
    ///
    /// # Errors
    /// As [`put`](Queue::put), plus `Full`.
    pub fn try_put(&self, value: T) -> std::result::Result<(), PutError<T>> {
        self.put_until(value, None, true)
    }

    /// Puts `value`, waiting at most `timeout` for room; then fails with
    /// [`ErrorKind::TimedOut`].
    ///
    /// # Errors
    /// As [`put`](Queue::put), plus `TimedOut`.
    pub fn put_timeout(&self, value: T, timeout: Duration) -> std::result::Result<(), PutError<T>> {
        self.put_until(value, Some(Instant::now() + timeout), false)
    }

    fn put_until(
        &self,
        value: T,
        deadline: Option<Instant>,
        now_or_never: bool,
    ) -> std::result::Result<(), PutError<T>> {
        SCRATCH.with(|scratch| {
            let mut buf = scratch.take();
            buf.clear();
            buf.extend_from_slice(&[0; LEN]);
            let r = match codec::encode_into(&value, &mut buf) {
                Err(e) => Err(Error::codec(e)),
                Ok(()) => {
                    let len = (buf.len() - LEN) as u64;
                    buf[..LEN].copy_from_slice(&len.to_le_bytes());
                    self.put_record(&buf, deadline, now_or_never)
                }
            };
            // Kept for the next put unless huge (a thread that once put a big value should
            // not hold that much forever).
            if buf.capacity() <= 4 << 20 {
                scratch.replace(buf);
            }
            r.map_err(|error| PutError { value, error })
        })
    }

    fn put_record(&self, rec: &[u8], deadline: Option<Instant>, now_or_never: bool) -> Result<()> {
        let region = self.region();
        let size = rec.len() as u64;
        let mut spins = if now_or_never { 0 } else { SPINS };
        loop {
            let q = self.lock(deadline).ok_or_else(Error::timed_out)?;
            if q.closed() {
                return Err(Error::closed("the queue is closed"));
            }
            let cap = q.capacity();
            if size > cap {
                return Err(Error::usage(
                    "the value is larger than the queue's capacity",
                ));
            }
            let (head, tail, count) = (q.u64(HEAD), q.u64(TAIL), q.u64(COUNT));
            let max = q.u64(MAXSIZE);
            let room = cap - (tail - head) >= size && (max == 0 || count < max);
            if room {
                q.ring_write(tail, rec);
                // The record becomes visible with this store (see "Crash safety").
                q.set(TAIL, tail + size);
                if tail + size > q.u64(HIGH) {
                    q.set(HIGH, tail + size);
                }
                q.set(COUNT, count + 1);
                q.set(UNFINISHED, q.u64(UNFINISHED) + 1);
                bump(region, NOT_EMPTY);
                drop(q);
                wake_if_waiting(region, NOT_EMPTY, GET_WAITERS, 1);
                return Ok(());
            }
            if now_or_never {
                return Err(Error::full());
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(Error::timed_out());
            }
            let seen = region.atomic_u32(NOT_FULL).load(Ordering::SeqCst);
            drop(q);
            if spins > 0 {
                spins -= 1;
                spin_while(region.atomic_u32(NOT_FULL), seen);
                continue;
            }
            sleep_on(region, NOT_FULL, PUT_WAITERS, seen, deadline);
        }
    }

    /// Takes the value at the front, waiting for one to arrive.
    ///
    /// # Errors
    /// [`ErrorKind::Closed`] once the queue is closed and empty; [`ErrorKind::Codec`] if the
    /// value cannot be decoded as a `T` (it is consumed).
    pub fn get(&self) -> Result<T> {
        self.get_until(None, false)
    }

    /// Takes the value at the front if there is one now, else fails with [`ErrorKind::Empty`].
    ///
    /// # Errors
    /// As [`get`](Queue::get), plus `Empty`.
    pub fn try_get(&self) -> Result<T> {
        self.get_until(None, true)
    }

    /// Takes the value at the front, waiting at most `timeout`; then fails with
    /// [`ErrorKind::TimedOut`].
    ///
    /// # Errors
    /// As [`get`](Queue::get), plus `TimedOut`.
    pub fn get_timeout(&self, timeout: Duration) -> Result<T> {
        self.get_until(Some(Instant::now() + timeout), false)
    }

    fn get_until(&self, deadline: Option<Instant>, now_or_never: bool) -> Result<T> {
        let region = self.region();
        let mut spins = if now_or_never { 0 } else { SPINS };
        loop {
            let q = self.lock(deadline).ok_or_else(Error::timed_out)?;
            let count = q.u64(COUNT);
            if count > 0 {
                let decoded = q.take(count);
                drop(q);
                wake_if_waiting(region, NOT_FULL, PUT_WAITERS, 1);
                if count > 1 {
                    // Pass the baton: a consumer woken for an earlier item may have died.
                    wake_if_waiting(region, NOT_EMPTY, GET_WAITERS, 1);
                }
                return match decoded {
                    Ok(r) => r,
                    Err(panic) => std::panic::resume_unwind(panic),
                };
            }
            if q.closed() {
                return Err(Error::closed("the queue is closed"));
            }
            if now_or_never {
                return Err(Error::empty());
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(Error::timed_out());
            }
            let seen = region.atomic_u32(NOT_EMPTY).load(Ordering::SeqCst);
            drop(q);
            if spins > 0 {
                spins -= 1;
                spin_while(region.atomic_u32(NOT_EMPTY), seen);
                continue;
            }
            sleep_on(region, NOT_EMPTY, GET_WAITERS, seen, deadline);
        }
    }

    /// The number of values queued now (Python's `qsize()`); others may change it at once.
    pub fn len(&self) -> usize {
        self.region().atomic_u64(COUNT).load(Ordering::SeqCst) as usize
    }

    /// True when nothing is queued now.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True when a bounded queue holds `maxsize` values now.
    pub fn is_full(&self) -> bool {
        let max = self.region().atomic_u64(MAXSIZE).load(Ordering::Relaxed);
        max != 0 && self.len() as u64 >= max
    }

    /// Closes the queue for every process: puts fail from now on (handing the value back);
    /// gets take what is left, then fail with [`ErrorKind::Closed`]. Sleepers wake at once.
    pub fn close(&self) {
        let region = self.region();
        let q = self.lock(None).expect("no deadline");
        region.atomic_u32(CLOSED).store(1, Ordering::SeqCst);
        bump(region, NOT_EMPTY);
        bump(region, NOT_FULL);
        drop(q);
        futex::wake(region.atomic_u32(NOT_EMPTY), u32::MAX);
        futex::wake(region.atomic_u32(NOT_FULL), u32::MAX);
    }

    /// True once [`close`](Queue::close) was called in any process.
    pub fn is_closed(&self) -> bool {
        self.region().atomic_u32(CLOSED).load(Ordering::SeqCst) != 0
    }
}

/// Spins briefly while `word == seen`.
fn spin_while(word: &AtomicU32, seen: u32) {
    for _ in 0..64 {
        if word.load(Ordering::Relaxed) != seen {
            return;
        }
        std::hint::spin_loop();
    }
    std::thread::yield_now();
}

impl<T> Clone for Queue<T> {
    fn clone(&self) -> Self {
        Queue {
            shared: self.shared.clone(),
            _values: PhantomData,
        }
    }
}

impl<T> fmt::Debug for Queue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = self.shared.region();
        f.debug_struct("Queue")
            .field("len", &r.atomic_u64(COUNT).load(Ordering::Relaxed))
            .field(
                "closed",
                &(r.atomic_u32(CLOSED).load(Ordering::Relaxed) != 0),
            )
            .finish()
    }
}

impl<T> Serialize for Queue<T> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.shared.serialize(s)
    }
}

impl<'de, T> Deserialize<'de> for Queue<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        Ok(Queue {
            shared: Shared::deserialize(d, Kind::Queue)?,
            _values: PhantomData,
        })
    }
}

/// A [`Queue`] that also counts unfinished values: Python's `JoinableQueue`. Every `put` adds
/// one; [`task_done`](JoinableQueue::task_done) removes one; [`join`](JoinableQueue::join)
/// waits until none are left. It derefs to [`Queue`] for `put`, `get` and the rest.
///
/// # Examples
/// ```
/// use mproc::{JoinableQueue, Process};
///
/// fn consume(q: JoinableQueue<String>) {
///     while let Ok(s) = q.get() {
///         println!("got {s}");
///         q.task_done().unwrap();
///     }
/// }
///
/// let q = JoinableQueue::new()?;
/// let mut c = Process::spawn(consume, q.clone())?;
/// q.put("a".to_string())?;
/// q.put("b".to_string())?;
/// q.join_timeout(std::time::Duration::from_secs(30))?; // both done
/// q.close();
/// c.join()?;
/// # Ok::<(), mproc::Error>(())
/// ```
pub struct JoinableQueue<T>(Queue<T>);

impl<T: Serialize + DeserializeOwned> JoinableQueue<T> {
    /// An unbounded joinable queue (see [`Queue::new`]).
    ///
    /// # Errors
    /// As [`Queue::new`].
    pub fn new() -> Result<JoinableQueue<T>> {
        Queue::new().map(JoinableQueue)
    }

    /// A joinable queue of at most `maxsize` values (see [`Queue::bounded`]).
    ///
    /// # Errors
    /// As [`Queue::new`].
    pub fn bounded(maxsize: usize) -> Result<JoinableQueue<T>> {
        Queue::bounded(maxsize).map(JoinableQueue)
    }

    /// Marks one value taken with `get` as processed.
    ///
    /// # Errors
    /// [`ErrorKind::Usage`] when called more times than values were put (Python raises
    /// `ValueError`).
    pub fn task_done(&self) -> Result<()> {
        let region = self.0.region();
        let q = self.0.lock(None).expect("no deadline");
        let left = q.u64(UNFINISHED);
        if left == 0 {
            return Err(Error::usage(
                "task_done() called more times than values were put",
            ));
        }
        q.set(UNFINISHED, left - 1);
        if left == 1 {
            bump(region, ALL_DONE);
            drop(q);
            wake_if_waiting(region, ALL_DONE, JOIN_WAITERS, u32::MAX);
        }
        Ok(())
    }

    /// Waits until every value put has been marked done.
    pub fn join(&self) {
        let _ = self.join_until(None);
    }

    /// As [`join`](JoinableQueue::join), waiting at most `timeout`.
    ///
    /// # Errors
    /// [`ErrorKind::TimedOut`] if values are still unfinished at the deadline.
    pub fn join_timeout(&self, timeout: Duration) -> Result<()> {
        self.join_until(Some(Instant::now() + timeout))
    }

    fn join_until(&self, deadline: Option<Instant>) -> Result<()> {
        let region = self.0.region();
        loop {
            let q = self.0.lock(deadline).ok_or_else(Error::timed_out)?;
            if q.u64(UNFINISHED) == 0 {
                return Ok(());
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(Error::timed_out());
            }
            let seen = region.atomic_u32(ALL_DONE).load(Ordering::SeqCst);
            drop(q);
            sleep_on(region, ALL_DONE, JOIN_WAITERS, seen, deadline);
        }
    }
}

impl<T> std::ops::Deref for JoinableQueue<T> {
    type Target = Queue<T>;
    fn deref(&self) -> &Queue<T> {
        &self.0
    }
}

impl<T> Clone for JoinableQueue<T> {
    fn clone(&self) -> Self {
        JoinableQueue(self.0.clone())
    }
}

impl<T> fmt::Debug for JoinableQueue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("JoinableQueue").field(&self.0).finish()
    }
}

impl<T> Serialize for JoinableQueue<T> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de, T> Deserialize<'de> for JoinableQueue<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        Queue::deserialize(d).map(JoinableQueue)
    }
}

/// The plain queue of Python's `SimpleQueue`: `put`, `get`, `is_empty`, `close`, unbounded.
/// Here it is a [`Queue`] with fewer methods; use `Queue` for timeouts and bounds.
///
/// # Examples
/// ```
/// let q = mproc::SimpleQueue::new()?;
/// q.put(1u8)?;
/// assert_eq!(q.get()?, 1);
/// # Ok::<(), mproc::Error>(())
/// ```
pub struct SimpleQueue<T>(Queue<T>);

impl<T: Serialize + DeserializeOwned> SimpleQueue<T> {
    /// An unbounded queue.
    ///
    /// # Errors
    /// As [`Queue::new`].
    pub fn new() -> Result<SimpleQueue<T>> {
        Queue::new().map(SimpleQueue)
    }
    /// Puts `value` at the back.
    ///
    /// # Errors
    /// As [`Queue::put`].
    pub fn put(&self, value: T) -> std::result::Result<(), PutError<T>> {
        self.0.put(value)
    }
    /// Takes the value at the front, waiting for one.
    ///
    /// # Errors
    /// As [`Queue::get`].
    pub fn get(&self) -> Result<T> {
        self.0.get()
    }
    /// True when nothing is queued now.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// Closes the queue (see [`Queue::close`]).
    pub fn close(&self) {
        self.0.close()
    }
}

impl<T> Clone for SimpleQueue<T> {
    fn clone(&self) -> Self {
        SimpleQueue(self.0.clone())
    }
}

impl<T> fmt::Debug for SimpleQueue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SimpleQueue").field(&self.0).finish()
    }
}

impl<T> Serialize for SimpleQueue<T> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de, T> Deserialize<'de> for SimpleQueue<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        Queue::deserialize(d).map(SimpleQueue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: Duration = Duration::from_secs(30);

    #[test]
    fn fifo_in_one_process() {
        let q = Queue::new().unwrap();
        for i in 0..1000u32 {
            q.put(i).unwrap();
        }
        assert_eq!(q.len(), 1000);
        let got: Vec<u32> = (0..1000).map(|_| q.get_timeout(LIMIT).unwrap()).collect();
        assert_eq!(got, (0..1000).collect::<Vec<_>>());
        assert_eq!(q.try_get().unwrap_err().kind(), ErrorKind::Empty);
    }

    #[test]
    fn records_wrap_around_a_small_ring() {
        let q = Queue::with_capacity(0, 100).unwrap();
        for round in 0..50u64 {
            let v = vec![round; 3];
            q.put(v.clone()).unwrap();
            q.put(v.clone()).unwrap();
            assert_eq!(q.get().unwrap(), v);
            assert_eq!(q.get().unwrap(), v);
        }
        let big = vec![1u64; 200];
        let e = q.put(big.clone()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Usage);
        assert_eq!(e.into_inner(), big, "the value comes back");
    }

    #[test]
    fn bounded_queue_is_full_and_times_out() {
        let q = Queue::bounded(2).unwrap();
        q.put(1u8).unwrap();
        q.put(2u8).unwrap();
        assert!(q.is_full());
        let e = q.try_put(3).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Full);
        assert_eq!(e.into_inner(), 3);
        let e = q.put_timeout(4, Duration::from_millis(20)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::TimedOut);
        assert_eq!(q.get().unwrap(), 1);
        q.put_timeout(5, LIMIT).unwrap();
        let e = Queue::<u8>::new()
            .unwrap()
            .get_timeout(Duration::from_millis(20));
        assert_eq!(e.unwrap_err().kind(), ErrorKind::TimedOut);
    }

    #[test]
    fn close_drains_then_fails() {
        let q = Queue::new().unwrap();
        q.put("a".to_string()).unwrap();
        q.close();
        assert_eq!(
            q.put("b".to_string()).unwrap_err().kind(),
            ErrorKind::Closed
        );
        assert_eq!(q.get().unwrap(), "a");
        assert_eq!(q.get().unwrap_err().kind(), ErrorKind::Closed);
    }

    #[test]
    fn threads_share_a_queue_exactly_once() {
        let q = Queue::<u64>::bounded(16).unwrap();
        let total: u64 = std::thread::scope(|s| {
            for p in 0..3u64 {
                let q = q.clone();
                s.spawn(move || {
                    for i in 0..5000 {
                        q.put_timeout(p * 10_000 + i, LIMIT).unwrap();
                    }
                });
            }
            let consumers: Vec<_> = (0..2)
                .map(|_| {
                    let q = q.clone();
                    s.spawn(move || {
                        let mut sum = 0;
                        while let Ok(v) = q.get_timeout(Duration::from_millis(500)) {
                            sum += v;
                        }
                        sum
                    })
                })
                .collect();
            consumers.into_iter().map(|c| c.join().unwrap()).sum()
        });
        let want: u64 = (0..3u64)
            .flat_map(|p| (0..5000).map(move |i| p * 10_000 + i))
            .sum();
        assert_eq!(total, want);
    }

    #[test]
    fn joinable_queue_counts_unfinished_values() {
        let q = JoinableQueue::new().unwrap();
        q.put(1u8).unwrap();
        q.put(2u8).unwrap();
        assert!(
            q.join_timeout(Duration::from_millis(10))
                .unwrap_err()
                .is_timeout()
        );
        q.get().unwrap();
        q.task_done().unwrap();
        q.get().unwrap();
        q.task_done().unwrap();
        q.join_timeout(LIMIT).unwrap();
        assert_eq!(q.task_done().unwrap_err().kind(), ErrorKind::Usage);
    }

    #[test]
    fn consumed_pages_are_given_back_and_warm_ones_reused() {
        let q = Queue::<serde_bytes::ByteBuf>::with_capacity(0, 64 << 20).unwrap();
        let mib = || serde_bytes::ByteBuf::from(vec![7; 1 << 20]);
        for _ in 0..40 {
            q.put(mib()).unwrap();
        }
        assert!(
            q.region().allocated() >= 40 << 20,
            "a backlog of 40 MiB is in memory"
        );
        for _ in 0..40 {
            assert_eq!(q.get().unwrap().len(), 1 << 20);
        }
        let left = q.region().allocated();
        assert!(left <= WARM + (1 << 20), "only the warm pages stay: {left}");
        // A busy queue that keeps emptying stays within the warm pages.
        for _ in 0..100 {
            q.put(mib()).unwrap();
            q.get().unwrap();
        }
        assert!(q.region().allocated() <= WARM + (1 << 20));
    }
}
