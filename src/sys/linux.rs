//! Linux-only calls: pidfds, `clone(CLONE_PARENT)`, the parent-death signal, the ELF build id.

use std::ffi::OsString;
use std::io;
use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

/// The path that re-executes the running program, even if its file was replaced on disk.
///
/// Under a loader launch (`ld-linux-x86-64.so.2 ./app`, see [`self_exec`]) it is the loader's.
pub(crate) fn exe_path() -> &'static str {
    "/proc/self/exe"
}

/// How to start this same program again: [`exe_path`] with [`args`](SelfExec::args) first.
#[derive(Debug)]
pub(crate) struct SelfExec {
    /// `argv[0]` for the new process.
    pub(crate) arg0: Option<OsString>,
    /// Arguments that come before any of ours: empty, unless the program was started through
    /// the dynamic loader, whose options and the program's path they then are.
    pub(crate) args: Vec<OsString>,
    /// The program's own file (for its identity): [`exe_path`], or the file the loader ran.
    pub(crate) program: PathBuf,
}

/// How to start this program again, found once.
///
/// A program run through the dynamic loader (`/lib64/ld-linux-x86-64.so.2 ./app`, as some
/// launchers and packaging tools do) has the *loader* as `/proc/self/exe`: executed alone, the
/// loader prints its usage and exits, and every worker would die before its first message.
/// Such a start is recognised by the kernel having loaded no interpreter (`AT_BASE` is 0, as
/// for a static program) for a main program that names one (a `PT_INTERP` header: a static
/// program has none). The program's file is the one mapped at its headers (the first object
/// `dl_iterate_phdr` reports, found in `/proc/self/maps`), the loader's options are the words
/// of `/proc/self/cmdline` between the loader and the program, and the program is started
/// again as the loader, those options and that file.
///
/// # Errors
/// `Unsupported`, saying so, when the program was started through the loader and how to start
/// it again cannot be told (its file was deleted, the command line cannot be matched).
pub(crate) fn self_exec() -> io::Result<&'static SelfExec> {
    static FOUND: std::sync::OnceLock<Result<SelfExec, String>> = std::sync::OnceLock::new();
    let found = FOUND.get_or_init(|| match loader_launch() {
        None => Ok(SelfExec {
            arg0: std::env::args_os().next(),
            args: Vec::new(),
            program: PathBuf::from(exe_path()),
        }),
        Some(found) => found,
    });
    found.as_ref().map_err(|why| {
        io::Error::new(
            io::ErrorKind::Unsupported,
            format!(
                "this program was started through the dynamic loader ({}), and mproc cannot \
                 tell how to start it again: {why}; run the program directly",
                std::fs::read_link(exe_path())
                    .map_or_else(|_| "?".into(), |p| p.display().to_string())
            ),
        )
    })
}

/// `None` for an ordinary start; otherwise how to start again through the loader, or why not.
fn loader_launch() -> Option<Result<SelfExec, String>> {
    // SAFETY: `getauxval` reads the auxiliary vector the kernel gave this process.
    if unsafe { libc::getauxval(libc::AT_BASE) } != 0 {
        return None; // the kernel loaded the interpreter for the program: an ordinary start
    }
    // A static program (no interpreter of its own), or the loader run as a program.
    let main = main_program()?;
    if !main.has_interp {
        return None;
    }
    Some(loader_relaunch(main.phdr))
}

fn loader_relaunch(main_phdr: usize) -> Result<SelfExec, String> {
    let maps = std::fs::read_to_string("/proc/self/maps").map_err(|e| e.to_string())?;
    let program = mapped_file(&maps, main_phdr)
        .ok_or_else(|| "no file is mapped at the program's headers".to_string())?;
    if program.ends_with(" (deleted)") {
        return Err(format!("its file {program} was deleted or replaced"));
    }
    let cmdline = std::fs::read("/proc/self/cmdline").map_err(|e| format!("{e}"))?;
    let words: Vec<OsString> = cmdline
        .split(|&b| b == 0)
        .map(|w| OsString::from_vec(w.to_vec()))
        .collect();
    let args: Vec<OsString> = std::env::args_os().collect();
    let (mut prefix, arg0) = loader_prefix(&words, &args).ok_or_else(|| {
        "its command line does not end with the program's own arguments".to_string()
    })?;
    prefix.push(OsString::from(&program));
    Ok(SelfExec {
        arg0: Some(arg0),
        args: prefix,
        program: PathBuf::from(program),
    })
}

