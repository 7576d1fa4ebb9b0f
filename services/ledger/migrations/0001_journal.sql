-- The NEURO journal. Amounts are integer nano-NEURO (10^-9). Every transaction's entries are
-- inserted by one statement and must sum to zero; entries and transactions are append-only;
-- holder balances are a cache of the entries, kept by trigger and never below zero.

CREATE TABLE transactions (
    id            BIGSERIAL PRIMARY KEY,
    -- The idempotency key (signer/nonce, training/node/round/span, escrow/id, …).
    key           TEXT NOT NULL UNIQUE,
    kind          TEXT NOT NULL,
    payload_hash  BYTEA NOT NULL,
    -- The encoded Outcome answered, and answered again to a retry.
    outcome       BYTEA NOT NULL,
    unix_ms       BIGINT NOT NULL
);

CREATE TABLE entries (
    txn      BIGINT NOT NULL REFERENCES transactions (id),
    account  TEXT NOT NULL,
    amount   BIGINT NOT NULL CHECK (amount <> 0),
    PRIMARY KEY (txn, account)
);
CREATE INDEX entries_by_account ON entries (account, txn);

-- Holders: wallet/…, stake/…, escrow/… (mint and burn are sums of their entries).
CREATE TABLE accounts (
    id       TEXT PRIMARY KEY CHECK (id NOT IN ('mint', 'burn')),
    balance  BIGINT NOT NULL DEFAULT 0 CHECK (balance >= 0)
);

CREATE FUNCTION ledger_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the ledger journal is append-only: % on % refused', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'integrity_constraint_violation';
END $$;

CREATE TRIGGER entries_append_only BEFORE UPDATE OR DELETE ON entries
    FOR EACH ROW EXECUTE FUNCTION ledger_append_only();
CREATE TRIGGER entries_no_truncate BEFORE TRUNCATE ON entries
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_append_only();
CREATE TRIGGER transactions_append_only BEFORE UPDATE OR DELETE ON transactions
    FOR EACH ROW EXECUTE FUNCTION ledger_append_only();
CREATE TRIGGER transactions_no_truncate BEFORE TRUNCATE ON transactions
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_append_only();

-- After each INSERT statement into entries: every transaction it wrote sums to zero and was
-- written whole by it, and the holders' cached balances move by their entries.
CREATE FUNCTION ledger_post_entries() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    bad BIGINT;
BEGIN
    SELECT txn INTO bad FROM new_entries GROUP BY txn HAVING sum(amount) <> 0 LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'transaction % does not sum to zero', bad
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    SELECT e.txn INTO bad FROM entries e JOIN (SELECT DISTINCT txn FROM new_entries) n USING (txn)
        GROUP BY e.txn HAVING count(*) <> (SELECT count(*) FROM new_entries x WHERE x.txn = e.txn)
        LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'transaction % was written by more than one statement', bad
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    -- Update, then insert the new: an upsert would check the insert's row (the bare delta,
    -- negative for a debit) against balance >= 0 before finding the conflict.
    UPDATE accounts a SET balance = a.balance + d.delta
        FROM (SELECT account, sum(amount) AS delta FROM new_entries
              WHERE account NOT IN ('mint', 'burn') GROUP BY account) d
        WHERE a.id = d.account;
    INSERT INTO accounts (id, balance)
        SELECT account, sum(amount) FROM new_entries n
        WHERE account NOT IN ('mint', 'burn')
          AND NOT EXISTS (SELECT 1 FROM accounts a WHERE a.id = n.account)
        GROUP BY account;
    RETURN NULL;
END $$;

CREATE TRIGGER entries_post AFTER INSERT ON entries
    REFERENCING NEW TABLE AS new_entries
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_post_entries();

-- Replay protection for wallet operations: the highest nonce accepted per signer.
CREATE TABLE signer_nonces (
    signer_id  TEXT PRIMARY KEY,
    last_nonce BIGINT NOT NULL
);

CREATE TABLE stake_locks (
    address        TEXT PRIMARY KEY,
    unlock_unix_ms BIGINT NOT NULL
);

CREATE TABLE escrows (
    request_id       TEXT PRIMARY KEY,
    gateway          TEXT NOT NULL,
    payer            TEXT NOT NULL,
    price_per_token  BIGINT NOT NULL CHECK (price_per_token >= 0),
    max_tokens       BIGINT NOT NULL CHECK (max_tokens > 0),
    amount           BIGINT NOT NULL CHECK (amount >= 0),
    settled          BOOLEAN NOT NULL DEFAULT false,
    opened_unix_ms   BIGINT NOT NULL
);

-- Training rewards credited per node per UTC day (the daily cap).
CREATE TABLE node_days (
    node      TEXT NOT NULL,
    day       BIGINT NOT NULL,
    credited  BIGINT NOT NULL CHECK (credited >= 0),
    PRIMARY KEY (node, day)
);

-- The inference market's smoothed utilisation.
CREATE TABLE market (
    id               INTEGER PRIMARY KEY CHECK (id = 1),
    utilisation_ppm  BIGINT NOT NULL CHECK (utilisation_ppm >= 0)
);
INSERT INTO market (id, utilisation_ppm) VALUES (1, 0);
