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
    /// Memory offered for layers; 0 = derived from where the layers live: half the host's
    /// available memory on CPU, the device's free memory less a tenth on CUDA. A figure
    /// above what that memory has free is refused at start.
    pub usable_memory_bytes: u64,
    /// auto, cpu, cuda or cuda:N
    pub device: String,
    /// f32, bf16 or f16
    pub dtype: String,
    pub heartbeat_interval_ms: u64,
    /// The role this node asks the registry for: auto, driver, worker or validator
    /// (placement honours it when it can).
    pub role: String,
    /// On SIGTERM the node drains first: it keeps serving while the registry moves its layers
    /// to others, until two others have loaded each of them, nobody is loading them any more,
    /// or this long has passed; then it deregisters. 0: leave without draining.
    pub drain_timeout_ms: u64,
    pub session_ttl_ms: u64,
    /// Cap on all sessions' KV caches together; the least recently used are evicted beyond it.
    pub max_session_bytes: u64,
    /// Most sessions whose decode steps (one new position each) run as one batched pass
    /// through the span; 1 runs them one by one.
    pub max_decode_batch: usize,
    /// Longer passes (prefills, replays) run in chunks of this many positions, with waiting
    /// decode steps run between chunks.
    pub prefill_chunk_positions: u32,
    /// Largest gRPC message this worker takes or sends: a unary Forward/Replay must fit;
    /// larger tensors come through ForwardStream/ReplayStream in chunks.
    pub max_message_bytes: usize,
    /// Largest tensor this worker accepts, unary or reassembled from chunks.
    pub max_tensor_bytes: usize,
    /// Most chunks one streamed tensor may come in.
    pub max_stream_chunks: usize,
    /// Size of the chunks this worker cuts streamed responses into.
    pub stream_chunk_bytes: usize,
    /// Serve TLS with cert_file + key_file; trust ca_file for https:// peers (the registry).
    pub tls: neuroshard_runtime::tls::TlsFiles,
    /// Serve Prometheus `/metrics` over HTTP here (unset = no endpoint).
    pub metrics_listen: Option<SocketAddr>,
    /// Answer gRPC health checks, and nothing else, in plaintext here (unset = none): the
    /// port Kubernetes' gRPC probes use, since they cannot do mutual TLS.
    pub health_listen: Option<SocketAddr>,
    /// URLs of the diloco-aggregators (each owns a range of the layers): this node serves
    /// their published global weights and sends them its Δ after each round. Empty: the
    /// node serves its checkpoint or seed and keeps Δ to itself.
    pub aggregators: Vec<String>,
    /// The ledger this node claims its rewards from (unset: it claims nothing): after each
    /// published round it sends the aggregators' receipts for its accepted work as training
    /// proofs (when `aggregators` are set), and after each uptime epoch the registry's
    /// attestation of its uptime, paying `payout` (a wallet address; unset: the node's own).
    pub ledger: Option<String>,
    pub payout: Option<String>,
    /// Driving the pipelines this node is the first stage of.
    pub training: crate::driver::TrainingConfig,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7500)),
            advertise: None,
            registry: "https://127.0.0.1:7400".into(),
            network_id: "neuroshard-local".into(),
            key_file: PathBuf::from("worker.key"),
            checkpoint: None,
            init_seed: 0,
            usable_memory_bytes: 0,
            device: "auto".into(),
            dtype: "f32".into(),
            heartbeat_interval_ms: 5_000,
            role: "auto".into(),
            drain_timeout_ms: 20_000,
            session_ttl_ms: 300_000,
            max_session_bytes: 1 << 30,
            max_decode_batch: 16,
            prefill_chunk_positions: 256,
            max_message_bytes: 64 << 20,
            max_tensor_bytes: 256 << 20,
            max_stream_chunks: neuroshard_common::tensor::DEFAULT_MAX_CHUNKS,
            stream_chunk_bytes: 1 << 20,
            tls: neuroshard_runtime::tls::TlsFiles::default(),
            metrics_listen: None,
            health_listen: None,
            aggregators: Vec::new(),
            ledger: None,
            payout: None,
            training: crate::driver::TrainingConfig::default(),
        }
    }
}

/// Largest decode batch accepted: beyond it one pass's padded caches cost more than the
/// weights it saves reading.
const MAX_DECODE_BATCH: usize = 256;

/// Room a chunk message needs beyond its data (offset, field tags, the header on the first).
const CHUNK_OVERHEAD_BYTES: usize = 4096;

