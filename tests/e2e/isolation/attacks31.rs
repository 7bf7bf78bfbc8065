//! A hostile tenant a before tenant b on the one server connection (transaction mode, schema
//! isolation): the handoff's FunctionCall reseed and setup behind what a leaves (reportable
//! settings changed by SET and set_config, an unsynced batch, a Terminate mid-pipeline), the
//! reset's in-place copy of the pool's settings; and idle_transaction_timeout against a
//! client pipelining normally.

use std::time::Duration;

use pgtenant::model::{Isolation, PoolMode};

use crate::support::raw::*;
use crate::support::*;

use super::attacks29::{direct_with, pbe, replies};

/// What b reads of its session: schema, reportable settings, its table's rows.
const B_SEES: &str = "SELECT current_schema(), current_setting('application_name'), \
    current_setting('pgtenant.tenant_id', true), \
    current_setting('TimeZone'), current_setting('DateStyle'), current_setting('IntervalStyle'), \
    current_setting('default_transaction_read_only'), current_setting('client_encoding'), \
    current_setting('statement_timeout'), (SELECT count(*) FROM t), \
    (SELECT count(*) FROM pg_class WHERE relpersistence = 't')";

/// What a does before it leaves: every reportable setting changed, some out of the tracker's
/// sight (set_config), then an unsynced INSERT and a Terminate mid-pipeline.
fn a_leaves() -> Vec<Vec<u8>> {
    vec![
        query("SET application_name = 'a_app'"),
        query("SET TimeZone = 'Asia/Tokyo'"),
        query("SELECT set_config('DateStyle', 'SQL, DMY', false)"),
        query("SET IntervalStyle = 'iso_8601'"),
        query("SELECT set_config('default_transaction_read_only', 'on', false)"),
        query("SELECT set_config('statement_timeout', '1ms', false)"),
        query("CREATE TEMP TABLE a_temp (x int)"),
        query("SET client_encoding = 'LATIN1'"),
    ]
}

/// b, with and without settings of its own at login, after a left every setting changed
/// (and an unsynced INSERT behind it): b sees what a session straight to PostgreSQL with the
/// same login sees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b_after_a_changed_every_reportable_setting_sees_its_own_login() {
    b_after_a_changed_settings(Isolation::Schema).await;
}

/// [`b_after_a_changed_every_reportable_setting_sees_its_own_login`] for a shared tenant: its
/// setup is BEGIN, SET, SELECT set_config, COMMIT ahead of the reseed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_b_after_a_changed_every_reportable_setting_sees_its_own_login() {
    b_after_a_changed_settings(Isolation::Shared).await;
}

