//! One generation through the swarm: prefill, then one decode step per token, each step
//! passing through every hop of the route and ending in logits the gateway samples from.
//!
//! Failover: when a hop times out or fails, that hop's span is re-routed over other holders
//! (one node or a chain of them), each new node rebuilds the session's KV cache by replaying
//! everything the old node had consumed, and the step continues where it stopped. To replay
//! without bothering upstream nodes, the gateway keeps each hop's consumed input: token ids
//! for the first hop, hidden states `[1, positions, hidden]` for the others, within a memory
//! budget ([`super::replay`]). Past the budget only the token ids are kept, and a new node's
//! input is recomputed when it is needed: every hop before it replays its own session from the
//! token ids, each passing its output to the next, and the step starts again from the first
//! hop. Sampling happens here with a seeded sampler, so the tokens are the same with or
//! without a failure, and with or without the budget.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use neuroshard_common::tensor::{Limits, check, decode_f32};
use neuroshard_common::{Error, ErrorKind};
use neuroshard_proto::common::v1::Tensor as WireTensor;
use neuroshard_runtime::telemetry::names::gateway;
use neuroshard_text::sampling::Sampler;
use tokio::sync::mpsc;
use tracing::Instrument;

use super::deadlines::published_ms_per_position;
use super::hops::{Hop, HopError, HopInput};
use super::replay::HopHistories;
use super::routing::{best_chain, uncovered};
use super::state::{EngineState, epoch_ms};
use crate::generator::{FinishReason, GenerationJob, Step};

/// A hop of this request's route, and whether its node still has to rebuild the session.
#[derive(Debug, Clone)]
struct RouteHop {
    hop: Hop,
    needs_replay: bool,
}

/// Why an attempt at a hop did not produce its output.
enum CallError {
    /// The node failed: the hop moves to another holder.
    Hop(HopError),
    /// The hop's node must replay, and its input is not kept: recompute it upstream.
    Recompute,
}

impl From<HopError> for CallError {
    fn from(error: HopError) -> Self {
        Self::Hop(error)
    }
}

/// How a generation ended, for the status document.
enum Outcome {
    Done,
    Cancelled,
    Failed(Error),
}

struct Generation {
    engine: Arc<EngineState>,
    request_id: String,
    session: String,
    route: Vec<RouteHop>,
    /// Hidden states each hop after the first has consumed so far, while the budget allows.
    histories: HopHistories,
    /// Token ids the first hop has consumed so far.
    tokens: Vec<i64>,
    excluded: HashSet<String>,
    failovers: u32,
}

/// Runs `job`, sending each sampled token on `tx` as soon as it exists.
pub(super) async fn run(
    engine: Arc<EngineState>,
    job: GenerationJob,
    tx: mpsc::Sender<Result<Step, Error>>,
) {
    let span = tracing::info_span!(
        "generate",
        request_id = %job.request_id,
        prompt_tokens = job.prompt.len(),
        max_tokens = job.max_tokens,
    );
    // Workers treat a session id as a capability: 128 random bits in hex, nothing guessable
    // such as the request id (which the client sees).
    let session = format!("{:032x}", rand::random::<u128>());
    tracing::debug!(parent: &span, session = %session, "session opened");
    let prompt_tokens = u32::try_from(job.prompt.len()).unwrap_or(u32::MAX);
    engine
        .tracker()
        .begin(&job.request_id, prompt_tokens, epoch_ms());
    let mut generation = Generation {
        engine: engine.clone(),
        request_id: job.request_id.clone(),
        session,
        route: Vec::new(),
        histories: HopHistories::new(
            engine.replay_memory.clone(),
            engine.config.replay_bytes_per_generation,
            0,
        ),
        tokens: Vec::new(),
        excluded: HashSet::new(),
        failovers: 0,
    };
    let outcome = generation.drive(&job, &tx).instrument(span).await;
    generation.close().await;
    let (state, error) = match outcome {
        Outcome::Done => ("done", None),
        Outcome::Cancelled => ("cancelled", None),
        Outcome::Failed(e) => {
            tracing::warn!(request_id = %job.request_id, error = %e.message, "generation failed");
            let message = e.message.clone();
            let _ = tx.send(Err(e)).await;
            ("failed", Some(message))
        }
    };
    engine.tracker().finish(&job.request_id, state, error);
}

impl Generation {
    async fn drive(
        &mut self,
        job: &GenerationJob,
        tx: &mpsc::Sender<Result<Step, Error>>,
    ) -> Outcome {
        match self.generate(job, tx).await {
            Ok(true) => Outcome::Done,
            Ok(false) => Outcome::Cancelled,
            Err(e) => Outcome::Failed(e),
        }
    }

