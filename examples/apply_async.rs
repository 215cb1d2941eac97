//! `apply_async` handles collected with `.get()` (Python's
//! `results = [pool.apply_async(cube, (x,)) for x in range(1, 7)]; [r.get() for r in results]`).
//!
//! Run it with `cargo run --release --example apply_async`.

use std::time::Duration;

use mproc::Pool;

fn cube(x: u64) -> u64 {
    x * x * x
}

fn main() -> mproc::Result<()> {
    let pool = Pool::new(2)?;
    let mut handles: Vec<_> = (1..=6).map(|x| pool.apply_async(cube, x)).collect();
    let cubes = handles
        .iter_mut()
        .map(|h| h.get_timeout(Duration::from_secs(30)))
        .collect::<mproc::Result<Vec<u64>>>()?;
    println!("{cubes:?}");
    assert_eq!(cubes, [1, 8, 27, 64, 125, 216]);
    Ok(())
}
