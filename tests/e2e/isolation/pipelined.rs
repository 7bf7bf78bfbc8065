//! A client that always has a query in flight (a driver pipelining from several tasks, which
//! never lets its connection be idle between transactions) against everyone else waiting for
//! the same pool: once 50 ms passed since its checkout, its next transaction is held back
//! until the server is idle, the connection goes to the next waiter, and that transaction
//! waits its turn. A transaction is never split, and everything the client sent runs, in
//! order, as its own tenant.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgtenant::config::Config;
use pgtenant::model::Isolation;

use super::*;

/// Two loops on one client, each running `SELECT current_schema(), pg_sleep(0.004)` back to
/// back (one through a prepared statement, one as a simple query; both prepared when
/// `extended_only`), so the client always has one in flight, until `stop`. Returns the queries
/// that ran; each must have run as `schema`.
async fn keep_in_flight(c: Arc<Client>, schema: String, stop: Arc<AtomicBool>, extended_only: bool) -> usize {
    let done = Arc::new(AtomicUsize::new(0));
    let prepared = c.prepare("SELECT current_schema()::text, pg_sleep(0.004)::text").await.expect("prepare");
    let one_loop = |simple: bool| {
        let (c, schema, stop, done, prepared) =
            (c.clone(), schema.clone(), stop.clone(), done.clone(), prepared.clone());
        async move {
            while !stop.load(Ordering::SeqCst) {
                let got = if simple {
                    let got = rows(&c, "SELECT current_schema(), pg_sleep(0.004)")
                        .await
                        .unwrap_or_else(|e| panic!("simple: {}", why(&e)));
                    got[0][0].clone()
                } else {
                    let row =
                        c.query_one(&prepared, &[]).await.unwrap_or_else(|e| panic!("prepared: {}", why(&e)));
                    row.get::<_, String>(0)
                };
                assert_eq!(got, schema, "a query ran as another tenant (simple: {simple})");
                done.fetch_add(1, Ordering::SeqCst);
            }
        }
    };
    futures_util::future::join(one_loop(false), one_loop(!extended_only)).await;
    done.load(Ordering::SeqCst)
}

/// `waiter` runs ten queries while `busy` keeps one in flight over the pool's one connection;
/// returns the longest of the ten and what `busy` ran before and after them.
async fn wait_behind(
    busy: Client,
    busy_schema: String,
    waiter: &Client,
    waiter_schema: &str,
) -> (Duration, usize) {
    wait_behind_loops(busy, busy_schema, waiter, waiter_schema, false).await
}

/// [`wait_behind`], the busy client's loops both prepared when `extended_only` (see
/// [`keep_in_flight`]).
async fn wait_behind_loops(
    busy: Client,
    busy_schema: String,
    waiter: &Client,
    waiter_schema: &str,
    extended_only: bool,
) -> (Duration, usize) {
    let busy = Arc::new(busy);
    let stop = Arc::new(AtomicBool::new(false));
    let pipeline = tokio::spawn(keep_in_flight(busy.clone(), busy_schema, stop.clone(), extended_only));
    // Well past the 50 ms: the busy client has held the connection for a while.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut longest = Duration::ZERO;
    for i in 0..10 {
        let t = Instant::now();
        let got = tokio::time::timeout(Duration::from_secs(20), rows(waiter, "SELECT current_schema()"))
            .await
            .unwrap_or_else(|_| panic!("the waiter's query {i} never ran"))
            .unwrap_or_else(|e| panic!("the waiter's query {i}: {}", why(&e)));
        longest = longest.max(t.elapsed());
        assert_eq!(got, vec![vec![waiter_schema.to_owned()]], "the waiter's query {i} ran elsewhere");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The busy client gets the connection back and goes on.
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::SeqCst);
    let ran = tokio::time::timeout(Duration::from_secs(20), pipeline)
        .await
        .expect("the busy client finishes")
        .expect("the busy client's loops");
    (longest, ran)
}

fn shared_pool_of_one(tenants: Vec<pgtenant::config::TenantConfig>) -> Config {
    let mut cfg: Config = config(tenants);
    // A waiter that is never let in waits this long, then fails with 53300.
    cfg.pool.checkout_timeout = 15.0;
    cfg
}

/// Tenant b waits behind tenant a's client, which always has a query in flight over the
/// shared pool's one connection: before, b waited until a stopped (its 15 s checkout timeout
/// here, 53300); now each of b's queries runs within a's 50 ms and the one query a has in
/// flight, then a goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_with_a_query_always_in_flight_lets_the_other_tenant_in() {
    let (a, b) = tenant_pair(Isolation::Schema, Access::Write, 1).await;
    let h = start(shared_pool_of_one(vec![a.clone(), b.clone()])).await;
    let (ca, cb) = (h.client(&a.id).await, h.client(&b.id).await);
    assert_eq!(pid(&ca).await, pid(&cb).await, "the two tenants share one server connection");
    let resets = h.proxy.metrics.global().resets();
    let (longest, ran) = wait_behind(ca, a.id.to_string(), &cb, &b.id.to_string()).await;
    let resets = h.proxy.metrics.global().resets() - resets;
    eprintln!("b's longest wait {longest:?}; a ran {ran} queries; {resets} cross-tenant resets");
    // 50 ms, a's query in flight, the handoff; generous for a loaded machine, far below the
    // 15 s b waited before.
    assert!(longest < Duration::from_secs(3), "b waited {longest:?} behind a's pipeline");
    // Each of b's ten queries took the connection from a and gave it back.
    assert!(resets >= 10, "{resets} resets: the connection did not pass between the tenants");
    assert!(ran > 20, "a's pipeline went on ({ran} queries)");
}

