-- Every SQL statement secretmirror runs, as named blocks parsed once at import
-- (see secretmirror/queries.py). Parameters are $n, or named ($secret_id) in a block
-- with many of them; no value is ever formatted in.

-- migrations_table --
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)

-- migrations_applied --
SELECT version, name FROM schema_migrations ORDER BY version

-- migrations_record --
INSERT INTO schema_migrations (version, name) VALUES ($1, $2)

-- migrations_lock --
SELECT pg_advisory_xact_lock(7262846001)

-- retention_lock --
-- One purging process at a time: the others skip the round instead of repeating the scan.
SELECT pg_try_advisory_xact_lock(7262846002)

-- migrations_table_exists --
SELECT to_regclass('schema_migrations') IS NOT NULL

-- deployment_get --
SELECT id::text, hash_key FROM deployment

-- deployment_init --
INSERT INTO deployment (id, hash_key) VALUES ($1, $2) ON CONFLICT DO NOTHING

-- deployment_set_hash_key --
UPDATE deployment SET hash_key = $1

-- user_upsert_admin --
INSERT INTO users (id, name, role) VALUES ($1, 'admin', 'admin')
ON CONFLICT (name) DO UPDATE SET role = 'admin'
RETURNING id

-- token_upsert_bootstrap --
-- The bootstrap token row holds the hash of the configured admin token. One that was
-- revoked stays revoked: a restart must not undo a revocation.
INSERT INTO tokens (id, user_id, name, hash, created_by) VALUES ($1, $2, 'bootstrap', $3, $2)
ON CONFLICT (hash) DO NOTHING

-- token_revoked_at --
SELECT revoked FROM tokens WHERE hash = $1

-- token_revoke_old_bootstrap --
UPDATE tokens SET revoked = now()
WHERE user_id = $1 AND name = 'bootstrap' AND hash <> $2 AND revoked IS NULL

-- authenticate --
-- A disabled user's tokens fail like unknown ones (a deleted user's are gone with it).
SELECT u.id::text AS user_id, u.name, u.role, t.expires, t.id::text AS token_id, t.scopes,
       t.created_by IS NOT DISTINCT FROM t.user_id AS own_token, c.name AS creator
FROM tokens t JOIN users u ON u.id = t.user_id
LEFT JOIN users c ON c.id = t.created_by
WHERE t.hash = $1 AND t.revoked IS NULL AND (t.expires IS NULL OR t.expires > now())
  AND NOT u.disabled

-- user_create --
INSERT INTO users (id, name, role) VALUES ($1, $2, $3)
RETURNING id::text, name, role, created, disabled

-- user_list --
SELECT id::text, name, role, created, disabled FROM users ORDER BY name

-- user_by_name --
SELECT id::text, name, role, created, disabled FROM users WHERE name = $1

-- user_get --
SELECT id::text, name, role, created, disabled FROM users WHERE id = $1

-- user_update --
-- NULL leaves a field as it is.
UPDATE users SET role = COALESCE($2, role), disabled = COALESCE($3, disabled)
WHERE id = $1
RETURNING id::text, name, role, created, disabled

-- user_lock --
SELECT name FROM users WHERE id = $1 FOR UPDATE

-- user_private_secrets --
SELECT count(*) FROM secrets WHERE owner = $1 AND private

-- user_hand_over_shared --
-- A deleted user's shared secrets pass to the built-in admin ($2): every user sees
-- them anyway, and ownership only decides who may make them private.
UPDATE secrets SET owner = $2 WHERE owner = $1 AND NOT private

-- user_delete --
-- Its tokens go with it (ON DELETE CASCADE).
DELETE FROM users WHERE id = $1

-- token_create --
INSERT INTO tokens (id, user_id, name, hash, expires, scopes, created_by)
VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5), $6, $7)
RETURNING id::text, name, created, expires, scopes

-- token_list --
SELECT t.id::text, t.name, u.name AS "user", t.created, t.expires, t.scopes,
       c.name AS created_by
FROM tokens t JOIN users u ON u.id = t.user_id
LEFT JOIN users c ON c.id = t.created_by
WHERE t.revoked IS NULL AND ($1::uuid IS NULL OR t.user_id = $1)
ORDER BY t.created, t.id

-- token_revoke --
UPDATE tokens SET revoked = now()
WHERE id = $1 AND revoked IS NULL AND ($2::uuid IS NULL OR user_id = $2)
RETURNING id

