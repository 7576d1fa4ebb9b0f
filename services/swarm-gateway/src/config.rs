//! Gateway configuration: defaults < `--config` TOML file < `NEUROSHARD_GATEWAY_*` environment
//! (see `neuroshard_runtime::config`). See `deploy/swarm-gateway.example.toml`.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;

use neuroshard_common::Error;
use serde::{Deserialize, Serialize};

/// The environment prefix: `NEUROSHARD_GATEWAY_LISTEN`, `NEUROSHARD_GATEWAY_LIMITS__MAX_N`, …
pub const ENV_PREFIX: &str = "NEUROSHARD_GATEWAY";

/// Shortest API key accepted: a key short enough to guess is no key.
pub const MIN_KEY_LEN: usize = neuroshard_common::MIN_API_KEY_LEN;

/// Keys that example configurations have shipped: public, so never accepted.
/// `deploy/swarm-gateway.example.toml` carries the first; the second was an earlier example's.
pub const EXAMPLE_KEYS: &[&str] = &["sk-REPLACE-with-a-secret-key", "sk-local-change-me-0000"];

/// Everything the gateway needs at start. `Debug` redacts the API keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// Where the HTTP API listens.
    pub listen: SocketAddr,
    /// The name clients pass as `model`; the generator's model card must report the same.
    pub model: String,
    /// The `tokenizer.json` the served model was trained with.
    pub tokenizer: PathBuf,
    /// Bearer keys and the accounts they act for. `/v1/*` needs one of them.
    pub api_keys: Vec<ApiKey>,
    pub limits: Limits,
    /// How many requests run at once and how many may wait for a turn; past that, 429.
    pub admission: Admission,
    /// How much hidden state the gateway keeps to replay sessions after a failover.
    pub replay: ReplayBudget,
    /// Signed reports of what this gateway measures of each node, for the registry.
    pub observer: ObserverSettings,
    /// Charging for inference through the ledger (unset `billing.ledger`: inference is free).
    pub billing: BillingSettings,
    /// How long one decode hop may take before the generator fails over (read by the
    /// generator). The floor: a node the gateway measured as busy gets what its latency and
    /// load justify, up to `prefill_deadline_ms`.
    pub per_hop_deadline_ms: u64,
    /// The layer registry's gRPC endpoint (read by the generator).
    pub registry: String,
    /// The fixed part of a prefill or replay hop's deadline: to it is added the hop's positions
    /// times what one position is expected to cost on the node (measured by this gateway, else
    /// published by the registry) times `work_deadline_margin`. Also the most a busy node's
    /// decode hop is stretched to.
    pub prefill_deadline_ms: u64,
    /// Times the expected compute time a prefill or replay hop is given.
    pub work_deadline_margin: f64,
    /// The most any hop may take, however long its work is expected to.
    pub max_work_deadline_ms: u64,
    /// Failovers one request may go through before it fails with 503.
    pub max_failovers: u32,
    /// How long a request waits for the registry to place and load a span that has no live
    /// holder (a death before re-placement has loaded) before it fails with 503.
    pub route_patience_ms: u64,
    /// First back-off of a failing node, doubled per consecutive failure up to `max_backoff_ms`.
    pub backoff_ms: u64,
    pub max_backoff_ms: u64,
    /// The registry's replica target, shown by the status document.
    pub min_replicas: u32,
    /// TLS for `https://` registry and worker endpoints (trust `ca_file`, present
    /// `cert_file` + `key_file` for mutual TLS).
    pub tls: neuroshard_runtime::tls::TlsFiles,
    /// The `training.json` of the served checkpoint, when there is one: its loss curves are
    /// shown as the finished run that produced these weights.
    pub training_report: Option<PathBuf>,
    /// The diloco-aggregator (gRPC URL) whose rounds `/api/v1/status` lists as
    /// `training.rounds` (unset: none).
    pub aggregator: Option<String>,
    /// A JSON object of node id → process id, kept by the local swarm so the dashboard can
    /// show processes; read again for every status document, so restarted workers show
    /// their new process.
    pub node_pids_file: Option<PathBuf>,
}

