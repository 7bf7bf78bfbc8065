//! A fair semaphore: waiters queue per tenant and are served round-robin across tenants, so
//! a tenant with a thousand waiting clients cannot starve a tenant with one.
//!
//! It guards a value of the caller's (the pool's idle connections) under the same lock as its
//! permits, so the common checkout (a free permit and an idle connection) and release (the
//! connection back and the permit handed on) each take one lock.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

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

impl State {
    fn in_use(&self) -> usize {
        usize::try_from(isize::try_from(self.size).unwrap_or(isize::MAX) - self.available).unwrap_or(0)
    }

    /// Takes a free permit if one is free and nobody queues for it.
    fn take_free(&mut self) -> bool {
        let free = self.available > 0 && self.order.is_empty();
        if free {
            self.available -= 1;
        }
        free
    }

    /// A permit comes back: to the next waiter (round-robin) or to the free ones.
    #[inline]
    fn give_back(&mut self) {
        // Nobody waits, as a rule: no call to look for a waiter.
        if self.available < 0 || self.order.is_empty() || !self.wake_one() {
            self.available += 1;
        }
    }

    /// Hands a permit to the next waiter (round-robin across tenants); false if none waits.
    fn wake_one(&mut self) -> bool {
        while let Some(tenant) = self.order.pop_front() {
            let Some(queue) = self.queues.get_mut(&tenant) else { continue };
            let waiter = queue.pop_front();
            if queue.is_empty() {
                self.queues.remove(&tenant);
            } else {
                self.order.push_back(tenant);
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

struct Inner<T> {
    st: State,
    data: T,
}

/// Permits, and the caller's value `T` guarded by the same lock.
pub struct FairSemaphore<T = ()> {
    inner: Mutex<Inner<T>>,
    /// How many tenants have waiters (`State::order`'s length, mirrored for a lock-free read).
    queued: AtomicUsize,
}

/// A queued waiter's receiving end. Dropped before its acquire saw the outcome (the acquire
/// was cancelled: its client killed or gone), it gives back a permit sent to it meanwhile.
struct Waiting<'a, T> {
    rx: oneshot::Receiver<()>,
    sem: &'a FairSemaphore<T>,
    done: bool,
}

impl<T> Drop for Waiting<'_, T> {
    fn drop(&mut self) {
        if !self.done {
            self.rx.close();
            if self.rx.try_recv().is_ok() {
                self.sem.give_back();
            }
        }
    }
}

/// The semaphore locked: the guarded value, and the permit counts as of now.
pub struct Locked<'a, T> {
    guard: MutexGuard<'a, Inner<T>>,
}

impl<T> Locked<'_, T> {
    /// The number of permits, held and free.
    pub fn size(&self) -> usize {
        self.guard.st.size
    }

    /// Permits held right now.
    pub fn in_use(&self) -> usize {
        self.guard.st.in_use()
    }
}

impl<T> std::ops::Deref for Locked<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.guard.data
    }
}

impl<T> std::ops::DerefMut for Locked<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.guard.data
    }
}

/// A held permit; dropping it hands the permit to the next waiter (round-robin) or back.
pub struct FairPermit<T = ()> {
    sem: Arc<FairSemaphore<T>>,
    /// Given back already (by [`FairPermit::release_with`]).
    returned: bool,
}

impl<T> FairPermit<T> {
    fn new(sem: &Arc<FairSemaphore<T>>) -> FairPermit<T> {
        FairPermit { sem: sem.clone(), returned: false }
    }

    /// Gives the permit back after `f` ran on the guarded value, under one lock: what `f`
    /// leaves there (a connection pushed back) is in place before a waiter is woken.
    pub fn release_with<R>(mut self, f: impl FnOnce(&mut Locked<'_, T>) -> R) -> R {
        let mut locked = self.sem.lock();
        let r = f(&mut locked);
        locked.guard.st.give_back();
        self.sem.queued.store(locked.guard.st.order.len(), Ordering::Relaxed);
        drop(locked);
        self.returned = true;
        r
    }
}

impl<T> Drop for FairPermit<T> {
    fn drop(&mut self) {
        if !self.returned {
            self.sem.give_back();
        }
    }
}

impl<T> FairSemaphore<T> {
    pub fn new(size: usize, data: T) -> Arc<FairSemaphore<T>> {
        let available = isize::try_from(size).unwrap_or(isize::MAX);
        Arc::new(FairSemaphore {
            inner: Mutex::new(Inner { st: State { available, size, ..State::default() }, data }),
            queued: AtomicUsize::new(0),
        })
    }

    /// A permit comes back (to the next waiter or the free ones), under the lock.
    fn give_back(&self) {
        let mut locked = self.lock();
        locked.guard.st.give_back();
        self.queued.store(locked.guard.st.order.len(), Ordering::Relaxed);
    }

    /// Whether clients of a tenant other than `tenant` wait for a permit: one atomic load,
    /// and the lock only when exactly one tenant waits (it may be `tenant` itself).
    pub fn others_waiting(&self, tenant: &TenantId) -> bool {
        match self.queued.load(Ordering::Relaxed) {
            0 => false,
            1 => self.lock().guard.st.order.iter().any(|t| t != tenant),
            _ => true,
        }
    }

    /// Whether any client waits for a permit (one atomic load).
    pub fn anyone_waiting(&self) -> bool {
        self.queued.load(Ordering::Relaxed) != 0
    }

    /// Locks the permits and the guarded value.
    pub fn lock(&self) -> Locked<'_, T> {
        Locked { guard: self.inner.lock().unwrap_or_else(|e| e.into_inner()) }
    }

