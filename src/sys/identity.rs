//! Binary identity: proof that two processes run the same executable image.
//!
//! The GNU build id when the executable has one (read from memory, < 1 µs), otherwise device,
//! inode, size and modification time of the executable file. A one-byte prefix says which.

use std::borrow::Cow;
use std::sync::OnceLock;

/// Environment variable that, in a worker, replaces the identity it reports and checks. It
/// exists so that tests can force a mismatch; it can only make identities differ.
pub(crate) const TEST_OVERRIDE_ENV: &str = "MPROC_TEST_FAKE_IDENTITY";

/// Proof that a peer's identity equals ours. Only [`verify`] makes one.
#[derive(Debug)]
pub(crate) struct Verified(());

/// This executable's identity.
pub(crate) fn own() -> &'static [u8] {
    static ID: OnceLock<Vec<u8>> = OnceLock::new();
    ID.get_or_init(|| {
        if let Some(id) = super::build_id() {
            let mut v = vec![b'B'];
            v.extend(id);
            return v;
        }
        let mut v = vec![b'F'];
        match super::exe_file_identity() {
            Ok(id) => v.extend(id),
            // No way to identify ourselves: a random identity refuses every peer rather than
            // trusting one blindly.
            Err(_) => v.extend(std::process::id().to_le_bytes()),
        }
        v
    })
}

/// The identity a worker reports and checks: [`own`], unless a test overrides it. Read once,
/// when the worker starts.
pub(crate) fn reported(token: &super::child::ChildToken) -> Cow<'static, [u8]> {
    match super::child::getenv(token, TEST_OVERRIDE_ENV) {
        Some(fake) => {
            let mut v = b"T".to_vec();
            v.extend(fake.as_encoded_bytes().iter().take(64));
            Cow::Owned(v)
        }
        None => Cow::Borrowed(own()),
    }
}

/// Checks a peer's identity against ours (`mine`: from [`reported`], or [`own`]). `mine` is
/// never empty: both sources always produce at least a kind byte.
pub(crate) fn verify(peer: &[u8], mine: &[u8]) -> Option<Verified> {
    (!mine.is_empty() && peer == mine).then_some(Verified(()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn identity_is_stable_and_non_trivial() {
        let a = super::own();
        assert!(a.len() > 8, "{a:?}");
        assert_eq!(a, super::own());
        assert!(super::verify(a, a).is_some());
        assert!(super::verify(b"Bnot-us", a).is_none());
        assert!(super::verify(b"", b"").is_none());
    }
}
