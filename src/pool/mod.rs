//! [`Pool`]: Python's `multiprocessing.Pool` on a supervisor that survives its workers.

mod args;
mod batch;
mod completion;
mod fate;
mod imap;
mod lease;
mod registry;
mod remote;
mod result;
mod state;
mod supervisor;

pub use args::StarArgs;
pub use completion::{AsCompleted, ReturnWhen, as_completed, wait};
pub use imap::{Imap, ImapUnordered};
pub use result::AsyncResult;

use std::borrow::Borrow;
use std::ffi::OsString;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::capture::{CaptureOutput, Captured};
use crate::child::setup::Limits;
use crate::error::{Error, Result};
use crate::process::launch::Spec;
use crate::process::{StartMethod, Stdio};

use crate::task::chunk::Items;
use crate::task::fnref::{Callable, FnRef};
use crate::task::run::{self, Large};
use crate::wire::codec;
use crate::wire::fds::{self, Fds};
use args::{ByBorrow, Star};
use batch::Batch;
pub(crate) use batch::Sink;
#[cfg(feature = "mpi")]
pub(crate) use lease::{BorrowLost, Borrowed, Reply};
use registry::Registry;
pub(crate) use remote::{Remote, RemoteOptions, Start};
#[cfg(feature = "mpi")]
pub(crate) use result::Answer;
#[cfg(any(test, feature = "mpi"))]
pub(crate) use result::Part;
pub(crate) use result::{Outcome, Slot};
use supervisor::Config;

/// How long `build` waits for a first worker at most (a loaded machine can be slow).
const START_LIMIT: Duration = Duration::from_secs(30);

/// A pool of worker processes: Python's `multiprocessing.Pool`.
///
/// Tasks are `fn` pointers with serde arguments and results, run in separate processes. A task
/// that panics fails alone; a worker that crashes, aborts or is killed fails only the item it
/// was running (or that item is re-run, with [`max_retries`](PoolBuilder::max_retries)) and is
/// replaced; an item past [`task_timeout`](PoolBuilder::task_timeout) has its worker killed.
/// This holds per item on every path, chunks included: items that finished keep their
/// results, and no item runs again because another failed. The pool never hangs on a lost
/// worker, and is broken only by workers that cannot start (they die before serving, or the
/// initializer fails).
///
/// # Examples
/// ```
/// use mproc::Pool;
///
/// fn square(x: u64) -> u64 {
///     x * x
/// }
///
/// let pool = Pool::new(4)?;                          // Pool(processes=4)
/// let squares = pool.map(square, 1..=8)?;            // pool.map(square, range(1, 9))
/// assert_eq!(squares, [1, 4, 9, 16, 25, 36, 49, 64]);
/// assert_eq!(pool.apply(square, 12)?, 144);          // pool.apply(square, (12,))
/// # Ok::<(), mproc::Error>(())
/// ```
///
/// `Pool` is `Send + Sync`: share it (`&Pool`, `Arc<Pool>`) and submit from many threads.
///
/// # Drop
/// Dropping the pool **terminates** it, like Python's `with Pool() as p:` does on exit: every
/// worker is killed (SIGKILL) and reaped, tasks still queued or running fail with
/// [`ErrorKind::Closed`](crate::ErrorKind::Closed), and `drop` returns promptly even if tasks
/// never end. To wait for outstanding work instead, collect its results first, or call
/// [`close`](Pool::close) then [`join`](Pool::join).
pub struct Pool {
    flavor: Flavor,
    processes: usize,
    pub(crate) max_retries: u32,
    pub(crate) chunksize: Option<usize>,
    pub(crate) task_timeout: Option<Duration>,
    /// How workers build their state, with `worker_state`.
    state: Option<state::StateSpec>,
}

/// What runs a pool's tasks (crossbeam-channel's flavors): every method of [`Pool`] is one
/// generic body that ends in a short match on this.
enum Flavor {
    /// Worker processes of this machine, driven by the supervisor thread.
    Local {
        shared: Arc<Registry>,
        supervisor: Mutex<Option<JoinHandle<()>>>,
    },
    /// Another engine, taking the same encoded batches (the ranks of an MPI job:
    /// `PoolBuilder::mpi`).
    #[cfg_attr(not(feature = "mpi"), allow(dead_code))]
    Remote(Box<dyn Remote>),
}

/// Configures a [`Pool`]; Python's `Pool(...)` keyword arguments and more.
///
/// ```
/// use std::time::Duration;
///
/// fn init(greeting: String) {
///     assert_eq!(greeting, "ready");
/// }
///
/// let pool = mproc::Pool::builder()
///     .processes(2)
///     .initializer(init, "ready".to_string())
///     .max_tasks_per_child(100)
///     .task_timeout(Duration::from_secs(60))
///     .max_retries(2)
///     .build()?;
/// # Ok::<(), mproc::Error>(())
/// ```
#[derive(Clone, Debug, Default)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct PoolBuilder {
    pub(crate) processes: Option<usize>,
    method: Option<StartMethod>,
    spec: Spec,
    /// The initializer's `Run` frame, or why it could not be made.
    init: Option<std::result::Result<(Vec<u8>, Fds), String>>,
    pub(crate) max_tasks_per_child: Option<usize>,
    pub(crate) task_timeout: Option<Duration>,
    pub(crate) max_retries: u32,
    pub(crate) chunksize: Option<usize>,
    /// `threads_per_worker`, if set (0: set nothing).
    threads_per_worker: Option<usize>,
    /// How workers build their state, with `worker_state`.
    state: Option<state::StateSpec>,
    /// How `build` starts a pool of another flavor (`mpi`), if one was chosen.
    pub(crate) flavor: Option<Start>,
    /// Settings of the other flavor (see [`RemoteOptions`]).
    pub(crate) remote: RemoteOptions,
}

/// The variables that size the thread pools of OpenMP, the BLAS libraries, numexpr and rayon,
/// as joblib sets them (`inner_max_num_threads`).
pub(crate) const THREAD_VARS: [&str; 6] = [
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "RAYON_NUM_THREADS",
];

