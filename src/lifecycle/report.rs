//! What lifecycle operations answer: a tenant as the catalog holds it, its health, and the
//! lines of a migration run.

use serde::{Deserialize, Serialize};

use super::migrate;
use super::request::LoginKind;
use super::LifecycleError;
use crate::model::{AuthMethod, Isolation, PoolMode, TenantStatus};

/// A tenant as the catalog has it (no secrets).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TenantInfo {
    pub id: String,
    pub status: TenantStatus,
    pub isolation: Isolation,
    pub upstream: String,
    pub database: String,
    pub schema: Option<String>,
    pub login_role: String,
    pub login_kind: LoginKind,
    pub pool_mode: PoolMode,
    pub pool_size: Option<i32>,
    pub max_server_connections: Option<i32>,
    pub max_clients: Option<i32>,
    pub auth: Option<AuthMethod>,
    pub search_path_public: bool,
    pub version: i64,
    pub created_at: String,
    pub updated_at: String,
    pub last_error: Option<String>,
}

pub(super) const INFO_SQL: &str =
    "SELECT id, status, isolation, upstream, database, schema_name, login_role, login_kind,
        pool_mode, pool_size, max_server_connections, max_clients, auth, search_path_public, version,
        to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'),
        to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), last_error
   FROM pgtenant.tenants";

impl TenantInfo {
    /// A row of [`INFO_SQL`]; its text columns are parsed here, once (the catalog's CHECK
    /// constraints allow nothing else, so a failure means a catalog newer than this binary).
    pub(super) fn from_row(r: &tokio_postgres::Row) -> Result<TenantInfo, LifecycleError> {
        fn parse<T>(
            r: &tokio_postgres::Row,
            i: usize,
            f: fn(&str) -> Option<T>,
        ) -> Result<T, LifecycleError> {
            let text: String = r.get(i);
            f(&text).ok_or_else(|| {
                LifecycleError::Catalog(format!(
                    "unknown {} {text:?} in pgtenant.tenants",
                    r.columns()[i].name()
                ))
            })
        }
        let auth: Option<String> = r.get(12);
        Ok(TenantInfo {
            id: r.get(0),
            status: parse(r, 1, TenantStatus::parse)?,
            isolation: parse(r, 2, Isolation::parse)?,
            upstream: r.get(3),
            database: r.get(4),
            schema: r.get(5),
            login_role: r.get(6),
            login_kind: parse(r, 7, LoginKind::parse)?,
            pool_mode: parse(r, 8, PoolMode::parse)?,
            pool_size: r.get(9),
            max_server_connections: r.get(10),
            max_clients: r.get(11),
            auth: match auth {
                None => None,
                Some(a) => Some(AuthMethod::parse(&a).ok_or_else(|| {
                    LifecycleError::Catalog(format!("unknown auth {a:?} in pgtenant.tenants"))
                })?),
            },
            search_path_public: r.get(13),
            version: r.get(14),
            created_at: r.get(15),
            updated_at: r.get(16),
            last_error: r.get(17),
        })
    }

    pub(super) fn per_tenant(&self) -> bool {
        self.login_kind == LoginKind::PerTenant
    }

    /// The database or schema that holds the tenant's data, under its current name
    /// (archived and soft-deleted ones are renamed with a prefix).
    pub(super) fn physical(&self) -> Option<String> {
        let base = match self.isolation {
            Isolation::Database => &self.database,
            Isolation::Schema => self.schema.as_ref()?,
            Isolation::Shared => return None,
        };
        Some(match self.status {
            TenantStatus::Archived => format!("archived_{base}"),
            TenantStatus::Deleted => format!("deleted_{base}"),
            _ => base.clone(),
        })
    }

    /// The database the tenant's data is in right now.
    pub(super) fn current_database(&self) -> String {
        if self.isolation == Isolation::Database {
            self.physical().unwrap_or_else(|| self.database.clone())
        } else {
            self.database.clone()
        }
    }

    pub(super) fn place(&self) -> migrate::Place {
        let schema = if self.isolation == Isolation::Schema { self.physical() } else { None };
        migrate::Place { schema, tenant: self.id.clone() }
    }
}

/// `GET /tenants/{id}/health`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Health {
    pub tenant: String,
    pub status: TenantStatus,
    /// The tenant's own login reaches its database.
    pub reachable: bool,
    pub version: Option<i32>,
    pub latest: Option<i32>,
    /// Every migration is applied.
    pub current: bool,
    pub error: Option<String>,
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

/// A tenant's migration state (for `pgtenant tenant status` and the health endpoint).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MigrationStatus {
    pub tenant: String,
    pub status: TenantStatus,
    /// Highest applied version (None: none yet).
    pub version: Option<i32>,
    /// Highest version in the migrations directory.
    pub latest: Option<i32>,
    pub behind: bool,
    /// Why the version could not be read.
    pub error: Option<String>,
}
