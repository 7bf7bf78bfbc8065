//! Tenant lifecycle: create (database / schema / role on the upstream, migrations, seeds,
//! first credential), suspend and resume, archive and restore, soft and hard delete, and
//! migrations across every tenant ([`migrate`]). One library, two fronts: the CLI
//! (`pgtenant tenant …`, `pgtenant migrate`) and the HTTP admin API (`crate::admin`).
//!
//! Every operation takes a per-tenant advisory lock in the control database (a second
//! operation on the same tenant gets [`LifecycleError::Conflict`]), writes an event row, and
//! changes the tenant's row, whose trigger NOTIFYs every proxy.
//!
//! A create that fails removes what it created (objects it made are recorded on the row as
//! it makes them, so nothing that existed before is ever dropped) and leaves the tenant
//! `pending` with the error in `last_error`; running create again for a pending tenant
//! cleans up whatever is left and starts over, and delete removes it.

pub mod migrate;
pub mod upstream;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio_postgres::Client;

use crate::catalog::secrets::Keys;
use crate::config::Config;
use crate::model::{AuthMethod, Isolation, PoolMode, TenantId};
use crate::sql::{quote_ident, quote_literal};
pub use migrate::{Applied, MigrationSet};
use upstream::Upstream;

/// Why an operation failed. Each variant maps to one HTTP status and is safe to show the
/// operator (no passwords in it).
#[derive(Debug, Clone, thiserror::Error)]
pub enum LifecycleError {
    /// The request is malformed or names something that does not exist besides the tenant.
    #[error("{0}")]
    Invalid(String),
    #[error("no tenant {0:?}")]
    NotFound(String),
    /// The tenant's state forbids the operation, or another operation holds it.
    #[error("{0}")]
    Conflict(String),
    /// A step on the upstream failed (a migration, a seed, a CREATE): the request was fine.
    #[error("{0}")]
    Failed(String),
    #[error("{0}")]
    Upstream(String),
    #[error("control database: {0}")]
    Catalog(String),
}

/// `what: ERROR <sqlstate>: <message>` from a Postgres error.
pub(crate) fn db_error(what: &str, e: &tokio_postgres::Error) -> LifecycleError {
    LifecycleError::Failed(format!("{what}: {}", db_text(e)))
}

pub(crate) fn db_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => {
            let mut s = format!("{} {}: {}", d.severity(), d.code().code(), d.message());
            if let Some(detail) = d.detail() {
                let _ = write!(s, " ({detail})");
            }
            s
        }
        // "error communicating with the server" says little without its cause.
        None => match std::error::Error::source(e) {
            Some(cause) => format!("{e}: {cause}"),
            None => e.to_string(),
        },
    }
}

fn catalog_error(e: tokio_postgres::Error) -> LifecycleError {
    LifecycleError::Catalog(db_text(&e))
}

/// Whose login a tenant's server connections use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LoginKind {
    /// A role of the tenant's own, created with it, with rights on its database or schema
    /// only: the database enforces isolation.
    PerTenant,
    /// An existing role shared by many tenants (`login_role` + `login_password`): pgtenant
    /// switches search_path / the tenant setting per checkout.
    Shared,
}

impl LoginKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LoginKind::PerTenant => "per_tenant",
            LoginKind::Shared => "shared",
        }
    }
}

/// A first client credential created with the tenant.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    pub name: String,
    pub password: String,
}

/// What `create` is asked for. Only `id` is required.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    pub id: String,
    /// Default `database`.
    pub isolation: Option<Isolation>,
    /// The catalog upstream; default: the only one there is.
    pub upstream: Option<String>,
    /// The tenant's database (`database` isolation, default: the id) or the database its
    /// schema / rows live in (default: `tenants`, created if missing).
    pub database: Option<String>,
    /// `schema` isolation: the schema (default: the id).
    pub schema: Option<String>,
    /// Default `per_tenant` for database and schema isolation, `shared` for shared.
    pub login: Option<LoginKind>,
    /// The role: required with a shared login, default the id with a per-tenant one.
    pub login_role: Option<String>,
    /// The shared role's password (stored encrypted); per-tenant roles get a random one.
    pub login_password: Option<String>,
    /// `database` isolation: CREATE DATABASE … TEMPLATE this.
    pub template: Option<String>,
    pub pool_mode: Option<PoolMode>,
    pub pool_size: Option<u32>,
    pub max_server_connections: Option<u32>,
    pub max_clients: Option<u32>,
    pub auth: Option<AuthMethod>,
    pub search_path_public: Option<bool>,
    /// Run the seed files (default true).
    pub seed: Option<bool>,
    pub user: Option<NewUser>,
}

/// The settings `update` may change (PATCH): pool and client limits, auth.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateTenant {
    pub pool_mode: Option<PoolMode>,
    pub pool_size: Option<u32>,
    pub max_server_connections: Option<u32>,
    pub max_clients: Option<u32>,
    pub auth: Option<AuthMethod>,
    pub search_path_public: Option<bool>,
}

/// A tenant as the catalog has it (no secrets).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TenantInfo {
    pub id: String,
    pub status: String,
    pub isolation: String,
    pub upstream: String,
    pub database: String,
    pub schema: Option<String>,
    pub login_role: String,
    pub login_kind: String,
    pub pool_mode: String,
    pub pool_size: Option<i32>,
    pub max_server_connections: Option<i32>,
    pub max_clients: Option<i32>,
    pub auth: Option<String>,
    pub search_path_public: bool,
    pub version: i64,
    pub created_at: String,
    pub updated_at: String,
    pub last_error: Option<String>,
}

const INFO_SQL: &str =
    "SELECT id, status, isolation, upstream, database, schema_name, login_role, login_kind,
        pool_mode, pool_size, max_server_connections, max_clients, auth, search_path_public, version,
        created_at::text, updated_at::text, last_error
   FROM pgtenant.tenants";

impl TenantInfo {
    fn from_row(r: &tokio_postgres::Row) -> TenantInfo {
        TenantInfo {
            id: r.get(0),
            status: r.get(1),
            isolation: r.get(2),
            upstream: r.get(3),
            database: r.get(4),
            schema: r.get(5),
            login_role: r.get(6),
            login_kind: r.get(7),
            pool_mode: r.get(8),
            pool_size: r.get(9),
            max_server_connections: r.get(10),
            max_clients: r.get(11),
            auth: r.get(12),
            search_path_public: r.get(13),
            version: r.get(14),
            created_at: r.get(15),
            updated_at: r.get(16),
            last_error: r.get(17),
        }
    }

    fn per_tenant(&self) -> bool {
        self.login_kind == LoginKind::PerTenant.as_str()
    }

    /// The database or schema that holds the tenant's data, under its current name
    /// (archived and soft-deleted ones are renamed with a prefix).
    fn physical(&self) -> Option<String> {
        let base = match self.isolation.as_str() {
            "database" => &self.database,
            "schema" => self.schema.as_ref()?,
            _ => return None,
        };
        Some(match self.status.as_str() {
            "archived" => format!("archived_{base}"),
            "deleted" => format!("deleted_{base}"),
            _ => base.clone(),
        })
    }

    /// The database the tenant's data is in right now.
    fn current_database(&self) -> String {
        if self.isolation == "database" {
            self.physical().unwrap_or_else(|| self.database.clone())
        } else {
            self.database.clone()
        }
    }

    fn place(&self) -> migrate::Place {
        let schema = if self.isolation == "schema" { self.physical() } else { None };
        migrate::Place { schema, tenant: self.id.clone() }
    }
}

/// How long an operation waits for another one on the same tenant to end.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// How many clients of a tenant are connected, as the running proxy counts them.
pub trait LiveSessions: Send + Sync {
    fn clients(&self, tenant: &str) -> usize;
}

