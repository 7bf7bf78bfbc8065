//! A console client: who may log in to the virtual database `pgbouncer` / `pgtenant`, and
//! the [`ConsoleSource`] over the proxy's pools, clients, catalog and metrics.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::catalog::Tenant;
use crate::config::{ConsoleRole, LogConfig, PoolDefaults, ProxyConfig};
use crate::console::live::now_us;
use crate::console::show::flag;
use crate::console::{Access, Action, ConsoleError, ConsoleFuture, ConsoleSource, ShutdownMode, Value, View};
use crate::metrics::averages::Average;
use crate::metrics::exposition::TenantSnapshot;
use crate::model::{AuthMethod, PoolKey, TenantId};
use crate::protocol::PgError;
use crate::proxy::Proxy;

/// The database names that reach the console instead of a tenant.
pub fn is_console_database(db: Option<&str>) -> bool {
    matches!(db, Some("pgbouncer" | "pgtenant"))
}

/// Console user `name`: its access and the SCRAM verifier it must prove (None: no
/// credential). The config file's `[admin]` first: a name it knows is decided there, whatever
/// the control database holds. Else `pgtenant.console_users`, read now (once per console
/// login, so a user added or removed counts from the next login). A control database that
/// does not answer leaves only the config's users: the login is refused like a wrong
/// password, and the log says why.
pub async fn console_user(proxy: &Proxy, name: &str) -> Option<(Access, Option<String>)> {
    if let Some(found) = configured_console_user(proxy, name) {
        return Some(found);
    }
    match proxy.catalog.console_user(name).await {
        Ok(found) => found.map(|c| (access_of(c.role), Some(c.verifier))),
        Err(e) => {
            tracing::warn!(user = name, error = %e, "console login: cannot read pgtenant.console_users; only [admin] users can log in until the control database answers");
            None
        }
    }
}

fn access_of(role: ConsoleRole) -> Access {
    match role {
        ConsoleRole::Admin => Access::Admin,
        ConsoleRole::Stats => Access::Stats,
    }
}

/// What the configuration says about console user `name`: its access, and the SCRAM
/// verifier it must prove (None: no credential configured).
pub fn configured_console_user(proxy: &Proxy, name: &str) -> Option<(Access, Option<String>)> {
    let admin = &proxy.config().admin;
    let entry = admin.users.iter().find(|u| u.name == name);
    let access = if admin.admin_users.iter().any(|u| u == name)
        || entry.is_some_and(|e| e.role == ConsoleRole::Admin)
    {
        Access::Admin
    } else if admin.stats_users.iter().any(|u| u == name) || entry.is_some() {
        Access::Stats
    } else {
        return None;
    };
    let verifier = entry.and_then(|e| {
        if !e.verifier.is_empty() {
            Some(e.verifier.clone())
        } else if e.password_env.is_empty() {
            None
        } else {
            std::env::var(&e.password_env).ok().map(|p| crate::auth::Verifier::hash(&p))
        }
    });
    Some((access, verifier))
}

/// Whether console users log in without a password: only when the proxy's clients do.
pub fn console_trusts(proxy: &Proxy) -> bool {
    proxy.config().proxy.auth == AuthMethod::Trust
}

/// The console's view of the proxy.
pub struct ProxyConsole {
    pub proxy: Arc<Proxy>,
}

/// How often PAUSE and WAIT_CLOSE look at the checked-out connections.
const SETTLE_POLL: Duration = Duration::from_millis(20);

