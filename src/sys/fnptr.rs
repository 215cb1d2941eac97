//! Function identity: how a `fn(A) -> R` crosses into another process.
//!
//! Both processes run the same executable image (checked by [`identity`](super::identity)), but
//! at different load addresses (ASLR). So a function travels as its offset from a fixed anchor
//! function, together with the offset of a monomorphized *trampoline* that knows `A` and `R`:
//! the worker adds its own anchor address to both and calls the trampoline, which decodes `A`,
//! calls the function and encodes `R`.
//!
//! No zero-sized closure value is ever conjured: only real `fn` pointers are sent, so a closure
//! that captures anything (even a zero-sized value) cannot get here — it does not coerce to a
//! `fn` pointer.

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::identity::Verified;
use crate::task::chunk::RunCx;

/// The fixed point offsets are measured from. `#[inline(never)]` gives it an address; if the
/// linker folds it with an identical function that is still one fixed address in the image.
#[inline(never)]
fn anchor() -> usize {
    std::hint::black_box(0x006d_7072_6f63)
}

pub(super) fn anchor_addr() -> usize {
    anchor as fn() -> usize as usize
}

/// What a trampoline returns.
pub(crate) struct Reply {
    /// A complete reply frame.
    pub(crate) frame: Vec<u8>,
    /// Whether the function returned normally.
    pub(crate) ok: bool,
    /// With a `done_spilled` frame: the anonymous file holding the result, sent with it.
    pub(crate) file: Option<std::os::fd::OwnedFd>,
}

impl Reply {
    /// A reply whose frame says it all.
    pub(crate) fn inline(frame: Vec<u8>, ok: bool) -> Reply {
        Reply {
            frame,
            ok,
            file: None,
        }
    }
}

type Trampoline = fn(usize, &[u8], &mut RunCx<'_>) -> Reply;

/// A function as it travels: two offsets from the anchor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FnRef {
    /// The trampoline for the function's types.
    pub(crate) tramp: i64,
    /// The function itself.
    pub(crate) func: i64,
}

/// Why a function cannot travel.
pub(crate) const NOT_IN_MAIN_IMAGE: &str = "the function does not live in the main executable (a dynamic library?), so another process cannot find it";

impl FnRef {
    /// Describes `f` for another process running this same executable, or `None` if `f` does
    /// not live in the executable's own image.
    pub(crate) fn new<A: DeserializeOwned, R: Serialize>(f: fn(A) -> R) -> Option<FnRef> {
        let tramp: Trampoline = trampoline::<A, R>;
        FnRef::from_addrs(tramp as usize, f as usize)
    }

    fn from_addrs(tramp: usize, func: usize) -> Option<FnRef> {
        (in_main_image(tramp) && in_main_image(func)).then(|| FnRef {
            tramp: offset(tramp),
            func: offset(func),
        })
    }
}

fn in_main_image(addr: usize) -> bool {
    super::main_image_range().is_none_or(|(lo, hi)| (lo..hi).contains(&addr))
}

/// A task function of one or more arguments, as a `fn` pointer type. Pools run it over chunks
/// of argument values (see [`FnRef::chunked`]).
pub(crate) trait Callable: Copy + Send + Sync + 'static {
    /// The argument(s), as one value (a tuple for several).
    type Args: Serialize + DeserializeOwned;
    /// The result.
    type Out: Serialize + DeserializeOwned;
    /// Calls the function.
    fn invoke(self, args: Self::Args) -> Self::Out;
    /// The function's address.
    fn addr(self) -> usize;
}

impl<A, R> Callable for fn(A) -> R
where
    A: Serialize + DeserializeOwned + 'static,
    R: Serialize + DeserializeOwned + 'static,
{
    type Args = A;
    type Out = R;
    fn invoke(self, a: A) -> R {
        self(a)
    }
    fn addr(self) -> usize {
        self as usize
    }
}

impl<A, B, R> Callable for fn(A, B) -> R
where
    A: Serialize + DeserializeOwned + 'static,
    B: Serialize + DeserializeOwned + 'static,
    R: Serialize + DeserializeOwned + 'static,
{
    type Args = (A, B);
    type Out = R;
    fn invoke(self, (a, b): (A, B)) -> R {
        self(a, b)
    }
    fn addr(self) -> usize {
        self as usize
    }
}

impl FnRef {
    /// Describes `f` run over a chunk of arguments: the worker decodes a `Vec<F::Args>`, calls
    /// `f` on each (catching each panic separately) and answers with a `Vec<F::Out>` or, if
    /// any item panicked, the rest tagged (see `task::chunk`).
    pub(crate) fn chunked<F: Callable>(f: F) -> Option<FnRef> {
        let tramp: Trampoline = chunk_trampoline::<F>;
        FnRef::from_addrs(tramp as usize, f.addr())
    }
}

fn chunk_trampoline<F: Callable>(func: usize, arg: &[u8], cx: &mut RunCx<'_>) -> Reply {
    // SAFETY: as in `trampoline`: `func` was produced by `FnRef::chunked::<F>` from a value of
    // the fn-pointer type `F` in this same executable, and this is that `F`'s trampoline. (An
    // `F` that wraps a fn pointer, like `capture::CaptureOutput`, is `repr(transparent)` over
    // it, so the address is a valid `F` all the same.)
    let f: F = unsafe { super::fn_from_addr(func) };
    crate::task::chunk::run(f, arg, cx)
}

