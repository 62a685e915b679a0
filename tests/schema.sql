-- The schema the migrations build: pg_dump --schema-only --no-owner --no-privileges of a
-- freshly migrated database, normalised (comments and SET lines left out). Checked by
-- tests/test_migrations.py::test_migrated_schema_matches_the_checked_in_dump; regenerate
-- with SECRETMIRROR_WRITE_SCHEMA=1 pytest tests/test_migrations.py -k checked_in_dump

CREATE FUNCTION public.secretmirror_sees(is_private boolean, owner_id uuid, secret_name text, caller uuid, own_token boolean, patterns text[]) RETURNS boolean
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT (NOT is_private OR (owner_id = caller AND own_token))
             AND (patterns IS NULL OR secret_name LIKE ANY (patterns)) $$;

CREATE FUNCTION public.secretmirror_visible(is_private boolean, owner_id uuid, caller uuid) RETURNS boolean
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT NOT is_private OR owner_id = caller $$;

CREATE TABLE public.audit_log (
    id bigint NOT NULL,
    at timestamp with time zone NOT NULL,
    actor text,
    token_id uuid,
    action text NOT NULL,
    secret_id uuid,
    secret_name text,
    outcome text NOT NULL,
    status integer NOT NULL,
    remote_addr text,
    request_id text,
    secret_ids uuid[],
    secret_names text[],
    CONSTRAINT audit_log_outcome_check CHECK ((outcome = ANY (ARRAY['ok'::text, 'denied'::text, 'not_found'::text, 'error'::text])))
);
ALTER TABLE ONLY public.audit_log ALTER COLUMN secret_ids SET STATISTICS 1000;

CREATE SEQUENCE public.audit_log_id_seq
    START WITH 1
    INCREMENT BY 1024
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;

ALTER SEQUENCE public.audit_log_id_seq OWNED BY public.audit_log.id;

CREATE VIEW public.audit_records AS
 SELECT ((a.id + s.n) - 1) AS id,
    a.at,
    a.actor,
    a.token_id,
    a.action,
    s.secret_id,
    s.secret_name,
    a.outcome,
    a.status,
    a.remote_addr,
    a.request_id
   FROM (public.audit_log a
     CROSS JOIN LATERAL UNNEST(COALESCE(a.secret_ids, ARRAY[a.secret_id]), COALESCE(a.secret_names, ARRAY[a.secret_name])) WITH ORDINALITY s(secret_id, secret_name, n));

CREATE TABLE public.deliveries (
    target text NOT NULL,
    secret_id uuid NOT NULL,
    version integer NOT NULL,
    applied_version integer DEFAULT 0 NOT NULL,
    pending_since timestamp with time zone,
    attempts integer DEFAULT 0 NOT NULL,
    next_attempt_at timestamp with time zone DEFAULT now() NOT NULL,
    leased_until timestamp with time zone,
    leased_by text,
    dead boolean DEFAULT false NOT NULL,
    last_error text
);

CREATE TABLE public.delivery_stats (
    target text NOT NULL,
    applied bigint DEFAULT 0 NOT NULL
);

CREATE TABLE public.deployment (
    singleton boolean DEFAULT true NOT NULL,
    id uuid NOT NULL,
    hash_key bytea NOT NULL,
    created timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT deployment_singleton_check CHECK (singleton)
);

CREATE TABLE public.events (
    seq bigint NOT NULL,
    secret_id uuid NOT NULL,
    version integer NOT NULL,
    kind text NOT NULL,
    actor text NOT NULL,
    recorded_at timestamp with time zone DEFAULT clock_timestamp() NOT NULL,
    hash text,
    snapshot bytea,
    private boolean,
    key_id bytea GENERATED ALWAYS AS (SUBSTRING(snapshot FROM 2 FOR 8)) STORED,
    name text,
    owner uuid,
    tx xid8 DEFAULT pg_current_xact_id(),
    CONSTRAINT events_kind_check CHECK ((kind = ANY (ARRAY['create'::text, 'update'::text, 'rename'::text, 'delete'::text])))
);

