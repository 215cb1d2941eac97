//! The one error type of mproc.

use std::fmt;
use std::io;

use serde::{Deserialize, Serialize};

/// A specialized `Result` for mproc operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong when running a function in another process.
///
/// A panic or the death of the child is data, returned here; the parent never panics or hangs
/// because of it. Use [`kind`](Error::kind) to branch, or the predicates
/// ([`is_timeout`](Error::is_timeout), [`is_worker_lost`](Error::is_worker_lost)) and accessors
/// ([`remote_panic`](Error::remote_panic), [`exit_status`](Error::exit_status)).
///
/// # Examples
/// ```
/// use mproc::ErrorKind;
///
/// fn risky(x: i32) -> i32 {
///     match x {
///         0 => panic!("zero"),
///         1 => std::process::exit(7),
///         _ => x,
///     }
/// }
///
/// let pool = mproc::Pool::new(2)?;
/// let e = pool.apply(risky, 0).unwrap_err();
/// assert_eq!(e.kind(), ErrorKind::Panicked);
/// assert_eq!(e.remote_panic().map(|p| p.message()), Some("zero"));
/// assert!(e.to_string().starts_with("the task panicked: zero at "));
///
/// let e = pool.apply(risky, 1).unwrap_err();
/// assert!(e.is_worker_lost());
/// assert_eq!(e.exit_status().and_then(|s| s.code()), Some(7));
/// # Ok::<(), mproc::Error>(())
/// ```
pub struct Error {
    repr: Box<Repr>,
    /// Which item of a `map`, `starmap` or `imap` failed, and on which worker: boxed apart
    /// so that most errors pay one null pointer for it.
    at: Option<Box<At>>,
}

/// Where a failed item sat: its index in the input and the pid of the worker that ran it.
#[derive(Clone, Copy, Debug)]
struct At {
    index: usize,
    pid: Option<u32>,
}

