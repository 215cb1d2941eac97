//! The value codec: serde values to compact bytes and back.
//!
//! The codec is [postcard]. Measured against bincode 1.3 (`cargo bench --bench codec`, figures
//! in `benches/README.md`) it ties on bulk bytes and strings and is 2x slower on small structs
//! and 8-16x slower on integer-heavy values (varints); but it is maintained and its format is
//! stable, while bincode has been abandoned upstream. This module is the one place to swap
//! codecs (a fixed-width, maintained codec is a candidate for the performance work).
//! Decoding never panics on hostile bytes: the codec checks every length against its input.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Appends the encoding of `value` to `out`.
pub(crate) fn encode_into<T: Serialize + ?Sized>(
    value: &T,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    postcard::serialize_with_flavor(value, Append(out))
        .map_err(|e| super::fds::explain(e.to_string()))
}

/// Postcard output appended to a `Vec`. Postcard writes every integer as a varint of 1-10
/// bytes through `try_extend`; `postcard::to_io` (and `extend_from_slice`) turn each into a call
/// to `memcpy`, which cost a third of an automatic-chunk `map(x*x)` (perf). Short slices are
/// pushed byte by byte instead.
struct Append<'a>(&'a mut Vec<u8>);

impl postcard::ser_flavors::Flavor for Append<'_> {
    type Output = ();

    #[inline]
    fn try_push(&mut self, byte: u8) -> postcard::Result<()> {
        self.0.push(byte);
        Ok(())
    }

    #[inline]
    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        if data.len() <= 16 {
            self.0.reserve(data.len());
            for &b in data {
                self.0.push(b);
            }
        } else {
            self.0.extend_from_slice(data);
        }
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// The encoding of `value`.
#[cfg(test)]
pub(crate) fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    encode_into(value, &mut out)?;
    Ok(out)
}

/// Decodes a `T` from `bytes`.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    postcard::from_bytes(bytes).map_err(|e| super::fds::explain(e.to_string()))
}
