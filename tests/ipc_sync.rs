//! Synchronization primitives across real processes: `Lock`, `RLock`, `Semaphore`, `Event`,
//! `Condition`, `Barrier`. Modelled on the behaviour CPython documents for
//! `multiprocessing`'s synchronization primitives (mutual exclusion, `Barrier` indices,
//! `Event.set` waking every waiter); the abandoned-lock tests are mproc's own promise
//! ("lock holder dies → the next locker gets the lock and is told it was abandoned"). The code
//! is ours.
//!
//! Shared data the primitives guard lives in a temporary file read and written with
//! `pread`/`pwrite`: a read-modify-write there is not atomic, so only the lock keeps a count
//! exact.

mod common;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::LIMIT;
use mproc::{Barrier, Condition, ErrorKind, Event, Lock, Process, RLock, Semaphore, StartMethod};

/// A counter in a temporary file, removed on drop.
struct FileCounter {
    path: PathBuf,
}

impl FileCounter {
    fn new(tag: &str) -> FileCounter {
        let path =
            std::env::temp_dir().join(format!("mproc-ipc-sync-{tag}-{}", std::process::id()));
        std::fs::write(&path, 0u64.to_ne_bytes()).expect("temp file");
        FileCounter { path }
    }

    fn path(&self) -> String {
        self.path.to_string_lossy().into_owned()
    }
}

impl Drop for FileCounter {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn open(path: &str) -> File {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("counter file")
}

fn read(f: &File) -> u64 {
    let mut b = [0u8; 8];
    f.read_exact_at(&mut b, 0).expect("read counter");
    u64::from_ne_bytes(b)
}

fn write(f: &File, v: u64) {
    f.write_all_at(&v.to_ne_bytes(), 0).expect("write counter");
}

fn increment_under_lock((lock, path, n): (Lock, String, u64)) -> u64 {
    let f = open(&path);
    for _ in 0..n {
        let _held = lock.acquire_timeout(LIMIT).expect("lock");
        write(&f, read(&f) + 1);
    }
    n
}

#[test]
fn four_processes_count_exactly_under_a_lock() {
    let _leaks = common::leak_checked();
    let lock = Lock::new().unwrap();
    let counter = FileCounter::new("lock");
    let mut procs: Vec<_> = (0..4)
        .map(|_| {
            Process::spawn(increment_under_lock, (lock.clone(), counter.path(), 10_000)).unwrap()
        })
        .collect();
    for p in &mut procs {
        assert_eq!(p.join_timeout(LIMIT).unwrap(), 10_000);
    }
    assert_eq!(read(&open(&counter.path())), 40_000);
}

fn meet((barrier, arrived): (Barrier, Semaphore)) -> (usize, u32) {
    arrived.release().expect("arrive");
    let r = barrier.wait_timeout(LIMIT).expect("barrier");
    // Nobody passes before everyone arrived.
    (r.index(), arrived.value())
}

#[test]
fn a_barrier_of_four_processes() {
    let _leaks = common::leak_checked();
    let barrier = Barrier::new(4).unwrap();
    let arrived = Semaphore::new(0).unwrap();
    for _round in 0..2 {
        let before = arrived.value();
        let mut procs: Vec<_> = (0..4)
            .map(|_| Process::spawn(meet, (barrier.clone(), arrived.clone())).unwrap())
            .collect();
        let mut indices = Vec::new();
        for p in &mut procs {
            let (index, seen) = p.join_timeout(LIMIT).unwrap();
            assert_eq!(seen, before + 4, "passed the barrier before all arrived");
            indices.push(index);
        }
        indices.sort_unstable();
        assert_eq!(indices, [0, 1, 2, 3]);
    }
    assert_eq!(barrier.n_waiting(), 0);
    assert!(!barrier.is_broken());
}

fn wait_for_event((event, waiting): (Event, Semaphore)) -> bool {
    waiting.release().expect("announce");
    event.wait_timeout(LIMIT)
}

fn set_event_when_all_wait((event, waiting, n): (Event, Semaphore, u32)) -> bool {
    for _ in 0..n {
        waiting.acquire_timeout(LIMIT).expect("waiters").forget();
    }
    event.set();
    true
}

#[test]
fn an_event_set_in_one_process_wakes_three_others() {
    let _leaks = common::leak_checked();
    let event = Event::new().unwrap();
    let waiting = Semaphore::new(0).unwrap();
    let mut waiters: Vec<_> = (0..3)
        .map(|_| Process::spawn(wait_for_event, (event.clone(), waiting.clone())).unwrap())
        .collect();
    let mut setter = Process::spawn(set_event_when_all_wait, (event.clone(), waiting, 3)).unwrap();
    assert!(setter.join_timeout(LIMIT).unwrap());
    for w in &mut waiters {
        assert!(w.join_timeout(LIMIT).unwrap(), "a waiter timed out");
    }
    assert!(event.is_set());
}

const ITEMS: u64 = 200;

fn produce((cond, path): (Condition, String)) -> u64 {
    let f = open(&path);
    for _ in 0..ITEMS {
        let _g = cond.acquire_timeout(LIMIT).expect("lock");
        write(&f, read(&f) + 1);
        cond.notify(1);
    }
    ITEMS
}

fn consume((cond, path): (Condition, String)) -> u64 {
    let f = open(&path);
    let mut taken = 0;
    while taken < ITEMS {
        let g = cond.acquire_timeout(LIMIT).expect("lock");
        let (_g, ready) = cond.wait_for(g, || read(&f) > 0, LIMIT).expect("wait");
        assert!(ready, "the producer stalled");
        write(&f, read(&f) - 1);
        taken += 1;
    }
    taken
}

#[test]
fn a_condition_between_a_producer_and_a_consumer_process() {
    let _leaks = common::leak_checked();
    let cond = Condition::new().unwrap();
    let queue = FileCounter::new("cond");
    let mut consumer = Process::spawn(consume, (cond.clone(), queue.path())).unwrap();
    let mut producer = Process::spawn(produce, (cond.clone(), queue.path())).unwrap();
    assert_eq!(producer.join_timeout(LIMIT).unwrap(), ITEMS);
    assert_eq!(consumer.join_timeout(LIMIT).unwrap(), ITEMS);
    assert_eq!(read(&open(&queue.path())), 0);
}

/// Holds the lock, says so, and waits to be killed (at most `LIMIT`).
fn hold_lock((lock, held, never): (Lock, Event, Event)) -> bool {
    let _g = lock.acquire_timeout(LIMIT).expect("lock");
    held.set();
    never.wait_timeout(LIMIT)
}

fn hold_rlock((lock, held, never): (RLock, Event, Event)) -> bool {
    let _a = lock.acquire_timeout(LIMIT).expect("rlock");
    let _b = lock.acquire_timeout(LIMIT).expect("rlock again");
    held.set();
    never.wait_timeout(LIMIT)
}

fn assert_killed<R: std::fmt::Debug + serde::de::DeserializeOwned>(p: &mut Process<R>) {
    let err = p.join_timeout(LIMIT).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::WorkerDied);
    assert_eq!(err.exit_status().and_then(|s| s.signal()), Some(9));
}

