//! The value codec: serde values to compact bytes and back.
//!
//! # The format
//! A small serde format of mproc's own, in the shape of bincode 1's:
//! - integers (`u8`..`u128`, `i8`..`i128`) fixed-width little-endian; `f32`/`f64` as their
//!   bits; `bool` one byte, 0 or 1 (decoding refuses any other); `char` as its `u32`
//!   (validated);
//! - `str`, bytes (`serialize_bytes`, `serde_bytes`), sequences and maps: the length as a `u64`,
//!   then the bytes or the elements (a map's keys and values alternating);
//! - `Option`: a tag byte, 0 (`None`) or 1 then the value; an enum's variant: its index as a
//!   `u32`, then its data; unit and unit structs: nothing; newtypes, tuples and structs: their
//!   fields in order, without names.
//!
//! It is not self-describing: `deserialize_any` (untagged or internally tagged enums,
//! `#[serde(flatten)]`), `deserialize_ignored_any` and `deserialize_identifier` are refused
//! with an error saying so; a sequence or map whose `Serialize` gives no length cannot be
//! encoded (its length goes first), as with postcard before. Both ends of every mproc channel
//! run the same build (a worker's build id is checked against its parent's), so the format
//! needs no stability across versions and may change with any release.
//!
//! # Why one of our own
//! It is the product's hot path: a `map(x*x)` with automatic chunks spent about 45% of its
//! time in postcard, mproc's codec before this one, decoding and encoding varints.
//! `cargo bench --bench codec` (figures in `benches/README.md`) measured the candidates: the
//! fixed-width codecs (bincode 1 and 2, wincode) encode a `Vec<u64>` 20-25x faster than
//! postcard and a `u64` or a small struct 1.5-3x faster, alike: the speed is in the format.
//! But bincode is abandoned upstream (RUSTSEC-2025-0141), bitcode can neither decode a prefix
//! nor borrow bytes nor write into a caller's buffer (and is slow through serde), and
//! wincode's serde support is a separate 0.1 crate by one author, on an MSRV past mproc's.
//! The format is small enough to own (the encoder and decoder are about 700 lines, no
//! `unsafe`), and it writes straight into mproc's own outputs (below), which no candidate's
//! API allowed as simply. Measured after the switch: it encodes like bincode 1 and decodes
//! a `Vec<u64>` 10x faster than postcard (the table in `benches/README.md`).
//!
//! # Outputs
//! The encoder writes to an [`Output`]: [`Append`] (a `Vec`), [`ArenaOut`] (a worker's result
//! arena, see `task::progress`) or [`Spill`] (a `Vec` up to a limit, then a memfd).
//!
//! # Hostile input
//! Decoding never panics and never allocates more than the input backs: every length is
//! checked against the bytes left before anything is taken or allocated (and a sequence
//! preallocates no more elements than bytes left), elements that decode from no bytes are
//! budgeted (see `de::FREE_BUDGET`), and nesting is bounded by [`MAX_DEPTH`] on both sides,
//! so that a deeply recursive value is an error, not a stack overflow.

mod de;
mod ser;
#[cfg(test)]
mod tests;

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::sys::arena::GrowMap;

/// The deepest nesting of compound values (sequences, maps, tuples, structs, `Some`, enum
/// variants with data, newtypes) the codec writes or reads: far past any non-recursive type,
/// and within a thread's default stack (2 MiB) even in a debug build. A recursive value
/// deeper than this (a linked list of some 127 `Option<Box<_>>` nodes) is a clear error on
/// both sides, never a stack overflow: a hostile or corrupt message cannot crash the reader.
pub(crate) const MAX_DEPTH: u32 = 256;

/// How many compound values are open around the one being written or read: both sides refuse
/// to go past [`MAX_DEPTH`], before the stack runs out.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Depth(u32);

impl Depth {
    /// Opens one more level; refused past [`MAX_DEPTH`].
    #[inline(always)]
    pub(crate) fn enter(&mut self) -> Result<(), Error> {
        if self.0 >= MAX_DEPTH {
            return Err(Error::too_deep());
        }
        self.0 += 1;
        Ok(())
    }

    /// Closes the level last opened.
    #[inline(always)]
    pub(crate) fn leave(&mut self) {
        self.0 -= 1;
    }
}

/// A codec error: its message, kept whole (a custom `Serialize` or `Deserialize` error's text
/// included). One pointer wide, so that every `Result` of the hot path fits in registers
/// (a `Box<str>` cost decoding a `u64` 60%).
#[derive(Debug)]
#[allow(
    clippy::box_collection,
    reason = "one pointer, not three: the Box is the point (the allocation happens on errors only)"
)]
pub(crate) struct Error(Box<String>);

