//! A tenant's server-connection cap across its pools: a counting semaphore whose common
//! checkout and release are one atomic operation each (no lock, no waiter list visited), and
//! whose waiters queue first come, first served under a lock taken only when someone waits.
//!
//! A free permit is never taken past a queued waiter: a checkout takes one only while
//! nobody queues, and a release with waiters hands its permit to the first of them. (A
//! checkout that found the queue empty an instant before a waiter queued may still take a
//! permit freed in that instant: it came first.)

use std::collections::VecDeque;
use std::sync::atomic::{AtomicIsize, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

/// A client session's handle on its tenant's server-connection cap: looked up at its first
/// checkout and kept (a tenant's cap is resized in place, never replaced), so later
/// checkouts skip the map.
#[derive(Default)]
pub struct TenantCap(pub(super) Option<Arc<CapSemaphore>>);

impl TenantCap {
    /// Whether another checkout of the tenant queues at its cap.
    pub fn anyone_waiting(&self) -> bool {
        self.0.as_ref().is_some_and(|c| c.anyone_waiting())
    }
}

/// The permits of one tenant's cap.
pub struct CapSemaphore {
    /// Permits free now; negative after a shrink while more than the new size are held (the
    /// excess is retired as they come back, not handed on).
    free: AtomicIsize,
    /// Entries in `queue` (waiters, and gone waiters not yet passed over): a release looks at
    /// the queue only when there are.
    queued: AtomicUsize,
    queue: Mutex<VecDeque<oneshot::Sender<()>>>,
}

/// A held permit of a [`CapSemaphore`]; dropping it gives the permit back.
pub struct CapPermit(Arc<CapSemaphore>);

impl Drop for CapPermit {
    fn drop(&mut self) {
        self.0.give_back();
    }
}

/// A queued waiter's end. Dropped before its acquire saw the outcome (cancelled: the client
/// gone, the checkout timed out), it gives back a permit sent to it meanwhile.
struct Waiting<'a> {
    rx: oneshot::Receiver<()>,
    sem: &'a CapSemaphore,
    done: bool,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.rx.close();
            if self.rx.try_recv().is_ok() {
                self.sem.give_back();
            }
        }
    }
}

impl CapSemaphore {
    pub fn new(size: usize) -> Arc<CapSemaphore> {
        Arc::new(CapSemaphore {
            free: AtomicIsize::new(isize::try_from(size).unwrap_or(isize::MAX)),
            queued: AtomicUsize::new(0),
            queue: Mutex::new(VecDeque::new()),
        })
    }

    /// Permits free now (none while a shrink still retires held ones).
    #[cfg(test)]
    fn available(&self) -> usize {
        usize::try_from(self.free.load(Ordering::SeqCst)).unwrap_or(0)
    }

    /// Permits held now by a cap of `size`: more than `size` while a shrink retires them.
    pub fn in_use(&self, size: usize) -> usize {
        let free = self.free.load(Ordering::SeqCst);
        usize::try_from(isize::try_from(size).unwrap_or(isize::MAX).saturating_sub(free)).unwrap_or(0)
    }

    /// Takes a free permit, whoever queues.
    fn take_free(&self) -> bool {
        let mut n = self.free.load(Ordering::SeqCst);
        while n > 0 {
            match self.free.compare_exchange_weak(n, n - 1, Ordering::SeqCst, Ordering::SeqCst) {
                Ok(_) => return true,
                Err(now) => n = now,
            }
        }
        false
    }

    /// Whether a checkout queues for a permit (or a gone one is not passed over yet).
    pub fn anyone_waiting(&self) -> bool {
        self.queued.load(Ordering::Relaxed) != 0
    }

    /// A free permit, if one is free and nobody queues for it.
    pub fn try_acquire(self: &Arc<Self>) -> Option<CapPermit> {
        (self.queued.load(Ordering::SeqCst) == 0 && self.take_free()).then(|| CapPermit(self.clone()))
    }

    /// A permit, queued behind the waiters before this one (cancel-safe: dropped while it
    /// waits, it loses no permit). None only if its place in the queue were lost, which a
    /// live semaphore does not do.
    pub async fn acquire(self: &Arc<Self>) -> Option<CapPermit> {
        let rx = {
            let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
            // Counted before the permits are looked at: a release that adds one after this
            // look sees the count and hands the permit on under the lock held here.
            self.queued.fetch_add(1, Ordering::SeqCst);
            if queue.is_empty() && self.take_free() {
                self.queued.fetch_sub(1, Ordering::SeqCst);
                return Some(CapPermit(self.clone()));
            }
            let (tx, rx) = oneshot::channel();
            queue.push_back(tx);
            rx
        };
        let mut waiting = Waiting { rx, sem: self, done: false };
        // A queued waiter's sender is only dropped unsent once the waiter is gone.
        let got = (&mut waiting.rx).await;
        waiting.done = true;
        got.ok().map(|()| CapPermit(self.clone()))
    }

    /// A permit comes back: to the first waiter, or to the free ones.
    fn give_back(&self) {
        self.free.fetch_add(1, Ordering::SeqCst);
        if self.queued.load(Ordering::SeqCst) != 0 {
            self.hand_on();
        }
    }

