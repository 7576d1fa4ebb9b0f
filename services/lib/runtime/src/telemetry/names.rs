//! Every metric name NeuroShard exports, one table per service, with its kind and help text:
//! code records through these constants (never a string literal), and each service describes
//! its table once at start ([`describe`]) so `/metrics` carries `# HELP` lines.

/// What a metric is, for its description.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    /// Durations in seconds.
    Histogram,
    /// A distribution of counts (no unit): batch sizes, say.
    CountHistogram,
}

/// One row of a table: name, kind, help.
pub type Metric = (&'static str, Kind, &'static str);

/// Every gRPC server (recorded by `metrics::GrpcMetricsLayer`).
pub mod grpc {
    use super::{Kind, Metric};

    /// Calls handled: labels `service`, `method`, `code`.
    pub const SERVER_HANDLED: &str = "grpc_server_handled_total";
    /// Seconds per call: labels `service`, `method`.
    pub const SERVER_HANDLING_SECONDS: &str = "grpc_server_handling_seconds";

    pub const TABLE: &[Metric] = &[
        (
            SERVER_HANDLED,
            Kind::Counter,
            "gRPC calls handled, by method and status code",
        ),
        (
            SERVER_HANDLING_SECONDS,
            Kind::Histogram,
            "Time to handle a gRPC call",
        ),
    ];
}

/// The layer registry.
pub mod registry {
    use super::{Kind, Metric};

    pub const ASSIGNMENT_VERSION: &str = "registry_assignment_version";
    /// Nodes by liveness: label `state`.
    pub const NODES: &str = "registry_nodes";
    pub const REPLICA_DEFICIT: &str = "registry_replica_deficit";
    pub const PIPELINES: &str = "registry_pipelines";
    pub const MODEL_LAYERS: &str = "registry_model_layers";

    pub const TABLE: &[Metric] = &[
        (
            ASSIGNMENT_VERSION,
            Kind::Gauge,
            "Version of the published assignment",
        ),
        (NODES, Kind::Gauge, "Registered nodes by liveness state"),
        (
            REPLICA_DEFICIT,
            Kind::Gauge,
            "Layer replicas missing below the target",
        ),
        (PIPELINES, Kind::Gauge, "Pipelines covering every layer"),
        (
            MODEL_LAYERS,
            Kind::Gauge,
            "Layers of the published architecture",
        ),
    ];
}

/// A shard worker.
pub mod worker {
    use super::{Kind, Metric};

    pub const POSITIONS: &str = "worker_positions_total";
    pub const SPAN_COMPUTE_SECONDS: &str = "worker_span_compute_seconds";
    pub const DECODE_BATCH_ROWS: &str = "worker_decode_batch_rows";

    pub const TABLE: &[Metric] = &[
        (
            POSITIONS,
            Kind::Counter,
            "Token positions computed through this node's span",
        ),
        (
            SPAN_COMPUTE_SECONDS,
            Kind::Histogram,
            "Time of one pass through the span: a decode batch or a prefill chunk",
        ),
        (
            DECODE_BATCH_ROWS,
            Kind::CountHistogram,
            "Sessions whose decode steps ran together in one pass",
        ),
    ];
}

/// The diloco-aggregator.
pub mod aggregator {
    use super::{Kind, Metric};

    /// The round open now.
    pub const ROUND: &str = "aggregator_round";
    /// Submissions: label `outcome` (`accepted` into the round, or the evidence kind).
    pub const SUBMISSIONS: &str = "aggregator_submissions_total";
    pub const DELTA_BYTES: &str = "aggregator_delta_bytes_total";
    /// Held-out loss of the latest published weights.
    pub const HELD_OUT_LOSS: &str = "aggregator_held_out_loss";
    pub const CLOSE_SECONDS: &str = "aggregator_round_close_seconds";

    pub const TABLE: &[Metric] = &[
        (ROUND, Kind::Gauge, "The round open now"),
        (
            SUBMISSIONS,
            Kind::Counter,
            "Δ submissions, accepted or by the kind of evidence refusing them",
        ),
        (
            DELTA_BYTES,
            Kind::Counter,
            "Bytes of Δ received in accepted submissions",
        ),
        (
            HELD_OUT_LOSS,
            Kind::Gauge,
            "Held-out loss of the latest published global weights",
        ),
        (
            CLOSE_SECONDS,
            Kind::Histogram,
            "Time to close a round: scores, the robust rule, the outer step, the checkpoint",
        ),
    ];
}

/// The ledger.
pub mod ledger {
    use super::{Kind, Metric};

    /// Operations answered: labels `kind` (transfer, training_proof, …) and `outcome`
    /// (`applied`, `replayed`, or the refusal's gRPC code name).
    pub const OPERATIONS: &str = "ledger_operations_total";
    pub const APPLY_SECONDS: &str = "ledger_apply_seconds";
    /// NEURO minted by verified work and burned by fees and slashes, in nano-NEURO.
    pub const MINTED: &str = "ledger_minted_nano_total";
    pub const BURNED: &str = "ledger_burned_nano_total";

