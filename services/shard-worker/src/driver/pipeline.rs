//! One pipeline's stages as the Driver drives them over gRPC: a round's start and end, and
//! inner steps. A step splits the batch into micro-batches and runs every stage's operations
//! in the schedule's order ([`stage_ops`]) concurrently, one task per stage, relaying each
//! micro-batch's hidden state to the next stage and its gradient to the one before as soon as
//! it exists; then it sums the stages' squared gradient norms into one clip coefficient and
//! steps every stage with it, so a pipelined step equals a single-process step.
//!
//! Activations and gradients pass through the Driver as wire tensors, never decoded here.
//! A step has a deadline: a stage that dies fails its call at once, a stage that hangs
//! (SIGSTOP, a lost link) is named when the deadline passes. Either way the step is reported
//! as a [`StageFailure`] naming the stage, and the caller ends the round early.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use neuroshard_common::pipeline_schedule::{Op, Schedule, stage_ops};
use neuroshard_common::tensor::Limits;
use neuroshard_proto::common::v1::{LayerSpan, Tensor as WireTensor};
use neuroshard_proto::trainer::v1::stage_trainer_client::StageTrainerClient;
use neuroshard_proto::trainer::v1::{
    EndRoundRequest, GradNormRequest, ProgressRequest, StartRoundRequest, StepRef, StepRequest,
    TrainBackwardRequest, TrainBackwardResponse, TrainBackwardStreamRequest,
    TrainBackwardStreamResponse, TrainForwardRequest, TrainForwardResponse,
    TrainForwardStreamRequest, TrainForwardStreamResponse,
};
use neuroshard_runtime::tls::TlsFiles;
use neuroshard_worker_client::stream::{StreamLimits, receive, split};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tonic::transport::Channel;

/// Where a stage is: the registry's view of one node of the pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageAddress {
    pub node_id: String,
    pub endpoint: String,
    /// `[start, end)` layers.
    pub span: (u32, u32),
}

/// A step or round call that failed, and the stage it failed on.
#[derive(Debug, Clone, PartialEq)]
pub struct StageFailure {
    /// Index in the pipeline; `None` when no one stage is to blame.
    pub stage: Option<usize>,
    pub message: String,
}

impl std::fmt::Display for StageFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// What one inner step did.
#[derive(Debug, Clone, PartialEq)]
pub struct StepReport {
    /// Mean cross-entropy over the batch (nats).
    pub loss: f64,
    /// The global clip coefficient applied (1 when the norm was under the limit).
    pub clip_coefficient: f64,
    /// Input tokens trained on (batch × sequence length).
    pub tokens: u64,
    pub wall: Duration,
    /// Per stage: time spent in its Forward and Backward calls, as the Driver sees them
    /// (transfer included). `1 − busy / wall` is the stage's idle share of the step.
    pub busy: Vec<Duration>,
}

/// How a step is cut and run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepPlan {
    pub schedule: Schedule,
    pub micro_batches: u32,
    pub grad_clip: f64,
    pub deadline: Duration,
    /// The model's width: a micro-batch's activations are `[rows, seq, hidden]`.
    pub hidden_size: usize,
}

/// Room a message needs beyond its tensor's bytes (the other fields, framing).
const MESSAGE_OVERHEAD_BYTES: usize = 64 << 10;

/// How Forward and Backward travel when a micro-batch's tensors do not fit in one message.
#[derive(Debug, Clone, Copy)]
struct Streams {
    chunk_bytes: usize,
    limits: StreamLimits,
}

struct Stage {
    address: StageAddress,
    client: StageTrainerClient<Channel>,
}

/// A connected pipeline, in one round at a time.
pub struct PipelineRun {
    stages: Vec<Stage>,
    round: u64,
    max_message_bytes: usize,
}

impl std::fmt::Debug for PipelineRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PipelineRun")
            .field(
                "stages",
                &self.stages.iter().map(|s| &s.address).collect::<Vec<_>>(),
            )
            .field("round", &self.round)
            .finish()
    }
}

fn layer_span((start, end): (u32, u32)) -> Option<LayerSpan> {
    Some(LayerSpan { start, end })
}

fn describe(index: usize, address: &StageAddress) -> String {
    format!(
        "stage {index} (node {}, layers [{}, {}))",
        short(&address.node_id),
        address.span.0,
        address.span.1
    )
}

