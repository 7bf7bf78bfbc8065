//! Failed-authentication throttling, per source address and per tenant. Past a number of
//! failures within a minute, further attempts from that address are refused at once
//! (cheaply). A tenant under attack from many addresses is protected too: past its own limit,
//! every address that has already failed against it is refused — but an address with no
//! failure still gets in, so throttling can never lock a tenant's real clients out.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use dashmap::DashMap;

const WINDOW: Duration = Duration::from_secs(60);
/// Addresses remembered at most (a flood of addresses cannot grow memory without bound).
const MAX_TRACKED: usize = 100_000;

pub struct Throttle {
    limit: u32,
    failures: DashMap<IpAddr, (u32, Instant)>,
    tenant_limit: u32,
    tenants: DashMap<String, (u32, Instant)>,
}

impl Throttle {
    /// `limit` failures per minute per address; 0 turns throttling off.
    pub fn new(limit: u32) -> Throttle {
        Throttle::with_tenant_limit(limit, limit.saturating_mul(10))
    }

    pub fn with_tenant_limit(limit: u32, tenant_limit: u32) -> Throttle {
        Throttle { limit, failures: DashMap::new(), tenant_limit, tenants: DashMap::new() }
    }

    /// Whether `addr` may try to authenticate (to `tenant`) now.
    pub fn allowed(&self, addr: IpAddr, tenant: &str) -> bool {
        if self.limit == 0 {
            return true;
        }
        let recent = |e: &(u32, Instant)| if e.1.elapsed() < WINDOW { e.0 } else { 0 };
        let by_addr = self.failures.get(&addr).map_or(0, |e| recent(&e));
        if by_addr >= self.limit {
            return false;
        }
        let by_tenant = self.tenants.get(tenant).map_or(0, |e| recent(&e));
        !(by_tenant >= self.tenant_limit && by_addr > 0)
    }

    pub fn record_failure(&self, addr: IpAddr, tenant: &str) {
        if self.limit == 0 {
            return;
        }
        bump(&self.failures, addr);
        bump(&self.tenants, tenant.to_owned());
    }
}

fn bump<K: std::hash::Hash + Eq>(map: &DashMap<K, (u32, Instant)>, key: K) {
    if map.len() >= MAX_TRACKED {
        map.retain(|_, (_, since)| since.elapsed() < WINDOW);
    }
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
    fn limits_per_address() {
        let t = Throttle::new(3);
        let a: IpAddr = [127, 0, 0, 1].into();
        let b: IpAddr = [127, 0, 0, 2].into();
        for _ in 0..3 {
            assert!(t.allowed(a, "acme"));
            t.record_failure(a, "acme");
        }
        assert!(!t.allowed(a, "acme"));
        assert!(!t.allowed(a, "globex"), "the address is throttled for every tenant");
        assert!(t.allowed(b, "acme"), "other addresses are unaffected");
        assert!(Throttle::new(0).allowed(a, "acme"));
    }

    #[test]
    fn a_tenant_under_a_distributed_attack() {
        let t = Throttle::with_tenant_limit(5, 4);
        for last in 1..=4u8 {
            t.record_failure([10, 0, 0, last].into(), "acme");
        }
        // Past the tenant's limit: addresses that failed are refused, a clean one is not,
        // and other tenants are unaffected.
        assert!(!t.allowed([10, 0, 0, 1].into(), "acme"));
        assert!(t.allowed([10, 0, 0, 9].into(), "acme"));
        assert!(t.allowed([10, 0, 0, 1].into(), "globex"));
    }
}
