-- Rounds of the outer loop. Round 0 is the starting point (the seed or checkpoint); round r
-- closes by publishing weights (a safetensors checkpoint on the state volume, `weights_dir`).
-- At most one round is open; a kill -9 loses only the submissions of that one.
CREATE TABLE rounds (
    round               BIGINT PRIMARY KEY CHECK (round >= 0),
    state               TEXT NOT NULL CHECK (state IN ('open', 'closed')),
    opened_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    deadline_unix_ms    BIGINT NOT NULL,
    inner_steps         BIGINT NOT NULL,
    seed                BIGINT NOT NULL,
    num_layers          INTEGER NOT NULL,
    expected_pipelines  INTEGER NOT NULL,
    -- Set when closed: where its published weights are, and what it did.
    weights_dir         TEXT,
    held_out            DOUBLE PRECISION,
    bytes               BIGINT,
    rule                TEXT,
    accepted            INTEGER,
    flagged             INTEGER,
    report              BYTEA,
    closed_at           TIMESTAMPTZ
);
CREATE UNIQUE INDEX one_open_round ON rounds ((state)) WHERE state = 'open';

-- The outer optimizer, per parameter: Nesterov momentum and the last aggregated Δ (centered
-- clipping's reference), little-endian f32, as of the latest closed round.
CREATE TABLE outer_state (
    name      TEXT PRIMARY KEY,
    momentum  BYTEA NOT NULL,
    reference BYTEA NOT NULL,
    round     BIGINT NOT NULL
);

-- Replay protection for signed submissions: the highest nonce accepted per signer.
CREATE TABLE signer_nonces (
    signer_id  TEXT PRIMARY KEY,
    last_nonce BIGINT NOT NULL
);

-- Signed receipts (accepted work, paid by the ledger) and evidence (refused or flagged work).
CREATE TABLE receipts (
    round      BIGINT NOT NULL,
    node_id    TEXT NOT NULL,
    span_start INTEGER NOT NULL,
    envelope   BYTEA NOT NULL,
    PRIMARY KEY (round, node_id, span_start)
);
CREATE TABLE evidence (
    id          BIGSERIAL PRIMARY KEY,
    round       BIGINT NOT NULL,
    node_id     TEXT NOT NULL,
    kind        TEXT NOT NULL,
    envelope    BYTEA NOT NULL,
    recorded_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX evidence_by_round ON evidence (round);
