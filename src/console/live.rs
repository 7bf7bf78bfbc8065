//! The clients logged in now, as SHOW CLIENTS lists them and KILL_CLIENT finds them:
//! written at login and logout only, never per message.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use dashmap::DashMap;
use tokio_util::sync::CancellationToken;

/// One logged-in client.
#[derive(Clone, Debug)]
pub struct ClientInfo {
    pub id: u64,
    pub tenant: String,
    pub user: String,
    pub addr: SocketAddr,
    pub connected_at: SystemTime,
    pub tls: bool,
    pub application_name: String,
    /// Ends this client's session (idle at once, busy at the end of its transaction).
    pub kick: CancellationToken,
    /// When the client started waiting for a server connection ([`now_us`]), 0 when it is
    /// not waiting: written by its meter at each checkout, read by SHOW POOLS and CLIENTS.
    pub wait: Arc<AtomicU64>,
}

impl ClientInfo {
    /// How long the client has been waiting for a server connection (None: not waiting).
    pub fn waiting_for(&self, now: u64) -> Option<Duration> {
        match self.wait.load(Ordering::Relaxed) {
            0 => None,
            since => Some(Duration::from_micros(now.saturating_sub(since))),
        }
    }
}

/// Microseconds since the first call in this process, never 0 (0 means "not waiting").
pub fn now_us() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_micros()).unwrap_or(u64::MAX).max(1)
}

#[derive(Default)]
pub struct LiveClients {
    next: AtomicU64,
    clients: DashMap<u64, ClientInfo>,
}

impl LiveClients {
    /// Registers a client; it stays listed until the returned guard drops.
    pub fn register(self: &Arc<Self>, mut info: ClientInfo) -> LiveGuard {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        info.id = id;
        self.clients.insert(id, info);
        LiveGuard { id, registry: self.clone() }
    }

    pub fn list(&self) -> Vec<ClientInfo> {
        let mut v: Vec<ClientInfo> = self.clients.iter().map(|c| c.value().clone()).collect();
        v.sort_by_key(|c| c.id);
        v
    }

    /// Ends one client's session; false when no client has that id.
    pub fn kill(&self, id: u64) -> bool {
        self.clients.get(&id).map(|c| c.kick.cancel()).is_some()
    }

    pub fn len(&self) -> usize {
        self.clients.len()
    }

    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }
}

/// Removes its client from the registry when the session ends.
pub struct LiveGuard {
    id: u64,
    registry: Arc<LiveClients>,
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.registry.clients.remove(&self.id);
    }
}
