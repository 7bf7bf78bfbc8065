//! The listener: accept loop, the global client cap, and shutdown (stop accepting, let
//! transactions finish up to a timeout, then close everyone with 57P01).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::broadcast;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::throttle::Throttle;
use crate::auth::tls::Tls;
use crate::cancel::CancelRegistry;
use crate::catalog::{Catalog, Change, ControlCatalog, StaticCatalog, Tenant};
use crate::config::{secs, Config};
use crate::pool::PoolManager;
use crate::protocol::{PgError, SqlState};
use crate::tenant::TenantId;

/// Shutdown signals every session watches.
#[derive(Clone, Default)]
pub struct Shutdown {
    /// Stop taking work: idle clients are closed at once, busy ones when their transaction
    /// (transaction mode) or current query (session mode) ends.
    pub drain: CancellationToken,
    /// Close every client now.
    pub force: CancellationToken,
}

/// What every session shares.
pub struct Proxy {
    pub config: Arc<Config>,
    pub catalog: Arc<dyn Catalog>,
    pub pools: Arc<PoolManager>,
    pub cancel: Arc<CancelRegistry>,
    pub shutdown: Shutdown,
    clients: Arc<Semaphore>,
    tenants: DashMap<TenantId, Arc<TenantSessions>>,
    /// Derives the mock SCRAM verifiers of unknown tenants and users.
    auth_secret: [u8; 32],
    /// TLS for clients, when configured.
    pub tls: Option<Arc<Tls>>,
    pub throttle: Throttle,
}

/// The open sessions of one tenant: its client cap, and the signal that ends them when the
/// tenant stops being active.
pub struct TenantSessions {
    /// Clients logged in now. The cap is checked against the tenant's current
    /// `max_clients` at each login, so a changed limit applies at once and every session
    /// stays reachable through this one entry (its kick token) whatever the limit was.
    connected: AtomicUsize,
    kick: Mutex<(CancellationToken, Option<PgError>)>,
}

impl TenantSessions {
    /// The token a new session watches, and (once it fires) why.
    pub fn kick_token(&self) -> CancellationToken {
        self.kick.lock().unwrap_or_else(|e| e.into_inner()).0.clone()
    }

    /// Clients of the tenant logged in now.
    pub fn connected(&self) -> usize {
        self.connected.load(Ordering::Relaxed)
    }

    pub fn kick_reason(&self) -> Option<PgError> {
        self.kick.lock().unwrap_or_else(|e| e.into_inner()).1.clone()
    }

    /// Ends every open session (idle ones at once, busy ones at the end of their
    /// transaction) with `reason`; sessions that start later are not affected.
    fn kick(&self, reason: PgError) {
        let mut k = self.kick.lock().unwrap_or_else(|e| e.into_inner());
        k.1 = Some(reason);
        k.0.cancel();
        k.0 = CancellationToken::new();
    }
}

impl crate::lifecycle::LiveSessions for Proxy {
    fn clients(&self, tenant: &str) -> usize {
        self.tenant_clients(tenant)
    }
}

/// What a client holds while logged in as a tenant.
pub struct TenantAdmission {
    pub sessions: Arc<TenantSessions>,
    pub kick: CancellationToken,
}

