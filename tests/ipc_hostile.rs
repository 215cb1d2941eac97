//! Hostile input to the IPC decoders: a `Connection` whose peer writes garbage, truncated
//! frames, absurd lengths or announces handles it never sends, then hangs up; and handles
//! received as the wrong kind of object (a `Value` read as a `Lock`, a socket read as a
//! `Value`, a `Value<u64>` read as a `Value<u32>`). Every case is a clear error: no panic, no
//! hang, no allocation beyond the connection's limit, no fd left behind.
//!
//! The peer is a raw socket driven by this test, so the bytes are exactly the hostile ones.
//! Fixed case counts: this runs in CI with `cargo test`; `fuzz/` explores the same decoder
//! with libFuzzer (`fuzz/run-stable.sh`).

mod common;

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use common::{Leaks, serial};
use mproc::{Connection, ErrorKind, Lock, Value};
use proptest::prelude::*;

const WAIT: Duration = Duration::from_secs(10);

// Every test holds `serial()`: the leak checks count this process's fds, which the others'
// socket pairs would disturb.

/// Reads until the connection reports an error; every message that decodes is fine, but the
/// stream must end in a clear error, never a timeout (the peer hung up) or a panic.
fn drain_to_error(conn: &Connection<Vec<u32>>) -> mproc::Error {
    for _ in 0..10_000 {
        if let Err(e) = conn.recv_timeout(WAIT) {
            return e;
        }
    }
    panic!("a short hostile stream yielded 10,000 messages");
}

fn hostile_pipe(bytes: &[u8], limit: u64) -> mproc::Error {
    let (ours, theirs) = UnixStream::pair().expect("socketpair");
    let conn = Connection::<Vec<u32>>::from(ours);
    conn.set_max_message_size(limit).expect("a limit");
    let mut theirs = theirs;
    // Small writes fit the socket buffer: no reader needed while writing.
    theirs.write_all(bytes).expect("write");
    drop(theirs);
    drain_to_error(&conn)
}

fn is_clear(e: &mproc::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::Closed | ErrorKind::Protocol | ErrorKind::Codec
    )
}

/// A frame header announcing `len` bytes of body.
fn header(len: u64) -> Vec<u8> {
    len.to_le_bytes().to_vec()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Arbitrary bytes, then a hang-up: a clear error.
    #[test]
    fn garbage_then_hangup_is_a_clear_error(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _s = serial();
        let e = hostile_pipe(&bytes, 1 << 20);
        prop_assert!(is_clear(&e), "{e}");
    }

    /// A well-formed header whose length is anywhere up to `u64::MAX`, with part of a body:
    /// over the limit is refused before any allocation; under it, the hang-up mid-frame is
    /// `Closed`.
    #[test]
    fn any_length_with_a_short_body(len in prop_oneof![
            0..64u64,
            (u64::MAX - 64)..=u64::MAX,
            (1u64 << 20)..(1u64 << 40),
            any::<u64>()
        ],
        body in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _s = serial();
        let mut bytes = header(len);
        bytes.extend_from_slice(&body);
        let e = hostile_pipe(&bytes, 4096);
        prop_assert!(is_clear(&e), "{e}");
        // The same after a well-formed message, so that the hostile header arrives already
        // buffered (the case cargo-fuzz found: an overflow checking for a buffered frame).
        // No handles, then vec![7u32] in mproc's codec (a u64 length, a u32).
        let mut after = header(14);
        after.extend_from_slice(&[0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0]);
        after.extend_from_slice(&bytes);
        let e = hostile_pipe(&after, 4096);
        prop_assert!(is_clear(&e), "{e}");
        if len > 4096 {
            prop_assert_eq!(e.kind(), ErrorKind::Protocol, "{}", e);
        }
    }

    /// A frame announcing handles that never arrived (no SCM_RIGHTS): a protocol error.
    #[test]
    fn announced_handles_that_never_came(count in 1u16.., tail in proptest::collection::vec(any::<u8>(), 0..64)) {
        let _s = serial();
        let mut body = count.to_le_bytes().to_vec();
        body.extend_from_slice(&tail);
        let mut bytes = header(body.len() as u64);
        bytes.extend_from_slice(&body);
        let e = hostile_pipe(&bytes, 4096);
        prop_assert_eq!(e.kind(), ErrorKind::Protocol, "{}", e);
    }
}

#[test]
fn hostile_pipes_leak_nothing() {
    let _s = serial();
    let leaks = Leaks::start();
    for len in [0, 1, 7, u64::MAX, u64::MAX - 7, 1 << 40] {
        let mut bytes = header(len);
        bytes.extend_from_slice(&[0xff; 17]);
        assert!(is_clear(&hostile_pipe(&bytes, 4096)));
    }
    leaks.check();
}

/// Sends `handle` on a pipe whose other end decodes it as `R`; returns what that end got.
fn send_as<S: serde::Serialize + serde::de::DeserializeOwned, R>(handle: &S) -> mproc::Result<R>
where
    R: serde::Serialize + serde::de::DeserializeOwned,
{
    let (a, b) = UnixStream::pair().expect("socketpair");
    let tx = Connection::<S>::from(a);
    let rx = Connection::<R>::from(b);
    tx.send(handle).expect("send a handle");
    rx.recv_timeout(WAIT)
}

#[test]
fn a_handle_of_the_wrong_kind_is_an_error() {
    let _s = serial();
    let leaks = Leaks::start();
    let value = Value::new(7u64).unwrap();
    let e = send_as::<Value<u64>, Lock>(&value).expect_err("a Value is not a Lock");
    assert_eq!(e.kind(), ErrorKind::Codec, "{e}");
    assert!(e.to_string().contains("Lock"), "{e}");

    let lock = Lock::new().unwrap();
    let e = send_as::<Lock, Value<u64>>(&lock).expect_err("a Lock is not a Value");
    assert_eq!(e.kind(), ErrorKind::Codec, "{e}");

    let e = send_as::<Value<u64>, Value<u32>>(&value).expect_err("u64 is not u32");
    assert_eq!(e.kind(), ErrorKind::Codec, "{e}");

    // A socket where a shared region is expected: not mappable as an mproc object.
    let (c, _d) = mproc::pipe::<()>().unwrap();
    let e = send_as::<Connection<()>, Value<u64>>(&c).expect_err("a socket is not a Value");
    assert_eq!(e.kind(), ErrorKind::Codec, "{e}");

    // The right kind still works, and nothing of the refused ones is left open or mapped.
    let back = send_as::<Value<u64>, Value<u64>>(&value).unwrap();
    assert_eq!(back.get().unwrap(), 7);
    drop((value, lock, back, c, _d));
    leaks.check();
}
