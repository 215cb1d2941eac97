//! Python's `multiprocessing`, done right, for Rust: functions run in real OS processes, each
//! with its own memory, through the API Python users know.
//!
//! ```
//! use mproc::Process;
//!
//! fn square(x: u64) -> u64 {
//!     x * x
//! }
//!
//! let mut p = Process::spawn(square, 7)?;  // Process(target=square, args=(7,)).start()
//! assert_eq!(p.join()?, 49);                // join() returns the function's result
//! # Ok::<(), mproc::Error>(())
//! ```
//!
//! No `init()` call, no `if __name__ == "__main__"` guard and no macro: this works in `main`,
//! in unit and integration tests and in doc tests like the one above.
//!
//! # Processes
//! [`Process::spawn`] starts `f(arg)` in a child; [`Process::join`] returns what `f` returned,
//! or an [`Error`] that says how the child failed: a panic comes back with its message,
//! location and (with `RUST_BACKTRACE`) backtrace, a crash with its signal, `exit(3)` with its
//! code. [`Process::builder`] sets a name, a [`StartMethod`], environment variables and stdio.
//!
//! Functions cross as `fn` pointers: `fn` items and closures that capture nothing. Data
//! crosses as the argument and the result, which are serde values (`Serialize +
//! DeserializeOwned`).
//!
//! # Pools
//! [`Pool`] is Python's `Pool`: [`map`](Pool::map), [`imap`](Pool::imap),
//! [`imap_unordered`](Pool::imap_unordered), [`starmap`](Pool::starmap),
//! [`apply`](Pool::apply) and [`apply_async`](Pool::apply_async) (an [`AsyncResult`], which is
//! also a `Future`), [`close`](Pool::close), [`join`](Pool::join),
//! [`terminate`](Pool::terminate). One supervisor thread per pool owns the workers: a task
//! that panics fails alone; a worker that crashes or is killed fails only the task it was
//! running (or that task is re-run, [`max_retries`](PoolBuilder::max_retries)) and is
//! replaced; [`task_timeout`](PoolBuilder::task_timeout) kills runaway tasks; the pool never
//! hangs on a lost worker. A handle can be [cancelled](AsyncResult::cancel), running or not,
//! and many handles waited on at once, as with `concurrent.futures`: [`as_completed`] yields
//! results in completion order, [`wait`] returns when the first completes or fails, or all do.
//! A failed item's error says which item it was
//! ([`Error::index`]). Each worker may keep a state of its own, built once
//! ([`PoolBuilder::worker_state`], [`Pool::map_with_state`]).
//!
//! ```
//! fn square(x: u64) -> u64 {
//!     x * x
//! }
//!
//! let pool = mproc::Pool::new(2)?;
//! assert_eq!(pool.map(square, 1..=4)?, [1, 4, 9, 16]);
//! let first: Vec<u64> = pool.imap(square, 1..).take(3).collect::<mproc::Result<_>>()?;
//! assert_eq!(first, [1, 4, 9]);
//! # Ok::<(), mproc::Error>(())
//! ```
//!
//! # Queues and pipes
//! [`Queue`] (and [`JoinableQueue`], [`SimpleQueue`]) carries values between any number of
//! producer and consumer processes; [`pipe`] makes two connected [`Connection`] ends, for two
//! processes talking both ways. Pass a handle (or a clone) inside the argument of a
//! [`Process`] or a pool task: the object is shared, not copied. A queue lives in shared
//! memory and has no feeder thread: once `put` returns, the value is in the queue, even if the
//! putting process dies a moment later.
//!
//! ```
//! use mproc::{Process, Queue};
//!
//! fn worker((q, id): (Queue<String>, u32)) {
//!     q.put(format!("hello from worker {id}")).unwrap();
//! }
//!
//! let q = Queue::new()?;
//! let mut ps: Vec<_> = (0..3).map(|id| Process::spawn(worker, (q.clone(), id))).collect::<Result<_, _>>()?;
//! for p in &mut ps {
//!     p.join()?;
//! }
//! let mut got: Vec<String> = (0..3).map(|_| q.get()).collect::<Result<_, _>>()?;
//! got.sort();
//! assert_eq!(got[0], "hello from worker 0");
//! # Ok::<(), mproc::Error>(())
//! ```
//!
//! # Locks and synchronisation
//! [`Lock`], [`RLock`], [`Semaphore`], [`BoundedSemaphore`], [`Event`], [`Condition`] and
//! [`Barrier`] work across processes, with `_timeout` forms. Locks are *robust*: when a process
//! dies holding one (even by SIGKILL), the next process to lock it gets it at once and is told
//! the lock was abandoned ([`LockGuard::was_abandoned`]), where Python deadlocks everyone.
//!
//! # Shared memory
//! [`Value`] and [`Array`] hold plain-old-data ([`Pod`]) in shared memory behind a
//! robust lock, like Python's `Value` and `Array` with `lock=True`; a worker writing into an
//! `Array` is seen by the parent without a copy. [`SharedMemory`] is a raw block of bytes that
//! an unrelated process can open by [`name`](SharedMemory::name).
//!
//! A struct of your own goes in a `Value` with mproc's re-export of bytemuck's derives (no
//! `bytemuck` dependency of yours needed; the `crate` attribute points the derive at it):
//!
//! ```
//! #[derive(Clone, Copy, Debug, PartialEq, mproc::Pod, mproc::Zeroable)]
//! #[bytemuck(crate = "mproc::bytemuck")]
//! #[repr(C)]
//! struct Point {
//!     x: f64,
//!     y: f64,
//! }
//!
//! fn shift(p: mproc::Value<Point>) {
//!     p.lock().expect("the lock").x += 1.0;
//! }
//!
//! let p = mproc::Value::new(Point { x: 1.0, y: 2.0 })?;
//! mproc::Process::spawn(shift, p.clone())?.join()?;
//! assert_eq!(p.get()?, Point { x: 2.0, y: 2.0 });
//! # Ok::<(), mproc::Error>(())
//! ```
//!
//! Every one of these objects is an anonymous memory file (`memfd`): the kernel frees it when
//! the last process holding it exits, however it exits. Nothing is created in `/dev/shm`, so
//! nothing can leak there (Python leaks semaphores and segments when a process is killed).
//!
//! # How a child runs your function
//! A child is this same executable, started with a marker in its environment. A load-time
//! constructor inside mproc sees the marker and runs the worker loop *before* `main`, so code
//! in `main` never runs in children (Python's `__main__` rule, without the guard). The function
//! travels as its offset from a fixed symbol; the child first checks that it runs the same
//! binary (its build id), and refuses with
//! [`ErrorKind::BinaryMismatch`] otherwise.
//!
//! # Start methods
//! [`StartMethod::ForkServer`] (the default on Linux) forks children from a small server
//! started once; [`StartMethod::Spawn`] re-executes the program for each child;
//! [`StartMethod::Fork`] forks the caller (fastest, with the hazards documented there).
//!
//! # Output
//! Children write to the parent's stdout and stderr, as in Python. With
//! [`Stdio::Prefixed`] (on [`Builder`] or [`PoolBuilder`]) each line is relayed whole by the
//! parent, prefixed with the child's name and pid, so output of many workers never mixes
//! mid-line. [`Pool::apply_captured`] and [`Pool::map_captured`] instead return what a task
//! printed with its result, as a [`Captured`].
//!
//! # Children never outlive their parent
//! Every child, and the fork server, is killed by the kernel when the parent dies, even by
//! SIGKILL (`PR_SET_PDEATHSIG`). Dropping a running [`Process`] kills and reaps it. Every
//! worker and child leads its own process group, and whenever mproc kills or reaps one it
//! kills its group too, so a task's own subprocesses die with it. Two things escape: a
//! subprocess that leaves the group (`setsid`, `setpgid`, a shell with job control), and a
//! task's subprocesses when the parent itself is SIGKILLed (the workers die, but nothing is
//! left to kill their groups).
//!
//! # Crate features
//! - `progress` (off by default): `ProgressExt::progress` draws a progress bar (rate, ETA,
//!   failures) over `imap` / `imap_unordered` results, on stderr when it is a terminal.
//! - `tracing` (off by default): `tracing` events (target `mproc`) for worker start and exit
//!   with its cause, respawns, task timeouts and retries.
//! - `mpi` (off by default): `Pool::builder().mpi()`, the same [`Pool`] over the ranks of an
//!   MPI job, each rank running its tasks in local worker processes (see `mproc::mpi`). Needs
//!   an MPI library (Open MPI) and libclang at build time.
//!
//! # Platform support
//! Linux (tested). The code is split so that other Unixes can follow: everything
//! platform-specific is in one module, with fallbacks for systems without pidfds or a fork
//! server.
//!
//! # Limitations
//! - The function must live in the main executable, not in a dynamic library loaded at run
//!   time (`-C prefer-dynamic` builds are not supported yet).
//! - mproc reaps its children with `waitpid` on their pid: a program that reaps every child
//!   itself (`waitpid(-1)`, or `SIGCHLD` set to ignore) takes their exit status away.
//! - A platform where load-time constructors do not run needs [`init`] at the top of `main`.
//! - Under the `Fork` start method a child inherits every fd of the parent, as with Python's
//!   `fork`; under `ForkServer` and `Spawn` it inherits only stdio.

