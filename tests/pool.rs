//! `Pool` behaviour, including every failure promise. The scenarios follow what CPython
//! documents for `multiprocessing.Pool` (map order, `AsyncResult` timeouts, `close`/`join`
//! rules) and the cases where Python's Pool hangs or loses work (a worker killed mid-task or
//! while idle); the code is ours.

mod common;

use std::collections::HashSet;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::LIMIT;
use mproc::{ErrorKind, Pool, StartMethod};

fn square(x: u64) -> u64 {
    x * x
}

fn add(a: i64, b: i64) -> i64 {
    a + b
}

fn my_pid(_: u64) -> u32 {
    std::process::id()
}

fn panics_on_3(x: u64) -> u64 {
    if x == 3 {
        panic!("three is not allowed");
    }
    x
}

fn sleep_forever(_: u64) -> u64 {
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn nap_ms(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

fn pool(n: usize) -> Pool {
    Pool::new(n).expect("pool")
}

#[test]
fn map_is_ordered_like_python() {
    let _leaks = common::leak_checked();
    let p = pool(4);
    assert_eq!(p.map(square, 1..=8).unwrap(), [1, 4, 9, 16, 25, 36, 49, 64]);
    assert_eq!(p.map(square, Vec::<u64>::new()).unwrap(), Vec::<u64>::new());
    let xs: Vec<u64> = (0..1000).collect();
    assert_eq!(
        p.map(square, xs.clone()).unwrap(),
        xs.iter().map(|&x| x * x).collect::<Vec<_>>()
    );
    for chunk in [1, 7, 1000, 5000] {
        assert_eq!(
            p.map_chunked(square, xs.clone(), chunk).unwrap().len(),
            1000
        );
    }
}

/// Waits at the barrier with every other task, then names its worker.
fn meet(b: mproc::Barrier) -> u32 {
    b.wait_timeout(common::LIMIT)
        .expect("every worker at the barrier");
    std::process::id()
}

#[test]
fn a_pool_larger_than_the_fork_servers_request_window_starts_every_worker() {
    let _leaks = common::leak_checked();
    // 12 workers: more than the requests sent ahead to the fork server at once (8). Each task
    // waits for all the others, so they only finish if 12 workers run them side by side.
    let pool = Pool::new(12).unwrap();
    let barrier = mproc::Barrier::new(12).unwrap();
    let handles: Vec<_> = (0..12)
        .map(|_| pool.apply_async(meet, barrier.clone()))
        .collect();
    let mut pids: Vec<u32> = handles
        .into_iter()
        .map(|mut h| h.get_timeout(common::LIMIT).unwrap())
        .collect();
    pids.sort_unstable();
    pids.dedup();
    assert_eq!(pids.len(), 12, "12 distinct workers");
    pool.close();
    pool.join().unwrap();
}

#[test]
// `starmap` takes a named function through a closure: see `StarArgs` (clippy's suggestion to
// drop it does not compile).
#[allow(clippy::redundant_closure)]
fn starmap_apply_and_closures() {
    let _leaks = common::leak_checked();
    let p = pool(2);
    assert_eq!(
        p.starmap(|a, b| add(a, b), vec![(1, 2), (3, 4), (-5, 5)])
            .unwrap(),
        [3, 7, 0]
    );
    assert_eq!(p.apply(square, 9).unwrap(), 81);
    assert_eq!(p.apply(|s: String| s.len(), "four".to_string()).unwrap(), 4);
    assert_eq!(p.map(|x: i32| x - 1, [1, 2, 3]).unwrap(), [0, 1, 2]);
}

#[test]
fn apply_async_handles_like_python() {
    let _leaks = common::leak_checked();
    let p = pool(2);
    let handles: Vec<_> = (0..10).map(|x| p.apply_async(square, x)).collect();
    let got: Vec<u64> = handles.into_iter().map(|h| h.get().unwrap()).collect();
    assert_eq!(got, (0..10).map(square).collect::<Vec<_>>());

    // get(timeout) on a slow task times out and leaves the handle usable (and the task running).
    let mut h = p.apply_async(nap_ms, 300);
    assert!(!h.ready());
    assert_eq!(h.successful(), None);
    assert!(
        h.get_timeout(Duration::from_millis(10))
            .unwrap_err()
            .is_timeout()
    );
    assert!(h.wait_timeout(LIMIT));
    assert!(h.ready());
    assert_eq!(h.successful(), Some(true));
    assert_eq!(h.get_timeout(LIMIT).unwrap(), 300);
    assert_eq!(h.get_timeout(LIMIT).unwrap_err().kind(), ErrorKind::Usage);

    let h = p.apply_async(panics_on_3, 3);
    assert!(h.wait_timeout(LIMIT));
    assert_eq!(h.successful(), Some(false));
    assert_eq!(h.get().unwrap_err().kind(), ErrorKind::Panicked);
}

/// A minimal executor: AsyncResult is a plain `Future`, usable from any runtime.
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    use std::sync::Arc;
    use std::task::{Context, Poll, Wake};
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Arc::new(Unpark(std::thread::current())).into();
    let mut cx = Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    let start = Instant::now();
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        assert!(start.elapsed() < LIMIT, "future never completed");
        std::thread::park_timeout(Duration::from_millis(100));
    }
}