/// One tenant's line in a migration run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum MigrationOutcome {
    /// Migrations applied now (on a dry run: pending).
    Applied {
        versions: Vec<i32>,
    },
    Current,
    Failed {
        error: String,
    },
    /// Not attempted: an earlier tenant failed under `--on-failure stop`.
    Skipped,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TenantMigration {
    pub tenant: String,
    #[serde(flatten)]
    pub outcome: MigrationOutcome,
    /// The tenant's migration version afterwards.
    pub version: Option<i32>,
}

/// How a migration run goes.
#[derive(Debug, Clone, Default)]
pub struct MigrateOptions {
    /// These tenants; empty = every active or suspended tenant.
    pub tenants: Vec<String>,
    /// Tenants migrated at once (0 = the configured default).
    pub parallel: usize,
    pub dry_run: bool,
    /// Start no further tenant after the first failure.
    pub stop_on_failure: bool,
}

/// A tenant's migration state (for `pgtenant tenant status` and the health endpoint).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MigrationStatus {
    pub tenant: String,
    pub status: String,
    /// Highest applied version (None: none yet).
    pub version: Option<i32>,
    /// Highest version in the migrations directory.
    pub latest: Option<i32>,
    pub behind: bool,
    /// Why the version could not be read.
    pub error: Option<String>,
}

/// The lifecycle operations, over one control database.
pub struct Lifecycle {
    /// The control database (TLS as its URL asks).
    control: crate::catalog::link::ControlLink,
    keys: Option<Keys>,
    pub migrations: Arc<MigrationSet>,
    seeds: Arc<Vec<(String, String)>>,
    parallel: usize,
    sessions: Option<Arc<dyn LiveSessions>>,
}

impl Lifecycle {
    /// From `[catalog]` (url, key file) and `[lifecycle]` (migrations, seeds).
    pub fn from_config(config: &Config) -> Result<Lifecycle, LifecycleError> {
        let url = &config.catalog.url;
        if url.is_empty() {
            return Err(LifecycleError::Invalid(
                "tenant lifecycle needs a control database: pass --url or set [catalog] url".into(),
            ));
        }
        let mut control = crate::catalog::link::ControlLink::parse(url)
            .map_err(|e| LifecycleError::Invalid(format!("[catalog] url: {e}")))?;
        if control.config.get_application_name().is_none() {
            control.config.application_name("pgtenant lifecycle");
        }
        let keys =
            crate::catalog::secrets::load(&config.catalog.key_file).map_err(LifecycleError::Invalid)?;
        Ok(Lifecycle {
            control,
            keys,
            migrations: Arc::new(MigrationSet::load(&config.lifecycle.migrations)?),
            seeds: Arc::new(migrate::sql_files(&config.lifecycle.seeds)?),
            parallel: config.lifecycle.parallel.unwrap_or(4).max(1),
            sessions: None,
        })
    }

    /// Counts connected clients through a running proxy (the HTTP API does).
    pub fn with_sessions(mut self, sessions: Arc<dyn LiveSessions>) -> Lifecycle {
        self.sessions = Some(sessions);
        self
    }

    async fn control(&self) -> Result<Client, LifecycleError> {
        let (client, conn) = self.control.connect().await.map_err(catalog_error)?;
        tokio::spawn(conn);
        Ok(client)
    }

