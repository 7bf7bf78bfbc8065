//! pgtenant's own BackendKeyData and the map from it to the upstream backend a client is
//! using right now. A CancelRequest names pgtenant's key; pgtenant forwards a cancel to that
//! upstream backend, or does nothing when the client holds no server connection.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use dashmap::DashMap;

use crate::model::UpstreamAddr;
use crate::pool::cancel_backend;

/// The upstream backend a client is attached to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CancelTarget {
    pub addr: UpstreamAddr,
    pub pid: i32,
    pub secret: i32,
}

struct Slot {
    secret: i32,
    target: Mutex<Option<CancelTarget>>,
    /// Cancels being forwarded right now for this client.
    in_flight: AtomicUsize,
}

/// All live client keys.
#[derive(Default)]
pub struct CancelRegistry {
    slots: DashMap<i32, Arc<Slot>>,
}

/// A client's registered key; removed from the registry when dropped.
pub struct ClientKey {
    registry: Arc<CancelRegistry>,
    slot: Arc<Slot>,
    pub pid: i32,
}

impl ClientKey {
    pub fn secret(&self) -> i32 {
        self.slot.secret
    }

    /// Records (or clears) the upstream backend this client is using.
    pub fn set_target(&self, target: Option<CancelTarget>) {
        *self.slot.target.lock().unwrap_or_else(|e| e.into_inner()) = target;
    }

    /// Whether a cancel for this client is being forwarded: its server connection must not
    /// be reused meanwhile, or the cancel could hit the next client's query.
    pub fn cancel_in_flight(&self) -> bool {
        self.slot.in_flight.load(Ordering::Acquire) > 0
    }

    pub fn target(&self) -> Option<CancelTarget> {
        self.slot.target.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for ClientKey {
    fn drop(&mut self) {
        self.registry.slots.remove(&self.pid);
    }
}

impl CancelRegistry {
    pub fn new() -> Arc<CancelRegistry> {
        Arc::new(CancelRegistry::default())
    }

    /// Issues a fresh random key. Process ids are positive, as a real backend's are, so
    /// clients that sanity-check them are content.
    pub fn register(self: &Arc<Self>) -> ClientKey {
        loop {
            let pid = rand::random::<i32>() & 0x7fff_ffff;
            if pid == 0 {
                continue;
            }
            let slot = Arc::new(Slot {
                secret: rand::random(),
                target: Mutex::new(None),
                in_flight: AtomicUsize::new(0),
            });
            if let dashmap::Entry::Vacant(v) = self.slots.entry(pid) {
                v.insert(slot.clone());
                return ClientKey { registry: self.clone(), slot, pid };
            }
        }
    }

    /// The upstream to cancel for a CancelRequest, if the key matches a client that is
    /// attached to a server connection. A wrong secret is ignored, as Postgres does.
    pub fn lookup(&self, pid: i32, secret: &[u8]) -> Option<CancelTarget> {
        let slot = self.slot(pid, secret)?;
        let target = slot.target.lock().unwrap_or_else(|e| e.into_inner()).clone();
        target
    }

    fn slot(&self, pid: i32, secret: &[u8]) -> Option<Arc<Slot>> {
        let slot = self.slots.get(&pid)?.value().clone();
        if secret != slot.secret.to_be_bytes() {
            tracing::debug!(pid, "cancel request with a wrong secret ignored");
            return None;
        }
        Some(slot)
    }

    /// Handles a CancelRequest packet.
    pub async fn cancel(&self, pid: i32, secret: &[u8]) {
        let Some(slot) = self.slot(pid, secret) else { return };
        // Counted before the target is read, so a release racing with this sees it.
        slot.in_flight.fetch_add(1, Ordering::AcqRel);
        let target = slot.target.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(t) = target {
            if let Err(e) = cancel_backend(&t.addr, t.pid, t.secret).await {
                tracing::warn!(upstream = %t.addr, error = %e, "forwarding a cancel request failed");
            }
        }
        slot.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_map_to_targets_and_vanish_on_drop() {
        let reg = CancelRegistry::new();
        let key = reg.register();
        assert!(key.pid > 0);
        let secret = key.secret().to_be_bytes();
        assert_eq!(reg.lookup(key.pid, &secret), None, "no server attached: no-op");
        let t = CancelTarget { addr: UpstreamAddr::new("127.0.0.1", 5432), pid: 42, secret: 7 };
        key.set_target(Some(t.clone()));
        assert_eq!(reg.lookup(key.pid, &secret), Some(t));
        let wrong = key.secret().wrapping_add(1).to_be_bytes();
        assert_eq!(reg.lookup(key.pid, &wrong), None, "wrong secret ignored");
        let pid = key.pid;
        drop(key);
        assert_eq!(reg.lookup(pid, &secret), None);
    }
}
