//! Every reconcile step against kube's `tower-test` mock API server: each scenario answers
//! the exact requests the reconciler must make, in order, and checks what they carry; a
//! request the scenario does not expect is never answered, so the reconcile times out and
//! the test fails.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use http::{Method, Request, Response, StatusCode};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::ObjectMeta;
use kube::client::Body;
use kube::runtime::events::{Recorder, Reporter};
use kube::{Client, ResourceExt};
use neuroshard_common::Error;
use neuroshard_common::identity::NodeKey;
use neuroshard_operator::OperatorConfig;
use neuroshard_operator::crd::{NeuroShardNode, NeuroShardNodeSpec, NeuroShardNodeStatus};
use neuroshard_operator::reconcile::{Context, FINALIZER, reconcile};
use neuroshard_operator::registry::Registry;
use neuroshard_proto::common::v1::{LayerSpan, Role};
use neuroshard_proto::registry::v1::{NodeDescription, NodeState};
use serde_json::{Value, json};
use std::sync::Mutex;

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

const NS: &str = "swarm";
const NODES: &str = "/apis/neuroshard.io/v1alpha1/namespaces/swarm/neuroshardnodes";
const STATEFULSET: &str = "/apis/apps/v1/namespaces/swarm/statefulsets/cpu-0";
const SERVICE: &str = "/api/v1/namespaces/swarm/services/cpu-0";
const SECRET: &str = "/api/v1/namespaces/swarm/secrets/cpu-0-key";

/// A registry that answers what the scenario scripted, and records the drains asked of it.
#[derive(Default)]
struct ScriptedRegistry {
    description: Mutex<Option<NodeDescription>>,
    pending_after_drain: Mutex<Vec<u32>>,
    drained: Mutex<Vec<String>>,
    /// The rest of the swarm, for the rollout.
    others: Mutex<Vec<NodeDescription>>,
}

impl Registry for ScriptedRegistry {
    fn describe(&self, node_id: String) -> BoxFuture<'_, Result<NodeDescription, Error>> {
        Box::pin(async move {
            let scripted = self.description.lock().unwrap().clone();
            Ok(scripted.unwrap_or(NodeDescription {
                node_id,
                ..NodeDescription::default()
            }))
        })
    }

    fn describe_all(&self) -> BoxFuture<'_, Result<Vec<NodeDescription>, Error>> {
        Box::pin(async move {
            let mut all: Vec<NodeDescription> = self.others.lock().unwrap().clone();
            all.extend(self.description.lock().unwrap().clone());
            Ok(all)
        })
    }

    fn drain(&self, node_id: String) -> BoxFuture<'_, Result<Vec<u32>, Error>> {
        Box::pin(async move {
            self.drained.lock().unwrap().push(node_id);
            Ok(self.pending_after_drain.lock().unwrap().clone())
        })
    }
}

fn described(node_id: &str, state: NodeState, loaded: bool) -> NodeDescription {
    NodeDescription {
        node_id: node_id.into(),
        registered: true,
        state: state as i32,
        span: Some(LayerSpan { start: 0, end: 2 }),
        role: Role::Driver as i32,
        heartbeat_age_ms: 400,
        loaded,
        ..NodeDescription::default()
    }
}

fn context() -> (Arc<Context>, Handle) {
    context_with(Arc::new(ScriptedRegistry::default()))
}

fn context_with(registry: Arc<ScriptedRegistry>) -> (Arc<Context>, Handle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, NS);
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "neuroshard-operator".into(),
            instance: None,
        },
    );
    let config = OperatorConfig {
        worker_tls_secret: None,
        ..OperatorConfig::default()
    };
    (
        Arc::new(Context {
            client,
            config: Arc::new(config),
            recorder,
            registry,
            rollouts: Arc::default(),
        }),
        handle,
    )
}

fn node(spec: NeuroShardNodeSpec) -> NeuroShardNode {
    NeuroShardNode {
        metadata: ObjectMeta {
            name: Some("cpu-0".into()),
            namespace: Some(NS.into()),
            uid: Some("uid-cpu-0".into()),
            generation: Some(3),
            ..ObjectMeta::default()
        },
        spec,
        status: None,
    }
}

