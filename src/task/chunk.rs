//! A chunk of items: run in a worker, each item's outcome encoded as it finishes; decoded in
//! the parent, each item with its own result.
//!
//! # The payload
//! What a chunk's `Done` carries (after the tag), whether it comes whole from a live worker or
//! is rebuilt from a dead worker's arena:
//!
//! ```text
//! count: u64 LE   items in this payload
//! tagged: u64 LE  index (in this payload) of the first item encoded with its variant
//! items           `tagged` bare values (`R`), then `count - tagged` `ItemIn<R>`s
//! ```
//!
//! The common case — every item returned — costs no byte per item; the first item that
//! panics (or whose result cannot be encoded) switches the rest of the chunk to the tagged
//! form, where each item says whether it is a value, a panic or an encoding failure.
//!
//! # In the arena
//! The worker builds the whole `Done` frame in its arena (`sys::arena`), so sending it costs
//! no copy, and commits each item in the control block (`progress`) as it finishes: should the
//! worker die in the middle, the parent rebuilds the payload of the finished items from the
//! arena ([`rebuild`]).

use std::panic::{self, AssertUnwindSafe};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::fnref::{Callable, Reply};
use super::progress::Publisher;
use crate::error::{Error, RemotePanic};
use crate::sys::arena::GrowMap;
use crate::sys::identity::Verified;
use crate::wire::codec::{Op, Role};
use crate::wire::frame::HEADER;
use crate::wire::{codec, msg};

/// Bytes before the first item in the arena: the frame header, the `Done` tag, `count` and
/// `tagged`.
pub(crate) const PREFIX: usize = HEADER + 1 + 16;

/// An arena grown past this by a large chunk shrinks back once this many chunks in a row used
/// under an eighth of it: a worker returning large results keeps its pages (no fresh page to
/// fault in for each), one that returned one large result does not hold it forever.
const SHRINK_ABOVE: usize = 8 << 20;
const SHRINK_AFTER: u32 = 4;

/// A worker's arena, kept from one chunk to the next.
#[derive(Default)]
pub(crate) struct Arena {
    map: Option<GrowMap>,
    /// The map came from the parent (a pool worker's control block), not made here.
    shared: bool,
    /// Chunks in a row that used under an eighth of a large arena.
    small_runs: u32,
}

impl Arena {
    /// Takes the arena (and control block) the parent sent.
    pub(crate) fn set(&mut self, map: GrowMap) {
        self.map = Some(map);
        self.shared = true;
    }

    /// The control block the parent sent, whose first page holds the mailbox
    /// (`task::mailbox`); `None` in a child without one (a `Process`).
    pub(crate) fn control(&self) -> Option<&GrowMap> {
        self.map.as_ref().filter(|_| self.shared)
    }

    /// The first `len` bytes of the arena: a reply built there.
    pub(crate) fn bytes(&self, len: usize) -> Option<&[u8]> {
        self.map.as_ref()?.arena().get(..len)
    }

    /// Shrinks a large arena after a run of small chunks; `used` is what the last one took.
    fn settle_size(map: &mut GrowMap, small_runs: &mut u32, used: usize) {
        if map.capacity() <= SHRINK_ABOVE {
            return;
        }
        if used < map.capacity() / 8 {
            *small_runs += 1;
        } else {
            *small_runs = 0;
        }
        if *small_runs >= SHRINK_AFTER {
            *small_runs = 0;
            let _ = map.resize(64 << 10);
        }
    }
}

