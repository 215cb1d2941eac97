//! Fallbacks for Unix targets without Linux's extras (macOS, the BSDs): no pidfd, no
//! `CLONE_PARENT`, no parent-death signal. Not tested in CI yet; here so a port has a start.

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};

/// The path of the running executable.
pub(crate) fn exe_path() -> &'static str {
    // A real port would use `_NSGetExecutablePath` / `KERN_PROC_PATHNAME`.
    "/proc/curproc/file"
}

/// How to start this same program again: [`exe_path`] with [`args`](SelfExec::args) first.
#[derive(Debug)]
pub(crate) struct SelfExec {
    /// `argv[0]` for the new process.
    pub(crate) arg0: Option<std::ffi::OsString>,
    /// Arguments that come before any of ours (none here).
    pub(crate) args: Vec<std::ffi::OsString>,
    /// The program's own file (for its identity).
    pub(crate) program: std::path::PathBuf,
}

/// How to start this program again: its executable, as it is.
pub(crate) fn self_exec() -> io::Result<&'static SelfExec> {
    static FOUND: std::sync::OnceLock<SelfExec> = std::sync::OnceLock::new();
    Ok(FOUND.get_or_init(|| SelfExec {
        arg0: std::env::args_os().next(),
        args: Vec::new(),
        program: exe_path().into(),
    }))
}

/// No parent-death signal here; workers rely on their lifeline socket instead.
pub(crate) fn set_parent_death_signal(_expected_parent: i32) -> io::Result<()> {
    Ok(())
}

/// pidfds do not exist here.
pub(super) fn pidfd_open(_pid: i32) -> io::Result<OwnedFd> {
    Err(io::Error::from(io::ErrorKind::Unsupported))
}

/// pidfds do not exist here.
pub(super) fn pidfd_send_signal(_pidfd: BorrowedFd<'_>, _sig: i32) -> io::Result<()> {
    Err(io::Error::from(io::ErrorKind::Unsupported))
}

/// The result of `clone_sibling` (never produced here).
pub(super) enum Cloned {
    /// In the caller.
    Caller {
        /// The sibling's pid.
        pid: i32,
        /// A pidfd referring to the sibling.
        pidfd: Option<OwnedFd>,
    },
    /// In the new process.
    Child,
}

/// Not available here: the fork server is Linux-only.
///
/// # Safety
/// Never unsafe to call here; the signature matches Linux.
pub(super) unsafe fn clone_sibling() -> io::Result<Cloned> {
    Err(io::Error::from(io::ErrorKind::Unsupported))
}

/// No build id lookup here; the identity falls back to the executable file's metadata.
pub(crate) fn build_id() -> Option<Vec<u8>> {
    None
}

/// Not known here: addresses are not range-checked.
pub(crate) fn main_image_range() -> Option<(usize, usize)> {
    None
}

/// Whether this platform can create workers through a fork server.
pub(crate) const HAS_FORK_SERVER: bool = false;

/// True while `pid` runs. Without /proc, a zombie counts as running.
pub(crate) fn is_running(pid: i32) -> bool {
    super::unix::kill(pid, 0).is_ok()
}

/// No stack-overflow notice here yet (the port needs the stack bounds of a thread).
pub(crate) mod stack_guard {
    /// Does nothing here.
    pub(crate) fn install(
        _fd: std::os::fd::RawFd,
        _notice: fn() -> Vec<u8>,
    ) -> std::io::Result<()> {
        Ok(())
    }
    /// Does nothing here.
    pub(crate) fn arm(_on: bool) {}
    /// Does nothing here.
    pub(crate) fn forget_fd() {}
}

/// Does nothing here (macOS names only threads, with `pthread_setname_np`).
pub(crate) fn set_process_name(_name: &str) -> io::Result<()> {
    Ok(())
}

/// The CPU the calling thread runs on: not known here.
pub(crate) fn current_cpu() -> Option<usize> {
    None
}
