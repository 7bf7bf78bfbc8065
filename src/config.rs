//! Configuration: one TOML file (documented in `config/pgtenant.toml`), validated once at
//! load into an immutable [`Config`] shared behind an `Arc`.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::model::{AuthMethod, Isolation, PoolMode, RequireAuth, SslMode, TenantId, TenantStatus};

mod observe;
pub use observe::{LogConfig, MetricsConfig, UsageConfig};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The i/o error is part of the message, not a `source`: a chain printer (`{:#}`)
    /// would print it twice.
    #[error("cannot read {path}: {error}")]
    Read { path: PathBuf, error: std::io::Error },
    #[error("invalid configuration: {0}")]
    Parse(#[from] toml::de::Error),
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// The whole file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub proxy: ProxyConfig,
    #[serde(default)]
    pub pool: PoolDefaults,
    #[serde(default)]
    pub resolver: ResolverConfig,
    #[serde(default)]
    pub catalog: CatalogConfig,
    #[serde(default)]
    pub tls: TlsConfig,
    #[serde(default)]
    pub lifecycle: LifecycleConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub usage: UsageConfig,
    #[serde(default)]
    pub log: LogConfig,
    /// Upstream PostgreSQL servers tenants live on.
    #[serde(default, rename = "upstreams")]
    pub upstreams: Vec<UpstreamConfig>,
    /// The static tenant catalog.
    #[serde(default, rename = "tenants")]
    pub tenants: Vec<TenantConfig>,
}

/// `[proxy]`: the listener and what applies to every client.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProxyConfig {
    /// Address clients connect to.
    pub listen: SocketAddr,
    /// Tokio worker threads: 1 = a single-threaded runtime; 0 = automatic (single-threaded
    /// on two cores or fewer, one per core above).
    pub workers: usize,
    /// Logged-in client connections at once; past it a client that has authenticated gets
    /// 53300. Clients still logging in do not count (see `max_prelogin_connections`).
    pub max_client_conn: usize,
    /// Connections not logged in yet (TLS, startup packet, authentication) held at once. Past
    /// it a new connection is sent a short 53300 ErrorResponse (without reading anything) and
    /// closed at once, so silent or slow sockets can neither take the places of logged-in
    /// clients nor pile up beyond this; each one gets `startup_timeout` at most.
    pub max_prelogin_connections: usize,
    /// Pending connections the kernel queues for the listener before pgtenant accepts them
    /// (`listen(2)` backlog; capped by `net.core.somaxconn`).
    pub listen_backlog: u32,
    /// Largest message a client may send, in bytes (Postgres' own limit is just under 1 GiB).
    pub max_message_size: usize,
    /// Bytes all clients together may hold of large messages pgtenant reads whole (Query,
    /// Parse, Bind …: over 256 KiB, which each client buffers as a matter of course). A
    /// message whose bytes would pass it (taken as they arrive, never from its header ahead
    /// of them) ends its client's session with 53200, so clients sending huge queries at once
    /// cannot grow the process by `max_message_size` each. Copy data and other messages that
    /// stream through never count. Applied at start (a reload keeps the running value).
    pub large_message_memory: usize,
    /// What one tenant's clients together may hold of `large_message_memory` (default: half
    /// of it), so that one tenant's large messages never leave none for the others: past it
    /// a message gets 53200 as past the whole. Applied at start, as `large_message_memory`.
    pub large_message_memory_per_tenant: Option<usize>,
    /// Seconds a client has from TCP connect to a finished login (TLS, startup packet,
    /// authentication): the deadline of every connection not logged in yet.
    pub startup_timeout: f64,
    /// Seconds in-flight transactions get to finish after SIGTERM/SIGINT, before every
    /// remaining client is closed with 57P01.
    pub shutdown_timeout: f64,
    /// Client authentication for tenants that do not set their own: `trust` (logged loudly
    /// at start) or `scram-sha-256`.
    pub auth: AuthMethod,
    /// Log format: `human` or `json` (a reload applies a change).
    pub log_format: LogFormat,
    /// Log level, as `RUST_LOG` spells it (`info`, `debug`, `info,pgtenant=debug` …); ""
    /// = `RUST_LOG`, else `info`. A reload applies a change.
    pub log_level: String,
    /// Failed authentications per tenant and source address per minute before further
    /// attempts from that address to that tenant are refused at once (0: no limit). An
    /// attempt counts from the moment its password exchange starts until it succeeds.
    pub max_auth_failures: u32,
    /// The key of the mock SCRAM verifiers shown for unknown tenants and users (their salt
    /// is an HMAC of the tenant and user names under it). Set the same long random string on
    /// every proxy behind one address, so an unknown name gets the same salt from each of
    /// them and after restarts, as a real user does. "" = a random key per process.
    pub mock_secret: String,
    /// This instance's id in the instance registry (with a control database): "" = a random
    /// id per start. Instances on one control database need distinct ids.
    pub instance_id: String,
    /// The `host:port` other instances forward cancel requests to: "" = the bound listen
    /// address (fine unless that is 0.0.0.0 / :: or behind NAT).
    pub advertise: String,
    /// Seconds between instance-registry heartbeats; an instance silent for three intervals
    /// is dropped from the registry by its peers.
    pub heartbeat_interval: f64,
    /// Listen with SO_REUSEPORT, so that a new instance can bind the same address while the
    /// old one drains (rolling restarts). Off by default: two instances started on one
    /// port by mistake would otherwise share it silently.
    pub reuse_port: bool,
    /// A Unix socket path for rolling restarts (`crate::handover`): a new instance started
    /// with the same path takes the listening socket over from the running one, which then
    /// drains; its clients' cancels still reach it. "" = off.
    pub handover: String,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 6432)),
            workers: 0,
            max_client_conn: 10_000,
            max_prelogin_connections: 10_000,
            listen_backlog: 1024,
            max_message_size: crate::protocol::frame::DEFAULT_MAX_MESSAGE,
            large_message_memory: 1 << 30,
            large_message_memory_per_tenant: None,
            startup_timeout: 10.0,
            shutdown_timeout: 30.0,
            auth: AuthMethod::Trust,
            log_format: LogFormat::Human,
            log_level: String::new(),
            max_auth_failures: 20,
            mock_secret: String::new(),
            instance_id: String::new(),
            advertise: String::new(),
            heartbeat_interval: 3.0,
            reuse_port: false,
            handover: String::new(),
        }
    }
}

