-- The change feed (GET /api/v1/events) and who may see each event.
--
-- An event now records the secret's name, owner and private flag as they were at that
-- version, so the feed can name a deleted secret and show an event only to those who
-- could see the secret then (a version written while private stays the owner's).
-- Older rows keep NULLs: the feed falls back to the live secret for them.
--
-- tx is the writing transaction. Sequence numbers are taken before commit, so a
-- transaction can commit seq 11 while seq 10 is still in flight; a reader that took 11
-- and moved on would never see 10. The feed therefore only returns events whose
-- transaction is older than every transaction still running (pg_snapshot_xmin), in
-- (tx, seq) order: nothing can appear later before a position already returned.
-- Existing rows keep NULL (no table rewrite), read as transaction 0.
--
-- IF NOT EXISTS: another change may add the same columns (the private flag of a version).
ALTER TABLE events ADD COLUMN IF NOT EXISTS name text;
ALTER TABLE events ADD COLUMN IF NOT EXISTS owner uuid;
ALTER TABLE events ADD COLUMN IF NOT EXISTS private boolean;
ALTER TABLE events ADD COLUMN IF NOT EXISTS tx xid8;
ALTER TABLE events ALTER COLUMN tx SET DEFAULT pg_current_xact_id();
CREATE INDEX events_feed ON events ((COALESCE(tx, '0'::xid8)), seq);

-- Who may see a secret (or one of its events): the one rule for lists, bulk reads, the
-- by-name route and the feed. A SQL function the planner inlines, so every query that
-- filters by it keeps using its indexes.
CREATE FUNCTION secretmirror_visible(is_private boolean, owner_id uuid, caller uuid)
RETURNS boolean LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT NOT is_private OR owner_id = caller $$;

-- A name prefix (the list, bulk reads) is a range of names in byte order; this index
-- serves it whatever the database's collation (a restart storm of 200 prefix reads over
-- 4,000 secrets: a scan each without it).
CREATE INDEX IF NOT EXISTS secrets_name_c ON secrets ((name COLLATE "C"), id);
