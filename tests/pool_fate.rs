//! One fate per item, on every path: a crash, a timeout or a retry touches only its own item,
//! wherever it sits in a chunk, through `map` (automatic chunks), `map_chunked`, `map_async`,
//! `starmap`, `map_captured`, `imap` / `imap_unordered` with a chunk size, `apply` (the fast
//! path, a borrowed worker) and `apply_async`.
//!
//! Every task appends its item to a log file (`O_APPEND`: one `write` per line, whole), so
//! each test can count how many times each item ran: finished items never run again, the
//! items after a crash run once, only the crashing item is re-run (with retries).

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, mpsc};
use std::time::Duration;

use common::LIMIT;
use mproc::{ErrorKind, Pool};

const LOG: &str = "MPROC_FATE_LOG";

/// Appends `x` to this test's log (the path is in the workers' environment).
fn log(x: u64) {
    let path = std::env::var(LOG).expect("the pool sets the log path");
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .expect("the log opens");
    f.write_all(format!("{x}\n").as_bytes())
        .expect("the log takes a line");
}

/// A log file of its own for one test, removed at the end.
struct Log(PathBuf);

impl Log {
    fn new(name: &str) -> Log {
        let path = std::env::temp_dir().join(format!(
            "mproc-fate-{}-{name}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        let _ = std::fs::remove_file(&path);
        Log(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().expect("a UTF-8 temp path")
    }

    /// How many times each item ran.
    fn runs(&self) -> HashMap<u64, usize> {
        let text = std::fs::read_to_string(&self.0).unwrap_or_default();
        let mut runs = HashMap::new();
        for line in text.lines() {
            *runs
                .entry(line.parse().expect("a logged item"))
                .or_default() += 1;
        }
        runs
    }

    /// Asserts every item in `0..n` ran exactly once, except those listed with their counts.
    fn assert_runs(&self, n: u64, except: &[(u64, usize)]) {
        let runs = self.runs();
        for x in 0..n {
            let want = except.iter().find(|(e, _)| *e == x).map_or(1, |(_, c)| *c);
            assert_eq!(
                runs.get(&x).copied().unwrap_or(0),
                want,
                "runs of item {x}: {runs:?}"
            );
        }
    }

    /// A marker that exists once `f` made it: for "the first time only" behaviour.
    fn marker(tag: u64) -> PathBuf {
        PathBuf::from(format!(
            "{}.once-{tag}",
            std::env::var(LOG).expect("log path")
        ))
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
        for tag in 0..1000 {
            let _ = std::fs::remove_file(format!("{}.once-{tag}", self.0.display()));
        }
    }
}

fn pool(log: &Log, processes: usize) -> mproc::PoolBuilder {
    Pool::builder().processes(processes).env(LOG, log.path())
}

/// Runs `f` on a thread of its own and waits at most `LIMIT` for it: a hang fails the test
/// instead of hanging it (for calls that have no timeout of their own, like `apply`).
fn bounded<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(LIMIT)
        .expect("the call returned within the limit")
}

fn abort_at_3(x: u64) -> u64 {
    log(x);
    if x == 3 {
        std::process::abort();
    }
    x * 10
}

fn abort_pair_at_3(a: u64, b: u64) -> u64 {
    abort_at_3(a) + b
}

/// Dies (SIGKILL) the first time it runs item `x == 3`, then behaves.
fn die_once_at_3(x: u64) -> u64 {
    log(x);
    if x == 3 {
        let marker = Log::marker(3);
        if std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&marker)
            .is_ok()
        {
            // SAFETY: SIGKILL to this very process (a worker).
            unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
        }
    }
    x * 10
}

fn assert_aborted(e: &mproc::Error) {
    assert_eq!(e.kind(), ErrorKind::WorkerDied, "{e}");
    assert_eq!(
        e.exit_status().and_then(|s| s.signal()),
        Some(libc::SIGABRT),
        "{e}"
    );
}

#[test]
fn a_crash_mid_chunk_fails_only_its_item_on_every_map_path() {
    let _leaks = common::leak_checked();
    // 40 items on 2 workers: automatic chunks of 5, so item 3 is in the middle of the first.
    let items: Vec<u64> = (0..40).collect();
    let pairs: Vec<(u64, u64)> = items.iter().map(|&x| (x, 1)).collect();
    type Run = Box<dyn Fn(&Pool) -> mproc::Result<Vec<u64>>>;
    let paths: Vec<(&str, Run)> = vec![
        ("map", {
            let items = items.clone();
            Box::new(move |p: &Pool| p.map_async(abort_at_3, items.clone()).get_timeout(LIMIT))
        }),
        ("starmap", {
            let pairs = pairs.clone();
            // Not `abort_pair_at_3` alone: see `StarArgs` (clippy's suggestion does not compile).
            #[allow(clippy::redundant_closure)]
            let run: Run =
                Box::new(move |p: &Pool| p.starmap(|a, b| abort_pair_at_3(a, b), &pairs));
            run
        }),
        ("map_captured", {
            let items = items.clone();
            Box::new(move |p: &Pool| {
                p.map_captured(abort_at_3, items.clone())
                    .map(|v| v.into_iter().map(|c| c.value).collect())
            })
        }),
    ];
    for (name, run) in paths {
        let log = Log::new(name);
        let pool = pool(&log, 2).build().unwrap();
        let e = run(&pool).expect_err("item 3 aborts");
        assert_aborted(&e);
        drop(pool);
        log.assert_runs(40, &[]);
    }
    // `map_chunked` has no timeout of its own: bounded by a thread.
    let log = Log::new("map_chunked");
    let pool = Arc::new(pool(&log, 2).build().unwrap());
    let p = Arc::clone(&pool);
    let got = bounded(move || p.map_chunked(abort_at_3, 0..40, 10));
    assert_aborted(&got.expect_err("item 3 aborts"));
    drop(pool);
    log.assert_runs(40, &[]);
}

#[test]
fn imap_with_chunks_gives_the_crashing_item_alone_its_death() {
    let _leaks = common::leak_checked();
    for unordered in [false, true] {
        let log = Log::new("imap");
        let pool = pool(&log, 2).chunksize(10).build().unwrap();
        let mut results: Vec<(u64, mproc::Result<u64>)> = Vec::new();
        if unordered {
            let mut it = pool.imap_unordered(abort_at_3, 0..20);
            while let Some(r) = it.next_timeout(LIMIT) {
                // Unordered: an item is known by its value (x * 10), the failure by its kind.
                let x = r.as_ref().map_or(3, |v| v / 10);
                results.push((x, r));
            }
        } else {
            let mut it = pool.imap(abort_at_3, 0..20);
            let mut x = 0;
            while let Some(r) = it.next_timeout(LIMIT) {
                results.push((x, r));
                x += 1;
            }
        }
        assert_eq!(results.len(), 20);
        for (x, r) in &results {
            match r {
                Ok(v) => assert_eq!(*v, x * 10),
                Err(e) => {
                    assert_eq!(*x, 3, "only item 3 fails: {e}");
                    assert_aborted(e);
                }
            }
        }
        assert_eq!(results.iter().filter(|(_, r)| r.is_err()).count(), 1);
        drop(pool);
        log.assert_runs(20, &[]);
    }
}

#[test]
fn a_retry_reruns_only_the_item_that_was_running() {
    let _leaks = common::leak_checked();
    // Automatic chunks (100 items on 2 workers: chunks of 13), `map_chunked`, and `imap`.
    for path in ["map", "map_chunked", "imap"] {
        let log = Log::new(path);
        let pool = Arc::new(pool(&log, 2).max_retries(2).build().unwrap());
        let got: Vec<u64> = match path {
            "map" => pool
                .map_async(die_once_at_3, 0..100)
                .get_timeout(LIMIT)
                .unwrap(),
            "map_chunked" => {
                let p = Arc::clone(&pool);
                bounded(move || p.map_chunked(die_once_at_3, 0..100, 20)).unwrap()
            }
            _ => {
                let mut it = pool.imap(die_once_at_3, 0..100);
                let mut out = Vec::new();
                while let Some(r) = it.next_timeout(LIMIT) {
                    out.push(r.unwrap());
                }
                out
            }
        };
        assert_eq!(got, (0..100).map(|x| x * 10).collect::<Vec<_>>(), "{path}");
        drop(pool);
        // 101 runs in all: item 3 twice, every other item once.
        log.assert_runs(100, &[(3, 2)]);
    }
}

fn poison_7(x: u64) -> u64 {
    log(x);
    if x == 7 {
        // SAFETY: SIGKILL to this very process (a worker).
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
    x
}

#[test]
fn a_poison_item_spends_its_own_retries_and_fails_alone() {
    let _leaks = common::leak_checked();
    let log = Log::new("poison");
    let pool = pool(&log, 2).max_retries(2).chunksize(20).build().unwrap();
    let mut it = pool.imap(poison_7, 0..20);
    let mut results = Vec::new();
    while let Some(r) = it.next_timeout(LIMIT) {
        results.push(r);
    }
    assert_eq!(results.len(), 20);
    for (x, r) in results.iter().enumerate() {
        match r {
            Ok(v) => assert_eq!(*v, x as u64),
            Err(e) => {
                assert_eq!(x, 7, "{e}");
                assert_eq!(e.kind(), ErrorKind::WorkerDied);
                assert_eq!(
                    e.exit_status().and_then(|s| s.signal()),
                    Some(libc::SIGKILL)
                );
            }
        }
    }
    assert_eq!(results.iter().filter(|r| r.is_err()).count(), 1);
    drop(it);
    drop(pool);
    // The poison item ran three times (once and two retries); the others once each.
    log.assert_runs(20, &[(7, 3)]);
}

fn nap_20ms(x: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(20));
    x
}

#[test]
fn task_timeout_is_per_item_wherever_it_sits_in_a_chunk() {
    let _leaks = common::leak_checked();
    // Automatic chunks of 25 items of 20 ms each: 500 ms a chunk, 20 ms an item.
    let pool = Pool::builder()
        .processes(2)
        .task_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let got = pool.map_async(nap_20ms, 0..200).get_timeout(LIMIT).unwrap();
    assert_eq!(got, (0..200).collect::<Vec<_>>());
    // An item that overruns fails alone, in the middle of its chunk.
    let mut it = pool.imap(sleep_if_5, 0..10);
    let mut results = Vec::new();
    while let Some(r) = it.next_timeout(LIMIT) {
        results.push(r);
    }
    drop(it);
    let pool = Pool::builder()
        .processes(2)
        .chunksize(10)
        .task_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let mut it = pool.imap(sleep_if_5, 0..10);
    let mut chunked = Vec::new();
    while let Some(r) = it.next_timeout(LIMIT) {
        chunked.push(r);
    }
    for results in [results, chunked] {
        assert_eq!(results.len(), 10);
        for (x, r) in results.iter().enumerate() {
            if x == 5 {
                assert!(r.as_ref().unwrap_err().is_timeout(), "{r:?}");
            } else {
                assert_eq!(*r.as_ref().unwrap(), x as u64);
            }
        }
    }
}

fn sleep_if_5(x: u64) -> u64 {
    if x == 5 {
        std::thread::sleep(Duration::from_secs(60));
    }
    nap_20ms(x)
}

fn abort_if_odd(x: u64) -> u64 {
    if x % 2 == 1 {
        std::process::abort();
    }
    x
}

#[test]
fn tasks_that_kill_their_worker_never_break_the_pool_through_apply() {
    let _leaks = common::leak_checked();
    let pool = Arc::new(Pool::new(1).unwrap());
    for i in 0..12u64 {
        let p = Arc::clone(&pool);
        let got = bounded(move || p.apply(abort_if_odd, i));
        if i % 2 == 1 {
            assert_aborted(&got.expect_err("odd items abort"));
        } else {
            assert_eq!(got.expect("healthy tasks run, whatever came before"), i);
        }
        let mut h = pool.apply_async(abort_if_odd, i);
        match h.get_timeout(LIMIT) {
            Ok(v) => assert_eq!(v, i),
            Err(e) => {
                assert_eq!(i % 2, 1);
                assert_aborted(&e);
            }
        }
    }
}

#[test]
fn a_retry_through_apply_and_apply_async_reruns_the_task_once() {
    let _leaks = common::leak_checked();
    for path in ["apply", "apply_async"] {
        let log = Log::new(path);
        let pool = Arc::new(pool(&log, 1).max_retries(1).build().unwrap());
        let got = if path == "apply" {
            let p = Arc::clone(&pool);
            bounded(move || p.apply(die_once_at_3, 3))
        } else {
            let mut h = pool.apply_async(die_once_at_3, 3);
            h.get_timeout(LIMIT)
        };
        assert_eq!(got.unwrap(), 30, "{path}");
        drop(pool);
        assert_eq!(log.runs().get(&3).copied(), Some(2), "{path}");
    }
}

fn always_abort(_: u64) -> u64 {
    std::process::abort()
}

fn triple(x: u64) -> u64 {
    x * 3
}

#[test]
fn the_apply_fast_path_counts_a_crash_as_the_tasks_failure_not_a_broken_pool() {
    let _leaks = common::leak_checked();
    // The report's recipe: `Pool(1)`, then { a pause; `apply(a task that aborts)` } again and
    // again. The pause stands for the user's program doing something else between calls — it
    // orders nothing here, any length gives the same result — and it lets the replacement
    // worker be lent to `apply`, the path that used to count each crash as a worker that
    // cannot start, and broke the pool on the fifth call.
    let pool = Arc::new(Pool::new(1).unwrap());
    for i in 0..6 {
        std::thread::sleep(Duration::from_millis(50));
        let p = Arc::clone(&pool);
        let e = bounded(move || p.apply(always_abort, i)).expect_err("it aborts");
        assert_aborted(&e);
    }
    let p = Arc::clone(&pool);
    assert_eq!(bounded(move || p.apply(triple, 5)).unwrap(), 15);
}

fn nothing(_: u64) {}

#[test]
fn items_whose_results_encode_to_no_bytes_still_count() {
    let _leaks = common::leak_checked();
    // `()` encodes to no byte at all: a chunk of them is its item count and nothing else.
    let pool = Pool::builder().processes(2).chunksize(7).build().unwrap();
    let got = pool.map_async(nothing, 0..50).get_timeout(LIMIT).unwrap();
    assert_eq!(got.len(), 50);
    let mut it = pool.imap(nothing, 0..20);
    let mut n = 0;
    while let Some(r) = it.next_timeout(LIMIT) {
        r.unwrap();
        n += 1;
    }
    assert_eq!(n, 20);
}

fn abort_at_300(x: u64) -> u64 {
    log(x);
    if x == 300 {
        std::process::abort();
    }
    x * 10
}

/// Dies (SIGKILL) the first time it runs item 300, then behaves.
fn die_once_at_300(x: u64) -> u64 {
    log(x);
    if x == 300
        && std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(Log::marker(300))
            .is_ok()
    {
        // SAFETY: SIGKILL to this very process (a worker).
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
    x * 10
}

fn sleep_if_300(x: u64) -> u64 {
    if x == 300 {
        std::thread::sleep(Duration::from_secs(60));
    }
    x
}

/// `map_chunked(.., 1)` of fast tasks: the pool merges one-item chunks into runs on their way
/// to a worker (a transport detail). Deep in such a map, where the runs are long, a crash, a
/// retry and a timeout still touch only their own item.
#[test]
fn one_item_chunks_keep_one_fate_per_item_when_merged_in_transport() {
    let _leaks = common::leak_checked();
    let n = 1000;
    // A crash fails its item (the first failure, so the map's error names it); every other
    // item ran once.
    let log = Log::new("merged-crash");
    let crashing = Arc::new(pool(&log, 2).build().unwrap());
    let p = Arc::clone(&crashing);
    let e = bounded(move || p.map_chunked(abort_at_300, 0..n, 1)).expect_err("item 300 aborts");
    assert_aborted(&e);
    assert_eq!(e.index(), Some(300), "{e}");
    drop(crashing);
    log.assert_runs(n, &[]);

    // With a retry, only the item that was running runs again.
    let log = Log::new("merged-retry");
    let retrying = Arc::new(pool(&log, 2).max_retries(1).build().unwrap());
    let p = Arc::clone(&retrying);
    let got = bounded(move || p.map_chunked(die_once_at_300, 0..n, 1)).unwrap();
    assert_eq!(got, (0..n).map(|x| x * 10).collect::<Vec<_>>());
    drop(retrying);
    log.assert_runs(n, &[(300, 2)]);

    // A timeout fails its item alone; the pool's chunk size 1 reaches `map_async` too.
    let pool = Pool::builder()
        .processes(2)
        .chunksize(1)
        .task_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let e = pool
        .map_async(sleep_if_300, 0..n)
        .get_timeout(LIMIT)
        .expect_err("item 300 overruns");
    assert!(e.is_timeout(), "{e}");
    assert_eq!(e.index(), Some(300), "{e}");
    let again = pool.map_chunked(sleep_if_300, (0..n).filter(|&x| x != 300), 1);
    assert_eq!(again.unwrap().len(), n as usize - 1, "the pool goes on");
}
