//! [`ChildHandle`]: one child process of ours, as its pid and, where the kernel has them, a
//! pidfd — every signal, wait and reap of a child goes through it.
//!
//! The pidfd-or-pid choice is made once, when the handle is made ([`ChildHandle::open`], with
//! the kernel's support probed once per process): a handle with a pidfd signals through it and
//! offers it as its [`exit_fd`](ChildHandle::exit_fd) (readable once the child has ended); one
//! without signals by pid and has no exit fd, and waits block in `waitpid` or poll.
//!
//! Reaping follows [`super::waitpid`]: the child's process group is killed after it ended and
//! before it is reaped, and a child someone else reaped (`ECHILD`: a foreign `waitpid(-1)`,
//! `SIGCHLD` ignored) is reported as [`RawExit::Unknown`] and never signalled again.
//!
//! `waitpid`, `kill`, `kill_group` and the pidfd calls are `pub(super)`: outside `sys`, this
//! handle is the only way to wait for or signal a child.
//!
//! The decisions made on top of the system calls (when to block, when to signal) are written
//! once, generic over the tiny [`Wait`] and [`Kill`] traits (tokio's shape), so that they are
//! unit-tested with a fake child below.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::RawExit;

/// Reaping a child: what the wait logic needs of one.
pub(crate) trait Wait {
    /// Reaps the child if it has ended; `Ok(None)` while it runs. Never blocks.
    fn try_reap(&self) -> io::Result<Option<RawExit>>;
    /// Waits for the child to end and reaps it.
    fn reap(&self) -> io::Result<RawExit>;
    /// Waits until the child's exit fd is readable or `timeout` passes (`None`: no limit);
    /// `None` when the child has no exit fd.
    fn wait_exit_fd(&self, timeout: Option<Duration>) -> Option<io::Result<()>>;
    /// True when the child has an exit fd to poll.
    fn has_exit_fd(&self) -> bool;
}

/// Signalling a child.
pub(crate) trait Kill {
    /// Sends `sig` to the child's process group, then to the child (see
    /// [`super::kill_group`]). `ESRCH` once it has ended.
    fn signal_group(&self, sig: i32) -> io::Result<()>;
}

/// A child process of this process, unreaped until one of its reaping methods said how it
/// ended. Dropping it closes its pidfd and neither kills nor reaps it.
#[derive(Debug)]
pub(crate) struct ChildHandle {
    pid: i32,
    pidfd: Option<OwnedFd>,
}

impl ChildHandle {
    /// A handle for child `pid` with exactly this pidfd (`None`: go by pid alone).
    pub(crate) fn new(pid: i32, pidfd: Option<OwnedFd>) -> ChildHandle {
        ChildHandle { pid, pidfd }
    }

    /// A handle for child `pid` (unreaped, so its pid cannot have been recycled), with a
    /// pidfd where the kernel has them (Linux 5.3+; asked once per process).
    pub(crate) fn open(pid: i32) -> ChildHandle {
        ChildHandle::new(pid, open_pidfd(pid))
    }

    /// The child's pid (and its process group's id).
    pub(crate) fn pid(&self) -> i32 {
        self.pid
    }

    /// An fd that becomes readable once the child has ended (its pidfd), if it has one.
    pub(crate) fn exit_fd(&self) -> Option<BorrowedFd<'_>> {
        self.pidfd.as_ref().map(AsFd::as_fd)
    }

    /// Closes the pidfd of a child already reaped: the handle then holds no fd.
    pub(crate) fn close_exit_fd(&mut self) {
        self.pidfd = None;
    }

    /// Sends `sig` to the child's process group and to the child (see [`Kill`]).
    pub(crate) fn signal_group(&self, sig: i32) -> io::Result<()> {
        super::kill_group(self.pid, self.exit_fd(), sig)
    }

    /// Reaps the child if it has ended; `Ok(None)` while it runs. Never blocks.
    pub(crate) fn try_reap(&self) -> io::Result<Option<RawExit>> {
        super::waitpid(self.pid, false)
    }

    /// Waits for the child to end and reaps it.
    pub(crate) fn reap(&self) -> io::Result<RawExit> {
        Wait::reap(self)
    }

    /// Reaps a child whose end was noticed (its exit fd fired, or its socket closed): with an
    /// exit fd this only looks (`Ok(None)`: not yet, the fd fires again); without one there is
    /// nothing else to wait on, so this blocks until it has ended.
    pub(crate) fn reap_ending(&self) -> io::Result<Option<RawExit>> {
        reap_ending(self)
    }

    /// Waits until the child has ended and reaps it, or until `deadline` (`Ok(None)`).
    pub(crate) fn wait_deadline(&self, deadline: Option<Instant>) -> io::Result<Option<RawExit>> {
        wait_deadline(self, deadline)
    }

    /// SIGKILLs the child and its group, then reaps it: the end of a child nobody waits for.
    pub(crate) fn kill_and_reap(&self) -> RawExit {
        kill_and_reap(self)
    }

    /// Reaps the child if it has ended, else SIGKILLs it (and its group) and reaps it.
    pub(crate) fn end(&self) -> RawExit {
        end(self)
    }
}