enum Repr {
    Panicked(RemotePanic),
    /// How it ended, and what the worker said as it died (`"stack overflow"`), if anything.
    WorkerDied(ExitStatus, Option<&'static str>),
    TimedOut,
    BinaryMismatch {
        expected: String,
        found: String,
    },
    Protocol(String),
    Codec(String),
    Io {
        context: &'static str,
        source: io::Error,
    },
    Usage(std::borrow::Cow<'static, str>),
    Closed(&'static str),
    Broken(String),
    Full,
    Empty,
    BrokenBarrier,
    Cancelled,
    Unsupported(std::borrow::Cow<'static, str>),
}

/// The category of an [`Error`].
///
/// ```
/// use mproc::ErrorKind;
///
/// fn boom(_: ()) -> u32 {
///     panic!("boom")
/// }
///
/// fn advice(e: &mproc::Error) -> &'static str {
///     match e.kind() {
///         ErrorKind::Panicked => "fix the task",
///         ErrorKind::WorkerDied | ErrorKind::TimedOut => "run it again",
///         ErrorKind::Cancelled => "nothing: we stopped it",
///         _ => "see the message", // the enum is non-exhaustive
///     }
/// }
///
/// let pool = mproc::Pool::new(2)?;
/// assert_eq!(advice(&pool.apply(boom, ()).unwrap_err()), "fix the task");
/// # Ok::<(), mproc::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The function panicked in the child; see [`Error::remote_panic`].
    Panicked,
    /// The child ended without returning a result: it exited, aborted, crashed or was killed;
    /// see [`Error::exit_status`].
    WorkerDied,
    /// A `*_timeout` call ran out of time. The operation can be retried.
    TimedOut,
    /// The child runs a different executable than the parent, so function addresses cannot be
    /// trusted; nothing was run.
    BinaryMismatch,
    /// A malformed or unexpected message arrived (bad length, truncated frame, wrong type).
    Protocol,
    /// A value could not be serialized or deserialized.
    Codec,
    /// The operating system refused an operation (fork, socket, exec...).
    Io,
    /// The API was used in a way it does not allow (joining twice, spawning from a worker's
    /// constructor...).
    Usage,
    /// The pool was closed or terminated before the task could run, a queue was closed, or
    /// the other end of a pipe is gone.
    Closed,
    /// The pool cannot run tasks: its initializer failed, or its workers cannot start. Also a
    /// [`Barrier`](crate::Barrier) that was aborted, or whose waiter timed out (Python's
    /// `BrokenBarrierError`).
    Broken,
    /// A queue had no room (`try_put`); the value is handed back.
    Full,
    /// A queue had nothing to take (`try_get`).
    Empty,
    /// The task was cancelled ([`AsyncResult::cancel`](crate::AsyncResult::cancel)) before
    /// it finished: it never ran, or its worker was killed.
    Cancelled,
    /// The pool's flavor cannot do this, though a local pool can: the MPI pool
    /// (`PoolBuilder::mpi`, feature `mpi`) refuses arguments holding
    /// fds and the builder settings it does not carry to its ranks. Nothing was run.
    Unsupported,
}

impl Error {
    pub(crate) fn panicked(p: RemotePanic) -> Error {
        Error::new(Repr::Panicked(p))
    }
    pub(crate) fn worker_died(status: ExitStatus) -> Error {
        Error::new(Repr::WorkerDied(status, None))
    }
    /// A death the worker explained before it ended (its last words: `"stack overflow"`).
    pub(crate) fn worker_died_of(status: ExitStatus, cause: &'static str) -> Error {
        Error::new(Repr::WorkerDied(status, Some(cause)))
    }
    /// The cause a dead worker announced (see [`Error::worker_died_of`]), if any.
    #[cfg_attr(not(feature = "mpi"), allow(dead_code))]
    pub(crate) fn death_cause(&self) -> Option<&'static str> {
        match &*self.repr {
            Repr::WorkerDied(_, cause) => *cause,
            _ => None,
        }
    }
    pub(crate) fn timed_out() -> Error {
        Error::new(Repr::TimedOut)
    }
    pub(crate) fn binary_mismatch(expected: &[u8], found: &[u8]) -> Error {
        Error::new(Repr::BinaryMismatch {
            expected: hex(expected),
            found: hex(found),
        })
    }
    pub(crate) fn protocol(msg: impl Into<String>) -> Error {
        Error::new(Repr::Protocol(msg.into()))
    }
    pub(crate) fn codec(msg: impl fmt::Display) -> Error {
        Error::new(Repr::Codec(msg.to_string()))
    }
    pub(crate) fn io(context: &'static str, source: io::Error) -> Error {
        Error::new(Repr::Io { context, source })
    }
    pub(crate) fn usage(msg: impl Into<std::borrow::Cow<'static, str>>) -> Error {
        Error::new(Repr::Usage(msg.into()))
    }
    #[cfg_attr(not(feature = "mpi"), allow(dead_code))]
    pub(crate) fn unsupported(msg: impl Into<std::borrow::Cow<'static, str>>) -> Error {
        Error::new(Repr::Unsupported(msg.into()))
    }
    pub(crate) fn closed(msg: &'static str) -> Error {
        Error::new(Repr::Closed(msg))
    }
    pub(crate) fn broken(msg: impl Into<String>) -> Error {
        Error::new(Repr::Broken(msg.into()))
    }
    pub(crate) fn full() -> Error {
        Error::new(Repr::Full)
    }
    pub(crate) fn empty() -> Error {
        Error::new(Repr::Empty)
    }
    pub(crate) fn broken_barrier() -> Error {
        Error::new(Repr::BrokenBarrier)
    }
    pub(crate) fn cancelled() -> Error {
        Error::new(Repr::Cancelled)
    }
    /// A copy, for reporting one failure on every item of a chunk.
    pub(crate) fn duplicate(&self) -> Error {
        Error::new(match &*self.repr {
            Repr::Panicked(p) => Repr::Panicked(p.clone()),
            Repr::WorkerDied(s, cause) => Repr::WorkerDied(*s, *cause),
            Repr::TimedOut => Repr::TimedOut,
            Repr::BinaryMismatch { expected, found } => Repr::BinaryMismatch {
                expected: expected.clone(),
                found: found.clone(),
            },
            Repr::Protocol(m) => Repr::Protocol(m.clone()),
            Repr::Codec(m) => Repr::Codec(m.clone()),
            Repr::Io { context, source } => {
                let source = match source.raw_os_error() {
                    Some(code) => io::Error::from_raw_os_error(code),
                    None => io::Error::new(source.kind(), source.to_string()),
                };
                Repr::Io { context, source }
            }
            Repr::Usage(m) => Repr::Usage(m.clone()),
            Repr::Closed(m) => Repr::Closed(m),
            Repr::Broken(m) => Repr::Broken(m.clone()),
            Repr::Full => Repr::Full,
            Repr::Empty => Repr::Empty,
            Repr::BrokenBarrier => Repr::BrokenBarrier,
            Repr::Cancelled => Repr::Cancelled,
            Repr::Unsupported(m) => Repr::Unsupported(m.clone()),
        })
        .placed(self.at.as_deref().copied())
    }

    fn new(repr: Repr) -> Error {
        Error {
            repr: Box::new(repr),
            at: None,
        }
    }

    fn placed(mut self, at: Option<At>) -> Error {
        self.at = at.map(Box::new);
        self
    }

    /// The error without its item (for a call of one item, like `apply`).
    pub(crate) fn unplaced(self) -> Error {
        self.placed(None)
    }

    /// Marks the error as item `index`'s, run by the worker `pid` (if known).
    pub(crate) fn at_item(self, index: usize, pid: Option<u32>) -> Error {
        self.placed(Some(At { index, pid }))
    }

    /// Which input item this error belongs to, for an error of one item of a `map`,
    /// `map_async`, `starmap`, `imap` or `imap_unordered` (its position in the input, counted
    /// from 0); `None` for other errors, such as those of `apply` and `apply_async`.
    ///
    /// ```
    /// fn check(x: u64) -> u64 {
    ///     assert!(x != 3, "three");
    ///     x
    /// }
    ///
    /// let pool = mproc::Pool::new(2)?;
    /// let e = pool.map(check, 0..6).unwrap_err();
    /// assert_eq!(e.index(), Some(3));
    /// assert!(e.to_string().starts_with("item 3 (worker pid "));
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn index(&self) -> Option<usize> {
        self.at.as_ref().map(|at| at.index)
    }

    /// The pid of the worker that ran the failed item, when [`index`](Error::index) is known
    /// and the item reached a worker.
    ///
    /// ```
    /// fn check(x: u64) -> u64 {
    ///     assert!(x != 3, "three");
    ///     x
    /// }
    ///
    /// let pool = mproc::Pool::new(2)?;
    /// let e = pool.map(check, 0..6).unwrap_err();
    /// let pid = e.worker_pid().expect("item 3 reached a worker");
    /// assert_ne!(pid, std::process::id());
    /// assert!(e.to_string().starts_with(&format!("item 3 (worker pid {pid}): ")));
    /// assert_eq!(pool.apply(check, 3).unwrap_err().worker_pid(), None); // no item: apply
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn worker_pid(&self) -> Option<u32> {
        self.at.as_ref().and_then(|at| at.pid)
    }

    /// The category of this error.
    ///
    /// ```
    /// use mproc::ErrorKind;
    ///
    /// fn check(x: u64) -> u64 {
    ///     assert!(x != 3, "three");
    ///     x
    /// }
    ///
    /// let pool = mproc::Pool::new(2)?;
    /// assert_eq!(pool.apply(check, 3).unwrap_err().kind(), ErrorKind::Panicked);
    /// assert_eq!(mproc::Pool::new(0).unwrap_err().kind(), ErrorKind::Usage);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn kind(&self) -> ErrorKind {
        match *self.repr {
            Repr::Panicked(_) => ErrorKind::Panicked,
            Repr::WorkerDied(..) => ErrorKind::WorkerDied,
            Repr::TimedOut => ErrorKind::TimedOut,
            Repr::BinaryMismatch { .. } => ErrorKind::BinaryMismatch,
            Repr::Protocol(_) => ErrorKind::Protocol,
            Repr::Codec(_) => ErrorKind::Codec,
            Repr::Io { .. } => ErrorKind::Io,
            Repr::Usage(_) => ErrorKind::Usage,
            Repr::Closed(_) => ErrorKind::Closed,
            Repr::Full => ErrorKind::Full,
            Repr::Empty => ErrorKind::Empty,
            Repr::Broken(_) | Repr::BrokenBarrier => ErrorKind::Broken,
            Repr::Cancelled => ErrorKind::Cancelled,
            Repr::Unsupported(_) => ErrorKind::Unsupported,
        }
    }

    /// True when a `*_timeout` call ran out of time.
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
    /// let mut slow = pool.apply_async(nap, 60_000);
    /// let e = slow.get_timeout(Duration::from_millis(10)).unwrap_err();
    /// assert!(e.is_timeout());
    /// slow.cancel();
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn is_timeout(&self) -> bool {
        self.kind() == ErrorKind::TimedOut
    }

    /// True when the child ended without delivering a result (crash, kill, `exit`).
    ///
    /// ```
    /// fn quit(code: i32) -> i32 {
    ///     std::process::exit(code)
    /// }
    ///
    /// let pool = mproc::Pool::new(2)?;
    /// let e = pool.apply(quit, 42).unwrap_err();
    /// assert!(e.is_worker_lost());
    /// assert_eq!(e.to_string(), "the worker process died without a result (exit code 42)");
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn is_worker_lost(&self) -> bool {
        self.kind() == ErrorKind::WorkerDied
    }

    /// The child's panic: message, location and (with `RUST_BACKTRACE` set) backtrace.
    ///
    /// ```
    /// fn boom(n: u32) -> u32 {
    ///     panic!("bad input {n}")
    /// }
    ///
    /// let pool = mproc::Pool::new(2)?;
    /// let e = pool.apply(boom, 5).unwrap_err();
    /// let panic = e.remote_panic().expect("the task panicked");
    /// assert_eq!(panic.message(), "bad input 5");
    /// assert!(panic.location().is_some());
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn remote_panic(&self) -> Option<&RemotePanic> {
        match &*self.repr {
            Repr::Panicked(p) => Some(p),
            _ => None,
        }
    }

    /// How the child ended, when it died without a result.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// fn nap(secs: u64) -> u64 {
    ///     std::thread::sleep(Duration::from_secs(secs));
    ///     secs
    /// }
    ///
    /// let mut p = mproc::Process::spawn(nap, 60)?;
    /// p.kill()?;
    /// let status = p.join().unwrap_err().exit_status().expect("it died");
    /// assert_eq!(status.signal(), Some(9)); // SIGKILL
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn exit_status(&self) -> Option<ExitStatus> {
        match *self.repr {
            Repr::WorkerDied(s, _) => Some(s),
            _ => None,
        }
    }
}

/// What an exit code means when mproc's worker loop chose it (`sys::child::EXIT_*`). A task that
/// calls `std::process::exit` with the same number looks the same from outside, so the text
/// says "unless the task exited with it" rather than claiming to know. Codes 0 and 1 are left
/// alone: a worker that ends with them has answered first (a result, a panic), so a death
/// with them is the task's own `exit`.
fn mproc_exit_meaning(code: i32) -> Option<&'static str> {
    use crate::sys::child::{EXIT_BAD_MARKER, EXIT_INTERNAL, EXIT_PROTOCOL, EXIT_REFUSED};
    Some(match code {
        EXIT_REFUSED => {
            "mproc's code for a worker that refused to run another executable's functions, unless the task exited with it"
        }
        EXIT_PROTOCOL => {
            "mproc's code for a protocol error between parent and worker, unless the task exited with it"
        }
        EXIT_BAD_MARKER => {
            "mproc's code for a process started with a worker marker it cannot understand, unless the task exited with it"
        }
        EXIT_INTERNAL => {
            "mproc's code for a bug of mproc inside the worker, unless the task exited with it"
        }
        _ => return None,
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.at.as_deref() {
            Some(At {
                index,
                pid: Some(pid),
            }) => write!(f, "item {index} (worker pid {pid}): ")?,
            Some(At { index, pid: None }) => write!(f, "item {index}: ")?,
            None => {}
        }
        match &*self.repr {
            Repr::Panicked(p) => write!(f, "the task panicked: {p}"),
            Repr::WorkerDied(s, cause) => {
                write!(f, "the worker process died without a result ({s}")?;
                if let Some(cause) = cause {
                    write!(f, ": {cause}")?;
                } else if let Some(meaning) = s.code().and_then(mproc_exit_meaning) {
                    write!(f, ": {meaning}")?;
                }
                f.write_str(")")
            }
            Repr::TimedOut => f.write_str("timed out"),
            Repr::BinaryMismatch { expected, found } => write!(
                f,
                "the child runs a different executable (identity {found}, expected {expected}); nothing was run"
            ),
            Repr::Protocol(m) => write!(f, "protocol error: {m}"),
            Repr::Codec(m) => write!(f, "serialization error: {m}"),
            Repr::Io { context, source } => write!(f, "{context}: {source}"),
            Repr::Usage(m) => f.write_str(m),
            Repr::Closed(m) => f.write_str(m),
            Repr::Broken(m) => write!(f, "the pool is broken: {m}"),
            Repr::Full => f.write_str("the queue is full"),
            Repr::Empty => f.write_str("the queue is empty"),
            Repr::BrokenBarrier => f.write_str("the barrier is broken"),
            Repr::Cancelled => f.write_str("task cancelled"),
            Repr::Unsupported(m) => f.write_str(m),
        }
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Error({:?}: {self})", self.kind())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &*self.repr {
            Repr::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// A panic that happened in a child process, carried back as data.
///
/// ```
/// fn boom(_: ()) -> u32 {
///     panic!("boom")
/// }
///
/// let e = mproc::Pool::new(2)?.apply(boom, ()).unwrap_err();
/// let panic = e.remote_panic().expect("the task panicked");
/// assert_eq!(panic.message(), "boom");
/// assert!(panic.to_string().starts_with("boom at ")); // the message, then where
/// # Ok::<(), mproc::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemotePanic {
    pub(crate) message: String,
    pub(crate) location: Option<String>,
    pub(crate) backtrace: Option<Frames>,
}

/// A child's backtrace: its frames as captured there (see `sys::frames`), symbolized here on
/// first read.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Frames {
    offsets: Vec<u64>,
    /// `RUST_BACKTRACE=full`: every frame, not only the task's.
    full: bool,
    #[serde(skip)]
    text: std::sync::OnceLock<String>,
}

impl Frames {
    pub(crate) fn new(offsets: Vec<u64>, full: bool) -> Frames {
        Frames {
            offsets,
            full,
            text: std::sync::OnceLock::new(),
        }
    }

