//! Cost of starting and joining one process, per start method, against two OS floors.
//!
//! Series (all in one run):
//! - floor A: `fork` + `waitpid` of a child that calls `_exit(0)` at once: the least any
//!   process start can cost on this machine;
//! - floor B: `Command::new("/bin/true").status()`: fork + exec + dynamic loader + wait, the
//!   least an exec-based start (`StartMethod::Spawn`) can cost;
//! - mproc: `Process::builder().start_method(m).spawn(noop, 0u64)?.join()?` for every
//!   `StartMethod::all()`, after one untimed warm-up each;
//! - the first use of the fork server (it is exec'd on first use), measured once, first thing,
//!   before anything else touches mproc.
//!
//! Absolute times on a shared, noisy 2-core machine swing by 2x from one minute to the next,
//! so the figures that matter are the *ratios* to floor A (and, for Spawn, to floor B). To
//! make noise hit every series alike, the series are interleaved: `ROUNDS` rounds, each
//! running every series `ITERS` times (in a rotated order), and each series reports the
//! median and p90 over all its samples.
//!
//! Target (issue #16): the default start method (`ForkServer`) start+join costs at most 1.5x
//! fork+waitpid.
//!
//! Run with `cargo bench --bench process`.

mod common;
use common::{BoxResult, fork_waitpid};

use std::hint::black_box;
use std::time::{Duration, Instant};

use mproc::{Process, StartMethod};

const ROUNDS: usize = 5;
const ITERS: usize = 400;
const TARGET_RATIO: f64 = 1.5;

fn noop(x: u64) -> u64 {
    x
}

/// Floor B: exec `/bin/true` and wait for it.
fn exec_true() -> BoxResult<()> {
    let status = std::process::Command::new("/bin/true").status()?;
    if !status.success() {
        return Err(format!("/bin/true failed: {status}").into());
    }
    Ok(())
}

/// One mproc start + join with method `m`.
fn mproc_start_join(m: StartMethod) -> BoxResult<()> {
    let out = Process::builder()
        .start_method(m)
        .spawn(noop, black_box(0u64))?
        .join()?;
    black_box(out);
    Ok(())
}

struct Series {
    name: String,
    run: Box<dyn Fn() -> BoxResult<()>>,
    method: Option<StartMethod>,
    samples: Vec<Duration>,
}

impl Series {
    fn new(
        name: impl Into<String>,
        method: Option<StartMethod>,
        run: impl Fn() -> BoxResult<()> + 'static,
    ) -> Series {
        Series {
            name: name.into(),
            run: Box::new(run),
            method,
            samples: Vec::with_capacity(ROUNDS * ITERS),
        }
    }
}

/// Median and p90 of `samples`, in microseconds.
fn stats(samples: &[Duration]) -> (f64, f64) {
    let mut us: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e6).collect();
    us.sort_by(f64::total_cmp);
    // Nearest rank: the smallest sample with at least `pct`% of samples at or below it.
    let rank = |pct: usize| us[(us.len() * pct).div_ceil(100).clamp(1, us.len()) - 1];
    (rank(50), rank(90))
}

fn main() -> BoxResult<()> {
    let methods = StartMethod::all();
    let has_server = methods.contains(&StartMethod::ForkServer);

    // First use of the fork server, in a fresh state: nothing has touched mproc yet (so this
    // also includes starting mproc's internal spawner thread, a few tens of µs).
    let first_use = if has_server {
        let t = Instant::now();
        mproc_start_join(StartMethod::ForkServer)?;
        Some(t.elapsed())
    } else {
        None
    };

    let mut series = vec![
        Series::new("floor A: fork+waitpid", None, fork_waitpid),
        Series::new("floor B: exec /bin/true", None, exec_true),
    ];
    for &m in methods {
        series.push(Series::new(
            format!("mproc {m:?} start+join"),
            Some(m),
            move || mproc_start_join(m),
        ));
    }

    // Untimed warm-up of every series (for ForkServer, the server is already running).
    for s in &series {
        (s.run)()?;
    }

    let started = Instant::now();
    let n = series.len();
    for round in 0..ROUNDS {
        for k in 0..n {
            let s = &mut series[(round + k) % n];
            for _ in 0..ITERS {
                let t = Instant::now();
                (s.run)()?;
                s.samples.push(t.elapsed());
            }
        }
    }
    let elapsed = started.elapsed();

    let (floor_a, _) = stats(&series[0].samples);
    let (floor_b, _) = stats(&series[1].samples);
    println!(
        "process start+join: {ROUNDS} rounds x {ITERS} iterations per series, interleaved ({:.1} s)",
        elapsed.as_secs_f64()
    );
    println!(
        "{:<40} {:>10} {:>10} {:>13} {:>13}",
        "series", "median µs", "p90 µs", "vs fork+wait", "vs exec true"
    );
    let mut server_ratio = None;
    for s in &series {
        let (median, p90) = stats(&s.samples);
        let ratio_a = median / floor_a;
        let vs_b = if s.method == Some(StartMethod::Spawn) {
            format!("{:.2}x", median / floor_b)
        } else {
            String::new()
        };
        println!(
            "{:<40} {median:>10.1} {p90:>10.1} {:>13} {vs_b:>13}",
            s.name,
            format!("{ratio_a:.2}x")
        );
        if s.method == Some(StartMethod::ForkServer) {
            server_ratio = Some(ratio_a);
        }
    }
    if let Some(first) = first_use {
        let us = first.as_secs_f64() * 1e6;
        let ratio_a = us / floor_a;
        println!(
            "{:<40} {us:>10.1} {:>10} {:>13}",
            "mproc ForkServer first use (1 sample)",
            "-",
            format!("{ratio_a:.2}x")
        );
    }

    let default = StartMethod::default();
    let default_note = if default == StartMethod::ForkServer {
        String::new()
    } else {
        format!(" (note: the default here is {default:?}, e.g. via MPROC_START_METHOD)")
    };
    match server_ratio {
        Some(r) => println!(
            "target: default start method (ForkServer) start+join <= {TARGET_RATIO}x fork+waitpid: {r:.2}x -> {}{default_note}",
            if r <= TARGET_RATIO { "MET" } else { "NOT MET" }
        ),
        None => println!(
            "target: default start method (ForkServer) start+join <= {TARGET_RATIO}x fork+waitpid: no fork server on this platform"
        ),
    }
    Ok(())
}
