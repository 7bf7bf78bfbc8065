//! Transaction mode with named prepared statements: they follow the client across server
//! connections, are shared by content, never across schemas, and SQL-level PREPARE is refused.

use std::time::Duration;

use pgtenant::model::{Isolation, PoolMode};
use tokio::process::Command;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_statements_survive_transaction_pooling() {
    let t = with_mode(tenant_db("stmt").await, PoolMode::Transaction, 5);
    let h = start(config(vec![t.clone()])).await;
    let setup = h.client(&t.id).await;
    setup.batch_execute("CREATE TABLE kv (k int PRIMARY KEY, v text)").await.expect("create");
    let mut tasks = Vec::new();
    for i in 0..50i32 {
        let conninfo = h.conninfo(&t.id);
        tasks.push(tokio::spawn(async move {
            let c = connect_str(&conninfo).await;
            let insert = c.prepare("INSERT INTO kv VALUES ($1, $2)").await.expect("prepare insert");
            let select = c.prepare("SELECT v FROM kv WHERE k = $1").await.expect("prepare select");
            for n in 0..20i32 {
                let k = i * 100 + n;
                c.execute(&insert, &[&k, &format!("v{k}")]).await.expect("insert");
                let v: String = c.query_one(&select, &[&k]).await.expect("select").get(0);
                assert_eq!(v, format!("v{k}"));
            }
            // Close and prepare again (Close is answered locally; the Parse may be too).
            drop(insert);
            let again = c.prepare("SELECT count(*) FROM kv WHERE k / 100 = $1").await.expect("prepare again");
            let n: i64 = c.query_one(&again, &[&i]).await.expect("count").get(0);
            assert_eq!(n, 20);
        }));
    }
    for task in tasks {
        task.await.expect("client");
    }
    let n: i64 = setup.query_one("SELECT count(*) FROM kv", &[]).await.expect("count").get(0);
    assert_eq!(n, 1000);
    // Statements are shared by content: each of the ≤ 5 server connections holds a handful,
    // not one per client.
    let admin = admin(&t.database).await;
    let backends = admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND usename = $1",
            &[&t.role],
        )
        .await
        .expect("backends")
        .get::<_, i64>(0);
    assert!(backends <= 5, "{backends}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_prepared_in_transaction_mode() {
    let t = with_mode(tenant_db("pgbprep").await, PoolMode::Transaction, 3);
    let mut cfg = config(vec![t.clone()]);
    // Under a loaded machine (other tests run alongside) a waiter must not time out.
    cfg.pool.checkout_timeout = 60.0;
    let h = start(cfg).await;
    let url = h.url(&format!("app.{}", t.id), &t.database);
    let init =
        Command::new("pgbench").args(["-i", "-q", "-s", "1"]).arg(&url).output().await.expect("pgbench -i");
    assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));
    // One thread per client: pgbench prepares statements synchronously, so on a shared
    // thread a client waiting for a server connection would stall the others on that thread
    // while they hold theirs inside a transaction (a pgbench artefact with any pooler whose
    // pool is smaller than the client count).
    for args in [["-S", "-c", "8", "-j", "8"], ["-N", "-c", "6", "-j", "6"]] {
        let out = Command::new("pgbench")
            .args(["-n", "-M", "prepared", "-t", "200"])
            .args(args)
            .arg(&url)
            .output()
            .await
            .expect("pgbench");
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{text}");
        assert!(text.contains("number of failed transactions: 0 "), "{text}");
        let expected = 200 * args[2].parse::<u32>().expect("clients");
        assert!(text.contains(&format!("actually processed: {expected}/{expected}")), "{text}");
    }
}

