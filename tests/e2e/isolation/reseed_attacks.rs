//! A hostile review of the reseed of `random()` at every reset and of the setup guard (the
//! timeouts another client left lifted for the setup's transaction), on a pool of one shared
//! by tenants a and b: no way tenant a has of seeding `random()` (a DO block, a function of
//! its own, `set_config`, `SET seed` in a transaction block, a startup option, a pinned or
//! session-mode session, a transaction left open, a configured or empty `reset_query`) makes
//! b's first draw predictable; b's first messages behind the reset and reseed (pipelined
//! Syncs, a Flush, COPY) are answered as PostgreSQL answers them; and the guard lets a client
//! be served with its own settings whatever timeouts the previous client of its tenant left.

use std::time::Duration;

use pgtenant::config::TenantConfig;
use pgtenant::model::{Isolation, PoolMode};

use super::*;
use crate::support::raw::*;
use crate::support::*;

/// The value of `random()` right after `seed` ran on a superuser session of `db`: what a
/// tenant that ran `seed` expects the next session of the backend to draw (and a check that
/// `seed` does seed).
async fn seeded_by(db: &str, seed: &str) -> String {
    let c = admin(db).await;
    c.batch_execute(seed).await.expect("the seeding SQL runs");
    rows(&c, "SELECT random()::text").await.expect("random")[0][0].clone()
}

/// b's pid and first draw.
async fn first_draw(c: &Client) -> Result<(i32, String), String> {
    let r = rows(c, "SELECT pg_backend_pid(), random()::text").await.map_err(|e| why(&e))?;
    Ok((r[0][0].parse().map_err(|_| format!("pid {:?}", r[0][0]))?, r[0][1].clone()))
}

/// Tenant a's client 1 leaves `setting = '100ms'` (tracked) on the pool's one connection;
/// then a function is created (any change to `pg_proc` empties every backend's cached lists
/// of functions by name: tenant a's own `CREATE FUNCTION`, a migration) and a superuser
/// transaction holds `pg_proc` for a second (as the existing guard test holds
/// `pg_conversion`). Client 2 of a, with a setting of its own (`application_name`, so its
/// setup is the BEGIN … COMMIT shape with the guard), must wait and be served with its own
/// values, as on a session of its own — the guard's `pg_catalog.set_config` lookup must not
/// be bounded by client 1's timeout it is there to lift.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guard_itself_is_never_bounded_by_the_timeouts_it_lifts() {
    let mut f = Failures::default();
    for setting in ["lock_timeout", "statement_timeout"] {
        let (a, _b) = tenant_pair(Isolation::Schema, Access::Write, 1).await;
        let h = start_quick(vec![a.clone()]).await;
        let su = admin(&a.database).await;
        let c1 = h.client(&a.id).await;
        let p0 = pid(&c1).await;
        c1.batch_execute(&format!("SET {setting} = '100ms'")).await.expect("client 1's timeout");
        let user = format!("app.{}", a.id);
        let stream = tokio::net::TcpStream::connect(h.addr).await.expect("connect");
        let mut c2 = login(stream, &[("user", &user), ("application_name", "c-two")]).await;
        su.batch_execute("CREATE FUNCTION public.guard_inval() RETURNS int LANGUAGE sql AS 'SELECT 1'")
            .await
            .expect("a function");
        let locker = admin(&a.database).await;
        locker
            .batch_execute("BEGIN; LOCK TABLE pg_catalog.pg_proc IN ACCESS EXCLUSIVE MODE")
            .await
            .expect("lock pg_proc");
        send(
            &mut c2,
            &query(
                "SELECT pg_backend_pid()::text, current_setting('lock_timeout'), \
                 current_setting('statement_timeout'), current_setting('application_name')",
            ),
        )
        .await;
        // What the backend waits in, read by the lock holder (whose lookups do not wait).
        tokio::time::sleep(Duration::from_millis(50)).await;
        let sql = format!(
            "SELECT coalesce(wait_event_type, '') || ': ' || query FROM pg_stat_activity WHERE pid = {p0}"
        );
        let waits_in = rows(&locker, &sql).await.map_err(|e| why(&e));
        tokio::time::sleep(Duration::from_millis(950)).await;
        locker.batch_execute("COMMIT").await.expect("unlock");
        let (got, _) = read_ready(&mut c2, 1, Duration::from_secs(5)).await;
        let seen: Vec<Vec<String>> =
            messages(&got).into_iter().filter(|(t, _)| *t == b'D').map(|(_, d)| data_row(d)).collect();
        let want = vec![vec![p0.to_string(), "0".to_owned(), "0".to_owned(), "c-two".to_owned()]];
        f.check(seen == want, || {
            format!(
                "client 1's {setting} = 100ms: client 2 got {:?}, not served with {want:?}; it waited in {waits_in:?}",
                summary(&got)
            )
        });
    }
    f.assert_none();
}
