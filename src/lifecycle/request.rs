//! What callers ask the lifecycle for: a new tenant, a change to one, a migration run.

use serde::Deserialize;

use crate::model::{AuthMethod, Isolation, LoginKind, PoolMode};

/// A first client credential created with the tenant.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    pub name: String,
    pub password: String,
}

/// What `create` is asked for. Only `id` is required.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    pub id: String,
    /// Default `database`.
    pub isolation: Option<Isolation>,
    /// The catalog upstream; default: the only one there is.
    pub upstream: Option<String>,
    /// The tenant's database (`database` isolation, default: the id) or the database its
    /// schema / rows live in (default: `tenants`, created if missing).
    pub database: Option<String>,
    /// `schema` isolation: the schema (default: the id).
    pub schema: Option<String>,
    /// Default `per_tenant` for database and schema isolation, `shared` for shared.
    pub login: Option<LoginKind>,
    /// The role: required with a shared login, default the id with a per-tenant one.
    pub login_role: Option<String>,
    /// The shared role's password (stored encrypted); per-tenant roles get a random one.
    pub login_password: Option<String>,
    /// `database` isolation: CREATE DATABASE … TEMPLATE this.
    pub template: Option<String>,
    pub pool_mode: Option<PoolMode>,
    pub pool_size: Option<u32>,
    pub max_server_connections: Option<u32>,
    pub max_clients: Option<u32>,
    pub auth: Option<AuthMethod>,
    pub search_path_public: Option<bool>,
    /// Run the seed files (default true).
    pub seed: Option<bool>,
    pub user: Option<NewUser>,
}

/// The settings `update` may change (PATCH): pool and client limits, auth.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateTenant {
    pub pool_mode: Option<PoolMode>,
    pub pool_size: Option<u32>,
    pub max_server_connections: Option<u32>,
    pub max_clients: Option<u32>,
    pub auth: Option<AuthMethod>,
    pub search_path_public: Option<bool>,
}

/// How a migration run goes.
#[derive(Debug, Clone, Default)]
pub struct MigrateOptions {
    /// These tenants; empty = every active or suspended tenant.
    pub tenants: Vec<String>,
    /// Tenants migrated at once (0 = the configured default).
    pub parallel: usize,
    pub dry_run: bool,
    /// Start no further tenant after the first failure.
    pub stop_on_failure: bool,
}
