//! The fast path of `Pool::apply`: borrow an idle worker and talk to it directly.
//!
//! A synchronous `apply` through the supervisor costs two thread hand-offs on top of the
//! socket round trip (client → supervisor → worker → supervisor → client). When a worker is
//! idle and nothing is queued, the calling thread borrows it (a [`Lease`] from
//! `Backlog::idle`), writes the task, waits on the worker's socket and pidfd itself, and gives
//! the worker back. Anything unusual (death, timeout, a bad message) is handed to the
//! supervisor as [`Returned::Lost`] with the job, and settled there exactly as for any other
//! job: retried, or failed with the worker's exit status, or `TimedOut`.
//!
//! [`borrow`] / [`Borrowed::poll`] / [`settle`] are the steps; [`run`] blocks on them for
//! `apply`, and a serving MPI rank polls them between its MPI duties.

use std::io::Write;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::batch::{Batch, Sink};
use super::fate;
use super::registry::{Lease, Registry, Returned, WATCH_TICK, paused_for};
use super::result::{Answer, Outcome, Part, Slot};
use crate::error::Error;
use crate::sys;
use crate::task::mailbox;
use crate::task::reply::{Classified, sort};
use crate::task::spin::Spin;
use crate::wire::fds::{self, Fds, Received};
use crate::wire::frame::{self, FrameError, FrameReader};
use crate::wire::msg;

/// What a borrowed worker answered: its reply to the task, or the failure of the whole run.
pub(crate) type Reply = Result<Answer, Error>;

/// How a borrowed exchange went wrong.
pub(crate) enum BorrowLost {
    /// Dead, broken or misbehaving: let the supervisor reap it and settle the job.
    Died,
    /// Still running at the deadline.
    TimedOut,
}

thread_local! {
    /// How long this thread's `apply` calls look for their answer before sleeping.
    static SPIN: std::cell::RefCell<Spin> = std::cell::RefCell::new(Spin::default());
}

/// Runs the task in `frame` on an idle worker, if one can be borrowed, and waits for its
/// outcome; gives the frame back otherwise (the caller then queues it).
pub(crate) fn run(
    shared: &Registry,
    frame: Vec<u8>,
    fds: Fds,
    timeout: Option<Duration>,
    retries: u32,
) -> Result<Outcome, (Vec<u8>, Fds)> {
    let mut frame = frame;
    msg::set_run_flag(&mut frame, msg::FLAG_HOT);
    let mut b = borrow(shared, frame, fds, 1, timeout)?;
    let polled = loop {
        // A small task's answer comes within microseconds: look a short while before
        // sleeping (`task::spin`), and after a wake `poll` costs no syscall beyond the read in
        // the common case.
        if !b.unsent {
            let looked = SPIN.with_borrow_mut(|spin| {
                spin.look(|| match b.peek() {
                    Ok(None) => None,
                    other => Some(other),
                })
            });
            match looked {
                Some(Ok(Some(outcome))) => break Ok(outcome),
                Some(Err(loss)) => break Err(loss),
                Some(Ok(None)) | None => {}
            }
            let asked = b
                .deadline
                .map(|d| d.saturating_duration_since(Instant::now()).min(WATCH_TICK));
            // Parked: the worker rings the socket for an answer it leaves in the mailbox.
            b.park(true);
            if let Some(answer) = match b.peek() {
                Ok(None) => None,
                other => Some(other),
            } {
                b.park(false);
                match answer {
                    Ok(Some(outcome)) => break Ok(outcome),
                    Err(loss) => break Err(loss),
                    Ok(None) => {}
                }
            }
            let before = Instant::now();
            let waited = match b.lease.child.exit_fd() {
                Some(p) => sys::poll_readable(&[b.sock(), p], asked),
                None => sys::poll_readable(&[b.sock()], asked),
            };
            b.park(false);
            if waited.is_err() {
                break Err(BorrowLost::Died);
            }
            SPIN.with_borrow_mut(|spin| spin.parked(before.elapsed()));
            // Slept far longer than asked: the program was stopped meanwhile (Ctrl-Z,
            // SIGSTOP), and that time does not count against the task.
            if let (Some(gap), Some(d)) = (paused_for(before, asked), b.deadline.as_mut()) {
                *d += gap;
            }
        }
        match b.poll() {
            Ok(Some(outcome)) => break Ok(outcome),
            Ok(None) => {}
            Err(loss) => break Err(loss),
        }
    };
    let slot = Arc::new(Slot::new(1));
    let sink = Sink::Slot(Arc::clone(&slot), 0);
    settle(shared, b, polled, sink, retries);
    slot.wait(None);
    Ok(slot
        .take()
        .pop()
        .unwrap_or_else(|| vec![Part::rest(Error::protocol("a result was lost"))]))
}

