//! The per-client wait clock (SHOW CLIENTS `wait`/`wait_us`, SHOW POOLS `maxwait`) at a
//! cross-tenant handoff, and a cancel sent while waiting: a client of tenant b waits for the
//! pool's one connection, which tenant a holds in a transaction. Its clock runs while it
//! waits and stops when it is served (after the DISCARD ALL of the handoff); its cancel has
//! no server connection to go to, so it must not reach tenant a's query on the backend b is
//! waiting for. Then what ends a waiting client at once (KILL_CLIENT; the client closing its
//! connection or sending Terminate): its query never runs. And what a waiting client sends
//! meanwhile is kept and answered in order; a batch that ends in Flush is answered as soon
//! as the client is served.

use std::time::Duration;

use pgtenant::console::live::now_us;
use pgtenant::model::Isolation;

use super::*;
use crate::support::raw::*;
use crate::support::*;

/// (tenant, waiting for) of every logged-in client.
fn clocks(h: &Harness) -> Vec<(String, Option<Duration>)> {
    let now = now_us();
    h.proxy.live.list().iter().map(|c| (c.tenant.to_string(), c.waiting_for(now))).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wait_clock_and_a_cancel_while_waiting_at_a_cross_tenant_handoff() {
    let (a, b) = tenant_pair(Isolation::Schema, Access::Read, 1).await;
    let h = start_quick(vec![a.clone(), b.clone()]).await;
    let holder = h.client(&a.id).await;
    let p0 = pid(&holder).await;
    holder.batch_execute("BEGIN").await.expect("begin");
    let waiter = h.client(&b.id).await;
    let cancel = waiter.cancel_token();
    let served = tokio::spawn(async move {
        let r = rows(&waiter, "SELECT owner, pg_backend_pid() FROM items").await;
        (r, waiter)
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    let seen = clocks(&h);
    let waiting: Vec<_> = seen.iter().filter(|(_, w)| w.is_some()).collect();
    assert_eq!(waiting.len(), 1, "one client waits: {seen:?}");
    assert_eq!(waiting[0].0, b.id, "the waiter is tenant b's: {seen:?}");
    assert!(waiting[0].1.is_some_and(|w| w >= Duration::from_millis(300)), "{seen:?}");

    // Tenant a's query runs on the backend b waits for; b's cancel, sent now, has no server
    // connection to go to and must not cancel it.
    let holder_query = holder.simple_query("SELECT pg_sleep(0.6), 'a-done'");
    let (a_result, _) = tokio::join!(holder_query, async {
        tokio::time::sleep(Duration::from_millis(150)).await;
        cancel.cancel_query(tokio_postgres::NoTls).await
    });
    assert!(
        a_result.is_ok(),
        "tenant b's cancel reached tenant a's query: {:?}",
        a_result.map_err(|e| why(&e))
    );
    let seen = clocks(&h);
    let still = seen.iter().find(|(t, _)| *t == b.id).and_then(|(_, w)| *w);
    assert!(
        still.is_some_and(|w| w >= Duration::from_millis(900)),
        "b still waits, its clock running: {seen:?}"
    );
    holder.batch_execute("COMMIT").await.expect("tenant a's transaction is intact");

    // Served after the handoff: its own rows on the shared backend, or the cancel's 57014 —
    // never tenant a's rows; and no clock is left running.
    let (r, waiter) =
        tokio::time::timeout(Duration::from_secs(5), served).await.expect("served").expect("task");
    match r {
        Ok(r) => assert!(
            r.len() == 3 && r.iter().all(|row| row[0] == b.id && row[1] == p0.to_string()),
            "tenant b after the handoff saw {r:?}"
        ),
        Err(e) => assert_eq!(code(&e), "57014", "{}", why(&e)),
    }
    let seen = clocks(&h);
    assert!(seen.iter().all(|(_, w)| w.is_none()), "a wait clock still runs: {seen:?}");
    let r = rows(&waiter, "SELECT count(*) FROM items").await.expect("tenant b's next query");
    assert_eq!(r, vec![vec!["3".to_owned()]]);
    drop((waiter, holder));
    let gone = eventually(Duration::from_secs(5), || async { h.proxy.live.list().is_empty() }).await;
    assert!(gone, "clients left listed: {:?}", clocks(&h));
}

/// KILL_CLIENT of a client waiting for a full pool (tenant a holds the one connection in a
/// transaction) ends it at once, with 57P01: its INSERT never runs (not even once tenant a
/// commits), its wait clock and its entry are gone, and its place in the queue is given back
/// (tenant b's next client is served).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_killed_while_waiting_for_a_full_pool_ends_at_once_and_its_query_never_runs() {
    let (a, b) = tenant_pair(Isolation::Schema, Access::Write, 1).await;
    let h = start_quick(vec![a.clone(), b.clone()]).await;
    let holder = h.client(&a.id).await;
    holder.batch_execute("BEGIN").await.expect("begin");
    let waiter = h.watched_client(&b.id).await;
    let table = format!("\"{}\".t", b.id);
    let insert = format!("INSERT INTO {table} VALUES (1, 'killed')");
    let served = tokio::spawn(async move {
        let r = waiter.batch_execute(&insert).await;
        (r, waiter)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let id = h
        .proxy
        .live
        .list()
        .iter()
        .find(|c| c.tenant.as_str() == b.id)
        .map(|c| c.id)
        .expect("the waiter is listed");
    assert!(clocks(&h).iter().any(|(t, w)| *t == b.id && w.is_some()), "b waits: {:?}", clocks(&h));
    let killed = std::time::Instant::now();
    assert!(h.proxy.live.kill(id), "KILL_CLIENT {id}");
    let (r, waiter) = tokio::time::timeout(Duration::from_secs(2), served)
        .await
        .expect("the killed client is answered while tenant a still holds the connection")
        .expect("task");
    let e = r.expect_err("killed while waiting");
    assert_eq!(waiter.closing_code(&e).await, "57P01");
    assert!(killed.elapsed() < Duration::from_secs(1), "took {:?}", killed.elapsed());
    let gone =
        eventually(Duration::from_secs(2), || async { h.proxy.live.list().iter().all(|c| c.id != id) }).await;
    assert!(gone, "the killed client is still listed: {:?}", clocks(&h));
    holder.batch_execute("COMMIT").await.expect("commit");
    let next = h.client(&b.id).await;
    let r = rows(&next, "SELECT count(*) FROM items").await.expect("tenant b's next client is served");
    assert_eq!(r, vec![vec!["3".to_owned()]]);
    let db = admin(&b.database).await;
    let n: i64 = db.query_one(&format!("SELECT count(*) FROM {table}"), &[]).await.expect("count").get(0);
    assert_eq!(n, 0, "the killed client's INSERT ran");
}

/// A client that gives up while waiting for a full pool (tenant a holds the one connection
/// in a transaction) by closing its socket is dropped at once: it leaves SHOW CLIENTS (and
/// SHOW POOLS' `cl_waiting`) while tenant a still holds the connection, and its INSERT never
/// runs (not even once tenant a commits). One that sends Terminate behind its INSERT keeps
/// waiting: as PostgreSQL runs what precedes a Terminate, its INSERT runs once the connection
/// frees, it gets the reply and then its connection is closed. Tenant b's next client is
/// served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_closes_while_waiting_is_dropped_at_once_and_one_that_terminates_is_served() {
    let (a, b) = tenant_pair(Isolation::Schema, Access::Write, 1).await;
    let h = start_quick(vec![a.clone(), b.clone()]).await;
    let holder = h.client(&a.id).await;
    holder.batch_execute("BEGIN").await.expect("begin");
    let table = format!("\"{}\".t", b.id);
    let mut gone = raw_proxy(&h, &b.id).await;
    send(&mut gone, &query(&format!("INSERT INTO {table} VALUES (1, 'closed')"))).await;
    let mut terminating = raw_proxy(&h, &b.id).await;
    send(&mut terminating, &query(&format!("INSERT INTO {table} VALUES (2, 'terminated')"))).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let waiting = |h: &Harness| clocks(h).iter().filter(|(t, w)| *t == b.id && w.is_some()).count();
    assert_eq!(waiting(&h), 2, "both of b's clients wait: {:?}", clocks(&h));

    drop(gone);
    send(&mut terminating, &terminate()).await;
    let left = std::time::Instant::now();
    let dropped = eventually(Duration::from_secs(2), || async { waiting(&h) == 1 }).await;
    assert!(dropped, "the client that closed its socket is still listed: {:?}", clocks(&h));
    assert!(left.elapsed() < Duration::from_secs(1), "took {:?}", left.elapsed());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(waiting(&h), 1, "the client that sent Terminate still waits: {:?}", clocks(&h));

    holder.batch_execute("COMMIT").await.expect("commit");
    let (got, closed) = read_eof(&mut terminating, Duration::from_secs(5)).await;
    assert!(closed, "the session that sent Terminate is closed once served: {:?}", summary(&got));
    assert_eq!(summary(&got), ["C(INSERT 0 1)", "Z(I)"], "its INSERT ran and was answered");
    let next = h.client(&b.id).await;
    let r = rows(&next, "SELECT count(*) FROM items").await.expect("tenant b's next client is served");
    assert_eq!(r, vec![vec!["3".to_owned()]]);
    let db = admin(&b.database).await;
    let ids: Vec<i32> = db
        .query(&format!("SELECT id FROM {table} ORDER BY id"), &[])
        .await
        .expect("ids")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ids, [2], "the closed client's INSERT never ran; the terminating one's did");
}

/// A waiting client that pipelines more queries while it waits gets every answer, in order,
/// once it is served: what it sent meanwhile is kept, not lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_pipelines_while_waiting_gets_every_answer_in_order() {
    let (a, b) = tenant_pair(Isolation::Schema, Access::Read, 1).await;
    let h = start_quick(vec![a.clone(), b.clone()]).await;
    let holder = h.client(&a.id).await;
    holder.batch_execute("BEGIN").await.expect("begin");
    let mut waiter = raw_proxy(&h, &b.id).await;
    send(&mut waiter, &query("SELECT 'first'")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(clocks(&h).iter().any(|(t, w)| *t == b.id && w.is_some()), "b waits: {:?}", clocks(&h));
    send(&mut waiter, &cat(&[query("SELECT 'second'"), query("SELECT count(*) FROM items")])).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    holder.batch_execute("COMMIT").await.expect("commit");
    let (got, closed) = read_ready(&mut waiter, 3, Duration::from_secs(5)).await;
    assert!(!closed, "{:?}", summary(&got));
    assert_eq!(
        summary(&got),
        [
            "T",
            "D(first)",
            "C(SELECT 1)",
            "Z(I)",
            "T",
            "D(second)",
            "C(SELECT 1)",
            "Z(I)",
            "T",
            "D(3)",
            "C(SELECT 1)",
            "Z(I)"
        ]
    );
    send(&mut waiter, &query("SELECT 'after'")).await;
    let (got, _) = read_ready(&mut waiter, 1, Duration::from_secs(5)).await;
    assert_eq!(summary(&got), ["T", "D(after)", "C(SELECT 1)", "Z(I)"]);
}

/// A waiting client that sends its INSERT, then Terminate, then closes its socket: as with
/// PostgreSQL (which runs what precedes a Terminate whatever the socket does after), the
/// INSERT runs once the connection frees, and the session then ends: no client of tenant b is
/// left in SHOW CLIENTS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_client_that_terminates_and_closes_is_served_then_gone() {
    let (a, b) = tenant_pair(Isolation::Schema, Access::Write, 1).await;
    let h = start_quick(vec![a.clone(), b.clone()]).await;
    let holder = h.client(&a.id).await;
    holder.batch_execute("BEGIN").await.expect("begin");
    let table = format!("\"{}\".t", b.id);
    let mut quits = raw_proxy(&h, &b.id).await;
    send(&mut quits, &query(&format!("INSERT INTO {table} VALUES (7, 'quit')"))).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    send(&mut quits, &terminate()).await;
    drop(quits);
    tokio::time::sleep(Duration::from_millis(200)).await;
    holder.batch_execute("COMMIT").await.expect("commit");
    let gone = eventually(Duration::from_secs(3), || async {
        h.proxy.live.list().iter().all(|c| c.tenant.as_str() != b.id)
    })
    .await;
    assert!(gone, "a client of tenant b is still listed: {:?}", clocks(&h));
    let db = admin(&b.database).await;
    let n: i64 =
        db.query_one(&format!("SELECT count(*) FROM {table} WHERE id = 7"), &[]).await.expect("count").get(0);
    assert_eq!(n, 1, "the INSERT sent before Terminate ran");
    let next = h.client(&b.id).await;
    next.simple_query("SELECT 1").await.expect("tenant b is served after");
}

/// A waiting client whose batch ends in Flush (no Sync) is answered as soon as it is served,
/// as PostgreSQL answers a Flush: an unnamed Parse/Bind/Execute; then a named Parse across a
/// Sync whose Bind/Execute must also wait for that Parse's verdict (behind the handoff's
/// reset, which holds what follows the first Sync until it is confirmed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_batch_that_ends_in_flush_is_answered_once_served() {
    let (a, b) = tenant_pair(Isolation::Schema, Access::Read, 1).await;
    let h = start_quick(vec![a.clone(), b.clone()]).await;
    let holder = h.client(&a.id).await;
    let mut waiter = raw_proxy(&h, &b.id).await;
    let flush = || msg(b'H', &[]);
    let batches: [(Vec<u8>, usize, &[&str]); 2] = [
        (
            cat(&[parse("", "SELECT 'unnamed'::text"), bind("", ""), execute(""), flush()]),
            1,
            &["1", "2", "D(unnamed)", "C(SELECT 1)"],
        ),
        (
            cat(&[parse("s_wait", "SELECT 'named'::text"), sync(), bind("", "s_wait"), execute(""), flush()]),
            1,
            &["1", "Z(I)", "2", "D(named)", "C(SELECT 1)"],
        ),
    ];
    for (batch, completions, want) in batches {
        holder.batch_execute("BEGIN").await.expect("begin");
        send(&mut waiter, &batch).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(clocks(&h).iter().any(|(t, w)| *t == b.id && w.is_some()), "b waits: {:?}", clocks(&h));
        holder.batch_execute("COMMIT").await.expect("commit");
        let got = read_completions(&mut waiter, completions).await;
        assert_eq!(got, want, "answered once served, with no Sync");
        send(&mut waiter, &sync()).await;
        let (got, _) = read_ready(&mut waiter, 1, Duration::from_secs(5)).await;
        assert_eq!(summary(&got), ["Z(I)"]);
    }
}

