//! What ranks say to each other: message tags, batches, and the encoding of a task's outcome.
//!
//! A task travels as the very `Run` frame a local pool writes to its worker (length header
//! included), with a job id. The answer is the outcome the serving rank's local pool
//! delivered — the worker's `Done` body as is, or why there is none — re-encoded so that rank 0
//! rebuilds the same [`Error`] a local pool would have given.
//!
//! Tasks and answers travel in batches: every task rank 0 can send a rank right now goes in one
//! MPI message, and every outcome a serving rank has ready goes back in one. A message costs
//! far more than the bytes in it (matching, a probe, a receive, an allocation and a pass of
//! each polling loop per message), so a batch of `n` small tasks costs about one task.

use crate::error::{Error, ErrorKind, ExitStatus, RemotePanic};
use crate::pool::{Answer, Outcome, Part};
use crate::sys::RawExit;
use crate::wire::{codec, msg};

/// Serving rank → rank 0, once its local pool runs: `[u32 local processes][identity]` (0
/// processes: the rank could not start its local pool and takes no tasks).
pub(crate) const TAG_HELLO: i32 = 0x6d70_0001;
/// Serving rank → rank 0, every [`HEARTBEAT`]: still here. Empty.
pub(crate) const TAG_BEAT: i32 = 0x6d70_0006;
/// How often a serving rank says it is alive.
pub(crate) const HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(1);
/// Rank 0 → serving rank, first: the settings of its local pool, a [`RankConfig`].
pub(crate) const TAG_CONFIG: i32 = 0x6d70_0005;
/// Rank 0 → serving rank: a [`Batch`] of `Run` frames, each with its job id.
pub(crate) const TAG_TASKS: i32 = 0x6d70_0007;
/// Serving rank → rank 0: a [`Batch`] of replies (see [`encode_reply`]), each with its job id.
pub(crate) const TAG_REPLIES: i32 = 0x6d70_0008;
/// Serving rank → rank 0: the last `TASKS` message was malformed and none of it runs. Empty.
/// Rank 0 writes the rank off (its tasks re-run elsewhere) but still stops it at the end.
pub(crate) const TAG_MALFORMED: i32 = 0x6d70_0009;
/// Rank 0 → serving rank: stop serving, finalize MPI and exit. Empty, or
/// [`STOP_SKIP_FINALIZE`].
pub(crate) const TAG_STOP: i32 = 0x6d70_0004;
/// The body of a `STOP` after a rank was lost: exit without `MPI_Finalize`. Finalizing is
/// collective in Open MPI; with a dead rank in the job (`--enable-recovery`) it can wait
/// forever.
pub(crate) const STOP_SKIP_FINALIZE: u8 = 1;

/// How a serving rank sets up its local pool; from the [`PoolBuilder`](crate::PoolBuilder).
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct RankConfig {
    /// Local worker processes (default: the rank's CPU count).
    pub(crate) processes: Option<u32>,
    pub(crate) max_retries: u32,
    pub(crate) task_timeout: Option<std::time::Duration>,
    pub(crate) max_tasks_per_child: Option<u64>,
}

const DONE: u8 = 0;
const PANICKED: u8 = 1;
/// `[u8 which: code 0, signal 1, unknown 2][i32 value][u8 cause: none 0, stack overflow 1]`.
const DIED: u8 = 2;
const TIMED_OUT: u8 = 3;
const REFUSED: u8 = 4;
const CODEC: u8 = 5;
const PROTOCOL: u8 = 6;
const OTHER: u8 = 7;
/// A job's outcome in several parts (a local worker died mid-chunk): `[u32 parts]`, then per
/// part `[u64 count][u32 length][one reply of the kinds above]`.
const PARTS: u8 = 8;

