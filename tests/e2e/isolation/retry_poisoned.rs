//! A tenant that leaves failing resets on several idle connections of a shared pool cannot
//! spend another tenant's handoff attempts on them: a retry (see `retry`) takes only a
//! connection that needs no cross-tenant reset (its tenant's own, or one with no session),
//! else opens one in the place its failed connection kept, without queueing behind the
//! pool's waiters, and the pool stays within its size.

use std::time::Duration;

use pgtenant::model::Isolation;

use super::retry::{cancel_the_waiting_reset, closed, raw_pid};
use super::*;
use crate::support::raw::*;
use crate::support::*;

/// Leaves a temporary table (spelt so that pgtenant cannot read it, as in
/// `retry::a_leaves_a_locked_temp_table`) on the server connection client `c` holds, inside
/// the transaction it has open, and returns the backend's pid.
async fn leave_temp_table(c: &Client) -> i32 {
    let p = pid(c).await;
    c.batch_execute("DO $$BEGIN EXECUTE 'CREATE TEM' || 'P TABLE held (x int)'; END$$")
        .await
        .expect("a temp table");
    p
}

/// A superuser session on `db` that locks every temporary table named `held` there in an
/// open transaction: a DISCARD ALL on their backends then waits for it.
async fn lock_held_tables(db: &str) -> Client {
    let su = admin(db).await;
    super::retry::lock_the_held_temp_table(&su).await;
    su
}

/// Backends of `role` on the cluster now.
async fn backends(su: &Client, role: &str) -> i64 {
    let sql = "SELECT count(*) FROM pg_stat_activity WHERE usename = $1";
    su.query_one(sql, &[&role]).await.expect("pg_stat_activity").get(0)
}

