//! Harness for tests that need real components. Process, port and PostgreSQL helpers live in
//! `neuroshard-local` (the local swarm uses them too) and are re-exported here; [`browser`]
//! runs pages in headless Chromium (DOM after scripts, screenshots) for the dashboard's tests;
//! [`layering`] checks the workspace's dependency rules.

pub mod browser;
pub mod layering;

use std::path::{Path, PathBuf};

pub use neuroshard_local::{
    ChildGuard, HttpResponse, LocalError, PgServer, Result, free_port, http_get, http_request,
    open_request,
};

/// A binary of this workspace, next to the running test in the target directory (`cargo test
/// --workspace` builds every member's binaries there).
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
            "{} is missing: run the workspace's tests (make test), which build it",
            path.display()
        )))
    }
}
