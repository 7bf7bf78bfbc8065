//! The HTTP admin API: tenant lifecycle over JSON (the same [`Lifecycle`] the CLI uses),
//! health and readiness probes, and the OpenAPI document that describes it all.
//!
//! Every answer that is not a success is an RFC 9457 problem (`application/problem+json`):
//! lifecycle errors, bad tokens, and axum's own rejections (unparsable JSON, a wrong content
//! type, an unknown route or method) alike. Bad input never gives a 500.
//!
//! [`ROUTES`] is the one list of routes: the router is built from it and a unit test holds the
//! OpenAPI document to it, path for path and method for method.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{secs, Config};
use crate::lifecycle::{
    CreateTenant, Lifecycle, LifecycleError, MigrateOptions, MigrationOutcome, TenantMigration, UpdateTenant,
};
use crate::proxy::Proxy;

/// The OpenAPI 3.1 description of every route, served at `GET /openapi.json`.
pub const OPENAPI: &str = include_str!("openapi.json");

/// Problem `type`s are URNs under this prefix: stable identifiers to match on, not pages.
pub const PROBLEM_TYPE_PREFIX: &str = "urn:pgtenant:problem:";

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone who reaches the port (probes, the API description).
    Public,
    /// `Authorization: Bearer <token>` with a known token.
    Bearer,
}

/// One route: its lowercase method and its path, an OpenAPI path template (axum 0.8 uses the
/// same `{name}` syntax, so the one string serves both).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub method: &'static str,
    pub path: &'static str,
    pub access: Access,
}

/// Declares [`ROUTES`] and builds the router from the same lines, so that the list cannot
/// drift from what is served.
macro_rules! routes {
    ($($access:ident $method:ident $path:literal => $handler:ident;)*) => {
        /// Every route the API serves.
        pub const ROUTES: &[Route] = &[
            $(Route { method: stringify!($method), path: $path, access: Access::$access },)*
        ];

        fn routes(state: &AdminState) -> Router<AdminState> {
            let mut router = Router::new();
            $(
                router = router.route(
                    $path,
                    guarded(axum::routing::$method($handler), Access::$access, state),
                );
            )*
            router
        }
    };
}

routes! {
    Public get "/healthz" => healthz;
    Public get "/readyz" => readyz;
    Public get "/openapi.json" => openapi;
    Bearer post "/tenants" => create_tenant;
    Bearer get "/tenants" => list_tenants;
    Bearer get "/tenants/{id}" => get_tenant;
    Bearer patch "/tenants/{id}" => update_tenant;
    Bearer delete "/tenants/{id}" => delete_tenant;
    Bearer post "/tenants/{id}/suspend" => suspend_tenant;
    Bearer post "/tenants/{id}/resume" => resume_tenant;
    Bearer post "/tenants/{id}/archive" => archive_tenant;
    Bearer post "/tenants/{id}/restore" => restore_tenant;
    Bearer post "/tenants/{id}/move" => move_tenant;
    Bearer post "/tenants/{id}/migrate" => migrate_tenant;
    Bearer get "/tenants/{id}/health" => tenant_health;
    Bearer post "/migrate" => migrate_all;
}

/// The token check wraps only the route's own handlers (`route_layer`), not the fallbacks:
/// an unknown route or method is a 404/405 problem whoever asks.
fn guarded(route: MethodRouter<AdminState>, access: Access, state: &AdminState) -> MethodRouter<AdminState> {
    match access {
        Access::Public => route,
        Access::Bearer => {
            route.route_layer(axum::middleware::from_fn_with_state(state.clone(), require_token))
        }
    }
}

/// The API over `state`, with problem+json fallbacks.
pub fn router(state: AdminState) -> Router {
    routes(&state)
        .fallback(no_such_route)
        // After every route: it applies to the method routers registered so far.
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

/// Serves the API on `listener` until `shutdown` fires, then lets requests in flight finish.
pub async fn serve(
    listener: TcpListener,
    state: AdminState,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(state)).with_graceful_shutdown(shutdown.cancelled_owned()).await
}

