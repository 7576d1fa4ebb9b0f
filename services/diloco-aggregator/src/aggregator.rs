//! The aggregator's state and the round life cycle: the open round and its submissions, the
//! published weights, the outer optimizer; closing a round (scores, the pure close, receipts
//! and evidence signed, the checkpoint written, one database transaction) and opening the
//! next. The gRPC adapter ([`crate::service`]) and the start-up ([`crate::run`]) call this.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use neuroshard_aggregation::outer::OuterState;
use neuroshard_aggregation::ownership::Ownership;
use neuroshard_aggregation::round::Named;
use neuroshard_common::growth::ArchitectureState;
use neuroshard_common::identity::NodeKey;
use neuroshard_common::signing::{NonceSource, now_ms, sign};
use neuroshard_common::{Error, Result};
use neuroshard_model::tokenizer::TextTokenizer;
use neuroshard_proto::aggregator::v1::{
    Evidence, Receipt, RoundReport, RoundState, RoundSummary, SubmissionReport,
};
use neuroshard_proto::common::v1::{LayerSpan, SignedEnvelope};
use neuroshard_proto::registry::v1::AssignmentSnapshot;
use neuroshard_runtime::telemetry::names::aggregator as names;
use prost::Message;
use tokio::sync::watch;

use crate::closing::{Score, Settings, close};
use crate::config::AggregatorConfig;
use crate::model::{GlobalModel, HeldOut, round_dir};
use crate::rounds::{OpenRound, live_pipelines};
use crate::store::{RoundClose, Store, StoredRound};

/// Round state that changes together.
#[derive(Debug)]
pub struct Core {
    pub open: OpenRound,
    /// The round whose weights are published, and those weights (the whole model).
    pub published: u64,
    pub theta: Arc<Named>,
    pub momentum: BTreeMap<String, OuterState>,
    pub reference: Named,
    /// The model's shape now (it grows when the registry's architecture does): parameter
    /// shapes by name, what this aggregator owns of it, and the architecture.
    pub shapes: BTreeMap<String, Vec<i64>>,
    pub ownership: Ownership,
    pub architecture: ArchitectureState,
}

impl Core {
    /// Names of the parameters this aggregator owns.
    pub fn owned_names(&self) -> Vec<String> {
        self.shapes
            .keys()
            .filter(|n| self.ownership.owns(n))
            .cloned()
            .collect()
    }
}

/// One aggregator.
#[derive(Debug)]
pub struct Aggregator {
    pub config: Arc<AggregatorConfig>,
    pub key: NodeKey,
    nonces: NonceSource,
    pub store: Store,
    pub core: tokio::sync::Mutex<Core>,
    model: Arc<Mutex<GlobalModel>>,
    held_out: Option<HeldOut>,
    tokenizer: Option<TextTokenizer>,
    pub settings: Settings,
    pub changes: watch::Sender<RoundState>,
    pub assignments: watch::Receiver<Option<Arc<AssignmentSnapshot>>>,
}

/// A seed per round, from the configured seed (kept within i64 for the database).
pub fn round_seed(init_seed: u64, round: u64) -> u64 {
    (init_seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ round.wrapping_mul(0xD1B5_4A32_D192_ED03)) >> 1
}

fn span_proto((start, end): (u32, u32)) -> Option<LayerSpan> {
    Some(LayerSpan { start, end })
}

/// Round `number` of a `num_layers`-deep model as it opens now: its deadline, H and seed from
/// `config`, waiting for the live pipelines of `snapshot` (the round adjusts this as the
/// registry changes, see [`OpenRound::observe`]).
pub fn opening_round(
    config: &AggregatorConfig,
    number: u64,
    num_layers: u32,
    snapshot: Option<&AssignmentSnapshot>,
) -> StoredRound {
    StoredRound {
        round: number,
        open: true,
        deadline_unix_ms: now_ms()
            .saturating_add(i64::try_from(config.round_deadline_ms).unwrap_or(i64::MAX)),
        inner_steps: config.inner_steps,
        seed: round_seed(config.init_seed, number),
        num_layers,
        expected_pipelines: snapshot.map_or(0, live_pipelines),
        weights_dir: None,
    }
}

/// Where the model and its state come from at start.
#[derive(Debug)]
pub struct Start {
    pub model: GlobalModel,
    pub open: StoredRound,
    pub published: u64,
    pub momentum: BTreeMap<String, OuterState>,
    pub reference: Named,
}

