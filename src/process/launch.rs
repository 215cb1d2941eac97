//! Creating worker processes with each start method.
//!
//! Every method ends the same way: a child serving `child::serve::serve` on one end of a
//! Unix socket pair, whose other end the parent keeps, and whose parent is *this* process (so
//! we reap it and read its real exit status).
//!
//! Children get `PR_SET_PDEATHSIG(SIGKILL)`, which fires when the *thread* that created them
//! ends. So every child (and the fork server) is created on one long-lived internal thread,
//! the spawner, never on the caller's thread, which may be short-lived.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::mpsc;
use std::sync::{Arc, PoisonError};

use crate::sys::fork_local::ForkLocal;

use super::{StartMethod, Stdio};
use crate::child::{self, ChildSetup, MARKER_ENV};
use crate::sys;

/// A started worker, seen from the parent.
pub(crate) struct Launched {
    /// Its pid, and a pidfd where the platform has them: race-free signals and a pollable
    /// exit.
    pub(crate) child: sys::ChildHandle,
    /// The parent's end of the worker's socket.
    pub(crate) sock: UnixStream,
    /// How many bytes of the first message ([`launch_primed`]) are in the socket already.
    pub(crate) primed: usize,
}

/// What the caller wants the worker to look like.
#[derive(Clone, Debug, Default)]
pub(crate) struct Spec {
    pub(crate) env: Vec<(OsString, OsString)>,
    pub(crate) stdio: [Stdio; 3],
    /// For each [`Stdio::Prefixed`] stream: the write end of its relay pipe, made by `launch`
    /// for one child.
    pub(crate) piped: [Option<Arc<OwnedFd>>; 3],
}

impl Spec {
    /// What the child's stream `i` becomes: `None` for `/dev/null`, else the fd to give it.
    pub(crate) fn stdio_fd(&self, i: usize) -> io::Result<Option<OwnedFd>> {
        self.stdio_borrowed(i)
            .map(|fd| fd.try_clone_to_owned())
            .transpose()
    }

    /// As [`stdio_fd`](Spec::stdio_fd), borrowed: enough to pass it over a socket.
    pub(crate) fn stdio_borrowed(&self, i: usize) -> Option<BorrowedFd<'_>> {
        match (self.stdio[i], &self.piped[i]) {
            (Stdio::Prefixed, Some(w)) => Some(w.as_fd()),
            (Stdio::Null, _) => None,
            _ if !sys::fd_is_open(i as i32) => None,
            _ => Some(sys::std_stream(i as i32)),
        }
    }
}

/// Starts a worker with `method`.
///
/// Refused while `MPROC_START_METHOD` holds an invalid value, whatever `method` is: a typo
/// there must not go unnoticed (see `StartMethod::default`).
pub(crate) fn launch(method: StartMethod, spec: &Spec) -> io::Result<Launched> {
    launch_primed(method, spec, &[])
}

/// As [`launch`], with the first message for the worker (`first`) put in its socket before the
/// worker exists, as much of it as fits without waiting ([`Launched::primed`] says how much;
/// the caller writes the rest). A worker then finds its task waiting as it starts: it need
/// not sleep for it, nor greet first (`child::serve`), and the parent is woken once, by the
/// answer.
pub(crate) fn launch_primed(
    method: StartMethod,
    spec: &Spec,
    first: &[u8],
) -> io::Result<Launched> {
    check_start_method_env()?;
    if !spec.stdio.contains(&Stdio::Prefixed) {
        return start(method, spec, first);
    }
    // Prefixed streams: a pipe each, whose write end goes to this child (in a copy of the
    // spec) and whose read end is relayed once the pid is known.
    let mut own = spec.clone();
    let mut relays = Vec::new();
    for i in 1..3 {
        if own.stdio[i] == Stdio::Prefixed {
            let (r, w) = sys::pipe()?;
            own.piped[i] = Some(Arc::new(w));
            relays.push((i as u8, r));
        }
    }
    if own.stdio[0] == Stdio::Prefixed {
        own.stdio[0] = Stdio::Inherit;
    }
    let launched = start(method, &own, first)?;
    let name = own
        .env
        .iter()
        .rev()
        .find(|(k, _)| k == super::current::NAME_ENV)
        .map_or_else(
            || "Process".into(),
            |(_, v)| v.to_string_lossy().into_owned(),
        );
    // Our copies of the write ends go, so the relay sees end of file when the child exits.
    drop(own);
    for (target, r) in relays {
        crate::output::relay(r, target, format!("[{name} {}] ", launched.child.pid()))?;
    }
    Ok(launched)
}

