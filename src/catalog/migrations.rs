//! The control database schema, as versioned migrations embedded in the binary. pgtenant
//! applies the missing ones at start and with `pgtenant catalog init`, under an advisory lock
//! so several instances starting together do not collide.

/// (version, SQL). Append only: an applied migration is never edited.
pub const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        r#"
CREATE TABLE pgtenant.upstreams (
    name            text PRIMARY KEY,
    host            text NOT NULL,
    port            integer NOT NULL DEFAULT 5432 CHECK (port BETWEEN 1 AND 65535),
    max_connections integer NOT NULL DEFAULT 100 CHECK (max_connections > 0),
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE pgtenant.tenants (
    id                     text PRIMARY KEY CHECK (id ~ '^[a-z0-9][a-z0-9_-]{0,47}$'),
    status                 text NOT NULL DEFAULT 'pending'
                           CHECK (status IN ('pending', 'active', 'suspended', 'migrating', 'archived', 'deleted')),
    isolation              text NOT NULL DEFAULT 'database' CHECK (isolation IN ('database', 'schema', 'shared')),
    upstream               text NOT NULL REFERENCES pgtenant.upstreams (name),
    database               text NOT NULL,
    schema_name            text,
    search_path_public     boolean NOT NULL DEFAULT false,
    login_role             text NOT NULL,
    -- The upstream login password (encrypted at rest once credential encryption lands).
    login_password         text,
    pool_mode              text NOT NULL DEFAULT 'transaction' CHECK (pool_mode IN ('transaction', 'session')),
    pool_size              integer CHECK (pool_size > 0),
    max_server_connections integer CHECK (max_server_connections > 0),
    max_clients            integer CHECK (max_clients > 0),
    version                bigint NOT NULL DEFAULT 1,
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now()
);

-- Client credentials: SCRAM-SHA-256 verifiers, never plaintext.
CREATE TABLE pgtenant.tenant_users (
    tenant_id  text NOT NULL REFERENCES pgtenant.tenants (id) ON DELETE CASCADE,
    username   text NOT NULL,
    verifier   text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, username)
);

