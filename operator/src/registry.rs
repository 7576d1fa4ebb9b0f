//! The operator's link to the layer-registry: what it says of a node (`DescribeNodes`), and
//! drains signed by the operator's own key (the registry accepts them from the keys its
//! `operators` list names). Behind a trait so the reconcile scenarios can stand a scripted
//! registry in its place; [`GrpcRegistry`] is the real one.

use std::path::Path;

use futures_util::future::BoxFuture;
use neuroshard_common::identity::NodeKey;
use neuroshard_common::signing::{NonceSource, now_ms, sign};
use neuroshard_common::{Error, ErrorKind};
use neuroshard_proto::registry::v1::layer_registry_client::LayerRegistryClient;
use neuroshard_proto::registry::v1::{DescribeNodesRequest, DrainRequest, NodeDescription};
use neuroshard_runtime::tls::TlsFiles;
use prost::Message;
use tonic::transport::Channel;

/// What the reconciler asks of the registry.
pub trait Registry: Send + Sync + 'static {
    /// The registry's description of `node_id` (`registered` false when it does not know it).
    fn describe(&self, node_id: String) -> BoxFuture<'_, Result<NodeDescription, Error>>;
    /// Every node the registry knows.
    fn describe_all(&self) -> BoxFuture<'_, Result<Vec<NodeDescription>, Error>>;
    /// Starts (or repeats) the drain of `node_id`; the layers still pending.
    fn drain(&self, node_id: String) -> BoxFuture<'_, Result<Vec<u32>, Error>>;
}

/// The registry over gRPC, drains signed with the operator's key.
pub struct GrpcRegistry {
    client: LayerRegistryClient<Channel>,
    key: NodeKey,
    network_id: String,
    nonces: NonceSource,
}

impl std::fmt::Debug for GrpcRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcRegistry")
            .field("operator_id", &self.key.node_id())
            .finish_non_exhaustive()
    }
}

impl GrpcRegistry {
    /// A lazily connected client of `url` (TLS as `tls` says), signing with the key in
    /// `key_file` (created 0600 when missing).
    pub fn new(
        url: &str,
        tls: &TlsFiles,
        key_file: &Path,
        network_id: &str,
    ) -> Result<Self, Error> {
        let key = NodeKey::load_or_create(key_file)?;
        Ok(Self {
            client: LayerRegistryClient::new(tls.endpoint(url)?.connect_lazy()),
            key,
            network_id: network_id.to_string(),
            nonces: NonceSource::new(),
        })
    }

    /// The operator's id: what the registry's `operators` list must name.
    pub fn operator_id(&self) -> &str {
        self.key.node_id()
    }
}

fn from_status(what: &str, status: &tonic::Status) -> Error {
    Error::new(
        ErrorKind::from_grpc_code(status.code() as i32),
        format!("registry {what}: {}", status.message()),
    )
}

impl Registry for GrpcRegistry {
    fn describe(&self, node_id: String) -> BoxFuture<'_, Result<NodeDescription, Error>> {
        Box::pin(async move {
            let mut client = self.client.clone();
            let response = client
                .describe_nodes(DescribeNodesRequest {
                    node_ids: vec![node_id.clone()],
                })
                .await
                .map_err(|s| from_status("DescribeNodes", &s))?;
            response
                .into_inner()
                .nodes
                .into_iter()
                .find(|d| d.node_id == node_id)
                .ok_or_else(|| Error::internal("registry DescribeNodes: the node is missing"))
        })
    }

    fn describe_all(&self) -> BoxFuture<'_, Result<Vec<NodeDescription>, Error>> {
        Box::pin(async move {
            let mut client = self.client.clone();
            Ok(client
                .describe_nodes(DescribeNodesRequest::default())
                .await
                .map_err(|s| from_status("DescribeNodes", &s))?
                .into_inner()
                .nodes)
        })
    }

    fn drain(&self, node_id: String) -> BoxFuture<'_, Result<Vec<u32>, Error>> {
        Box::pin(async move {
            let envelope = sign(
                &self.key,
                &self.network_id,
                "DrainRequest",
                self.nonces.next(),
                now_ms(),
                DrainRequest { node_id }.encode_to_vec(),
            )?;
            let mut client = self.client.clone();
            Ok(client
                .drain(envelope)
                .await
                .map_err(|s| from_status("Drain", &s))?
                .into_inner()
                .pending_layers)
        })
    }
}