/// The first 12 characters of a node id, enough to tell nodes apart in a message.
fn short(node_id: &str) -> &str {
    node_id.get(..12).unwrap_or(node_id)
}

impl PipelineRun {
    /// Connects to every stage (each within `timeout`) with this node's TLS identity.
    pub async fn connect(
        addresses: Vec<StageAddress>,
        tls: &TlsFiles,
        max_message_bytes: usize,
        timeout: Duration,
    ) -> Result<Self, StageFailure> {
        let mut stages = Vec::with_capacity(addresses.len());
        for (index, address) in addresses.into_iter().enumerate() {
            let failed = |cause: String| StageFailure {
                stage: Some(index),
                message: format!("connecting to {}: {cause}", describe(index, &address)),
            };
            let channel = tokio::time::timeout(timeout, tls.connect(&address.endpoint))
                .await
                .map_err(|_| failed(format!("no answer within {} ms", timeout.as_millis())))?
                .map_err(|e| failed(e.to_string()))?;
            let client = StageTrainerClient::new(channel)
                .max_decoding_message_size(max_message_bytes)
                .max_encoding_message_size(max_message_bytes);
            stages.push(Stage { address, client });
        }
        if stages.is_empty() {
            return Err(StageFailure {
                stage: None,
                message: "a pipeline needs at least one stage".into(),
            });
        }
        Ok(Self {
            stages,
            round: 0,
            max_message_bytes,
        })
    }

    pub fn addresses(&self) -> Vec<StageAddress> {
        self.stages.iter().map(|s| s.address.clone()).collect()
    }

    fn failure(&self, index: usize, call: &str, status: &tonic::Status) -> StageFailure {
        StageFailure {
            stage: Some(index),
            message: format!(
                "{} refused {call}: {} ({:?})",
                describe(index, &self.stages[index].address),
                status.message(),
                status.code()
            ),
        }
    }

    /// Runs `call` on every stage at once, each within `timeout`; the answers in stage
    /// order, or the failure of the first stage (in pipeline order) that failed.
    async fn on_every_stage<T, F, Fut>(
        &self,
        name: &str,
        timeout: Duration,
        call: F,
    ) -> Result<Vec<T>, StageFailure>
    where
        T: Send + 'static,
        F: Fn(StageTrainerClient<Channel>, &StageAddress) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>
            + Send
            + 'static,
    {
        let mut calls = tokio::task::JoinSet::new();
        for (index, stage) in self.stages.iter().enumerate() {
            let answer = call(stage.client.clone(), &stage.address);
            calls.spawn(async move { (index, tokio::time::timeout(timeout, answer).await) });
        }
        let mut answers: Vec<Option<Result<T, StageFailure>>> =
            (0..self.stages.len()).map(|_| None).collect();
        while let Some(joined) = calls.join_next().await {
            let (index, answer) = joined.map_err(|e| StageFailure {
                stage: None,
                message: format!("{name}: a call task failed: {e}"),
            })?;
            answers[index] = Some(match answer {
                Ok(Ok(response)) => Ok(response.into_inner()),
                Ok(Err(status)) => Err(self.failure(index, name, &status)),
                Err(_) => Err(StageFailure {
                    stage: Some(index),
                    message: format!(
                        "{} did not answer {name} within {} ms",
                        describe(index, &self.stages[index].address),
                        timeout.as_millis()
                    ),
                }),
            });
        }
        answers
            .into_iter()
            .map(|a| {
                a.unwrap_or_else(|| {
                    Err(StageFailure {
                        stage: None,
                        message: format!("{name}: a stage's call went missing"),
                    })
                })
            })
            .collect()
    }

