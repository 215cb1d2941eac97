//! Queues under an address-space limit (`ulimit -v`, `RLIMIT_AS`): issue 14, case 8. Every
//! queue used to reserve 1 GiB of address space, so under `ulimit -v 1000000` not one could
//! be made. Now a ring starts at 64 KiB and grows with what is queued, and a ring that cannot
//! be mapped is an error that names the limit.
//!
//! The scenarios run in a re-execution of this test binary under `sh -c 'ulimit -v ...'`, so
//! the limit holds from the first instruction, as for a user's program, and the rest of the
//! test run keeps its address space.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};

use common::{LIMIT, eventually};
use mproc::{ErrorKind, JoinableQueue, Process, Queue, SimpleQueue};
use serde_bytes::ByteBuf;

/// Set in the re-executed binary: the name of the scenario to run.
const SCENARIO_ENV: &str = "MPROC_TEST_LIMITS_SCENARIO";

/// The recipe: `ulimit -v 1000000` (KiB, about 1 GB).
const ULIMIT_V_KIB: u64 = 1_000_000;

/// Runs the test function `name` of this binary under `ulimit -v`, waiting at most `LIMIT`;
/// its success and what it printed.
fn run_limited(name: &str) -> (bool, String) {
    let exe = std::env::current_exe().expect("the test binary");
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -v {ULIMIT_V_KIB} && exec \"$0\" \"$@\""))
        .arg(exe)
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(SCENARIO_ENV, name)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("sh runs");
    let mut out = child.stdout.take().expect("piped");
    let mut err = child.stderr.take().expect("piped");
    let readers = [
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = out.read_to_string(&mut s);
            s
        }),
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        }),
    ];
    let mut status = None;
    if !eventually(LIMIT, || {
        status = child.try_wait().expect("try_wait");
        status.is_some()
    }) {
        let _ = child.kill();
        let _ = child.wait();
        panic!("the limited run of {name} did not finish within {LIMIT:?}");
    }
    let text: Vec<String> = readers
        .into_iter()
        .map(|r| r.join().expect("reader"))
        .collect();
    (status.expect("exited").success(), text.concat())
}

/// True in the re-executed binary running `name`.
fn scenario(name: &str) -> bool {
    std::env::var(SCENARIO_ENV).is_ok_and(|s| s == name)
}

fn address_space_limit() -> libc::rlimit {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid out-pointer for the call.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut lim) }, 0);
    lim
}

fn set_address_space_limit(lim: &libc::rlimit) {
    // SAFETY: a valid rlimit for the call.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_AS, lim) }, 0);
}

/// Bytes of address space this process has mapped now.
fn vm_size() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmSize:"))
        .expect("VmSize");
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

fn relay((q, n): (Queue<u64>, u64)) -> u64 {
    let v = q.get_timeout(LIMIT).unwrap_or(0);
    q.put(v + n).map(|_| v).unwrap_or(0)
}

#[test]
fn many_queues_fit_under_ulimit_v() {
    if !scenario("many_queues_fit_under_ulimit_v") {
        let (ok, out) = run_limited("many_queues_fit_under_ulimit_v");
        assert!(ok, "under ulimit -v {ULIMIT_V_KIB}:\n{out}");
        assert!(out.contains("made 20 + 20 + 20 queues"), "{out}");
        println!("{out}");
        return;
    }
    let _leaks = common::leak_checked();
    assert_eq!(address_space_limit().rlim_cur, ULIMIT_V_KIB * 1024);
    let queues: Vec<Queue<u64>> = (0..20).map(|_| Queue::new().unwrap()).collect();
    let joinable: Vec<JoinableQueue<u64>> =
        (0..20).map(|_| JoinableQueue::new().unwrap()).collect();
    let simple: Vec<SimpleQueue<u64>> = (0..20).map(|_| SimpleQueue::new().unwrap()).collect();
    for (i, q) in queues.iter().enumerate() {
        q.put(i as u64).unwrap();
        assert_eq!(q.get_timeout(LIMIT).unwrap(), i as u64);
    }
    for q in &joinable {
        q.put(1).unwrap();
        q.get_timeout(LIMIT).unwrap();
        q.task_done().unwrap();
        q.join_timeout(LIMIT).unwrap();
    }
    for q in &simple {
        q.put(2).unwrap();
        assert_eq!(q.get().unwrap(), 2);
    }
    // They still cross to another process, which maps them under the same limit.
    queues[0].put(40).unwrap();
    let mut p = Process::spawn(relay, (queues[0].clone(), 2)).unwrap();
    assert_eq!(p.join_timeout(LIMIT).unwrap(), 40);
    assert_eq!(queues[0].get_timeout(LIMIT).unwrap(), 42);
    println!(
        "made 20 + 20 + 20 queues; address space in use {} MB of {} MB",
        vm_size() >> 20,
        (ULIMIT_V_KIB * 1024) >> 20
    );
}

#[test]
fn a_queue_that_cannot_be_mapped_names_the_limit() {
    if !scenario("a_queue_that_cannot_be_mapped_names_the_limit") {
        let (ok, out) = run_limited("a_queue_that_cannot_be_mapped_names_the_limit");
        assert!(ok, "under ulimit -v {ULIMIT_V_KIB}:\n{out}");
        assert!(out.contains("RLIMIT_AS"), "{out}");
        println!("{out}");
        return;
    }
    let _leaks = common::leak_checked();
    // Allocate up front what the limited part will need: the value, and the encoding buffer
    // `put` keeps per thread (warmed by a put of the same size).
    let big = ByteBuf::from(vec![7u8; 300_000]);
    let warm = Queue::new().unwrap();
    warm.put(big.clone()).unwrap();
    assert_eq!(warm.get().unwrap(), big);
    drop(warm);
    let q = Queue::<ByteBuf>::new().unwrap();
    let small = ByteBuf::from(vec![1u8; 100]);
    let old = address_space_limit();

    // Room for less than one more queue (a 4 KiB header and a 64 KiB ring).
    let tight = libc::rlimit {
        rlim_cur: (vm_size() + (32 << 10)) as libc::rlim_t,
        rlim_max: old.rlim_max,
    };
    set_address_space_limit(&tight);
    let made = Queue::<u64>::new();
    // The value does not fit the 64 KiB ring, which cannot grow to 512 KiB.
    let refused = q.put(big.clone());
    let fits = q.put(small.clone());
    set_address_space_limit(&old);

    let e = made.expect_err("no room for a queue");
    assert_eq!(e.kind(), ErrorKind::Io, "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("RLIMIT_AS") && msg.contains(&tight.rlim_cur.to_string()),
        "the error names the limit: {msg}"
    );
    println!("creating a queue: {msg}");
    let e = refused.expect_err("no room to grow");
    assert_eq!(e.kind(), ErrorKind::Io, "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("RLIMIT_AS"),
        "the error names the limit: {msg}"
    );
    println!("growing a queue: {msg}");
    assert_eq!(e.into_inner(), big, "the value comes back");
    fits.expect("a value that fits the ring as it is needs no more address space");

    // With the limit raised again, the same put grows the ring.
    q.put(big.clone()).unwrap();
    assert_eq!(q.get_timeout(LIMIT).unwrap(), small);
    assert_eq!(q.get_timeout(LIMIT).unwrap(), big);
}
