//! `Queue`, `JoinableQueue` and `SimpleQueue` across processes. The scenarios follow the
//! documented behaviour of CPython's `multiprocessing.Queue` (FIFO, `qsize`, `Full`/`Empty`
//! with timeouts, `JoinableQueue.task_done/join`), plus what Python gets wrong: a producer
//! killed mid-put neither loses nor corrupts the queue, and nothing outlives the processes.

mod common;

use std::time::Duration;

use common::{LIMIT, Leaks, serial};
use mproc::{ErrorKind, JoinableQueue, Pool, Process, Queue, SimpleQueue, StartMethod};

fn produce((q, p, n): (Queue<u64>, u64, u64)) {
    for i in 0..n {
        q.put_timeout(p * 1_000_000 + i, LIMIT).unwrap();
    }
}

fn consume(q: Queue<u64>) -> Vec<u64> {
    let mut got = Vec::new();
    loop {
        match q.get_timeout(LIMIT) {
            Ok(v) => got.push(v),
            Err(e) if e.kind() == ErrorKind::Closed => return got,
            Err(e) => panic!("consumer: {e}"),
        }
    }
}

/// 4 producer processes x 100,000 messages through one queue into 2 consumer processes:
/// every message arrives exactly once.
#[test]
fn four_producers_two_consumers_every_message_exactly_once() {
    let _s = serial();
    let leaks = Leaks::start();
    const N: u64 = 100_000;
    let q = Queue::bounded(10_000).unwrap();
    let consumers: Vec<Process<Vec<u64>>> = (0..2)
        .map(|_| Process::spawn(consume, q.clone()).unwrap())
        .collect();
    let producers: Vec<Process<()>> = (0..4)
        .map(|p| Process::spawn(produce, (q.clone(), p, N)).unwrap())
        .collect();
    for mut p in producers {
        p.join_timeout(LIMIT).unwrap();
    }
    q.close();
    let mut all = Vec::new();
    let mut per_consumer = Vec::new();
    for mut c in consumers {
        let got = c.join_timeout(LIMIT).unwrap();
        per_consumer.push(got.len());
        all.extend(got);
    }
    println!("consumers took {per_consumer:?}");
    all.sort_unstable();
    let want: Vec<u64> = (0..4)
        .flat_map(|p| (0..N).map(move |i| p * 1_000_000 + i))
        .collect();
    assert_eq!(all.len(), want.len(), "every message once");
    assert!(all == want, "the same messages");
    drop(q);
    leaks.check();
}

fn put_into_full((q, ready): (Queue<u8>, Queue<bool>)) -> bool {
    let timed_out = q
        .put_timeout(1, Duration::from_millis(50))
        .unwrap_err()
        .kind()
        == ErrorKind::TimedOut;
    let full = q.try_put(1).unwrap_err().kind() == ErrorKind::Full;
    ready.put(true).unwrap();
    q.put_timeout(2, LIMIT).unwrap(); // waits until the parent takes one
    timed_out && full
}

/// A full bounded queue makes `put` wait in another process, `put_timeout` time out and
/// `try_put` fail at once, as documented.
#[test]
fn bounded_queue_blocks_and_times_out_across_processes() {
    let _s = serial();
    let leaks = Leaks::start();
    for &m in StartMethod::all() {
        let q = Queue::bounded(1).unwrap();
        let ready = Queue::new().unwrap();
        q.put(0u8).unwrap();
        let mut p = Process::builder()
            .start_method(m)
            .spawn(put_into_full, (q.clone(), ready.clone()))
            .unwrap();
        assert!(ready.get_timeout(LIMIT).unwrap());
        assert_eq!(q.get_timeout(LIMIT).unwrap(), 0);
        assert_eq!(q.get_timeout(LIMIT).unwrap(), 2, "{m:?}");
        assert!(
            p.join_timeout(LIMIT).unwrap(),
            "{m:?}: timeout and full were reported"
        );
    }
    leaks.check();
}