CREATE SEQUENCE public.events_seq_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;

ALTER SEQUENCE public.events_seq_seq OWNED BY public.events.seq;

CREATE TABLE public.jobs (
    id uuid NOT NULL,
    mode text NOT NULL,
    status text NOT NULL,
    dry_run boolean DEFAULT false NOT NULL,
    delete_secrets boolean DEFAULT false NOT NULL,
    created timestamp with time zone DEFAULT now() NOT NULL,
    started timestamp with time zone,
    finished timestamp with time zone,
    heartbeat timestamp with time zone,
    owner text,
    cancel_requested boolean DEFAULT false NOT NULL,
    counts jsonb DEFAULT '{}'::jsonb NOT NULL,
    samples jsonb DEFAULT '{}'::jsonb NOT NULL,
    failures jsonb DEFAULT '[]'::jsonb NOT NULL,
    error text,
    stores text[],
    CONSTRAINT jobs_mode_check CHECK ((mode = ANY (ARRAY['verify'::text, 'repair'::text, 'backup'::text, 'restore'::text, 'rekey'::text]))),
    CONSTRAINT jobs_status_check CHECK ((status = ANY (ARRAY['queued'::text, 'running'::text, 'succeeded'::text, 'failed'::text, 'cancelled'::text])))
);

CREATE TABLE public.kms_data_keys (
    id bytea NOT NULL,
    kms text NOT NULL,
    wrapped bytea NOT NULL,
    created timestamp with time zone DEFAULT clock_timestamp() NOT NULL
);

CREATE TABLE public.name_leases (
    target text NOT NULL,
    name text NOT NULL,
    holder text NOT NULL,
    leased_until timestamp with time zone NOT NULL
);

CREATE TABLE public.schema_migrations (
    version integer NOT NULL,
    name text NOT NULL,
    applied_at timestamp with time zone DEFAULT now() NOT NULL
);

CREATE TABLE public.secretmirror_values (
    deployment_id uuid NOT NULL,
    secret_id uuid NOT NULL,
    version integer NOT NULL,
    hash text,
    ciphertext bytea,
    deleted boolean DEFAULT false NOT NULL,
    updated timestamp with time zone DEFAULT now() NOT NULL,
    key_id bytea GENERATED ALWAYS AS (SUBSTRING(ciphertext FROM 2 FOR 8)) STORED
);

CREATE TABLE public.secrets (
    id uuid NOT NULL,
    name text NOT NULL,
    owner uuid NOT NULL,
    private boolean DEFAULT false NOT NULL,
    version integer NOT NULL,
    hash text NOT NULL,
    created timestamp with time zone DEFAULT now() NOT NULL,
    updated timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT secrets_version_check CHECK ((version >= 1))
);

CREATE TABLE public.tokens (
    id uuid NOT NULL,
    user_id uuid NOT NULL,
    name text NOT NULL,
    hash bytea NOT NULL,
    created timestamp with time zone DEFAULT now() NOT NULL,
    expires timestamp with time zone,
    revoked timestamp with time zone,
    scopes jsonb,
    created_by uuid
);

CREATE TABLE public.users (
    id uuid NOT NULL,
    name text NOT NULL,
    role text NOT NULL,
    created timestamp with time zone DEFAULT now() NOT NULL,
    disabled boolean DEFAULT false NOT NULL,
    CONSTRAINT users_role_check CHECK ((role = ANY (ARRAY['admin'::text, 'writer'::text, 'reader'::text])))
);

ALTER TABLE ONLY public.audit_log ALTER COLUMN id SET DEFAULT nextval('public.audit_log_id_seq'::regclass);

ALTER TABLE ONLY public.events ALTER COLUMN seq SET DEFAULT nextval('public.events_seq_seq'::regclass);

ALTER TABLE ONLY public.audit_log
    ADD CONSTRAINT audit_log_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.deliveries
    ADD CONSTRAINT deliveries_pkey PRIMARY KEY (target, secret_id);

ALTER TABLE ONLY public.delivery_stats
    ADD CONSTRAINT delivery_stats_pkey PRIMARY KEY (target);