#[test]
fn async_results_are_futures() {
    let _leaks = common::leak_checked();
    let p = pool(2);
    assert_eq!(block_on(p.apply_async(nap_ms, 50)).unwrap(), 50);
    assert_eq!(
        block_on(p.map_async(square, 0..5)).unwrap(),
        [0, 1, 4, 9, 16]
    );
}

#[test]
fn a_panic_fails_only_its_item_and_the_worker_lives_on() {
    let _leaks = common::leak_checked();
    let p = pool(2);
    let err = p.map_chunked(panics_on_3, 0..10, 4).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Panicked, "{err}");
    assert_eq!(
        err.remote_panic().unwrap().message(),
        "three is not allowed"
    );
    assert!(
        err.remote_panic()
            .unwrap()
            .location()
            .unwrap()
            .contains("tests/pool.rs")
    );

    // imap yields the error in place and carries on.
    let got: Vec<_> = p
        .imap(panics_on_3, 0..6)
        .map(|r| r.map_err(|e| e.kind()))
        .collect();
    assert_eq!(
        got,
        [Ok(0), Ok(1), Ok(2), Err(ErrorKind::Panicked), Ok(4), Ok(5)]
    );

    // Panics do not kill workers: the same two pids serve before and after.
    let before: HashSet<u32> = p
        .map_chunked(my_pid, 0..40, 1)
        .unwrap()
        .into_iter()
        .collect();
    for _ in 0..5 {
        assert!(p.apply(panics_on_3, 3).is_err());
    }
    let after: HashSet<u32> = p
        .map_chunked(my_pid, 0..40, 1)
        .unwrap()
        .into_iter()
        .collect();
    assert!(
        after.is_subset(&before) || before.is_subset(&after),
        "{before:?} {after:?}"
    );
}

fn die_on(x: u64) -> u64 {
    match x {
        13 => std::process::abort(),
        17 => {
            // SAFETY: deliberately crashing this worker with SIGSEGV.
            unsafe { std::ptr::null_mut::<u64>().write_volatile(1) };
            x
        }
        19 => {
            // SAFETY: sending SIGKILL to our own process.
            unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
            x
        }
        _ => x * 2,
    }
}

#[test]
fn a_dead_worker_fails_its_task_with_the_signal_and_is_replaced() {
    let _leaks = common::leak_checked();
    for &m in StartMethod::all() {
        let p = Pool::builder()
            .processes(2)
            .start_method(m)
            .build()
            .unwrap();
        let got: Vec<_> = p
            .imap(die_on, 10..22)
            .map(|r| r.map_err(|e| e.exit_status().and_then(|s| s.signal())))
            .collect();
        let want: Vec<Result<u64, Option<i32>>> = (10..22)
            .map(|x| match x {
                13 => Err(Some(libc::SIGABRT)),
                17 => Err(Some(libc::SIGSEGV)),
                19 => Err(Some(libc::SIGKILL)),
                _ => Ok(x * 2),
            })
            .collect();
        assert_eq!(got, want, "{m:?}");
        // The pool is whole again.
        assert_eq!(p.map(square, 0..100).unwrap().len(), 100);
    }
}

