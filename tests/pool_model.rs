//! Property tests against the sequential model: `pool.map(f, xs)` equals
//! `xs.into_iter().map(f).collect()` for random inputs (0..2000 items), 1..4 workers and chunk
//! sizes 1..64; and with items that panic, abort, exit or overrun their timeout, each item's
//! outcome equals the model's (one fate per item, wherever it sits in its chunk). Each case
//! leaves nothing behind.

mod common;

use mproc::Pool;
use proptest::prelude::*;

fn f(x: i64) -> i64 {
    x.wrapping_mul(31).wrapping_add(7) ^ (x >> 3)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn map_matches_the_sequential_model(
        xs in proptest::collection::vec(any::<i64>(), 0..2000),
        workers in 1usize..=4,
        chunk in 1usize..=64,
    ) {
        let _leaks = common::leak_checked();
        let pool = Pool::new(workers).unwrap();
        let want: Vec<i64> = xs.iter().copied().map(f).collect();
        prop_assert_eq!(pool.map_chunked(f, xs.clone(), chunk).unwrap(), want.clone());
        prop_assert_eq!(pool.map(f, xs.clone()).unwrap(), want.clone());
        let lazy: Vec<i64> = pool.imap(f, xs.clone()).map(|r| r.unwrap()).collect();
        prop_assert_eq!(lazy, want);
    }
}

/// What an item does, decided by its second field.
fn behave((x, how): (u16, u8)) -> u32 {
    match how {
        0..85 => u32::from(x) * 3,
        85..92 => panic!("item {x} panics"),
        92..96 => std::process::abort(),
        96..99 => std::process::exit(3),
        _ => {
            std::thread::sleep(std::time::Duration::from_secs(30));
            0
        }
    }
}

/// The sequential model of one item's outcome: its value, or the kind of its failure (and the
/// signal or exit code of a dead worker).
fn model((x, how): (u16, u8)) -> Result<u32, (mproc::ErrorKind, Option<i32>, Option<i32>)> {
    use mproc::ErrorKind::*;
    match how {
        0..85 => Ok(u32::from(x) * 3),
        85..92 => Err((Panicked, None, None)),
        92..96 => Err((WorkerDied, Some(libc::SIGABRT), None)),
        96..99 => Err((WorkerDied, None, Some(3))),
        _ => Err((TimedOut, None, None)),
    }
}

fn observed(r: mproc::Result<u32>) -> Result<u32, (mproc::ErrorKind, Option<i32>, Option<i32>)> {
    r.map_err(|e| {
        let status = e.exit_status();
        (
            e.kind(),
            status.and_then(|s| s.signal()),
            status.and_then(|s| s.code()),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    /// Items that panic, abort, exit or overrun their timeout, anywhere in their chunks, with
    /// and without retries: every item's outcome through `imap` equals the model's, and
    /// `map_chunked` fails with the first failure in input order.
    #[test]
    fn per_item_outcomes_match_the_model(
        xs in proptest::collection::vec((any::<u16>(), 0u8..100), 0..150),
        workers in 1usize..=3,
        chunk in 1usize..=32,
        retries in 0u32..=1,
    ) {
        let _leaks = common::leak_checked();
        let pool = Pool::builder()
            .processes(workers)
            .chunksize(chunk)
            .max_retries(retries)
            .task_timeout(std::time::Duration::from_millis(300))
            // A panic symbolizing its backtrace in a fresh debug-build worker can take longer
            // than the timeout: the model's panics must stay panics.
            .env("RUST_BACKTRACE", "0")
            .build()
            .unwrap();
        let want: Vec<_> = xs.iter().copied().map(model).collect();
        let mut got = Vec::new();
        let mut it = pool.imap(behave, xs.clone());
        while let Some(r) = it.next_timeout(common::LIMIT) {
            got.push(observed(r));
        }
        drop(it);
        prop_assert_eq!(&got, &want);
        let first = pool
            .map_async(behave, xs.clone())
            .get_timeout(common::LIMIT)
            .map_err(|e| observed(Err(e)).unwrap_err());
        match want.iter().position(|r| r.is_err()) {
            None => prop_assert_eq!(first.unwrap(), want.into_iter().map(|r| r.unwrap()).collect::<Vec<_>>()),
            Some(k) => prop_assert_eq!(first.unwrap_err(), want[k].unwrap_err()),
        }
    }
}
