//! Per-tenant counters: what a client session records on its hot path (each an atomic add
//! with `Relaxed` ordering on an `Arc<TenantStats>` looked up once at login), and the
//! fixed-bucket histograms.
//!
//! `Relaxed` is enough: every counter is independent, read only by scrapes and usage
//! drains, which need each value to be exact eventually, not a consistent cut across them.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Histogram bucket upper bounds in microseconds: 100 µs to 30 s, roughly ×2.5 apart, so
/// a pool wait, a point query and a report all land in a telling bucket.
pub const LATENCY_BOUNDS_US: &[u64] = &[
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000, 30_000_000,
];

/// A histogram with fixed buckets: one atomic count per bucket (the last one past every
/// bound) and an atomic sum.
pub struct Histogram {
    counts: [AtomicU64; LATENCY_BOUNDS_US.len() + 1],
    sum_us: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram { counts: std::array::from_fn(|_| AtomicU64::new(0)), sum_us: AtomicU64::new(0) }
    }
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        // The first bucket without a search: every checkout that finds a connection at once
        // observes a wait of zero.
        let i = if us <= LATENCY_BOUNDS_US[0] { 0 } else { LATENCY_BOUNDS_US.partition_point(|&b| b < us) };
        // `i` is at most `LATENCY_BOUNDS_US.len()`, the index of the last bucket.
        if let Some(c) = self.counts.get(i) {
            c.fetch_add(1, Relaxed);
        }
        self.sum_us.fetch_add(us, Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            counts: self.counts.iter().map(|c| c.load(Relaxed)).collect(),
            sum_us: self.sum_us.load(Relaxed),
        }
    }
}

/// Per-bucket (not cumulative) counts and the sum, as read at one scrape.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HistogramSnapshot {
    pub counts: Vec<u64>,
    pub sum_us: u64,
}

impl HistogramSnapshot {
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The mean in microseconds (0 with no observation).
    pub fn mean_us(&self) -> u64 {
        self.sum_us.checked_div(self.count()).unwrap_or(0)
    }

    pub fn add(&mut self, other: &HistogramSnapshot) {
        if self.counts.len() < other.counts.len() {
            self.counts.resize(other.counts.len(), 0);
        }
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.sum_us += other.sum_us;
    }
}

/// Where an error came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorSource {
    /// The client broke the protocol or a limit (malformed message, idle timeouts).
    Client,
    /// An ErrorResponse from the upstream server.
    Server,
    /// An error pgtenant raised itself (pool wait timed out, upstream unreachable, …).
    Proxy,
}

impl ErrorSource {
    pub const ALL: [ErrorSource; 3] = [ErrorSource::Client, ErrorSource::Server, ErrorSource::Proxy];

    pub fn label(self) -> &'static str {
        match self {
            ErrorSource::Client => "client",
            ErrorSource::Server => "server",
            ErrorSource::Proxy => "proxy",
        }
    }
}

/// The SQLSTATE classes that get a label of their own (the first two characters of the
/// code, <https://www.postgresql.org/docs/current/errcodes-appendix.html>); every other
/// class is counted under `other`, so an upstream cannot grow the label set.
pub const SQLSTATE_CLASSES: &[&str] = &[
    "08", "0A", "22", "23", "25", "28", "3D", "40", "42", "53", "54", "55", "57", "58", "P0", "XX", "other",
];

/// The index in [`SQLSTATE_CLASSES`] of a five-character SQLSTATE.
pub fn sqlstate_class(code: &[u8]) -> usize {
    let other = SQLSTATE_CLASSES.len() - 1;
    let Some(class) = code.get(..2) else {
        return other;
    };
    SQLSTATE_CLASSES[..other].iter().position(|c| c.as_bytes() == class).unwrap_or(other)
}

pub(super) const N_CLASSES: usize = SQLSTATE_CLASSES.len();

/// What state a client is in, for the active / waiting / idle gauges.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientState {
    /// Holds a server connection (in a transaction, or session mode).
    Active,
    /// Waits for a server connection.
    Waiting,
    /// Logged in, holding nothing.
    Idle,
}

/// Client connection time, exact at any instant: the time of closed connections plus, for
/// open ones, `open × now − Σ starts`. Touched at connect, disconnect and usage drains only
/// (never per message), so a mutex costs nothing that matters and keeps the three values
/// consistent (separate atomics could be read half-updated).
#[derive(Default)]
struct ConnClock {
    open: u64,
    start_sum_us: u128,
    closed_us: u128,
}