impl ProxyConsole {
    /// The tenants this proxy has seen, with their catalog entries (a tenant gone from the
    /// catalog is left out).
    async fn tenants(&self) -> Vec<Arc<Tenant>> {
        let mut ids = self.proxy.tenant_ids();
        ids.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Ok(Some(t)) = self.proxy.catalog.lookup(&id).await {
                out.push(t);
            }
        }
        out
    }

    fn snapshot(&self, tenant: &TenantId) -> TenantSnapshot {
        let all = self.proxy.metrics.tenants();
        all.into_iter().find(|(n, _)| n == tenant.as_str()).map(|(_, s)| s).unwrap_or_default()
    }

    fn idle_of(&self, tenant: &Tenant) -> usize {
        self.proxy.pools.pools().iter().filter(|p| *p.key() == tenant.pool_key).map(|p| p.idle_count()).sum()
    }

    fn client_count(&self, tenant: &TenantId) -> usize {
        self.proxy.live.list().iter().filter(|c| c.tenant == *tenant).count()
    }

    /// A tenant's clients now: how many, how many wait for a server connection, and the
    /// longest wait going on (PgBouncer's `maxwait`).
    fn waits(&self, tenant: &TenantId) -> (usize, usize, Duration) {
        let now = now_us();
        let (mut clients, mut waiting, mut longest) = (0, 0, Duration::ZERO);
        for c in self.proxy.live.list().iter().filter(|c| c.tenant == *tenant) {
            clients += 1;
            if let Some(w) = c.waiting_for(now) {
                waiting += 1;
                longest = longest.max(w);
            }
        }
        (clients, waiting, longest)
    }

    async fn known(&self, name: &str) -> Result<TenantId, ConsoleError> {
        let id = TenantId::parse(name).map_err(|_| ConsoleError::NoSuchDatabase(name.to_owned()))?;
        match self.proxy.catalog.lookup(&id).await {
            Ok(Some(_)) => Ok(id),
            _ => Err(ConsoleError::NoSuchDatabase(name.to_owned())),
        }
    }

    /// The upstream login (pool) of tenant `name`.
    async fn pool_key_of(&self, name: &str) -> Result<PoolKey, ConsoleError> {
        let id = self.known(name).await?;
        match self.proxy.catalog.lookup(&id).await {
            Ok(Some(t)) => Ok(t.pool_key.clone()),
            _ => Err(ConsoleError::NoSuchDatabase(name.to_owned())),
        }
    }

    /// Server connections marked to close (RECONNECT, a login change) still open, in the
    /// pool of `key` or in every pool.
    fn marked(&self, key: Option<&PoolKey>) -> usize {
        let pools = self.proxy.pools.pools();
        pools.iter().filter(|p| key.is_none_or(|k| k == p.key())).map(|p| p.marked_count()).sum()
    }

    /// Returns once `tenant` (or every tenant) holds no checked-out server connection.
    async fn settled(&self, tenant: Option<&TenantId>) {
        while self.proxy.pools.checked_out(tenant) > 0 {
            tokio::time::sleep(SETTLE_POLL).await;
        }
    }

    async fn build(&self, view: View) -> Vec<Vec<Value>> {
        let tenants = self.tenants().await;
        match view {
            View::Pools => tenants.iter().map(|t| self.pool_row(t)).collect(),
            View::Stats => tenants
                .iter()
                .map(|t| stats_row(t, &self.snapshot(&t.id), &self.proxy.metrics.averages(t.id.as_str())))
                .collect(),
            View::StatsTotals => tenants.iter().map(|t| totals_row(t, &self.snapshot(&t.id), None)).collect(),
            View::StatsAverages => tenants
                .iter()
                .map(|t| {
                    totals_row(
                        t,
                        &TenantSnapshot::default(),
                        Some(&self.proxy.metrics.averages(t.id.as_str())),
                    )
                })
                .collect(),
            View::Clients => self.client_rows(),
            View::Servers => self.server_rows(&tenants),
            View::Usage => Vec::new(),
            View::Databases => tenants.iter().map(|t| self.database_row(t)).collect(),
            View::Users => self.user_rows(&tenants),
            View::Config => self.config_rows(),
            View::Lists => self.list_rows(tenants.len()),
            View::State => {
                let paused = self.proxy.pools.pauses.all_paused();
                let yn = |b: bool| Value::from(if b { "yes" } else { "no" });
                vec![
                    vec!["active".into(), yn(!paused)],
                    vec!["paused".into(), yn(paused)],
                    vec!["suspended".into(), yn(false)],
                ]
            }
            View::Tenants => tenants.iter().map(|t| self.tenant_row(t)).collect(),
            View::Instances => self.instance_rows().await,
            // Answered by the console itself.
            View::Version => Vec::new(),
        }
    }

    /// SHOW INSTANCES: the registry's live rows, the others' as of their last heartbeat,
    /// this instance's counts and draining state as they are now; without a registry, or
    /// while the control database does not answer, this instance alone (`local`).
    async fn instance_rows(&self) -> Vec<Vec<Value>> {
        let p = &self.proxy;
        let draining = p.shutdown.stop_accepting.is_cancelled() || p.shutdown.drain.is_cancelled();
        let counts = || -> [Value; 2] { [p.live.len().into(), p.pools.checked_out(None).into()] };
        if let Some(registry) = &p.instances {
            match registry.live().await {
                Ok(rows) => {
                    return rows
                        .into_iter()
                        .map(|r| {
                            let here = r.id == registry.id();
                            let [clients, servers] = if here { counts() } else { [Value::Null, Value::Null] };
                            let draining = r.draining || (here && draining);
                            vec![
                                r.id.into(),
                                r.advertised_addr.into(),
                                r.started_at.into(),
                                r.heartbeat_at.into(),
                                clients,
                                servers,
                                flag(draining),
                            ]
                        })
                        .collect()
                }
                Err(e) => {
                    tracing::warn!(error = %e, "SHOW INSTANCES: the instance registry does not answer; showing this instance only")
                }
            }
        }
        let [clients, servers] = counts();
        vec![vec!["local".into(), Value::Null, Value::Null, Value::Null, clients, servers, flag(draining)]]
    }

    fn pool_row(&self, t: &Tenant) -> Vec<Value> {
        let (clients, waiting, longest) = self.waits(&t.id);
        vec![
            t.id.as_str().into(),
            t.login_role.as_str().into(),
            (clients - waiting).into(),
            waiting.into(),
            0i64.into(),
            0i64.into(),
            self.proxy.pools.checked_out(Some(&t.id)).into(),
            0i64.into(),
            0i64.into(),
            self.idle_of(t).into(),
            0i64.into(),
            0i64.into(),
            0i64.into(),
            longest.as_secs().into(),
            longest.subsec_micros().into(),
            t.pool_mode.as_str().into(),
            Value::Null,
        ]
    }

    fn database_row(&self, t: &Tenant) -> Vec<Value> {
        // The tenant's own pause, as PgBouncer shows `db_paused` (the global one is in SHOW STATE).
        let paused = self.proxy.pools.pauses.tenant_paused(&t.id);
        let (host, port) = upstream_host_port(t);
        vec![
            t.id.as_str().into(),
            host.into(),
            port.into(),
            t.database.as_str().into(),
            t.login_role.as_str().into(),
            self.proxy.pools.effective_pool_size(t).into(),
            0i64.into(),
            0i64.into(),
            0i64.into(),
            t.pool_mode.as_str().into(),
            Value::Null,
            t.max_server_connections.into(),
            (self.proxy.pools.checked_out(Some(&t.id)) + self.idle_of(t)).into(),
            t.max_clients.unwrap_or(0).into(),
            self.client_count(&t.id).into(),
            paused.into(),
            (t.refusal().is_some()).into(),
        ]
    }

    fn user_rows(&self, tenants: &[Arc<Tenant>]) -> Vec<Vec<Value>> {
        let mut roles: Vec<&str> = tenants.iter().map(|t| t.login_role.as_str()).collect();
        roles.sort_unstable();
        roles.dedup();
        roles
            .into_iter()
            .map(|r| {
                let clients: usize =
                    tenants.iter().filter(|t| t.login_role == r).map(|t| self.client_count(&t.id)).sum();
                vec![
                    r.into(),
                    "".into(),
                    "".into(),
                    "".into(),
                    0i64.into(),
                    0i64.into(),
                    0i64.into(),
                    clients.into(),
                ]
            })
            .collect()
    }

    fn client_rows(&self) -> Vec<Vec<Value>> {
        let fmt_time = |t: SystemTime| {
            let secs = t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
            format!("@{secs}")
        };
        let now = now_us();
        self.proxy
            .live
            .list()
            .into_iter()
            .map(|c| {
                let wait = c.waiting_for(now);
                let waited = wait.unwrap_or_default();
                vec![
                    "C".into(),
                    c.user.as_ref().into(),
                    c.tenant.as_str().into(),
                    Value::Null,
                    (if wait.is_some() { "waiting" } else { "active" }).into(),
                    c.addr.ip().to_string().into(),
                    i64::from(c.addr.port()).into(),
                    Value::Null,
                    Value::Null,
                    fmt_time(c.connected_at).into(),
                    fmt_time(c.connected_at).into(),
                    waited.as_secs().into(),
                    waited.subsec_micros().into(),
                    0i64.into(),
                    format!("0x{:x}", c.id).into(),
                    Value::Null,
                    0i64.into(),
                    (if c.tls { "TLS" } else { "" }).into(),
                    // application_name: not tracked per client.
                    "".into(),
                    0i64.into(),
                    c.id.into(),
                ]
            })
            .collect()
    }

    /// PgBouncer's names, the value in force, the default, and whether `SET` changes it
    /// live (see [`crate::reload::set`]).
    /// SHOW SERVERS: every open server connection, idle and checked out. `database` is the
    /// tenant an idle connection was last set up for, or the pool's only tenant; else the
    /// upstream database (a pool shared by several tenants).
    fn server_rows(&self, tenants: &[Arc<Tenant>]) -> Vec<Vec<Value>> {
        let fmt_time = |t: SystemTime| {
            let secs = t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
            format!("@{secs}")
        };
        let mut rows = Vec::new();
        for pool in self.proxy.pools.pools() {
            let key = pool.key();
            let mut of_pool = tenants.iter().filter(|t| t.pool_key == *key);
            let only = match (of_pool.next(), of_pool.next()) {
                (Some(t), None) => Some(t.id.as_str().to_owned()),
                _ => None,
            };
            for s in pool.servers() {
                let (host, port) = match s.addr.rsplit_once(':') {
                    Some((h, p)) => (h.to_owned(), p.parse::<i64>().unwrap_or(0)),
                    None => (s.addr.clone(), 0),
                };
                let database = s
                    .tenant
                    .as_ref()
                    .map(|t| t.as_str().to_owned())
                    .or_else(|| only.clone())
                    .unwrap_or_else(|| key.database.to_string());
                rows.push(vec![
                    "S".into(),
                    key.role.to_string().into(),
                    database.into(),
                    Value::Null,
                    (if s.idle { "idle" } else { "active" }).into(),
                    host.into(),
                    port.into(),
                    Value::Null,
                    Value::Null,
                    fmt_time(s.connected_at).into(),
                    fmt_time(s.connected_at).into(),
                    0i64.into(),
                    0i64.into(),
                    s.close_needed.into(),
                    format!("0x{:x}", s.id).into(),
                    Value::Null,
                    s.backend_pid.into(),
                    (if s.tls { "TLS" } else { "" }).into(),
                    "".into(),
                    s.prepared.into(),
                    s.id.into(),
                ]);
            }
        }
        rows
    }

    fn config_rows(&self) -> Vec<Vec<Value>> {
        let c = self.proxy.config();
        let (dp, dpool, dlog) = (ProxyConfig::default(), PoolDefaults::default(), LogConfig::default());
        let yn = |b: bool| Value::from(if b { "yes" } else { "no" });
        let on = |b: bool| if b { "1" } else { "0" }.to_owned();
        let rows: [(&str, String, String, bool); 24] = [
            ("listen_addr", c.proxy.listen.to_string(), dp.listen.to_string(), false),
            ("max_client_conn", c.proxy.max_client_conn.to_string(), dp.max_client_conn.to_string(), false),
            ("pool_mode", c.pool.mode.as_str().to_owned(), dpool.mode.as_str().to_owned(), true),
            ("default_pool_size", c.pool.size.to_string(), dpool.size.to_string(), true),
            ("min_pool_size", c.pool.min_idle.to_string(), dpool.min_idle.to_string(), true),
            (
                "max_db_connections",
                c.pool.max_server_connections.to_string(),
                dpool.max_server_connections.to_string(),
                false,
            ),
            // No per-user cap on server connections: 0 as PgBouncer shows "unlimited".
            ("max_user_connections", "0".to_owned(), "0".to_owned(), false),
            ("server_reset_query", c.pool.reset_query.clone(), dpool.reset_query.clone(), true),
            (
                "query_wait_timeout",
                c.pool.checkout_timeout.to_string(),
                dpool.checkout_timeout.to_string(),
                true,
            ),
            ("server_idle_timeout", c.pool.idle_timeout.to_string(), dpool.idle_timeout.to_string(), true),
            ("server_lifetime", c.pool.max_lifetime.to_string(), dpool.max_lifetime.to_string(), true),
            (
                "server_connect_timeout",
                c.pool.connect_timeout.to_string(),
                dpool.connect_timeout.to_string(),
                true,
            ),
            ("query_timeout", c.pool.query_timeout.to_string(), dpool.query_timeout.to_string(), true),
            (
                "idle_transaction_timeout",
                c.pool.idle_transaction_timeout.to_string(),
                dpool.idle_transaction_timeout.to_string(),
                true,
            ),
            (
                "client_idle_timeout",
                c.pool.client_idle_timeout.to_string(),
                dpool.client_idle_timeout.to_string(),
                true,
            ),
            ("affinity_hold", c.pool.affinity_hold.to_string(), dpool.affinity_hold.to_string(), true),
            (
                "affinity_transactions",
                c.pool.affinity_transactions.to_string(),
                dpool.affinity_transactions.to_string(),
                true,
            ),
            ("shutdown_timeout", c.proxy.shutdown_timeout.to_string(), dp.shutdown_timeout.to_string(), true),
            ("log_connections", on(c.log.connections), on(dlog.connections), true),
            ("log_disconnections", on(c.log.disconnections), on(dlog.disconnections), true),
            ("stats_period", c.log.stats_period.to_string(), dlog.stats_period.to_string(), true),
            ("auth_type", c.proxy.auth.as_str().to_owned(), dp.auth.as_str().to_owned(), false),
            ("admin_users", c.admin.admin_users.join(","), String::new(), true),
            ("stats_users", c.admin.stats_users.join(","), String::new(), true),
        ];
        rows.into_iter().map(|(k, v, def, live)| vec![k.into(), v.into(), def.into(), yn(live)]).collect()
    }

    fn list_rows(&self, databases: usize) -> Vec<Vec<Value>> {
        let pools = self.proxy.pools.pools();
        let idle: usize = pools.iter().map(|p| p.idle_count()).sum();
        let busy: usize = pools.iter().map(|p| p.busy_count()).sum();
        let clients = self.proxy.live.len();
        [
            ("databases", databases),
            ("users", databases),
            ("pools", pools.len()),
            ("free_clients", 0),
            ("used_clients", clients),
            ("login_clients", 0),
            ("free_servers", 0),
            ("used_servers", idle + busy),
            ("dns_names", 0),
            ("dns_zones", 0),
            ("dns_queries", 0),
            ("dns_pending", 0),
        ]
        .into_iter()
        .map(|(k, v)| vec![k.into(), v.into()])
        .collect()
    }

    fn tenant_row(&self, t: &Tenant) -> Vec<Value> {
        let snap = self.snapshot(&t.id);
        let (clients, waiting, longest) = self.waits(&t.id);
        vec![
            t.id.as_str().into(),
            t.status.as_str().into(),
            t.isolation.as_str().into(),
            (clients - waiting).into(),
            waiting.into(),
            self.proxy.pools.checked_out(Some(&t.id)).into(),
            self.idle_of(t).into(),
            self.proxy.metrics.averages(t.id.as_str()).transactions.into(),
            snap.transactions.into(),
            snap.pool_wait.mean_us().into(),
            u64::try_from(longest.as_micros()).unwrap_or(u64::MAX).into(),
        ]
    }
}