    /// A control connection holding the tenant's operation lock (released when it closes).
    async fn locked(&self, id: &str) -> Result<Client, LifecycleError> {
        let db = self.control().await?;
        // The lock of an operation that just ended goes when its connection's backend exits,
        // a moment after the operation returned; a running operation gets a few seconds to
        // end before this one gives up.
        let deadline = tokio::time::Instant::now() + LOCK_WAIT;
        loop {
            let got: bool = db
                .query_one("SELECT pg_try_advisory_lock(hashtext('pgtenant.tenant'), hashtext($1))", &[&id])
                .await
                .map_err(catalog_error)?
                .get(0);
            if got {
                return Ok(db);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(LifecycleError::Conflict(format!(
                    "another operation on tenant {id:?} is in progress; try again when it ends"
                )));
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
    }

    fn upstream_keys(&self) -> Option<&Keys> {
        self.keys.as_ref()
    }

    async fn info(db: &Client, id: &str) -> Result<TenantInfo, LifecycleError> {
        let row = db
            .query_opt(&format!("{INFO_SQL} WHERE id = $1"), &[&id])
            .await
            .map_err(catalog_error)?
            .ok_or_else(|| LifecycleError::NotFound(id.to_owned()))?;
        Ok(TenantInfo::from_row(&row))
    }

    async fn event(
        db: &Client,
        id: &str,
        kind: &str,
        detail: serde_json::Value,
    ) -> Result<(), LifecycleError> {
        db.execute(
            "INSERT INTO pgtenant.events (tenant_id, kind, detail) VALUES (nullif($1, ''), $2, $3::text::jsonb)",
            &[&id, &kind, &detail.to_string()],
        )
        .await
        .map_err(catalog_error)?;
        Ok(())
    }

    pub async fn get(&self, id: &str) -> Result<TenantInfo, LifecycleError> {
        let id = parse_id(id)?;
        Self::info(&self.control().await?, &id).await
    }

    pub async fn list(&self) -> Result<Vec<TenantInfo>, LifecycleError> {
        let db = self.control().await?;
        let rows = db.query(&format!("{INFO_SQL} ORDER BY id"), &[]).await.map_err(catalog_error)?;
        Ok(rows.iter().map(TenantInfo::from_row).collect())
    }

    /// Creates a tenant (see the module comment for what happens on failure).
    pub async fn create(&self, req: CreateTenant) -> Result<TenantInfo, LifecycleError> {
        let id = parse_id(&req.id)?;
        let db = self.locked(&id).await?;
        let plan = self.plan(&db, &id, &req).await?;
        if let Some(row) = db
            .query_opt("SELECT status FROM pgtenant.tenants WHERE id = $1", &[&id])
            .await
            .map_err(catalog_error)?
        {
            let status: String = row.get(0);
            if status != "pending" {
                return Err(LifecycleError::Conflict(format!("tenant {id:?} already exists ({status})")));
            }
            // A half-created tenant: remove what its last attempt left, then start over.
            let old = Self::info(&db, &id).await?;
            self.teardown(&db, &old).await?;
            db.execute("DELETE FROM pgtenant.tenants WHERE id = $1", &[&id]).await.map_err(catalog_error)?;
        }
        let upstream = Upstream::load(&db, &plan.upstream, self.upstream_keys()).await?;
        let password = match plan.login {
            LoginKind::PerTenant => Some(random_password()),
            LoginKind::Shared => req.login_password.clone(),
        };
        let stored = password.as_deref().map(|p| match &self.keys {
            Some(k) => k.encrypt(p),
            None => {
                tracing::warn!(tenant = %id, "no master key configured: the upstream password is stored in plaintext");
                p.to_owned()
            }
        });
        let int = |v: Option<u32>| v.map(|n| i32::try_from(n).unwrap_or(i32::MAX));
        db.execute(
            "INSERT INTO pgtenant.tenants (id, status, isolation, upstream, database, schema_name,
                 search_path_public, login_role, login_password, login_kind, pool_mode, pool_size,
                 max_server_connections, max_clients, auth)
             VALUES ($1, 'pending', $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
            &[
                &id.as_str(),
                &plan.isolation.as_str(),
                &plan.upstream,
                &plan.database,
                &plan.schema,
                &req.search_path_public.unwrap_or(false),
                &plan.role,
                &stored,
                &plan.login.as_str(),
                &req.pool_mode.unwrap_or(PoolMode::Transaction).as_str(),
                &int(req.pool_size),
                &int(req.max_server_connections),
                &int(req.max_clients),
                &req.auth.map(AuthMethod::as_str),
            ],
        )
        .await
        .map_err(|e| match e.code() {
            Some(c) if *c == tokio_postgres::error::SqlState::CHECK_VIOLATION => {
                LifecycleError::Invalid(format!("tenant {id:?}: {}", db_text(&e)))
            }
            _ => catalog_error(e),
        })?;
        let info = Self::info(&db, &id).await?;
        let done = async {
            self.provision(&db, &upstream, &plan, &info, password.as_deref(), req.template.as_deref())
                .await?;
            let place = info.place();
            // Migrations and seeds run over the tenant's own login (see migrate::Place).
            let tenant_db = upstream.login_as(&plan.role, password.clone()).connect(&plan.database).await?;
            let applied = migrate::apply(&tenant_db, &place, &self.migrations, false).await?;
            if req.seed.unwrap_or(true) {
                migrate::seed(&tenant_db, &place, &self.seeds).await?;
            }
            if let Some(user) = &req.user {
                add_user(&db, &id, &user.name, &user.password).await?;
            }
            Ok::<_, LifecycleError>(applied)
        }
        .await;
        match done {
            Ok(applied) => {
                db.execute(
                    "UPDATE pgtenant.tenants SET status = 'active', last_error = NULL WHERE id = $1",
                    &[&id.as_str()],
                )
                .await
                .map_err(catalog_error)?;
                Self::event(
                    &db,
                    &id,
                    "created",
                    serde_json::json!({
                        "isolation": plan.isolation.as_str(),
                        "upstream": plan.upstream,
                        "migrations": applied.versions,
                    }),
                )
                .await?;
                Self::info(&db, &id).await
            }
            Err(e) => {
                let info = Self::info(&db, &id).await?;
                let cleanup = self.teardown(&db, &info).await.err();
                let mut message = e.to_string();
                if let Some(c) = &cleanup {
                    let _ = write!(message, "; cleaning up also failed: {c}");
                }
                db.execute(
                    "UPDATE pgtenant.tenants SET last_error = $2 WHERE id = $1",
                    &[&id.as_str(), &message],
                )
                .await
                .map_err(catalog_error)?;
                Self::event(&db, &id, "create_failed", serde_json::json!({ "error": message })).await?;
                Err(match e {
                    LifecycleError::Failed(m) => {
                        LifecycleError::Failed(format!("tenant {id:?} not created: {m}"))
                    }
                    other => other,
                })
            }
        }
    }

    /// Validates a create request and fills in the defaults.
    async fn plan(&self, db: &Client, id: &str, req: &CreateTenant) -> Result<Plan, LifecycleError> {
        let isolation = req.isolation.unwrap_or(Isolation::Database);
        let login = req.login.unwrap_or(match isolation {
            Isolation::Shared => LoginKind::Shared,
            _ => LoginKind::PerTenant,
        });
        let upstream = match &req.upstream {
            Some(u) => u.clone(),
            None => {
                let rows = db
                    .query("SELECT name FROM pgtenant.upstreams ORDER BY name", &[])
                    .await
                    .map_err(catalog_error)?;
                match rows.as_slice() {
                    [one] => one.get(0),
                    [] => return Err(LifecycleError::Invalid("the catalog has no upstream yet".into())),
                    _ => {
                        return Err(LifecycleError::Invalid(
                            "the catalog has several upstreams: name one with \"upstream\"".into(),
                        ))
                    }
                }
            }
        };
        let database = match (&req.database, isolation) {
            (Some(d), _) => d.clone(),
            (None, Isolation::Database) => id.to_string(),
            (None, _) => "tenants".to_owned(),
        };
        let schema = match isolation {
            Isolation::Schema => Some(req.schema.clone().unwrap_or_else(|| id.to_string())),
            _ if req.schema.is_some() => {
                return Err(LifecycleError::Invalid("\"schema\" applies to schema isolation only".into()))
            }
            _ => None,
        };
        let role = match (login, &req.login_role) {
            (_, Some(r)) => r.clone(),
            (LoginKind::PerTenant, None) => id.to_string(),
            (LoginKind::Shared, None) => return Err(LifecycleError::Invalid(
                "a shared login needs \"login_role\" (and \"login_password\" unless the upstream trusts it)"
                    .into(),
            )),
        };
        if login == LoginKind::PerTenant && isolation == Isolation::Shared {
            return Err(LifecycleError::Invalid(
                "shared isolation keeps every tenant's rows in the same tables: it takes a shared login \
                 (\"login_role\" of the role that owns them)"
                    .into(),
            ));
        }
        if req.auth == Some(AuthMethod::Md5) && req.user.is_some() {
            return Err(LifecycleError::Invalid(
                "md5 tenants' users are stored as md5 hashes of the name the client sends: add them with \
                 `pgtenant hash-password --md5-user …` rather than \"user\""
                    .into(),
            ));
        }
        if login == LoginKind::PerTenant && req.login_password.is_some() {
            return Err(LifecycleError::Invalid(
                "a per-tenant role gets a generated password: \"login_password\" is for shared logins".into(),
            ));
        }
        if req.template.is_some() && isolation != Isolation::Database {
            return Err(LifecycleError::Invalid("\"template\" applies to database isolation only".into()));
        }
        for (what, name) in
            [("database", Some(&database)), ("schema", schema.as_ref()), ("login_role", Some(&role))]
        {
            if let Some(name) = name {
                valid_name(what, name)?;
            }
        }
        if let Some(t) = &req.template {
            valid_name("template", t)?;
        }
        if let Some(u) = &req.user {
            if u.name.is_empty() || u.password.is_empty() {
                return Err(LifecycleError::Invalid("\"user\" needs a name and a password".into()));
            }
        }
        Ok(Plan { isolation, login, upstream, database, schema, role })
    }

    /// Makes the tenant's role, database or schema on the upstream, recording each on the
    /// tenant's row as soon as it exists.
    async fn provision(
        &self,
        db: &Client,
        upstream: &Upstream,
        plan: &Plan,
        info: &TenantInfo,
        password: Option<&str>,
        template: Option<&str>,
    ) -> Result<(), LifecycleError> {
        let role = quote_ident(&plan.role);
        let database = quote_ident(&plan.database);
        let record = |object: &'static str| async move {
            db.execute(
                "UPDATE pgtenant.tenants SET created_objects = array_append(created_objects, $2) WHERE id = $1",
                &[&info.id, &object],
            )
            .await
            .map_err(catalog_error)
        };
        let admin = upstream.connect(&upstream.admin_database).await?;
        let run = |sql: String| {
            let admin = &admin;
            async move { admin.batch_execute(&sql).await.map_err(|e| db_error(upstream::sql_head(&sql), &e)) }
        };
        if plan.login == LoginKind::PerTenant {
            // The password goes over as a SCRAM verifier, so it is not in the server's logs.
            let verifier = crate::auth::Verifier::hash(password.unwrap_or_default());
            run(format!("CREATE ROLE {role} LOGIN PASSWORD {}", quote_literal(&verifier))).await?;
            record("role").await?;
            // The administrator runs migrations as the tenant (SET ROLE), so that the
            // tenant owns what they create.
            run(format!("GRANT {role} TO CURRENT_USER")).await?;
        }
        let exists = |name: String| {
            let admin = &admin;
            async move {
                admin
                    .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
                    .await
                    .map(|r| r.is_some())
                    .map_err(|e| db_error("reading pg_database", &e))
            }
        };
        match plan.isolation {
            Isolation::Database => {
                let template = template.map(|t| format!(" TEMPLATE {}", quote_ident(t))).unwrap_or_default();
                run(format!("CREATE DATABASE {database} OWNER {role}{template}")).await?;
                record("database").await?;
                run(format!("REVOKE CONNECT, TEMPORARY ON DATABASE {database} FROM PUBLIC")).await?;
                run(format!("GRANT CONNECT, TEMPORARY ON DATABASE {database} TO {role}")).await?;
            }
            Isolation::Schema | Isolation::Shared => {
                if !exists(plan.database.clone()).await? {
                    // The database many tenants share; it outlives any one of them. Owned by
                    // a shared login, so its migrations can create tables in `public`.
                    let owner = match plan.login {
                        LoginKind::Shared => format!(" OWNER {role}"),
                        LoginKind::PerTenant => String::new(),
                    };
                    let sql = format!("CREATE DATABASE {database}{owner}");
                    match admin.batch_execute(&sql).await {
                        Ok(()) => {}
                        // Another create made it in the meantime.
                        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_DATABASE) => {}
                        Err(e) => return Err(db_error(upstream::sql_head(&sql), &e)),
                    }
                }
                run(format!("GRANT CONNECT ON DATABASE {database} TO {role}")).await?;
                if let Some(schema) = &plan.schema {
                    let on_db = upstream.connect(&plan.database).await?;
                    let sql = format!("CREATE SCHEMA {} AUTHORIZATION {role}", quote_ident(schema));
                    on_db.batch_execute(&sql).await.map_err(|e| db_error(upstream::sql_head(&sql), &e))?;
                    record("schema").await?;
                }
            }
        }
        Ok(())
    }

