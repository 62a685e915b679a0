-- Reconcile jobs and the streaming scans they run.

-- job_create --
-- At most one queued or running job per mode: the unique index raises otherwise.
-- $6: the stores a verify or repair covers (NULL: every store).
INSERT INTO jobs (id, mode, status, dry_run, delete_secrets, owner, heartbeat, stores)
VALUES ($1, $2, 'queued', $3, $4, $5, now(), $6)
RETURNING *

-- job_create_scheduled_verify --
-- The scheduled verify: only when no verify started within $3 seconds (any process).
INSERT INTO jobs (id, mode, status, dry_run, delete_secrets, owner, heartbeat)
SELECT $1, $2, 'queued', false, false, $4, now()
WHERE NOT EXISTS (
    SELECT 1 FROM jobs WHERE mode = $2 AND created > now() - make_interval(secs => $3)
)
ON CONFLICT DO NOTHING
RETURNING *

-- job_start --
UPDATE jobs SET status = 'running', started = now(), heartbeat = now(), owner = $2
WHERE id = $1 AND status = 'queued'
RETURNING *

-- job_progress --
-- Heartbeat with the counts so far; returns whether a cancel was requested.
UPDATE jobs SET heartbeat = now(), counts = $2, samples = $3, failures = $4
WHERE id = $1
RETURNING cancel_requested

-- job_finish --
UPDATE jobs SET status = $status, finished = now(), heartbeat = now(), counts = $counts,
                samples = $samples, failures = $failures, error = $error
WHERE id = $job_id
RETURNING *

-- job_get --
SELECT * FROM jobs WHERE id = $1

-- job_list --
SELECT * FROM jobs ORDER BY created DESC LIMIT $1

-- job_cancel --
UPDATE jobs SET cancel_requested = true,
    status = CASE WHEN status = 'queued' THEN 'cancelled' ELSE status END,
    finished = CASE WHEN status = 'queued' THEN now() ELSE finished END
WHERE id = $1 AND status IN ('queued', 'running')
RETURNING *

-- job_fail_abandoned --
-- Jobs whose runner stopped heart-beating (a crash or restart) are marked failed
-- (a running rekey job is resumed instead: job_resume_abandoned_rekey).
UPDATE jobs SET status = 'failed', finished = now(),
    error = 'interrupted: the daemon running this job stopped; start it again'
WHERE status IN ('queued', 'running') AND heartbeat < now() - make_interval(secs => $1)
  AND NOT (mode = 'rekey' AND status = 'running')
RETURNING id, mode

-- job_resume_abandoned_rekey --
-- Take over a running rekey job whose runner stopped heart-beating: this process
-- ($2) continues it. Rekeying is idempotent, so resuming repeats nothing harmful.
UPDATE jobs SET owner = $2, heartbeat = now()
WHERE id = (
    SELECT id FROM jobs
    WHERE mode = 'rekey' AND status = 'running'
      AND heartbeat < now() - make_interval(secs => $1)
    LIMIT 1
    FOR UPDATE SKIP LOCKED
)
RETURNING *

-- job_last_verify --
SELECT * FROM jobs WHERE mode IN ('verify', 'repair') AND status IN ('succeeded', 'failed')
  AND counts ? 'stores'
ORDER BY finished DESC LIMIT 1

-- scan_seen_create --
CREATE TEMP TABLE IF NOT EXISTS reconcile_seen (secret_id uuid PRIMARY KEY) ON COMMIT PRESERVE ROWS

-- scan_seen_clear --
TRUNCATE reconcile_seen

-- scan_seen_drop --
-- After a job: frees the ids seen; the table may never have been made (a job that failed
-- before its first scan), and the pooled connection must not keep it.
DROP TABLE IF EXISTS pg_temp.reconcile_seen

-- scan_seen_add --
INSERT INTO reconcile_seen (secret_id) SELECT unnest($1::uuid[]) ON CONFLICT DO NOTHING

-- scan_expected --
-- Expected state of listed entries: the live secret and any pending delivery to the target.
SELECT c.secret_id::text, s.version, s.hash,
       (d.version > d.applied_version AND NOT d.dead) AS in_flight
FROM unnest($1::uuid[]) AS c(secret_id)
LEFT JOIN secrets s ON s.id = c.secret_id
LEFT JOIN deliveries d ON d.secret_id = c.secret_id AND d.target = $2

-- scan_unseen --
-- Live secrets the store did not list, in pages by id.
SELECT s.id::text AS secret_id, s.version, s.hash,
       COALESCE(d.version > d.applied_version AND NOT d.dead, false) AS in_flight
FROM secrets s
LEFT JOIN deliveries d ON d.secret_id = s.id AND d.target = $3
WHERE NOT EXISTS (SELECT 1 FROM reconcile_seen r WHERE r.secret_id = s.id)
  AND ($1::uuid IS NULL OR s.id > $1)
ORDER BY s.id
LIMIT $2

-- scan_keys_create --
-- The keys a mirror listed (secret ids, or names for naming = "name"), as scan_seen.
CREATE TEMP TABLE IF NOT EXISTS reconcile_seen_keys (key text PRIMARY KEY) ON COMMIT PRESERVE ROWS

-- scan_keys_clear --
TRUNCATE reconcile_seen_keys

-- scan_keys_drop --
DROP TABLE IF EXISTS pg_temp.reconcile_seen_keys

