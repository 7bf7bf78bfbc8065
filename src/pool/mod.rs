//! Upstream server connections and their pools. A pool per upstream login (address,
//! database, role) holds authenticated raw sockets; caps per pool and per upstream server are
//! enforced together, and checkout waits in a FIFO queue up to a timeout.

mod server;
mod stream;

pub use server::{cancel_backend, Login, ServerConn, UpstreamError};
pub use stream::{ServerStream, UpstreamAddr};

use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::catalog::Tenant;
use crate::config::{secs, PoolDefaults};
use crate::protocol::{PgError, SqlState};

/// ParameterStatus name/value pairs as a server reported them.
pub type ServerParams = Arc<Vec<(String, String)>>;

/// What a pool is keyed by: one upstream login.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub addr: UpstreamAddr,
    pub database: String,
    pub role: String,
}

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("timed out after {0:?} waiting for a server connection")]
    Timeout(Duration),
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("opening an upstream connection timed out after {0:?}")]
    ConnectTimeout(Duration),
}

impl PoolError {
    /// What the client is told (the upstream's own text stays in the log).
    pub fn to_client(&self, tenant: &str) -> PgError {
        match self {
            PoolError::Timeout(d) => PgError::fatal(
                SqlState::TooManyConnections,
                format!("no server connection for tenant \"{tenant}\" became free within {d:?}"),
            )
            .with_hint("the tenant's pool is exhausted: retry, or raise its pool size"),
            PoolError::Upstream(_) | PoolError::ConnectTimeout(_) => PgError::fatal(
                SqlState::ConnectionFailure,
                format!("cannot reach the database of tenant \"{tenant}\""),
            ),
        }
    }
}

/// Pool settings taken from `[pool]`.
#[derive(Clone, Debug)]
pub struct PoolSettings {
    pub checkout_timeout: Duration,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_lifetime: Duration,
    pub min_idle: usize,
}

impl From<&PoolDefaults> for PoolSettings {
    fn from(p: &PoolDefaults) -> Self {
        PoolSettings {
            checkout_timeout: secs(p.checkout_timeout),
            connect_timeout: secs(p.connect_timeout),
            idle_timeout: secs(p.idle_timeout),
            max_lifetime: secs(p.max_lifetime),
            min_idle: p.min_idle,
        }
    }
}

/// An upstream server: its connection cap and the pools drawing on it.
struct UpstreamServer {
    open: Arc<Semaphore>,
    pools: Mutex<Vec<Weak<Pool>>>,
}

impl UpstreamServer {
    /// Frees capacity for another pool by closing one idle connection elsewhere.
    fn evict_one_idle(&self, except: &Pool) -> bool {
        let pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        for pool in pools.iter().filter_map(Weak::upgrade) {
            if std::ptr::eq(&*pool, except) {
                continue;
            }
            let victim = pool.lock_idle().pop();
            if victim.is_some() {
                return true;
            }
        }
        false
    }
}

/// One pool of server connections for one upstream login.
pub struct Pool {
    key: PoolKey,
    password: Option<String>,
    size: usize,
    settings: PoolSettings,
    /// A permit per checked-out connection: `size` bounds idle + busy, because a connection
    /// is only opened when none is idle. Tokio's semaphore is FIFO, so waiters are served
    /// in arrival order.
    checkout: Arc<Semaphore>,
    idle: Mutex<Vec<ServerConn>>,
    /// ParameterStatus values of the most recent connection opened: what clients are told at
    /// login.
    params: RwLock<Option<ServerParams>>,
    upstream: Arc<UpstreamServer>,
}

impl Pool {
    pub fn key(&self) -> &PoolKey {
        &self.key
    }

    pub fn size(&self) -> usize {
        self.size
    }

    pub fn settings(&self) -> &PoolSettings {
        &self.settings
    }

