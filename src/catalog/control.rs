//! The control database as the catalog: lookups through a deadpool-postgres pool behind the
//! [`TenantCache`], and a LISTEN connection (reconnecting with backoff) that drops cached
//! tenants on NOTIFY and tells the proxy which tenants changed.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{stream, StreamExt};
use tokio::sync::broadcast;
use tokio_postgres::AsyncMessage;

use super::cache::TenantCache;
use super::link::ControlLink;
use super::secrets::{self, Keys};
use super::store;
use super::{migrations, Catalog, CatalogError, ConsoleUserFuture, LookupFuture, Tenant, TenantParts};
use crate::config::{secs, CatalogConfig, PoolDefaults};
use crate::model::{AuthMethod, Isolation, PoolMode, TenantId, TenantStatus};

/// The NOTIFY channel the catalog triggers use.
pub const CHANNEL: &str = "pgtenant_catalog";

/// What changed in the catalog.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Tenant(TenantId),
    /// Anything may have changed (an upstream row, or notifications were missed).
    All,
}

pub struct ControlCatalog {
    /// The control database, with TLS as its URL's sslmode / sslrootcert ask.
    link: ControlLink,
    pool: deadpool_postgres::Pool,
    cache: TenantCache,
    lookup_timeout: Duration,
    /// `[pool] size`, for tenants without a size of their own (a reload or the console's
    /// `SET default_pool_size` changes it: see [`Catalog::set_default_pool_size`]).
    default_pool_size: AtomicUsize,
    changes: broadcast::Sender<Change>,
    /// Catalog queries made (what the cache saved is what this does not count).
    fetches: AtomicUsize,
    listening: AtomicBool,
    /// Decrypt upstream login passwords.
    keys: Option<Keys>,
}

const LOOKUP_SQL: &str = "SELECT t.status, t.isolation, t.schema_name, t.search_path_public, t.upstream,
        u.host, u.port, u.max_connections, t.database, t.login_role, t.login_password, t.pool_mode,
        t.pool_size, t.max_server_connections, t.max_clients, t.auth, u.sslmode, u.sslrootcert,
        u.require_auth
   FROM pgtenant.tenants t JOIN pgtenant.upstreams u ON u.name = t.upstream
  WHERE t.id = $1";

impl ControlCatalog {
    /// Connects, applies the catalog migrations, and starts listening for changes.
    pub async fn start(cfg: &CatalogConfig, defaults: &PoolDefaults) -> anyhow::Result<Arc<ControlCatalog>> {
        let link = ControlLink::parse(&cfg.url).map_err(|e| anyhow::anyhow!("[catalog] url: {e}"))?;
        let manager = deadpool_postgres::Manager::new(link.config.clone(), link.tls.clone());
        let pool = deadpool_postgres::Pool::builder(manager).max_size(cfg.pool_size).build()?;
        let keys = secrets::load(&cfg.key_file).map_err(anyhow::Error::msg)?;
        let catalog = Arc::new(ControlCatalog {
            link,
            pool,
            cache: TenantCache::new(secs(cfg.cache_ttl), secs(cfg.negative_ttl), cfg.cache_size),
            lookup_timeout: secs(cfg.lookup_timeout),
            default_pool_size: AtomicUsize::new(defaults.size),
            changes: broadcast::channel(1024).0,
            fetches: AtomicUsize::new(0),
            listening: AtomicBool::new(false),
            keys,
        });
        catalog.migrate().await?;
        tokio::spawn(listen(Arc::downgrade(&catalog)));
        Ok(catalog)
    }

    /// Applies the catalog migrations; returns the versions applied now.
    pub async fn migrate(&self) -> anyhow::Result<Vec<i32>> {
        let mut client = self.link.open().await?;
        Ok(migrations::migrate(&mut client).await?)
    }

    /// Catalog queries made so far.
    pub fn fetches(&self) -> usize {
        self.fetches.load(Ordering::Relaxed)
    }

    /// Whether the LISTEN connection is up.
    pub fn listening(&self) -> bool {
        self.listening.load(Ordering::Relaxed)
    }

