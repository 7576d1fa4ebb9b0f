//! Register's reachability check: the registry dials the endpoint a node claims (over the
//! registry's own TLS files for `https://`) and asks who serves there (gRPC `Info`), within a
//! short timeout. A node the registry cannot reach would be given layers nobody can use; one
//! that answers as another node is pointing at someone else's worker (many keys claiming one
//! machine's capacity).

use std::time::Duration;

use neuroshard_common::{Error, Result};
use neuroshard_proto::worker::v1::InfoRequest;
use neuroshard_proto::worker::v1::shard_worker_client::ShardWorkerClient;
use neuroshard_runtime::tls::TlsFiles;

/// Checks that `endpoint` answers `Info` as `node_id` within `timeout`.
pub async fn check_endpoint(
    tls: &TlsFiles,
    endpoint: &str,
    node_id: &str,
    timeout: Duration,
) -> Result<()> {
    let unreachable = |cause: &str| {
        Error::failed_precondition(format!(
            "endpoint `{endpoint}` not reachable from the registry: {cause}"
        ))
    };
    let ask = async {
        let channel = tls.connect(endpoint).await.map_err(|e| e.message)?;
        ShardWorkerClient::new(channel)
            .info(InfoRequest {})
            .await
            .map(tonic::Response::into_inner)
            .map_err(|status| format!("Info: {}", status.message()))
    };
    let info = tokio::time::timeout(timeout, ask)
        .await
        .map_err(|_| unreachable(&format!("no answer within {} ms", timeout.as_millis())))?
        .map_err(|cause| unreachable(&cause))?;
    if info.node_id != node_id {
        return Err(Error::failed_precondition(format!(
            "endpoint `{endpoint}` answers as node {}, not as the registering node {node_id}",
            info.node_id
        )));
    }
    Ok(())
}
