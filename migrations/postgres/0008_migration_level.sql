-- Runtime processes log in as a role with the writer grants only and never
-- migrate: they read which migrations the database has, to refuse to run
-- against a schema older (or newer) than their own code, with the command
-- that fixes it (`slipway db migrate`).
GRANT SELECT ON _sqlx_migrations TO slipway_writer;
