//! The same [`Pool`](crate::Pool) API across the ranks of an MPI job (cargo feature `mpi`).
//!
//! Launch the program with `mpirun -n N ./app` (or `srun --mpi=pmix`): every rank runs the
//! same binary. Rank 0 runs `main`; every other rank is taken over by mproc's load-time
//! constructor before `main` and serves tasks until rank 0's [`Pool`] is dropped, then exits
//! — `main` never runs there (mpi4py.futures' static mode).
//!
//! ```no_run
//! fn square(x: u64) -> u64 {
//!     x * x
//! }
//!
//! fn main() -> mproc::Result<()> {
//!     let pool = mproc::mpi::Pool::new()?; // rank 0 only gets here
//!     assert_eq!(pool.map(square, 1..=4)?, [1, 4, 9, 16]);
//!     Ok(())
//! }
//! ```
//!
//! `mproc::Pool::builder().processes(8).mpi().build()` gives the same pool with settings
//! applied on every serving rank (see [`Builder`]).
//!
//! Functions cross as they do to local workers: offsets from an anchor in the executable, with
//! its binary identity (GNU build id) checked on the serving rank; a rank running another
//! build refuses the task ([`ErrorKind::BinaryMismatch`](crate::ErrorKind::BinaryMismatch)).
//!
//! Each serving rank runs its tasks in a local [`Pool`](crate::Pool) of worker processes
//! ([`Builder::processes_per_rank`], else `MPROC_MPI_PROCESSES`, else its CPU count), so a
//! task that panics, aborts or segfaults fails alone, with the same [`Error`] a local pool
//! gives, and the MPI job goes on.
//!
//! # Caveats
//! - One MPI pool per run: MPI cannot be initialized twice.
//! - A binary built with the `mpi` feature and launched by `mpirun` must build the pool on rank
//!   0: the other ranks wait for it in `MPI_Init` (if rank 0 ends without building it,
//!   `mpirun` stops the job with an error). Set `MPROC_MPI_NO_SERVE` to keep every rank in
//!   `main`.
//! - Arguments holding fds (queues, pipes, locks, shared memory) cannot cross ranks.
//! - A serving rank that dies (killed, node lost) ends the whole job: Open MPI aborts it by
//!   default. Under `mpirun --enable-recovery` the job goes on; rank 0 writes off a rank
//!   silent past [`Builder::rank_timeout`] and re-runs its tasks elsewhere
//!   ([`Builder::max_retries`]). Only a lost rank's *tasks* are recovered: no new rank is
//!   started, and MPI's own behaviour with a dead peer (at `MPI_Finalize`, say) is Open
//!   MPI's — keep an outer `timeout`.

mod driver;
mod imap;
mod server;
mod transport;
mod wire;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};
use crate::pool::{AsyncResult, Slot};

use crate::task::fnref::{Callable, FnRef};
use crate::wire::codec;
use driver::{Cmd, Driver};
pub use imap::Imap;

/// Variables by which Open MPI, PMIx (Slurm `srun --mpi=pmix`) and PMI-2 launchers tell a
/// process its rank.
const RANK_ENVS: [&str; 3] = ["OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK"];

/// Set (to anything) to keep every rank in `main`: for programs that also use MPI directly
/// (the benchmark's raw baseline) and do not build a [`Pool`] in that run.
pub const NO_SERVE_ENV: &str = "MPROC_MPI_NO_SERVE";

crate::sys::ctor::at_load!(MPROC_MPI_RANK = at_load);

/// Runs before `main` in every executable built with `mpi`: under MPI, every rank but 0
/// serves instead of running `main`. A child of mproc's (its marker set) is not a serving
/// rank, though it inherits the launcher's rank variables: the child entry takes it over,
/// whichever of the two load-time entries runs first.
fn at_load(token: &crate::sys::child::ChildToken) {
    let child = crate::sys::child::getenv(token, crate::child::MARKER_ENV).is_some();
    if !child && is_serving_rank() {
        serve_at_load();
    }
}

