//! Where tenants are looked up, behind the narrow [`Catalog`] interface: the control
//! database ([`control`], with its cache and pushed invalidation) or the static catalog from
//! the TOML file.

pub mod cache;
pub mod control;
pub mod limit;
pub mod link;
pub mod migrations;
pub mod secrets;
pub mod store;
pub mod store_instances;

pub use control::{Change, ControlCatalog};
pub use store::console_users::ConsoleCredential;

use std::borrow::Cow;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::config::Config;
use crate::model::{
    AuthMethod, Isolation, PoolKey, PoolMode, RequireAuth, TenantId, TenantStatus, UpstreamAddr, UpstreamTls,
};
use crate::protocol::error::{ClientFacing, ErrorKind};
use crate::protocol::{PgError, SqlState};
use crate::sql::quote_ident;

/// Everything the proxy needs to route one tenant.
#[derive(Debug, Clone)]
pub struct Tenant {
    pub id: TenantId,
    pub status: TenantStatus,
    pub isolation: Isolation,
    /// The tenant's schema (`schema` isolation).
    pub schema: Option<String>,
    /// `public` follows the tenant's schema on the search_path.
    pub search_path_public: bool,
    /// Name of the upstream server (caps are per upstream).
    pub upstream: Arc<str>,
    pub addr: UpstreamAddr,
    /// Connections pgtenant may open to that upstream, across all pools.
    pub upstream_max: usize,
    pub database: String,
    pub login_role: String,
    pub password: Option<String>,
    /// The authentication methods the upstream may use for this login (its `require_auth`,
    /// or the default for the login: see [`RequireAuth`]).
    pub require_auth: RequireAuth,
    pub pool_mode: PoolMode,
    pub pool_size: usize,
    /// Server connections the tenant may hold at once across its pools.
    pub max_server_connections: usize,
    /// Whether `max_server_connections` was set for the tenant (then it holds for all
    /// instances together: [`crate::leases`]); else it is the pool size, per instance.
    pub max_server_connections_set: bool,
    /// Client connections the tenant may have open at once.
    pub max_clients: Option<usize>,
    /// Client authentication, when the tenant overrides the proxy's.
    pub auth: Option<AuthMethod>,
    /// Client credentials: user name → SCRAM verifier.
    pub users: HashMap<String, String>,
    /// The upstream login this tenant's pool is keyed by (built once: looked up per login).
    pub pool_key: PoolKey,
    /// What every server connection must carry for this tenant: `search_path` (schema
    /// isolation) or `pgtenant.tenant_id` (shared isolation).
    pub session_vars: Vec<(String, String)>,
    /// The tenant's overrides of the `[pool]` timeouts.
    pub timeouts: crate::config::TenantTimeouts,
}

/// The parts a catalog reads, before the derived fields are filled in.
pub struct TenantParts {
    pub id: TenantId,
    pub status: TenantStatus,
    pub isolation: Isolation,
    pub schema: Option<String>,
    pub search_path_public: bool,
    pub upstream: Arc<str>,
    pub addr: UpstreamAddr,
    pub upstream_max: usize,
    pub database: String,
    pub login_role: String,
    pub password: Option<String>,
    /// The upstream's `require_auth`; `None`: the default.
    pub require_auth: Option<RequireAuth>,
    pub pool_mode: PoolMode,
    pub pool_size: usize,
    pub max_server_connections: Option<usize>,
    pub max_clients: Option<usize>,
    pub auth: Option<AuthMethod>,
    pub users: HashMap<String, String>,
    pub timeouts: crate::config::TenantTimeouts,
}

impl Tenant {
    pub fn new(p: TenantParts) -> Tenant {
        let pool_key =
            PoolKey { addr: p.addr.clone(), database: p.database.clone(), role: p.login_role.clone() };
        let session_vars = match p.isolation {
            Isolation::Database => Vec::new(),
            Isolation::Schema => {
                let schema = p.schema.clone().unwrap_or_else(|| p.id.to_string());
                let mut path = quote_ident(&schema);
                if p.search_path_public {
                    path.push_str(", public");
                }
                vec![("search_path".to_owned(), path)]
            }
            Isolation::Shared => vec![("pgtenant.tenant_id".to_owned(), p.id.to_string())],
        };
        let unix = matches!(p.addr, UpstreamAddr::Unix { .. });
        let require_auth =
            p.require_auth.unwrap_or_else(|| RequireAuth::default_for(p.password.is_some(), unix));
        Tenant {
            require_auth,
            id: p.id,
            status: p.status,
            isolation: p.isolation,
            schema: p.schema,
            search_path_public: p.search_path_public,
            upstream: p.upstream,
            addr: p.addr,
            upstream_max: p.upstream_max,
            database: p.database,
            login_role: p.login_role,
            password: p.password,
            pool_mode: p.pool_mode,
            max_server_connections: p.max_server_connections.unwrap_or(p.pool_size),
            max_server_connections_set: p.max_server_connections.is_some(),
            pool_size: p.pool_size,
            max_clients: p.max_clients,
            auth: p.auth,
            users: p.users,
            pool_key,
            session_vars,
            timeouts: p.timeouts,
        }
    }

