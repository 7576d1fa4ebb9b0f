//! An in-process swarm for the engine's tests, over real gRPC on loopback: a registry whose
//! `Watch` stream sends whatever assignment the test publishes (and which records observation
//! reports), and shard workers that run a small deterministic stand-in for NeuroLLM with
//! per-session caches, so a replay that feeds a node the wrong history changes the output.
//! A worker can be slowed down (per position), made to return NaN, made to look like a node
//! still loading its span, or taken down (every call refused, as a dead node's would be).

#![allow(dead_code)]

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use neuroshard_common::tensor::{Limits, decode_f32, encode_f32};
use neuroshard_proto::common::v1::{Architecture, LayerSpan, Role, SignedEnvelope};
use neuroshard_proto::registry::v1::layer_registry_server::{LayerRegistry, LayerRegistryServer};
use neuroshard_proto::registry::v1::{
    AssignmentSnapshot, Capacity, DeregisterResponse, DrainResponse, GetAssignmentRequest,
    HeartbeatResponse, NodeAssignment, NodeState, ObservationsResponse, RegisterResponse,
    RoutesRequest, RoutesResponse, WatchRequest,
};
use neuroshard_proto::worker::v1::shard_worker_server::{ShardWorker, ShardWorkerServer};
use neuroshard_proto::worker::v1::{
    EndSessionRequest, EndSessionResponse, ForwardRequest, ForwardResponse, ForwardStreamRequest,
    ForwardStreamResponse, InfoRequest, InfoResponse, ReplayRequest, ReplayResponse,
    ReplayStreamRequest, ReplayStreamResponse,
};
use neuroshard_swarm_gateway::engine::{EngineConfig, SwarmEngine};
use neuroshard_swarm_gateway::generator::{GenerationJob, Generator, Step};
use neuroshard_text::sampling::{Sampler, SamplingParams};
use tokio::sync::watch;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

/// Width of the stand-in model's hidden state.
pub const HIDDEN: usize = 4;
/// Its vocabulary.
pub const VOCAB: usize = 48;
/// Its depth.
pub const LAYERS: u32 = 4;
/// Its context.
pub const MAX_SEQ: u32 = 512;
/// The architecture version the registry publishes and loaded workers report.
pub const ARCH_VERSION: u64 = 3;

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

// ---- The stand-in model: each layer mixes a position's row with the running mean of every
// row that layer has consumed in the session (its "KV cache"), so each output depends on the
// whole history; adding rows one by one or all at once gives the same bits.

/// Per-layer running sums of the rows a session's span has consumed.
#[derive(Debug, Clone)]
struct Cache {
    sums: Vec<[f32; HIDDEN]>,
    positions: usize,
}

impl Cache {
    fn new(start: u32, end: u32) -> Self {
        Self {
            sums: vec![[0.0; HIDDEN]; (end - start) as usize],
            positions: 0,
        }
    }
}

fn embed(token: i64) -> [f32; HIDDEN] {
    std::array::from_fn(|i| ((token * 37 + i as i64 * 11).rem_euclid(17)) as f32 / 17.0 - 0.5)
}

/// Runs layers `[start, end)` on one row, advancing `cache` by one position.
fn layers_row(start: u32, cache: &mut Cache, row: [f32; HIDDEN]) -> [f32; HIDDEN] {
    cache.positions += 1;
    let count = cache.positions as f32;
    let mut x = row;
    for (l, sum) in cache.sums.iter_mut().enumerate() {
        let layer = (start as usize + l) as f32;
        for i in 0..HIDDEN {
            sum[i] += x[i];
        }
        x = std::array::from_fn(|i| {
            (x[i] * 2.7 + sum[i] / count * 1.9 + count * 0.61 + layer * 0.7 + i as f32).sin()
        });
    }
    x
}

fn head(row: &[f32; HIDDEN]) -> Vec<f32> {
    (0..VOCAB)
        .map(|v| {
            row.iter()
                .enumerate()
                .map(|(i, x)| x * ((v * 7 + i * 3) as f32 * 0.37).sin())
                .sum()
        })
        .collect()
}