    /// `Ok(false)` when the receiver went away (the client disconnected or a stop string
    /// matched).
    async fn generate(
        &mut self,
        job: &GenerationJob,
        tx: &mpsc::Sender<Result<Step, Error>>,
    ) -> Result<bool, Error> {
        let view = self.engine.view();
        let architecture = view.architecture.clone().ok_or_else(|| {
            Error::new(
                ErrorKind::Unavailable,
                "no model is assigned in the swarm yet",
            )
        })?;
        let max_seq = architecture.max_seq_len as usize;
        if job.prompt.is_empty() {
            return Err(Error::invalid_argument("prompt: empty"));
        }
        if job.prompt.len() >= max_seq {
            return Err(Error::invalid_argument(format!(
                "prompt: {} tokens, the model's context holds {max_seq} (including at least one generated token)",
                job.prompt.len()
            )));
        }
        let mut sampler = Sampler::new(job.sampling.clone())
            .map_err(|e| Error::invalid_argument(e.to_string()))?;
        self.plan(architecture.num_layers).await?;

        let eos = self.engine.config.eos_token;
        let mut input: Vec<i64> = job.prompt.iter().map(|&t| i64::from(t)).collect();
        let mut produced = 0u32;
        while produced < job.max_tokens {
            let logits = self.step(&input).await?;
            self.tokens.extend_from_slice(&input);
            let token = sampler
                .sample(&logits)
                .map_err(|e| Error::internal(format!("sampling: {e}")))?;
            if Some(token) == eos {
                return Ok(tx
                    .send(Ok(Step::Finished(FinishReason::EndOfSequence)))
                    .await
                    .is_ok());
            }
            produced += 1;
            self.engine.tracker().token(&self.request_id, epoch_ms());
            if tx.send(Ok(Step::Token(token))).await.is_err() {
                return Ok(false);
            }
            // The context is full: the sampled token cannot be fed back.
            if self.tokens.len() + 1 > max_seq {
                break;
            }
            input = vec![i64::from(token)];
        }
        Ok(tx
            .send(Ok(Step::Finished(FinishReason::Length)))
            .await
            .is_ok())
    }

    /// Picks the route for `[0, num_layers)`.
    async fn plan(&mut self, num_layers: u32) -> Result<(), Error> {
        let chain = self.patient_chain(0, num_layers).await?;
        let mut stats = self.engine.stats();
        for hop in &chain {
            stats.open(&hop.node_id);
        }
        drop(stats);
        self.histories = HopHistories::new(
            self.engine.replay_memory.clone(),
            self.engine.config.replay_bytes_per_generation,
            chain.len(),
        );
        self.route = chain
            .into_iter()
            .map(|hop| RouteHop {
                hop,
                needs_replay: false,
            })
            .collect();
        self.publish_route();
        Ok(())
    }

    /// The best chain tiling `[from, to)`, waiting up to the route patience for one to exist:
    /// when a span's last live holder has just died, the registry places the span on another
    /// node, which loads it, and the request goes on there (replaying, so the output is the
    /// same) instead of failing at once. While waiting, a node this request failed on becomes
    /// usable again once its back-off has passed: a holder restarted under the same key, or
    /// one that was still loading, is often the one that comes back.
    async fn patient_chain(&mut self, from: u32, to: u32) -> Result<Vec<Hop>, Error> {
        let patience = self.engine.config.route_patience;
        let started = Instant::now();
        let mut waited = false;
        loop {
            // Registered before looking, so an assignment that lands in between still wakes us.
            let changed = self.engine.view_changed.notified();
            match self.chain(from, to) {
                Ok(chain) => {
                    if waited {
                        tracing::info!(
                            request_id = %self.request_id,
                            layers = ?(from, to),
                            waited_ms = started.elapsed().as_millis() as u64,
                            "a route came back; going on"
                        );
                    }
                    return Ok(chain);
                }
                Err(e) if started.elapsed() >= patience => return Err(e),
                Err(e) => {
                    if !waited {
                        tracing::info!(
                            request_id = %self.request_id,
                            error = %e.message,
                            patience_ms = patience.as_millis() as u64,
                            "no route for now; waiting for the registry to place the span"
                        );
                        waited = true;
                    }
                }
            }
            let left = patience.saturating_sub(started.elapsed());
            // Back-offs expire without a new assignment, so look again at least this often.
            let tick = left.min(Duration::from_millis(250));
            let _ = tokio::time::timeout(tick, changed).await;
            let now = Instant::now();
            let stats = self.engine.stats();
            self.excluded
                .retain(|id| stats.backed_off_until(id, now).is_some());
        }
    }

