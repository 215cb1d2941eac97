//! The worker entry needs no boilerplate in any kind of executable. This file covers two of the
//! four contexts: an integration test (every test here spawns) and a plain binary (the `tour`
//! example, which `cargo test` builds, run as a user would). Unit tests inside `src/` and doc
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
    let mut p = mproc::Process::spawn(cube, -3).unwrap();
    assert_eq!(p.join_timeout(common::LIMIT).unwrap(), -27);
}

fn example(name: &str) -> std::path::PathBuf {
    // target/<profile>/deps/entry_contexts-<hash> -> target/<profile>/examples/<name>
    let exe = std::env::current_exe().unwrap();
    exe.parent()
        .and_then(|d| d.parent())
        .unwrap()
        .join("examples")
        .join(name)
}

#[test]
fn spawn_works_inside_a_plain_binary() {
    let tour = example("tour");
    assert!(
        tour.exists(),
        "cargo test builds examples; missing {}",
        tour.display()
    );
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
    assert!(stdout.contains("Worker 1 finished"), "{stdout}");
    assert!(stdout.contains("SIGABRT"), "{stdout}");
    // main ran exactly once: the children never re-ran it.
    assert_eq!(stdout.matches("1. One process").count(), 1, "{stdout}");
    // Whole lines only: every line printed by a child is intact.
    for n in 0..4 {
        assert_eq!(
            stdout.matches(&format!("Number {n} from process")).count(),
            1,
            "{stdout}"
        );
    }
}
