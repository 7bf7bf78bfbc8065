//! Where tenants are looked up, behind the narrow [`Catalog`] interface. The static catalog
//! (tenants from the TOML file) is the only implementation so far; the control database
//! implements the same trait.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::config::{Config, PoolMode};
use crate::pool::{PoolKey, UpstreamAddr};
use crate::tenant::TenantId;

/// Everything the proxy needs to route one tenant.
#[derive(Debug, Clone)]
pub struct Tenant {
    pub id: TenantId,
    /// Name of the upstream server (caps are per upstream).
    pub upstream: Arc<str>,
    pub addr: UpstreamAddr,
    /// Connections pgtenant may open to that upstream, across all pools.
    pub upstream_max: usize,
    pub database: String,
    pub login_role: String,
    pub password: Option<String>,
    pub pool_mode: PoolMode,
    pub pool_size: usize,
    /// The upstream login this tenant's pool is keyed by (built once: looked up per login).
    pub pool_key: PoolKey,
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("the control database is unreachable: {0}")]
    Unavailable(String),
}

pub type LookupFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Option<Arc<Tenant>>, CatalogError>> + Send + 'a>>;

/// Tenant lookup. `Ok(None)` means the tenant does not exist.
pub trait Catalog: Send + Sync + 'static {
    fn lookup<'a>(&'a self, id: &'a TenantId) -> LookupFuture<'a>;
}

/// Tenants declared in the TOML config.
pub struct StaticCatalog {
    tenants: HashMap<TenantId, Arc<Tenant>>,
}

impl StaticCatalog {
    /// Builds the catalog from a validated config (ids and upstream names already checked).
    pub fn from_config(config: &Config) -> StaticCatalog {
        let mut tenants = HashMap::new();
        for t in &config.tenants {
            let (Ok(id), Some(up)) = (
                TenantId::parse(&t.id),
                config.upstreams.iter().find(|u| u.name == t.upstream),
            ) else {
                continue;
            };
            let addr = UpstreamAddr::new(&up.host, up.port);
            let pool_key = PoolKey {
                addr: addr.clone(),
                database: t.database.clone(),
                role: t.role.clone(),
            };
            let tenant = Tenant {
                id: id.clone(),
                upstream: Arc::from(up.name.as_str()),
                addr,
                upstream_max: up.max_connections,
                database: t.database.clone(),
                login_role: t.role.clone(),
                password: t.password.clone(),
                pool_mode: t.pool_mode.unwrap_or(config.pool.mode),
                pool_size: t.pool_size.unwrap_or(config.pool.size),
                pool_key,
            };
            tenants.insert(id, Arc::new(tenant));
        }
        StaticCatalog { tenants }
    }

    pub fn len(&self) -> usize {
        self.tenants.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tenants.is_empty()
    }
}

impl Catalog for StaticCatalog {
    fn lookup<'a>(&'a self, id: &'a TenantId) -> LookupFuture<'a> {
        let found = self.tenants.get(id).cloned();
        Box::pin(std::future::ready(Ok(found)))
    }
}
