//! Operator configuration: defaults < `--config` TOML file < `NEUROSHARD_OPERATOR_*`
//! environment, validated at start. See `deploy/operator.example.toml`.

use std::net::SocketAddr;

use neuroshard_common::ModelConfig;
use neuroshard_common::architecture::{TRAINING_BYTES_PER_PARAM, layer_parameters};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OperatorConfig {
    /// Prometheus `/metrics` and the health endpoint (`/healthz`).
    pub listen: SocketAddr,
    /// The shard-worker image nodes run unless their spec names one.
    pub worker_image: String,
    /// Endpoints nodes use unless their spec names them; the operator asks `registry` how
    /// its nodes are doing and drains them there.
    pub registry: String,
    pub aggregators: Vec<String>,
    pub ledger: Option<String>,
    pub network_id: String,
    /// The gRPC port workers serve on (their Service's port too).
    pub worker_port: u16,
    /// The plaintext port workers answer gRPC health checks on, for the kubelet's probes
    /// (which cannot present a client certificate to the mutual-TLS `worker_port`).
    pub worker_health_port: u16,
    /// A Secret with `tls.crt`, `tls.key` and `ca.crt` mounted into every worker for mutual
    /// TLS on its gRPC links (the chart creates it); unset: plaintext, for tests only.
    pub worker_tls_secret: Option<String>,
    /// The checkpoint volume's size unless the spec names one.
    pub storage_size: String,
    /// What the worker needs beside the layers it holds (runtime, KV caches, activations):
    /// added to the spec's memory for the pod's memory limit.
    pub worker_overhead_bytes: u64,
    /// The model the registry assigns, and what one parameter costs a node: a memory budget
    /// below one layer is refused.
    pub model: ModelConfig,
    pub bytes_per_param: u64,
    /// How long deleting a node waits for its layers to have two other loaded holders
    /// before it lets the pod go anyway (and says so in status and an Event).
    pub drain_timeout_s: u64,
    /// How often a node's status is refreshed from the registry when nothing else happens.
    pub resync_s: u64,
    /// The operator's secp256k1 key (created 0600 when missing): it signs drains, and the
    /// registry's `operators` list must name its id (logged at start).
    pub key_file: std::path::PathBuf,
    /// TLS of the link to the registry (mutual TLS by default, like every gRPC link).
    pub tls: neuroshard_runtime::tls::TlsFiles,
    /// The OTLP/gRPC collector workers send traces to (their `OTEL_EXPORTER_OTLP_ENDPOINT`),
    /// so one request is one trace across gateway and workers; unset: workers export none.
    pub worker_otlp_endpoint: Option<String>,
    /// Several replicas elect one leader through a Lease; only the leader reconciles.
    pub leader_election: bool,
    pub lease_name: String,
    /// Where the Lease lives (default: the pod's namespace, from `POD_NAMESPACE`).
    pub lease_namespace: Option<String>,
    /// A leader that has not renewed for this long is replaced.
    pub lease_duration_s: u64,
}

impl Default for OperatorConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            worker_image: "localhost/neuroshard/shard-worker:0.1.0".into(),
            registry: "https://layer-registry:7400".into(),
            aggregators: Vec::new(),
            ledger: None,
            network_id: "neuroshard-local".into(),
            worker_port: 7500,
            worker_health_port: 7501,
            worker_otlp_endpoint: None,
            worker_tls_secret: Some("neuroshard-tls".into()),
            storage_size: "10Gi".into(),
            worker_overhead_bytes: 1 << 30,
            model: ModelConfig::small(4096),
            bytes_per_param: TRAINING_BYTES_PER_PARAM,
            drain_timeout_s: 600,
            resync_s: 30,
            key_file: "/var/run/neuroshard/operator/operator.key".into(),
            // No files by default, as in every service: the config names them (the chart
            // does), or sets insecure_plaintext, which defaults here could not be unset for.
            tls: neuroshard_runtime::tls::TlsFiles::default(),
            leader_election: true,
            lease_name: "neuroshard-operator".into(),
            lease_namespace: None,
            lease_duration_s: 15,
        }
    }
}

