//! The state every client session shares: configuration, catalog, pools, cancel keys, the
//! caps on clients (logging in, logged in, per tenant), the shutdown signals, and the
//! catalog watch that ends a tenant's sessions when it stops being active.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use dashmap::DashMap;
use tokio::sync::broadcast;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::auth::throttle::Throttle;
use crate::auth::tls::Tls;
use crate::cancel::CancelRegistry;
use crate::catalog::limit::LookupLimiter;
use crate::catalog::{Catalog, Change, ControlCatalog, StaticCatalog, Tenant};
use crate::config::Config;
use crate::console::live::{self, ClientInfo, LiveClients, LiveGuard};
use crate::instances::Instances;
use crate::metrics::Metrics;
use crate::model::TenantId;
use crate::pool::PoolManager;
use crate::protocol::PgError;

/// Shutdown signals every session watches.
#[derive(Clone, Default)]
pub struct Shutdown {
    /// Stop taking work: idle clients are closed at once, busy ones when their transaction
    /// (transaction mode) or current query (session mode) ends.
    pub drain: CancellationToken,
    /// Stop accepting only, and wait for the clients to leave by themselves (PgBouncer's
    /// `SHUTDOWN WAIT_FOR_CLIENTS`; after a handover, `crate::handover`), at most
    /// `shutdown_timeout`. Sessions are told nothing; `drain` still applies if it fires.
    pub stop_accepting: CancellationToken,
    /// Close every client now.
    pub force: CancellationToken,
    /// Every session has ended (fired by [`Proxy::serve`]): the instance leaves the registry
    /// only then, so its shares of the service-wide caps stay counted while it drains.
    pub drained: CancellationToken,
}

/// What every session shares.
pub struct Proxy {
    /// The configuration in force: swapped whole by [`crate::reload`], read without a lock
    /// (see [`Proxy::config`]).
    config: ArcSwap<Config>,
    /// The file it was read from, when there is one (what a reload re-reads).
    config_path: OnceLock<PathBuf>,
    pub catalog: Arc<dyn Catalog>,
    /// The static catalog, when it is the catalog (a reload swaps its tenants).
    pub static_catalog: Option<Arc<StaticCatalog>>,
    pub pools: Arc<PoolManager>,
    pub cancel: Arc<CancelRegistry>,
    /// The instance registry, with a control database (`None` over the static catalog).
    pub instances: Option<Arc<Instances>>,
    pub shutdown: Shutdown,
    /// Places of logged-in clients (`max_client_conn`).
    clients: Arc<Semaphore>,
    /// Places of connections still logging in (`max_prelogin_connections`).
    prelogin: Arc<Semaphore>,
    /// What clients together may hold of large messages (`large_message_memory`).
    pub large_messages: Arc<MessageBudget>,
    /// Control-database lookups per client address (`lookup_rate_per_address`).
    pub lookups: LookupLimiter,
    tenants: DashMap<TenantId, Arc<TenantSessions>>,
    /// Derives the mock SCRAM verifiers of unknown tenants and users.
    auth_secret: [u8; 32],
    /// TLS for clients, when configured.
    pub tls: Option<Arc<Tls>>,
    pub throttle: Throttle,
    pub metrics: Arc<Metrics>,
    /// Logged-in clients, for the console's SHOW CLIENTS and KILL_CLIENT.
    pub live: Arc<LiveClients>,
}

/// The open sessions of one tenant: its client cap, and the signal that ends them when the
/// tenant stops being active.
pub struct TenantSessions {
    /// Clients logged in now. The cap is checked against the tenant's current
    /// `max_clients` at each login, so a changed limit applies at once and every session
    /// stays reachable through this one entry (its kick generation) whatever the limit was.
    connected: AtomicUsize,
    /// How many times the tenant's sessions were kicked, and (once they were) why.
    kick: Mutex<(u64, Option<PgError>)>,
    /// The tenant's share of the large-message budget (see [`MessageBudget::share`]).
    pub large: Arc<MessageBudget>,
}

impl TenantSessions {
    /// A tenant's entry, its clients taking large messages from `large`.
    pub fn new(large: Arc<MessageBudget>) -> Arc<TenantSessions> {
        Arc::new(TenantSessions { connected: AtomicUsize::new(0), kick: Mutex::new((0, None)), large })
    }

    /// The kick generation a new session is admitted in: kicks after it reach the session.
    pub fn kick_generation(&self) -> u64 {
        self.kick.lock().unwrap_or_else(|e| e.into_inner()).0
    }

    /// Clients of the tenant logged in now.
    pub fn connected(&self) -> usize {
        self.connected.load(Ordering::Relaxed)
    }

