//! The `StageTrainer` gRPC service: this node as one stage of a training pipeline, on the
//! span it serves. Inference keeps the round's global weights (θ_start) on the compute thread;
//! training runs on a copy of its own, loaded from the same source at `StartRound`, with
//! AdamW moments that live across rounds until the span changes or the caller resets them.
//!
//! A round belongs to the caller that started it (its client certificate under mutual TLS),
//! like a session. Every call is checked against the round (span, round, step, owner) before
//! any tensor work, and the work runs on a blocking thread, never on the async runtime. The
//! pure rules (what a call may do in which state) are in [`RoundState`]; the adapter below
//! only converts wire types.
//!
//! Memory: the training copy, its gradients and the two moments come on top of the served
//! weights, 5 × 4 bytes per parameter in f32 with the served copy, which is what the
//! registry's `bytes_per_param` (20) accounts. Δ = θ_start − θ_end is computed against θ_start
//! loaded again from its source when asked for, so no third copy is kept.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};

use neuroshard_common::identity::NodeKey;
use neuroshard_common::signing::NonceSource;
use neuroshard_common::tensor::chunk;
use neuroshard_common::{Error, ErrorKind, Result};
use neuroshard_model::ShardInput;
use neuroshard_model::adamw::AdamWConfig;
use neuroshard_model::stage::{StageOutput, StageTrainer};
use neuroshard_model::tch::{Kind, Tensor};
use neuroshard_proto::common::v1::LayerSpan;
use neuroshard_proto::trainer::v1::stage_trainer_server::StageTrainer as StageTrainerRpc;
use neuroshard_proto::trainer::v1::{
    AbandonStepRequest, AbandonStepResponse, EndRoundRequest, EndRoundResponse, GradNormRequest,
    GradNormResponse, NamedTensorChunk, ProgressRequest, ProgressResponse, PseudoGradientRequest,
    ReadTensorsRequest, StartRoundRequest, StartRoundResponse, StepRef, StepRequest, StepResponse,
    TensorSet, TrainBackwardRequest, TrainBackwardResponse, TrainBackwardStreamRequest,
    TrainBackwardStreamResponse, TrainForwardRequest, TrainForwardResponse,
    TrainForwardStreamRequest, TrainForwardStreamResponse,
};
use neuroshard_worker_client::aggregator::{Aggregators, DeltaSubmission, NamedDelta};
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::caller::Caller;
use crate::convert::{from_wire, to_wire};
use crate::node::{LoadPlan, load_span, load_span_at};
use crate::service::{PartStream, chunked_response};
use crate::state::{Loaded, WorkerState};
use crate::stream::receive;

/// One round of training on this node.
#[derive(Debug)]
struct Round {
    /// [start, end) of the span, and the architecture version it belongs to.
    span: (u32, u32),
    architecture_version: u64,
    round: u64,
    /// The inner step calls must name.
    step: u64,
    pipeline_id: String,
    owner: Caller,
    ended: bool,
    /// The aggregator round of θ_start (0: the checkpoint or seed).
    weights_round: u64,
    trainer: StageTrainer,
}

/// What this node is training, if anything.
#[derive(Debug, Default)]
pub struct RoundState {
    round: Option<Round>,
}

fn span_of(span: Option<LayerSpan>) -> Result<(u32, u32)> {
    span.map(|s| (s.start, s.end))
        .ok_or_else(|| Error::invalid_argument("span: missing"))
}

fn show((start, end): (u32, u32)) -> String {
    format!("[{start}, {end})")
}