fn upstream_host_port(t: &Tenant) -> (String, i64) {
    let addr = format!("{}", t.addr);
    match addr.rsplit_once(':') {
        Some((h, p)) => (h.to_owned(), p.parse().unwrap_or(0)),
        None => (addr, 0),
    }
}

/// SHOW STATS: totals since start, then the averages of the last stats period.
fn stats_row(t: &Tenant, s: &TenantSnapshot, avg: &Average) -> Vec<Value> {
    let mut row: Vec<Value> = vec![t.id.as_str().into()];
    row.extend(totals(s));
    row.extend(averages(avg));
    row
}

/// PgBouncer's twelve counters in its order: server assignments, transactions, queries,
/// bytes received and sent, transaction, query and wait time (µs), client and server
/// parses and binds of named prepared statements, logins.
fn totals(s: &TenantSnapshot) -> Vec<Value> {
    vec![
        s.pool_wait.count().into(),
        s.transactions.into(),
        s.queries.into(),
        s.bytes_in.into(),
        s.bytes_out.into(),
        s.transaction_time.sum_us.into(),
        s.query_time.sum_us.into(),
        s.pool_wait.sum_us.into(),
        s.client_parses.into(),
        s.server_parses.into(),
        s.binds.into(),
        s.logins.into(),
    ]
}

