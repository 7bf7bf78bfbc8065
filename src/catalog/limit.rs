//! The per-address rate limit on catalog lookups that reach the control database (tenants
//! not in the cache): a token bucket per client address, so that a client cycling through
//! made-up tenant ids costs the control database a bounded number of queries. The negative
//! cache covers repeats of one id; this covers many ids.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;
use std::time::Instant;

/// Addresses tracked at most. Past it, addresses whose bucket has refilled are forgotten;
/// if every tracked address is still busy, new addresses are refused (fail closed: only
/// lookups that would reach the control database are limited, cached tenants never are).
const MAX_ADDRESSES: usize = 65_536;

pub struct LookupLimiter {
    /// Tokens per second (0: no limit).
    rate: f64,
    /// Bucket size: one second's worth, at least one lookup.
    burst: f64,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl LookupLimiter {
    /// `rate` lookups per second per address; 0 turns the limit off.
    pub fn new(rate: f64) -> LookupLimiter {
        let rate = if rate.is_finite() && rate > 0.0 { rate } else { 0.0 };
        LookupLimiter { rate, burst: rate.max(1.0), buckets: Mutex::new(HashMap::new()) }
    }

    /// Takes one lookup from `ip`'s allowance; false when it has none left.
    pub fn allow(&self, ip: IpAddr) -> bool {
        self.allow_at(ip, Instant::now())
    }

    fn allow_at(&self, ip: IpAddr, now: Instant) -> bool {
        if self.rate == 0.0 {
            return true;
        }
        let key = address_key(ip);
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if !buckets.contains_key(&key) && buckets.len() >= MAX_ADDRESSES {
            let (rate, burst) = (self.rate, self.burst);
            buckets.retain(|_, b| b.refilled(now, rate) < burst);
            if buckets.len() >= MAX_ADDRESSES {
                return false;
            }
        }
        let b = buckets.entry(key).or_insert(Bucket { tokens: self.burst, at: now });
        b.tokens = b.refilled(now, self.rate).min(self.burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Addresses tracked now.
    pub fn tracked(&self) -> usize {
        self.buckets.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

impl Bucket {
    fn refilled(&self, now: Instant, rate: f64) -> f64 {
        self.tokens + rate * now.saturating_duration_since(self.at).as_secs_f64()
    }
}

/// IPv4 addresses count one by one; an IPv6 client usually holds a whole /64, so that is
/// what counts as one address (an IPv4-mapped address counts as its IPv4 address).
fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn a_burst_then_the_rate_per_address() {
        let l = LookupLimiter::new(20.0);
        let t0 = Instant::now();
        let a = ip("192.0.2.1");
        let allowed = (0..100).filter(|_| l.allow_at(a, t0)).count();
        assert_eq!(allowed, 20, "one second's worth at once");
        // Another address has its own allowance.
        assert!(l.allow_at(ip("192.0.2.2"), t0));
        // A quarter second later: five more.
        let t1 = t0 + Duration::from_millis(250);
        assert_eq!((0..100).filter(|_| l.allow_at(a, t1)).count(), 5);
        // Idle for long: back to the burst, not more.
        let t2 = t1 + Duration::from_secs(3600);
        assert_eq!((0..100).filter(|_| l.allow_at(a, t2)).count(), 20);
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let l = LookupLimiter::new(1.0);
        let t0 = Instant::now();
        assert!(l.allow_at(ip("2001:db8:1:2::1"), t0));
        assert!(!l.allow_at(ip("2001:db8:1:2:ffff::9"), t0), "same /64");
        assert!(l.allow_at(ip("2001:db8:1:3::1"), t0), "another /64");
        assert!(l.allow_at(ip("198.51.100.7"), t0));
        assert!(!l.allow_at(ip("::ffff:198.51.100.7"), t0), "mapped is the same address");
    }

    #[test]
    fn zero_is_no_limit_and_the_map_is_bounded() {
        let l = LookupLimiter::new(0.0);
        assert!((0..10_000).all(|_| l.allow(ip("192.0.2.1"))));
        assert_eq!(l.tracked(), 0);

        let l = LookupLimiter::new(1.0);
        let t0 = Instant::now();
        for n in 0..(MAX_ADDRESSES as u32 + 10) {
            l.allow_at(IpAddr::V4(n.into()), t0);
        }
        assert!(l.tracked() <= MAX_ADDRESSES);
        // Once their buckets refill, old addresses make room for new ones.
        let later = t0 + Duration::from_secs(2);
        assert!(l.allow_at(ip("203.0.113.1"), later));
        assert!(l.tracked() <= MAX_ADDRESSES);
    }
}
