//! The NeuroShard operator: `NeuroShardNode` resources reconciled into running shard-workers.
//!
//! Pure (no client, tested directly):
//! - [`crd`]: the resource's types, from which the CRD's schema is generated ([`crd_yaml`]);
//! - [`quantity`]: Kubernetes byte quantities;
//! - [`spec`]: a spec checked against the operator's defaults and the model's layer size, or
//!   the field that is wrong;
//! - [`desired`]: the key Secret, StatefulSet and Service a checked spec becomes;
//! - [`conditions`]: status Conditions whose transition times move only on real changes;
//! - [`observed`]: the status the registry's description of a node implies (Ready only when
//!   registered, live and serving its span);
//! - [`rollout`]: whether a node whose template changed may restart now (every layer keeps
//!   serving holders).
//!
//! Offline: [`render`] prints what manifests become (`neuroshard-operator render`).
//!
//! I/O and wiring: [`reconcile`] (one node, through a finalizer: key, server-side apply,
//! status from the registry, drain before delete, Events), [`registry`] (the registry link,
//! drains signed with the operator's key), [`lease`] (leader election), [`controller`] (the
//! kube `Controller` while leading, metrics, health), [`config`].

pub mod conditions;
pub mod config;
pub mod controller;
pub mod crd;
pub mod desired;
pub mod lease;
pub mod observed;
pub mod quantity;
pub mod reconcile;
pub mod registry;
pub mod render;
pub mod rollout;
pub mod spec;

pub use config::OperatorConfig;
pub use controller::{run, run_with};
pub use crd::NeuroShardNode;

/// The CRD as YAML, as `crdgen` writes it to `crds/neuroshardnode.yaml`.
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    use kube::CustomResourceExt;
    serde_yaml::to_string(&NeuroShardNode::crd())
}
