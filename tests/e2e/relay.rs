//! The relay with tokio-postgres: simple and extended queries, transactions, errors, COPY,
//! NOTIFY, cancel, large messages, routing.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, TryStreamExt};
use pgtenant::model::PoolMode;

use crate::support::*;

#[tokio::test]
async fn simple_extended_transactions_and_errors() {
    let t = tenant_db("rel").await;
    let h = start(config(vec![t.clone()])).await;
    let c = h.client(&t.id).await;

    // Simple protocol, several statements in one message.
    let rows = c
        .simple_query("CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'a'), (2, 'b'); SELECT v FROM t ORDER BY id")
        .await
        .expect("multi-statement");
    let values: Vec<String> = rows
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .collect();
    assert_eq!(values, vec!["a", "b"]);

    // Extended protocol with parameters and binary results.
    let row = c
        .query_one("SELECT $1::int8 * 2, $2::text || 'x', current_database()", &[&21i64, &"a"])
        .await
        .expect("extended");
    assert_eq!(row.get::<_, i64>(0), 42);
    assert_eq!(row.get::<_, String>(1), "ax");
    assert_eq!(row.get::<_, String>(2), t.database);

    // Transactions: rollback discards, commit keeps.
    c.batch_execute("BEGIN; INSERT INTO t VALUES (3, 'c'); ROLLBACK").await.expect("rollback");
    c.batch_execute("BEGIN; INSERT INTO t VALUES (4, 'd'); COMMIT").await.expect("commit");
    let n: i64 = c.query_one("SELECT count(*) FROM t", &[]).await.expect("count").get(0);
    assert_eq!(n, 3);

    // An error mid-transaction, then recovery on the same connection.
    c.batch_execute("BEGIN").await.expect("begin");
    let e = c.execute("INSERT INTO t VALUES (1, 'dup')", &[]).await.expect_err("duplicate key");
    assert_eq!(code(&e), "23505");
    let e = c.query("SELECT 1", &[]).await.expect_err("aborted transaction");
    assert_eq!(code(&e), "25P02");
    c.batch_execute("ROLLBACK").await.expect("rollback after error");
    let e = c.query("SELECT * FROM no_such_table", &[]).await.expect_err("undefined table");
    assert_eq!(code(&e), "42P01");
    let v: i32 = c.query_one("SELECT 7", &[]).await.expect("recovered").get(0);
    assert_eq!(v, 7);

    // An error inside a pipeline: the statements after it still get their answers.
    let (a, b, d) =
        tokio::join!(c.query("SELECT 1", &[]), c.query("SELECT 1/0", &[]), c.query("SELECT 3", &[]));
    assert_eq!(a.expect("first").len(), 1);
    assert_eq!(code(&b.expect_err("division by zero")), "22012");
    assert_eq!(d.expect("third")[0].get::<_, i32>(0), 3);
}

#[tokio::test]
async fn named_statements_in_session_mode() {
    let t = with_mode(tenant_db("named").await, PoolMode::Session, 2);
    let h = start(config(vec![t.clone()])).await;
    let c = h.client(&t.id).await;
    let stmt = c.prepare("SELECT $1::int + 1").await.expect("prepare");
    for i in 0..200i32 {
        let r: i32 = c.query_one(&stmt, &[&i]).await.expect("execute named").get(0);
        assert_eq!(r, i + 1);
    }
    // The upstream really holds a named statement for this session.
    let n: i64 = c.query_one("SELECT count(*) FROM pg_prepared_statements", &[]).await.expect("count").get(0);
    assert!(n >= 1);
}

