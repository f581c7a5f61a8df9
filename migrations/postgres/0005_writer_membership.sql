-- The login role that runs migrations may act as slipway_writer: after
-- migrating, the application's connections `SET ROLE slipway_writer`, which
-- may INSERT and SELECT events but never UPDATE, DELETE or TRUNCATE them.
DO $$
BEGIN
    EXECUTE format('GRANT slipway_writer TO %I', current_user);
EXCEPTION WHEN others THEN
    RAISE NOTICE 'could not grant slipway_writer to %: %', current_user, SQLERRM;
END $$;
