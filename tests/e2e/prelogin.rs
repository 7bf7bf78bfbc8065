//! Connections that have not logged in yet: their own cap (past it, closed at once with
//! 53300), no places taken from logged-in clients, authentication messages capped as
//! PostgreSQL caps them, and lookups of uncached tenants limited per address.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use pgtenant::config::UserConfig;
use pgtenant::model::AuthMethod;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::support::*;

/// Opens `n` TCP connections to `addr` that never send a byte.
async fn silent_sockets(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut all = Vec::with_capacity(n);
    while all.len() < n {
        let batch = (n - all.len()).min(250);
        let opened = futures_util::future::join_all((0..batch).map(|_| TcpStream::connect(addr))).await;
        for s in opened {
            all.push(s.expect("connect a silent socket"));
        }
    }
    all
}

/// Reads until the peer closes; what arrived, or None if it did not close within `limit`.
async fn read_to_close(s: &mut TcpStream, limit: Duration) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    tokio::time::timeout(limit, async {
        let mut buf = [0u8; 1024];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .ok()
    .map(|()| got)
}

/// One real login through the proxy and a query: how long it took.
async fn timed_login(h: &Harness, tenant: &str) -> Duration {
    let started = Instant::now();
    let (client, conn) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_postgres::connect(&h.conninfo(tenant), tokio_postgres::NoTls),
    )
    .await
    .expect("a login within 10 s")
    .expect("login");
    tokio::spawn(conn);
    let v: i32 = client.query_one("SELECT 7", &[]).await.expect("query").get(0);
    assert_eq!(v, 7);
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_silent_sockets_do_not_keep_a_real_client_out() {
    // Both ends of every silent socket live in this process: raise its own limit first.
    let limit = pgtenant::listener::raise_fd_limit(16_000).expect("RLIMIT_NOFILE");
    let n = 5000.min((limit.now.saturating_sub(2000) / 2) as usize);
    assert!(n >= 400, "too few descriptors for this test: {limit:?}");
    let t = tenant_db("silent").await;
    let mut cfg = config(vec![t.clone()]);
    // Few places for logged-in clients: silent sockets must not take them.
    cfg.proxy.max_client_conn = 5;
    cfg.proxy.startup_timeout = 60.0;
    let h = start(cfg).await;
    let silent = silent_sockets(h.addr, n).await;
    assert!(
        eventually(Duration::from_secs(20), || async { h.proxy.prelogin_count() >= n }).await,
        "the proxy holds {} of {n} silent sockets",
        h.proxy.prelogin_count()
    );
    assert_eq!(h.proxy.client_count(), 0, "connections logging in take no client places");

    // The requirement is one login within 1 s; on a loaded two-core machine a single
    // measurement may hit a scheduling hiccup, so the best of three counts.
    let mut timings = Vec::new();
    for _ in 0..3 {
        let took = timed_login(&h, &t.id).await;
        timings.push(took);
        if took < Duration::from_secs(1) {
            break;
        }
    }
    eprintln!("login behind {n} silent sockets: {timings:?}");
    assert!(
        timings.iter().any(|d| *d < Duration::from_secs(1)),
        "no login within 1 s behind {n} silent sockets: {timings:?}"
    );
    // The silent sockets were all still held while the client logged in.
    assert!(h.proxy.prelogin_count() >= n, "{} held", h.proxy.prelogin_count());
    drop(silent);
    assert!(eventually(Duration::from_secs(20), || async { h.proxy.prelogin_count() == 0 }).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_prelogin_cap_are_closed_at_once() {
    let t = tenant_db("precap").await;
    let mut cfg = config(vec![t.clone()]);
    cfg.proxy.max_prelogin_connections = 20;
    cfg.proxy.startup_timeout = 10.0;
    let h = start(cfg).await;
    // Logged-in clients do not count against the pre-login cap.
    let mut logged_in = Vec::new();
    for _ in 0..25 {
        logged_in.push(h.client(&t.id).await);
    }
    assert!(eventually(Duration::from_secs(5), || async { h.proxy.prelogin_count() == 0 }).await);
    let silent = silent_sockets(h.addr, 20).await;
    assert!(eventually(Duration::from_secs(5), || async { h.proxy.prelogin_count() == 20 }).await);

    // The next one is told 53300 and closed at once, long before the startup timeout.
    let started = Instant::now();
    let mut extra = TcpStream::connect(h.addr).await.expect("connect");
    let got = read_to_close(&mut extra, Duration::from_secs(3)).await.expect("closed at once");
    assert!(started.elapsed() < Duration::from_secs(1), "closed after {:?}", started.elapsed());
    assert_eq!(sqlstate(&got).as_deref(), Some("53300"), "{got:?}");
    assert!(String::from_utf8_lossy(&got).contains("max_prelogin_connections"));
    // The silent ones are still held; the logged-in clients are served.
    assert_eq!(h.proxy.prelogin_count(), 20);
    for c in &logged_in {
        c.batch_execute("SELECT 1").await.expect("logged-in client unaffected");
    }
    drop(silent);
    assert!(eventually(Duration::from_secs(5), || async { h.proxy.prelogin_count() == 0 }).await);
    h.client(&t.id).await.batch_execute("SELECT 1").await.expect("room again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_authentication_messages_are_refused_at_once() {
    let mut t = tenant_db("bigauth").await;
    t.users = vec![UserConfig { name: "app".into(), verifier: pgtenant::auth::Verifier::hash("secret") }];
    let mut cfg = config(vec![t.clone()]);
    cfg.proxy.auth = AuthMethod::ScramSha256;
    cfg.proxy.startup_timeout = 10.0;
    let h = start(cfg).await;
    let user = format!("app.{}", t.id);
    // 1 GiB - 1 (PostgreSQL's message limit) and 65536 (one past PG_MAX_AUTH_TOKEN_LENGTH),
    // for a known and an unknown tenant alike.
    for (user, len) in
        [(user.as_str(), 0x3fff_ffffu32), (user.as_str(), 65_536), ("app.nosuchtenant", 0x3fff_ffff)]
    {
        let mut s = TcpStream::connect(h.addr).await.expect("connect");
        s.write_all(&startup_packet(&[("user", user)])).await.expect("startup");
        let mut header = [0u8; 5];
        s.read_exact(&mut header).await.expect("AuthenticationSASL");
        assert_eq!(header[0], b'R');
        let mut body =
            vec![0u8; u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize - 4];
        s.read_exact(&mut body).await.expect("AuthenticationSASL body");
        let started = Instant::now();
        let mut msg = vec![b'p'];
        msg.extend_from_slice(&len.to_be_bytes());
        msg.extend_from_slice(b"SCRAM-SHA-256\0");
        s.write_all(&msg).await.expect("header");
        let got = read_to_close(&mut s, Duration::from_secs(5)).await.expect("closed");
        assert!(started.elapsed() < Duration::from_secs(2), "refused after {:?}", started.elapsed());
        assert_eq!(sqlstate(&got).as_deref(), Some("08P01"), "{user} {len}: {got:?}");
    }
    // A real SCRAM login still works.
    let conninfo = format!("{} password=secret", h.conninfo(&t.id));
    connect_str(&conninfo).await.batch_execute("SELECT 1").await.expect("login");
}

/// A raw trust login from a given local address: the SQLSTATE it failed with, or None
/// when it reached ReadyForQuery.
async fn login_from(source: &str, addr: SocketAddr, user: &str) -> Option<String> {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.bind(format!("{source}:0").parse().expect("source")).expect("bind source");
    let mut s = socket.connect(addr).await.expect("connect");
    s.write_all(&startup_packet(&[("user", user)])).await.expect("startup");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(6).any(|w| w == b"Z\0\0\0\x05I") {
        match tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await.expect("answer") {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    sqlstate(&got).or_else(|| (!got.windows(6).any(|w| w == b"Z\0\0\0\x05I")).then(|| "closed".into()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uncached_tenant_lookups_are_limited_per_address() {
    let t = tenant_db("lookuprate").await;
    let mut cfg = config(vec![]);
    let control = control_db(&mut cfg).await;
    insert_tenant(&control, &t).await;
    // One lookup per two seconds per address (a burst of one).
    cfg.catalog.lookup_rate_per_address = 0.5;
    cfg.catalog.negative_ttl = 60.0;
    let (h, catalog) = start_control(cfg).await;
    let before = catalog.fetches();
    let started = Instant::now();
    for n in 0..10 {
        let code = login_from("127.0.0.1", h.addr, &format!("app.nosuch{n}")).await;
        assert_eq!(code.as_deref(), Some("3D000"), "unknown tenant {n}");
    }
    let elapsed = started.elapsed().as_secs_f64();
    let fetched = catalog.fetches() - before;
    assert!(
        fetched as f64 <= 1.0 + 0.5 * elapsed,
        "{fetched} control-database lookups in {elapsed:.2} s from one address"
    );
    // The real tenant, not cached yet, from the same address: over the limit, it fails
    // exactly as an unknown tenant does (unless the bucket refilled meanwhile).
    let user = format!("app.{}", t.id);
    if started.elapsed() < Duration::from_millis(1900) {
        assert_eq!(login_from("127.0.0.1", h.addr, &user).await.as_deref(), Some("3D000"));
    }
    // Another address has its own allowance.
    assert_eq!(login_from("127.0.0.2", h.addr, &user).await, None);
    // Now cached: a cached tenant is never limited.
    assert_eq!(login_from("127.0.0.1", h.addr, &user).await, None);
    // Repeats of one unknown id hit the negative cache, not the control database.
    let before = catalog.fetches();
    for _ in 0..5 {
        assert_eq!(login_from("127.0.0.3", h.addr, "app.nosuch0").await.as_deref(), Some("3D000"));
    }
    assert!(catalog.fetches() - before <= 1);
}