/// A task written to a borrowed worker, whose answer is collected without blocking: for a
/// thread that has other work between looks (a serving MPI rank, which also serves MPI).
pub(crate) struct Borrowed {
    lease: Lease,
    reader: FrameReader,
    received: Received,
    deadline: Option<Instant>,
    /// The task, for the supervisor should the worker be lost, and its item count.
    frame: Vec<u8>,
    fds: Fds,
    items: usize,
    /// The write failed: the worker is dead or dying.
    unsent: bool,
    /// The task's number in the mailbox, if it went that way.
    boxed: Option<u64>,
    /// The cause it announced as it died (`"stack overflow"`), if it did.
    last_words: Option<&'static str>,
}

/// Writes the task in `frame` (with the fds of handles inside its argument) to an idle
/// worker, if one can be borrowed; gives them back otherwise (the caller then queues them).
///
/// A task that fits goes by the worker's mailbox (`task::mailbox`), whose answer comes back
/// there: a borrower that sleeps must first [`park`](Borrowed::park) and
/// [`peek`](Borrowed::peek) once more, so that the worker rings the socket for it.
pub(crate) fn borrow(
    shared: &Registry,
    frame: Vec<u8>,
    fds: Fds,
    items: usize,
    timeout: Option<Duration>,
) -> Result<Borrowed, (Vec<u8>, Fds)> {
    let lease = {
        let mut q = shared.lock();
        if q.terminate || q.closed || q.broken.is_some() || !q.jobs.is_empty() {
            return Err((frame, fds));
        }
        // A worker waiting on another CPU than ours, if one is idle: on a shared one, both
        // sides' spinning would only take turns (`task::spin`).
        let elsewhere = crate::sys::current_cpu().and_then(|me| {
            q.idle
                .iter()
                .rposition(|l| mailbox::caller::worker_cpu(l.watch.page()) != Some(me))
        });
        let picked = match elsewhere {
            Some(i) => Some(q.idle.remove(i)),
            None => q.idle.pop(),
        };
        match picked {
            Some(lease) => lease,
            None => return Err((frame, fds)),
        }
    };
    let posted = fds
        .is_none()
        .then(|| mailbox::caller::post(lease.watch.page(), &frame[frame::HEADER..]))
        .flatten();
    let unsent = match posted {
        Some((_, true)) => (&*lease.sock).write_all(&msg::doorbell(true)).is_err(),
        Some((_, false)) => false,
        None => fds::write_frame(&lease.sock, &frame, fds.as_deref().unwrap_or_default()).is_err(),
    };
    Ok(Borrowed {
        lease,
        reader: FrameReader::new(frame::DEFAULT_LIMIT),
        received: Received::default(),
        deadline: timeout.map(|t| Instant::now() + t),
        frame,
        fds,
        items,
        unsent,
        boxed: posted.map(|(seq, _)| seq),
        last_words: None,
    })
}

