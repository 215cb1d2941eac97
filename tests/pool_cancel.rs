//! Cancelling tasks, and waiting on many handles (issue 17): `AsyncResult::cancel`,
//! `mproc::as_completed`, `mproc::wait`.
//!
//! The waiting half follows the documented behaviour of Python's `concurrent.futures`
//! (`as_completed` yields in completion order, `next` past a timeout raises `TimeoutError`;
//! `wait` returns `(done, not_done)` under `FIRST_COMPLETED`, `FIRST_EXCEPTION` and
//! `ALL_COMPLETED`, a cancelled future counting as done but not as an exception), written
//! anew for mproc. Cancelling goes further than Python's `Future.cancel()`, which refuses a
//! running task: here its worker is killed, with the task's subprocesses, and replaced.
//!
//! No sleep orders anything: a task says it is running through a `Queue` and blocks on an
//! `Event` until released (for at most `LIMIT`); whether a cancelled task ran is read from
//! the same queue once the pool has been closed and joined.

mod common;

use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{LIMIT, eventually, pid_state};
use mproc::{AsyncResult, ErrorKind, Event, Pool, Queue, ReturnWhen};

/// Where tasks say what they do: (task id, worker pid, pid of a subprocess or 0).
type Log = Queue<(u64, u32, u32)>;

/// Says it runs, then waits for `gate` (at most `LIMIT`); returns its id.
fn hold((log, gate, id): (Log, Event, u64)) -> u64 {
    log.put((id, std::process::id(), 0)).expect("log");
    gate.wait_timeout(LIMIT);
    id
}

/// Starts `sleep 60`, says so, then waits for `gate` (at most `LIMIT`); returns its id.
#[allow(clippy::zombie_processes)]
fn hold_with_subprocess((log, gate, id): (Log, Event, u64)) -> u64 {
    let sleep = Command::new("sleep")
        .arg("60")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("sleep starts");
    log.put((id, std::process::id(), sleep.id())).expect("log");
    gate.wait_timeout(LIMIT);
    id
}

/// Says it ran; returns its id at once.
fn record((log, id): (Log, u64)) -> u64 {
    log.put((id, std::process::id(), 0)).expect("log");
    id
}

fn square(x: u64) -> u64 {
    x * x
}

fn boom(_: u64) -> u64 {
    panic!("boom")
}

fn pool() -> Pool {
    Pool::new(2).expect("a pool of 2")
}

fn new_log() -> Log {
    Queue::new().expect("a queue")
}

fn gate() -> Event {
    Event::new().expect("an event")
}

/// The next entry of the log: a task that runs.
fn started(log: &Log) -> (u64, u32, u32) {
    log.get_timeout(LIMIT).expect("a task says it runs")
}

/// Everything left in the log.
fn drain(log: &Log) -> Vec<(u64, u32, u32)> {
    std::iter::from_fn(|| log.try_get().ok()).collect()
}

/// Gone, or a zombie waiting for whoever adopted it: it runs no more.
fn dead(pid: u32) -> bool {
    pid_state(pid).is_none_or(|s| s == 'Z' || s == 'X')
}

fn assert_dies(pid: u32, what: &str) {
    assert!(
        eventually(LIMIT, || dead(pid)),
        "{what} {pid} still runs (state {:?})",
        pid_state(pid)
    );
}

fn assert_cancelled<R: std::fmt::Debug>(r: mproc::Result<R>) {
    assert_eq!(r.expect_err("cancelled").kind(), ErrorKind::Cancelled);
}