    /// Why this tenant may not connect, if it may not (DESIGN.md, "Errors the client sees").
    pub fn refusal(&self) -> Option<PgError> {
        let id = &self.id;
        match self.status {
            TenantStatus::Active => None,
            TenantStatus::Pending | TenantStatus::Suspended | TenantStatus::Migrating => {
                Some(PgError::tenant_not_active(id.as_str(), self.status.as_str()))
            }
            TenantStatus::Archived | TenantStatus::Deleted => {
                Some(PgError::tenant_gone(id.as_str(), self.status.as_str()))
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The cause is text because one lookup's result is shared by every client waiting for
    /// it (see `cache.rs`).
    #[error("tenant {tenant}: the control database is unreachable: {cause}")]
    Unavailable { tenant: TenantId, cause: String },
    /// Reading a console user failed (the login is refused as a wrong password would be).
    #[error("console users: the control database is unreachable: {0}")]
    ConsoleUsers(String),
}

impl ClientFacing for CatalogError {
    fn sqlstate(&self) -> SqlState {
        SqlState::UnableToConnect
    }

    fn client_text(&self) -> Cow<'_, str> {
        match self {
            CatalogError::Unavailable { tenant, .. } => {
                format!("cannot look up tenant \"{tenant}\": the control database is unreachable").into()
            }
            CatalogError::ConsoleUsers(_) => "the control database is unreachable".into(),
        }
    }

    fn kind(&self) -> ErrorKind {
        ErrorKind::Proxy
    }

    fn retryable(&self) -> bool {
        true
    }

    fn hides_cause(&self) -> bool {
        true
    }
}

pub type LookupFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Option<Arc<Tenant>>, CatalogError>> + Send + 'a>>;

/// What [`Catalog::console_user`] answers.
pub type ConsoleUserFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Option<ConsoleCredential>, CatalogError>> + Send + 'a>>;

/// Tenant lookup. `Ok(None)` means the tenant does not exist.
pub trait Catalog: Send + Sync + 'static {
    fn lookup<'a>(&'a self, id: &'a TenantId) -> LookupFuture<'a>;

    /// Console user `name` as the control database stores it (`pgtenant.console_users`), read
    /// anew on each call (once per console login, never on the data path: a user added or
    /// removed counts from the next login). `Ok(None)` for a catalog without a control
    /// database.
    fn console_user<'a>(&'a self, _name: &'a str) -> ConsoleUserFuture<'a> {
        Box::pin(std::future::ready(Ok(None)))
    }

    /// Whether looking `id` up now costs no new query to the control database: it is cached
    /// (known or unknown), or a lookup of it is in flight and would be joined. The per-address
    /// lookup limit applies only to lookups that are not free.
    fn lookup_is_free(&self, _id: &TenantId) -> bool {
        true
    }

    /// Tenants that changed, as they change (catalogs that can change at run time).
    fn changes(&self) -> Option<tokio::sync::broadcast::Receiver<Change>> {
        None
    }

    /// Whether the control database answers (its LISTEN connection is up); `None` for a
    /// catalog without one.
    fn control_up(&self) -> Option<bool> {
        None
    }

    /// `[pool] size` changed (reload, console `SET default_pool_size`): tenants without a
    /// size of their own take it. The static catalog is rebuilt whole by a reload instead.
    fn set_default_pool_size(&self, _size: usize) {}
}

/// Tenants declared in the TOML config; a reload swaps them whole ([`StaticCatalog::replace`]).
pub struct StaticCatalog {
    tenants: arc_swap::ArcSwap<HashMap<TenantId, Arc<Tenant>>>,
    /// Tenants a reload added, changed or removed, for the pools and the open sessions.
    changed: tokio::sync::broadcast::Sender<Change>,
}

impl StaticCatalog {
    /// Builds the catalog from a validated config (ids and upstream names already checked).
    pub fn from_config(config: &Config) -> StaticCatalog {
        StaticCatalog {
            tenants: arc_swap::ArcSwap::from_pointee(Self::tenants_of(config)),
            changed: tokio::sync::broadcast::channel(256).0,
        }
    }

