//! The wire: how messages cross between processes.
//!
//! A message is a *frame*: an 8-byte little-endian length, then that many bytes. The first
//! byte of the body says what the message is ([`msg`]); values inside travel in the binary
//! codec of [`codec`]. Reading never trusts the length: a frame longer than the configured
//! limit is refused before anything is allocated, and the buffer grows only as bytes really
//! arrive, so a lying peer cannot make us allocate more than twice what it actually sent.

pub(crate) mod codec;
pub(crate) mod fds;
pub(crate) mod frame;
pub(crate) mod msg;
