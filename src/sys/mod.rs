//! The operating-system layer: every `unsafe` block and every `libc` call of mproc lives here.
//!
//! Everything above this module is safe Rust working with [`OwnedFd`](std::os::fd::OwnedFd),
//! pids and `io::Result`. Platform differences are confined to the files below, chosen by `cfg`:
//! `unix.rs` holds what POSIX gives every Unix, `linux.rs` what only Linux has (pidfd, `clone`,
//! `PR_SET_PDEATHSIG`), `other.rs` the fallbacks a macOS port would start from.

pub(crate) mod arena;
pub(crate) mod child;
pub(crate) mod ctor;
pub(crate) mod endpoints;
pub(crate) mod fnptr;
pub(crate) mod fork_local;
pub(crate) mod frames;
pub(crate) mod futex;
pub(crate) mod identity;
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

pub(crate) use unix::*;
