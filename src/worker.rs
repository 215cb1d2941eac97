//! The worker side: what a process started by mproc runs instead of `main`.
//!
//! The load-time constructor (`sys::ctor`) finds [`MARKER_ENV`] in the environment and calls
//! [`on_load`], which never returns: it serves tasks over the socket named by the marker and
//! exits. Forked workers enter [`serve`] directly.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::RemotePanic;
use crate::sys::child::{self, ChildToken};
use crate::sys::fnptr::{self, Callable, FnRef, Reply};
use crate::sys::identity;
use crate::sys::shm::Payload;
use crate::wire::codec::{Op, Role};
use crate::wire::frame::{self, FrameError, FrameReader};
use crate::wire::msg;
use crate::wire::{codec, fds};

/// The environment variable that marks a process as an mproc worker. Its value says what to
/// serve: `spawn:<fd>` (a worker on socket `fd`) or `server:<fd>` (the fork server).
pub(crate) const MARKER_ENV: &str = "MPROC_WORKER";

/// Exit code of a worker whose function panicked or could not run (as Python's `exitcode` 1).
pub(crate) const EXIT_TASK_FAILED: i32 = 1;
/// Exit code of a worker that refused to run foreign function addresses.
pub(crate) const EXIT_REFUSED: i32 = 2;
/// Exit code of a worker that received a malformed message or lost its parent mid-message.
pub(crate) const EXIT_PROTOCOL: i32 = 3;
/// Exit code of a process started with a marker it cannot understand.
pub(crate) const EXIT_BAD_MARKER: i32 = 4;
/// Exit code when mproc itself failed inside a worker (a bug).
pub(crate) const EXIT_INTERNAL: i32 = 70;

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
        "server" => crate::process::forkserver::serve(token, sock),
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

thread_local! {
    /// Location and backtrace of the last panic on this thread, recorded by the hook.
    static LAST_PANIC: RefCell<(Option<String>, Option<String>)> = const { RefCell::new((None, None)) };
}

/// True in a process serving as a worker: the panic hook records instead of printing.
static IN_WORKER: AtomicBool = AtomicBool::new(false);

/// True in a worker process (serving tasks), false in a program's own process.
pub(crate) fn in_worker() -> bool {
    IN_WORKER.load(Ordering::Relaxed)
}

/// Installs mproc's panic hook once per process. It records the location and backtrace of a
/// panic for the [`RemotePanic`] when this process is a worker, and defers to the previous hook
/// otherwise. The `Fork` start method installs it in the parent *before* forking, so a forked
/// child never takes the hook lock (which another thread of the parent might have held).
pub(crate) fn ensure_panic_hook() {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if !IN_WORKER.load(Ordering::Relaxed) {
                return previous(info);
            }
            let location = info.location().map(|l| l.to_string());
            let bt = std::backtrace::Backtrace::capture();
            let backtrace =
                (bt.status() == std::backtrace::BacktraceStatus::Captured).then(|| bt.to_string());
            LAST_PANIC.with(|p| *p.borrow_mut() = (location, backtrace));
        }));
    });
}

/// The worker loop: say hello, then run each task received until told it was the last or the
/// parent closes the socket. Returns the exit code.
pub(crate) fn serve(token: &ChildToken, sock: OwnedFd) -> i32 {
    crate::sys::ignore_sigpipe();
    ensure_panic_hook();
    IN_WORKER.store(true, Ordering::Relaxed);
    let limit = child::getenv(token, crate::pool::MEMORY_LIMIT_ENV);
    if let Some(limit) = limit.and_then(|v| v.to_str()?.parse().ok()) {
        if crate::sys::set_memory_limit(limit).is_err() {
            return EXIT_INTERNAL;
        }
    }
    let limit = child::getenv(token, crate::pool::PROCESS_LIMIT_ENV);
    if let Some(limit) = limit.and_then(|v| v.to_str()?.parse().ok()) {
        if crate::sys::set_process_limit(limit).is_err() {
            return EXIT_INTERNAL;
        }
    }
    let mut sock = UnixStream::from(sock);
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
        // Handles inside the argument take their fds from those sent with this task.
        let reply = fds::supplying(handle_fds, || fnptr::call(&proof, func, arg));
        drop(spilled);
        // Output written with `print!` goes out before the answer (so a relayed line is
        // printed before the caller sees the result), and is not lost on `_exit`.
        let _ = std::io::stdout().flush();
        let _ = std::io::stderr().flush();
        // A large result's file goes with its frame; our copy of the fd closes after.
        let sent = match &reply.file {
            Some(file) => fds::write_frame(&sock, &reply.frame, std::slice::from_ref(file)),
            None => sock.write_all(&reply.frame),
        };
        if sent.is_err() {
            return EXIT_PROTOCOL;
        }
        if run.flags & msg::FLAG_LAST != 0 {
            return if reply.ok { 0 } else { EXIT_TASK_FAILED };
        }
    }
}

/// First byte of a chunk's `Done` payload: the values follow as `Vec<Out>` (every item
/// returned)...
pub(crate) const CHUNK_ALL_OK: u8 = 0;
/// ... or as `Vec<Result<Out, RemotePanic>>` (some item panicked).
pub(crate) const CHUNK_MIXED: u8 = 1;

