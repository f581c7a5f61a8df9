-- Slipway event store, PostgreSQL.
--
-- `events` is append-only (triggers that fire always, even with
-- session_replication_role = replica, plus a writer role with INSERT and
-- SELECT only) and tamper-evident (`hash` chains each event to the previous
-- event of its stream). `tx` is the writing transaction's id: subscribers
-- order by (tx, position) and read only below the oldest running
-- transaction, so an event whose transaction commits late is never skipped.

CREATE TABLE events (
    position       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tx             xid8 NOT NULL DEFAULT pg_current_xact_id(),
    stream         text NOT NULL,
    version        bigint NOT NULL CHECK (version >= 1),
    id             uuid NOT NULL UNIQUE,
    type           text NOT NULL,
    correlation_id uuid NOT NULL,
    body           text NOT NULL,
    prev_hash      text NOT NULL,
    hash           text NOT NULL,
    recorded_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    UNIQUE (stream, version)
);
CREATE INDEX events_tx_position ON events (tx, position);
CREATE INDEX events_correlation ON events (correlation_id);

-- Commands written in the same transaction as the event that caused them;
-- the relay publishes them in (tx, position) order.
CREATE TABLE outbox (
    position    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tx          xid8 NOT NULL DEFAULT pg_current_xact_id(),
    message_id  uuid NOT NULL UNIQUE,
    queue       text NOT NULL,
    body        text NOT NULL,
    traceparent text,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX outbox_tx_position ON outbox (tx, position);

-- One row per subscriber (projection, relay): where it has read up to.
CREATE TABLE checkpoints (
    consumer   text PRIMARY KEY,
    tx         xid8 NOT NULL,
    position   bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE FUNCTION slipway_events_are_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'slipway events are append-only: % on % is not allowed', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END $$;

CREATE TRIGGER events_no_update_delete BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION slipway_events_are_append_only();
CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION slipway_events_are_append_only();
ALTER TABLE events ENABLE ALWAYS TRIGGER events_no_update_delete;
ALTER TABLE events ENABLE ALWAYS TRIGGER events_no_truncate;

-- A wake-up hint for subscribers and the relay; polling stays the truth.
CREATE FUNCTION slipway_notify_append() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('slipway_append', TG_TABLE_NAME);
    RETURN NULL;
END $$;
CREATE TRIGGER events_notify AFTER INSERT ON events
    FOR EACH STATEMENT EXECUTE FUNCTION slipway_notify_append();
CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION slipway_notify_append();

-- The role the application runs as: it may add and read events, never change them.
DO $$
BEGIN
    CREATE ROLE slipway_writer NOLOGIN;
EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
END $$;
DO $$
BEGIN
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO slipway_writer', current_schema());
END $$;
GRANT SELECT, INSERT ON events TO slipway_writer;
GRANT SELECT, INSERT, DELETE ON outbox TO slipway_writer;
GRANT SELECT, INSERT, UPDATE ON checkpoints TO slipway_writer;
