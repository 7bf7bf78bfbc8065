//! Fair share of a shared pool: PgBouncer's query_timeout, idle_transaction_timeout,
//! client_idle_timeout and a write timeout towards clients that stop reading. Each test uses
//! a pool of one server connection: the timeout is what gives it back to the other client.

use std::time::{Duration, Instant};

use pgtenant::config::TenantConfig;
use pgtenant::model::PoolMode;
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
