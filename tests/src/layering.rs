//! The workspace's layering rules, checked over `cargo metadata` and `cargo tree` (see the
//! README's "Layering rules"). The rules are a pure function of the dependency graph
//! ([`violations`]), so they are tested on graphs made to break them; the test
//! `tests/layering.rs` applies them to this workspace.
//!
//! Layers, from the bottom: the contract (`proto/`), libraries (`services/lib/*`),
//! deployables (`services/<name>/`, `operator/`: one folder per binary), and the cross-service
//! tests (`tests/`). Dependencies point down only.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

/// Where a workspace crate sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Layer {
    Contract,
    Library,
    Deployable,
    Tests,
}

/// Crates outside the workspace that speak a transport, or observe over one: the pure domain
/// compiles none of them.
pub const TRANSPORT: &[&str] = &[
    "tonic",
    "axum",
    "hyper",
    "tower",
    "opentelemetry",
    "opentelemetry_sdk",
    "opentelemetry-otlp",
    "tracing-opentelemetry",
    "tokio-postgres",
];

/// Crates that link libtorch.
pub const LIBTORCH: &[&str] = &["tch", "torch-sys"];

/// Workspace crates that must compile without any [`TRANSPORT`] crate.
pub const PURE: &[&str] = &[
    "neuroshard-common",
    "neuroshard-text",
    "neuroshard-aggregation",
];

/// The only crates that may link libtorch: the model and what needs tensors (plus the tests).
pub const MAY_LINK_LIBTORCH: &[&str] = &[
    "neuroshard-model",
    "neuroshard-shard-worker",
    "neuroshard-cli",
    "neuroshard-diloco-aggregator",
    "neuroshard-tests",
];

/// One workspace crate as the rules see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Crate {
    pub name: String,
    pub layer: Layer,
    /// Workspace crates it depends on, normal and build dependencies.
    pub uses: BTreeSet<String>,
    /// Workspace crates it depends on for its tests only.
    pub tests_use: BTreeSet<String>,
    /// Every crate (any source) in its normal dependency tree, resolved for it alone.
    pub compiles: BTreeSet<String>,
}

/// The layer of a crate from its manifest's folder, relative to the workspace root.
pub fn layer_of(relative_dir: &Path) -> Option<Layer> {
    let parts: Vec<&str> = relative_dir
        .components()
        .filter_map(|c| c.as_os_str().to_str())
        .collect();
    match parts.as_slice() {
        ["proto"] => Some(Layer::Contract),
        ["services", "lib", _] => Some(Layer::Library),
        ["services", _] | ["operator"] => Some(Layer::Deployable),
        ["tests"] => Some(Layer::Tests),
        _ => None,
    }
}

/// Every broken rule, as a sentence naming the crates; empty when the graph is clean.
pub fn violations(crates: &[Crate]) -> Vec<String> {
    let layer: BTreeMap<&str, Layer> = crates.iter().map(|c| (c.name.as_str(), c.layer)).collect();
    let mut found = Vec::new();
    for c in crates {
        for dep in &c.uses {
            let Some(&dep_layer) = layer.get(dep.as_str()) else {
                continue;
            };
            let allowed = match c.layer {
                Layer::Contract => false,
                Layer::Library => dep_layer <= Layer::Library,
                // A deployable builds on libraries, never on another deployable.
                Layer::Deployable => dep_layer <= Layer::Library,
                Layer::Tests => dep_layer <= Layer::Library,
            };
            if !allowed {
                found.push(format!(
                    "{} ({:?}) depends on {dep} ({dep_layer:?}): dependencies point from \
                     deployables to libraries to the contract",
                    c.name, c.layer
                ));
            }
        }
        for dep in &c.tests_use {
            if let Some(&dep_layer) = layer.get(dep.as_str())
                && c.layer != Layer::Tests
                && dep_layer == Layer::Deployable
                && *dep != c.name
            {
                found.push(format!(
                    "{} tests with {dep}, another deployable: cross-service tests live in tests/",
                    c.name
                ));
            }
        }
        if PURE.contains(&c.name.as_str()) {
            for t in TRANSPORT.iter().filter(|t| c.compiles.contains(**t)) {
                found.push(format!(
                    "{} is pure domain but compiles {t}: transport belongs in neuroshard-runtime",
                    c.name
                ));
            }
        }
        if !MAY_LINK_LIBTORCH.contains(&c.name.as_str()) {
            for t in LIBTORCH.iter().filter(|t| c.compiles.contains(**t)) {
                found.push(format!(
                    "{} links libtorch (through {t}): only the model and the crates that need \
                     tensors may",
                    c.name
                ));
            }
        }
    }
    found
}

/// Why the workspace could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct LayeringError(String);

