//! The `/api/v1/status` document: what the swarm looks like now, for the dashboard and for
//! people with `curl`. Field names are part of the public contract.
//!
//! Two views of one document: the **detail** view, for a caller with an API key, and the
//! public **summary** ([`SwarmStatus::public_summary`]) that anyone reaching the port gets. The
//! summary keeps the swarm's shape (layers, holders, states, throughput, request progress) and
//! drops what helps an attacker more than an onlooker: node endpoints, process ids and error
//! text (which can name hosts and internal causes).

use serde::Serialize;

/// The whole document.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SwarmStatus {
    /// Milliseconds since the Unix epoch when this document was made.
    pub now_ms: u64,
    /// `detail` (the caller presented an API key) or `summary` (no key: endpoints, pids and
    /// error text are null).
    pub view: &'static str,
    pub architecture: Option<ArchitectureStatus>,
    pub nodes: Vec<NodeStatus>,
    /// One entry per layer index, in order.
    pub layers: Vec<LayerStatus>,
    /// The replica target and how far the assignment is from it.
    pub replicas: ReplicaStatus,
    /// In-flight requests first, then the most recent finished ones (newest first).
    pub requests: Vec<RequestStatus>,
    pub throughput: ThroughputStatus,
    /// Present while a training run reports rounds.
    pub training: Option<TrainingStatus>,
    /// Present when the gateway charges for inference through a ledger.
    pub billing: Option<BillingStatus>,
}

/// What inference has cost through this gateway since it started (the detail view lists
/// the recent charges; the summary only the totals).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct BillingStatus {
    /// The ledger's URL and this gateway's node id there (the ledger's `gateways` lists it).
    pub ledger: String,
    pub gateway_id: String,
    /// The price locked by the latest escrow, nano-NEURO per token.
    pub price_per_token: i64,
    pub requests_settled: u64,
    pub tokens_charged: u64,
    /// Nano-NEURO charged in settled requests (burn and route shares included).
    pub charged: i64,
    /// Requests refused for a short balance (429 `insufficient_quota`).
    pub refused_unfunded: u64,
    /// Settlements the ledger has not acknowledged yet (retried until it does).
    pub settling: u64,
    /// The most recent charges, newest first.
    pub recent: Vec<ChargeStatus>,
    /// NEURO in nano units as the ledger reports it now (null when it did not answer).
    pub supply: Option<SupplyStatus>,
    /// The wallets this gateway's API keys charge (the detail view only).
    pub wallets: Vec<WalletStatus>,
}

/// The ledger's totals: all NEURO minted by verified work, burned by fees and slashes, and
/// their difference (what holders hold).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SupplyStatus {
    pub minted: i64,
    pub burned: i64,
    pub supply: i64,
}

/// One wallet's balance and stake, nano-NEURO.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct WalletStatus {
    pub address: String,
    pub balance: i64,
    pub staked: i64,
}

/// One settled request.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ChargeStatus {
    pub request_id: String,
    /// The wallet charged (null in the summary view).
    pub payer: Option<String>,
    pub price_per_token: i64,
    /// Prompt tokens (each choice's) plus the completion tokens delivered.
    pub tokens: u64,
    pub charged: i64,
    pub escrowed: i64,
    pub driver: String,
    pub processors: Vec<String>,
    pub validator: String,
    pub transaction: u64,
}

/// The view names of [`SwarmStatus::view`].
pub const DETAIL: &str = "detail";
pub const SUMMARY: &str = "summary";

