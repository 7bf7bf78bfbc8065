//! Rolling restarts (issue 15), with real `pgtenant serve` processes on one control
//! database behind a round-robin HAProxy: each new process takes the listening socket over
//! from the running one on its port (`[proxy] handover`), which then waits for its clients
//! and exits; `pgbench -C` through the balancer sees no failed connection or transaction;
//! a draining instance stays registered and its clients' cancels, sent to any instance,
//! still arrive.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pgtenant::config::TenantConfig;
use pgtenant::model::PoolMode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::Command;

use crate::instances::{backend_key, haproxy, raw_login, send_cancel};
use crate::support::raw::{query, read_ready, send, sqlstate, startup_packet};
use crate::support::*;

/// Starts an instance listening on `port` with the handover socket `handover`; returns once it
/// accepts (for a successor: once it has taken the socket over).
async fn node(dir: &Path, name: &str, catalog_url: &str, port: u16, handover: &Path) -> ServeProcess {
    let path = dir.join(format!("{name}.toml"));
    let toml = format!(
        "[proxy]\nlisten = \"127.0.0.1:{port}\"\nshutdown_timeout = 30\nheartbeat_interval = 0.5\n\
         handover = {handover}\ninstance_id = \"{name}\"\n\n[catalog]\nurl = {url}\n",
        handover = toml_str(&handover.display().to_string()),
        url = toml_str(catalog_url),
    );
    std::fs::write(&path, toml).expect("write config");
    ServeProcess::spawn(pgtenant_command().arg("serve").arg("--config").arg(&path).env("RUST_LOG", "info"))
        .await
}

fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("free port").local_addr().expect("addr").port()
}

/// A control database holding `t`, and `n` ports with a handover socket path each.
async fn service(
    t: &TenantConfig,
    n: usize,
    dir: &Path,
) -> (tokio_postgres::Client, String, Vec<(u16, PathBuf)>) {
    let mut cfg = config(vec![]);
    let control = control_db(&mut cfg).await;
    insert_tenant(&control, t).await;
    let slots = (0..n).map(|i| (free_port(), dir.join(format!("{i}.sock")))).collect();
    (control, cfg.catalog.url, slots)
}

async fn registered(control: &tokio_postgres::Client) -> Vec<String> {
    let rows = control.query("SELECT id FROM pgtenant.instances ORDER BY id", &[]).await.expect("instances");
    rows.iter().map(|r| r.get(0)).collect()
}

fn failed_transactions(output: &str) -> Option<u64> {
    let line = output.lines().find(|l| l.starts_with("number of failed transactions"))?;
    line.split(':').nth(1)?.split_whitespace().next()?.parse().ok()
}

