//! Against a real Kubernetes cluster, opt-in (CI has none; the loopback API stand-in in
//! `tests/tests/operator.rs` runs the same controller in `make test`):
//!
//! ```text
//! KUBECONFIG=~/.kube/config cargo test -p neuroshard-operator --test cluster -- --ignored
//! ```
//!
//! It installs the CRD (server-side apply), runs the operator in this process with the
//! kubeconfig's credentials in a fresh namespace, and checks what needs no registry: an
//! invalid node gets its Condition and creates nothing; deleting it removes the finalizer.
//! The namespace is deleted at the end.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Client, CustomResourceExt};
use neuroshard_operator::OperatorConfig;
use neuroshard_operator::crd::{NeuroShardNode, NeuroShardNodeSpec};

async fn eventually<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    mut ready: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(value) = ready().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test]
#[ignore = "needs a Kubernetes cluster: set KUBECONFIG and run with --ignored"]
async fn an_invalid_node_gets_its_condition_and_deleting_it_releases_the_finalizer() {
    let client = Client::try_default()
        .await
        .expect("a cluster from KUBECONFIG");
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.patch(
        "neuroshardnodes.neuroshard.io",
        &PatchParams::apply("neuroshard-tests").force(),
        &Patch::Apply(NeuroShardNode::crd()),
    )
    .await
    .unwrap();
    let namespace = format!("neuroshard-test-{}", std::process::id());
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &Namespace {
                metadata: ObjectMeta {
                    name: Some(namespace.clone()),
                    ..ObjectMeta::default()
                },
                ..Namespace::default()
            },
        )
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let config = OperatorConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        // No registry: nothing here needs one.
        registry: "http://127.0.0.1:9".into(),
        tls: neuroshard_runtime::tls::TlsFiles::insecure_plaintext(),
        worker_tls_secret: None,
        key_file: dir.path().join("operator.key"),
        leader_election: false,
        ..OperatorConfig::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let operator = tokio::spawn(neuroshard_operator::run_with(
        client.clone(),
        config,
        listener,
        async move {
            let _ = stopped.await;
        },
    ));

    let nodes: Api<NeuroShardNode> = Api::namespaced(client.clone(), &namespace);
    let mut node = NeuroShardNode::new(
        "too-small",
        NeuroShardNodeSpec {
            role: "auto".into(),
            memory: Some("1Ki".into()),
            ..NeuroShardNodeSpec::default()
        },
    );
    node.metadata.namespace = Some(namespace.clone());
    nodes.create(&PostParams::default(), &node).await.unwrap();
    let condition = eventually("the SpecValid condition", || {
        let nodes = nodes.clone();
        async move {
            let node = nodes.get("too-small").await.ok()?;
            node.status?
                .conditions
                .into_iter()
                .find(|c| c.type_ == "SpecValid")
        }
    })
    .await;
    assert_eq!(condition.status, "False");
    assert!(condition.message.contains("spec.memory"), "{condition:?}");
    let statefulsets: Api<StatefulSet> = Api::namespaced(client.clone(), &namespace);
    assert!(statefulsets.get_opt("too-small").await.unwrap().is_none());

    nodes
        .delete("too-small", &DeleteParams::default())
        .await
        .unwrap();
    eventually("the node gone", || {
        let nodes = nodes.clone();
        async move {
            nodes
                .get_opt("too-small")
                .await
                .ok()?
                .is_none()
                .then_some(())
        }
    })
    .await;

    let _ = stop.send(());
    operator.await.unwrap().unwrap();
    namespaces
        .delete(&namespace, &DeleteParams::default())
        .await
        .unwrap();
}
