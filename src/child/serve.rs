//! The serve loop: say hello, then run each task received until told it was the last.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;

use super::setup::Limits;
use super::{EXIT_INTERNAL, EXIT_PROTOCOL, EXIT_REFUSED, EXIT_TASK_FAILED, MARKER_ENV};
use crate::sys::arena::GrowMap;
use crate::sys::child::{self, ChildToken};
use crate::sys::identity;
use crate::sys::shm::Payload;
use crate::sys::stack_guard;
use crate::task::chunk::{Arena, RunCx};
use crate::task::fnref::{FnRef, Reply};
use crate::task::panic::{IN_WORKER, TASK_SOCKET, ensure_panic_hook, read_backtrace_env};
use crate::wire::fds;
use crate::wire::frame::{self, FrameError, FrameReader};
use crate::wire::msg;

/// Settings a forked worker applies to itself before serving.
#[derive(Debug, Default)]
pub(crate) struct ChildSetup {
    /// Variables to set.
    pub(crate) env: Vec<(OsString, OsString)>,
    /// `None`: keep; `Some(fd)`: make this fd the worker's stdin, stdout, stderr.
    pub(crate) stdio: [Option<OwnedFd>; 3],
    /// The pid the worker's parent must have (for the parent-death signal check).
    pub(crate) parent: i32,
    /// Put every signal disposition back to default: needed after `fork` of a user's process
    /// (its handlers are not ours to run), not in children of the fork server, which never
    /// installs any.
    pub(crate) reset_signals: bool,
}

/// Entry of a worker created by `fork` or the fork server: apply the setup, then serve.
pub(crate) fn enter_forked(token: &ChildToken, sock: OwnedFd, setup: ChildSetup) -> i32 {
    if crate::sys::set_parent_death_signal(setup.parent).is_err() {
        return EXIT_PROTOCOL;
    }
    if setup.reset_signals {
        crate::sys::reset_signals();
    }
    child::remove_env(token, MARKER_ENV);
    child::set_envs(token, &setup.env);
    for (target, fd) in setup.stdio.iter().enumerate() {
        if let Some(fd) = fd {
            if child::replace_fd(token, fd.as_fd(), target as i32).is_err() {
                return EXIT_INTERNAL;
            }
        }
    }
    let setup_parent = setup.parent;
    drop(setup);
    super::mark_consumed();
    super::forkserver::forget_server(token, setup_parent);
    serve(token, sock)
}

/// The worker loop: say hello, then run each task received until told it was the last or the
/// parent closes the socket. Returns the exit code.
pub(crate) fn serve(token: &ChildToken, sock: OwnedFd) -> i32 {
    crate::sys::ignore_sigpipe();
    // Shown by ps and top instead of `exe` (the file re-executed is /proc/self/exe). A
    // failure costs only the name.
    let name = child::getenv(token, super::setup::NAME_ENV);
    let name = name.as_deref().and_then(|n| n.to_str());
    let program = super::setup::program_name();
    let _ = crate::sys::set_process_name(&super::setup::shown_name(&program, name));
    ensure_panic_hook();
    IN_WORKER.store(true, Ordering::Relaxed);
    if Limits::read(token).apply().is_err() {
        return EXIT_INTERNAL;
    }
    read_backtrace_env(token);
    let mut sock = UnixStream::from(sock);
    // A stack overflow is told apart from other faults, and said to the parent as the worker
    // dies. Without it (no stack bounds to be had) the parent still sees the signal.
    let _ = stack_guard::install(sock.as_raw_fd(), msg::dying_of_stack_overflow());
    let code = serve_on(&mut sock, token);
    stack_guard::forget_fd();
    code
}