/// Decodes a chunk of arguments, calls `f` on each (a panic fails only its own item) and
/// encodes the list of results. Called by the chunk trampoline.
pub(crate) fn run_chunk<F: Callable>(f: F, arg: &[u8]) -> Reply {
    // A panic in serde code (a hand-written `Serialize`, say) fails the chunk, not the worker.
    panic::catch_unwind(AssertUnwindSafe(|| run_chunk_inner(f, arg))).unwrap_or_else(panic_reply)
}

fn panic_reply(payload: Box<dyn std::any::Any + Send>) -> Reply {
    let p = panic_report(payload);
    let mut out = msg::begin_panic();
    let frame = match codec::encode_into(&p, &mut out.buf) {
        Ok(()) => out.finish(),
        Err(e) => msg::failed(&format!("cannot encode the panic: {e}")),
    };
    Reply::inline(frame, false)
}

fn run_chunk_inner<F: Callable>(f: F, arg: &[u8]) -> Reply {
    let items: Vec<F::Args> = match codec::decode(arg) {
        Ok(a) => a,
        Err(e) => {
            let why = format!("cannot decode the arguments: {e}");
            return Reply::inline(msg::failed(&why), false);
        }
    };
    // The common case collects bare values: half the bytes of `Result`s for small ones, no
    // per-item variant for the parent to decode, and no `Result` (with room for a panic
    // report, 9x a `u64`) per item here. The first panic switches to `Result`s.
    let mut values: Vec<F::Out> = Vec::with_capacity(items.len());
    let mut mixed: Vec<Result<F::Out, RemotePanic>> = Vec::new();
    let mut items = items.into_iter();
    for a in items.by_ref() {
        match panic::catch_unwind(AssertUnwindSafe(|| f.invoke(a))) {
            Ok(v) => values.push(v),
            Err(payload) => {
                mixed.reserve(values.len() + 1 + items.len());
                mixed.extend(values.drain(..).map(Ok));
                mixed.push(Err(panic_report(payload)));
                break;
            }
        }
    }
    mixed.extend(
        items.map(|a| panic::catch_unwind(AssertUnwindSafe(|| f.invoke(a))).map_err(panic_report)),
    );
    let mut out = msg::begin_done();
    // The payload — layout byte, then values — moves to an anonymous file past
    // `SPILL_LIMIT`: a large result then crosses as shared pages, not through the socket.
    let payload = out.buf.len();
    let encoded = if mixed.is_empty() {
        out.buf.push(CHUNK_ALL_OK);
        codec::encode_spilling_from(&values, &mut out.buf, payload, msg::SPILL_LIMIT)
    } else {
        out.buf.push(CHUNK_MIXED);
        codec::encode_spilling_from(&mixed, &mut out.buf, payload, msg::SPILL_LIMIT)
    };
    match encoded {
        Ok(None) => Reply::inline(out.finish(), true),
        Ok(Some(file)) => Reply {
            frame: msg::done_spilled(),
            ok: true,
            file: Some(file),
        },
        Err(e) => Reply::inline(
            msg::failed(&format!("cannot encode the results: {e}")),
            false,
        ),
    }
}

fn panic_report(payload: Box<dyn std::any::Any + Send>) -> RemotePanic {
    let message = if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "Box<dyn Any>".to_string()
    };
    // A payload whose destructor panics must not take the worker down.
    let _ = panic::catch_unwind(AssertUnwindSafe(move || drop(payload)));
    let (location, backtrace) = LAST_PANIC.with(|p| std::mem::take(&mut *p.borrow_mut()));
    RemotePanic {
        message,
        location,
        backtrace,
    }
}

/// Decodes the argument, calls `f`, encodes its result or its panic. Called by the trampoline.
pub(crate) fn run_typed<A: DeserializeOwned, R: Serialize>(f: fn(A) -> R, arg: &[u8]) -> Reply {
    // A panic in serde code or a destructor is reported like one in `f`.
    panic::catch_unwind(AssertUnwindSafe(|| run_typed_inner(f, arg))).unwrap_or_else(panic_reply)
}

fn run_typed_inner<A: DeserializeOwned, R: Serialize>(f: fn(A) -> R, arg: &[u8]) -> Reply {
    let a: A = match codec::decode(arg) {
        Ok(a) => a,
        Err(e) => {
            let why = codec::failure::<A>(Op::Decode, Role::Argument, &e);
            return Reply::inline(msg::failed(&why), false);
        }
    };
    match panic::catch_unwind(AssertUnwindSafe(|| f(a))) {
        Ok(r) => {
            let mut out = msg::begin_done();
            match codec::encode_spilling(&r, &mut out.buf, msg::SPILL_LIMIT) {
                Ok(None) => Reply::inline(out.finish(), true),
                Ok(Some(file)) => Reply {
                    frame: msg::done_spilled(),
                    ok: true,
                    file: Some(file),
                },
                Err(e) => {
                    let why = codec::failure::<R>(Op::Encode, Role::Result, &e);
                    Reply::inline(msg::failed(&why), false)
                }
            }
        }
        Err(payload) => panic_reply(payload),
    }
}
