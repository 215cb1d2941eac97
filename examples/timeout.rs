//! Per-task timeouts: a runaway task is killed and fails with `TimedOut`; the others finish
//! (threads cannot be cancelled; processes can).
//!
//! Run it with `cargo run --release --example timeout`.

use std::time::Duration;

use mproc::Pool;

fn maybe_forever(n: u64) -> u64 {
    if n == 2 {
        loop {
            std::hint::spin_loop(); // never returns
        }
    }
    n * n
}

fn main() -> mproc::Result<()> {
    let pool = Pool::builder()
        .processes(2)
        .task_timeout(Duration::from_millis(500))
        .build()?;
    for (n, r) in (1..=4).zip(pool.imap(maybe_forever, 1..=4)) {
        match r {
            Ok(v) => println!("task {n}: {v}"),
            Err(e) if e.is_timeout() => println!("task {n}: killed after 500 ms"),
            Err(e) => return Err(e),
        }
    }
    // Waiting with a deadline on one result.
    let mut h = pool.apply_async(maybe_forever, 3);
    println!("apply_async: {}", h.get_timeout(Duration::from_secs(30))?);
    Ok(())
}