-- secret_create --
-- One statement: metadata, event, sql-store value, deliveries and, for a request
-- ($audit_action not NULL: audit.Pending), its audit record commit together (the
-- wake-up NOTIFY follows separately: see notify_deliveries).
-- $outbox_deployment is the deployment whose sql store value commits here too (the
-- snapshot is its ciphertext), NULL when no store is written in the outbox
-- (``stores.base.WrittenInOutbox``). $inline names the targets whose delivery the
-- caller writes inline: their rows are leased with $token for $lease_s seconds so the
-- worker does not write them twice (``leased`` lists them: the rows are new, so the
-- caller gets every one).
WITH s AS (
    INSERT INTO secrets (id, name, owner, private, version, hash)
    VALUES ($secret_id, $name, $owner, $private, 1, $hash)
    RETURNING id, name, owner, private, version, created, updated
), e AS (
    INSERT INTO events (secret_id, version, kind, actor, hash, snapshot, name, owner, private)
    SELECT s.id, s.version, 'create', $actor, $hash, $snapshot, s.name, s.owner, s.private FROM s
    RETURNING seq, recorded_at
), v AS (
    INSERT INTO secretmirror_values (deployment_id, secret_id, version, hash, ciphertext)
    SELECT $outbox_deployment, s.id, s.version, $hash, $snapshot
    FROM s WHERE $outbox_deployment::uuid IS NOT NULL
    ON CONFLICT (deployment_id, secret_id) DO UPDATE
        SET version = excluded.version, hash = excluded.hash, ciphertext = excluded.ciphertext,
            deleted = false, updated = now()
)
, d AS (
    INSERT INTO deliveries (target, secret_id, version, pending_since, leased_until, leased_by)
    SELECT t, s.id, s.version, e.recorded_at,
           CASE WHEN t = ANY($inline::text[]) THEN now() + make_interval(secs => $lease_s) END,
           CASE WHEN t = ANY($inline::text[]) THEN $token END
    FROM s, e, unnest($targets::text[]) AS t
    RETURNING target, leased_by
), a AS (
    INSERT INTO audit_log (at, actor, token_id, action, secret_id, secret_name, outcome,
                           status, remote_addr, request_id)
    SELECT now(), $actor, $audit_token_id, $audit_action, s.id, s.name, 'ok', $audit_status,
           $audit_remote_addr, $audit_request_id
    FROM s WHERE $audit_action::text IS NOT NULL
    RETURNING id
)
SELECT s.id::text, s.name, s.owner::text, s.private, s.version, s.created, s.updated, e.seq,
       ARRAY(SELECT target FROM d WHERE leased_by = $token) AS leased,
       (SELECT id FROM a) AS audit_id, now() AS audit_at
FROM s, e

-- secret_change --
-- Update, rename or delete ($kind) under optimistic concurrency ($version_read: the
-- version the change started from); a delete removes the metadata row and leaves a
-- tombstone. $outbox_deployment as in secret_create. $inline names the targets the
-- caller would write inline: each row is leased with $token only where its lease is
-- free or expired, never taken from a worker or another request mid-write; ``leased``
-- lists the targets the caller got. The audit record as in secret_create.
WITH upd AS (
    UPDATE secrets
    SET name = $name, private = $private, version = version + 1, hash = $hash, updated = now()
    WHERE id = $secret_id AND version = $version_read AND $kind <> 'delete'
    RETURNING id, name, owner, private, version, created, updated
), del AS (
    DELETE FROM secrets WHERE id = $secret_id AND version = $version_read AND $kind = 'delete'
    RETURNING id, name, owner, private, version + 1 AS version, created, now() AS updated
), s AS (
    SELECT * FROM upd UNION ALL SELECT * FROM del
), e AS (
    INSERT INTO events (secret_id, version, kind, actor, hash, snapshot, name, owner, private)
    SELECT s.id, s.version, $kind, $actor, CASE WHEN $kind <> 'delete' THEN $hash END, $snapshot,
           s.name, s.owner, s.private
    FROM s
    RETURNING seq, recorded_at
), v AS (
    INSERT INTO secretmirror_values (deployment_id, secret_id, version, hash, ciphertext, deleted)
    SELECT $outbox_deployment, s.id, s.version, CASE WHEN $kind <> 'delete' THEN $hash END,
           $snapshot, $kind = 'delete'
    FROM s WHERE $outbox_deployment::uuid IS NOT NULL
    ON CONFLICT (deployment_id, secret_id) DO UPDATE
        SET version = excluded.version, hash = excluded.hash, ciphertext = excluded.ciphertext,
            deleted = excluded.deleted, updated = now()
        WHERE secretmirror_values.version < excluded.version
), d AS (
    INSERT INTO deliveries AS dl (target, secret_id, version, pending_since, leased_until, leased_by)
    SELECT t, s.id, s.version, e.recorded_at,
           CASE WHEN t = ANY($inline::text[]) THEN now() + make_interval(secs => $lease_s) END,
           CASE WHEN t = ANY($inline::text[]) THEN $token END
    FROM s, e, unnest($targets::text[]) AS t
    ON CONFLICT (target, secret_id) DO UPDATE SET
        version = GREATEST(dl.version, excluded.version),
        pending_since = CASE WHEN dl.version > dl.applied_version AND NOT dl.dead
                             THEN dl.pending_since ELSE excluded.pending_since END,
        dead = false, attempts = 0, next_attempt_at = now(), last_error = NULL,
        leased_until = CASE WHEN excluded.leased_by IS NOT NULL
                             AND (dl.leased_until IS NULL OR dl.leased_until < now())
                            THEN excluded.leased_until ELSE dl.leased_until END,
        leased_by = CASE WHEN excluded.leased_by IS NOT NULL
                          AND (dl.leased_until IS NULL OR dl.leased_until < now())
                         THEN excluded.leased_by ELSE dl.leased_by END
    RETURNING dl.target, dl.leased_by
), a AS (
    INSERT INTO audit_log (at, actor, token_id, action, secret_id, secret_name, outcome,
                           status, remote_addr, request_id)
    SELECT now(), $actor, $audit_token_id, $audit_action, s.id, s.name, 'ok', $audit_status,
           $audit_remote_addr, $audit_request_id
    FROM s WHERE $audit_action::text IS NOT NULL
    RETURNING id
)
SELECT s.id::text, s.name, s.owner::text, s.private, s.version, s.created, s.updated, e.seq,
       ARRAY(SELECT target FROM d WHERE leased_by = $token) AS leased,
       (SELECT id FROM a) AS audit_id, now() AS audit_at
