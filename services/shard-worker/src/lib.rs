//! One NeuroShard node. It registers with the layer registry under its own key, reports
//! honest capacity (memory it may use, from the device its layers live on; tokens/s measured
//! on the architecture's layer shape), loads the span the registry assigns (from a
//! checkpoint, or initialised from the agreed seed), reloads when the assignment changes,
//! and serves pipelined forward passes with per-session KV caches.
//!
//! - [`service`]: the gRPC service (Forward, Replay and their chunked streams, EndSession,
//!   Info) and its checks; [`stream`]: chunked streams on the wire; [`client`]: what callers
//!   use (unary for small tensors, streams for large ones);
//! - [`state`]: the loaded span, swapped whole on reload; [`compute`]: the thread that runs
//!   it (decode steps of many sessions batched, long passes in chunks);
//! - [`sessions`]: KV-cache sessions with owners, TTL and a memory cap; [`caller`]: who owns
//!   a session, and the rule that makes session ids unguessable;
//! - [`node`]: measurement, registration, heartbeats, loading spans; [`capacity`]: the memory
//!   a node offers;
//! - [`training`]: the StageTrainer gRPC service, this node as a stage of a training
//!   pipeline on its span (a training copy beside the served weights);
//! - [`driver`]: the Driver, run when `[training] enabled`: this node, as a pipeline's first
//!   stage, runs the pipeline's rounds over the other stages' StageTrainer services;
//! - [`global`]: following the aggregators' published weights; [`earnings`]: claiming the
//!   rewards of accepted work from the ledger with the aggregators' receipts;
//! - [`convert`]: wire ↔ tch tensors; [`config`]: layered configuration.

pub mod caller;
pub mod capacity;
pub mod compute;
pub mod config;
pub mod convert;
pub mod driver;
pub mod earnings;
pub mod global;
pub mod node;
pub mod service;
pub mod sessions;
pub mod state;
pub mod training;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use neuroshard_common::identity::NodeKey;
use neuroshard_common::tensor::Limits;
use neuroshard_common::{Error, ErrorKind, ModelConfig};
use neuroshard_model::device::{parse_device, parse_dtype};
use neuroshard_model::tch::Device;
use neuroshard_proto::registry::v1::layer_registry_client::LayerRegistryClient;
use neuroshard_proto::trainer::v1::stage_trainer_server::StageTrainerServer;
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
    let health_listener = neuroshard_runtime::grpc::bind_health(config.health_listen).await?;
    names::describe(names::worker::TABLE);
    let key = Arc::new(NodeKey::load_or_create(&config.key_file)?);
    let device = parse_device(&config.device)?;
    let kind = parse_dtype(&config.dtype)?;
    let memory = match device {
        Device::Cuda(i) => capacity::Memory::Cuda(i),
        _ => capacity::Memory::Host,
    };
    let usable_memory = capacity::usable_memory(
        memory,
        config.usable_memory_bytes,
        capacity::free_memory(memory),
    )?;
    let server_tls = config.tls.server()?;
    if config.tls.insecure_plaintext {
        tracing::warn!(
            "gRPC is plaintext (tls.insecure_plaintext = true): anyone who reaches this port can run compute and open sessions; set [tls] cert_file, key_file and ca_file for mutual TLS"
        );
    }
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
    let state = Arc::new(state::WorkerState::new(
        key.node_id().to_string(),
        Duration::from_millis(config.session_ttl_ms),
        config.max_session_bytes,
        Limits {
            max_bytes: config.max_tensor_bytes,
            ..Limits::default()
        },
        config.max_stream_chunks,
        config.stream_chunk_bytes,
        config.compute_options(),
    ));
    let plan = node::LoadPlan {
        checkpoint: config.checkpoint.clone(),
        init_seed: config.init_seed,
        device,
        kind,
        global: Arc::default(),
    };
    let aggregators = (!config.aggregators.is_empty()).then(|| {
        Arc::new(neuroshard_worker_client::aggregator::Aggregators::new(
            config.aggregators.clone(),
            config.tls.clone(),
            config.max_message_bytes,
        ))
    });

    // Serve first: the registry's Register dials this endpoint and asks `Info` who answers
    // there, so the node must answer before it registers. Until a span is loaded, compute
    // calls are refused and `Info` says nothing is loaded.
    let service = ShardWorkerServer::new(service::WorkerService {
        state: state.clone(),
    })
    .max_decoding_message_size(config.max_message_bytes)
    .max_encoding_message_size(config.max_message_bytes);
    let progress = Arc::new(driver::progress::DriverProgress::default());
    let mut trainer_service = training::TrainerService::new(state.clone(), plan.clone());
    trainer_service.progress = progress.clone();
    trainer_service.submitter = aggregators.as_ref().map(|aggregators| {
        Arc::new(training::Submitter {
            aggregators: aggregators.clone(),
            key: key.clone(),
            network_id: config.network_id.clone(),
            nonces: neuroshard_common::signing::NonceSource::new(),
        })
    });
    let trainer = StageTrainerServer::new(trainer_service)
        .max_decoding_message_size(config.max_message_bytes)
        .max_encoding_message_size(config.max_message_bytes);
    let services = neuroshard_runtime::grpc::GrpcServices::default()
        .with(service)
        .with(trainer)
        .with_readiness(
            neuroshard_common::health::WORKER_LOADED,
            state.loaded_watch(),
        )
        .with_health_listener(health_listener);
    // The server stops when told (after the node has left the swarm) or when start-up fails.
    let (stop_serving, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut server = tokio::spawn(async move {
        neuroshard_runtime::grpc::serve(listener, server_tls, services, async {
            let _ = stopped.await;
        })
        .await
    });
    tokio::pin!(shutdown);
    let node_id = key.node_id().to_string();
    let weights = aggregators.clone().map(|aggregators| {
        tokio::spawn(global::follow(
            state.clone(),
            plan.clone(),
            aggregators,
            Duration::from_millis(500),
        ))
    });
    let earnings = match &config.ledger {
        Some(ledger) => {
            let claimer = Arc::new(earnings::Claimer {
                ledger: neuroshard_proto::ledger::v1::ledger_client::LedgerClient::new(
                    config.tls.endpoint(ledger)?.connect_lazy(),
                ),
                payout: config
                    .payout
                    .clone()
                    .unwrap_or_else(|| key.node_id().to_string()),
                key: key.clone(),
                network_id: config.network_id.clone(),
                nonces: neuroshard_common::signing::NonceSource::new(),
            });
            tracing::info!(ledger = %ledger, payout = %claimer.payout, "claiming rewards from the ledger");
            let registry =
                LayerRegistryClient::new(config.tls.endpoint(&config.registry)?.connect_lazy());
            let mut tasks = vec![tokio::spawn(earnings::follow_uptime(
                registry,
                claimer.clone(),
                Duration::from_secs(5),
            ))];
            if let Some(aggregators) = &aggregators {
                tasks.push(tokio::spawn(earnings::follow(
                    aggregators.clone(),
                    claimer,
                    Duration::from_secs(2),
                )));
            }
            tasks
        }
        None => Vec::new(),
    };
    let joined = tokio::select! {
        joined = join_swarm(&config, key, state, plan, endpoint, usable_memory) => joined.map(Some),
        // Stopped while still joining: nothing to hand over.
        () = &mut shutdown => Ok(None),
    };
    let (follower, link) = match joined {
        Ok(Some(joined)) => joined,
        Ok(None) | Err(_) => {
            // Registration failed (or the node was stopped first): stop serving, say why.
            let _ = stop_serving.send(());
            let _ = server.await;
            if let Some(weights) = weights {
                weights.abort();
            }
            for task in &earnings {
                task.abort();
            }
            return joined.map(|_| ());
        }
    };
    let driver = if config.training.enabled {
        tracing::info!(
            inner_steps = config.training.inner_steps,
            "driving the pipelines this node starts"
        );
        Some(tokio::spawn(
            driver::Driver {
                node_id,
                registry: config.registry.clone(),
                tls: config.tls.clone(),
                config: config.training.clone(),
                max_message_bytes: config.max_message_bytes,
                progress,
                aggregators,
            }
            .run(),
        ))
    } else {
        None
    };
    let served = tokio::select! {
        served = &mut server => served,
        () = &mut shutdown => {
            // Hand the layers over while still serving, then stop heartbeating and leave.
            let drain_follower = follower.abort_handle();
            node::leave(
                link,
                Duration::from_millis(config.drain_timeout_ms),
                Duration::from_millis(config.heartbeat_interval_ms.clamp(50, 1_000)),
                drain_follower,
            )
            .await;
            let _ = stop_serving.send(());
            server.await
        }
    };
    let result = served
        .map_err(|e| Error::internal(format!("gRPC server task: {e}")))
        .and_then(|served| served);
    follower.abort();
    if let Some(weights) = weights {
        weights.abort();
    }
    if let Some(driver) = driver {
        driver.abort();
    }
    for task in &earnings {
        task.abort();
    }
    tracing::info!("shard-worker stopped");
    result
}