/// The rows a span consumes: embedded tokens for the first span, hidden rows otherwise.
fn input_rows(
    start: u32,
    tokens: &[i64],
    hidden: Option<&neuroshard_proto::common::v1::Tensor>,
) -> Result<Vec<[f32; HIDDEN]>, Status> {
    if start == 0 {
        if tokens.is_empty() {
            return Err(Status::invalid_argument(
                "tokens: the first span needs them",
            ));
        }
        return Ok(tokens.iter().map(|&t| embed(t)).collect());
    }
    let hidden = hidden.ok_or_else(|| Status::invalid_argument("hidden: missing"))?;
    let values = decode_f32(hidden, "hidden", &Limits::default())
        .map_err(|e| Status::invalid_argument(e.message))?;
    if hidden.shape.len() != 3 || hidden.shape[2] != HIDDEN as i64 {
        return Err(Status::invalid_argument(format!(
            "hidden: shape {:?}",
            hidden.shape
        )));
    }
    Ok(values
        .chunks(HIDDEN)
        .map(|c| std::array::from_fn(|i| c[i]))
        .collect())
}

/// Runs a span over `rows`: hidden rows `[1, n, HIDDEN]`, or the last row's logits
/// `[1, 1, VOCAB]` when the span ends the model.
fn run_span(
    start: u32,
    end: u32,
    cache: &mut Cache,
    rows: &[[f32; HIDDEN]],
) -> (Vec<i64>, Vec<f32>) {
    let out: Vec<[f32; HIDDEN]> = rows.iter().map(|&r| layers_row(start, cache, r)).collect();
    if end == LAYERS {
        let last = out.last().copied().unwrap_or([0.0; HIDDEN]);
        (vec![1, 1, VOCAB as i64], head(&last))
    } else {
        (
            vec![1, out.len() as i64, HIDDEN as i64],
            out.into_iter().flatten().collect(),
        )
    }
}

/// What the whole model generates for `prompt` with `sampling`, computed in process: what the
/// swarm must give, failovers or not.
pub fn reference(prompt: &[u32], max_tokens: usize, sampling: &SamplingParams) -> Vec<u32> {
    let mut cache = Cache::new(0, LAYERS);
    let mut sampler = Sampler::new(sampling.clone()).unwrap();
    let mut input: Vec<i64> = prompt.iter().map(|&t| i64::from(t)).collect();
    let mut out = Vec::new();
    for _ in 0..max_tokens {
        let rows: Vec<_> = input.iter().map(|&t| embed(t)).collect();
        let (_, logits) = run_span(0, LAYERS, &mut cache, &rows);
        let token = sampler.sample(&logits).unwrap();
        out.push(token);
        input = vec![i64::from(token)];
    }
    out
}

// ---- Workers.

/// How a fake worker misbehaves; all off by default.
#[derive(Debug, Clone, Default)]
pub struct Behaviour {
    /// Added to every Forward and Replay, per position computed.
    pub delay_per_position: Duration,
    /// Every output value is NaN.
    pub nan: bool,
    /// Every call is refused UNAVAILABLE, as a crashed node's connection would be.
    pub dead: bool,
    /// Assigned but not loaded yet: compute is refused and `Info` reports nothing loaded.
    pub loading: bool,
}

/// One call a worker received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Forward {
        positions: usize,
        at: u32,
    },
    /// `tokens`: rebuilt from token ids (a first span) rather than hidden states.
    Replay {
        positions: usize,
        tokens: bool,
    },
}

#[derive(Debug)]
struct WorkerShared {
    id: String,
    start: u32,
    end: u32,
    sessions: Mutex<HashMap<String, Cache>>,
    behaviour: Mutex<Behaviour>,
    calls: Mutex<Vec<Call>>,
}

#[derive(Debug, Clone)]
struct WorkerService(Arc<WorkerShared>);

impl WorkerService {
    fn behaviour(&self) -> Behaviour {
        self.0.behaviour.lock().unwrap().clone()
    }

