//! Shared memory objects: [`Value`], [`Array`] (each behind its own cross-process lock) and
//! raw [`SharedMemory`]. Python's `multiprocessing.Value`, `Array` and
//! `shared_memory.SharedMemory`.
//!
//! # Layout
//! A `Value` or `Array` region holds, after the common object header ([`super::HEADER`]):
//! the lock ([`MUTEX_SIZE`] bytes), then what the receiving process checks before trusting
//! the region — the element's size and alignment, the element count, and a hash of the
//! element's type name — then the elements, aligned for `T`. A `SharedMemory` region holds
//! its bytes right after the header.

use std::any::type_name;
use std::fmt;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytemuck::Pod;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{HEADER, Kind, Shared, deadline};
use crate::error::{Error, Result};
use crate::sys::robust::{self, Acquired, MUTEX_SIZE};

/// Where the lock is.
const LOCK_AT: usize = HEADER;
/// Where the element's size, alignment, count and type hash are (four `u64`s).
const META_AT: usize = LOCK_AT + MUTEX_SIZE;
const META_LEN: usize = 4 * 8;
/// Elements start here or at the next multiple of their alignment.
const DATA_MIN: usize = META_AT + META_LEN;
/// Regions are mapped page-aligned, so offsets aligned up to this are aligned in memory.
const MAX_ALIGN: usize = 4096;

/// FNV-1a of the element's type name: two processes of one executable agree on it, and a
/// `Value<u64>` decoded as a `Value<i64>` (same size) is still caught.
fn type_hash<T>() -> u64 {
    type_name::<T>()
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        })
}

/// `len` elements of `T` behind one lock: the body of both `Value` and `Array`.
struct Cells<T> {
    shared: Shared,
    len: usize,
    _t: PhantomData<T>,
}

impl<T> Clone for Cells<T> {
    fn clone(&self) -> Self {
        Cells {
            shared: self.shared.clone(),
            len: self.len,
            _t: PhantomData,
        }
    }
}

impl<T: Pod> Cells<T> {
    fn data_at() -> usize {
        DATA_MIN.next_multiple_of(std::mem::align_of::<T>())
    }

    fn create(kind: Kind, len: usize) -> Result<Cells<T>> {
        if std::mem::align_of::<T>() > MAX_ALIGN {
            return Err(Error::usage(
                "shared values cannot be aligned to more than 4096 bytes",
            ));
        }
        let bytes = std::mem::size_of::<T>()
            .checked_mul(len)
            .and_then(|b| b.checked_add(Self::data_at() - HEADER))
            .ok_or_else(|| Error::usage("shared array too large"))?;
        let shared =
            Shared::create(kind, bytes).map_err(|e| Error::io("cannot create shared memory", e))?;
        let r = shared.region();
        let meta = [
            std::mem::size_of::<T>() as u64,
            std::mem::align_of::<T>() as u64,
            len as u64,
            type_hash::<T>(),
        ];
        for (i, v) in meta.into_iter().enumerate() {
            r.atomic_u64(META_AT + 8 * i).store(v, Ordering::Relaxed);
        }
        Ok(Cells {
            shared,
            len,
            _t: PhantomData,
        })
    }

    /// Checks that a region received from elsewhere holds elements of type `T` (and, for a
    /// `Value`, exactly one), and that they fit in it.
    fn check(shared: Shared, one: bool) -> std::result::Result<Cells<T>, String> {
        let r = shared.region();
        if r.len() < DATA_MIN {
            return Err("not an mproc shared value (region too small)".to_string());
        }
        let meta: Vec<u64> = (0..4)
            .map(|i| r.atomic_u64(META_AT + 8 * i).load(Ordering::Relaxed))
            .collect();
        let (size, align, len, hash) = (meta[0], meta[1], meta[2], meta[3]);
        let want = type_name::<T>();
        if size != std::mem::size_of::<T>() as u64
            || align != std::mem::align_of::<T>() as u64
            || hash != type_hash::<T>()
        {
            return Err(format!(
                "the shared object holds elements of {size} bytes aligned to {align} of another \
                 type, not {want} ({} bytes, aligned to {})",
                std::mem::size_of::<T>(),
                std::mem::align_of::<T>()
            ));
        }
        if one && len != 1 {
            return Err(format!("a shared Value holds one {want}, found {len}"));
        }
        let fits = usize::try_from(len)
            .ok()
            .and_then(|n| n.checked_mul(std::mem::size_of::<T>()))
            .and_then(|b| b.checked_add(Self::data_at()))
            .is_some_and(|end| end <= r.len());
        let len = usize::try_from(len)
            .ok()
            .filter(|_| fits)
            .ok_or_else(|| format!("a shared array of {len} {want} does not fit its region"))?;
        Ok(Cells {
            shared,
            len,
            _t: PhantomData,
        })
    }