fn valid() -> NeuroShardNodeSpec {
    NeuroShardNodeSpec {
        role: "auto".into(),
        memory: Some("4Gi".into()),
        ..NeuroShardNodeSpec::default()
    }
}

fn finalized(mut n: NeuroShardNode) -> NeuroShardNode {
    n.finalizers_mut().push(FINALIZER.into());
    n
}

/// The next request: it must be `method` on `path` (query aside); returns its JSON body
/// (Null when empty) and the responder.
async fn expect(
    handle: &mut Handle,
    method: Method,
    path: &str,
) -> (
    Value,
    String,
    tower_test::mock::SendResponse<Response<Body>>,
) {
    let (request, send) = tokio::time::timeout(Duration::from_secs(5), handle.next_request())
        .await
        .unwrap_or_else(|_| panic!("no {method} {path} came"))
        .unwrap_or_else(|| panic!("the client is gone before {method} {path}"));
    assert_eq!(request.method(), method, "{}", request.uri());
    assert_eq!(request.uri().path(), path);
    let query = request.uri().query().unwrap_or("").to_string();
    let bytes = request.into_body().collect_bytes().await.unwrap();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    (body, query, send)
}

fn reply(send: tower_test::mock::SendResponse<Response<Body>>, status: StatusCode, body: &Value) {
    send.send_response(
        Response::builder()
            .status(status)
            .body(Body::from(serde_json::to_vec(body).unwrap()))
            .unwrap(),
    );
}

fn not_found(name: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
           "message": format!("secrets \"{name}\" not found"), "reason": "NotFound", "code": 404})
}

async fn run(node: NeuroShardNode, ctx: Arc<Context>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        tokio::time::timeout(Duration::from_secs(10), reconcile(Arc::new(node), ctx))
            .await
            .expect("the reconcile hung on a request the scenario did not expect")
            .expect("the reconcile failed");
    })
}

/// The key Secret read back: answered with `secret`.
async fn key_read_back(handle: &mut Handle, secret: &Value) {
    let (_, _, send) = expect(handle, Method::GET, SECRET).await;
    reply(send, StatusCode::OK, secret);
}

/// A server-side apply to `path`, answered with what was applied; returns it.
async fn echo_apply(handle: &mut Handle, path: &str) -> Value {
    let (body, _, send) = expect(handle, Method::PATCH, path).await;
    reply(send, StatusCode::OK, &body);
    body
}

/// The read of the running StatefulSet: answered with `running` (or 404).
async fn running_statefulset(handle: &mut Handle, running: Option<&Value>) {
    let (_, _, send) = expect(handle, Method::GET, STATEFULSET).await;
    match running {
        Some(sts) => reply(send, StatusCode::OK, sts),
        None => reply(send, StatusCode::NOT_FOUND, &not_found("cpu-0")),
    }
}

/// `sts` as the StatefulSet controller leaves it once its pod runs the newest template and
/// is ready.
fn rolled_out(mut sts: Value) -> Value {
    sts["metadata"]["generation"] = json!(1);
    sts["status"] = json!({"observedGeneration": 1, "replicas": 1, "readyReplicas": 1,
        "updatedReplicas": 1, "currentRevision": "r1", "updateRevision": "r1"});
    sts
}