    pub fn kick_reason(&self) -> Option<PgError> {
        self.kick.lock().unwrap_or_else(|e| e.into_inner()).1.clone()
    }

    /// Starts a new kick generation with `reason`: the sessions admitted before it are to
    /// end (see [`Proxy::kick_sessions`]); sessions that start later are not affected.
    fn kick(&self, reason: PgError) -> u64 {
        let mut k = self.kick.lock().unwrap_or_else(|e| e.into_inner());
        k.1 = Some(reason);
        k.0 += 1;
        k.0
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
    /// The tenant's kick generation at admission (see [`TenantSessions::kick_generation`]).
    pub generation: u64,
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
        Proxy::build(config, catalog.clone(), Some(catalog), None)
    }

    pub fn with_catalog(config: Config, catalog: Arc<dyn Catalog>) -> Arc<Proxy> {
        Proxy::build(config, catalog, None, None)
    }

    /// A proxy that is one of the instances in `instances` (its cancel keys carry this
    /// instance's slot; cancels for other instances' keys are forwarded to them).
    pub fn with_instances(
        config: Config,
        catalog: Arc<dyn Catalog>,
        instances: Option<Arc<Instances>>,
    ) -> Arc<Proxy> {
        Proxy::build(config, catalog, None, instances)
    }

