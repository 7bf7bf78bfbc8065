//! Routes that are not about one tenant: liveness and readiness probes, the instance
//! registry, the OpenAPI document, and the problem answers for unknown routes and methods.

use axum::extract::{Request, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::problem::{Kind, Problem};
use super::{AdminState, OPENAPI};

pub(super) async fn no_such_route(request: Request) -> Problem {
    Problem::new(Kind::NoSuchRoute, format!("no route {} (see GET /openapi.json)", request.uri().path()))
}

pub(super) async fn method_not_allowed(request: Request) -> Problem {
    Problem::new(
        Kind::MethodNotAllowed,
        format!(
            "{} is not allowed on {} (the Allow header lists what is)",
            request.method(),
            request.uri().path()
        ),
    )
}

/// The process is up and answering.
pub(super) async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// The proxy takes clients (it is not draining) and the control database answers.
pub(super) async fn readyz(State(state): State<AdminState>) -> Result<Json<Value>, Problem> {
    let shutdown = &state.inner.proxy.shutdown;
    if shutdown.drain.is_cancelled() || shutdown.stop_accepting.is_cancelled() {
        return Err(Problem::new(Kind::NotReady, "the proxy is shutting down and takes no new clients"));
    }
    if let Some(control) = &state.inner.control {
        control
            .ping()
            .await
            .map_err(|e| Problem::new(Kind::NotReady, format!("the control database is unreachable: {e}")))?;
    }
    Ok(Json(json!({ "status": "ready" })))
}

/// The instances serving this control database, from the instance registry (read on the
/// API's own connection, within its timeout); `this` is the answering instance's id.
pub(super) async fn instances(State(state): State<AdminState>) -> Result<Json<Value>, Problem> {
    let Some(control) = &state.inner.control else {
        return Err(Problem::new(
            Kind::CatalogUnavailable,
            "this proxy has no control database ([catalog] url), so there is no instance registry",
        ));
    };
    let expiry = state.inner.config.proxy.heartbeat_interval * crate::instances::EXPIRY_HEARTBEATS;
    let rows = control.instances(expiry).await.map_err(|e| {
        Problem::new(Kind::CatalogUnavailable, format!("the instance registry is unreachable: {e}"))
    })?;
    let this = state.inner.proxy.instances.as_ref().map(|i| i.id().to_owned());
    Ok(Json(json!({ "this": this, "instances": rows })))
}

pub(super) async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}
