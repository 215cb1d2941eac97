//! The fork server: one clean copy of this executable, exec'd on first use, that forks workers
//! on request.
//!
//! Forking the user's process is fast but hazardous once it has threads, and slow once it has a
//! large heap. The server is neither: it is exec'd once (from the spawner thread), serves from
//! the load-time constructor before any `main`, and stays single-threaded and small. Each
//! request carries the worker's socket and stdio over `SCM_RIGHTS`; the server creates the
//! worker with `clone(CLONE_PARENT)`, so the worker is a child of the *user's* process (which
//! reaps it and sees its true exit status), and sends back its pid and a pidfd.
//!
//! The server dies with its parent (`PR_SET_PDEATHSIG`, and EOF on its control socket); a dead
//! server is noticed on the next request and replaced once. The server and each worker lead
//! their own process groups (the worker makes its own before it runs anything), so a terminal's
//! Ctrl-C reaches neither.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::PoisonError;

use crate::sys::fork_local::ForkLocal;

use super::launch::{self, Spec};
use crate::child::forkserver;
use crate::sys;

struct Server {
    /// Signals reach the server through its pidfd where there is one, never through a pid
    /// that may have been reused.
    child: sys::ChildHandle,
    ctrl: OwnedFd,
}

/// How long a request may wait for the server's reply before the server is deemed stuck,
/// killed and replaced. A healthy server answers in well under a millisecond; this leaves room
/// for a machine under heavy load, and bounds what a stopped server costs its callers.
const REPLY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

impl Server {
    /// Kills and reaps a server that died or stopped answering.
    fn discard(self) {
        // Its group holds no worker: each leaves it for its own as it starts.
        self.child.kill_and_reap();
        forkserver::forget_stamp();
    }
}

static SERVER: ForkLocal<Option<Server>> = ForkLocal::new();

/// Asks the fork server (started on first use) for a worker; returns its handle, the parent's
/// end of its socket, and how much of `first` is in that socket already (`launch::prime`).
pub(crate) fn launch(
    spec: &Spec,
    first: &[u8],
) -> io::Result<(sys::ChildHandle, UnixStream, usize)> {
    if !sys::HAS_FORK_SERVER {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "the fork server needs Linux",
        ));
    }
    let (request, stdio) = encode_request(spec)?;
    let mut guard = SERVER.get().lock().unwrap_or_else(PoisonError::into_inner);
    for attempt in 0..2 {
        // A fresh socket pair per attempt: a worker the failed attempt may have created keeps
        // the old one, sees EOF when we drop our end, and exits; it never shares a socket.
        let (parent_end, child_end) = sys::socket_pair()?;
        let primed = launch::prime(&parent_end, first);
        let server = ensure_started(&mut guard)?;
        match ask(server, &request, &request_fds(&child_end, &stdio)) {
            Ok(child) => return Ok((child, parent_end, primed)),
            // The server died (killed from outside?) before or while handling the request:
            // replace it and try once more.
            Err(Asked::NotSent(e) | Asked::Unanswered(e)) => {
                if let Some(old) = guard.take() {
                    old.discard();
                }
                if attempt == 1 {
                    return Err(e);
                }
            }
            Err(Asked::Refused(e)) => return Err(e),
        }
    }
    unreachable!("the loop returns on its second attempt")
}

/// Most requests sent ahead of their replies by [`launch_many`]: the kernel queues at most
/// `net.unix.max_dgram_qlen` (10 by default) messages on a SEQPACKET socket, and a sender
/// blocks beyond that, so more could deadlock us against a server blocked on its replies.
const WINDOW: usize = 8;

/// Asks the fork server for `n` workers with requests sent ahead of the replies, so that the
/// server forks them back to back instead of waiting for this thread between each. Returns
/// those it made, in order; fewer than `n` (maybe none) if anything went wrong, and the caller
/// then asks [`launch`] one at a time, which replaces a dead server.
pub(crate) fn launch_many(spec: &Spec, n: usize) -> Vec<(sys::ChildHandle, UnixStream)> {
    let mut made = Vec::new();
    if !sys::HAS_FORK_SERVER || n == 0 {
        return made;
    }
    let Ok((request, stdio)) = encode_request(spec) else {
        return made;
    };
    let mut guard = SERVER.get().lock().unwrap_or_else(PoisonError::into_inner);
    let Ok(server) = ensure_started(&mut guard) else {
        return made;
    };
    // Our ends of the sockets of workers asked for and not answered yet, oldest first.
    let mut waiting = std::collections::VecDeque::new();
    let mut asked = 0;
    let mut dead = false;
    while asked < n || !waiting.is_empty() {
        if asked < n && waiting.len() < WINDOW {
            let Ok((parent_end, child_end)) = sys::socket_pair() else {
                asked = n; // stop asking; collect what is on its way
                continue;
            };
            let fds = request_fds(&child_end, &stdio);
            if sys::send_with_fds(server.ctrl.as_fd(), &request, &fds).is_err() {
                dead = true; // a blocking SEQPACKET send fails only once the server is gone
                break;
            }
            asked += 1;
            waiting.push_back(parent_end);
            continue;
        }
        let Some(parent_end) = waiting.pop_front() else {
            break;
        };
        match answer(server) {
            Ok(child) => made.push((child, parent_end)),
            // This one failed (say, out of processes); the replies to the others still come.
            Err(Asked::Refused(_)) => asked = n,
            Err(Asked::NotSent(_) | Asked::Unanswered(_)) => {
                // Gone or stuck: workers it may have made for the rest see EOF on their
                // sockets when `waiting` drops, and exit. They are our children
                // (`CLONE_PARENT`) whose pids never reached us, so they stay zombies until
                // this process ends — as after a failed `launch`, but up to `WINDOW - 1` of
                // them. Only a server killed from outside in the middle of a batch gets here.
                dead = true;
                break;
            }
        }
    }
    if dead {
        if let Some(old) = guard.take() {
            old.discard();
        }
    }
    made
}