/// Why the API could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("[admin] token_sha256: {0:?} is not a SHA-256 in hex (64 hex digits; `pgtenant admin token-hash` prints one)")]
    BadDigest(String),
    #[error("admin API: {0}")]
    Lifecycle(#[from] LifecycleError),
}

/// What every request shares.
#[derive(Clone)]
pub struct AdminState {
    inner: Arc<Inner>,
}

struct Inner {
    proxy: Arc<Proxy>,
    /// `[catalog]` and `[lifecycle]`: each operation builds its [`Lifecycle`] from them, so
    /// that migration and seed files added while the proxy runs are used (as the CLI would).
    config: Arc<Config>,
    /// None without a control database: the tenant routes then answer 503.
    control: Option<Control>,
    /// `[admin] token_sha256`.
    tokens: Vec<[u8; 32]>,
}

impl AdminState {
    /// The API of a running proxy, over the control database and migrations `config` names.
    pub fn new(proxy: Arc<Proxy>, config: &Config) -> Result<AdminState, AdminError> {
        let tokens = config
            .admin
            .token_sha256
            .iter()
            .map(|h| super::parse_sha256_hex(h.trim()).ok_or_else(|| AdminError::BadDigest(h.clone())))
            .collect::<Result<Vec<_>, _>>()?;
        let control = if config.catalog.url.is_empty() {
            None
        } else {
            // Refuse to start on what every operation would refuse (a stray migration file,
            // an unreadable key file).
            Lifecycle::from_config(config)?;
            let pg = crate::catalog::link::ControlLink::parse(&config.catalog.url)
                .map_err(|e| LifecycleError::Invalid(format!("[catalog] url: {e}")))?;
            Some(Control {
                config: pg,
                timeout: secs(config.catalog.lookup_timeout),
                client: tokio::sync::Mutex::new(None),
            })
        };
        if tokens.is_empty() && control.is_none() {
            tracing::warn!("admin API: no [admin] token_sha256 and no control database: every authenticated route answers 401");
        }
        let config = Arc::new(config.clone());
        Ok(AdminState { inner: Arc::new(Inner { proxy, config, control, tokens }) })
    }

    /// Checks the request's bearer token against the config, then the catalog.
    async fn authorize(&self, headers: &HeaderMap) -> Result<(), Problem> {
        let Some(token) = bearer(headers) else {
            return Err(Problem::unauthorized("send `Authorization: Bearer <token>`", false));
        };
        let digest = super::token_digest(token);
        // Every configured digest is compared, in constant time, whichever matches.
        let configured = self.inner.tokens.iter().fold(false, |found, t| found | same(t, &digest));
        if configured {
            return Ok(());
        }
        if let Some(control) = &self.inner.control {
            match control.token_known(&super::hex(&digest)).await {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "admin API: cannot check a token against the control database");
                    return Err(Problem::new(
                        Kind::CatalogUnavailable,
                        "the control database is unreachable, so tokens stored there cannot be checked; \
                         tokens in [admin] token_sha256 still work",
                    ));
                }
            }
        }
        Err(Problem::unauthorized("unknown token", true))
    }

    /// Runs a lifecycle operation in a task of its own, so that it completes (and releases
    /// its lock, records its event) even if the client goes away mid-request and axum drops
    /// the handler's future.
    async fn run<T, F, Fut>(&self, op: F) -> Result<T, Problem>
    where
        F: FnOnce(Arc<Lifecycle>) -> Fut,
        Fut: Future<Output = Result<T, LifecycleError>> + Send + 'static,
        T: Send + 'static,
    {
        if self.inner.control.is_none() {
            return Err(Problem::new(
                Kind::CatalogUnavailable,
                "this proxy has no control database ([catalog] url), so tenants cannot be managed here",
            ));
        }
        let lifecycle = match Lifecycle::from_config(&self.inner.config) {
            Ok(l) => Arc::new(l.with_sessions(self.inner.proxy.clone())),
            // It loaded at start, so a file changed since: the server's fault, not the request's.
            Err(e) => {
                return Err(Problem::new(
                    Kind::Internal,
                    format!("the proxy's [lifecycle] / [catalog] files are unusable now: {e}"),
                ))
            }
        };
        match tokio::spawn(op(lifecycle)).await {
            Ok(result) => result.map_err(Problem::from),
            Err(e) => {
                tracing::error!(error = %e, "admin API: a lifecycle task failed");
                Err(Problem::new(
                    Kind::Internal,
                    "the operation's task ended abnormally; see the proxy's log",
                ))
            }
        }
    }
}

