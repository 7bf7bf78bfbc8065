//! The cross-tenant reset when it fails. pgtenant sends the next tenant's first messages in
//! the same write as DISCARD ALL (an unsynced extended-protocol statement), so a failed reset
//! must make the server skip them, and pgtenant must hold whatever follows the client's first
//! Sync until the reset's reply is checked: nothing of the new tenant may run on the previous
//! tenant's session, and the connection is closed. The client's messages then go to another
//! connection and run there once (see `retry`).

use pgtenant::model::Isolation;

use super::*;
use crate::support::raw::*;
use crate::support::*;

/// Tenant a leaves a temporary table; a superuser locks it, so the DISCARD ALL of the
/// handoff to tenant b waits, and is then cancelled: the reset fails while tenant b's first
/// messages (an extended INSERT and its Sync) are already sent behind it and its next one (a
/// simple-query INSERT) is held. Neither may run on that backend: it is closed, and both run
/// once on another, b's client getting only their replies; b's next client is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_reset_runs_nothing_the_next_tenant_sent_behind_it() {
    let (a, b) = tenant_pair(Isolation::Schema, Access::Write, 1).await;
    let h = start_quick(vec![a.clone(), b.clone()]).await;
    let (p0, su) = super::retry::a_leaves_a_locked_temp_table(&h, &a).await;

    // Tenant b: an INSERT through the extended protocol up to a Sync, then a simple-query
    // INSERT, in one write. A failed reset makes the server skip up to that Sync; the second
    // INSERT would run after it unless pgtenant holds it.
    let mut cb = raw_proxy(&h, &b.id).await;
    let table = format!("\"{}\".t", b.id);
    let first = format!("INSERT INTO {table} VALUES (1, 'b')");
    let second = format!("INSERT INTO {table} VALUES (2, 'b')");
    send(&mut cb, &cat(&[parse("", &first), bind("", ""), execute(""), sync(), query(&second)])).await;
    // The handoff's DISCARD ALL waits for the lock on a's temp table: cancel it.
    let mut waited = false;
    for _ in 0..200 {
        let row = su
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND wait_event_type = 'Lock'",
                &[&p0],
            )
            .await
            .expect("pg_stat_activity");
        if row.get::<_, i64>(0) == 1 {
            waited = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(waited, "the reset on backend {p0} never waited for the lock");
    su.execute("SELECT pg_cancel_backend($1)", &[&p0]).await.expect("cancel");
    let (reply, closed) = read_ready(&mut cb, 2, std::time::Duration::from_secs(5)).await;
    assert!(!closed, "tenant b's session ended: {:?}", summary(&reply));
    let want = ["1", "2", "C(INSERT 0 1)", "Z(I)", "C(INSERT 0 1)", "Z(I)"];
    assert_eq!(summary(&reply), want, "tenant b's replies, and nothing of the failed reset");
    su.batch_execute("ROLLBACK").await.expect("unlock");

    let db = admin(&b.database).await;
    let rows: i64 =
        db.query_one(&format!("SELECT count(*) FROM \"{}\".t", b.id), &[]).await.expect("count").get(0);
    assert_eq!(rows, 2, "tenant b's INSERTs ran once each (on another connection)");
    let mut gone = false;
    for _ in 0..100 {
        let n: i64 = su
            .query_one("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", &[&p0])
            .await
            .expect("pg_stat_activity")
            .get(0);
        if n == 0 {
            gone = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(gone, "the backend whose reset failed ({p0}) was not closed");

    let next = h.client(&b.id).await;
    let r = rows_of(&next, "SELECT count(*) FROM items").await;
    assert_eq!(r, vec![vec!["3".to_owned()]], "tenant b's next client");
    let p1 = pid(&next).await;
    assert_ne!(p1, p0, "a new server connection");
}

async fn rows_of(c: &Client, sql: &str) -> Vec<Vec<String>> {
    rows(c, sql).await.unwrap_or_else(|e| panic!("{sql}: {}", why(&e)))
}

/// Tenant a alone can stall the handoff's DISCARD ALL: a temporary child of a table it owns
/// (created inside a DO block, so pgtenant does not pin it) is dropped by DISCARD
/// TEMP, which needs a lock on the parent, and a second client of a holds that lock in an
/// open transaction. The guard's `lock_timeout = 0` does not bound the wait (RESET ALL, part
/// of DISCARD ALL, restores the default before DISCARD TEMP), and no fair-share timeout is
/// set by default. Tenant b's first messages must not wait for ever: past the reset's bound
/// pgtenant cancels the reset, closes the connection and sends them on another one, where
/// they run once; nothing of them runs on the stalled backend, even once the lock is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_previous_tenant_cannot_stall_the_reset_for_ever() {
    let (a, b) = tenant_pair(Isolation::Schema, Access::Write, 2).await;
    let h = start_quick(vec![a.clone(), b.clone()]).await;
    let su = admin(&a.database).await;
    let role = a.role.clone();
    let parent = format!("\"{}\".par", a.id);
    su.batch_execute(&format!("CREATE TABLE {parent} (x int); ALTER TABLE {parent} OWNER TO {role}"))
        .await
        .expect("tenant a's table");
    // Tenant a's locker holds one server connection in a transaction …
    let locker = h.client(&a.id).await;
    locker.batch_execute("BEGIN").await.expect("begin");
    let p_locker = pid(&locker).await;
    // … so its other client gets the second, and leaves a temporary child on it.
    let ca = h.client(&a.id).await;
    ca.batch_execute(&format!(
        "DO $$BEGIN EXECUTE 'CREATE TEM' || 'P TABLE kid () INHERITS ({parent})'; END$$"
    ))
    .await
    .expect("tenant a's temporary child");
    let p0 = pid(&ca).await;
    assert_ne!(p0, p_locker, "two server connections");
    locker.batch_execute(&format!("LOCK TABLE {parent} IN ACCESS EXCLUSIVE MODE")).await.expect("lock");

    let mut cb = raw_proxy(&h, &b.id).await;
    let table = format!("\"{}\".t", b.id);
    let first = format!("INSERT INTO {table} VALUES (1, 'b')");
    let second = format!("INSERT INTO {table} VALUES (2, 'b')");
    send(&mut cb, &cat(&[parse("", &first), bind("", ""), execute(""), sync(), query(&second)])).await;
    let (reply, closed) = read_ready(&mut cb, 2, std::time::Duration::from_secs(12)).await;
    let want = ["1", "2", "C(INSERT 0 1)", "Z(I)", "C(INSERT 0 1)", "Z(I)"];
    assert!(
        !closed && summary(&reply) == want,
        "tenant b's first messages waited for tenant a's lock without end, or failed: {:?}",
        summary(&reply)
    );
    assert_eq!(h.proxy.metrics.global().handoff_retries(), 1, "handed to another connection");
    locker.batch_execute("COMMIT").await.expect("unlock");
    // The stalled backend exits once the lock is gone (dropping a's temporary child).
    assert!(super::retry::closed(&su, p0).await, "the stalled backend ({p0}) was not closed");
    let db = admin(&b.database).await;
    let rows: i64 = db.query_one(&format!("SELECT count(*) FROM {table}"), &[]).await.expect("count").get(0);
    assert_eq!(rows, 2, "tenant b's INSERTs ran once each");

    let next = h.client(&b.id).await;
    let r = rows_of(&next, "SELECT count(*) FROM items").await;
    assert_eq!(r, vec![vec!["3".to_owned()]], "tenant b's next client");
}

/// After a handoff the unnamed statement and portal are gone, as on a fresh PostgreSQL
/// session: tenant b's first messages, a Bind of the unnamed statement without a Parse (the
/// reset's own unnamed statement is closed, and a's is gone), get 26000, not a's query; an
/// Execute of the unnamed portal gets 34000. A first message that is a lone Sync is answered
/// with one ReadyForQuery, and what follows it runs once the reset is confirmed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_unnamed_statement_does_not_pass_to_the_next_tenant() {
    let (a, b) = tenant_pair(Isolation::Schema, Access::Read, 1).await;
    let h = start_quick(vec![a.clone(), b.clone()]).await;
    let ten = std::time::Duration::from_secs(10);
    let mut ca = raw_proxy(&h, &a.id).await;
    send(&mut ca, &cat(&[parse("", "SELECT 'a-secret'"), bind("", ""), sync()])).await;
    let (got, _) = read_ready(&mut ca, 1, ten).await;
    assert_eq!(sqlstate(&got), None, "tenant a: {:?}", summary(&got));

    let mut cb = raw_proxy(&h, &b.id).await;
    send(&mut cb, &cat(&[bind("", ""), execute(""), sync()])).await;
    let (got, _) = read_ready(&mut cb, 1, ten).await;
    assert_eq!(
        sqlstate(&got).as_deref(),
        Some("26000"),
        "Bind of the unnamed statement: {:?}",
        summary(&got)
    );
    assert!(!got.windows(8).any(|w| w == b"a-secret"), "tenant a's statement ran for b: {:?}", summary(&got));
    send(&mut cb, &cat(&[execute(""), sync()])).await;
    let (got, _) = read_ready(&mut cb, 1, ten).await;
    assert_eq!(
        sqlstate(&got).as_deref(),
        Some("34000"),
        "Execute of the unnamed portal: {:?}",
        summary(&got)
    );

    // Back to a (a reset), then a second client of b whose first message is a lone Sync.
    send(&mut ca, &query("SELECT 1")).await;
    let (got, _) = read_ready(&mut ca, 1, ten).await;
    assert_eq!(sqlstate(&got), None, "tenant a: {:?}", summary(&got));
    let mut cb2 = raw_proxy(&h, &b.id).await;
    send(&mut cb2, &cat(&[sync(), query("SELECT count(*) FROM items WHERE owner = current_schema()")])).await;
    let (got, closed) = read_ready(&mut cb2, 2, ten).await;
    assert!(!closed && ready_count(&got) == 2, "a Sync first: {:?}", summary(&got));
    let rows: Vec<Vec<String>> =
        messages(&got).iter().filter(|(t, _)| *t == b'D').map(|(_, body)| data_row(body)).collect();
    assert_eq!(rows, vec![vec!["3".to_owned()]], "tenant b's rows after a Sync first: {:?}", summary(&got));
}
