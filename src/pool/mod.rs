//! Upstream server connections and their pools. A pool per upstream login (address,
//! database, role) holds authenticated raw sockets. Caps per tenant, per pool, per upstream
//! server and in total are enforced together; waiters queue per tenant and are served
//! round-robin; idle connections are reaped, so an idle pool shrinks to nothing.
//!
//! Catalog changes reach the pools ([`PoolManager::apply`], [`PoolManager::follow`]): a new
//! upstream password, `require_auth`, pool size or tenant cap applies to the next server
//! connection opened; connections opened under the old login are closed when idle and at
//! release when busy (each carries the generation of the login it was opened with).
//!
//! Several instances share a tenant's explicit `max_server_connections` and an upstream's
//! `max_connections` ([`crate::leases`]): each cap here is this instance's share, resized
//! when the shares change ([`PoolManager::follow_shares`]).

mod cap;
mod capacity;
mod error;
mod fair;
pub mod handoff;
mod idle;
mod listing;
mod pause;
mod retry;
mod server;
pub mod session;
mod settings;
mod stream;

pub use cap::TenantCap;
use cap::{CapPermit, CapSemaphore};
use capacity::Capacity;
pub use error::{CheckoutError, PoolError};
use fair::Locked;
pub use fair::{FairPermit, FairSemaphore};
use idle::{pick_idle, push_idle, Idle};
pub use listing::ServerRow;
pub use pause::Pauses;
pub use retry::Slot;
pub use server::{cancel_backend, Login, PreparedSet, ServerConn, UpstreamError};
pub use settings::{LiveSettings, PoolSettings};
pub use stream::ServerStream;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use tokio::sync::OwnedSemaphorePermit;

use crate::catalog::{Catalog, Change, Tenant};
use crate::config::PoolDefaults;
use crate::leases::Shares;
use crate::model::{PoolKey, RequireAuth, TenantId};

/// ParameterStatus name/value pairs as a server reported them.
pub type ServerParams = Arc<Vec<(String, String)>>;

/// What a pool's new connections log in with. Replaced (with the next generation) when the
/// catalog changes it.
#[derive(Debug)]
struct PoolLogin {
    password: Option<String>,
    require_auth: RequireAuth,
    generation: u64,
}

impl PoolLogin {
    fn of(tenant: &Tenant, generation: u64) -> PoolLogin {
        PoolLogin { password: tenant.password.clone(), require_auth: tenant.require_auth, generation }
    }

    fn same_as(&self, tenant: &Tenant) -> bool {
        self.password == tenant.password && self.require_auth == tenant.require_auth
    }
}

/// A tenant's server-connection cap: as configured, whether it holds for the whole service,
/// and this instance's size of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct TenantCapSize {
    cap: usize,
    shared: bool,
    size: usize,
}

/// One pool of server connections for one upstream login.
pub struct Pool {
    key: PoolKey,
    login: RwLock<Arc<PoolLogin>>,
    settings: LiveSettings,
    /// A permit per checked-out connection: `size` bounds idle + busy, because a connection
    /// is only opened when none is idle. Its lock guards the idle connections.
    checkout: Arc<FairSemaphore<Idle>>,
    /// The pool size the catalog gives (`checkout` may be smaller: [`Pool::effective_size`]).
    configured_size: AtomicUsize,
    /// ParameterStatus values of the most recent connection opened: what clients are told at
    /// login.
    params: RwLock<Option<ServerParams>>,
    upstream: Arc<Capacity>,
    global: Arc<Capacity>,
    /// Server connections opened, and attempts that failed (the metrics read them).
    connects: AtomicU64,
    connect_failures: AtomicU64,
    /// Its open server connections (SHOW SERVERS).
    listing: listing::Listing,
}

impl Pool {
    pub fn key(&self) -> &PoolKey {
        &self.key
    }

    pub fn size(&self) -> usize {
        self.checkout.size()
    }

