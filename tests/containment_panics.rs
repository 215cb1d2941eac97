//! Issue 14, the cases about panics and deaths that lost their cause: a panic under a memory
//! limit with backtraces on (case 1), serialization errors (12), mproc's own exit codes (13)
//! and stack overflows (14). Case 6 (`panic = "abort"`) needs a binary built that way:
//! `examples/panic_abort.rs`, which `.ci/run` builds with `panic = "abort"` and runs.

mod common;

use std::time::Instant;

use common::LIMIT;
use mproc::{ErrorKind, Event, Pool, Process, Queue, StartMethod};
use serde::{Deserialize, Serialize};

fn hog_then_panic(mb: usize) -> usize {
    let v = vec![1u8; mb << 20];
    std::hint::black_box(&v);
    panic!("gave up after {} MiB", v.len() >> 20)
}

/// A panic under a memory limit is `Panicked` (with its backtrace when one could be had) or
/// a worker that died of `SIGABRT`: never a hang (which `get_timeout` turns into `TimedOut`).
fn assert_panicked_or_aborted(err: &mproc::Error, what: &str) {
    match err.kind() {
        ErrorKind::Panicked => {
            let p = err.remote_panic().unwrap();
            assert!(p.message().starts_with("gave up after"), "{what}: {err}");
            assert!(p.location().is_some(), "{what}: {err}");
        }
        ErrorKind::WorkerDied => {
            assert_eq!(
                err.exit_status().unwrap().signal(),
                Some(libc::SIGABRT),
                "{what}: {err}"
            )
        }
        _ => panic!("{what}: neither a panic nor an abort: {err}"),
    }
}

/// Case 1: a panic under a memory limit with `RUST_BACKTRACE=1` used to hang forever: std's
/// out-of-memory hook waited for the backtrace lock the panic hook held while symbolizing.
#[test]
fn a_panic_under_a_memory_limit_with_backtraces_comes_back() {
    let _leaks = common::leak_checked();
    let pool = Pool::builder()
        .processes(2)
        .memory_limit(32 << 20)
        .env("RUST_BACKTRACE", "1")
        .build()
        .unwrap();
    // The limit is ours (a soft one): it is lifted while the backtrace is captured and
    // symbolized, so the whole report comes back. Symbolizing happens in a throwaway copy of
    // the worker (std keeps 38 MiB of parsed debug information, past the limit), so the
    // worker's memory stays its tasks': the next tasks, panicking or not, run as before.
    let handles: Vec<_> = (0..6)
        .map(|_| pool.apply_async(hog_then_panic, 4))
        .collect();
    for mut h in handles {
        let err = h.get_timeout(LIMIT).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Panicked, "{err}");
        let bt = err.remote_panic().unwrap().backtrace().unwrap_or_default();
        assert!(bt.contains("hog_then_panic"), "backtrace: {bt}");
    }
    assert_eq!(pool.apply(hog, 16).unwrap(), 16 << 20);
}

fn hog(mb: usize) -> usize {
    let v = vec![1u8; mb << 20];
    std::hint::black_box(&v).len()
}

/// A task that makes its memory limit a hard one (as `ulimit -v` does: it cannot be lifted
/// for the backtrace), fills it, and panics while it still holds the memory.
fn fill_hard_limit_then_panic(limit: u64) -> usize {
    let lim = libc::rlimit {
        rlim_cur: limit as libc::rlim_t,
        rlim_max: limit as libc::rlim_t,
    };
    // SAFETY: `lim` is a valid rlimit for the call.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_DATA, &lim) }, 0);
    // Filled to the last few bytes (chunks of 256 KiB, then smaller), so that even capturing
    // the backtrace's frames fails.
    let mut held: Vec<Vec<u8>> = Vec::with_capacity(1 << 16);
    let mut bytes = 0;
    for size in [256 << 10, 4 << 10, 256, 16] {
        while held.len() < held.capacity() {
            let mut chunk: Vec<u8> = Vec::new();
            if chunk.try_reserve_exact(size).is_err() {
                break;
            }
            chunk.resize(size, 1);
            bytes += size;
            held.push(chunk);
        }
    }
    std::hint::black_box(&held);
    panic!("gave up after {} MiB", bytes >> 20)
}

