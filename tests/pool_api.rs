//! The `Pool` calls that porters of `multiprocessing.Pool` and `concurrent.futures` code reach
//! for: borrowed items, `starmap` over 2 to 6 arguments and `starmap_async`, per-call chunk
//! sizes for `imap`, and errors that name their item. The behaviour follows CPython's
//! documentation of `Pool.starmap`, `Pool.imap(func, iterable, chunksize)` and the like; the
//! code is ours.

// `|a, b| add(a, b)` is how a named function goes to `starmap` (see `StarArgs`); clippy's
// `redundant_closure` suggests `add` instead, which does not compile there (the closure is
// coerced to a function pointer whose type the tuples decide).
#![allow(clippy::redundant_closure)]

mod common;

use std::sync::{Arc, mpsc};

use common::LIMIT;
use mproc::{ErrorKind, Pool};

fn pool(n: usize) -> Arc<Pool> {
    Arc::new(Pool::new(n).expect("a pool starts"))
}

/// Runs a blocking call on a thread of its own and waits for it at most [`LIMIT`]: the calls
/// without a `_timeout` form (`map`, `starmap`) cannot hang a test.
fn within<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(LIMIT).expect("the call returns in time")
}

fn square(x: u64) -> u64 {
    x * x
}

fn len(s: String) -> usize {
    s.len()
}

fn panics_on_3(x: u64) -> u64 {
    assert!(x != 3, "three is not allowed");
    x
}

fn with_pid(x: u64) -> (u64, u32) {
    (x, std::process::id())
}

fn aborts_on_5(x: u64) -> u64 {
    if x == 5 {
        std::process::abort();
    }
    x
}

#[test]
fn map_takes_borrowed_items_without_cloning() {
    let _leaks = common::leak_checked();
    let p = pool(2);
    let got = within({
        let p = Arc::clone(&p);
        move || {
            let v: Vec<u64> = (1..=8).collect();
            let borrowed = p.map(square, &v).unwrap();
            let sliced = p.map(square, &v[2..4]).unwrap();
            let chunked = p.map_chunked(square, &v, 3).unwrap();
            let names = vec!["a".to_string(), "bcd".to_string()];
            let lens = p.map(len, &names).unwrap();
            // The owned forms infer as before.
            let owned = p.map(square, v).unwrap();
            let closure = p.map(|x: u64| x * x, 1..=8).unwrap();
            let untyped = p.map(|x| x + 1, vec![1u64, 2]).unwrap();
            (
                borrowed, sliced, chunked, lens, owned, closure, untyped, names,
            )
        }
    });
    let squares = [1, 4, 9, 16, 25, 36, 49, 64];
    assert_eq!(got.0, squares);
    assert_eq!(got.1, [9, 16]);
    assert_eq!(got.2, squares);
    assert_eq!(got.3, [1, 3]);
    assert_eq!(got.4, squares);
    assert_eq!(got.5, squares);
    assert_eq!(got.6, [2, 3]);
    assert_eq!(got.7.len(), 2, "the borrowed names are still ours");

    let v: Vec<u64> = (1..=8).collect();
    let mut r = p.map_async(square, &v);
    drop(v); // encoded when map_async returned
    assert_eq!(r.get_timeout(LIMIT).unwrap(), squares);
    let v: Vec<u64> = (1..=8).collect();
    let mut it = p.imap(square, &v);
    let mut ordered = Vec::new();
    while let Some(r) = it.next_timeout(LIMIT) {
        ordered.push(r.unwrap());
    }
    assert_eq!(ordered, squares);
    let mut it = p.imap_unordered(square, v.iter());
    let mut unordered = Vec::new();
    while let Some(r) = it.next_timeout(LIMIT) {
        unordered.push(r.unwrap());
    }
    unordered.sort_unstable();
    assert_eq!(unordered, squares);
}

fn add(a: i64, b: i64) -> i64 {
    a + b
}

fn sum3(a: u8, b: u16, c: u32) -> u64 {
    u64::from(a) + u64::from(b) + u64::from(c)
}

fn join4(a: String, b: char, c: bool, d: i32) -> String {
    format!("{a}{b}{c}{d}")
}

