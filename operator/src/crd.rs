//! The `NeuroShardNode` resource (`neuroshard.io/v1alpha1`, namespaced): what a user asks
//! for (spec) and what the operator reports (status). The schema the API server validates
//! comes from these types (`crdgen` writes it to `crds/neuroshardnode.yaml`); what a schema
//! cannot say — a memory budget that holds a layer, a GPU with a resource name, a role the
//! registry knows — is checked by [`crate::spec::check`] and reported as a Condition.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The default GPU resource (the NVIDIA device plugin's).
pub const DEFAULT_GPU_RESOURCE: &str = "nvidia.com/gpu";

/// A node of the swarm: one shard-worker, its key and its checkpoint volume.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "neuroshard.io",
    version = "v1alpha1",
    kind = "NeuroShardNode",
    namespaced,
    shortname = "nsn",
    status = "NeuroShardNodeStatus",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Role","type":"string","jsonPath":".status.role"}"#,
    printcolumn = r#"{"name":"Span","type":"string","jsonPath":".status.span"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct NeuroShardNodeSpec {
    /// The role the registry should place this node in when it can: `auto` (default),
    /// `driver`, `worker` or `validator`.
    #[serde(default = "auto")]
    pub role: String,
    /// Memory the node offers for layers, as a quantity (`8Gi`); required. The pod's memory
    /// limit is this plus the worker's own overhead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    /// GPUs for a CUDA node; absent for a CPU node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<GpuSpec>,
    /// The shard-worker image (default: the operator's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// More requests and limits for the worker container (CPU, ephemeral storage); memory
    /// and the GPU come from `memory` and `gpu`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// The checkpoint volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<StorageSpec>,
    /// The wallet address (40 hex digits) rewards are paid to (default: the node's own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payout_address: Option<String>,
    /// The layer-registry's URL (default: the operator's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry: Option<String>,
    /// The diloco-aggregators' URLs (default: the operator's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregators: Option<Vec<String>>,
    /// The ledger's URL rewards are claimed from (default: the operator's; none: no claims).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ledger: Option<String>,
    /// Whether the node trains (drives the pipelines it starts and sends its Δ).
    #[serde(default)]
    pub training: bool,
    /// The dataset a training node reads (`neuroshard data build`'s output); required with
    /// `training`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset: Option<DatasetSpec>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatasetSpec {
    /// The PersistentVolumeClaim holding it, mounted read-only (ReadOnlyMany to share one
    /// dataset between nodes).
    pub claim_name: String,
    /// The dataset's folder inside that volume, relative (default: the volume's root).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

fn auto() -> String {
    "auto".into()
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GpuSpec {
    /// GPUs requested (the container's limit of `resourceName`).
    pub count: u32,
    /// The extended resource the device plugin advertises (default `nvidia.com/gpu`).
    #[serde(default = "default_gpu_resource")]
    pub resource_name: String,
    /// Where CUDA nodes are (default: `nvidia.com/gpu.present: "true"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,
    /// Taints of CUDA nodes to tolerate (default: `nvidia.com/gpu` NoSchedule, any value).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,
}

fn default_gpu_resource() -> String {
    DEFAULT_GPU_RESOURCE.into()
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// The volume's size (default `10Gi`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
    /// The storage class (default: the cluster's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
}

/// What the operator last saw of the node.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NeuroShardNodeStatus {
    /// `Invalid` (spec refused), `Starting` (not registered yet), `Registered` (loading, or
    /// its pod not ready), `Ready` (serving its span), `Draining` or `Lost` (heartbeats
    /// stopped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// `Ready`, `Registered`, `LayersAssigned`, `Draining`, `UpToDate` and `SpecValid`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The node's id (its key's), known once the key Secret exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    /// The role the registry placed it in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// The layers it holds, `[start, end)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub span: Option<String>,
    /// When the registry last heard from it (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heartbeat: Option<String>,
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}