    /// Refusals every compute call shares, and the span check.
    fn admit(&self, span: Option<LayerSpan>) -> Result<Behaviour, Status> {
        let behaviour = self.behaviour();
        if behaviour.dead {
            return Err(Status::unavailable("connection refused"));
        }
        if behaviour.loading {
            return Err(Status::unavailable("no layers assigned to this node yet"));
        }
        match span {
            Some(s) if s.start == self.0.start && s.end == self.0.end => Ok(behaviour),
            _ => Err(Status::invalid_argument(format!(
                "span: {span:?} requested, this node holds [{}, {})",
                self.0.start, self.0.end
            ))),
        }
    }

    fn output(
        &self,
        behaviour: &Behaviour,
        (shape, mut values): (Vec<i64>, Vec<f32>),
    ) -> neuroshard_proto::common::v1::Tensor {
        if behaviour.nan {
            values.iter_mut().for_each(|v| *v = f32::NAN);
        }
        encode_f32(&shape, &values)
    }
}

#[tonic::async_trait]
impl ShardWorker for WorkerService {
    type ForwardStreamStream = BoxStream<ForwardStreamResponse>;
    type ReplayStreamStream = BoxStream<ReplayStreamResponse>;

    async fn forward(
        &self,
        request: Request<ForwardRequest>,
    ) -> Result<Response<ForwardResponse>, Status> {
        let r = request.into_inner();
        let behaviour = self.admit(r.span)?;
        let rows = input_rows(self.0.start, &r.tokens, r.hidden.as_ref())?;
        let (out, position) = {
            let mut sessions = self.0.sessions.lock().unwrap();
            let cache = sessions
                .entry(r.session_id.clone())
                .or_insert_with(|| Cache::new(self.0.start, self.0.end));
            if cache.positions != r.position as usize {
                return Err(Status::failed_precondition(format!(
                    "position: request is at {}, session holds {}",
                    r.position, cache.positions
                )));
            }
            let out = run_span(self.0.start, self.0.end, cache, &rows);
            (out, cache.positions as u32)
        };
        self.0.calls.lock().unwrap().push(Call::Forward {
            positions: rows.len(),
            at: r.position,
        });
        tokio::time::sleep(behaviour.delay_per_position * rows.len() as u32).await;
        Ok(Response::new(ForwardResponse {
            output: Some(self.output(&behaviour, out)),
            position,
        }))
    }

    async fn replay(
        &self,
        request: Request<ReplayRequest>,
    ) -> Result<Response<ReplayResponse>, Status> {
        let r = request.into_inner();
        let behaviour = self.admit(r.span)?;
        let rows = input_rows(self.0.start, &r.tokens, r.hidden.as_ref())?;
        let mut cache = Cache::new(self.0.start, self.0.end);
        let out = run_span(self.0.start, self.0.end, &mut cache, &rows);
        let position = cache.positions as u32;
        self.0
            .sessions
            .lock()
            .unwrap()
            .insert(r.session_id.clone(), cache);
        self.0.calls.lock().unwrap().push(Call::Replay {
            positions: rows.len(),
            tokens: !r.tokens.is_empty(),
        });
        tokio::time::sleep(behaviour.delay_per_position * rows.len() as u32).await;
        Ok(Response::new(ReplayResponse {
            output: Some(self.output(&behaviour, out)),
            position,
        }))
    }

    async fn forward_stream(
        &self,
        _: Request<Streaming<ForwardStreamRequest>>,
    ) -> Result<Response<Self::ForwardStreamStream>, Status> {
        Err(Status::unimplemented(
            "the fake worker takes only unary calls: keep test tensors small",
        ))
    }

    async fn replay_stream(
        &self,
        _: Request<Streaming<ReplayStreamRequest>>,
    ) -> Result<Response<Self::ReplayStreamStream>, Status> {
        Err(Status::unimplemented(
            "the fake worker takes only unary calls: keep test tensors small",
        ))
    }

    async fn end_session(
        &self,
        request: Request<EndSessionRequest>,
    ) -> Result<Response<EndSessionResponse>, Status> {
        self.0
            .sessions
            .lock()
            .unwrap()
            .remove(&request.get_ref().session_id);
        Ok(Response::new(EndSessionResponse {}))
    }

