//! The worker entry needs no boilerplate in any kind of executable. This file covers two of the
//! four contexts: an integration test (every test here spawns) and a plain binary (the `tour`
//! example, rebuilt if stale and run as a user would). Unit tests inside `src/` and doc
//! tests are covered by `process::tests::spawn_works_inside_a_unit_test` and the doc examples
//! on `Process`.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn cube(x: i64) -> i64 {
    x * x * x
}

#[test]
fn spawn_works_inside_an_integration_test() {
    let _leaks = common::leak_checked();
    let mut p = mproc::Process::spawn(cube, -3).unwrap();
    assert_eq!(p.join_timeout(common::LIMIT).unwrap(), -27);
}

/// The path of example `name`, built first with this test's profile: `cargo test` builds
/// examples, but `cargo test --test entry_contexts` does not, and would run a stale binary.
fn example(name: &str) -> std::path::PathBuf {
    // target[/<triple>]/<profile>/deps/entry_contexts-<hash> -> .../<profile>/examples/<name>
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(|d| d.parent()).unwrap();
    // Cargo sets CARGO when it runs tests; without it (a test binary run by hand), use what
    // is there.
    if let Some(cargo) = std::env::var_os("CARGO") {
        let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") => "dev",
            Some(p) => p,
            None => panic!("no profile directory in {}", exe.display()),
        };
        let base = profile_dir.parent().unwrap();
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--quiet", "--example", name, "--profile", profile])
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        if base.join("CACHEDIR.TAG").exists() {
            cmd.arg("--target-dir").arg(base);
        } else {
            // target/<triple>/<profile>: a build for an explicit --target.
            cmd.arg("--target")
                .arg(base.file_name().unwrap())
                .arg("--target-dir")
                .arg(base.parent().unwrap());
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "cargo build --example {name} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    profile_dir.join("examples").join(name)
}

#[test]
fn spawn_works_inside_a_plain_binary() {
    let _leaks = common::leak_checked();
    let tour = example("tour");
    assert!(tour.exists(), "missing {}", tour.display());
    let mut child = Command::new(&tour)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > common::LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the tour did not finish in time");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        status.success(),
        "tour failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("square of 5 = 25, cube of 5 = 125"),
        "{stdout}"
    );
    assert!(stdout.contains("SIGABRT"), "{stdout}");
    // main ran exactly once: the children (and the pool workers) never re-ran it.
    assert_eq!(stdout.matches("1. One process").count(), 1, "{stdout}");
    // Whole lines only: every line printed by a child is intact.
    for n in 0..4 {
        assert_eq!(
            stdout.matches(&format!("Number {n} from process")).count(),
            1,
            "{stdout}"
        );
    }
    let lines: Vec<&str> = stdout.lines().collect();
    for line in lines.iter().filter(|l| l.contains("Worker")) {
        // The pool's workers print through `Stdio::Prefixed`: `[PoolWorker <pid>] ...`.
        let line = match line.split_once("] ") {
            Some((prefix, rest)) if prefix.starts_with("[PoolWorker ") => rest,
            _ => line,
        };
        let rest = line
            .strip_prefix("  Worker ")
            .unwrap_or_else(|| panic!("{line:?}"));
        let (num, what) = rest.split_once(' ').unwrap_or_else(|| panic!("{line:?}"));
        assert!(num.parse::<u32>().is_ok_and(|n| n < 4), "{line:?}");
        let pid = what
            .strip_prefix("started (pid ")
            .and_then(|p| p.strip_suffix(')'));
        assert!(
            what == "finished" || pid.is_some_and(|p| p.parse::<u32>().is_ok()),
            "a torn line: {line:?}"
        );
    }
    // Worker 1 runs twice (the Process of section 1, then a pool task); 0, 2 and 3 once.
    for (n, times) in [(0, 1), (1, 2), (2, 1), (3, 1)] {
        for what in ["started", "finished"] {
            assert_eq!(
                stdout.matches(&format!("Worker {n} {what}")).count(),
                times,
                "{stdout}"
            );
        }
    }
    // The pool: map over a worker fn, squares, apply_async handles, a with-block.
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("  4 tasks of 100 ms each took")
                && l.ends_with("worker processes ran them at once")),
        "{stdout}"
    );
    assert!(
        lines.contains(&"  [1, 4, 9, 16, 25, 36, 49, 64]"),
        "{stdout}"
    );
    assert!(
        lines.contains(&"  cubes of 1..5 = [1, 8, 27, 64, 125]"),
        "{stdout}"
    );
    assert!(lines.contains(&"  closed and joined"), "{stdout}");
    assert!(lines.contains(&"  [1, 4, 9]"), "{stdout}");
    // A worker that aborts fails its item alone; the rest completes; the pool goes on.
    assert!(
        lines.iter().any(|l| l.starts_with("  item 2 (worker pid ")
            && l.ends_with(
                "): the worker process died without a result (killed by signal 6 (SIGABRT))"
            )),
        "{stdout}"
    );
    assert_eq!(stdout.matches("  item ").count(), 1, "{stdout}");
    assert!(
        lines.contains(&"  the other items completed: [1, 4, 16, 25, 36]"),
        "{stdout}"
    );
    assert!(
        lines.contains(
            &"  the pool still works (its dead worker was replaced): apply(square, 12) = 144"
        ),
        "{stdout}"
    );
    let summary = lines.last().copied().unwrap_or_default();
    assert!(
        summary.starts_with(
            "8 processes and 3 pools started, 27 pool tasks run, 2 crashes survived, in "
        ),
        "{stdout}"
    );
}
