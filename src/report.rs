//! Background reporting, off the data path: the usage flusher (finished minutes of every
//! tenant's usage added to the control database's `pgtenant.usage`, retried until written,
//! the open minute flushed at shutdown, old rows deleted) and the periodic `stats:` log line.
//!
//! With a static catalog there is no control database: usage then stays in memory (the
//! metrics and the console's counters), nothing is written.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::catalog::link::ControlLink;
use crate::catalog::store::usage::{add_usage, delete_usage_before};
use crate::config::secs;
use crate::metrics::{Metrics, UsageRow, UsageTotals};
use crate::proxy::Proxy;

/// Rows kept while the control database cannot be written (each a tenant and minute): past
/// this the oldest are dropped, with an error in the log, so an outage cannot grow memory
/// without bound (a day of 70 busy tenants).
const MAX_PENDING_ROWS: usize = 100_000;

/// How often rows past the retention are deleted.
const RETENTION_EVERY: Duration = Duration::from_secs(3600);

/// How long the shutdown flush may take.
const SHUTDOWN_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Usage rows not yet written, merged by (tenant, minute): a retry writes each once.
#[derive(Default)]
pub struct Pending {
    rows: BTreeMap<(u64, String), UsageTotals>,
}

impl Pending {
    pub fn add(&mut self, rows: Vec<UsageRow>) {
        for r in rows {
            let t = self.rows.entry((r.minute, r.tenant)).or_default();
            let o = r.totals;
            t.transactions += o.transactions;
            t.queries += o.queries;
            t.bytes_in += o.bytes_in;
            t.bytes_out += o.bytes_out;
            t.server_conn_us += o.server_conn_us;
            t.client_conn_us += o.client_conn_us;
            t.errors += o.errors;
        }
        while self.rows.len() > MAX_PENDING_ROWS {
            if let Some(((minute, tenant), _)) = self.rows.pop_first() {
                tracing::error!(tenant, minute, "usage: the control database has not been writable for long; dropping the oldest unwritten minute");
            }
        }
    }

    pub fn rows(&self) -> Vec<UsageRow> {
        self.rows
            .iter()
            .map(|((minute, tenant), totals)| UsageRow {
                tenant: tenant.clone(),
                minute: *minute,
                totals: *totals,
            })
            .collect()
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    fn clear(&mut self) {
        self.rows.clear();
    }
}

/// Writes what is pending over `db` (opened first when `None`); pending rows stay for the
/// next try when it fails.
async fn write(link: &ControlLink, db: &mut Option<tokio_postgres::Client>, pending: &mut Pending) -> bool {
    if pending.is_empty() {
        return true;
    }
    if db.as_ref().is_none_or(|c| c.is_closed()) {
        match link.open().await {
            Ok(c) => *db = Some(c),
            Err(e) => {
                tracing::warn!(error = %e, rows = pending.len(), "usage: cannot reach the control database; retrying at the next flush");
                return false;
            }
        }
    }
    let Some(client) = db.as_ref() else { return false };
    match add_usage(client, &pending.rows()).await {
        Ok(_) => {
            pending.clear();
            true
        }
        Err(e) => {
            tracing::warn!(error = %e, rows = pending.len(), "usage: write failed; retrying at the next flush");
            *db = None;
            false
        }
    }
}

/// Flushes usage every `[usage] flush_interval` until `stop`, then the open minute too.
/// Returns at once without a control database.
pub async fn flush_usage(proxy: Arc<Proxy>, stop: CancellationToken) {
    let url = &proxy.config().catalog.url;
    if url.is_empty() {
        return;
    }
    let link = match ControlLink::parse(url) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "usage: [catalog] url unusable; usage is not written");
            return;
        }
    };
    let cfg = &proxy.config().usage;
    let mut tick = tokio::time::interval(secs(cfg.flush_interval));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut pending = Pending::default();
    let mut db = None;
    let mut last_retention: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        pending.add(proxy.metrics.drain_usage());
        if write(&link, &mut db, &mut pending).await
            && cfg.retention > 0
            && last_retention.is_none_or(|t| t.elapsed() >= RETENTION_EVERY)
        {
            last_retention = Some(Instant::now());
            if let Some(client) = db.as_ref() {
                match delete_usage_before(client, cfg.retention).await {
                    Ok(n) if n > 0 => {
                        tracing::info!(rows = n, days = cfg.retention, "usage: old rows deleted")
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "usage: retention delete failed"),
                }
            }
        }
    }
    pending.add(proxy.metrics.flush_usage());
    let rows = pending.len();
    match tokio::time::timeout(SHUTDOWN_FLUSH_TIMEOUT, write(&link, &mut db, &mut pending)).await {
        Ok(true) => tracing::info!(rows, "usage flushed"),
        _ => tracing::error!(rows, "usage: the shutdown flush failed; these minutes are lost"),
    }
}

