//! Python's `multiprocessing.Pipe()`: two connected ends that carry serde values both ways.
//!
//! # Wire format
//! One message is one frame of [`crate::wire::frame`]: an 8-byte little-endian length, then
//! the body. The body starts with a 2-byte little-endian count of the fds (mproc handles) the
//! message carries, then the value in the codec of [`crate::wire::codec`] (or the raw bytes of
//! [`Connection::send_bytes`]). The fds travel with the frame's first byte (`SCM_RIGHTS`); the
//! kernel hands them over no later than that byte, so the receiver keeps every fd that arrives
//! in a FIFO and, when a frame completes, takes the number its header announces from the
//! front. Frames are sent whole under a send lock and read whole under a receive lock, so
//! the FIFO and the byte stream stay in step.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, Read};
use std::marker::PhantomData;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::ser::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};
use crate::sys;
use crate::wire::frame::{self, FrameBuf, FrameError, FrameReader};
use crate::wire::{codec, fds};

/// Bytes of the fd count at the start of every body.
const FD_HEADER: usize = 2;

/// `send_bytes` payloads at least this long are sent from the caller's slice instead of being
/// copied behind the frame header (one more syscall, one less copy).
const COPY_BELOW: usize = 64 << 10;

/// Largest send buffer an end keeps for its next send, in bytes.
const KEEP_SCRATCH: usize = 4 << 20;

/// Largest message a new end accepts, in bytes (16 GiB, the frame layer's default).
const DEFAULT_MAX_MESSAGE: u64 = frame::DEFAULT_LIMIT;

/// Creates a duplex pipe: what one end [`send`](Connection::send)s, the other
/// [`recv`](Connection::recv)s, in both directions. Python's `multiprocessing.Pipe()`.
///
/// Pass one end to a [`Process`](crate::Process) (or a pool task) inside its argument, or send
/// it through another connection; keep the other.
///
/// # Examples
/// ```
/// use mproc::{Connection, Process};
///
/// fn double(conn: Connection<u64>) -> bool {
///     match conn.recv() {
///         Ok(x) => conn.send(&(2 * x)).is_ok(),
///         Err(_) => false,
///     }
/// }
///
/// let (ours, theirs) = mproc::pipe::<u64>()?;
/// let mut child = Process::spawn(double, theirs)?;
/// ours.send(&21)?;
/// assert_eq!(ours.recv_timeout(std::time::Duration::from_secs(30))?, 42);
/// assert!(child.join()?);
/// # Ok::<(), mproc::Error>(())
/// ```
///
/// # Errors
/// [`ErrorKind::Io`](crate::ErrorKind::Io) if the system is out of fds or memory.
pub fn pipe<T: Serialize + DeserializeOwned>() -> Result<(Connection<T>, Connection<T>)> {
    let (a, b) = sys::socket_pair().map_err(|e| Error::io("cannot create a pipe", e))?;
    Ok((Connection::from(a), Connection::from(b)))
}

/// One end of a [`pipe`]: sends and receives values of type `T`.
///
/// Messages may be of any size up to [`max_message_size`](Connection::max_message_size)
/// (16 GiB unless set): a large message streams through the socket in pieces while the other
/// end reads it. mproc handles inside `T` — a `Connection`, a `Value`, a `SharedMemory` —
/// travel with the message, as they do in a `Process` argument.
///
/// # One end, one user at a time
/// As in Python, each end is meant to be used by one process at a time. Sending an end to
/// another process (or through a connection) shares the same socket: if both processes then
/// read from it, each gets some of the messages. Within a process, an end is `Send + Sync`:
/// threads may share it, and each message is sent and received whole, but concurrent callers
/// of the same direction wait for one another (a [`poll`](Connection::poll) or
/// [`recv_timeout`](Connection::recv_timeout) may wait past its timeout while another thread
/// is inside `recv`).
///
/// # Deadlocks
/// `send` returns once the whole message is in the socket's buffer, which holds a few hundred
/// KiB: a larger message waits until the other end reads it. Two processes that both send a
/// large message before receiving wait for each other forever, as with Python's pipes.
///
/// # Drop
/// Dropping an end (or calling [`close`](Connection::close)) closes it in this process; once
/// every process holding it has closed it, the other end's receives fail with
/// [`ErrorKind::Closed`](crate::ErrorKind::Closed) after the messages already sent.
pub struct Connection<T> {
    /// Recorded as a pipe end, so that children forked later let go of their copies.
    sock: sys::endpoints::Endpoint,
    rx: Mutex<Rx>,
    /// Held while a frame is sent, so that frames from several threads never interleave.
    tx: Mutex<()>,
    /// The send side's copy of the message size limit (the receive side's is in `Rx`).
    limit: AtomicU64,
    /// The last send's buffer, reused by the next (kept up to `KEEP_SCRATCH` bytes).
    scratch: Mutex<Vec<u8>>,
    /// The value only crosses through the codec; the end never holds a `T`.
    _t: PhantomData<fn(T) -> T>,
}

