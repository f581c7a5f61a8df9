-- Read models folded from the events (see the PostgreSQL migration of the
-- same name). Times are TEXT in one fixed format
-- (`%Y-%m-%dT%H:%M:%S.%6fZ`), so they compare as they sort.

CREATE TABLE projects (
    name           TEXT PRIMARY KEY,
    repository     TEXT NOT NULL,
    mirror_of      TEXT,
    default_branch TEXT NOT NULL,
    environments   TEXT NOT NULL,
    created_at     TEXT NOT NULL
);

CREATE TABLE environments (
    project       TEXT NOT NULL,
    environment   TEXT NOT NULL,
    serving       TEXT,
    serving_since TEXT,
    PRIMARY KEY (project, environment)
);

CREATE TABLE deployments (
    id            TEXT PRIMARY KEY,
    project       TEXT NOT NULL,
    environment   TEXT NOT NULL,
    status        TEXT NOT NULL,
    git_ref       TEXT NOT NULL,
    commit_id     TEXT,
    image         TEXT,
    actor         TEXT NOT NULL,
    requested_at  TEXT NOT NULL,
    finished_at   TEXT,
    failed_step   TEXT,
    failed_reason TEXT,
    rollback_of   TEXT,
    promoted_from TEXT
);
CREATE INDEX deployments_project_page ON deployments (project, requested_at DESC, id DESC);
CREATE INDEX deployments_environment_page ON deployments (project, environment, requested_at DESC, id DESC);
CREATE INDEX deployments_page ON deployments (requested_at DESC, id DESC);
