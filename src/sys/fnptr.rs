//! Code addresses: how a function pointer crosses into another process.
//!
//! Both processes run the same executable image (checked by [`identity`](super::identity)), but
//! at different load addresses (ASLR). So a function travels as its offset from a fixed anchor
//! function, together with the offset of a monomorphized *shim* that knows the function's type:
//! the receiver adds its own anchor address to both and calls the shim, which turns the
//! address back into a typed function pointer and hands it to the [`Entry`] it was made for.
//! What the entries do (decode a chunk of arguments, call, encode) is the task layer's
//! (`task::fnref`); this layer only owns the cast from an address to a function pointer.
//!
//! No zero-sized closure value is ever conjured: only real `fn` pointers travel (the sealed,
//! `unsafe` [`CodePtr`] is implemented here for `fn` pointer types only), so a closure that
//! captures anything cannot get here.

use std::marker::PhantomData;

use super::identity::Verified;

/// The fixed point offsets are measured from. `#[inline(never)]` gives it an address; if the
/// linker folds it with an identical function that is still one fixed address in the image.
#[inline(never)]
fn anchor() -> usize {
    std::hint::black_box(0x006d_7072_6f63)
}

pub(super) fn anchor_addr() -> usize {
    anchor as fn() -> usize as usize
}

/// Why a function cannot travel.
pub(crate) const NOT_IN_MAIN_IMAGE: &str = "the function does not live in the main executable (a dynamic library?), so another process cannot find it";

/// A function pointer type, which can travel as an address.
///
/// # Safety
/// Implemented only for `fn` pointer types (here, for the shapes mproc sends): the shim turns
/// an address back into a `Self` by a plain bit copy.
pub(crate) unsafe trait CodePtr: Copy + Send + Sync {
    /// The function's address.
    fn addr(self) -> usize;
}

macro_rules! code_ptr {
    ($(($($a:ident),*)),*) => {$(
        #[allow(coherence_leak_check)] // see the state task's impl below
        // SAFETY: a `fn` pointer type.
        unsafe impl<$($a,)* R> CodePtr for fn($($a),*) -> R {
            fn addr(self) -> usize {
                self as usize
            }
        }
    )*};
}
code_ptr!(
    (A),
    (A, B),
    (A, B, C),
    (A, B, C, D),
    (A, B, C, D, E),
    (A, B, C, D, E, F)
);

// SAFETY: a `fn` pointer type (a task function taking its worker's state). It is higher-ranked
// over the borrow's lifetime, so not an instance of `fn(A, B) -> R` (the lint warns that
// coherence may one day treat the two as overlapping; they are distinct types today).
#[allow(coherence_leak_check)]
unsafe impl<S, A, R> CodePtr for fn(&mut S, A) -> R {
    fn addr(self) -> usize {
        self as usize
    }
}

/// The shape of a family of shims: what they are called with besides the argument bytes
/// (`Cx`), and what they return. A [`CodeRef`] of one family is only ever called as one.
pub(crate) trait Family: 'static {
    /// The context a call gets.
    type Cx<'a>;
    /// What a call returns.
    type Out;
}

/// What a shim does with the function it rebuilt, for functions of type `P`.
pub(crate) trait Entry<P: CodePtr> {
    /// The family of its shims.
    type Fam: Family;
    /// Runs `f` on the encoded argument.
    fn run(f: P, arg: &[u8], cx: &mut <Self::Fam as Family>::Cx<'_>) -> <Self::Fam as Family>::Out;
}

type Shim<Fam> = fn(usize, &[u8], &mut <Fam as Family>::Cx<'_>) -> <Fam as Family>::Out;

fn shim<E: Entry<P>, P: CodePtr>(
    func: usize,
    arg: &[u8],
    cx: &mut <E::Fam as Family>::Cx<'_>,
) -> <E::Fam as Family>::Out {
    // SAFETY: `func` and this shim's offset travelled together in one `CodeRef`, made by
    // `CodeRef::make::<E, P>` from a value of the `fn` pointer type `P` in this same executable
    // (the receiver checked the binary identity before calling, see `CodeRef::call`), so
    // `func` is the address of a function of type `P`, and `P: CodePtr` is a `fn` pointer type.
    let f: P = unsafe { super::fn_from_addr(func) };
    E::run(f, arg, cx)
}

/// A function as it travels: two offsets from the anchor, the shim of its family and the
/// function itself.
pub(crate) struct CodeRef<Fam> {
    /// The shim for the function's type.
    pub(crate) tramp: i64,
    /// The function itself.
    pub(crate) func: i64,
    fam: PhantomData<fn() -> Fam>,
}

impl<Fam> Clone for CodeRef<Fam> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<Fam> Copy for CodeRef<Fam> {}

impl<Fam> PartialEq for CodeRef<Fam> {
    fn eq(&self, other: &Self) -> bool {
        (self.tramp, self.func) == (other.tramp, other.func)
    }
}

impl<Fam> Eq for CodeRef<Fam> {}

impl<Fam> std::fmt::Debug for CodeRef<Fam> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CodeRef")
            .field("tramp", &self.tramp)
            .field("func", &self.func)
            .finish()
    }
}