/// Starts up to `n` workers at once where that is faster: through the fork server, whose
/// requests can be sent ahead of the replies. Fewer than `n` (maybe none, always none for
/// other start methods or `Prefixed` streams): the caller starts the rest with [`launch`].
pub(crate) fn launch_many(method: StartMethod, spec: &Spec, n: usize) -> Vec<Launched> {
    if method != StartMethod::ForkServer || n < 2 || spec.stdio.contains(&Stdio::Prefixed) {
        return Vec::new();
    }
    if check_start_method_env().is_err() {
        return Vec::new(); // `launch` reports it
    }
    super::forkserver::launch_many(spec, n)
        .into_iter()
        .map(|(child, sock)| Launched {
            child,
            sock,
            primed: 0,
        })
        .collect()
}

/// `InvalidInput`, with the value, while `MPROC_START_METHOD` names no start method.
fn check_start_method_env() -> io::Result<()> {
    match StartMethod::from_env() {
        Ok(_) => Ok(()),
        Err(_) => {
            let value = std::env::var_os(super::START_METHOD_ENV).unwrap_or_default();
            Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{}={value:?} names no start method (expected forkserver, spawn or fork, \
                     in any case)",
                    super::START_METHOD_ENV
                ),
            ))
        }
    }
}

/// Starts a worker with `method` and the stdio `spec` resolves to, `first` in its socket.
fn start(method: StartMethod, spec: &Spec, first: &[u8]) -> io::Result<Launched> {
    if method == StartMethod::ForkServer {
        let (child, sock, primed) = super::forkserver::launch(spec, first)?;
        return Ok(Launched {
            child,
            sock,
            primed,
        });
    }
    let (parent_end, child_end) = sys::socket_pair()?;
    let primed = prime(&parent_end, first);
    let child = match method {
        StartMethod::Fork => fork(spec.clone(), child_end.into(), parent_end.as_raw_fd())?,
        _ => spawn(spec.clone(), child_end.into())?,
    };
    Ok(Launched {
        child,
        sock: parent_end,
        primed,
    })
}

/// Puts as much of `first` in the new socket `ours` as fits without waiting (nobody reads it
/// yet: a write that waited would wait forever). Returns how much.
pub(crate) fn prime(ours: &UnixStream, first: &[u8]) -> usize {
    if first.is_empty() {
        return 0;
    }
    // A failure here is seen again, and reported, when the caller writes the rest.
    sys::send_nowait(ours.as_fd(), first).unwrap_or(0)
}

/// Exec of this same executable, marked as a worker.
fn spawn(spec: Spec, child_end: OwnedFd) -> io::Result<sys::ChildHandle> {
    on_spawner(move || {
        let fd = child_end.as_raw_fd();
        let mut cmd = worker_command(&format!("spawn:{fd}"))?;
        cmd.envs(spec.env.iter().map(|(k, v)| (k, v)));
        let [i, o, e] = [0, 1, 2].map(|i| spec.stdio_fd(i));
        cmd.stdin(to_std(i?)).stdout(to_std(o?)).stderr(to_std(e?));
        sys::command_child_setup(&mut cmd, fd, fd);
        let child = cmd.spawn()?;
        drop(child_end);
        // We reap through the handle; `Child`'s own drop neither waits nor kills.
        Ok(sys::ChildHandle::open(child.id() as i32))
    })
}

