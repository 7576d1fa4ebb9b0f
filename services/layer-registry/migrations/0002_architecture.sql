-- The architecture the swarm trains and serves: one row, written only under the publish
-- advisory lock (together with the assignment), so every registry replica agrees on it.
CREATE TABLE architecture (
    singleton            BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (singleton),
    -- 1 at genesis, +1 per change (growth, or a new fixed shape).
    version              BIGINT NOT NULL CHECK (version > 0),
    -- Kept readable for operators; the encoded form below is authoritative.
    num_layers           INTEGER NOT NULL CHECK (num_layers > 0),
    hidden_size          INTEGER NOT NULL CHECK (hidden_size > 0),
    -- neuroshard.common.v1.Architecture: shape, version and growth history.
    encoded              BYTEA NOT NULL,
    -- Auto mode: since when live capacity has supported a deeper model without interruption
    -- (NULL: it does not). Growth happens once this is older than the settle time.
    growth_pending_since TIMESTAMPTZ,
    updated_at           TIMESTAMPTZ NOT NULL DEFAULT now()
);
