//! Per-worker state on the pool's side: [`PoolBuilder::worker_state`],
//! [`Pool::map_with_state`] and [`Pool::apply_with_state`]. What runs in the worker is in
//! `task::state`.

use std::borrow::Borrow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::args::ByBorrow;
use super::batch::{Batch, Sink};
use super::{AsyncResult, Pool, PoolBuilder, encode_chunk};
use crate::error::{Error, Result};
use crate::task::fnref::{FnRef, InitRef};
use crate::task::state::{StateChunk, StateType, WithState};
use crate::wire::codec;

/// Encodes the constructor's argument (its type known where it was given).
type EncodeArg = dyn Fn(&mut Vec<u8>) -> std::result::Result<(), String> + Send + Sync;

/// How a pool's workers build their state.
#[derive(Clone)]
pub(super) struct StateSpec {
    /// The constructor, or `None` if it does not live in the main executable.
    init: Option<InitRef>,
    ty: StateType,
    arg: Arc<EncodeArg>,
    /// Tells this pool's states from any other's (a worker forked from a process that had
    /// one inherits it).
    key: u64,
}

impl std::fmt::Debug for StateSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateSpec")
            .field("type", &self.ty.name)
            .finish()
    }
}

/// A key no other pool's state has: this process's pid and a count.
fn fresh_key() -> u64 {
    static COUNT: AtomicU64 = AtomicU64::new(0);
    (u64::from(std::process::id()) << 32) | (COUNT.fetch_add(1, Ordering::Relaxed) & 0xffff_ffff)
}

impl PoolBuilder {
    /// Gives every worker a state of its own, `init(arg)`, built once per worker process the
    /// first time one of its tasks needs it, and kept for every later task of that worker:
    /// a model loaded once, a database connection, a cache. Tasks reach it through
    /// [`Pool::map_with_state`] and [`Pool::apply_with_state`], as `&mut S`, without a global.
    /// (Python's idiom is a global set in the pool's `initializer`; mpire calls this
    /// `worker_state`.)
    ///
    /// A worker that replaces another (after a crash, or at
    /// [`max_tasks_per_child`](PoolBuilder::max_tasks_per_child)) builds a fresh state. The
    /// state never leaves its worker, so `S` need not be serde, nor `Send`.
    ///
    /// `arg` travels with each chunk of a state task (the parent cannot know which workers
    /// have built their state yet): keep it small — a path, a configuration — and do the
    /// heavy work in `init`. It may hold mproc handles (a `Queue`, a `Lock`).
    ///
    /// If `init` panics, the items of the chunk that needed the state fail with that panic
    /// ([`ErrorKind::Panicked`](crate::ErrorKind::Panicked), its message starting with
    /// "building the worker state"); the next chunk tries again. Building it is not timed by
    /// [`task_timeout`](PoolBuilder::task_timeout): only the items are.
    ///
    /// ```
    /// struct Model {
    ///     weights: Vec<u64>,
    /// }
    ///
    /// fn load(size: usize) -> Model {
    ///     Model { weights: (1..=size as u64).collect() } // expensive: once per worker
    /// }
    ///
    /// fn predict(model: &mut Model, x: u64) -> u64 {
    ///     model.weights.iter().map(|w| w * x).sum()
    /// }
    ///
    /// let pool = mproc::Pool::builder().processes(2).worker_state(load, 3).build()?;
    /// assert_eq!(pool.map_with_state(predict, [1, 2])?, [6, 12]);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn worker_state<I, S>(mut self, init: fn(I) -> S, arg: I) -> PoolBuilder
    where
        I: Serialize + DeserializeOwned + Send + Sync + 'static,
        S: 'static,
    {
        let encode = move |out: &mut Vec<u8>| {
            codec::encode_into(&arg, out)
                .map_err(|e| format!("the worker state's argument cannot be encoded: {e}"))
        };
        self.state = Some(StateSpec {
            init: InitRef::state_init(init),
            ty: StateType::of::<S>(),
            arg: Arc::new(encode),
            key: fresh_key(),
        });
        self
    }
}

impl Pool {
    /// As [`map`](Pool::map), with each worker's state (see
    /// [`PoolBuilder::worker_state`]): `f(&mut state, item)` for every item, the results in
    /// input order.
    ///
    /// ```
    /// fn zero(_: ()) -> u64 {
    ///     0
    /// }
    ///
    /// fn count(calls: &mut u64, _: ()) -> u64 {
    ///     *calls += 1; // this worker's calls so far
    ///     *calls
    /// }
    ///
    /// let pool = mproc::Pool::builder().processes(1).worker_state(zero, ()).build()?;
    /// assert_eq!(pool.map_with_state(count, [(); 3])?, [1, 2, 3]); // one state, kept
    /// assert_eq!(pool.map_with_state(count, [(); 2])?, [4, 5]);    // across calls
    /// # Ok::<(), mproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`map`](Pool::map); and [`ErrorKind::Usage`](crate::ErrorKind::Usage), before
    /// anything runs, if the pool was built without `worker_state` or with a state of
    /// another type than `S`.
    pub fn map_with_state<S, A, R, T>(
        &self,
        f: fn(&mut S, A) -> R,
        items: impl IntoIterator<Item = T>,
    ) -> Result<Vec<R>>
    where
        S: 'static,
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + 'static,
        T: Borrow<A>,
    {
        self.map_with_state_async(f, items)
            .get_streaming(0, super::decode_into::<R>)
    }

