//! What an idle pool costs: the CPU time its supervisor and workers use while no task runs.
//!
//! `Pool` does not publish its workers' pids, but every process a pool starts is a child of
//! this process (the fork server forks workers with `CLONE_PARENT`), and its supervisor and
//! helper threads are threads of this process. So the cost is read from `/proc`: the time on
//! CPU of every thread of this process but the calling one (which only sleeps and reads these
//! files), and of every thread of every child process, each from `schedstat` (nanoseconds;
//! `stat`'s utime + stime in clock ticks where `schedstat` is missing).

use std::collections::HashMap;
use std::fs;
use std::time::{Duration, Instant};

/// CPU time used so far, in nanoseconds.
#[derive(Default)]
pub struct CpuSnapshot {
    /// Threads of this process other than the caller.
    own: u64,
    /// Per child process, all its threads.
    children: HashMap<u32, u64>,
}

/// What a window of idleness cost.
pub struct IdleCost {
    pub wall: Duration,
    /// CPU time of this process's other threads (supervisor, helpers), and of its children.
    pub own: Duration,
    pub children: Duration,
    /// Child processes seen at the end of the window (workers, fork server).
    pub child_count: usize,
}

impl IdleCost {
    /// The whole cost as a share of one core (1.0 = one core busy).
    pub fn share(&self) -> f64 {
        (self.own + self.children).as_secs_f64() / self.wall.as_secs_f64()
    }
}

/// Sleeps for `window` and reports the CPU time used meanwhile by everything but the caller.
pub fn measure(window: Duration) -> IdleCost {
    let before = snapshot();
    let t = Instant::now();
    std::thread::sleep(window);
    let wall = t.elapsed();
    let after = snapshot();
    // A child that started during the window counts whole; one that ended, not at all.
    let children: u64 = after
        .children
        .iter()
        .map(|(pid, &ns)| ns.saturating_sub(before.children.get(pid).copied().unwrap_or(0)))
        .sum();
    IdleCost {
        wall,
        own: Duration::from_nanos(after.own.saturating_sub(before.own)),
        children: Duration::from_nanos(children),
        child_count: after.children.len(),
    }
}

fn snapshot() -> CpuSnapshot {
    // SAFETY: `getpid` and `gettid` have no preconditions.
    let (me, caller) = unsafe { (libc::getpid() as u32, libc::gettid() as u32) };
    let mut s = CpuSnapshot {
        own: threads_cpu(me, Some(caller)),
        ..CpuSnapshot::default()
    };
    let Ok(dir) = fs::read_dir("/proc") else {
        return s;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if parent_of(pid) == Some(me) {
            s.children.insert(pid, threads_cpu(pid, None));
        }
    }
    s
}

/// The parent pid of `pid`, from `/proc/<pid>/stat` (the field after the state, which follows
/// the command name's closing parenthesis).
fn parent_of(pid: u32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Time on CPU of the threads of `pid` (but `skip`), in nanoseconds.
fn threads_cpu(pid: u32, skip: Option<u32>) -> u64 {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&tid| Some(tid) != skip)
        .map(|tid| thread_cpu(pid, tid))
        .sum()
}

fn thread_cpu(pid: u32, tid: u32) -> u64 {
    let base = format!("/proc/{pid}/task/{tid}");
    if let Some(ns) = fs::read_to_string(format!("{base}/schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
    {
        return ns;
    }
    // utime and stime are fields 14 and 15 of `stat`, the 12th and 13th after the name.
    let ticks = fs::read_to_string(format!("{base}/stat"))
        .ok()
        .and_then(|s| {
            let rest = &s[s.rfind(')')? + 1..];
            let mut f = rest.split_whitespace().skip(11);
            Some(f.next()?.parse::<u64>().ok()? + f.next()?.parse::<u64>().ok()?)
        });
    // SAFETY: `sysconf` has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    ticks.map_or(0, |t| t * 1_000_000_000 / hz)
}
