//! The journal in PostgreSQL. A batch of operations (one, for `Submit`) is one database
//! transaction: load the stored outcomes of its keys and lock the rows its operations read —
//! escrows, holder accounts, nonces, daily credits, the market, each in sorted order, so
//! concurrent batches cannot deadlock — then step through the operations on that state
//! ([`crate::state::State::step`]: a retry gets its stored outcome, a refusal changes
//! nothing) and write what changed in a few set-based statements: the transactions, all
//! their entries in one (the database checks each transaction sums to zero and moves the
//! cached balances, which may not go below zero), and the bookkeeping rows. A conflict with
//! a concurrent batch (a serialization failure, a deadlock, a key or row inserted meanwhile)
//! is retried a bounded number of times.

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
use crate::ops::{EscrowRecord, Plan};
use crate::state::State;
use crate::verify::Request;

const MIGRATION_LOCK: i64 = 0x6e65_7572_6f4c_6467; // "neuroLdg"
const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("../migrations/0001_journal.sql")),
    (2, include_str!("../migrations/0002_escrow_expiry.sql")),
];
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

/// The server's own words for a database error (tokio-postgres's Display says only "db
/// error"); never the query's parameters.
fn described(e: &neuroshard_postgres::tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!("{} ({})", d.message(), d.code().code()),
        None => e.to_string(),
    }
}

