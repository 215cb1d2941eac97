//! POSIX calls shared by every Unix target.

use std::io;
use std::mem::{self, MaybeUninit};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use rustix::io::Errno;
use rustix::process::{Pid, Signal};

/// How a child ended, as `waitpid` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum RawExit {
    /// `_exit(code)` or a return from `main`.
    Code(i32),
    /// Terminated by this signal.
    Signal(i32),
    /// Someone else reaped it (`waitpid(-1)`, `SIGCHLD` ignored): how it ended is lost.
    Unknown,
}

/// Runs a byte-count syscall wrapper (`-1` on error) until it is not interrupted.
fn retry_eintr(mut call: impl FnMut() -> isize) -> io::Result<usize> {
    loop {
        let ret = call();
        if ret != -1 {
            return Ok(ret as usize);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Runs a rustix call until it is not interrupted (`EINTR`), as a std error.
pub(super) fn retry<T>(mut call: impl FnMut() -> rustix::io::Result<T>) -> io::Result<T> {
    loop {
        match call() {
            Err(Errno::INTR) => continue,
            r => return r.map_err(io::Error::from),
        }
    }
}

/// `pid` as rustix's `Pid`: a positive number, or `err` (a zero or negative pid would name a
/// process group or every process, which no caller means).
fn positive_pid(pid: i32, err: Errno) -> rustix::io::Result<Pid> {
    if pid > 0 {
        Pid::from_raw(pid).ok_or(err)
    } else {
        Err(err)
    }
}

/// A signal number as rustix's `Signal`: `EINVAL` for a number that names none.
pub(super) fn signal_of(sig: i32) -> rustix::io::Result<Signal> {
    Signal::from_named_raw(sig).ok_or(Errno::INVAL)
}

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Ends the calling process at once: no destructors, no `atexit` handlers, no stdio flush.
///
/// Workers leave this way so that nothing the parent's `main` registered runs in them.
pub(crate) fn exit_now(code: i32) -> ! {
    // SAFETY: `_exit` is always safe to call; it does not return.
    unsafe { libc::_exit(code) }
}

/// Sets SIGPIPE to ignored, as Rust's `main` does (a worker never reaches `main`).
pub(crate) fn ignore_sigpipe() {
    // SAFETY: installing SIG_IGN for SIGPIPE has no memory-safety preconditions.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
}

/// Sets every signal disposition back to its default and unblocks all signals, except the
/// terminal's job-control signals that [`lead_own_group`] ignores.
///
/// A worker forked from a parent that installed handlers (a Ctrl-C handler, say) must not run
/// them: their state belongs to the parent.
pub(crate) fn reset_signals() {
    for sig in 1..65 {
        if matches!(
            sig,
            libc::SIGKILL | libc::SIGSTOP | libc::SIGTTIN | libc::SIGTTOU
        ) {
            continue;
        }
        // SAFETY: SIG_DFL is a valid disposition for every catchable signal; invalid numbers
        // just make `signal` return an error we ignore.
        unsafe {
            libc::signal(sig, libc::SIG_DFL);
        }
    }
    let mut set = MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: `sigemptyset` initialises the set it is given; `sigprocmask` reads it.
    unsafe {
        libc::sigemptyset(set.as_mut_ptr());
        libc::sigprocmask(libc::SIG_SETMASK, set.as_ptr(), std::ptr::null_mut());
    }
}

/// A thread's signal mask, saved by [`block_all_signals`].
pub(crate) struct SignalMask(libc::sigset_t);

/// Blocks every signal in the calling thread; returns the mask to put back with
/// [`restore_signals`]. Around a `fork`, it keeps a signal sent to the new child from reaching
/// a handler the child inherited but must not run (std's `SIGSEGV` handler swallows a sent
/// `SIGSEGV`), until the child has put its dispositions in order.
pub(crate) fn block_all_signals() -> SignalMask {
    let mut all = MaybeUninit::<libc::sigset_t>::uninit();
    let mut old = MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: `sigfillset` initialises `all`; `pthread_sigmask` reads it and fills `old`
    // (it cannot fail with a valid `how`, so `old` is initialised on return).
    unsafe {
        libc::sigfillset(all.as_mut_ptr());
        libc::pthread_sigmask(libc::SIG_SETMASK, all.as_ptr(), old.as_mut_ptr());
        SignalMask(old.assume_init())
    }
}

/// Puts back a mask saved by [`block_all_signals`]. Async-signal-safe.
pub(crate) fn restore_signals(mask: &SignalMask) {
    // SAFETY: `mask.0` is a mask `pthread_sigmask` filled in.
    unsafe {
        libc::pthread_sigmask(libc::SIG_SETMASK, &mask.0, std::ptr::null_mut());
    }
}

/// Gives `SIGSEGV` and `SIGBUS` their default disposition, in a freshly forked child: the
/// handler std installed in the parent returns from a *sent* `SIGSEGV` without dying, and the
/// worker's own (`stack_guard`) is installed later. Async-signal-safe.
pub(crate) fn default_fault_signals() {
    for sig in [libc::SIGSEGV, libc::SIGBUS] {
        // SAFETY: SIG_DFL is a valid disposition for both signals.
        unsafe {
            libc::signal(sig, libc::SIG_DFL);
        }
    }
    // A worker's own handler too, if the forking process was one.
    #[cfg(target_os = "linux")]
    super::stack_guard::forget_handlers();
}

/// This process's id.
///
/// Cached: `getpid` is a real system call (glibc stopped caching it), and lock paths ask for it
/// on every operation. A child forget the cache as it starts: mproc's own children in
/// `child::run_child`, other `fork`s through a `pthread_atfork` handler.
pub(crate) fn getpid() -> i32 {
    let cached = PID.load(Ordering::Relaxed);
    if cached != 0 {
        return cached;
    }
    static HANDLER: std::sync::Once = std::sync::Once::new();
    HANDLER.call_once(|| {
        // SAFETY: registers a child handler that only performs an atomic store
        // (async-signal-safe); the function lives for the whole program.
        unsafe { libc::pthread_atfork(None, None, Some(forget_pid_handler)) };
    });
    let pid = std::process::id() as i32;
    PID.store(pid, Ordering::Relaxed);
    pid
}

static PID: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

extern "C" fn forget_pid_handler() {
    forget_pid();
}

/// Drops the cached pid: called first thing in a new child. Async-signal-safe.
pub(crate) fn forget_pid() {
    // Only if set: the fork server never asks for its pid, and a write in its worker would
    // copy the page it shares with the server.
    if PID.load(Ordering::Relaxed) != 0 {
        PID.store(0, Ordering::Relaxed);
    }
}

/// The parent process's id (0 when it lives outside this pid namespace).
///
/// Async-signal-safe (one raw system call): may be called between `fork` and `exec`.
pub(crate) fn getppid() -> i32 {
    Pid::as_raw(rustix::process::getppid())
}

/// The result of [`fork`], seen from each side.
pub(super) enum Forked {
    /// In the parent, with the child's pid.
    Parent(i32),
    /// In the child.
    Child,
}

/// Forks the calling process.
///
/// # Safety
/// If the process has other threads, the child may only call async-signal-safe functions until
/// it execs or exits, or it must accept the hazards of locks held by threads that no longer
/// exist (the documented contract of the `Fork` start method).
pub(super) unsafe fn fork() -> io::Result<Forked> {
    // SAFETY: forwarded to the caller.
    match cvt(unsafe { libc::fork() })? {
        0 => Ok(Forked::Child),
        pid => Ok(Forked::Parent(pid)),
    }
}

/// Waits for a child to end and reaps it. With `block == false` returns `Ok(None)` while it
/// runs.
///
/// Every child mproc starts leads its own process group (see [`lead_own_group`]), and that
/// group ends with it: once the child has ended, and *before* it is reaped, whatever is left of
/// its group (a task's own subprocesses) is SIGKILLed. The order matters: until the reap, the
/// child's pid (the group's id) cannot be reused, so the signal cannot reach anyone else.
///
/// Retries on `EINTR`. A child reaped by someone else (`ECHILD`) is reported as
/// [`RawExit::Unknown`]: it has ended, and its pid must not be signalled any more (nor is its
/// group: the id may already belong to another).
pub(super) fn waitpid(pid: i32, block: bool) -> io::Result<Option<RawExit>> {
    match wait_unreaped(pid, block)? {
        Unreaped::Running => return Ok(None),
        Unreaped::Gone => return Ok(Some(RawExit::Unknown)),
        Unreaped::Ended => kill_group_only(pid, SIGKILL),
    }
    reap(pid, block)
}

/// What [`wait_unreaped`] saw.
enum Unreaped {
    /// Still running.
    Running,
    /// Ended and not reaped yet: its pid and group id are still ours.
    Ended,
    /// Not our child any more: someone else reaped it.
    Gone,
}

/// Waits (if `block`) for child `pid` to end, leaving it unreaped (`WNOWAIT`).
fn wait_unreaped(pid: i32, block: bool) -> io::Result<Unreaped> {
    use rustix::process::{WaitId, WaitIdOptions, waitid};
    let mut flags = WaitIdOptions::EXITED | WaitIdOptions::NOWAIT;
    if !block {
        flags |= WaitIdOptions::NOHANG;
    }
    let pid = match positive_pid(pid, Errno::CHILD) {
        Ok(pid) => pid,
        Err(_) => return Ok(Unreaped::Gone),
    };
    // `None`: nothing had ended under WNOHANG (rustix reads `si_pid` 0, as we did).
    match retry(|| waitid(WaitId::Pid(pid), flags)) {
        Ok(Some(_)) => Ok(Unreaped::Ended),
        Ok(None) => Ok(Unreaped::Running),
        Err(e) if e.raw_os_error() == Some(Errno::CHILD.raw_os_error()) => Ok(Unreaped::Gone),
        Err(e) => Err(e),
    }
}

/// Reaps child `pid` (plain `waitpid`).
fn reap(pid: i32, block: bool) -> io::Result<Option<RawExit>> {
    use rustix::process::{WaitOptions, waitpid};
    let flags = if block {
        WaitOptions::empty()
    } else {
        WaitOptions::NOHANG
    };
    let Ok(pid) = positive_pid(pid, Errno::CHILD) else {
        return Ok(Some(RawExit::Unknown));
    };
    match retry(|| waitpid(Some(pid), flags)) {
        Ok(Some((_, status))) => Ok(Some(decode_status(status.as_raw()))),
        Ok(None) => Ok(None),
        Err(e) if e.raw_os_error() == Some(Errno::CHILD.raw_os_error()) => {
            Ok(Some(RawExit::Unknown))
        }
        Err(e) => Err(e),
    }
}

fn decode_status(status: libc::c_int) -> RawExit {
    if libc::WIFSIGNALED(status) {
        RawExit::Signal(libc::WTERMSIG(status))
    } else {
        RawExit::Code(libc::WEXITSTATUS(status))
    }
}

/// Sends `sig` to `pid` with plain `kill(2)` (0: only checks that it could). Callers must know
/// `pid` is not reaped yet. A pid of 0 or less (a group, or everyone) is refused with `ESRCH`.
pub(super) fn kill(pid: i32, sig: i32) -> io::Result<()> {
    let pid = positive_pid(pid, Errno::SRCH)?;
    if sig == 0 {
        return Ok(rustix::process::test_kill_process(pid)?);
    }
    Ok(rustix::process::kill_process(pid, signal_of(sig)?)?)
}

/// Sends `sig` to the process group `pgid` (`kill(-pgid, sig)`).
fn kill_process_group(pgid: i32, sig: i32) -> io::Result<()> {
    let pgid = positive_pid(pgid, Errno::SRCH)?;
    Ok(rustix::process::kill_process_group(pgid, signal_of(sig)?)?)
}

/// Makes the calling process the leader of a new process group (its id is the caller's pid),
/// and ignores SIGTTIN and SIGTTOU.
///
/// Every worker, `Process` child and the fork server call this before they run anything, so
/// that (1) mproc can kill a child together with the subprocesses its tasks start
/// ([`kill_group`]), and (2) a terminal's Ctrl-C (SIGINT to the foreground process group)
/// reaches the user's program only, never its workers. A new group is never the terminal's
/// foreground group: reading the terminal would stop the child (SIGTTIN) and, under
/// `stty tostop`, so would writing to it (SIGTTOU). Ignored, a read fails with `EIO` instead
/// and a write goes through. Both dispositions are inherited across `exec`, by the child's own
/// subprocesses too.
///
/// The parent's half of [`lead_own_group`]: puts its new child `pid` in a group of its own
/// too, so that the child leads it by the time `fork` (or the fork server's reply) returns,
/// whichever of the two runs first — a Ctrl-C right after a spawn cannot reach the child
/// through the parent's group. Errors are ignored: the child may already be in its group,
/// have exec'd, or be gone; its own call decides then.
pub(crate) fn put_in_own_group(pid: i32) {
    if let (true, Some(pid)) = (pid > 1, Pid::from_raw(pid.max(0))) {
        let _ = rustix::process::setpgid(Some(pid), Some(pid));
    }
}

/// Async-signal-safe (`setpgid`, `signal`): may be called between `fork` and `exec`.
pub(crate) fn lead_own_group() -> io::Result<()> {
    make_own_group()?;
    ignore_terminal_stops();
    Ok(())
}

/// The first half of [`lead_own_group`]: the group alone, for a child that inherited SIGTTIN
/// and SIGTTOU ignored already (the fork server's: see [`ignore_terminal_stops`]).
/// Async-signal-safe.
pub(crate) fn make_own_group() -> io::Result<()> {
    // (None, None): "this process, as a new group" (`setpgid(0, 0)`); a raw system call.
    Ok(rustix::process::setpgid(None, None)?)
}

/// The second half of [`lead_own_group`]: ignores SIGTTIN and SIGTTOU. Ignored dispositions
/// survive `exec`, `fork` and `clone`, so a process that calls this once (the fork server, as
/// it starts) gives them ignored to every child it creates. Async-signal-safe.
pub(crate) fn ignore_terminal_stops() {
    for sig in [libc::SIGTTIN, libc::SIGTTOU] {
        // SAFETY: SIG_IGN is a valid disposition for both signals; no handler runs.
        unsafe { libc::signal(sig, libc::SIG_IGN) };
    }
}

/// Sends `sig` to child `pid` **and its process group**: first to the group `pid` leads
/// (`kill(-pid, sig)`; a task's own subprocesses are in it), then to `pid` itself, through its
/// `pidfd` where there is one. Returns the result of the second: `ESRCH` once the child has
/// ended.
///
/// `pid` must be an unreaped child of this process (as for any signal by pid): until it is
/// reaped, no other process can take its pid as its own or as a group's id, so the group
/// signal reaches the child's group or no one (`ESRCH`: the child has not made its group yet,
/// or the group is empty). After the reap it could reach a stranger: never call this then.
///
/// What escapes: a subprocess that left the group (`setsid`, `setpgid`, a shell with job
/// control starting a pipeline).
pub(super) fn kill_group(pid: i32, pidfd: Option<BorrowedFd<'_>>, sig: i32) -> io::Result<()> {
    kill_group_only(pid, sig);
    match pidfd {
        Some(fd) => super::pidfd_send_signal(fd, sig),
        None => kill(pid, sig),
    }
}

/// The first half of [`kill_group`]: the group `pid` leads, if it has one.
fn kill_group_only(pid: i32, sig: i32) {
    // `kill(-1)` would signal every process we may signal, `kill(-0)` our own group.
    if pid > 1 {
        // ESRCH (no such group) is the normal answer for a child without subprocesses that
        // has ended, or one that has not run `lead_own_group` yet.
        let _ = kill_process_group(pid, sig);
    }
}

/// Readiness reported by [`poll`] for one fd.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Ready {
    /// Data (or EOF, or an error) can be read without blocking.
    pub(crate) readable: bool,
}

/// Waits until one of `fds` is readable (or hung up), or `timeout` passes (`None`: forever).
///
/// Returns one entry per fd. Retries on `EINTR` with the time that is left.
pub(crate) fn poll_readable(
    fds: &[BorrowedFd<'_>],
    timeout: Option<Duration>,
) -> io::Result<Vec<Ready>> {
    use rustix::event::{PollFd, PollFlags, Timespec};
    let mut pfds: Vec<PollFd<'_>> = fds
        .iter()
        .map(|&fd| PollFd::from_borrowed_fd(fd, PollFlags::IN))
        .collect();
    let deadline = timeout.map(|t| std::time::Instant::now() + t);
    loop {
        let ms = deadline.map(|d| {
            let left = d.saturating_duration_since(std::time::Instant::now());
            // Whole milliseconds, as poll(2) takes them, rounded up so that a sub-millisecond
            // remainder does not spin at 0 ms.
            left.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as i64
        });
        let ts = ms.map(|ms| Timespec {
            tv_sec: ms / 1000,
            tv_nsec: (ms % 1000) * 1_000_000,
        });
        match rustix::event::poll(&mut pfds, ts.as_ref()) {
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
            Ok(_) => {}
        }
        let ready = PollFlags::IN | PollFlags::HUP | PollFlags::ERR | PollFlags::NVAL;
        return Ok(pfds
            .iter()
            .map(|p| Ready {
                readable: p.revents().intersects(ready),
            })
            .collect());
    }
}

/// Most fds one message may carry.
pub(crate) const MAX_FDS_PER_MSG: usize = 64;

/// Sends `data` and, in the same message, duplicates of `fds` (`SCM_RIGHTS`).
///
/// Returns the number of bytes sent (a stream socket may send fewer than `data.len()`; the fds
/// travel with the first byte).
pub(crate) fn send_with_fds(
    sock: BorrowedFd<'_>,
    data: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<usize> {
    if fds.len() > MAX_FDS_PER_MSG {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "too many fds in one message",
        ));
    }
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags, sendmsg};
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS_PER_MSG))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "too many fds in one message",
        ));
    }
    let iov = [io::IoSlice::new(data)];
    retry(|| sendmsg(sock, &iov, &mut control, SendFlags::NOSIGNAL))
}