fn put_forever((q, started): (Queue<Vec<u64>>, Queue<u32>)) {
    started.put(std::process::id()).unwrap();
    let mut i = 0u64;
    loop {
        // Sizes vary so that kills land in the middle of copies of every length.
        let v = vec![i; (i % 97) as usize];
        if q.put_timeout(v, LIMIT).is_err() {
            return;
        }
        i += 1;
    }
}

/// Producers SIGKILLed in the middle of puts: the queue stays consistent (every value decodes,
/// none is torn), keeps working, and nothing is left behind.
#[test]
fn producers_killed_mid_put_leave_a_working_queue_and_no_leftovers() {
    let _s = serial();
    let leaks = Leaks::start();
    let q = Queue::with_capacity(0, 64 << 10).unwrap();
    let started = Queue::new().unwrap();
    for round in 0..5 {
        let mut ps: Vec<Process<()>> = (0..2)
            .map(|_| Process::spawn(put_forever, (q.clone(), started.clone())).unwrap())
            .collect();
        for _ in 0..2 {
            started.get_timeout(LIMIT).unwrap();
        }
        // Let them run into a full ring and fight over the lock, consuming meanwhile.
        for _ in 0..200 + round * 100 {
            let v = q.get_timeout(LIMIT).unwrap();
            assert!(
                v.iter().all(|&x| x == v.first().copied().unwrap_or(0)),
                "torn value"
            );
        }
        for p in &mut ps {
            p.kill().unwrap();
            p.join_timeout(LIMIT).unwrap_err();
        }
        while let Ok(v) = q.get_timeout(Duration::from_millis(100)) {
            assert!(
                v.iter().all(|&x| x == v.first().copied().unwrap_or(0)),
                "torn value"
            );
        }
    }
    q.put_timeout(vec![1, 1], LIMIT).unwrap();
    assert_eq!(q.get_timeout(LIMIT).unwrap(), vec![1, 1], "still works");
    drop((q, started));
    leaks.check();
}

fn put_growing((q, started): (JoinableQueue<Vec<u64>>, Queue<u32>)) {
    started.put(std::process::id()).unwrap();
    let mut i = 0u64;
    loop {
        // Up to 80 KB a value: the ring, 64 KiB to start, grows while the kills land.
        let v = vec![i; (i % 101 * 100) as usize];
        if q.put_timeout(v, LIMIT).is_err() {
            return;
        }
        i += 1;
    }
}

/// Bytes of the largest mapping of a queue's file in this process (its ring).
fn largest_queue_mapping() -> u64 {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    maps.lines()
        .filter(|l| l.contains("/memfd:mproc-Queue"))
        .filter_map(|l| {
            let (a, b) = l.split_whitespace().next()?.split_once('-')?;
            Some(u64::from_str_radix(b, 16).ok()? - u64::from_str_radix(a, 16).ok()?)
        })
        .max()
        .unwrap_or(0)
}

fn untorn(v: &[u64]) -> bool {
    v.iter().all(|&x| x == v.first().copied().unwrap_or(0))
}

