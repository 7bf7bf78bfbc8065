//! Test support: one throwaway PostgreSQL cluster per test binary, a database and login role
//! per test, and the proxy started in-process on port 0. Raw protocol in `raw`, the binary
//! in `cli`, the two-tenants-one-role fixture in `pair`, a control database ready for the
//! lifecycle in `managed`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

mod cli;
mod managed;
mod pair;
pub mod raw;

pub use cli::{pgtenant, pgtenant_command, pgtenant_env, ServeProcess};
pub use managed::{second_upstream, Setup};
pub use pair::{tenant_pair, Access};
pub use raw::{raw_exchange, read_until_ready, sqlstate, startup_packet, startup_packet_version};

use pgtenant::config::{Config, TenantConfig, UpstreamConfig};
use pgtenant::embedded::Cluster;
use pgtenant::model::PoolMode;
use pgtenant::proxy::Proxy;
use tokio::net::TcpStream;
use tokio_postgres::{Client, NoTls};

pub fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| Cluster::start().expect("start a throwaway PostgreSQL"))
}

pub async fn connect_str(conninfo: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(conninfo, NoTls).await.expect("connect");
    tokio::spawn(conn);
    client
}

/// A client whose connection task is kept. tokio-postgres ends that task with the error of an
/// ErrorResponse that arrives while no request waits (a FATAL sent before closing an idle
/// session), and the next request only sees "connection closed"; the SQLSTATE a session was
/// closed with is on the waiting request or else on the task.
pub struct Watched {
    pub client: Client,
    ended: tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
}

pub async fn connect_watched(conninfo: &str) -> Watched {
    let (client, conn) = tokio_postgres::connect(conninfo, NoTls).await.expect("connect");
    Watched { client, ended: tokio::spawn(conn) }
}

impl std::ops::Deref for Watched {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

impl Watched {
    /// The SQLSTATE the server closed the session with, given the error of a request that
    /// found it closing: the request's own, else the one the connection ended with. A socket
    /// closed without an ErrorResponse gives a text that is no SQLSTATE.
    pub async fn closing_code(self, request: &tokio_postgres::Error) -> String {
        if request.code().is_some() {
            return code(request);
        }
        self.ended_with().await
    }