    pub const TABLE: &[Metric] = &[
        (
            OPERATIONS,
            Kind::Counter,
            "Ledger operations by kind and outcome (applied, replayed, refused code)",
        ),
        (
            APPLY_SECONDS,
            Kind::Histogram,
            "Time to verify and journal one operation or batch",
        ),
        (MINTED, Kind::Counter, "Nano-NEURO minted by verified work"),
        (
            BURNED,
            Kind::Counter,
            "Nano-NEURO burned by fees and slashes",
        ),
    ];
}

/// The swarm gateway.
pub mod gateway {
    use super::{Kind, Metric};

    /// Responses by route and status: labels `endpoint`, `status`.
    pub const HTTP_REQUESTS: &str = "gateway_http_requests_total";
    /// Tokens sampled for API requests.
    pub const TOKENS_GENERATED: &str = "gateway_tokens_generated_total";
    /// Prompt tokens of accepted generation requests.
    pub const PROMPT_TOKENS: &str = "gateway_prompt_tokens_total";
    /// From a generation request's arrival to its first token.
    pub const TIME_TO_FIRST_TOKEN: &str = "gateway_time_to_first_token_seconds";
    /// From a generation request's arrival to its last byte (or cancellation): label
    /// `endpoint`.
    pub const REQUEST_DURATION: &str = "gateway_request_duration_seconds";
    /// One hop through one node: label `phase` (`prefill`, `decode`).
    pub const HOP_SECONDS: &str = "gateway_hop_seconds";
    pub const REPLAYS: &str = "gateway_replays_total";
    pub const FAILOVERS: &str = "gateway_failovers_total";
    pub const HOP_DEADLINE_EXTENSIONS: &str = "gateway_hop_deadline_extensions_total";

    pub const TABLE: &[Metric] = &[
        (
            HTTP_REQUESTS,
            Kind::Counter,
            "HTTP responses by route and status",
        ),
        (
            TOKENS_GENERATED,
            Kind::Counter,
            "Tokens generated for API requests",
        ),
        (
            PROMPT_TOKENS,
            Kind::Counter,
            "Prompt tokens of generation requests",
        ),
        (
            TIME_TO_FIRST_TOKEN,
            Kind::Histogram,
            "Time from a request's arrival to its first generated token",
        ),
        (
            REQUEST_DURATION,
            Kind::Histogram,
            "Time from a generation request's arrival to its end",
        ),
        (
            HOP_SECONDS,
            Kind::Histogram,
            "Time of one hop through one node, by phase",
        ),
        (
            REPLAYS,
            Kind::Counter,
            "KV-cache replays onto a new holder after a failover",
        ),
        (
            FAILOVERS,
            Kind::Counter,
            "Hops moved to another holder of their span",
        ),
        (
            HOP_DEADLINE_EXTENSIONS,
            Kind::Counter,
            "Passed hop deadlines extended because the node answered its liveness probe",
        ),
    ];
}

/// Describes every metric of `table` to the process's recorder (help text, unit).
pub fn describe(table: &[Metric]) {
    for &(name, kind, help) in table {
        match kind {
            Kind::Counter => metrics::describe_counter!(name, help),
            Kind::Gauge => metrics::describe_gauge!(name, help),
            Kind::Histogram => metrics::describe_histogram!(name, metrics::Unit::Seconds, help),
            Kind::CountHistogram => metrics::describe_histogram!(name, metrics::Unit::Count, help),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_say_what_they_are() {
        let tables = [
            grpc::TABLE,
            registry::TABLE,
            worker::TABLE,
            aggregator::TABLE,
            ledger::TABLE,
            gateway::TABLE,
        ];
        let mut seen = std::collections::BTreeSet::new();
        for &(name, kind, help) in tables.iter().copied().flatten() {
            assert!(seen.insert(name), "{name} is listed twice");
            assert!(!help.is_empty(), "{name} has no help");
            match kind {
                Kind::Counter => assert!(name.ends_with("_total"), "{name}"),
                Kind::Histogram => assert!(name.ends_with("_seconds"), "{name}"),
                Kind::CountHistogram => assert!(
                    !name.ends_with("_seconds") && !name.ends_with("_total"),
                    "{name}"
                ),
                Kind::Gauge => assert!(!name.ends_with("_total"), "{name}"),
            }
        }
    }
}

/// The Kubernetes operator.
pub mod operator {
    use super::{Kind, Metric};

    pub const RECONCILES: &str = "operator_reconciles_total";
    /// Failed reconciles: label `kind` (kube, finalizer, key, not_namespaced).
    pub const ERRORS: &str = "operator_reconcile_errors_total";
    pub const RECONCILE_SECONDS: &str = "operator_reconcile_seconds";

    pub const TABLE: &[Metric] = &[
        (RECONCILES, Kind::Counter, "NeuroShardNode reconciles run"),
        (
            ERRORS,
            Kind::Counter,
            "Reconciles that failed, by kind of error",
        ),
        (
            RECONCILE_SECONDS,
            Kind::Histogram,
            "Time one reconcile of a NeuroShardNode took",
        ),
    ];
}
