//! `GET /metrics`: the Prometheus exposition, on the admin API (behind its token) and on
//! `[metrics] listen` (a listener of its own, without a token, as PgBouncer's exporters are
//! scraped).

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::AdminState;
use crate::proxy::Proxy;

/// The content type of the OpenMetrics text format that `prometheus-client` writes.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The exposition of `proxy` now: the pool gauges and connect counters are read from the
/// pools at scrape time, then everything is rendered.
pub fn exposition(proxy: &Proxy) -> String {
    for pool in proxy.pools.pools() {
        let name = crate::metrics::pool_name(pool.key());
        let busy = i64::try_from(pool.busy_count()).unwrap_or(i64::MAX);
        let idle = i64::try_from(pool.idle_count()).unwrap_or(i64::MAX);
        let stats = proxy.metrics.pool(&name);
        stats.set_servers(busy, idle);
        let (connects, failures) = pool.connect_counts();
        stats.set_connects(connects, failures);
    }
    let large = &proxy.large_messages;
    proxy.metrics.global().set_large_messages(large.held(), large.size());
    if let Some(up) = proxy.catalog.control_up() {
        proxy.metrics.global().set_control_db_up(up);
    }
    proxy.metrics.render()
}

fn answer(proxy: &Proxy) -> Response {
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], exposition(proxy)).into_response()
}

pub(super) async fn metrics(State(state): State<AdminState>) -> Response {
    answer(&state.inner.proxy)
}

/// Serves `GET /metrics` alone on `listener`, without a token, until `shutdown` fires.
pub async fn serve(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let router = Router::new()
        .route("/metrics", axum::routing::get(|State(p): State<Arc<Proxy>>| async move { answer(&p) }))
        .with_state(proxy);
    axum::serve(listener, router).with_graceful_shutdown(shutdown.cancelled_owned()).await
}
