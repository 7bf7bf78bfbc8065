//! Live reload (SIGHUP, the console's `RELOAD`): re-read the whole configuration file, refuse
//! it whole if it is invalid, else swap it in and apply what can change while running; what
//! cannot (the listen address, worker threads …) is reported as needing a restart.

use std::fmt;
use std::sync::Arc;

use crate::config::{Config, ConfigError};
use crate::pool::PoolSettings;
use crate::proxy::Proxy;

/// What a reload changed, and what it could not change without a restart.
#[derive(Debug, Default, Clone)]
pub struct ReloadReport {
    /// Settings now in force (e.g. `pool.size`, `tenants`, `tls`).
    pub applied: Vec<String>,
    /// Settings changed in the file that keep their old value until a restart.
    pub restart_needed: Vec<String>,
}

impl fmt::Display for ReloadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.applied.is_empty() {
            write!(f, "nothing changed")?;
        } else {
            write!(f, "applied: {}", self.applied.join(", "))?;
        }
        if !self.restart_needed.is_empty() {
            write!(f, "; needs a restart: {}", self.restart_needed.join(", "))?;
        }
        Ok(())
    }
}

/// Why a reload was refused; the running configuration is kept whole.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("this proxy was not started from a configuration file")]
    NoFile,
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("TLS: {0}")]
    Tls(#[from] crate::auth::tls::TlsError),
}

/// Re-reads the proxy's configuration file and applies it (see the module doc). Never
/// ends the process; on an error nothing changed.
pub async fn reload(proxy: &Proxy) -> Result<ReloadReport, ReloadError> {
    let path = proxy.config_path().ok_or(ReloadError::NoFile)?;
    let new = Config::load_for_serve(path)?;
    apply(proxy, new)
}

/// Applies a validated configuration to a running proxy: what can fail (TLS files) is
/// loaded first, so that a refusal leaves everything as it was.
pub fn apply(proxy: &Proxy, new: Config) -> Result<ReloadReport, ReloadError> {
    let mut report = ReloadReport::default();

    // TLS first: certificate files that do not load refuse the whole reload.
    match (&proxy.tls, new.tls.cert.is_empty()) {
        (Some(tls), false) => {
            // Files are re-read even when the paths did not change (a renewed certificate).
            tls.reload_from(&new.tls)?;
            report.applied.push("tls (certificates re-read)".to_owned());
        }
        (None, true) => {}
        (Some(_), true) => report.restart_needed.push("tls (turning TLS off)".to_owned()),
        (None, false) => {
            // Checked, so that a restart would not fail on them.
            crate::auth::tls::Tls::new(&new.tls)?;
            report.restart_needed.push("tls (turning TLS on)".to_owned());
        }
    }

    put_in_force(proxy, new, &mut report);
    Ok(report)
}