/// The same between two clients of one tenant (a pool of its own): the other client is let in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_with_a_query_always_in_flight_lets_its_own_tenants_clients_in() {
    let (a, _b) = tenant_pair(Isolation::Schema, Access::Write, 1).await;
    let h = start(shared_pool_of_one(vec![a.clone()])).await;
    let (busy, other) = (h.client(&a.id).await, h.client(&a.id).await);
    let schema = a.id.to_string();
    let (longest, ran) = wait_behind(busy, schema.clone(), &other, &schema).await;
    eprintln!("the other client's longest wait {longest:?}; the busy one ran {ran} queries");
    assert!(longest < Duration::from_secs(3), "the other client waited {longest:?}");
    assert!(ran > 20, "the busy client went on ({ran} queries)");
}

/// A client that ran a COPY FROM STDIN through a prepared statement once (after which any of
/// its Executes may start one, as far as pgtenant can tell), then pipelines Executes only, is
/// still held back: others get in. (Held back only where no COPY could be open, it kept the
/// connection: b waited to its checkout timeout.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_copied_once_still_lets_the_other_tenant_in() {
    use futures_util::SinkExt;
    let (a, b) = tenant_pair(Isolation::Schema, Access::Write, 1).await;
    let h = start(shared_pool_of_one(vec![a.clone(), b.clone()])).await;
    let (ca, cb) = (h.client(&a.id).await, h.client(&b.id).await);
    ca.batch_execute("CREATE TABLE copied (n int)").await.expect("create");
    let sink = ca.copy_in("COPY copied FROM STDIN").await.expect("copy in");
    futures_util::pin_mut!(sink);
    sink.send(bytes::Bytes::from_static(b"1\n2\n")).await.expect("copy data");
    assert_eq!(sink.finish().await.expect("copy done"), 2);
    let (longest, ran) = wait_behind_loops(ca, a.id.to_string(), &cb, &b.id.to_string(), true).await;
    eprintln!("b's longest wait {longest:?}; a ran {ran} queries");
    assert!(longest < Duration::from_secs(3), "b waited {longest:?} behind a's pipeline");
    assert!(ran > 20, "a's pipeline went on ({ran} queries)");
}

/// Inside a transaction the pipelining client keeps its connection to the end: its queries
/// all run in the one transaction (one txid), what it inserted is there after COMMIT, and b's
/// query runs only after that COMMIT.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipelined_transaction_keeps_its_connection_to_its_end() {
    let (a, b) = tenant_pair(Isolation::Schema, Access::Write, 1).await;
    let h = start(shared_pool_of_one(vec![a.clone(), b.clone()])).await;
    let (ca, cb) = (Arc::new(h.client(&a.id).await), h.client(&b.id).await);
    ca.batch_execute("CREATE TABLE piped (n int, txid bigint)").await.expect("create");
    ca.batch_execute("BEGIN").await.expect("begin");
    let b_done = Arc::new(AtomicBool::new(false));
    let b_query = {
        let b_done = b_done.clone();
        let schema = b.id.to_string();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let got = rows(&cb, "SELECT current_schema()").await.unwrap_or_else(|e| panic!("b: {}", why(&e)));
            assert_eq!(got, vec![vec![schema]]);
            b_done.store(true, Ordering::SeqCst);
        })
    };
    // Two loops inserting for 400 ms, one always in flight.
    let until = Instant::now() + Duration::from_millis(400);
    let insert = ca
        .prepare("INSERT INTO piped SELECT $1, txid_current() FROM pg_sleep(0.003)")
        .await
        .expect("prepare");
    let inserts = |first: i32| {
        let (ca, insert) = (ca.clone(), insert.clone());
        async move {
            let mut n = first;
            while Instant::now() < until {
                ca.execute(&insert, &[&n]).await.unwrap_or_else(|e| panic!("insert {n}: {}", why(&e)));
                n += 2;
            }
            (n - first) / 2
        }
    };
    let (x, y) = futures_util::future::join(inserts(0), inserts(1)).await;
    assert!(!b_done.load(Ordering::SeqCst), "b ran inside a's transaction");
    ca.batch_execute("COMMIT").await.expect("commit");
    tokio::time::timeout(Duration::from_secs(20), b_query)
        .await
        .expect("b runs after the COMMIT")
        .expect("b");
    let got = rows(&ca, "SELECT count(*), count(DISTINCT txid) FROM piped").await.expect("count");
    eprintln!("a inserted {x} + {y} rows in one transaction while b waited");
    assert_eq!(got, vec![vec![(x + y).to_string(), "1".to_owned()]], "every insert, in one transaction");
    assert!(x + y > 20, "the loops ran ({x} + {y})");
}
