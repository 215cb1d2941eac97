//! `Queue`, `JoinableQueue` and `SimpleQueue`: many producers and consumers in many processes.
//!
//! # How it works
//! A queue is one shared memory file: a header page (a robust mutex, positions, counters,
//! futex words) and a ring of bytes after it. `put` encodes the value *before* taking the
//! lock, then copies the record `[len: u64][bytes]` in at `tail`; `get` decodes the record at
//! `head` straight from the ring, under the lock (saving a copy), and consumes it whatever
//! the decoding does. There is no feeder thread: when `put`
//! returns, the value is in shared memory, and it survives the exit (or SIGKILL) of the process
//! that put it. Python's `multiprocessing.Queue` buffers in a thread that loses items when its
//! process exits early.
//!
//! Blocked callers sleep on futex words (`not_empty`, `not_full`): a counter bumped under the
//! lock by every change, read under the lock before sleeping, so no wake-up is lost. Wakes
//! are issued only when someone sleeps (a waiter count), so an uncontended put/get makes no
//! system call at all.
//!
//! # Crash safety
//! Every change becomes visible by one final store: `head` for a get; for a put (which also
//! counts an unfinished value) and for a growth of the ring (which moves `head`, `tail` and
//! the capacity together), the store that commits a *journal* in the header: the new values
//! are written there first, then the journal is marked, then they are applied and the mark
//! cleared. A process killed mid-copy thus leaves the queue as it was before its operation,
//! and one killed after the commit leaves it as after. The robust mutex tells the next locker
//! that its holder died; that locker rolls a committed journal forward, recounts the items
//! from the records, then wakes every sleeper, and the queue goes on.
//!
//! # Memory and address space
//! The ring is mapped apart from the header and starts small (64 KiB, or the queue's capacity
//! if less). A put that finds no room doubles it — the file grows, this process remaps its ring
//! (`mremap`), the others remap theirs when they next take the lock — up to the queue's
//! capacity (1 GiB unless [`Queue::with_capacity`] says otherwise); at the capacity `put`
//! waits for room instead. So a queue reserves address space for the most it ever held at
//! once (rounded up to a power of two), not for its capacity: under `ulimit -v` many queues
//! fit, and a ring that cannot grow is an error that names the limit.
//!
//! The ring is sparse: its pages are allocated when first written. Whenever the queue runs
//! empty it rewinds to the start of the ring, so a busy queue keeps reusing the same warm
//! pages; pages beyond the first 8 MiB are given back to the kernel once consumed. A queue
//! thus holds memory in proportion to what is queued now (plus up to 8 MiB), not to its
//! capacity or to what ever passed through it.

use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{HEADER, Kind, Shared};
use crate::error::{Error, ErrorKind, Result};
use crate::sys::futex;
use crate::sys::robust::{self, Acquired};
use crate::sys::shm::{Region, Window};
use crate::wire::codec;

// Field offsets inside the header, after the common object header.
const MUTEX: usize = HEADER;
const HEAD: usize = MUTEX + robust::MUTEX_SIZE;
const TAIL: usize = HEAD + 8;
const COUNT: usize = TAIL + 8;
/// Bytes the ring holds now (it grows up to `LIMIT`).
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
/// The queue's capacity: the most the ring may grow to.
const LIMIT: usize = HIGH + 8;
/// The journal (see "Crash safety"): its state, then the values an operation will apply.
const JOURNAL: usize = LIMIT + 8;
const J_HEAD: usize = JOURNAL + 8;
const J_TAIL: usize = J_HEAD + 8;
const J_CAP: usize = J_TAIL + 8;
const J_UNFINISHED: usize = J_CAP + 8;
/// The ring starts on its own page: it is mapped apart from the header.
const RING: usize = 4096;
const _: () = assert!(J_UNFINISHED + 8 <= RING && HIGH % 8 == 0);

/// Journal states: nothing pending; a put or a growth committed (`J_*` hold its values); the
/// records must be recounted (a holder died, and its journal, if any, was rolled forward).
const NO_JOURNAL: u64 = 0;
const PUT: u64 = 1;
const GROW: u64 = 2;
const RECOUNT: u64 = 3;

/// Bytes before each record's payload.
const LEN: usize = 8;

/// Capacity of [`Queue::new`] and [`Queue::bounded`]: the most its ring grows to.
pub(crate) const DEFAULT_CAPACITY_BYTES: usize = 1 << 30;

/// The ring a queue starts with (or its capacity, if smaller); it doubles as values need room.
const INITIAL_RING: usize = 64 << 10;

/// The smallest and largest capacities; the header's values are checked against them too.
const MIN_CAPACITY: usize = 64;
const MAX_CAPACITY: usize = 1 << 40;

