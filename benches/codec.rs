//! The value codec and its candidates: encode and decode time and encoded size on the kinds of
//! values mproc sends between processes: mproc's own codec (`src/wire/codec/`) and postcard
//! (its codec before), measured in the same rounds.
//!
//! Codecs, all through serde (mproc's arguments and results are serde values), each called the
//! way a wire would call it: encode appends to a reused `Vec<u8>` where the API allows it,
//! decode builds an owned value from a byte slice.
//! - mproc: the crate's own codec (bincode 1's shape: fixed-width little-endian integers, u64
//!   lengths), through the hidden `mproc::__codec` (the functions the wire calls):
//!   `encode_into`, `decode`, `decode_prefix`.
//! - postcard 1, mproc's codec before, through the output flavor mproc used (`Append`, copied
//!   here): `postcard::serialize_with_flavor`, `postcard::from_bytes`. Varints.
//! - bincode 1.3, default options (fixed-width little-endian integers, u64 lengths):
//!   `bincode::serialize_into`, `bincode::deserialize`.
//! - bincode 2 with `config::standard().with_fixed_int_encoding()`:
//!   `bincode::serde::encode_into_std_write`, `bincode::serde::decode_from_slice`.
//! - bitcode 0.6 (its serde API): `bitcode::serialize`, which returns a fresh `Vec` (the serde
//!   API takes no buffer), and `bitcode::deserialize`. Columnar and bit-packed.
//! - wincode 0.4 through `serde-wincode` (wincode's own traits are derive-based, not serde):
//!   `serde_wincode::Serializer` over the `Vec`, `serde_wincode::Deserializer` over the
//!   slice; bincode 1's format. wincode 0.5+ needs Rust 1.89, past mproc's MSRV (1.85), so
//!   cargo resolves 0.4.9. Its preallocation limit (4 MiB by default: a longer sequence is an
//!   error) is raised to 1 GiB here, as mproc would have to.
//!
//! Payloads: a `u64`; a small struct `{ id: u64, name: String, values: Vec<f64> }` with 8
//! values; a `Vec<u64>` of 1,000,000 values of uniformly spread bit lengths (1 to 64 bits, so
//! small and large mixed); 10 MiB of random bytes as a plain `Vec<u8>` (serde sees a sequence
//! of `u8`) and as a `serde_bytes::ByteBuf` (serde sees one byte string); a 1 MiB `String`.
//! Every payload is round-tripped and compared once per codec before it is timed.
//!
//! Method: no harness dependency. Each (codec, operation, payload) gets a batch size that makes
//! one batch last about `BATCH_TARGET` (at least one call). Then `ROUNDS` rounds each run one
//! encode batch and one decode batch of *every* codec, in a rotated order, so that noise on a
//! shared machine hits them alike; the report is the median ns per call over the rounds, and
//! the ratios codec / postcard (above 1: slower, or larger, than postcard), postcard being the
//! reference the candidates were first measured against (mproc's row: its gain over postcard).
//!
//! Before the timings, a table of what mproc's wire needs from a codec, checked at run time:
//! `prefix` (decode one value from the front of a buffer and get the rest, as
//! `wire::codec::decode_prefix` does) and `borrow` (decode a `&[u8]` that points into the
//! input, without a copy: `serde_bytes::Bytes`). Streaming into a caller's buffer (mproc's
//! arena and memfd flavors) is a property of the API, stated in `benches/README.md`.
//!
//! Run with `cargo bench --bench codec` (about 15 s once built).

use std::hint::black_box;
use std::time::{Duration, Instant};

use postcard::ser_flavors::Flavor;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

/// Rounds per payload; every round times every codec.
const ROUNDS: usize = 21;
/// Wall time one timed batch aims for.
const BATCH_TARGET: Duration = Duration::from_millis(8);

#[derive(Clone, Copy, PartialEq)]
enum Codec {
    Postcard,
    Mproc,
    Bincode1,
    Bincode2,
    Bitcode,
    Wincode,
}

