//! Everything that runs inside a child: a pool's worker, a `Process`, the fork server.
//!
//! A process started by mproc finds its marker ([`MARKER_ENV`]) in the environment and never
//! reaches `main`: the load-time entry ([`entry`], registered with `sys::ctor::at_load!`)
//! takes it over and serves over the socket the marker names — tasks ([`serve`]), or requests
//! for workers ([`forkserver`], the fork server's serving half). Workers created by `fork`
//! (or by the fork server) enter [`serve::enter_forked`] directly. [`setup`] is what a child
//! applies to itself first: its limits and its name, read from variables this module names,
//! so the layers above hand it typed values ([`setup::Limits`]).
//!
//! The layers above start children (`process`, `pool`); the layers below (`task`, `wire`,
//! `sys`) are what a child runs with. The MPI pool's serving ranks register their own
//! load-time entry (`mpi`), not through here.

pub(crate) mod entry;
pub(crate) mod forkserver;
pub(crate) mod serve;
pub(crate) mod setup;

pub(crate) use crate::task::panic::{ensure_panic_hook, in_worker};
// The marker and mproc's exit codes belong to the child-process layer of `sys` (the fork
// paths there use them too); named here for the code above.
pub(crate) use crate::sys::child::{
    EXIT_BAD_MARKER, EXIT_INTERNAL, EXIT_PROTOCOL, EXIT_REFUSED, EXIT_TASK_FAILED, MARKER_ENV,
};
pub(crate) use entry::{mark_consumed, marker_unconsumed};
pub(crate) use serve::{ChildSetup, enter_forked};