    async fn fetch(&self, id: &TenantId) -> Result<Option<Arc<Tenant>>, String> {
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let query = async {
            let client = self.pool.get().await.map_err(|e| e.to_string())?;
            client.query_opt(LOOKUP_SQL, &[&id.as_str()]).await.map_err(|e| e.to_string())
        };
        let users = async {
            let client = self.pool.get().await.map_err(|e| e.to_string())?;
            client
                .query(
                    "SELECT username, verifier FROM pgtenant.tenant_users WHERE tenant_id = $1",
                    &[&id.as_str()],
                )
                .await
                .map_err(|e| e.to_string())
        };
        let users = tokio::time::timeout(self.lookup_timeout, users)
            .await
            .map_err(|_| format!("no answer within {:?}", self.lookup_timeout))??;
        let row = tokio::time::timeout(self.lookup_timeout, query)
            .await
            .map_err(|_| format!("no answer within {:?}", self.lookup_timeout))??;
        let Some(row) = row else { return Ok(None) };
        let status: String = row.get(0);
        let isolation: String = row.get(1);
        let pool_mode: String = row.get(11);
        let count = |i: usize| row.get::<_, Option<i32>>(i).and_then(|n| usize::try_from(n).ok());
        let stored: Option<String> = row.get(10);
        let password = match stored.map(|s| secrets::reveal(self.keys.as_ref(), &s)).transpose() {
            Ok(Some((p, plaintext))) => {
                if plaintext && self.keys.is_some() {
                    tracing::warn!(tenant = %id, "plaintext upstream password in the catalog: run `pgtenant catalog rotate-key`");
                }
                Some(p)
            }
            Ok(None) => None,
            Err(e) => return Err(format!("tenant {id}: the upstream password: {e}")),
        };
        let (addr, require_auth) = store::upstream_target(&row, [5, 6, 16, 17, 18]);
        let tenant = Tenant::new(TenantParts {
            id: id.clone(),
            status: TenantStatus::parse(&status).ok_or_else(|| format!("bad status {status:?}"))?,
            isolation: Isolation::parse(&isolation).ok_or_else(|| format!("bad isolation {isolation:?}"))?,
            schema: row.get(2),
            search_path_public: row.get(3),
            upstream: Arc::from(row.get::<_, String>(4).as_str()),
            addr,
            upstream_max: count(7).unwrap_or(100),
            database: row.get(8),
            login_role: row.get(9),
            password,
            require_auth,
            pool_mode: PoolMode::parse(&pool_mode).unwrap_or(PoolMode::Transaction),
            pool_size: count(12).unwrap_or(self.default_pool_size.load(Ordering::Relaxed)),
            max_server_connections: count(13),
            max_clients: count(14),
            auth: row.get::<_, Option<String>>(15).as_deref().and_then(AuthMethod::parse),
            users: users.iter().map(|r| (r.get(0), r.get(1))).collect(),
            // Per-tenant timeouts live in the static catalog only for now: the `[pool]` ones apply.
            timeouts: Default::default(),
        });
        Ok(Some(Arc::new(tenant)))
    }
}

impl Catalog for ControlCatalog {
    fn control_up(&self) -> Option<bool> {
        Some(self.listening())
    }

    fn console_user<'a>(&'a self, name: &'a str) -> ConsoleUserFuture<'a> {
        Box::pin(async move {
            let read = async {
                let client = self.pool.get().await.map_err(|e| e.to_string())?;
                store::console_users::console_user(&**client, name).await.map_err(|e| e.to_string())
            };
            tokio::time::timeout(self.lookup_timeout, read)
                .await
                .map_err(|_| format!("no answer within {:?}", self.lookup_timeout))
                .and_then(|r| r)
                .map_err(CatalogError::ConsoleUsers)
        })
    }

    fn lookup<'a>(&'a self, id: &'a TenantId) -> LookupFuture<'a> {
        Box::pin(self.cache.get(id, move || self.fetch(id)))
    }

    fn lookup_is_free(&self, id: &TenantId) -> bool {
        self.cache.lookup_is_free(id)
    }

    fn changes(&self) -> Option<broadcast::Receiver<Change>> {
        Some(self.changes.subscribe())
    }

    fn set_default_pool_size(&self, size: usize) {
        if self.default_pool_size.swap(size, Ordering::Relaxed) != size {
            // Cached tenants carry the old default: looked up again, and their pools resized.
            self.cache.invalidate_all();
            let _ = self.changes.send(Change::All);
        }
    }
}

/// Keeps a LISTEN connection open, reconnecting with backoff; each notification drops the
/// tenant from the cache and is passed on. Ends when the catalog is dropped.
async fn listen(catalog: std::sync::Weak<ControlCatalog>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let Some(cat) = catalog.upgrade() else { return };
        let link = cat.link.clone();
        drop(cat);
        match link.connect().await {
            Ok((client, mut conn)) => {
                let mut messages = stream::poll_fn(move |cx| conn.poll_message(cx));
                let sql = format!("LISTEN {CHANNEL}");
                let listen = client.batch_execute(&sql);
                let ok = tokio::select! {
                    r = listen => r.is_ok(),
                    _ = messages.next() => false,
                };
                if ok {
                    let Some(cat) = catalog.upgrade() else { return };
                    // Notifications sent while we were away are lost: forget everything.
                    cat.cache.invalidate_all();
                    cat.listening.store(true, Ordering::Relaxed);
                    let _ = cat.changes.send(Change::All);
                    drop(cat);
                    tracing::info!("listening for catalog changes");
                    backoff = Duration::from_millis(100);
                    while let Some(Ok(msg)) = messages.next().await {
                        let AsyncMessage::Notification(n) = msg else { continue };
                        let Some(cat) = catalog.upgrade() else { return };
                        let change = match TenantId::parse(n.payload()) {
                            Ok(id) => {
                                cat.cache.invalidate(&id);
                                Change::Tenant(id)
                            }
                            Err(_) => {
                                cat.cache.invalidate_all();
                                Change::All
                            }
                        };
                        let _ = cat.changes.send(change);
                    }
                }
                drop(client);
                // A catalog already dropped (the proxy shutting down) lost nothing.
                let Some(cat) = catalog.upgrade() else { return };
                cat.listening.store(false, Ordering::Relaxed);
                drop(cat);
                tracing::warn!("lost the catalog LISTEN connection; reconnecting");
            }
            Err(e) => tracing::warn!(error = %e, ?backoff, "cannot reach the control database"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}
