//! A handoff whose reset fails is tried again on another server connection. When DISCARD ALL
//! fails (here: it waits for a lock on the previous tenant's temporary table and is
//! cancelled, as a statement timeout of the previous session would cancel it), the server
//! skips everything behind it up to the client's first Sync, so nothing of the next client
//! ran: pgtenant closes that connection and sends the client's messages, as it sent them, on
//! another one. The client sees only its own replies, each of its statements runs once, and
//! once the attempts are used up (a setup that fails on every connection) the session ends
//! with the server's error as before.

use pgtenant::model::Isolation;

use super::setup::{held_behind_a_setup, held_pipeline, ids};
use super::*;
use crate::support::raw::*;
use crate::support::*;

/// Tenant a's client leaves a temporary table (spelt so that pgtenant cannot read it, which
/// would reset the connection at once) on the pool's one connection, and a superuser locks
/// it in an open transaction: the next handoff's DISCARD ALL will wait for the lock. Returns
/// the backend's pid and the superuser's session (its transaction open).
pub(super) async fn a_leaves_a_locked_temp_table(h: &Harness, a: &TenantConfig) -> (i32, Client) {
    let su = admin(&a.database).await;
    let ca = h.client(&a.id).await;
    let p0 = pid(&ca).await;
    ca.batch_execute("DO $$BEGIN EXECUTE 'CREATE TEM' || 'P TABLE held (x int)'; END$$")
        .await
        .expect("tenant a's temp table");
    lock_the_held_temp_table(&su).await;
    (p0, su)
}

/// Superuser `su` opens a transaction that locks every temporary table named `held` tenants'
/// sessions made: a DISCARD ALL on those sessions then waits for the lock.
pub(super) async fn lock_the_held_temp_table(su: &Client) {
    let schemas: Vec<String> = su
        .query(
            "SELECT n.nspname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relname = 'held' AND c.relpersistence = 't'",
            &[],
        )
        .await
        .expect("temp schemas")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(!schemas.is_empty(), "no temporary table named held");
    let locks: String =
        schemas.iter().map(|s| format!("LOCK TABLE {s}.held IN ACCESS EXCLUSIVE MODE;")).collect();
    su.batch_execute(&format!("BEGIN; {locks}")).await.expect("lock the temp tables");
}

/// Waits until backend `p0` waits for a lock in the handoff's DISCARD ALL, then cancels it:
/// the reset fails with 57014. Watched from a session of its own on `db` (one inside a
/// transaction, as the locker's, sees `pg_stat_activity` as it was at its first look).
pub(super) async fn cancel_the_waiting_reset(db: &str, p0: i32) {
    end_the_waiting_reset(db, p0, "pg_cancel_backend").await;
}

/// As [`cancel_the_waiting_reset`], ending the wait with `how` (`pg_cancel_backend`, or
/// `pg_terminate_backend`: a FATAL).
async fn end_the_waiting_reset(db: &str, p0: i32, how: &str) {
    let watch = admin(db).await;
    let waits = eventually(std::time::Duration::from_secs(5), || {
        let watch = &watch;
        async move {
            let row = watch
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND wait_event_type = 'Lock' \
                     AND query = 'DISCARD ALL'",
                    &[&p0],
                )
                .await
                .expect("pg_stat_activity");
            row.get::<_, i64>(0) == 1
        }
    })
    .await;
    assert!(waits, "the reset on backend {p0} never waited for the lock");
    watch.execute(&format!("SELECT {how}($1)"), &[&p0]).await.expect("end the reset");
}

/// Unlocks a's temp table (the closed backend drops it as it exits) and checks that backend
/// `p0` is gone.
pub(super) async fn unlocked_and_closed(su: &Client, p0: i32) {
    su.batch_execute("ROLLBACK").await.expect("unlock");
    assert!(closed(su, p0).await, "the backend whose reset failed ({p0}) was not closed");
}

/// Whether backend `p0` leaves pg_stat_activity within 5 s (as `su` sees it).
pub(super) async fn closed(su: &Client, p0: i32) -> bool {
    eventually(std::time::Duration::from_secs(5), || async move {
        let n: i64 = su
            .query_one("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", &[&p0])
            .await
            .expect("pg_stat_activity")
            .get(0);
        n == 0
    })
    .await
}

