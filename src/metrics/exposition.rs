//! The Prometheus exposition: at each scrape, the counters are read once, the N most
//! active tenants (and pools) get series of their own and the rest are summed under
//! [`OTHER`], so the number of series stays bounded however many tenants there are while
//! every total stays exact. Tenant ids cannot start with `_`, so `_other` names no tenant.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering::Relaxed;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeCounterValue, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::pool::{resident_memory, PoolStats, ServerState};
use super::tenant::{
    ClientState, ErrorSource, HistogramSnapshot, TenantStats, LATENCY_BOUNDS_US, N_CLASSES, SQLSTATE_CLASSES,
};
use super::{lock, read, Metrics, OTHER};

/// One tenant's counters as read at one scrape (or a sum of several tenants').
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TenantSnapshot {
    pub clients: [i64; 3],
    pub transactions: u64,
    pub queries: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub errors: [[u64; N_CLASSES]; 3],
    pub logins: u64,
    pub server_held_us: u64,
    pub client_parses: u64,
    pub server_parses: u64,
    pub binds: u64,
    pub pool_wait: HistogramSnapshot,
    pub transaction_time: HistogramSnapshot,
    pub query_time: HistogramSnapshot,
}

impl TenantSnapshot {
    pub fn of(s: &TenantStats) -> Self {
        TenantSnapshot {
            clients: std::array::from_fn(|i| s.clients[i].load(Relaxed)),
            transactions: s.transactions.load(Relaxed),
            queries: s.queries.load(Relaxed),
            bytes_in: s.bytes_in.load(Relaxed),
            bytes_out: s.bytes_out.load(Relaxed),
            errors: std::array::from_fn(|i| std::array::from_fn(|j| s.errors[i][j].load(Relaxed))),
            logins: s.logins.load(Relaxed),
            server_held_us: s.server_held_us.load(Relaxed),
            client_parses: s.client_parses.load(Relaxed),
            server_parses: s.server_parses.load(Relaxed),
            binds: s.binds.load(Relaxed),
            pool_wait: s.pool_wait.snapshot(),
            transaction_time: s.transaction_time.snapshot(),
            query_time: s.query_time.snapshot(),
        }
    }

    pub fn add(&mut self, o: &TenantSnapshot) {
        for (a, b) in self.clients.iter_mut().zip(o.clients) {
            *a += b;
        }
        self.transactions += o.transactions;
        self.queries += o.queries;
        self.bytes_in += o.bytes_in;
        self.bytes_out += o.bytes_out;
        for (ra, rb) in self.errors.iter_mut().zip(&o.errors) {
            for (a, b) in ra.iter_mut().zip(rb) {
                *a += b;
            }
        }
        self.logins += o.logins;
        self.server_held_us += o.server_held_us;
        self.client_parses += o.client_parses;
        self.server_parses += o.server_parses;
        self.binds += o.binds;
        self.pool_wait.add(&o.pool_wait);
        self.transaction_time.add(&o.transaction_time);
        self.query_time.add(&o.query_time);
    }

    /// What ranks a tenant: everything it did, monotonic.
    fn activity(&self) -> u64 {
        self.transactions + self.queries + self.logins + self.errors.iter().flatten().sum::<u64>()
    }

    /// Clients connected now.
    fn live(&self) -> u64 {
        self.clients.iter().map(|&c| c.max(0) as u64).sum()
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PoolSnapshot {
    pub servers: [i64; 3],
    pub checkouts: u64,
    pub connects: u64,
    pub connect_failures: u64,
}

impl PoolSnapshot {
    pub fn of(p: &PoolStats) -> Self {
        PoolSnapshot {
            servers: std::array::from_fn(|i| p.servers[i].load(Relaxed)),
            checkouts: p.checkouts.load(Relaxed),
            connects: p.connects.load(Relaxed),
            connect_failures: p.connect_failures.load(Relaxed),
        }
    }

    fn add(&mut self, o: &PoolSnapshot) {
        for (a, b) in self.servers.iter_mut().zip(o.servers) {
            *a += b;
        }
        self.checkouts += o.checkouts;
        self.connects += o.connects;
        self.connect_failures += o.connect_failures;
    }
}

/// Picks the top N by recent activity. Each scrape halves an entry's score and adds what it
/// did since the previous scrape plus what it holds now, so the set follows current load
/// without flapping at the first quiet scrape (a series that changes hands makes
/// `_other` step down, which Prometheus reads as a counter reset).
#[derive(Default)]
pub struct Ranker {
    seen: HashMap<String, (u64, f64)>,
}

impl Ranker {
    /// `entries`: name, cumulative activity, and what it holds now.
    fn top<'a>(&mut self, entries: impl Iterator<Item = (&'a str, u64, u64)>, n: usize) -> HashSet<String> {
        let mut scored: Vec<(f64, &'a str)> = entries
            .map(|(name, activity, live)| {
                let (last, score) = self.seen.get(name).copied().unwrap_or((0, 0.0));
                let score = score / 2.0 + activity.saturating_sub(last) as f64 + live as f64;
                self.seen.insert(name.to_owned(), (activity, score));
                (score, name)
            })
            .collect();
        // Highest score first; ties by name, so the choice is stable.
        scored.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(b.1)));
        scored.into_iter().take(n).map(|(_, name)| name.to_owned()).collect()
    }

    pub(super) fn forget(&mut self, name: &str) {
        self.seen.remove(name);
    }
}