/// Bytes before each entry's body in a [`Batch`]: `[u64 job id][u32 body length]`.
const ENTRY_HEAD: usize = 12;
/// The largest MPI message: MPI counts its bytes in a C `int`.
const MAX_MESSAGE: usize = i32::MAX as usize;
/// The largest body an entry may carry: one entry alone in a message.
pub(crate) const MAX_ENTRY: usize = MAX_MESSAGE - ENTRY_HEAD;
/// A batch is sent once the next entry would take it past this many bytes; an entry larger
/// goes alone. Keeps a batch of large chunks from holding up the first of them.
pub(crate) const BATCH_BYTES: usize = 256 << 10;

/// One MPI message of many entries, each `[u64 job id][u32 body length][body]` (little endian).
#[derive(Default)]
pub(crate) struct Batch {
    buf: Vec<u8>,
    entries: usize,
}

impl Batch {
    pub(crate) fn is_empty(&self) -> bool {
        self.entries == 0
    }
    /// The message to send.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.buf
    }
    /// Empties the batch, keeping its buffer for the next one unless a large entry grew it.
    pub(crate) fn clear(&mut self) {
        if self.buf.capacity() > 2 * BATCH_BYTES {
            self.buf = Vec::new();
        }
        self.buf.clear();
        self.entries = 0;
    }
    /// Whether an entry with a body of `len` bytes belongs in this batch rather than the next:
    /// the batch is empty, or stays within [`BATCH_BYTES`] with it.
    pub(crate) fn fits(&self, len: usize) -> bool {
        self.is_empty() || self.buf.len() + ENTRY_HEAD + len <= BATCH_BYTES
    }
    /// Appends an entry whose body `write` appends to the buffer it is given. A body above
    /// [`MAX_ENTRY`] bytes, or one that would take the message past what MPI can send at once,
    /// is taken out again and `false` returned: send the batch, then try again.
    pub(crate) fn push_with(&mut self, id: u64, write: impl FnOnce(&mut Vec<u8>)) -> bool {
        self.push_limited(id, MAX_ENTRY, write)
    }
    fn push_limited(&mut self, id: u64, limit: usize, write: impl FnOnce(&mut Vec<u8>)) -> bool {
        let start = self.buf.len();
        let limit = limit.min(MAX_MESSAGE.saturating_sub(start + ENTRY_HEAD));
        self.buf.extend_from_slice(&id.to_le_bytes());
        self.buf.extend_from_slice(&[0; 4]);
        write(&mut self.buf);
        let len = self.buf.len() - start - ENTRY_HEAD;
        let Some(len32) = u32::try_from(len).ok().filter(|_| len <= limit) else {
            self.buf.truncate(start);
            return false;
        };
        self.buf[start + 8..start + ENTRY_HEAD].copy_from_slice(&len32.to_le_bytes());
        self.entries += 1;
        true
    }
    /// Appends an entry with this body, or returns `false` as [`push_with`](Batch::push_with).
    #[cfg(test)]
    pub(crate) fn push(&mut self, id: u64, body: &[u8]) -> bool {
        body.len() <= MAX_ENTRY && self.push_with(id, |b| b.extend_from_slice(body))
    }
}

/// Bytes before the `Run` frame in the body of a task entry: `[u32 items]`.
pub(crate) const TASK_HEAD: usize = 4;

/// Writes the body of a `TASKS` entry: the task's item count (a serving rank cannot read it
/// from every frame: a worker-state chunk starts with its state's constructor), then its frame.
pub(crate) fn encode_task(out: &mut Vec<u8>, items: usize, frame: &[u8]) {
    let items = u32::try_from(items).unwrap_or(u32::MAX);
    out.extend_from_slice(&items.to_le_bytes());
    out.extend_from_slice(frame);
}

/// The item count and `Run` frame of a `TASKS` entry's body (see [`encode_task`]); `None` if
/// it is too short to hold a count.
pub(crate) fn decode_task(body: &[u8]) -> Option<(usize, &[u8])> {
    let (items, frame) = body.split_first_chunk::<TASK_HEAD>()?;
    Some((u32::from_le_bytes(*items) as usize, frame))
}