/// A raw client of `tenant` through the proxy, and the cancel key pgtenant gave it.
async fn raw_with_key(h: &Harness, tenant: &str) -> (tokio::net::TcpStream, Vec<u8>) {
    let user = format!("app.{tenant}");
    let mut c = tokio::net::TcpStream::connect(h.addr).await.expect("connect");
    send(&mut c, &startup_packet(&[("user", &user)])).await;
    let (got, _) = read_ready(&mut c, 1, std::time::Duration::from_secs(5)).await;
    let key = messages(&got).into_iter().find(|(t, _)| *t == b'K').map(|(_, k)| k.to_vec());
    (c, key.expect("a cancel key"))
}

/// The server backend a raw client is on now.
pub(super) async fn raw_pid(c: &mut tokio::net::TcpStream) -> i32 {
    send(c, &query("SELECT pg_backend_pid()")).await;
    let (got, _) = read_ready(c, 1, std::time::Duration::from_secs(5)).await;
    let row = messages(&got).into_iter().find(|(t, _)| *t == b'D').map(|(_, body)| data_row(body));
    row.and_then(|r| r.first().and_then(|v| v.parse().ok()))
        .unwrap_or_else(|| panic!("no pid: {:?}", summary(&got)))
}

/// Tenant b's first write: a named and an unnamed statement through the extended protocol,
/// each up to its Sync, and a simple query, all INSERTs into its own `t`. The reset in front
/// of them fails; b gets exactly the replies PostgreSQL would give these messages on a fresh
/// session (nothing of the failed attempt, no error), each INSERT runs once, on another
/// backend, and the failed one is closed; b's cancel key reaches the new backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_reset_hands_the_next_clients_messages_to_another_connection() {
    let (a, b) = tenant_pair(Isolation::Schema, Access::Write, 1).await;
    let h = start_quick(vec![a.clone(), b.clone()]).await;
    let (p0, su) = a_leaves_a_locked_temp_table(&h, &a).await;

    let (mut cb, key) = raw_with_key(&h, &b.id).await;
    let table = format!("\"{}\".t", b.id);
    let insert = |id: u8| format!("INSERT INTO {table} VALUES ({id}, 'b')");
    send(
        &mut cb,
        &cat(&[
            parse("s1", &insert(1)),
            bind("", "s1"),
            execute(""),
            sync(),
            parse("", &insert(2)),
            bind("", ""),
            execute(""),
            sync(),
            query(&insert(3)),
        ]),
    )
    .await;
    cancel_the_waiting_reset(&a.database, p0).await;
    let (got, closed) = read_ready(&mut cb, 3, std::time::Duration::from_secs(10)).await;
    let ins = ["1", "2", "C(INSERT 0 1)", "Z(I)"];
    let want: Vec<&str> = [&ins[..], &ins[..], &["C(INSERT 0 1)", "Z(I)"][..]].concat();
    assert!(!closed, "b's session ended: {:?}", summary(&got));
    assert_eq!(summary(&got), want, "b sees only its own replies");
    assert_eq!(ids(&su, &table).await, "1,2,3", "each INSERT ran once");
    // The named statement is b's, once: bound again it runs again.
    send(&mut cb, &cat(&[bind("", "s1"), execute(""), sync()])).await;
    let (got, _) = read_ready(&mut cb, 1, std::time::Duration::from_secs(5)).await;
    assert_eq!(summary(&got), ["2", "C(INSERT 0 1)", "Z(I)"]);
    let p1 = raw_pid(&mut cb).await;
    assert_ne!(p1, p0, "b's messages ran on another backend");
    unlocked_and_closed(&su, p0).await;
    assert_eq!(ids(&su, &table).await, "1,1,2,3");
    // b's cancel key points at the backend it is on now.
    send(&mut cb, &query("SELECT pg_sleep(30)")).await;
    let running = eventually(std::time::Duration::from_secs(5), || {
        let su = &su;
        async move {
            let sql =
                "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND query = 'SELECT pg_sleep(30)'";
            su.query_one(sql, &[&p1]).await.expect("activity").get::<_, i64>(0) == 1
        }
    })
    .await;
    assert!(running, "b's pg_sleep runs on {p1}");
    let mut cancel = 16i32.to_be_bytes().to_vec();
    cancel.extend_from_slice(&80_877_102i32.to_be_bytes());
    cancel.extend_from_slice(&key);
    raw_exchange(h.addr, &cancel, std::time::Duration::from_secs(5)).await;
    let (got, _) = read_ready(&mut cb, 1, std::time::Duration::from_secs(10)).await;
    assert_eq!(sqlstate(&got).as_deref(), Some("57014"), "b's cancel: {:?}", summary(&got));
    let g = h.proxy.metrics.global();
    assert_eq!((g.handoff_failures(), g.handoff_retries()), (1, 1), "the failure and the retry counted");
    // b's named Parse and its two Binds counted once (the skipped attempt's not at all), as
    // the one Parse of s1 a server ran.
    let s = pgtenant::metrics::exposition::TenantSnapshot::of(&h.proxy.metrics.tenant(&b.id));
    assert_eq!((s.client_parses, s.binds, s.server_parses), (1, 2, 1), "named-statement messages");
}

