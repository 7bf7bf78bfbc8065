//! A configured `reset_query` (`[pool] reset_query`) that is not DISCARD ALL, in session mode:
//! a marker query goes behind it, and its reply must be rows, completions and idle
//! ReadyForQuerys, then exactly the marker's. A reset that returns rows, runs several
//! statements, carries comments or notifies keeps the connection; one that fails, opens a
//! transaction, starts a COPY or is cut by an unterminated quote closes it. Either way the next
//! client of the tenant gets exactly its own reply outside a transaction, and the next client
//! of the other tenant still gets DISCARD ALL (a clean session).

use std::time::Duration;

use pgtenant::config::TenantConfig;
use pgtenant::model::{Isolation, PoolMode};

use super::*;
use crate::support::raw::*;
use crate::support::*;

/// What the next client of `t` asks: its backend, search_path, and what a session may leave.
const CHECK: &str = "SELECT pg_backend_pid(), current_setting('search_path'), \
     (SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema()), \
     (SELECT count(*) FROM pg_listening_channels()), current_setting('work_mem') = '7MB', \
     (SELECT count(*) FROM pg_locks WHERE pid = pg_backend_pid() AND locktype = 'advisory')";

/// Runs [`CHECK`] as a new raw client of `t`: the row's values, or a failure when the reply
/// is anything but exactly RowDescription, one row, SELECT 1 and an idle ReadyForQuery.
async fn check(h: &Harness, t: &TenantConfig) -> Result<Vec<String>, String> {
    let mut s = raw_proxy(h, &t.id).await;
    send(&mut s, &query(CHECK)).await;
    let (got, _) = read_ready(&mut s, 1, Duration::from_secs(8)).await;
    let words = summary(&got);
    let row = messages(&got).iter().find(|(tag, _)| *tag == b'D').map(|(_, d)| data_row(d));
    match row {
        Some(row)
            if words.len() == 4 && words[0] == "T" && words[2] == "C(SELECT 1)" && words[3] == "Z(I)" =>
        {
            Ok(row)
        }
        _ => Err(format!("{words:?}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_reset_query_keeps_or_closes_never_hands_on_a_reply_or_a_transaction() {
    let (mut a, mut b) = tenant_pair(Isolation::Schema, Access::Write, 1).await;
    a.pool_mode = Some(PoolMode::Session);
    b.pool_mode = Some(PoolMode::Session);
    // (reset query, whether the connection it reset is kept)
    let resets = [
        ("SELECT 1", true),
        ("SELECT 1; SELECT 2 FROM generate_series(1, 3)", true),
        ("/* a comment */ SELECT pg_advisory_unlock_all(); ; -- trailing", true),
        ("DISCARD ALL;", true),
        ("ROLLBACK", true),
        ("LISTEN reset_ch; NOTIFY reset_ch, 'from-the-reset'; UNLISTEN reset_ch", true),
        ("SELECT 1/0", false),
        ("SELECT 1; SELECT 1/0; SELECT 2", false),
        ("BEGIN", false),
        ("COMMIT; BEGIN; SELECT 1", false),
        ("COPY (SELECT 1) TO STDOUT", false),
        ("SELECT 'unterminated", false),
        ("SELECT \"pgtenant_reset_0\" FROM (SELECT 1 AS \"pgtenant_reset_0\") s", true),
    ];
    let mut f = Failures::default();
    for (lock, (reset, kept)) in resets.into_iter().enumerate() {
        let mut cfg = config(vec![a.clone(), b.clone()]);
        cfg.pool.checkout_timeout = 10.0;
        cfg.pool.reset_query = reset.into();
        let h = start(cfg).await;
        let mut ra = raw_proxy(&h, &a.id).await;
        send(
            &mut ra,
            &query(&format!(
                "CREATE TEMP TABLE planted (x int); LISTEN planted_ch; SET work_mem = '7MB'; \
                 SELECT pg_advisory_lock({lock}), pg_backend_pid()"
            )),
        )
        .await;
        let (got, _) = read_ready(&mut ra, 1, Duration::from_secs(5)).await;
        let Some(pid_a) =
            messages(&got).iter().find(|(t, _)| *t == b'D').map(|(_, d)| data_row(d)[1].clone())
        else {
            f.0.push(format!("{reset:?}: the plant failed: {:?}", summary(&got)));
            continue;
        };
        send(&mut ra, &terminate()).await;
        drop(ra);
        match check(&h, &a).await {
            Ok(row) => {
                f.check((row[0] == pid_a) == kept, || {
                    format!(
                        "{reset:?}: a's next client on backend {} after {pid_a}, expected it {}",
                        row[0],
                        if kept { "kept" } else { "closed" }
                    )
                });
                f.check(row[1] == a.id, || format!("{reset:?}: a's next client has search_path {}", row[1]));
                if !kept {
                    f.check(row[2..] == ["0", "0", "f", "0"], || {
                        format!("{reset:?}: a new backend is not clean: {row:?}")
                    });
                }
            }
            Err(got) => f.0.push(format!("{reset:?}: a's next client got {got}")),
        }
        match check(&h, &b).await {
            Ok(row) => f.check(row[1..] == [b.id.as_str(), "0", "0", "f", "0"], || {
                format!("{reset:?}: b's client after a's is not on a clean session: {row:?}")
            }),
            Err(got) => f.0.push(format!("{reset:?}: b's next client got {got}")),
        }
    }
    f.assert_none();
}

/// Transaction mode: a client dirties its connection (a temporary table made without CREATE
/// TEMP) so the configured reset runs after each transaction, however weak or odd it is — empty,
/// RESET ALL (which also resets search_path), a search_path of its own, DEALLOCATE ALL. The
/// client's next transaction still runs in its own schema (its INSERT lands in its own `t`)
/// and its prepared statement still works on the same backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_any_configured_reset_the_tenant_keeps_its_schema_and_statements() {
    let (a, b) = tenant_pair(Isolation::Schema, Access::Write, 1).await;
    let su = admin(&a.database).await;
    su.batch_execute(&format!(
        "CREATE TABLE public.t (id int, owner text); GRANT USAGE ON SCHEMA public TO {r}; \
         GRANT INSERT, SELECT ON public.t TO {r}",
        r = a.role
    ))
    .await
    .expect("a table in public");
    let resets = [
        "",
        "RESET ALL",
        "SET search_path = public",
        "SELECT set_config('search_path', 'public', false)",
        "RESET ALL; DEALLOCATE ALL",
        "DEALLOCATE ALL",
    ];
    let mut f = Failures::default();
    for (round, reset) in resets.into_iter().enumerate() {
        let mut cfg = config(vec![a.clone(), b.clone()]);
        cfg.pool.checkout_timeout = 5.0;
        cfg.pool.reset_query = reset.into();
        let h = start(cfg).await;
        let c = h.client(&a.id).await;
        let p0 = pid(&c).await;
        for step in 0..2 {
            let what = format!("{reset:?}, step {step}");
            let st = match c.prepare("SELECT 40 + $1::int").await {
                Ok(st) => st,
                Err(e) => {
                    f.0.push(format!("{what}: prepare: {}", why(&e)));
                    continue;
                }
            };
            if let Err(e) = c.batch_execute(&format!("CREATE TABLE pg_temp.scratch{step} (x int)")).await {
                f.0.push(format!("{what}: dirty: {}", why(&e)));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            let id = (round * 10 + step) as i32;
            match c.execute("INSERT INTO t VALUES ($1, 'a')", &[&id]).await {
                Ok(n) => f.check(n == 1, || format!("{what}: INSERT {n}")),
                Err(e) => f.0.push(format!("{what}: INSERT: {}", why(&e))),
            }
            match c.query_one(&st, &[&id]).await {
                Ok(r) => f.check(r.get::<_, i32>(0) == 40 + id, || format!("{what}: wrong value")),
                Err(e) => f.0.push(format!("{what}: the statement after the reset: {}", why(&e))),
            }
        }
        f.check(pid(&c).await == p0, || format!("{reset:?}: the connection was not kept"));
        let resets = h.proxy.metrics.global().resets();
        f.check(resets >= 2, || format!("{reset:?}: {resets} resets, expected one per step"));
        let in_public: i64 = su.query_one("SELECT count(*) FROM public.t", &[]).await.expect("count").get(0);
        f.check(in_public == 0, || format!("{reset:?}: {in_public} row(s) of tenant a in public.t"));
    }
    f.assert_none();
}
