//! Workers fill one shared `Array` in place, and a `Value` counts them (Python's
//! `Array('d', 8)` and `Value('i', 0)` with their locks).
//!
//! Run it with `cargo run --release --example shared_array`.

use mproc::{Array, Pool, Value};

/// Writes `i * i` into slot `i` of the shared array: no result travels back.
fn fill((arr, done, i): (Array<f64>, Value<u32>, usize)) {
    arr.lock().expect("lock")[i] = (i * i) as f64;
    *done.lock().expect("lock") += 1;
}

fn main() -> mproc::Result<()> {
    let arr = Array::<f64>::new(8)?;
    let done = Value::new(0u32)?;
    let pool = Pool::new(2)?;
    let args: Vec<_> = (0..8).map(|i| (arr.clone(), done.clone(), i)).collect();
    pool.map(fill, args)?;
    let squares = arr.to_vec()?; // read straight from the shared memory the workers wrote
    println!("{squares:?}, written by {} tasks", done.get()?);
    assert_eq!(squares, [0.0, 1.0, 4.0, 9.0, 16.0, 25.0, 36.0, 49.0]);
    Ok(())
}
