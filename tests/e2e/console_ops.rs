//! The console's operational edge cases, as PgBouncer 1.25 has them (`src/admin.c`,
//! `src/janitor.c`): WAIT_CLOSE waiting for busy connections marked by RECONNECT, clients
//! waiting at a PAUSE that are killed or leave, RESUME with global and per-tenant pauses,
//! the named-statement counts of SHOW STATS, and the effective pool size of SHOW DATABASES.

use std::time::{Duration, Instant};

use pgtenant::model::PoolMode;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::console::{console_config, console_conninfo, message, num, show, trusted_tenant, OPS_PW};
use crate::support::raw::{query, read_eof, terminate};
use crate::support::*;

/// A console statement's error: SQLSTATE and text.
async fn refusal(ops: &tokio_postgres::Client, q: &str) -> (String, String) {
    let e = ops.simple_query(q).await.expect_err(q);
    (code(&e), message(&e))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_close_waits_for_a_busy_connection_marked_by_reconnect() {
    let t = trusted_tenant("opswait", PoolMode::Transaction, 2).await;
    let h = start(console_config(vec![t.clone()])).await;
    let ops = connect_str(&console_conninfo(&h, "ops", OPS_PW)).await;
    let a = h.client(&t.id).await;
    a.simple_query("SELECT 1").await.expect("the pool exists");
    // Nothing marked: answered at once.
    let q = format!("WAIT_CLOSE {}", t.id);
    tokio::time::timeout(Duration::from_secs(2), ops.simple_query(&q))
        .await
        .expect("at once")
        .expect("WAIT_CLOSE");

    a.batch_execute("BEGIN").await.expect("begin");
    let pid: i32 = a.query_one("SELECT pg_backend_pid()", &[]).await.expect("pid").get(0);
    ops.simple_query(&format!("RECONNECT {}", t.id)).await.expect("RECONNECT");
    let wait_close = |arg: String| {
        let info = console_conninfo(&h, "ops", OPS_PW);
        tokio::spawn(async move {
            let c = connect_str(&info).await;
            c.simple_query(&format!("WAIT_CLOSE {arg}")).await.map(|_| ())
        })
    };
    let for_tenant = wait_close(t.id.clone());
    let for_all = wait_close(String::new());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!for_tenant.is_finished(), "WAIT_CLOSE {} answered while A's transaction is open", t.id);
    assert!(!for_all.is_finished(), "WAIT_CLOSE answered while A's transaction is open");
    assert!(backend_alive(pid).await, "A's backend must stay while its transaction is open");

    a.batch_execute("COMMIT").await.expect("commit");
    for w in [for_tenant, for_all] {
        tokio::time::timeout(Duration::from_secs(5), w)
            .await
            .expect("WAIT_CLOSE answered after the COMMIT")
            .expect("task")
            .expect("WAIT_CLOSE");
    }
    // The proxy has closed the socket; the backend exits as soon as it reads that.
    assert!(
        eventually(Duration::from_secs(2), || async { !backend_alive(pid).await }).await,
        "backend {pid} still open"
    );
    let next: i32 = a.query_one("SELECT pg_backend_pid()", &[]).await.expect("pid").get(0);
    assert_ne!(next, pid, "A goes on, on a new backend");
    let (state, text) = refusal(&ops, "WAIT_CLOSE nosuchtenant").await;
    assert_eq!((state.as_str(), text.as_str()), ("08P01", "no such database: nosuchtenant"));
}

/// The tenant's pool row and its clients, from SHOW POOLS and SHOW CLIENTS.
async fn waiting(ops: &tokio_postgres::Client, tenant: &str) -> (i64, usize) {
    let pools = show(ops, "SHOW POOLS").await;
    let cl_waiting = pools.iter().find(|r| r["database"] == tenant).map_or(0, |r| num(r, "cl_waiting"));
    let clients = show(ops, "SHOW CLIENTS").await;
    (cl_waiting, clients.iter().filter(|r| r["database"] == tenant).count())
}

