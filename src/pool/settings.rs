//! The pool settings in force: taken from `[pool]`, shared by every pool behind one
//! [`LiveSettings`], so that a reload or the console's `SET` changes them for existing pools.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::config::{secs, PoolDefaults};

/// Pool settings taken from `[pool]`. Shared by every pool behind one [`LiveSettings`], so a
/// reload or the console's `SET` changes them for existing pools too; read once per
/// checkout, release or maintenance pass (an arc-swap load, no lock).
#[derive(Clone, Debug, PartialEq)]
pub struct PoolSettings {
    pub checkout_timeout: Duration,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_lifetime: Duration,
    pub min_idle: usize,
    /// The most PBKDF2 iterations an upstream may ask for in SCRAM.
    pub max_scram_iterations: u32,
    /// Tenant affinity: how long a transaction-mode client keeps its server connection after
    /// a transaction when clients of other tenants wait for it (zero: never), and for how
    /// many transactions in a row at most.
    pub affinity_hold: Duration,
    pub affinity_transactions: u8,
}

impl From<&PoolDefaults> for PoolSettings {
    fn from(p: &PoolDefaults) -> Self {
        PoolSettings {
            checkout_timeout: secs(p.checkout_timeout),
            connect_timeout: secs(p.connect_timeout),
            idle_timeout: secs(p.idle_timeout),
            max_lifetime: secs(p.max_lifetime),
            min_idle: p.min_idle,
            max_scram_iterations: p.max_scram_iterations,
            affinity_hold: secs(p.affinity_hold),
            affinity_transactions: p.affinity_transactions,
        }
    }
}

/// The pool settings in force, shared by the manager and every pool.
pub type LiveSettings = Arc<ArcSwap<PoolSettings>>;
