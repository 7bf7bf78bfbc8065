//! `[proxy] large_message_memory`: what clients together may hold of large messages pgtenant
//! reads whole (a Query over 256 KiB here), taken as the bytes arrive, never from a header
//! ahead of them. A message the budget cannot hold ends its client's session with 53200; the
//! others' messages run; what a session held comes back as its messages go on, or when it
//! ends mid-message.

use pgtenant::model::PoolMode;
use std::time::Duration;

use crate::support::raw::*;
use crate::support::*;

/// A Query of `SELECT length('xx…')` with `n` x's, as bytes.
fn long_query(n: usize) -> (Vec<u8>, String) {
    let sql = format!("SELECT length('{}')", "x".repeat(n));
    (query(&sql), n.to_string())
}

/// The value of the one row a simple query returned.
fn value(got: &[u8]) -> Option<String> {
    let row = messages(got).into_iter().find(|(t, _)| *t == b'D')?;
    data_row(row.1).into_iter().next()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_messages_share_one_budget_and_others_are_unaffected() {
    let t = tenant_db("largemsg").await;
    let mut cfg = config(vec![t.clone()]);
    cfg.proxy.large_message_memory = 1 << 20;
    // The whole is what this test is about: the tenant may hold all of it.
    cfg.proxy.large_message_memory_per_tenant = Some(1 << 20);
    let h = start(cfg).await;
    let limit = Duration::from_secs(5);

    // a: 950 KB arriving slowly (its first 900 KB now) holds 900 KB less the free 256 KiB.
    let (qa, na) = long_query(950_000);
    let mut a = raw_proxy(&h, &t.id).await;
    send(&mut a, &qa[..900_000]).await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    // b: 800 KB does not fit beside it: 53200, FATAL, closed, once what arrived passes it.
    let (qb, _) = long_query(800_000);
    let (mut b, mut w) = raw_proxy(&h, &t.id).await.into_split();
    let writer = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        // The proxy stops reading (and closes) partway: the write may fail.
        let _ = w.write_all(&[query("SELECT 1"), qb].concat()).await;
        w
    });
    let (got, closed) = read_eof(&mut b, limit).await;
    drop(writer.await);
    assert!(closed, "b's session ends: {:?}", summary(&got));
    let s = summary(&got);
    assert_eq!(&s[..4], ["T", "D(1)", "C(SELECT 1)", "Z(I)"], "what came before is answered");
    let e = messages(&got).into_iter().rev().find(|(t, _)| *t == b'E').map(|(_, body)| body.to_vec());
    let e = e.unwrap_or_default();
    assert_eq!(field(&e, b'C').as_deref(), Some("53200"), "{s:?}");
    assert_eq!(field(&e, b'S').as_deref(), Some("FATAL"), "{s:?}");
    assert!(field(&e, b'M').is_some_and(|m| m.contains("large_message_memory")), "{:?}", field(&e, b'M'));

    // Small messages are not counted: another client runs as ever meanwhile.
    let c = h.client(&t.id).await;
    let v: i32 = c.query_one("SELECT 7", &[]).await.expect("small queries run").get(0);
    assert_eq!(v, 7);

    // a's message completes and runs.
    send(&mut a, &qa[900_000..]).await;
    let (got, _) = read_ready(&mut a, 1, limit).await;
    assert_eq!(value(&got).as_deref(), Some(na.as_str()), "{:?}", summary(&got));

    // Once a's message went on, its share came back: 800 KB fits now, twice over in turn.
    let (qb, nb) = long_query(800_000);
    for _ in 0..2 {
        let mut b = raw_proxy(&h, &t.id).await;
        send(&mut b, &qb).await;
        let (got, _) = read_ready(&mut b, 1, limit).await;
        assert_eq!(value(&got).as_deref(), Some(nb.as_str()), "{:?}", summary(&got));
    }

    // A client that leaves mid-message gives its share back too.
    let mut d = raw_proxy(&h, &t.id).await;
    send(&mut d, &qa[..900_000]).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(d);
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let mut e = raw_proxy(&h, &t.id).await;
        // Refused partway while d's share is still held: the write may fail.
        let _ = tokio::io::AsyncWriteExt::write_all(&mut e, &qa).await;
        let (got, _) = read_ready(&mut e, 1, limit).await;
        if value(&got).as_deref() == Some(na.as_str()) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the share never came back: {:?}", summary(&got));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The value of the unlabelled series `name` in the proxy's metrics now.
