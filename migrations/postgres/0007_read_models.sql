-- Read models: tables folded from the events by one catch-up subscriber
-- (consumer `read-models` in `checkpoints`), which writes their rows and
-- its checkpoint in one transaction. They are disposable: `slipway
-- projections rebuild` empties them and folds the log again. Lists read
-- them so that a list costs the same however long the log grows.

CREATE TABLE projects (
    name           text PRIMARY KEY,
    repository     text NOT NULL,
    mirror_of      text,
    default_branch text NOT NULL,
    -- A JSON array of the environment names, sorted.
    environments   text NOT NULL,
    created_at     timestamptz NOT NULL
);

-- Each environment and the release serving it (the last real deployment
-- that succeeded there).
CREATE TABLE environments (
    project       text NOT NULL,
    environment   text NOT NULL,
    serving       uuid,
    serving_since timestamptz,
    PRIMARY KEY (project, environment)
);

-- One row per deployment; `status` is `Deployment::status_word` (running,
-- watching, rolling back, succeeded, failed).
CREATE TABLE deployments (
    id            uuid PRIMARY KEY,
    project       text NOT NULL,
    environment   text NOT NULL,
    status        text NOT NULL,
    git_ref       text NOT NULL,
    commit_id     text,
    image         text,
    actor         text NOT NULL,
    requested_at  timestamptz NOT NULL,
    finished_at   timestamptz,
    failed_step   text,
    failed_reason text,
    rollback_of   uuid,
    promoted_from uuid
);
-- Keyset pages, newest first: per project, per environment, overall.
CREATE INDEX deployments_project_page ON deployments (project, requested_at DESC, id DESC);
CREATE INDEX deployments_environment_page ON deployments (project, environment, requested_at DESC, id DESC);
CREATE INDEX deployments_page ON deployments (requested_at DESC, id DESC);

-- Unlike events, read-model rows change in place and go on a rebuild.
GRANT SELECT, INSERT, UPDATE, DELETE ON projects TO slipway_writer;
GRANT SELECT, INSERT, UPDATE, DELETE ON environments TO slipway_writer;
GRANT SELECT, INSERT, UPDATE, DELETE ON deployments TO slipway_writer;
