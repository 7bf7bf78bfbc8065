//! Metrics: per-tenant, per-pool and process-wide counters, their Prometheus exposition with
//! a bounded number of tenant series, and usage per tenant and minute for billing.
//!
//! Recording is an atomic add on a handle looked up once (a client session holds its
//! tenant's `Arc<TenantStats>` from login on; a server connection its pool's), never a lock
//! or a map lookup per message. Everything else (ranking tenants, summing the rest under
//! `tenant="_other"`, usage deltas) happens at scrape or drain time.
//!
//! The exposition uses `prometheus-client` (the Prometheus project's own Rust client): its
//! `Collector` lets a scrape decide which series exist, which the cardinality cap needs,
//! and it is small (no global recorder, no background thread). The `metrics` facade with
//! `metrics-exporter-prometheus` would have put a map lookup by label set behind every
//! increment and kept every tenant's series alive.

pub mod averages;
pub mod exposition;
pub mod pool;
pub mod tenant;
pub mod usage;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Instant, SystemTime};

pub use pool::{pool_name, GlobalStats, PoolStats, ServerConnMetric, ServerState};
pub use tenant::{ClientSession, ClientState, ErrorSource, TenantStats};
pub use usage::{UsageRow, UsageTotals};

pub use exposition::{PoolSnapshot, TenantSnapshot};

use exposition::Ranker;
use usage::UsageLedger;

/// The label value that sums the tenants (or pools) outside the top N.
pub const OTHER: &str = "_other";

/// How many tenants and pools get series of their own by default.
pub const DEFAULT_TOP: usize = 100;

/// A tenant nobody holds leaves the registry after this many usage drains in a row saw
/// nothing from it (about ten minutes with a drain a minute): a tenant whose clients come
/// and go keeps its series.
const SWEEP_AFTER_QUIET_DRAINS: u32 = 10;

/// The registry. Cloning shares it.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    top_tenants: AtomicUsize,
    top_pools: AtomicUsize,
    /// The origin of the connection-time clocks.
    epoch: Instant,
    tenants: RwLock<HashMap<String, Arc<TenantStats>>>,
    pools: RwLock<HashMap<String, Arc<PoolStats>>>,
    global: GlobalStats,
    usage: Mutex<UsageLedger>,
    tenant_rank: Mutex<Ranker>,
    pool_rank: Mutex<Ranker>,
    /// What tenants dropped from the registry had counted, so totals stay exact.
    retired: Mutex<TenantSnapshot>,
    /// The last stats period's averages per tenant.
    averages: Mutex<averages::Averages>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new(DEFAULT_TOP)
    }
}

impl Metrics {
    /// A registry where the `top` most active tenants and pools get series of their own.
    pub fn new(top: usize) -> Self {
        Metrics {
            inner: Arc::new(Inner {
                top_tenants: AtomicUsize::new(top),
                top_pools: AtomicUsize::new(top),
                epoch: Instant::now(),
                tenants: RwLock::default(),
                pools: RwLock::default(),
                global: GlobalStats::default(),
                usage: Mutex::default(),
                tenant_rank: Mutex::default(),
                pool_rank: Mutex::default(),
                retired: Mutex::default(),
                averages: Mutex::default(),
            }),
        }
    }

    /// Changes the caps live (on reload).
    pub fn set_top(&self, tenants: usize, pools: usize) {
        self.inner.top_tenants.store(tenants, Relaxed);
        self.inner.top_pools.store(pools, Relaxed);
    }

    /// How many tenants get series of their own now.
    pub fn top(&self) -> usize {
        self.inner.top_tenants.load(Relaxed)
    }

    /// A tenant's counters, created on first use. Call once per session (at login).
    pub fn tenant(&self, tenant: &str) -> Arc<TenantStats> {
        if let Some(s) = read(&self.inner.tenants).get(tenant) {
            return s.clone();
        }
        write(&self.inner.tenants).entry(tenant.to_owned()).or_default().clone()
    }

    /// A logged-in client of `tenant`: counted as idle until told otherwise, and in the
    /// tenant's login count and connection time.
    pub fn client_session(&self, tenant: &str) -> ClientSession {
        self.inner.global.login();
        ClientSession::new(self.tenant(tenant), self.inner.epoch)
    }

    /// A pool's counters (keyed by the pool's display name, e.g. `host:port/db/role`).
    pub fn pool(&self, key: &str) -> Arc<PoolStats> {
        if let Some(s) = read(&self.inner.pools).get(key) {
            return s.clone();
        }
        write(&self.inner.pools).entry(key.to_owned()).or_default().clone()
    }

