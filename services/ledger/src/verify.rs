//! From a signed envelope to a checked [`Request`], pure: the signature (low-S, this network,
//! message `LedgerOperation`), the canonical encoding of the payload (unknown fields are
//! refused, not ignored), who may sign what, and the bindings — a
//! training proof to an aggregator-signed `Receipt` for the signing node, a slash to
//! aggregator-signed `Evidence` of fraud, an uptime proof to a registry-signed
//! `UptimeAttestation`, escrows and settlements to a trusted gateway key.
//! The idempotency key each operation is applied under is chosen here; the timestamp window
//! and nonce are checked by the store once it knows the key is new ([`crate::journal`]).

use std::collections::BTreeSet;

use neuroshard_common::Error;
use neuroshard_common::signing::{self, Verified};
use neuroshard_proto::aggregator::v1::{Evidence, Receipt};
use neuroshard_proto::common::v1::SignedEnvelope;
use neuroshard_proto::ledger::v1::{Operation, operation};
use neuroshard_proto::registry::v1::UptimeAttestation;
use prost::Message;
use sha2::{Digest, Sha256};

use crate::account::{check_address, check_request_id};
use crate::amount::Amount;
use crate::ops::Op;

pub use neuroshard_neuro::OPERATION;
/// Evidence kinds that prove fraud (and so slash); the others (late, unknown span, …) do not.
pub const SLASHABLE: &[&str] = &["commitment", "flagged"];
/// Most processors one settlement may list.
pub const MAX_ROUTE: usize = 256;

/// A verified operation and what it is applied under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Applied at most once per key.
    pub key: String,
    /// SHA-256 of the signer and payload: a retry must match it to get the stored outcome.
    pub payload_hash: [u8; 32],
    /// Wallet operations claim (signer, nonce): nonces strictly increase per signer.
    pub nonce: Option<(String, u64)>,
    /// When it was signed, and how far from the ledger's clock a new operation may be (a
    /// retry of an applied one gets its outcome whenever it comes).
    pub timestamp_ms: i64,
    pub window_ms: i64,
    pub op: Op,
}

/// Whom the ledger trusts, and its clock rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verifier {
    pub network_id: String,
    /// Node ids of the aggregators whose receipts and evidence count.
    pub aggregators: BTreeSet<String>,
    /// Node ids of the gateways that may escrow and settle.
    pub gateways: BTreeSet<String>,
    /// Node ids of the registries whose uptime attestations pay.
    pub registries: BTreeSet<String>,
    /// The uptime epoch length attestations must have (one proof per node and epoch).
    pub uptime_epoch_ms: i64,
    pub window_ms: i64,
    /// Receipts and evidence older than this are refused.
    pub receipt_max_age_ms: i64,
}

fn canonical<M: Message + Default>(bytes: &[u8], what: &str) -> Result<M, Error> {
    let message = M::decode(bytes)
        .map_err(|e| Error::invalid_argument(format!("{what}: not a valid message: {e}")))?;
    if message.encode_to_vec() != bytes {
        return Err(Error::invalid_argument(format!(
            "{what}: not the canonical encoding (unknown or repeated fields are refused)"
        )));
    }
    Ok(message)
}

/// The wallet a reward is paid to: `payout`, or the node's own when empty.
fn payout_of(node: &str, payout: String, field: &str) -> Result<String, Error> {
    if payout.is_empty() {
        Ok(node.to_string())
    } else {
        check_address(field, &payout)?;
        Ok(payout)
    }
}

/// The ledger's own request to refund the unsettled escrow of `request_id` at `now_ms`
/// (unsigned; applied once under `expire/<request id>`).
pub fn expiry(request_id: &str, now_ms: i64) -> Request {
    let mut h = Sha256::new();
    h.update(b"expire/");
    h.update(request_id.as_bytes());
    Request {
        key: format!("expire/{request_id}"),
        payload_hash: h.finalize().into(),
        nonce: None,
        timestamp_ms: now_ms,
        window_ms: 60_000,
        op: Op::Expire {
            request_id: request_id.to_string(),
        },
    }
}

