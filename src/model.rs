//! Domain types that configuration, catalog, pool and lifecycle share and none of them owns:
//! the tenant id; a tenant's status, isolation, pool mode and client authentication; where an
//! upstream lives, TLS to it and the authentication it may ask for; what a pool is keyed by.
//! Each parses from and prints as the text of the TOML file and the catalog's columns.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use serde::Deserialize;

/// The iteration count PostgreSQL uses by default (`scram_iterations`), and the default
/// cap's reference point: the cap (`[pool] max_scram_iterations`) is 100,000.
pub const DEFAULT_MAX_SCRAM_ITERATIONS: u32 = 100_000;

/// Longest tenant id: 48 characters, so `tenant_<id>` and friends stay within Postgres'
/// 63-byte identifier limit.
pub const MAX_TENANT_ID: usize = 48;

/// A validated tenant id: lowercase `[a-z0-9][a-z0-9_-]{0,47}`.
#[derive(Clone, Eq, PartialOrd, Ord)]
pub struct TenantId(Arc<str>);

/// As derived: the text's hash (equal ids, by pointer or by text, hash alike).
impl std::hash::Hash for TenantId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

/// Equal ids are usually the same allocation (cloned from the catalog's entry): compared by
/// pointer first, by text only when the pointers differ (a checkout compares its tenant with
/// the idle connections' and the connection's last tenant).
impl PartialEq for TenantId {
    #[inline]
    fn eq(&self, other: &TenantId) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0 == other.0
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TenantIdError {
    #[error("tenant id is empty")]
    Empty,
    #[error("tenant id is longer than {MAX_TENANT_ID} characters")]
    TooLong,
    #[error("tenant id must be lowercase letters, digits, '_' or '-', starting with a letter or digit")]
    BadCharacter,
}

impl TenantId {
    pub fn parse(s: &str) -> Result<TenantId, TenantIdError> {
        let bytes = s.as_bytes();
        let Some(first) = bytes.first() else {
            return Err(TenantIdError::Empty);
        };
        if bytes.len() > MAX_TENANT_ID {
            return Err(TenantIdError::TooLong);
        }
        let ok_first = first.is_ascii_lowercase() || first.is_ascii_digit();
        let ok_rest =
            bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_' || *b == b'-');
        if !(ok_first && ok_rest) {
            return Err(TenantIdError::BadCharacter);
        }
        Ok(TenantId(Arc::from(s)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TenantId({})", self.0)
    }
}

/// A tenant's lifecycle status (DESIGN.md, "Catalog").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TenantStatus {
    Pending,
    Active,
    Suspended,
    Migrating,
    Archived,
    Deleted,
}

impl TenantStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TenantStatus::Pending => "pending",
            TenantStatus::Active => "active",
            TenantStatus::Suspended => "suspended",
            TenantStatus::Migrating => "migrating",
            TenantStatus::Archived => "archived",
            TenantStatus::Deleted => "deleted",
        }
    }

    pub fn parse(s: &str) -> Option<TenantStatus> {
        [
            TenantStatus::Pending,
            TenantStatus::Active,
            TenantStatus::Suspended,
            TenantStatus::Migrating,
            TenantStatus::Archived,
            TenantStatus::Deleted,
        ]
        .into_iter()
        .find(|t| t.as_str() == s)
    }
}

impl fmt::Display for TenantStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a tenant's data is kept apart (DESIGN.md, "Isolation modes").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    Database,
    Schema,
    Shared,
}

impl Isolation {
    pub fn as_str(self) -> &'static str {
        match self {
            Isolation::Database => "database",
            Isolation::Schema => "schema",
            Isolation::Shared => "shared",
        }
    }

    pub fn parse(s: &str) -> Option<Isolation> {
        [Isolation::Database, Isolation::Schema, Isolation::Shared].into_iter().find(|i| i.as_str() == s)
    }
}

impl fmt::Display for Isolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// When a client's server connection goes back to the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolMode {
    /// A server connection is held from the first message that needs one until
    /// ReadyForQuery reports idle (`I`).
    Transaction,
    /// A server connection is held for the whole client session.
    Session,
}

impl PoolMode {
    pub fn as_str(self) -> &'static str {
        match self {
            PoolMode::Transaction => "transaction",
            PoolMode::Session => "session",
        }
    }

    pub fn parse(s: &str) -> Option<PoolMode> {
        [PoolMode::Transaction, PoolMode::Session].into_iter().find(|m| m.as_str() == s)
    }
}