/// One tenant's counters. Cheap to share: the session holds an `Arc` for its lifetime.
#[derive(Default)]
pub struct TenantStats {
    pub(super) clients: [AtomicI64; 3],
    pub(super) transactions: AtomicU64,
    pub(super) queries: AtomicU64,
    pub(super) bytes_in: AtomicU64,
    pub(super) bytes_out: AtomicU64,
    pub(super) errors: [[AtomicU64; N_CLASSES]; 3],
    pub(super) logins: AtomicU64,
    /// Time server connections were held for this tenant, added when each is released.
    pub(super) server_held_us: AtomicU64,
    /// Named prepared statements (PgBouncer's `total_client_parse_count`,
    /// `total_server_parse_count`, `total_bind_count`): Parse messages from clients, Parse
    /// messages pgtenant sent to servers (first preparations and re-preparations), Binds.
    pub(super) client_parses: AtomicU64,
    pub(super) server_parses: AtomicU64,
    pub(super) binds: AtomicU64,
    pub(super) pool_wait: Histogram,
    pub(super) transaction_time: Histogram,
    pub(super) query_time: Histogram,
    clock: Mutex<ConnClock>,
}

impl TenantStats {
    pub fn transaction(&self, took: Duration) {
        self.transactions.fetch_add(1, Relaxed);
        self.transaction_time.observe(took);
    }

    pub fn query(&self, took: Duration) {
        self.queries.fetch_add(1, Relaxed);
        self.query_time.observe(took);
    }

    /// Bytes from the client.
    pub fn bytes_in(&self, n: u64) {
        self.bytes_in.fetch_add(n, Relaxed);
    }

    /// Bytes to the client.
    pub fn bytes_out(&self, n: u64) {
        self.bytes_out.fetch_add(n, Relaxed);
    }

    /// An error, by where it came from and its SQLSTATE (five ASCII characters).
    pub fn error(&self, source: ErrorSource, sqlstate: &[u8]) {
        let s = source as usize;
        if let Some(c) = self.errors.get(s).and_then(|row| row.get(sqlstate_class(sqlstate))) {
            c.fetch_add(1, Relaxed);
        }
    }

    /// How long a client waited for a server connection.
    pub fn pool_wait(&self, waited: Duration) {
        self.pool_wait.observe(waited);
    }

    /// A client's named-statement Parse and Bind counts since it last added them (its meter
    /// adds them in batches, not per message).
    pub fn prepared(&self, client_parses: u64, server_parses: u64, binds: u64) {
        for (counter, n) in
            [(&self.client_parses, client_parses), (&self.server_parses, server_parses), (&self.binds, binds)]
        {
            if n > 0 {
                counter.fetch_add(n, Relaxed);
            }
        }
    }

    /// A server connection held for this tenant was released after `held`.
    pub fn server_released(&self, held: Duration) {
        self.server_held_us.fetch_add(u64::try_from(held.as_micros()).unwrap_or(u64::MAX), Relaxed);
    }

    pub fn clients(&self, state: ClientState) -> i64 {
        self.clients[state as usize].load(Relaxed)
    }

    pub fn errors_total(&self) -> u64 {
        self.errors.iter().flatten().map(|c| c.load(Relaxed)).sum()
    }

    /// Client connection time up to `now`, in microseconds since `epoch`.
    pub(super) fn client_time_us(&self, epoch: Instant, now: Instant) -> u128 {
        let now = now.saturating_duration_since(epoch).as_micros();
        let c = self.clock.lock().unwrap_or_else(|e| e.into_inner());
        (c.closed_us + u128::from(c.open) * now).saturating_sub(c.start_sum_us)
    }

    fn connect(&self, at_us: u128) {
        let mut c = self.clock.lock().unwrap_or_else(|e| e.into_inner());
        c.open += 1;
        c.start_sum_us += at_us;
    }

    fn disconnect(&self, started_us: u128, at_us: u128) {
        let mut c = self.clock.lock().unwrap_or_else(|e| e.into_inner());
        c.open = c.open.saturating_sub(1);
        c.start_sum_us = c.start_sum_us.saturating_sub(started_us);
        c.closed_us += at_us.saturating_sub(started_us);
    }

    /// Whether any client is connected (the registry keeps such tenants).
    pub(super) fn has_clients(&self) -> bool {
        self.clock.lock().unwrap_or_else(|e| e.into_inner()).open > 0
    }
}

