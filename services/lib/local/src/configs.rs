//! The config file of each service the harness starts, written as a TOML table: one type per
//! service, one method per key the harness sets (every other key keeps the service's default).
//! The harness cannot see the services' config structs (a library never depends on a
//! deployable), but the services refuse unknown keys at start, so a misspelt key here fails
//! loudly; `tests/tests/configs.rs` deserialises every table these types write into the
//! services' own config types.

use std::path::Path;

use neuroshard_common::ModelConfig;
use neuroshard_runtime::tls::TlsFiles;
use serde::Serialize;

use crate::{LocalError, Result};

/// `value` as a TOML value (paths must be UTF-8, as the services' own serialisers require).
fn value(what: &str, value: impl Serialize) -> Result<toml::Value> {
    toml::Value::try_from(value).map_err(|e| LocalError(format!("config key {what}: {e}")))
}

fn listen(port: u16) -> toml::Value {
    toml::Value::String(format!("127.0.0.1:{port}"))
}

/// Whether `tls` makes a server speak TLS (it has a certificate to serve with).
fn serves_tls(table: &toml::Table) -> bool {
    table.get("tls").and_then(|t| t.get("cert_file")).is_some()
}

macro_rules! table_type {
    ($name:ident, $service:literal) => {
        #[doc = concat!("The `", $service, "` config file's table.")]
        #[derive(Debug, Clone, Default, PartialEq)]
        pub struct $name(toml::Table);

        impl $name {
            /// The table, as the file will hold it.
            pub fn table(&self) -> &toml::Table {
                &self.0
            }

            fn set(mut self, key: &str, value: impl Into<toml::Value>) -> Self {
                self.0.insert(key.into(), value.into());
                self
            }

            /// The `[tls]` section: serve with `cert_file` + `key_file`, trust `ca_file`.
            pub fn tls(self, tls: &TlsFiles) -> Result<Self> {
                Ok(self.set("tls", value("tls", tls)?))
            }

            /// Whether it serves TLS (its URL is then `https://`).
            pub fn serves_tls(&self) -> bool {
                serves_tls(&self.0)
            }
        }
    };
}

table_type!(RegistryToml, "layer-registry");
table_type!(WorkerToml, "shard-worker");
table_type!(GatewayToml, "swarm-gateway");
table_type!(AggregatorToml, "diloco-aggregator");
table_type!(LedgerToml, "ledger");

impl LedgerToml {
    /// A ledger for `network_id` on `port` with its database.
    pub fn new(network_id: &str, port: u16, database_url: &str) -> Self {
        Self::default()
            .set("network_id", network_id)
            .set("listen", listen(port))
            .set("database_url", database_url)
    }

    /// The node ids whose receipts pay and whose evidence slashes.
    pub fn aggregators(self, node_ids: &[&str]) -> Self {
        self.set("aggregators", strings(node_ids))
    }

    /// The node ids that may escrow and settle inference.
    pub fn gateways(self, node_ids: &[&str]) -> Self {
        self.set("gateways", strings(node_ids))
    }

    /// Tokens one batch counts for in training rewards (the swarm's batch × sequence).
    pub fn tokens_per_batch(self, tokens: u64) -> Self {
        self.economics("tokens_per_batch", tokens as i64)
    }

    /// Tokens one sample counts for in the data reward (the swarm's sequence length).
    pub fn tokens_per_sample(self, tokens: u64) -> Self {
        self.economics("tokens_per_sample", tokens as i64)
    }

    /// The node ids of the registries whose uptime attestations pay, and the epoch length
    /// they attest (the registries' `uptime_epoch_ms`).
    pub fn registries(self, node_ids: &[&str], uptime_epoch_ms: u64) -> Self {
        self.set("registries", strings(node_ids))
            .economics("uptime_epoch_ms", uptime_epoch_ms as i64)
    }

    /// How long an unsettled escrow waits before it is refunded.
    pub fn escrow_ttl_ms(self, ms: u64) -> Self {
        self.economics("escrow_ttl_ms", ms as i64)
    }

    fn economics(mut self, key: &str, value: impl Into<toml::Value>) -> Self {
        let section = self
            .0
            .entry("economics")
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if let toml::Value::Table(t) = section {
            t.insert(key.into(), value.into());
        }
        self
    }
}

fn strings(items: &[&str]) -> toml::Value {
    toml::Value::Array(
        items
            .iter()
            .map(|s| toml::Value::String((*s).into()))
            .collect(),
    )
}