/// Both workers serve, none of them one of `killed`: two tasks run at the same time. (Only
/// while the pool counts tasks as slow: otherwise it may send the second behind the first.)
fn assert_two_fresh_workers(pool: &Pool, killed: &[u32]) {
    assert!(
        eventually(LIMIT, || pool.workers() == 2),
        "the pool is back to 2 workers: {}",
        pool.workers()
    );
    let (log, g) = (new_log(), gate());
    let mut hs: Vec<_> = (0..2)
        .map(|i| pool.apply_async(hold, (log.clone(), g.clone(), 100 + i)))
        .collect();
    let pids: HashSet<u32> = (0..2).map(|_| started(&log).1).collect();
    assert_eq!(pids.len(), 2, "two workers run at once: {pids:?}");
    assert!(
        pids.iter().all(|p| !killed.contains(p)),
        "{pids:?} vs killed {killed:?}"
    );
    g.set();
    for (i, h) in hs.iter_mut().enumerate() {
        assert_eq!(h.get_timeout(LIMIT).unwrap(), 100 + i as u64);
    }
}

/// Both workers of a 2-pool held by a task each (ids 1 and 2), released by their own gates.
struct Busy {
    gates: [Event; 2],
    handles: Vec<AsyncResult<u64>>,
    pids: [u32; 2],
}

fn occupy(pool: &Pool, log: &Log) -> Busy {
    let gates = [gate(), gate()];
    let handles: Vec<_> = (0..2)
        .map(|i| pool.apply_async(hold, (log.clone(), gates[i].clone(), 1 + i as u64)))
        .collect();
    let mut pids = [0; 2];
    for _ in 0..2 {
        let (id, pid, _) = started(log);
        pids[id as usize - 1] = pid;
    }
    Busy {
        gates,
        handles,
        pids,
    }
}

impl Busy {
    /// Releases both; each returns its id.
    fn finish(self) {
        for g in &self.gates {
            g.set();
        }
        for (i, mut h) in self.handles.into_iter().enumerate() {
            assert_eq!(h.get_timeout(LIMIT).unwrap(), 1 + i as u64, "not disturbed");
        }
    }
}

#[test]
fn a_queued_task_never_runs() {
    let _leaks = common::leak_checked();
    let pool = pool();
    let log = new_log();
    let busy = occupy(&pool, &log);
    let h = pool.apply_async(record, (log.clone(), 7));
    let after = pool.apply_async(record, (log.clone(), 8));
    assert!(h.cancel());
    assert!(h.cancel(), "cancelling again: still cancelled");
    assert!(h.cancelled() && h.ready());
    assert_eq!(h.successful(), Some(false));
    let pids = busy.pids;
    busy.finish();
    assert_eq!(after.get().unwrap(), 8, "the task queued behind it runs");
    assert_cancelled(h.get());
    pool.close();
    pool.join().unwrap();
    let ran: Vec<u64> = drain(&log).iter().map(|e| e.0).collect();
    assert_eq!(ran, [8], "the cancelled task never ran");
    for pid in pids {
        assert_dies(pid, "a worker retired by close");
    }
}

/// Cancels a task running `hold_with_subprocess` as `id`: its worker and its `sleep` die.
fn cancel_running(log: &Log, h: AsyncResult<u64>, id: u64) -> u32 {
    let (got, worker, sleep) = started(log);
    assert_eq!(got, id);
    assert!(h.cancel());
    assert!(h.cancel());
    let mut h = h;
    assert_cancelled(h.get_timeout(LIMIT));
    assert_dies(worker, "the worker of a cancelled task");
    assert_dies(sleep, "the subprocess of a cancelled task");
    worker
}

#[test]
fn a_running_task_s_worker_and_subprocess_die_and_are_replaced() {
    let _leaks = common::leak_checked();
    let pool = pool();
    let log = new_log();
    let g = gate(); // never set: only a kill ends the task
    // An idle pool: the task goes to an idle worker at once.
    let h = pool.apply_async(hold_with_subprocess, (log.clone(), g.clone(), 5));
    let killed = cancel_running(&log, h, 5);
    assert_two_fresh_workers(&pool, &[killed]);
    // A busy pool: the task waits in the queue, then runs when a worker frees up.
    let busy = occupy(&pool, &log);
    let h = pool.apply_async(hold_with_subprocess, (log.clone(), g.clone(), 6));
    busy.gates[0].set();
    let killed2 = cancel_running(&log, h, 6);
    assert_eq!(killed2, busy.pids[0], "it ran on the worker freed first");
    busy.finish();
    assert_two_fresh_workers(&pool, &[killed, killed2]);
    assert!(drain(&log).is_empty());
}