    /// The settings in force now (a guard: copy out what is needed, do not hold it across
    /// an await).
    pub fn settings(&self) -> arc_swap::Guard<Arc<PoolSettings>> {
        self.settings.load()
    }

    /// The remembered ParameterStatus list, once a server connection has been opened.
    pub fn params(&self) -> Option<ServerParams> {
        self.params.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn idle_count(&self) -> usize {
        self.lock_idle().len()
    }

    pub fn busy_count(&self) -> usize {
        self.checkout.in_use()
    }

    /// Whether clients of another tenant than `tenant` wait for one of this pool's
    /// connections (so a connection released now would pass to another tenant, with a reset).
    pub fn others_waiting(&self, tenant: &TenantId) -> bool {
        self.checkout.others_waiting(tenant)
    }

    /// Whether any client (of any tenant) waits for one of this pool's connections.
    pub fn anyone_waiting(&self) -> bool {
        self.checkout.anyone_waiting()
    }

    /// Server connections opened since the pool was made, and attempts that failed
    /// (refused, timed out, failed to log in).
    pub fn connect_counts(&self) -> (u64, u64) {
        (self.connects.load(Ordering::Relaxed), self.connect_failures.load(Ordering::Relaxed))
    }

    /// The pool's open server connections, idle and checked out.
    pub fn servers(&self) -> Vec<ServerRow> {
        let idle = self.lock_idle();
        self.listing.rows(&idle.conns, idle.generation)
    }

    /// Open connections marked to close (opened before a RECONNECT or a login change): the
    /// console's WAIT_CLOSE returns once there are none. Idle ones are closed when marked,
    /// so these are the busy ones, closed as their clients release them.
    pub fn marked_count(&self) -> usize {
        // Held while counting (as `servers` does), so a RECONNECT cannot slip in between.
        let idle = self.lock_idle();
        self.listing.marked(idle.generation)
    }

    /// RECONNECT: every connection open now is closed, idle ones at once and busy ones when
    /// released (a new login generation with the same login); new ones replace them.
    pub fn reconnect(&self) {
        let mut login = self.login.write().unwrap_or_else(|e| e.into_inner());
        let next = Arc::new(PoolLogin {
            password: login.password.clone(),
            require_auth: login.require_auth,
            generation: login.generation + 1,
        });
        let mut idle = self.lock_idle();
        idle.generation = next.generation;
        idle.conns.clear();
        *login = next;
    }

    fn lock_idle(&self) -> Locked<'_, Idle> {
        self.checkout.lock()
    }

