//! Telling a stack overflow from any other `SIGSEGV`, in a worker, as std does for its threads.
//!
//! [`install`] gives the calling thread an alternate signal stack and installs a `SIGSEGV` /
//! `SIGBUS` handler. When the faulting address lies just below the stack pointer of the
//! interrupted code (a push or a stack probe that found no stack left), the handler writes a
//! pre-built message (the worker's last words, "stack overflow") to the parent's socket with
//! one `write(2)`. Either way it puts the default disposition back
//! and returns: the faulting instruction runs again and the process dies of the same signal,
//! so the exit status is still `SIGSEGV` (or `SIGBUS`). A signal sent with `kill` is raised
//! again, since returning would not repeat it.
//!
//! Only async-signal-safe calls happen in the handler (`write`, `sigaction`, `raise`); all
//! it reads was computed and stored by `install`, before any task ran.

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicPtr, AtomicUsize, Ordering};

/// The socket the notice goes to (`-1`: none).
static FD: AtomicI32 = AtomicI32::new(-1);
/// The notice: a whole frame, leaked by `install` so that it lives as long as the process.
static NOTICE: AtomicPtr<u8> = AtomicPtr::new(std::ptr::null_mut());
static NOTICE_LEN: AtomicUsize = AtomicUsize::new(0);
/// Whether the notice is sent (see [`arm`]).
static ARMED: AtomicBool = AtomicBool::new(false);
/// Whether this process has the handlers and the alternate stack (see [`install`]).
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// How far below the stack pointer a fault still counts as an overflow: a frame's stack
/// probes touch one page at a time below it, but code without probes (C) may reach further.
/// The kernel keeps a gap of 256 pages (1 MiB) below a growing stack, and nothing else is
/// mapped that close under the stack pointer, so a wild pointer landing there is no concern.
const REACH: usize = 1 << 20;

/// Bytes of the alternate signal stack (std uses `SIGSTKSZ`, at least 16 KiB, the same way).
const ALT_STACK: usize = 64 << 10;

/// Gives the calling thread an alternate signal stack and a `SIGSEGV`/`SIGBUS` handler that
/// writes `notice` to `fd` when the fault is a stack overflow. `fd` must stay open while the
/// handler may run; call [`forget_fd`] before closing it.
///
/// Cheap (an `mmap`, `sigaltstack` and two `sigaction`s), and done once per process: the
/// fork server installs it as it starts (with no fd), and its workers, which inherit the
/// handlers, the alternate stack and its mapping (across `clone` as across `fork`), only
/// store their fd. Finding the stack's bounds instead (`pthread_getattr_np`, as std does)
/// costs 45 µs on a main thread, a quarter of a fork-server worker's start.
pub(crate) fn install(fd: RawFd, notice: fn() -> Vec<u8>) -> io::Result<()> {
    if !HAS_STACK_POINTER {
        return Ok(()); // no way to tell here: the parent sees the signal alone
    }
    if !INSTALLED.load(Ordering::Relaxed) {
        handlers(notice())?;
        INSTALLED.store(true, Ordering::Relaxed);
    }
    FD.store(fd, Ordering::Release);
    Ok(())
}

/// In a child whose fault signals went back to their default (`unix::default_fault_signals`,
/// after a `fork` of the user's process): [`install`] must install the handlers again.
/// Async-signal-safe.
pub(crate) fn forget_handlers() {
    INSTALLED.store(false, Ordering::Relaxed);
}

