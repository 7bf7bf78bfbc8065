//! Fair share of a shared pool: PgBouncer's query_timeout, idle_transaction_timeout,
//! client_idle_timeout and a write timeout towards clients that stop reading (each with a
//! pool of one server connection: the timeout is what gives it back to the other client);
//! a tenant's server-connection cap that no waiter is starved of, leaks or grows past,
//! resized while clients wait; and a cancel racing a release, which must not reach the next
//! client of the backend.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgtenant::config::TenantConfig;
use pgtenant::model::{Isolation, PoolMode};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::support::raw::query;
use crate::support::*;

fn login(t: &TenantConfig) -> Vec<u8> {
    startup_packet(&[("user", &format!("app.{}", t.id)), ("database", &t.database)])
}

/// The other client of the tenant gets the pool's only connection within `within`.
async fn other_client_served(h: &Harness, t: &TenantConfig, within: Duration) {
    let started = Instant::now();
    let c = h.client(&t.id).await;
    let v: i32 = c.query_one("SELECT 7", &[]).await.expect("served").get(0);
    assert_eq!(v, 7);
    assert!(started.elapsed() < within, "waited {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_timeout_cancels_and_frees_the_connection() {
    let mut t = with_mode(tenant_db("qtimeout").await, PoolMode::Transaction, 1);
    t.timeouts.query_timeout = Some(1.0);
    let h = start(config(vec![t.clone()])).await;
    let started = Instant::now();
    let mut send = login(&t);
    send.extend(query("SELECT pg_sleep(30)"));
    let (got, closed) = raw_exchange(h.addr, &send, Duration::from_secs(10)).await;
    assert!(closed, "the client is disconnected");
    assert_eq!(sqlstate(&got).as_deref(), Some("57014"), "{got:?}");
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    // The backend's query was cancelled, and the pool's connection is usable by others.
    other_client_served(&h, &t, Duration::from_secs(3)).await;
    let sleeping = admin("postgres")
        .await
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND query LIKE 'SELECT pg_sleep(30)%' AND state = 'active'",
            &[&t.database],
        )
        .await
        .expect("activity")
        .get::<_, i64>(0);
    assert_eq!(sleeping, 0, "the slow query no longer runs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_transaction_timeout_ends_the_session_and_rolls_back() {
    let mut t = with_mode(tenant_db("idletx").await, PoolMode::Transaction, 1);
    t.timeouts.idle_transaction_timeout = Some(1.0);
    let h = start(config(vec![t.clone()])).await;
    let setup = h.client(&t.id).await;
    setup.batch_execute("CREATE TABLE held (x int)").await.expect("table");
    drop(setup);
    let mut send = login(&t);
    send.extend(query("BEGIN; INSERT INTO held VALUES (1)"));
    let (got, closed) = raw_exchange(h.addr, &send, Duration::from_secs(8)).await;
    assert!(closed, "the idle-in-transaction client is disconnected");
    assert!(got.windows(6).any(|w| w == b"Z\0\0\0\x05T"), "the transaction was open: {got:?}");
    assert_eq!(sqlstate(&got).as_deref(), Some("25P03"), "{got:?}");
    other_client_served(&h, &t, Duration::from_secs(3)).await;
    let c = h.client(&t.id).await;
    let n: i64 = c.query_one("SELECT count(*) FROM held", &[]).await.expect("count").get(0);
    assert_eq!(n, 0, "the abandoned transaction rolled back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_idle_timeout_disconnects_idle_clients() {
    let mut t = with_mode(tenant_db("cidle").await, PoolMode::Transaction, 1);
    t.timeouts.client_idle_timeout = Some(1.0);
    let h = start(config(vec![t.clone()])).await;
    let mut send = login(&t);
    send.extend(query("SELECT 1"));
    let started = Instant::now();
    let (got, closed) = raw_exchange(h.addr, &send, Duration::from_secs(8)).await;
    assert!(closed);
    assert!(got.windows(6).filter(|w| *w == b"Z\0\0\0\x05I").count() >= 2, "login and the query completed");
    assert_eq!(sqlstate(&got).as_deref(), Some("57P05"), "{got:?}");
    assert!(started.elapsed() >= Duration::from_millis(900), "not before the timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_gives_the_connection_back() {
    let mut t = with_mode(tenant_db("noread").await, PoolMode::Transaction, 1);
    t.timeouts.client_write_timeout = Some(1.0);
    let h = start(config(vec![t.clone()])).await;
    // A result far larger than the socket buffers, never read.
    let mut s = TcpStream::connect(h.addr).await.expect("connect");
    let mut send = login(&t);
    send.extend(query("SELECT repeat('x', 100000) FROM generate_series(1, 2000)"));
    s.write_all(&send).await.expect("send");
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The other client gets the only server connection once the write timeout ends the reader.
    other_client_served(&h, &t, Duration::from_secs(6)).await;
    drop(s);
}

/// Clients of `tenant` whose checkout waits now.
fn waiting(h: &Harness, tenant: &str) -> usize {
    let now = pgtenant::console::live::now_us();
    h.proxy
        .live
        .list()
        .iter()
        .filter(|c| c.tenant.to_string() == tenant && c.waiting_for(now).is_some())
        .count()
}

/// A client that runs short transactions back to back takes its slot again right after each
/// one; another client waiting for that slot must still be served after at most a few of
/// them: the slot released goes to the first waiter, and the lock-free take at the next
/// checkout never passes a queued one. Checked at a tenant's server-connection cap (1, below
/// its pool of 3: the cap is what binds) and across two tenants on a pool of one shared
/// connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_looping_transactions_starves_no_waiter_at_the_cap_or_the_pool() {
    let mut t = with_mode(tenant_db("capfair").await, PoolMode::Transaction, 3);
    t.max_server_connections = Some(1);
    let (a, b) = tenant_pair(Isolation::Schema, Access::Read, 1).await;
    let mut cfg = config(vec![t.clone(), a.clone(), b.clone()]);
    cfg.pool.checkout_timeout = 3.0;
    let h = start(cfg).await;
    for (hog, other) in [(&t.id, &t.id), (&a.id, &b.id)] {
        let (hog, other) = (h.client(hog).await, h.client(other).await);
        let stop = Arc::new(AtomicBool::new(false));
        let looping = tokio::spawn({
            let stop = stop.clone();
            async move {
                let mut n = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    hog.batch_execute("SELECT pg_sleep(0.002)").await.expect("the looping client");
                    n += 1;
                }
                n
            }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut worst = Duration::ZERO;
        for _ in 0..10 {
            let started = Instant::now();
            other.batch_execute("SELECT 1").await.expect("the other client is served, not timed out");
            worst = worst.max(started.elapsed());
        }
        stop.store(true, Ordering::Relaxed);
        let n = looping.await.expect("task");
        assert!(n >= 10, "the looping client ran only {n} transactions");
        // A starved waiter would wait for the checkout timeout (3 s).
        assert!(
            worst < Duration::from_millis(1500),
            "the other client waited {worst:?} behind the looping one"
        );
    }
    assert!(eventually(Duration::from_secs(2), || async { h.proxy.pools.checked_out(None) == 0 }).await);
}

/// Clients that give up while queued for their tenant's cap (2, below a pool of 4) take no
/// slot with them and leave none extra: one times out (53300), two close their connection
/// while they wait. Once the holders commit, two transactions run at once again, and a third
/// client still waits for the cap (it times out).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_that_time_out_or_leave_at_the_cap_lose_no_slot_and_add_none() {
    let mut t = with_mode(tenant_db("capleak").await, PoolMode::Transaction, 4);
    t.max_server_connections = Some(2);
    let mut cfg = config(vec![t.clone()]);
    cfg.pool.checkout_timeout = 0.5;
    let h = start(cfg).await;
    let holders = [h.client(&t.id).await, h.client(&t.id).await];
    for c in &holders {
        c.batch_execute("BEGIN; SELECT 1").await.expect("begin");
    }
    let late = h.client(&t.id).await;
    let timed_out = late.batch_execute("SELECT 1").await.map_err(|e| code(&e));
    assert_eq!(timed_out.err().as_deref(), Some("53300"), "the cap of 2 is held");
    let mut leaving = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(h.addr).await.expect("connect");
        let mut send = login(&t);
        send.extend(query("SELECT 1"));
        s.write_all(&send).await.expect("send");
        leaving.push(s);
    }
    assert!(
        eventually(Duration::from_millis(400), || async { waiting(&h, &t.id) == 2 }).await,
        "the two raw clients wait for the cap"
    );
    drop(leaving);
    assert!(
        eventually(Duration::from_secs(2), || async { waiting(&h, &t.id) == 0 }).await,
        "clients that left still wait"
    );
    for c in &holders {
        c.batch_execute("COMMIT").await.expect("commit");
    }
    let tid = pgtenant::model::TenantId::parse(&t.id).expect("id");
    assert!(
        eventually(Duration::from_secs(2), || async { h.proxy.pools.checked_out(Some(&tid)) == 0 }).await
    );
    let two = [h.client(&t.id).await, h.client(&t.id).await];
    for c in &two {
        let begun = tokio::time::timeout(Duration::from_secs(2), c.batch_execute("BEGIN; SELECT 1")).await;
        begun.expect("both slots are free again").expect("begin");
    }
    let third = h.client(&t.id).await.batch_execute("SELECT 1").await.map_err(|e| code(&e));
    assert_eq!(third.err().as_deref(), Some("53300"), "a third slot appeared");
}

/// A tenant's cap changed in the catalog while its clients wait or hold: grown, it serves the
/// client waiting for it at once (its holder still in a transaction); shrunk while two hold,
/// the first slot to come back is retired, not handed on, so a third client waits until the
/// second holder is done too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cap_grown_while_a_client_waits_serves_it_and_a_shrunk_one_retires_a_held_slot() {
    use pgtenant::catalog::Catalog;
    let t = with_mode(tenant_db("capsize").await, PoolMode::Transaction, 3);
    let mut cfg = config(vec![]);
    cfg.pool.checkout_timeout = 5.0;
    let control = control_db(&mut cfg).await;
    insert_tenant(&control, &t).await;
    let set_cap = |n: i32| {
        let (control, id) = (&control, t.id.clone());
        async move {
            control
                .execute("UPDATE pgtenant.tenants SET max_server_connections = $2 WHERE id = $1", &[&id, &n])
                .await
                .expect("set the cap");
        }
    };
    set_cap(1).await;
    let (h, catalog) = start_control(cfg).await;
    let tid = pgtenant::model::TenantId::parse(&t.id).expect("id");
    // The cap in force for the tenant (its pool of 3 is larger).
    let cap_is = |n: usize| {
        let (h, catalog, tid) = (&h, &catalog, &tid);
        async move {
            let tenant = catalog.lookup(tid).await.ok().flatten();
            tenant.is_some_and(|t| h.proxy.pools.effective_pool_size(&t) == n)
        }
    };
    let begin = |c: tokio_postgres::Client| {
        tokio::spawn(
            async move { c.batch_execute("BEGIN; SELECT 1").await.map(|()| c).map_err(|e| code(&e)) },
        )
    };
    let a = h.client(&t.id).await;
    a.batch_execute("BEGIN; SELECT 1").await.expect("a begins");
    let b = begin(h.client(&t.id).await);
    assert!(
        eventually(Duration::from_secs(2), || async { waiting(&h, &t.id) == 1 }).await,
        "b waits for the cap of 1"
    );
    set_cap(2).await;
    let b = tokio::time::timeout(Duration::from_secs(3), b)
        .await
        .expect("b is served once the cap grows, a still holding its slot")
        .expect("task")
        .expect("b begins");
    set_cap(1).await;
    assert!(eventually(Duration::from_secs(3), || cap_is(1)).await, "the cap did not shrink");
    a.batch_execute("COMMIT").await.expect("a commits");
    let c = begin(h.client(&t.id).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!c.is_finished(), "a's slot was handed on past the shrunk cap of 1 (b still holds one)");
    assert_eq!(waiting(&h, &t.id), 1);
    b.batch_execute("COMMIT").await.expect("b commits");
    let c = tokio::time::timeout(Duration::from_secs(3), c)
        .await
        .expect("c is served once b is done")
        .expect("task")
        .expect("c begins");
    c.batch_execute("COMMIT").await.expect("c commits");
    assert!(
        eventually(Duration::from_secs(2), || async { h.proxy.pools.checked_out(Some(&tid)) == 0 }).await
    );
}

