//! What the real-process tests of the worker share: a swarm of a throwaway PostgreSQL, a
//! layer-registry process and shard-worker processes (from `neuroshard-tests`' harness), and
//! the checks they make on it (replicas, loaded spans, pipelined forwards).

// Each test binary uses a different part of this module.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use neuroshard_common::tensor::{Limits, decode_f32};
use neuroshard_model::tch::{Device, Kind, Tensor};
use neuroshard_model::{ModelConfig, Shard, ShardInput, ShardSpec, checkpoint, init};
use neuroshard_proto::common::v1::Tensor as WireTensor;
use neuroshard_proto::registry::v1::layer_registry_client::LayerRegistryClient;
use neuroshard_proto::registry::v1::{
    AssignmentSnapshot, GetAssignmentRequest, NodeState, Route, RoutesRequest,
};
use neuroshard_proto::worker::v1::shard_worker_client::ShardWorkerClient;
use neuroshard_proto::worker::v1::{ForwardRequest, InfoRequest};
use neuroshard_shard_worker::client::{ClientOptions, WorkerClient};
use neuroshard_tests::{ChildGuard, PgServer, free_port};
use tonic::transport::Channel;

pub const NET: &str = "worker-test";

fn registry_binary() -> PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_shard-worker")).with_file_name("layer-registry");
    assert!(
        path.exists(),
        "{} is missing: run the workspace's tests (make test), which build it",
        path.display()
    );
    path
}

/// Fields drop in order: workers, then the registry, then its database, then the files.
pub struct Swarm {
    pub registry: LayerRegistryClient<Channel>,
    pub registry_url: String,
    /// (process, listen port)
    pub workers: Vec<(ChildGuard, u16)>,
    _registry_process: ChildGuard,
    _pg: PgServer,
    pub dir: tempfile::TempDir,
}

