//! Signed envelopes. The signature covers SHA-256 of a canonical encoding of: the domain tag
//! `neuroshard/v1/<MessageName>`, the network id, the signer's compressed key, the nonce, the
//! timestamp and the payload, each length-prefixed, so no two different messages share
//! signed bytes and a signature for one message type or network is useless for another.
//! Only low-S signatures are accepted (no malleable twins). Replay protection keys on
//! (signer, nonce), never on signature bytes.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use k256::ecdsa::Signature;
use k256::ecdsa::signature::hazmat::{PrehashSigner, PrehashVerifier};
use neuroshard_proto::common::v1::SignedEnvelope;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::identity::{NodeKey, PUBLIC_KEY_LEN, node_id_of, parse_public_key};

/// Default accepted clock difference between signer and verifier.
pub const DEFAULT_WINDOW_MS: i64 = 60_000;

fn digest(
    message_name: &str,
    network_id: &str,
    signer: &[u8],
    nonce: u64,
    timestamp_ms: i64,
    payload: &[u8],
) -> [u8; 32] {
    let mut h = Sha256::new();
    let tag = format!("neuroshard/v1/{message_name}");
    for part in [tag.as_bytes(), network_id.as_bytes(), signer] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    h.update(nonce.to_be_bytes());
    h.update(timestamp_ms.to_be_bytes());
    h.update((payload.len() as u64).to_be_bytes());
    h.update(payload);
    h.finalize().into()
}

/// Signs `payload` as a `message_name` message on `network_id`.
pub fn sign(
    key: &NodeKey,
    network_id: &str,
    message_name: &str,
    nonce: u64,
    timestamp_ms: i64,
    payload: Vec<u8>,
) -> Result<SignedEnvelope> {
    let signer = key.public_key();
    let prehash = digest(
        message_name,
        network_id,
        &signer,
        nonce,
        timestamp_ms,
        &payload,
    );
    let signature: Signature = key
        .signing_key()
        .sign_prehash(&prehash)
        .map_err(|_| Error::internal("signing failed"))?;
    // k256 already produces low-S; normalising keeps that a guarantee rather than an accident.
    let signature = signature.normalize_s().unwrap_or(signature);
    Ok(SignedEnvelope {
        signer: signer.to_vec(),
        nonce,
        timestamp_ms,
        payload,
        signature: signature.to_bytes().to_vec(),
    })
}

/// A checked envelope: who signed it, and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub node_id: String,
    pub signer: [u8; PUBLIC_KEY_LEN],
    pub nonce: u64,
    pub timestamp_ms: i64,
    pub payload: Vec<u8>,
}

/// Checks the signature of `envelope` as a `message_name` message on `network_id`.
/// Freshness (nonce, timestamp) is checked separately, against stored state.
pub fn verify(envelope: &SignedEnvelope, network_id: &str, message_name: &str) -> Result<Verified> {
    let key = parse_public_key(&envelope.signer)?;
    let signature = Signature::from_slice(&envelope.signature).map_err(|_| {
        Error::unauthenticated(format!(
            "signature: {} bytes is not a 64-byte r||s",
            envelope.signature.len()
        ))
    })?;
    if signature.normalize_s().is_some() {
        return Err(Error::unauthenticated(
            "signature: high-S signatures are refused; sign with low S",
        ));
    }
    let prehash = digest(
        message_name,
        network_id,
        &envelope.signer,
        envelope.nonce,
        envelope.timestamp_ms,
        &envelope.payload,
    );
    key.verify_prehash(&prehash, &signature).map_err(|_| {
        Error::unauthenticated(format!(
            "signature: does not verify for a {message_name} on network {network_id}"
        ))
    })?;
    let mut signer = [0u8; PUBLIC_KEY_LEN];
    signer.copy_from_slice(&envelope.signer);
    Ok(Verified {
        node_id: node_id_of(&signer),
        signer,
        nonce: envelope.nonce,
        timestamp_ms: envelope.timestamp_ms,
        payload: envelope.payload.clone(),
    })
}

/// Freshness rule, pure so any store (memory, PostgreSQL) applies the same one: the nonce
/// must exceed the signer's last accepted nonce, and the timestamp must be within `window_ms`
/// of the verifier's clock.
pub fn check_fresh(
    last_nonce: Option<u64>,
    nonce: u64,
    timestamp_ms: i64,
    now_ms: i64,
    window_ms: i64,
) -> Result<()> {
    if let Some(last) = last_nonce
        && nonce <= last
    {
        return Err(Error::failed_precondition(format!(
            "nonce: {nonce} is not greater than the last accepted nonce {last} (replay?)"
        )));
    }
    // `abs_diff` is exact over all of i64 (the difference of two i64 can need 64 bits), so a
    // timestamp near i64::MIN cannot wrap into the window; a negative window admits nothing.
    let skew = timestamp_ms.abs_diff(now_ms);
    if !u64::try_from(window_ms).is_ok_and(|window| skew <= window) {
        return Err(Error::failed_precondition(format!(
            "timestamp: {timestamp_ms} ms is more than {window_ms} ms from the verifier's clock ({now_ms} ms)"
        )));
    }
    Ok(())
}

