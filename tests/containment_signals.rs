//! Containment of a task's own subprocesses, terminal signals, start-method names and launches
//! through the dynamic loader (issue 14, cases 4, 5, 10 and 11), under every start method.
//!
//! - Every worker, `Process` child and the fork server lead their own process group, and a
//!   `sleep 60` started by a task dies with its worker: on `task_timeout`, pool drop, pool
//!   close + join, `Process::kill`, `Process` drop and a `Process` that returns.
//! - A SIGINT to the parent's process group (what a terminal's Ctrl-C sends) reaches the parent
//!   only: workers keep serving. Simulated in a helper (this binary, re-executed as rayon's
//!   `stack_overflow_crash` test does) that leads its own group, so the signal never reaches the
//!   test harness.
//! - Workers and `Process` children read `/dev/null` as stdin, as in Python.
//! - `MPROC_START_METHOD` names are accepted in any case, anything else is a clear error.
//! - The test binary run through `/lib64/ld-linux-x86-64.so.2` starts workers with every method.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{LIMIT, eventually, pid_state};
use mproc::{Connection, ErrorKind, Pool, Process, StartMethod};

/// Selects a helper scenario when this binary is re-executed.
const ROLE: &str = "MPROC_TEST_CONTAINMENT_ROLE";
const LOADER: &str = "/lib64/ld-linux-x86-64.so.2";

/// Starts `sleep 60` and returns its pid; the task does not wait for it (what mproc must
/// clean up is exactly such a subprocess).
#[allow(clippy::zombie_processes)]
fn start_sleep() -> u32 {
    let child = Command::new("sleep")
        .arg("60")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("sleep starts");
    child.id()
}

/// A task that starts `sleep 60`, sends its pid and then runs forever.
fn sleep_then_hang(tx: Connection<u32>) {
    tx.send(&start_sleep()).expect("send the pid");
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// A task that starts `sleep 60` and returns its pid.
fn sleep_then_return(_: ()) -> u32 {
    start_sleep()
}

/// Receives the grandchild's pid and checks it is running `sleep`.
fn grandchild(rx: &Connection<u32>) -> u32 {
    let pid = rx
        .recv_timeout(LIMIT)
        .expect("the task reports its subprocess");
    assert_alive_sleep(pid);
    pid
}

fn assert_alive_sleep(pid: u32) {
    // `spawn` returns once `exec` is under way (glibc's `posix_spawn` uses a vfork), which may
    // be before the kernel has set up the new command line.
    let cmdline = || std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    assert!(
        eventually(LIMIT, || cmdline().starts_with(b"sleep\0")),
        "{pid} is not our sleep: {:?} (state {:?})",
        cmdline(),
        pid_state(pid)
    );
}

/// Gone, or a zombie waiting for whoever adopted it: it runs no more.
fn dead(pid: u32) -> bool {
    pid_state(pid).is_none_or(|s| s == 'Z' || s == 'X')
}

fn assert_dies(pid: u32, what: &str) {
    assert!(
        eventually(LIMIT, || dead(pid)),
        "{what}: the task's subprocess {pid} outlived it (state {:?})",
        pid_state(pid)
    );
}

/// The process group of `pid`, from `/proc` (the field after the parent's pid).
fn pgid_of(pid: u32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
    fields.nth(2)?.parse().ok()
}

fn methods() -> &'static [StartMethod] {
    StartMethod::all()
}

#[test]
fn a_timed_out_task_s_subprocess_dies_with_its_worker() {
    let _leaks = common::leak_checked();
    for &m in methods() {
        let pool = Pool::builder()
            .processes(1)
            .start_method(m)
            .task_timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        let (tx, rx) = mproc::pipe::<u32>().unwrap();
        let mut h = pool.apply_async(sleep_then_hang, tx);
        let pid = grandchild(&rx);
        let err = h.get_timeout(LIMIT).unwrap_err();
        assert!(err.is_timeout(), "{m:?}: {err}");
        assert_dies(pid, &format!("{m:?} task_timeout"));
        drop(pool);
    }
}

#[test]
fn a_running_task_s_subprocess_dies_when_the_pool_is_dropped() {
    let _leaks = common::leak_checked();
    for &m in methods() {
        let pool = Pool::builder()
            .processes(1)
            .start_method(m)
            .build()
            .unwrap();
        let (tx, rx) = mproc::pipe::<u32>().unwrap();
        let h = pool.apply_async(sleep_then_hang, tx);
        let pid = grandchild(&rx);
        drop(pool);
        assert_dies(pid, &format!("{m:?} pool drop"));
        drop(h);
    }
}

