//! The journal in PostgreSQL. Each operation is one database transaction: look up its key
//! (a retry gets the stored outcome), claim the wallet nonce, lock the rows the plan reads
//! (escrow first, then holder accounts in sorted order, so concurrent operations cannot
//! deadlock on each other), plan ([`crate::ops::plan`]), then write the transaction, its
//! entries in one statement (the database checks they sum to zero and moves the cached
//! balances, which may not go below zero) and the bookkeeping. A serialization failure or
//! deadlock is retried a bounded number of times; a batch applies each operation under its
//! own savepoint, so one refusal does not undo the others.

use std::collections::BTreeSet;

use neuroshard_common::{Error, ErrorKind};
use neuroshard_postgres::deadpool_postgres::{Pool, Transaction};
use neuroshard_postgres::tokio_postgres::error::SqlState;
use neuroshard_postgres::{DatabaseTls, db};
use neuroshard_proto::ledger::v1::{
    AccountState, Entry, HistoryItem, HistoryResponse, MarketState, Outcome, SupplyState,
};
use prost::Message;

use crate::account::Account;
use crate::amount::Amount;
use crate::economics::Economics;
use crate::journal::{check_new, outcome, replay};
use crate::ops::{EscrowRecord, Plan, Snapshot, plan};
use crate::verify::Request;

const MIGRATION_LOCK: i64 = 0x6e65_7572_6f4c_6467; // "neuroLdg"
const MIGRATIONS: &[(i32, &str)] = &[(1, include_str!("../migrations/0001_journal.sql"))];
/// Attempts of one operation (or batch) that hits a serialization failure or deadlock.
const ATTEMPTS: usize = 8;
/// Most history items in one page.
pub const MAX_PAGE: u32 = 100;

/// Why an attempt failed: a refusal (final), a conflict worth another attempt, or the
/// database.
enum Failure {
    Refused(Error),
    Retry(Error),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Refused(e)
    }
}

fn pg(e: neuroshard_postgres::tokio_postgres::Error) -> Failure {
    match e.code() {
        Some(c)
            if *c == SqlState::T_R_SERIALIZATION_FAILURE
                || *c == SqlState::T_R_DEADLOCK_DETECTED =>
        {
            Failure::Retry(db(e))
        }
        // The key was taken by a concurrent attempt since we looked: look again.
        Some(c) if *c == SqlState::UNIQUE_VIOLATION => Failure::Retry(db(e)),
        Some(c) if *c == SqlState::CHECK_VIOLATION => Failure::Refused(Error::failed_precondition(
            "insufficient balance: a holder would go below zero",
        )),
        _ => Failure::Refused(db(e)),
    }
}

fn i64_of(value: u64, field: &str) -> Result<i64, Error> {
    i64::try_from(value)
        .map_err(|_| Error::invalid_argument(format!("{field}: {value} is too large")))
}

#[derive(Clone)]
pub struct Store {
    pool: Pool,
    economics: Economics,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

impl Store {
    pub async fn connect(
        database_url: &str,
        tls: &DatabaseTls,
        economics: Economics,
    ) -> Result<Self, Error> {
        Ok(Self {
            pool: neuroshard_postgres::connect(database_url, tls, MIGRATION_LOCK, MIGRATIONS)
                .await?,
            economics,
        })
    }

    pub fn economics(&self) -> &Economics {
        &self.economics
    }

    /// Applies one checked request at `now_ms`.
    pub async fn submit(&self, request: &Request, now_ms: i64) -> Result<Outcome, Error> {
        let mut last = None;
        for _ in 0..ATTEMPTS {
            let mut client = self.pool.get().await.map_err(db)?;
            let tx = client.transaction().await.map_err(db)?;
            durable(&tx).await?;
            match self.apply(&tx, request, now_ms).await {
                Ok(result) => match tx.commit().await {
                    Ok(()) => return Ok(result),
                    Err(e) => match pg(e) {
                        Failure::Retry(e) => last = Some(e),
                        Failure::Refused(e) => return Err(e),
                    },
                },
                Err(Failure::Refused(e)) => return Err(e),
                Err(Failure::Retry(e)) => last = Some(e),
            }
        }
        Err(contention(last))
    }