fn sum5(a: u64, b: u64, c: u64, d: u64, e: u64) -> u64 {
    a + b + c + d + e
}

fn sum6(a: u64, b: u64, c: u64, d: u64, e: u64, f: u64) -> u64 {
    a + b + c + d + e + f
}

fn pair_panics_on_3(a: u64, b: u64) -> u64 {
    panics_on_3(a) + b
}

#[test]
fn starmap_runs_functions_of_two_to_six_arguments() {
    let _leaks = common::leak_checked();
    let p = pool(2);
    let got = within({
        let p = Arc::clone(&p);
        move || {
            let pairs = vec![(1, 2), (3, 4), (-5, 5)];
            let two = p.starmap(|a, b| add(a, b), &pairs).unwrap();
            let owned = p.starmap(|a, b| add(a, b), pairs).unwrap();
            let pointer = p.starmap(add as fn(i64, i64) -> i64, [(2, 2)]).unwrap();
            let three = p.starmap(|a, b, c| sum3(a, b, c), [(1, 2, 3)]).unwrap();
            let four = p
                .starmap(
                    |a, b, c, d| join4(a, b, c, d),
                    [("x".to_string(), 'y', true, -1)],
                )
                .unwrap();
            let five = p
                .starmap(|a, b, c, d, e| sum5(a, b, c, d, e), [(1, 2, 3, 4, 5)])
                .unwrap();
            let six = p
                .starmap(
                    |a, b, c, d, e, f| sum6(a, b, c, d, e, f),
                    &[(1, 2, 3, 4, 5, 6)],
                )
                .unwrap();
            (two, owned, pointer, three, four, five, six)
        }
    });
    assert_eq!(got.0, [3, 7, 0]);
    assert_eq!(got.1, [3, 7, 0]);
    assert_eq!(got.2, [4]);
    assert_eq!(got.3, [6]);
    assert_eq!(got.4, ["xytrue-1"]);
    assert_eq!(got.5, [15]);
    assert_eq!(got.6, [21]);
}

#[test]
fn starmap_async_hands_back_a_handle() {
    let _leaks = common::leak_checked();
    let p = pool(2);
    let pairs: Vec<(i64, i64)> = (0..20).map(|i| (i, 2 * i)).collect();
    let mut r = p.starmap_async(|a, b| add(a, b), &pairs);
    let want: Vec<i64> = pairs.iter().map(|&(a, b)| a + b).collect();
    assert_eq!(r.get_timeout(LIMIT).unwrap(), want);
    let mut r = p.starmap_async(|a, b| pair_panics_on_3(a, b), (0..6).map(|i| (i, 0)));
    let e = r.get_timeout(LIMIT).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Panicked);
    assert_eq!(e.index(), Some(3));
}

/// Each run of `chunk` consecutive results came from one worker: one chunk, one worker.
fn chunks_on_one_worker(results: &[(u64, u32)], chunk: usize) -> bool {
    let mut by_item = results.to_vec();
    by_item.sort_unstable();
    by_item
        .chunks(chunk)
        .all(|c| c.iter().all(|&(_, pid)| pid == c[0].1))
}

#[test]
fn imap_chunked_sets_the_chunk_size_per_call() {
    let _leaks = common::leak_checked();
    let p = pool(2);
    let mut it = p.imap_chunked(with_pid, 0..40, 10);
    let mut ordered = Vec::new();
    while let Some(r) = it.next_timeout(LIMIT) {
        ordered.push(r.unwrap());
    }
    assert_eq!(
        ordered.iter().map(|r| r.0).collect::<Vec<_>>(),
        (0..40).collect::<Vec<_>>()
    );
    assert!(chunks_on_one_worker(&ordered, 10), "{ordered:?}");
    let mut it = p.imap_unordered_chunked(with_pid, 0..40, 10);
    let mut unordered = Vec::new();
    while let Some(r) = it.next_timeout(LIMIT) {
        unordered.push(r.unwrap());
    }
    assert_eq!(unordered.len(), 40);
    assert!(chunks_on_one_worker(&unordered, 10), "{unordered:?}");
    // A chunk size of 0 means 1, as the pool-wide setting does.
    let mut it = p.imap_chunked(square, [3], 0);
    assert_eq!(it.next_timeout(LIMIT).unwrap().unwrap(), 9);
    assert!(it.next_timeout(LIMIT).is_none());
}

