//! Entering a new process: forking, and what only a single-threaded new process may do.
//!
//! [`ChildToken`] is the proof of being single-threaded. Only the constructor and the child
//! side of [`fork_child`] / [`clone_sibling_child`] receive one, and the operations that would
//! race with other threads (changing the environment, replacing stdio) require it.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};

use std::os::unix::ffi::OsStrExt;

use super::unix::{Forked, fork};

/// Proof that the current process has a single thread (a fresh child, or the constructor).
pub(crate) struct ChildToken(());

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

/// Runs `child` in a forked copy of this process, which then exits with its return value.
/// Returns the child's pid in the parent. The child leads its own process group.
///
/// # Hazards (the `Fork` start method's documented contract)
/// Only the calling thread exists in the child. A lock another thread held at the moment of
/// `fork` stays locked forever there; glibc resets its own (malloc, stdio) through `atfork`
/// handlers, but Rust `Mutex`es and foreign libraries' locks are not reset.
pub(crate) fn fork_child(child: impl FnOnce(&ChildToken) -> i32) -> io::Result<i32> {
    // Signals wait until the child has dropped the fault handler it inherited (see
    // `default_fault_signals`): a `kill` right after `fork` returns must still kill it.
    let mask = super::unix::block_all_signals();
    // SAFETY: POSIX only promises async-signal-safe calls in the child of a multithreaded
    // process. The `Fork` start method deliberately runs ordinary Rust code there, exactly as
    // Python's `fork` does; it is opt-in and documented with these hazards (deadlock on locks
    // held by vanished threads), which are liveness, not memory-safety, failures with glibc.
    let forked = unsafe { fork() };
    if let Ok(Forked::Child) = forked {
        super::unix::default_fault_signals();
        super::unix::forget_memory_limit();
    }
    super::unix::restore_signals(&mask);
    match forked? {
        Forked::Parent(pid) => {
            super::unix::put_in_own_group(pid);
            Ok(pid)
        }
        Forked::Child => run_child(child, super::unix::lead_own_group),
    }
}

/// Runs `child` in a new *sibling* process (see `clone_sibling`), which then exits with its
/// return value. Returns the sibling's pid and a pidfd for it. The sibling leads its own
/// process group.
///
/// Only the fork server calls this, and it is single-threaded (checked in debug builds). It
/// ignores SIGTTIN and SIGTTOU as it starts (`unix::ignore_terminal_stops`), so the sibling
/// inherits them ignored and only makes its group: two system calls fewer per worker.
pub(crate) fn clone_sibling_child(
    child: impl FnOnce(&ChildToken) -> i32,
) -> io::Result<(i32, Option<OwnedFd>)> {
    debug_assert_eq!(
        thread_count(),
        Some(1),
        "clone_sibling_child needs a single-threaded caller"
    );
    // SAFETY: the fork server that calls this runs from the load-time constructor and never
    // starts a thread, so the child inherits no lock held by another thread.
    match unsafe { super::clone_sibling() }? {
        super::Cloned::Caller { pid, pidfd } => Ok((pid, pidfd)),
        super::Cloned::Child => run_child(child, super::unix::make_own_group),
    }
}

/// Runs the child side and exits; a panic never unwinds into the parent's copied frames.
///
/// The child first leads its own process group (`group`: `unix::lead_own_group`, or its first
/// half where the second is inherited), before it runs anything that could start a
/// subprocess: what it starts is then killed with it.
fn run_child(child: impl FnOnce(&ChildToken) -> i32, group: fn() -> io::Result<()>) -> ! {
    // A raw `clone` runs no `pthread_atfork` handler: forget the parent's pid here.
    super::unix::forget_pid();
    if group().is_err() {
        // Cannot happen (only a session leader is refused, and a new child is none); without
        // its own group the child's subprocesses could not be contained, so it does not serve.
        super::exit_now(EXIT_INTERNAL);
    }
    let token = ChildToken(());
    let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| child(&token)))
        .unwrap_or(EXIT_INTERNAL);
    super::exit_now(code)
}

/// The number of threads of this process, where `/proc` tells.
pub(crate) fn thread_count() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Threads:"))?;
    line["Threads:".len()..].trim().parse().ok()
}

/// Takes (reads and removes) an environment variable, so that nothing this process starts
/// later inherits it.
pub(crate) fn take_env(token: &ChildToken, key: &str) -> Option<OsString> {
    let value = getenv(token, key)?;
    remove_env(token, key);
    Some(value)
}

/// Reads an environment variable without std's environment lock, which a thread of the parent
/// may have held at `fork` time.
pub(crate) fn getenv(_token: &ChildToken, key: &str) -> Option<OsString> {
    use std::os::unix::ffi::OsStringExt;
    with_c_key(key, |k| {
        // SAFETY: the token proves the process is single-threaded, so nothing modifies the
        // environment during the call; a non-null result is a valid NUL-terminated string that
        // we copy out before returning.
        unsafe {
            let v = libc::getenv(k.as_ptr());
            if v.is_null() {
                return None;
            }
            Some(OsString::from_vec(
                std::ffi::CStr::from_ptr(v).to_bytes().to_vec(),
            ))
        }
    })
}