impl RoundState {
    /// The round a call made by `caller` for `span` may act on: in round `round` (any, when
    /// None) and at inner step `step` (round-level calls give None).
    fn round_for(
        &mut self,
        caller: Caller,
        span: (u32, u32),
        round: Option<u64>,
        step: Option<u64>,
        loaded: Option<&Loaded>,
    ) -> Result<&mut Round> {
        let Some(current) = self.round.as_ref() else {
            return Err(Error::failed_precondition(
                "no round started on this node: call StartRound first",
            ));
        };
        if current.owner != caller {
            return Err(Error::new(
                ErrorKind::PermissionDenied,
                "the round on this node was started by another caller",
            ));
        }
        // The span changed under the round (reassignment, growth): the round is over.
        let serving = loaded.map(|l| {
            (
                (l.spec.start as u32, l.spec.end as u32),
                l.architecture.version,
            )
        });
        if serving != Some((current.span, current.architecture_version)) {
            let old = current.span;
            self.round = None;
            return Err(Error::failed_precondition(format!(
                "this node's span changed from {} during the round; the round is over",
                show(old)
            )));
        }
        if span != current.span {
            return Err(Error::failed_precondition(format!(
                "span: {} named, this node trains {}",
                show(span),
                show(current.span)
            )));
        }
        if let Some(round) = round
            && round != current.round
        {
            return Err(Error::failed_precondition(format!(
                "round: {round} named, this node is in round {}",
                current.round
            )));
        }
        if let Some(step) = step {
            if current.ended {
                return Err(Error::failed_precondition(format!(
                    "round {} has ended on this node",
                    current.round
                )));
            }
            if step != current.step {
                return Err(Error::failed_precondition(format!(
                    "step: {step} named, round {} is at step {}",
                    current.round, current.step
                )));
            }
        }
        self.round.as_mut().ok_or_else(|| {
            Error::failed_precondition("no round started on this node: call StartRound first")
        })
    }

    fn at(
        &mut self,
        caller: Caller,
        at: Option<&StepRef>,
        loaded: Option<&Loaded>,
    ) -> Result<&mut Round> {
        let at = at.ok_or_else(|| Error::invalid_argument("at: missing"))?;
        self.round_for(
            caller,
            span_of(at.span)?,
            Some(at.round),
            Some(at.step),
            loaded,
        )
    }
}

/// Sends this node's Δ to the aggregators, signed with its key.
#[derive(Debug)]
pub struct Submitter {
    pub aggregators: Arc<Aggregators>,
    pub key: Arc<NodeKey>,
    pub network_id: String,
    pub nonces: NonceSource,
}

/// gRPC adapter: the node's state, how its spans are loaded, and the round.
#[derive(Debug, Clone)]
pub struct TrainerService {
    pub state: Arc<WorkerState>,
    pub plan: LoadPlan,
    pub rounds: Arc<Mutex<RoundState>>,
    /// What this node's Driver reports (empty unless it drives a pipeline).
    pub progress: Arc<crate::driver::progress::DriverProgress>,
    /// Where EndRound sends Δ when asked to (none: it cannot).
    pub submitter: Option<Arc<Submitter>>,
}

/// Runs `work` on the round state on a blocking thread (tensor work never runs on the async
/// runtime; calls on one node's round run one at a time).
async fn with_rounds<T: Send + 'static>(
    rounds: &Arc<Mutex<RoundState>>,
    work: impl FnOnce(&mut RoundState) -> Result<T> + Send + 'static,
) -> Result<T> {
    let rounds = rounds.clone();
    tokio::task::spawn_blocking(move || {
        let mut guard = rounds.lock().unwrap_or_else(PoisonError::into_inner);
        work(&mut guard)
    })
    .await
    .map_err(|e| Error::internal(format!("training task failed: {e}")))?
}

fn tokens_tensor(tokens: &[i64], rows: u32, field: &str) -> Result<Tensor> {
    let rows = i64::from(rows);
    let len = tokens.len() as i64;
    if rows == 0 || len == 0 || len % rows != 0 {
        return Err(Error::invalid_argument(format!(
            "{field}: {len} ids do not make {rows} equal rows"
        )));
    }
    Ok(Tensor::from_slice(tokens).view([rows, len / rows]))
}

type ChunkStream =
    Pin<Box<dyn Stream<Item = std::result::Result<NamedTensorChunk, Status>> + Send>>;

/// Named f32 tensors as a stream: each tensor's chunks in order, its name on the first.
fn named_stream(tensors: Vec<(String, Tensor)>, chunk_bytes: usize) -> Result<ChunkStream> {
    let mut messages = Vec::new();
    for (name, tensor) in tensors {
        let wire = to_wire(&tensor)?;
        for (i, piece) in chunk(&wire, chunk_bytes).into_iter().enumerate() {
            messages.push(Ok(NamedTensorChunk {
                name: if i == 0 { name.clone() } else { String::new() },
                chunk: Some(piece),
            }));
        }
    }
    Ok(Box::pin(tokio_stream::iter(messages)))
}

impl TrainerService {
    /// Nothing being trained yet.
    pub fn new(state: Arc<WorkerState>, plan: LoadPlan) -> Self {
        Self {
            state,
            plan,
            rounds: Arc::default(),
            progress: Arc::default(),
            submitter: None,
        }
    }

