//! `[metrics]`, `[usage]` and `[log]`: what pgtenant exports about itself (Prometheus
//! metrics, usage rows per tenant and minute, connection and stats log lines).

use serde::Deserialize;

/// `[metrics]`: the Prometheus exposition.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// How many of the most active tenants (and pools) get series of their own (default
    /// 100, `metrics::DEFAULT_TOP`); the rest
    /// are summed under `tenant="_other"`, so a scrape has at most this + 1 tenant values.
    pub top_tenants: usize,
    /// A listener of its own serving only `GET /metrics`, without a token (as PgBouncer's
    /// exporters are scraped), e.g. `127.0.0.1:9127` ("" = none). Bind it to an address only
    /// the scraper reaches. On the admin API's listener `/metrics` needs an admin token
    /// (`Authorization: Bearer`, which Prometheus' `authorization` scrape setting sends).
    pub listen: String,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig { top_tenants: 100, listen: String::new() }
    }
}

/// `[usage]`: per-tenant usage per minute, written to the control database's
/// `pgtenant.usage` (with a static catalog it stays in memory: metrics and SHOW only).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UsageConfig {
    /// Seconds between two flushes of finished minutes to the control database (at most
    /// 60; a shorter interval only makes the rows show up sooner).
    pub flush_interval: f64,
    /// Days usage rows are kept; older ones are deleted about once an hour (0 = forever).
    pub retention: u32,
}

impl Default for UsageConfig {
    fn default() -> Self {
        UsageConfig { flush_interval: 60.0, retention: 90 }
    }
}

/// `[log]`: the log lines about clients, as PgBouncer's `log_connections`,
/// `log_disconnections` and `stats_period`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A line per login: tenant, user, client address, TLS, auth method, time to log in.
    pub connections: bool,
    /// A line per disconnect: duration, transactions, bytes in and out, reason.
    pub disconnections: bool,
    /// Seconds between two `stats:` lines (totals and per-second rates; 0 = none).
    pub stats_period: f64,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { connections: true, disconnections: true, stats_period: 60.0 }
    }
}

impl UsageConfig {
    pub(super) fn check(&self) -> Result<(), String> {
        let v = self.flush_interval;
        if !(v.is_finite() && v > 0.0 && v <= 60.0) {
            return Err(format!("usage.flush_interval must be between 0 and 60 seconds, got {v}"));
        }
        Ok(())
    }
}

impl LogConfig {
    pub(super) fn check(&self) -> Result<(), String> {
        let v = self.stats_period;
        if !(v.is_finite() && (0.0..1e9).contains(&v)) {
            return Err(format!("log.stats_period must be ≥ 0 seconds, got {v}"));
        }
        Ok(())
    }
}