    fn text(&self) -> &str {
        self.text
            .get_or_init(|| crate::sys::frames::render(&self.offsets, self.full))
    }
}

impl PartialEq for Frames {
    fn eq(&self, other: &Frames) -> bool {
        (&self.offsets, self.full) == (&other.offsets, other.full)
    }
}

impl Eq for Frames {}

impl RemotePanic {
    /// The panic message (the `&str` or `String` payload; a placeholder for other payloads).
    ///
    /// ```
    /// fn boom(n: u32) -> u32 {
    ///     panic!("bad input {n}")
    /// }
    ///
    /// let e = mproc::Pool::new(2)?.apply(boom, 5).unwrap_err();
    /// assert_eq!(e.remote_panic().unwrap().message(), "bad input 5");
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn message(&self) -> &str {
        &self.message
    }
    /// Where it panicked, as `file:line:column`.
    ///
    /// ```
    /// fn boom(_: ()) -> u32 {
    ///     panic!("boom")
    /// }
    ///
    /// let e = mproc::Pool::new(2)?.apply(boom, ()).unwrap_err();
    /// let location = e.remote_panic().unwrap().location().expect("panic! has one");
    /// let mut parts = location.rsplitn(3, ':'); // file:line:column
    /// assert!(parts.next().unwrap().parse::<u32>().is_ok());
    /// assert!(parts.next().unwrap().parse::<u32>().is_ok());
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn location(&self) -> Option<&str> {
        self.location.as_deref()
    }
    /// The child's backtrace, captured when `RUST_BACKTRACE` (or `RUST_LIB_BACKTRACE`) is set
    /// in the child as it starts; `full` keeps every frame, as std does.
    ///
    /// The child only records the frames' addresses (no allocation, no lock: it works under
    /// a memory limit with no memory left). They are symbolized here, in the calling process
    /// (which runs the same executable), the first time this is called: a panic whose
    /// backtrace is never read costs nothing, and the debug information is parsed once per
    /// program, not once per worker. A child whose memory is capped runs with
    /// `RUST_BACKTRACE` removed from its environment (its own panics still carry backtraces):
    /// std's out-of-memory handler would otherwise try to print one with no memory left.
    ///
    /// ```
    /// fn deep_inside(_: ()) -> u32 {
    ///     panic!("boom")
    /// }
    ///
    /// let pool = mproc::Pool::builder().processes(2).env("RUST_BACKTRACE", "1").build()?;
    /// let e = pool.apply(deep_inside, ()).unwrap_err();
    /// let backtrace = e.remote_panic().unwrap().backtrace().expect("RUST_BACKTRACE is set");
    /// assert!(backtrace.contains("deep_inside"));
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn backtrace(&self) -> Option<&str> {
        self.backtrace.as_ref().map(Frames::text)
    }
}

impl fmt::Display for RemotePanic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(loc) = &self.location {
            write!(f, " at {loc}")?;
        }
        Ok(())
    }
}

