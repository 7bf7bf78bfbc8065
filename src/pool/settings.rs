//! The pool settings in force: taken from `[pool]`, shared by every pool behind one
//! [`LiveSettings`], so that a reload or the console's `SET` changes them for existing pools.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::config::{secs, PoolDefaults};

/// Pool settings taken from `[pool]`. Shared by every pool behind one [`LiveSettings`], so a
/// reload or the console's `SET` changes them for existing pools too; read (an arc-swap
/// load, no lock) once per maintenance pass or connect, and at a checkout only the two
/// values [`Live`] keeps in atomics ([`Live::max_lifetime_ns`], [`Live::checkout_timeout`]).
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
pub type LiveSettings = Arc<Live>;

/// The settings in force, and the two a checkout reads kept apart in atomics: every checkout
/// reads them, and two relaxed loads cost a fraction of an arc-swap load (its thread-local
/// debt list). A checkout that races a change may see one new and one old value; each is a
/// value that was in force.
#[derive(Debug)]
pub struct Live {
    settings: ArcSwap<PoolSettings>,
    /// `checkout_timeout` and `max_lifetime` in nanoseconds (saturated: 584 years).
    checkout_timeout_ns: AtomicU64,
    max_lifetime_ns: AtomicU64,
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Live {
    pub fn new(settings: PoolSettings) -> Live {
        Live {
            checkout_timeout_ns: AtomicU64::new(nanos(settings.checkout_timeout)),
            max_lifetime_ns: AtomicU64::new(nanos(settings.max_lifetime)),
            settings: ArcSwap::from_pointee(settings),
        }
    }

    /// The settings in force (a guard: copy out what is needed, do not hold it).
    pub fn load(&self) -> arc_swap::Guard<Arc<PoolSettings>> {
        self.settings.load()
    }

    pub fn load_full(&self) -> Arc<PoolSettings> {
        self.settings.load_full()
    }

    /// Puts `settings` in force.
    pub fn store(&self, settings: Arc<PoolSettings>) {
        self.checkout_timeout_ns.store(nanos(settings.checkout_timeout), Ordering::Relaxed);
        self.max_lifetime_ns.store(nanos(settings.max_lifetime), Ordering::Relaxed);
        self.settings.store(settings);
    }

    /// `max_lifetime` in force, in nanoseconds (saturated), without a load of the settings:
    /// what a checkout compares with the connection's own copy ([`super::ServerConn::live_at`]).
    #[inline]
    pub fn max_lifetime_ns(&self) -> u64 {
        self.max_lifetime_ns.load(Ordering::Relaxed)
    }

    /// `checkout_timeout` in force, without a load of the settings (read only when a checkout
    /// waits or fails).
    pub fn checkout_timeout(&self) -> Duration {
        Duration::from_nanos(self.checkout_timeout_ns.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkout_limits_follow_the_settings_in_force() {
        let mut s = PoolSettings::from(&PoolDefaults::default());
        s.checkout_timeout = Duration::from_millis(1500);
        s.max_lifetime = Duration::from_secs(3600);
        let live = Live::new(s.clone());
        assert_eq!(live.checkout_timeout(), Duration::from_millis(1500));
        assert_eq!(live.max_lifetime_ns(), 3600 * 1_000_000_000);
        s.checkout_timeout = Duration::from_secs(7);
        s.max_lifetime = Duration::MAX;
        live.store(Arc::new(s.clone()));
        let (wait, lifetime) = (live.checkout_timeout(), Duration::from_nanos(live.max_lifetime_ns()));
        assert_eq!(wait, Duration::from_secs(7));
        assert!(lifetime >= Duration::from_secs(500 * 365 * 86_400), "saturated, not wrapped: {lifetime:?}");
        assert_eq!(*live.load_full(), s);
    }
}
