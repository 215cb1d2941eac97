//! What a `Pool` costs, each figure beside a floor or peer measured in the same run.
//!
//! Sections (all in one run, a Pool of 2 workers unless noted):
//! 1. round trip: `pool.apply(noop_u64, x)`, one task in flight, per-call latency; floors: a
//!    1-byte ping-pong over a `UnixStream::pair` with a forked child that echoes until EOF
//!    (blocking), and two processes spinning on one shared cache line (`pool_rows/spin.rs`;
//!    each sample is the mean of 100 exchanges, since one is shorter than a few clock reads).
//! 2. throughput: `pool.map_chunked(square, 0..20_000, 1)` in tasks/s, and `pool.map(square,
//!    0..N)` with the automatic chunk size in items/s, for N = 1,000,000 and for N = 20,000
//!    (the size Python's `--quick` run uses); peer: Python's `Pool(2).map` (section 6).
//!    Then `map_chunked(noop, 0..200_000, 1)` against as many empty `rayon::scope` spawns on
//!    one rayon thread per core, and the CPU the same pool uses while idle for 1 s right after
//!    a map (its supervisor and helper threads and every child process, from `/proc`:
//!    `pool_rows/idle.rs`).
//! 3. create + teardown: `Pool::new(2)` then `close(); join()`, and `Pool::new(2)` dropped
//!    (which terminates it), each also with one `apply` before the teardown (so that workers
//!    surely ran: a pool dropped at once may be terminated before its supervisor has started
//!    any); floor: two raw `fork` + `waitpid` of a child that `_exit`s. This section runs
//!    right after the very first pool of the process (first thing, before anything else touches
//!    mproc: it also starts the fork server), while the process is still small, since fork's
//!    cost grows with the forking process's memory. A process has one first pool, so that row
//!    is the median of 5 processes: this one and 4 fresh copies of it, started before it.
//! 4. CPU-bound efficiency: 200 tasks of about 10 ms of CPU each (a deterministic xorshift spin
//!    loop, calibrated once at start) through `map_chunked(spin, .., 1)`, against the same work
//!    on a 2-thread rayon pool (`par_iter().map(spin)`); efficiency = rayon wall / mproc wall.
//! 5. the rows in `pool_rows/`: Process start+join vs fork+waitpid (right after section 3, while
//!    the process is small); 100 MB `apply` there and back vs an in-process copy (after section
//!    4); linearity of 10x more tasks and 10x more `imap` items, and `imap`'s peak RSS growth
//!    over 10M items vs 1M (on a second pool).
//! 6. Python: `python3 ../shared/bench/python_baseline.py --quick --only b,c,d,f` (run last, under
//!    a timeout; its JSON lines parsed by hand), and mproc / Python ratios per matching row. If
//!    python3 or the script is missing, or it fails, a `python: skipped (reason)` line says so.
//!
//! Method: no harness dependency. Within sections 1, 3 and 4 (and among the runs of section 2)
//! the series are interleaved: every round runs each series in turn, in a rotated order, so
//! that noise on a shared machine hits every series alike. Latencies report the median over
//! all samples; repeated whole runs report the median run. The `spread` column is p90/median
//! for per-call latencies and slowest/fastest for repeated runs. Python runs as one block after
//! the rest (it cannot be interleaved), so its rows are only as comparable as the machine was
//! steady: the line about it prints the foreign CPU share it measured per section.
//!
//! `ratio` is always the mproc figure over the floor's or peer's (so below 1 is better for
//! times, above 1 for rates), except on the CPU row: rayon wall / mproc wall.
//!
//! Targets of the main table (the first performance issue): round trip <= 1.5x the socketpair
//! floor; chunksize-1 throughput >= 300k tasks/s and >= 10x Python; automatic-chunk map >= 5x
//! Python; Pool(2) create+teardown <= 3 ms for the first pool, <= 1 ms after; CPU-bound
//! efficiency >= 0.97x rayon.
//!
//! A second table, last, has one row per target of issue #16 (hand-off speed), each from this
//! run's figures and floors, marked MET / NOT MET (`pool_rows/targets.rs`): apply's round trip
//! <= 30x the spin floor, <= 0.25x the socketpair floor, p90/median <= 2; chunksize-1 tasks >=
//! 0.35x rayon's `scope.spawn`; Process spawn+join <= 1.5x fork+waitpid (from `pool_rows`);
//! automatic-chunk `map(x*x)` >= 10x Python at 1M and 20k items; an idle pool <= 1% of a core;
//! oversubscription (`Pool(4)` with 4 threads of `apply` loops, `Pool(4)` chunksize-1 `map`,
//! two busy `Pool(2)`s) with spinning on >= 0.9x the same with `MPROC_SPIN=0`, each measured in
//! fresh copies of this bench, interleaved (`pool_rows/oversub.rs`). The MPI round trip is
//! listed as not measured here.
//!
//! This is the one command that prints every row of the performance issues' tables.
//! Run with `cargo bench --bench pool` (about 1 minute once built, Python included).