    fn loaded_span(&self, span: (u32, u32)) -> Result<Arc<Loaded>> {
        let loaded = self.state.loaded().ok_or_else(|| {
            Error::new(
                ErrorKind::Unavailable,
                "no layers assigned to this node yet",
            )
        })?;
        let held = (loaded.spec.start as u32, loaded.spec.end as u32);
        if held != span {
            return Err(Error::failed_precondition(format!(
                "span: {} named, this node holds {}",
                show(span),
                show(held)
            )));
        }
        Ok(loaded)
    }

    async fn start_round(
        &self,
        request: StartRoundRequest,
        caller: Caller,
    ) -> Result<StartRoundResponse> {
        let span = span_of(request.span)?;
        let loaded = self.loaded_span(span)?;
        let this_round = request.round;
        let wrong_weights = move |serving: u64, wanted: u64| {
            Error::failed_precondition(format!(
                "weights_round: round {this_round} starts from the global weights of round {wanted}; this node serves round {serving}'s (they are loading)"
            ))
        };
        if let Some(wanted) = request.weights_round
            && loaded.weights_round != wanted
        {
            return Err(wrong_weights(loaded.weights_round, wanted));
        }
        let arch = loaded.architecture.clone();
        let plan = self.plan.clone();
        with_rounds(&self.rounds, move |rounds| {
            // θ_start: the global weights the served copy was loaded from.
            let (shard, weights_round) = load_span_at(&arch, span.0, span.1, &plan)?;
            if let Some(wanted) = request.weights_round
                && weights_round != wanted
            {
                return Err(wrong_weights(weights_round, wanted));
            }
            let keep = rounds.round.take().filter(|r| {
                !request.reset_optimizer
                    && r.span == span
                    && r.architecture_version == arch.version
                    && r.owner == caller
            });
            let trainer = match keep {
                Some(mut old) => {
                    // Same span: the moments carry over, the weights restart from θ_start.
                    old.trainer.abandon_step();
                    copy_weights(&old.trainer, &shard)?;
                    old.trainer
                }
                None => StageTrainer::new(shard, AdamWConfig::default()),
            };
            let optimizer_steps = trainer.optimizer().steps();
            tracing::info!(round = request.round, pipeline = %request.pipeline_id, start = span.0, end = span.1, optimizer_steps, "training round started");
            rounds.round = Some(Round {
                span,
                architecture_version: arch.version,
                round: request.round,
                step: 0,
                pipeline_id: request.pipeline_id,
                owner: caller,
                ended: false,
                weights_round,
                trainer,
            });
            Ok(StartRoundResponse { optimizer_steps })
        })
        .await
    }

    async fn forward(
        &self,
        request: TrainForwardRequest,
        caller: Caller,
    ) -> Result<TrainForwardResponse> {
        let loaded = self.state.loaded();
        let limits = self.state.limits;
        with_rounds(&self.rounds, move |rounds| {
            let round = rounds.at(caller, request.at.as_ref(), loaded.as_deref())?;
            let spec = round.trainer.shard().spec();
            let tokens;
            let hidden;
            let input = if spec.embed {
                if request.hidden.is_some() {
                    return Err(Error::invalid_argument(
                        "hidden: this stage holds the embedding and takes token ids",
                    ));
                }
                tokens = tokens_tensor(&request.tokens, request.token_rows, "tokens")?;
                ShardInput::Tokens(&tokens)
            } else {
                let wire = request.hidden.as_ref().ok_or_else(|| {
                    Error::invalid_argument("hidden: this stage needs hidden states")
                })?;
                hidden = from_wire(wire, "hidden", &limits)?;
                ShardInput::Hidden(&hidden)
            };
            let targets = if request.targets.is_empty() {
                None
            } else {
                let rows = match input {
                    ShardInput::Tokens(t) | ShardInput::Hidden(t) => t.size()[0],
                };
                Some(tokens_tensor(&request.targets, rows as u32, "targets")?)
            };
            let output = round.trainer.forward(
                request.micro_batch,
                input,
                targets.as_ref(),
                request.loss_scale,
            )?;
            Ok(match output {
                StageOutput::Hidden(h) => TrainForwardResponse {
                    hidden: Some(to_wire(&h)?),
                    loss: 0.0,
                },
                StageOutput::Loss(loss) => TrainForwardResponse { hidden: None, loss },
            })
        })
        .await
    }