/// True in a process launched as an MPI rank other than 0.
fn is_serving_rank() -> bool {
    std::env::var_os(NO_SERVE_ENV).is_none()
        && RANK_ENVS
            .iter()
            .find_map(std::env::var_os)
            .is_some_and(|r| r != "0")
}

/// Serves as a rank, then exits.
fn serve_at_load() -> ! {
    use std::io::Write;
    // As Rust's `main` would: a write to a worker that just died must fail, not kill the rank.
    crate::sys::ignore_sigpipe();
    let code = std::panic::catch_unwind(server::serve).unwrap_or(crate::child::EXIT_INTERNAL);
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    crate::sys::exit_now(code)
}

static STARTED: AtomicBool = AtomicBool::new(false);

/// A pool whose workers are the other ranks of the MPI job; the methods of
/// [`mproc::Pool`](crate::Pool).
///
/// # Drop
/// Dropping the pool fails tasks still queued or running with
/// [`ErrorKind::Closed`](crate::ErrorKind::Closed), tells every serving rank to exit and
/// finalizes MPI.
pub struct Pool {
    tx: Option<mpsc::Sender<Cmd>>,
    driver: Mutex<Option<JoinHandle<()>>>,
    ranks: usize,
    processes: usize,
    chunksize: Option<usize>,
}

/// Configures an MPI [`Pool`]; from [`Pool::builder`] or
/// [`mproc::PoolBuilder::mpi`](crate::PoolBuilder::mpi).
///
/// ```no_run
/// use std::time::Duration;
///
/// let pool = mproc::Pool::builder()
///     .processes(8) // per serving rank
///     .max_retries(1)
///     .task_timeout(Duration::from_secs(600))
///     .mpi()
///     .build()?;
/// # Ok::<(), mproc::Error>(())
/// ```
#[derive(Clone, Debug)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct Builder {
    config: wire::RankConfig,
    chunksize: Option<usize>,
    start_timeout: Duration,
    rank_timeout: Duration,
    prefetch: usize,
}

impl Default for Builder {
    fn default() -> Builder {
        Builder {
            config: wire::RankConfig::default(),
            chunksize: None,
            start_timeout: Duration::from_secs(120),
            rank_timeout: Duration::from_secs(10),
            prefetch: 2,
        }
    }
}

impl crate::PoolBuilder {
    /// Switches to a pool over the ranks of an MPI job (feature `mpi`): `processes`,
    /// `max_retries`, `task_timeout`, `max_tasks_per_child` and `chunksize` carry over, applied
    /// on each serving rank; the other settings do not (yet). See [`crate::mpi`].
    pub fn mpi(self) -> Builder {
        Builder::from_local(
            self.processes,
            self.max_retries,
            self.task_timeout,
            self.max_tasks_per_child,
            self.chunksize,
        )
    }
}