/// What one scrape shows, read once.
#[derive(Debug)]
struct Scrape {
    tenants: Vec<(String, TenantSnapshot)>,
    pools: Vec<(String, PoolSnapshot)>,
    /// Tenants the registry tracks now.
    tracked: usize,
    global: [(&'static str, &'static str, u64); 9],
    control_db_up: bool,
    memory: Option<u64>,
    /// Bytes held of large messages, and the budget for them.
    large_messages: (u64, u64),
}

pub(super) fn render(m: &Metrics) -> String {
    let inner = &m.inner;
    let all: Vec<(String, TenantSnapshot)> =
        read(&inner.tenants).iter().map(|(k, s)| (k.clone(), TenantSnapshot::of(s))).collect();
    let chosen = lock(&inner.tenant_rank)
        .top(all.iter().map(|(k, s)| (k.as_str(), s.activity(), s.live())), inner.top_tenants.load(Relaxed));
    let tracked = all.len();
    let mut other = lock(&inner.retired).clone();
    let mut any_other = other != TenantSnapshot::default();
    let mut tenants = Vec::with_capacity(chosen.len() + 1);
    for (k, s) in all {
        if chosen.contains(&k) {
            tenants.push((k, s));
        } else {
            other.add(&s);
            any_other = true;
        }
    }
    tenants.sort_by(|a, b| a.0.cmp(&b.0));
    if any_other {
        tenants.push((OTHER.to_owned(), other));
    }

    let all: Vec<(String, PoolSnapshot)> =
        read(&inner.pools).iter().map(|(k, p)| (k.clone(), PoolSnapshot::of(p))).collect();
    let chosen = lock(&inner.pool_rank).top(
        all.iter().map(|(k, p)| (k.as_str(), p.checkouts + p.connects, p.servers[0].max(0) as u64)),
        inner.top_pools.load(Relaxed),
    );
    let mut other = PoolSnapshot::default();
    let mut any_other = false;
    let mut pools = Vec::with_capacity(chosen.len() + 1);
    for (k, p) in all {
        if chosen.contains(&k) {
            pools.push((k, p));
        } else {
            other.add(&p);
            any_other = true;
        }
    }
    pools.sort_by(|a, b| a.0.cmp(&b.0));
    if any_other {
        pools.push((OTHER.to_owned(), other));
    }

    let g = &inner.global;
    let scrape = Scrape {
        tenants,
        pools,
        tracked,
        global: [
            ("pgtenant_logins", "Clients logged in.", g.logins.load(Relaxed)),
            ("pgtenant_auth_failures", "Failed client authentications.", g.auth_failures.load(Relaxed)),
            (
                "pgtenant_catalog_cache_hits",
                "Tenant lookups answered by the cache.",
                g.catalog_hits.load(Relaxed),
            ),
            (
                "pgtenant_catalog_cache_misses",
                "Tenant lookups the cache could not answer.",
                g.catalog_misses.load(Relaxed),
            ),
            (
                "pgtenant_catalog_lookups",
                "Tenant lookups sent to the control database.",
                g.catalog_lookups.load(Relaxed),
            ),
            ("pgtenant_resets", "Server connections reset before reuse.", g.resets.load(Relaxed)),
            (
                "pgtenant_handoff_failures",
                "Cross-tenant resets or session setups that failed; their server connection was closed.",
                g.handoff_failures.load(Relaxed),
            ),
            (
                "pgtenant_handoff_retries",
                "Failed handoffs whose client messages went to another server connection.",
                g.handoff_retries.load(Relaxed),
            ),
            ("pgtenant_panics_caught", "Panics caught in a task.", g.panics.load(Relaxed)),
        ],
        control_db_up: g.control_db_up.load(Relaxed),
        memory: resident_memory(),
        large_messages: (g.large_messages.load(Relaxed), g.large_message_memory.load(Relaxed)),
    };
    let mut registry = Registry::default();
    registry.register_collector(Box::new(scrape));
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
        tracing::error!(error = %e, "could not encode the metrics");
    }
    out
}

