//! Registry configuration: defaults < `--config` TOML file < `NEUROSHARD_REGISTRY_*` environment.
//! See `deploy/layer-registry.example.toml`.

use std::net::SocketAddr;

use neuroshard_common::ModelConfig;
use neuroshard_common::architecture::{ArchitecturePolicy, TRAINING_BYTES_PER_PARAM};
use neuroshard_common::growth::{ArchitectureMode, AutoPolicy};
use serde::{Deserialize, Serialize};

/// Everything the registry needs at start. `Debug` redacts the database URL (it may hold a
/// password), so logging the config cannot leak it.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    pub listen: SocketAddr,
    /// libpq-style connection string; may carry a password, so it is never logged.
    pub database_url: String,
    /// Signed messages for another network are refused.
    pub network_id: String,
    pub min_replicas: u32,
    pub heartbeat_interval_ms: u64,
    pub suspect_after_ms: u64,
    pub dead_after_ms: u64,
    /// Accepted difference between a signer's clock and ours.
    pub clock_window_ms: i64,
    /// How often watchers look for a new assignment version.
    pub watch_poll_ms: u64,
    /// Bytes one parameter costs on a node (weights, gradients, optimizer state, round copy).
    pub bytes_per_param: u64,
    /// The model being assigned (`fixed` mode), or, in `auto` mode, the fields capacity does
    /// not decide: vocab_size, max_seq_len, rope_theta, rms_eps.
    pub model: ModelConfig,
    /// Where the architecture comes from: this config, or live capacity.
    pub architecture: ArchitectureConfig,
    /// Serve TLS when cert_file and key_file are set (mutual with ca_file).
    pub tls: neuroshard_runtime::tls::TlsFiles,
    /// Serve Prometheus `/metrics` over HTTP here (unset = no endpoint).
    pub metrics_listen: Option<SocketAddr>,
}

impl std::fmt::Debug for RegistryConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryConfig")
            .field("listen", &self.listen)
            .field("database_url", &"<redacted>")
            .field("network_id", &self.network_id)
            .field("min_replicas", &self.min_replicas)
            .field("heartbeat_interval_ms", &self.heartbeat_interval_ms)
            .field("suspect_after_ms", &self.suspect_after_ms)
            .field("dead_after_ms", &self.dead_after_ms)
            .field("clock_window_ms", &self.clock_window_ms)
            .field("watch_poll_ms", &self.watch_poll_ms)
            .field("bytes_per_param", &self.bytes_per_param)
            .field("model", &self.model)
            .field("architecture", &self.architecture)
            .field("tls", &self.tls)
            .field("metrics_listen", &self.metrics_listen)
            .finish()
    }
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7400)),
            database_url: "host=127.0.0.1 port=5432 user=postgres dbname=postgres".into(),
            network_id: "neuroshard-local".into(),
            min_replicas: 2,
            heartbeat_interval_ms: 5_000,
            suspect_after_ms: 15_000,
            dead_after_ms: 30_000,
            clock_window_ms: 60_000,
            watch_poll_ms: 250,
            bytes_per_param: TRAINING_BYTES_PER_PARAM,
            model: ModelConfig::small(4096),
            architecture: ArchitectureConfig::default(),
            tls: neuroshard_runtime::tls::TlsFiles::default(),
            metrics_listen: None,
        }
    }
}

impl RegistryConfig {
    /// Checks relations between fields that types cannot express.
    pub fn validate(&self) -> Result<(), neuroshard_common::Error> {
        use neuroshard_common::Error;
        self.model.validate()?;
        if self.min_replicas == 0 {
            return Err(Error::invalid_argument("min_replicas must be at least 1"));
        }
        if !(self.heartbeat_interval_ms < self.suspect_after_ms
            && self.suspect_after_ms < self.dead_after_ms)
        {
            return Err(Error::invalid_argument(format!(
                "liveness timings must satisfy heartbeat_interval_ms ({}) < suspect_after_ms ({}) < dead_after_ms ({})",
                self.heartbeat_interval_ms, self.suspect_after_ms, self.dead_after_ms
            )));
        }
        if self.network_id.is_empty() {
            return Err(Error::invalid_argument("network_id must not be empty"));
        }
        let scale = self.architecture.depth_curve_scale;
        if !(scale.is_finite() && scale > 0.0) {
            return Err(Error::invalid_argument(format!(
                "architecture.depth_curve_scale must be a positive number, got {scale}"
            )));
        }
        Ok(())
    }