/// Receives bytes into `buf` and any fds sent with them (`SCM_RIGHTS`), which arrive as
/// close-on-exec `OwnedFd`s. Returns `(0, [])` at end of stream.
pub(crate) fn recv_with_fds(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
) -> io::Result<(usize, Vec<OwnedFd>)> {
    recvmsg_fds(sock, buf, rustix::net::RecvFlags::empty())
}

/// [`recv_with_fds`] that never blocks: `WouldBlock` when nothing is waiting. The socket
/// itself stays blocking (`MSG_DONTWAIT`), so other holders of the same socket — a duplicate
/// in another process — are not affected.
pub(crate) fn recv_with_fds_nowait(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
) -> io::Result<(usize, Vec<OwnedFd>)> {
    recvmsg_fds(sock, buf, rustix::net::RecvFlags::DONTWAIT)
}

/// Control-message room for a receive: more than [`MAX_FDS_PER_MSG`] fds (a peer sending
/// too many is told by `MSG_CTRUNC`, not by a short buffer), aligned for `cmsghdr`.
#[repr(C, align(8))]
struct RecvControl([MaybeUninit<u8>; 576]);

fn recvmsg_fds(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    flags: rustix::net::RecvFlags,
) -> io::Result<(usize, Vec<OwnedFd>)> {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags};
    let mut space = RecvControl([MaybeUninit::uninit(); 576]);
    let mut control = RecvAncillaryBuffer::new(&mut space.0);
    let mut iov = [io::IoSliceMut::new(buf)];
    let got = retry(|| {
        rustix::net::recvmsg(
            sock,
            &mut iov,
            &mut control,
            RecvFlags::CMSG_CLOEXEC | flags,
        )
    })?;
    // Each SCM_RIGHTS payload's fds now belong to this process; what is not drained here is
    // closed when `control` drops.
    let mut fds = Vec::new();
    for msg in control.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = msg {
            fds.extend(rights);
        }
    }
    if got.flags.contains(ReturnFlags::CTRUNC) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "too many fds in one message",
        ));
    }
    let fds = fds
        .into_iter()
        .map(above_stdio)
        .collect::<io::Result<Vec<_>>>()?;
    Ok((got.bytes, fds))
}