/// A command re-executing this program as a worker with the given marker value (through the
/// dynamic loader again if that is how it was started: see `sys::self_exec`).
pub(crate) fn worker_command(marker: &str) -> io::Result<Command> {
    let me = sys::self_exec()?;
    let mut cmd = Command::new(sys::exe_path());
    if let Some(arg0) = &me.arg0 {
        cmd.arg0(arg0);
    }
    cmd.args(&me.args);
    cmd.env(MARKER_ENV, marker);
    Ok(cmd)
}

/// `fork` of this process; the child serves at once.
fn fork(spec: Spec, child_end: OwnedFd, parent_end: RawFd) -> io::Result<sys::ChildHandle> {
    on_spawner(move || {
        let parent = sys::getpid();
        // The child must not inherit a held panic-hook lock, nor stdout/stderr locks held by
        // other threads: install the hook here, and hold both stream locks across `fork` (the
        // child releases its copies at once; they are reentrant, owned by this thread).
        child::ensure_panic_hook();
        let stdio_locks =
            std::cell::RefCell::new(Some((std::io::stdout().lock(), std::io::stderr().lock())));
        let devnull = if spec.stdio.contains(&Stdio::Null) {
            Some(sys::open_devnull()?)
        } else {
            None
        };
        let pid = sys::child::fork_child(|token| {
            drop(stdio_locks.borrow_mut().take());
            // Our own copy of the parent's end would hide the parent's close from us.
            sys::child::close_inherited_raw(token, parent_end);
            // Nor may our copies of the parent's pipe ends hide its hang-ups (Python's trap).
            sys::endpoints::release_inherited(token);
            let mut setup = ChildSetup {
                env: spec.env.clone(),
                parent,
                reset_signals: true,
                ..Default::default()
            };
            for (i, (slot, s)) in setup.stdio.iter_mut().zip(&spec.stdio).enumerate() {
                match s {
                    Stdio::Null => *slot = devnull.as_ref().and_then(|d| d.try_clone().ok()),
                    Stdio::Prefixed => {
                        *slot = spec.piped[i].as_ref().and_then(|w| w.try_clone().ok())
                    }
                    _ => {}
                }
            }
            if let Some(d) = &devnull {
                sys::child::close_inherited(token, d.as_fd());
            }
            let sock = sys::child::take_inherited(token, child_end.as_fd());
            child::enter_forked(token, sock, setup)
        });
        drop(stdio_locks.borrow_mut().take());
        let pid = pid?;
        drop(child_end);
        Ok(sys::ChildHandle::open(pid))
    })
}

type Batch = Box<dyn FnOnce() + Send>;

struct Spawner {
    jobs: mpsc::Sender<Batch>,
}

static SPAWNER: ForkLocal<Option<Spawner>> = ForkLocal::new();

/// Runs `job` on the spawner thread and returns its result.
pub(crate) fn on_spawner<T: Send + 'static>(
    job: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    let (tx, rx) = mpsc::sync_channel(1);
    let boxed: Batch = Box::new(move || {
        // A panic must not end the spawner thread: every child's parent-death signal is tied
        // to it.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job))
            .unwrap_or_else(|_| Err(io::Error::other("mproc's spawner panicked")));
        let _ = tx.send(result);
    });
    {
        let mut guard = SPAWNER.get().lock().unwrap_or_else(PoisonError::into_inner);
        if guard.is_none() {
            let (jobs, queue) = mpsc::channel::<Batch>();
            std::thread::Builder::new()
                .name("mproc-spawner".into())
                .spawn(move || {
                    for job in queue {
                        job();
                    }
                })?;
            *guard = Some(Spawner { jobs });
        }
        let spawner = guard.as_ref().expect("set above");
        spawner
            .jobs
            .send(boxed)
            .map_err(|_| io::Error::other("the mproc spawner thread is gone"))?;
    }
    rx.recv()
        .map_err(|_| io::Error::other("the mproc spawner thread dropped a request"))?
}

/// A child's stream for `Command`: `None` is `/dev/null`.
fn to_std(fd: Option<OwnedFd>) -> std::process::Stdio {
    fd.map_or_else(std::process::Stdio::null, std::process::Stdio::from)
}
