//! Per-pool (upstream login) and process-wide counters.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

/// What a server connection is doing, for the per-pool gauges.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerState {
    /// Checked out by a client.
    Active,
    /// In the pool, ready.
    Idle,
    /// Connecting, authenticating, or being reset.
    Login,
}

impl ServerState {
    pub const ALL: [ServerState; 3] = [ServerState::Active, ServerState::Idle, ServerState::Login];

    pub fn label(self) -> &'static str {
        match self {
            ServerState::Active => "active",
            ServerState::Idle => "idle",
            ServerState::Login => "login",
        }
    }
}

/// The `pool` label of a pool: `host:port/database/role`.
pub fn pool_name(key: &crate::model::PoolKey) -> String {
    format!("{}/{}/{}", key.addr, key.database, key.role)
}

/// One pool's counters.
#[derive(Default)]
pub struct PoolStats {
    pub(super) servers: [AtomicI64; 3],
    pub(super) checkouts: AtomicU64,
    pub(super) connects: AtomicU64,
    pub(super) connect_failures: AtomicU64,
}

impl PoolStats {
    pub fn checkout(&self) {
        self.checkouts.fetch_add(1, Relaxed);
    }

    /// A new server connection was established (counted with its [`ServerConnMetric`]).
    pub fn server(self: &Arc<Self>) -> ServerConnMetric {
        self.connects.fetch_add(1, Relaxed);
        self.servers[ServerState::Login as usize].fetch_add(1, Relaxed);
        ServerConnMetric { pool: self.clone(), state: ServerState::Login }
    }

    pub fn connect_failed(&self) {
        self.connect_failures.fetch_add(1, Relaxed);
    }

    /// Sets the server-connection gauges from the pool's own counts (at scrape time, for
    /// pools whose connections carry no [`ServerConnMetric`]).
    pub fn set_servers(&self, active: i64, idle: i64) {
        self.servers[ServerState::Active as usize].store(active, Relaxed);
        self.servers[ServerState::Idle as usize].store(idle, Relaxed);
    }

    /// Sets the connect counters from the pool's own (at scrape time: the pool counts them
    /// where it opens connections, and never starts over).
    pub fn set_connects(&self, connects: u64, failures: u64) {
        self.connects.store(connects, Relaxed);
        self.connect_failures.store(failures, Relaxed);
    }

    pub fn servers(&self, state: ServerState) -> i64 {
        self.servers[state as usize].load(Relaxed)
    }
}

/// A server connection as the per-pool gauges see it; dropping it (the connection closed)
/// takes it out of them.
pub struct ServerConnMetric {
    pool: Arc<PoolStats>,
    state: ServerState,
}

impl ServerConnMetric {
    pub fn set_state(&mut self, state: ServerState) {
        if state != self.state {
            self.pool.servers[self.state as usize].fetch_sub(1, Relaxed);
            self.pool.servers[state as usize].fetch_add(1, Relaxed);
            self.state = state;
        }
    }
}

impl Drop for ServerConnMetric {
    fn drop(&mut self) {
        self.pool.servers[self.state as usize].fetch_sub(1, Relaxed);
    }
}

/// Process-wide counters.
#[derive(Default)]
pub struct GlobalStats {
    pub(super) logins: AtomicU64,
    pub(super) auth_failures: AtomicU64,
    pub(super) catalog_hits: AtomicU64,
    pub(super) catalog_misses: AtomicU64,
    pub(super) catalog_lookups: AtomicU64,
    pub(super) control_db_up: AtomicBool,
    pub(super) resets: AtomicU64,
    pub(super) handoff_failures: AtomicU64,
    pub(super) handoff_retries: AtomicU64,
    pub(super) panics: AtomicU64,
    /// Bytes clients hold of large messages, and `large_message_memory` (set at each scrape).
    pub(super) large_messages: AtomicU64,
    pub(super) large_message_memory: AtomicU64,
}

impl GlobalStats {
    pub fn login(&self) {
        self.logins.fetch_add(1, Relaxed);
    }
    pub fn auth_failure(&self) {
        self.auth_failures.fetch_add(1, Relaxed);
    }
    pub fn catalog_hit(&self) {
        self.catalog_hits.fetch_add(1, Relaxed);
    }
    pub fn catalog_miss(&self) {
        self.catalog_misses.fetch_add(1, Relaxed);
    }
    /// A lookup that went to the control database.
    pub fn catalog_lookup(&self) {
        self.catalog_lookups.fetch_add(1, Relaxed);
    }
    pub fn set_control_db_up(&self, up: bool) {
        self.control_db_up.store(up, Relaxed);
    }
    /// What clients hold of the large-message budget now, and its size.
    pub fn set_large_messages(&self, held: usize, size: usize) {
        self.large_messages.store(held as u64, Relaxed);
        self.large_message_memory.store(size as u64, Relaxed);
    }
    /// A server connection reset between tenants or clients.
    pub fn reset(&self) {
        self.resets.fetch_add(1, Relaxed);
    }
    /// Server connections reset so far.
    pub fn resets(&self) -> u64 {
        self.resets.load(Relaxed)
    }
    /// A cross-tenant reset, or a session's setup, failed (or outlived its bound) at a
    /// handoff: the server connection was closed.
    pub fn handoff_failed(&self) {
        self.handoff_failures.fetch_add(1, Relaxed);
    }
    pub fn handoff_failures(&self) -> u64 {
        self.handoff_failures.load(Relaxed)
    }
    /// A failed handoff's client messages were handed to another server connection.
    pub fn handoff_retried(&self) {
        self.handoff_retries.fetch_add(1, Relaxed);
    }
    pub fn handoff_retries(&self) -> u64 {
        self.handoff_retries.load(Relaxed)
    }
    /// A panic caught in a task (the task ended, the process did not).
    pub fn panic_caught(&self) {
        self.panics.fetch_add(1, Relaxed);
    }
}

/// Resident memory of this process in bytes, from `/proc/self/status` (`VmRSS`); `None`
/// where that is not available.
pub fn resident_memory() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