    fn lock(&self, deadline: Option<Instant>) -> Result<Held<'_, T>> {
        let how =
            robust::lock(self.shared.region(), LOCK_AT, deadline).ok_or_else(Error::timed_out)?;
        Ok(Held::new(self, how))
    }

    fn try_lock(&self) -> Option<Held<'_, T>> {
        robust::try_lock(self.shared.region(), LOCK_AT).map(|how| Held::new(self, how))
    }
}

/// The lock of a `Cells`, held; unlocks on drop. Not `Send`: a lock is released by the
/// thread that took it (a robust mutex is recorded per thread).
struct Held<'a, T> {
    cells: &'a Cells<T>,
    abandoned: bool,
    _not_send: PhantomData<*const ()>,
}

impl<'a, T: Pod> Held<'a, T> {
    fn new(cells: &'a Cells<T>, how: Acquired) -> Held<'a, T> {
        Held {
            cells,
            abandoned: how == Acquired::Abandoned,
            _not_send: PhantomData,
        }
    }

    fn slice(&self) -> &[T] {
        let at = Cells::<T>::data_at();
        self.cells
            .shared
            .region()
            .pod_slice(self, at, self.cells.len)
    }

    fn slice_mut(&mut self) -> &mut [T] {
        let (cells, at) = (self.cells, Cells::<T>::data_at());
        cells.shared.region().pod_slice_mut(self, at, cells.len)
    }
}

impl<T> Drop for Held<'_, T> {
    fn drop(&mut self) {
        robust::unlock(self.cells.shared.region(), LOCK_AT);
    }
}

/// One `T` in shared memory with its own lock: Python's `multiprocessing.Value` (with
/// `get_lock()`).
///
/// Clones, and copies sent to other processes inside a [`Process`](crate::Process) or pool
/// task argument or through a [`Connection`](crate::Connection), are the same object. The
/// lock survives the death of a process holding it (on Linux): the kernel releases it, the
/// next locker gets it and [`was_abandoned`](ValueGuard::was_abandoned) says so — the value
/// may then be half-updated. Robustness is per process, as for [`Lock`](crate::Lock).
///
/// # Examples
/// ```
/// use mproc::{Process, Value};
///
/// fn add_ten(counter: Value<u64>) -> mproc::Result<()> {
///     for _ in 0..10 {
///         *counter.lock()? += 1; // read-modify-write under the lock
///     }
///     Ok(())
/// }
///
/// let counter = Value::new(0u64)?;
/// let mut kids: Vec<_> = (0..2)
///     .map(|_| Process::spawn(|c: Value<u64>| add_ten(c).is_ok(), counter.clone()))
///     .collect::<mproc::Result<_>>()?;
/// for k in &mut kids {
///     assert!(k.join()?);
/// }
/// assert_eq!(counter.get()?, 20);
/// # Ok::<(), mproc::Error>(())
/// ```
///
/// # Caveats
/// The lock is not reentrant: while a thread holds a [`ValueGuard`], it must use the guard,
/// not [`get`](Value::get) or [`set`](Value::set) (which lock again and would wait forever).
/// The type check on receipt compares size, alignment and type name; it cannot tell two
/// types of the same name apart across different executables.
pub struct Value<T> {
    cells: Cells<T>,
}

/// The lock of a [`Value`], held: dereferences to the value in shared memory. Dropping it
/// unlocks.
pub struct ValueGuard<'a, T: Pod> {
    held: Held<'a, T>,
}