/// A state constructor's trampoline: builds the worker's state with the constructor at the
/// given address from its encoded argument, for the pool with the given key (see
/// `task::state`); or the reply that fails the task instead.
pub(crate) type StateInit = fn(usize, &[u8], u64) -> Result<(), Reply>;

impl FnRef {
    /// Describes `f` run over a chunk of arguments with its worker's state: the chunk's
    /// argument starts with the state's constructor (see `task::state`).
    pub(crate) fn with_state<F: Callable>(f: F) -> Option<FnRef> {
        let tramp: Trampoline = state_trampoline::<F>;
        FnRef::from_addrs(tramp as usize, f.addr())
    }

    /// Describes a state constructor, carried inside the argument of a state task.
    pub(crate) fn state_init<I: DeserializeOwned, S: 'static>(init: fn(I) -> S) -> Option<FnRef> {
        let tramp: StateInit = state_init_trampoline::<I, S>;
        FnRef::from_addrs(tramp as usize, init as usize)
    }
}

fn state_trampoline<F: Callable>(func: usize, arg: &[u8], cx: &mut RunCx<'_>) -> Reply {
    // SAFETY: as in `chunk_trampoline`: `func` was produced by `FnRef::with_state::<F>` from a
    // value of the fn-pointer type `F` (or a `repr(transparent)` wrapper of one) in this same
    // executable, and this is that `F`'s trampoline.
    let f: F = unsafe { super::fn_from_addr(func) };
    crate::task::state::run(f, arg, cx, resolve_state_init)
}

fn state_init_trampoline<I: DeserializeOwned, S: 'static>(
    func: usize,
    arg: &[u8],
    key: u64,
) -> Result<(), Reply> {
    // SAFETY: `func` was produced by `FnRef::state_init::<I, S>` from a `fn(I) -> S` in this
    // same executable, and this trampoline is the `<I, S>` instance recorded next to it.
    let init: fn(I) -> S = unsafe { super::fn_from_addr(func) };
    crate::task::state::build(init, arg, key)
}

/// Finds a state constructor carried inside the argument of the state task being run: the
/// identity check that admitted that task (see `call`) admits the offsets inside it too.
fn resolve_state_init(init: FnRef) -> Option<(StateInit, usize)> {
    let base = anchor_addr();
    let tramp_addr = base.wrapping_add(init.tramp as usize);
    let func_addr = base.wrapping_add(init.func as usize);
    if !in_main_image(tramp_addr) || !in_main_image(func_addr) {
        return None;
    }
    // SAFETY: the task carrying these offsets came from a parent running this very executable
    // (checked before `call` ran its trampoline), which computed `init.tramp` from a
    // `StateInit` in `FnRef::state_init`: the same offset from the same anchor is that
    // trampoline here.
    let tramp: StateInit = unsafe { super::fn_from_addr(tramp_addr) };
    Some((tramp, func_addr))
}

fn offset(addr: usize) -> i64 {
    addr.wrapping_sub(anchor_addr()) as i64
}

fn trampoline<A: DeserializeOwned, R: Serialize>(
    func: usize,
    arg: &[u8],
    _cx: &mut RunCx<'_>,
) -> Reply {
    // SAFETY: `func` was produced by `FnRef::new::<A, R>` in a process running this same
    // executable (the caller holds a `Verified` token, see `call`), and this trampoline is the
    // `<A, R>` instance recorded next to it, so `func` is the address of a `fn(A) -> R`.
    let f: fn(A) -> R = unsafe { super::fn_from_addr(func) };
    crate::task::panic::run_typed(f, arg)
}

/// Calls the function described by `f` with the encoded argument `arg`.
///
/// The `Verified` token proves the sender's binary identity equals ours, which is what makes
/// the offsets meaningful here.
pub(crate) fn call(_proof: &Verified, f: FnRef, arg: &[u8], cx: &mut RunCx<'_>) -> Reply {
    let base = anchor_addr();
    let tramp_addr = base.wrapping_add(f.tramp as usize);
    let func_addr = base.wrapping_add(f.func as usize);
    if !in_main_image(tramp_addr) || !in_main_image(func_addr) {
        return Reply::inline(
            crate::wire::msg::failed("a function address outside the executable was refused"),
            false,
        );
    }
    // SAFETY: the identity check behind `Verified` established that the sender runs this very
    // executable, in which `f.tramp` was computed from a `Trampoline` by `FnRef::new`; the same
    // offset from the same anchor is therefore that trampoline here.
    let tramp: Trampoline = unsafe { super::fn_from_addr(tramp_addr) };
    tramp(func_addr, arg, cx)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn double(x: u32) -> u32 {
        x * 2
    }

    #[test]
    fn offsets_round_trip_in_process() {
        let f = FnRef::new(double).unwrap();
        let mut arg = Vec::new();
        crate::wire::codec::encode_into(&21u32, &mut arg).unwrap();
        let proof = super::super::identity::verify(
            super::super::identity::own(),
            super::super::identity::own(),
        )
        .expect("own identity verifies");
        let mut arena = crate::task::chunk::Arena::default();
        let mut cx = RunCx {
            arena: &mut arena,
            skip: 0,
            in_arena: 0,
        };
        let reply = call(&proof, f, &arg, &mut cx);
        assert!(reply.ok);
        let body = &reply.frame[crate::wire::frame::HEADER..];
        match crate::wire::msg::parse_from_worker(body).unwrap() {
            crate::wire::msg::FromWorker::Done(bytes) => {
                assert_eq!(crate::wire::codec::decode::<u32>(bytes).unwrap(), 42)
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
