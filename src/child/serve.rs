//! The serve loop: say hello, then run each task received until told it was the last.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::setup::{Limits, Shown};
use super::{EXIT_INTERNAL, EXIT_PROTOCOL, EXIT_REFUSED, EXIT_TASK_FAILED, MARKER_ENV};
use crate::sys::arena::GrowMap;
use crate::sys::child::{self, ChildToken};
use crate::sys::identity;
use crate::sys::shm::Payload;
use crate::sys::stack_guard;
use crate::task::chunk::{Arena, RunCx};
use crate::task::fnref::{FnRef, Reply};
use crate::task::mailbox;
use crate::task::panic::{IN_WORKER, TASK_SOCKET, ensure_panic_hook, read_backtrace_env};
use crate::task::spin::Spin;
use crate::wire::fds;
use crate::wire::frame::{self, FrameError, FrameReader};
use crate::wire::msg;

/// Settings a forked worker applies to itself before serving.
#[derive(Debug, Default)]
pub(crate) struct ChildSetup {
    /// Variables to set.
    pub(crate) env: Vec<(OsString, OsString)>,
    /// `None`: keep; `Some(fd)`: make this fd the worker's stdin, stdout, stderr.
    pub(crate) stdio: [Option<OwnedFd>; 3],
    /// The pid the worker's parent must have (for the parent-death signal check).
    pub(crate) parent: i32,
    /// Put every signal disposition back to default: needed after `fork` of a user's process
    /// (its handlers are not ours to run), not in children of the fork server, whose only
    /// handlers are the worker's own (`warm_up`).
    pub(crate) reset_signals: bool,
    /// What the worker shows in ps before it names itself.
    pub(crate) shown: Shown,
}

/// Entry of a worker created by `fork` or the fork server: apply the setup, then serve.
pub(crate) fn enter_forked(token: &ChildToken, sock: OwnedFd, setup: ChildSetup) -> i32 {
    if crate::sys::set_parent_death_signal(setup.parent).is_err() {
        return EXIT_PROTOCOL;
    }
    if setup.reset_signals {
        crate::sys::reset_signals();
        // As Rust's `main` does. A child of the fork server inherits it ignored.
        crate::sys::ignore_sigpipe();
    }
    child::remove_env(token, MARKER_ENV);
    child::set_envs(token, &setup.env);
    for (target, fd) in setup.stdio.iter().enumerate() {
        if let Some(fd) = fd {
            if child::replace_fd(token, fd.as_fd(), target as i32).is_err() {
                return EXIT_INTERNAL;
            }
        }
    }
    let setup_parent = setup.parent;
    let shown = setup.shown;
    drop(setup);
    super::mark_consumed();
    super::forkserver::forget_server(token, setup_parent);
    serve(token, sock, shown)
}

/// The worker loop: say hello, then run each task received until told it was the last or the
/// parent closes the socket. Returns the exit code.
///
/// SIGPIPE must be ignored already (as Rust's `main` would): a write to a parent that went away
/// fails instead of killing the worker.
pub(crate) fn serve(token: &ChildToken, sock: OwnedFd, shown: Shown) -> i32 {
    // Shown by ps and top instead of `exe` (the file re-executed is /proc/self/exe).
    let name = child::getenv(token, super::setup::NAME_ENV);
    super::setup::show_name(shown, name.as_deref().and_then(|n| n.to_str()));
    ensure_panic_hook();
    IN_WORKER.store(true, Ordering::Relaxed);
    if Limits::read(token).apply().is_err() {
        return EXIT_INTERNAL;
    }
    read_backtrace_env(token);
    let mut sock = UnixStream::from(sock);
    // A stack overflow is told apart from other faults, and said to the parent as the worker
    // dies. Without it (no stack bounds to be had) the parent still sees the signal.
    let _ = stack_guard::install(sock.as_raw_fd(), msg::dying_of_stack_overflow);
    let code = serve_on(&mut sock, token);
    stack_guard::forget_fd();
    code
}

