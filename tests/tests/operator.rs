//! The operator's real `Controller` end to end, against a loopback stand-in for the
//! Kubernetes API server, with a real registry (and PostgreSQL) and real worker processes:
//! a `NeuroShardNode` applied becomes a key Secret, a StatefulSet and a Service; the test
//! runs the StatefulSet's pod as a worker process (the kubelet's part: its container's
//! environment, with the listen address, advertised URL and key path moved to this machine);
//! the node turns `Ready` with the span the registry assigned; deleting it drains it through
//! the registry (signed with the operator's key) and only then is the finalizer removed.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Secret;
use neuroshard_common::ModelConfig;
use neuroshard_common::identity::NodeKey;
use neuroshard_local::{ChildGuard, Launcher, free_port};
use neuroshard_operator::OperatorConfig;
use neuroshard_proto::registry::v1::{DescribeNodesRequest, NodeDescription};
use neuroshard_proto::worker::v1::InfoRequest;
use neuroshard_proto::worker::v1::shard_worker_client::ShardWorkerClient;
use neuroshard_runtime::tls::TlsFiles;
use serde_json::{Value, json};
use support::kube_api::FakeApi;
use support::swarm::{NET, Swarm, memory_for_layers};

const NS: &str = "swarm";

/// Waits until `ready` gives something, for up to `limit`.
async fn eventually<T>(what: &str, limit: Duration, mut ready: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = ready() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The kubelet's part for the StatefulSet `name`: its pod's container run as a worker
/// process, its key from the key Secret. Only what cannot hold off a cluster is changed: the
/// address it listens on and advertises (no pod IP or Service DNS here), where the key file
/// is (no Secret volume), and the heartbeat (this registry's fast liveness). Returns the
/// process, its gRPC port and the port its probes are answered on.
fn run_pod(api: &FakeApi, launcher: &Launcher, dir: &Path, name: &str) -> (ChildGuard, u16, u16) {
    let sts: StatefulSet =
        serde_json::from_value(api.get("statefulsets", NS, name).unwrap()).unwrap();
    let secret: Secret =
        serde_json::from_value(api.get("secrets", NS, &format!("{name}-key")).unwrap()).unwrap();
    let key = &secret.data.unwrap()["node.key"].0;
    let key_file = dir.join(format!("{name}.key"));
    std::fs::write(&key_file, key).unwrap();
    std::fs::set_permissions(
        &key_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let container = sts.spec.unwrap().template.spec.unwrap().containers[0].clone();
    let port = free_port().unwrap();
    let health_port = free_port().unwrap();
    let moved = [
        ("NEUROSHARD_WORKER_LISTEN", format!("127.0.0.1:{port}")),
        (
            "NEUROSHARD_WORKER_HEALTH_LISTEN",
            format!("127.0.0.1:{health_port}"),
        ),
        (
            "NEUROSHARD_WORKER_ADVERTISE",
            format!("http://127.0.0.1:{port}"),
        ),
        ("NEUROSHARD_WORKER_KEY_FILE", key_file.display().to_string()),
        ("NEUROSHARD_WORKER_HEARTBEAT_INTERVAL_MS", "200".to_string()),
        ("OMP_NUM_THREADS", "1".to_string()),
    ];
    let mut env: Vec<(String, String)> = container
        .env
        .unwrap_or_default()
        .into_iter()
        .filter(|v| !moved.iter().any(|(name, _)| *name == v.name))
        .map(|v| (v.name, v.value.unwrap_or_default()))
        .collect();
    env.extend(moved.iter().map(|(k, v)| (k.to_string(), v.clone())));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let process = launcher
        .spawn(
            neuroshard_local::WORKER_BINARY,
            &format!("pod-{name}"),
            &toml::Table::new(),
            &env,
        )
        .unwrap();
    (process, port, health_port)
}

/// The health service name the pod's readiness probe asks for, after checking the probe is
/// a gRPC one on the worker's health port (the kubelet cannot do the gRPC port's mutual TLS).
fn readiness_probe(api: &FakeApi, name: &str) -> String {
    let sts: StatefulSet =
        serde_json::from_value(api.get("statefulsets", NS, name).unwrap()).unwrap();
    let container = sts.spec.unwrap().template.spec.unwrap().containers[0].clone();
    let grpc = container.readiness_probe.unwrap().grpc.unwrap();
    let env = container.env.unwrap_or_default();
    let health_listen = env
        .iter()
        .find(|v| v.name == "NEUROSHARD_WORKER_HEALTH_LISTEN")
        .and_then(|v| v.value.clone())
        .unwrap();
    assert_eq!(health_listen, format!("0.0.0.0:{}", grpc.port));
    grpc.service.unwrap()
}

async fn probe_passes(port: u16, service: &str) -> bool {
    use tonic_health::pb::health_check_response::ServingStatus;
    let Ok(channel) = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect()
        .await
    else {
        return false;
    };
    let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
    client
        .check(tonic_health::pb::HealthCheckRequest {
            service: service.into(),
        })
        .await
        .is_ok_and(|r| r.into_inner().status() == ServingStatus::Serving)
}

/// The body of a plain HTTP/1.0 GET that must answer 200.
async fn http_get(address: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: operator\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(
        response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200"),
        "{response}"
    );
    response
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string()
}

async fn eventually_connect(port: u16) -> ShardWorkerClient<tonic::transport::Channel> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(client) = ShardWorkerClient::connect(format!("http://127.0.0.1:{port}")).await {
            return client;
        }
        assert!(Instant::now() < deadline, "the pod never listened");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What the registry says of `node_id`.
async fn describe(swarm: &mut Swarm, node_id: &str) -> NodeDescription {
    swarm
        .registry
        .describe_nodes(DescribeNodesRequest {
            node_ids: vec![node_id.to_string()],
        })
        .await
        .unwrap()
        .into_inner()
        .nodes
        .remove(0)
}

fn condition(node: &Value, type_: &str) -> Option<String> {
    node["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .and_then(|c| c["status"].as_str().map(str::to_string))
}

fn event_reasons(api: &FakeApi) -> Vec<String> {
    api.all("events")
        .iter()
        .filter_map(|e| e["reason"].as_str().map(str::to_string))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_resource_becomes_a_serving_worker_and_deleting_it_drains_first() {
    let _one = support::one_swarm_at_a_time().await;
    let model = ModelConfig::small(4096);
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("operator.key");
    let operator_id = NodeKey::load_or_create(&key_file)
        .unwrap()
        .node_id()
        .to_string();
    let mut swarm = Swarm::start(|c| c.operators(&[&operator_id])).await;
    // Two workers outside the operator hold the whole model, so the operator's node can hand
    // its layers over when it goes.
    let whole = memory_for_layers(&model, 6);
    for _ in 0..2 {
        swarm.add_worker(|w| w.usable_memory_bytes(whole));
    }
    swarm
        .wait_for("two workers loaded", Duration::from_secs(60), |s| {
            s.nodes.len() == 2
        })
        .await;

    let api = FakeApi::default();
    let address = api.serve().await;
    let client = kube::Client::try_from(kube::Config::new(
        format!("http://{address}").parse().unwrap(),
    ))
    .unwrap();
    let config = OperatorConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        registry: swarm.registry_url.clone(),
        network_id: NET.into(),
        worker_tls_secret: None,
        tls: TlsFiles::insecure_plaintext(),
        key_file,
        resync_s: 1,
        drain_timeout_s: 60,
        model: model.clone(),
        lease_namespace: Some(NS.into()),
        ..OperatorConfig::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let health_address = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let operator = tokio::spawn(neuroshard_operator::run_with(
        client,
        config,
        listener,
        async move {
            let _ = stopped.await;
        },
    ));

    // kubectl apply
    api.create(
        "neuroshardnodes",
        NS,
        json!({
            "apiVersion": "neuroshard.io/v1alpha1",
            "kind": "NeuroShardNode",
            "metadata": {"name": "cpu-0", "namespace": NS},
            "spec": {"memory": whole.to_string(), "role": "auto"},
        }),
    );
    eventually(
        "the StatefulSet and key Secret",
        Duration::from_secs(20),
        || {
            api.get("statefulsets", NS, "cpu-0")?;
            api.get("secrets", NS, "cpu-0-key")?;
            api.get("services", NS, "cpu-0")
        },
    )
    .await;
    let launcher = support::launcher(dir.path());
    let started = Instant::now();
    let (mut pod, port, health_port) = run_pod(&api, &launcher, dir.path(), "cpu-0");
    // The StatefulSet controller's part: the pod counts as ready once its readiness probe
    // passes. The probe is the StatefulSet's own: a gRPC health check, in plaintext, of the
    // service it names, on the port it names (moved here like the listen address).
    let probe = readiness_probe(&api, "cpu-0");
    let mut worker = eventually_connect(port).await;
    let loaded_deadline = Instant::now() + Duration::from_secs(60);
    while !probe_passes(health_port, &probe).await {
        assert!(
            Instant::now() < loaded_deadline,
            "the pod's readiness probe never passed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        worker
            .info(InfoRequest {})
            .await
            .unwrap()
            .into_inner()
            .span
            .is_some(),
        "ready without a span"
    );
    let generation =
        api.get("statefulsets", NS, "cpu-0").unwrap()["metadata"]["generation"].clone();
    api.set_status(
        "statefulsets",
        NS,
        "cpu-0",
        json!({"observedGeneration": generation, "replicas": 1, "readyReplicas": 1,
            "updatedReplicas": 1, "currentRevision": "r1", "updateRevision": "r1"}),
    );

    // Ready, with the span the registry assigned that node id.
    let node = eventually("the node Ready", Duration::from_secs(60), || {
        let node = api.get("neuroshardnodes", NS, "cpu-0")?;
        (condition(&node, "Ready").as_deref() == Some("True")).then_some(node)
    })
    .await;
    eprintln!("Ready {:?} after the pod started", started.elapsed());
    let node_id = node["status"]["nodeId"].as_str().unwrap().to_string();
    let described = describe(&mut swarm, &node_id).await;
    let span = described.span.unwrap();
    assert_eq!(
        node["status"]["span"],
        json!(format!("[{}, {})", span.start, span.end))
    );
    assert_eq!(node["status"]["phase"], "Ready");
    assert_eq!(condition(&node, "Registered").as_deref(), Some("True"));
    assert_eq!(condition(&node, "LayersAssigned").as_deref(), Some("True"));
    assert!(node["status"]["lastHeartbeat"].is_string());
    let reasons = event_reasons(&api);
    assert!(reasons.contains(&"Created".to_string()), "{reasons:?}");
    // Its liveness endpoint answers (what the chart's probe asks).
    assert_eq!(http_get(health_address, "/healthz").await, "ok");
    // It reconciles as the leader of its Lease.
    let lease = api.get("leases", NS, "neuroshard-operator").unwrap();
    assert!(lease["spec"]["holderIdentity"].is_string(), "{lease}");
    assert!(reasons.contains(&"Serving".to_string()), "{reasons:?}");

    // kubectl delete: the registry drains the node before the finalizer lets it go.
    api.delete("neuroshardnodes", NS, "cpu-0");
    eventually("the node released", Duration::from_secs(30), || {
        api.get("neuroshardnodes", NS, "cpu-0")
            .is_none()
            .then_some(())
    })
    .await;
    let reasons = event_reasons(&api);
    assert!(reasons.contains(&"Drained".to_string()), "{reasons:?}");
    let drained = describe(&mut swarm, &node_id).await;
    assert!(drained.drain_pending_layers.is_empty(), "{drained:?}");
    // Its children went with it (owner references); the pod stops, and leaves the registry.
    assert!(api.get("statefulsets", NS, "cpu-0").is_none());
    assert!(
        pod.terminate(Duration::from_secs(30)),
        "the worker did not stop on SIGTERM"
    );
    let gone = swarm.snapshot().await;
    assert!(gone.nodes.iter().all(|n| n.node_id != node_id), "{gone:?}");

    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(10), operator)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    // Stopping lets the lease go, so a standby takes over at once.
    let lease = api.get("leases", NS, "neuroshard-operator").unwrap();
    assert!(lease["spec"]["holderIdentity"].is_null(), "{lease}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_leads_until_it_lets_go_or_stops_renewing() {
    use neuroshard_operator::lease::Elector;
    let api = FakeApi::default();
    let address = api.serve().await;
    let client = kube::Client::try_from(kube::Config::new(
        format!("http://{address}").parse().unwrap(),
    ))
    .unwrap();
    let lease = Duration::from_secs(3);
    let a = Elector::new(client.clone(), NS, "election", "a", lease);
    let b = Elector::new(client, NS, "election", "b", lease);
    assert!(a.try_lead().await.unwrap());
    assert!(!b.try_lead().await.unwrap(), "b took a lease a renews");
    assert!(
        a.try_lead().await.unwrap(),
        "a could not renew its own lease"
    );
    // a lets go: b leads at once.
    a.release().await.unwrap();
    assert!(b.try_lead().await.unwrap());
    assert!(!a.try_lead().await.unwrap());
    // b stops renewing: after the lease's duration a takes over.
    tokio::time::sleep(lease + Duration::from_millis(200)).await;
    assert!(a.try_lead().await.unwrap());
    let held = api.get("leases", NS, "election").unwrap();
    assert_eq!(held["spec"]["holderIdentity"], "a");
    assert_eq!(held["spec"]["leaseTransitions"], 2);
}