/// The message of `e` after its "item N (worker pid P): " prefix, checking both.
fn placed(e: &mproc::Error, index: usize) -> String {
    assert_eq!(e.index(), Some(index), "{e}");
    let pid = e.worker_pid().expect("the worker is known");
    assert_ne!(pid, std::process::id(), "a worker's pid, not ours");
    let text = e.to_string();
    let prefix = format!("item {index} (worker pid {pid}): ");
    text.strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("{text:?} starts with {prefix:?}"))
        .to_string()
}

#[test]
fn errors_name_their_item_and_worker_on_every_map_path() {
    let _leaks = common::leak_checked();
    let p = pool(2);
    let items: Vec<u64> = (0..8).collect();
    let mut chunked = p.map_async(panics_on_3, &items);
    let e = chunked.get_timeout(LIMIT).unwrap_err();
    let rest = placed(&e, 3);
    assert!(
        rest.starts_with("the task panicked: three is not allowed"),
        "{rest}"
    );
    let e = within({
        let p = Arc::clone(&p);
        move || p.map_chunked(panics_on_3, 0..8, 1).unwrap_err()
    });
    placed(&e, 3);
    let e = within({
        let p = Arc::clone(&p);
        move || p.starmap(|a, b| pair_panics_on_3(a, b), [(5, 0), (4, 0), (3, 0)])
    })
    .unwrap_err();
    placed(&e, 2);

    let mut it = p.imap_chunked(panics_on_3, 0..8, 3);
    let mut failed = Vec::new();
    let mut k = 0;
    while let Some(r) = it.next_timeout(LIMIT) {
        if let Err(e) = r {
            placed(&e, k);
            failed.push(k);
        }
        k += 1;
    }
    assert_eq!(failed, [3]);
    let mut it = p.imap_unordered_chunked(panics_on_3, 0..8, 3);
    let mut failed = Vec::new();
    while let Some(r) = it.next_timeout(LIMIT) {
        if let Err(e) = r {
            placed(&e, 3);
            failed.push(e.index());
        }
    }
    assert_eq!(failed, [Some(3)]);

    // A death names its item too; the rest of the map still ran.
    let mut died = p.map_async(aborts_on_5, 0..8);
    let e = died.get_timeout(LIMIT).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::WorkerDied);
    let rest = placed(&e, 5);
    assert!(rest.starts_with("the worker process died"), "{rest}");

    // apply: no index, and the message as before.
    let mut one = p.apply_async(panics_on_3, 3);
    let e = one.get_timeout(LIMIT).unwrap_err();
    assert_eq!((e.index(), e.worker_pid()), (None, None));
    assert!(
        e.to_string()
            .starts_with("the task panicked: three is not allowed"),
        "{e}"
    );
}

const THREAD_VARS: [&str; 6] = [
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "RAYON_NUM_THREADS",
];

fn thread_vars(_: ()) -> Vec<Option<String>> {
    THREAD_VARS.iter().map(|v| std::env::var(v).ok()).collect()
}

fn worker_thread_vars(b: mproc::PoolBuilder) -> Vec<Option<String>> {
    let p = b.processes(2).build().expect("a pool starts");
    p.apply_async(thread_vars, ())
        .get_timeout(LIMIT)
        .expect("the task runs")
}

#[test]
fn threads_per_worker_sets_every_library_thread_count() {
    let _leaks = common::leak_checked();
    let three = worker_thread_vars(Pool::builder().threads_per_worker(3));
    assert!(three.iter().all(|v| v.as_deref() == Some("3")), "{three:?}");
    // `env` wins over it, whatever the order.
    let got = worker_thread_vars(
        Pool::builder()
            .env("MKL_NUM_THREADS", "7")
            .threads_per_worker(3),
    );
    assert_eq!(got[2].as_deref(), Some("7"));
    assert_eq!(got[0].as_deref(), Some("3"));
    // The default: this process's CPUs over the workers, unless the environment says.
    let default = worker_thread_vars(Pool::builder());
    let share = (mproc::cpu_count() / 2).max(1).to_string();
    for (var, got) in THREAD_VARS.iter().zip(&default) {
        let want = std::env::var(var).unwrap_or_else(|_| share.clone());
        assert_eq!(got.as_deref(), Some(want.as_str()), "{var}");
    }
    // 0 sets nothing: the workers see what this process has.
    let none = worker_thread_vars(Pool::builder().threads_per_worker(0));
    let ours: Vec<Option<String>> = thread_vars(());
    assert_eq!(none, ours);
}

