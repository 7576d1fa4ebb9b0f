//! The building block every multi-process run starts from: a throwaway PostgreSQL and a
//! layer-registry process on it, listening.

use std::time::{Duration, Instant};

use crate::configs::RegistryToml;
use crate::service::{Launcher, REGISTRY_BINARY};
use crate::{ChildGuard, PgServer, Result, free_port};

/// One layer-registry process, listening.
#[derive(Debug)]
pub struct RegistryProcess {
    pub port: u16,
    /// `http://` or, when it serves TLS, `https://127.0.0.1:<port>`.
    pub url: String,
    pub process: ChildGuard,
}

impl RegistryProcess {
    /// Starts a registry as `name` with `config` on a free port against `database_url`, and
    /// waits (until `deadline`) until it listens.
    pub fn start(
        launcher: &Launcher,
        name: &str,
        database_url: &str,
        config: RegistryToml,
        deadline: Instant,
    ) -> Result<Self> {
        let port = free_port()?;
        let scheme = if config.serves_tls() { "https" } else { "http" };
        let config = config.listen(port).database_url(database_url);
        let mut process = launcher.spawn(REGISTRY_BINARY, name, config.table(), &[])?;
        launcher.wait_for_port(&mut process, port, deadline, name)?;
        Ok(Self {
            port,
            url: format!("{scheme}://127.0.0.1:{port}"),
            process,
        })
    }
}

/// PostgreSQL and one registry on it. Fields drop in order: the registry stops before its
/// database.
#[derive(Debug)]
pub struct LocalRegistry {
    pub registry: RegistryProcess,
    pub pg: PgServer,
}

impl LocalRegistry {
    /// Starts PostgreSQL, then the registry (as `layer-registry`) on it; `timeout` bounds the
    /// registry's start.
    pub fn start(launcher: &Launcher, config: RegistryToml, timeout: Duration) -> Result<Self> {
        let pg = PgServer::start()?;
        let deadline = Instant::now() + timeout;
        let registry =
            RegistryProcess::start(launcher, REGISTRY_BINARY, &pg.url(), config, deadline)?;
        Ok(Self { registry, pg })
    }
}