impl Error {
    #[cold]
    fn eof() -> Error {
        Error(Box::new("the input ends inside a value".into()))
    }

    #[cold]
    fn too_deep() -> Error {
        Error(Box::new(format!(
            "values nest deeper than {MAX_DEPTH} levels"
        )))
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl serde::ser::Error for Error {
    #[cold]
    fn custom<M: std::fmt::Display>(msg: M) -> Error {
        Error(Box::new(msg.to_string()))
    }
}

impl serde::de::Error for Error {
    #[cold]
    fn custom<M: std::fmt::Display>(msg: M) -> Error {
        Error(Box::new(msg.to_string()))
    }
}

/// Where the encoder's bytes go.
pub(crate) trait Output {
    /// Appends `bytes` (a string's or a byte string's body: any length).
    fn put(&mut self, bytes: &[u8]) -> Result<(), Error>;

    /// Appends a fixed-width integer, a length or a tag: a few bytes, their number known when
    /// compiled, so that an implementation can store them without a `memcpy` call.
    #[inline(always)]
    fn put_array<const N: usize>(&mut self, bytes: [u8; N]) -> Result<(), Error> {
        self.put(&bytes)
    }
}

/// Which way a value failed to cross.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    Encode,
    Decode,
}

/// Which value failed to cross: a task's argument (or a chunk's arguments) or its result.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    Argument,
    Arguments,
    Result,
    #[allow(
        dead_code,
        reason = "a whole chunk's results never fail to encode as one"
    )]
    Results,
}

/// The text of a codec failure, naming the side and the type:
/// "cannot encode the result of type `T`: <the codec's message>". Every place that encodes or
/// decodes a task's values (the worker's trampolines, `Process`, the pool) builds its error
/// with this, so that a failure says which value, of which type, and why.
pub(crate) fn failure<T: ?Sized>(op: Op, role: Role, why: &str) -> String {
    let op = match op {
        Op::Encode => "encode",
        Op::Decode => "decode",
    };
    let role = match role {
        Role::Argument => "the argument",
        Role::Arguments => "the arguments",
        Role::Result => "the result",
        Role::Results => "the results",
    };
    format!(
        "cannot {op} {role} of type `{}`: {why}",
        std::any::type_name::<T>()
    )
}

/// Appends the encoding of `value` to `out`.
pub(crate) fn encode_into<T: Serialize + ?Sized>(
    value: &T,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    value
        .serialize(&mut ser::Serializer::new(Append(out)))
        .map_err(|e| e.to_string())
}

/// Output appended to a `Vec`: a fixed-width value is one capacity check and a store.
pub(crate) struct Append<'a>(pub(crate) &'a mut Vec<u8>);

impl Output for Append<'_> {
    #[inline(always)]
    fn put(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.0.extend_from_slice(bytes);
        Ok(())
    }

    #[inline(always)]
    fn put_array<const N: usize>(&mut self, bytes: [u8; N]) -> Result<(), Error> {
        // Known when compiled: a byte is a push (a `Vec<u8>` element by element: 1.5x faster
        // than a one-byte `extend_from_slice`).
        if N == 1 {
            self.0.push(bytes[0]);
        } else {
            self.0.extend_from_slice(&bytes);
        }
        Ok(())
    }
}

/// Encodes `value` into the arena of `map` at byte `pos`, growing the arena as needed;
/// returns the position after it.
#[cfg(test)]
pub(crate) fn encode_at<T: Serialize + ?Sized>(
    value: &T,
    map: &mut GrowMap,
    pos: usize,
) -> Result<usize, String> {
    let mut w = ArenaWriter::new(map, pos);
    w.put(value)?;
    Ok(w.pos())
}

/// Encodes values one after another into a worker's arena, from a position on, growing the
/// arena as needed: the worker's chunk results go this way, straight into the memory its
/// parent can read back should the worker die (see `task::progress`). One serializer for the
/// whole chunk: a value costs what it would inside one `Vec`.
pub(crate) struct ArenaWriter<'a> {
    ser: ser::Serializer<ArenaOut<'a>>,
}

impl<'a> ArenaWriter<'a> {
    /// A writer at byte `pos` of `map`'s arena.
    pub(crate) fn new(map: &'a mut GrowMap, pos: usize) -> ArenaWriter<'a> {
        ArenaWriter {
            ser: ser::Serializer::new(ArenaOut { map, pos }),
        }
    }

    /// Appends the encoding of `value`. On an error the bytes it wrote stay past the position
    /// it started at: [`rewind`](ArenaWriter::rewind) there.
    #[inline]
    pub(crate) fn put<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), String> {
        // A failed value may have left its nesting open.
        self.ser.depth = Depth::default();
        value.serialize(&mut self.ser).map_err(|e| e.to_string())
    }

