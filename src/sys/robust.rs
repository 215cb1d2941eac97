//! Cross-process mutexes in shared memory that survive the death of their holder.
//!
//! PLACEHOLDER (being replaced by the robust implementation): a plain futex mutex with the
//! final API, so that code above can be written against it. It is NOT robust yet.

use std::sync::atomic::Ordering;
use std::time::Instant;

use super::futex;
use super::shm::Region;

/// Bytes a mutex occupies in a region, at an 8-aligned offset.
pub(crate) const MUTEX_SIZE: usize = 16;

/// How a lock was acquired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Acquired {
    /// The previous holder released it.
    Clean,
    /// The previous holder died holding it: the state it guards may be half-updated.
    Abandoned,
}

/// Locks the mutex at `offset`, waiting until `deadline`. `None` when the deadline passed.
pub(crate) fn lock(region: &Region, offset: usize, deadline: Option<Instant>) -> Option<Acquired> {
    let word = region.atomic_u32(offset + 8);
    loop {
        if word
            .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            return Some(Acquired::Clean);
        }
        if !futex::wait(word, 1, deadline) {
            return None;
        }
    }
}

/// Locks the mutex at `offset` if it is free.
pub(crate) fn try_lock(region: &Region, offset: usize) -> Option<Acquired> {
    let word = region.atomic_u32(offset + 8);
    word.compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
        .ok()
        .map(|_| Acquired::Clean)
}

/// Unlocks the mutex at `offset`, held by this process.
pub(crate) fn unlock(region: &Region, offset: usize) {
    let word = region.atomic_u32(offset + 8);
    word.store(0, Ordering::Release);
    futex::wake(word, 1);
}
