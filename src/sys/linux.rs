//! Linux-only calls: pidfds, `clone(CLONE_PARENT)`, the parent-death signal, the ELF build id.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// The path that re-executes the running program, even if its file was replaced on disk.
pub(crate) fn exe_path() -> &'static str {
    "/proc/self/exe"
}

/// Asks the kernel to SIGKILL this process when the thread that created it ends, then checks
/// that this has not happened already (`expected_parent` is gone).
///
/// Async-signal-safe: may be called between `fork` and `exec`.
pub(crate) fn set_parent_death_signal(expected_parent: i32) -> io::Result<()> {
    // SAFETY: PR_SET_PDEATHSIG with a valid signal number has no memory-safety preconditions.
    let ret = unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    if ret == -1 {
        return Err(io::Error::last_os_error());
    }
    // The parent may have died before the prctl: then we were re-parented and must go.
    // SAFETY: `getppid` has no preconditions.
    if unsafe { libc::getppid() } != expected_parent {
        // No allocation here: this runs between fork and exec.
        return Err(io::Error::from_raw_os_error(libc::ESRCH));
    }
    Ok(())
}

/// Opens a pidfd for `pid`, which must be an unreaped child of this process (so the pid
/// cannot have been recycled).
pub(crate) fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: the raw syscall takes two integers and returns a new fd or -1.
    let ret = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a fresh fd that nobody else owns.
    super::above_stdio(unsafe { OwnedFd::from_raw_fd(ret as i32) })
}

/// Sends `sig` through a pidfd: it can never hit a recycled pid.
pub(crate) fn pidfd_send_signal(pidfd: BorrowedFd<'_>, sig: i32) -> io::Result<()> {
    // SAFETY: the raw syscall takes an fd, a signal, a null siginfo and zero flags.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// The result of [`clone_sibling`], seen from each side.
pub(super) enum Cloned {
    /// In the caller: the new process's pid and a pidfd for it (`None` on kernels before
    /// 5.2, which ignore `CLONE_PIDFD`).
    Caller {
        /// The sibling's pid.
        pid: i32,
        /// A pidfd referring to the sibling.
        pidfd: Option<OwnedFd>,
    },
    /// In the new process.
    Child,
}

/// Creates a process that is a *sibling* of the caller: its parent is the caller's parent, who
/// gets its SIGCHLD and can `waitpid` it. Used by the fork server so that workers are children
/// of the user's process, not of the server.
///
/// Plain `clone`, not `clone3`: `clone3` rejects `CLONE_PARENT` with an exit signal, and some
/// seccomp profiles refuse `clone3` outright.
///
/// # Safety
/// The caller must be single-threaded (the fork server is): the child runs with a copy of the
/// caller's memory and no `atfork` handlers run. The child may then use the C library and std
/// freely, because no lock can be held by another thread.
pub(super) unsafe fn clone_sibling() -> io::Result<Cloned> {
    let mut pidfd: libc::c_int = -1;
    let flags =
        (libc::CLONE_PARENT | libc::CLONE_PIDFD) as libc::c_ulong | libc::SIGCHLD as libc::c_ulong;
    // SAFETY: with a null stack the kernel gives the child a copy-on-write copy of our stack,
    // like fork; `pidfd` is a valid out-pointer (the parent-tid slot when CLONE_PIDFD is set).
    // Argument order (flags, stack, parent_tid, child_tid, tls) holds for x86_64 and aarch64
    // in the slots we use.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone,
            flags,
            0usize,
            &mut pidfd as *mut libc::c_int,
            0usize,
            0usize,
        )
    };
    match ret {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(Cloned::Child),
        pid => Ok(Cloned::Caller {
            pid: pid as i32,
            // SAFETY: when non-negative, CLONE_PIDFD stored a fresh fd that nobody else owns.
            pidfd: (pidfd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(pidfd) }),
        }),
    }
}

/// Context for the `dl_iterate_phdr` callback.
struct BuildIdSearch {
    found: Option<Vec<u8>>,
}

