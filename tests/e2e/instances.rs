//! Several pgtenant instances on one control database (issue 15): the instance registry,
//! cancels that reach the instance owning the key whichever instance they land on (directly
//! and through a round-robin HAProxy), protocol 3.2's longer cancel keys, and a suspend
//! reaching every instance.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgtenant::catalog::ControlCatalog;
use pgtenant::config::TenantConfig;
use pgtenant::instances::Instances;
use pgtenant::model::PoolMode;
use pgtenant::proxy::Proxy;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_postgres::NoTls;

use crate::support::raw::{login, messages, query, read_ready, send, startup_packet_version};
use crate::support::*;

/// One instance: its proxy (in-process, on its own port) and registry entry.
struct Instance {
    addr: SocketAddr,
    proxy: Arc<Proxy>,
    instances: Arc<Instances>,
}

/// Starts `n` instances over one control database holding `tenant`.
async fn service(n: usize, tenant: &TenantConfig) -> (Vec<Instance>, tokio_postgres::Client) {
    let mut cfg = config(vec![]);
    let control = control_db(&mut cfg).await;
    insert_tenant(&control, tenant).await;
    cfg.proxy.heartbeat_interval = 0.5;
    // The console (trust, as the tenants): SHOW INSTANCES.
    cfg.admin.admin_users = vec!["ops".into()];
    let mut out = Vec::new();
    for _ in 0..n {
        let listener = pgtenant::listener::bind(cfg.proxy.listen, 128).expect("bind");
        let addr = listener.local_addr().expect("addr");
        let catalog = ControlCatalog::start(&cfg.catalog, &cfg.pool).await.expect("control catalog");
        let instances = Instances::register(&cfg, addr).await.expect("register");
        let proxy = Proxy::with_instances(cfg.clone(), catalog.clone(), Some(instances.clone()));
        instances.spawn_heartbeat(proxy.shutdown.drain.clone());
        tokio::spawn(proxy.clone().serve(listener));
        assert!(eventually(Duration::from_secs(5), || async { catalog.listening() }).await, "LISTEN up");
        out.push(Instance { addr, proxy, instances });
    }
    (out, control)
}

/// HAProxy in TCP mode, round-robin over `backends`, on a free port of 127.0.0.1.
pub(crate) struct Haproxy {
    pub(crate) addr: SocketAddr,
    _child: tokio::process::Child,
    _dir: tempfile::TempDir,
}

pub(crate) async fn haproxy(backends: &[SocketAddr]) -> Haproxy {
    let port =
        std::net::TcpListener::bind("127.0.0.1:0").expect("free port").local_addr().expect("addr").port();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = String::from(
        "global\n  maxconn 4096\ndefaults\n  mode tcp\n  timeout connect 2s\n  timeout client 60s\n  timeout server 60s\n",
    );
    cfg += &format!("listen pg\n  bind 127.0.0.1:{port}\n  balance roundrobin\n");
    for (i, b) in backends.iter().enumerate() {
        cfg += &format!("  server s{i} {b}\n");
    }
    let file = dir.path().join("haproxy.cfg");
    std::fs::write(&file, cfg).expect("haproxy.cfg");
    let child = tokio::process::Command::new("haproxy")
        .arg("-db")
        .arg("-f")
        .arg(&file)
        .kill_on_drop(true)
        .spawn()
        .expect("haproxy (Debian package haproxy; .ci/run installs it)");
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    assert!(
        eventually(Duration::from_secs(5), || async { TcpStream::connect(addr).await.is_ok() }).await,
        "haproxy listening"
    );
    Haproxy { addr, _child: child, _dir: dir }
}

/// The key in a login reply: (pid, secret).
pub(crate) fn backend_key(reply: &[u8]) -> (i32, Vec<u8>) {
    let (_, body) = messages(reply).into_iter().find(|(t, _)| *t == b'K').expect("BackendKeyData");
    (i32::from_be_bytes(body[..4].try_into().expect("pid")), body[4..].to_vec())
}

fn cancel_packet(pid: i32, secret: &[u8]) -> Vec<u8> {
    let mut p = i32::try_from(12 + secret.len()).expect("small").to_be_bytes().to_vec();
    p.extend_from_slice(&80877102i32.to_be_bytes());
    p.extend_from_slice(&pid.to_be_bytes());
    p.extend_from_slice(secret);
    p
}

