-- The ids of the commands each worker has in progress, beside the readable
-- `busy` list: the engine's heartbeat timeout for long steps looks a
-- dispatched command up here.
ALTER TABLE workers ADD COLUMN commands text NOT NULL DEFAULT '[]';