/// How a process ended: an exit code or a signal, like Python's `exitcode` (`-N` for signal N).
///
/// ```
/// fn quit(code: i32) {
///     std::process::exit(code)
/// }
///
/// let mut p = mproc::Process::spawn(quit, 5)?;
/// let status = p.join().unwrap_err().exit_status().expect("it exited");
/// assert_eq!((status.code(), status.signal(), status.exitcode()), (Some(5), None, 5));
/// assert_eq!(p.exit_status(), Some(status)); // the handle says so too
/// # Ok::<(), mproc::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ExitStatus {
    raw: crate::sys::RawExit,
}

impl ExitStatus {
    pub(crate) fn from_raw(raw: crate::sys::RawExit) -> ExitStatus {
        ExitStatus { raw }
    }
    /// The exit code, if the process exited (rather than being killed by a signal).
    ///
    /// ```
    /// fn quit(code: i32) {
    ///     std::process::exit(code)
    /// }
    ///
    /// let mut p = mproc::Process::spawn(quit, 42)?;
    /// let e = p.join().unwrap_err();
    /// assert_eq!(e.exit_status().and_then(|s| s.code()), Some(42));
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn code(&self) -> Option<i32> {
        match self.raw {
            crate::sys::RawExit::Code(c) => Some(c),
            _ => None,
        }
    }
    /// The signal that ended the process, if any.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// fn nap(secs: u64) -> u64 {
    ///     std::thread::sleep(Duration::from_secs(secs));
    ///     secs
    /// }
    ///
    /// let mut p = mproc::Process::spawn(nap, 60)?;
    /// p.terminate()?;
    /// let status = p.join().unwrap_err().exit_status().expect("it was killed");
    /// assert_eq!((status.signal(), status.code()), (Some(15), None)); // SIGTERM
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn signal(&self) -> Option<i32> {
        match self.raw {
            crate::sys::RawExit::Signal(s) => Some(s),
            _ => None,
        }
    }
    /// True for exit code 0.
    ///
    /// ```
    /// fn square(x: u64) -> u64 {
    ///     x * x
    /// }
    ///
    /// let mut p = mproc::Process::spawn(square, 7)?;
    /// assert_eq!(p.join()?, 49);
    /// assert!(p.exit_status().expect("joined").success());
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn success(&self) -> bool {
        self.code() == Some(0)
    }
    /// Python's `Process.exitcode`: the exit code, or `-N` when killed by signal `N`
    /// (`i32::MIN` if the status was lost because another part of the program reaped it).
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// fn nap(secs: u64) -> u64 {
    ///     std::thread::sleep(Duration::from_secs(secs));
    ///     secs
    /// }
    ///
    /// let mut p = mproc::Process::spawn(nap, 60)?;
    /// p.kill()?;
    /// let status = p.join().unwrap_err().exit_status().expect("it was killed");
    /// assert_eq!(status.exitcode(), -9); // as Python's exitcode for SIGKILL
    /// # Ok::<(), mproc::Error>(())
    /// ```
    pub fn exitcode(&self) -> i32 {
        match self.raw {
            crate::sys::RawExit::Code(c) => c,
            crate::sys::RawExit::Signal(s) => -s,
            crate::sys::RawExit::Unknown => i32::MIN,
        }
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.raw {
            crate::sys::RawExit::Code(c) => write!(f, "exit code {c}"),
            crate::sys::RawExit::Unknown => f.write_str("exit status lost: reaped elsewhere"),
            crate::sys::RawExit::Signal(s) => match crate::sys::signal_name(s) {
                Some(name) => write!(f, "killed by signal {s} ({name})"),
                None => write!(f, "killed by signal {s}"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn errors_and_handles_cross_threads() {
        fn send_sync<T: Send + Sync + 'static>() {}
        send_sync::<Error>();
        send_sync::<crate::Process<Vec<String>>>();
        send_sync::<ExitStatus>();
    }

    #[test]
    fn display_is_lowercase_without_period() {
        let e = Error::worker_died(ExitStatus::from_raw(crate::sys::RawExit::Signal(9)));
        assert_eq!(
            e.to_string(),
            "the worker process died without a result (killed by signal 9 (SIGKILL))"
        );
        let e = Error::worker_died(ExitStatus::from_raw(crate::sys::RawExit::Code(3)));
        assert_eq!(
            e.to_string(),
            "the worker process died without a result (exit code 3: mproc's code for a protocol error between parent and worker, unless the task exited with it)"
        );
        let e = Error::worker_died(ExitStatus::from_raw(crate::sys::RawExit::Code(42)));
        assert_eq!(
            e.to_string(),
            "the worker process died without a result (exit code 42)"
        );
        let e = Error::worker_died_of(
            ExitStatus::from_raw(crate::sys::RawExit::Signal(11)),
            "stack overflow",
        );
        assert_eq!(
            e.to_string(),
            "the worker process died without a result (killed by signal 11 (SIGSEGV): stack overflow)"
        );
        assert_eq!(e.kind(), ErrorKind::WorkerDied);
        assert_eq!(e.duplicate().to_string(), e.to_string());
        assert_eq!(Error::timed_out().to_string(), "timed out");
        assert_eq!(Error::cancelled().to_string(), "task cancelled");
        assert_eq!(Error::cancelled().duplicate().kind(), ErrorKind::Cancelled);
        let e = Error::timed_out().at_item(3, Some(1234));
        assert_eq!(e.to_string(), "item 3 (worker pid 1234): timed out");
        assert_eq!((e.index(), e.worker_pid()), (Some(3), Some(1234)));
        assert_eq!(e.duplicate().to_string(), e.to_string());
        assert_eq!(
            Error::timed_out().at_item(0, None).to_string(),
            "item 0: timed out"
        );
        assert_eq!(Error::timed_out().index(), None);
        assert!(std::mem::size_of::<Error>() <= 2 * std::mem::size_of::<usize>());
        assert!(
            Error::io(
                "cannot start a process",
                std::io::Error::from_raw_os_error(11)
            )
            .source()
            .is_some()
        );
    }
}
