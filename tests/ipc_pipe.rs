//! `mproc::pipe`: Python's `multiprocessing.Pipe()` behaviour (duplex ends, `send`/`recv`,
//! `poll`, `recv_bytes`, `EOFError` once the other end is closed), plus what Python does not
//! give: messages of any size, handles inside messages, clear errors on hostile bytes.
//! Behaviour taken from the CPython documentation of `multiprocessing.connection`.

mod common;

use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use common::{LIMIT, open_fds};
use mproc::{Connection, ErrorKind, Process, StartMethod, pipe};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

/// Tests share the process's fd table: the leak test runs alone (write lock), the others
/// together (read lock).
static FDS: RwLock<()> = RwLock::new(());

fn shared() -> std::sync::RwLockReadGuard<'static, ()> {
    FDS.read().unwrap_or_else(|e| e.into_inner())
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Msg {
    Ping(u64),
    Text(String),
    Point { x: f64, y: f64 },
}

#[test]
fn round_trip_both_directions() {
    let _leaks = common::leak_checked();
    let _g = shared();
    let (a, b) = pipe::<Msg>().unwrap();
    a.send(&Msg::Ping(1)).unwrap();
    a.send(&Msg::Text("héllo".into())).unwrap();
    b.send(&Msg::Point { x: 1.5, y: -2.0 }).unwrap();
    assert_eq!(b.recv_timeout(LIMIT).unwrap(), Msg::Ping(1));
    assert_eq!(b.recv_timeout(LIMIT).unwrap(), Msg::Text("héllo".into()));
    assert_eq!(
        a.recv_timeout(LIMIT).unwrap(),
        Msg::Point { x: 1.5, y: -2.0 }
    );
    assert!(!a.poll(Duration::ZERO).unwrap());
    assert!(!b.poll(Duration::ZERO).unwrap());
}

#[test]
fn a_64_mib_message_arrives_whole() {
    let _leaks = common::leak_checked();
    let _g = shared();
    let (a, b) = pipe::<(u32, ByteBuf)>().unwrap();
    let len = (64 << 20) + 12_345;
    let mut big = vec![0u8; len];
    big.iter_mut()
        .step_by(4093)
        .enumerate()
        .for_each(|(i, b)| *b = i as u8 | 1);
    let msg = (42u32, ByteBuf::from(big));
    std::thread::scope(|s| {
        let sender = s.spawn(|| a.send(&msg));
        let got = b.recv_timeout(LIMIT).unwrap();
        sender.join().unwrap().unwrap();
        assert_eq!(got.0, 42);
        assert!(got.1 == msg.1, "the payload arrived intact");
    });
    // And the other way, as raw bytes (smaller: debug builds zero receive buffers slowly).
    let part = &msg.1[..8 << 20];
    std::thread::scope(|s| {
        s.spawn(|| b.send_bytes(part).unwrap());
        assert!(a.recv_bytes_timeout(LIMIT).unwrap() == part);
    });
}

#[test]
fn recv_timeout_times_out_then_succeeds() {
    let _leaks = common::leak_checked();
    let _g = shared();
    let (a, b) = pipe::<u64>().unwrap();
    let start = Instant::now();
    let err = b.recv_timeout(Duration::from_millis(50)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::TimedOut, "{err}");
    assert!(err.is_timeout());
    assert!(start.elapsed() >= Duration::from_millis(50));
    assert!(!b.poll(Duration::from_millis(10)).unwrap());
    a.send(&9).unwrap();
    assert!(b.poll(LIMIT).unwrap());
    assert_eq!(b.recv_timeout(LIMIT).unwrap(), 9);
}

#[test]
fn a_message_partly_received_survives_a_timeout() {
    let _leaks = common::leak_checked();
    let _g = shared();
    let (raw, theirs) = UnixStream::pair().unwrap();
    let conn = Connection::<ByteBuf>::from(theirs);
    let body = mproc_frame_body(&[1, 2, 3, 4, 5]);
    let frame = frame_of(&body);
    (&raw).write_all(&frame[..6]).unwrap();
    let err = conn.recv_timeout(Duration::from_millis(20)).unwrap_err();
    assert!(err.is_timeout(), "{err}");
    (&raw).write_all(&frame[6..]).unwrap();
    assert_eq!(
        conn.recv_timeout(LIMIT).unwrap().into_vec(),
        [1, 2, 3, 4, 5]
    );
}