fn metric(h: &Harness, name: &str) -> Option<f64> {
    let text = pgtenant::admin::http::metrics::exposition(&h.proxy);
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix("{} ")?.parse().ok())
}

/// The error a session ended with (its last ErrorResponse): SQLSTATE, severity, message.
fn last_error(got: &[u8]) -> (Option<String>, Option<String>, String) {
    let e = messages(got).into_iter().rev().find(|(t, _)| *t == b'E').map(|(_, body)| body.to_vec());
    let e = e.unwrap_or_default();
    (field(&e, b'C'), field(&e, b'S'), field(&e, b'M').unwrap_or_default())
}

/// One tenant's clients hold at most its share of the budget (by default half of it): past
/// the share a message of that tenant gets 53200 naming the tenant's limit (from its header
/// when it could never fit), while another tenant's large query takes from what is left and
/// runs; the share comes back once the message went on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tenants_large_messages_leave_the_others_their_part() {
    let (t, u) = (tenant_db("largeshare").await, tenant_db("largeshare2").await);
    let mut cfg = config(vec![t.clone(), u.clone()]);
    cfg.proxy.large_message_memory = 1 << 20;
    let h = start(cfg).await;
    let limit = Duration::from_secs(5);

    // a (tenant t): 700 KB of a 750 KB query hold 700 KB less the free 256 KiB, most of t's
    // 512 KiB share.
    let (qa, na) = long_query(750_000);
    let mut a = raw_proxy(&h, &t.id).await;
    send(&mut a, &qa[..700_000]).await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    // The metrics show what is held of the whole.
    let held = metric(&h, "pgtenant_large_message_bytes");
    assert_eq!(held, Some((700_000 - 256 * 1024) as f64), "a's bytes past the free part");
    assert_eq!(metric(&h, "pgtenant_large_message_memory_bytes"), Some(f64::from(1u32 << 20)));

    // b (tenant t too): 400 KB passes t's share though the whole has room: 53200, FATAL,
    // what came before answered.
    let (qb, nb) = long_query(400_000);
    let (mut b, mut w) = raw_proxy(&h, &t.id).await.into_split();
    let writer = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        // The proxy stops reading (and closes) partway: the write may fail.
        let _ = w.write_all(&[query("SELECT 1"), qb.clone()].concat()).await;
        w
    });
    let (got, closed) = read_eof(&mut b, limit).await;
    drop(writer.await);
    let s = summary(&got);
    assert!(closed, "b's session ends: {s:?}");
    assert_eq!(&s[..4], ["T", "D(1)", "C(SELECT 1)", "Z(I)"], "what came before is answered");
    let (code, severity, message) = last_error(&got);
    assert_eq!((code.as_deref(), severity.as_deref()), (Some("53200"), Some("FATAL")), "{s:?}");
    assert!(message.contains("large_message_memory_per_tenant (524288 bytes)"), "{message}");

    // c (tenant u): the same 700 KB beside a's takes from what is left of the whole and runs.
    let (qc, nc) = long_query(700_000);
    let mut c = raw_proxy(&h, &u.id).await;
    send(&mut c, &qc).await;
    let (got, _) = read_ready(&mut c, 1, limit).await;
    assert_eq!(value(&got).as_deref(), Some(nc.as_str()), "{:?}", summary(&got));

    // A Query of t announcing more than its share could ever hold: refused from its header.
    let mut d = raw_proxy(&h, &t.id).await;
    send(&mut d, &[&b"Q"[..], &900_000u32.to_be_bytes()].concat()).await;
    let (got, closed) = read_eof(&mut d, limit).await;
    let (code, _, message) = last_error(&got);
    assert!(closed && code.as_deref() == Some("53200"), "{:?}", summary(&got));
    assert!(message.contains("large_message_memory_per_tenant"), "{message}");

    // a's message completes and runs; then t's share is back: b's query runs.
    send(&mut a, &qa[700_000..]).await;
    let (got, _) = read_ready(&mut a, 1, limit).await;
    assert_eq!(value(&got).as_deref(), Some(na.as_str()), "{:?}", summary(&got));
    let mut b = raw_proxy(&h, &t.id).await;
    send(&mut b, &long_query(400_000).0).await;
    let (got, _) = read_ready(&mut b, 1, limit).await;
    assert_eq!(value(&got).as_deref(), Some(nb.as_str()), "{:?}", summary(&got));
}

