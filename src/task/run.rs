//! Encoding a `Run` frame: the one function every entry point (a `Process`, a pool's chunk or
//! initializer, the MPI pool) builds its task with.

use std::os::fd::OwnedFd;

use serde::Serialize;

use super::fnref::FnRef;
use crate::sys::identity;
use crate::wire::codec::{self, Op, Role};
use crate::wire::{fds, msg};

/// Where a large argument may go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Large {
    /// Past `msg::SPILL_LIMIT`, into an anonymous file sent with the frame (local workers).
    Spill,
    /// Always inline (a frame that crosses MPI ranks, which cannot carry fds).
    #[cfg_attr(not(feature = "mpi"), allow(dead_code))]
    Inline,
}

/// Encodes the `Run` frame of a call of `f` on `arg` (`flags`: `msg::FLAG_*`): this build's
/// identity, the function's offsets, then the argument. Returns the frame and the fds to send
/// with it (those of handles inside the argument, then a spilled argument's file), or why
/// `arg` cannot be encoded: the codec's message, naming `A` in its `role`.
pub(crate) fn encode<A: ?Sized>(
    flags: u8,
    f: FnRef,
    arg: &(impl Serialize + ?Sized),
    role: Role,
    large: Large,
) -> Result<(Vec<u8>, Vec<OwnedFd>), String> {
    let mut run = msg::begin_run(flags, identity::own(), f.tramp, f.func);
    let fds = match large {
        Large::Spill => msg::encode_arg(&mut run, arg),
        Large::Inline => {
            let (encoded, fds) = fds::collecting(|| codec::encode_into(arg, &mut run.buf));
            encoded.map(|()| fds)
        }
    }
    .map_err(|e| codec::failure::<A>(Op::Encode, role, &e))?;
    Ok((run.finish(), fds))
}