/// One API key. `Debug` never shows the key.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    pub key: String,
    /// The ledger account requests made with this key are charged to.
    pub account: String,
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKey")
            .field("key", &"<redacted>")
            .field("account", &self.account)
            .finish()
    }
}

/// How many generation requests the gateway serves at once. A request beyond
/// `max_running_requests` waits for a turn, up to `max_wait_ms`, while fewer than
/// `max_waiting_requests` others wait; otherwise it is answered 429 with `Retry-After`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Admission {
    pub max_running_requests: u32,
    pub max_waiting_requests: u32,
    pub max_wait_ms: u64,
    /// The `Retry-After` a refused request is given, in seconds.
    pub retry_after_s: u32,
}

/// Hidden states kept so that a node replacing a failed one can rebuild the session without
/// recomputing anything upstream. Past either budget a generation stops keeping them and, on
/// a failover, recomputes the replacement's input from the token ids through the hops before
/// it: slower to recover, same output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReplayBudget {
    /// Most bytes one generation (one choice of a request) keeps.
    pub max_bytes_per_generation: u64,
    /// Most bytes all generations of this gateway keep together.
    pub max_bytes_total: u64,
}

/// What this gateway measures of each node's decode hops, reported to the registry signed
/// with `key_file` (the registry takes reports only from the node ids its `observers` list
/// names, and then routes and places by min(claim, measured)). Without `key_file`, nothing is
/// reported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ObserverSettings {
    /// secp256k1 key file, created (mode 0600) when missing; the gateway logs its node id at
    /// start, for the registry's `observers`.
    pub key_file: Option<PathBuf>,
    /// The swarm's network id (the registry's `network_id`), part of every signature.
    pub network_id: String,
    /// How often a report is sent (only when there is something new to report).
    pub interval_ms: u64,
    /// Decode hops a node needs since the last report to be reported.
    pub min_samples: u32,
}

/// The `[billing]` section: with a ledger, every request escrows its most possible cost from
/// the wallet its API key's `account` names (a 40-hex address) before any compute, and settles
/// what was delivered when it ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BillingSettings {
    /// The ledger's gRPC URL.
    pub ledger: Option<String>,
    /// The key escrows and settlements are signed with (created, mode 0600, when missing);
    /// the ledger's `gateways` must list its node id, which the gateway logs at start.
    pub key_file: Option<PathBuf>,
    /// The network the ledger serves (part of every signature).
    pub network_id: String,
}

impl Default for BillingSettings {
    fn default() -> Self {
        Self {
            ledger: None,
            key_file: None,
            network_id: "neuroshard-local".into(),
        }
    }
}

impl Default for ObserverSettings {
    fn default() -> Self {
        Self {
            key_file: None,
            network_id: "neuroshard-local".into(),
            interval_ms: 10_000,
            min_samples: 8,
        }
    }
}

/// Per-request limits; a request over one is refused with 400 (413 for the body).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub max_body_bytes: usize,
    /// Most choices (`n`) one request may ask for.
    pub max_n: u32,
    /// Most tokens one choice may generate (`max_tokens`).
    pub max_tokens: u32,
    /// Most `stop` sequences one request may give.
    pub max_stop_sequences: usize,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            model: "neurollm".into(),
            tokenizer: PathBuf::from("tokenizer.json"),
            api_keys: Vec::new(),
            limits: Limits::default(),
            admission: Admission::default(),
            replay: ReplayBudget::default(),
            observer: ObserverSettings::default(),
            billing: BillingSettings::default(),
            per_hop_deadline_ms: 200,
            registry: "https://127.0.0.1:7400".into(),
            prefill_deadline_ms: 5_000,
            work_deadline_margin: 3.0,
            max_work_deadline_ms: 120_000,
            max_failovers: 8,
            route_patience_ms: 30_000,
            backoff_ms: 2_000,
            max_backoff_ms: 60_000,
            min_replicas: 2,
            tls: neuroshard_runtime::tls::TlsFiles::default(),
            training_report: None,
            aggregator: None,
            node_pids_file: None,
        }
    }
}