/// A header alone holds nothing: five bytes announcing a Query as long as the whole budget
/// (left unsent, the client idle) must not refuse other clients' large queries, of this
/// tenant or another, for as long as that connection stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_alone_holds_none_of_the_budget() {
    let (t, u) = (tenant_db("largehdr").await, tenant_db("largehdr2").await);
    let mut cfg = config(vec![t.clone(), u.clone()]);
    cfg.proxy.large_message_memory = 1 << 20;
    cfg.proxy.large_message_memory_per_tenant = Some(1 << 20);
    let h = start(cfg).await;
    let limit = Duration::from_secs(5);

    // Each sends nothing but `Q` and a length of 960 KiB, then waits.
    let mut idle = Vec::new();
    for _ in 0..3 {
        let mut a = raw_proxy(&h, &t.id).await;
        send(&mut a, &[b'Q', 0, 0x0f, 0, 0]).await;
        idle.push(a);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;

    let (q, n) = long_query(600_000);
    for tenant in [&t.id, &u.id] {
        let mut b = raw_proxy(&h, tenant).await;
        send(&mut b, &q).await;
        let (got, _) = read_ready(&mut b, 1, limit).await;
        assert_eq!(value(&got).as_deref(), Some(n.as_str()), "{:?}", summary(&got));
    }
    for mut a in idle {
        let (got, _) = read_ready(&mut a, 1, Duration::from_millis(100)).await;
        assert!(got.is_empty(), "the idle ones are not refused either: {:?}", summary(&got));
    }
}

/// Past its tenant's share while waiting for a connection (the tenant's one connection in
/// another client's transaction): the message is refused from its header as the wait goes
/// on, what came before it runs once the connection frees, then 53200 names the tenant's
/// limit. Meanwhile another tenant's large query runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_large_share_while_waiting_for_a_connection_what_came_before_runs_first() {
    let (t, u) = (tenant_db("largewait").await, tenant_db("largewait2").await);
    let mut cfg = config(vec![with_mode(t.clone(), PoolMode::Transaction, 1), u.clone()]);
    cfg.proxy.large_message_memory = 1 << 20;
    let h = start(cfg).await;
    let limit = Duration::from_secs(5);

    // a holds t's one connection in a transaction.
    let mut a = raw_proxy(&h, &t.id).await;
    send(&mut a, &query("BEGIN")).await;
    let (got, _) = read_ready(&mut a, 1, limit).await;
    assert_eq!(summary(&got), ["C(BEGIN)", "Z(T)"]);

    // b (tenant t): SELECT 1 waits for the connection; then, read during the wait, a Query
    // announcing more than t's share could ever hold.
    let mut b = raw_proxy(&h, &t.id).await;
    send(&mut b, &query("SELECT 1")).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    send(&mut b, &[&b"Q"[..], &900_000u32.to_be_bytes()].concat()).await;
    let (got, closed) = read_quiet(&mut b, Duration::from_millis(300)).await;
    assert!(got.is_empty() && !closed, "b still waits: {:?}", summary(&got));

    // c (tenant u): a large query runs meanwhile.
    let (qc, nc) = long_query(700_000);
    let mut c = raw_proxy(&h, &u.id).await;
    send(&mut c, &qc).await;
    let (got, _) = read_ready(&mut c, 1, limit).await;
    assert_eq!(value(&got).as_deref(), Some(nc.as_str()), "{:?}", summary(&got));

    // a commits: b's SELECT 1 runs on the freed connection, then its session ends.
    send(&mut a, &query("COMMIT")).await;
    let (got, _) = read_ready(&mut a, 1, limit).await;
    assert_eq!(summary(&got), ["C(COMMIT)", "Z(I)"]);
    let (got, closed) = read_eof(&mut b, limit).await;
    let s = summary(&got);
    assert!(closed, "b's session ends: {s:?}");
    assert_eq!(s, ["T", "D(1)", "C(SELECT 1)", "Z(I)", "E(53200,FATAL)"], "what came before is answered");
    let (code, severity, message) = last_error(&got);
    assert_eq!((code.as_deref(), severity.as_deref()), (Some("53200"), Some("FATAL")), "{s:?}");
    assert!(message.contains("large_message_memory_per_tenant (524288 bytes)"), "{message}");
}