/// b's messages arrive in several writes while the reset waits: a Parse and a Bind, then the
/// Execute and its Sync, then (held behind that Sync) a simple query. All that went behind
/// the reset is sent again, once, and the held query after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_sends_again_exactly_what_went_behind_the_reset_in_several_writes() {
    let (a, b) = tenant_pair(Isolation::Schema, Access::Write, 1).await;
    let h = start_quick(vec![a.clone(), b.clone()]).await;
    let (p0, su) = a_leaves_a_locked_temp_table(&h, &a).await;

    let mut cb = raw_proxy(&h, &b.id).await;
    let table = format!("\"{}\".t", b.id);
    send(&mut cb, &cat(&[parse("", &format!("INSERT INTO {table} VALUES (1, 'b')")), bind("", "")])).await;
    // The reset waits with the Parse and Bind behind it; then come the Execute and Sync.
    let waits = eventually(std::time::Duration::from_secs(5), || {
        let su = &su;
        async move {
            let n: i64 = su
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND wait_event_type = 'Lock'",
                    &[&p0],
                )
                .await
                .expect("pg_stat_activity")
                .get(0);
            n == 1
        }
    })
    .await;
    assert!(waits, "the reset never waited");
    send(&mut cb, &cat(&[execute(""), sync()])).await;
    send(&mut cb, &query(&format!("INSERT INTO {table} VALUES (2, 'b') RETURNING id"))).await;
    cancel_the_waiting_reset(&a.database, p0).await;
    let (got, closed) = read_ready(&mut cb, 2, std::time::Duration::from_secs(10)).await;
    assert!(!closed, "b's session ended: {:?}", summary(&got));
    assert_eq!(
        summary(&got),
        ["1", "2", "C(INSERT 0 1)", "Z(I)", "T", "D(2)", "C(INSERT 0 1)", "Z(I)"],
        "b sees only its own replies"
    );
    assert_eq!(ids(&su, &table).await, "1,2", "each INSERT ran once");
    assert_ne!(raw_pid(&mut cb).await, p0);
    unlocked_and_closed(&su, p0).await;
}

/// A setup that fails on every connection (b's tracked text search configuration was
/// dropped): the handoff is tried on three connections (the reset's, then two new ones),
/// then b gets the server's error and its session ends, with nothing of its pipeline run;
/// tenant a is still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handoff_that_fails_on_every_connection_ends_the_session_after_three() {
    let (h, su, ca, b, mut rb) = held_behind_a_setup(true).await;
    send(&mut rb, &held_pipeline()).await;
    let (got, closed) = read_eof(&mut rb, std::time::Duration::from_secs(8)).await;
    assert!(closed, "b is closed: {:?}", summary(&got));
    let s = summary(&got);
    assert!(s.first().is_some_and(|e| e.starts_with("E(22023")), "b is told the setup failed: {s:?}");
    assert_eq!(s.len(), 1, "nothing after the error: {s:?}");
    assert_eq!(ids(&su, "public.t").await, "", "b's pipeline ran on the reset search_path");
    assert_eq!(ids(&su, &format!("\"{}\".t", b.id)).await, "", "b's pipeline ran although its setup failed");
    let g = h.proxy.metrics.global();
    assert_eq!((g.handoff_failures(), g.handoff_retries()), (3, 2), "three attempts, two retries");
    let v: i32 = ca.query_one("SELECT 6", &[]).await.expect("a still served").get(0);
    assert_eq!(v, 6);
}