/// Positions past this are corruption (a queue would need to move exabytes to get there): it
/// keeps every sum of a position and a length far from overflowing.
const MAX_POS: u64 = 1 << 62;

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
    /// This process's mapping of the ring (shared by the clones of this handle), `None` until
    /// first mapped; touched only under the queue's lock.
    ring: Arc<Mutex<Option<Window>>>,
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
    /// [`ErrorKind::Codec`] (the value cannot be encoded), [`ErrorKind::Usage`] (larger than
    /// the queue's capacity), [`ErrorKind::Io`] (the ring cannot grow: out of address space)
    /// or [`ErrorKind::Protocol`] (the queue's shared memory is corrupted).
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

fn corrupted() -> Error {
    Error::protocol("the queue's shared memory is corrupted")
}

/// The lock of a queue, held, with this process's mapping of its ring.
struct Locked<'a> {
    region: &'a Region,
    ring: MutexGuard<'a, Option<Window>>,
    /// The ring's capacity, read once when the ring was mapped and checked against the
    /// mapping: ring offsets are taken modulo this, so they stay inside the mapping whatever
    /// the header says meanwhile. 0 for a lock taken without the ring (`lock_header`).
    cap: u64,
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
    /// Marks the journal: `Release`, so that what was written before (the record, the
    /// journal's values) is there for whoever sees the mark.
    fn mark(&self, state: u64) {
        self.region
            .atomic_u64(JOURNAL)
            .store(state, Ordering::Release);
    }
    fn limit(&self) -> u64 {
        self.u64(LIMIT).min(MAX_CAPACITY as u64)
    }
    fn closed(&self) -> bool {
        self.region.atomic_u32(CLOSED).load(Ordering::Relaxed) != 0
    }
    fn window(&self) -> &Window {
        self.ring
            .as_ref()
            .expect("the ring is mapped while a ring lock is held")
    }

    /// Head and tail, checked: the tail at most a ring ahead of the head, both far from
    /// overflowing. On corruption the next locker recounts (see `recover`).
    fn positions(&self) -> Result<(u64, u64)> {
        let (head, tail) = (self.u64(HEAD), self.u64(TAIL));
        if head <= tail && tail - head <= self.cap && tail <= MAX_POS {
            return Ok((head, tail));
        }
        self.mark(RECOUNT);
        Err(corrupted())
    }

    /// Maps the ring at the capacity the header gives, if this process's mapping is smaller
    /// (another process grew it), after checking that capacity.
    fn map_ring(&mut self) -> Result<()> {
        let cap = self.u64(CAPACITY);
        let mapped = self.ring.as_ref().map_or(0, |w| w.len() as u64);
        if cap < MIN_CAPACITY as u64 || cap > mapped {
            if !(MIN_CAPACITY as u64..=self.limit()).contains(&cap) {
                return Err(corrupted());
            }
            let len = cap as usize;
            match self.ring.as_mut() {
                Some(w) => w.grow(self.region, len),
                None => self
                    .region
                    .map_window(RING, len)
                    .map(|w| *self.ring = Some(w)),
            }
            .map_err(ring_error("cannot map the queue's ring"))?;
        }
        self.cap = cap;
        Ok(())
    }

    /// Copies `src` into the ring at logical position `pos`, wrapping at the end.
    fn ring_write(&self, pos: u64, src: &[u8]) {
        let (cap, w) = (self.cap, self.window());
        let at = (pos % cap) as usize;
        let first = src.len().min(cap as usize - at);
        w.write(at, &src[..first]);
        w.write(0, &src[first..]);
    }

    fn ring_read(&self, pos: u64, dst: &mut [u8]) {
        let (cap, w) = (self.cap, self.window());
        let at = (pos % cap) as usize;
        let first = dst.len().min(cap as usize - at);
        w.read(at, &mut dst[..first]);
        w.read(0, &mut dst[first..]);
    }

    fn record_len(&self, pos: u64) -> u64 {
        let mut len = [0u8; LEN];
        self.ring_read(pos, &mut len);
        u64::from_le_bytes(len)
    }

    /// Applies a committed put's journal: the record becomes visible and counts as unfinished.
    /// Idempotent, so that a locker after a death can apply it again.
    fn apply_put(&self) {
        let tail = self.u64(J_TAIL);
        self.set(TAIL, tail);
        self.set(UNFINISHED, self.u64(J_UNFINISHED));
        if tail > self.u64(HIGH) {
            self.set(HIGH, tail);
        }
    }

    /// Applies a committed growth's journal: the new capacity with the positions that go with
    /// it. Idempotent. A capacity the file does not hold is not applied (corruption: the ring
    /// then refuses to map, see `map_ring`).
    fn apply_grow(&self) {
        let cap = self.u64(J_CAP);
        let fits = usize::try_from(cap)
            .ok()
            .and_then(|c| c.checked_add(RING))
            .is_some_and(|end| self.region.file_len().is_ok_and(|len| len >= end));
        if !fits || cap > self.limit() {
            return;
        }
        let tail = self.u64(J_TAIL);
        self.set(CAPACITY, cap);
        self.set(HEAD, self.u64(J_HEAD));
        self.set(TAIL, tail);
        self.set(DISCARDED, 0);
        self.set(HIGH, self.u64(HIGH).max(tail));
    }

    /// After a holder died (or left a journal): applies what it committed and asks for a
    /// recount, which needs the ring (`recover`, once mapped). Header only.
    fn roll_forward(&self) {
        match self.u64(JOURNAL) {
            PUT => self.apply_put(),
            GROW => self.apply_grow(),
            _ => {}
        }
        self.mark(RECOUNT);
    }

    /// After a holder died: make the counters agree with the records again, and wake everyone
    /// (a wake it owed may have died with it).
    fn recover(&self) {
        let cap = self.cap;
        let (mut head, mut tail) = (self.u64(HEAD), self.u64(TAIL));
        if head > MAX_POS || tail > MAX_POS {
            (head, tail) = (0, 0); // nonsense: nothing can be read back
        }
        if head > tail {
            // Died rewinding (tail is reset first): the queue was empty.
            head = tail;
        }
        self.set(HEAD, head);
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
        // Values still queued are unfinished, whatever the count says.
        if self.u64(UNFINISHED) < count {
            self.set(UNFINISHED, count);
        }
        for word in [NOT_EMPTY, NOT_FULL] {
            self.region.atomic_u32(word).fetch_add(1, Ordering::Relaxed);
        }
        for word in [NOT_EMPTY, NOT_FULL, ALL_DONE] {
            futex::wake(self.region.atomic_u32(word), u32::MAX);
        }
        self.mark(NO_JOURNAL);
    }

    /// Writes the record at `tail` and publishes it, counted as unfinished (see "Crash
    /// safety": the journal's mark is the commit).
    fn publish(&self, tail: u64, rec: &[u8], count: u64) {
        self.stage_put(tail, rec);
        self.apply_put();
        self.set(COUNT, count.saturating_add(1));
        self.mark(NO_JOURNAL);
    }

    /// A put up to its commit: the record written, the journal's values, the mark.
    fn stage_put(&self, tail: u64, rec: &[u8]) {
        self.ring_write(tail, rec);
        self.set(J_TAIL, tail + rec.len() as u64);
        self.set(J_UNFINISHED, self.u64(UNFINISHED).saturating_add(1));
        self.mark(PUT);
    }

    /// Grows the ring so that a record of `size` bytes fits after the `tail - head` bytes
    /// queued: to twice its capacity or more, up to the queue's capacity. `Ok(false)` when it
    /// cannot grow now (at the capacity, or its wrapped contents would not fit a ring capped
    /// below twice the size): the put waits for room.
    fn grow(&mut self, head: u64, tail: u64, size: u64) -> Result<bool> {
        let Some(new_cap) = self.stage_grow(head, tail, size)? else {
            return Ok(false);
        };
        self.apply_grow();
        self.mark(NO_JOURNAL);
        self.cap = new_cap;
        Ok(true)
    }

    /// A growth up to its commit: the file and this process's mapping grown, the wrapped part
    /// copied, the journal's values, the mark. The new capacity, or `None` (see `grow`).
    fn stage_grow(&mut self, head: u64, tail: u64, size: u64) -> Result<Option<u64>> {
        let (cap, limit, used) = (self.cap, self.limit(), tail - head);
        let need = used + size;
        if need > limit {
            return Ok(None);
        }
        let new_cap = (cap * 2).max(need.next_power_of_two()).min(limit);
        // The queued bytes keep their place in the ring; a part wrapped to its start moves to
        // just past the old end (fresh space, so a death mid-copy harms nothing), and the
        // positions are rebased to where the bytes are: [at, at + used) in the new ring.
        let at = if used == 0 { 0 } else { head % cap };
        if at + used > new_cap {
            return Ok(None);
        }
        let file = usize::try_from(new_cap)
            .ok()
            .and_then(|c| c.checked_add(RING))
            .ok_or_else(corrupted)?;
        let grow_error = ring_error("cannot grow the queue's ring");
        self.region.grow_file(file).map_err(&grow_error)?;
        let region = self.region;
        let window = self.ring.as_mut().expect("mapped by lock()");
        window.grow(region, new_cap as usize).map_err(grow_error)?;
        let wrapped = (at + used).saturating_sub(cap) as usize;
        if wrapped > 0 {
            window.copy_within(0, cap as usize, wrapped);
        }
        self.set(J_HEAD, at);
        self.set(J_TAIL, at + used);
        self.set(J_CAP, new_cap);
        self.mark(GROW);
        Ok(Some(new_cap))
    }

    /// Takes the record at the head (there is one: `count > 0`) and decodes it straight from
    /// the ring, under the lock, saving a copy. The record is consumed whatever the decoding
    /// does; a panic in a `Deserialize` impl is handed back to be resumed after unlocking.
    fn take<T: DeserializeOwned>(&self, count: u64) -> std::thread::Result<Result<T>> {
        let (head, tail) = match self.positions() {
            Ok(p) => p,
            Err(e) => return Ok(Err(e)),
        };
        let len = self.record_len(head);
        let cap = self.cap;
        // `len` comes from shared memory: any value must end in an error, not an overflow.
        let size = (LEN as u64)
            .checked_add(len)
            .filter(|&size| size <= tail - head);
        let decoded = match size {
            None => Ok(Err(corrupted())),
            Some(_) => {
                let at = (head + LEN as u64) % cap;
                let decode = |bytes: &[u8]| codec::decode(bytes).map_err(Error::codec);
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    if at + len <= cap {
                        decode(self.window().bytes(self, at as usize, len as usize))
                    } else {
                        let mut bytes = vec![0; len as usize];
                        self.ring_read(head + LEN as u64, &mut bytes);
                        decode(&bytes)
                    }
                }))
            }
        };
        // A record longer than what is queued: drop everything, the count with it.
        match size {
            Some(size) => {
                self.set(HEAD, head + size);
                self.set(COUNT, count - 1);
            }
            None => {
                self.set(HEAD, tail);
                self.set(COUNT, 0);
            }
        }
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
            self.discard_consumed(head, tail);
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
        let (cap, high) = (self.cap, self.u64(HIGH).min(self.cap));
        if high > WARM {
            self.window()
                .discard(self.region, WARM as usize, (high - WARM) as usize);
        }
        self.set(HIGH, high.min(WARM).min(cap));
    }

    /// Gives back the pages of chunks entirely consumed, except the warm ones.
    fn discard_consumed(&self, head: u64, tail: u64) {
        let cap = self.cap;
        if cap <= WARM + 2 * DISCARD_CHUNK {
            return;
        }
        let done = head / DISCARD_CHUNK * DISCARD_CHUNK;
        let mut from = self.u64(DISCARDED);
        if done <= from {
            return;
        }
        // Consumed position `p` shares its offset with `p + cap`: below `tail - cap` that is
        // a queued record's (a full ring, or one a growth rebased), so those stay.
        from = from.max(tail.saturating_sub(cap));
        while from < done {
            let at = from % cap;
            let len = (done - from).min(cap - at);
            let start = at.max(WARM);
            if start < at + len {
                self.window()
                    .discard(self.region, start as usize, (at + len - start) as usize);
            }
            from += len;
        }
        self.set(DISCARDED, done);
    }
}

