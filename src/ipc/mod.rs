//! Objects shared between processes: queues, pipes, locks and shared memory.
//!
//! Every object here except [`Connection`] is one shared memory [`Region`] (an anonymous
//! `memfd`): a handle is the region mapped into this process, and cloning a handle or sending
//! it to another process (inside a task's argument) shares the same object. The kernel frees
//! the region when the last process holding it exits, however it exits: nothing is left in
//! `/dev/shm`, nothing needs unlinking.
//!
//! Each region starts with a 64-byte header: a magic number and the object's kind, so a
//! handle decoded from the wrong fd is a clear error instead of a misread, and the object's
//! id (64 bits, unique in practice), so a name ([`SharedMemory::name`]) says which object it
//! means; the object's own fields follow.

mod barrier;
mod condition;
mod event;
mod lock;
mod pipe;
mod queue;
mod rlock;
mod semaphore;
mod shared;

pub use barrier::{Barrier, BarrierWaitResult};
pub use condition::Condition;
pub use event::Event;
pub use lock::{Lock, LockGuard};
pub use pipe::{Connection, pipe};
pub use queue::{JoinableQueue, PutError, Queue, SimpleQueue};
pub use rlock::{RLock, RLockGuard};
pub use semaphore::{BoundedSemaphore, Semaphore, SemaphoreGuard};
pub use shared::{Array, ArrayGuard, SharedMemory, Value, ValueGuard};

use std::hash::{BuildHasher, Hasher};
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use serde::de::Error as _;
use serde::{Deserializer, Serializer};

use crate::sys::shm::Region;
use crate::wire::fds;

const MAGIC: u32 = 0x6370_726d; // "mprc", little-endian

/// Bytes before an object's own fields.
pub(crate) const HEADER: usize = 64;

/// Where the header keeps the object's id.
const ID: usize = 8;

/// A new object id: never 0, and unique in practice — 64 bits of a hash keyed at random once
/// per process, over this process's pid, a counter and the time (a forked child shares the
/// key and the counter, not the pid).
fn new_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    static KEYS: OnceLock<std::collections::hash_map::RandomState> = OnceLock::new();
    let mut h = KEYS
        .get_or_init(std::collections::hash_map::RandomState::new)
        .build_hasher();
    h.write_u64(NEXT.fetch_add(1, Ordering::Relaxed));
    h.write_u32(std::process::id());
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    h.write_u128(now.map_or(0, |d| d.as_nanos()));
    h.finish().max(1)
}

/// The deadline `timeout` from now; `None` (no deadline) if that is beyond what `Instant`
/// can represent.
pub(crate) fn deadline(timeout: Duration) -> Option<Instant> {
    Instant::now().checked_add(timeout)
}

/// `Shared::create` for the public constructors: an OS refusal becomes an `Io` error.
pub(crate) fn create(kind: Kind, len: usize) -> crate::Result<Shared> {
    Shared::create(kind, len)
        .map_err(|e| crate::Error::io("cannot create a shared memory object", e))
}

/// `Serialize` / `Deserialize` for a handle whose only field is `shared: Shared`.
macro_rules! shared_serde {
    ($ty:ident, $kind:expr) => {
        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                self.shared.serialize(s)
            }
        }

        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                Ok($ty {
                    shared: $crate::ipc::Shared::deserialize(d, $kind)?,
                })
            }
        }
    };
}
pub(crate) use shared_serde;

/// What a region holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub(crate) enum Kind {
    Lock = 1,
    RLock = 2,
    Semaphore = 3,
    Event = 4,
    Condition = 5,
    Barrier = 6,
    Queue = 7,
    Value = 8,
    Array = 9,
    SharedMemory = 10,
}

/// A region holding one object of a known kind, shared by every clone of its handle.
#[derive(Debug, Clone)]
pub(crate) struct Shared {
    region: Arc<Region>,
}