/// In-process replay guard: last accepted nonce per signer.
#[derive(Debug, Default)]
pub struct ReplayGuard {
    last: Mutex<HashMap<String, u64>>,
}

impl ReplayGuard {
    /// Accepts `verified` once: records its nonce if fresh, refuses it otherwise.
    pub fn admit(&self, verified: &Verified, now_ms: i64, window_ms: i64) -> Result<()> {
        let mut last = self
            .last
            .lock()
            .map_err(|_| Error::internal("replay guard poisoned"))?;
        check_fresh(
            last.get(&verified.node_id).copied(),
            verified.nonce,
            verified.timestamp_ms,
            now_ms,
            window_ms,
        )?;
        last.insert(verified.node_id.clone(), verified.nonce);
        Ok(())
    }
}

/// Strictly increasing nonces for a signer, seeded from the clock in microseconds so a
/// restarted process keeps increasing past the nonces it used before.
#[derive(Debug)]
pub struct NonceSource {
    last: AtomicU64,
}

impl NonceSource {
    pub fn new() -> Self {
        Self {
            last: AtomicU64::new(now_micros()),
        }
    }

    pub fn next(&self) -> u64 {
        let floor = now_micros();
        let mut current = self.last.load(Ordering::Relaxed);
        loop {
            let next = current.max(floor).saturating_add(1);
            match self.last.compare_exchange_weak(
                current,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return next,
                Err(seen) => current = seen,
            }
        }
    }
}

impl Default for NonceSource {
    fn default() -> Self {
        Self::new()
    }
}

fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    (now_micros() / 1000) as i64
}

#[cfg(test)]
mod tests {
    use super::*;
    use k256::elliptic_curve::scalar::IsHigh;
    use proptest::prelude::Just;
    use proptest::strategy::Strategy;

    const NET: &str = "testnet";

    fn signed(key: &NodeKey, nonce: u64) -> SignedEnvelope {
        sign(
            key,
            NET,
            "RegisterRequest",
            nonce,
            now_ms(),
            b"payload".to_vec(),
        )
        .unwrap()
    }

    #[test]
    fn sign_then_verify() {
        let key = NodeKey::generate();
        let env = signed(&key, 1);
        let v = verify(&env, NET, "RegisterRequest").unwrap();
        assert_eq!(v.node_id, key.node_id());
        assert_eq!(v.payload, b"payload");
    }

    #[test]
    fn any_change_breaks_the_signature() {
        let key = NodeKey::generate();
        let env = signed(&key, 1);
        let err = |e: &SignedEnvelope, net: &str, name: &str| verify(e, net, name).unwrap_err();
        assert!(
            err(&env, "mainnet", "RegisterRequest")
                .to_string()
                .contains("does not verify")
        );
        assert!(
            err(&env, NET, "HeartbeatRequest")
                .to_string()
                .contains("does not verify")
        );
        let mut forged = env.clone();
        forged.payload = b"payloae".to_vec();
        assert_eq!(
            err(&forged, NET, "RegisterRequest").kind,
            crate::error::ErrorKind::Unauthenticated
        );
        let mut forged = env.clone();
        forged.nonce += 1;
        assert!(verify(&forged, NET, "RegisterRequest").is_err());
        let mut forged = env.clone();
        forged.signer = NodeKey::generate().public_key().to_vec();
        assert!(verify(&forged, NET, "RegisterRequest").is_err());
        let mut forged = env;
        forged.signature.truncate(10);
        assert!(
            err(&forged, NET, "RegisterRequest")
                .to_string()
                .contains("64-byte")
        );
    }

    #[test]
    fn high_s_twin_is_refused() {
        let key = NodeKey::generate();
        let env = signed(&key, 1);
        let sig = Signature::from_slice(&env.signature).unwrap();
        assert!(!bool::from(sig.s().is_high()));
        // The malleable twin (r, n - s) is mathematically valid; we refuse it.
        let twin = Signature::from_scalars(sig.r(), -*sig.s()).unwrap();
        let mut high = env;
        high.signature = twin.to_bytes().to_vec();
        let err = verify(&high, NET, "RegisterRequest")
            .unwrap_err()
            .to_string();
        assert!(err.contains("high-S"), "{err}");
    }

