//! The seam between the one [`Pool`](super::Pool) API and an engine other than this machine's
//! worker processes: crossbeam-channel's private flavors, with the engine behind a trait so
//! that this layer knows nothing of the one above it (the MPI ranks, `crate::mpi`).
//!
//! Every method of the pool stays here, generic: it encodes its `Run` frames once, exactly as
//! for local workers, and hands each batch to the local registry or, for a remote flavor, to
//! [`Remote::submit`] with the [`Sink`] its outcome goes to. The remote delivers outcomes as
//! the supervisor does (one [`Outcome`](super::Outcome) per batch, in parts), so results,
//! iterators, `as_completed` and `wait` decode them with the same code.

use std::any::Any;
use std::time::Duration;

use super::batch::Sink;
use super::{Pool, PoolBuilder};
use crate::error::Result;

/// An engine that runs encoded batches elsewhere (another flavor of [`Pool`]).
pub(crate) trait Remote: Send + Sync + 'static {
    /// Queues a `Run` frame of `items` items (it holds no fds); its outcome goes to `sink`.
    ///
    /// # Errors
    /// [`ErrorKind::Closed`](crate::ErrorKind::Closed) after `close` or `terminate`, or once
    /// the engine has stopped.
    fn submit(&self, frame: Vec<u8>, items: usize, sink: Sink) -> Result<()>;
    /// Stops accepting batches; those queued or running still complete.
    fn close(&self);
    /// Waits until every batch has completed and the engine has stopped (after `close`).
    ///
    /// # Errors
    /// [`ErrorKind::Usage`](crate::ErrorKind::Usage) if neither `close` nor `terminate` came
    /// first.
    fn join(&self) -> Result<()>;
    /// Stops at once: batches queued or running fail with
    /// [`ErrorKind::Closed`](crate::ErrorKind::Closed).
    fn terminate(&self);
    /// The flavor itself, for its own accessors (`Pool::ranks`).
    #[cfg_attr(not(feature = "mpi"), allow(dead_code))]
    fn as_any(&self) -> &dyn Any;
}

/// How [`PoolBuilder::build`] starts a pool of another flavor, set by that flavor's switch
/// (`PoolBuilder::mpi`).
pub(crate) type Start = fn(PoolBuilder) -> Result<Pool>;