/// The alternate stack and the handlers, with the notice they send.
fn handlers(notice: Vec<u8>) -> io::Result<()> {
    let notice = Box::leak(notice.into_boxed_slice());
    NOTICE_LEN.store(notice.len(), Ordering::Relaxed);
    NOTICE.store(notice.as_mut_ptr(), Ordering::Relaxed);
    alternate_stack()?;
    for sig in [libc::SIGSEGV, libc::SIGBUS] {
        // SAFETY: a zeroed `sigaction` is a valid value to fill in; `handler` has the
        // `SA_SIGINFO` signature and only makes async-signal-safe calls; `sigemptyset` gets a
        // valid mask to initialise.
        let ret = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = handler as *const () as usize;
            action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(sig, &action, std::ptr::null_mut())
        };
        if ret == -1 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Whether an overflow from now on sends the notice (`install` leaves it off).
pub(crate) fn arm(on: bool) {
    ARMED.store(on, Ordering::Relaxed);
}

/// Stops writing to the socket given to [`install`] (it is about to close).
pub(crate) fn forget_fd() {
    FD.store(-1, Ordering::Release);
}

/// True where [`stack_pointer`] can read the interrupted stack pointer.
const HAS_STACK_POINTER: bool = cfg!(any(target_arch = "x86_64", target_arch = "aarch64"));

/// The stack pointer of the code a signal interrupted.
///
/// # Safety
/// `ctx` must be the `ucontext_t` the kernel passed to an `SA_SIGINFO` handler.
#[cfg(target_arch = "x86_64")]
unsafe fn stack_pointer(ctx: *const libc::c_void) -> usize {
    // SAFETY: forwarded to the caller: `ctx` points to a valid `ucontext_t`.
    unsafe { (*ctx.cast::<libc::ucontext_t>()).uc_mcontext.gregs[libc::REG_RSP as usize] as usize }
}

/// The stack pointer of the code a signal interrupted.
///
/// # Safety
/// `ctx` must be the `ucontext_t` the kernel passed to an `SA_SIGINFO` handler.
#[cfg(target_arch = "aarch64")]
unsafe fn stack_pointer(ctx: *const libc::c_void) -> usize {
    // SAFETY: forwarded to the caller: `ctx` points to a valid `ucontext_t`.
    unsafe { (*ctx.cast::<libc::ucontext_t>()).uc_mcontext.sp as usize }
}

/// The stack pointer of the code a signal interrupted (not read on this architecture).
///
/// # Safety
/// None needed: it reads nothing.
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
unsafe fn stack_pointer(_ctx: *const libc::c_void) -> usize {
    0
}

/// Maps and installs an alternate signal stack for the calling thread: the handler of an
/// overflow cannot run on the stack that overflowed.
fn alternate_stack() -> io::Result<()> {
    // SAFETY: an anonymous private mapping with no address hint has no preconditions; it is
    // never unmapped (the worker keeps it for its whole life, as std keeps the main thread's).
    let mem = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            ALT_STACK,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if mem == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    let stack = libc::stack_t {
        ss_sp: mem,
        ss_flags: 0,
        ss_size: ALT_STACK,
    };
    // SAFETY: `stack` describes the fresh mapping above, which stays mapped.
    if unsafe { libc::sigaltstack(&stack, std::ptr::null_mut()) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

extern "C" fn handler(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid `siginfo_t` and `ucontext_t` to an `SA_SIGINFO`
    // handler.
    let (addr, code, sp) = unsafe {
        (
            (*info).si_addr() as usize,
            (*info).si_code,
            stack_pointer(ctx),
        )
    };
    let fd = FD.load(Ordering::Acquire);
    // A fault (not a `kill`) at or just below the stack pointer: the stack ran out. A page
    // of slack above covers an access at the stack pointer's own page.
    let near_sp = addr <= sp.saturating_add(4096) && sp.saturating_sub(addr) <= REACH;
    let overflow = code > 0 && near_sp && ARMED.load(Ordering::Relaxed);
    if overflow && fd >= 0 {
        let notice = NOTICE.load(Ordering::Relaxed);
        let len = NOTICE_LEN.load(Ordering::Relaxed);
        // SAFETY: `notice` points to `len` leaked bytes that live as long as the process;
        // `write` is async-signal-safe. A short or failed write is left as it is: the parent
        // then sees a truncated frame and reports the signal alone.
        unsafe { libc::write(fd, notice.cast(), len) };
    }
    // SAFETY: `sigaction` with SIG_DFL, and `raise`, are async-signal-safe; a zeroed
    // `sigaction` with SIG_DFL is a valid disposition.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = libc::SIG_DFL;
        libc::sigaction(sig, &action, std::ptr::null_mut());
        if code <= 0 {
            // Sent by `kill`/`raise` (SI_USER, SI_TKILL...): returning would not repeat it.
            // Blocked while this handler runs, it is delivered as the handler returns.
            libc::raise(sig);
        }
    }
    // Returning runs the faulting instruction again, now under the default disposition.
}