    #[test]
    fn replays_and_stale_timestamps_are_refused() {
        let key = NodeKey::generate();
        let guard = ReplayGuard::default();
        let v1 = verify(&signed(&key, 5), NET, "RegisterRequest").unwrap();
        guard.admit(&v1, now_ms(), DEFAULT_WINDOW_MS).unwrap();
        let err = guard
            .admit(&v1, now_ms(), DEFAULT_WINDOW_MS)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("not greater than the last accepted nonce 5"),
            "{err}"
        );
        let older = verify(&signed(&key, 4), NET, "RegisterRequest").unwrap();
        assert!(guard.admit(&older, now_ms(), DEFAULT_WINDOW_MS).is_err());
        let stale = sign(&key, NET, "RegisterRequest", 9, now_ms() - 120_000, vec![]).unwrap();
        let stale = verify(&stale, NET, "RegisterRequest").unwrap();
        let err = guard
            .admit(&stale, now_ms(), DEFAULT_WINDOW_MS)
            .unwrap_err()
            .to_string();
        assert!(err.contains("timestamp"), "{err}");
        // A refused message does not advance the nonce: 6 is still accepted.
        let v6 = verify(&signed(&key, 6), NET, "RegisterRequest").unwrap();
        guard.admit(&v6, now_ms(), DEFAULT_WINDOW_MS).unwrap();
    }

    /// The rule from its definition, in exact (128-bit) arithmetic.
    fn within_window(timestamp_ms: i64, now_ms: i64, window_ms: i64) -> bool {
        window_ms >= 0
            && (i128::from(timestamp_ms) - i128::from(now_ms)).abs() <= i128::from(window_ms)
    }

    #[test]
    fn extreme_timestamps_never_wrap_into_the_window() {
        let now = now_ms();
        for (timestamp, window) in [
            // timestamp - now = -2^63 exactly: its `abs()` wraps to a negative number.
            (i64::MIN + now, DEFAULT_WINDOW_MS),
            (i64::MIN, DEFAULT_WINDOW_MS),
            (i64::MIN + 1, DEFAULT_WINDOW_MS),
            (i64::MAX, DEFAULT_WINDOW_MS),
            (i64::MIN, i64::MAX),
            (now, -1),
            (now, i64::MIN),
        ] {
            let err = check_fresh(None, 1, timestamp, now, window).unwrap_err();
            assert!(
                err.to_string().contains("timestamp"),
                "{timestamp} {window}: {err}"
            );
        }
        // Both clocks at the extremes: the difference is 2^64 - 1, beyond any window.
        assert!(check_fresh(None, 1, i64::MIN, i64::MAX, i64::MAX).is_err());
        assert!(check_fresh(None, 1, i64::MAX, i64::MIN, i64::MAX).is_err());
        // Equal extremes are zero apart.
        check_fresh(None, 1, i64::MIN, i64::MIN, 0).unwrap();
        check_fresh(None, 1, i64::MAX, i64::MAX, 0).unwrap();
        check_fresh(None, u64::MAX, now, now, 0).unwrap();
        assert!(check_fresh(Some(u64::MAX), u64::MAX, now, now, 0).is_err());
        // The window's edge is inclusive.
        check_fresh(None, 1, now - DEFAULT_WINDOW_MS, now, DEFAULT_WINDOW_MS).unwrap();
        assert!(check_fresh(None, 1, now - DEFAULT_WINDOW_MS - 1, now, DEFAULT_WINDOW_MS).is_err());
    }

    proptest::proptest! {
        #[test]
        fn the_window_check_is_exact_over_all_of_i64(
            timestamp in proptest::prop_oneof![
                proptest::num::i64::ANY,
                Just(i64::MIN), Just(i64::MAX), Just(0i64),
                (-120_000i64..120_000).prop_map(|d| 1_700_000_000_000i64 + d),
            ],
            now in proptest::prop_oneof![
                proptest::num::i64::ANY,
                Just(i64::MIN), Just(i64::MAX),
                Just(1_700_000_000_000i64),
            ],
            window in proptest::prop_oneof![
                proptest::num::i64::ANY,
                Just(i64::MAX), Just(0i64), Just(DEFAULT_WINDOW_MS),
            ],
            // Half the cases sit exactly 2^63 before `now` (the wrapping difference).
            minus_two_to_63 in proptest::bool::ANY,
            last in proptest::option::of(proptest::num::u64::ANY),
            nonce in proptest::prop_oneof![proptest::num::u64::ANY, Just(u64::MAX), Just(0u64)],
        ) {
            let timestamp = if minus_two_to_63 && now >= 0 { now + i64::MIN } else { timestamp };
            let fresh_nonce = last.is_none_or(|last| nonce > last);
            let expected = fresh_nonce && within_window(timestamp, now, window);
            proptest::prop_assert_eq!(
                check_fresh(last, nonce, timestamp, now, window).is_ok(),
                expected
            );
        }
    }

    #[test]
    fn nonces_strictly_increase() {
        let source = NonceSource::new();
        let a = source.next();
        let b = source.next();
        assert!(b > a);
        assert!(NonceSource::new().next() > 0);
    }
}
