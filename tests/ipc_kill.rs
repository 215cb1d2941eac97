//! Everything killed with SIGKILL in the middle of IPC operations leaves nothing behind.
//!
//! A helper parent (this test binary, re-executed) fills a queue with 64 MiB, starts children
//! that hold a lock, put in a loop and wait on an empty queue, then is SIGKILLed. Its
//! children die with it (parent-death signal); the shared memory they held is anonymous
//! (`memfd`), so the kernel frees it with the last holder: the system's `Shmem` drops back by
//! those 64 MiB, and `/dev/shm` never gains an entry. (Python leaks its semaphores and
//! segments in the same situation until reboot.)

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::LIMIT;
use mproc::{Lock, Process, Queue};

const ROLE: &str = "MPROC_TEST_IPC_KILL_ROLE";
const FILL: usize = 64;

fn hold_lock((lock, ready): (Lock, Queue<u8>)) {
    let _held = lock.acquire().expect("lock");
    ready.put(1).expect("ready");
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn put_forever((q, ready): (Queue<Vec<u8>>, Queue<u8>)) {
    ready.put(2).expect("ready");
    loop {
        let _ = q.put(vec![3; 1000]);
    }
}

fn wait_on_empty((q, ready): (Queue<u64>, Queue<u8>)) {
    ready.put(3).expect("ready");
    let _ = q.get();
}

/// The helper parent's body: only does something when re-executed with `ROLE` set.
#[test]
fn helper_parent() {
    if std::env::var_os(ROLE).is_none() {
        return;
    }
    let big: Queue<Vec<u8>> = Queue::new().expect("queue");
    for _ in 0..FILL {
        big.put(vec![7u8; 1 << 20]).expect("fill");
    }
    let ready = Queue::new().expect("queue");
    let lock = Lock::new().expect("lock");
    let empty: Queue<u64> = Queue::new().expect("queue");
    // Kept alive: dropping a running `Process` kills it.
    let kids: Vec<Process<()>> = vec![
        Process::spawn(hold_lock, (lock.clone(), ready.clone())).expect("spawn"),
        Process::spawn(put_forever, (big.clone(), ready.clone())).expect("spawn"),
        Process::spawn(wait_on_empty, (empty.clone(), ready.clone())).expect("spawn"),
    ];
    for _ in 0..kids.len() {
        ready.get_timeout(LIMIT).expect("children ready");
    }
    let _parked = lock.acquire_timeout(Duration::from_millis(1));
    let pids: Vec<String> = kids.iter().map(|p| p.pid().to_string()).collect();
    println!("READY {}", pids.join(" "));
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn shmem_kib() -> u64 {
    let info = std::fs::read_to_string("/proc/meminfo").expect("meminfo");
    info.lines()
        .find_map(|l| l.strip_prefix("Shmem:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("Shmem line")
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

/// Kills the helper if an assertion fails before it ended, so that a failing run leaves nothing.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn sigkill_mid_operation_leaves_no_process_no_memory_no_shm_entry() {
    let _leaks = common::leak_checked();
    // Orphans are re-parented to us, so we can reap them and see them gone.
    // SAFETY: PR_SET_CHILD_SUBREAPER takes an integer flag and touches no memory of ours.
    let ret = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(ret, 0);
    let shm_before = common::shm_entries();
    let helper = Command::new(std::env::current_exe().unwrap())
        .args([
            "helper_parent",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ROLE, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut helper = KillOnDrop(helper);
    let stdout = helper.0.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some((_, rest)) = line.split_once("READY ") {
                let _ = tx.send(
                    rest.split_whitespace()
                        .filter_map(|p| p.parse::<u32>().ok())
                        .collect::<Vec<_>>(),
                );
            }
        }
    });
    let kids = rx.recv_timeout(LIMIT).expect("the helper gets ready");
    let family = descendants_of(helper.0.id());
    assert!(
        kids.iter().all(|k| family.contains(k)),
        "{kids:?} in {family:?}"
    );
    let shmem_full = shmem_kib();

    helper.0.kill().unwrap();
    helper.0.wait().unwrap();
    let reaped = |pid: u32| {
        let mut status = 0;
        // SAFETY: `status` is a valid out-pointer; WNOHANG never blocks.
        let r = unsafe { libc::waitpid(pid as i32, &mut status, libc::WNOHANG) };
        r == pid as i32 || common::pid_gone(pid)
    };
    assert!(
        common::eventually(LIMIT, || family.iter().all(|&p| reaped(p))),
        "descendants left: {:?}",
        family
            .iter()
            .filter(|&&p| !common::pid_gone(p))
            .collect::<Vec<_>>()
    );
    // The 64 MiB queued lived only in memfds held by the dead: the kernel frees them.
    let want_below = shmem_full.saturating_sub((FILL as u64 - 16) * 1024);
    assert!(
        common::eventually(LIMIT, || shmem_kib() < want_below),
        "Shmem {} KiB, expected below {want_below} KiB (was {shmem_full} KiB with the queue full)",
        shmem_kib()
    );
    // The helper's stdout reaches end of file now that its whole family is gone: the reader
    // thread ends and closes it (before the leak check counts fds).
    reader.join().unwrap();
    println!(
        "Shmem with the queue full: {shmem_full} KiB; after the kill: {} KiB",
        shmem_kib()
    );
    assert_eq!(common::shm_entries(), shm_before, "/dev/shm gained entries");
}