/// Totals across tenants, as the stats line needs them.
#[derive(Clone, Copy, Default)]
struct Totals {
    transactions: u64,
    queries: u64,
    bytes_in: u64,
    bytes_out: u64,
    transaction_us: u64,
    query_us: u64,
    wait_us: u64,
    waits: u64,
}

fn totals(metrics: &Metrics) -> Totals {
    let mut t = Totals::default();
    for (_, s) in metrics.tenants() {
        t.transactions += s.transactions;
        t.queries += s.queries;
        t.bytes_in += s.bytes_in;
        t.bytes_out += s.bytes_out;
        t.transaction_us += s.transaction_time.sum_us;
        t.query_us += s.query_time.sum_us;
        t.wait_us += s.pool_wait.sum_us;
        t.waits += s.pool_wait.count();
    }
    t
}

/// The period of the console's averages while `[log] stats_period` is 0 (no stats line).
const AVERAGES_PERIOD_WITHOUT_LINE: Duration = Duration::from_secs(60);

/// Every `[log] stats_period` (read afresh each period, so a reload or the console's `SET
/// stats_period` applies): ends a period of the console's averages, and logs a `stats:`
/// line (PgBouncer's format: rates over the period, and the average transaction, query
/// and wait times of the period) unless the period is 0.
pub async fn log_stats(proxy: Arc<Proxy>, stop: CancellationToken) {
    proxy.metrics.roll_averages();
    let mut before = totals(&proxy.metrics);
    let mut at = Instant::now();
    loop {
        let period = proxy.config().log.stats_period;
        let wait = if period > 0.0 { secs(period) } else { AVERAGES_PERIOD_WITHOUT_LINE };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        proxy.metrics.roll_averages();
        if proxy.config().log.stats_period <= 0.0 {
            before = totals(&proxy.metrics);
            at = Instant::now();
            continue;
        }
        let now = totals(&proxy.metrics);
        let secs = at.elapsed().as_secs_f64().max(1e-3);
        at = Instant::now();
        // Tenants swept from the registry take their totals with them: never negative.
        let d = |a: u64, b: u64| a.saturating_sub(b);
        let txs = d(now.transactions, before.transactions);
        let qs = d(now.queries, before.queries);
        let waits = d(now.waits, before.waits);
        tracing::info!(
            "stats: {:.0} xacts/s, {:.0} queries/s, in {:.0} B/s, out {:.0} B/s, xact {} us, query {} us, wait {} us, clients {}",
            txs as f64 / secs,
            qs as f64 / secs,
            d(now.bytes_in, before.bytes_in) as f64 / secs,
            d(now.bytes_out, before.bytes_out) as f64 / secs,
            d(now.transaction_us, before.transaction_us).checked_div(txs).unwrap_or(0),
            d(now.query_us, before.query_us).checked_div(qs).unwrap_or(0),
            d(now.wait_us, before.wait_us).checked_div(waits).unwrap_or(0),
            proxy.client_count(),
        );
        before = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(tenant: &str, minute: u64, transactions: u64) -> UsageRow {
        UsageRow {
            tenant: tenant.into(),
            minute,
            totals: UsageTotals { transactions, ..UsageTotals::default() },
        }
    }

    #[test]
    fn pending_rows_merge_by_tenant_and_minute() {
        let mut p = Pending::default();
        p.add(vec![row("a", 60, 2), row("b", 60, 1)]);
        // A failed write keeps them; the next drain's rows add to the same keys.
        p.add(vec![row("a", 60, 3), row("a", 120, 1)]);
        let rows = p.rows();
        assert_eq!(rows, vec![row("a", 60, 5), row("b", 60, 1), row("a", 120, 1)]);
    }
}