/// Why a batch message could not be read.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Malformed {
    /// Byte offset of the entry that does not fit.
    pub(crate) offset: usize,
    pub(crate) why: &'static str,
}

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "malformed batch at byte {}: {}", self.offset, self.why)
    }
}

/// The entries of a batch message, `(job id, body)` in order. The whole message is checked
/// first, so that either every entry is read or none: a malformed tail cannot leave some of
/// its tasks run and the rest unaccounted for. Allocates nothing; bodies borrow from `msg`.
pub(crate) fn entries(msg: &[u8]) -> Result<Entries<'_>, Malformed> {
    let mut rest = msg;
    while !rest.is_empty() {
        let offset = msg.len() - rest.len();
        (_, _, rest) = next_entry(rest).map_err(|why| Malformed { offset, why })?;
    }
    Ok(Entries { rest: msg })
}

/// Reads one entry: `(id, body, what follows it)`, or why it does not fit in `msg`. Never
/// reads past `msg`.
fn next_entry(msg: &[u8]) -> Result<(u64, &[u8], &[u8]), &'static str> {
    let short = "truncated entry header";
    let (id, rest) = msg.split_first_chunk::<8>().ok_or(short)?;
    let (len, rest) = rest.split_first_chunk::<4>().ok_or(short)?;
    let len = u32::from_le_bytes(*len) as usize;
    match (rest.get(..len), rest.get(len..)) {
        (Some(body), Some(after)) => Ok((u64::from_le_bytes(*id), body, after)),
        _ => Err("entry length past the end of the message"),
    }
}

/// Iterator over a checked batch: see [`entries`].
pub(crate) struct Entries<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Entries<'a> {
    type Item = (u64, &'a [u8]);
    fn next(&mut self) -> Option<(u64, &'a [u8])> {
        let (id, body, after) = next_entry(self.rest).ok()?;
        self.rest = after;
        Some((id, body))
    }
}

/// Appends the reply for a task whose `Run` frame carried a foreign binary identity: `mine`
/// is the serving rank's.
pub(crate) fn refused(out: &mut Vec<u8>, mine: &[u8]) {
    out.push(REFUSED);
    out.extend_from_slice(mine);
}

/// Appends the reply for the outcome a serving rank's local pool delivered: one part as it
/// is, several (each with its item count) when a local worker died mid-chunk and the job's
/// items settled in pieces, each keeping its own result or error.
pub(crate) fn encode_reply(out: &mut Vec<u8>, outcome: &Outcome) {
    if let [one] = &outcome[..] {
        return encode_one(out, &one.what);
    }
    out.push(PARTS);
    out.extend_from_slice(&(outcome.len() as u32).to_le_bytes());
    for part in outcome {
        out.extend_from_slice(&(part.count as u64).to_le_bytes());
        let at = out.len();
        out.extend_from_slice(&[0; 4]);
        encode_one(out, &part.what);
        let len = (out.len() - at - 4) as u32;
        out[at..at + 4].copy_from_slice(&len.to_le_bytes());
    }
}

/// Appends the reply for one part. A `Done` body too large for one MPI message becomes an
/// error instead.
fn encode_one(out: &mut Vec<u8>, what: &Result<Answer, Error>) {
    let e = match what {
        Ok(answer) if answer.payload().len() < MAX_ENTRY => {
            out.push(DONE);
            out.extend_from_slice(answer.payload());
            return;
        }
        Ok(answer) => {
            let len = answer.payload().len();
            let why = format!("a result of {len} bytes cannot cross MPI ranks");
            return text(out, CODEC, &why);
        }
        Err(e) => e,
    };
    match e.kind() {
        ErrorKind::Panicked => {
            let start = out.len();
            out.push(PANICKED);
            let p = e
                .remote_panic()
                .expect("a Panicked error carries its panic");
            if let Err(err) = codec::encode_into(p, out) {
                out.truncate(start);
                text(out, CODEC, &format!("cannot encode the panic: {err}"));
            }
        }
        ErrorKind::WorkerDied => {
            let (which, value) = match e.exit_status() {
                Some(s) if s.code().is_some() => (0u8, s.code().unwrap_or(0)),
                Some(s) if s.signal().is_some() => (1, s.signal().unwrap_or(0)),
                _ => (2, 0),
            };
            out.extend_from_slice(&[DIED, which]);
            out.extend_from_slice(&value.to_le_bytes());
            // The one cause a worker announces as it dies.
            out.push(u8::from(e.death_cause() == Some(msg::STACK_OVERFLOW)));
        }
        ErrorKind::TimedOut => out.push(TIMED_OUT),
        ErrorKind::Codec => text(out, CODEC, &e.to_string()),
        ErrorKind::Protocol => text(out, PROTOCOL, &e.to_string()),
        _ => text(out, OTHER, &e.to_string()),
    }
}