/// Makes `fd` the descriptor numbered `target` (closing what was there) without close-on-exec.
pub(crate) fn dup_to(fd: BorrowedFd<'_>, target: RawFd) -> io::Result<()> {
    if fd.as_raw_fd() == target {
        return set_cloexec(fd, false);
    }
    // SAFETY: `dup2` takes plain integers; closing `target` is what the caller asked for.
    cvt(unsafe { libc::dup2(fd.as_raw_fd(), target) }).map(drop)
}

/// Makes the open descriptor `target` a close-on-exec copy of `fd` (what `target` referred to
/// is released), keeping its number taken.
pub(crate) fn dup_over(fd: BorrowedFd<'_>, target: RawFd) -> io::Result<()> {
    if !fd_is_open(target) {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    // Checked open above, so no number is newly taken behind an owner's back.
    dup_to(fd, target)?;
    // SAFETY: `target` is open (dup2 above made it a copy of `fd`) for this one call.
    set_cloexec(unsafe { BorrowedFd::borrow_raw(target) }, true)
}

/// A pipe, both ends close-on-exec and numbered above stdio: `(read, write)`.
pub(crate) fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    // `pipe2(O_CLOEXEC)` where there is one; elsewhere rustix falls back to `pipe` and
    // `fcntl`, with the window std's own `pipe` has there (a `fork` by another thread in
    // between inherits the ends).
    let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    Ok((above_stdio(r)?, above_stdio(w)?))
}