/// The receiving state: the frame reader, the fds that arrived, and byte counts that tell
/// whether anything read is still unconsumed.
struct Rx {
    reader: FrameReader,
    fifo: VecDeque<OwnedFd>,
    limit: u64,
    read: u64,
    consumed: u64,
}

impl Rx {
    fn new(limit: u64) -> Rx {
        Rx {
            reader: FrameReader::new(limit),
            fifo: VecDeque::new(),
            limit,
            read: 0,
            consumed: 0,
        }
    }

    /// True when nothing received is waiting in this process (bytes or fds).
    fn idle(&self) -> bool {
        self.read == self.consumed && self.fifo.is_empty()
    }
}

/// The socket read through `recvmsg`: fds go to the FIFO, bytes are counted.
struct Source<'a> {
    sock: BorrowedFd<'a>,
    fifo: &'a mut VecDeque<OwnedFd>,
    read: &'a mut u64,
    nonblocking: bool,
}

impl Read for Source<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let (n, fds) = if self.nonblocking {
            sys::recv_with_fds_nowait(self.sock, buf)?
        } else {
            sys::recv_with_fds(self.sock, buf)?
        };
        self.fifo.extend(fds);
        *self.read += n as u64;
        Ok(n)
    }
}

fn lock<G>(m: &Mutex<G>) -> MutexGuard<'_, G> {
    // The guarded state is updated only by infallible steps between reads; a panic in another
    // thread (in a user's `Deserialize`, say) leaves it consistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<T> From<UnixStream> for Connection<T> {
    /// Adopts a connected stream socket whose other end speaks this module's format (another
    /// `Connection`).
    fn from(sock: UnixStream) -> Connection<T> {
        Connection {
            sock: sys::endpoints::Endpoint::new(sock),
            rx: Mutex::new(Rx::new(DEFAULT_MAX_MESSAGE)),
            tx: Mutex::new(()),
            limit: AtomicU64::new(DEFAULT_MAX_MESSAGE),
            scratch: Mutex::new(Vec::new()),
            _t: PhantomData,
        }
    }
}

impl<T> From<OwnedFd> for Connection<T> {
    /// Adopts a connected stream Unix socket, as [`From<UnixStream>`](#impl-From<UnixStream>-for-Connection<T>).
    fn from(fd: OwnedFd) -> Connection<T> {
        Connection::from(UnixStream::from(fd))
    }
}

impl<T> AsFd for Connection<T> {
    /// The socket, to wait on it with `poll` or an event loop (Python's `fileno()`).
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

impl<T: Serialize + DeserializeOwned> Connection<T> {
    /// Sends `value` to the other end, whole. Python's `Connection.send`.
    ///
    /// Blocks while the socket's buffer is full (see [Deadlocks](Connection#deadlocks)).
    /// `value` is borrowed, so it stays with the caller if sending fails.
    ///
    /// # Examples
    /// ```
    /// let (a, b) = mproc::pipe::<String>()?;
    /// a.send(&"hello".to_string())?;
    /// assert_eq!(b.recv()?, "hello");
    /// # Ok::<(), mproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Closed`](crate::ErrorKind::Closed) when the other end is gone;
    /// [`Codec`](crate::ErrorKind::Codec) when `value` cannot be serialized or its encoding is
    /// over [`max_message_size`](Connection::max_message_size) (nothing is sent then);
    /// [`Io`](crate::ErrorKind::Io) for other socket errors. A message interrupted by an error
    /// is never half-delivered as a value: the other end sees a broken stream instead.
    pub fn send(&self, value: &T) -> Result<()> {
        // Encode into the buffer the previous send used: a large message then costs no new
        // allocation (and no page faults) each time.
        let mut frame = FrameBuf {
            buf: std::mem::take(&mut *lock(&self.scratch)),
        };
        frame.buf.clear();
        frame.buf.extend_from_slice(&[0; frame::HEADER + FD_HEADER]);
        let (encoded, handles) = fds::collecting(|| codec::encode_into(value, &mut frame.buf));
        encoded.map_err(Error::codec)?;
        let count = u16::try_from(handles.len())
            .map_err(|_| Error::codec("too many mproc handles in one message"))?;
        frame.buf[frame::HEADER..frame::HEADER + FD_HEADER].copy_from_slice(&count.to_le_bytes());
        let frame = frame.finish();
        let sent = self.send_frame(&frame, &[], &handles);
        if frame.capacity() <= KEEP_SCRATCH {
            *lock(&self.scratch) = frame;
        }
        sent
    }

