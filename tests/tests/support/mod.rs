//! What the cross-service tests share; each test binary uses a part of it.
//!
//! - here: where the service binaries are, a [`Launcher`] for a test's directory, a registry
//!   client once the registry listens, signals to processes;
//! - [`registry`]: signed envelopes, registration requests and assignment reads, as nodes
//!   send them;
//! - [`checkpoints`]: seeded model checkpoints (with a tokenizer when the gateway needs one)
//!   and what the model generates in process;
//! - [`completions`]: greedy completions through the gateway, whole or streamed, and the
//!   routes the status document shows;
//! - [`swarm`]: a registry and shard-worker processes assembled by hand (growth, streaming,
//!   failover of single hops), and the checks made on them;
//! - [`kube_api`]: a loopback stand-in for the Kubernetes API server, for the operator's
//!   real controller.
//!
//! The processes themselves (PostgreSQL, generated configs, logs, waiting for ports, the
//! whole local swarm) come from `neuroshard-local`, the harness `neuroshard up` uses too.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod checkpoints;
pub mod completions;
pub mod kube_api;
pub mod ledger;
pub mod registry;
pub mod swarm;

use std::path::{Path, PathBuf};

use neuroshard_local::Launcher;
use neuroshard_proto::registry::v1::layer_registry_client::LayerRegistryClient;
use neuroshard_tests::workspace_binary;
use tonic::transport::Channel;

/// The directory holding `neuroshard`, `layer-registry`, `shard-worker` and `swarm-gateway`.
pub fn bin_dir() -> PathBuf {
    workspace_binary("swarm-gateway")
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Starts services from [`bin_dir`] with configs and logs under `dir/state` (kept with the
/// test's temporary directory, so a failure's logs are there while it runs).
pub fn launcher(dir: &Path) -> Launcher {
    let state = dir.join("state");
    std::fs::create_dir_all(&state).unwrap();
    Launcher::new(bin_dir(), state)
}

/// A client of the registry at `url`, which already listens.
pub async fn registry_client(url: &str) -> LayerRegistryClient<Channel> {
    LayerRegistryClient::connect(url.to_string()).await.unwrap()
}

/// Sends signal `name` (`STOP`, `CONT`, `TERM`, …) to process `pid`, as `kill -NAME pid` would.
pub fn signal(pid: u32, name: &str) {
    let ok = std::process::Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{name} {pid}");
}

/// The gateway's status document on `port` in its detail view (asked for with `key`), which
/// has the nodes' endpoints and pids.
pub fn detail_status(port: u16, key: &str) -> serde_json::Value {
    let auth = format!("Bearer {key}");
    let r = neuroshard_local::http_request(
        port,
        "GET",
        "/api/v1/status",
        &[("Authorization", &auth)],
        "",
        std::time::Duration::from_secs(30),
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let doc: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(doc["view"], "detail", "{doc}");
    doc
}

/// Held by a test that runs swarms whose results depend on every pipeline keeping up (rounds
/// that must include both pipelines to equal a simulation): such tests of one file run one
/// at a time. Four of them at once on two cores starve a stage past its heartbeat, the
/// registry re-forms its pipeline mid-round, and the round then closes on its deadline
/// without it — a different result, not a bug in what they test.
pub async fn one_swarm_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}