#[tokio::test]
async fn copy_in_and_out_100k_rows_with_checksum() {
    for mode in [PoolMode::Transaction, PoolMode::Session] {
        let t = with_mode(tenant_db("copy").await, mode, 2);
        let h = start(config(vec![t.clone()])).await;
        let c = h.client(&t.id).await;
        c.batch_execute("CREATE TABLE items (id int, label text)").await.expect("create");
        let sink = c.copy_in("COPY items FROM STDIN").await.expect("copy in");
        futures_util::pin_mut!(sink);
        let mut chunk = String::new();
        let mut sent_sum: i64 = 0;
        for i in 0..100_000i64 {
            sent_sum += i;
            chunk.push_str(&format!("{i}\tlabel-{i}\n"));
            if chunk.len() > 64 * 1024 {
                sink.send(bytes::Bytes::from(std::mem::take(&mut chunk))).await.expect("send chunk");
            }
        }
        sink.send(bytes::Bytes::from(chunk)).await.expect("send last");
        let copied = sink.finish().await.expect("finish");
        assert_eq!(copied, 100_000);
        let row = c
            .query_one(
                "SELECT count(*), sum(id)::int8, md5(string_agg(label, ',' ORDER BY id)) FROM items",
                &[],
            )
            .await
            .expect("check");
        assert_eq!(row.get::<_, i64>(0), 100_000);
        assert_eq!(row.get::<_, i64>(1), sent_sum);
        let server_md5: String = row.get(2);

        let stream =
            c.copy_out("COPY (SELECT id, label FROM items ORDER BY id) TO STDOUT").await.expect("copy out");
        let chunks: Vec<bytes::Bytes> = stream.try_collect().await.expect("collect");
        let text: Vec<u8> = chunks.concat();
        let text = String::from_utf8(text).expect("utf8");
        let mut labels = Vec::with_capacity(100_000);
        let mut sum = 0i64;
        for line in text.lines() {
            let (id, label) = line.split_once('\t').expect("two columns");
            sum += id.parse::<i64>().expect("id");
            labels.push(label);
        }
        assert_eq!(labels.len(), 100_000);
        assert_eq!(sum, sent_sum);
        let joined = labels.join(",");
        let local_md5: String = c.query_one("SELECT md5($1)", &[&joined]).await.expect("md5").get(0);
        assert_eq!(local_md5, server_md5, "{mode:?}: copied-out data differs");
    }
}

#[tokio::test]
async fn notify_reaches_a_session_mode_listener() {
    let t = with_mode(tenant_db("notify").await, PoolMode::Session, 3);
    let h = start(config(vec![t.clone()])).await;
    let (listener, mut rx) = listening_client(&h.conninfo(&t.id)).await;
    listener.batch_execute("LISTEN jobs").await.expect("listen");
    let sender = h.client(&t.id).await;
    sender.batch_execute("NOTIFY jobs, 'hello'").await.expect("notify");
    let got = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.expect("notification in time");
    assert_eq!(got, Some(("jobs".to_owned(), "hello".to_owned())));
}

#[tokio::test]
async fn cancel_stops_a_long_query_quickly() {
    for mode in [PoolMode::Transaction, PoolMode::Session] {
        let t = with_mode(tenant_db("cancel").await, mode, 2);
        let h = start(config(vec![t.clone()])).await;
        let c = h.client(&t.id).await;
        let token = c.cancel_token();
        let started = Instant::now();
        let canceller = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            token.cancel_query(tokio_postgres::NoTls).await.expect("send cancel");
        });
        let e = c.query("SELECT pg_sleep(10)", &[]).await.expect_err("cancelled");
        assert_eq!(code(&e), "57014", "{mode:?}");
        assert!(started.elapsed() < Duration::from_secs(2), "{mode:?}: took {:?}", started.elapsed());
        canceller.await.expect("canceller");
        // The connection is usable after the cancel.
        let v: i32 = c.query_one("SELECT 5", &[]).await.expect("after cancel").get(0);
        assert_eq!(v, 5);
    }
}

#[tokio::test]
async fn cancel_for_an_idle_client_is_a_no_op() {
    let t = tenant_db("cancel_noop").await;
    let h = start(config(vec![t.clone()])).await;
    let c = h.client(&t.id).await;
    // Transaction mode, between transactions: no server attached, nothing to cancel.
    c.cancel_token().cancel_query(tokio_postgres::NoTls).await.expect("cancel idle");
    let v: f64 =
        c.query_one("SELECT 1.5::float8 FROM pg_sleep(0.3)", &[]).await.expect("not cancelled").get(0);
    assert_eq!(v, 1.5);
}