/// A worker's state: which process built it, and how many tasks used it since.
struct Counter {
    built_by: u32,
    uses: u64,
}

fn new_counter(start: u64) -> Counter {
    Counter {
        built_by: std::process::id(),
        uses: start,
    }
}

/// (pid now, pid that built the state, uses so far including this one)
fn count(c: &mut Counter, _: u64) -> (u32, u32, u64) {
    c.uses += 1;
    (std::process::id(), c.built_by, c.uses)
}

fn count_or_abort(c: &mut Counter, x: u64) -> (u32, u32, u64) {
    if x == 13 {
        std::process::abort();
    }
    count(c, x)
}

/// Per worker, the uses in the order they happened: 1, 2, 3... if the state lasted.
fn uses_by_worker(runs: &[(u32, u32, u64)]) -> std::collections::HashMap<u32, Vec<u64>> {
    let mut by = std::collections::HashMap::<u32, Vec<u64>>::new();
    for &(pid, built_by, uses) in runs {
        assert_eq!(pid, built_by, "a state is its own worker's");
        by.entry(pid).or_default().push(uses);
    }
    for uses in by.values_mut() {
        uses.sort_unstable();
    }
    by
}

#[test]
fn worker_state_is_built_once_per_worker_and_kept() {
    let _leaks = common::leak_checked();
    let p = Arc::new(
        Pool::builder()
            .processes(2)
            .worker_state(new_counter, 0)
            .build()
            .unwrap(),
    );
    let mut runs = Vec::new();
    for _ in 0..3 {
        runs.extend(
            p.map_with_state_async(count, 0..10)
                .get_timeout(LIMIT)
                .unwrap(),
        );
    }
    let one = within({
        let p = Arc::clone(&p);
        move || p.apply_with_state(count, 0).unwrap()
    });
    runs.push(one);
    let by = uses_by_worker(&runs);
    assert!(by.len() <= 2, "{by:?}");
    for uses in by.values() {
        let want: Vec<u64> = (1..=uses.len() as u64).collect();
        assert_eq!(uses, &want, "one state per worker, kept across calls");
    }
}

#[test]
fn a_replaced_worker_builds_a_fresh_state() {
    let _leaks = common::leak_checked();
    // Retired after every chunk: each chunk's worker is new, its state too.
    let p = Pool::builder()
        .processes(2)
        .max_tasks_per_child(1)
        .worker_state(new_counter, 100)
        .build()
        .unwrap();
    let runs = p
        .map_with_state_async(count, 0..8)
        .get_timeout(LIMIT)
        .unwrap();
    let by = uses_by_worker(&runs);
    for uses in by.values() {
        assert_eq!(uses[0], 101, "a fresh state in every worker: {by:?}");
    }
    // A crash replaces the worker; the one after it builds its own state.
    let p = Pool::builder()
        .processes(2)
        .worker_state(new_counter, 0)
        .build()
        .unwrap();
    let e = p
        .map_with_state_async(count_or_abort, 10..16)
        .get_timeout(LIMIT)
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::WorkerDied);
    assert_eq!(e.index(), Some(3));
    let crashed = e.worker_pid().expect("the worker is known");
    let runs = p
        .map_with_state_async(count, 0..20)
        .get_timeout(LIMIT)
        .unwrap();
    let by = uses_by_worker(&runs);
    assert!(!by.contains_key(&crashed), "the crashed worker is gone");
}

struct Other;

fn other(_: &mut Other, x: u64) -> u64 {
    x
}

fn boom(_: u64) -> Counter {
    panic!("no model today")
}