/// How clients prove who they are to pgtenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuthMethod {
    /// Any client that names an active tenant is let in (local development only).
    Trust,
    /// SCRAM-SHA-256 against the verifiers stored for the tenant's users.
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    /// MD5 challenge-response, for old clients (opt-in): stored values are
    /// `md5` + md5(password + the client's user name as sent, e.g. `app.acme`).
    Md5,
}

impl AuthMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::Trust => "trust",
            AuthMethod::ScramSha256 => "scram-sha-256",
            AuthMethod::Md5 => "md5",
        }
    }

    pub fn parse(s: &str) -> Option<AuthMethod> {
        [AuthMethod::Trust, AuthMethod::ScramSha256, AuthMethod::Md5].into_iter().find(|m| m.as_str() == s)
    }
}

/// Whose login a tenant's server connections use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LoginKind {
    /// A role of the tenant's own, created with it, with rights on its database or schema
    /// only: the database enforces isolation.
    PerTenant,
    /// An existing role shared by many tenants (`login_role` + `login_password`): pgtenant
    /// switches search_path / the tenant setting per checkout.
    Shared,
}

impl LoginKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LoginKind::PerTenant => "per_tenant",
            LoginKind::Shared => "shared",
        }
    }

    pub fn parse(s: &str) -> Option<LoginKind> {
        [LoginKind::PerTenant, LoginKind::Shared].into_iter().find(|k| k.as_str() == s)
    }
}

/// An upstream server address, as libpq reads `host`: a path starting with `/` is the
/// directory of the server's Unix socket.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum UpstreamAddr {
    Tcp { host: Arc<str>, port: u16, tls: UpstreamTls },
    Unix { dir: Arc<str>, port: u16 },
}

/// TLS to an upstream: the mode and, for the verifying modes, the CA file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct UpstreamTls {
    pub mode: SslMode,
    pub root_cert: Option<Arc<str>>,
}

impl UpstreamAddr {
    pub fn new(host: &str, port: u16) -> Self {
        Self::with_tls(host, port, UpstreamTls::default())
    }

    pub fn with_tls(host: &str, port: u16, tls: UpstreamTls) -> Self {
        if host.starts_with('/') {
            UpstreamAddr::Unix { dir: Arc::from(host), port }
        } else {
            UpstreamAddr::Tcp { host: Arc::from(host), port, tls }
        }
    }

    /// Whether `other` is a clone of this address (its text in the same allocations): a few
    /// pointer comparisons, where `==` compares the text. False for an equal address made
    /// separately.
    pub fn is(&self, other: &UpstreamAddr) -> bool {
        let same = |a: &Arc<str>, b: &Arc<str>| Arc::ptr_eq(a, b);
        match (self, other) {
            (
                UpstreamAddr::Tcp { host: h1, port: p1, tls: t1 },
                UpstreamAddr::Tcp { host: h2, port: p2, tls: t2 },
            ) => {
                let certs = match (&t1.root_cert, &t2.root_cert) {
                    (None, None) => true,
                    (Some(a), Some(b)) => same(a, b),
                    _ => false,
                };
                same(h1, h2) && p1 == p2 && t1.mode == t2.mode && certs
            }
            (UpstreamAddr::Unix { dir: d1, port: p1 }, UpstreamAddr::Unix { dir: d2, port: p2 }) => {
                same(d1, d2) && p1 == p2
            }
            _ => false,
        }
    }

    /// `<dir>/.s.PGSQL.<port>`, the socket file Postgres creates.
    pub fn socket_path(dir: &str, port: u16) -> PathBuf {
        PathBuf::from(format!("{dir}/.s.PGSQL.{port}"))
    }
}

impl fmt::Display for UpstreamAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpstreamAddr::Tcp { host, port, .. } => write!(f, "{host}:{port}"),
            UpstreamAddr::Unix { dir, port } => write!(f, "{dir}/.s.PGSQL.{port}"),
        }
    }
}

impl fmt::Debug for UpstreamAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// How much TLS to insist on, as libpq's `sslmode`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    Disable,
    /// TLS if the server offers it, unverified.
    #[default]
    Prefer,
    /// TLS or nothing, unverified.
    Require,
    /// TLS with the server certificate checked against the CA file, any host name.
    VerifyCa,
    /// TLS with the certificate checked against the CA file and the host name.
    VerifyFull,
}

