//! Every reconcile step against kube's `tower-test` mock API server: each scenario answers
//! the exact requests the reconciler must make, in order, and checks what they carry; a
//! request the scenario does not expect is never answered, so the reconcile times out and
//! the test fails.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use kube::api::ObjectMeta;
use kube::client::Body;
use kube::runtime::events::{Recorder, Reporter};
use kube::{Client, ResourceExt};
use neuroshard_common::identity::NodeKey;
use neuroshard_operator::OperatorConfig;
use neuroshard_operator::crd::{NeuroShardNode, NeuroShardNodeSpec, NeuroShardNodeStatus};
use neuroshard_operator::reconcile::{Context, FINALIZER, reconcile};
use serde_json::{Value, json};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

const NS: &str = "swarm";
const NODES: &str = "/apis/neuroshard.io/v1alpha1/namespaces/swarm/neuroshardnodes";

fn context() -> (Arc<Context>, Handle) {
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
        .expect("the client is gone");
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
    assert_eq!(status["status"]["phase"], "Pending");
    assert_eq!(status["status"]["observedGeneration"], 3);
    assert_eq!(status["status"]["conditions"][0]["type"], "SpecValid");
    assert_eq!(status["status"]["conditions"][0]["status"], "True");
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

#[tokio::test]
async fn deleting_a_node_releases_the_finalizer() {
    let (ctx, mut handle) = context();
    let mut deleting = finalized(node(valid()));
    deleting.metadata.deletion_timestamp =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            "2026-12-01T00:00:00Z".parse().unwrap(),
        ));
    let task = run(deleting.clone(), ctx).await;
    assert_eq!(event(&mut handle).await, "Deleted");
    let (patch, _, send) = expect(&mut handle, Method::PATCH, &format!("{NODES}/cpu-0")).await;
    assert!(patch.to_string().contains("remove"), "{patch}");
    deleting.finalizers_mut().clear();
    reply(
        send,
        StatusCode::OK,
        &serde_json::to_value(&deleting).unwrap(),
    );
    task.await.unwrap();
}
