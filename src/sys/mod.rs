//! The operating-system layer: every `unsafe` block and every system call of mproc lives here
//! (the crate root denies `unsafe_code` everywhere else).
//!
//! Everything above this module is safe Rust working with [`OwnedFd`](std::os::fd::OwnedFd),
//! pids, [`ChildHandle`]s and `io::Result`. Platform differences are confined to the files
//! below, chosen by `cfg`: `unix.rs` holds what POSIX gives every Unix, `linux.rs` what only
//! Linux has (pidfd, `clone`, `PR_SET_PDEATHSIG`), `other.rs` the fallbacks a macOS port would
//! start from.
//!
//! System calls go through rustix wherever it has them safely (sockets and `SCM_RIGHTS`,
//! `poll`, `waitid`/`waitpid`, signals by pid, group and pidfd, `prctl`, futexes, rlimits,
//! memfds and seals, `fcntl`, `ftruncate`, `fstat`, `fallocate`, `pread`, the clock). libc
//! stays where rustix has nothing safe: `fork` (rustix's bypasses libc's `atfork` handlers)
//! and `clone(CLONE_PARENT)`, `set_robust_list`, signal dispositions and masks, `_exit`,
//! `pthread_atfork`, the environment of a fresh child (without std's lock), `dl_iterate_phdr`
//! and `getauxval(AT_BASE)`, `dup2` onto a number and a `write` to a raw fd from the panic
//! hook, `close` of an inherited fd, and `mmap`/`mremap`/`munmap` (unsafe in rustix too; all
//! in [`mapping`]).

pub(crate) mod arena;
pub(crate) mod child;
pub(crate) mod child_handle;
pub(crate) mod ctor;
pub(crate) mod endpoints;
pub(crate) mod fnptr;
pub(crate) mod fork_local;
pub(crate) mod frames;
pub(crate) mod futex;
pub(crate) mod identity;
pub(crate) mod mapping;
pub(crate) mod robust;
pub(crate) mod shm;
#[cfg(target_os = "linux")]
pub(crate) mod stack_guard;
pub(crate) mod unix;

#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
pub(crate) use linux::*;

#[cfg(not(target_os = "linux"))]
mod other;
#[cfg(not(target_os = "linux"))]
pub(crate) use other::*;

pub(crate) use child_handle::ChildHandle;
pub(crate) use unix::*;
