//! Cross-process mutexes in shared memory that survive the death of their holder.
//!
//! # The protocol (Linux)
//! A mutex is 16 bytes of a [`Region`]: `[0..8)` a robust-list node (a `next` pointer, only
//! meaningful in the address space of the process holding the lock), `[8..12)` the futex word,
//! `[12..16)` spare. The word follows the kernel's robust-futex protocol:
//! `owner_tid | FUTEX_WAITERS | FUTEX_OWNER_DIED`, and 0 when free.
//!
//! The kernel's part: every thread may register one *robust list* (`set_robust_list`). When
//! the thread exits — however it exits, SIGKILL included — the kernel walks that list and, for
//! each futex word whose tid bits are that thread's tid, sets `FUTEX_OWNER_DIED`, clears the
//! tid, and wakes one waiter (`handle_futex_death` in `kernel/futex/core.c`). The next locker
//! finds `OWNER_DIED` with no owner, takes the lock and is told [`Acquired::Abandoned`].
//!
//! We do not use glibc's robust pthread mutexes: mproc's fork-server workers are created by a
//! raw `clone`, so glibc's per-thread robust list is not registered there and its cached tid
//! is stale. Instead each process starts one *keeper* thread on first use, which registers a
//! list head of ours for itself and then parks forever. Every mutex held by any thread of the
//! process stores the keeper's tid and is linked into the keeper's list, so the kernel releases
//! them when the process dies. Robustness is therefore per process, not per thread: a lock
//! held by a thread of a live process stays held (as with `std::sync::Mutex`).
//!
//! List changes happen under one process-local mutex, with `list_op_pending` pointing at the
//! node around each change exactly as glibc does, so a death in the middle of a lock or unlock
//! is still handled. That mutex is never held while blocked on a futex: attempts run under it,
//! waits outside it.
//!
//! # Limits
//! - The kernel walks at most 2048 entries of a list (`ROBUST_LIST_LIMIT`): if one process
//!   holds more than 2048 mproc locks at once when it dies, the extra ones are not released.
//! - The keeper's list is walked when the keeper exits, which is when the whole process dies.
//!   Under SIGKILL, another thread of the dying process may still execute a few instructions
//!   after the keeper's list was walked; a lock taken in that window (microseconds) is not
//!   released. Bounded waits (`*_timeout`) remain the backstop.
//! - A thread that cannot be started (thread limit) leaves the process's locks working but not
//!   robust; the start is retried on the next lock.
//! - Region mappings are never unmapped with a node still linked: [`unmapping`] unlinks them.
//!
//! # Elsewhere
//! Without Linux robust futexes (`cfg(not(target_os = "linux"))`) the mutex is a plain futex
//! mutex: correct, but a holder's death leaves it locked; waits with a deadline still end.

use std::time::Instant;

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
    imp::lock(region, offset, deadline)
}

/// Locks the mutex at `offset` if it is free (or abandoned).
pub(crate) fn try_lock(region: &Region, offset: usize) -> Option<Acquired> {
    imp::try_lock(region, offset)
}

/// Unlocks the mutex at `offset`, held by this process.
pub(crate) fn unlock(region: &Region, offset: usize) {
    imp::unlock(region, offset)
}

/// True when the mutex at `offset` is held by this process (by any of its threads).
pub(crate) fn held_here(region: &Region, offset: usize) -> bool {
    imp::held_here(region, offset)
}

/// Called before `[start, start + len)` of this process is unmapped: unlinks the nodes of
/// mutexes living there (held through a forgotten guard), so that neither the kernel nor our
/// list code ever follows a pointer into memory that is gone. Those mutexes stay locked.
pub(crate) fn unmapping(start: usize, len: usize) {
    imp::unmapping(start, len)
}

/// Marks the mutex at `offset` as the kernel does when its owner dies, for tests of what
/// the next locker recovers.
#[cfg(all(test, target_os = "linux"))]
pub(crate) fn simulate_owner_death(region: &Region, offset: usize) {
    imp::simulate_owner_death(region, offset, false)
}