#[test]
fn a_finished_task_s_subprocess_dies_when_the_pool_ends() {
    let _leaks = common::leak_checked();
    for &m in methods() {
        let pool = Pool::builder()
            .processes(1)
            .start_method(m)
            .build()
            .unwrap();
        let pid = pool.apply(sleep_then_return, ()).unwrap();
        assert_alive_sleep(pid);
        pool.close();
        pool.join().unwrap();
        assert_dies(pid, &format!("{m:?} pool close + join"));
    }
}

#[test]
fn a_process_s_subprocess_dies_with_kill() {
    let _leaks = common::leak_checked();
    for &m in methods() {
        let (tx, rx) = mproc::pipe::<u32>().unwrap();
        let mut p = Process::builder()
            .start_method(m)
            .spawn(sleep_then_hang, tx)
            .unwrap();
        let pid = grandchild(&rx);
        p.kill().unwrap();
        let err = p.join_timeout(LIMIT).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::WorkerDied, "{m:?}: {err}");
        assert_dies(pid, &format!("{m:?} Process::kill"));
    }
}

#[test]
fn a_process_s_subprocess_dies_with_terminate() {
    let _leaks = common::leak_checked();
    for &m in methods() {
        let (tx, rx) = mproc::pipe::<u32>().unwrap();
        let mut p = Process::builder()
            .start_method(m)
            .spawn(sleep_then_hang, tx)
            .unwrap();
        let pid = grandchild(&rx);
        p.terminate().unwrap();
        let err = p.join_timeout(LIMIT).unwrap_err();
        assert_eq!(
            err.exit_status().and_then(|s| s.signal()),
            Some(libc::SIGTERM),
            "{m:?}: {err}"
        );
        assert_dies(pid, &format!("{m:?} Process::terminate"));
    }
}

#[test]
fn a_process_s_subprocess_dies_when_the_handle_is_dropped() {
    let _leaks = common::leak_checked();
    for &m in methods() {
        let (tx, rx) = mproc::pipe::<u32>().unwrap();
        let p = Process::builder()
            .start_method(m)
            .spawn(sleep_then_hang, tx)
            .unwrap();
        let pid = grandchild(&rx);
        drop(p);
        assert_dies(pid, &format!("{m:?} Process drop"));
    }
}

#[test]
fn a_process_s_subprocess_dies_when_it_returns_and_is_reaped() {
    let _leaks = common::leak_checked();
    for &m in methods() {
        let mut p = Process::builder()
            .start_method(m)
            .spawn(sleep_then_return, ())
            .unwrap();
        let pid = p.join_timeout(LIMIT).unwrap();
        assert_dies(pid, &format!("{m:?} Process returned"));
    }
}

/// Starts `sleep 60` in a process group of its own (what `setsid`, or a shell with job
/// control, does) and returns its pid.
#[allow(clippy::zombie_processes)]
fn sleep_in_own_group(_: ()) -> u32 {
    let mut cmd = Command::new("sleep");
    cmd.arg("60").stdin(Stdio::null()).stdout(Stdio::null());
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    cmd.spawn().expect("sleep starts").id()
}

/// The documented escape, asserted so that the docs stay honest: a subprocess that leaves its
/// worker's group is not killed with it.
#[test]
fn a_subprocess_that_leaves_the_group_escapes_as_documented() {
    let _leaks = common::leak_checked();
    let mut p = Process::spawn(sleep_in_own_group, ()).unwrap();
    let pid = p.join_timeout(LIMIT).unwrap();
    assert_alive_sleep(pid);
    assert!(
        !dead(pid),
        "a subprocess in a group of its own survives its Process"
    );
    // Ours to clean up: it is a `sleep` (checked above) that nobody has reaped.
    // SAFETY: `kill` takes integers.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    assert_dies(pid, "the escaped sleep, killed by the test");
}

/// What a task sees of itself: pid, process group, ignored-signal mask and stdin.
fn whoami(_: ()) -> (u32, Option<i32>, u64, String) {
    let me = std::process::id();
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let ignored = status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
        .unwrap_or(0);
    let stdin = std::fs::read_link("/proc/self/fd/0")
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    (me, pgid_of(me), ignored, stdin)
}

fn is_ignored(mask: u64, sig: i32) -> bool {
    mask & (1 << (sig - 1)) != 0
}

