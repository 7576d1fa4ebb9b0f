//! The registry as a real process against a real PostgreSQL: nodes register with their keys,
//! get spans with two replicas, a silent node is declared dead and its layers move, and
//! forged, high-S, replayed, stale and malformed messages are refused without changing state.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

mod support;

use std::time::{Duration, Instant};

use k256::ecdsa::Signature;
use neuroshard_common::ModelConfig;
use neuroshard_common::identity::NodeKey;
use neuroshard_common::signing::{now_ms, sign};
use neuroshard_local::{Launcher, LocalRegistry, PgServer, RegistryProcess, RegistryToml};
use neuroshard_proto::common::v1::SignedEnvelope;
use neuroshard_proto::registry::v1::layer_registry_client::LayerRegistryClient;
use neuroshard_proto::registry::v1::{
    GetAssignmentRequest, HeartbeatRequest, NodeState, RegisterRequest, RoutesRequest, WatchRequest,
};
use prost::Message;
use support::registry::{assignment, holders};
use tonic::Code;
use tonic::transport::Channel;

const NET: &str = "registry-test";
/// Enough for two layers of the default small model plus its embedding or head.
const NODE_MEMORY: u64 = 60_000_000;

/// Fields drop in order: the registry stops before its database, then the files go.
struct Swarm {
    client: LayerRegistryClient<Channel>,
    _registry: LocalRegistry,
    _dir: tempfile::TempDir,
}

/// The test's liveness timings (heartbeat 200 ms, suspect 600 ms, dead 1.2 s) and a fast
/// watch poll.
fn config() -> RegistryToml {
    // These nodes are keys without workers behind them: no reachability probe (the probe has
    // its own tests in registry_trust.rs).
    RegistryToml::new(NET)
        .tls(&neuroshard_runtime::tls::TlsFiles::insecure_plaintext())
        .unwrap()
        .endpoint_probe_timeout_ms(0)
        .liveness(200, 600, 1200)
        .watch_poll_ms(50)
}

/// Starts one more registry process, as `name`, on `pg` with `config`, and a client of it.
async fn spawn_registry(
    launcher: &Launcher,
    name: &str,
    pg: &PgServer,
    config: RegistryToml,
) -> (RegistryProcess, LayerRegistryClient<Channel>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let registry = RegistryProcess::start(launcher, name, &pg.url(), config, deadline).unwrap();
    let client = support::registry_client(&registry.url).await;
    (registry, client)
}

async fn start() -> Swarm {
    let dir = tempfile::tempdir().unwrap();
    let local = LocalRegistry::start(
        &support::launcher(dir.path()),
        config(),
        Duration::from_secs(20),
    )
    .unwrap();
    Swarm {
        client: support::registry_client(&local.registry.url).await,
        _registry: local,
        _dir: dir,
    }
}

fn envelope(key: &NodeKey, name: &str, nonce: u64, message: &impl Message) -> SignedEnvelope {
    support::registry::envelope(key, NET, name, nonce, message)
}

fn register_request(endpoint: &str) -> RegisterRequest {
    support::registry::register_request(endpoint, NODE_MEMORY, 1000.0)
}

async fn register(client: &mut LayerRegistryClient<Channel>, key: &NodeKey, nonce: u64) {
    register_with(client, key, nonce, NODE_MEMORY).await;
}

async fn register_with(
    client: &mut LayerRegistryClient<Channel>,
    key: &NodeKey,
    nonce: u64,
    memory: u64,
) {
    let mut req = register_request(&format!("http://127.0.0.1:1/{}", key.node_id()));
    req.capacity.as_mut().unwrap().usable_memory_bytes = memory;
    client
        .register(envelope(key, "RegisterRequest", nonce, &req))
        .await
        .unwrap();
}

