-- Fewer indexes for every append to update.
--
-- `position` no longer needs a primary key: its values come from an
-- identity column (GENERATED ALWAYS), and every reader finds events by
-- (tx, position) (`events_tx_position`: subscribers, replays, the relay's
-- order), by (stream, version) (stream reads, appends) or by id (duplicate
-- detection), all of which keep their indexes. Nothing reads events by
-- correlation_id, so its index only cost writes; add it back (CONCURRENTLY)
-- when a query needs it.
ALTER TABLE events DROP CONSTRAINT events_pkey;
DROP INDEX events_correlation;
