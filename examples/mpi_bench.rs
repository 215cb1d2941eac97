//! Benchmark: task round trip and throughput of the MPI `Pool` beside raw rsmpi send/recv
//! between the same ranks of the same machine. Run by `.ci/mpi`:
//!
//! ```text
//! MPROC_MPI_NO_SERVE=1 mpirun -n 3 target/release/examples/mpi_bench   # raw rsmpi
//! mpirun -n 3 target/release/examples/mpi_bench                        # Pool::builder().mpi()
//! ```
//! Both print one line per figure; the raw one uses messages of the size of a task's frame
//! and the pool's window of two messages in flight per local worker.

use std::time::{Duration, Instant};

use mpi::traits::*;

const ROUND_TRIPS: usize = 5_000;
const TASKS: usize = 50_000;
const MAP_ITEMS: u64 = 1_000_000;
/// Bytes of an `apply(echo, u64)` task's entry: Run frame, job id and item count (measured: 73).
const MSG: usize = 73;
const TAG: i32 = 7;
const STOP: i32 = 8;

fn echo(x: u64) -> u64 {
    x
}

fn main() {
    if std::env::var_os(mproc::mpi::NO_SERVE_ENV).is_some() {
        raw();
    } else if let Err(e) = pool() {
        eprintln!("mpi_bench: {e}");
        std::process::exit(1);
    }
}

fn per_op(d: Duration, n: usize) -> f64 {
    d.as_secs_f64() * 1e6 / n as f64
}

/// The median, p90 and p99 of `times`, in microseconds.
fn spread(times: &mut [Duration]) -> String {
    times.sort_unstable();
    let at = |q: f64| times[((times.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e6;
    format!(
        "median {:.1} us, p90 {:.1} us, p99 {:.1} us",
        at(0.5),
        at(0.9),
        at(0.99)
    )
}

fn pool() -> mproc::Result<()> {
    let prefetch = std::env::var("MPI_BENCH_PREFETCH")
        .ok()
        .and_then(|s| s.parse().ok());
    let pool = mproc::Pool::builder()
        .mpi()
        .prefetch(prefetch.unwrap_or(2))
        .build()?;
    // An idle phase, so a script can check that waiting ranks do not burn CPU.
    if let Some(secs) = std::env::var("MPI_BENCH_IDLE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        std::thread::sleep(Duration::from_secs(secs));
    }
    for x in 0..200 {
        pool.apply(echo, x)?;
    }
    let t = Instant::now();
    let mut each = Vec::with_capacity(ROUND_TRIPS);
    for x in 0..ROUND_TRIPS as u64 {
        let one = Instant::now();
        assert_eq!(pool.apply(echo, x)?, x);
        each.push(one.elapsed());
    }
    println!(
        "pool round trip: {:.1} us ({})",
        per_op(t.elapsed(), ROUND_TRIPS),
        spread(&mut each)
    );

    // The floor a serving rank adds: the same task through a local pool on this machine.
    let local = mproc::Pool::new(2)?;
    for x in 0..200 {
        local.apply(echo, x)?;
    }
    let t = Instant::now();
    for x in 0..ROUND_TRIPS as u64 {
        assert_eq!(local.apply(echo, x)?, x);
    }
    println!(
        "local pool round trip: {:.1} us",
        per_op(t.elapsed(), ROUND_TRIPS)
    );
    let t = Instant::now();
    let pending: Vec<_> = (0..TASKS as u64)
        .map(|x| local.apply_async(echo, x))
        .collect();
    for p in pending {
        p.get()?;
    }
    let secs = t.elapsed().as_secs_f64();
    println!("local pool throughput: {:.0} tasks/s", TASKS as f64 / secs);
    drop(local);

    let t = Instant::now();
    let pending: Vec<_> = (0..TASKS as u64)
        .map(|x| pool.apply_async(echo, x))
        .collect();
    for p in pending {
        p.get()?;
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "pool throughput (prefetch {}): {:.0} tasks/s",
        prefetch.unwrap_or(2),
        TASKS as f64 / secs
    );

    let t = Instant::now();
    let out = pool.map(echo, 0..MAP_ITEMS)?;
    assert_eq!(out.len() as u64, MAP_ITEMS);
    let secs = t.elapsed().as_secs_f64();
    println!("pool map: {:.0} items/s", MAP_ITEMS as f64 / secs);
    Ok(())
}

fn raw() {
    let universe = mpi::initialize().expect("MPI initializes once");
    let world = universe.world();
    let size = world.size();
    if world.rank() != 0 {
        let msg = [0u8; MSG];
        loop {
            let (_, status) = world.any_process().receive_vec::<u8>();
            if status.tag() == STOP {
                return;
            }
            world.process_at_rank(0).send_with_tag(&msg[..], TAG);
        }
    }
    let msg = [0u8; MSG];
    let peer = world.process_at_rank(1);
    for _ in 0..200 {
        peer.send_with_tag(&msg[..], TAG);
        peer.receive_vec_with_tag::<u8>(TAG);
    }
    let t = Instant::now();
    let mut each = Vec::with_capacity(ROUND_TRIPS);
    for _ in 0..ROUND_TRIPS {
        let one = Instant::now();
        peer.send_with_tag(&msg[..], TAG);
        peer.receive_vec_with_tag::<u8>(TAG);
        each.push(one.elapsed());
    }
    println!(
        "raw round trip: {:.1} us ({})",
        per_op(t.elapsed(), ROUND_TRIPS),
        spread(&mut each)
    );

    // The pool's default window: two in flight per local worker of each serving rank.
    let window = 2 * mproc::cpu_count();
    let t = Instant::now();
    let mut sent = 0;
    for r in 1..size {
        for _ in 0..window.min(TASKS) {
            world.process_at_rank(r).send_with_tag(&msg[..], TAG);
            sent += 1;
        }
    }
    for _ in 0..TASKS {
        let (_, status) = world.any_process().receive_vec_with_tag::<u8>(TAG);
        if sent < TASKS {
            world
                .process_at_rank(status.source_rank())
                .send_with_tag(&msg[..], TAG);
            sent += 1;
        }
    }
    let secs = t.elapsed().as_secs_f64();
    println!("raw throughput: {:.0} msgs/s", TASKS as f64 / secs);
    for r in 1..size {
        world.process_at_rank(r).send_with_tag(&[0u8][..], STOP);
    }
}
