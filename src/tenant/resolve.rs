//! The resolver chain (DESIGN.md, "Tenant resolution"). Every enabled resolver runs; two that
//! name different tenants refuse the connection, naming both sources — never "first wins".

use crate::config::{ResolverConfig, ResolverKind, UserFormat};
use crate::protocol::startup::{option_words, StartupMessage};
use std::borrow::Cow;

use crate::protocol::error::{ClientFacing, ErrorKind};
use crate::protocol::SqlState;

use crate::model::{TenantId, TenantIdError};

/// Where a tenant id came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Sni,
    Options,
    User,
    ApplicationName,
    Database,
}

impl Source {
    fn describe(self) -> &'static str {
        match self {
            Source::Sni => "the TLS server name",
            Source::Options => "the options parameter",
            Source::User => "the user name",
            Source::ApplicationName => "application_name",
            Source::Database => "the database name",
        }
    }
}

/// What the resolvers found, and what changes before the connection goes upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub tenant: TenantId,
    pub source: Source,
    /// The client's role: the role part of `role.tenant`, else the whole user name (unless
    /// the user name was the tenant id itself).
    pub role: Option<String>,
    /// `options` with the `tenant=…` token removed, when the options resolver matched.
    pub options: Option<String>,
    /// The application_name to forward when the application_name resolver matched (the
    /// part after `/`, or empty).
    pub application_name: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResolveError {
    #[error("no tenant in the connection")]
    NoTenant { accepted: Vec<String> },
    #[error("invalid tenant id {shown:?} in {}: {reason}", .from.describe())]
    InvalidId { from: Source, shown: String, reason: TenantIdError },
    #[error("tenant {first:?} from {} conflicts with tenant {second:?} from {}", .first_source.describe(), .second_source.describe())]
    Conflict { first: String, first_source: Source, second: String, second_source: Source },
}

/// Every part of these texts comes from what the client sent (or the resolver names): the
/// Display is the client text.
impl ClientFacing for ResolveError {
    fn sqlstate(&self) -> SqlState {
        SqlState::InvalidAuthorization
    }

    fn client_text(&self) -> Cow<'_, str> {
        self.to_string().into()
    }

    fn kind(&self) -> ErrorKind {
        ErrorKind::Client
    }

    fn hint(&self) -> Option<Cow<'_, str>> {
        Some(match self {
            ResolveError::NoTenant { accepted } => {
                format!("name the tenant in one of these ways: {}", accepted.join("; ")).into()
            }
            ResolveError::Conflict { .. } => {
                Cow::Borrowed("name the tenant once, or the same way everywhere")
            }
            ResolveError::InvalidId { .. } => {
                Cow::Borrowed("tenant ids are lowercase letters, digits, '_' and '-', at most 48 characters")
            }
        })
    }
}

/// Runs the enabled resolvers over the startup parameters and the TLS server name.
pub fn resolve(
    startup: &StartupMessage,
    sni: Option<&str>,
    cfg: &ResolverConfig,
) -> Result<Resolved, ResolveError> {
    let user = startup.get("user").unwrap_or_default();
    let mut found: Option<(TenantId, Source)> = None;
    let mut role = None;
    let mut options = None;
    let mut application_name = None;
    for kind in &cfg.order {
        let (source, raw) = match kind {
            ResolverKind::Sni => {
                let Some(label) = sni.and_then(|name| sni_label(name, &cfg.sni_suffix)) else {
                    continue;
                };
                (Source::Sni, label.to_owned())
            }
            ResolverKind::Options => {
                let Some((tenant, rest)) = startup.get("options").and_then(options_tenant) else {
                    continue;
                };
                options = Some(rest);
                (Source::Options, tenant)
            }
            ResolverKind::User => match cfg.user_format {
                UserFormat::RoleTenant => {
                    let Some((r, tenant)) = user.rsplit_once(cfg.user_separator) else {
                        continue;
                    };
                    role = (!r.is_empty()).then(|| r.to_owned());
                    (Source::User, tenant.to_owned())
                }
                UserFormat::Tenant => (Source::User, user.to_owned()),
            },
            ResolverKind::ApplicationName => {
                let Some(rest) = startup.get("application_name").and_then(|a| a.strip_prefix("tenant:"))
                else {
                    continue;
                };
                let (tenant, app) = rest.split_once('/').unwrap_or((rest, ""));
                application_name = Some(app.to_owned());
                (Source::ApplicationName, tenant.to_owned())
            }
            ResolverKind::Database => {
                // libpq sends the user name when no database is given; so does Postgres' default.
                let db = startup.get("database").filter(|d| !d.is_empty()).unwrap_or(user);
                (Source::Database, db.to_owned())
            }
        };
        let id = TenantId::parse(&raw).map_err(|reason| ResolveError::InvalidId {
            from: source,
            shown: printable_prefix(&raw),
            reason,
        })?;
        match &found {
            Some((prev, prev_source)) if *prev != id => {
                return Err(ResolveError::Conflict {
                    first: prev.to_string(),
                    first_source: *prev_source,
                    second: id.to_string(),
                    second_source: source,
                })
            }
            Some(_) => {}
            None => found = Some((id, source)),
        }
    }
    let Some((tenant, source)) = found else {
        return Err(ResolveError::NoTenant { accepted: accepted_forms(cfg) });
    };
    if role.is_none() && !(cfg.user_format == UserFormat::Tenant && cfg.order.contains(&ResolverKind::User)) {
        role = (!user.is_empty() && !user.ends_with(cfg.user_separator)).then(|| user.to_owned());
    }
    Ok(Resolved { tenant, source, role, options, application_name })
}