impl Drop for TenantAdmission {
    fn drop(&mut self) {
        self.sessions.connected.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Proxy {
    /// A proxy over the static catalog of `config`. Must run inside a Tokio runtime (it
    /// starts the pool maintenance task).
    pub fn new(config: Config) -> Arc<Proxy> {
        let catalog = Arc::new(StaticCatalog::from_config(&config));
        Proxy::with_catalog(config, catalog)
    }

    pub fn with_catalog(config: Config, catalog: Arc<dyn Catalog>) -> Arc<Proxy> {
        let pools = PoolManager::new(&config.pool);
        pools.spawn_maintenance();
        let changes = catalog.changes();
        let config_tls = config.tls.clone();
        let config_throttle = config.proxy.max_auth_failures;
        let proxy = Arc::new(Proxy {
            clients: Arc::new(Semaphore::new(config.proxy.max_client_conn)),
            config: Arc::new(config),
            catalog,
            pools,
            cancel: CancelRegistry::new(),
            shutdown: Shutdown::default(),
            tenants: DashMap::new(),
            auth_secret: rand::random(),
            throttle: Throttle::new(config_throttle),
            tls: Tls::new(&config_tls).unwrap_or_else(|e| {
                // `run` loads TLS before it gets here, so a failure means the files changed
                // in between: refuse TLS rather than start without saying so.
                tracing::error!(error = %e, "TLS not available");
                None
            }),
        });
        if let Some(changes) = changes {
            tokio::spawn(watch_changes(Arc::downgrade(&proxy), changes));
        }
        proxy
    }

    /// A proxy over the catalog the config names: the control database when
    /// `[catalog] url` is set (connecting and migrating it), else the static tenants.
    pub async fn start(config: Config) -> anyhow::Result<Arc<Proxy>> {
        if config.catalog.url.is_empty() {
            return Ok(Proxy::new(config));
        }
        let catalog = ControlCatalog::start(&config.catalog, &config.pool).await?;
        Ok(Proxy::with_catalog(config, catalog))
    }

    /// Clients of `tenant` logged in to this proxy now.
    pub fn tenant_clients(&self, tenant: &str) -> usize {
        let Ok(id) = TenantId::parse(tenant) else { return 0 };
        self.tenants.get(&id).map_or(0, |s| s.connected())
    }

    pub fn auth_secret(&self) -> &[u8] {
        &self.auth_secret
    }

    /// Admits a client of `tenant` under the tenant's client cap.
    pub fn admit(&self, tenant: &Tenant) -> Result<TenantAdmission, PgError> {
        // Cloned out first: the map's read guard must not be held across `entry` (it would
        // deadlock the shard).
        let existing = self.tenants.get(&tenant.id).map(|s| s.value().clone());
        let sessions = match existing {
            Some(s) => s,
            None => self
                .tenants
                .entry(tenant.id.clone())
                .or_insert_with(|| {
                    Arc::new(TenantSessions {
                        connected: AtomicUsize::new(0),
                        kick: Mutex::new((CancellationToken::new(), None)),
                    })
                })
                .value()
                .clone(),
        };
        let max = tenant.max_clients.unwrap_or(usize::MAX);
        sessions
            .connected
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1))
            .map_err(|_| {
                PgError::fatal(
                    SqlState::TooManyConnections,
                    format!("too many connections for tenant \"{}\"", tenant.id),
                )
                .with_hint("the tenant's max_clients is reached")
            })?;
        Ok(TenantAdmission { kick: sessions.kick_token(), sessions })
    }

    /// Re-reads a tenant the catalog says changed; if it can no longer connect, its open
    /// sessions are ended.
    async fn recheck(&self, id: &TenantId) {
        let Some(sessions) = self.tenants.get(id).map(|s| s.value().clone()) else { return };
        let reason = match self.catalog.lookup(id).await {
            Ok(Some(t)) => t.refusal(),
            Ok(None) => {
                Some(PgError::fatal(SqlState::InvalidCatalogName, format!("tenant \"{id}\" does not exist")))
            }
            Err(_) => None,
        };
        if let Some(reason) = reason {
            tracing::info!(tenant = %id, reason = %reason, "closing the tenant's sessions");
            let message = format!("terminating connection: {}", reason.message);
            sessions.kick(PgError::fatal(SqlState::AdminShutdown, message));
            self.pools.close_idle_of(id);
        }
    }

    /// Client connections open right now.
    pub fn client_count(&self) -> usize {
        self.config.proxy.max_client_conn - self.clients.available_permits()
    }

