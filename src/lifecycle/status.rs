//! Status changes of a tenant: suspend and resume, settings updates, archive and restore,
//! soft and hard delete (with the renames that take a tenant's objects out of the way), and
//! its health.

use tokio_postgres::Client;

use super::report::{Health, TenantInfo};
use super::request::UpdateTenant;
use super::upstream::Upstream;
use super::{catalog_error, db_error, db_text, parse_id, Lifecycle, LifecycleError};
use crate::catalog::store;
use crate::model::{Isolation, TenantStatus};
use crate::sql::quote_ident;

impl Lifecycle {
    /// Changes the status from one of `from` to `to` (nothing on the upstream).
    async fn set_status(
        &self,
        id: &str,
        from: &[TenantStatus],
        to: TenantStatus,
        event: &str,
    ) -> Result<TenantInfo, LifecycleError> {
        let id = parse_id(id)?;
        let db = self.locked(&id).await?;
        let info = Self::info(&db, &id).await?;
        if info.status == to {
            return Ok(info);
        }
        if !from.contains(&info.status) {
            return Err(LifecycleError::Conflict(format!(
                "tenant {id:?} is {}: it cannot be {to} from there",
                info.status
            )));
        }
        store::set_status(&db, &id, to).await.map_err(catalog_error)?;
        Self::event(&db, &id, event, serde_json::json!({ "from": info.status })).await?;
        Self::info(&db, &id).await
    }

    /// Stops new connections (57P03) and closes open sessions at their transaction's end.
    pub async fn suspend(&self, id: &str) -> Result<TenantInfo, LifecycleError> {
        self.set_status(id, &[TenantStatus::Active], TenantStatus::Suspended, "suspended").await
    }