#[test]
fn peer_drop_is_closed_after_the_messages_it_sent() {
    let _leaks = common::leak_checked();
    let _g = shared();
    let (a, b) = pipe::<String>().unwrap();
    a.send(&"last words".to_string()).unwrap();
    drop(a);
    assert!(b.poll(Duration::ZERO).unwrap());
    assert_eq!(b.recv_timeout(LIMIT).unwrap(), "last words");
    for _ in 0..2 {
        let err = b.recv_timeout(LIMIT).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Closed, "{err}");
    }
    assert_eq!(b.recv().unwrap_err().kind(), ErrorKind::Closed);
    let err = b.send(&"anyone?".to_string()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Closed, "{err}");

    let (a, b) = pipe::<String>().unwrap();
    a.close();
    assert_eq!(b.recv_bytes().unwrap_err().kind(), ErrorKind::Closed);
}

#[test]
fn a_connection_sent_through_a_connection_works() {
    let _leaks = common::leak_checked();
    let _g = shared();
    let (carrier_tx, carrier_rx) = pipe::<(String, Connection<u32>)>().unwrap();
    let (c, d) = pipe::<u32>().unwrap();
    carrier_tx.send(&("here".to_string(), d)).unwrap();
    let (label, d) = carrier_rx.recv_timeout(LIMIT).unwrap();
    assert_eq!(label, "here");
    // `d` was moved into the message and dropped after sending: the copy received is the only
    // one, so closing it must close the pipe for `c`.
    c.send(&7).unwrap();
    assert_eq!(d.recv_timeout(LIMIT).unwrap(), 7);
    d.send(&8).unwrap();
    assert_eq!(c.recv_timeout(LIMIT).unwrap(), 8);
    drop(d);
    assert_eq!(c.recv_timeout(LIMIT).unwrap_err().kind(), ErrorKind::Closed);
}

#[test]
fn an_end_with_unread_data_refuses_to_travel() {
    let _leaks = common::leak_checked();
    let _g = shared();
    let (carrier, _far) = pipe::<Connection<u8>>().unwrap();
    let (a, b) = pipe::<u8>().unwrap();
    a.send(&1).unwrap();
    a.send(&2).unwrap();
    assert_eq!(b.recv_timeout(LIMIT).unwrap(), 1); // reads both frames; 2 stays buffered
    let err = carrier.send(&b).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Codec);
    assert!(err.to_string().contains("unread"), "{err}");
    assert_eq!(b.recv_timeout(LIMIT).unwrap(), 2);
    carrier.send(&b).unwrap();
}

fn pong(conn: Connection<Msg>) -> u64 {
    let mut n = 0;
    while let Ok(Msg::Ping(i)) = conn.recv_timeout(LIMIT) {
        if conn.send(&Msg::Ping(i + 1)).is_err() {
            break;
        }
        n += 1;
    }
    n
}

