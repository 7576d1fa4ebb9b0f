//! The compute thread of a loaded span: the one place its layers run. Requests come in over a
//! channel and wait there, never on the async runtime, so control calls (Info, EndSession,
//! heartbeats, stream header checks) are answered while a forward runs.
//!
//! The thread alternates between two queues:
//! - decode steps (one new position of a session): every step waiting, up to
//!   `max_decode_batch` sessions, runs as one batched pass over the weights
//!   ([`Shard::forward_rows`]), each row at its own session's position;
//! - longer passes (prefills, replays, multi-position forwards): between two decode rounds,
//!   up to `prefill_chunk_positions` positions in all, each waiting request taking its turn
//!   (round-robin) with at most what is left of that budget. A long prompt holds up other
//!   sessions' decode steps by one budget at most, and a burst of short prompts is taken in
//!   one round rather than one per decode round: when a batched decode round grows with the
//!   sessions decoding, one prompt per round would leave the last of a burst waiting behind
//!   every round before it (8 streams together: p99 time to first token 5.0 s against 2.9 s
//!   without batching, until prompts shared the budget).
//!
//! A request whose caller has gone (its deadline passed) is dropped before its next chunk and
//! its session's cache restored to what it held before; so is one whose pass fails.

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::time::Instant;

use neuroshard_common::{Error, ErrorKind, Result};
use neuroshard_model::kv_cache::KvCache;
use neuroshard_model::tch::{Kind, Tensor};
use neuroshard_model::{Shard, ShardInput};
use neuroshard_proto::common::v1::Tensor as WireTensor;
use neuroshard_runtime::telemetry::names::worker as names;
use tokio::sync::oneshot;

use crate::convert::to_wire;
use crate::sessions::Session;

/// How the compute thread groups work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ComputeOptions {
    /// Most sessions whose decode steps run as one pass (1: no batching).
    pub max_decode_batch: usize,
    /// Positions of a long pass run between two rounds of decode steps.
    pub prefill_chunk_positions: i64,
}

/// What one request's pass produced.
#[derive(Debug)]
pub struct Pass {
    /// Hidden states of every new position, or the last position's logits (f32) from the head.
    pub output: WireTensor,
    /// Positions the session holds now.
    pub position: u32,
}

struct Job {
    /// [1, n] token ids, or [1, n, hidden] states in the shard's dtype.
    input: Tensor,
    session: Arc<Session>,
    /// Positions the caller says the session holds; checked against its cache.
    position: i64,
    reply: oneshot::Sender<Result<Pass>>,
}

/// The way into a span's compute thread. The thread stops once this is dropped and the work
/// already sent is done, so a span being replaced keeps serving the requests it took.
#[derive(Debug)]
pub struct ComputeQueue {
    jobs: Sender<Job>,
    largest_batch: Arc<AtomicUsize>,
}

impl ComputeQueue {
    /// Starts the compute thread that owns `shard`.
    pub fn start(shard: Shard, options: ComputeOptions) -> Result<Self> {
        let (jobs, incoming) = channel();
        let spec = shard.spec();
        let largest_batch = Arc::new(AtomicUsize::new(0));
        let scheduler = Scheduler::new(shard, options, largest_batch.clone());
        std::thread::Builder::new()
            .name(format!("compute-{}-{}", spec.start, spec.end))
            .spawn(move || scheduler.serve(&incoming))
            .map_err(|e| Error::internal(format!("starting the compute thread: {e}")))?;
        Ok(Self {
            jobs,
            largest_batch,
        })
    }

    /// The most sessions one decode pass has run together so far.
    pub fn largest_batch(&self) -> usize {
        self.largest_batch.load(Ordering::Relaxed)
    }

    /// Runs `input` on `session`, whose cache must hold `position` positions.
    pub async fn run(&self, input: Tensor, session: Arc<Session>, position: i64) -> Result<Pass> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job {
                input,
                session,
                position,
                reply,
            })
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

fn stopped() -> Error {
    Error::new(
        ErrorKind::Unavailable,
        "the compute thread of this span has stopped",
    )
}

fn moved(position: i64, holds: i64) -> Error {
    Error::failed_precondition(format!(
        "position: request is at {position}, the session holds {holds} positions (replay it)"
    ))
}

/// A long pass under way: how much of its input has run.
struct Chunked {
    job: Job,
    done: i64,
    /// Whether a chunk has started on the session's cache (which must then be restored if
    /// the pass does not complete).
    touched: bool,
    /// Outputs of the chunks so far (only the last one's, from the head).
    outputs: Vec<Tensor>,
}