mod common;
mod pool_rows;
use common::{BoxResult, fork_waitpid, reap};

use std::hint::black_box;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mproc::Pool;
use rayon::prelude::*;

/// Section 1: rounds, and calls per series per round.
const RT_ROUNDS: usize = 10;
const RT_ITERS: usize = 500;
/// Section 1, the spin floor: round trips per sample (one sample is their mean, since a
/// clock read costs a fifth of one), and the most wall time one round of it may take (a
/// peer that is not scheduled makes every exchange a time slice).
const SPIN_BATCH: u64 = 100;
const SPIN_ROUND_BUDGET: Duration = Duration::from_millis(30);
/// Idle cost: how long an idle pool is watched, right after its last task.
const IDLE_WINDOW: Duration = Duration::from_secs(1);
/// Section 2: items for chunksize 1, items for the big automatic-chunk map, runs of each.
const CS1_N: u64 = 20_000;
const AUTO_N: u64 = 1_000_000;
const AUTO_SMALL_N: u64 = 20_000;
const TP_RUNS: usize = 11;
/// Section 3: rounds, and create+teardown cycles per series per round.
const CT_ROUNDS: usize = 5;
const CT_ITERS: usize = 30;
/// Section 4: tasks, CPU time per task, rounds (each runs mproc once and rayon once).
const CPU_TASKS: usize = 200;
const CPU_TASK: Duration = Duration::from_millis(10);
const CPU_ROUNDS: usize = 7;
/// Section 5: where the Python baseline may be: `$MPROC_PYTHON_BASELINE`, next to this crate
/// (`../shared/bench/`), or the team's shared folder.
const PY_SCRIPTS: [&str; 2] = [
    concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/bench/python_baseline.py"
    ),
    "/work/shared/bench/python_baseline.py",
];
const PY_TIMEOUT: Duration = Duration::from_secs(120);
/// The whole run aborts past this, so that a hang is reported rather than waited on.
const WATCHDOG: Duration = Duration::from_secs(300);

fn noop_u64(x: u64) -> u64 {
    x
}

fn square(x: u64) -> u64 {
    x * x
}

/// `iters` dependent xorshift steps: deterministic CPU work the optimizer cannot skip.
fn spin(iters: u64) -> u64 {
    let mut x = black_box(iters) | 1;
    for _ in 0..iters {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
    }
    x
}

/// Floor of section 1: a forked child that echoes every byte on a socketpair until EOF.
struct Echo {
    sock: UnixStream,
    pid: libc::pid_t,
}

impl Echo {
    fn start() -> BoxResult<Echo> {
        let (sock, theirs) = UnixStream::pair()?;
        let (mine_fd, their_fd) = (sock.as_raw_fd(), theirs.as_raw_fd());
        // SAFETY: the child calls only `close`, `read`, `write` and `_exit` on raw fds, all
        // async-signal-safe, so forking this multi-threaded process is sound.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        if pid == 0 {
            let mut byte = 0u8;
            // SAFETY: in the child, `mine_fd` is the child's copy of the parent's end; closing
            // it lets the child see EOF once the parent drops its end. `byte` is a valid
            // 1-byte buffer for `read` and `write`, and `_exit` ends the child without running
            // the parent's destructors.
            unsafe {
                libc::close(mine_fd);
                while libc::read(their_fd, (&raw mut byte).cast(), 1) == 1 {
                    if libc::write(their_fd, (&raw const byte).cast(), 1) != 1 {
                        break;
                    }
                }
                libc::_exit(0);
            }
        }
        drop(theirs);
        Ok(Echo { sock, pid })
    }

    fn ping(&mut self) -> BoxResult<()> {
        let mut b = [0u8];
        self.sock.write_all(b"p")?;
        self.sock.read_exact(&mut b)?;
        Ok(())
    }

    fn stop(self) -> BoxResult<()> {
        let pid = self.pid;
        drop(self.sock);
        reap(pid)
    }
}

/// Median and p90 (nearest rank) of `xs`.
fn median_p90(xs: &[f64]) -> (f64, f64) {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = |pct: usize| v[(v.len() * pct).div_ceil(100).clamp(1, v.len()) - 1];
    (rank(50), rank(90))
}

