//! PAUSE and RESUME: which tenants (or all) may not start a new checkout, and the wait of a
//! checkout while its tenant is paused.
//!
//! A paused checkout waits without a deadline, as a PgBouncer client does during PAUSE; the
//! checkout timeout starts once the pause ends. The common case (nothing paused) costs one
//! relaxed load per checkout.
//!
//! The global pause and the per-tenant ones are separate flags, as PgBouncer's `cf_pause_mode`
//! and `db_paused` are (`src/admin.c`): `RESUME` ends the global pause only, `RESUME tenant`
//! only that tenant's own pause (so during a global pause it is "not paused"), and a tenant
//! paused on its own stays paused when a global pause ends.

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

    /// Pauses `tenant`, or every tenant. False (and nothing changes) while everything is
    /// paused: PgBouncer's "already suspended/paused". Pausing a tenant paused on its own
    /// again is accepted, as PgBouncer accepts it.
    pub fn pause(&self, tenant: Option<&TenantId>) -> bool {
        let mut s = self.lock();
        if s.all {
            return false;
        }
        match tenant {
            None => s.all = true,
            Some(t) => {
                s.tenants.insert(t.clone());
            }
        }
        self.any.store(true, Ordering::Release);
        true
    }

    /// Ends the global pause (`None`) or `tenant`'s own pause. False when that pause was not
    /// in force; the other kind is left as it is.
    pub fn resume(&self, tenant: Option<&TenantId>) -> bool {
        let mut s = self.lock();
        let was = match tenant {
            None => std::mem::replace(&mut s.all, false),
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

    /// Whether `tenant` is paused on its own (PAUSE or KILL of it; SHOW DATABASES' `paused`),
    /// whatever the global pause.
    pub fn tenant_paused(&self, tenant: &TenantId) -> bool {
        self.any.load(Ordering::Acquire) && self.lock().tenants.contains(tenant)
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
        assert!(p.pause(Some(&id("acme"))), "pausing a paused tenant again is accepted");
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
        assert!(!p.pause(None) && !p.pause(Some(&id("x"))), "already paused");
        assert!(p.resume(None));
        assert!(!p.is_paused(&id("x")));
        assert!(!p.resume(None), "nothing paused");
    }

    #[test]
    fn global_and_tenant_pauses_are_resumed_separately() {
        let p = Pauses::default();
        assert!(p.pause(Some(&id("a"))));
        assert!(!p.resume(None), "a tenant's pause is not the global one");
        assert!(p.pause(None));
        assert!(!p.resume(Some(&id("b"))), "b is paused only by the global pause");
        assert!(p.is_paused(&id("b")));
        assert!(p.resume(Some(&id("a"))));
        assert!(p.is_paused(&id("a")), "the global pause still holds a");
        assert!(!p.pause(Some(&id("a"))), "no tenant pause during the global one");
        assert!(p.resume(None));
        assert!(!p.is_paused(&id("b")));
        assert!(!p.is_paused(&id("a")), "a's own pause was resumed before");
    }
}
