//! Tenant lifecycle: create (database / schema / role on the upstream, migrations, seeds,
//! first credential), suspend and resume, archive and restore, soft and hard delete, and
//! migrations across every tenant ([`migrate`]). One library, two fronts: the CLI
//! (`pgtenant tenant …`, `pgtenant migrate`) and the HTTP admin API.
//!
//! Every operation takes a per-tenant advisory lock in the control database (a second
//! operation on the same tenant gets [`LifecycleError::Conflict`]), writes an event row, and
//! changes the tenant's row, whose trigger NOTIFYs every proxy.
//!
//! A create that fails removes what it created (objects it made are recorded on the row as
//! it makes them, so nothing that existed before is ever dropped) and leaves the tenant
//! `pending` with the error in `last_error`; running create again for a pending tenant
//! cleans up whatever is left and starts over, and delete removes it.

mod create;
pub mod migrate;
mod relocate;
mod report;
mod request;
mod runs;
mod status;
pub mod upstream;

use std::fmt::Write as _;
use std::sync::Arc;

use tokio_postgres::Client;

use crate::catalog::secrets::Keys;
use crate::catalog::store;
use crate::config::Config;
use crate::model::TenantId;
pub use migrate::{Applied, MigrationSet};
pub use report::{Health, MigrationOutcome, MigrationStatus, TenantInfo, TenantMigration};
pub use request::{CreateTenant, MigrateOptions, NewUser, UpdateTenant};
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

fn store_error(e: store::StoreError) -> LifecycleError {
    match e {
        store::StoreError::Db(e) => catalog_error(e),
        store::StoreError::Secret { what, why } => LifecycleError::Invalid(format!("{what}: {why}")),
        e @ store::StoreError::Unknown { .. } => LifecycleError::Catalog(e.to_string()),
    }
}

fn catalog_error(e: tokio_postgres::Error) -> LifecycleError {
    LifecycleError::Catalog(db_text(&e))
}

/// How long an operation waits for another one on the same tenant to end.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// How many clients of a tenant are connected, as the running proxy counts them.
pub trait LiveSessions: Send + Sync {
    fn clients(&self, tenant: &str) -> usize;
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
        self.control.open().await.map_err(catalog_error)
    }

    /// A control connection holding the tenant's operation lock (released when it closes).
    async fn locked(&self, id: &str) -> Result<Client, LifecycleError> {
        let db = self.control().await?;
        // The lock of an operation that just ended goes when its connection's backend exits,
        // a moment after the operation returned; a running operation gets a few seconds to
        // end before this one gives up.
        let deadline = tokio::time::Instant::now() + LOCK_WAIT;
        loop {
            let got = store::try_lock_tenant(&db, id).await.map_err(catalog_error)?;
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
        store::tenant(db, id)
            .await
            .map_err(store_error)?
            .ok_or_else(|| LifecycleError::NotFound(id.to_owned()))
    }

    async fn event(
        db: &Client,
        id: &str,
        kind: &str,
        detail: serde_json::Value,
    ) -> Result<(), LifecycleError> {
        store::record_event(db, id, kind, &detail).await.map_err(catalog_error)
    }

    pub async fn get(&self, id: &str) -> Result<TenantInfo, LifecycleError> {
        let id = parse_id(id)?;
        Self::info(&self.control().await?, &id).await
    }

    pub async fn list(&self) -> Result<Vec<TenantInfo>, LifecycleError> {
        let db = self.control().await?;
        store::tenants(&db).await.map_err(store_error)
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
        let stored = store::login_password(db, &info.id).await.map_err(catalog_error)?;
        let password = self.reveal(&info.id, stored)?;
        upstream.login_as(&info.login_role, password).connect(&info.current_database()).await
    }
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

#[cfg(test)]
mod tests {
    use super::create::random_password;
    use super::*;
    use crate::model::{Isolation, LoginKind, PoolMode, TenantStatus};
    use crate::sql::quote_literal;

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
            status: TenantStatus::Active,
            isolation: Isolation::Schema,
            upstream: "local".into(),
            database: "tenants".into(),
            schema: Some("acme".into()),
            login_role: "acme".into(),
            login_kind: LoginKind::PerTenant,
            pool_mode: PoolMode::Transaction,
            pool_size: None,
            pool_size_source: Default::default(),
            max_server_connections: None,
            max_clients: None,
            auth: None,
            search_path_public: false,
            row_version: 1,
            version: 1,
            created_at: String::new(),
            updated_at: String::new(),
            last_error: None,
        };
        assert_eq!(t.physical().as_deref(), Some("acme"));
        assert_eq!(t.current_database(), "tenants");
        t.status = TenantStatus::Archived;
        assert_eq!(t.physical().as_deref(), Some("archived_acme"));
        assert_eq!(t.place().schema.as_deref(), Some("archived_acme"));
        t.isolation = Isolation::Database;
        t.database = "acme".into();
        assert_eq!(t.current_database(), "archived_acme");
        t.status = TenantStatus::Deleted;
        assert_eq!(t.current_database(), "deleted_acme");
        t.isolation = Isolation::Shared;
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
