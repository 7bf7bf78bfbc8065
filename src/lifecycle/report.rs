//! What lifecycle operations answer: a tenant as the catalog holds it, its health, and the
//! lines of a migration run.

use serde::{Deserialize, Serialize};

use super::migrate;

use crate::model::{Isolation, LoginKind, TenantStatus};

/// A tenant as the catalog has it (no secrets): the store's typed row.
pub type TenantInfo = crate::catalog::store::TenantRow;

impl TenantInfo {
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
    /// Applied migrations whose file was edited since (checksum differs): `migrate` refuses
    /// them, so the tenant is not current.
    #[serde(default)]
    pub changed: Vec<String>,
    /// Why the version could not be read.
    pub error: Option<String>,
}
