//! Time the program as a whole spends stopped (Ctrl-Z then `fg`, `SIGSTOP`/`SIGCONT`, a frozen
//! container) does not count against `task_timeout`. Alone in its binary: it stops this whole
//! process, and every test in it.

mod common;

use std::process::Command;
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use common::{LIMIT, children};
use mproc::Pool;

fn nap_400ms(x: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(400));
    x
}

/// Stops this process and every child of it for `pause`, from a shell outside it, then lets
/// them go on; returns once they run again.
fn stop_everything_for(pause: Duration) {
    let mut pids: Vec<String> = children().iter().map(|p| p.to_string()).collect();
    pids.push(std::process::id().to_string());
    let pids = pids.join(" ");
    // The pause's length is the scenario (Ctrl-Z, then `fg` a moment later), not ordering.
    let script = format!(
        "kill -STOP {pids}; sleep {}; kill -CONT {pids}",
        pause.as_secs_f64()
    );
    let status = Command::new("sh")
        .arg("-c")
        .arg(script)
        .status()
        .expect("sh runs");
    assert!(status.success());
}

fn paused_run(through_apply: bool) {
    let pool = Arc::new(
        Pool::builder()
            .processes(1)
            .task_timeout(Duration::from_millis(800))
            .build()
            .unwrap(),
    );
    // Warm up: the worker is serving (and, for `apply`, offered to borrowers).
    assert_eq!(pool.apply(nap_400ms, 1).unwrap(), 1);
    let (tx, rx) = mpsc::channel();
    let p = Arc::clone(&pool);
    let started = Instant::now();
    std::thread::spawn(move || {
        let r = if through_apply {
            p.apply(nap_400ms, 7)
        } else {
            p.apply_async(nap_400ms, 7).get()
        };
        let _ = tx.send(r);
    });
    // Let the task begin: its first 100 ms run before the pause (any moment inside the
    // task's 400 ms would do).
    std::thread::sleep(Duration::from_millis(100));
    stop_everything_for(Duration::from_millis(1500));
    let r = rx.recv_timeout(LIMIT).expect("the task ends");
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "the pause happened while the task ran"
    );
    assert_eq!(
        r.expect("400 ms of running time is within an 800 ms timeout, however long the pause"),
        7
    );
}

#[test]
fn a_stopped_program_does_not_time_its_tasks_out() {
    for through_apply in [false, true] {
        paused_run(through_apply);
    }
}