type Enc<'a> = DescriptorEncoder<'a>;

fn counter<V: EncodeCounterValue>(
    enc: &mut Enc<'_>,
    name: &str,
    help: &str,
    rows: &[(&[(&str, &str)], V)],
) -> std::fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in rows {
        m.encode_family(labels)?.encode_counter::<NoLabelSet, _, u64>(v, None)?;
    }
    Ok(())
}

fn gauge(enc: &mut Enc<'_>, name: &str, help: &str, rows: &[(&[(&str, &str)], i64)]) -> std::fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in rows {
        m.encode_family(labels)?.encode_gauge(v)?;
    }
    Ok(())
}

fn histogram(
    enc: &mut Enc<'_>,
    name: &str,
    help: &str,
    rows: &[(&str, &HistogramSnapshot)],
) -> std::fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Histogram)?;
    for (tenant, h) in rows {
        // f64::MAX is the encoder's `+Inf`.
        let buckets: Vec<(f64, u64)> = LATENCY_BOUNDS_US
            .iter()
            .map(|&b| b as f64 / 1e6)
            .chain([f64::MAX])
            .zip(h.counts.iter().copied().chain(std::iter::repeat(0)))
            .collect();
        let labels = [("tenant", *tenant)];
        m.encode_family(&labels)?.encode_histogram::<NoLabelSet>(
            h.sum_us as f64 / 1e6,
            h.count(),
            &buckets,
            None,
        )?;
    }
    Ok(())
}

impl Collector for Scrape {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let t = &self.tenants;
        let by_tenant = |f: &dyn Fn(&TenantSnapshot) -> u64| -> Vec<(Vec<(&str, &str)>, u64)> {
            t.iter().map(|(k, s)| (vec![("tenant", k.as_str())], f(s))).collect()
        };
        let states = [ClientState::Active, ClientState::Waiting, ClientState::Idle];
        let clients: Vec<(Vec<(&str, &str)>, i64)> = t
            .iter()
            .flat_map(|(k, s)| {
                states.iter().map(move |st| {
                    (vec![("tenant", k.as_str()), ("state", client_label(*st))], s.clients[*st as usize])
                })
            })
            .collect();
        gauge(&mut enc, "pgtenant_tenant_clients", "Clients logged in, by state.", &refs(&clients))?;
        for (name, help, f) in [
            (
                "pgtenant_tenant_transactions",
                "Transactions completed.",
                (|s| s.transactions) as fn(&TenantSnapshot) -> u64,
            ),
            ("pgtenant_tenant_queries", "Queries completed.", |s| s.queries),
            ("pgtenant_tenant_received_bytes", "Bytes received from clients.", |s| s.bytes_in),
            ("pgtenant_tenant_sent_bytes", "Bytes sent to clients.", |s| s.bytes_out),
            ("pgtenant_tenant_logins", "Clients logged in.", |s| s.logins),
            ("pgtenant_tenant_client_parses", "Named prepared statements clients prepared (Parse).", |s| {
                s.client_parses
            }),
            (
                "pgtenant_tenant_server_parses",
                "Named prepared statements prepared on server connections (Parse, re-preparations included).",
                |s| s.server_parses,
            ),
            ("pgtenant_tenant_binds", "Binds of named prepared statements.", |s| s.binds),
        ] {
            counter(&mut enc, name, help, &refs(&by_tenant(&f)))?;
        }
        let held: Vec<(Vec<(&str, &str)>, f64)> =
            t.iter().map(|(k, s)| (vec![("tenant", k.as_str())], s.server_held_us as f64 / 1e6)).collect();
        counter(
            &mut enc,
            "pgtenant_tenant_server_held_seconds",
            "Server connection time held for the tenant (counted when each hold ends).",
            &refs(&held),
        )?;
        // Errors: only the combinations that happened, so quiet tenants add no series.
        let mut errors: Vec<(Vec<(&str, &str)>, u64)> = Vec::new();
        for (k, s) in t {
            for source in ErrorSource::ALL {
                for (class, n) in SQLSTATE_CLASSES.iter().zip(s.errors[source as usize]) {
                    if n > 0 {
                        errors.push((
                            vec![("tenant", k.as_str()), ("source", source.label()), ("class", class)],
                            n,
                        ));
                    }
                }
            }
        }
        counter(&mut enc, "pgtenant_tenant_errors", "Errors, by source and SQLSTATE class.", &refs(&errors))?;
        for (name, help, f) in [
            (
                "pgtenant_tenant_pool_wait_seconds",
                "Time clients waited for a server connection.",
                (|s| &s.pool_wait) as fn(&TenantSnapshot) -> &HistogramSnapshot,
            ),
            ("pgtenant_tenant_transaction_seconds", "Transaction duration.", |s| &s.transaction_time),
            ("pgtenant_tenant_query_seconds", "Query duration.", |s| &s.query_time),
        ] {
            let rows: Vec<(&str, &HistogramSnapshot)> = t.iter().map(|(k, s)| (k.as_str(), f(s))).collect();
            histogram(&mut enc, name, help, &rows)?;
        }

