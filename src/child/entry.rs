//! The load-time entry: a process whose environment holds mproc's marker serves instead of
//! running `main`.

use std::ffi::OsString;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};

use super::{EXIT_BAD_MARKER, EXIT_INTERNAL, MARKER_ENV};
use crate::sys::child::{self, ChildToken};

crate::sys::ctor::at_load!(MPROC_CHILD_ENTRY = at_load);

/// Runs before `main` in every executable linking mproc: one `getenv` unless the process is a
/// child of mproc's. The marker is taken out of the environment, so nothing the child starts
/// inherits it (and the MPI entry, whichever runs first, sees a child as no serving rank).
fn at_load(token: &ChildToken) {
    if let Some(marker) = child::take_env(token, MARKER_ENV) {
        on_load(marker, token);
    }
}

/// The [`crate::init`] fallback: serve as a child from `main` when the constructor did not.
pub(crate) fn run_from_init(marker: OsString) -> ! {
    // The marker stays in the environment (removing it is not thread-safe here); the child
    // overrides it for every process it starts itself.
    let Some(token) = child::token_if_single_threaded() else {
        eprintln!("mproc: init() must run before any thread is started; not running main");
        crate::sys::exit_now(EXIT_INTERNAL)
    };
    on_load(marker, &token)
}

/// Set once this process consumed a marker (it is a worker, or `init()` ran).
static MARKER_CONSUMED: AtomicBool = AtomicBool::new(false);

/// Called at load time (or by [`crate::init`]) when the marker is present.
fn on_load(marker: OsString, token: &ChildToken) -> ! {
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
        "spawn" => {
            crate::sys::ignore_sigpipe();
            super::serve::serve(token, sock, super::setup::Shown::Other)
        }
        "server" => super::forkserver::serve(token, sock),
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
    // Only if not yet: a worker of the fork server inherits it set, and a write would copy
    // the page it shares with the server.
    if !MARKER_CONSUMED.load(Ordering::Relaxed) {
        MARKER_CONSUMED.store(true, Ordering::Relaxed);
    }
}