    fn build(
        config: Config,
        catalog: Arc<dyn Catalog>,
        static_catalog: Option<Arc<StaticCatalog>>,
        instances: Option<Arc<Instances>>,
    ) -> Arc<Proxy> {
        let pools = PoolManager::new(&config.pool);
        if let Some(i) = &instances {
            pools.follow_shares(i.shares().clone());
        }
        pools.spawn_maintenance();
        let changes = catalog.changes();
        let config_tls = config.tls.clone();
        let config_throttle = config.proxy.max_auth_failures;
        let metrics = Arc::new(Metrics::new(config.metrics.top_tenants));
        let proxy = Arc::new(Proxy {
            clients: Arc::new(Semaphore::new(config.proxy.max_client_conn)),
            prelogin: Arc::new(Semaphore::new(config.proxy.max_prelogin_connections)),
            large_messages: MessageBudget::new(
                config.proxy.large_message_memory,
                config.proxy.large_message_memory_per_tenant(),
            ),
            lookups: LookupLimiter::new(config.catalog.lookup_rate_per_address),
            config: ArcSwap::from_pointee(config),
            config_path: OnceLock::new(),
            catalog,
            static_catalog,
            pools,
            cancel: CancelRegistry::for_instances(instances.clone()),
            instances,
            shutdown: Shutdown::default(),
            tenants: DashMap::new(),
            auth_secret: rand::random(),
            throttle: Throttle::new(config_throttle),
            metrics,
            live: Arc::new(LiveClients::default()),
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
        // Drain and force reach the listed sessions through their signals (a session listed
        // later sees the token itself: `list_session`).
        for (token, bit) in [(&proxy.shutdown.drain, live::DRAIN), (&proxy.shutdown.force, live::FORCE)] {
            let (token, registry) = (token.clone(), Arc::downgrade(&proxy.live));
            tokio::spawn(async move {
                token.cancelled().await;
                if let Some(registry) = registry.upgrade() {
                    registry.raise_all(bit);
                }
            });
        }
        proxy
    }

    /// A proxy over the catalog the config names: the control database when
    /// `[catalog] url` is set (connecting and migrating it), else the static tenants.
    pub async fn start(config: Config) -> anyhow::Result<Arc<Proxy>> {
        Proxy::start_at(config, None).await
    }

    /// [`Proxy::start`] for a proxy listening on `listen`: with a control database it joins
    /// the instance registry there (heartbeating until `shutdown.drain` fires, then
    /// deregistering).
    pub async fn start_at(
        config: Config,
        listen: Option<std::net::SocketAddr>,
    ) -> anyhow::Result<Arc<Proxy>> {
        if config.catalog.url.is_empty() {
            return Ok(Proxy::new(config));
        }
        let catalog = ControlCatalog::start(&config.catalog, &config.pool).await?;
        let instances = match listen {
            Some(addr) => {
                let instances = Instances::register(&config, addr).await?;
                instances.wait_settled().await;
                Some(instances)
            }
            None => None,
        };
        let proxy = Proxy::with_instances(config, catalog, instances);
        if let Some(i) = &proxy.instances {
            i.spawn_heartbeat(proxy.shutdown.drained.clone());
        }
        Ok(proxy)
    }

    /// The configuration in force now. A guard, not a lock: cheap enough per session or per
    /// transaction; one session sees one value if it keeps what it read.
    pub fn config(&self) -> arc_swap::Guard<Arc<Config>> {
        self.config.load()
    }

    /// The configuration in force now, as an `Arc` to keep.
    pub fn config_arc(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// Puts `config` in force (a reload has validated it and applied what it changes).
    pub(crate) fn swap_config(&self, config: Arc<Config>) {
        self.config.store(config);
    }

    /// Records the file the configuration came from, so that a reload can re-read it.
    pub fn set_config_path(&self, path: PathBuf) {
        let _ = self.config_path.set(path);
    }

    pub fn config_path(&self) -> Option<&std::path::Path> {
        self.config_path.get().map(PathBuf::as_path)
    }

    /// Clients of `tenant` logged in to this proxy now.
    pub fn tenant_clients(&self, tenant: &str) -> usize {
        let Ok(id) = TenantId::parse(tenant) else { return 0 };
        self.tenants.get(&id).map_or(0, |s| s.connected())
    }

    /// Tenants that have had a client on this proxy since it started.
    pub fn tenant_ids(&self) -> Vec<TenantId> {
        self.tenants.iter().map(|e| e.key().clone()).collect()
    }

    pub fn auth_secret(&self) -> &[u8] {
        &self.auth_secret
    }

    /// This instance's limit under a service-wide cap (the cap itself without a registry).
    pub fn limit(&self, cap: usize) -> usize {
        self.instances.as_ref().map_or(cap, |i| i.shares().limit(cap))
    }

    /// Admits a client of `tenant` under the tenant's client cap (this instance's share of
    /// it, with several instances).
    pub fn admit(&self, tenant: &Tenant) -> Result<TenantAdmission, PgError> {
        // Cloned out first: the map's read guard must not be held across `entry` (it would
        // deadlock the shard).
        let existing = self.tenants.get(&tenant.id).map(|s| s.value().clone());
        let sessions = match existing {
            Some(s) => s,
            None => self
                .tenants
                .entry(tenant.id.clone())
                .or_insert_with(|| TenantSessions::new(MessageBudget::share(&self.large_messages)))
                .value()
                .clone(),
        };
        let max = tenant.max_clients.map_or(usize::MAX, |m| self.limit(m));
        sessions
            .connected
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1))
            .map_err(|_| PgError::too_many_tenant_clients(tenant.id.as_str()))?;
        Ok(TenantAdmission { generation: sessions.kick_generation(), sessions })
    }

    /// Lists a logged-in tenant session in the client registry, through which drain, force,
    /// its tenant's kick and KILL_CLIENT reach its [`live::Signal`]. Signals given before it was
    /// listed are raised here: the registry did not know it when they were sent. (Each
    /// sender changes its state before walking the registry, and this reads that state after
    /// the session is listed, so no signal is missed.)
    pub fn list_session(&self, info: ClientInfo, admission: &TenantAdmission) -> LiveGuard {
        let signal = info.signal.clone();
        let guard = self.live.register(info);
        let mut late = 0;
        if self.shutdown.force.is_cancelled() {
            late |= live::FORCE;
        }
        if self.shutdown.drain.is_cancelled() {
            late |= live::DRAIN;
        }
        if admission.sessions.kick_generation() != admission.generation {
            late |= live::KICK;
        }
        if late != 0 {
            signal.raise(late);
        }
        guard
    }

    /// Ends the sessions of `tenant` admitted so far with `reason`.
    fn kick_sessions(&self, tenant: &TenantId, sessions: &TenantSessions, reason: PgError) {
        let generation = sessions.kick(reason);
        self.live.kick_tenant(tenant, generation);
    }

    /// Ends the open sessions of `tenant` with `reason` (the console's KILL); false when it
    /// has none on this proxy.
    pub fn kick_tenant(&self, tenant: &TenantId, reason: PgError) -> bool {
        let Some(sessions) = self.tenants.get(tenant).map(|s| s.value().clone()) else { return false };
        self.kick_sessions(tenant, &sessions, reason);
        true
    }

    /// Re-reads a tenant the catalog says changed; if it can no longer connect, its open
    /// sessions are ended.
    async fn recheck(&self, id: &TenantId) {
        let Some(sessions) = self.tenants.get(id).map(|s| s.value().clone()) else { return };
        let reason = match self.catalog.lookup(id).await {
            Ok(Some(t)) => t.refusal(),
            Ok(None) => Some(PgError::tenant_unknown(id.as_str())),
            Err(_) => None,
        };
        if let Some(reason) = reason {
            tracing::info!(tenant = %id, reason = %reason, "closing the tenant's sessions");
            self.kick_sessions(id, &sessions, PgError::terminating(&reason));
            self.pools.close_idle_of(id);
        }
    }

    /// Logged-in client connections right now.
    pub fn client_count(&self) -> usize {
        self.config().proxy.max_client_conn - self.clients.available_permits()
    }

    /// Connections accepted and not logged in yet, right now.
    pub fn prelogin_count(&self) -> usize {
        self.config().proxy.max_prelogin_connections - self.prelogin.available_permits()
    }

    /// Whether `max_client_conn` is reached (checked before authentication, so that a full
    /// proxy spends no SCRAM work on clients it would refuse anyway).
    pub fn clients_full(&self) -> bool {
        self.clients.available_permits() == 0
    }

    /// A connection's place under `max_prelogin_connections` while it logs in; `None` when
    /// they are all taken.
    pub(crate) fn prelogin_permit(&self) -> Option<OwnedSemaphorePermit> {
        self.prelogin.clone().try_acquire_owned().ok()
    }

    /// A logged-in client's place under `max_client_conn`, taken once it has authenticated.
    pub fn client_permit(&self) -> Result<OwnedSemaphorePermit, PgError> {
        self.clients.clone().try_acquire_owned().map_err(|_| PgError::too_many_clients())
    }
}

/// How long a session has, once shutdown forces clients off, to get its 57P01 out and
/// close; a client that stopped reading is then cut off without it.
pub const FORCE_CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

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

/// The bytes of large messages still free: for all clients together (`[proxy]
/// large_message_memory`), or for one tenant's clients (its share, `large_message_memory_per_tenant`,
/// taken from the whole as well: see [`MessageBudget::share`]). What takes from it:
/// `client::relay::large`.
#[derive(Debug)]
pub struct MessageBudget {
    left: AtomicUsize,
    size: usize,
    /// The budget a tenant's share also takes from.
    within: Option<Arc<MessageBudget>>,
    /// A share's takes, one at a time (see [`MessageBudget::take`]).
    turn: Mutex<()>,
    /// The size of each tenant's share of this whole.
    tenant_share: usize,
}

/// A large message would pass a budget of `size` bytes: the tenant's share when `tenant`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BudgetFull {
    pub size: usize,
    pub tenant: bool,
}