#[test]
fn a_finished_task_cannot_be_cancelled() {
    let _leaks = common::leak_checked();
    let pool = pool();
    let mut h = pool.apply_async(square, 3);
    assert!(h.wait_timeout(LIMIT));
    assert!(!h.cancel(), "too late");
    assert!(!h.cancelled());
    assert_eq!(h.successful(), Some(true));
    assert_eq!(h.get_timeout(LIMIT).unwrap(), 9);
    assert!(!h.cancel(), "taken");
    let failed = pool.apply_async(boom, 0);
    assert!(failed.wait_timeout(LIMIT));
    assert!(!failed.cancel());
    assert_eq!(failed.get().unwrap_err().kind(), ErrorKind::Panicked);
    let empty = pool.map_async(square, Vec::<u64>::new());
    assert!(!empty.cancel(), "nothing to cancel");
    assert_eq!(empty.get().unwrap(), Vec::<u64>::new());
}

#[test]
fn cancelling_a_map_kills_its_running_chunks_drops_the_rest_and_spares_other_jobs() {
    let _leaks = common::leak_checked();
    let pool = pool();
    let log = new_log();
    let g = gate(); // never set
    // 16 items in chunks of 2 (Python's rule for 2 workers): 8 jobs, 2 of them running.
    let items: Vec<_> = (0..16).map(|x| (log.clone(), g.clone(), x)).collect();
    let mut m = pool.map_async(hold, items);
    let other = pool.apply_async(record, (log.clone(), 100));
    let running: Vec<_> = (0..2).map(|_| started(&log)).collect();
    assert!(m.cancel());
    assert_cancelled(m.get_timeout(LIMIT));
    for (_, worker, _) in &running {
        assert_dies(*worker, "a worker running a cancelled map's chunk");
    }
    assert_eq!(
        other.get().unwrap(),
        100,
        "a job queued behind the map runs"
    );
    let workers: Vec<u32> = running.iter().map(|r| r.1).collect();
    assert_two_fresh_workers(&pool, &workers);
    pool.close();
    pool.join().unwrap();
    let ran: Vec<u64> = drain(&log).iter().map(|e| e.0).collect();
    assert_eq!(ran, [100], "no other item of the map ran");
}

#[test]
fn jobs_sent_ahead_to_a_killed_worker_run_once_elsewhere() {
    let _leaks = common::leak_checked();
    let pool = pool();
    // Fast tasks: the pool starts sending jobs ahead to busy workers (look-ahead).
    pool.map_chunked(square, 0..400, 1).unwrap();
    let log = new_log();
    let g = gate(); // never set
    let h = pool.apply_async(hold, (log.clone(), g.clone(), 1000));
    let others: Vec<_> = (0..20)
        .map(|i| pool.apply_async(record, (log.clone(), i)))
        .collect();
    // Wait until the cancellable one runs.
    let mut seen = Vec::new();
    let worker = loop {
        let e = started(&log);
        if e.0 == 1000 {
            break e.1;
        }
        seen.push(e.0);
    };
    assert!(h.cancel());
    assert_dies(worker, "the worker of a cancelled task");
    for (i, mut o) in others.into_iter().enumerate() {
        assert_eq!(o.get_timeout(LIMIT).unwrap(), i as u64, "not failed");
    }
    pool.close();
    pool.join().unwrap();
    seen.extend(drain(&log).iter().map(|e| e.0));
    seen.sort_unstable();
    assert_eq!(seen, (0..20).collect::<Vec<_>>(), "each other job ran once");
}