ALTER TABLE ONLY public.deployment
    ADD CONSTRAINT deployment_pkey PRIMARY KEY (singleton);

ALTER TABLE ONLY public.events
    ADD CONSTRAINT events_pkey PRIMARY KEY (seq);

ALTER TABLE ONLY public.events
    ADD CONSTRAINT events_secret_id_version_key UNIQUE (secret_id, version);

ALTER TABLE ONLY public.jobs
    ADD CONSTRAINT jobs_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.kms_data_keys
    ADD CONSTRAINT kms_data_keys_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.name_leases
    ADD CONSTRAINT name_leases_pkey PRIMARY KEY (target, name);

ALTER TABLE ONLY public.schema_migrations
    ADD CONSTRAINT schema_migrations_pkey PRIMARY KEY (version);

ALTER TABLE ONLY public.secretmirror_values
    ADD CONSTRAINT secretmirror_values_pkey PRIMARY KEY (deployment_id, secret_id);

ALTER TABLE ONLY public.secrets
    ADD CONSTRAINT secrets_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.tokens
    ADD CONSTRAINT tokens_hash_key UNIQUE (hash);

ALTER TABLE ONLY public.tokens
    ADD CONSTRAINT tokens_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.users
    ADD CONSTRAINT users_name_key UNIQUE (name);

ALTER TABLE ONLY public.users
    ADD CONSTRAINT users_pkey PRIMARY KEY (id);

CREATE INDEX audit_log_actor ON public.audit_log USING btree (actor, id);

CREATE INDEX audit_log_at ON public.audit_log USING btree (at);

CREATE INDEX audit_log_secret ON public.audit_log USING btree (secret_id, id) WHERE (secret_id IS NOT NULL);

CREATE INDEX audit_log_secrets ON public.audit_log USING gin (secret_ids) WHERE (secret_ids IS NOT NULL);

CREATE INDEX deliveries_dead ON public.deliveries USING btree (target) WHERE dead;

CREATE INDEX deliveries_due ON public.deliveries USING btree (target, next_attempt_at) INCLUDE (pending_since) WHERE ((version > applied_version) AND (NOT dead));

CREATE INDEX events_feed ON public.events USING btree (COALESCE(tx, '0'::xid8), seq);

CREATE INDEX events_key_id ON public.events USING btree (key_id, seq) WHERE (key_id IS NOT NULL);

CREATE INDEX events_retained ON public.events USING btree (secret_id, version) WHERE (snapshot IS NOT NULL);

CREATE INDEX jobs_created ON public.jobs USING btree (created DESC);

CREATE UNIQUE INDEX jobs_one_running_per_mode ON public.jobs USING btree (mode) WHERE (status = ANY (ARRAY['queued'::text, 'running'::text]));

CREATE INDEX secretmirror_values_key_id ON public.secretmirror_values USING btree (deployment_id, key_id, secret_id) WHERE (key_id IS NOT NULL);

CREATE INDEX secrets_name_c ON public.secrets USING btree (name COLLATE "C", id);

CREATE INDEX secrets_name_id ON public.secrets USING btree (name, id);

CREATE UNIQUE INDEX secrets_private_name ON public.secrets USING btree (owner, name) WHERE private;

CREATE UNIQUE INDEX secrets_shared_name ON public.secrets USING btree (name) WHERE (NOT private);

CREATE INDEX tokens_user ON public.tokens USING btree (user_id);

ALTER TABLE ONLY public.secrets
    ADD CONSTRAINT secrets_owner_fkey FOREIGN KEY (owner) REFERENCES public.users(id);

ALTER TABLE ONLY public.tokens
    ADD CONSTRAINT tokens_created_by_fkey FOREIGN KEY (created_by) REFERENCES public.users(id) ON DELETE SET NULL;

ALTER TABLE ONLY public.tokens
    ADD CONSTRAINT tokens_user_id_fkey FOREIGN KEY (user_id) REFERENCES public.users(id) ON DELETE CASCADE;