/// Sets or clears close-on-exec on `fd`.
///
/// Async-signal-safe (two raw system calls): may be called between `fork` and `exec`.
pub(crate) fn set_cloexec(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    use rustix::io::{FdFlags, fcntl_getfd, fcntl_setfd};
    let flags = fcntl_getfd(fd)?;
    let new = if on {
        flags | FdFlags::CLOEXEC
    } else {
        flags - FdFlags::CLOEXEC
    };
    Ok(fcntl_setfd(fd, new)?)
}

/// Takes ownership of a descriptor number inherited from the parent.
///
/// # Safety
/// `fd` must be open and owned by nobody else in this process.
pub(super) unsafe fn adopt_fd(fd: RawFd) -> OwnedFd {
    // SAFETY: forwarded to the caller.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Standard stream `fd` (0, 1 or 2), borrowed as std's `io::stdout().as_fd()` borrows it, for
/// as long as the caller likes: std never closes them.
pub(crate) fn std_stream(fd: RawFd) -> BorrowedFd<'static> {
    assert!((0..3).contains(&fd), "fd {fd} is no standard stream");
    // SAFETY: what std's own `AsFd` for `Stdin`, `Stdout` and `Stderr` does (`borrow_raw` of
    // 0, 1 or 2, for the life of a handle to a static): the standard streams belong to the
    // process and std never closes them. Code closing one by number breaks std's handles too;
    // then the fd is invalid for a system call (EBADF), not memory unsafe.
    unsafe { BorrowedFd::borrow_raw(fd) }
}

