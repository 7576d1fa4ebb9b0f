//! The objects a node is made of, from its checked spec, pure (no client): its key Secret, a
//! StatefulSet of one shard-worker pod with a checkpoint volume, and a Service. Every object
//! is owned by the `NeuroShardNode` (deleted with it) and labelled with it. GPU nodes get the
//! GPU limit, the CUDA nodes' selector and toleration and `--device cuda`; CPU nodes none of
//! these. The worker's usable memory is the spec's, never the host's.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EmptyDirVolumeSource, EnvVar, GRPCAction, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PersistentVolumeClaimVolumeSource, PodSecurityContext, PodSpec,
    PodTemplateSpec, Probe, SecretVolumeSource, SecurityContext, Service, ServicePort, ServiceSpec,
    Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};

use crate::config::OperatorConfig;
use crate::crd::NeuroShardNode;
use crate::spec::Checked;

/// Where the worker finds its key (the Secret's `node.key`, read-only, mode 0400).
pub const KEY_DIR: &str = "/var/run/neuroshard/key";
/// Where the key Secret is mounted for the init container that installs it in `KEY_DIR`.
pub const KEY_SECRET_DIR: &str = "/var/run/neuroshard/key-secret";
pub const KEY_FILE: &str = "node.key";
/// Where the checkpoint volume and the TLS files are mounted.
pub const DATA_DIR: &str = "/var/lib/neuroshard";
pub const TLS_DIR: &str = "/etc/neuroshard/tls";
/// Where a training node's dataset volume is mounted (read-only).
pub const DATASET_DIR: &str = "/var/lib/neuroshard-dataset";
/// How long a worker stopped by Kubernetes waits for its layers to move before it
/// deregisters; the pod's grace period leaves room beyond it.
pub const WORKER_DRAIN_TIMEOUT_S: i64 = 90;
/// The non-root user the images run as.
pub const WORKER_UID: i64 = 10_001;
/// The gRPC health name a worker reports SERVING once its span is loaded.
pub use neuroshard_common::health::WORKER_LOADED as LOADED_HEALTH_SERVICE;

/// The names of a node's objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    pub statefulset: String,
    pub service: String,
    pub key_secret: String,
}

impl Names {
    pub fn of(node: &NeuroShardNode) -> Self {
        let name = node.name_any();
        Self {
            statefulset: name.clone(),
            service: name.clone(),
            key_secret: format!("{name}-key"),
        }
    }
}

/// The labels on a node's objects and the selector of its pod.
pub fn labels(node: &NeuroShardNode) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), "shard-worker".into()),
        ("app.kubernetes.io/instance".into(), node.name_any()),
        (
            "app.kubernetes.io/managed-by".into(),
            "neuroshard-operator".into(),
        ),
    ])
}

/// The node as its objects' controlling owner (none for a node not in a cluster, as
/// `render` gets it).
fn owner(node: &NeuroShardNode) -> Option<Vec<OwnerReference>> {
    node.controller_owner_ref(&()).map(|o| vec![o])
}

fn meta(node: &NeuroShardNode, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: node.namespace(),
        labels: Some(labels(node)),
        owner_references: owner(node),
        ..ObjectMeta::default()
    }
}

/// The key Secret: created once with a fresh key and never overwritten.
pub fn key_secret(
    node: &NeuroShardNode,
    key_file_contents: String,
) -> k8s_openapi::api::core::v1::Secret {
    k8s_openapi::api::core::v1::Secret {
        metadata: meta(node, &Names::of(node).key_secret),
        string_data: Some(BTreeMap::from([(KEY_FILE.to_string(), key_file_contents)])),
        type_: Some("Opaque".into()),
        immutable: Some(true),
        ..Default::default()
    }
}

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: format!("NEUROSHARD_WORKER_{name}"),
        value: Some(value.into()),
        ..EnvVar::default()
    }
}

/// A TOML array of strings, as the worker's environment parses lists.
fn toml_list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| format!("{s:?}")).collect();
    format!("[{}]", quoted.join(", "))
}