    /// Drops what a (half-)created tenant's row records as made by pgtenant.
    async fn teardown(&self, db: &Client, info: &TenantInfo) -> Result<(), LifecycleError> {
        let created: Vec<String> = db
            .query_one("SELECT created_objects FROM pgtenant.tenants WHERE id = $1", &[&info.id])
            .await
            .map_err(catalog_error)?
            .get(0);
        if created.is_empty() {
            return Ok(());
        }
        let upstream = Upstream::load(db, &info.upstream, self.upstream_keys()).await?;
        self.drop_objects(
            &upstream,
            info,
            created.iter().any(|o| o == "database"),
            created.iter().any(|o| o == "schema"),
            created.iter().any(|o| o == "role"),
        )
        .await?;
        db.execute("UPDATE pgtenant.tenants SET created_objects = '{}' WHERE id = $1", &[&info.id])
            .await
            .map_err(catalog_error)?;
        Ok(())
    }

    /// Drops the tenant's database or schema (under its current name) and its role.
    async fn drop_objects(
        &self,
        upstream: &Upstream,
        info: &TenantInfo,
        database: bool,
        schema: bool,
        role: bool,
    ) -> Result<(), LifecycleError> {
        let role_name = quote_ident(&info.login_role);
        if database {
            let name = quote_ident(&info.current_database());
            upstream.admin(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await?;
        }
        if schema || role {
            let on_db = match upstream.connect(&info.database).await {
                Ok(c) => Some(c),
                // The shared database itself may be gone; then so is the schema.
                Err(_) if !schema => None,
                Err(e) => return Err(e),
            };
            if let Some(on_db) = on_db {
                if schema {
                    if let Some(s) = info.physical() {
                        let sql = format!("DROP SCHEMA IF EXISTS {} CASCADE", quote_ident(&s));
                        on_db.batch_execute(&sql).await.map_err(|e| db_error("DROP SCHEMA", &e))?;
                    }
                }
                if role {
                    // Privileges the role holds in the shared database (CONNECT on it,
                    // anything granted to it) go with DROP OWNED.
                    let exists = on_db
                        .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&info.login_role])
                        .await
                        .map_err(|e| db_error("reading pg_roles", &e))?
                        .is_some();
                    if exists {
                        let sql = format!("DROP OWNED BY {role_name}");
                        on_db.batch_execute(&sql).await.map_err(|e| db_error("DROP OWNED", &e))?;
                    }
                }
            }
        }
        if role {
            upstream.admin(&format!("DROP ROLE IF EXISTS {role_name}")).await?;
        }
        Ok(())
    }

    /// Changes the status from one of `from` to `to` (nothing on the upstream).
    async fn set_status(
        &self,
        id: &str,
        from: &[&str],
        to: &str,
        event: &str,
    ) -> Result<TenantInfo, LifecycleError> {
        let id = parse_id(id)?;
        let db = self.locked(&id).await?;
        let info = Self::info(&db, &id).await?;
        if info.status == to {
            return Ok(info);
        }
        if !from.contains(&info.status.as_str()) {
            return Err(LifecycleError::Conflict(format!(
                "tenant {id:?} is {}: it cannot be {to} from there",
                info.status
            )));
        }
        db.execute("UPDATE pgtenant.tenants SET status = $2 WHERE id = $1", &[&id.as_str(), &to])
            .await
            .map_err(catalog_error)?;
        Self::event(&db, &id, event, serde_json::json!({ "from": info.status })).await?;
        Self::info(&db, &id).await
    }

    /// Stops new connections (57P03) and closes open sessions at their transaction's end.
    pub async fn suspend(&self, id: &str) -> Result<TenantInfo, LifecycleError> {
        self.set_status(id, &["active"], "suspended", "suspended").await
    }

    pub async fn resume(&self, id: &str) -> Result<TenantInfo, LifecycleError> {
        self.set_status(id, &["suspended"], "active", "resumed").await
    }

    pub async fn update(&self, id: &str, patch: UpdateTenant) -> Result<TenantInfo, LifecycleError> {
        let id = parse_id(id)?;
        let db = self.locked(&id).await?;
        Self::info(&db, &id).await?;
        let int = |v: Option<u32>| v.map(|n| i32::try_from(n).unwrap_or(i32::MAX));
        if patch.pool_size == Some(0)
            || patch.max_server_connections == Some(0)
            || patch.max_clients == Some(0)
        {
            return Err(LifecycleError::Invalid("sizes and limits must be at least 1".into()));
        }
        db.execute(
            "UPDATE pgtenant.tenants SET
                 pool_mode = coalesce($2, pool_mode),
                 pool_size = coalesce($3, pool_size),
                 max_server_connections = coalesce($4, max_server_connections),
                 max_clients = coalesce($5, max_clients),
                 auth = coalesce($6, auth),
                 search_path_public = coalesce($7, search_path_public)
             WHERE id = $1",
            &[
                &id.as_str(),
                &patch.pool_mode.map(PoolMode::as_str),
                &int(patch.pool_size),
                &int(patch.max_server_connections),
                &int(patch.max_clients),
                &patch.auth.map(AuthMethod::as_str),
                &patch.search_path_public,
            ],
        )
        .await
        .map_err(|e| match e.code() {
            Some(c) if *c == tokio_postgres::error::SqlState::CHECK_VIOLATION => {
                LifecycleError::Invalid(format!("tenant {id:?}: {}", db_text(&e)))
            }
            _ => catalog_error(e),
        })?;
        Self::event(&db, &id, "updated", serde_json::json!({})).await?;
        Self::info(&db, &id).await
    }

    /// Clients connected to the tenant: the proxy's own count when running inside one,
    /// else the tenant's busy backends on the upstream (clients between transactions in
    /// transaction mode hold none, so the CLI cannot see them).
    async fn connected(&self, upstream: &Upstream, info: &TenantInfo) -> Result<usize, LifecycleError> {
        if let Some(s) = &self.sessions {
            return Ok(s.clients(&info.id));
        }
        let admin = upstream.connect(&upstream.admin_database).await?;
        let (column, value) = match (info.isolation.as_str(), info.per_tenant()) {
            ("database", _) => ("datname", info.current_database()),
            (_, true) => ("usename", info.login_role.clone()),
            _ => return Ok(0),
        };
        let n: i64 = admin
            .query_one(
                &format!(
                    "SELECT count(*) FROM pg_stat_activity WHERE {column} = $1 AND state IS DISTINCT FROM 'idle'
                       AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
                ),
                &[&value],
            )
            .await
            .map_err(|e| db_error("reading pg_stat_activity", &e))?
            .get(0);
        Ok(usize::try_from(n).unwrap_or(0))
    }

    /// Renames the tenant's database or schema from its name under `info.status` to its
    /// name under `to`. Backends still on a database being renamed (the proxies' idle
    /// server connections) are terminated first: Postgres refuses to rename a database in use.
    async fn rename(&self, upstream: &Upstream, info: &TenantInfo, to: &str) -> Result<(), LifecycleError> {
        let Some(from) = info.physical() else { return Ok(()) };
        let target = TenantInfo { status: to.to_owned(), ..info.clone() };
        let Some(new) = target.physical() else { return Ok(()) };
        if from == new {
            return Ok(());
        }
        if info.isolation == "database" {
            let admin = upstream.connect(&upstream.admin_database).await?;
            let sql = format!("ALTER DATABASE {} RENAME TO {}", quote_ident(&from), quote_ident(&new));
            // A terminated backend takes a moment to leave, and a proxy that has not seen the
            // status change yet may connect again: terminate, try, repeat.
            let mut tries = 0;
            loop {
                admin
                    .execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                        &[&from],
                    )
                    .await
                    .map_err(|e| db_error("closing connections", &e))?;
                match admin.batch_execute(&sql).await {
                    Ok(()) => break,
                    Err(e)
                        if tries < 50
                            && e.code() == Some(&tokio_postgres::error::SqlState::OBJECT_IN_USE) =>
                    {
                        tries += 1;
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    }
                    Err(e) => return Err(db_error("ALTER DATABASE RENAME", &e)),
                }
            }
        } else {
            let on_db = upstream.connect(&info.database).await?;
            let sql = format!("ALTER SCHEMA {} RENAME TO {}", quote_ident(&from), quote_ident(&new));
            on_db.batch_execute(&sql).await.map_err(|e| db_error("ALTER SCHEMA RENAME", &e))?;
        }
        Ok(())
    }

    /// Takes the tenant offline (3D000) and renames its database or schema `archived_…`.
    /// Refused while clients are connected unless `force`.
    pub async fn archive(&self, id: &str, force: bool) -> Result<TenantInfo, LifecycleError> {
        self.retire(id, force, "archived").await
    }

    /// Brings an archived (or soft-deleted) tenant back: original name, status active.
    pub async fn restore(&self, id: &str) -> Result<TenantInfo, LifecycleError> {
        let id = parse_id(id)?;
        let db = self.locked(&id).await?;
        let info = Self::info(&db, &id).await?;
        if info.status != "archived" && info.status != "deleted" {
            return Err(LifecycleError::Conflict(format!(
                "tenant {id:?} is {}: only archived or deleted tenants are restored",
                info.status
            )));
        }
        let upstream = Upstream::load(&db, &info.upstream, self.upstream_keys()).await?;
        self.rename(&upstream, &info, "active").await?;
        db.execute("UPDATE pgtenant.tenants SET status = 'active' WHERE id = $1", &[&id.as_str()])
            .await
            .map_err(catalog_error)?;
        Self::event(&db, &id, "restored", serde_json::json!({ "from": info.status })).await?;
        Self::info(&db, &id).await
    }

    /// Soft delete (`hard = false`): like archive, under `deleted_…`, status `deleted`.
    /// Hard delete: drops the database or schema, the tenant's own role, its credentials
    /// and its catalog row (the events stay).
    pub async fn delete(&self, id: &str, hard: bool, force: bool) -> Result<(), LifecycleError> {
        if !hard {
            return self.retire(id, force, "deleted").await.map(|_| ());
        }
        let id = parse_id(id)?;
        let db = self.locked(&id).await?;
        let info = Self::info(&db, &id).await?;
        let upstream = Upstream::load(&db, &info.upstream, self.upstream_keys()).await?;
        if !force && info.status == "active" {
            let n = self.connected(&upstream, &info).await?;
            if n > 0 {
                return Err(in_use(&id, n));
            }
        }
        if info.status == "pending" {
            self.teardown(&db, &info).await?;
        } else {
            // Stop the proxies first (the NOTIFY closes sessions and refuses new ones) with a
            // status that keeps the objects' names as they are, so a failed drop leaves a
            // row that still says where the data is.
            self.take_offline(&db, &info).await?;
            let dropped = self
                .drop_objects(
                    &upstream,
                    &info,
                    info.isolation == "database",
                    info.isolation == "schema",
                    info.per_tenant(),
                )
                .await;
            if let Err(e) = dropped {
                self.failed(&db, &id, "delete_failed", &e).await?;
                return Err(e);
            }
        }
        db.execute("DELETE FROM pgtenant.tenants WHERE id = $1", &[&id.as_str()])
            .await
            .map_err(catalog_error)?;
        Self::event(&db, &id, "deleted", serde_json::json!({ "hard": true, "isolation": info.isolation }))
            .await?;
        Ok(())
    }

    /// An active tenant becomes suspended (its names unchanged): proxies close its sessions
    /// and refuse new ones before its database or schema is renamed or dropped.
    async fn take_offline(&self, db: &Client, info: &TenantInfo) -> Result<(), LifecycleError> {
        if info.status == "active" {
            db.execute("UPDATE pgtenant.tenants SET status = 'suspended' WHERE id = $1", &[&info.id])
                .await
                .map_err(catalog_error)?;
        }
        Ok(())
    }

    /// Records why an operation failed, on the row and as an event.
    async fn failed(
        &self,
        db: &Client,
        id: &str,
        kind: &str,
        e: &LifecycleError,
    ) -> Result<(), LifecycleError> {
        db.execute("UPDATE pgtenant.tenants SET last_error = $2 WHERE id = $1", &[&id, &e.to_string()])
            .await
            .map_err(catalog_error)?;
        Self::event(db, id, kind, serde_json::json!({ "error": e.to_string() })).await
    }

    async fn retire(&self, id: &str, force: bool, to: &str) -> Result<TenantInfo, LifecycleError> {
        let id = parse_id(id)?;
        let db = self.locked(&id).await?;
        let info = Self::info(&db, &id).await?;
        if info.status == to {
            return Ok(info);
        }
        let allowed: &[&str] =
            if to == "deleted" { &["active", "suspended", "archived"] } else { &["active", "suspended"] };
        if !allowed.contains(&info.status.as_str()) {
            return Err(LifecycleError::Conflict(format!(
                "tenant {id:?} is {}: it cannot be {to} from there",
                info.status
            )));
        }
        let upstream = Upstream::load(&db, &info.upstream, self.upstream_keys()).await?;
        if !force && info.status == "active" {
            let n = self.connected(&upstream, &info).await?;
            if n > 0 {
                return Err(in_use(&id, n));
            }
        }
        // Offline first (proxies close sessions and refuse new ones at the NOTIFY) under a
        // status that keeps the names, then the rename, then the status that goes with the
        // new name; if the rename fails the status goes back.
        self.take_offline(&db, &info).await?;
        if let Err(e) = self.rename(&upstream, &info, to).await {
            db.execute(
                "UPDATE pgtenant.tenants SET status = $2 WHERE id = $1",
                &[&id.as_str(), &info.status],
            )
            .await
            .map_err(catalog_error)?;
            self.failed(&db, &id, &format!("{to}_failed"), &e).await?;
            return Err(e);
        }
        db.execute(
            "UPDATE pgtenant.tenants SET status = $2, last_error = NULL WHERE id = $1",
            &[&id.as_str(), &to],
        )
        .await
        .map_err(catalog_error)?;
        Self::event(&db, &id, to, serde_json::json!({ "from": info.status, "forced": force })).await?;
        Self::info(&db, &id).await
    }

    /// Moves a `database` tenant to another upstream: offline (status `migrating`, 57P03 for
    /// new clients), the same role and password on the target, `pg_dump | pg_restore` of its
    /// database (objects owned by the tenant's role), then the catalog points at the target
    /// and the source database (and the tenant's own role there) is dropped. On failure what
    /// was made on the target is dropped and the tenant goes back as it was. Needs `pg_dump`
    /// and `pg_restore` (PATH, `$PGTENANT_PG_BINDIR` or /usr/lib/postgresql/*/bin) no older
    /// than either server.
    pub async fn relocate(&self, id: &str, to: &str) -> Result<TenantInfo, LifecycleError> {
        let id = parse_id(id)?;
        let db = self.locked(&id).await?;
        let info = Self::info(&db, &id).await?;
        if info.isolation != "database" {
            return Err(LifecycleError::Invalid(format!(
                "tenant {id:?} uses {} isolation: only database tenants are moved (dump and restore of a \
                 schema between shared databases is not built)",
                info.isolation
            )));
        }
        if info.status != "active" && info.status != "suspended" {
            return Err(LifecycleError::Conflict(format!(
                "tenant {id:?} is {}: it cannot be moved",
                info.status
            )));
        }
        if info.upstream == to {
            return Ok(info);
        }
        let source = Upstream::load(&db, &info.upstream, self.upstream_keys()).await?;
        let target = Upstream::load(&db, to, self.upstream_keys()).await?;
        let (dump, restore) = (tool("pg_dump")?, tool("pg_restore")?);
        db.execute("UPDATE pgtenant.tenants SET status = 'migrating' WHERE id = $1", &[&id.as_str()])
            .await
            .map_err(catalog_error)?;
        let moved = async {
            let role = quote_ident(&info.login_role);
            let database = quote_ident(&info.database);
            let mut made_role = false;
            if info.per_tenant() {
                // The same password: the proxies' stored one keeps working.
                let stored: Option<String> = db
                    .query_one("SELECT login_password FROM pgtenant.tenants WHERE id = $1", &[&id.as_str()])
                    .await
                    .map_err(catalog_error)?
                    .get(0);
                let password = self.reveal(&id, stored)?.unwrap_or_default();
                let verifier = crate::auth::Verifier::hash(&password);
                target.admin(&format!("CREATE ROLE {role} LOGIN PASSWORD {}", quote_literal(&verifier))).await?;
                made_role = true;
                target.admin(&format!("GRANT {role} TO CURRENT_USER")).await?;
            }
            let copied = async {
                target.admin(&format!("CREATE DATABASE {database} OWNER {role}")).await?;
                target.admin(&format!("REVOKE CONNECT, TEMPORARY ON DATABASE {database} FROM PUBLIC")).await?;
                target.admin(&format!("GRANT CONNECT, TEMPORARY ON DATABASE {database} TO {role}")).await?;
                // The proxies' idle connections to the source go now; nothing writes there
                // while it is copied (the tenant is offline).
                let admin = source.connect(&source.admin_database).await?;
                admin
                    .execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                        &[&info.database],
                    )
                    .await
                    .map_err(|e| db_error("closing connections", &e))?;
                dump_restore(&dump, &restore, &source, &target, &info.database, &info.login_role).await
            }
            .await;
            if let Err(e) = copied {
                let _ = target.admin(&format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)")).await;
                if made_role {
                    let _ = target.admin(&format!("DROP ROLE IF EXISTS {role}")).await;
                }
                return Err(e);
            }
            Ok(())
        }
        .await;
        if let Err(e) = moved {
            db.execute(
                "UPDATE pgtenant.tenants SET status = $2 WHERE id = $1",
                &[&id.as_str(), &info.status],
            )
            .await
            .map_err(catalog_error)?;
            self.failed(&db, &id, "move_failed", &e).await?;
            return Err(e);
        }
        db.execute(
            "UPDATE pgtenant.tenants SET upstream = $2, status = $3, last_error = NULL WHERE id = $1",
            &[&id.as_str(), &to, &info.status],
        )
        .await
        .map_err(catalog_error)?;
        Self::event(&db, &id, "moved", serde_json::json!({ "from": info.upstream, "to": to })).await?;
        // The copy is in place and the catalog points at it: the source goes.
        if let Err(e) = self.drop_objects(&source, &info, true, false, info.per_tenant()).await {
            tracing::warn!(tenant = %id, error = %e, "moved, but the source database is still there");
        }
        Self::info(&db, &id).await
    }

    /// Applies the migrations to the chosen tenants, `parallel` at a time; `progress` is
    /// called as each tenant finishes with (finished so far, total).
    pub async fn migrate(
        &self,
        opts: &MigrateOptions,
        progress: &(dyn Fn(&TenantMigration, usize, usize) + Send + Sync),
    ) -> Result<Vec<TenantMigration>, LifecycleError> {
        let db = self.control().await?;
        let tenants = self.targets(&db, &opts.tenants).await?;
        let upstreams = self.upstreams_of(&db, &tenants).await?;
        let total = tenants.len();
        let stop = AtomicBool::new(false);
        let finished = AtomicUsize::new(0);
        let parallel = if opts.parallel == 0 { self.parallel } else { opts.parallel };
        // Control connections for the tenant locks, one per tenant in flight, reused.
        let spare: std::sync::Mutex<Vec<Client>> = std::sync::Mutex::new(Vec::new());
        let run_one = |info: TenantInfo| {
            let (stop, finished, upstreams, spare) = (&stop, &finished, &upstreams, &spare);
            async move {
                let result = if stop.load(Ordering::Relaxed) {
                    TenantMigration {
                        tenant: info.id.clone(),
                        outcome: MigrationOutcome::Skipped,
                        version: None,
                    }
                } else {
                    let reused = spare.lock().unwrap_or_else(|e| e.into_inner()).pop();
                    let control = match reused {
                        Some(c) => Ok(c),
                        None => self.control().await,
                    };
                    match control {
                        Ok(control) => {
                            let r = self
                                .migrate_one(&control, &info, upstreams.get(&info.upstream), opts.dry_run)
                                .await;
                            spare.lock().unwrap_or_else(|e| e.into_inner()).push(control);
                            r
                        }
                        Err(e) => TenantMigration {
                            tenant: info.id.clone(),
                            outcome: MigrationOutcome::Failed { error: e.to_string() },
                            version: None,
                        },
                    }
                };
                if matches!(result.outcome, MigrationOutcome::Failed { .. }) && opts.stop_on_failure {
                    stop.store(true, Ordering::Relaxed);
                }
                let n = finished.fetch_add(1, Ordering::Relaxed) + 1;
                progress(&result, n, total);
                result
            }
        };
        let mut results: Vec<TenantMigration> = futures_util::stream::iter(tenants)
            .map(run_one)
            .buffer_unordered(parallel.max(1))
            .collect()
            .await;
        results.sort_by(|a, b| a.tenant.cmp(&b.tenant));
        if !opts.dry_run {
            let failed: Vec<&str> = results
                .iter()
                .filter(|r| matches!(r.outcome, MigrationOutcome::Failed { .. }))
                .map(|r| r.tenant.as_str())
                .collect();
            let applied =
                results.iter().filter(|r| matches!(r.outcome, MigrationOutcome::Applied { .. })).count();
            let _ = Self::event(
                &db,
                "",
                "migrated",
                serde_json::json!({ "tenants": total, "applied": applied, "failed": failed }),
            )
            .await;
        }
        Ok(results)
    }

    /// Migrates one tenant, holding its operation lock on `control` (waited for as long as
    /// it takes: another migrator or an archive finishes first) and released at the end.
    async fn migrate_one(
        &self,
        control: &Client,
        info: &TenantInfo,
        upstream: Option<&Result<Upstream, LifecycleError>>,
        dry_run: bool,
    ) -> TenantMigration {
        let lock = "SELECT pg_advisory_lock(hashtext('pgtenant.tenant'), hashtext($1))";
        let unlock = "SELECT pg_advisory_unlock(hashtext('pgtenant.tenant'), hashtext($1))";
        let run = async {
            control.execute(lock, &[&info.id]).await.map_err(catalog_error)?;
            let result = self.migrate_locked(control, info, upstream, dry_run).await;
            control.execute(unlock, &[&info.id]).await.map_err(catalog_error)?;
            result
        };
        match run.await {
            Ok(a) if a.versions.is_empty() => TenantMigration {
                tenant: info.id.clone(),
                outcome: MigrationOutcome::Current,
                version: a.current,
            },
            Ok(a) => TenantMigration {
                tenant: info.id.clone(),
                version: a.current,
                outcome: MigrationOutcome::Applied { versions: a.versions },
            },
            Err(e) => TenantMigration {
                tenant: info.id.clone(),
                outcome: MigrationOutcome::Failed { error: e.to_string() },
                version: None,
            },
        }
    }

    async fn migrate_locked(
        &self,
        control: &Client,
        info: &TenantInfo,
        upstream: Option<&Result<Upstream, LifecycleError>>,
        dry_run: bool,
    ) -> Result<Applied, LifecycleError> {
        // The tenant as it is now that the lock is held.
        let info = Self::info(control, &info.id).await?;
        if info.status != "active" && info.status != "suspended" {
            return Err(LifecycleError::Conflict(format!("tenant is {}", info.status)));
        }
        let upstream = match upstream {
            Some(Ok(u)) => u,
            Some(Err(e)) => return Err(e.clone()),
            None => return Err(LifecycleError::Invalid(format!("no upstream {:?}", info.upstream))),
        };
        let db = self.tenant_session(control, upstream, &info).await?;
        migrate::apply(&db, &info.place(), &self.migrations, dry_run).await
    }

    /// The named tenants (each must exist), or every active and suspended one.
    async fn targets(&self, db: &Client, ids: &[String]) -> Result<Vec<TenantInfo>, LifecycleError> {
        if ids.is_empty() {
            let rows = db
                .query(&format!("{INFO_SQL} WHERE status IN ('active', 'suspended') ORDER BY id"), &[])
                .await
                .map_err(catalog_error)?;
            return Ok(rows.iter().map(TenantInfo::from_row).collect());
        }
        let mut out = Vec::new();
        for id in ids {
            let id = parse_id(id)?;
            out.push(Self::info(db, &id).await?);
        }
        Ok(out)
    }

    async fn upstreams_of(
        &self,
        db: &Client,
        tenants: &[TenantInfo],
    ) -> Result<HashMap<String, Result<Upstream, LifecycleError>>, LifecycleError> {
        let mut out = HashMap::new();
        for t in tenants {
            if !out.contains_key(&t.upstream) {
                let u = Upstream::load(db, &t.upstream, self.upstream_keys()).await;
                if let Err(LifecycleError::Catalog(e)) = &u {
                    return Err(LifecycleError::Catalog(e.clone()));
                }
                out.insert(t.upstream.clone(), u);
            }
        }
        Ok(out)
    }

    /// Each tenant's migration version against the directory's latest.
    pub async fn status(&self, ids: &[String]) -> Result<Vec<MigrationStatus>, LifecycleError> {
        let db = self.control().await?;
        let tenants = if ids.is_empty() {
            let rows = db.query(&format!("{INFO_SQL} ORDER BY id"), &[]).await.map_err(catalog_error)?;
            rows.iter().map(TenantInfo::from_row).collect()
        } else {
            self.targets(&db, ids).await?
        };
        let upstreams = self.upstreams_of(&db, &tenants).await?;
        let latest = self.migrations.latest();
        let one = |info: TenantInfo| {
            let (upstreams, db) = (&upstreams, &db);
            async move {
                let version = async {
                    if info.status != "active" && info.status != "suspended" {
                        return Ok(None);
                    }
                    let u = match upstreams.get(&info.upstream) {
                        Some(Ok(u)) => u,
                        Some(Err(e)) => return Err(e.clone()),
                        None => return Ok(None),
                    };
                    let session = self.tenant_session(db, u, &info).await?;
                    migrate::current_version(&session, &info.place()).await
                }
                .await;
                let (version, error) = match version {
                    Ok(v) => (v, None),
                    Err(e) => (None, Some(e.to_string())),
                };
                MigrationStatus {
                    behind: error.is_none()
                        && latest.is_some()
                        && version < latest
                        && info.status != "pending",
                    tenant: info.id,
                    status: info.status,
                    version,
                    latest,
                    error,
                }
            }
        };
        Ok(futures_util::stream::iter(tenants).map(one).buffered(self.parallel).collect().await)
    }

    /// Can the tenant's own login reach its database, and is it current.
    pub async fn health(&self, id: &str) -> Result<Health, LifecycleError> {
        let id = parse_id(id)?;
        let db = self.control().await?;
        let info = Self::info(&db, &id).await?;
        let mut status = self.status(std::slice::from_ref(&info.id)).await?;
        let m = status.pop();
        let login = match (&m, info.status.as_str()) {
            (Some(m), "active" | "suspended") if m.error.is_none() => {
                self.login_check(&db, &info).await.err().map(|e| format!("the tenant's login: {e}"))
            }
            (_, "active" | "suspended") => None,
            (_, other) => Some(format!("tenant is {other}")),
        };
        let migration_error = m.as_ref().and_then(|m| m.error.clone());
        Ok(Health {
            tenant: info.id,
            status: info.status,
            reachable: login.is_none() && migration_error.is_none(),
            version: m.as_ref().and_then(|m| m.version),
            latest: self.migrations.latest(),
            current: m.as_ref().is_some_and(|m| !m.behind && m.error.is_none()),
            error: migration_error.or(login),
        })
    }

    /// Logs in as the tenant's login role, as the proxy would.
    async fn login_check(&self, db: &Client, info: &TenantInfo) -> Result<(), LifecycleError> {
        let upstream = Upstream::load(db, &info.upstream, self.upstream_keys()).await?;
        let c = self.tenant_session(db, &upstream, info).await?;
        c.batch_execute("SELECT 1").await.map_err(|e| db_error("SELECT 1", &e))
    }

    /// A tenant's stored upstream password, readable.
    fn reveal(&self, id: &str, stored: Option<String>) -> Result<Option<String>, LifecycleError> {
        stored
            .map(|s| crate::catalog::secrets::reveal(self.keys.as_ref(), &s).map(|(p, _)| p))
            .transpose()
            .map_err(|e| LifecycleError::Invalid(format!("tenant {id:?}, the upstream password: {e}")))
    }

    /// The tenant's own login to its database (its stored password, decrypted): what
    /// migrations and history reads run over, never an administrator session.
    async fn tenant_session(
        &self,
        db: &Client,
        upstream: &Upstream,
        info: &TenantInfo,
    ) -> Result<Client, LifecycleError> {
        let stored: Option<String> = db
            .query_one("SELECT login_password FROM pgtenant.tenants WHERE id = $1", &[&info.id])
            .await
            .map_err(catalog_error)?
            .get(0);
        let password = self.reveal(&info.id, stored)?;
        upstream.login_as(&info.login_role, password).connect(&info.current_database()).await
    }
}