#[test]
fn a_cancelled_job_sent_ahead_is_killed_when_its_turn_comes_and_spares_the_one_before() {
    let _leaks = common::leak_checked();
    let pool = pool();
    // Fast tasks: the pool starts sending jobs ahead to busy workers (look-ahead).
    pool.map_chunked(square, 0..400, 1).unwrap();
    let log = new_log();
    let (first, second, never) = (gate(), gate(), gate());
    let b = pool.apply_async(hold, (log.clone(), first.clone(), 1));
    let a = pool.apply_async(hold, (log.clone(), second.clone(), 2));
    // Sent ahead behind `b` (or queued, if tasks did not count as fast).
    let x = pool.apply_async(hold, (log.clone(), never.clone(), 3));
    let mut pids = [0; 3];
    for _ in 0..2 {
        let (id, pid, _) = started(&log);
        pids[id as usize - 1] = pid;
    }
    assert!(x.cancel());
    first.set();
    let mut b = b;
    assert_eq!(
        b.get_timeout(LIMIT).unwrap(),
        1,
        "the job before it keeps its result"
    );
    second.set();
    let mut a = a;
    assert_eq!(a.get_timeout(LIMIT).unwrap(), 2);
    assert_cancelled(x.get());
    assert!(eventually(LIMIT, || pool.workers() == 2));
    // (Not `assert_two_fresh_workers`: with tasks counted as fast, its second task may be
    // sent ahead behind its first, which waits for it.)
    assert_eq!(
        pool.map(square, 0..10).unwrap(),
        (0..10).map(square).collect::<Vec<_>>()
    );
    pool.close();
    pool.join().unwrap();
    // If it began (it was sent ahead), its worker was killed; it never finished either way.
    for (id, pid, _) in drain(&log) {
        assert_eq!(id, 3, "only the cancelled job may have begun");
        assert_dies(pid, "the worker that began a cancelled job");
    }
}

#[test]
fn as_completed_yields_in_completion_order() {
    let _leaks = common::leak_checked();
    let pool = pool();
    let (log, g) = (new_log(), gate());
    let handles = vec![
        pool.apply_async(hold, (log.clone(), g.clone(), 0)),
        pool.apply_async(square, 3),
    ];
    started(&log);
    let mut done = mproc::as_completed(handles);
    assert_eq!(done.len(), 2);
    let (i, r) = done.next().expect("two handles");
    assert_eq!((i, r.unwrap()), (1, 9), "the fast one first");
    let t = Instant::now();
    let e = done
        .next_timeout(Duration::from_millis(200))
        .expect("one left")
        .unwrap_err();
    assert!(e.is_timeout(), "{e}");
    assert!(t.elapsed() >= Duration::from_millis(200));
    assert_eq!(done.pending().map(|(i, _)| i).collect::<Vec<_>>(), [0]);
    g.set();
    let (i, r) = done
        .next_timeout(LIMIT)
        .expect("one left")
        .expect("in time");
    assert_eq!((i, r.unwrap()), (0, 0));
    assert!(done.next().is_none());
    assert!(done.next_timeout(LIMIT).is_none());
}

#[test]
fn as_completed_yields_cancelled_handles_and_those_done_before() {
    let _leaks = common::leak_checked();
    let pool = pool();
    let (log, g) = (new_log(), gate());
    let early = pool.apply_async(square, 2);
    assert!(early.wait_timeout(LIMIT));
    let handles = vec![
        pool.apply_async(hold, (log.clone(), g.clone(), 0)),
        early,
        pool.apply_async(hold, (log.clone(), g.clone(), 2)),
    ];
    let mut done = mproc::as_completed(handles);
    let (i, r) = done.next().unwrap();
    assert_eq!((i, r.unwrap()), (1, 4));
    started(&log);
    started(&log);
    for (_, h) in done.pending() {
        assert!(h.cancel());
    }
    let mut rest: Vec<usize> = done
        .map(|(i, r)| {
            assert_cancelled(r);
            i
        })
        .collect();
    rest.sort_unstable();
    assert_eq!(rest, [0, 2]);
    assert_two_fresh_workers(&pool, &[]);
}

