//! Migration runs across tenants: which tenants, how many at once, what each one's version
//! is afterwards, and the migration status of each.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use futures_util::StreamExt;
use tokio_postgres::Client;

use super::migrate::{self, Applied};
use super::report::{MigrationOutcome, MigrationStatus, TenantInfo, TenantMigration};
use super::request::MigrateOptions;
use super::upstream::Upstream;
use super::{catalog_error, parse_id, store_error, Lifecycle, LifecycleError};
use crate::catalog::store;
use crate::model::TenantStatus;

impl Lifecycle {
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
        let run = async {
            store::lock_tenant(control, &info.id).await.map_err(catalog_error)?;
            let result = self.migrate_locked(control, info, upstream, dry_run).await;
            store::unlock_tenant(control, &info.id).await.map_err(catalog_error)?;
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
        if !matches!(info.status, TenantStatus::Active | TenantStatus::Suspended) {
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
            return store::migratable_tenants(db).await.map_err(store_error);
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
            store::tenants(&db).await.map_err(store_error)?
        } else {
            self.targets(&db, ids).await?
        };
        let upstreams = self.upstreams_of(&db, &tenants).await?;
        let latest = self.migrations.latest();
        let one = |info: TenantInfo| {
            let (upstreams, db) = (&upstreams, &db);
            async move {
                let version = async {
                    if !matches!(info.status, TenantStatus::Active | TenantStatus::Suspended) {
                        return Ok((None, Vec::new()));
                    }
                    let u = match upstreams.get(&info.upstream) {
                        Some(Ok(u)) => u,
                        Some(Err(e)) => return Err(e.clone()),
                        None => return Ok((None, Vec::new())),
                    };
                    let session = self.tenant_session(db, u, &info).await?;
                    migrate::applied_state(&session, &info.place(), &self.migrations).await
                }
                .await;
                let (version, changed, error) = match version {
                    Ok((v, changed)) => (v, changed, None),
                    Err(e) => (None, Vec::new(), Some(e.to_string())),
                };
                MigrationStatus {
                    behind: error.is_none()
                        && latest.is_some()
                        && version < latest
                        && info.status != TenantStatus::Pending,
                    tenant: info.id,
                    status: info.status,
                    version,
                    latest,
                    changed,
                    error,
                }
            }
        };
        Ok(futures_util::stream::iter(tenants).map(one).buffered(self.parallel).collect().await)
    }
}
