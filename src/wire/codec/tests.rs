//! The codec's tests: the format byte by byte, round trips of every serde data-model type
//! (and a property test of them), hostile input, errors that keep their message. Pure Rust
//! but for the memfd tests, so that they run under Miri (`cargo +nightly miri test --lib
//! wire::`).

use std::collections::BTreeMap;
use std::io::Read;

use serde::{Deserialize, Serialize};
use serde_bytes::{ByteBuf, Bytes};

use super::*;

/// `v` encoded, then decoded back as a `T`, both ways the wire decodes.
fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(v: &T) {
    let bytes = encode(v).unwrap();
    assert_eq!(decode::<T>(&bytes).unwrap(), *v);
    let mut more = bytes.clone();
    more.extend_from_slice(b"rest");
    let (back, rest) = decode_prefix::<T>(&more).unwrap();
    assert_eq!((&back, rest), (v, &b"rest"[..]));
}

#[derive(Serialize, Deserialize, PartialEq, Debug, Clone)]
struct Unit;

#[derive(Serialize, Deserialize, PartialEq, Debug, Clone)]
struct Newtype(u16);

#[derive(Serialize, Deserialize, PartialEq, Debug, Clone)]
struct Pair(i8, String);

#[derive(Serialize, Deserialize, PartialEq, Debug, Clone)]
struct Fields {
    id: u64,
    name: String,
    values: Vec<f64>,
    tag: Option<char>,
}

#[derive(Serialize, Deserialize, PartialEq, Debug, Clone)]
enum Every {
    Unit,
    Newtype(u32),
    Tuple(u8, i64),
    Struct { a: bool, b: Option<Box<Every>> },
}

#[test]
fn the_format_byte_by_byte() {
    assert_eq!(encode(&0x0102_0304u32).unwrap(), [4, 3, 2, 1]);
    assert_eq!(encode(&-2i16).unwrap(), [0xFE, 0xFF]);
    assert_eq!(encode(&1.0f32).unwrap(), 1.0f32.to_bits().to_le_bytes());
    assert_eq!(encode(&true).unwrap(), [1]);
    assert_eq!(encode(&'A').unwrap(), [65, 0, 0, 0]);
    assert_eq!(encode("hi").unwrap(), [2, 0, 0, 0, 0, 0, 0, 0, b'h', b'i']);
    assert_eq!(
        encode(Bytes::new(b"x")).unwrap(),
        [1, 0, 0, 0, 0, 0, 0, 0, b'x']
    );
    assert_eq!(encode(&vec![7u8]).unwrap(), [1, 0, 0, 0, 0, 0, 0, 0, 7]);
    assert_eq!(encode(&None::<u8>).unwrap(), [0]);
    assert_eq!(encode(&Some(5u8)).unwrap(), [1, 5]);
    assert_eq!(encode(&()).unwrap(), [0u8; 0]);
    assert_eq!(encode(&Unit).unwrap(), [0u8; 0]);
    assert_eq!(encode(&Newtype(3)).unwrap(), [3, 0]);
    assert_eq!(encode(&Every::Unit).unwrap(), [0, 0, 0, 0]);
    assert_eq!(
        encode(&Every::Tuple(9, 1)).unwrap(),
        [2, 0, 0, 0, 9, 1, 0, 0, 0, 0, 0, 0, 0]
    );
    assert_eq!(encode(&(1u8, 2u8)).unwrap(), [1, 2]);
    let map: BTreeMap<u8, bool> = [(1, true)].into();
    assert_eq!(encode(&map).unwrap(), [1, 0, 0, 0, 0, 0, 0, 0, 1, 1]);
}