impl SwarmStatus {
    /// What a caller without a key may see: the document without endpoints, process ids and
    /// error text.
    pub fn public_summary(mut self) -> Self {
        self.view = SUMMARY;
        for node in &mut self.nodes {
            node.endpoint = None;
            node.pid = None;
        }
        for request in &mut self.requests {
            request.error = None;
        }
        if let Some(training) = &mut self.training {
            for pipeline in &mut training.pipelines {
                pipeline.error = None;
            }
        }
        if let Some(billing) = &mut self.billing {
            for charge in &mut billing.recent {
                charge.payer = None;
            }
            billing.wallets.clear();
        }
        self
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ArchitectureStatus {
    pub num_layers: u32,
    pub hidden_size: u32,
    pub num_heads: u32,
    pub num_kv_heads: u32,
    pub vocab_size: u32,
    pub parameters: u64,
    /// Bumped by the registry each time the architecture or assignment changes.
    pub version: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct NodeStatus {
    pub id: String,
    /// Where the node serves; null in the summary view.
    pub endpoint: Option<String>,
    /// `[start, end)` layer indices held.
    pub span: [u32; 2],
    /// `driver`, `worker`, `validator` or `full` (holds every layer).
    pub role: String,
    /// `live`, `suspect`, `dead` or `draining`.
    pub state: String,
    /// The process id, in the local swarm; null in a cluster and in the summary view.
    pub pid: Option<u32>,
    pub tokens_per_s: f64,
    pub memory_bytes: u64,
    /// Sessions (requests) this gateway currently has open on the node.
    pub queue_depth: u32,
    /// Recent median hop latency this gateway measured, when it has one.
    pub latency_ms: Option<f64>,
    /// Until when this gateway avoids the node after a failure (ms since epoch), if it does.
    pub backed_off_until_ms: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LayerStatus {
    pub index: u32,
    /// Node ids holding this layer.
    pub holders: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ReplicaStatus {
    pub min_replicas: u32,
    pub degraded: bool,
    /// Missing layer copies needed to reach `min_replicas` everywhere.
    pub deficit: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RequestStatus {
    pub id: String,
    /// `queued`, `prefill`, `streaming`, `done`, `failed` or `cancelled`.
    pub state: String,
    /// The node id serving each hop, in order; updated on failover.
    pub route: Vec<String>,
    /// Every node that held a hop of it, in the order they joined (failovers included): who
    /// its settlement pays. Not in the document (the route shows the current hops).
    #[serde(skip)]
    pub served: Vec<String>,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub started_ms: u64,
    /// Time to first token, once there is one.
    pub ttft_ms: Option<f64>,
    pub failovers: u32,
    /// Why it failed, for `failed`; null in the summary view.
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ThroughputStatus {
    /// Generated tokens per second over the last few seconds.
    pub tokens_per_s: f64,
    /// `[ms since epoch, tokens/s]` samples, oldest first, for the throughput plot.
    pub history: Vec<[f64; 2]>,
    pub total_tokens: u64,
    pub total_requests: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TrainingStatus {
    /// `running` while the swarm's pipelines train, `waiting` while they wait for a whole
    /// pipeline, `finished` for the run that produced the served weights.
    pub state: String,
    /// The newest round any pipeline is in (the served checkpoint's run: 0).
    pub round: u64,
    /// `[step, loss]` training-loss points of the served checkpoint's run, oldest first.
    pub losses: Vec<[f64; 2]>,
    /// `[step, loss]` held-out loss points, oldest first.
    pub held_out: Vec<[f64; 2]>,
    /// The swarm's training pipelines, as their Drivers report them.
    pub pipelines: Vec<PipelineStatus>,
    /// The round whose global weights the workers serve (0: the checkpoint or seed they
    /// started from); answers change only when it does.
    pub served_round: u64,
    /// The aggregator's closed rounds, newest last.
    pub rounds: Vec<RoundStatus>,
}

/// One closed DiLoCo round, as the aggregator reports it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RoundStatus {
    pub round: u64,
    /// Held-out loss of the weights it published (null when the aggregator does not score).
    pub held_out: Option<f64>,
    /// Bytes of Δ it received.
    pub bytes: u64,
    /// The robust rule it combined them with.
    pub rule: String,
    /// Submissions accepted and flagged.
    pub accepted: u32,
    pub flagged: u32,
}

/// One training pipeline.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PipelineStatus {
    pub id: String,
    /// Its stages' node ids, in layer order.
    pub nodes: Vec<String>,
    pub round: u64,
    /// Inner steps done in the round.
    pub step: u64,
    /// Mean training loss of its latest step; null before the first.
    pub loss: Option<f64>,
    /// Training tokens it has processed.
    pub tokens: u64,
    /// `running`, `waiting` or `failed`.
    pub state: String,
    /// While `state` is `failed`: why its round ended early (names the stage); null otherwise
    /// and in the summary view.
    pub error: Option<String>,
    /// `[step, loss]` of its recent steps (steps counted since its Driver started), oldest
    /// first.
    pub losses: Vec<[f64; 2]>,
}

impl TrainingStatus {
    /// The document's training part: the served checkpoint's `report` (if any) with the
    /// pipelines that train now (if any).
    pub fn combine(
        report: Option<TrainingStatus>,
        pipelines: Vec<PipelineStatus>,
        served_round: u64,
        rounds: Vec<RoundStatus>,
    ) -> Option<Self> {
        if pipelines.is_empty() && rounds.is_empty() {
            return report;
        }
        let mut status = report.unwrap_or_default();
        status.state = if pipelines.iter().any(|p| p.state == "running") {
            "running".into()
        } else {
            "waiting".into()
        };
        status.round = pipelines.iter().map(|p| p.round).max().unwrap_or(0);
        status.pipelines = pipelines;
        status.served_round = served_round;
        status.rounds = rounds;
        Some(status)
    }
}

/// The part of a checkpoint's `training.json` the status document shows.
#[derive(Debug, serde::Deserialize)]
struct TrainingReportFile {
    #[serde(default)]
    train_history: Vec<(u64, f64)>,
    #[serde(default)]
    validation_history: Vec<(u64, f64)>,
}

impl TrainingStatus {
    /// The finished run recorded in a checkpoint's `training.json` (written by
    /// `neuroshard train`): its training and held-out loss curves.
    pub fn from_report(json: &str) -> Result<Self, neuroshard_common::Error> {
        let report: TrainingReportFile = serde_json::from_str(json).map_err(|e| {
            neuroshard_common::Error::invalid_argument(format!("training report: {e}"))
        })?;
        let points = |h: Vec<(u64, f64)>| {
            h.into_iter()
                .filter(|(_, loss)| loss.is_finite())
                .map(|(step, loss)| [step as f64, loss])
                .collect()
        };
        Ok(Self {
            state: "finished".into(),
            round: 0,
            losses: points(report.train_history),
            held_out: points(report.validation_history),
            ..Self::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_public_summary_drops_endpoints_pids_and_errors_and_keeps_the_shape() {
        let detail = SwarmStatus {
            view: DETAIL,
            nodes: vec![NodeStatus {
                id: "n1".into(),
                endpoint: Some("https://10.0.0.7:50051".into()),
                span: [0, 2],
                state: "live".into(),
                pid: Some(4242),
                ..Default::default()
            }],
            layers: vec![LayerStatus {
                index: 0,
                holders: vec!["n1".into()],
            }],
            requests: vec![RequestStatus {
                id: "cmpl-1".into(),
                state: "failed".into(),
                route: vec!["n1".into()],
                failovers: 2,
                error: Some("layers [0, 2) failed on n1 (connection refused 10.0.0.7)".into()),
                ..Default::default()
            }],
            ..Default::default()
        };
        let summary = detail.clone().public_summary();
        let text = serde_json::to_string(&summary).unwrap();
        assert!(
            !text.contains("10.0.0.7") && !text.contains("4242"),
            "{text}"
        );
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(json["view"], "summary");
        assert!(json["nodes"][0]["endpoint"].is_null());
        assert!(json["nodes"][0]["pid"].is_null());
        assert!(json["requests"][0]["error"].is_null());
        // The shape stays: who holds what, states, routes, failovers.
        assert_eq!(json["nodes"][0]["span"], serde_json::json!([0, 2]));
        assert_eq!(json["layers"][0]["holders"][0], "n1");
        assert_eq!(json["requests"][0]["route"][0], "n1");
        assert_eq!(json["requests"][0]["failovers"], 2);
        assert_eq!(json["requests"][0]["state"], "failed");
    }

    #[test]
    fn pipelines_that_train_make_the_state_running_and_the_summary_drops_their_errors() {
        let report = TrainingStatus::from_report(r#"{"train_history": [[10, 5.5]]}"#).unwrap();
        assert_eq!(
            TrainingStatus::combine(Some(report.clone()), Vec::new(), 0, Vec::new()),
            Some(report.clone())
        );
        let failed = PipelineStatus {
            id: "p0".into(),
            round: 3,
            state: "failed".into(),
            error: Some("stage 1 (node abc, layers [2, 4)) did not answer".into()),
            ..PipelineStatus::default()
        };
        let running = PipelineStatus {
            id: "p1".into(),
            round: 4,
            step: 7,
            loss: Some(5.25),
            state: "running".into(),
            ..PipelineStatus::default()
        };
        let combined =
            TrainingStatus::combine(Some(report), vec![failed.clone(), running], 0, Vec::new())
                .unwrap();
        assert_eq!(combined.state, "running");
        assert_eq!(combined.round, 4);
        assert_eq!(combined.losses, vec![[10.0, 5.5]]);
        let waiting = TrainingStatus::combine(None, vec![failed], 0, Vec::new()).unwrap();
        assert_eq!(waiting.state, "waiting");
        // The aggregator's rounds show even while no pipeline reports.
        let round = RoundStatus {
            round: 2,
            held_out: Some(4.5),
            bytes: 1_000,
            rule: "trimmed_mean".into(),
            accepted: 4,
            flagged: 0,
        };
        let rounds = TrainingStatus::combine(None, Vec::new(), 2, vec![round.clone()]).unwrap();
        assert_eq!(rounds.rounds, vec![round]);
        assert_eq!(rounds.served_round, 2);
        let json = serde_json::to_value(&rounds).unwrap();
        assert_eq!(json["rounds"][0]["held_out"], 4.5);
        assert_eq!(json["rounds"][0]["rule"], "trimmed_mean");
        let summary = SwarmStatus {
            training: Some(combined),
            ..SwarmStatus::default()
        }
        .public_summary();
        let json = serde_json::to_value(&summary).unwrap();
        assert!(json["training"]["pipelines"][0]["error"].is_null());
        assert_eq!(json["training"]["pipelines"][1]["loss"], 5.25);
        assert_eq!(json["training"]["pipelines"][1]["step"], 7);
    }

    #[test]
    fn a_training_report_becomes_finished_loss_curves() {
        let json = r#"{"steps": 20, "train_history": [[10, 5.5], [20, 4.75]],
                      "validation_history": [[20, 4.9]], "other": 1}"#;
        let t = TrainingStatus::from_report(json).unwrap();
        assert_eq!(t.state, "finished");
        assert_eq!(t.losses, vec![[10.0, 5.5], [20.0, 4.75]]);
        assert_eq!(t.held_out, vec![[20.0, 4.9]]);
        let err = TrainingStatus::from_report("{").unwrap_err();
        assert!(
            err.message.starts_with("training report:"),
            "{}",
            err.message
        );
    }
}