#[test]
fn every_child_leads_its_own_process_group() {
    let _leaks = common::leak_checked();
    let ours = pgid_of(std::process::id()).unwrap();
    for &m in methods() {
        let pool = Pool::builder()
            .processes(2)
            .start_method(m)
            .build()
            .unwrap();
        let mut seen = pool.map_chunked(whoami, vec![(); 8], 1).unwrap();
        let mut p = Process::builder()
            .start_method(m)
            .spawn(whoami, ())
            .unwrap();
        seen.push(p.join_timeout(LIMIT).unwrap());
        for (pid, pgid, ignored, _) in seen {
            assert_eq!(pgid, Some(pid as i32), "{m:?}: {pid} leads its group");
            assert_ne!(pgid, Some(ours), "{m:?}: not in the test's group");
            assert!(
                is_ignored(ignored, libc::SIGTTIN) && is_ignored(ignored, libc::SIGTTOU),
                "{m:?}: a background group ignores SIGTTIN/SIGTTOU: {ignored:#x}"
            );
            assert!(
                !is_ignored(ignored, libc::SIGINT),
                "{m:?}: SIGINT keeps its default"
            );
        }
        // Every child of ours does, the fork server included.
        for c in common::children() {
            if let Some(pgid) = pgid_of(c) {
                assert_eq!(pgid, c as i32, "{m:?}: child {c} leads its group");
            }
        }
    }
}

#[test]
fn start_method_names_are_parsed_in_any_case() {
    for (name, m) in [
        ("spawn", StartMethod::Spawn),
        ("SPAWN", StartMethod::Spawn),
        ("Fork", StartMethod::Fork),
        ("FORK", StartMethod::Fork),
    ] {
        assert_eq!(name.parse::<StartMethod>().unwrap(), m, "{name}");
    }
    if StartMethod::all().contains(&StartMethod::ForkServer) {
        assert_eq!(
            "ForkServer".parse::<StartMethod>().unwrap(),
            StartMethod::ForkServer
        );
    }
    for bad in ["bogus", "", "fork server", "spawn "] {
        let err = bad.parse::<StartMethod>().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Usage, "{bad:?}: {err}");
        assert!(
            err.to_string().contains("forkserver, spawn or fork"),
            "{err}"
        );
    }
}

// ---- Helpers: this binary re-executed, with `ROLE` naming the scenario. ----

/// Kills the helper if an assertion fails before it ended, so that a failing run leaves nothing.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A helper's output lines, read on a thread so that every wait has a timeout.
struct Helper {
    child: KillOnDrop,
    lines: mpsc::Receiver<String>,
    _serial: std::sync::MutexGuard<'static, ()>,
}