impl Verifier {
    /// Checks `envelope` at `now_ms`.
    pub fn check(&self, envelope: &SignedEnvelope, now_ms: i64) -> Result<Request, Error> {
        let signed = signing::verify(envelope, &self.network_id, OPERATION)?;
        let operation: Operation = canonical(&signed.payload, "operation")?;
        let kind = operation
            .kind
            .ok_or_else(|| Error::invalid_argument("operation: no kind is set"))?;
        let signer = signed.node_id.clone();
        let mut payload_hash: [u8; 32] = {
            let mut h = Sha256::new();
            h.update(signed.signer);
            h.update(&signed.payload);
            h.finalize().into()
        };
        let wallet_key = |signed: &Verified| {
            (
                format!("wallet/{}/{}", signed.node_id, signed.nonce),
                Some((signed.node_id.clone(), signed.nonce)),
            )
        };
        let ((key, nonce), op) = match kind {
            operation::Kind::Transfer(t) => {
                check_address("transfer.to", &t.to)?;
                let amount = Amount::positive(t.amount, "transfer.amount")?;
                (
                    wallet_key(&signed),
                    Op::Transfer {
                        from: signer,
                        to: t.to,
                        amount,
                    },
                )
            }
            operation::Kind::Stake(s) => (
                wallet_key(&signed),
                Op::Stake {
                    address: signer,
                    amount: Amount::positive(s.amount, "stake.amount")?,
                },
            ),
            operation::Kind::Unstake(u) => (
                wallet_key(&signed),
                Op::Unstake {
                    address: signer,
                    amount: Amount::positive(u.amount, "unstake.amount")?,
                },
            ),
            operation::Kind::TrainingProof(proof) => {
                let envelope = proof
                    .receipt
                    .as_ref()
                    .ok_or_else(|| Error::invalid_argument("training_proof.receipt: missing"))?;
                let (aggregator, receipt): (String, Receipt) = self.trusted_signed(
                    envelope,
                    "Receipt",
                    &self.aggregators,
                    "an aggregator",
                    now_ms,
                )?;
                if receipt.aggregator_id != aggregator {
                    return Err(Error::invalid_argument(
                        "receipt: aggregator_id is not its signer",
                    ));
                }
                if receipt.node_id != signer {
                    return Err(Error::permission_denied(format!(
                        "receipt: it is for node {}, not for the signer {signer}",
                        receipt.node_id
                    )));
                }
                let span = receipt
                    .span
                    .map(|s| (s.start, s.end))
                    .ok_or_else(|| Error::invalid_argument("receipt: no span"))?;
                let payout = payout_of(&signer, proof.payout, "training_proof.payout")?;
                let capacity = receipt.capacity_tokens_per_second;
                if !(capacity.is_finite() && capacity >= 0.0) {
                    return Err(Error::invalid_argument(
                        "receipt: capacity_tokens_per_second must be a finite number >= 0",
                    ));
                }
                (
                    (
                        format!("training/{signer}/{}/{}-{}", receipt.round, span.0, span.1),
                        None,
                    ),
                    Op::Training {
                        node: signer,
                        payout,
                        round: receipt.round,
                        span,
                        num_layers: receipt.num_layers,
                        tokens: receipt.tokens,
                        // Saturating; a fraction of a token per 1000 s does not matter.
                        capacity_milli: (capacity * 1000.0) as u64,
                        elapsed_ms: receipt.elapsed_ms,
                    },
                )
            }
            operation::Kind::UptimeProof(proof) => {
                let envelope = proof
                    .attestation
                    .as_ref()
                    .ok_or_else(|| Error::invalid_argument("uptime_proof.attestation: missing"))?;
                let (registry, attestation): (String, UptimeAttestation) = self.trusted_signed(
                    envelope,
                    "UptimeAttestation",
                    &self.registries,
                    "a registry",
                    now_ms,
                )?;
                if attestation.registry_id != registry {
                    return Err(Error::invalid_argument(
                        "uptimeattestation: registry_id is not its signer",
                    ));
                }
                if attestation.node_id != signer {
                    return Err(Error::permission_denied(format!(
                        "uptimeattestation: it is for node {}, not for the signer {signer}",
                        attestation.node_id
                    )));
                }
                let epoch_ms = i64::try_from(attestation.epoch_ms).unwrap_or(i64::MAX);
                let start = i64::try_from(attestation.epoch_start_unix_ms).unwrap_or(i64::MAX);
                if epoch_ms != self.uptime_epoch_ms || start % self.uptime_epoch_ms != 0 {
                    return Err(Error::invalid_argument(format!(
                        "uptimeattestation: epoch [{start}, +{epoch_ms} ms) is not one of this ledger's {} ms epochs",
                        self.uptime_epoch_ms
                    )));
                }
                if attestation.uptime_ms > attestation.epoch_ms {
                    return Err(Error::invalid_argument(format!(
                        "uptimeattestation: {} ms of uptime in a {} ms epoch",
                        attestation.uptime_ms, attestation.epoch_ms
                    )));
                }
                let payout = payout_of(&signer, proof.payout, "uptime_proof.payout")?;
                // The registry signs afresh each time it is asked: a retry is the same
                // attested figures, whatever the attestation's own signature and nonce.
                payload_hash = {
                    let mut h = Sha256::new();
                    h.update(b"uptime/");
                    h.update(signed.signer);
                    h.update(attestation.encode_to_vec());
                    h.update(payout.as_bytes());
                    h.finalize().into()
                };
                (
                    (format!("uptime/{signer}/{start}"), None),
                    Op::Uptime {
                        node: signer,
                        payout,
                        epoch_start_ms: start,
                        uptime_ms: attestation.uptime_ms,
                    },
                )
            }
            operation::Kind::Slash(slash) => {
                let envelope = slash
                    .evidence
                    .as_ref()
                    .ok_or_else(|| Error::invalid_argument("slash.evidence: missing"))?;
                let (_, evidence): (String, Evidence) = self.trusted_signed(
                    envelope,
                    "Evidence",
                    &self.aggregators,
                    "an aggregator",
                    now_ms,
                )?;
                if !SLASHABLE.contains(&evidence.kind.as_str()) {
                    return Err(Error::failed_precondition(format!(
                        "slash: evidence of kind {:?} does not prove fraud (slashable: {})",
                        evidence.kind,
                        SLASHABLE.join(", ")
                    )));
                }
                check_address("evidence.node_id", &evidence.node_id)?;
                let digest = hex::encode(Sha256::digest(&envelope.payload));
                (
                    (format!("slash/{digest}"), None),
                    Op::Slash {
                        node: evidence.node_id,
                        reporter: signer,
                        kind: evidence.kind,
                    },
                )
            }
            operation::Kind::Escrow(e) => {
                self.gateway(&signer)?;
                check_request_id(&e.request_id)?;
                check_address("escrow.payer", &e.payer)?;
                (
                    (format!("escrow/{}", e.request_id), None),
                    Op::Escrow {
                        gateway: signer,
                        request_id: e.request_id,
                        payer: e.payer,
                        max_tokens: e.max_tokens,
                        utilisation_ppm: e.utilisation_ppm,
                    },
                )
            }
            operation::Kind::Settle(s) => {
                self.gateway(&signer)?;
                check_request_id(&s.request_id)?;
                check_address("settle.driver", &s.driver)?;
                check_address("settle.validator", &s.validator)?;
                if s.processors.len() > MAX_ROUTE {
                    return Err(Error::invalid_argument(format!(
                        "settle.processors: {} entries, at most {MAX_ROUTE}",
                        s.processors.len()
                    )));
                }
                for p in &s.processors {
                    check_address("settle.processors", p)?;
                }
                (
                    (format!("settle/{}", s.request_id), None),
                    Op::Settle {
                        gateway: signer,
                        request_id: s.request_id,
                        tokens: s.tokens,
                        driver: s.driver,
                        processors: s.processors,
                        validator: s.validator,
                    },
                )
            }
        };
        Ok(Request {
            key,
            payload_hash,
            nonce,
            timestamp_ms: signed.timestamp_ms,
            window_ms: self.window_ms,
            op,
        })
    }