/// A client logged in over a raw socket (trust), idle.
async fn raw_client(h: &Harness, tenant: &str) -> TcpStream {
    let mut s = TcpStream::connect(h.addr).await.expect("connect");
    let user = format!("app.{tenant}");
    s.write_all(&startup_packet(&[("user", &user), ("database", tenant)])).await.expect("startup");
    read_until_ready(&mut s).await;
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_waiting_at_a_pause_is_killed_or_leaves_at_once() {
    let t = trusted_tenant("opsgate", PoolMode::Transaction, 2).await;
    let h = start(console_config(vec![t.clone()])).await;
    let ops = connect_str(&console_conninfo(&h, "ops", OPS_PW)).await;
    let victim = h.watched_client(&t.id).await;
    victim.client.simple_query("SELECT 1").await.expect("before the pause");
    ops.simple_query(&format!("PAUSE {}", t.id)).await.expect("PAUSE");

    // KILL_CLIENT of a client waiting at the gate: its error comes now, not after RESUME.
    let held = tokio::spawn(async move {
        let r = victim.client.simple_query("SELECT 2").await.map(|_| ());
        (r, victim)
    });
    let queued = eventually(Duration::from_secs(3), || async { waiting(&ops, &t.id).await == (1, 1) }).await;
    assert!(queued, "the client is not shown waiting: {:?}", waiting(&ops, &t.id).await);
    let clients = show(&ops, "SHOW CLIENTS").await;
    let row = clients.iter().find(|r| r["database"] == t.id).expect("client row");
    assert_eq!(row["state"], "waiting", "{row:?}");
    let killed = Instant::now();
    ops.simple_query(&format!("KILL_CLIENT {}", num(row, "id"))).await.expect("KILL_CLIENT");
    let (r, victim) = tokio::time::timeout(Duration::from_secs(2), held)
        .await
        .expect("the killed client must be answered before RESUME")
        .expect("task");
    let e = r.expect_err("killed while waiting");
    assert_eq!(victim.closing_code(&e).await, "57P01");
    assert!(killed.elapsed() < Duration::from_secs(2), "took {:?}", killed.elapsed());
    let gone = eventually(Duration::from_secs(1), || async { waiting(&ops, &t.id).await == (0, 0) }).await;
    assert!(gone, "the killed client is still counted: {:?}", waiting(&ops, &t.id).await);

    // A waiting client that disconnects: gone at once. One that sends Terminate behind its
    // query keeps waiting: as PostgreSQL runs what precedes a Terminate, its query is answered
    // after RESUME, then its session ends.
    let mut leaves = raw_client(&h, &t.id).await;
    let mut quits = raw_client(&h, &t.id).await;
    leaves.write_all(&query("SELECT 3")).await.expect("query");
    quits.write_all(&query("SELECT 4")).await.expect("query");
    let queued = eventually(Duration::from_secs(3), || async { waiting(&ops, &t.id).await == (2, 2) }).await;
    assert!(queued, "two waiting clients: {:?}", waiting(&ops, &t.id).await);
    drop(leaves);
    let one = eventually(Duration::from_secs(1), || async { waiting(&ops, &t.id).await == (1, 1) }).await;
    assert!(one, "a client that left is still counted: {:?}", waiting(&ops, &t.id).await);
    quits.write_all(&terminate()).await.expect("terminate");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(waiting(&ops, &t.id).await, (1, 1), "the client that sent Terminate waits for its query");

    ops.simple_query(&format!("RESUME {}", t.id)).await.expect("RESUME");
    let (got, closed) = read_eof(&mut quits, Duration::from_secs(5)).await;
    assert!(closed, "the session of a client that sent Terminate ends once its query is answered");
    assert!(sqlstate(&got).is_none(), "no error: {got:?}");
    assert!(got.windows(b"SELECT 1".len()).any(|w| w == b"SELECT 1"), "SELECT 4 was answered: {got:?}");
    let none = eventually(Duration::from_secs(1), || async { waiting(&ops, &t.id).await == (0, 0) }).await;
    assert!(none, "{:?}", waiting(&ops, &t.id).await);
    h.client(&t.id).await.simple_query("SELECT 5").await.expect("served after RESUME");
}

/// PgBouncer keeps the global pause and a database's own pause apart: RESUME ends the global
/// one only, `RESUME db` the database's own only ("not paused" during a global pause), and
/// every refusal is an 08P01 ERROR with PgBouncer's text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_keeps_global_and_tenant_pauses_apart() {
    let t = trusted_tenant("opsresume", PoolMode::Transaction, 2).await;
    let h = start(console_config(vec![t.clone()])).await;
    let ops = connect_str(&console_conninfo(&h, "ops", OPS_PW)).await;
    let app = h.client(&t.id).await;
    app.simple_query("SELECT 1").await.expect("before");
    let not_paused = format!("database {} is not paused", t.id);
    let refused = |q: String| {
        let ops = &ops;
        async move { refusal(ops, &q).await }
    };
    let err = |text: &str| ("08P01".to_owned(), text.to_owned());
    assert_eq!(refused("RESUME".into()).await, err("pooler is not paused/suspended"));
    assert_eq!(refused(format!("RESUME {}", t.id)).await, err(&not_paused));

    ops.simple_query("PAUSE").await.expect("PAUSE");
    assert_eq!(refused("PAUSE".into()).await, err("already suspended/paused"));
    assert_eq!(refused(format!("PAUSE {}", t.id)).await, err("already suspended/paused"));
    assert_eq!(refused(format!("RESUME {}", t.id)).await, err(&not_paused));
    assert_eq!(refused(format!("KILL {}", t.id)).await, err("already suspended/paused"));
    let state = show(&ops, "SHOW STATE").await;
    assert!(state.iter().any(|r| r["key"] == "paused" && r["value"] == "yes"), "{state:?}");
    // SHOW DATABASES shows a tenant's own pause only (the global one is SHOW STATE's).
    let dbs = show(&ops, "SHOW DATABASES").await;
    let row = dbs.iter().find(|r| r["name"] == t.id).expect("tenant row");
    assert_eq!(row["paused"], "0", "{row:?}");
    let held = tokio::spawn(async move {
        let r = app.simple_query("SELECT 2").await.map(|_| ());
        (r, app)
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!held.is_finished(), "RESUME {} must not lift the global pause", t.id);
    ops.simple_query("RESUME").await.expect("RESUME");
    let (r, app) = tokio::time::timeout(Duration::from_secs(5), held).await.expect("released").expect("task");
    r.expect("served after RESUME");

    // A tenant's own pause: RESUME does not end it; pausing it again is accepted.
    ops.simple_query(&format!("PAUSE {}", t.id)).await.expect("PAUSE tenant");
    ops.simple_query(&format!("PAUSE {}", t.id)).await.expect("PAUSE tenant again");
    assert_eq!(refused("RESUME".into()).await, err("pooler is not paused/suspended"));
    let held = tokio::spawn(async move { app.simple_query("SELECT 3").await.map(|_| ()) });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!held.is_finished(), "the tenant's own pause must hold");
    ops.simple_query(&format!("RESUME {}", t.id)).await.expect("RESUME tenant");
    tokio::time::timeout(Duration::from_secs(5), held)
        .await
        .expect("released")
        .expect("task")
        .expect("query");
}

