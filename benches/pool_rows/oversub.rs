//! Oversubscription (issue #16): more runnable work than cores, with the pool's spin-then-park
//! waits on (the default) and off (`MPROC_SPIN=0`: every wait parks at once, as before the
//! waits spun), in the same run. Three workloads, each counted in trivial tasks per second:
//! - `Pool(4)` with 4 caller threads, each a loop of `apply(noop, i)` (4 callers and 4
//!   workers, all of them spinning waiters, on the machine's cores);
//! - `Pool(4)`, `map_chunked(noop, 0..MAP_N, 1)` from one caller;
//! - two `Pool(2)`s busy at once: two threads, each `map_chunked(noop, 0..TWO_N, 1)` on its own
//!   pool; the total rate.
//!
//! The switch is read once per process, and the fork server keeps the environment it started
//! with, so every measurement runs in a fresh copy of this bench (`CHILD_ENV` set), with
//! `MPROC_SPIN` removed or set to `0`. Each round runs one copy of each, alternating which goes
//! first; a copy warms its pools up, runs the three workloads in a rotated order, and prints
//! their rates. The rows report the median over rounds, and the ratio on / off.

use std::hint::black_box;
use std::process::{Command, Stdio};
use std::time::Instant;

use mproc::Pool;

use super::targets::Target;
use crate::common::BoxResult;
use crate::{fmt_rate, median_spread, secs};

/// Set (to the round number) in the fresh copies of this bench that measure one round.
pub const CHILD_ENV: &str = "MPROC_BENCH_OVERSUB";
/// The switch under test (`src/task/spin.rs`).
const SPIN_ENV: &str = "MPROC_SPIN";
/// Rounds; each runs one copy with spinning on and one with it off.
const ROUNDS: usize = 7;
/// Caller threads of the apply workload, and calls per thread.
const APPLY_THREADS: usize = 4;
const APPLY_CALLS: u64 = 2500;
/// Items of the `Pool(4)` chunksize-1 map, and of each of the two `Pool(2)` maps.
const MAP_N: u64 = 40_000;
const TWO_N: u64 = 20_000;

fn noop(x: u64) -> u64 {
    x
}

/// What a worker sees of the switch: the copy checks that it reached its workers.
fn spin_env(_: ()) -> Option<String> {
    std::env::var(SPIN_ENV).ok()
}

/// The three workloads, in tasks/s, as a copy measures them.
const WORKLOADS: usize = 3;

/// The rates of every round, with spinning on (`[0]`) and off (`[1]`), per workload.
pub struct Oversub {
    rates: [[Vec<f64>; WORKLOADS]; 2],
}

/// Runs the rounds, each in two fresh copies of this bench.
pub fn measure() -> BoxResult<Oversub> {
    let mut rates: [[Vec<f64>; WORKLOADS]; 2] = Default::default();
    for round in 0..ROUNDS {
        for k in 0..2 {
            let off = (round + k) % 2;
            let got = in_fresh_copy(round, off == 1)?;
            for (w, rate) in got.into_iter().enumerate() {
                rates[off][w].push(rate);
            }
        }
    }
    Ok(Oversub { rates })
}

/// One round's rates from a fresh copy of this bench, spinning off if `off`.
fn in_fresh_copy(round: usize, off: bool) -> BoxResult<[f64; WORKLOADS]> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.env(CHILD_ENV, round.to_string())
        .stdin(Stdio::null())
        .stderr(Stdio::inherit());
    if off {
        cmd.env(SPIN_ENV, "0");
    } else {
        cmd.env_remove(SPIN_ENV);
    }
    let out = cmd.output()?;
    if !out.status.success() {
        return Err(format!(
            "oversubscription copy (round {round}) ended with {}",
            out.status
        )
        .into());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let rates: Vec<f64> = text
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    rates
        .try_into()
        .map_err(|_| format!("oversubscription copy printed {text:?}").into())
}

