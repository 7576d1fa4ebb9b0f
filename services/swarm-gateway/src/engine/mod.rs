//! The routed swarm as a [`Generator`]: a live view of the registry's assignment (its `Watch`
//! stream), route choice by cost, per-hop deadlines with failover and replay, and the request
//! and throughput records behind the status document.
//!
//! - [`config`]: [`EngineConfig`], where the swarm is and how patient to be with it;
//! - [`state`]: what the watch task and every generation share;
//! - [`view`]: the assignment as routing sees it (pure);
//! - [`routing`]: cheapest chain of holders tiling a layer range (pure);
//! - [`stats`]: per-node latency, in-flight requests, back-off (pure);
//! - [`deadlines`]: prefill and replay deadlines that grow with their work (pure);
//! - [`tracker`]: requests and throughput for `/api/v1/status` (pure);
//! - [`hops`]: gRPC calls to workers with deadlines and trace context;
//! - [`replay`]: the hidden states kept for replay, within memory budgets (pure);
//! - [`observer`]: signed reports of measured node throughput to the registry;
//! - [`generation`]: one request's prefill/decode loop with failover;
//! - [`training`]: the training pipelines' progress, polled from their Drivers.

pub mod config;
pub mod deadlines;
pub mod generation;
pub mod hops;
pub mod observer;
pub mod replay;
pub mod routing;
pub mod state;
pub mod stats;
pub mod tracker;
pub mod training;
pub mod view;

pub use config::EngineConfig;

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use neuroshard_common::role::wire_role_name;
use neuroshard_common::{Error, ErrorKind};
use neuroshard_proto::registry::v1::WatchRequest;
use neuroshard_proto::registry::v1::layer_registry_client::LayerRegistryClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::generator::{GenerationJob, Generator, ModelCard, TokenStream};
use crate::status::{
    ArchitectureStatus, LayerStatus, NodeStatus, ReplicaStatus, SwarmStatus, TrainingStatus,
};
use state::{EngineState, epoch_ms};
use stats::StatsBook;
use tracker::Tracker;
use view::SwarmView;

/// The production [`Generator`]: requests routed through the swarm's layer holders.
#[derive(Debug)]
pub struct SwarmEngine {
    state: Arc<EngineState>,
    watcher: tokio::task::JoinHandle<()>,
    reporter: Option<tokio::task::JoinHandle<()>>,
    training: tokio::task::JoinHandle<()>,
}

impl Drop for SwarmEngine {
    fn drop(&mut self) {
        self.watcher.abort();
        if let Some(reporter) = &self.reporter {
            reporter.abort();
        }
        self.training.abort();
    }
}

impl SwarmEngine {
    /// Connects to the registry, waits for the first assignment, and keeps following it
    /// (reconnecting when the stream breaks) until dropped.
    pub async fn connect(config: EngineConfig) -> Result<Self, Error> {
        let created = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let engine = Arc::new(EngineState {
            hops: hops::HopClient::new(config.tls.clone(), config.max_message_bytes),
            replay_memory: Arc::new(replay::ReplayMemory::new(config.replay_bytes_total)),
            stats: Mutex::new(StatsBook::new(config.backoff, config.max_backoff)),
            tracker: Mutex::new(Tracker::default()),
            view: RwLock::new(Arc::new(SwarmView::default())),
            training: Mutex::new(None),
            progress: Mutex::default(),
            view_changed: tokio::sync::Notify::new(),
            created,
            config,
        });
        let (first_tx, mut first_rx) = mpsc::channel(1);
        let watcher = tokio::spawn(follow(engine.clone(), first_tx));
        let timeout = engine.config.connect_timeout;
        match tokio::time::timeout(timeout, first_rx.recv()).await {
            Ok(Some(())) => {
                let reporter =
                    engine.config.observer.clone().map(|observer| {
                        tokio::spawn(observer::report_loop(engine.clone(), observer))
                    });
                let training = tokio::spawn(training::poll_loop(engine.clone()));
                Ok(Self {
                    state: engine,
                    watcher,
                    reporter,
                    training,
                })
            }
            _ => {
                watcher.abort();
                Err(Error::new(
                    ErrorKind::Unavailable,
                    format!(
                        "no assignment from the registry at {} within {timeout:?}",
                        engine.config.registry
                    ),
                ))
            }
        }
    }

    /// Sets the training progress the status document shows (the local swarm's trainer
    /// reports here).
    pub fn set_training(&self, training: Option<TrainingStatus>) {
        *self
            .state
            .training
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = training;
    }
}