fn processed(output: &str) -> Option<u64> {
    let line = output.lines().find(|l| l.starts_with("number of transactions actually processed"))?;
    line.split(':').nth(1)?.split('/').next()?.trim().parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_under_pgbench_refuses_nobody() {
    let t = with_mode(tenant_db("roll").await, PoolMode::Transaction, 8);
    let dir = tempfile::tempdir().expect("tempdir");
    let (control, url, slots) = service(&t, 3, dir.path()).await;
    // pgbench's tables, made directly on the tenant's database.
    let direct = format!(
        "host=127.0.0.1 port={} user={} password={} dbname={}",
        cluster().port,
        t.role,
        t.password.as_deref().unwrap_or_default(),
        t.database
    );
    let init = Command::new("pgbench")
        .args(["-i", "-q", "-s", "1"])
        .arg(&direct)
        .output()
        .await
        .expect("pgbench -i");
    assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));
    let mut nodes = Vec::new();
    for (i, (port, sock)) in slots.iter().enumerate() {
        nodes.push(Some(node(dir.path(), &format!("n{i}-gen0"), &url, *port, sock).await));
    }
    let lb =
        haproxy(&slots.iter().map(|(p, _)| SocketAddr::from(([127, 0, 0, 1], *p))).collect::<Vec<_>>()).await;
    let conninfo = format!("host=127.0.0.1 port={} user=app.{} dbname={}", lb.addr.port(), t.id, t.database);
    // A new connection per transaction, through the balancer, for 20 s.
    let bench = tokio::spawn(async move {
        Command::new("pgbench")
            .args(["-n", "-C", "-S", "-c", "4", "-j", "2", "-T", "20"])
            .arg(&conninfo)
            .output()
            .await
            .expect("pgbench")
    });
    // Each instance in turn: the new process takes the socket over, the old one waits for
    // its clients and exits by itself.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for (i, (port, sock)) in slots.iter().enumerate() {
        let old = nodes[i].take().expect("running");
        let new = node(dir.path(), &format!("n{i}-gen1"), &url, *port, sock).await;
        assert!(new.log().contains("took_over=true"), "{}", new.log());
        let old_log = old.exited(Duration::from_secs(15)).await;
        assert!(old_log.contains("handover: the new instance accepts"), "{old_log}");
        nodes[i] = Some(new);
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let out = bench.await.expect("pgbench task");
    let text = format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "pgbench failed:\n{text}");
    assert!(!text.contains("aborted"), "{text}");
    assert_eq!(failed_transactions(&text), Some(0), "{text}");
    assert!(processed(&text).is_some_and(|n| n >= 200), "{text}");
    eprintln!(
        "pgbench through the roll: {:?} transactions, {:?} failed",
        processed(&text),
        failed_transactions(&text)
    );
    // Every old instance left the registry once drained: only the new ones remain.
    let want: Vec<String> = (0..3).map(|i| format!("n{i}-gen1")).collect();
    assert!(
        eventually(Duration::from_secs(5), || async { registered(&control).await == want }).await,
        "{:?}",
        registered(&control).await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_instance_stays_registered_and_gets_its_cancels() {
    let t = with_mode(tenant_db("roll_cancel").await, PoolMode::Transaction, 4);
    let dir = tempfile::tempdir().expect("tempdir");
    let (control, url, slots) = service(&t, 2, dir.path()).await;
    let a = node(dir.path(), "a", &url, slots[0].0, &slots[0].1).await;
    let _b = node(dir.path(), "b", &url, slots[1].0, &slots[1].1).await;
    let (a_addr, b_addr) =
        (SocketAddr::from(([127, 0, 0, 1], slots[0].0)), SocketAddr::from(([127, 0, 0, 1], slots[1].0)));
    let (mut s, reply) = raw_login(a_addr, &t.id, 0x0003_0000).await;
    let (pid, secret) = backend_key(&reply);
    // a2 takes a's socket over: a stops accepting but keeps its client, and its row.
    let a2 = node(dir.path(), "a2", &url, slots[0].0, &slots[0].1).await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            a.log().contains("draining: staying in the instance registry")
        })
        .await,
        "{}",
        a.log()
    );
    assert_eq!(registered(&control).await, ["a", "a2", "b"]);
    // A cancel sent to another instance (b forwards it to a's address, where a2 accepts now
    // and passes it down the handover link), and one sent to that address directly.
    for (via, name) in [(b_addr, "b"), (a_addr, "a's address (a2)")] {
        send(&mut s, &query("SELECT pg_sleep(10)")).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let sent = Instant::now();
        send_cancel(via, pid, &secret).await;
        let (got, closed) = read_ready(&mut s, 1, Duration::from_secs(5)).await;
        assert!(!closed, "via {name}: the draining instance closed its client: {got:?}");
        assert_eq!(sqlstate(&got).as_deref(), Some("57014"), "via {name}: {got:?}");
        assert!(sent.elapsed() < Duration::from_secs(1), "via {name}: took {:?}", sent.elapsed());
    }
    // The client leaves: a deregisters and exits; a2 and b serve on.
    send(&mut s, &crate::support::raw::msg(b'X', &[])).await;
    let _ = s.shutdown().await;
    let a_log = a.exited(Duration::from_secs(10)).await;
    assert!(a_log.contains("deregistered"), "{a_log}");
    assert_eq!(registered(&control).await, ["a2", "b"]);
    let (mut s2, _) = raw_login(a_addr, &t.id, 0x0003_0000).await;
    send(&mut s2, &query("SELECT 1")).await;
    let (got, _) = read_ready(&mut s2, 1, Duration::from_secs(5)).await;
    assert_eq!(sqlstate(&got), None, "{got:?}");
    drop(a2);
}

