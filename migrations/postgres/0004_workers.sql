-- Worker processes and their heartbeats: who is alive and what each is
-- doing. Operational state, not history: rows are replaced in place, so it
-- lives outside the append-only event log.
CREATE TABLE workers (
    id         text PRIMARY KEY,
    host       text NOT NULL,
    steps      text NOT NULL,
    busy       text NOT NULL,
    started_at timestamptz NOT NULL,
    last_seen  timestamptz NOT NULL,
    stopped    boolean NOT NULL DEFAULT false
);
GRANT SELECT, INSERT, UPDATE ON workers TO slipway_writer;
