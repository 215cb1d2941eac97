//! The messages between a parent and a worker, encoded by hand: a tag byte, fixed fields, then
//! the payload (already in the codec) to the end of the frame, so that a payload is written
//! once, straight into the frame buffer, and read in place.

use super::frame::FrameBuf;

const RUN: u8 = 0x01;
const EXIT: u8 = 0x02;
const FDS: u8 = 0x03;
const CONTROL: u8 = 0x04;
/// Parent → worker: a task waits in the mailbox (`task::mailbox`).
const RING: u8 = 0x05;
const HELLO: u8 = 0x10;
const DONE: u8 = 0x11;
/// The tag of a `Done` message, for replies built elsewhere (a chunk's, in its arena).
pub(crate) const DONE_TAG: u8 = DONE;
const PANIC: u8 = 0x12;
const FAILED: u8 = 0x13;
const REFUSED: u8 = 0x14;
const DONE_SPILLED: u8 = 0x15;
const DYING: u8 = 0x16;
/// Worker → parent: an answer waits in the mailbox (`task::mailbox`).
const RUNG: u8 = 0x17;

/// Bit in `Run::flags`: the worker exits after answering.
pub(crate) const FLAG_LAST: u8 = 1;

/// Bit in `Run::flags`: the argument is not in the frame but in the last fd of the `Fds` frame
/// before it, an anonymous file holding exactly its encoding (see [`encode_arg`]).
pub(crate) const FLAG_SPILLED: u8 = 2;

/// Bit in `Run::flags`: a caller waits on this task alone (the `apply` fast path), and the next
/// may follow at once: the worker looks for it a short while before sleeping (`task::spin`).
/// Tasks the supervisor feeds wait in the socket already; workers spinning for them would only
/// take CPU from the supervisor.
pub(crate) const FLAG_HOT: u8 = 4;

/// Sets `flag` in a finished `Run` frame.
pub(crate) fn set_run_flag(frame: &mut [u8], flag: u8) {
    if let Some(flags) = frame.get_mut(super::frame::HEADER + 1) {
        *flags |= flag;
    }
}

/// Arguments whose encoding passes this many bytes travel in an anonymous file (memfd).
pub(crate) const SPILL_LIMIT: usize = 1 << 20;

/// Encodes `arg` into the `Run` frame `run` (from [`begin_run`]) and returns the fds that go
/// with it: those of handles inside the argument, then — if the encoding passed
/// [`SPILL_LIMIT`] — the anonymous file holding it, flagged with [`FLAG_SPILLED`].
pub(crate) fn encode_arg<T: serde::Serialize + ?Sized>(
    run: &mut FrameBuf,
    arg: &T,
) -> Result<Vec<std::os::fd::OwnedFd>, String> {
    let (encoded, mut fds) =
        super::fds::collecting(|| super::codec::encode_spilling(arg, &mut run.buf, SPILL_LIMIT));
    if let Some(file) = encoded? {
        if fds.len() >= super::fds::MAX_FDS {
            return Err(format!(
                "one message can carry at most {} mproc handles beside a large argument",
                super::fds::MAX_FDS - 1
            ));
        }
        fds.push(file);
        run.buf[super::frame::HEADER + 1] |= FLAG_SPILLED;
    }
    Ok(fds)
}

/// Parent → worker: run a function.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Run<'a> {
    pub(crate) flags: u8,
    /// For a chunk: the first item to run (those before it were settled by an earlier run).
    pub(crate) skip: u32,
    /// The parent's binary identity; the worker refuses to run if it differs from its own.
    pub(crate) identity: &'a [u8],
    /// Trampoline offset from the anchor.
    pub(crate) tramp: i64,
    /// User function offset from the anchor.
    pub(crate) func: i64,
    /// The encoded argument.
    pub(crate) arg: &'a [u8],
}

