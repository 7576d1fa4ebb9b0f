//! Registry configuration: defaults < `--config` TOML file < `NEUROSHARD_REGISTRY_*` environment.
//! See `deploy/layer-registry.example.toml`.

use std::net::SocketAddr;

use neuroshard_common::ModelConfig;
use neuroshard_common::architecture::{ArchitecturePolicy, TRAINING_BYTES_PER_PARAM};
use neuroshard_common::growth::{ArchitectureMode, AutoPolicy};
use neuroshard_common::identity::is_node_id;
use serde::{Deserialize, Serialize};

pub use neuroshard_postgres::{DatabaseTls, SslMode};

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
    /// Answer gRPC health checks, and nothing else, in plaintext here (unset = none): the
    /// port Kubernetes' gRPC probes use, since they cannot do mutual TLS.
    pub health_listen: Option<SocketAddr>,
    /// TLS on the link to PostgreSQL.
    pub database_tls: DatabaseTls,
    /// Register dials the node's endpoint (gRPC `Info`, over `tls` for `https://`) within
    /// this many milliseconds and requires it to answer as the signing node, so nobody is
    /// given layers at an address the swarm cannot reach or that serves another node. 0 skips
    /// the check: only for tests that register nodes with no worker behind them.
    pub endpoint_probe_timeout_ms: u64,
    /// Who may register (and keep heartbeating): anyone, or the nodes in `allowed_nodes`.
    pub admission: Admission,
    /// With `admission = "allow_list"`: node ids (40 hex digits) or compressed public keys
    /// (66 hex digits) of the nodes admitted.
    pub allowed_nodes: Vec<String>,
    /// The most usable memory a node may claim; a larger claim is clamped to this (the node
    /// is admitted, and given no more layers than this much memory holds).
    pub max_usable_memory_bytes: u64,
    /// The most tokens/s a node may claim; a larger claim is clamped to this.
    pub max_tokens_per_second: f64,
    /// Node ids of the keys (gateways) whose `ReportObservations` are accepted: measured
    /// throughput that routing and placement then use instead of larger claims.
    pub observers: Vec<String>,
    /// Node ids of the keys (Kubernetes operators) whose `Drain` of any node is accepted, so
    /// deleting a node's resource can hand its layers over before its pod goes.
    pub operators: Vec<String>,
    /// secp256k1 key that signs uptime attestations (created with mode 0600 when missing);
    /// unset: this registry attests nothing (`Attest` is FAILED_PRECONDITION).
    pub signing_key_file: Option<std::path::PathBuf>,
    /// Uptime is kept and attested per epoch of this length (the ledger's
    /// `economics.uptime_epoch_ms` must match).
    pub uptime_epoch_ms: u64,
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
            .field("health_listen", &self.health_listen)
            .field("database_tls", &self.database_tls)
            .field("endpoint_probe_timeout_ms", &self.endpoint_probe_timeout_ms)
            .field("admission", &self.admission)
            .field("allowed_nodes", &self.allowed_nodes.len())
            .field("max_usable_memory_bytes", &self.max_usable_memory_bytes)
            .field("max_tokens_per_second", &self.max_tokens_per_second)
            .field("observers", &self.observers)
            .field("operators", &self.operators)
            .field("signing_key_file", &self.signing_key_file)
            .field("uptime_epoch_ms", &self.uptime_epoch_ms)
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
            health_listen: None,
            database_tls: DatabaseTls::default(),
            endpoint_probe_timeout_ms: 2_000,
            admission: Admission::Open,
            allowed_nodes: Vec::new(),
            max_usable_memory_bytes: 1 << 40,
            max_tokens_per_second: 100_000.0,
            observers: Vec::new(),
            operators: Vec::new(),
            signing_key_file: None,
            uptime_epoch_ms: 3_600_000,
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
        if self.uptime_epoch_ms < 1_000 || self.uptime_epoch_ms > i64::MAX as u64 {
            return Err(Error::invalid_argument(format!(
                "uptime_epoch_ms must be at least 1000, got {}",
                self.uptime_epoch_ms
            )));
        }
        if self.clock_window_ms <= 0 {
            return Err(Error::invalid_argument(format!(
                "clock_window_ms must be positive, got {}",
                self.clock_window_ms
            )));
        }
        if self.max_usable_memory_bytes == 0 {
            return Err(Error::invalid_argument(
                "max_usable_memory_bytes must be positive",
            ));
        }
        if !(self.max_tokens_per_second.is_finite() && self.max_tokens_per_second > 0.0) {
            return Err(Error::invalid_argument(format!(
                "max_tokens_per_second must be a positive number, got {}",
                self.max_tokens_per_second
            )));
        }
        // The URL is never echoed: it may carry a password.
        if self.database_url.contains("sslmode") {
            return Err(Error::invalid_argument(
                "database_url: set TLS with [database_tls] sslmode, not in the connection string",
            ));
        }
        self.database_tls.validate()?;
        self.admitted_ids()?;
        for (list, ids) in [
            ("observers", &self.observers),
            ("operators", &self.operators),
        ] {
            for (i, id) in ids.iter().enumerate() {
                if !is_node_id(id) {
                    return Err(Error::invalid_argument(format!(
                        "{list}[{i}]: `{id}` is not a node id (40 lowercase hex digits)"
                    )));
                }
            }
        }
        // Last, so a config's own mistakes are named before the missing certificates.
        self.tls.validate()
    }

    /// The node ids `allowed_nodes` names (public keys turned into their node ids), or
    /// `None` when admission is open.
    pub fn admitted_ids(
        &self,
    ) -> Result<Option<std::collections::BTreeSet<String>>, neuroshard_common::Error> {
        use neuroshard_common::Error;
        match self.admission {
            Admission::Open => Ok(None),
            Admission::AllowList => {
                if self.allowed_nodes.is_empty() {
                    return Err(Error::invalid_argument(
                        "allowed_nodes: admission = \"allow_list\" with an empty list admits no node",
                    ));
                }
                self.allowed_nodes
                    .iter()
                    .enumerate()
                    .map(|(i, entry)| allowed_node_id(entry).ok_or_else(|| {
                        Error::invalid_argument(format!(
                            "allowed_nodes[{i}]: neither a node id (40 hex digits) nor a compressed public key (66 hex digits)"
                        ))
                    }))
                    .collect::<Result<_, _>>()
                    .map(Some)
            }
        }
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

/// The node id an `allowed_nodes` entry names: a node id, or a compressed public key.
fn allowed_node_id(entry: &str) -> Option<String> {
    let entry = entry.trim().to_ascii_lowercase();
    if is_node_id(&entry) {
        return Some(entry);
    }
    let key = hex::decode(&entry).ok()?;
    neuroshard_common::identity::parse_public_key(&key).ok()?;
    Some(neuroshard_common::identity::node_id_of(&key))
}

/// Who may register.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Admission {
    /// Any key: a public swarm, where claims are bounded by the caps and measured by observers.
    Open,
    /// Only the keys in `allowed_nodes`.
    AllowList,
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
    /// auto: a node's memory counts toward growth only once it has been registered this long
    /// (and, when observers are configured, once an observer has measured it), so keys that
    /// appear for a moment, or claim capacity they never serve, cannot grow the model for good.
    pub growth_min_node_age_ms: u64,
}