/// Byte-wise equality that takes the same time wherever the first difference is.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    crate::sql::same_bytes(a, b)
}

/// The token of an `Authorization: Bearer <token>` header (the scheme is case-insensitive,
/// RFC 9110 section 11.1).
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// One control-database connection shared by token checks and readiness probes, opened on
/// first use and again after it breaks.
struct Control {
    /// The control database (TLS as its URL asks).
    config: crate::catalog::link::ControlLink,
    /// For connecting and for each query: a probe must answer even when the database hangs.
    timeout: Duration,
    client: tokio::sync::Mutex<Option<Arc<tokio_postgres::Client>>>,
}

impl Control {
    async fn client(&self) -> Result<Arc<tokio_postgres::Client>, String> {
        let mut slot = self.client.lock().await;
        if let Some(c) = slot.as_ref().filter(|c| !c.is_closed()) {
            return Ok(c.clone());
        }
        let (client, conn) = tokio::time::timeout(self.timeout, self.config.connect())
            .await
            .map_err(|_| format!("no connection within {:?}", self.timeout))?
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let client = Arc::new(client);
        *slot = Some(client.clone());
        Ok(client)
    }

    async fn query_one(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<tokio_postgres::Row, String> {
        let client = self.client().await?;
        tokio::time::timeout(self.timeout, client.query_one(sql, params))
            .await
            .map_err(|_| format!("no answer within {:?}", self.timeout))?
            .map_err(|e| e.to_string())
    }

    async fn token_known(&self, sha256_hex: &str) -> Result<bool, String> {
        let row = self
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pgtenant.admin_tokens WHERE lower(token_sha256) = $1)",
                &[&sha256_hex],
            )
            .await?;
        Ok(row.get(0))
    }

    async fn ping(&self) -> Result<(), String> {
        self.query_one("SELECT 1", &[]).await.map(|_| ())
    }
}

/// Checks a bearer token before the route's handler runs.
async fn require_token(State(state): State<AdminState>, request: Request, next: Next) -> Response {
    match state.authorize(request.headers()).await {
        Ok(()) => next.run(request).await,
        Err(p) => p.into_response(),
    }
}

// ---- problems ----

/// The kinds of problem the API reports; each has one `type`, title and status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    InvalidRequest,
    NotFound,
    Conflict,
    OperationFailed,
    UpstreamUnavailable,
    CatalogUnavailable,
    NotReady,
    Unauthorized,
    NoSuchRoute,
    MethodNotAllowed,
    MalformedJson,
    InvalidBody,
    UnsupportedMediaType,
    PayloadTooLarge,
    Internal,
}

