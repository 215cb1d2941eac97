//! `imap` with a progress bar (rate, ETA, failures) — build with `--features progress`:
//! `cargo run --release --features progress --example imap_progress`. The bar is drawn on
//! stderr only when it is a terminal.

use std::time::Duration;

use mproc::{Pool, ProgressExt};

fn slow_square(x: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(5));
    if x == 13 {
        panic!("unlucky");
    }
    x * x
}

fn main() -> mproc::Result<()> {
    let pool = Pool::new(4)?;
    let (mut ok, mut failed) = (0, 0);
    for r in pool.imap(slow_square, 0..400).progress() {
        match r {
            Ok(_) => ok += 1,
            Err(_) => failed += 1,
        }
    }
    println!("{ok} tasks done, {failed} failed");
    assert_eq!((ok, failed), (399, 1));
    Ok(())
}