    /// Starts `round` on every stage from the round's global weights; returns the optimizer
    /// steps the stages' moments have seen (the first stage's; they move together).
    pub async fn start_round(
        &mut self,
        round: u64,
        pipeline_id: &str,
        reset_optimizer: bool,
        weights_round: Option<u64>,
        timeout: Duration,
    ) -> Result<u64, StageFailure> {
        // Set first: ending the round after a failed start names this round.
        self.round = round;
        let steps = self
            .on_every_stage("StartRound", timeout, |mut client, address| {
                let request = StartRoundRequest {
                    span: layer_span(address.span),
                    round,
                    pipeline_id: pipeline_id.to_string(),
                    reset_optimizer,
                    weights_round,
                };
                async move { client.start_round(request).await }
            })
            .await?;
        let first = steps.first().map(|s| s.optimizer_steps).unwrap_or(0);
        if let Some((index, other)) = steps
            .iter()
            .enumerate()
            .find(|(_, s)| s.optimizer_steps != first)
        {
            // Moments from different histories would not make one optimizer: start them over.
            tracing::info!(
                stage = index,
                steps = other.optimizer_steps,
                first,
                "stages' optimizer histories differ; resetting them"
            );
            return Box::pin(self.start_round(round, pipeline_id, true, weights_round, timeout))
                .await;
        }
        Ok(first)
    }

    /// Ends the round on every stage; with `submit`, each stage then sends its Δ to the
    /// aggregators (claiming `tokens`). Returns the Δ bytes the stages sent.
    pub async fn end_round(
        &self,
        timeout: Duration,
        submit: bool,
        tokens: u64,
    ) -> Result<u64, StageFailure> {
        let round = self.round;
        self.on_every_stage("EndRound", timeout, |mut client, address| {
            let request = EndRoundRequest {
                span: layer_span(address.span),
                round,
                submit,
                tokens,
            };
            async move { client.end_round(request).await }
        })
        .await
        .map(|ended| ended.iter().map(|e| e.submitted_bytes).sum())
    }

    /// The round of the global weights each stage serves, in stage order.
    pub async fn served_rounds(&self, timeout: Duration) -> Result<Vec<u64>, StageFailure> {
        self.on_every_stage("Progress", timeout, |mut client, _| async move {
            client.progress(ProgressRequest {}).await
        })
        .await
        .map(|answers| answers.iter().map(|p| p.served_round).collect())
    }

    /// Ends the round early on every stage that answers within `timeout`, all at once (a
    /// hung one costs `timeout` once): each drops its step's micro-batches and gradients and
    /// keeps its training copy for Δ. After a failure some stages may have stepped and others
    /// not, so the round is ended, not the step.
    pub async fn abandon(&self, timeout: Duration) {
        let mut calls = tokio::task::JoinSet::new();
        for (index, stage) in self.stages.iter().enumerate() {
            let mut client = stage.client.clone();
            let end = EndRoundRequest {
                span: layer_span(stage.address.span),
                round: self.round,
                submit: false,
                tokens: 0,
            };
            calls.spawn(async move {
                match tokio::time::timeout(timeout, client.end_round(end)).await {
                    Ok(Err(status)) => {
                        tracing::debug!(stage = index, error = %status.message(), "ending the round on a stage")
                    }
                    Err(_) => tracing::debug!(stage = index, "ending the round: no answer"),
                    Ok(Ok(_)) => {}
                }
            });
        }
        while calls.join_next().await.is_some() {}
    }

    fn at(&self, index: usize, step: u64) -> Option<StepRef> {
        Some(StepRef {
            span: layer_span(self.stages[index].address.span),
            round: self.round,
            step,
        })
    }

