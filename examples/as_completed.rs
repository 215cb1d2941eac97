//! The first answers, then the rest cancelled: Python's
//! `for f in concurrent.futures.as_completed(futures): ...` followed by `f.cancel()` on what is
//! left — except that here the slow tasks that already run are stopped too (their workers are
//! killed and replaced), where Python can only cancel those still queued.
//!
//! Run it with `cargo run --release --example as_completed`.

use std::time::{Duration, Instant};

use mproc::{ErrorKind, Pool};

/// A probe that takes `ms` milliseconds to answer (a minute, for the slow ones).
fn probe(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

fn main() -> mproc::Result<()> {
    let start = Instant::now();
    let pool = Pool::new(3)?;
    let costs = [60_000, 20, 60_000, 40, 60_000, 60_000];
    let handles: Vec<_> = costs
        .iter()
        .map(|&ms| pool.apply_async(probe, ms))
        .collect();

    let mut done = mproc::as_completed(handles);
    let mut answers = Vec::new();
    while answers.len() < 2 {
        let (i, result) = done
            .next_timeout(Duration::from_secs(30))
            .expect("tasks left")?; // TimedOut after 30 s
        println!("task {i} answered: {} ms", result?);
        answers.push(i);
    }
    assert_eq!(
        answers,
        [1, 3],
        "the quick ones, in the order they finished"
    );

    // Enough: stop the rest, running or queued.
    let mut cancelled = 0;
    for (_, h) in done.pending() {
        cancelled += usize::from(h.cancel());
    }
    let rest: Vec<usize> = done
        .map(|(i, result)| {
            let e = result.expect_err("cancelled");
            assert_eq!(e.kind(), ErrorKind::Cancelled);
            i
        })
        .collect();
    println!("cancelled {cancelled} slow tasks: {rest:?}");
    assert_eq!(rest.len(), 4);

    // The pool goes on: the killed workers were replaced.
    assert_eq!(pool.map(probe, [1, 2, 3])?, [1, 2, 3]);
    println!("done in {:.0?}", start.elapsed());
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "nobody waited for a slow task"
    );
    Ok(())
}
