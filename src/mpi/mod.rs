//! The same [`Pool`] API across the ranks of an MPI job (cargo feature `mpi`).
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
//!     // rank 0 only gets here; 8 worker processes on every serving rank
//!     let pool = mproc::Pool::builder().processes(8).mpi().build()?;
//!     assert_eq!(pool.map(square, 1..=4)?, [1, 4, 9, 16]);
//!     Ok(())
//! }
//! ```
//!
//! [`PoolBuilder::mpi`] switches the builder to this flavor: `build` returns the one
//! [`Pool`], whose methods, iterators and handles are the local pool's. What the flavor cannot
//! carry across ranks fails with [`ErrorKind::Unsupported`](crate::ErrorKind::Unsupported)
//! (see [`PoolBuilder::mpi`]).
//!
//! Functions cross as they do to local workers: offsets from an anchor in the executable, with
//! its binary identity (GNU build id) checked on the serving rank; a rank running another
//! build refuses the task ([`ErrorKind::BinaryMismatch`](crate::ErrorKind::BinaryMismatch)).
//!
//! Each serving rank runs its tasks in a local [`Pool`] of worker processes
//! ([`PoolBuilder::processes`], else `MPROC_MPI_PROCESSES`, else its CPU count), so a
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
//!   silent past [`PoolBuilder::rank_timeout`] and re-runs its tasks elsewhere
//!   ([`PoolBuilder::max_retries`]). Only a lost rank's *tasks* are recovered: no new rank is
//!   started, and MPI's own behaviour with a dead peer (at `MPI_Finalize`, say) is Open
//!   MPI's — keep an outer `timeout`.

mod driver;
mod server;
mod transport;
mod wire;

use std::any::Any;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::pool::{Remote, Sink};
use crate::{Pool, PoolBuilder};
use driver::{Cmd, Driver};

/// Variables by which Open MPI, PMIx (Slurm `srun --mpi=pmix`) and PMI-2 launchers tell a
/// process its rank.
const RANK_ENVS: [&str; 3] = ["OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK"];

/// Set (to anything) to keep every rank in `main`: for programs that also use MPI directly
/// (the benchmark's raw baseline) and do not build an MPI [`Pool`] in that run.
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

/// Default of [`PoolBuilder::start_timeout`].
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// Default of [`PoolBuilder::rank_timeout`].
const RANK_TIMEOUT: Duration = Duration::from_secs(10);
/// Default of [`PoolBuilder::prefetch`].
const PREFETCH: usize = 2;

impl PoolBuilder {
    /// Switches to the MPI flavor (feature `mpi`): [`build`](PoolBuilder::build) then starts
    /// a [`Pool`] over the other ranks of the MPI job, with every method of a local one. See
    /// [`crate::mpi`].
    ///
    /// [`processes`](PoolBuilder::processes) counts the worker processes of *each* serving
    /// rank (default: `MPROC_MPI_PROCESSES`, else the rank's CPU count), while
    /// [`Pool::processes`] counts them over all ranks. `max_retries`, `task_timeout`,
    /// `max_tasks_per_child` and `worker_state` apply on every serving rank (`max_retries`
    /// also re-runs the tasks of a lost rank elsewhere: see
    /// [`rank_timeout`](PoolBuilder::rank_timeout)); `chunksize` on rank 0. The MPI-only
    /// settings are [`rank_timeout`](PoolBuilder::rank_timeout),
    /// [`prefetch`](PoolBuilder::prefetch) and [`start_timeout`](PoolBuilder::start_timeout).
    ///
    /// ```no_run
    /// use std::time::Duration;
    ///
    /// let pool = mproc::Pool::builder()
    ///     .processes(8) // per serving rank
    ///     .max_retries(1)
    ///     .task_timeout(Duration::from_secs(600))
    ///     .mpi()
    ///     .prefetch(8)
    ///     .build()?;
    /// # Ok::<(), mproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// `build` fails with [`ErrorKind::Unsupported`](crate::ErrorKind::Unsupported) for the
    /// settings this flavor does not carry to its ranks (yet): `start_method`, `initializer`,
    /// `threads_per_worker`, `memory_limit`, `max_processes`, `env`, `stdout`, `stderr`;
    /// [`ErrorKind::Usage`](crate::ErrorKind::Usage) if called twice in a run (MPI
    /// initializes once) or if no rank serves (the program was not started by `mpirun -n 2`
    /// or more); [`ErrorKind::Broken`](crate::ErrorKind::Broken) if the ranks did not report
    /// in time. Once built, the pool's calls fail with
    /// [`ErrorKind::Unsupported`](crate::ErrorKind::Unsupported) for arguments holding fds
    /// (queues, pipes, locks, shared memory) and tasks above 2 GiB; its
    /// [`AsyncResult::cancel`](crate::AsyncResult::cancel) returns false (a task sent to a
    /// rank cannot be withdrawn).
    pub fn mpi(mut self) -> PoolBuilder {
        self.flavor = Some(start);
        self
    }
    /// MPI pool: how long a serving rank may stay silent (it sends a heartbeat every second)
    /// before it is written off as lost (default 10 s). This only matters under
    /// `mpirun --enable-recovery`: by default Open MPI aborts the whole job when a rank dies.
    pub fn rank_timeout(mut self, t: Duration) -> PoolBuilder {
        self.remote.rank_timeout = Some(t);
        self
    }
    /// MPI pool: tasks (chunks, for `map`) sent ahead to each serving rank per local worker
    /// (default 2). Every task a rank can take at once travels in one MPI message, so a
    /// deeper window adds few messages. Higher values raise the throughput of many tiny
    /// tasks (measured on a 2-core machine, 2 serving ranks of 2 workers: 25–33k tasks/s at
    /// 2, 56–79k at 8, 72–110k at 32, where a local pool alone does 200–240k); lower values
    /// balance long tasks better, since a task sent ahead waits on its rank even if another
    /// rank frees up first.
    pub fn prefetch(mut self, n: usize) -> PoolBuilder {
        self.remote.prefetch = Some(n.max(1));
        self
    }
    /// MPI pool: how long [`build`](PoolBuilder::build) waits for every serving rank
    /// (default 120 s).
    pub fn start_timeout(mut self, t: Duration) -> PoolBuilder {
        self.remote.start_timeout = Some(t);
        self
    }
}

