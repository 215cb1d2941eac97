//! [`ForkLocal`]: process-wide state that a forked child never inherits.
//!
//! A child created by `fork` gets a copy of every static, including `Mutex`es that another
//! thread of the parent held at that instant; such a lock stays locked forever in the child.
//! mproc's own globals (the spawner thread, the fork server connection) must keep working in a
//! forked child that starts processes itself, so they live here: each value is stamped with
//! the pid of the process that created it, and a process that finds a foreign stamp makes its
//! own value, never touching the inherited one (or its lock).

use std::sync::Mutex;
use std::sync::atomic::{AtomicPtr, Ordering};

struct Slot<T> {
    owner: i32,
    value: Mutex<T>,
}

/// A `Mutex<T>` per process, created on first use in each process.
pub(crate) struct ForkLocal<T> {
    ptr: AtomicPtr<Slot<T>>,
}

impl<T: Default> ForkLocal<T> {
    /// An empty slot, for a `static`.
    pub(crate) const fn new() -> ForkLocal<T> {
        ForkLocal {
            ptr: AtomicPtr::new(std::ptr::null_mut()),
        }
    }

    /// This process's value.
    pub(crate) fn get(&self) -> &Mutex<T> {
        let me = super::getpid();
        loop {
            let cur = self.ptr.load(Ordering::Acquire);
            // SAFETY: a non-null pointer here always comes from `Box::leak` below and is never
            // freed, so it is valid for 'static (a forked child has its own copy of it).
            if let Some(slot) = unsafe { cur.as_ref() } {
                if slot.owner == me {
                    return &slot.value;
                }
            }
            // First use in this process. The inherited slot (if any) is leaked on purpose: its
            // lock may be held by a thread that does not exist here.
            let fresh = Box::leak(Box::new(Slot {
                owner: me,
                value: Mutex::new(T::default()),
            }));
            if self
                .ptr
                .compare_exchange(cur, fresh, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                // Another thread installed one first: drop ours and use theirs.
                // SAFETY: `fresh` came from `Box::leak` just above and was never shared.
                drop(unsafe { Box::from_raw(fresh as *mut Slot<T>) });
            }
        }
    }
}
