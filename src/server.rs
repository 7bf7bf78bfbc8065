//! The listener: accept loop, the caps (clients logging in, clients logged in), and
//! shutdown (stop accepting, let transactions finish up to a timeout, then close everyone
//! with 57P01, bounded even for clients that stopped reading).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::broadcast;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::throttle::Throttle;
use crate::auth::tls::Tls;
use crate::cancel::CancelRegistry;
use crate::catalog::limit::LookupLimiter;
use crate::catalog::{Catalog, Change, ControlCatalog, StaticCatalog, Tenant};
use crate::config::{secs, Config};
use crate::listener::{accept_backoff, Every};
use crate::model::TenantId;
use crate::pool::PoolManager;
use crate::protocol::{PgError, SqlState};

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
    /// Places of logged-in clients (`max_client_conn`).
    clients: Arc<Semaphore>,
    /// Places of connections still logging in (`max_prelogin_connections`).
    prelogin: Arc<Semaphore>,
    /// Control-database lookups per client address (`lookup_rate_per_address`).
    pub lookups: LookupLimiter,
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
            prelogin: Arc::new(Semaphore::new(config.proxy.max_prelogin_connections)),
            lookups: LookupLimiter::new(config.catalog.lookup_rate_per_address),
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

    /// Logged-in client connections right now.
    pub fn client_count(&self) -> usize {
        self.config.proxy.max_client_conn - self.clients.available_permits()
    }

    /// Connections accepted and not logged in yet, right now.
    pub fn prelogin_count(&self) -> usize {
        self.config.proxy.max_prelogin_connections - self.prelogin.available_permits()
    }

    /// Whether `max_client_conn` is reached (checked before authentication, so that a full
    /// proxy spends no SCRAM work on clients it would refuse anyway).
    pub fn clients_full(&self) -> bool {
        self.clients.available_permits() == 0
    }

    /// A logged-in client's place under `max_client_conn`, taken once it has authenticated.
    pub fn client_permit(&self) -> Result<OwnedSemaphorePermit, PgError> {
        self.clients.clone().try_acquire_owned().map_err(|_| too_many_clients())
    }

    /// Accepts clients until shutdown starts, then drains. Returns once every session ended,
    /// or, for sessions that do not end when told (a client that stopped reading), at most
    /// [`FORCE_CLOSE_TIMEOUT`] after the shutdown timeout.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) -> std::io::Result<()> {
        let tracker = TaskTracker::new();
        let drain = self.shutdown.drain.clone();
        // Accept errors (EMFILE when descriptors run out) and pre-login refusals come in
        // bursts of thousands: logged once per interval, with a count.
        let mut accept_errors = Every::new(Duration::from_secs(10));
        let mut refusals = Every::new(Duration::from_secs(10));
        let mut backoff = Duration::ZERO;
        loop {
            let (stream, peer) = tokio::select! {
                _ = drain.cancelled() => break,
                r = listener.accept() => match r {
                    Ok(x) => {
                        backoff = Duration::ZERO;
                        x
                    }
                    Err(e) => {
                        backoff = accept_backoff(backoff);
                        if let Some(suppressed) = accept_errors.tick() {
                            tracing::warn!(error = %e, suppressed, retry_in = ?backoff, "accept failed");
                        }
                        tokio::select! {
                            _ = drain.cancelled() => break,
                            _ = tokio::time::sleep(backoff) => continue,
                        }
                    }
                },
            };
            let Ok(prelogin) = self.prelogin.clone().try_acquire_owned() else {
                refuse_prelogin(&stream);
                if let Some(suppressed) = refusals.tick() {
                    tracing::warn!(
                        %peer,
                        suppressed,
                        max_prelogin_connections = self.config.proxy.max_prelogin_connections,
                        "too many connections logging in: new ones are closed at once"
                    );
                }
                continue;
            };
            let _ = stream.set_nodelay(true);
            let proxy = self.clone();
            tracker.spawn(async move {
                crate::client::serve(stream, peer, proxy, prelogin).await;
            });
        }
        drop(listener);
        tracker.close();
        let grace = secs(self.config.proxy.shutdown_timeout);
        tracing::info!(clients = self.client_count(), ?grace, "shutting down: draining clients");
        if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
            tracing::warn!(clients = self.client_count(), "shutdown timeout: closing remaining clients");
            self.shutdown.force.cancel();
            // Each session ends itself within FORCE_CLOSE_TIMEOUT of the force signal
            // (`client::serve`); the extra second is for the tasks to be scheduled.
            let bound = FORCE_CLOSE_TIMEOUT + Duration::from_secs(1);
            if tokio::time::timeout(bound, tracker.wait()).await.is_err() {
                tracing::warn!(
                    sessions = tracker.len(),
                    "sessions still open after the forced close: leaving them to the runtime's end"
                );
            }
        }
        self.pools.close_idle();
        tracing::info!("shutdown complete");
        Ok(())
    }
}

/// How long a session has, once shutdown forces clients off, to get its 57P01 out and
/// close; a client that stopped reading is then cut off without it.
pub const FORCE_CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

pub(crate) fn too_many_clients() -> PgError {
    PgError::fatal(SqlState::TooManyConnections, "sorry, too many clients already")
        .with_hint("pgtenant's max_client_conn is reached")
}

/// A connection past `max_prelogin_connections`: one try at a short 53300 (no waiting: a
/// socket that cannot take it at once is not worth waiting for), then it is closed by the
/// caller dropping it. Nothing is read from it.
fn refuse_prelogin(stream: &TcpStream) {
    let e = PgError::fatal(SqlState::TooManyConnections, "sorry, too many clients already")
        .with_hint("too many connections are logging in to pgtenant at once (max_prelogin_connections)");
    let _ = stream.try_write(&e.to_bytes());
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
    // SIGHUP never ends the process (its default action would): installed before anything
    // can take time, and served below once the proxy exists.
    let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| anyhow::anyhow!("cannot install the SIGHUP handler: {e}"))?;
    crate::listener::apply_fd_limit(&config);
    let listener = crate::listener::bind(config.proxy.listen, config.proxy.listen_backlog)
        .map_err(|e| anyhow::anyhow!("[proxy] listen = {}: {e}", config.proxy.listen))?;
    let addr: SocketAddr = listener.local_addr()?;
    // Certificate problems stop the start here, with the reason.
    Tls::new(&config.tls)?;
    if config.proxy.auth == crate::model::AuthMethod::Trust {
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
    tokio::spawn(reload_on_hangup(hup, proxy.tls.clone()));
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

/// SIGHUP reloads what can be reloaded while running: today the TLS certificates (open
/// connections keep theirs). It never ends the process.
async fn reload_on_hangup(mut hup: tokio::signal::unix::Signal, tls: Option<Arc<Tls>>) {
    while hup.recv().await.is_some() {
        match &tls {
            Some(tls) => match tls.reload() {
                Ok(()) => tracing::info!("SIGHUP: TLS certificates reloaded"),
                Err(e) => {
                    tracing::error!(error = %e, "SIGHUP: TLS reload failed; keeping the previous certificates")
                }
            },
            None => tracing::info!(
                "SIGHUP: nothing to reload (TLS is not configured; other settings need a restart)"
            ),
        }
    }
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