/// Cancels, for `for_`, every DISCARD ALL of `pids` that waits for a lock (as a statement
/// timeout would end it): the backends it cancelled. (A backend whose connection was closed
/// still waits for the lock as it exits, under the same query: cancelled again, counted once.)
async fn cancel_waiting_resets(
    db: String,
    pids: Vec<i32>,
    for_: Duration,
) -> std::collections::BTreeSet<i32> {
    let watch = admin(&db).await;
    let mut cancelled = std::collections::BTreeSet::new();
    let end = tokio::time::Instant::now() + for_;
    while tokio::time::Instant::now() < end {
        // The cancel only on the rows found (OFFSET 0 keeps the planner from calling it
        // on others, this session's own among them).
        let sql = "SELECT pid, pg_cancel_backend(pid) FROM (SELECT pid FROM pg_stat_activity \
                   WHERE pid = ANY($1) AND wait_event_type = 'Lock' AND query = 'DISCARD ALL' OFFSET 0) w";
        for row in watch.query(sql, &[&pids]).await.expect("cancel") {
            if row.get::<_, bool>(1) {
                cancelled.insert(row.get::<_, i32>(0));
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cancelled
}

/// Three of a's clients each leave a locked temporary table on one of the three connections
/// of a shared pool of three: every idle connection's reset to another tenant would wait,
/// and is cancelled (57014). b's query lands on one of them (a first checkout prefers an
/// idle connection); its retry takes none of the two others but opens a new one, in the
/// failed one's place: b gets its rows after one failure and one retry, and the pool's
/// backends stay three.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_skips_idle_connections_left_with_failing_resets() {
    let (a, b) = tenant_pair(Isolation::Schema, Access::Write, 3).await;
    let h = start_quick(vec![a.clone(), b.clone()]).await;
    let su0 = admin(&a.database).await;
    let table = format!("\"{}\".t", b.id);
    su0.batch_execute(&format!("INSERT INTO {table} VALUES (1, 'b'), (2, 'b')")).await.expect("b's rows");
    // Each of a's clients holds its own connection (a transaction open), then lets it go.
    let mut ca = Vec::new();
    for _ in 0..3 {
        let c = h.client(&a.id).await;
        c.batch_execute("BEGIN").await.expect("begin");
        ca.push(c);
    }
    let mut pids = Vec::new();
    for c in &ca {
        pids.push(leave_temp_table(c).await);
        c.batch_execute("COMMIT").await.expect("commit");
    }
    pids.sort_unstable();
    pids.dedup();
    assert_eq!(pids.len(), 3, "three connections: {pids:?}");
    let su = lock_held_tables(&a.database).await;
    let canceller =
        tokio::spawn(cancel_waiting_resets(a.database.clone(), pids.clone(), Duration::from_secs(4)));

    let mut cb = raw_proxy(&h, &b.id).await;
    send(&mut cb, &query(&format!("SELECT id FROM {table} ORDER BY id"))).await;
    let (got, ended) = read_ready(&mut cb, 1, Duration::from_secs(10)).await;
    assert!(!ended, "b's session ended: {:?}", summary(&got));
    assert_eq!(summary(&got), ["T", "D(1)", "D(2)", "C(SELECT 2)", "Z(I)"], "b's rows, nothing else");
    let on = raw_pid(&mut cb).await;
    assert!(!pids.contains(&on), "b runs on a new backend, not on a's {pids:?}");
    let cancelled = canceller.await.expect("canceller");
    assert_eq!(cancelled.len(), 1, "one reset failed, the first attempt's: {cancelled:?}");
    let g = h.proxy.metrics.global();
    assert_eq!((g.handoff_failures(), g.handoff_retries()), (1, 1), "one failure, one retry");

    // The failed backend exits once its temp table is unlocked; the pool keeps its size.
    su.batch_execute("ROLLBACK").await.expect("unlock");
    let left = eventually(Duration::from_secs(5), || {
        let (su, pids) = (&su, &pids);
        async move {
            let sql = "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1)";
            su.query_one(sql, &[pids]).await.expect("pg_stat_activity").get::<_, i64>(0) == 2
        }
    })
    .await;
    assert!(left, "the failed connection's backend was closed, a's two others kept");
    let n = backends(&su, &a.role).await;
    assert_eq!(n, 3, "{n} backends of the pool's role, for a pool of three");
    // a's clients are still served (on their own connections: no reset).
    for c in &ca {
        let v: i32 = c.query_one("SELECT 6", &[]).await.expect("a served").get(0);
        assert_eq!(v, 6);
    }
}

/// The pool at its size with no clean idle connection and a client queued: of a shared pool
/// of two, one connection is busy in a's open transaction and the other idle with a's locked
/// temporary table. b's query lands on the idle one, and another client of a queues behind
/// it. b's reset is cancelled: its retry opens a new connection in the failed one's place at
/// once (it never queues behind a's waiter, which would wait for the open transaction) and b
/// gets its rows while a's transaction is still open; a's waiter is served once it ends; and
/// the pool never holds more than two backends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_in_a_full_pool_takes_its_failed_connections_place() {
    let (a, b) = tenant_pair(Isolation::Schema, Access::Write, 2).await;
    let mut cfg = config(vec![a.clone(), b.clone()]);
    cfg.pool.checkout_timeout = 6.0;
    let h = start(cfg).await;
    let su0 = admin(&a.database).await;
    let table = format!("\"{}\".t", b.id);
    su0.batch_execute(&format!("INSERT INTO {table} VALUES (3, 'b')")).await.expect("b's row");
    let holder = h.client(&a.id).await;
    holder.batch_execute("BEGIN").await.expect("begin");
    let busy = pid(&holder).await;
    let poisoner = h.client(&a.id).await;
    poisoner.batch_execute("BEGIN").await.expect("begin");
    let p0 = leave_temp_table(&poisoner).await;
    poisoner.batch_execute("COMMIT").await.expect("commit");
    assert_ne!(p0, busy);
    let su = lock_held_tables(&a.database).await;

    let mut cb = raw_proxy(&h, &b.id).await;
    send(&mut cb, &query(&format!("SELECT id FROM {table}"))).await;
    // b's reset waits on p0; a's next client queues (both connections taken).
    let waits = eventually(Duration::from_secs(5), || {
        let su = &su0;
        async move {
            let sql = "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND wait_event_type = 'Lock'";
            su.query_one(sql, &[&p0]).await.expect("pg_stat_activity").get::<_, i64>(0) == 1
        }
    })
    .await;
    assert!(waits, "b's reset never waited");
    let queued = h.client(&a.id).await;
    let waiter =
        tokio::spawn(async move { queued.query_one("SELECT 7", &[]).await.map(|r| r.get::<_, i32>(0)) });
    let in_queue = eventually(Duration::from_secs(5), || async {
        h.proxy
            .pools
            .pools()
            .iter()
            .any(|p| p.others_waiting(&pgtenant::model::TenantId::parse(&b.id).expect("id")))
    })
    .await;
    assert!(in_queue, "a's third client never queued");

    cancel_the_waiting_reset(&a.database, p0).await;
    // Within the checkout timeout (6 s): a retry queued behind a's waiter would wait for a's
    // COMMIT, which comes only after this, and fail with the timeout instead.
    let (got, ended) = read_ready(&mut cb, 1, Duration::from_secs(8)).await;
    assert!(!ended, "b's session ended: {:?}", summary(&got));
    assert_eq!(summary(&got), ["T", "D(3)", "C(SELECT 1)", "Z(I)"], "b's row, while a's transaction is open");
    let on = raw_pid(&mut cb).await;
    assert!(on != p0 && on != busy, "b runs on a new backend");
    assert!(!waiter.is_finished(), "a's waiter was served before a's transaction ended");
    let n = backends(&su0, &a.role).await;
    assert!(n <= 3, "{n} backends: a's two and b's new one (the failed one exits once unlocked)");
    su.batch_execute("ROLLBACK").await.expect("unlock");
    assert!(closed(&su, p0).await, "the failed connection's backend ({p0}) was not closed");
    assert_eq!(backends(&su, &a.role).await, 2, "the pool's two backends");

    holder.batch_execute("COMMIT").await.expect("commit");
    let v = tokio::time::timeout(Duration::from_secs(5), waiter).await.expect("a's waiter served");
    assert_eq!(v.expect("task").expect("a's waiter's query"), 7);
    let g = h.proxy.metrics.global();
    assert_eq!((g.handoff_failures(), g.handoff_retries()), (1, 1), "one failure, one retry");
    assert!(backends(&su, &a.role).await <= 2, "the pool stays within its size");
}
