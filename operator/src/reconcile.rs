//! The reconciler: thin I/O around the pure modules. Through a finalizer (so deleting a node
//! always passes through [`cleanup`]): check the spec (an invalid one becomes a `SpecValid`
//! False Condition and nothing is created), create the key Secret once (never overwritten;
//! the node id is read back from it), server-side apply the StatefulSet and Service with one
//! field manager, and apply the status with Conditions whose transition times move only on
//! real changes. Important transitions are published as Events.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::finalizer::{Event as Finalized, finalizer};
use kube::{Client, Resource, ResourceExt};
use neuroshard_common::identity::NodeKey;
use serde_json::json;

use crate::conditions::{self, Wanted};
use crate::config::OperatorConfig;
use crate::crd::{NeuroShardNode, NeuroShardNodeStatus};
use crate::desired::{self, KEY_FILE, Names};
use crate::spec;

/// The finalizer that makes deletion wait for the node's cleanup.
pub const FINALIZER: &str = "neuroshard.io/drain";
/// The one field manager of everything the operator applies.
pub const MANAGER: &str = "neuroshard-operator";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("finalizer: {0}")]
    Finalizer(String),
    #[error("{0} is not namespaced")]
    NotNamespaced(String),
    #[error("key Secret {0}: {1}")]
    Key(String, String),
}

impl Error {
    /// The kind counted in the errors metric.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Finalizer(_) => "finalizer",
            Error::NotNamespaced(_) => "not_namespaced",
            Error::Key(..) => "key",
        }
    }
}

/// What every reconcile shares.
#[derive(Clone)]
pub struct Context {
    pub client: Client,
    pub config: Arc<OperatorConfig>,
    pub recorder: Recorder,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

/// Reconciles one node.
pub async fn reconcile(node: Arc<NeuroShardNode>, ctx: Arc<Context>) -> Result<Action, Error> {
    let namespace = node
        .namespace()
        .ok_or_else(|| Error::NotNamespaced(node.name_any()))?;
    let api: Api<NeuroShardNode> = Api::namespaced(ctx.client.clone(), &namespace);
    finalizer(&api, FINALIZER, node, |event| async {
        match event {
            Finalized::Apply(node) => apply(&node, &ctx).await,
            Finalized::Cleanup(node) => cleanup(&node, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(e.to_string()))
}

/// What a failed reconcile does next: try again soon.
pub fn error_policy(_node: Arc<NeuroShardNode>, error: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(%error, "reconcile failed");
    Action::requeue(Duration::from_secs(5))
}

async fn publish(
    ctx: &Context,
    node: &NeuroShardNode,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &node.object_ref(&())).await {
        tracing::warn!(error = %e, "publishing an event failed");
    }
}

async fn apply(node: &NeuroShardNode, ctx: &Context) -> Result<Action, Error> {
    let namespace = node
        .namespace()
        .ok_or_else(|| Error::NotNamespaced(node.name_any()))?;
    let generation = node.meta().generation;
    let mut status = node.status.clone().unwrap_or_default();
    let now = now();
    let checked = match spec::check(&node.spec, &ctx.config) {
        Ok(checked) => checked,
        Err(invalid) => {
            let changed = conditions::set(
                &mut status.conditions,
                Wanted {
                    type_: conditions::SPEC_VALID,
                    status: false,
                    reason: "InvalidSpec",
                    message: invalid.to_string(),
                },
                generation,
                &now,
            );
            status.phase = Some("Invalid".into());
            status.observed_generation = generation;
            write_status(ctx, node, &namespace, status).await?;
            if changed {
                publish(
                    ctx,
                    node,
                    EventType::Warning,
                    "InvalidSpec",
                    invalid.to_string(),
                )
                .await;
            }
            // Nothing to do until the spec changes.
            return Ok(Action::await_change());
        }
    };
    conditions::set(
        &mut status.conditions,
        Wanted {
            type_: conditions::SPEC_VALID,
            status: true,
            reason: "Valid",
            message: String::new(),
        },
        generation,
        &now,
    );
    let node_id = ensure_key(ctx, node, &namespace).await?;
    let params = PatchParams::apply(MANAGER).force();
    let names = Names::of(node);
    let statefulsets: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), &namespace);
    statefulsets
        .patch(
            &names.statefulset,
            &params,
            &Patch::Apply(desired::statefulset(node, &checked, &ctx.config)),
        )
        .await?;
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), &namespace);
    services
        .patch(
            &names.service,
            &params,
            &Patch::Apply(desired::service(node, &ctx.config)),
        )
        .await?;
    let first = status.node_id.is_none();
    status.node_id = Some(node_id.clone());
    if status.phase.is_none() || status.phase.as_deref() == Some("Invalid") {
        status.phase = Some("Pending".into());
    }
    status.observed_generation = generation;
    write_status(ctx, node, &namespace, status).await?;
    if first {
        publish(
            ctx,
            node,
            EventType::Normal,
            "Created",
            format!("node {node_id}: key, StatefulSet and Service created"),
        )
        .await;
    }
    Ok(Action::requeue(Duration::from_secs(ctx.config.resync_s)))
}

/// The node's key Secret: read back when it exists (its node id), else created with a fresh
/// key. Never updated: a node keeps its identity for life.
async fn ensure_key(
    ctx: &Context,
    node: &NeuroShardNode,
    namespace: &str,
) -> Result<String, Error> {
    let name = Names::of(node).key_secret;
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let existing = match secrets.get_opt(&name).await? {
        Some(secret) => secret,
        None => {
            let key = NodeKey::generate();
            let secret = desired::key_secret(node, key.to_file_contents());
            match secrets.create(&PostParams::default(), &secret).await {
                Ok(_) => return Ok(key.node_id().to_string()),
                // Another replica (or a retry) created it first: theirs stands.
                Err(kube::Error::Api(e)) if e.code == 409 => secrets.get(&name).await?,
                Err(e) => return Err(e.into()),
            }
        }
    };
    let bytes = existing
        .data
        .as_ref()
        .and_then(|d| d.get(KEY_FILE))
        .ok_or_else(|| Error::Key(name.clone(), format!("has no {KEY_FILE}")))?;
    let text = std::str::from_utf8(&bytes.0)
        .map_err(|_| Error::Key(name.clone(), format!("{KEY_FILE} is not text")))?;
    NodeKey::from_file_contents(text)
        .map(|k| k.node_id().to_string())
        .map_err(|e| Error::Key(name.clone(), e.message))
}

async fn write_status(
    ctx: &Context,
    node: &NeuroShardNode,
    namespace: &str,
    status: NeuroShardNodeStatus,
) -> Result<(), Error> {
    let api: Api<NeuroShardNode> = Api::namespaced(ctx.client.clone(), namespace);
    let patch = json!({
        "apiVersion": "neuroshard.io/v1alpha1",
        "kind": "NeuroShardNode",
        "status": status,
    });
    api.patch_status(
        &node.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(patch),
    )
    .await?;
    Ok(())
}

/// Deleting a node: its owned objects go with it (owner references).
async fn cleanup(node: &NeuroShardNode, ctx: &Context) -> Result<Action, Error> {
    publish(
        ctx,
        node,
        EventType::Normal,
        "Deleted",
        format!("node {} released", node.name_any()),
    )
    .await;
    Ok(Action::await_change())
}
