//! PostgreSQL: round metadata and reports, the outer optimizer's state, nonces, receipts and
//! evidence (migrations in `migrations/`, applied at start). A round's close is one
//! transaction — its report, the outer state, its receipts, and the next round opening — so
//! a kill -9 at any moment leaves either the round open (its submissions lost, the weights of
//! the round before intact) or closed and published.

use std::collections::BTreeMap;

use neuroshard_aggregation::outer::OuterState;
use neuroshard_aggregation::round::Named;
use neuroshard_common::{Error, Result};
use neuroshard_postgres::deadpool_postgres::Pool;
use neuroshard_postgres::{DatabaseTls, claim_nonce, db};
use neuroshard_proto::aggregator::v1::{RoundReport, RoundSummary};
use neuroshard_proto::common::v1::SignedEnvelope;
use prost::Message;

const MIGRATIONS: &[(i32, &str)] = &[(1, include_str!("../migrations/0001_rounds.sql"))];

/// Arbitrary fixed key for the migration lock.
const MIGRATION_LOCK: i64 = 0x6e73_0101;

/// A round as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRound {
    pub round: u64,
    pub open: bool,
    pub deadline_unix_ms: i64,
    pub inner_steps: u64,
    pub seed: u64,
    pub num_layers: u32,
    pub expected_pipelines: u32,
    pub weights_dir: Option<String>,
}

/// What closing a round writes.
#[derive(Debug, Clone)]
pub struct RoundClose<'a> {
    pub round: u64,
    pub weights_dir: &'a str,
    pub summary: RoundSummary,
    pub report: &'a RoundReport,
    pub momentum: &'a BTreeMap<String, OuterState>,
    pub reference: &'a Named,
    /// (node, span start, signed receipt)
    pub receipts: Vec<(String, u32, SignedEnvelope)>,
    pub evidence: Vec<(String, String, SignedEnvelope)>,
    pub next: StoredRound,
}