fn serve_on(sock: &mut UnixStream, token: &ChildToken) -> i32 {
    let me = identity::reported(token);
    let mut reader = FrameReader::new(frame::DEFAULT_LIMIT);
    // Fds received, in order, and those an `Fds` frame gave to the next task.
    let mut fifo = VecDeque::new();
    let mut task_fds = Vec::new();
    // A `Process`'s one task (`FLAG_LAST`) is usually in the socket before its worker starts
    // (`process::launch::launch_primed`): its hello then goes with the answer, in one write,
    // and the parent wakes once. Every other worker greets first, before it waits for
    // anything: a pool counts a worker as started when its hello comes.
    let mut src = fds::FdRead {
        sock: sock.as_fd(),
        fifo: &mut fifo,
        nowait: true,
    };
    let mut waiting = match reader.advance(&mut src) {
        Ok(Some(frame)) => Some(Got::Sock(Ok(frame))),
        Ok(None) | Err(FrameError::WouldBlock) => None,
        Err(e) => Some(Got::Sock(Err(e))),
    };
    let alone = matches!(&waiting, Some(Got::Sock(Ok(frame)))
        if msg::parse_run(frame).is_ok_and(|run| run.flags & msg::FLAG_LAST != 0));
    let mut hello = Some(msg::hello(std::process::id(), &me));
    if !alone && say(sock, &mut hello, &[]).is_err() {
        return EXIT_PROTOCOL;
    }
    // A pool worker's control block and result arena come in its first message; a worker
    // without one (a `Process`) still builds chunk replies in an arena of its own.
    let mut arena = Arena::default();
    // After a task a caller waits on alone (`msg::FLAG_HOT`, an `apply` loop), the next one
    // often follows within microseconds: look for it a short while before sleeping
    // (`task::spin`). Not after tasks the supervisor feeds: they wait in the socket already.
    let mut spin = Spin::default();
    let mut hot = false;
    // The mailbox's last task taken (`task::mailbox`): the `apply` fast path posts small tasks
    // in the control block's first page, and rings the socket only if this worker sleeps.
    let mut last_in = 0;
    loop {
        let got = match waiting.take() {
            Some(got) => got,
            None => next_task(&mut Fetch {
                sock: sock.as_fd(),
                fifo: &mut fifo,
                reader: &mut reader,
                page: arena.control(),
                last_in: &mut last_in,
                spin: hot.then_some(&mut spin),
            }),
        };
        let (boxed, frame) = match got {
            Got::Boxed(seq, body) => (Some(seq), body),
            Got::Sock(Ok(body)) => (None, body),
            Got::Sock(Err(FrameError::Eof)) => return 0,
            Got::Sock(Err(_)) => return EXIT_PROTOCOL,
        };
        if msg::is_doorbell(&frame, true) {
            continue; // the task it rang for is in the mailbox, or was taken already
        }
        if let Some(n) = msg::parse_fds(&frame) {
            match fds::take(&mut fifo, n) {
                Some(taken) => task_fds = taken,
                None => return EXIT_PROTOCOL,
            }
            continue;
        }
        if msg::is_control(&frame) {
            match std::mem::take(&mut task_fds).pop().map(GrowMap::from_fd) {
                Some(Ok(map)) => arena.set(map),
                _ => return EXIT_PROTOCOL,
            }
            continue;
        }
        if msg::is_exit(&frame) {
            let _ = std::io::stdout().flush();
            let _ = std::io::stderr().flush();
            return 0;
        }
        let Ok(run) = msg::parse_run(&frame) else {
            return EXIT_PROTOCOL;
        };
        let Some(proof) = identity::verify(run.identity, &me) else {
            let _ = say(sock, &mut hello, &msg::refused(&me));
            return EXIT_REFUSED;
        };
        // A `Run` frame carries a function of the task family.
        let func = FnRef::from_offsets(run.tramp, run.func);
        let mut handle_fds = std::mem::take(&mut task_fds);
        // A large argument is in the last fd: map it and decode it in place.
        hot = boxed.is_some() || run.flags & msg::FLAG_HOT != 0;
        let spilled = if run.flags & msg::FLAG_SPILLED != 0 {
            match handle_fds.pop().map(Payload::from_fd) {
                Some(Ok(region)) => Some(region),
                _ => return EXIT_PROTOCOL,
            }
        } else {
            None
        };
        let arg = spilled.as_ref().map_or(run.arg, Payload::bytes);
        // While the task runs, an aborting panic reports on this socket, and an overflow
        // says so as the worker dies (the pool and `Process` both read that notice).
        stack_guard::arm(true);
        TASK_SOCKET.store(sock.as_raw_fd(), Ordering::Relaxed);
        // Handles inside the argument take their fds from those sent with this task.
        let mut cx = RunCx {
            arena: &mut arena,
            skip: run.skip as usize,
            in_arena: 0,
            proof: &proof,
        };
        let reply = fds::supplying(handle_fds, || {
            func.call(&proof, arg, &mut cx).unwrap_or_else(|| {
                let why = "a function address outside the executable was refused";
                Reply::inline(msg::failed(why), false)
            })
        });
        let in_arena = cx.in_arena;
        TASK_SOCKET.store(-1, Ordering::Relaxed);
        stack_guard::arm(false);
        drop(spilled);
        // Output written with `print!` goes out before the answer (so a relayed line is
        // printed before the caller sees the result), and is not lost on `_exit`.
        let _ = std::io::stdout().flush();
        let _ = std::io::stderr().flush();
        // A large result's file goes with its frame; our copy of the fd closes after. A task
        // from the mailbox is answered there if the answer fits, else by the socket.
        let whole = match (&reply.file, arena.bytes(in_arena)) {
            (None, Some(built)) if in_arena > 0 => built,
            _ => &reply.frame[..],
        };
        let mut by_socket = || match &reply.file {
            Some(file) => say(sock, &mut hello, &[])
                .and_then(|()| fds::write_frame(&*sock, &reply.frame, std::slice::from_ref(file))),
            None => say(sock, &mut hello, whole),
        };
        let sent = match (boxed, arena.control()) {
            (Some(seq), Some(page)) => {
                let answered = reply
                    .file
                    .is_none()
                    .then(|| mailbox::worker::answer(page, seq, &whole[frame::HEADER..]))
                    .flatten();
                match answered {
                    Some(true) => (&*sock).write_all(&msg::doorbell(false)),
                    Some(false) => Ok(()),
                    None => {
                        let sent = by_socket();
                        mailbox::worker::by_socket(page, seq);
                        sent
                    }
                }
            }
            _ => by_socket(),
        };
        if sent.is_err() {
            return EXIT_PROTOCOL;
        }
        if run.flags & msg::FLAG_LAST != 0 {
            return if reply.ok { 0 } else { EXIT_TASK_FAILED };
        }
    }
}