const CODECS: [Codec; 6] = [
    Codec::Postcard,
    Codec::Mproc,
    Codec::Bincode1,
    Codec::Bincode2,
    Codec::Bitcode,
    Codec::Wincode,
];

impl Codec {
    fn name(self) -> &'static str {
        match self {
            Codec::Mproc => "mproc",
            Codec::Postcard => "postcard",
            Codec::Bincode1 => "bincode 1",
            Codec::Bincode2 => "bincode 2 fix",
            Codec::Bitcode => "bitcode",
            Codec::Wincode => "wincode",
        }
    }
}

/// bincode 2 with bincode 1's integers (fixed width), varint lengths as `standard()` has.
fn bincode2_config() -> impl bincode2::config::Config {
    bincode2::config::standard().with_fixed_int_encoding()
}

/// wincode's default configuration but for the preallocation limit (1 GiB, not 4 MiB).
type WinCfg = serde_wincode::wincode::config::Configuration<true, { 1 << 30 }>;

#[derive(Serialize, Deserialize, PartialEq, Debug)]
struct Small {
    id: u64,
    name: String,
    values: Vec<f64>,
}

/// A copy of the `Append` flavor mproc's postcard codec had: postcard output appended to a `Vec`, short slices
/// (varints) stored without a `memcpy` call.
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

/// Encodes `v` into `buf`, replacing its contents.
fn encode<T: Serialize + ?Sized>(c: Codec, v: &T, buf: &mut Vec<u8>) {
    buf.clear();
    match c {
        Codec::Mproc => mproc::__codec::encode_into(v, buf).expect("mproc encode"),
        Codec::Postcard => {
            postcard::serialize_with_flavor(v, Append(buf)).expect("postcard encode");
        }
        Codec::Bincode1 => bincode::serialize_into(&mut *buf, v).expect("bincode 1 encode"),
        Codec::Bincode2 => {
            bincode2::serde::encode_into_std_write(v, buf, bincode2_config())
                .expect("bincode 2 encode");
        }
        Codec::Bitcode => *buf = bitcode::serialize(v).expect("bitcode encode"),
        Codec::Wincode => v
            .serialize(serde_wincode::Serializer::<_, WinCfg>::new(buf))
            .expect("wincode encode"),
    }
}

/// Decodes an owned `T` that fills `bytes`.
fn decode<T: DeserializeOwned>(c: Codec, bytes: &[u8]) -> T {
    match c {
        Codec::Mproc => mproc::__codec::decode(bytes).expect("mproc decode"),
        Codec::Postcard => postcard::from_bytes(bytes).expect("postcard decode"),
        Codec::Bincode1 => bincode::deserialize(bytes).expect("bincode 1 decode"),
        Codec::Bincode2 => {
            bincode2::serde::decode_from_slice(bytes, bincode2_config())
                .expect("bincode 2 decode")
                .0
        }
        Codec::Bitcode => bitcode::deserialize(bytes).expect("bitcode decode"),
        Codec::Wincode => {
            let mut input = bytes;
            T::deserialize(serde_wincode::Deserializer::<_, WinCfg>::new(&mut input))
                .expect("wincode decode")
        }
    }
}

/// Decodes a `T` from the front of `bytes`, borrowing from them: the value and the bytes after
/// it; `None` if that fails, `Some(None)` where not checked (bincode 1, no candidate: its
/// borrowing decoder keeps its position to itself).
#[allow(clippy::type_complexity)]
fn decode_prefix<'de, T: Deserialize<'de>>(
    c: Codec,
    bytes: &'de [u8],
) -> Option<Option<(T, &'de [u8])>> {
    match c {
        Codec::Mproc => mproc::__codec::decode_prefix(bytes).ok().map(Some),
        Codec::Postcard => postcard::take_from_bytes(bytes).ok().map(Some),
        Codec::Bincode1 => Some(None),
        Codec::Bincode2 => {
            let (v, used) =
                bincode2::serde::borrow_decode_from_slice(bytes, bincode2_config()).ok()?;
            Some(Some((v, &bytes[used..])))
        }
        // Only a whole buffer: trailing bytes are an error.
        Codec::Bitcode => bitcode::deserialize(bytes)
            .ok()
            .map(|v| Some((v, &bytes[bytes.len()..]))),
        Codec::Wincode => {
            let mut input = bytes;
            let v =
                T::deserialize(serde_wincode::Deserializer::<_, WinCfg>::new(&mut input)).ok()?;
            Some(Some((v, input)))
        }
    }
}

