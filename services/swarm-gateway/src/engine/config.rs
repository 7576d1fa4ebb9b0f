//! [`EngineConfig`]: how the engine reaches the swarm and how patient it is, with defaults
//! and the mapping from the gateway's configuration.

use std::time::Duration;

use neuroshard_runtime::tls::TlsFiles;

use super::deadlines::WorkDeadlines;
use crate::config::GatewayConfig;

/// How the engine reaches the swarm and how patient it is.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The layer registry's gRPC URL.
    pub registry: String,
    /// TLS for `https://` registry and worker URLs.
    pub tls: TlsFiles,
    /// The name clients pass as `model`.
    pub model_name: String,
    /// End-of-sequence token id (ends a generation; not sent to the client).
    pub eos_token: Option<u32>,
    /// Deadline of one decode hop; past it the hop moves to another holder.
    pub hop_deadline: Duration,
    /// Fixed part of a prefill or replay hop's deadline, to which the positions times their
    /// expected cost times `work_deadline_margin` is added (see `deadlines`); also the most
    /// a busy node's decode hop is stretched to.
    pub prefill_deadline: Duration,
    /// Times the expected compute time of a prefill or replay hop.
    pub work_deadline_margin: f64,
    /// The most any hop may take.
    pub max_work_deadline: Duration,
    /// Failovers one request may go through before it fails.
    pub max_failovers: u32,
    /// How long a request waits for a span without a live holder to be placed and loaded.
    pub route_patience: Duration,
    /// The registry's replica target, for the status document.
    pub min_replicas: u32,
    /// First back-off after a node fails; doubles per consecutive failure up to `max_backoff`.
    pub backoff: Duration,
    pub max_backoff: Duration,
    /// Most bytes of hidden state one generation keeps for replay; past it, a failover
    /// recomputes the replacement's input from the token ids.
    pub replay_bytes_per_generation: u64,
    /// Most bytes of hidden state all generations keep together.
    pub replay_bytes_total: u64,
    /// Largest gRPC message to or from a worker.
    pub max_message_bytes: usize,
    /// How long [`SwarmEngine::connect`](super::SwarmEngine::connect) waits for the first assignment.
    pub connect_timeout: Duration,
    /// JSON file of node id → process id (local swarm), read for each status document.
    pub node_pids_file: Option<std::path::PathBuf>,
    /// Signed throughput reports to the registry, when this gateway has a key.
    pub observer: Option<super::observer::ObserverConfig>,
    /// The diloco-aggregator whose rounds the status document lists.
    pub aggregator: Option<String>,
}

impl EngineConfig {
    /// How prefill and replay deadlines grow with their work.
    pub fn work_deadlines(&self) -> WorkDeadlines {
        WorkDeadlines {
            floor: self.prefill_deadline,
            margin: self.work_deadline_margin,
            ceiling: self.max_work_deadline,
        }
    }

    pub fn new(registry: impl Into<String>, model_name: impl Into<String>) -> Self {
        Self {
            registry: registry.into(),
            tls: TlsFiles::default(),
            model_name: model_name.into(),
            eos_token: None,
            hop_deadline: Duration::from_millis(200),
            prefill_deadline: Duration::from_secs(5),
            work_deadline_margin: 3.0,
            max_work_deadline: Duration::from_secs(120),
            max_failovers: 8,
            route_patience: Duration::from_secs(30),
            min_replicas: 2,
            backoff: Duration::from_secs(2),
            max_backoff: Duration::from_secs(60),
            replay_bytes_per_generation: 64 << 20,
            replay_bytes_total: 2 << 30,
            max_message_bytes: 64 << 20,
            connect_timeout: Duration::from_secs(30),
            node_pids_file: None,
            observer: None,
            aggregator: None,
        }
    }

    /// The engine settings of a gateway configuration.
    pub fn from_gateway(config: &GatewayConfig, eos_token: Option<u32>) -> Self {
        Self {
            tls: config.tls.clone(),
            eos_token,
            hop_deadline: Duration::from_millis(config.per_hop_deadline_ms),
            prefill_deadline: Duration::from_millis(config.prefill_deadline_ms),
            work_deadline_margin: config.work_deadline_margin,
            max_work_deadline: Duration::from_millis(config.max_work_deadline_ms),
            max_failovers: config.max_failovers,
            route_patience: Duration::from_millis(config.route_patience_ms),
            min_replicas: config.min_replicas,
            backoff: Duration::from_millis(config.backoff_ms),
            max_backoff: Duration::from_millis(config.max_backoff_ms),
            node_pids_file: config.node_pids_file.clone(),
            aggregator: config.aggregator.clone(),
            replay_bytes_per_generation: config.replay.max_bytes_per_generation,
            replay_bytes_total: config.replay.max_bytes_total,
            ..Self::new(&config.registry, &config.model)
        }
    }
}
