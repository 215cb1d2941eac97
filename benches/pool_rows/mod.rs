//! The rows of the performance issue that `benches/pool.rs` did not measure before, each beside
//! its floor in the same run:
//! - Process start+join (default start method) vs raw `fork` + `waitpid`;
//! - 100 MB argument there and back (`apply(echo, payload)`) vs an in-process copy of it;
//! - linearity: 10x more tasks (chunksize 1) and 10x more items (`imap`) against 10x the time;
//! - `imap` over 10M items: the parent's peak RSS growth against that over 1M items;
//! - for issue #16: chunksize-1 tasks against rayon's `scope.spawn` on the machine's cores, the
//!   shared-memory spin floor (`spin`), an idle pool's CPU cost (`idle`), oversubscription
//!   with spinning on and off (`oversub`) and the target table (`targets`).

pub mod idle;
pub mod oversub;
pub mod spin;
pub mod targets;

use std::hint::black_box;
use std::time::Instant;

use mproc::{Array, Pool, Process};
use serde_bytes::ByteBuf;

use super::common::{BoxResult, fork_waitpid};
use super::{Row, fmt_time, median_p90, median_spread, secs};

/// Process start+join: rounds, and starts per series per round.
const PS_ROUNDS: usize = 5;
const PS_ITERS: usize = 100;
/// The large payload, and rounds (each runs every series once).
pub const BIG: usize = 100 << 20;
const BIG_ROUNDS: usize = 5;
/// Linearity: tasks (chunksize 1) and `imap` items for the small run; the large is 10x.
const LIN_TASKS: u64 = 10_000;
const IMAP_ITEMS: u64 = 1_000_000;
const IMAP_CHUNK: usize = 10_000;
const LIN_RUNS: usize = 5;
/// Chunksize-1 tasks against rayon: items, and runs of each.
pub const CS1_RAYON_N: u64 = 200_000;
const CS1_RAYON_RUNS: usize = 5;

fn noop(x: u64) -> u64 {
    x
}

fn square(x: u64) -> u64 {
    x.wrapping_mul(x)
}

fn echo_vec(b: Vec<u8>) -> Vec<u8> {
    b
}

fn echo_buf(b: ByteBuf) -> ByteBuf {
    b
}

fn len_buf(b: ByteBuf) -> usize {
    b.len()
}

/// The zero-copy way: the worker transforms the shared bytes in place (one pass, as a copy is).
fn flip_shared(a: Array<u8>) -> usize {
    let Ok(mut g) = a.lock() else { return 0 };
    for b in g.iter_mut() {
        *b ^= 0xff;
    }
    g.len()
}

/// Process start+join with the default start method, interleaved with fork+waitpid. Run it
/// while the bench process is still small: fork's cost grows with the parent's memory.
/// Returns the medians (start+join, fork+waitpid), in seconds.
pub fn process_start(rows: &mut Vec<Row>) -> BoxResult<(f64, f64)> {
    let start_join = || -> BoxResult<()> {
        black_box(Process::spawn(noop, black_box(1u64))?.join()?);
        Ok(())
    };
    start_join()?;
    fork_waitpid()?;
    let (mut ours, mut floor) = (Vec::new(), Vec::new());
    for round in 0..PS_ROUNDS {
        for k in 0..2 {
            for _ in 0..PS_ITERS {
                let t = Instant::now();
                if (round + k) % 2 == 0 {
                    start_join()?;
                    ours.push(secs(t.elapsed()));
                } else {
                    fork_waitpid()?;
                    floor.push(secs(t.elapsed()));
                }
            }
        }
    }
    let (med, p90) = median_p90(&ours);
    let (fmed, _) = median_p90(&floor);
    rows.push(
        Row::new("Process start+join (default method)", fmt_time(med))
            .spread(p90 / med)
            .peer("fork+waitpid", fmt_time(fmed), med / fmed)
            .target("<=1.5x floor", med / fmed <= 1.5),
    );
    Ok((med, fmed))
}

