-- secretmirror schema, version 1.
-- Metadata, the event log (transactional outbox), per-target delivery state,
-- users and tokens, reconcile jobs, and the sql store's encrypted values.

CREATE TABLE deployment (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    id         uuid NOT NULL,
    -- HMAC key for content hashes, encrypted with the keyring.
    hash_key   bytea NOT NULL,
    created    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE users (
    id       uuid PRIMARY KEY,
    name     text NOT NULL UNIQUE,
    role     text NOT NULL CHECK (role IN ('admin', 'writer', 'reader')),
    created  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE tokens (
    id          uuid PRIMARY KEY,
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name        text NOT NULL,
    hash        bytea NOT NULL UNIQUE,
    created     timestamptz NOT NULL DEFAULT now(),
    expires     timestamptz,
    revoked     timestamptz
);
CREATE INDEX tokens_user ON tokens (user_id);

CREATE TABLE secrets (
    id       uuid PRIMARY KEY,
    name     text NOT NULL,
    owner    uuid NOT NULL REFERENCES users (id),
    private  boolean NOT NULL DEFAULT false,
    version  integer NOT NULL CHECK (version >= 1),
    hash     text NOT NULL,
    created  timestamptz NOT NULL DEFAULT now(),
    updated  timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX secrets_shared_name ON secrets (name) WHERE NOT private;
CREATE UNIQUE INDEX secrets_private_name ON secrets (owner, name) WHERE private;
CREATE INDEX secrets_name_id ON secrets (name, id);

-- The event log. Every write appends exactly one row in the transaction that
-- changes the metadata. The snapshot is the encrypted values (NULL for a
-- delete, and once purged by retention); the row itself is the audit trail.
CREATE TABLE events (
    seq          bigserial PRIMARY KEY,
    secret_id    uuid NOT NULL,
    version      integer NOT NULL,
    kind         text NOT NULL CHECK (kind IN ('create', 'update', 'rename', 'delete')),
    actor        text NOT NULL,
    recorded_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    hash         text,
    snapshot     bytea,
    UNIQUE (secret_id, version)
);
CREATE INDEX events_retained ON events (secret_id, version) WHERE snapshot IS NOT NULL;

-- Delivery state per (target, secret): the newest version to deliver and the
-- newest version applied. Pending versions of one secret coalesce into this
-- one row; its lease serializes writes to one (target, secret).
-- target is the store's location, so deliveries follow a store whose role changes.
CREATE TABLE deliveries (
    target           text NOT NULL,
    secret_id        uuid NOT NULL,
    version          integer NOT NULL,
    applied_version  integer NOT NULL DEFAULT 0,
    pending_since    timestamptz,
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    leased_until     timestamptz,
    leased_by        text,
    dead             boolean NOT NULL DEFAULT false,
    last_error       text,
    PRIMARY KEY (target, secret_id)
);
CREATE INDEX deliveries_due ON deliveries (next_attempt_at)
    WHERE version > applied_version AND NOT dead;

-- Counters of applied deliveries per target, so every replica reports the same.
CREATE TABLE delivery_stats (
    target   text PRIMARY KEY,
    applied  bigint NOT NULL DEFAULT 0
);

-- The sql store. The same table serves the main database and another one.
CREATE TABLE IF NOT EXISTS secretmirror_values (
    deployment_id  uuid NOT NULL,
    secret_id      uuid NOT NULL,
    version        integer NOT NULL,
    hash           text,
    ciphertext     bytea,
    deleted        boolean NOT NULL DEFAULT false,
    updated        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (deployment_id, secret_id)
);

CREATE TABLE jobs (
    id              uuid PRIMARY KEY,
    mode            text NOT NULL CHECK (mode IN ('verify', 'repair', 'backup', 'restore')),
    status          text NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    dry_run         boolean NOT NULL DEFAULT false,
    delete_secrets  boolean NOT NULL DEFAULT false,
    created         timestamptz NOT NULL DEFAULT now(),
    started         timestamptz,
    finished        timestamptz,
    heartbeat       timestamptz,
    owner           text,
    cancel_requested boolean NOT NULL DEFAULT false,
    counts          jsonb NOT NULL DEFAULT '{}',
    samples         jsonb NOT NULL DEFAULT '{}',
    failures        jsonb NOT NULL DEFAULT '[]',
    error           text
);
CREATE UNIQUE INDEX jobs_one_running_per_mode ON jobs (mode) WHERE status IN ('queued', 'running');
CREATE INDEX jobs_created ON jobs (created DESC);
