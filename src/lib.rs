//! pgtenant: a tenant-routing proxy that speaks the PostgreSQL wire protocol.
//!
//! Map of the crate, in the order a client connection meets it:
//!
//! - [`server`]: the accept loop, the cap on connections logging in, shutdown and drain.
//! - [`proxy`]: the state every session shares (config, catalog, pools, cancel keys), the
//!   caps on logged-in clients (global and per tenant), and ending a tenant's sessions when
//!   the catalog says it stopped being active.
//! - [`listener`]: the listening socket (backlog), the open-file limit, accept backoff and
//!   once-per-interval logging.
//! - [`handover`]: the listening socket handed to the next instance in a rolling restart,
//!   and the link that carries the draining instance's cancels.
//! - [`protocol`]: frames (tag + length + original bytes), message tags typed by direction
//!   (`frontend::tag`, `backend::tag`), startup packets and the `options` splitter, the few
//!   typed messages pgtenant reads or writes, and the one place ErrorResponses are built
//!   (`PgError`'s named constructors; `ClientFacing`, through which each error enum picks
//!   its SQLSTATE and the text a client may see).
//! - [`client`]: one client session: TLS negotiation → handshake → resolve → authenticate →
//!   relay (reply queue, statement rewriting, session variables).
//! - [`tenant`]: the resolvers (pure functions over startup parameters and the server name).
//! - [`catalog`]: where tenants are looked up, behind a narrow interface: the control
//!   database (cache, pushed invalidation, encrypted secrets, TLS as its URL asks, opened one
//!   way by `catalog::link`) or the static TOML catalog; `catalog::store` holds the management
//!   statements against `pgtenant.*`.
//! - [`pool`]: upstream server connections: connect, authenticate, session state, pools, caps.
//! - [`auth`]: SCRAM-SHA-256 (server side for clients, client side for upstreams), TLS (to
//!   clients; client configurations for upstreams and the control database), failed-login
//!   throttling.
//! - [`cancel`]: pgtenant's own BackendKeyData and the map to upstream backends.
//! - [`instances`]: the instance registry: the instances serving one control database,
//!   their heartbeats, and where a cancel for another instance's key is forwarded.
//! - [`leases`]: the service-wide caps shared out between those instances (share arithmetic).
//! - [`lifecycle`]: tenant create / suspend / archive / restore / delete on the upstream
//!   and the catalog, and migrations across every tenant (CLI and HTTP fronts).
//! - [`console`]: the PgBouncer-compatible admin console (SHOW, PAUSE, RELOAD …) over the
//!   simple and the extended protocol, behind a narrow [`console::ConsoleSource`].
//! - [`metrics`]: per-tenant, per-pool and global counters recorded with atomic adds, the
//!   Prometheus exposition with bounded tenant cardinality, and per-minute usage for billing.
//! - [`report`]: off the data path: usage flushed to the control database every minute and at
//!   shutdown, and the periodic `stats:` log line.
//! - [`admin`]: the HTTP admin API (the lifecycle over JSON, health and readiness probes,
//!   its OpenAPI document) and how its bearer tokens are made and checked.
//! - [`model`]: domain types shared by config, catalog, pool and lifecycle and owned by none of
//!   them: tenant id, status, isolation, pool mode, client auth method, upstream address, TLS
//!   mode, `require_auth`, pool key.
//! - [`config`]: the TOML configuration, validated once.
//! - [`logging`]: the log subscriber, its level and format reloadable.
//! - [`reload`]: SIGHUP / `RELOAD`: the file re-read, swapped in whole, applied live.
//! - [`pgbin`]: where the PostgreSQL programs are installed.
//! - [`embedded`]: a throwaway PostgreSQL cluster, for `pgtenant demo` and the tests.
//! - [`cli`]: the command line (including `pgtenant admin token …`).
//! - [`sql`]: quoting of identifiers and literals, constant-time comparison.
//! - [`hash`]: keyed hashing for the maps of statement names on the per-message path.

pub mod admin;
pub mod auth;
pub mod cancel;
pub mod catalog;
pub mod cli;
pub mod client;
pub mod config;
pub mod console;
pub mod embedded;
pub mod handover;
pub mod hash;
pub mod instances;
pub mod leases;
pub mod lifecycle;
pub mod listener;
pub mod logging;
pub mod metrics;
pub mod model;
pub mod pgbin;
pub mod pool;
pub mod protocol;
pub mod proxy;
pub mod reload;
pub mod report;
pub mod server;
pub mod sql;
pub mod tenant;
