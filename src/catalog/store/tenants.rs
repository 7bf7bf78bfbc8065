//! A tenant's catalog row: read whole (typed once, here), inserted by create, its settings
//! updated by `tenant update` / `PATCH`.

use serde::{Deserialize, Serialize};
use tokio_postgres::{Client, Row};

use super::StoreError;
use crate::model::{AuthMethod, Isolation, LoginKind, PoolMode, TenantStatus};

/// A tenant as the catalog has it (no secrets).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TenantRow {
    pub id: String,
    pub status: TenantStatus,
    pub isolation: Isolation,
    pub upstream: String,
    pub database: String,
    pub schema: Option<String>,
    pub login_role: String,
    pub login_kind: LoginKind,
    pub pool_mode: PoolMode,
    /// The tenant's own size, or (once [`TenantRow::with_default_pool_size`] filled it in, as
    /// the API and the CLI show it) the default it gets.
    pub pool_size: Option<i32>,
    /// Where `pool_size` comes from.
    #[serde(default)]
    pub pool_size_source: PoolSizeSource,
    pub max_server_connections: Option<i32>,
    pub max_clients: Option<i32>,
    pub auth: Option<AuthMethod>,
    pub search_path_public: bool,
    /// The catalog row's version, bumped on every change (not a migration version: that is
    /// `tenant status` / health's `version`).
    #[serde(default)]
    pub row_version: i64,
    /// Deprecated: the same as `row_version`, kept one release for clients that read it.
    pub version: i64,
    pub created_at: String,
    pub updated_at: String,
    pub last_error: Option<String>,
}

/// Whether a tenant's pool size is its own or the default (`[pool] size`).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PoolSizeSource {
    #[default]
    Tenant,
    Default,
}

impl TenantRow {
    /// The row as shown: a tenant without a size of its own gets `default` (the effective
    /// value) and `pool_size_source` says so. Stored rows keep NULL, so a later change of
    /// the default still applies to it.
    pub fn with_default_pool_size(mut self, default: usize) -> TenantRow {
        if self.pool_size.is_none() {
            self.pool_size = Some(i32::try_from(default).unwrap_or(i32::MAX));
            self.pool_size_source = PoolSizeSource::Default;
        }
        self
    }
}

const COLUMNS: &str = "SELECT id, status, isolation, upstream, database, schema_name, login_role, login_kind,
        pool_mode, pool_size, max_server_connections, max_clients, auth, search_path_public, version,
        to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'),
        to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), last_error
   FROM pgtenant.tenants";

impl TenantRow {
    /// A row of [`COLUMNS`]; its text columns are parsed here, once (the catalog's CHECK
    /// constraints allow nothing else, so a failure means a catalog newer than this binary).
    fn from_row(r: &Row) -> Result<TenantRow, StoreError> {
        fn parse<T>(r: &Row, i: usize, f: fn(&str) -> Option<T>) -> Result<T, StoreError> {
            let text: String = r.get(i);
            f(&text)
                .ok_or_else(|| StoreError::Unknown { column: r.columns()[i].name().to_owned(), value: text })
        }
        let auth: Option<String> = r.get(12);
        let pool_size: Option<i32> = r.get(9);
        Ok(TenantRow {
            id: r.get(0),
            status: parse(r, 1, TenantStatus::parse)?,
            isolation: parse(r, 2, Isolation::parse)?,
            upstream: r.get(3),
            database: r.get(4),
            schema: r.get(5),
            login_role: r.get(6),
            login_kind: parse(r, 7, LoginKind::parse)?,
            pool_mode: parse(r, 8, PoolMode::parse)?,
            pool_size,
            pool_size_source: match pool_size {
                Some(_) => PoolSizeSource::Tenant,
                None => PoolSizeSource::Default,
            },
            max_server_connections: r.get(10),
            max_clients: r.get(11),
            auth: match auth {
                None => None,
                Some(a) => Some(
                    AuthMethod::parse(&a).ok_or(StoreError::Unknown { column: "auth".into(), value: a })?,
                ),
            },
            search_path_public: r.get(13),
            row_version: r.get(14),
            version: r.get(14),
            created_at: r.get(15),
            updated_at: r.get(16),
            last_error: r.get(17),
        })
    }
}

