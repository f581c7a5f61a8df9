-- Events that grant authority (API tokens: the `tokens` stream) are recorded
-- only by a login that may issue them. Every runtime login can act as
-- slipway_writer and so append to any stream; a worker host's login
-- (`slipway db migrate --grant-worker ROLE`) must not be able to mint itself
-- an admin token with a correctly hashed `TokenIssued`. The server's and an
-- operator's login (`--grant-to ROLE`) are token issuers, and so is the
-- owner that migrates.
--
-- The check is on session_user, the login, because runtime sessions
-- `SET ROLE slipway_writer` (current_user is then the writer role for all).
DO $$
BEGIN
    CREATE ROLE slipway_token_issuer NOLOGIN;
EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
END $$;

CREATE FUNCTION slipway_tokens_need_an_issuer() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT pg_has_role(session_user, 'slipway_token_issuer', 'MEMBER') THEN
        RAISE EXCEPTION 'the login % may not record % on the tokens stream: only a token issuer may (slipway db migrate --grant-to %)',
            session_user, NEW.type, session_user
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER events_tokens_need_an_issuer BEFORE INSERT ON events
    FOR EACH ROW WHEN (NEW.stream = 'tokens') EXECUTE FUNCTION slipway_tokens_need_an_issuer();
ALTER TABLE events ENABLE ALWAYS TRIGGER events_tokens_need_an_issuer;

DO $$
BEGIN
    EXECUTE format('GRANT slipway_token_issuer TO %I', current_user);
END $$;