impl Default for ArchitectureConfig {
    fn default() -> Self {
        Self {
            mode: ArchitectureModeName::Fixed,
            genesis_nodes: 2,
            growth_settle_ms: 60_000,
            depth_curve_scale: 1.0,
            growth_min_node_age_ms: 600_000,
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
        // The example is the defaults with the cluster's certificate and key paths filled in.
        assert_eq!(
            config,
            RegistryConfig {
                tls: neuroshard_runtime::tls::TlsFiles {
                    cert_file: Some("/etc/neuroshard/tls/tls.crt".into()),
                    key_file: Some("/etc/neuroshard/tls/tls.key".into()),
                    ca_file: Some("/etc/neuroshard/tls/ca.crt".into()),
                    insecure_plaintext: false,
                },
                signing_key_file: Some("/var/lib/neuroshard/registry.key".into()),
                ..RegistryConfig::default()
            }
        );
        let err = RegistryConfig::default()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("tls.insecure_plaintext = true"), "{err}");
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
                (
                    "NEUROSHARD_REGISTRY_TLS__INSECURE_PLAINTEXT".to_string(),
                    "true".to_string(),
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
    fn trust_settings_parse_and_bad_ones_are_refused() {
        let key = neuroshard_common::identity::NodeKey::generate();
        let env = |pairs: &[(&str, &str)]| {
            neuroshard_runtime::config::load::<RegistryConfig>(
                None,
                "NEUROSHARD_REGISTRY",
                pairs
                    .iter()
                    .map(|(k, v)| (format!("NEUROSHARD_REGISTRY_{k}"), v.to_string())),
            )
        };
        let public = hex::encode(key.public_key());
        let config = env(&[
            ("ADMISSION", "allow_list"),
            (
                "ALLOWED_NODES",
                &format!("[\"{public}\", \"{}\"]", "ab".repeat(20)),
            ),
            ("OBSERVERS", &format!("[\"{}\"]", "cd".repeat(20))),
            ("DATABASE_TLS__SSLMODE", "verify-full"),
            ("DATABASE_TLS__ROOT_CERT_FILE", "/etc/pg/root.crt"),
            ("TLS__INSECURE_PLAINTEXT", "true"),
        ])
        .unwrap();
        config.validate().unwrap();
        let admitted = config.admitted_ids().unwrap().unwrap();
        assert!(admitted.contains(key.node_id()));
        assert!(admitted.contains(&"ab".repeat(20)));
        assert_eq!(config.database_tls.sslmode, SslMode::VerifyFull);
        assert!(RegistryConfig::default().admitted_ids().unwrap().is_none());

        let refused = |config: RegistryConfig, needle: &str| {
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains(needle), "{err}");
            err
        };
        let base = RegistryConfig::default;
        refused(
            RegistryConfig {
                admission: Admission::AllowList,
                ..base()
            },
            "admits no node",
        );
        let err = refused(
            RegistryConfig {
                admission: Admission::AllowList,
                allowed_nodes: vec!["not-a-key".into()],
                ..base()
            },
            "allowed_nodes[0]",
        );
        assert!(!err.contains("not-a-key"), "{err}");
        refused(
            RegistryConfig {
                observers: vec!["short".into()],
                ..base()
            },
            "observers[0]",
        );
        refused(
            RegistryConfig {
                operators: vec!["op".into()],
                ..base()
            },
            "operators[0]",
        );
        refused(
            RegistryConfig {
                max_tokens_per_second: f64::NAN,
                ..base()
            },
            "max_tokens_per_second",
        );
        refused(
            RegistryConfig {
                clock_window_ms: -1,
                ..base()
            },
            "clock_window_ms",
        );
        let err = refused(
            RegistryConfig {
                database_url: "host=db password=hunter2 sslmode=require".into(),
                ..base()
            },
            "[database_tls]",
        );
        assert!(!err.contains("hunter2"), "{err}");
        refused(
            RegistryConfig {
                database_tls: DatabaseTls {
                    sslmode: SslMode::VerifyFull,
                    root_cert_file: None,
                },
                ..base()
            },
            "root_cert_file is required",
        );
        refused(
            RegistryConfig {
                database_tls: DatabaseTls {
                    sslmode: SslMode::Require,
                    root_cert_file: Some("/ca.crt".into()),
                },
                ..base()
            },
            "only used with sslmode",
        );
        let bad_mode = env(&[("DATABASE_TLS__SSLMODE", "verify-ca")]).unwrap_err();
        assert!(bad_mode.to_string().contains("verify-full"), "{bad_mode}");
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
