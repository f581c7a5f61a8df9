-- The ids of the commands each worker has in progress (see the PostgreSQL
-- migration of the same name).
ALTER TABLE workers ADD COLUMN commands TEXT NOT NULL DEFAULT '[]';