FROM s, e

-- notify_deliveries --
-- Wakes the workers of every process. Sent outside the write transactions: a
-- NOTIFY takes a global lock held until commit, which would serialize writes.
SELECT pg_notify('secretmirror_deliveries', '')

-- secret_get --
SELECT id::text, name, owner::text, private, version, hash, created, updated
FROM secrets WHERE id = $1

-- secret_get_with_value --
-- Metadata and, for a store written in the outbox (deployment $2; NULL: none), its
-- value at once.
SELECT s.id::text, s.name, s.owner::text, s.private, s.version, s.hash, s.created, s.updated,
       v.version AS stored_version, v.ciphertext
FROM secrets s
LEFT JOIN secretmirror_values v ON v.deployment_id = $2 AND v.secret_id = s.id AND NOT v.deleted
WHERE s.id = $1

-- secret_by_name --
-- A private secret of the caller wins over a shared one of the same name.
-- ($2, $3, $4: Principal.sql_visibility, see secretmirror_sees in migration 0004.)
SELECT id::text FROM secrets
WHERE name = $1 AND secretmirror_sees(private, owner, name, $2, $3, $4)
ORDER BY private DESC LIMIT 1

-- secret_list --
-- Visibility is secretmirror_sees (migration 0004): the one rule this list, the bulk
-- read, the by-name route and the change feed share. $1, $8, $9 are the caller's
-- Principal.sql_visibility (user id, own token, scope LIKE patterns or NULL). A name
-- prefix is a range in byte order (the index secrets_name_c of migration 0006):
-- starts_with() cannot use an index, and a range in the database's own collation need
-- not hold every name with that prefix.
SELECT id::text, name, owner::text, private, version, created, updated
FROM secrets
WHERE secretmirror_sees(private, owner, name, $1, $8, $9)
  AND ($2::text IS NULL OR name = $2)
  AND ($3::text IS NULL OR ((name COLLATE "C") >= $3 AND (name COLLATE "C") < ($3 || chr(1114111))))
  AND ($4::boolean IS NULL OR private = $4)
  AND ($5::text IS NULL OR (name, id) > ($5, $6::uuid))
ORDER BY name, id
LIMIT $7

-- secret_list_with_values --
-- The bulk read for a store written in the outbox ($8 the deployment): the list
-- (as secret_list; $9, $10 as its $8, $9) with each secret's stored value, in one statement.
-- The page is chosen first, then each value is one primary-key lookup (LATERAL ... LIMIT 1
-- keeps the planner from hashing the whole values table for a page of 20).
SELECT s.id::text, s.name, s.owner::text, s.private, s.version, s.created, s.updated,
       v.version AS stored_version, v.ciphertext
FROM (
    SELECT id, name, owner, private, version, created, updated
    FROM secrets
    WHERE secretmirror_sees(private, owner, name, $1, $9, $10)
      AND ($2::text IS NULL OR name = $2)
      AND ($3::text IS NULL
           OR ((name COLLATE "C") >= $3 AND (name COLLATE "C") < ($3 || chr(1114111))))
      AND ($4::boolean IS NULL OR private = $4)
      AND ($5::text IS NULL OR (name, id) > ($5, $6::uuid))
    ORDER BY name, id
    LIMIT $7
) s
LEFT JOIN LATERAL (
    SELECT version, ciphertext FROM secretmirror_values
    WHERE deployment_id = $8 AND secret_id = s.id AND NOT deleted
    LIMIT 1
) v ON true
ORDER BY s.name, s.id

-- secret_list_with_values_by_prefix --
-- secret_list_with_values with a name prefix ($3 not NULL), the restart storm's request.
-- The prefix range is not behind "$3 IS NULL OR": with it the planner has no generic
-- plan that uses the index, so it planned every execution again (custom plans), half
-- of what the query cost PostgreSQL; without it the prepared statement keeps one plan.
SELECT s.id::text, s.name, s.owner::text, s.private, s.version, s.created, s.updated,
       v.version AS stored_version, v.ciphertext