impl Builder {
    /// Local worker processes on each serving rank (default: `MPROC_MPI_PROCESSES`, else the
    /// rank's CPU count).
    pub fn processes_per_rank(mut self, n: usize) -> Builder {
        self.config.processes = Some(n.max(1).try_into().unwrap_or(u32::MAX));
        self
    }
    /// As [`mproc::PoolBuilder::max_retries`](crate::PoolBuilder::max_retries): a task whose
    /// local worker died is re-run on its serving rank, and a task whose whole rank was lost
    /// (see [`rank_timeout`](Builder::rank_timeout)) on another rank, up to `n` times.
    pub fn max_retries(mut self, n: u32) -> Builder {
        self.config.max_retries = n;
        self
    }
    /// As [`mproc::PoolBuilder::task_timeout`](crate::PoolBuilder::task_timeout), per task
    /// (chunk) on its serving rank.
    pub fn task_timeout(mut self, t: Duration) -> Builder {
        self.config.task_timeout = Some(t);
        self
    }
    /// As [`mproc::PoolBuilder::max_tasks_per_child`](crate::PoolBuilder::max_tasks_per_child).
    pub fn max_tasks_per_child(mut self, n: usize) -> Builder {
        self.config.max_tasks_per_child = Some(n.max(1) as u64);
        self
    }
    /// The default chunk size for `map` (default: about four chunks per worker).
    pub fn chunksize(mut self, n: usize) -> Builder {
        self.chunksize = Some(n.max(1));
        self
    }
    /// How long a serving rank may stay silent (it sends a heartbeat every second) before it
    /// is written off as lost (default 10 s). This only matters under
    /// `mpirun --enable-recovery`: by default Open MPI aborts the whole job when a rank dies.
    pub fn rank_timeout(mut self, t: Duration) -> Builder {
        self.rank_timeout = t;
        self
    }
    /// Tasks (chunks, for `map`) sent ahead to each serving rank per local worker (default 2).
    /// Every task a rank can take at once travels in one MPI message, so a deeper window adds
    /// few messages. Higher values raise the throughput of many tiny tasks (measured on a
    /// 2-core machine, 2 serving ranks of 2 workers: 25–33k tasks/s at 2, 56–79k at 8,
    /// 72–110k at 32, where a local pool alone does 200–240k); lower values balance long tasks
    /// better, since a task sent ahead waits on its rank even if another rank frees up first.
    pub fn prefetch(mut self, n: usize) -> Builder {
        self.prefetch = n.max(1);
        self
    }
    /// How long [`build`](Builder::build) waits for every serving rank (default 120 s).
    pub fn start_timeout(mut self, t: Duration) -> Builder {
        self.start_timeout = t;
        self
    }

    /// The settings a local [`PoolBuilder`](crate::PoolBuilder) carries over.
    pub(crate) fn from_local(
        processes: Option<usize>,
        max_retries: u32,
        task_timeout: Option<Duration>,
        max_tasks_per_child: Option<usize>,
        chunksize: Option<usize>,
    ) -> Builder {
        let mut b = Builder::default().max_retries(max_retries);
        b.config.processes = processes.map(|n| n.max(1).try_into().unwrap_or(u32::MAX));
        b.config.task_timeout = task_timeout;
        b.config.max_tasks_per_child = max_tasks_per_child.map(|n| n as u64);
        b.chunksize = chunksize;
        b
    }

    /// Initializes MPI on rank 0, starts the serving ranks' local pools and waits until every
    /// serving rank is ready.
    ///
    /// # Errors
    /// [`ErrorKind::Usage`](crate::ErrorKind::Usage) if called twice or if no rank serves (the
    /// program was not started by `mpirun -n 2` or more);
    /// [`ErrorKind::Broken`](crate::ErrorKind::Broken) if ranks did not report in time.
    pub fn build(self) -> Result<Pool> {
        Pool::start(self)
    }
}

impl Pool {
    /// An MPI pool with default settings: `Pool::builder().build()`.
    ///
    /// # Errors
    /// As [`Builder::build`].
    pub fn new() -> Result<Pool> {
        Builder::default().build()
    }

    /// A [`Builder`] for the pool's settings.
    pub fn builder() -> Builder {
        Builder::default()
    }

