//! The value codec: serde values to compact bytes and back.
//!
//! The codec is [postcard]. Measured against bincode 1.3 (`cargo bench --bench codec`, figures
//! in `benches/README.md`) it ties on bulk bytes and strings and is 2x slower on small structs
//! and 8-16x slower on integer-heavy values (varints); but it is maintained and its format is
//! stable, while bincode has been abandoned upstream (RUSTSEC-2025-0141; 3.0.0 is a
//! tombstone), so it is no candidate. This module is the one place to swap codecs. Encoding
//! uses postcard's format through our own output flavors (`Append`, `Spill`), which avoid a
//! `memcpy` call per varint and can move a large payload into a memfd.
//! Decoding never panics on hostile bytes: the codec checks every length against its input.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};

use postcard::ser_flavors::Flavor;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::sys::arena::GrowMap;

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
    postcard::serialize_with_flavor(value, Append(out)).map_err(|e| encode_error(value, e))
}

/// Postcard output appended to a `Vec`. Postcard writes every integer as a varint of 1-10
/// bytes through `try_extend`; `postcard::to_io` (and `extend_from_slice`) turn each into a call
/// to `memcpy`, which cost a third of an automatic-chunk `map(x*x)` (perf). Short slices are
/// appended with one capacity check and plain stores instead (a `TrustedLen` extend: 10-15%
/// faster on that `map` than pushing byte by byte, each push checking capacity).
struct Append<'a>(&'a mut Vec<u8>);

impl Flavor for Append<'_> {
    type Output = ();

    #[inline(always)]
    fn try_push(&mut self, byte: u8) -> postcard::Result<()> {
        self.0.push(byte);
        Ok(())
    }

    #[inline(always)]
    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        if data.len() <= 16 {
            // One capacity check, then plain stores (a `TrustedLen` extend), no `memcpy` call.
            self.0.extend(data.iter().copied());
        } else {
            self.0.extend_from_slice(data);
        }
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
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
    ser: postcard::Serializer<ArenaOut<'a>>,
}

impl<'a> ArenaWriter<'a> {
    /// A writer at byte `pos` of `map`'s arena.
    pub(crate) fn new(map: &'a mut GrowMap, pos: usize) -> ArenaWriter<'a> {
        ArenaWriter {
            ser: postcard::Serializer {
                output: ArenaOut {
                    map,
                    pos,
                    grow_failed: None,
                },
            },
        }
    }

    /// Appends the encoding of `value`. On an error the bytes it wrote stay past the position
    /// it started at: [`rewind`](ArenaWriter::rewind) there.
    #[inline]
    pub(crate) fn put<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), String> {
        value
            .serialize(&mut self.ser)
            .map_err(|e| match self.ser.output.grow_failed.take() {
                Some(io) => format!("cannot grow the result arena: {io}"),
                None => super::fds::explain(e.to_string()),
            })
    }

    /// The position after the last value.
    pub(crate) fn pos(&self) -> usize {
        self.ser.output.pos
    }

    /// Moves the position back to `pos` (dropping what was written past it).
    pub(crate) fn rewind(&mut self, pos: usize) {
        self.ser.output.pos = pos.min(self.ser.output.pos);
    }

    /// The map written to.
    pub(crate) fn map(&self) -> &GrowMap {
        self.ser.output.map
    }

    /// Ends the writing, giving the map back.
    pub(crate) fn into_map(self) -> &'a mut GrowMap {
        self.ser.output.map
    }
}

/// Postcard output into a worker's arena (a shared mapping that grows by doubling).
struct ArenaOut<'a> {
    map: &'a mut GrowMap,
    pos: usize,
    grow_failed: Option<std::io::Error>,
}

impl ArenaOut<'_> {
    #[cold]
    fn grow(&mut self, extra: usize) -> postcard::Result<()> {
        let need = self.pos.saturating_add(extra);
        let cap = need
            .max(self.map.capacity().saturating_mul(2))
            .max(64 << 10);
        self.map.resize(cap).map_err(|e| {
            self.grow_failed = Some(e);
            postcard::Error::SerializeBufferFull
        })
    }
}

impl Flavor for ArenaOut<'_> {
    type Output = ();

    #[inline(always)]
    fn try_push(&mut self, byte: u8) -> postcard::Result<()> {
        if self.pos >= self.map.capacity() {
            self.grow(1)?;
        }
        let pos = self.pos;
        self.map.arena_mut()[pos] = byte;
        self.pos += 1;
        Ok(())
    }

    #[inline(always)]
    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        let end = self.pos + data.len();
        if end > self.map.capacity() {
            self.grow(data.len())?;
        }
        let pos = self.pos;
        self.map.arena_mut()[pos..end].copy_from_slice(data);
        self.pos = end;
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// Decodes values one after another from a byte slice: one deserializer for all of them.
pub(crate) struct Reader<'de> {
    de: postcard::Deserializer<'de, postcard::de_flavors::Slice<'de>>,
}