/// Median of `xs` and slowest/fastest.
fn median_spread(xs: &[f64]) -> (f64, f64) {
    let (med, _) = median_p90(xs);
    let lo = xs.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = xs.iter().copied().fold(0.0, f64::max);
    (med, hi / lo)
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn fmt_time(s: f64) -> String {
    if s >= 1.0 {
        format!("{s:.3} s")
    } else if s >= 1e-3 {
        format!("{:.3} ms", s * 1e3)
    } else {
        format!("{:.1} µs", s * 1e6)
    }
}

fn fmt_rate(r: f64) -> String {
    if r >= 1e6 {
        format!("{:.2} M/s", r / 1e6)
    } else {
        format!("{:.1} k/s", r / 1e3)
    }
}

/// One printed line: a figure, its floor or peer, their ratio and the target, if any.
struct Row {
    name: String,
    mproc: String,
    peer_name: String,
    peer: String,
    ratio: Option<f64>,
    spread: Option<f64>,
    target: Option<(String, bool)>,
}

impl Row {
    fn new(name: impl Into<String>, mproc: String) -> Row {
        Row {
            name: name.into(),
            mproc,
            peer_name: String::new(),
            peer: "-".into(),
            ratio: None,
            spread: None,
            target: None,
        }
    }
    fn peer(mut self, name: impl Into<String>, figure: String, ratio: f64) -> Row {
        self.peer_name = name.into();
        self.peer = figure;
        self.ratio = Some(ratio);
        self
    }
    fn spread(mut self, s: f64) -> Row {
        self.spread = Some(s);
        self
    }
    fn target(mut self, text: impl Into<String>, met: bool) -> Row {
        self.target = Some((text.into(), met));
        self
    }
}

fn print_rows(rows: &[Row]) {
    println!(
        "{:<40} {:>10} {:>6}  {:<36} {:>10} {:>6}  target",
        "row", "mproc", "spread", "floor / peer", "", "ratio"
    );
    for r in rows {
        let spread = r.spread.map_or("-".into(), |s| format!("{s:.2}"));
        let ratio = r.ratio.map_or("-".into(), |x| format!("{x:.2}x"));
        let target = r.target.as_ref().map_or(String::new(), |(t, met)| {
            format!("{t}: {}", if *met { "yes" } else { "NO" })
        });
        println!(
            "{:<40} {:>10} {spread:>6}  {:<36} {:>10} {ratio:>6}  {target}",
            r.name, r.mproc, r.peer_name, r.peer
        );
    }
}

/// One Pool(2) lifetime: create, optionally one `apply`, then close+join or drop.
#[derive(Clone, Copy)]
enum Cycle {
    CloseJoin,
    ApplyCloseJoin,
    Drop,
    ApplyDrop,
    Floor,
}

fn run_cycle(c: Cycle) -> BoxResult<()> {
    match c {
        Cycle::CloseJoin => {
            let pool = Pool::new(2)?;
            pool.close();
            pool.join()?;
        }
        Cycle::ApplyCloseJoin => {
            let pool = Pool::new(2)?;
            black_box(pool.apply(noop_u64, 1)?);
            pool.close();
            pool.join()?;
        }
        Cycle::Drop => drop(Pool::new(2)?),
        Cycle::ApplyDrop => {
            let pool = Pool::new(2)?;
            black_box(pool.apply(noop_u64, 1)?);
            drop(pool);
        }
        Cycle::Floor => {
            fork_waitpid()?;
            fork_waitpid()?;
        }
    }
    Ok(())
}

/// The medians from the Python baseline (seconds or items/s), where it printed them.
#[derive(Default, Debug)]
struct Python {
    close_join_fork: Option<f64>,
    close_join_forkserver: Option<f64>,
    apply_close_join_fork: Option<f64>,
    apply_close_join_forkserver: Option<f64>,
    with_apply_terminate: Option<f64>,
    map_cs1: Option<f64>,
    map_default: Option<f64>,
    map_default_n: Option<f64>,
    apply_async_rtt: Option<f64>,
    pipe_rtt: Option<f64>,
    /// Bytes/s both ways of `pool.apply(echo, payload)` (section f).
    big_echo: Option<f64>,
    foreign: Vec<(String, String)>,
    wall: f64,
}

/// The raw text of top-level field `key` in one flat JSON object line: a string's contents
/// (the fields read here hold no escapes) or a number's digits.
fn json_field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let pat = format!("\"{key}\": ");
    let rest = &line[line.find(&pat)? + pat.len()..];
    if let Some(s) = rest.strip_prefix('"') {
        s.split('"').next()
    } else {
        rest.split([',', '}']).next().map(str::trim)
    }
}

fn json_num(line: &str, key: &str) -> Option<f64> {
    json_field(line, key)?.parse().ok()
}