#[test]
fn a_lock_whose_holder_is_killed_is_handed_over_as_abandoned() {
    let _leaks = common::leak_checked();
    for &m in StartMethod::all() {
        let lock = Lock::new().unwrap();
        let (held, never) = (Event::new().unwrap(), Event::new().unwrap());
        let mut p = Process::builder()
            .start_method(m)
            .spawn(hold_lock, (lock.clone(), held.clone(), never.clone()))
            .unwrap();
        assert!(held.wait_timeout(LIMIT), "{m:?}: the holder never held it");
        assert!(lock.try_acquire().is_none(), "{m:?}: held by the child");

        let start = Instant::now();
        p.kill().unwrap();
        let g = lock.acquire_timeout(LIMIT).expect("handed over");
        let latency = start.elapsed();
        eprintln!("{m:?}: abandoned lock handed over {latency:?} after SIGKILL");
        assert!(g.was_abandoned(), "{m:?}: told it was abandoned");
        drop(g);

        let again = lock.acquire_timeout(LIMIT).unwrap();
        assert!(
            !again.was_abandoned(),
            "{m:?}: abandonment is reported once"
        );
        drop(again);
        assert_killed(&mut p);
    }
}

fn wait_for_lock((lock, waiting): (Lock, Event)) -> bool {
    waiting.set();
    lock.acquire_timeout(LIMIT)
        .expect("handed over")
        .was_abandoned()
}

