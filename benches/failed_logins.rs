//! Do failed logins from one address slow down other clients' logins? Measures the latency
//! of successful SCRAM logins (connect + one query) from 127.0.0.1, alone and while another
//! task makes 1,000 failed logins from 127.0.0.2, with throttling on (the default) and off.
//!
//! `cargo bench --bench failed_logins` (starts its own throwaway PostgreSQL).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgtenant::auth::Verifier;
use pgtenant::config::{Config, TenantConfig, UpstreamConfig, UserConfig};
use pgtenant::embedded::Cluster;
use pgtenant::model::AuthMethod;
use pgtenant::proxy::Proxy;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const GOOD_LOGINS: usize = 300;
const FAILED_LOGINS: usize = 1000;

fn main() {
    let cluster = Cluster::start().expect("cluster");
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    rt.block_on(run(&cluster));
}

async fn run(cluster: &Cluster) {
    let (admin, conn) =
        tokio_postgres::connect(&cluster.superuser_conninfo("postgres"), tokio_postgres::NoTls)
            .await
            .expect("admin");
    tokio::spawn(conn);
    admin.batch_execute("CREATE ROLE bench LOGIN PASSWORD 'bench'").await.expect("role");
    admin.batch_execute("CREATE DATABASE bench OWNER bench").await.expect("db");
    println!(
        "successful logins (connect + SELECT 1) from 127.0.0.1, {GOOD_LOGINS} sequential, median / p90:"
    );
    for throttle in [20u32, 0] {
        let addr = proxy(cluster, throttle).await;
        let alone = measure(addr).await;
        let attacker = tokio::spawn(async move {
            for _ in 0..FAILED_LOGINS {
                failed_login(addr).await;
            }
        });
        let attacked = measure(addr).await;
        let _ = attacker.await;
        println!(
            "  throttling {:<3}  alone {:>7.2?} / {:>7.2?}   during {FAILED_LOGINS} failed logins {:>7.2?} / {:>7.2?}   ratio {:.2}",
            if throttle > 0 { "on" } else { "off" },
            alone.0,
            alone.1,
            attacked.0,
            attacked.1,
            attacked.0.as_secs_f64() / alone.0.as_secs_f64()
        );
    }
}

async fn proxy(cluster: &Cluster, throttle: u32) -> SocketAddr {
    let mut c = Config::parse("").expect("config");
    c.proxy.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    c.proxy.auth = AuthMethod::ScramSha256;
    c.proxy.max_auth_failures = throttle;
    c.upstreams = vec![UpstreamConfig {
        name: "local".into(),
        host: "127.0.0.1".into(),
        port: cluster.port,
        max_connections: 20,
        sslmode: Default::default(),
        sslrootcert: None,
        require_auth: None,
    }];
    let mut t = TenantConfig::new("bench", "local", "bench", "bench", Some("bench"));
    t.users.push(UserConfig { name: "app".into(), verifier: Verifier::hash("good") });
    c.tenants = vec![t];
    let listener = tokio::net::TcpListener::bind(c.proxy.listen).await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let proxy: Arc<Proxy> = Proxy::new(c);
    tokio::spawn(proxy.serve(listener));
    addr
}

async fn measure(addr: SocketAddr) -> (Duration, Duration) {
    let conninfo = format!("host=127.0.0.1 port={} user=app.bench dbname=bench password=good", addr.port());
    let mut times = Vec::with_capacity(GOOD_LOGINS);
    for _ in 0..GOOD_LOGINS {
        let started = Instant::now();
        let (c, conn) = tokio_postgres::connect(&conninfo, tokio_postgres::NoTls).await.expect("login");
        tokio::spawn(conn);
        c.simple_query("SELECT 1").await.expect("query");
        times.push(started.elapsed());
    }
    times.sort();
    (times[times.len() / 2], times[times.len() * 9 / 10])
}

/// A full SCRAM exchange with a wrong password from 127.0.0.2.
async fn failed_login(addr: SocketAddr) {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.bind(SocketAddr::from(([127, 0, 0, 2], 0))).expect("bind");
    let Ok(mut s) = socket.connect(addr).await else { return };
    let mut startup = 196608i32.to_be_bytes().to_vec();
    startup.extend_from_slice(b"user\0app.bench\0database\0bench\0\0");
    let mut packet = ((startup.len() + 4) as i32).to_be_bytes().to_vec();
    packet.extend(startup);
    if s.write_all(&packet).await.is_err() {
        return;
    }
    let mut client = ScramSha256::new(b"wrong", ChannelBinding::unsupported());
    let Some(first) = read_message(&mut s).await else { return };
    if first[0] != b'R' {
        return; // throttled: refused before the exchange
    }
    let mut body = b"SCRAM-SHA-256\0".to_vec();
    body.extend_from_slice(&(client.message().len() as i32).to_be_bytes());
    body.extend_from_slice(client.message());
    let _ = s.write_all(&frame(b'p', &body)).await;
    let Some(cont) = read_message(&mut s).await else { return };
    if cont.len() < 9 || client.update(&cont[9..]).is_err() {
        return;
    }
    let _ = s.write_all(&frame(b'p', client.message())).await;
    let _ = read_message(&mut s).await;
}

fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut f = vec![tag];
    f.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    f.extend_from_slice(body);
    f
}

async fn read_message(s: &mut tokio::net::TcpStream) -> Option<Vec<u8>> {
    let mut head = [0u8; 5];
    s.read_exact(&mut head).await.ok()?;
    let len = (i32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize).checked_sub(4)?;
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await.ok()?;
    let mut m = head.to_vec();
    m.extend(body);
    Some(m)
}