impl Borrowed {
    /// The worker's socket, readable when its answer (or its end) arrives.
    pub(crate) fn sock(&self) -> std::os::fd::BorrowedFd<'_> {
        self.lease.sock.as_fd()
    }

    /// As [`poll`](Borrowed::poll), without a syscall while the answer is due in the mailbox
    /// (for looking in a loop).
    pub(crate) fn peek(&mut self) -> Result<Option<Reply>, BorrowLost> {
        match self.boxed {
            Some(seq) if !self.unsent => {
                match mailbox::caller::answer(self.lease.watch.page(), seq) {
                    mailbox::caller::Answer::Pending => Ok(None),
                    mailbox::caller::Answer::Here(body) => self.sorted(body).unwrap_or(Ok(None)),
                    mailbox::caller::Answer::BySocket => self.poll(),
                }
            }
            _ => self.poll(),
        }
    }

    /// Says in the mailbox whether this caller sleeps (so the worker rings for its answer):
    /// before sleeping, say so, then [`peek`](Borrowed::peek) once more.
    pub(crate) fn park(&self, parked: bool) {
        if self.boxed.is_some() {
            mailbox::caller::park(self.lease.watch.page(), parked);
        }
    }

    /// The answer if it has arrived, `Ok(None)` while the task runs, or how it was lost.
    /// Never blocks.
    pub(crate) fn poll(&mut self) -> Result<Option<Reply>, BorrowLost> {
        if self.unsent {
            return Err(BorrowLost::Died);
        }
        if let Some(seq) = self.boxed {
            if let mailbox::caller::Answer::Here(body) =
                mailbox::caller::answer(self.lease.watch.page(), seq)
            {
                if let Some(sorted) = self.sorted(body) {
                    return sorted;
                }
            }
        }
        if let Some(o) = self.read()? {
            return Ok(Some(o));
        }
        if let Some(p) = self.lease.child.exit_fd() {
            let ended = sys::poll_readable(&[p], Some(Duration::ZERO));
            if ended.is_ok_and(|r| r[0].readable) {
                // It ended; it may have answered between our read and this look.
                return self.read()?.map(Some).ok_or(BorrowLost::Died);
            }
        }
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(BorrowLost::TimedOut);
        }
        Ok(None)
    }

    /// Reads what is waiting; the answer once whole.
    fn read(&mut self) -> Result<Option<Reply>, BorrowLost> {
        loop {
            let mut src = fds::FdRead {
                sock: self.lease.sock.as_fd(),
                fifo: &mut self.received.fifo,
                nowait: true,
            };
            match self.reader.advance(&mut src) {
                Ok(Some(f)) => match self.sorted(f) {
                    Some(answer) => return answer,
                    None => continue,
                },
                Ok(None) => continue,
                Err(FrameError::WouldBlock) => return Ok(None),
                Err(_) => return Err(BorrowLost::Died),
            }
        }
    }
}

impl Borrowed {
    /// A message from the worker (by the socket or the mailbox), sorted: `None` for one that
    /// is not the answer (its hello, fds for the next, a doorbell, its last words).
    fn sorted(&mut self, body: Vec<u8>) -> Option<Result<Option<Reply>, BorrowLost>> {
        match sort(&mut self.received, body) {
            Ok(None | Some(Classified::Hello)) => None,
            // Its death follows; the supervisor reports it with this cause.
            Ok(Some(Classified::Dying(cause))) => {
                self.last_words = Some(cause);
                None
            }
            Ok(Some(Classified::Answer(a))) => Some(Ok(Some(a))),
            Ok(Some(Classified::Foreign(_))) | Err(_) => Some(Err(BorrowLost::Died)),
        }
    }
}

/// Settles a borrowed task once [`Borrowed::poll`] had its say, into `sink`: an answered
/// worker goes back to the pool and the answer is delivered; a lost one goes to the
/// supervisor with the task, which `fate` settles like any other job's (from how far the
/// worker got: kept results, a re-run, the worker's exit status, `TimedOut`).
pub(crate) fn settle(
    shared: &Registry,
    mut b: Borrowed,
    polled: Result<Reply, BorrowLost>,
    sink: Sink,
    retries: u32,
) {
    let mut job = Batch::new(b.frame, b.fds, b.items, sink, retries);
    job.worker = u32::try_from(b.lease.child.pid()).ok();
    let loss = match polled {
        Ok(answer) => {
            give_back(shared, &mut b.lease);
            return fate::answered(job, answer);
        }
        Err(loss) => loss,
    };
    // Make sure it is gone, with its process group: a timed-out or misbehaving worker may
    // still be running, and so may its task's subprocesses. (Not reaped yet: the supervisor
    // reaps it, so its pid and group id are still its own.)
    let _ = b.lease.child.signal_group(sys::SIGKILL);
    let mut q = shared.lock();
    if q.terminate {
        drop(q);
        return job.fail_rest(Error::closed("the pool was terminated"));
    }
    if let Some(why) = q.broken.clone() {
        drop(q);
        return job.fail_rest(Error::broken(why));
    }
    q.returned.push(Returned::Lost {
        id: b.lease.id,
        tasks: b.lease.tasks,
        job,
        timed_out: matches!(loss, BorrowLost::TimedOut),
        last_words: b.last_words,
    });
    shared.wake_locked(q);
}

fn give_back(shared: &Registry, lease: &mut Lease) {
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
        child: Arc::clone(&lease.child),
        watch: Arc::clone(&lease.watch),
        tasks: lease.tasks,
        tasks_left: lease.tasks_left,
    });
    if wake {
        shared.wake_locked(q);
    }
}
