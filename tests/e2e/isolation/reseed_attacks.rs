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

/// Commits `locker`'s transaction (which holds a lock) once backend `pid` waits for a lock,
/// or after 5s; whether it was seen waiting. Reads `pg_stat_activity` as the lock holder,
/// whose lookups do not wait.
async fn unlock_once_waiting(locker: &Client, pid: i32) -> bool {
    let sql = format!("SELECT coalesce(wait_event_type, '') FROM pg_stat_activity WHERE pid = {pid}");
    let mut waited = false;
    for _ in 0..100 {
        if rows(locker, &sql).await.is_ok_and(|r| r == vec![vec!["Lock".to_owned()]]) {
            waited = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    locker.batch_execute("COMMIT").await.expect("unlock");
    waited
}

/// Client 1 of a leaves `lock_timeout` of 1ms and `statement_timeout` of 1h on the pool's one
/// connection; client 2 of a (its own `statement_timeout` of 7s and `application_name`, so
/// its setup is the BEGIN … COMMIT shape with the guard) starts with each of: a plain
/// statement, a transaction block with `SET LOCAL`, its own session `SET statement_timeout`,
/// a `SET LOCAL` outside a block (a warning, no effect). Its setup's lookup of `set_config`
/// waits for `pg_proc`, held by another session until the wait is seen: the 1ms
/// `lock_timeout` cancels it unless the guard lifted it. It is served on the same backend,
/// and what it sees in and after its first statement is its own (the guard's `SET LOCAL`s
/// never outlive the setup's transaction), and so does a client 3 whose setup sets no timeout;
/// client 1 then sees its own values again.
///
/// Client 1's `statement_timeout` is not 1ms: the guard's own statements (BEGIN, the `SET
/// LOCAL` that lifts it) necessarily run under it, each with a fresh timer, and a backend
/// descheduled for a millisecond in one of them (a loaded machine) is cancelled by it. A
/// `lock_timeout` only runs while a statement waits for a lock, which they never do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guard_never_leaks_into_the_next_clients_statements() {
    let (a, _b) = tenant_pair(Isolation::Schema, Access::Write, 1).await;
    let h = start_quick(vec![a.clone()]).await;
    let show = "SELECT current_setting('statement_timeout') || '/' || current_setting('lock_timeout') \
                || '/' || current_setting('application_name') || '/' || pg_backend_pid()";
    let mut f = Failures::default();
    // (what, the first statement, what it shows (None: no rows), what the next one shows)
    let cases: [(&str, String, Option<&str>, &str); 5] = [
        ("a plain statement", show.to_owned(), Some("7s/0/c-two"), "7s/0/c-two"),
        (
            "a block with SET LOCAL",
            format!(
                "BEGIN; SET LOCAL statement_timeout = '3s'; SET LOCAL lock_timeout = '2s'; {show}; COMMIT"
            ),
            Some("3s/2s/c-two"),
            "7s/0/c-two",
        ),
        ("its own SET", "SET statement_timeout = '2s'".to_owned(), None, "2s/0/c-two"),
        // A query of several statements is one transaction: SET LOCAL lasts it.
        (
            "SET LOCAL in a query",
            format!("SET LOCAL lock_timeout = '9s'; {show}"),
            Some("7s/9s/c-two"),
            "7s/0/c-two",
        ),
        ("SET LOCAL alone", "SET LOCAL lock_timeout = '9s'".to_owned(), None, "7s/0/c-two"),
    ];
    let (su, locker) = (admin(&a.database).await, admin(&a.database).await);
    for (n, (what, first, during, after)) in cases.into_iter().enumerate() {
        let c1 = h.client(&a.id).await;
        let p0 = pid(&c1).await;
        c1.batch_execute("SET lock_timeout = '1ms'").await.expect("client 1's lock_timeout");
        c1.batch_execute("SET statement_timeout = '1h'").await.expect("client 1's statement_timeout");
        let c2 = connect_str(&format!(
            "{} application_name=c-two options='-c statement_timeout=7s'",
            h.conninfo(&a.id)
        ))
        .await;
        // A change to pg_proc empties every backend's cached lists of functions by name, so
        // the setup's `pg_catalog.set_config` is looked up again, behind the lock held here.
        su.batch_execute(&format!(
            "CREATE FUNCTION public.guard_leak_{n}() RETURNS int LANGUAGE sql AS 'SELECT 1'"
        ))
        .await
        .expect("a function");
        locker
            .batch_execute("BEGIN; LOCK TABLE pg_catalog.pg_proc IN ACCESS EXCLUSIVE MODE")
            .await
            .expect("lock pg_proc");
        let (first_rows, waited) = tokio::join!(rows(&c2, &first), unlock_once_waiting(&locker, p0));
        f.check(waited, || format!("{what}: client 2's setup never waited for pg_proc"));
        let with_pid = |v: &str| format!("{v}/{p0}");
        match first_rows {
            Ok(r) => {
                let want = during.map(|d| vec![vec![with_pid(d)]]).unwrap_or_default();
                f.check(r == want, || format!("{what}: client 2 saw {r:?} in it"))
            }
            Err(e) => f.0.push(format!("{what}: client 2's first statement failed: {}", why(&e))),
        }
        match rows(&c2, show).await {
            Ok(r) => {
                f.check(r == vec![vec![with_pid(after)]], || format!("{what}: client 2 saw {r:?} after it"))
            }
            Err(e) => f.0.push(format!("{what}: client 2's second statement failed: {}", why(&e))),
        }
        // Client 3, with client 2's `statement_timeout` and its own `application_name`: its
        // setup is guarded (client 2's 7s is on the connection) and, but behind "its own SET",
        // sets only `application_name`, so a guard that outlived its transaction shows here.
        let c3 = connect_str(&format!(
            "{} application_name=c-three options='-c statement_timeout=7s'",
            h.conninfo(&a.id)
        ))
        .await;
        match rows(&c3, show).await {
            Ok(r) => {
                f.check(r == vec![vec![with_pid("7s/0/c-three")]], || format!("{what}: client 3 saw {r:?}"))
            }
            Err(e) => f.0.push(format!("{what}: client 3's statement failed: {}", why(&e))),
        }
        // Client 1 again behind client 2: its own values, not client 2's or the guard's.
        let sql = "SELECT current_setting('statement_timeout') || '/' || current_setting('lock_timeout')";
        match rows(&c1, sql).await {
            Ok(r) => {
                f.check(r == vec![vec!["1h/1ms".to_owned()]], || format!("{what}: client 1 then saw {r:?}"))
            }
            Err(e) => f.0.push(format!("{what}: client 1 then failed: {}", why(&e))),
        }
    }
    f.assert_none();
}

/// Every way tenant a has of seeding `random()` in transaction mode — `setseed()` in a DO
/// block, in a function a creates, in an explicit transaction, through the extended
/// protocol; `set_config('seed')`; `SET seed` / `SET LOCAL seed` in a transaction block; a
/// `-c seed=` startup option; a session pinned by LISTEN or a temporary table; a transaction
/// left open by a client that disconnects — is followed by b's first draw on the backend a
/// left (or, for the open transaction, on another one: that backend is closed): never the
/// value a's seed makes (computed on a superuser session with the same SQL).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_way_of_seeding_in_transaction_mode_reaches_the_next_tenant() {
    let (a, b) = tenant_pair(Isolation::Schema, Access::Write, 1).await;
    let h = start_quick(vec![a.clone(), b.clone()]).await;
    let q = format!("\"{}\".", a.id);
    admin(&a.database)
        .await
        .batch_execute(&format!(
            "CREATE FUNCTION {q}seed_it(float8) RETURNS void LANGUAGE sql AS 'SELECT setseed($1)';
             GRANT EXECUTE ON FUNCTION {q}seed_it(float8) TO {role}",
            role = a.role
        ))
        .await
        .expect("a's function");
    // (what, how a's client connects, the statements it sends one by one, what runs the same
    // seeding on a superuser session, whether the backend must be closed)
    let plain = h.conninfo(&a.id);
    let routes: Vec<(&str, String, Vec<String>, String, bool)> = vec![
        (
            "DO block",
            plain.clone(),
            vec!["DO $$BEGIN PERFORM setseed(0.11); END$$".into()],
            "SELECT setseed(0.11)".into(),
            false,
        ),
        (
            "a's function",
            plain.clone(),
            vec!["SELECT seed_it(0.12)".into()],
            format!("SELECT {q}seed_it(0.12)"),
            false,
        ),
        (
            "set_config",
            plain.clone(),
            vec!["SELECT set_config('seed', '0.13', false)".into()],
            "SET seed = 0.13".into(),
            false,
        ),
        (
            "SET seed in a block",
            plain.clone(),
            vec!["BEGIN".into(), "SET seed = 0.14".into(), "COMMIT".into()],
            "SET seed = 0.14".into(),
            false,
        ),
        (
            "SET LOCAL seed",
            plain.clone(),
            vec!["BEGIN".into(), "SET LOCAL seed = 0.15".into(), "COMMIT".into()],
            "BEGIN; SET LOCAL seed = 0.15; COMMIT".into(),
            false,
        ),
        (
            "setseed() in a block",
            plain.clone(),
            vec!["BEGIN".into(), "SELECT setseed(0.16)".into(), "COMMIT".into()],
            "SELECT setseed(0.16)".into(),
            false,
        ),
        (
            "startup -c seed",
            format!("{plain} options='-c seed=0.17'"),
            vec!["SELECT 1".into()],
            "SET seed = 0.17".into(),
            false,
        ),
        (
            "pinned by LISTEN",
            plain.clone(),
            vec!["LISTEN ch".into(), "SELECT setseed(0.18)".into()],
            "SELECT setseed(0.18)".into(),
            false,
        ),
        (
            "pinned by a temp table",
            plain.clone(),
            vec!["CREATE TEMP TABLE tt (i int)".into(), "SELECT setseed(0.19)".into()],
            "SELECT setseed(0.19)".into(),
            false,
        ),
        (
            "left open",
            plain.clone(),
            vec!["BEGIN".into(), "SELECT setseed(0.2)".into()],
            "SELECT setseed(0.2)".into(),
            true,
        ),
    ];
    let mut f = Failures::default();
    for (what, conninfo, statements, same, closed) in routes {
        let expected = seeded_by(&a.database, &same).await;
        let ca = connect_str(&conninfo).await;
        let p0 = pid(&ca).await;
        for sql in &statements {
            if let Err(e) = ca.batch_execute(sql).await {
                f.0.push(format!("{what}: a's {sql:?} failed: {}", why(&e)));
            }
        }
        drop(ca);
        let cb = h.client(&b.id).await;
        match first_draw(&cb).await {
            Ok((p, got)) => {
                f.check((p == p0) != closed, || format!("{what}: b on backend {p}, a's was {p0}"));
                f.check(got != expected, || format!("{what}: b drew {got}, what a's seed makes"));
            }
            Err(e) => f.0.push(format!("{what}: b's draw failed: {e}")),
        }
    }
    // The extended protocol: setseed($1) prepared and bound by a's driver.
    let expected = seeded_by(&a.database, "SELECT setseed(0.21)").await;
    let ca = h.client(&a.id).await;
    let p0 = pid(&ca).await;
    ca.execute("SELECT setseed($1)::text", &[&0.21f64]).await.expect("a's extended setseed");
    let cb = h.client(&b.id).await;
    match first_draw(&cb).await {
        Ok((p, got)) => {
            f.check(p == p0, || format!("extended: b on backend {p}, a's was {p0}"));
            f.check(got != expected, || format!("extended: b drew {got}, what a's seed makes"));
        }
        Err(e) => f.0.push(format!("extended: b's draw failed: {e}")),
    }
    f.assert_none();
}

