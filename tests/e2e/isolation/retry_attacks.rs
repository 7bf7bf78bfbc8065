//! A hostile client against the handoff retry (see `retry`): what it sends behind a reset
//! that fails is shaped to make a retry run something twice, lose something, or hold a
//! connection: a Terminate right behind its query, a message cut into many small writes
//! while the reset waits, an extended batch ended by a Flush and no Sync. Each statement runs
//! once, the client gets only its own replies, and nothing stays checked out.

use pgtenant::model::Isolation;

use super::retry::{a_leaves_a_locked_temp_table, cancel_the_waiting_reset, raw_pid, unlocked_and_closed};
use super::setup::ids;
use super::*;
use crate::support::raw::*;
use crate::support::*;

/// Waits until backend `p0` waits for a lock (the handoff's DISCARD ALL, with what the
/// client sent so far behind it).
async fn reset_waits(su: &Client, p0: i32) {
    let waits = eventually(std::time::Duration::from_secs(5), || async move {
        let sql = "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND wait_event_type = 'Lock'";
        su.query_one(sql, &[&p0]).await.expect("pg_stat_activity").get::<_, i64>(0) == 1
    })
    .await;
    assert!(waits, "the reset on backend {p0} never waited");
}

/// Nothing of the proxy's stays checked out once the client is gone.
async fn nothing_checked_out(h: &Harness) {
    let idle =
        eventually(std::time::Duration::from_secs(5), || async { h.proxy.pools.checked_out(None) == 0 })
            .await;
    assert!(idle, "{} server connections still checked out", h.proxy.pools.checked_out(None));
}

/// A query and a Terminate in one write behind a reset that fails (the server skips the
/// Terminate too, waiting for a Sync): on the new connection the query runs once, its reply
/// reaches the client, and the session ends with nothing checked out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminate_behind_a_failed_reset_runs_the_query_once_and_ends() {
    let (a, b) = tenant_pair(Isolation::Schema, Access::Write, 1).await;
    let h = start_quick(vec![a.clone(), b.clone()]).await;
    let (p0, su) = a_leaves_a_locked_temp_table(&h, &a).await;

    let mut cb = raw_proxy(&h, &b.id).await;
    let table = format!("\"{}\".t", b.id);
    send(&mut cb, &cat(&[query(&format!("INSERT INTO {table} VALUES (8, 'b')")), terminate()])).await;
    cancel_the_waiting_reset(&a.database, p0).await;
    let (got, closed) = read_eof(&mut cb, std::time::Duration::from_secs(10)).await;
    assert!(closed, "b's session ends after its Terminate: {:?}", summary(&got));
    assert_eq!(summary(&got), ["C(INSERT 0 1)", "Z(I)"], "b's reply, nothing of the failed reset");
    assert_eq!(ids(&su, &table).await, "8", "the INSERT ran once");
    unlocked_and_closed(&su, p0).await;
    nothing_checked_out(&h).await;
    let g = h.proxy.metrics.global();
    assert_eq!((g.handoff_failures(), g.handoff_retries()), (1, 1));
}

/// b's COPY data arrives a few KiB at a time while the reset waits (streamed behind it as it
/// comes, its header first): the retry sends the whole message again, once, from its header,
/// and the row loads once, whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_data_cut_into_many_writes_behind_a_failed_reset_loads_once() {
    let (a, b) = tenant_pair(Isolation::Schema, Access::Write, 1).await;
    let h = start_quick(vec![a.clone(), b.clone()]).await;
    let (p0, su) = a_leaves_a_locked_temp_table(&h, &a).await;

    let mut cb = raw_proxy(&h, &b.id).await;
    let table = format!("\"{}\".t", b.id);
    let big = "y".repeat(100 * 1024);
    let copy = cat(&[query(&format!("COPY {table} FROM STDIN")), copy_data(&format!("9\t{big}\n"))]);
    let cut = copy.len() - 90 * 1024;
    send(&mut cb, &copy[..cut]).await;
    reset_waits(&su, p0).await;
    for chunk in copy[cut..].chunks(4096) {
        send(&mut cb, chunk).await;
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    send(&mut cb, &cat(&[copy_done(), query("SELECT 10")])).await;
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    su.execute("SELECT pg_cancel_backend($1)", &[&p0]).await.expect("cancel the reset");
    let (got, closed) = read_ready(&mut cb, 2, std::time::Duration::from_secs(10)).await;
    assert!(!closed, "b's session ended: {:?}", summary(&got));
    assert_eq!(
        summary(&got),
        ["G", "C(COPY 1)", "Z(I)", "T", "D(10)", "C(SELECT 1)", "Z(I)"],
        "b sees only its own replies"
    );
    assert_eq!(ids(&su, &table).await, "9", "the row loaded once");
    let n: i32 =
        su.query_one(&format!("SELECT length(owner)::int FROM {table}"), &[]).await.expect("length").get(0);
    assert_eq!(n as usize, big.len(), "the row loaded whole");
    assert_ne!(raw_pid(&mut cb).await, p0);
    unlocked_and_closed(&su, p0).await;
}

/// An extended batch ended by a Flush, no Sync (the server skips it all, waiting for one):
/// retried, the Flush brings b its replies without a ReadyForQuery; its Sync then ends it,
/// the INSERT run once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_without_sync_behind_a_failed_reset_runs_once() {
    let (a, b) = tenant_pair(Isolation::Schema, Access::Write, 1).await;
    let h = start_quick(vec![a.clone(), b.clone()]).await;
    let (p0, su) = a_leaves_a_locked_temp_table(&h, &a).await;

    let mut cb = raw_proxy(&h, &b.id).await;
    let table = format!("\"{}\".t", b.id);
    let insert = format!("INSERT INTO {table} VALUES (11, 'b')");
    send(&mut cb, &cat(&[parse("", &insert), bind("", ""), execute(""), flush()])).await;
    cancel_the_waiting_reset(&a.database, p0).await;
    let (got, closed) = read_quiet(&mut cb, std::time::Duration::from_millis(1500)).await;
    assert!(!closed, "b's session ended: {:?}", summary(&got));
    assert_eq!(summary(&got), ["1", "2", "C(INSERT 0 1)"], "the Flush's replies");
    send(&mut cb, &sync()).await;
    let (got, _) = read_ready(&mut cb, 1, std::time::Duration::from_secs(5)).await;
    assert_eq!(summary(&got), ["Z(I)"]);
    assert_eq!(ids(&su, &table).await, "11", "the INSERT ran once");
    unlocked_and_closed(&su, p0).await;
}
