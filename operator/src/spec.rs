//! What a `NeuroShardNode`'s spec means once checked, pure: the memory budget in bytes, the
//! GPU with its resource name, the endpoints with the operator's defaults filled in. An
//! invalid spec is an [`InvalidSpec`] naming the field and what is wrong; the reconciler
//! reports it as a Condition and creates nothing.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ResourceRequirements, Toleration};
use neuroshard_common::identity::is_node_id;

use crate::config::OperatorConfig;
use crate::crd::NeuroShardNodeSpec;
use crate::quantity;

/// Roles the registry knows how to honour.
pub const ROLES: &[&str] = &["auto", "driver", "worker", "validator"];

/// Why a spec cannot be run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct InvalidSpec {
    /// The spec's field, as the user wrote it (`spec.gpu.resourceName`).
    pub field: &'static str,
    pub message: String,
}

fn invalid(field: &'static str, message: impl Into<String>) -> InvalidSpec {
    InvalidSpec {
        field,
        message: message.into(),
    }
}

/// A checked GPU request.
#[derive(Debug, Clone, PartialEq)]
pub struct Gpu {
    pub count: u32,
    pub resource_name: String,
    pub node_selector: BTreeMap<String, String>,
    pub tolerations: Vec<Toleration>,
}

/// A spec that can be run, defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct Checked {
    pub role: String,
    /// Offered for layers (the worker's `usable_memory_bytes`).
    pub memory_bytes: u64,
    pub gpu: Option<Gpu>,
    pub image: String,
    pub resources: ResourceRequirements,
    pub storage_size: String,
    pub storage_class_name: Option<String>,
    pub payout_address: Option<String>,
    pub registry: String,
    pub aggregators: Vec<String>,
    pub ledger: Option<String>,
    pub training: bool,
    /// The dataset's claim and its folder inside the volume (empty: the root).
    pub dataset: Option<(String, String)>,
}

fn check_url(field: &'static str, url: &str) -> Result<(), InvalidSpec> {
    if url.starts_with("http://") || url.starts_with("https://") {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!("`{url}` is not an http:// or https:// URL"),
        ))
    }
}

/// Checks `spec` against what the operator knows (`config`: defaults, the model's layer size).
pub fn check(spec: &NeuroShardNodeSpec, config: &OperatorConfig) -> Result<Checked, InvalidSpec> {
    if !ROLES.contains(&spec.role.as_str()) {
        return Err(invalid(
            "spec.role",
            format!("`{}` is not one of {}", spec.role, ROLES.join(", ")),
        ));
    }
    let memory = spec.memory.as_deref().ok_or_else(|| {
        invalid(
            "spec.memory",
            "missing: the memory this node offers for layers (e.g. 8Gi)",
        )
    })?;
    let memory_bytes = quantity::bytes(memory).map_err(|e| invalid("spec.memory", e))?;
    let layer = config.layer_bytes();
    if memory_bytes < layer {
        return Err(invalid(
            "spec.memory",
            format!(
                "{memory} ({memory_bytes} bytes) holds no layer: one layer of the model needs {layer} bytes"
            ),
        ));
    }
    let gpu = match &spec.gpu {
        None => None,
        Some(g) => {
            if g.count == 0 {
                return Err(invalid(
                    "spec.gpu.count",
                    "must be at least 1 (leave gpu out for a CPU node)",
                ));
            }
            if g.resource_name.trim().is_empty() {
                return Err(invalid(
                    "spec.gpu.resourceName",
                    format!(
                        "a GPU count of {} needs the resource name the device plugin advertises (e.g. nvidia.com/gpu)",
                        g.count
                    ),
                ));
            }
            Some(Gpu {
                count: g.count,
                resource_name: g.resource_name.clone(),
                node_selector: g.node_selector.clone().unwrap_or_else(|| {
                    BTreeMap::from([("nvidia.com/gpu.present".to_string(), "true".to_string())])
                }),
                tolerations: g.tolerations.clone().unwrap_or_else(|| {
                    vec![Toleration {
                        key: Some(g.resource_name.clone()),
                        operator: Some("Exists".into()),
                        effect: Some("NoSchedule".into()),
                        ..Toleration::default()
                    }]
                }),
            })
        }
    };
    let image = spec
        .image
        .clone()
        .unwrap_or_else(|| config.worker_image.clone());
    if image.trim().is_empty() {
        return Err(invalid(
            "spec.image",
            "empty, and the operator has no default image",
        ));
    }
    let storage = spec.storage.clone().unwrap_or_default();
    let storage_size = storage.size.unwrap_or_else(|| config.storage_size.clone());
    quantity::bytes(&storage_size).map_err(|e| invalid("spec.storage.size", e))?;
    if let Some(payout) = &spec.payout_address
        && !is_node_id(payout)
    {
        return Err(invalid(
            "spec.payoutAddress",
            format!("`{payout}` is not a wallet address (40 lowercase hex digits)"),
        ));
    }
    let registry = spec
        .registry
        .clone()
        .unwrap_or_else(|| config.registry.clone());
    check_url("spec.registry", &registry)?;
    let aggregators = spec
        .aggregators
        .clone()
        .unwrap_or_else(|| config.aggregators.clone());
    for a in &aggregators {
        check_url("spec.aggregators", a)?;
    }
    let ledger = spec.ledger.clone().or_else(|| config.ledger.clone());
    if let Some(l) = &ledger {
        check_url("spec.ledger", l)?;
    }
    if spec.training && aggregators.is_empty() {
        return Err(invalid(
            "spec.training",
            "training needs aggregators to send Δ to (spec.aggregators or the operator's)",
        ));
    }
    let dataset = spec.dataset.as_ref().map(check_dataset).transpose()?;
    if spec.training && dataset.is_none() {
        return Err(invalid(
            "spec.dataset",
            "training needs a dataset: the PersistentVolumeClaim holding `neuroshard data build`'s output",
        ));
    }
    Ok(Checked {
        role: spec.role.clone(),
        memory_bytes,
        gpu,
        image,
        resources: spec.resources.clone().unwrap_or_default(),
        storage_size,
        storage_class_name: storage.storage_class_name,
        payout_address: spec.payout_address.clone(),
        registry,
        aggregators,
        ledger,
        training: spec.training,
        dataset,
    })
}