#[test]
fn every_data_model_type_round_trips() {
    round_trip(&(true, false));
    round_trip(&(u8::MAX, u16::MAX, u32::MAX, u64::MAX, u128::MAX));
    round_trip(&(i8::MIN, i16::MIN, i32::MIN, i64::MIN, i128::MIN));
    round_trip(&(f32::MIN_POSITIVE, f64::MAX, -0.0f64, f64::INFINITY));
    round_trip(&('\0', 'é', '\u{10FFFF}'));
    round_trip(&String::new());
    round_trip(&"naïve ✓".to_string());
    round_trip(&ByteBuf::from(vec![0u8, 255, 7]));
    round_trip(&vec![1u8, 2, 3]);
    round_trip(&(None::<u32>, Some(7u32), Some(None::<u8>), Some(Some(()))));
    round_trip(&());
    round_trip(&Unit);
    round_trip(&Newtype(65535));
    round_trip(&Pair(-1, "p".into()));
    round_trip(&Fields {
        id: 3,
        name: "worker".into(),
        values: vec![1.5, -2.25],
        tag: Some('x'),
    });
    round_trip(&vec![
        Every::Unit,
        Every::Newtype(7),
        Every::Tuple(1, -1),
        Every::Struct {
            a: true,
            b: Some(Box::new(Every::Struct { a: false, b: None })),
        },
    ]);
    round_trip(&vec![vec![(); 3], vec![]]);
    round_trip(&BTreeMap::from([
        (1u64, "one".to_string()),
        (2, "two".into()),
    ]));
    round_trip(&std::collections::HashMap::from([(
        "k".to_string(),
        vec![Some(1i32)],
    )]));
    round_trip(&[1u16, 2, 3]);
    round_trip(&(
        std::time::Duration::from_nanos(1_234_567_890),
        7usize,
        -7isize,
    ));
}

#[test]
fn borrowed_strings_and_bytes_point_into_the_input() {
    let bytes = encode(&("text", Bytes::new(b"bytes"))).unwrap();
    let ((s, b), rest): ((&str, &[u8]), _) = decode_prefix(&bytes).unwrap();
    assert_eq!((s, b, rest.len()), ("text", &b"bytes"[..], 0));
    let range = bytes.as_ptr_range();
    assert!(range.contains(&s.as_ptr()) && range.contains(&b.as_ptr()));
}

#[test]
fn a_reader_takes_values_one_after_another() {
    let mut bytes = encode(&5u64).unwrap();
    encode_into("two", &mut bytes).unwrap();
    encode_into(&Every::Newtype(3), &mut bytes).unwrap();
    let mut r = Reader::new(&bytes);
    assert_eq!(r.take::<u64>().unwrap(), 5);
    assert_eq!(r.take::<String>().unwrap(), "two");
    assert_eq!(r.take::<Every>().unwrap(), Every::Newtype(3));
    assert!(r.take::<u8>().unwrap_err().contains("ends inside"));
}

#[test]
fn truncated_input_is_an_error_at_every_length() {
    let v = (
        Fields {
            id: 1,
            name: "n".into(),
            values: vec![2.0],
            tag: Some('t'),
        },
        Every::Struct {
            a: true,
            b: Some(Box::new(Every::Tuple(1, 2))),
        },
        BTreeMap::from([(1u8, 'c')]),
    );
    let bytes = encode(&v).unwrap();
    for end in 0..bytes.len() {
        assert!(
            decode::<(Fields, Every, BTreeMap<u8, char>)>(&bytes[..end]).is_err(),
            "{end}"
        );
    }
}

#[test]
fn trailing_bytes_are_an_error_in_decode_only() {
    let mut bytes = encode(&7u32).unwrap();
    bytes.push(0);
    assert!(
        decode::<u32>(&bytes)
            .unwrap_err()
            .contains("1 bytes are left over")
    );
    assert_eq!(decode_prefix::<u32>(&bytes).unwrap(), (7, &[0u8][..]));
}

#[test]
fn huge_claimed_lengths_are_refused_before_allocating() {
    for n in [u64::MAX, u64::MAX / 2, 1 << 40, 1 << 20, 9] {
        let mut bytes = n.to_le_bytes().to_vec();
        bytes.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        assert!(decode::<String>(&bytes).is_err(), "{n}");
        assert!(decode::<ByteBuf>(&bytes).is_err(), "{n}");
        assert!(decode::<Vec<u8>>(&bytes).is_err(), "{n}");
        assert!(decode::<Vec<u64>>(&bytes).is_err(), "{n}");
        assert!(decode::<Vec<String>>(&bytes).is_err(), "{n}");
        assert!(decode::<BTreeMap<u32, u32>>(&bytes).is_err(), "{n}");
        assert!(decode_prefix::<&str>(&bytes).is_err(), "{n}");
    }
}

