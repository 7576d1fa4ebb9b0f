//! Ledger configuration: defaults < `--config` TOML file < `NEUROSHARD_LEDGER_*` environment.
//! See `deploy/ledger.example.toml`.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use neuroshard_common::{Error, Result};
use neuroshard_postgres::DatabaseTls;
use serde::{Deserialize, Serialize};

use crate::account::check_address;
use crate::economics::Economics;
use crate::verify::Verifier;

/// Everything the ledger needs at start. `Debug` redacts the database URL.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LedgerConfig {
    pub listen: SocketAddr,
    /// libpq connection string; may carry a password, so it is never logged.
    pub database_url: String,
    pub database_tls: DatabaseTls,
    /// Operations signed for another network are refused.
    pub network_id: String,
    /// Node ids of the aggregators whose receipts pay and whose evidence slashes.
    pub aggregators: Vec<String>,
    /// Node ids of the gateways that may escrow and settle inference.
    pub gateways: Vec<String>,
    /// Node ids of the registries whose uptime attestations pay.
    pub registries: Vec<String>,
    pub tls: neuroshard_runtime::tls::TlsFiles,
    pub metrics_listen: Option<SocketAddr>,
    /// Answer gRPC health checks, and nothing else, in plaintext here (unset = none): the
    /// port Kubernetes' gRPC probes use, since they cannot do mutual TLS.
    pub health_listen: Option<SocketAddr>,
    /// Accepted difference between a signer's clock and ours.
    pub clock_window_ms: i64,
    /// Receipts and evidence older than this are refused.
    pub receipt_max_age_ms: i64,
    /// Most operations in one `SubmitBatch`, and the largest gRPC message.
    pub max_batch: usize,
    pub max_message_bytes: usize,
    pub economics: Economics,
}

impl std::fmt::Debug for LedgerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LedgerConfig")
            .field("listen", &self.listen)
            .field("database_url", &"<redacted>")
            .field("network_id", &self.network_id)
            .field("aggregators", &self.aggregators)
            .field("gateways", &self.gateways)
            .field("registries", &self.registries)
            .finish_non_exhaustive()
    }
}

impl Default for LedgerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7700)),
            database_url: "host=127.0.0.1 port=5432 user=postgres dbname=postgres".into(),
            database_tls: DatabaseTls::default(),
            network_id: "neuroshard-local".into(),
            aggregators: Vec::new(),
            gateways: Vec::new(),
            registries: Vec::new(),
            tls: neuroshard_runtime::tls::TlsFiles::default(),
            metrics_listen: None,
            health_listen: None,
            clock_window_ms: 60_000,
            receipt_max_age_ms: 7 * 86_400_000,
            max_batch: 1_000,
            max_message_bytes: 16 << 20,
            economics: Economics::default(),
        }
    }
}

impl LedgerConfig {
    /// Checks relations between fields that types cannot express.
    pub fn validate(&self) -> Result<()> {
        self.database_tls.validate()?;
        self.tls.validate()?;
        self.economics.validate()?;
        for id in &self.aggregators {
            check_address("aggregators", id)?;
        }
        for id in &self.gateways {
            check_address("gateways", id)?;
        }
        for id in &self.registries {
            check_address("registries", id)?;
        }
        if self.clock_window_ms <= 0 || self.receipt_max_age_ms <= 0 {
            return Err(Error::invalid_argument(
                "clock_window_ms and receipt_max_age_ms must be positive",
            ));
        }
        if self.max_batch == 0 {
            return Err(Error::invalid_argument("max_batch must be at least 1"));
        }
        Ok(())
    }

    pub fn verifier(&self) -> Verifier {
        Verifier {
            network_id: self.network_id.clone(),
            aggregators: self.aggregators.iter().cloned().collect::<BTreeSet<_>>(),
            gateways: self.gateways.iter().cloned().collect(),
            registries: self.registries.iter().cloned().collect(),
            uptime_epoch_ms: self.economics.uptime_epoch_ms,
            window_ms: self.clock_window_ms,
            receipt_max_age_ms: self.receipt_max_age_ms,
        }
    }
}

impl neuroshard_runtime::ServiceConfig for LedgerConfig {
    const ENV_PREFIX: &'static str = "NEUROSHARD_LEDGER";

    fn listen(&self) -> SocketAddr {
        self.listen
    }

    fn validate(&self) -> Result<()> {
        LedgerConfig::validate(self)
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
            "/../../deploy/ledger.example.toml"
        );
        let config = LedgerConfig::load(
            Some(std::path::Path::new(path)),
            [(
                "NEUROSHARD_LEDGER_ECONOMICS__FEE_BURN_BPS".to_string(),
                "250".to_string(),
            )],
        )
        .unwrap();
        assert_eq!(config.economics.fee_burn_bps, 250);
        assert_eq!(config.economics.driver_share_bps, 1_500);
    }

    #[test]
    fn bad_settings_are_named() {
        let bad = |f: fn(&mut LedgerConfig)| {
            let mut c = LedgerConfig {
                tls: neuroshard_runtime::tls::TlsFiles::insecure_plaintext(),
                ..LedgerConfig::default()
            };
            c.validate().unwrap();
            f(&mut c);
            c.validate().unwrap_err().message
        };
        assert!(bad(|c| c.aggregators = vec!["nope".into()]).contains("aggregators"));
        assert!(bad(|c| c.gateways = vec!["AB".repeat(20)]).contains("gateways"));
        assert!(bad(|c| c.economics.validator_share_bps = 0).contains("share"));
        assert!(bad(|c| c.max_batch = 0).contains("max_batch"));
    }

    #[test]
    fn debug_hides_the_database_url() {
        let config = LedgerConfig {
            database_url: "host=db password=hunter2".into(),
            ..LedgerConfig::default()
        };
        assert!(!format!("{config:?}").contains("hunter2"));
    }
}
