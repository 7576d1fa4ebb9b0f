//! PostgreSQL storage. Migrations run at start under an advisory lock, so several registry
//! replicas can start against one database. Replay protection is the table `signer_nonces`:
//! the highest nonce accepted from each signer, kept forever (a Deregister does not reset
//! it). Every signed change claims its nonce there with a single statement
//! (`... WHERE last_nonce < $nonce`) in the same transaction as the change, so a replay is
//! refused atomically even when two replicas receive it at once, and a refused change leaves
//! the nonce unclaimed. The architecture and the assignment change together under one
//! advisory lock, so replicas agree on both.

use deadpool_postgres::Pool;
use neuroshard_common::growth::ArchitectureState;
use neuroshard_common::{Error, ErrorKind, Result};
use neuroshard_proto::common::v1::Architecture;
use neuroshard_proto::registry::v1::NodeObservation;
use prost::Message;

use crate::stored::{LoadedSpan, StoredArchitecture, StoredNode};
use crate::uptime;
use neuroshard_postgres::{DatabaseTls, claim_nonce, db};

/// Ordered migrations, embedded in the binary.
const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("../migrations/0001_nodes.sql")),
    (2, include_str!("../migrations/0002_architecture.sql")),
    (
        3,
        include_str!("../migrations/0003_signer_nonces_and_observations.sql"),
    ),
    (4, include_str!("../migrations/0004_uptime.sql")),
    (5, include_str!("../migrations/0005_loaded_and_drain.sql")),
];

/// Arbitrary fixed keys for `pg_advisory_xact_lock`.
const MIGRATION_LOCK: i64 = 0x6e73_0001;
const PUBLISH_LOCK: i64 = 0x6e73_0002;

/// What a signed register carries into storage.
#[derive(Debug, Clone)]
pub struct Registration<'a> {
    pub node_id: &'a str,
    pub public_key: &'a [u8],
    pub nonce: u64,
    pub endpoint: &'a str,
    pub usable_memory_bytes: u64,
    pub device: i32,
    pub tokens_per_second: f64,
    pub payout_address: &'a str,
    pub preferred_role: i32,
}

/// What one publish computed from the nodes and the stored architecture.
#[derive(Debug, Clone)]
pub struct Publication {
    /// The assignment, encoded, version left 0.
    pub snapshot: Vec<u8>,
    /// A new architecture to store.
    pub architecture: Option<ArchitectureState>,
    /// Whether a growth is pending (starts or keeps the settle timer; false clears it).
    pub growth_pending: bool,
}

/// The result of a publish: the current assignment, and the architecture if it just changed.
#[derive(Debug, Clone)]
pub struct Published {
    pub version: u64,
    pub snapshot: Vec<u8>,
    pub new_architecture: Option<ArchitectureState>,
}

/// The registry's database.
#[derive(Clone)]
pub struct Store {
    pool: Pool,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

impl Store {
    /// Connects (with the TLS `tls` asks for) and applies pending migrations.
    pub async fn connect(database_url: &str, tls: &DatabaseTls) -> Result<Self> {
        Ok(Self {
            pool: neuroshard_postgres::connect(database_url, tls, MIGRATION_LOCK, MIGRATIONS)
                .await?,
        })
    }

