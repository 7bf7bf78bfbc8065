//! Test support: one throwaway PostgreSQL cluster per test binary, a database and login role
//! per test, and the proxy started in-process on port 0.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use pgtenant::config::{Config, TenantConfig, UpstreamConfig};
use pgtenant::embedded::Cluster;
use pgtenant::model::PoolMode;
use pgtenant::server::Proxy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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

/// A raw connection: send bytes, read everything until the proxy closes (or `limit`).
pub async fn raw_exchange(addr: SocketAddr, send: &[u8], limit: Duration) -> (Vec<u8>, bool) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(send).await.expect("send");
    let mut got = Vec::new();
    let closed = tokio::time::timeout(limit, async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .is_ok();
    (got, closed)
}

/// A v3.0 startup packet with the given parameters.
pub fn startup_packet(params: &[(&str, &str)]) -> Vec<u8> {
    startup_packet_version(0x0003_0000, params)
}

/// A startup packet for a given protocol version word (major << 16 | minor).
pub fn startup_packet_version(version: i32, params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = version.to_be_bytes().to_vec();
    for (k, v) in params {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut p = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    p.extend_from_slice(&body);
    p
}

/// The SQLSTATE of the first ErrorResponse in a byte stream.
pub fn sqlstate(bytes: &[u8]) -> Option<String> {
    let mut rest = bytes;
    while rest.len() >= 5 {
        let len = i32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize + 1;
        if rest.len() < len {
            return None;
        }
        if rest[0] == b'E' {
            let body = &rest[5..len];
            for field in body.split(|b| *b == 0) {
                if let Some(code) = field.strip_prefix(b"C") {
                    return Some(String::from_utf8_lossy(code).into_owned());
                }
            }
        }
        rest = &rest[len..];
    }
    None
}

/// The SQLSTATE of a tokio-postgres error.
pub fn code(e: &tokio_postgres::Error) -> String {
    e.code().map(|c| c.code().to_owned()).unwrap_or_else(|| format!("no sqlstate: {e}"))
}

/// Reads from a raw connection until a ReadyForQuery(I) arrives; returns what was read.
pub async fn read_until_ready(s: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(6).any(|w| w == b"Z\0\0\0\x05I") {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("reply in time")
            .expect("read");
        assert!(n > 0, "closed before ReadyForQuery: {got:?}");
        got.extend_from_slice(&buf[..n]);
    }
    got
}

/// A control database of its own for one test: migrated, with upstream `local` (TCP) in it.
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
