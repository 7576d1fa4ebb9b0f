-- Nodes known to the registry. Liveness is derived from last_heartbeat at read time, so
-- every registry replica agrees without a background writer racing another.
CREATE TABLE nodes (
    node_id             TEXT PRIMARY KEY,
    public_key          BYTEA NOT NULL,
    endpoint            TEXT NOT NULL,
    usable_memory_bytes BIGINT NOT NULL CHECK (usable_memory_bytes > 0),
    device              SMALLINT NOT NULL,
    tokens_per_second   DOUBLE PRECISION NOT NULL CHECK (tokens_per_second >= 0),
    payout_address      TEXT NOT NULL DEFAULT '',
    draining            BOOLEAN NOT NULL DEFAULT FALSE,
    -- Highest nonce accepted from this signer: replay protection lives with the data.
    last_nonce          BIGINT NOT NULL,
    last_heartbeat      TIMESTAMPTZ NOT NULL,
    queue_depth         INTEGER NOT NULL DEFAULT 0,
    registered_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- The published assignment: one row, replaced under an advisory lock when it changes.
CREATE TABLE assignment (
    singleton BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (singleton),
    version   BIGINT NOT NULL,
    snapshot  BYTEA NOT NULL
);
