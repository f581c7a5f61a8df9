-- Worker processes and their heartbeats (operational state, replaced in
-- place, outside the append-only event log).
CREATE TABLE workers (
    id         TEXT PRIMARY KEY,
    host       TEXT NOT NULL,
    steps      TEXT NOT NULL,
    busy       TEXT NOT NULL,
    started_at TEXT NOT NULL,
    last_seen  TEXT NOT NULL,
    stopped    INTEGER NOT NULL DEFAULT 0
);
