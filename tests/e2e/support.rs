//! Test support: one throwaway PostgreSQL cluster per test binary, a database and login role
//! per test, and the proxy started in-process on port 0.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use pgtenant::config::{Config, PoolMode, TenantConfig, UpstreamConfig};
use pgtenant::embedded::Cluster;
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
    let listener = tokio::net::TcpListener::bind(config.proxy.listen).await.expect("bind");
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
