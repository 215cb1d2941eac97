//! The encoder: serde's data model to the format of [`super`], written to an [`Output`].

use serde::Serialize;
use serde::ser::{self, Error as _};

use super::{Depth, Error, Output};

/// A serde serializer writing the codec's format to `out`.
pub(super) struct Serializer<O> {
    pub(super) out: O,
    /// Compound values open around the one being written (bounded by [`MAX_DEPTH`](super::MAX_DEPTH)).
    pub(super) depth: Depth,
}

impl<O: Output> Serializer<O> {
    pub(super) fn new(out: O) -> Serializer<O> {
        Serializer {
            out,
            depth: Depth::default(),
        }
    }

    #[inline(always)]
    fn len(&mut self, n: usize) -> Result<(), Error> {
        self.out.put_array((n as u64).to_le_bytes())
    }

    /// Opens a compound value; refused past [`MAX_DEPTH`](super::MAX_DEPTH).
    #[inline(always)]
    fn enter(&mut self) -> Result<(), Error> {
        self.depth.enter()
    }

    /// Writes `v` one level deeper.
    #[inline(always)]
    fn nested<V: Serialize + ?Sized>(&mut self, v: &V) -> Result<(), Error> {
        self.enter()?;
        let r = v.serialize(&mut *self);
        self.depth.leave();
        r
    }

    #[inline(always)]
    fn compound(&mut self) -> Result<Compound<'_, O>, Error> {
        self.enter()?;
        Ok(Compound { ser: self })
    }

    #[inline(always)]
    fn variant(&mut self, index: u32) -> Result<(), Error> {
        self.out.put_array(index.to_le_bytes())
    }
}

macro_rules! fixed {
    ($($method:ident($ty:ty);)*) => {$(
        #[inline(always)]
        fn $method(self, v: $ty) -> Result<(), Error> {
            self.out.put_array(v.to_le_bytes())
        }
    )*};
}

impl<'a, O: Output> ser::Serializer for &'a mut Serializer<O> {
    type Ok = ();
    type Error = Error;
    type SerializeSeq = Compound<'a, O>;
    type SerializeTuple = Compound<'a, O>;
    type SerializeTupleStruct = Compound<'a, O>;
    type SerializeTupleVariant = Compound<'a, O>;
    type SerializeMap = Compound<'a, O>;
    type SerializeStruct = Compound<'a, O>;
    type SerializeStructVariant = Compound<'a, O>;

    fixed! {
        serialize_i8(i8); serialize_i16(i16); serialize_i32(i32); serialize_i64(i64);
        serialize_i128(i128); serialize_u8(u8); serialize_u16(u16); serialize_u32(u32);
        serialize_u64(u64); serialize_u128(u128); serialize_f32(f32); serialize_f64(f64);
    }

    #[inline(always)]
    fn serialize_bool(self, v: bool) -> Result<(), Error> {
        self.out.put_array([u8::from(v)])
    }

    #[inline(always)]
    fn serialize_char(self, v: char) -> Result<(), Error> {
        self.out.put_array(u32::from(v).to_le_bytes())
    }

    #[inline]
    fn serialize_str(self, v: &str) -> Result<(), Error> {
        self.serialize_bytes(v.as_bytes())
    }

    #[inline]
    fn serialize_bytes(self, v: &[u8]) -> Result<(), Error> {
        self.len(v.len())?;
        self.out.put(v)
    }

    #[inline(always)]
    fn serialize_none(self) -> Result<(), Error> {
        self.out.put_array([0])
    }

    #[inline]
    fn serialize_some<V: Serialize + ?Sized>(self, v: &V) -> Result<(), Error> {
        self.out.put_array([1])?;
        self.nested(v)
    }

    #[inline(always)]
    fn serialize_unit(self) -> Result<(), Error> {
        Ok(())
    }

    #[inline(always)]
    fn serialize_unit_struct(self, _: &'static str) -> Result<(), Error> {
        Ok(())
    }

    #[inline]
    fn serialize_unit_variant(self, _: &'static str, i: u32, _: &'static str) -> Result<(), Error> {
        self.variant(i)
    }

    #[inline]
    fn serialize_newtype_struct<V: Serialize + ?Sized>(
        self,
        _: &'static str,
        v: &V,
    ) -> Result<(), Error> {
        self.nested(v)
    }

    #[inline]
    fn serialize_newtype_variant<V: Serialize + ?Sized>(
        self,
        _: &'static str,
        i: u32,
        _: &'static str,
        v: &V,
    ) -> Result<(), Error> {
        self.variant(i)?;
        self.nested(v)
    }

    #[inline]
    fn serialize_seq(self, len: Option<usize>) -> Result<Compound<'a, O>, Error> {
        let len = len.ok_or_else(|| Error::custom(UNKNOWN_LENGTH))?;
        self.len(len)?;
        self.compound()
    }

    #[inline]
    fn serialize_tuple(self, _: usize) -> Result<Compound<'a, O>, Error> {
        self.compound()
    }

    #[inline]
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Compound<'a, O>, Error> {
        self.compound()
    }

    #[inline]
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        i: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Compound<'a, O>, Error> {
        self.variant(i)?;
        self.compound()
    }

    #[inline]
    fn serialize_map(self, len: Option<usize>) -> Result<Compound<'a, O>, Error> {
        let len = len.ok_or_else(|| Error::custom(UNKNOWN_LENGTH))?;
        self.len(len)?;
        self.compound()
    }

    #[inline]
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Compound<'a, O>, Error> {
        self.compound()
    }

    #[inline]
    fn serialize_struct_variant(
        self,
        _: &'static str,
        i: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Compound<'a, O>, Error> {
        self.variant(i)?;
        self.compound()
    }

    fn is_human_readable(&self) -> bool {
        false
    }
}

const UNKNOWN_LENGTH: &str =
    "a sequence or map of unknown length cannot be encoded (its length goes first)";

/// An open compound value: its parts follow one another, with no names and no separators.
pub(super) struct Compound<'a, O> {
    ser: &'a mut Serializer<O>,
}

macro_rules! compound {
    ($($trait:ident: $method:ident($($key:ty),*);)*) => {$(
        impl<O: Output> ser::$trait for Compound<'_, O> {
            type Ok = ();
            type Error = Error;
            #[inline(always)]
            fn $method<V: Serialize + ?Sized>(&mut self, $(_: $key,)* v: &V) -> Result<(), Error> {
                v.serialize(&mut *self.ser)
            }
            #[inline(always)]
            fn end(self) -> Result<(), Error> {
                self.ser.depth.leave();
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

impl<O: Output> ser::SerializeMap for Compound<'_, O> {
    type Ok = ();
    type Error = Error;
    #[inline(always)]
    fn serialize_key<K: Serialize + ?Sized>(&mut self, k: &K) -> Result<(), Error> {
        k.serialize(&mut *self.ser)
    }
    #[inline(always)]
    fn serialize_value<V: Serialize + ?Sized>(&mut self, v: &V) -> Result<(), Error> {
        v.serialize(&mut *self.ser)
    }
    #[inline(always)]
    fn end(self) -> Result<(), Error> {
        self.ser.depth.leave();
        Ok(())
    }
}
