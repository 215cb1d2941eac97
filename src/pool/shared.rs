//! What the pool's clients and its supervisor share: the backlog of jobs, the life-cycle
//! flags, idle workers offered for borrowing, and the wake-up socket.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, PoisonError};

use super::job::Job;
use crate::error::Error;

/// What clients and the supervisor share.
pub(crate) struct Shared {
    pub(crate) backlog: Mutex<Backlog>,
    wake_tx: UnixStream,
}

/// Pending jobs and the pool's life-cycle flags.
#[derive(Default)]
pub(crate) struct Backlog {
    pub(crate) jobs: VecDeque<Job>,
    pub(crate) closed: bool,
    pub(crate) terminate: bool,
    pub(crate) broken: Option<String>,
    pub(crate) wake_pending: bool,
    /// Idle workers a client may borrow for one synchronous task (see `lease`).
    pub(crate) idle: Vec<Lease>,
    /// Borrowed workers handed back with news for the supervisor.
    pub(crate) returned: Vec<Returned>,
}

/// An idle worker lent to a client thread for one `apply`: the client writes the task and
/// reads the answer itself, saving two thread hand-offs per round trip. While lent, the
/// supervisor neither reads its socket nor reaps it.
pub(crate) struct Lease {
    pub(crate) id: u64,
    pub(crate) sock: Arc<UnixStream>,
    pub(crate) pidfd: Option<Arc<OwnedFd>>,
    /// Tasks run (answered) while lent since the supervisor last looked.
    pub(crate) tasks: usize,
    /// Tasks it may still run before it must retire (`max_tasks_per_child`).
    pub(crate) tasks_left: Option<usize>,
}

/// What a client hands back instead of an idle lease.
pub(crate) enum Returned {
    /// It reached `max_tasks_per_child`: retire it.
    Retire { id: u64, tasks: usize },
    /// It died, hung past its timeout (killed), or misbehaved while running `job`, after
    /// answering `tasks` others while lent.
    Lost {
        id: u64,
        tasks: usize,
        job: Job,
        timed_out: bool,
    },
}

impl Shared {
    /// Queues jobs, or refuses them if the pool no longer accepts work.
    pub(crate) fn submit(&self, jobs: impl IntoIterator<Item = Job>) -> Result<(), Error> {
        let mut q = self.lock();
        if q.terminate {
            return Err(Error::closed("the pool was terminated"));
        }
        if q.closed {
            return Err(Error::closed(
                "the pool is closed: no new tasks after close()",
            ));
        }
        if let Some(why) = &q.broken {
            return Err(Error::broken(why.clone()));
        }
        q.jobs.extend(jobs);
        self.wake_locked(q);
        Ok(())
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, Backlog> {
        self.backlog.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Wakes the supervisor; at most one wake byte is in flight.
    pub(crate) fn wake_locked(&self, mut q: std::sync::MutexGuard<'_, Backlog>) {
        if !q.wake_pending {
            q.wake_pending = true;
            drop(q);
            let _ = (&self.wake_tx).write(&[1]);
        }
    }

    /// A new backlog and the socket end the supervisor waits on for wake-ups.
    pub(crate) fn new() -> io::Result<(Arc<Shared>, UnixStream)> {
        let (wake_tx, wake_rx) = crate::sys::socket_pair()?;
        let shared = Arc::new(Shared {
            backlog: Mutex::new(Backlog::default()),
            wake_tx,
        });
        Ok((shared, wake_rx))
    }
}