    /// Hands free permits to the waiters in queue order, passing over the gone ones.
    #[cold]
    fn hand_on(&self) {
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(tx) = queue.front() {
            if !tx.is_closed() {
                if !self.take_free() {
                    return;
                }
                let Some(tx) = queue.pop_front() else { return };
                self.queued.fetch_sub(1, Ordering::SeqCst);
                if tx.send(()).is_err() {
                    // Gone meanwhile: the permit is free again for the next one.
                    self.free.fetch_add(1, Ordering::SeqCst);
                }
                continue;
            }
            queue.pop_front();
            self.queued.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Changes the cap from `have` permits to `want`: growing hands the new permits to
    /// waiters at once; shrinking takes free permits away now and held ones as they come back.
    pub fn resize(&self, have: usize, want: usize) {
        let delta = isize::try_from(want).unwrap_or(isize::MAX) - isize::try_from(have).unwrap_or(isize::MAX);
        self.free.fetch_add(delta, Ordering::SeqCst);
        if delta > 0 && self.queued.load(Ordering::SeqCst) != 0 {
            self.hand_on();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn waiters_are_served_in_order_and_none_overtakes_them() {
        let sem = CapSemaphore::new(1);
        let held = sem.try_acquire().expect("the free permit");
        assert!(sem.try_acquire().is_none());
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for i in 0..3 {
            let (sem, tx) = (sem.clone(), tx.clone());
            tokio::spawn(async move {
                let p = sem.acquire().await.expect("permit");
                tx.send(i).expect("send");
                tokio::time::sleep(Duration::from_millis(5)).await;
                drop(p);
            });
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        drop(held);
        // Handed to the first waiter: a newcomer finds none free.
        assert!(sem.try_acquire().is_none(), "a newcomer overtook the queue");
        let mut served = Vec::new();
        for _ in 0..3 {
            served.push(rx.recv().await.expect("served"));
        }
        assert_eq!(served, vec![0, 1, 2]);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!((sem.available(), sem.in_use(1)), (1, 0));
    }

    #[tokio::test]
    async fn a_cancelled_waiter_loses_no_permit() {
        let sem = CapSemaphore::new(1);
        let held = sem.try_acquire().expect("permit");
        // Gone before a permit came: passed over.
        let gone = tokio::time::timeout(Duration::from_millis(10), sem.acquire()).await;
        assert!(gone.is_err());
        // Sent a permit, then dropped before it looked: the permit comes back.
        let mut waiter = Box::pin(sem.acquire());
        assert!(tokio::time::timeout(Duration::from_millis(10), &mut waiter).await.is_err());
        drop(held);
        drop(waiter);
        assert_eq!(sem.available(), 1, "the permit sent to a cancelled waiter was lost");
        let again = tokio::time::timeout(Duration::from_millis(100), sem.acquire()).await;
        assert!(again.is_ok());
        assert_eq!(sem.in_use(1), 1);
    }

    /// Eight tasks take permits every way there is (the lock-free take, a wait, a wait cut
    /// short after a millisecond or so) while the cap is resized under them: no more are
    /// ever held at once than the largest size, and once they are done every permit is free
    /// again, no gone waiter is left queued, and the lock-free take finds all of them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn under_contention_cancellation_and_resizes_no_permit_is_minted_or_lost() {
        use std::sync::atomic::AtomicBool;
        const SIZE: usize = 3;
        let sem = CapSemaphore::new(SIZE);
        let (held, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let done = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for i in 0..8usize {
            let (sem, held, most) = (sem.clone(), held.clone(), most.clone());
            tasks.push(tokio::spawn(async move {
                for n in 0..150usize {
                    let permit = match (i + n) % 3 {
                        0 => sem.try_acquire(),
                        1 => tokio::time::timeout(Duration::from_micros(200), sem.acquire())
                            .await
                            .ok()
                            .flatten(),
                        _ => sem.acquire().await,
                    };
                    let Some(p) = permit else {
                        tokio::task::yield_now().await;
                        continue;
                    };
                    let now = held.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    tokio::task::yield_now().await;
                    held.fetch_sub(1, Ordering::SeqCst);
                    drop(p);
                }
            }));
        }
        // Shrinks below and grows above SIZE while they run, ending at SIZE.
        let resizer = {
            let (sem, done) = (sem.clone(), done.clone());
            tokio::spawn(async move {
                let mut have = SIZE;
                for want in [1, SIZE + 1, 2, SIZE].into_iter().cycle() {
                    if done.load(Ordering::SeqCst) && have == SIZE {
                        return;
                    }
                    sem.resize(have, want);
                    have = want;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            })
        };
        for t in tasks {
            t.await.expect("task");
        }
        done.store(true, Ordering::SeqCst);
        resizer.await.expect("resizer");
        let most = most.load(Ordering::SeqCst);
        assert!(
            (2..=SIZE + 1).contains(&most),
            "{most} permits held at once under a cap of at most {}",
            SIZE + 1
        );
        assert_eq!((sem.available(), sem.in_use(SIZE)), (SIZE, 0), "permits minted or lost");
        assert_eq!(sem.queued.load(Ordering::SeqCst), 0, "gone waiters left in the queue");
        let all: Vec<_> = (0..SIZE).filter_map(|_| sem.try_acquire()).collect();
        assert_eq!(all.len(), SIZE, "the lock-free take finds every permit");
    }

    #[tokio::test]
    async fn resizing_wakes_waiters_and_retires_held_permits() {
        let sem = CapSemaphore::new(2);
        let a = sem.try_acquire().expect("a");
        let b = sem.try_acquire().expect("b");
        sem.resize(2, 1);
        assert_eq!(sem.in_use(1), 2, "both held after the shrink");
        drop(a);
        assert!(sem.try_acquire().is_none(), "one permit is held, the cap is one");
        drop(b);
        let c = sem.try_acquire().expect("c");
        assert!(sem.try_acquire().is_none());
        let waiter = {
            let sem = sem.clone();
            tokio::spawn(async move { drop(sem.acquire().await.expect("permit")) })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        sem.resize(1, 2);
        tokio::time::timeout(Duration::from_secs(1), waiter).await.expect("woken").expect("join");
        drop(c);
        assert_eq!((sem.available(), sem.in_use(2)), (2, 0));
    }
}