/// A failure to map or grow the ring; an address-space limit is named by the `io::Error`
/// (see `sys::shm`), a file shorter than the header says is corruption.
fn ring_error(context: &'static str) -> impl Fn(std::io::Error) -> Error {
    move |e| {
        if e.kind() == std::io::ErrorKind::InvalidData {
            return corrupted();
        }
        Error::io(context, e)
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
    /// An unbounded queue. Its ring holds up to 1 GiB of encoded values; beyond that `put`
    /// waits for room. The ring starts at 64 KiB of address space and grows as values need
    /// room (see "Memory and address space" in the module docs), using memory only for what is
    /// queued.
    ///
    /// # Errors
    /// [`ErrorKind::Io`] if the shared memory cannot be created or mapped: under an
    /// address-space limit (`ulimit -v`), the error names it.
    pub fn new() -> Result<Queue<T>> {
        Queue::create(0, DEFAULT_CAPACITY_BYTES)
    }

    /// A queue holding at most `maxsize` values: `put` waits (or `try_put` fails) when full,
    /// like Python's `Queue(maxsize)`. `maxsize == 0` means unbounded. Its ring grows as
    /// [`new`](Queue::new)'s does, up to 1 GiB.
    ///
    /// # Errors
    /// As [`new`](Queue::new).
    pub fn bounded(maxsize: usize) -> Result<Queue<T>> {
        Queue::create(maxsize, DEFAULT_CAPACITY_BYTES)
    }

    /// A queue whose ring holds at most `bytes` of encoded values (records cost 8 bytes more
    /// than the value's encoding), and at most `maxsize` values (`0`: no count limit). The
    /// ring starts at 64 KiB (or `bytes`, if less) and grows to `bytes` as values need room;
    /// address space is reserved only as it grows.
    ///
    /// # Errors
    /// [`ErrorKind::Usage`] if `bytes` is under 64 or over 1 TiB; [`ErrorKind::Io`] as
    /// [`new`](Queue::new).
    pub fn with_capacity(maxsize: usize, bytes: usize) -> Result<Queue<T>> {
        if bytes < MIN_CAPACITY {
            return Err(Error::usage("a queue needs at least 64 bytes of capacity"));
        }
        if bytes > MAX_CAPACITY {
            return Err(Error::usage("a queue holds at most 1 TiB"));
        }
        Queue::create(maxsize, bytes)
    }

    fn create(maxsize: usize, bytes: usize) -> Result<Queue<T>> {
        let shared = Shared::create(Kind::Queue, RING - HEADER)
            .map_err(|e| Error::io("cannot create the queue's shared memory", e))?;
        let r = shared.region();
        let ring = bytes.min(INITIAL_RING);
        r.grow_file(RING + ring)
            .map_err(|e| Error::io("cannot create the queue's shared memory", e))?;
        r.atomic_u64(CAPACITY).store(ring as u64, Ordering::Relaxed);
        r.atomic_u64(LIMIT).store(bytes as u64, Ordering::Relaxed);
        r.atomic_u64(MAXSIZE)
            .store(maxsize as u64, Ordering::Relaxed);
        let window = r
            .map_window(RING, ring)
            .map_err(ring_error("cannot create the queue's ring"))?;
        Ok(Queue {
            shared,
            ring: Arc::new(Mutex::new(Some(window))),
            _values: PhantomData,
        })
    }

    fn region(&self) -> &Region {
        self.shared.region()
    }

    /// Takes the lock and maps the ring as the header now says (recovering first if a holder
    /// died).
    fn lock(&self, deadline: Option<Instant>) -> Result<Locked<'_>> {
        let mut q = self.lock_header(deadline).ok_or_else(Error::timed_out)?;
        q.map_ring()?;
        if q.u64(JOURNAL) == RECOUNT {
            q.recover();
        }
        Ok(q)
    }

    /// Takes the lock for header fields only (counters, flags): no ring, so it works even
    /// when the ring cannot be mapped here. A holder's death is handled as far as the header
    /// goes; the recount waits for the next [`lock`](Queue::lock). `None` at the deadline.
    fn lock_header(&self, deadline: Option<Instant>) -> Option<Locked<'_>> {
        let region = self.region();
        let how = robust::lock(region, MUTEX, deadline)?;
        let ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
        let q = Locked {
            region,
            ring,
            cap: 0,
        };
        if how == Acquired::Abandoned || q.u64(JOURNAL) != NO_JOURNAL {
            q.roll_forward();
        }
        Some(q)
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
            let mut q = self.lock(deadline)?;
            if q.closed() {
                return Err(Error::closed("the queue is closed"));
            }
            if size > q.limit() {
                return Err(Error::usage(
                    "the value is larger than the queue's capacity",
                ));
            }
            let (mut head, mut tail) = q.positions()?;
            let (count, max) = (q.u64(COUNT), q.u64(MAXSIZE));
            let counted_room = max == 0 || count < max;
            let mut room = q.cap - (tail - head) >= size;
            if !room && counted_room && q.grow(head, tail, size)? {
                (head, tail) = q.positions()?;
                room = q.cap - (tail - head) >= size;
            }
            if room && counted_room {
                q.publish(tail, rec, count);
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
            let q = self.lock(deadline)?;
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
        let q = self.lock_header(None).expect("no deadline");
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
            ring: Arc::clone(&self.ring),
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
        // The header page only: the ring is mapped apart, at the size the header gives.
        Ok(Queue {
            shared: Shared::deserialize_prefix(d, Kind::Queue, RING)?,
            ring: Arc::new(Mutex::new(None)),
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
        let q = self.0.lock_header(None).expect("no deadline");
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
            let q = self.0.lock_header(deadline).ok_or_else(Error::timed_out)?;
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

    #[test]
    fn consumed_chunks_are_not_given_back_under_records_that_wrapped_onto_them() {
        // A ring at its 32 MiB capacity, filled to the brim, drained past its warm 8 MiB and
        // topped up again: the newest records wrap onto the offsets of the first consumed
        // ones. Giving back those consumed chunks must not punch the live records now there.
        type Bytes = serde_bytes::ByteBuf;
        let q = Queue::<Bytes>::with_capacity(0, 32 << 20).unwrap();
        let value = |i: u8| Bytes::from(vec![i; (1 << 20) - 4096]);
        let mut put = 0u8;
        while q.try_put(value(put)).is_ok() {
            put += 1;
        }
        assert!(put >= 30, "a 32 MiB ring holds {put} values of ~1 MiB");
        let mut got = 0u8;
        for _ in 0..2 {
            for _ in 0..12 {
                assert_eq!(q.try_get().unwrap(), value(got));
                got += 1;
            }
            while q.try_put(value(put)).is_ok() {
                put += 1;
            }
        }
        while got < put {
            let v = q.try_get().unwrap();
            assert!(v.iter().all(|&b| b == got), "value {got} came back torn");
            assert_eq!(v.len(), value(got).len());
            got += 1;
        }
        assert!(q.is_empty());
    }

    fn ring_len<T>(q: &Queue<T>) -> usize {
        q.ring.lock().unwrap().as_ref().map_or(0, Window::len)
    }

    fn header<T>(q: &Queue<T>, field: usize) -> u64 {
        q.shared.region().atomic_u64(field).load(Ordering::SeqCst)
    }

    fn poke<T>(q: &Queue<T>, field: usize, v: u64) {
        q.shared
            .region()
            .atomic_u64(field)
            .store(v, Ordering::SeqCst);
    }

    /// `value` as `put` writes it in the ring.
    fn record<T: Serialize>(value: &T) -> Vec<u8> {
        let mut buf = vec![0; LEN];
        codec::encode_into(value, &mut buf).unwrap();
        let len = (buf.len() - LEN) as u64;
        buf[..LEN].copy_from_slice(&len.to_le_bytes());
        buf
    }

    /// Runs `step` under the queue's lock, then leaves the lock as the kernel leaves that of a
    /// holder that died: the next locker is told it was abandoned. This is a process killed
    /// right after `step`, at a point no real kill could be timed to hit.
    fn die_after<T: Serialize + DeserializeOwned>(
        q: &Queue<T>,
        step: impl FnOnce(&mut Locked<'_>),
    ) {
        let mut l = q.lock(Some(Instant::now() + LIMIT)).unwrap();
        step(&mut l);
        drop(l);
        robust::simulate_owner_death(q.region(), MUTEX);
    }

    fn bytes(n: usize, tag: u8) -> serde_bytes::ByteBuf {
        serde_bytes::ByteBuf::from(vec![tag; n])
    }

    #[test]
    fn the_ring_starts_at_64_kib_and_doubles_as_values_need_room() {
        let q = Queue::<serde_bytes::ByteBuf>::new().unwrap();
        assert_eq!(ring_len(&q), 64 << 10);
        assert_eq!(header(&q, CAPACITY), 64 << 10);
        for i in 0..5 {
            q.put(bytes(100_000, i)).unwrap();
        }
        // 100 KiB, then 200, 300 KB queued: 128 KiB, 256 KiB, 512 KiB.
        assert_eq!(ring_len(&q), 512 << 10);
        assert_eq!(header(&q, CAPACITY), 512 << 10);
        for i in 0..5 {
            assert_eq!(q.get_timeout(LIMIT).unwrap(), bytes(100_000, i));
        }
        assert_eq!(
            ring_len(&q),
            512 << 10,
            "address space is kept, pages are not"
        );
    }

    #[test]
    fn the_ring_grows_to_the_capacity_and_no_further() {
        let q = Queue::<serde_bytes::ByteBuf>::with_capacity(0, 100_000).unwrap();
        assert_eq!(ring_len(&q), 64 << 10);
        q.put(bytes(90_000, 1)).unwrap();
        assert_eq!(
            ring_len(&q),
            100_000,
            "capped at the capacity, not a power of two"
        );
        let e = q.try_put(bytes(20_000, 2)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Full);
        let e = q.put(bytes(100_000, 3)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Usage, "larger than the capacity: {e}");
        assert_eq!(q.get().unwrap(), bytes(90_000, 1));
        let q = Queue::<u8>::with_capacity(0, 100).unwrap();
        assert_eq!(ring_len(&q), 100, "a small capacity is mapped whole");
        assert_eq!(
            Queue::<u8>::with_capacity(0, (1 << 40) + 1)
                .unwrap_err()
                .kind(),
            ErrorKind::Usage
        );
    }

    #[test]
    fn a_wrapped_ring_grows_with_its_values_in_order() {
        let q = Queue::<serde_bytes::ByteBuf>::with_capacity(0, 1 << 20).unwrap();
        for i in 0..3 {
            q.put(bytes(20_000, i)).unwrap();
        }
        for i in 0..2 {
            assert_eq!(q.get().unwrap(), bytes(20_000, i));
        }
        q.put(bytes(20_000, 3)).unwrap(); // wraps past the end of the 64 KiB ring
        assert_eq!(ring_len(&q), 64 << 10);
        assert!(header(&q, TAIL) > 64 << 10, "the ring has wrapped");
        q.put(bytes(30_000, 4)).unwrap(); // no room: grows while wrapped
        assert_eq!(ring_len(&q), 128 << 10);
        assert_eq!(q.get().unwrap(), bytes(20_000, 2));
        assert_eq!(q.get().unwrap(), bytes(20_000, 3));
        assert_eq!(q.get().unwrap(), bytes(30_000, 4));
        assert!(q.is_empty());
    }

    #[test]
    fn a_wrapped_ring_that_cannot_grow_in_place_waits_for_room() {
        // Capacity 70 000: the wrapped contents would not fit a ring of 70 000 where they are.
        let q = Queue::<serde_bytes::ByteBuf>::with_capacity(0, 70_000).unwrap();
        for i in 0..3 {
            q.put(bytes(20_000, i)).unwrap();
        }
        for i in 0..2 {
            q.get().unwrap();
            q.put(bytes(20_000, 3 + i)).unwrap();
        }
        assert_eq!(ring_len(&q), 64 << 10);
        let e = q.try_put(bytes(20_000, 9)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Full);
        for i in 2..5 {
            assert_eq!(q.get().unwrap(), bytes(20_000, i));
        }
        // Emptied: now it can grow.
        q.put(bytes(69_000, 5)).unwrap();
        assert_eq!(ring_len(&q), 70_000);
        assert_eq!(q.get().unwrap(), bytes(69_000, 5));
    }

    #[test]
    fn another_mapping_follows_a_grown_ring() {
        let a = Queue::<serde_bytes::ByteBuf>::new().unwrap();
        let (msg, fds) = crate::wire::fds::collecting(|| codec::encode(&a));
        let msg = msg.unwrap();
        let b: Queue<serde_bytes::ByteBuf> =
            crate::wire::fds::supplying(fds, || codec::decode(&msg)).unwrap();
        assert!(
            !a.shared.same(&b.shared),
            "a mapping of its own, as in another process"
        );
        b.put(bytes(10, 0)).unwrap();
        assert_eq!(ring_len(&b), 64 << 10);
        assert_eq!(
            b.region().len(),
            RING,
            "only the header is mapped with the region"
        );
        for i in 1..4 {
            a.put(bytes(300_000, i)).unwrap();
        }
        assert_eq!(ring_len(&a), 1 << 20);
        assert_eq!(b.get().unwrap(), bytes(10, 0));
        assert_eq!(ring_len(&b), 1 << 20, "remapped when it took the lock");
        for i in 1..4 {
            assert_eq!(b.get().unwrap(), bytes(300_000, i));
        }
    }

    #[test]
    fn a_put_killed_after_its_commit_counts_as_unfinished() {
        let q = JoinableQueue::<u32>::new().unwrap();
        q.put(1).unwrap();
        assert_eq!(q.get().unwrap(), 1); // taken, not yet done: 1 unfinished
        let rec = record(&2u32);
        die_after(&q, |l| {
            let (_, tail) = l.positions().unwrap();
            l.stage_put(tail, &rec);
        });
        // The next locker rolls the put forward: the value is there, and unfinished.
        assert_eq!(q.get_timeout(LIMIT).unwrap(), 2);
        q.task_done().unwrap();
        assert!(
            q.join_timeout(Duration::from_millis(10))
                .unwrap_err()
                .is_timeout(),
            "one value is still unfinished"
        );
        q.task_done().unwrap();
        q.join_timeout(LIMIT).unwrap();
        assert_eq!(q.task_done().unwrap_err().kind(), ErrorKind::Usage);
    }

    #[test]
    fn a_put_killed_before_its_commit_leaves_no_trace() {
        let q = JoinableQueue::<u32>::new().unwrap();
        q.put(1).unwrap();
        let rec = record(&2u32);
        die_after(&q, |l| {
            let (_, tail) = l.positions().unwrap();
            l.ring_write(tail, &rec);
            l.set(J_TAIL, tail + rec.len() as u64);
            l.set(J_UNFINISHED, 2); // all of it but the mark
        });
        assert_eq!(q.get_timeout(LIMIT).unwrap(), 1);
        assert_eq!(q.try_get().unwrap_err().kind(), ErrorKind::Empty);
        q.task_done().unwrap();
        q.join_timeout(LIMIT).unwrap();
        q.put(3).unwrap();
        assert_eq!(q.get().unwrap(), 3);
    }

    #[test]
    fn recovery_counts_every_queued_value_as_unfinished() {
        let q = JoinableQueue::<u32>::new().unwrap();
        q.put(1).unwrap();
        q.put(2).unwrap();
        die_after(&q, |l| l.set(UNFINISHED, 0)); // a count that lost its values
        assert_eq!(q.len(), 2);
        assert_eq!(q.get_timeout(LIMIT).unwrap(), 1);
        q.task_done().unwrap();
        assert!(
            q.join_timeout(Duration::from_millis(10))
                .unwrap_err()
                .is_timeout()
        );
    }

    #[test]
    fn a_growth_killed_after_its_commit_is_rolled_forward() {
        let q = Queue::<serde_bytes::ByteBuf>::with_capacity(0, 1 << 20).unwrap();
        for i in 0..3 {
            q.put(bytes(20_000, i)).unwrap();
        }
        for _ in 0..2 {
            q.get().unwrap();
        }
        q.put(bytes(20_000, 3)).unwrap(); // wrapped
        die_after(&q, |l| {
            let (head, tail) = l.positions().unwrap();
            assert_eq!(l.stage_grow(head, tail, 30_000).unwrap(), Some(128 << 10));
        });
        assert_eq!(q.get_timeout(LIMIT).unwrap(), bytes(20_000, 2));
        assert_eq!(header(&q, CAPACITY), 128 << 10);
        assert_eq!(q.get().unwrap(), bytes(20_000, 3));
        q.put(bytes(100_000, 4)).unwrap();
        assert_eq!(q.get().unwrap(), bytes(100_000, 4));
    }

    #[test]
    fn a_record_length_from_shared_memory_cannot_overflow() {
        let q = Queue::<u32>::new().unwrap();
        // 17: one byte past the two records queued (each 8 bytes of length and a 4-byte u32).
        for bad in [u64::MAX, u64::MAX - 7, u64::MAX - 8, 1 << 40, 17] {
            q.put(7).unwrap();
            q.put(8).unwrap();
            let head = header(&q, HEAD) as usize;
            q.ring
                .lock()
                .unwrap()
                .as_ref()
                .unwrap()
                .write(head, &bad.to_le_bytes());
            let e = q.get().unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Protocol, "length {bad}: {e}");
            assert!(e.to_string().contains("corrupted"), "{e}");
            // What followed the bad record cannot be found: the queue starts again, empty.
            assert_eq!(q.try_get().unwrap_err().kind(), ErrorKind::Empty);
            q.put(9).unwrap();
            assert_eq!(q.get().unwrap(), 9);
        }
    }

    #[test]
    fn positions_from_shared_memory_are_checked() {
        let q = Queue::<u32>::new().unwrap();
        q.put(1).unwrap();
        let (head, tail) = (header(&q, HEAD), header(&q, TAIL));
        for (h, t) in [
            (tail + 1, tail),
            (0, u64::MAX),
            (u64::MAX - 4, u64::MAX),
            (0, 1 << 20),
        ] {
            poke(&q, HEAD, h);
            poke(&q, TAIL, t);
            let e = q.put(2).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Protocol, "{h}..{t}: {e}");
            // The next locker recounts what can be read back.
            q.put(3).unwrap();
            while q
                .try_get()
                .map_or_else(|e| e.kind() != ErrorKind::Empty, |_| true)
            {}
        }
        poke(&q, HEAD, head);
        poke(&q, TAIL, head);
        q.put(4).unwrap();
        assert_eq!(q.get().unwrap(), 4);
    }

    #[test]
    fn a_capacity_from_shared_memory_is_checked() {
        let q = Queue::<u32>::new().unwrap();
        let (msg, fds) = crate::wire::fds::collecting(|| codec::encode(&q));
        let msg = msg.unwrap();
        let fresh = || -> Queue<u32> {
            let fds = fds.iter().map(|f| f.try_clone().unwrap()).collect();
            crate::wire::fds::supplying(fds, || codec::decode(&msg)).unwrap()
        };
        // Zero, under the minimum, past the file, past the capacity: errors, never a panic.
        for cap in [0, 8, 1 << 20, 1 << 31, u64::MAX] {
            poke(&q, CAPACITY, cap);
            let e = fresh().put(1).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Protocol, "capacity {cap}: {e}");
            assert_eq!(fresh().get().unwrap_err().kind(), ErrorKind::Protocol);
        }
        poke(&q, CAPACITY, 64 << 10);
        fresh().put(1).unwrap();
        assert_eq!(q.get().unwrap(), 1);
    }
}