/// In a fresh copy (`CHILD_ENV` set): warm up, run the workloads once each in an order
/// rotated by the round, and print their rates (tasks/s) on one line.
pub fn child() -> BoxResult<()> {
    let round: usize = std::env::var(CHILD_ENV)?.parse()?;
    let expect = std::env::var(SPIN_ENV).ok();
    let four = Pool::new(4)?;
    let two = [Pool::new(2)?, Pool::new(2)?];
    for pool in [&four, &two[0], &two[1]] {
        assert_eq!(
            pool.apply(spin_env, ())?,
            expect,
            "MPROC_SPIN reaches the workers"
        );
        black_box(pool.map_chunked(noop, 0..1000u64, 1)?);
    }
    apply_loops(&four, 200)?;
    let mut rates = [0.0; WORKLOADS];
    for k in 0..WORKLOADS {
        let w = (round + k) % WORKLOADS;
        let t = Instant::now();
        let tasks = match w {
            0 => apply_loops(&four, APPLY_CALLS)?,
            1 => map_cs1(&four, MAP_N)?,
            _ => two_pools(&two)?,
        };
        rates[w] = tasks as f64 / secs(t.elapsed());
    }
    let line: Vec<String> = rates.iter().map(f64::to_string).collect();
    println!("{}", line.join(" "));
    Ok(())
}

/// `APPLY_THREADS` threads, each `calls` `apply`s in a loop on `pool`; the tasks run.
fn apply_loops(pool: &Pool, calls: u64) -> mproc::Result<u64> {
    std::thread::scope(|s| {
        let threads: Vec<_> = (0..APPLY_THREADS)
            .map(|_| {
                s.spawn(move || -> mproc::Result<()> {
                    for i in 0..calls {
                        assert_eq!(pool.apply(noop, black_box(i))?, i);
                    }
                    Ok(())
                })
            })
            .collect();
        for t in threads {
            t.join().expect("an apply thread panicked")?;
        }
        Ok(APPLY_THREADS as u64 * calls)
    })
}

/// `map_chunked(noop, 0..n, 1)` on `pool`; the tasks run.
fn map_cs1(pool: &Pool, n: u64) -> mproc::Result<u64> {
    let out = pool.map_chunked(noop, 0..n, 1)?;
    assert_eq!(out.len() as u64, n);
    Ok(n)
}

/// Both pools busy at once, each with its own chunksize-1 map; the tasks run.
fn two_pools(pools: &[Pool; 2]) -> mproc::Result<u64> {
    std::thread::scope(|s| {
        let maps: Vec<_> = pools
            .iter()
            .map(|p| s.spawn(move || map_cs1(p, TWO_N)))
            .collect();
        let mut tasks = 0;
        for m in maps {
            tasks += m.join().expect("a map thread panicked")?;
        }
        Ok(tasks)
    })
}

impl Oversub {
    /// One target row per workload: spinning on against off, ratio on / off.
    pub fn targets(&self) -> Vec<Target> {
        let names = [
            format!("oversub: Pool(4), {APPLY_THREADS} threads x {APPLY_CALLS} apply"),
            format!("oversub: Pool(4), map_chunked {MAP_N}, cs 1"),
            format!("oversub: 2 Pool(2)s busy, 2 x {TWO_N}, cs 1"),
        ];
        names
            .into_iter()
            .enumerate()
            .map(|(w, name)| {
                let (on, on_spread) = median_spread(&self.rates[0][w]);
                let (off, off_spread) = median_spread(&self.rates[1][w]);
                let r = on / off;
                Target::new(
                    name,
                    format!("{} (spread {on_spread:.2})", fmt_rate(on)),
                    format!("MPROC_SPIN=0: {} ({off_spread:.2})", fmt_rate(off)),
                    r,
                    ">= 0.9x",
                    r >= 0.9,
                )
            })
            .collect()
    }
}

/// What the oversubscription rows compare, printed under the table.
pub fn legend() -> String {
    format!(
        "oversub rows: {} CPUs; figure = spinning on (default), peer = MPROC_SPIN=0 (every wait parks at once), \
         each in fresh processes, median of {ROUNDS} interleaved rounds; >= 0.9x = no worse, within this VM's noise",
        mproc::cpu_count()
    )
}
