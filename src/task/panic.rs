//! A task's panic, as data: the worker's panic hook (location and frames recorded, or the
//! whole report written out before a `panic = "abort"` abort), the [`RemotePanic`] built from
//! a caught payload, and the typed call that runs a task and turns its result or its panic
//! into a reply.

use std::cell::RefCell;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU8, Ordering};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::fnref::Reply;
use crate::error::{Frames, RemotePanic};
use crate::sys::child::{self, ChildToken};
use crate::sys::frames;
use crate::wire::codec::{self, Op, Role};
use crate::wire::msg;

/// What the panic hook records for [`panic_report`]: the location, and the backtrace as
/// captured — its frames, not yet symbolized.
#[derive(Default)]
struct Recorded {
    location: Option<String>,
    backtrace: Option<Frames>,
}

thread_local! {
    /// Location and backtrace of the last panic on this thread, recorded by the hook.
    static LAST_PANIC: RefCell<Recorded> = RefCell::new(Recorded::default());
}

/// True in a process serving as a worker: the panic hook records instead of printing.
pub(crate) static IN_WORKER: AtomicBool = AtomicBool::new(false);

/// Whether this worker's panics carry a backtrace ([`NO_BACKTRACE`], [`SHORT`] or [`FULL`]):
/// what `RUST_LIB_BACKTRACE` or `RUST_BACKTRACE` asked for when it started, as std reads them.
static WANT_BACKTRACE: AtomicU8 = AtomicU8::new(NO_BACKTRACE);
const NO_BACKTRACE: u8 = 0;
const SHORT: u8 = 1;
const FULL: u8 = 2;

/// The socket the worker answers on while a task runs, `-1` otherwise: where the panic hook
/// writes its report under `panic = "abort"`, where no `catch_unwind` ever returns.
pub(crate) static TASK_SOCKET: AtomicI32 = AtomicI32::new(-1);

/// True in a worker process (serving tasks), false in a program's own process.
pub(crate) fn in_worker() -> bool {
    IN_WORKER.load(Ordering::Relaxed)
}

/// Installs mproc's panic hook once per process. It records the location and backtrace of a
/// panic for the [`RemotePanic`] when this process is a worker, and defers to the previous hook
/// otherwise. The `Fork` start method installs it in the parent *before* forking, so a forked
/// child never takes the hook lock (which another thread of the parent might have held).
///
/// The hook records the backtrace's frames as bare addresses (`sys::frames::capture`: no
/// allocation, no lock); the parent symbolizes them if and when the backtrace is read.
///
/// Under `panic = "abort"` the runtime aborts as soon as the hook returns: the hook then
/// builds the whole report itself and writes it to the parent first.
pub(crate) fn ensure_panic_hook() {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if !IN_WORKER.load(Ordering::Relaxed) {
                return previous(info);
            }
            let location = info.location().map(|l| l.to_string());
            let backtrace = capture_frames();
            if cfg!(panic = "abort") {
                let message = payload_text(info.payload());
                return report_before_abort(message, location, backtrace);
            }
            LAST_PANIC.with(|p| {
                *p.borrow_mut() = Recorded {
                    location,
                    backtrace,
                }
            });
        }));
    });
}

/// Under `panic = "abort"`: sends the panic's report as the task's answer, from the hook,
/// before the runtime aborts. The parent then reports `Panicked`, not a bare `SIGABRT`.
fn report_before_abort(message: String, location: Option<String>, backtrace: Option<Frames>) {
    let fd = TASK_SOCKET.swap(-1, Ordering::Relaxed);
    if fd < 0 {
        return; // not in a task (or the report already went): the abort says it all
    }
    let p = RemotePanic {
        message,
        location,
        backtrace,
    };
    let _ = crate::sys::write_all_raw(fd, &encode_panic(&p));
}

/// The panicking thread's frames, if this worker's panics carry a backtrace. The one
/// allocation (the frames' copy, under a kilobyte) is made with the memory limit lifted.
fn capture_frames() -> Option<Frames> {
    let want = WANT_BACKTRACE.load(Ordering::Relaxed);
    if want == NO_BACKTRACE {
        return None;
    }
    let mut buf = [0u64; frames::MAX_FRAMES];
    let n = frames::capture(&mut buf);
    let offsets = crate::sys::with_memory_headroom(|| buf[..n].to_vec());
    Some(Frames::new(offsets, want == FULL))
}

/// Reads what the environment asks of backtraces, as std would, before the first panic.
///
/// In a worker whose memory is capped, `RUST_BACKTRACE` is then removed from its
/// environment: std's out-of-memory hook reads it on first use and, when it is set, waits for
/// the backtrace lock to print one, symbolizing with no memory left. Without the variable it
/// aborts, and the parent reports `SIGABRT`. mproc's own capture does not read it, so the
/// worker's panics keep their backtraces. (Tasks in such a worker see the variable unset.)
pub(crate) fn read_backtrace_env(token: &ChildToken) {
    let level = |key| {
        child::getenv(token, key).map(|v| match v.to_str() {
            Some("0") => NO_BACKTRACE,
            Some("full") => FULL,
            _ => SHORT,
        })
    };
    let want = level("RUST_LIB_BACKTRACE").or_else(|| level("RUST_BACKTRACE"));
    WANT_BACKTRACE.store(want.unwrap_or(NO_BACKTRACE), Ordering::Relaxed);
    // Found before any panic: the capture must not be the first to look.
    let _ = crate::sys::main_image_range();
    if crate::sys::memory_is_limited() {
        child::remove_env(token, "RUST_BACKTRACE");
    }
}

/// The reply to a task that panicked outside its function (in serde code, say).
pub(crate) fn panic_reply(payload: Box<dyn std::any::Any + Send>) -> Reply {
    Reply::inline(encode_panic(&panic_report(payload)), false)
}

/// A `Panic` frame carrying `p`.
pub(crate) fn encode_panic(p: &RemotePanic) -> Vec<u8> {
    let mut out = msg::begin_panic();
    match codec::encode_into(p, &mut out.buf) {
        Ok(()) => out.finish(),
        Err(e) => msg::failed(&format!("cannot encode the panic: {e}")),
    }
}

/// A panic payload's message: the `&str` or `String`, a placeholder for other payloads.
fn payload_text(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "Box<dyn Any>".to_string()
    }
}

/// The report of a caught panic: its message, and the location and backtrace the hook kept.
pub(crate) fn panic_report(payload: Box<dyn std::any::Any + Send>) -> RemotePanic {
    let message = payload_text(&*payload);
    // A payload whose destructor panics must not take the worker down.
    let _ = panic::catch_unwind(AssertUnwindSafe(move || drop(payload)));
    let Recorded {
        location,
        backtrace,
    } = LAST_PANIC.with(|p| std::mem::take(&mut *p.borrow_mut()));
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
    match panic::catch_unwind(AssertUnwindSafe(|| frames::short_backtrace_base(|| f(a)))) {
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
