//! Awaiting pool results inside tokio: an `AsyncResult` is a `Future`, woken by the pool's
//! supervisor, so awaiting it never blocks a runtime thread (other tasks keep running).
//!
//! Run it with `cargo run --release --example tokio_await`.

use std::time::Duration;

fn slow_square(x: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(200));
    x * x
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> mproc::Result<()> {
    let pool = mproc::Pool::new(2)?;
    let a = pool.apply_async(slow_square, 3);
    let b = pool.map_async(slow_square, vec![1, 2, 4]);
    // One runtime thread: the ticker runs while both results are pending.
    let ticker = tokio::spawn(async {
        let mut ticks = 0;
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            ticks += 1;
        }
        ticks
    });
    let (a, b) = (a.await?, b.await?);
    println!("apply_async: {a}, map_async: {b:?}");
    let ticks = ticker.await.expect("ticker");
    println!("the runtime's only thread ticked {ticks} times while the tasks ran");
    assert_eq!((a, b, ticks), (9, vec![1, 4, 16], 3));
    Ok(())
}
