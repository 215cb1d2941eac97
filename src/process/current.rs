//! Who am I: Python's `current_process()`, `parent_process()` and `active_children()`.

use std::collections::BTreeMap;

use crate::sys;
use crate::sys::fork_local::ForkLocal;

/// Environment variable giving a child its name (set by the parent at launch).
pub(crate) use crate::child::setup::NAME_ENV;
/// Environment variable giving a child its parent's name.
pub(crate) const PARENT_NAME_ENV: &str = "MPROC_PARENT_NAME";

/// A process's pid and name, as Python's `current_process()` describes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessInfo {
    pid: u32,
    name: String,
}

impl ProcessInfo {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }
    /// The name: `"MainProcess"` for a program, the [`Process`](crate::Process)'s name for a
    /// child (`"Process-N"` unless set with [`Builder::name`](crate::Builder::name)),
    /// `"PoolWorker"` for a pool worker.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// This process: Python's `multiprocessing.current_process()`.
///
/// # Examples
/// ```
/// use mproc::{current_process, Process};
///
/// fn whoami(_: ()) -> String {
///     current_process().name().to_string()
/// }
///
/// assert_eq!(current_process().name(), "MainProcess");
/// let mut p = Process::builder().name("w1").spawn(whoami, ())?;
/// assert_eq!(p.join()?, "w1");
/// # Ok::<(), mproc::Error>(())
/// ```
pub fn current_process() -> ProcessInfo {
    ProcessInfo {
        pid: std::process::id(),
        name: own_name(),
    }
}

/// This process's name, as [`current_process`] gives it (without asking for the pid).
pub(crate) fn own_name() -> String {
    own_env(NAME_ENV).unwrap_or_else(|| "MainProcess".to_string())
}

/// The process that started this one, if this is an mproc child: Python's
/// `multiprocessing.parent_process()` (`None` in a program started otherwise).
///
/// # Examples
/// ```
/// use mproc::{parent_process, Process};
///
/// fn parent(_: ()) -> Option<u32> {
///     parent_process().map(|p| p.pid())
/// }
///
/// assert!(parent_process().is_none());
/// let mut p = Process::spawn(parent, ())?;
/// assert_eq!(p.join()?, Some(std::process::id()));
/// # Ok::<(), mproc::Error>(())
/// ```
pub fn parent_process() -> Option<ProcessInfo> {
    let name = own_env(PARENT_NAME_ENV)?;
    Some(ProcessInfo {
        pid: sys::getppid() as u32,
        name,
    })
}

/// The children started with [`Process::spawn`](crate::Process::spawn) (or its builder) whose
/// handles are alive and which are still running: Python's `active_children()`. Pool workers
/// are not listed (the pool owns them).
///
/// # Examples
/// ```
/// use mproc::{active_children, Process};
///
/// fn nap(ms: u64) {
///     std::thread::sleep(std::time::Duration::from_millis(ms));
/// }
///
/// let mut p = Process::builder().name("napper").spawn(nap, 100)?;
/// assert!(active_children().iter().any(|c| c.name() == "napper"));
/// p.join()?;
/// assert!(active_children().iter().all(|c| c.name() != "napper"));
/// # Ok::<(), mproc::Error>(())
/// ```
pub fn active_children() -> Vec<ProcessInfo> {
    let children = CHILDREN.get().lock().map(|c| c.clone()).unwrap_or_default();
    children
        .into_iter()
        .filter(|(pid, _)| sys::is_running(*pid as i32))
        .map(|(pid, name)| ProcessInfo { pid, name })
        .collect()
}

/// Children with a live `Process` handle, by pid. Entries leave when the handle is dropped,
/// which reaps the child: a pid listed here cannot have been recycled.
static CHILDREN: ForkLocal<BTreeMap<u32, String>> = ForkLocal::new();

pub(crate) fn register(pid: u32, name: &str) {
    if let Ok(mut c) = CHILDREN.get().lock() {
        c.insert(pid, name.to_string());
    }
}

pub(crate) fn unregister(pid: u32) {
    if let Ok(mut c) = CHILDREN.get().lock() {
        c.remove(&pid);
    }
}

/// A variable set for this process by mproc, not one inherited by a program that is not an
/// mproc child (a worker may run other programs, which inherit its environment).
fn own_env(key: &str) -> Option<String> {
    if !crate::child::in_worker() {
        return None;
    }
    std::env::var(key).ok()
}