/// What the handover is for: connections that wait in the kernel's accept queue when the old
/// instance stops accepting are served by the new one (it is the same socket), where closing
/// one of two SO_REUSEPORT sockets resets the connections queued on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_queued_at_a_handover_are_all_served() {
    use std::os::fd::AsFd;
    let t = with_mode(tenant_db("roll_queue").await, PoolMode::Transaction, 4);
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("h.sock");
    // The old instance hands its socket over on request but never accepts: every connection
    // below is still in the kernel's queue when the handover happens.
    let listener = pgtenant::listener::bind(SocketAddr::from(([127, 0, 0, 1], 0)), 128).expect("bind");
    let addr = listener.local_addr().expect("addr");
    let old = pgtenant::proxy::Proxy::new(config(vec![t.clone()]));
    let socket = listener.as_fd().try_clone_to_owned().expect("dup");
    let unix = pgtenant::handover::listen(&sock).expect("handover socket");
    tokio::spawn(pgtenant::handover::serve(unix, socket, old.clone()));
    let user = format!("app.{}", t.id);
    let mut queued = Vec::new();
    for _ in 0..20 {
        let mut s = TcpStream::connect(addr).await.expect("connect (completed by the kernel)");
        s.write_all(&startup_packet(&[("user", &user)])).await.expect("startup");
        queued.push(s);
    }
    // The new instance takes the socket over and accepts; the old one closes its own.
    let path = sock.clone();
    let (taken, predecessor) = tokio::task::spawn_blocking(move || pgtenant::handover::take_over(&path))
        .await
        .expect("task")
        .expect("take over")
        .expect("a running instance");
    let new = pgtenant::proxy::Proxy::new(config(vec![t.clone()]));
    tokio::spawn(new.clone().serve(tokio::net::TcpListener::from_std(taken).expect("listener")));
    predecessor.go(&new).await.expect("go");
    assert!(
        eventually(Duration::from_secs(5), || async { old.shutdown.stop_accepting.is_cancelled() }).await,
        "the old instance stopped accepting"
    );
    drop(listener);
    for (n, s) in queued.iter_mut().enumerate() {
        let (got, closed) = read_ready(s, 1, Duration::from_secs(10)).await;
        assert!(!closed && sqlstate(&got).is_none(), "queued connection {n}: {got:?}");
    }

    // The same with two SO_REUSEPORT sockets and the first one closed (what a restart
    // without handover does): the connections queued on it are reset by the kernel, unless
    // net.ipv4.tcp_migrate_req = 1 hands them to the other socket.
    let migrates =
        std::fs::read_to_string("/proc/sys/net/ipv4/tcp_migrate_req").is_ok_and(|v| v.trim() == "1");
    let first =
        pgtenant::listener::bind_with(SocketAddr::from(([127, 0, 0, 1], 0)), 128, true).expect("bind");
    let shared = first.local_addr().expect("addr");
    let _second = pgtenant::listener::bind_with(shared, 128, true).expect("bind beside");
    let mut clients = Vec::new();
    for _ in 0..20 {
        let mut s = TcpStream::connect(shared).await.expect("connect");
        s.write_all(b"x").await.expect("write");
        clients.push(s);
    }
    drop(first);
    let mut reset = 0;
    for s in &mut clients {
        let mut byte = [0u8; 1];
        if let Ok(Err(_) | Ok(0)) = tokio::time::timeout(Duration::from_millis(300), s.read(&mut byte)).await
        {
            reset += 1;
        }
    }
    if migrates {
        assert_eq!(reset, 0, "tcp_migrate_req = 1: none reset");
    } else {
        assert!(reset > 0, "closing a SO_REUSEPORT socket reset none of 20 connections queued on the pair");
    }
    eprintln!("SO_REUSEPORT close: {reset} of 20 queued connections reset (tcp_migrate_req = {migrates})");
}