/// Most bytes an answer may have to go in one write with the hello before it (`serve_on`).
const WITH_HELLO: usize = 64 << 10;

/// Writes `bytes` to the parent, after the hello if it has not gone yet: in one write when
/// they are few, so that the parent wakes once for both.
fn say(mut sock: &UnixStream, hello: &mut Option<Vec<u8>>, bytes: &[u8]) -> std::io::Result<()> {
    let Some(mut first) = hello.take() else {
        return sock.write_all(bytes);
    };
    if bytes.len() <= WITH_HELLO {
        first.extend_from_slice(bytes);
        return sock.write_all(&first);
    }
    sock.write_all(&first)?;
    sock.write_all(bytes)
}

/// What every worker would otherwise do first, done once by the fork server as it starts:
/// its workers inherit it done. Each costs a worker system calls or page faults otherwise
/// (a write to a page it shares with the server copies the page: a few microseconds each),
/// and the workers are what a `Process` waits for.
pub(crate) fn warm_up() {
    ensure_panic_hook();
    // The handlers and the alternate stack, with no socket to write to yet.
    let _ = stack_guard::install(-1, msg::dying_of_stack_overflow);
    let _ = super::setup::program_name();
    let _ = crate::sys::memory_is_limited();
    let _ = crate::sys::identity::own();
    // Where the executable is mapped (`read_backtrace_env` looks, and found it is kept).
    let _ = crate::sys::main_image_range();
    // Thread-local destructors registered (each registration allocates, and the first binds
    // two of the C library's symbols lazily), and stdout's buffer allocated.
    let _ = fds::collecting(|| ());
    fds::supplying(Vec::new(), || ());
    let _ = std::io::stdout().flush();
}