/// Runs the Python baseline under `PY_TIMEOUT` and picks out the rows compared here.
fn run_python() -> Result<Python, String> {
    let from_env = std::env::var("MPROC_PYTHON_BASELINE").ok();
    let candidates = from_env.iter().map(String::as_str).chain(PY_SCRIPTS);
    let Some(script) = candidates.into_iter().find(|p| Path::new(p).is_file()) else {
        return Err(format!(
            "python_baseline.py not found (looked in {PY_SCRIPTS:?})"
        ));
    };
    let started = Instant::now();
    let mut child = Command::new("python3")
        .args([script, "--quick", "--only", "b,c,d,f"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run python3: {e}"))?;
    let mut out = child.stdout.take().ok_or("no stdout pipe")?;
    let mut err = child.stderr.take().ok_or("no stderr pipe")?;
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let status = loop {
        match child.try_wait().map_err(|e| e.to_string())? {
            Some(st) => break st,
            None if started.elapsed() > PY_TIMEOUT => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("timed out after {} s", PY_TIMEOUT.as_secs()));
            }
            None => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    let stdout = out_reader.join().unwrap_or_default();
    let stderr = err_reader.join().unwrap_or_default();
    if !status.success() {
        let tail: String = stderr
            .lines()
            .last()
            .unwrap_or("")
            .chars()
            .take(120)
            .collect();
        return Err(format!("python3 exited with {status}: {tail}"));
    }
    let mut py = Python {
        wall: secs(started.elapsed()),
        ..Python::default()
    };
    for line in BufReader::new(stdout.as_bytes()).lines() {
        let line = line.map_err(|e| e.to_string())?;
        let (Some(section), Some(name)) = (json_field(&line, "section"), json_field(&line, "name"))
        else {
            continue;
        };
        let value = json_num(&line, "value");
        let method = json_field(&line, "start_method");
        match (section, name) {
            ("b", "pool2_create_close_join") if method == Some("fork") => {
                py.close_join_fork = value;
            }
            ("b", "pool2_create_close_join") if method == Some("forkserver") => {
                py.close_join_forkserver = value;
            }
            ("b", "pool2_create_apply_close_join") if method == Some("fork") => {
                py.apply_close_join_fork = value;
            }
            ("b", "pool2_create_apply_close_join") if method == Some("forkserver") => {
                py.apply_close_join_forkserver = value;
            }
            ("b", "pool2_with_apply_terminate") => py.with_apply_terminate = value,
            ("c", "pool2_map_square") => match json_field(&line, "chunksize") {
                Some("1") => py.map_cs1 = value,
                Some("default") => {
                    py.map_default = value;
                    py.map_default_n = json_num(&line, "n_items");
                }
                _ => {}
            },
            ("d", "pool2_apply_async_roundtrip") => py.apply_async_rtt = value,
            ("d", "ceiling_raw_pipe_pingpong_rtt") => py.pipe_rtt = value,
            ("f", "pool_apply_echo_100MB_roundtrip") => {
                py.big_echo = value
                    .zip(json_num(&line, "payload_bytes"))
                    .map(|(s, b)| 2.0 * b / s);
            }
            (_, "section_wall") => {
                let share = json_field(&line, "foreign_cpu_share").unwrap_or("?");
                py.foreign.push((section.to_string(), share.to_string()));
            }
            (_, "section_error") => {
                let e: String = json_field(&line, "error")
                    .unwrap_or("?")
                    .chars()
                    .take(100)
                    .collect();
                eprintln!("python section {section} failed: {e}");
            }
            _ => {}
        }
    }
    Ok(py)
}

/// Set in the fresh copies of this bench that each measure one first pool (section 3a).
const FIRST_POOL_ENV: &str = "MPROC_BENCH_FIRST_POOL";
/// Fresh processes measuring a first pool: one sample per process, so the median of several.
const FIRST_POOL_RUNS: usize = 5;

/// The first pool of a fresh copy of this process, in seconds, or `None` if it failed.
fn first_pool_in_fresh_process() -> Option<f64> {
    let exe = std::env::current_exe().ok()?;
    let out = Command::new(exe)
        .env(FIRST_POOL_ENV, "1")
        .stderr(Stdio::inherit())
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

fn main() -> BoxResult<()> {
    if std::env::var_os(FIRST_POOL_ENV).is_some() {
        let t = Instant::now();
        run_cycle(Cycle::CloseJoin)?;
        println!("{}", secs(t.elapsed()));
        return Ok(());
    }
    if std::env::var_os(pool_rows::oversub::CHILD_ENV).is_some() {
        return pool_rows::oversub::child();
    }
    let bench_start = Instant::now();
    std::thread::spawn(|| {
        std::thread::sleep(WATCHDOG);
        eprintln!(
            "pool bench: still running after {} s; aborting (a hang?)",
            WATCHDOG.as_secs()
        );
        std::process::exit(2);
    });

    // 3a. The first pool of the process, before anything else touches mproc: it also starts
    // the fork server (and mproc's internal spawner thread).
    // One sample per process: this one's, and those of fresh copies of it (started before
    // this process forks anything, so each is as small as this one).
    let mut firsts: Vec<f64> = (1..FIRST_POOL_RUNS)
        .filter_map(|_| first_pool_in_fresh_process())
        .collect();
    let t = Instant::now();
    run_cycle(Cycle::CloseJoin)?;
    firsts.push(secs(t.elapsed()));
    let (first_pool, first_spread) = median_spread(&firsts);

    // 3b. Create + teardown, interleaved with the fork+waitpid floor.
    let cycles = [
        Cycle::CloseJoin,
        Cycle::ApplyCloseJoin,
        Cycle::Drop,
        Cycle::ApplyDrop,
        Cycle::Floor,
    ];
    for &c in &cycles {
        run_cycle(c)?;
    }
    let mut ct: Vec<Vec<f64>> = vec![Vec::new(); cycles.len()];
    for round in 0..CT_ROUNDS {
        for k in 0..cycles.len() {
            let i = (round + k) % cycles.len();
            for _ in 0..CT_ITERS {
                let t = Instant::now();
                run_cycle(cycles[i])?;
                ct[i].push(secs(t.elapsed()));
            }
        }
    }
    let mut extra_rows = Vec::new();
    let (ps_med, ps_floor) = pool_rows::process_start(&mut extra_rows)?;

    // Calibrate the spin loop in this process: the fastest of a few runs, so that noise does
    // not inflate the per-task work.
    const PROBE: u64 = 2_000_000;
    let probe = (0..5)
        .map(|_| {
            let t = Instant::now();
            black_box(spin(PROBE));
            secs(t.elapsed())
        })
        .fold(f64::INFINITY, f64::min);
    let spin_iters = (PROBE as f64 * secs(CPU_TASK) / probe) as u64;

    // 1. Round trip: apply vs socketpair ping-pong vs shared-memory spin, interleaved.
    let mut echo = Echo::start()?;
    let pool = Pool::new(2)?;
    for i in 0..200 {
        black_box(pool.apply(noop_u64, i)?);
        echo.ping()?;
    }
    let (mut rt_apply, mut rt_floor, mut rt_spin) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..RT_ROUNDS {
        for k in 0..3 {
            match (round + k) % 3 {
                0 => {
                    for i in 0..RT_ITERS as u64 {
                        let t = Instant::now();
                        let r = pool.apply(noop_u64, black_box(i))?;
                        rt_apply.push(secs(t.elapsed()));
                        assert_eq!(r, i);
                    }
                }
                1 => {
                    for _ in 0..RT_ITERS {
                        let t = Instant::now();
                        echo.ping()?;
                        rt_floor.push(secs(t.elapsed()));
                    }
                }
                _ => spin_round(&mut rt_spin)?,
            }
        }
    }
    echo.stop()?;

    // 2. Throughput on the same pool, the runs of every kind interleaved.
    let cs1_items: Vec<u64> = (0..CS1_N).collect();
    let auto_items: Vec<u64> = (0..AUTO_N).collect();
    let small_items: Vec<u64> = (0..AUTO_SMALL_N).collect();
    black_box(pool.map_chunked(square, 0..1000u64, 1)?);
    black_box(pool.map(square, 0..1000u64)?);
    let (mut tp_cs1, mut tp_auto, mut tp_small) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..TP_RUNS {
        for k in 0..3 {
            let t = Instant::now();
            let (out, items, samples) = match (run + k) % 3 {
                0 => (
                    pool.map_chunked(square, cs1_items.iter().copied(), 1)?,
                    &cs1_items,
                    &mut tp_cs1,
                ),
                1 => (
                    pool.map(square, auto_items.iter().copied())?,
                    &auto_items,
                    &mut tp_auto,
                ),
                _ => (
                    pool.map(square, small_items.iter().copied())?,
                    &small_items,
                    &mut tp_small,
                ),
            };
            samples.push(secs(t.elapsed()));
            assert!(out.len() == items.len() && out.iter().zip(items).all(|(&o, &x)| o == x * x));
        }
    }

    // 2b. Trivial chunksize-1 tasks against rayon's `scope.spawn` on the machine's cores.
    let [(cs1r_rate, cs1r_spread), (rayon_rate, rayon_spread)] = pool_rows::cs1_vs_rayon(&pool)?;

    // 2c. The same pool, idle right after a map, watched for IDLE_WINDOW.
    black_box(pool.map(square, small_items.iter().copied())?);
    let idle = pool_rows::idle::measure(IDLE_WINDOW);

    // 4. CPU-bound: mproc and rayon on the same work, alternating which goes first.
    let tasks = vec![spin_iters; CPU_TASKS];
    let expect = spin(spin_iters);
    let rayon_pool = rayon::ThreadPoolBuilder::new().num_threads(2).build()?;
    let run_mproc = || -> BoxResult<f64> {
        let t = Instant::now();
        let out = pool.map_chunked(spin, tasks.iter().copied(), 1)?;
        let wall = secs(t.elapsed());
        assert!(out.len() == CPU_TASKS && out.iter().all(|&o| o == expect));
        Ok(wall)
    };
    let run_rayon = || -> f64 {
        let t = Instant::now();
        let out: Vec<u64> = rayon_pool.install(|| tasks.par_iter().map(|&n| spin(n)).collect());
        let wall = secs(t.elapsed());
        assert!(out.len() == CPU_TASKS && out.iter().all(|&o| o == expect));
        wall
    };
    let (mut cpu_mproc, mut cpu_rayon) = (Vec::new(), Vec::new());
    for round in 0..CPU_ROUNDS {
        if round % 2 == 0 {
            cpu_mproc.push(run_mproc()?);
            cpu_rayon.push(run_rayon());
        } else {
            cpu_rayon.push(run_rayon());
            cpu_mproc.push(run_mproc()?);
        }
    }
    drop(rayon_pool);
    let big_rate = pool_rows::big_payload(&pool, &mut extra_rows)?;
    pool.close();
    pool.join()?;
    drop(pool);
    pool_rows::linearity(&mut extra_rows)?;

    // 2d. Oversubscription, spinning on and off, in fresh copies of this bench.
    let oversub = pool_rows::oversub::measure()?;

    let measured = secs(bench_start.elapsed());

    // 5. Python, last, as one block.
    let python = run_python();

    // Report.
    let (apply_med, apply_p90) = median_p90(&rt_apply);
    let (floor_med, floor_p90) = median_p90(&rt_floor);
    let (cs1_wall, cs1_spread) = median_spread(&tp_cs1);
    let (auto_wall, auto_spread) = median_spread(&tp_auto);
    let (small_wall, small_spread) = median_spread(&tp_small);
    let cs1_rate = CS1_N as f64 / cs1_wall;
    let auto_rate = AUTO_N as f64 / auto_wall;
    let small_rate = AUTO_SMALL_N as f64 / small_wall;
    let ct_stats: Vec<(f64, f64)> = ct.iter().map(|s| median_p90(s)).collect();
    let ct_floor = ct_stats[4].0;
    let (mproc_cpu, mproc_cpu_spread) = median_spread(&cpu_mproc);
    let (rayon_cpu, rayon_cpu_spread) = median_spread(&cpu_rayon);
    let efficiency = rayon_cpu / mproc_cpu;
    let py = python.as_ref().ok();

    println!(
        "pool bench: Pool(2), {} CPUs, {measured:.1} s + python; spin {spin_iters} iters = {}; ratio = mproc/peer (CPU: rayon/mproc)",
        mproc::cpu_count(),
        fmt_time(secs(CPU_TASK)),
    );
    let mut rows = vec![
        Row::new("apply round trip, 1 in flight", fmt_time(apply_med))
            .spread(apply_p90 / apply_med)
            .peer(
                format!(
                    "socketpair ping-pong (p90/med {:.2})",
                    floor_p90 / floor_med
                ),
                fmt_time(floor_med),
                apply_med / floor_med,
            )
            .target("<=1.5x floor", apply_med / floor_med <= 1.5),
    ];
    let mut cs1 = Row::new(
        format!("map_chunked 0..{CS1_N}, 1 (tasks)"),
        fmt_rate(cs1_rate),
    )
    .spread(cs1_spread);
    let cs1_abs = cs1_rate >= 300e3;
    cs1 = match py.and_then(|p| p.map_cs1) {
        Some(p) => {
            let r = cs1_rate / p;
            cs1.peer("Python map chunksize=1", fmt_rate(p), r).target(
                format!(">=300k/s {}, >=10x py", if cs1_abs { "yes" } else { "NO" }),
                cs1_abs && r >= 10.0,
            )
        }
        None => cs1.target(">=300k/s", cs1_abs),
    };
    rows.push(cs1);
    for (n, rate, spread) in [
        (AUTO_N, auto_rate, auto_spread),
        (AUTO_SMALL_N, small_rate, small_spread),
    ] {
        let mut row =
            Row::new(format!("map 0..{n}, auto chunks (items)"), fmt_rate(rate)).spread(spread);
        if let (Some(p), Some(pn)) = (
            py.and_then(|p| p.map_default),
            py.and_then(|p| p.map_default_n),
        ) {
            row = row
                .peer(format!("Python map default, n={pn}"), fmt_rate(p), rate / p)
                .target(">=5x py", rate / p >= 5.0);
        }
        rows.push(row);
    }
    rows.push(
        Row::new("Pool(2) first pool: new+close+join", fmt_time(first_pool))
            .spread(first_spread)
            .peer("2x fork+waitpid", fmt_time(ct_floor), first_pool / ct_floor)
            .target("<=3 ms", first_pool <= 3e-3),
    );
    let ct_names = [
        "Pool(2) new+close+join",
        "Pool(2) new+apply+close+join",
        "Pool(2) new+drop (terminate)",
        "Pool(2) new+apply+drop",
    ];
    for (i, name) in ct_names.iter().enumerate() {
        let (med, p90) = ct_stats[i];
        let mut row = Row::new(*name, fmt_time(med)).spread(p90 / med).peer(
            "2x fork+waitpid",
            fmt_time(ct_floor),
            med / ct_floor,
        );
        if matches!(i, 0 | 2) {
            row = row.target("<=1 ms", med <= 1e-3);
        }
        rows.push(row);
    }
    rows.push(
        Row::new(
            format!("CPU {CPU_TASKS}x10ms, map_chunked 1 (wall)"),
            fmt_time(mproc_cpu),
        )
        .spread(mproc_cpu_spread)
        .peer(
            format!("rayon 2 threads (spread {rayon_cpu_spread:.2})"),
            fmt_time(rayon_cpu),
            efficiency,
        )
        .target(">=0.97x rayon (rayon/mproc)", efficiency >= 0.97),
    );
    rows.append(&mut extra_rows);
    if let Some(p) = py.and_then(|p| p.big_echo) {
        rows.push(
            Row::new(
                "vs py: 100 MB there+back, ByteBuf",
                format!("{:.2} GB/s", big_rate / 1e9),
            )
            .peer(
                "Python apply(echo, bytes) (20 MB)",
                format!("{:.2} GB/s", p / 1e9),
                big_rate / p,
            ),
        );
    }
    if let Some(p) = py {
        let pairs = [
            (
                "vs py: new+close+join",
                ct_stats[0].0,
                "fork",
                p.close_join_fork,
            ),
            (
                "vs py: new+close+join",
                ct_stats[0].0,
                "forkserver",
                p.close_join_forkserver,
            ),
            (
                "vs py: new+apply+close+join",
                ct_stats[1].0,
                "fork",
                p.apply_close_join_fork,
            ),
            (
                "vs py: new+apply+close+join",
                ct_stats[1].0,
                "forkserver",
                p.apply_close_join_forkserver,
            ),
            (
                "vs py: new+apply+drop",
                ct_stats[3].0,
                "fork, with-block",
                p.with_apply_terminate,
            ),
            (
                "vs py: apply round trip",
                apply_med,
                "apply_async().get()",
                p.apply_async_rtt,
            ),
            (
                "vs py: ping-pong floor (socketpair)",
                floor_med,
                "os.pipe ping-pong",
                p.pipe_rtt,
            ),
        ];
        for (name, ours, what, theirs) in pairs {
            if let Some(t) = theirs {
                rows.push(Row::new(name, fmt_time(ours)).peer(
                    format!("Python {what}"),
                    fmt_time(t),
                    ours / t,
                ));
            }
        }
    }
    print_rows(&rows);
    print_python_line(&python);
    let spin = median_p90(&rt_spin);
    let targets = issue16_targets(&Issue16 {
        apply: (apply_med, apply_p90),
        socketpair: floor_med,
        spin,
        cs1: (cs1r_rate, cs1r_spread),
        rayon: (rayon_rate, rayon_spread),
        process: (ps_med, ps_floor),
        auto: [(AUTO_N, auto_rate), (AUTO_SMALL_N, small_rate)],
        python: py.and_then(|p| p.map_default.zip(p.map_default_n)),
        idle: &idle,
        oversub: &oversub,
    });
    pool_rows::targets::print(&targets);
    println!("{}", pool_rows::oversub::legend());
    Ok(())
}

/// One round of the spin floor: a fresh peer, a warm-up, then samples of `SPIN_BATCH` round
/// trips each (seconds per round trip), up to `RT_ITERS` of them or `SPIN_ROUND_BUDGET`.
fn spin_round(samples: &mut Vec<f64>) -> BoxResult<()> {
    let mut peer = pool_rows::spin::SpinPeer::start()?;
    peer.round_trips(1000)?;
    let started = Instant::now();
    for _ in 0..RT_ITERS {
        let took = peer.round_trips(SPIN_BATCH)?;
        samples.push(secs(took) / SPIN_BATCH as f64);
        if started.elapsed() > SPIN_ROUND_BUDGET {
            break;
        }
    }
    peer.stop()
}

/// The figures issue #16's targets are judged on, all from this run.
struct Issue16<'a> {
    /// apply round trip: median and p90, seconds.
    apply: (f64, f64),
    /// Blocking socketpair ping-pong, median seconds.
    socketpair: f64,
    /// Shared-memory spin ping-pong: median and p90, seconds.
    spin: (f64, f64),
    /// map_chunked(noop, 0..CS1_RAYON_N, 1) and rayon scope.spawn: tasks/s and spread.
    cs1: (f64, f64),
    rayon: (f64, f64),
    /// Process start+join and fork+waitpid, median seconds.
    process: (f64, f64),
    /// Automatic-chunk map: (items, items/s).
    auto: [(u64, f64); 2],
    /// Python's default-chunksize `Pool(2).map`: items/s and its item count.
    python: Option<(f64, f64)>,
    idle: &'a pool_rows::idle::IdleCost,
    /// Oversubscription, spinning on and off.
    oversub: &'a pool_rows::oversub::Oversub,
}

fn issue16_targets(f: &Issue16) -> Vec<pool_rows::targets::Target> {
    use pool_rows::targets::Target;
    let (apply, apply_p90) = f.apply;
    let (spin, spin_p90) = f.spin;
    let apply_fig = format!("median {}", fmt_time(apply));
    let mut rows = vec![
        Target::new(
            "apply round trip (1 in flight) / spin floor",
            apply_fig.clone(),
            format!(
                "shm spin ping-pong {:.3} µs (p90 {:.3})",
                spin * 1e6,
                spin_p90 * 1e6
            ),
            apply / spin,
            "<= 30x",
            apply / spin <= 30.0,
        ),
        Target::new(
            "apply round trip (1 in flight) / socketpair",
            apply_fig,
            format!("blocking socketpair ping-pong {}", fmt_time(f.socketpair)),
            apply / f.socketpair,
            "<= 0.25x",
            apply / f.socketpair <= 0.25,
        ),
        Target::new(
            "apply round trip: p90/median",
            format!("p90 {}", fmt_time(apply_p90)),
            format!("its own median {}", fmt_time(apply)),
            apply_p90 / apply,
            "<= 2",
            apply_p90 / apply <= 2.0,
        ),
    ];
    let (cs1, cs1_spread) = f.cs1;
    let (rayon, rayon_spread) = f.rayon;
    rows.push(Target::new(
        format!("map_chunked(id, 0..{}, 1) / rayon", pool_rows::CS1_RAYON_N),
        format!("{} (spread {cs1_spread:.2})", fmt_rate(cs1)),
        format!(
            "rayon scope.spawn, {} thr: {} ({rayon_spread:.2})",
            mproc::cpu_count(),
            fmt_rate(rayon)
        ),
        cs1 / rayon,
        ">= 0.35x",
        cs1 / rayon >= 0.35,
    ));
    let (ps, fork) = f.process;
    rows.push(Target::new(
        "Process spawn+join / fork+waitpid",
        fmt_time(ps),
        format!("fork+waitpid {} (pool_rows)", fmt_time(fork)),
        ps / fork,
        "<= 1.5x",
        ps / fork <= 1.5,
    ));
    for (n, rate) in f.auto {
        let name = format!("map x*x 0..{n}, auto chunks / Python");
        rows.push(match f.python {
            Some((py, py_n)) => Target::new(
                name,
                fmt_rate(rate),
                format!("Python Pool(2).map, n={py_n}: {}", fmt_rate(py)),
                rate / py,
                ">= 10x",
                rate / py >= 10.0,
            ),
            None => Target::unmeasured(name, ">= 10x", "python skipped (see above)"),
        });
    }
    let idle = f.idle;
    let share = idle.share();
    rows.push(Target::new(
        format!(
            "idle Pool(2), {:.1} s after a map: CPU",
            idle.wall.as_secs_f64()
        ),
        format!("{:.3}% of a core", share * 100.0),
        format!(
            "budget 1% (threads {}, {} children {})",
            fmt_time(secs(idle.own)),
            idle.child_count,
            fmt_time(secs(idle.children))
        ),
        share / 0.01,
        "<= 1% core",
        share <= 0.01,
    ));
    rows.extend(f.oversub.targets());
    rows.push(Target::unmeasured(
        "MPI pool round trip / raw MPI",
        "<= 2x",
        "examples/mpi_bench.rs (feature mpi)",
    ));
    rows
}

fn print_python_line(python: &Result<Python, String>) {
    match python {
        Ok(p) => {
            let shares: Vec<String> = p.foreign.iter().map(|(s, f)| format!("{s} {f}")).collect();
            println!(
                "python: --quick --only b,c,d,f ran in {:.1} s after the rest; its foreign CPU share per section: {}",
                p.wall,
                shares.join(", ")
            );
        }
        Err(reason) => println!("python: skipped ({reason})"),
    }
}
