//! The mailbox: a small task and its answer handed over in the control block's first page,
//! with no syscall when both sides are awake.
//!
//! A socket round trip costs two `sendmsg`/`recvmsg` pairs even when neither side sleeps; the
//! shared page costs a few cache lines. The caller of `apply` (a borrowed worker: no one else
//! talks to it meanwhile) writes the task's frame into `IN` and bumps `IN_SEQ`; the worker,
//! spinning after its last task (`task::spin`), sees the new sequence number, runs the task
//! and writes the answer's frame into `OUT`, then sets `OUT_SEQ` to the task's number.
//!
//! **Parking.** A side about to sleep in the kernel says so first (`WORKER_PARKED`,
//! `CALLER_PARKED`) and then looks once more; the other side writes its message first and then
//! reads the flag, ringing a *doorbell* (a one-byte frame on the socket, `msg::doorbell`) if it
//! is set. Both orders are `SeqCst`, so at least one of them sees the other's write: a message
//! is never left unseen while its reader sleeps (Dekker's handshake). A doorbell only says
//! "look": one that arrives after its message was taken is ignored.
//!
//! **What does not fit** goes by the socket as before: a frame over [`CAPACITY`], a task with
//! fds, an answer with a file. The worker then writes the answer to the socket first and sets
//! `OUT_SEQ` with [`BY_SOCKET`], so the caller reads it there.
//!
//! The bytes are copied as `u64` words with relaxed atomic loads and stores, ordered by the
//! sequence numbers' `Release`/`Acquire`: no `unsafe`, and a misbehaving peer can only garble
//! a message, which the frame's own checks then refuse (lengths are bounded by [`CAPACITY`]).

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::{Acquire, Relaxed, SeqCst};

use crate::sys::arena::GrowMap;
use crate::sys::shm::Region;

/// Offsets in the control block's first page, after `task::progress`'s fields (0..64).
const IN_SEQ: usize = 64;
const IN_LEN: usize = 72;
const OUT_SEQ: usize = 80;
const OUT_LEN: usize = 88;
const WORKER_PARKED: usize = 96;
const CALLER_PARKED: usize = 104;
/// The CPU the worker last waited on, plus one (0: not said).
const WORKER_CPU: usize = 112;
const IN: usize = 128;
/// Bytes of one message at most (a whole frame, header included).
pub(crate) const CAPACITY: usize = 1984;
const OUT: usize = IN + CAPACITY;
const _: () = assert!(OUT + CAPACITY <= crate::sys::arena::PAGE);

/// Set in `OUT_SEQ` beside the task's number: the answer went by the socket.
pub(crate) const BY_SOCKET: u64 = 1 << 63;

/// Either side's mapping of the page.
pub(crate) trait Page {
    /// The word at `offset`.
    fn word(&self, offset: usize) -> &AtomicU64;
}

impl Page for GrowMap {
    fn word(&self, offset: usize) -> &AtomicU64 {
        self.atomic_u64(offset)
    }
}

impl Page for Region {
    fn word(&self, offset: usize) -> &AtomicU64 {
        self.atomic_u64(offset)
    }
}