    async fn backward(
        &self,
        request: TrainBackwardRequest,
        caller: Caller,
    ) -> Result<TrainBackwardResponse> {
        let loaded = self.state.loaded();
        let limits = self.state.limits;
        with_rounds(&self.rounds, move |rounds| {
            let round = rounds.at(caller, request.at.as_ref(), loaded.as_deref())?;
            let grad = request
                .grad
                .as_ref()
                .map(|g| from_wire(g, "grad", &limits))
                .transpose()?;
            let input_grad = round.trainer.backward(request.micro_batch, grad.as_ref())?;
            Ok(TrainBackwardResponse {
                input_grad: input_grad.as_ref().map(to_wire).transpose()?,
            })
        })
        .await
    }

    async fn read(&self, request: ReadTensorsRequest, caller: Caller) -> Result<ChunkStream> {
        let span = span_of(request.span)?;
        let set = TensorSet::try_from(request.set)
            .ok()
            .filter(|s| *s != TensorSet::Unspecified)
            .ok_or_else(|| {
                Error::invalid_argument(format!("set: {} is not a tensor set", request.set))
            })?;
        let loaded = self.loaded_span(span)?;
        let arch = loaded.architecture.clone();
        let plan = self.plan.clone();
        let chunk_bytes = self.state.stream_chunk_bytes;
        let tensors = with_rounds(&self.rounds, move |rounds| {
            if set == TensorSet::Global {
                let shard = load_span(&arch, span.0, span.1, &plan)?;
                return Ok(by_name(shard.var_store().variables()));
            }
            let round = rounds.round_for(caller, span, None, None, Some(loaded.as_ref()))?;
            let optimizer = round.trainer.optimizer();
            Ok(match set {
                TensorSet::AdamM => optimizer
                    .moments()
                    .iter()
                    .map(|(k, m)| (k.clone(), m.m.copy()))
                    .collect(),
                TensorSet::AdamV => optimizer
                    .moments()
                    .iter()
                    .map(|(k, m)| (k.clone(), m.v.copy()))
                    .collect(),
                // Copies: the stream is sent after the round is let go, and a Step may
                // change the weights in place meanwhile.
                _ => by_name(round.trainer.shard().var_store().variables())
                    .into_iter()
                    .map(|(k, v)| (k, v.copy()))
                    .collect(),
            })
        })
        .await?;
        named_stream(tensors, chunk_bytes)
    }

    async fn pseudo_gradient(
        &self,
        request: PseudoGradientRequest,
        caller: Caller,
    ) -> Result<ChunkStream> {
        let span = span_of(request.span)?;
        let loaded = self.loaded_span(span)?;
        let arch = loaded.architecture.clone();
        let plan = self.plan.clone();
        let chunk_bytes = self.state.stream_chunk_bytes;
        let deltas = with_rounds(&self.rounds, move |rounds| {
            let round = rounds.round_for(
                caller,
                span,
                Some(request.round),
                None,
                Some(loaded.as_ref()),
            )?;
            if !round.ended {
                return Err(Error::failed_precondition(format!(
                    "round {}: the pseudo-gradient is read after EndRound",
                    request.round
                )));
            }
            pseudo_gradient_of(round, &arch, span, &plan)
        })
        .await?;
        named_stream(deltas, chunk_bytes)
    }
}

/// Δ = θ_start − θ_end of the round's span, by name, in f32 whatever the weights' dtype.
/// θ_start is loaded again from its source, which must still be the round's.
fn pseudo_gradient_of(
    round: &Round,
    arch: &neuroshard_common::growth::ArchitectureState,
    span: (u32, u32),
    plan: &LoadPlan,
) -> Result<Vec<(String, Tensor)>> {
    let (start, weights_round) = load_span_at(arch, span.0, span.1, plan)?;
    if weights_round != round.weights_round {
        return Err(Error::failed_precondition(format!(
            "round {}: θ_start (the global weights of round {}) is gone; this node now holds round {weights_round}'s",
            round.round, round.weights_round
        )));
    }
    let start = start.var_store().variables();
    let end = round.trainer.shard().var_store().variables();
    let _guard = neuroshard_model::tch::no_grad_guard();
    by_name(end)
        .into_iter()
        .map(|(name, theta_end)| {
            let theta_start = start
                .get(&name)
                .ok_or_else(|| Error::internal(format!("θ_start has no {name}")))?;
            let delta = theta_start.to_kind(Kind::Float) - theta_end.to_kind(Kind::Float);
            Ok((name, delta))
        })
        .collect()
}