#[cfg(target_os = "linux")]
mod imp {
    use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
    use std::sync::{MutexGuard, PoisonError};
    use std::time::Instant;

    use super::Acquired;
    use crate::sys::fork_local::ForkLocal;
    use crate::sys::futex;
    use crate::sys::shm::Region;

    const WAITERS: u32 = 0x8000_0000;
    const OWNER_DIED: u32 = 0x4000_0000;
    const TID_MASK: u32 = 0x3fff_ffff;
    /// Busy checks of a held lock before sleeping on it.
    const SPINS: u32 = 200;
    /// Where the futex word sits relative to the node (`robust_list_head.futex_offset`).
    const FUTEX_OFFSET: usize = 8;

    /// The kernel's `struct robust_list_head`: `list.next`, `futex_offset`,
    /// `list_op_pending`. Atomics because the kernel reads it when the keeper exits, while
    /// other threads of the process may be changing it.
    #[repr(C)]
    struct Head {
        next: AtomicUsize,
        futex_offset: libc::c_long,
        pending: AtomicUsize,
    }

    /// This process's keeper: its list head and tid, and the nodes linked (the kernel's list
    /// in reverse: the last element is `head.next`).
    #[derive(Default)]
    struct Keeper {
        head: Option<&'static Head>,
        tid: u32,
        robust: bool,
        linked: Vec<usize>,
    }

    static KEEPER: ForkLocal<Keeper> = ForkLocal::new();