impl Kind {
    pub fn status(self) -> StatusCode {
        match self {
            Kind::InvalidRequest | Kind::MalformedJson | Kind::InvalidBody => StatusCode::BAD_REQUEST,
            Kind::NotFound | Kind::NoSuchRoute => StatusCode::NOT_FOUND,
            Kind::Conflict => StatusCode::CONFLICT,
            Kind::OperationFailed => StatusCode::UNPROCESSABLE_ENTITY,
            Kind::UpstreamUnavailable => StatusCode::BAD_GATEWAY,
            Kind::CatalogUnavailable | Kind::NotReady => StatusCode::SERVICE_UNAVAILABLE,
            Kind::Unauthorized => StatusCode::UNAUTHORIZED,
            Kind::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Kind::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Kind::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Kind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The last part of the problem `type`.
    pub fn slug(self) -> &'static str {
        match self {
            Kind::InvalidRequest => "invalid-request",
            Kind::NotFound => "not-found",
            Kind::Conflict => "conflict",
            Kind::OperationFailed => "operation-failed",
            Kind::UpstreamUnavailable => "upstream-unavailable",
            Kind::CatalogUnavailable => "catalog-unavailable",
            Kind::NotReady => "not-ready",
            Kind::Unauthorized => "unauthorized",
            Kind::NoSuchRoute => "no-such-route",
            Kind::MethodNotAllowed => "method-not-allowed",
            Kind::MalformedJson => "malformed-json",
            Kind::InvalidBody => "invalid-body",
            Kind::UnsupportedMediaType => "unsupported-media-type",
            Kind::PayloadTooLarge => "payload-too-large",
            Kind::Internal => "internal",
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Kind::InvalidRequest => "The request is invalid",
            Kind::NotFound => "No such tenant",
            Kind::Conflict => "The tenant's state does not allow this now",
            Kind::OperationFailed => "The operation failed on the upstream",
            Kind::UpstreamUnavailable => "The upstream server is unreachable",
            Kind::CatalogUnavailable => "The control database is unavailable",
            Kind::NotReady => "Not ready",
            Kind::Unauthorized => "A valid bearer token is required",
            Kind::NoSuchRoute => "No such route",
            Kind::MethodNotAllowed => "Method not allowed on this route",
            Kind::MalformedJson => "The body is not valid JSON",
            Kind::InvalidBody => "The body does not match the expected schema",
            Kind::UnsupportedMediaType => "The body must be application/json",
            Kind::PayloadTooLarge => "The body is too large",
            Kind::Internal => "Internal error",
        }
    }

    pub fn type_uri(self) -> String {
        format!("{PROBLEM_TYPE_PREFIX}{}", self.slug())
    }
}

/// An RFC 9457 problem details response.
#[derive(Debug)]
pub struct Problem {
    kind: Kind,
    detail: String,
    /// Extension members (RFC 9457 section 3.2).
    extensions: serde_json::Map<String, Value>,
    /// 401: the `WWW-Authenticate` challenge (RFC 6750 section 3).
    challenge: Option<&'static str>,
}

impl Problem {
    pub fn new(kind: Kind, detail: impl Into<String>) -> Problem {
        Problem { kind, detail: detail.into(), extensions: serde_json::Map::new(), challenge: None }
    }

    fn unauthorized(detail: &str, token_sent: bool) -> Problem {
        Problem {
            challenge: Some(if token_sent {
                "Bearer realm=\"pgtenant\", error=\"invalid_token\""
            } else {
                "Bearer realm=\"pgtenant\""
            }),
            ..Problem::new(Kind::Unauthorized, detail)
        }
    }