    /// Inserts or updates a node, claiming the registration's nonce.
    pub async fn register(&self, r: &Registration<'_>) -> Result<()> {
        let memory = i64::try_from(r.usable_memory_bytes)
            .map_err(|_| Error::invalid_argument("capacity.usable_memory_bytes: too large"))?;
        let mut client = self.pool.get().await.map_err(db)?;
        let tx = client.transaction().await.map_err(db)?;
        claim_nonce(&tx, r.node_id, r.nonce).await?;
        tx.execute(
            "INSERT INTO nodes (node_id, public_key, endpoint, usable_memory_bytes, device, tokens_per_second,
                                payout_address, last_heartbeat, draining, preferred_role)
             VALUES ($1, $2, $3, $4, $5, $6, $7, now(), FALSE, $8)
             ON CONFLICT (node_id) DO UPDATE SET
                endpoint = EXCLUDED.endpoint, usable_memory_bytes = EXCLUDED.usable_memory_bytes,
                device = EXCLUDED.device, tokens_per_second = EXCLUDED.tokens_per_second,
                payout_address = EXCLUDED.payout_address, last_heartbeat = now(), draining = FALSE,
                drain_start = NULL, drain_end = NULL, preferred_role = EXCLUDED.preferred_role,
                registered_at = now()",
            &[
                &r.node_id,
                &r.public_key,
                &r.endpoint,
                &memory,
                &(r.device as i16),
                &r.tokens_per_second,
                &r.payout_address,
                &(r.preferred_role.clamp(0, i32::from(i16::MAX)) as i16),
            ],
        )
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)
    }

    /// The highest nonce accepted from `signer_id`, if any: a cheap look before work a replay
    /// should not cause (the claim itself stays atomic with the change).
    pub async fn last_nonce(&self, signer_id: &str) -> Result<Option<u64>> {
        let client = self.pool.get().await.map_err(db)?;
        let row = client
            .query_opt(
                "SELECT last_nonce FROM signer_nonces WHERE signer_id = $1",
                &[&signer_id],
            )
            .await
            .map_err(db)?;
        Ok(row.map(|r| r.get::<_, i64>(0).max(0) as u64))
    }

    /// Records a heartbeat (nonce-checked) and the live time it adds to the node's uptime
    /// epochs (`epoch_ms` long; a gap over `dead_after_ms` adds nothing), by the database's
    /// clock, in one transaction. An unknown node is a `NotFound` error.
    pub async fn heartbeat(
        &self,
        node_id: &str,
        nonce: u64,
        queue_depth: u32,
        loaded: Option<LoadedSpan>,
        epoch_ms: i64,
        dead_after_ms: i64,
    ) -> Result<()> {
        let depth = queue_depth.min(i32::MAX as u32) as i32;
        let mut client = self.pool.get().await.map_err(db)?;
        let tx = client.transaction().await.map_err(db)?;
        claim_nonce(&tx, node_id, nonce).await?;
        let row = tx
            .query_opt(
                "SELECT (EXTRACT(EPOCH FROM last_heartbeat) * 1000)::BIGINT,
                        (EXTRACT(EPOCH FROM now()) * 1000)::BIGINT
                 FROM nodes WHERE node_id = $1 FOR UPDATE",
                &[&node_id],
            )
            .await
            .map_err(db)?
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::NotFound,
                    format!("node {node_id} is not registered"),
                )
            })?;
        let (previous, now): (i64, i64) = (row.get(0), row.get(1));
        let (start, end, version) = match loaded {
            Some(l) => (
                Some(i32::try_from(l.start).unwrap_or(i32::MAX)),
                Some(i32::try_from(l.end).unwrap_or(i32::MAX)),
                Some(i64::try_from(l.architecture_version).unwrap_or(i64::MAX)),
            ),
            None => (None, None, None),
        };
        tx.execute(
            "UPDATE nodes SET last_heartbeat = now(), queue_depth = $2,
                    loaded_start = $3, loaded_end = $4, loaded_architecture_version = $5
             WHERE node_id = $1",
            &[&node_id, &depth, &start, &end, &version],
        )
        .await
        .map_err(db)?;
        let mut parts = uptime::accrue(previous, now, epoch_ms, dead_after_ms);
        let current = uptime::epoch_of(now, epoch_ms);
        if !parts.iter().any(|(start, _)| *start == current) {
            parts.push((current, 0));
        }
        // Prepared once per pooled connection: this runs on every heartbeat.
        let upsert = tx
            .prepare_cached(
                "INSERT INTO node_uptime (node_id, epoch_ms, epoch_start_unix_ms, uptime_ms, heartbeats)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (node_id, epoch_ms, epoch_start_unix_ms) DO UPDATE SET
                    uptime_ms = node_uptime.uptime_ms + EXCLUDED.uptime_ms,
                    heartbeats = node_uptime.heartbeats + EXCLUDED.heartbeats",
            )
            .await
            .map_err(db)?;
        for (start, ms) in parts {
            // The heartbeat counts in the epoch it arrived in.
            let beats = i64::from(start == current);
            tx.execute(&upsert, &[&node_id, &epoch_ms, &start, &ms, &beats])
                .await
                .map_err(db)?;
        }
        tx.commit().await.map_err(db)
    }

    /// `node_id`'s (uptime ms, heartbeats) in the `epoch_ms`-long epoch starting at `start`,
    /// if it sent a heartbeat in it; and the database's clock now (unix ms).
    pub async fn uptime(
        &self,
        node_id: &str,
        epoch_ms: i64,
        start: i64,
    ) -> Result<(Option<(u64, u64)>, i64)> {
        let client = self.pool.get().await.map_err(db)?;
        let now: i64 = client
            .query_one("SELECT (EXTRACT(EPOCH FROM now()) * 1000)::BIGINT", &[])
            .await
            .map_err(db)?
            .get(0);
        let row = client
            .query_opt(
                "SELECT uptime_ms, heartbeats FROM node_uptime
                 WHERE node_id = $1 AND epoch_ms = $2 AND epoch_start_unix_ms = $3",
                &[&node_id, &epoch_ms, &start],
            )
            .await
            .map_err(db)?;
        Ok((
            row.map(|r| {
                (
                    r.get::<_, i64>(0).max(0) as u64,
                    r.get::<_, i64>(1).max(0) as u64,
                )
            }),
            now,
        ))
    }

    /// Marks `node_id` draining (the nonce claimed for `signer_id`, the node or an operator):
    /// it keeps serving but its layers are assigned elsewhere. `held` is the span it holds
    /// now, what the drain must hand over; a second drain keeps the first one's.
    pub async fn drain(
        &self,
        node_id: &str,
        signer_id: &str,
        nonce: u64,
        held: Option<(u32, u32)>,
    ) -> Result<()> {
        let start = held.map(|(s, _)| i32::try_from(s).unwrap_or(i32::MAX));
        let end = held.map(|(_, e)| i32::try_from(e).unwrap_or(i32::MAX));
        self.touch(
            node_id,
            signer_id,
            nonce,
            "UPDATE nodes SET
                drain_start = CASE WHEN draining THEN drain_start ELSE $2 END,
                drain_end = CASE WHEN draining THEN drain_end ELSE $3 END,
                draining = TRUE
             WHERE node_id = $1",
            &[&node_id, &start, &end],
        )
        .await
    }

    /// Removes a node. Its nonce stays claimed, so its old messages stay refused.
    pub async fn deregister(&self, node_id: &str, nonce: u64) -> Result<()> {
        self.touch(
            node_id,
            node_id,
            nonce,
            "DELETE FROM nodes WHERE node_id = $1",
            &[&node_id],
        )
        .await
    }

    /// Claims `nonce` for `signer_id` and runs `sql` (one statement on `node_id`'s row) in one
    /// transaction; a statement that touches no row is `NotFound` and claims nothing.
    async fn touch(
        &self,
        node_id: &str,
        signer_id: &str,
        nonce: u64,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<()> {
        let mut client = self.pool.get().await.map_err(db)?;
        let tx = client.transaction().await.map_err(db)?;
        claim_nonce(&tx, signer_id, nonce).await?;
        if tx.execute(sql, params).await.map_err(db)? == 0 {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!("node {node_id} is not registered"),
            ));
        }
        tx.commit().await.map_err(db)
    }

    /// Stores what observer `observer_id` measured (its report's nonce claimed in the same
    /// transaction); observations of nodes that are not registered are skipped. Returns how
    /// many were stored.
    pub async fn observe(
        &self,
        observer_id: &str,
        nonce: u64,
        observations: &[NodeObservation],
    ) -> Result<usize> {
        let mut client = self.pool.get().await.map_err(db)?;
        let tx = client.transaction().await.map_err(db)?;
        claim_nonce(&tx, observer_id, nonce).await?;
        let upsert = tx
            .prepare(
                "INSERT INTO observations (node_id, tokens_per_second, samples, observer_id, observed_at)
                 SELECT $1, $2, $3, $4, now() WHERE EXISTS (SELECT 1 FROM nodes WHERE node_id = $1)
                 ON CONFLICT (node_id) DO UPDATE SET
                    tokens_per_second = EXCLUDED.tokens_per_second, samples = EXCLUDED.samples,
                    observer_id = EXCLUDED.observer_id, observed_at = now()",
            )
            .await
            .map_err(db)?;
        let mut stored = 0;
        for o in observations {
            let samples = i64::from(o.samples);
            stored += tx
                .execute(
                    &upsert,
                    &[&o.node_id, &o.tokens_per_second, &samples, &observer_id],
                )
                .await
                .map_err(db)? as usize;
        }
        tx.commit().await.map_err(db)?;
        Ok(stored)
    }

    /// Every stored node.
    pub async fn nodes(&self) -> Result<Vec<StoredNode>> {
        let client = self.pool.get().await.map_err(db)?;
        let rows = client
            .query(
                "SELECT n.node_id, n.endpoint, n.usable_memory_bytes, n.device, n.tokens_per_second,
                        n.draining, n.queue_depth,
                        (EXTRACT(EPOCH FROM (now() - n.last_heartbeat)) * 1000)::BIGINT,
                        (EXTRACT(EPOCH FROM (now() - n.registered_at)) * 1000)::BIGINT,
                        o.tokens_per_second,
                        n.loaded_start, n.loaded_end, n.loaded_architecture_version,
                        n.drain_start, n.drain_end, n.preferred_role
                 FROM nodes n LEFT JOIN observations o ON o.node_id = n.node_id
                 ORDER BY n.node_id",
                &[],
            )
            .await
            .map_err(db)?;
        Ok(rows
            .iter()
            .map(|row| StoredNode {
                node_id: row.get(0),
                endpoint: row.get(1),
                usable_memory_bytes: row.get::<_, i64>(2).max(0) as u64,
                device: i32::from(row.get::<_, i16>(3)),
                tokens_per_second: row.get(4),
                draining: row.get(5),
                queue_depth: row.get::<_, i32>(6).max(0) as u32,
                heartbeat_age_ms: row.get::<_, i64>(7).max(0) as u64,
                registered_age_ms: row.get::<_, i64>(8).max(0) as u64,
                observed_tokens_per_second: row.get(9),
                loaded: match (
                    row.get::<_, Option<i32>>(10),
                    row.get::<_, Option<i32>>(11),
                    row.get::<_, Option<i64>>(12),
                ) {
                    (Some(start), Some(end), Some(version)) => Some(LoadedSpan {
                        start: start.max(0) as u32,
                        end: end.max(0) as u32,
                        architecture_version: version.max(0) as u64,
                    }),
                    _ => None,
                },
                drain_span: match (row.get::<_, Option<i32>>(13), row.get::<_, Option<i32>>(14)) {
                    (Some(start), Some(end)) => Some((start.max(0) as u32, end.max(0) as u32)),
                    _ => None,
                },
                preferred_role: i32::from(row.get::<_, i16>(15)),
            })
            .collect())
    }

    /// The published assignment (version, encoded snapshot), if any.
    pub async fn published(&self) -> Result<Option<(u64, Vec<u8>)>> {
        let client = self.pool.get().await.map_err(db)?;
        let row = client
            .query_opt("SELECT version, snapshot FROM assignment", &[])
            .await
            .map_err(db)?;
        Ok(row.map(|r| (r.get::<_, i64>(0).max(0) as u64, r.get(1))))
    }

    /// Under a lock shared by all replicas: reads the nodes, the architecture and the
    /// published assignment (encoded), lets `compute` decide the architecture and build the
    /// encoded assignment from them, stores a new architecture (or moves the growth settle
    /// timer), and publishes the assignment with a new version if it differs from the current
    /// one.
    pub async fn publish(
        &self,
        compute: impl FnOnce(
            &[StoredNode],
            Option<&StoredArchitecture>,
            Option<&[u8]>,
        ) -> Result<Publication>,
    ) -> Result<Published> {
        let mut client = self.pool.get().await.map_err(db)?;
        let tx = client.transaction().await.map_err(db)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&PUBLISH_LOCK])
            .await
            .map_err(db)?;
        let current = tx
            .query_opt("SELECT version, snapshot FROM assignment", &[])
            .await
            .map_err(db)?
            .map(|r| (r.get::<_, i64>(0), r.get::<_, Vec<u8>>(1)));
        let stored = stored_architecture(tx.query_opt(ARCHITECTURE_QUERY, &[]).await.map_err(db)?)?;
        // Read on another connection while this transaction holds the lock: node writes do not
        // take the lock, and read-committed sees every committed heartbeat.
        let nodes = self.nodes().await?;
        let publication = compute(
            &nodes,
            stored.as_ref(),
            current.as_ref().map(|(_, bytes)| bytes.as_slice()),
        )?;
        match (&publication.architecture, &stored) {
            (Some(state), _) => {
                let encoded = state.to_proto().encode_to_vec();
                let version = i64::try_from(state.version)
                    .map_err(|_| Error::internal("architecture version overflows"))?;
                let layers = i32::try_from(state.config.num_layers)
                    .map_err(|_| Error::internal("num_layers overflows"))?;
                let hidden = i32::try_from(state.config.hidden_size)
                    .map_err(|_| Error::internal("hidden_size overflows"))?;
                tx.execute(
                    "INSERT INTO architecture (version, num_layers, hidden_size, encoded)
                     VALUES ($1, $2, $3, $4)
                     ON CONFLICT (singleton) DO UPDATE SET
                        version = EXCLUDED.version, num_layers = EXCLUDED.num_layers,
                        hidden_size = EXCLUDED.hidden_size, encoded = EXCLUDED.encoded,
                        growth_pending_since = NULL, updated_at = now()",
                    &[&version, &layers, &hidden, &encoded],
                )
                .await
                .map_err(db)?;
            }
            (None, Some(stored))
                if publication.growth_pending != stored.growth_pending_for_ms.is_some() =>
            {
                let sql = if publication.growth_pending {
                    "UPDATE architecture SET growth_pending_since = now()"
                } else {
                    "UPDATE architecture SET growth_pending_since = NULL"
                };
                tx.execute(sql, &[]).await.map_err(db)?;
            }
            (None, _) => {}
        }
        let fresh = publication.snapshot;
        let (version, snapshot) = match current {
            Some((version, snapshot)) if snapshot == fresh => (version.max(0) as u64, snapshot),
            Some((version, _)) => {
                tx.execute(
                    "UPDATE assignment SET version = $1, snapshot = $2",
                    &[&(version + 1), &fresh],
                )
                .await
                .map_err(db)?;
                ((version + 1) as u64, fresh)
            }
            None => {
                tx.execute(
                    "INSERT INTO assignment (version, snapshot) VALUES (1, $1)",
                    &[&fresh],
                )
                .await
                .map_err(db)?;
                (1, fresh)
            }
        };
        tx.commit().await.map_err(db)?;
        Ok(Published {
            version,
            snapshot,
            new_architecture: publication.architecture,
        })
    }
}

/// The architecture row, with the growth settle timer's age by the database clock.
const ARCHITECTURE_QUERY: &str = "SELECT encoded,
        (EXTRACT(EPOCH FROM (now() - growth_pending_since)) * 1000)::BIGINT
    FROM architecture";

fn stored_architecture(row: Option<tokio_postgres::Row>) -> Result<Option<StoredArchitecture>> {
    let Some(row) = row else {
        return Ok(None);
    };
    let encoded: Vec<u8> = row.get(0);
    let proto = Architecture::decode(encoded.as_slice())
        .map_err(|e| Error::internal(format!("stored architecture is unreadable: {e}")))?;
    let state = ArchitectureState::from_proto(&proto)
        .map_err(|e| Error::internal(format!("stored architecture is inconsistent: {e}")))?;
    Ok(Some(StoredArchitecture {
        state,
        growth_pending_for_ms: row.get::<_, Option<i64>>(1).map(|ms| ms.max(0) as u64),
    }))
}