/// Reads this workspace's crates with `cargo` (`cargo metadata`, then `cargo tree` per
/// crate, so each crate's dependencies are resolved with its own features, as `cargo build -p`
/// would).
pub fn workspace_crates(cargo: &Path, root: &Path) -> Result<Vec<Crate>, LayeringError> {
    let out = run(Command::new(cargo).current_dir(root).args([
        "metadata",
        "--format-version",
        "1",
        "--no-deps",
        "--offline",
    ]))?;
    let metadata: serde_json::Value =
        serde_json::from_str(&out).map_err(|e| LayeringError(format!("cargo metadata: {e}")))?;
    let packages = metadata["packages"].as_array().cloned().unwrap_or_default();
    let names: BTreeSet<String> = packages
        .iter()
        .filter_map(|p| p["name"].as_str().map(str::to_string))
        .collect();
    let mut crates = Vec::new();
    for package in &packages {
        let name = package["name"].as_str().unwrap_or_default().to_string();
        let manifest = Path::new(package["manifest_path"].as_str().unwrap_or_default());
        let dir = manifest.parent().unwrap_or(root);
        let relative = dir.strip_prefix(root).unwrap_or(dir);
        let layer = layer_of(relative).ok_or_else(|| {
            LayeringError(format!(
                "{name} sits in {}, which is no layer: put a library under services/lib/, a \
                 deployable in services/<name>/",
                relative.display()
            ))
        })?;
        let mut uses = BTreeSet::new();
        let mut tests_use = BTreeSet::new();
        for dep in package["dependencies"].as_array().into_iter().flatten() {
            let dep_name = dep["name"].as_str().unwrap_or_default().to_string();
            if !names.contains(&dep_name) {
                continue;
            }
            match dep["kind"].as_str() {
                Some("dev") => tests_use.insert(dep_name),
                _ => uses.insert(dep_name),
            };
        }
        let tree = run(Command::new(cargo).current_dir(root).args([
            "tree",
            "--offline",
            "-p",
            &name,
            "-e",
            "normal",
            "--prefix",
            "none",
            "--format",
            "{p}",
        ]))?;
        let compiles = tree
            .lines()
            .filter_map(|line| line.split_whitespace().next())
            .map(str::to_string)
            .collect();
        crates.push(Crate {
            name,
            layer,
            uses,
            tests_use,
            compiles,
        });
    }
    Ok(crates)
}

fn run(command: &mut Command) -> Result<String, LayeringError> {
    let out = command
        .output()
        .map_err(|e| LayeringError(format!("{command:?}: {e}")))?;
    if !out.status.success() {
        return Err(LayeringError(format!(
            "{command:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn krate(name: &str, layer: Layer, uses: &[&str], compiles: &[&str]) -> Crate {
        Crate {
            name: name.into(),
            layer,
            uses: uses.iter().map(|s| s.to_string()).collect(),
            tests_use: BTreeSet::new(),
            compiles: compiles.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn clean() -> Vec<Crate> {
        vec![
            krate("neuroshard-proto", Layer::Contract, &[], &["prost"]),
            krate(
                "neuroshard-common",
                Layer::Library,
                &["neuroshard-proto"],
                &["prost", "k256"],
            ),
            krate(
                "neuroshard-runtime",
                Layer::Library,
                &["neuroshard-common"],
                &["tonic", "axum"],
            ),
            krate(
                "neuroshard-model",
                Layer::Library,
                &["neuroshard-common"],
                &["tch"],
            ),
            krate(
                "neuroshard-layer-registry",
                Layer::Deployable,
                &["neuroshard-runtime"],
                &["tonic"],
            ),
            krate(
                "neuroshard-shard-worker",
                Layer::Deployable,
                &["neuroshard-model", "neuroshard-runtime"],
                &["tonic", "tch"],
            ),
            krate(
                "neuroshard-tests",
                Layer::Tests,
                &["neuroshard-runtime"],
                &[],
            ),
        ]
    }

    #[test]
    fn a_clean_graph_passes() {
        assert_eq!(violations(&clean()), Vec::<String>::new());
    }

    #[test]
    fn each_broken_rule_is_named() {
        let mut graph = clean();
        // A library on a deployable, a deployable on a deployable.
        graph[2].uses.insert("neuroshard-layer-registry".into());
        graph[5].uses.insert("neuroshard-layer-registry".into());
        // Transport in the pure domain; libtorch in the registry.
        graph[1].compiles.insert("tonic".into());
        graph[4].compiles.insert("torch-sys".into());
        // A deployable testing with another deployable.
        graph[5]
            .tests_use
            .insert("neuroshard-layer-registry".into());
        let found = violations(&graph);
        assert_eq!(found.len(), 5, "{found:#?}");
        assert!(found.iter().any(|f| {
            f.starts_with("neuroshard-runtime (Library) depends on neuroshard-layer-registry")
        }));
        assert!(
            found
                .iter()
                .any(|f| f.contains("neuroshard-common is pure domain but compiles tonic"))
        );
        assert!(
            found
                .iter()
                .any(|f| f.contains("neuroshard-layer-registry links libtorch"))
        );
        assert!(
            found
                .iter()
                .any(|f| f.contains("cross-service tests live in tests/"))
        );
        assert!(
            found
                .iter()
                .any(|f| f.starts_with("neuroshard-shard-worker (Deployable) depends on"))
        );
    }

    #[test]
    fn folders_name_layers() {
        assert_eq!(layer_of(Path::new("proto")), Some(Layer::Contract));
        assert_eq!(
            layer_of(Path::new("services/lib/common")),
            Some(Layer::Library)
        );
        assert_eq!(
            layer_of(Path::new("services/ledger")),
            Some(Layer::Deployable)
        );
        assert_eq!(layer_of(Path::new("operator")), Some(Layer::Deployable));
        assert_eq!(layer_of(Path::new("tests")), Some(Layer::Tests));
        assert_eq!(layer_of(Path::new("services/lib/x/y")), None);
        assert_eq!(layer_of(Path::new("crates/x")), None);
    }
}
