//! PgBouncer's averages (`SHOW STATS` `avg_*`, `SHOW STATS_AVERAGES`): every stats period
//! each tenant's counters are compared with the previous period's, giving rates per second
//! and mean times per transaction, query and server assignment, as PgBouncer's
//! `calc_average` (stats.c) does. Computed off the data path, by the stats task.

use std::collections::HashMap;
use std::time::Instant;

use super::exposition::TenantSnapshot;

/// One tenant's averages over the last finished period.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Average {
    /// Server connections handed to the tenant's clients, per second.
    pub assignments: u64,
    pub transactions: u64,
    pub queries: u64,
    /// Bytes from and to clients, per second.
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Mean transaction and query time of the period, in microseconds.
    pub transaction_us: u64,
    pub query_us: u64,
    /// Mean wait for a server connection per assignment, in microseconds.
    pub wait_us: u64,
    /// Named-statement Parse messages from clients and to servers, and Binds, per second.
    pub client_parses: u64,
    pub server_parses: u64,
    pub binds: u64,
    pub logins: u64,
}

impl Average {
    /// The averages between `old` and `cur`, `micros` apart.
    pub fn between(old: &TenantSnapshot, cur: &TenantSnapshot, micros: u64) -> Average {
        let per_s =
            |c: u64, o: u64| c.saturating_sub(o).saturating_mul(1_000_000).checked_div(micros).unwrap_or(0);
        let mean = |sum_c: u64, sum_o: u64, n_c: u64, n_o: u64| {
            sum_c.saturating_sub(sum_o).checked_div(n_c.saturating_sub(n_o)).unwrap_or(0)
        };
        Average {
            assignments: per_s(cur.pool_wait.count(), old.pool_wait.count()),
            transactions: per_s(cur.transactions, old.transactions),
            queries: per_s(cur.queries, old.queries),
            bytes_in: per_s(cur.bytes_in, old.bytes_in),
            bytes_out: per_s(cur.bytes_out, old.bytes_out),
            transaction_us: mean(
                cur.transaction_time.sum_us,
                old.transaction_time.sum_us,
                cur.transaction_time.count(),
                old.transaction_time.count(),
            ),
            query_us: mean(
                cur.query_time.sum_us,
                old.query_time.sum_us,
                cur.query_time.count(),
                old.query_time.count(),
            ),
            wait_us: mean(
                cur.pool_wait.sum_us,
                old.pool_wait.sum_us,
                cur.pool_wait.count(),
                old.pool_wait.count(),
            ),
            client_parses: per_s(cur.client_parses, old.client_parses),
            server_parses: per_s(cur.server_parses, old.server_parses),
            binds: per_s(cur.binds, old.binds),
            logins: per_s(cur.logins, old.logins),
        }
    }
}

/// The last period's averages per tenant, and the counters they were computed from.
#[derive(Default)]
pub struct Averages {
    at: Option<Instant>,
    previous: HashMap<String, TenantSnapshot>,
    averages: HashMap<String, Average>,
}

impl Averages {
    /// Ends a period at `now` with the tenants' counters read now. The first call only
    /// starts the first period.
    pub fn roll(&mut self, now: Instant, tenants: Vec<(String, TenantSnapshot)>) {
        let micros = self
            .at
            .map(|at| u64::try_from(now.saturating_duration_since(at).as_micros()).unwrap_or(u64::MAX));
        self.averages.clear();
        if let Some(micros) = micros.filter(|&m| m > 0) {
            let empty = TenantSnapshot::default();
            for (name, cur) in &tenants {
                let old = self.previous.get(name).unwrap_or(&empty);
                self.averages.insert(name.clone(), Average::between(old, cur, micros));
            }
        }
        self.at = Some(now);
        self.previous = tenants.into_iter().collect();
    }

    /// A tenant's averages over the last finished period (zeros before the first).
    pub fn of(&self, tenant: &str) -> Average {
        self.averages.get(tenant).copied().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rates_per_second_and_means_per_event() {
        let mut a = Averages::default();
        let t0 = Instant::now();
        let snap = |tx: u64, tx_us: u64, waits: u64, wait_us: u64| {
            let mut s = TenantSnapshot {
                transactions: tx,
                bytes_in: tx * 100,
                binds: tx * 3,
                ..TenantSnapshot::default()
            };
            s.transaction_time.counts = vec![tx];
            s.transaction_time.sum_us = tx_us;
            s.pool_wait.counts = vec![waits];
            s.pool_wait.sum_us = wait_us;
            s
        };
        a.roll(t0, vec![("t".into(), snap(10, 1_000, 10, 500))]);
        assert_eq!(a.of("t"), Average::default(), "no finished period yet");
        a.roll(t0 + Duration::from_secs(2), vec![("t".into(), snap(30, 5_000, 20, 2_500))]);
        let avg = a.of("t");
        assert_eq!((avg.transactions, avg.bytes_in, avg.assignments, avg.binds), (10, 1_000, 5, 30));
        assert_eq!(avg.transaction_us, 4_000 / 20);
        assert_eq!(avg.wait_us, 2_000 / 10);
        // A quiet period: rates and means back to 0.
        a.roll(t0 + Duration::from_secs(4), vec![("t".into(), snap(30, 5_000, 20, 2_500))]);
        assert_eq!(a.of("t"), Average::default());
        assert_eq!(a.of("unknown"), Average::default());
    }
}
