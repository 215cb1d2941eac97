//! A program that reaps children itself (here: `SIGCHLD` ignored, so the kernel reaps them)
//! takes exit statuses away from mproc. `join` must still return the result, never spin or
//! hang, and never signal a pid that may have been reused. Alone in its binary because the
//! signal disposition is process-wide.

mod common;

use mproc::{Process, StartMethod};

fn square(x: u64) -> u64 {
    x * x
}

fn sleep_forever(_: ()) {
    loop {
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}

#[test]
fn join_survives_a_foreign_reaper() {
    let _leaks = common::leak_checked();
    // SAFETY: setting SIGCHLD to SIG_IGN has no memory-safety preconditions.
    unsafe { libc::signal(libc::SIGCHLD, libc::SIG_IGN) };
    for &m in StartMethod::all() {
        let mut p = Process::builder().start_method(m).spawn(square, 6).unwrap();
        assert_eq!(p.join_timeout(common::LIMIT).unwrap(), 36, "{m:?}");
        assert!(!p.is_alive());
        let status = p.exit_status().unwrap();
        assert!(
            status.success() || status.code().is_none(),
            "{m:?}: {status}"
        );

        let mut p = Process::builder()
            .start_method(m)
            .spawn(sleep_forever, ())
            .unwrap();
        p.kill().unwrap();
        let err = p.join_timeout(common::LIMIT).unwrap_err();
        assert!(err.is_worker_lost(), "{m:?}: {err}");
    }
}