    /// Receives the next value, waiting as long as it takes. Python's `Connection.recv`.
    ///
    /// # Errors
    /// [`Closed`](crate::ErrorKind::Closed) when the other end is closed and every message it
    /// sent was received (or it closed in the middle of one);
    /// [`Codec`](crate::ErrorKind::Codec) when the message is not a valid `T` (the message is
    /// consumed; the next one can be received);
    /// [`Protocol`](crate::ErrorKind::Protocol) when the stream is malformed or a message is
    /// over [`max_message_size`](Connection::max_message_size) (refused before any memory is
    /// allocated for it; the connection is unusable after).
    pub fn recv(&self) -> Result<T> {
        let (body, handles) = self.recv_frame(None)?;
        fds::supplying(handles, || codec::decode(&body[FD_HEADER..])).map_err(Error::codec)
    }

    /// [`recv`](Connection::recv), waiting at most `timeout`.
    ///
    /// # Examples
    /// ```
    /// use std::time::Duration;
    /// let (a, b) = mproc::pipe::<u32>()?;
    /// assert!(b.recv_timeout(Duration::from_millis(10)).unwrap_err().is_timeout());
    /// a.send(&7)?;
    /// assert_eq!(b.recv_timeout(Duration::from_secs(30))?, 7);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`TimedOut`](crate::ErrorKind::TimedOut) when no whole message arrived in time: a
    /// message partly received is kept and completed by the next receive. Otherwise as `recv`.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<T> {
        let deadline = Instant::now().checked_add(timeout);
        let (body, handles) = match deadline {
            Some(d) => self.recv_frame(Some(d))?,
            None => self.recv_frame(None)?,
        };
        fds::supplying(handles, || codec::decode(&body[FD_HEADER..])).map_err(Error::codec)
    }
}

impl<T> Connection<T> {
    /// Sends `bytes` as one message. Python's `Connection.send_bytes`.
    ///
    /// The other end receives it with [`recv_bytes`](Connection::recv_bytes).
    ///
    /// # Examples
    /// ```
    /// let (a, b) = mproc::pipe::<()>()?;
    /// a.send_bytes(b"raw")?;
    /// assert_eq!(b.recv_bytes()?, b"raw");
    /// # Ok::<(), mproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`send`](Connection::send).
    pub fn send_bytes(&self, bytes: &[u8]) -> Result<()> {
        let mut frame = FrameBuf::with_capacity(FD_HEADER + bytes.len().min(COPY_BELOW));
        frame.buf.extend_from_slice(&[0; FD_HEADER]);
        if bytes.len() < COPY_BELOW {
            frame.buf.extend_from_slice(bytes);
            return self.send_frame(&frame.finish(), &[], &[]);
        }
        // Write the header's length as if the payload followed, then send the payload from
        // the caller's slice.
        let total = (FD_HEADER + bytes.len()) as u64;
        frame.buf[..frame::HEADER].copy_from_slice(&total.to_le_bytes());
        self.send_frame(&frame.buf, bytes, &[])
    }

    /// Receives the next message as bytes, waiting as long as it takes. Python's
    /// `Connection.recv_bytes`. Handles inside the message, if it was sent by `send`, are
    /// closed.
    ///
    /// # Errors
    /// As [`recv`](Connection::recv), without the codec error.
    pub fn recv_bytes(&self) -> Result<Vec<u8>> {
        let (mut body, _handles) = self.recv_frame(None)?;
        body.drain(..FD_HEADER);
        Ok(body)
    }

    /// [`recv_bytes`](Connection::recv_bytes), waiting at most `timeout`.
    ///
    /// # Errors
    /// As [`recv_timeout`](Connection::recv_timeout).
    pub fn recv_bytes_timeout(&self, timeout: Duration) -> Result<Vec<u8>> {
        let deadline = Instant::now().checked_add(timeout);
        let (mut body, _handles) = self.recv_frame(deadline)?;
        body.drain(..FD_HEADER);
        Ok(body)
    }

