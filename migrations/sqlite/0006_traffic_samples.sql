-- Requests and errors each router saw per environment, per minute (see the
-- PostgreSQL migration of the same name): operational samples replaced in
-- place and pruned after two hours, outside the event log.
CREATE TABLE traffic_samples (
    router      TEXT    NOT NULL,
    project     TEXT    NOT NULL,
    environment TEXT    NOT NULL,
    minute      INTEGER NOT NULL,
    requests    INTEGER NOT NULL,
    errors      INTEGER NOT NULL,
    PRIMARY KEY (router, project, environment, minute)
);
CREATE INDEX traffic_samples_by_minute ON traffic_samples (minute);