    fn current_login(&self) -> Arc<PoolLogin> {
        self.login.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Takes `tenant`'s current login settings and pool size: a changed login starts a new
    /// generation (idle connections of the old one are closed now, busy ones at release); a
    /// changed size applies to the next checkout. Returns whether anything changed.
    fn apply(&self, tenant: &Tenant) -> bool {
        self.configured_size.store(tenant.pool_size, Ordering::Relaxed);
        let size = self.effective_size();
        // Every login passes here: the common case (nothing changed) takes read locks only.
        if self.checkout.size() == size && self.current_login().same_as(tenant) {
            return false;
        }
        let mut changed = self.resize(size);
        let mut login = self.login.write().unwrap_or_else(|e| e.into_inner());
        if !login.same_as(tenant) {
            let next = Arc::new(PoolLogin::of(tenant, login.generation + 1));
            tracing::info!(upstream = %self.key.addr, db = %self.key.database, role = %self.key.role,
                "upstream login changed: draining server connections opened with the old one");
            let mut idle = self.lock_idle();
            idle.generation = next.generation;
            idle.conns.clear();
            *login = next;
            changed = true;
        }
        changed
    }

    /// The pool's size: as configured, but no more than the upstream's cap lets it open
    /// (this instance's share of it, with several instances). Checkouts past it wait in
    /// the pool's fair queue rather than for upstream capacity, where a client releasing a
    /// connection and taking it again at once would starve them.
    fn effective_size(&self) -> usize {
        self.configured_size.load(Ordering::Relaxed).min(self.upstream.size())
    }

    /// Resizes the checkout permits; returns whether the size changed.
    fn resize(&self, size: usize) -> bool {
        if self.checkout.size() == size {
            return false;
        }
        tracing::info!(upstream = %self.key.addr, db = %self.key.database, role = %self.key.role,
            from = self.checkout.size(), to = size, "pool size changed");
        self.checkout.resize(size);
        // Idle connections above the new size are closed now (oldest first); busy ones
        // when they come back.
        let mut idle = self.lock_idle();
        let excess = (idle.len() + idle.in_use()).saturating_sub(size);
        let now = excess.min(idle.len());
        idle.drain(..now);
        idle.retire = excess - now;
        true
    }

    /// An idle connection (see [`pick_idle`]).
    fn take_idle(&self, tenant: Option<&TenantId>, lifetime_ns: u64) -> Option<Box<ServerConn>> {
        pick_idle(&mut self.lock_idle(), tenant, lifetime_ns, Instant::now())
    }

    /// Opens a connection within the upstream and global caps, waiting (and evicting idle
    /// connections of other pools) until `deadline`, or only taking free capacity without one;
    /// in the places `caps` of a connection just closed, if it kept both (a handoff retry's).
    async fn open(
        &self,
        deadline: Option<tokio::time::Instant>,
        caps: Vec<OwnedSemaphorePermit>,
    ) -> Result<Box<ServerConn>, PoolError> {
        let settings = self.settings.load_full();
        let timeout = || PoolError::Timeout(settings.checkout_timeout);
        let caps = match caps.len() {
            2 => caps,
            _ => vec![
                self.upstream.acquire(self, deadline).await.ok_or_else(timeout)?,
                self.global.acquire(self, deadline).await.ok_or_else(timeout)?,
            ],
        };
        let current = self.current_login();
        let login = Login {
            database: &self.key.database,
            role: &self.key.role,
            password: current.password.as_deref(),
            require_auth: current.require_auth,
            max_iterations: settings.max_scram_iterations,
        };
        let limit = settings.connect_timeout;
        let mut conn = tokio::time::timeout(limit, ServerConn::connect(&self.key.addr, &login))
            .await
            .map_err(|_| PoolError::ConnectTimeout(limit))
            .and_then(|r| r.map_err(PoolError::from))
            .inspect_err(|e| {
                self.connect_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(upstream = %self.key.addr, db = %self.key.database, error = %e, "upstream connection failed")
            })?;
        self.connects.fetch_add(1, Ordering::Relaxed);
        conn._permits = caps;
        conn.generation = current.generation;
        conn.listed = Some(self.listing.add(&conn));
        *self.params.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(conn.vars.clone()));
        Ok(Box::new(conn))
    }

    /// Closes idle connections past their idle timeout or lifetime, keeping `min_idle`
    /// (the most recently used ones), and those the server closed (or that have something to
    /// say: see [`ServerConn::is_clean`]), then opens connections up to `min_idle` with free
    /// capacity only (maintenance never evicts).
    async fn maintain(&self) {
        let s = self.settings.load_full();
        {
            let mut idle = self.lock_idle();
            let keep_from = idle.len().saturating_sub(s.min_idle);
            let now = Instant::now();
            let mut i = 0;
            idle.retain(|c| {
                let kept = now.saturating_duration_since(c.created) < s.max_lifetime
                    && (i >= keep_from || now.saturating_duration_since(c.idle_since) < s.idle_timeout)
                    && c.is_clean();
                i += 1;
                kept
            });
        }
        while self.idle_count() + self.busy_count() < s.min_idle {
            let Some(_permit) = self.checkout.try_acquire() else { break };
            match self.open(None, Vec::new()).await {
                Ok(conn) => push_idle(&mut self.lock_idle(), conn),
                Err(_) => break,
            }
        }
    }

