//! A fork server that stops answering (`SIGSTOP` here; a machine under heavy load looks the
//! same) freezes nothing: healthy workers keep serving, dropping a pool returns promptly, and
//! the server is replaced, so new pools and processes start. Alone in its binary: it stops
//! the process-wide fork server.

mod common;

use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{LIMIT, children, eventually, pid_gone};
use mproc::{Pool, Process};

fn pid(_: ()) -> u32 {
    std::process::id()
}

fn square(x: u64) -> u64 {
    x * x
}

/// Runs `f` on a thread and waits at most `limit`: a call that blocks past it fails the test.
fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit)
        .unwrap_or_else(|_| panic!("blocked for more than {limit:?}"))
}

#[test]
fn a_stuck_fork_server_freezes_no_pool() {
    // The fork server starts with the first process; it is then our only child.
    let mut p = Process::spawn(pid, ()).unwrap();
    p.join_timeout(LIMIT).unwrap();
    let before = children();
    assert_eq!(before.len(), 1, "only the fork server: {before:?}");
    let server = before[0];

    let pool = Pool::new(2).unwrap();
    assert_eq!(pool.map(square, 0..100u64).unwrap().len(), 100);
    let workers: Vec<u32> = children().into_iter().filter(|&c| c != server).collect();
    assert_eq!(workers.len(), 2, "{workers:?}");

    // The server stops answering, and a worker dies: its replacement cannot be had.
    // SAFETY: signals to our own children, listed just now.
    unsafe {
        assert_eq!(libc::kill(server as i32, libc::SIGSTOP), 0);
        assert_eq!(libc::kill(workers[0] as i32, libc::SIGKILL), 0);
    }
    // The other worker keeps serving, through the supervisor and through `apply`.
    for x in 0..20u64 {
        let mut h = pool.apply_async(square, x);
        assert_eq!(h.get_timeout(Duration::from_secs(2)).unwrap(), x * x);
    }
    let pool = std::sync::Arc::new(pool);
    let p = std::sync::Arc::clone(&pool);
    assert_eq!(
        within(Duration::from_secs(2), move || p.apply(square, 9)).unwrap(),
        81
    );
    // Dropping the pool returns promptly (it used to block for 21.7 s).
    let start = Instant::now();
    within(Duration::from_secs(2), move || drop(pool));
    eprintln!("drop with a stuck fork server: {:?}", start.elapsed());

    // A new pool and a new process start: the stuck server is replaced (or, while it is
    // being replaced, they wait for the new one; never for long).
    let pool = within(LIMIT, || Pool::new(2).unwrap());
    assert_eq!(pool.map(square, 0..100u64).unwrap().len(), 100);
    let mut p = within(LIMIT, || Process::spawn(pid, ()).unwrap());
    assert!(p.join_timeout(LIMIT).unwrap() > 0);
    drop(pool);
    assert!(
        eventually(LIMIT, || pid_gone(server)),
        "the stuck server was killed and reaped"
    );
    let after = children();
    assert!(
        after.len() <= 1 && !after.contains(&server),
        "one new server at most, the old one gone: {after:?}"
    );
}