/// Follows the registry's `Watch` stream; signals `first` once the first snapshot is in.
async fn follow(engine: Arc<EngineState>, first: mpsc::Sender<()>) {
    let mut delay = Duration::from_millis(200);
    loop {
        match watch_once(&engine, &first).await {
            Ok(()) => tracing::warn!("registry watch stream ended; reconnecting"),
            Err(e) => tracing::warn!(error = %e.message, "registry watch failed; retrying"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

async fn watch_once(engine: &EngineState, first: &mpsc::Sender<()>) -> Result<(), Error> {
    let channel = engine.config.tls.connect(&engine.config.registry).await?;
    let mut client = LayerRegistryClient::new(channel);
    let mut stream = client
        .watch(WatchRequest {})
        .await
        .map_err(|s| Error::new(ErrorKind::Unavailable, s.message().to_string()))?
        .into_inner();
    while let Some(snapshot) = stream
        .message()
        .await
        .map_err(|s| Error::new(ErrorKind::Unavailable, s.message().to_string()))?
    {
        let view = SwarmView::from_snapshot(&snapshot);
        tracing::debug!(
            version = view.version,
            nodes = view.nodes.len(),
            "assignment"
        );
        engine.set_view(view);
        let _ = first.try_send(());
    }
    Ok(())
}

impl Generator for SwarmEngine {
    fn model(&self) -> ModelCard {
        let view = self.state.view();
        let architecture = view.architecture.clone().unwrap_or_default();
        ModelCard {
            id: self.state.config.model_name.clone(),
            context_length: architecture.max_seq_len,
            vocab_size: architecture.vocab_size,
            created: self.state.created,
        }
    }

    fn ready(&self) -> bool {
        let view = self.state.view();
        let loads = self.state.stats().loads(Instant::now());
        let n = view.num_layers();
        n > 0
            && routing::best_chain(&view.nodes, &loads, 0, n, &Default::default(), || 1.0).is_some()
    }

    fn generate(&self, job: GenerationJob) -> TokenStream {
        // A small buffer: the generation runs at most a few tokens ahead of a slow client.
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(generation::run(self.state.clone(), job, tx));
        Box::pin(ReceiverStream::new(rx))
    }

    fn served(&self, request_id: &str) -> Option<crate::generator::ServedRoute> {
        self.state.tracker().served(request_id)
    }

    fn status(&self) -> SwarmStatus {
        let now = epoch_ms();
        let view = self.state.view();
        let instant = Instant::now();
        let stats = self.state.stats().clone();
        let pids = self
            .state
            .config
            .node_pids_file
            .as_deref()
            .map(read_pids)
            .unwrap_or_default();
        let nodes = view
            .nodes
            .iter()
            .map(|n| NodeStatus {
                id: n.id.clone(),
                endpoint: Some(n.endpoint.clone()),
                span: [n.start, n.end],
                role: wire_role_name(n.role.into()).into(),
                state: view::state_name(n.state).into(),
                pid: pids.get(&n.id).copied(),
                tokens_per_s: n.tokens_per_s,
                memory_bytes: n.memory_bytes,
                queue_depth: stats.in_flight(&n.id),
                latency_ms: stats.latency_ms(&n.id),
                backed_off_until_ms: stats
                    .backed_off_until(&n.id, instant)
                    .map(|t| now + t.saturating_duration_since(instant).as_millis() as u64),
            })
            .collect();
        let layers = (0..view.num_layers())
            .map(|index| LayerStatus {
                index,
                holders: view.holders(index),
            })
            .collect();
        let architecture = view.architecture.as_ref().map(|a| ArchitectureStatus {
            num_layers: a.num_layers,
            hidden_size: a.hidden_size,
            num_heads: a.num_heads,
            num_kv_heads: a.num_kv_heads,
            vocab_size: a.vocab_size,
            parameters: parameters(a),
            version: view.version,
        });
        let tracker = self.state.tracker();
        SwarmStatus {
            now_ms: now,
            view: crate::status::DETAIL,
            architecture,
            nodes,
            layers,
            replicas: ReplicaStatus {
                min_replicas: self.state.config.min_replicas,
                degraded: view.deficit > 0,
                deficit: view.deficit,
            },
            requests: tracker.requests(),
            throughput: tracker.throughput(now),
            training: {
                let report = self
                    .state
                    .training
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone();
                let progress = self
                    .state
                    .progress
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone();
                TrainingStatus::combine(
                    report,
                    progress.pipelines,
                    progress.served_round,
                    progress.rounds,
                )
            },
            // Filled in by the HTTP layer, which holds the ledger.
            billing: None,
        }
    }
}

/// The node id → pid map in `path`; empty (with a debug log) when it cannot be read, since
/// pids only decorate the status document.
fn read_pids(path: &std::path::Path) -> std::collections::BTreeMap<String, u32> {
    std::fs::read_to_string(path)
        .map_err(|e| e.to_string())
        .and_then(|text| serde_json::from_str(&text).map_err(|e| e.to_string()))
        .unwrap_or_else(|e| {
            tracing::debug!(path = %path.display(), error = %e, "node pids unreadable");
            Default::default()
        })
}

/// Parameter count of the published architecture (the shared formula in `common`).
fn parameters(a: &neuroshard_proto::common::v1::Architecture) -> u64 {
    neuroshard_common::growth::ArchitectureState::from_proto(a)
        .ok()
        .and_then(|state| {
            u64::try_from(neuroshard_common::architecture::parameter_count(
                &state.config,
            ))
            .ok()
        })
        .unwrap_or(0)
}