/// Takes 8 bytes of memory and none of input.
#[derive(Serialize, Deserialize, PartialEq, Debug)]
struct Skipped {
    #[serde(skip)]
    n: u64,
}

#[test]
fn elements_of_no_bytes_are_budgeted() {
    // Legitimately many, up to the budget: fine.
    round_trip(&vec![(); 1000]);
    round_trip(&vec![Skipped { n: 0 }; 1000].into_iter().collect::<Vec<_>>());
    // A claimed 2^62 of them: an error, not a spin for ever or an allocation without bound.
    // (8M and 64M empty iterations before the error: too slow under Miri.)
    if cfg!(not(miri)) {
        let bytes = (1u64 << 62).to_le_bytes();
        let err = decode::<Vec<Skipped>>(&bytes).unwrap_err();
        assert!(err.contains("not believable"), "{err}");
        let err = decode::<Vec<()>>(&bytes).unwrap_err();
        assert!(err.contains("not believable"), "{err}");
    }
}

impl Clone for Skipped {
    fn clone(&self) -> Skipped {
        Skipped { n: 0 }
    }
}

#[test]
fn bad_bools_chars_tags_and_variants_are_errors() {
    assert!(
        decode::<bool>(&[2])
            .unwrap_err()
            .contains("invalid bool byte 2")
    );
    assert!(
        decode::<char>(&0xD800u32.to_le_bytes())
            .unwrap_err()
            .contains("invalid char")
    );
    assert!(decode::<char>(&0x11_0000u32.to_le_bytes()).is_err());
    assert!(
        decode::<Option<u8>>(&[2, 0])
            .unwrap_err()
            .contains("invalid Option tag")
    );
    let err = decode::<Every>(&4u32.to_le_bytes()).unwrap_err();
    assert!(err.contains("variant index"), "{err}");
    let mut bad_utf8 = 2u64.to_le_bytes().to_vec();
    bad_utf8.extend_from_slice(&[0xC3, 0x28]);
    assert!(decode::<String>(&bad_utf8).unwrap_err().contains("UTF-8"));
}

#[test]
fn deserialize_any_is_refused_clearly() {
    #[derive(Deserialize, Debug)]
    #[serde(untagged)]
    #[allow(dead_code, reason = "only decoded")]
    enum Untagged {
        A(u8),
    }
    let err = decode::<Untagged>(&[1]).unwrap_err();
    assert!(err.contains("not self-describing"), "{err}");
    let err = encode(
        &(0..3)
            .filter(|_| true)
            .map(|x| x as u8)
            .collect::<std::collections::VecDeque<_>>(),
    );
    assert!(err.is_ok(), "a sized iterator is fine");
}

#[test]
fn a_sequence_of_unknown_length_cannot_be_encoded() {
    struct Unsized;
    impl Serialize for Unsized {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.collect_seq((0..3u8).filter(|_| true))
        }
    }
    assert!(encode(&Unsized).unwrap_err().contains("unknown length"));
}

/// A list `depth` deep: each level a struct with an `Option<Box<_>>`.
#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Deep {
    next: Option<Box<Deep>>,
}

fn deep(depth: usize) -> Deep {
    (0..depth).fold(Deep { next: None }, |d, _| Deep {
        next: Some(Box::new(d)),
    })
}

/// Drops a deep list without recursion (the default drop of 200k levels overflows).
fn drop_deep(mut d: Deep) {
    while let Some(next) = d.next.take() {
        d = *next;
    }
}