    /// Applies each request (or carries its verification error) in one database
    /// transaction, each under its own savepoint; results in order.
    pub async fn submit_batch(
        &self,
        requests: &[Result<Request, Error>],
        now_ms: i64,
    ) -> Result<Vec<Result<Outcome, Error>>, Error> {
        let mut last = None;
        'attempt: for _ in 0..ATTEMPTS {
            let mut client = self.pool.get().await.map_err(db)?;
            let mut tx = client.transaction().await.map_err(db)?;
            durable(&tx).await?;
            let mut results = Vec::with_capacity(requests.len());
            for request in requests {
                let request = match request {
                    Ok(r) => r,
                    Err(e) => {
                        results.push(Err(e.clone()));
                        continue;
                    }
                };
                let sp = tx.savepoint("op").await.map_err(db)?;
                match self.apply(&sp, request, now_ms).await {
                    Ok(result) => {
                        sp.commit().await.map_err(db)?;
                        results.push(Ok(result));
                    }
                    Err(Failure::Refused(e)) => {
                        sp.rollback().await.map_err(db)?;
                        results.push(Err(e));
                    }
                    Err(Failure::Retry(e)) => {
                        last = Some(e);
                        continue 'attempt;
                    }
                }
            }
            match tx.commit().await {
                Ok(()) => return Ok(results),
                Err(e) => match pg(e) {
                    Failure::Retry(e) => last = Some(e),
                    Failure::Refused(e) => return Err(e),
                },
            }
        }
        Err(contention(last))
    }

