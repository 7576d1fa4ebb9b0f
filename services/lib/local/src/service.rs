//! Starting a service binary the way the local swarm and the tests do: a generated config file
//! (0600: it may hold API keys) and a log file in a state directory, and waiting until it
//! listens.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{ChildGuard, LocalError, Result};

pub const REGISTRY_BINARY: &str = "layer-registry";
pub const WORKER_BINARY: &str = "shard-worker";
pub const GATEWAY_BINARY: &str = "swarm-gateway";
pub const AGGREGATOR_BINARY: &str = "diloco-aggregator";
pub const LEDGER_BINARY: &str = "ledger";

/// Where the service binaries are and where their configs and logs go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launcher {
    /// Holds `layer-registry`, `shard-worker` and `swarm-gateway`.
    pub bin_dir: PathBuf,
    /// Configs as `<name>.toml`, logs as `logs/<name>.log`.
    pub state_dir: PathBuf,
    /// Extra environment for every process (e.g. `OTEL_EXPORTER_OTLP_ENDPOINT`, `RUST_LOG`);
    /// they also inherit this process's environment.
    pub env: Vec<(String, String)>,
}

impl Launcher {
    pub fn new(bin_dir: PathBuf, state_dir: PathBuf) -> Self {
        Self {
            bin_dir,
            state_dir,
            env: Vec::new(),
        }
    }

    /// The log of the process started as `name`.
    pub fn log_path(&self, name: &str) -> PathBuf {
        self.state_dir.join("logs").join(format!("{name}.log"))
    }

    /// Starts `binary --config <state_dir>/<name>.toml` with `config` written there, stdout
    /// and stderr into its log (started afresh), this launcher's environment and then `env`.
    pub fn spawn(
        &self,
        binary: &str,
        name: &str,
        config: &toml::Table,
        env: &[(&str, &str)],
    ) -> Result<ChildGuard> {
        self.start(binary, name, config, env, false)
    }

    /// Like [`Launcher::spawn`], but the log is kept and added to: a process started again
    /// after a crash leaves the crash's traces for whoever looks.
    pub fn respawn(
        &self,
        binary: &str,
        name: &str,
        config: &toml::Table,
        env: &[(&str, &str)],
    ) -> Result<ChildGuard> {
        self.start(binary, name, config, env, true)
    }

    fn start(
        &self,
        binary: &str,
        name: &str,
        config: &toml::Table,
        env: &[(&str, &str)],
        append: bool,
    ) -> Result<ChildGuard> {
        let path = self.bin_dir.join(binary);
        if !path.exists() {
            return Err(LocalError(format!(
                "{} is missing: build the workspace binaries first (make build)",
                path.display()
            )));
        }
        let config_path = self.state_dir.join(format!("{name}.toml"));
        let text = toml::to_string(config)
            .map_err(|e| LocalError(format!("{}: {e}", config_path.display())))?;
        write_private(&config_path, &text)?;
        let log_path = self.log_path(name);
        if let Some(dir) = log_path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| LocalError(format!("creating {}: {e}", dir.display())))?;
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(&log_path)
            .map_err(|e| LocalError(format!("creating {}: {e}", log_path.display())))?;
        let log_err = log
            .try_clone()
            .map_err(|e| LocalError(format!("{}: {e}", log_path.display())))?;
        let mut command = Command::new(&path);
        command
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        for (k, v) in self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .chain(env.iter().copied())
        {
            command.env(k, v);
        }
        ChildGuard::spawn(command)
    }

    /// Waits until `process`, started as `name`, accepts connections on loopback `port`. If
    /// it exits first, fails at once with the cause from its log (a config it refused, a
    /// taken port) rather than at the deadline.
    pub fn wait_for_port(
        &self,
        process: &mut crate::ChildGuard,
        port: u16,
        deadline: Instant,
        name: &str,
    ) -> Result<()> {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        while Instant::now() < deadline {
            if let Ok(Some(status)) = process.0.try_wait() {
                return Err(exited_during_start_up(
                    self,
                    name,
                    &crate::backoff::describe(&status),
                ));
            }
            if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(LocalError(format!(
            "{name} did not start listening on port {port} in time (see {})",
            self.log_path(name).display()
        )))
    }
}

/// The cause a service gave for stopping, from its log: the `<binary>: error: …` line every
/// service prints last when it fails (see `neuroshard_runtime::service_main`), else the last
/// line, shortened. Services never log secrets, so the line can be shown as it is.
pub fn last_error(log: &Path) -> Option<String> {
    const MAX: usize = 400;
    let text = std::fs::read_to_string(log).ok()?;
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let line = lines
        .clone()
        .rev()
        .find(|l| !l.starts_with('{') && l.contains(": error: "))
        .or_else(|| lines.next_back())?;
    Some(match line.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line.to_string(),
    })
}