impl ProxyConfig {
    /// `large_message_memory_per_tenant`, or half of `large_message_memory` when not set.
    pub fn large_message_memory_per_tenant(&self) -> usize {
        self.large_message_memory_per_tenant.unwrap_or(self.large_message_memory / 2)
    }
}

/// `[[tenants.users]]`: a client credential of one tenant.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// The role part of `role.tenant` (or the whole user name with other resolvers).
    pub name: String,
    /// A SCRAM-SHA-256 verifier, as `pgtenant hash-password` prints it.
    pub verifier: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Human,
    Json,
}

/// `[pool]`: defaults for every pool; tenants override mode and size.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PoolDefaults {
    pub mode: PoolMode,
    /// Server connections per pool (one pool per upstream login).
    pub size: usize,
    /// Idle server connections kept open per pool once it has been used.
    pub min_idle: usize,
    /// Seconds a client waits for a server connection before 53300.
    pub checkout_timeout: f64,
    /// Seconds to open and authenticate an upstream connection before 08006.
    pub connect_timeout: f64,
    /// Seconds an idle server connection is kept.
    pub idle_timeout: f64,
    /// Seconds after which a server connection is closed when next released.
    pub max_lifetime: f64,
    /// Run when a session-mode client leaves, and on a transaction-mode server connection
    /// whose session state a client changed, before it is reused; `random()` is reseeded
    /// behind it (see `pool::handoff::queue_reseed`).
    pub reset_query: String,
    /// Server connections pgtenant opens in total, across all upstreams.
    pub max_server_connections: usize,
    /// In transaction mode, what a client that starts a session-level feature (LISTEN,
    /// temporary tables, WITH HOLD cursors) gets: `pin` (it keeps its server connection for
    /// the rest of its session) or `refuse` (0A000).
    pub session_features: SessionFeatures,
    /// Fair share of shared pools (PgBouncer's names; seconds, 0 = off; a tenant may
    /// override each). A query running longer is cancelled and its client disconnected
    /// (57014).
    pub query_timeout: f64,
    /// A client idle inside a transaction (holding a server connection) longer is
    /// disconnected (25P03); its transaction rolls back.
    pub idle_transaction_timeout: f64,
    /// A client idle outside a transaction longer is disconnected (57P05).
    pub client_idle_timeout: f64,
    /// A client that does not read what pgtenant writes to it for this long is disconnected
    /// (its server connection is closed), so it cannot hold a shared connection by not
    /// reading its results.
    pub client_write_timeout: f64,
    /// The most PBKDF2 iterations an upstream may ask for in its SCRAM exchange (PostgreSQL
    /// uses 4096 by default); a server asking for more is refused (08006 to the client, the
    /// reason in the log). The computation runs off the async workers, one per core at most.
    pub max_scram_iterations: u32,
    /// Tenant affinity in transaction mode (seconds, 0 = off): when clients of other tenants
    /// wait for a shared pool, a client whose transaction ended keeps its server connection
    /// this long for its next one, so the connection does not pass to another tenant — and
    /// pay the cross-tenant reset — after every transaction. At most `affinity_transactions`
    /// transactions in a row, and no new hold once 50 ms passed since the connection's
    /// checkout; then the connection goes to the next waiter.
    pub affinity_hold: f64,
    pub affinity_transactions: u8,
}