/// What arrives until `n` CommandComplete or ErrorResponse messages have (or 5 s pass), and
/// anything that follows within 100 ms, as comparable words.
async fn read_completions(s: &mut tokio::net::TcpStream, n: usize) -> Vec<String> {
    use tokio::io::AsyncReadExt;
    let done =
        |got: &[u8]| summary(got).iter().filter(|m| m.starts_with("C(") || m.starts_with("E(")).count();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 16384];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while done(&got) < n {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(k)) if k > 0 => got.extend_from_slice(&buf[..k]),
            _ => break,
        }
    }
    let (more, _) = read_quiet(s, Duration::from_millis(100)).await;
    got.extend_from_slice(&more);
    summary(&got)
}

/// A waiting client that sends a malformed frame behind its INSERT is answered as PostgreSQL
/// answers it (which runs what precedes the bad frame, then ends the session with 08P01): the
/// INSERT runs once the connection frees, its reply comes, then the FATAL and the close. Before,
/// the bad frame ended the wait at once: the client got only the FATAL and its INSERT never ran
/// (the differential test caught it when a checkout waited: [Sync, Malformed] got no `Z`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_client_that_breaks_the_protocol_is_answered_first() {
    let (a, b) = tenant_pair(Isolation::Schema, Access::Write, 1).await;
    let h = start_quick(vec![a.clone(), b.clone()]).await;
    let holder = h.client(&a.id).await;
    holder.batch_execute("BEGIN").await.expect("begin");
    let table = format!("\"{}\".t", b.id);
    let mut waiter = raw_proxy(&h, &b.id).await;
    send(&mut waiter, &query(&format!("INSERT INTO {table} VALUES (8, 'bad')"))).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A frame whose length (2) is shorter than the length field itself.
    send(&mut waiter, &[b'Q', 0, 0, 0, 2]).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    holder.batch_execute("COMMIT").await.expect("commit");
    let (got, closed) = read_eof(&mut waiter, Duration::from_secs(5)).await;
    let words = summary(&got);
    assert!(closed, "the session ends after the bad frame: {words:?}");
    assert_eq!(words.first().map(String::as_str), Some("C(INSERT 0 1)"), "{words:?}");
    assert_eq!(words.get(1).map(String::as_str), Some("Z(I)"), "{words:?}");
    assert_eq!(sqlstate(&got).as_deref(), Some("08P01"), "{words:?}");
    let db = admin(&b.database).await;
    let n: i64 =
        db.query_one(&format!("SELECT count(*) FROM {table} WHERE id = 8"), &[]).await.expect("count").get(0);
    assert_eq!(n, 1, "the INSERT sent before the bad frame ran");
}

