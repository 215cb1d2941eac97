//! Resource limits: a fork bomb inside a task stops at `max_processes`.
//!
//! `RLIMIT_NPROC` binds a process's real user, and the kernel exempts root. So when this runs
//! as root (CI containers do), the bomb first drops to `nobody` (65534), the case the knob
//! covers for root; as another user it bombs as that user. A control pool without the knob
//! shows the same bomb reaching its own safety cap.

mod common;

use common::{LIMIT, Leaks, serial};
use mproc::{Pool, StartMethod};

/// Forks at most this many children, whatever the limit: the test must stay bounded.
const CAP: usize = 64;
const NOBODY: libc::uid_t = 65534;

/// Drops root to `nobody`, then forks children that wait for a pipe to close until `fork`
/// fails or `CAP` is reached; closes the pipe and reaps them all. Returns how many forked.
fn fork_bomb(_: ()) -> usize {
    // SAFETY: plain libc calls on this worker process; `fds` is a valid 2-int array, and the
    // forked children only call async-signal-safe `read`/`_exit`.
    unsafe {
        if libc::getuid() == 0 {
            assert_eq!(libc::setgid(NOBODY), 0, "setgid");
            assert_eq!(libc::setuid(NOBODY), 0, "setuid");
        }
        let mut fds = [0; 2];
        assert_eq!(libc::pipe(fds.as_mut_ptr()), 0);
        let mut kids = Vec::new();
        while kids.len() < CAP {
            let pid = libc::fork();
            if pid == 0 {
                libc::close(fds[1]);
                let mut b = 0u8;
                libc::read(fds[0], (&raw mut b).cast(), 1);
                libc::_exit(0);
            }
            if pid < 0 {
                break;
            }
            kids.push(pid);
        }
        libc::close(fds[1]);
        libc::close(fds[0]);
        for pid in &kids {
            libc::waitpid(*pid, std::ptr::null_mut(), 0);
        }
        kids.len()
    }
}

fn bomb(limit: Option<u64>) -> usize {
    let mut b = Pool::builder()
        .processes(1)
        .start_method(StartMethod::Spawn)
        // The bomb leaves its worker as `nobody`: replace it after each task.
        .max_tasks_per_child(1);
    if let Some(n) = limit {
        b = b.max_processes(n);
    }
    let pool = b.build().unwrap();
    let forked = pool
        .apply_async(fork_bomb, ())
        .get_timeout(LIMIT)
        .expect("the bomb returns");
    drop(pool);
    forked
}

#[test]
fn a_fork_bomb_stops_at_max_processes() {
    let _s = serial();
    let leaks = Leaks::start();
    let limited = bomb(Some(8));
    let unlimited = bomb(None);
    eprintln!("fork bomb: {limited} forks under max_processes(8), {unlimited} without (cap {CAP})");
    assert!(limited < 8, "{limited} processes forked under a limit of 8");
    assert_eq!(
        unlimited, CAP,
        "without the knob the bomb reaches its own cap"
    );
    leaks.check();
}

/// Threads and processes of `uid` on the machine, as `RLIMIT_NPROC` counts them.
fn tasks_of(uid: u32) -> u64 {
    let mut n = 0;
    for p in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(tasks) = std::fs::read_dir(p.path().join("task")) else {
            continue;
        };
        for t in tasks.flatten() {
            let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
            let real = status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u32>().ok());
            n += u64::from(real == Some(uid));
        }
    }
    n
}

/// In a child: becomes `nobody`, caps its processes at what it has plus `room` (threads
/// count too), then starts a `Pool(4)` and maps over it. Returns the pool's worker count and
/// whether the map was right, or the error `build` gave.
fn short_of_processes(room: u64) -> Result<(usize, bool), String> {
    // SAFETY: plain libc calls on this child process, with valid arguments.
    unsafe {
        if libc::getuid() == 0 {
            assert_eq!(libc::setgid(NOBODY), 0, "setgid");
            assert_eq!(libc::setuid(NOBODY), 0, "setuid");
        }
        let cap = tasks_of(libc::getuid()) + room;
        let lim = libc::rlimit {
            rlim_cur: cap,
            rlim_max: cap,
        };
        assert_eq!(libc::setrlimit(libc::RLIMIT_NPROC, &lim), 0);
    }
    let pool = Pool::builder()
        .processes(4)
        .start_method(StartMethod::Fork)
        .build()
        .map_err(|e| e.to_string())?;
    let got = pool
        .map_async(double, 0..40u64)
        .get_timeout(LIMIT)
        .map_err(|e| e.to_string())?;
    Ok((
        pool.workers(),
        got == (0..40).map(double).collect::<Vec<_>>(),
    ))
}

fn double(x: u64) -> u64 {
    x * 2
}

#[test]
fn a_pool_short_of_processes_runs_on_what_it_has_and_one_with_none_fails_to_build() {
    let _s = serial();
    let leaks = Leaks::start();
    let run = |room: u64| {
        let mut p = mproc::Process::spawn(short_of_processes, room).unwrap();
        p.join_timeout(LIMIT).expect("the child returns")
    };
    // Room for the supervisor thread and two workers: the pool runs on two of four.
    let (workers, right) = run(3).expect("a pool with some workers builds and runs");
    eprintln!("under RLIMIT_NPROC: {workers} of 4 workers");
    assert!(right, "the map is right on the workers the pool has");
    assert!((1..4).contains(&workers), "{workers} workers under the cap");
    // Room for the supervisor thread only: no worker can start, and `build` says why.
    let e = run(1).expect_err("no worker can start");
    assert!(e.contains("cannot start"), "{e}");
    assert!(e.contains("Resource temporarily unavailable"), "{e}");
    leaks.check();
}