/// A tenant's overrides of the `[pool]` timeouts (seconds, 0 = off).
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TenantTimeouts {
    pub query_timeout: Option<f64>,
    pub idle_transaction_timeout: Option<f64>,
    pub client_idle_timeout: Option<f64>,
    pub client_write_timeout: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionFeatures {
    Pin,
    Refuse,
}

impl Default for PoolDefaults {
    fn default() -> Self {
        PoolDefaults {
            mode: PoolMode::Transaction,
            size: 20,
            min_idle: 0,
            checkout_timeout: 5.0,
            connect_timeout: 5.0,
            idle_timeout: 600.0,
            max_lifetime: 3600.0,
            reset_query: "DISCARD ALL".to_owned(),
            max_server_connections: 1000,
            session_features: SessionFeatures::Pin,
            query_timeout: 0.0,
            idle_transaction_timeout: 0.0,
            client_idle_timeout: 0.0,
            client_write_timeout: 60.0,
            max_scram_iterations: crate::model::DEFAULT_MAX_SCRAM_ITERATIONS,
            affinity_hold: 0.002,
            affinity_transactions: 32,
        }
    }
}

/// `[tls]`: TLS for clients. Without a certificate, SSLRequest is answered `N`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain (leaf first); empty: TLS off.
    pub cert: String,
    /// PEM private key of that certificate.
    pub key: String,
    /// Refuse plaintext clients (28000 with a hint).
    pub require: bool,
    /// More certificates, chosen by the client's server name (SNI): `acme.<suffix>` gets the
    /// one whose suffix matches (e.g. a wildcard certificate per suffix).
    pub certs: Vec<SniCertConfig>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SniCertConfig {
    pub suffix: String,
    pub cert: String,
    pub key: String,
}

/// `[catalog]`: where tenants are looked up. With a `url`, the control database is the
/// catalog and `[[tenants]]`/`[[upstreams]]` are ignored; without one, they are the catalog.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CatalogConfig {
    /// Connection string of the control database (libpq key=value or a postgresql:// URI).
    pub url: String,
    /// Seconds a looked-up tenant is served from memory before it is fetched again (a NOTIFY
    /// drops it sooner).
    pub cache_ttl: f64,
    /// Seconds an unknown tenant is remembered as unknown.
    pub negative_ttl: f64,
    /// Tenants kept in memory at most.
    pub cache_size: usize,
    /// Seconds a catalog query may take before the control database counts as unreachable.
    pub lookup_timeout: f64,
    /// Connections to the control database for lookups.
    pub pool_size: usize,
    /// Lookups per second that one client address (an IPv6 /64) may send to the control
    /// database for tenants not in the cache, with a burst of one second's worth (0: no
    /// limit). Past it the connection fails as for an unknown tenant, so a client cycling
    /// through made-up tenant ids costs the control database at most this.
    pub lookup_rate_per_address: f64,
    /// File of master keys (`<id>:<base64 of 32 bytes>` lines, current key first) that
    /// encrypt upstream login passwords in the catalog; `PGTENANT_MASTER_KEYS` overrides it.
    pub key_file: String,
}

