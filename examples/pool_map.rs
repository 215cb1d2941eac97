//! `Pool.map` (Python's `with Pool(4) as p: p.map(square, range(1, 9))`).
//!
//! Run it with `cargo run --release --example pool_map`.

use mproc::Pool;

fn square(x: u64) -> u64 {
    x * x
}

fn main() -> mproc::Result<()> {
    let pool = Pool::new(4)?;
    let squares = pool.map(square, 1..=8)?;
    println!("{squares:?}");
    assert_eq!(squares, [1, 4, 9, 16, 25, 36, 49, 64]);
    pool.close();
    pool.join()?;
    Ok(())
}