    async fn info(&self, _: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        let behaviour = self.behaviour();
        if behaviour.dead {
            return Err(Status::unavailable("connection refused"));
        }
        let loaded = !behaviour.loading;
        Ok(Response::new(InfoResponse {
            node_id: self.0.id.clone(),
            span: loaded.then_some(LayerSpan {
                start: self.0.start,
                end: self.0.end,
            }),
            role: Role::Worker as i32,
            sessions: self.0.sessions.lock().unwrap().len() as u32,
            architecture_version: if loaded { ARCH_VERSION } else { 0 },
        }))
    }
}

/// A fake shard worker serving on loopback until dropped.
#[derive(Debug)]
pub struct FakeWorker {
    pub id: String,
    pub endpoint: String,
    pub start: u32,
    pub end: u32,
    /// What the registry publishes as this node's claimed tokens/s.
    pub claimed_tokens_per_s: f64,
    shared: Arc<WorkerShared>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for FakeWorker {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl FakeWorker {
    pub async fn start(id: &str, start: u32, end: u32) -> Self {
        let shared = Arc::new(WorkerShared {
            id: id.to_string(),
            start,
            end,
            sessions: Mutex::new(HashMap::new()),
            behaviour: Mutex::new(Behaviour::default()),
            calls: Mutex::new(Vec::new()),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let (reporter, health) = tonic_health::server::health_reporter();
        reporter
            .set_service_status("", tonic_health::ServingStatus::Serving)
            .await;
        let service = WorkerService(shared.clone());
        let server = tokio::spawn(async move {
            let _reporter = reporter;
            let _ = tonic::transport::Server::builder()
                .add_service(health)
                .add_service(ShardWorkerServer::new(service))
                .serve_with_incoming(neuroshard_runtime::grpc::incoming(listener))
                .await;
        });
        Self {
            id: id.to_string(),
            endpoint,
            start,
            end,
            claimed_tokens_per_s: 1000.0,
            shared,
            server,
        }
    }

    pub fn set_behaviour(&self, behaviour: Behaviour) {
        *self.shared.behaviour.lock().unwrap() = behaviour;
    }

    pub fn update(&self, change: impl FnOnce(&mut Behaviour)) {
        change(&mut self.shared.behaviour.lock().unwrap());
    }

    pub fn calls(&self) -> Vec<Call> {
        self.shared.calls.lock().unwrap().clone()
    }

    pub fn replays(&self) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| matches!(c, Call::Replay { .. }))
            .collect()
    }

    pub fn sessions(&self) -> usize {
        self.shared.sessions.lock().unwrap().len()
    }
}

// ---- The registry.

#[derive(Debug, Clone)]
struct RegistryService {
    snapshots: watch::Receiver<AssignmentSnapshot>,
    reports: Arc<Mutex<Vec<SignedEnvelope>>>,
    refuse_reports: Arc<AtomicBool>,
}

fn unimplemented<T>() -> Result<Response<T>, Status> {
    Err(Status::unimplemented("not part of the fake registry"))
}

#[tonic::async_trait]
impl LayerRegistry for RegistryService {
    type WatchStream = BoxStream<AssignmentSnapshot>;

    async fn register(
        &self,
        _: Request<SignedEnvelope>,
    ) -> Result<Response<RegisterResponse>, Status> {
        unimplemented()
    }

    async fn heartbeat(
        &self,
        _: Request<SignedEnvelope>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        unimplemented()
    }

    async fn drain(&self, _: Request<SignedEnvelope>) -> Result<Response<DrainResponse>, Status> {
        unimplemented()
    }

    async fn deregister(
        &self,
        _: Request<SignedEnvelope>,
    ) -> Result<Response<DeregisterResponse>, Status> {
        unimplemented()
    }

    async fn get_assignment(
        &self,
        _: Request<GetAssignmentRequest>,
    ) -> Result<Response<AssignmentSnapshot>, Status> {
        Ok(Response::new(self.snapshots.borrow().clone()))
    }

    async fn routes(&self, _: Request<RoutesRequest>) -> Result<Response<RoutesResponse>, Status> {
        unimplemented()
    }

    async fn watch(&self, _: Request<WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let stream = tokio_stream::wrappers::WatchStream::new(self.snapshots.clone()).map(Ok);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn report_observations(
        &self,
        request: Request<SignedEnvelope>,
    ) -> Result<Response<ObservationsResponse>, Status> {
        self.reports.lock().unwrap().push(request.into_inner());
        if self.refuse_reports.load(Ordering::SeqCst) {
            return Err(Status::permission_denied(
                "this signer is not one of the registry's observers",
            ));
        }
        Ok(Response::new(ObservationsResponse {}))
    }

    async fn attest(
        &self,
        _: Request<neuroshard_proto::registry::v1::AttestRequest>,
    ) -> Result<Response<SignedEnvelope>, Status> {
        Err(Status::failed_precondition(
            "the fake registry attests no uptime",
        ))
    }

    async fn uptime_epoch(
        &self,
        _: Request<neuroshard_proto::registry::v1::UptimeEpochRequest>,
    ) -> Result<Response<neuroshard_proto::registry::v1::UptimeEpochResponse>, Status> {
        Ok(Response::new(
            neuroshard_proto::registry::v1::UptimeEpochResponse::default(),
        ))
    }

    async fn describe_nodes(
        &self,
        _: Request<neuroshard_proto::registry::v1::DescribeNodesRequest>,
    ) -> Result<Response<neuroshard_proto::registry::v1::DescribeNodesResponse>, Status> {
        Err(Status::unimplemented(
            "the fake registry describes no nodes",
        ))
    }
}

/// A fake registry serving on loopback until dropped.
#[derive(Debug)]
pub struct FakeRegistry {
    pub url: String,
    snapshots: watch::Sender<AssignmentSnapshot>,
    reports: Arc<Mutex<Vec<SignedEnvelope>>>,
    pub refuse_reports: Arc<AtomicBool>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for FakeRegistry {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl FakeRegistry {
    pub async fn start(first: AssignmentSnapshot) -> Self {
        let (snapshots, rx) = watch::channel(first);
        let reports = Arc::new(Mutex::new(Vec::new()));
        let refuse_reports = Arc::new(AtomicBool::new(false));
        let service = RegistryService {
            snapshots: rx,
            reports: reports.clone(),
            refuse_reports: refuse_reports.clone(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(LayerRegistryServer::new(service))
                .serve_with_incoming(neuroshard_runtime::grpc::incoming(listener))
                .await;
        });
        Self {
            url,
            snapshots,
            reports,
            refuse_reports,
            server,
        }
    }

    pub fn publish(&self, snapshot: AssignmentSnapshot) {
        self.snapshots.send_replace(snapshot);
    }

    pub fn reports(&self) -> Vec<SignedEnvelope> {
        self.reports.lock().unwrap().clone()
    }
}

pub fn architecture() -> Architecture {
    Architecture {
        vocab_size: VOCAB as u32,
        hidden_size: HIDDEN as u32,
        num_layers: LAYERS,
        num_heads: 1,
        num_kv_heads: 1,
        intermediate_size: 8,
        rope_theta: 10_000.0,
        rms_eps: 1e-6,
        max_seq_len: MAX_SEQ,
        version: ARCH_VERSION,
        growth: Vec::new(),
    }
}

// ---- The swarm.

/// A registry and its workers; what the registry publishes follows the workers' states.
#[derive(Debug)]
pub struct FakeSwarm {
    pub registry: FakeRegistry,
    pub workers: Vec<FakeWorker>,
    states: HashMap<String, NodeState>,
    version: u64,
    /// Whether the registry publishes an architecture (none before the swarm has one).
    pub with_architecture: bool,
}

impl FakeSwarm {
    /// One worker per span in `spans`, named `w0`, `w1`, … in that order, all live.
    pub async fn start(spans: &[(u32, u32)]) -> Self {
        let mut workers = Vec::new();
        for (i, &(start, end)) in spans.iter().enumerate() {
            workers.push(FakeWorker::start(&format!("w{i}"), start, end).await);
        }
        let mut swarm = Self {
            registry: FakeRegistry::start(AssignmentSnapshot::default()).await,
            states: workers
                .iter()
                .map(|w| (w.id.clone(), NodeState::Live))
                .collect(),
            workers,
            version: 0,
            with_architecture: true,
        };
        swarm.publish();
        swarm
    }

    /// Two stages, two replicas each: `w0`, `w1` hold [0, 2); `w2`, `w3` hold [2, 4).
    pub async fn two_stages() -> Self {
        Self::start(&[(0, 2), (0, 2), (2, 4), (2, 4)]).await
    }

    pub fn worker(&self, id: &str) -> &FakeWorker {
        self.workers.iter().find(|w| w.id == id).unwrap()
    }

    pub fn worker_mut(&mut self, id: &str) -> &mut FakeWorker {
        self.workers.iter_mut().find(|w| w.id == id).unwrap()
    }

    /// Publishes the current workers and states as a new assignment version.
    pub fn publish(&mut self) {
        self.version += 1;
        let nodes = self
            .workers
            .iter()
            .map(|w| NodeAssignment {
                node_id: w.id.clone(),
                endpoint: w.endpoint.clone(),
                state: self.states[&w.id] as i32,
                span: Some(LayerSpan {
                    start: w.start,
                    end: w.end,
                }),
                role: Role::Worker as i32,
                capacity: Some(Capacity {
                    usable_memory_bytes: 1 << 30,
                    device: 1,
                    tokens_per_second: w.claimed_tokens_per_s,
                }),
                queue_depth: 0,
                observed_tokens_per_second: 0.0,
            })
            .collect();
        self.registry.publish(AssignmentSnapshot {
            version: self.version,
            architecture: self.with_architecture.then(architecture),
            nodes,
            pipelines: Vec::new(),
            deficits: Vec::new(),
        });
    }

    /// The node crashes: its calls are refused and the registry declares it dead.
    pub fn kill(&mut self, id: &str) {
        self.worker(id).update(|b| b.dead = true);
        self.states.insert(id.to_string(), NodeState::Dead);
        self.publish();
    }

    /// A new node joins holding `[start, end)` (published at once).
    pub async fn join(&mut self, id: &str, start: u32, end: u32, behaviour: Behaviour) {
        let worker = FakeWorker::start(id, start, end).await;
        worker.set_behaviour(behaviour);
        self.workers.push(worker);
        self.states.insert(id.to_string(), NodeState::Live);
        self.publish();
    }

    /// Engine settings for this swarm with short back-offs.
    pub fn engine_config(&self) -> EngineConfig {
        let mut config = EngineConfig::new(&self.registry.url, "fake");
        config.connect_timeout = Duration::from_secs(10);
        config.backoff = Duration::from_millis(100);
        config.max_backoff = Duration::from_millis(400);
        config
    }
}

/// Connects an engine and waits until it can route.
pub async fn connected(config: EngineConfig) -> SwarmEngine {
    let engine = SwarmEngine::connect(config).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !engine.ready() {
        assert!(std::time::Instant::now() < deadline, "engine never ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    engine
}

pub fn greedy() -> SamplingParams {
    SamplingParams {
        temperature: 0.0,
        ..SamplingParams::default()
    }
}

pub fn job(id: &str, prompt: &[u32], max_tokens: u32) -> GenerationJob {
    GenerationJob {
        request_id: id.into(),
        prompt: prompt.to_vec(),
        max_tokens,
        sampling: greedy(),
    }
}

/// Every token of a generation, calling `on_token(count)` after each; the error if it failed.
pub async fn collect(
    engine: &SwarmEngine,
    job: GenerationJob,
    mut on_token: impl FnMut(usize),
) -> Result<Vec<u32>, neuroshard_common::Error> {
    let mut stream = engine.generate(job);
    let mut got = Vec::new();
    while let Some(step) = stream.next().await {
        match step? {
            Step::Token(t) => {
                got.push(t);
                on_token(got.len());
            }
            Step::Finished(_) => {}
        }
    }
    Ok(got)
}
