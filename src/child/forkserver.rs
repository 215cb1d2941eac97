//! The fork server's serving half: the loop of the exec'd server process, which forks a
//! worker for each request, and the request's encoding. The asking half, and why there is a
//! server at all, are in `process::forkserver`.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::sync::atomic::{AtomicI64, Ordering};

use super::setup::Shown;
use super::{ChildSetup, EXIT_INTERNAL};
use crate::sys::{self, child::ChildToken};

/// Largest request the server accepts (the environment list is the only variable part).
const MAX_REQUEST: usize = 64 << 10;
const REQUEST_TAG: u8 = 0xF5;

/// The control socket's fd number and the pid that owns it, readable without the lock: a
/// forked child closes its inherited copy through these (see `forget_server`).
static SERVER_FD: AtomicI64 = AtomicI64::new(-1);

/// Records the control socket of the server this process just started: the pid that owns it
/// in the high half, the fd number in the low half.
pub(crate) fn remember_stamp(stamp: i64) {
    SERVER_FD.store(stamp, Ordering::Release);
}

/// Forgets it (the server was discarded).
pub(crate) fn forget_stamp() {
    SERVER_FD.store(-1, Ordering::Release);
}

/// The request: a tag, a stdio mask (bit i: the i-th passed fd after the socket replaces stdio
/// i; otherwise `/dev/null`), then the environment as length-prefixed pairs.
pub(crate) fn encode_request(stdio_mask: u8, env: &[(OsString, OsString)]) -> io::Result<Vec<u8>> {
    let mut out = vec![REQUEST_TAG, stdio_mask];
    out.extend_from_slice(&(env.len() as u32).to_le_bytes());
    for (k, v) in env {
        for part in [k.as_bytes(), v.as_bytes()] {
            out.extend_from_slice(&(part.len() as u32).to_le_bytes());
            out.extend_from_slice(part);
        }
    }
    if out.len() > MAX_REQUEST {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "environment too large for the fork server",
        ));
    }
    Ok(out)
}

struct Request {
    stdio_mask: u8,
    env: Vec<(OsString, OsString)>,
}

fn decode_request(bytes: &[u8]) -> Option<Request> {
    let (&tag, rest) = bytes.split_first()?;
    if tag != REQUEST_TAG {
        return None;
    }
    let (&stdio_mask, mut rest) = rest.split_first()?;
    let u32_at = |r: &mut &[u8]| -> Option<usize> {
        let (n, tail) = r.split_first_chunk::<4>()?;
        *r = tail;
        Some(u32::from_le_bytes(*n) as usize)
    };
    let count = u32_at(&mut rest)?;
    let mut env = Vec::new();
    for _ in 0..count.min(MAX_REQUEST) {
        let mut pair = [OsString::new(), OsString::new()];
        for part in &mut pair {
            let n = u32_at(&mut rest)?;
            if n > rest.len() {
                return None;
            }
            let (bytes, tail) = rest.split_at(n);
            *part = OsString::from_vec(bytes.to_vec());
            rest = tail;
        }
        let [k, v] = pair;
        env.push((k, v));
    }
    Some(Request { stdio_mask, env })
}

/// The server's loop, run from the load-time entry of the exec'd server process. Returns its exit
/// code when the parent closes the control socket.
pub(crate) fn serve(_token: &ChildToken, ctrl: OwnedFd) -> i32 {
    // Inherited by every worker, which then does not set them itself (`clone_sibling_child`,
    // `enter_forked`); so is all that `warm_up` does.
    sys::ignore_sigpipe();
    sys::ignore_terminal_stops();
    let shown = match sys::set_process_name(super::setup::program_name()) {
        Ok(()) => Shown::Program,
        Err(_) => Shown::Other,
    };
    super::serve::warm_up();
    let parent = sys::getppid();
    if sys::set_parent_death_signal(parent).is_err() {
        return 0;
    }
    let mut buf = vec![0u8; MAX_REQUEST];
    loop {
        let (n, mut fds) = match sys::recv_with_fds(ctrl.as_fd(), &mut buf) {
            Ok((0, _)) | Err(_) => return 0,
            Ok(got) => got,
        };
        let reply = match serve_one(&ctrl, parent, shown, &buf[..n], &mut fds) {
            Ok((pid, Some(pidfd))) => {
                sys::send_with_fds(ctrl.as_fd(), &pid.to_le_bytes(), &[pidfd.as_fd()])
            }
            Ok((pid, None)) => sys::send_with_fds(ctrl.as_fd(), &pid.to_le_bytes(), &[]),
            Err(e) => {
                let errno = -e.raw_os_error().unwrap_or(libc_einval());
                sys::send_with_fds(ctrl.as_fd(), &errno.to_le_bytes(), &[])
            }
        };
        drop(fds);
        if reply.is_err() {
            return 0;
        }
    }
}

fn libc_einval() -> i32 {
    io::Error::from(io::ErrorKind::InvalidInput)
        .raw_os_error()
        .unwrap_or(22)
}

/// Forks the worker `request` asks for. `parent` is the user's process and what the server
/// shows in ps (its workers inherit both).
fn serve_one(
    ctrl: &OwnedFd,
    parent: i32,
    shown: Shown,
    request: &[u8],
    fds: &mut [OwnedFd],
) -> io::Result<(i32, Option<OwnedFd>)> {
    let req = decode_request(request).ok_or_else(|| io::Error::from_raw_os_error(22))?;
    let expected = 1 + req.stdio_mask.count_ones() as usize;
    if fds.len() != expected || req.stdio_mask > 0b111 {
        return Err(io::Error::from_raw_os_error(22));
    }
    sys::child::clone_sibling_child(|token| {
        sys::child::close_inherited(token, ctrl.as_fd());
        let mut passed = fds
            .iter()
            .map(|f| sys::child::take_inherited(token, f.as_fd()));
        let Some(sock) = passed.next() else {
            return EXIT_INTERNAL;
        };
        let mut setup = ChildSetup {
            env: req.env,
            parent,
            shown,
            ..Default::default()
        };
        for (i, slot) in setup.stdio.iter_mut().enumerate() {
            *slot = if req.stdio_mask & (1 << i) != 0 {
                passed.next()
            } else if i == 0 {
                None // the server's own stdin is `/dev/null` already (`process::forkserver`)
            } else {
                sys::open_devnull().ok()
            };
        }
        super::enter_forked(token, sock, setup)
    })
}

/// In a freshly forked worker: close the inherited copy of the parent's server socket, so
/// that the server sees EOF when the parent goes (the lock protecting it is not touched).
pub(crate) fn forget_server(token: &ChildToken, parent: i32) {
    // Looked at before it is written: a worker of the fork server has none to forget, and a
    // write would copy the page it shares with the server.
    if SERVER_FD.load(Ordering::Acquire) < 0 {
        return;
    }
    let stamp = SERVER_FD.swap(-1, Ordering::AcqRel);
    if stamp >= 0 && (stamp >> 32) as i32 == parent {
        let fd = (stamp & 0xffff_ffff) as i32;
        sys::child::close_inherited_raw(token, fd);
    }
}