async fn b_after_a_changed_settings(isolation: Isolation) {
    let (a, b) = tenant_pair(isolation, Access::Write, 1).await;
    let (a, b) = (with_mode(a, PoolMode::Transaction, 1), with_mode(b, PoolMode::Transaction, 1));
    let h = start(config(vec![a.clone(), b.clone()])).await;
    let own: [(&str, &str); 4] = [
        ("application_name", "b_app"),
        ("TimeZone", "America/Lima"),
        ("DateStyle", "German, DMY"),
        ("IntervalStyle", "sql_standard"),
    ];
    let mut failures = Vec::new();
    for (what, settings) in [("no settings", &own[..0]), ("own settings", &own[..]), ("two", &own[2..])] {
        for tail in [vec![], vec![cat(&[pbe("INSERT INTO t VALUES (9, 'a')"), terminate()])]] {
            let mut ca = raw_proxy(&h, &a.id).await;
            replies(&mut ca, &[a_leaves(), tail.clone()].concat(), Duration::from_secs(5)).await;
            drop(ca);
            tokio::time::sleep(Duration::from_millis(100)).await;
            let user = format!("app.{}", b.id);
            let mut params = vec![("user", user.as_str())];
            params.extend_from_slice(settings);
            let mut cb = login(tokio::net::TcpStream::connect(h.addr).await.expect("connect"), &params).await;
            let got = summary(&replies(&mut cb, &[query(B_SEES)], Duration::from_secs(5)).await);
            let mut options = match isolation {
                Isolation::Shared => format!("-c pgtenant.tenant_id={}", b.id),
                _ => format!("-c search_path={}", b.id),
            };
            for (k, v) in settings {
                options += &format!(" -c {k}={}", v.replace(' ', "\\ "));
            }
            let mut direct = direct_with(&b.database, &options).await;
            let want = summary(&replies(&mut direct, &[query(B_SEES)], Duration::from_secs(5)).await);
            if got != want || !got.iter().any(|m| m.starts_with("D(") && m.contains(b.id.as_str())) {
                failures
                    .push(format!("{what} (tail {}):\n  pgtenant {got:?}\n  direct   {want:?}", tail.len()));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A client pipelining as libpq's pipeline mode does (Parse/Bind/Execute in separate writes,
/// the Sync last), each write within idle_transaction_timeout of the one before but the batch
/// longer than it, and a long statement in an unsynced batch whose Sync comes while the server
/// still runs it (the server never idle): neither is disconnected, in transaction or session
/// mode, with no query timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipelining_client_is_not_taken_for_an_idle_one() {
    let mut failures = Vec::new();
    for mode in [PoolMode::Transaction, PoolMode::Session] {
        let mut t = with_mode(tenant_db("pipeidle").await, mode, 1);
        t.timeouts.idle_transaction_timeout = Some(1.0);
        t.timeouts.query_timeout = None;
        let h = start(config(vec![t.clone()])).await;
        // Gaps of 0.6 s, 1.8 s in all.
        let mut c = raw_proxy(&h, &t.id).await;
        for _ in 0..3 {
            send(&mut c, &pbe("SELECT 1")).await;
            tokio::time::sleep(Duration::from_millis(600)).await;
        }
        send(&mut c, &sync()).await;
        let (got, closed) = read_ready(&mut c, 1, Duration::from_secs(5)).await;
        let rows = summary(&got).iter().filter(|m| m.starts_with("D(")).count();
        if closed || rows != 3 {
            failures.push(format!("{mode:?} gaps: {:?}", summary(&got)));
        }
        drop(c);
        // A 2.5 s statement, its Sync 1.5 s after it (the server busy all along).
        let mut c = raw_proxy(&h, &t.id).await;
        send(&mut c, &pbe("SELECT pg_sleep(2.5)")).await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        send(&mut c, &sync()).await;
        let (got, closed) = read_ready(&mut c, 1, Duration::from_secs(6)).await;
        if closed || sqlstate(&got).is_some() {
            failures.push(format!("{mode:?} long: {:?}", summary(&got)));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// a leaves the connection mid-way: an unsynced block (flushed or not), a COPY FROM STDIN
/// half-sent, an extended batch under another client_encoding, each by a dropped socket or
/// a Terminate. b, next on the one connection, runs its INSERT exactly once, in its schema,
/// and a's rows are never committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b_behind_a_left_mid_pipeline_runs_once_in_its_schema() {
    let (a, b) = tenant_pair(Isolation::Schema, Access::Write, 1).await;
    let (a, b) = (with_mode(a, PoolMode::Transaction, 1), with_mode(b, PoolMode::Transaction, 1));
    let h = start(config(vec![a.clone(), b.clone()])).await;
    let leavings: Vec<(&str, Vec<u8>)> = vec![
        ("unsynced block", cat(&[pbe("BEGIN"), pbe("INSERT INTO t VALUES (7, 'a')")])),
        ("flushed block", cat(&[pbe("BEGIN"), pbe("INSERT INTO t VALUES (7, 'a')"), flush()])),
        ("copy", cat(&[query("COPY t FROM STDIN"), copy_data("7\ta\n")])),
        (
            "encoding",
            cat(&[
                query("SET client_encoding = 'LATIN1'"),
                pbe("SELECT set_config('statement_timeout', '1ms', false)"),
                pbe("INSERT INTO t VALUES (7, 'a')"),
            ]),
        ),
    ];
    let mut failures = Vec::new();
    let mut runs: i64 = 0;
    for (what, leaving) in &leavings {
        for terminated in [false, true] {
            let mut ca = raw_proxy(&h, &a.id).await;
            let tail = if terminated { terminate() } else { vec![] };
            send(&mut ca, &cat(&[leaving.clone(), tail])).await;
            let _ = read_quiet(&mut ca, Duration::from_millis(200)).await;
            drop(ca);
            let mut cb = raw_proxy(&h, &b.id).await;
            let steps =
                [cat(&[pbe("INSERT INTO t VALUES (5, 'b')"), pbe("SELECT current_schema()"), sync()])];
            let got = summary(&replies(&mut cb, &steps, Duration::from_secs(5)).await);
            runs += 1;
            if !got.iter().any(|m| m == &format!("D({})", b.id)) || got.iter().any(|m| m.starts_with("E(")) {
                failures.push(format!("{what} ({terminated}): {got:?}"));
            }
        }
    }
    let su = admin(&a.database).await;
    let count = |schema: &str, id: i32| format!("SELECT count(*) FROM {schema}.t WHERE id = {id}");
    let a_rows: i64 = su.query_one(&count(&a.id, 7), &[]).await.expect("a").get(0);
    let b_rows: i64 = su.query_one(&count(&b.id, 5), &[]).await.expect("b").get(0);
    assert!(a_rows == 0 && b_rows == runs, "a's rows {a_rows}, b's {b_rows} of {runs}; {failures:#?}");
    assert!(failures.is_empty(), "{failures:#?}");
}

/// A FunctionCall of `oid` with one int4 argument in binary, its result in text.
fn function_call(oid: u32, arg: i32) -> Vec<u8> {
    let mut body = oid.to_be_bytes().to_vec();
    body.extend_from_slice(&[0, 1, 0, 1, 0, 1]);
    body.extend_from_slice(&4i32.to_be_bytes());
    body.extend_from_slice(&arg.to_be_bytes());
    body.extend_from_slice(&[0, 0]);
    let mut m = vec![b'F'];
    m.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
    m.extend_from_slice(&body);
    m
}

/// b's first messages on the connection a left are a FunctionCall of its own (int4abs, OID
/// 1397) and a Query, behind the handoff's FunctionCall reseed: b gets its own
/// FunctionCallResponse (not swallowed for the reseed's, nor the reseed's for its), as
/// PostgreSQL answers them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b_s_own_function_call_behind_the_reseed_is_answered_once() {
    let (a, b) = tenant_pair(Isolation::Schema, Access::Write, 1).await;
    let (a, b) = (with_mode(a, PoolMode::Transaction, 1), with_mode(b, PoolMode::Transaction, 1));
    let h = start(config(vec![a.clone(), b.clone()])).await;
    let steps = cat(&[function_call(1397, -5), query("SELECT current_schema()")]);
    let answer = |got: &[u8]| {
        let values: Vec<Vec<u8>> =
            messages(got).into_iter().filter(|(t, _)| *t == b'V').map(|(_, body)| body.to_vec()).collect();
        (summary(got), values)
    };
    let mut failures = Vec::new();
    for round in 0..2 {
        let mut ca = raw_proxy(&h, &a.id).await;
        replies(&mut ca, &[query("SELECT setseed(0.5)")], Duration::from_secs(5)).await;
        drop(ca);
        let mut cb = raw_proxy(&h, &b.id).await;
        send(&mut cb, &steps).await;
        let got = answer(&read_ready(&mut cb, 2, Duration::from_secs(5)).await.0);
        let mut direct = direct_with(&b.database, &format!("-c search_path={}", b.id)).await;
        send(&mut direct, &steps).await;
        let want = answer(&read_ready(&mut direct, 2, Duration::from_secs(5)).await.0);
        if got != want || want.1.len() != 1 {
            failures.push(format!("round {round}:\n  pgtenant {got:?}\n  direct   {want:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