impl Default for CatalogConfig {
    fn default() -> Self {
        CatalogConfig {
            url: String::new(),
            cache_ttl: 60.0,
            negative_ttl: 2.0,
            cache_size: 100_000,
            lookup_timeout: 2.0,
            pool_size: 4,
            lookup_rate_per_address: 20.0,
            key_file: String::new(),
        }
    }
}

/// `[lifecycle]`: what `pgtenant tenant create` and `pgtenant migrate` (and the HTTP API)
/// apply to tenants.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LifecycleConfig {
    /// Directory of tenant migrations, `V<number>__<name>.sql`, applied in version order to
    /// every tenant ("" = none). A file whose first line is `-- pgtenant:no-transaction` runs
    /// outside a transaction (for CREATE INDEX CONCURRENTLY and the like).
    pub migrations: String,
    /// Directory of seed files (`*.sql`, applied in name order once, when a tenant is
    /// created, after the migrations; `current_setting('pgtenant.tenant_id')` names the
    /// tenant) ("" = none).
    pub seeds: String,
    /// Tenants migrated at once by `pgtenant migrate` and `POST /migrate`.
    pub parallel: Option<usize>,
}

/// `[admin]`: the HTTP admin API (off unless `listen` is set).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Address of the HTTP admin API, e.g. `127.0.0.1:8432` ("" = off).
    pub listen: String,
    /// SHA-256 hex digests of bearer tokens accepted besides those in the control database's
    /// `pgtenant.admin_tokens` (`pgtenant admin token-hash` prints one).
    pub token_sha256: Vec<String>,
    /// Console users (database `pgbouncer` or `pgtenant` on the proxy's port) with every
    /// right, PgBouncer's `admin_users`. Their passwords come from `[[admin.users]]`; without
    /// an entry there they can log in only when `[proxy] auth` is `trust`. Names the config
    /// does not know are looked up in the control database's `pgtenant.console_users`.
    pub admin_users: Vec<String>,
    /// Console users that may only SHOW, PgBouncer's `stats_users`.
    pub stats_users: Vec<String>,
    /// Console users with a credential.
    pub users: Vec<ConsoleUserConfig>,
}

/// `[[admin.users]]`: one console user.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleUserConfig {
    pub name: String,
    /// A SCRAM-SHA-256 verifier (`SCRAM-SHA-256$…`, as `pgtenant hash-password` prints it).
    #[serde(default)]
    pub verifier: String,
    /// The name of an environment variable holding the password (used when `verifier` is
    /// empty; hashed once at start).
    #[serde(default)]
    pub password_env: String,
    /// `admin` (every command) or `stats` (SHOW only).
    #[serde(default = "ConsoleRole::stats")]
    pub role: ConsoleRole,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConsoleRole {
    Admin,
    Stats,
}

impl ConsoleRole {
    fn stats() -> ConsoleRole {
        ConsoleRole::Stats
    }

    /// The role as `pgtenant.console_users.role` and the config spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            ConsoleRole::Admin => "admin",
            ConsoleRole::Stats => "stats",
        }
    }

    /// Parses [`ConsoleRole::as_str`]'s spelling (exactly: the column's CHECK allows no other).
    pub fn parse(s: &str) -> Option<ConsoleRole> {
        match s {
            "admin" => Some(ConsoleRole::Admin),
            "stats" => Some(ConsoleRole::Stats),
            _ => None,
        }
    }
}

/// `[resolver]`: how the tenant is found in a connection. Every enabled resolver runs; two
/// that name different tenants refuse the connection.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResolverConfig {
    /// Enabled resolvers, in the order errors name them. `database` is off by default.
    pub order: Vec<ResolverKind>,
    /// `role.tenant` (split at the last separator) or `tenant` (the whole user name).
    pub user_format: UserFormat,
    /// Separator of the `role.tenant` format.
    pub user_separator: char,
    /// The `sni` resolver maps `acme.<sni_suffix>` to tenant `acme`; empty disables it.
    pub sni_suffix: String,
}

