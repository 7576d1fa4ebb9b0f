//! What the worker's tests share: a model slow enough on one thread that a long prefill takes
//! seconds, workers served in this process (plain or mutual TLS), a stand-in registry that
//! records what the worker tells it, and unguessable session ids.

#![allow(dead_code)] // each test binary uses its own part

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use neuroshard_common::ModelConfig;
use neuroshard_common::growth::ArchitectureState;
use neuroshard_common::tensor::Limits;
use neuroshard_model::tch::{Device, Kind, Tensor};
use neuroshard_model::{Shard, ShardInput, ShardSpec, init};
use neuroshard_proto::common::v1::{LayerSpan, SignedEnvelope};
use neuroshard_proto::registry::v1::layer_registry_server::{LayerRegistry, LayerRegistryServer};
use neuroshard_proto::registry::v1::{
    AssignmentSnapshot, Capacity, DeregisterResponse, DrainResponse, GetAssignmentRequest,
    HeartbeatResponse, NodeAssignment, NodeState, ObservationsResponse, RegisterRequest,
    RegisterResponse, RoutesRequest, RoutesResponse, WatchRequest,
};
use neuroshard_proto::trainer::v1::stage_trainer_server::StageTrainerServer;
use neuroshard_proto::worker::v1::shard_worker_server::ShardWorkerServer;
use neuroshard_runtime::grpc::GrpcServices;
use neuroshard_shard_worker::compute::ComputeOptions;
use neuroshard_shard_worker::node::LoadPlan;
use neuroshard_shard_worker::service::WorkerService;
use neuroshard_shard_worker::state::{Loaded, WorkerState};
use neuroshard_shard_worker::training::TrainerService;
use prost::Message;
use tonic::transport::ServerTlsConfig;
use tonic::{Request, Response, Status};

pub const SEED: u64 = 7;

/// 4 layers × 1024: a 2,000-position prefill takes seconds on one thread, a decode step
/// milliseconds.
pub fn config() -> ModelConfig {
    ModelConfig {
        vocab_size: 256,
        hidden_size: 1024,
        num_layers: 4,
        num_heads: 16,
        num_kv_heads: 4,
        intermediate_size: 2816,
        max_seq_len: 2048,
        ..ModelConfig::small(256)
    }
}

/// The whole model, initialised from [`SEED`] as a worker without a checkpoint does.
pub fn model() -> Shard {
    let config = config();
    let mut shard = Shard::new(
        &config,
        ShardSpec::full(config.num_layers),
        Device::Cpu,
        Kind::Float,
    )
    .unwrap();
    init::initialize(&mut shard, SEED).unwrap();
    shard
}

pub fn full_span() -> Option<LayerSpan> {
    Some(LayerSpan {
        start: 0,
        end: config().num_layers as u32,
    })
}

/// Last-position logits of `tokens` run through `model` in one pass.
pub fn last_logits(model: &Shard, tokens: &[i64]) -> Vec<f32> {
    let _guard = neuroshard_model::tch::no_grad_guard();
    let x = Tensor::from_slice(tokens).view([1, -1]);
    let out = model.forward(ShardInput::Tokens(&x), None).unwrap();
    let seq = out.size()[1];
    Vec::<f32>::try_from(&out.narrow(1, seq - 1, 1).flatten(0, -1)).unwrap()
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// A fresh session id with 128 random bits.
pub fn session_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

pub fn tokens(n: usize, salt: i64) -> Vec<i64> {
    (0..n as i64)
        .map(|i| (i * 31 + salt * 7 + 3) % 256)
        .collect()
}

/// A worker state holding `shard` (of a genesis architecture of its shape), with `options`
/// for its compute thread.
pub fn state(shard: Shard, options: ComputeOptions) -> Arc<WorkerState> {
    let architecture = ArchitectureState::genesis(shard.config().clone());
    state_with(shard, architecture, options)
}

/// A worker state holding `shard`, loaded from `architecture`.
pub fn state_with(
    shard: Shard,
    architecture: ArchitectureState,
    options: ComputeOptions,
) -> Arc<WorkerState> {
    let state = Arc::new(WorkerState::new(
        "test".into(),
        Duration::from_secs(600),
        u64::MAX,
        Limits::default(),
        16_384,
        1 << 20,
        options,
    ));
    state.set_loaded(Some(
        Loaded::start(
            shard,
            state.new_sessions(),
            1,
            Arc::new(architecture),
            0,
            options,
        )
        .unwrap(),
    ));
    state
}

/// Serves `state` on a loopback port of this process as the worker binary does (TLS when
/// given); returns its URL.
pub async fn serve(state: Arc<WorkerState>, tls: Option<ServerTlsConfig>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let scheme = if tls.is_some() { "https" } else { "http" };
    let url = format!("{scheme}://{}", listener.local_addr().unwrap());
    let service = ShardWorkerServer::new(WorkerService { state })
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20);
    tokio::spawn(neuroshard_runtime::grpc::serve(
        listener,
        tls,
        GrpcServices::default().with(service),
        std::future::pending(),
    ));
    url
}

