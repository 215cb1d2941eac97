//! Workers' output: relayed line by line with a prefix, or captured and returned with the
//! result. (Python's workers print into one stream and mix mid-line: "Worker 0 startedWorker 2
//! started".)
//!
//! Run it with `cargo run --release --example output`.

use mproc::{Pool, Stdio};

/// Prints a line in three pieces, as a progress report written bit by bit would.
fn report(n: u32) -> u32 {
    use std::io::Write;
    print!("task {n}: ");
    let _ = std::io::stdout().flush();
    print!("working... ");
    let _ = std::io::stdout().flush();
    println!("done");
    n * n
}

fn main() -> mproc::Result<()> {
    println!("1. Stdio::Prefixed: each worker line arrives whole, with its name and pid");
    let pool = Pool::builder()
        .processes(4)
        .stdout(Stdio::Prefixed)
        .build()?;
    let squares = pool.map_chunked(report, 0..8, 1)?;
    // Every line the tasks printed is out before `map` returns.
    println!("   squares: {squares:?}");

    println!("\n2. apply_captured: a task's output comes back with its result");
    let c = pool.apply_captured(report, 12)?;
    println!("   value {} and stdout {:?}", c.value, c.stdout_text());
    assert_eq!(c.value, 144);
    assert_eq!(c.stdout_text(), "task 12: working... done\n");

    println!("\n3. map_captured: one capture per item, in input order");
    for c in pool.map_captured(report, 1..=3)? {
        print!("   {} <- {}", c.value, c.stdout_text());
    }
    Ok(())
}