-- scan_keys_add --
INSERT INTO reconcile_seen_keys (key) SELECT unnest($1::text[]) ON CONFLICT DO NOTHING

-- mirror_expected_by_id --
-- A mirror keyed by secret id: the live secrets of the listed ids ($1), with what the
-- mirror's rule selects by (name, private), the fence (the version) and any pending
-- delivery to the mirror ($2). Secrets the rule does not select are left out by the caller.
SELECT s.id::text AS key, s.id::text AS secret_id, s.name, s.private, s.version,
       s.version AS fence, s.hash,
       COALESCE(d.version > d.applied_version AND NOT d.dead, false) AS in_flight
FROM unnest($1::uuid[]) AS c(secret_id)
JOIN secrets s ON s.id = c.secret_id
LEFT JOIN deliveries d ON d.secret_id = s.id AND d.target = $2

-- mirror_expected_by_name --
-- A mirror keyed by name: the live shared secret holding each listed name ($1; private
-- secrets never go to such a mirror), fenced by the seq of its current version's event.
SELECT s.name AS key, s.id::text AS secret_id, s.name, s.private, s.version,
       e.seq AS fence, s.hash,
       COALESCE(d.version > d.applied_version AND NOT d.dead, false) AS in_flight
FROM unnest($1::text[]) AS c(key)
JOIN secrets s ON s.name = c.key AND NOT s.private
JOIN events e ON e.secret_id = s.id AND e.version = s.version
LEFT JOIN deliveries d ON d.secret_id = s.id AND d.target = $2

-- mirror_unseen --
-- Live secrets whose key (id, or name when $4) the mirror did not list, in pages by id
-- ($1 after, $2 page size), with name, private, version, hash and the seq of the current
-- version's event; the caller keeps those the mirror's rule selects. $3: the mirror.
SELECT s.id::text AS secret_id, s.name, s.private, s.version, s.hash, e.seq,
       CASE WHEN $4::boolean THEN s.name ELSE s.id::text END AS key,
       CASE WHEN $4::boolean THEN e.seq ELSE s.version END AS fence,
       COALESCE(d.version > d.applied_version AND NOT d.dead, false) AS in_flight
FROM secrets s
JOIN events e ON e.secret_id = s.id AND e.version = s.version
LEFT JOIN deliveries d ON d.secret_id = s.id AND d.target = $3
WHERE NOT EXISTS (
        SELECT 1 FROM reconcile_seen_keys r
        WHERE r.key = CASE WHEN $4::boolean THEN s.name ELSE s.id::text END
      )
  AND ($1::uuid IS NULL OR s.id > $1)
ORDER BY s.id
LIMIT $2

-- mirror_name_in_flight --
-- Whether a pending delivery to the mirror ($2) is about to write or remove the name $1:
-- the secret held it at the version the mirror applied or at one still to deliver (a
-- rename out of the selection not yet delivered leaves the old name for a moment).
SELECT EXISTS (
    SELECT 1 FROM deliveries d
    JOIN events e ON e.secret_id = d.secret_id
                 AND e.version BETWEEN d.applied_version AND d.version
    WHERE d.target = $2 AND d.version > d.applied_version AND NOT d.dead AND e.name = $1
)

-- secret_snapshot_current --
-- The current version's values, to repair a store from the log; the name, visibility and
-- event seq say which mirrors select it and under which key and fence (by name).
SELECT s.version, s.hash, e.snapshot, s.name, s.private, e.seq
FROM secrets s JOIN events e ON e.secret_id = s.id AND e.version = s.version
WHERE s.id = $1

-- secret_reissue --
-- Repair of a mismatch: the same values as a new version through the outbox, so
-- every store is overwritten by a fenced write it has never seen. The event records
-- the name and visibility like every other (mirrors and the change feed read them).
-- $hash is the values' hash under the current hash key (a replaced one changes it).
WITH s AS (
    UPDATE secrets SET version = version + 1, hash = $hash, updated = now()
    WHERE id = $secret_id AND version = $version_read
    RETURNING id, version, hash, name, owner, private
), e AS (
    INSERT INTO events (secret_id, version, kind, actor, hash, snapshot, name, owner, private)
    SELECT s.id, s.version, 'update', 'reconcile', s.hash, $snapshot, s.name, s.owner, s.private
    FROM s
    RETURNING recorded_at
), v AS (
    INSERT INTO secretmirror_values (deployment_id, secret_id, version, hash, ciphertext, deleted)
    SELECT $outbox_deployment, s.id, s.version, s.hash, $snapshot, false
    FROM s WHERE $outbox_deployment::uuid IS NOT NULL
    ON CONFLICT (deployment_id, secret_id) DO UPDATE
        SET version = excluded.version, hash = excluded.hash, ciphertext = excluded.ciphertext,
            deleted = false, updated = now()
), d AS (
    INSERT INTO deliveries AS dl (target, secret_id, version, pending_since)
    SELECT t, s.id, s.version, e.recorded_at FROM s, e, unnest($targets::text[]) AS t
    ON CONFLICT (target, secret_id) DO UPDATE SET
        version = GREATEST(dl.version, excluded.version),
        pending_since = CASE WHEN dl.version > dl.applied_version AND NOT dl.dead
                             THEN dl.pending_since ELSE excluded.pending_since END,
        dead = false, attempts = 0, next_attempt_at = now(), last_error = NULL
)
SELECT s.version FROM s