impl<T: Pod> Value<T> {
    /// A new shared value holding `v`.
    ///
    /// # Examples
    /// ```
    /// let v = mproc::Value::new(1.5f64)?;
    /// assert_eq!(v.get()?, 1.5);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Io`](crate::ErrorKind::Io) if the shared memory cannot be created;
    /// [`Usage`](crate::ErrorKind::Usage) for a type aligned to more than 4096 bytes.
    pub fn new(v: T) -> Result<Value<T>> {
        let value = Value {
            cells: Cells::create(Kind::Value, 1)?,
        };
        *value.lock()? = v;
        Ok(value)
    }

    /// Locks the value, waiting as long as it takes.
    ///
    /// # Examples
    /// ```
    /// let v = mproc::Value::new([0u32; 4])?;
    /// let mut g = v.lock()?;
    /// g[2] = 7;
    /// assert!(!g.was_abandoned());
    /// drop(g);
    /// assert_eq!(v.get()?, [0, 0, 7, 0]);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// Reserved for lock failures reported by the system; none today.
    pub fn lock(&self) -> Result<ValueGuard<'_, T>> {
        self.cells.lock(None).map(|held| ValueGuard { held })
    }

    /// Locks the value, waiting at most `timeout`.
    ///
    /// # Errors
    /// [`TimedOut`](crate::ErrorKind::TimedOut) when another holder kept it that long.
    pub fn lock_timeout(&self, timeout: Duration) -> Result<ValueGuard<'_, T>> {
        let d = deadline(timeout);
        self.cells.lock(d).map(|held| ValueGuard { held })
    }

    /// Locks the value if it is free at once.
    pub fn try_lock(&self) -> Option<ValueGuard<'_, T>> {
        self.cells.try_lock().map(|held| ValueGuard { held })
    }

    /// A copy of the value, read under the lock.
    ///
    /// # Errors
    /// As [`lock`](Value::lock).
    pub fn get(&self) -> Result<T> {
        Ok(*self.lock()?)
    }

    /// Replaces the value, under the lock.
    ///
    /// # Errors
    /// As [`lock`](Value::lock).
    pub fn set(&self, v: T) -> Result<()> {
        *self.lock()? = v;
        Ok(())
    }
}

impl<T: Pod> ValueGuard<'_, T> {
    /// True when a process died holding the lock before this guard took it: the value may be
    /// half-updated.
    pub fn was_abandoned(&self) -> bool {
        self.held.abandoned
    }
}

impl<T: Pod> Deref for ValueGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.held.slice()[0]
    }
}

impl<T: Pod> DerefMut for ValueGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.held.slice_mut()[0]
    }
}

/// A fixed number of `T`s in shared memory with one lock: Python's `multiprocessing.Array`.
///
/// Workers and the parent view the same memory: what a worker writes under the lock, the
/// parent reads under the lock, without copies. Clones and copies sent to other processes
/// are the same array.
///
/// # Examples
/// ```
/// use mproc::{Array, Process};
///
/// fn fill(a: Array<u32>) -> bool {
///     let Ok(mut g) = a.lock() else { return false };
///     for (i, x) in g.iter_mut().enumerate() {
///         *x = i as u32 * 10;
///     }
///     true
/// }
///
/// let a = Array::<u32>::new(4)?;
/// assert!(Process::spawn(fill, a.clone())?.join()?);
/// assert_eq!(a.to_vec()?, [0, 10, 20, 30]);
/// # Ok::<(), mproc::Error>(())
/// ```
///
/// # Caveats
/// As for [`Value`]: the lock is not reentrant.
pub struct Array<T> {
    cells: Cells<T>,
}

/// The lock of an [`Array`], held: dereferences to the elements in shared memory. Dropping
/// it unlocks.
pub struct ArrayGuard<'a, T: Pod> {
    held: Held<'a, T>,
}

impl<T: Pod> Array<T> {
    /// A new shared array of `len` zeroed elements.
    ///
    /// # Examples
    /// ```
    /// let a = mproc::Array::<f32>::new(3)?;
    /// assert_eq!(a.to_vec()?, [0.0; 3]);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Io`](crate::ErrorKind::Io) if the shared memory cannot be created;
    /// [`Usage`](crate::ErrorKind::Usage) if its size overflows.
    pub fn new(len: usize) -> Result<Array<T>> {
        Ok(Array {
            cells: Cells::create(Kind::Array, len)?,
        })
    }

