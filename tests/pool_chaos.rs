//! Chaos: a 100,000-task map while a thread SIGKILLs a random worker every 50 ms (and, for
//! chunked maps, every 20 ms).
//!
//! With `max_retries`, every result is correct and the map finishes. Without, only tasks that
//! were running on killed workers fail, each with SIGKILL, at most one per kill; all others
//! are correct. With `task_timeout` and endless tasks mixed in, every endless task fails with
//! `TimedOut` and every other one is correct. Alone in its binary: the killer picks its
//! victims among this process's children.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::{LIMIT, children, eventually, mapped_regions, open_fds, shm_entries};
use mproc::{Pool, StartMethod};

const TASKS: u64 = 100_000;

fn work(x: u64) -> u64 {
    // A few microseconds of work, so that kills land mid-task.
    let mut h = x;
    for _ in 0..200 {
        h = std::hint::black_box(h.wrapping_mul(6364136223846793005).wrapping_add(1));
    }
    std::hint::black_box(h);
    x * 2
}

/// Kills a random child (a worker) every 50 ms until told to stop; returns the kill count.
fn killer(stop: &AtomicBool, kills: &AtomicUsize) {
    killer_every(Duration::from_millis(50), stop, kills)
}

/// Kills a random child (a worker) every `period` until told to stop.
fn killer_every(period: Duration, stop: &AtomicBool, kills: &AtomicUsize) {
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(period);
        let kids = children();
        if kids.is_empty() {
            continue;
        }
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let victim = kids[(seed % kids.len() as u64) as usize];
        // SAFETY: SIGKILL to one of our own children, listed just now from /proc.
        if unsafe { libc::kill(victim as i32, libc::SIGKILL) } == 0 {
            kills.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// About one task in 30,000 never ends, at scattered positions (a multiplicative hash).
fn is_endless(x: u64) -> bool {
    x.wrapping_mul(0x9e37_79b9_7f4a_7c15) % 30_000 == 0
}

fn work_or_hang(x: u64) -> u64 {
    if is_endless(x) {
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    work(x)
}

struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// What the chaos could leak, counted before a scenario. Not `common::Leaks`: that starts the
/// fork server, which the killer would then strike.
struct Counts(usize, Vec<u32>, usize, usize);

impl Counts {
    fn now() -> Counts {
        Counts(open_fds(), children(), shm_entries(), mapped_regions())
    }

    /// Asserts that every worker is reaped and every fd closed once the pool is dropped.
    fn check(self) {
        assert!(
            eventually(LIMIT, || children() == self.1),
            "children left: {:?}",
            children()
        );
        assert_eq!(
            (open_fds(), shm_entries(), mapped_regions()),
            (self.0, self.2, self.3),
            "fds, /dev/shm entries, mapped regions"
        );
    }
}

/// The scenarios must not run at once: each killer would strike the other's workers.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn chaos(retries: u32) -> (usize, usize, usize) {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let before = Counts::now();
    // Spawn workers: no fork server among the children, so every victim is a worker.
    let pool = Pool::builder()
        .processes(3)
        .start_method(StartMethod::Spawn)
        .max_retries(retries)
        .build()
        .unwrap();
    let stop = AtomicBool::new(false);
    let kills = AtomicUsize::new(0);
    let (mut ok, mut failed) = (0, 0);
    std::thread::scope(|s| {
        s.spawn(|| killer(&stop, &kills));
        // Stops the killer however this scope ends, even by a failed assertion: otherwise
        // the scope would wait for it forever.
        let _stop = StopOnDrop(&stop);
        let mut it = pool.imap(work, 0..TASKS);
        for x in 0..TASKS {
            match it.next_timeout(LIMIT).expect("one result per task") {
                Ok(v) => {
                    assert_eq!(v, x * 2, "task {x}");
                    ok += 1;
                }
                Err(e) => {
                    assert_eq!(
                        e.exit_status().and_then(|s| s.signal()),
                        Some(libc::SIGKILL),
                        "task {x}: {e}"
                    );
                    failed += 1;
                }
            }
        }
        assert!(it.next_timeout(LIMIT).is_none());
    });
    drop(pool);
    before.check();
    (ok, failed, kills.load(Ordering::Relaxed))
}

#[test]
fn chaos_with_retries_loses_nothing() {
    let (ok, failed, kills) = chaos(1000);
    eprintln!("chaos with retries: {TASKS} tasks, {kills} workers killed, {failed} results lost");
    assert_eq!((ok, failed), (TASKS as usize, 0));
    assert!(kills > 0, "the killer must have struck");
}

#[test]
fn chaos_without_retries_fails_only_the_running_tasks() {
    let (ok, failed, kills) = chaos(0);
    eprintln!(
        "chaos without retries: {TASKS} tasks, {kills} workers killed, {failed} tasks failed"
    );
    assert_eq!(ok + failed, TASKS as usize);
    assert!(
        failed <= kills,
        "at most one task per kill: {failed} failed, {kills} kills"
    );
}

/// Tasks run, endless tasks timed out, workers killed by the chaos thread.
fn chaos_with_timeouts() -> (usize, usize, usize) {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let before = Counts::now();
    // Retries, so that a kill never steals the `TimedOut` of an endless task (a killed endless
    // task runs again and times out then). The timeout is far above a normal task's few
    // microseconds, with room for scheduling stalls on a busy machine, yet short enough that
    // an endless task outlives it between kills (each 50 ms tick strikes its worker with
    // probability 1/4: it survives 400 ms one time in ten) and the run stays bounded.
    let pool = Pool::builder()
        .processes(4)
        .start_method(StartMethod::Spawn)
        .max_retries(1000)
        .task_timeout(Duration::from_millis(400))
        .build()
        .unwrap();
    let stop = AtomicBool::new(false);
    let kills = AtomicUsize::new(0);
    let (mut ok, mut timed_out) = (0, 0);
    std::thread::scope(|s| {
        s.spawn(|| killer(&stop, &kills));
        let _stop = StopOnDrop(&stop);
        let mut it = pool.imap(work_or_hang, 0..TASKS);
        for x in 0..TASKS {
            let r = it
                .next_timeout(LIMIT)
                .expect("one result per task, no hang");
            if is_endless(x) {
                let e = r.expect_err("an endless task cannot succeed");
                assert!(e.is_timeout(), "endless task {x}: {e}");
                timed_out += 1;
            } else {
                assert_eq!(r.unwrap_or_else(|e| panic!("task {x}: {e}")), x * 2);
                ok += 1;
            }
        }
        assert!(it.next_timeout(LIMIT).is_none());
    });
    drop(pool);
    before.check();
    (ok + timed_out, timed_out, kills.load(Ordering::Relaxed))
}

#[test]
fn chaos_with_timeouts_and_endless_tasks() {
    let start = std::time::Instant::now();
    let (ran, timed_out, kills) = chaos_with_timeouts();
    let endless = (0..TASKS).filter(|&x| is_endless(x)).count();
    eprintln!(
        "chaos with timeouts: {ran} tasks, {endless} endless ones timed out ({timed_out}), \
         {kills} workers killed, 0 results lost, {:.1} s",
        start.elapsed().as_secs_f64()
    );
    assert_eq!(ran, TASKS as usize);
    assert_eq!(timed_out, endless);
    assert!(endless >= 3, "the mix has endless tasks: {endless}");
    assert!(kills > 0, "the killer must have struck");
}

const RUNS_ENV: &str = "MPROC_CHAOS_RUNS";

/// `work`, counted: each run appends its item to the file named in the workers' environment
/// (one `write` of 8 bytes with `O_APPEND`, whole), so the test sees every run, even of an
/// item whose worker was killed right after.
fn counted_work(x: u64) -> u64 {
    use std::io::Write;
    static LOG: std::sync::OnceLock<std::fs::File> = std::sync::OnceLock::new();
    let mut f = LOG.get_or_init(|| {
        let path = std::env::var(RUNS_ENV).expect("the pool sets the path");
        std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
            .expect("the run log opens")
    });
    f.write_all(&x.to_le_bytes()).expect("a run is logged");
    work(x)
}

/// How many times each item ran, from the run log at `path`.
fn runs(path: &std::path::Path) -> Vec<u32> {
    let bytes = std::fs::read(path).unwrap_or_default();
    let mut runs = vec![0u32; TASKS as usize];
    for b in bytes.chunks_exact(8) {
        let x = u64::from_le_bytes(b.try_into().expect("8 bytes"));
        runs[x as usize] += 1;
    }
    runs
}

/// Every 20 ms a worker is killed while an automatically chunked `map` (or a chunked `imap`)
/// runs: with retries, it finishes with every result right and no finished item runs again
/// (an item re-runs only if its worker died while running it: at most one per kill); without
/// retries every item still gets its own result, and no more fail than workers were killed.
fn chunked_chaos(retries: u32, chunked_imap: bool) -> (usize, usize, usize, Vec<u32>) {
    chaos_of(retries, chunked_imap, None)
}

/// As `chunked_chaos`, with the pool's chunk size set (`Some(1)`: a `map` of one-item
/// chunks, which the pool merges into runs on their way to a worker).
fn chaos_of(
    retries: u32,
    chunked_imap: bool,
    chunksize: Option<usize>,
) -> (usize, usize, usize, Vec<u32>) {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let before = Counts::now();
    let log = std::env::temp_dir().join(format!(
        "mproc-chaos-runs-{}-{retries}-{chunked_imap}-{chunksize:?}",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&log);
    let mut builder = Pool::builder()
        .processes(2)
        .start_method(StartMethod::Spawn)
        .max_retries(retries)
        .env(RUNS_ENV, &log);
    if chunked_imap {
        builder = builder.chunksize(500);
    }
    if let Some(n) = chunksize {
        builder = builder.chunksize(n);
    }
    let pool = builder.build().unwrap();
    let stop = AtomicBool::new(false);
    let kills = AtomicUsize::new(0);
    let (mut ok, mut failed) = (0, 0);
    std::thread::scope(|s| {
        s.spawn(|| killer_every(Duration::from_millis(20), &stop, &kills));
        let _stop = StopOnDrop(&stop);
        if chunked_imap {
            let mut it = pool.imap(counted_work, 0..TASKS);
            for x in 0..TASKS {
                match it.next_timeout(LIMIT).expect("one result per task") {
                    Ok(v) => {
                        assert_eq!(v, x * 2, "task {x}");
                        ok += 1;
                    }
                    Err(e) => {
                        assert_eq!(
                            e.exit_status().and_then(|s| s.signal()),
                            Some(libc::SIGKILL),
                            "task {x}: {e}"
                        );
                        failed += 1;
                    }
                }
            }
            assert!(it.next_timeout(LIMIT).is_none());
        } else {
            let got = pool
                .map_async(counted_work, 0..TASKS)
                .get_timeout(Duration::from_secs(120))
                .expect("the map finishes under the kills");
            assert!(got.iter().enumerate().all(|(x, &v)| v == x as u64 * 2));
            ok = got.len();
        }
    });
    drop(pool);
    before.check();
    let runs = runs(&log);
    let _ = std::fs::remove_file(&log);
    (ok, failed, kills.load(Ordering::Relaxed), runs)
}

#[test]
fn chaos_every_20ms_an_auto_chunked_map_with_retries_redoes_no_work() {
    assert_redoes_no_work("auto-chunked", chunked_chaos(1000, false));
}

#[test]
fn chaos_every_20ms_a_chunksize_1_map_with_retries_redoes_no_work() {
    // One-item chunks, merged into runs on their way to a worker: the same promise.
    assert_redoes_no_work("chunksize-1", chaos_of(1000, false, Some(1)));
}

/// With retries, a map under the killer finishes whole, and only items whose worker died
/// while running them ran again.
fn assert_redoes_no_work(what: &str, (ok, _, kills, runs): (usize, usize, usize, Vec<u32>)) {
    let extra: u32 = runs.iter().map(|&r| r.saturating_sub(1)).sum();
    eprintln!("{what} chaos with retries: {TASKS} items, {kills} workers killed, {extra} re-run");
    assert_eq!(ok, TASKS as usize);
    assert!(runs.iter().all(|&r| r >= 1), "every item ran");
    assert!(
        extra as usize <= kills,
        "an item runs again only when its worker died running it: {extra} re-runs, {kills} kills"
    );
    assert!(kills > 0, "the killer must have struck");
}

#[test]
fn chaos_every_20ms_a_chunked_imap_without_retries_fails_no_more_than_the_kills() {
    let (ok, failed, kills, runs) = chunked_chaos(0, true);
    eprintln!("chunked chaos without retries: {TASKS} items, {kills} kills, {failed} failed");
    assert_eq!(ok + failed, TASKS as usize);
    assert!(failed <= kills, "{failed} failed, {kills} kills");
    let twice: Vec<usize> = (0..runs.len()).filter(|&x| runs[x] > 1).collect();
    assert!(
        twice.is_empty(),
        "no item runs twice without retries: {twice:?}"
    );
    assert!(kills > 0, "the killer must have struck");
}