/// Splits the loader's command line (`words`, from `/proc/self/cmdline`, with a trailing empty
/// word) given the program's own `args`: returns the loader's options (the words between the
/// loader and the program) and the loader's `argv[0]`.
fn loader_prefix(words: &[OsString], args: &[OsString]) -> Option<(Vec<OsString>, OsString)> {
    let words = match words.split_last() {
        Some((last, rest)) if last.is_empty() => rest,
        _ => words,
    };
    // words: loader, options..., program, args[1..]
    let program_at = words.len().checked_sub(args.len().max(1))?;
    if program_at == 0 || words[program_at + 1..] != args[args.len().min(1)..] {
        return None;
    }
    Some((words[1..program_at].to_vec(), words[0].clone()))
}

/// The path of the file mapped at `addr`, from `/proc/self/maps` text.
fn mapped_file(maps: &str, addr: usize) -> Option<String> {
    maps.lines().find_map(|line| {
        let (range, rest) = line.split_once(' ')?;
        let (start, end) = range.split_once('-')?;
        let (start, end) = (
            usize::from_str_radix(start, 16).ok()?,
            usize::from_str_radix(end, 16).ok()?,
        );
        if !(start <= addr && addr < end) {
            return None;
        }
        // perms offset dev inode path (the path may hold spaces)
        let path = rest.splitn(5, ' ').nth(4)?.trim_start();
        path.starts_with('/').then(|| path.to_string())
    })
}

/// What [`main_program`] found.
struct MainProgram {
    /// The address of its program headers.
    phdr: usize,
    /// It has a `PT_INTERP` header: it is started through a dynamic loader.
    has_interp: bool,
}

/// One program header of the main program, copied out of the loader's record.
#[derive(Clone, Copy)]
struct Segment {
    kind: u32,
    /// Where it is mapped in this process: the load bias plus `p_vaddr`.
    addr: usize,
    /// Bytes mapped (`p_memsz`).
    len: usize,
}

/// The main program as the dynamic loader reports it (the first object of
/// `dl_iterate_phdr`): the address of its program headers, and the headers.
#[derive(Default)]
struct MainImage {
    phdr: usize,
    segments: Vec<Segment>,
}

unsafe extern "C" fn copy_main_image(
    info: *mut libc::dl_phdr_info,
    _size: libc::size_t,
    data: *mut libc::c_void,
) -> libc::c_int {
    // SAFETY: `data` is the `MainImage` passed by `main_image`; `info` and its `dlpi_phnum`
    // program headers are valid for the call, per dl_iterate_phdr's contract. The first
    // object reported is the main program.
    unsafe {
        let image = &mut *(data as *mut MainImage);
        let info = &*info;
        image.phdr = info.dlpi_phdr as usize;
        for i in 0..info.dlpi_phnum as usize {
            let ph = &*info.dlpi_phdr.add(i);
            image.segments.push(Segment {
                kind: ph.p_type,
                addr: (info.dlpi_addr as usize).wrapping_add(ph.p_vaddr as usize),
                len: ph.p_memsz as usize,
            });
        }
    }
    1 // only the main program: stop after the first object
}

/// The main program's headers, read once.
fn main_image() -> &'static MainImage {
    static IMAGE: std::sync::OnceLock<MainImage> = std::sync::OnceLock::new();
    IMAGE.get_or_init(|| {
        let mut image = MainImage::default();
        // SAFETY: the callback matches dl_iterate_phdr's signature and writes only `image`,
        // which outlives the call.
        unsafe {
            libc::dl_iterate_phdr(Some(copy_main_image), (&mut image as *mut MainImage).cast());
        }
        image
    })
}