impl SslMode {
    /// libpq's name for the mode.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    pub fn parse(s: &str) -> Option<SslMode> {
        match s {
            "disable" => Some(SslMode::Disable),
            "prefer" => Some(SslMode::Prefer),
            "require" => Some(SslMode::Require),
            "verify-ca" => Some(SslMode::VerifyCa),
            "verify-full" => Some(SslMode::VerifyFull),
            _ => None,
        }
    }
}

/// Which authentication methods an upstream may use, as libpq's `require_auth`
/// (<https://www.postgresql.org/docs/current/libpq-connect.html#LIBPQ-CONNECT-REQUIRE-AUTH>):
/// a comma-separated list of `scram-sha-256`, `md5`, `password` (cleartext) and `none`
/// (the server asks for nothing: trust, peer). Negated entries (`!md5`) are not supported.
///
/// When an upstream sets none, the default is the safest that can work: `scram-sha-256`
/// for a login with a password over TCP (the server must prove, with its SCRAM final
/// message, that it holds the password's verifier; the password is never sent in a form the
/// server could reuse), plus `none` for a login without a password (there is nothing else it
/// could do) or over a Unix socket (reachable only through the file system).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RequireAuth {
    pub scram_sha_256: bool,
    pub md5: bool,
    pub password: bool,
    pub none: bool,
}

impl RequireAuth {
    /// The default described on the type.
    pub fn default_for(has_password: bool, unix_socket: bool) -> RequireAuth {
        RequireAuth { scram_sha_256: true, none: !has_password || unix_socket, ..RequireAuth::default() }
    }

    pub fn parse(s: &str) -> Result<RequireAuth, String> {
        let mut r = RequireAuth::default();
        for m in s.split(',').map(str::trim) {
            match m {
                "scram-sha-256" => r.scram_sha_256 = true,
                "md5" => r.md5 = true,
                "password" => r.password = true,
                "none" => r.none = true,
                other => {
                    return Err(format!(
                        "require_auth: unknown method {other:?} (use scram-sha-256, md5, password, none)"
                    ))
                }
            }
        }
        Ok(r)
    }
}

impl std::fmt::Display for RequireAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names = [
            (self.scram_sha_256, "scram-sha-256"),
            (self.md5, "md5"),
            (self.password, "password"),
            (self.none, "none"),
        ];
        let list: Vec<&str> = names.iter().filter(|(on, _)| *on).map(|(_, n)| *n).collect();
        f.write_str(&list.join(","))
    }
}

impl<'de> serde::Deserialize<'de> for RequireAuth {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        RequireAuth::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// What a pool is keyed by: one upstream login.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub addr: UpstreamAddr,
    pub database: String,
    pub role: String,
}

#[cfg(test)]
mod tests {
    use super::TenantId;
    use std::hash::BuildHasher;

    /// Equality by pointer or by text, and hashing by text, as the derived impls did.
    #[test]
    fn tenant_ids_compare_by_text_whatever_their_allocation() {
        let a = TenantId::parse("acme").expect("id");
        let same = a.clone();
        let copy = TenantId::parse("acme").expect("id");
        let other = TenantId::parse("acmf").expect("id");
        assert!(a == same && a == copy && copy == same);
        assert!(a != other && copy != other);
        let h = std::collections::hash_map::RandomState::new();
        assert_eq!(h.hash_one(&a), h.hash_one(&copy));
        assert_eq!(h.hash_one(&a), h.hash_one("acme"), "hashed as its text, as derived");
    }

    /// `is` holds for clones only: an equal address made apart, another port or TLS mode, or
    /// the other kind of socket is not it.
    #[test]
    fn an_upstream_address_is_only_its_clones() {
        use super::{SslMode, UpstreamAddr, UpstreamTls};
        let a = UpstreamAddr::new("db1", 5432);
        assert!(a.is(&a.clone()));
        let made_apart = UpstreamAddr::new("db1", 5432);
        assert!(a == made_apart && !a.is(&made_apart));
        let UpstreamAddr::Tcp { host, .. } = &a else { panic!("tcp") };
        let other_port = UpstreamAddr::Tcp { host: host.clone(), port: 5433, tls: UpstreamTls::default() };
        assert!(!a.is(&other_port));
        let tls = UpstreamTls { mode: SslMode::Require, root_cert: None };
        assert!(!a.is(&UpstreamAddr::Tcp { host: host.clone(), port: 5432, tls }));
        let unix = UpstreamAddr::new("/tmp", 5432);
        assert!(unix.is(&unix.clone()) && !unix.is(&a) && !a.is(&unix));
    }
}