pub(crate) async fn send_cancel(addr: SocketAddr, pid: i32, secret: &[u8]) {
    let mut s = TcpStream::connect(addr).await.expect("connect for cancel");
    s.write_all(&cancel_packet(pid, secret)).await.expect("cancel");
    let _ = s.shutdown().await;
}

/// A raw login with protocol version `version`; returns the stream and the login reply.
pub(crate) async fn raw_login(addr: SocketAddr, tenant: &str, version: i32) -> (TcpStream, Vec<u8>) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let user = format!("app.{tenant}");
    s.write_all(&startup_packet_version(version, &[("user", &user)])).await.expect("startup");
    let (got, closed) = read_ready(&mut s, 1, Duration::from_secs(10)).await;
    assert!(!closed, "login failed: {got:?}");
    (s, got)
}

#[tokio::test]
async fn instances_register_with_distinct_slots_and_deregister() {
    let t = tenant_db("inst_reg").await;
    let (service, control) = service(3, &t).await;
    // A row left by an instance that died without deregistering is removed by the others'
    // heartbeats once three intervals old.
    control
        .execute(
            "INSERT INTO pgtenant.instances (id, slot, advertised_addr, version, heartbeat_at)
             VALUES ('ghost', 1000, '127.0.0.1:1', 'old', now() - interval '10 seconds')",
            &[],
        )
        .await
        .expect("ghost row");
    let ghost_gone = || async {
        control
            .query_opt("SELECT 1 FROM pgtenant.instances WHERE id = 'ghost'", &[])
            .await
            .expect("q")
            .is_none()
    };
    assert!(eventually(Duration::from_secs(3), ghost_gone).await, "stale row expired");
    let rows = service[0].instances.live().await.expect("live");
    assert_eq!(rows.len(), 3, "{rows:?}");
    let mut slots: Vec<i32> = rows.iter().map(|r| r.slot).collect();
    slots.dedup();
    assert_eq!(slots.len(), 3, "distinct slots: {rows:?}");
    for i in &service {
        assert!(rows.iter().any(|r| r.id == i.instances.id() && r.advertised_addr == i.addr.to_string()));
    }
    // GET /instances on the admin API lists the same rows.
    let body = http_instances(&service[0]).await;
    assert_eq!(body["this"], serde_json::json!(service[0].instances.id()));
    assert_eq!(body["instances"].as_array().map(|a| a.len()), Some(3), "{body}");
    // Shutdown deregisters: the others see two instances.
    service[2].proxy.shutdown.drain.cancel();
    assert!(
        eventually(Duration::from_secs(5), || async {
            service[0].instances.live().await.map(|r| r.len()).unwrap_or(0) == 2
        })
        .await,
        "the stopped instance left the registry"
    );
}

/// `GET /instances` on an admin API of `instance`'s proxy: the JSON body.
async fn http_instances(instance: &Instance) -> serde_json::Value {
    let token = pgtenant::admin::new_token();
    let mut cfg = config(vec![]);
    cfg.catalog.url = instance.proxy.config().catalog.url.clone();
    cfg.admin.token_sha256 = vec![pgtenant::admin::token_sha256(&token)];
    let state = pgtenant::admin::http::AdminState::new(instance.proxy.clone(), &cfg).expect("admin state");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("admin bind");
    let admin_addr = listener.local_addr().expect("addr");
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(pgtenant::admin::http::serve(listener, state, stop.clone()));
    let mut http = TcpStream::connect(admin_addr).await.expect("admin connect");
    let request = format!(
        "GET /instances HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    );
    http.write_all(request.as_bytes()).await.expect("request");
    let (reply, _) = crate::support::raw::read_eof(&mut http, Duration::from_secs(5)).await;
    stop.cancel();
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    serde_json::from_str(&reply[reply.find("\r\n\r\n").expect("body") + 4..]).expect("json")
}

/// SHOW INSTANCES on `instance`'s console: (instance id, draining) per row.
async fn show_instances(instance: &Instance) -> Vec<(String, String)> {
    let conninfo = format!("host=127.0.0.1 port={} user=ops dbname=pgbouncer", instance.addr.port());
    let c = connect_str(&conninfo).await;
    let mut rows = Vec::new();
    for m in c.simple_query("SHOW INSTANCES").await.expect("SHOW INSTANCES") {
        if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
            let get = |col: &str| r.get(col).unwrap_or("").to_owned();
            rows.push((get("instance"), get("draining")));
        }
    }
    rows
}

