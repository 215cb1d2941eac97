//! Workers' output with `Stdio::Prefixed`: every line arrives whole, prefixed with its
//! process's name and pid, before the call that returned the task's result; a line printed
//! just before a SIGKILL is not lost.
//!
//! The relay writes to this process's real stdout, which the test harness does not capture, so
//! the test runs a helper (this binary, one ignored test) with its stdout piped, and reads it.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio as CmdStdio};
use std::sync::mpsc;

use common::LIMIT;
use mproc::{Pool, Process, StartMethod, Stdio};

const ROLE: &str = "MPROC_TEST_OUTPUT_HELPER";

/// Prints one line in three pieces (three writes, with flushes in between), as a worker
/// printing a progress line bit by bit would.
fn chatty(i: u32) -> u32 {
    let mut out = std::io::stdout();
    print!("task {i} ");
    out.flush().unwrap();
    print!("says ");
    out.flush().unwrap();
    println!("hello");
    eprintln!("task {i} on stderr");
    i * 2
}

fn print_then_die(_: ()) {
    println!("last words");
    print!("unfinished");
    std::io::stdout().flush().unwrap();
    std::process::abort(); // killed by a signal: no unwinding, no flush
}

#[test]
#[ignore = "run by prefixed_lines_arrive_whole_and_in_order, with its stdout piped"]
fn helper_prefixed_output() {
    if std::env::var_os(ROLE).is_none() {
        return;
    }
    for &m in StartMethod::all() {
        println!("== {m:?}");
        let pool = Pool::builder()
            .processes(2)
            .start_method(m)
            .stdout(Stdio::Prefixed)
            .stderr(Stdio::Prefixed)
            .build()
            .unwrap();
        let out = pool.map_chunked(chatty, 0..20u32, 1).unwrap();
        assert_eq!(out, (0..20).map(|i| i * 2).collect::<Vec<_>>());
        println!("map returned");
        pool.close();
        pool.join().unwrap();

        let mut p = Process::builder()
            .name("talker")
            .start_method(m)
            .stdout(Stdio::Prefixed)
            .spawn(print_then_die, ())
            .unwrap();
        assert!(p.join_timeout(LIMIT).is_err(), "it was killed");
        println!("joined");
    }
}

/// Runs the ignored test `name` of this binary in a child with `--nocapture` (so that what
/// workers print reaches fds 1 and 2, even for workers forked from a test thread, whose
/// `print!` the harness would otherwise capture), and returns its stdout and stderr lines.
fn run_helper(name: &str) -> (Vec<String>, Vec<String>) {
    let mut helper = Command::new(std::env::current_exe().unwrap())
        .args([
            name,
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ROLE, "1")
        .stdin(CmdStdio::null())
        .stdout(CmdStdio::piped())
        .stderr(CmdStdio::piped())
        .spawn()
        .unwrap();
    let collect = |r: Box<dyn std::io::Read + Send>, tx: mpsc::Sender<Vec<String>>| {
        std::thread::spawn(move || {
            let lines = BufReader::new(r).lines().map_while(Result::ok).collect();
            let _ = tx.send(lines);
        })
    };
    let (tx_out, rx_out) = mpsc::channel();
    let (tx_err, rx_err) = mpsc::channel();
    collect(Box::new(helper.stdout.take().unwrap()), tx_out);
    collect(Box::new(helper.stderr.take().unwrap()), tx_err);
    let out = rx_out.recv_timeout(LIMIT * 2);
    let err = rx_err.recv_timeout(LIMIT);
    let _ = helper.kill();
    let status = helper.wait().unwrap();
    let (out, err) = (out.expect("helper output"), err.expect("helper stderr"));
    assert!(
        status.success(),
        "helper failed: {status}\n{out:#?}\n{err:#?}"
    );
    (out, err)
}

#[test]
fn prefixed_lines_arrive_whole_and_in_order() {
    let _leaks = common::leak_checked();
    let (out, err) = run_helper("helper_prefixed_output");
    let sections: Vec<&[String]> = {
        let starts: Vec<usize> = (0..out.len()).filter(|&i| out[i].contains("== ")).collect();
        assert_eq!(starts.len(), StartMethod::all().len(), "{out:#?}");
        starts
            .iter()
            .enumerate()
            .map(|(k, &s)| &out[s..*starts.get(k + 1).unwrap_or(&out.len())])
            .collect()
    };
    for section in sections {
        let method = &section[0];
        let returned = section
            .iter()
            .position(|l| l == "map returned")
            .unwrap_or_else(|| panic!("{method}: {section:#?}"));
        // Every task's line, whole, prefixed, once, before `map` returned.
        let mut seen = HashMap::new();
        for line in &section[1..returned] {
            let (prefix, text) = line
                .split_once("] ")
                .unwrap_or_else(|| panic!("{method}: unprefixed line {line:?}"));
            let pid: u32 = prefix
                .strip_prefix("[PoolWorker ")
                .and_then(|p| p.parse().ok())
                .unwrap_or_else(|| panic!("{method}: bad prefix {line:?}"));
            assert!(pid > 0);
            let i: u32 = text
                .strip_prefix("task ")
                .and_then(|t| t.strip_suffix(" says hello"))
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("{method}: torn line {line:?}"));
            *seen.entry(i).or_insert(0) += 1;
        }
        assert_eq!(seen.len(), 20, "{method}: {section:#?}");
        assert!(seen.values().all(|&n| n == 1), "{method}: {seen:?}");
        // The killed process: its last line and its unfinished one, before `joined`.
        let rest = &section[returned + 1..];
        let joined = rest.iter().position(|l| l == "joined").expect("joined");
        let talker: Vec<&str> = rest[..joined]
            .iter()
            .map(|l| l.split_once("] ").expect("prefixed").1)
            .collect();
        assert_eq!(talker, ["last words", "unfinished"], "{method}: {rest:#?}");
        assert!(rest[0].starts_with("[talker "), "{method}: {rest:#?}");
    }
    let on_stderr = err
        .iter()
        .filter(|l| l.starts_with("[PoolWorker ") && l.ends_with(" on stderr"))
        .count();
    assert_eq!(on_stderr, 20 * StartMethod::all().len(), "{err:#?}");
}

