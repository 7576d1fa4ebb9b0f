//! The cross-service tests' crate, the top layer: it may use every crate of the workspace.
//!
//! - `tests/*.rs`: the multi-process flows (the registry against PostgreSQL; shard workers
//!   with the registry: pipelines, streaming, growth; the whole local swarm: completions,
//!   failover, TLS, traces, the dashboard, `neuroshard up`; the gateway's engine and its
//!   benchmarks), the dashboard against its fixture, the layering check, and `configs.rs`,
//!   which checks every config key the harness writes against the services' config types;
//! - `tests/support/`: their one shared set-up (seeded checkpoints, a registry with workers
//!   added by hand, where the binaries are);
//! - this library: [`workspace_binary`], [`browser`] (headless Chromium: DOM after scripts,
//!   screenshots) and [`layering`] (the workspace's dependency rules).
//!
//! The processes, PostgreSQL, generated configs and the local swarm are the harness of
//! `neuroshard-local` (which `neuroshard up` uses too); its process, port and HTTP helpers are
//! re-exported here. The tests run the services' binaries, which they do not build
//! themselves: `cargo test --workspace` (what `make test` runs) builds every member's
//! binaries beside the test executables; with `-p neuroshard-tests`, build them first
//! (`cargo build --release --workspace --bins`, what `make build` and `make bench` do).

pub mod browser;
pub mod layering;

use std::path::{Path, PathBuf};

pub use neuroshard_local::{
    ChildGuard, HttpResponse, LocalError, PgServer, Result, free_port, http_get, http_request,
    open_request,
};

/// A binary of this workspace, next to the running test in the target directory (`cargo test
/// --workspace` builds every member's binaries there; a test run of this crate alone does
/// not, so the error says how to build them).
pub fn workspace_binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().map_err(|e| LocalError(e.to_string()))?;
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| LocalError(format!("unexpected test binary path {}", exe.display())))?;
    let path = dir.join(name);
    if path.exists() {
        Ok(path)
    } else {
        Err(LocalError(format!(
            "{} is missing: run the workspace's tests (make test), which build it, or build the binaries first (cargo build --release --workspace --bins)",
            path.display()
        )))
    }
}