/// An item's outcome in the tagged form (worker side; the variants match [`ItemIn`]).
#[derive(Serialize)]
enum ItemOut<'a, T> {
    Ok(&'a T),
    Panic(&'a RemotePanic),
    Failed(&'a str),
}

/// An item's outcome in the tagged form (parent side).
#[derive(Deserialize)]
enum ItemIn<T> {
    Ok(T),
    Panic(RemotePanic),
    Failed(String),
}

/// What a chunk run needs from the serve loop.
pub(crate) struct RunCx<'a> {
    /// The arena (and control block) the results go to; made on first use where the parent
    /// sent none (a `Process`).
    pub(crate) arena: &'a mut Arena,
    /// The first item to run: those before it were settled by an earlier run.
    pub(crate) skip: usize,
    /// Set by the run when its reply is the first `in_arena` bytes of the arena rather than
    /// `Reply::frame`.
    pub(crate) in_arena: usize,
    /// The identity check that admitted the run: it admits the offsets inside its argument
    /// too (a state's constructor).
    pub(crate) proof: &'a Verified,
}

/// Decodes a chunk of arguments and runs `f` on each from `cx.skip` on; a panic fails only
/// its own item. Called by the chunk trampoline.
pub(crate) fn run<F: Callable>(f: F, arg: &[u8], cx: &mut RunCx<'_>) -> Reply {
    // A panic in serde code decoding the arguments fails the chunk, not the worker.
    panic::catch_unwind(AssertUnwindSafe(|| run_inner(f, arg, cx)))
        .unwrap_or_else(crate::task::panic::panic_reply)
}

fn run_inner<F: Callable>(f: F, arg: &[u8], cx: &mut RunCx<'_>) -> Reply {
    let Arena {
        map, small_runs, ..
    } = &mut *cx.arena;
    let map = match map {
        Some(map) => map,
        None => match GrowMap::anonymous() {
            Ok(m) => map.insert(m),
            Err(e) => {
                let why = format!("cannot make a result arena: {e}");
                return Reply::inline(msg::failed(&why), false);
            }
        },
    };
    if map.capacity() < PREFIX {
        if let Err(e) = map.resize(64 << 10) {
            let why = format!("cannot size the result arena: {e}");
            return Reply::inline(msg::failed(&why), false);
        }
    }
    let publisher = Publisher::begin(map, cx.skip);
    let items: Vec<F::Args> = match codec::decode(arg) {
        Ok(a) => a,
        Err(e) => {
            let why = codec::failure::<Vec<F::Args>>(Op::Decode, Role::Arguments, &e);
            return Reply::inline(msg::failed(&why), false);
        }
    };
    let n = items.len();
    let skip = cx.skip.min(n);
    publisher.counted(map, n);
    let mut w = codec::ArenaWriter::new(map, PREFIX);
    let mut tagged: Option<usize> = None;
    let mut items = items.into_iter().enumerate().skip(skip);
    // One `catch_unwind` (and one backtrace marker) for the run of items up to a failure,
    // not one per item: the loop starts again after each item that panicked or whose result
    // could not be encoded, which is then recorded in its place.
    loop {
        // The item running, and where its outcome starts.
        let mut at = (0, 0);
        let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
            crate::sys::frames::short_backtrace_base(|| {
                for (k, a) in items.by_ref() {
                    at = (k, w.pos());
                    let v = f.invoke(a);
                    match tagged {
                        None => w.put(&v),
                        Some(_) => w.put(&ItemOut::Ok(&v)),
                    }?;
                    publisher.commit(w.map(), k + 1, w.pos() - PREFIX);
                }
                Ok::<(), String>(())
            })
        }));
        let (k, start) = at;
        let written = match outcome {
            Ok(Ok(())) => break,
            Err(payload) => {
                w.rewind(start);
                let p = crate::task::panic::panic_report(payload);
                tag_from(&mut tagged, &publisher, &w, k);
                w.put(&ItemOut::<()>::Panic(&p))
            }
            Ok(Err(e)) => {
                w.rewind(start);
                let why = codec::failure::<F::Out>(Op::Encode, Role::Result, &e);
                tag_from(&mut tagged, &publisher, &w, k);
                w.put(&ItemOut::<()>::Failed(&why))
            }
        };
        if let Err(e) = written {
            let why = format!("cannot record an item's failure: {e}");
            return Reply::inline(msg::failed(&why), false);
        }
        publisher.commit(w.map(), k + 1, w.pos() - PREFIX);
    }
    let pos = w.pos();
    let map = w.into_map();
    let count = (n - skip) as u64;
    let tagged = tagged.map_or(count, |t| (t - skip) as u64);
    let arena = map.arena_mut();
    msg::write_done_header(&mut arena[..HEADER + 1], pos - HEADER);
    arena[HEADER + 1..HEADER + 9].copy_from_slice(&count.to_le_bytes());
    arena[HEADER + 9..PREFIX].copy_from_slice(&tagged.to_le_bytes());
    Arena::settle_size(map, small_runs, pos);
    let payload = &map.arena()[HEADER + 1..pos];
    if payload.len() > msg::SPILL_LIMIT {
        // A large result crosses as shared pages, not through the socket.
        if let Ok(file) = codec::spill_bytes(payload) {
            return Reply {
                frame: msg::done_spilled(),
                ok: true,
                file: Some(file),
            };
        }
    }
    cx.in_arena = pos;
    Reply::inline(Vec::new(), true)
}

/// Items from `k` on are encoded with their variant, unless an earlier one switched already.
fn tag_from(tagged: &mut Option<usize>, publisher: &Publisher, w: &codec::ArenaWriter, k: usize) {
    if tagged.is_none() {
        *tagged = Some(k);
        publisher.tagged_from(w.map(), k);
    }
}

/// Rebuilds the payload of a dead worker's finished items: `count` of them, the first
/// `tagged` bare, from the committed arena bytes `items`. Returned as a `Done` body.
pub(crate) fn rebuild(count: u64, tagged: u64, items: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(17 + items.len());
    body.push(msg::DONE_TAG);
    body.extend_from_slice(&count.to_le_bytes());
    body.extend_from_slice(&tagged.min(count).to_le_bytes());
    body.extend_from_slice(items);
    body
}

/// A chunk's payload, its header checked.
pub(crate) struct Items<'a> {
    count: usize,
    tagged: usize,
    bytes: &'a [u8],
}