impl PoolBuilder {
    /// Number of worker processes (default: [`cpu_count`](crate::cpu_count)).
    ///
    /// ```
    /// let pool = mproc::Pool::builder().processes(2).build()?;
    /// assert_eq!(pool.processes(), 2);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn processes(mut self, n: usize) -> PoolBuilder {
        self.processes = Some(n);
        self
    }
    /// How workers are created (default: [`StartMethod::default`]).
    ///
    /// ```
    /// use mproc::StartMethod;
    ///
    /// fn square(x: u64) -> u64 {
    ///     x * x
    /// }
    ///
    /// let pool = mproc::Pool::builder().processes(2).start_method(StartMethod::Spawn).build()?;
    /// assert_eq!(pool.map(square, [1, 2, 3])?, [1, 4, 9]);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn start_method(mut self, m: StartMethod) -> PoolBuilder {
        self.method = Some(m);
        self
    }
    /// Runs `f(arg)` once in every worker before its first task, including workers started
    /// later to replace dead or retired ones. If it panics or crashes, the pool is broken:
    /// every task fails with [`ErrorKind::Broken`](crate::ErrorKind::Broken) saying why —
    /// never a hang, never an endless respawn loop.
    ///
    /// Python's idiom, a global set by the initializer and read by the tasks:
    ///
    /// ```
    /// use std::sync::OnceLock;
    ///
    /// static PREFIX: OnceLock<String> = OnceLock::new(); // one per worker process
    ///
    /// fn init(prefix: String) {
    ///     PREFIX.set(prefix).expect("set once per worker");
    /// }
    ///
    /// fn label(x: u64) -> String {
    ///     format!("{}{x}", PREFIX.get().expect("set by the initializer"))
    /// }
    ///
    /// let pool = mproc::Pool::builder()
    ///     .processes(2)
    ///     .initializer(init, "item-".to_string())
    ///     .build()?;
    /// assert_eq!(pool.map(label, [1, 2])?, ["item-1", "item-2"]);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn initializer<I: Serialize + DeserializeOwned>(mut self, f: fn(I), arg: I) -> PoolBuilder {
        // A problem surfaces as an error from `build`.
        self.init = Some(match FnRef::new(f) {
            None => Err(crate::sys::fnptr::NOT_IN_MAIN_IMAGE.to_string()),
            Some(func) => run::encode::<I>(0, func, &arg, codec::Role::Argument, Large::Spill)
                .map(|(frame, fds)| (frame, fds::shared(fds))),
        });
        self
    }
    /// Replaces each worker after it has run `n` tasks (chunks, for `map` and `imap`), like
    /// Python's `maxtasksperchild`: a cure for leaky code. No task is lost in the swap.
    ///
    /// ```
    /// fn pid(_: ()) -> u32 {
    ///     std::process::id()
    /// }
    ///
    /// let pool = mproc::Pool::builder().processes(1).max_tasks_per_child(1).build()?;
    /// let (first, second) = (pool.apply(pid, ())?, pool.apply(pid, ())?);
    /// assert_ne!(first, second, "a fresh worker for each task");
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn max_tasks_per_child(mut self, n: usize) -> PoolBuilder {
        self.max_tasks_per_child = Some(n.max(1));
        self
    }
    /// Kills a worker whose task runs longer than `t`: the task fails with
    /// [`ErrorKind::TimedOut`](crate::ErrorKind::TimedOut) and the worker is replaced.
    ///
    /// The timeout is per item, timed from the item's own start wherever it sits in a chunk
    /// (`map`'s automatic chunks included): the items of its chunk that finished keep their
    /// results and the ones after it run on another worker. Time the whole program spent
    /// stopped (Ctrl-Z, `SIGSTOP`, a frozen container) does not count. Timed-out items are
    /// never re-run.
    ///
    /// ```
    /// use std::time::Duration;
    /// use mproc::ErrorKind;
    ///
    /// fn nap(ms: u64) -> u64 {
    ///     std::thread::sleep(Duration::from_millis(ms));
    ///     ms
    /// }
    ///
    /// let pool = mproc::Pool::builder()
    ///     .processes(2)
    ///     .task_timeout(Duration::from_secs(1))
    ///     .build()?;
    /// assert_eq!(pool.apply(nap, 0)?, 0);
    /// let e = pool.apply(nap, 60_000).unwrap_err(); // killed after 1 s, not a minute
    /// assert_eq!(e.kind(), ErrorKind::TimedOut);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn task_timeout(mut self, t: Duration) -> PoolBuilder {
        self.task_timeout = Some(t);
        self
    }
    /// Re-runs an item whose worker died while running it (crash, kill, OOM) up to `n` more
    /// times before failing it with [`ErrorKind::WorkerDied`](crate::ErrorKind::WorkerDied).
    /// Default 0. Retries count per item: only the item that was running when its worker died
    /// spends one; the items of its chunk that had finished keep their results, and those
    /// after it are re-queued without spending any. Timed-out items are not retried.
    ///
    /// ```
    /// use mproc::Value;
    ///
    /// // Dies on its first run; a shared counter tells the runs apart.
    /// fn flaky(runs: Value<u32>) -> u32 {
    ///     let run = {
    ///         let mut n = runs.lock().expect("the counter's lock");
    ///         *n += 1;
    ///         *n
    ///     };
    ///     if run == 1 {
    ///         std::process::exit(42); // the worker dies without a result
    ///     }
    ///     run
    /// }
    ///
    /// let pool = mproc::Pool::builder().processes(2).max_retries(1).build()?;
    /// assert_eq!(pool.apply(flaky, Value::new(0)?)?, 2); // the second run succeeded
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn max_retries(mut self, n: u32) -> PoolBuilder {
        self.max_retries = n;
        self
    }
    /// Caps each worker's data segment (heap) at `bytes` (`RLIMIT_DATA`): an allocation past
    /// it fails in that worker alone — Rust aborts on allocation failure, so the task fails
    /// with [`ErrorKind::WorkerDied`](crate::ErrorKind::WorkerDied) (SIGABRT) and the worker
    /// is replaced.
    ///
    /// ```
    /// use mproc::{ErrorKind, Stdio};
    ///
    /// fn allocate(mib: usize) -> usize {
    ///     vec![1u8; mib << 20].len() >> 20
    /// }
    ///
    /// let pool = mproc::Pool::builder()
    ///     .processes(2)
    ///     .memory_limit(256 << 20)
    ///     .stderr(Stdio::Null) // hides the allocator's "memory allocation failed"
    ///     .build()?;
    /// assert_eq!(pool.apply(allocate, 16)?, 16);
    /// let e = pool.apply(allocate, 1024).unwrap_err();
    /// assert_eq!(e.kind(), ErrorKind::WorkerDied);
    /// assert_eq!(pool.apply(allocate, 16)?, 16); // a fresh worker took its place
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn memory_limit(mut self, bytes: u64) -> PoolBuilder {
        let limit = Limits {
            memory: Some(bytes),
            ..Limits::default()
        };
        self.spec.env.extend(limit.to_env());
        self
    }
    /// Caps the processes (and threads) a worker's user may have at `n` (`RLIMIT_NPROC`, set
    /// in each worker before its first task): a fork bomb inside a task gets `EAGAIN` from
    /// `fork` once the cap is reached, instead of exhausting the machine.
    ///
    /// ```
    /// fn process_limit(_: ()) -> String {
    ///     let limits = std::fs::read_to_string("/proc/self/limits").expect("Linux");
    ///     let line = limits.lines().find(|l| l.starts_with("Max processes"));
    ///     line.expect("a line for RLIMIT_NPROC").split_whitespace().nth(2).unwrap().to_string()
    /// }
    ///
    /// let pool = mproc::Pool::builder().processes(2).max_processes(10_000).build()?;
    /// assert_eq!(pool.apply(process_limit, ())?, "10000");
    /// # Ok::<(), mproc::Error>(())
    /// ```
    ///
    /// # Caveats
    /// `RLIMIT_NPROC` counts every process and thread of the worker's *real user*, not only
    /// the worker's descendants: choose `n` above what that user already runs. The kernel does
    /// not apply it to root (nor to a process with `CAP_SYS_ADMIN` or `CAP_SYS_RESOURCE`), so
    /// for root it only binds a task that drops privileges (`setuid`). To confine root, or to
    /// count only a pool's own descendants, run the program in a `pids` cgroup (systemd's
    /// `TasksMax=`, `docker run --pids-limit`).
    pub fn max_processes(mut self, n: u64) -> PoolBuilder {
        let limit = Limits {
            processes: Some(n),
            ..Limits::default()
        };
        self.spec.env.extend(limit.to_env());
        self
    }
    /// Caps the threads each worker's libraries start: sets `OMP_NUM_THREADS`,
    /// `OPENBLAS_NUM_THREADS`, `MKL_NUM_THREADS`, `VECLIB_MAXIMUM_THREADS`,
    /// `NUMEXPR_NUM_THREADS` and `RAYON_NUM_THREADS` to `n` in every worker, as joblib's
    /// `inner_max_num_threads` does, so that N workers running a multithreaded library do not
    /// start N times a thread per CPU. `n = 0` sets none of them.
    ///
    /// **The default** is the CPUs this process may use divided by the workers
    /// (`cpu_count() / processes`, at least 1), joblib's choice: a pool already runs one
    /// worker per CPU, and a BLAS call or a rayon `par_iter` in each of them starting one
    /// thread per CPU again slows everything down. The default never overrides a variable set
    /// in this process's environment (the operator's `OMP_NUM_THREADS=4 ./app`) or with
    /// [`env`](PoolBuilder::env). An explicit `threads_per_worker(n)` overrides the inherited
    /// environment, but not `env`.
    ///
    /// ```
    /// fn omp(_: ()) -> Option<String> {
    ///     std::env::var("OMP_NUM_THREADS").ok()
    /// }
    ///
    /// let pool = mproc::Pool::builder().processes(2).threads_per_worker(2).build()?;
    /// assert_eq!(pool.apply(omp, ())?.as_deref(), Some("2"));
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn threads_per_worker(mut self, n: usize) -> PoolBuilder {
        self.threads_per_worker = Some(n);
        self
    }
    /// Sets an environment variable in every worker.
    ///
    /// ```
    /// fn region(_: ()) -> String {
    ///     std::env::var("REGION").unwrap_or_default()
    /// }
    ///
    /// let pool = mproc::Pool::builder().processes(2).env("REGION", "eu-west").build()?;
    /// assert_eq!(pool.apply(region, ())?, "eu-west");
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> PoolBuilder {
        self.spec.env.push((key.into(), value.into()));
        self
    }
    /// Workers' standard output (default [`Stdio::Inherit`]).
    ///
    /// ```
    /// use mproc::Stdio;
    ///
    /// fn stdout_target(_: ()) -> String {
    ///     println!("goes nowhere");
    ///     std::fs::read_link("/proc/self/fd/1").unwrap().display().to_string()
    /// }
    ///
    /// let pool = mproc::Pool::builder().processes(2).stdout(Stdio::Null).build()?;
    /// assert_eq!(pool.apply(stdout_target, ())?, "/dev/null");
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn stdout(mut self, s: Stdio) -> PoolBuilder {
        self.spec.stdio[1] = s;
        self
    }
    /// Workers' standard error (default [`Stdio::Inherit`]).
    ///
    /// With [`Stdio::Prefixed`], a worker's stderr is a pipe to the parent, which prints each
    /// line whole, after the worker's name and pid:
    ///
    /// ```
    /// use mproc::Stdio;
    ///
    /// fn stderr_target(_: ()) -> String {
    ///     eprintln!("a warning"); // the parent prints "[PoolWorker 4242] a warning"
    ///     std::fs::read_link("/proc/self/fd/2").unwrap().display().to_string()
    /// }
    ///
    /// let pool = mproc::Pool::builder().processes(2).stderr(Stdio::Prefixed).build()?;
    /// assert!(pool.apply(stderr_target, ())?.starts_with("pipe:"));
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn stderr(mut self, s: Stdio) -> PoolBuilder {
        self.spec.stdio[2] = s;
        self
    }
    /// The default chunk size for `map`, `starmap` and `imap*` (default: Python's rule for
    /// `map`, 1 for `imap`).
    ///
    /// ```
    /// fn pid(_: u32) -> u32 {
    ///     std::process::id()
    /// }
    ///
    /// let pool = mproc::Pool::builder().processes(2).chunksize(4).build()?;
    /// let pids = pool.map(pid, 0..8)?;
    /// for chunk in pids.chunks(4) {
    ///     assert!(chunk.iter().all(|&p| p == chunk[0]), "4 items travel together");
    /// }
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn chunksize(mut self, n: usize) -> PoolBuilder {
        self.chunksize = Some(n.max(1));
        self
    }

    /// Starts the pool: the supervisor thread and its workers.
    ///
    /// Returns once at least one worker has started (the rest may still be starting).
    ///
    /// ```
    /// use mproc::ErrorKind;
    ///
    /// let pool = mproc::Pool::builder().processes(2).build()?;
    /// assert!(pool.workers() >= 1);
    /// let e = mproc::Pool::builder().processes(0).build().unwrap_err();
    /// assert_eq!(e.kind(), ErrorKind::Usage);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`ErrorKind::Usage`](crate::ErrorKind::Usage) for zero processes,
    /// [`ErrorKind::Codec`](crate::ErrorKind::Codec) if the initializer argument cannot be
    /// encoded, [`ErrorKind::Io`](crate::ErrorKind::Io) if the OS refuses a thread or socket,
    /// or refuses every worker for about 2 s (`fork` failing with `EAGAIN` under `ulimit -u`):
    /// the message says why.
    pub fn build(mut self) -> Result<Pool> {
        if let Some(start) = self.flavor.take() {
            return start(self);
        }
        if self.remote != RemoteOptions::default() {
            return Err(Error::usage(
                "prefetch, rank_timeout and start_timeout are settings of the MPI pool: call .mpi() first",
            ));
        }
        let processes = self.processes.unwrap_or_else(crate::cpu_count);
        if processes == 0 {
            return Err(Error::usage("a pool needs at least one process"));
        }
        if crate::child::marker_unconsumed() {
            return Err(Error::usage(
                "mproc's constructor did not run in this worker; call mproc::init() first in main",
            ));
        }
        // An invalid `MPROC_START_METHOD` is refused here, like Python's `ValueError`.
        let method = StartMethod::resolve(self.method)?;
        let init = match self.init {
            Some(Err(why)) => return Err(Error::codec(why)),
            Some(Ok(frame)) => Some(frame),
            None => None,
        };
        let mut spec = self.spec;
        let threads = thread_vars(self.threads_per_worker, processes, &spec.env);
        // First, so that a variable set with `env` comes later and wins.
        spec.env.splice(0..0, threads);
        spec.stdio[0] = Stdio::Null;
        let parent_name = crate::current_process().name().to_string();
        spec.env
            .push(("MPROC_PROCESS_NAME".into(), "PoolWorker".into()));
        spec.env
            .push(("MPROC_PARENT_NAME".into(), parent_name.into()));
        let config = Config {
            processes,
            method,
            spec,
            init,
            max_tasks_per_child: self.max_tasks_per_child,
            task_timeout: self.task_timeout,
        };
        let (shared, handle) =
            supervisor::start(config).map_err(|e| Error::io("cannot start the pool", e))?;
        // At least one worker must start: a pool that can run nothing fails here, clearly,
        // rather than at its first task. Transient refusals (`EAGAIN`) are retried meanwhile.
        if let registry::Start::Failed(why) = shared.wait_start(START_LIMIT) {
            let mut q = shared.lock();
            q.terminate = true;
            shared.wake_locked(q);
            let _ = handle.join();
            return Err(Error::io(
                "cannot start the pool",
                std::io::Error::other(why),
            ));
        }
        Ok(Pool {
            flavor: Flavor::Local {
                shared,
                supervisor: Mutex::new(Some(handle)),
            },
            processes,
            max_retries: self.max_retries,
            chunksize: self.chunksize,
            task_timeout: self.task_timeout,
            state: self.state,
        })
    }

    /// The first setting that only a local pool carries out (another flavor refuses it), by
    /// the name of its method.
    #[cfg_attr(not(feature = "mpi"), allow(dead_code))]
    pub(crate) fn local_only(&self) -> Option<&'static str> {
        // The variables `memory_limit` and `max_processes` set, by the name of the setting.
        let memory = Limits {
            memory: Some(0),
            ..Limits::default()
        };
        let processes = Limits {
            processes: Some(0),
            ..Limits::default()
        };
        let limits = [(memory, "memory_limit"), (processes, "max_processes")];
        let named = |key: &OsString| {
            limits
                .iter()
                .find(|(l, _)| l.to_env().iter().any(|(k, _)| k == key))
                .map_or("env", |(_, name)| *name)
        };
        let env = self.spec.env.iter().map(|(k, _)| named(k));
        let set = [
            (self.method.is_some(), "start_method"),
            (self.init.is_some(), "initializer"),
            (self.threads_per_worker.is_some(), "threads_per_worker"),
            (self.spec.stdio[1] != Stdio::Inherit, "stdout"),
            (self.spec.stdio[2] != Stdio::Inherit, "stderr"),
        ];
        env.chain(set.into_iter().filter(|(on, _)| *on).map(|(_, name)| name))
            .next()
    }

    /// The pool of another flavor, `remote`, started from this builder's settings, with
    /// `processes` workers in all.
    #[cfg_attr(not(feature = "mpi"), allow(dead_code))]
    pub(crate) fn into_remote(self, remote: Box<dyn Remote>, processes: usize) -> Pool {
        Pool {
            flavor: Flavor::Remote(remote),
            processes,
            max_retries: self.max_retries,
            chunksize: self.chunksize,
            task_timeout: self.task_timeout,
            state: self.state,
        }
    }
}

