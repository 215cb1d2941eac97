//! The worker side: what a process started by mproc runs instead of `main`.
//!
//! The load-time constructor (`sys::ctor`) finds [`MARKER_ENV`] in the environment and calls
//! [`on_load`], which never returns: it serves tasks over the socket named by the marker and
//! exits. Forked workers enter [`serve`] directly.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::sys::arena::GrowMap;
use crate::sys::child::{self, ChildToken};
use crate::sys::fnptr::{self, FnRef};
use crate::sys::identity;
use crate::sys::shm::Payload;
use crate::sys::stack_guard;
use crate::task::chunk::{Arena, RunCx};
use crate::wire::fds;
use crate::wire::frame::{self, FrameError, FrameReader};
use crate::wire::msg;

pub(crate) use crate::task::panic::{
    IN_WORKER, TASK_SOCKET, ensure_panic_hook, in_worker, read_backtrace_env,
};

// The marker and mproc's exit codes belong to the child-process layer below (`sys::child`,
// which the load-time constructor and the child entry use); named here for the code above.
pub(crate) use crate::sys::child::{
    EXIT_BAD_MARKER, EXIT_INTERNAL, EXIT_PROTOCOL, EXIT_REFUSED, EXIT_TASK_FAILED, MARKER_ENV,
};

/// Set once this process consumed a marker (it is a worker, or `init()` ran).
static MARKER_CONSUMED: AtomicBool = AtomicBool::new(false);

/// Called by the load-time constructor (or [`crate::init`]) when the marker is present.
pub(crate) fn on_load(marker: OsString, token: &ChildToken) -> ! {
    MARKER_CONSUMED.store(true, Ordering::Relaxed);
    let code =
        panic::catch_unwind(AssertUnwindSafe(|| dispatch(&marker, token))).unwrap_or(EXIT_INTERNAL);
    crate::sys::exit_now(code)
}

fn dispatch(marker: &OsString, token: &ChildToken) -> i32 {
    let text = marker.to_string_lossy();
    let parsed = text
        .split_once(':')
        .and_then(|(kind, fd)| Some((kind, fd.parse::<i32>().ok()?)));
    let Some((kind, fd)) = parsed else {
        eprintln!("mproc: unrecognised {MARKER_ENV} value {text:?}; not running main");
        return EXIT_BAD_MARKER;
    };
    let sock = match child::adopt_inherited_fd(token, fd) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("mproc: {MARKER_ENV}={text:?}: {e}; not running main");
            return EXIT_BAD_MARKER;
        }
    };
    match kind {
        "spawn" => serve(token, sock),
        "server" => {
            let _ = crate::sys::set_process_name(&program_name());
            crate::process::forkserver::serve(token, sock)
        }
        _ => {
            eprintln!("mproc: unknown worker kind {kind:?}; not running main");
            EXIT_BAD_MARKER
        }
    }
}

/// True when this process holds a worker marker that nothing consumed: it was started by mproc
/// but mproc's constructor did not run. Starting processes then could fork-bomb.
pub(crate) fn marker_unconsumed() -> bool {
    !MARKER_CONSUMED.load(Ordering::Relaxed) && std::env::var_os(MARKER_ENV).is_some()
}

/// Marks this process as having handled its marker (for `init()` on the fallback path).
pub(crate) fn mark_consumed() {
    MARKER_CONSUMED.store(true, Ordering::Relaxed);
}

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
    MARKER_CONSUMED.store(true, Ordering::Relaxed);
    crate::process::forget_parent_state(token, setup_parent);
    serve(token, sock)
}

/// The program's name: the last part of its `argv[0]` (which mproc's children keep), else of
/// the file it runs.
fn program_name() -> String {
    let path = std::env::args_os()
        .next()
        .map(std::path::PathBuf::from)
        .or_else(|| std::fs::read_link(crate::sys::exe_path()).ok());
    path.as_deref()
        .and_then(std::path::Path::file_name)
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "mproc".to_string())
}

/// The name a child shows in ps and top (15 bytes at most): the program's, then the child's
/// own name after a colon if it was given one (`myprog:w1`), the program's cut short to keep
/// it. Pool workers and children with a default name (`Process-N`) show the program's alone.
pub(crate) fn shown_name(program: &str, name: Option<&str>) -> String {
    const MAX: usize = 15;
    let given = name.filter(|n| {
        let default = n
            .strip_prefix("Process-")
            .is_some_and(|k| !k.is_empty() && k.bytes().all(|b| b.is_ascii_digit()));
        !n.is_empty() && *n != "PoolWorker" && !default
    });
    let cut = |s: &str, max: usize| {
        let mut end = s.len().min(max);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s[..end].to_string()
    };
    match given {
        None => cut(program, MAX),
        Some(n) if n.len() + 2 > MAX => cut(n, MAX),
        Some(n) => format!("{}:{n}", cut(program, MAX - 1 - n.len())),
    }
}

/// The worker loop: say hello, then run each task received until told it was the last or the
/// parent closes the socket. Returns the exit code.
pub(crate) fn serve(token: &ChildToken, sock: OwnedFd) -> i32 {
    crate::sys::ignore_sigpipe();
    // Shown by ps and top instead of `exe` (the file re-executed is /proc/self/exe). A
    // failure costs only the name.
    let name = child::getenv(token, crate::process::CHILD_NAME_ENV);
    let name = name.as_deref().and_then(|n| n.to_str());
    let _ = crate::sys::set_process_name(&shown_name(&program_name(), name));
    ensure_panic_hook();
    IN_WORKER.store(true, Ordering::Relaxed);
    let limit = child::getenv(token, crate::pool::MEMORY_LIMIT_ENV);
    if let Some(limit) = limit.and_then(|v| v.to_str()?.parse().ok()) {
        if crate::sys::set_memory_limit(limit).is_err() {
            return EXIT_INTERNAL;
        }
    }
    read_backtrace_env(token);
    let limit = child::getenv(token, crate::pool::PROCESS_LIMIT_ENV);
    if let Some(limit) = limit.and_then(|v| v.to_str()?.parse().ok()) {
        if crate::sys::set_process_limit(limit).is_err() {
            return EXIT_INTERNAL;
        }
    }
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
        let func = FnRef {
            tramp: run.tramp,
            func: run.func,
        };
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
        };
        let reply = fds::supplying(handle_fds, || fnptr::call(&proof, func, arg, &mut cx));
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

#[cfg(test)]
mod name_tests {
    use super::shown_name;

    #[test]
    fn shown_names_fit_in_fifteen_bytes_and_keep_the_given_name() {
        assert_eq!(shown_name("myprog", None), "myprog");
        assert_eq!(shown_name("myprog", Some("PoolWorker")), "myprog");
        assert_eq!(shown_name("myprog", Some("Process-12")), "myprog");
        assert_eq!(shown_name("myprog", Some("w1")), "myprog:w1");
        assert_eq!(
            shown_name("pool_api-0123abcdef", Some("w1")),
            "pool_api-012:w1"
        );
        assert_eq!(shown_name("pool_api-0123abcdef", None), "pool_api-0123ab");
        assert_eq!(shown_name("p", Some("a-very-long-name")), "a-very-long-nam");
        assert_eq!(shown_name("prögrammé-long", Some("w")), "prögrammé-l:w");
        assert!(shown_name("ééééééééé", None).len() <= 15);
    }
}