/// Case 1 for `Process`, with a limit that cannot be lifted: the report may lose its
/// backtrace or the worker may abort, but `join` returns.
#[test]
fn a_panic_at_a_hard_memory_limit_never_hangs_a_process() {
    let _leaks = common::leak_checked();
    for &m in StartMethod::all() {
        let mut p = Process::builder()
            .start_method(m)
            .env("RUST_BACKTRACE", "1")
            .env("MPROC_MEMORY_LIMIT", (64u64 << 20).to_string())
            .spawn(fill_hard_limit_then_panic, 64 << 20)
            .unwrap();
        let err = p.join_timeout(LIMIT).unwrap_err();
        assert_panicked_or_aborted(&err, &format!("{m:?}"));
    }
}

fn boom(x: u64) -> u64 {
    panic!("boom {x}")
}

/// Case 1, "while there": with backtraces on, fresh workers do not make panics slow. The
/// hook no longer symbolizes; the report does, once per panic.
#[test]
fn many_panics_with_backtraces_and_recycled_workers() {
    let _leaks = common::leak_checked();
    let pool = Pool::builder()
        .processes(2)
        .max_tasks_per_child(10)
        .env("RUST_BACKTRACE", "1")
        .build()
        .unwrap();
    let start = Instant::now();
    let handles: Vec<_> = (0..200).map(|i| pool.apply_async(boom, i)).collect();
    let mut errors = Vec::new();
    for (i, mut h) in handles.into_iter().enumerate() {
        let err = h.get_timeout(LIMIT).unwrap_err();
        assert_eq!(err.remote_panic().unwrap().message(), format!("boom {i}"));
        errors.push(err);
    }
    let got = start.elapsed();
    // Symbolized here, when read: every one names the task, from the first worker's to the
    // last's, and only the task's frames and the panic's (a short backtrace).
    let start = Instant::now();
    for err in &errors {
        let bt = err.remote_panic().unwrap().backtrace().unwrap();
        assert!(bt.contains("containment_panics::boom"), "{bt}");
        assert!(!bt.contains("mproc::child"), "{bt}");
        assert!(!bt.contains("mproc::task::chunk"), "{bt}");
    }
    eprintln!(
        "200 panics with backtraces, max_tasks_per_child(10): {got:?}; reading their \
         backtraces: {:?}",
        start.elapsed()
    );
}

/// A value whose `Serialize` fails with its own message.
#[derive(Debug)]
struct Unserializable;

impl Serialize for Unserializable {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom("the disk ate it"))
    }
}

impl<'de> Deserialize<'de> for Unserializable {
    fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Err(serde::de::Error::custom("never again"))
    }
}

/// A value that serializes but never deserializes.
#[derive(Debug)]
struct Undecodable;

impl Serialize for Undecodable {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_unit()
    }
}

impl<'de> Deserialize<'de> for Undecodable {
    fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Err(serde::de::Error::custom("not today"))
    }
}

fn make_undecodable(_: ()) -> Undecodable {
    Undecodable
}

fn take_undecodable(_: Undecodable) -> u64 {
    0
}

fn make_unserializable(_: ()) -> Unserializable {
    Unserializable
}

fn take_unserializable(_: Unserializable) -> u64 {
    0
}

