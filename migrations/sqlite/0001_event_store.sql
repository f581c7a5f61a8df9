-- Slipway event store, SQLite (the embedded default). Same shape as the
-- PostgreSQL schema. SQLite has one writer at a time, so position order is
-- commit order and `tx` is always 0.

CREATE TABLE events (
    position       INTEGER PRIMARY KEY AUTOINCREMENT,
    tx             INTEGER NOT NULL DEFAULT 0,
    stream         TEXT NOT NULL,
    version        INTEGER NOT NULL CHECK (version >= 1),
    id             TEXT NOT NULL UNIQUE,
    type           TEXT NOT NULL,
    correlation_id TEXT NOT NULL,
    body           TEXT NOT NULL,
    prev_hash      TEXT NOT NULL,
    hash           TEXT NOT NULL,
    recorded_at    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f000Z', 'now')),
    UNIQUE (stream, version)
);
CREATE INDEX events_correlation ON events (correlation_id);

CREATE TABLE outbox (
    position    INTEGER PRIMARY KEY AUTOINCREMENT,
    tx          INTEGER NOT NULL DEFAULT 0,
    message_id  TEXT NOT NULL UNIQUE,
    queue       TEXT NOT NULL,
    body        TEXT NOT NULL,
    traceparent TEXT,
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f000Z', 'now'))
);

CREATE TABLE checkpoints (
    consumer   TEXT PRIMARY KEY,
    tx         INTEGER NOT NULL,
    position   INTEGER NOT NULL,
    updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f000Z', 'now'))
);

-- Append-only. A DELETE without WHERE fires these too (SQLite disables its
-- truncate optimisation when a table has a DELETE trigger).
CREATE TRIGGER events_no_update BEFORE UPDATE ON events
BEGIN
    SELECT RAISE(ABORT, 'slipway events are append-only: UPDATE on events is not allowed');
END;
CREATE TRIGGER events_no_delete BEFORE DELETE ON events
BEGIN
    SELECT RAISE(ABORT, 'slipway events are append-only: DELETE on events is not allowed');
END;
