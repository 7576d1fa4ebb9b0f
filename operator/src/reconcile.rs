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
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::finalizer::{Error as FinalizerError, Event as Finalized, finalizer};
use kube::{Client, Resource, ResourceExt};
use neuroshard_common::identity::NodeKey;
use serde_json::json;

use crate::conditions::{self, Wanted};
use crate::config::OperatorConfig;
use crate::crd::{NeuroShardNode, NeuroShardNodeStatus};
use crate::desired::{self, KEY_FILE, Names};
use crate::registry::Registry;
use crate::{observed, rollout, spec};
use neuroshard_proto::registry::v1::NodeState;

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
    #[error("{0}")]
    Registry(String),
    /// Not a failure: a drain in progress keeps the finalizer until the next look.
    #[error("draining: {0} layers still lack two other loaded holders")]
    Draining(usize),
}

impl Error {
    /// The kind counted in the errors metric.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Finalizer(_) => "finalizer",
            Error::NotNamespaced(_) => "not_namespaced",
            Error::Key(..) => "key",
            Error::Registry(_) => "registry",
            Error::Draining(_) => "draining",
        }
    }
}

/// What every reconcile shares.
#[derive(Clone)]
pub struct Context {
    pub client: Client,
    pub config: Arc<OperatorConfig>,
    pub recorder: Recorder,
    pub registry: Arc<dyn Registry>,
    /// Held while deciding whether a node may restart and applying its new template.
    pub rollouts: Arc<tokio::sync::Mutex<()>>,
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
    .map_err(|e| match e {
        // The reconciler's own errors keep their kind (a drain in progress is not a failure).
        FinalizerError::ApplyFailed(e) | FinalizerError::CleanupFailed(e) => e,
        other => Error::Finalizer(other.to_string()),
    })
}

/// What a failed reconcile does next: try again soon (a drain in progress looks again in
/// two seconds, and is no failure).
pub fn error_policy(_node: Arc<NeuroShardNode>, error: &Error, _ctx: Arc<Context>) -> Action {
    if let Error::Draining(_) = error {
        return Action::requeue(Duration::from_secs(2));
    }
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
    let wanted = desired::statefulset(node, &checked, &ctx.config);
    let running = statefulsets.get_opt(&names.statefulset).await?;
    let changed = running
        .as_ref()
        .is_some_and(|r| desired::template_hash(r) != desired::template_hash(&wanted));
    // Decisions to restart are taken one at a time, each seeing the restarts before it.
    let turn = ctx.rollouts.lock().await;
    let decision = if changed {
        let views = rollout_views(ctx, &namespace).await?;
        rollout::decide(&node_id, true, &views)
    } else {
        rollout::Decision::Current
    };
    // Waiting: the running template stays; nothing is applied.
    if !matches!(decision, rollout::Decision::Wait { .. }) {
        statefulsets
            .patch(&names.statefulset, &params, &Patch::Apply(&wanted))
            .await?;
    }
    drop(turn);
    let pod_ready = match (&decision, &running) {
        (rollout::Decision::Current, Some(running)) => !rollout::restarting(running),
        _ => false,
    };
    let up_to_date = match &decision {
        rollout::Decision::Current if pod_ready => Wanted {
            type_: conditions::UP_TO_DATE,
            status: true,
            reason: "Current",
            message: String::new(),
        },
        rollout::Decision::Current | rollout::Decision::Update => Wanted {
            type_: conditions::UP_TO_DATE,
            status: false,
            reason: "RollingOut",
            message: "the pod is being replaced with the current template".into(),
        },
        rollout::Decision::Wait { message, .. } => Wanted {
            type_: conditions::UP_TO_DATE,
            status: false,
            reason: "WaitingForHolders",
            message: message.clone(),
        },
    };
    let rollout_event = match &decision {
        rollout::Decision::Update if changed => Some((
            EventType::Normal,
            "RollingOut",
            "restarting with the new template: every layer it holds keeps serving holders"
                .to_string(),
        )),
        rollout::Decision::Wait { message, .. } => {
            Some((EventType::Normal, "RolloutWaiting", message.clone()))
        }
        _ => None,
    };
    // Events on a new reason (waiting, then rolling out, are both False).
    let rollout_changed =
        conditions::reason(&status.conditions, conditions::UP_TO_DATE) != Some(up_to_date.reason);
    conditions::set(&mut status.conditions, up_to_date, generation, &now);
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
    status.observed_generation = generation;
    let (described, why) = match ctx.registry.describe(node_id.clone()).await {
        Ok(d) => (Some(d), String::new()),
        Err(e) => (None, e.message),
    };
    let observed = observed::status_from(described.as_ref(), &why, pod_ready, &now);
    let mut became_ready = None;
    for wanted in observed.conditions {
        let is_ready = wanted.type_ == conditions::READY;
        if conditions::set(&mut status.conditions, wanted, generation, &now) && is_ready {
            became_ready = Some(observed.ready);
        }
    }
    conditions::set(
        &mut status.conditions,
        Wanted {
            type_: conditions::DRAINING,
            status: false,
            reason: "NotDeleted",
            message: String::new(),
        },
        generation,
        &now,
    );
    status.phase = Some(observed.phase.into());
    status.span = observed.span;
    status.role = observed.role;
    if observed.last_heartbeat.is_some() {
        status.last_heartbeat = observed.last_heartbeat;
    }
    if worth_writing(node.status.as_ref(), &status, ctx.config.resync_s) {
        write_status(ctx, node, &namespace, status.clone()).await?;
    }
    if let Some((type_, reason, message)) = rollout_event.filter(|_| rollout_changed) {
        publish(ctx, node, type_, reason, message).await;
    }
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
    match became_ready {
        Some(true) => {
            let span = status.span.as_deref().unwrap_or("");
            publish(
                ctx,
                node,
                EventType::Normal,
                "Serving",
                format!("registered and serving layers {span}"),
            )
            .await;
        }
        // Not on the first status: a node that never served has nothing to lose.
        Some(false)
            if !first
                && node
                    .status
                    .as_ref()
                    .is_some_and(|s| conditions::is_true(&s.conditions, conditions::READY)) =>
        {
            let message = conditions::message(&status.conditions, conditions::READY);
            publish(ctx, node, EventType::Warning, "NotServing", message).await;
        }
        _ => {}
    }
    // Not Ready yet: look again soon, so Ready shows as soon as the span is loaded.
    let again = if conditions::is_true(&status.conditions, conditions::READY) {
        ctx.config.resync_s
    } else {
        ctx.config.resync_s.min(5)
    };
    Ok(Action::requeue(Duration::from_secs(again)))
}