    fn close_idle(&self) {
        self.lock_idle().clear();
    }
}

/// A checked-out server connection. Dropping it closes the connection: only
/// [`Checkout::release`] returns it to the pool, so a connection whose state is unknown
/// (mid-transaction, mid-query, errored) is never reused by accident.
pub struct Checkout {
    /// Boxed: the connection is large, and a checkout moves between the pool and a session
    /// several times per transaction.
    conn: Box<ServerConn>,
    /// Its pool's permit (which keeps the pool's idle list alive: the pool itself is not held).
    permit: FairPermit<Idle>,
    _tenant_permit: CapPermit,
    /// When the checkout got the connection.
    taken: Instant,
}

impl Checkout {
    pub fn conn(&mut self) -> &mut ServerConn {
        &mut self.conn
    }

    pub fn conn_ref(&self) -> &ServerConn {
        &self.conn
    }

    /// When the checkout got the connection (the end of any wait for it).
    pub fn taken(&self) -> Instant {
        self.taken
    }

    /// Returns an idle, clean connection to the pool.
    pub fn release(self) {
        self.release_at(Instant::now());
    }

    /// [`Checkout::release`] with the clock already read (`now`).
    pub fn release_at(self, now: Instant) {
        let Checkout { mut conn, permit, _tenant_permit, .. } = self;
        // Against the lifetime in force at its checkout, worked out then: no subtraction.
        if conn.expires.is_none_or(|at| now < at) {
            conn.idle_since = now;
            // Pushed under the lock that hands the permit on, so a waiter woken by it finds
            // the connection.
            permit.release_with(|idle| push_idle(idle, conn));
        }
    }
}

/// All pools, created on first use, keyed by upstream login, and the caps they share.
pub struct PoolManager {
    pools: DashMap<PoolKey, Arc<Pool>>,
    upstreams: DashMap<Arc<str>, Arc<Capacity>>,
    global: Arc<Capacity>,
    /// Server connections each tenant holds, across pools.
    tenant_caps: DashMap<TenantId, Arc<CapSemaphore>>,
    /// The cap each of `tenant_caps` was made for (so a changed cap can be applied): the
    /// tenant's `max_server_connections`, whether it holds for the whole service (set
    /// explicitly), and the semaphore's size now.
    tenant_cap_sizes: DashMap<TenantId, TenantCapSize>,
    /// This instance's shares of the service-wide caps (whole without a registry).
    shares: std::sync::OnceLock<Arc<Shares>>,
    /// The pool each tenant was last routed to (what a catalog change re-applies).
    tenant_pools: DashMap<TenantId, PoolKey>,
    settings: LiveSettings,
    following: AtomicBool,
    /// PAUSE / RESUME from the console: a paused tenant's checkouts wait.
    pub pauses: Pauses,
}

impl PoolManager {
    pub fn new(defaults: &PoolDefaults) -> Arc<PoolManager> {
        Arc::new(PoolManager {
            pools: DashMap::new(),
            upstreams: DashMap::new(),
            global: Capacity::new(defaults.max_server_connections, defaults.max_server_connections),
            tenant_caps: DashMap::new(),
            tenant_cap_sizes: DashMap::new(),
            shares: std::sync::OnceLock::new(),
            tenant_pools: DashMap::new(),
            settings: Arc::new(settings::Live::new(PoolSettings::from(defaults))),
            following: AtomicBool::new(false),
            pauses: Pauses::default(),
        })
    }

    /// The pool settings in force for every pool.
    pub fn settings(&self) -> Arc<PoolSettings> {
        self.settings.load_full()
    }

    /// Puts `settings` in force for every pool, existing ones included (a reload, or the
    /// console's `SET`): the next checkout, release and maintenance pass read them.
    pub fn set_settings(&self, settings: PoolSettings) {
        if *self.settings.load_full() != settings {
            tracing::info!(?settings, "pool settings changed");
            self.settings.store(Arc::new(settings));
        }
    }

