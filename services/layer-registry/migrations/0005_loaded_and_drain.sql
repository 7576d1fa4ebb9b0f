-- What each node's heartbeats report loaded (so an operator can tell an assignment has taken
-- effect), the layers it held when a drain began (what the drain must hand over), and the
-- role it registered as preferring.
ALTER TABLE nodes
    ADD COLUMN loaded_start INTEGER,
    ADD COLUMN loaded_end INTEGER,
    ADD COLUMN loaded_architecture_version BIGINT,
    ADD COLUMN drain_start INTEGER,
    ADD COLUMN drain_end INTEGER,
    ADD COLUMN preferred_role SMALLINT NOT NULL DEFAULT 0;
