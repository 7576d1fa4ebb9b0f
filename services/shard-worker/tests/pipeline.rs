//! The swarm core with real processes: PostgreSQL, the layer registry and five shard workers
//! loading their spans from one checkpoint. A pipelined forward (prefill, then decode steps)
//! through the workers equals the in-process model; bad inputs are refused by name; a worker
//! killed with SIGKILL has its layers reassigned and replicas restored to two.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use neuroshard_common::tensor::{Limits, decode_f32, encode_f32};
use neuroshard_model::tch::{Device, Kind, Tensor};
use neuroshard_model::{ModelConfig, Shard, ShardInput, ShardSpec, checkpoint, init};
use neuroshard_proto::common::v1::{LayerSpan, Tensor as WireTensor};
use neuroshard_proto::registry::v1::layer_registry_client::LayerRegistryClient;
use neuroshard_proto::registry::v1::{
    AssignmentSnapshot, GetAssignmentRequest, NodeState, Route, RoutesRequest,
};
use neuroshard_proto::worker::v1::ForwardRequest;
use neuroshard_proto::worker::v1::shard_worker_client::ShardWorkerClient;
use neuroshard_tests::{ChildGuard, PgServer, free_port};
use tonic::Code;
use tonic::transport::Channel;

const NET: &str = "pipeline-test";
const WORKERS: usize = 5;
/// Two layers of the small model plus its embedding or head (20 bytes per parameter).
const WORKER_MEMORY: &str = "60000000";

fn registry_binary() -> PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_shard-worker")).with_file_name("layer-registry");
    assert!(
        path.exists(),
        "{} is missing: run the workspace's tests (make test), which build it",
        path.display()
    );
    path
}

struct Swarm {
    registry: LayerRegistryClient<Channel>,
    /// (process, listen port)
    workers: Vec<(ChildGuard, u16)>,
    _registry: ChildGuard,
    _pg: PgServer,
    model: Shard,
    _dir: tempfile::TempDir,
}

