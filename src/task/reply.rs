//! A worker's messages to its parent, sorted: its hello, the answer to its latest task, or
//! its last words. One classification for the pool's supervisor, the borrowed workers of
//! `apply` and a `Process` alike.

use std::os::fd::OwnedFd;

use crate::error::{Error, RemotePanic};
use crate::sys::{self, identity};
use crate::wire::codec;
use crate::wire::fds::Received;
use crate::wire::msg::{self, FromWorker};

/// A worker's answer to a task.
#[derive(Debug)]
pub(crate) enum Answer {
    /// The body of its `Done` frame: the message tag, then the payload.
    Frame(Vec<u8>),
    /// A payload too large for the socket, mapped from the anonymous file the worker wrote it
    /// to (see `msg::done_spilled`): read in place, never copied into a buffer first.
    Mapped(crate::sys::shm::Payload),
    /// The payload alone, as another MPI rank sent it.
    #[cfg(feature = "mpi")]
    Payload(Vec<u8>),
}

impl Answer {
    /// The payload: what follows the `Done` tag.
    pub(crate) fn payload(&self) -> &[u8] {
        match self {
            Answer::Frame(frame) => frame.get(1..).unwrap_or_default(),
            Answer::Mapped(region) => region.bytes(),
            #[cfg(feature = "mpi")]
            Answer::Payload(payload) => payload,
        }
    }
}

/// A worker's message, sorted.
pub(crate) enum Classified {
    /// Its first message: it runs this same executable.
    Hello,
    /// Its first message, from a worker running another build: the error that says so.
    Foreign(Error),
    /// The answer to a task: the frame (for `Done`) or the failure of the whole run.
    Answer(Result<Answer, Error>),
    /// Its last words (`"stack overflow"`): it is dying, and its exit status follows.
    Dying(&'static str),
}

/// Sorts a worker's message: `Ok(None)` for an `Fds` frame, whose fds wait for the next, and
/// for a mailbox's doorbell (the answer is in the mailbox, `task::mailbox`).
pub(crate) fn sort(
    received: &mut Received,
    frame: Vec<u8>,
) -> Result<Option<Classified>, msg::BadMessage> {
    if msg::is_doorbell(&frame, false) {
        return Ok(None);
    }
    if received.announce(&frame)? {
        return Ok(None);
    }
    let file = received.file()?;
    classify(frame, file).map(Some)
}

/// Sorts a worker's message; `file` is the fd sent with the `Fds` frame before it, if any.
pub(crate) fn classify(
    frame: Vec<u8>,
    file: Option<OwnedFd>,
) -> Result<Classified, msg::BadMessage> {
    if let Some(cause) = msg::parse_dying(&frame) {
        return Ok(Classified::Dying(cause));
    }
    let outcome = match msg::parse_from_worker(&frame)? {
        FromWorker::Hello { identity: id, .. } if id == identity::own() => {
            return Ok(Classified::Hello);
        }
        FromWorker::Hello { identity: id, .. } => {
            return Ok(Classified::Foreign(Error::binary_mismatch(
                identity::own(),
                id,
            )));
        }
        FromWorker::Done(_) => Ok(Answer::Frame(frame)),
        FromWorker::Spilled => {
            let file = file.ok_or(msg::BadMessage("a large result came without its file"))?;
            sys::shm::Payload::from_fd(file)
                .map(Answer::Mapped)
                .map_err(|e| Error::protocol(format!("cannot map a large result: {e}")))
        }
        FromWorker::Panic(bytes) => Err(match codec::decode::<RemotePanic>(bytes) {
            Ok(p) => Error::panicked(p),
            Err(e) => Error::protocol(format!("undecodable panic report: {e}")),
        }),
        FromWorker::Failed(text) => Err(Error::codec(text)),
        FromWorker::Refused { identity: id } => Err(Error::binary_mismatch(identity::own(), id)),
    };
    Ok(Classified::Answer(outcome))
}
