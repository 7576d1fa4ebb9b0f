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
use crate::lease::Elector;
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
    let shutdown = futures_util::FutureExt::shared(Box::pin(shutdown));
    // Lost leadership stops the controller; the process then exits with an error and is
    // started again as a follower.
    let (lost_tx, lost_rx) = tokio::sync::oneshot::channel::<String>();
    let renewing = match elector(&client, &ctx.config) {
        Some(elector) => {
            if !lead(&elector, shutdown.clone(), ctx.config.lease_duration_s).await {
                http.abort();
                return Ok(());
            }
            Some((
                elector.clone(),
                tokio::spawn(renew(elector, lost_tx, ctx.config.lease_duration_s)),
            ))
        }
        None => None,
    };
    let lost = async move {
        match lost_rx.await {
            Ok(why) => Some(why),
            // The renewing task ended without losing (shutdown): never fires.
            Err(_) => std::future::pending().await,
        }
    };
    let lost = futures_util::FutureExt::shared(Box::pin(lost));
    let stop = {
        let lost = lost.clone();
        let shutdown = shutdown.clone();
        async move {
            tokio::select! {
                () = shutdown => {}
                _ = lost => {}
            }
        }
    };
    tracing::info!("neuroshard-operator reconciling NeuroShardNodes");
    Controller::new(nodes, watcher::Config::default().any_semantic())
        .owns(
            Api::<StatefulSet>::all(client.clone()),
            watcher::Config::default(),
        )
        .owns(Api::<Service>::all(client), watcher::Config::default())
        .graceful_shutdown_on(stop)
        .run(observed, reconcile::error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((node, _)) => tracing::debug!(node = %node.name, "reconciled"),
                Err(e) => tracing::debug!(error = %e, "reconcile did not complete"),
            }
        })
        .await;
    http.abort();
    if let Some((elector, task)) = renewing {
        task.abort();
        if let Some(Some(why)) = futures_util::FutureExt::now_or_never(lost) {
            return Err(Error::new(neuroshard_common::ErrorKind::Unavailable, why));
        }
        if let Err(e) = elector.release().await {
            tracing::warn!(error = %e, "releasing the lease failed; another replica takes over when it expires");
        }
    }
    tracing::info!("neuroshard-operator stopped");
    Ok(())
}

/// This replica's elector, when leader election is on.
fn elector(client: &Client, config: &OperatorConfig) -> Option<Elector> {
    if !config.leader_election {
        return None;
    }
    let namespace = config
        .lease_namespace
        .clone()
        .or_else(|| std::env::var("POD_NAMESPACE").ok())
        .unwrap_or_else(|| "default".into());
    let identity = std::env::var("POD_NAME").unwrap_or_else(|_| {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "operator".into());
        format!("{host}-{}", std::process::id())
    });
    Some(Elector::new(
        client.clone(),
        &namespace,
        &config.lease_name,
        &identity,
        std::time::Duration::from_secs(config.lease_duration_s),
    ))
}

/// Waits until this replica leads; false when `shutdown` came first.
async fn lead(elector: &Elector, shutdown: impl Future<Output = ()>, duration_s: u64) -> bool {
    let retry = std::time::Duration::from_millis(duration_s * 1000 / 3);
    tokio::pin!(shutdown);
    let mut announced = false;
    loop {
        match elector.try_lead().await {
            Ok(true) => {
                tracing::info!(identity = %elector.identity(), "leading: this replica reconciles");
                return true;
            }
            Ok(false) if !announced => {
                tracing::info!(identity = %elector.identity(), "another replica leads; waiting for its lease");
                announced = true;
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "reading the lease failed"),
        }
        tokio::select! {
            () = tokio::time::sleep(retry) => {}
            () = &mut shutdown => return false,
        }
    }
}

/// Renews the lease every third of its duration; tells `lost` when it could not for a whole
/// duration (or another replica took it).
async fn renew(elector: Elector, lost: tokio::sync::oneshot::Sender<String>, duration_s: u64) {
    let every = std::time::Duration::from_millis(duration_s * 1000 / 3);
    let mut last = Instant::now();
    loop {
        tokio::time::sleep(every).await;
        match elector.try_lead().await {
            Ok(true) => last = Instant::now(),
            Ok(false) => {
                let _ = lost.send("another replica took the lease".into());
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "renewing the lease failed");
                if last.elapsed().as_secs() >= duration_s {
                    let _ = lost.send(format!(
                        "the lease could not be renewed for {duration_s} s: {e}"
                    ));
                    return;
                }
            }
        }
    }
}
