//! A tour of mproc: the classic Python `multiprocessing` introduction, in Rust.
//!
//! Run it with `cargo run --release --example tour`.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use mproc::{AsyncResult, Pool, Process, Stdio};

/// Python: `def worker(num): print(f"Worker {num} started"); time.sleep(...); print(...)`.
/// Returns its pid, so the caller can see which process ran it.
fn worker(num: u32) -> u32 {
    println!("  Worker {num} started (pid {})", std::process::id());
    std::thread::sleep(Duration::from_millis(100));
    println!("  Worker {num} finished");
    std::process::id()
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

/// A task with a fatal bug on one input: the whole worker process dies, not just the task.
fn fragile(n: u64) -> u64 {
    if n == 3 {
        std::process::abort();
    }
    n * n
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

    let mut crashes = 1;
    let mut pools = 0;
    let mut tasks = 0;

    println!("\n5. A pool of four workers: Pool(processes=4), then pool.map(worker, range(4))");
    println!("   (their output relayed line by line, prefixed with each worker's name and pid)");
    let pool = Pool::builder()
        .processes(4)
        .stdout(Stdio::Prefixed)
        .build()?;
    pools += 1;
    let t = Instant::now();
    let pids = pool.map(worker, 0..4)?; // one result per item, in input order
    tasks += pids.len();
    let distinct: BTreeSet<_> = pids.iter().collect();
    println!(
        "  4 tasks of 100 ms each took {:.0?}: {} worker processes ran them at once",
        t.elapsed(),
        distinct.len()
    );

    println!("\n6. Squares of 1..8: print(pool.map(square, range(1, 9)))");
    let squares = pool.map(square, 1..=8)?;
    tasks += squares.len();
    println!("  {squares:?}");

    println!("\n7. apply_async handles, collected with .get(); then close() and join()");
    let handles: Vec<AsyncResult<u64>> = (1..=5).map(|n| pool.apply_async(cube, n)).collect();
    let cubes = handles
        .into_iter()
        .map(AsyncResult::get)
        .collect::<mproc::Result<Vec<_>>>()?;
    tasks += cubes.len();
    println!("  cubes of 1..5 = {cubes:?}");
    pool.close(); // no more tasks
    pool.join()?; // wait for the workers to finish and exit
    println!("  closed and joined");

    println!("\n8. with Pool(5) as p: print(p.map(square, [1, 2, 3]))");
    {
        let p = Pool::new(5)?;
        pools += 1;
        let v = p.map(square, [1, 2, 3])?;
        tasks += v.len();
        println!("  {v:?}");
    } // `p` is dropped here: drop terminates the pool, just as leaving Python's with-block does
    println!("  the block ended: its pool was terminated and its workers reaped");

    println!(
        "\n9. A worker crashes mid-map: fragile(3) calls abort() (Python's Pool hangs forever)"
    );
    let pool = Pool::new(2)?;
    pools += 1;
    let mut ok = Vec::new();
    for r in pool.imap(fragile, 1..=6) {
        tasks += 1;
        match r {
            Ok(v) => ok.push(v),
            Err(e) => {
                crashes += 1;
                // The error names its input (counted from 0) and the worker that ran it.
                println!("  {e}");
            }
        }
    }
    println!("  the other items completed: {ok:?}");
    println!(
        "  the pool still works (its dead worker was replaced): apply(square, 12) = {}",
        pool.apply(square, 12)?
    );
    tasks += 1;

    println!(
        "\n{started} processes and {pools} pools started, {tasks} pool tasks run, \
         {crashes} crashes survived, in {:.1?}",
        start.elapsed()
    );
    Ok(())
}
