//! Running NeuroShard's services on one machine: the one multi-process harness, used by the
//! local swarm (`neuroshard up`), the cross-service tests (`tests/`) and the benchmarks.
//!
//! - this file: a throwaway PostgreSQL ([`PgServer`]: `initdb` + `pg_ctl` on a loopback port,
//!   as the `postgres` user when run as root), child processes that never outlive their owner
//!   ([`ChildGuard`]: SIGTERM with a grace period, then SIGKILL), free loopback ports, and
//!   plain HTTP/1.1 requests for readiness checks;
//! - [`service`]: starting a service binary with a generated config file (0600) and a log file
//!   in a state directory ([`Launcher`]), and waiting until it listens;
//! - [`configs`]: each service's config file as a TOML table, built in one place per service
//!   ([`RegistryToml`], [`WorkerToml`], [`GatewayToml`]);
//! - [`registry`]: PostgreSQL plus a layer-registry process on it ([`LocalRegistry`]), the
//!   base of every multi-process run;
//! - [`pki`]: a CA for one run and a certificate per process ([`LocalPki`]): the local
//!   swarm's gRPC links are mutual TLS unless plaintext is asked for;
//! - [`swarm`]: the whole local swarm ([`LocalSwarm`]): registry, shard workers in replicated
//!   pipelines loading a checkpoint, and the gateway, ready when every layer is served twice;
//! - [`supervisor`]: keeping those processes running ([`Supervisor`]): a failed one is
//!   started again after the back-off of [`backoff`] ([`RestartPolicy`]), and each restart is
//!   logged and counted.
//!
//! A library never depends on a deployable: the harness knows the services only as binaries
//! and the keys of their config files (the tests crate checks those against the services'
//! config types), and it never links libtorch (checkpoints are read with
//! `neuroshard_common::checkpoint_files`).

pub mod backoff;
pub mod configs;
pub mod pki;
pub mod registry;
pub mod service;
pub mod supervisor;
pub mod swarm;

pub use backoff::RestartPolicy;
pub use configs::{AggregatorToml, GatewayToml, LedgerToml, RegistryToml, WorkerToml};
pub use pki::LocalPki;
pub use registry::{LocalRegistry, RegistryProcess};
pub use service::{
    AGGREGATOR_BINARY, GATEWAY_BINARY, LEDGER_BINARY, Launcher, REGISTRY_BINARY, WORKER_BINARY,
    write_private,
};
pub use supervisor::{ProcessHandle, ProcessStatus, Supervisor, SupervisorEvent};
pub use swarm::{LocalSwarm, LocalWorker, SwarmOptions, SwarmTraining, has_weights, spans_loaded};

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// What went wrong, as a message naming the command or resource.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct LocalError(pub String);

impl From<String> for LocalError {
    fn from(message: String) -> Self {
        Self(message)
    }
}

pub type Result<T> = std::result::Result<T, LocalError>;

/// A free loopback port (bound and released; good enough for tests on one machine).
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| LocalError(e.to_string()))?;
    Ok(listener
        .local_addr()
        .map_err(|e| LocalError(e.to_string()))?
        .port())
}

fn postgres_bin(name: &str) -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin").join(name))
                .filter(|p| p.exists())
                .collect()
        })
        .unwrap_or_default();
    versions.sort();
    versions.pop().unwrap_or_else(|| PathBuf::from(name))
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