impl<'de> Reader<'de> {
    /// A reader at the start of `bytes`.
    pub(crate) fn new(bytes: &'de [u8]) -> Reader<'de> {
        Reader {
            de: postcard::Deserializer::from_bytes(bytes),
        }
    }

    /// Decodes the next value. After an error the reader is lost: stop reading.
    #[inline]
    pub(crate) fn take<T: DeserializeOwned>(&mut self) -> Result<T, String> {
        T::deserialize(&mut self.de).map_err(|e| super::fds::explain(e.to_string()))
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
    postcard::take_from_bytes(bytes).map_err(|e| super::fds::explain(e.to_string()))
}

/// Decodes a `T` from `bytes`.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    postcard::from_bytes(bytes).map_err(|e| super::fds::explain(e.to_string()))
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
    let spill = Spill {
        out,
        base,
        bound: base.saturating_add(limit),
        file: None,
        inline_only: false,
    };
    postcard::serialize_with_flavor(value, spill).map_err(|e| encode_error(value, e))
}

/// The message of a failed encoding: a handle's own explanation if it raised one, else the
/// message a `Serialize` gave `ser::Error::custom`, which postcard drops (it keeps only "Serde
/// Serialization Error"): the value is serialized once more, into [`Messages`], which keeps
/// it. Only on failure: the fast path pays nothing.
fn encode_error<T: Serialize + ?Sized>(value: &T, e: postcard::Error) -> String {
    let text = super::fds::explain(e.to_string());
    if !matches!(e, postcard::Error::SerdeSerCustom) || text != e.to_string() {
        return text;
    }
    let again = value.serialize(Messages);
    // A handle met on the second pass (outside any collector) raises its own complaint,
    // which is not the cause: drop it.
    let _ = super::fds::explain(String::new());
    match again {
        Err(Message(Some(m))) => m,
        _ => text,
    }
}

/// The error of [`Messages`]: what `custom` was given.
#[derive(Debug)]
struct Message(Option<String>);

impl std::fmt::Display for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0.as_deref().unwrap_or("no message"))
    }
}

impl std::error::Error for Message {}

impl serde::ser::Error for Message {
    fn custom<M: std::fmt::Display>(msg: M) -> Message {
        Message(Some(msg.to_string()))
    }
}

/// A serializer that writes nothing and keeps the message of the first custom error.
struct Messages;

macro_rules! accept {
    ($($name:ident($($arg:ty),*);)*) => {
        $(fn $name(self, $(_: $arg),*) -> Result<(), Message> { Ok(()) })*
    };
}

impl serde::Serializer for Messages {
    type Ok = ();
    type Error = Message;
    type SerializeSeq = Messages;
    type SerializeTuple = Messages;
    type SerializeTupleStruct = Messages;
    type SerializeTupleVariant = Messages;
    type SerializeMap = Messages;
    type SerializeStruct = Messages;
    type SerializeStructVariant = Messages;