impl Swarm {
    /// PostgreSQL and a registry with fast liveness (heartbeat 200 ms, suspect 800 ms, dead
    /// 1.5 s), `registry_env` on top.
    pub async fn start(registry_env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let pg = PgServer::start().unwrap();
        let port = free_port().unwrap();
        let mut command = Command::new(registry_binary());
        command
            .env("NEUROSHARD_REGISTRY_LISTEN", format!("127.0.0.1:{port}"))
            .env("NEUROSHARD_REGISTRY_DATABASE_URL", pg.url())
            .env("NEUROSHARD_REGISTRY_NETWORK_ID", NET)
            .env("NEUROSHARD_REGISTRY_HEARTBEAT_INTERVAL_MS", "200")
            .env("NEUROSHARD_REGISTRY_SUSPECT_AFTER_MS", "800")
            .env("NEUROSHARD_REGISTRY_DEAD_AFTER_MS", "1500")
            .env("RUST_LOG", "warn");
        for (key, value) in registry_env {
            command.env(key, value);
        }
        let registry_process = ChildGuard::spawn(command).unwrap();
        let registry_url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        let registry = loop {
            if let Ok(c) = LayerRegistryClient::connect(registry_url.clone()).await {
                break c;
            }
            assert!(Instant::now() < deadline, "registry did not come up");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        Self {
            registry,
            registry_url,
            workers: Vec::new(),
            _registry_process: registry_process,
            _pg: pg,
            dir,
        }
    }

    /// Starts a worker process (CPU, one thread, heartbeat 200 ms) with `env` on top.
    pub fn add_worker(&mut self, env: &[(&str, &str)]) {
        let i = self.workers.len();
        let port = free_port().unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_shard-worker"));
        command
            .env("NEUROSHARD_WORKER_LISTEN", format!("127.0.0.1:{port}"))
            .env("NEUROSHARD_WORKER_REGISTRY", &self.registry_url)
            .env("NEUROSHARD_WORKER_NETWORK_ID", NET)
            .env(
                "NEUROSHARD_WORKER_KEY_FILE",
                self.dir.path().join(format!("w{i}.key")),
            )
            .env("NEUROSHARD_WORKER_DEVICE", "cpu")
            .env("NEUROSHARD_WORKER_HEARTBEAT_INTERVAL_MS", "200")
            .env("OMP_NUM_THREADS", "1")
            .env("RUST_LOG", "warn");
        for (key, value) in env {
            command.env(key, value);
        }
        self.workers
            .push((ChildGuard::spawn(command).unwrap(), port));
    }

    pub async fn snapshot(&mut self) -> AssignmentSnapshot {
        self.registry
            .get_assignment(GetAssignmentRequest {})
            .await
            .unwrap()
            .into_inner()
    }

    pub async fn routes(&mut self, max_routes: u32) -> Vec<Route> {
        self.registry
            .routes(RoutesRequest { max_routes })
            .await
            .unwrap()
            .into_inner()
            .routes
    }

    /// Waits until `ready` holds for the assignment and every live assigned worker has loaded
    /// its span of the published architecture.
    pub async fn wait_for(
        &mut self,
        what: &str,
        limit: Duration,
        ready: impl Fn(&AssignmentSnapshot) -> bool,
    ) -> AssignmentSnapshot {
        let deadline = Instant::now() + limit;
        loop {
            let s = self.snapshot().await;
            if ready(&s) && all_loaded(&s).await {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {s:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Whether every live node with a span reports that span of the snapshot's architecture.
async fn all_loaded(s: &AssignmentSnapshot) -> bool {
    let Some(arch) = &s.architecture else {
        return false;
    };
    for node in s
        .nodes
        .iter()
        .filter(|n| n.span.is_some() && n.state == NodeState::Live as i32)
    {
        let Ok(mut worker) = ShardWorkerClient::connect(node.endpoint.clone()).await else {
            return false;
        };
        let info = worker.info(InfoRequest {}).await.map(|r| r.into_inner());
        if !info.is_ok_and(|i| i.span == node.span && i.architecture_version == arch.version) {
            return false;
        }
    }
    true
}

/// Fewest holders of any layer (0 without an architecture).
pub fn min_holders(s: &AssignmentSnapshot) -> u32 {
    let layers = s.architecture.as_ref().map_or(0, |a| a.num_layers);
    (0..layers)
        .map(|l| {
            s.nodes
                .iter()
                .filter(|n| n.span.is_some_and(|sp| sp.start <= l && l < sp.end))
                .count() as u32
        })
        .min()
        .unwrap_or(0)
}

/// The small model (4 × 256, vocabulary 4096) initialised from `seed`, saved as a checkpoint
/// under the swarm's directory; returns the model and the checkpoint's path.
pub fn small_checkpoint(swarm: &Swarm, seed: u64) -> (Shard, String) {
    let config = ModelConfig::small(4096);
    let mut model = Shard::new(
        &config,
        ShardSpec::full(config.num_layers),
        Device::Cpu,
        Kind::Float,
    )
    .unwrap();
    init::initialize(&mut model, seed).unwrap();
    let dir = swarm.dir.path().join("ckpt");
    checkpoint::save(&dir, &model, None, 0).unwrap();
    (model, dir.to_str().unwrap().to_string())
}

/// Runs `tokens` through `route` for `session` at `position` with the worker client's default
/// options; returns the last position's logits.
pub async fn through(route: &Route, session: &str, tokens: &[i64], position: u32) -> Vec<f32> {
    through_with(ClientOptions::default(), route, session, tokens, position).await
}

/// [`through`] with the worker client configured by `options`.
pub async fn through_with(
    options: ClientOptions,
    route: &Route,
    session: &str,
    tokens: &[i64],
    position: u32,
) -> Vec<f32> {
    let mut hidden: Option<WireTensor> = None;
    for (i, hop) in route.hops.iter().enumerate() {
        let mut worker = WorkerClient::connect(&hop.endpoint, options).await.unwrap();
        let request = ForwardRequest {
            session_id: session.into(),
            span: hop.span,
            tokens: if i == 0 { tokens.to_vec() } else { Vec::new() },
            hidden: hidden.take(),
            position,
        };
        hidden = worker.forward(request).await.unwrap().output;
    }
    decode_f32(&hidden.unwrap(), "logits", &Limits::default()).unwrap()
}

/// Logits of every position of `tokens` from `model` run in-process: [seq, vocab].
pub fn in_process_logits(model: &Shard, tokens: &[i64]) -> Tensor {
    let _guard = neuroshard_model::tch::no_grad_guard();
    let t = Tensor::from_slice(tokens).view([1, -1]);
    model.forward(ShardInput::Tokens(&t), None).unwrap().get(0)
}

pub fn max_diff(a: &[f32], b: &Tensor) -> f64 {
    let b = Vec::<f32>::try_from(&b.flatten(0, -1)).unwrap();
    max_abs_diff(a, &b)
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| f64::from((x - y).abs()))
        .fold(0.0, f64::max)
}