/// The worker's configuration, all from the spec and the operator's defaults.
fn worker_env(node: &NeuroShardNode, spec: &Checked, config: &OperatorConfig) -> Vec<EnvVar> {
    let names = Names::of(node);
    let tls = config.worker_tls_secret.is_some();
    let scheme = if tls { "https" } else { "http" };
    let namespace = node.namespace().unwrap_or_else(|| "default".into());
    let mut vars = vec![
        env("LISTEN", format!("0.0.0.0:{}", config.worker_port)),
        env(
            "HEALTH_LISTEN",
            format!("0.0.0.0:{}", config.worker_health_port),
        ),
        env(
            "ADVERTISE",
            format!(
                "{scheme}://{}.{namespace}.svc:{}",
                names.service, config.worker_port
            ),
        ),
        env("REGISTRY", spec.registry.clone()),
        env("NETWORK_ID", config.network_id.clone()),
        env("KEY_FILE", format!("{KEY_DIR}/{KEY_FILE}")),
        env("USABLE_MEMORY_BYTES", spec.memory_bytes.to_string()),
        env("DEVICE", if spec.gpu.is_some() { "cuda" } else { "cpu" }),
        env("TRAINING__ENABLED", spec.training.to_string()),
        env("ROLE", spec.role.clone()),
        // The operator drains the node before its pod is deleted; a pod stopped otherwise
        // (eviction, node drain) hands over by itself within its grace period.
        env(
            "DRAIN_TIMEOUT_MS",
            (WORKER_DRAIN_TIMEOUT_S * 1000).to_string(),
        ),
    ];
    if !spec.aggregators.is_empty() {
        vars.push(env("AGGREGATORS", toml_list(&spec.aggregators)));
    }
    if let Some(ledger) = &spec.ledger {
        vars.push(env("LEDGER", ledger.clone()));
    }
    if let Some(payout) = &spec.payout_address {
        vars.push(env("PAYOUT", payout.clone()));
    }
    if let Some((_, path)) = &spec.dataset {
        let dir = if path.is_empty() {
            DATASET_DIR.to_string()
        } else {
            format!("{DATASET_DIR}/{path}")
        };
        vars.push(env("TRAINING__DATA_DIR", dir));
    }
    if let Some(endpoint) = &config.worker_otlp_endpoint {
        vars.push(EnvVar {
            name: neuroshard_runtime::telemetry::OTLP_ENDPOINT_ENV.into(),
            value: Some(endpoint.clone()),
            ..EnvVar::default()
        });
    }
    if tls {
        vars.push(env("TLS__CERT_FILE", format!("{TLS_DIR}/tls.crt")));
        vars.push(env("TLS__KEY_FILE", format!("{TLS_DIR}/tls.key")));
        vars.push(env("TLS__CA_FILE", format!("{TLS_DIR}/ca.crt")));
    } else {
        vars.push(env("TLS__INSECURE_PLAINTEXT", "true"));
    }
    vars
}

fn grpc_probe(port: u16, service: Option<&str>, period: i32, failures: i32) -> Probe {
    Probe {
        grpc: Some(GRPCAction {
            port: i32::from(port),
            service: service.map(str::to_string),
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        ..Probe::default()
    }
}

/// The worker container's resources: the spec's, with the memory limit (layers plus the
/// worker's overhead) and, on a GPU node, the GPU limit.
fn resources(
    spec: &Checked,
    config: &OperatorConfig,
) -> k8s_openapi::api::core::v1::ResourceRequirements {
    let mut r = spec.resources.clone();
    let limit = Quantity(
        spec.memory_bytes
            .saturating_add(config.worker_overhead_bytes)
            .to_string(),
    );
    let limits = r.limits.get_or_insert_with(BTreeMap::new);
    limits.insert("memory".into(), limit.clone());
    if let Some(gpu) = &spec.gpu {
        limits.insert(gpu.resource_name.clone(), Quantity(gpu.count.to_string()));
    }
    r.requests
        .get_or_insert_with(BTreeMap::new)
        .entry("memory".into())
        .or_insert(limit);
    r
}

/// Every container's: no privileges, nothing written outside its volumes.
fn restricted() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        ..SecurityContext::default()
    }
}