    /// The position after the last value.
    pub(crate) fn pos(&self) -> usize {
        self.ser.out.pos
    }

    /// Moves the position back to `pos` (dropping what was written past it).
    pub(crate) fn rewind(&mut self, pos: usize) {
        self.ser.out.pos = pos.min(self.ser.out.pos);
    }

    /// The map written to.
    pub(crate) fn map(&self) -> &GrowMap {
        self.ser.out.map
    }

    /// Ends the writing, giving the map back.
    pub(crate) fn into_map(self) -> &'a mut GrowMap {
        self.ser.out.map
    }
}

/// Output into a worker's arena (a shared mapping that grows by doubling).
pub(crate) struct ArenaOut<'a> {
    map: &'a mut GrowMap,
    pos: usize,
}

impl ArenaOut<'_> {
    #[cold]
    #[inline(never)]
    fn grow(&mut self, extra: usize) -> Result<(), Error> {
        let need = self.pos.saturating_add(extra);
        let cap = need
            .max(self.map.capacity().saturating_mul(2))
            .max(64 << 10);
        self.map
            .resize(cap)
            .map_err(|e| Error(Box::new(format!("cannot grow the result arena: {e}"))))
    }
}

impl Output for ArenaOut<'_> {
    #[inline(always)]
    fn put(&mut self, bytes: &[u8]) -> Result<(), Error> {
        let end = self.pos.saturating_add(bytes.len());
        if end > self.map.capacity() {
            self.grow(bytes.len())?;
        }
        let pos = self.pos;
        self.map.arena_mut()[pos..end].copy_from_slice(bytes);
        self.pos = end;
        Ok(())
    }

    #[inline(always)]
    fn put_array<const N: usize>(&mut self, bytes: [u8; N]) -> Result<(), Error> {
        self.put(&bytes)
    }
}

/// Decodes values one after another from a byte slice: one deserializer for all of them.
pub(crate) struct Reader<'de> {
    de: de::Deserializer<'de>,
}

impl<'de> Reader<'de> {
    /// A reader at the start of `bytes`.
    pub(crate) fn new(bytes: &'de [u8]) -> Reader<'de> {
        Reader {
            de: de::Deserializer::new(bytes),
        }
    }

    /// Decodes the next value. After an error the reader is lost: stop reading.
    #[inline]
    pub(crate) fn take<T: DeserializeOwned>(&mut self) -> Result<T, String> {
        self.de.restart();
        T::deserialize(&mut self.de).map_err(|e| e.to_string())
    }
}

/// Writes `bytes` into a fresh sealed payload file (see `sys::shm::Payload`), for a payload
/// built elsewhere that is too large for the socket.
pub(crate) fn spill_bytes(bytes: &[u8]) -> std::io::Result<OwnedFd> {
    let fd = crate::sys::shm::payload_file("result")?;
    let mut file = File::from(fd);
    file.write_all(bytes)?;
    let fd = OwnedFd::from(file);
    crate::sys::shm::seal_payload(fd.as_fd())?;
    Ok(fd)
}

/// The encoding of `value`.
#[cfg(test)]
pub(crate) fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    encode_into(value, &mut out)?;
    Ok(out)
}

/// Decodes a `T` from the start of `bytes`; returns it and the bytes after it.
pub(crate) fn decode_prefix<'de, T: serde::Deserialize<'de>>(
    bytes: &'de [u8],
) -> Result<(T, &'de [u8]), String> {
    take_prefix(bytes).map_err(|e| e.to_string())
}

/// Decodes a `T` that fills `bytes` (bytes left over are an error).
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    match take_prefix(bytes) {
        Ok((value, [])) => Ok(value),
        Ok((_, rest)) => Err(format!(
            "{} bytes are left over after the value",
            rest.len()
        )),
        Err(e) => Err(e.to_string()),
    }
}

/// [`decode_prefix`] with the codec's own (one-pointer) error: the fast path returns in
/// registers.
#[inline(always)]
fn take_prefix<'de, T: serde::Deserialize<'de>>(bytes: &'de [u8]) -> Result<(T, &'de [u8]), Error> {
    let mut de = de::Deserializer::new(bytes);
    let value = T::deserialize(&mut de)?;
    Ok((value, de.input))
}