impl WorkerConfig {
    /// Checks relations between fields that types cannot express.
    pub fn validate(&self) -> Result<(), neuroshard_common::Error> {
        use neuroshard_common::Error;
        if self.stream_chunk_bytes == 0
            || self.stream_chunk_bytes + CHUNK_OVERHEAD_BYTES > self.max_message_bytes
        {
            return Err(Error::invalid_argument(format!(
                "stream_chunk_bytes ({}) must be positive and leave {CHUNK_OVERHEAD_BYTES} bytes of max_message_bytes ({}) for the chunk's framing",
                self.stream_chunk_bytes, self.max_message_bytes
            )));
        }
        if self.max_stream_chunks == 0 {
            return Err(Error::invalid_argument(
                "max_stream_chunks must be at least 1",
            ));
        }
        if !(1..=MAX_DECODE_BATCH).contains(&self.max_decode_batch) {
            return Err(Error::invalid_argument(format!(
                "max_decode_batch ({}) must be between 1 and {MAX_DECODE_BATCH}",
                self.max_decode_batch
            )));
        }
        if self.prefill_chunk_positions == 0 {
            return Err(Error::invalid_argument(
                "prefill_chunk_positions must be at least 1",
            ));
        }
        self.preferred_role()?;
        self.training.validate()?;
        // Last, so a config's own mistakes are named before the missing certificates.
        self.tls.validate()?;
        self.tls.check_scheme("registry", &self.registry)?;
        for (i, url) in self.aggregators.iter().enumerate() {
            self.tls.check_scheme(&format!("aggregators[{i}]"), url)?;
        }
        if let Some(advertise) = &self.advertise {
            self.tls.check_scheme("advertise", advertise)?;
        }
        if let Some(ledger) = &self.ledger {
            self.tls.check_scheme("ledger", ledger)?;
        }
        if let Some(payout) = &self.payout
            && !neuroshard_common::identity::is_node_id(payout)
        {
            return Err(Error::invalid_argument(format!(
                "payout: {payout:?} is not a wallet address (40 lowercase hex digits)"
            )));
        }
        Ok(())
    }

    /// The wire role `role` names.
    pub fn preferred_role(
        &self,
    ) -> Result<neuroshard_proto::common::v1::Role, neuroshard_common::Error> {
        use neuroshard_proto::common::v1::Role;
        match self.role.as_str() {
            "auto" => Ok(Role::Unspecified),
            "driver" => Ok(Role::Driver),
            "worker" => Ok(Role::Worker),
            "validator" => Ok(Role::Validator),
            other => Err(neuroshard_common::Error::invalid_argument(format!(
                "role: `{other}` is not one of auto, driver, worker, validator"
            ))),
        }
    }

    /// How the compute thread groups work.
    pub fn compute_options(&self) -> crate::compute::ComputeOptions {
        crate::compute::ComputeOptions {
            max_decode_batch: self.max_decode_batch,
            prefill_chunk_positions: i64::from(self.prefill_chunk_positions),
        }
    }
}

impl neuroshard_runtime::ServiceConfig for WorkerConfig {
    const ENV_PREFIX: &'static str = "NEUROSHARD_WORKER";

    fn listen(&self) -> std::net::SocketAddr {
        self.listen
    }

    fn validate(&self) -> Result<(), neuroshard_common::Error> {
        WorkerConfig::validate(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_must_fit_in_a_message() {
        WorkerConfig {
            registry: "http://127.0.0.1:7400".into(),
            tls: neuroshard_runtime::tls::TlsFiles::insecure_plaintext(),
            ..WorkerConfig::default()
        }
        .validate()
        .unwrap();
        let config = WorkerConfig {
            max_message_bytes: 1 << 20,
            ..WorkerConfig::default()
        };
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("stream_chunk_bytes"), "{err}");
    }

    #[test]
    fn compute_grouping_is_validated() {
        for (config, field) in [
            (
                WorkerConfig {
                    max_decode_batch: 0,
                    ..WorkerConfig::default()
                },
                "max_decode_batch",
            ),
            (
                WorkerConfig {
                    max_decode_batch: 10_000,
                    ..WorkerConfig::default()
                },
                "max_decode_batch",
            ),
            (
                WorkerConfig {
                    prefill_chunk_positions: 0,
                    ..WorkerConfig::default()
                },
                "prefill_chunk_positions",
            ),
        ] {
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains(field), "{err}");
        }
    }

    #[test]
    fn example_config_file_loads() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../deploy/shard-worker.example.toml");
        let config: WorkerConfig =
            neuroshard_runtime::config::load(Some(&path), "NEUROSHARD_WORKER", Vec::new()).unwrap();
        // The example is the defaults with the cluster's certificate paths filled in.
        let mutual = neuroshard_runtime::tls::TlsFiles {
            cert_file: Some("/etc/neuroshard/tls/tls.crt".into()),
            key_file: Some("/etc/neuroshard/tls/tls.key".into()),
            ca_file: Some("/etc/neuroshard/tls/ca.crt".into()),
            insecure_plaintext: false,
        };
        assert_eq!(
            config,
            WorkerConfig {
                tls: mutual.clone(),
                ..WorkerConfig::default()
            }
        );
        config.validate().unwrap();
        let err = WorkerConfig::default().validate().unwrap_err().to_string();
        assert!(err.contains("tls.insecure_plaintext = true"), "{err}");
    }

    #[test]
    fn urls_speak_what_the_tls_mode_does() {
        let plaintext = WorkerConfig {
            tls: neuroshard_runtime::tls::TlsFiles::insecure_plaintext(),
            ..WorkerConfig::default()
        };
        let err = plaintext.validate().unwrap_err().to_string();
        assert!(
            err.contains("registry (https://127.0.0.1:7400) must start with http://"),
            "{err}"
        );
        let mutual = WorkerConfig {
            tls: neuroshard_runtime::tls::TlsFiles {
                cert_file: Some("tls.crt".into()),
                key_file: Some("tls.key".into()),
                ca_file: Some("ca.crt".into()),
                insecure_plaintext: false,
            },
            advertise: Some("http://10.0.0.5:7500".into()),
            ..WorkerConfig::default()
        };
        let err = mutual.validate().unwrap_err().to_string();
        assert!(
            err.contains("advertise (http://10.0.0.5:7500) must start with https://"),
            "{err}"
        );
    }
}
