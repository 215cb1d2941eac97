//! Floors shared by the benchmarks: raw `fork` + `waitpid`, measured beside mproc in the same
//! run.

pub type BoxResult<T> = Result<T, Box<dyn std::error::Error>>;

/// Reaps our child `pid`, retrying on EINTR; an error unless it exited with status 0.
pub fn reap(pid: libc::pid_t) -> BoxResult<()> {
    let mut status = 0;
    loop {
        // SAFETY: `pid` is our own unreaped child and `status` is a valid, writable c_int.
        let r = unsafe { libc::waitpid(pid, &raw mut status, 0) };
        if r == pid {
            break;
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err.into());
        }
    }
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        return Err(format!("child {pid} ended with raw status {status}").into());
    }
    Ok(())
}

/// The floor: fork a child that exits at once, and reap it.
pub fn fork_waitpid() -> BoxResult<()> {
    // SAFETY: the child calls only `_exit`, which is async-signal-safe, so forking a
    // (possibly multi-threaded) process is sound; the parent only reads the returned pid.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    if pid == 0 {
        // SAFETY: in the child; `_exit` ends it without running any of the parent's
        // destructors or atexit handlers.
        unsafe { libc::_exit(0) };
    }
    reap(pid)
}