impl Pool {
    /// A pool of `processes` workers with default settings: Python's `Pool(processes)`.
    ///
    /// ```
    /// fn square(x: u64) -> u64 {
    ///     x * x
    /// }
    ///
    /// let pool = mproc::Pool::new(2)?;
    /// assert_eq!(pool.processes(), 2);
    /// assert_eq!(pool.apply(square, 7)?, 49);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`PoolBuilder::build`].
    pub fn new(processes: usize) -> Result<Pool> {
        PoolBuilder::default().processes(processes).build()
    }

    /// A [`PoolBuilder`] for the pool's settings.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let pool = mproc::Pool::builder()
    ///     .processes(2)
    ///     .task_timeout(Duration::from_secs(60))
    ///     .build()?;
    /// assert_eq!(pool.processes(), 2);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn builder() -> PoolBuilder {
        PoolBuilder::default()
    }

    /// Number of worker processes the pool keeps (its `processes` setting).
    ///
    /// ```
    /// assert_eq!(mproc::Pool::new(2)?.processes(), 2);
    /// let default = mproc::Pool::builder().build()?;
    /// assert_eq!(default.processes(), mproc::cpu_count());
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn processes(&self) -> usize {
        self.processes
    }

    /// Workers running right now. Fewer than [`processes`](Pool::processes) while dead
    /// workers are being replaced, or while the OS refuses new processes (`fork` failing with
    /// `EAGAIN` under `ulimit -u`, say): the pool then runs short, retries with a growing
    /// backoff, and says so with a `tracing` warning (feature `tracing`). Tasks still run, on
    /// the workers it has.
    ///
    /// ```
    /// let pool = mproc::Pool::new(2)?;
    /// assert!(pool.workers() >= 1 && pool.workers() <= 2);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn workers(&self) -> usize {
        match &self.flavor {
            Flavor::Local { shared, .. } => shared.live.load(std::sync::atomic::Ordering::Relaxed),
            Flavor::Remote(_) => self.processes,
        }
    }

    /// Runs `f` on every item and returns the results in input order: Python's `map`.
    ///
    /// The input is collected first, then cut into chunks (Python's automatic chunk size:
    /// about four chunks per worker, at most 64 KiB of encoded items each; see
    /// [`map_chunked`](Pool::map_chunked) to choose). Items may be
    /// owned or borrowed (anything that [`Borrow`]s `A`): `pool.map(square, &v)` sends the
    /// values of `v` without cloning them.
    ///
    /// ```
    /// fn square(x: u64) -> u64 {
    ///     x * x
    /// }
    ///
    /// let pool = mproc::Pool::new(2)?;
    /// let v: Vec<u64> = (1..=4).collect();
    /// assert_eq!(pool.map(square, &v)?, [1, 4, 9, 16]);      // borrowed: v stays yours
    /// assert_eq!(pool.map(square, &v[1..])?, [4, 9, 16]);    // a slice
    /// assert_eq!(pool.map(square, v)?, [1, 4, 9, 16]);       // owned
    /// # Ok::<(), mproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// The first failure in input order: a task's panic, its worker's death, its timeout, or
    /// why the pool refused the work. [`Error::index`] says which item it was.
    pub fn map<A, R, T>(&self, f: fn(A) -> R, items: impl IntoIterator<Item = T>) -> Result<Vec<R>>
    where
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + 'static,
        T: Borrow<A>,
    {
        let items: Vec<T> = items.into_iter().collect();
        let n = items.len();
        self.map_async_impl(f, items, None)
            .get_streaming(n, decode_into::<R>)
    }

    /// [`map`](Pool::map) with an explicit chunk size (Python's `chunksize=`).
    ///
    /// ```
    /// fn square(x: u64) -> u64 {
    ///     x * x
    /// }
    ///
    /// let pool = mproc::Pool::new(2)?;
    /// let squares = pool.map_chunked(square, 1..=100, 25)?; // 4 chunks of 25 items
    /// assert_eq!(squares.len(), 100);
    /// assert_eq!(squares[99], 10_000);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`map`](Pool::map).
    pub fn map_chunked<A, R, T>(
        &self,
        f: fn(A) -> R,
        items: impl IntoIterator<Item = T>,
        chunksize: usize,
    ) -> Result<Vec<R>>
    where
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + 'static,
        T: Borrow<A>,
    {
        let items: Vec<T> = items.into_iter().collect();
        let n = items.len();
        self.map_async_impl(f, items, Some(chunksize.max(1)))
            .get_streaming(n, decode_into::<R>)
    }

    /// [`map`](Pool::map) without waiting: Python's `map_async`. The items are encoded
    /// before it returns, so borrowed items need not outlive the call.
    ///
    /// ```
    /// fn square(x: u64) -> u64 {
    ///     x * x
    /// }
    ///
    /// let pool = mproc::Pool::new(2)?;
    /// let pending = pool.map_async(square, 1..=4);
    /// // ... other work meanwhile ...
    /// assert_eq!(pending.get()?, [1, 4, 9, 16]);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn map_async<A, R, T>(
        &self,
        f: fn(A) -> R,
        items: impl IntoIterator<Item = T>,
    ) -> AsyncResult<Vec<R>>
    where
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + 'static,
        T: Borrow<A>,
    {
        self.map_async_impl(f, items.into_iter().collect(), None)
    }

    /// Runs `f(a, b, ...)` on every tuple, results in input order: Python's `starmap`, for
    /// functions of 2 to 6 arguments over tuples, owned or borrowed (see [`StarArgs`]).
    ///
    /// `f`'s type follows from the tuples', so a closure that captures nothing passes as it
    /// is; wrap a named function in one, `|a, b| add(a, b)` (or give its type,
    /// `add as fn(i64, i64) -> i64`): Rust makes a function pointer of a named function only
    /// where the pointer's type is already known.
    ///
    /// ```
    /// fn add(a: i64, b: i64) -> i64 {
    ///     a + b
    /// }
    /// fn clamp(x: i64, lo: i64, hi: i64) -> i64 {
    ///     x.clamp(lo, hi)
    /// }
    ///
    /// let pool = mproc::Pool::new(2)?;
    /// assert_eq!(pool.starmap(|a, b| add(a, b), [(1, 2), (3, 4)])?, [3, 7]);
    /// let args = vec![(5, 0, 3), (-1, 0, 3)];
    /// assert_eq!(pool.starmap(|x, lo, hi| clamp(x, lo, hi), &args)?, [3, 0]);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`map`](Pool::map).
    pub fn starmap<T, R>(&self, f: T::Fn<R>, items: impl IntoIterator<Item = T>) -> Result<Vec<R>>
    where
        T: StarArgs,
        R: Serialize + DeserializeOwned + 'static,
    {
        self.starmap_async(f, items)
            .get_streaming(0, decode_into::<R>)
    }

    /// [`starmap`](Pool::starmap) without waiting: Python's `starmap_async`. The tuples are
    /// encoded before it returns, so borrowed ones need not outlive the call.
    ///
    /// ```
    /// fn power(base: u64, exp: u32) -> u64 {
    ///     base.pow(exp)
    /// }
    ///
    /// let pool = mproc::Pool::new(2)?;
    /// let pending = pool.starmap_async(|b, e| power(b, e), [(2, 10), (3, 3)]);
    /// assert_eq!(pending.get()?, [1024, 27]);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn starmap_async<T, R>(
        &self,
        f: T::Fn<R>,
        items: impl IntoIterator<Item = T>,
    ) -> AsyncResult<Vec<R>>
    where
        T: StarArgs,
        R: Serialize + DeserializeOwned + 'static,
    {
        let items: Vec<T> = items.into_iter().collect();
        let fnref = FnRef::chunked(Star(f));
        self.map_chunks::<Star<T::Fn<R>>, T>(fnref, Pool::job_of_tuples::<T>, items, None)
    }

    /// Runs `f(arg)` in a worker and waits for the result: Python's `apply`.
    ///
    /// ```
    /// use mproc::ErrorKind;
    ///
    /// fn div(ab: (i64, i64)) -> i64 {
    ///     ab.0 / ab.1
    /// }
    ///
    /// let pool = mproc::Pool::new(2)?;
    /// assert_eq!(pool.apply(div, (7, 2))?, 3);
    /// let e = pool.apply(div, (1, 0)).unwrap_err(); // the worker's panic, as a value
    /// assert_eq!(e.kind(), ErrorKind::Panicked);
    /// assert_eq!(pool.apply(div, (9, 3))?, 3);       // and the pool goes on
    /// # Ok::<(), mproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`AsyncResult::get`].
    pub fn apply<A, R>(&self, f: fn(A) -> R, arg: A) -> Result<R>
    where
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + 'static,
    {
        let fnref = FnRef::chunked(f);
        let (frame, fds) = self.encode::<A, A>(fnref, std::slice::from_ref(&arg))?;
        let retries = self.max_retries;
        let (frame, fds) = match &self.flavor {
            Flavor::Local { shared, .. } => {
                match lease::run(shared, frame, fds, self.task_timeout, retries) {
                    Ok(outcome) => return finish_one(vec![outcome]),
                    Err(unsent) => unsent,
                }
            }
            Flavor::Remote(_) => (frame, fds),
        };
        let slot = Arc::new(Slot::default());
        let job = Batch::new(frame, fds, 1, Sink::Slot(Arc::clone(&slot), 0), retries);
        self.submit(vec![job])?;
        AsyncResult::new(Some(slot), finish_one::<R>).get()
    }

    /// As [`apply`](Pool::apply), returning what the task wrote to its stdout and stderr
    /// beside its result, instead of printing it (Python has no such call: its users redirect
    /// `sys.stdout` by hand inside the task).
    ///
    /// Everything the worker process writes to fds 1 and 2 while the task runs is captured,
    /// including C code's output and threads the task started. If the task panics, its output
    /// goes to the worker's streams as if uncaptured, and the panic is returned as usual.
    ///
    /// ```
    /// fn greet(name: String) -> usize {
    ///     println!("hello, {name}");
    ///     eprintln!("(a warning)");
    ///     name.len()
    /// }
    ///
    /// let pool = mproc::Pool::new(2)?;
    /// let c = pool.apply_captured(greet, "world".to_string())?;
    /// assert_eq!(c.value, 5);
    /// assert_eq!(c.stdout_text(), "hello, world\n");
    /// assert_eq!(c.stderr_text(), "(a warning)\n");
    /// # Ok::<(), mproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`apply`](Pool::apply).
    pub fn apply_captured<A, R>(&self, f: fn(A) -> R, arg: A) -> Result<Captured<R>>
    where
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + 'static,
    {
        let mut one = self
            .map_async_impl::<_, A>(CaptureOutput(f), vec![arg], Some(1))
            .get()?;
        one.pop().ok_or_else(|| Error::protocol("an empty reply"))
    }

    /// As [`map`](Pool::map), capturing each item's output as
    /// [`apply_captured`](Pool::apply_captured) does.
    ///
    /// ```
    /// fn shout(x: u64) -> u64 {
    ///     println!("{x}!");
    ///     x * 2
    /// }
    ///
    /// let pool = mproc::Pool::new(2)?;
    /// let out = pool.map_captured(shout, [1, 2])?;
    /// assert_eq!((out[0].value, out[0].stdout_text().as_ref()), (2, "1!\n"));
    /// assert_eq!((out[1].value, out[1].stdout_text().as_ref()), (4, "2!\n"));
    /// # Ok::<(), mproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`map`](Pool::map).
    pub fn map_captured<A, R, T>(
        &self,
        f: fn(A) -> R,
        items: impl IntoIterator<Item = T>,
    ) -> Result<Vec<Captured<R>>>
    where
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + 'static,
        T: Borrow<A>,
    {
        let items: Vec<T> = items.into_iter().collect();
        let n = items.len();
        self.map_async_impl(CaptureOutput(f), items, None)
            .get_streaming(n, decode_into::<Captured<R>>)
    }

    /// Runs `f(arg)` in a worker; the result arrives through the returned handle: Python's
    /// `apply_async`.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// fn square(x: u64) -> u64 {
    ///     x * x
    /// }
    ///
    /// let pool = mproc::Pool::new(2)?;
    /// let mut pending = pool.apply_async(square, 12);
    /// assert_eq!(pending.get_timeout(Duration::from_secs(60))?, 144);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn apply_async<A, R>(&self, f: fn(A) -> R, arg: A) -> AsyncResult<R>
    where
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + 'static,
    {
        let slot = Arc::new(Slot::default());
        let job = match self.batch::<A, A>(
            FnRef::chunked(f),
            std::slice::from_ref(&arg),
            Sink::Slot(Arc::clone(&slot), 0),
        ) {
            Ok(j) => j,
            Err(e) => return AsyncResult::failed(e),
        };
        match self.submit(vec![job]) {
            Ok(()) => self.handle(slot, finish_one::<R>),
            Err(e) => AsyncResult::failed(e),
        }
    }

    /// Lazily runs `f` over `items`, yielding results in input order: Python's `imap`. Only a
    /// bounded window of chunks is in flight, pulled from `items` as workers free up, so an
    /// endless iterator works and memory stays flat. Each result is yielded in its place; a
    /// failed item does not stop the iteration (its error's [`Error::index`] says which it
    /// was). Items may be owned or borrowed, as in [`map`](Pool::map).
    ///
    /// The chunk size is the pool's [`chunksize`](PoolBuilder::chunksize), else 1; see
    /// [`imap_chunked`](Pool::imap_chunked) to choose it per call.
    ///
    /// ```
    /// fn inverse(x: i64) -> i64 {
    ///     assert!(x != 0, "no inverse");
    ///     100 / x
    /// }
    ///
    /// let pool = mproc::Pool::new(2)?;
    /// let results: Vec<_> = pool.imap(inverse, [-1, 0, 4]).collect();
    /// assert_eq!(*results[0].as_ref().unwrap(), -100);
    /// assert_eq!(results[1].as_ref().unwrap_err().index(), Some(1)); // it failed alone
    /// assert_eq!(*results[2].as_ref().unwrap(), 25);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn imap<A, R, I>(&self, f: fn(A) -> R, items: I) -> Imap<'_, I::IntoIter, R>
    where
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + 'static,
        I: IntoIterator,
        I::Item: Borrow<A>,
    {
        self.imap_chunked(f, items, self.chunksize.unwrap_or(1))
    }

    /// [`imap`](Pool::imap) with an explicit chunk size (Python's `imap(f, it, chunksize)`):
    /// items travel `chunksize` at a time (at least 1), whatever the pool's default.
    ///
    /// ```
    /// fn square(x: u64) -> u64 {
    ///     x * x
    /// }
    ///
    /// let pool = mproc::Pool::new(2)?;
    /// let squares: Vec<u64> = pool.imap_chunked(square, 1..=100, 10).collect::<Result<_, _>>()?;
    /// assert_eq!(squares[99], 10_000);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn imap_chunked<A, R, I>(
        &self,
        f: fn(A) -> R,
        items: I,
        chunksize: usize,
    ) -> Imap<'_, I::IntoIter, R>
    where
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + 'static,
        I: IntoIterator,
        I::Item: Borrow<A>,
    {
        Imap::new(
            self,
            FnRef::chunked(f),
            Pool::submit_chunk::<A, I::Item>,
            items.into_iter(),
            chunksize.max(1),
        )
    }

    /// As [`imap`](Pool::imap), yielding results as they complete: Python's
    /// `imap_unordered`. A failed item's error says which input it was ([`Error::index`]).
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// fn nap(ms: u64) -> u64 {
    ///     std::thread::sleep(Duration::from_millis(ms));
    ///     ms
    /// }
    ///
    /// let pool = mproc::Pool::new(2)?;
    /// let mut naps = pool.imap_unordered(nap, [60_000, 0]);
    /// assert_eq!(naps.next().transpose()?, Some(0)); // the quick one first
    /// // (dropping the pool kills the worker still running the slow one)
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn imap_unordered<A, R, I>(
        &self,
        f: fn(A) -> R,
        items: I,
    ) -> ImapUnordered<'_, I::IntoIter, R>
    where
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + 'static,
        I: IntoIterator,
        I::Item: Borrow<A>,
    {
        self.imap_unordered_chunked(f, items, self.chunksize.unwrap_or(1))
    }

    /// [`imap_unordered`](Pool::imap_unordered) with an explicit chunk size (Python's
    /// `imap_unordered(f, it, chunksize)`).
    ///
    /// ```
    /// fn square(x: u64) -> u64 {
    ///     x * x
    /// }
    ///
    /// let pool = mproc::Pool::new(2)?;
    /// let squares = pool.imap_unordered_chunked(square, 1..=100, 10);
    /// let mut squares: Vec<u64> = squares.collect::<Result<_, _>>()?;
    /// squares.sort();
    /// assert_eq!(squares[..3], [1, 4, 9]);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn imap_unordered_chunked<A, R, I>(
        &self,
        f: fn(A) -> R,
        items: I,
        chunksize: usize,
    ) -> ImapUnordered<'_, I::IntoIter, R>
    where
        A: Serialize + DeserializeOwned + 'static,
        R: Serialize + DeserializeOwned + 'static,
        I: IntoIterator,
        I::Item: Borrow<A>,
    {
        ImapUnordered::new(
            self,
            FnRef::chunked(f),
            Pool::submit_chunk::<A, I::Item>,
            items.into_iter(),
            chunksize.max(1),
        )
    }

    /// Stops accepting tasks; queued and running ones still complete. Python's `close()`.
    ///
    /// ```
    /// use mproc::ErrorKind;
    ///
    /// fn square(x: u64) -> u64 {
    ///     x * x
    /// }
    ///
    /// let pool = mproc::Pool::new(2)?;
    /// let queued = pool.apply_async(square, 3);
    /// pool.close();
    /// assert_eq!(pool.apply(square, 4).unwrap_err().kind(), ErrorKind::Closed);
    /// pool.join()?;
    /// assert_eq!(queued.get()?, 9); // work queued before the close still completes
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn close(&self) {
        match &self.flavor {
            Flavor::Local { shared, .. } => {
                let mut q = shared.lock();
                q.closed = true;
                shared.wake_locked(q);
            }
            Flavor::Remote(r) => r.close(),
        }
    }

    /// Waits until every task has completed and every worker has exited; call
    /// [`close`](Pool::close) first. Python's `join()`.
    ///
    /// ```
    /// use mproc::ErrorKind;
    ///
    /// fn square(x: u64) -> u64 {
    ///     x * x
    /// }
    ///
    /// let pool = mproc::Pool::new(2)?;
    /// let squares = pool.map_async(square, 1..=4);
    /// assert_eq!(pool.join().unwrap_err().kind(), ErrorKind::Usage); // not closed yet
    /// pool.close();
    /// pool.join()?;
    /// assert!(squares.ready());
    /// assert_eq!(squares.get()?, [1, 4, 9, 16]);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`ErrorKind::Usage`](crate::ErrorKind::Usage) if the pool was not closed (or
    /// terminated) first, as in Python.
    pub fn join(&self) -> Result<()> {
        let (shared, supervisor) = match &self.flavor {
            Flavor::Local { shared, supervisor } => (shared, supervisor),
            Flavor::Remote(r) => return r.join(),
        };
        {
            let q = shared.lock();
            if !q.closed && !q.terminate {
                return Err(Error::usage("join() needs close() or terminate() first"));
            }
        }
        let handle = supervisor
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(h) = handle {
            h.join()
                .map_err(|_| Error::broken("the pool's supervisor thread panicked"))?;
        }
        Ok(())
    }

    /// Kills every worker at once (SIGKILL) and reaps it; queued and running tasks fail with
    /// [`ErrorKind::Closed`](crate::ErrorKind::Closed). Python's `terminate()`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use mproc::ErrorKind;
    ///
    /// fn nap(secs: u64) -> u64 {
    ///     std::thread::sleep(Duration::from_secs(secs));
    ///     secs
    /// }
    ///
    /// let pool = mproc::Pool::new(2)?;
    /// let running = pool.apply_async(nap, 60);
    /// pool.terminate(); // returns at once: the worker is killed, not waited for
    /// assert_eq!(running.get().unwrap_err().kind(), ErrorKind::Closed);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn terminate(&self) {
        let (shared, supervisor) = match &self.flavor {
            Flavor::Local { shared, supervisor } => (shared, supervisor),
            Flavor::Remote(r) => return r.terminate(),
        };
        let mut q = shared.lock();
        q.terminate = true;
        shared.wake_locked(q);
        let handle = supervisor
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }

    fn map_async_impl<F: Callable, T: Borrow<F::Args>>(
        &self,
        f: F,
        items: Vec<T>,
        chunksize: Option<usize>,
    ) -> AsyncResult<Vec<F::Out>> {
        let fnref = FnRef::chunked(f);
        self.map_chunks::<F, T>(fnref, Pool::batch::<F::Args, T>, items, chunksize)
    }

    /// Cuts `items` into chunks for the function `fnref`, of type `F`, each made a job by
    /// `job`, and submits them.
    fn map_chunks<F: Callable, T>(
        &self,
        fnref: Option<FnRef>,
        job: MakeJob<T>,
        items: Vec<T>,
        chunksize: Option<usize>,
    ) -> AsyncResult<Vec<F::Out>> {
        let chunksize = chunksize
            .or(self.chunksize)
            .unwrap_or_else(|| self.auto_chunk(fnref, job, &items));
        let chunks = items.chunks(chunksize.max(1));
        if chunks.len() == 0 {
            return AsyncResult::new(None, finish_map::<F::Out>);
        }
        let slot = Arc::new(Slot::new(chunks.len()));
        // Jobs are submitted as they are encoded, in batches that double (1, 2, 4...): the
        // workers start on the first chunks while the caller encodes the rest.
        let (mut jobs, mut batch) = (Vec::new(), 1);
        let last = chunks.len() - 1;
        for (i, chunk) in chunks.enumerate() {
            let submitted = job(self, fnref, chunk, Sink::Slot(Arc::clone(&slot), i))
                .map(|j| jobs.push(j))
                .and_then(|()| {
                    if jobs.len() < batch && i < last {
                        return Ok(());
                    }
                    batch *= 2;
                    self.submit(std::mem::take(&mut jobs))
                });
            if let Err(e) = submitted {
                // The jobs already queued are withdrawn; those running finish unseen.
                self.handle(slot, finish_map::<F::Out>).cancel();
                return AsyncResult::failed(e);
            }
        }
        self.handle(slot, finish_map::<F::Out>)
    }

    /// The automatic chunk size for `items`: Python's (about four chunks per worker), but no
    /// larger than [`CHUNK_BYTES`] of encoded items, as the first item's size predicts (a
    /// chunk of one item and an empty one are encoded to measure it). A `map` of a million
    /// integers then moves in 64 KiB frames, not in 1 MiB ones, which ran at 0.5-0.6x the
    /// speed here (16-256 KiB measured: 64 KiB was best): every large frame is fresh memory
    /// to fault in on each side, and a worker waits for its next chunk until the supervisor
    /// has read its last answer.
    fn auto_chunk<T>(&self, fnref: Option<FnRef>, job: MakeJob<T>, items: &[T]) -> usize {
        let auto = auto_chunksize(items.len(), self.processes);
        if auto <= 1 {
            return auto;
        }
        let frame_of = |n: usize| {
            let sink = Sink::Slot(Arc::new(Slot::new(1)), 0);
            job(self, fnref, &items[..n], sink).map_or(0, |b| b.frame.len())
        };
        let one = frame_of(1).saturating_sub(frame_of(0)).max(1);
        auto.min((CHUNK_BYTES / one).max(1))
    }

    /// Encodes a chunk of arguments (each read through its borrow) into a `Run` frame and the
    /// fds of handles inside them.
    fn encode<A: Serialize, T: Borrow<A>>(
        &self,
        f: Option<FnRef>,
        chunk: &[T],
    ) -> Result<(Vec<u8>, Fds)> {
        encode_chunk::<A>(self.large(), f, &ByBorrow::<A, T>::new(chunk), chunk.len())
    }

    /// Encodes a chunk of arguments into a job.
    fn batch<A: Serialize, T: Borrow<A>>(
        &self,
        f: Option<FnRef>,
        chunk: &[T],
        sink: Sink,
    ) -> Result<Batch> {
        let (frame, fds) = self.encode::<A, T>(f, chunk)?;
        Ok(Batch::new(frame, fds, chunk.len(), sink, self.max_retries))
    }

    /// Encodes a chunk of `starmap` tuples, owned or borrowed (both encode as the tuple),
    /// into a job.
    fn job_of_tuples<T: StarArgs>(
        &self,
        f: Option<FnRef>,
        chunk: &[T],
        sink: Sink,
    ) -> Result<Batch> {
        let (frame, fds) = encode_chunk::<T::Tuple>(self.large(), f, chunk, chunk.len())?;
        Ok(Batch::new(frame, fds, chunk.len(), sink, self.max_retries))
    }

    /// Queues a `Run` frame encoded elsewhere (by another MPI rank), without fds; its outcome
    /// arrives on `tx` tagged with `key`. The MPI rank server's way into its local workers.
    #[cfg(feature = "mpi")]
    pub(crate) fn submit_frame(
        &self,
        frame: Vec<u8>,
        items: usize,
        tx: std::sync::mpsc::Sender<(usize, Outcome)>,
        key: usize,
    ) -> Result<()> {
        let sink = Sink::Channel(tx, key);
        self.submit(vec![Batch::new(frame, None, items, sink, self.max_retries)])
    }

    /// Writes a `Run` frame encoded elsewhere (by another MPI rank) to an idle worker
    /// borrowed from this pool, skipping the supervisor's two hand-offs; gives the frame back
    /// if none is idle. Poll the result, then [`settle_borrowed`](Pool::settle_borrowed).
    /// A small task goes by the worker's mailbox, and is hot: the worker looks a while for
    /// the next one before it sleeps, as after an `apply`.
    #[cfg(feature = "mpi")]
    pub(crate) fn borrow_for_frame(
        &self,
        mut frame: Vec<u8>,
        items: usize,
    ) -> std::result::Result<Borrowed, Vec<u8>> {
        let Flavor::Local { shared, .. } = &self.flavor else {
            return Err(frame);
        };
        crate::wire::msg::set_run_flag(&mut frame, crate::wire::msg::FLAG_HOT);
        lease::borrow(shared, frame, None, items, self.task_timeout).map_err(|(frame, _)| frame)
    }

    /// Settles a borrowed frame once polled; its outcome arrives on `tx` tagged with `key`
    /// (at once for an answer; after the supervisor settled a lost worker's task otherwise).
    #[cfg(feature = "mpi")]
    pub(crate) fn settle_borrowed(
        &self,
        b: Borrowed,
        polled: std::result::Result<Reply, BorrowLost>,
        tx: std::sync::mpsc::Sender<(usize, Outcome)>,
        key: usize,
    ) {
        let sink = Sink::Channel(tx, key);
        let Flavor::Local { shared, .. } = &self.flavor else {
            // Only a local pool lends workers (see `borrow_for_frame`).
            return sink.deliver(vec![Part::rest(Error::protocol("no worker was lent"))]);
        };
        lease::settle(shared, b, polled, sink, self.max_retries)
    }

    /// Encodes a chunk of arguments (each read through its borrow) and queues it.
    pub(crate) fn submit_chunk<A: Serialize, T: Borrow<A>>(
        &self,
        f: Option<FnRef>,
        chunk: &[T],
        sink: Sink,
    ) -> Result<()> {
        let job = self.batch::<A, T>(f, chunk, sink)?;
        self.submit(vec![job])
    }

    /// Queues jobs on the pool's flavor: its supervisor's backlog, or the remote engine. No
    /// fd crosses to a remote one: if a job holds any, none is queued.
    fn submit(&self, jobs: Vec<Batch>) -> Result<()> {
        let remote = match &self.flavor {
            Flavor::Local { shared, .. } => return shared.submit(jobs),
            Flavor::Remote(r) => r,
        };
        if jobs.iter().any(|j| j.fds.is_some()) {
            return Err(Error::unsupported(
                "arguments holding fds (queues, pipes, locks, shared memory) cannot cross MPI ranks",
            ));
        }
        for job in jobs {
            let (frame, items, sink) = job.into_remote();
            remote.submit(frame, items, sink)?;
        }
        Ok(())
    }

    /// The handle of jobs submitted with `slot`: cancellable on a local pool (a remote
    /// flavor cannot withdraw what it sent: `cancel` returns false there).
    fn handle<R>(&self, slot: Arc<Slot>, finish: result::Finish<R>) -> AsyncResult<R> {
        let handle = AsyncResult::new(Some(slot), finish);
        match &self.flavor {
            Flavor::Local { shared, .. } => handle.cancellable(shared),
            Flavor::Remote(_) => handle,
        }
    }

    /// Where a job's large arguments go: a memfd for local workers; inline for a remote
    /// flavor, whose frames leave the machine.
    fn large(&self) -> Large {
        match &self.flavor {
            Flavor::Local { .. } => Large::Spill,
            Flavor::Remote(_) => Large::Inline,
        }
    }

    /// The engine of a pool of another flavor; `None` for a local pool.
    #[cfg_attr(not(feature = "mpi"), allow(dead_code))]
    pub(crate) fn remote(&self) -> Option<&dyn Remote> {
        match &self.flavor {
            Flavor::Local { .. } => None,
            Flavor::Remote(r) => Some(&**r),
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.terminate();
    }
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("processes", &self.processes)
            .finish()
    }
}

