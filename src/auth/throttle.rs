//! Failed-authentication throttling per (tenant, source address), and per tenant.
//!
//! An attempt takes its slot when the password exchange starts, not when it fails: N
//! guesses sent in parallel within one window cannot all be tried, because each holds a slot
//! until its outcome is known. Success gives the slot back; a failure keeps it for the rest
//! of the window. Slots are counted per tenant *and* address, so one tenant's bad passwords
//! behind a shared NAT address never lock other tenants out of that address.
//!
//! A tenant under attack from many addresses is protected too: past its own limit, every
//! address that has already failed against it is refused — but an address with no failure
//! still gets in, so throttling can never lock a tenant's real clients out.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;

const WINDOW: Duration = Duration::from_secs(60);
/// Keys past which expired entries are swept (a flood of addresses or tenant names cannot
/// grow memory without bound: what is left after a sweep is what failed, or is in flight,
/// within the last minute).
const MAX_TRACKED: usize = 100_000;
/// Sweeps run at most this often, so a map full of live entries does not cost a scan per
/// login.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

type Key = (Arc<str>, IpAddr);

pub struct Throttle {
    limit: u32,
    /// Attempts in flight plus failures, per (tenant, address), within the window.
    slots: DashMap<Key, (u32, Instant)>,
    tenant_limit: u32,
    tenants: DashMap<Arc<str>, (u32, Instant)>,
    last_sweep: std::sync::Mutex<Instant>,
}

/// One authentication attempt holding its slot. Dropped without [`Attempt::succeeded`] or
/// [`Attempt::abandoned`], it counts as a failure.
#[must_use]
pub struct Attempt<'a> {
    throttle: &'a Throttle,
    key: Option<Key>,
}

impl Attempt<'_> {
    /// The password was right: the slot is given back.
    pub fn succeeded(mut self) {
        self.give_back();
    }

    /// The client left before sending its proof (libpq does this to prompt for a password):
    /// no guess was made, so the slot is given back.
    pub fn abandoned(mut self) {
        self.give_back();
    }

    fn give_back(&mut self) {
        if let Some(key) = self.key.take() {
            if let Some(mut e) = self.throttle.slots.get_mut(&key) {
                e.0 = e.0.saturating_sub(1);
            }
        }
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if let Some((tenant, _)) = self.key.take() {
            self.throttle.sweep_if_full();
            bump(&self.throttle.tenants, tenant);
        }
    }
}

impl Throttle {
    /// `limit` failures per minute per (tenant, address); 0 turns throttling off.
    pub fn new(limit: u32) -> Throttle {
        Throttle::with_tenant_limit(limit, limit.saturating_mul(10))
    }

    pub fn with_tenant_limit(limit: u32, tenant_limit: u32) -> Throttle {
        Throttle {
            limit,
            slots: DashMap::new(),
            tenant_limit,
            tenants: DashMap::new(),
            last_sweep: std::sync::Mutex::new(Instant::now()),
        }
    }

    /// Drops expired entries when a map is past [`MAX_TRACKED`], at most once per
    /// [`SWEEP_EVERY`].
    fn sweep_if_full(&self) {
        if self.slots.len() < MAX_TRACKED && self.tenants.len() < MAX_TRACKED {
            return;
        }
        {
            let mut last = self.last_sweep.lock().unwrap_or_else(|e| e.into_inner());
            if last.elapsed() < SWEEP_EVERY {
                return;
            }
            *last = Instant::now();
        }
        self.slots.retain(|_, (n, since)| *n > 0 && since.elapsed() < WINDOW);
        self.tenants.retain(|_, (_, since)| since.elapsed() < WINDOW);
    }