#[test]
fn nesting_is_bounded_both_ways() {
    // Each level is two: the struct and the `Some`.
    let ok = deep(MAX_DEPTH as usize / 2 - 1);
    let bytes = encode(&ok).unwrap();
    assert_eq!(decode::<Deep>(&bytes).unwrap(), ok);
    drop_deep(ok);

    // 200k levels (2k under Miri, where that many boxes are slow).
    let depth = if cfg!(miri) { 2_000 } else { 200_000 };
    let too = deep(depth);
    let err = encode(&too).unwrap_err();
    assert!(
        err.contains(&format!("nest deeper than {MAX_DEPTH}")),
        "{err}"
    );
    drop_deep(too);
    // Hostile: a `Some` tag per level (one byte each for this type).
    let err = decode::<Deep>(&vec![1u8; depth]).unwrap_err();
    assert!(
        err.contains(&format!("nest deeper than {MAX_DEPTH}")),
        "{err}"
    );
    let err = decode::<Option<Box<Deep>>>(&vec![1u8; depth]).unwrap_err();
    assert!(err.contains("nest deeper"), "{err}");
}

#[test]
#[cfg_attr(miri, ignore = "mmap: not under Miri")]
fn an_arena_writer_goes_on_after_a_failed_value() {
    let mut map = GrowMap::anonymous().unwrap();
    let mut w = ArenaWriter::new(&mut map, 16);
    w.put(&1u64).unwrap();
    let pos = w.pos();
    let too = deep(200);
    assert!(w.put(&too).unwrap_err().contains("nest deeper"));
    drop_deep(too);
    w.rewind(pos);
    // The failed value left its nesting open: the next one starts afresh.
    let ok = deep(MAX_DEPTH as usize / 2 - 1);
    w.put(&ok).unwrap();
    w.put(&vec![0xABu8; 100_000]).unwrap();
    let end = w.pos();
    let map = w.into_map();
    let mut r = Reader::new(&map.arena()[16..end]);
    assert_eq!(r.take::<u64>().unwrap(), 1);
    assert_eq!(r.take::<Deep>().unwrap(), ok);
    assert_eq!(r.take::<Vec<u8>>().unwrap(), vec![0xAB; 100_000]);
    drop_deep(ok);
}

struct RefusesToDecode;
impl<'de> Deserialize<'de> for RefusesToDecode {
    fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Err(serde::de::Error::custom("not today"))
    }
}

#[test]
fn a_custom_deserialize_error_keeps_its_message() {
    let err = decode::<(u8, RefusesToDecode)>(&[1]).err().unwrap();
    assert_eq!(err, "not today");
}

mod proptests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Serialize, Deserialize, PartialEq, Debug, Clone)]
    enum Model {
        Unit,
        Int(i128),
        Pair(u8, char),
        Named {
            text: String,
            bytes: ByteBuf,
            flag: bool,
            ratio: f64,
        },
        List(Vec<Option<Model>>),
        Map(BTreeMap<u16, Model>),
    }

    fn model() -> impl Strategy<Value = Model> {
        let leaf = prop_oneof![
            Just(Model::Unit),
            any::<i128>().prop_map(Model::Int),
            (any::<u8>(), any::<char>()).prop_map(|(a, b)| Model::Pair(a, b)),
            (
                ".{0,12}",
                proptest::collection::vec(any::<u8>(), 0..32),
                any::<bool>(),
                -1e9f64..1e9
            )
                .prop_map(|(text, bytes, flag, ratio)| Model::Named {
                    text,
                    bytes: ByteBuf::from(bytes),
                    flag,
                    ratio
                }),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(proptest::option::of(inner.clone()), 0..6)
                    .prop_map(Model::List),
                proptest::collection::btree_map(any::<u16>(), inner, 0..6).prop_map(Model::Map),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(if cfg!(miri) { 8 } else { 256 }))]

        #[test]
        fn qc_round_trips(v in model(), extra in proptest::collection::vec(any::<u8>(), 0..4)) {
            let bytes = encode(&v).unwrap();
            prop_assert_eq!(decode::<Model>(&bytes).unwrap(), v.clone());
            let mut more = bytes.clone();
            more.extend_from_slice(&extra);
            let (back, rest) = decode_prefix::<Model>(&more).unwrap();
            prop_assert_eq!(back, v);
            prop_assert_eq!(rest, &extra[..]);
        }

        /// Arbitrary bytes: an error or a value, never a panic.
        #[test]
        fn qc_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode::<Model>(&bytes);
            let _ = decode::<(String, Vec<u64>, Option<char>)>(&bytes);
        }
    }
}

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