impl<'a> Items<'a> {
    /// Reads the header of a payload.
    pub(crate) fn parse(payload: &'a [u8]) -> Result<Items<'a>, Error> {
        let bad = || Error::protocol("a chunk's reply is shorter than its header");
        let count = payload.get(..8).ok_or_else(bad)?;
        let tagged = payload.get(8..16).ok_or_else(bad)?;
        let count = u64::from_le_bytes(count.try_into().expect("8 bytes"));
        let tagged = u64::from_le_bytes(tagged.try_into().expect("8 bytes"));
        if tagged > count {
            return Err(Error::protocol("a chunk's reply has a bad layout"));
        }
        // The count is not checked against the bytes: an item may encode to none (`()`).
        // Nothing is sized by it beyond what the bytes could hold (see `size_hint`).
        let bytes = &payload[16..];
        Ok(Items {
            count: count as usize,
            tagged: tagged as usize,
            bytes,
        })
    }

    /// Items in the payload.
    pub(crate) fn count(&self) -> usize {
        self.count
    }

    /// Room to reserve for the decoded items: their count, but never more than one per byte
    /// (plus one), so that a lying count cannot make the decoder allocate what was never sent.
    pub(crate) fn size_hint(&self) -> usize {
        self.count.min(self.bytes.len() + 1)
    }

    /// Appends every item's value to `out`, in order, up to the first that failed, whose
    /// error it returns (`out.len()` then counts the items before it). The hot path of a
    /// `map`: one tight loop per form, no call per item. An undecodable item is `Err`.
    pub(crate) fn decode_values<R: DeserializeOwned>(
        self,
        out: &mut Vec<R>,
    ) -> Result<Option<Error>, Error> {
        out.reserve(self.size_hint());
        let mut r = codec::Reader::new(self.bytes);
        for _ in 0..self.tagged {
            out.push(r.take::<R>().map_err(Error::codec)?);
        }
        for _ in self.tagged..self.count {
            match r.take::<ItemIn<R>>().map_err(Error::codec)? {
                ItemIn::Ok(v) => out.push(v),
                ItemIn::Panic(p) => return Ok(Some(Error::panicked(p))),
                ItemIn::Failed(why) => return Ok(Some(Error::codec(why))),
            }
        }
        Ok(None)
    }

    /// Decodes every item in order into `each`; stops early when `each` returns false. An
    /// undecodable item (and every one after it, which cannot be found) gives `Err` once.
    pub(crate) fn decode_each<R: DeserializeOwned>(
        self,
        mut each: impl FnMut(Result<R, Error>) -> bool,
    ) -> Result<(), Error> {
        // Bytes past the last item are ignored: a worker killed between committing an item's
        // bytes and its index leaves that item's bytes in the arena, uncounted.
        let mut r = codec::Reader::new(self.bytes);
        for _ in 0..self.tagged {
            let v = r.take::<R>().map_err(Error::codec)?;
            if !each(Ok(v)) {
                return Ok(());
            }
        }
        for _ in self.tagged..self.count {
            let v = match r.take::<ItemIn<R>>().map_err(Error::codec)? {
                ItemIn::Ok(v) => Ok(v),
                ItemIn::Panic(p) => Err(Error::panicked(p)),
                ItemIn::Failed(why) => Err(Error::codec(why)),
            };
            if !each(v) {
                return Ok(());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_that_encode_to_nothing_decode_by_their_count() {
        let body = rebuild(1000, 1000, &[]);
        let parsed = Items::parse(&body[1..]).unwrap();
        assert_eq!(
            parsed.size_hint(),
            1,
            "reserves by the bytes, not the claimed count"
        );
        let mut n = 0;
        parsed
            .decode_each::<()>(|r| {
                r.unwrap();
                n += 1;
                true
            })
            .unwrap();
        assert_eq!(n, 1000);
    }

    #[test]
    fn rebuilt_payloads_decode_bare_then_tagged_items() {
        let mut items = Vec::new();
        codec::encode_into(&5u64, &mut items).unwrap();
        let p = RemotePanic {
            message: "boom".into(),
            location: None,
            backtrace: None,
        };
        codec::encode_into(&ItemOut::<u64>::Panic(&p), &mut items).unwrap();
        codec::encode_into(&ItemOut::Ok(&6u64), &mut items).unwrap();
        codec::encode_into(&ItemOut::<u64>::Failed("nope"), &mut items).unwrap();
        let body = rebuild(4, 1, &items);
        let parsed = Items::parse(&body[1..]).unwrap();
        assert_eq!(parsed.count(), 4);
        let mut got = Vec::new();
        parsed
            .decode_each::<u64>(|r| {
                got.push(r);
                true
            })
            .unwrap();
        assert_eq!(*got[0].as_ref().unwrap(), 5);
        assert_eq!(
            got[1]
                .as_ref()
                .unwrap_err()
                .remote_panic()
                .unwrap()
                .message(),
            "boom"
        );
        assert_eq!(*got[2].as_ref().unwrap(), 6);
        assert_eq!(got[3].as_ref().unwrap_err().kind(), crate::ErrorKind::Codec);
    }
}
