//! pgtenant's own BackendKeyData and the map from it to the upstream backend a client is
//! using right now. A CancelRequest names pgtenant's key; pgtenant forwards a cancel to that
//! upstream backend, or does nothing when the client holds no server connection.
//!
//! With several instances on one control database (`crate::instances`), a key's process
//! id carries the issuing instance's slot in bits 21..31, so a CancelRequest that the load
//! balancer sends to another instance is forwarded there, as the same CancelRequest. The
//! rest of the key stays random: 21 bits of the process id and a 4-byte secret (protocol
//! 3.0) or a 32-byte one (3.2, PostgreSQL 18's longer keys), compared in constant time.
//!
//! After a handover (`crate::handover`) the old instance drains while the new one accepts
//! on the same socket: cancels for the old instance's clients arrive at the new one, which
//! passes them down the handover link (never back to the shared address, which would loop).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use dashmap::DashMap;

use tokio::io::AsyncWriteExt;

use crate::instances::{forward_cancel, Instances};
use crate::model::UpstreamAddr;
use crate::pool::cancel_backend;
use crate::protocol::startup::CANCEL_REQUEST_CODE;
use crate::sql::same_bytes;

/// Bits of a process id below the instance slot.
const SLOT_SHIFT: u32 = 21;
const LOW_MASK: i32 = (1 << SLOT_SHIFT) - 1;
/// Secret lengths: protocol 3.0 has 4 bytes; 3.2 allows up to 256 and PostgreSQL 18 sends
/// 32, as pgtenant does.
pub const SHORT_SECRET: usize = 4;
pub const LONG_SECRET: usize = 32;

/// The instance slot a process id carries (0: issued without a registry).
pub fn slot_of(pid: i32) -> u16 {
    // Bits 21..30 (bit 31 is the sign, always clear): at most 1023, so the cast is exact.
    ((pid >> SLOT_SHIFT) & 0x3ff) as u16
}

/// The upstream backend a client is attached to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CancelTarget {
    pub addr: UpstreamAddr,
    pub pid: i32,
    pub secret: i32,
}

struct Slot {
    /// The first `secret_len` bytes are the key's secret.
    secret: [u8; LONG_SECRET],
    secret_len: usize,
    /// The upstream of the backend the client last attached to (written by its session when
    /// it changes: a session stays on one pool, so once as a rule).
    addr: Mutex<Option<UpstreamAddr>>,
    /// The attached backend's process id (high half) and secret (low half), valid while
    /// `attached`: an attach and a release per transaction are two stores, no lock.
    backend: AtomicU64,
    attached: AtomicBool,
    /// Cancels being forwarded right now for this client.
    in_flight: AtomicUsize,
}

impl Slot {
    /// The backend the client is attached to now. Read after `in_flight` was raised (see
    /// [`CancelRegistry::cancel_here`]), with sequentially consistent loads: a release that
    /// clears `attached` and then finds no cancel in flight is never missed by both sides.
    fn target(&self) -> Option<CancelTarget> {
        if !self.attached.load(Ordering::SeqCst) {
            return None;
        }
        let backend = self.backend.load(Ordering::SeqCst);
        let addr = self.addr.lock().unwrap_or_else(|e| e.into_inner()).clone()?;
        // The two halves of `backend`, as `ClientKey::attach` packed them.
        let (pid, secret) = ((backend >> 32) as u32 as i32, backend as u32 as i32);
        Some(CancelTarget { addr, pid, secret })
    }
}

/// All live client keys.
#[derive(Default)]
pub struct CancelRegistry {
    slots: DashMap<i32, Arc<Slot>>,
    /// The instance registry, when there is a control database: the slot new keys carry,
    /// and where to forward cancels for other instances' keys.
    instances: Option<Arc<Instances>>,
    /// The link to the instance this one took the listening socket over from, while it
    /// drains: where cancels for its clients go.
    predecessor: tokio::sync::Mutex<Option<tokio::net::UnixStream>>,
}