    /// [`map_with_state`](Pool::map_with_state) without waiting.
    ///
    /// ```
    /// fn zero(_: ()) -> u64 {
    ///     0
    /// }
    ///
    /// fn count(calls: &mut u64, _: ()) -> u64 {
    ///     *calls += 1; // this worker's calls so far
    ///     *calls
    /// }
    ///
    /// let pool = mproc::Pool::builder().processes(1).worker_state(zero, ()).build()?;
    /// let pending = pool.map_with_state_async(count, [(); 3]);
    /// assert_eq!(pending.get()?, [1, 2, 3]);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn map_with_state_async<S, A, R, T>(
        &self,
        f: fn(&mut S, A) -> R,
        items: impl IntoIterator<Item = T>,
    ) -> AsyncResult<Vec<R>>
    where
        S: 'static,
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + 'static,
        T: Borrow<A>,
    {
        if let Err(e) = self.check_state::<S>() {
            return AsyncResult::failed(e);
        }
        let items: Vec<T> = items.into_iter().collect();
        let fnref = FnRef::with_state(WithState(f));
        self.map_chunks::<WithState<S, A, R>, T>(fnref, Pool::job_with_state::<A, T>, items, None)
    }

    /// As [`apply`](Pool::apply), with the worker's state: `f(&mut state, arg)`.
    ///
    /// ```
    /// use mproc::ErrorKind;
    ///
    /// fn zero(_: ()) -> u64 {
    ///     0
    /// }
    ///
    /// fn count(calls: &mut u64, _: ()) -> u64 {
    ///     *calls += 1; // this worker's calls so far
    ///     *calls
    /// }
    ///
    /// let pool = mproc::Pool::builder().processes(1).worker_state(zero, ()).build()?;
    /// assert_eq!(pool.apply_with_state(count, ())?, 1);
    /// assert_eq!(pool.apply_with_state(count, ())?, 2);
    ///
    /// let stateless = mproc::Pool::new(1)?;
    /// let e = stateless.apply_with_state(count, ()).unwrap_err();
    /// assert_eq!(e.kind(), ErrorKind::Usage); // no worker_state: nothing ran
    /// # Ok::<(), mproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`map_with_state`](Pool::map_with_state); the error has no
    /// [`index`](Error::index).
    pub fn apply_with_state<S, A, R>(&self, f: fn(&mut S, A) -> R, arg: A) -> Result<R>
    where
        S: 'static,
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + 'static,
    {
        let mut one = self
            .map_with_state_async(f, [arg])
            .get()
            .map_err(Error::unplaced)?;
        one.pop().ok_or_else(|| Error::protocol("an empty reply"))
    }

    /// Usage errors of a state call: no state, or one of another type.
    fn check_state<S: 'static>(&self) -> Result<()> {
        let Some(spec) = &self.state else {
            return Err(Error::usage(
                "this pool has no worker state: build it with PoolBuilder::worker_state to use map_with_state or apply_with_state",
            ));
        };
        if spec.ty.id != StateType::of::<S>().id {
            return Err(Error::usage(format!(
                "this pool's worker state is a `{}`, but the function takes a `&mut {}`",
                spec.ty.name,
                std::any::type_name::<S>()
            )));
        }
        Ok(())
    }

    /// Encodes a chunk of a state task (the constructor first, then the items) into a job.
    fn job_with_state<A: Serialize, T: Borrow<A>>(
        &self,
        f: Option<FnRef>,
        chunk: &[T],
        sink: Sink,
    ) -> Result<Batch> {
        let spec = self
            .state
            .as_ref()
            .ok_or_else(|| Error::usage("this pool has no worker state"))?;
        let init = spec
            .init
            .ok_or_else(|| Error::usage(crate::sys::fnptr::NOT_IN_MAIN_IMAGE))?;
        let items = ByBorrow::<A, T>::new(chunk);
        let value = StateChunk {
            key: spec.key,
            init,
            arg: &*spec.arg,
            items: &items,
        };
        let (frame, fds) = encode_chunk::<A>(self.large(), f, &value, chunk.len())?;
        Ok(Batch::new(frame, fds, chunk.len(), sink, self.max_retries))
    }
}
