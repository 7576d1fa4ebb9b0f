-- Replay protection outlives membership: the highest nonce accepted from each signer (nodes
-- and observers alike) is kept here forever. It used to live in the node's row, so a
-- Deregister deleted it and a captured Register was accepted again inside the clock window.
CREATE TABLE signer_nonces (
    signer_id  TEXT PRIMARY KEY,
    last_nonce BIGINT NOT NULL
);
INSERT INTO signer_nonces (signer_id, last_nonce) SELECT node_id, last_nonce FROM nodes;
ALTER TABLE nodes DROP COLUMN last_nonce;

-- Throughput an observer (a gateway named in the registry's config) measured of a node: the
-- latest report per node. Kept across re-registrations, so restarting does not shed a
-- measurement; routing and placement use min(claim, observed).
CREATE TABLE observations (
    node_id           TEXT PRIMARY KEY,
    tokens_per_second DOUBLE PRECISION NOT NULL CHECK (tokens_per_second >= 0),
    samples           BIGINT NOT NULL CHECK (samples > 0),
    observer_id       TEXT NOT NULL,
    observed_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);