/// Throughput of trivial tasks: `pool.map_chunked(noop, 0..CS1_RAYON_N, 1)` against as many
/// empty `rayon::scope` spawns on a rayon pool with one thread per core, runs interleaved
/// (alternating which goes first). Returns the median rates (mproc, rayon) in tasks/s and
/// their spreads (slowest/fastest run).
pub fn cs1_vs_rayon(pool: &Pool) -> BoxResult<[(f64, f64); 2]> {
    let rayon_pool = rayon::ThreadPoolBuilder::new()
        .num_threads(mproc::cpu_count())
        .build()?;
    let mproc_run = || -> BoxResult<f64> {
        let t = Instant::now();
        let out = pool.map_chunked(noop, 0..CS1_RAYON_N, 1)?;
        let wall = secs(t.elapsed());
        assert_eq!(out.len() as u64, CS1_RAYON_N);
        Ok(wall)
    };
    let rayon_run = || -> f64 {
        let t = Instant::now();
        rayon_pool.install(|| {
            rayon::scope(|s| {
                for i in 0..CS1_RAYON_N {
                    s.spawn(move |_| {
                        black_box(i);
                    });
                }
            });
        });
        secs(t.elapsed())
    };
    mproc_run()?;
    rayon_run();
    let mut w: [Vec<f64>; 2] = Default::default();
    for run in 0..CS1_RAYON_RUNS {
        for k in 0..2 {
            if (run + k) % 2 == 0 {
                w[0].push(mproc_run()?);
            } else {
                w[1].push(rayon_run());
            }
        }
    }
    Ok(w.map(|walls| {
        let (wall, spread) = median_spread(&walls);
        (CS1_RAYON_N as f64 / wall, spread)
    }))
}

fn gbps(bytes: usize, s: f64) -> String {
    format!("{:.2} GB/s", bytes as f64 / s / 1e9)
}

/// 100 MB there and back through `apply`, as `Vec<u8>` and as `serde_bytes::ByteBuf`, against
/// an in-process copy of the same bytes into fresh memory (Python's floor: `bytearray(bytes)`).
/// Rates count the bytes moved both ways (2 x payload), as Python's baseline does.
/// Returns the ByteBuf rate (bytes/s) for the comparison with Python.
pub fn big_payload(pool: &Pool, rows: &mut Vec<Row>) -> BoxResult<f64> {
    let data: Vec<u8> = (0..BIG).map(|i| (i * 7 + i / 4096) as u8).collect();
    let buf = ByteBuf::from(data.clone());
    let shared = Array::<u8>::new(BIG)?;
    let mut s: [Vec<f64>; 5] = Default::default();
    for round in 0..BIG_ROUNDS + 1 {
        for k in 0..5 {
            let which = (round + k) % 5;
            // The argument is cloned before the clock starts: `apply` takes it by value.
            let (arg_vec, arg_buf) = match which {
                1 => (Some(data.clone()), None),
                2 | 3 => (None, Some(buf.clone())),
                _ => (None, None),
            };
            let t = Instant::now();
            match (arg_vec, arg_buf) {
                (Some(v), _) => assert_eq!(pool.apply(echo_vec, v)?.len(), BIG),
                (_, Some(b)) if which == 2 => assert_eq!(pool.apply(echo_buf, b)?.len(), BIG),
                (_, Some(b)) => assert_eq!(pool.apply(len_buf, b)?, BIG),
                _ if which == 4 => {
                    // In: one copy into the shared array; back: the worker's in-place pass,
                    // seen by this process without a copy.
                    shared.lock()?.copy_from_slice(&data);
                    assert_eq!(pool.apply(flip_shared, shared.clone())?, BIG);
                    assert_eq!(shared.lock()?[1], !data[1]);
                }
                _ => drop(black_box(black_box(&data).clone())),
            }
            if round > 0 {
                s[which].push(secs(t.elapsed()));
            }
        }
    }
    let (copy, _) = median_spread(&s[0]);
    let floor = BIG as f64 / copy;
    // A row for series `i`, which moved `bytes` in all, beside the in-process copy.
    let row = |name: &str, i: usize, bytes: usize| {
        let (wall, spread) = median_spread(&s[i]);
        let rate = bytes as f64 / wall;
        let r = Row::new(name, gbps(bytes, wall)).spread(spread).peer(
            "in-process copy (fresh memory)",
            gbps(BIG, copy),
            rate / floor,
        );
        (r, rate)
    };
    let mut buf_rate = 0.0;
    for (i, name) in [(1, "Vec<u8>"), (2, "ByteBuf")] {
        let (r, rate) = row(&format!("100 MB apply there+back, {name}"), i, 2 * BIG);
        buf_rate = rate;
        rows.push(r.target(">=0.5x memcpy", rate / floor >= 0.5));
    }
    // One way: the argument's direction alone (it travels in a memfd; the result, a number,
    // in the frame).
    let (r, rate) = row("100 MB apply to worker only, ByteBuf", 3, BIG);
    rows.push(r.target(">=0.5x memcpy", rate / floor >= 0.5));
    // The zero-copy alternative for large data: a shared `Array` (no target of its own).
    let (r, _) = row(
        "100 MB in a shared Array, worker flips in place",
        4,
        2 * BIG,
    );
    rows.push(r);
    Ok(buf_rate)
}

