//! A fair semaphore: waiters queue per tenant and are served round-robin across tenants, so
//! a tenant with a thousand waiting clients cannot starve a tenant with one.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::tenant::TenantId;

#[derive(Default)]
struct State {
    available: usize,
    queues: HashMap<TenantId, VecDeque<oneshot::Sender<()>>>,
    /// Tenants with waiters, in service order.
    order: VecDeque<TenantId>,
}

pub struct FairSemaphore {
    size: usize,
    state: Mutex<State>,
}

/// A held permit; dropping it hands the permit to the next waiter (round-robin) or back.
pub struct FairPermit {
    sem: Arc<FairSemaphore>,
}

impl Drop for FairPermit {
    fn drop(&mut self) {
        self.sem.release();
    }
}

impl FairSemaphore {
    pub fn new(size: usize) -> Arc<FairSemaphore> {
        Arc::new(FairSemaphore { size, state: Mutex::new(State { available: size, ..State::default() }) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Permits held right now.
    pub fn in_use(&self) -> usize {
        self.size - self.lock().available
    }

    pub fn try_acquire(self: &Arc<Self>) -> Option<FairPermit> {
        let mut st = self.lock();
        (st.available > 0 && st.order.is_empty()).then(|| {
            st.available -= 1;
            FairPermit { sem: self.clone() }
        })
    }

    /// Waits for a permit until `deadline`, queued behind this tenant's earlier waiters.
    pub async fn acquire(self: &Arc<Self>, tenant: &TenantId, deadline: Instant) -> Option<FairPermit> {
        let mut rx = {
            let mut st = self.lock();
            if st.available > 0 && st.order.is_empty() {
                st.available -= 1;
                return Some(FairPermit { sem: self.clone() });
            }
            let (tx, rx) = oneshot::channel();
            let queue = st.queues.entry(tenant.clone()).or_default();
            queue.push_back(tx);
            if queue.len() == 1 {
                st.order.push_back(tenant.clone());
            }
            rx
        };
        match tokio::time::timeout_at(deadline, &mut rx).await {
            Ok(Ok(())) => Some(FairPermit { sem: self.clone() }),
            _ => {
                // A permit sent just before we gave up is ours: take it rather than lose it.
                rx.close();
                rx.try_recv().ok().map(|()| FairPermit { sem: self.clone() })
            }
        }
    }

    fn release(&self) {
        let mut st = self.lock();
        while let Some(tenant) = st.order.pop_front() {
            let Some(queue) = st.queues.get_mut(&tenant) else { continue };
            let waiter = queue.pop_front();
            if queue.is_empty() {
                st.queues.remove(&tenant);
            } else {
                st.order.push_back(tenant);
            }
            if let Some(tx) = waiter {
                if tx.send(()).is_ok() {
                    return;
                }
            }
        }
        st.available += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn id(s: &str) -> TenantId {
        TenantId::parse(s).expect("id")
    }

    #[tokio::test]
    async fn waiters_are_served_round_robin_across_tenants() {
        let sem = FairSemaphore::new(1);
        let held = sem.try_acquire().expect("first permit");
        let deadline = Instant::now() + Duration::from_secs(5);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        // Tenant a queues five waiters before tenant b queues one.
        for (i, t) in ["a", "a", "a", "a", "a", "b"].into_iter().enumerate() {
            let (sem, tx) = (sem.clone(), tx.clone());
            tokio::spawn(async move {
                let p = sem.acquire(&id(t), deadline).await.expect("permit");
                tx.send((i, t)).expect("send");
                tokio::time::sleep(Duration::from_millis(5)).await;
                drop(p);
            });
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        drop(held);
        let mut served = Vec::new();
        for _ in 0..6 {
            served.push(rx.recv().await.expect("served").1);
        }
        // b is served second, not sixth.
        assert_eq!(served, vec!["a", "b", "a", "a", "a", "a"]);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(sem.in_use(), 0);
    }

    #[tokio::test]
    async fn timed_out_waiters_lose_no_permit() {
        let sem = FairSemaphore::new(1);
        let held = sem.try_acquire().expect("permit");
        let r = sem.acquire(&id("a"), Instant::now() + Duration::from_millis(20)).await;
        assert!(r.is_none());
        drop(held);
        assert_eq!(sem.in_use(), 0, "the permit came back despite the dead waiter");
        assert!(sem.try_acquire().is_some());
    }
}
