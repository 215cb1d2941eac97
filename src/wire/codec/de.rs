//! The decoder: the format of [`super`] back to serde's data model, from a byte slice.
//!
//! Every read checks the bytes left first, so hostile input is an error, never a panic; a
//! length is trusted only as far as the input can back it (see [`Deserializer::free`]);
//! nesting is bounded by [`MAX_DEPTH`](super::MAX_DEPTH), so a recursive type cannot overflow the stack.

use serde::de::{self, DeserializeSeed, Error as _, IntoDeserializer, Visitor};

use super::{Depth, Error};

/// Elements of sequences and maps that may decode from no bytes at all, per value: each costs
/// its in-memory size (at least 1). Without a budget, a claimed length of 2^60 elements of a
/// type that encodes as nothing (`()`, a struct whose fields are all `#[serde(skip)]`) would
/// spin for ever, or allocate without bound, on an input of 8 bytes.
const FREE_BUDGET: usize = 64 << 20;

/// A serde deserializer over the codec's bytes.
pub(super) struct Deserializer<'de> {
    pub(super) input: &'de [u8],
    depth: Depth,
    /// What is left of [`FREE_BUDGET`].
    free: usize,
}

impl<'de> Deserializer<'de> {
    pub(super) fn new(input: &'de [u8]) -> Deserializer<'de> {
        Deserializer {
            input,
            depth: Depth::default(),
            free: FREE_BUDGET,
        }
    }

    /// Starts a fresh value at the current position (depth and budget reset).
    pub(super) fn restart(&mut self) {
        self.depth = Depth::default();
        self.free = FREE_BUDGET;
    }

    #[inline(always)]
    fn array<const N: usize>(&mut self) -> Result<[u8; N], Error> {
        let (head, rest) = self.input.split_first_chunk::<N>().ok_or_else(Error::eof)?;
        self.input = rest;
        Ok(*head)
    }

    #[inline(always)]
    fn take(&mut self, n: usize) -> Result<&'de [u8], Error> {
        if n > self.input.len() {
            return Err(Error::eof());
        }
        let (head, rest) = self.input.split_at(n);
        self.input = rest;
        Ok(head)
    }

    /// A length: a u64 that must fit `usize` (what it may claim is checked by its user).
    #[inline(always)]
    fn len(&mut self) -> Result<usize, Error> {
        let n = u64::from_le_bytes(self.array()?);
        usize::try_from(n).map_err(|_| Error::custom(format!("length {n} is too large")))
    }

    #[inline(always)]
    fn bytes(&mut self) -> Result<&'de [u8], Error> {
        let n = self.len()?;
        self.take(n)
    }

    #[inline(always)]
    fn str(&mut self) -> Result<&'de str, Error> {
        std::str::from_utf8(self.bytes()?).map_err(|e| Error::custom(format!("invalid UTF-8: {e}")))
    }

    #[inline(always)]
    fn enter(&mut self) -> Result<(), Error> {
        self.depth.enter()
    }

    /// Runs `f` one level deeper.
    #[inline(always)]
    fn nested<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T, Error>) -> Result<T, Error> {
        self.enter()?;
        let r = f(self);
        self.depth.leave();
        r
    }

    /// Charges an element that took `used` bytes and is `size` bytes in memory to the budget
    /// of free elements if it took none.
    #[inline(always)]
    fn charge(&mut self, used: bool, size: usize) -> Result<(), Error> {
        if used {
            return Ok(());
        }
        self.free = self.free.checked_sub(size.max(1)).ok_or_else(|| {
            Error::custom("too many elements that take no bytes: the length is not believable")
        })?;
        Ok(())
    }
}

macro_rules! fixed {
    ($($method:ident => $visit:ident($ty:ty);)*) => {$(
        #[inline(always)]
        fn $method<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
            v.$visit(<$ty>::from_le_bytes(self.array()?))
        }
    )*};
}