    /// The best chain of usable nodes tiling `[from, to)` right now.
    fn chain(&self, from: u32, to: u32) -> Result<Vec<Hop>, Error> {
        let view = self.engine.view();
        let loads = self.engine.stats().loads(Instant::now());
        let chain = best_chain(&view.nodes, &loads, from, to, &self.excluded, || {
            0.9 + 0.2 * rand::random::<f64>()
        })
        .ok_or_else(|| {
            let missing = uncovered(&view.nodes, from, to, &self.excluded);
            let detail = if missing.is_empty() {
                "no usable holder".to_string()
            } else {
                let spans: Vec<String> = missing
                    .iter()
                    .map(|(start, end)| format!("[{start}, {end})"))
                    .collect();
                format!("no live holder for layers {}", spans.join(", "))
            };
            Error::new(
                ErrorKind::Unavailable,
                format!("no route through layers [{from}, {to}): {detail}"),
            )
        })?;
        Ok(chain
            .into_iter()
            .map(|i| {
                let node = &view.nodes[i];
                Hop {
                    node_id: node.id.clone(),
                    endpoint: node.endpoint.clone(),
                    start: node.start,
                    end: node.end,
                }
            })
            .collect())
    }

    /// Sends `input` (new token ids at the session's next positions) through every hop and
    /// returns the last position's logits.
    async fn step(&mut self, input: &[i64]) -> Result<Vec<f32>, Error> {
        let position = u32::try_from(self.tokens.len())
            .map_err(|_| Error::invalid_argument("sequence too long"))?;
        let prefill = position == 0;
        let mut current = HopInput::Tokens(input.to_vec());
        let mut k = 0;
        while k < self.route.len() {
            let config = &self.engine.config;
            let positions = current.positions();
            // A prefill's work grows with the prompt; a decode step is one position.
            let (deadline, ceiling) = if prefill {
                (self.work_deadline(k, positions), config.max_work_deadline)
            } else {
                let deadline = self.engine.stats().hop_deadline(
                    &self.route[k].hop.node_id,
                    config.hop_deadline,
                    config.prefill_deadline,
                );
                (deadline, config.prefill_deadline)
            };
            match self
                .call(k, current.clone(), position, deadline, ceiling)
                .await
            {
                Ok((output, elapsed)) => {
                    let node = &self.route[k].hop.node_id;
                    metrics::histogram!(gateway::HOP_SECONDS, "phase" => if prefill { "prefill" } else { "decode" })
                        .record(elapsed.as_secs_f64());
                    if prefill {
                        self.engine.stats().record_work(node, positions, elapsed);
                    } else {
                        self.engine.stats().record_latency(node, elapsed);
                    }
                    if let HopInput::Hidden(hidden) = &current {
                        self.histories.append(k, hidden)?;
                    }
                    current = HopInput::Hidden(output);
                    k += 1;
                }
                Err(CallError::Hop(e)) => self.fail_over(k, e).await?,
                Err(CallError::Recompute) => {
                    // Every hop before `k` rebuilds its own session from the token ids, each
                    // handing its replay output to the next, and the step starts over: the
                    // hops already past it this step re-run it on their rebuilt sessions.
                    self.histories.stop_keeping();
                    for hop in &mut self.route[..k] {
                        hop.needs_replay = true;
                    }
                    tracing::debug!(request_id = %self.request_id, hop = k, "recomputing a replay input from the token ids");
                    current = HopInput::Tokens(input.to_vec());
                    k = 0;
                }
            }
        }
        let HopInput::Hidden(logits) = current else {
            return Err(Error::internal("route has no hops"));
        };
        decode_f32(&logits, "logits", &Limits::default())
    }

    /// The deadline of hop `k` computing `positions` positions at once (a prefill or a
    /// replay): it grows with what one position is expected to cost on the node, measured by
    /// this gateway if it can, else as the registry publishes it.
    fn work_deadline(&self, k: usize, positions: usize) -> Duration {
        let node = &self.route[k].hop.node_id;
        let measured = self.engine.stats().ms_per_position(node);
        let cost = measured.or_else(|| {
            let view = self.engine.view();
            let n = view.node(node)?;
            published_ms_per_position(n.tokens_per_s, n.observed_tokens_per_s)
        });
        self.engine
            .config
            .work_deadlines()
            .deadline(positions, cost)
    }