/// Writes through Rust's streams and straight to fd 1 (as C code would), from a thread too.
fn noisy(i: u32) -> u32 {
    println!("out {i}");
    eprintln!("err {i}");
    std::thread::scope(|s| {
        s.spawn(|| println!("thread {i}"));
    });
    let mut raw = std::fs::File::from(
        std::io::stdout()
            .lock()
            .as_fd()
            .try_clone_to_owned()
            .unwrap(),
    );
    raw.write_all(format!("raw {i}\n").as_bytes()).unwrap();
    i + 100
}

fn noisy_then_panic(i: u32) -> u32 {
    println!("before the panic {i}");
    if i == 3 {
        panic!("three");
    }
    i
}

use std::os::fd::AsFd;

#[test]
fn captured_output_comes_back_with_each_result() {
    let _leaks = common::leak_checked();
    let (out, err) = run_helper("helper_captured_output");
    // The panicking task's output was not lost: it went to the worker's own streams.
    let n = StartMethod::all().len();
    let count = |lines: &[String], text: &str| lines.iter().filter(|l| l.contains(text)).count();
    assert_eq!(count(&out, "before the panic 3"), n, "{out:#?}");
    // Nothing else a task printed escaped its capture: only the one plain `apply(noisy, 1)`.
    assert_eq!(count(&out, "out "), n, "{out:#?}");
    assert_eq!(count(&out, "out 1"), n, "{out:#?}");
    assert_eq!(count(&err, "err "), n, "{err:#?}");
    assert_eq!(count(&err, "err 1"), n, "{err:#?}");
}

#[test]
#[ignore = "run by captured_output_comes_back_with_each_result, with --nocapture"]
fn helper_captured_output() {
    if std::env::var_os(ROLE).is_none() {
        return;
    }
    for &m in StartMethod::all() {
        let pool = Pool::builder()
            .processes(2)
            .start_method(m)
            .build()
            .unwrap();
        let c = pool.apply_captured(noisy, 7).unwrap();
        assert_eq!(c.value, 107, "{m:?}");
        assert_eq!(c.stdout_text(), "out 7\nthread 7\nraw 7\n", "{m:?}");
        assert_eq!(c.stderr_text(), "err 7\n", "{m:?}");

        let all = pool.map_captured(noisy, 0..10).unwrap();
        for (i, c) in all.iter().enumerate() {
            assert_eq!(c.value, i as u32 + 100);
            assert_eq!(c.stdout_text(), format!("out {i}\nthread {i}\nraw {i}\n"));
            assert_eq!(c.stderr_text(), format!("err {i}\n"));
        }
        // One-item chunks, merged into runs on their way to a worker: each its own output.
        let one_by_one = Pool::builder()
            .processes(2)
            .start_method(m)
            .chunksize(1)
            .build()
            .unwrap();
        let all = one_by_one.map_captured(noisy, 0..300).unwrap();
        assert_eq!(all.len(), 300);
        for (i, c) in all.iter().enumerate() {
            assert_eq!(c.value, i as u32 + 100);
            assert_eq!(c.stdout_text(), format!("out {i}\nthread {i}\nraw {i}\n"));
            assert_eq!(c.stderr_text(), format!("err {i}\n"));
        }
        drop(one_by_one);

        // A panic is returned as one; the other items keep their own output.
        let err = pool.map_captured(noisy_then_panic, 0..5).unwrap_err();
        assert_eq!(err.kind(), mproc::ErrorKind::Panicked, "{m:?}: {err}");
        let ok = pool.apply_captured(noisy_then_panic, 4).unwrap();
        assert_eq!(ok.stdout_text(), "before the panic 4\n");
        // The worker's streams are its own again afterwards: capture does not leak into the
        // next plain task.
        assert_eq!(pool.apply(noisy, 1).unwrap(), 101);
        assert_eq!(
            pool.apply_captured(noisy, 2).unwrap().stdout_text(),
            "out 2\nthread 2\nraw 2\n"
        );
        pool.close();
        pool.join().unwrap();
    }
}