/// The thread-count variables for the workers (see [`PoolBuilder::threads_per_worker`]):
/// `explicit` if set (0: none), else `cpu_count / processes`; never one set in `env`, and for
/// the default, never one set in this process's environment.
fn thread_vars(
    explicit: Option<usize>,
    processes: usize,
    env: &[(OsString, OsString)],
) -> Vec<(OsString, OsString)> {
    let n = explicit.unwrap_or_else(|| (crate::cpu_count() / processes.max(1)).max(1));
    if n == 0 {
        return Vec::new();
    }
    THREAD_VARS
        .iter()
        .filter(|var| !env.iter().any(|(k, _)| k == **var))
        .filter(|var| explicit.is_some() || std::env::var_os(var).is_none())
        .map(|var| (OsString::from(var), OsString::from(n.to_string())))
        .collect()
}

/// Makes a job of a chunk of items: how the items of a request are encoded.
type MakeJob<T> = fn(&Pool, Option<FnRef>, &[T], Sink) -> Result<Batch>;

/// Encodes `len` arguments of type `A` (as `chunk`, which serializes as a `Vec<A>`) into a
/// `Run` frame and the fds of handles inside them; a large argument goes as `large` says.
fn encode_chunk<A>(
    large: Large,
    f: Option<FnRef>,
    chunk: &(impl Serialize + ?Sized),
    len: usize,
) -> Result<(Vec<u8>, Fds)> {
    let f = f.ok_or_else(|| Error::usage(crate::sys::fnptr::NOT_IN_MAIN_IMAGE))?;
    let role = if len == 1 {
        codec::Role::Argument
    } else {
        codec::Role::Arguments
    };
    let (frame, fds) = run::encode::<A>(0, f, chunk, role, large).map_err(Error::codec)?;
    Ok((frame, fds::shared(fds)))
}

