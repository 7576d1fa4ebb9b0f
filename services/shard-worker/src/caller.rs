//! Who is calling, and the rule that makes session ids capabilities. A session belongs to the
//! caller that opened it: under mutual TLS the caller is its client certificate (SHA-256 of
//! the leaf's DER), which nobody else can present. Without client certificates every caller
//! looks alike, so what keeps one caller out of another's session is that its id cannot be
//! guessed: ids must carry at least 128 bits of randomness, written as hex digits.

use neuroshard_common::{Error, ErrorKind, Result};
use sha2::{Digest, Sha256};

/// The identity a session is bound to.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub enum Caller {
    /// SHA-256 of the client's leaf certificate (DER).
    Certificate([u8; 32]),
    /// No client certificate (plaintext, or TLS without client authentication).
    Anonymous,
}

impl std::fmt::Debug for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Certificate(hash) => write!(f, "Certificate({})", hex::encode(&hash[..8])),
            Self::Anonymous => f.write_str("Anonymous"),
        }
    }
}

impl Caller {
    /// The caller of `request`: its client certificate when the connection has one.
    pub fn of<T>(request: &tonic::Request<T>) -> Self {
        Self::from_leaf(
            request
                .peer_certs()
                .as_deref()
                .and_then(|chain| chain.first())
                .map(|cert| cert.as_ref()),
        )
    }

    /// The caller presenting `leaf` (DER), or nobody in particular without one.
    pub fn from_leaf(leaf: Option<&[u8]>) -> Self {
        match leaf {
            Some(der) => Self::Certificate(Sha256::digest(der).into()),
            None => Self::Anonymous,
        }
    }
}

/// Fewest hex digits a session id must have: 128 bits.
pub const MIN_SESSION_HEX_DIGITS: usize = 32;
/// Longest session id taken (a UUID is 36 characters; room for 256 bits with separators).
pub const MAX_SESSION_ID_CHARS: usize = 96;

/// Refuses a session id that could be guessed: it must be hex digits (a UUID's hyphens
/// allowed), at least [`MIN_SESSION_HEX_DIGITS`] of them. The error never repeats the id.
pub fn check_session_id(id: &str) -> Result<()> {
    let hex_digits = id.bytes().filter(u8::is_ascii_hexdigit).count();
    let only_hex = id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    if id.is_empty() {
        return Err(Error::invalid_argument("session_id: missing"));
    }
    if !only_hex || hex_digits < MIN_SESSION_HEX_DIGITS || id.len() > MAX_SESSION_ID_CHARS {
        return Err(Error::invalid_argument(format!(
            "session_id: must be {MIN_SESSION_HEX_DIGITS} to {MAX_SESSION_ID_CHARS} hex digits \
             (hyphens allowed, e.g. a random UUID) so that it cannot be guessed; got {} \
             characters, {hex_digits} of them hex digits",
            id.len()
        )));
    }
    Ok(())
}

/// The refusal for a call on a session another caller opened.
pub fn not_yours() -> Error {
    Error::new(
        ErrorKind::PermissionDenied,
        "session_id: this session was opened by another caller",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids_must_carry_128_bits() {
        for good in [
            "0123456789abcdef0123456789ABCDEF",
            "6f1c2a7e-93b4-4d2c-8a51-0f9e3c7b2d14",
            &"f".repeat(64),
        ] {
            check_session_id(good).unwrap();
        }
        for (bad, why) in [
            ("", "missing"),
            ("0123456789abcdef0123456789abcde", "31 characters"),
            ("cmpl-abcdefghijklmnopqrstuvwx-0badcafe", "hex digits"),
            ("s1", "2 characters"),
            (&"a".repeat(97), "97 characters"),
        ] {
            let err = check_session_id(bad).unwrap_err();
            assert_eq!(err.kind, ErrorKind::InvalidArgument);
            let message = err.to_string();
            assert!(message.contains(why), "{bad:?}: {message}");
            if !bad.is_empty() {
                assert!(!message.contains(bad), "the id is echoed: {message}");
            }
        }
    }

    #[test]
    fn callers_are_their_certificates() {
        let a = Caller::from_leaf(Some(b"cert a"));
        assert_eq!(a, Caller::from_leaf(Some(b"cert a")));
        assert_ne!(a, Caller::from_leaf(Some(b"cert b")));
        assert_ne!(a, Caller::Anonymous);
        assert_eq!(Caller::from_leaf(None), Caller::Anonymous);
    }
}
