//! Usage per tenant and minute, for billing and for finding noisy neighbours: deltas of the
//! tenants' cumulative counters, taken at each drain and filed under the minute of the
//! drain, so every unit recorded lands in exactly one row.
//!
//! The flusher drains at least once a minute (more often only sharpens the attribution to
//! minutes) and writes the rows it gets; a row is a delta, so a writer adds it to any row
//! already stored for the same tenant and minute (which happens after a shutdown flush of
//! the open minute).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use super::tenant::TenantStats;

/// What one tenant used in one minute (or a delta of it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UsageRow {
    pub tenant: String,
    /// Start of the minute, in seconds since the Unix epoch.
    pub minute: u64,
    pub totals: UsageTotals,
}

/// Cumulative or delta usage counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UsageTotals {
    pub transactions: u64,
    pub queries: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Server connection time held for the tenant, in microseconds; a hold counts when it
    /// ends (transaction mode: a transaction; session mode: the whole session).
    pub server_conn_us: u64,
    /// Client connection time, in microseconds, exact to the drain.
    pub client_conn_us: u64,
    pub errors: u64,
}

impl UsageTotals {
    pub(super) fn read(stats: &TenantStats, epoch: Instant, now: Instant) -> Self {
        UsageTotals {
            transactions: stats.transactions.load(Relaxed),
            queries: stats.queries.load(Relaxed),
            bytes_in: stats.bytes_in.load(Relaxed),
            bytes_out: stats.bytes_out.load(Relaxed),
            server_conn_us: stats.server_held_us.load(Relaxed),
            client_conn_us: u64::try_from(stats.client_time_us(epoch, now)).unwrap_or(u64::MAX),
            errors: stats.errors_total(),
        }
    }

    /// `self − before`, field by field. Every field is monotonic, so this never saturates
    /// except for a tenant whose counters were recreated (then it counts from zero).
    fn since(&self, before: &UsageTotals) -> UsageTotals {
        let d = |a: u64, b: u64| if a >= b { a - b } else { a };
        UsageTotals {
            transactions: d(self.transactions, before.transactions),
            queries: d(self.queries, before.queries),
            bytes_in: d(self.bytes_in, before.bytes_in),
            bytes_out: d(self.bytes_out, before.bytes_out),
            server_conn_us: d(self.server_conn_us, before.server_conn_us),
            client_conn_us: d(self.client_conn_us, before.client_conn_us),
            errors: d(self.errors, before.errors),
        }
    }

    fn add(&mut self, o: &UsageTotals) {
        self.transactions += o.transactions;
        self.queries += o.queries;
        self.bytes_in += o.bytes_in;
        self.bytes_out += o.bytes_out;
        self.server_conn_us += o.server_conn_us;
        self.client_conn_us += o.client_conn_us;
        self.errors += o.errors;
    }

    pub fn is_zero(&self) -> bool {
        *self == UsageTotals::default()
    }
}

/// The drain state: what each tenant's counters were at the last drain, and the rows of
/// minutes not yet finished.
#[derive(Default)]
pub(super) struct UsageLedger {
    /// Each tenant's counters at the last drain, and how many drains in a row saw no change.
    seen: HashMap<String, (UsageTotals, u32)>,
    open: BTreeMap<(u64, String), UsageTotals>,
}

/// The minute `t` falls in, in seconds since the Unix epoch.
pub fn minute_of(t: SystemTime) -> u64 {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    secs - secs % 60
}

impl UsageLedger {
    /// Files what each tenant used since the last drain under the minute of `wall`.
    pub(super) fn tick<'a>(
        &mut self,
        tenants: impl Iterator<Item = (&'a str, &'a TenantStats)>,
        epoch: Instant,
        now: Instant,
        wall: SystemTime,
    ) {
        let minute = minute_of(wall);
        for (tenant, stats) in tenants {
            let current = UsageTotals::read(stats, epoch, now);
            let (before, quiet) = self.seen.get(tenant).copied().unwrap_or_default();
            let delta = current.since(&before);
            if !delta.is_zero() {
                self.open.entry((minute, tenant.to_owned())).or_default().add(&delta);
            }
            let quiet = if current == before { quiet.saturating_add(1) } else { 0 };
            self.seen.insert(tenant.to_owned(), (current, quiet));
        }
    }

    /// Rows of minutes before `minute` (all rows with `None`), removed from the ledger.
    pub(super) fn take(&mut self, before_minute: Option<u64>) -> Vec<UsageRow> {
        let keep = match before_minute {
            Some(m) => self.open.split_off(&(m, String::new())),
            None => BTreeMap::new(),
        };
        let done = std::mem::replace(&mut self.open, keep);
        done.into_iter().map(|((minute, tenant), totals)| UsageRow { tenant, minute, totals }).collect()
    }

    /// How many drains in a row saw a tenant's counters unchanged.
    pub(super) fn quiet(&self, tenant: &str) -> u32 {
        self.seen.get(tenant).map_or(0, |(_, q)| *q)
    }

    /// Whether the last drain saw exactly `current` for the tenant (nothing undrained).
    pub(super) fn settled(&self, tenant: &str, current: &UsageTotals) -> bool {
        self.seen.get(tenant).is_some_and(|(seen, _)| seen == current)
    }

    /// Forgets a tenant whose counters are gone; what it used is already in `open`.
    pub(super) fn forget(&mut self, tenant: &str) {
        self.seen.remove(tenant);
    }
}