impl MessageBudget {
    /// The whole, `size` bytes, of which each tenant's clients may hold `tenant_share`.
    pub fn new(size: usize, tenant_share: usize) -> Arc<MessageBudget> {
        Arc::new(MessageBudget {
            left: AtomicUsize::new(size),
            size,
            within: None,
            turn: Mutex::new(()),
            tenant_share,
        })
    }

    /// One tenant's share of `all`: its `tenant_share` bytes, taken from `all` too, so that
    /// one tenant's clients never hold the whole of it (DESIGN, Containment 5).
    pub fn share(all: &Arc<MessageBudget>) -> Arc<MessageBudget> {
        let size = all.tenant_share.min(all.size);
        Arc::new(MessageBudget {
            left: AtomicUsize::new(size),
            size,
            within: Some(all.clone()),
            turn: Mutex::new(()),
            tenant_share: size,
        })
    }

    /// Takes `n` bytes (from the share and from the whole it is part of); nothing taken when
    /// either has fewer left.
    pub(crate) fn take(&self, n: usize) -> Result<(), BudgetFull> {
        let Some(all) = &self.within else {
            return match self
                .left
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| left.checked_sub(n))
            {
                Ok(_) => Ok(()),
                Err(_) => Err(self.full()),
            };
        };
        // A share's bytes are taken only once the whole gave its own, its takes one at a time
        // (only they lower `left`: checked, it stays as checked or grows). Taken ahead and
        // given back when the whole refused, they would show the share taken for that while,
        // and the tenant's other sessions, within its share, would be refused past it.
        let _turn = self.turn.lock().unwrap_or_else(|e| e.into_inner());
        if self.left.load(Ordering::Acquire) < n {
            return Err(self.full());
        }
        all.take(n)?;
        self.left.fetch_sub(n, Ordering::AcqRel);
        Ok(())
    }

    /// Gives back `n` bytes taken: to the whole first, then to the share, so that a take of
    /// the tenant that sees them in the share finds them in the whole too.
    pub(crate) fn give(&self, n: usize) {
        if let Some(all) = &self.within {
            all.give(n);
        }
        self.left.fetch_add(n, Ordering::AcqRel);
    }

    /// The limit a message longer than this budget's size passes (it could never fit).
    pub(crate) fn full(&self) -> BudgetFull {
        let tenant = self.within.as_ref().is_some_and(|all| self.size < all.size);
        BudgetFull { size: self.size, tenant }
    }

    /// Bytes clients hold now.
    pub fn held(&self) -> usize {
        self.size - self.left.load(Ordering::Acquire).min(self.size)
    }

    pub fn size(&self) -> usize {
        self.size
    }
}