#[test]
fn a_connection_passed_to_a_process_plays_ping_pong() {
    let _leaks = common::leak_checked();
    let _g = shared();
    for &m in StartMethod::all() {
        let (ours, theirs) = pipe::<Msg>().unwrap();
        let mut child = Process::builder()
            .start_method(m)
            .spawn(pong, theirs)
            .unwrap();
        let mut x = 0;
        for _ in 0..100 {
            ours.send(&Msg::Ping(x)).unwrap();
            match ours.recv_timeout(LIMIT).unwrap() {
                Msg::Ping(y) => x = y + 1,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(x, 200, "{m:?}");
        ours.send(&Msg::Text("stop".into())).unwrap();
        assert_eq!(child.join_timeout(LIMIT).unwrap(), 100, "{m:?}");
        assert_eq!(
            ours.recv_timeout(LIMIT).unwrap_err().kind(),
            ErrorKind::Closed,
            "{m:?}: the child's end closed when it exited"
        );
    }
}

/// Serves until the other end hangs up; tells whether it ended by that hang-up (not by a
/// timeout).
fn serve_until_hang_up(conn: Connection<Msg>) -> bool {
    loop {
        match conn.recv_timeout(LIMIT) {
            Ok(Msg::Ping(i)) => {
                if conn.send(&Msg::Ping(i + 1)).is_err() {
                    return false;
                }
            }
            Ok(_) => return false,
            Err(e) => return e.kind() == ErrorKind::Closed,
        }
    }
}

#[test]
fn dropping_our_end_hangs_up_on_a_child_under_every_start_method() {
    // Under `Fork` the child starts with a copy of every parent fd, `ours` included: unless it
    // lets go of it, the parent's drop is never seen (Python's classic `fork` trap).
    let _leaks = common::leak_checked();
    let _g = shared();
    for &m in StartMethod::all() {
        let (ours, theirs) = pipe::<Msg>().unwrap();
        // An unrelated pipe open in the parent while the child is forked, dropped later.
        let (other_a, other_b) = pipe::<Msg>().unwrap();
        let mut child = Process::builder()
            .start_method(m)
            .spawn(serve_until_hang_up, theirs)
            .unwrap();
        ours.send(&Msg::Ping(1)).unwrap();
        assert!(matches!(ours.recv_timeout(LIMIT).unwrap(), Msg::Ping(2)));
        drop(ours);
        assert!(
            child.join_timeout(LIMIT).unwrap(),
            "{m:?}: the child saw the hang-up"
        );
        drop(other_a);
        assert_eq!(
            other_b.recv_timeout(LIMIT).unwrap_err().kind(),
            ErrorKind::Closed,
            "{m:?}"
        );
    }
}

fn echo_big(conn: Connection<ByteBuf>) -> usize {
    match conn.recv_timeout(LIMIT) {
        Ok(b) => conn.send(&b).map_or(0, |()| b.len()),
        Err(_) => 0,
    }
}

#[test]
fn a_large_message_crosses_processes_both_ways() {
    let _leaks = common::leak_checked();
    let _g = shared();
    let (ours, theirs) = pipe::<ByteBuf>().unwrap();
    let mut child = Process::spawn(echo_big, theirs).unwrap();
    let big = ByteBuf::from((0..8u32 << 20).map(|i| i as u8).collect::<Vec<_>>());
    std::thread::scope(|s| {
        s.spawn(|| ours.send(&big).unwrap());
        assert!(ours.recv_timeout(LIMIT).unwrap() == big);
    });
    assert_eq!(child.join_timeout(LIMIT).unwrap(), big.len());
}

/// A pipe-message body as mproc writes it: no handles, then `payload` as a `ByteBuf` (or a
/// `String`: the same bytes).
fn mproc_frame_body(payload: &[u8]) -> Vec<u8> {
    // A ByteBuf in mproc's codec: its length as a little-endian u64, then the bytes.
    let mut b = vec![0, 0];
    b.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    b.extend_from_slice(payload);
    b
}

fn frame_of(body: &[u8]) -> Vec<u8> {
    let mut f = (body.len() as u64).to_le_bytes().to_vec();
    f.extend_from_slice(body);
    f
}

#[test]
fn garbage_from_the_peer_is_a_clear_error() {
    let _leaks = common::leak_checked();
    let _g = shared();
    let (raw, theirs) = UnixStream::pair().unwrap();
    let conn = Connection::<String>::from(theirs);
    let mut raw = &raw;

    // Not a String (invalid UTF-8): a codec error; the stream stays usable.
    raw.write_all(&frame_of(&mproc_frame_body(&[0xff, 0xfe])))
        .unwrap();
    let err = conn.recv_timeout(LIMIT).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Codec, "{err}");
    // A body shorter than its header.
    raw.write_all(&frame_of(&[0])).unwrap();
    let err = conn.recv_timeout(LIMIT).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");
    // Handles announced that never came.
    raw.write_all(&frame_of(&[3, 0, 1, b'a'])).unwrap();
    let err = conn.recv_timeout(LIMIT).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");
    assert!(err.to_string().contains("handles"), "{err}");
    // A good message still works after all that.
    raw.write_all(&frame_of(&mproc_frame_body(b"ok"))).unwrap();
    assert_eq!(conn.recv_timeout(LIMIT).unwrap(), "ok");
    // A length of 2^63: refused from the length alone.
    raw.write_all(&(1u64 << 63).to_le_bytes()).unwrap();
    let err = conn.recv_timeout(LIMIT).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");
    assert!(err.to_string().contains("limit"), "{err}");

    // A frame cut short by the peer's exit: closed, after no huge allocation.
    let (raw, theirs) = UnixStream::pair().unwrap();
    let conn = Connection::<String>::from(theirs);
    (&raw).write_all(&(1u64 << 33).to_le_bytes()).unwrap();
    (&raw).write_all(&[0, 0, 1, 2, 3]).unwrap();
    drop(raw);
    let err = conn.recv_timeout(LIMIT).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Closed, "{err}");
    assert!(err.to_string().contains("middle"), "{err}");
}