impl Shared {
    /// A new object: `len` bytes after the header, zeroed.
    pub(crate) fn create(kind: Kind, len: usize) -> io::Result<Shared> {
        let total = HEADER
            .checked_add(len)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "object too large"))?;
        let region = Region::create(&format!("{kind:?}"), total)?;
        region.atomic_u32(4).store(kind as u32, Ordering::Relaxed);
        region.atomic_u64(ID).store(new_id(), Ordering::Relaxed);
        region.atomic_u32(0).store(MAGIC, Ordering::Release);
        Ok(Shared {
            region: Arc::new(region),
        })
    }

    /// The mapping. Object fields start at [`HEADER`].
    pub(crate) fn region(&self) -> &Region {
        &self.region
    }

    /// The object's id (see [`new_id`]).
    pub(crate) fn id(&self) -> u64 {
        self.region.atomic_u64(ID).load(Ordering::Relaxed)
    }

    /// True when `other` is a handle to the same object (in this process).
    pub(crate) fn same(&self, other: &Shared) -> bool {
        Arc::ptr_eq(&self.region, &other.region)
    }

    /// Serializes the handle (for `Serialize` impls): the fd travels beside the message.
    pub(crate) fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        fds::serialize_fd(self.region.fd(), s)
    }

    /// Deserializes a handle of `kind` (for `Deserialize` impls), mapping the received fd.
    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
        kind: Kind,
    ) -> Result<Shared, D::Error> {
        let fd = fds::deserialize_fd(d)?;
        let region = Region::from_fd(fd).map_err(D::Error::custom)?;
        Shared::check(region, kind).map_err(D::Error::custom)
    }

    /// As [`deserialize`](Shared::deserialize), mapping only the first `len` bytes of the
    /// object's file (at least [`HEADER`]): for an object that maps the rest on its own.
    pub(crate) fn deserialize_prefix<'de, D: Deserializer<'de>>(
        d: D,
        kind: Kind,
        len: usize,
    ) -> Result<Shared, D::Error> {
        let fd = fds::deserialize_fd(d)?;
        let region = Region::from_fd_prefix(fd, len.max(HEADER)).map_err(D::Error::custom)?;
        Shared::check(region, kind).map_err(D::Error::custom)
    }

    fn check(region: Region, kind: Kind) -> Result<Shared, String> {
        if region.len() < HEADER || region.atomic_u32(0).load(Ordering::Acquire) != MAGIC {
            return Err("not an mproc object".to_string());
        }
        let found = region.atomic_u32(4).load(Ordering::Relaxed);
        if found != kind as u32 {
            return Err(format!("expected an mproc {kind:?}, found kind {found}"));
        }
        Ok(Shared {
            region: Arc::new(region),
        })
    }

    /// Opens the object of `kind` and `id` by the path of its fd in a process holding it
    /// (`SharedMemory` names). An fd number is reused as soon as it is closed, so the path may
    /// now lead to another object, or to any file at all: only a memfd of this kind is opened,
    /// and only an object with this id is returned. Anything else is `NotFound`: the name is
    /// stale.
    pub(crate) fn open_named(path: &str, kind: Kind, id: u64) -> io::Result<Shared> {
        let stale = || {
            io::Error::new(
                io::ErrorKind::NotFound,
                "no such shared memory: the name is stale (its segment was dropped, or the \
                 process holding it exited)",
            )
        };
        let gone = |e: io::Error| match e.kind() {
            io::ErrorKind::NotFound => stale(),
            _ => e,
        };
        // Look before opening: a stale fd may now be a terminal, a pipe or someone's file.
        let target = std::fs::read_link(path).map_err(gone)?;
        let want = format!("/memfd:mproc-{kind:?}");
        let target = target.to_string_lossy();
        if target != want && !target.starts_with(&format!("{want} ")) {
            return Err(stale());
        }
        let region = Region::open_path(path).map_err(gone)?;
        let shared = Shared::check(region, kind).map_err(|_| stale())?;
        if shared.id() != id {
            return Err(stale());
        }
        Ok(shared)
    }
}
