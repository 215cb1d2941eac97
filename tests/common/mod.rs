//! Helpers shared by the integration tests: bounded waits and leak checks.
#![allow(dead_code)]

use std::time::{Duration, Instant};

/// Upper bound for any wait in a test; generous for a busy 2-core machine.
pub const LIMIT: Duration = Duration::from_secs(30);

/// True when no process with this pid exists (not even as a zombie).
pub fn pid_gone(pid: u32) -> bool {
    !std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// The state letter of a process (`R`, `S`, `Z`...), or `None` if it does not exist.
pub fn pid_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    after.trim_start().chars().next()
}

/// Polls `cond` until it holds or `limit` passes. Used only to observe what another process
/// (the kernel, a child) does on its own schedule, never to order our own threads.
pub fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    cond()
}

/// Open file descriptors of this process.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Pids of this process's children (all threads), from /proc.
pub fn children() -> Vec<u32> {
    let mut out = Vec::new();
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for t in tasks.flatten() {
            if let Ok(s) = std::fs::read_to_string(t.path().join("children")) {
                out.extend(s.split_whitespace().filter_map(|p| p.parse::<u32>().ok()));
            }
        }
    }
    out.sort_unstable();
    out
}

/// Entries in /dev/shm.
pub fn shm_entries() -> usize {
    std::fs::read_dir("/dev/shm")
        .map(|d| d.count())
        .unwrap_or(0)
}
