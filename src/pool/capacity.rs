//! Connection caps shared by several pools (one upstream server, or all of pgtenant), and
//! resizing a cap's semaphore (a changed setting, or this instance's share of a service-wide
//! cap after the registry changed).

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::Pool;
use crate::leases::Shares;

/// How long a waiter for upstream or global capacity sleeps before looking for an idle
/// connection to evict again.
const CAPACITY_SLICE: Duration = Duration::from_millis(50);

/// A connection cap shared by several pools (one upstream server, or all of pgtenant), and
/// the pools whose idle connections may be closed to make room under it.
pub(super) struct Capacity {
    open: Arc<Semaphore>,
    pub(super) pools: Mutex<Vec<Weak<Pool>>>,
    /// The cap as configured (for the whole service) and the size `open` has now (this
    /// instance's share of it).
    sizes: Mutex<(usize, usize)>,
}

impl Capacity {
    pub(super) fn new(max: usize, size: usize) -> Arc<Capacity> {
        Arc::new(Capacity {
            open: Arc::new(Semaphore::new(size)),
            pools: Mutex::new(Vec::new()),
            sizes: Mutex::new((max, size)),
        })
    }

    /// Connections this cap lets open now (this instance's share).
    pub(super) fn size(&self) -> usize {
        self.sizes.lock().unwrap_or_else(|e| e.into_inner()).1
    }

    /// Resizes to this instance's share of the configured cap.
    pub(super) fn apply_share(&self, shares: &Shares) {
        let mut sizes = self.sizes.lock().unwrap_or_else(|e| e.into_inner());
        let want = shares.limit(sizes.0);
        if want == sizes.1 {
            return;
        }
        tracing::info!(cap = sizes.0, from = sizes.1, to = want, "upstream connection share changed");
        resize(&self.open, sizes.1, want);
        let shrunk = sizes.1.saturating_sub(want);
        sizes.1 = want;
        drop(sizes);
        // Idle connections above the new share are closed now (their permits go to the
        // shrink first); busy ones stay until they are closed.
        for _ in 0..shrunk {
            if !self.evict_one_idle(None) {
                break;
            }
        }
    }

    /// Closes the least recently used idle connection of a pool under this cap (other than
    /// `except`).
    fn evict_one_idle(&self, except: Option<&Pool>) -> bool {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        pools.retain(|p| p.strong_count() > 0);
        for pool in pools.iter().filter_map(Weak::upgrade) {
            if except.is_some_and(|e| std::ptr::eq(&*pool, e)) {
                continue;
            }
            let mut idle = pool.lock_idle();
            if !idle.is_empty() {
                drop(idle.remove(0));
                return true;
            }
        }
        false
    }

    /// A permit under this cap, evicting idle connections of other pools while waiting, until
    /// `deadline`; without a deadline, only what is free now.
    pub(super) async fn acquire(
        &self,
        me: &Pool,
        deadline: Option<tokio::time::Instant>,
    ) -> Option<OwnedSemaphorePermit> {
        loop {
            if let Ok(p) = self.open.clone().try_acquire_owned() {
                return Some(p);
            }
            let deadline = deadline?;
            if self.evict_one_idle(Some(me)) {
                continue;
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return None;
            }
            let slice = deadline.min(now + CAPACITY_SLICE);
            if let Ok(Ok(p)) = tokio::time::timeout_at(slice, self.open.clone().acquire_owned()).await {
                return Some(p);
            }
        }
    }
}

/// Resizes a cap's semaphore from `have` permits to `want`. Permits that are held when it
/// shrinks are retired as they come back.
pub(super) fn resize(sem: &Arc<Semaphore>, have: usize, want: usize) {
    if want >= have {
        sem.add_permits(want - have);
        return;
    }
    let missing = (have - want).saturating_sub(sem.forget_permits(have - want));
    if let Ok(n) = u32::try_from(missing) {
        if n > 0 {
            let sem = sem.clone();
            tokio::spawn(async move {
                if let Ok(p) = sem.acquire_many_owned(n).await {
                    p.forget();
                }
            });
        }
    }
}
