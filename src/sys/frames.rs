//! A panic's backtrace as it travels: captured in the child as bare return addresses, without
//! allocating or taking a lock, and symbolized in the parent only when someone reads it.
//!
//! Why not std's `Backtrace` in the child: symbolizing parses the binary's debug information
//! (tens of MiB for a debug build, and most of a panic's cost). In a worker that is paid again
//! by every fresh worker (`max_tasks_per_child`), it does not fit a tight memory limit, and
//! std's out-of-memory hook waits for the lock a capture holds. The parent runs the same
//! executable, so it can symbolize the child's frames itself, once per program and only for
//! the backtraces that are read.
//!
//! A frame travels as its offset from the same anchor function references use
//! (`fnptr::anchor_addr`): the executable is mapped at another address in each process (ASLR).
//! Frames outside the executable (in a shared library) travel as [`OUTSIDE`].

use std::ffi::c_void;
use std::fmt::Write as _;

/// The most frames captured: deeper stacks keep their innermost frames.
pub(crate) const MAX_FRAMES: usize = 100;

/// A frame outside the main executable: it has no meaning in another process.
pub(crate) const OUTSIDE: u64 = u64::MAX;

/// Captures the calling thread's stack into `out` (innermost first), as offsets; returns how
/// many frames it wrote. Allocates nothing and takes no lock: it runs in a panic hook, perhaps
/// with no memory left.
pub(crate) fn capture(out: &mut [u64; MAX_FRAMES]) -> usize {
    let image = super::main_image_range();
    let anchor = super::fnptr::anchor_addr();
    let mut n = 0;
    let mut record = |frame: &backtrace::Frame| {
        let ip = frame.ip() as usize;
        out[n] = match image {
            Some((lo, hi)) if (lo..hi).contains(&ip) => ip.wrapping_sub(anchor) as u64,
            _ => OUTSIDE,
        };
        n += 1;
        n < MAX_FRAMES
    };
    // SAFETY: `trace_unsynchronized` is unsafe only because it does not serialize with other
    // threads that unwind at the same time, where the platform's unwinder is not thread-safe.
    // On Linux it is libgcc's `_Unwind_Backtrace`, which is (it is what std's own capture
    // calls, from any thread); the closure only writes into `out`.
    unsafe { backtrace::trace_unsynchronized(&mut record) };
    n
}

/// One symbol of a frame (an inlined call gives a frame several).
pub(crate) struct Symbol {
    pub(crate) name: Option<String>,
    pub(crate) file: Option<String>,
    pub(crate) line: Option<u32>,
    pub(crate) column: Option<u32>,
}

/// Symbolizes a frame captured by [`capture`] in another process running this executable.
/// Empty when it cannot be (a frame outside the executable, no symbols).
pub(crate) fn resolve(offset: u64) -> Vec<Symbol> {
    let mut symbols = Vec::new();
    if offset == OUTSIDE {
        return symbols;
    }
    let ip = super::fnptr::anchor_addr().wrapping_add(offset as usize);
    // Only an address inside our own executable is looked up: a frame from a hostile or
    // foreign report must not send the symbolizer elsewhere.
    if !super::main_image_range().is_some_and(|(lo, hi)| (lo..hi).contains(&ip)) {
        return symbols;
    }
    backtrace::resolve(ip as *mut c_void, |s| {
        symbols.push(Symbol {
            name: s.name().map(|n| format!("{n:#}")),
            file: s.filename().map(|f| f.display().to_string()),
            line: s.lineno(),
            column: s.colno(),
        });
    });
    symbols
}

/// The text of captured frames, in std's layout. Unless `full`, the frames of the panic
/// machinery (up to std's `__rust_end_short_backtrace`) and those below the task (from
/// [`short_backtrace_base`] on: mproc's worker loop) are left out, as std's short backtrace
/// leaves out what runs before `main`.
pub(crate) fn render(offsets: &[u64], full: bool) -> String {
    let mut frames: Vec<Vec<Symbol>> = offsets.iter().map(|&o| resolve(o)).collect();
    if !full {
        let named = |f: &Vec<Symbol>, what: &str| {
            f.iter()
                .any(|s| s.name.as_deref().is_some_and(|n| n.contains(what)))
        };
        if let Some(end) = frames
            .iter()
            .rposition(|f| named(f, "__rust_end_short_backtrace"))
        {
            frames.drain(..=end);
        }
        if let Some(base) = frames.iter().position(|f| named(f, "short_backtrace_base")) {
            frames.truncate(base);
            // And mproc's frames between the task and that base: the call through the
            // function reference, the chunk loop's closures.
            while frames
                .last()
                .is_some_and(|f| !f.is_empty() && f.iter().all(is_runner))
            {
                frames.pop();
            }
        }
    }
    let mut out = String::new();
    for (i, frame) in frames.iter().enumerate() {
        if frame.is_empty() {
            let _ = writeln!(out, "{i:>4}: <unknown>");
        }
        for (j, s) in frame.iter().enumerate() {
            let name = s.name.as_deref().unwrap_or("<unknown>");
            let _ = match j {
                0 => writeln!(out, "{i:>4}: {name}"),
                _ => writeln!(out, "      {name}"),
            };
            if let Some(file) = &s.file {
                let _ = write!(out, "             at {file}");
                if let Some(line) = s.line {
                    let _ = write!(out, ":{line}");
                    if let Some(col) = s.column {
                        let _ = write!(out, ":{col}");
                    }
                }
                out.push('\n');
            }
        }
    }
    if !full {
        out.push_str(
            "note: Some details are omitted, run with `RUST_BACKTRACE=full` for a verbose backtrace.\n",
        );
    }
    out
}

/// A symbol of the code that calls a task (not the task's own, nor a mproc API it calls).
fn is_runner(s: &Symbol) -> bool {
    let name = s.name.as_deref().unwrap_or("");
    name.contains("as mproc::sys::fnptr::Callable>::invoke")
        || [
            "mproc::task::",
            "mproc::worker::",
            "mproc::child::",
            "mproc::capture::",
        ]
        .iter()
        .any(|m| name.starts_with(m))
}

/// Calls `f`, the task: a short backtrace stops at this frame (see [`render`]).
#[inline(never)]
pub(crate) fn short_backtrace_base<T>(f: impl FnOnce() -> T) -> T {
    let out = f();
    // Not a tail call: this frame stays on the stack while `f` runs.
    std::hint::black_box(());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[inline(never)]
    fn here() -> ([u64; MAX_FRAMES], usize) {
        let mut out = [0; MAX_FRAMES];
        let n = capture(&mut out);
        (out, n)
    }

    #[test]
    fn captured_frames_symbolize_to_this_code() {
        let (out, n) = short_backtrace_base(here);
        assert!(n > 2, "{n} frames");
        let text = render(&out[..n], true);
        assert!(text.contains("frames::tests::here"), "{text}");
        assert!(text.contains("frames.rs"), "{text}");
        let short = render(&out[..n], false);
        assert!(short.contains("frames::tests::here"), "{short}");
        assert!(!short.contains("short_backtrace_base"), "{short}");
    }

    #[test]
    fn foreign_offsets_resolve_to_nothing() {
        assert!(resolve(OUTSIDE).is_empty());
        assert!(resolve(u64::MAX / 2).is_empty());
    }
}