/// A client's registered key; removed from the registry when dropped.
pub struct ClientKey {
    registry: Arc<CancelRegistry>,
    slot: Arc<Slot>,
    pub pid: i32,
    /// The upstream last written to the slot (so an attach to the same one writes none).
    addr: Option<UpstreamAddr>,
}

impl ClientKey {
    /// The secret as the client is told it in BackendKeyData (4 or 32 bytes).
    pub fn secret(&self) -> &[u8] {
        &self.slot.secret[..self.slot.secret_len]
    }

    /// Records the upstream backend this client is using now (`addr`, its process id and
    /// secret): without a lock unless the upstream changed.
    pub fn attach(&mut self, addr: &UpstreamAddr, pid: i32, secret: i32) {
        if !self.addr.as_ref().is_some_and(|a| a.is(addr)) {
            *self.slot.addr.lock().unwrap_or_else(|e| e.into_inner()) = Some(addr.clone());
            self.addr = Some(addr.clone());
        }
        // Packed as `Slot::target` unpacks them.
        let backend = (u64::from(pid as u32) << 32) | u64::from(secret as u32);
        self.slot.backend.store(backend, Ordering::SeqCst);
        self.slot.attached.store(true, Ordering::SeqCst);
    }

    /// The client holds no server connection any more: a cancel for it does nothing. Check
    /// [`ClientKey::cancel_in_flight`] after this, before the connection is reused.
    pub fn detach(&self) {
        self.slot.attached.store(false, Ordering::SeqCst);
    }

    /// Whether a cancel for this client is being forwarded: its server connection must not
    /// be reused meanwhile, or the cancel could hit the next client's query.
    pub fn cancel_in_flight(&self) -> bool {
        self.slot.in_flight.load(Ordering::SeqCst) > 0
    }

    pub fn target(&self) -> Option<CancelTarget> {
        self.slot.target()
    }
}

impl Drop for ClientKey {
    fn drop(&mut self) {
        self.registry.slots.remove(&self.pid);
    }
}

impl CancelRegistry {
    /// Keys of a lone instance: the whole process id is random.
    pub fn new() -> Arc<CancelRegistry> {
        Arc::new(CancelRegistry::default())
    }

    /// Keys that carry the slot of this instance in `instances`.
    pub fn for_instances(instances: Option<Arc<Instances>>) -> Arc<CancelRegistry> {
        Arc::new(CancelRegistry { slots: DashMap::new(), instances, predecessor: Default::default() })
    }

    /// Cancels for keys this instance did not issue may belong to the draining instance at
    /// the other end of `link` ([`crate::handover`]).
    pub async fn set_predecessor(&self, link: tokio::net::UnixStream) {
        *self.predecessor.lock().await = Some(link);
    }

    /// Issues a fresh random key, with a 32-byte secret if `long` (protocol 3.2). Process
    /// ids are positive, as a real backend's are, so clients that sanity-check them are
    /// content.
    pub fn register(self: &Arc<Self>, long: bool) -> ClientKey {
        let slot_bits = self.instances.as_ref().map(|i| i32::from(i.slot()) << SLOT_SHIFT);
        loop {
            let random = rand::random::<i32>() & 0x7fff_ffff;
            let pid = match slot_bits {
                Some(bits) => bits | (random & LOW_MASK),
                None => random,
            };
            if pid == 0 {
                continue;
            }
            let slot = Arc::new(Slot {
                secret: rand::random(),
                secret_len: if long { LONG_SECRET } else { SHORT_SECRET },
                addr: Mutex::new(None),
                backend: AtomicU64::new(0),
                attached: AtomicBool::new(false),
                in_flight: AtomicUsize::new(0),
            });
            if let dashmap::Entry::Vacant(v) = self.slots.entry(pid) {
                v.insert(slot.clone());
                return ClientKey { registry: self.clone(), slot, pid, addr: None };
            }
        }
    }

    /// The upstream to cancel for a CancelRequest, if the key matches a client that is
    /// attached to a server connection. A wrong secret is ignored, as Postgres does.
    pub fn lookup(&self, pid: i32, secret: &[u8]) -> Option<CancelTarget> {
        self.slot(pid, secret)?.target()
    }