fn text(out: &mut Vec<u8>, kind: u8, msg: &str) {
    out.push(kind);
    out.extend_from_slice(msg.as_bytes());
}

/// Rebuilds the outcome from a reply (a batch entry's body) sent by `rank`.
pub(crate) fn decode_reply(rank: i32, reply: &[u8]) -> Outcome {
    match reply.split_first() {
        Some((&PARTS, rest)) => decode_parts(rank, rest).unwrap_or_else(|| {
            vec![Part::rest(Error::protocol(format!(
                "a malformed reply in parts from rank {rank}"
            )))]
        }),
        _ => vec![Part {
            count: Part::REST,
            what: decode_one(rank, reply),
            worker: None,
        }],
    }
}

fn decode_parts(rank: i32, mut rest: &[u8]) -> Option<Outcome> {
    let mut take = |n: usize| -> Option<&[u8]> {
        let (head, tail) = (rest.get(..n)?, rest.get(n..)?);
        rest = tail;
        Some(head)
    };
    let n = u32::from_le_bytes(take(4)?.try_into().ok()?);
    let mut parts = Vec::new();
    for _ in 0..n {
        let count = u64::from_le_bytes(take(8)?.try_into().ok()?);
        let len = u32::from_le_bytes(take(4)?.try_into().ok()?) as usize;
        let body = take(len)?;
        parts.push(Part {
            count: usize::try_from(count).unwrap_or(Part::REST),
            what: decode_one(rank, body),
            worker: None,
        });
    }
    Some(parts)
}

