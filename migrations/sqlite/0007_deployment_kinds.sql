-- The deployments read model says which deployments were dry runs and
-- which replayed another, so lists tell them apart from real deployments.
-- Rows folded before this migration read 0 and null until
-- `slipway projections rebuild` folds them again from the log.
ALTER TABLE deployments ADD COLUMN dry_run INTEGER NOT NULL DEFAULT 0;
ALTER TABLE deployments ADD COLUMN replay_of TEXT;
