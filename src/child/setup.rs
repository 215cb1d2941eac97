//! What a child applies to itself before it serves: its limits and the name it shows.

use std::ffi::OsString;
use std::sync::OnceLock;

use crate::sys::child::{self, ChildToken};

/// The variable carrying a child's memory limit (bytes of address space).
const MEMORY_LIMIT_ENV: &str = "MPROC_MEMORY_LIMIT";
/// The variable carrying a child's process limit (`RLIMIT_NPROC`).
const PROCESS_LIMIT_ENV: &str = "MPROC_PROCESS_LIMIT";
/// The variable carrying a child's name (`Process::name`, `current_process().name()`).
pub(crate) const NAME_ENV: &str = "MPROC_PROCESS_NAME";

/// Limits a child sets on itself before it serves (`PoolBuilder::memory_limit`,
/// `max_processes`...). They travel to the child in its environment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Limits {
    /// Bytes of address space (`RLIMIT_AS`).
    pub(crate) memory: Option<u64>,
    /// Processes of the user (`RLIMIT_NPROC`).
    pub(crate) processes: Option<u64>,
}

impl Limits {
    /// The variables that carry these limits to a child.
    pub(crate) fn to_env(self) -> Vec<(OsString, OsString)> {
        let mut env = Vec::new();
        if let Some(bytes) = self.memory {
            env.push((MEMORY_LIMIT_ENV.into(), bytes.to_string().into()));
        }
        if let Some(n) = self.processes {
            env.push((PROCESS_LIMIT_ENV.into(), n.to_string().into()));
        }
        env
    }

    /// The limits a child was given.
    pub(crate) fn read(token: &ChildToken) -> Limits {
        let read = |key| child::getenv(token, key).and_then(|v| v.to_str()?.parse().ok());
        Limits {
            memory: read(MEMORY_LIMIT_ENV),
            processes: read(PROCESS_LIMIT_ENV),
        }
    }

    /// Sets them on this process.
    pub(crate) fn apply(self) -> std::io::Result<()> {
        if let Some(bytes) = self.memory {
            crate::sys::set_memory_limit(bytes)?;
        }
        if let Some(n) = self.processes {
            crate::sys::set_process_limit(n)?;
        }
        Ok(())
    }
}

/// The program's name: the last part of its `argv[0]` (which mproc's children keep), else of
/// the file it runs. Found once per process (the fork server's workers inherit it found).
pub(crate) fn program_name() -> &'static str {
    static NAME: OnceLock<String> = OnceLock::new();
    NAME.get_or_init(|| {
        let path = std::env::args_os()
            .next()
            .map(std::path::PathBuf::from)
            .or_else(|| std::fs::read_link(crate::sys::exe_path()).ok());
        path.as_deref()
            .and_then(std::path::Path::file_name)
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "mproc".to_string())
    })
}

/// What this process shows in ps and top (`comm`) when a child starts serving.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Shown {
    /// The program's name: a child of the fork server inherits the server's.
    Program,
    /// Something else (`exe` after an exec of `/proc/self/exe`, a thread's name after `fork`).
    #[default]
    Other,
}

/// Shows the name [`shown_name`] gives a child called `name` (`PR_SET_NAME`), unless it shows
/// it already: the fork server's workers without a name of their own keep the program's,
/// which they inherit. A failure costs only the name.
pub(crate) fn show_name(now: Shown, name: Option<&str>) {
    if now == Shown::Program && given_name(name).is_none() {
        return;
    }
    let _ = crate::sys::set_process_name(&shown_name(program_name(), name));
}

/// The name a child was given, if it is one to show: not a default one (`Process-N`,
/// `PoolWorker`).
fn given_name(name: Option<&str>) -> Option<&str> {
    name.filter(|n| {
        let default = n
            .strip_prefix("Process-")
            .is_some_and(|k| !k.is_empty() && k.bytes().all(|b| b.is_ascii_digit()));
        !n.is_empty() && *n != "PoolWorker" && !default
    })
}

/// The name a child shows in ps and top (15 bytes at most): the program's, then the child's
/// own name after a colon if it was given one (`myprog:w1`), the program's cut short to keep
/// it. Pool workers and children with a default name (`Process-N`) show the program's alone.
pub(crate) fn shown_name(program: &str, name: Option<&str>) -> String {
    const MAX: usize = 15;
    let given = given_name(name);
    let cut = |s: &str, max: usize| {
        let mut end = s.len().min(max);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s[..end].to_string()
    };
    match given {
        None => cut(program, MAX),
        Some(n) if n.len() + 2 > MAX => cut(n, MAX),
        Some(n) => format!("{}:{n}", cut(program, MAX - 1 - n.len())),
    }
}

#[cfg(test)]
mod name_tests {
    use super::shown_name;

    #[test]
    fn shown_names_fit_in_fifteen_bytes_and_keep_the_given_name() {
        assert_eq!(shown_name("myprog", None), "myprog");
        assert_eq!(shown_name("myprog", Some("PoolWorker")), "myprog");
        assert_eq!(shown_name("myprog", Some("Process-12")), "myprog");
        assert_eq!(shown_name("myprog", Some("w1")), "myprog:w1");
        assert_eq!(
            shown_name("pool_api-0123abcdef", Some("w1")),
            "pool_api-012:w1"
        );
        assert_eq!(shown_name("pool_api-0123abcdef", None), "pool_api-0123ab");
        assert_eq!(shown_name("p", Some("a-very-long-name")), "a-very-long-nam");
        assert_eq!(shown_name("prögrammé-long", Some("w")), "prögrammé-l:w");
        assert!(shown_name("ééééééééé", None).len() <= 15);
    }
}