/// `acme.db.example.com` with suffix `db.example.com` → `acme` (exactly one label).
fn sni_label<'a>(name: &'a str, suffix: &str) -> Option<&'a str> {
    if suffix.is_empty() {
        return None;
    }
    let name = name.strip_suffix('.').unwrap_or(name);
    let label = name.strip_suffix(suffix)?.strip_suffix('.')?;
    (!label.contains('.')).then_some(label)
}

/// Finds a `tenant=<id>` word in `options` and returns it with the options that remain.
/// Words are separated by unescaped spaces, as libpq splits them.
fn options_tenant(options: &str) -> Option<(String, String)> {
    let words: Vec<&str> = option_words(options).collect();
    let hit = words.iter().position(|w| w.starts_with("tenant="))?;
    let tenant = words[hit]["tenant=".len()..].to_owned();
    let rest: Vec<&str> = words.iter().enumerate().filter(|(i, _)| *i != hit).map(|(_, w)| *w).collect();
    Some((tenant, rest.join(" ")))
}

fn accepted_forms(cfg: &ResolverConfig) -> Vec<String> {
    cfg.order
        .iter()
        .filter_map(|k| match k {
            ResolverKind::Sni if cfg.sni_suffix.is_empty() => None,
            ResolverKind::Sni => Some(format!("TLS server name <tenant>.{}", cfg.sni_suffix)),
            ResolverKind::Options => Some("options 'tenant=<tenant>'".to_owned()),
            ResolverKind::User => Some(match cfg.user_format {
                UserFormat::RoleTenant => format!("user <role>{}<tenant>", cfg.user_separator),
                UserFormat::Tenant => "user <tenant>".to_owned(),
            }),
            ResolverKind::ApplicationName => Some("application_name tenant:<tenant>[/<app>]".to_owned()),
            ResolverKind::Database => Some("dbname <tenant>".to_owned()),
        })
        .collect()
}

