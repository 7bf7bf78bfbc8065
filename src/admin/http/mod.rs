//! The HTTP admin API: tenant lifecycle over JSON (the same [`Lifecycle`] the CLI uses),
//! health and readiness probes, and the OpenAPI document that describes it all.
//!
//! Every answer that is not a success is an RFC 9457 problem (`application/problem+json`):
//! lifecycle errors, bad tokens, and axum's own rejections (unparsable JSON, a wrong content
//! type, an unknown route or method) alike. Bad input never gives a 500.
//!
//! [`ROUTES`] is the one list of routes: the router is built from it and a unit test holds the
//! OpenAPI document to it, path for path and method for method. Here: the routes, the shared
//! state and how a lifecycle operation runs; [`auth`] checks tokens, [`tenants`] and [`probes`]
//! hold the handlers, [`extract`] the extractors and [`problem`] the error answers.

mod auth;
mod extract;
pub mod metrics;
mod pause;
mod probes;
mod problem;
mod tenants;
mod usage;

use std::future::Future;
use std::sync::Arc;

use axum::routing::MethodRouter;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{secs, Config};
use crate::lifecycle::{Lifecycle, LifecycleError};
use crate::proxy::Proxy;
use auth::{require_token, Control};
pub use problem::{Kind, Problem};

/// The OpenAPI 3.1 description of every route, served at `GET /openapi.json`.
pub const OPENAPI: &str = include_str!("../openapi.json");

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
    ($($access:ident $method:ident $path:literal => $handler:path;)*) => {
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
    Public get "/healthz" => probes::healthz;
    Public get "/readyz" => probes::readyz;
    Public get "/openapi.json" => probes::openapi;
    Bearer get "/instances" => probes::instances;
    Bearer post "/tenants" => tenants::create_tenant;
    Bearer get "/tenants" => tenants::list_tenants;
    Bearer get "/tenants/{id}" => tenants::get_tenant;
    Bearer patch "/tenants/{id}" => tenants::update_tenant;
    Bearer delete "/tenants/{id}" => tenants::delete_tenant;
    Bearer post "/tenants/{id}/suspend" => tenants::suspend_tenant;
    Bearer post "/tenants/{id}/resume" => tenants::resume_tenant;
    Bearer post "/tenants/{id}/archive" => tenants::archive_tenant;
    Bearer post "/tenants/{id}/restore" => tenants::restore_tenant;
    Bearer post "/tenants/{id}/move" => tenants::move_tenant;
    Bearer post "/tenants/{id}/migrate" => tenants::migrate_tenant;
    Bearer get "/tenants/{id}/health" => tenants::tenant_health;
    Bearer post "/tenants/{id}/pause" => pause::pause_tenant;
    Bearer delete "/tenants/{id}/pause" => pause::unpause_tenant;
    Bearer get "/tenants/{id}/usage" => usage::tenant_usage;
    Bearer post "/migrate" => tenants::migrate_all;
    Bearer get "/metrics" => metrics::metrics;
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
        .fallback(probes::no_such_route)
        // After every route: it applies to the method routers registered so far.
        .method_not_allowed_fallback(probes::method_not_allowed)
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
    /// `[admin] token_sha256`, until the proxy's configuration is reloaded: then the
    /// reloaded file's (see `auth.rs`).
    tokens: Vec<[u8; 32]>,
    /// The proxy's configuration when this API started, to tell that a reload happened.
    started_with: Arc<Config>,
}

impl AdminState {
    pub(crate) fn proxy(&self) -> &Arc<Proxy> {
        &self.inner.proxy
    }

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
        let started_with = proxy.config_arc();
        Ok(AdminState { inner: Arc::new(Inner { proxy, config, control, tokens, started_with }) })
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use axum::http::{header, HeaderMap, HeaderValue};
    use axum::response::IntoResponse;
    use serde_json::Value;

    use super::auth::{bearer, same};
    use super::extract::is_json;
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