fn to_i64(value: u64, field: &str) -> Result<i64> {
    i64::try_from(value)
        .map_err(|_| Error::invalid_argument(format!("{field}: {value} exceeds 2^63 - 1")))
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn f32_values(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn stored_round(row: &neuroshard_postgres::tokio_postgres::Row) -> StoredRound {
    StoredRound {
        round: row.get::<_, i64>("round") as u64,
        open: row.get::<_, String>("state") == "open",
        deadline_unix_ms: row.get("deadline_unix_ms"),
        inner_steps: row.get::<_, i64>("inner_steps") as u64,
        seed: row.get::<_, i64>("seed") as u64,
        num_layers: row.get::<_, i32>("num_layers") as u32,
        expected_pipelines: row.get::<_, i32>("expected_pipelines") as u32,
        weights_dir: row.get("weights_dir"),
    }
}

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
    pub async fn connect(database_url: &str, tls: &DatabaseTls) -> Result<Self> {
        Ok(Self {
            pool: neuroshard_postgres::connect(database_url, tls, MIGRATION_LOCK, MIGRATIONS)
                .await?,
        })
    }

    /// The latest round, open or closed.
    pub async fn latest(&self) -> Result<Option<StoredRound>> {
        let client = self.pool.get().await.map_err(db)?;
        let row = client
            .query_opt("SELECT * FROM rounds ORDER BY round DESC LIMIT 1", &[])
            .await
            .map_err(db)?;
        Ok(row.as_ref().map(stored_round))
    }

    /// The latest closed round (whose weights are published).
    pub async fn published(&self) -> Result<Option<StoredRound>> {
        let client = self.pool.get().await.map_err(db)?;
        let row = client
            .query_opt(
                "SELECT * FROM rounds WHERE state = 'closed' ORDER BY round DESC LIMIT 1",
                &[],
            )
            .await
            .map_err(db)?;
        Ok(row.as_ref().map(stored_round))
    }

    /// Round 0 (the starting weights, closed) and round 1 open.
    pub async fn genesis(&self, weights_dir: &str, first: &StoredRound) -> Result<()> {
        let mut client = self.pool.get().await.map_err(db)?;
        let tx = client.transaction().await.map_err(db)?;
        tx.execute(
            "INSERT INTO rounds (round, state, deadline_unix_ms, inner_steps, seed, num_layers,
                                 expected_pipelines, weights_dir, closed_at, rule, accepted, flagged, bytes)
             VALUES (0, 'closed', 0, 0, 0, $1, 0, $2, now(), '', 0, 0, 0)",
            &[&(first.num_layers as i32), &weights_dir],
        )
        .await
        .map_err(db)?;
        insert_open(&tx, first).await?;
        tx.commit().await.map_err(db)
    }

    /// Closes the open round `round` without changing the weights (the aggregator restarted
    /// during it, and its submissions were lost), and opens `next`.
    pub async fn abandon(
        &self,
        round: u64,
        weights_dir: &str,
        report: &RoundReport,
        next: &StoredRound,
    ) -> Result<()> {
        let mut client = self.pool.get().await.map_err(db)?;
        let tx = client.transaction().await.map_err(db)?;
        tx.execute(
            "UPDATE rounds SET state = 'closed', weights_dir = $2, closed_at = now(), rule = $3,
                    accepted = 0, flagged = 0, bytes = 0, report = $4,
                    held_out = (SELECT held_out FROM rounds WHERE round = $1 - 1)
             WHERE round = $1 AND state = 'open'",
            &[
                &to_i64(round, "round")?,
                &weights_dir,
                &report.rule,
                &report.encode_to_vec(),
            ],
        )
        .await
        .map_err(db)?;
        insert_open(&tx, next).await?;
        tx.commit().await.map_err(db)
    }

    /// Closes a round and opens the next, in one transaction.
    pub async fn close(&self, close: &RoundClose<'_>) -> Result<()> {
        let mut client = self.pool.get().await.map_err(db)?;
        let tx = client.transaction().await.map_err(db)?;
        let round = to_i64(close.round, "round")?;
        let s = &close.summary;
        let updated = tx
            .execute(
                "UPDATE rounds SET state = 'closed', weights_dir = $2, held_out = $3, bytes = $4,
                        rule = $5, accepted = $6, flagged = $7, report = $8, closed_at = now()
                 WHERE round = $1 AND state = 'open'",
                &[
                    &round,
                    &close.weights_dir,
                    &s.held_out,
                    &to_i64(s.bytes, "bytes")?,
                    &s.rule,
                    &(s.accepted as i32),
                    &(s.flagged as i32),
                    &close.report.encode_to_vec(),
                ],
            )
            .await
            .map_err(db)?;
        if updated != 1 {
            return Err(Error::failed_precondition(format!(
                "round {round} is not open"
            )));
        }
        for (name, state) in close.momentum {
            let reference = close
                .reference
                .get(name)
                .map(|r| f32_bytes(r))
                .unwrap_or_default();
            tx.execute(
                "INSERT INTO outer_state (name, momentum, reference, round) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (name) DO UPDATE SET momentum = EXCLUDED.momentum,
                    reference = EXCLUDED.reference, round = EXCLUDED.round",
                &[name, &f32_bytes(&state.momentum), &reference, &round],
            )
            .await
            .map_err(db)?;
        }
        for (node, start, envelope) in &close.receipts {
            tx.execute(
                "INSERT INTO receipts (round, node_id, span_start, envelope) VALUES ($1, $2, $3, $4)",
                &[&round, node, &(*start as i32), &envelope.encode_to_vec()],
            )
            .await
            .map_err(db)?;
        }
        for (node, kind, envelope) in &close.evidence {
            tx.execute(
                "INSERT INTO evidence (round, node_id, kind, envelope) VALUES ($1, $2, $3, $4)",
                &[&round, node, kind, &envelope.encode_to_vec()],
            )
            .await
            .map_err(db)?;
        }
        insert_open(&tx, &close.next).await?;
        tx.commit().await.map_err(db)
    }

    /// The outer optimizer's momentum and last aggregate, per parameter.
    pub async fn outer_state(&self) -> Result<(BTreeMap<String, OuterState>, Named)> {
        let client = self.pool.get().await.map_err(db)?;
        let rows = client
            .query("SELECT name, momentum, reference FROM outer_state", &[])
            .await
            .map_err(db)?;
        let mut momentum = BTreeMap::new();
        let mut reference = Named::new();
        for row in rows {
            let name: String = row.get("name");
            let m: Vec<u8> = row.get("momentum");
            let r: Vec<u8> = row.get("reference");
            if !r.is_empty() {
                reference.insert(name.clone(), f32_values(&r));
            }
            momentum.insert(
                name,
                OuterState {
                    momentum: f32_values(&m),
                },
            );
        }
        Ok((momentum, reference))
    }

    /// Claims a signer's nonce (refused as a replay unless above the last).
    pub async fn claim_nonce(&self, signer_id: &str, nonce: u64) -> Result<()> {
        let mut client = self.pool.get().await.map_err(db)?;
        let tx = client.transaction().await.map_err(db)?;
        claim_nonce(&tx, signer_id, nonce).await?;
        tx.commit().await.map_err(db)
    }

    /// Keeps signed evidence of a refused submission.
    pub async fn record_evidence(
        &self,
        round: u64,
        node_id: &str,
        kind: &str,
        envelope: &SignedEnvelope,
    ) -> Result<()> {
        let client = self.pool.get().await.map_err(db)?;
        client
            .execute(
                "INSERT INTO evidence (round, node_id, kind, envelope) VALUES ($1, $2, $3, $4)",
                &[
                    &to_i64(round, "round")?,
                    &node_id,
                    &kind,
                    &envelope.encode_to_vec(),
                ],
            )
            .await
            .map_err(db)?;
        Ok(())
    }

    /// A closed round's report with its receipts and evidence (`0`: the latest closed).
    pub async fn report(&self, round: u64) -> Result<Option<RoundReport>> {
        let client = self.pool.get().await.map_err(db)?;
        let row = if round == 0 {
            client
                .query_opt(
                    "SELECT round, report FROM rounds WHERE state = 'closed' AND round > 0 ORDER BY round DESC LIMIT 1",
                    &[],
                )
                .await
        } else {
            client
                .query_opt(
                    "SELECT round, report FROM rounds WHERE state = 'closed' AND round = $1",
                    &[&to_i64(round, "round")?],
                )
                .await
        }
        .map_err(db)?;
        let Some(row) = row else { return Ok(None) };
        let number: i64 = row.get("round");
        let bytes: Option<Vec<u8>> = row.get("report");
        let mut report = match bytes {
            Some(b) => RoundReport::decode(b.as_slice())
                .map_err(|e| Error::internal(format!("stored report of round {number}: {e}")))?,
            None => RoundReport {
                round: number as u64,
                ..RoundReport::default()
            },
        };
        let decode = |b: Vec<u8>| {
            SignedEnvelope::decode(b.as_slice())
                .map_err(|e| Error::internal(format!("stored envelope: {e}")))
        };
        for row in client
            .query(
                "SELECT envelope FROM receipts WHERE round = $1 ORDER BY node_id, span_start",
                &[&number],
            )
            .await
            .map_err(db)?
        {
            report.receipts.push(decode(row.get("envelope"))?);
        }
        for row in client
            .query(
                "SELECT envelope FROM evidence WHERE round = $1 ORDER BY id",
                &[&number],
            )
            .await
            .map_err(db)?
        {
            report.evidence.push(decode(row.get("envelope"))?);
        }
        Ok(Some(report))
    }

    /// The latest `limit` closed rounds after round 0, oldest first.
    pub async fn summaries(&self, limit: u32) -> Result<Vec<RoundSummary>> {
        let client = self.pool.get().await.map_err(db)?;
        let rows = client
            .query(
                "SELECT round, held_out, bytes, rule, accepted, flagged FROM rounds
                 WHERE state = 'closed' AND round > 0 ORDER BY round DESC LIMIT $1",
                &[&i64::from(limit)],
            )
            .await
            .map_err(db)?;
        let mut out: Vec<RoundSummary> = rows
            .iter()
            .map(|row| RoundSummary {
                round: row.get::<_, i64>("round") as u64,
                held_out: row.get::<_, Option<f64>>("held_out").unwrap_or(f64::NAN),
                bytes: row.get::<_, Option<i64>>("bytes").unwrap_or(0) as u64,
                rule: row.get::<_, Option<String>>("rule").unwrap_or_default(),
                accepted: row.get::<_, Option<i32>>("accepted").unwrap_or(0) as u32,
                flagged: row.get::<_, Option<i32>>("flagged").unwrap_or(0) as u32,
            })
            .collect();
        out.reverse();
        Ok(out)
    }

    /// The weights directory of a closed round.
    pub async fn weights_dir(&self, round: u64) -> Result<Option<String>> {
        let client = self.pool.get().await.map_err(db)?;
        let row = client
            .query_opt(
                "SELECT weights_dir FROM rounds WHERE round = $1 AND state = 'closed'",
                &[&to_i64(round, "round")?],
            )
            .await
            .map_err(db)?;
        Ok(row.and_then(|r| r.get("weights_dir")))
    }
}

async fn insert_open(
    tx: &neuroshard_postgres::deadpool_postgres::Transaction<'_>,
    next: &StoredRound,
) -> Result<()> {
    tx.execute(
        "INSERT INTO rounds (round, state, deadline_unix_ms, inner_steps, seed, num_layers, expected_pipelines)
         VALUES ($1, 'open', $2, $3, $4, $5, $6)",
        &[
            &to_i64(next.round, "round")?,
            &next.deadline_unix_ms,
            &to_i64(next.inner_steps, "inner_steps")?,
            &to_i64(next.seed, "seed")?,
            &(next.num_layers as i32),
            &(next.expected_pipelines as i32),
        ],
    )
    .await
    .map_err(db)?;
    Ok(())
}
