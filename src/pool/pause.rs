//! PAUSE and RESUME: which tenants (or all) may not start a new checkout, and the wait of a
//! checkout while its tenant is paused.
//!
//! A paused checkout waits without a deadline, as a PgBouncer client does during PAUSE; the
//! checkout timeout starts once the pause ends. The common case (nothing paused) costs one
//! relaxed load per checkout.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use tokio::sync::Notify;

use crate::model::TenantId;

#[derive(Default)]
pub struct Pauses {
    /// Whether anything is paused: the fast path of every checkout.
    any: AtomicBool,
    state: Mutex<PauseState>,
    resumed: Notify,
}

#[derive(Default)]
struct PauseState {
    all: bool,
    tenants: HashSet<TenantId>,
}

impl Pauses {
    fn lock(&self) -> std::sync::MutexGuard<'_, PauseState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Pauses `tenant`, or every tenant. False when it was paused already.
    pub fn pause(&self, tenant: Option<&TenantId>) -> bool {
        let mut s = self.lock();
        let fresh = match tenant {
            None => !std::mem::replace(&mut s.all, true),
            Some(t) => !s.all && s.tenants.insert(t.clone()),
        };
        self.any.store(true, Ordering::Release);
        fresh
    }

    /// Resumes `tenant`, or everything. False when it was not paused.
    pub fn resume(&self, tenant: Option<&TenantId>) -> bool {
        let mut s = self.lock();
        let was = match tenant {
            None => {
                let was = s.all || !s.tenants.is_empty();
                s.all = false;
                s.tenants.clear();
                was
            }
            Some(t) => s.tenants.remove(t),
        };
        self.any.store(s.all || !s.tenants.is_empty(), Ordering::Release);
        drop(s);
        self.resumed.notify_waiters();
        was
    }

    pub fn is_paused(&self, tenant: &TenantId) -> bool {
        if !self.any.load(Ordering::Acquire) {
            return false;
        }
        let s = self.lock();
        s.all || s.tenants.contains(tenant)
    }

    /// Whether everything is paused (SHOW STATE's `paused`).
    pub fn all_paused(&self) -> bool {
        self.lock().all
    }

    /// Returns once `tenant` is not paused.
    pub async fn wait(&self, tenant: &TenantId) {
        if !self.any.load(Ordering::Acquire) {
            return;
        }
        loop {
            let resumed = self.resumed.notified();
            tokio::pin!(resumed);
            // Registered before the check, so a resume in between is not missed.
            resumed.as_mut().enable();
            if !self.is_paused(tenant) {
                return;
            }
            resumed.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    fn id(s: &str) -> TenantId {
        TenantId::parse(s).expect("id")
    }

    #[tokio::test]
    async fn a_paused_tenant_waits_until_resumed_and_others_pass() {
        let p = Arc::new(Pauses::default());
        assert!(p.pause(Some(&id("acme"))));
        assert!(!p.pause(Some(&id("acme"))));
        assert!(!p.is_paused(&id("other")));
        let waiter = tokio::spawn({
            let p = p.clone();
            async move { p.wait(&id("acme")).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished());
        assert!(p.resume(Some(&id("acme"))));
        tokio::time::timeout(Duration::from_secs(1), waiter).await.expect("resumed").expect("task");
        assert!(!p.resume(Some(&id("acme"))));
    }

    #[test]
    fn pausing_all_covers_every_tenant() {
        let p = Pauses::default();
        assert!(p.pause(None));
        assert!(p.is_paused(&id("x")) && p.all_paused());
        assert!(p.resume(None));
        assert!(!p.is_paused(&id("x")));
    }
}