    /// Takes an attempt slot for `addr` against `tenant`, or `None` when the limit is
    /// reached (the attempt must be refused without running the exchange).
    pub fn begin(&self, addr: IpAddr, tenant: &str) -> Option<Attempt<'_>> {
        if self.limit == 0 {
            return Some(Attempt { throttle: self, key: None });
        }
        let tenant: Arc<str> = Arc::from(tenant);
        let by_tenant = self.tenants.get(&tenant).map_or(0, |e| recent(&e));
        let key = (tenant, addr);
        self.sweep_if_full();
        let mut e = self.slots.entry(key.clone()).or_insert((0, Instant::now()));
        if e.1.elapsed() >= WINDOW {
            *e = (0, Instant::now());
        }
        if e.0 >= self.limit || (by_tenant >= self.tenant_limit && e.0 > 0) {
            return None;
        }
        e.0 += 1;
        Some(Attempt { throttle: self, key: Some(key) })
    }

    /// Whether `addr` may try to authenticate to `tenant` now (without taking a slot).
    pub fn allowed(&self, addr: IpAddr, tenant: &str) -> bool {
        if self.limit == 0 {
            return true;
        }
        let tenant: Arc<str> = Arc::from(tenant);
        let by_tenant = self.tenants.get(&tenant).map_or(0, |e| recent(&e));
        let mine = self.slots.get(&(tenant, addr)).map_or(0, |e| recent(&e));
        mine < self.limit && !(by_tenant >= self.tenant_limit && mine > 0)
    }

    /// Records a failure outside an attempt (as if one had been taken and failed).
    pub fn record_failure(&self, addr: IpAddr, tenant: &str) {
        drop(self.begin(addr, tenant));
    }
}

fn recent(e: &(u32, Instant)) -> u32 {
    if e.1.elapsed() < WINDOW {
        e.0
    } else {
        0
    }
}

fn bump<K: std::hash::Hash + Eq>(map: &DashMap<K, (u32, Instant)>, key: K) {
    let mut e = map.entry(key).or_insert((0, Instant::now()));
    if e.1.elapsed() >= WINDOW {
        *e = (0, Instant::now());
    }
    e.0 += 1;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_limits_per_tenant_and_address() {
        let t = Throttle::new(3);
        let a: IpAddr = [127, 0, 0, 1].into();
        let b: IpAddr = [127, 0, 0, 2].into();
        for _ in 0..3 {
            assert!(t.allowed(a, "acme"));
            drop(t.begin(a, "acme").expect("slot"));
        }
        assert!(!t.allowed(a, "acme"));
        assert!(t.begin(a, "acme").is_none());
        assert!(t.allowed(a, "globex"), "other tenants behind the same address are unaffected");
        t.begin(a, "globex").expect("another tenant's slot").succeeded();
        assert!(t.allowed(b, "acme"), "other addresses are unaffected");
        assert!(Throttle::new(0).begin(a, "acme").is_some());
    }

    #[test]
    fn throttle_counts_attempts_before_they_finish() {
        let t = Throttle::new(3);
        let a: IpAddr = [127, 0, 0, 1].into();
        // Three guesses in flight at once take every slot: a fourth is refused before its
        // exchange starts.
        let held: Vec<_> = (0..3).map(|_| t.begin(a, "acme").expect("slot")).collect();
        assert!(t.begin(a, "acme").is_none());
        // Successes give their slots back; a client that left before its proof too.
        let mut held = held.into_iter();
        held.next().expect("one").succeeded();
        held.next().expect("two").abandoned();
        drop(held);
        t.begin(a, "acme").expect("slots came back").succeeded();
        // Only the failure (the dropped attempt) stays counted.
        assert_eq!(t.slots.get(&(Arc::from("acme"), a)).map(|e| e.0), Some(1));
    }

    #[test]
    fn throttle_a_tenant_under_a_distributed_attack() {
        let t = Throttle::with_tenant_limit(5, 4);
        for last in 1..=4u8 {
            t.record_failure([10, 0, 0, last].into(), "acme");
        }
        // Past the tenant's limit: addresses that failed are refused, a clean one is not,
        // and other tenants are unaffected.
        assert!(!t.allowed([10, 0, 0, 1].into(), "acme"));
        assert!(t.begin([10, 0, 0, 1].into(), "acme").is_none());
        assert!(t.allowed([10, 0, 0, 9].into(), "acme"));
        assert!(t.allowed([10, 0, 0, 1].into(), "globex"));
    }
}