/// Settings only a remote flavor reads, kept in the builder as plain data; its switch defines
/// their methods (`PoolBuilder::rank_timeout`...). A local pool refuses them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct RemoteOptions {
    /// How long the start may wait for the engine's workers.
    pub(crate) start_timeout: Option<Duration>,
    /// How long a part of the engine may stay silent before it is written off.
    pub(crate) rank_timeout: Option<Duration>,
    /// Batches sent ahead per worker.
    pub(crate) prefetch: Option<usize>,
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::error::Error;
    use crate::pool::result::{Answer, Part};
    use crate::wire::codec;

    /// A remote that answers every batch at once, each item with 7, and records the batches'
    /// item counts: the pool's side of the seam, tested without MPI.
    #[derive(Default)]
    struct Sevens {
        batches: Mutex<Vec<usize>>,
        closed: std::sync::atomic::AtomicBool,
    }

    impl Remote for Arc<Sevens> {
        fn submit(&self, _frame: Vec<u8>, items: usize, sink: Sink) -> Result<()> {
            if self.closed.load(std::sync::atomic::Ordering::Relaxed) {
                return Err(Error::closed("closed"));
            }
            self.batches.lock().unwrap().push(items);
            let mut body = Vec::new();
            for _ in 0..items {
                codec::encode_into(&7u64, &mut body).unwrap();
            }
            let n = items as u64;
            let answer = Answer::Frame(crate::task::chunk::rebuild(n, n, &body));
            sink.deliver(vec![Part {
                count: items,
                what: Ok(answer),
                worker: None,
            }]);
            Ok(())
        }
        fn close(&self) {
            self.closed
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        fn join(&self) -> Result<()> {
            Ok(())
        }
        fn terminate(&self) {
            self.close();
        }
        fn as_any(&self) -> &dyn Any {
            self
        }
    }

    fn square(x: u64) -> u64 {
        x * x
    }

    fn pool() -> (Pool, Arc<Sevens>) {
        let remote = Arc::new(Sevens::default());
        let b = PoolBuilder::default().chunksize(3);
        (b.into_remote(Box::new(Arc::clone(&remote)), 2), remote)
    }

    #[test]
    fn every_method_hands_encoded_batches_to_the_remote() {
        let (pool, remote) = pool();
        assert_eq!(pool.map(square, 0..10u64).unwrap(), [7; 10]);
        assert_eq!(*remote.batches.lock().unwrap(), [3, 3, 3, 1]);
        let mut it = pool.imap(square, 0..4u64);
        assert_eq!(it.size_hint(), (4, Some(4)));
        assert_eq!(it.next_timeout(Duration::from_secs(5)).unwrap().unwrap(), 7);
        assert_eq!(it.by_ref().count(), 3);
        assert!(it.next().is_none());
        let unordered: Vec<u64> = pool
            .imap_unordered(square, 0..5u64)
            .map(Result::unwrap)
            .collect();
        assert_eq!(unordered, [7; 5]);
        assert_eq!(pool.starmap(|a: u64, b: u64| a + b, [(1, 2)]).unwrap(), [7]);
        let h = pool.apply_async(square, 3);
        assert!(!h.cancel(), "a remote task is not withdrawn");
        assert_eq!(h.get().unwrap(), 7);
        assert_eq!(pool.apply(square, 3).unwrap(), 7);
    }

    fn len_of(v: Vec<u8>) -> u64 {
        v.len() as u64
    }

    #[test]
    fn automatic_chunks_hold_at_most_64_kib_of_items() {
        let remote = Arc::new(Sevens::default());
        let pool = PoolBuilder::default().into_remote(Box::new(Arc::clone(&remote)), 2);
        let batches = |remote: &Sevens| std::mem::take(&mut *remote.batches.lock().unwrap());
        // Small inputs keep Python's size: about four chunks per worker.
        pool.map(square, 0..80u64).unwrap();
        assert_eq!(batches(&remote), [10; 8]);
        // 100 000 integers: 8192 a chunk (64 KiB), not 12 500.
        pool.map(square, 0..100_000u64).unwrap();
        let got = batches(&remote);
        assert_eq!(got.iter().sum::<usize>(), 100_000);
        assert!(got.iter().all(|&n| n <= 8192), "{got:?}");
        assert_eq!(got[0], 8192);
        // Large items: as many as fit 64 KiB, at least one.
        pool.map(len_of, vec![vec![1u8; 20_000]; 40]).unwrap();
        assert_eq!(
            batches(&remote),
            [3; 13].into_iter().chain([1]).collect::<Vec<_>>()
        );
        pool.map(len_of, vec![vec![1u8; 100_000]; 4]).unwrap();
        assert_eq!(batches(&remote), [1; 4]);
    }

    #[test]
    fn fds_do_not_cross_and_close_refuses() {
        let (pool, remote) = pool();
        let q: crate::Queue<u64> = crate::Queue::new().unwrap();
        let e = pool.apply(|q: crate::Queue<u64>| q.len(), q).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::Unsupported);
        assert!(
            remote.batches.lock().unwrap().is_empty(),
            "nothing was sent"
        );
        pool.close();
        assert_eq!(
            pool.apply(square, 1).unwrap_err().kind(),
            crate::ErrorKind::Closed
        );
        pool.join().unwrap();
    }

    #[test]
    fn a_local_pool_refuses_settings_of_another_flavor() {
        let mut b = PoolBuilder::default().processes(1);
        b.remote.prefetch = Some(4);
        assert_eq!(b.build().unwrap_err().kind(), crate::ErrorKind::Usage);
        let b = PoolBuilder::default().env("A", "1");
        assert_eq!(b.local_only(), Some("env"));
        let b = PoolBuilder::default().max_processes(100);
        assert_eq!(b.local_only(), Some("max_processes"));
        let b = PoolBuilder::default().memory_limit(1 << 30);
        assert_eq!(b.local_only(), Some("memory_limit"));
        assert_eq!(PoolBuilder::default().local_only(), None);
    }
}