    /// Accepts clients until shutdown starts, then drains. Returns once every session ended.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) -> std::io::Result<()> {
        let tracker = TaskTracker::new();
        let drain = self.shutdown.drain.clone();
        loop {
            let (stream, peer) = tokio::select! {
                _ = drain.cancelled() => break,
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let permit = self.clients.clone().try_acquire_owned().ok();
            let proxy = self.clone();
            tracker.spawn(async move {
                crate::client::serve(stream, peer, proxy, permit).await;
            });
        }
        drop(listener);
        tracker.close();
        let grace = secs(self.config.proxy.shutdown_timeout);
        tracing::info!(clients = self.client_count(), ?grace, "shutting down: draining clients");
        if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
            tracing::warn!(clients = self.client_count(), "shutdown timeout: closing remaining clients");
            self.shutdown.force.cancel();
            tracker.wait().await;
        }
        self.pools.close_idle();
        tracing::info!("shutdown complete");
        Ok(())
    }
}

/// Follows catalog changes for as long as the proxy lives.
async fn watch_changes(proxy: Weak<Proxy>, mut changes: broadcast::Receiver<Change>) {
    loop {
        let change = match changes.recv().await {
            Ok(c) => c,
            Err(broadcast::error::RecvError::Lagged(_)) => Change::All,
            Err(broadcast::error::RecvError::Closed) => return,
        };
        let Some(proxy) = proxy.upgrade() else { return };
        match change {
            Change::Tenant(id) => proxy.recheck(&id).await,
            Change::All => {
                let ids: Vec<TenantId> = proxy.tenants.iter().map(|e| e.key().clone()).collect();
                for id in ids {
                    proxy.recheck(&id).await;
                }
            }
        }
    }
}

/// Binds the configured address and serves until SIGTERM or SIGINT.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let listener = TcpListener::bind(config.proxy.listen).await?;
    let addr: SocketAddr = listener.local_addr()?;
    // Certificate problems stop the start here, with the reason.
    Tls::new(&config.tls)?;
    if config.proxy.auth == crate::config::AuthMethod::Trust {
        tracing::warn!("client authentication is TRUST: anyone who can reach {} and name a tenant gets in; set [proxy] auth = \"scram-sha-256\"", config.proxy.listen);
    }
    // Bound before the proxy starts, so that a taken admin port stops the start too.
    let admin_listener = match config.admin.listen.as_str() {
        "" => None,
        listen => Some(
            TcpListener::bind(listen)
                .await
                .map_err(|e| anyhow::anyhow!("[admin] listen = {listen:?}: {e}"))?,
        ),
    };
    let proxy = Proxy::start(config).await?;
    tracing::info!(%addr, "pgtenant listening");
    // The admin API answers through the drain (readyz says 503 then) and stops once the
    // proxy has drained; it then lets the requests in flight finish.
    let admin_stop = CancellationToken::new();
    let admin = match admin_listener {
        Some(listener) => {
            let state = crate::admin::http::AdminState::new(proxy.clone(), &proxy.config)?;
            tracing::info!(addr = %listener.local_addr()?, "admin API listening");
            Some(tokio::spawn(crate::admin::http::serve(listener, state, admin_stop.clone())))
        }
        None => None,
    };
    let drain = proxy.shutdown.drain.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("signal received");
        drain.cancel();
    });
    if let Some(tls) = proxy.tls.clone() {
        // SIGHUP re-reads the certificates; open connections keep theirs.
        tokio::spawn(async move {
            let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
                return;
            };
            while hup.recv().await.is_some() {
                match tls.reload() {
                    Ok(()) => tracing::info!("TLS certificates reloaded"),
                    Err(e) => {
                        tracing::error!(error = %e, "TLS reload failed; keeping the previous certificates")
                    }
                }
            }
        });
    }
    let served = proxy.clone().serve(listener).await;
    admin_stop.cancel();
    if let Some(admin) = admin {
        // A lifecycle operation in flight gets the shutdown timeout to finish.
        match tokio::time::timeout(secs(proxy.config.proxy.shutdown_timeout), admin).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::error!(error = %e, "admin API failed"),
            Ok(Err(e)) => tracing::error!(error = %e, "admin API task failed"),
            Err(_) => tracing::warn!("admin API: requests still running at the shutdown timeout"),
        }
    }
    served?;
    Ok(())
}

/// Resolves on SIGTERM or SIGINT.
pub async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