/// Decodes a `T` that fills `bytes`, borrowing from them.
fn decode_borrowed<'de, T: Deserialize<'de>>(c: Codec, bytes: &'de [u8]) -> Option<T> {
    match c {
        Codec::Mproc => mproc::__codec::decode_prefix(bytes)
            .ok()
            .and_then(|(v, rest)| rest.is_empty().then_some(v)),
        Codec::Postcard => postcard::from_bytes(bytes).ok(),
        Codec::Bincode1 => bincode::deserialize(bytes).ok(),
        Codec::Bincode2 => bincode2::serde::borrow_decode_from_slice(bytes, bincode2_config())
            .ok()
            .map(|(v, _)| v),
        Codec::Bitcode => bitcode::deserialize(bytes).ok(),
        Codec::Wincode => {
            let mut input = bytes;
            T::deserialize(serde_wincode::Deserializer::<_, WinCfg>::new(&mut input)).ok()
        }
    }
}

/// What the wire needs, checked: two values back to back, the first decoded from the front
/// and the second from the rest (`None`: not checked); and a byte string decoded as a `&[u8]`
/// that points into the input.
fn capabilities(c: Codec) -> (Option<bool>, bool) {
    let mut first = Vec::new();
    let mut second = Vec::new();
    encode(c, &(7u64, "head"), &mut first);
    encode(c, "tail", &mut second);
    let both = [first, second].concat();
    let prefix = match decode_prefix::<(u64, &str)>(c, &both) {
        Some(None) => None,
        Some(Some((head, rest))) => {
            Some(head == (7, "head") && decode_borrowed::<&str>(c, rest) == Some("tail"))
        }
        None => Some(false),
    };
    let payload = b"borrowed bytes, please";
    let mut buf = Vec::new();
    encode(c, serde_bytes::Bytes::new(payload), &mut buf);
    let range = buf.as_ptr_range();
    let borrow = decode_borrowed::<&serde_bytes::Bytes>(c, &buf)
        .is_some_and(|b| **b == payload[..] && range.contains(&b.as_ptr()));
    (prefix, borrow)
}

/// Runs `f` `iters` times; returns ns per call.
fn time_batch(iters: u64, mut f: impl FnMut()) -> f64 {
    let t = Instant::now();
    for _ in 0..iters {
        f();
    }
    t.elapsed().as_nanos() as f64 / iters as f64
}