/// What the serve loop waits on: the socket, and the mailbox once the parent sent one.
struct Fetch<'a> {
    sock: std::os::fd::BorrowedFd<'a>,
    fifo: &'a mut VecDeque<OwnedFd>,
    reader: &'a mut FrameReader,
    page: Option<&'a GrowMap>,
    last_in: &'a mut u64,
    /// Look a while before sleeping (after a task a caller waits on alone).
    spin: Option<&'a mut Spin>,
}

/// A task (or other message) as it came.
enum Got {
    /// From the mailbox: its number there, and the frame's body.
    Boxed(u64, Vec<u8>),
    /// From the socket.
    Sock(Result<Vec<u8>, FrameError>),
}

/// Looks looks in the mailbox, then (spinning after a hot task) in both, then parks: says so
/// in the mailbox, looks once more, and sleeps on the socket (where a doorbell wakes it).
fn next_task(f: &mut Fetch<'_>) -> Got {
    let take = |page: Option<&GrowMap>, last: &mut u64| {
        page.and_then(|p| mailbox::worker::take(p, last))
            .map(|(seq, body)| Got::Boxed(seq, body))
    };
    if let Some(got) = take(f.page, f.last_in) {
        return got;
    }
    if let Some(page) = f.page {
        mailbox::worker::waiting_on(page, crate::sys::current_cpu());
    }
    if let Some(spin) = f.spin.as_deref_mut() {
        let mut looks = 0u32;
        let (sock, fifo, reader, page, last_in) = (
            f.sock,
            &mut *f.fifo,
            &mut *f.reader,
            f.page,
            &mut *f.last_in,
        );
        let looked = spin.look(|| {
            if let Some(got) = take(page, last_in) {
                return Some(got);
            }
            // The socket costs a syscall: look there now and then (a task the supervisor
            // sends, or the parent closing it).
            looks += 1;
            if page.is_some() && looks % 16 != 0 {
                return None;
            }
            let mut src = fds::FdRead {
                sock,
                fifo: &mut *fifo,
                nowait: true,
            };
            match reader.advance(&mut src) {
                Ok(Some(frame)) => Some(Got::Sock(Ok(frame))),
                Ok(None) | Err(FrameError::WouldBlock) => None,
                Err(e) => Some(Got::Sock(Err(e))),
            }
        });
        if let Some(got) = looked {
            return got;
        }
    }
    if let Some(page) = f.page {
        mailbox::worker::park(page, true);
        if let Some(got) = take(f.page, f.last_in) {
            mailbox::worker::park(page, false);
            return got;
        }
    }
    let mut src = fds::FdRead {
        sock: f.sock,
        fifo: &mut *f.fifo,
        nowait: false,
    };
    let before = Instant::now();
    let read = f.reader.read_frame(&mut src);
    if let Some(page) = f.page {
        mailbox::worker::park(page, false);
    }
    if let Some(spin) = f.spin.as_deref_mut() {
        spin.parked(before.elapsed());
    }
    Got::Sock(read)
}