impl AggregatorToml {
    /// An aggregator for `network_id` on `port`, following the registry at `registry`, with
    /// its database, key and round checkpoints.
    pub fn new(
        network_id: &str,
        port: u16,
        registry: &str,
        database_url: &str,
        key_file: &Path,
        state_dir: &Path,
    ) -> Result<Self> {
        Ok(Self::default()
            .set("network_id", network_id)
            .set("listen", listen(port))
            .set("registry", registry)
            .set("database_url", database_url)
            .set("key_file", value("key_file", key_file)?)
            .set("state_dir", value("state_dir", state_dir)?))
    }

    /// Round 0 is this checkpoint (the one every worker loads).
    pub fn checkpoint(self, dir: &Path) -> Result<Self> {
        Ok(self.set("checkpoint", value("checkpoint", dir)?))
    }

    pub fn init_seed(self, seed: u64) -> Self {
        self.set("init_seed", seed as i64)
    }

    /// Score submissions and rounds on this dataset's held-out split, in windows of
    /// `seq_len` tokens.
    pub fn held_out(self, data_dir: &Path, seq_len: u64, windows: u64) -> Result<Self> {
        Ok(self
            .set("data_dir", value("data_dir", data_dir)?)
            .set("held_out_seq_len", seq_len as i64)
            .set("held_out_windows", windows as i64))
    }

    /// H, and how long a round waits for its pipelines.
    pub fn rounds(self, inner_steps: u64, deadline_ms: u64, quorum: u32) -> Self {
        self.set("inner_steps", inner_steps as i64)
            .set("round_deadline_ms", deadline_ms as i64)
            .set("quorum", i64::from(quorum))
    }

    /// The robust rule and the Byzantine contributors it should tolerate.
    pub fn rule(self, rule: &str, byzantine: u32) -> Self {
        self.set("rule", rule)
            .set("byzantine", i64::from(byzantine))
    }

    /// The outer step (SGD with Nesterov momentum).
    pub fn outer(self, lr: f64, momentum: f64) -> Self {
        let mut outer = toml::Table::new();
        outer.insert("lr".into(), lr.into());
        outer.insert("momentum".into(), momentum.into());
        outer.insert("nesterov".into(), true.into());
        self.set("outer", outer)
    }

    /// Own layers `[start, end)` only (to the last layer when `end` is `None`): one of
    /// several aggregators that split the model.
    pub fn layers(self, start: u32, end: Option<u32>) -> Self {
        let this = self.set("layers_start", i64::from(start));
        match end {
            Some(end) => this.set("layers_end", i64::from(end)),
            None => this,
        }
    }

    /// Published rounds whose checkpoints stay on the volume.
    pub fn keep_rounds(self, rounds: u64) -> Self {
        self.set("keep_rounds", rounds as i64)
    }

    /// Leave flagged submissions in the aggregate (they still get evidence).
    pub fn keep_flagged(self) -> Self {
        self.set("exclude_flagged", false)
    }
}

impl RegistryToml {
    /// A registry for `network_id`; where it listens and its database are set when it is
    /// started ([`crate::RegistryProcess::start`]).
    pub fn new(network_id: &str) -> Self {
        Self::default().set("network_id", network_id)
    }

    pub fn listen(self, port: u16) -> Self {
        self.set("listen", listen(port))
    }

    pub fn database_url(self, url: &str) -> Self {
        self.set("database_url", url)
    }

    /// Liveness: heartbeat interval < suspect after < dead after (milliseconds).
    pub fn liveness(self, heartbeat_ms: u64, suspect_after_ms: u64, dead_after_ms: u64) -> Self {
        self.set("heartbeat_interval_ms", heartbeat_ms as i64)
            .set("suspect_after_ms", suspect_after_ms as i64)
            .set("dead_after_ms", dead_after_ms as i64)
    }

    pub fn watch_poll_ms(self, ms: u64) -> Self {
        self.set("watch_poll_ms", ms as i64)
    }

    /// Sign uptime attestations with the key at `key_file`, per epoch of `epoch_ms`.
    pub fn attesting(self, key_file: &Path, epoch_ms: u64) -> Result<Self> {
        Ok(self
            .set("signing_key_file", value("signing_key_file", key_file)?)
            .set("uptime_epoch_ms", epoch_ms as i64))
    }

    /// The model assigned (fixed mode), or in auto mode the fields capacity does not decide.
    pub fn model(self, model: &ModelConfig) -> Result<Self> {
        Ok(self.set("model", value("model", model)?))
    }