/// True when the variable is set (what [`getenv`] would find, without copying it out).
fn env_is_set(_token: &ChildToken, key: &str) -> bool {
    with_c_key(key, |k| {
        // SAFETY: as in `getenv`; the result is only compared with null.
        Some(unsafe { !libc::getenv(k.as_ptr()).is_null() })
    })
    .unwrap_or(false)
}

/// Calls `f` with `key` as a C string, built on the stack when it is short (every key mproc
/// reads is): a worker starting up reads a dozen variables, and each allocation there writes
/// to a heap page it shares with the fork server (a page fault of a few microseconds).
/// `None` when `key` holds a NUL byte (no variable has such a name).
fn with_c_key<T>(key: &str, f: impl FnOnce(&std::ffi::CStr) -> Option<T>) -> Option<T> {
    with_c_str(key.as_bytes(), f)
}

/// As [`with_c_key`], for any bytes (on the stack up to 127 of them).
fn with_c_str<T>(bytes: &[u8], f: impl FnOnce(&std::ffi::CStr) -> Option<T>) -> Option<T> {
    let mut buf = [0u8; 128];
    if bytes.len() < buf.len() {
        buf[..bytes.len()].copy_from_slice(bytes);
        let c = std::ffi::CStr::from_bytes_until_nul(&buf).ok()?;
        // A NUL inside would make it a shorter string: refuse it, as `CString` does.
        return (c.to_bytes().len() == bytes.len()).then(|| f(c)).flatten();
    }
    let c = std::ffi::CString::new(bytes).ok()?;
    f(&c)
}

/// Applies environment changes in a fresh child, as `setenv(k, v, 1)` for each pair in turn
/// would (a pair with an empty name, a `=` in the name or a NUL byte is skipped). Works on the
/// C library's environment directly: std's own environment lock may have been held by
/// another thread of the parent at `fork` time.
pub(crate) fn set_envs(token: &ChildToken, vars: &[(OsString, OsString)]) {
    #[cfg(target_os = "linux")]
    replace_environ(token, vars);
    #[cfg(not(target_os = "linux"))]
    set_envs_one_by_one(token, vars);
}

/// `set_envs` in one go: a new `environ` array, the variables kept then the new ones, built in
/// three allocations where `setenv` allocated, searched and copied for each variable (writes
/// to a heap a fresh worker shares with the fork server: eight page faults per worker).
/// POSIX lets a program assign `environ`, and glibc's `getenv`, `setenv` and `unsetenv` work
/// from whatever array it points to (the next `setenv` copies it first). The old array and
/// the strings replaced are left as they are: a worker sets its environment once.
#[cfg(target_os = "linux")]
fn replace_environ(_token: &ChildToken, vars: &[(OsString, OsString)]) {
    use std::os::raw::c_char;
    unsafe extern "C" {
        static mut environ: *mut *mut c_char;
    }
    let mut new: Vec<(&[u8], &[u8])> = Vec::with_capacity(vars.len());
    for (k, v) in vars {
        let (k, v) = (k.as_bytes(), v.as_bytes());
        if k.is_empty() || k.contains(&b'=') || k.contains(&0) || v.contains(&0) {
            continue;
        }
        match new.iter_mut().find(|(name, _)| *name == k) {
            Some(pair) => pair.1 = v,
            None => new.push((k, v)),
        }
    }
    if new.is_empty() {
        return;
    }
    // SAFETY: the token proves the process is single-threaded, so nothing reads or changes
    // the environment meanwhile; `environ` is null or a null-terminated array of pointers to
    // NUL-terminated strings (POSIX), read here through a raw pointer, never a reference.
    let old: Vec<*mut c_char> = unsafe {
        let mut old = Vec::new();
        let array = std::ptr::addr_of!(environ).read();
        if !array.is_null() {
            let mut i = 0;
            while !(*array.add(i)).is_null() {
                old.push(*array.add(i));
                i += 1;
            }
        }
        old
    };
    let name_of = |entry: *mut c_char| {
        // SAFETY: `entry` is one of the NUL-terminated strings of the array read above, which
        // nothing frees while this runs (single-threaded, no environment call in between).
        let bytes = unsafe { std::ffi::CStr::from_ptr(entry) }.to_bytes();
        bytes.split(|&b| b == b'=').next().unwrap_or_default()
    };
    let size = new.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
    let mut block: Vec<u8> = Vec::with_capacity(size);
    let mut starts = Vec::with_capacity(new.len());
    for (k, v) in &new {
        starts.push(block.len());
        block.extend_from_slice(k);
        block.push(b'=');
        block.extend_from_slice(v);
        block.push(0);
    }
    // Never freed: the new array points into it for the rest of the process.
    let base = block.leak().as_mut_ptr();
    let mut array: Vec<*mut c_char> = Vec::with_capacity(old.len() + new.len() + 1);
    let replaced = |e: &*mut c_char| new.iter().any(|(k, _)| *k == name_of(*e));
    array.extend(old.iter().filter(|e| !replaced(e)));
    array.extend(
        starts
            .iter()
            .map(|&s| base.wrapping_add(s).cast::<c_char>()),
    );
    array.push(std::ptr::null_mut());
    // SAFETY: as above (single-threaded); the array is null-terminated, and it and every
    // string it points to live for the rest of the process (leaked).
    unsafe { std::ptr::addr_of_mut!(environ).write(array.leak().as_mut_ptr()) };
}