CREATE TABLE pgtenant.events (
    id        bigserial PRIMARY KEY,
    tenant_id text,
    kind      text NOT NULL,
    detail    jsonb NOT NULL DEFAULT '{}',
    at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX events_tenant_at ON pgtenant.events (tenant_id, at);

CREATE FUNCTION pgtenant.touch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    IF TG_TABLE_NAME = 'tenants' THEN
        NEW.version := OLD.version + 1;
    END IF;
    RETURN NEW;
END $$;

-- Every change NOTIFYs pgtenant_catalog with the tenant id ('*' when an upstream changed),
-- so every proxy drops its cached copy at once.
CREATE FUNCTION pgtenant.notify_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_TABLE_NAME = 'tenants' THEN
        IF TG_OP <> 'INSERT' THEN PERFORM pg_notify('pgtenant_catalog', OLD.id); END IF;
        IF TG_OP <> 'DELETE' AND (TG_OP = 'INSERT' OR NEW.id <> OLD.id) THEN
            PERFORM pg_notify('pgtenant_catalog', NEW.id);
        END IF;
    ELSIF TG_TABLE_NAME = 'tenant_users' THEN
        PERFORM pg_notify('pgtenant_catalog', CASE WHEN TG_OP = 'DELETE' THEN OLD.tenant_id ELSE NEW.tenant_id END);
    ELSE
        PERFORM pg_notify('pgtenant_catalog', '*');
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER touch BEFORE UPDATE ON pgtenant.tenants FOR EACH ROW EXECUTE FUNCTION pgtenant.touch();
CREATE TRIGGER touch BEFORE UPDATE ON pgtenant.upstreams FOR EACH ROW EXECUTE FUNCTION pgtenant.touch();
CREATE TRIGGER notify AFTER INSERT OR UPDATE OR DELETE ON pgtenant.tenants
    FOR EACH ROW EXECUTE FUNCTION pgtenant.notify_change();
CREATE TRIGGER notify AFTER INSERT OR UPDATE OR DELETE ON pgtenant.tenant_users
    FOR EACH ROW EXECUTE FUNCTION pgtenant.notify_change();
CREATE TRIGGER notify AFTER INSERT OR UPDATE OR DELETE ON pgtenant.upstreams
    FOR EACH ROW EXECUTE FUNCTION pgtenant.notify_change();
"#,
    ),
    (
        2,
        r#"
-- Client authentication per tenant (NULL: the proxy's [proxy] auth).
ALTER TABLE pgtenant.tenants ADD COLUMN auth text CHECK (auth IN ('trust', 'scram-sha-256'));
"#,
    ),
    (
        3,
        r#"
-- TLS to each upstream, as libpq's sslmode (and the CA file for the verifying modes).
ALTER TABLE pgtenant.upstreams
    ADD COLUMN sslmode text NOT NULL DEFAULT 'prefer'
        CHECK (sslmode IN ('disable', 'prefer', 'require', 'verify-ca', 'verify-full')),
    ADD COLUMN sslrootcert text;
"#,
    ),
    (
        4,
        r#"
-- Tenant lifecycle (src/lifecycle): how pgtenant reaches an upstream as an administrator to
-- create and drop tenant databases, schemas and roles (the password encrypted like tenant
-- passwords), whether a tenant's login role is its own, and why its last operation failed.
ALTER TABLE pgtenant.upstreams
    ADD COLUMN admin_user text,
    ADD COLUMN admin_password text,
    ADD COLUMN admin_database text NOT NULL DEFAULT 'postgres';
ALTER TABLE pgtenant.tenants
    ADD COLUMN login_kind text NOT NULL DEFAULT 'shared' CHECK (login_kind IN ('per_tenant', 'shared')),
    ADD COLUMN last_error text,
    -- What pgtenant made on the upstream for a tenant being created ('role', 'database',
    -- 'schema'), so a failed create removes exactly that and nothing that existed before.
    ADD COLUMN created_objects text[] NOT NULL DEFAULT '{}';

-- Bearer tokens of the HTTP admin API, stored as SHA-256 hex digests.
CREATE TABLE pgtenant.admin_tokens (
    name         text PRIMARY KEY,
    token_sha256 text NOT NULL UNIQUE,
    created_at   timestamptz NOT NULL DEFAULT now()
);
"#,
    ),
    (
        5,
        r#"
-- md5 client authentication per tenant (for old clients), as [proxy] auth allows.
ALTER TABLE pgtenant.tenants DROP CONSTRAINT IF EXISTS tenants_auth_check,
    ADD CONSTRAINT tenants_auth_check CHECK (auth IN ('trust', 'scram-sha-256', 'md5'));
"#,
    ),
    (
        6,
        r#"
-- The authentication methods each upstream may use for pgtenant's logins, as libpq's
-- require_auth (comma-separated scram-sha-256, md5, password, none); NULL: scram-sha-256,
-- plus none for logins without a password or over a Unix socket.
ALTER TABLE pgtenant.upstreams ADD COLUMN require_auth text
    CHECK (require_auth ~ '^(scram-sha-256|md5|password|none)(,(scram-sha-256|md5|password|none))*$');
"#,
    ),
    (
        7,
        r#"
-- Usage per tenant and minute, for billing and for finding noisy neighbours. Each instance
-- adds its deltas (INSERT … ON CONFLICT DO UPDATE adding), so the row is the sum over
-- instances. No foreign key: usage outlives a deleted tenant (bills still need it).
CREATE TABLE pgtenant.usage (
    tenant_id           text NOT NULL,
    minute              timestamptz NOT NULL,
    transactions        bigint NOT NULL DEFAULT 0,
    queries             bigint NOT NULL DEFAULT 0,
    bytes_in            bigint NOT NULL DEFAULT 0,
    bytes_out           bigint NOT NULL DEFAULT 0,
    server_conn_seconds double precision NOT NULL DEFAULT 0,
    client_conn_seconds double precision NOT NULL DEFAULT 0,
    errors              bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, minute)
);
CREATE INDEX usage_minute ON pgtenant.usage (minute);
"#,
    ),
    (
        8,
        r#"
-- The instance registry (src/instances.rs): every pgtenant serving from this control database,
-- with the short number its cancel keys carry (`slot`) and where its peers reach it. A row
-- whose heartbeat is older than three intervals is stale and removed by whoever sees it.
CREATE TABLE pgtenant.instances (
    id              text PRIMARY KEY,
    slot            integer NOT NULL UNIQUE CHECK (slot BETWEEN 1 AND 1023),
    advertised_addr text NOT NULL,
    version         text NOT NULL,
    started_at      timestamptz NOT NULL DEFAULT now(),
    heartbeat_at    timestamptz NOT NULL DEFAULT now()
);
"#,
    ),
    (
        9,
        r#"
-- Caps for the whole service (src/leases.rs). `seen`: the registry's view (slots,
-- comma-separated) the instance last applied to its shares; `settled`: it holds its full
-- shares of that view; `streak_since`: since when it has heartbeated without a gap. Only an
-- instance that has reached the control database for a whole expiry window removes stale
-- rows, so a control database coming back after an outage expires nobody who is alive.
ALTER TABLE pgtenant.instances
    ADD COLUMN seen         text NOT NULL DEFAULT '',
    ADD COLUMN settled      boolean NOT NULL DEFAULT false,
    ADD COLUMN streak_since timestamptz NOT NULL DEFAULT now();