/// Case 12: a serialization error says which value (argument or result) and its type, and
/// keeps the message of a custom `Serialize` or `Deserialize`.
#[test]
fn serialization_errors_name_the_side_and_the_type() {
    let _leaks = common::leak_checked();
    let ty = "containment_panics::Unserializable";
    let why = ": the disk ate it";

    let err = Process::spawn(make_unserializable, ())
        .unwrap()
        .join_timeout(LIMIT)
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Codec, "{err}");
    let text = err.to_string();
    assert!(
        text.ends_with(&format!("cannot encode the result of type `{ty}`{why}")),
        "{text}"
    );

    let err = Process::spawn(take_unserializable, Unserializable).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Codec, "{err}");
    assert!(
        err.to_string()
            .ends_with(&format!("cannot encode the argument of type `{ty}`{why}")),
        "{err}"
    );

    let un = "containment_panics::Undecodable";
    let err = Process::spawn(make_undecodable, ())
        .unwrap()
        .join_timeout(LIMIT)
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Codec, "{err}");
    assert!(
        err.to_string().contains(&format!(
            "cannot decode the result of type `{un}`: not today"
        )),
        "{err}"
    );
    let err = Process::spawn(take_undecodable, Undecodable)
        .unwrap()
        .join_timeout(LIMIT)
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Codec, "{err}");
    assert!(
        err.to_string().contains(&format!(
            "cannot decode the argument of type `{un}`: not today"
        )),
        "{err}"
    );

    let pool = Pool::new(1).unwrap();
    let err = pool
        .apply_async(take_unserializable, Unserializable)
        .get_timeout(LIMIT)
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Codec, "{err}");
    assert!(
        err.to_string()
            .ends_with(&format!("cannot encode the argument of type `{ty}`{why}")),
        "{err}"
    );
}

fn exit_with(code: i32) {
    std::process::exit(code)
}

/// Case 13: a worker exiting with one of mproc's own codes says what the code means.
#[test]
fn mproc_exit_codes_are_explained() {
    let _leaks = common::leak_checked();
    let err = Process::spawn(exit_with, 3)
        .unwrap()
        .join_timeout(LIMIT)
        .unwrap_err();
    assert_eq!(err.exit_status().unwrap().code(), Some(3), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("exit code 3: mproc's code for a protocol error"),
        "{text}"
    );
    assert!(text.contains("unless the task exited with it"), "{text}");
    let err = Process::spawn(exit_with, 7)
        .unwrap()
        .join_timeout(LIMIT)
        .unwrap_err();
    assert!(err.to_string().ends_with("(exit code 7)"), "{err}");
}

#[allow(unconditional_recursion)]
fn recurse(depth: u64) -> u64 {
    let frame = [depth; 64];
    std::hint::black_box(&frame);
    if depth >= 200_000 {
        return frame[0];
    }
    recurse(depth + 1) + frame[1]
}

/// Case 14: recursing 200,000 deep overflows the stack; the worker dies of `SIGSEGV` and the
/// error says it was a stack overflow.
#[test]
fn a_stack_overflow_says_so() {
    let _leaks = common::leak_checked();
    for &m in StartMethod::all() {
        let err = Process::builder()
            .start_method(m)
            .spawn(recurse, 0)
            .unwrap()
            .join_timeout(LIMIT)
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::WorkerDied, "{m:?}: {err}");
        assert_eq!(
            err.exit_status().unwrap().signal(),
            Some(libc::SIGSEGV),
            "{m:?}: {err}"
        );
        assert!(err.to_string().contains("stack overflow"), "{m:?}: {err}");
    }
}

/// A segfault that is not an overflow is not called one.
fn null_write(_: ()) {
    // SAFETY: not safe at all, on purpose: the point is to crash this child with SIGSEGV.
    unsafe { std::ptr::null_mut::<u64>().write_volatile(1) }
}

#[test]
fn other_segfaults_and_a_sent_sigsegv_are_not_overflows() {
    let _leaks = common::leak_checked();
    for &m in StartMethod::all() {
        let err = Process::builder()
            .start_method(m)
            .spawn(null_write, ())
            .unwrap()
            .join_timeout(LIMIT)
            .unwrap_err();
        assert_eq!(
            err.exit_status().unwrap().signal(),
            Some(libc::SIGSEGV),
            "{m:?}: {err}"
        );
        assert!(!err.to_string().contains("stack overflow"), "{m:?}: {err}");
    }
    // SIGSEGV from `kill` is raised again by the handler, not swallowed.
    let mut p = Process::spawn(sleep_long, ()).unwrap();
    // SAFETY: `kill` on our own live child.
    assert_eq!(unsafe { libc::kill(p.pid() as i32, libc::SIGSEGV) }, 0);
    let err = p.join_timeout(LIMIT).unwrap_err();
    assert_eq!(
        err.exit_status().unwrap().signal(),
        Some(libc::SIGSEGV),
        "{err}"
    );
    assert!(!err.to_string().contains("stack overflow"), "{err}");
}