    /// Inner step `step` on `batch`: `rows` windows of `seq_len + 1` token ids, row-major
    /// (`[rows, seq_len + 1]`; inputs are each window's first `seq_len`, targets its last).
    pub async fn step(
        &self,
        step: u64,
        batch: &[i64],
        rows: usize,
        lr: f64,
        plan: &StepPlan,
    ) -> Result<StepReport, StageFailure> {
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + plan.deadline;
        let m = plan.micro_batches as usize;
        let window = batch.len() / rows.max(1);
        if rows == 0 || !rows.is_multiple_of(m) || window < 2 || window * rows != batch.len() {
            return Err(StageFailure {
                stage: None,
                message: format!(
                    "a batch of {} ids in {rows} rows does not split into {m} micro-batches of windows",
                    batch.len()
                ),
            });
        }
        let seq_len = window - 1;
        let rows_per = rows / m;
        // Activations and gradients of a micro-batch, at most f32: streamed in chunks when
        // they would not fit in one message.
        let activation_bytes = rows_per * seq_len * plan.hidden_size * 4;
        // Token ids and targets ride in the same message, up to 10 bytes each as varints.
        let message_bytes = activation_bytes + 2 * 10 * rows_per * seq_len + MESSAGE_OVERHEAD_BYTES;
        let streams = (message_bytes > self.max_message_bytes).then(|| Streams {
            chunk_bytes: (self.max_message_bytes / 2).max(1),
            limits: StreamLimits {
                tensor: Limits {
                    max_bytes: activation_bytes.max(1) * 2,
                    ..Limits::default()
                },
                max_chunks: neuroshard_common::tensor::DEFAULT_MAX_CHUNKS,
            },
        });
        // [rows_per, seq_len] inputs and targets of each micro-batch.
        let micro: Vec<(Vec<i64>, Vec<i64>)> = (0..m)
            .map(|mb| {
                let rows = &batch[mb * rows_per * window..(mb + 1) * rows_per * window];
                let inputs = rows.chunks(window).flat_map(|w| &w[..seq_len]).copied();
                let targets = rows.chunks(window).flat_map(|w| &w[1..]).copied();
                (inputs.collect(), targets.collect())
            })
            .collect();

        let n = self.stages.len();
        // forward[s]: hidden states into stage s (from s − 1); backward[s]: gradients into
        // stage s (from s + 1). Both schedules run forwards, and backwards, in micro-batch
        // order on every stage, so each channel carries them in order.
        let (forward_tx, forward_rx): (Vec<_>, Vec<_>) =
            (0..n).map(|_| unbounded_channel::<WireTensor>()).unzip();
        let (backward_tx, backward_rx): (Vec<_>, Vec<_>) =
            (0..n).map(|_| unbounded_channel::<WireTensor>()).unzip();
        let doing: Arc<Mutex<Vec<Option<String>>>> = Arc::new(Mutex::new(vec![None; n]));
        let mut forward_rx: Vec<Option<UnboundedReceiver<WireTensor>>> =
            forward_rx.into_iter().map(Some).collect();
        let mut backward_rx: Vec<Option<UnboundedReceiver<WireTensor>>> =
            backward_rx.into_iter().map(Some).collect();
        let micro = Arc::new(micro);
        let mut tasks = tokio::task::JoinSet::new();
        for s in 0..n {
            let task = StageTask {
                index: s,
                last: s + 1 == n,
                at: self.at(s, step),
                client: self.stages[s].client.clone(),
                ops: stage_ops(plan.schedule, n as u32, s as u32, plan.micro_batches),
                micro: micro.clone(),
                rows_per: rows_per as u32,
                micro_batches: m,
                streams,
                hidden_in: if s > 0 { forward_rx[s].take() } else { None },
                grad_in: if s + 1 < n {
                    backward_rx[s].take()
                } else {
                    None
                },
                hidden_out: (s + 1 < n).then(|| forward_tx[s + 1].clone()),
                grad_out: (s > 0).then(|| backward_tx[s - 1].clone()),
                doing: doing.clone(),
            };
            tasks.spawn(task.run());
        }
        // Only the tasks hold senders now: a task that ends closes its neighbours' inputs.
        drop((forward_tx, backward_tx));

        let mut loss = 0.0;
        let mut busy = vec![Duration::ZERO; n];
        let mut failure: Option<StageFailure> = None;
        let mut input_closed = false;
        loop {
            let next = match tokio::time::timeout_at(deadline, tasks.join_next()).await {
                Ok(Some(joined)) => joined,
                Ok(None) => break,
                Err(_) => {
                    let doing = doing.lock().unwrap_or_else(PoisonError::into_inner).clone();
                    let hung: Vec<String> = doing
                        .iter()
                        .enumerate()
                        .filter_map(|(s, call)| {
                            call.as_ref().map(|call| {
                                format!(
                                    "{} did not answer {call}",
                                    describe(s, &self.stages[s].address)
                                )
                            })
                        })
                        .collect();
                    let stage = doing.iter().position(Option::is_some);
                    return Err(StageFailure {
                        stage,
                        message: format!(
                            "step {step} passed its deadline of {} ms: {}",
                            plan.deadline.as_millis(),
                            if hung.is_empty() {
                                "no stage was in a call".into()
                            } else {
                                hung.join("; ")
                            }
                        ),
                    });
                }
            };
            match joined_result(next) {
                Ok(done) => {
                    loss += done.loss;
                    busy[done.index] = done.busy;
                }
                // A stage whose neighbour failed only lost its input: the neighbour's own
                // failure is the one to report.
                Err(StageError::InputClosed) => input_closed = true,
                Err(StageError::Call {
                    index,
                    call,
                    status,
                }) => {
                    if failure.is_none() {
                        failure = Some(self.failure(index, &call, &status));
                    }
                    tasks.abort_all();
                }
                Err(StageError::Task(message)) => {
                    failure.get_or_insert(StageFailure {
                        stage: None,
                        message,
                    });
                    tasks.abort_all();
                }
            }
        }
        if let Some(failure) = failure {
            return Err(failure);
        }
        if input_closed {
            // Cannot happen while every stage answers in full; never step on a partial pass.
            return Err(StageFailure {
                stage: None,
                message: format!("step {step}: a stage's input ended before its micro-batches did"),
            });
        }

        // A stage that hangs in GradNorm or Step is named against the step's deadline too.
        let past_deadline = |failure: StageFailure| {
            if tokio::time::Instant::now() >= deadline {
                StageFailure {
                    message: format!(
                        "step {step} passed its deadline of {} ms: {}",
                        plan.deadline.as_millis(),
                        failure.message
                    ),
                    ..failure
                }
            } else {
                failure
            }
        };
        // Global clipping: one coefficient from every stage's squared norm.
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        let norms = self
            .on_every_stage("GradNorm", remaining, |mut client, address| {
                let request = GradNormRequest {
                    at: Some(StepRef {
                        span: layer_span(address.span),
                        round: self.round,
                        step,
                    }),
                };
                async move { client.grad_norm(request).await }
            })
            .await
            .map_err(past_deadline)?;
        let total: f64 = norms.iter().map(|r| r.squared_norm).sum();
        if !total.is_finite() {
            return Err(StageFailure {
                stage: norms.iter().position(|r| !r.squared_norm.is_finite()),
                message: format!("step {step}: the gradient norm is not finite ({total})"),
            });
        }
        let clip_coefficient = neuroshard_model::adamw::clip_coefficient(total, plan.grad_clip);
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        self.on_every_stage("Step", remaining, |mut client, address| {
            let request = StepRequest {
                at: Some(StepRef {
                    span: layer_span(address.span),
                    round: self.round,
                    step,
                }),
                lr,
                clip_coefficient,
            };
            async move { client.step(request).await }
        })
        .await
        .map_err(past_deadline)?;
        Ok(StepReport {
            loss: loss / m as f64,
            clip_coefficient,
            tokens: (rows * seq_len) as u64,
            wall: started.elapsed(),
            busy,
        })
    }
}