    /// Permits held right now.
    pub fn in_use(&self) -> usize {
        self.lock().in_use()
    }

    /// The number of permits, held and free.
    pub fn size(&self) -> usize {
        self.lock().size()
    }

    /// Changes the number of permits: growing wakes waiters at once; shrinking takes free
    /// permits away now and held ones as they come back.
    pub fn resize(&self, size: usize) {
        let mut locked = self.lock();
        let st = &mut locked.guard.st;
        let delta =
            isize::try_from(size).unwrap_or(isize::MAX) - isize::try_from(st.size).unwrap_or(isize::MAX);
        st.size = size;
        st.available += delta;
        while st.available > 0 && st.wake_one() {
            st.available -= 1;
        }
        self.queued.store(st.order.len(), Ordering::Relaxed);
    }

    pub fn try_acquire(self: &Arc<Self>) -> Option<FairPermit<T>> {
        self.lock().guard.st.take_free().then(|| FairPermit::new(self))
    }

    /// A free permit (nobody queues for it), and `then` run on the guarded value under the
    /// lock that took it; None, having run nothing, when none is free.
    pub fn try_acquire_with<R>(
        self: &Arc<Self>,
        then: impl FnOnce(&mut Locked<'_, T>) -> R,
    ) -> Option<(FairPermit<T>, R)> {
        let mut locked = self.lock();
        if !locked.guard.st.take_free() {
            return None;
        }
        let r = then(&mut locked);
        Some((FairPermit::new(self), r))
    }

    /// Waits for a permit until `deadline`, queued behind this tenant's earlier waiters.
    pub async fn acquire(self: &Arc<Self>, tenant: &TenantId, deadline: Instant) -> Option<FairPermit<T>> {
        self.acquire_with(tenant, || deadline, |_, _| ()).await.map(|(p, ())| p)
    }

    /// [`FairSemaphore::acquire`], and `then` run on the guarded value under the lock that
    /// took the permit (the common case: a free permit, one lock in all); `then` is told
    /// whether the permit was waited for. `deadline` is asked for only when the permit is
    /// waited for.
    pub async fn acquire_with<R>(
        self: &Arc<Self>,
        tenant: &TenantId,
        deadline: impl FnOnce() -> Instant,
        then: impl FnOnce(&mut Locked<'_, T>, bool) -> R,
    ) -> Option<(FairPermit<T>, R)> {
        let rx = {
            let mut locked = self.lock();
            if locked.guard.st.take_free() {
                let r = then(&mut locked, false);
                return Some((FairPermit::new(self), r));
            }
            let st = &mut locked.guard.st;
            let (tx, rx) = oneshot::channel();
            let queue = st.queues.entry(tenant.clone()).or_default();
            queue.push_back(tx);
            if queue.len() == 1 {
                st.order.push_back(tenant.clone());
                self.queued.store(st.order.len(), Ordering::Relaxed);
            }
            rx
        };
        // Cancel-safe: a waiter dropped while it waits gives back a permit sent to it meanwhile
        // instead of losing it.
        let mut waiting = Waiting { rx, sem: self, done: false };
        // Boxed: only a waiter has a timer, and its state must not size every checkout.
        let got = Box::pin(tokio::time::timeout_at(deadline(), &mut waiting.rx)).await;
        waiting.done = true;
        let permit = match got {
            Ok(Ok(())) => FairPermit::new(self),
            _ => {
                // A permit sent just before we gave up is ours: take it rather than lose it.
                waiting.rx.close();
                waiting.rx.try_recv().ok()?;
                FairPermit::new(self)
            }
        };
        let r = then(&mut self.lock(), true);
        Some((permit, r))
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
        let sem = FairSemaphore::new(1, ());
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
    async fn resizing_wakes_waiters_and_retires_held_permits() {
        let sem = FairSemaphore::new(2, ());
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
    async fn a_cancelled_waiter_gives_back_a_permit_sent_to_it() {
        let sem = FairSemaphore::new(1, ());
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
    async fn others_waiting_sees_only_other_tenants_waiters() {
        let sem = FairSemaphore::new(1, ());
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
        let sem = FairSemaphore::new(1, ());
        let held = sem.try_acquire().expect("permit");
        let r = sem.acquire(&id("a"), Instant::now() + Duration::from_millis(20)).await;
        assert!(r.is_none());
        drop(held);
        assert_eq!(sem.in_use(), 0, "the permit came back despite the dead waiter");
        assert!(sem.try_acquire().is_some());
    }

    #[tokio::test]
    async fn a_waiter_finds_what_the_release_left_under_the_same_lock() {
        let sem = FairSemaphore::new(1, Vec::<u32>::new());
        let deadline = Instant::now() + Duration::from_secs(5);
        let (held, none) = sem.acquire_with(&id("a"), || deadline, |v, _| v.pop()).await.expect("permit");
        assert_eq!(none, None);
        let waiter = {
            let sem = sem.clone();
            tokio::spawn(async move {
                sem.acquire_with(&id("b"), || deadline, |v, waited| v.pop().filter(|_| waited))
                    .await
                    .map(|(_, got)| got)
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(sem.lock().in_use(), 1);
        held.release_with(|v| v.push(7));
        assert_eq!(waiter.await.expect("join"), Some(Some(7)), "the waiter took the permit and the value");
        assert_eq!(sem.in_use(), 0, "the waiter's permit was dropped with it");
        assert!(sem.lock().is_empty());
    }
}