    fn keeper() -> MutexGuard<'static, Keeper> {
        KEEPER.get().lock().unwrap_or_else(PoisonError::into_inner)
    }

    impl Keeper {
        /// The owner id this process writes in futex words: the keeper's tid, or (when no
        /// keeper could be started) the pid, which makes the lock work without robustness.
        fn owner(&mut self) -> u32 {
            if self.head.is_none() {
                self.start();
            }
            if self.head.is_some() {
                self.tid
            } else {
                super::super::getpid() as u32 & TID_MASK
            }
        }

        fn start(&mut self) {
            let head: &'static Head = Box::leak(Box::new(Head {
                next: AtomicUsize::new(0),
                futex_offset: FUTEX_OFFSET as libc::c_long,
                pending: AtomicUsize::new(0),
            }));
            let addr = head as *const Head as usize;
            // An empty list points at itself.
            head.next.store(addr, Ordering::Relaxed);
            let (tx, rx) = std::sync::mpsc::channel();
            let spawned = std::thread::Builder::new()
                .name("mproc-robust".into())
                .stack_size(64 * 1024)
                .spawn(move || {
                    let _ = tx.send((gettid(), register(addr)));
                    // Never exits before the process does: its exit is what releases the
                    // process's locks.
                    loop {
                        std::thread::park();
                    }
                });
            if spawned.is_err() {
                return; // retried on the next lock
            }
            if let Ok((tid, registered)) = rx.recv() {
                self.head = Some(head);
                self.tid = tid & TID_MASK;
                self.robust = registered;
            }
        }

        /// Points the kernel at `node` (or at nothing, 0) while a list change is under way.
        fn set_pending(&self, node: usize) {
            if let Some(head) = self.head {
                head.pending.store(node, Ordering::SeqCst);
            }
        }

        fn link(&mut self, node: &AtomicU64, addr: usize) {
            let Some(head) = self.head else { return };
            node.store(head.next.load(Ordering::Relaxed) as u64, Ordering::Relaxed);
            head.next.store(addr, Ordering::SeqCst);
            self.linked.push(addr);
        }

        fn unlink(&mut self, addr: usize) {
            let Some(head) = self.head else { return };
            let Some(i) = self.linked.iter().rposition(|&a| a == addr) else {
                return;
            };
            // SAFETY: `addr` is a linked node; linked nodes are 8-aligned u64s in live
            // mappings (a region unlinks its nodes in `unmapping` before it is unmapped).
            let next = unsafe { node_at(addr) }.load(Ordering::Relaxed);
            match self.linked.get(i + 1) {
                None => head.next.store(next as usize, Ordering::SeqCst),
                // SAFETY: as above, for the node before it in the kernel's list.
                Some(&prev) => unsafe { node_at(prev) }.store(next, Ordering::SeqCst),
            }
            self.linked.remove(i);
        }
    }

    /// The node at `addr`.
    ///
    /// # Safety
    /// `addr` must be the address of a node currently linked by this process.
    unsafe fn node_at(addr: usize) -> &'static AtomicU64 {
        // SAFETY: forwarded to the caller: the address is an aligned u64 in a live mapping,
        // accessed only atomically.
        unsafe { &*(addr as *const AtomicU64) }
    }

    fn gettid() -> u32 {
        // The raw syscall (rustix makes it), not glibc's cached value, which is stale in
        // fork-server workers.
        rustix::thread::gettid().as_raw_nonzero().get() as u32
    }

    /// Registers the list head at `addr` for the calling thread.
    fn register(addr: usize) -> bool {
        // SAFETY: `addr` is a leaked (never freed) `Head` with the kernel's layout; the kernel
        // only stores the pointer and reads through it when this thread exits.
        let r = unsafe {
            libc::syscall(
                libc::SYS_set_robust_list,
                addr as *const Head,
                std::mem::size_of::<Head>(),
            )
        };
        r == 0
    }

    struct Mutex<'a> {
        node: &'a AtomicU64,
        word: &'a AtomicU32,
        addr: usize,
    }

    fn at(region: &Region, offset: usize) -> Mutex<'_> {
        Mutex {
            node: region.atomic_u64(offset),
            word: region.atomic_u32(offset + FUTEX_OFFSET),
            addr: region.as_ptr() as usize + offset,
        }
    }

    /// One attempt: `Ok` when taken, `Err(word)` when held by someone. `extra` is
    /// `WAITERS` after this thread has waited (others may still be waiting).
    fn attempt(m: &Mutex<'_>, extra: u32) -> Result<Acquired, u32> {
        let mut k = keeper();
        let me = k.owner();
        let mut cur = m.word.load(Ordering::Relaxed);
        loop {
            let (new, how) = if cur == 0 {
                (me | extra, Acquired::Clean)
            } else if cur & TID_MASK == 0 && cur & OWNER_DIED != 0 {
                (me | (cur & WAITERS) | extra, Acquired::Abandoned)
            } else {
                return Err(cur);
            };
            // glibc's order: pending, CAS, link, clear pending. A death after the CAS and
            // before the link leaves the kernel the pending node, holding our tid.
            k.set_pending(m.addr);
            let swapped = m
                .word
                .compare_exchange(cur, new, Ordering::Acquire, Ordering::Relaxed);
            if swapped.is_ok() {
                k.link(m.node, m.addr);
            }
            k.set_pending(0);
            match swapped {
                Ok(_) => return Ok(how),
                Err(seen) => cur = seen,
            }
        }
    }

    pub(super) fn lock(
        region: &Region,
        offset: usize,
        deadline: Option<Instant>,
    ) -> Option<Acquired> {
        let m = at(region, offset);
        let mut extra = 0;
        // Spin briefly on a lock held by a running process: critical sections are short,
        // and a futex sleep + wake costs far more than the usual wait.
        for _ in 0..SPINS {
            let w = m.word.load(Ordering::Relaxed);
            if w == 0 || w & TID_MASK == 0 || w & WAITERS != 0 {
                break;
            }
            std::hint::spin_loop();
        }
        loop {
            let cur = match attempt(&m, extra) {
                Ok(how) => return Some(how),
                Err(cur) => cur,
            };
            // Announce a waiter, then sleep while the word stays as announced.
            let want = cur | WAITERS;
            if cur != want
                && m.word
                    .compare_exchange(cur, want, Ordering::Relaxed, Ordering::Relaxed)
                    .is_err()
            {
                continue;
            }
            extra = WAITERS;
            if !futex::wait(m.word, want, deadline) {
                return None;
            }
        }
    }

    pub(super) fn try_lock(region: &Region, offset: usize) -> Option<Acquired> {
        attempt(&at(region, offset), 0).ok()
    }

    pub(super) fn unlock(region: &Region, offset: usize) {
        let m = at(region, offset);
        let mut k = keeper();
        // Unlink first, then release, then wake, then clear `pending` (glibc's order): a death
        // anywhere in between leaves the kernel either a linked node, or the pending node with
        // our tid (released as abandoned), or a free word with waiters (woken).
        k.set_pending(m.addr);
        k.unlink(m.addr);
        let old = m.word.swap(0, Ordering::Release);
        if old & WAITERS != 0 {
            futex::wake(m.word, 1);
        }
        k.set_pending(0);
    }

    pub(super) fn held_here(region: &Region, offset: usize) -> bool {
        let m = at(region, offset);
        let owner = m.word.load(Ordering::Acquire) & TID_MASK;
        owner != 0 && owner == keeper().owner()
    }

    pub(super) fn unmapping(start: usize, len: usize) {
        let mut k = keeper();
        let inside: Vec<usize> = k
            .linked
            .iter()
            .copied()
            .filter(|a| (start..start.saturating_add(len)).contains(a))
            .collect();
        for addr in inside {
            k.unlink(addr);
        }
    }

    #[cfg(test)]
    pub(super) fn keeper_is_robust() -> bool {
        let mut k = keeper();
        k.owner();
        k.robust
    }

    /// The kernel's view of this process's list: node addresses from `head.next` on.
    #[cfg(test)]
    pub(super) fn kernel_list() -> Vec<usize> {
        let k = keeper();
        let Some(head) = k.head else {
            return Vec::new();
        };
        let end = head as *const Head as usize;
        let mut out = Vec::new();
        let mut cur = head.next.load(Ordering::SeqCst);
        while cur != end && out.len() < 4096 {
            out.push(cur);
            // SAFETY: every address in the kernel's list is a linked node (the invariant the
            // test checks), held by this test.
            cur = unsafe { node_at(cur) }.load(Ordering::SeqCst) as usize;
        }
        out
    }

    /// Marks the word at `offset` as the kernel does when its owner dies.
    #[cfg(test)]
    pub(super) fn simulate_owner_death(region: &Region, offset: usize, waiters: bool) {
        let w = if waiters { WAITERS } else { 0 };
        at(region, offset)
            .word
            .store(OWNER_DIED | w, Ordering::SeqCst);
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    //! A plain futex mutex: 0 free, 1 locked, 2 locked with waiters. Not robust.
    use std::sync::atomic::Ordering;
    use std::time::Instant;

    use super::Acquired;
    use crate::sys::futex;
    use crate::sys::shm::Region;

    pub(super) fn lock(
        region: &Region,
        offset: usize,
        deadline: Option<Instant>,
    ) -> Option<Acquired> {
        let word = region.atomic_u32(offset + 8);
        if try_lock(region, offset).is_some() {
            return Some(Acquired::Clean);
        }
        loop {
            if word.swap(2, Ordering::Acquire) == 0 {
                return Some(Acquired::Clean);
            }
            if !futex::wait(word, 2, deadline) {
                return None;
            }
        }
    }

    pub(super) fn try_lock(region: &Region, offset: usize) -> Option<Acquired> {
        let word = region.atomic_u32(offset + 8);
        word.compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
            .ok()
            .map(|_| Acquired::Clean)
    }

    pub(super) fn unlock(region: &Region, offset: usize) {
        let word = region.atomic_u32(offset + 8);
        if word.swap(0, Ordering::Release) == 2 {
            futex::wake(word, 1);
        }
    }

    pub(super) fn held_here(region: &Region, offset: usize) -> bool {
        // Without owner ids, "held" is the best answer; callers pair it with their own owner
        // fields.
        region.atomic_u32(offset + 8).load(Ordering::Acquire) != 0
    }

    pub(super) fn unmapping(_start: usize, _len: usize) {}

    #[cfg(test)]
    pub(super) fn keeper_is_robust() -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn region(n: usize) -> Region {
        Region::create("robust-test", 64 * n).expect("region")
    }

    fn soon() -> Option<Instant> {
        Some(Instant::now() + Duration::from_secs(30))
    }

    #[test]
    fn lock_unlock_and_try_lock() {
        let r = region(1);
        assert_eq!(lock(&r, 0, soon()), Some(Acquired::Clean));
        assert!(held_here(&r, 0));
        assert_eq!(try_lock(&r, 0), None, "not re-entrant, even in one thread");
        unlock(&r, 0);
        assert!(!held_here(&r, 0));
        assert_eq!(try_lock(&r, 0), Some(Acquired::Clean));
        unlock(&r, 0);
    }

    #[test]
    fn a_deadline_ends_the_wait() {
        let r = region(1);
        assert_eq!(lock(&r, 0, soon()), Some(Acquired::Clean));
        let t = Instant::now();
        let got = std::thread::scope(|s| {
            s.spawn(|| lock(&r, 0, Some(Instant::now() + Duration::from_millis(30))))
                .join()
                .expect("waiter")
        });
        assert_eq!(got, None);
        assert!(t.elapsed() >= Duration::from_millis(30));
        unlock(&r, 0);
    }

    #[test]
    fn threads_contending_count_exactly() {
        let r = region(1);
        let count_at = 32;
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..10_000 {
                        assert!(lock(&r, 0, soon()).is_some(), "lock timed out");
                        let mut b = [0u8; 8];
                        r.read(count_at, &mut b);
                        r.write(count_at, &(u64::from_ne_bytes(b) + 1).to_ne_bytes());
                        unlock(&r, 0);
                    }
                });
            }
        });
        let mut b = [0u8; 8];
        r.read(count_at, &mut b);
        assert_eq!(u64::from_ne_bytes(b), 40_000);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_kernel_list_follows_locks_and_unlocks() {
        assert!(imp::keeper_is_robust(), "set_robust_list refused");
        let r = region(1);
        let base = r.as_ptr() as usize;
        let before = imp::kernel_list();
        for off in [0, 16, 32] {
            assert_eq!(lock(&r, off, soon()), Some(Acquired::Clean));
        }
        let mine = |l: Vec<usize>| -> Vec<usize> {
            l.into_iter()
                .filter(|a| (base..base + 64).contains(a))
                .map(|a| a - base)
                .collect()
        };
        assert_eq!(mine(imp::kernel_list()), [32, 16, 0]);
        unlock(&r, 16);
        assert_eq!(mine(imp::kernel_list()), [32, 0]);
        unlock(&r, 32);
        assert_eq!(mine(imp::kernel_list()), [0]);
        // A forgotten lock leaves the list when its region is unmapped.
        drop(r);
        assert_eq!(imp::kernel_list().len(), before.len());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_dead_owner_makes_the_next_lock_abandoned_once() {
        let r = region(1);
        imp::simulate_owner_death(&r, 0, false);
        assert!(!held_here(&r, 0));
        assert_eq!(try_lock(&r, 0), Some(Acquired::Abandoned));
        unlock(&r, 0);
        assert_eq!(lock(&r, 0, soon()), Some(Acquired::Clean));
        unlock(&r, 0);
        imp::simulate_owner_death(&r, 0, true);
        assert_eq!(lock(&r, 0, soon()), Some(Acquired::Abandoned));
        unlock(&r, 0);
    }
}