impl Default for Admission {
    fn default() -> Self {
        Self {
            max_running_requests: 64,
            max_waiting_requests: 256,
            max_wait_ms: 10_000,
            retry_after_s: 1,
        }
    }
}

impl Default for ReplayBudget {
    fn default() -> Self {
        Self {
            max_bytes_per_generation: 64 << 20,
            max_bytes_total: 2 << 30,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 1 << 20,
            max_n: 8,
            max_tokens: 4096,
            max_stop_sequences: 4,
        }
    }
}

impl GatewayConfig {
    /// Checks what types cannot express. Messages name the field and never show a key.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |m: String| Error::invalid_argument(m);
        if self.model.trim().is_empty() {
            return Err(bad("model must not be empty".into()));
        }
        if self.tokenizer.as_os_str().is_empty() {
            return Err(bad("tokenizer must name a tokenizer.json file".into()));
        }
        if self.api_keys.is_empty() {
            return Err(bad(
                "api_keys must hold at least one { key, account } entry: /v1 needs a key".into(),
            ));
        }
        let mut seen = HashSet::new();
        for (i, entry) in self.api_keys.iter().enumerate() {
            if entry.key.chars().count() < MIN_KEY_LEN {
                return Err(bad(format!(
                    "api_keys[{i}].key is shorter than {MIN_KEY_LEN} characters"
                )));
            }
            if EXAMPLE_KEYS.contains(&entry.key.as_str()) {
                return Err(bad(format!(
                    "api_keys[{i}].key is the placeholder of an example configuration, which anyone can read: set a secret key of your own (for example from `openssl rand -hex 24`), preferably through NEUROSHARD_GATEWAY_API_KEYS"
                )));
            }
            if entry
                .key
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(bad(format!(
                    "api_keys[{i}].key contains whitespace or control characters"
                )));
            }
            if entry.account.trim().is_empty() {
                return Err(bad(format!("api_keys[{i}].account must not be empty")));
            }
            if !seen.insert(entry.key.as_str()) {
                return Err(bad(format!(
                    "api_keys[{i}].key repeats an earlier key (accounts {:?})",
                    self.accounts_of(&entry.key)
                )));
            }
        }
        let l = &self.limits;
        if l.max_body_bytes < 1024 {
            return Err(bad(format!(
                "limits.max_body_bytes must be at least 1024, got {}",
                l.max_body_bytes
            )));
        }
        if l.max_n == 0 {
            return Err(bad("limits.max_n must be at least 1".into()));
        }
        if l.max_tokens == 0 {
            return Err(bad("limits.max_tokens must be at least 1".into()));
        }
        let a = &self.admission;
        if a.max_running_requests == 0 {
            return Err(bad(
                "admission.max_running_requests must be at least 1".into()
            ));
        }
        if a.max_waiting_requests > 0 && a.max_wait_ms == 0 {
            return Err(bad(
                "admission.max_wait_ms must be at least 1 when admission.max_waiting_requests is set"
                    .into(),
            ));
        }
        if a.retry_after_s == 0 {
            return Err(bad("admission.retry_after_s must be at least 1".into()));
        }
        if self.replay.max_bytes_total < self.replay.max_bytes_per_generation {
            return Err(bad(format!(
                "replay.max_bytes_total ({}) must be at least replay.max_bytes_per_generation ({})",
                self.replay.max_bytes_total, self.replay.max_bytes_per_generation
            )));
        }
        if self.per_hop_deadline_ms == 0 {
            return Err(bad("per_hop_deadline_ms must be at least 1".into()));
        }
        if let Some(ledger) = &self.billing.ledger {
            self.tls
                .check_scheme("billing.ledger", ledger)
                .map_err(|e| bad(e.message))?;
            if self.billing.key_file.is_none() {
                return Err(bad(
                    "billing.key_file is required with billing.ledger: escrows are signed with it"
                        .into(),
                ));
            }
            if self.billing.network_id.trim().is_empty() {
                return Err(bad("billing.network_id must not be empty".into()));
            }
            for (i, entry) in self.api_keys.iter().enumerate() {
                if !neuroshard_common::identity::is_node_id(&entry.account) {
                    return Err(bad(format!(
                        "api_keys[{i}].account must be a wallet address (40 lowercase hex digits) when billing.ledger is set: requests are charged to it"
                    )));
                }
            }
        }
        let o = &self.observer;
        if o.key_file.is_some() {
            if o.network_id.trim().is_empty() {
                return Err(bad("observer.network_id must not be empty".into()));
            }
            if o.interval_ms < 100 {
                return Err(bad(format!(
                    "observer.interval_ms must be at least 100, got {}",
                    o.interval_ms
                )));
            }
        }
        if self.prefill_deadline_ms < self.per_hop_deadline_ms {
            return Err(bad(format!(
                "prefill_deadline_ms ({}) must be at least per_hop_deadline_ms ({})",
                self.prefill_deadline_ms, self.per_hop_deadline_ms
            )));
        }
        if !(self.work_deadline_margin.is_finite() && self.work_deadline_margin >= 1.0) {
            return Err(bad(format!(
                "work_deadline_margin must be a number of at least 1, got {}",
                self.work_deadline_margin
            )));
        }
        if self.max_work_deadline_ms < self.prefill_deadline_ms {
            return Err(bad(format!(
                "max_work_deadline_ms ({}) must be at least prefill_deadline_ms ({})",
                self.max_work_deadline_ms, self.prefill_deadline_ms
            )));
        }
        if self.backoff_ms == 0 || self.max_backoff_ms < self.backoff_ms {
            return Err(bad(format!(
                "backoff_ms must be at least 1 and at most max_backoff_ms, got {} and {}",
                self.backoff_ms, self.max_backoff_ms
            )));
        }
        if self.registry.trim().is_empty() {
            return Err(bad(
                "registry must name the layer registry's endpoint".into()
            ));
        }
        // Last, so a config's own mistakes are named before the missing certificates.
        self.tls.validate()?;
        if let Some(url) = &self.aggregator {
            self.tls.check_scheme("aggregator", url)?;
        }
        self.tls.check_scheme("registry", &self.registry)
    }

    fn accounts_of(&self, key: &str) -> Vec<&str> {
        self.api_keys
            .iter()
            .filter(|e| e.key == key)
            .map(|e| e.account.as_str())
            .collect()
    }
}