impl<Fam: Family> CodeRef<Fam> {
    /// Describes `f`, run by the entry `E`, for another process running this same executable;
    /// `None` if `f` does not live in the executable's own image.
    pub(crate) fn make<E: Entry<P, Fam = Fam>, P: CodePtr>(f: P) -> Option<Self> {
        let tramp: Shim<Fam> = shim::<E, P>;
        let (tramp, func) = (tramp as usize, f.addr());
        (in_main_image(tramp) && in_main_image(func))
            .then(|| CodeRef::from_offsets(offset(tramp), offset(func)))
    }

    /// The offsets as they arrived, for a call of this family: the message they came in says
    /// which family it carries (the sender made them with [`CodeRef::make`] of the same one).
    pub(crate) fn from_offsets(tramp: i64, func: i64) -> Self {
        CodeRef {
            tramp,
            func,
            fam: PhantomData,
        }
    }

    /// Calls the function with the encoded argument `arg`; `None` if an offset falls outside
    /// the executable (nothing was called).
    ///
    /// The `Verified` token proves the sender's binary identity equals ours, which is what
    /// makes the offsets meaningful here.
    pub(crate) fn call(
        self,
        _proof: &Verified,
        arg: &[u8],
        cx: &mut Fam::Cx<'_>,
    ) -> Option<Fam::Out> {
        let base = anchor_addr();
        let tramp_addr = base.wrapping_add(self.tramp as usize);
        let func_addr = base.wrapping_add(self.func as usize);
        if !in_main_image(tramp_addr) || !in_main_image(func_addr) {
            return None;
        }
        // SAFETY: the identity check behind `Verified` established that the sender runs this
        // very executable, in which `self.tramp` was computed from a `Shim<Fam>` by
        // `CodeRef::make`; the same offset from the same anchor is therefore that shim here.
        let tramp: Shim<Fam> = unsafe { super::fn_from_addr(tramp_addr) };
        Some(tramp(func_addr, arg, cx))
    }
}

fn in_main_image(addr: usize) -> bool {
    super::main_image_range().is_none_or(|(lo, hi)| (lo..hi).contains(&addr))
}

fn offset(addr: usize) -> i64 {
    addr.wrapping_sub(anchor_addr()) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Sum;
    impl Family for Sum {
        type Cx<'a> = u32;
        type Out = u32;
    }
    impl Entry<fn(u32) -> u32> for Sum {
        type Fam = Sum;
        fn run(f: fn(u32) -> u32, arg: &[u8], cx: &mut u32) -> u32 {
            f(u32::from(arg[0])) + *cx
        }
    }

    fn double(x: u32) -> u32 {
        x * 2
    }

    #[test]
    fn offsets_round_trip_in_process() {
        let f = CodeRef::<Sum>::make::<Sum, fn(u32) -> u32>(double).unwrap();
        let back = CodeRef::<Sum>::from_offsets(f.tramp, f.func);
        let proof = super::super::identity::verify(
            super::super::identity::own(),
            super::super::identity::own(),
        )
        .expect("own identity verifies");
        assert_eq!(back.call(&proof, &[21], &mut 100), Some(142));
        let stray = CodeRef::<Sum>::from_offsets(i64::MAX / 2, f.func);
        if super::super::main_image_range().is_some() {
            assert_eq!(stray.call(&proof, &[21], &mut 0), None);
        }
    }
}
