//! The running operator: the kube `Controller` over `NeuroShardNode`s (and the StatefulSets
//! and Services they own, so a change to a child reconciles its node), metrics of every
//! reconcile, and `/healthz` + `/metrics` on the listener.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, ListParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use neuroshard_common::Error;
use neuroshard_runtime::telemetry::names::operator as names;
use tracing::Instrument;

use crate::config::OperatorConfig;
use crate::crd::NeuroShardNode;
use crate::reconcile::{self, Context, MANAGER};
use crate::registry::GrpcRegistry;

/// [`reconcile::reconcile`], counted and timed.
async fn observed(
    node: Arc<NeuroShardNode>,
    ctx: Arc<Context>,
) -> Result<Action, reconcile::Error> {
    let started = Instant::now();
    // One span per reconcile: exported over OTLP when the operator is configured to trace.
    let span = tracing::info_span!(
        "reconcile",
        node = %node.name_any(),
        namespace = node.namespace().unwrap_or_default(),
        generation = node.metadata.generation.unwrap_or_default(),
        outcome = tracing::field::Empty,
    );
    let result = reconcile::reconcile(node, ctx)
        .instrument(span.clone())
        .await;
    span.record(
        "outcome",
        match &result {
            Ok(_) => "ok",
            Err(e) => e.kind(),
        },
    );
    metrics::counter!(names::RECONCILES).increment(1);
    metrics::histogram!(names::RECONCILE_SECONDS).record(started.elapsed().as_secs_f64());
    if let Err(e) = &result {
        metrics::counter!(names::ERRORS, "kind" => e.kind()).increment(1);
    }
    result
}

/// Runs the operator with the cluster's client (in-cluster, or `KUBECONFIG`) until
/// `shutdown` resolves.
pub async fn run(
    config: OperatorConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    config.validate()?;
    let client = Client::try_default().await.map_err(|e| {
        Error::failed_precondition(format!(
            "no Kubernetes API to talk to (in-cluster service account or KUBECONFIG): {e}"
        ))
    })?;
    run_with(client, config, listener, shutdown).await
}

/// [`run`] with a given client (tests give one that talks to a fake API server).
pub async fn run_with(
    client: Client,
    config: OperatorConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    neuroshard_runtime::telemetry::names::describe(names::TABLE);
    let nodes: Api<NeuroShardNode> = Api::all(client.clone());
    // Without the CRD every watch fails forever: say so once, at start.
    nodes
        .list(&ListParams::default().limit(1))
        .await
        .map_err(|e| {
            Error::failed_precondition(format!(
                "listing NeuroShardNodes failed ({e}); is the CRD installed? kubectl apply -f crds/neuroshardnode.yaml"
            ))
        })?;
    let app = axum::Router::new()
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .merge(neuroshard_runtime::telemetry::metrics::router());
    let http = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "the health and metrics endpoint stopped");
        }
    });
    let registry = GrpcRegistry::new(
        &config.registry,
        &config.tls,
        &config.key_file,
        &config.network_id,
    )?;
    tracing::info!(
        operator_id = %registry.operator_id(),
        registry = %config.registry,
        "drains are signed with this key: list its id in the registry's `operators`"
    );
    let ctx = Arc::new(Context {
        registry: Arc::new(registry),
        rollouts: Arc::default(),
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: MANAGER.into(),
                instance: std::env::var("POD_NAME").ok(),
            },
        ),
        client: client.clone(),
        config: Arc::new(config),
    });
    tracing::info!("neuroshard-operator reconciling NeuroShardNodes");
    Controller::new(nodes, watcher::Config::default().any_semantic())
        .owns(
            Api::<StatefulSet>::all(client.clone()),
            watcher::Config::default(),
        )
        .owns(Api::<Service>::all(client), watcher::Config::default())
        // The controller wants a shareable future; the signal is awaited once, by it.
        .graceful_shutdown_on(futures_util::FutureExt::shared(Box::pin(shutdown)))
        .run(observed, reconcile::error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((node, _)) => tracing::debug!(node = %node.name, "reconciled"),
                Err(e) => tracing::debug!(error = %e, "reconcile did not complete"),
            }
        })
        .await;
    http.abort();
    tracing::info!("neuroshard-operator stopped");
    Ok(())
}