/// What a stage's task ends with.
struct StageDone {
    index: usize,
    /// Sum of its micro-batches' losses (last stage only; 0 elsewhere).
    loss: f64,
    busy: Duration,
}

enum StageError {
    /// A call the stage refused or could not take.
    Call {
        index: usize,
        call: String,
        status: tonic::Status,
    },
    /// The stage's input ended early: a neighbour failed.
    InputClosed,
    Task(String),
}

fn joined_result(
    joined: Result<Result<StageDone, StageError>, tokio::task::JoinError>,
) -> Result<StageDone, StageError> {
    match joined {
        Ok(result) => result,
        Err(e) if e.is_cancelled() => Err(StageError::InputClosed),
        Err(e) => Err(StageError::Task(format!("a stage task failed: {e}"))),
    }
}

/// One stage's part of a step: its operations in schedule order.
struct StageTask {
    index: usize,
    last: bool,
    at: Option<StepRef>,
    client: StageTrainerClient<Channel>,
    ops: Vec<Op>,
    micro: Arc<Vec<(Vec<i64>, Vec<i64>)>>,
    rows_per: u32,
    micro_batches: usize,
    streams: Option<Streams>,
    hidden_in: Option<UnboundedReceiver<WireTensor>>,
    grad_in: Option<UnboundedReceiver<WireTensor>>,
    hidden_out: Option<UnboundedSender<WireTensor>>,
    grad_out: Option<UnboundedSender<WireTensor>>,
    doing: Arc<Mutex<Vec<Option<String>>>>,
}

impl StageTask {
    fn set_doing(&self, call: Option<String>) {
        self.doing.lock().unwrap_or_else(PoisonError::into_inner)[self.index] = call;
    }