#[test]
fn wait_returns_as_asked() {
    let _leaks = common::leak_checked();
    let pool = pool();
    let (log, g) = (new_log(), gate());
    let hs = vec![
        pool.apply_async(hold, (log.clone(), g.clone(), 0)),
        pool.apply_async(square, 3),
    ];
    let (done, not_done) = mproc::wait(&hs, ReturnWhen::FirstCompleted, Some(LIMIT));
    assert_eq!((done, not_done), (vec![1], vec![0]));
    // FirstException: no failure yet, so it waits; past the timeout, it says what is done.
    let t = Instant::now();
    let short = Some(Duration::from_millis(200));
    let (done, not_done) = mproc::wait(&hs, ReturnWhen::FirstException, short);
    assert_eq!((done, not_done), (vec![1], vec![0]));
    assert!(t.elapsed() >= Duration::from_millis(200));
    let (done, not_done) = mproc::wait(&hs, ReturnWhen::AllCompleted, short);
    assert_eq!((done, not_done), (vec![1], vec![0]));
    g.set();
    let (done, not_done) = mproc::wait(&hs, ReturnWhen::AllCompleted, Some(LIMIT));
    assert_eq!((done, not_done), (vec![0, 1], vec![]));
    // Nothing was consumed.
    let got: Vec<u64> = hs.into_iter().map(|h| h.get().unwrap()).collect();
    assert_eq!(got, [0, 9]);
    // Without an error, FirstException is AllCompleted.
    let hs = vec![pool.apply_async(square, 1), pool.apply_async(square, 2)];
    let (done, _) = mproc::wait(&hs, ReturnWhen::FirstException, Some(LIMIT));
    assert_eq!(done, [0, 1]);
    let (done, not_done) = mproc::wait(
        &Vec::<AsyncResult<u64>>::new(),
        ReturnWhen::AllCompleted,
        None,
    );
    assert!(done.is_empty() && not_done.is_empty());
}

#[test]
fn wait_for_the_first_exception() {
    let _leaks = common::leak_checked();
    let pool = pool();
    let (log, g) = (new_log(), gate());
    let hs = vec![
        pool.apply_async(hold, (log.clone(), g.clone(), 0)),
        pool.apply_async(boom, 0),
    ];
    assert_eq!(started(&log).0, 0);
    let (done, not_done) = mproc::wait(&hs, ReturnWhen::FirstException, Some(LIMIT));
    assert_eq!((done, not_done), (vec![1], vec![0]));
    // A cancelled handle is done, not an exception.
    let held = vec![
        pool.apply_async(hold, (log.clone(), g.clone(), 2)),
        pool.apply_async(hold, (log.clone(), g.clone(), 3)),
    ];
    assert_eq!(started(&log).0, 2);
    assert!(held[0].cancel());
    let short = Some(Duration::from_millis(200));
    let (done, not_done) = mproc::wait(&held, ReturnWhen::FirstException, short);
    assert_eq!((done, not_done), (vec![0], vec![1]));
    g.set();
    let mut hs = hs.into_iter();
    assert_eq!(hs.next().unwrap().get().unwrap(), 0);
    assert_eq!(
        hs.next().unwrap().get().unwrap_err().kind(),
        ErrorKind::Panicked
    );
    let mut held = held.into_iter();
    assert_cancelled(held.next().unwrap().get());
    let mut last = held.next().unwrap();
    assert_eq!(last.get_timeout(LIMIT).unwrap(), 3);
}

#[test]
fn an_awaited_handle_can_be_cancelled() {
    let _leaks = common::leak_checked();
    let pool = pool();
    let (log, g) = (new_log(), gate()); // never set
    let mut h = pool.apply_async(hold, (log.clone(), g.clone(), 0));
    let worker = started(&log).1;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime");
    let got = rt.block_on(async {
        let short = tokio::time::timeout(Duration::from_millis(50), &mut h).await;
        assert!(short.is_err(), "still running");
        assert!(h.cancel());
        tokio::time::timeout(LIMIT, h).await.expect("ready at once")
    });
    assert_cancelled(got);
    assert_dies(worker, "the worker of a cancelled task");
    drop(rt);
}
