//! `GET /tenants/{id}/usage?from=&to=`: a tenant's usage per minute from the control
//! database's `pgtenant.usage` (RFC 3339 bounds; by default the last 24 hours).

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use crate::catalog::store::usage::{is_rfc3339, usage};

use super::extract::{Params, TenantPath};
use super::problem::{Kind, Problem};
use super::AdminState;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Range {
    from: Option<String>,
    to: Option<String>,
}

pub(super) async fn tenant_usage(
    State(state): State<AdminState>,
    TenantPath(id): TenantPath,
    Params(range): Params<Range>,
) -> Result<Response, Problem> {
    for (name, v) in [("from", &range.from), ("to", &range.to)] {
        if let Some(v) = v.as_deref().filter(|v| !is_rfc3339(v)) {
            return Err(Problem::new(
                Kind::InvalidRequest,
                format!("{name}={v:?} is not an RFC 3339 timestamp (e.g. 2026-01-31T09:00:00Z)"),
            ));
        }
    }
    let Some(control) = &state.inner.control else {
        return Err(Problem::new(
            Kind::CatalogUnavailable,
            "this proxy has no control database ([catalog] url): usage is kept in memory only (see /metrics)",
        ));
    };
    let (from, to) = (range.from.as_deref(), range.to.as_deref());
    let minutes = control
        .within(|db| async move { usage(&db, &id, from, to).await })
        .await
        .map_err(|e| Problem::new(Kind::CatalogUnavailable, format!("cannot read usage: {e}")))?;
    Ok(Json(json!({ "minutes": minutes })).into_response())
}
