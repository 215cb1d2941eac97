//! Children die with their parent: a helper parent (this test binary, re-executed) starts
//! children and a pool with every start method (and so the fork server), then is SIGKILLed,
//! aborts, panics under an aborting panic hook, or gets SIGINT (Ctrl-C); no descendant of it
//! may be alive a second later.
//!
//! `panic = "abort"` is a profile setting and cannot differ per test binary, so the helper
//! simulates it the way the runtime does: a panic hook that calls `abort()` once the panic
//! message is printed, which is what `panic = "abort"` does after the hook runs.
//!
//! This binary makes itself a child subreaper, so the helper's orphans are re-parented to it
//! and can be reaped and examined here instead of lingering as someone else's zombies.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::LIMIT;
use mproc::{Pool, Process, StartMethod};

const ROLE: &str = "MPROC_TEST_PARENT_ROLE";

fn my_pid(_: u32) -> u32 {
    std::process::id()
}

fn sleep_forever(_: ()) {
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The helper parent's body: only does something when re-executed with `ROLE` set.
#[test]
fn helper_parent() {
    let Some(role) = std::env::var_os(ROLE) else {
        return;
    };
    let kids: Vec<Process<()>> = StartMethod::all()
        .iter()
        .map(|&m| {
            Process::builder()
                .start_method(m)
                .spawn(sleep_forever, ())
                .expect("spawn")
        })
        .collect();
    // A pool per start method, its workers running (each has answered a task).
    let pools: Vec<Pool> = StartMethod::all()
        .iter()
        .map(|&m| {
            Pool::builder()
                .processes(2)
                .start_method(m)
                .build()
                .expect("pool")
        })
        .collect();
    let mut workers: Vec<u32> = pools
        .iter()
        .flat_map(|p| p.map_chunked(my_pid, 0..16, 1).expect("map"))
        .collect();
    workers.sort_unstable();
    workers.dedup();
    let pids: Vec<String> = kids.iter().map(|p| p.pid().to_string()).collect();
    let workers: Vec<String> = workers.iter().map(u32::to_string).collect();
    println!("PIDS {} POOL {}", pids.join(" "), workers.join(" "));
    if role == "abort" || role == "panic" {
        // Wait until the test has looked at our family, then die abruptly.
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
        if role == "panic" {
            let hook = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                hook(info);
                std::process::abort();
            }));
            panic!("the helper parent panics under an aborting panic hook");
        }
        std::process::abort();
    }
    sleep_forever(());
}

fn descendants_of(pid: u32) -> Vec<u32> {
    let mut out = vec![];
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) else {
            continue;
        };
        for t in tasks.flatten() {
            if let Ok(s) = std::fs::read_to_string(t.path().join("children")) {
                for c in s.split_whitespace().filter_map(|c| c.parse().ok()) {
                    out.push(c);
                    todo.push(c);
                }
            }
        }
    }
    out
}

fn become_subreaper() {
    // SAFETY: PR_SET_CHILD_SUBREAPER takes an integer flag and touches no memory of ours.
    let ret = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(ret, 0, "prctl(PR_SET_CHILD_SUBREAPER)");
}

/// Reaps `pid` if it has ended; true once it is gone.
fn reaped(pid: u32) -> bool {
    let mut status = 0;
    // SAFETY: `status` is a valid out-pointer; WNOHANG never blocks.
    let r = unsafe { libc::waitpid(pid as i32, &mut status, libc::WNOHANG) };
    r == pid as i32 || (r == -1 && common::pid_gone(pid))
}

fn run_helper_and_end_it(role: &str) {
    become_subreaper();
    let exe = std::env::current_exe().unwrap();
    let helper = Command::new(exe)
        .args([
            "helper_parent",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ROLE, role)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut helper = KillOnDrop(helper);
    let helper = &mut helper.0;
    let stdout = helper.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            // libtest prints "test helper_parent ... " on the same line first.
            if let Some((_, rest)) = line.split_once("PIDS ") {
                let (kids, workers) = rest.split_once(" POOL ").unwrap_or((rest, ""));
                let parse = |s: &str| -> Vec<u32> {
                    s.split_whitespace()
                        .filter_map(|p| p.parse().ok())
                        .collect()
                };
                let _ = tx.send((parse(kids), parse(workers)));
            }
        }
    });
    let (kids, workers) = rx
        .recv_timeout(LIMIT)
        .expect("the helper reports its children");
    assert_eq!(kids.len(), StartMethod::all().len());
    assert!(
        workers.len() >= StartMethod::all().len(),
        "pool workers: {workers:?}"
    );
    let family = descendants_of(helper.id());
    for k in kids.iter().chain(&workers) {
        assert!(
            family.contains(k),
            "child {k} is the helper's own child: {family:?}"
        );
    }
    // The fork server is a descendant too.
    assert!(
        family.len() > kids.len(),
        "the fork server is among {family:?}"
    );
    if role == "kill" {
        helper.kill().unwrap();
    } else if role == "sigint" {
        // SAFETY: SIGINT to our own child, which has not been reaped (we hold its handle).
        assert_eq!(unsafe { libc::kill(helper.id() as i32, libc::SIGINT) }, 0);
    } else {
        use std::io::Write;
        helper.stdin.take().unwrap().write_all(b"go\n").unwrap();
    }
    let status = wait_child(helper);
    let expected = match role {
        "kill" => libc::SIGKILL,
        "sigint" => libc::SIGINT,
        _ => libc::SIGABRT,
    };
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(expected), "{role}: {status}");
    let start = std::time::Instant::now();
    let all_gone = common::eventually(Duration::from_secs(1), || family.iter().all(|&p| reaped(p)));
    let alive: Vec<_> = family.iter().filter(|&&p| !common::pid_gone(p)).collect();
    assert!(
        all_gone,
        "descendants still alive 1 s after the parent died: {alive:?}"
    );
    eprintln!(
        "{role}: {} descendants ({} pool workers) gone {:?} after the parent",
        family.len(),
        workers.len(),
        start.elapsed()
    );
}

/// Kills the helper if an assertion fails before it ended, so that a failing run leaves nothing.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_child(c: &mut std::process::Child) -> std::process::ExitStatus {
    let start = std::time::Instant::now();
    loop {
        if let Some(s) = c.try_wait().unwrap() {
            return s;
        }
        assert!(start.elapsed() < LIMIT, "helper did not end");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn children_die_when_the_parent_is_sigkilled() {
    run_helper_and_end_it("kill");
}

#[test]
fn children_die_when_the_parent_aborts() {
    run_helper_and_end_it("abort");
}

#[test]
fn children_and_pools_die_when_the_parent_panics_with_panic_abort() {
    run_helper_and_end_it("panic");
}

#[test]
fn children_and_pools_die_on_sigint_to_the_parent() {
    run_helper_and_end_it("sigint");
}
