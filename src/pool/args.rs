//! How a pool method takes its function and items: borrowed items encoded in place, and
//! [`StarArgs`], the tuples `starmap` runs functions of 2 to 6 arguments over.

use std::borrow::Borrow;
use std::marker::PhantomData;

use serde::de::DeserializeOwned;
use serde::{Serialize, Serializer};

use crate::task::fnref::Callable;

/// A chunk of items encoded as the `Vec<A>` the worker decodes, each item read through its
/// borrow: `map(f, &v)` sends `v`'s values without cloning them first.
pub(crate) struct ByBorrow<'a, A: ?Sized, T>(pub(crate) &'a [T], PhantomData<fn(&A)>);

impl<'a, A: ?Sized, T> ByBorrow<'a, A, T> {
    pub(crate) fn new(items: &'a [T]) -> Self {
        ByBorrow(items, PhantomData)
    }
}

impl<A: Serialize + ?Sized, T: Borrow<A>> Serialize for ByBorrow<'_, A, T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // The same encoding as `Vec<A>`: a length, then the values.
        s.collect_seq(self.0.iter().map(Borrow::<A>::borrow))
    }
}

mod sealed {
    use serde::Serialize;
    use serde::de::DeserializeOwned;

    pub trait Sealed {}

    /// A function pointer of 2 to 6 arguments, run over a tuple of them.
    // Sealed (users cannot name it): the crate-private bound is what lets it travel.
    #[allow(private_bounds)]
    pub trait FnPtr: crate::sys::fnptr::CodePtr + 'static {
        type Args: Serialize + DeserializeOwned + 'static;
        type Out: Serialize + DeserializeOwned + 'static;
        fn invoke(self, args: Self::Args) -> Self::Out;
    }
}

/// The items [`Pool::starmap`](crate::Pool::starmap) runs a function over: tuples of 2 to 6
/// serde values, owned or borrowed (`(A, B)` or `&(A, B)`, up to 6 elements), each the
/// arguments of one call of a `fn(A, B) -> R` (its [`Fn`](StarArgs::Fn)).
///
/// The function's type follows from the items' type, so a closure that captures nothing
/// passes as it is, its argument types inferred. A named function is a *function item*, a
/// type of its own that Rust turns into a function pointer only where the pointer's type is
/// already known, which it is not yet when the function comes first: wrap it in a closure,
/// `|a, b, c| volume(a, b, c)` (the compiler's "type mismatch resolving `<(..) as
/// StarArgs>::Fn<_> == fn(..) {volume}`" means that), or give its type,
/// `volume as fn(u64, u64, u64) -> u64`. Clippy's `redundant_closure` lint suggests dropping
/// such a closure; that suggestion does not compile here (allow the lint where you call
/// `starmap`, or use the cast).
///
/// ```
/// fn volume(l: u64, w: u64, h: u64) -> u64 {
///     l * w * h
/// }
///
/// let pool = mproc::Pool::new(2)?;
/// let boxes = vec![(1, 2, 3), (4, 5, 6)];
/// assert_eq!(pool.starmap(|l, w, h| volume(l, w, h), &boxes)?, [6, 120]);
/// assert_eq!(pool.starmap(volume as fn(u64, u64, u64) -> u64, boxes)?, [6, 120]);
/// # Ok::<(), mproc::Error>(())
/// ```
///
/// It is sealed: the tuples above are all there is.
#[diagnostic::on_unimplemented(
    message = "`starmap` runs over tuples of 2 to 6 arguments (owned or borrowed), not `{Self}`",
    note = "for one argument, use `map`; for more than 6, pass one tuple to `map`"
)]
pub trait StarArgs: sealed::Sealed + Serialize {
    /// The owned tuple of arguments, as the worker decodes it.
    type Tuple: Serialize + DeserializeOwned + 'static;
    /// The function such a tuple is the arguments of: `fn(A, B) -> R` for `(A, B)`.
    type Fn<R: Serialize + DeserializeOwned + 'static>: sealed::FnPtr<Args = Self::Tuple, Out = R>;
}

macro_rules! star_args {
    ($($a:ident)+) => {
        impl<$($a,)+ R> sealed::FnPtr for fn($($a),+) -> R
        where
            $($a: Serialize + DeserializeOwned + 'static,)+
            R: Serialize + DeserializeOwned + 'static,
        {
            type Args = ($($a,)+);
            type Out = R;
            #[allow(non_snake_case)]
            fn invoke(self, ($($a,)+): Self::Args) -> R {
                self($($a),+)
            }
        }

        impl<$($a: Serialize + DeserializeOwned + 'static),+> sealed::Sealed for ($($a,)+) {}

        impl<$($a: Serialize + DeserializeOwned + 'static),+> StarArgs for ($($a,)+) {
            type Tuple = Self;
            type Fn<R: Serialize + DeserializeOwned + 'static> = fn($($a),+) -> R;
        }

        impl<$($a: Serialize + DeserializeOwned + 'static),+> sealed::Sealed for &($($a,)+) {}

        impl<$($a: Serialize + DeserializeOwned + 'static),+> StarArgs for &($($a,)+) {
            type Tuple = ($($a,)+);
            // A reference serializes as what it points to: encoded as the owned tuple.
            type Fn<R: Serialize + DeserializeOwned + 'static> = fn($($a),+) -> R;
        }
    };
}

star_args!(A B);
star_args!(A B C);
star_args!(A B C D);
star_args!(A B C D E);
star_args!(A B C D E G);

/// A [`StarArgs`] function as a task: the same pointer, so its address is the function's.
#[derive(Clone, Copy)]
pub(crate) struct Star<F>(pub(crate) F);

impl<F: sealed::FnPtr> Callable for Star<F> {
    type Args = F::Args;
    type Out = F::Out;
    fn invoke(self, args: F::Args) -> F::Out {
        self.0.invoke(args)
    }
    type Ptr = F;
    fn ptr(self) -> F {
        self.0
    }
    fn from_ptr(ptr: F) -> Self {
        Star(ptr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::codec;

    #[test]
    fn borrowed_items_encode_as_the_owned_vector() {
        let v: Vec<u64> = vec![1, 300, 70_000];
        let refs: Vec<&u64> = v.iter().collect();
        let owned = codec::encode(&v).unwrap();
        assert_eq!(
            codec::encode(&ByBorrow::<u64, _>::new(&refs)).unwrap(),
            owned
        );
        assert_eq!(codec::encode(&ByBorrow::<u64, _>::new(&v)).unwrap(), owned);
        let names = vec!["a".to_string(), "bc".to_string()];
        let as_str = codec::encode(&ByBorrow::<str, _>::new(&names)).unwrap();
        assert_eq!(as_str, codec::encode(&names).unwrap());
    }

    #[test]
    fn every_arity_calls_through_its_tuple() {
        fn two(a: u8, b: u8) -> u32 {
            u32::from(a) + u32::from(b)
        }
        fn six(a: u8, b: u8, c: u8, d: u8, e: u8, g: u8) -> u32 {
            [a, b, c, d, e, g].iter().map(|&x| u32::from(x)).sum()
        }
        let f = Star(two as fn(u8, u8) -> u32);
        assert_eq!(f.invoke((1u8, 2u8)), 3);
        assert_eq!(f.ptr() as usize, two as fn(u8, u8) -> u32 as usize);
        assert_eq!(
            Star(six as fn(u8, u8, u8, u8, u8, u8) -> u32).invoke((1u8, 2, 3, 4, 5, 6)),
            21
        );
    }
}