/// `GET /tenants/{id}/health`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Health {
    pub tenant: String,
    pub status: String,
    /// The tenant's own login reaches its database.
    pub reachable: bool,
    pub version: Option<i32>,
    pub latest: Option<i32>,
    /// Every migration is applied.
    pub current: bool,
    pub error: Option<String>,
}

struct Plan {
    isolation: Isolation,
    login: LoginKind,
    upstream: String,
    database: String,
    schema: Option<String>,
    role: String,
}

/// A PostgreSQL client program: `$PGTENANT_PG_BINDIR`, the newest /usr/lib/postgresql/*/bin,
/// or PATH.
fn tool(name: &str) -> Result<std::path::PathBuf, LifecycleError> {
    let mut dirs: Vec<std::path::PathBuf> = Vec::new();
    if let Some(d) = std::env::var_os("PGTENANT_PG_BINDIR") {
        dirs.push(d.into());
    }
    if let Some(d) = crate::embedded::find_bindir() {
        dirs.push(d);
    }
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file()).ok_or_else(|| {
        LifecycleError::Invalid(format!("moving a tenant needs {name}, which is not installed"))
    })
}

/// libpq environment for an administrator connection to `u`.
fn libpq_env(u: &Upstream, cmd: &mut tokio::process::Command) {
    let (host, port, sslmode) = match &u.addr {
        crate::model::UpstreamAddr::Tcp { host, port, tls } => {
            if let Some(ca) = &tls.root_cert {
                cmd.env("PGSSLROOTCERT", &**ca);
            }
            (host.to_string(), *port, tls.mode.as_str())
        }
        crate::model::UpstreamAddr::Unix { dir, port } => (dir.to_string(), *port, "disable"),
    };
    cmd.env("PGHOST", host)
        .env("PGPORT", port.to_string())
        .env("PGUSER", &u.admin_user)
        .env("PGSSLMODE", sslmode);
    match &u.admin_password {
        Some(p) => cmd.env("PGPASSWORD", p),
        None => cmd.env_remove("PGPASSWORD"),
    };
}