/// Current and peak resident set of this process, in bytes (`/proc/self/status`).
fn rss() -> Option<(u64, u64)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |key: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(key))?;
        let kb: u64 = line[key.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kb * 1024)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// Resets the peak RSS to the current RSS (Linux: `echo 5 > /proc/self/clear_refs`).
fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// `imap` over `n` items (chunks of `IMAP_CHUNK`), consumed as they come: wall time and peak
/// RSS growth of this process while it ran (if the kernel lets us reset the peak).
fn imap_run(pool: &Pool, n: u64) -> BoxResult<(f64, Option<u64>)> {
    let reset = reset_peak();
    let before = rss();
    let t = Instant::now();
    let mut sum = 0u64;
    // The kernel updates the peak lazily: sample the current RSS too, every 2^20 items.
    let mut sampled = 0;
    for (i, r) in pool.imap(square, 0..n).enumerate() {
        sum = sum.wrapping_add(r?);
        if i % (1 << 20) == 0 {
            sampled = rss().map_or(sampled, |(now, _)| now.max(sampled));
        }
    }
    let wall = secs(t.elapsed());
    black_box(sum);
    let growth = match (reset, before, rss()) {
        (true, Some((rss0, _)), Some((_, peak))) => Some(peak.max(sampled).saturating_sub(rss0)),
        _ => None,
    };
    Ok((wall, growth))
}

/// Linearity of chunksize-1 tasks and of `imap` items, and `imap`'s memory over 10M items.
pub fn linearity(rows: &mut Vec<Row>) -> BoxResult<()> {
    let pool = Pool::builder().processes(2).chunksize(IMAP_CHUNK).build()?;
    black_box(pool.map_chunked(square, 0..1000u64, 1)?);
    let mut t: [Vec<f64>; 2] = Default::default();
    for run in 0..LIN_RUNS {
        for k in 0..2 {
            let i = (run + k) % 2;
            let n = LIN_TASKS * if i == 0 { 1 } else { 10 };
            let s = Instant::now();
            assert_eq!(pool.map_chunked(square, 0..n, 1)?.len() as u64, n);
            t[i].push(secs(s.elapsed()));
        }
    }
    let (small, _) = median_spread(&t[0]);
    let (large, spread) = median_spread(&t[1]);
    let r = large / (10.0 * small);
    rows.push(
        Row::new(
            format!("{} tasks, chunksize 1 (wall)", 10 * LIN_TASKS),
            fmt_time(large),
        )
        .spread(spread)
        .peer(format!("10x {LIN_TASKS} tasks"), fmt_time(10.0 * small), r)
        .target("~1x (<=1.2x): linear", r <= 1.2),
    );

    let mut w: [Vec<f64>; 2] = Default::default();
    let mut g: [Vec<u64>; 2] = Default::default();
    imap_run(&pool, IMAP_ITEMS / 10)?;
    for run in 0..LIN_RUNS {
        for k in 0..2 {
            let i = (run + k) % 2;
            let n = IMAP_ITEMS * if i == 0 { 1 } else { 10 };
            let (wall, growth) = imap_run(&pool, n)?;
            w[i].push(wall);
            g[i].extend(growth);
        }
    }
    let (small, _) = median_spread(&w[0]);
    let (large, spread) = median_spread(&w[1]);
    let r = large / (10.0 * small);
    rows.push(
        Row::new(
            format!("imap 0..{}, chunk {IMAP_CHUNK} (wall)", 10 * IMAP_ITEMS),
            fmt_time(large),
        )
        .spread(spread)
        .peer(
            format!("10x imap 0..{IMAP_ITEMS}"),
            fmt_time(10.0 * small),
            r,
        )
        .target("~1x (<=1.2x): linear", r <= 1.2),
    );
    let mib = |b: u64| format!("{:.1} MiB", b as f64 / (1 << 20) as f64);
    match (g[0].iter().max(), g[1].iter().max()) {
        (Some(&small), Some(&large)) => {
            // Flat: the 10M run grows the peak by no more than the 1M run plus a little
            // allocator slack (4 MiB).
            let flat = large <= small + (4 << 20);
            rows.push(
                Row::new(
                    format!("imap 0..{}: peak RSS growth", 10 * IMAP_ITEMS),
                    mib(large),
                )
                .peer(
                    format!("imap 0..{IMAP_ITEMS}: peak RSS growth"),
                    mib(small),
                    large as f64 / small.max(1) as f64,
                )
                .target("flat (<= 1M's + 4 MiB)", flat),
            );
        }
        _ => rows.push(Row::new(
            "imap peak RSS",
            "skipped (cannot reset VmHWM)".into(),
        )),
    }
    pool.close();
    pool.join()?;
    Ok(())
}
