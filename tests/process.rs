//! `Process` end to end, under every start method. Modelled on the behaviour CPython documents
//! for `multiprocessing.Process` (`join`, `is_alive`, `exitcode`, `terminate`, `kill`); the
//! code is ours.

mod common;

use std::time::Duration;

use common::{LIMIT, pid_gone};
use mproc::{ErrorKind, Process, StartMethod, Stdio};
use serde::{Deserialize, Serialize};

fn square(x: u64) -> u64 {
    x * x
}

fn methods() -> &'static [StartMethod] {
    StartMethod::all()
}

fn spawn<A, R>(m: StartMethod, f: fn(A) -> R, arg: A) -> Process<R>
where
    A: Serialize + for<'de> Deserialize<'de>,
    R: Serialize + for<'de> Deserialize<'de>,
{
    Process::builder()
        .start_method(m)
        .spawn(f, arg)
        .expect("spawn")
}

#[test]
fn join_returns_the_result_and_reaps() {
    let _leaks = common::leak_checked();
    for &m in methods() {
        let mut p = spawn(m, square, 7);
        assert!(p.pid() > 0);
        assert!(p.name().starts_with("Process-"), "{}", p.name());
        assert_eq!(p.join_timeout(LIMIT).unwrap(), 49, "{m:?}");
        assert!(!p.is_alive());
        let status = p.exit_status().expect("reaped");
        assert_eq!(
            (status.code(), status.exitcode(), status.success()),
            (Some(0), 0, true)
        );
        assert!(pid_gone(p.pid()), "{m:?}: no zombie after join");
    }
}

#[test]
fn closures_that_capture_nothing_coerce() {
    let _leaks = common::leak_checked();
    for &m in methods() {
        let mut p = Process::builder()
            .start_method(m)
            .spawn(|(a, b): (i32, i32)| a * b, (6, 7))
            .unwrap();
        assert_eq!(p.join_timeout(LIMIT).unwrap(), 42);
    }
}

#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
struct Record {
    id: u64,
    name: String,
    values: Vec<f64>,
    tag: Option<Box<Record>>,
}

fn rename(mut r: Record) -> Record {
    r.name = r.name.to_uppercase();
    r.values.reverse();
    r
}

#[test]
fn structured_data_round_trips() {
    let _leaks = common::leak_checked();
    let r = Record {
        id: 9,
        name: "ünïcode".into(),
        values: vec![1.5, -2.0, f64::MAX],
        tag: Some(Box::new(Record {
            id: 1,
            name: "inner".into(),
            values: vec![],
            tag: None,
        })),
    };
    for &m in methods() {
        let got = spawn(m, rename, r.clone()).join_timeout(LIMIT).unwrap();
        assert_eq!(got, rename(r.clone()));
    }
}

fn checksum(v: Vec<u8>) -> (usize, u64, Vec<u8>) {
    let sum = v.iter().map(|&b| b as u64).sum();
    (v.len(), sum, v)
}

#[test]
fn large_arguments_and_results_cross() {
    let _leaks = common::leak_checked();
    let data: Vec<u8> = (0..1_500_000u32).map(|i| (i % 251) as u8).collect();
    let want: u64 = data.iter().map(|&b| b as u64).sum();
    for &m in methods() {
        let (len, sum, back) = spawn(m, checksum, data.clone())
            .join_timeout(LIMIT)
            .unwrap();
        assert_eq!((len, sum), (data.len(), want));
        assert!(back == data, "{m:?}: payload came back intact");
    }
}

/// An argument under the size that goes in a file, but more than a socket holds: the part
/// that fits is in the socket before the child starts (`launch_primed`), the rest follows.
#[test]
fn an_argument_larger_than_the_socket_buffer_crosses_whole() {
    let _leaks = common::leak_checked();
    let data: Vec<u8> = (0..700_000u32).map(|i| (i % 253) as u8).collect();
    let want: u64 = data.iter().map(|&b| b as u64).sum();
    for &m in methods() {
        let (len, sum, _) = spawn(m, checksum, data.clone())
            .join_timeout(LIMIT)
            .unwrap();
        assert_eq!((len, sum), (data.len(), want), "{m:?}");
    }
}

fn boom(n: u32) -> u32 {
    if n > 0 {
        panic!("kaboom {n}");
    }
    n
}

#[test]
fn a_panic_comes_back_with_message_and_location() {
    let _leaks = common::leak_checked();
    for &m in methods() {
        let mut p = spawn(m, boom, 42);
        let err = p.join_timeout(LIMIT).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Panicked, "{m:?}: {err}");
        let panic = err.remote_panic().unwrap();
        assert_eq!(panic.message(), "kaboom 42");
        assert!(
            panic.location().unwrap().contains("tests/process.rs"),
            "{:?}",
            panic.location()
        );
        assert!(err.to_string().contains("kaboom 42"), "{err}");
        // Python's exitcode after an uncaught exception is 1.
        assert_eq!(p.exit_status().unwrap().code(), Some(1));
    }
}