/// A bounded, printable rendering of untrusted text for error messages.
fn printable_prefix(s: &str) -> String {
    let mut out: String = s.chars().take(64).map(|c| if c.is_control() { '?' } else { c }).collect();
    if s.chars().count() > 64 {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn startup(params: &[(&str, &str)]) -> StartupMessage {
        StartupMessage {
            major: 3,
            minor: 0,
            params: params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        }
    }

    fn all_on() -> ResolverConfig {
        let mut c = ResolverConfig { sni_suffix: "db.example.com".into(), ..ResolverConfig::default() };
        c.order.push(ResolverKind::Database);
        c
    }

    #[test]
    fn resolver_table() {
        let default = ResolverConfig { sni_suffix: "db.example.com".into(), ..ResolverConfig::default() };
        let long = "a".repeat(10_000);
        let long_user = format!("app.{long}");
        // (params, sni, Ok(tenant) or Err(kind))
        type Case<'a> = (Vec<(&'a str, &'a str)>, Option<&'a str>, Result<&'a str, &'a str>);
        let cases: Vec<Case> = vec![
            (vec![("user", "app.acme")], None, Ok("acme")),
            (vec![("user", "a.b.acme")], None, Ok("acme")),
            (vec![("user", "app.acme-2_x")], None, Ok("acme-2_x")),
            (vec![("user", "acme")], None, Err("none")),
            (vec![("user", "app.")], None, Err("invalid")),
            (vec![("user", "")], None, Err("none")),
            (vec![("user", "app.ACME")], None, Err("invalid")),
            (vec![("user", "app.'acme'")], None, Err("invalid")),
            (vec![("user", "app.ac\0me")], None, Err("invalid")),
            (vec![("user", "app..")], None, Err("invalid")),
            (vec![("user", "app.-x")], None, Err("invalid")),
            (vec![("user", "app.ácme")], None, Err("invalid")),
            (vec![("user", &long_user)], None, Err("invalid")),
            (vec![("user", "app"), ("options", "tenant=acme")], None, Ok("acme")),
            (vec![("user", "app"), ("options", "-c work_mem=1MB tenant=acme")], None, Ok("acme")),
            (vec![("user", "app"), ("options", "tenant=")], None, Err("invalid")),
            (vec![("user", "app"), ("application_name", "tenant:acme")], None, Ok("acme")),
            (vec![("user", "app"), ("application_name", "tenant:acme/billing")], None, Ok("acme")),
            (vec![("user", "app"), ("application_name", "psql")], None, Err("none")),
            (vec![("user", "app")], Some("acme.db.example.com"), Ok("acme")),
            (vec![("user", "app")], Some("acme.db.example.com."), Ok("acme")),
            (vec![("user", "app")], Some("x.acme.db.example.com"), Err("none")),
            (vec![("user", "app")], Some("acme.other.com"), Err("none")),
            (vec![("user", "app")], Some("db.example.com"), Err("none")),
            (vec![("user", "app.acme")], Some("acme.db.example.com"), Ok("acme")),
            (vec![("user", "app.acme")], Some("globex.db.example.com"), Err("conflict")),
            (vec![("user", "app.acme"), ("options", "tenant=globex")], None, Err("conflict")),
            (vec![("user", "app.acme"), ("application_name", "tenant:globex")], None, Err("conflict")),
            (
                vec![("user", "app.acme"), ("options", "tenant=acme"), ("application_name", "tenant:acme/x")],
                None,
                Ok("acme"),
            ),
            (vec![("user", "app"), ("database", "acme")], None, Err("none")),
        ];
        for (params, sni, want) in cases {
            let got = resolve(&startup(&params), sni, &default);
            match (&got, want) {
                (Ok(r), Ok(t)) => assert_eq!(r.tenant.as_str(), t, "{params:?} {sni:?}"),
                (Err(e), Err(kind)) => {
                    let matches = matches!(
                        (e, kind),
                        (ResolveError::NoTenant { .. }, "none")
                            | (ResolveError::InvalidId { .. }, "invalid")
                            | (ResolveError::Conflict { .. }, "conflict")
                    );
                    assert!(matches, "{params:?} {sni:?}: got {e:?}, want {kind}");
                    let pg = crate::protocol::PgError::report(e);
                    assert_eq!(pg.state, SqlState::InvalidAuthorization);
                    assert!(pg.message.len() < 400, "huge message for {params:?}");
                    assert!(!pg.message.contains('\0'));
                }
                _ => panic!("{params:?} {sni:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn database_resolver_when_enabled() {
        let cfg = all_on();
        let r = resolve(&startup(&[("user", "app"), ("database", "acme")]), None, &cfg).expect("db");
        assert_eq!((r.tenant.as_str(), r.source), ("acme", Source::Database));
        let e = resolve(&startup(&[("user", "app.acme"), ("database", "globex")]), None, &cfg)
            .expect_err("conflict");
        let msg = crate::protocol::PgError::report(&e).message;
        assert!(msg.contains("the user name") && msg.contains("the database name"), "{msg}");
    }

    #[test]
    fn forwarded_values_are_rewritten() {
        let cfg = ResolverConfig::default();
        let r = resolve(
            &startup(&[("user", "app"), ("options", "-c work_mem=1MB tenant=acme --search_path=x")]),
            None,
            &cfg,
        )
        .expect("options");
        assert_eq!(r.options.as_deref(), Some("-c work_mem=1MB --search_path=x"));
        assert_eq!(r.role.as_deref(), Some("app"));
        let r = resolve(
            &startup(&[("user", "app"), ("application_name", "tenant:acme/billing-worker")]),
            None,
            &cfg,
        )
        .expect("app name");
        assert_eq!(r.application_name.as_deref(), Some("billing-worker"));
        let r = resolve(&startup(&[("user", "svc.acme")]), None, &cfg).expect("user");
        assert_eq!((r.role.as_deref(), r.options, r.application_name), (Some("svc"), None, None));
    }

    #[test]
    fn user_format_tenant_and_separator() {
        let cfg = ResolverConfig { user_format: UserFormat::Tenant, ..ResolverConfig::default() };
        let r = resolve(&startup(&[("user", "acme")]), None, &cfg).expect("whole user");
        assert_eq!((r.tenant.as_str(), r.role.as_deref()), ("acme", None));
        let cfg = ResolverConfig { user_separator: '@', ..ResolverConfig::default() };
        let r = resolve(&startup(&[("user", "app@acme")]), None, &cfg).expect("separator");
        assert_eq!(r.tenant.as_str(), "acme");
    }

    #[test]
    fn no_tenant_hint_lists_the_enabled_forms() {
        let cfg = ResolverConfig { sni_suffix: "db.example.com".into(), ..ResolverConfig::default() };
        let e = resolve(&startup(&[("user", "postgres")]), None, &cfg).expect_err("none");
        let hint = crate::protocol::PgError::report(&e).hint.unwrap_or_default();
        for form in ["user <role>.<tenant>", "options 'tenant=<tenant>'", "tenant:<tenant>", "db.example.com"]
        {
            assert!(hint.contains(form), "{hint}");
        }
    }
}