/// `pg_dump -Fc source | pg_restore` into the same-named database on the target, every
/// object owned by `role`.
async fn dump_restore(
    dump: &std::path::Path,
    restore: &std::path::Path,
    source: &Upstream,
    target: &Upstream,
    database: &str,
    role: &str,
) -> Result<(), LifecycleError> {
    use std::process::Stdio;
    let mut d = tokio::process::Command::new(dump);
    libpq_env(source, &mut d);
    d.args(["--format=custom", "--no-owner", "--no-privileges", "--dbname", database])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut dumping = d.spawn().map_err(|e| LifecycleError::Failed(format!("pg_dump: {e}")))?;
    let out: Stdio = dumping
        .stdout
        .take()
        .ok_or_else(|| LifecycleError::Failed("pg_dump: no output".into()))?
        .try_into()
        .map_err(|e: std::io::Error| LifecycleError::Failed(format!("pg_dump: {e}")))?;
    let mut r = tokio::process::Command::new(restore);
    libpq_env(target, &mut r);
    r.args([
        "--no-owner",
        "--no-privileges",
        "--exit-on-error",
        "--single-transaction",
        "--role",
        role,
        "--dbname",
        database,
    ])
    .stdin(out)
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .kill_on_drop(true);
    let restoring = r.spawn().map_err(|e| LifecycleError::Failed(format!("pg_restore: {e}")))?;
    let (dumped, restored) = tokio::join!(dumping.wait_with_output(), restoring.wait_with_output());
    let failed = |what: &str, out: std::io::Result<std::process::Output>| match out {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(LifecycleError::Failed(format!(
            "{what} failed ({}): {}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        ))),
        Err(e) => Err(LifecycleError::Failed(format!("{what}: {e}"))),
    };
    failed("pg_dump", dumped)?;
    failed("pg_restore", restored)
}

fn in_use(id: &str, n: usize) -> LifecycleError {
    LifecycleError::Conflict(format!(
        "tenant {id:?} has {n} connected client(s); suspend it first or pass force"
    ))
}

fn parse_id(id: &str) -> Result<String, LifecycleError> {
    TenantId::parse(id)
        .map(|t| t.to_string())
        .map_err(|e| LifecycleError::Invalid(format!("invalid tenant id {id:?}: {e}")))
}

/// Names pgtenant creates: what a tenant id allows, short enough that `archived_` still fits
/// Postgres's 63 bytes.
fn valid_name(what: &str, name: &str) -> Result<(), LifecycleError> {
    let ok = !name.is_empty()
        && name.len() <= 54
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        && !name.starts_with("pg_")
        && !name.starts_with("archived_")
        && !name.starts_with("deleted_");
    if ok {
        Ok(())
    } else {
        Err(LifecycleError::Invalid(format!(
            "{what} {name:?}: use up to 54 lowercase letters, digits, '_' or '-', not starting with pg_, \
             archived_ or deleted_ (archive and delete rename to those)"
        )))
    }
}

fn random_password() -> String {
    use rand::RngExt as _;
    const ALPHABET: &[u8] = b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut rng = rand::rng();
    (0..32).map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())])).collect()
}

