//! PostgreSQL as every NeuroShard service that keeps state uses it: the `[database_tls]`
//! settings and a connection pool secured as they say ([`tls`]), migrations embedded in the
//! binary and applied at start under an advisory lock (so replicas can start together), and
//! replay protection for signed messages claimed in the same transaction as the change.

pub mod tls;

use std::path::PathBuf;

use deadpool_postgres::{Pool, Transaction};
use neuroshard_common::{Error, ErrorKind, Result};
use serde::{Deserialize, Serialize};

pub use deadpool_postgres;
pub use tls::pool;
pub use tokio_postgres;

/// How the link to PostgreSQL is secured, with libpq's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    /// Plaintext only.
    Disable,
    /// TLS when the server offers it, else plaintext; the server is not authenticated.
    Prefer,
    /// TLS or no connection; encrypted, but the server is not authenticated.
    Require,
    /// TLS with the server's certificate checked against `root_cert_file` and its name
    /// against the host in `database_url`: the only mode that stops an impostor.
    VerifyFull,
}

impl SslMode {
    pub fn name(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// The `[database_tls]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseTls {
    pub sslmode: SslMode,
    /// PEM file of the CA that signed the server's certificate (`verify-full` only).
    pub root_cert_file: Option<PathBuf>,
}

impl Default for DatabaseTls {
    fn default() -> Self {
        Self {
            sslmode: SslMode::Prefer,
            root_cert_file: None,
        }
    }
}

impl DatabaseTls {
    pub fn validate(&self) -> Result<()> {
        match (self.sslmode, &self.root_cert_file) {
            (SslMode::VerifyFull, None) => Err(Error::invalid_argument(
                "database_tls.root_cert_file is required with sslmode = \"verify-full\"",
            )),
            (SslMode::VerifyFull, Some(_)) | (_, None) => Ok(()),
            (mode, Some(_)) => Err(Error::invalid_argument(format!(
                "database_tls.root_cert_file is only used with sslmode = \"verify-full\" (sslmode is \"{}\", which does not check the server)",
                mode.name()
            ))),
        }
    }
}

/// A database failure as the services report it (the server may be back soon).
pub fn db(e: impl std::fmt::Display) -> Error {
    Error::new(ErrorKind::Unavailable, format!("database: {e}"))
}

/// Applies the `migrations` (ordered `(version, sql)`) not yet recorded in
/// `schema_migrations`, in one transaction under the advisory lock `lock`.
pub async fn migrate(pool: &Pool, lock: i64, migrations: &[(i32, &str)]) -> Result<()> {
    let mut client = pool.get().await.map_err(db)?;
    let tx = client.transaction().await.map_err(db)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&lock])
        .await
        .map_err(db)?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())")
        .await
        .map_err(db)?;
    for (version, sql) in migrations {
        let done = tx
            .query_opt(
                "SELECT 1 FROM schema_migrations WHERE version = $1",
                &[version],
            )
            .await
            .map_err(db)?;
        if done.is_none() {
            tx.batch_execute(sql).await.map_err(db)?;
            tx.execute(
                "INSERT INTO schema_migrations (version) VALUES ($1)",
                &[version],
            )
            .await
            .map_err(db)?;
        }
    }
    tx.commit().await.map_err(db)
}

/// A pool for `database_url` with its migrations applied; a failure names the TLS mode, the
/// usual cause when the server is reachable.
pub async fn connect(
    database_url: &str,
    tls: &DatabaseTls,
    lock: i64,
    migrations: &[(i32, &str)],
) -> Result<Pool> {
    let pool = pool(database_url, tls)?;
    migrate(&pool, lock, migrations).await.map_err(|e| Error {
        message: format!(
            "{} (database_tls.sslmode = {})",
            e.message,
            tls.sslmode.name()
        ),
        ..e
    })?;
    Ok(pool)
}

pub fn nonce_i64(nonce: u64) -> Result<i64> {
    i64::try_from(nonce)
        .map_err(|_| Error::invalid_argument(format!("nonce: {nonce} exceeds 2^63 - 1")))
}

/// Claims `nonce` for `signer_id` in table `signer_nonces (signer_id TEXT PRIMARY KEY,
/// last_nonce BIGINT)`: one statement that succeeds only when the nonce is above the last
/// accepted, so a replay is refused atomically even when two replicas receive it at once,
/// and a change refused later in the transaction leaves the nonce unclaimed.
pub async fn claim_nonce(tx: &Transaction<'_>, signer_id: &str, nonce: u64) -> Result<()> {
    let claimed = tx
        .execute(
            "INSERT INTO signer_nonces (signer_id, last_nonce) VALUES ($1, $2)
             ON CONFLICT (signer_id) DO UPDATE SET last_nonce = EXCLUDED.last_nonce
             WHERE signer_nonces.last_nonce < EXCLUDED.last_nonce",
            &[&signer_id, &nonce_i64(nonce)?],
        )
        .await
        .map_err(db)?;
    if claimed == 0 {
        return Err(replayed(nonce));
    }
    Ok(())
}

pub fn replayed(nonce: u64) -> Error {
    Error::failed_precondition(format!(
        "nonce: {nonce} is not greater than the last accepted nonce (replay?)"
    ))
}