    fn gateway(&self, signer: &str) -> Result<(), Error> {
        if self.gateways.contains(signer) {
            Ok(())
        } else {
            Err(Error::permission_denied(format!(
                "{signer} is not a gateway this ledger trusts to escrow and settle"
            )))
        }
    }

    /// A `message_name` signed by one of `trusted` (`whom` names them in a refusal: "an
    /// aggregator", "a registry"), not older than the receipt age.
    fn trusted_signed<M: Message + Default>(
        &self,
        envelope: &SignedEnvelope,
        message_name: &str,
        trusted: &BTreeSet<String>,
        whom: &str,
        now_ms: i64,
    ) -> Result<(String, M), Error> {
        let what = message_name.to_lowercase();
        let signed = signing::verify(envelope, &self.network_id, message_name)
            .map_err(|e| Error::new(e.kind, format!("{what}: {}", e.message)))?;
        if !trusted.contains(&signed.node_id) {
            return Err(Error::permission_denied(format!(
                "{what}: signed by {}, not {whom} this ledger trusts",
                signed.node_id
            )));
        }
        if signed.timestamp_ms > now_ms.saturating_add(self.window_ms)
            || signed.timestamp_ms < now_ms.saturating_sub(self.receipt_max_age_ms)
        {
            return Err(Error::failed_precondition(format!(
                "{what}: signed at unix ms {}, outside [now - {} ms, now + {} ms]",
                signed.timestamp_ms, self.receipt_max_age_ms, self.window_ms
            )));
        }
        let message = canonical(&signed.payload, &what)?;
        Ok((signed.node_id, message))
    }
}