fn sleep_long(_: ()) {
    std::thread::sleep(LIMIT * 2);
}

/// Case 14 through a pool: the worker dies of `SIGSEGV`, the task fails alone.
#[test]
fn a_stack_overflow_in_a_pool_task_fails_that_task() {
    let _leaks = common::leak_checked();
    let pool = Pool::new(1).unwrap();
    let err = pool.apply_async(recurse, 0).get_timeout(LIMIT).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::WorkerDied, "{err}");
    assert_eq!(
        err.exit_status().unwrap().signal(),
        Some(libc::SIGSEGV),
        "{err}"
    );
    assert!(
        pool.apply_async(recurse, 199_990)
            .get_timeout(LIMIT)
            .unwrap()
            > 0
    );
}

/// Case 14 through a pool, the text, on every path a task takes: the `apply` fast path (an
/// idle worker lent to the caller), the supervisor's queue (`apply_async` behind busy
/// workers), the middle of a chunk (`map_chunked`, `imap`, `map`'s automatic chunks), where
/// the items around it keep their results.
#[test]
fn a_stack_overflow_in_a_pool_task_says_so() {
    let _leaks = common::leak_checked();
    let says_so = |err: &mproc::Error, path: &str| {
        assert_eq!(err.kind(), ErrorKind::WorkerDied, "{path}: {err}");
        assert_eq!(
            err.exit_status().unwrap().signal(),
            Some(libc::SIGSEGV),
            "{path}: {err}"
        );
        assert!(err.to_string().contains("stack overflow"), "{path}: {err}");
    };
    let pool = Pool::new(2).unwrap();
    says_so(&pool.apply(recurse, 0).unwrap_err(), "apply");
    says_so(
        &pool.apply_async(recurse, 0).get_timeout(LIMIT).unwrap_err(),
        "apply_async",
    );
    // Behind tasks that hold every worker: the supervisor's queue.
    let (started, open) = (Queue::new().unwrap(), Event::new().unwrap());
    let held: Vec<_> = (0..2)
        .map(|_| pool.apply_async(wait_for, (started.clone(), open.clone())))
        .collect();
    for _ in 0..2 {
        started.get_timeout(LIMIT).unwrap();
    }
    let mut queued = pool.apply_async(recurse, 0);
    open.set();
    for mut h in held {
        h.get_timeout(LIMIT).unwrap();
    }
    says_so(
        &queued.get_timeout(LIMIT).unwrap_err(),
        "queued apply_async",
    );
    // Mid-chunk: depth 0 overflows, 199_990 does not.
    let items = [199_990, 199_990, 0, 199_990];
    says_so(
        &pool.map_chunked(recurse, items, 4).unwrap_err(),
        "map_chunked",
    );
    let each: Vec<_> = pool
        .imap(recurse, items)
        .map(|r| r.map_err(|e| e.to_string()))
        .collect();
    assert_eq!(each.len(), 4);
    for (i, r) in each.iter().enumerate() {
        match (i, r) {
            (2, Err(e)) => assert!(e.contains("stack overflow"), "imap: {e}"),
            (2, Ok(v)) => panic!("imap: item 2 gave {v}"),
            (_, r) => assert!(r.as_ref().is_ok_and(|v| *v > 0), "imap {i}: {r:?}"),
        }
    }
    says_so(&pool.map(recurse, items).unwrap_err(), "map");
    // The pool still serves, on replacements.
    assert!(pool.apply(recurse, 199_990).unwrap() > 0);
}

/// Holds a worker until `open` is set, after saying so on `started`.
fn wait_for((started, open): (Queue<()>, Event)) {
    started.put(()).unwrap();
    assert!(open.wait_timeout(LIMIT));
}