fn boom_string(_: ()) -> u32 {
    std::panic::panic_any(String::from("owned message"))
}

#[test]
fn a_panic_with_backtrace_when_asked() {
    let _leaks = common::leak_checked();
    for &m in methods() {
        let mut p = Process::builder()
            .start_method(m)
            .env("RUST_BACKTRACE", "1")
            .spawn(boom_string, ())
            .unwrap();
        let err = p.join_timeout(LIMIT).unwrap_err();
        let panic = err.remote_panic().expect("a panic");
        assert_eq!(panic.message(), "owned message");
        let bt = panic.backtrace().unwrap_or_default();
        assert!(
            bt.contains("boom_string"),
            "{m:?}: backtrace names the function: {bt}"
        );
    }
}

fn abort(_: ()) {
    std::process::abort()
}

fn exit3(_: ()) {
    std::process::exit(3)
}

fn segfault(_: ()) {
    // SAFETY: not safe at all, on purpose: the point is to crash this child with SIGSEGV.
    unsafe { std::ptr::null_mut::<u64>().write_volatile(1) }
}

#[allow(unconditional_recursion)]
fn overflow(n: u64) -> u64 {
    // Unbounded recursion: a stack overflow, which Rust turns into SIGSEGV/SIGABRT.
    let v = [n; 64];
    std::hint::black_box(&v);
    overflow(n + 1) + v[0]
}

#[test]
fn crashes_come_back_as_exit_code_or_signal() {
    let _leaks = common::leak_checked();
    for &m in methods() {
        let err = spawn(m, abort, ()).join_timeout(LIMIT).unwrap_err();
        assert!(err.is_worker_lost(), "{m:?}: {err}");
        assert_eq!(
            err.exit_status().unwrap().signal(),
            Some(libc::SIGABRT),
            "{err}"
        );
        assert_eq!(err.exit_status().unwrap().exitcode(), -libc::SIGABRT);
        assert!(err.to_string().contains("SIGABRT"), "{err}");

        let err = spawn(m, segfault, ()).join_timeout(LIMIT).unwrap_err();
        assert_eq!(
            err.exit_status().unwrap().signal(),
            Some(libc::SIGSEGV),
            "{m:?}: {err}"
        );

        let err = spawn(m, exit3, ()).join_timeout(LIMIT).unwrap_err();
        assert_eq!(err.exit_status().unwrap().code(), Some(3), "{m:?}: {err}");
        assert!(err.to_string().contains("exit code 3"), "{err}");

        let err = spawn(m, overflow, 0).join_timeout(LIMIT).unwrap_err();
        let sig = err.exit_status().unwrap().signal();
        assert!(
            matches!(sig, Some(libc::SIGSEGV | libc::SIGABRT | libc::SIGBUS)),
            "{m:?}: {err}"
        );
    }
}

fn sleep_forever(_: ()) {
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

#[test]
fn kill_and_terminate_are_reported_as_signals() {
    let _leaks = common::leak_checked();
    for &m in methods() {
        let mut p = spawn(m, sleep_forever, ());
        assert!(p.is_alive());
        p.kill().unwrap();
        let err = p.join_timeout(LIMIT).unwrap_err();
        assert_eq!(
            err.exit_status().unwrap().signal(),
            Some(libc::SIGKILL),
            "{m:?}: {err}"
        );
        assert_eq!(p.exit_status().unwrap().exitcode(), -9);
        // Signalling an ended (reaped) process is a no-op, never a stray signal.
        p.kill().unwrap();
        p.terminate().unwrap();

        let mut p = spawn(m, sleep_forever, ());
        p.terminate().unwrap();
        let err = p.join_timeout(LIMIT).unwrap_err();
        assert_eq!(
            err.exit_status().unwrap().signal(),
            Some(libc::SIGTERM),
            "{m:?}: {err}"
        );
    }
}

fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

#[test]
fn join_timeout_leaves_the_handle_usable() {
    let _leaks = common::leak_checked();
    for &m in methods() {
        let mut p = spawn(m, sleep_forever, ());
        let err = p.join_timeout(Duration::from_millis(50)).unwrap_err();
        assert!(err.is_timeout(), "{m:?}: {err}");
        assert!(p.is_alive());
        assert!(p.join_timeout(Duration::ZERO).unwrap_err().is_timeout());
        p.kill().unwrap();
        assert!(p.join_timeout(LIMIT).unwrap_err().is_worker_lost());

        // A task that takes longer than one timeout completes on a later join.
        let mut p = spawn(m, nap, 300);
        let mut timeouts = 0;
        let got = loop {
            match p.join_timeout(Duration::from_millis(20)) {
                Ok(v) => break v,
                Err(e) if e.is_timeout() => timeouts += 1,
                Err(e) => panic!("{m:?}: {e}"),
            }
            assert!(timeouts < 2000, "bounded");
        };
        assert_eq!(got, 300);
        assert!(timeouts > 0);
    }
}

#[test]
fn joining_twice_is_an_error_not_a_hang() {
    let _leaks = common::leak_checked();
    let mut p = Process::spawn(square, 3).unwrap();
    assert_eq!(p.join_timeout(LIMIT).unwrap(), 9);
    let err = p.join_timeout(LIMIT).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Usage, "{err}");
}