impl neuroshard_runtime::ServiceConfig for GatewayConfig {
    const ENV_PREFIX: &'static str = ENV_PREFIX;

    fn listen(&self) -> std::net::SocketAddr {
        self.listen
    }

    fn validate(&self) -> Result<(), neuroshard_common::Error> {
        GatewayConfig::validate(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use neuroshard_runtime::ServiceConfig;

    fn example_path() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/swarm-gateway.example.toml")
    }

    fn valid() -> GatewayConfig {
        GatewayConfig {
            api_keys: vec![ApiKey {
                key: "sk-test-0123456789abcdef".into(),
                account: "alice".into(),
            }],
            registry: "http://127.0.0.1:7400".into(),
            tls: neuroshard_runtime::tls::TlsFiles::insecure_plaintext(),
            ..GatewayConfig::default()
        }
    }

    #[test]
    fn example_config_file_loads_and_validates_once_given_a_key_of_ones_own() {
        let env = vec![(
            "NEUROSHARD_GATEWAY_API_KEYS".to_string(),
            r#"[{ key = "sk-a-secret-of-my-own-0123", account = "local" }]"#.to_string(),
        )];
        let config = GatewayConfig::load(Some(&example_path()), env).unwrap();
        assert_eq!(config.limits, Limits::default());
        assert_eq!(config.admission, Admission::default());
        assert_eq!(config.replay, ReplayBudget::default());
        assert_eq!(config.per_hop_deadline_ms, 200);
        assert_eq!(config.api_keys.len(), 1);
        assert_eq!(config.api_keys[0].account, "local");
    }

    #[test]
    fn the_example_key_is_refused_at_start() {
        let err = GatewayConfig::load(Some(&example_path()), Vec::new())
            .unwrap_err()
            .to_string();
        assert!(err.contains("api_keys[0].key is the placeholder"), "{err}");
        for key in EXAMPLE_KEYS {
            let config = GatewayConfig {
                api_keys: vec![ApiKey {
                    key: (*key).into(),
                    account: "a".into(),
                }],
                ..valid()
            };
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains("placeholder") && !err.contains(key), "{err}");
        }
    }