/// Every node the registry knows, as the rollout sees it: loaded or not (the registry), and
/// restarting or not (the StatefulSets of this namespace's nodes).
async fn rollout_views(ctx: &Context, namespace: &str) -> Result<Vec<rollout::NodeView>, Error> {
    let nodes: Api<NeuroShardNode> = Api::namespaced(ctx.client.clone(), namespace);
    let statefulsets: Api<StatefulSet> = Api::namespaced(ctx.client.clone(), namespace);
    let managed = ListParams::default().labels(&format!("app.kubernetes.io/managed-by={MANAGER}"));
    let sets = statefulsets.list(&managed).await?;
    let restarting: Vec<String> = nodes
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .filter_map(|n| {
            let id = n.status.as_ref()?.node_id.clone()?;
            let name = Names::of(n).statefulset;
            let sts = sets
                .items
                .iter()
                .find(|s| s.metadata.name.as_deref() == Some(name.as_str()));
            // No StatefulSet yet: its pod is still to come.
            sts.is_none_or(rollout::restarting).then_some(id)
        })
        .collect();
    let described = ctx
        .registry
        .describe_all()
        .await
        .map_err(|e| Error::Registry(e.message))?;
    Ok(described
        .into_iter()
        .map(|d| rollout::NodeView {
            restarting: restarting.contains(&d.node_id),
            loaded: d.loaded && d.state == NodeState::Live as i32,
            span: d.span.map(|s| (s.start, s.end)),
            node_id: d.node_id,
        })
        .collect())
}