"#,
    ),
    (
        10,
        r#"
-- Console users (database `pgbouncer` / `pgtenant` on the proxy's port) besides `[admin]`
-- in the config file, which wins for a name it knows: SCRAM-SHA-256 verifiers, never
-- plaintext; `admin` may run every command, `stats` only SHOW. Read once per console login.
CREATE TABLE pgtenant.console_users (
    name       text PRIMARY KEY CHECK (name <> ''),
    verifier   text NOT NULL CHECK (verifier LIKE 'SCRAM-SHA-256$%'),
    role       text NOT NULL CHECK (role IN ('admin', 'stats')),
    created_at timestamptz NOT NULL DEFAULT now()
);
"#,
    ),
    (
        11,
        r#"
-- An instance that has stopped accepting (handover, SHUTDOWN WAIT_FOR_CLIENTS, SIGTERM) and
-- waits for its clients to leave, as its heartbeat reports it (SHOW INSTANCES, GET /instances).
ALTER TABLE pgtenant.instances ADD COLUMN draining boolean NOT NULL DEFAULT false;
"#,
    ),
];

/// Applies the missing migrations; returns the versions applied now.
pub async fn migrate(client: &mut tokio_postgres::Client) -> Result<Vec<i32>, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    // One migrator at a time across every pgtenant instance.
    tx.batch_execute(
        "SELECT pg_advisory_xact_lock(hashtext('pgtenant.catalog'));
         CREATE SCHEMA IF NOT EXISTS pgtenant;
         CREATE TABLE IF NOT EXISTS pgtenant.schema_migrations (
             version integer PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now()
         );",
    )
    .await?;
    let done: Vec<i32> = tx
        .query("SELECT version FROM pgtenant.schema_migrations", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut applied = Vec::new();
    for (version, sql) in MIGRATIONS {
        if done.contains(version) {
            continue;
        }
        tx.batch_execute(sql).await?;
        tx.execute("INSERT INTO pgtenant.schema_migrations (version) VALUES ($1)", &[version]).await?;
        applied.push(*version);
    }
    tx.commit().await?;
    Ok(applied)
}