/// True when `fd` is an open descriptor.
pub(crate) fn fd_is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD on any integer is harmless; EBADF tells it is closed.
    unsafe { libc::fcntl(fd, libc::F_GETFD) != -1 }
}

/// Prepares `cmd` so that in the child, before `exec`, it leads its own process group
/// ([`lead_own_group`]), `sock` becomes fd `target` (inherited across exec) and, where the
/// platform has it, the child gets SIGKILL when the thread that spawns it ends.
pub(crate) fn command_child_setup(cmd: &mut Command, sock: RawFd, target: RawFd) {
    let parent = getpid();
    let setup = move || -> io::Result<()> {
        // Only async-signal-safe calls here: setpgid, signal, dup2, fcntl, prctl, getppid.
        lead_own_group()?;
        // SAFETY: `sock` is open in the child: the parent keeps it open until `spawn`
        // returns, and the child inherited it; the borrow ends with this call.
        dup_to(unsafe { BorrowedFd::borrow_raw(sock) }, target)?;
        crate::sys::set_parent_death_signal(parent)
    };
    // SAFETY: the closure only makes async-signal-safe calls, as `pre_exec` requires: raw
    // system calls through rustix (setpgid, fcntl, prctl, getppid), libc's `signal` and
    // `dup2`, and errors built from errno values (`io::Error::from_raw_os_error`, no
    // allocation).
    unsafe {
        cmd.pre_exec(setup);
    }
}

