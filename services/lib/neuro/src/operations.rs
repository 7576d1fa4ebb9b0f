//! Signing ledger operations, for whoever submits them (wallets, nodes, gateways, tests): an
//! [`Operation`] encoded and signed as `LedgerOperation` on a network.

use neuroshard_common::Error;
use neuroshard_common::identity::NodeKey;
use neuroshard_common::signing::sign;
use neuroshard_proto::common::v1::SignedEnvelope;
use neuroshard_proto::ledger::v1::{Operation, operation};
use prost::Message;

/// The message name a ledger operation is signed as (its domain tag).
pub const OPERATION: &str = "LedgerOperation";

/// `kind` signed by `key` with `nonce` at `timestamp_ms`.
pub fn sign_operation(
    key: &NodeKey,
    network_id: &str,
    nonce: u64,
    timestamp_ms: i64,
    kind: operation::Kind,
) -> Result<SignedEnvelope, Error> {
    let payload = Operation { kind: Some(kind) }.encode_to_vec();
    sign(key, network_id, OPERATION, nonce, timestamp_ms, payload)
}
