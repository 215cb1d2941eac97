//! Why the value codec is postcard: postcard against bincode 1.3, encode and decode time and
//! encoded size, on the kinds of values mproc sends between processes.
//!
//! Codecs, called exactly as they would be on the wire:
//! - postcard (mproc's codec, as in `src/wire/codec.rs`): `postcard::to_io(value, &mut
//!   Vec<u8>)` to encode, `postcard::from_bytes` to decode;
//! - bincode 1.3 (default options: fixed-width little-endian integers, u64 lengths):
//!   `bincode::serialize_into(&mut Vec<u8>, value)` and `bincode::deserialize`.
//!
//! The encode buffer is reused (cleared, capacity kept) across iterations; a decode builds an
//! owned value and drops it, both inside the timed loop, for both codecs alike.
//!
//! Payloads: a `u64`; a small struct `{ id: u64, name: String, values: Vec<f64> }` with 8
//! values; a `Vec<u64>` of 1,000,000 values of uniformly spread bit lengths (1 to 64 bits,
//! so small and large mixed); 10 MiB of random bytes as a plain `Vec<u8>` (serde sees a
//! sequence of `u8`) and as a `serde_bytes::ByteBuf` (serde sees one byte string); a 1 MiB
//! `String`. Every payload is round-tripped and compared once before it is timed.
//!
//! Method: no harness dependency. Each (codec, operation, payload) gets a batch size that
//! makes one batch last about `BATCH_TARGET` (at least one call). Then `ROUNDS` rounds each
//! run one encode batch and one decode batch of *both* codecs, in alternating order, so that
//! noise on a shared machine hits both codecs alike; the report is the median ns per call over
//! the rounds, and the ratio postcard / bincode (above 1: postcard slower, or larger).
//!
//! Decision recorded here: mproc uses postcard. It is maintained and its wire format is
//! stable (1.x), it ties with bincode on bulk bytes and strings, and its encoding of integers
//! is smaller (varints: 38% fewer bytes on the `Vec<u64>`). The price is speed on
//! integer-heavy values: there varints make postcard about 15x slower to encode and 7x slower
//! to decode than bincode's fixed-width integers (`Vec<u64>` row: about 12 ms against 1 ms
//! per million integers; about 2x on the small struct). bincode is abandoned upstream (its
//! 3.0.0 release is a tombstone whose lib.rs is a single `compile_error!`), so it is not an
//! option for a new dependency; it is here only as a measuring stick, as a dev-dependency.
//!
//! Run with `cargo bench --bench codec` (under 10 s once built).

use std::hint::black_box;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

/// Rounds per payload; every round times both codecs.
const ROUNDS: usize = 31;
/// Wall time one timed batch aims for.
const BATCH_TARGET: Duration = Duration::from_millis(8);

#[derive(Clone, Copy)]
enum Codec {
    Postcard,
    Bincode,
}

#[derive(Serialize, Deserialize, PartialEq, Debug)]
struct Small {
    id: u64,
    name: String,
    values: Vec<f64>,
}

/// Encodes `v` into `buf`, replacing its contents.
fn encode<T: Serialize>(c: Codec, v: &T, buf: &mut Vec<u8>) {
    buf.clear();
    match c {
        Codec::Postcard => {
            postcard::to_io(v, &mut *buf).expect("postcard encode");
        }
        Codec::Bincode => bincode::serialize_into(&mut *buf, v).expect("bincode encode"),
    }
}

fn decode<T: DeserializeOwned>(c: Codec, bytes: &[u8]) -> T {
    match c {
        Codec::Postcard => postcard::from_bytes(bytes).expect("postcard decode"),
        Codec::Bincode => bincode::deserialize(bytes).expect("bincode decode"),
    }
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

/// Median encode ns, median decode ns and encoded size, per codec.
struct Stats {
    enc: [f64; 2],
    dec: [f64; 2],
    size: [usize; 2],
}

fn measure<T: Serialize + DeserializeOwned + PartialEq>(v: &T) -> Stats {
    const CODECS: [Codec; 2] = [Codec::Postcard, Codec::Bincode];
    let mut bufs = [Vec::new(), Vec::new()];
    let mut size = [0; 2];
    let mut enc_iters = [0; 2];
    let mut dec_iters = [0; 2];
    for (i, &c) in CODECS.iter().enumerate() {
        encode(c, v, &mut bufs[i]);
        size[i] = bufs[i].len();
        assert!(decode::<T>(c, &bufs[i]) == *v, "round trip mismatch");
        let buf = &mut bufs[i];
        enc_iters[i] = calibrate(|| {
            encode(c, black_box(v), buf);
            black_box(&*buf);
        });
        let buf = &bufs[i];
        dec_iters[i] = calibrate(|| drop(black_box(decode::<T>(c, black_box(buf)))));
    }
    let mut enc = [Vec::new(), Vec::new()];
    let mut dec = [Vec::new(), Vec::new()];
    for round in 0..ROUNDS {
        for k in 0..2 {
            let i = (round + k) % 2; // alternate which codec goes first
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
    let [e0, e1] = enc;
    let [d0, d1] = dec;
    Stats {
        enc: [median(e0), median(e1)],
        dec: [median(d0), median(d1)],
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
    let side = |i: usize| {
        format!(
            "{:>8} {:>8} {:>9}",
            fmt_ns(r.enc[i]),
            fmt_ns(r.dec[i]),
            r.size[i]
        )
    };
    println!(
        "{name:<13}|{} |{} |{:>6.2} {:>6.2} {:>6.2}",
        side(0),
        side(1),
        r.enc[0] / r.enc[1],
        r.dec[0] / r.dec[1],
        r.size[0] as f64 / r.size[1] as f64
    );
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

    println!(
        "codec: median of {ROUNDS} interleaved rounds; r = postcard/bincode, >1: postcard worse"
    );
    println!(
        "{:<13}|{:>8} {:>8} {:>9} |{:>8} {:>8} {:>9} |{:>6} {:>6} {:>6}",
        "payload",
        "pc enc",
        "pc dec",
        "pc bytes",
        "bc enc",
        "bc dec",
        "bc bytes",
        "r enc",
        "r dec",
        "r size"
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
        "(pc = postcard, bc = bincode 1.3; M = 2^20; total {:.1}s)",
        t0.elapsed().as_secs_f64()
    );
}