    /// Starts the maintenance task (idle reaping, min idle); it ends when the manager is
    /// dropped. Its period follows the idle timeout in force.
    pub fn spawn_maintenance(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let settings = self.settings.clone();
        tokio::spawn(async move {
            loop {
                let period = (settings.load().idle_timeout / 4)
                    .clamp(Duration::from_millis(100), Duration::from_secs(5));
                tokio::time::sleep(period).await;
                let Some(mgr) = weak.upgrade() else { return };
                let pools: Vec<Arc<Pool>> = mgr.pools.iter().map(|p| p.value().clone()).collect();
                drop(mgr);
                for pool in pools {
                    pool.maintain().await;
                }
            }
        });
    }

    /// The pool for a tenant's upstream login, created on first use, with the tenant's
    /// current settings applied (see [`PoolManager::apply`]).
    pub fn pool_for(&self, tenant: &Tenant) -> Arc<Pool> {
        let pool = self.pool_entry(tenant);
        self.apply_to(&pool, tenant);
        pool
    }

    /// Applies `tenant`'s current catalog entry to its pool and its server-connection cap, if
    /// this proxy has them: a changed password or `require_auth` drains connections opened
    /// with the old login, a changed pool size or `max_server_connections` applies to the
    /// next checkout.
    pub fn apply(&self, tenant: &Tenant) {
        let Some(pool) = self.pools.get(&tenant.pool_key).map(|p| p.value().clone()) else {
            self.apply_tenant_cap(tenant);
            return;
        };
        self.apply_to(&pool, tenant);
    }

    fn apply_to(&self, pool: &Pool, tenant: &Tenant) {
        pool.apply(tenant);
        self.apply_tenant_cap(tenant);
        if self.tenant_pools.get(&tenant.id).is_none_or(|k| *k != tenant.pool_key) {
            self.tenant_pools.insert(tenant.id.clone(), tenant.pool_key.clone());
        }
    }

    /// This instance's limit under a service-wide cap.
    fn limit(&self, cap: usize) -> usize {
        self.shares.get().map_or(cap, |s| s.limit(cap))
    }

    fn tenant_cap_size(&self, tenant: &Tenant) -> TenantCapSize {
        let (cap, shared) = (tenant.max_server_connections, tenant.max_server_connections_set);
        TenantCapSize { cap, shared, size: if shared { self.limit(cap) } else { cap } }
    }

    /// Resizes the tenant's cap to its current `max_server_connections` (this instance's
    /// share of it, when it is set for the tenant).
    fn apply_tenant_cap(&self, tenant: &Tenant) {
        let want = self.tenant_cap_size(tenant);
        if self.tenant_cap_sizes.get(&tenant.id).is_some_and(|s| *s == want) {
            return;
        }
        self.resize_tenant_cap(&tenant.id, want);
    }

    fn resize_tenant_cap(&self, id: &TenantId, want: TenantCapSize) {
        let Some(sem) = self.tenant_caps.get(id).map(|s| s.value().clone()) else { return };
        let mut size = self.tenant_cap_sizes.entry(id.clone()).or_insert(want);
        let have = *size;
        if have == want {
            return;
        }
        *size = want;
        drop(size);
        if have.size != want.size {
            tracing::info!(tenant = %id, from = have.size, to = want.size, cap = want.cap, shared = want.shared, "max_server_connections changed");
            sem.resize(have.size, want.size);
        }
    }

