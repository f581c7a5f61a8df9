-- Requests and errors each router saw per environment, per minute, for the
-- dashboard's traffic chart. Operational samples, not history (like the
-- workers' heartbeats): a router replaces its row for the current minute
-- as the minute goes on, and each write deletes rows past the retention
-- (two hours), so the table stays small and the event log gains nothing.
CREATE TABLE traffic_samples (
    router      text   NOT NULL,
    project     text   NOT NULL,
    environment text   NOT NULL,
    -- Whole minutes since the Unix epoch (UTC).
    minute      bigint NOT NULL,
    requests    bigint NOT NULL,
    errors      bigint NOT NULL,
    PRIMARY KEY (router, project, environment, minute)
);
CREATE INDEX traffic_samples_by_minute ON traffic_samples (minute);
-- Routers write (and prune) through the runtime role; the API reads.
GRANT SELECT, INSERT, UPDATE, DELETE ON traffic_samples TO slipway_writer;