/// A seed left by a's client at a release: session mode with the default, a custom
/// (`SELECT pg_advisory_unlock_all()`) and an empty `reset_query`, and a transaction-mode
/// client pinned by LISTEN with the custom and the empty one; a seeds with `setseed()` or
/// `SET seed` and leaves; b (waiting for the pool's one connection) draws on the same backend
/// something else than a's seed makes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_seed_survives_a_release_whatever_the_reset_query() {
    let mut f = Failures::default();
    let configs = [
        (PoolMode::Session, "DISCARD ALL"),
        (PoolMode::Session, "SELECT pg_advisory_unlock_all()"),
        (PoolMode::Session, ""),
        (PoolMode::Transaction, "SELECT pg_advisory_unlock_all()"),
        (PoolMode::Transaction, ""),
    ];
    for (mode, reset) in configs {
        let (a, b) = tenant_pair(Isolation::Schema, Access::Write, 1).await;
        let (a, b): (TenantConfig, TenantConfig) = (with_mode(a, mode, 1), with_mode(b, mode, 1));
        let mut cfg = config(vec![a.clone(), b.clone()]);
        cfg.pool.checkout_timeout = 10.0;
        cfg.pool.reset_query = reset.into();
        let h = start(cfg).await;
        for (how, seed, value) in
            [("setseed()", "SELECT setseed(0.31)", "0.31"), ("SET seed", "SET seed = 0.32", "0.32")]
        {
            let what = format!("{mode:?}, reset_query {reset:?}, {how}");
            let expected = seeded_by(&a.database, &format!("SELECT setseed({value})")).await;
            let ca = h.client(&a.id).await;
            if mode == PoolMode::Transaction {
                ca.batch_execute("LISTEN ch").await.expect("a pins");
            }
            let p0 = pid(&ca).await;
            if let Err(e) = ca.batch_execute(seed).await {
                f.0.push(format!("{what}: a's seed failed: {}", why(&e)));
            }
            drop(ca);
            let cb = h.client(&b.id).await;
            match first_draw(&cb).await {
                Ok((p, got)) => {
                    f.check(p == p0, || format!("{what}: b on backend {p}, a's was {p0}"));
                    f.check(got != expected, || format!("{what}: b drew {got}, what a's seed makes"));
                }
                Err(e) => f.0.push(format!("{what}: b's draw failed: {e}")),
            }
        }
    }
    f.assert_none();
}