/// `set_envs` through `setenv`, one variable at a time.
#[cfg(not(target_os = "linux"))]
fn set_envs_one_by_one(_token: &ChildToken, vars: &[(OsString, OsString)]) {
    for (k, v) in vars {
        // A NUL byte cannot be in the environment: such a pair is skipped.
        with_c_str(k.as_bytes(), |k| {
            with_c_str(v.as_bytes(), |v| {
                // SAFETY: the token proves the process is single-threaded; both strings are
                // valid NUL-terminated C strings for the duration of the call.
                unsafe { libc::setenv(k.as_ptr(), v.as_ptr(), 1) };
                Some(())
            })
        });
    }
}

/// Removes a variable in a fresh child.
pub(crate) fn remove_env(token: &ChildToken, key: &str) {
    if !env_is_set(token, key) {
        return; // nothing to do: skip glibc's environment lock entirely
    }
    with_c_key(key, |k| {
        // SAFETY: as in `set_envs`.
        unsafe { libc::unsetenv(k.as_ptr()) };
        Some(())
    });
}

/// Makes `fd` the child's descriptor `target` (0, 1 or 2 for stdio), inherited across exec.
pub(crate) fn replace_fd(_token: &ChildToken, fd: BorrowedFd<'_>, target: RawFd) -> io::Result<()> {
    super::dup_to(fd, target)
}

/// Takes ownership of an fd number this process inherited, named by its parent in the marker.
pub(crate) fn adopt_inherited_fd(_token: &ChildToken, fd: RawFd) -> io::Result<OwnedFd> {
    if fd < 3 || !super::fd_is_open(fd) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the worker marker names no open fd",
        ));
    }
    // SAFETY: the parent put this fd here for us (checked open above) and nothing else in this
    // fresh process refers to it.
    let owned = unsafe { super::adopt_fd(fd) };
    super::set_cloexec(owned.as_fd(), true)?;
    Ok(owned)
}

/// A token for code that runs in a load-time constructor (`sys::ctor::at_load!`).
///
/// # Safety
/// Only while the process has one thread: before `main`, in a load-time constructor.
pub(crate) unsafe fn token_at_load() -> ChildToken {
    ChildToken(())
}

/// A token for [`crate::init`], called first thing in `main` where constructors do not run:
/// `None` if the process already has another thread (where `/proc` can tell).
pub(crate) fn token_if_single_threaded() -> Option<ChildToken> {
    thread_count()
        .is_none_or(|n| n == 1)
        .then_some(ChildToken(()))
}

/// Closes, in a fresh child, an fd the parent side still owns (the child never drops the
/// parent's owner: it exits without unwinding).
pub(crate) fn close_inherited(_token: &ChildToken, fd: BorrowedFd<'_>) {
    use std::os::fd::AsRawFd;
    // SAFETY: in the child, the object owning this fd belongs to a stack frame of the parent's
    // copy that is never unwound or returned to (the child leaves through `_exit`), so closing
    // it here cannot cause a double close or a use of a closed fd.
    unsafe {
        libc::close(fd.as_raw_fd());
    }
}

/// As [`close_inherited`], for an fd known by number only.
pub(crate) fn close_inherited_raw(_token: &ChildToken, fd: RawFd) {
    // SAFETY: as in `close_inherited`; the owner of this fd (the parent's fork server handle)
    // is never used or dropped in this child, which forgets it.
    unsafe {
        libc::close(fd);
    }
}

/// Takes ownership, in a fresh child, of an fd whose owner belongs to the parent side (see
/// [`close_inherited`] for why this is sound).
pub(crate) fn take_inherited(_token: &ChildToken, fd: BorrowedFd<'_>) -> OwnedFd {
    use std::os::fd::AsRawFd;
    // SAFETY: as in `close_inherited`: the original owner is never dropped in the child, so
    // this becomes the only owner there.
    unsafe { super::adopt_fd(fd.as_raw_fd()) }
}

#[cfg(test)]
mod tests {
    use super::with_c_key;

    #[test]
    fn keys_become_c_strings_short_or_long_and_a_nul_is_refused() {
        let c = |key: &str| with_c_key(key, |k| Some(k.to_bytes().to_vec()));
        assert_eq!(c("PATH").as_deref(), Some(&b"PATH"[..]));
        assert_eq!(c(""), Some(Vec::new()));
        let long = "K".repeat(200);
        assert_eq!(c(&long), Some(long.clone().into_bytes()));
        let edge = "E".repeat(127);
        assert_eq!(c(&edge), Some(edge.clone().into_bytes()));
        assert_eq!(c("A\0B"), None);
        assert_eq!(c(&format!("{long}\0")), None);
    }
}