/// The error for a process that exited while the swarm was starting: how it exited, the cause
/// from its log, and where the log is.
pub fn exited_during_start_up(launcher: &Launcher, name: &str, exit: &str) -> LocalError {
    let log = launcher.log_path(name);
    let cause = last_error(&log).map_or_else(String::new, |c| format!(": {c}"));
    LocalError(format!(
        "{name} exited during start-up ({exit}){cause} (log: {})",
        log.display()
    ))
}

/// Writes a file only its owner can read (configs may hold keys).
pub fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| LocalError(format!("writing {}: {e}", path.display())))?;
    file.write_all(text.as_bytes())
        .map_err(|e| LocalError(format!("writing {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spawn_writes_a_private_config_and_logs_to_a_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        // A stand-in service: prints its arguments, as a real one logs its config path.
        std::fs::copy("/bin/echo", bin.join("echo")).unwrap();
        let launcher = Launcher::new(bin, dir.path().join("state"));
        std::fs::create_dir_all(&launcher.state_dir).unwrap();
        let mut table = toml::Table::new();
        table.insert("api_key".into(), "secret".into());
        let mut child = launcher.spawn("echo", "svc", &table, &[]).unwrap();
        let _ = child.0.wait();
        let config = launcher.state_dir.join("svc.toml");
        assert_eq!(
            std::fs::metadata(&config).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(
            std::fs::read_to_string(&config)
                .unwrap()
                .contains("api_key = \"secret\"")
        );
        let log = std::fs::read_to_string(launcher.log_path("svc")).unwrap();
        assert!(log.contains("--config"), "{log}");
        // Started again after a crash, it adds to its log; started afresh, it replaces it.
        let _ = launcher
            .respawn("echo", "svc", &table, &[])
            .unwrap()
            .0
            .wait();
        let log = std::fs::read_to_string(launcher.log_path("svc")).unwrap();
        assert_eq!(log.matches("--config").count(), 2, "{log}");
        let _ = launcher.spawn("echo", "svc", &table, &[]).unwrap().0.wait();
        let log = std::fs::read_to_string(launcher.log_path("svc")).unwrap();
        assert_eq!(log.matches("--config").count(), 1, "{log}");
        let missing = launcher.spawn("nope", "nope", &table, &[]).unwrap_err();
        assert!(missing.0.contains("is missing"), "{missing}");
        let t = Instant::now() + Duration::from_millis(300);
        let port = crate::free_port().unwrap();
        let mut sleeper = crate::ChildGuard::spawn({
            let mut c = std::process::Command::new("sleep");
            c.arg("5");
            c
        })
        .unwrap();
        let err = launcher
            .wait_for_port(&mut sleeper, port, t, "svc")
            .unwrap_err();
        assert!(
            err.0.contains("did not start listening") && err.0.contains("svc.log"),
            "{err}"
        );
        // A process that exits is reported at once, with how it exited.
        let mut quitter = launcher.spawn("echo", "svc", &table, &[]).unwrap();
        let started = Instant::now();
        let far = started + Duration::from_secs(30);
        let err = launcher
            .wait_for_port(&mut quitter, port, far, "svc")
            .unwrap_err();
        assert!(
            err.0.contains("svc exited during start-up (code 0)"),
            "{err}"
        );
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn the_cause_of_a_failed_start_comes_from_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let launcher = Launcher::new(dir.path().into(), dir.path().into());
        std::fs::create_dir_all(dir.path().join("logs")).unwrap();
        std::fs::write(
            launcher.log_path("swarm-gateway"),
            "{\"level\":\"ERROR\",\"error\":\"x\"}\nswarm-gateway: error: listen 127.0.0.1:8080: Address in use\n{\"level\":\"INFO\"}\n",
        )
        .unwrap();
        let err = exited_during_start_up(&launcher, "swarm-gateway", "code 1");
        assert!(
            err.0.starts_with(
                "swarm-gateway exited during start-up (code 1): swarm-gateway: error: listen 127.0.0.1:8080: Address in use (log: "
            ),
            "{err}"
        );
        std::fs::write(launcher.log_path("w"), format!("{}\n", "x".repeat(1000))).unwrap();
        assert_eq!(
            last_error(&launcher.log_path("w")).unwrap().chars().count(),
            401
        );
        assert_eq!(last_error(&launcher.log_path("missing")), None);
    }
}