fn decode_one(rank: i32, reply: &[u8]) -> Result<Answer, Error> {
    let Some((&kind, rest)) = reply.split_first() else {
        return Err(Error::protocol(format!("an empty reply from rank {rank}")));
    };
    let msg = || String::from_utf8_lossy(rest).into_owned();
    match kind {
        DONE => Ok(Answer::Payload(rest.to_vec())),
        PANICKED => match codec::decode::<RemotePanic>(rest) {
            Ok(p) => Err(Error::panicked(p)),
            Err(e) => Err(Error::protocol(format!("undecodable panic report: {e}"))),
        },
        DIED => {
            let (which, value, cause) = match rest {
                [w, a, b, c, d, cause @ (0 | 1)] => {
                    (*w, i32::from_le_bytes([*a, *b, *c, *d]), *cause)
                }
                _ => return Err(Error::protocol("a malformed death report")),
            };
            let raw = match which {
                0 => RawExit::Code(value),
                1 => RawExit::Signal(value),
                _ => RawExit::Unknown,
            };
            let status = ExitStatus::from_raw(raw);
            Err(match cause {
                1 => Error::worker_died_of(status, msg::STACK_OVERFLOW),
                _ => Error::worker_died(status),
            })
        }
        TIMED_OUT => Err(Error::timed_out()),
        REFUSED => Err(Error::binary_mismatch(crate::sys::identity::own(), rest)),
        CODEC => Err(Error::codec(msg())),
        PROTOCOL => Err(Error::protocol(msg())),
        _ => Err(Error::broken(format!("rank {rank}: {}", msg()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(o: Result<Answer, Error>) -> Result<Answer, Error> {
        let outcome = vec![Part {
            count: 1,
            what: o,
            worker: None,
        }];
        let mut back = round_trip_parts(outcome);
        assert_eq!(back.len(), 1);
        back.pop().expect("one part").what
    }

    fn round_trip_parts(o: Outcome) -> Outcome {
        let mut batch = Batch::default();
        assert!(batch.push_with(7, |b| encode_reply(b, &o)));
        let mut it = entries(batch.bytes()).expect("a well-formed batch");
        let (id, reply) = it.next().expect("one entry");
        assert_eq!(id, 7);
        assert!(it.next().is_none());
        decode_reply(1, reply)
    }

    #[test]
    fn an_outcome_in_parts_keeps_each_part() {
        let parts = vec![
            Part {
                count: 3,
                what: Ok(Answer::Payload(vec![9, 9])),
                worker: None,
            },
            Part::one(Error::timed_out()),
            Part {
                count: 2,
                what: Ok(Answer::Payload(vec![7])),
                worker: None,
            },
        ];
        let back = round_trip_parts(parts);
        assert_eq!(back.len(), 3);
        assert_eq!(back[0].count, 3);
        assert_eq!(back[0].what.as_ref().expect("done").payload(), [9, 9]);
        assert!(back[1].what.as_ref().expect_err("").is_timeout());
        assert_eq!(back[2].count, 2);
        assert!(decode_reply(1, &[PARTS, 5, 0, 0, 0, 1])[0].what.is_err());
    }

    #[test]
    fn outcomes_survive_the_trip() {
        let back = round_trip(Ok(Answer::Payload(vec![1, 2, 3]))).expect("done");
        assert_eq!(back.payload(), [1, 2, 3]);
        let died = Error::worker_died(ExitStatus::from_raw(RawExit::Signal(6)));
        let back = round_trip(Err(died)).expect_err("an error");
        assert_eq!(back.exit_status().and_then(|s| s.signal()), Some(6));
        assert_eq!(back.death_cause(), None);
        let overflow = Error::worker_died_of(
            ExitStatus::from_raw(RawExit::Signal(11)),
            crate::wire::msg::STACK_OVERFLOW,
        );
        let back = round_trip(Err(overflow)).expect_err("an error");
        assert!(back.to_string().contains("stack overflow"), "{back}");
        let p = RemotePanic {
            message: "boom".into(),
            location: Some("here".into()),
            backtrace: None,
        };
        let back = round_trip(Err(Error::panicked(p))).expect_err("an error");
        assert_eq!(back.remote_panic().map(|p| p.message()), Some("boom"));
        assert!(
            round_trip(Err(Error::timed_out()))
                .expect_err("")
                .is_timeout()
        );
        let back = round_trip(Err(Error::closed("gone"))).expect_err("");
        assert_eq!(back.kind(), ErrorKind::Broken);
    }

    #[test]
    fn a_refusal_names_the_other_build() {
        let mut batch = Batch::default();
        assert!(batch.push_with(3, |b| refused(b, b"other build")));
        let (id, reply) = entries(batch.bytes()).expect("ok").next().expect("one");
        assert_eq!(id, 3);
        let e = decode_one(2, reply).expect_err("refused");
        assert_eq!(e.kind(), ErrorKind::BinaryMismatch);
    }

    fn sample() -> Batch {
        let mut b = Batch::default();
        assert!(b.push(1, b"first"));
        assert!(b.push(u64::MAX, b""));
        assert!(b.push(42, &[0xff; 300]));
        b
    }

    #[test]
    fn a_batch_round_trips_in_order() {
        let b = sample();
        let got: Vec<(u64, Vec<u8>)> = entries(b.bytes())
            .expect("well formed")
            .map(|(id, body)| (id, body.to_vec()))
            .collect();
        let want = vec![
            (1, b"first".to_vec()),
            (u64::MAX, Vec::new()),
            (42, vec![0xff; 300]),
        ];
        assert_eq!(got, want);
        assert_eq!(entries(&[]).expect("empty is fine").count(), 0);
    }

    #[test]
    fn clear_keeps_nothing_of_the_last_batch() {
        let mut b = sample();
        b.clear();
        assert!(b.is_empty());
        assert!(b.bytes().is_empty());
        assert!(b.push(9, b"x"));
        assert_eq!(
            entries(b.bytes()).expect("ok").collect::<Vec<_>>(),
            [(9, &b"x"[..])]
        );
    }

    #[test]
    fn every_truncation_is_refused() {
        let b = sample();
        let bytes = b.bytes();
        // Cutting at an entry boundary leaves a shorter, valid batch; anywhere else, an error.
        let boundaries = [0, ENTRY_HEAD + 5, 2 * ENTRY_HEAD + 5, bytes.len()];
        for cut in 0..bytes.len() {
            let r = entries(&bytes[..cut]);
            assert_eq!(r.is_ok(), boundaries.contains(&cut), "cut at {cut}");
        }
    }

    #[test]
    fn a_length_past_the_end_is_refused_without_allocating_it() {
        let mut msg = sample().bytes().to_vec();
        // The second entry claims 4 GiB - 1.
        let second = ENTRY_HEAD + 5;
        msg[second + 8..second + 12].copy_from_slice(&u32::MAX.to_le_bytes());
        let e = entries(&msg).err().expect("refused");
        assert_eq!(e.offset, second);
        assert!(e.to_string().contains("past the end"), "{e}");
        // A length one byte too long, at the last entry.
        let mut msg = sample().bytes().to_vec();
        let last = 2 * ENTRY_HEAD + 5;
        msg[last + 8..last + 12].copy_from_slice(&301u32.to_le_bytes());
        assert_eq!(entries(&msg).err().map(|e| e.offset), Some(last));
        // A stray byte after the last entry is a truncated head.
        let mut msg = sample().bytes().to_vec();
        msg.push(0);
        let e = entries(&msg).err().expect("refused");
        assert_eq!(e.why, "truncated entry header");
    }

    #[test]
    fn garbage_never_panics() {
        // A cheap deterministic generator: every input is either refused or read in full.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for n in 0..2000 {
            let len = n % 64;
            let msg: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    // Small length bytes now and then, so that some inputs are well formed.
                    if x % 3 == 0 {
                        (x % 8) as u8
                    } else {
                        (x >> 24) as u8
                    }
                })
                .collect();
            if let Ok(it) = entries(&msg) {
                let read: usize = it.map(|(_, body)| ENTRY_HEAD + body.len()).sum();
                assert_eq!(read, msg.len());
            }
        }
    }

    #[test]
    fn batches_fill_to_the_cap_and_a_large_entry_goes_alone() {
        let mut b = Batch::default();
        assert!(b.fits(BATCH_BYTES * 2), "an empty batch takes anything");
        let body = vec![0u8; 1000];
        let mut n = 0;
        while b.fits(body.len()) {
            assert!(b.push(n, &body));
            n += 1;
        }
        assert!(b.bytes().len() <= BATCH_BYTES);
        assert!(b.bytes().len() + ENTRY_HEAD + body.len() > BATCH_BYTES);
        assert_eq!(entries(b.bytes()).expect("ok").count() as u64, n);
    }

    #[test]
    fn an_oversized_body_is_taken_out_again() {
        let mut b = sample();
        let before = b.bytes().to_vec();
        assert!(!b.push_limited(5, 4, |buf| buf.extend_from_slice(b"12345")));
        assert_eq!(b.bytes(), &before[..]);
        assert_eq!(entries(b.bytes()).expect("ok").count(), 3);
        assert!(b.push_limited(5, 4, |buf| buf.extend_from_slice(b"1234")));
        assert_eq!(
            entries(b.bytes()).expect("ok").last(),
            Some((5, &b"1234"[..]))
        );
    }
}
