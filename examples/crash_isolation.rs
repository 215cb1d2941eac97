//! A task that crashes its process fails alone: the pool replaces the worker and every other
//! task completes (Python's `Pool` hangs forever here).
//!
//! Run it with `cargo run --release --example crash_isolation`.

use mproc::{ErrorKind, Pool};

fn fragile(n: u32) -> u32 {
    match n {
        3 => std::process::abort(),         // SIGABRT
        5 => panic!("five is not allowed"), // a panic: the worker survives
        _ => n * 10,
    }
}

fn main() -> mproc::Result<()> {
    let pool = Pool::new(2)?;
    for (n, r) in (1..=6).zip(pool.imap(fragile, 1..=6)) {
        match r {
            Ok(v) => println!("task {n}: {v}"),
            Err(e) if e.kind() == ErrorKind::WorkerDied => {
                let how = e.exit_status().map(|s| s.to_string()).unwrap_or_default();
                println!("task {n}: its worker died ({how}); the pool goes on")
            }
            Err(e) => println!("task {n}: {e}"),
        }
    }
    // Re-running a task lost to a dead worker: max_retries.
    let retrying = Pool::builder().processes(2).max_retries(1).build()?;
    println!("{:?}", retrying.map(|n: u32| n + 1, 1..=4)?);
    Ok(())
}
