-- Access control and audit (spec section 13): disabled users, scoped tokens and who
-- made a token, the visibility a version was written under, and the audit log.
-- Additive: an older daemon still running ignores the new columns (its inserts take
-- the defaults) and never touches audit_log.

ALTER TABLE users ADD COLUMN disabled boolean NOT NULL DEFAULT false;

-- scopes: NULL = unscoped, else [{"names": [glob, ...], "actions": [...]}, ...].
-- created_by: the user who made the token. Only a token its owner made reads the
-- owner's private secrets. Tokens from before this migration are taken as made by
-- their owner (nothing recorded who made them).
ALTER TABLE tokens ADD COLUMN scopes jsonb;
ALTER TABLE tokens ADD COLUMN created_by uuid REFERENCES users (id) ON DELETE SET NULL;
UPDATE tokens SET created_by = user_id;

-- A version written while its secret was private stays owner-only after the secret is
-- made shared: each event records the private flag it was written under. Older rows
-- keep NULL and count as the secret is now. (Migration 0006 adds the same column for
-- the change feed; IF NOT EXISTS lets either come first.)
ALTER TABLE events ADD COLUMN IF NOT EXISTS private boolean;

-- Who sees a secret (or one of its events): not private, or private and the caller is
-- its owner through a token the owner made; and for a scoped token, a name matching
-- one of the LIKE patterns of the scopes granting the action (NULL: unscoped). The one
-- rule for lists, bulk reads, by-name, the change feed (see access.py). A SQL function
-- the planner inlines, so a query filtering by it keeps using its indexes.
CREATE FUNCTION secretmirror_sees(
    is_private boolean, owner_id uuid, secret_name text,
    caller uuid, own_token boolean, patterns text[]
) RETURNS boolean LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT (NOT is_private OR (owner_id = caller AND own_token))
             AND (patterns IS NULL OR secret_name LIKE ANY (patterns)) $$;

-- One row per audited request, written before its response (group-committed).
-- Never a value, a token or a key.
CREATE TABLE audit_log (
    id           bigserial PRIMARY KEY,
    at           timestamptz NOT NULL,
    actor        text,
    token_id     uuid,
    action       text NOT NULL,
    secret_id    uuid,
    secret_name  text,
    outcome      text NOT NULL CHECK (outcome IN ('ok', 'denied', 'not_found', 'error')),
    status       integer NOT NULL,
    remote_addr  text,
    request_id   text
);
CREATE INDEX audit_log_at ON audit_log (at);
CREATE INDEX audit_log_actor ON audit_log (actor, id);
CREATE INDEX audit_log_secret ON audit_log (secret_id, id) WHERE secret_id IS NOT NULL;