impl Default for ResolverConfig {
    fn default() -> Self {
        ResolverConfig {
            order: vec![
                ResolverKind::Sni,
                ResolverKind::Options,
                ResolverKind::User,
                ResolverKind::ApplicationName,
            ],
            user_format: UserFormat::RoleTenant,
            user_separator: '.',
            sni_suffix: String::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResolverKind {
    Sni,
    Options,
    User,
    ApplicationName,
    Database,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum UserFormat {
    #[serde(rename = "role.tenant")]
    RoleTenant,
    #[serde(rename = "tenant")]
    Tenant,
}

/// `[[upstreams]]`: a PostgreSQL server.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    pub name: String,
    /// A host name or IP, or a directory holding the server's Unix socket (starts with `/`).
    pub host: String,
    #[serde(default = "default_pg_port")]
    pub port: u16,
    /// Server connections pgtenant opens to this server across all pools.
    #[serde(default = "default_upstream_max")]
    pub max_connections: usize,
    /// TLS to this server, as libpq's sslmode: disable, prefer (default), require,
    /// verify-ca, verify-full.
    #[serde(default)]
    pub sslmode: SslMode,
    /// CA file (PEM) for verify-ca / verify-full.
    #[serde(default)]
    pub sslrootcert: Option<String>,
    /// The authentication methods this server may use, as libpq's `require_auth`: a
    /// comma-separated list of `scram-sha-256`, `md5`, `password` (cleartext), `none`. A
    /// server asking for anything else is refused. Unset: `scram-sha-256`, plus `none` when
    /// the login has no password or the server is reached over a Unix socket.
    #[serde(default)]
    pub require_auth: Option<RequireAuth>,
}

fn default_pg_port() -> u16 {
    5432
}

fn default_upstream_max() -> usize {
    100
}

/// `[[tenants]]`: one tenant of the static catalog.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// Lowercase `[a-z0-9][a-z0-9_-]{0,47}`.
    pub id: String,
    /// Name of an `[[upstreams]]` entry.
    pub upstream: String,
    /// The tenant's database on that upstream.
    pub database: String,
    /// The login role pgtenant uses upstream for this tenant.
    pub role: String,
    /// That role's password, if the upstream asks for one.
    #[serde(default)]
    pub password: Option<String>,
    /// Overrides `[pool] mode`.
    #[serde(default)]
    pub pool_mode: Option<PoolMode>,
    /// Overrides `[pool] size`.
    #[serde(default)]
    pub pool_size: Option<usize>,
    /// Only `active` tenants connect.
    #[serde(default = "default_status")]
    pub status: TenantStatus,
    /// `database` (its own database), `schema` (its own schema in a shared database) or
    /// `shared` (shared tables, `pgtenant.tenant_id` set for row-level security).
    #[serde(default = "default_isolation")]
    pub isolation: Isolation,
    /// The tenant's schema in `schema` isolation (default: the tenant id).
    #[serde(default)]
    pub schema: Option<String>,
    /// In `schema` isolation, put `public` on the search_path after the tenant's schema.
    #[serde(default)]
    pub search_path_public: bool,
    /// Server connections this tenant may hold at once, across its pools (default: the
    /// pool size).
    #[serde(default)]
    pub max_server_connections: Option<usize>,
    /// Client connections this tenant may have open at once (default: no limit).
    #[serde(default)]
    pub max_clients: Option<usize>,
    /// Overrides `[proxy] auth` for this tenant.
    #[serde(default)]
    pub auth: Option<AuthMethod>,
    /// Client credentials (SCRAM verifiers).
    #[serde(default)]
    pub users: Vec<UserConfig>,
    /// Overrides of the `[pool]` timeouts: `query_timeout`, `idle_transaction_timeout`,
    /// `client_idle_timeout`, `client_write_timeout`.
    #[serde(default, flatten)]
    pub timeouts: TenantTimeouts,
}

impl TenantConfig {
    /// A tenant on upstream `upstream` with everything else at its default.
    pub fn new(id: &str, upstream: &str, database: &str, role: &str, password: Option<&str>) -> Self {
        TenantConfig {
            id: id.to_owned(),
            upstream: upstream.to_owned(),
            database: database.to_owned(),
            role: role.to_owned(),
            password: password.map(str::to_owned),
            pool_mode: None,
            pool_size: None,
            status: TenantStatus::Active,
            isolation: Isolation::Database,
            schema: None,
            search_path_public: false,
            max_server_connections: None,
            max_clients: None,
            auth: None,
            users: Vec::new(),
            timeouts: TenantTimeouts::default(),
        }
    }
}

fn default_status() -> TenantStatus {
    TenantStatus::Active
}

fn default_isolation() -> Isolation {
    Isolation::Database
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|error| ConfigError::Read { path: path.to_owned(), error })?;
        Config::parse(&text)
    }

