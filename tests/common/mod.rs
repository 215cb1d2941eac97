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

/// Entries of mproc in /dev/shm (`mproc-*`, and `sem.mproc-*` should named semaphores ever
/// appear). Only mproc's: /dev/shm is shared by the whole machine, and other programs (other
/// test runs, browsers, Python) come and go in it while a test runs.
pub fn shm_entries() -> usize {
    std::fs::read_dir("/dev/shm")
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    let name = e.file_name();
                    let name = name.to_string_lossy();
                    name.starts_with("mproc-") || name.starts_with("sem.mproc-")
                })
                .count()
        })
        .unwrap_or(0)
}

/// Shared memory regions of mproc mapped in this process (`memfd:mproc-*` in /proc/self/maps).
pub fn mapped_regions() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .map(|m| m.lines().filter(|l| l.contains("/memfd:mproc-")).count())
        .unwrap_or(0)
}

/// Serializes the tests of one binary that check for leaks (tests run on parallel threads).
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn noop(_: ()) {}

/// What a test might leak, counted at its start; [`Leaks::check`] asserts it came back.
pub struct Leaks {
    fds: usize,
    children: Vec<u32>,
    shm: usize,
    regions: usize,
}

impl Leaks {
    /// Counts now. Hold [`serial`] around the test so other tests do not disturb the counts.
    pub fn start() -> Leaks {
        // The fork server is a long-lived child started on first use: start it now, so that
        // it counts as already there (whatever `MPROC_START_METHOD` makes the default).
        mproc::Process::builder()
            .start_method(mproc::StartMethod::ForkServer)
            .spawn(noop, ())
            .and_then(|mut p| p.join_timeout(LIMIT))
            .expect("a trivial process runs");
        Leaks {
            fds: open_fds(),
            children: children(),
            shm: shm_entries(),
            regions: mapped_regions(),
        }
    }

    /// Asserts that fds, children, `/dev/shm` entries and mapped regions are back to the
    /// starting counts (children are reaped asynchronously by their handles: allow a moment).
    pub fn check(self) {
        // No child that was not there before: a child of another test (one that does not
        // hold `serial`) may end meanwhile, which is not a leak of this one.
        assert!(
            eventually(LIMIT, || children()
                .iter()
                .all(|c| self.children.contains(c))),
            "children left: {:?} (before: {:?})",
            children(),
            self.children
        );
        assert_eq!(open_fds(), self.fds, "fds leaked");
        assert_eq!(shm_entries(), self.shm, "/dev/shm entries leaked");
        assert_eq!(
            mapped_regions(),
            self.regions,
            "shared regions still mapped"
        );
    }
}

/// A whole test's leak check: holds [`serial`] and asserts on drop that fds, children,
/// `/dev/shm` entries and mapped regions came back to their starting counts. Skipped when the
/// test is already failing (a panic), so that its own message is the one reported. Write
/// `let _leaks = common::leak_checked();` first in a test.
pub fn leak_checked() -> LeakChecked {
    let serial = serial();
    LeakChecked {
        leaks: Some(Leaks::start()),
        _serial: serial,
    }
}

/// See [`leak_checked`]. Fields drop after `drop` runs: the check happens under the lock.
pub struct LeakChecked {
    leaks: Option<Leaks>,
    _serial: std::sync::MutexGuard<'static, ()>,
}

impl Drop for LeakChecked {
    fn drop(&mut self) {
        if let Some(leaks) = self.leaks.take() {
            if !std::thread::panicking() {
                leaks.check();
            }
        }
    }
}