    fn slot(&self, pid: i32, secret: &[u8]) -> Option<Arc<Slot>> {
        let slot = self.slots.get(&pid)?.value().clone();
        // The length is not secret; the bytes are compared in constant time.
        if !same_bytes(secret, &slot.secret[..slot.secret_len]) {
            tracing::debug!(pid, "cancel request with a wrong secret ignored");
            return None;
        }
        Some(slot)
    }

    /// Handles a CancelRequest packet: a key of this instance cancels its client's query;
    /// a key carrying another live instance's slot is forwarded there, or down the handover
    /// link when that instance shares this one's address (it is draining after a handover);
    /// anything else is dropped.
    pub async fn cancel(&self, pid: i32, secret: &[u8]) {
        if self.slots.contains_key(&pid) {
            return self.cancel_here(pid, secret).await;
        }
        let Some(instances) = &self.instances else {
            return self.to_predecessor(pid, secret).await;
        };
        let owner_slot = slot_of(pid);
        // A key of this instance that is gone (the client left) is not forwarded: nobody
        // else can hold it, and forwarding could loop.
        if owner_slot == instances.slot() {
            return;
        }
        let owner = match owner_slot {
            0 => None,
            slot => instances.owner(slot).await,
        };
        match owner {
            // Sent to this address it would come back here (the socket is shared).
            Some(addr) if addr != instances.advertised_addr() => forward_cancel_to(&addr, pid, secret).await,
            // Sharing this address (or expired from the registry while it drains): only the
            // handover link reaches it.
            _ => self.to_predecessor(pid, secret).await,
        }
    }

    /// A CancelRequest that the instance which took over from this one passed down the
    /// handover link: for a client here, or for an older instance still draining behind
    /// this one's own link. Never forwarded over TCP, so it cannot loop.
    pub async fn cancel_from_successor(&self, pid: i32, secret: &[u8]) {
        if self.slots.contains_key(&pid) {
            return self.cancel_here(pid, secret).await;
        }
        self.to_predecessor(pid, secret).await;
    }

    async fn to_predecessor(&self, pid: i32, secret: &[u8]) {
        let mut link = self.predecessor.lock().await;
        let Some(stream) = link.as_mut() else {
            tracing::debug!(pid, "cancel request for an unknown key dropped");
            return;
        };
        let sent = tokio::time::timeout(FORWARD_TIMEOUT, stream.write_all(&cancel_packet(pid, secret))).await;
        match sent {
            Ok(Ok(())) => tracing::debug!(pid, "cancel request passed to the draining instance"),
            // It has exited (its clients are gone) or stopped reading.
            _ => {
                tracing::debug!(pid, "the draining instance's link is gone: cancel request dropped");
                *link = None;
            }
        }
    }

    async fn cancel_here(&self, pid: i32, secret: &[u8]) {
        let Some(slot) = self.slot(pid, secret) else { return };
        // Counted before the target is read, so a release racing with this sees it.
        let _counted = InFlight::count(&slot);
        if let Some(t) = slot.target() {
            if let Err(e) = cancel_backend(&t.addr, t.pid, t.secret).await {
                tracing::warn!(upstream = %t.addr, error = %e, "forwarding a cancel request failed");
            }
        }
    }
}

/// A cancel counted in its client's `in_flight` for as long as it lives, however it ends:
/// forwarded, failed, or dropped mid-way (the CancelRequest's connection has the startup
/// deadline, and a silent upstream holds the forwarding past it). Left counted, it would
/// close the client's server connection at every release from then on.
struct InFlight<'a>(&'a Slot);

impl InFlight<'_> {
    fn count(slot: &Slot) -> InFlight<'_> {
        slot.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(slot)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// How long passing a cancel to the draining predecessor may take.
const FORWARD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// A whole CancelRequest: length (16..=268: the parser caps the secret at 256 bytes), code,
/// pid, secret.
fn cancel_packet(pid: i32, secret: &[u8]) -> Vec<u8> {
    let mut packet = Vec::with_capacity(12 + secret.len());
    let len = i32::try_from(12 + secret.len()).unwrap_or(i32::MAX);
    packet.extend_from_slice(&len.to_be_bytes());
    packet.extend_from_slice(&CANCEL_REQUEST_CODE.to_be_bytes());
    packet.extend_from_slice(&pid.to_be_bytes());
    packet.extend_from_slice(secret);
    packet
}