/// A logged-in client of a tenant: counts it in one of the client gauges and in the
/// connection time, and undoes both when dropped, so no exit path can leave a gauge high.
pub struct ClientSession {
    stats: Arc<TenantStats>,
    state: ClientState,
    epoch: Instant,
    started_us: u128,
}

impl ClientSession {
    pub(super) fn new(stats: Arc<TenantStats>, epoch: Instant) -> Self {
        let started_us = Instant::now().saturating_duration_since(epoch).as_micros();
        stats.connect(started_us);
        stats.logins.fetch_add(1, Relaxed);
        stats.clients[ClientState::Idle as usize].fetch_add(1, Relaxed);
        ClientSession { stats, state: ClientState::Idle, epoch, started_us }
    }

    /// The tenant's counters, for the hot path.
    pub fn stats(&self) -> &TenantStats {
        &self.stats
    }

    pub fn state(&self) -> ClientState {
        self.state
    }

    /// When the session started (to the microsecond).
    pub fn started(&self) -> Instant {
        let us = u64::try_from(self.started_us).unwrap_or(u64::MAX);
        self.epoch.checked_add(Duration::from_micros(us)).unwrap_or(self.epoch)
    }

    pub fn set_state(&mut self, state: ClientState) {
        if state != self.state {
            self.stats.clients[self.state as usize].fetch_sub(1, Relaxed);
            self.stats.clients[state as usize].fetch_add(1, Relaxed);
            self.state = state;
        }
    }
}

impl Drop for ClientSession {
    fn drop(&mut self) {
        self.stats.clients[self.state as usize].fetch_sub(1, Relaxed);
        let now = Instant::now().saturating_duration_since(self.epoch).as_micros();
        self.stats.disconnect(self.started_us, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_of_zero_and_below_the_first_bound_count_in_the_first_bucket() {
        let h = Histogram::default();
        h.observe(Duration::ZERO);
        h.observe(Duration::from_nanos(99_999));
        h.observe(Duration::from_micros(100));
        let s = h.snapshot();
        assert_eq!((s.counts[0], s.count(), s.sum_us), (3, 3, 199));
    }

    #[test]
    fn histogram_buckets() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(100)); // on a bound: that bucket
        h.observe(Duration::from_micros(101));
        h.observe(Duration::from_secs(3600)); // past every bound
        let s = h.snapshot();
        assert_eq!((s.counts[0], s.counts[1], s.counts[LATENCY_BOUNDS_US.len()]), (1, 1, 1));
        assert_eq!(s.count(), 3);
        assert_eq!(s.sum_us, 201 + 3_600_000_000);
        assert_eq!(s.mean_us(), (201 + 3_600_000_000) / 3);
        assert_eq!(HistogramSnapshot::default().mean_us(), 0);
    }

    #[test]
    fn sqlstate_classes() {
        assert_eq!(SQLSTATE_CLASSES[sqlstate_class(b"08006")], "08");
        assert_eq!(SQLSTATE_CLASSES[sqlstate_class(b"XX000")], "XX");
        assert_eq!(SQLSTATE_CLASSES[sqlstate_class(b"HV000")], "other");
        assert_eq!(SQLSTATE_CLASSES[sqlstate_class(b"4")], "other");
    }

    #[test]
    fn client_sessions_keep_gauges_and_time_right() {
        let epoch = Instant::now();
        let stats = Arc::new(TenantStats::default());
        let mut a = ClientSession::new(stats.clone(), epoch);
        let b = ClientSession::new(stats.clone(), epoch);
        a.set_state(ClientState::Waiting);
        a.set_state(ClientState::Active);
        assert_eq!(
            [ClientState::Active, ClientState::Waiting, ClientState::Idle].map(|s| stats.clients(s)),
            [1, 0, 1]
        );
        std::thread::sleep(Duration::from_millis(5));
        let open = stats.client_time_us(epoch, Instant::now());
        assert!(open >= 10_000, "{open}");
        drop(a);
        drop(b);
        assert!(!stats.has_clients());
        assert_eq!([ClientState::Active, ClientState::Idle].map(|s| stats.clients(s)), [0, 0]);
        let closed = stats.client_time_us(epoch, Instant::now());
        // Closed connections stop counting.
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(stats.client_time_us(epoch, Instant::now()), closed);
        assert!(closed >= open);
    }
}
