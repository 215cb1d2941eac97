//! Telling a stack overflow from any other `SIGSEGV`, in a worker, as std does for its threads.
//!
//! [`install`] gives the calling thread an alternate signal stack and installs a `SIGSEGV` /
//! `SIGBUS` handler. When the faulting address lies in the guard area just below the thread's
//! stack, the handler writes a pre-built message (the worker's last words, "stack overflow")
//! to the parent's socket with one `write(2)`. Either way it puts the default disposition back
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
/// Addresses `[LOW, HIGH)` whose fault means the stack ran out.
static LOW: AtomicUsize = AtomicUsize::new(0);
static HIGH: AtomicUsize = AtomicUsize::new(0);
/// Whether the notice is sent (see [`arm`]).
static ARMED: AtomicBool = AtomicBool::new(false);

/// How far below the lowest address of the stack a fault still counts as an overflow: the
/// kernel's default `stack_guard_gap` (256 pages) for the main thread, whose guard is not a
/// mapping of its own; a thread's guard page is inside it.
const GAP: usize = 256 << 12;

/// Bytes of the alternate signal stack (std uses `SIGSTKSZ`, at least 16 KiB, the same way).
const ALT_STACK: usize = 64 << 10;

/// Gives the calling thread an alternate signal stack and a `SIGSEGV`/`SIGBUS` handler that
/// writes `notice` to `fd` when the fault is a stack overflow. `fd` must stay open while the
/// handler may run; call [`forget_fd`] before closing it.
pub(crate) fn install(fd: RawFd, notice: Vec<u8>) -> io::Result<()> {
    let (low, guard) = stack_low_and_guard()?;
    // SAFETY: `sysconf` has no preconditions.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    LOW.store(low.saturating_sub(guard.max(GAP)), Ordering::Relaxed);
    HIGH.store(low.saturating_add(page), Ordering::Relaxed);
    let notice = Box::leak(notice.into_boxed_slice());
    NOTICE_LEN.store(notice.len(), Ordering::Relaxed);
    NOTICE.store(notice.as_mut_ptr(), Ordering::Relaxed);
    FD.store(fd, Ordering::Release);
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

/// The lowest address of the calling thread's stack and the size of its guard.
fn stack_low_and_guard() -> io::Result<(usize, usize)> {
    let mut attr = std::mem::MaybeUninit::<libc::pthread_attr_t>::uninit();
    // SAFETY: `pthread_getattr_np` initialises `attr` for the calling thread when it returns
    // 0 (for the main thread glibc reads /proc/self/maps and the stack rlimit: not
    // async-signal-safe, and not needed to be: this runs before any task);
    // `pthread_attr_getstack` / `getguardsize` read it into valid out-pointers; it is
    // destroyed once, after use.
    unsafe {
        let ret = libc::pthread_getattr_np(libc::pthread_self(), attr.as_mut_ptr());
        if ret != 0 {
            return Err(io::Error::from_raw_os_error(ret));
        }
        let mut addr = std::ptr::null_mut();
        let mut size = 0;
        let mut guard = 0;
        let a = libc::pthread_attr_getstack(attr.as_ptr(), &mut addr, &mut size);
        let g = libc::pthread_attr_getguardsize(attr.as_ptr(), &mut guard);
        libc::pthread_attr_destroy(attr.as_mut_ptr());
        if a != 0 || g != 0 {
            return Err(io::Error::from_raw_os_error(if a != 0 { a } else { g }));
        }
        Ok((addr as usize, guard))
    }
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

extern "C" fn handler(sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid `siginfo_t` to an `SA_SIGINFO` handler.
    let (addr, code) = unsafe { ((*info).si_addr() as usize, (*info).si_code) };
    let fd = FD.load(Ordering::Acquire);
    let overflow = code > 0
        && (LOW.load(Ordering::Relaxed)..HIGH.load(Ordering::Relaxed)).contains(&addr)
        && ARMED.load(Ordering::Relaxed);
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