/// SHOW STATS, STATS_TOTALS and STATS_AVERAGES count named prepared statements as PgBouncer
/// does: one Parse from the client, ten Binds, and at least one Parse sent to a server
/// (transaction mode prepares pgtenant's own name on each server connection that lacks it;
/// session mode forwards the client's Parse, exactly once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_count_named_parses_and_binds() {
    let tx = trusted_tenant("opsps", PoolMode::Transaction, 2).await;
    let sess = trusted_tenant("opspss", PoolMode::Session, 2).await;
    let h = start(console_config(vec![tx.clone(), sess.clone()])).await;
    let ops = connect_str(&console_conninfo(&h, "ops", OPS_PW)).await;
    h.proxy.metrics.roll_averages();
    for t in [&tx, &sess] {
        let c = h.client(&t.id).await;
        c.simple_query("SELECT 1").await.expect("simple queries count in none");
        let stmt = c.prepare("SELECT $1::int4 + 1").await.expect("prepare");
        for i in 0..10 {
            assert_eq!(c.query_one(&stmt, &[&i]).await.expect("execute").get::<_, i32>(0), i + 1);
        }
    }
    h.proxy.metrics.roll_averages();
    let row_of = |rows: &[std::collections::BTreeMap<String, String>], id: &str| {
        rows.iter().find(|r| r["database"] == id).cloned().unwrap_or_else(|| panic!("no row for {id}"))
    };
    let totals = show(&ops, "SHOW STATS_TOTALS").await;
    let stats = show(&ops, "SHOW STATS").await;
    for (t, session) in [(&tx, false), (&sess, true)] {
        let r = row_of(&totals, &t.id);
        assert_eq!((num(&r, "client_parse_count"), num(&r, "bind_count")), (1, 10), "{r:?}");
        let server = num(&r, "server_parse_count");
        assert!(if session { server == 1 } else { (1..=2).contains(&server) }, "{r:?}");
        let s = row_of(&stats, &t.id);
        let cols = ["total_client_parse_count", "total_bind_count", "total_server_parse_count"];
        assert_eq!(cols.map(|c| num(&s, c)), [1, 10, server], "{s:?}");
        assert!(num(&s, "avg_bind_count") > 0 && num(&s, "avg_client_parse_count") > 0, "{s:?}");
    }
    let averages = show(&ops, "SHOW STATS_AVERAGES").await;
    let r = row_of(&averages, &tx.id);
    assert!(num(&r, "avg_bind_count") >= num(&r, "avg_client_parse_count") * 10, "{r:?}");
    assert!(num(&r, "avg_server_parse_count") > 0, "{r:?}");
}

