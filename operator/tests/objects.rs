//! What the operator generates, checked against committed files: the CRD (drift from the
//! types fails), the objects a CPU node and a GPU node become (golden YAML), and the example
//! manifests in `deploy/examples/`, validated against the CRD's schema as `kubectl apply
//! --validate=strict` would (unknown fields refused) and accepted by the operator's checks.
//!
//! After an intended change: `NEUROSHARD_UPDATE_GOLDEN=1 cargo test -p neuroshard-operator`
//! rewrites the golden files and the CRD; review the diff.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use kube::api::ObjectMeta;
use neuroshard_operator::crd::{DatasetSpec, GpuSpec, NeuroShardNode, NeuroShardNodeSpec};
use neuroshard_operator::{OperatorConfig, crd_yaml, desired, spec};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn updating() -> bool {
    std::env::var_os("NEUROSHARD_UPDATE_GOLDEN").is_some()
}

/// `actual` equals the committed `path`, or (when updating) replaces it.
fn golden(path: &Path, actual: &str) {
    if updating() {
        std::fs::write(path, actual).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (NEUROSHARD_UPDATE_GOLDEN=1 writes it)",
            path.display()
        )
    });
    assert!(
        committed == actual,
        "{} drifted from what the code generates; review and rerun with NEUROSHARD_UPDATE_GOLDEN=1\n--- generated ---\n{actual}",
        path.display()
    );
}

#[test]
fn the_committed_crd_is_what_the_types_generate() {
    golden(
        &root().join("crds/neuroshardnode.yaml"),
        &crd_yaml().unwrap(),
    );
}

fn node(name: &str, spec: NeuroShardNodeSpec) -> NeuroShardNode {
    NeuroShardNode {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("swarm".into()),
            uid: Some(format!("{name}-uid")),
            ..ObjectMeta::default()
        },
        spec,
        status: None,
    }
}

/// The node's Secret (with a placeholder key), StatefulSet and Service as one YAML stream.
fn objects(node: &NeuroShardNode, config: &OperatorConfig) -> String {
    let checked = spec::check(&node.spec, config).unwrap();
    let secret = desired::key_secret(node, "<the node's key>".into());
    [
        serde_yaml::to_string(&secret).unwrap(),
        serde_yaml::to_string(&desired::statefulset(node, &checked, config)).unwrap(),
        serde_yaml::to_string(&desired::service(node, config)).unwrap(),
    ]
    .join("---\n")
}

#[test]
fn a_cpu_node_and_a_gpu_node_become_the_golden_objects() {
    let cpu = node(
        "cpu-0",
        NeuroShardNodeSpec {
            role: "auto".into(),
            memory: Some("4Gi".into()),
            ..NeuroShardNodeSpec::default()
        },
    );
    let gpu = node(
        "gpu-0",
        NeuroShardNodeSpec {
            role: "worker".into(),
            memory: Some("60Gi".into()),
            gpu: Some(GpuSpec {
                count: 1,
                resource_name: "nvidia.com/gpu".into(),
                ..GpuSpec::default()
            }),
            training: true,
            dataset: Some(DatasetSpec {
                claim_name: "genesis".into(),
                path: Some("shakespeare".into()),
            }),
            aggregators: Some(vec!["https://diloco-aggregator:7600".into()]),
            ledger: Some("https://ledger:7700".into()),
            payout_address: Some("ab".repeat(20)),
            ..NeuroShardNodeSpec::default()
        },
    );
    // The GPU node's operator also passes workers a trace collector.
    let traced = OperatorConfig {
        worker_otlp_endpoint: Some("http://otel-collector:4317".into()),
        ..OperatorConfig::default()
    };
    let (cpu_yaml, gpu_yaml) = (
        objects(&cpu, &OperatorConfig::default()),
        objects(&gpu, &traced),
    );
    // What only a GPU node gets.
    for what in [
        "nvidia.com/gpu: '1'",
        "nodeSelector",
        "tolerations",
        "value: cuda",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "claimName: genesis",
        "value: /var/lib/neuroshard-dataset/shakespeare",
    ] {
        assert!(gpu_yaml.contains(what), "the GPU node lacks {what}");
        assert!(!cpu_yaml.contains(what), "the CPU node has {what}");
    }
    assert!(cpu_yaml.contains("value: cpu"));
    // The memory the worker offers is the spec's.
    assert!(
        cpu_yaml.contains(&format!("value: '{}'", 4u64 << 30)),
        "{cpu_yaml}"
    );
    golden(
        &root().join("operator/tests/golden/cpu-node.yaml"),
        &cpu_yaml,
    );
    golden(
        &root().join("operator/tests/golden/gpu-node.yaml"),
        &gpu_yaml,
    );
}

/// The CRD's schema for `spec`, with unknown fields refused wherever properties are listed
/// (what the API server does under strict field validation).
fn strict_spec_schema() -> serde_json::Value {
    fn strict(v: &mut serde_json::Value) {
        if let Some(o) = v.as_object_mut() {
            if o.contains_key("properties") && !o.contains_key("additionalProperties") {
                o.insert("additionalProperties".into(), false.into());
            }
            for child in o.values_mut() {
                strict(child);
            }
        } else if let Some(a) = v.as_array_mut() {
            a.iter_mut().for_each(strict);
        }
    }
    use kube::CustomResourceExt;
    let crd = serde_json::to_value(NeuroShardNode::crd()).unwrap();
    let mut schema =
        crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"].clone();
    strict(&mut schema);
    schema
}

#[test]
fn the_example_manifests_validate_against_the_crd_and_pass_the_operators_checks() {
    let validator = jsonschema::validator_for(&strict_spec_schema()).unwrap();
    let dir = root().join("deploy/examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        // NeuroShardNode manifests; the chart's values examples beside them are checked by
        // scripts/chart-check.py (their nodes against this CRD too).
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if !(name.starts_with("neuroshardnode-") && name.ends_with(".yaml")) {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let manifest: serde_json::Value = serde_yaml::from_str(&text).unwrap();
        assert_eq!(
            manifest["apiVersion"],
            "neuroshard.io/v1alpha1",
            "{}",
            path.display()
        );
        assert_eq!(manifest["kind"], "NeuroShardNode", "{}", path.display());
        let errors: Vec<String> = validator
            .iter_errors(&manifest["spec"])
            .map(|e| format!("{} at {}", e, e.instance_path))
            .collect();
        assert!(errors.is_empty(), "{}: {errors:?}", path.display());
        let node: NeuroShardNode = serde_json::from_value(manifest).unwrap();
        spec::check(&node.spec, &OperatorConfig::default())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        seen += 1;
    }
    assert!(seen >= 2, "the CPU and GPU examples");
    // The validator does refuse: an unknown field, and a count that is not a number.
    let bad = serde_json::json!({"memory": "4Gi", "gpus": 1});
    assert!(!validator.is_valid(&bad));
    let bad = serde_json::json!({"memory": "4Gi", "gpu": {"count": "one"}});
    assert!(!validator.is_valid(&bad));
}