/// An instance told to stop accepting (SHUTDOWN WAIT_FOR_CLIENTS) while a client stays is
/// shown draining by its peer, on the console and on the HTTP API, from its next heartbeat;
/// the peer itself is not.
#[tokio::test]
async fn a_draining_instance_is_marked_on_its_peers() {
    let t = with_mode(tenant_db("inst_drain").await, PoolMode::Transaction, 2);
    let (service, _control) = service(2, &t).await;
    let (a, b) = (service[0].instances.id().to_owned(), service[1].instances.id().to_owned());
    let mut before = show_instances(&service[0]).await;
    before.sort();
    let mut want = vec![(a.clone(), "f".to_owned()), (b.clone(), "f".to_owned())];
    want.sort();
    assert_eq!(before, want);
    let stays = connect_str(&format!(
        "host=127.0.0.1 port={} user=app.{} dbname={}",
        service[1].addr.port(),
        t.id,
        t.id
    ))
    .await;
    stays.simple_query("SELECT 1").await.expect("a client of the second instance");
    service[1].proxy.shutdown.stop_accepting.cancel();
    let marked = eventually(Duration::from_secs(5), || async {
        show_instances(&service[0]).await.contains(&(b.clone(), "t".to_owned()))
    })
    .await;
    assert!(marked, "the peer never showed draining: {:?}", show_instances(&service[0]).await);
    assert!(show_instances(&service[0]).await.contains(&(a.clone(), "f".to_owned())));
    let body = http_instances(&service[0]).await;
    let draining: Vec<(String, bool)> = body["instances"]
        .as_array()
        .expect("instances")
        .iter()
        .map(|i| {
            (i["id"].as_str().unwrap_or("").to_owned(), i["draining"].as_bool().expect("draining is a bool"))
        })
        .collect();
    assert!(draining.contains(&(b.clone(), true)) && draining.contains(&(a, false)), "{body}");
    // The client it waits for still works; once it leaves, the instance leaves the registry.
    stays.simple_query("SELECT 2").await.expect("the draining instance serves its client");
    drop(stays);
    let gone = eventually(Duration::from_secs(5), || async {
        !show_instances(&service[0]).await.iter().any(|(id, _)| *id == b)
    })
    .await;
    assert!(gone, "the drained instance left the registry");
}

