//! The registry: what the pool's clients and its supervisor share (in rayon's sense of the
//! word): the backlog of jobs, the life-cycle
//! flags, idle workers offered for borrowing, and the wake-up socket.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::batch::Batch;
use crate::error::Error;

/// What clients and the supervisor share.
pub(crate) struct Registry {
    pub(crate) backlog: Mutex<Backlog>,
    wake_tx: UnixStream,
    /// Signalled when `Backlog::start` leaves `Pending`.
    started: Condvar,
    /// Workers started and not ending, as the supervisor last counted them.
    pub(crate) live: AtomicUsize,
}

/// The longest the supervisor (or a borrower) sleeps while a task has a deadline: a pause of
/// the whole program longer than this (Ctrl-Z, `SIGSTOP`, a frozen container) is noticed, and
/// does not count against the running items.
pub(crate) const WATCH_TICK: Duration = Duration::from_millis(200);
/// Sleeping this much longer than asked counts as a pause.
const PAUSE_SLACK: Duration = Duration::from_millis(50);

/// How long the program was paused (stopped, or starved of CPU) during a sleep that began at
/// `since` and asked for `asked`: the oversleep, if it passes the slack.
pub(crate) fn paused_for(since: Instant, asked: Option<Duration>) -> Option<Duration> {
    let asked = asked?;
    let slept = since.elapsed();
    (slept > asked + PAUSE_SLACK).then(|| slept - asked)
}

/// What the starter thread reports.
pub(crate) enum Launch {
    Started(crate::process::launch::Launched),
    /// This many launches failed, for this reason.
    Failed(usize, io::Error),
}

/// How the pool's start went: `build` waits until at least one worker could be started.
#[derive(Clone, Debug, Default)]
pub(crate) enum Start {
    #[default]
    Pending,
    Running,
    /// Not one worker could be started: why.
    Failed(String),
}

/// Pending jobs and the pool's life-cycle flags.
#[derive(Default)]
pub(crate) struct Backlog {
    pub(crate) jobs: VecDeque<Batch>,
    pub(crate) closed: bool,
    pub(crate) terminate: bool,
    pub(crate) broken: Option<String>,
    pub(crate) wake_pending: bool,
    /// Idle workers a client may borrow for one synchronous task (see `lease`).
    pub(crate) idle: Vec<Lease>,
    /// Borrowed workers handed back with news for the supervisor.
    pub(crate) returned: Vec<Returned>,
    /// Whether a first worker could be started.
    pub(crate) start: Start,
    /// Workers the starter thread launched, for the supervisor to take on.
    pub(crate) launched: Vec<Launch>,
    /// The supervisor has returned: the starter kills what it still launches.
    pub(crate) stopped: bool,
    /// A handle was cancelled since the supervisor last looked: its jobs are to be withdrawn.
    pub(crate) cancelled: bool,
}

/// An idle worker lent to a client thread for one `apply`: the client writes the task and
/// reads the answer itself, saving two thread hand-offs per round trip. While lent, the
/// supervisor neither reads its socket nor reaps it.
pub(crate) struct Lease {
    pub(crate) id: u64,
    pub(crate) sock: Arc<UnixStream>,
    /// Its process (pid, process group, pidfd), still unreaped while lent.
    pub(crate) child: Arc<crate::sys::ChildHandle>,
    /// Its control block, whose first page holds the mailbox (`task::mailbox`).
    pub(crate) watch: Arc<crate::task::progress::Watch>,
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
        job: Batch,
        timed_out: bool,
        /// The cause it announced as it died (`"stack overflow"`), if it did.
        last_words: Option<&'static str>,
    },
}

impl Registry {
    /// Queues jobs, or refuses them if the pool no longer accepts work.
    pub(crate) fn submit(&self, jobs: impl IntoIterator<Item = Batch>) -> Result<(), Error> {
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

    /// A handle was cancelled: wakes the supervisor to withdraw its jobs.
    pub(crate) fn cancelled(&self) {
        let mut q = self.lock();
        q.cancelled = true;
        self.wake_locked(q);
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
    pub(crate) fn new() -> io::Result<(Arc<Registry>, UnixStream)> {
        let (wake_tx, wake_rx) = crate::sys::socket_pair()?;
        let shared = Arc::new(Registry {
            backlog: Mutex::new(Backlog::default()),
            wake_tx,
            started: Condvar::new(),
            live: AtomicUsize::new(0),
        });
        Ok((shared, wake_rx))
    }

    /// Records how the start went (once: later calls change nothing).
    pub(crate) fn set_start(&self, start: Start) {
        let mut q = self.lock();
        if matches!(q.start, Start::Pending) {
            q.start = start;
            self.started.notify_all();
        }
    }

    /// Waits until a first worker started, or starting one failed for good.
    pub(crate) fn wait_start(&self, limit: Duration) -> Start {
        let deadline = Instant::now() + limit;
        let mut q = self.lock();
        while matches!(q.start, Start::Pending) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Start::Failed(format!("no worker started within {} s", limit.as_secs()));
            }
            q = self
                .started
                .wait_timeout(q, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        q.start.clone()
    }
}