/// A COPY FROM STDIN whose data b sends at once, without waiting for CopyInResponse, behind
/// the failed reset (no Sync: the server skipped all of it), and a query reading it back:
/// sent again on the new connection, the copy loads its row once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_sent_behind_a_failed_reset_loads_its_rows_once_elsewhere() {
    let (a, b) = tenant_pair(Isolation::Schema, Access::Write, 1).await;
    let h = start_quick(vec![a.clone(), b.clone()]).await;
    let (p0, su) = a_leaves_a_locked_temp_table(&h, &a).await;

    let mut cb = raw_proxy(&h, &b.id).await;
    let table = format!("\"{}\".t", b.id);
    send(
        &mut cb,
        &cat(&[
            query(&format!("COPY {table} FROM STDIN")),
            copy_data("7\tb\n"),
            copy_done(),
            query(&format!("SELECT string_agg(id::text, ',') FROM {table}")),
        ]),
    )
    .await;
    cancel_the_waiting_reset(&a.database, p0).await;
    let (got, closed) = read_ready(&mut cb, 2, std::time::Duration::from_secs(10)).await;
    assert!(!closed, "b's session ended: {:?}", summary(&got));
    assert_eq!(summary(&got), ["G", "C(COPY 1)", "Z(I)", "T", "D(7)", "C(SELECT 1)", "Z(I)"]);
    assert_eq!(ids(&su, &table).await, "7", "the copy loaded its row once");
    unlocked_and_closed(&su, p0).await;
}

/// What a retry cannot keep waits for the reset's verdict: a message larger than the client
/// buffer (256 KiB) is not sent behind the reset (a Flush asks for its verdict), so it runs
/// once, on another connection, when the reset fails (see `attacks28` for a tenant that
/// fails it alone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_message_behind_a_failed_reset_waits_for_its_verdict_and_runs_once() {
    let (a, b) = tenant_pair(Isolation::Schema, Access::Write, 1).await;
    let h = start_quick(vec![a.clone(), b.clone()]).await;
    let (p0, su) = a_leaves_a_locked_temp_table(&h, &a).await;

    let mut cb = raw_proxy(&h, &b.id).await;
    let table = format!("\"{}\".t", b.id);
    let padding = "x".repeat(300 * 1024);
    send(&mut cb, &query(&format!("INSERT INTO {table} SELECT 1, '{padding}'"))).await;
    cancel_the_waiting_reset(&a.database, p0).await;
    let (got, closed) = read_ready(&mut cb, 1, std::time::Duration::from_secs(10)).await;
    assert!(!closed, "b's session ended: {:?}", summary(&got));
    assert_eq!(summary(&got), ["C(INSERT 0 1)", "Z(I)"]);
    let g = h.proxy.metrics.global();
    assert_eq!((g.handoff_failures(), g.handoff_retries()), (1, 1), "the reset failed once and was retried");
    unlocked_and_closed(&su, p0).await;
    assert_eq!(ids(&su, &table).await, "1", "the INSERT ran once");
}

/// The previous tenant's backend is terminated while its reset waits (FATAL 57P01 in place of
/// DISCARD ALL's reply): the next client's query goes to another connection and runs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_whose_backend_is_terminated_goes_to_another_connection() {
    let (a, b) = tenant_pair(Isolation::Schema, Access::Write, 1).await;
    let h = start_quick(vec![a.clone(), b.clone()]).await;
    let (p0, su) = a_leaves_a_locked_temp_table(&h, &a).await;

    let mut cb = raw_proxy(&h, &b.id).await;
    let table = format!("\"{}\".t", b.id);
    send(&mut cb, &query(&format!("INSERT INTO {table} VALUES (5, 'b')"))).await;
    end_the_waiting_reset(&a.database, p0, "pg_terminate_backend").await;
    let (got, closed) = read_ready(&mut cb, 1, std::time::Duration::from_secs(10)).await;
    assert!(!closed, "b's session ended: {:?}", summary(&got));
    assert_eq!(summary(&got), ["C(INSERT 0 1)", "Z(I)"], "b sees only its own reply");
    assert_eq!(ids(&su, &table).await, "5", "the INSERT ran once");
    assert_ne!(raw_pid(&mut cb).await, p0);
    unlocked_and_closed(&su, p0).await;
}
