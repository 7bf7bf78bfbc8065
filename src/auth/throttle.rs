//! Failed-authentication throttling per source address: past a number of failures within a
//! minute, further attempts from that address are refused at once (cheaply), which keeps a
//! password-guessing client from costing anyone else anything.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use dashmap::DashMap;

const WINDOW: Duration = Duration::from_secs(60);
/// Addresses remembered at most (a flood of addresses cannot grow memory without bound).
const MAX_TRACKED: usize = 100_000;

pub struct Throttle {
    limit: u32,
    failures: DashMap<IpAddr, (u32, Instant)>,
}

impl Throttle {
    /// `limit` failures per minute per address; 0 turns throttling off.
    pub fn new(limit: u32) -> Throttle {
        Throttle { limit, failures: DashMap::new() }
    }

    /// Whether `addr` may try to authenticate now.
    pub fn allowed(&self, addr: IpAddr) -> bool {
        if self.limit == 0 {
            return true;
        }
        match self.failures.get(&addr) {
            Some(e) if e.1.elapsed() < WINDOW => e.0 < self.limit,
            _ => true,
        }
    }

    pub fn record_failure(&self, addr: IpAddr) {
        if self.limit == 0 {
            return;
        }
        if self.failures.len() >= MAX_TRACKED {
            self.failures.retain(|_, (_, since)| since.elapsed() < WINDOW);
        }
        let mut e = self.failures.entry(addr).or_insert((0, Instant::now()));
        if e.1.elapsed() >= WINDOW {
            *e = (0, Instant::now());
        }
        e.0 += 1;
    }
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
            assert!(t.allowed(a));
            t.record_failure(a);
        }
        assert!(!t.allowed(a));
        assert!(t.allowed(b), "other addresses are unaffected");
        assert!(Throttle::new(0).allowed(a));
    }
}