    fn with(mut self, name: &str, value: Value) -> Problem {
        self.extensions.insert(name.to_owned(), value);
        self
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = self.kind.status();
        let mut body = self.extensions;
        body.insert("type".into(), Value::String(self.kind.type_uri()));
        body.insert("title".into(), Value::String(self.kind.title().into()));
        body.insert("status".into(), Value::from(status.as_u16()));
        body.insert("detail".into(), Value::String(self.detail));
        let mut response = (status, Value::Object(body).to_string()).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        if let Some(challenge) = self.challenge {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
        }
        response
    }
}

impl From<LifecycleError> for Problem {
    fn from(e: LifecycleError) -> Problem {
        let kind = match &e {
            LifecycleError::Invalid(_) => Kind::InvalidRequest,
            LifecycleError::NotFound(_) => Kind::NotFound,
            LifecycleError::Conflict(_) => Kind::Conflict,
            LifecycleError::Failed(_) => Kind::OperationFailed,
            LifecycleError::Upstream(_) => Kind::UpstreamUnavailable,
            LifecycleError::Catalog(_) => Kind::CatalogUnavailable,
        };
        // LifecycleError's text is written to be shown to the operator (no secrets).
        Problem::new(kind, e.to_string())
    }
}

impl From<JsonRejection> for Problem {
    fn from(r: JsonRejection) -> Problem {
        let kind = match &r {
            JsonRejection::JsonDataError(_) => Kind::InvalidBody,
            JsonRejection::JsonSyntaxError(_) => Kind::MalformedJson,
            JsonRejection::MissingJsonContentType(_) => Kind::UnsupportedMediaType,
            JsonRejection::BytesRejection(b) => return Problem::from_bytes_rejection(b),
            // The enum is non_exhaustive: judge a future variant by its status.
            _ if r.status().is_server_error() => Kind::Internal,
            _ => Kind::InvalidBody,
        };
        Problem::new(kind, r.body_text())
    }
}

impl Problem {
    fn from_bytes_rejection(r: &BytesRejection) -> Problem {
        let kind = match r.status() {
            StatusCode::PAYLOAD_TOO_LARGE => Kind::PayloadTooLarge,
            s if s.is_server_error() => Kind::Internal,
            _ => Kind::InvalidRequest,
        };
        Problem::new(kind, r.body_text())
    }
}

impl From<QueryRejection> for Problem {
    fn from(r: QueryRejection) -> Problem {
        Problem::new(Kind::InvalidRequest, r.body_text())
    }
}

impl From<PathRejection> for Problem {
    fn from(r: PathRejection) -> Problem {
        let kind = if r.status().is_server_error() { Kind::Internal } else { Kind::InvalidRequest };
        Problem::new(kind, r.body_text())
    }
}

// ---- extractors that reject with problems ----

/// A JSON body (`application/json`), or a problem.
struct Body<T>(T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Body<T> {
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Problem> {
        Json::<T>::from_request(req, state).await.map(|Json(v)| Body(v)).map_err(Problem::from)
    }
}

/// A JSON body that may be left out: an empty body is `T::default()`.
struct OptionalBody<T>(T);

impl<T: DeserializeOwned + Default, S: Send + Sync> FromRequest<S> for OptionalBody<T> {
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Problem> {
        let json = is_json(req.headers());
        let bytes = Bytes::from_request(req, state).await.map_err(|r| Problem::from_bytes_rejection(&r))?;
        if bytes.is_empty() {
            return Ok(OptionalBody(T::default()));
        }
        if !json {
            return Err(Problem::new(
                Kind::UnsupportedMediaType,
                "a request body must be sent with `Content-Type: application/json`",
            ));
        }
        Json::<T>::from_bytes(&bytes).map(|Json(v)| OptionalBody(v)).map_err(Problem::from)
    }
}

/// `application/json`, or any `application/…+json`, with or without parameters.
fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Query parameters, or a problem.
struct Params<T>(T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Params<T> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        Query::<T>::from_request_parts(parts, state).await.map(|Query(v)| Params(v)).map_err(Problem::from)
    }
}

/// The `{id}` of a route, or a problem (the lifecycle validates it as a tenant id).
struct TenantPath(String);

impl<S: Send + Sync> FromRequestParts<S> for TenantPath {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        Path::<String>::from_request_parts(parts, state)
            .await
            .map(|Path(v)| TenantPath(v))
            .map_err(Problem::from)
    }
}

// ---- handlers ----

async fn no_such_route(request: Request) -> Problem {
    Problem::new(Kind::NoSuchRoute, format!("no route {} (see GET /openapi.json)", request.uri().path()))
}