/// The main program's program headers: where they are, and whether it names an interpreter.
fn main_program() -> Option<MainProgram> {
    let image = main_image();
    (image.phdr != 0).then(|| MainProgram {
        phdr: image.phdr,
        has_interp: image.segments.iter().any(|s| s.kind == libc::PT_INTERP),
    })
}

/// Asks the kernel to SIGKILL this process when the thread that created it ends, then checks
/// that this has not happened already (`expected_parent` is gone).
///
/// Async-signal-safe: may be called between `fork` and `exec`.
pub(crate) fn set_parent_death_signal(expected_parent: i32) -> io::Result<()> {
    use rustix::process::{Signal, set_parent_process_death_signal};
    // Raw system calls (prctl, getppid): nothing here allocates or takes a lock.
    set_parent_process_death_signal(Some(Signal::KILL))?;
    // The parent may have died before the prctl: then we were re-parented and must go.
    if super::getppid() != expected_parent {
        // No allocation here: this runs between fork and exec.
        return Err(io::Error::from_raw_os_error(libc::ESRCH));
    }
    Ok(())
}

/// Opens a pidfd for `pid`, which must be an unreaped child of this process (so the pid
/// cannot have been recycled).
pub(super) fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    use rustix::process::{Pid, PidfdFlags};
    let pid = Pid::from_raw(pid.max(0)).ok_or(io::Error::from_raw_os_error(libc::EINVAL))?;
    super::above_stdio(rustix::process::pidfd_open(pid, PidfdFlags::empty())?)
}

/// Sends `sig` through a pidfd: it can never hit a recycled pid.
pub(super) fn pidfd_send_signal(pidfd: BorrowedFd<'_>, sig: i32) -> io::Result<()> {
    Ok(rustix::process::pidfd_send_signal(
        pidfd,
        super::unix::signal_of(sig)?,
    )?)
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
    main_image()
        .segments
        .iter()
        .filter(|s| s.kind == libc::PT_NOTE)
        .find_map(|s| {
            // SAFETY: a PT_NOTE segment of the main program is mapped readable at `addr` for
            // `len` bytes for the life of the process (the loader reported it); its bytes never
            // change. `parse_build_id_notes` checks every note's sizes before using them.
            let notes = unsafe { std::slice::from_raw_parts(s.addr as *const u8, s.len) };
            parse_build_id_notes(notes).map(<[u8]>::to_vec)
        })
}