async fn start() -> Swarm {
    let dir = tempfile::tempdir().unwrap();
    let config = ModelConfig::small(4096);
    let mut model = Shard::new(
        &config,
        ShardSpec::full(config.num_layers),
        Device::Cpu,
        Kind::Float,
    )
    .unwrap();
    init::initialize(&mut model, 11).unwrap();
    let ckpt = dir.path().join("ckpt");
    checkpoint::save(&ckpt, &model, None, 0).unwrap();

    let pg = PgServer::start().unwrap();
    let registry_port = free_port().unwrap();
    let mut command = Command::new(registry_binary());
    command
        .env(
            "NEUROSHARD_REGISTRY_LISTEN",
            format!("127.0.0.1:{registry_port}"),
        )
        .env("NEUROSHARD_REGISTRY_DATABASE_URL", pg.url())
        .env("NEUROSHARD_REGISTRY_NETWORK_ID", NET)
        .env("NEUROSHARD_REGISTRY_HEARTBEAT_INTERVAL_MS", "200")
        .env("NEUROSHARD_REGISTRY_SUSPECT_AFTER_MS", "800")
        .env("NEUROSHARD_REGISTRY_DEAD_AFTER_MS", "1500")
        .env("RUST_LOG", "warn");
    let registry_process = ChildGuard::spawn(command).unwrap();
    let registry_url = format!("http://127.0.0.1:{registry_port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let registry = loop {
        if let Ok(c) = LayerRegistryClient::connect(registry_url.clone()).await {
            break c;
        }
        assert!(Instant::now() < deadline, "registry did not come up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let workers = (0..WORKERS)
        .map(|i| {
            let port = free_port().unwrap();
            let mut command = Command::new(env!("CARGO_BIN_EXE_shard-worker"));
            command
                .env("NEUROSHARD_WORKER_LISTEN", format!("127.0.0.1:{port}"))
                .env("NEUROSHARD_WORKER_REGISTRY", &registry_url)
                .env("NEUROSHARD_WORKER_NETWORK_ID", NET)
                .env(
                    "NEUROSHARD_WORKER_KEY_FILE",
                    dir.path().join(format!("w{i}.key")),
                )
                .env("NEUROSHARD_WORKER_CHECKPOINT", &ckpt)
                .env("NEUROSHARD_WORKER_USABLE_MEMORY_BYTES", WORKER_MEMORY)
                .env("NEUROSHARD_WORKER_DEVICE", "cpu")
                .env("NEUROSHARD_WORKER_HEARTBEAT_INTERVAL_MS", "200")
                .env("OMP_NUM_THREADS", "1")
                .env("RUST_LOG", "warn");
            (ChildGuard::spawn(command).unwrap(), port)
        })
        .collect();
    Swarm {
        registry,
        workers,
        _registry: registry_process,
        _pg: pg,
        model,
        _dir: dir,
    }
}

async fn snapshot(registry: &mut LayerRegistryClient<Channel>) -> AssignmentSnapshot {
    registry
        .get_assignment(GetAssignmentRequest {})
        .await
        .unwrap()
        .into_inner()
}

fn min_holders(s: &AssignmentSnapshot) -> u32 {
    let layers = s.architecture.as_ref().unwrap().num_layers;
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

/// Waits until `ready` holds for the assignment and every live assigned worker has loaded its span.
async fn wait_for(
    swarm: &mut Swarm,
    what: &str,
    limit: Duration,
    ready: impl Fn(&AssignmentSnapshot) -> bool,
) -> AssignmentSnapshot {
    let deadline = Instant::now() + limit;
    loop {
        let s = snapshot(&mut swarm.registry).await;
        if ready(&s) {
            let mut all_loaded = true;
            for node in s
                .nodes
                .iter()
                .filter(|n| n.span.is_some() && n.state == NodeState::Live as i32)
            {
                let Ok(mut worker) = ShardWorkerClient::connect(node.endpoint.clone()).await else {
                    all_loaded = false;
                    break;
                };
                let info = worker
                    .info(neuroshard_proto::worker::v1::InfoRequest {})
                    .await
                    .map(|r| r.into_inner());
                all_loaded &= info.is_ok_and(|i| i.span == node.span);
            }
            if all_loaded {
                return s;
            }
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs `tokens` through `route` for `session` at `position`; returns the last position's logits.
async fn through(route: &Route, session: &str, tokens: &[i64], position: u32) -> Vec<f32> {
    let mut hidden: Option<WireTensor> = None;
    for (i, hop) in route.hops.iter().enumerate() {
        let mut worker = ShardWorkerClient::connect(hop.endpoint.clone())
            .await
            .unwrap();
        let request = ForwardRequest {
            session_id: session.into(),
            span: hop.span,
            tokens: if i == 0 { tokens.to_vec() } else { Vec::new() },
            hidden: hidden.take(),
            position,
        };
        hidden = worker.forward(request).await.unwrap().into_inner().output;
    }
    decode_f32(&hidden.unwrap(), "logits", &Limits::default()).unwrap()
}

fn in_process_logits(model: &Shard, tokens: &[i64]) -> Tensor {
    let _guard = neuroshard_model::tch::no_grad_guard();
    let t = Tensor::from_slice(tokens).view([1, -1]);
    model.forward(ShardInput::Tokens(&t), None).unwrap().get(0)
}

fn max_diff(a: &[f32], b: &Tensor) -> f64 {
    let b = Vec::<f32>::try_from(&b.flatten(0, -1)).unwrap();
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(&b)
        .map(|(x, y)| f64::from((x - y).abs()))
        .fold(0.0, f64::max)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_forward_equals_the_model_and_survives_a_killed_worker() {
    let mut swarm = start().await;
    let ready = wait_for(&mut swarm, "two replicas", Duration::from_secs(60), |s| {
        s.nodes.len() == WORKERS && min_holders(s) >= 2 && s.pipelines.len() >= 2
    })
    .await;
    let routes = swarm
        .registry
        .routes(RoutesRequest { max_routes: 4 })
        .await
        .unwrap()
        .into_inner()
        .routes;
    assert!(routes.len() >= 2);
    let route = &routes[0];
    assert!(route.hops.len() >= 2, "a multi-stage pipeline: {route:?}");

    // Prefill, then two decode steps, each compared with the full model in-process.
    let prompt = [5i64, 17, 300, 42, 7, 1024, 9];
    let expected = in_process_logits(&swarm.model, &[&prompt[..], &[88, 4000]].concat());
    let logits = through(route, "s1", &prompt, 0).await;
    let d0 = max_diff(&logits, &expected.get(6));
    let logits = through(route, "s1", &[88], 7).await;
    let d1 = max_diff(&logits, &expected.get(7));
    let logits = through(route, "s1", &[4000], 8).await;
    let d2 = max_diff(&logits, &expected.get(8));
    eprintln!("max abs diff through the pipeline: prefill {d0:e}, decode {d1:e}, {d2:e}");
    assert!(d0 <= 1e-5 && d1 <= 1e-5 && d2 <= 1e-5);

    // Bad inputs, each refused with the field named.
    let last = route.hops.last().unwrap();
    let mut validator = ShardWorkerClient::connect(last.endpoint.clone())
        .await
        .unwrap();
    let span = last.span.unwrap();
    let request = |span: LayerSpan, hidden: WireTensor, position: u32| ForwardRequest {
        session_id: "bad".into(),
        span: Some(span),
        tokens: vec![],
        hidden: Some(hidden),
        position,
    };
    let good_hidden = encode_f32(&[1, 2, 256], &[0.5; 512]);
    let err = validator
        .forward(request(
            LayerSpan { start: 0, end: 1 },
            good_hidden.clone(),
            0,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("span"), "{err:?}");
    let err = validator
        .forward(request(span, encode_f32(&[1, 2, 100], &[0.5; 200]), 0))
        .await
        .unwrap_err();
    assert!(
        err.code() == Code::InvalidArgument && err.message().contains("hidden"),
        "{err:?}"
    );
    let mut nan = good_hidden.clone();
    nan.data[0..4].copy_from_slice(&f32::NAN.to_le_bytes());
    let err = validator.forward(request(span, nan, 0)).await.unwrap_err();
    assert!(
        err.code() == Code::InvalidArgument && err.message().contains("NaN"),
        "{err:?}"
    );
    let mut short = good_hidden.clone();
    short.data.truncate(10);
    let err = validator
        .forward(request(span, short, 0))
        .await
        .unwrap_err();
    assert!(err.message().contains("hidden.data"), "{err:?}");
    let err = validator
        .forward(request(span, good_hidden, 5))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");

    // kill -9 a worker that holds layers; its layers move and replicas return to two.
    let victim_id = route.hops[0].node_id.clone();
    let victim_endpoint = route.hops[0].endpoint.clone();
    let victim = swarm
        .workers
        .iter_mut()
        .find(|(_, port)| victim_endpoint.ends_with(&format!(":{port}")))
        .expect("victim process");
    victim.0.kill();
    let started = Instant::now();
    let after = wait_for(&mut swarm, "reassignment", Duration::from_secs(30), |s| {
        s.version > ready.version
            && s.nodes
                .iter()
                .any(|n| n.node_id == victim_id && n.state == NodeState::Dead as i32)
            && min_holders(s) >= 2
    })
    .await;
    let elapsed = started.elapsed();
    eprintln!(
        "layers of the killed worker reassigned and loaded, replicas back to 2, after {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_millis(2 * 1500 + 2000),
        "{elapsed:?}"
    );
    assert!(after.deficits.is_empty());
}