    /// One attempt at hop `k`: rebuild the node's session first when it is new to it. The
    /// forward has `deadline`, stretched up to `ceiling` while the node shows it is alive.
    async fn call(
        &mut self,
        k: usize,
        input: HopInput,
        position: u32,
        deadline: Duration,
        ceiling: Duration,
    ) -> Result<(WireTensor, Duration), CallError> {
        let hop = self.route[k].hop.clone();
        if self.route[k].needs_replay {
            let history = if k == 0 {
                HopInput::Tokens(self.tokens.clone())
            } else {
                match self.histories.replay_input(k) {
                    Some(hidden) => HopInput::Hidden(hidden),
                    None => return Err(CallError::Recompute),
                }
            };
            let positions = history.positions();
            let replayed = self
                .engine
                .hops
                .replay(
                    &hop,
                    &self.session,
                    history,
                    self.work_deadline(k, positions),
                    self.engine.config.max_work_deadline,
                )
                .await?;
            self.check_output(k, &replayed.tensor, positions)?;
            self.engine
                .stats()
                .record_work(&hop.node_id, positions, replayed.elapsed);
            // A node downstream that replays next (a multi-node replacement, or a recompute)
            // replays from this one's output.
            if k + 1 < self.route.len() && self.route[k + 1].needs_replay {
                self.histories.set_replayed(k + 1, replayed.tensor);
            }
            self.route[k].needs_replay = false;
            metrics::counter!(gateway::REPLAYS).increment(1);
        }
        let positions = input.positions();
        let out = self
            .engine
            .hops
            .forward(&hop, &self.session, input, position, deadline, ceiling)
            .await?;
        self.check_output(k, &out.tensor, positions)?;
        Ok((out.tensor, out.elapsed))
    }

    /// What hop `k`'s node computed for `positions` positions must be a well-formed, finite
    /// tensor of the right shape: `[1, positions, hidden]` from an inner hop, last-position
    /// logits `[1, 1, vocab]` from the last. Anything else (NaN from a broken kernel, say) is
    /// the node's failure, not the request's: the hop moves to another holder and the node is
    /// backed off, as for any failed hop.
    fn check_output(
        &self,
        k: usize,
        output: &WireTensor,
        positions: usize,
    ) -> Result<(), HopError> {
        check(output, "output", &Limits::default(), true)
            .map_err(|e| HopError::Failed(format!("bad output: {}", e.message)))?;
        let last = k + 1 == self.route.len();
        let rows = if last { 1 } else { positions as i64 };
        match output.shape[..] {
            [1, n, width] if n == rows && width > 0 => Ok(()),
            _ => Err(HopError::Failed(format!(
                "bad output: shape {:?} for {positions} positions{}",
                output.shape,
                if last {
                    " (expected last-position logits)"
                } else {
                    ""
                }
            ))),
        }
    }

    /// Moves hop `k` to other holders of its span after `error`.
    async fn fail_over(&mut self, k: usize, error: HopError) -> Result<(), Error> {
        let failed = self.route[k].hop.clone();
        self.failovers += 1;
        metrics::counter!(gateway::FAILOVERS).increment(1);
        let backoff = {
            let mut stats = self.engine.stats();
            stats.close(&failed.node_id);
            stats.record_failure(&failed.node_id, Instant::now())
        };
        self.engine.hops.forget(&failed.endpoint);
        self.excluded.insert(failed.node_id.clone());
        self.engine.tracker().failover(&self.request_id);
        tracing::warn!(
            request_id = %self.request_id,
            node = %failed.node_id,
            layers = ?(failed.start, failed.end),
            error = %error,
            backoff_ms = backoff.as_millis() as u64,
            "hop failed; moving it to another holder"
        );
        if self.failovers > self.engine.config.max_failovers {
            return Err(Error::new(
                ErrorKind::Unavailable,
                format!(
                    "layers [{}, {}) failed on {} ({error}) after {} failovers",
                    failed.start,
                    failed.end,
                    failed.node_id,
                    self.failovers - 1
                ),
            ));
        }
        let replacement = self.patient_chain(failed.start, failed.end).await?;
        let needs_replay = !self.tokens.is_empty();
        {
            let mut stats = self.engine.stats();
            for hop in &replacement {
                stats.open(&hop.node_id);
            }
        }
        let extra = replacement.len() - 1;
        self.route.splice(
            k..=k,
            replacement
                .into_iter()
                .map(|hop| RouteHop { hop, needs_replay }),
        );
        // The first replacement keeps hop k's history; inner boundaries get theirs from replay.
        self.histories.split(k, extra);
        self.publish_route();
        // Best effort: the old node may still hold the session.
        let hops = self.engine.clone();
        let session = self.session.clone();
        tokio::spawn(async move { hops.hops.end(&failed, &session).await });
        Ok(())
    }

    fn publish_route(&self) {
        let ids = self.route.iter().map(|r| r.hop.node_id.clone()).collect();
        self.engine.tracker().set_route(&self.request_id, ids);
    }

    /// Frees the session on every hop and the in-flight counts.
    async fn close(&mut self) {
        let route = std::mem::take(&mut self.route);
        {
            let mut stats = self.engine.stats();
            for r in &route {
                stats.close(&r.hop.node_id);
            }
        }
        for r in &route {
            self.engine.hops.end(&r.hop, &self.session).await;
        }
    }
}