#[test]
fn a_waiting_process_is_woken_when_the_holder_is_killed() {
    let _leaks = common::leak_checked();
    let lock = Lock::new().unwrap();
    let (held, never, waiting) = (
        Event::new().unwrap(),
        Event::new().unwrap(),
        Event::new().unwrap(),
    );
    let mut holder = Process::spawn(hold_lock, (lock.clone(), held.clone(), never)).unwrap();
    assert!(held.wait_timeout(LIMIT));
    let mut waiter = Process::spawn(wait_for_lock, (lock.clone(), waiting.clone())).unwrap();
    assert!(waiting.wait_timeout(LIMIT));
    holder.kill().unwrap();
    assert!(
        waiter.join_timeout(LIMIT).unwrap(),
        "the waiter got the lock and was told it was abandoned"
    );
    assert_killed(&mut holder);
    assert!(!lock.acquire_timeout(LIMIT).unwrap().was_abandoned());
}

#[test]
fn an_rlock_whose_holder_is_killed_is_handed_over_as_abandoned() {
    let _leaks = common::leak_checked();
    for &m in StartMethod::all() {
        let lock = RLock::new().unwrap();
        let (held, never) = (Event::new().unwrap(), Event::new().unwrap());
        let mut p = Process::builder()
            .start_method(m)
            .spawn(hold_rlock, (lock.clone(), held.clone(), never.clone()))
            .unwrap();
        assert!(held.wait_timeout(LIMIT), "{m:?}: the holder never held it");
        let start = Instant::now();
        p.kill().unwrap();
        let outer = lock.acquire_timeout(LIMIT).expect("handed over");
        eprintln!(
            "{m:?}: abandoned RLock handed over {:?} after SIGKILL",
            start.elapsed()
        );
        assert!(outer.was_abandoned(), "{m:?}");
        // Ours now, at depth 1 whatever depth the dead holder had: nesting and full release.
        let inner = lock.acquire_timeout(LIMIT).unwrap();
        assert!(!inner.was_abandoned());
        drop(inner);
        std::thread::scope(|s| {
            s.spawn(|| assert!(lock.try_acquire().is_none(), "still held once"));
        });
        drop(outer);
        std::thread::scope(|s| {
            s.spawn(|| assert!(lock.try_acquire().is_some(), "released"));
        });
        assert_killed(&mut p);
    }
}

fn barrier_timeout(b: Barrier) -> (bool, bool) {
    let err = b.wait_timeout(Duration::from_millis(50)).unwrap_err();
    (err.is_timeout(), b.is_broken())
}

#[test]
fn a_barrier_waiter_timing_out_in_another_process_breaks_it() {
    let _leaks = common::leak_checked();
    let b = Barrier::new(2).unwrap();
    let mut p = Process::spawn(barrier_timeout, b.clone()).unwrap();
    assert_eq!(p.join_timeout(LIMIT).unwrap(), (true, true));
    assert_eq!(b.wait_timeout(LIMIT).unwrap_err().kind(), ErrorKind::Broken);
    b.reset().unwrap();
    assert!(!b.is_broken());
}

/// Holds `a` in a second thread and `b` in the main thread, then waits to be killed.
fn hold_two_in_two_threads((a, b, held, never): (Lock, Lock, Semaphore, Event)) -> bool {
    std::thread::scope(|s| {
        s.spawn(|| {
            let _a = a.acquire_timeout(LIMIT).expect("a");
            held.release().expect("held");
            never.wait_timeout(LIMIT)
        });
        let _b = b.acquire_timeout(LIMIT).expect("b");
        held.release().expect("held");
        never.wait_timeout(LIMIT)
    })
}

#[test]
fn every_lock_of_a_killed_process_is_released_whichever_thread_held_it() {
    let _leaks = common::leak_checked();
    let (a, b) = (Lock::new().unwrap(), Lock::new().unwrap());
    let (held, never) = (Semaphore::new(0).unwrap(), Event::new().unwrap());
    let mut p = Process::spawn(
        hold_two_in_two_threads,
        (a.clone(), b.clone(), held.clone(), never),
    )
    .unwrap();
    for _ in 0..2 {
        held.acquire_timeout(LIMIT).unwrap().forget();
    }
    p.kill().unwrap();
    assert!(a.acquire_timeout(LIMIT).unwrap().was_abandoned(), "a");
    assert!(b.acquire_timeout(LIMIT).unwrap().was_abandoned(), "b");
    assert_killed(&mut p);
}
