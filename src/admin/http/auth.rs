//! Who may call the API: bearer tokens checked against `[admin] token_sha256` (in constant
//! time) and then against the control database's stored tokens.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::catalog::store;

use super::problem::{Kind, Problem};
use super::AdminState;

impl AdminState {
    /// Checks the request's bearer token against the config, then the catalog.
    pub(super) async fn authorize(&self, headers: &HeaderMap) -> Result<(), Problem> {
        let Some(token) = bearer(headers) else {
            return Err(Problem::unauthorized("send `Authorization: Bearer <token>`", false));
        };
        let digest = crate::admin::token_digest(token);
        // Once the proxy's configuration was reloaded, the reloaded file's tokens are the
        // ones in force (a reload validated them; one that does not parse matches nothing).
        let live = self.inner.proxy.config_arc();
        let reloaded: Vec<[u8; 32]>;
        let tokens = if Arc::ptr_eq(&live, &self.inner.started_with) {
            &self.inner.tokens
        } else {
            reloaded = live
                .admin
                .token_sha256
                .iter()
                .filter_map(|h| crate::admin::parse_sha256_hex(h.trim()))
                .collect();
            &reloaded
        };
        // Every configured digest is compared, in constant time, whichever matches.
        let configured = tokens.iter().fold(false, |found, t| found | same(t, &digest));
        if configured {
            return Ok(());
        }
        if let Some(control) = &self.inner.control {
            match control.token_known(&crate::auth::hex(&digest)).await {
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
}

/// Byte-wise equality that takes the same time wherever the first difference is.
pub(super) fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    crate::sql::same_bytes(a, b)
}

/// The token of an `Authorization: Bearer <token>` header (the scheme is case-insensitive,
/// RFC 9110 section 11.1).
pub(super) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// One control-database connection shared by token checks and readiness probes, opened on
/// first use and again after it breaks.
pub(super) struct Control {
    /// The control database (TLS as its URL asks).
    pub(super) config: crate::catalog::link::ControlLink,
    /// For connecting and for each query: a probe must answer even when the database hangs.
    pub(super) timeout: Duration,
    pub(super) client: tokio::sync::Mutex<Option<Arc<tokio_postgres::Client>>>,
}

impl Control {
    pub(super) async fn client(&self) -> Result<Arc<tokio_postgres::Client>, String> {
        let mut slot = self.client.lock().await;
        if let Some(c) = slot.as_ref().filter(|c| !c.is_closed()) {
            return Ok(c.clone());
        }
        let client = tokio::time::timeout(self.timeout, self.config.open())
            .await
            .map_err(|_| format!("no connection within {:?}", self.timeout))?
            .map_err(|e| e.to_string())?;
        let client = Arc::new(client);
        *slot = Some(client.clone());
        Ok(client)
    }

    /// Runs `query` on the shared connection within the timeout.
    pub(super) async fn within<T, Fut>(
        &self,
        query: impl FnOnce(Arc<tokio_postgres::Client>) -> Fut,
    ) -> Result<T, String>
    where
        Fut: Future<Output = Result<T, tokio_postgres::Error>>,
    {
        let client = self.client().await?;
        tokio::time::timeout(self.timeout, query(client))
            .await
            .map_err(|_| format!("no answer within {:?}", self.timeout))?
            .map_err(|e| e.to_string())
    }

    pub(super) async fn token_known(&self, sha256_hex: &str) -> Result<bool, String> {
        self.within(|db| async move { store::admin_token_known(&db, sha256_hex).await }).await
    }

    /// The live rows of the instance registry (`GET /instances`).
    pub(super) async fn instances(
        &self,
        expiry_secs: f64,
    ) -> Result<Vec<crate::catalog::store_instances::InstanceRow>, String> {
        self.within(|db| async move { crate::catalog::store_instances::live(&db, expiry_secs).await }).await
    }

    pub(super) async fn ping(&self) -> Result<(), String> {
        self.within(|db| async move { db.query_one("SELECT 1", &[]).await.map(|_| ()) }).await
    }
}

/// Checks a bearer token before the route's handler runs.
pub(super) async fn require_token(State(state): State<AdminState>, request: Request, next: Next) -> Response {
    match state.authorize(request.headers()).await {
        Ok(()) => next.run(request).await,
        Err(p) => p.into_response(),
    }
}
