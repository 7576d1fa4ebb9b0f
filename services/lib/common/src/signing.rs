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
    if (timestamp_ms - now_ms).abs() > window_ms {
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

    #[test]
    fn nonces_strictly_increase() {
        let source = NonceSource::new();
        let a = source.next();
        let b = source.next();
        assert!(b > a);
        assert!(NonceSource::new().next() > 0);
    }
}