/// Whether `next` says anything `current` does not: a heartbeat that moved less than a
/// resync is not news (writing it would wake this controller's own watch over and over).
pub fn worth_writing(
    current: Option<&NeuroShardNodeStatus>,
    next: &NeuroShardNodeStatus,
    resync_s: u64,
) -> bool {
    let Some(current) = current else {
        return true;
    };
    let moved = |a: &Option<String>, b: &Option<String>| match (a, b) {
        (Some(a), Some(b)) => match (
            a.parse::<k8s_openapi::jiff::Timestamp>(),
            b.parse::<k8s_openapi::jiff::Timestamp>(),
        ) {
            (Ok(a), Ok(b)) => b.duration_since(a).as_secs().unsigned_abs() >= resync_s,
            _ => a != b,
        },
        (a, b) => a != b,
    };
    let mut same = next.clone();
    same.last_heartbeat = current.last_heartbeat.clone();
    same != *current || moved(&current.last_heartbeat, &next.last_heartbeat)
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

/// Deleting a node: first the registry drains it (signed with the operator's key), and the
/// pod may go only when every layer it held has two other loaded holders, or after
/// `drain_timeout_s`, which is said in the status and an Event. Its owned objects then go
/// with it (owner references).
async fn cleanup(node: &NeuroShardNode, ctx: &Context) -> Result<Action, Error> {
    let namespace = node
        .namespace()
        .ok_or_else(|| Error::NotNamespaced(node.name_any()))?;
    let Some(node_id) = node.status.as_ref().and_then(|s| s.node_id.clone()) else {
        // It never got a key: nothing registered, nothing to hand over.
        return released(ctx, node, "it never registered").await;
    };
    let mut status = node.status.clone().unwrap_or_default();
    let now = now();
    let started = draining_since(&status);
    let waited = started.map_or(0, |since| {
        now.0.duration_since(since).as_secs().max(0).unsigned_abs()
    });
    let timed_out = waited >= ctx.config.drain_timeout_s;
    let described = match ctx.registry.describe(node_id.clone()).await {
        Ok(d) => d,
        Err(e) if timed_out => {
            let message = format!(
                "the registry could not be asked for {waited} s ({}); releasing the pod without a completed drain",
                e.message
            );
            publish(ctx, node, EventType::Warning, "DrainTimedOut", message).await;
            return Ok(Action::await_change());
        }
        Err(e) => return Err(Error::Registry(e.message)),
    };
    if !described.registered {
        return released(ctx, node, "the registry does not know it").await;
    }
    let pending = if described.state == NodeState::Draining as i32 {
        described.drain_pending_layers
    } else {
        ctx.registry
            .drain(node_id.clone())
            .await
            .map_err(|e| Error::Registry(e.message))?
    };
    let first = started.is_none();
    if pending.is_empty() {
        let message = format!("node {node_id}: every layer it held has two other loaded holders");
        publish(ctx, node, EventType::Normal, "Drained", message).await;
        return Ok(Action::await_change());
    }
    if timed_out {
        let message = format!(
            "layers {pending:?} still lack two other loaded holders after {waited} s (drain_timeout_s); releasing the pod anyway"
        );
        set_draining(&mut status, "DrainTimedOut", message.clone(), node, &now);
        write_status(ctx, node, &namespace, status).await?;
        publish(ctx, node, EventType::Warning, "DrainTimedOut", message).await;
        return Ok(Action::await_change());
    }
    let message = format!(
        "handing layers over: {pending:?} still lack two other loaded holders ({waited} s of {} s)",
        ctx.config.drain_timeout_s
    );
    set_draining(&mut status, "Draining", message.clone(), node, &now);
    status.phase = Some("Draining".into());
    if worth_writing(node.status.as_ref(), &status, ctx.config.resync_s) {
        write_status(ctx, node, &namespace, status).await?;
    }
    if first {
        publish(ctx, node, EventType::Normal, "Draining", message).await;
    }
    // The finalizer stays until the next look.
    Err(Error::Draining(pending.len()))
}

/// When the current drain began (its `Draining` Condition's transition to True).
fn draining_since(status: &NeuroShardNodeStatus) -> Option<k8s_openapi::jiff::Timestamp> {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == conditions::DRAINING && c.status == "True")
        .map(|c| c.last_transition_time.0)
}

fn set_draining(
    status: &mut NeuroShardNodeStatus,
    reason: &'static str,
    message: String,
    node: &NeuroShardNode,
    now: &Time,
) {
    conditions::set(
        &mut status.conditions,
        Wanted {
            type_: conditions::DRAINING,
            status: true,
            reason,
            message,
        },
        node.meta().generation,
        now,
    );
}

async fn released(ctx: &Context, node: &NeuroShardNode, why: &str) -> Result<Action, Error> {
    publish(
        ctx,
        node,
        EventType::Normal,
        "Deleted",
        format!("node {} released: {why}", node.name_any()),
    )
    .await;
    Ok(Action::await_change())
}
