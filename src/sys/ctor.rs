//! Load-time constructors: how code runs in a process before its `main`.
//!
//! A `#[used]` function pointer in the platform's constructor section is called by the dynamic
//! loader (or the C runtime) for every executable that links mproc: binaries, unit and
//! integration test harnesses and doc tests alike. [`at_load!`] declares one. The layers above
//! register their own — the child entry (`child::entry`), and the serving rank of the MPI pool
//! (`mpi`) — so this layer knows nothing of what they run; each costs one `getenv` when the
//! process is not theirs. The order between two entries is the linker's: each must work
//! whichever runs first.

/// The signature the ELF `.init_array` calls with (glibc passes `argc`, `argv`, `envp`).
pub(crate) type InitFn =
    extern "C" fn(libc::c_int, *const *const libc::c_char, *const *const libc::c_char);

/// Declares a function `fn(&ChildToken)` that runs at load time, before `main`, in every
/// executable linking mproc: `at_load!(STATIC_NAME = path::to::function);`. The token is the
/// proof that the process has a single thread.
///
/// The function runs before the Rust runtime is set up: it must not unwind (catch every
/// panic), must not rely on `std::env::args`, and touches only the environment and fds.
macro_rules! at_load {
    ($name:ident = $f:path) => {
        const _: () = {
            #[allow(unsafe_code)]
            extern "C" fn entry(
                _argc: ::libc::c_int,
                _argv: *const *const ::libc::c_char,
                _envp: *const *const ::libc::c_char,
            ) {
                // SAFETY: load-time constructors run before `main`, while the process has
                // one thread.
                let token = unsafe { $crate::sys::child::token_at_load() };
                $f(&token)
            }
            // `#[used]` keeps the static even though nothing refers to it; the linker keeps
            // every `.init_array` entry of the objects it links (the default scripts `KEEP`
            // them). Not under Miri, which runs the pure-Rust decoder tests only: it calls
            // `.init_array` entries without glibc's three arguments.
            #[cfg(all(
                any(target_os = "linux", target_os = "android", target_os = "freebsd"),
                not(miri)
            ))]
            #[used]
            #[allow(unsafe_code)]
            // SAFETY: `.init_array` holds pointers to functions of exactly the `InitFn` shape,
            // which the runtime calls once, single-threaded, before `main`. `entry` ignores its
            // arguments and calls a `fn(&ChildToken)` that, as `at_load!` requires, never unwinds and only
            // touches the environment and fds.
            #[unsafe(link_section = ".init_array")]
            static $name: $crate::sys::ctor::InitFn = entry;

            #[cfg(all(target_vendor = "apple", not(miri)))]
            #[used]
            #[allow(unsafe_code)]
            // SAFETY: as above; `__mod_init_func` is the Mach-O constructor list dyld calls
            // before `main`.
            #[unsafe(link_section = "__DATA,__mod_init_func")]
            static $name: $crate::sys::ctor::InitFn = entry;
        };
    };
}
pub(crate) use at_load;
