//! The load-time constructor: how a worker takes over its process before `main` runs.
//!
//! A `#[used]` function pointer in the platform's constructor section is called by the dynamic
//! loader (or the C runtime) for every executable that links mproc: binaries, unit and
//! integration test harnesses and doc tests alike. It costs one `getenv` when the process is not
//! a worker.

/// The signature the ELF `.init_array` calls with (glibc passes `argc`, `argv`, `envp`).
type InitFn = extern "C" fn(libc::c_int, *const *const libc::c_char, *const *const libc::c_char);

extern "C" fn mproc_on_load(
    _argc: libc::c_int,
    _argv: *const *const libc::c_char,
    _envp: *const *const libc::c_char,
) {
    let Some(marker) = super::child::take_env_at_load(super::child::MARKER_ENV) else {
        // Not an mproc worker (the marker wins: a serving rank's own workers inherit the
        // launcher's rank variables). Under MPI, every rank but 0 serves instead of `main`.
        #[cfg(feature = "mpi")]
        if crate::mpi::is_serving_rank() {
            crate::mpi::serve_at_load();
        }
        return;
    };
    crate::worker::on_load(marker, &super::child::token_at_load());
}

// `#[used]` keeps the static even though nothing refers to it; the linker keeps every
// `.init_array` entry of the objects it links (the default scripts `KEEP` them).
// Not under Miri, which runs the pure-Rust decoder tests only: it calls `.init_array` entries
// without glibc's three arguments (and no test under it starts a worker).
#[cfg(all(
    any(target_os = "linux", target_os = "android", target_os = "freebsd"),
    not(miri)
))]
#[used]
// SAFETY: `.init_array` holds pointers to functions of exactly the `InitFn` shape, which the
// runtime calls once, single-threaded, before `main`. Our function never unwinds out
// (`worker::on_load` catches every panic) and only touches the environment and fds; under the
// `mpi` feature a serving rank runs `mpi::serve_at_load` instead, which also catches every
// panic and exits without returning.
#[unsafe(link_section = ".init_array")]
static MPROC_INIT: InitFn = mproc_on_load;

#[cfg(all(target_vendor = "apple", not(miri)))]
#[used]
// SAFETY: as above; `__mod_init_func` is the Mach-O constructor list dyld calls before `main`.
#[unsafe(link_section = "__DATA,__mod_init_func")]
static MPROC_INIT: InitFn = mproc_on_load;

/// The [`crate::init`] fallback: serve as a worker from `main` when the constructor did not.
pub(crate) fn run_from_init(marker: std::ffi::OsString) -> ! {
    // The marker stays in the environment (removing it is not thread-safe here); the worker
    // overrides it for every process it starts itself.
    crate::worker::on_load(marker, &super::child::token_at_load())
}