    /// The SQLSTATE of the ErrorResponse that ended the connection (waits up to 5 s for it).
    pub async fn ended_with(self) -> String {
        match tokio::time::timeout(Duration::from_secs(5), self.ended).await {
            Err(_) => "still open after 5 s".to_owned(),
            Ok(joined) => match joined.expect("connection task") {
                Ok(()) => "ended without an error".to_owned(),
                Err(e) => code(&e),
            },
        }
    }
}

/// The cluster's superuser, over the Unix socket.
pub async fn admin(db: &str) -> Client {
    connect_str(&cluster().superuser_conninfo(db)).await
}

/// A fresh name for this test binary.
pub fn unique(prefix: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!("{prefix}{}", N.fetch_add(1, Ordering::Relaxed))
}

/// A tenant backed by its own database and login role (SCRAM over TCP).
pub async fn tenant_db(prefix: &str) -> TenantConfig {
    let id = unique(prefix);
    let password = format!("pw-{id}");
    let admin = admin("postgres").await;
    admin
        .batch_execute(&format!("CREATE ROLE \"{id}\" LOGIN PASSWORD '{password}'"))
        .await
        .expect("create role");
    admin.batch_execute(&format!("CREATE DATABASE \"{id}\" OWNER \"{id}\"")).await.expect("create database");
    TenantConfig::new(&id, "local", &id, &id, Some(&password))
}

pub fn with_mode(mut t: TenantConfig, mode: PoolMode, size: usize) -> TenantConfig {
    t.pool_mode = Some(mode);
    t.pool_size = Some(size);
    t
}

pub fn config(tenants: Vec<TenantConfig>) -> Config {
    let mut c = Config::parse("").expect("defaults");
    c.proxy.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    c.upstreams = vec![UpstreamConfig {
        name: "local".into(),
        host: "127.0.0.1".into(),
        port: cluster().port,
        max_connections: 250,
        sslmode: Default::default(),
        sslrootcert: None,
        require_auth: None,
    }];
    c.tenants = tenants;
    c
}

pub struct Harness {
    pub addr: SocketAddr,
    pub proxy: Arc<Proxy>,
    pub served: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Harness {
    pub fn url(&self, user: &str, db: &str) -> String {
        format!("postgresql://{user}@127.0.0.1:{}/{db}", self.addr.port())
    }

    /// A tokio-postgres client through the proxy as `role.tenant`.
    pub async fn client(&self, tenant: &str) -> Client {
        connect_str(&self.conninfo(tenant)).await
    }

    /// Like [`Harness::client`], keeping the connection task to read how it ended.
    pub async fn watched_client(&self, tenant: &str) -> Watched {
        connect_watched(&self.conninfo(tenant)).await
    }

    pub fn conninfo(&self, tenant: &str) -> String {
        format!("host=127.0.0.1 port={} user=app.{tenant} dbname={tenant}", self.addr.port())
    }
}

pub async fn start(config: Config) -> Harness {
    let listener = pgtenant::listener::bind(config.proxy.listen, config.proxy.listen_backlog).expect("bind");
    let addr = listener.local_addr().expect("addr");
    let proxy = Proxy::new(config);
    let served = tokio::spawn(proxy.clone().serve(listener));
    Harness { addr, proxy, served }
}

/// Whether backend `pid` is still in pg_stat_activity.
pub async fn backend_alive(pid: i32) -> bool {
    let c = admin("postgres").await;
    let n: i64 = c
        .query_one("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", &[&pid])
        .await
        .expect("pg_stat_activity")
        .get(0);
    n == 1
}

/// Upstream backends of a database, seen from the server.
pub async fn backends(db: &str) -> i64 {
    let admin = admin("postgres").await;
    admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND backend_type = 'client backend'",
            &[&db],
        )
        .await
        .expect("count backends")
        .get(0)
}

/// Whether `sql` (one `$1` parameter: `arg`) returns a row in database `db`, as the superuser.
async fn exists(db: &str, sql: &str, arg: &str) -> bool {
    admin(db).await.query_opt(sql, &[&arg]).await.expect("catalog query").is_some()
}

pub async fn database_exists(name: &str) -> bool {
    exists("postgres", "SELECT 1 FROM pg_database WHERE datname = $1", name).await
}

pub async fn role_exists(name: &str) -> bool {
    exists("postgres", "SELECT 1 FROM pg_roles WHERE rolname = $1", name).await
}

pub async fn schema_exists(db: &str, name: &str) -> bool {
    exists(db, "SELECT 1 FROM pg_namespace WHERE nspname = $1", name).await
}

/// The SQLSTATE of a tokio-postgres error.
pub fn code(e: &tokio_postgres::Error) -> String {
    e.code().map(|c| c.code().to_owned()).unwrap_or_else(|| format!("no sqlstate: {e}"))
}

/// A control database of its own for one test: migrated, with upstream `local` (TCP) in it.
/// The control database's name in `cfg`'s catalog URL (as [`control_db`] sets it).
pub fn catalog_dbname(cfg: &Config) -> String {
    cfg.catalog.url.split_whitespace().find_map(|kv| kv.strip_prefix("dbname=")).expect("dbname").to_owned()
}

pub async fn control_db(cfg: &mut Config) -> Client {
    let db = unique("ctl");
    admin("postgres").await.batch_execute(&format!("CREATE DATABASE {db}")).await.expect("control db");
    cfg.catalog.url = cluster().superuser_conninfo(&db);
    let mut control = connect_str(&cfg.catalog.url).await;
    pgtenant::catalog::migrations::migrate(&mut control).await.expect("migrate");
    control
        .execute(
            "INSERT INTO pgtenant.upstreams (name, host, port, max_connections) VALUES ('local', '127.0.0.1', $1, 250)",
            &[&i32::from(cluster().port)],
        )
        .await
        .expect("upstream row");
    control
}

/// Writes a tenant row into a control database.
pub async fn insert_tenant(control: &Client, t: &TenantConfig) {
    control
        .execute(
            "INSERT INTO pgtenant.tenants (id, status, isolation, upstream, database, schema_name, login_role,
                                           login_password, pool_mode, pool_size, search_path_public)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            &[
                &t.id,
                &t.status.as_str(),
                &t.isolation.as_str(),
                &t.upstream,
                &t.database,
                &t.schema,
                &t.role,
                &t.password,
                &t.pool_mode.unwrap_or(PoolMode::Transaction).as_str(),
                &t.pool_size.map(|n| n as i32),
                &t.search_path_public,
            ],
        )
        .await
        .expect("tenant row");
}