/// The status of a call that must fail.
fn code<T: std::fmt::Debug>(result: Result<tonic::Response<T>, tonic::Status>) -> tonic::Status {
    result.unwrap_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_get_replicated_spans_and_a_dead_node_is_replaced() {
    let mut swarm = start().await;
    let keys: Vec<NodeKey> = (0..5).map(|_| NodeKey::generate()).collect();
    for key in &keys {
        register(&mut swarm.client, key, 1).await;
    }
    let snapshot = assignment(&mut swarm.client).await;
    assert!(snapshot.deficits.is_empty(), "{:?}", snapshot.deficits);
    assert!(
        holders(&snapshot).iter().all(|&h| h >= 2),
        "{:?}",
        holders(&snapshot)
    );
    assert!(snapshot.pipelines.len() >= 2, "{snapshot:?}");
    let routes = swarm
        .client
        .routes(RoutesRequest { max_routes: 4 })
        .await
        .unwrap()
        .into_inner();
    assert!(routes.routes.len() >= 2);
    assert_eq!(
        routes.routes[0].hops.first().unwrap().span.unwrap().start,
        0
    );

    // Keep four nodes alive; the fifth (holding layers) goes silent.
    let victim = snapshot
        .nodes
        .iter()
        .find(|n| n.span.is_some())
        .map(|n| n.node_id.clone())
        .unwrap();
    let mut watch = swarm
        .client
        .watch(WatchRequest {})
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.version, snapshot.version);
    let alive: Vec<&NodeKey> = keys.iter().filter(|k| k.node_id() != victim).collect();
    let started = Instant::now();
    let mut nonce = 10;
    let replaced = loop {
        for key in &alive {
            let hb = envelope(
                key,
                "HeartbeatRequest",
                nonce,
                &HeartbeatRequest {
                    queue_depth: 0,
                    ..Default::default()
                },
            );
            swarm.client.heartbeat(hb).await.unwrap();
        }
        nonce += 1;
        let now = assignment(&mut swarm.client).await;
        let dead = now.nodes.iter().find(|n| n.node_id == victim).unwrap();
        if dead.state == NodeState::Dead as i32 && holders(&now).iter().all(|&h| h >= 2) {
            break now;
        }
        assert!(
            started.elapsed() < Duration::from_millis(2 * 1200 + 1500),
            "not reassigned in time: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
    };
    eprintln!(
        "dead node's layers reassigned after {:?}",
        started.elapsed()
    );
    assert!(
        replaced
            .nodes
            .iter()
            .find(|n| n.node_id == victim)
            .unwrap()
            .span
            .is_none()
    );
    assert!(replaced.version > snapshot.version);
    // The watcher saw the change.
    let changed = tokio::time::timeout(Duration::from_secs(5), watch.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(changed.version > first.version);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_messages_are_refused_and_change_nothing() {
    let mut swarm = start().await;
    let key = NodeKey::generate();
    register(&mut swarm.client, &key, 5).await;
    let before = assignment(&mut swarm.client).await;
    let req = register_request("http://127.0.0.1:1/x");

    // Forged: payload changed after signing.
    let mut forged = envelope(&key, "RegisterRequest", 6, &req);
    forged.payload = register_request("http://127.0.0.1:2/evil").encode_to_vec();
    let status = code(swarm.client.register(forged).await);
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");

    // High-S twin of a valid signature.
    let mut high = envelope(&key, "RegisterRequest", 7, &req);
    let sig = Signature::from_slice(&high.signature).unwrap();
    high.signature = Signature::from_scalars(sig.r(), -*sig.s())
        .unwrap()
        .to_bytes()
        .to_vec();
    let status = code(swarm.client.register(high).await);
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(status.message().contains("high-S"), "{status:?}");

    // Replayed nonce (5 was used by the registration above), and an older one.
    for nonce in [5, 4] {
        let status = code(
            swarm
                .client
                .register(envelope(&key, "RegisterRequest", nonce, &req))
                .await,
        );
        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
        assert!(status.message().contains("nonce"), "{status:?}");
    }

    // Stale timestamp.
    let stale = sign(
        &key,
        NET,
        "RegisterRequest",
        8,
        now_ms() - 10 * 60_000,
        req.encode_to_vec(),
    )
    .unwrap();
    let status = code(swarm.client.register(stale).await);
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(status.message().contains("timestamp"), "{status:?}");

    // Another network, another message type.
    let other = sign(
        &key,
        "other-net",
        "RegisterRequest",
        9,
        now_ms(),
        req.encode_to_vec(),
    )
    .unwrap();
    assert_eq!(
        code(swarm.client.register(other).await).code(),
        Code::Unauthenticated
    );
    let wrong_type = envelope(&key, "HeartbeatRequest", 10, &req);
    assert_eq!(
        code(swarm.client.register(wrong_type).await).code(),
        Code::Unauthenticated
    );

    // Malformed payload and invalid fields, properly signed.
    let garbage = sign(
        &key,
        NET,
        "RegisterRequest",
        11,
        now_ms(),
        vec![0xff, 0xff, 0xff],
    )
    .unwrap();
    let status = code(swarm.client.register(garbage).await);
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("payload"), "{status:?}");
    let bad_endpoint = envelope(&key, "RegisterRequest", 12, &register_request("ftp://x"));
    let status = code(swarm.client.register(bad_endpoint).await);
    assert!(status.message().contains("endpoint"), "{status:?}");
    let mut no_memory = register_request("http://127.0.0.1:1/x");
    no_memory.capacity.as_mut().unwrap().usable_memory_bytes = 0;
    let status = code(
        swarm
            .client
            .register(envelope(&key, "RegisterRequest", 13, &no_memory))
            .await,
    );
    assert!(
        status.message().contains("usable_memory_bytes"),
        "{status:?}"
    );

    // Heartbeat from a node that never registered.
    let stranger = NodeKey::generate();
    let hb = envelope(
        &stranger,
        "HeartbeatRequest",
        1,
        &HeartbeatRequest {
            queue_depth: 0,
            ..Default::default()
        },
    );
    assert_eq!(
        code(swarm.client.heartbeat(hb).await).code(),
        Code::NotFound
    );

    let after = assignment(&mut swarm.client).await;
    assert_eq!(
        after, before,
        "refused messages changed the registry's state"
    );
    assert_eq!(
        after.nodes[0].endpoint,
        format!("http://127.0.0.1:1/{}", key.node_id())
    );
}

/// The registry's default: mutual TLS. A client with a certificate under the swarm's CA gets
/// in; plaintext, TLS without a client certificate, a certificate from another CA, and a
/// registry config with no [tls] at all get nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_links_are_mutual_and_refuse_plaintext_and_strangers() {
    use neuroshard_local::LocalPki;
    use neuroshard_runtime::tls::TlsFiles;
    let dir = tempfile::tempdir().unwrap();
    let pki = LocalPki::issue(&dir.path().join("tls"), &["registry", "client"]).unwrap();
    let elsewhere = LocalPki::issue(&dir.path().join("other"), &["client"]).unwrap();
    let launcher = support::launcher(dir.path());

    // Leaving [tls] out does not give a plaintext registry: it refuses to start.
    let refused = LocalRegistry::start(
        &launcher,
        RegistryToml::new(NET).endpoint_probe_timeout_ms(0),
        Duration::from_secs(20),
    )
    .unwrap_err()
    .to_string();
    assert!(refused.contains("tls.insecure_plaintext"), "{refused}");

    let local = LocalRegistry::start(
        &launcher,
        RegistryToml::new(NET)
            .endpoint_probe_timeout_ms(0)
            .tls(&pki.files("registry"))
            .unwrap(),
        Duration::from_secs(20),
    )
    .unwrap();
    let port = local.registry.port;
    let url = format!("https://localhost:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let channel = loop {
        if let Ok(channel) = pki.files("client").connect(&url).await {
            break channel;
        }
        assert!(Instant::now() < deadline, "TLS registry did not come up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut client = LayerRegistryClient::new(channel);
    let key = NodeKey::generate();
    register(&mut client, &key, 1).await;
    assert_eq!(assignment(&mut client).await.nodes.len(), 1);

    // Every stranger is refused by the time it asks for something.
    let refuses = |tls: TlsFiles| {
        let url = url.clone();
        async move {
            match tls.connect(&url).await {
                Err(_) => true,
                Ok(channel) => LayerRegistryClient::new(channel)
                    .get_assignment(GetAssignmentRequest {})
                    .await
                    .is_err(),
            }
        }
    };
    if let Ok(mut plain) = LayerRegistryClient::connect(format!("http://127.0.0.1:{port}")).await {
        assert!(plain.get_assignment(GetAssignmentRequest {}).await.is_err());
    }
    let err = TlsFiles::insecure_plaintext()
        .connect(&url)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("tls.ca_file"), "{err}");
    let anonymous = TlsFiles {
        ca_file: pki.files("client").ca_file,
        ..TlsFiles::default()
    };
    assert!(refuses(anonymous).await, "a client without a certificate");
    assert!(
        refuses(elsewhere.files("client")).await,
        "a client certificate from another CA"
    );
    drop(local);
}

/// Auto mode with two registry replicas on one database: no architecture until four nodes are
/// live, then a replicated 4-layer genesis shape; two more nodes make it grow (after the settle
/// time) to 6 layers of the same width, recorded in the growth history, placed with every layer
/// at two holders, and seen alike by both replicas and by a watcher; a node leaving never
/// shrinks it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_architecture_grows_with_capacity_and_replicas_agree() {
    let dir = tempfile::tempdir().unwrap();
    let launcher = support::launcher(dir.path());
    let pg = PgServer::start().unwrap();
    // Liveness generous enough that the test need not heartbeat; the depth curve scaled so
    // that 50 MB nodes choose a 4-layer, 256-wide model (see shape.rs for the arithmetic).
    let auto = config()
        .liveness(1000, 60_000, 120_000)
        .auto_architecture(4, 1500, 22.0)
        .model(&ModelConfig {
            vocab_size: 512,
            max_seq_len: 64,
            ..ModelConfig::small(4096)
        })
        .unwrap();
    let (_a, mut a) = spawn_registry(&launcher, "registry-a", &pg, auto.clone()).await;
    let (_b, mut b) = spawn_registry(&launcher, "registry-b", &pg, auto).await;
    let keys: Vec<NodeKey> = (0..6).map(|_| NodeKey::generate()).collect();
    for key in &keys[..3] {
        register_with(&mut a, key, 1, 50_000_000).await;
    }
    let early = assignment(&mut b).await;
    assert!(early.architecture.is_none(), "{early:?}");
    assert!(early.nodes.iter().all(|n| n.span.is_none()));

    register_with(&mut b, &keys[3], 1, 50_000_000).await;
    let genesis = assignment(&mut a).await;
    let arch = genesis.architecture.clone().unwrap();
    assert_eq!(
        (arch.num_layers, arch.hidden_size, arch.version),
        (4, 256, 1)
    );
    assert_eq!((arch.vocab_size, arch.max_seq_len), (512, 64));
    assert!(arch.growth.is_empty());
    assert!(holders(&genesis).iter().all(|&h| h >= 2), "{genesis:?}");
    assert_eq!(assignment(&mut b).await, genesis);

    let mut watch = b.watch(WatchRequest {}).await.unwrap().into_inner();
    assert_eq!(
        watch.message().await.unwrap().unwrap().version,
        genesis.version
    );
    register_with(&mut a, &keys[4], 1, 50_000_000).await;
    register_with(&mut b, &keys[5], 1, 50_000_000).await;
    // Not before the settle time.
    let soon = assignment(&mut a).await;
    assert_eq!(
        soon.architecture.as_ref().unwrap().num_layers,
        4,
        "{soon:?}"
    );

    let started = Instant::now();
    let grown = loop {
        let now = assignment(&mut a).await;
        if now.architecture.as_ref().unwrap().num_layers > 4 {
            break now;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no growth: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let arch = grown.architecture.clone().unwrap();
    assert_eq!(
        (arch.num_layers, arch.hidden_size, arch.version),
        (6, 256, 2)
    );
    assert_eq!(arch.growth.len(), 1);
    let g = &arch.growth[0];
    assert_eq!((g.from_layers, g.to_layers, g.version), (4, 6, 2));
    assert!(grown.deficits.is_empty(), "{grown:?}");
    assert!(
        holders(&grown).iter().all(|&h| h >= 2),
        "{:?}",
        holders(&grown)
    );
    assert_eq!(assignment(&mut b).await.architecture, grown.architecture);
    let seen = loop {
        let s = tokio::time::timeout(Duration::from_secs(5), watch.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if s.architecture.as_ref().unwrap().version == 2 {
            break s;
        }
    };
    assert_eq!(seen.architecture, grown.architecture);

    // A node leaves: the depth stays (trained layers are never dropped), the layers move.
    b.deregister(envelope(
        &keys[5],
        "DeregisterRequest",
        2,
        &neuroshard_proto::registry::v1::DeregisterRequest {},
    ))
    .await
    .unwrap();
    let after = assignment(&mut a).await;
    assert_eq!(after.architecture, grown.architecture);
    assert!(holders(&after).iter().all(|&h| h >= 2), "{after:?}");
}