/// The same twelve as rates per second (counts) and means (times, per transaction, query
/// and assignment) over the last stats period.
fn averages(a: &Average) -> Vec<Value> {
    vec![
        a.assignments.into(),
        a.transactions.into(),
        a.queries.into(),
        a.bytes_in.into(),
        a.bytes_out.into(),
        a.transaction_us.into(),
        a.query_us.into(),
        a.wait_us.into(),
        a.client_parses.into(),
        a.server_parses.into(),
        a.binds.into(),
        a.logins.into(),
    ]
}

fn totals_row(t: &Tenant, s: &TenantSnapshot, avg: Option<&Average>) -> Vec<Value> {
    let mut row: Vec<Value> = vec![t.id.as_str().into()];
    match avg {
        Some(a) => row.extend(averages(a)),
        None => row.extend(totals(s)),
    }
    row
}

impl ConsoleSource for ProxyConsole {
    fn rows(&self, view: View) -> ConsoleFuture<'_, Vec<Vec<Value>>> {
        Box::pin(async move { Ok(self.build(view).await) })
    }

    fn act<'a>(&'a self, action: &'a Action) -> ConsoleFuture<'a, ()> {
        Box::pin(async move {
            let p = &self.proxy;
            match action {
                Action::Pause(name) => {
                    let id = match name {
                        Some(n) => Some(self.known(n).await?),
                        None => None,
                    };
                    if !p.pools.pauses.pause(id.as_ref()) {
                        return Err(ConsoleError::AlreadyPaused);
                    }
                    tracing::info!(tenant = ?id.as_ref().map(|i| i.as_str()), "console: PAUSE");
                    self.settled(id.as_ref()).await;
                    Ok(())
                }
                Action::Resume(name) => {
                    let id = match name {
                        Some(n) => Some(self.known(n).await?),
                        None => None,
                    };
                    if id.is_none()
                        && (p.shutdown.drain.is_cancelled() || p.shutdown.stop_accepting.is_cancelled())
                    {
                        return Err(ConsoleError::ShuttingDown);
                    }
                    if !p.pools.pauses.resume(id.as_ref()) {
                        return Err(match name {
                            Some(n) => ConsoleError::DatabaseNotPaused(n.clone()),
                            None => ConsoleError::NotPaused,
                        });
                    }
                    tracing::info!(tenant = ?id.as_ref().map(|i| i.as_str()), "console: RESUME");
                    Ok(())
                }
                Action::Reconnect(name) => {
                    // Idle connections close now, busy ones when their client releases them.
                    let key = match name {
                        Some(n) => Some(self.pool_key_of(n).await?),
                        None => None,
                    };
                    for pool in p.pools.pools() {
                        if key.as_ref().is_none_or(|k| k == pool.key()) {
                            pool.reconnect();
                        }
                    }
                    tracing::info!(tenant = ?name, "console: RECONNECT");
                    Ok(())
                }
                Action::WaitClose(name) => {
                    // PgBouncer's WAIT_CLOSE closes nothing itself: it answers once no server
                    // connection marked by RECONNECT or a login change is left, busy ones
                    // included (they close as their clients release them).
                    let key = match name {
                        Some(n) => Some(self.pool_key_of(n).await?),
                        None => None,
                    };
                    tracing::info!(tenant = ?name, "console: WAIT_CLOSE");
                    while self.marked(key.as_ref()) > 0 {
                        tokio::time::sleep(SETTLE_POLL).await;
                    }
                    Ok(())
                }
                Action::Kill(name) => {
                    let Some(name) = name else { return Err(ConsoleError::DatabaseRequired) };
                    let id = self.known(name).await?;
                    // As PgBouncer: refused during a global pause, and the tenant stays paused
                    // (new clients wait) until `RESUME tenant`.
                    if !p.pools.pauses.pause(Some(&id)) {
                        return Err(ConsoleError::AlreadyPaused);
                    }
                    tracing::info!(tenant = %id, "console: KILL (the tenant is paused until RESUME)");
                    p.kick_tenant(&id, PgError::shutting_down());
                    p.pools.close_idle_of(&id);
                    Ok(())
                }
                Action::KillClient(id) => {
                    if p.live.kill(*id) {
                        Ok(())
                    } else {
                        Err(ConsoleError::ClientNotFound)
                    }
                }
                Action::Reload => {
                    if p.config_path().is_none() {
                        // An in-process proxy without a file: only the TLS files can be re-read.
                        if let Some(tls) = &p.tls {
                            tls.reload().map_err(|e| {
                                tracing::error!(error = %e, "console RELOAD: TLS reload failed");
                                ConsoleError::ReloadFailed
                            })?;
                        }
                        return Ok(());
                    }
                    // The same re-read of the whole file as SIGHUP: an invalid file is refused
                    // and the running configuration kept.
                    let report = crate::reload::reload(p).await.map_err(|e| {
                        tracing::error!(error = %e, "console RELOAD refused; the running configuration is kept");
                        ConsoleError::ReloadFailed
                    })?;
                    tracing::info!(applied = ?report.applied, restart_needed = ?report.restart_needed, "console: RELOAD");
                    Ok(())
                }
                Action::Shutdown(mode) => {
                    tracing::info!(?mode, "console: SHUTDOWN");
                    if *mode == ShutdownMode::WaitForServers {
                        p.pools.pauses.pause(None);
                        self.settled(None).await;
                    }
                    match mode {
                        // PgBouncer's WAIT_FOR_CLIENTS: stop accepting, let clients leave by
                        // themselves (at most `shutdown_timeout`); none is told anything.
                        ShutdownMode::WaitForClients => p.shutdown.stop_accepting.cancel(),
                        ShutdownMode::Immediate => {
                            p.shutdown.drain.cancel();
                            p.shutdown.force.cancel();
                        }
                        _ => p.shutdown.drain.cancel(),
                    }
                    Ok(())
                }
                Action::Set { key, value } => {
                    let report = crate::reload::set(p, key, value).map_err(|e| {
                        tracing::info!(%key, %value, error = %e, "console SET refused");
                        ConsoleError::SetFailed(e.to_string())
                    })?;
                    tracing::info!(%key, %value, %report, "console: SET");
                    Ok(())
                }
            }
        })
    }
}