/// The most encoded bytes an automatic chunk holds (see `Pool::auto_chunk`).
const CHUNK_BYTES: usize = 64 << 10;

/// Python's automatic chunk size for `map`: about four chunks per worker.
pub(crate) fn auto_chunksize(len: usize, processes: usize) -> usize {
    let per = processes.max(1) * 4;
    (len / per + usize::from(len % per != 0)).max(1)
}

/// Decodes one job's outcome into its `items` items' results, in order.
pub(crate) fn decode_chunk<R: DeserializeOwned>(outcome: Outcome, items: usize) -> Vec<Result<R>> {
    decode_chunk_inner(outcome, items, None)
}

/// As [`decode_chunk`], for a job whose first item is item `first` of its input: each
/// failure names its item ([`Error::index`]) and the worker that ran it.
pub(crate) fn decode_chunk_at<R: DeserializeOwned>(
    outcome: Outcome,
    items: usize,
    first: usize,
) -> Vec<Result<R>> {
    decode_chunk_inner(outcome, items, Some(first))
}

fn decode_chunk_inner<R: DeserializeOwned>(
    outcome: Outcome,
    items: usize,
    first: Option<usize>,
) -> Vec<Result<R>> {
    let mut out: Vec<Result<R>> = Vec::with_capacity(items);
    for part in outcome {
        let left = items - out.len();
        if left == 0 {
            break;
        }
        let before = out.len();
        match part.what {
            Ok(answer) => {
                let decoded = Items::parse(answer.payload()).and_then(|list| {
                    list.decode_each::<R>(|r| {
                        out.push(r);
                        out.len() < items
                    })
                });
                if let Err(e) = decoded {
                    // Whatever the part claimed and did not hold fails with the reason.
                    let target = before + part.count.min(left);
                    out.extend(repeat_error(e, target.saturating_sub(out.len())));
                }
            }
            Err(e) => out.extend(repeat_error(e, part.count.min(left))),
        }
        if let Some(first) = first {
            place_errors(&mut out[before..], first + before, part.worker);
        }
    }
    if out.len() < items {
        let (before, left) = (out.len(), items - out.len());
        out.extend(repeat_error(Error::protocol("a result was lost"), left));
        if let Some(first) = first {
            place_errors(&mut out[before..], first + before, None);
        }
    }
    out
}