    accept! {
        serialize_bool(bool); serialize_i8(i8); serialize_i16(i16); serialize_i32(i32);
        serialize_i64(i64); serialize_i128(i128); serialize_u8(u8); serialize_u16(u16);
        serialize_u32(u32); serialize_u64(u64); serialize_u128(u128); serialize_f32(f32);
        serialize_f64(f64); serialize_char(char); serialize_str(&str); serialize_bytes(&[u8]);
        serialize_none(); serialize_unit(); serialize_unit_struct(&'static str);
        serialize_unit_variant(&'static str, u32, &'static str);
    }
    fn serialize_some<V: Serialize + ?Sized>(self, v: &V) -> Result<(), Message> {
        v.serialize(Messages)
    }
    fn serialize_newtype_struct<V: Serialize + ?Sized>(
        self,
        _: &'static str,
        v: &V,
    ) -> Result<(), Message> {
        v.serialize(Messages)
    }
    fn serialize_newtype_variant<V: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        v: &V,
    ) -> Result<(), Message> {
        v.serialize(Messages)
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Messages, Message> {
        Ok(Messages)
    }
    fn serialize_tuple(self, _: usize) -> Result<Messages, Message> {
        Ok(Messages)
    }
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Messages, Message> {
        Ok(Messages)
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Messages, Message> {
        Ok(Messages)
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Messages, Message> {
        Ok(Messages)
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Messages, Message> {
        Ok(Messages)
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Messages, Message> {
        Ok(Messages)
    }
}

macro_rules! compound {
    ($($trait:ident: $method:ident($($key:ty),*);)*) => {$(
        impl serde::ser::$trait for Messages {
            type Ok = ();
            type Error = Message;
            fn $method<V: Serialize + ?Sized>(&mut self, $(_: $key,)* v: &V) -> Result<(), Message> {
                v.serialize(Messages)
            }
            fn end(self) -> Result<(), Message> {
                Ok(())
            }
        }
    )*};
}

compound! {
    SerializeSeq: serialize_element();
    SerializeTuple: serialize_element();
    SerializeTupleStruct: serialize_field();
    SerializeTupleVariant: serialize_field();
    SerializeStruct: serialize_field(&'static str);
    SerializeStructVariant: serialize_field(&'static str);
}

impl serde::ser::SerializeMap for Messages {
    type Ok = ();
    type Error = Message;
    fn serialize_key<K: Serialize + ?Sized>(&mut self, k: &K) -> Result<(), Message> {
        k.serialize(Messages)
    }
    fn serialize_value<V: Serialize + ?Sized>(&mut self, v: &V) -> Result<(), Message> {
        v.serialize(Messages)
    }
    fn end(self) -> Result<(), Message> {
        Ok(())
    }
}

/// Bytes staged in `out` before they are written to the file.
const STAGE: usize = 64 << 10;

/// The flavor of [`encode_spilling`]: `Append` up to `limit`, then a buffered file writer.
struct Spill<'a> {
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
    fn fail(e: std::io::Error) -> postcard::Error {
        super::fds::raise(format!(
            "cannot write a large payload to shared memory: {e}"
        ));
        postcard::Error::SerializeBufferFull
    }

    /// Writes the staged bytes to the file.
    fn flush(&mut self) -> postcard::Result<()> {
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
    /// the per-integer fast path stays a comparison and a push (perf: the whole flavor call
    /// was 12% of an automatic-chunk `map(x*x)` while it was one function).
    #[cold]
    #[inline(never)]
    fn extend_slow(&mut self, data: &[u8]) -> postcard::Result<()> {
        if !self.spill() {
            return Append(&mut *self.out).try_extend(data);
        }
        self.flush()?;
        match &mut self.file {
            // Large slices go from the value straight to the file.
            Some(f) if data.len() >= STAGE => f.write_all(data).map_err(Spill::fail),
            _ => Append(&mut *self.out).try_extend(data),
        }
    }
}

impl Flavor for Spill<'_> {
    type Output = Option<OwnedFd>;

    #[inline(always)]
    fn try_push(&mut self, byte: u8) -> postcard::Result<()> {
        if self.fits(1) {
            self.out.push(byte);
            return Ok(());
        }
        self.extend_slow(&[byte])
    }

    #[inline(always)]
    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        if self.fits(data.len()) {
            return Append(&mut *self.out).try_extend(data);
        }
        self.extend_slow(data)
    }

    fn finalize(mut self) -> postcard::Result<Option<OwnedFd>> {
        self.flush()?;
        let Some(file) = self.file else {
            return Ok(None);
        };
        // Sealed before it leaves: the receiver maps it only if no one can change it any more.
        let fd = OwnedFd::from(file);
        crate::sys::shm::seal_payload(fd.as_fd()).map_err(Spill::fail)?;
        Ok(Some(fd))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    #[cfg_attr(miri, ignore = "memfd: not under Miri")]
    fn spilling_matches_the_inline_encoding() {
        let value = (
            7u64,
            serde_bytes::ByteBuf::from(vec![3u8; 300_000]),
            vec![9u64; 50_000],
        );
        let inline = encode(&value).unwrap();
        let mut out = vec![1, 2];
        assert!(
            encode_spilling(&value, &mut out, 1 << 30)
                .unwrap()
                .is_none()
        );
        assert_eq!(out[2..], inline[..]);
        let mut out = vec![1, 2];
        let fd = encode_spilling(&value, &mut out, 1000)
            .unwrap()
            .expect("spilled");
        assert_eq!(out, [1, 2], "the frame keeps only what came before");
        let mut spilled = Vec::new();
        let mut f = File::from(fd);
        std::io::Seek::rewind(&mut f).unwrap();
        f.read_to_end(&mut spilled).unwrap();
        assert_eq!(spilled, inline);
    }

    struct Refuses;
    impl Serialize for Refuses {
        fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
            Err(serde::ser::Error::custom("the disk ate it"))
        }
    }

    #[test]
    fn a_custom_serialize_error_keeps_its_message() {
        let nested = (1u8, vec![Some(Refuses)]);
        assert_eq!(encode(&nested).unwrap_err(), "the disk ate it");
        let mut out = Vec::new();
        assert_eq!(
            encode_spilling(&Refuses, &mut out, 1 << 20).unwrap_err(),
            "the disk ate it"
        );
        let text = failure::<Refuses>(Op::Encode, Role::Result, "the disk ate it");
        assert!(
            text.starts_with("cannot encode the result of type `")
                && text.ends_with("Refuses`: the disk ate it"),
            "{text}"
        );
    }

    #[test]
    #[cfg_attr(miri, ignore = "memfd: not under Miri")]
    fn spilling_from_takes_the_bytes_already_written() {
        let value = serde_bytes::ByteBuf::from(vec![5u8; 5000]);
        let mut out = vec![1, 2, 0xAB];
        let fd = encode_spilling_from(&value, &mut out, 2, 1000)
            .unwrap()
            .expect("spilled");
        assert_eq!(out, [1, 2]);
        let mut spilled = Vec::new();
        let mut f = File::from(fd);
        std::io::Seek::rewind(&mut f).unwrap();
        f.read_to_end(&mut spilled).unwrap();
        assert_eq!(spilled[0], 0xAB);
        assert_eq!(spilled[1..], encode(&value).unwrap()[..]);
    }
}