/// Runs `program` as the `postgres` user when we are root (PostgreSQL refuses to run as root).
fn pg_command(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn run(mut command: Command, what: &str) -> Result<()> {
    let out = command
        .output()
        .map_err(|e| LocalError(format!("{what}: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(LocalError(format!(
            "{what} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )))
    }
}

/// A PostgreSQL server in a temporary directory, stopped and deleted on drop.
#[derive(Debug)]
pub struct PgServer {
    dir: tempfile::TempDir,
    pub port: u16,
}

impl PgServer {
    pub fn start() -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("neuroshard-pg-")
            .tempdir()
            .map_err(|e| LocalError(e.to_string()))?;
        if is_root() {
            run(
                {
                    let mut c = Command::new("chown");
                    c.args(["-R", "postgres:postgres"]).arg(dir.path());
                    c
                },
                "chown",
            )?;
        }
        let data = dir.path().join("data");
        let mut initdb = pg_command(&postgres_bin("initdb"));
        initdb.arg("-D").arg(&data).args([
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
            "-E",
            "UTF8",
        ]);
        run(initdb, "initdb")?;
        let server = Self {
            dir,
            port: free_port()?,
        };
        server.start_again()?;
        Ok(server)
    }

    /// Starts the server on its data directory and port (again, after [`PgServer::kill`]).
    pub fn start_again(&self) -> Result<()> {
        let mut start = pg_command(&postgres_bin("pg_ctl"));
        start
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .arg("-l")
            .arg(self.dir.path().join("log"))
            .arg("-o")
            .arg(format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off",
                self.port,
                self.dir.path().display()
            ))
            .args(["-w", "start"]);
        run(start, "pg_ctl start")
    }

    /// Stops the server as a crash would (`pg_ctl stop -m immediate`: no checkpoint, clients
    /// cut off); its data stays for [`PgServer::start_again`].
    pub fn kill(&self) -> Result<()> {
        let mut stop = pg_command(&postgres_bin("pg_ctl"));
        stop.arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "-w", "stop"]);
        run(stop, "pg_ctl stop")
    }

    /// libpq connection string for the `postgres` database.
    pub fn url(&self) -> String {
        self.database_url("postgres")
    }

    /// libpq connection string for database `name`.
    pub fn database_url(&self, name: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname={name}",
            self.port
        )
    }

    /// Creates database `name` (each service keeps its own migrations); returns its URL.
    pub fn create_database(&self, name: &str) -> Result<String> {
        let mut create = pg_command(&postgres_bin("createdb"));
        create
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
            ])
            .arg(name);
        run(create, &format!("createdb {name}"))?;
        Ok(self.database_url(name))
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let mut stop = pg_command(&postgres_bin("pg_ctl"));
        stop.arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "stop"]);
        let _ = stop.stdout(Stdio::null()).stderr(Stdio::null()).status();
    }
}

/// A child process killed (SIGKILL) and reaped on drop; [`ChildGuard::terminate`] stops it
/// politely first.
#[derive(Debug)]
pub struct ChildGuard(pub Child);

impl ChildGuard {
    pub fn spawn(mut command: Command) -> Result<Self> {
        command
            .spawn()
            .map(Self)
            .map_err(|e| LocalError(format!("spawn {command:?}: {e}")))
    }

    /// SIGKILL now (as a crash would), and wait for it.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }

    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// SIGTERM, then up to `grace` for a clean exit, then SIGKILL. Returns whether it exited
    /// on its own.
    pub fn terminate(&mut self, grace: std::time::Duration) -> bool {
        if matches!(self.0.try_wait(), Ok(Some(_))) {
            return true;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = std::time::Instant::now() + grace;
        while std::time::Instant::now() < deadline {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        self.kill();
        false
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.0.try_wait(), Ok(None))
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An HTTP response read by [`http_get`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    pub body: String,
}

/// One plain HTTP/1.1 GET to a loopback port (readiness checks, status polls).
pub fn http_get(port: u16, path: &str, timeout: std::time::Duration) -> Result<HttpResponse> {
    http_request(port, "GET", path, &[], "", timeout)
}

/// One plain HTTP/1.1 request to a loopback port: no client library for requests this simple.
/// `Connection: close`, so the body is what follows the headers until EOF (de-chunked).
pub fn http_request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
    timeout: std::time::Duration,
) -> Result<HttpResponse> {
    use std::io::{Read, Write};
    let mut stream = open_request(port, method, path, headers, body, timeout)?;
    let _ = stream.flush();
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .map_err(|e| LocalError(format!("{method} {path}: {e}")))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| LocalError(format!("{method} {path}: malformed response")))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| LocalError(format!("{method} {path}: no status line")))?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok(HttpResponse { status, body })
}

/// Connects and sends one request; the caller reads the response from the stream (tests that
/// read a server-sent-event stream as it arrives use this directly).
pub fn open_request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
    timeout: std::time::Duration,
) -> Result<std::net::TcpStream> {
    use std::io::Write;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = std::net::TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| LocalError(format!("{method} {path} on port {port}: {e}")))?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|_| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| LocalError(e.to_string()))?;
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    // One write: a server may answer as soon as it has the request line.
    stream
        .write_all(request.as_bytes())
        .map_err(|e| LocalError(format!("{method} {path}: {e}")))?;
    Ok(stream)
}

/// Joins a chunked transfer-encoded body.
fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || after.len() < size {
            break;
        }
        out.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_reads_status_and_body_from_a_real_socket() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            use std::io::{Read, Write};
            for body in [
                "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nwait",
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
            ] {
                let (mut s, _) = listener.accept().unwrap();
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).unwrap();
                s.write_all(body.as_bytes()).unwrap();
            }
        });
        let t = std::time::Duration::from_secs(5);
        assert_eq!(
            http_get(port, "/readyz", t).unwrap(),
            HttpResponse {
                status: 503,
                body: "wait".into()
            }
        );
        assert_eq!(http_get(port, "/x", t).unwrap().body, "abcde");
        server.join().unwrap();
        assert!(http_get(port, "/gone", t).is_err());
    }
}