/// SHOW DATABASES' pool_size is the size in force: the tenant's own, capped by the
/// upstream's connection limit and by the tenant's own server-connection cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_databases_gives_the_effective_pool_size() {
    let own = trusted_tenant("opssize", PoolMode::Transaction, 7).await;
    let mut capped = trusted_tenant("opscap", PoolMode::Transaction, 10).await;
    capped.max_server_connections = Some(2);
    let big = trusted_tenant("opsbig", PoolMode::Transaction, 40).await;
    let mut cfg = console_config(vec![own.clone(), capped.clone(), big.clone()]);
    cfg.upstreams[0].max_connections = 30;
    let h = start(cfg).await;
    let ops = connect_str(&console_conninfo(&h, "ops", OPS_PW)).await;
    for t in [&own, &capped, &big] {
        h.client(&t.id).await.simple_query("SELECT 1").await.expect("the pool exists");
    }
    let rows = show(&ops, "SHOW DATABASES").await;
    let size = |id: &str| rows.iter().find(|r| r["name"] == id).map(|r| num(r, "pool_size"));
    assert_eq!(size(&own.id), Some(7), "{rows:?}");
    assert_eq!(size(&capped.id), Some(2), "max_server_connections caps it: {rows:?}");
    assert_eq!(size(&big.id), Some(30), "the upstream's max_connections caps it: {rows:?}");
    let pool = h.proxy.pools.pools().into_iter().find(|p| p.key().database == big.database).expect("pool");
    assert_eq!(pool.size(), 30, "what SHOW DATABASES says is what the pool enforces");
}

/// KILL ends a tenant's sessions and, as in PgBouncer, leaves the tenant paused: a new client
/// waits until `RESUME tenant` (SHOW DATABASES shows it paused), and is then served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_ends_the_sessions_and_new_clients_wait_for_resume() {
    let t = trusted_tenant("opskill", PoolMode::Transaction, 2).await;
    let h = start(console_config(vec![t.clone()])).await;
    let ops = connect_str(&console_conninfo(&h, "ops", OPS_PW)).await;
    let old = h.client(&t.id).await;
    old.simple_query("SELECT 1").await.expect("before KILL");
    ops.simple_query(&format!("KILL {}", t.id)).await.expect("KILL");
    let e = tokio::time::timeout(Duration::from_secs(5), old.simple_query("SELECT 2"))
        .await
        .expect("the killed session answers")
        .expect_err("the killed session must end");
    let code = e.as_db_error().map(|d| d.code().code().to_owned());
    assert!(code.as_deref() == Some("57P01") || e.is_closed(), "{e:?}");
    let dbs = show(&ops, "SHOW DATABASES").await;
    let row = dbs.iter().find(|r| r["name"] == t.id).expect("tenant row");
    assert_eq!(row["paused"], "1", "{row:?}");
    let url = h.conninfo(&t.id);
    let waiting = tokio::spawn(async move {
        let c = connect_str(&url).await;
        c.simple_query("SELECT 3").await.map(|_| ())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "a new client must wait while the tenant is killed");
    ops.simple_query(&format!("RESUME {}", t.id)).await.expect("RESUME");
    tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("served after RESUME")
        .expect("task")
        .expect("query");
}