/// Refuses a console login the way a wrong tenant password is refused.
pub fn refused() -> PgError {
    PgError::password_failed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Verifier;
    use crate::config::{Config, ConsoleUserConfig};

    fn proxy(text: &str) -> Arc<Proxy> {
        Proxy::new(Config::parse(text).expect("config"))
    }

    #[tokio::test]
    async fn console_users_come_from_the_lists_and_the_entries() {
        let p = {
            let mut c =
                Config::parse("[admin]\nadmin_users = ['root']\nstats_users = ['mon']").expect("config");
            c.proxy.auth = AuthMethod::ScramSha256;
            c.admin.users = vec![
                ConsoleUserConfig {
                    name: "ops".into(),
                    verifier: Verifier::hash("pw"),
                    password_env: String::new(),
                    role: ConsoleRole::Admin,
                },
                ConsoleUserConfig {
                    name: "mon".into(),
                    verifier: String::new(),
                    password_env: "PGTENANT_TEST_UNSET_VAR".into(),
                    role: ConsoleRole::Stats,
                },
            ];
            Proxy::new(c)
        };
        assert_eq!(console_user(&p, "root").await, Some((Access::Admin, None)));
        assert!(
            matches!(console_user(&p, "ops").await, Some((Access::Admin, Some(v))) if v.starts_with("SCRAM-SHA-256$"))
        );
        assert_eq!(console_user(&p, "mon").await, Some((Access::Stats, None)));
        // The static catalog has no console users of its own.
        assert_eq!(console_user(&p, "app").await, None);
        assert!(!console_trusts(&p));
        assert!(console_trusts(&proxy("[proxy]\nauth = 'trust'")));
    }

    #[test]
    fn only_the_two_virtual_databases_are_the_console() {
        assert!(is_console_database(Some("pgbouncer")) && is_console_database(Some("pgtenant")));
        assert!(!is_console_database(Some("acme")) && !is_console_database(None));
    }
}
