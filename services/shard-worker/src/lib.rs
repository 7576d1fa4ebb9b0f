//! One NeuroShard node. It registers with the layer registry under its own key, reports
//! honest capacity (memory it may use, device, tokens/s measured at start), loads the span the
//! registry assigns (from a checkpoint, or initialised from the agreed seed), reloads when the
//! assignment changes, and serves pipelined forward passes with per-session KV caches.
//!
//! - [`service`]: the gRPC service (Forward, Replay and their chunked streams, EndSession,
//!   Info) and its checks; [`stream`]: chunked streams on the wire; [`client`]: what callers
//!   use (unary for small tensors, streams for large ones);
//! - [`sessions`]: KV-cache sessions with TTL and a memory cap;
//! - [`node`]: measurement, registration, heartbeats, loading spans;
//! - [`convert`]: wire ↔ tch tensors; [`config`]: layered configuration.

pub mod config;
pub mod convert;
pub mod node;
pub mod service;
pub mod sessions;

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use neuroshard_common::identity::NodeKey;
use neuroshard_common::tensor::Limits;
use neuroshard_common::{Error, ErrorKind, ModelConfig};
use neuroshard_model::device::{parse_device, parse_dtype};
use neuroshard_proto::registry::v1::layer_registry_client::LayerRegistryClient;
use neuroshard_proto::registry::v1::{Capacity, Device as ProtoDevice};
use neuroshard_proto::worker::v1::shard_worker_server::ShardWorkerServer;
use neuroshard_runtime::telemetry::names;

pub use config::WorkerConfig;
/// The client and the chunked-stream wire form live in `neuroshard-worker-client` (no
/// libtorch, so the gateway uses them); re-exported under the paths worker code uses.
pub use neuroshard_worker_client::{client, stream};

/// Serves this node on `listener` until `shutdown` resolves.
pub async fn run(
    config: WorkerConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    config.validate()?;
    let _metrics = neuroshard_runtime::telemetry::metrics::serve(config.metrics_listen).await?;
    names::describe(names::worker::TABLE);
    let key = NodeKey::load_or_create(&config.key_file)?;
    let device = parse_device(&config.device)?;
    let kind = parse_dtype(&config.dtype)?;
    let reference = match &config.checkpoint {
        Some(dir) => neuroshard_model::checkpoint::read_config(dir)?,
        None => ModelConfig::small(4096),
    };
    let throughput = node::measure_throughput(&reference, device, kind)?;
    let memory = match config.usable_memory_bytes {
        0 => node::default_usable_memory(),
        m => m,
    };
    let server_tls = config.tls.server()?;
    let scheme = if server_tls.is_some() {
        "https"
    } else {
        "http"
    };
    let endpoint = config.advertise.clone().unwrap_or(format!(
        "{scheme}://{}",
        listener
            .local_addr()
            .map_err(|e| Error::internal(format!("listener: {e}")))?
    ));
    let state = Arc::new(service::WorkerState {
        node_id: key.node_id().to_string(),
        loaded: Mutex::new(None),
        session_ttl: Duration::from_millis(config.session_ttl_ms),
        max_session_bytes: config.max_session_bytes,
        limits: Limits {
            max_bytes: config.max_tensor_bytes,
            ..Limits::default()
        },
        max_stream_chunks: config.max_stream_chunks,
        stream_chunk_bytes: config.stream_chunk_bytes,
    });
    let plan = node::LoadPlan {
        checkpoint: config.checkpoint.clone(),
        init_seed: config.init_seed,
        device,
        kind,
    };
    tracing::info!(node_id = %state.node_id, %endpoint, memory, throughput, "shard-worker starting");

    let client = LayerRegistryClient::new(config.tls.connect(&config.registry).await?);
    let mut link = node::RegistryLink::new(client, key, config.network_id.clone());
    let capacity = Capacity {
        usable_memory_bytes: memory,
        device: if device.is_cuda() {
            ProtoDevice::Cuda
        } else {
            ProtoDevice::Cpu
        } as i32,
        tokens_per_second: throughput,
    };
    let snapshot = link.register(&endpoint, capacity).await.map_err(|status| {
        Error::new(
            ErrorKind::Unavailable,
            format!("registering with {}: {}", config.registry, status.message()),
        )
    })?;
    node::apply(&state, &snapshot, &plan).await?;
    let follower = tokio::spawn(node::follow(
        state.clone(),
        link,
        plan,
        Duration::from_millis(config.heartbeat_interval_ms.max(50)),
    ));

    let service = ShardWorkerServer::new(service::WorkerService { state })
        .max_decoding_message_size(config.max_message_bytes)
        .max_encoding_message_size(config.max_message_bytes);
    let result = neuroshard_runtime::grpc::serve(listener, server_tls, service, shutdown).await;
    follower.abort();
    tracing::info!("shard-worker stopped");
    result
}
