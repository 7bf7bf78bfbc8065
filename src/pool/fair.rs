//! A fair semaphore: waiters queue per tenant and are served round-robin across tenants, so
//! a tenant with a thousand waiting clients cannot starve a tenant with one.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::model::TenantId;

#[derive(Default)]
struct State {
    /// Permits free now; negative after a shrink while more than the new size are held
    /// (the excess is retired as permits come back, not handed to waiters).
    available: isize,
    size: usize,
    queues: HashMap<TenantId, VecDeque<oneshot::Sender<()>>>,
    /// Tenants with waiters, in service order.
    order: VecDeque<TenantId>,
}

pub struct FairSemaphore {
    state: Mutex<State>,
    /// How many tenants have waiters (`State::order`'s length, mirrored for a lock-free read).
    queued: AtomicUsize,
}

/// A queued waiter's receiving end. Dropped before its acquire saw the outcome (the acquire
/// was cancelled), it gives back a permit sent to it meanwhile.
struct Waiting<'a> {
    rx: oneshot::Receiver<()>,
    sem: &'a FairSemaphore,
    done: bool,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.rx.close();
            if self.rx.try_recv().is_ok() {
                self.sem.release();
            }
        }
    }
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
        let available = isize::try_from(size).unwrap_or(isize::MAX);
        Arc::new(FairSemaphore {
            state: Mutex::new(State { available, size, ..State::default() }),
            queued: AtomicUsize::new(0),
        })
    }

    /// Whether clients of a tenant other than `tenant` wait for a permit: one atomic load,
    /// and the lock only when exactly one tenant waits (it may be `tenant` itself).
    pub fn others_waiting(&self, tenant: &TenantId) -> bool {
        match self.queued.load(Ordering::Relaxed) {
            0 => false,
            1 => self.lock().order.iter().any(|t| t != tenant),
            _ => true,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Permits held right now.
    pub fn in_use(&self) -> usize {
        let st = self.lock();
        usize::try_from(isize::try_from(st.size).unwrap_or(isize::MAX) - st.available).unwrap_or(0)
    }

    /// The number of permits, held and free.
    pub fn size(&self) -> usize {
        self.lock().size
    }

    /// Changes the number of permits: growing wakes waiters at once; shrinking takes free
    /// permits away now and held ones as they come back.
    pub fn resize(&self, size: usize) {
        let mut st = self.lock();
        let delta =
            isize::try_from(size).unwrap_or(isize::MAX) - isize::try_from(st.size).unwrap_or(isize::MAX);
        st.size = size;
        st.available += delta;
        while st.available > 0 && Self::wake_one(&mut st) {
            st.available -= 1;
        }
        self.queued.store(st.order.len(), Ordering::Relaxed);
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
        let rx = {
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
                self.queued.store(st.order.len(), Ordering::Relaxed);
            }
            rx
        };
        // Cancel-safe: a waiter dropped while it waits (its client killed or gone) gives back
        // a permit sent to it meanwhile instead of losing it.
        let mut waiting = Waiting { rx, sem: self, done: false };
        let got = tokio::time::timeout_at(deadline, &mut waiting.rx).await;
        waiting.done = true;
        match got {
            Ok(Ok(())) => Some(FairPermit { sem: self.clone() }),
            _ => {
                // A permit sent just before we gave up is ours: take it rather than lose it.
                waiting.rx.close();
                waiting.rx.try_recv().ok().map(|()| FairPermit { sem: self.clone() })
            }
        }
    }

    fn release(&self) {
        let mut st = self.lock();
        if st.available < 0 || !Self::wake_one(&mut st) {
            st.available += 1;
        }
        self.queued.store(st.order.len(), Ordering::Relaxed);
    }

    /// Hands a permit to the next waiter (round-robin across tenants); false if none waits.
    fn wake_one(st: &mut State) -> bool {
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
                    return true;
                }
            }
        }
        false
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
    async fn a_cancelled_waiter_gives_back_a_permit_sent_to_it() {
        let sem = FairSemaphore::new(1);
        let held = sem.try_acquire().expect("first permit");
        let deadline = Instant::now() + Duration::from_secs(5);
        let b = id("b");
        let mut waiter = Box::pin(sem.acquire(&b, deadline));
        // Polled until it is queued, then still waiting.
        assert!(tokio::time::timeout(Duration::from_millis(20), &mut waiter).await.is_err());
        // The permit goes to the queued waiter, which is dropped before it sees it.
        drop(held);
        drop(waiter);
        let again = tokio::time::timeout(Duration::from_millis(200), sem.acquire(&id("c"), deadline)).await;
        assert!(matches!(again, Ok(Some(_))), "the permit sent to a cancelled waiter was lost");
        assert_eq!(sem.in_use(), 1);
    }

    #[tokio::test]
    async fn resizing_wakes_waiters_and_retires_held_permits() {
        let sem = FairSemaphore::new(2);
        let a = sem.try_acquire().expect("a");
        let b = sem.try_acquire().expect("b");
        sem.resize(1);
        assert_eq!(sem.size(), 1);
        drop(a);
        assert!(sem.try_acquire().is_none(), "one permit is held, the size is one");
        drop(b);
        let c = sem.try_acquire().expect("c");
        assert!(sem.try_acquire().is_none());
        // Growing hands the new permit to a waiter.
        let waiter = {
            let sem = sem.clone();
            tokio::spawn(async move {
                sem.acquire(&id("a"), Instant::now() + Duration::from_secs(5)).await.is_some()
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        sem.resize(2);
        assert!(waiter.await.expect("join"));
        drop(c);
        assert_eq!(sem.in_use(), 0);
    }

    #[tokio::test]
    async fn others_waiting_sees_only_other_tenants_waiters() {
        let sem = FairSemaphore::new(1);
        let held = sem.try_acquire().expect("permit");
        assert!(!sem.others_waiting(&id("a")), "nobody waits");
        let deadline = Instant::now() + Duration::from_secs(5);
        let queue = |t: &'static str| {
            let sem = sem.clone();
            tokio::spawn(async move { sem.acquire(&id(t), deadline).await.is_some() })
        };
        let wa = queue("a");
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!sem.others_waiting(&id("a")), "only a's own client waits");
        assert!(sem.others_waiting(&id("b")));
        let wb = queue("b");
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(sem.others_waiting(&id("a")) && sem.others_waiting(&id("b")));
        drop(held);
        assert!(wa.await.expect("join") && wb.await.expect("join"));
        assert!(!sem.others_waiting(&id("a")) && !sem.others_waiting(&id("c")), "the queue is empty again");
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