    pub fn global(&self) -> &GlobalStats {
        &self.inner.global
    }

    /// Every tracked tenant's counters, read now, by tenant id (for the console's SHOW
    /// STATS / SHOW TENANTS; tenants already swept are not listed).
    pub fn tenants(&self) -> Vec<(String, TenantSnapshot)> {
        let mut all: Vec<_> =
            read(&self.inner.tenants).iter().map(|(k, s)| (k.clone(), TenantSnapshot::of(s))).collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Every pool's counters, read now, by pool key.
    pub fn pools(&self) -> Vec<(String, PoolSnapshot)> {
        let mut all: Vec<_> =
            read(&self.inner.pools).iter().map(|(k, p)| (k.clone(), PoolSnapshot::of(p))).collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Ends a stats period (PgBouncer's `stats_period`): the averages SHOW STATS shows
    /// are those of the period that ended last.
    pub fn roll_averages(&self) {
        let tenants = self.tenants();
        lock(&self.inner.averages).roll(Instant::now(), tenants);
    }

    /// A tenant's averages over the last stats period.
    pub fn averages(&self, tenant: &str) -> averages::Average {
        lock(&self.inner.averages).of(tenant)
    }

    /// The Prometheus exposition (OpenMetrics text; serve it as
    /// `application/openmetrics-text; version=1.0.0; charset=utf-8`).
    pub fn render(&self) -> String {
        exposition::render(self)
    }

    /// Usage rows of the minutes finished by now, for the flusher.
    pub fn drain_usage(&self) -> Vec<UsageRow> {
        self.drain_usage_at(SystemTime::now())
    }

    /// Usage rows of the minutes before the one `wall` falls in. Whatever was recorded
    /// before this call is in these rows or in a later drain's, never in two.
    pub fn drain_usage_at(&self, wall: SystemTime) -> Vec<UsageRow> {
        let mut ledger = lock(&self.inner.usage);
        self.tick(&mut ledger, wall);
        ledger.take(Some(usage::minute_of(wall)))
    }

    /// Every usage row, the current minute's too (at shutdown).
    pub fn flush_usage(&self) -> Vec<UsageRow> {
        self.flush_usage_at(SystemTime::now())
    }

    /// Every usage row, what was recorded since the last drain filed under `wall`'s minute.
    /// If the wall clock stepped back, a minute already handed out may come again: rows are
    /// deltas, which the writer adds to what it stored.
    pub fn flush_usage_at(&self, wall: SystemTime) -> Vec<UsageRow> {
        let mut ledger = lock(&self.inner.usage);
        self.tick(&mut ledger, wall);
        ledger.take(None)
    }

    fn tick(&self, ledger: &mut UsageLedger, wall: SystemTime) {
        let now = Instant::now();
        let tenants = read(&self.inner.tenants);
        ledger.tick(tenants.iter().map(|(k, v)| (k.as_str(), &**v)), self.inner.epoch, now, wall);
        drop(tenants);
        self.sweep(ledger, now);
    }

    /// Drops tenants nobody holds, with no client connected and nothing left undrained,
    /// folding their counts into the retired totals: memory follows the tenants in use,
    /// not every tenant ever seen, and totals stay exact.
    fn sweep(&self, ledger: &mut UsageLedger, now: Instant) {
        let mut tenants = write(&self.inner.tenants);
        let idle: Vec<String> = tenants
            .iter()
            // Only the map holds it: nobody can record into it any more. Under the write
            // lock, nobody can take a new handle either.
            .filter(|(k, s)| {
                Arc::strong_count(s) == 1
                    && !s.has_clients()
                    && ledger.quiet(k) >= SWEEP_AFTER_QUIET_DRAINS
                    // Something recorded after the drain read it, by a holder since gone,
                    // waits for the next drain.
                    && ledger.settled(k, &UsageTotals::read(s, self.inner.epoch, now))
            })
            .map(|(k, _)| k.clone())
            .collect();
        if idle.is_empty() {
            return;
        }
        let mut retired = lock(&self.inner.retired);
        let mut rank = lock(&self.inner.tenant_rank);
        for k in idle {
            if let Some(s) = tenants.remove(&k) {
                retired.add(&TenantSnapshot::of(&s));
                ledger.forget(&k);
                rank.forget(&k);
            }
        }
    }
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

fn lock<T>(l: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    l.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests;