#![deny(missing_docs)]
// Every `unsafe` lives in `sys`, the OS layer, behind safe functions.
#![deny(unsafe_code)]

mod capture;
mod child;
mod error;
mod ipc;
#[cfg(feature = "mpi")]
pub mod mpi;
mod output;
mod pool;
mod process;
#[cfg(feature = "progress")]
mod progress;
#[allow(unsafe_code)]
mod sys;
mod task;
mod trace;
mod wire;

/// Entry points for the fuzz targets in `fuzz/`; not part of the API.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod __fuzz {
    use crate::wire::frame::FrameReader;
    use crate::wire::msg;

    /// Bytes a hostile worker could send, through the parent's frame reader (with a message
    /// limit of `limit` bytes) and every decoder of worker messages. Must return, never panic
    /// or allocate past the limit.
    pub fn worker_stream(data: &[u8], limit: u64) {
        let mut reader = FrameReader::new(limit);
        let mut src = data;
        while let Ok(frame) = reader.read_frame(&mut src) {
            assert!(frame.len() as u64 <= limit.max(data.len() as u64));
            let _ = msg::parse_run(&frame);
            let _ = msg::parse_fds(&frame);
            let _ = msg::is_exit(&frame);
            let _ = crate::pool::classify_for_fuzz(frame);
        }
    }
}

