//! Draining through real processes: the registry tells an operator whether a node has loaded
//! its span and how far its drain is; it takes drains signed by a configured operator key and
//! refuses other strangers; a worker that gets SIGTERM keeps serving while its layers move,
//! then deregisters and exits on its own.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

mod support;

use std::time::{Duration, Instant};

use neuroshard_common::identity::NodeKey;
use neuroshard_proto::common::v1::{LayerSpan, Role};
use neuroshard_proto::registry::v1::layer_registry_client::LayerRegistryClient;
use neuroshard_proto::registry::v1::{
    DescribeNodesRequest, DrainRequest, HeartbeatRequest, NodeDescription, NodeState,
};
use neuroshard_proto::worker::v1::InfoRequest;
use neuroshard_proto::worker::v1::shard_worker_client::ShardWorkerClient;
use support::registry::{assignment, envelope, register_request};
use support::swarm::{Swarm, memory_for_layers, min_holders};
use tonic::Code;
use tonic::transport::Channel;

const NET: &str = support::swarm::NET;
/// Two layers of the default small model plus its embedding or head.
const NODE_MEMORY: u64 = 60_000_000;

async fn describe(client: &mut LayerRegistryClient<Channel>, ids: &[&str]) -> Vec<NodeDescription> {
    client
        .describe_nodes(DescribeNodesRequest {
            node_ids: ids.iter().map(|s| s.to_string()).collect(),
        })
        .await
        .unwrap()
        .into_inner()
        .nodes
}