/// The proxy over the control database named in `config`.
pub async fn start_control(config: Config) -> (Harness, Arc<pgtenant::catalog::ControlCatalog>) {
    let catalog = pgtenant::catalog::ControlCatalog::start(&config.catalog, &config.pool)
        .await
        .expect("control catalog");
    let listener = pgtenant::listener::bind(config.proxy.listen, config.proxy.listen_backlog).expect("bind");
    let addr = listener.local_addr().expect("addr");
    let proxy = Proxy::with_catalog(config, catalog.clone());
    let served = tokio::spawn(proxy.clone().serve(listener));
    // Wait for the LISTEN connection so that changes made by the test are seen.
    for _ in 0..100 {
        if catalog.listening() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (Harness { addr, proxy, served }, catalog)
}

/// Polls `check` every 20 ms until it holds or `limit` passes; returns whether it held.
pub async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A forwarder to the cluster for what a proxy writes upstream: each chunk it reads goes
/// through `hold`, which says how many of its bytes go at once and how long the rest waits
/// (the server's replies come back as they are).
pub async fn upstream_tap<F>(hold: F) -> u16
where
    F: Fn(&[u8]) -> (usize, Duration) + Send + Sync + 'static,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = l.local_addr().expect("addr").port();
    let hold = Arc::new(hold);
    tokio::spawn(async move {
        while let Ok((inbound, _)) = l.accept().await {
            let hold = hold.clone();
            tokio::spawn(async move {
                let Ok(outbound) = TcpStream::connect(("127.0.0.1", cluster().port)).await else { return };
                let (mut from_proxy, mut to_client) = inbound.into_split();
                let (mut from_server, mut to_server) = outbound.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut from_server, &mut to_client).await;
                });
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n) = from_proxy.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    let chunk = &buf[..n];
                    let (at, wait) = hold(chunk);
                    let (now, later) = chunk.split_at(at.min(n));
                    if to_server.write_all(now).await.is_err() {
                        break;
                    }
                    if !later.is_empty() {
                        tokio::time::sleep(wait).await;
                        if to_server.write_all(later).await.is_err() {
                            break;
                        }
                    }
                }
            });
        }
    });
    port
}

/// A TCP forwarder that can be stopped (all connections cut, port closed) and started again
/// on the same port: a control database that goes away and comes back.
pub struct Forwarder {
    pub port: u16,
    target: u16,
    stop: std::sync::Mutex<Option<tokio::sync::watch::Sender<bool>>>,
}

impl Forwarder {
    pub async fn start(target: u16) -> Arc<Forwarder> {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = l.local_addr().expect("addr").port();
        let f = Arc::new(Forwarder { port, target, stop: std::sync::Mutex::new(None) });
        f.run(l);
        f
    }

    fn run(&self, listener: tokio::net::TcpListener) {
        let (tx, rx) = tokio::sync::watch::channel(false);
        *self.stop.lock().expect("lock") = Some(tx);
        let target = self.target;
        tokio::spawn(async move {
            loop {
                let mut stop = rx.clone();
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    _ = stop.changed() => return,
                };
                let Ok((mut inbound, _)) = accepted else { return };
                let mut stop = rx.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", target)).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = stop.changed() => {}
                    }
                });
            }
        });
    }

    /// Cuts every connection and closes the port.
    pub fn stop(&self) {
        if let Some(tx) = self.stop.lock().expect("lock").take() {
            let _ = tx.send(true);
        }
    }

    /// Listens on the same port again.
    pub async fn resume(&self) {
        let l = tokio::net::TcpListener::bind(("127.0.0.1", self.port)).await.expect("rebind");
        self.run(l);
    }
}

/// Upstream backends of a database logged in as `role` (pgtenant's, not the test's own).
pub async fn backends_as(db: &str, role: &str) -> i64 {
    let admin = admin("postgres").await;
    admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND usename = $2 AND backend_type = 'client backend'",
            &[&db, &role],
        )
        .await
        .expect("count backends")
        .get(0)
}

/// A client whose notifications arrive on the returned channel as (channel, payload).
pub async fn listening_client(
    conninfo: &str,
) -> (Client, tokio::sync::mpsc::UnboundedReceiver<(String, String)>) {
    use futures_util::TryStreamExt;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let (client, mut conn) = tokio_postgres::connect(conninfo, NoTls).await.expect("connect");
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Ok(Some(m)) = messages.try_next().await {
            if let tokio_postgres::AsyncMessage::Notification(n) = m {
                let _ = tx.send((n.channel().to_owned(), n.payload().to_owned()));
            }
        }
    });
    (client, rx)
}

/// Everything the proxies of this test binary log (at info and above), from the first call
/// on: tests look for their own tenant ids in it.
pub fn logs() -> Logs {
    static LOGS: OnceLock<Logs> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Logs(Arc::new(std::sync::Mutex::new(Vec::new())));
        let sink = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || sink.clone())
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("the only global subscriber");
        logs
    })
    .clone()
}

#[derive(Clone)]
pub struct Logs(Arc<std::sync::Mutex<Vec<u8>>>);

impl Logs {
    /// The log lines that contain every one of `needles`.
    pub fn lines_with(&self, needles: &[&str]) -> Vec<String> {
        let text = self.0.lock().unwrap_or_else(|e| e.into_inner());
        String::from_utf8_lossy(&text)
            .lines()
            .filter(|l| needles.iter().all(|n| l.contains(n)))
            .map(str::to_owned)
            .collect()
    }
}

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut text = self.0.lock().unwrap_or_else(|e| e.into_inner());
        // Bounded: the oldest half goes when it grows past 32 MiB.
        if text.len() > 32 << 20 {
            let half = text.len() / 2;
            text.drain(..half);
        }
        text.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