struct Scheduler {
    shard: Shard,
    options: ComputeOptions,
    decodes: VecDeque<Job>,
    chunked: VecDeque<Chunked>,
    largest_batch: Arc<AtomicUsize>,
}

impl Scheduler {
    fn new(shard: Shard, options: ComputeOptions, largest_batch: Arc<AtomicUsize>) -> Self {
        Self {
            shard,
            options: ComputeOptions {
                max_decode_batch: options.max_decode_batch.max(1),
                prefill_chunk_positions: options.prefill_chunk_positions.max(1),
            },
            decodes: VecDeque::new(),
            chunked: VecDeque::new(),
            largest_batch,
        }
    }

    fn serve(mut self, incoming: &Receiver<Job>) {
        let _no_grad = neuroshard_model::tch::no_grad_guard();
        loop {
            if self.decodes.is_empty() && self.chunked.is_empty() {
                match incoming.recv() {
                    Ok(job) => self.admit(job),
                    Err(_) => return,
                }
            }
            while let Ok(job) = incoming.try_recv() {
                self.admit(job);
            }
            self.decode_round();
            self.chunk_round();
        }
    }

    fn admit(&mut self, job: Job) {
        if job.input.size().get(1) == Some(&1) {
            self.decodes.push_back(job);
        } else {
            self.chunked.push_back(Chunked {
                job,
                done: 0,
                touched: false,
                outputs: Vec::new(),
            });
        }
    }