/// Notes what `new` changes against the configuration in force, then puts it in force:
/// swapped for every new session, the pool settings for every pool, the metrics caps, the
/// log, and the static tenants.
fn put_in_force(proxy: &Proxy, new: Config, report: &mut ReloadReport) {
    let old = proxy.config_arc();
    // What only a restart changes: the listener, the runtime, the caps sized at start,
    // the control database link.
    let (o, n) = (&old.proxy, &new.proxy);
    note(&mut report.restart_needed, "proxy.listen", o.listen != n.listen);
    note(&mut report.restart_needed, "proxy.workers", o.workers != n.workers);
    note(&mut report.restart_needed, "proxy.listen_backlog", o.listen_backlog != n.listen_backlog);
    note(&mut report.restart_needed, "proxy.handover", o.handover != n.handover);
    note(&mut report.restart_needed, "proxy.max_client_conn", o.max_client_conn != n.max_client_conn);
    note(
        &mut report.restart_needed,
        "proxy.max_prelogin_connections",
        o.max_prelogin_connections != n.max_prelogin_connections,
    );
    note(&mut report.restart_needed, "proxy.max_auth_failures", o.max_auth_failures != n.max_auth_failures);
    note(
        &mut report.restart_needed,
        "proxy.large_message_memory",
        o.large_message_memory != n.large_message_memory,
    );
    note(
        &mut report.restart_needed,
        "proxy.large_message_memory_per_tenant",
        o.large_message_memory_per_tenant() != n.large_message_memory_per_tenant(),
    );
    let (o, n) = (&old.pool, &new.pool);
    note(
        &mut report.restart_needed,
        "pool.max_server_connections",
        o.max_server_connections != n.max_server_connections,
    );
    note(&mut report.restart_needed, "catalog", old.catalog != new.catalog);
    note(&mut report.restart_needed, "admin.listen", old.admin.listen != new.admin.listen);
    let caps =
        |c: &Config| c.upstreams.iter().map(|u| (u.name.clone(), u.max_connections)).collect::<Vec<_>>();
    note(&mut report.restart_needed, "upstreams.max_connections", caps(&old) != caps(&new));
    // Upstreams and tenants are the catalog only without a control database.
    let static_catalog = new.catalog.url.is_empty();
    if !static_catalog && (!new.tenants.is_empty() || !new.upstreams.is_empty()) {
        tracing::warn!("reload: [[tenants]] and [[upstreams]] are ignored: [catalog] url is set");
    }

    // What every new session (or transaction) reads from the configuration in force.
    let (o, n) = (&old.proxy, &new.proxy);
    note(&mut report.applied, "proxy.auth", o.auth != n.auth);
    note(&mut report.applied, "proxy.startup_timeout", o.startup_timeout != n.startup_timeout);
    note(&mut report.applied, "proxy.shutdown_timeout", o.shutdown_timeout != n.shutdown_timeout);
    note(&mut report.applied, "proxy.max_message_size", o.max_message_size != n.max_message_size);
    note(&mut report.applied, "proxy.mock_secret", o.mock_secret != n.mock_secret);
    let (o, n) = (&old.pool, &new.pool);
    note(&mut report.applied, "pool.mode", o.mode != n.mode);
    note(&mut report.applied, "pool.size", o.size != n.size);
    note(&mut report.applied, "pool.reset_query", o.reset_query != n.reset_query);
    note(&mut report.applied, "pool.session_features", o.session_features != n.session_features);
    // Every pool's, existing ones too (see `pool::PoolSettings`).
    let settings = PoolSettings::from(n);
    note(&mut report.applied, "pool.checkout_timeout / connect_timeout / idle_timeout / max_lifetime / min_idle / max_scram_iterations / affinity_hold / affinity_transactions", settings != PoolSettings::from(o));
    note(
        &mut report.applied,
        "pool.query_timeout / idle_transaction_timeout / client_idle_timeout / client_write_timeout",
        o.query_timeout != n.query_timeout
            || o.idle_transaction_timeout != n.idle_transaction_timeout
            || o.client_idle_timeout != n.client_idle_timeout
            || o.client_write_timeout != n.client_write_timeout,
    );
    note(&mut report.applied, "resolver", old.resolver != new.resolver);
    note(&mut report.applied, "admin.token_sha256", old.admin.token_sha256 != new.admin.token_sha256);
    note(&mut report.applied, "lifecycle", old.lifecycle != new.lifecycle);
    note(&mut report.applied, "log", old.log != new.log);
    note(&mut report.applied, "metrics.top_tenants", old.metrics.top_tenants != new.metrics.top_tenants);
    note(&mut report.restart_needed, "metrics.listen", old.metrics.listen != new.metrics.listen);
    note(&mut report.restart_needed, "usage", old.usage != new.usage);
    let log_changed =
        old.proxy.log_level != new.proxy.log_level || old.proxy.log_format != new.proxy.log_format;
    note(&mut report.applied, "proxy.log_level / log_format", log_changed);

    let new = Arc::new(new);
    proxy.swap_config(new.clone());
    proxy.pools.set_settings(settings);
    proxy.catalog.set_default_pool_size(new.pool.size);
    proxy.metrics.set_top(new.metrics.top_tenants, new.metrics.top_tenants);
    if log_changed {
        if let Err(e) = crate::logging::apply(new.proxy.log_format, &new.proxy.log_level) {
            tracing::warn!(error = %e, "reload: the log level and format stay as they were");
        }
    }
    // Last, once the configuration is in force: pools and sessions follow the announced
    // tenants (sizes and modes, logins, tenants removed or no longer active).
    if let (Some(catalog), true) = (&proxy.static_catalog, static_catalog) {
        let tenants = catalog.replace(&new);
        if !tenants.is_empty() {
            let ids: Vec<&str> = tenants.iter().map(|t| t.as_str()).collect();
            report.applied.push(format!("tenants ({})", ids.join(", ")));
        }
    }
}

