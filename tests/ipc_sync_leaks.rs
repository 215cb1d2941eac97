//! Synchronization objects leave nothing behind: no fd, no `/dev/shm` entry, no process —
//! even when a process holding a lock is SIGKILLed. Alone in its file so that no other test
//! opens fds while it counts them.

mod common;

use common::{LIMIT, children, open_fds, shm_entries};
use mproc::{Barrier, BoundedSemaphore, Condition, Event, Lock, Process, RLock, Semaphore};

type All = (
    Lock,
    RLock,
    Semaphore,
    BoundedSemaphore,
    Event,
    Condition,
    Barrier,
);

fn touch_all((lock, rlock, sem, bsem, event, cond, barrier): All) -> bool {
    drop(lock.acquire_timeout(LIMIT).expect("lock"));
    drop(rlock.acquire_timeout(LIMIT).expect("rlock"));
    drop(sem.acquire_timeout(LIMIT).expect("sem"));
    drop(bsem.acquire_timeout(LIMIT).expect("bsem"));
    event.set();
    cond.notify_all();
    barrier.wait_timeout(LIMIT).expect("barrier");
    true
}

fn hold_and_wait((lock, held): (Lock, Event)) -> bool {
    let _g = lock.acquire_timeout(LIMIT).expect("lock");
    held.set();
    Event::new().expect("event").wait_timeout(LIMIT)
}

fn square(x: u64) -> u64 {
    x * x
}

#[test]
fn sync_objects_leave_nothing_behind() {
    // Warm up: the spawner thread, the fork server and this process's lock keeper thread
    // live as long as the process.
    Process::spawn(square, 1)
        .unwrap()
        .join_timeout(LIMIT)
        .unwrap();
    drop(Lock::new().unwrap().acquire().unwrap());
    let (fds, kids, shm) = (open_fds(), children(), shm_entries());

    for _ in 0..3 {
        let all: All = (
            Lock::new().unwrap(),
            RLock::new().unwrap(),
            Semaphore::new(1).unwrap(),
            BoundedSemaphore::new(1).unwrap(),
            Event::new().unwrap(),
            Condition::new().unwrap(),
            Barrier::new(2).unwrap(),
        );
        let mut p = Process::spawn(touch_all, all.clone()).unwrap();
        all.6.wait_timeout(LIMIT).unwrap();
        assert!(p.join_timeout(LIMIT).unwrap());
        assert!(all.4.is_set());

        let (lock, held) = (Lock::new().unwrap(), Event::new().unwrap());
        let mut p = Process::spawn(hold_and_wait, (lock.clone(), held.clone())).unwrap();
        assert!(held.wait_timeout(LIMIT));
        p.kill().unwrap();
        assert!(lock.acquire_timeout(LIMIT).unwrap().was_abandoned());
        assert!(p.join_timeout(LIMIT).is_err());
    }

    assert_eq!(open_fds(), fds, "no fd leaked");
    assert_eq!(children(), kids, "no child left");
    assert_eq!(shm_entries(), shm, "no /dev/shm entry left");
}