impl Aggregator {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: Arc<AggregatorConfig>,
        key: NodeKey,
        store: Store,
        start: Start,
        held_out: Option<HeldOut>,
        tokenizer: Option<TextTokenizer>,
        assignments: watch::Receiver<Option<Arc<AssignmentSnapshot>>>,
        architecture: ArchitectureState,
    ) -> Result<Arc<Self>> {
        let num_layers = start.model.num_layers();
        let ownership = Ownership::of_range(config.layers_start, config.layers_end, num_layers);
        let settings = Settings {
            rule: config.rule()?,
            byzantine: config.byzantine,
            mixing: config.mixing,
            bucket: config.bucket,
            outer: config.outer,
            quorum: config.quorum,
            screening: config.screening,
            score_tolerance: config.score_tolerance,
            exclude_flagged: config.exclude_flagged,
        };
        let theta = Arc::new(start.model.weights()?);
        let snapshot = assignments.borrow().clone();
        let open = OpenRound::open(
            start.open.round,
            start.open.inner_steps,
            start.open.deadline_unix_ms,
            start.open.seed,
            start.open.num_layers,
            snapshot.as_deref(),
        );
        let core = Core {
            open,
            published: start.published,
            theta,
            momentum: start.momentum,
            reference: start.reference,
            shapes: start.model.shapes.clone(),
            ownership,
            architecture,
        };
        let aggregator = Arc::new(Self {
            changes: watch::Sender::new(RoundState::default()),
            config,
            key,
            nonces: NonceSource::new(),
            store,
            core: tokio::sync::Mutex::new(core),
            model: Arc::new(Mutex::new(start.model)),
            held_out,
            tokenizer,
            settings,
            assignments,
        });
        Ok(aggregator)
    }

    pub fn aggregator_id(&self) -> &str {
        self.key.node_id()
    }

    /// The round state clients see.
    pub fn state_of(&self, core: &Core) -> RoundState {
        let o = &core.ownership;
        RoundState {
            round: core.open.number,
            inner_steps: core.open.inner_steps,
            deadline_unix_ms: core.open.deadline_ms,
            quorum: self.config.quorum,
            weights_round: core.published,
            seed: core.open.seed,
            num_layers: core.open.num_layers,
            layers: span_proto((o.start, o.end)),
            embedding: o.embedding,
            head: o.head,
            expected_pipelines: core.open.expected_pipelines,
            aggregator_id: self.aggregator_id().to_string(),
            architecture: Some(core.architecture.to_proto()),
        }
    }

    pub async fn announce(&self) {
        let core = self.core.lock().await;
        let state = self.state_of(&core);
        self.changes.send_replace(state);
    }

    /// Signs `message` as `name` with the aggregator's key.
    pub fn sign(&self, name: &str, message: &impl Message) -> Result<SignedEnvelope> {
        sign(
            &self.key,
            &self.config.network_id,
            name,
            self.nonces.next(),
            now_ms(),
            message.encode_to_vec(),
        )
    }

    /// Signs and keeps evidence against `node_id` (for the submission's claimed `round`,
    /// filed under the round open now, whose report lists it); the refusal's message is
    /// returned as the error the caller sees. Never called with `core` locked.
    pub async fn refuse(
        &self,
        round: u64,
        node_id: &str,
        span: Option<LayerSpan>,
        kind: &str,
        commitment: Vec<u8>,
        error: Error,
    ) -> Error {
        let evidence = Evidence {
            aggregator_id: self.aggregator_id().to_string(),
            node_id: node_id.to_string(),
            round,
            span,
            kind: kind.to_string(),
            reason: error.message.clone(),
            commitment,
        };
        tracing::warn!(node_id, round, kind, reason = %error.message, "submission refused");
        metrics::counter!(names::SUBMISSIONS, "outcome" => kind.to_string()).increment(1);
        let filed_under = self.core.lock().await.open.number;
        match self.sign("Evidence", &evidence) {
            Ok(envelope) => {
                if let Err(e) = self
                    .store
                    .record_evidence(filed_under, node_id, kind, &envelope)
                    .await
                {
                    tracing::error!(error = %e, "recording evidence failed");
                }
            }
            Err(e) => tracing::error!(error = %e, "signing evidence failed"),
        }
        error
    }

    /// Records who holds what now, and closes the round when it is complete, its deadline
    /// passed, or the registry grew the model (the next round starts at the new depth).
    /// Returns whether a round closed.
    pub async fn tick(&self) -> Result<bool> {
        let mut core = self.core.lock().await;
        let snapshot = self.assignments.borrow().clone();
        if let Some(snapshot) = &snapshot {
            core.open.observe(snapshot);
        }
        let grown = snapshot
            .as_ref()
            .and_then(|s| s.architecture.as_ref())
            .map(ArchitectureState::from_proto)
            .transpose()?
            .filter(|a| a.config.num_layers > core.architecture.config.num_layers);
        let due = now_ms() > core.open.deadline_ms;
        if grown.is_none() && !due && !core.open.complete(core.owned_names()) {
            return Ok(false);
        }
        self.close_round(&mut core, grown).await?;
        let state = self.state_of(&core);
        drop(core);
        self.changes.send_replace(state);
        Ok(true)
    }

    /// Closes the open round and opens the next; with `grown`, the published weights are
    /// those of the grown architecture: the trained tensors, and the new layers as every node
    /// builds them (identity blocks from the seed).
    async fn close_round(&self, core: &mut Core, grown: Option<ArchitectureState>) -> Result<()> {
        let started = std::time::Instant::now();
        let round = core.open.number;
        let submissions = core.open.submissions.clone();
        let theta = core.theta.clone();
        let owned: Named = theta
            .iter()
            .filter(|(n, _)| core.ownership.owns(n))
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect();
        let scoring = self
            .held_out
            .as_ref()
            .filter(|_| core.ownership.is_whole(core.open.num_layers))
            .map(|h| h.for_round(core.open.seed));
        let model = self.model.clone();
        let settings = self.settings;
        let seed = core.open.seed;
        let round_layers = core.open.num_layers;
        let mut momentum = core.momentum.clone();
        let mut reference = core.reference.clone();
        let dir = round_dir(&self.config.state_dir, round);
        let tokenizer = self.tokenizer.clone();
        let (submissions_for_work, dir_for_work) = (submissions.clone(), dir.clone());
        let (checkpoint, init_seed) = (self.config.checkpoint.clone(), self.config.init_seed);
        let grown_for_work = grown.clone();
        let work = tokio::task::spawn_blocking(move || -> Result<_> {
            let (submissions, dir) = (submissions_for_work, dir_for_work);
            let mut model = model.lock().unwrap_or_else(PoisonError::into_inner);
            let (scores, start_loss) = match &scoring {
                Some(windows) => {
                    let without = model.loss(&theta, windows)?;
                    let mut by_pipeline: BTreeMap<&str, Named> = BTreeMap::new();
                    for s in &submissions {
                        let weights = by_pipeline
                            .entry(&s.pipeline)
                            .or_insert_with(|| (*theta).clone());
                        for (name, delta) in &s.deltas {
                            if let Some(w) = weights.get_mut(name) {
                                for (w, d) in w.iter_mut().zip(delta) {
                                    *w -= d;
                                }
                            }
                        }
                    }
                    let mut with = BTreeMap::new();
                    for (pipeline, weights) in &by_pipeline {
                        with.insert(pipeline.to_string(), model.loss(weights, windows)?);
                    }
                    let scores: Vec<Option<Score>> = submissions
                        .iter()
                        .map(|s| with.get(&s.pipeline).map(|&w| Score { with: w, without }))
                        .collect();
                    (scores, Some(without))
                }
                None => (vec![None; submissions.len()], None),
            };
            let closed = close(
                &owned,
                &submissions,
                &scores,
                &settings,
                seed,
                &mut momentum,
                &mut reference,
            )?;
            let mut next = (*theta).clone();
            next.extend(closed.theta_next.clone());
            if let Some(arch) = &grown_for_work {
                let bigger = GlobalModel::initial(arch, checkpoint.as_deref(), init_seed)?;
                bigger.overlay(&next)?;
                next = bigger.weights()?;
                *model = bigger;
            }
            let held_out = match &scoring {
                Some(windows) => Some(model.loss(&next, windows)?),
                None => None,
            };
            model.set_weights(&next)?;
            model.save(&dir, tokenizer.as_ref())?;
            Ok((
                closed, scores, start_loss, held_out, next, momentum, reference,
            ))
        });
        let (closed, scores, start_loss, held_out, next, momentum, reference) = work
            .await
            .map_err(|e| Error::internal(format!("closing round {round}: {e}")))??;

        let mut reports = Vec::new();
        let mut receipts = Vec::new();
        let mut evidence = Vec::new();
        for (i, s) in submissions.iter().enumerate() {
            let score = scores[i];
            let accepted = closed.accepted[i];
            reports.push(SubmissionReport {
                node_id: s.node_id.clone(),
                span: span_proto(s.span),
                pipeline_id: s.pipeline.clone(),
                tokens: s.tokens,
                loss_with: score.map_or(f64::NAN, |s| s.with),
                loss_without: score.map_or(f64::NAN, |s| s.without),
                score: score.map_or(f64::NAN, |s| s.gain()),
                flags: closed.flags[i].clone(),
                accepted,
                bytes: s.bytes,
            });
            if accepted {
                let receipt = Receipt {
                    aggregator_id: self.aggregator_id().to_string(),
                    node_id: s.node_id.clone(),
                    round,
                    span: span_proto(s.span),
                    tokens: s.tokens,
                    score: score.map_or(0.0, |s| s.gain()),
                    commitment: s.commitment.to_vec(),
                    num_layers: round_layers,
                    capacity_tokens_per_second: s.capacity_tokens_per_second,
                    elapsed_ms: s.elapsed_ms,
                };
                receipts.push((s.node_id.clone(), s.span.0, self.sign("Receipt", &receipt)?));
            } else {
                let found = Evidence {
                    aggregator_id: self.aggregator_id().to_string(),
                    node_id: s.node_id.clone(),
                    round,
                    span: span_proto(s.span),
                    kind: "flagged".into(),
                    reason: closed.flags[i].join("; "),
                    commitment: s.commitment.to_vec(),
                };
                evidence.push((
                    s.node_id.clone(),
                    "flagged".to_string(),
                    self.sign("Evidence", &found)?,
                ));
            }
        }
        let bytes: u64 = submissions.iter().map(|s| s.bytes).sum();
        let accepted = closed.accepted.iter().filter(|a| **a).count() as u32;
        let report = RoundReport {
            round,
            rule: self.settings.rule.name().into(),
            byzantine: self.settings.byzantine as u32,
            mixing: self.settings.mixing,
            held_out: held_out.unwrap_or(f64::NAN),
            held_out_start: start_loss.unwrap_or(f64::NAN),
            bytes,
            submissions: reports,
            notes: closed.notes.into_iter().collect(),
            receipts: Vec::new(),
            evidence: Vec::new(),
            closed_unix_ms: now_ms(),
        };
        let summary = RoundSummary {
            round,
            held_out: report.held_out,
            bytes,
            rule: report.rule.clone(),
            accepted,
            flagged: submissions.len() as u32 - accepted,
        };
        if let Some(arch) = grown {
            let model = self.model.lock().unwrap_or_else(PoisonError::into_inner);
            core.shapes = model.shapes.clone();
            drop(model);
            let layers = u32::try_from(arch.config.num_layers)
                .map_err(|_| Error::invalid_argument("num_layers out of range"))?;
            core.ownership =
                Ownership::of_range(self.config.layers_start, self.config.layers_end, layers);
            tracing::info!(
                round,
                layers,
                "the model grew: the next round starts at the new depth"
            );
            core.architecture = arch;
        }
        let layers = u32::try_from(core.architecture.config.num_layers)
            .map_err(|_| Error::invalid_argument("num_layers out of range"))?;
        let next_round = opening_round(
            &self.config,
            round + 1,
            layers,
            self.assignments.borrow().as_deref(),
        );
        let weights_dir = dir.to_string_lossy().into_owned();
        self.store
            .close(&RoundClose {
                round,
                weights_dir: &weights_dir,
                summary,
                report: &report,
                momentum: &momentum,
                reference: &reference,
                receipts,
                evidence,
                next: next_round.clone(),
            })
            .await?;
        tracing::info!(
            round,
            submissions = submissions.len(),
            accepted,
            held_out = report.held_out,
            bytes,
            "round closed; weights published"
        );
        core.theta = Arc::new(next);
        core.published = round;
        core.momentum = momentum;
        core.reference = reference;
        core.open = self.open_round(&next_round);
        self.prune(round);
        metrics::gauge!(names::ROUND).set(core.open.number as f64);
        if report.held_out.is_finite() {
            metrics::gauge!(names::HELD_OUT_LOSS).set(report.held_out);
        }
        metrics::histogram!(names::CLOSE_SECONDS).record(started.elapsed().as_secs_f64());
        Ok(())
    }

    fn open_round(&self, stored: &StoredRound) -> OpenRound {
        let snapshot = self.assignments.borrow().clone();
        OpenRound::open(
            stored.round,
            stored.inner_steps,
            stored.deadline_unix_ms,
            stored.seed,
            stored.num_layers,
            snapshot.as_deref(),
        )
    }

    /// Deletes the weights of rounds older than the last `keep_rounds` (round 0, the start,
    /// is kept).
    fn prune(&self, published: u64) {
        let keep = self.config.keep_rounds;
        if published <= keep {
            return;
        }
        let old: PathBuf = round_dir(&self.config.state_dir, published - keep);
        if old.exists()
            && let Err(e) = std::fs::remove_dir_all(&old)
        {
            tracing::warn!(error = %e, dir = %old.display(), "removing old round weights failed");
        }
    }
}