impl<'de> de::Deserializer<'de> for &mut Deserializer<'de> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Error> {
        Err(Error::custom(NOT_SELF_DESCRIBING))
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Error> {
        Err(Error::custom(NOT_SELF_DESCRIBING))
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Error> {
        Err(Error::custom(NOT_SELF_DESCRIBING))
    }

    fixed! {
        deserialize_i8 => visit_i8(i8); deserialize_i16 => visit_i16(i16);
        deserialize_i32 => visit_i32(i32); deserialize_i64 => visit_i64(i64);
        deserialize_i128 => visit_i128(i128); deserialize_u8 => visit_u8(u8);
        deserialize_u16 => visit_u16(u16); deserialize_u32 => visit_u32(u32);
        deserialize_u64 => visit_u64(u64); deserialize_u128 => visit_u128(u128);
        deserialize_f32 => visit_f32(f32); deserialize_f64 => visit_f64(f64);
    }

    #[inline]
    fn deserialize_bool<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        match self.array::<1>()? {
            [0] => v.visit_bool(false),
            [1] => v.visit_bool(true),
            [b] => Err(Error::custom(format!("invalid bool byte {b}"))),
        }
    }

    #[inline]
    fn deserialize_char<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        let n = u32::from_le_bytes(self.array()?);
        let c = char::from_u32(n).ok_or_else(|| Error::custom(format!("invalid char {n:#x}")))?;
        v.visit_char(c)
    }

    #[inline]
    fn deserialize_str<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_borrowed_str(self.str()?)
    }

    #[inline]
    fn deserialize_string<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_borrowed_str(self.str()?)
    }

    #[inline]
    fn deserialize_bytes<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_borrowed_bytes(self.bytes()?)
    }

    #[inline]
    fn deserialize_byte_buf<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_borrowed_bytes(self.bytes()?)
    }

    #[inline]
    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        match self.array::<1>()? {
            [0] => v.visit_none(),
            [1] => self.nested(|de| v.visit_some(de)),
            [b] => Err(Error::custom(format!("invalid Option tag {b}"))),
        }
    }

    #[inline(always)]
    fn deserialize_unit<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_unit()
    }

    #[inline(always)]
    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        v: V,
    ) -> Result<V::Value, Error> {
        v.visit_unit()
    }

    #[inline]
    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        v: V,
    ) -> Result<V::Value, Error> {
        self.nested(|de| v.visit_newtype_struct(de))
    }

    #[inline]
    fn deserialize_seq<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        let left = self.len()?;
        if left > self.input.len() {
            self.nested(|de| v.visit_seq(Counted::<true> { de, left }))
        } else {
            self.nested(|de| v.visit_seq(Counted::<false> { de, left }))
        }
    }

    #[inline]
    fn deserialize_tuple<V: Visitor<'de>>(self, len: usize, v: V) -> Result<V::Value, Error> {
        self.nested(|de| v.visit_seq(Fixed { de, left: len }))
    }

    #[inline]
    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        len: usize,
        v: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_tuple(len, v)
    }

    #[inline]
    fn deserialize_map<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        let left = self.len()?;
        if left > self.input.len() {
            self.nested(|de| v.visit_map(Counted::<true> { de, left }))
        } else {
            self.nested(|de| v.visit_map(Counted::<false> { de, left }))
        }
    }

    #[inline]
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_tuple(fields.len(), v)
    }

    #[inline]
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, Error> {
        // Not a level by itself: a variant's data is (as the encoder counts it).
        v.visit_enum(self)
    }

    fn is_human_readable(&self) -> bool {
        false
    }
}

const NOT_SELF_DESCRIBING: &str = "mproc's codec is not self-describing: types that decode \
     through `deserialize_any` (untagged or internally tagged enums, `#[serde(flatten)]`, \
     `serde_json::Value`, ...) cannot cross";

/// The parts of a tuple or struct: as many as the type says.
struct Fixed<'a, 'de> {
    de: &'a mut Deserializer<'de>,
    left: usize,
}

impl<'de> de::SeqAccess<'de> for Fixed<'_, 'de> {
    type Error = Error;

    #[inline(always)]
    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        seed.deserialize(&mut *self.de).map(Some)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.left)
    }
}

/// The elements of a sequence or map: as many as the input claims. If it claims more than
/// bytes are left, some must take no bytes: then each is checked against the input it took
/// ([`Deserializer::charge`]). Otherwise no check is needed: even if none took a byte, there
/// are no more of them than bytes of input (the fast path: a check per element cost a
/// `Vec<u64>` 30% of its decoding).
/// `CHECK` is that choice, made once per sequence.
struct Counted<'a, 'de, const CHECK: bool> {
    de: &'a mut Deserializer<'de>,
    left: usize,
}

impl<'de, const CHECK: bool> Counted<'_, 'de, CHECK> {
    #[inline(always)]
    fn element<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<T::Value, Error> {
        if !CHECK {
            return seed.deserialize(&mut *self.de);
        }
        let before = self.de.input.len();
        let v = seed.deserialize(&mut *self.de)?;
        self.de.charge(
            self.de.input.len() != before,
            std::mem::size_of::<T::Value>(),
        )?;
        Ok(v)
    }

    /// A length to preallocate for: no more elements than bytes left (an element that takes
    /// bytes takes at least one; serde caps it again at 1 MiB of elements).
    fn size_hint(&self) -> Option<usize> {
        Some(self.left.min(self.de.input.len()))
    }
}

impl<'de, const CHECK: bool> de::SeqAccess<'de> for Counted<'_, 'de, CHECK> {
    type Error = Error;

    #[inline(always)]
    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        self.element(seed).map(Some)
    }

    fn size_hint(&self) -> Option<usize> {
        Counted::size_hint(self)
    }
}

impl<'de, const CHECK: bool> de::MapAccess<'de> for Counted<'_, 'de, CHECK> {
    type Error = Error;

    #[inline(always)]
    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        self.element(seed).map(Some)
    }

    #[inline(always)]
    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        self.element(seed)
    }

    fn size_hint(&self) -> Option<usize> {
        Counted::size_hint(self)
    }
}

impl<'de> de::EnumAccess<'de> for &mut Deserializer<'de> {
    type Error = Error;
    type Variant = Self;

    #[inline]
    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self), Error> {
        let index = u32::from_le_bytes(self.array()?);
        let v = seed.deserialize(index.into_deserializer())?;
        Ok((v, self))
    }
}

impl<'de> de::VariantAccess<'de> for &mut Deserializer<'de> {
    type Error = Error;

    #[inline(always)]
    fn unit_variant(self) -> Result<(), Error> {
        Ok(())
    }

    #[inline]
    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, Error> {
        self.nested(|de| seed.deserialize(de))
    }

    #[inline]
    fn tuple_variant<V: Visitor<'de>>(self, len: usize, v: V) -> Result<V::Value, Error> {
        de::Deserializer::deserialize_tuple(self, len, v)
    }

    #[inline]
    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, Error> {
        de::Deserializer::deserialize_tuple(self, fields.len(), v)
    }
}
