//! A connection pgtenant lost track of (a COPY failing behind a Sync) stays with its client
//! until the resync marker's reply: the marker waits while the client may have a COPY open.
//! A client must not keep that wait going while it is idle, holding the pool's connection
//! from another tenant.

use std::time::Duration;

use pgtenant::model::Isolation;

use super::*;
use crate::support::raw::*;
use crate::support::*;

/// Tenant A loses pgtenant's track of the shared connection (a COPY failing behind a Sync)
/// and, in the same write, runs an ordinary extended-protocol query (Parse, Bind, Execute,
/// Sync, as every driver does), all of which is answered; then A sits idle between
/// transactions. Tenant B, on the same pool of one, must get the connection: A's Execute
/// ran a SELECT and ended with its ReadyForQuery, so no COPY is open for the marker to wait
/// for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_client_after_an_execute_does_not_hold_a_connection_pgtenant_lost_track_of() {
    let (a, b) = tenant_pair(Isolation::Schema, Access::Write, 1).await;
    let h = start_quick(vec![a.clone(), b.clone()]).await;
    let mut ca = raw_proxy(&h, &a.id).await;
    let uncertain = cat(&[
        query("COPY t FROM STDIN"),
        copy_data("oops\n"),
        sync(),
        copy_done(),
        parse("", "SELECT 'a-ext'::text"),
        bind("", ""),
        execute(""),
        sync(),
    ]);
    send(&mut ca, &uncertain).await;
    let (got, closed) = read_ready(&mut ca, 3, Duration::from_secs(3)).await;
    let got = summary(&got);
    assert!(!closed, "A's connection closed: {got:?}");
    assert_eq!(
        got,
        ["G", "E(22P02)", "Z(I)", "Z(I)", "1", "2", "D(a-ext)", "C(SELECT 1)", "Z(I)"],
        "A's own replies"
    );
    // A is idle now (between transactions, nothing owed). B asks for the pool's connection.
    let cb = h.client(&b.id).await;
    let r = tokio::time::timeout(Duration::from_secs(6), cb.query_one("SELECT 'b-own'::text", &[])).await;
    match r {
        Ok(Ok(row)) => assert_eq!(row.get::<_, String>(0), "b-own"),
        Ok(Err(e)) => panic!("B's query failed while A idles: {}", why(&e)),
        Err(_) => panic!("B's query got no answer in 6 s while A idles"),
    }
    // A is still in step.
    send(&mut ca, &query("SELECT 'a-again'::text")).await;
    let (got, closed) = read_ready(&mut ca, 1, Duration::from_secs(5)).await;
    let got = summary(&got);
    assert!(!closed, "A's connection closed: {got:?}");
    assert_eq!(got, ["T", "D(a-again)", "C(SELECT 1)", "Z(I)"]);
}

/// The other side of the rule above: a client that prepared a COPY FROM STDIN in an earlier
/// transaction executes it behind a COPY pgtenant lost track of, and sends the copy's data
/// only after a pause (long enough for a marker to go out): the marker must not land inside
/// that COPY (PostgreSQL would end it with 08P01 and FATAL).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_prepared_in_an_earlier_transaction_keeps_the_marker_out() {
    let (a, b) = tenant_pair(Isolation::Schema, Access::Write, 1).await;
    let h = start_quick(vec![a.clone(), b.clone()]).await;
    let mut ca = raw_proxy(&h, &a.id).await;
    send(&mut ca, &cat(&[parse("cp", "COPY items FROM STDIN"), sync()])).await;
    let (got, _) = read_ready(&mut ca, 1, Duration::from_secs(3)).await;
    assert_eq!(summary(&got), ["1", "Z(I)"]);
    // The COPY waits for a lock before its CopyInResponse: the marker has time to go out
    // ahead of it.
    let locker = admin(&a.database).await;
    let lock = format!("BEGIN; LOCK TABLE \"{}\".items IN ACCESS EXCLUSIVE MODE", a.id);
    locker.batch_execute(&lock).await.expect("lock");
    let uncertain = cat(&[
        query("COPY t FROM STDIN"),
        copy_data("x\n"),
        sync(),
        copy_data("1\n"),
        copy_done(),
        bind("", "cp"),
        execute(""),
        sync(),
    ]);
    send(&mut ca, &uncertain).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    locker.batch_execute("COMMIT").await.expect("unlock");
    let (mut got, closed) = read_quiet(&mut ca, Duration::from_millis(700)).await;
    assert!(!closed, "A's connection closed: {:?}", summary(&got));
    send(&mut ca, &cat(&[copy_data("mine\n"), copy_done(), sync()])).await;
    let (more, closed) = read_ready(&mut ca, 3 - ready_count(&got), Duration::from_secs(3)).await;
    got.extend_from_slice(&more);
    let got = summary(&got);
    assert!(!closed, "A's connection closed: {got:?}");
    assert_eq!(got, ["G", "E(22P02)", "Z(I)", "Z(I)", "2", "G", "C(COPY 1)", "Z(I)"]);
}
