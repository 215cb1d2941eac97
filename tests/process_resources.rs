//! Resources: after every kind of ending (join, panic, crash, kill, timeout, drop, refused
//! binary), no fd, child process or `/dev/shm` entry is left; and a fork server killed from
//! outside is replaced on the next start. One test per file section, run one after the other
//! in a single test so that counts are not disturbed by concurrent tests.

mod common;

use std::time::Duration;

use common::{LIMIT, children, open_fds, shm_entries};
use mproc::{Process, StartMethod};

fn square(x: u64) -> u64 {
    x * x
}

fn boom(_: ()) {
    panic!("boom")
}

fn abort(_: ()) {
    std::process::abort()
}

fn sleep_forever(_: ()) {
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn every_kind_of_ending(m: StartMethod) {
    assert_eq!(
        Process::builder()
            .start_method(m)
            .spawn(square, 3)
            .unwrap()
            .join_timeout(LIMIT)
            .unwrap(),
        9
    );
    assert!(
        Process::builder()
            .start_method(m)
            .spawn(boom, ())
            .unwrap()
            .join_timeout(LIMIT)
            .is_err()
    );
    assert!(
        Process::builder()
            .start_method(m)
            .spawn(abort, ())
            .unwrap()
            .join_timeout(LIMIT)
            .is_err()
    );
    let mut p = Process::builder()
        .start_method(m)
        .spawn(sleep_forever, ())
        .unwrap();
    assert!(
        p.join_timeout(Duration::from_millis(10))
            .unwrap_err()
            .is_timeout()
    );
    p.kill().unwrap();
    assert!(p.join_timeout(LIMIT).unwrap_err().is_worker_lost());
    drop(
        Process::builder()
            .start_method(m)
            .spawn(sleep_forever, ())
            .unwrap(),
    );
    let mut p = Process::builder()
        .start_method(m)
        .env("MPROC_TEST_FAKE_IDENTITY", "x")
        .spawn(square, 1)
        .unwrap();
    assert!(p.join_timeout(LIMIT).is_err());
}

fn fork_server_pid(known: &[u32]) -> Option<u32> {
    children().into_iter().find(|c| !known.contains(c))
}

#[test]
fn nothing_leaks_and_a_dead_fork_server_is_replaced() {
    // Warm up: the spawner thread and the fork server exist from here on.
    for &m in StartMethod::all() {
        Process::builder()
            .start_method(m)
            .spawn(square, 1)
            .unwrap()
            .join_timeout(LIMIT)
            .unwrap();
    }
    let (fds, kids, shm) = (open_fds(), children(), shm_entries());
    assert_eq!(
        kids.len(),
        1,
        "only the fork server is a child between processes: {kids:?}"
    );

    for _ in 0..3 {
        for &m in StartMethod::all() {
            every_kind_of_ending(m);
        }
    }
    assert_eq!(open_fds(), fds, "no fd leaked");
    assert_eq!(children(), kids, "no child left");
    assert_eq!(shm_entries(), shm, "no /dev/shm entry left");

    // Kill the fork server from outside: the next start replaces it.
    let server = fork_server_pid(&[]).expect("a fork server");
    // SAFETY: signalling our own child by pid; it is not reaped yet, so the pid is its own.
    assert_eq!(unsafe { libc::kill(server as i32, libc::SIGKILL) }, 0);
    let mut p = Process::builder()
        .start_method(StartMethod::ForkServer)
        .spawn(square, 4)
        .unwrap();
    assert_eq!(p.join_timeout(LIMIT).unwrap(), 16);
    let now = children();
    assert_eq!(
        now.len(),
        1,
        "the old server was reaped and one new server runs: {now:?}"
    );
    assert_ne!(now[0], server);
    assert!(common::pid_gone(server));
    let list = || {
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .flatten()
            .map(|e| {
                format!(
                    "{}->{:?}",
                    e.file_name().to_string_lossy(),
                    std::fs::read_link(e.path()).ok()
                )
            })
            .collect::<Vec<_>>()
    };
    // `p` is still in scope: a joined handle holds no fd.
    assert_eq!(open_fds(), fds, "no fd leaked by the restart: {:?}", list());
    assert!(!p.is_alive());

    // Again, with a pool next: its workers are asked for together (requests sent ahead of the
    // replies), and a dead server there also gets replaced.
    let server = now[0];
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(server as i32, libc::SIGKILL) }, 0);
    let pool = mproc::Pool::new(3).unwrap();
    assert_eq!(pool.map(square, 0..10).unwrap()[9], 81);
    pool.close();
    pool.join().unwrap();
    drop(pool);
    let now = children();
    assert_eq!(now.len(), 1, "one new server runs: {now:?}");
    assert_ne!(now[0], server);
    assert!(common::pid_gone(server));
    assert_eq!(
        open_fds(),
        fds,
        "no fd leaked by the pool's restart: {:?}",
        list()
    );
}