/// Why the console's `SET key = value` was refused; the configuration in force is kept.
#[derive(Debug, thiserror::Error)]
pub enum SetError {
    #[error("unknown setting {0:?}")]
    Unknown(String),
    #[error("{0} changes only with a restart")]
    RestartOnly(String),
    #[error("{key} = {value:?}: {why}")]
    BadValue { key: String, value: String, why: &'static str },
    #[error(transparent)]
    Invalid(#[from] ConfigError),
}

/// The console's `SET key = value`, with PgBouncer's setting names: the configuration in
/// force with that one value changed, validated as a file is, then put in force as a
/// reload does (existing pools included). A later reload re-reads the file and so undoes
/// it, as with PgBouncer.
pub fn set(proxy: &Proxy, key: &str, value: &str) -> Result<ReloadReport, SetError> {
    let mut c = (*proxy.config_arc()).clone();
    let bad = |why| SetError::BadValue { key: key.to_owned(), value: value.to_owned(), why };
    let count = || value.trim().parse::<usize>().map_err(|_| bad("not a whole number"));
    let seconds = || {
        value
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite())
            .ok_or_else(|| bad("not a number of seconds"))
    };
    let flag = || match value.trim().to_ascii_lowercase().as_str() {
        "1" | "on" | "true" | "yes" => Ok(true),
        "0" | "off" | "false" | "no" => Ok(false),
        _ => Err(bad("not a boolean (0/1, on/off)")),
    };
    match key.to_ascii_lowercase().as_str() {
        "default_pool_size" => c.pool.size = count()?,
        "min_pool_size" => c.pool.min_idle = count()?,
        "pool_mode" => {
            c.pool.mode = crate::model::PoolMode::parse(value.trim())
                .ok_or_else(|| bad("not a pool mode (session, transaction)"))?
        }
        "server_reset_query" => c.pool.reset_query = value.to_owned(),
        "query_wait_timeout" => c.pool.checkout_timeout = seconds()?,
        "server_connect_timeout" => c.pool.connect_timeout = seconds()?,
        "server_idle_timeout" => c.pool.idle_timeout = seconds()?,
        "server_lifetime" => c.pool.max_lifetime = seconds()?,
        "query_timeout" => c.pool.query_timeout = seconds()?,
        "idle_transaction_timeout" => c.pool.idle_transaction_timeout = seconds()?,
        "client_idle_timeout" => c.pool.client_idle_timeout = seconds()?,
        "affinity_hold" => c.pool.affinity_hold = seconds()?,
        "affinity_transactions" => {
            c.pool.affinity_transactions =
                u8::try_from(count()?).map_err(|_| bad("not a count of transactions (1 to 255)"))?
        }
        "log_connections" => c.log.connections = flag()?,
        "log_disconnections" => c.log.disconnections = flag()?,
        "stats_period" => c.log.stats_period = seconds()?,
        "shutdown_timeout" => c.proxy.shutdown_timeout = seconds()?,
        "admin_users" => c.admin.admin_users = list(value),
        "stats_users" => c.admin.stats_users = list(value),
        k @ ("listen_addr" | "listen_port" | "listen_backlog" | "max_client_conn" | "max_db_connections"
        | "unix_socket_dir" | "logfile" | "pidfile" | "auth_file" | "workers") => {
            return Err(SetError::RestartOnly(k.to_owned()))
        }
        _ => return Err(SetError::Unknown(key.to_owned())),
    }
    c.validate()?;
    let mut report = ReloadReport::default();
    put_in_force(proxy, c, &mut report);
    Ok(report)
}

/// A comma-separated list of names, as PgBouncer writes `admin_users`.
fn list(value: &str) -> Vec<String> {
    value.split(',').map(str::trim).filter(|n| !n.is_empty()).map(str::to_owned).collect()
}

/// Adds `name` to `list` if it `differs`.
fn note(list: &mut Vec<String>, name: &str, differs: bool) {
    if differs {
        list.push(name.to_owned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
[proxy]
listen = "127.0.0.1:0"
[[upstreams]]
name = "u"
host = "127.0.0.1"
[[tenants]]
id = "a"
upstream = "u"
database = "a"
role = "a"
pool_size = 2
"#;

    #[tokio::test]
    async fn a_reload_swaps_the_config_and_the_static_tenants() {
        let proxy = Proxy::new(Config::parse(BASE).expect("base"));
        let catalog = proxy.static_catalog.clone().expect("static");
        let mut changes = proxy.catalog.changes().expect("static catalog announces changes");
        let id = crate::model::TenantId::parse("a").expect("id");
        assert_eq!(catalog.get(&id).expect("a").pool_size, 2);

        let edited = BASE.replace("pool_size = 2", "pool_size = 6")
            + "[[tenants]]\nid = \"b\"\nupstream = \"u\"\ndatabase = \"b\"\nrole = \"b\"\n"
            + "[pool]\nquery_timeout = 3\n";
        let report = apply(&proxy, Config::parse(&edited).expect("edited")).expect("applied");
        assert_eq!(catalog.get(&id).expect("a").pool_size, 6);
        assert!(catalog.get(&crate::model::TenantId::parse("b").expect("id")).is_some());
        assert_eq!(proxy.config().pool.query_timeout, 3.0);
        assert!(report.restart_needed.is_empty(), "{report}");
        assert!(report.applied.iter().any(|a| a == "tenants (a, b)"), "{report}");
        let mut seen = Vec::new();
        while let Ok(crate::catalog::Change::Tenant(t)) = changes.try_recv() {
            seen.push(t.as_str().to_owned());
        }
        assert_eq!(seen, ["a", "b"]);

        // The same file again changes nothing; a new listen address needs a restart.
        let again = apply(&proxy, Config::parse(&edited).expect("edited")).expect("applied");
        assert!(again.applied.is_empty(), "{again}");
        let moved = edited.replace("127.0.0.1:0", "127.0.0.1:1");
        let r = apply(&proxy, Config::parse(&moved).expect("moved")).expect("applied");
        assert_eq!(r.restart_needed, ["proxy.listen"]);
    }

    #[tokio::test]
    async fn pool_settings_and_the_metrics_cap_follow_a_reload() {
        let proxy = Proxy::new(Config::parse(BASE).expect("base"));
        assert_eq!(proxy.pools.settings().idle_timeout, std::time::Duration::from_secs(600));
        let edited =
            format!("{BASE}[pool]\nidle_timeout = 2\ncheckout_timeout = 0.5\n[metrics]\ntop_tenants = 7\n");
        let report = apply(&proxy, Config::parse(&edited).expect("edited")).expect("applied");
        let s = proxy.pools.settings();
        assert_eq!(s.idle_timeout, std::time::Duration::from_secs(2));
        assert_eq!(s.checkout_timeout, std::time::Duration::from_millis(500));
        assert_eq!(proxy.metrics.top(), 7);
        assert!(report.restart_needed.is_empty(), "{report}");
        assert!(report.applied.iter().any(|a| a.contains("idle_timeout")), "{report}");
    }

    #[tokio::test]
    async fn set_changes_one_live_setting_and_refuses_the_rest_with_the_reason() {
        let proxy = Proxy::new(Config::parse(BASE).expect("base"));
        set(&proxy, "server_lifetime", "30").expect("SET");
        set(&proxy, "LOG_CONNECTIONS", "off").expect("SET");
        set(&proxy, "default_pool_size", "3").expect("SET");
        assert_eq!(proxy.pools.settings().max_lifetime, std::time::Duration::from_secs(30));
        let c = proxy.config();
        assert!(!c.log.connections && c.pool.size == 3);
        let err = |k: &str, v: &str| set(&proxy, k, v).expect_err(k).to_string();
        assert!(err("listen_addr", "0.0.0.0").contains("restart"));
        assert!(err("nope", "1").contains("unknown setting"));
        assert!(err("log_connections", "maybe").contains("boolean"));
        assert!(err("server_idle_timeout", "-1").contains("pool.idle_timeout"));
        assert!(err("min_pool_size", "9").contains("pool.size"));
        // Refused: nothing changed.
        assert_eq!(proxy.pools.settings().idle_timeout, std::time::Duration::from_secs(600));
        assert_eq!(proxy.config().pool.min_idle, 0);
    }

    #[tokio::test]
    async fn an_invalid_file_keeps_the_running_config() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("p.toml");
        std::fs::write(&path, BASE).expect("write");
        let proxy = Proxy::new(Config::load(&path).expect("base"));
        assert!(matches!(reload(&proxy).await, Err(ReloadError::NoFile)));
        proxy.set_config_path(path.clone());
        std::fs::write(&path, BASE.replace("pool_size = 2", "pool_size = 0")).expect("write");
        let before = proxy.config_arc();
        let err = reload(&proxy).await.expect_err("refused");
        assert!(err.to_string().contains("pool_size"), "{err}");
        assert!(Arc::ptr_eq(&before, &proxy.config_arc()), "the running config was replaced");
    }
}