/// mproc's value codec as `benches/codec.rs` measures it (the crate-private functions the
/// wire calls); not part of the API.
#[doc(hidden)]
pub mod __codec {
    /// Appends the encoding of `value` to `out` (`wire::codec::encode_into`).
    pub fn encode_into<T: serde::Serialize + ?Sized>(
        value: &T,
        out: &mut Vec<u8>,
    ) -> Result<(), String> {
        crate::wire::codec::encode_into(value, out)
    }

    /// Decodes a `T` that fills `bytes` (`wire::codec::decode`).
    pub fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
        crate::wire::codec::decode(bytes)
    }

    /// Decodes a `T` from the front of `bytes`, borrowing from them; returns the rest
    /// (`wire::codec::decode_prefix`).
    pub fn decode_prefix<'de, T: serde::Deserialize<'de>>(
        bytes: &'de [u8],
    ) -> Result<(T, &'de [u8]), String> {
        crate::wire::codec::decode_prefix(bytes)
    }
}

/// The [bytemuck](https://docs.rs/bytemuck) crate mproc uses, for the derives' `crate`
/// attribute (`#[bytemuck(crate = "mproc::bytemuck")]`) and its casts.
pub use bytemuck;
/// bytemuck's traits for plain-old-data, which [`Value`] and [`Array`] need, and (in the
/// macro namespace) their derives: `#[derive(mproc::Pod, mproc::Zeroable)]` with
/// `#[bytemuck(crate = "mproc::bytemuck")]` (see [Shared memory](crate#shared-memory)).
pub use bytemuck::{Pod, Zeroable};
pub use capture::Captured;
pub use error::{Error, ErrorKind, ExitStatus, RemotePanic, Result};
pub use ipc::{Array, ArrayGuard, Connection, SharedMemory, Value, ValueGuard, pipe};
pub use ipc::{
    Barrier, BarrierWaitResult, BoundedSemaphore, Condition, Event, Lock, LockGuard, RLock,
    RLockGuard, Semaphore, SemaphoreGuard,
};
pub use ipc::{JoinableQueue, PutError, Queue, SimpleQueue};
pub use pool::{
    AsCompleted, AsyncResult, Imap, ImapUnordered, Pool, PoolBuilder, ReturnWhen, StarArgs,
    as_completed, wait,
};
pub use process::{
    Builder, Process, ProcessInfo, StartMethod, Stdio, active_children, current_process,
    parent_process,
};
#[cfg(feature = "progress")]
pub use progress::{Progress, ProgressExt};

/// The number of CPUs this process may use: its affinity mask and cgroup CPU quota taken into
/// account (unlike Python's `os.cpu_count()`), and at least 1. The default pool size.
pub fn cpu_count() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The README's examples, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// Runs the worker loop if this process was started by mproc as a worker; otherwise returns at
/// once.
///
/// **You do not need this** on Linux (or any ELF or Mach-O platform): mproc's load-time
/// constructor does it before `main`. It is the fallback for targets where constructors do
/// not run; there, call it first thing in `main`, before starting threads or doing anything a
/// child should not do:
///
/// ```
/// mproc::init();
/// // ... the program; children never get here
/// ```
pub fn init() {
    if let Some(marker) = std::env::var_os(child::MARKER_ENV) {
        if !child::marker_unconsumed() {
            return;
        }
        child::mark_consumed();
        child::entry::run_from_init(marker);
    }
}
