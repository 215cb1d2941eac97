//! The function reference: a task's function as it travels to a worker, and what the worker
//! runs it as.
//!
//! `sys::fnptr` carries a typed function pointer across as two offsets ([`CodeRef`]); this
//! module says what is at the other end. A task's function is a [`Callable`] — a `fn` pointer,
//! or a thin wrapper of one that changes how it is called (a tuple of arguments, the worker's
//! state, captured output) — run by one of the entries below:
//!
//! | made by | runs | family |
//! |---|---|---|
//! | [`FnRef::new`] | one typed call, `fn(A) -> R` (a `Process`, an initializer) | [`Run`] |
//! | [`FnRef::chunked`] | a chunk of items, each with its own outcome (`task::chunk`) | [`Run`] |
//! | [`FnRef::with_state`] | a chunk, with the worker's state (`task::state`) | [`Run`] |
//! | [`InitRef::state_init`] | a state's constructor, inside a state chunk's argument | [`Init`] |
//!
//! A task of another kind (a pickled Python callable run by a Python worker, say) would be
//! another entry here, with its own family if it is called differently.

use std::marker::PhantomData;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::chunk::RunCx;
pub(crate) use crate::sys::fnptr::CodeRef;
use crate::sys::fnptr::{CodePtr, Entry, Family};

/// What a worker answers for one run: the reply frame, and a file that goes with it.
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

/// A task function of one or more arguments: a `fn` pointer type, or a `repr`-free wrapper
/// of one that rebuilds itself from the pointer. Pools run it over chunks of argument values
/// (see [`FnRef::chunked`]).
pub(crate) trait Callable: Copy + Send + Sync + 'static {
    /// The argument(s), as one value (a tuple for several).
    type Args: Serialize + DeserializeOwned;
    /// The result.
    type Out: Serialize + DeserializeOwned;
    /// The function pointer it wraps: what travels.
    type Ptr: CodePtr;
    /// Calls the function.
    fn invoke(self, args: Self::Args) -> Self::Out;
    /// The function pointer.
    fn ptr(self) -> Self::Ptr;
    /// Rebuilds the callable from its pointer, in the worker.
    fn from_ptr(ptr: Self::Ptr) -> Self;
}

impl<A, R> Callable for fn(A) -> R
where
    A: Serialize + DeserializeOwned + 'static,
    R: Serialize + DeserializeOwned + 'static,
{
    type Args = A;
    type Out = R;
    type Ptr = fn(A) -> R;
    fn invoke(self, a: A) -> R {
        self(a)
    }
    fn ptr(self) -> Self {
        self
    }
    fn from_ptr(ptr: Self) -> Self {
        ptr
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
    type Ptr = fn(A, B) -> R;
    fn invoke(self, (a, b): (A, B)) -> R {
        self(a, b)
    }
    fn ptr(self) -> Self {
        self
    }
    fn from_ptr(ptr: Self) -> Self {
        ptr
    }
}

/// The family of task runs: called with the run's context, answering a [`Reply`]. Every
/// `Run` frame carries one.
pub(crate) struct Run;

impl Family for Run {
    type Cx<'a> = RunCx<'a>;
    type Out = Reply;
}

/// The family of state constructors: called with the pool's key, answering nothing or the
/// reply that fails the task.
pub(crate) struct Init;

impl Family for Init {
    type Cx<'a> = u64;
    type Out = Result<(), Reply>;
}

/// A task's function as it travels.
pub(crate) type FnRef = CodeRef<Run>;
/// A state constructor as it travels (inside a state chunk's argument).
pub(crate) type InitRef = CodeRef<Init>;

/// One typed call: decode `A`, call, encode `R`.
struct Typed<A, R>(PhantomData<fn(A) -> R>);

impl<A: DeserializeOwned, R: Serialize> Entry<fn(A) -> R> for Typed<A, R> {
    type Fam = Run;
    fn run(f: fn(A) -> R, arg: &[u8], _cx: &mut RunCx<'_>) -> Reply {
        super::panic::run_typed(f, arg)
    }
}

/// A chunk of items (`task::chunk`).
struct Chunked<F>(PhantomData<fn() -> F>);

impl<F: Callable> Entry<F::Ptr> for Chunked<F> {
    type Fam = Run;
    fn run(f: F::Ptr, arg: &[u8], cx: &mut RunCx<'_>) -> Reply {
        super::chunk::run(F::from_ptr(f), arg, cx)
    }
}

/// A chunk with the worker's state (`task::state`).
struct Stateful<F>(PhantomData<fn() -> F>);

impl<F: Callable> Entry<F::Ptr> for Stateful<F> {
    type Fam = Run;
    fn run(f: F::Ptr, arg: &[u8], cx: &mut RunCx<'_>) -> Reply {
        super::state::run(F::from_ptr(f), arg, cx)
    }
}

/// A state's constructor.
struct Constructor<I, S>(PhantomData<fn(I) -> S>);

impl<I: DeserializeOwned, S: 'static> Entry<fn(I) -> S> for Constructor<I, S> {
    type Fam = Init;
    fn run(init: fn(I) -> S, arg: &[u8], key: &mut u64) -> Result<(), Reply> {
        super::state::build(init, arg, *key)
    }
}

impl CodeRef<Run> {
    /// Describes `f` for one typed call in another process running this same executable, or
    /// `None` if `f` does not live in the executable's own image.
    pub(crate) fn new<A: DeserializeOwned, R: Serialize>(f: fn(A) -> R) -> Option<FnRef> {
        CodeRef::make::<Typed<A, R>, _>(f)
    }

    /// Describes `f` run over a chunk of arguments: the worker decodes a `Vec<F::Args>`, calls
    /// `f` on each (catching each panic separately) and answers with a `Vec<F::Out>` or, if
    /// any item panicked, the rest tagged (see `task::chunk`).
    pub(crate) fn chunked<F: Callable>(f: F) -> Option<FnRef> {
        CodeRef::make::<Chunked<F>, _>(f.ptr())
    }

    /// Describes `f` run over a chunk of arguments with its worker's state: the chunk's
    /// argument starts with the state's constructor (see `task::state`).
    pub(crate) fn with_state<F: Callable>(f: F) -> Option<FnRef> {
        CodeRef::make::<Stateful<F>, _>(f.ptr())
    }
}

impl CodeRef<Init> {
    /// Describes a state constructor, carried inside the argument of a state task.
    pub(crate) fn state_init<I: DeserializeOwned, S: 'static>(init: fn(I) -> S) -> Option<InitRef> {
        CodeRef::make::<Constructor<I, S>, _>(init)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn double(x: u32) -> u32 {
        x * 2
    }

    #[test]
    fn a_typed_call_round_trips_in_process() {
        let f = FnRef::new(double).unwrap();
        let mut arg = Vec::new();
        crate::wire::codec::encode_into(&21u32, &mut arg).unwrap();
        let own = crate::sys::identity::own();
        let proof = crate::sys::identity::verify(own, own).expect("own identity verifies");
        let mut arena = super::super::chunk::Arena::default();
        let mut cx = RunCx {
            arena: &mut arena,
            skip: 0,
            in_arena: 0,
            proof: &proof,
        };
        let received = FnRef::from_offsets(f.tramp, f.func);
        let reply = received
            .call(&proof, &arg, &mut cx)
            .expect("inside the image");
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