    /// The remembered ParameterStatus list, once a server connection has been opened.
    pub fn params(&self) -> Option<ServerParams> {
        self.params
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn idle_count(&self) -> usize {
        self.lock_idle().len()
    }

    pub fn busy_count(&self) -> usize {
        self.size - self.checkout.available_permits()
    }

    fn lock_idle(&self) -> std::sync::MutexGuard<'_, Vec<ServerConn>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A server connection: an idle one if any (most recently used first), else a new one
    /// within the pool and upstream caps, else a FIFO wait up to the checkout timeout.
    pub async fn checkout(self: &Arc<Self>) -> Result<Checkout, PoolError> {
        let wait = self.settings.checkout_timeout;
        let deadline = tokio::time::Instant::now() + wait;
        let permit = tokio::time::timeout_at(deadline, self.checkout.clone().acquire_owned())
            .await
            .map_err(|_| PoolError::Timeout(wait))?
            .map_err(|_| PoolError::Timeout(wait))?;
        while let Some(conn) = self.take_idle() {
            if conn.is_clean() {
                return Ok(Checkout {
                    conn,
                    pool: self.clone(),
                    _permit: permit,
                });
            }
            tracing::debug!(pool = %self.key.addr, "dropping a stale idle connection");
        }
        let conn = self.open(Some(deadline)).await?;
        Ok(Checkout {
            conn,
            pool: self.clone(),
            _permit: permit,
        })
    }

    fn take_idle(&self) -> Option<ServerConn> {
        let mut idle = self.lock_idle();
        while let Some(conn) = idle.pop() {
            if conn.created.elapsed() < self.settings.max_lifetime {
                return Some(conn);
            }
        }
        None
    }

    /// Opens a connection, waiting for upstream capacity until `deadline` (or not at all).
    async fn open(&self, deadline: Option<tokio::time::Instant>) -> Result<ServerConn, PoolError> {
        let sem = self.upstream.open.clone();
        let up_permit = match sem.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                self.upstream.evict_one_idle(self);
                let Some(deadline) = deadline else {
                    return Err(PoolError::Timeout(Duration::ZERO));
                };
                tokio::time::timeout_at(deadline, sem.acquire_owned())
                    .await
                    .map_err(|_| PoolError::Timeout(self.settings.checkout_timeout))?
                    .map_err(|_| PoolError::Timeout(self.settings.checkout_timeout))?
            }
        };
        let login = Login {
            database: &self.key.database,
            role: &self.key.role,
            password: self.password.as_deref(),
        };
        let timeout = self.settings.connect_timeout;
        let mut conn = tokio::time::timeout(timeout, ServerConn::connect(&self.key.addr, &login))
            .await
            .map_err(|_| PoolError::ConnectTimeout(timeout))?
            .inspect_err(|e| tracing::warn!(upstream = %self.key.addr, db = %self.key.database, error = %e, "upstream connection failed"))?;
        conn._upstream_permit = Some(up_permit);
        *self.params.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(conn.vars.clone()));
        Ok(conn)
    }

    /// Closes idle connections past their idle timeout or lifetime, keeping `min_idle`
    /// (the most recently used ones), then opens connections up to `min_idle`.
    async fn maintain(&self) {
        let s = &self.settings;
        {
            let mut idle = self.lock_idle();
            let keep_from = idle.len().saturating_sub(s.min_idle);
            let mut i = 0;
            idle.retain(|c| {
                let kept = c.created.elapsed() < s.max_lifetime
                    && (i >= keep_from || c.idle_since.elapsed() < s.idle_timeout);
                i += 1;
                kept
            });
        }
        while self.idle_count() + self.busy_count() < s.min_idle {
            let Ok(_permit) = self.checkout.try_acquire() else {
                break;
            };
            match self.open(None).await {
                Ok(conn) => self.lock_idle().push(conn),
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
    conn: ServerConn,
    pool: Arc<Pool>,
    _permit: OwnedSemaphorePermit,
}

impl Checkout {
    pub fn conn(&mut self) -> &mut ServerConn {
        &mut self.conn
    }

    pub fn conn_ref(&self) -> &ServerConn {
        &self.conn
    }

    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// Returns an idle, clean connection to the pool.
    pub fn release(self) {
        let Checkout {
            mut conn,
            pool,
            _permit,
        } = self;
        if conn.created.elapsed() < pool.settings.max_lifetime {
            conn.idle_since = Instant::now();
            // Pushed before the permit drops, so a waiter woken by it finds the connection.
            pool.lock_idle().push(conn);
        }
    }
}

/// All pools, created on first use, keyed by upstream login.
pub struct PoolManager {
    pools: DashMap<PoolKey, Arc<Pool>>,
    upstreams: DashMap<Arc<str>, Arc<UpstreamServer>>,
    settings: PoolSettings,
}

impl PoolManager {
    pub fn new(defaults: &PoolDefaults) -> Arc<PoolManager> {
        Arc::new(PoolManager {
            pools: DashMap::new(),
            upstreams: DashMap::new(),
            settings: PoolSettings::from(defaults),
        })
    }

    /// Starts the maintenance task (idle reaping, min idle); it ends when the manager is
    /// dropped.
    pub fn spawn_maintenance(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let period = (self.settings.idle_timeout / 4)
            .clamp(Duration::from_millis(100), Duration::from_secs(5));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(mgr) = weak.upgrade() else { return };
                let pools: Vec<Arc<Pool>> = mgr.pools.iter().map(|p| p.value().clone()).collect();
                drop(mgr);
                for pool in pools {
                    pool.maintain().await;
                }
            }
        });
    }

    /// The pool for a tenant's upstream login, created on first use.
    pub fn pool_for(&self, tenant: &Tenant) -> Arc<Pool> {
        if let Some(p) = self.pools.get(&tenant.pool_key) {
            return p.value().clone();
        }
        let key = tenant.pool_key.clone();
        let upstream = self
            .upstreams
            .entry(tenant.upstream.clone())
            .or_insert_with(|| {
                Arc::new(UpstreamServer {
                    open: Arc::new(Semaphore::new(tenant.upstream_max)),
                    pools: Mutex::new(Vec::new()),
                })
            })
            .clone();
        self.pools
            .entry(key.clone())
            .or_insert_with(|| {
                let pool = Arc::new(Pool {
                    key,
                    password: tenant.password.clone(),
                    size: tenant.pool_size,
                    settings: self.settings.clone(),
                    checkout: Arc::new(Semaphore::new(tenant.pool_size)),
                    idle: Mutex::new(Vec::new()),
                    params: RwLock::new(None),
                    upstream: upstream.clone(),
                });
                upstream
                    .pools
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(Arc::downgrade(&pool));
                pool
            })
            .clone()
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
}
