//! The registry's trust rules as a real process against a real PostgreSQL: a captured
//! Register is refused after a Deregister (nonces outlive membership), the allow-list admits
//! only its nodes, claims above the caps are clamped, Register dials the claimed endpoint,
//! only configured observers report measured throughput (which lowers, never raises, what
//! routing uses), and placement is sticky across a death and a join.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

mod support;

use std::collections::BTreeMap;
use std::pin::Pin;
use std::time::{Duration, Instant};

use neuroshard_common::identity::NodeKey;
use neuroshard_local::{LocalRegistry, RegistryToml};
use neuroshard_proto::common::v1::SignedEnvelope;
use neuroshard_proto::registry::v1::layer_registry_client::LayerRegistryClient;
use neuroshard_proto::registry::v1::{
    AssignmentSnapshot, DeregisterRequest, HeartbeatRequest, NodeObservation, NodeState,
    ObservationsRequest, RoutesRequest,
};
use neuroshard_proto::worker::v1::shard_worker_server::{ShardWorker, ShardWorkerServer};
use neuroshard_proto::worker::v1::{
    EndSessionRequest, EndSessionResponse, ForwardRequest, ForwardResponse, ForwardStreamRequest,
    ForwardStreamResponse, InfoRequest, InfoResponse, ReplayRequest, ReplayResponse,
    ReplayStreamRequest, ReplayStreamResponse,
};
use prost::Message;
use support::registry::{assignment, holders, register_request};
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status, Streaming};

const NET: &str = "registry-trust-test";
/// Enough for two layers of the default small (4-layer) model plus its embedding or head:
/// each node holds about half the model.
const NODE_MEMORY: u64 = 60_000_000;
const CLAIMED_TPS: f64 = 1000.0;

/// Fields drop in order: the registry stops before its database, then the files go.
struct Swarm {
    client: LayerRegistryClient<Channel>,
    _registry: LocalRegistry,
    _dir: tempfile::TempDir,
}

/// The test liveness timings (heartbeat 200 ms, suspect 600 ms, dead 1.2 s), a fast watch
/// poll, and no endpoint probe (nodes here have no worker behind them unless a test says so).
fn config() -> RegistryToml {
    RegistryToml::new(NET)
        .tls(&neuroshard_runtime::tls::TlsFiles::insecure_plaintext())
        .unwrap()
        .liveness(200, 600, 1200)
        .watch_poll_ms(50)
        .endpoint_probe_timeout_ms(0)
}

/// [`config`] with liveness generous enough that a test need not heartbeat (a node going
/// suspect would cut its route weight tenfold).
fn patient() -> RegistryToml {
    config().liveness(1000, 60_000, 120_000)
}

async fn start(config: RegistryToml) -> Swarm {
    let dir = tempfile::tempdir().unwrap();
    let local = LocalRegistry::start(
        &support::launcher(dir.path()),
        config,
        Duration::from_secs(20),
    )
    .unwrap();
    let client = support::registry_client(&local.registry.url).await;
    Swarm {
        client,
        _registry: local,
        _dir: dir,
    }
}

fn envelope(key: &NodeKey, name: &str, nonce: u64, message: &impl Message) -> SignedEnvelope {
    support::registry::envelope(key, NET, name, nonce, message)
}

fn register_envelope(key: &NodeKey, nonce: u64) -> SignedEnvelope {
    let req = register_request(
        &format!("http://127.0.0.1:1/{}", key.node_id()),
        NODE_MEMORY,
        CLAIMED_TPS,
    );
    envelope(key, "RegisterRequest", nonce, &req)
}

async fn register(client: &mut LayerRegistryClient<Channel>, key: &NodeKey, nonce: u64) {
    client
        .register(register_envelope(key, nonce))
        .await
        .unwrap();
}

async fn heartbeat(client: &mut LayerRegistryClient<Channel>, key: &NodeKey, nonce: u64) {
    let hb = envelope(
        key,
        "HeartbeatRequest",
        nonce,
        &HeartbeatRequest {
            queue_depth: 0,
            ..Default::default()
        },
    );
    client.heartbeat(hb).await.unwrap();
}

/// The status of a call that must fail.
fn refused<T: std::fmt::Debug>(result: Result<Response<T>, Status>) -> Status {
    result.unwrap_err()
}

type Span = Option<(u32, u32)>;

