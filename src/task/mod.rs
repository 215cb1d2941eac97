//! The protocol of one task, shared by both sides of the boundary: how a chunk of items runs
//! in a worker and how its per-item outcomes come back, whole or after the worker died.
//!
//! - [`progress`]: the control block a worker and its parent share, in which the worker
//!   publishes how far through its current chunk it is (which item runs, since when, how many
//!   results are committed to its arena).
//! - [`chunk`]: running a chunk on the worker side (each item's result encoded into the arena
//!   as it finishes) and decoding its items on the parent side.
//!
//! - [`fnref`]: the function reference: a task's function as it travels, and the entries a
//!   worker runs it through (one typed call, a chunk, a chunk with state).
//! - [`mailbox`]: a small task and its answer handed over in the control block's first page
//!   (the `apply` fast path), with a doorbell on the socket only for a side that sleeps.
//! - [`panic`]: a task's panic as data (the worker's panic hook, the report, the typed call).
//! - [`reply`]: a worker's messages to its parent, sorted once for `Pool` and `Process`.
//! - [`run`]: encoding a `Run` frame, the one function every entry point builds a task with.
//! - [`spin`]: spin, then park: how the two ends of a hand-off wait for each other.
//! - [`state`]: a worker's own state, built once by the first task that needs it.
//!
//! A chunk is a transport detail: every item has its own outcome. The pool's `fate` module
//! is the one place that turns a worker's death or timeout into outcomes for those items.

pub(crate) mod chunk;
pub(crate) mod fnref;
pub(crate) mod mailbox;
pub(crate) mod panic;
pub(crate) mod progress;
pub(crate) mod reply;
pub(crate) mod run;
pub(crate) mod spin;
pub(crate) mod state;