/// Review attack (tenant b against tenant a on the pool's one server connection, through the
/// DO-cursor close at `retire` and the malformed-frame wait): tenant a declares cursors in a
/// DO block (one WITH HOLD) inside a transaction and leaves — once right after COMMIT, once
/// mid-transaction; by a simple query and through Parse/Bind — while a client of tenant b waits with FETCHes of those cursors, a
/// pg_cursors count and its backend pid, then a malformed frame. Tenant b gets 34000 for both
/// FETCHes, no cursor on the backend, the shared backend's pid (first round), then 08P01 —
/// never `a-secret`; and tenant a's next transaction declares the same cursors and reads them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_b_waiting_with_a_bad_frame_never_reaches_tenant_a_cursors_from_code() {
    let (a, b) = tenant_pair(Isolation::Schema, Access::Write, 1).await;
    let h = start_quick(vec![a.clone(), b.clone()]).await;
    let plant = "DO $$BEGIN \
        EXECUTE 'DECLARE a_held CURSOR WITH HOLD FOR SELECT ''a-secret''::text FROM generate_series(1, 5)'; \
        EXECUTE 'DECLARE a_open CURSOR FOR SELECT ''a-secret''::text'; END$$";
    let a_table = format!("\"{}\".t", a.id);
    for (commit, extended) in [(true, false), (true, true), (false, false), (false, true)] {
        let holder = h.client(&a.id).await;
        let p0 = pid(&holder).await;
        holder.batch_execute("BEGIN").await.expect("begin");
        if extended {
            holder.execute(plant, &[]).await.expect("plant in a DO block through Parse/Bind");
        } else {
            holder.batch_execute(plant).await.expect("plant in a DO block");
        }
        holder
            .batch_execute(&format!("INSERT INTO {a_table} VALUES (1, 'a-secret')"))
            .await
            .expect("tenant a's row");
        let mut waiter = raw_proxy(&h, &b.id).await;
        send(
            &mut waiter,
            &cat(&[
                query("FETCH ALL FROM a_held"),
                query("FETCH ALL FROM a_open"),
                query("SELECT count(*) FROM pg_cursors"),
                query("SELECT pg_backend_pid()"),
            ]),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(clocks(&h).iter().any(|(t, w)| *t == b.id && w.is_some()), "b waits: {:?}", clocks(&h));
        send(&mut waiter, &[b'Q', 0, 0, 0, 2]).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        if commit {
            holder.batch_execute("COMMIT").await.expect("commit");
        }
        drop(holder);
        let (got, closed) = read_eof(&mut waiter, Duration::from_secs(5)).await;
        let words = summary(&got);
        assert!(closed, "commit={commit}: the session ends after the bad frame: {words:?}");
        assert!(
            !words.iter().any(|w| w.contains("a-secret")),
            "commit={commit}: tenant b read tenant a's cursor: {words:?}"
        );
        assert_eq!(
            words[..10],
            [
                "E(34000)",
                "Z(I)",
                "E(34000)",
                "Z(I)",
                "T",
                "D(0)",
                "C(SELECT 1)",
                "Z(I)",
                "T",
                words[9].as_str()
            ],
            "commit={commit}: {words:?}"
        );
        if commit {
            assert_eq!(words[9], format!("D({p0})"), "the same server connection: {words:?}");
        }
        assert_eq!(&words[10..], ["C(SELECT 1)", "Z(I)", "E(08P01,FATAL)"], "commit={commit}: {words:?}");
    }
    // Tenant a's next transaction: the same names are free and its cursors read its rows.
    let next = h.client(&a.id).await;
    next.batch_execute("BEGIN").await.expect("begin");
    next.batch_execute(plant).await.expect("the same cursors again: none was left behind");
    let r = rows(&next, "FETCH 2 FROM a_held").await.expect("fetch");
    assert_eq!(r, vec![vec!["a-secret".to_owned()]; 2]);
    next.batch_execute("COMMIT").await.expect("commit");
    let r = rows(&next, "SELECT count(*) FROM pg_cursors").await.expect("cursors after commit");
    assert_eq!(r, vec![vec!["0".to_owned()]], "the WITH HOLD cursor is closed after a's commit");
    let db = admin(&a.database).await;
    let n: i64 = db.query_one(&format!("SELECT count(*) FROM {a_table}"), &[]).await.expect("count").get(0);
    assert_eq!(n, 2, "the committed rounds' rows only (the others rolled back)");
}