/// A heartbeat from `key` reporting `loaded` (of architecture version 1) loaded.
async fn beat(
    client: &mut LayerRegistryClient<Channel>,
    key: &NodeKey,
    nonce: u64,
    loaded: Option<LayerSpan>,
) {
    let request = HeartbeatRequest {
        queue_depth: 0,
        loaded_span: loaded,
        loaded_architecture_version: 1,
    };
    client
        .heartbeat(envelope(key, NET, "HeartbeatRequest", nonce, &request))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_drain_nodes_and_see_the_handover_and_strangers_cannot() {
    let operator = NodeKey::generate();
    let operator_id = operator.node_id().to_string();
    let mut swarm = Swarm::start(|c| {
        c.endpoint_probe_timeout_ms(0)
            .liveness(500, 5_000, 10_000)
            .operators(&[&operator_id])
    })
    .await;
    let client = &mut swarm.registry;
    let keys: Vec<NodeKey> = (0..5).map(|_| NodeKey::generate()).collect();
    for (i, key) in keys.iter().enumerate() {
        let mut request = register_request(&format!("http://127.0.0.1:1/{i}"), NODE_MEMORY, 1000.0);
        if i == 0 {
            request.preferred_role = Role::Validator as i32;
        }
        client
            .register(envelope(key, NET, "RegisterRequest", 1, &request))
            .await
            .unwrap();
    }
    // A role no node can ask for is refused by name.
    let mut full = register_request("http://127.0.0.1:1/x", NODE_MEMORY, 1000.0);
    full.preferred_role = Role::Full as i32;
    let refused = client
        .register(envelope(
            &NodeKey::generate(),
            NET,
            "RegisterRequest",
            1,
            &full,
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(refused.message().contains("preferred_role"), "{refused:?}");

    // Nothing is loaded until heartbeats say so; then exactly the assigned span counts.
    let snapshot = assignment(client).await;
    let ids: Vec<String> = keys.iter().map(|k| k.node_id().to_string()).collect();
    let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let before = describe(client, &id_refs).await;
    assert!(before.iter().all(|d| d.registered && !d.loaded));
    let span_of = |id: &str, s: &neuroshard_proto::registry::v1::AssignmentSnapshot| {
        s.nodes.iter().find(|n| n.node_id == id).unwrap().span
    };
    let mut nonce = 10;
    for key in &keys {
        beat(client, key, nonce, span_of(key.node_id(), &snapshot)).await;
    }
    let loaded = describe(client, &id_refs).await;
    for d in &loaded {
        assert_eq!(d.loaded, d.span.is_some(), "{d:?}");
        assert_eq!(d.state, NodeState::Live as i32);
        assert!(d.heartbeat_age_ms < 5_000);
    }
    // Its preference is honoured: a validator position with room for it exists.
    assert_eq!(loaded[0].role, Role::Validator as i32, "{:?}", loaded[0]);
    assert!(loaded[0].role_note.is_empty(), "{:?}", loaded[0]);
    // Ids that are not node ids are named; unknown ones are simply not registered.
    let bad = client
        .describe_nodes(DescribeNodesRequest {
            node_ids: vec!["nope".into()],
        })
        .await
        .unwrap_err();
    assert!(bad.message().contains("node_ids[0]"), "{bad:?}");
    let stranger = NodeKey::generate();
    assert!(!describe(client, &[stranger.node_id()]).await[0].registered);

    // A victim that holds layers; a stranger (not an operator, not the node) may not drain it.
    let victim = loaded
        .iter()
        .find(|d| d.span.is_some())
        .unwrap()
        .node_id
        .clone();
    let held = loaded
        .iter()
        .find(|d| d.node_id == victim)
        .unwrap()
        .span
        .unwrap();
    let ask = DrainRequest {
        node_id: victim.clone(),
    };
    let denied = client
        .drain(envelope(&stranger, NET, "DrainRequest", 1, &ask))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert_eq!(
        describe(client, &[&victim]).await[0].state,
        NodeState::Live as i32
    );

    // The operator may. The layers it held stay pending until two others report them loaded.
    let pending = client
        .drain(envelope(&operator, NET, "DrainRequest", 1, &ask))
        .await
        .unwrap()
        .into_inner()
        .pending_layers;
    let after = assignment(client).await;
    let d = &describe(client, &[&victim]).await[0];
    assert_eq!(d.state, NodeState::Draining as i32);
    assert!(
        d.span.is_none(),
        "a draining node is assigned nothing: {d:?}"
    );
    assert_eq!(d.drain_pending_layers, pending);
    // The same request again is a replay.
    let replay = client
        .drain(envelope(&operator, NET, "DrainRequest", 1, &ask))
        .await
        .unwrap_err();
    assert_eq!(replay.code(), Code::FailedPrecondition, "{replay:?}");
    let started = Instant::now();
    loop {
        nonce += 1;
        for key in keys.iter().filter(|k| k.node_id() != victim) {
            beat(client, key, nonce, span_of(key.node_id(), &after)).await;
        }
        let d = &describe(client, &[&victim]).await[0];
        if d.drain_pending_layers.is_empty() {
            break;
        }
        // Four nodes of two layers each can give every layer two other holders.
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the drain of {held:?} never completed: {d:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(min_holders(&after) >= 2, "{after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_told_to_stop_hands_its_layers_over_while_serving_then_deregisters() {
    let _one = support::one_swarm_at_a_time().await;
    let config = neuroshard_common::ModelConfig::small(4096);
    let mut swarm = Swarm::start(|c| c).await;
    for _ in 0..5 {
        swarm.add_worker(|w| {
            w.usable_memory_bytes(memory_for_layers(&config, 2))
                .drain_timeout_ms(30_000)
        });
    }
    let snapshot = swarm
        .wait_for(
            "five workers placed and loaded",
            Duration::from_secs(120),
            |s| s.nodes.len() == 5 && min_holders(s) >= 2,
        )
        .await;
    // The victim: a holder of a span that has only one other holder, so the drain must wait
    // for another node to load it.
    let holders_of = |span: LayerSpan| {
        snapshot
            .nodes
            .iter()
            .filter(|n| n.span == Some(span))
            .count()
    };
    let victim = snapshot
        .nodes
        .iter()
        .filter(|n| n.span.is_some())
        .min_by_key(|n| holders_of(n.span.unwrap()))
        .unwrap()
        .clone();
    let index = swarm
        .workers
        .iter()
        .position(|(_, port)| victim.endpoint.ends_with(&format!(":{port}")))
        .unwrap();
    let mut worker = ShardWorkerClient::connect(victim.endpoint.clone())
        .await
        .unwrap();
    let pid = swarm.workers[index].0.pid();
    let started = Instant::now();
    support::signal(pid, "TERM");
    // It keeps serving its span until it has left.
    let mut served_while_draining = 0;
    while swarm.workers[index].0.running() {
        if let Ok(info) = worker.info(InfoRequest {}).await {
            assert_eq!(info.into_inner().span, victim.span);
            served_while_draining += 1;
        }
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "the worker did not exit"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = started.elapsed();
    eprintln!(
        "drained and left in {took:?}, answering {served_while_draining} Info calls meanwhile"
    );
    assert!(served_while_draining > 0);
    // Gone from the registry (deregistered, not merely dead), and every layer still has two
    // loaded holders.
    let after = swarm
        .wait_for("the rest placed and loaded", Duration::from_secs(30), |s| {
            min_holders(s) >= 2
        })
        .await;
    assert!(
        after.nodes.iter().all(|n| n.node_id != victim.node_id),
        "{after:?}"
    );
    assert!(
        took < Duration::from_secs(30),
        "it waited out its timeout: {took:?}"
    );
}