    /// Takes this instance's shares of the service-wide caps (once; before the first pool)
    /// and resizes the caps whenever they change, for as long as the manager lives.
    pub fn follow_shares(self: &Arc<Self>, shares: Arc<Shares>) {
        let mut changed = shares.subscribe();
        if self.shares.set(shares).is_err() {
            return;
        }
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            while changed.changed().await.is_ok() {
                let Some(mgr) = weak.upgrade() else { return };
                mgr.apply_shares();
            }
        });
    }

    /// Resizes every service-wide cap to this instance's current share.
    fn apply_shares(&self) {
        let Some(shares) = self.shares.get() else { return };
        for up in self.upstreams.iter() {
            up.value().apply_share(shares);
        }
        for pool in self.pools.iter() {
            pool.resize(pool.effective_size());
        }
        let shared: Vec<(TenantId, TenantCapSize)> = self
            .tenant_cap_sizes
            .iter()
            .filter(|e| e.value().shared)
            .map(|e| (e.key().clone(), *e.value()))
            .collect();
        for (id, have) in shared {
            self.resize_tenant_cap(&id, TenantCapSize { size: shares.limit(have.cap), ..have });
        }
    }

    /// Follows the catalog's change notifications for as long as the manager lives: each
    /// changed tenant this proxy has a pool for is looked up again and applied, so a new
    /// password or size takes effect on every proxy without a client logging in first.
    /// Starting it twice does nothing.
    pub fn follow(self: &Arc<Self>, catalog: Arc<dyn Catalog>) {
        if self.following.load(Ordering::Acquire) || self.following.swap(true, Ordering::AcqRel) {
            return;
        }
        let Some(mut changes) = catalog.changes() else { return };
        // Neither is kept alive by this task: it ends with either.
        let weak = Arc::downgrade(self);
        let catalog = Arc::downgrade(&catalog);
        tokio::spawn(async move {
            loop {
                let change = match changes.recv().await {
                    Ok(c) => c,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => Change::All,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                };
                let (Some(mgr), Some(catalog)) = (weak.upgrade(), catalog.upgrade()) else { return };
                let ids: Vec<TenantId> = match change {
                    Change::Tenant(id) if mgr.tenant_pools.contains_key(&id) => vec![id],
                    Change::Tenant(_) => Vec::new(),
                    Change::All => mgr.tenant_pools.iter().map(|e| e.key().clone()).collect(),
                };
                for id in ids {
                    if let Ok(Some(tenant)) = catalog.lookup(&id).await {
                        mgr.apply(&tenant);
                    }
                }
            }
        });
    }

    fn pool_entry(&self, tenant: &Tenant) -> Arc<Pool> {
        if let Some(p) = self.pools.get(&tenant.pool_key) {
            return p.value().clone();
        }
        let upstream = self
            .upstreams
            .entry(tenant.upstream.clone())
            .or_insert_with(|| Capacity::new(tenant.upstream_max, self.limit(tenant.upstream_max)))
            .clone();
        self.pools
            .entry(tenant.pool_key.clone())
            .or_insert_with(|| {
                let idle = Idle { conns: Vec::new(), generation: 0, retire: 0 };
                let pool = Arc::new(Pool {
                    key: tenant.pool_key.clone(),
                    login: RwLock::new(Arc::new(PoolLogin::of(tenant, 0))),
                    settings: self.settings.clone(),
                    checkout: FairSemaphore::new(tenant.pool_size.min(upstream.size()), idle),
                    configured_size: AtomicUsize::new(tenant.pool_size),
                    params: RwLock::new(None),
                    upstream: upstream.clone(),
                    global: self.global.clone(),
                    connects: AtomicU64::new(0),
                    connect_failures: AtomicU64::new(0),
                    listing: Default::default(),
                });
                for cap in [&upstream, &self.global] {
                    cap.pools.lock().unwrap_or_else(|e| e.into_inner()).push(Arc::downgrade(&pool));
                }
                pool
            })
            .clone()
    }

    fn tenant_cap(&self, tenant: &Tenant) -> Arc<CapSemaphore> {
        if let Some(s) = self.tenant_caps.get(&tenant.id) {
            return s.value().clone();
        }
        self.tenant_caps
            .entry(tenant.id.clone())
            .or_insert_with(|| {
                let size = self.tenant_cap_size(tenant);
                self.tenant_cap_sizes.insert(tenant.id.clone(), size);
                CapSemaphore::new(size.size)
            })
            .clone()
    }

    /// A server connection of `pool` for `tenant`: within the tenant's cap, then the pool's
    /// (fair across tenants), then an idle connection (one already set up for this tenant
    /// first), else a new one within the upstream and global caps; waiting at most the
    /// checkout timeout in all.
    /// `cap` is the session's handle on the tenant's cap, found at its first checkout.
    pub async fn checkout(
        &self,
        pool: &Arc<Pool>,
        tenant: &Tenant,
        cap: &mut TenantCap,
    ) -> Result<Checkout, CheckoutError> {
        self.checkout_at(pool, tenant, cap, Instant::now()).await
    }

    /// [`PoolManager::checkout_at`]'s common case, without a future: the tenant is not
    /// paused, its cap and the pool have a free permit, and an idle connection is clean (as
    /// the waiting way picks it, at `now`). None, with nothing taken, otherwise: the caller
    /// takes the waiting way (which opens a connection when none is idle).
    pub fn checkout_now(
        &self,
        pool: &Arc<Pool>,
        tenant: &Tenant,
        cap: &mut TenantCap,
        now: Instant,
    ) -> Option<Checkout> {
        if self.pauses.is_paused(&tenant.id) {
            return None;
        }
        let cap = cap.0.get_or_insert_with(|| self.tenant_cap(tenant));
        let tenant_permit = cap.try_acquire()?;
        let lifetime_ns = pool.settings.max_lifetime_ns();
        let (permit, mut next) =
            pool.checkout.try_acquire_with(|idle| pick_idle(idle, Some(&tenant.id), lifetime_ns, now))?;
        while let Some(conn) = next {
            // As in `checkout_for`: a connection that died while idle is never handed out.
            if conn.is_clean() {
                return Some(Checkout { conn, permit, _tenant_permit: tenant_permit, taken: now });
            }
            tracing::debug!(pool = %pool.key.addr, "dropping a stale idle connection");
            next = pool.take_idle(Some(&tenant.id), lifetime_ns);
        }
        // None idle: opening one may wait. The permits go back (to a waiter, if one came).
        None
    }

    /// [`PoolManager::checkout`] asked for at `asked` (the clock already read): a checkout
    /// that does not wait reads it no more. (Not an `async fn`: its state would hold the
    /// arguments a second time, in every client's task.)
    pub fn checkout_at<'a>(
        &'a self,
        pool: &'a Arc<Pool>,
        tenant: &'a Tenant,
        cap: &'a mut TenantCap,
        asked: Instant,
    ) -> impl Future<Output = Result<Checkout, CheckoutError>> + Send + 'a {
        self.checkout_for(pool, tenant, cap, asked)
    }

    /// [`PoolManager::checkout_at`]'s future. Its errors carry the tenant (made only on
    /// failure: no adapter around every checkout's future).
    async fn checkout_for(
        &self,
        pool: &Arc<Pool>,
        tenant: &Tenant,
        cap: &mut TenantCap,
        asked: Instant,
    ) -> Result<Checkout, CheckoutError> {
        let fail = |error| CheckoutError { tenant: tenant.id.clone(), error };
        // The timeout is read only for an error: a checkout that succeeds does not convert it.
        let timeout = || fail(PoolError::Timeout(pool.settings.checkout_timeout()));
        // The clock is read again only after a wait (a pause, a full pool); the deadline is
        // worked out only when something waits.
        let mut now = asked;
        if self.pauses.is_paused(&tenant.id) {
            self.pauses.wait(&tenant.id).await;
            now = Instant::now();
        }
        let lifetime_ns = pool.settings.max_lifetime_ns();
        let mut deadline = None;
        let mut deadline = move || {
            *deadline.get_or_insert_with(|| tokio::time::Instant::now() + pool.settings.checkout_timeout())
        };
        let cap = cap.0.get_or_insert_with(|| self.tenant_cap(tenant));
        // The common case takes a free permit without arming a timer.
        let tenant_permit = match cap.try_acquire() {
            Some(p) => p,
            None => {
                // Boxed: only a wait has a timer, and its state must not size every checkout.
                let permit = Box::pin(tokio::time::timeout_at(deadline(), cap.acquire()))
                    .await
                    .ok()
                    .flatten()
                    .ok_or_else(timeout)?;
                now = Instant::now();
                permit
            }
        };
        // The permit and the first idle connection under one lock.
        let (permit, (mut next, taken)) = pool
            .checkout
            .acquire_with(&tenant.id, &mut deadline, |idle, waited| {
                let now = if waited { Instant::now() } else { now };
                (pick_idle(idle, Some(&tenant.id), lifetime_ns, now), now)
            })
            .await
            .ok_or_else(timeout)?;
        while let Some(conn) = next {
            // A server connection that died while idle (pg_terminate_backend, a server
            // restart, a backend's own idle_session_timeout) or that has something to say is
            // never handed out: its socket is checked first. The check reads the readiness
            // the runtime's event loop last saw (as PgBouncer's loop watches idle servers):
            // no system call unless the socket became readable.
            if conn.is_clean() {
                return Ok(Checkout { conn, permit, _tenant_permit: tenant_permit, taken });
            }
            tracing::debug!(pool = %pool.key.addr, "dropping a stale idle connection");
            next = pool.take_idle(Some(&tenant.id), lifetime_ns);
        }
        // Boxed: connecting and authenticating upstream is rare and its state large.
        let mut conn = Box::pin(pool.open(Some(deadline()), Vec::new())).await.map_err(fail)?;
        let taken = Instant::now();
        // Its lifetime as of now (no idle pick worked it out).
        conn.live_at(lifetime_ns, taken);
        Ok(Checkout { conn, permit, _tenant_permit: tenant_permit, taken })
    }

    /// Closes the idle connections last set up for `tenant` (when it stops being active: an
    /// archive or delete is about to rename or drop what they are connected to).
    pub fn close_idle_of(&self, tenant: &TenantId) {
        for p in self.pools.iter() {
            p.value().lock_idle().retain(|c| c.tenant.as_ref() != Some(tenant));
        }
    }

    /// Closes every idle connection (at shutdown).
    pub fn close_idle(&self) {
        for p in self.pools.iter() {
            p.value().close_idle();
        }
    }

    pub fn pools(&self) -> Vec<Arc<Pool>> {
        self.pools.iter().map(|p| p.value().clone()).collect()
    }

    /// The pool size in force for `tenant` (SHOW DATABASES' `pool_size`): its pool's size,
    /// which is the tenant's own size or the default, capped by what the upstream lets this
    /// instance open; and no more than the tenant's own server-connection cap. Before the
    /// tenant's pool exists, the same worked out from its catalog entry.
    pub fn effective_pool_size(&self, tenant: &Tenant) -> usize {
        let pool = match self.pools.get(&tenant.pool_key) {
            Some(p) => p.size(),
            None => {
                let upstream = self.upstreams.get(&tenant.upstream).map(|u| u.size());
                tenant.pool_size.min(upstream.unwrap_or_else(|| self.limit(tenant.upstream_max)))
            }
        };
        let cap = match self.tenant_cap_sizes.get(&tenant.id) {
            Some(s) => s.size,
            None => self.tenant_cap_size(tenant).size,
        };
        pool.min(cap)
    }

    /// Server connections `tenant` has checked out now (None: every tenant's).
    pub fn checked_out(&self, tenant: Option<&TenantId>) -> usize {
        match tenant {
            None => self.pools.iter().map(|p| p.value().busy_count()).sum(),
            Some(t) => {
                let Some(cap) = self.tenant_caps.get(t).map(|c| c.value().clone()) else { return 0 };
                let size = self.tenant_cap_sizes.get(t).map_or(0, |s| s.size);
                cap.in_use(size)
            }
        }
    }
}