/// The fds a request carries: the worker's end of its socket, then its stdio.
fn request_fds<'a>(child_end: &'a impl AsFd, stdio: &[BorrowedFd<'a>]) -> Vec<BorrowedFd<'a>> {
    let mut fds = vec![child_end.as_fd()];
    fds.extend_from_slice(stdio);
    fds
}

/// How a request failed.
enum Asked {
    NotSent(io::Error),
    Unanswered(io::Error),
    Refused(io::Error),
}

fn ensure_started(slot: &mut Option<Server>) -> io::Result<&Server> {
    if slot.is_none() {
        *slot = Some(start()?);
    }
    Ok(slot.as_ref().expect("started above"))
}

fn start() -> io::Result<Server> {
    let (ctrl, theirs) = sys::seqpacket_pair()?;
    sys::set_recv_timeout(ctrl.as_fd(), REPLY_TIMEOUT)?;
    let ctrl_fd = ctrl.as_raw_fd();
    let child = launch::on_spawner(move || {
        let fd = theirs.as_raw_fd();
        let mut cmd = launch::worker_command(&format!("server:{fd}"))?;
        // Workers whose stdin is `/dev/null` (the default) keep this one.
        cmd.stdin(std::process::Stdio::null());
        sys::command_child_setup(&mut cmd, fd, fd);
        let child = cmd.spawn()?;
        // Recorded on the spawner thread, before any later `Fork` there can copy the fd.
        let stamp = (i64::from(sys::getpid()) << 32) | i64::from(ctrl_fd);
        forkserver::remember_stamp(stamp);
        Ok(sys::ChildHandle::open(child.id() as i32))
    })?;
    Ok(Server { child, ctrl })
}

/// Sends one request and reads the reply: the worker's pid and pidfd.
fn ask(server: &Server, request: &[u8], fds: &[BorrowedFd<'_>]) -> Result<sys::ChildHandle, Asked> {
    // SEQPACKET: a message is sent whole or not at all.
    sys::send_with_fds(server.ctrl.as_fd(), request, fds).map_err(Asked::NotSent)?;
    answer(server)
}

/// Reads the server's reply to the oldest request not answered yet.
fn answer(server: &Server) -> Result<sys::ChildHandle, Asked> {
    let mut reply = [0u8; 4];
    let (n, mut got) = match sys::recv_with_fds(server.ctrl.as_fd(), &mut reply) {
        Ok((0, _)) => return Err(Asked::Unanswered(io::ErrorKind::UnexpectedEof.into())),
        Ok((4, got)) => (4, got),
        Ok(_) => {
            return Err(Asked::Unanswered(io::Error::new(
                io::ErrorKind::InvalidData,
                "malformed fork server reply",
            )));
        }
        Err(e) => return Err(Asked::Unanswered(e)),
    };
    debug_assert_eq!(n, 4);
    let pid = i32::from_le_bytes(reply);
    if pid <= 0 {
        return Err(Asked::Refused(io::Error::from_raw_os_error(-pid)));
    }
    // Kernels before 5.2 send no pidfd; open one here (5.3+) or go without.
    let child = match got.pop() {
        Some(pidfd) => sys::ChildHandle::new(pid, Some(pidfd)),
        None => sys::ChildHandle::open(pid),
    };
    // It is our child (`CLONE_PARENT`): make sure it leads its group before we return it.
    sys::put_in_own_group(pid);
    Ok(child)
}

/// The request for a worker of `spec`, with the stdio fds to pass (see
/// `child::forkserver::encode_request`). Our own fds go as they are, not copies: the message
/// carries references to the files, taken as it is sent.
fn encode_request(spec: &Spec) -> io::Result<(Vec<u8>, Vec<BorrowedFd<'_>>)> {
    let mut mask = 0;
    let mut fds = Vec::new();
    for i in 0..spec.stdio.len() {
        if let Some(fd) = spec.stdio_borrowed(i) {
            fds.push(fd);
            mask |= 1 << i;
        }
    }
    Ok((forkserver::encode_request(mask, &spec.env)?, fds))
}
