-- Live time per node and uptime epoch, accrued by heartbeats (see `uptime::accrue`) and
-- attested, signed, once the epoch is final. The epoch length is part of the key, so a
-- changed configuration never mixes epochs of two lengths.
CREATE TABLE node_uptime (
    node_id              TEXT NOT NULL,
    epoch_ms             BIGINT NOT NULL CHECK (epoch_ms > 0),
    epoch_start_unix_ms  BIGINT NOT NULL,
    uptime_ms            BIGINT NOT NULL CHECK (uptime_ms >= 0),
    heartbeats           BIGINT NOT NULL CHECK (heartbeats >= 0),
    PRIMARY KEY (node_id, epoch_ms, epoch_start_unix_ms)
);