    /// The architecture from live capacity instead of `model`'s shape.
    pub fn auto_architecture(
        self,
        genesis_nodes: u32,
        growth_settle_ms: u64,
        depth_curve_scale: f64,
    ) -> Self {
        let mut architecture = toml::Table::new();
        architecture.insert("mode".into(), "auto".into());
        architecture.insert("genesis_nodes".into(), i64::from(genesis_nodes).into());
        architecture.insert("growth_settle_ms".into(), (growth_settle_ms as i64).into());
        architecture.insert("depth_curve_scale".into(), depth_curve_scale.into());
        // A node's memory counts toward growth once it has been registered as long as growth
        // settles: the harness's runs are minutes, not the ten minutes a public swarm waits.
        architecture.insert(
            "growth_min_node_age_ms".into(),
            (growth_settle_ms as i64).into(),
        );
        self.set("architecture", architecture)
    }

    /// Serve Prometheus `/metrics` on this loopback port.
    pub fn metrics_port(self, port: u16) -> Self {
        self.set("metrics_listen", listen(port))
    }

    /// Register's check that a node answers `Info` at its endpoint, within `ms` (0: no check,
    /// for tests that register nodes with no worker behind them).
    pub fn endpoint_probe_timeout_ms(self, ms: u64) -> Self {
        self.set("endpoint_probe_timeout_ms", ms as i64)
    }

    /// Admit only `nodes` (node ids or compressed public keys, in hex).
    pub fn allow_list(self, nodes: &[&str]) -> Self {
        let list: Vec<toml::Value> = nodes.iter().map(|n| (*n).into()).collect();
        self.set("admission", "allow_list")
            .set("allowed_nodes", toml::Value::Array(list))
    }

    /// The most memory and tokens/s a node may claim (larger claims are clamped).
    pub fn claim_caps(self, max_usable_memory_bytes: u64, max_tokens_per_second: f64) -> Self {
        self.set(
            "max_usable_memory_bytes",
            i64::try_from(max_usable_memory_bytes).unwrap_or(i64::MAX),
        )
        .set("max_tokens_per_second", max_tokens_per_second)
    }

    /// Node ids whose `ReportObservations` are accepted.
    pub fn observers(self, node_ids: &[&str]) -> Self {
        let list: Vec<toml::Value> = node_ids.iter().map(|n| (*n).into()).collect();
        self.set("observers", toml::Value::Array(list))
    }

    /// Node ids whose `Drain` of any node is accepted (Kubernetes operators).
    pub fn operators(self, node_ids: &[&str]) -> Self {
        let list: Vec<toml::Value> = node_ids.iter().map(|n| (*n).into()).collect();
        self.set("operators", toml::Value::Array(list))
    }
}

impl WorkerToml {
    /// A worker on `port` (on the CPU: local workers share one machine), registering with
    /// `registry` under the key in `key_file` (created when missing).
    pub fn new(port: u16, registry: &str, network_id: &str, key_file: &Path) -> Result<Self> {
        Ok(Self::default()
            .set("listen", listen(port))
            .set("registry", registry)
            .set("network_id", network_id)
            .set("key_file", value("key_file", key_file)?)
            .set("device", "cpu"))
    }

    /// The URL the registry publishes for it.
    pub fn advertise(self, url: &str) -> Self {
        self.set("advertise", url)
    }

    /// Load the assigned span from this checkpoint (without one: initialise it from the seed).
    pub fn checkpoint(self, dir: &Path) -> Result<Self> {
        Ok(self.set("checkpoint", value("checkpoint", dir)?))
    }

    pub fn init_seed(self, seed: u64) -> Self {
        self.set("init_seed", seed as i64)
    }

    /// Serve the global weights these aggregators publish, and send them Δ.
    pub fn aggregators(self, urls: &[&str]) -> Self {
        let list: Vec<toml::Value> = urls.iter().map(|u| (*u).into()).collect();
        self.set("aggregators", toml::Value::Array(list))
    }

    /// Claim training rewards from the ledger at `url`, paying `payout`.
    pub fn ledger(self, url: &str, payout: &str) -> Self {
        self.set("ledger", url).set("payout", payout)
    }

    /// The `[training]` section: drive the pipelines this worker starts (see the worker's
    /// `TrainingConfig` for the keys).
    pub fn training(self, training: toml::Table) -> Self {
        self.set("training", toml::Value::Table(training))
    }

    /// Memory it offers for layers (which decides the span the registry gives it).
    pub fn usable_memory_bytes(self, bytes: u64) -> Self {
        self.set(
            "usable_memory_bytes",
            i64::try_from(bytes).unwrap_or(i64::MAX),
        )
    }

    pub fn heartbeat_ms(self, ms: u64) -> Self {
        self.set("heartbeat_interval_ms", ms as i64)
    }

    /// How long SIGTERM waits for its layers to move before it deregisters (0: at once).
    pub fn drain_timeout_ms(self, ms: u64) -> Self {
        self.set("drain_timeout_ms", ms as i64)
    }