    fn start(b: Builder) -> Result<Pool> {
        if STARTED.swap(true, Ordering::SeqCst) {
            return Err(Error::usage(
                "MPI can be initialized once: one mpi::Pool per run",
            ));
        }
        let config = b.config;
        let settings = [b.start_timeout, b.rank_timeout];
        let prefetch = b.prefetch;
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        let (tx, rx) = mpsc::channel();
        let handle = std::thread::Builder::new()
            .name("mproc-mpi".into())
            .spawn(move || drive(ready_tx, rx, &config, settings, prefetch))
            .map_err(|e| Error::io("cannot start the MPI driver thread", e))?;
        let world = ready_rx
            .recv()
            .unwrap_or_else(|_| Err(Error::broken("the MPI driver thread died")));
        let world = match world {
            Ok(w) => w,
            Err(e) => {
                let _ = handle.join();
                return Err(e);
            }
        };
        let pool = Pool {
            tx: Some(tx),
            driver: Mutex::new(Some(handle)),
            ranks: world.ranks,
            processes: world.processes,
            chunksize: b.chunksize,
        };
        if pool.ranks == 0 {
            return Err(Error::usage(
                "no MPI rank serves tasks: launch with `mpirun -n 2` or more",
            ));
        }
        Ok(pool)
    }

    /// Serving ranks (every rank but 0 that started its local workers).
    pub fn ranks(&self) -> usize {
        self.ranks
    }

    /// Worker processes over all serving ranks.
    pub fn processes(&self) -> usize {
        self.processes
    }

    /// Runs `f` on every item on the serving ranks; results in input order. As
    /// [`mproc::Pool::map`](crate::Pool::map).
    ///
    /// # Errors
    /// The first failure in input order.
    pub fn map<A, R>(&self, f: fn(A) -> R, items: impl IntoIterator<Item = A>) -> Result<Vec<R>>
    where
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + 'static,
    {
        self.map_async(f, items).get()
    }

    /// [`map`](Pool::map) with an explicit chunk size: as
    /// [`mproc::Pool::map_chunked`](crate::Pool::map_chunked).
    pub fn map_chunked<A, R>(
        &self,
        f: fn(A) -> R,
        items: impl IntoIterator<Item = A>,
        chunksize: usize,
    ) -> Result<Vec<R>>
    where
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + 'static,
    {
        self.map_impl(f, items.into_iter().collect(), Some(chunksize))
            .get()
    }

    /// Runs `f(a, b)` on every pair: as [`mproc::Pool::starmap`](crate::Pool::starmap).
    pub fn starmap<A, B, R>(
        &self,
        f: fn(A, B) -> R,
        items: impl IntoIterator<Item = (A, B)>,
    ) -> Result<Vec<R>>
    where
        A: Serialize + DeserializeOwned + 'static,
        B: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + 'static,
    {
        self.map_impl(f, items.into_iter().collect(), None).get()
    }

    /// [`map`](Pool::map) without waiting.
    pub fn map_async<A, R>(
        &self,
        f: fn(A) -> R,
        items: impl IntoIterator<Item = A>,
    ) -> AsyncResult<Vec<R>>
    where
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + 'static,
    {
        self.map_impl(f, items.into_iter().collect(), None)
    }

    /// Runs `f(arg)` on a serving rank and waits: as [`mproc::Pool::apply`](crate::Pool::apply).
    ///
    /// # Errors
    /// As [`AsyncResult::get`].
    pub fn apply<A, R>(&self, f: fn(A) -> R, arg: A) -> Result<R>
    where
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + 'static,
    {
        self.apply_async(f, arg).get()
    }

    /// Runs `f(arg)` on a serving rank; the result arrives through the handle.
    pub fn apply_async<A, R>(&self, f: fn(A) -> R, arg: A) -> AsyncResult<R>
    where
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + 'static,
    {
        let slot = Arc::new(Slot::default());
        let sent = encode(FnRef::chunked(f), std::slice::from_ref(&arg))
            .and_then(|frame| self.send(Cmd::Run(frame, Arc::clone(&slot), 0)));
        match sent {
            Ok(()) => AsyncResult::new(Some(slot), crate::pool::finish_one::<R>),
            Err(e) => AsyncResult::failed(e),
        }
    }