#[tokio::test]
async fn sql_prepare_is_refused_in_transaction_mode_only() {
    let tx = with_mode(tenant_db("sqlprep").await, PoolMode::Transaction, 2);
    let se = with_mode(tenant_db("sqlprepse").await, PoolMode::Session, 2);
    let h = start(config(vec![tx.clone(), se.clone()])).await;
    let c = h.client(&tx.id).await;
    for sql in ["PREPARE p AS SELECT 1", "EXECUTE p", "DEALLOCATE p"] {
        let e = c.simple_query(sql).await.expect_err("refused");
        assert_eq!(code(&e), "0A000", "{sql}");
        assert!(e.as_db_error().expect("db").message().contains("transaction pooling"));
    }
    // Inside a transaction the refusal aborts it, like any error would.
    c.batch_execute("BEGIN").await.expect("begin");
    assert_eq!(code(&c.simple_query("PREPARE q AS SELECT 1").await.expect_err("refused")), "0A000");
    assert_eq!(code(&c.simple_query("SELECT 1").await.expect_err("aborted")), "25P02");
    c.batch_execute("ROLLBACK").await.expect("rollback");
    c.batch_execute("DEALLOCATE ALL").await.expect("DEALLOCATE ALL passes");
    let v: i32 = c.query_one("SELECT 3", &[]).await.expect("works after").get(0);
    assert_eq!(v, 3);
    // Session mode: SQL PREPARE works as on Postgres.
    let s = h.client(&se.id).await;
    s.batch_execute("PREPARE p AS SELECT 41 + $1").await.expect("prepare");
    let rows = s.simple_query("EXECUTE p(1)").await.expect("execute");
    assert!(rows
        .iter()
        .any(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("42"))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_in_prepared_statements_and_re_prepare_after_ddl() {
    let t = with_mode(tenant_db("stmterr").await, PoolMode::Transaction, 2);
    let h = start(config(vec![t.clone()])).await;
    let c = h.client(&t.id).await;
    // A Parse that fails reaches the client; the session goes on.
    let e = c.prepare("SELEC 1").await.expect_err("syntax error");
    assert_eq!(code(&e), "42601");
    let e = c.prepare("SELECT * FROM not_yet").await.expect_err("missing table");
    assert_eq!(code(&e), "42P01");
    c.batch_execute("CREATE TABLE not_yet (x int); INSERT INTO not_yet VALUES (7)").await.expect("create");
    // The same text prepares now: the failed attempt left nothing behind.
    let stmt = c.prepare("SELECT * FROM not_yet").await.expect("prepare after create");
    let x: i32 = c.query_one(&stmt, &[]).await.expect("run").get(0);
    assert_eq!(x, 7);
    // Another client's session reset (a SET) discards server statements; they come back.
    let other = h.client(&t.id).await;
    other.batch_execute("SET work_mem = '8MB'").await.expect("set");
    for _ in 0..5 {
        let x: i32 = c.query_one(&stmt, &[]).await.expect("re-prepared after reset").get(0);
        assert_eq!(x, 7);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statements_are_never_shared_across_schemas() {
    let role = unique("pschrole");
    let dbname = unique("pschdb");
    let admin = admin("postgres").await;
    admin.batch_execute(&format!("CREATE ROLE {role} LOGIN PASSWORD 'pw'")).await.expect("role");
    admin.batch_execute(&format!("CREATE DATABASE {dbname}")).await.expect("db");
    let db = connect_str(&cluster().superuser_conninfo(&dbname)).await;
    let mut tenants = Vec::new();
    for id in [unique("psa"), unique("psb")] {
        db.batch_execute(&format!(
            "CREATE SCHEMA {id}; CREATE TABLE {id}.items (owner text); INSERT INTO {id}.items VALUES ('{id}');
             GRANT USAGE ON SCHEMA {id} TO {role}; GRANT SELECT ON {id}.items TO {role};"
        ))
        .await
        .expect("schema");
        let mut t = pgtenant::config::TenantConfig::new(&id, "local", &dbname, &role, Some("pw"));
        t.isolation = Isolation::Schema;
        t.pool_size = Some(1);
        tenants.push(t);
    }
    let h = start(config(tenants.clone())).await;
    let mut tasks = Vec::new();
    for i in 0..8 {
        let t = tenants[i % 2].clone();
        let conninfo = h.conninfo(&t.id);
        tasks.push(tokio::spawn(async move {
            let c = connect_str(&conninfo).await;
            let stmt = c.prepare("SELECT owner FROM items").await.expect("prepare");
            for _ in 0..50 {
                let owner: String = c.query_one(&stmt, &[]).await.expect("query").get(0);
                assert_eq!(owner, t.id, "a statement prepared for another schema was used");
            }
        }));
    }
    for task in tasks {
        task.await.expect("client");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_sets_follow_the_client_in_transaction_mode() {
    let t = with_mode(tenant_db("settrack").await, PoolMode::Transaction, 1);
    let h = start(config(vec![t.clone()])).await;
    let a = h.client(&t.id).await;
    let b = h.client(&t.id).await;
    async fn setting(c: &tokio_postgres::Client, name: &str) -> String {
        let msgs = c.simple_query(&format!("SHOW {name}")).await.expect("show");
        msgs.iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                _ => None,
            })
            .expect("a row")
    }
    // Simple-protocol SET, and a SET through the extended protocol (named statement).
    a.batch_execute("SET statement_timeout = '1234ms'").await.expect("set");
    a.execute("SET work_mem = '2MB'", &[]).await.expect("set via extended protocol");
    for _ in 0..3 {
        // b shares the one server connection and does not see a's settings …
        assert_eq!(setting(&b, "statement_timeout").await, "0");
        assert_eq!(setting(&b, "work_mem").await, "4MB");
        // … and a keeps them across transactions.
        assert_eq!(setting(&a, "statement_timeout").await, "1234ms");
        assert_eq!(setting(&a, "work_mem").await, "2MB");
    }
    a.batch_execute("RESET statement_timeout").await.expect("reset");
    assert_eq!(setting(&a, "statement_timeout").await, "0");
    assert_eq!(setting(&a, "work_mem").await, "2MB");
    // A SET inside a transaction block lasts that transaction only (documented).
    a.batch_execute("BEGIN; SET lock_timeout = '5s'; COMMIT").await.expect("tx set");
    assert_eq!(setting(&b, "lock_timeout").await, "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_pins_the_client_or_is_refused() {
    let t = with_mode(tenant_db("listenpin").await, PoolMode::Transaction, 2);
    let h = start(config(vec![t.clone()])).await;
    let (listener, mut rx) = listening_client(&h.conninfo(&t.id)).await;
    listener.batch_execute("LISTEN jobs").await.expect("listen");
    // Another client keeps working on the other server connection, and its NOTIFY reaches
    // the pinned listener.
    let other = h.client(&t.id).await;
    for i in 0..3 {
        other.batch_execute(&format!("NOTIFY jobs, 'n{i}'")).await.expect("notify");
    }
    for i in 0..3 {
        let got = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.expect("in time");
        assert_eq!(got, Some(("jobs".to_owned(), format!("n{i}"))));
    }
    // With session_features = "refuse", LISTEN gets 0A000 instead.
    let r = with_mode(tenant_db("listenrefuse").await, PoolMode::Transaction, 2);
    let mut cfg = config(vec![r.clone()]);
    cfg.pool.session_features = pgtenant::config::SessionFeatures::Refuse;
    let h2 = start(cfg).await;
    let c = h2.client(&r.id).await;
    for sql in ["LISTEN jobs", "CREATE TEMP TABLE scratch (x int)"] {
        let e = c.batch_execute(sql).await.expect_err("refused");
        assert_eq!(code(&e), "0A000", "{sql}");
    }
    c.batch_execute("SELECT 1").await.expect("the session goes on");
}

#[tokio::test]
async fn result_type_change_after_ddl_is_recoverable() {
    let t = with_mode(tenant_db("ddlres").await, PoolMode::Transaction, 1);
    let h = start(config(vec![t.clone()])).await;
    let c = h.client(&t.id).await;
    c.batch_execute("CREATE TABLE r (a int); INSERT INTO r VALUES (5)").await.expect("create");
    let stmt = c.prepare("SELECT * FROM r").await.expect("prepare");
    let a: i32 = c.query_one(&stmt, &[]).await.expect("first").get(0);
    assert_eq!(a, 5);
    c.batch_execute("ALTER TABLE r ADD COLUMN b text DEFAULT 'x'").await.expect("ddl");
    // As from Postgres: the old statement reports the changed result type …
    let e = c.query(&stmt, &[]).await.expect_err("result type changed");
    assert_eq!(code(&e), "0A000");
    // … and preparing the same text again works (pgtenant dropped its stale copy).
    let again = c.prepare("SELECT * FROM r").await.expect("prepare again");
    let row = c.query_one(&again, &[]).await.expect("after re-prepare");
    assert_eq!((row.get::<_, i32>(0), row.get::<_, String>(1)), (5, "x".to_owned()));
}