/// Bytes a client sends, then `Some(n)` ReadyForQuerys to read or (`None`) a quiet stream.
type Step = (Vec<u8>, Option<usize>);

/// What b's first bytes get: each step's bytes, then either `Some(n)` ReadyForQuerys or
/// (`None`) what arrives until the stream is quiet.
async fn steps_transcript<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    s: &mut S,
    steps: &[Step],
) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for (bytes, syncs) in steps {
        send(s, bytes).await;
        let got = match syncs {
            Some(n) => read_ready(s, *n, Duration::from_secs(8)).await.0,
            None => read_quiet(s, Duration::from_millis(500)).await.0,
        };
        out.push(summary(&got));
    }
    out
}

/// b's first messages right behind a cross-tenant handoff (DISCARD ALL and the reseed,
/// unsynced, then b's setup: the SET alone for a plain client, the BEGIN … COMMIT shape for
/// one with an `application_name`): pipelined Syncs whose first statement fails, a Flush
/// alone and then an unsynced pipeline ending in a Flush, COPY out and in (simple and
/// extended), a COPY the client fails. b gets, message for message, what PostgreSQL answers
/// the same bytes on a fresh session, and its COPY lands in its own table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_messages_behind_the_reseed_are_answered_as_postgres_answers_them() {
    let (a, b) = tenant_pair(Isolation::Schema, Access::Write, 1).await;
    let h = start_quick(vec![a.clone(), b.clone()]).await;
    let ca = h.client(&a.id).await;
    let t = format!("\"{}\".t", b.id);
    let flush = || msg(b'H', b"");
    let cases: Vec<(&str, Vec<Step>)> = vec![
        (
            "pipelined Syncs, the first failing",
            vec![(
                cat(&[
                    parse("", "SELECT 1/0"),
                    bind("", ""),
                    execute(""),
                    sync(),
                    parse("s1", "SELECT 2"),
                    bind("", "s1"),
                    describe(b'P', ""),
                    execute(""),
                    sync(),
                    query("BEGIN"),
                    parse("", "SELECT 3"),
                    bind("", ""),
                    execute(""),
                    sync(),
                    query("COMMIT"),
                    parse("", "SELEC"),
                    sync(),
                ]),
                Some(6),
            )],
        ),
        (
            "a Flush first",
            vec![
                (flush(), None),
                (cat(&[parse("", "SELECT 4"), bind("", ""), describe(b'P', ""), execute(""), flush()]), None),
                (sync(), Some(1)),
            ],
        ),
        ("COPY out first", vec![(query("COPY (SELECT 5) TO STDOUT"), Some(1))]),
        (
            "COPY in first",
            vec![(cat(&[query(&format!("COPY {t} FROM STDIN")), copy_data("6\tb\n"), copy_done()]), Some(1))],
        ),
        (
            "extended COPY in first",
            vec![(
                cat(&[
                    parse("", &format!("COPY {t} FROM STDIN")),
                    bind("", ""),
                    execute(""),
                    copy_data("7\tb\n"),
                    copy_done(),
                    sync(),
                ]),
                Some(1),
            )],
        ),
        (
            "COPY failed first",
            vec![(cat(&[query(&format!("COPY {t} FROM STDIN")), copy_fail("no")]), Some(1))],
        ),
    ];
    let user = format!("app.{}", b.id);
    let mut f = Failures::default();
    for own in [false, true] {
        let stream = tokio::net::TcpStream::connect(h.addr).await.expect("connect");
        let mut params = vec![("user", user.as_str())];
        if own {
            params.push(("application_name", "b-own"));
        }
        let mut rb = login(stream, &params).await;
        for (what, steps) in &cases {
            let _ = pid(&ca).await;
            let proxied = steps_transcript(&mut rb, steps).await;
            let mut direct = raw_direct(&b.database).await;
            let expected = steps_transcript(&mut direct, steps).await;
            f.check(proxied == expected, || {
                format!("{what} (own settings: {own}): b got {proxied:?}, PostgreSQL answers {expected:?}")
            });
        }
    }
    // Each COPY in ran twice through pgtenant and twice on the direct sessions.
    let ids = super::setup::ids(&admin(&a.database).await, &t).await;
    f.check(ids == "6,6,6,6,7,7,7,7", || format!("b's table has {ids}"));
    f.assert_none();
}

