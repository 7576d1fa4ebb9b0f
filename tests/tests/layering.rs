//! The layering rules (README, "Layering rules") hold for this workspace.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use neuroshard_tests::layering::{violations, workspace_crates};

#[test]
fn dependencies_point_down_and_the_pure_domain_compiles_no_transport() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let cargo = std::env::var_os("CARGO")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("cargo"));
    let crates = workspace_crates(&cargo, root).unwrap();
    assert!(
        crates.len() >= 10,
        "read only {} crates: {crates:?}",
        crates.len()
    );
    let found = violations(&crates);
    assert!(
        found.is_empty(),
        "layering rules broken:\n- {}",
        found.join("\n- ")
    );
}
