//! Aggregator configuration: defaults < `--config` TOML file < `NEUROSHARD_AGGREGATOR_*`
//! environment. See `deploy/diloco-aggregator.example.toml`.

use std::net::SocketAddr;
use std::path::PathBuf;

use neuroshard_aggregation::OuterConfig;
use neuroshard_aggregation::Rule;
use neuroshard_aggregation::screening::ScreeningConfig;
use neuroshard_common::{Error, Result};
use neuroshard_postgres::DatabaseTls;
use serde::{Deserialize, Serialize};

/// Everything the aggregator needs at start. `Debug` redacts the database URL.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AggregatorConfig {
    pub listen: SocketAddr,
    /// libpq-style connection string; may carry a password, so it is never logged.
    pub database_url: String,
    pub database_tls: DatabaseTls,
    /// Signed submissions for another network are refused.
    pub network_id: String,
    /// secp256k1 key that signs receipts and evidence (created with mode 0600 when missing).
    pub key_file: PathBuf,
    /// The registry: the architecture, and who held which span in a round.
    pub registry: String,
    /// Serve TLS with cert_file + key_file; trust ca_file for https:// peers (the registry).
    pub tls: neuroshard_runtime::tls::TlsFiles,
    pub metrics_listen: Option<SocketAddr>,
    /// Answer gRPC health checks, and nothing else, in plaintext here (unset = none): the
    /// port Kubernetes' gRPC probes use, since they cannot do mutual TLS.
    pub health_listen: Option<SocketAddr>,
    /// The volume global weights are written to, one checkpoint per round.
    pub state_dir: PathBuf,
    /// Where round 0's weights come from: the checkpoint every node loads, or (without one)
    /// the seed every node agrees on.
    pub checkpoint: Option<PathBuf>,
    pub init_seed: u64,
    /// The dataset whose held-out split scores submissions and rounds (unset: no scoring).
    pub data_dir: Option<PathBuf>,
    /// Held-out windows per score (chosen by the round's seed) and their length.
    pub held_out_windows: usize,
    pub held_out_seq_len: usize,
    /// Inner steps per round (H).
    pub inner_steps: u64,
    /// A round closes this long after it opens, with what it has, if not complete before.
    pub round_deadline_ms: u64,
    /// Accepted contributions a layer needs to be updated; fewer keep θ_start.
    pub quorum: u32,
    /// The robust rule (mean, trimmed_mean, median, krum, multi_krum, geometric_median,
    /// centered_clipping), the Byzantine contributors it should tolerate, and the pre-steps.
    pub rule: String,
    pub byzantine: usize,
    pub mixing: bool,
    pub bucket: Option<usize>,
    pub outer: OuterConfig,
    pub screening: ScreeningConfig,
    /// A submission whose pipeline's Δ raises the held-out loss by more than this (nats) is
    /// flagged `no_improvement`.
    pub score_tolerance: f64,
    /// Flagged submissions are left out of the aggregate (and get evidence, not receipts).
    pub exclude_flagged: bool,
    /// The layers this aggregator owns: `[layers_start, layers_end)`, to the last layer when
    /// `layers_end` is unset (then it also owns the final norm and head; layer 0 brings the
    /// embedding).
    pub layers_start: u32,
    pub layers_end: Option<u32>,
    /// Accepted difference between a signer's clock and ours.
    pub clock_window_ms: i64,
    /// Largest tensor and gRPC message taken, and most chunks per tensor.
    pub max_tensor_bytes: usize,
    pub max_message_bytes: usize,
    pub max_stream_chunks: usize,
    /// Size of the chunks global weights are streamed in.
    pub stream_chunk_bytes: usize,
    /// Published rounds whose weights stay on the volume.
    pub keep_rounds: u64,
}

impl std::fmt::Debug for AggregatorConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AggregatorConfig")
            .field("listen", &self.listen)
            .field("database_url", &"<redacted>")
            .field("network_id", &self.network_id)
            .field("registry", &self.registry)
            .field("state_dir", &self.state_dir)
            .field("rule", &self.rule)
            .field("byzantine", &self.byzantine)
            .field("inner_steps", &self.inner_steps)
            .field("quorum", &self.quorum)
            .field("layers_start", &self.layers_start)
            .field("layers_end", &self.layers_end)
            .finish_non_exhaustive()
    }
}