    /// A new shared array holding a copy of `items`.
    ///
    /// # Examples
    /// ```
    /// let a = mproc::Array::from_slice(&[1u8, 2, 3])?;
    /// assert_eq!(a.len(), 3);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`new`](Array::new).
    pub fn from_slice(items: &[T]) -> Result<Array<T>> {
        let a = Array::new(items.len())?;
        a.lock()?.copy_from_slice(items);
        Ok(a)
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        self.cells.len
    }

    /// True for an array of no elements.
    pub fn is_empty(&self) -> bool {
        self.cells.len == 0
    }

    /// Locks the array, waiting as long as it takes.
    ///
    /// # Examples
    /// ```
    /// let a = mproc::Array::<u64>::new(2)?;
    /// a.lock()?[1] = 5;
    /// assert_eq!(a.lock()?.iter().sum::<u64>(), 5);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// Reserved for lock failures reported by the system; none today.
    pub fn lock(&self) -> Result<ArrayGuard<'_, T>> {
        self.cells.lock(None).map(|held| ArrayGuard { held })
    }

    /// Locks the array, waiting at most `timeout`.
    ///
    /// # Errors
    /// [`TimedOut`](crate::ErrorKind::TimedOut) when another holder kept it that long.
    pub fn lock_timeout(&self, timeout: Duration) -> Result<ArrayGuard<'_, T>> {
        let d = deadline(timeout);
        self.cells.lock(d).map(|held| ArrayGuard { held })
    }

    /// Locks the array if it is free at once.
    pub fn try_lock(&self) -> Option<ArrayGuard<'_, T>> {
        self.cells.try_lock().map(|held| ArrayGuard { held })
    }

    /// A copy of the elements, read under the lock.
    ///
    /// # Errors
    /// As [`lock`](Array::lock).
    pub fn to_vec(&self) -> Result<Vec<T>> {
        Ok(self.lock()?.to_vec())
    }
}

impl<T: Pod> ArrayGuard<'_, T> {
    /// True when a process died holding the lock before this guard took it: the elements may
    /// be half-updated.
    pub fn was_abandoned(&self) -> bool {
        self.held.abandoned
    }
}

impl<T: Pod> Deref for ArrayGuard<'_, T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        self.held.slice()
    }
}

impl<T: Pod> DerefMut for ArrayGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut [T] {
        self.held.slice_mut()
    }
}

/// Raw bytes in shared memory, without a lock: Python's `shared_memory.SharedMemory`.
///
/// Pass it to another process inside an argument or through a
/// [`Connection`](crate::Connection), or let an unrelated process of the same user open it by
/// [`name`](SharedMemory::name). Nothing is ever created in `/dev/shm`: the memory is an
/// anonymous file the kernel frees when the last process holding it (a handle or a mapping)
/// is gone, so there is nothing to `unlink` and nothing to leak.
///
/// # Examples
/// ```
/// let shm = mproc::SharedMemory::create(1024)?;
/// shm.write(10, b"hello")?;
/// let mut out = [0u8; 5];
/// shm.read(10, &mut out)?;
/// assert_eq!(&out, b"hello");
/// # Ok::<(), mproc::Error>(())
/// ```
///
/// # Caveats
/// There is no lock: concurrent writers of overlapping bytes may tear each other's writes
/// (never memory safety: bytes have no invalid values). Guard it with a lock or a protocol.
#[derive(Clone)]
pub struct SharedMemory {
    shared: Shared,
}

impl SharedMemory {
    /// New shared memory of `size` zeroed bytes. Pages are allocated as they are first
    /// written.
    ///
    /// # Errors
    /// [`Usage`](crate::ErrorKind::Usage) for a size of 0; [`Io`](crate::ErrorKind::Io) if
    /// the system refuses the memory.
    pub fn create(size: usize) -> Result<SharedMemory> {
        if size == 0 {
            return Err(Error::usage(
                "shared memory needs a size of at least 1 byte",
            ));
        }
        let shared = super::create(Kind::SharedMemory, size)?;
        Ok(SharedMemory { shared })
    }