#[tokio::test]
async fn a_cancel_sent_to_another_instance_reaches_the_owner() {
    let t = with_mode(tenant_db("inst_fwd").await, PoolMode::Transaction, 4);
    let (service, _control) = service(2, &t).await;
    let (mut s, reply) = raw_login(service[0].addr, &t.id, 0x0003_0000).await;
    let (pid, secret) = backend_key(&reply);
    assert_eq!(secret.len(), 4);
    send(&mut s, &query("SELECT pg_sleep(10)")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent = Instant::now();
    send_cancel(service[1].addr, pid, &secret).await;
    let (got, _) = read_ready(&mut s, 1, Duration::from_secs(5)).await;
    assert_eq!(sqlstate(&got).as_deref(), Some("57014"), "cancelled via the other instance");
    assert!(sent.elapsed() < Duration::from_secs(1), "took {:?}", sent.elapsed());

    // A wrong secret is dropped by the owner: the query runs on.
    send(&mut s, &query("SELECT pg_sleep(1.5)")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut wrong = secret.clone();
    wrong[0] ^= 1;
    send_cancel(service[1].addr, pid, &wrong).await;
    // So is a key carrying the slot of no live instance.
    send_cancel(service[1].addr, (1000 << 21) | (pid & 0x1f_ffff), &secret).await;
    let (got, _) = read_ready(&mut s, 1, Duration::from_secs(5)).await;
    assert_eq!(sqlstate(&got), None, "not cancelled: {got:?}");
}

#[tokio::test]
async fn protocol_3_2_gets_a_32_byte_secret_and_needs_all_of_it() {
    let t = with_mode(tenant_db("inst_32").await, PoolMode::Transaction, 2);
    let (service, _control) = service(2, &t).await;
    let (mut s, reply) = raw_login(service[0].addr, &t.id, 0x0003_0002).await;
    assert!(!messages(&reply).iter().any(|(tag, _)| *tag == b'v'), "3.2 is spoken, not negotiated down");
    let (pid, secret) = backend_key(&reply);
    assert_eq!(secret.len(), 32);
    // The first four bytes alone (a 3.0-sized key) cancel nothing.
    send(&mut s, &query("SELECT pg_sleep(1.5)")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    send_cancel(service[1].addr, pid, &secret[..4]).await;
    let (got, _) = read_ready(&mut s, 1, Duration::from_secs(5)).await;
    assert_eq!(sqlstate(&got), None, "not cancelled: {got:?}");
    // The whole key, through the other instance, does.
    send(&mut s, &query("SELECT pg_sleep(10)")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent = Instant::now();
    send_cancel(service[1].addr, pid, &secret).await;
    let (got, _) = read_ready(&mut s, 1, Duration::from_secs(5)).await;
    assert_eq!(sqlstate(&got).as_deref(), Some("57014"));
    assert!(sent.elapsed() < Duration::from_secs(1), "took {:?}", sent.elapsed());
}

#[tokio::test]
async fn fifty_cancels_through_a_round_robin_balancer_all_arrive() {
    let t = with_mode(tenant_db("inst_lb").await, PoolMode::Transaction, 20);
    let (service, _control) = service(3, &t).await;
    let lb = haproxy(&service.iter().map(|i| i.addr).collect::<Vec<_>>()).await;
    let conninfo = format!("host=127.0.0.1 port={} user=app.{} dbname={}", lb.addr.port(), t.id, t.id);
    let mut late = Vec::new();
    // Ten at a time: each sleeps, is cancelled through the balancer, and must end in 57014
    // within a second of the cancel.
    for _batch in 0..5 {
        let mut tasks = Vec::new();
        for _ in 0..10 {
            let conninfo = conninfo.clone();
            tasks.push(tokio::spawn(async move {
                let (client, conn) =
                    tokio_postgres::connect(&conninfo, NoTls).await.expect("connect via haproxy");
                tokio::spawn(conn);
                let token = client.cancel_token();
                let running = tokio::spawn(async move { client.simple_query("SELECT pg_sleep(10)").await });
                tokio::time::sleep(Duration::from_millis(300)).await;
                let sent = Instant::now();
                token.cancel_query(NoTls).await.expect("cancel via haproxy");
                let ended = tokio::time::timeout(Duration::from_secs(5), running).await;
                let took = sent.elapsed();
                let code = match ended {
                    Ok(Ok(Err(e))) => code(&e),
                    other => format!("not cancelled: {other:?}"),
                };
                (code, took)
            }));
        }
        for task in tasks {
            let (code, took) = task.await.expect("task");
            assert_eq!(code, "57014");
            if took >= Duration::from_secs(1) {
                late.push(took);
            }
        }
    }
    assert!(late.is_empty(), "cancels later than 1 s: {late:?}");
}

#[tokio::test]
async fn a_suspend_reaches_every_instance_within_a_second() {
    let t = with_mode(tenant_db("inst_susp").await, PoolMode::Transaction, 4);
    let (service, control) = service(3, &t).await;
    let mut sessions = Vec::new();
    for i in &service {
        let user = format!("app.{}", t.id);
        let s = login(TcpStream::connect(i.addr).await.expect("connect"), &[("user", &user)]).await;
        sessions.push(s);
    }
    let started = Instant::now();
    control
        .execute("UPDATE pgtenant.tenants SET status = 'suspended' WHERE id = $1", &[&t.id])
        .await
        .expect("suspend");
    for (n, s) in sessions.iter_mut().enumerate() {
        let (got, closed) = crate::support::raw::read_eof(s, Duration::from_secs(2)).await;
        assert!(closed, "instance {n}: session still open");
        assert!(sqlstate(&got).is_some(), "instance {n}: closed with an ErrorResponse: {got:?}");
    }
    assert!(started.elapsed() < Duration::from_secs(1), "took {:?}", started.elapsed());
    // New logins are refused by each instance.
    for i in &service {
        let h = Harness { addr: i.addr, proxy: i.proxy.clone(), served: tokio::spawn(async { Ok(()) }) };
        let e = tokio_postgres::connect(&h.conninfo(&t.id), NoTls).await.err().expect("refused");
        assert!(e.code().is_some(), "refused with an SQLSTATE: {e}");
    }
}