/// Opens `/dev/null` for reading and writing.
pub(crate) fn open_devnull() -> io::Result<OwnedFd> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    Ok(OwnedFd::from(f))
}

/// Turns an address inside this executable back into a function pointer of type `F`.
///
/// # Safety
/// `addr` must be the address of a function whose signature is exactly `F` in this same
/// executable image (checked by the binary identity exchange before any offset is used), and
/// `F` must be a function-pointer type.
pub(super) unsafe fn fn_from_addr<F: Copy>(addr: usize) -> F {
    assert_eq!(
        mem::size_of::<F>(),
        mem::size_of::<usize>(),
        "F must be a fn pointer type"
    );
    // SAFETY: forwarded to the caller; sizes checked above.
    unsafe { mem::transmute_copy::<usize, F>(&addr) }
}

/// A signal's conventional name, like `SIGKILL`.
pub(crate) fn signal_name(sig: i32) -> Option<&'static str> {
    Some(match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        libc::SIGSYS => "SIGSYS",
        _ => return None,
    })
}

/// Signal numbers the safe layers use.
pub(crate) const SIGTERM: i32 = libc::SIGTERM;
/// See [`SIGTERM`].
pub(crate) const SIGKILL: i32 = libc::SIGKILL;

/// Identity fallback: device, inode, size and mtime of the running executable.
pub(crate) fn exe_file_identity() -> io::Result<Vec<u8>> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(&super::self_exec()?.program)?;
    let mut out = Vec::with_capacity(40);
    for v in [
        m.dev(),
        m.ino(),
        m.size(),
        m.mtime() as u64,
        m.mtime_nsec() as u64,
    ] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    Ok(out)
}