/// Producers SIGKILLed mid-put while their puts grow the ring (the parent remapping it as it
/// grows): every value whole, and the unfinished count of the `JoinableQueue` exact — after a
/// `task_done` per value taken, `join` returns and one more `task_done` is refused.
#[test]
fn producers_killed_while_the_ring_grows_leave_an_exact_joinable_queue() {
    let _s = serial();
    let leaks = Leaks::start();
    let q = JoinableQueue::new().unwrap();
    let started = Queue::new().unwrap();
    let mut taken = 0u64;
    for round in 0..4 {
        let mut ps: Vec<Process<()>> = (0..2)
            .map(|_| Process::spawn(put_growing, (q.clone(), started.clone())).unwrap())
            .collect();
        for _ in 0..2 {
            started.get_timeout(LIMIT).unwrap();
        }
        for _ in 0..100 + round * 100 {
            let v = q.get_timeout(LIMIT).unwrap();
            assert!(untorn(&v), "torn value");
            taken += 1;
        }
        for p in &mut ps {
            p.kill().unwrap();
            p.join_timeout(LIMIT).unwrap_err();
        }
        while let Ok(v) = q.get_timeout(Duration::from_millis(100)) {
            assert!(untorn(&v), "torn value");
            taken += 1;
        }
    }
    let ring = largest_queue_mapping();
    assert!(ring > 64 << 10, "the ring grew: {ring} bytes mapped");
    for _ in 0..taken {
        q.task_done().unwrap();
    }
    q.join_timeout(LIMIT)
        .expect("every value taken is done: nothing unfinished");
    assert_eq!(
        q.task_done().unwrap_err().kind(),
        ErrorKind::Usage,
        "no value is unfinished"
    );
    println!("{taken} values through a ring grown to {ring} bytes under SIGKILLs");
    drop((q, started));
    leaks.check();
}

fn work_through(q: JoinableQueue<u32>) -> u32 {
    let mut n = 0;
    while let Ok(x) = q.get_timeout(LIMIT) {
        n += x;
        q.task_done().unwrap();
    }
    n
}

/// `JoinableQueue::join` returns once a consumer in another process marked every value done.
#[test]
fn joinable_queue_join_waits_for_task_done_in_another_process() {
    let _s = serial();
    let leaks = Leaks::start();
    let q = JoinableQueue::new().unwrap();
    let mut c = Process::spawn(work_through, q.clone()).unwrap();
    for i in 1..=100 {
        q.put(i).unwrap();
    }
    q.join_timeout(LIMIT).unwrap();
    assert!(q.is_empty());
    q.close();
    assert_eq!(c.join_timeout(LIMIT).unwrap(), 5050);
    drop(q);
    leaks.check();
}

fn report((q, x): (SimpleQueue<u64>, u64)) -> u64 {
    q.put(x * 10).unwrap();
    x
}

fn remember(q: SimpleQueue<u64>) {
    q.put(u64::MAX).unwrap();
}

/// Queues travel to pool tasks and to the pool's initializer (Python's
/// `Pool(initializer=init, initargs=(queue,))` idiom), under every start method.
#[test]
fn queues_reach_pool_tasks_and_the_initializer() {
    let _s = serial();
    let leaks = Leaks::start();
    for &m in StartMethod::all() {
        let q = SimpleQueue::new().unwrap();
        let pool = Pool::builder()
            .processes(2)
            .start_method(m)
            .initializer(remember, q.clone())
            .build()
            .unwrap();
        let args: Vec<_> = (0..50).map(|i| (q.clone(), i)).collect();
        assert_eq!(pool.map(report, args).unwrap(), (0..50).collect::<Vec<_>>());
        assert_eq!(pool.apply(report, (q.clone(), 7)).unwrap(), 7);
        pool.close();
        pool.join().unwrap();
        let mut got = Vec::new();
        while !q.is_empty() {
            got.push(q.get().unwrap());
        }
        got.sort_unstable();
        let inits = got.iter().filter(|&&v| v == u64::MAX).count();
        assert!(
            inits >= 2,
            "{m:?}: every worker ran the initializer ({inits})"
        );
        let mut want: Vec<u64> = (0..50).map(|i| i * 10).collect();
        want.push(70);
        want.sort_unstable();
        assert_eq!(&got[..got.len() - inits], &want[..], "{m:?}");
    }
    leaks.check();
}

/// A handle inside a value put on a queue is refused clearly, and the value comes back.
#[test]
fn handles_cannot_ride_inside_queue_values() {
    let q: Queue<Queue<u8>> = Queue::new().unwrap();
    let inner = Queue::new().unwrap();
    let e = q.put(inner).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Codec);
    assert!(e.to_string().contains("can travel only"), "{e}");
    let _inner: Queue<u8> = e.into_inner();
}