#[test]
fn drop_kills_and_reaps_a_running_process() {
    let _leaks = common::leak_checked();
    for &m in methods() {
        let p = spawn(m, sleep_forever, ());
        let pid = p.pid();
        assert!(!pid_gone(pid));
        drop(p);
        assert!(
            pid_gone(pid),
            "{m:?}: dropped process {pid} is gone, not a zombie"
        );

        // One that ended without being joined is reaped too.
        let p = spawn(m, square, 2);
        let pid = p.pid();
        assert!(common::eventually(LIMIT, || p.exit_status().is_some()));
        drop(p);
        assert!(pid_gone(pid));
    }
}

fn read_env(key: String) -> Option<String> {
    std::env::var(&key).ok()
}

#[test]
fn builder_sets_name_env_and_stdio() {
    let _leaks = common::leak_checked();
    for &m in methods() {
        let mut p = Process::builder()
            .name("w1")
            .start_method(m)
            .env("MPROC_TEST_VALUE", "hello")
            .stdout(Stdio::Null)
            .stderr(Stdio::Null)
            .spawn(read_env, "MPROC_TEST_VALUE".to_string())
            .unwrap();
        assert_eq!(p.name(), "w1");
        assert_eq!(
            p.join_timeout(LIMIT).unwrap().as_deref(),
            Some("hello"),
            "{m:?}"
        );
        // The worker marker never leaks into user code.
        let marker = spawn(m, read_env, "MPROC_WORKER".to_string())
            .join_timeout(LIMIT)
            .unwrap();
        assert_eq!(marker, None, "{m:?}");
    }
}

fn read_envs(keys: Vec<String>) -> Vec<Option<String>> {
    keys.iter().map(|k| std::env::var(k).ok()).collect()
}

/// `env` works as `setenv` in turn would: a variable set twice has its last value, one the
/// parent has is replaced, and the others stay as inherited (under every start method).
#[test]
fn builder_env_replaces_and_adds_as_setenv_would() {
    let _leaks = common::leak_checked();
    let (kept, kept_value) = std::env::vars()
        .find(|(k, _)| !k.starts_with("MPROC_") && k != "PATH")
        .expect("the test runs with some variable set");
    for &m in methods() {
        let mut p = Process::builder()
            .start_method(m)
            .env("MPROC_TEST_TWICE", "first")
            .env("PATH", "/nowhere")
            .env("MPROC_TEST_TWICE", "second")
            .spawn(
                read_envs,
                vec!["MPROC_TEST_TWICE".into(), "PATH".into(), kept.clone()],
            )
            .unwrap();
        let got = p.join_timeout(LIMIT).unwrap();
        let want = [
            Some("second".to_string()),
            Some("/nowhere".to_string()),
            Some(kept_value.clone()),
        ];
        assert_eq!(got, want, "{m:?}");
    }
}

fn stdin_is_empty(_: ()) -> usize {
    use std::io::Read;
    let mut s = String::new();
    std::io::stdin().read_to_string(&mut s).unwrap_or(0)
}

#[test]
fn stdin_is_dev_null_by_default_like_python() {
    let _leaks = common::leak_checked();
    for &m in methods() {
        assert_eq!(spawn(m, stdin_is_empty, ()).join_timeout(LIMIT).unwrap(), 0);
    }
}

fn touch(path: String) -> bool {
    std::fs::write(path, b"ran").is_ok()
}

