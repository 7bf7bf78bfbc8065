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

/// A forwarder to the cluster that holds back the next connection opened through it (once
/// `delay_next` is set) for `DELAY` before it connects: pgtenant's cancel of a late reset
/// then reaches the server only after the handoff went on without it.
struct SlowNext {
    port: u16,
    delay_next: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

const DELAY: std::time::Duration = std::time::Duration::from_millis(2500);

impl SlowNext {
    async fn start() -> SlowNext {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = l.local_addr().expect("addr").port();
        let delay_next = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = delay_next.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = l.accept().await {
                let slow = flag.swap(false, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    if slow {
                        tokio::time::sleep(DELAY).await;
                    }
                    let target = ("127.0.0.1", cluster().port);
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else { return };
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                });
            }
        });
        SlowNext { port, delay_next }
    }
}

/// The reset outlives its bound, pgtenant sends its cancel, and the reset then ends by itself
/// (the previous tenant's lock released) before the cancel reaches the server: b's INSERT
/// runs. The cancel, still on its way, must not land on whatever the backend runs next for
/// another client: b's second client's `pg_sleep` must finish (here the cancel is held back
/// for a while on its way; on a real network it is one connection setup behind).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_resets_cancel_never_reaches_the_next_client_of_its_connection() {
    let (a, b) = tenant_pair(Isolation::Schema, Access::Write, 1).await;
    let slow = SlowNext::start().await;
    let mut cfg = config(vec![a.clone(), b.clone()]);
    cfg.upstreams[0].port = slow.port;
    cfg.pool.checkout_timeout = 10.0;
    let h = start(cfg).await;
    let (p0, su) = a_leaves_a_locked_temp_table(&h, &a).await;

    let mut cb = raw_proxy(&h, &b.id).await;
    let table = format!("\"{}\".t", b.id);
    send(&mut cb, &query(&format!("INSERT INTO {table} VALUES (12, 'b')"))).await;
    reset_waits(&su, p0).await;
    slow.delay_next.store(true, std::sync::atomic::Ordering::SeqCst);
    // Past the reset's bound (5 s): the cancel is on its way, held back by the forwarder.
    tokio::time::sleep(std::time::Duration::from_millis(5600)).await;
    su.batch_execute("ROLLBACK").await.expect("unlock");
    let (got, closed) = read_ready(&mut cb, 1, std::time::Duration::from_secs(5)).await;
    assert!(!closed, "b's session ended: {:?}", summary(&got));
    assert_eq!(summary(&got), ["C(INSERT 0 1)", "Z(I)"], "b's INSERT ran");
    // b's next client gets a connection and runs a statement that outlasts the cancel's way.
    let b2 = h.client(&b.id).await;
    let slept = b2.simple_query("SELECT pg_sleep(3)").await;
    assert!(slept.is_ok(), "b's second client's statement was cancelled: {:?}", slept.err());
    assert_eq!(ids(&su, &table).await, "12", "the INSERT ran once");
}

/// Handoffs that fail on every connection, again and again (b's tracked setting names a
/// text search configuration that was dropped): each of b's sessions ends after three
/// attempts, and nothing is left behind: no connection checked out, no more backends than
/// the pool's one, and tenant a (whose cap and pool b's attempts used) is still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handoffs_failing_again_and_again_leave_no_connection_behind() {
    let (h, su, ca, b, mut rb) = super::setup::held_behind_a_setup(true).await;
    send(&mut rb, &query("SELECT 1")).await;
    let (got, closed) = read_eof(&mut rb, std::time::Duration::from_secs(8)).await;
    assert!(closed && sqlstate(&got).as_deref() == Some("22023"), "b's first session: {:?}", summary(&got));
    for round in 0..3 {
        // A fresh session of b whose login names the dropped configuration: its setup fails
        // on every connection too.
        let user = format!("app.{}", b.id);
        let params = [("user", user.as_str()), ("options", "-c default_text_search_config=public.myconf")];
        let mut rb = login(tokio::net::TcpStream::connect(h.addr).await.expect("connect"), &params).await;
        send(&mut rb, &query("SELECT 1")).await;
        let (got, closed) = read_eof(&mut rb, std::time::Duration::from_secs(8)).await;
        assert!(closed && sqlstate(&got).as_deref() == Some("22023"), "round {round}: {:?}", summary(&got));
        let v: i32 = ca.query_one("SELECT 6", &[]).await.expect("a still served").get(0);
        assert_eq!(v, 6);
    }
    nothing_checked_out(&h).await;
    let role: String = ca.query_one("SELECT current_user::text", &[]).await.expect("role").get(0);
    let n: i64 = su
        .query_one("SELECT count(*) FROM pg_stat_activity WHERE usename = $1", &[&role])
        .await
        .expect("backends")
        .get(0);
    assert!(n <= 1, "{n} backends of the pool's role, for a pool of one");
    let g = h.proxy.metrics.global();
    let (failed, retried) = (g.handoff_failures(), g.handoff_retries());
    // Each session ends once, at its last failure; a first handoff without a reset (a new
    // connection) is not retried, one with a reset twice at most.
    assert!(failed == retried + 4 && retried <= 8, "{failed} failures, {retried} retries for four sessions");
}

/// b prepared a statement on an earlier connection; its first write after a's turn binds it
/// (pgtenant prepares it again behind the reset), closes it and prepares the name anew, all
/// up to one Sync: retried, each runs once, in order, and the name then means the new text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepared_statement_used_closed_and_made_again_behind_a_failed_reset() {
    let (a, b) = tenant_pair(Isolation::Schema, Access::Write, 1).await;
    let h = start_quick(vec![a.clone(), b.clone()]).await;
    let mut cb = raw_proxy(&h, &b.id).await;
    let table = format!("\"{}\".t", b.id);
    send(&mut cb, &cat(&[parse("s1", &format!("INSERT INTO {table} VALUES (14, 'b')")), sync()])).await;
    let (got, _) = read_ready(&mut cb, 1, std::time::Duration::from_secs(5)).await;
    assert_eq!(summary(&got), ["1", "Z(I)"]);
    let (p0, su) = a_leaves_a_locked_temp_table(&h, &a).await;

    let again = format!("INSERT INTO {table} VALUES (15, 'b')");
    send(
        &mut cb,
        &cat(&[
            bind("", "s1"),
            execute(""),
            close(b'S', "s1"),
            parse("s1", &again),
            bind("", "s1"),
            execute(""),
            sync(),
        ]),
    )
    .await;
    cancel_the_waiting_reset(&a.database, p0).await;
    let (got, closed) = read_ready(&mut cb, 1, std::time::Duration::from_secs(10)).await;
    assert!(!closed, "b's session ended: {:?}", summary(&got));
    assert_eq!(summary(&got), ["2", "C(INSERT 0 1)", "3", "1", "2", "C(INSERT 0 1)", "Z(I)"]);
    assert_eq!(ids(&su, &table).await, "14,15", "each ran once");
    send(&mut cb, &cat(&[bind("", "s1"), execute(""), sync()])).await;
    let (got, _) = read_ready(&mut cb, 1, std::time::Duration::from_secs(5)).await;
    assert_eq!(summary(&got), ["2", "C(INSERT 0 1)", "Z(I)"]);
    assert_eq!(ids(&su, &table).await, "14,15,15", "s1 is the new text");
    unlocked_and_closed(&su, p0).await;
}