    /// Opens shared memory by its [`name`](SharedMemory::name) in another process.
    ///
    /// A name identifies one segment: opening a name whose segment is gone fails, even when
    /// its holder's fd number now holds another segment (or any other file).
    ///
    /// # Examples
    /// ```
    /// let a = mproc::SharedMemory::create(64)?;
    /// let b = mproc::SharedMemory::open(&a.name())?; // the same memory
    /// b.write(0, &[7])?;
    /// let mut x = [0u8];
    /// a.read(0, &mut x)?;
    /// assert_eq!(x, [7]);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Usage`](crate::ErrorKind::Usage) when `name` is not a name [`name`](SharedMemory::name)
    /// gives. [`Io`](crate::ErrorKind::Io) when it does not lead to its segment: with a source
    /// of [`std::io::ErrorKind::NotFound`] when the name is stale (the segment was dropped or
    /// its process exited), or the system's refusal (e.g. `PermissionDenied` for another
    /// user's process).
    pub fn open(name: &str) -> Result<SharedMemory> {
        let (path, id) = parse_name(name).ok_or_else(|| {
            Error::usage(
                "not a shared memory name: expected /proc/PID/fd/FD#ID, as SharedMemory::name \
                 gives",
            )
        })?;
        let shared = Shared::open_named(path, Kind::SharedMemory, id)
            .map_err(|e| Error::io("cannot open shared memory", e))?;
        Ok(SharedMemory { shared })
    }

    /// A name other processes of the same user can [`open`](SharedMemory::open) it by:
    /// `/proc/<pid>/fd/<fd>#<id>`, the path of this handle's fd and the segment's id (16 hex
    /// digits, unique in practice).
    ///
    /// The name is valid only while this process holds this handle (or a clone of it):
    /// after that, `open` fails with `NotFound` (never opening whatever reused the fd
    /// number). Keep the handle alive until the other process has opened it (it then holds
    /// its own).
    pub fn name(&self) -> String {
        use std::os::fd::AsRawFd;
        format!(
            "/proc/{}/fd/{}#{:016x}",
            std::process::id(),
            self.shared.region().fd().as_raw_fd(),
            self.shared.id()
        )
    }

    /// Its size in bytes.
    pub fn len(&self) -> usize {
        self.shared.region().len() - HEADER
    }

    /// True for no bytes (never: sizes are at least 1).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn range(&self, offset: usize, n: usize) -> Result<usize> {
        match offset.checked_add(n) {
            Some(end) if end <= self.len() => Ok(HEADER + offset),
            _ => Err(Error::usage("shared memory access out of bounds")),
        }
    }

    /// Copies bytes at `offset` into `out`.
    ///
    /// # Errors
    /// [`Usage`](crate::ErrorKind::Usage) when `offset + out.len()` is past the end.
    pub fn read(&self, offset: usize, out: &mut [u8]) -> Result<()> {
        let at = self.range(offset, out.len())?;
        self.shared.region().read(at, out);
        Ok(())
    }

    /// Copies `bytes` to `offset`.
    ///
    /// # Errors
    /// [`Usage`](crate::ErrorKind::Usage) when `offset + bytes.len()` is past the end.
    pub fn write(&self, offset: usize, bytes: &[u8]) -> Result<()> {
        let at = self.range(offset, bytes.len())?;
        self.shared.region().write(at, bytes);
        Ok(())
    }

    /// The address of the first byte in this process, for `unsafe` users: valid for
    /// [`len`](SharedMemory::len) bytes while this handle lives, aligned to 64 bytes. Other
    /// processes may write the bytes at any time.
    pub fn as_ptr(&self) -> *mut u8 {
        self.shared.region().as_ptr().wrapping_add(HEADER)
    }
}