#[test]
fn a_binary_mismatch_is_refused_before_running_anything() {
    let _leaks = common::leak_checked();
    let dir = std::env::temp_dir().join(format!("mproc-mismatch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for &m in methods() {
        let marker = dir.join(format!("{m:?}"));
        let mut p = Process::builder()
            .start_method(m)
            .env("MPROC_TEST_FAKE_IDENTITY", "another-build")
            .spawn(touch, marker.to_string_lossy().into_owned())
            .unwrap();
        let err = p.join_timeout(LIMIT).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::BinaryMismatch, "{m:?}: {err}");
        assert!(err.to_string().contains("different executable"), "{err}");
        assert!(!marker.exists(), "{m:?}: the function must not have run");
        assert!(!p.is_alive());
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

fn spawn_grandchild(m: u8) -> u64 {
    let m = StartMethod::all()[m as usize];
    let mut p = Process::builder().start_method(m).spawn(square, 5).unwrap();
    p.join_timeout(LIMIT).unwrap() + 1
}

#[test]
fn a_child_can_start_its_own_children() {
    let _leaks = common::leak_checked();
    for (i, &m) in methods().iter().enumerate() {
        for (j, _) in methods().iter().enumerate() {
            let got = spawn(m, spawn_grandchild, j as u8)
                .join_timeout(LIMIT)
                .unwrap();
            assert_eq!(got, 26, "{m:?} -> {i}/{j}");
        }
    }
}

#[test]
fn many_threads_spawn_at_once() {
    let _leaks = common::leak_checked();
    std::thread::scope(|s| {
        for t in 0..4u64 {
            s.spawn(move || {
                for i in 0..6u64 {
                    let m = methods()[(t + i) as usize % methods().len()];
                    let x = t * 100 + i;
                    assert_eq!(spawn(m, square, x).join_timeout(LIMIT).unwrap(), x * x);
                }
            });
        }
    });
}

#[test]
fn default_start_method_is_the_fork_server() {
    let _leaks = common::leak_checked();
    if std::env::var_os("MPROC_START_METHOD").is_none() {
        assert_eq!(StartMethod::default(), StartMethod::ForkServer);
    }
}

#[test]
fn fork_children_survive_a_parent_thread_holding_stdout() {
    let _leaks = common::leak_checked();
    use std::io::Write;
    use std::sync::atomic::{AtomicBool, Ordering};
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            // Takes and releases the stdout lock in a tight loop, writing nothing.
            while !stop.load(Ordering::Relaxed) {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(b"");
            }
        });
        // Stop the other thread however this ends (a failed assertion included), or the
        // scope would wait for it forever.
        struct StopOnDrop<'a>(&'a AtomicBool);
        impl Drop for StopOnDrop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Relaxed);
            }
        }
        let _stop = StopOnDrop(&stop);
        for i in 0..40u64 {
            let mut p = spawn(StartMethod::Fork, square, i);
            assert_eq!(p.join_timeout(LIMIT).unwrap(), i * i, "fork #{i}");
        }
    });
}

#[derive(Debug)]
struct PanicsWhenSerialized;

impl Serialize for PanicsWhenSerialized {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        panic!("serialize exploded")
    }
}

impl<'de> Deserialize<'de> for PanicsWhenSerialized {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <()>::deserialize(d).map(|()| PanicsWhenSerialized)
    }
}

fn bad_result(_: ()) -> PanicsWhenSerialized {
    PanicsWhenSerialized
}

#[test]
fn a_panic_in_serde_code_is_reported_as_a_panic() {
    let _leaks = common::leak_checked();
    for &m in methods() {
        let err = spawn(m, bad_result, ()).join_timeout(LIMIT).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Panicked, "{m:?}: {err}");
        assert_eq!(err.remote_panic().unwrap().message(), "serialize exploded");
    }
}

#[test]
fn a_zero_timeout_still_sees_a_finished_child() {
    let _leaks = common::leak_checked();
    for &m in methods() {
        let mut p = spawn(m, square, 5);
        assert!(common::eventually(LIMIT, || p.exit_status().is_some()));
        assert_eq!(p.join_timeout(Duration::ZERO).unwrap(), 25, "{m:?}");
    }
}

fn names(_: ()) -> (String, Option<(u32, String)>) {
    let parent = mproc::parent_process().map(|p| (p.pid(), p.name().to_string()));
    (mproc::current_process().name().to_string(), parent)
}

/// `current_process()` and `parent_process()` in children (Python's names), under every
/// start method and in pool workers.
#[test]
fn children_know_their_name_and_parent() {
    let _leaks = common::leak_checked();
    let me = std::process::id();
    assert_eq!(mproc::current_process().name(), "MainProcess");
    assert!(mproc::parent_process().is_none());
    for &m in StartMethod::all() {
        let mut p = Process::builder()
            .name("w1")
            .start_method(m)
            .spawn(names, ())
            .unwrap();
        let (name, parent) = p.join_timeout(LIMIT).unwrap();
        assert_eq!(name, "w1", "{m:?}");
        assert_eq!(parent, Some((me, "MainProcess".to_string())), "{m:?}");
    }
    let pool = mproc::Pool::new(1).unwrap();
    let (name, parent) = pool.apply(names, ()).unwrap();
    assert_eq!(name, "PoolWorker");
    assert_eq!(parent, Some((me, "MainProcess".to_string())));
}