FROM (
    SELECT id, name, owner, private, version, created, updated
    FROM secrets
    WHERE (name COLLATE "C") >= $3 AND (name COLLATE "C") < ($3 || chr(1114111))
      AND secretmirror_sees(private, owner, name, $1, $9, $10)
      AND ($2::text IS NULL OR name = $2)
      AND ($4::boolean IS NULL OR private = $4)
      AND ($5::text IS NULL OR (name, id) > ($5, $6::uuid))
    ORDER BY name, id
    LIMIT $7
) s
LEFT JOIN LATERAL (
    SELECT version, ciphertext FROM secretmirror_values
    WHERE deployment_id = $8 AND secret_id = s.id AND NOT deleted
    LIMIT 1
) v ON true
ORDER BY s.name, s.id

-- secret_by_exact_name --
-- The secrets called $name the caller ($user_id, $own_token, $patterns:
-- Principal.sql_visibility) may see: at most a shared one and its own private one;
-- $private picks one of them by its private flag.
SELECT id::text, name, owner::text, private, version, created, updated
FROM secrets
WHERE name = $name
  AND secretmirror_sees(private, owner, name, $user_id, $own_token, $patterns)
  AND ($private::boolean IS NULL OR private = $private)
ORDER BY private

-- secret_by_exact_name_with_value --
-- secret_by_exact_name with the stored value of a store written in the outbox (of
-- $outbox_deployment; NULL: none): a by-name read in one round trip.
SELECT s.id::text, s.name, s.owner::text, s.private, s.version, s.created, s.updated,
       v.version AS stored_version, v.ciphertext
FROM secrets s
LEFT JOIN LATERAL (
    SELECT version, ciphertext FROM secretmirror_values
    WHERE deployment_id = $outbox_deployment AND secret_id = s.id AND NOT deleted
    LIMIT 1
) v ON true
WHERE s.name = $name
  AND secretmirror_sees(s.private, s.owner, s.name, $user_id, $own_token, $patterns)
  AND ($private::boolean IS NULL OR s.private = $private)
ORDER BY s.private

-- secret_names_of --
-- The names of the secrets $1 (live, or as their last event had it) that the caller ($2,
-- $3, $4: Principal.sql_visibility("list")) may see.
SELECT DISTINCT ON (e.secret_id) e.secret_id::text AS id, COALESCE(s.name, e.name) AS name
FROM unnest($1::uuid[]) AS i(id)
JOIN events e ON e.secret_id = i.id
LEFT JOIN secrets s ON s.id = i.id
WHERE secretmirror_sees(COALESCE(s.private, e.private), COALESCE(s.owner, e.owner),
                        COALESCE(s.name, e.name), $2, $3, $4)
  AND COALESCE(s.name, e.name) IS NOT NULL
ORDER BY e.secret_id, e.version DESC

-- secret_deleted_by_name --
-- The most recently deleted secret called $1 that the caller ($2, $3, $4:
-- Principal.sql_visibility("list")) could see when it was deleted (and that was not
-- created again under the same id). No index on names in the log: a scan of the delete
-- events, fine for a command a person types.
SELECT e.secret_id::text FROM events e
WHERE e.kind = 'delete' AND e.name = $1
  AND secretmirror_sees(e.private, e.owner, e.name, $2, $3, $4)
  AND NOT EXISTS (SELECT 1 FROM secrets s WHERE s.id = e.secret_id)
ORDER BY e.seq DESC
LIMIT 1

-- secret_count --
SELECT count(*) FROM secrets

-- event_snapshot --
SELECT kind, hash, snapshot, private FROM events WHERE secret_id = $1 AND version = $2

-- event_history --
SELECT version, kind, actor, recorded_at FROM events WHERE secret_id = $1 ORDER BY version

-- feed_page --
-- The change feed after position ($after_tx, $after_seq), in (tx, seq) order (see
-- migration 0006), up to $limit rows. safe: the event's transaction is older than every
-- one still running, so nothing can appear before it later; the caller stops at the first
-- unsafe row. visible: the caller ($user_id, $own_token, $patterns:
-- Principal.sql_visibility("list")) may see it (as it was at that version) and its name
-- starts with $name_prefix. Rows the caller may not see come back too (the caller drops
-- them) so that its position moves past them.
SELECT e.seq, COALESCE(e.tx, '0'::xid8)::text AS tx,
       COALESCE(e.tx, '0'::xid8) < pg_snapshot_xmin(pg_current_snapshot()) AS safe,
       COALESCE(secretmirror_sees(COALESCE(e.private, s.private),
                                  COALESCE(e.owner, s.owner),
                                  COALESCE(e.name, s.name), $user_id, $own_token, $patterns)
                AND ($name_prefix::text IS NULL
                     OR starts_with(COALESCE(e.name, s.name), $name_prefix)),
                false) AS visible,
       e.secret_id::text, COALESCE(e.name, s.name) AS name, e.version, e.kind, e.recorded_at
FROM events e
LEFT JOIN secrets s ON e.name IS NULL AND s.id = e.secret_id
WHERE (COALESCE(e.tx, '0'::xid8), e.seq) > ($after_tx::text::xid8, $after_seq)
ORDER BY COALESCE(e.tx, '0'::xid8), e.seq
LIMIT $limit

