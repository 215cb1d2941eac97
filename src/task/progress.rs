//! A worker's progress through its current chunk, in a control block both sides map.
//!
//! The parent creates one anonymous file per worker and sends it first thing; the worker maps
//! it whole ([`GrowMap`]) and the parent maps only its first page ([`Watch`]). For each task
//! the worker publishes, with plain atomic stores (no syscall, no message):
//!
//! - when it begins a task: the first item it runs (`SKIP`), the item count, then `STARTED`
//!   (a count of tasks begun) — last, with `Release`, so a parent that sees the new count sees
//!   the rest;
//! - after each item: that item's encoded outcome in the arena, then the time the next item
//!   starts (`ITEM_START`, only if the pool has a timeout), the arena's committed length
//!   (`BYTES`), and the index of the next item (`DONE`) — last, with `Release`.
//!
//! The parent reads it for two things only: when a worker dies (which item was running, and
//! the committed results of those before it, read back from the file), and at a timeout
//! deadline (since when the running item runs). Writing `ITEM_START` before `DONE` means a
//! parent that reads `DONE` then `ITEM_START` never sees an older start time than that item's:
//! a timeout can fire late, never early.

use std::io;
use std::os::fd::BorrowedFd;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release};

use crate::sys::arena::{self, GrowMap, PAGE};
use crate::sys::shm::Region;

/// Tasks the worker has begun (u64).
const STARTED: usize = 0;
/// Index of the first item of the current task without a committed outcome: the running one.
const DONE: usize = 8;
/// Index of the first item encoded with its variant (see `chunk`), or `u64::MAX`.
const TAGGED: usize = 16;
/// Bytes of item outcomes committed in the arena for the current task.
const BYTES: usize = 24;
/// `CLOCK_MONOTONIC` nanoseconds when the item at `DONE` started (when `TIMED`).
const ITEM_START: usize = 32;
/// The first item the current task runs (those before it were settled earlier).
const SKIP: usize = 40;
/// Items in the current task.
const COUNT: usize = 48;
/// `COUNT` before the arguments are decoded.
pub(crate) const UNCOUNTED: u64 = u64::MAX;
/// Set by the parent: non-zero when item start times are wanted (the pool has a timeout).
const TIMED: usize = 56;

/// The worker's side: what it publishes about the task it runs. Takes the map at each call,
/// so that the arena can be written (and grown) between calls.
pub(crate) struct Publisher {
    timed: bool,
}

impl Publisher {
    /// Begins a task, running from item `skip`; its item count follows once its arguments
    /// are decoded ([`Publisher::counted`]). Published before decoding, so that a worker dying
    /// while it decodes is known to have begun the task (its first item is then charged).
    pub(crate) fn begin(map: &GrowMap, skip: usize) -> Publisher {
        let timed = map.atomic_u64(TIMED).load(Relaxed) != 0;
        let store = |off, v: u64| map.atomic_u64(off).store(v, Relaxed);
        store(SKIP, skip as u64);
        store(COUNT, UNCOUNTED);
        store(TAGGED, u64::MAX);
        store(BYTES, 0);
        if timed {
            store(ITEM_START, arena::monotonic_ns());
        }
        store(DONE, skip as u64);
        map.atomic_u64(STARTED).fetch_add(1, Release);
        Publisher { timed }
    }

    /// The task has `count` items.
    pub(crate) fn counted(&self, map: &GrowMap, count: usize) {
        map.atomic_u64(COUNT).store(count as u64, Relaxed);
    }

    /// Items from `index` on are encoded with their variant.
    pub(crate) fn tagged_from(&self, map: &GrowMap, index: usize) {
        map.atomic_u64(TAGGED).store(index as u64, Relaxed);
    }

    /// The outcomes of every item before `done` are committed: `bytes` of them.
    #[inline]
    pub(crate) fn commit(&self, map: &GrowMap, done: usize, bytes: usize) {
        if self.timed {
            map.atomic_u64(ITEM_START)
                .store(arena::monotonic_ns(), Relaxed);
        }
        map.atomic_u64(BYTES).store(bytes as u64, Relaxed);
        map.atomic_u64(DONE).store(done as u64, Release);
    }
}