#[test]
fn state_calls_without_the_right_state_say_so() {
    let _leaks = common::leak_checked();
    let plain = Pool::new(2).unwrap();
    let e = plain
        .map_with_state_async(count, [1])
        .get_timeout(LIMIT)
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Usage);
    assert!(e.to_string().contains("no worker state"), "{e}");
    let p = Pool::builder()
        .processes(2)
        .worker_state(new_counter, 0)
        .build()
        .unwrap();
    // Refused before anything is sent: it returns at once.
    let e = p.apply_with_state(other, 1).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Usage);
    let text = e.to_string();
    assert!(
        text.contains("Counter") && text.contains("Other"),
        "names both types: {text}"
    );
    // A constructor that panics fails the items that needed it, and says where.
    let p = Pool::builder()
        .processes(2)
        .worker_state(boom, 0)
        .build()
        .unwrap();
    let e = p
        .map_with_state_async(count, 0..4)
        .get_timeout(LIMIT)
        .unwrap_err();
    let panic = e.remote_panic().expect("a panic");
    assert_eq!(panic.message(), "building the worker state: no model today");
    assert_eq!(e.index(), Some(0));
}

fn own_comm(_: ()) -> String {
    std::fs::read_to_string("/proc/self/comm")
        .expect("comm is readable")
        .trim_end()
        .to_string()
}

/// This test program's name as the kernel keeps it (its first 15 bytes).
fn program_comm() -> String {
    let exe = std::env::current_exe().expect("the test's own path");
    let name = exe.file_name().expect("a file name").to_string_lossy();
    name.chars()
        .scan(0, |n, c| {
            *n += c.len_utf8();
            (*n <= 15).then_some(c)
        })
        .collect()
}

#[test]
fn workers_show_the_program_name_in_ps() {
    let _leaks = common::leak_checked();
    let program = program_comm();
    let p = pool(2);
    let comm = p.apply_async(own_comm, ()).get_timeout(LIMIT).unwrap();
    assert_eq!(comm, program, "a pool worker shows the program, not `exe`");
    let named = mproc::Process::builder()
        .name("w1")
        .spawn(own_comm, ())
        .unwrap()
        .join_timeout(LIMIT)
        .unwrap();
    let cut: String = program.chars().take(12).collect();
    assert_eq!(named, format!("{cut}:w1"), "a named child shows its name");
    let unnamed = mproc::Process::spawn(own_comm, ())
        .unwrap()
        .join_timeout(LIMIT)
        .unwrap();
    assert_eq!(unnamed, program);
}

/// A result is handed out once: `get` after a `get_timeout` that returned it says so (it used
/// to answer `Ok(vec![])` for a `map_async`, a wrong result that looked right), and
/// `successful` still answers.
#[test]
fn a_result_handed_out_by_get_timeout_is_not_handed_out_again() {
    let _leaks = common::leak_checked();
    let pool = pool(2);
    let mut one = pool.apply_async(square, 7);
    assert_eq!(one.get_timeout(LIMIT).unwrap(), 49);
    assert_eq!(one.successful(), Some(true));
    assert_eq!(one.get().unwrap_err().kind(), ErrorKind::Usage);

    let mut many = pool.map_async(square, vec![1, 2, 3]);
    assert_eq!(many.get_timeout(LIMIT).unwrap(), [1, 4, 9]);
    assert_eq!(many.get().unwrap_err().kind(), ErrorKind::Usage);

    let mut bad = pool.apply_async(panics_on_3, 3);
    assert_eq!(
        bad.get_timeout(LIMIT).unwrap_err().kind(),
        ErrorKind::Panicked
    );
    assert_eq!(bad.successful(), Some(false));
    let again = bad.get_timeout(LIMIT).unwrap_err();
    assert_eq!(again.kind(), ErrorKind::Usage);

    let mut taken = pool.apply_async(square, 2);
    assert_eq!(taken.get_timeout(LIMIT).unwrap(), 4);
    let mut done = mproc::as_completed(vec![taken]);
    let (i, r) = done
        .next_timeout(LIMIT)
        .expect("one handle")
        .expect("in time");
    assert_eq!((i, r.unwrap_err().kind()), (0, ErrorKind::Usage));
}