#[tokio::test]
async fn large_query_text_and_large_bytea() {
    let t = tenant_db("large").await;
    let h = start(config(vec![t.clone()])).await;
    let c = h.client(&t.id).await;
    // A 1 MB query text (simple protocol).
    let literal = "x".repeat(1 << 20);
    let sql = format!("SELECT length('{literal}')");
    let rows = c.simple_query(&sql).await.expect("1 MB query");
    let len = rows.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
        _ => None,
    });
    assert_eq!(len.as_deref(), Some("1048576"));
    // 10 MB of bytea in and out (binary, extended protocol).
    let blob: Vec<u8> = (0..10 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    c.batch_execute("CREATE TABLE blobs (b bytea)").await.expect("create");
    c.execute("INSERT INTO blobs VALUES ($1)", &[&blob]).await.expect("insert 10 MB");
    let back: Vec<u8> = c.query_one("SELECT b FROM blobs", &[]).await.expect("select 10 MB").get(0);
    assert_eq!(back.len(), blob.len());
    assert!(back == blob, "10 MB bytea came back different");
}

#[tokio::test]
async fn two_tenants_route_to_their_own_databases() {
    let a = tenant_db("route_a").await;
    let b = with_mode(tenant_db("route_b").await, PoolMode::Session, 3);
    let h = start(config(vec![a.clone(), b.clone()])).await;
    let ca = h.client(&a.id).await;
    let cb = h.client(&b.id).await;
    ca.batch_execute("CREATE TABLE secrets (owner text); INSERT INTO secrets VALUES ('a')").await.expect("a");
    cb.batch_execute("CREATE TABLE secrets (owner text); INSERT INTO secrets VALUES ('b')").await.expect("b");
    let mut tasks = Vec::new();
    for i in 0..20 {
        let (id, expect) = if i % 2 == 0 {
            (a.id.clone(), ("a", a.database.clone()))
        } else {
            (b.id.clone(), ("b", b.database.clone()))
        };
        let conninfo = h.conninfo(&id);
        tasks.push(tokio::spawn(async move {
            let c = connect_str(&conninfo).await;
            for _ in 0..20 {
                let r = c
                    .query_typed("SELECT owner, current_database() FROM secrets", &[])
                    .await
                    .expect("query")
                    .remove(0);
                assert_eq!(
                    (r.get::<_, String>(0).as_str(), r.get::<_, String>(1)),
                    (expect.0, expect.1.clone())
                );
            }
        }));
    }
    for t in tasks {
        t.await.expect("no crossing");
    }
}

#[tokio::test]
async fn function_call_is_relayed_and_released() {
    let t = with_mode(tenant_db("fcall").await, PoolMode::Transaction, 1);
    let h = start(config(vec![t.clone()])).await;
    let mut s = tokio::net::TcpStream::connect(h.addr).await.expect("connect");
    let login = startup_packet(&[("user", &format!("app.{}", t.id))]);
    tokio::io::AsyncWriteExt::write_all(&mut s, &login).await.expect("startup");
    read_until_ready(&mut s).await;
    // FunctionCall of pg_backend_pid() (OID 2026): no format codes, no arguments, text result.
    let call: &[u8] = b"F\0\0\0\x0e\0\0\x07\xea\0\0\0\0\0\0";
    for _ in 0..2 {
        tokio::io::AsyncWriteExt::write_all(&mut s, call).await.expect("call");
        let reply = read_until_ready(&mut s).await;
        assert_eq!(reply[0], b'V', "FunctionCallResponse: {reply:?}");
        let len = i32::from_be_bytes([reply[5], reply[6], reply[7], reply[8]]) as usize;
        let pid: i32 = std::str::from_utf8(&reply[9..9 + len]).expect("text").parse().expect("pid");
        assert!(pid > 0);
    }
    // The pool of one was released after each call: another client gets it.
    let other = h.client(&t.id).await;
    let v: i32 = other.query_typed("SELECT 1", &[]).await.expect("pool released")[0].get(0);
    assert_eq!(v, 1);
}