/// The fd path and the id of a name `/proc/<pid>/fd/<fd>#<id>`.
fn parse_name(name: &str) -> Option<(&str, u64)> {
    let (path, id) = name.split_once('#')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let (pid, fd) = path.strip_prefix("/proc/")?.split_once("/fd/")?;
    if !digits(pid) || !digits(fd) || id.len() != 16 {
        return None;
    }
    Some((path, u64::from_str_radix(id, 16).ok()?))
}

impl fmt::Debug for SharedMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedMemory")
            .field("name", &self.name())
            .field("len", &self.len())
            .finish()
    }
}

impl<T> Clone for Value<T> {
    fn clone(&self) -> Self {
        Value {
            cells: self.cells.clone(),
        }
    }
}

impl<T> Clone for Array<T> {
    fn clone(&self) -> Self {
        Array {
            cells: self.cells.clone(),
        }
    }
}

impl<T> fmt::Debug for Value<T> {
    /// Does not read the value (that would take the lock).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Value<{}>", type_name::<T>())
    }
}

impl<T> fmt::Debug for Array<T> {
    /// Does not read the elements (that would take the lock).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Array<{}>[{}]", type_name::<T>(), self.cells.len)
    }
}

impl<T: Pod> fmt::Debug for ValueGuard<'_, T>
where
    T: fmt::Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

impl<T: Pod> fmt::Debug for ArrayGuard<'_, T>
where
    T: fmt::Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

fn decode_cells<'de, D: Deserializer<'de>, T: Pod>(
    d: D,
    kind: Kind,
) -> std::result::Result<Cells<T>, D::Error> {
    let shared = Shared::deserialize(d, kind)?;
    Cells::check(shared, kind == Kind::Value).map_err(D::Error::custom)
}

impl<T> Serialize for Value<T> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.cells.shared.serialize(s)
    }
}

impl<'de, T: Pod> Deserialize<'de> for Value<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        decode_cells(d, Kind::Value).map(|cells| Value { cells })
    }
}

impl<T> Serialize for Array<T> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.cells.shared.serialize(s)
    }
}

impl<'de, T: Pod> Deserialize<'de> for Array<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        decode_cells(d, Kind::Array).map(|cells| Array { cells })
    }
}

impl Serialize for SharedMemory {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.shared.serialize(s)
    }
}

impl<'de> Deserialize<'de> for SharedMemory {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        Shared::deserialize(d, Kind::SharedMemory).map(|shared| SharedMemory { shared })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{codec, fds};

    fn send_sync<X: Send + Sync>() {}

    #[test]
    fn handles_cross_threads() {
        send_sync::<Value<u64>>();
        send_sync::<Array<[u8; 3]>>();
        send_sync::<SharedMemory>();
    }

    fn through_message<A: Serialize, B: serde::de::DeserializeOwned>(
        a: &A,
    ) -> std::result::Result<B, String> {
        let (bytes, handles) = fds::collecting(|| codec::encode(a));
        let bytes = bytes?;
        fds::supplying(handles, || codec::decode(&bytes))
    }

    #[test]
    fn layout_is_aligned_for_large_alignments() {
        #[derive(Clone, Copy, bytemuck::Zeroable, bytemuck::Pod)]
        #[repr(C, align(256))]
        struct Wide([u8; 256]);
        assert_eq!(Cells::<Wide>::data_at() % 256, 0);
        let a = Array::<Wide>::new(3).unwrap();
        assert_eq!(a.lock().unwrap().as_ptr() as usize % 256, 0);
    }

    #[test]
    fn a_decoded_handle_must_hold_the_same_type() {
        let v = Value::new(5u64).unwrap();
        let same: Value<u64> = through_message(&v).unwrap();
        same.set(6).unwrap();
        assert_eq!(v.get().unwrap(), 6);
        let err = through_message::<_, Value<u32>>(&v).unwrap_err();
        assert!(err.contains("u32"), "{err}");
        let err = through_message::<_, Value<i64>>(&v).unwrap_err();
        assert!(err.contains("i64"), "{err}");
        let err = through_message::<_, Array<u64>>(&v).unwrap_err();
        assert!(err.contains("Array"), "{err}");
        let a = Array::<u64>::new(2).unwrap();
        let err = through_message::<_, Value<u64>>(&a).unwrap_err();
        assert!(err.contains("Value"), "{err}");
    }
}
