//! File descriptors inside serde values: how a `Queue`, a `Lock` or a `Connection` inside an
//! argument reaches another process.
//!
//! A handle's `Serialize` does not write its fd number (meaningless elsewhere): it hands a
//! duplicate of the fd to the *collector* of the message being encoded and writes the fd's
//! index in that message. The message then travels with its fds attached (`SCM_RIGHTS`), and
//! the receiver decodes it with those fds *supplied*: a handle's `Deserialize` takes the fd at
//! its index. Collector and supply are per thread and exist only while mproc encodes or
//! decodes a message that can carry fds (a task's argument, a pipe message); anywhere else —
//! JSON, a queue's shared ring — a handle refuses to serialize with a clear error.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use serde::de::Error as _;
use serde::ser::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Most handles (fds) one message may carry.
pub(crate) const MAX_FDS: usize = crate::sys::MAX_FDS_PER_MSG;

const NO_COLLECTOR: &str = "mproc handles (Queue, Lock, Value, Connection, ...) can travel only inside the argument of a Process or pool task, or through a Pipe";

thread_local! {
    static OUT: RefCell<Option<Vec<OwnedFd>>> = const { RefCell::new(None) };
    static IN: RefCell<Option<Vec<Option<OwnedFd>>>> = const { RefCell::new(None) };
}

/// The fds a message carries, shared by the copies of a job that may be sent again (retries).
pub(crate) type Fds = Option<Arc<[OwnedFd]>>;

/// Wraps collected fds: `None` when there are none (the common case costs nothing).
pub(crate) fn shared(fds: Vec<OwnedFd>) -> Fds {
    (!fds.is_empty()).then(|| fds.into())
}

/// Writes one frame and the fds it owns: first an `Fds` frame carrying them, then the frame.
pub(crate) fn write_frame(sock: &UnixStream, frame: &[u8], fds: &[OwnedFd]) -> io::Result<()> {
    let mut w = sock;
    if !fds.is_empty() {
        let n = u16::try_from(fds.len()).map_err(|_| io::Error::other("too many fds"))?;
        let head = super::msg::fds(n);
        let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(AsFd::as_fd).collect();
        let sent = crate::sys::send_with_fds(sock.as_fd(), &head, &borrowed)?;
        // The fds went with the first byte; a short send only leaves plain bytes to write.
        w.write_all(&head[sent..])?;
    }
    w.write_all(frame)
}

/// A socket read through `recvmsg`, keeping the fds that arrive, in order, for the `Fds` frames
/// that announce them.
pub(crate) struct FdRead<'a> {
    pub(crate) sock: BorrowedFd<'a>,
    pub(crate) fifo: &'a mut VecDeque<OwnedFd>,
    /// Never block: `WouldBlock` when nothing is waiting (to drain a socket until it is empty).
    pub(crate) nowait: bool,
}

impl Read for FdRead<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let (n, fds) = if self.nowait {
            crate::sys::recv_with_fds_nowait(self.sock, buf)?
        } else {
            crate::sys::recv_with_fds(self.sock, buf)?
        };
        keep(self.fifo, fds)?;
        Ok(n)
    }
}

/// Most fds that may wait for their message: the reader reads at most one message's worth
/// ahead of the frame being sorted. More means a peer sends fds no message announces.
const MAX_WAITING_FDS: usize = 2 * MAX_FDS;

/// Keeps fds that arrived, in order, or refuses them (closing them) past [`MAX_WAITING_FDS`]:
/// a hostile peer must not fill this process's fd table.
fn keep(fifo: &mut VecDeque<OwnedFd>, fds: Vec<OwnedFd>) -> io::Result<()> {
    if fifo.len() + fds.len() > MAX_WAITING_FDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "fds were sent that no message announced",
        ));
    }
    fifo.extend(fds);
    Ok(())
}

/// Fds a worker sent, kept for the message that owns them: a large result's file.
#[derive(Default)]
pub(crate) struct Received {
    /// As they arrived (fill it through [`FdRead`]).
    pub(crate) fifo: VecDeque<OwnedFd>,
    /// Those the last `Fds` frame announced, for the message after it.
    announced: Vec<OwnedFd>,
}

impl Received {
    /// True for an `Fds` frame: its fds are kept for the next message.
    pub(crate) fn announce(&mut self, frame: &[u8]) -> Result<bool, super::msg::BadMessage> {
        let Some(n) = super::msg::parse_fds(frame) else {
            return Ok(false);
        };
        self.announced = take(&mut self.fifo, n)
            .ok_or(super::msg::BadMessage("fds were announced but not sent"))?;
        Ok(true)
    }