fn pg(e: neuroshard_postgres::tokio_postgres::Error) -> Failure {
    let said = described(&e);
    match e.code() {
        Some(c)
            if *c == SqlState::T_R_SERIALIZATION_FAILURE
                || *c == SqlState::T_R_DEADLOCK_DETECTED =>
        {
            Failure::Retry(db(said))
        }
        // The key was taken by a concurrent attempt since we looked: look again.
        Some(c) if *c == SqlState::UNIQUE_VIOLATION => Failure::Retry(db(said)),
        Some(c) if *c == SqlState::CHECK_VIOLATION => Failure::Refused(Error::failed_precondition(
            "insufficient balance: a holder would go below zero",
        )),
        _ => Failure::Refused(db(said)),
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

    /// Applies one checked request at `now_ms`.
    pub async fn submit(&self, request: &Request, now_ms: i64) -> Result<Outcome, Error> {
        let mut results = self
            .submit_batch(std::slice::from_ref(&Ok(request.clone())), now_ms)
            .await?;
        results
            .pop()
            .unwrap_or_else(|| Err(Error::internal("a batch of one answered nothing")))
    }

    /// Applies each request (or carries its verification error) in one database
    /// transaction; each is decided on its own (a refusal does not undo the others). Results
    /// in order.
    pub async fn submit_batch(
        &self,
        requests: &[Result<Request, Error>],
        now_ms: i64,
    ) -> Result<Vec<Result<Outcome, Error>>, Error> {
        let mut last = None;
        for _ in 0..ATTEMPTS {
            let mut client = self.pool.get().await.map_err(db)?;
            let tx = client.transaction().await.map_err(db)?;
            match self.attempt(&tx, requests, now_ms).await {
                // Nothing applied (refusals, retries): the rows created to lock stay unmade.
                Ok((results, false)) => {
                    tx.rollback().await.map_err(db)?;
                    return Ok(results);
                }
                Ok((results, true)) => match tx.commit().await {
                    Ok(()) => return Ok(results),
                    Err(e) => match pg(e) {
                        Failure::Retry(e) => last = Some(e),
                        Failure::Refused(e) => return Err(e),
                    },
                },
                Err(Failure::Retry(e)) => last = Some(e),
                Err(Failure::Refused(e)) => return Err(e),
            }
        }
        Err(contention(last))
    }

    /// One attempt at a batch: load and lock what it reads, step through it, write; whether
    /// it applied anything.
    async fn attempt(
        &self,
        tx: &Transaction<'_>,
        requests: &[Result<Request, Error>],
        now_ms: i64,
    ) -> Result<(Vec<Result<Outcome, Error>>, bool), Failure> {
        // An acknowledged operation must survive a crash of the database server, whatever
        // its own synchronous_commit says.
        tx.batch_execute("SET LOCAL synchronous_commit TO on")
            .await
            .map_err(pg)?;
        let checked: Vec<&Request> = requests.iter().filter_map(|r| r.as_ref().ok()).collect();
        let mut state = self.load(tx, &checked, now_ms).await?;
        let before = state.clone();
        // One transaction id per request, reserved up front (refusals leave gaps).
        let ids: Vec<i64> = tx
            .query(
                "SELECT nextval(pg_get_serial_sequence('transactions', 'id')) FROM generate_series(1, $1::int8)",
                &[&(checked.len() as i64)],
            )
            .await
            .map_err(pg)?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let mut ids = ids.into_iter();
        let mut written = Written::default();
        let mut results = Vec::with_capacity(requests.len());
        for request in requests {
            let request = match request {
                Ok(r) => r,
                Err(e) => {
                    results.push(Err(e.clone()));
                    continue;
                }
            };
            let id = ids.next().unwrap_or(0);
            match state.step(
                request,
                u64::try_from(id).unwrap_or(0),
                now_ms,
                &self.economics,
            ) {
                Ok((outcome, Some(plan))) => {
                    written.add(id, request, &outcome, &plan, now_ms);
                    results.push(Ok(outcome));
                }
                Ok((outcome, None)) => results.push(Ok(outcome)),
                Err(e) => results.push(Err(e)),
            }
        }
        if written.ids.is_empty() {
            return Ok((results, false));
        }
        self.write(tx, &written, &before, &state).await?;
        Ok((results, true))
    }

    /// The part of the state `requests` read, rows locked in one global order (escrows,
    /// accounts, nonces, daily credits, market) so concurrent batches cannot deadlock.
    async fn load(
        &self,
        tx: &Transaction<'_>,
        requests: &[&Request],
        now_ms: i64,
    ) -> Result<State, Failure> {
        let mut state = State::default();
        let keys: Vec<&str> = requests.iter().map(|r| r.key.as_str()).collect();
        for row in tx
            .query(
                "SELECT key, payload_hash, outcome FROM transactions WHERE key = ANY($1)",
                &[&keys],
            )
            .await
            .map_err(pg)?
        {
            let hash: Vec<u8> = row.get(1);
            let hash: [u8; 32] = hash
                .try_into()
                .map_err(|_| Error::internal("stored payload hash is not 32 bytes"))?;
            state.applied.insert(
                row.get(0),
                (hash, decode_outcome(&row.get::<_, Vec<u8>>(2))?),
            );
        }
        let new: Vec<&&Request> = requests
            .iter()
            .filter(|r| !state.applied.contains_key(&r.key))
            .collect();
        let mut holders = BTreeSet::new();
        let (mut escrows, mut locks, mut signers, mut nodes) = (
            BTreeSet::new(),
            BTreeSet::new(),
            BTreeSet::new(),
            BTreeSet::new(),
        );
        let mut market = false;
        for request in &new {
            let needs = request.op.needs();
            holders.extend(needs.accounts.iter().map(Account::to_string));
            escrows.extend(needs.escrow);
            locks.extend(needs.stake_locks);
            nodes.extend(needs.node_day);
            market |= needs.market;
            if let Some((signer, _)) = &request.nonce {
                signers.insert(signer.clone());
            }
            holders.extend(request.op.credits().iter().map(Account::to_string));
        }
        let escrows: Vec<String> = escrows.into_iter().collect();
        if !escrows.is_empty() {
            for row in tx
                .query(
                    "SELECT request_id, gateway, payer, price_per_token, max_tokens, amount, settled,
                            opened_unix_ms
                     FROM escrows WHERE request_id = ANY($1) ORDER BY request_id FOR UPDATE",
                    &[&escrows],
                )
                .await
                .map_err(pg)?
            {
                let record = EscrowRecord {
                    request_id: row.get(0),
                    gateway: row.get(1),
                    payer: row.get(2),
                    price_per_token: Amount::from_nano(row.get(3)),
                    max_tokens: u64::try_from(row.get::<_, i64>(4)).unwrap_or(0),
                    amount: Amount::from_nano(row.get(5)),
                    settled: row.get(6),
                    opened_ms: row.get(7),
                };
                holders.insert(Account::Wallet(record.payer.clone()).to_string());
                state.escrows.insert(record.request_id.clone(), record);
            }
        }
        let holders: Vec<String> = holders.into_iter().collect();
        let signers: Vec<String> = signers.into_iter().collect();
        let locks: Vec<String> = locks.into_iter().collect();
        let nodes: Vec<String> = nodes.into_iter().collect();
        let day = Economics::day_of(now_ms);
        // In this order, one statement at a time: the order rows are locked in is what
        // keeps concurrent batches from deadlocking.
        if !holders.is_empty() {
            tx.execute(
                "INSERT INTO accounts (id) SELECT unnest($1::text[]) ORDER BY 1 ON CONFLICT (id) DO NOTHING",
                &[&holders],
            )
            .await
            .map_err(pg)?;
        }
        let accounts = async {
            if holders.is_empty() {
                return Ok(Vec::new());
            }
            tx.query(
                "SELECT id, balance FROM accounts WHERE id = ANY($1) ORDER BY id FOR UPDATE",
                &[&holders],
            )
            .await
        }
        .await
        .map_err(pg)?;
        let nonces = async {
            if signers.is_empty() {
                return Ok(Vec::new());
            }
            tx.query(
                "SELECT signer_id, last_nonce FROM signer_nonces WHERE signer_id = ANY($1)
                     ORDER BY signer_id FOR UPDATE",
                &[&signers],
            )
            .await
        }
        .await
        .map_err(pg)?;
        let unlocks = async {
            if locks.is_empty() {
                return Ok(Vec::new());
            }
            tx.query(
                "SELECT address, unlock_unix_ms FROM stake_locks WHERE address = ANY($1)",
                &[&locks],
            )
            .await
        }
        .await
        .map_err(pg)?;
        let credits = async {
            if nodes.is_empty() {
                return Ok(Vec::new());
            }
            tx.query(
                "SELECT node, credited FROM node_days WHERE day = $1 AND node = ANY($2)
                     ORDER BY node FOR UPDATE",
                &[&day, &nodes],
            )
            .await
        }
        .await
        .map_err(pg)?;
        let utilisation = async {
            if !market {
                return Ok(None);
            }
            tx.query_opt(
                "SELECT utilisation_ppm FROM market WHERE id = 1 FOR UPDATE",
                &[],
            )
            .await
        }
        .await
        .map_err(pg)?;
        for row in accounts {
            state
                .balances
                .insert(Account::parse(row.get(0))?, Amount::from_nano(row.get(1)));
        }
        for row in nonces {
            let last: i64 = row.get(1);
            state
                .nonces
                .insert(row.get(0), u64::try_from(last).unwrap_or(0));
        }
        for row in unlocks {
            state.stake_unlocks.insert(row.get(0), row.get(1));
        }
        for row in credits {
            state
                .paid
                .insert((row.get(0), day), Amount::from_nano(row.get(1)));
        }
        if let Some(row) = utilisation {
            state.utilisation_ppm = u64::try_from(row.get::<_, i64>(0)).unwrap_or(0);
        }
        Ok(state)
    }

    /// Writes what the batch applied: its transactions and their entries (one statement
    /// each), and the bookkeeping rows that changed from `before` to `after`.
    async fn write(
        &self,
        tx: &Transaction<'_>,
        written: &Written,
        before: &State,
        after: &State,
    ) -> Result<(), Failure> {
        let (addresses, unlocks): (Vec<&String>, Vec<i64>) = after
            .stake_unlocks
            .iter()
            .filter(|(a, u)| before.stake_unlocks.get(*a) != Some(u))
            .map(|(a, u)| (a, *u))
            .unzip();
        let opened: Vec<&EscrowRecord> = after
            .escrows
            .values()
            .filter(|e| !before.escrows.contains_key(&e.request_id))
            .collect();
        let opened_max_tokens = opened
            .iter()
            .map(|e| i64_of(e.max_tokens, "max_tokens"))
            .collect::<Result<Vec<_>, _>>()?;
        // Settled now: open before this batch, or opened and settled within it.
        let settled: Vec<&str> = after
            .escrows
            .values()
            .filter(|e| e.settled && before.escrows.get(&e.request_id).is_none_or(|b| !b.settled))
            .map(|e| e.request_id.as_str())
            .collect();
        let (nodes, (days, credits)): (Vec<&String>, (Vec<i64>, Vec<i64>)) = after
            .paid
            .iter()
            .filter(|(k, v)| before.paid.get(*k) != Some(v))
            .map(|((node, day), credit)| (node, (*day, credit.nano())))
            .unzip();
        let (signers, nonces): (Vec<&String>, Vec<i64>) = after
            .nonces
            .iter()
            .filter(|(s, n)| before.nonces.get(*s) != Some(n))
            .map(|(s, n)| Ok((s, i64_of(*n, "nonce")?)))
            .collect::<Result<Vec<_>, Error>>()?
            .into_iter()
            .unzip();
        let utilisation = (after.utilisation_ppm != before.utilisation_ppm)
            .then(|| i64_of(after.utilisation_ppm, "utilisation"))
            .transpose()?;
        let opened_at = written.times.first().copied().unwrap_or(0);
        // The transactions first (entries refer to them); the rest in one pipeline, as
        // every row it changes is locked already or new.
        tx.execute(
            "INSERT INTO transactions (id, key, kind, payload_hash, outcome, unix_ms)
             SELECT * FROM unnest($1::int8[], $2::text[], $3::text[], $4::bytea[], $5::bytea[], $6::int8[])",
            &[
                &written.ids,
                &written.keys,
                &written.kinds,
                &written.hashes,
                &written.outcomes,
                &written.times,
            ],
        )
        .await
        .map_err(pg)?;
        tokio::try_join!(
            async {
                if written.entry_txns.is_empty() {
                    return Ok(0);
                }
                tx.execute(
                    "INSERT INTO entries (txn, account, amount)
                     SELECT * FROM unnest($1::int8[], $2::text[], $3::int8[])",
                    &[&written.entry_txns, &written.entry_accounts, &written.entry_amounts],
                )
                .await
            },
            async {
                if addresses.is_empty() {
                    return Ok(0);
                }
                tx.execute(
                    "INSERT INTO stake_locks (address, unlock_unix_ms) SELECT * FROM unnest($1::text[], $2::int8[])
                     ON CONFLICT (address) DO UPDATE SET unlock_unix_ms = EXCLUDED.unlock_unix_ms",
                    &[&addresses, &unlocks],
                )
                .await
            },
            async {
                if opened.is_empty() {
                    return Ok(0);
                }
                tx.execute(
                    "INSERT INTO escrows (request_id, gateway, payer, price_per_token, max_tokens, amount, opened_unix_ms)
                     SELECT r, g, p, c, m, a, $7 FROM unnest($1::text[], $2::text[], $3::text[], $4::int8[], $5::int8[], $6::int8[]) AS t(r, g, p, c, m, a)",
                    &[
                        &opened.iter().map(|e| e.request_id.as_str()).collect::<Vec<_>>(),
                        &opened.iter().map(|e| e.gateway.as_str()).collect::<Vec<_>>(),
                        &opened.iter().map(|e| e.payer.as_str()).collect::<Vec<_>>(),
                        &opened.iter().map(|e| e.price_per_token.nano()).collect::<Vec<_>>(),
                        &opened_max_tokens,
                        &opened.iter().map(|e| e.amount.nano()).collect::<Vec<_>>(),
                        &opened_at,
                    ],
                )
                .await
            },
            async {
                if settled.is_empty() {
                    return Ok(0);
                }
                tx.execute(
                    "UPDATE escrows SET settled = true WHERE request_id = ANY($1)",
                    &[&settled],
                )
                .await
            },
            async {
                if nodes.is_empty() {
                    return Ok(0);
                }
                tx.execute(
                    "INSERT INTO node_days (node, day, credited) SELECT * FROM unnest($1::text[], $2::int8[], $3::int8[])
                     ON CONFLICT (node, day) DO UPDATE SET credited = EXCLUDED.credited",
                    &[&nodes, &days, &credits],
                )
                .await
            },
            async {
                if signers.is_empty() {
                    return Ok(0);
                }
                // Absolute values under the rows' locks; a signer new to the ledger races
                // only another batch inserting it (a unique violation: tried again).
                tx.execute(
                    "INSERT INTO signer_nonces (signer_id, last_nonce) SELECT * FROM unnest($1::text[], $2::int8[])
                     ON CONFLICT (signer_id) DO UPDATE SET last_nonce = EXCLUDED.last_nonce",
                    &[&signers, &nonces],
                )
                .await
            },
            async {
                let Some(u) = utilisation else {
                    return Ok(0);
                };
                tx.execute("UPDATE market SET utilisation_ppm = $1 WHERE id = 1", &[&u])
                    .await
            },
        )
        .map_err(pg)?;
        Ok(())
    }

    /// Up to `limit` escrows still open that were opened at or before `opened_by_ms`,
    /// oldest first.
    pub async fn open_escrows_before(
        &self,
        opened_by_ms: i64,
        limit: i64,
    ) -> Result<Vec<String>, Error> {
        let client = self.pool.get().await.map_err(db)?;
        let rows = client
            .query(
                "SELECT request_id FROM escrows WHERE NOT settled AND opened_unix_ms <= $1
                 ORDER BY opened_unix_ms LIMIT $2",
                &[&opened_by_ms, &limit],
            )
            .await
            .map_err(db)?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
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

    /// Supply: minted, burned, held; with `audit`, also the accounts whose cached balance is
    /// not the sum of their entries (a read of the whole journal).
    pub async fn supply(&self, audit: bool) -> Result<SupplyState, Error> {
        let client = self.pool.get().await.map_err(db)?;
        let row = client
            .query_one(
                "SELECT
                   (SELECT COALESCE(-sum(amount), 0)::int8 FROM entries WHERE account = 'mint'),
                   (SELECT COALESCE(sum(amount), 0)::int8 FROM entries WHERE account = 'burn'),
                   (SELECT COALESCE(sum(balance), 0)::int8 FROM accounts),
                   (SELECT count(*) FROM accounts),
                   (SELECT count(*) FROM transactions)",
                &[],
            )
            .await
            .map_err(db)?;
        let mismatched = if audit {
            let row = client
                .query_one(
                    "SELECT count(*) FROM accounts a
                       LEFT JOIN (SELECT account, sum(amount) AS s FROM entries GROUP BY account) e
                       ON e.account = a.id
                     WHERE a.balance <> COALESCE(e.s, 0)",
                    &[],
                )
                .await
                .map_err(db)?;
            u64::try_from(row.get::<_, i64>(0)).unwrap_or(0)
        } else {
            0
        };
        let (minted, burned): (i64, i64) = (row.get(0), row.get(1));
        Ok(SupplyState {
            minted,
            burned,
            supply: minted - burned,
            held: row.get(2),
            accounts: u64::try_from(row.get::<_, i64>(3)).unwrap_or(0),
            transactions: u64::try_from(row.get::<_, i64>(4)).unwrap_or(0),
            mismatched_accounts: mismatched,
            audited: audit,
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

/// The transactions a batch applied, as columns for `unnest`.
#[derive(Default)]
struct Written {
    ids: Vec<i64>,
    keys: Vec<String>,
    kinds: Vec<&'static str>,
    hashes: Vec<Vec<u8>>,
    outcomes: Vec<Vec<u8>>,
    times: Vec<i64>,
    entry_txns: Vec<i64>,
    entry_accounts: Vec<String>,
    entry_amounts: Vec<i64>,
}

impl Written {
    fn add(&mut self, id: i64, request: &Request, outcome: &Outcome, plan: &Plan, now_ms: i64) {
        self.ids.push(id);
        self.keys.push(request.key.clone());
        self.kinds.push(request.op.kind());
        self.hashes.push(request.payload_hash.to_vec());
        self.outcomes.push(outcome.encode_to_vec());
        self.times.push(now_ms);
        for (account, amount) in &plan.entries {
            self.entry_txns.push(id);
            self.entry_accounts.push(account.to_string());
            self.entry_amounts.push(amount.nano());
        }
    }
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
