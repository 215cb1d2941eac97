//! A worker's messages to the pool, sorted: its hello, or the answer to its latest task.

use std::os::fd::OwnedFd;

use super::result::Answer;
use crate::error::{Error, RemotePanic};
use crate::sys::{self, identity};
use crate::wire::codec;
use crate::wire::fds::Received;
use crate::wire::msg::{self, FromWorker};

/// A worker's message, sorted.
pub(crate) enum Classified {
    /// Its first message; `ours`: it runs this same executable.
    Hello { ours: bool },
    /// The answer to a task: the frame (for `Done`) or the failure of the whole run.
    Answer(Result<Answer, Error>),
    /// Its last words (`"stack overflow"`): it is dying, and its exit status follows.
    Dying(&'static str),
}

/// Sorts a worker's message: `Ok(None)` for an `Fds` frame, whose fds wait for the next.
pub(crate) fn sort(
    received: &mut Received,
    frame: Vec<u8>,
) -> Result<Option<Classified>, msg::BadMessage> {
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
        FromWorker::Hello { identity: id, .. } => {
            return Ok(Classified::Hello {
                ours: id == identity::own(),
            });
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