/// What the control block said, read at one moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Snapshot {
    /// Tasks the worker has begun.
    pub(crate) started: u64,
    /// The first item without an outcome (the running one, while `done < count`).
    pub(crate) done: u64,
    /// The first item encoded with its variant.
    pub(crate) tagged: u64,
    /// Committed bytes of outcomes in the arena.
    pub(crate) bytes: u64,
    /// When the item at `done` started, in `CLOCK_MONOTONIC` nanoseconds (when timed).
    pub(crate) item_start_ns: u64,
    /// The first item the task runs.
    pub(crate) skip: u64,
    /// Items in the task.
    pub(crate) count: u64,
}

/// The parent's side: its mapping of a worker's control block, and the file behind it.
pub(crate) struct Watch {
    region: Region,
}

impl Watch {
    /// A fresh control block; `timed`: the worker records when each item starts.
    pub(crate) fn create(timed: bool) -> io::Result<Watch> {
        let region = Region::from_fd(arena::control_file()?)?;
        region.atomic_u64(TIMED).store(u64::from(timed), Relaxed);
        Ok(Watch { region })
    }

    /// The first page, mapped: the mailbox lives there too (`task::mailbox`).
    pub(crate) fn page(&self) -> &Region {
        &self.region
    }

    /// The file, to send to the worker.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.region.fd()
    }

    /// Tasks the worker has begun.
    pub(crate) fn started(&self) -> u64 {
        self.region.atomic_u64(STARTED).load(Acquire)
    }

    /// Reads the control block. Consistent once the worker is dead; while it runs, `done`
    /// and `item_start_ns` are read in the order that never makes an item look older.
    pub(crate) fn snapshot(&self) -> Snapshot {
        let load = |off| self.region.atomic_u64(off).load(Relaxed);
        let started = self.region.atomic_u64(STARTED).load(Acquire);
        let done = self.region.atomic_u64(DONE).load(Acquire);
        Snapshot {
            started,
            done,
            tagged: load(TAGGED),
            bytes: load(BYTES),
            item_start_ns: load(ITEM_START),
            skip: load(SKIP),
            count: load(COUNT),
        }
    }

    /// The committed outcome bytes of a dead worker's task (`snap.bytes` of them, after the
    /// arena's frame prefix of `prefix` bytes). A length the file cannot hold is an error, not
    /// an allocation: the worker wrote these numbers, and it may have been corrupt.
    pub(crate) fn recover(&self, snap: &Snapshot, prefix: usize) -> io::Result<Vec<u8>> {
        let start = (PAGE + prefix) as u64;
        let size = crate::sys::shm::file_size(self.region.fd())? as u64;
        if start.checked_add(snap.bytes).is_none_or(|end| end > size) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "a worker's progress claims {} result bytes its arena does not hold",
                    snap.bytes
                ),
            ));
        }
        let mut out = vec![0; snap.bytes as usize];
        arena::read_at(self.region.fd(), start, &mut out)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn what_the_worker_publishes_the_parent_reads_and_recovers() {
        let watch = Watch::create(true).unwrap();
        let fd = watch.fd().try_clone_to_owned().unwrap();
        let mut map = GrowMap::from_fd(fd).unwrap();
        assert_eq!(watch.started(), 0);
        map.resize(64).unwrap();
        map.arena_mut()[10..13].copy_from_slice(b"xyz");
        let p = Publisher::begin(&map, 2);
        assert_eq!(watch.snapshot().count, UNCOUNTED);
        p.counted(&map, 5);
        let s = watch.snapshot();
        assert_eq!(
            (s.started, s.done, s.skip, s.count, s.bytes),
            (1, 2, 2, 5, 0)
        );
        assert!(s.item_start_ns > 0);
        p.tagged_from(&map, 3);
        p.commit(&map, 3, 3);
        let s = watch.snapshot();
        assert_eq!((s.done, s.tagged, s.bytes), (3, 3, 3));
        assert_eq!(watch.recover(&s, 10).unwrap(), b"xyz");
        let lie = Snapshot {
            bytes: 1 << 40,
            ..s
        };
        assert!(watch.recover(&lie, 10).is_err());
        let _ = map.arena().as_ptr();
        drop(map);
        let _ = watch.fd().as_fd();
    }
}