#[test]
fn messages_over_the_limit_are_refused() {
    let _leaks = common::leak_checked();
    let _g = shared();
    let (a, b) = pipe::<ByteBuf>().unwrap();
    a.set_max_message_size(1 << 20).unwrap();
    assert_eq!(a.max_message_size(), 1 << 20);
    let big = ByteBuf::from(vec![1u8; 2 << 20]);
    let err = a.send(&big).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Codec, "{err}");
    assert!(err.to_string().contains("limit"), "{err}");
    assert_eq!(big.len(), 2 << 20, "the value stays with the caller");
    assert!(!b.poll(Duration::ZERO).unwrap(), "nothing was sent");

    // The receiver's own limit: refused before the body is read.
    b.set_max_message_size(1000).unwrap();
    a.set_max_message_size(u64::MAX).unwrap();
    a.send(&ByteBuf::from(vec![2u8; 5000])).unwrap();
    let err = b.recv_timeout(LIMIT).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");
    // Data is waiting: the limit can no longer change.
    assert_eq!(
        b.set_max_message_size(10_000).unwrap_err().kind(),
        ErrorKind::Usage
    );
}

#[test]
fn handles_and_pipes_leave_no_fds_behind() {
    let _leaks = common::leak_checked();
    let _g = FDS.write().unwrap_or_else(|e| e.into_inner());
    // Warm up what lives as long as the process (the spawner, the fork server).
    let (_, far) = pipe::<Msg>().unwrap();
    Process::spawn(pong, far)
        .unwrap()
        .join_timeout(LIMIT)
        .unwrap();
    let before = open_fds();
    for _ in 0..5 {
        let (carrier_tx, carrier_rx) = pipe::<Vec<Connection<u8>>>().unwrap();
        let ends: Vec<_> = (0..10).map(|_| pipe::<u8>().unwrap()).collect();
        let (near, far): (Vec<_>, Vec<_>) = ends.into_iter().unzip();
        carrier_tx.send(&far).unwrap();
        drop(far);
        let got = carrier_rx.recv_timeout(LIMIT).unwrap();
        for (n, f) in near.iter().zip(&got) {
            n.send(&3).unwrap();
            assert_eq!(f.recv_timeout(LIMIT).unwrap(), 3);
        }
        // Handles in a message that is then received as bytes are closed too.
        carrier_tx.send(&got).unwrap();
        assert!(!carrier_rx.recv_bytes_timeout(LIMIT).unwrap().is_empty());
        // And handles whose message fails to decode.
        let (bad_tx, bad_rx) = (
            Connection::<Vec<Connection<u8>>>::from(carrier_tx.as_fd_dup()),
            Connection::<bool>::from(carrier_rx.as_fd_dup()),
        );
        bad_tx.send(&got).unwrap();
        assert_eq!(
            bad_rx.recv_timeout(LIMIT).unwrap_err().kind(),
            ErrorKind::Codec
        );
        let (_, far) = pipe::<Msg>().unwrap();
        let mut child = Process::spawn(pong, far).unwrap();
        assert_eq!(child.join_timeout(LIMIT).unwrap(), 0);
    }
    assert_eq!(open_fds(), before, "no fd leaked");
}

/// A duplicate of an end's socket, to read its stream with another type.
trait DupFd {
    fn as_fd_dup(&self) -> std::os::fd::OwnedFd;
}

impl<T> DupFd for Connection<T> {
    fn as_fd_dup(&self) -> std::os::fd::OwnedFd {
        let fd = std::os::fd::AsFd::as_fd(self);
        assert!(fd.as_raw_fd() > 2);
        fd.try_clone_to_owned().unwrap()
    }
}