    /// Lazily runs `f` over `items`, yielding results in input order: as
    /// [`mproc::Pool::imap`](crate::Pool::imap). At most two chunks per worker are in flight,
    /// pulled from `items` as results are consumed, so an endless iterator works.
    pub fn imap<A, R, I>(&self, f: fn(A) -> R, items: I) -> Imap<'_, I::IntoIter, R>
    where
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + 'static,
        I: IntoIterator<Item = A>,
    {
        Imap::new(
            self,
            FnRef::chunked(f),
            items.into_iter(),
            self.chunksize.unwrap_or(1),
        )
    }

    fn map_impl<F: Callable>(
        &self,
        f: F,
        items: Vec<F::Args>,
        chunksize: Option<usize>,
    ) -> AsyncResult<Vec<F::Out>> {
        let chunksize = chunksize
            .or(self.chunksize)
            .unwrap_or_else(|| crate::pool::auto_chunksize(items.len(), self.processes))
            .max(1);
        let fnref = FnRef::chunked(f);
        let chunks = items.chunks(chunksize);
        let slot = Arc::new(Slot::new(chunks.len()));
        let mut frames = Vec::with_capacity(chunks.len());
        for chunk in chunks {
            match encode(fnref, chunk) {
                Ok(frame) => frames.push(frame),
                Err(e) => return AsyncResult::failed(e),
            }
        }
        if frames.is_empty() {
            return AsyncResult::new(None, crate::pool::finish_map::<F::Out>);
        }
        for (i, frame) in frames.into_iter().enumerate() {
            if let Err(e) = self.send(Cmd::Run(frame, Arc::clone(&slot), i)) {
                return AsyncResult::failed(e);
            }
        }
        AsyncResult::new(Some(slot), crate::pool::finish_map::<F::Out>)
    }

    fn send(&self, cmd: Cmd) -> Result<()> {
        self.tx
            .as_ref()
            .and_then(|tx| tx.send(cmd).ok())
            .ok_or_else(|| Error::closed("the MPI driver has stopped"))
    }
}

/// The `Run` frame a local pool would send for this chunk. Fds cannot cross ranks.
fn encode<T: Serialize>(f: Option<FnRef>, chunk: &[T]) -> Result<Vec<u8>> {
    let f = f.ok_or_else(|| Error::usage(crate::sys::fnptr::NOT_IN_MAIN_IMAGE))?;
    let role = codec::Role::Arguments;
    let (frame, fds) =
        crate::task::run::encode::<[T]>(0, f, chunk, role, crate::task::run::Large::Inline)
            .map_err(Error::codec)?;
    if !fds.is_empty() {
        return Err(Error::usage(
            "arguments holding fds (queues, pipes, locks, shared memory) cannot cross MPI ranks",
        ));
    }
    Ok(frame)
}

/// The driver thread: initializes MPI, reports the world, serves, finalizes.
fn drive(
    ready: mpsc::SyncSender<Result<driver::World>>,
    rx: mpsc::Receiver<Cmd>,
    config: &wire::RankConfig,
    [timeout, rank_timeout]: [Duration; 2],
    prefetch: usize,
) {
    let Some((universe, _)) = mpi::initialize_with_threading(mpi::Threading::Serialized) else {
        let _ = ready.send(Err(Error::usage("MPI was already initialized")));
        return;
    };
    let link = transport::Link::new(universe.world());
    match Driver::start(link, config, timeout, rank_timeout, prefetch) {
        Ok((driver, world)) => {
            let _ = ready.send(Ok(world));
            if driver.run(rx) {
                // A rank was lost: finalizing could wait for it forever (see wire).
                std::mem::forget(universe);
                return;
            }
        }
        Err(e) => {
            let _ = ready.send(Err(e));
        }
    }
    drop(universe); // MPI_Finalize
}

impl Drop for Pool {
    fn drop(&mut self) {
        drop(self.tx.take()); // the driver sees the channel close and stops the ranks
        let handle = self
            .driver
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("mpi::Pool")
            .field("ranks", &self.ranks)
            .field("processes", &self.processes)
            .finish()
    }
}