impl Default for AggregatorConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7600)),
            database_url: "host=127.0.0.1 port=5432 user=postgres dbname=postgres".into(),
            database_tls: DatabaseTls::default(),
            network_id: "neuroshard-local".into(),
            key_file: PathBuf::from("aggregator.key"),
            registry: "https://127.0.0.1:7400".into(),
            tls: neuroshard_runtime::tls::TlsFiles::default(),
            metrics_listen: None,
            health_listen: None,
            state_dir: PathBuf::from("aggregator-state"),
            checkpoint: None,
            init_seed: 0,
            data_dir: None,
            held_out_windows: 16,
            held_out_seq_len: 64,
            inner_steps: 500,
            round_deadline_ms: 3_600_000,
            quorum: 1,
            rule: Rule::TrimmedMean.name().into(),
            byzantine: 1,
            mixing: false,
            bucket: None,
            outer: OuterConfig::default(),
            screening: ScreeningConfig::default(),
            score_tolerance: 0.05,
            exclude_flagged: true,
            layers_start: 0,
            layers_end: None,
            clock_window_ms: 60_000,
            max_tensor_bytes: 256 << 20,
            max_message_bytes: 64 << 20,
            max_stream_chunks: neuroshard_common::tensor::DEFAULT_MAX_CHUNKS,
            stream_chunk_bytes: 1 << 20,
            keep_rounds: 3,
        }
    }
}

impl AggregatorConfig {
    /// Checks relations between fields that types cannot express.
    pub fn validate(&self) -> Result<()> {
        self.rule()?;
        self.outer.validate()?;
        self.database_tls.validate()?;
        self.tls.validate()?;
        self.tls.check_scheme("registry", &self.registry)?;
        if self.inner_steps == 0 {
            return Err(Error::invalid_argument("inner_steps must be at least 1"));
        }
        if self.round_deadline_ms < 1_000 {
            return Err(Error::invalid_argument(
                "round_deadline_ms must be at least 1000",
            ));
        }
        if self.quorum == 0 {
            return Err(Error::invalid_argument("quorum must be at least 1"));
        }
        if self.held_out_windows == 0 || self.held_out_seq_len < 2 {
            return Err(Error::invalid_argument(
                "held_out_windows must be at least 1 and held_out_seq_len at least 2",
            ));
        }
        if let Some(end) = self.layers_end
            && end <= self.layers_start
        {
            return Err(Error::invalid_argument(format!(
                "layers_end ({end}) must be above layers_start ({})",
                self.layers_start
            )));
        }
        if self.bucket == Some(0) {
            return Err(Error::invalid_argument(
                "bucket must be at least 1 when set",
            ));
        }
        if !(self.score_tolerance.is_finite() && self.score_tolerance >= 0.0) {
            return Err(Error::invalid_argument(
                "score_tolerance must be a non-negative number",
            ));
        }
        if self.keep_rounds == 0 {
            return Err(Error::invalid_argument("keep_rounds must be at least 1"));
        }
        Ok(())
    }

    pub fn rule(&self) -> Result<Rule> {
        Rule::parse(&self.rule).map_err(|e| Error::invalid_argument(format!("rule: {}", e.message)))
    }
}

impl neuroshard_runtime::ServiceConfig for AggregatorConfig {
    const ENV_PREFIX: &'static str = "NEUROSHARD_AGGREGATOR";

    fn listen(&self) -> SocketAddr {
        self.listen
    }

    fn validate(&self) -> Result<()> {
        AggregatorConfig::validate(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use neuroshard_runtime::ServiceConfig;

    #[test]
    fn the_example_file_loads_and_environment_wins() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../deploy/diloco-aggregator.example.toml"
        );
        let config = AggregatorConfig::load(
            Some(std::path::Path::new(path)),
            [("NEUROSHARD_AGGREGATOR_QUORUM".to_string(), "3".to_string())],
        )
        .unwrap();
        assert_eq!(config.quorum, 3);
        assert_eq!(config.rule().unwrap(), Rule::TrimmedMean);
    }

    #[test]
    fn bad_settings_are_named() {
        let bad = |f: fn(&mut AggregatorConfig)| {
            let mut c = AggregatorConfig {
                tls: neuroshard_runtime::tls::TlsFiles::insecure_plaintext(),
                registry: "http://127.0.0.1:7400".into(),
                ..AggregatorConfig::default()
            };
            c.validate().unwrap();
            f(&mut c);
            c.validate().unwrap_err().message
        };
        assert!(bad(|c| c.rule = "average".into()).contains("rule"));
        assert!(bad(|c| c.quorum = 0).contains("quorum"));
        assert!(bad(|c| c.layers_end = Some(0)).contains("layers_end"));
        assert!(bad(|c| c.outer.momentum = 1.0).contains("momentum"));
        assert!(bad(|c| c.inner_steps = 0).contains("inner_steps"));
    }

    #[test]
    fn debug_hides_the_database_url() {
        let config = AggregatorConfig {
            database_url: "host=db password=hunter2".into(),
            ..AggregatorConfig::default()
        };
        assert!(!format!("{config:?}").contains("hunter2"));
    }
}
