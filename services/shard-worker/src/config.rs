//! Worker configuration: defaults < `--config` TOML file < `NEUROSHARD_WORKER_*` environment.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerConfig {
    pub listen: SocketAddr,
    /// URL other nodes and the gateway reach this worker at (default: http://<listen>).
    pub advertise: Option<String>,
    pub registry: String,
    pub network_id: String,
    /// secp256k1 key file (created with mode 0600 when missing).
    pub key_file: PathBuf,
    /// Checkpoint to load the assigned span from; without one, the span is initialised from
    /// `init_seed`, which every node agrees on.
    pub checkpoint: Option<PathBuf>,
    pub init_seed: u64,
    /// Memory offered for layers; 0 = half of the machine's available memory.
    pub usable_memory_bytes: u64,
    /// auto, cpu, cuda or cuda:N
    pub device: String,
    /// f32, bf16 or f16
    pub dtype: String,
    pub heartbeat_interval_ms: u64,
    pub session_ttl_ms: u64,
    /// Cap on all sessions' KV caches together; the least recently used are evicted beyond it.
    pub max_session_bytes: u64,
    /// Serve TLS with cert_file + key_file; trust ca_file for https:// peers (the registry).
    pub tls: neuroshard_common::tls::TlsFiles,
    /// Serve Prometheus `/metrics` over HTTP here (unset = no endpoint).
    pub metrics_listen: Option<SocketAddr>,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7500)),
            advertise: None,
            registry: "http://127.0.0.1:7400".into(),
            network_id: "neuroshard-local".into(),
            key_file: PathBuf::from("worker.key"),
            checkpoint: None,
            init_seed: 0,
            usable_memory_bytes: 0,
            device: "auto".into(),
            dtype: "f32".into(),
            heartbeat_interval_ms: 5_000,
            session_ttl_ms: 300_000,
            max_session_bytes: 1 << 30,
            tls: neuroshard_common::tls::TlsFiles::default(),
            metrics_listen: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_file_loads() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../deploy/shard-worker.example.toml");
        let config: WorkerConfig =
            neuroshard_common::config::load(Some(&path), "NEUROSHARD_WORKER", Vec::new()).unwrap();
        assert_eq!(config, WorkerConfig::default());
    }
}