/// Every node's span, by node id.
fn spans(snapshot: &AssignmentSnapshot) -> BTreeMap<String, Span> {
    snapshot
        .nodes
        .iter()
        .map(|n| (n.node_id.clone(), n.span.map(|s| (s.start, s.end))))
        .collect()
}

fn node<'a>(
    snapshot: &'a AssignmentSnapshot,
    id: &str,
) -> &'a neuroshard_proto::registry::v1::NodeAssignment {
    snapshot
        .nodes
        .iter()
        .find(|n| n.node_id == id)
        .unwrap_or_else(|| panic!("node {id} not in {snapshot:?}"))
}

/// Defect 8: nonces used to live in the node's row, so a Deregister forgot them and a
/// captured Register was accepted again inside the clock window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_captured_register_is_refused_after_deregister() {
    let mut swarm = start(patient()).await;
    let key = NodeKey::generate();
    let captured = register_envelope(&key, 1);
    swarm.client.register(captured.clone()).await.unwrap();
    assert_eq!(assignment(&mut swarm.client).await.nodes.len(), 1);
    swarm
        .client
        .deregister(envelope(
            &key,
            "DeregisterRequest",
            2,
            &DeregisterRequest {},
        ))
        .await
        .unwrap();
    let gone = assignment(&mut swarm.client).await;
    assert!(gone.nodes.is_empty(), "{gone:?}");

    // The attacker replays the captured Register, well inside the clock window.
    let status = refused(swarm.client.register(captured).await);
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("nonce"), "{status:?}");
    assert!(status.message().contains("replay"), "{status:?}");
    assert_eq!(
        assignment(&mut swarm.client).await,
        gone,
        "a refused replay changed the registry's state"
    );
    // So is the Deregister itself, replayed.
    let status = refused(
        swarm
            .client
            .deregister(envelope(
                &key,
                "DeregisterRequest",
                2,
                &DeregisterRequest {},
            ))
            .await,
    );
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");

    // The node itself comes back with a fresh nonce.
    register(&mut swarm.client, &key, 3).await;
    let back = assignment(&mut swarm.client).await;
    assert_eq!(back.nodes.len(), 1);
    assert_eq!(back.nodes[0].node_id, key.node_id());
    assert_eq!(back.nodes[0].state, NodeState::Live as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_allow_list_admits_only_its_nodes_and_is_never_revealed() {
    let listed = NodeKey::generate();
    let mut swarm = start(patient().allow_list(&[listed.node_id()])).await;

    let stranger = NodeKey::generate();
    let status = refused(swarm.client.register(register_envelope(&stranger, 1)).await);
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("allow_list"), "{status:?}");
    assert!(
        !status.message().contains(listed.node_id()),
        "the refusal reveals the list: {status:?}"
    );
    assert!(!status.message().contains(&hex(&listed.public_key())));
    // Nor may it heartbeat (the check also applies to nodes taken off the list).
    let hb = envelope(
        &stranger,
        "HeartbeatRequest",
        2,
        &HeartbeatRequest {
            queue_depth: 0,
            ..Default::default()
        },
    );
    assert_eq!(
        refused(swarm.client.heartbeat(hb).await).code(),
        Code::PermissionDenied
    );
    assert!(assignment(&mut swarm.client).await.nodes.is_empty());

    register(&mut swarm.client, &listed, 1).await;
    heartbeat(&mut swarm.client, &listed, 2).await;
    let snapshot = assignment(&mut swarm.client).await;
    assert_eq!(snapshot.nodes.len(), 1);
    assert_eq!(snapshot.nodes[0].node_id, listed.node_id());
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_above_the_caps_are_clamped_and_the_nodes_still_hold_layers() {
    const TPS_CAP: f64 = 500.0;
    let mut swarm = start(patient().claim_caps(NODE_MEMORY, TPS_CAP)).await;
    // Four nodes claim a thousand times the memory cap (uncapped, each would hold the whole
    // model) and absurd throughput; a fifth claims within the caps.
    let greedy: Vec<NodeKey> = (0..4).map(|_| NodeKey::generate()).collect();
    for key in &greedy {
        let req = register_request(
            &format!("http://127.0.0.1:1/{}", key.node_id()),
            NODE_MEMORY * 1000,
            1e9,
        );
        swarm
            .client
            .register(envelope(key, "RegisterRequest", 1, &req))
            .await
            .unwrap();
    }
    let modest = NodeKey::generate();
    let req = register_request(
        &format!("http://127.0.0.1:1/{}", modest.node_id()),
        NODE_MEMORY / 2 + NODE_MEMORY / 4,
        300.0,
    );
    swarm
        .client
        .register(envelope(&modest, "RegisterRequest", 1, &req))
        .await
        .unwrap();

    let snapshot = assignment(&mut swarm.client).await;
    let num_layers = snapshot.architecture.as_ref().unwrap().num_layers;
    for key in &greedy {
        let n = node(&snapshot, key.node_id());
        let capacity = n.capacity.unwrap();
        assert_eq!(
            (capacity.usable_memory_bytes, capacity.tokens_per_second),
            (NODE_MEMORY, TPS_CAP),
            "{n:?}"
        );
        let span = n.span.expect("a capped node still gets layers");
        assert!(
            span.end - span.start < num_layers,
            "a capped node holds the whole model: {n:?}"
        );
    }
    let n = node(&snapshot, modest.node_id());
    let capacity = n.capacity.unwrap();
    assert_eq!(
        (capacity.usable_memory_bytes, capacity.tokens_per_second),
        (NODE_MEMORY / 2 + NODE_MEMORY / 4, 300.0),
        "a claim within the caps was changed: {n:?}"
    );
    assert!(snapshot.deficits.is_empty(), "{snapshot:?}");
    assert!(
        holders(&snapshot).iter().all(|&h| h >= 2),
        "{:?}",
        holders(&snapshot)
    );
    // Routing weighs the capped figure, not the claim.
    let routes = swarm
        .client
        .routes(RoutesRequest { max_routes: 16 })
        .await
        .unwrap()
        .into_inner();
    assert!(!routes.routes.is_empty());
    for hop in routes.routes.iter().flat_map(|r| &r.hops) {
        assert!(hop.weight <= TPS_CAP, "{hop:?}");
    }
}

/// A worker that answers `Info` as `node_id` and nothing else.
struct InfoOnly {
    node_id: String,
}

type BoxStream<T> = Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl ShardWorker for InfoOnly {
    type ForwardStreamStream = BoxStream<ForwardStreamResponse>;
    type ReplayStreamStream = BoxStream<ReplayStreamResponse>;

    async fn forward(
        &self,
        _: Request<ForwardRequest>,
    ) -> Result<Response<ForwardResponse>, Status> {
        Err(Status::unimplemented("info only"))
    }

    async fn replay(&self, _: Request<ReplayRequest>) -> Result<Response<ReplayResponse>, Status> {
        Err(Status::unimplemented("info only"))
    }

    async fn forward_stream(
        &self,
        _: Request<Streaming<ForwardStreamRequest>>,
    ) -> Result<Response<Self::ForwardStreamStream>, Status> {
        Err(Status::unimplemented("info only"))
    }

    async fn replay_stream(
        &self,
        _: Request<Streaming<ReplayStreamRequest>>,
    ) -> Result<Response<Self::ReplayStreamStream>, Status> {
        Err(Status::unimplemented("info only"))
    }

    async fn end_session(
        &self,
        _: Request<EndSessionRequest>,
    ) -> Result<Response<EndSessionResponse>, Status> {
        Err(Status::unimplemented("info only"))
    }

    async fn info(&self, _: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        Ok(Response::new(InfoResponse {
            node_id: self.node_id.clone(),
            ..InfoResponse::default()
        }))
    }
}

/// Serves [`InfoOnly`] on a loopback port until the handle is aborted; returns its URL.
async fn info_worker(node_id: &str) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let service = ShardWorkerServer::new(InfoOnly {
        node_id: node_id.to_string(),
    });
    let server = tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(neuroshard_runtime::grpc::incoming(listener))
            .await;
    });
    (url, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_requires_the_node_to_answer_at_its_endpoint() {
    let mut swarm = start(patient().endpoint_probe_timeout_ms(1000)).await;
    let key = NodeKey::generate();
    let register_at = |endpoint: &str, nonce: u64| {
        envelope(
            &key,
            "RegisterRequest",
            nonce,
            &register_request(endpoint, NODE_MEMORY, CLAIMED_TPS),
        )
    };

    // Nobody listens there.
    let dead = "http://127.0.0.1:1";
    let status = refused(swarm.client.register(register_at(dead, 1)).await);
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains(dead), "{status:?}");
    assert!(status.message().contains("not reachable"), "{status:?}");

    // Someone listens, but answers as another node (many keys pointing at one machine).
    let other = NodeKey::generate();
    let (elsewhere, other_server) = info_worker(other.node_id()).await;
    let status = refused(swarm.client.register(register_at(&elsewhere, 2)).await);
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains(&elsewhere), "{status:?}");
    assert!(status.message().contains(other.node_id()), "{status:?}");
    other_server.abort();
    assert!(assignment(&mut swarm.client).await.nodes.is_empty());

    // Its own worker answers: admitted, at that endpoint.
    let (own, server) = info_worker(key.node_id()).await;
    swarm.client.register(register_at(&own, 3)).await.unwrap();
    let snapshot = assignment(&mut swarm.client).await;
    assert_eq!(snapshot.nodes.len(), 1);
    assert_eq!(snapshot.nodes[0].node_id, key.node_id());
    assert_eq!(snapshot.nodes[0].endpoint, own);
    server.abort();
}