/// Worker → parent.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum FromWorker<'a> {
    /// First message of every worker.
    Hello { pid: u32, identity: &'a [u8] },
    /// The function returned; its encoded result.
    Done(&'a [u8]),
    /// The function returned a large result: what a `Done` would carry is in the one fd sent
    /// with the `Fds` frame before this message, an anonymous file (see [`done_spilled`]).
    Spilled,
    /// The function panicked; an encoded `RemotePanic`.
    Panic(&'a [u8]),
    /// The task could not run or its result could not be encoded.
    Failed(&'a str),
    /// The worker refused to run: the parent's identity differs from its own (given here).
    Refused { identity: &'a [u8] },
}

/// Why a message could not be decoded.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct BadMessage(pub(crate) &'static str);

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], BadMessage> {
        if self.0.len() < n {
            return Err(BadMessage("message shorter than its fields"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, BadMessage> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, BadMessage> {
        Ok(u16::from_le_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }
    fn u32(&mut self) -> Result<u32, BadMessage> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn i64(&mut self) -> Result<i64, BadMessage> {
        Ok(i64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn short_bytes(&mut self) -> Result<&'a [u8], BadMessage> {
        let n = self.u16()? as usize;
        self.take(n)
    }
}

fn put_short_bytes(buf: &mut Vec<u8>, b: &[u8]) {
    let n = u16::try_from(b.len()).expect("identities are far shorter than 64 KiB");
    buf.extend_from_slice(&n.to_le_bytes());
    buf.extend_from_slice(b);
}

/// Starts a `Run` frame; the caller appends the encoded argument to `.buf`, then `finish`es.
pub(crate) fn begin_run(flags: u8, identity: &[u8], tramp: i64, func: i64) -> FrameBuf {
    let mut f = FrameBuf::new();
    f.buf.push(RUN);
    f.buf.push(flags);
    f.buf.extend_from_slice(&0u32.to_le_bytes());
    put_short_bytes(&mut f.buf, identity);
    f.buf.extend_from_slice(&tramp.to_le_bytes());
    f.buf.extend_from_slice(&func.to_le_bytes());
    f
}

/// Sets the first item a chunk's `Run` frame (a whole frame, from [`begin_run`]) runs.
pub(crate) fn set_skip(frame: &mut [u8], skip: u32) {
    frame[super::frame::HEADER + 2..super::frame::HEADER + 6].copy_from_slice(&skip.to_le_bytes());
}

/// Appends the items of chunk `Run` frame `next` to chunk `Run` frame `into` (both whole
/// frames from [`begin_run`] with a sequence argument: a `u64` count, then the items), making
/// one chunk of both: a transport detail, since every item keeps its own outcome. Only for
/// frames alike up to their argument (flags, skip, identity, function), neither spilled;
/// returns `false`, changing nothing, otherwise.
pub(crate) fn append_items(into: &mut Vec<u8>, next: &[u8]) -> bool {
    use super::frame::HEADER;
    let arg_at = |frame: &[u8]| -> Option<(usize, u64)> {
        let run = parse_run(frame.get(HEADER..)?).ok()?;
        let count = u64::from_le_bytes(run.arg.get(..8)?.try_into().ok()?);
        let ok = run.flags & FLAG_SPILLED == 0 && run.skip == 0;
        ok.then_some((frame.len() - run.arg.len(), count))
    };
    let (Some((at, a)), Some((next_at, b))) = (arg_at(into), arg_at(next)) else {
        return false;
    };
    if at != next_at || into[HEADER..at] != next[HEADER..at] {
        return false;
    }
    let Some(count) = a.checked_add(b) else {
        return false;
    };
    into[at..at + 8].copy_from_slice(&count.to_le_bytes());
    into.extend_from_slice(&next[at + 8..]);
    let len = (into.len() - HEADER) as u64;
    into[..HEADER].copy_from_slice(&len.to_le_bytes());
    true
}

/// A `Control` frame, sent with one fd (after an [`fds`] frame): the worker's control block
/// and result arena (see `task::progress`). The first message of every pool worker.
pub(crate) fn control() -> Vec<u8> {
    let mut f = FrameBuf::new();
    f.buf.push(CONTROL);
    f.finish()
}

/// True for a `Control` message.
pub(crate) fn is_control(body: &[u8]) -> bool {
    body == [CONTROL]
}

/// Writes the header and `Done` tag of a frame whose body (tag included) is `body_len` bytes
/// into `out` (`HEADER + 1` bytes).
pub(crate) fn write_done_header(out: &mut [u8], body_len: usize) {
    out[..super::frame::HEADER].copy_from_slice(&(body_len as u64).to_le_bytes());
    out[super::frame::HEADER] = DONE;
}

/// An `Exit` frame: the worker finishes at once with exit code 0. Pools retire workers this
/// way rather than by closing the socket, because a `Fork` worker may hold a copy of another
/// worker's socket, which would hide the EOF.
pub(crate) fn exit() -> Vec<u8> {
    let mut f = FrameBuf::new();
    f.buf.push(EXIT);
    f.finish()
}

/// An `Fds` frame: the message after it owns the `n` fds sent with this frame (`SCM_RIGHTS`).
/// Kept apart from the message so that the fds ride on a tiny frame sent whole by one
/// `sendmsg`, and any message layout can carry fds.
pub(crate) fn fds(n: u16) -> Vec<u8> {
    let mut f = FrameBuf::new();
    f.buf.push(FDS);
    f.buf.extend_from_slice(&n.to_le_bytes());
    f.finish()
}

/// `Some(n)` for an `Fds` message announcing `n` fds.
pub(crate) fn parse_fds(body: &[u8]) -> Option<u16> {
    match body {
        [FDS, a, b] => Some(u16::from_le_bytes([*a, *b])),
        _ => None,
    }
}

/// True for an `Exit` message.
pub(crate) fn is_exit(body: &[u8]) -> bool {
    body == [EXIT]
}

/// The doorbell of a mailbox: `to_worker`, a task waits in it; else an answer does. It says
/// only "look": one that arrives after its message was taken is ignored.
pub(crate) fn doorbell(to_worker: bool) -> Vec<u8> {
    let mut f = FrameBuf::new();
    f.buf.push(if to_worker { RING } else { RUNG });
    f.finish()
}

/// Whether `body` is a doorbell (`to_worker`: the parent's, else a worker's).
pub(crate) fn is_doorbell(body: &[u8], to_worker: bool) -> bool {
    body == [if to_worker { RING } else { RUNG }]
}

/// Decodes a parent → worker message.
pub(crate) fn parse_run(body: &[u8]) -> Result<Run<'_>, BadMessage> {
    let mut c = Cursor(body);
    if c.u8()? != RUN {
        return Err(BadMessage("expected a run message"));
    }
    let flags = c.u8()?;
    let skip = c.u32()?;
    let identity = c.short_bytes()?;
    let tramp = c.i64()?;
    let func = c.i64()?;
    Ok(Run {
        flags,
        skip,
        identity,
        tramp,
        func,
        arg: c.0,
    })
}

/// A `Hello` frame.
pub(crate) fn hello(pid: u32, identity: &[u8]) -> Vec<u8> {
    let mut f = FrameBuf::new();
    f.buf.push(HELLO);
    f.buf.extend_from_slice(&pid.to_le_bytes());
    put_short_bytes(&mut f.buf, identity);
    f.finish()
}

/// Starts a `Done` frame; the caller appends the encoded result.
pub(crate) fn begin_done() -> FrameBuf {
    let mut f = FrameBuf::new();
    f.buf.push(DONE);
    f
}

/// A `Done` whose payload — everything after the tag — is in an anonymous file sent with
/// the `Fds` frame just before it: a large result reaches the parent through shared pages,
/// not through the socket (see `codec::encode_spilling`).
pub(crate) fn done_spilled() -> Vec<u8> {
    let mut f = FrameBuf::new();
    f.buf.push(DONE_SPILLED);
    f.finish()
}

/// Starts a `Panic` frame; the caller appends the encoded `RemotePanic`.
pub(crate) fn begin_panic() -> FrameBuf {
    let mut f = FrameBuf::new();
    f.buf.push(PANIC);
    f
}

/// A `Failed` frame.
pub(crate) fn failed(msg: &str) -> Vec<u8> {
    let mut f = FrameBuf::new();
    f.buf.push(FAILED);
    f.buf.extend_from_slice(msg.as_bytes());
    f.finish()
}

/// A `Refused` frame.
pub(crate) fn refused(identity: &[u8]) -> Vec<u8> {
    let mut f = FrameBuf::new();
    f.buf.push(REFUSED);
    put_short_bytes(&mut f.buf, identity);
    f.finish()
}

/// A worker's last words, written from its `SIGSEGV` handler as it dies of a stack overflow
/// (`sys::stack_guard`): built in advance, sent with one `write(2)`. The death itself is still
/// reported by the exit status; this only says why. Read with [`parse_dying`] before
/// [`parse_from_worker`] (as `Fds` frames are), which does not know it.
pub(crate) fn dying_of_stack_overflow() -> Vec<u8> {
    let mut f = FrameBuf::new();
    f.buf.push(DYING);
    f.buf.push(1);
    f.finish()
}

/// The one cause a worker announces as it dies.
pub(crate) const STACK_OVERFLOW: &str = "stack overflow";

/// The cause a worker announced as it died (see [`dying_of_stack_overflow`]), if `body` is
/// such a message.
pub(crate) fn parse_dying(body: &[u8]) -> Option<&'static str> {
    match body {
        [DYING, 1] => Some(STACK_OVERFLOW),
        _ => None,
    }
}

/// Decodes a worker → parent message.
pub(crate) fn parse_from_worker(body: &[u8]) -> Result<FromWorker<'_>, BadMessage> {
    let mut c = Cursor(body);
    Ok(match c.u8()? {
        HELLO => {
            let pid = c.u32()?;
            FromWorker::Hello {
                pid,
                identity: c.short_bytes()?,
            }
        }
        DONE => FromWorker::Done(c.0),
        DONE_SPILLED if c.0.is_empty() => FromWorker::Spilled,
        PANIC => FromWorker::Panic(c.0),
        FAILED => FromWorker::Failed(
            std::str::from_utf8(c.0).map_err(|_| BadMessage("failure text is not UTF-8"))?,
        ),
        REFUSED => FromWorker::Refused {
            identity: c.short_bytes()?,
        },
        _ => return Err(BadMessage("unknown message type")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::frame::HEADER;

    #[test]
    fn run_round_trip() {
        let mut f = begin_run(FLAG_LAST, b"id", -5, 1 << 40);
        f.buf.extend_from_slice(b"arg");
        let bytes = f.finish();
        let run = parse_run(&bytes[HEADER..]).unwrap();
        assert_eq!(
            run,
            Run {
                flags: FLAG_LAST,
                skip: 0,
                identity: b"id",
                tramp: -5,
                func: 1 << 40,
                arg: b"arg"
            }
        );
    }

    fn chunk(func: i64, items: &[u64]) -> Vec<u8> {
        let mut f = begin_run(0, b"id", 7, func);
        crate::wire::codec::encode_into(items, &mut f.buf).unwrap();
        f.finish()
    }

    #[test]
    fn chunks_of_one_function_append_into_one() {
        let mut a = chunk(9, &[1, 2]);
        assert!(append_items(&mut a, &chunk(9, &[3])));
        assert!(append_items(&mut a, &chunk(9, &[])));
        assert!(append_items(&mut a, &chunk(9, &[4, 5])));
        let run = parse_run(&a[HEADER..]).unwrap();
        let items: Vec<u64> = crate::wire::codec::decode(run.arg).unwrap();
        assert_eq!(items, [1, 2, 3, 4, 5]);
        assert_eq!(
            a.len() - HEADER,
            u64::from_le_bytes(a[..8].try_into().unwrap()) as usize
        );

        let before = a.clone();
        assert!(!append_items(&mut a, &chunk(8, &[6])), "another function");
        let mut skipped = chunk(9, &[6]);
        set_skip(&mut skipped, 1);
        assert!(!append_items(&mut a, &skipped), "a re-run");
        let mut spilled = chunk(9, &[6]);
        spilled[HEADER + 1] |= FLAG_SPILLED;
        assert!(!append_items(&mut a, &spilled), "a spilled argument");
        assert!(!append_items(&mut a, b"garbage"));
        assert_eq!(a, before, "a refusal changes nothing");
    }

    #[test]
    fn worker_messages_round_trip() {
        let h = hello(42, b"abc");
        assert_eq!(
            parse_from_worker(&h[HEADER..]).unwrap(),
            FromWorker::Hello {
                pid: 42,
                identity: b"abc"
            }
        );
        let r = refused(b"x");
        assert_eq!(
            parse_from_worker(&r[HEADER..]).unwrap(),
            FromWorker::Refused { identity: b"x" }
        );
        let e = failed("nope");
        assert_eq!(
            parse_from_worker(&e[HEADER..]).unwrap(),
            FromWorker::Failed("nope")
        );
        let dying = dying_of_stack_overflow();
        assert_eq!(parse_dying(&dying[HEADER..]), Some("stack overflow"));
        assert_eq!(parse_dying(&d_tag_only()), None);
        let d = done_spilled();
        assert_eq!(
            parse_from_worker(&d[HEADER..]).unwrap(),
            FromWorker::Spilled
        );
        let mut trailing = d[HEADER..].to_vec();
        trailing.push(0);
        assert!(parse_from_worker(&trailing).is_err(), "no payload inline");
    }

    fn d_tag_only() -> Vec<u8> {
        vec![DYING]
    }

    #[test]
    fn every_prefix_of_a_message_is_an_error_not_a_panic() {
        let mut f = begin_run(0, b"identity", 1, 2);
        f.buf.extend_from_slice(b"payload");
        let bytes = f.finish();
        for end in HEADER..HEADER + 20 {
            assert!(parse_run(&bytes[HEADER..end]).is_err(), "prefix {end}");
        }
        let h = hello(1, b"identity");
        for end in HEADER..h.len() - 1 {
            assert!(parse_from_worker(&h[HEADER..end]).is_err(), "prefix {end}");
        }
        assert!(parse_from_worker(&[0xff]).is_err());
        assert_eq!(parse_fds(&fds(3)[HEADER..]), Some(3));
        assert_eq!(parse_fds(&[FDS, 1]), None);
        assert!(parse_run(&[0x10]).is_err());
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use crate::wire::frame::{FrameReader, HEADER};
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(if cfg!(miri) { 4 } else { 512 }))]

        /// Arbitrary bytes through the frame reader and both message decoders: errors, never
        /// panics, and never a buffer beyond what arrived.
        #[test]
        fn hostile_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut reader = FrameReader::new(1 << 16);
            let mut src = &bytes[..];
            while let Ok(frame) = reader.read_frame(&mut src) {
                prop_assert!(frame.len() <= bytes.len());
                let _ = parse_from_worker(&frame);
                let _ = parse_run(&frame);
            }
            let _ = parse_from_worker(&bytes);
            let _ = parse_run(&bytes);
        }

        #[test]
        fn run_messages_round_trip(
            flags in any::<u8>(),
            identity in proptest::collection::vec(any::<u8>(), 0..64),
            tramp in any::<i64>(),
            func in any::<i64>(),
            arg in proptest::collection::vec(any::<u8>(), 0..256),
        ) {
            let mut f = begin_run(flags, &identity, tramp, func);
            f.buf.extend_from_slice(&arg);
            let bytes = f.finish();
            let mut reader = FrameReader::new(1 << 16);
            let frame = reader.read_frame(&mut &bytes[..]).unwrap();
            prop_assert_eq!(frame.len() + HEADER, bytes.len());
            let run = parse_run(&frame).unwrap();
            prop_assert_eq!(run, Run { flags, skip: 0, identity: &identity, tramp, func, arg: &arg });
        }

        #[test]
        fn values_round_trip_through_the_codec(v in proptest::collection::vec((any::<u64>(), ".{0,8}", any::<Option<i32>>()), 0..32)) {
            let mut buf = Vec::new();
            crate::wire::codec::encode_into(&v, &mut buf).unwrap();
            let back: Vec<(u64, String, Option<i32>)> = crate::wire::codec::decode(&buf).unwrap();
            prop_assert_eq!(back, v);
        }
    }
}