impl Wait for ChildHandle {
    fn try_reap(&self) -> io::Result<Option<RawExit>> {
        ChildHandle::try_reap(self)
    }

    fn reap(&self) -> io::Result<RawExit> {
        // A blocking waitpid returns only once there is a status (or ECHILD: `Unknown`).
        Ok(super::waitpid(self.pid, true)?.unwrap_or(RawExit::Unknown))
    }

    fn wait_exit_fd(&self, timeout: Option<Duration>) -> Option<io::Result<()>> {
        let fd = self.exit_fd()?;
        Some(super::poll_readable(&[fd], timeout).map(drop))
    }

    fn has_exit_fd(&self) -> bool {
        self.pidfd.is_some()
    }
}

impl Kill for ChildHandle {
    fn signal_group(&self, sig: i32) -> io::Result<()> {
        ChildHandle::signal_group(self, sig)
    }
}

/// A pidfd for `pid`, unless the kernel has none (remembered after the first `ENOSYS`).
fn open_pidfd(pid: i32) -> Option<OwnedFd> {
    static UNSUPPORTED: AtomicBool = AtomicBool::new(false);
    if UNSUPPORTED.load(Ordering::Relaxed) {
        return None;
    }
    match super::pidfd_open(pid) {
        Ok(fd) => Some(fd),
        Err(e) => {
            let nosys = e.raw_os_error() == Some(rustix::io::Errno::NOSYS.raw_os_error());
            if nosys || e.kind() == io::ErrorKind::Unsupported {
                UNSUPPORTED.store(true, Ordering::Relaxed);
            }
            None
        }
    }
}

/// See [`ChildHandle::reap_ending`].
fn reap_ending(c: &impl Wait) -> io::Result<Option<RawExit>> {
    if c.has_exit_fd() {
        c.try_reap()
    } else {
        c.reap().map(Some)
    }
}

/// See [`ChildHandle::wait_deadline`]. Without a deadline, blocks in the reap (one `waitid`
/// that returns at the exit, where a look, a sleep on the exit fd and a look again took three
/// system calls). With one, sleeps on the exit fd, or without an exit fd looks every
/// millisecond.
fn wait_deadline(c: &impl Wait, deadline: Option<Instant>) -> io::Result<Option<RawExit>> {
    if deadline.is_none() {
        return c.reap().map(Some);
    }
    loop {
        if let Ok(Some(raw)) = c.try_reap() {
            return Ok(Some(raw));
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(None);
        }
        let timeout = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        match c.wait_exit_fd(timeout) {
            Some(waited) => waited?,
            None if timeout.is_none() => return c.reap().map(Some),
            None => std::thread::sleep(Duration::from_millis(1)),
        }
    }
}

/// See [`ChildHandle::kill_and_reap`]. SIGKILL cannot be caught: the reap returns as soon as
/// the kernel has torn the child down.
fn kill_and_reap<C: Wait + Kill>(c: &C) -> RawExit {
    let _ = c.signal_group(super::SIGKILL);
    c.reap().unwrap_or(RawExit::Unknown)
}