    /// Waits at most `timeout` until there is something to receive, and says whether there
    /// is. Python's `Connection.poll(timeout)`; `Duration::ZERO` checks without waiting.
    ///
    /// `true` means the next receive will not wait for the first byte: data has arrived (a
    /// message, or the start of one) or the other end is closed (the receive then reports it).
    ///
    /// # Examples
    /// ```
    /// use std::time::Duration;
    /// let (a, b) = mproc::pipe::<u8>()?;
    /// assert!(!b.poll(Duration::ZERO)?);
    /// a.send(&1)?;
    /// assert!(b.poll(Duration::from_secs(30))?);
    /// drop(a);
    /// assert_eq!(b.recv()?, 1);
    /// assert!(b.poll(Duration::ZERO)?); // closed: the next recv says so at once
    /// # Ok::<(), mproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Io`](crate::ErrorKind::Io) if `poll(2)` fails.
    pub fn poll(&self, timeout: Duration) -> Result<bool> {
        let rx = lock(&self.rx);
        if rx.reader.has_frame() {
            return Ok(true);
        }
        let ready = sys::poll_readable(&[self.sock.as_fd()], Some(timeout))
            .map_err(|e| Error::io("cannot poll a pipe", e))?;
        Ok(ready.first().is_some_and(|r| r.readable))
    }

    /// Closes this end in this process (the same as dropping it). Python's
    /// `Connection.close`.
    pub fn close(self) {}

    /// The largest message this end sends or receives, in bytes (of the encoded value).
    pub fn max_message_size(&self) -> u64 {
        self.limit.load(Ordering::Relaxed)
    }

    /// Sets the largest message this end sends or receives, in bytes. A larger message to
    /// send is refused before anything is sent; a larger message arriving is refused from its
    /// length alone, before memory is allocated for it.
    ///
    /// # Examples
    /// ```
    /// let (a, b) = mproc::pipe::<Vec<u8>>()?;
    /// a.set_max_message_size(1024)?;
    /// let err = a.send(&vec![0u8; 4096]).unwrap_err();
    /// assert_eq!(err.kind(), mproc::ErrorKind::Codec);
    /// # Ok::<(), mproc::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Usage`](crate::ErrorKind::Usage) when received data is waiting in this end (set the
    /// limit before receiving, or when every message read has been received).
    pub fn set_max_message_size(&self, bytes: u64) -> Result<()> {
        let mut rx = lock(&self.rx);
        if !rx.idle() {
            return Err(Error::usage(
                "cannot change the message size limit while received data is waiting",
            ));
        }
        if rx.limit != bytes {
            *rx = Rx::new(bytes);
        }
        self.limit.store(bytes, Ordering::Relaxed);
        Ok(())
    }

    /// Sends a finished frame `head` (header, fd count and all or part of the body), then
    /// `tail` (the rest of the body), with `handles` attached to the first byte.
    fn send_frame(&self, head: &[u8], tail: &[u8], handles: &[OwnedFd]) -> Result<()> {
        let limit = self.limit.load(Ordering::Relaxed);
        let body = (head.len() - frame::HEADER + tail.len()) as u64;
        if body > limit {
            return Err(Error::codec(format!(
                "the message is {body} bytes, over this connection's limit of {limit}"
            )));
        }
        let _sending = lock(&self.tx);
        let borrowed: Vec<BorrowedFd<'_>> = handles.iter().map(AsFd::as_fd).collect();
        send_all(self.sock.as_fd(), head, &borrowed)
            .and_then(|()| send_all(self.sock.as_fd(), tail, &[]))
            .map_err(send_error)
    }

    /// Reads the next frame and takes the fds it announces. `deadline: None` waits forever.
    fn recv_frame(&self, deadline: Option<Instant>) -> Result<(Vec<u8>, Vec<OwnedFd>)> {
        let mut guard = lock(&self.rx);
        let rx = &mut *guard;
        loop {
            if let Some(d) = deadline {
                if !rx.reader.has_frame() && !self.wait_readable(d)? {
                    return Err(Error::timed_out());
                }
            }
            let mut src = Source {
                sock: self.sock.as_fd(),
                fifo: &mut rx.fifo,
                read: &mut rx.read,
                nonblocking: deadline.is_some(),
            };
            match rx.reader.advance(&mut src) {
                Ok(Some(body)) => {
                    rx.consumed += (frame::HEADER + body.len()) as u64;
                    let handles = take_handles(&body, &mut rx.fifo)?;
                    return Ok((body, handles));
                }
                // More bytes needed, or the socket had nothing after all: the deadline is
                // checked again before waiting.
                Ok(None) | Err(FrameError::WouldBlock) => {}
                Err(e) => return Err(recv_error(e)),
            }
        }
    }