    /// The configuration `serve` runs with (and a reload re-reads): the file, with
    /// `PGTENANT_CATALOG_URL` (when set and not empty) in place of its `[catalog] url`, as
    /// the other commands take it.
    pub fn load_for_serve(path: &Path) -> Result<Config, ConfigError> {
        let mut config = Config::load(path)?;
        if let Some(url) = std::env::var("PGTENANT_CATALOG_URL").ok().filter(|u| !u.is_empty()) {
            config.catalog.url = url;
        }
        Ok(config)
    }

    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks the whole configuration (what `parse` does after reading it).
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        self.usage.check().and_then(|()| self.log.check()).map_err(ConfigError::Invalid)?;
        let p = &self.pool;
        for (name, v) in [
            ("proxy.startup_timeout", self.proxy.startup_timeout),
            ("proxy.shutdown_timeout", self.proxy.shutdown_timeout),
            ("proxy.heartbeat_interval", self.proxy.heartbeat_interval),
            ("pool.checkout_timeout", p.checkout_timeout),
            ("pool.connect_timeout", p.connect_timeout),
            ("pool.idle_timeout", p.idle_timeout),
            ("pool.max_lifetime", p.max_lifetime),
            ("catalog.cache_ttl", self.catalog.cache_ttl),
            ("catalog.negative_ttl", self.catalog.negative_ttl),
            ("catalog.lookup_timeout", self.catalog.lookup_timeout),
        ] {
            if !(v.is_finite() && v > 0.0 && v < 1e9) {
                return bad(format!("{name} must be a positive number of seconds, got {v}"));
            }
        }
        if p.size == 0 || p.min_idle > p.size {
            return bad(format!("pool.size must be ≥ 1 and ≥ pool.min_idle ({})", p.min_idle));
        }
        if self.catalog.cache_size == 0 || self.catalog.pool_size == 0 {
            return bad("catalog.cache_size and catalog.pool_size must be ≥ 1".into());
        }
        if !(p.affinity_hold.is_finite() && (0.0..=1.0).contains(&p.affinity_hold)) {
            return bad(format!(
                "pool.affinity_hold must be between 0 and 1 second, got {}",
                p.affinity_hold
            ));
        }
        if p.affinity_transactions == 0 {
            return bad("pool.affinity_transactions must be ≥ 1".into());
        }
        if p.max_scram_iterations == 0 {
            return bad("pool.max_scram_iterations must be ≥ 1".into());
        }
        if p.max_server_connections == 0 {
            return bad("pool.max_server_connections must be ≥ 1".into());
        }
        if self.proxy.max_client_conn == 0 {
            return bad("proxy.max_client_conn must be ≥ 1".into());
        }
        if self.proxy.max_prelogin_connections == 0 || self.proxy.listen_backlog == 0 {
            return bad("proxy.max_prelogin_connections and proxy.listen_backlog must be ≥ 1".into());
        }
        let rate = self.catalog.lookup_rate_per_address;
        if !(rate.is_finite() && rate >= 0.0) {
            return bad(format!("catalog.lookup_rate_per_address must be ≥ 0 (0: no limit), got {rate}"));
        }
        if self.proxy.max_message_size < 1024 {
            return bad("proxy.max_message_size must be at least 1024 bytes".into());
        }
        for h in &self.admin.token_sha256 {
            let h = h.trim();
            if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
                return bad(format!(
                    "[admin] token_sha256: {h:?} is not a SHA-256 in hex (64 hex digits; `pgtenant admin token-hash` prints one)"
                ));
            }
        }
        if !self.proxy.log_level.is_empty() {
            if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.proxy.log_level) {
                return bad(format!("proxy.log_level {:?}: {e}", self.proxy.log_level));
            }
        }
        let mut names = HashSet::new();
        for u in &self.upstreams {
            if !names.insert(u.name.as_str()) {
                return bad(format!("upstream {:?} is declared twice", u.name));
            }
            if u.max_connections == 0 {
                return bad(format!("upstream {:?}: max_connections must be ≥ 1", u.name));
            }
        }
        let mut ids = HashSet::new();
        for t in &self.tenants {
            if let Err(e) = TenantId::parse(&t.id) {
                return bad(format!("tenant {:?}: {e}", t.id));
            }
            if !ids.insert(t.id.as_str()) {
                return bad(format!("tenant {:?} is declared twice", t.id));
            }
            if !names.contains(t.upstream.as_str()) {
                return bad(format!("tenant {:?}: unknown upstream {:?}", t.id, t.upstream));
            }
            if t.pool_size == Some(0) || t.max_server_connections == Some(0) || t.max_clients == Some(0) {
                return bad(format!(
                    "tenant {:?}: pool_size, max_server_connections and max_clients must be ≥ 1",
                    t.id
                ));
            }
        }
        Ok(())
    }
}