    /// Puts the tenants of `config` in place of the current ones, at once for every new
    /// lookup, and announces each one added, changed or removed (pools resize, sessions of
    /// a tenant that stopped being active or was removed are ended). Returns those ids.
    pub fn replace(&self, config: &Config) -> Vec<TenantId> {
        let new = Self::tenants_of(config);
        let old = self.tenants.swap(Arc::new(new));
        let new = self.tenants.load();
        let mut changed: Vec<TenantId> = new
            .iter()
            .filter(|(id, t)| old.get(*id).is_none_or(|o| !same_tenant(o, t)))
            .map(|(id, _)| id.clone())
            .chain(old.keys().filter(|id| !new.contains_key(*id)).cloned())
            .collect();
        changed.sort();
        for id in &changed {
            // No receiver (nothing follows yet) is not an error.
            let _ = self.changed.send(Change::Tenant(id.clone()));
        }
        changed
    }

    fn tenants_of(config: &Config) -> HashMap<TenantId, Arc<Tenant>> {
        let mut tenants = HashMap::new();
        for t in &config.tenants {
            let (Ok(id), Some(up)) =
                (TenantId::parse(&t.id), config.upstreams.iter().find(|u| u.name == t.upstream))
            else {
                continue;
            };
            let tenant = Tenant::new(TenantParts {
                id: id.clone(),
                status: t.status,
                isolation: t.isolation,
                schema: t.schema.clone(),
                search_path_public: t.search_path_public,
                upstream: Arc::from(up.name.as_str()),
                addr: UpstreamAddr::with_tls(
                    &up.host,
                    up.port,
                    UpstreamTls { mode: up.sslmode, root_cert: up.sslrootcert.as_deref().map(Arc::from) },
                ),
                upstream_max: up.max_connections,
                database: t.database.clone(),
                login_role: t.role.clone(),
                password: t.password.clone(),
                require_auth: up.require_auth,
                pool_mode: t.pool_mode.unwrap_or(config.pool.mode),
                pool_size: t.pool_size.unwrap_or(config.pool.size),
                max_server_connections: t.max_server_connections,
                max_clients: t.max_clients,
                auth: t.auth,
                users: t.users.iter().map(|u| (u.name.clone(), u.verifier.clone())).collect(),
                timeouts: t.timeouts,
            });
            tenants.insert(id, Arc::new(tenant));
        }
        tenants
    }

    pub fn get(&self, id: &TenantId) -> Option<Arc<Tenant>> {
        self.tenants.load().get(id).cloned()
    }

    pub fn len(&self) -> usize {
        self.tenants.load().len()
    }

    pub fn is_empty(&self) -> bool {
        self.tenants.load().is_empty()
    }
}

/// Whether a reload left a tenant as it was: field by field, because `Tenant` is not
/// `PartialEq` (its derived fields follow from these; database and role are in `pool_key`).
fn same_tenant(a: &Tenant, b: &Tenant) -> bool {
    a.status == b.status
        && a.isolation == b.isolation
        && a.schema == b.schema
        && a.search_path_public == b.search_path_public
        && a.upstream == b.upstream
        && a.upstream_max == b.upstream_max
        && a.password == b.password
        && a.require_auth == b.require_auth
        && a.pool_mode == b.pool_mode
        && a.pool_size == b.pool_size
        && a.max_server_connections == b.max_server_connections
        && a.max_clients == b.max_clients
        && a.auth == b.auth
        && a.users == b.users
        && a.pool_key == b.pool_key
        && a.timeouts == b.timeouts
}

impl Catalog for StaticCatalog {
    fn lookup<'a>(&'a self, id: &'a TenantId) -> LookupFuture<'a> {
        let found = self.tenants.load().get(id).cloned();
        Box::pin(std::future::ready(Ok(found)))
    }

    fn changes(&self) -> Option<tokio::sync::broadcast::Receiver<Change>> {
        Some(self.changed.subscribe())
    }
}