impl Helper {
    /// Runs `cmd` (this binary, maybe behind a loader) as the helper playing `role`.
    fn start(mut cmd: Command, role: &str) -> Helper {
        // Its pipes must not show up in another test's fd count.
        let serial = common::serial();
        cmd.args(["helper", "--exact", "--nocapture", "--test-threads=1"])
            .env(ROLE, role)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        // Its own process group, so that a "Ctrl-C" to its group never reaches this harness.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut child = KillOnDrop(cmd.spawn().expect("the helper starts"));
        let stdout = child.0.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                // libtest prints "test helper ... " on the same line first.
                if let Some((_, rest)) = line.split_once("@@ ") {
                    let _ = tx.send(rest.to_string());
                }
            }
        });
        Helper {
            child,
            lines,
            _serial: serial,
        }
    }

    fn line(&self, what: &str) -> String {
        self.lines
            .recv_timeout(LIMIT)
            .unwrap_or_else(|_| panic!("the helper did not say {what}"))
    }

    fn say(&mut self, line: &str) {
        let stdin = self.child.0.stdin.as_mut().unwrap();
        stdin.write_all(format!("{line}\n").as_bytes()).unwrap();
        stdin.flush().unwrap();
    }

    fn finish(mut self) -> std::process::ExitStatus {
        drop(self.child.0.stdin.take());
        let start = std::time::Instant::now();
        loop {
            if let Some(s) = self.child.0.try_wait().unwrap() {
                return s;
            }
            assert!(start.elapsed() < LIMIT, "the helper did not end");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

fn self_command() -> Command {
    Command::new(std::env::current_exe().unwrap())
}

/// Prints a line the test picks out of libtest's output.
fn report(line: impl std::fmt::Display) {
    println!("@@ {line}");
    std::io::stdout().flush().unwrap();
}

fn read_line() -> String {
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    line.trim().to_string()
}

static SIGINTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

extern "C" fn count_sigint(_: libc::c_int) {
    SIGINTS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
}

fn my_pid(_: u32) -> u32 {
    std::process::id()
}

fn wait_for_word(rx: Connection<String>) -> String {
    rx.recv_timeout(LIMIT).unwrap_or_default()
}

/// The helper's body: does nothing unless re-executed with `ROLE` set.
#[test]
fn helper() {
    let Some(role) = std::env::var_os(ROLE) else {
        return;
    };
    match role.to_str().unwrap_or_default() {
        "sigint" => helper_sigint(),
        "stdin" => helper_stdin(),
        "start_method" => helper_start_method(),
        "loader" => helper_loader(),
        other => panic!("unknown role {other:?}"),
    }
}

/// Starts pools and children under every method, handles SIGINT, and once the test has sent
/// SIGINT to this process's group, checks that every worker and child is still serving.
fn helper_sigint() {
    let pools: Vec<Pool> = methods()
        .iter()
        .map(|&m| {
            Pool::builder()
                .processes(2)
                .start_method(m)
                .build()
                .unwrap()
        })
        .collect();
    let before: Vec<Vec<u32>> = pools
        .iter()
        .map(|p| sorted(p.map_chunked(my_pid, 0..16, 1).unwrap()))
        .collect();
    let mut kids = Vec::new();
    for &m in methods() {
        let (tx, rx) = mproc::pipe::<String>().unwrap();
        let p = Process::builder()
            .start_method(m)
            .spawn(wait_for_word, rx)
            .unwrap();
        kids.push((m, p, tx));
    }
    // The handler goes in once every process exists: an exec'd child would inherit SIG_IGN,
    // and none inherits a handler (exec resets it; forked workers reset theirs).
    // SAFETY: the handler only increments an atomic, which is async-signal-safe.
    let old = unsafe {
        libc::signal(
            libc::SIGINT,
            count_sigint as *const () as libc::sighandler_t,
        )
    };
    assert_ne!(old, libc::SIG_ERR);
    report("ready");
    assert_eq!(read_line(), "signalled");
    assert!(
        eventually(LIMIT, || SIGINTS.load(std::sync::atomic::Ordering::SeqCst)
            > 0),
        "the parent itself got the SIGINT"
    );
    for (pool, before) in pools.iter().zip(&before) {
        let after = sorted(pool.map_chunked(my_pid, 0..16, 1).unwrap());
        assert_eq!(
            &after, before,
            "the same workers serve: none died of SIGINT"
        );
    }
    for (m, mut p, tx) in kids {
        tx.send(&"still here".to_string()).unwrap();
        assert_eq!(p.join_timeout(LIMIT).unwrap(), "still here", "{m:?}");
    }
    report("ok");
}

fn sorted(mut v: Vec<u32>) -> Vec<u32> {
    v.sort_unstable();
    v.dedup();
    v
}

#[test]
fn sigint_to_the_parent_s_group_reaches_the_parent_only() {
    let mut helper = Helper::start(self_command(), "sigint");
    assert_eq!(helper.line("ready"), "ready");
    let pgid = helper.child.0.id() as i32;
    // What a terminal's Ctrl-C does: SIGINT to the foreground process group, here the
    // helper's (it leads it; this harness is in another).
    // SAFETY: `kill` takes integers; the group is our unreaped child's own.
    assert_eq!(unsafe { libc::kill(-pgid, libc::SIGINT) }, 0);
    helper.say("signalled");
    assert_eq!(helper.line("ok"), "ok");
    let status = helper.finish();
    assert!(status.success(), "helper: {status}");
}

fn stdin_of(_: ()) -> String {
    whoami(()).3
}

/// With a pipe as its own stdin, reports what workers and children read as theirs.
fn helper_stdin() {
    for &m in methods() {
        let pool = Pool::builder()
            .processes(2)
            .start_method(m)
            .build()
            .unwrap();
        for s in pool.map_chunked(stdin_of, vec![(); 4], 1).unwrap() {
            report(format!("{m:?} worker {s}"));
        }
        let mut p = Process::builder()
            .start_method(m)
            .spawn(stdin_of, ())
            .unwrap();
        report(format!("{m:?} process {}", p.join_timeout(LIMIT).unwrap()));
        let mut p = Process::builder()
            .start_method(m)
            .stdin(mproc::Stdio::Inherit)
            .spawn(stdin_of, ())
            .unwrap();
        report(format!("{m:?} inherit {}", p.join_timeout(LIMIT).unwrap()));
    }
    report("done");
}

#[test]
fn workers_and_children_read_dev_null_as_stdin() {
    let helper = Helper::start(self_command(), "stdin");
    let mut lines = Vec::new();
    loop {
        let line = helper.line("what stdin its children have");
        if line == "done" {
            break;
        }
        lines.push(line);
    }
    assert!(helper.finish().success());
    assert_eq!(lines.len(), methods().len() * 6, "{lines:?}");
    for line in lines {
        let (who, stdin) = line.rsplit_once(' ').unwrap();
        if who.ends_with("inherit") {
            assert!(stdin.starts_with("pipe:"), "{line}: the helper's pipe");
        } else {
            assert_eq!(stdin, "/dev/null", "{line}");
        }
    }
}

fn square(x: u64) -> u64 {
    x * x
}

/// Run with an invalid `MPROC_START_METHOD`: every start fails with a clear error.
fn helper_start_method() {
    let value = std::env::var("MPROC_START_METHOD").unwrap();
    // Empty counts as unset.
    let valid = value.is_empty() || value.parse::<StartMethod>().is_ok();
    let spawned = Process::spawn(square, 3).and_then(|mut p| p.join_timeout(LIMIT));
    let explicit = Process::builder()
        .start_method(StartMethod::Spawn)
        .spawn(square, 3)
        .and_then(|mut p| p.join_timeout(LIMIT));
    let mapped = Pool::new(1).and_then(|p| p.map(square, 1..=3));
    if valid {
        assert_eq!(spawned.unwrap(), 9);
        assert_eq!(explicit.unwrap(), 9);
        assert_eq!(mapped.unwrap(), [1, 4, 9]);
    } else {
        for (what, err) in [
            ("spawn", spawned.unwrap_err()),
            ("explicit", explicit.unwrap_err()),
        ] {
            assert_eq!(err.kind(), ErrorKind::Usage, "{what}: {err}");
            assert!(err.to_string().contains("MPROC_START_METHOD"), "{err}");
        }
        let err = mapped.unwrap_err();
        assert!(
            err.to_string().contains("MPROC_START_METHOD")
                && err.to_string().contains(&format!("{value:?}")),
            "the pool's error names the variable and its value: {err}"
        );
    }
    report("ok");
}

#[test]
fn an_invalid_start_method_variable_is_a_clear_error() {
    let mut values = vec!["bogus", "fork_server", "spawn ", "FORK", "Spawn", ""];
    if StartMethod::all().contains(&StartMethod::ForkServer) {
        values.push("ForkServer");
    }
    for value in values {
        let mut cmd = self_command();
        cmd.env("MPROC_START_METHOD", value);
        let helper = Helper::start(cmd, "start_method");
        assert_eq!(helper.line("ok"), "ok", "MPROC_START_METHOD={value:?}");
        let status = helper.finish();
        assert!(status.success(), "MPROC_START_METHOD={value:?}: {status}");
    }
}

fn cmdline(_: ()) -> Vec<String> {
    let raw = std::fs::read("/proc/self/cmdline").unwrap_or_default();
    raw.split(|&b| b == 0)
        .filter(|w| !w.is_empty())
        .map(|w| String::from_utf8_lossy(w).into_owned())
        .collect()
}

/// Run through the dynamic loader: pools and children work under every start method, and are
/// this same program run through the loader again, with its options.
fn helper_loader() {
    for &m in methods() {
        let pool = Pool::builder()
            .processes(2)
            .start_method(m)
            .build()
            .unwrap();
        assert_eq!(
            pool.map(square, 1..=8).unwrap(),
            [1, 4, 9, 16, 25, 36, 49, 64]
        );
        let mut p = Process::builder()
            .start_method(m)
            .spawn(cmdline, ())
            .unwrap();
        let words = p.join_timeout(LIMIT).unwrap();
        report(format!("{m:?} {}", words.join(" ")));
    }
    report("ok");
}

#[test]
fn a_program_run_through_the_dynamic_loader_starts_workers() {
    if !std::path::Path::new(LOADER).exists() {
        eprintln!("skipped: no {LOADER} on this machine");
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let exe = exe.display();
    let mut cmd = Command::new(LOADER);
    // A loader option, which the workers' command lines must keep.
    cmd.arg("--inhibit-cache").arg(exe.to_string());
    let helper = Helper::start(cmd, "loader");
    let mut lines = Vec::new();
    loop {
        let line = helper.line("how its children were started");
        if line == "ok" {
            break;
        }
        lines.push(line);
    }
    assert!(helper.finish().success());
    assert_eq!(lines.len(), methods().len(), "{lines:?}");
    for line in lines {
        // Every child, whatever the method, runs the loader with its option and this program.
        assert!(
            line.contains(&format!(" {LOADER} --inhibit-cache {exe}")),
            "{line}"
        );
    }
}
