//! Per-worker state: an expensive "model" built once in each worker, then used by every task
//! that worker runs, without a global.
//!
//! Python's idiom is a global set by the pool's initializer:
//!
//! ```python
//! model = None
//! def init(path):
//!     global model
//!     model = load(path)
//! def predict(x):
//!     return model.score(x)
//! with Pool(4, initializer=init, initargs=("weights.bin",)) as p:
//!     p.map(predict, xs)
//! ```
//!
//! Here the state is a value of the worker, handed to each task as `&mut Model`. The builds
//! are counted in a shared `Value` (a handle may travel in the state's argument): at most
//! one per worker.
//!
//! Run it with `cargo run --release --example worker_state`.

use mproc::{Pool, Value};

struct Model {
    weights: Vec<f64>,
    calls: u64,
}

/// The expensive part, run once per worker.
fn load((size, builds): (usize, Value<u64>)) -> Model {
    *builds.lock().expect("the counter's lock") += 1;
    let weights = (0..size).map(|i| 1.0 / (i as f64 + 1.0)).collect();
    Model { weights, calls: 0 }
}

fn predict(model: &mut Model, x: f64) -> f64 {
    model.calls += 1;
    model.weights.iter().map(|w| w * x).sum()
}

fn main() -> mproc::Result<()> {
    let builds = Value::new(0u64)?;
    let pool = Pool::builder()
        .processes(4)
        .worker_state(load, (100_000, builds.clone()))
        .build()?;
    let xs: Vec<f64> = (1..=1000).map(f64::from).collect();
    let scores = pool.map_with_state(predict, &xs)?;
    let again = pool.map_with_state(predict, &xs)?;
    assert_eq!(scores, again);
    let built = builds.get()?;
    println!(
        "{} predictions, the model built {built} time(s) for {} workers",
        scores.len() + again.len(),
        pool.processes()
    );
    assert!((1..=pool.processes() as u64).contains(&built));
    Ok(())
}