    async fn apply(
        &self,
        tx: &Transaction<'_>,
        request: &Request,
        now_ms: i64,
    ) -> Result<Outcome, Failure> {
        if let Some(row) = tx
            .query_opt(
                "SELECT payload_hash, outcome FROM transactions WHERE key = $1",
                &[&request.key],
            )
            .await
            .map_err(pg)?
        {
            return Ok(replay(
                &row.get::<_, Vec<u8>>(0),
                &decode_outcome(&row.get::<_, Vec<u8>>(1))?,
                request,
            )?);
        }
        // The window here; the nonce is claimed atomically below (its statement is the check).
        check_new(request, None, now_ms)?;
        if let Some((signer, nonce)) = &request.nonce {
            neuroshard_postgres::claim_nonce(tx, signer, *nonce).await?;
        }
        let needs = request.op.needs();
        let mut snapshot = Snapshot::default();
        let mut holders: BTreeSet<String> = needs.accounts.iter().map(Account::to_string).collect();
        if let Some(id) = &needs.escrow {
            snapshot.escrow = tx
                .query_opt(
                    "SELECT gateway, payer, price_per_token, max_tokens, amount, settled
                     FROM escrows WHERE request_id = $1 FOR UPDATE",
                    &[id],
                )
                .await
                .map_err(pg)?
                .map(|row| EscrowRecord {
                    request_id: id.clone(),
                    gateway: row.get(0),
                    payer: row.get(1),
                    price_per_token: Amount::from_nano(row.get(2)),
                    max_tokens: u64::try_from(row.get::<_, i64>(3)).unwrap_or(0),
                    amount: Amount::from_nano(row.get(4)),
                    settled: row.get(5),
                });
            if let Some(record) = &snapshot.escrow {
                holders.insert(Account::Wallet(record.payer.clone()).to_string());
            }
        }
        if let crate::ops::Op::Settle {
            driver,
            processors,
            validator,
            ..
        } = &request.op
        {
            for node in std::iter::once(driver)
                .chain(processors)
                .chain(std::iter::once(validator))
            {
                holders.insert(Account::Wallet(node.clone()).to_string());
            }
        }
        let holders: Vec<String> = holders.into_iter().collect();
        tx.execute(
            "INSERT INTO accounts (id) SELECT unnest($1::text[]) ORDER BY 1 ON CONFLICT (id) DO NOTHING",
            &[&holders],
        )
        .await
        .map_err(pg)?;
        for row in tx
            .query(
                "SELECT id, balance FROM accounts WHERE id = ANY($1) ORDER BY id FOR UPDATE",
                &[&holders],
            )
            .await
            .map_err(pg)?
        {
            let account = Account::parse(row.get(0))?;
            snapshot
                .balances
                .insert(account, Amount::from_nano(row.get(1)));
        }
        if !needs.stake_locks.is_empty() {
            for row in tx
                .query(
                    "SELECT address, unlock_unix_ms FROM stake_locks WHERE address = ANY($1)",
                    &[&needs.stake_locks],
                )
                .await
                .map_err(pg)?
            {
                snapshot.stake_unlocks.insert(row.get(0), row.get(1));
            }
        }
        if let Some(node) = &needs.node_day {
            snapshot.paid_today = tx
                .query_opt(
                    "SELECT credited FROM node_days WHERE node = $1 AND day = $2 FOR UPDATE",
                    &[node, &Economics::day_of(now_ms)],
                )
                .await
                .map_err(pg)?
                .map(|row| Amount::from_nano(row.get(0)))
                .unwrap_or_default();
        }
        if needs.market {
            let row = tx
                .query_one(
                    "SELECT utilisation_ppm FROM market WHERE id = 1 FOR UPDATE",
                    &[],
                )
                .await
                .map_err(pg)?;
            snapshot.utilisation_ppm = u64::try_from(row.get::<_, i64>(0)).unwrap_or(0);
        }
        let plan = plan(&request.op, &snapshot, &self.economics, now_ms)?;
        let id: i64 = tx
            .query_one(
                "SELECT nextval(pg_get_serial_sequence('transactions', 'id'))",
                &[],
            )
            .await
            .map_err(pg)?
            .get(0);
        let result = outcome(u64::try_from(id).unwrap_or(0), request, &plan, now_ms);
        tx.execute(
            "INSERT INTO transactions (id, key, kind, payload_hash, outcome, unix_ms)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &id,
                &request.key,
                &request.op.kind(),
                &request.payload_hash.as_slice(),
                &result.encode_to_vec(),
                &now_ms,
            ],
        )
        .await
        .map_err(pg)?;
        self.write(tx, id, &plan, now_ms).await?;
        Ok(result)
    }

    async fn write(
        &self,
        tx: &Transaction<'_>,
        id: i64,
        plan: &Plan,
        now_ms: i64,
    ) -> Result<(), Failure> {
        if !plan.entries.is_empty() {
            let accounts: Vec<String> = plan.entries.iter().map(|(a, _)| a.to_string()).collect();
            let amounts: Vec<i64> = plan.entries.iter().map(|(_, a)| a.nano()).collect();
            tx.execute(
                "INSERT INTO entries (txn, account, amount)
                 SELECT $1, a, n FROM unnest($2::text[], $3::int8[]) AS t(a, n)",
                &[&id, &accounts, &amounts],
            )
            .await
            .map_err(pg)?;
        }
        if let Some((address, unlock)) = &plan.stake_unlock {
            tx.execute(
                "INSERT INTO stake_locks (address, unlock_unix_ms) VALUES ($1, $2)
                 ON CONFLICT (address) DO UPDATE SET unlock_unix_ms = EXCLUDED.unlock_unix_ms",
                &[address, unlock],
            )
            .await
            .map_err(pg)?;
        }
        if let Some(e) = &plan.escrow_opened {
            tx.execute(
                "INSERT INTO escrows (request_id, gateway, payer, price_per_token, max_tokens, amount, opened_unix_ms)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
                &[
                    &e.request_id,
                    &e.gateway,
                    &e.payer,
                    &e.price_per_token.nano(),
                    &i64_of(e.max_tokens, "max_tokens")?,
                    &e.amount.nano(),
                    &now_ms,
                ],
            )
            .await
            .map_err(pg)?;
        }
        if let Some(request_id) = &plan.escrow_settled {
            tx.execute(
                "UPDATE escrows SET settled = true WHERE request_id = $1",
                &[request_id],
            )
            .await
            .map_err(pg)?;
        }
        if let Some((node, day, credit)) = &plan.day_credit {
            tx.execute(
                "INSERT INTO node_days (node, day, credited) VALUES ($1, $2, $3)
                 ON CONFLICT (node, day) DO UPDATE SET credited = node_days.credited + EXCLUDED.credited",
                &[node, day, &credit.nano()],
            )
            .await
            .map_err(pg)?;
        }
        if let Some(u) = plan.utilisation_ppm {
            tx.execute(
                "UPDATE market SET utilisation_ppm = $1 WHERE id = 1",
                &[&i64_of(u, "utilisation")?],
            )
            .await
            .map_err(pg)?;
        }
        Ok(())
    }

    pub async fn account(&self, address: &str) -> Result<AccountState, Error> {
        let client = self.pool.get().await.map_err(db)?;
        let ids = vec![
            Account::Wallet(address.to_string()).to_string(),
            Account::Stake(address.to_string()).to_string(),
        ];
        let mut state = AccountState {
            address: address.to_string(),
            ..AccountState::default()
        };
        for row in client
            .query(
                "SELECT id, balance FROM accounts WHERE id = ANY($1)",
                &[&ids],
            )
            .await
            .map_err(db)?
        {
            let (id, balance): (String, i64) = (row.get(0), row.get(1));
            if id == ids[0] {
                state.balance = balance;
            } else {
                state.staked = balance;
            }
        }
        if state.staked > 0 {
            state.stake_unlock_unix_ms = client
                .query_opt(
                    "SELECT unlock_unix_ms FROM stake_locks WHERE address = $1",
                    &[&address],
                )
                .await
                .map_err(db)?
                .map_or(0, |row| row.get(0));
        }
        state.stake_multiplier_ppm = self
            .economics
            .stake_multiplier_ppm(Amount::from_nano(state.staked));
        Ok(state)
    }

    /// The transactions that touched `address`'s wallet or stake, newest first.
    pub async fn history(
        &self,
        address: &str,
        before: u64,
        limit: u32,
    ) -> Result<HistoryResponse, Error> {
        let client = self.pool.get().await.map_err(db)?;
        let ids = vec![
            Account::Wallet(address.to_string()).to_string(),
            Account::Stake(address.to_string()).to_string(),
        ];
        let limit = i64::from(limit.clamp(1, MAX_PAGE));
        let before = if before == 0 {
            i64::MAX
        } else {
            i64_of(before, "before")?
        };
        let txns: Vec<i64> = client
            .query(
                "SELECT DISTINCT txn FROM entries WHERE account = ANY($1) AND txn < $2
                 ORDER BY txn DESC LIMIT $3",
                &[&ids, &before, &(limit + 1)],
            )
            .await
            .map_err(db)?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let more = txns.len() as i64 > limit;
        let page: Vec<i64> = txns.into_iter().take(limit as usize).collect();
        let mut items: Vec<HistoryItem> = Vec::with_capacity(page.len());
        for row in client
            .query(
                "SELECT t.id, t.kind, t.unix_ms, e.account, e.amount
                 FROM transactions t JOIN entries e ON e.txn = t.id
                 WHERE t.id = ANY($1) AND e.account = ANY($2)
                 ORDER BY t.id DESC, e.account",
                &[&page, &ids],
            )
            .await
            .map_err(db)?
        {
            let id = u64::try_from(row.get::<_, i64>(0)).unwrap_or(0);
            if items.last().is_none_or(|i| i.transaction != id) {
                items.push(HistoryItem {
                    transaction: id,
                    kind: row.get(1),
                    unix_ms: row.get(2),
                    entries: Vec::new(),
                });
            }
            if let Some(item) = items.last_mut() {
                item.entries.push(Entry {
                    account: row.get(3),
                    amount: row.get(4),
                });
            }
        }
        Ok(HistoryResponse {
            next_before: if more {
                page.last().map_or(0, |t| u64::try_from(*t).unwrap_or(0))
            } else {
                0
            },
            items,
        })
    }

    /// Supply and the audit: minted, burned, held, and accounts whose cached balance is not
    /// the sum of their entries.
    pub async fn supply(&self) -> Result<SupplyState, Error> {
        let client = self.pool.get().await.map_err(db)?;
        let row = client
            .query_one(
                "SELECT
                   (SELECT COALESCE(-sum(amount), 0)::int8 FROM entries WHERE account = 'mint'),
                   (SELECT COALESCE(sum(amount), 0)::int8 FROM entries WHERE account = 'burn'),
                   (SELECT COALESCE(sum(balance), 0)::int8 FROM accounts),
                   (SELECT count(*) FROM accounts),
                   (SELECT count(*) FROM transactions),
                   (SELECT count(*) FROM accounts a
                      LEFT JOIN (SELECT account, sum(amount) AS s FROM entries GROUP BY account) e
                      ON e.account = a.id
                    WHERE a.balance <> COALESCE(e.s, 0))",
                &[],
            )
            .await
            .map_err(db)?;
        let (minted, burned): (i64, i64) = (row.get(0), row.get(1));
        Ok(SupplyState {
            minted,
            burned,
            supply: minted - burned,
            held: row.get(2),
            accounts: u64::try_from(row.get::<_, i64>(3)).unwrap_or(0),
            transactions: u64::try_from(row.get::<_, i64>(4)).unwrap_or(0),
            mismatched_accounts: u64::try_from(row.get::<_, i64>(5)).unwrap_or(0),
        })
    }

    /// A digest of everything the ledger holds — transactions, entries, balances, stake
    /// locks, escrows, nonces, daily credits and the market: equal digests, equal ledgers
    /// (how "a refusal changed nothing" is checked).
    pub async fn fingerprint(&self) -> Result<[u8; 32], Error> {
        use sha2::{Digest, Sha256};
        let client = self.pool.get().await.map_err(db)?;
        let mut digest = Sha256::new();
        for table in [
            "transactions",
            "entries",
            "accounts",
            "stake_locks",
            "escrows",
            "signer_nonces",
            "node_days",
            "market",
        ] {
            digest.update(table.as_bytes());
            for row in client
                .query(&format!("SELECT t::text FROM {table} t ORDER BY 1"), &[])
                .await
                .map_err(db)?
            {
                digest.update(row.get::<_, String>(0).as_bytes());
                digest.update([0u8]);
            }
        }
        Ok(digest.finalize().into())
    }

    pub async fn market(&self) -> Result<MarketState, Error> {
        let client = self.pool.get().await.map_err(db)?;
        let u: i64 = client
            .query_one("SELECT utilisation_ppm FROM market WHERE id = 1", &[])
            .await
            .map_err(db)?
            .get(0);
        let u = u64::try_from(u).unwrap_or(0);
        Ok(MarketState {
            base_price_per_token: self.economics.base_price_per_token,
            utilisation_ppm: u,
            price_per_token: self.economics.price_per_token(u)?.nano(),
        })
    }
}

/// An acknowledged operation must survive a crash of the database server, whatever its
/// own `synchronous_commit` says: the commit waits for its WAL to be written.
async fn durable(tx: &Transaction<'_>) -> Result<(), Error> {
    tx.batch_execute("SET LOCAL synchronous_commit TO on")
        .await
        .map_err(db)
}

fn decode_outcome(bytes: &[u8]) -> Result<Outcome, Error> {
    Outcome::decode(bytes).map_err(|e| Error::internal(format!("stored outcome: {e}")))
}

fn contention(last: Option<Error>) -> Error {
    Error::new(
        ErrorKind::Unavailable,
        format!(
            "the ledger is busy (conflicting updates {ATTEMPTS} times); try again: {}",
            last.map_or_else(String::new, |e| e.message)
        ),
    )
}