/// Adds (or replaces) a client credential, stored as a SCRAM verifier.
pub async fn add_user(db: &Client, tenant: &str, user: &str, password: &str) -> Result<(), LifecycleError> {
    let verifier = crate::auth::Verifier::hash(password);
    db.execute(
        "INSERT INTO pgtenant.tenant_users (tenant_id, username, verifier) VALUES ($1, $2, $3)
         ON CONFLICT (tenant_id, username) DO UPDATE SET verifier = EXCLUDED.verifier",
        &[&tenant, &user, &verifier],
    )
    .await
    .map_err(catalog_error)?;
    db.execute(
        "INSERT INTO pgtenant.events (tenant_id, kind, detail) VALUES ($1, 'user_added', jsonb_build_object('user', $2::text))",
        &[&tenant, &user],
    )
    .await
    .map_err(catalog_error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(valid_name("database", "acme").is_ok());
        assert!(valid_name("database", "acme-2_x").is_ok());
        for bad in ["", "Acme", "a b", "a\"b", "pg_x", &"x".repeat(55), "é"] {
            assert!(valid_name("database", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn physical_names_follow_the_status() {
        let mut t = TenantInfo {
            id: "acme".into(),
            status: "active".into(),
            isolation: "schema".into(),
            upstream: "local".into(),
            database: "tenants".into(),
            schema: Some("acme".into()),
            login_role: "acme".into(),
            login_kind: "per_tenant".into(),
            pool_mode: "transaction".into(),
            pool_size: None,
            max_server_connections: None,
            max_clients: None,
            auth: None,
            search_path_public: false,
            version: 1,
            created_at: String::new(),
            updated_at: String::new(),
            last_error: None,
        };
        assert_eq!(t.physical().as_deref(), Some("acme"));
        assert_eq!(t.current_database(), "tenants");
        t.status = "archived".into();
        assert_eq!(t.physical().as_deref(), Some("archived_acme"));
        assert_eq!(t.place().schema.as_deref(), Some("archived_acme"));
        t.isolation = "database".into();
        t.database = "acme".into();
        assert_eq!(t.current_database(), "archived_acme");
        t.status = "deleted".into();
        assert_eq!(t.current_database(), "deleted_acme");
        t.isolation = "shared".into();
        assert_eq!(t.physical(), None);
        assert_eq!(t.current_database(), "acme");
    }

    #[test]
    fn literals() {
        assert_eq!(quote_literal("it's"), "'it''s'");
        let p = random_password();
        assert_eq!(p.len(), 32);
        assert!(p.bytes().all(|b| b.is_ascii_alphanumeric()));
    }
}