/// A client of tenant a cancels its own short queries at random moments, so its cancels race
/// the release of the pool's one connection and the next checkout of that same backend, by
/// another client of a and by a client of tenant b (transaction mode, one login role). A
/// cancel that read a's backend either lands on a's own query or finds the connection closed
/// at its release rather than passed on: the other client's queries are never cancelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_racing_a_release_never_reaches_the_next_clients_query() {
    let (a, b) = tenant_pair(Isolation::Schema, Access::Read, 1).await;
    let mut cfg = config(vec![a.clone(), b.clone()]);
    cfg.pool.checkout_timeout = 5.0;
    let h = start(cfg).await;
    for other in [&a.id, &b.id] {
        cancels_race_releases(&h, &a.id, other).await;
    }
}

/// [`a_cancel_racing_a_release_never_reaches_the_next_clients_query`] for one pair of
/// tenants, for a second.
async fn cancels_race_releases(h: &Harness, canceller: &str, other: &str) {
    let ca = h.client(canceller).await;
    let cb = h.client(other).await;
    let token = Arc::new(std::sync::Mutex::new(ca.cancel_token()));
    let stop = Arc::new(AtomicBool::new(false));
    // A cancel landing on the reset of a cross-tenant handoff ends that client's session
    // (the reset failed): it logs in again, and its new key is cancelled from then on.
    let a_loop = tokio::spawn({
        let (stop, token, conninfo) = (stop.clone(), token.clone(), h.conninfo(canceller));
        async move {
            let (mut ca, mut ran, mut cancelled) = (ca, 0u32, 0u32);
            while !stop.load(Ordering::Relaxed) {
                match ca.batch_execute("SELECT pg_sleep(0.001)").await {
                    Ok(()) => ran += 1,
                    Err(e) if code(&e) == "57014" => cancelled += 1,
                    Err(_) => {
                        ca = connect_str(&conninfo).await;
                        *token.lock().expect("token") = ca.cancel_token();
                    }
                }
            }
            (ran, cancelled)
        }
    });
    let cancels = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let t = token.lock().expect("token").clone();
                let _ = t.cancel_query(tokio_postgres::NoTls).await;
                n += 1;
                // Spread over the canceller's transactions and the gaps between them.
                tokio::time::sleep(Duration::from_micros(300 + (n * 7919) % 1700)).await;
            }
        }
    });
    let started = Instant::now();
    let mut b_ran = 0u32;
    while started.elapsed() < Duration::from_millis(1000) {
        match cb.batch_execute("SELECT pg_sleep(0.003)").await {
            Ok(()) => b_ran += 1,
            Err(e) => panic!("{other}'s query after {b_ran}: {} {e}", code(&e)),
        }
    }
    stop.store(true, Ordering::Relaxed);
    cancels.await.expect("canceller");
    let (a_ran, a_cancelled) = a_loop.await.expect("a");
    assert!(b_ran >= 10 && a_ran >= 10, "the clients hardly took turns: {a_ran} and {b_ran}");
    assert!(a_cancelled > 0, "no cancel reached the canceller's own queries: the race was not run");
}