    /// The architecture mode this config describes, for `growth::next_step`.
    pub fn architecture_mode(&self) -> ArchitectureMode {
        match self.architecture.mode {
            ArchitectureModeName::Fixed => ArchitectureMode::Fixed(self.model.clone()),
            ArchitectureModeName::Auto => ArchitectureMode::Auto(AutoPolicy {
                shapes: ArchitecturePolicy {
                    vocab_size: self.model.vocab_size,
                    max_seq_len: self.model.max_seq_len,
                    rope_theta: self.model.rope_theta,
                    rms_eps: self.model.rms_eps,
                    replicas: u64::from(self.min_replicas),
                    training_bytes_per_param: self.bytes_per_param,
                    depth_curve_scale: self.architecture.depth_curve_scale,
                },
                genesis_nodes: u64::from(self.architecture.genesis_nodes),
                settle_ms: self.architecture.growth_settle_ms,
            }),
        }
    }
}

/// `fixed` or `auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ArchitectureModeName {
    /// The configured `model`, never grown: serving a given trained checkpoint.
    Fixed,
    /// `architecture_for` the live capacity, growing in depth (never width) as it grows.
    Auto,
}

/// The `[architecture]` section. Every registry replica of a swarm must use the same.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArchitectureConfig {
    pub mode: ArchitectureModeName,
    /// auto: live nodes needed before the genesis shape (and with it the width) is chosen.
    pub genesis_nodes: u32,
    /// auto: how long live capacity must keep supporting a deeper model before it grows.
    pub growth_settle_ms: u64,
    /// auto: the depth curve reads total memory times this (1 = 40 GB → 16 layers); a
    /// local swarm of small nodes raises it to train several layers.
    pub depth_curve_scale: f64,
}

impl Default for ArchitectureConfig {
    fn default() -> Self {
        Self {
            mode: ArchitectureModeName::Fixed,
            genesis_nodes: 2,
            growth_settle_ms: 60_000,
            depth_curve_scale: 1.0,
        }
    }
}

impl neuroshard_runtime::ServiceConfig for RegistryConfig {
    const ENV_PREFIX: &'static str = "NEUROSHARD_REGISTRY";

    fn listen(&self) -> std::net::SocketAddr {
        self.listen
    }

    fn validate(&self) -> Result<(), neuroshard_common::Error> {
        RegistryConfig::validate(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_file_loads_and_validates() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../deploy/layer-registry.example.toml");
        let config: RegistryConfig =
            neuroshard_runtime::config::load(Some(&path), "NEUROSHARD_REGISTRY", Vec::new())
                .unwrap();
        config.validate().unwrap();
        assert_eq!(config, RegistryConfig::default());
    }

    #[test]
    fn debug_output_never_shows_the_database_password() {
        let config = RegistryConfig {
            database_url: "host=db user=ns password=hunter2".into(),
            ..RegistryConfig::default()
        };
        let shown = format!("{config:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("<redacted>"));
    }

    #[test]
    fn auto_mode_takes_the_uncapacitated_fields_from_model() {
        let config: RegistryConfig = neuroshard_runtime::config::load(
            None,
            "NEUROSHARD_REGISTRY",
            [
                (
                    "NEUROSHARD_REGISTRY_ARCHITECTURE__MODE".to_string(),
                    "auto".to_string(),
                ),
                (
                    "NEUROSHARD_REGISTRY_ARCHITECTURE__DEPTH_CURVE_SCALE".to_string(),
                    "20".to_string(),
                ),
            ],
        )
        .unwrap();
        config.validate().unwrap();
        let ArchitectureMode::Auto(policy) = config.architecture_mode() else {
            panic!("auto mode expected");
        };
        assert_eq!(policy.shapes.vocab_size, 4096);
        assert_eq!(policy.shapes.max_seq_len, 256);
        assert_eq!(policy.shapes.replicas, 2);
        assert_eq!(policy.shapes.depth_curve_scale, 20.0);
        assert_eq!(policy.settle_ms, 60_000);
        let bad = RegistryConfig {
            architecture: ArchitectureConfig {
                depth_curve_scale: 0.0,
                ..ArchitectureConfig::default()
            },
            ..RegistryConfig::default()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("depth_curve_scale")
        );
    }

    #[test]
    fn inconsistent_liveness_timings_are_refused() {
        let config = RegistryConfig {
            suspect_after_ms: 40_000,
            ..RegistryConfig::default()
        };
        assert!(
            config
                .validate()
                .unwrap_err()
                .to_string()
                .contains("suspect_after_ms")
        );
    }
}