impl OperatorConfig {
    /// Bytes one decoder layer of the model costs a node.
    pub fn layer_bytes(&self) -> u64 {
        u64::try_from(layer_parameters(&self.model))
            .unwrap_or(u64::MAX)
            .saturating_mul(self.bytes_per_param)
    }

    /// Checks relations between fields that types cannot express.
    pub fn validate(&self) -> Result<(), neuroshard_common::Error> {
        self.validate_objects()?;
        self.tls.validate()?;
        self.tls.check_scheme("registry", &self.registry)
    }

    /// The checks of what shapes the objects a node becomes, without those of the operator's
    /// own link to the registry: all that `render`, which dials nothing, needs.
    pub fn validate_objects(&self) -> Result<(), neuroshard_common::Error> {
        use neuroshard_common::Error;
        self.model.validate()?;
        if self.worker_image.trim().is_empty() {
            return Err(Error::invalid_argument("worker_image must not be empty"));
        }
        for (field, value, least) in [
            ("bytes_per_param", self.bytes_per_param, 1),
            ("resync_s", self.resync_s, 1),
            ("worker_port", u64::from(self.worker_port), 1),
            ("worker_health_port", u64::from(self.worker_health_port), 1),
            // Renewed every third of it: shorter leases would renew faster than a round trip.
            ("lease_duration_s", self.lease_duration_s, 3),
        ] {
            if value < least {
                return Err(Error::invalid_argument(format!(
                    "{field} is {value}; it must be at least {least}"
                )));
            }
        }
        if self.worker_health_port == self.worker_port {
            return Err(Error::invalid_argument(format!(
                "worker_health_port is {0}, the same as worker_port: probes need a port of their own",
                self.worker_port
            )));
        }
        crate::quantity::bytes(&self.storage_size)
            .map_err(|e| Error::invalid_argument(format!("storage_size: {e}")))?;
        Ok(())
    }
}

impl neuroshard_runtime::ServiceConfig for OperatorConfig {
    const ENV_PREFIX: &'static str = "NEUROSHARD_OPERATOR";

    fn listen(&self) -> SocketAddr {
        self.listen
    }

    fn validate(&self) -> Result<(), neuroshard_common::Error> {
        OperatorConfig::validate(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_file_is_the_defaults_and_bad_settings_are_named() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../deploy/operator.example.toml");
        let config: OperatorConfig =
            neuroshard_runtime::config::load(Some(&path), "NEUROSHARD_OPERATOR", Vec::new())
                .unwrap();
        config.validate().unwrap();
        assert_eq!(
            config,
            OperatorConfig {
                tls: neuroshard_runtime::tls::TlsFiles {
                    cert_file: Some("/etc/neuroshard/tls/tls.crt".into()),
                    key_file: Some("/etc/neuroshard/tls/tls.key".into()),
                    ca_file: Some("/etc/neuroshard/tls/ca.crt".into()),
                    insecure_plaintext: false,
                },
                ..OperatorConfig::default()
            }
        );
        // Without TLS files the operator says what it needs; plaintext is one setting away.
        let e = OperatorConfig::default().validate().unwrap_err().message;
        assert!(e.contains("tls.cert_file"), "{e}");
        OperatorConfig {
            tls: neuroshard_runtime::tls::TlsFiles::insecure_plaintext(),
            registry: "http://layer-registry:7400".into(),
            ..OperatorConfig::default()
        }
        .validate()
        .unwrap();
        let env = [(
            "NEUROSHARD_OPERATOR_WORKER_IMAGE".to_string(),
            " ".to_string(),
        )];
        let config: OperatorConfig =
            neuroshard_runtime::config::load(Some(&path), "NEUROSHARD_OPERATOR", env).unwrap();
        assert!(
            config
                .validate()
                .unwrap_err()
                .message
                .contains("worker_image")
        );
        let short_lease = OperatorConfig {
            lease_duration_s: 1,
            ..OperatorConfig::default()
        };
        let e = short_lease.validate().unwrap_err().message;
        assert!(e.starts_with("lease_duration_s is 1"), "{e}");
        // One layer of the small model at 20 bytes a parameter.
        assert!(OperatorConfig::default().layer_bytes() > 1 << 20);
    }
}
