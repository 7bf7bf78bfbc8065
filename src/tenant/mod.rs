//! Tenant ids and the resolvers that find the tenant in a connection: pure functions over
//! the startup parameters, unit-tested over hostile input.
//!
//! Only the `user` resolver (`role.tenant`) exists so far; the chain (sni, options,
//! application_name, database) plugs in at [`resolve`].

use std::fmt;
use std::sync::Arc;

use crate::config::ResolverConfig;
use crate::protocol::startup::StartupMessage;
use crate::protocol::{PgError, SqlState};

/// Longest tenant id: 48 characters, so `tenant_<id>` and friends stay within Postgres'
/// 63-byte identifier limit.
pub const MAX_TENANT_ID: usize = 48;

/// A validated tenant id: lowercase `[a-z0-9][a-z0-9_-]{0,47}`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(Arc<str>);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TenantIdError {
    #[error("tenant id is empty")]
    Empty,
    #[error("tenant id is longer than {MAX_TENANT_ID} characters")]
    TooLong,
    #[error(
        "tenant id must be lowercase letters, digits, '_' or '-', starting with a letter or digit"
    )]
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
        let ok_rest = bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_' || *b == b'-');
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

/// What the resolvers found in a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub tenant: TenantId,
    /// The role part of `role.tenant`, when the user resolver matched.
    pub role: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResolveError {
    #[error("no tenant in the connection")]
    NoTenant,
    #[error("invalid tenant id {shown:?}: {reason}")]
    InvalidId {
        shown: String,
        reason: TenantIdError,
    },
}

impl ResolveError {
    pub fn to_client(&self) -> PgError {
        match self {
            ResolveError::NoTenant => PgError::fatal(
                SqlState::InvalidAuthorization,
                "no tenant in the connection",
            )
            .with_hint("connect as user \"role.tenant\", e.g. psql \"user=app.acme\""),
            ResolveError::InvalidId { shown, reason } => PgError::fatal(
                SqlState::InvalidAuthorization,
                format!("invalid tenant id \"{shown}\": {reason}"),
            ),
        }
    }
}

/// Runs the enabled resolvers over the startup parameters.
pub fn resolve(startup: &StartupMessage, cfg: &ResolverConfig) -> Result<Resolved, ResolveError> {
    let user = startup.get("user").unwrap_or_default();
    let Some((role, tenant)) = user.rsplit_once(cfg.user_separator) else {
        return Err(ResolveError::NoTenant);
    };
    let tenant = TenantId::parse(tenant).map_err(|reason| ResolveError::InvalidId {
        shown: printable_prefix(tenant),
        reason,
    })?;
    Ok(Resolved {
        tenant,
        role: (!role.is_empty()).then(|| role.to_owned()),
    })
}

/// A bounded, printable rendering of untrusted text for error messages.
fn printable_prefix(s: &str) -> String {
    let mut out: String = s
        .chars()
        .take(64)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if s.chars().count() > 64 {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn startup(user: &str) -> StartupMessage {
        StartupMessage {
            major: 3,
            minor: 0,
            params: vec![("user".into(), user.into())],
        }
    }

    #[test]
    fn user_resolver_table() {
        let cfg = ResolverConfig::default();
        let long = "a".repeat(10_000);
        type Want<'a> = Result<(&'a str, Option<&'a str>), ()>;
        let cases: Vec<(&str, Want)> = vec![
            ("app.acme", Ok(("acme", Some("app")))),
            ("a.b.acme", Ok(("acme", Some("a.b")))),
            (".acme", Ok(("acme", None))),
            ("app.acme-2_x", Ok(("acme-2_x", Some("app")))),
            ("acme", Err(())),
            ("app.", Err(())),
            ("app.ACME", Err(())),
            ("app.'acme'", Err(())),
            ("app.ac\0me", Err(())),
            ("app..", Err(())),
            ("app.-acme", Err(())),
            ("app.ácme", Err(())),
            ("", Err(())),
        ];
        for (user, want) in cases {
            let got = resolve(&startup(user), &cfg);
            match (got, want) {
                (Ok(r), Ok((t, role))) => {
                    assert_eq!(
                        (r.tenant.as_str(), r.role.as_deref()),
                        (t, role),
                        "{user:?}"
                    )
                }
                (Err(e), Err(())) => {
                    let pg = e.to_client();
                    assert_eq!(pg.state, SqlState::InvalidAuthorization);
                    assert!(pg.message.len() < 300, "{user:?} gave a huge message");
                }
                (got, want) => panic!("{user:?}: got {got:?}, want {want:?}"),
            }
        }
        let e = resolve(&startup(&format!("app.{long}")), &cfg).expect_err("too long");
        assert!(e.to_client().message.len() < 300);
    }

    #[test]
    fn separator_is_configurable() {
        let cfg = ResolverConfig {
            user_separator: '@',
        };
        let r = resolve(&startup("app@acme"), &cfg).expect("resolves");
        assert_eq!(r.tenant.as_str(), "acme");
    }
}
