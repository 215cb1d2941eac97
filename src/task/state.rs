//! Per-worker state: a value a pool's worker builds once, the first time a task needs it, and
//! keeps for every later task of that pool (`PoolBuilder::worker_state`,
//! `Pool::map_with_state`).
//!
//! # The payload of a state task
//! A state task is a chunk like any other, whose argument starts with how to build the state:
//!
//! ```text
//! key: u64          the pool's own key: a state built for another pool is not this one
//! init: i64, i64    the constructor `fn(I) -> S` and its trampoline, as offsets (`FnRef`)
//! arg: bytes        the constructor's argument `I`, encoded
//! items             the chunk's items, as for any chunk
//! ```
//!
//! The constructor travels with every chunk because the parent cannot know which workers have
//! built their state (a worker replaced after a crash, or after `max_tasks_per_child`, is a
//! new process with none), and because a worker is told nothing else before its tasks. Its
//! argument is encoded with the chunk, so handles inside it reach the worker with the chunk.
//!
//! # The slot
//! The state lives in one slot per worker process (a thread local: tasks run on the serve
//! loop's thread), holding the state as `Box<dyn Any>` with the key of the pool it belongs
//! to. Tasks reach it through [`WithState`], which borrows it for the length of one call.

use std::any::Any;
use std::cell::RefCell;
use std::panic::{self, AssertUnwindSafe};

use serde::de::DeserializeOwned;
use serde::{Serialize, Serializer};

use super::chunk::RunCx;
use super::fnref::{Callable, InitRef, Reply};
use crate::wire::{codec, msg};

thread_local! {
    static SLOT: RefCell<Option<(u64, Box<dyn Any>)>> = const { RefCell::new(None) };
}

/// A task function that takes the worker's state: `fn(&mut S, A) -> R`.
pub(crate) struct WithState<S, A, R>(pub(crate) fn(&mut S, A) -> R);

impl<S, A, R> Clone for WithState<S, A, R> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<S, A, R> Copy for WithState<S, A, R> {}

impl<S, A, R> Callable for WithState<S, A, R>
where
    S: 'static,
    A: Serialize + DeserializeOwned + 'static,
    R: Serialize + DeserializeOwned + 'static,
{
    type Args = A;
    type Out = R;
    fn invoke(self, a: A) -> R {
        SLOT.with(|slot| {
            let mut slot = slot.borrow_mut();
            let state = slot
                .as_mut()
                .and_then(|(_, s)| s.downcast_mut::<S>())
                .expect("the state task's run built the state first");
            (self.0)(state, a)
        })
    }
    type Ptr = fn(&mut S, A) -> R;
    fn ptr(self) -> Self::Ptr {
        self.0
    }
    fn from_ptr(ptr: Self::Ptr) -> Self {
        WithState(ptr)
    }
}

/// The head of a state task's argument, as the parent encodes it: the key, the constructor
/// and its argument (encoded by `arg` where the argument's type is known), then the items.
pub(crate) struct StateChunk<'a, T: ?Sized> {
    pub(crate) key: u64,
    pub(crate) init: InitRef,
    pub(crate) arg: &'a (dyn Fn(&mut Vec<u8>) -> Result<(), String> + Send + Sync),
    pub(crate) items: &'a T,
}

impl<T: Serialize + ?Sized> Serialize for StateChunk<'_, T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{Error as _, SerializeTuple};
        // Encoded here, inside the message's fd collector: handles in it number in order.
        let mut arg = Vec::new();
        (self.arg)(&mut arg).map_err(S::Error::custom)?;
        let mut t = s.serialize_tuple(5)?;
        t.serialize_element(&self.key)?;
        t.serialize_element(&self.init.tramp)?;
        t.serialize_element(&self.init.func)?;
        t.serialize_element(&Bytes(&arg))?;
        t.serialize_element(self.items)?;
        t.end()
    }
}

struct Bytes<'a>(&'a [u8]);

impl Serialize for Bytes<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

/// Runs a state task in the worker: builds the state if this worker has none for the task's
/// pool (its constructor's offsets are admitted by the run's identity check), then runs the chunk's items
/// with it. Called by the state trampoline.
pub(crate) fn run<F: Callable>(f: F, arg: &[u8], cx: &mut RunCx<'_>) -> Reply {
    let head = codec::decode_prefix::<(u64, i64, i64, &[u8])>(arg);
    let ((key, tramp, func, init_arg), items) = match head {
        Ok(h) => h,
        Err(e) => return failed(&format!("a state task's header cannot be decoded: {e}")),
    };
    let built = SLOT.with(|slot| slot.borrow().as_ref().is_some_and(|(k, _)| *k == key));
    if !built {
        let init = InitRef::from_offsets(tramp, func);
        let Some(built) = init.call(cx.proof, init_arg, &mut { key }) else {
            return failed("a state constructor outside the executable was refused");
        };
        if let Err(reply) = built {
            return reply;
        }
    }
    crate::task::chunk::run(f, items, cx)
}

fn failed(why: &str) -> Reply {
    Reply::inline(msg::failed(why), false)
}

/// Builds the state with `init` from its encoded argument and puts it in the slot, for the
/// pool `key`. A panic in `init` (or an argument that cannot be decoded) is the reply that
/// fails the task instead.
pub(crate) fn build<I: DeserializeOwned, S: 'static>(
    init: fn(I) -> S,
    arg: &[u8],
    key: u64,
) -> Result<(), Reply> {
    let arg: I = codec::decode(arg).map_err(|e| {
        let why = codec::failure::<I>(codec::Op::Decode, codec::Role::Argument, &e);
        failed(&format!("the worker state cannot be built: {why}"))
    })?;
    // The old state (another pool's, inherited through a fork) goes before the new one is
    // built: the two never hold their resources at once.
    SLOT.with(|slot| drop(slot.borrow_mut().take()));
    let state = panic::catch_unwind(AssertUnwindSafe(|| init(arg))).map_err(|payload| {
        let mut p = crate::task::panic::panic_report(payload);
        p.message = format!("building the worker state: {}", p.message);
        Reply::inline(crate::task::panic::encode_panic(&p), false)
    })?;
    SLOT.with(|slot| *slot.borrow_mut() = Some((key, Box::new(state))));
    Ok(())
}

/// The type a pool's state has, as `map_with_state` checks it in the parent.
#[derive(Clone, Copy, Debug)]
pub(crate) struct StateType {
    pub(crate) id: std::any::TypeId,
    pub(crate) name: &'static str,
}

impl StateType {
    pub(crate) fn of<S: 'static>() -> StateType {
        StateType {
            id: std::any::TypeId::of::<S>(),
            name: std::any::type_name::<S>(),
        }
    }
}