impl Pool {
    /// The serving ranks of an MPI pool (every rank but 0 that started its local workers);
    /// 0 for a local pool.
    pub fn ranks(&self) -> usize {
        self.remote()
            .and_then(|r| r.as_any().downcast_ref::<Ranks>())
            .map_or(0, |r| r.ranks)
    }
}

/// The MPI flavor of a [`Pool`]: the channel to the driver thread, the only thread of rank 0
/// that calls MPI.
///
/// Dropping it fails tasks still queued or running with
/// [`ErrorKind::Closed`](crate::ErrorKind::Closed), tells every serving rank to exit and
/// finalizes MPI.
struct Ranks {
    tx: Mutex<Option<mpsc::Sender<Cmd>>>,
    driver: Mutex<Option<JoinHandle<()>>>,
    ranks: usize,
    /// `close` was called: no new tasks.
    closed: AtomicBool,
}

impl Ranks {
    /// Closes the channel (the driver stops, after a [`Cmd::Drain`] once its tasks are done)
    /// and waits for the driver.
    fn stop(&self) {
        drop(
            self.tx
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
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

impl Remote for Ranks {
    fn submit(&self, frame: Vec<u8>, items: usize, sink: Sink) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::closed(
                "the pool is closed: no new tasks after close()",
            ));
        }
        let tx = self.tx.lock().unwrap_or_else(PoisonError::into_inner);
        tx.as_ref()
            .and_then(|tx| tx.send(Cmd::Run(frame, items, sink)).ok())
            .ok_or_else(|| Error::closed("the pool was terminated"))
    }

    fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }

    fn join(&self) -> Result<()> {
        let tx = self.tx.lock().unwrap_or_else(PoisonError::into_inner);
        match &*tx {
            Some(_) if !self.closed.load(Ordering::Acquire) => {
                return Err(Error::usage("join() needs close() or terminate() first"));
            }
            Some(tx) => {
                let _ = tx.send(Cmd::Drain);
            }
            None => {}
        }
        drop(tx);
        self.stop();
        Ok(())
    }

    fn terminate(&self) {
        self.stop();
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl Drop for Ranks {
    fn drop(&mut self) {
        self.stop();
    }
}

/// [`PoolBuilder::build`] of the MPI flavor: initializes MPI on rank 0, starts the serving
/// ranks' local pools and waits until every serving rank is ready.
fn start(b: PoolBuilder) -> Result<Pool> {
    if let Some(setting) = b.local_only() {
        return Err(Error::unsupported(format!(
            "the MPI pool does not carry `{setting}` to its ranks (yet)"
        )));
    }
    if STARTED.swap(true, Ordering::SeqCst) {
        return Err(Error::usage(
            "MPI can be initialized once: one MPI pool per run",
        ));
    }
    let config = wire::RankConfig {
        processes: b.processes.map(|n| n.max(1).try_into().unwrap_or(u32::MAX)),
        max_retries: b.max_retries,
        task_timeout: b.task_timeout,
        max_tasks_per_child: b.max_tasks_per_child.map(|n| n as u64),
    };
    let settings = [
        b.remote.start_timeout.unwrap_or(START_TIMEOUT),
        b.remote.rank_timeout.unwrap_or(RANK_TIMEOUT),
    ];
    let prefetch = b.remote.prefetch.unwrap_or(PREFETCH);
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
    let ranks = Ranks {
        tx: Mutex::new(Some(tx)),
        driver: Mutex::new(Some(handle)),
        ranks: world.ranks,
        closed: AtomicBool::new(false),
    };
    if ranks.ranks == 0 {
        return Err(Error::usage(
            "no MPI rank serves tasks: launch with `mpirun -n 2` or more",
        ));
    }
    Ok(b.into_remote(Box::new(ranks), world.processes))
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