/// Variables in name order, detached from autograd (sharing their storage).
fn by_name(vars: std::collections::HashMap<String, Tensor>) -> Vec<(String, Tensor)> {
    let ordered: BTreeMap<String, Tensor> = vars.into_iter().collect();
    ordered.into_iter().map(|(k, v)| (k, v.detach())).collect()
}

/// Copies `from`'s weights (θ_start) into the trainer's shard.
fn copy_weights(trainer: &StageTrainer, from: &neuroshard_model::Shard) -> Result<()> {
    let source = from.var_store().variables();
    let _guard = neuroshard_model::tch::no_grad_guard();
    for (name, mut target) in trainer.shard().var_store().variables() {
        let value = source
            .get(&name)
            .ok_or_else(|| Error::internal(format!("θ_start has no {name}")))?;
        target
            .f_copy_(value)
            .map_err(|e| Error::internal(format!("{name}: {e}")))?;
    }
    Ok(())
}

#[tonic::async_trait]
impl StageTrainerRpc for TrainerService {
    type PseudoGradientStream = ChunkStream;
    type ReadTensorsStream = ChunkStream;
    type ForwardStreamStream = PartStream<TrainForwardStreamResponse>;
    type BackwardStreamStream = PartStream<TrainBackwardStreamResponse>;

    async fn forward_stream(
        &self,
        request: Request<Streaming<TrainForwardStreamRequest>>,
    ) -> std::result::Result<Response<Self::ForwardStreamStream>, Status> {
        let caller = Caller::of(&request);
        let mut stream = request.into_inner();
        let request = receive(&mut stream, self.state.stream_limits(), |_| Ok(())).await?;
        let response = TrainerService::forward(self, request, caller).await?;
        Ok(chunked_response(response, self.state.stream_chunk_bytes))
    }

    async fn backward_stream(
        &self,
        request: Request<Streaming<TrainBackwardStreamRequest>>,
    ) -> std::result::Result<Response<Self::BackwardStreamStream>, Status> {
        let caller = Caller::of(&request);
        let mut stream = request.into_inner();
        let request = receive(&mut stream, self.state.stream_limits(), |_| Ok(())).await?;
        let response = TrainerService::backward(self, request, caller).await?;
        Ok(chunked_response(response, self.state.stream_chunk_bytes))
    }

    async fn start_round(
        &self,
        request: Request<StartRoundRequest>,
    ) -> std::result::Result<Response<StartRoundResponse>, Status> {
        let caller = Caller::of(&request);
        Ok(Response::new(
            TrainerService::start_round(self, request.into_inner(), caller).await?,
        ))
    }

    async fn forward(
        &self,
        request: Request<TrainForwardRequest>,
    ) -> std::result::Result<Response<TrainForwardResponse>, Status> {
        let caller = Caller::of(&request);
        Ok(Response::new(
            TrainerService::forward(self, request.into_inner(), caller).await?,
        ))
    }

    async fn backward(
        &self,
        request: Request<TrainBackwardRequest>,
    ) -> std::result::Result<Response<TrainBackwardResponse>, Status> {
        let caller = Caller::of(&request);
        Ok(Response::new(
            TrainerService::backward(self, request.into_inner(), caller).await?,
        ))
    }

    async fn grad_norm(
        &self,
        request: Request<GradNormRequest>,
    ) -> std::result::Result<Response<GradNormResponse>, Status> {
        let caller = Caller::of(&request);
        let request = request.into_inner();
        let loaded = self.state.loaded();
        let squared_norm = with_rounds(&self.rounds, move |rounds| {
            let round = rounds.at(caller, request.at.as_ref(), loaded.as_deref())?;
            Ok(round.trainer.squared_grad_norm())
        })
        .await?;
        Ok(Response::new(GradNormResponse { squared_norm }))
    }

    async fn step(
        &self,
        request: Request<StepRequest>,
    ) -> std::result::Result<Response<StepResponse>, Status> {
        let caller = Caller::of(&request);
        let request = request.into_inner();
        let loaded = self.state.loaded();
        let optimizer_steps = with_rounds(&self.rounds, move |rounds| {
            let round = rounds.at(caller, request.at.as_ref(), loaded.as_deref())?;
            if !(request.lr.is_finite() && request.lr > 0.0) {
                return Err(Error::invalid_argument(format!(
                    "lr: must be positive, got {}",
                    request.lr
                )));
            }
            round.trainer.step(request.lr, request.clip_coefficient)?;
            round.step += 1;
            Ok(round.trainer.optimizer().steps())
        })
        .await?;
        Ok(Response::new(StepResponse { optimizer_steps }))
    }