async fn forward_cancel_to(addr: &str, pid: i32, secret: &[u8]) {
    match forward_cancel(addr, &cancel_packet(pid, secret)).await {
        Ok(()) => tracing::debug!(pid, peer = %addr, "cancel request forwarded to its instance"),
        Err(e) => {
            tracing::warn!(peer = %addr, error = %e, "forwarding a cancel request to its instance failed")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_map_to_targets_and_vanish_on_drop() {
        let reg = CancelRegistry::new();
        let mut key = reg.register(false);
        assert!(key.pid > 0);
        let secret = key.secret().to_vec();
        assert_eq!(secret.len(), SHORT_SECRET);
        assert_eq!(reg.lookup(key.pid, &secret), None, "no server attached: no-op");
        let t = CancelTarget { addr: UpstreamAddr::new("127.0.0.1", 5432), pid: 42, secret: 7 };
        key.attach(&t.addr, t.pid, t.secret);
        assert_eq!(reg.lookup(key.pid, &secret), Some(t.clone()));
        // Negative halves come back as they went in; a detached key names no backend.
        let other = CancelTarget { addr: UpstreamAddr::new("/tmp", 5433), pid: -5, secret: i32::MIN };
        key.attach(&other.addr, other.pid, other.secret);
        assert_eq!(reg.lookup(key.pid, &secret), Some(other));
        key.detach();
        assert_eq!(reg.lookup(key.pid, &secret), None, "detached: no-op");
        key.attach(&t.addr, t.pid, t.secret);
        assert_eq!(reg.lookup(key.pid, &secret), Some(t));
        let mut wrong = secret.clone();
        wrong[3] = wrong[3].wrapping_add(1);
        assert_eq!(reg.lookup(key.pid, &wrong), None, "wrong secret ignored");
        let pid = key.pid;
        drop(key);
        assert_eq!(reg.lookup(pid, &secret), None);
    }

    #[test]
    fn long_keys_need_the_whole_secret() {
        let reg = CancelRegistry::new();
        let mut key = reg.register(true);
        let t = CancelTarget { addr: UpstreamAddr::new("127.0.0.1", 5432), pid: 42, secret: 7 };
        key.attach(&t.addr, t.pid, t.secret);
        assert_eq!(key.secret().len(), LONG_SECRET);
        assert_eq!(reg.lookup(key.pid, key.secret()), Some(t));
        assert_eq!(
            reg.lookup(key.pid, &key.secret()[..SHORT_SECRET]),
            None,
            "a 3.0-length prefix is not enough"
        );
    }

    /// A cancel whose forwarding is cut short (the CancelRequest connection's startup
    /// deadline drops it while the upstream does not answer) is no longer counted in flight:
    /// otherwise every release of the client's server connection from then on would close
    /// it, as if a cancel could still reach it.
    #[tokio::test]
    async fn a_cancel_dropped_while_it_is_forwarded_is_no_longer_in_flight() {
        // An upstream that accepts and never answers or closes.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let silent = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        });
        let reg = CancelRegistry::new();
        let mut key = reg.register(false);
        key.attach(&UpstreamAddr::new("127.0.0.1", port), 42, 7);
        let secret = key.secret().to_vec();
        let cut =
            tokio::time::timeout(std::time::Duration::from_millis(100), reg.cancel(key.pid, &secret)).await;
        assert!(cut.is_err(), "the silent upstream answered");
        assert!(!key.cancel_in_flight(), "a cancel dropped while forwarded still counts as in flight");
        silent.abort();
    }

    #[test]
    fn slots_sit_in_bits_21_to_30() {
        assert_eq!(slot_of(0x7fff_ffff), 1023);
        assert_eq!(slot_of(1 << 21), 1);
        assert_eq!(slot_of((5 << 21) | LOW_MASK), 5);
        assert_eq!(slot_of(LOW_MASK), 0);
    }
}
