//! A pool's whole life leaves nothing behind: after `close`+`join`, `terminate`, or a `Drop`
//! with endless tasks still running, every worker is gone (not even a zombie) and every fd is
//! closed. Alone in its binary so that the counts are this test's own.

mod common;

use std::time::{Duration, Instant};

use common::{LIMIT, children, open_fds, shm_entries};
use mproc::{Pool, Process, StartMethod};

fn square(x: u64) -> u64 {
    x * x
}

fn my_pid(_: u64) -> u32 {
    std::process::id()
}

fn sleep_forever(_: u64) -> u64 {
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

#[test]
fn pools_leave_nothing_behind() {
    // Warm up the spawner thread and the fork server, which live as long as the process.
    Process::builder()
        .start_method(StartMethod::ForkServer)
        .spawn(square, 1)
        .unwrap()
        .join_timeout(LIMIT)
        .unwrap();
    let (fds, kids, shm) = (open_fds(), children(), shm_entries());

    for &m in StartMethod::all() {
        // close + join: work completes, workers exit.
        let p = Pool::builder()
            .processes(3)
            .start_method(m)
            .build()
            .unwrap();
        assert_eq!(p.map(square, 0..100).unwrap().len(), 100);
        p.close();
        p.join().unwrap();
        drop(p);
        assert_eq!(children(), kids, "{m:?}: close+join");

        // Drop with endless tasks running and queued: prompt, and every worker reaped.
        let p = Pool::builder()
            .processes(2)
            .start_method(m)
            .build()
            .unwrap();
        let pids: Vec<u32> = p.map_chunked(my_pid, 0..20, 1).unwrap();
        let handles: Vec<_> = (0..6).map(|i| p.apply_async(sleep_forever, i)).collect();
        assert!(common::eventually(LIMIT, || !handles
            .iter()
            .any(|h| h.ready())
            && children().len() >= kids.len() + 2));
        let start = Instant::now();
        drop(p);
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "drop returned promptly: {:?}",
            start.elapsed()
        );
        assert_eq!(children(), kids, "{m:?}: drop with endless tasks");
        assert!(
            pids.iter().all(|&pid| common::pid_gone(pid)),
            "{m:?}: no zombie"
        );
        for h in handles {
            assert_eq!(h.get().unwrap_err().kind(), mproc::ErrorKind::Closed);
        }

        // terminate + join.
        let p = Pool::builder()
            .processes(2)
            .start_method(m)
            .build()
            .unwrap();
        let _h = p.apply_async(sleep_forever, 0);
        p.terminate();
        p.join().unwrap();
        assert_eq!(children(), kids, "{m:?}: terminate");
    }
    assert_eq!(open_fds(), fds, "no fd leaked");
    assert_eq!(shm_entries(), shm, "no /dev/shm entry left");
}