-- feed_position --
-- The feed position of the event $1; of the nearest one before it for a seq this feed
-- never returned (none: the beginning).
SELECT seq, COALESCE(tx, '0'::xid8)::text AS tx FROM events
WHERE seq <= $1
ORDER BY seq DESC
LIMIT 1

-- feed_head --
-- The newest position no later event can come before: where "from now" starts.
SELECT seq, COALESCE(tx, '0'::xid8)::text AS tx FROM events
WHERE COALESCE(tx, '0'::xid8) < pg_snapshot_xmin(pg_current_snapshot())
ORDER BY COALESCE(tx, '0'::xid8) DESC, seq DESC
LIMIT 1

-- events_purge_snapshots --
-- Drop snapshots every configured target ($3, delivery keys) has applied, keeping the
-- newest $1 versions per secret. Rows of a store no longer configured do not count: they
-- never advance again, and would keep every later snapshot of their secrets forever.
-- (A delivery always sends its row's newest version, which is never purged.)
UPDATE events e SET snapshot = NULL
FROM (
    SELECT seq FROM (
        SELECT ev.seq, ev.secret_id, ev.version,
               row_number() OVER (PARTITION BY ev.secret_id ORDER BY ev.version DESC) AS rank
        FROM events ev WHERE ev.snapshot IS NOT NULL
    ) ranked
    WHERE ranked.rank > $1
      AND NOT EXISTS (
          SELECT 1 FROM deliveries d
          WHERE d.target = ANY($3::text[]) AND d.secret_id = ranked.secret_id
            AND d.applied_version < ranked.version
      )
    LIMIT $2
) old
WHERE e.seq = old.seq

-- sql_store_schema --
CREATE TABLE IF NOT EXISTS secretmirror_values (
    deployment_id  uuid NOT NULL,
    secret_id      uuid NOT NULL,
    version        integer NOT NULL,
    hash           text,
    ciphertext     bytea,
    deleted        boolean NOT NULL DEFAULT false,
    updated        timestamptz NOT NULL DEFAULT now(),
    key_id         bytea GENERATED ALWAYS AS (substring(ciphertext FROM 2 FOR 8)) STORED,
    PRIMARY KEY (deployment_id, secret_id)
)

-- sql_store_put --
-- Fenced: a row holding this version or a newer one is left alone, except that a
-- tombstone at the version it holds replaces it (a backup with delete_secrets).
INSERT INTO secretmirror_values AS v (deployment_id, secret_id, version, hash, ciphertext, deleted)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (deployment_id, secret_id) DO UPDATE
    SET version = excluded.version, hash = excluded.hash, ciphertext = excluded.ciphertext,
        deleted = excluded.deleted, updated = now()
    WHERE v.version < excluded.version
       OR (v.version = excluded.version AND excluded.deleted AND NOT v.deleted)
RETURNING version

-- sql_store_get --
SELECT version, hash, ciphertext FROM secretmirror_values
WHERE deployment_id = $1 AND secret_id = $2 AND NOT deleted

-- sql_store_list --
-- With the ciphertexts: verify reports an entry that no longer decrypts as unreadable.
SELECT secret_id::text, version, hash, deleted, ciphertext FROM secretmirror_values
WHERE deployment_id = $1 AND ($2::uuid IS NULL OR secret_id > $2)
ORDER BY secret_id
LIMIT $3

-- sql_store_health --
SELECT 1

-- delivery_claim --
-- Lease due deliveries to worker $1 for $4 seconds: up to $2[i] of the target $3[i],
-- the longest due first. Each target is read from its own range of deliveries_due
-- with its own limit, so one target's backlog never takes another's turn.
-- Each row gets a fresh lease token (the worker's name and a random part): complete,
-- fail and release change a row only for the token that holds it.
WITH due AS (
    SELECT d.target, d.secret_id
    FROM unnest($3::text[], $2::int[]) AS t(target, lim)
    CROSS JOIN LATERAL (
        SELECT target, secret_id, next_attempt_at FROM deliveries
        WHERE target = t.target AND version > applied_version AND NOT dead
          AND next_attempt_at <= now()
          AND (leased_until IS NULL OR leased_until < now())
        ORDER BY next_attempt_at
        LIMIT t.lim
        FOR UPDATE SKIP LOCKED
    ) d
)
UPDATE deliveries d
SET leased_until = now() + make_interval(secs => $4),
    leased_by = $1 || '/' || gen_random_uuid()::text,
    attempts = d.attempts + 1
FROM due
WHERE d.target = due.target AND d.secret_id = due.secret_id
RETURNING d.target, d.secret_id::text, d.version, d.applied_version, d.attempts,
          d.pending_since, d.leased_by

-- delivery_events --
-- The events to apply for claimed deliveries ($1 secret ids, $2 versions).
SELECT e.secret_id::text, e.version, e.kind, e.hash, e.snapshot, e.recorded_at, e.seq,
       e.name, e.private
FROM events e
JOIN unnest($1::uuid[], $2::int[]) AS c(secret_id, version)
  ON e.secret_id = c.secret_id AND e.version = c.version

-- delivery_history --
-- A secret's events from version $2 to $3 (what a mirror delivery plans its writes from:
-- the names the secret held since the version the mirror last applied).
SELECT version, seq, kind, name, private FROM events
WHERE secret_id = $1 AND version BETWEEN $2 AND $3
ORDER BY version

-- name_lease_take --
-- Lease the entry names $3 (sorted: two takers lock them in one order) of target $1 to
-- the holder $2 for $4 seconds: a name is taken when free, expired or already $2's.
-- Returns the names $2 holds now; a holder that did not get them all gives them back.
INSERT INTO name_leases (target, name, holder, leased_until)
SELECT $1, n, $2, now() + make_interval(secs => $4) FROM unnest($3::text[]) AS n
ON CONFLICT (target, name) DO UPDATE
SET holder = excluded.holder, leased_until = excluded.leased_until
WHERE name_leases.leased_until < now() OR name_leases.holder = excluded.holder
RETURNING name

-- name_lease_release --
-- Give back the names $3 of target $1 that the holder $2 still holds.
DELETE FROM name_leases WHERE target = $1 AND holder = $2 AND name = ANY($3::text[])

-- delivery_complete --
-- Mark applied (never moving applied_version back) and release the lease, for the
-- rows still leased with the writer's token ($4): a writer whose lease expired and
-- was taken over records nothing. Returns the (target, secret) pairs that moved.
WITH done AS (
    UPDATE deliveries d
    SET applied_version = GREATEST(d.applied_version, c.version),
        attempts = CASE WHEN d.version > c.version THEN 0 ELSE d.attempts END,
        leased_until = NULL, leased_by = NULL, last_error = NULL,
        pending_since = CASE WHEN d.version > GREATEST(d.applied_version, c.version)
            THEN (SELECT min(e.recorded_at) FROM events e
                  WHERE e.secret_id = d.secret_id AND e.version > c.version)
            END
    FROM unnest($1::text[], $2::uuid[], $3::int[], $4::text[])
         AS c(target, secret_id, version, token)
    WHERE d.target = c.target AND d.secret_id = c.secret_id AND d.leased_by = c.token
    RETURNING d.target, d.secret_id
), counted AS (
    INSERT INTO delivery_stats AS s (target, applied)
    SELECT target, count(*) FROM done GROUP BY target
    ON CONFLICT (target) DO UPDATE SET applied = s.applied + excluded.applied
)
SELECT target, secret_id::text FROM done

-- delivery_fail --
-- Release after a failed attempt: retry at $retry_in_s seconds from now, or dead-letter
-- when $dead and no newer version arrived meanwhile. Only while the token $token holds it.
-- A write that may still land (it timed out mid-request) keeps its lease $hold_s seconds
-- more, so no other writer starts before it landed or died. NOT $counted: the write was
-- held back before it was sent, and the claim's attempt is given back.
UPDATE deliveries
SET attempts = CASE WHEN $counted THEN attempts ELSE GREATEST(attempts - 1, 0) END,
    leased_until = CASE WHEN $hold_s::float8 > 0 THEN now() + make_interval(secs => $hold_s) END,
    leased_by = CASE WHEN $hold_s::float8 > 0 THEN leased_by END,
    last_error = $error,
    next_attempt_at = now() + make_interval(secs => $retry_in_s),
    dead = ($dead AND version = $version)
WHERE target = $target AND secret_id = $secret_id AND leased_by = $token

-- delivery_hold --
-- An inline write that may still land keeps its lease (token $3) $4 seconds more.
UPDATE deliveries SET leased_until = now() + make_interval(secs => $4)
WHERE target = $1 AND secret_id = $2 AND leased_by = $3

-- delivery_release --
-- Give back leases without counting an attempt (shutdown, inline write not needed),
-- each only while its token ($3) holds it.
UPDATE deliveries d
SET leased_until = NULL, leased_by = NULL, attempts = GREATEST(d.attempts - $4, 0)
FROM unnest($1::text[], $2::uuid[], $3::text[]) AS c(target, secret_id, token)
WHERE d.target = c.target AND d.secret_id = c.secret_id AND d.leased_by = c.token

-- delivery_lease_for_job --
-- A reconcile job's write to (target $1, secret $2): lease the delivery row with the
-- fresh token $3 for $4 seconds, adding a row with nothing to deliver (version 0) when
-- there is none. No row comes back while someone else holds the lease.
INSERT INTO deliveries AS d (target, secret_id, version, applied_version, leased_until, leased_by)
VALUES ($1, $2, 0, 0, now() + make_interval(secs => $4), $3)
ON CONFLICT (target, secret_id) DO UPDATE
SET leased_until = excluded.leased_until, leased_by = excluded.leased_by
WHERE d.leased_until IS NULL OR d.leased_until < now()
RETURNING d.version

-- delivery_release_for_job --
-- The job's write ended: version $4 is now in the store (0: nothing was written). Record
-- it as applied, give the lease back, and drop a row the lease added if nothing came of it.
WITH dropped AS (
    DELETE FROM deliveries
    WHERE target = $1 AND secret_id = $2 AND leased_by = $3 AND version = 0 AND $4 = 0
)
UPDATE deliveries d
SET version = GREATEST(d.version, $4),
    applied_version = GREATEST(d.applied_version, $4),
    pending_since = CASE WHEN d.version > GREATEST(d.applied_version, $4)
                         THEN d.pending_since END,
    attempts = CASE WHEN d.version > GREATEST(d.applied_version, $4) THEN d.attempts ELSE 0 END,
    dead = d.dead AND d.version > GREATEST(d.applied_version, $4),
    last_error = CASE WHEN d.version > GREATEST(d.applied_version, $4) THEN d.last_error END,
    leased_until = NULL, leased_by = NULL
WHERE d.target = $1 AND d.secret_id = $2 AND d.leased_by = $3 AND NOT (d.version = 0 AND $4 = 0)

-- delivery_due_now --
-- A store is up again: its pending deliveries stop waiting out the backoff they
-- collected while it was down (deliveries_due: only this target's pending rows).
UPDATE deliveries SET next_attempt_at = now()
WHERE target = $1 AND version > applied_version AND NOT dead AND next_attempt_at > now()

-- delivery_status --
-- Per target; reads only pending and dead rows (the partial indexes of 0002), so a
-- scrape costs what is pending, not what is stored.
SELECT t.target, p.pending, p.lag_s,
       (SELECT count(*) FROM deliveries d WHERE d.target = t.target AND d.dead) AS dead,
       COALESCE((SELECT applied FROM delivery_stats s WHERE s.target = t.target), 0) AS applied
FROM unnest($1::text[]) AS t(target)
CROSS JOIN LATERAL (
    SELECT count(*) AS pending,
           COALESCE(EXTRACT(EPOCH FROM now() - min(d.pending_since)), 0)::float8 AS lag_s
    FROM deliveries d
    WHERE d.target = t.target AND d.version > d.applied_version AND NOT d.dead
) p

-- delivery_dead_reasons --
-- Dead deliveries per target ($1) and reason: the text of last_error before its first
-- ':' (the worker records "<reason>: <message>", e.g. "foreign_entry: ..."); a prefix
-- that is not a reason word is 'other', none 'unknown' (reasons become metric labels).
-- Reads only dead rows (the partial index of 0002).
SELECT d.target,
       CASE WHEN d.last_error IS NULL THEN 'unknown'
            WHEN split_part(d.last_error, ':', 1) ~ '^[a-z][a-z0-9_]{0,39}$'
                THEN split_part(d.last_error, ':', 1)
            ELSE 'other' END AS reason,
       count(*)::int AS dead
FROM deliveries d
WHERE d.dead AND d.target = ANY($1::text[])
GROUP BY 1, 2
ORDER BY 1, 2

-- delivery_dead_list --
-- The dead deliveries of the configured targets ($1), up to $2; a secret's name only
-- where the caller ($3, $4, $5: Principal.sql_visibility("list")) may see it (a private
-- secret's name is its owner's business).
SELECT d.target, d.secret_id::text, d.version, d.attempts, d.last_error,
       CASE WHEN secretmirror_sees(s.private, s.owner, s.name, $3, $4, $5) THEN s.name END
           AS name
FROM deliveries d
LEFT JOIN secrets s ON s.id = d.secret_id
WHERE d.dead AND d.target = ANY($1::text[])
ORDER BY d.target, d.secret_id
LIMIT $2

-- delivery_retry_dead --
-- Requeue the dead deliveries of the configured targets ($1); a removed store's stay.
UPDATE deliveries SET dead = false, attempts = 0, next_attempt_at = now(), last_error = NULL
WHERE dead AND target = ANY($1::text[])
RETURNING target

-- metrics_last_verify --
-- The divergence gauge, per store from the newest successful verify or repair covering
-- it: a job may cover some stores only (jobs.stores), so the jobs since the newest one of
-- every store (stores NULL) are merged, shaped as one job for shared_gauges.divergence.
-- A repair (not a dry run) that succeeded wrote what it found: its stores read 0.
WITH done AS (
    SELECT mode, dry_run, counts, finished, stores FROM jobs
    WHERE mode IN ('verify', 'repair') AND status = 'succeeded' AND finished IS NOT NULL
), recent AS (
    SELECT * FROM done
    WHERE finished >= COALESCE((SELECT max(finished) FROM done WHERE stores IS NULL),
                               '-infinity')
    ORDER BY finished DESC
    LIMIT 1000
), per_store AS (
    SELECT DISTINCT ON (st.key) st.key,
           CASE WHEN r.mode = 'repair' AND NOT r.dry_run THEN '{}'::jsonb ELSE st.value END
               AS classes
    FROM recent r
    CROSS JOIN LATERAL jsonb_each(CASE WHEN jsonb_typeof(r.counts -> 'stores') = 'object'
                                       THEN r.counts -> 'stores' ELSE '{}'::jsonb END) st
    ORDER BY st.key, r.finished DESC
)
SELECT 'verify' AS mode, false AS dry_run,
       jsonb_build_object('failed', 0, 'stores', jsonb_object_agg(key, classes)) AS counts
FROM per_store
HAVING count(*) > 0

-- metrics_reconcile_last_success --
SELECT mode, EXTRACT(EPOCH FROM max(finished))::float8 AS finished FROM jobs
WHERE status = 'succeeded' AND finished IS NOT NULL
GROUP BY mode

-- metrics_secret_count --
-- Exact below 100000 rows; above that the planner's estimate (kept fresh by
-- autovacuum's ANALYZE), so a scrape never scans a large table.
SELECT CASE WHEN c.reltuples < 100000 THEN (SELECT count(*) FROM secrets)
            ELSE c.reltuples::bigint END
FROM pg_class c WHERE c.oid = 'secrets'::regclass

-- audit_insert --
-- One batch of audit rows (group commit: see audit.py), in the order given, one id per
-- row. $1-$8 hold one element per row (the fields its records share), $9-$11 one per
-- record: the position of its row in $1-$8 (from 1) and its secret. A row of one record
-- keeps it in secret_id/secret_name, a row of more in secret_ids/secret_names
-- (migration 0009).
INSERT INTO audit_log (at, actor, token_id, action, secret_id, secret_name, secret_ids,
                       secret_names, outcome, status, remote_addr, request_id)
SELECT q.at, q.actor, q.token_id, q.action,
       CASE WHEN s.records = 1 THEN s.ids[1] END, CASE WHEN s.records = 1 THEN s.names[1] END,
       CASE WHEN s.records > 1 THEN s.ids END, CASE WHEN s.records > 1 THEN s.names END,
       q.outcome, q.status, q.remote_addr, q.request_id
FROM unnest($1::timestamptz[], $2::text[], $3::uuid[], $4::text[], $5::text[], $6::int[],
            $7::text[], $8::text[])
    WITH ORDINALITY AS q(at, actor, token_id, action, outcome, status, remote_addr,
                         request_id, slot)
JOIN (SELECT r.slot, count(*) AS records, array_agg(r.secret_id ORDER BY r.n) AS ids,
             array_agg(r.secret_name ORDER BY r.n) AS names
      FROM unnest($9::int[], $10::uuid[], $11::text[]) WITH ORDINALITY
          AS r(slot, secret_id, secret_name, n)
      GROUP BY r.slot) AS s USING (slot)
ORDER BY q.slot
RETURNING id

-- audit_insert_one --
-- The record of a change to a user or a token, in the change's own transaction
-- (audit.record_change).
INSERT INTO audit_log (at, actor, token_id, action, outcome, status, remote_addr, request_id)
VALUES (now(), $actor, $audit_token_id, $audit_action, 'ok', $audit_status, $audit_remote_addr,
        $audit_request_id)
RETURNING id, at

-- audit_list --
-- Records newest first, before the cursor id $before. A record's id is its row's id plus
-- its position in the row (migration 0009), so a row holding one is below $before.
-- $actor also matches "<actor> via <creator>".
SELECT a.id + s.n - 1 AS id, a.at, a.actor, a.token_id::text, a.action,
       s.secret_id::text, s.secret_name, a.outcome, a.status, a.remote_addr, a.request_id
FROM audit_log a
CROSS JOIN LATERAL unnest(COALESCE(a.secret_ids, ARRAY[a.secret_id]),
                          COALESCE(a.secret_names, ARRAY[a.secret_name]))
    WITH ORDINALITY AS s(secret_id, secret_name, n)
WHERE ($actor::text IS NULL OR a.actor = $actor OR starts_with(a.actor, $actor || ' via '))
  AND ($secret_id::uuid IS NULL OR a.secret_id = $secret_id
       OR a.secret_ids @> ARRAY[$secret_id::uuid])
  AND ($secret_id::uuid IS NULL OR s.secret_id = $secret_id)
  AND ($secret_name::text IS NULL OR s.secret_name = $secret_name)
  AND ($action::text IS NULL OR a.action = $action)
  AND ($outcome::text IS NULL OR a.outcome = $outcome)
  AND ($since::timestamptz IS NULL OR a.at >= $since)
  AND ($until::timestamptz IS NULL OR a.at < $until)
  AND ($before::bigint IS NULL OR a.id < $before)
  AND ($before::bigint IS NULL OR a.id + s.n - 1 < $before)
ORDER BY a.id DESC, s.n DESC
LIMIT $limit

-- audit_purge --
-- Rows older than $1 days, up to $2 per statement (audit.keep_days); how many records went.
WITH gone AS (
    DELETE FROM audit_log
    WHERE id IN (SELECT id FROM audit_log
                 WHERE at < now() - make_interval(days => $1::int) LIMIT $2)
    RETURNING COALESCE(cardinality(secret_ids), 1) AS records
)
SELECT COALESCE(sum(records), 0)::bigint FROM gone