/// Moves `fd` to a number of at least 3 if it is 0, 1 or 2, which happens when the program
/// closed its stdio: mproc's own fds must never be mistaken for (or passed on as) stdio.
pub(crate) fn above_stdio(fd: OwnedFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    // `fd` is closed by its drop.
    Ok(rustix::io::fcntl_dupfd_cloexec(&fd, 3)?)
}

/// A connected pair of stream Unix sockets, close-on-exec, numbered above stdio.
pub(crate) fn socket_pair() -> io::Result<(
    std::os::unix::net::UnixStream,
    std::os::unix::net::UnixStream,
)> {
    let (a, b) = std::os::unix::net::UnixStream::pair()?;
    Ok((above_stdio(a.into())?.into(), above_stdio(b.into())?.into()))
}

/// Gives `recv` on `fd` a timeout (`SO_RCVTIMEO`): a blocked receive then fails with
/// `WouldBlock`.
pub(crate) fn set_recv_timeout(fd: BorrowedFd<'_>, t: Duration) -> io::Result<()> {
    use rustix::net::sockopt::{Timeout, set_socket_timeout};
    Ok(set_socket_timeout(fd, Timeout::Recv, Some(t))?)
}

/// Sets the size of `fd`'s send buffer (`SO_SNDBUF`; the kernel doubles it), for tests that
/// need a writer to block early.
#[cfg(test)]
pub(crate) fn set_send_buffer(fd: BorrowedFd<'_>, bytes: usize) -> io::Result<()> {
    Ok(rustix::net::sockopt::set_socket_send_buffer_size(
        fd, bytes,
    )?)
}

/// Asks for a send buffer of `bytes` on `fd` (the kernel may cap it: `wmem_max`) and returns
/// the size it has now, whatever the kernel granted.
pub(crate) fn grow_send_buffer(fd: BorrowedFd<'_>, bytes: usize) -> usize {
    use rustix::net::sockopt::{set_socket_send_buffer_size, socket_send_buffer_size};
    let _ = set_socket_send_buffer_size(fd, bytes);
    socket_send_buffer_size(fd).unwrap_or(0)
}

/// A connected pair of `SOCK_SEQPACKET` Unix sockets (message boundaries kept), close-on-exec.
#[cfg(target_os = "linux")]
pub(crate) fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    use rustix::net::{AddressFamily, SocketFlags, SocketType, socketpair};
    let (a, b) = socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?;
    Ok((above_stdio(a)?, above_stdio(b)?))
}

/// Sends what of `bytes` fits in `sock` without waiting (`Ok(0)`: nothing did). Never raises
/// SIGPIPE.
pub(crate) fn send_nowait(sock: BorrowedFd<'_>, bytes: &[u8]) -> io::Result<usize> {
    use rustix::net::{SendFlags, send};
    match retry(|| send(sock, bytes, SendFlags::DONTWAIT | SendFlags::NOSIGNAL)) {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
        sent => sent,
    }
}

/// One `recv` that never blocks: `WouldBlock` when nothing is waiting.
pub(crate) fn recv_nowait(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    use rustix::net::{RecvFlags, recv};
    // The bytes received (the second number is the datagram's length, the same here).
    retry(|| recv(sock, &mut *buf, RecvFlags::DONTWAIT)).map(|(n, _)| n)
}