fn die_once(path: String) -> u64 {
    // The first attempt dies; the retry finds the mark and succeeds.
    if std::fs::metadata(&path).is_err() {
        std::fs::write(&path, b"1").unwrap();
        std::process::abort();
    }
    7
}

#[test]
fn max_retries_re_runs_a_task_lost_to_a_dead_worker() {
    let _leaks = common::leak_checked();
    let path = std::env::temp_dir().join(format!("mproc-retry-{}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let p = Pool::builder().processes(2).max_retries(1).build().unwrap();
    assert_eq!(
        p.apply(die_once, path.to_string_lossy().into_owned())
            .unwrap(),
        7
    );
    std::fs::remove_file(&path).unwrap();
    // Without retries left, the death is reported.
    let p = Pool::builder().processes(1).max_retries(2).build().unwrap();
    let err = p.apply(die_on, 13).unwrap_err();
    assert_eq!(
        err.exit_status().unwrap().signal(),
        Some(libc::SIGABRT),
        "{err}"
    );
}

fn report_pid_then_sleep(path: String) -> u64 {
    std::fs::write(&path, std::process::id().to_string()).unwrap();
    sleep_forever(0)
}

#[test]
fn a_worker_killed_from_outside_mid_task() {
    let _leaks = common::leak_checked();
    signalled_from_outside_mid_task(libc::SIGKILL);
}

#[test]
fn a_worker_terminated_from_outside_mid_task_reports_sigterm() {
    let _leaks = common::leak_checked();
    signalled_from_outside_mid_task(libc::SIGTERM);
}

fn signalled_from_outside_mid_task(sig: i32) {
    let path = std::env::temp_dir().join(format!("mproc-victim-{}-{sig}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let p = pool(2);
    let victim = p.apply_async(report_pid_then_sleep, path.to_string_lossy().into_owned());
    let others = p.map_async(square, 0..50);
    assert!(common::eventually(LIMIT, || std::fs::read_to_string(&path)
        .is_ok_and(|s| !s.is_empty())));
    let pid: i32 = std::fs::read_to_string(&path).unwrap().parse().unwrap();
    // SAFETY: a signal to the pid of our worker, which is alive (it is sleeping in its task).
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
    let mut victim = victim;
    let err = victim.get_timeout(LIMIT).unwrap_err();
    assert!(err.is_worker_lost(), "{err}");
    assert_eq!(err.exit_status().unwrap().signal(), Some(sig), "{err}");
    let mut others = others;
    assert_eq!(others.get_timeout(LIMIT).unwrap().len(), 50);
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn an_idle_worker_killed_leaves_the_pool_usable() {
    let _leaks = common::leak_checked();
    // Python's Pool hangs forever after this.
    let p = pool(2);
    let pids: HashSet<u32> = p
        .map_chunked(my_pid, 0..40, 1)
        .unwrap()
        .into_iter()
        .collect();
    for &pid in &pids {
        // SAFETY: SIGKILL to idle workers of our pool.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
    assert!(common::eventually(LIMIT, || pids
        .iter()
        .all(|&p| common::pid_gone(p))));
    let mut h = p.map_async(square, 0..200);
    assert_eq!(h.get_timeout(LIMIT).unwrap().len(), 200);
    let now: HashSet<u32> = p
        .map_chunked(my_pid, 0..40, 1)
        .unwrap()
        .into_iter()
        .collect();
    assert!(now.is_disjoint(&pids), "replaced: {pids:?} -> {now:?}");
}

#[test]
fn a_task_past_its_timeout_is_killed_and_the_rest_completes() {
    let _leaks = common::leak_checked();
    let timeout = Duration::from_millis(300);
    let p = Pool::builder()
        .processes(2)
        .task_timeout(timeout)
        .build()
        .unwrap();
    let start = Instant::now();
    let mut stuck = p.apply_async(sleep_forever, 0);
    let mut rest = p.map_async(square, 0..100);
    let err = stuck.get_timeout(LIMIT).unwrap_err();
    assert!(err.is_timeout(), "{err}");
    // Generous margin: this machine is shared; the point is that it does end.
    assert!(start.elapsed() < timeout + Duration::from_secs(10));
    assert_eq!(rest.get_timeout(LIMIT).unwrap().len(), 100);
    // Endless and quick tasks mixed: only the endless ones fail.
    let got: Vec<bool> = p
        .imap(
            |x: u64| if x % 5 == 0 { sleep_forever(x) } else { x },
            1..=10,
        )
        .map(|r| match r {
            Ok(_) => true,
            Err(e) => {
                assert!(e.is_timeout(), "{e}");
                false
            }
        })
        .collect();
    assert_eq!(
        got,
        [true, true, true, true, false, true, true, true, true, false]
    );
}

#[test]
fn max_tasks_per_child_recycles_workers_and_loses_nothing() {
    let _leaks = common::leak_checked();
    let p = Pool::builder()
        .processes(2)
        .max_tasks_per_child(3)
        .build()
        .unwrap();
    let pids = p.map_chunked(my_pid, 0..60, 1).unwrap();
    assert_eq!(pids.len(), 60);
    let distinct: HashSet<u32> = pids.into_iter().collect();
    assert!(
        distinct.len() >= 20,
        "60 tasks, 3 per worker: at least 20 workers, got {}",
        distinct.len()
    );
    assert_eq!(
        p.map_chunked(square, 0..500, 1).unwrap(),
        (0..500).map(square).collect::<Vec<_>>()
    );
}

static GREETING: OnceLock<String> = OnceLock::new();

fn init_greeting(g: String) {
    GREETING.set(g).unwrap();
}

fn greeting(_: u64) -> String {
    GREETING.get().cloned().unwrap_or_default()
}

fn bad_init(_: ()) {
    panic!("initializer exploded");
}

fn crashing_init(_: ()) {
    std::process::abort();
}

#[test]
fn the_initializer_runs_in_every_worker_including_replacements() {
    let _leaks = common::leak_checked();
    let p = Pool::builder()
        .processes(2)
        .initializer(init_greeting, "hi".to_string())
        .max_tasks_per_child(2)
        .build()
        .unwrap();
    let got = p.map_chunked(greeting, 0..20, 1).unwrap();
    assert!(got.iter().all(|g| g == "hi"), "{got:?}");
}

#[test]
fn a_failing_initializer_breaks_the_pool_with_a_clear_error() {
    let _leaks = common::leak_checked();
    for init in [bad_init as fn(()), crashing_init] {
        let p = Pool::builder()
            .processes(2)
            .initializer(init, ())
            .build()
            .unwrap();
        let mut h = p.map_async(square, 0..10);
        let err = h.get_timeout(LIMIT).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Broken, "{err}");
        assert!(err.to_string().contains("initializer"), "{err}");
        // And it stays broken, promptly, without respawning forever.
        let mut h = p.apply_async(square, 1);
        assert_eq!(h.get_timeout(LIMIT).unwrap_err().kind(), ErrorKind::Broken);
    }
}

#[test]
fn close_and_join_follow_python_rules() {
    let _leaks = common::leak_checked();
    let p = pool(2);
    assert_eq!(
        p.join().unwrap_err().kind(),
        ErrorKind::Usage,
        "join before close"
    );
    let mut h = p.map_async(nap_ms, [50, 50, 50]);
    p.close();
    assert_eq!(
        p.apply_async(square, 1).get().unwrap_err().kind(),
        ErrorKind::Closed
    );
    assert_eq!(p.map(square, 0..3).unwrap_err().kind(), ErrorKind::Closed);
    p.join().unwrap();
    // Work submitted before close completed.
    assert_eq!(h.get_timeout(LIMIT).unwrap(), [50, 50, 50]);
}

#[test]
fn terminate_fails_outstanding_work() {
    let _leaks = common::leak_checked();
    let p = pool(2);
    let mut h = p.apply_async(sleep_forever, 0);
    p.terminate();
    assert_eq!(h.get_timeout(LIMIT).unwrap_err().kind(), ErrorKind::Closed);
    p.join().unwrap();
}

#[test]
fn imap_is_lazy_and_bounded_over_an_endless_input() {
    let _leaks = common::leak_checked();
    let p = pool(2);
    let mut pulled = 0u64;
    let input = std::iter::repeat_with(|| {
        pulled += 1;
        pulled
    });
    let mut it = p.imap(square, input);
    let first: Vec<u64> = (0..100)
        .map(|_| it.next_timeout(LIMIT).unwrap().unwrap())
        .collect();
    assert_eq!(first, (1..=100).map(square).collect::<Vec<_>>());
    drop(it);
    assert!(
        pulled < 100 + 64,
        "only a bounded window was pulled ahead: {pulled}"
    );

    let mut seen: Vec<u64> = p
        .imap_unordered(square, 0..300u64)
        .map(|r| r.unwrap())
        .collect();
    seen.sort_unstable();
    assert_eq!(seen, (0..300).map(square).collect::<Vec<_>>());
    let n = p.imap_unordered(square, 0u64..).take(500).count();
    assert_eq!(n, 500);
}

fn hog(mb: usize) -> usize {
    let v = vec![1u8; mb << 20];
    std::hint::black_box(&v);
    v.len()
}

#[test]
fn memory_limit_fails_the_allocating_task_alone() {
    let _leaks = common::leak_checked();
    let p = Pool::builder()
        .processes(2)
        .memory_limit(256 << 20)
        .build()
        .unwrap();
    let err = p.apply(hog, 1024).unwrap_err();
    assert!(err.is_worker_lost(), "{err}");
    assert_eq!(
        err.exit_status().unwrap().signal(),
        Some(libc::SIGABRT),
        "{err}"
    );
    assert_eq!(p.apply(hog, 16).unwrap(), 16 << 20);
}

#[test]
fn many_threads_submit_at_once() {
    let _leaks = common::leak_checked();
    let p = pool(3);
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let p = &p;
            s.spawn(move || {
                for i in 0..50u64 {
                    let x = t * 1000 + i;
                    assert_eq!(p.apply(square, x).unwrap(), x * x);
                }
                assert_eq!(p.map(square, 0..100).unwrap().len(), 100);
            });
        }
    });
}

#[test]
fn pool_is_send_and_sync() {
    let _leaks = common::leak_checked();
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Pool>();
    send_sync::<mproc::AsyncResult<Vec<u8>>>();
}

/// `apply` borrows an idle worker directly (the fast path); every failure rule must hold there
/// too.
#[test]
fn synchronous_apply_keeps_every_failure_rule() {
    let _leaks = common::leak_checked();
    let p = Pool::builder()
        .processes(2)
        .task_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    assert_eq!(p.apply(square, 4).unwrap(), 16);
    assert!(p.apply(sleep_forever, 0).unwrap_err().is_timeout());
    let err = p.apply(die_on, 17).unwrap_err();
    assert_eq!(
        err.exit_status().unwrap().signal(),
        Some(libc::SIGSEGV),
        "{err}"
    );
    assert_eq!(
        p.apply(panics_on_3, 3).unwrap_err().kind(),
        ErrorKind::Panicked
    );
    assert_eq!(p.apply(square, 5).unwrap(), 25);

    // Recycling counts tasks run on borrowed workers.
    let p = Pool::builder()
        .processes(1)
        .max_tasks_per_child(2)
        .build()
        .unwrap();
    let pids: HashSet<u32> = (0..10).map(|i| p.apply(my_pid, i).unwrap()).collect();
    assert!(pids.len() >= 5, "10 tasks, 2 per worker: {pids:?}");

    // Terminating the pool while a thread waits in `apply` (or is about to) fails that call
    // with `Closed`, promptly: never a hang.
    let p = pool(1);
    std::thread::scope(|s| {
        let waiter = s.spawn(|| p.apply(sleep_forever, 0));
        p.terminate();
        let err = waiter.join().unwrap().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Closed, "{err}");
    });
}

fn hang_up_then_exit(x: u64) -> u64 {
    if x == 100 {
        // Close this worker's side of every socket, linger, then die: the supervisor sees
        // EOF well before the exit.
        for fd in 3..256 {
            // SAFETY: shutting down sockets of this doomed worker process; other fds ignore it.
            unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
        }
        std::thread::sleep(Duration::from_millis(200));
        std::process::exit(3);
    }
    x
}

#[test]
fn a_worker_hanging_up_mid_map_loses_no_queued_job() {
    let _leaks = common::leak_checked();
    let p = pool(1);
    let mut h = p.map_async(hang_up_then_exit, 0..400);
    let err = h.get_timeout(LIMIT).unwrap_err();
    assert_eq!(err.exit_status().and_then(|s| s.code()), Some(3), "{err}");
    // Every other item still ran: nothing was dropped on the floor.
    let got: Vec<_> = p
        .imap(hang_up_then_exit, (0..400).filter(|&x| x != 100))
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(got.len(), 399);
}

#[test]
fn workers_used_only_through_apply_are_recycled_without_breaking_the_pool() {
    let _leaks = common::leak_checked();
    let p = Pool::builder()
        .processes(1)
        .max_tasks_per_child(1)
        .build()
        .unwrap();
    for i in 0..12 {
        assert_eq!(p.apply(square, i).unwrap(), i * i, "call {i}");
        // Give the replacement time to become idle, so that the next call borrows it.
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_crash_on_a_borrowed_worker_is_not_mistaken_for_a_timeout() {
    let _leaks = common::leak_checked();
    let p = Pool::builder()
        .processes(1)
        .task_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    assert_eq!(p.apply(square, 2).unwrap(), 4);
    // Let the last deadline the supervisor computed go stale.
    std::thread::sleep(Duration::from_millis(600));
    let err = p.apply(die_on, 13).unwrap_err();
    assert_eq!(
        err.exit_status().and_then(|s| s.signal()),
        Some(libc::SIGABRT),
        "{err}"
    );
}

fn echo_len(v: Vec<u8>) -> Vec<u8> {
    v
}

fn exit_on_7(x: u64) -> u64 {
    if x == 7 {
        std::process::exit(7);
    }
    x
}

/// `apply` hands a small task and its answer over in the worker's mailbox (`task::mailbox`)
/// and anything larger by the socket: values on both sides of the mailbox's size, in every
/// order, from several threads at once, come back whole; a panic or an exit in a task that
/// came by the mailbox fails that call alone, and the next one runs.
#[test]
fn apply_carries_small_and_large_values_by_mailbox_and_socket_alike() {
    let _leaks = common::leak_checked();
    let p = std::sync::Arc::new(
        Pool::builder()
            .processes(2)
            .task_timeout(LIMIT) // no call here can hang
            .build()
            .unwrap(),
    );
    let sizes = [
        0usize, 1, 7, 8, 100, 1900, 1960, 1990, 2100, 5000, 70_000, 3, 2000, 1,
    ];
    std::thread::scope(|s| {
        for t in 0..3u8 {
            let p = &p;
            s.spawn(move || {
                for round in 0..20 {
                    for &n in &sizes {
                        let v: Vec<u8> = (0..n).map(|i| (i as u8) ^ t ^ round).collect();
                        assert_eq!(p.apply(echo_len, v.clone()).unwrap(), v, "{n} bytes");
                    }
                }
            });
        }
    });
    for i in 0..50u64 {
        assert_eq!(p.apply(square, i).unwrap(), i * i);
        let e = p.apply(panics_on_3, 3).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Panicked);
        let e = p.apply(exit_on_7, 7).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::WorkerDied, "{e}");
        assert_eq!(p.apply(exit_on_7, i % 7).unwrap(), i % 7);
    }
}
