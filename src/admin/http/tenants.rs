//! The tenant routes: the lifecycle over JSON, one handler per operation, and migration
//! runs across tenants.

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use std::future::Future;
use std::sync::Arc;

use crate::lifecycle::{
    CreateTenant, Lifecycle, LifecycleError, MigrateOptions, MigrationOutcome, TenantInfo, TenantMigration,
    UpdateTenant,
};

use super::extract::{Body, OptionalBody, Params, TenantPath};
use super::problem::{Kind, Problem};
use super::AdminState;

impl AdminState {
    /// `[pool] size` as the proxy runs now (reloads and `SET default_pool_size` change it).
    fn default_pool_size(&self) -> usize {
        self.proxy().config().pool.size
    }

    /// [`AdminState::run`] for an operation that answers a tenant: shown with its effective
    /// pool size.
    async fn run_tenant<F, Fut>(&self, op: F) -> Result<TenantInfo, Problem>
    where
        F: FnOnce(Arc<Lifecycle>) -> Fut,
        Fut: Future<Output = Result<TenantInfo, LifecycleError>> + Send + 'static,
    {
        let size = self.default_pool_size();
        Ok(self.run(op).await?.with_default_pool_size(size))
    }
}

pub(super) async fn create_tenant(
    State(state): State<AdminState>,
    Body(req): Body<CreateTenant>,
) -> Result<Response, Problem> {
    let info = state.run_tenant(|lc| async move { lc.create(req).await }).await?;
    let mut response = (StatusCode::CREATED, Json(&info)).into_response();
    // The id passed TenantId's check, so it is a valid header value; if not, no Location.
    if let Ok(location) = HeaderValue::from_str(&format!("/tenants/{}", info.id)) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

pub(super) async fn list_tenants(State(state): State<AdminState>) -> Result<Response, Problem> {
    let tenants = state.run(|lc| async move { lc.list().await }).await?;
    let size = state.default_pool_size();
    let tenants: Vec<TenantInfo> = tenants.into_iter().map(|t| t.with_default_pool_size(size)).collect();
    Ok(Json(tenants).into_response())
}

pub(super) async fn get_tenant(
    State(state): State<AdminState>,
    TenantPath(id): TenantPath,
) -> Result<Response, Problem> {
    let info = state.run_tenant(|lc| async move { lc.get(&id).await }).await?;
    Ok(Json(info).into_response())
}

pub(super) async fn update_tenant(
    State(state): State<AdminState>,
    TenantPath(id): TenantPath,
    Body(patch): Body<UpdateTenant>,
) -> Result<Response, Problem> {
    let info = state.run_tenant(|lc| async move { lc.update(&id, patch).await }).await?;
    Ok(Json(info).into_response())
}

pub(super) async fn suspend_tenant(
    State(state): State<AdminState>,
    TenantPath(id): TenantPath,
) -> Result<Response, Problem> {
    let info = state.run_tenant(|lc| async move { lc.suspend(&id).await }).await?;
    Ok(Json(info).into_response())
}

pub(super) async fn resume_tenant(
    State(state): State<AdminState>,
    TenantPath(id): TenantPath,
) -> Result<Response, Problem> {
    let info = state.run_tenant(|lc| async move { lc.resume(&id).await }).await?;
    Ok(Json(info).into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ForceParams {
    #[serde(default)]
    force: bool,
}

pub(super) async fn archive_tenant(
    State(state): State<AdminState>,
    TenantPath(id): TenantPath,
    Params(q): Params<ForceParams>,
) -> Result<Response, Problem> {
    let info = state.run_tenant(|lc| async move { lc.archive(&id, q.force).await }).await?;
    Ok(Json(info).into_response())
}

pub(super) async fn restore_tenant(
    State(state): State<AdminState>,
    TenantPath(id): TenantPath,
) -> Result<Response, Problem> {
    let info = state.run_tenant(|lc| async move { lc.restore(&id).await }).await?;
    Ok(Json(info).into_response())
}

/// `POST /tenants/{id}/move`'s body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct MoveRequest {
    /// The catalog upstream to move the tenant to.
    to: String,
}

/// Moves a `database` tenant to another upstream (`pg_dump | pg_restore`).
pub(super) async fn move_tenant(
    State(state): State<AdminState>,
    TenantPath(id): TenantPath,
    Body(req): Body<MoveRequest>,
) -> Result<Response, Problem> {
    let info = state.run_tenant(|lc| async move { lc.relocate(&id, &req.to).await }).await?;
    Ok(Json(info).into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DeleteParams {
    /// Drop the data instead of renaming it `deleted_…`.
    #[serde(default)]
    hard: bool,
    #[serde(default)]
    force: bool,
}

pub(super) async fn delete_tenant(
    State(state): State<AdminState>,
    TenantPath(id): TenantPath,
    Params(q): Params<DeleteParams>,
) -> Result<StatusCode, Problem> {
    state.run(|lc| async move { lc.delete(&id, q.hard, q.force).await }).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DryRun {
    #[serde(default)]
    dry_run: bool,
}

/// Migrates one tenant: 200 with its line, or a 422 problem carrying the line when a
/// migration failed.
pub(super) async fn migrate_tenant(
    State(state): State<AdminState>,
    TenantPath(id): TenantPath,
    Params(q): Params<DryRun>,
    OptionalBody(body): OptionalBody<DryRun>,
) -> Result<Response, Problem> {
    let opts = MigrateOptions {
        tenants: vec![id],
        parallel: 1,
        // Either place asks for a dry run; neither may turn off what the other asked.
        dry_run: q.dry_run || body.dry_run,
        stop_on_failure: false,
    };
    let mut results = state.run(|lc| async move { lc.migrate(&opts, &|_, _, _| {}).await }).await?;
    let Some(line) = results.pop() else {
        return Err(Problem::new(Kind::Internal, "the migration run returned no result for the tenant"));
    };
    match &line.outcome {
        MigrationOutcome::Failed { error } => Err(Problem::new(Kind::OperationFailed, error.clone())
            .with("migration", serde_json::to_value(&line).unwrap_or(Value::Null))),
        _ => Ok(Json(line).into_response()),
    }
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) enum OnFailure {
    #[default]
    Continue,
    Stop,
}

/// `POST /migrate`'s body (all optional).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct MigrateRequest {
    /// Empty: every active or suspended tenant.
    #[serde(default)]
    tenants: Vec<String>,
    parallel: Option<usize>,
    #[serde(default)]
    dry_run: bool,
    #[serde(default)]
    on_failure: OnFailure,
}

/// Most tenants migrated at once over the API: each holds upstream connections.
pub(super) const MAX_PARALLEL: usize = 256;

#[derive(Debug, Serialize)]
pub(super) struct MigrateSummary {
    dry_run: bool,
    results: Vec<TenantMigration>,
    failed: usize,
}

/// Migrates many tenants; 200 whatever each tenant's outcome, with the count that failed.
pub(super) async fn migrate_all(
    State(state): State<AdminState>,
    OptionalBody(req): OptionalBody<MigrateRequest>,
) -> Result<Response, Problem> {
    if let Some(p) = req.parallel {
        if p == 0 || p > MAX_PARALLEL {
            return Err(Problem::new(
                Kind::InvalidRequest,
                format!("\"parallel\" must be between 1 and {MAX_PARALLEL}, got {p}"),
            ));
        }
    }
    let opts = MigrateOptions {
        tenants: req.tenants,
        parallel: req.parallel.unwrap_or(0),
        dry_run: req.dry_run,
        stop_on_failure: matches!(req.on_failure, OnFailure::Stop),
    };
    let dry_run = opts.dry_run;
    let results = state.run(|lc| async move { lc.migrate(&opts, &|_, _, _| {}).await }).await?;
    let failed = results.iter().filter(|r| matches!(r.outcome, MigrationOutcome::Failed { .. })).count();
    Ok(Json(MigrateSummary { dry_run, results, failed }).into_response())
}

pub(super) async fn tenant_health(
    State(state): State<AdminState>,
    TenantPath(id): TenantPath,
) -> Result<Response, Problem> {
    let health = state.run(|lc| async move { lc.health(&id).await }).await?;
    Ok(Json(health).into_response())
}
