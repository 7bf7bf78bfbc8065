//! Pools: multiplexing in transaction mode, caps and the checkout timeout, what happens to a
//! server connection a client abandons, session reset, upstream authentication methods.

use std::time::{Duration, Instant};

use pgtenant::config::Config;
use pgtenant::model::PoolMode;
use tokio_postgres::types::Type;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_clients_share_five_server_connections() {
    let t = with_mode(tenant_db("mux").await, PoolMode::Transaction, 5);
    let h = start(config(vec![t.clone()])).await;
    let setup = h.client(&t.id).await;
    setup.batch_execute("CREATE TABLE hits (client int, n int)").await.expect("create");
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(0));
    let watcher = {
        let (db, peak) = (t.database.clone(), peak.clone());
        tokio::spawn(async move {
            let admin = admin("postgres").await;
            loop {
                let n: i64 = admin
                    .query_one("SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND backend_type = 'client backend'", &[&db])
                    .await
                    .expect("count")
                    .get(0);
                peak.fetch_max(n, std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let mut tasks = Vec::new();
    for i in 0..50i32 {
        let conninfo = h.conninfo(&t.id);
        tasks.push(tokio::spawn(async move {
            let c = connect_str(&conninfo).await;
            for n in 0..20i32 {
                // Unnamed statements: named ones need transaction-mode statement tracking.
                let rows = c
                    .query_typed(
                        "INSERT INTO hits VALUES ($1, $2) RETURNING ($1::int8 * 1000 + $2)",
                        &[(&i, Type::INT4), (&n, Type::INT4)],
                    )
                    .await
                    .expect("insert");
                let tx_sum: i64 = rows[0].get(0);
                assert_eq!(tx_sum, i as i64 * 1000 + n as i64);
                if n % 5 == 0 {
                    c.batch_execute("BEGIN; SELECT pg_sleep(0.01); COMMIT").await.expect("transaction");
                }
            }
            c
        }));
    }
    let mut clients = Vec::new();
    for t in tasks {
        clients.push(t.await.expect("client task"));
    }
    watcher.abort();
    // All 50 clients are still connected, yet the upstream never saw more than 5 backends.
    assert_eq!(clients.len(), 50);
    let now = backends(&t.database).await;
    let peak = peak.load(std::sync::atomic::Ordering::Relaxed);
    assert!(peak <= 5 && now <= 5, "peak {peak}, now {now} upstream backends");
    assert!(peak >= 2, "expected real concurrency, saw a peak of {peak}");
    let row = setup
        .query_one("SELECT count(*), count(DISTINCT client), sum(n)::int8 FROM hits", &[])
        .await
        .expect("totals");
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1), row.get::<_, i64>(2)), (1000, 50, 50 * 190));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_pool_times_out_with_53300() {
    let t = with_mode(tenant_db("exhaust").await, PoolMode::Session, 1);
    let mut cfg = config(vec![t.clone()]);
    cfg.pool.checkout_timeout = 0.5;
    let h = start(cfg).await;
    let holder = h.client(&t.id).await;
    holder.batch_execute("SELECT 1").await.expect("holds the only connection");
    let waiter = h.client(&t.id).await;
    let started = Instant::now();
    let e = waiter.batch_execute("SELECT 1").await.expect_err("no connection free");
    assert_eq!(code(&e), "53300");
    assert!(e.as_db_error().expect("db error").message().contains(&t.id));
    assert!(started.elapsed() < Duration::from_secs(3));
    // The holder is unaffected; once it leaves, a new client gets the connection.
    holder.batch_execute("SELECT 2").await.expect("holder still works");
    drop(holder);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let next = h.client(&t.id).await;
    next.batch_execute("SELECT 3").await.expect("freed connection reused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_transaction_is_closed_not_reused() {
    let t = with_mode(tenant_db("abandon").await, PoolMode::Transaction, 1);
    let h = start(config(vec![t.clone()])).await;
    let c = h.client(&t.id).await;
    c.batch_execute("CREATE TABLE locked (id int); INSERT INTO locked VALUES (1)").await.expect("setup");
    let pid_before: i32 = c.query_one("SELECT pg_backend_pid()", &[]).await.expect("pid").get(0);
    c.batch_execute("BEGIN; UPDATE locked SET id = 2").await.expect("open transaction");
    drop(c);
    // The next client must not inherit the open transaction or its row lock.
    let next = h.client(&t.id).await;
    let started = Instant::now();
    next.batch_execute("SET lock_timeout = '3s'; UPDATE locked SET id = 3").await.expect("lock released");
    assert!(started.elapsed() < Duration::from_secs(3));
    let v: i32 = next.query_one("SELECT id FROM locked", &[]).await.expect("value").get(0);
    assert_eq!(v, 3, "the abandoned transaction's update must be rolled back");
    let pid_after: i32 = next.query_one("SELECT pg_backend_pid()", &[]).await.expect("pid").get(0);
    assert_ne!(pid_before, pid_after, "the server connection left in a transaction was reused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vanished_client_mid_query_is_cancelled_upstream() {
    let t = with_mode(tenant_db("vanish").await, PoolMode::Transaction, 2);
    let h = start(config(vec![t.clone()])).await;
    let mut s = tokio::net::TcpStream::connect(h.addr).await.expect("connect");
    let login = startup_packet(&[("user", &format!("app.{}", t.id))]);
    tokio::io::AsyncWriteExt::write_all(&mut s, &login).await.expect("startup");
    read_until_ready(&mut s).await;
    tokio::io::AsyncWriteExt::write_all(&mut s, b"Q\0\0\0\x18SELECT pg_sleep(30)\0").await.expect("query");
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(s); // the client vanishes mid-query
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let admin = admin("postgres").await;
        let n: i64 = admin
            .query_one("SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND query LIKE 'SELECT pg_sleep(30)%' AND state = 'active'", &[&t.database])
            .await
            .expect("count")
            .get(0);
        if n == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "pg_sleep still running upstream after the client left");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Through a session-mode pool of one connection: a client runs `dirty` and leaves, the next
/// client runs `probe`. Returns the first client's backend pid and the probe's row.
async fn after_a_dirty_session(
    cfg: Config,
    tenant: &str,
    dirty: &str,
    probe: &str,
) -> (i32, tokio_postgres::Row) {
    let h = start(cfg).await;
    let c = h.client(tenant).await;
    c.batch_execute(dirty).await.expect("dirty the session");
    let pid: i32 = c.query_one("SELECT pg_backend_pid()", &[]).await.expect("pid").get(0);
    drop(c);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let next = h.client(tenant).await;
    (pid, next.query_typed(probe, &[]).await.expect("state").remove(0))
}

#[tokio::test]
async fn session_mode_resets_state_between_clients() {
    let t = with_mode(tenant_db("reset").await, PoolMode::Session, 1);
    let (pid, row) = after_a_dirty_session(
        config(vec![t.clone()]),
        &t.id,
        "SET statement_timeout = '1234ms'; SET TimeZone = 'Asia/Tokyo'; PREPARE p AS SELECT 1; CREATE TEMP TABLE scratch (x int)",
        "SELECT pg_backend_pid(), current_setting('statement_timeout'), current_setting('TimeZone'), (SELECT count(*) FROM pg_prepared_statements), to_regclass('pg_temp.scratch') IS NULL",
    )
    .await;
    assert_eq!(row.get::<_, i32>(0), pid, "pool size 1: the same server connection is reused");
    assert_eq!(row.get::<_, String>(1), "0");
    assert_ne!(row.get::<_, String>(2), "Asia/Tokyo");
    assert_eq!(row.get::<_, i64>(3), 0);
    assert!(row.get::<_, bool>(4));
}

/// A configured reset query may return rows (PgBouncer users write
/// `SELECT pg_advisory_unlock_all(); ...`): the connection is reset and reused, not closed.
#[tokio::test]
async fn a_reset_query_that_returns_rows_resets_and_keeps_the_connection() {
    let t = with_mode(tenant_db("reset_rows").await, PoolMode::Session, 1);
    let mut cfg = config(vec![t.clone()]);
    cfg.pool.reset_query = "SELECT pg_advisory_unlock_all(); DISCARD TEMP; RESET ALL".into();
    let (pid, row) = after_a_dirty_session(
        cfg,
        &t.id,
        "SET work_mem = '1234kB'; CREATE TEMP TABLE scratch (x int); SELECT pg_advisory_lock(4711)",
        "SELECT pg_backend_pid(), current_setting('work_mem'), to_regclass('pg_temp.scratch') IS NULL, \
         (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory')",
    )
    .await;
    assert_eq!(row.get::<_, i32>(0), pid, "pool size 1: the reset connection is reused, not closed");
    assert_ne!(row.get::<_, String>(1), "1234kB", "RESET ALL ran");
    assert!(row.get::<_, bool>(2), "DISCARD TEMP ran");
    assert_eq!(row.get::<_, i64>(3), 0, "pg_advisory_unlock_all ran");
}

/// A client's prepared statement works after a configured reset query, whether the query
/// drops statements or not (pgtenant prepares its own afresh: never 42P05 "already exists" or
/// 26000 "does not exist"), and the connection it reset is kept.
#[tokio::test]
async fn prepared_statements_work_after_a_configured_reset_query() {
    for (name, reset) in [("reset_keep", "RESET ALL"), ("reset_drop", "RESET ALL; DEALLOCATE ALL")] {
        let t = with_mode(tenant_db(name).await, PoolMode::Transaction, 1);
        let mut cfg = config(vec![t.clone()]);
        cfg.pool.reset_query = reset.into();
        let h = start(cfg).await;
        let c = h.client(&t.id).await;
        let pid: i32 = c.query_one("SELECT pg_backend_pid()", &[]).await.expect("pid").get(0);
        for round in 0..3 {
            let st = c.prepare("SELECT 40 + $1::int").await.expect("prepare");
            let v: i32 = c.query_one(&st, &[&round]).await.expect("run the statement").get(0);
            assert_eq!(v, 40 + round, "{reset}: round {round}");
            // A temporary table made without CREATE TEMP makes the connection dirty: the
            // reset query runs when the transaction ends.
            c.batch_execute(&format!("CREATE TABLE pg_temp.scratch{round} (x int)")).await.expect("dirty");
            tokio::time::sleep(Duration::from_millis(200)).await;
            let again: i32 = c.query_one(&st, &[&round]).await.expect("the statement after the reset").get(0);
            assert_eq!(again, 40 + round, "{reset}: round {round} after the reset");
        }
        let after: i32 = c.query_one("SELECT pg_backend_pid()", &[]).await.expect("pid").get(0);
        assert_eq!(after, pid, "{reset}: pool size 1, the reset connection is kept");
        let resets = h.proxy.metrics.global().resets();
        assert!(resets >= 3, "{reset}: {resets} resets, expected one per round");
    }
}

#[tokio::test]
async fn startup_parameters_follow_the_client_across_server_connections() {
    let t = with_mode(tenant_db("params").await, PoolMode::Transaction, 1);
    let h = start(config(vec![t.clone()])).await;
    let a = connect_str(&format!(
        "{} application_name=alpha options='-c statement_timeout=4321'",
        h.conninfo(&t.id)
    ))
    .await;
    let b = connect_str(&format!("{} application_name=beta", h.conninfo(&t.id))).await;
    for _ in 0..3 {
        let ra = a
            .query_one(
                "SELECT current_setting('application_name'), current_setting('statement_timeout')",
                &[],
            )
            .await
            .expect("a");
        let rb = b
            .query_one(
                "SELECT current_setting('application_name'), current_setting('statement_timeout')",
                &[],
            )
            .await
            .expect("b");
        assert_eq!((ra.get::<_, String>(0), ra.get::<_, String>(1)), ("alpha".into(), "4321ms".into()));
        assert_eq!((rb.get::<_, String>(0), rb.get::<_, String>(1)), ("beta".into(), "0".into()));
    }
}

#[tokio::test]
async fn parameter_status_comes_from_the_upstream() {
    let t = tenant_db("pstatus").await;
    let h = start(config(vec![t.clone()])).await;
    let direct = admin(&t.database).await;
    let real: String = direct.query_one("SHOW server_version", &[]).await.expect("direct").get(0);
    let (_, _, startup) = {
        let mut packet = startup_packet(&[("user", &format!("app.{}", t.id)), ("database", &t.database)]);
        packet.extend_from_slice(b"X\0\0\0\x04");
        let (bytes, _) = raw_exchange(h.addr, &packet, Duration::from_secs(5)).await;
        ((), (), bytes)
    };
    let text = String::from_utf8_lossy(&startup);
    assert!(
        text.contains(&format!("server_version\0{real}\0")),
        "server_version {real} not reported: {text:?}"
    );
    assert!(text.contains("server_encoding\0UTF8\0"));
}

#[tokio::test]
async fn upstream_md5_and_trust_logins() {
    let admin = admin("postgres").await;
    for (role, password) in [("md5_user", Some("md5-secret")), ("trust_user", None)] {
        let db = unique("auth");
        match password {
            Some(pw) => admin
                .batch_execute(&format!(
                    "SET password_encryption = 'md5'; CREATE ROLE {role} LOGIN PASSWORD '{pw}'"
                ))
                .await
                .expect("md5 role"),
            None => admin.batch_execute(&format!("CREATE ROLE {role} LOGIN")).await.expect("trust role"),
        }
        admin.batch_execute(&format!("CREATE DATABASE {db} OWNER {role}")).await.expect("db");
        let t = pgtenant::config::TenantConfig::new(&db, "local", &db, role, password);
        if password.is_some() {
            // md5 is refused unless the upstream's require_auth allows it.
            let h = start(config(vec![t.clone()])).await;
            let e = tokio_postgres::connect(&h.conninfo(&db), tokio_postgres::NoTls)
                .await
                .err()
                .expect("md5 refused");
            assert_eq!(code(&e), "08006");
        }
        let mut cfg = config(vec![t]);
        if password.is_some() {
            cfg.upstreams[0].require_auth =
                Some(pgtenant::model::RequireAuth::parse("md5").expect("require_auth"));
        }
        let h = start(cfg).await;
        let c = h.client(&db).await;
        let who: String = c.query_one("SELECT current_user::text", &[]).await.expect("login").get(0);
        assert_eq!(who, role);
    }
    // A wrong upstream password: the client gets 08006 naming the tenant, not the server's text.
    let mut t = tenant_db("badpw").await;
    t.password = Some("wrong".into());
    let h = start(config(vec![t.clone()])).await;
    let e = tokio_postgres::connect(&h.conninfo(&t.id), tokio_postgres::NoTls).await.err().expect("refused");
    assert_eq!(code(&e), "08006");
    let message = e.as_db_error().map(|d| d.message().to_owned()).unwrap_or_default();
    assert!(!message.contains("password authentication failed"), "{message}");
    assert!(message.contains("(ref "), "the client gets a reference to the logged cause: {message}");
}

#[tokio::test]
async fn unix_socket_upstream_and_idle_reaping() {
    let mut t = with_mode(tenant_db("unix").await, PoolMode::Transaction, 4);
    t.upstream = "sock".into();
    let mut cfg = config(vec![t.clone()]);
    cfg.upstreams.push(pgtenant::config::UpstreamConfig {
        name: "sock".into(),
        host: cluster().socket_dir.display().to_string(),
        port: cluster().port,
        max_connections: 10,
        sslmode: Default::default(),
        sslrootcert: None,
        require_auth: None,
    });
    cfg.pool.idle_timeout = 0.5;
    let h = start(cfg).await;
    let c = h.client(&t.id).await;
    let addr: Option<String> =
        c.query_one("SELECT inet_client_addr()::text", &[]).await.expect("query").get(0);
    assert_eq!(addr, None, "the upstream connection should be a Unix socket");
    assert!(backends(&t.database).await >= 1);
    // Idle connections are closed after idle_timeout (min_idle is 0).
    let deadline = Instant::now() + Duration::from_secs(5);
    while backends(&t.database).await > 0 {
        assert!(Instant::now() < deadline, "idle server connections were not reaped");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let v: i32 = c.query_one("SELECT 9", &[]).await.expect("reconnects on demand").get(0);
    assert_eq!(v, 9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_cap_is_shared_and_idle_connections_of_other_pools_are_evicted() {
    let a = with_mode(tenant_db("cap_a").await, PoolMode::Session, 5);
    let b = with_mode(tenant_db("cap_b").await, PoolMode::Transaction, 5);
    let mut cfg = config(vec![a.clone(), b.clone()]);
    cfg.upstreams[0].max_connections = 2;
    cfg.pool.checkout_timeout = 0.5;
    let h = start(cfg).await;
    // b leaves one idle connection behind; a holds one busy session.
    h.client(&b.id).await.batch_execute("SELECT 1").await.expect("b");
    assert_eq!(backends(&b.database).await, 1);
    let a1 = h.client(&a.id).await;
    a1.batch_execute("SELECT 1").await.expect("a1");
    // The upstream is at its cap (a: 1 busy, b: 1 idle). A second session of a takes b's
    // idle connection's place instead of waiting.
    let a2 = h.client(&a.id).await;
    a2.batch_execute("SELECT 2").await.expect("a2 gets capacity by evicting b's idle connection");
    assert_eq!(backends(&b.database).await, 0);
    // Now both connections are busy sessions: a third waits and times out with 53300.
    let a3 = h.client(&a.id).await;
    let e = a3.batch_execute("SELECT 3").await.expect_err("upstream cap reached");
    assert_eq!(code(&e), "53300");
    assert_eq!(backends(&a.database).await, 2);
}

#[tokio::test]
async fn min_idle_and_max_lifetime() {
    let t = with_mode(tenant_db("minidle").await, PoolMode::Transaction, 4);
    let mut cfg = config(vec![t.clone()]);
    cfg.pool.min_idle = 2;
    cfg.pool.idle_timeout = 0.3;
    cfg.pool.max_lifetime = 1.0;
    let h = start(cfg).await;
    let c = h.client(&t.id).await;
    let first: i32 = c.query_typed("SELECT pg_backend_pid()", &[]).await.expect("pid")[0].get(0);
    // The pool tops up to min_idle and keeps that many past the idle timeout.
    let deadline = Instant::now() + Duration::from_secs(5);
    while backends(&t.database).await < 2 {
        assert!(Instant::now() < deadline, "min_idle not reached");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(backends(&t.database).await >= 2, "min_idle connections were reaped");
    // Past max_lifetime, connections are replaced.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let later: i32 = c.query_typed("SELECT pg_backend_pid()", &[]).await.expect("pid")[0].get(0);
    assert_ne!(first, later, "a connection older than max_lifetime was reused");
}

#[tokio::test]
async fn silent_upstream_hits_the_connect_timeout() {
    // A listener that never accepts: TCP connects, the startup packet is never answered.
    let blackhole = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let mut t = tenant_db("silent").await;
    t.upstream = "blackhole".into();
    let mut cfg = config(vec![t.clone()]);
    cfg.upstreams.push(pgtenant::config::UpstreamConfig {
        name: "blackhole".into(),
        host: "127.0.0.1".into(),
        port: blackhole.local_addr().expect("addr").port(),
        max_connections: 5,
        sslmode: Default::default(),
        sslrootcert: None,
        require_auth: None,
    });
    cfg.pool.connect_timeout = 0.5;
    let h = start(cfg).await;
    let started = Instant::now();
    let e = tokio_postgres::connect(&h.conninfo(&t.id), tokio_postgres::NoTls).await.err().expect("refused");
    assert_eq!(code(&e), "08006");
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
}

#[tokio::test]
async fn a_refused_startup_setting_ends_the_session_before_its_query_runs() {
    let t = with_mode(tenant_db("badopt").await, PoolMode::Transaction, 1);
    let h = start(config(vec![t.clone()])).await;
    let setup = h.client(&t.id).await;
    setup.batch_execute("CREATE TABLE guarded (x int)").await.expect("create");
    let bad = connect_str(&format!("{} options='-c statement_timeout=bogus'", h.conninfo(&t.id))).await;
    let e = bad.batch_execute("INSERT INTO guarded VALUES (1)").await.expect_err("setting refused");
    assert_eq!(code(&e), "22023", "invalid_parameter_value from the server: {e}");
    assert!(bad.batch_execute("SELECT 1").await.is_err(), "the session ends");
    let n: i64 = setup.query_typed("SELECT count(*) FROM guarded", &[]).await.expect("count")[0].get(0);
    assert_eq!(n, 0, "the query behind a failed setup must not run");
}

/// Two tenants sharing one login (one pool of 2), six clients taking turns: handoffs between
/// tenants reset connections but never close them, so the same two backends serve every
/// transaction. (A release check that counted permits as connections closed one on most
/// handoffs: 100 tenants ran at 0.06x of one.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handoffs_between_tenants_keep_the_pools_connections() {
    let base = tenant_db("keep").await;
    let mut tenants = Vec::new();
    for suffix in ["a", "b"] {
        let mut t = base.clone();
        t.id = format!("{}{suffix}", base.id);
        tenants.push(with_mode(t, PoolMode::Transaction, 2));
    }
    let h = start(config(tenants.clone())).await;
    let mut tasks = Vec::new();
    for i in 0..6 {
        let id = tenants[i % 2].id.clone();
        let c = connect_str(&format!(
            "host=127.0.0.1 port={} user=app.{id} dbname={}",
            h.addr.port(),
            base.database
        ))
        .await;
        tasks.push(tokio::spawn(async move {
            let mut pids = std::collections::HashSet::new();
            for _ in 0..40 {
                let pid: i32 = c.query_one("SELECT pg_backend_pid()", &[]).await.expect("query").get(0);
                pids.insert(pid);
            }
            pids
        }));
    }
    let mut all = std::collections::HashSet::new();
    for t in tasks {
        all.extend(t.await.expect("client"));
    }
    assert!(all.len() <= 2, "240 transactions of two tenants used {} backends: {all:?}", all.len());
}

/// Every idle pooled backend is terminated from a direct superuser connection (what an
/// operator's `pg_terminate_backend` or a server restart does to a pool): pgtenant sees at
/// checkout that their sockets were closed and never hands one out. Five clients, three that
/// were connected before and two new ones, each run a query at once: all succeed, on new
/// backends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_server_connections_that_died_are_never_handed_out() {
    let t = with_mode(tenant_db("deadidle").await, PoolMode::Transaction, 5);
    let h = start(config(vec![t.clone()])).await;
    let mut clients = Vec::new();
    for _ in 0..5 {
        clients.push(h.client(&t.id).await);
    }
    // Five transactions open at once: five server connections, idle once they commit.
    let mut old = std::collections::HashSet::new();
    for c in &clients {
        c.batch_execute("BEGIN").await.expect("begin");
        old.insert(c.query_one("SELECT pg_backend_pid()", &[]).await.expect("pid").get::<_, i32>(0));
    }
    for c in &clients {
        c.batch_execute("COMMIT").await.expect("commit");
    }
    assert_eq!(old.len(), 5, "five server connections: {old:?}");
    let su = admin("postgres").await;
    let killed: i64 = su
        .query_one(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE datname = $1 AND backend_type = 'client backend'",
            &[&t.database],
        )
        .await
        .expect("terminate")
        .get(0);
    assert_eq!(killed, 5, "every idle pooled backend terminated");
    let gone = eventually(Duration::from_secs(5), || async { backends(&t.database).await == 0 }).await;
    assert!(gone, "terminated backends still listed");
    clients.truncate(3);
    for _ in 0..2 {
        clients.push(h.client(&t.id).await);
    }
    let runs = clients.iter().map(|c| async move { c.query_one("SELECT pg_backend_pid()", &[]).await });
    let results = futures_util::future::join_all(runs).await;
    let errors: Vec<String> =
        results.iter().filter_map(|r| r.as_ref().err()).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{} of 5 clients failed: {errors:?}", errors.len());
    for r in results.into_iter().flatten() {
        let pid: i32 = r.get(0);
        assert!(!old.contains(&pid), "a terminated backend ({pid}) was handed out");
    }
}

/// `idle_session_timeout` set by a client in transaction mode (by SET or in its startup
/// options) does not outlive it on the server connection: the backend would end itself while
/// idle in the pool, and the next client would get a dead connection. The client keeps its
/// value (SHOW gives it); after it left and the timeout passed twice over, clients of its
/// tenant and of another tenant sharing the pool's one connection run queries on the same
/// backend, which is still alive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_idle_session_timeout_does_not_kill_pooled_connections() {
    let (a, b) = tenant_pair(pgtenant::model::Isolation::Schema, Access::Read, 1).await;
    let h = start(config(vec![a.clone(), b.clone()])).await;
    let p0: i32 = h.client(&b.id).await.query_one("SELECT pg_backend_pid()", &[]).await.expect("pid").get(0);
    let by_options = format!("{} options='-c idle_session_timeout=500ms'", h.conninfo(&a.id));
    for how in ["SET", "startup options"] {
        let setter = match how {
            "SET" => {
                let c = h.client(&a.id).await;
                c.batch_execute("SET idle_session_timeout = '500ms'").await.expect("SET");
                c
            }
            _ => connect_str(&by_options).await,
        };
        let shown =
            setter.query_one("SHOW idle_session_timeout", &[]).await.expect("SHOW").get::<_, String>(0);
        assert_eq!(shown, "500ms", "{how}: the setting follows its client");
        // Idle past its own timeout, the setter's next transaction still runs.
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let pid: i32 = setter.query_one("SELECT pg_backend_pid()", &[]).await.expect("setter again").get(0);
        assert_eq!(pid, p0, "{how}: the setter's connection");
        drop(setter);
        tokio::time::sleep(Duration::from_millis(1000)).await;
        for id in [&a.id, &b.id, &a.id] {
            let c = h.client(id).await;
            let row = c
                .query_one("SELECT pg_backend_pid(), current_setting('idle_session_timeout')", &[])
                .await
                .unwrap_or_else(|e| panic!("{how}: a client of {id} after the setter left: {e}"));
            assert_eq!((row.get::<_, i32>(0), row.get::<_, String>(1)), (p0, "0".to_owned()), "{how}: {id}");
        }
    }
}

/// Maintenance notices idle server connections the server closed without waiting for a
/// checkout (as PgBouncer drops an idle server that hangs up): with `min_idle = 2` and no
/// client activity, terminating both idle backends brings two new ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_replaces_idle_connections_the_server_closed() {
    let t = with_mode(tenant_db("deadmin").await, PoolMode::Transaction, 4);
    let mut cfg = config(vec![t.clone()]);
    cfg.pool.min_idle = 2;
    cfg.pool.idle_timeout = 2.0;
    let h = start(cfg).await;
    h.client(&t.id).await.simple_query("SELECT 1").await.expect("the pool exists");
    let pids = |db: String| async move {
        let su = admin("postgres").await;
        let rows = su
            .query(
                "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND backend_type = 'client backend'",
                &[&db],
            )
            .await
            .expect("pg_stat_activity");
        rows.iter().map(|r| r.get::<_, i32>(0)).collect::<std::collections::HashSet<i32>>()
    };
    let up = eventually(Duration::from_secs(5), || async { pids(t.database.clone()).await.len() == 2 }).await;
    assert!(up, "min_idle not reached: {:?}", pids(t.database.clone()).await);
    let old = pids(t.database.clone()).await;
    let su = admin("postgres").await;
    for pid in &old {
        su.execute("SELECT pg_terminate_backend($1)", &[pid]).await.expect("terminate");
    }
    let replaced = eventually(Duration::from_secs(5), || async {
        let now = pids(t.database.clone()).await;
        now.len() == 2 && now.is_disjoint(&old)
    })
    .await;
    assert!(
        replaced,
        "idle connections closed by the server were not replaced: {old:?} → {:?}",
        pids(t.database.clone()).await
    );
    let pool = h.proxy.pools.pools().pop().expect("the pool");
    assert_eq!(pool.idle_count(), 2, "the pool lists only live connections");
}

/// A backend that sent FATAL is closing: its connection never goes back to the pool, and the
/// client's session ends as PostgreSQL's would (an unknown message type: 08P01, then the
/// connection closes), even though the reply model owes nothing once the error is routed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_whose_backend_sent_fatal_never_goes_back_to_the_pool() {
    use crate::support::raw::*;
    let t = with_mode(tenant_db("fatalrel").await, PoolMode::Transaction, 2);
    let h = start(config(vec![t.clone()])).await;
    let mut c = raw_proxy(&h, &t.id).await;
    send(&mut c, &msg(b'?', b"")).await;
    let (got, closed) = read_eof(&mut c, Duration::from_secs(5)).await;
    assert_eq!(summary(&got), vec!["E(08P01,FATAL)".to_owned()], "{:?}", summary(&got));
    assert!(closed, "the session outlived its backend's FATAL");
    let pool = h.proxy.pools.pools().pop().expect("the pool");
    assert_eq!(pool.idle_count(), 0, "the closing connection went back to the pool");
}