    /// The file sent with the message at hand, if any. Only a large payload owns an fd: any
    /// other fds announced for it are closed here.
    pub(crate) fn file(&mut self) -> Result<Option<OwnedFd>, super::msg::BadMessage> {
        if self.fifo.len() > MAX_FDS {
            return Err(super::msg::BadMessage(
                "fds were sent that no message announced",
            ));
        }
        Ok(std::mem::take(&mut self.announced).pop())
    }
}

/// Takes the `n` fds an `Fds` frame announced, or `None` if fewer arrived (a protocol error).
pub(crate) fn take(fifo: &mut VecDeque<OwnedFd>, n: u16) -> Option<Vec<OwnedFd>> {
    let n = usize::from(n);
    (fifo.len() >= n).then(|| fifo.drain(..n).collect())
}

/// Runs `encode` with a collector installed and returns its result with the fds handles gave.
pub(crate) fn collecting<R>(encode: impl FnOnce() -> R) -> (R, Vec<OwnedFd>) {
    let saved = OUT.with(|o| o.replace(Some(Vec::new())));
    let r = encode();
    let fds = OUT.with(|o| o.replace(saved)).unwrap_or_default();
    (r, fds)
}

/// Runs `decode` with `fds` supplied to the handles inside. Fds no handle took are closed.
pub(crate) fn supplying<R>(fds: Vec<OwnedFd>, decode: impl FnOnce() -> R) -> R {
    let saved = IN.with(|i| i.replace(Some(fds.into_iter().map(Some).collect())));
    let r = decode();
    IN.with(|i| i.replace(saved));
    r
}

/// Serializes `fd` as an index into the message's fds (for handles' `Serialize`).
pub(crate) fn serialize_fd<S: Serializer>(fd: BorrowedFd<'_>, s: S) -> Result<S::Ok, S::Error> {
    let index = OUT.with(|o| -> Result<u32, String> {
        let mut o = o.borrow_mut();
        let fds = o.as_mut().ok_or_else(|| NO_COLLECTOR.to_string())?;
        if fds.len() >= MAX_FDS {
            return Err(format!(
                "one message can carry at most {MAX_FDS} mproc handles"
            ));
        }
        let dup = fd
            .try_clone_to_owned()
            .map_err(|e| format!("cannot duplicate a handle's fd: {e}"))?;
        fds.push(dup);
        Ok((fds.len() - 1) as u32)
    });
    index.map_err(S::Error::custom)?.serialize(s)
}

/// Takes the fd a handle serialized with [`serialize_fd`] (for handles' `Deserialize`).
pub(crate) fn deserialize_fd<'de, D: Deserializer<'de>>(d: D) -> Result<OwnedFd, D::Error> {
    let index = u32::deserialize(d)? as usize;
    IN.with(|i| {
        let mut i = i.borrow_mut();
        let fds = i.as_mut().ok_or_else(|| D::Error::custom(NO_COLLECTOR))?;
        fds.get_mut(index)
            .and_then(Option::take)
            .ok_or_else(|| D::Error::custom("a handle's fd is missing from the message"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::codec;
    use std::os::fd::{AsFd, AsRawFd};

    #[derive(Debug)]
    struct Handle(OwnedFd);
    impl Serialize for Handle {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            serialize_fd(self.0.as_fd(), s)
        }
    }
    impl<'de> Deserialize<'de> for Handle {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            deserialize_fd(d).map(Handle)
        }
    }

    #[test]
    fn handles_travel_with_their_fds() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let h = (7u8, Handle(a.into()));
        let (bytes, fds) = collecting(|| codec::encode(&h));
        let bytes = bytes.unwrap();
        assert_eq!(fds.len(), 1);
        assert_ne!(fds[0].as_raw_fd(), h.1.0.as_raw_fd(), "a duplicate travels");
        let back: (u8, Handle) = supplying(fds, || codec::decode(&bytes)).unwrap();
        assert_eq!(back.0, 7);
    }

    #[test]
    fn outside_a_message_handles_refuse_clearly() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let err = codec::encode(&Handle(a.into())).unwrap_err().to_string();
        assert!(err.contains("can travel only"), "{err}");
        let bytes = collecting(|| codec::encode(&Handle(_b.into()))).0.unwrap();
        let err = supplying(Vec::new(), || codec::decode::<Handle>(&bytes)).unwrap_err();
        assert!(err.to_string().contains("missing"), "{err}");
    }
}