/// Encodes `value` after `out[..base]`. If the encoding outgrows `limit` bytes it moves, whole,
/// into a fresh anonymous file (memfd) that is returned, and `out` is left at `base`: a large
/// payload then reaches its receiver through shared pages (one copy in, mapped on the other
/// side) instead of a socket (a copy into and one out of the kernel, and a fresh buffer on each
/// side). Large slices inside the value (`serde_bytes`, strings) are written straight from the
/// value to the file, never staged. Without memfd the payload stays in `out`.
pub(crate) fn encode_spilling<T: Serialize + ?Sized>(
    value: &T,
    out: &mut Vec<u8>,
    limit: usize,
) -> Result<Option<OwnedFd>, String> {
    let base = out.len();
    encode_spilling_from(value, out, base, limit)
}

/// [`encode_spilling`] of a payload that starts at `out[base..]` with bytes already written
/// there (a layout byte, say): if it spills, the file holds those bytes first and `out` is
/// left at `base`.
pub(crate) fn encode_spilling_from<T: Serialize + ?Sized>(
    value: &T,
    out: &mut Vec<u8>,
    base: usize,
    limit: usize,
) -> Result<Option<OwnedFd>, String> {
    let base = base.min(out.len());
    let mut ser = ser::Serializer::new(Spill {
        out,
        base,
        bound: base.saturating_add(limit),
        file: None,
        inline_only: false,
    });
    let encoded = value.serialize(&mut ser).and_then(|()| ser.out.finish());
    encoded.map_err(|e| e.to_string())
}

/// Bytes staged in `out` before they are written to the file.
const STAGE: usize = 64 << 10;

/// The output of [`encode_spilling`]: `Append` up to `limit`, then a buffered file writer.
pub(crate) struct Spill<'a> {
    out: &'a mut Vec<u8>,
    base: usize,
    /// `out` may grow to this length as it is (the fast path's one comparison): `base + limit`
    /// while inline, `base + STAGE` once in a file, unbounded without memfd.
    bound: usize,
    file: Option<File>,
    /// No anonymous file could be made (no memfd here): stay inline, do not retry.
    inline_only: bool,
}

impl Spill<'_> {
    #[cold]
    fn fail(e: std::io::Error) -> Error {
        Error(Box::new(format!(
            "cannot write a large payload to shared memory: {e}"
        )))
    }

    /// Writes the staged bytes to the file.
    fn flush(&mut self) -> Result<(), Error> {
        if let Some(f) = &mut self.file {
            f.write_all(&self.out[self.base..]).map_err(Spill::fail)?;
            self.out.truncate(self.base);
        }
        Ok(())
    }

    /// Moves to a file (called once the encoding passes the limit); `false` without memfd.
    fn spill(&mut self) -> bool {
        if self.file.is_none() && !self.inline_only {
            match crate::sys::shm::payload_file("payload") {
                Ok(fd) => self.file = Some(File::from(fd)),
                Err(_) => self.inline_only = true,
            }
        }
        self.bound = if self.file.is_some() {
            self.base + STAGE
        } else {
            usize::MAX
        };
        self.file.is_some()
    }

    /// True when `more` bytes can be appended to `out` as they are.
    #[inline(always)]
    fn fits(&self, more: usize) -> bool {
        self.out.len().saturating_add(more) <= self.bound
    }

    /// Past the bound: move to (or flush into) the file, then append. Out of line, so that
    /// the per-integer fast path stays a comparison and a store (perf: the whole output call
    /// was 12% of an automatic-chunk `map(x*x)` while it was one function).
    #[cold]
    #[inline(never)]
    fn put_slow(&mut self, bytes: &[u8]) -> Result<(), Error> {
        if !self.spill() {
            return Append(&mut *self.out).put(bytes);
        }
        self.flush()?;
        match &mut self.file {
            // Large slices go from the value straight to the file.
            Some(f) if bytes.len() >= STAGE => f.write_all(bytes).map_err(Spill::fail),
            _ => Append(&mut *self.out).put(bytes),
        }
    }

    /// Ends the encoding: the sealed file if it spilled.
    fn finish(&mut self) -> Result<Option<OwnedFd>, Error> {
        self.flush()?;
        let Some(file) = self.file.take() else {
            return Ok(None);
        };
        // Sealed before it leaves: the receiver maps it only if no one can change it any more.
        let fd = OwnedFd::from(file);
        crate::sys::shm::seal_payload(fd.as_fd()).map_err(Spill::fail)?;
        Ok(Some(fd))
    }
}

impl Output for Spill<'_> {
    #[inline(always)]
    fn put(&mut self, bytes: &[u8]) -> Result<(), Error> {
        if self.fits(bytes.len()) {
            return Append(&mut *self.out).put(bytes);
        }
        self.put_slow(bytes)
    }

    #[inline(always)]
    fn put_array<const N: usize>(&mut self, bytes: [u8; N]) -> Result<(), Error> {
        if self.fits(N) {
            return Append(&mut *self.out).put_array(bytes);
        }
        self.put_slow(&bytes)
    }
}