async fn method_not_allowed(request: Request) -> Problem {
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
async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// The proxy takes clients (it is not draining) and the control database answers.
async fn readyz(State(state): State<AdminState>) -> Result<Json<Value>, Problem> {
    if state.inner.proxy.shutdown.drain.is_cancelled() {
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

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

async fn create_tenant(
    State(state): State<AdminState>,
    Body(req): Body<CreateTenant>,
) -> Result<Response, Problem> {
    let info = state.run(|lc| async move { lc.create(req).await }).await?;
    let mut response = (StatusCode::CREATED, Json(&info)).into_response();
    // The id passed TenantId's check, so it is a valid header value; if not, no Location.
    if let Ok(location) = HeaderValue::from_str(&format!("/tenants/{}", info.id)) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

async fn list_tenants(State(state): State<AdminState>) -> Result<Response, Problem> {
    let tenants = state.run(|lc| async move { lc.list().await }).await?;
    Ok(Json(tenants).into_response())
}

async fn get_tenant(
    State(state): State<AdminState>,
    TenantPath(id): TenantPath,
) -> Result<Response, Problem> {
    let info = state.run(|lc| async move { lc.get(&id).await }).await?;
    Ok(Json(info).into_response())
}

async fn update_tenant(
    State(state): State<AdminState>,
    TenantPath(id): TenantPath,
    Body(patch): Body<UpdateTenant>,
) -> Result<Response, Problem> {
    let info = state.run(|lc| async move { lc.update(&id, patch).await }).await?;
    Ok(Json(info).into_response())
}

async fn suspend_tenant(
    State(state): State<AdminState>,
    TenantPath(id): TenantPath,
) -> Result<Response, Problem> {
    let info = state.run(|lc| async move { lc.suspend(&id).await }).await?;
    Ok(Json(info).into_response())
}

async fn resume_tenant(
    State(state): State<AdminState>,
    TenantPath(id): TenantPath,
) -> Result<Response, Problem> {
    let info = state.run(|lc| async move { lc.resume(&id).await }).await?;
    Ok(Json(info).into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ForceParams {
    #[serde(default)]
    force: bool,
}

async fn archive_tenant(
    State(state): State<AdminState>,
    TenantPath(id): TenantPath,
    Params(q): Params<ForceParams>,
) -> Result<Response, Problem> {
    let info = state.run(|lc| async move { lc.archive(&id, q.force).await }).await?;
    Ok(Json(info).into_response())
}

async fn restore_tenant(
    State(state): State<AdminState>,
    TenantPath(id): TenantPath,
) -> Result<Response, Problem> {
    let info = state.run(|lc| async move { lc.restore(&id).await }).await?;
    Ok(Json(info).into_response())
}

/// `POST /tenants/{id}/move`'s body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MoveRequest {
    /// The catalog upstream to move the tenant to.
    to: String,
}

/// Moves a `database` tenant to another upstream (`pg_dump | pg_restore`).
async fn move_tenant(
    State(state): State<AdminState>,
    TenantPath(id): TenantPath,
    Body(req): Body<MoveRequest>,
) -> Result<Response, Problem> {
    let info = state.run(|lc| async move { lc.relocate(&id, &req.to).await }).await?;
    Ok(Json(info).into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeleteParams {
    /// Drop the data instead of renaming it `deleted_…`.
    #[serde(default)]
    hard: bool,
    #[serde(default)]
    force: bool,
}

async fn delete_tenant(
    State(state): State<AdminState>,
    TenantPath(id): TenantPath,
    Params(q): Params<DeleteParams>,
) -> Result<StatusCode, Problem> {
    state.run(|lc| async move { lc.delete(&id, q.hard, q.force).await }).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DryRun {
    #[serde(default)]
    dry_run: bool,
}

/// Migrates one tenant: 200 with its line, or a 422 problem carrying the line when a
/// migration failed.
async fn migrate_tenant(
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
enum OnFailure {
    #[default]
    Continue,
    Stop,
}

/// `POST /migrate`'s body (all optional).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MigrateRequest {
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
const MAX_PARALLEL: usize = 256;

#[derive(Debug, Serialize)]
struct MigrateSummary {
    dry_run: bool,
    results: Vec<TenantMigration>,
    failed: usize,
}

/// Migrates many tenants; 200 whatever each tenant's outcome, with the count that failed.
async fn migrate_all(
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

async fn tenant_health(
    State(state): State<AdminState>,
    TenantPath(id): TenantPath,
) -> Result<Response, Problem> {
    let health = state.run(|lc| async move { lc.health(&id).await }).await?;
    Ok(Json(health).into_response())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    const METHODS: [&str; 8] = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];

    fn document() -> Value {
        serde_json::from_str(OPENAPI).expect("openapi.json is JSON")
    }

    #[test]
    fn the_openapi_document_lists_exactly_the_routes() {
        let doc = document();
        assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")), "an OpenAPI 3 document");
        let paths = doc["paths"].as_object().expect("paths");
        let mut documented = BTreeSet::new();
        for (path, item) in paths {
            for method in METHODS {
                if let Some(op) = item.get(method) {
                    // `security: []` marks the public routes; the rest inherit the bearer scheme.
                    let public = op.get("security").is_some_and(|s| s.as_array().is_some_and(Vec::is_empty));
                    let access = if public { Access::Public } else { Access::Bearer };
                    documented.insert((method.to_owned(), path.clone(), format!("{access:?}")));
                }
            }
        }
        let served: BTreeSet<_> = ROUTES
            .iter()
            .map(|r| (r.method.to_owned(), r.path.to_owned(), format!("{:?}", r.access)))
            .collect();
        assert_eq!(documented, served);
        assert_eq!(served.len(), ROUTES.len(), "a route is declared twice");
    }

    #[test]
    fn the_openapi_document_names_every_problem_type_and_resolves_its_refs() {
        let doc = document();
        let text = OPENAPI;
        for kind in [
            Kind::InvalidRequest,
            Kind::NotFound,
            Kind::Conflict,
            Kind::OperationFailed,
            Kind::UpstreamUnavailable,
            Kind::CatalogUnavailable,
            Kind::NotReady,
            Kind::Unauthorized,
            Kind::NoSuchRoute,
            Kind::MethodNotAllowed,
            Kind::MalformedJson,
            Kind::InvalidBody,
            Kind::UnsupportedMediaType,
            Kind::PayloadTooLarge,
            Kind::Internal,
        ] {
            assert!(text.contains(&kind.type_uri()), "{} is not documented", kind.type_uri());
        }
        // Every local $ref points at something that exists.
        let mut refs = Vec::new();
        collect_refs(&doc, &mut refs);
        assert!(!refs.is_empty());
        for r in refs {
            let pointer = r.strip_prefix('#').expect("local ref");
            assert!(doc.pointer(pointer).is_some(), "dangling $ref {r}");
        }
    }

    fn collect_refs(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("$ref", Value::String(s)) => out.push(s.clone()),
                        _ => collect_refs(v, out),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|v| collect_refs(v, out)),
            _ => {}
        }
    }

    #[test]
    fn lifecycle_errors_map_to_statuses() {
        let cases = [
            (LifecycleError::Invalid("x".into()), 400),
            (LifecycleError::NotFound("x".into()), 404),
            (LifecycleError::Conflict("x".into()), 409),
            (LifecycleError::Failed("x".into()), 422),
            (LifecycleError::Upstream("x".into()), 502),
            (LifecycleError::Catalog("x".into()), 503),
        ];
        for (e, status) in cases {
            assert_eq!(Problem::from(e).into_response().status().as_u16(), status);
        }
    }

    #[test]
    fn bearer_tokens_and_content_types() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        for (value, want) in [
            ("Bearer abc", Some("abc")),
            ("bearer  abc ", Some("abc")),
            ("Basic abc", None),
            ("Bearer ", None),
            ("Bearer", None),
        ] {
            h.insert(header::AUTHORIZATION, HeaderValue::from_static(value));
            assert_eq!(bearer(&h), want, "{value}");
        }
        for (value, want) in [
            ("application/json", true),
            ("Application/JSON; charset=utf-8", true),
            ("application/merge-patch+json", true),
            ("text/plain", false),
            ("application/jsonx", false),
        ] {
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(value));
            assert_eq!(is_json(&h), want, "{value}");
        }
        let d = crate::admin::token_digest("abc");
        assert!(same(&d, &d));
        assert!(!same(&d, &crate::admin::token_digest("abd")));
    }
}
