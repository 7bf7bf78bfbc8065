//! Creating a tenant: the plan (names, upstream, login), the objects on the upstream
//! (database or schema, role, grants, migrations, seeds), the catalog row and first
//! credential; and undoing a create that failed.

use std::fmt::Write as _;

use tokio_postgres::Client;

use super::migrate;
use super::report::TenantInfo;
use super::request::CreateTenant;
use super::upstream::{self, Upstream};
use super::{catalog_error, db_error, db_text, parse_id, valid_name, Lifecycle, LifecycleError};
use crate::catalog::store;
use crate::model::LoginKind;
use crate::model::{AuthMethod, Isolation, PoolMode, TenantStatus};
use crate::sql::{quote_ident, quote_literal};

impl Lifecycle {
    /// Creates a tenant (see the module comment for what happens on failure).
    pub async fn create(&self, req: CreateTenant) -> Result<TenantInfo, LifecycleError> {
        let id = parse_id(&req.id)?;
        let db = self.locked(&id).await?;
        let plan = self.plan(&db, &id, &req).await?;
        if let Some(status) = store::tenant_status(&db, &id).await.map_err(catalog_error)? {
            if TenantStatus::parse(&status) != Some(TenantStatus::Pending) {
                return Err(LifecycleError::Conflict(format!("tenant {id:?} already exists ({status})")));
            }
            // A half-created tenant: remove what its last attempt left, then start over.
            let old = Self::info(&db, &id).await?;
            self.teardown(&db, &old).await?;
            store::delete_tenant(&db, &id).await.map_err(catalog_error)?;
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
        let row = store::NewTenant {
            id: id.as_str(),
            isolation: plan.isolation,
            upstream: &plan.upstream,
            database: &plan.database,
            schema: plan.schema.as_deref(),
            search_path_public: req.search_path_public.unwrap_or(false),
            login_role: &plan.role,
            login_password: stored.as_deref(),
            login_kind: plan.login,
            pool_mode: req.pool_mode.unwrap_or(PoolMode::Transaction),
            pool_size: int(req.pool_size),
            max_server_connections: int(req.max_server_connections),
            max_clients: int(req.max_clients),
            auth: req.auth,
        };
        store::insert_tenant(&db, &row).await.map_err(|e| match e.code() {
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
                store::add_user(&db, &id, &user.name, &crate::auth::Verifier::hash(&user.password))
                    .await
                    .map_err(catalog_error)?;
            }
            Ok::<_, LifecycleError>(applied)
        }
        .await;
        match done {
            Ok(applied) => {
                store::finish_status(&db, &id, TenantStatus::Active).await.map_err(catalog_error)?;
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
                store::set_last_error(&db, &id, &message).await.map_err(catalog_error)?;
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
                let names = store::upstream_names(db).await.map_err(catalog_error)?;
                match names.as_slice() {
                    [one] => one.clone(),
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
            store::record_created(db, &info.id, object).await.map_err(catalog_error)
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
    pub(super) async fn teardown(&self, db: &Client, info: &TenantInfo) -> Result<(), LifecycleError> {
        let created = store::created_objects(db, &info.id).await.map_err(catalog_error)?;
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
        store::clear_created(db, &info.id).await.map_err(catalog_error)
    }

    /// Drops the tenant's database or schema (under its current name) and its role.
    pub(super) async fn drop_objects(
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
}

struct Plan {
    isolation: Isolation,
    login: LoginKind,
    upstream: String,
    database: String,
    schema: Option<String>,
    role: String,
}

pub(super) fn random_password() -> String {
    use rand::RngExt as _;
    const ALPHABET: &[u8] = b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut rng = rand::rng();
    (0..32).map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())])).collect()
}
