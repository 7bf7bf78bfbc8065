//! The random seed: DISCARD ALL leaves `random()`'s state as the previous session left it
//! (`seed` is not reset by RESET ALL), so a tenant that seeds it (`setseed()`, `SET seed`)
//! would know every "random" number the next tenant of the backend draws — the tokens an
//! application makes with `md5(random()::text)`. The next tenant must draw something else,
//! whichever way the connection passes on: a cross-tenant checkout (transaction mode) or a
//! session-mode client leaving; and a `SET seed` (which pgtenant cannot replay faithfully)
//! must not be reset to the fixed default seed for the next client of the same tenant.

use pgtenant::model::{Isolation, PoolMode};

use super::*;
use crate::support::*;

/// What `random()` draws first, as text, right after `setseed(seed)` on a backend of the
/// cluster: what a tenant that seeded the backend would expect the next one to draw.
async fn seeded_draw(db: &str, seed: &str) -> String {
    let c = admin(db).await;
    c.batch_execute(&format!("SELECT setseed({seed})")).await.expect("setseed");
    let r = rows(&c, "SELECT random()::text").await.expect("random");
    r[0][0].clone()
}

async fn draw(c: &tokio_postgres::Client) -> Result<(i32, String), String> {
    let r = rows(c, "SELECT pg_backend_pid(), random()::text").await.map_err(|e| why(&e))?;
    let pid = r[0][0].parse().map_err(|_| format!("pid {:?}", r[0][0]))?;
    Ok((pid, r[0][1].clone()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seed_never_reaches_another_tenant_at_a_checkout() {
    let (a, b) = tenant_pair(Isolation::Schema, Access::Write, 1).await;
    let h = start_quick(vec![a.clone(), b.clone()]).await;
    let (ca, cb) = (h.client(&a.id).await, h.client(&b.id).await);
    let p0 = pid(&ca).await;
    let mut f = Failures::default();
    for (how, seed) in [("setseed()", "SELECT setseed(0.5)"), ("SET seed", "SET seed = 0.25")] {
        let value = if how == "SET seed" { "0.25" } else { "0.5" };
        let expected = seeded_draw(&a.database, value).await;
        if let Err(e) = ca.batch_execute(seed).await {
            f.0.push(format!("{how}: tenant a's `{seed}` failed: {}", why(&e)));
            continue;
        }
        match draw(&cb).await {
            Ok((p, got)) => {
                f.check(p == p0, || format!("{how}: tenant b not on the shared backend {p0} (on {p})"));
                f.check(got != expected, || {
                    format!("{how}: tenant b drew {got}, the value tenant a's seed {value} makes")
                });
            }
            Err(e) => f.0.push(format!("{how}: tenant b's draw failed: {e}")),
        }
    }
    f.assert_none();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seed_never_reaches_another_tenant_after_a_session_mode_client() {
    let (a, b) = tenant_pair(Isolation::Schema, Access::Write, 1).await;
    let (a, b) = (with_mode(a, PoolMode::Session, 1), with_mode(b, PoolMode::Session, 1));
    let mut cfg = config(vec![a.clone(), b.clone()]);
    cfg.pool.checkout_timeout = 10.0;
    let h = start(cfg).await;
    let expected = seeded_draw(&a.database, "0.5").await;
    let ca = h.client(&a.id).await;
    let p0 = pid(&ca).await;
    ca.batch_execute("SELECT setseed(0.5)").await.expect("a seeds");
    drop(ca);
    // The pool of one: b's checkout waits for a's connection to be reset and released.
    let cb = h.client(&b.id).await;
    let (p, got) = draw(&cb).await.expect("b draws");
    assert_eq!(p, p0, "tenant b must get the backend tenant a left");
    assert_ne!(got, expected, "tenant b drew the value tenant a's seed makes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_seed_is_not_replaced_by_the_fixed_default_for_the_next_client() {
    let (a, _b) = tenant_pair(Isolation::Schema, Access::Write, 1).await;
    let h = start_quick(vec![a.clone()]).await;
    let (c1, c2) = (h.client(&a.id).await, h.client(&a.id).await);
    let p0 = pid(&c1).await;
    // RESET seed (and set_config('seed', NULL)) seeds with the default, 0: as fixed as any.
    let fixed = seeded_draw(&a.database, "0").await;
    let chosen = seeded_draw(&a.database, "0.5").await;
    c1.batch_execute("SET seed = 0.5").await.expect("SET seed");
    let (p, got) = draw(&c2).await.expect("the next client draws");
    assert_eq!(p, p0, "the second client must get the same backend");
    assert_ne!(got, fixed, "the next client drew what the default seed makes");
    assert_ne!(got, chosen, "the next client drew what the first client's seed makes");
}

/// The reseed calls `setseed` by OID (the protocol's FunctionCall): the OID pgtenant sends is
/// `pg_catalog.setseed(double precision)`'s on the server, and a session that calls by that
/// OID as pgtenant does gets the sequence `setseed` gives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reseed_calls_setseed_by_its_oid() {
    use crate::support::raw::*;
    let (a, _) = tenant_pair(Isolation::Schema, Access::Write, 1).await;
    let db = a.database;
    let su = admin(&db).await;
    let oid: i64 = su
        .query_one("SELECT 'pg_catalog.setseed(double precision)'::regprocedure::oid::int8", &[])
        .await
        .expect("setseed's oid")
        .get(0);
    assert_eq!(oid, i64::from(pgtenant::pool::handoff::SETSEED_OID));
    let mut out = bytes::BytesMut::new();
    pgtenant::protocol::frontend::function_call(
        &mut out,
        pgtenant::pool::handoff::SETSEED_OID,
        &0.25f64.to_bits().to_be_bytes(),
    );
    let mut s = raw_direct(&db).await;
    send(&mut s, &cat(&[out.to_vec(), query("SELECT random()::text")])).await;
    let (got, _) = read_ready(&mut s, 2, std::time::Duration::from_secs(5)).await;
    let want = seeded_draw(&db, "0.25").await;
    assert_eq!(summary(&got), ["V", "Z(I)", "T", format!("D({want})").as_str(), "C(SELECT 1)", "Z(I)"]);
}
