//! A tour of mproc: the classic Python `multiprocessing` introduction, in Rust.
//!
//! Run it with `cargo run --release --example tour`.

use std::time::{Duration, Instant};

use mproc::Process;

/// Python: `def worker(num): print(f"Worker {num} started"); time.sleep(...); print(...)`
fn worker(num: u32) {
    println!("  Worker {num} started (pid {})", std::process::id());
    std::thread::sleep(Duration::from_millis(100));
    println!("  Worker {num} finished");
}

fn square(n: u64) -> u64 {
    n * n
}

fn cube(n: u64) -> u64 {
    n * n * n
}

/// Each line is written whole: output from concurrent processes never mixes mid-line.
fn print_number(n: u32) -> u32 {
    println!("  Number {n} from process {}", std::process::id());
    std::process::id()
}

fn crash(_: ()) {
    std::process::abort()
}

fn main() -> mproc::Result<()> {
    let start = Instant::now();
    let mut started = 0;

    println!("1. One process, given an argument: Process(target=worker, args=(1,))");
    let mut p = Process::spawn(worker, 1)?;
    println!(
        "  started {} with pid {}, alive: {}",
        p.name(),
        p.pid(),
        p.is_alive()
    );
    p.join()?;
    started += 1;
    println!(
        "  joined; alive: {}, exit code: {}",
        p.is_alive(),
        p.exit_status().map_or(0, |s| s.exitcode())
    );

    println!("\n2. Two processes at once, and their results come back from join()");
    let mut p1 = Process::spawn(square, 5)?;
    let mut p2 = Process::spawn(cube, 5)?;
    let (sq, cu) = (p1.join()?, p2.join()?);
    started += 2;
    println!("  square of 5 = {sq}, cube of 5 = {cu}");

    println!("\n3. Four processes, each printing a different number with its pid");
    let mut procs = (0..4)
        .map(|n| Process::spawn(print_number, n))
        .collect::<mproc::Result<Vec<_>>>()?;
    let pids = procs
        .iter_mut()
        .map(|p| p.join())
        .collect::<mproc::Result<Vec<_>>>()?;
    started += 4;
    println!(
        "  (the pids the children reported match their handles: {})",
        pids.iter().zip(&procs).all(|(a, p)| *a == p.pid())
    );

    println!("\n4. A crash is data, not a dead program: a child calls abort()");
    let mut c = Process::spawn(crash, ())?;
    started += 1;
    match c.join() {
        Err(e) => println!(
            "  join() says: {e} (Python's exitcode {})",
            e.exit_status().map_or(0, |s| s.exitcode())
        ),
        Ok(()) => println!("  unexpectedly succeeded"),
    }

    println!(
        "\n{started} processes started, 1 crash survived, in {:.1?}",
        start.elapsed()
    );
    Ok(())
}