    fn input<'a>(&self, x: &'a Tensor) -> ShardInput<'a> {
        if self.shard.spec().embed {
            ShardInput::Tokens(x)
        } else {
            ShardInput::Hidden(x)
        }
    }

    /// What goes back for `out` ([batch 1, seq, …]): the head's last position in f32.
    fn answer(&self, out: &Tensor, position: i64) -> Result<Pass> {
        let output = if self.shard.spec().head {
            let seq = out.size()[1];
            to_wire(&out.narrow(1, seq - 1, 1).to_kind(Kind::Float))?
        } else {
            to_wire(out)?
        };
        Ok(Pass {
            output,
            position: u32::try_from(position).map_err(|_| Error::internal("position past u32"))?,
        })
    }

    /// Takes the next decode steps, one per session, for one batch.
    fn next_batch(&mut self) -> Vec<Job> {
        let mut batch: Vec<Job> = Vec::new();
        let mut same_session = Vec::new();
        while batch.len() < self.options.max_decode_batch {
            let Some(job) = self.decodes.pop_front() else {
                break;
            };
            if job.reply.is_closed() {
                continue;
            }
            if batch.iter().any(|j| Arc::ptr_eq(&j.session, &job.session)) {
                same_session.push(job);
            } else {
                batch.push(job);
            }
        }
        for job in same_session.into_iter().rev() {
            self.decodes.push_front(job);
        }
        batch
    }

    /// Runs every waiting decode step (up to the batch limit) in one pass.
    fn decode_round(&mut self) {
        let batch = self.next_batch();
        if batch.is_empty() {
            return;
        }
        let sessions: Vec<Arc<Session>> = batch.iter().map(|j| j.session.clone()).collect();
        let mut caches = Vec::with_capacity(batch.len());
        let mut jobs = Vec::with_capacity(batch.len());
        for (job, session) in batch.into_iter().zip(&sessions) {
            match session.cache() {
                Ok(cache) if cache.len() == job.position => {
                    caches.push(cache);
                    jobs.push(job);
                }
                Ok(cache) => {
                    let _ = job.reply.send(Err(moved(job.position, cache.len())));
                }
                Err(e) => {
                    let _ = job.reply.send(Err(e));
                }
            }
        }
        if jobs.is_empty() {
            return;
        }
        let started = Instant::now();
        let outputs = {
            let mut refs: Vec<&mut KvCache> = caches.iter_mut().map(|c| &mut **c).collect();
            guarded(|| self.decode(&jobs, &mut refs))
        };
        metrics::counter!(names::POSITIONS).increment(jobs.len() as u64);
        metrics::histogram!(names::SPAN_COMPUTE_SECONDS).record(started.elapsed().as_secs_f64());
        metrics::histogram!(names::DECODE_BATCH_ROWS).record(jobs.len() as f64);
        self.largest_batch.fetch_max(jobs.len(), Ordering::Relaxed);
        match outputs {
            Ok(outputs) => {
                for ((job, cache), out) in jobs.into_iter().zip(&caches).zip(outputs) {
                    job.session.record_size(cache);
                    let _ = job.reply.send(self.answer(&out, cache.len()));
                }
            }
            Err(e) => {
                for (job, cache) in jobs.into_iter().zip(caches.iter_mut()) {
                    cache.truncate(job.position);
                    let _ = job.reply.send(Err(e.clone()));
                }
            }
        }
    }

    /// One position for each job: alone as a plain forward, several as one batched pass.
    fn decode(&self, jobs: &[Job], caches: &mut [&mut KvCache]) -> Result<Vec<Tensor>> {
        if let ([job], [cache]) = (jobs, &mut *caches) {
            let out = self
                .shard
                .forward(self.input(&job.input), Some(cache))
                .map_err(Error::from)?;
            return Ok(vec![out]);
        }
        let inputs: Vec<&Tensor> = jobs.iter().map(|j| &j.input).collect();
        let x = Tensor::cat(&inputs, 0);
        let out = self
            .shard
            .forward_rows(self.input(&x), caches)
            .map_err(Error::from)?;
        Ok((0..jobs.len() as i64)
            .map(|b| out.narrow(0, b, 1))
            .collect())
    }

    /// Runs long passes for up to `prefill_chunk_positions` positions in all: each waiting
    /// pass at most once, longest-waiting first, with what is left of the budget; a pass with
    /// more to do goes to the back of the queue.
    fn chunk_round(&mut self) {
        let mut budget = self.options.prefill_chunk_positions;
        let mut turns = self.chunked.len();
        while budget > 0 && turns > 0 {
            let Some(mut pass) = self.chunked.pop_front() else {
                return;
            };
            turns -= 1;
            let before = pass.done;
            let finished = self.chunk(&mut pass, budget);
            budget -= pass.done - before;
            match finished {
                Ok(false) if !pass.job.reply.is_closed() => self.chunked.push_back(pass),
                Ok(false) => self.restore(&pass),
                Ok(true) => {
                    let result = self.finish(&pass);
                    let _ = pass.job.reply.send(result);
                }
                Err(e) => {
                    self.restore(&pass);
                    let _ = pass.job.reply.send(Err(e));
                }
            }
        }
    }

    /// Runs one chunk of `pass`, of at most `limit` positions; whether it is complete.
    fn chunk(&self, pass: &mut Chunked, limit: i64) -> Result<bool> {
        let mut cache = pass.job.session.cache()?;
        if cache.len() != pass.job.position + pass.done {
            // Only the first chunk can meet a stale position; a later mismatch means another
            // request on the same session ran between two chunks.
            return Err(moved(pass.job.position + pass.done, cache.len()));
        }
        let total = pass.job.input.size()[1];
        let len = limit.min(total - pass.done);
        let piece = pass.job.input.narrow(1, pass.done, len);
        let started = Instant::now();
        pass.touched = true;
        let out = guarded(|| {
            self.shard
                .forward(self.input(&piece), Some(&mut cache))
                .map_err(Error::from)
        })?;
        metrics::counter!(names::POSITIONS).increment(len as u64);
        metrics::histogram!(names::SPAN_COMPUTE_SECONDS).record(started.elapsed().as_secs_f64());
        pass.done += len;
        if self.shard.spec().head {
            pass.outputs.clear();
        }
        pass.outputs.push(out);
        pass.job.session.record_size(&cache);
        Ok(pass.done == total)
    }

    fn finish(&self, pass: &Chunked) -> Result<Pass> {
        let out = Tensor::cat(&pass.outputs, 1);
        self.answer(&out, pass.job.position + pass.done)
    }

    /// Puts an abandoned or failed pass's session back where it was before the pass.
    fn restore(&self, pass: &Chunked) {
        if pass.touched
            && let Ok(mut cache) = pass.job.session.cache()
        {
            cache.truncate(pass.job.position);
            pass.job.session.record_size(&cache);
        }
    }
}

/// Runs a pass, turning a libtorch failure (tch panics on those) into an error for the
/// requests in it, so that the thread goes on serving the others.
fn guarded<T>(pass: impl FnOnce() -> Result<T>) -> Result<T> {
    catch_unwind(AssertUnwindSafe(pass)).unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("unknown failure");
        tracing::error!(error = what, "a pass through the span failed");
        Err(Error::internal("the pass through this node's span failed"))
    })
}