    async fn run(mut self) -> Result<StageDone, StageError> {
        let first = self.index == 0;
        let mut loss = 0.0;
        let mut busy = Duration::ZERO;
        let ops = std::mem::take(&mut self.ops);
        for op in ops {
            match op {
                Op::Forward(mb) => {
                    let hidden = match &mut self.hidden_in {
                        Some(rx) => Some(rx.recv().await.ok_or(StageError::InputClosed)?),
                        None => None,
                    };
                    let (inputs, targets) = &self.micro[mb as usize];
                    let request = TrainForwardRequest {
                        at: self.at,
                        micro_batch: u64::from(mb),
                        tokens: if first { inputs.clone() } else { Vec::new() },
                        token_rows: self.rows_per,
                        hidden,
                        targets: if self.last {
                            targets.clone()
                        } else {
                            Vec::new()
                        },
                        loss_scale: 1.0 / self.micro_batches as f64,
                    };
                    let call = format!("Forward of micro-batch {mb}");
                    self.set_doing(Some(call.clone()));
                    let started = Instant::now();
                    let response = forward(&mut self.client, request, self.streams).await;
                    busy += started.elapsed();
                    self.set_doing(None);
                    let response = response.map_err(|status| StageError::Call {
                        index: self.index,
                        call,
                        status,
                    })?;
                    if self.last {
                        loss += response.loss;
                    } else if let Some(out) = &self.hidden_out {
                        let hidden = response.hidden.ok_or_else(|| StageError::Call {
                            index: self.index,
                            call: format!("Forward of micro-batch {mb}"),
                            status: tonic::Status::internal("the answer has no hidden state"),
                        })?;
                        // The next stage gone means its own failure is being reported.
                        let _ = out.send(hidden);
                    }
                }
                Op::Backward(mb) => {
                    let grad = match &mut self.grad_in {
                        Some(rx) => Some(rx.recv().await.ok_or(StageError::InputClosed)?),
                        None => None,
                    };
                    let request = TrainBackwardRequest {
                        at: self.at,
                        micro_batch: u64::from(mb),
                        grad,
                    };
                    let call = format!("Backward of micro-batch {mb}");
                    self.set_doing(Some(call.clone()));
                    let started = Instant::now();
                    let response = backward(&mut self.client, request, self.streams).await;
                    busy += started.elapsed();
                    self.set_doing(None);
                    let response = response.map_err(|status| StageError::Call {
                        index: self.index,
                        call,
                        status,
                    })?;
                    if let Some(out) = &self.grad_out {
                        let grad = response.input_grad.ok_or_else(|| StageError::Call {
                            index: self.index,
                            call: format!("Backward of micro-batch {mb}"),
                            status: tonic::Status::internal("the answer has no input gradient"),
                        })?;
                        let _ = out.send(grad);
                    }
                }
            }
        }
        Ok(StageDone {
            index: self.index,
            loss,
            busy,
        })
    }
}

/// Forward, unary or streamed.
async fn forward(
    client: &mut StageTrainerClient<Channel>,
    request: TrainForwardRequest,
    streams: Option<Streams>,
) -> Result<TrainForwardResponse, tonic::Status> {
    let Some(streams) = streams else {
        return Ok(client.forward(request).await?.into_inner());
    };
    let parts = split::<TrainForwardStreamRequest>(request, streams.chunk_bytes);
    let mut responses = client
        .forward_stream(tokio_stream::iter(parts))
        .await?
        .into_inner();
    receive::<TrainForwardStreamResponse>(&mut responses, streams.limits, |_| Ok(())).await
}

/// Backward, unary or streamed.
async fn backward(
    client: &mut StageTrainerClient<Channel>,
    request: TrainBackwardRequest,
    streams: Option<Streams>,
) -> Result<TrainBackwardResponse, tonic::Status> {
    let Some(streams) = streams else {
        return Ok(client.backward(request).await?.into_inner());
    };
    let parts = split::<TrainBackwardStreamRequest>(request, streams.chunk_bytes);
    let mut responses = client
        .backward_stream(tokio_stream::iter(parts))
        .await?
        .into_inner();
    receive::<TrainBackwardStreamResponse>(&mut responses, streams.limits, |_| Ok(())).await
}