/// Names each failure in `results` (the first being item `first`) with its item and worker.
fn place_errors<R>(results: &mut [Result<R>], first: usize, worker: Option<u32>) {
    for (k, r) in results.iter_mut().enumerate() {
        if let Err(e) = r {
            let e = std::mem::replace(e, Error::protocol(""));
            *r = Err(e.at_item(first + k, worker));
        }
    }
}

fn repeat_error<R>(e: Error, items: usize) -> Vec<Result<R>> {
    if items == 0 {
        return Vec::new();
    }
    let mut out: Vec<Result<R>> = (1..items).map(|_| Err(e.duplicate())).collect();
    out.push(Err(e));
    out
}

/// A worker's message sorted as the supervisor sorts it (for `__fuzz`): `true` if it is one.
#[cfg(feature = "fuzzing")]
pub(crate) fn classify_for_fuzz(frame: Vec<u8>) -> bool {
    crate::task::reply::classify(frame, None).is_ok()
}

pub(crate) fn finish_one<R: DeserializeOwned>(outcomes: Vec<Outcome>) -> Result<R> {
    let outcome = outcomes
        .into_iter()
        .next()
        .ok_or_else(|| Error::protocol("no outcome"))?;
    decode_chunk(outcome, 1)
        .into_iter()
        .next()
        .unwrap_or_else(|| Err(Error::protocol("an empty reply")))
}