/// The event the reconcile publishes: its reason.
async fn event(handle: &mut Handle) -> String {
    let (body, _, send) = expect(
        handle,
        Method::POST,
        "/apis/events.k8s.io/v1/namespaces/swarm/events",
    )
    .await;
    reply(send, StatusCode::CREATED, &body);
    body["reason"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn a_new_node_gets_the_finalizer_first() {
    let (ctx, mut handle) = context();
    let task = run(node(valid()), ctx).await;
    let (patch, _, send) = expect(&mut handle, Method::PATCH, &format!("{NODES}/cpu-0")).await;
    assert!(patch.to_string().contains(FINALIZER), "{patch}");
    reply(
        send,
        StatusCode::OK,
        &serde_json::to_value(finalized(node(valid()))).unwrap(),
    );
    task.await.unwrap();
}

#[tokio::test]
async fn a_node_gets_a_key_its_objects_and_a_status() {
    let (ctx, mut handle) = context();
    let task = run(finalized(node(valid())), ctx).await;
    let (_, _, send) = expect(
        &mut handle,
        Method::GET,
        "/api/v1/namespaces/swarm/secrets/cpu-0-key",
    )
    .await;
    reply(send, StatusCode::NOT_FOUND, &not_found("cpu-0-key"));
    let (secret, _, send) = expect(
        &mut handle,
        Method::POST,
        "/api/v1/namespaces/swarm/secrets",
    )
    .await;
    let key_hex = secret["stringData"]["node.key"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(key_hex.len(), 64);
    assert_eq!(secret["immutable"], true);
    assert_eq!(secret["metadata"]["ownerReferences"][0]["uid"], "uid-cpu-0");
    reply(send, StatusCode::CREATED, &secret);
    let node_id = NodeKey::from_file_contents(&key_hex)
        .unwrap()
        .node_id()
        .to_string();

    running_statefulset(&mut handle, None).await;
    let (sts, query, send) = expect(
        &mut handle,
        Method::PATCH,
        "/apis/apps/v1/namespaces/swarm/statefulsets/cpu-0",
    )
    .await;
    assert!(
        query.contains("fieldManager=neuroshard-operator") && query.contains("force=true"),
        "{query}"
    );
    let env = sts["spec"]["template"]["spec"]["containers"][0]["env"].to_string();
    assert!(env.contains(&(4u64 << 30).to_string()), "{env}");
    reply(send, StatusCode::OK, &sts);
    let (svc, query, send) = expect(
        &mut handle,
        Method::PATCH,
        "/api/v1/namespaces/swarm/services/cpu-0",
    )
    .await;
    assert!(
        query.contains("fieldManager=neuroshard-operator"),
        "{query}"
    );
    reply(send, StatusCode::OK, &svc);
    let (status, _, send) =
        expect(&mut handle, Method::PATCH, &format!("{NODES}/cpu-0/status")).await;
    assert_eq!(status["status"]["nodeId"], node_id);
    // The worker has not registered yet: not Ready, and the status says why.
    assert_eq!(status["status"]["phase"], "Starting");
    assert_eq!(status["status"]["observedGeneration"], 3);
    assert_eq!(status["status"]["conditions"][0]["type"], "SpecValid");
    assert_eq!(status["status"]["conditions"][0]["status"], "True");
    let conditions = status["status"]["conditions"].to_string();
    assert!(
        conditions.contains(r#""reason":"NotRegistered","status":"False","type":"Ready""#),
        "{conditions}"
    );
    reply(
        send,
        StatusCode::OK,
        &serde_json::to_value(finalized(node(valid()))).unwrap(),
    );
    assert_eq!(event(&mut handle).await, "Created");
    task.await.unwrap();
}

#[tokio::test]
async fn an_existing_key_secret_is_read_back_never_replaced() {
    let (ctx, mut handle) = context();
    let key = NodeKey::generate();
    let mut known = finalized(node(valid()));
    known.status = Some(NeuroShardNodeStatus {
        node_id: Some(key.node_id().into()),
        phase: Some("Pending".into()),
        ..NeuroShardNodeStatus::default()
    });
    let task = run(known.clone(), ctx).await;
    let (_, _, send) = expect(
        &mut handle,
        Method::GET,
        "/api/v1/namespaces/swarm/secrets/cpu-0-key",
    )
    .await;
    let secret = k8s_openapi::api::core::v1::Secret {
        metadata: ObjectMeta {
            name: Some("cpu-0-key".into()),
            namespace: Some(NS.into()),
            ..ObjectMeta::default()
        },
        data: Some(std::collections::BTreeMap::from([(
            "node.key".to_string(),
            k8s_openapi::ByteString(key.to_file_contents().into_bytes()),
        )])),
        ..Default::default()
    };
    reply(
        send,
        StatusCode::OK,
        &serde_json::to_value(&secret).unwrap(),
    );
    // No POST: straight to the StatefulSet.
    running_statefulset(&mut handle, None).await;
    let (sts, _, send) = expect(
        &mut handle,
        Method::PATCH,
        "/apis/apps/v1/namespaces/swarm/statefulsets/cpu-0",
    )
    .await;
    reply(send, StatusCode::OK, &sts);
    let (svc, _, send) = expect(
        &mut handle,
        Method::PATCH,
        "/api/v1/namespaces/swarm/services/cpu-0",
    )
    .await;
    reply(send, StatusCode::OK, &svc);
    let (status, _, send) =
        expect(&mut handle, Method::PATCH, &format!("{NODES}/cpu-0/status")).await;
    assert_eq!(status["status"]["nodeId"], key.node_id());
    reply(send, StatusCode::OK, &serde_json::to_value(&known).unwrap());
    // A node it already knew: no "Created" event.
    task.await.unwrap();
}

#[tokio::test]
async fn an_invalid_spec_is_a_condition_and_creates_nothing() {
    let (ctx, mut handle) = context();
    let spec = NeuroShardNodeSpec {
        memory: None,
        ..valid()
    };
    let task = run(finalized(node(spec.clone())), ctx).await;
    let (status, _, send) =
        expect(&mut handle, Method::PATCH, &format!("{NODES}/cpu-0/status")).await;
    assert_eq!(status["status"]["phase"], "Invalid");
    let condition = &status["status"]["conditions"][0];
    assert_eq!(condition["type"], "SpecValid");
    assert_eq!(condition["status"], "False");
    assert_eq!(condition["reason"], "InvalidSpec");
    assert!(
        condition["message"]
            .as_str()
            .unwrap()
            .starts_with("spec.memory: missing"),
        "{condition}"
    );
    reply(
        send,
        StatusCode::OK,
        &serde_json::to_value(finalized(node(spec))).unwrap(),
    );
    assert_eq!(event(&mut handle).await, "InvalidSpec");
    task.await.unwrap();
}

fn deleting(status: Option<NeuroShardNodeStatus>) -> NeuroShardNode {
    let mut n = finalized(node(valid()));
    n.metadata.deletion_timestamp = Some(Time("2026-12-01T00:00:00Z".parse().unwrap()));
    n.status = status;
    n
}

fn with_id(node_id: &str) -> NeuroShardNodeStatus {
    NeuroShardNodeStatus {
        node_id: Some(node_id.into()),
        phase: Some("Ready".into()),
        ..NeuroShardNodeStatus::default()
    }
}

/// The finalizer's removal: a JSON patch that removes it.
async fn finalizer_removed(handle: &mut Handle, mut node: NeuroShardNode) {
    let (patch, _, send) = expect(handle, Method::PATCH, &format!("{NODES}/cpu-0")).await;
    assert!(patch.to_string().contains("remove"), "{patch}");
    node.finalizers_mut().clear();
    reply(send, StatusCode::OK, &serde_json::to_value(&node).unwrap());
}

#[tokio::test]
async fn deleting_a_node_that_never_registered_releases_it_at_once() {
    let (ctx, mut handle) = context();
    let node = deleting(None);
    let task = run(node.clone(), ctx).await;
    assert_eq!(event(&mut handle).await, "Deleted");
    finalizer_removed(&mut handle, node).await;
    task.await.unwrap();
}

#[tokio::test]
async fn deleting_a_serving_node_drains_it_and_waits_for_the_handover() {
    let registry = Arc::new(ScriptedRegistry::default());
    let id = NodeKey::generate().node_id().to_string();
    *registry.description.lock().unwrap() = Some(described(&id, NodeState::Live, true));
    *registry.pending_after_drain.lock().unwrap() = vec![1];
    let (ctx, mut handle) = context_with(registry.clone());
    let node = deleting(Some(with_id(&id)));
    let task = tokio::spawn(reconcile(Arc::new(node.clone()), ctx.clone()));
    // The drain is asked for; the status says what is still pending, with an Event.
    let (status, _, send) =
        expect(&mut handle, Method::PATCH, &format!("{NODES}/cpu-0/status")).await;
    assert_eq!(status["status"]["phase"], "Draining");
    let draining = &status["status"]["conditions"][0];
    assert_eq!(draining["type"], "Draining");
    assert_eq!(draining["status"], "True");
    assert!(
        draining["message"].as_str().unwrap().contains("[1]"),
        "{draining}"
    );
    reply(send, StatusCode::OK, &serde_json::to_value(&node).unwrap());
    assert_eq!(event(&mut handle).await, "Draining");
    // The finalizer stays: the reconcile ends in "draining", to look again soon.
    let outcome = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
    assert!(outcome.unwrap_err().to_string().contains("draining"));
    assert_eq!(*registry.drained.lock().unwrap(), vec![id.clone()]);

    // The next look: the registry says it is draining and nothing is pending any more.
    let mut drained = described(&id, NodeState::Draining, false);
    drained.span = None;
    *registry.description.lock().unwrap() = Some(drained);
    let mut node = node;
    node.status = Some(serde_json::from_value(status["status"].clone()).unwrap());
    let task = run(node.clone(), ctx).await;
    assert_eq!(event(&mut handle).await, "Drained");
    finalizer_removed(&mut handle, node).await;
    task.await.unwrap();
    // Not asked to drain twice.
    assert_eq!(registry.drained.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_drain_past_its_timeout_releases_the_pod_and_says_so() {
    let registry = Arc::new(ScriptedRegistry::default());
    let id = NodeKey::generate().node_id().to_string();
    let mut stuck = described(&id, NodeState::Draining, false);
    stuck.drain_pending_layers = vec![0, 1];
    *registry.description.lock().unwrap() = Some(stuck);
    let (ctx, mut handle) = context_with(registry);
    let mut status = with_id(&id);
    status.conditions.push(Condition {
        type_: "Draining".into(),
        status: "True".into(),
        reason: "Draining".into(),
        message: String::new(),
        // Long before the 600 s timeout.
        last_transition_time: Time("2026-01-01T00:00:00Z".parse().unwrap()),
        observed_generation: Some(3),
    });
    let node = deleting(Some(status));
    let task = run(node.clone(), ctx).await;
    let (status, _, send) =
        expect(&mut handle, Method::PATCH, &format!("{NODES}/cpu-0/status")).await;
    let condition = &status["status"]["conditions"][0];
    assert_eq!(condition["reason"], "DrainTimedOut");
    assert!(
        condition["message"].as_str().unwrap().contains("[0, 1]"),
        "{condition}"
    );
    // The transition time is the drain's start, kept.
    assert_eq!(condition["lastTransitionTime"], "2026-01-01T00:00:00Z");
    reply(send, StatusCode::OK, &serde_json::to_value(&node).unwrap());
    assert_eq!(event(&mut handle).await, "DrainTimedOut");
    finalizer_removed(&mut handle, node).await;
    task.await.unwrap();
}

/// One reconcile of a known node up to its status: key read back, the running StatefulSet
/// read (`running`), and the applies that follow. Returns the applied StatefulSet.
async fn children(handle: &mut Handle, secret: &Value, running: Option<&Value>) -> Value {
    key_read_back(handle, secret).await;
    running_statefulset(handle, running).await;
    let applied = echo_apply(handle, STATEFULSET).await;
    echo_apply(handle, SERVICE).await;
    applied
}

#[tokio::test]
async fn ready_waits_for_the_pod_and_the_registry_and_is_said_once() {
    let registry = Arc::new(ScriptedRegistry::default());
    let key = NodeKey::generate();
    let id = key.node_id().to_string();
    *registry.description.lock().unwrap() = Some(described(&id, NodeState::Live, true));
    let (ctx, mut handle) = context_with(registry);
    let mut known = finalized(node(valid()));
    known.status = Some(with_id(&id));
    let secret = key_secret(&key);

    // The registry already sees the node loaded, but its pod is not ready yet: not Ready
    // (a rollout is not done before the pod serves).
    let task = run(known.clone(), ctx.clone()).await;
    let sts = children(&mut handle, &secret, None).await;
    let (status, _, send) =
        expect(&mut handle, Method::PATCH, &format!("{NODES}/cpu-0/status")).await;
    assert_eq!(status["status"]["phase"], "Registered");
    let conditions = status["status"]["conditions"].to_string();
    assert!(
        conditions.contains(r#""reason":"PodNotReady","status":"False","type":"Ready""#),
        "{conditions}"
    );
    reply(send, StatusCode::OK, &serde_json::to_value(&known).unwrap());
    task.await.unwrap();

    // The pod is ready: Ready, with the span and role, and an Event.
    known.status = Some(serde_json::from_value(status["status"].clone()).unwrap());
    let ready_sts = rolled_out(sts);
    let task = run(known.clone(), ctx.clone()).await;
    children(&mut handle, &secret, Some(&ready_sts)).await;
    let (status, _, send) =
        expect(&mut handle, Method::PATCH, &format!("{NODES}/cpu-0/status")).await;
    assert_eq!(status["status"]["phase"], "Ready");
    assert_eq!(status["status"]["span"], "[0, 2)");
    assert_eq!(status["status"]["role"], "driver");
    assert!(status["status"]["lastHeartbeat"].is_string());
    reply(send, StatusCode::OK, &serde_json::to_value(&known).unwrap());
    assert_eq!(event(&mut handle).await, "Serving");
    task.await.unwrap();

    // A resync that finds nothing new writes no status and publishes nothing.
    known.status = Some(serde_json::from_value(status["status"].clone()).unwrap());
    let task = run(known, ctx).await;
    children(&mut handle, &secret, Some(&ready_sts)).await;
    task.await.unwrap();
    if let Ok(Some((request, _))) =
        tokio::time::timeout(Duration::from_millis(200), handle.next_request()).await
    {
        panic!(
            "a request after a resync with nothing new: {} {}",
            request.method(),
            request.uri()
        );
    }
}

/// A serving node whose running StatefulSet has another template (an older image).
fn outdated(known: &NeuroShardNode, id: &str) -> Value {
    let mut sts = rolled_out(json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "cpu-0", "namespace": NS},
        "spec": {"replicas": 1, "selector": {}, "template": {"metadata": {"annotations": {
            "neuroshard.io/template-hash": "0000000000000000"}}}},
    }));
    sts["metadata"]["labels"] = json!({"app.kubernetes.io/managed-by": "neuroshard-operator"});
    let _ = (known, id);
    sts
}

/// The rollout's view: the namespace's nodes and StatefulSets.
async fn rollout_lists(handle: &mut Handle, nodes: Value, statefulsets: Value) {
    let (_, query, send) = expect(
        handle,
        Method::GET,
        "/apis/apps/v1/namespaces/swarm/statefulsets",
    )
    .await;
    assert!(query.contains("managed-by"), "{query}");
    reply(
        send,
        StatusCode::OK,
        &json!({"apiVersion": "apps/v1", "kind": "StatefulSetList",
        "metadata": {}, "items": statefulsets}),
    );
    let (_, _, send) = expect(handle, Method::GET, NODES).await;
    reply(
        send,
        StatusCode::OK,
        &json!({"apiVersion": "neuroshard.io/v1alpha1",
        "kind": "NeuroShardNodeList", "metadata": {}, "items": nodes}),
    );
}

#[tokio::test]
async fn a_new_template_restarts_a_node_only_while_its_layers_keep_a_serving_holder() {
    let registry = Arc::new(ScriptedRegistry::default());
    let key = NodeKey::generate();
    let id = key.node_id().to_string();
    *registry.description.lock().unwrap() = Some(described(&id, NodeState::Live, true));
    // The other holder of [0, 2) is restarting itself (its pod is not ready).
    let other = NodeKey::generate().node_id().to_string();
    *registry.others.lock().unwrap() = vec![described(&other, NodeState::Live, true)];
    let (ctx, mut handle) = context_with(registry.clone());
    let mut known = finalized(node(valid()));
    known.status = Some(with_id(&id));
    let secret = key_secret(&key);
    let running = outdated(&known, &id);
    let other_node = json!({"apiVersion": "neuroshard.io/v1alpha1", "kind": "NeuroShardNode",
        "metadata": {"name": "cpu-1", "namespace": NS}, "spec": {"memory": "4Gi"},
        "status": {"nodeId": other}});
    let other_restarting = json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "cpu-1", "namespace": NS, "generation": 2},
        "spec": {"replicas": 1, "selector": {}, "template": {}},
        "status": {"observedGeneration": 1, "replicas": 1}});

    // Waiting: nothing applied to the StatefulSet, the status and an Event say why.
    let task = run(known.clone(), ctx.clone()).await;
    key_read_back(&mut handle, &secret).await;
    running_statefulset(&mut handle, Some(&running)).await;
    rollout_lists(
        &mut handle,
        json!([other_node.clone()]),
        json!([running.clone(), other_restarting]),
    )
    .await;
    echo_apply(&mut handle, SERVICE).await;
    let (status, _, send) =
        expect(&mut handle, Method::PATCH, &format!("{NODES}/cpu-0/status")).await;
    let conditions = status["status"]["conditions"].to_string();
    assert!(
        conditions.contains(r#""reason":"WaitingForHolders","status":"False","type":"UpToDate""#),
        "{conditions}"
    );
    reply(send, StatusCode::OK, &serde_json::to_value(&known).unwrap());
    assert_eq!(event(&mut handle).await, "RolloutWaiting");
    task.await.unwrap();

    // The other holder serves again: this node may restart now.
    known.status = Some(serde_json::from_value(status["status"].clone()).unwrap());
    let other_ready = rolled_out(json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "cpu-1", "namespace": NS},
        "spec": {"replicas": 1, "selector": {}, "template": {}}}));
    let task = run(known.clone(), ctx).await;
    key_read_back(&mut handle, &secret).await;
    running_statefulset(&mut handle, Some(&running)).await;
    rollout_lists(
        &mut handle,
        json!([other_node]),
        json!([running, other_ready]),
    )
    .await;
    let (body, _, send) = expect(&mut handle, Method::PATCH, STATEFULSET).await;
    assert_ne!(
        body["spec"]["template"]["metadata"]["annotations"]["neuroshard.io/template-hash"],
        "0000000000000000"
    );
    reply(send, StatusCode::OK, &body);
    echo_apply(&mut handle, SERVICE).await;
    let (status, _, send) =
        expect(&mut handle, Method::PATCH, &format!("{NODES}/cpu-0/status")).await;
    let conditions = status["status"]["conditions"].to_string();
    assert!(
        conditions.contains(r#""reason":"RollingOut","status":"False","type":"UpToDate""#),
        "{conditions}"
    );
    // Being replaced: not Ready, even though the registry still sees the old pod serving.
    assert!(
        conditions.contains(r#""reason":"PodNotReady","status":"False","type":"Ready""#),
        "{conditions}"
    );
    reply(send, StatusCode::OK, &serde_json::to_value(&known).unwrap());
    assert_eq!(event(&mut handle).await, "RollingOut");
    task.await.unwrap();
}

fn key_secret(key: &NodeKey) -> Value {
    serde_json::to_value(k8s_openapi::api::core::v1::Secret {
        metadata: ObjectMeta {
            name: Some("cpu-0-key".into()),
            namespace: Some(NS.into()),
            ..ObjectMeta::default()
        },
        data: Some(std::collections::BTreeMap::from([(
            "node.key".to_string(),
            k8s_openapi::ByteString(key.to_file_contents().into_bytes()),
        )])),
        ..Default::default()
    })
    .unwrap()
}