/// The address range the main executable is mapped at: function addresses must fall inside it
/// to be meaningful in another process.
pub(crate) fn main_image_range() -> Option<(usize, usize)> {
    let loads = main_image()
        .segments
        .iter()
        .filter(|s| s.kind == libc::PT_LOAD);
    let range = loads.fold((usize::MAX, 0usize), |(lo, hi), s| {
        (lo.min(s.addr), hi.max(s.addr + s.len))
    });
    (range.0 < range.1).then_some(range)
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

/// Sets the name `ps`, `top` and `/proc/PID/comm` show for the calling thread — the process's,
/// when called on its main thread (`PR_SET_NAME`): at most 15 bytes, cut at a character
/// boundary. A name with a NUL byte is cut there.
pub(crate) fn set_process_name(name: &str) -> io::Result<()> {
    let mut buf = [0u8; 16];
    let mut end = name.len().min(15);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    let bytes = &name.as_bytes()[..end];
    let bytes = bytes.split(|&b| b == 0).next().unwrap_or_default();
    buf[..bytes.len()].copy_from_slice(bytes);
    // SAFETY: `buf` is a live, NUL-terminated array of 16 bytes, the most `PR_SET_NAME` reads;
    // the other arguments are ignored for this option.
    let rc = unsafe { libc::prctl(libc::PR_SET_NAME, buf.as_ptr() as libc::c_ulong, 0, 0, 0) };
    if rc == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The CPU the calling thread runs on now (it may move at any moment: a hint).
pub(crate) fn current_cpu() -> Option<usize> {
    Some(rustix::thread::sched_getcpu())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &[&str]) -> Vec<OsString> {
        s.iter().map(OsString::from).collect()
    }

    #[test]
    fn the_loader_s_options_are_the_words_before_the_program() {
        // /proc/self/cmdline ends with a NUL: the split leaves an empty last word.
        let cmdline = words(&["/lib64/ld.so", "--inhibit-cache", "./app", "a", "b", ""]);
        let (opts, arg0) = loader_prefix(&cmdline, &words(&["./app", "a", "b"])).unwrap();
        assert_eq!(
            (opts, arg0),
            (words(&["--inhibit-cache"]), "/lib64/ld.so".into())
        );
        // `--argv0 NAME`: the program sees NAME as its argv[0], the rest must still match.
        let cmdline = words(&["ld.so", "--argv0", "x", "./app", "a"]);
        let (opts, _) = loader_prefix(&cmdline, &words(&["x", "a"])).unwrap();
        assert_eq!(opts, words(&["--argv0", "x"]));
        let (opts, _) = loader_prefix(&words(&["ld.so", "./app"]), &words(&["./app"])).unwrap();
        assert!(opts.is_empty());
    }

    #[test]
    fn a_command_line_that_does_not_end_with_the_arguments_is_refused() {
        let cmdline = words(&["ld.so", "./app", "a"]);
        assert!(loader_prefix(&cmdline, &words(&["./app", "b"])).is_none());
        assert!(loader_prefix(&words(&["./app"]), &words(&["./app"])).is_none());
        assert!(loader_prefix(&[], &words(&["./app"])).is_none());
        assert!(loader_prefix(&words(&["ld.so"]), &words(&["./app", "a", "b"])).is_none());
    }

    #[test]
    fn the_mapped_file_is_found_by_address() {
        let maps = "\
55d0c0a00000-55d0c0a2e000 r--p 00000000 fd:01 1234567                    /work/my app (1)
55d0c0a2e000-55d0c0b00000 r-xp 0002e000 fd:01 1234567                    /work/my app (1)
7ffd1a000000-7ffd1a021000 rw-p 00000000 00:00 0                          [stack]
7ffd1b000000-7ffd1b001000 rw-p 00000000 00:00 0
";
        let path = mapped_file(maps, 0x55d0c0a00040).unwrap();
        assert_eq!(path, "/work/my app (1)");
        assert!(
            mapped_file(maps, 0x7ffd1a000010).is_none(),
            "[stack] is no file"
        );
        assert!(mapped_file(maps, 0x7ffd1b000010).is_none(), "anonymous");
        assert!(mapped_file(maps, 0x1000).is_none(), "unmapped");
        assert!(mapped_file("garbage\n-\n", 0x1000).is_none());
    }

    #[test]
    fn the_main_image_holds_our_code_and_its_build_id() {
        let (lo, hi) = main_image_range().expect("the loader reports the main program");
        let here = the_main_image_holds_our_code_and_its_build_id as fn() as usize;
        assert!((lo..hi).contains(&here), "{here:#x} in {lo:#x}..{hi:#x}");
        // Debian's gcc driver passes --build-id: a GNU build id is 20 bytes (SHA-1).
        if let Some(id) = build_id() {
            assert!(id.len() >= 8, "{id:?}");
        }
        assert!(
            main_program().is_some_and(|m| m.has_interp),
            "a dynamically linked test"
        );
    }

    #[test]
    fn an_ordinary_start_re_executes_proc_self_exe() {
        let me = self_exec().unwrap();
        assert!(me.args.is_empty(), "{me:?}");
        assert_eq!(me.program, PathBuf::from(exe_path()));
    }
}