/// The number of calls of `f` that takes about `BATCH_TARGET` (at least 1).
fn calibrate(mut f: impl FnMut()) -> u64 {
    let mut iters = 1u64;
    loop {
        let t = Instant::now();
        for _ in 0..iters {
            f();
        }
        let el = t.elapsed();
        if el >= BATCH_TARGET / 4 || iters >= 1 << 30 {
            let per = el.as_secs_f64() / iters as f64;
            return ((BATCH_TARGET.as_secs_f64() / per) as u64).max(1);
        }
        iters *= 2;
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Median encode ns, median decode ns and encoded size, per codec (in `CODECS` order).
struct Stats {
    enc: Vec<f64>,
    dec: Vec<f64>,
    size: Vec<usize>,
}

fn measure<T: Serialize + DeserializeOwned + PartialEq>(v: &T) -> Stats {
    let n = CODECS.len();
    let mut bufs = vec![Vec::new(); n];
    let mut size = vec![0; n];
    let mut enc_iters = vec![0; n];
    let mut dec_iters = vec![0; n];
    for (i, &c) in CODECS.iter().enumerate() {
        encode(c, v, &mut bufs[i]);
        size[i] = bufs[i].len();
        assert!(
            decode::<T>(c, &bufs[i]) == *v,
            "{}: round trip mismatch",
            c.name()
        );
        let buf = &mut bufs[i];
        enc_iters[i] = calibrate(|| {
            encode(c, black_box(v), buf);
            black_box(&*buf);
        });
        let buf = &bufs[i];
        dec_iters[i] = calibrate(|| drop(black_box(decode::<T>(c, black_box(buf)))));
    }
    let mut enc = vec![Vec::new(); n];
    let mut dec = vec![Vec::new(); n];
    for round in 0..ROUNDS {
        for k in 0..n {
            let i = (round + k) % n; // rotate which codec goes first
            let c = CODECS[i];
            let buf = &mut bufs[i];
            enc[i].push(time_batch(enc_iters[i], || {
                encode(c, black_box(v), buf);
                black_box(&*buf);
            }));
            let buf = &bufs[i];
            dec[i].push(time_batch(dec_iters[i], || {
                drop(black_box(decode::<T>(c, black_box(buf))));
            }));
        }
    }
    Stats {
        enc: enc.into_iter().map(median).collect(),
        dec: dec.into_iter().map(median).collect(),
        size,
    }
}

fn fmt_ns(ns: f64) -> String {
    if ns < 1e3 {
        format!("{ns:.1}ns")
    } else if ns < 1e6 {
        format!("{:.1}us", ns / 1e3)
    } else {
        format!("{:.2}ms", ns / 1e6)
    }
}

fn row<T: Serialize + DeserializeOwned + PartialEq>(name: &str, v: &T) {
    let r = measure(v);
    for (i, c) in CODECS.iter().enumerate() {
        println!(
            "{:<13} {:<14}|{:>9} {:>9} {:>9} |{:>6.2} {:>6.2} {:>6.2}",
            if i == 0 { name } else { "" },
            c.name(),
            fmt_ns(r.enc[i]),
            fmt_ns(r.dec[i]),
            r.size[i],
            r.enc[i] / r.enc[0],
            r.dec[i] / r.dec[0],
            r.size[i] as f64 / r.size[0] as f64
        );
    }
}

fn main() {
    let t0 = Instant::now();
    // xorshift64: deterministic data without a rand dependency
    let mut s: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut rnd = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };

    println!("codec: what the wire needs (checked): prefix = decode from the front, get the rest;");
    println!("       borrow = a byte string decoded as &[u8] pointing into the input");
    for c in CODECS {
        let (prefix, borrow) = capabilities(c);
        let yn = |b: bool| if b { "yes" } else { "no" };
        let prefix = prefix.map_or("-", yn);
        println!(
            "  {:<14} prefix {prefix:<4} borrow {}",
            c.name(),
            yn(borrow)
        );
    }
    println!();
    println!(
        "codec: median of {ROUNDS} interleaved rounds; r = codec/postcard (mproc = mproc's codec), >1: worse"
    );
    println!(
        "{:<13} {:<14}|{:>9} {:>9} {:>9} |{:>6} {:>6} {:>6}",
        "payload", "codec", "enc", "dec", "bytes", "r enc", "r dec", "r size"
    );

    row("u64", &0xDEAD_BEEF_u64);
    let small = Small {
        id: 123_456_789,
        name: "worker-process-1".to_string(),
        values: (0..8).map(|i| f64::from(i) * 1.5 + 0.1).collect(),
    };
    row("small struct", &small);
    // uniformly spread bit lengths 1..=64: small and large values mixed
    let ints: Vec<u64> = (0..1_000_000)
        .map(|_| {
            let r = rnd();
            r >> (r % 64)
        })
        .collect();
    row("Vec<u64> 1M", &ints);
    drop(ints);
    let bytes: Vec<u8> = (0..10 << 20).map(|_| rnd() as u8).collect();
    row("Vec<u8> 10M", &bytes);
    let bytes = ByteBuf::from(bytes);
    row("ByteBuf 10M", &bytes);
    drop(bytes);
    let text: String = (0..1 << 20)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    row("String 1M", &text);

    println!(
        "(M = 2^20 for bytes and strings, 10^6 for the u64s; total {:.1}s)",
        t0.elapsed().as_secs_f64()
    );
}
