//! pgtenant: a tenant-routing proxy that speaks the PostgreSQL wire protocol.
//!
//! Map of the crate, in the order a client connection meets it:
//!
//! - [`server`]: the accept loop, the caps on clients logging in and logged in, shutdown
//!   and drain.
//! - [`listener`]: the listening socket (backlog), the open-file limit, accept backoff and
//!   once-per-interval logging.
//! - [`protocol`]: frames (tag + length + original bytes), startup packets, the few typed
//!   messages pgtenant reads or writes, and the one place ErrorResponses are built.
//! - [`client`]: one client session: TLS negotiation → handshake → resolve → authenticate →
//!   relay (reply queue, statement rewriting, session variables).
//! - [`tenant`]: tenant ids and the resolvers (pure functions over startup parameters).
//! - [`catalog`]: where tenants are looked up, behind a narrow interface: the control
//!   database (cache, pushed invalidation, encrypted secrets, TLS as its URL asks) or the
//!   static TOML catalog.
//! - [`pool`]: upstream server connections: connect, authenticate, session state, pools, caps.
//! - [`auth`]: SCRAM-SHA-256 (server side for clients, client side for upstreams), TLS,
//!   failed-login throttling.
//! - [`cancel`]: pgtenant's own BackendKeyData and the map to upstream backends.
//! - [`lifecycle`]: tenant create / suspend / archive / restore / delete on the upstream
//!   and the catalog, and migrations across every tenant (CLI and HTTP fronts).
//! - [`admin`]: the HTTP admin API (the lifecycle over JSON, health and readiness probes,
//!   its OpenAPI document) and its bearer tokens.
//! - [`config`]: the TOML configuration, validated once.
//! - [`embedded`]: a throwaway PostgreSQL cluster, for `pgtenant demo` and the tests.
//! - [`cli`]: the command line.
//! - [`sql`]: quoting of identifiers and literals, constant-time comparison.

pub mod admin;
pub mod auth;
pub mod cancel;
pub mod catalog;
pub mod cli;
pub mod client;
pub mod config;
pub mod embedded;
pub mod lifecycle;
pub mod listener;
pub mod model;
pub mod pgbin;
pub mod pool;
pub mod protocol;
pub mod server;
pub mod sql;
pub mod tenant;