/// The values of every item of every job, in order; the first failure in input order fails
/// the map, naming its item ([`Error::index`]) and worker.
pub(crate) fn finish_map<R: DeserializeOwned>(outcomes: Vec<Outcome>) -> Result<Vec<R>> {
    let mut out = Vec::new();
    for outcome in outcomes {
        decode_into(&mut out, outcome)?;
    }
    Ok(out)
}

/// Appends the values of one job's outcome to `out`, the values of the jobs before it; or
/// the job's first failure, placed at its item (`out.len()` is the index of the job's first).
pub(crate) fn decode_into<R: DeserializeOwned>(out: &mut Vec<R>, outcome: Outcome) -> Result<()> {
    for part in outcome {
        let worker = part.worker;
        // Every item before this part succeeded: the failure is item `out.len()` or after.
        let place = |e: Error, at: usize| e.at_item(at, worker);
        let answer = part.what.map_err(|e| place(e, out.len()))?;
        let items = Items::parse(answer.payload()).map_err(|e| place(e, out.len()))?;
        if let Some(e) = items.decode_values(out).map_err(|e| place(e, out.len()))? {
            return Err(place(e, out.len()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::result::Answer;
    use super::*;
    use crate::task::chunk;

    /// A `Done` body of `count` bare u64 values.
    fn done(values: &[u64]) -> Answer {
        let mut items = Vec::new();
        for v in values {
            codec::encode_into(v, &mut items).unwrap();
        }
        let n = values.len() as u64;
        Answer::Frame(chunk::rebuild(n, n, &items))
    }

    fn part(count: usize, what: Result<Answer>) -> Part {
        Part {
            count,
            what,
            worker: None,
        }
    }

    #[test]
    fn parts_decode_in_order_with_their_own_failures() {
        let outcome = vec![
            part(2, Ok(done(&[1, 4]))),
            part(1, Err(Error::timed_out())),
            part(2, Ok(done(&[16, 25]))),
        ];
        let got = decode_chunk::<u64>(outcome, 5);
        assert_eq!(got.len(), 5);
        assert_eq!(*got[1].as_ref().unwrap(), 4);
        assert!(got[2].as_ref().unwrap_err().is_timeout());
        assert_eq!(*got[4].as_ref().unwrap(), 25);
        let all = vec![
            vec![part(2, Ok(done(&[1, 4])))],
            vec![part(1, Ok(done(&[9])))],
        ];
        assert_eq!(finish_map::<u64>(all).unwrap(), [1, 4, 9]);
    }

    #[test]
    fn hostile_chunk_replies_are_errors() {
        let short = Answer::Frame(vec![0x11, 1, 2]);
        let lying = Answer::Frame(chunk::rebuild(1 << 40, 0, &[1, 2]));
        // Any 8 bytes are a u64: 7 are not.
        let garbage = Answer::Frame(chunk::rebuild(2, 2, &[0xff; 7]));
        for a in [short, lying, garbage] {
            let got = decode_chunk::<u64>(vec![part(2, Ok(a))], 2);
            assert_eq!(got.len(), 2);
            assert!(got.iter().all(|r| r.is_err()));
        }
        let garbage = Answer::Frame(chunk::rebuild(2, 2, &[0xff; 7]));
        assert!(finish_map::<u64>(vec![vec![part(2, Ok(garbage))]]).is_err());
    }
}