    pub async fn resume(&self, id: &str) -> Result<TenantInfo, LifecycleError> {
        self.set_status(id, &[TenantStatus::Suspended], TenantStatus::Active, "resumed").await
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
        let settings = store::SettingsPatch {
            pool_mode: patch.pool_mode,
            pool_size: int(patch.pool_size),
            max_server_connections: int(patch.max_server_connections),
            max_clients: int(patch.max_clients),
            auth: patch.auth,
            search_path_public: patch.search_path_public,
        };
        store::update_settings(&db, &id, &settings).await.map_err(|e| match e.code() {
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
        let (column, value) = match (info.isolation, info.per_tenant()) {
            (Isolation::Database, _) => ("datname", info.current_database()),
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
    async fn rename(
        &self,
        upstream: &Upstream,
        info: &TenantInfo,
        to: TenantStatus,
    ) -> Result<(), LifecycleError> {
        let Some(from) = info.physical() else { return Ok(()) };
        let target = TenantInfo { status: to, ..info.clone() };
        let Some(new) = target.physical() else { return Ok(()) };
        if from == new {
            return Ok(());
        }
        if info.isolation == Isolation::Database {
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
        self.retire(id, force, TenantStatus::Archived).await
    }

    /// Brings an archived (or soft-deleted) tenant back: original name, status active.
    pub async fn restore(&self, id: &str) -> Result<TenantInfo, LifecycleError> {
        let id = parse_id(id)?;
        let db = self.locked(&id).await?;
        let info = Self::info(&db, &id).await?;
        if !matches!(info.status, TenantStatus::Archived | TenantStatus::Deleted) {
            return Err(LifecycleError::Conflict(format!(
                "tenant {id:?} is {}: only archived or deleted tenants are restored",
                info.status
            )));
        }
        let upstream = Upstream::load(&db, &info.upstream, self.upstream_keys()).await?;
        self.rename(&upstream, &info, TenantStatus::Active).await?;
        store::set_status(&db, &id, TenantStatus::Active).await.map_err(catalog_error)?;
        Self::event(&db, &id, "restored", serde_json::json!({ "from": info.status })).await?;
        Self::info(&db, &id).await
    }

    /// Soft delete (`hard = false`): like archive, under `deleted_…`, status `deleted`.
    /// Hard delete: drops the database or schema, the tenant's own role, its credentials
    /// and its catalog row (the events stay).
    pub async fn delete(&self, id: &str, hard: bool, force: bool) -> Result<(), LifecycleError> {
        if !hard {
            return self.retire(id, force, TenantStatus::Deleted).await.map(|_| ());
        }
        let id = parse_id(id)?;
        let db = self.locked(&id).await?;
        let info = Self::info(&db, &id).await?;
        let upstream = Upstream::load(&db, &info.upstream, self.upstream_keys()).await?;
        if !force && info.status == TenantStatus::Active {
            let n = self.connected(&upstream, &info).await?;
            if n > 0 {
                return Err(in_use(&id, n));
            }
        }
        if info.status == TenantStatus::Pending {
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
                    info.isolation == Isolation::Database,
                    info.isolation == Isolation::Schema,
                    info.per_tenant(),
                )
                .await;
            if let Err(e) = dropped {
                self.failed(&db, &id, "delete_failed", &e).await?;
                return Err(e);
            }
        }
        store::delete_tenant(&db, &id).await.map_err(catalog_error)?;
        Self::event(&db, &id, "deleted", serde_json::json!({ "hard": true, "isolation": info.isolation }))
            .await?;
        Ok(())
    }

    /// An active tenant becomes suspended (its names unchanged): proxies close its sessions
    /// and refuse new ones before its database or schema is renamed or dropped.
    async fn take_offline(&self, db: &Client, info: &TenantInfo) -> Result<(), LifecycleError> {
        if info.status == TenantStatus::Active {
            store::set_status(db, &info.id, TenantStatus::Suspended).await.map_err(catalog_error)?;
        }
        Ok(())
    }

    /// Records why an operation failed, on the row and as an event.
    pub(super) async fn failed(
        &self,
        db: &Client,
        id: &str,
        kind: &str,
        e: &LifecycleError,
    ) -> Result<(), LifecycleError> {
        store::set_last_error(db, id, &e.to_string()).await.map_err(catalog_error)?;
        Self::event(db, id, kind, serde_json::json!({ "error": e.to_string() })).await
    }

    async fn retire(&self, id: &str, force: bool, to: TenantStatus) -> Result<TenantInfo, LifecycleError> {
        let id = parse_id(id)?;
        let db = self.locked(&id).await?;
        let info = Self::info(&db, &id).await?;
        if info.status == to {
            return Ok(info);
        }
        use TenantStatus::{Active, Archived, Suspended};
        let allowed: &[TenantStatus] =
            if to == TenantStatus::Deleted { &[Active, Suspended, Archived] } else { &[Active, Suspended] };
        if !allowed.contains(&info.status) {
            return Err(LifecycleError::Conflict(format!(
                "tenant {id:?} is {}: it cannot be {to} from there",
                info.status
            )));
        }
        let upstream = Upstream::load(&db, &info.upstream, self.upstream_keys()).await?;
        if !force && info.status == TenantStatus::Active {
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
            store::set_status(&db, &id, info.status).await.map_err(catalog_error)?;
            self.failed(&db, &id, &format!("{to}_failed"), &e).await?;
            return Err(e);
        }
        store::finish_status(&db, &id, to).await.map_err(catalog_error)?;
        Self::event(&db, &id, to.as_str(), serde_json::json!({ "from": info.status, "forced": force }))
            .await?;
        Self::info(&db, &id).await
    }

    /// Can the tenant's own login reach its database, and is it current.
    pub async fn health(&self, id: &str) -> Result<Health, LifecycleError> {
        let id = parse_id(id)?;
        let db = self.control().await?;
        let info = Self::info(&db, &id).await?;
        let mut status = self.status(std::slice::from_ref(&info.id)).await?;
        let m = status.pop();
        let login = match (&m, info.status) {
            (Some(m), TenantStatus::Active | TenantStatus::Suspended) if m.error.is_none() => {
                self.login_check(&db, &info).await.err().map(|e| format!("the tenant's login: {e}"))
            }
            (_, TenantStatus::Active | TenantStatus::Suspended) => None,
            (_, other) => Some(format!("tenant is {other}")),
        };
        let migration_error = m.as_ref().and_then(|m| m.error.clone());
        Ok(Health {
            tenant: info.id,
            status: info.status,
            reachable: login.is_none() && migration_error.is_none(),
            version: m.as_ref().and_then(|m| m.version),
            latest: self.migrations.latest(),
            current: m.as_ref().is_some_and(|m| !m.behind && m.changed.is_empty() && m.error.is_none()),
            error: migration_error.or(login),
        })
    }

    /// Logs in as the tenant's login role, as the proxy would.
    async fn login_check(&self, db: &Client, info: &TenantInfo) -> Result<(), LifecycleError> {
        let upstream = Upstream::load(db, &info.upstream, self.upstream_keys()).await?;
        let c = self.tenant_session(db, &upstream, info).await?;
        c.batch_execute("SELECT 1").await.map_err(|e| db_error("SELECT 1", &e))
    }
}

fn in_use(id: &str, n: usize) -> LifecycleError {
    LifecycleError::Conflict(format!(
        "tenant {id:?} has {n} connected client(s); suspend it first or pass force"
    ))
}
