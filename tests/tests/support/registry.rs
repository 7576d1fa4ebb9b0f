//! Talking to a registry process as a node does: signed envelopes, registration requests, and
//! reading the assignment back.

use neuroshard_common::identity::NodeKey;
use neuroshard_common::signing::{now_ms, sign};
use neuroshard_proto::common::v1::SignedEnvelope;
use neuroshard_proto::registry::v1::layer_registry_client::LayerRegistryClient;
use neuroshard_proto::registry::v1::{
    AssignmentSnapshot, Capacity, Device, GetAssignmentRequest, RegisterRequest,
};
use prost::Message;
use tonic::transport::Channel;

/// `message` signed by `key` as a `name` message on `network`, now, with `nonce`.
pub fn envelope(
    key: &NodeKey,
    network: &str,
    name: &str,
    nonce: u64,
    message: &impl Message,
) -> SignedEnvelope {
    sign(key, network, name, nonce, now_ms(), message.encode_to_vec()).unwrap()
}

/// A CPU node at `endpoint` claiming `memory` bytes and `tokens_per_second`.
pub fn register_request(endpoint: &str, memory: u64, tokens_per_second: f64) -> RegisterRequest {
    RegisterRequest {
        endpoint: endpoint.into(),
        capacity: Some(Capacity {
            usable_memory_bytes: memory,
            device: Device::Cpu as i32,
            tokens_per_second,
        }),
        payout_address: String::new(),
        preferred_role: 0,
    }
}

pub async fn assignment(client: &mut LayerRegistryClient<Channel>) -> AssignmentSnapshot {
    client
        .get_assignment(GetAssignmentRequest {})
        .await
        .unwrap()
        .into_inner()
}

/// How many nodes hold each layer, by layer index.
pub fn holders(snapshot: &AssignmentSnapshot) -> Vec<u32> {
    let layers = snapshot.architecture.as_ref().unwrap().num_layers;
    (0..layers)
        .map(|l| {
            snapshot
                .nodes
                .iter()
                .filter(|n| n.span.is_some_and(|s| s.start <= l && l < s.end))
                .count() as u32
        })
        .collect()
}