fn write(page: &impl Page, at: usize, bytes: &[u8]) {
    for (i, chunk) in bytes.chunks(8).enumerate() {
        let mut word = [0u8; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        page.word(at + 8 * i)
            .store(u64::from_le_bytes(word), Relaxed);
    }
}

fn read(page: &impl Page, at: usize, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len.next_multiple_of(8));
    for i in 0..len.div_ceil(8) {
        out.extend_from_slice(&page.word(at + 8 * i).load(Relaxed).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The caller's side.
pub(crate) mod caller {
    use super::*;

    /// Posts the task `frame` (a whole frame) if it fits; its number, to find its answer by.
    /// Returns with `true` when the worker is parked: ring its doorbell.
    pub(crate) fn post(page: &impl Page, frame: &[u8]) -> Option<(u64, bool)> {
        if frame.len() > CAPACITY {
            return None;
        }
        let seq = page.word(IN_SEQ).load(Relaxed).wrapping_add(1) & !BY_SOCKET;
        write(page, IN, frame);
        page.word(IN_LEN).store(frame.len() as u64, Relaxed);
        page.word(IN_SEQ).store(seq, SeqCst);
        Some((seq, page.word(WORKER_PARKED).load(SeqCst) != 0))
    }

    /// What became of task `seq`'s answer.
    #[derive(Debug, PartialEq, Eq)]
    pub(crate) enum Answer {
        /// Not yet.
        Pending,
        /// Here: its frame.
        Here(Vec<u8>),
        /// On the socket.
        BySocket,
    }

    /// Looks for task `seq`'s answer (no syscall).
    pub(crate) fn answer(page: &impl Page, seq: u64) -> Answer {
        let out = page.word(OUT_SEQ).load(Acquire);
        if out == seq | BY_SOCKET {
            return Answer::BySocket;
        }
        if out != seq {
            return Answer::Pending;
        }
        let len = (page.word(OUT_LEN).load(Relaxed) as usize).min(CAPACITY);
        Answer::Here(read(page, OUT, len))
    }

    /// About to sleep (`true`) or awake again; look once more after parking.
    pub(crate) fn park(page: &impl Page, parked: bool) {
        page.word(CALLER_PARKED).store(u64::from(parked), SeqCst);
    }

    /// The CPU the worker last waited on, if it said.
    pub(crate) fn worker_cpu(page: &impl Page) -> Option<usize> {
        (page.word(WORKER_CPU).load(Relaxed) as usize).checked_sub(1)
    }
}

/// The worker's side.
pub(crate) mod worker {
    use super::*;

    /// Takes a task newer than `last` (the number of the last one taken), if one waits.
    pub(crate) fn take(page: &impl Page, last: &mut u64) -> Option<(u64, Vec<u8>)> {
        let seq = page.word(IN_SEQ).load(Acquire);
        if seq == *last {
            return None;
        }
        *last = seq;
        let len = (page.word(IN_LEN).load(Relaxed) as usize).min(CAPACITY);
        Some((seq, read(page, IN, len)))
    }

    /// Answers task `seq` with `frame` if it fits (else returns `false`: send it by the socket,
    /// then [`by_socket`]). Returns `Some(true)` when the caller is parked: ring its doorbell.
    pub(crate) fn answer(page: &impl Page, seq: u64, frame: &[u8]) -> Option<bool> {
        if frame.len() > CAPACITY {
            return None;
        }
        write(page, OUT, frame);
        page.word(OUT_LEN).store(frame.len() as u64, Relaxed);
        page.word(OUT_SEQ).store(seq, SeqCst);
        Some(page.word(CALLER_PARKED).load(SeqCst) != 0)
    }

    /// Task `seq`'s answer was written to the socket (a parked caller wakes on it itself).
    pub(crate) fn by_socket(page: &impl Page, seq: u64) {
        page.word(OUT_SEQ).store(seq | BY_SOCKET, SeqCst);
    }

    /// About to sleep (`true`) or awake again; look once more after parking.
    pub(crate) fn park(page: &impl Page, parked: bool) {
        page.word(WORKER_PARKED).store(u64::from(parked), SeqCst);
    }

    /// Says which CPU the worker waits on: a caller borrows a worker on another CPU when it
    /// can, so that neither side's spinning takes the CPU from the other.
    pub(crate) fn waiting_on(page: &impl Page, cpu: Option<usize>) {
        let word = cpu.map_or(0, |c| c as u64 + 1);
        page.word(WORKER_CPU).store(word, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Words(Vec<AtomicU64>);

    impl Page for Words {
        fn word(&self, offset: usize) -> &AtomicU64 {
            &self.0[offset / 8]
        }
    }

    fn page() -> Words {
        Words(
            (0..crate::sys::arena::PAGE / 8)
                .map(|_| AtomicU64::new(0))
                .collect(),
        )
    }

    #[test]
    fn a_task_and_its_answer_cross_and_the_flags_say_who_sleeps() {
        let p = page();
        let mut last = 0;
        assert_eq!(worker::take(&p, &mut last), None);
        let (seq, ring) = caller::post(&p, b"a task frame").unwrap();
        assert!(!ring, "the worker is awake");
        assert_eq!(caller::answer(&p, seq), caller::Answer::Pending);
        assert_eq!(
            worker::take(&p, &mut last),
            Some((seq, b"a task frame".to_vec()))
        );
        assert_eq!(worker::take(&p, &mut last), None, "taken once");
        caller::park(&p, true);
        assert_eq!(
            worker::answer(&p, seq, b"its answer"),
            Some(true),
            "ring: parked"
        );
        caller::park(&p, false);
        assert_eq!(
            caller::answer(&p, seq),
            caller::Answer::Here(b"its answer".to_vec())
        );

        assert_eq!(caller::worker_cpu(&p), None);
        worker::waiting_on(&p, Some(0));
        assert_eq!(caller::worker_cpu(&p), Some(0));
        worker::waiting_on(&p, Some(3));
        assert_eq!(caller::worker_cpu(&p), Some(3));

        worker::park(&p, true);
        let (next, ring) = caller::post(&p, &[7; 9]).unwrap();
        assert!(ring && next != seq);
        worker::park(&p, false);
        assert_eq!(worker::take(&p, &mut last), Some((next, vec![7; 9])));
        worker::by_socket(&p, next);
        assert_eq!(caller::answer(&p, next), caller::Answer::BySocket);

        assert_eq!(
            caller::post(&p, &[0; CAPACITY + 1]),
            None,
            "too large: the socket"
        );
        assert_eq!(worker::answer(&p, next, &[0; CAPACITY + 1]), None);
        let (third, _) = caller::post(&p, &[1; CAPACITY]).unwrap();
        assert_eq!(
            worker::take(&p, &mut last),
            Some((third, vec![1; CAPACITY]))
        );
    }
}