        let p = &self.pools;
        let servers: Vec<(Vec<(&str, &str)>, i64)> = p
            .iter()
            .flat_map(|(k, s)| {
                ServerState::ALL.iter().map(move |st| {
                    (vec![("pool", k.as_str()), ("state", st.label())], s.servers[*st as usize])
                })
            })
            .collect();
        gauge(
            &mut enc,
            "pgtenant_pool_server_connections",
            "Server connections, by state.",
            &refs(&servers),
        )?;
        for (name, help, f) in [
            (
                "pgtenant_pool_checkouts",
                "Server connections handed to clients.",
                (|s| s.checkouts) as fn(&PoolSnapshot) -> u64,
            ),
            ("pgtenant_pool_connects", "Server connections established.", |s| s.connects),
            ("pgtenant_pool_connect_failures", "Server connections that failed to establish.", |s| {
                s.connect_failures
            }),
        ] {
            let rows: Vec<(Vec<(&str, &str)>, u64)> =
                p.iter().map(|(k, s)| (vec![("pool", k.as_str())], f(s))).collect();
            counter(&mut enc, name, help, &refs(&rows))?;
        }

        for (name, help, v) in self.global {
            counter(&mut enc, name, help, &[(&[], v)])?;
        }
        gauge(
            &mut enc,
            "pgtenant_control_db_up",
            "Whether the control database answers.",
            &[(&[], self.control_db_up.into())],
        )?;
        let tracked = i64::try_from(self.tracked).unwrap_or(i64::MAX);
        gauge(&mut enc, "pgtenant_tenants_tracked", "Tenants with counters in memory.", &[(&[], tracked)])?;
        let (held, size) = self.large_messages;
        for (name, help, v) in [
            (
                "pgtenant_large_message_bytes",
                "Bytes clients hold of large messages read whole (past each client's free 256 KiB).",
                held,
            ),
            ("pgtenant_large_message_memory_bytes", "The budget for them (large_message_memory).", size),
        ] {
            gauge(&mut enc, name, help, &[(&[], i64::try_from(v).unwrap_or(i64::MAX))])?;
        }
        if let Some(mem) = self.memory {
            let mem = i64::try_from(mem).unwrap_or(i64::MAX);
            gauge(
                &mut enc,
                "pgtenant_resident_memory_bytes",
                "Resident memory of the process.",
                &[(&[], mem)],
            )?;
        }
        Ok(())
    }
}

fn client_label(s: ClientState) -> &'static str {
    match s {
        ClientState::Active => "active",
        ClientState::Waiting => "waiting",
        ClientState::Idle => "idle",
    }
}

/// Borrows owned label vectors as the slices the encoders take.
fn refs<'a, V: Copy>(rows: &'a [(Vec<(&'a str, &'a str)>, V)]) -> Vec<(&'a [(&'a str, &'a str)], V)> {
    rows.iter().map(|(l, v)| (l.as_slice(), *v)).collect()
}