    /// Waits until the socket is readable or `deadline` passes; `false` on timeout.
    fn wait_readable(&self, deadline: Instant) -> Result<bool> {
        let left = deadline.saturating_duration_since(Instant::now());
        let ready = sys::poll_readable(&[self.sock.as_fd()], Some(left))
            .map_err(|e| Error::io("cannot poll a pipe", e))?;
        Ok(ready.first().is_some_and(|r| r.readable))
    }
}

/// Sends all of `data`, with `handles` attached to its first byte.
fn send_all(sock: BorrowedFd<'_>, mut data: &[u8], handles: &[BorrowedFd<'_>]) -> io::Result<()> {
    let mut handles = handles;
    while !data.is_empty() {
        let n = sys::send_with_fds(sock, data, handles)?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        handles = &[];
        data = &data[n..];
    }
    Ok(())
}

fn is_hangup(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
    )
}

fn send_error(e: io::Error) -> Error {
    if is_hangup(&e) {
        Error::closed("the other end of the pipe is closed")
    } else {
        Error::io("cannot send on a pipe", e)
    }
}

fn recv_error(e: FrameError) -> Error {
    match e {
        FrameError::Eof => Error::closed("the other end of the pipe is closed"),
        FrameError::Truncated { .. } => {
            Error::closed("the other end of the pipe closed in the middle of a message")
        }
        FrameError::TooLong { len, limit } => Error::protocol(format!(
            "a message of {len} bytes arrived, over this connection's limit of {limit}"
        )),
        FrameError::Io(e) if is_hangup(&e) => Error::closed("the other end of the pipe is closed"),
        FrameError::Io(e) => Error::io("cannot receive on a pipe", e),
        FrameError::WouldBlock => Error::timed_out(),
    }
}

/// Takes from `fifo` the fds the header of `body` announces.
fn take_handles(body: &[u8], fifo: &mut VecDeque<OwnedFd>) -> Result<Vec<OwnedFd>> {
    let Some(head) = body.get(..FD_HEADER) else {
        return Err(Error::protocol("a pipe message shorter than its header"));
    };
    let count = u16::from_le_bytes([head[0], head[1]]);
    fds::take(fifo, count).ok_or_else(|| {
        Error::protocol(format!(
            "a pipe message announces {count} handles, but fewer arrived"
        ))
    })
}

impl<T> fmt::Debug for Connection<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("sock", &self.sock)
            .finish_non_exhaustive()
    }
}

impl<T> Serialize for Connection<T> {
    /// Sends a duplicate of this end's socket beside the message; the receiving process gets
    /// an end of the same pipe. Refused while received data waits unread in this end (it
    /// would be lost to the copy).
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        if !lock(&self.rx).idle() {
            return Err(S::Error::custom(
                "a Connection holding received but unread data cannot be sent",
            ));
        }
        fds::serialize_fd(self.sock.as_fd(), s)
    }
}

impl<'de, T> Deserialize<'de> for Connection<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        fds::deserialize_fd(d).map(Connection::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send_sync<X: Send + Sync>() {}

    #[test]
    fn ends_cross_threads() {
        send_sync::<Connection<std::rc::Rc<u8>>>();
    }

    #[test]
    fn lengths_and_fd_counts_are_checked() {
        let mut fifo = VecDeque::new();
        assert!(take_handles(&[1], &mut fifo).is_err());
        assert!(take_handles(&[1, 0], &mut fifo).is_err());
        assert!(take_handles(&[0, 0, 9], &mut fifo).unwrap().is_empty());
    }

    #[test]
    fn bytes_large_and_small_round_trip() {
        let (a, b) = pipe::<()>().unwrap();
        let big: Vec<u8> = (0..3 * COPY_BELOW).map(|i| i as u8).collect();
        std::thread::scope(|s| {
            s.spawn(|| {
                a.send_bytes(b"x").unwrap();
                a.send_bytes(&big).unwrap();
                a.send_bytes(b"").unwrap();
            });
            let t = Duration::from_secs(30);
            assert_eq!(b.recv_bytes_timeout(t).unwrap(), b"x");
            assert_eq!(b.recv_bytes_timeout(t).unwrap(), big);
            assert_eq!(b.recv_bytes_timeout(t).unwrap(), b"");
        });
    }
}