/// The StatefulSet of one worker pod.
pub fn statefulset(node: &NeuroShardNode, spec: &Checked, config: &OperatorConfig) -> StatefulSet {
    let names = Names::of(node);
    let labels = labels(node);
    let mut mounts = vec![
        VolumeMount {
            name: "key".into(),
            mount_path: KEY_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        },
        VolumeMount {
            name: "checkpoints".into(),
            mount_path: DATA_DIR.into(),
            ..VolumeMount::default()
        },
    ];
    // Secret volumes are root-owned; with the pod's fsGroup they are group-readable by the
    // worker (0440). The worker refuses a key anyone but its owner can read, so an init
    // container installs the key into a memory-backed volume as the worker's own 0600 file.
    let mut volumes = vec![
        Volume {
            name: "key-secret".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(names.key_secret.clone()),
                default_mode: Some(0o440),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        },
        Volume {
            name: "key".into(),
            empty_dir: Some(EmptyDirVolumeSource {
                medium: Some("Memory".into()),
                size_limit: Some(Quantity("1Mi".into())),
            }),
            ..Volume::default()
        },
    ];
    let install_key = Container {
        name: "install-key".into(),
        image: Some(spec.image.clone()),
        command: Some(vec![
            "/bin/sh".into(),
            "-c".into(),
            format!("install -m 0600 {KEY_SECRET_DIR}/{KEY_FILE} {KEY_DIR}/{KEY_FILE}"),
        ]),
        volume_mounts: Some(vec![
            VolumeMount {
                name: "key-secret".into(),
                mount_path: KEY_SECRET_DIR.into(),
                read_only: Some(true),
                ..VolumeMount::default()
            },
            VolumeMount {
                name: "key".into(),
                mount_path: KEY_DIR.into(),
                ..VolumeMount::default()
            },
        ]),
        security_context: Some(restricted()),
        ..Container::default()
    };
    if let Some((claim, _)) = &spec.dataset {
        mounts.push(VolumeMount {
            name: "dataset".into(),
            mount_path: DATASET_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
        volumes.push(Volume {
            name: "dataset".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim.clone(),
                read_only: Some(true),
            }),
            ..Volume::default()
        });
    }
    if let Some(secret) = &config.worker_tls_secret {
        mounts.push(VolumeMount {
            name: "tls".into(),
            mount_path: TLS_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
        volumes.push(Volume {
            name: "tls".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.clone()),
                default_mode: Some(0o440),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        });
    }
    let container = Container {
        name: "shard-worker".into(),
        image: Some(spec.image.clone()),
        env: Some(worker_env(node, spec, config)),
        ports: Some(vec![
            ContainerPort {
                name: Some("grpc".into()),
                container_port: i32::from(config.worker_port),
                ..ContainerPort::default()
            },
            ContainerPort {
                name: Some("health".into()),
                container_port: i32::from(config.worker_health_port),
                ..ContainerPort::default()
            },
        ]),
        resources: Some(resources(spec, config)),
        volume_mounts: Some(mounts),
        // Up once gRPC answers (measuring and registering may take minutes on a big span);
        // ready only once the span is loaded, so no traffic reaches a node without layers.
        // Both on the plaintext health port: the kubelet cannot do the gRPC port's mutual TLS.
        startup_probe: Some(grpc_probe(config.worker_health_port, None, 5, 120)),
        readiness_probe: Some(grpc_probe(
            config.worker_health_port,
            Some(LOADED_HEALTH_SERVICE),
            5,
            3,
        )),
        security_context: Some(restricted()),
        ..Container::default()
    };
    let gpu = spec.gpu.as_ref();
    let mut statefulset = StatefulSet {
        metadata: meta(node, &names.statefulset),
        spec: Some(StatefulSetSpec {
            replicas: Some(1),
            service_name: Some(names.service.clone()),
            selector: LabelSelector {
                match_labels: Some(labels.clone()),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    init_containers: Some(vec![install_key]),
                    containers: vec![container],
                    volumes: Some(volumes),
                    node_selector: gpu.map(|g| g.node_selector.clone()),
                    tolerations: gpu.map(|g| g.tolerations.clone()),
                    security_context: Some(PodSecurityContext {
                        run_as_user: Some(WORKER_UID),
                        run_as_group: Some(WORKER_UID),
                        // Mounted Secrets become readable by the worker's group.
                        fs_group: Some(WORKER_UID),
                        run_as_non_root: Some(true),
                        ..PodSecurityContext::default()
                    }),
                    // The worker drains and deregisters on SIGTERM before it exits.
                    termination_grace_period_seconds: Some(WORKER_DRAIN_TIMEOUT_S + 30),
                    ..PodSpec::default()
                }),
            },
            volume_claim_templates: Some(vec![PersistentVolumeClaim {
                metadata: ObjectMeta {
                    name: Some("checkpoints".into()),
                    ..ObjectMeta::default()
                },
                spec: Some(PersistentVolumeClaimSpec {
                    access_modes: Some(vec!["ReadWriteOnce".into()]),
                    storage_class_name: spec.storage_class_name.clone(),
                    resources: Some(VolumeResourceRequirements {
                        requests: Some(BTreeMap::from([(
                            "storage".to_string(),
                            Quantity(spec.storage_size.clone()),
                        )])),
                        ..VolumeResourceRequirements::default()
                    }),
                    ..PersistentVolumeClaimSpec::default()
                }),
                ..PersistentVolumeClaim::default()
            }]),
            ..StatefulSetSpec::default()
        }),
        ..StatefulSet::default()
    };
    stamp_template_hash(&mut statefulset);
    statefulset
}

/// The pod template's annotation naming what the template is: the rollout compares the
/// running StatefulSet's with the desired one's (a live object carries defaults the API
/// server filled in, so the templates themselves do not compare).
pub const TEMPLATE_HASH: &str = "neuroshard.io/template-hash";

fn stamp_template_hash(sts: &mut StatefulSet) {
    use sha2::{Digest, Sha256};
    let Some(spec) = sts.spec.as_mut() else {
        return;
    };
    let bytes = serde_json::to_vec(&spec.template).unwrap_or_default();
    let hash: String = Sha256::digest(&bytes)[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    spec.template
        .metadata
        .get_or_insert_with(ObjectMeta::default)
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(TEMPLATE_HASH.into(), hash);
}

/// The template hash a StatefulSet runs (none: made by something else, or not yet).
pub fn template_hash(sts: &StatefulSet) -> Option<&str> {
    sts.spec
        .as_ref()?
        .template
        .metadata
        .as_ref()?
        .annotations
        .as_ref()?
        .get(TEMPLATE_HASH)
        .map(String::as_str)
}

/// The Service the node is reached at (its advertised endpoint).
pub fn service(node: &NeuroShardNode, config: &OperatorConfig) -> Service {
    let names = Names::of(node);
    Service {
        metadata: meta(node, &names.service),
        spec: Some(ServiceSpec {
            selector: Some(labels(node)),
            ports: Some(vec![ServicePort {
                name: Some("grpc".into()),
                port: i32::from(config.worker_port),
                target_port: Some(IntOrString::String("grpc".into())),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}
