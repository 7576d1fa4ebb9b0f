//! Harness for tests that need real components: a throwaway PostgreSQL server (`initdb` +
//! `pg_ctl` on a loopback port, as the `postgres` user when run as root) and child processes
//! that are killed when dropped, so no test leaves anything running. [`browser`] runs pages in
//! headless Chromium (DOM after scripts, screenshots) for the dashboard's tests.

pub mod browser;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// Errors are strings: this is test support, and the message is what a failing test shows.
pub type Result<T> = std::result::Result<T, String>;

/// A free loopback port (bound and released; good enough for tests on one machine).
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(listener.local_addr().map_err(|e| e.to_string())?.port())
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
    let out = command.output().map_err(|e| format!("{what}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
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
            .map_err(|e| e.to_string())?;
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
        let port = free_port()?;
        let mut start = pg_command(&postgres_bin("pg_ctl"));
        start
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(dir.path().join("log"))
            .arg("-o")
            .arg(format!(
                "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off",
                dir.path().display()
            ))
            .args(["-w", "start"]);
        run(start, "pg_ctl start")?;
        Ok(Self { dir, port })
    }

    /// libpq connection string for the `postgres` database.
    pub fn url(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            self.port
        )
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

/// A child process killed (SIGKILL) and reaped on drop.
#[derive(Debug)]
pub struct ChildGuard(pub Child);

impl ChildGuard {
    pub fn spawn(mut command: Command) -> Result<Self> {
        command
            .spawn()
            .map(Self)
            .map_err(|e| format!("spawn {command:?}: {e}"))
    }

    /// SIGKILL now (as a crash would), and wait for it.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}