/// A claim name Kubernetes accepts (a DNS subdomain) and a relative folder inside it.
fn check_dataset(dataset: &crate::crd::DatasetSpec) -> Result<(String, String), InvalidSpec> {
    let name = &dataset.claim_name;
    let dns_label_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    if name.is_empty()
        || name.len() > 253
        || !dns_label_chars
        || name.starts_with(['-', '.'])
        || name.ends_with(['-', '.'])
    {
        return Err(invalid(
            "spec.dataset.claimName",
            format!(
                "`{name}` is not a PersistentVolumeClaim name (lower-case letters, digits, '-' and '.')"
            ),
        ));
    }
    let path = dataset.path.clone().unwrap_or_default();
    let path = path.trim_matches('/').to_string();
    if path.split('/').any(|part| part == "..") {
        return Err(invalid(
            "spec.dataset.path",
            format!("`{path}` leaves the volume; give a folder inside it"),
        ));
    }
    Ok((name.clone(), path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::GpuSpec;

    fn spec() -> NeuroShardNodeSpec {
        NeuroShardNodeSpec {
            role: "auto".into(),
            memory: Some("4Gi".into()),
            ..NeuroShardNodeSpec::default()
        }
    }

    fn refused(s: NeuroShardNodeSpec) -> InvalidSpec {
        check(&s, &OperatorConfig::default()).unwrap_err()
    }

    #[test]
    fn a_cpu_node_gets_the_operators_defaults() {
        let c = check(&spec(), &OperatorConfig::default()).unwrap();
        assert_eq!(c.memory_bytes, 4 << 30);
        assert_eq!(c.gpu, None);
        assert_eq!(c.image, OperatorConfig::default().worker_image);
        assert_eq!(c.registry, OperatorConfig::default().registry);
    }

    #[test]
    fn invalid_specs_name_the_field_and_the_problem() {
        let e = refused(NeuroShardNodeSpec {
            memory: None,
            ..spec()
        });
        assert_eq!(e.field, "spec.memory");
        assert!(e.message.contains("missing"), "{e}");
        let e = refused(NeuroShardNodeSpec {
            memory: Some("1Mi".into()),
            ..spec()
        });
        assert!(e.message.contains("holds no layer"), "{e}");
        let e = refused(NeuroShardNodeSpec {
            role: "captain".into(),
            ..spec()
        });
        assert_eq!(e.field, "spec.role");
        assert!(e.message.contains("auto, driver, worker, validator"), "{e}");
        let e = refused(NeuroShardNodeSpec {
            gpu: Some(GpuSpec {
                count: 2,
                resource_name: String::new(),
                ..GpuSpec::default()
            }),
            ..spec()
        });
        assert_eq!(e.field, "spec.gpu.resourceName");
        let e = refused(NeuroShardNodeSpec {
            gpu: Some(GpuSpec {
                count: 0,
                resource_name: "nvidia.com/gpu".into(),
                ..GpuSpec::default()
            }),
            ..spec()
        });
        assert_eq!(e.field, "spec.gpu.count");
        let e = refused(NeuroShardNodeSpec {
            memory: Some("lots".into()),
            ..spec()
        });
        assert_eq!(e.field, "spec.memory");
        let e = refused(NeuroShardNodeSpec {
            payout_address: Some("me".into()),
            ..spec()
        });
        assert_eq!(e.field, "spec.payoutAddress");
        let e = refused(NeuroShardNodeSpec {
            training: true,
            ..spec()
        });
        assert_eq!(e.field, "spec.training");
        let aggregated = NeuroShardNodeSpec {
            aggregators: Some(vec!["https://diloco-aggregator:7600".into()]),
            training: true,
            ..spec()
        };
        let e = refused(aggregated.clone());
        assert_eq!(e.field, "spec.dataset");
        let dataset = |claim: &str, path: Option<&str>| NeuroShardNodeSpec {
            dataset: Some(crate::crd::DatasetSpec {
                claim_name: claim.into(),
                path: path.map(String::from),
            }),
            ..aggregated.clone()
        };
        assert_eq!(
            refused(dataset("Genesis_Data", None)).field,
            "spec.dataset.claimName"
        );
        assert_eq!(
            refused(dataset("genesis", Some("../etc"))).field,
            "spec.dataset.path"
        );
        let c = check(
            &dataset("genesis", Some("/shakespeare/")),
            &OperatorConfig::default(),
        )
        .unwrap();
        assert_eq!(c.dataset, Some(("genesis".into(), "shakespeare".into())));
    }

    #[test]
    fn a_gpu_node_defaults_to_cuda_nodes_and_their_taint() {
        let c = check(
            &NeuroShardNodeSpec {
                gpu: Some(GpuSpec {
                    count: 1,
                    resource_name: "nvidia.com/gpu".into(),
                    ..GpuSpec::default()
                }),
                ..spec()
            },
            &OperatorConfig::default(),
        )
        .unwrap();
        let gpu = c.gpu.unwrap();
        assert_eq!(gpu.node_selector["nvidia.com/gpu.present"], "true");
        assert_eq!(gpu.tolerations[0].key.as_deref(), Some("nvidia.com/gpu"));
    }
}
