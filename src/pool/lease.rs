//! The fast path of `Pool::apply`: borrow an idle worker and talk to it directly.
//!
//! A synchronous `apply` through the supervisor costs two thread hand-offs on top of the
//! socket round trip (client → supervisor → worker → supervisor → client). When a worker is
//! idle and nothing is queued, the calling thread borrows it (a [`Lease`] from
//! `Queue::idle`), writes the task, waits on the worker's socket and pidfd itself, and gives
//! the worker back. Anything unusual (death, timeout, a bad message) is handed to the
//! supervisor as [`Returned::Lost`] with the job, and settled there exactly as for any other
//! job: retried, or failed with the worker's exit status, or `TimedOut`.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::result::{Outcome, Slot};
use super::supervisor::{Classified, Job, Lease, Returned, Shared, Sink, sort};
use crate::error::Error;
use crate::sys;
use crate::wire::fds::{self, Received};
use crate::wire::frame::{self, FrameError, FrameReader};

/// How a borrowed exchange went wrong.
enum Loss {
    /// Dead, broken or misbehaving: let the supervisor reap it and settle the job.
    Died,
    /// Still running at the deadline.
    TimedOut,
}

/// Runs the task in `frame` on an idle worker, if one can be borrowed; `None` otherwise (the
/// caller then queues it). `job` rebuilds the job for the supervisor if the worker is lost.
pub(crate) fn run(
    shared: &Shared,
    frame: &[u8],
    fds: &[OwnedFd],
    timeout: Option<Duration>,
    job: impl FnOnce(Sink) -> Job,
) -> Option<Outcome> {
    let mut lease = {
        let mut q = shared.lock();
        if q.terminate || q.closed || q.broken.is_some() || !q.jobs.is_empty() {
            return None;
        }
        q.idle.pop()?
    };
    let deadline = timeout.map(|t| Instant::now() + t);
    match exchange(&lease, frame, fds, deadline) {
        Ok(outcome) => {
            give_back(shared, &mut lease);
            Some(outcome)
        }
        Err(loss) => Some(lost(shared, lease, loss, job)),
    }
}

fn give_back(shared: &Shared, lease: &mut Lease) {
    lease.tasks += 1;
    if let Some(left) = lease.tasks_left.as_mut() {
        *left -= 1;
    }
    let mut q = shared.lock();
    if lease.tasks_left == Some(0) {
        let (id, tasks) = (lease.id, lease.tasks);
        q.returned.push(Returned::Retire { id, tasks });
        shared.wake_locked(q);
        return;
    }
    let wake = !q.jobs.is_empty() || q.closed || q.terminate;
    q.idle.push(Lease {
        id: lease.id,
        sock: Arc::clone(&lease.sock),
        pidfd: lease.pidfd.clone(),
        tasks: lease.tasks,
        tasks_left: lease.tasks_left,
    });
    if wake {
        shared.wake_locked(q);
    }
}

fn lost(shared: &Shared, lease: Lease, loss: Loss, job: impl FnOnce(Sink) -> Job) -> Outcome {
    if let Some(p) = &lease.pidfd {
        // Make sure it is gone: a timed-out or misbehaving worker may still be running.
        let _ = sys::pidfd_send_signal(p.as_fd(), sys::SIGKILL);
    }
    let slot = Arc::new(Slot::new(1));
    {
        let mut q = shared.lock();
        if q.terminate {
            return Err(Error::closed("the pool was terminated"));
        }
        if let Some(why) = &q.broken {
            return Err(Error::broken(why.clone()));
        }
        let job = job(Sink::Slot(Arc::clone(&slot), 0));
        let timed_out = matches!(loss, Loss::TimedOut);
        q.returned.push(Returned::Lost {
            id: lease.id,
            job,
            timed_out,
        });
        shared.wake_locked(q);
    }
    slot.wait(None);
    slot.take()
        .pop()
        .unwrap_or_else(|| Err(Error::protocol("a result was lost")))
}

/// Writes the task and reads its reply, watching the worker's pidfd and the deadline.
fn exchange(
    lease: &Lease,
    frame: &[u8],
    fds: &[OwnedFd],
    deadline: Option<Instant>,
) -> Result<Outcome, Loss> {
    let sock: &UnixStream = &lease.sock;
    fds::write_frame(sock, frame, fds).map_err(|_| Loss::Died)?;
    let mut reader = FrameReader::new(frame::DEFAULT_LIMIT);
    let mut received = Received::default();
    loop {
        if !reader.has_frame() {
            let timeout = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            let ready = match &lease.pidfd {
                Some(p) => sys::poll_readable(&[sock.as_fd(), p.as_fd()], timeout),
                None => sys::poll_readable(&[sock.as_fd()], timeout),
            }
            .map_err(|_| Loss::Died)?;
            if !ready[0].readable {
                if ready.get(1).is_some_and(|r| r.readable) {
                    // It ended; it may have answered between poll's two looks.
                    let again = sys::poll_readable(&[sock.as_fd()], Some(Duration::ZERO));
                    if !again.is_ok_and(|r| r[0].readable) {
                        return Err(Loss::Died);
                    }
                }
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Err(Loss::TimedOut);
                }
                continue;
            }
        }
        let mut src = fds::FdRead {
            sock: sock.as_fd(),
            fifo: &mut received.fifo,
        };
        match reader.advance(&mut src) {
            Ok(Some(f)) => match sort(&mut received, f) {
                Ok(None | Some(Classified::Hello { ours: true })) => continue,
                Ok(Some(Classified::Outcome(o))) => return Ok(o),
                Ok(Some(Classified::Hello { ours: false })) | Err(_) => return Err(Loss::Died),
            },
            Ok(None) | Err(FrameError::WouldBlock) => continue,
            Err(_) => return Err(Loss::Died),
        }
    }
}
