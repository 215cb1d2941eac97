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
    postcard::to_io(value, out)
        .map(drop)
        .map_err(|e| super::fds::explain(e.to_string()))
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