/// Seconds from the config as a Duration (validated positive and finite at load).
pub fn secs(v: f64) -> Duration {
    Duration::from_secs_f64(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_run_and_bad_values_are_refused() {
        let c = Config::parse("").expect("empty config is valid");
        assert_eq!(c.proxy.listen.port(), 6432);
        assert_eq!(c.pool.mode, PoolMode::Transaction);
        for bad in [
            "[pool]\nsize = 0",
            "[pool]\ncheckout_timeout = -1",
            "[pool]\naffinity_hold = 2",
            "[pool]\naffinity_hold = -0.1",
            "[pool]\naffinity_transactions = 0",
            "[proxy]\nbogus = 1",
            "[proxy]\nmax_prelogin_connections = 0",
            "[proxy]\nlisten_backlog = 0",
            "[catalog]\nlookup_rate_per_address = -1",
            "[[tenants]]\nid='a'\nupstream='nope'\ndatabase='d'\nrole='r'",
            "[[upstreams]]\nname='u'\nhost='h'\n[[tenants]]\nid='Bad!'\nupstream='u'\ndatabase='d'\nrole='r'",
            "[[upstreams]]\nname='u'\nhost='h'\nrequire_auth='scram-sha-256,kerberos'",
            "[[upstreams]]\nname='u'\nhost='h'\nrequire_auth=''",
            "[pool]\nmax_scram_iterations = 0",
        ] {
            assert!(Config::parse(bad).is_err(), "accepted: {bad}");
        }
    }

    #[test]
    fn console_roles_parse_as_they_are_spelled() {
        for role in [ConsoleRole::Admin, ConsoleRole::Stats] {
            assert_eq!(ConsoleRole::parse(role.as_str()), Some(role));
        }
        for bad in ["", "Admin", "root", "stats "] {
            assert_eq!(ConsoleRole::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn require_auth_and_its_default() {
        let c = Config::parse("[[upstreams]]\nname='u'\nhost='h'\nrequire_auth='md5, none'").expect("config");
        let r = c.upstreams[0].require_auth.expect("set");
        assert_eq!(r.to_string(), "md5,none");
        assert!(r.md5 && r.none && !r.scram_sha_256 && !r.password);
        assert_eq!(c.pool.max_scram_iterations, 100_000);
        // Unset: SCRAM only for a password login over TCP; `none` too without a password or
        // over a Unix socket.
        assert_eq!(RequireAuth::default_for(true, false).to_string(), "scram-sha-256");
        assert_eq!(RequireAuth::default_for(false, false).to_string(), "scram-sha-256,none");
        assert_eq!(RequireAuth::default_for(true, true).to_string(), "scram-sha-256,none");
    }
}