    #[test]
    fn environment_overrides_the_file() {
        let env = vec![
            (
                "NEUROSHARD_GATEWAY_LIMITS__MAX_N".to_string(),
                "2".to_string(),
            ),
            (
                "NEUROSHARD_GATEWAY_API_KEYS".into(),
                r#"[{ key = "sk-from-the-environment", account = "bob" }]"#.into(),
            ),
        ];
        let config = GatewayConfig::load(Some(&example_path()), env).unwrap();
        assert_eq!(config.limits.max_n, 2);
        assert_eq!(config.api_keys[0].account, "bob");
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.toml");
        std::fs::write(&path, "[limits]\nmax_nn = 3\n").unwrap();
        let err = GatewayConfig::load(Some(&path), Vec::new())
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_nn"), "{err}");
    }

    #[test]
    fn debug_output_never_shows_a_key() {
        let shown = format!("{:?}", valid());
        assert!(!shown.contains("0123456789abcdef"), "{shown}");
        assert!(shown.contains("<redacted>") && shown.contains("alice"));
    }

    #[test]
    fn bad_values_are_refused_with_the_field_named() {
        valid().validate().unwrap();
        let cases: Vec<(GatewayConfig, &str)> = vec![
            (GatewayConfig::default(), "api_keys"),
            (
                GatewayConfig {
                    api_keys: vec![ApiKey {
                        key: "short".into(),
                        account: "a".into(),
                    }],
                    ..valid()
                },
                "api_keys[0].key",
            ),
            (
                GatewayConfig {
                    api_keys: vec![valid().api_keys[0].clone(), valid().api_keys[0].clone()],
                    ..valid()
                },
                "api_keys[1].key repeats",
            ),
            (
                GatewayConfig {
                    model: " ".into(),
                    ..valid()
                },
                "model",
            ),
            (
                GatewayConfig {
                    limits: Limits {
                        max_n: 0,
                        ..Limits::default()
                    },
                    ..valid()
                },
                "limits.max_n",
            ),
            (
                GatewayConfig {
                    limits: Limits {
                        max_tokens: 0,
                        ..Limits::default()
                    },
                    ..valid()
                },
                "limits.max_tokens",
            ),
            (
                GatewayConfig {
                    per_hop_deadline_ms: 0,
                    ..valid()
                },
                "per_hop_deadline_ms",
            ),
            (
                GatewayConfig {
                    work_deadline_margin: 0.5,
                    ..valid()
                },
                "work_deadline_margin",
            ),
            (
                GatewayConfig {
                    max_work_deadline_ms: 1_000,
                    ..valid()
                },
                "max_work_deadline_ms",
            ),
            (
                GatewayConfig {
                    admission: Admission {
                        max_running_requests: 0,
                        ..Admission::default()
                    },
                    ..valid()
                },
                "admission.max_running_requests",
            ),
            (
                GatewayConfig {
                    admission: Admission {
                        max_wait_ms: 0,
                        ..Admission::default()
                    },
                    ..valid()
                },
                "admission.max_wait_ms",
            ),
            (
                GatewayConfig {
                    admission: Admission {
                        retry_after_s: 0,
                        ..Admission::default()
                    },
                    ..valid()
                },
                "admission.retry_after_s",
            ),
            (
                GatewayConfig {
                    replay: ReplayBudget {
                        max_bytes_per_generation: 10,
                        max_bytes_total: 9,
                    },
                    ..valid()
                },
                "replay.max_bytes_total",
            ),
        ];
        for (config, needle) in cases {
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains(needle), "{needle}: {err}");
            assert!(!err.contains("0123456789abcdef"), "{err}");
        }
    }
}
