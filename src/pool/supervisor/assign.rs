//! Handing work out: queued jobs to workers (with a look-ahead for fast tasks), idle workers
//! to borrowers (`lease`), and taking back what borrowers return.

use std::io::{self, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Instant;

use super::worker::{Phase, retire, signal};
use super::*;

impl Supervisor {
    /// Ids of published workers a client has borrowed right now.
    pub(super) fn lent(&self) -> Vec<u64> {
        // Every turn of the loop asks; skip the lock while nothing is published (during a
        // `map`, say).
        if !self.workers.iter().any(|w| w.published) {
            return Vec::new();
        }
        let q = self.shared.lock();
        self.workers
            .iter()
            .filter(|w| w.published && !q.idle.iter().any(|l| l.id == w.id))
            .map(|w| w.id)
            .collect()
    }

    /// Offers idle workers to clients, when nothing is queued for them. Only workers whose
    /// hello has arrived: a borrower must never be the one to see a worker start.
    pub(super) fn publish(&mut self, closed: bool) {
        let mut q = self.shared.lock();
        if closed || !q.jobs.is_empty() {
            return;
        }
        for w in &mut self.workers {
            let idle = matches!(w.state, Phase::Active)
                && w.served
                && w.inflight.is_empty()
                && !w.published;
            let (Some(sock), true) = (&w.sock, idle) else {
                continue;
            };
            let tasks_left = self
                .config
                .max_tasks_per_child
                .map(|m| m.saturating_sub(w.tasks));
            if tasks_left == Some(0) {
                continue;
            }
            q.idle.push(Lease {
                id: w.id,
                sock: Arc::clone(sock),
                child: Arc::clone(&w.child),
                watch: Arc::clone(&w.watch),
                tasks: 0,
                tasks_left,
            });
            w.published = true;
        }
    }

    /// Takes back the published workers no client has borrowed, to give them queued jobs.
    pub(super) fn reclaim(&mut self) {
        let leases: Vec<Lease> = self.shared.lock().idle.drain(..).collect();
        for l in leases {
            if let Some(w) = self.workers.iter_mut().find(|w| w.id == l.id) {
                w.published = false;
                w.tasks += l.tasks;
                w.answered += l.tasks as u64;
                w.head_since = Instant::now();
            }
        }
    }

    /// Settles what borrowers handed back.
    pub(super) fn absorb_returned(&mut self) {
        let returned: Vec<Returned> = self.shared.lock().returned.drain(..).collect();
        for r in returned {
            match r {
                Returned::Retire { id, tasks } => {
                    if let Some(w) = self.workers.iter_mut().find(|w| w.id == id) {
                        w.published = false;
                        w.tasks += tasks;
                        w.answered += tasks as u64;
                        retire(w);
                    }
                }
                Returned::Lost {
                    id,
                    tasks,
                    job,
                    timed_out,
                    last_words,
                } => {
                    let Some(w) = self.workers.iter_mut().find(|w| w.id == id) else {
                        job.fail_rest(Error::protocol("a lent worker vanished"));
                        continue;
                    };
                    w.published = false;
                    w.tasks += tasks;
                    w.answered += tasks as u64;
                    signal(w, sys::SIGKILL);
                    w.sock = None;
                    w.state = Phase::Ending;
                    w.last_words = last_words;
                    if timed_out {
                        let snap = w.watch.snapshot();
                        w.loss = Some((Loss::TimedOut, (snap.started, snap.done)));
                    }
                    // Settled by `fate` when it is reaped, from how far it got.
                    w.inflight.push_front(job);
                }
            }
        }
    }

    /// True when no job is queued or running (on a lent worker too).
    pub(super) fn drained(&self) -> bool {
        self.lent().is_empty()
            && self.shared.lock().jobs.is_empty()
            && self
                .workers
                .iter()
                .all(|w| w.inflight.is_empty() && !matches!(w.state, Phase::Init))
    }

    /// Hands queued jobs to workers: one to each idle worker first, then, when tasks are fast,
    /// more to fill each worker's look-ahead. Several jobs go out in one write.
    pub(super) fn assign(&mut self) {
        let depth = if self.avg_task < FAST_TASK {
            MAX_DEPTH
        } else {
            1
        };
        if !self.shared.lock().jobs.is_empty() {
            self.reclaim();
        }
        for round in [1, depth] {
            // The look-ahead is shared out: no worker takes more than its share of what is
            // queued, so that a short `map` keeps every worker busy to its end.
            let usable = self.workers.iter().filter(|w| w.takes_jobs()).count();
            let share = self.shared.lock().jobs.len().div_ceil(usable.max(1)).max(1);
            for w in &mut self.workers {
                let usable = w.takes_jobs();
                // Top a look-ahead up only once it is half used, so that one write carries
                // many jobs instead of one write per finished task.
                let low = if round == 1 { 1 } else { round / 2 + 1 };
                if !usable || w.inflight.len() >= low {
                    continue;
                }
                let mut want = (round - w.inflight.len()).min(share);
                if let Some(max) = self.config.max_tasks_per_child {
                    // Never send a worker more than it may still run before it retires.
                    want = want.min(max.saturating_sub(w.tasks + w.inflight.len()));
                }
                let mut jobs: Vec<Batch> = {
                    let mut q = self.shared.lock();
                    let mut ahead: usize = w.inflight.iter().skip(1).map(|j| j.frame.len()).sum();
                    let mut n = 0;
                    for (k, j) in q.jobs.iter().take(want).enumerate() {
                        // The first job to an idle worker may be any size: it is reading.
                        if !(w.inflight.is_empty() && k == 0) {
                            ahead += j.frame.len();
                            if ahead > w.ahead_bytes {
                                break;
                            }
                        }
                        n += 1;
                    }
                    q.jobs.drain(..n).collect()
                };
                if jobs.is_empty() {
                    continue;
                }
                if self.config.max_tasks_per_child.is_none() {
                    // (A merged job counts once where a worker's tasks are counted.)
                    jobs = merge(jobs);
                }
                let Some(sock) = w.sock.as_deref() else {
                    continue;
                };
                for j in &mut jobs {
                    j.prepare();
                    j.worker = u32::try_from(w.child.pid()).ok();
                }
                let sent = send_jobs(sock, &jobs);
                let unsent = jobs.split_off(sent);
                if !unsent.is_empty() {
                    // The worker died (the only way a write to it fails). A job whose frame was
                    // not written whole never started: it goes back to the queue without
                    // spending a retry. Those written whole may have run, so they join
                    // `inflight` like any other. Its pidfd reports the death.
                    //
                    // The socket stays open: the worker may have answered jobs already in
                    // flight (or just sent) before it died, and those answers must settle
                    // them. Treating them as unexpected would fail a finished task with a
                    // protocol error, or, had the jobs been re-queued, run them twice.
                    let mut q = self.shared.lock();
                    for j in unsent.into_iter().rev() {
                        q.jobs.push_front(j);
                    }
                    drop(q);
                    w.state = Phase::Ending;
                }
                if w.inflight.is_empty() && !jobs.is_empty() {
                    w.head_since = Instant::now();
                }
                w.inflight.extend(jobs);
            }
        }
    }
}

/// Merges runs of consecutive jobs of one `map` (`Batch::absorb`): a `map` with small chunks
/// then costs a worker one frame and one answer per run, not per chunk. Only look-ahead jobs
/// of fast tasks come here in numbers, so a merged run is short in time.
fn merge(jobs: Vec<Batch>) -> Vec<Batch> {
    let mut out: Vec<Batch> = Vec::with_capacity(jobs.len());
    for j in jobs {
        if !out.last_mut().is_some_and(|last| last.absorb(&j)) {
            out.push(j);
        }
    }
    out
}

/// Writes `jobs` to a worker, in one write when it can; returns how many were written whole
/// (all of them unless the write failed).
pub(super) fn send_jobs(sock: &UnixStream, jobs: &[Batch]) -> usize {
    if jobs.iter().any(|j| j.fds.is_some()) {
        // Rare: handles inside arguments. Each such job goes with its own fds.
        return jobs
            .iter()
            .take_while(|j| {
                fds::write_frame(sock, &j.frame, j.fds.as_deref().unwrap_or_default()).is_ok()
            })
            .count();
    }
    let written = if let [one] = jobs {
        write_counted(sock, &one.frame)
    } else {
        let mut batch = Vec::with_capacity(jobs.iter().map(|j| j.frame.len()).sum());
        for j in jobs {
            batch.extend_from_slice(&j.frame);
        }
        write_counted(sock, &batch)
    };
    let mut end = 0;
    jobs.iter()
        .take_while(|j| {
            end += j.frame.len();
            end <= written
        })
        .count()
}

/// `write_all` that reports how far it got: a write can fail after part of the buffer went
/// out (the peer died while we were blocked on a full socket), and the frames in that part
/// may have been read and run.
fn write_counted(mut sock: &UnixStream, buf: &[u8]) -> usize {
    let mut done = 0;
    while done < buf.len() {
        match sock.write(&buf[done..]) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    done
}