    async fn abandon_step(
        &self,
        request: Request<AbandonStepRequest>,
    ) -> std::result::Result<Response<AbandonStepResponse>, Status> {
        let caller = Caller::of(&request);
        let request = request.into_inner();
        let loaded = self.state.loaded();
        with_rounds(&self.rounds, move |rounds| {
            let round = rounds.at(caller, request.at.as_ref(), loaded.as_deref())?;
            round.trainer.abandon_step();
            Ok(())
        })
        .await?;
        Ok(Response::new(AbandonStepResponse {}))
    }

    async fn end_round(
        &self,
        request: Request<EndRoundRequest>,
    ) -> std::result::Result<Response<EndRoundResponse>, Status> {
        let caller = Caller::of(&request);
        let request = request.into_inner();
        let loaded = self.state.loaded();
        let submitter = match (request.submit, &self.submitter) {
            (false, _) => None,
            (true, Some(s)) => Some(s.clone()),
            (true, None) => {
                return Err(Error::failed_precondition(
                    "submit: this node has no aggregators configured",
                )
                .into());
            }
        };
        let plan = self.plan.clone();
        let submit = request.submit;
        let (steps, delta) = with_rounds(&self.rounds, move |rounds| {
            let span = span_of(request.span)?;
            let round = rounds.round_for(caller, span, Some(request.round), None, loaded.as_deref())?;
            round.trainer.abandon_step();
            round.ended = true;
            tracing::info!(round = round.round, pipeline = %round.pipeline_id, steps = round.step, "training round ended");
            let delta = match (submit, loaded.as_ref()) {
                (true, Some(loaded)) => {
                    let tensors = pseudo_gradient_of(round, &loaded.architecture, span, &plan)?;
                    let named = tensors
                        .into_iter()
                        .map(|(name, t)| {
                            let shape = t.size();
                            let flat = t.flatten(0, -1);
                            let values = Vec::<f32>::try_from(&flat)
                                .map_err(|e| Error::internal(format!("{name}: {e}")))?;
                            Ok((name, shape, values))
                        })
                        .collect::<Result<Vec<NamedDelta>>>()?;
                    Some((round.round, span, round.pipeline_id.clone(), named))
                }
                _ => None,
            };
            Ok((round.step, delta))
        })
        .await?;
        let mut submitted_bytes = 0;
        if let (Some(submitter), Some((round, span, pipeline_id, deltas))) = (submitter, delta) {
            let submission = DeltaSubmission {
                round,
                span,
                pipeline_id: &pipeline_id,
                tokens: request.tokens,
                deltas: &deltas,
            };
            submitted_bytes = submitter
                .aggregators
                .submit(
                    &submitter.key,
                    &submitter.network_id,
                    &submitter.nonces,
                    &submission,
                    self.state.stream_chunk_bytes,
                )
                .await
                .map_err(|e| {
                    Error::new(
                        e.kind,
                        format!("round {round} ended; submitting Δ: {}", e.message),
                    )
                })?;
            tracing::info!(
                round,
                start = span.0,
                end = span.1,
                bytes = submitted_bytes,
                "Δ submitted"
            );
        }
        Ok(Response::new(EndRoundResponse {
            steps,
            submitted_bytes,
        }))
    }

    async fn pseudo_gradient(
        &self,
        request: Request<PseudoGradientRequest>,
    ) -> std::result::Result<Response<Self::PseudoGradientStream>, Status> {
        let caller = Caller::of(&request);
        Ok(Response::new(
            TrainerService::pseudo_gradient(self, request.into_inner(), caller).await?,
        ))
    }

    async fn progress(
        &self,
        _request: Request<ProgressRequest>,
    ) -> std::result::Result<Response<ProgressResponse>, Status> {
        let mut progress = self.progress.snapshot();
        progress.served_round = self.state.loaded().map_or(0, |l| l.weights_round);
        Ok(Response::new(progress))
    }

    async fn read_tensors(
        &self,
        request: Request<ReadTensorsRequest>,
    ) -> std::result::Result<Response<Self::ReadTensorsStream>, Status> {
        let caller = Caller::of(&request);
        Ok(Response::new(
            TrainerService::read(self, request.into_inner(), caller).await?,
        ))
    }
}