/// See [`ChildHandle::end`]: a child that has ended (or was reaped elsewhere) is not
/// signalled.
fn end<C: Wait + Kill>(c: &C) -> RawExit {
    if let Ok(Some(raw)) = c.try_reap() {
        return raw;
    }
    kill_and_reap(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::{Cell, RefCell};

    /// A child that runs for `runs_for` looks, then ends with `exit`; it records every call.
    struct Fake {
        runs_for: Cell<u32>,
        exit: Cell<RawExit>,
        exit_fd: bool,
        calls: RefCell<Vec<&'static str>>,
    }

    impl Fake {
        fn new(runs_for: u32, exit_fd: bool) -> Fake {
            Fake {
                runs_for: Cell::new(runs_for),
                exit: Cell::new(RawExit::Code(3)),
                exit_fd,
                calls: RefCell::new(Vec::new()),
            }
        }
        fn calls(&self) -> Vec<&'static str> {
            self.calls.borrow().clone()
        }
    }

    impl Wait for Fake {
        fn try_reap(&self) -> io::Result<Option<RawExit>> {
            self.calls.borrow_mut().push("try_reap");
            Ok((self.runs_for.get() == 0).then_some(self.exit.get()))
        }
        fn reap(&self) -> io::Result<RawExit> {
            self.calls.borrow_mut().push("reap");
            self.runs_for.set(0);
            Ok(self.exit.get())
        }
        fn wait_exit_fd(&self, _timeout: Option<Duration>) -> Option<io::Result<()>> {
            self.exit_fd.then(|| {
                self.calls.borrow_mut().push("wait_exit_fd");
                self.runs_for.set(self.runs_for.get().saturating_sub(1));
                Ok(())
            })
        }
        fn has_exit_fd(&self) -> bool {
            self.exit_fd
        }
    }

    impl Kill for Fake {
        fn signal_group(&self, sig: i32) -> io::Result<()> {
            assert_eq!(sig, crate::sys::SIGKILL);
            self.calls.borrow_mut().push("kill");
            self.runs_for.set(0);
            self.exit.set(RawExit::Signal(sig));
            Ok(())
        }
    }

    #[test]
    fn an_ended_child_is_reaped_and_never_signalled() {
        let c = Fake::new(0, true);
        assert_eq!(end(&c), RawExit::Code(3));
        assert_eq!(c.calls(), ["try_reap"]);
    }

    #[test]
    fn a_running_child_is_killed_with_its_group_before_the_reap() {
        let c = Fake::new(5, true);
        assert_eq!(end(&c), RawExit::Signal(9));
        assert_eq!(c.calls(), ["try_reap", "kill", "reap"]);
    }

    #[test]
    fn an_ending_child_blocks_the_reap_only_without_an_exit_fd() {
        let with_fd = Fake::new(1, true);
        assert_eq!(
            reap_ending(&with_fd).unwrap(),
            None,
            "not yet: its fd fires again"
        );
        assert_eq!(with_fd.calls(), ["try_reap"]);
        let without = Fake::new(1, false);
        assert_eq!(reap_ending(&without).unwrap(), Some(RawExit::Code(3)));
        assert_eq!(without.calls(), ["reap"]);
    }

    #[test]
    fn waiting_blocks_in_the_reap_or_until_a_deadline_sleeps_on_the_exit_fd() {
        for exit_fd in [true, false] {
            let c = Fake::new(2, exit_fd);
            assert_eq!(wait_deadline(&c, None).unwrap(), Some(RawExit::Code(3)));
            assert_eq!(c.calls(), ["reap"], "no deadline, exit fd {exit_fd}");
        }
        let with_fd = Fake::new(2, true);
        let deadline = Some(Instant::now() + Duration::from_secs(30));
        assert_eq!(
            wait_deadline(&with_fd, deadline).unwrap(),
            Some(RawExit::Code(3))
        );
        let calls = [
            "try_reap",
            "wait_exit_fd",
            "try_reap",
            "wait_exit_fd",
            "try_reap",
        ];
        assert_eq!(with_fd.calls(), calls);
    }

    #[test]
    fn waiting_past_the_deadline_leaves_the_child_running() {
        let deadline = Instant::now() + Duration::from_millis(20);
        let without = Fake::new(u32::MAX, false);
        assert_eq!(wait_deadline(&without, Some(deadline)).unwrap(), None);
        assert!(
            !without.calls().contains(&"reap"),
            "never blocks with a deadline"
        );
        assert!(Instant::now() >= deadline);
        let passed = Fake::new(u32::MAX, true);
        assert_eq!(wait_deadline(&passed, Some(Instant::now())).unwrap(), None);
        assert_eq!(passed.calls(), ["try_reap"], "one last look, no wait");
    }

    #[test]
    #[cfg_attr(miri, ignore = "processes: not under Miri")]
    fn a_real_child_is_killed_reaped_and_its_foreign_reap_reported_as_unknown() {
        let sleeper = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let c = ChildHandle::open(sleeper.id() as i32);
        assert_eq!(c.try_reap().unwrap(), None);
        assert_eq!(c.end(), RawExit::Signal(crate::sys::SIGKILL));
        drop(sleeper);

        // Reaped by someone else (std's `wait` here): the status is lost, not an error.
        let mut other = std::process::Command::new("true").spawn().unwrap();
        let c = ChildHandle::new(other.id() as i32, None);
        other.wait().unwrap();
        assert_eq!(c.try_reap().unwrap(), Some(RawExit::Unknown));
        assert_eq!(c.end(), RawExit::Unknown);
        let deadline = Some(Instant::now() + Duration::from_secs(30));
        assert_eq!(c.wait_deadline(deadline).unwrap(), Some(RawExit::Unknown));
    }
}