/// Measures this node, registers it, loads what the registry assigns, and follows the
/// assignment from then on (the returned task, heartbeats included); the link to leave with.
async fn join_swarm(
    config: &WorkerConfig,
    key: Arc<NodeKey>,
    state: Arc<state::WorkerState>,
    plan: node::LoadPlan,
    endpoint: String,
    usable_memory: u64,
) -> Result<(tokio::task::JoinHandle<()>, node::RegistryLink), Error> {
    let client = LayerRegistryClient::new(config.tls.connect(&config.registry).await?);
    let mut link = node::RegistryLink::new(
        client,
        key,
        config.network_id.clone(),
        config.preferred_role()?,
    );
    // Throughput is measured on the layers of the architecture the registry runs; before it
    // has one, on the checkpoint's (whose width it will take), else on the default model, and
    // again once an architecture is published (see `node::settle`).
    let published = link
        .assignment()
        .await
        .ok()
        .and_then(|s| s.architecture)
        .map(|a| neuroshard_common::growth::ArchitectureState::from_proto(&a))
        .transpose()?
        .map(|a| a.config);
    let shape = match (published, &config.checkpoint) {
        (Some(arch), _) => arch,
        (None, Some(dir)) => neuroshard_model::checkpoint::read_config(dir)?,
        (None, None) => ModelConfig::small(4096),
    };
    let mut advertised =
        node::Advertised::measure(endpoint.clone(), usable_memory, shape, &plan).await?;
    tracing::info!(
        node_id = %state.node_id,
        %endpoint,
        memory = usable_memory,
        throughput = advertised.capacity.tokens_per_second,
        "shard-worker starting"
    );
    let snapshot = link.register(&advertised).await.map_err(|status| {
        Error::new(
            ErrorKind::Unavailable,
            format!("registering with {}: {}", config.registry, status.message()),
        )
    })?;
    node::settle(&state, &mut link, &mut advertised, &snapshot, &plan).await?;
    let follower = tokio::spawn(node::follow(
        state,
        link.clone(),
        advertised,
        plan,
        Duration::from_millis(config.heartbeat_interval_ms.max(50)),
    ));
    Ok((follower, link))
}