/// Tenant `id`, if the catalog has it.
pub async fn tenant(db: &Client, id: &str) -> Result<Option<TenantRow>, StoreError> {
    let row = db.query_opt(&format!("{COLUMNS} WHERE id = $1"), &[&id]).await?;
    row.as_ref().map(TenantRow::from_row).transpose()
}

/// Every tenant, by id.
pub async fn tenants(db: &Client) -> Result<Vec<TenantRow>, StoreError> {
    let rows = db.query(&format!("{COLUMNS} ORDER BY id"), &[]).await?;
    rows.iter().map(TenantRow::from_row).collect()
}

/// The tenants a migration run covers by default: active and suspended ones, by id.
pub async fn migratable_tenants(db: &Client) -> Result<Vec<TenantRow>, StoreError> {
    let rows =
        db.query(&format!("{COLUMNS} WHERE status IN ('active', 'suspended') ORDER BY id"), &[]).await?;
    rows.iter().map(TenantRow::from_row).collect()
}

/// What create writes for a new tenant (status `pending`).
#[derive(Debug, Clone)]
pub struct NewTenant<'a> {
    pub id: &'a str,
    pub isolation: Isolation,
    pub upstream: &'a str,
    pub database: &'a str,
    pub schema: Option<&'a str>,
    pub search_path_public: bool,
    pub login_role: &'a str,
    /// The login password as stored (encrypted when a master key is configured).
    pub login_password: Option<&'a str>,
    pub login_kind: LoginKind,
    pub pool_mode: PoolMode,
    pub pool_size: Option<i32>,
    pub max_server_connections: Option<i32>,
    pub max_clients: Option<i32>,
    pub auth: Option<AuthMethod>,
}

/// Inserts a new tenant row with status `pending`. The catalog's CHECK constraints reject bad
/// values (callers turn CHECK_VIOLATION into an invalid-request error).
pub async fn insert_tenant(db: &Client, t: &NewTenant<'_>) -> Result<(), tokio_postgres::Error> {
    db.execute(
        "INSERT INTO pgtenant.tenants (id, status, isolation, upstream, database, schema_name,
             search_path_public, login_role, login_password, login_kind, pool_mode, pool_size,
             max_server_connections, max_clients, auth)
         VALUES ($1, 'pending', $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
        &[
            &t.id,
            &t.isolation.as_str(),
            &t.upstream,
            &t.database,
            &t.schema,
            &t.search_path_public,
            &t.login_role,
            &t.login_password,
            &t.login_kind.as_str(),
            &t.pool_mode.as_str(),
            &t.pool_size,
            &t.max_server_connections,
            &t.max_clients,
            &t.auth.map(AuthMethod::as_str),
        ],
    )
    .await
    .map(drop)
}

/// The settings `tenant update` / `PATCH` change; `None` keeps the stored value.
#[derive(Debug, Clone, Default)]
pub struct SettingsPatch {
    pub pool_mode: Option<PoolMode>,
    pub pool_size: Option<i32>,
    pub max_server_connections: Option<i32>,
    pub max_clients: Option<i32>,
    pub auth: Option<AuthMethod>,
    pub search_path_public: Option<bool>,
}

/// Applies `patch` to tenant `id`'s row (its NOTIFY makes every proxy pick it up).
pub async fn update_settings(
    db: &Client,
    id: &str,
    patch: &SettingsPatch,
) -> Result<(), tokio_postgres::Error> {
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
            &id,
            &patch.pool_mode.map(PoolMode::as_str),
            &patch.pool_size,
            &patch.max_server_connections,
            &patch.max_clients,
            &patch.auth.map(AuthMethod::as_str),
            &patch.search_path_public,
        ],
    )
    .await
    .map(drop)
}
