-- One wake-up per transaction. The hint named the table it came from, so a
-- transaction that wrote events and outbox rows (or whose statement ran an
-- outbox insert of no rows: statement triggers fire for those too) sent two
-- notifications, and every listener woke twice. Nothing reads the payload;
-- with an empty one, PostgreSQL folds a transaction's notifications into one.
CREATE OR REPLACE FUNCTION slipway_notify_append() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('slipway_append', '');
    RETURN NULL;
END $$;