    /// The role it asks for: auto, driver, worker or validator.
    pub fn role(self, role: &str) -> Self {
        self.set("role", role)
    }

    /// Message and stream limits: the largest unary message, the chunk size of streams, the
    /// largest tensor, the most chunks of one stream.
    pub fn message_limits(
        self,
        max_message_bytes: usize,
        stream_chunk_bytes: usize,
        max_tensor_bytes: usize,
        max_stream_chunks: usize,
    ) -> Self {
        self.set("max_message_bytes", max_message_bytes as i64)
            .set("stream_chunk_bytes", stream_chunk_bytes as i64)
            .set("max_tensor_bytes", max_tensor_bytes as i64)
            .set("max_stream_chunks", max_stream_chunks as i64)
    }
}

impl GatewayToml {
    /// A gateway serving `model` on HTTP `port`, with the served checkpoint's `tokenizer`,
    /// routing through the registry at `registry`.
    pub fn new(port: u16, model: &str, tokenizer: &Path, registry: &str) -> Result<Self> {
        Ok(Self::default()
            .set("listen", listen(port))
            .set("model", model)
            .set("tokenizer", value("tokenizer", tokenizer)?)
            .set("registry", registry))
    }

    /// One API key and the account it acts for.
    pub fn api_key(self, key: &str, account: &str) -> Self {
        let mut entry = toml::Table::new();
        entry.insert("key".into(), key.into());
        entry.insert("account".into(), account.into());
        self.set("api_keys", toml::Value::Array(vec![entry.into()]))
    }

    pub fn per_hop_deadline_ms(self, ms: u64) -> Self {
        self.set("per_hop_deadline_ms", ms as i64)
    }

    /// First back-off of a failing node.
    pub fn backoff_ms(self, ms: u64) -> Self {
        self.set("backoff_ms", ms as i64)
    }

    /// The served checkpoint's training report (the dashboard draws its loss curves).
    pub fn training_report(self, path: &Path) -> Result<Self> {
        Ok(self.set("training_report", value("training_report", path)?))
    }

    /// The aggregator whose rounds `/api/v1/status` reports (`training.rounds`).
    pub fn aggregator(self, url: &str) -> Self {
        self.set("aggregator", url)
    }

    /// Reports node measurements to the registry, signed with the key in `key_file`.
    pub fn observer(self, key_file: &Path, network_id: &str) -> Result<Self> {
        let mut table = toml::Table::new();
        table.insert("key_file".into(), value("observer.key_file", key_file)?);
        table.insert("network_id".into(), network_id.into());
        // Often enough that a short local run shows measured throughput.
        table.insert("interval_ms".into(), 2_000.into());
        Ok(self.set("observer", toml::Value::Table(table)))
    }

    /// Charges inference through the ledger at `ledger`, signing with the key in `key_file`.
    pub fn billing(self, ledger: &str, key_file: &Path, network_id: &str) -> Result<Self> {
        let mut table = toml::Table::new();
        table.insert("ledger".into(), ledger.into());
        table.insert("key_file".into(), value("billing.key_file", key_file)?);
        table.insert("network_id".into(), network_id.into());
        Ok(self.set("billing", toml::Value::Table(table)))
    }

    /// The node id → pid file the local swarm keeps.
    pub fn node_pids_file(self, path: &Path) -> Result<Self> {
        Ok(self.set("node_pids_file", value("node_pids_file", path)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_hold_what_was_set_and_tls_decides_the_scheme() {
        let plain = RegistryToml::new("n").listen(7).liveness(1, 2, 3);
        assert_eq!(plain.table()["listen"].as_str(), Some("127.0.0.1:7"));
        assert_eq!(plain.table()["dead_after_ms"].as_integer(), Some(3));
        assert!(!plain.serves_tls());
        let plaintext = plain.clone().tls(&TlsFiles::insecure_plaintext()).unwrap();
        assert!(!plaintext.serves_tls());
        assert_eq!(
            plaintext.table()["tls"]["insecure_plaintext"].as_bool(),
            Some(true)
        );
        let mutual = TlsFiles {
            cert_file: Some("tls.crt".into()),
            key_file: Some("tls.key".into()),
            ca_file: Some("ca.crt".into()),
            insecure_plaintext: false,
        };
        assert!(plain.tls(&mutual).unwrap().serves_tls());
        let gateway = GatewayToml::new(1, "m", Path::new("t.json"), "http://r")
            .unwrap()
            .api_key("k", "a");
        assert_eq!(
            gateway.table()["api_keys"][0]["account"].as_str(),
            Some("a")
        );
    }
}
