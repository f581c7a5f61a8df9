-- Wake-up hints after commit, sent by the store. A transaction that
-- notifies takes the notification queue's lock before it commits and holds
-- it until its commit is on disk, so with the triggers of 0001 and 0011
-- every append waited for the one before it to be flushed: four writers of
-- single events committed hardly faster than one (pgbench, single-row
-- inserts from 4 clients: about 4,400/s with the trigger against 5,700 to
-- 9,300/s without). The store now sends the hint itself once an append has
-- committed (`send_hints` in store/src/postgres.rs), from a connection of
-- its own, one notification for all the appends that committed while the
-- last one was on its way. It stays a hint: readers poll as well.
DROP TRIGGER events_notify ON events;
DROP TRIGGER outbox_notify ON outbox;
DROP FUNCTION slipway_notify_append();
