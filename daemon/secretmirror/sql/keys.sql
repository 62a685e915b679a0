-- The key inventory and the rekey job (keys.py, rekey.py). The key_id columns are
-- generated from the envelopes (migration 0005), so counting reads only the indexes.

-- keys_count_events --
SELECT key_id, count(*) AS n FROM events WHERE key_id IS NOT NULL GROUP BY key_id

-- keys_count_values --
SELECT key_id, count(*) AS n FROM secretmirror_values
WHERE deployment_id = $1 AND key_id IS NOT NULL
GROUP BY key_id

-- keys_hash_key --
SELECT hash_key FROM deployment

-- keys_deployment_id --
SELECT id::text FROM deployment

-- keys_events_batch --
-- The next $3 snapshots sealed by key $1 after event $2, in event order.
SELECT seq, secret_id::text, version, snapshot FROM events
WHERE key_id = $1 AND seq > $2
ORDER BY key_id, seq
LIMIT $3

-- keys_events_update --
-- Swap each snapshot for its re-encryption, unless it changed since it was read
-- (retention purged it meanwhile): compare-and-set on the old ciphertext.
WITH done AS (
    UPDATE events e SET snapshot = c.new
    FROM unnest($1::bigint[], $2::bytea[], $3::bytea[]) AS c(seq, old, new)
    WHERE e.seq = c.seq AND e.snapshot = c.old
    RETURNING 1
)
SELECT count(*) FROM done

-- keys_values_batch --
-- The next $4 sql store values of deployment $1 sealed by key $2 after secret $3 (the
-- nil uuid to start: a plain range keeps the index bound in a generic plan).
SELECT secret_id::text, version, ciphertext FROM secretmirror_values
WHERE deployment_id = $1 AND key_id = $2 AND secret_id > $3
ORDER BY deployment_id, key_id, secret_id
LIMIT $4

-- keys_values_update --
-- Compare-and-set: a value written meanwhile (a newer version) is left alone.
WITH done AS (
    UPDATE secretmirror_values v SET ciphertext = c.new
    FROM unnest($2::uuid[], $3::int[], $4::bytea[], $5::bytea[]) AS c(secret_id, version, old, new)
    WHERE v.deployment_id = $1 AND v.secret_id = c.secret_id AND v.version = c.version
      AND v.ciphertext = c.old
    RETURNING 1
)
SELECT count(*) FROM done

-- keys_hash_key_update --
UPDATE deployment SET hash_key = $2 WHERE hash_key = $1

-- keys_values_table_exists --
SELECT to_regclass('secretmirror_values') IS NOT NULL

-- sql_store_key_id_column --
-- A sql store in its own database gets the key id column the main database has
-- (a table created before migration 0005 lacks it).
ALTER TABLE secretmirror_values ADD COLUMN IF NOT EXISTS key_id bytea
    GENERATED ALWAYS AS (substring(ciphertext FROM 2 FOR 8)) STORED

-- sql_store_key_id_index --
CREATE INDEX IF NOT EXISTS secretmirror_values_key_id
    ON secretmirror_values (deployment_id, key_id, secret_id) WHERE key_id IS NOT NULL

-- kms_data_keys --
-- The wrapped data keys, newest (the one that encrypts) first.
SELECT id, wrapped FROM kms_data_keys ORDER BY created DESC, id

-- kms_data_key_add --
INSERT INTO kms_data_keys (id, kms, wrapped) VALUES ($1, $2, $3) ON CONFLICT (id) DO NOTHING

-- kms_data_keys_delete --
DELETE FROM kms_data_keys WHERE id = ANY($1::bytea[])
