-- The sweep that refunds escrows their gateway never settled reads the open ones oldest
-- first; settled escrows (nearly all of them) stay out of the index.
CREATE INDEX escrows_open_by_age ON escrows (opened_unix_ms) WHERE NOT settled;