fn observations(nodes: &[(&str, f64)]) -> ObservationsRequest {
    ObservationsRequest {
        nodes: nodes
            .iter()
            .map(|(id, tps)| NodeObservation {
                node_id: (*id).to_string(),
                tokens_per_second: *tps,
                samples: 5,
            })
            .collect(),
    }
}

async fn hop_weights(client: &mut LayerRegistryClient<Channel>) -> BTreeMap<String, f64> {
    let routes = client
        .routes(RoutesRequest { max_routes: 16 })
        .await
        .unwrap()
        .into_inner();
    assert!(!routes.routes.is_empty());
    routes
        .routes
        .iter()
        .flat_map(|r| &r.hops)
        .map(|h| (h.node_id.clone(), h.weight))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_observers_report_and_a_measurement_only_ever_lowers_a_claim() {
    let observer = NodeKey::generate();
    let mut swarm = start(patient().observers(&[observer.node_id()])).await;
    let keys: Vec<NodeKey> = (0..4).map(|_| NodeKey::generate()).collect();
    for key in &keys {
        register(&mut swarm.client, key, 1).await;
    }
    let (slow, fast) = (keys[0].node_id(), keys[1].node_id());
    let report = observations(&[(slow, 40.0), (fast, 5000.0)]);

    // Neither a stranger nor a node reporting on itself is an observer.
    for (who, nonce) in [(&NodeKey::generate(), 1), (&keys[0], 2)] {
        let status = refused(
            swarm
                .client
                .report_observations(envelope(who, "ObservationsRequest", nonce, &report))
                .await,
        );
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
        assert!(status.message().contains("observer"), "{status:?}");
    }
    let before = assignment(&mut swarm.client).await;
    assert!(
        before
            .nodes
            .iter()
            .all(|n| n.observed_tokens_per_second == 0.0)
    );

    swarm
        .client
        .report_observations(envelope(&observer, "ObservationsRequest", 1, &report))
        .await
        .unwrap();
    let after = assignment(&mut swarm.client).await;
    assert_eq!(node(&after, slow).observed_tokens_per_second, 40.0);
    assert_eq!(node(&after, fast).observed_tokens_per_second, 5000.0);
    // The claims are kept as claimed; routing uses min(claim, observed).
    assert_eq!(
        node(&after, slow).capacity.unwrap().tokens_per_second,
        CLAIMED_TPS
    );
    let weights = hop_weights(&mut swarm.client).await;
    if let Some(&w) = weights.get(slow) {
        assert_eq!(w, 40.0, "{weights:?}");
    }
    if let Some(&w) = weights.get(fast) {
        assert_eq!(
            w, CLAIMED_TPS,
            "a measurement above the claim raised it: {weights:?}"
        );
    }
    assert!(
        weights.contains_key(slow) || weights.contains_key(fast),
        "neither observed node is on a route: {weights:?}"
    );
    // A replayed report is refused like any other replay.
    let status = refused(
        swarm
            .client
            .report_observations(envelope(&observer, "ObservationsRequest", 1, &report))
            .await,
    );
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");

    // The slow node claims ten times more: the measurement still bounds it.
    let louder = register_request(
        &format!("http://127.0.0.1:1/{slow}"),
        NODE_MEMORY,
        10.0 * CLAIMED_TPS,
    );
    swarm
        .client
        .register(envelope(&keys[0], "RegisterRequest", 3, &louder))
        .await
        .unwrap();
    let claimed_more = assignment(&mut swarm.client).await;
    let n = node(&claimed_more, slow);
    assert_eq!(n.capacity.unwrap().tokens_per_second, 10.0 * CLAIMED_TPS);
    assert_eq!(n.observed_tokens_per_second, 40.0, "{n:?}");
    let weights = hop_weights(&mut swarm.client).await;
    if let Some(&w) = weights.get(slow) {
        assert_eq!(w, 40.0, "a louder claim raised the weight: {weights:?}");
    }
}

/// Heartbeats every key in `alive` (nonce `nonce`, then increments it).
async fn heartbeat_all(
    client: &mut LayerRegistryClient<Channel>,
    alive: &[&NodeKey],
    nonce: &mut u64,
) {
    for key in alive {
        heartbeat(client, key, *nonce).await;
    }
    *nonce += 1;
}

/// Heartbeats `alive` every 150 ms until `done` holds for the assignment (returned), failing
/// after `limit`.
async fn heartbeat_until(
    client: &mut LayerRegistryClient<Channel>,
    alive: &[&NodeKey],
    nonce: &mut u64,
    limit: Duration,
    mut done: impl FnMut(&AssignmentSnapshot) -> bool,
) -> AssignmentSnapshot {
    let started = Instant::now();
    loop {
        heartbeat_all(client, alive, nonce).await;
        let now = assignment(client).await;
        if done(&now) {
            return now;
        }
        assert!(started.elapsed() < limit, "timed out: {now:?}");
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

/// Nodes whose span differs between `before` and `after` (among `before`'s nodes that
/// `after` lists).
fn moved(before: &BTreeMap<String, Span>, after: &BTreeMap<String, Span>) -> Vec<String> {
    before
        .iter()
        .filter(|(id, span)| after.get(*id).is_some_and(|now| now != *span))
        .map(|(id, _)| id.clone())
        .collect()
}

/// Silences `victim` (keeps heartbeating the other keys of `alive`) until it is declared
/// dead, checking that nothing moves before that; then checks the repair against `before`
/// (the spans before the death): every layer back at two holders or more, and at most one
/// holder moved, only when the victim left a layer short with no idle survivor to fill it,
/// and only a donor (a node all of whose layers kept more than two holders among the
/// survivors, so its leaving costs no layer its target). Returns the repaired assignment and
/// the keys still alive.
async fn kill<'a>(
    client: &mut LayerRegistryClient<Channel>,
    alive: &[&'a NodeKey],
    victim: &str,
    before: &AssignmentSnapshot,
    nonce: &mut u64,
) -> (AssignmentSnapshot, Vec<&'a NodeKey>) {
    let initial = spans(before);
    let victim_span = initial[victim].expect("the victim holds a span");
    let survivors: Vec<&NodeKey> = alive
        .iter()
        .copied()
        .filter(|k| k.node_id() != victim)
        .collect();
    let num_layers = before.architecture.as_ref().unwrap().num_layers;
    let live_ids: Vec<&str> = survivors.iter().map(|k| k.node_id()).collect();
    let surviving_holders: Vec<u32> = (0..num_layers)
        .map(|l| {
            initial
                .iter()
                .filter(|(id, span)| {
                    live_ids.contains(&id.as_str()) && span.is_some_and(|(s, e)| s <= l && l < e)
                })
                .count() as u32
        })
        .collect();
    let started = Instant::now();
    let repaired = heartbeat_until(
        client,
        &survivors,
        nonce,
        Duration::from_millis(2 * 1200 + 2500),
        |s| {
            let dead = node(s, victim).state == NodeState::Dead as i32;
            let early = moved(&initial, &spans(s));
            assert!(
                dead || early.is_empty(),
                "spans moved before the death: {early:?} in {s:?}"
            );
            dead
        },
    )
    .await;
    let after = spans(&repaired);
    eprintln!(
        "{victim} ({victim_span:?}) declared dead after {:?}; surviving holders were {surviving_holders:?}; spans {initial:?} -> {after:?}",
        started.elapsed(),
    );
    assert!(node(&repaired, victim).span.is_none(), "{repaired:?}");
    assert!(repaired.deficits.is_empty(), "{repaired:?}");
    assert!(
        holders(&repaired).iter().all(|&h| h >= 2),
        "{:?}",
        holders(&repaired)
    );
    // Survivors that held a span and now hold another (an idle node taking one is no move).
    let moves: Vec<String> = moved(&initial, &after)
        .into_iter()
        .filter(|id| live_ids.contains(&id.as_str()) && initial[id].is_some())
        .collect();
    for id in &moves {
        let (s, e) = initial[id].unwrap();
        assert!(
            (s..e).all(|l| surviving_holders[l as usize] > 2),
            "{id} moved from {:?} to {:?} though a layer of its span had only {surviving_holders:?} holders",
            initial[id],
            after[id]
        );
    }
    let idle = survivors.iter().any(|k| initial[k.node_id()].is_none());
    let short = (victim_span.0..victim_span.1).any(|l| surviving_holders[l as usize] < 2);
    let needed = usize::from(short && !idle);
    assert_eq!(
        moves.len(),
        needed,
        "{moves:?} moved where {needed} move(s) restore the target: {initial:?} -> {after:?}"
    );
    (repaired, survivors)
}

/// A worker whose span changes drops its sessions (and training state), so a death moves
/// only what restoring the replica target needs, and a join moves no existing node. Six nodes
/// that each hold half the model start with three holders per layer: the first death needs
/// no move; a second death of a node holding the same half leaves it one holder short, and
/// exactly one node of the other half (a donor) moves; a join moves nobody.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placement_is_sticky_across_deaths_and_a_join() {
    let mut swarm = start(config()).await;
    let keys: Vec<NodeKey> = (0..6).map(|_| NodeKey::generate()).collect();
    for key in &keys {
        register(&mut swarm.client, key, 1).await;
    }
    let mut nonce = 10;
    let all: Vec<&NodeKey> = keys.iter().collect();
    let placed = heartbeat_until(
        &mut swarm.client,
        &all,
        &mut nonce,
        Duration::from_secs(5),
        |s| s.deficits.is_empty() && s.nodes.iter().all(|n| n.state == NodeState::Live as i32),
    )
    .await;
    assert!(holders(&placed).iter().all(|&h| h >= 2), "{placed:?}");
    eprintln!(
        "initial spans: {:?}, holders {:?}",
        spans(&placed),
        holders(&placed)
    );

    // The first victim: the holder with the lowest node id (a placement made from scratch
    // over nodes in id order would shift every other node's position).
    let first = spans(&placed)
        .into_iter()
        .find(|(_, span)| span.is_some())
        .map(|(id, _)| id)
        .unwrap();
    let (once, alive) = kill(&mut swarm.client, &all, &first, &placed, &mut nonce).await;

    // The second: a holder of the layers that are now at the target, if any (with three
    // holders per layer at the start, the rest of the first victim's half).
    let holders_now = holders(&once);
    let spans_now = spans(&once);
    let second = spans_now
        .iter()
        .filter(|(id, _)| alive.iter().any(|k| k.node_id() == id.as_str()))
        .find(|(_, span)| span.is_some_and(|(s, e)| (s..e).any(|l| holders_now[l as usize] == 2)))
        .or_else(|| {
            spans_now
                .iter()
                .find(|(id, span)| **id != first && span.is_some())
        })
        .map(|(id, _)| id.clone())
        .unwrap();
    let (twice, alive) = kill(&mut swarm.client, &alive, &second, &once, &mut nonce).await;

    // A node joins, with the lowest id of all (again the worst case for a placement made from
    // scratch): nobody moves for it.
    let newcomer = loop {
        let key = NodeKey::generate();
        if keys.iter().all(|k| key.node_id() < k.node_id()) {
            break key;
        }
    };
    register(&mut swarm.client, &newcomer, 1).await;
    let mut alive = alive;
    alive.push(&newcomer);
    let joined = heartbeat_until(
        &mut swarm.client,
        &alive,
        &mut nonce,
        Duration::from_secs(5),
        |s| node(s, newcomer.node_id()).state == NodeState::Live as i32,
    )
    .await;
    // Several re-publications later (the reaper runs every 100 ms), still nobody has moved.
    for _ in 0..4 {
        heartbeat_all(&mut swarm.client, &alive, &mut nonce).await;
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let settled = assignment(&mut swarm.client).await;
    let before = spans(&twice);
    for snapshot in [&joined, &settled] {
        let now = spans(snapshot);
        let moves = moved(&before, &now);
        assert!(
            moves.is_empty(),
            "the join moved {moves:?}: {before:?} -> {now:?}"
        );
        assert!(snapshot.deficits.is_empty(), "{snapshot:?}");
    }
    assert!(
        node(&settled, newcomer.node_id()).span.is_some(),
        "{settled:?}"
    );
    eprintln!(
        "after the join: newcomer holds {:?}; holders {:?}",
        node(&settled, newcomer.node_id()).span,
        holders(&settled)
    );
}