fn serve_on(sock: &mut UnixStream, token: &ChildToken) -> i32 {
    let me = identity::reported(token);
    if sock
        .write_all(&msg::hello(std::process::id(), &me))
        .is_err()
    {
        return EXIT_PROTOCOL;
    }
    let mut reader = FrameReader::new(frame::DEFAULT_LIMIT);
    // Fds received, in order, and those an `Fds` frame gave to the next task.
    let mut fifo = VecDeque::new();
    let mut task_fds = Vec::new();
    // A pool worker's control block and result arena come in its first message; a worker
    // without one (a `Process`) still builds chunk replies in an arena of its own.
    let mut arena = Arena::default();
    loop {
        let mut src = fds::FdRead {
            sock: sock.as_fd(),
            fifo: &mut fifo,
            nowait: false,
        };
        let frame = match reader.read_frame(&mut src) {
            Ok(f) => f,
            Err(FrameError::Eof) => return 0,
            Err(_) => return EXIT_PROTOCOL,
        };
        if let Some(n) = msg::parse_fds(&frame) {
            match fds::take(&mut fifo, n) {
                Some(taken) => task_fds = taken,
                None => return EXIT_PROTOCOL,
            }
            continue;
        }
        if msg::is_control(&frame) {
            match std::mem::take(&mut task_fds).pop().map(GrowMap::from_fd) {
                Some(Ok(map)) => arena.set(map),
                _ => return EXIT_PROTOCOL,
            }
            continue;
        }
        if msg::is_exit(&frame) {
            let _ = std::io::stdout().flush();
            let _ = std::io::stderr().flush();
            return 0;
        }
        let Ok(run) = msg::parse_run(&frame) else {
            return EXIT_PROTOCOL;
        };
        let Some(proof) = identity::verify(run.identity, &me) else {
            let _ = sock.write_all(&msg::refused(&me));
            return EXIT_REFUSED;
        };
        // A `Run` frame carries a function of the task family.
        let func = FnRef::from_offsets(run.tramp, run.func);
        let mut handle_fds = std::mem::take(&mut task_fds);
        // A large argument is in the last fd: map it and decode it in place.
        let spilled = if run.flags & msg::FLAG_SPILLED != 0 {
            match handle_fds.pop().map(Payload::from_fd) {
                Some(Ok(region)) => Some(region),
                _ => return EXIT_PROTOCOL,
            }
        } else {
            None
        };
        let arg = spilled.as_ref().map_or(run.arg, Payload::bytes);
        // While the task runs, an aborting panic reports on this socket, and an overflow
        // says so as the worker dies (the pool and `Process` both read that notice).
        stack_guard::arm(true);
        TASK_SOCKET.store(sock.as_raw_fd(), Ordering::Relaxed);
        // Handles inside the argument take their fds from those sent with this task.
        let mut cx = RunCx {
            arena: &mut arena,
            skip: run.skip as usize,
            in_arena: 0,
            proof: &proof,
        };
        let reply = fds::supplying(handle_fds, || {
            func.call(&proof, arg, &mut cx).unwrap_or_else(|| {
                let why = "a function address outside the executable was refused";
                Reply::inline(msg::failed(why), false)
            })
        });
        let in_arena = cx.in_arena;
        TASK_SOCKET.store(-1, Ordering::Relaxed);
        stack_guard::arm(false);
        drop(spilled);
        // Output written with `print!` goes out before the answer (so a relayed line is
        // printed before the caller sees the result), and is not lost on `_exit`.
        let _ = std::io::stdout().flush();
        let _ = std::io::stderr().flush();
        // A large result's file goes with its frame; our copy of the fd closes after.
        let sent = match (&reply.file, arena.bytes(in_arena)) {
            (Some(file), _) => fds::write_frame(&*sock, &reply.frame, std::slice::from_ref(file)),
            (None, Some(built)) if in_arena > 0 => sock.write_all(built),
            (None, _) => sock.write_all(&reply.frame),
        };
        if sent.is_err() {
            return EXIT_PROTOCOL;
        }
        if run.flags & msg::FLAG_LAST != 0 {
            return if reply.ok { 0 } else { EXIT_TASK_FAILED };
        }
    }
}
