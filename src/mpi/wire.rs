//! What ranks say to each other: message tags and the encoding of a task's outcome.
//!
//! A task travels as the very `Run` frame a local pool writes to its worker (length header
//! included), prefixed by a job id. The answer is the outcome the serving rank's local pool
//! delivered — the worker's `Done` body as is, or why there is none — re-encoded so that rank 0
//! rebuilds the same [`Error`] a local pool would have given.

use crate::error::{Error, ErrorKind, ExitStatus, RemotePanic};
use crate::pool::{Answer, Outcome};
use crate::sys::RawExit;
use crate::wire::codec;

/// Serving rank → rank 0, once its local pool runs: `[u32 local processes][identity]` (0
/// processes: the rank could not start its local pool and takes no tasks).
pub(crate) const TAG_HELLO: i32 = 0x6d70_0001;
/// Serving rank → rank 0, every [`HEARTBEAT`]: still here. Empty.
pub(crate) const TAG_BEAT: i32 = 0x6d70_0006;
/// How often a serving rank says it is alive.
pub(crate) const HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(1);
/// Rank 0 → serving rank, first: the settings of its local pool, a [`RankConfig`].
pub(crate) const TAG_CONFIG: i32 = 0x6d70_0005;
/// Rank 0 → serving rank: `[u64 job id][Run frame]`.
pub(crate) const TAG_TASK: i32 = 0x6d70_0002;
/// Serving rank → rank 0: `[u64 job id][reply]`, see [`encode_reply`].
pub(crate) const TAG_REPLY: i32 = 0x6d70_0003;
/// Rank 0 → serving rank: stop serving, finalize MPI and exit. Empty, or
/// [`STOP_SKIP_FINALIZE`].
pub(crate) const TAG_STOP: i32 = 0x6d70_0004;
/// The body of a `STOP` after a rank was lost: exit without `MPI_Finalize`. Finalizing is
/// collective in Open MPI; with a dead rank in the job (`--enable-recovery`) it can wait
/// forever.
pub(crate) const STOP_SKIP_FINALIZE: u8 = 1;

/// How a serving rank sets up its local pool; from [`Builder`](super::Builder).
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
const DIED: u8 = 2;
const TIMED_OUT: u8 = 3;
const REFUSED: u8 = 4;
const CODEC: u8 = 5;
const PROTOCOL: u8 = 6;
const OTHER: u8 = 7;

/// Prefixes `body` with a job id.
pub(crate) fn with_id(id: u64, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + body.len());
    v.extend_from_slice(&id.to_le_bytes());
    v.extend_from_slice(body);
    v
}

/// Splits a job id off a message.
pub(crate) fn split_id(msg: &[u8]) -> Option<(u64, &[u8])> {
    let (id, rest) = msg.split_first_chunk::<8>()?;
    Some((u64::from_le_bytes(*id), rest))
}

/// The reply for a task whose `Run` frame carried a foreign binary identity: `mine` is the
/// serving rank's.
pub(crate) fn refused(id: u64, mine: &[u8]) -> Vec<u8> {
    let mut v = with_id(id, &[REFUSED]);
    v.extend_from_slice(mine);
    v
}

/// Encodes the outcome a serving rank's local pool delivered for job `id`.
pub(crate) fn encode_reply(id: u64, outcome: &Outcome) -> Vec<u8> {
    let e = match outcome {
        Ok(answer) => {
            let mut v = with_id(id, &[DONE]);
            v.extend_from_slice(answer.payload());
            return v;
        }
        Err(e) => e,
    };
    match e.kind() {
        ErrorKind::Panicked => {
            let mut v = with_id(id, &[PANICKED]);
            let p = e
                .remote_panic()
                .expect("a Panicked error carries its panic");
            match codec::encode_into(p, &mut v) {
                Ok(()) => v,
                Err(err) => text(id, CODEC, &format!("cannot encode the panic: {err}")),
            }
        }
        ErrorKind::WorkerDied => {
            let (which, value) = match e.exit_status() {
                Some(s) if s.code().is_some() => (0u8, s.code().unwrap_or(0)),
                Some(s) if s.signal().is_some() => (1, s.signal().unwrap_or(0)),
                _ => (2, 0),
            };
            let mut v = with_id(id, &[DIED, which]);
            v.extend_from_slice(&value.to_le_bytes());
            v
        }
        ErrorKind::TimedOut => with_id(id, &[TIMED_OUT]),
        ErrorKind::Codec => text(id, CODEC, &e.to_string()),
        ErrorKind::Protocol => text(id, PROTOCOL, &e.to_string()),
        _ => text(id, OTHER, &e.to_string()),
    }
}

fn text(id: u64, kind: u8, msg: &str) -> Vec<u8> {
    let mut v = with_id(id, &[kind]);
    v.extend_from_slice(msg.as_bytes());
    v
}

/// Rebuilds the outcome from a reply (after its job id) sent by `rank`.
pub(crate) fn decode_reply(rank: i32, reply: &[u8]) -> Outcome {
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
            let (which, value) = match rest {
                [w, a, b, c, d] => (*w, i32::from_le_bytes([*a, *b, *c, *d])),
                _ => return Err(Error::protocol("a malformed death report")),
            };
            let raw = match which {
                0 => RawExit::Code(value),
                1 => RawExit::Signal(value),
                _ => RawExit::Unknown,
            };
            Err(Error::worker_died(ExitStatus::from_raw(raw)))
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

    fn round_trip(o: Outcome) -> Outcome {
        let bytes = encode_reply(7, &o);
        let (id, rest) = split_id(&bytes).expect("an id");
        assert_eq!(id, 7);
        decode_reply(1, rest)
    }

    #[test]
    fn outcomes_survive_the_trip() {
        let back = round_trip(Ok(Answer::Payload(vec![1, 2, 3]))).expect("done");
        assert_eq!(back.payload(), [1, 2, 3]);
        let died = Error::worker_died(ExitStatus::from_raw(RawExit::Signal(6)));
        let back = round_trip(Err(died)).expect_err("an error");
        assert_eq!(back.exit_status().and_then(|s| s.signal()), Some(6));
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
}