/// Caps this process's data segment (heap and private mappings) at `bytes`, so that a runaway
/// allocation fails in this process alone.
///
/// Only the soft limit is lowered: mproc lifts it for a moment to capture and symbolize a
/// panic's backtrace ([`with_memory_headroom`]), which must never fail half-way.
pub(crate) fn set_memory_limit(bytes: u64) -> io::Result<()> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut lim = getrlimit(Resource::Data);
    // `None` is unlimited.
    lim.current = Some(lim.maximum.map_or(bytes, |max| bytes.min(max)));
    setrlimit(Resource::Data, lim)?;
    MEMORY_LIMITED.store(LIMITED, Ordering::Relaxed);
    Ok(())
}

/// What [`memory_is_limited`] found, once asked: [`UNKNOWN`], [`LIMITED`] or [`UNLIMITED`].
static MEMORY_LIMITED: AtomicU8 = AtomicU8::new(UNKNOWN);
const UNKNOWN: u8 = 0;
const LIMITED: u8 = 1;
const UNLIMITED: u8 = 2;

/// True when this process's address space or data segment is capped (`ulimit -v`,
/// [`set_memory_limit`]): an allocation can then fail rather than the kernel's OOM killer
/// stepping in.
///
/// Asked of the kernel once per process, then remembered: the fork server asks as it starts,
/// and its workers inherit the answer (and their limits with it); [`set_memory_limit`] keeps
/// it up to date. A child of `fork` forgets it (`forget_memory_limit`): the user's program may
/// have changed its limits by itself.
pub(crate) fn memory_is_limited() -> bool {
    use rustix::process::{Resource, getrlimit};
    match MEMORY_LIMITED.load(Ordering::Relaxed) {
        LIMITED => return true,
        UNLIMITED => return false,
        _ => {}
    }
    let limited = [Resource::As, Resource::Data]
        .into_iter()
        .any(|r| getrlimit(r).current.is_some());
    let known = if limited { LIMITED } else { UNLIMITED };
    MEMORY_LIMITED.store(known, Ordering::Relaxed);
    limited
}

/// Forgets what [`memory_is_limited`] found (in a freshly forked child). Async-signal-safe.
pub(crate) fn forget_memory_limit() {
    MEMORY_LIMITED.store(UNKNOWN, Ordering::Relaxed);
}

/// Runs `f` with the data-segment soft limit raised to the hard limit, then lowers it again:
/// a panic's backtrace is captured and symbolized with room to spare, so that the allocator
/// never fails while std holds its backtrace lock (its out-of-memory hook takes that lock
/// too: a worker that ran out there hung forever). A limit the process cannot raise (a hard
/// `ulimit -v`) stays as it is.
pub(crate) fn with_memory_headroom<T>(f: impl FnOnce() -> T) -> T {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    // Below the hard limit (`None`: unlimited).
    let lim = Some(getrlimit(Resource::Data)).filter(|l| match (l.current, l.maximum) {
        (Some(cur), Some(max)) => cur < max,
        (Some(_), None) => true,
        (None, _) => false,
    });
    if let Some(l) = &lim {
        let lifted = Rlimit {
            current: l.maximum,
            maximum: l.maximum,
        };
        let _ = setrlimit(Resource::Data, lifted);
    }
    let out = f();
    if let Some(l) = lim {
        let _ = setrlimit(Resource::Data, l);
    }
    out
}

/// Writes all of `bytes` to the raw descriptor `fd`, retrying short writes and `EINTR`.
///
/// For a panic hook that must report before the runtime aborts (`panic = "abort"`), which has
/// only the number of the socket its worker serves on. A wrong `fd` is an error or a write to
/// whatever has that number; it cannot violate memory safety.
pub(crate) fn write_all_raw(fd: RawFd, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        // SAFETY: `bytes` is valid for reads of `bytes.len()` bytes for the call.
        let n = retry_eintr(|| unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) })?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        bytes = &bytes[n..];
    }
    Ok(())
}

/// Caps the processes and threads of this process's real user at `n` (`RLIMIT_NPROC`), so that
/// a fork bomb in this process stops at the cap. Root and `CAP_SYS_ADMIN`/`CAP_SYS_RESOURCE`
/// holders are exempt (the kernel's rule).
pub(crate) fn set_process_limit(n: u64) -> io::Result<()> {
    use rustix::process::{Resource, Rlimit, setrlimit};
    let lim = Rlimit {
        current: Some(n),
        maximum: Some(n),
    };
    Ok(setrlimit(Resource::Nproc, lim)?)
}
