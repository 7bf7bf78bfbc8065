//! PAUSE and RESUME of one tenant over HTTP, as the console's `PAUSE tenant` / `RESUME
//! tenant`: `POST /tenants/{id}/pause` holds its new transactions, `DELETE` lets them go.
//! (`POST /tenants/{id}/resume` is the lifecycle's resume from `suspended`.)

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::model::TenantId;

use super::extract::TenantPath;
use super::problem::{Kind, Problem};
use super::AdminState;

/// The tenant, if the catalog has it.
async fn known(state: &AdminState, id: &str) -> Result<TenantId, Problem> {
    let missing = || Problem::new(Kind::NotFound, format!("no tenant {id}"));
    let tid = TenantId::parse(id).map_err(|_| missing())?;
    match state.proxy().catalog.lookup(&tid).await {
        Ok(Some(_)) => Ok(tid),
        Ok(None) => Err(missing()),
        Err(e) => Err(Problem::new(Kind::CatalogUnavailable, e.to_string())),
    }
}

/// Answers at once; `server_connections_in_use` says how many transactions are still
/// running (SHOW POOLS's `sv_active`).
pub(super) async fn pause_tenant(
    State(state): State<AdminState>,
    TenantPath(id): TenantPath,
) -> Result<Response, Problem> {
    let tid = known(&state, &id).await?;
    let pools = &state.proxy().pools;
    pools.pauses.pause(Some(&tid));
    tracing::info!(tenant = %tid, "HTTP: pause");
    let busy = pools.checked_out(Some(&tid));
    Ok(Json(json!({ "tenant": id, "paused": true, "server_connections_in_use": busy })).into_response())
}

pub(super) async fn unpause_tenant(
    State(state): State<AdminState>,
    TenantPath(id): TenantPath,
) -> Result<Response, Problem> {
    let tid = known(&state, &id).await?;
    state.proxy().pools.pauses.resume(Some(&tid));
    tracing::info!(tenant = %tid, "HTTP: resume (pause lifted)");
    Ok(Json(json!({ "tenant": id, "paused": false })).into_response())
}