/// The seed pgtenant picks must stay unknown: a release's reset (a session-mode client
/// leaving; a transaction-mode connection left dirty by a `SET` in a transaction block) ends
/// with the reseed as the backend's last query, which `pg_stat_activity` shows, literal and
/// all, to every session of the login role while the connection waits idle in the pool
/// (and that connection, already reset, goes to the next tenant as it is). Tenant a, with
/// a second client on the pool's other connection (pinned by LISTEN in transaction mode),
/// reads that query; b then takes the connection and draws: b's first `random()` must not be
/// what a can compute from what it read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reseeds_value_is_never_visible_to_the_previous_tenant() {
    let mut f = Failures::default();
    for mode in [PoolMode::Session, PoolMode::Transaction] {
        let (a, b) = tenant_pair(Isolation::Schema, Access::Write, 2).await;
        let (a, b) = (with_mode(a, mode, 2), with_mode(b, mode, 2));
        let h = start_quick(vec![a.clone(), b.clone()]).await;
        let observer = h.client(&a.id).await;
        observer.batch_execute("LISTEN keep").await.expect("a's observer keeps its connection");
        let watched = pid(&observer).await;
        let a1 = h.client(&a.id).await;
        let p0 = pid(&a1).await;
        if mode == PoolMode::Transaction {
            a1.batch_execute("BEGIN; SET LOCAL work_mem = '8MB'; COMMIT")
                .await
                .expect("a dirties its connection");
        }
        drop(a1);
        let sql = format!(
            "SELECT query FROM pg_stat_activity WHERE pid = {p0} AND pid <> {watched} \
             AND query LIKE 'SELECT pg_catalog.setseed(%'"
        );
        let mut seen = None;
        for _ in 0..30 {
            if let Ok(r) = rows(&observer, &sql).await {
                if let Some(q) = r.first() {
                    seen = Some(q[0].clone());
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // The seed's literal, if the query shows one (a parameter would show `$1`).
        let literal =
            seen.as_deref().and_then(|q| q.split_once("setseed('")).and_then(|(_, r)| r.split_once('\''));
        let Some((value, _)) = literal else { continue };
        let predicted = seeded_by(&a.database, &format!("SELECT setseed({value})")).await;
        let cb = h.client(&b.id).await;
        match first_draw(&cb).await {
            Ok((p, got)) => {
                f.check(p != p0 || got != predicted, || {
                    format!("{mode:?}: a read the seed {value} on backend {p0}; b then drew {got} there, as a predicted")
                });
            }
            Err(e) => f.0.push(format!("{mode:?}: b's draw failed: {e}")),
        }
    }
    f.assert_none();
}