unsafe extern "C" fn find_build_id(
    info: *mut libc::dl_phdr_info,
    _size: libc::size_t,
    data: *mut libc::c_void,
) -> libc::c_int {
    // SAFETY: `data` is the `BuildIdSearch` passed by `build_id` and `info` is valid for the
    // call, per dl_iterate_phdr's contract. The first object reported is the main program.
    // Its PT_NOTE segments are mapped at `dlpi_addr + p_vaddr` for `p_memsz` bytes; we read
    // within those bounds only, checking every note's sizes before using them.
    unsafe {
        let search = &mut *(data as *mut BuildIdSearch);
        let info = &*info;
        for i in 0..info.dlpi_phnum as usize {
            let ph = &*info.dlpi_phdr.add(i);
            if ph.p_type != libc::PT_NOTE {
                continue;
            }
            let start = (info.dlpi_addr as usize + ph.p_vaddr as usize) as *const u8;
            let notes = std::slice::from_raw_parts(start, ph.p_memsz as usize);
            if let Some(id) = parse_build_id_notes(notes) {
                search.found = Some(id.to_vec());
                break;
            }
        }
    }
    1 // only the main program: stop after the first object
}

/// Finds the GNU build-id descriptor in a PT_NOTE segment.
pub(crate) fn parse_build_id_notes(mut notes: &[u8]) -> Option<&[u8]> {
    const NT_GNU_BUILD_ID: u32 = 3;
    let word = |b: &[u8]| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]);
    while notes.len() >= 12 {
        let (namesz, descsz, kind) = (
            word(notes) as usize,
            word(&notes[4..]) as usize,
            word(&notes[8..]),
        );
        let name_end = 12usize.checked_add(namesz)?;
        let desc_start = name_end.checked_next_multiple_of(4)?;
        let desc_end = desc_start.checked_add(descsz)?;
        if desc_end > notes.len() {
            return None;
        }
        if kind == NT_GNU_BUILD_ID && &notes[12..name_end] == b"GNU\0" {
            return Some(&notes[desc_start..desc_end]);
        }
        notes = &notes[desc_end.checked_next_multiple_of(4)?.min(notes.len())..];
    }
    None
}

/// The main executable's GNU build id, read from memory (< 1 µs), if it has one.
pub(crate) fn build_id() -> Option<Vec<u8>> {
    let mut search = BuildIdSearch { found: None };
    // SAFETY: the callback matches dl_iterate_phdr's signature and only reads the memory it
    // describes; `search` outlives the call.
    unsafe {
        libc::dl_iterate_phdr(
            Some(find_build_id),
            (&mut search as *mut BuildIdSearch).cast(),
        );
    }
    search.found
}

unsafe extern "C" fn find_main_range(
    info: *mut libc::dl_phdr_info,
    _size: libc::size_t,
    data: *mut libc::c_void,
) -> libc::c_int {
    // SAFETY: `data` is the `(usize, usize)` passed by `main_image_range`; `info` and its
    // program headers are valid for the call, per dl_iterate_phdr's contract. The first object
    // reported is the main program.
    unsafe {
        let range = &mut *(data as *mut (usize, usize));
        let info = &*info;
        for i in 0..info.dlpi_phnum as usize {
            let ph = &*info.dlpi_phdr.add(i);
            if ph.p_type == libc::PT_LOAD {
                let start = info.dlpi_addr as usize + ph.p_vaddr as usize;
                range.0 = range.0.min(start);
                range.1 = range.1.max(start + ph.p_memsz as usize);
            }
        }
    }
    1
}

/// The address range the main executable is mapped at: function addresses must fall inside it
/// to be meaningful in another process.
pub(crate) fn main_image_range() -> Option<(usize, usize)> {
    static RANGE: std::sync::OnceLock<Option<(usize, usize)>> = std::sync::OnceLock::new();
    *RANGE.get_or_init(|| {
        let mut range = (usize::MAX, 0usize);
        // SAFETY: the callback matches dl_iterate_phdr's signature and only reads the headers
        // it is given; `range` outlives the call.
        unsafe {
            libc::dl_iterate_phdr(
                Some(find_main_range),
                (&mut range as *mut (usize, usize)).cast(),
            );
        }
        (range.0 < range.1).then_some(range)
    })
}

/// Whether this platform can create workers through a fork server: the raw `clone` call in
/// [`clone_sibling`] is written for the argument order of these architectures.
pub(crate) const HAS_FORK_SERVER: bool = cfg!(any(target_arch = "x86_64", target_arch = "aarch64"));

/// True while `pid` runs (exists and is not a zombie). Only meaningful for an unreaped child.
pub(crate) fn is_running(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state letter follows the command name, which is in parentheses and may hold spaces.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    !matches!(state, None | Some('Z' | 'X'))
}
