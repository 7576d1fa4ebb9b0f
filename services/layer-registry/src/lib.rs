//! The layer registry: membership, capacities, liveness, layer assignment with replicas, and
//! routes, stored in PostgreSQL so several replicas can serve one swarm.
//!
//! Pure policy (no I/O, tested directly), in dependency order:
//! - [`stored`]: what the database holds, as plain data (nodes with heartbeat age, the
//!   published architecture with its growth timer);
//! - [`liveness`]: live, suspect, dead or draining, from heartbeat age;
//! - [`placement`]: layers on nodes (contiguous spans, ≥ `min_replicas` holders per layer
//!   when capacity allows, exact deficits otherwise, pipelines, roles);
//! - [`architecture`]: which architecture to publish (fixed, or from live capacity with
//!   growth);
//! - [`snapshot`]: the published `AssignmentSnapshot` from stored nodes and the architecture;
//! - [`routes`]: candidate routes through a snapshot's pipelines;
//! - [`trust`]: what the registry believes of a node's claims (admission, caps, measured
//!   throughput, which capacity may drive growth);
//! - [`uptime`]: the live time heartbeats add per epoch, and when an epoch may be attested;
//! - [`describe`]: what an operator needs of a node (loaded or not, drain progress, an unmet
//!   role preference).
//!
//! I/O and wiring:
//! - [`store`]: PostgreSQL (migrations, nonces per signer kept forever, observations,
//!   published architecture and assignment; connection and TLS from `neuroshard_postgres`),
//!   mapping rows into [`stored`] types; it never calls the policy itself but runs the
//!   service's closure under its publish lock;
//! - [`probe`]: Register's check that a node answers at its endpoint;
//! - [`service`]: the gRPC adapter joining store and policy; [`config`]: layered configuration;
//! - [`run`]: serves until `shutdown` resolves, re-publishing the assignment as liveness changes.

pub mod architecture;
pub mod config;
pub mod describe;
pub mod liveness;
pub mod placement;
pub mod probe;
pub mod routes;
pub mod service;
pub mod snapshot;
pub mod store;
pub mod stored;
pub mod trust;
pub mod uptime;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use neuroshard_common::Error;
use neuroshard_proto::registry::v1::layer_registry_server::LayerRegistryServer;
use neuroshard_runtime::telemetry::names;

pub use config::RegistryConfig;
pub use service::RegistryService;

/// Serves the registry on `listener` until `shutdown` resolves.
pub async fn run(
    config: RegistryConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    config.validate()?;
    let _metrics = neuroshard_runtime::telemetry::metrics::serve(config.metrics_listen).await?;
    let health_listener = neuroshard_runtime::grpc::bind_health(config.health_listen).await?;
    names::describe(names::registry::TABLE);
    warn_about_plaintext(&config);
    let store = store::Store::connect(&config.database_url, &config.database_tls).await?;
    let config = Arc::new(config);
    let service = RegistryService::new(store, config.clone())?;
    service.publish().await?;

    // Liveness is derived from heartbeat age when the assignment is built, so re-building it
    // regularly is what turns a silent node into a dead one and moves its layers.
    let reaper = {
        let service = service.clone();
        let every = Duration::from_millis((config.heartbeat_interval_ms / 2).max(100));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                if let Err(e) = service.publish().await {
                    tracing::warn!(error = %e, "re-publishing the assignment failed");
                }
            }
        })
    };

    let listen = listener
        .local_addr()
        .map_err(|e| Error::internal(format!("listener: {e}")))?;
    tracing::info!(%listen, network = %config.network_id, "layer-registry serving");
    let result = neuroshard_runtime::grpc::serve(
        listener,
        config.tls.server()?,
        neuroshard_runtime::grpc::GrpcServices::default()
            .with(LayerRegistryServer::new(service))
            .with_health_listener(health_listener),
        shutdown,
    )
    .await;
    reaper.abort();
    tracing::info!("layer-registry stopped");
    result
}

/// Says at start what an operator must know about links that are not authenticated: without
/// mutual TLS anyone who reaches the port reads the assignment (every node's endpoint) and
/// watches it; registrations stay signed, but nothing is encrypted.
fn warn_about_plaintext(config: &RegistryConfig) {
    use config::SslMode;
    if config.tls.insecure_plaintext {
        tracing::warn!(
            "gRPC is plaintext (tls.insecure_plaintext = true): reads (GetAssignment, Routes, Watch) are open to anyone who reaches the port and nothing is encrypted; set [tls] cert_file, key_file and ca_file for mutual TLS"
        );
    }
    if config.database_tls.sslmode != SslMode::VerifyFull {
        tracing::warn!(
            sslmode = config.database_tls.sslmode.name(),
            "the PostgreSQL server is not authenticated; use [database_tls] sslmode = \"verify-full\" outside a trusted network"
        );
    }
    if config.endpoint_probe_timeout_ms == 0 {
        tracing::warn!(
            "endpoint_probe_timeout_ms = 0: nodes are registered without checking that they answer at their endpoint"
        );
    }
}
