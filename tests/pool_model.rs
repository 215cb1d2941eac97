//! Property test: `pool.map(f, xs)` equals `xs.into_iter().map(f).collect()` for random
//! inputs (0..2000 items), 1..4 workers and chunk sizes 1..64; each case leaves nothing behind.

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