/// Serves `state` with the trainer beside the inference service, spans loaded from `seed`
/// (as a worker without a checkpoint does), plaintext; returns its URL.
pub async fn serve_training(state: Arc<WorkerState>, seed: u64) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let plan = LoadPlan {
        checkpoint: None,
        init_seed: seed,
        device: Device::Cpu,
        kind: Kind::Float,
        global: Arc::default(),
    };
    let services = GrpcServices::default()
        .with(ShardWorkerServer::new(WorkerService {
            state: state.clone(),
        }))
        .with(StageTrainerServer::new(TrainerService::new(state, plan)));
    tokio::spawn(neuroshard_runtime::grpc::serve(
        listener,
        None,
        services,
        std::future::pending(),
    ));
    url
}

/// What the stand-in registry was told.
#[derive(Debug, Default)]
pub struct Heard {
    pub registrations: Vec<Capacity>,
    pub heartbeats: Vec<Instant>,
}

/// A registry that assigns the whole model to the one node it knows, publishing
/// `architecture` once it is set, and records registrations and heartbeats.
#[derive(Debug, Clone)]
pub struct FakeRegistry {
    pub node_id: String,
    pub endpoint: Arc<Mutex<String>>,
    pub architecture: Arc<Mutex<Option<ArchitectureState>>>,
    pub version: Arc<Mutex<u64>>,
    pub heard: Arc<Mutex<Heard>>,
}

impl FakeRegistry {
    pub fn new(node_id: &str, architecture: Option<ArchitectureState>) -> Self {
        Self {
            node_id: node_id.to_string(),
            endpoint: Arc::default(),
            architecture: Arc::new(Mutex::new(architecture)),
            version: Arc::new(Mutex::new(1)),
            heard: Arc::default(),
        }
    }

    /// Publishes `architecture` as a new assignment version.
    pub fn publish(&self, architecture: ArchitectureState) {
        *self.architecture.lock().unwrap() = Some(architecture);
        *self.version.lock().unwrap() += 1;
    }

    fn snapshot(&self) -> AssignmentSnapshot {
        let architecture = self.architecture.lock().unwrap().clone();
        let layers = architecture.as_ref().map(|a| a.config.num_layers as u32);
        AssignmentSnapshot {
            version: *self.version.lock().unwrap(),
            architecture: architecture.map(|a| a.to_proto()),
            nodes: vec![NodeAssignment {
                node_id: self.node_id.clone(),
                endpoint: self.endpoint.lock().unwrap().clone(),
                state: NodeState::Live as i32,
                span: layers.map(|end| LayerSpan { start: 0, end }),
                ..NodeAssignment::default()
            }],
            ..AssignmentSnapshot::default()
        }
    }

    /// Serves on a loopback port; returns its URL.
    pub async fn serve(self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(LayerRegistryServer::new(self))
                .serve_with_incoming(neuroshard_runtime::grpc::incoming(listener)),
        );
        url
    }
}

type Reply<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl LayerRegistry for FakeRegistry {
    async fn register(&self, request: Request<SignedEnvelope>) -> Reply<RegisterResponse> {
        let body = RegisterRequest::decode(request.into_inner().payload.as_slice()).unwrap();
        *self.endpoint.lock().unwrap() = body.endpoint;
        self.heard
            .lock()
            .unwrap()
            .registrations
            .push(body.capacity.unwrap());
        Ok(Response::new(RegisterResponse {
            node_id: self.node_id.clone(),
            assignment: Some(self.snapshot()),
        }))
    }

    async fn heartbeat(&self, _: Request<SignedEnvelope>) -> Reply<HeartbeatResponse> {
        self.heard.lock().unwrap().heartbeats.push(Instant::now());
        Ok(Response::new(HeartbeatResponse {
            assignment_version: *self.version.lock().unwrap(),
        }))
    }

    async fn drain(&self, _: Request<SignedEnvelope>) -> Reply<DrainResponse> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn deregister(&self, _: Request<SignedEnvelope>) -> Reply<DeregisterResponse> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn get_assignment(&self, _: Request<GetAssignmentRequest>) -> Reply<AssignmentSnapshot> {
        Ok(Response::new(self.snapshot()))
    }

    async fn routes(&self, _: Request<RoutesRequest>) -> Reply<RoutesResponse> {
        Err(Status::unimplemented("not in this test"))
    }

    type WatchStream = tokio_stream::Empty<Result<AssignmentSnapshot, Status>>;

    async fn watch(&self, _: Request<WatchRequest>) -> Reply<Self::WatchStream> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn report_observations(&self, _: Request<SignedEnvelope>) -> Reply<ObservationsResponse> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn attest(
        &self,
        _: Request<neuroshard_proto::registry::v1::AttestRequest>,
    ) -> Reply<SignedEnvelope> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn uptime_epoch(
        &self,
        _: Request<neuroshard_proto::registry::v1::UptimeEpochRequest>,
    ) -> Reply<neuroshard_proto::registry::v1::UptimeEpochResponse> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn describe_nodes(
        &self,
        _: Request<neuroshard_proto::registry::v1::DescribeNodesRequest>,
    ) -> Reply<neuroshard_proto::registry::v1::DescribeNodesResponse> {
        Err(Status::unimplemented("not in this test"))
    }
}

/// A worker key file in `dir` (created) and its node id.
pub fn worker_key(dir: &std::path::Path) -> (std::path::PathBuf, String) {
    let key_file = dir.join("worker.key");
    let node_id = neuroshard_common::identity::NodeKey::load_or_create(&key_file)
        .unwrap()
        .node_id()
        .to_string();
    (key_file, node_id)
}
