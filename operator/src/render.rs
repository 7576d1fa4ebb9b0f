//! `neuroshard-operator render`: the objects NeuroShardNode manifests become, printed as YAML
//! without a cluster — the same desired-object code the reconciler applies. For reviewing what
//! a node will create, and for running a node's pod without the operator (`podman kube play`
//! of the rendered objects). Each node gets a fresh key in its Secret, as the reconciler
//! would create it; nothing is owned by a node object (there is none).

use std::path::PathBuf;

use neuroshard_common::Error;
use neuroshard_common::identity::NodeKey;
use serde::Deserialize;

use crate::config::OperatorConfig;
use crate::crd::NeuroShardNode;
use crate::{desired, spec};

/// The Secret, StatefulSet and Service of every node in `manifests` (a YAML stream of
/// NeuroShardNodes), as one YAML stream; `key` gives each node's key file contents.
pub fn render(
    manifests: &str,
    config: &OperatorConfig,
    mut key: impl FnMut() -> String,
) -> Result<String, Error> {
    let mut documents = Vec::new();
    for (i, document) in serde_yaml::Deserializer::from_str(manifests).enumerate() {
        let value = serde_yaml::Value::deserialize(document)
            .map_err(|e| Error::invalid_argument(format!("document {}: not YAML: {e}", i + 1)))?;
        if value.is_null() {
            continue;
        }
        let node: NeuroShardNode = serde_yaml::from_value(value).map_err(|e| {
            Error::invalid_argument(format!("document {}: not a NeuroShardNode: {e}", i + 1))
        })?;
        let name = node.metadata.name.clone().unwrap_or_default();
        if name.is_empty() {
            return Err(Error::invalid_argument(format!(
                "document {}: metadata.name is missing",
                i + 1
            )));
        }
        let checked = spec::check(&node.spec, config)
            .map_err(|e| Error::invalid_argument(format!("{name}: {e}")))?;
        let yaml = |object: serde_yaml::Result<String>| {
            object.map_err(|e| Error::internal(format!("{name}: writing YAML: {e}")))
        };
        documents.push(yaml(serde_yaml::to_string(&desired::key_secret(
            &node,
            key(),
        )))?);
        documents.push(yaml(serde_yaml::to_string(&desired::statefulset(
            &node, &checked, config,
        )))?);
        documents.push(yaml(serde_yaml::to_string(&desired::service(
            &node, config,
        )))?);
    }
    if documents.is_empty() {
        return Err(Error::invalid_argument("no NeuroShardNode in the input"));
    }
    Ok(documents.join("---\n"))
}

/// The subcommand's arguments.
#[derive(Debug, clap::Parser)]
#[command(
    name = "neuroshard-operator render",
    about = "Print the Secret, StatefulSet and Service each NeuroShardNode becomes"
)]
pub struct RenderArgs {
    /// The operator's configuration (defaults < file < NEUROSHARD_OPERATOR_* environment).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// NeuroShardNode manifests (YAML, several documents allowed); `-` reads stdin.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}

/// Runs `render` for the command line `args` (after the subcommand); the YAML on stdout.
pub fn main(args: RenderArgs) -> Result<String, Error> {
    let config: OperatorConfig = neuroshard_runtime::config::load(
        args.config.as_deref(),
        "NEUROSHARD_OPERATOR",
        std::env::vars(),
    )?;
    config.validate_objects()?;
    let mut manifests = String::new();
    for file in &args.files {
        let text = if file.as_os_str() == "-" {
            std::io::read_to_string(std::io::stdin())
        } else {
            std::fs::read_to_string(file)
        }
        .map_err(|e| Error::invalid_argument(format!("{}: {e}", file.display())))?;
        manifests.push_str(&text);
        manifests.push_str("\n---\n");
    }
    render(&manifests, &config, || {
        NodeKey::generate().to_file_contents()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CPU: &str = include_str!("../../deploy/examples/neuroshardnode-cpu.yaml");
    const GPU: &str = include_str!("../../deploy/examples/neuroshardnode-gpu.yaml");

    #[test]
    fn every_node_becomes_its_secret_statefulset_and_service() {
        let both = format!("{CPU}\n---\n{GPU}");
        let mut keys = 0;
        let yaml = render(&both, &OperatorConfig::default(), || {
            keys += 1;
            format!("key-{keys}")
        })
        .unwrap();
        let kinds: Vec<String> = serde_yaml::Deserializer::from_str(&yaml)
            .map(|d| {
                let v = serde_yaml::Value::deserialize(d).unwrap();
                format!(
                    "{}/{}",
                    v["kind"].as_str().unwrap(),
                    v["metadata"]["name"].as_str().unwrap()
                )
            })
            .collect();
        assert_eq!(kinds.len(), 6, "{kinds:?}");
        assert!(kinds[0].starts_with("Secret/") && kinds[1].starts_with("StatefulSet/"));
        assert!(kinds[2].starts_with("Service/"));
        assert!(yaml.contains("key-1") && yaml.contains("key-2"));
        // Nothing is owned: there is no node object to own it.
        assert!(!yaml.contains("ownerReferences"));
    }

    #[test]
    fn bad_manifests_are_refused_by_name() {
        let config = OperatorConfig::default();
        let key = String::new;
        let e = render("", &config, key).unwrap_err();
        assert!(e.message.contains("no NeuroShardNode"), "{e}");
        let e = render("kind: [", &config, key).unwrap_err();
        assert!(e.message.contains("document 1"), "{e}");
        let small = CPU.replace("memory: 4Gi", "memory: 1Ki");
        let e = render(&small, &config, key).unwrap_err();
        assert!(e.message.starts_with("cpu-node-0: spec.memory"), "{e}");
        let nameless = CPU.replace("name: cpu-node-0", "labels: {}");
        let e = render(&nameless, &config, key).unwrap_err();
        assert!(e.message.contains("metadata.name"), "{e}");
    }
}
