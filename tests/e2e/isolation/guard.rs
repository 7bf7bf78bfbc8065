//! The reset's guard (`SET statement_timeout = 0` in front of DISCARD ALL) goes only where a
//! client may have left a timeout: a tracked SET of one, or a `set_config`, DO or CALL whose
//! effect pgtenant cannot see. A plain handoff goes without it (the guard is a statement of
//! its own, a seventh of what the handoff costs the server), and a timeout set where pgtenant
//! cannot see it that cancels DISCARD ALL fails the reset like any other error: the client's
//! messages go to another connection.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use pgtenant::model::Isolation;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::support::*;

/// The guard as pgtenant sends it: a Query message of that text.
const GUARD: &[u8] = b"Q\0\0\0\x1eSET statement_timeout = 0\0";

/// A forwarder to the cluster that counts the guards pgtenant sends upstream.
struct Tap {
    port: u16,
    guards: Arc<AtomicUsize>,
}

impl Tap {
    async fn start() -> Tap {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = l.local_addr().expect("addr").port();
        let guards = Arc::new(AtomicUsize::new(0));
        let count = guards.clone();
        tokio::spawn(async move {
            while let Ok((inbound, _)) = l.accept().await {
                let count = count.clone();
                tokio::spawn(async move {
                    let target = ("127.0.0.1", cluster().port);
                    let Ok(outbound) = tokio::net::TcpStream::connect(target).await else { return };
                    let (mut from_proxy, mut to_client) = inbound.into_split();
                    let (mut from_server, mut to_server) = outbound.into_split();
                    tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut from_server, &mut to_client).await;
                    });
                    // Upstream bytes, scanned with the tail of the previous read (a guard may
                    // straddle two reads).
                    let mut seen: Vec<u8> = Vec::new();
                    let mut buf = vec![0u8; 64 * 1024];
                    // Counted before they go on: a reply the client reads comes after.
                    while let Ok(n) = from_proxy.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                        seen.extend_from_slice(&buf[..n]);
                        let found = seen.windows(GUARD.len()).filter(|w| *w == GUARD).count();
                        count.fetch_add(found, Ordering::SeqCst);
                        let keep = seen.len().min(GUARD.len() - 1);
                        seen.drain(..seen.len() - keep);
                        if to_server.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        Tap { port, guards }
    }

    fn guards(&self) -> usize {
        self.guards.load(Ordering::SeqCst)
    }
}

/// Schema tenants a and b on one pool of one connection, reached through a [`Tap`].
async fn tapped() -> (TenantConfig, TenantConfig, Harness, Tap) {
    let (a, b) = tenant_pair(Isolation::Schema, Access::Write, 1).await;
    let tap = Tap::start().await;
    let mut cfg = config(vec![a.clone(), b.clone()]);
    cfg.upstreams[0].port = tap.port;
    cfg.pool.checkout_timeout = 10.0;
    let h = start(cfg).await;
    (a, b, h, tap)
}

/// What tenant b's client finds on the connection tenant a's client used: its own schema and
/// the server's statement timeout, on the same backend.
async fn b_after_a(h: &Harness, b: &TenantConfig, a_pid: i32) {
    let cb = h.client(&b.id).await;
    let got = rows(
        &cb,
        "SELECT pg_backend_pid()::text, current_schema()::text, current_setting('statement_timeout')",
    )
    .await
    .expect("tenant b's query");
    assert_eq!(got, [[a_pid.to_string(), b.id.clone(), "0".to_owned()]], "b on a's connection, reset");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handoff_from_a_client_that_set_no_timeout_goes_without_the_guard() {
    let (a, b, h, tap) = tapped().await;
    let ca = h.client(&a.id).await;
    let p0 = pid(&ca).await;
    // A setting that is not a timeout, tracked (a statement of its own), and a query.
    ca.batch_execute("SET work_mem = '7MB'").await.expect("tenant a's SET");
    ca.batch_execute("SELECT count(*) FROM items").await.expect("tenant a's query");
    let resets = h.proxy.metrics.global().resets();
    b_after_a(&h, &b, p0).await;
    assert_eq!(h.proxy.metrics.global().resets(), resets + 1, "the handoff carried the reset");
    assert_eq!(tap.guards(), 0, "no guard sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_a_client_may_have_left_brings_the_guard() {
    let (a, b, h, tap) = tapped().await;
    let p0 = pid(&h.client(&a.id).await).await;
    // Each way a client can leave a timeout (each a client of its own: a's client coming back
    // would have its own SET applied again), then a handoff to b.
    let ways = [
        "SET statement_timeout = '900ms'",
        "SET lock_timeout = '1s'",
        "SELECT set_config('statement_timeout', '900', false)",
        "DO $$BEGIN PERFORM 1; END$$",
    ];
    for (i, way) in ways.iter().enumerate() {
        // The handoff back from b to a carries no guard: b's client left no timeout.
        let ca = h.client(&a.id).await;
        ca.batch_execute(way).await.unwrap_or_else(|e| panic!("tenant a: {way}: {e}"));
        assert_eq!(tap.guards(), i, "no guard on the way back to a");
        b_after_a(&h, &b, p0).await;
        assert_eq!(tap.guards(), i + 1, "a guard behind {way}");
    }
}

/// Tenant a's client sets a statement timeout where pgtenant cannot see it (inside a
/// function) and leaves a temporary table that a superuser keeps locked: the handoff's
/// DISCARD ALL, sent without the guard, waits for the lock and is cancelled by a's timeout.
/// That connection is closed and b's INSERT runs once, on another one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_set_out_of_sight_that_cancels_the_reset_sends_the_client_elsewhere() {
    let (a, b, h, tap) = tapped().await;
    let su = admin(&a.database).await;
    let role = a.role.clone();
    su.batch_execute(&format!(
        "CREATE FUNCTION public.out_of_sight() RETURNS void LANGUAGE plpgsql AS $$BEGIN \
           EXECUTE 'CREATE TEMP TABLE held (x int)'; \
           PERFORM pg_catalog.set_config('statement_timeout', '50', false); END$$; \
         GRANT EXECUTE ON FUNCTION public.out_of_sight() TO {role}; \
         GRANT TEMPORARY ON DATABASE {} TO {role}",
        a.database
    ))
    .await
    .expect("the function");
    let ca = h.client(&a.id).await;
    let p0 = pid(&ca).await;
    ca.batch_execute("SELECT public.out_of_sight()").await.expect("tenant a's hidden timeout");
    super::retry::lock_the_held_temp_table(&su).await;

    let cb = h.client(&b.id).await;
    let table = format!("\"{}\".t", b.id);
    cb.batch_execute(&format!("INSERT INTO {table} VALUES (7, 'b')")).await.expect("tenant b's INSERT");
    let p1 = pid(&cb).await;
    assert_ne!(p1, p0, "b's INSERT ran on another connection");
    assert_eq!(tap.guards(), 0, "no guard sent: the timeout was out of sight");
    let g = h.proxy.metrics.global();
    assert_eq!((g.handoff_failures(), g.handoff_retries()), (1, 1), "the reset failed once and was retried");
    su.batch_execute("ROLLBACK").await.expect("unlock");
    let count: i64 =
        su.query_one(&format!("SELECT count(*) FROM {table} WHERE id = 7"), &[]).await.expect("count").get(0);
    assert_eq!(count, 1, "b's INSERT ran once");
}
