//! A hostile tenant a against the restore behind a reset (`client::restore`): pgtenant's own
//! statements, queued behind a client's RESET ALL / DISCARD ALL / RESET name / SET name TO
//! DEFAULT, must run where the reset ran (rolled back with it, skipped with it) and send the
//! client nothing PostgreSQL would not: each sequence is compared with a session straight to
//! PostgreSQL whose login gives it the tenant's search_path (`options`). And tenant b, next
//! on the one server connection, must find its own schema.

use std::time::Duration;

use pgtenant::model::{Isolation, PoolMode};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::UnixStream;

use super::*;
use crate::support::raw::*;
use crate::support::*;

/// A block whose second SET a savepoint rolls back before its COMMIT: PostgreSQL keeps the
/// first (a batch pgtenant does not follow SET by SET: its connection is reset before reuse).
pub(super) const SAVEPOINT_BATCH: [&str; 6] =
    ["BEGIN", "SET work_mem = '9MB'", "SAVEPOINT s", "SET work_mem = '11MB'", "ROLLBACK TO s", "COMMIT"];

/// Parse, Bind and Execute of `sql` as the unnamed statement and portal.
pub(super) fn pbe(sql: &str) -> Vec<u8> {
    cat(&[parse("", sql), bind("", ""), execute("")])
}

/// A raw session straight to PostgreSQL as the superuser, with `options` at its login.
pub(super) async fn direct_with(db: &str, options: &str) -> UnixStream {
    let sock = cluster().socket_dir.join(format!(".s.PGSQL.{}", cluster().port));
    let s = UnixStream::connect(sock).await.expect("connect socket");
    login(s, &[("user", "postgres"), ("database", db), ("options", options)]).await
}

/// A raw client of `tenant` through the proxy with `settings` in its startup packet.
async fn proxy_with(h: &Harness, tenant: &str, settings: &[(&str, &str)]) -> tokio::net::TcpStream {
    let user = format!("app.{tenant}");
    let mut params = vec![("user", user.as_str())];
    params.extend_from_slice(settings);
    login(tokio::net::TcpStream::connect(h.addr).await.expect("connect proxy"), &params).await
}

/// Sends each step and reads its replies (one ReadyForQuery per Sync or Query, within `limit`,
/// or until quiet when it has none); returns them all.
pub(super) async fn replies<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    steps: &[Vec<u8>],
    limit: Duration,
) -> Vec<u8> {
    let mut all = Vec::new();
    for step in steps {
        let syncs = messages(step).iter().filter(|(tag, _)| matches!(tag, b'S' | b'Q')).count();
        send(s, step).await;
        let (got, _) = if syncs == 0 {
            read_quiet(s, Duration::from_millis(400)).await
        } else {
            read_ready(s, syncs, limit).await
        };
        all.extend_from_slice(&got);
    }
    all
}

/// [`replies`] within 5 s each; returns the summary and the notices' severities and texts.
async fn run<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, steps: &[Vec<u8>]) -> (Vec<String>, Vec<String>) {
    let all = replies(s, steps, Duration::from_secs(5)).await;
    let notices = messages(&all)
        .into_iter()
        .filter(|(tag, _)| *tag == b'N')
        .map(|(_, body)| {
            format!("{}: {}", field(body, b'V').unwrap_or_default(), field(body, b'M').unwrap_or_default())
        })
        .collect();
    (summary(&all), notices)
}

/// Runs every sequence through pgtenant (a's client, a fresh connection each) and straight
/// to PostgreSQL; returns where they differ.
async fn differ(h: &Harness, a: &TenantConfig, sequences: &[(&str, Vec<Vec<u8>>)]) -> Vec<String> {
    differ_with(h, a, &[], &format!("-c search_path={}", a.id), sequences).await
}

/// [`differ`] with `settings` in the proxied client's startup packet and `options` (the
/// tenant's setting and those settings) in the direct session's.
async fn differ_with(
    h: &Harness,
    a: &TenantConfig,
    settings: &[(&str, &str)],
    options: &str,
    sequences: &[(&str, Vec<Vec<u8>>)],
) -> Vec<String> {
    let mut out = Vec::new();
    for (what, steps) in sequences {
        let mut proxied = proxy_with(h, &a.id, settings).await;
        let mut direct = direct_with(&a.database, options).await;
        let got = run(&mut proxied, steps).await;
        let want = run(&mut direct, steps).await;
        let tenant_row = format!("D({}", a.id);
        assert!(
            want.0.iter().any(|m| m.starts_with(&tenant_row)),
            "{what}: PostgreSQL never showed the tenant: {want:?}"
        );
        if got != want {
            out.push(format!("{what}:\n    pgtenant   {got:?}\n    postgresql {want:?}"));
        }
    }
    out
}

fn assert_same(differ: Vec<String>) {
    assert!(differ.is_empty(), "{} sequence(s) differ:\n  {}", differ.len(), differ.join("\n  "));
}

const SCHEMA: &str = "SELECT current_schema()";

/// A shared tenant's client's own login settings, and what shows them with the tenant's id.
const SHARED_SETTINGS: [(&str, &str); 2] = [("statement_timeout", "4s"), ("work_mem", "5MB")];
const SHOW: &str =
    "SELECT current_setting('pgtenant.tenant_id', true), current_setting('statement_timeout'), \
                    current_setting('work_mem')";

/// The `options` a session straight to PostgreSQL logs in with to stand for shared tenant
/// `a`'s client with [`SHARED_SETTINGS`].
fn shared_login(a: &TenantConfig) -> String {
    format!("-c pgtenant.tenant_id={} -c statement_timeout=4s -c work_mem=5MB", a.id)
}

/// Resets in an explicit transaction block that is then rolled back (whole, to a savepoint,
/// or failed before the reset), and a reset followed in the same pipeline by COMMIT: the
/// restore goes where the reset goes, and the client sees PostgreSQL's replies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_in_a_rolled_back_block_restores_where_postgresql_would() {
    let (a, b) = tenant_pair(Isolation::Schema, Access::Write, 1).await;
    let h = start(config(vec![a.clone(), b])).await;
    let q = |s: &str| query(s);
    let mut sequences = Vec::new();
    for reset in ["RESET ALL", "DISCARD ALL", "RESET search_path", "SET search_path TO DEFAULT"] {
        sequences.push((
            "savepoint rolled back",
            vec![
                q("BEGIN"),
                q("SAVEPOINT s"),
                q(reset),
                q(SCHEMA),
                q("ROLLBACK TO SAVEPOINT s"),
                q(SCHEMA),
                q("COMMIT"),
                q(SCHEMA),
            ],
        ));
        sequences.push((
            "failed block",
            vec![q("BEGIN"), q("SELECT 1/0"), q(reset), q(SCHEMA), q("ROLLBACK"), q(SCHEMA)],
        ));
        sequences.push((
            "failed savepoint",
            vec![
                q("BEGIN"),
                q("SAVEPOINT s"),
                q("SELECT 1/0"),
                q(reset),
                q("ROLLBACK TO s"),
                q(SCHEMA),
                q(reset),
                q(SCHEMA),
                q("ROLLBACK"),
                q(SCHEMA),
            ],
        ));
        sequences.push((
            "extended reset in a block, COMMIT in the same pipeline",
            vec![
                q("BEGIN"),
                cat(&[pbe(reset), pbe(SCHEMA), pbe("COMMIT"), sync()]),
                q(SCHEMA),
                q("ROLLBACK"),
                q(SCHEMA),
            ],
        ));
        sequences.push((
            "extended reset, then COMMIT with no block, one pipeline",
            vec![cat(&[pbe(reset), pbe("COMMIT"), pbe(SCHEMA), sync()]), q(SCHEMA)],
        ));
        sequences.push((
            "extended reset in a block, error, ROLLBACK",
            vec![
                q("BEGIN"),
                cat(&[pbe(reset), pbe("SELECT 1/0"), pbe(SCHEMA), sync()]),
                q(SCHEMA),
                q("ROLLBACK"),
                q(SCHEMA),
            ],
        ));
    }
    assert_same(differ(&h, &a, &sequences).await);
}

/// DISCARD ALL refused by the server (after another Execute in the pipeline, in a block),
/// then more statements before and after the Sync; and resets in a pipeline without Sync
/// ending with a Flush: the same replies, no notice from pgtenant's COMMIT, the same schema,
/// in transaction and session mode.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_and_flushed_extended_resets_reply_as_postgresql() {
    let (a, b) = tenant_pair(Isolation::Schema, Access::Write, 1).await;
    let h = start(config(vec![a.clone(), b])).await;
    let mut sequences = Vec::new();
    for reset in ["DISCARD ALL", "RESET ALL", "RESET search_path"] {
        sequences.push((
            "refused after another Execute",
            vec![
                cat(&[pbe("SELECT 1"), pbe(reset), pbe(SCHEMA), sync(), pbe(SCHEMA), sync()]),
                query(SCHEMA),
            ],
        ));
        sequences.push((
            "refused in a block",
            vec![query("BEGIN"), cat(&[pbe(reset), pbe(SCHEMA), sync()]), query("ROLLBACK"), query(SCHEMA)],
        ));
        sequences.push(("flushed, no Sync", vec![cat(&[pbe(reset), flush()]), cat(&[pbe(SCHEMA), sync()])]));
        sequences.push((
            "flushed, then an error, then Sync",
            vec![cat(&[pbe(reset), flush()]), cat(&[pbe("SELECT 1/0"), sync()]), query(SCHEMA)],
        ));
        sequences.push((
            "alone, described, synced",
            vec![
                cat(&[parse("", reset), describe(b'S', ""), bind("", ""), execute(""), sync()]),
                query(SCHEMA),
            ],
        ));
        sequences.push((
            "executed twice",
            vec![cat(&[parse("", reset), bind("", ""), execute(""), execute(""), sync()]), query(SCHEMA)],
        ));
    }
    let mut differs = differ(&h, &a, &sequences).await;
    // The same in session mode.
    let h = start(config(vec![with_mode(a.clone(), PoolMode::Session, 1)])).await;
    differs.extend(differ(&h, &a, &sequences).await.into_iter().map(|d| format!("session mode: {d}")));
    assert_same(differs);
}

/// A client_encoding changed before the reset (SQL_ASCII, EUC_JP, LATIN1): the restore's
/// text still sets the tenant's schema, and replies are PostgreSQL's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_under_another_client_encoding_restores_the_schema() {
    let (a, b) = tenant_pair(Isolation::Schema, Access::Write, 1).await;
    let h = start(config(vec![a.clone(), b])).await;
    let mut sequences = Vec::new();
    for enc in ["SQL_ASCII", "EUC_JP", "LATIN1"] {
        let set = format!("SET client_encoding TO '{enc}'");
        for reset in ["RESET search_path", "SET search_path TO DEFAULT", "RESET ALL", "DISCARD ALL"] {
            sequences.push(("simple", vec![query(&set), query(reset), query(SCHEMA)]));
            sequences.push((
                "extended",
                vec![query(&set), cat(&[pbe(reset), pbe(SCHEMA), sync()]), query(SCHEMA)],
            ));
        }
    }
    assert_same(differ(&h, &a, &sequences).await);
}

/// Tenant a leaves the one server connection (transaction mode) right after a reset: in a
/// flushed pipeline with no Sync, in an open block, in a failed one, with its encoding
/// changed. b's next statements run in b's schema and see b's table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b_after_a_resetting_leaver_gets_its_own_schema() {
    let (a, b) = tenant_pair(Isolation::Schema, Access::Write, 1).await;
    let h = start(config(vec![a.clone(), b.clone()])).await;
    let ways: Vec<(&str, Vec<Vec<u8>>)> = vec![
        ("flushed DISCARD ALL", vec![cat(&[pbe("DISCARD ALL"), flush()])]),
        ("flushed RESET ALL", vec![cat(&[pbe("RESET ALL"), flush()])]),
        ("RESET ALL in a block", vec![query("BEGIN"), query("RESET ALL")]),
        ("failed block", vec![query("BEGIN"), query("SELECT 1/0"), query("DISCARD ALL")]),
        ("encoding", vec![query("SET client_encoding TO 'SQL_ASCII'"), query("RESET search_path")]),
        ("extended in a block", vec![query("BEGIN"), cat(&[pbe("RESET search_path"), flush()])]),
    ];
    let mut failures = Vec::new();
    for (what, steps) in &ways {
        {
            let mut ca = raw_proxy(&h, &a.id).await;
            let _ = run(&mut ca, steps).await;
        }
        let cb = h.client(&b.id).await;
        match cb.query_one("SELECT current_schema()::text, (SELECT count(*) FROM t)::int", &[]).await {
            Ok(row) => {
                let schema: String = row.get(0);
                if schema != b.id {
                    failures.push(format!("{what}: b's schema is {schema:?}"));
                }
            }
            Err(e) => failures.push(format!("{what}: b: {}", why(&e))),
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// A shared tenant (`pgtenant.tenant_id`) whose client logged in with settings of its own:
/// every kind of reset, simple and extended, in and out of blocks, gives back the tenant's id
/// and the login's settings, with PostgreSQL's replies and notices.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_tenant_with_login_settings_gets_them_back_as_postgresql() {
    let (a, b) = tenant_pair(Isolation::Shared, Access::Write, 1).await;
    let h = start(config(vec![a.clone(), b])).await;
    let options = shared_login(&a);
    let q = |s: &str| query(s);
    // Two statements (one SET a Query: those are tracked).
    let set = || cat(&[query("SET statement_timeout = '1min'"), query("SET work_mem = '7MB'")]);
    let mut sequences = Vec::new();
    for reset in ["RESET ALL", "DISCARD ALL", "RESET work_mem", "SET statement_timeout TO DEFAULT"] {
        sequences.push(("simple", vec![set(), q(reset), q(SHOW)]));
        sequences.push(("extended", vec![set(), cat(&[pbe(reset), pbe(SHOW), sync()]), q(SHOW)]));
        sequences.push(("flushed", vec![set(), cat(&[pbe(reset), flush()]), cat(&[pbe(SHOW), sync()])]));
        sequences.push(("rolled back", vec![set(), q("BEGIN"), q(reset), q(SHOW), q("ROLLBACK"), q(SHOW)]));
    }
    assert_same(differ_with(&h, &a, &SHARED_SETTINGS, &options, &sequences).await);
}

/// An extended reset rolled back by a later error in its batch (before the Sync): on
/// PostgreSQL the client's SETs from before it come back with the rollback (RESET ALL,
/// RESET name, SET name TO DEFAULT; DISCARD ALL is committed as it completes and stays).
/// Through pgtenant they must too: the reset and the restore behind it are rolled back on
/// the server, so the client's tracked settings must not count the reset either. A SET in
/// the reset's place (no restore behind it) is the control.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_extended_reset_rolled_back_by_a_later_error_keeps_the_clients_sets() {
    let (a, b) = tenant_pair(Isolation::Shared, Access::Write, 1).await;
    let h = start(config(vec![a.clone(), b])).await;
    let options = shared_login(&a);
    let set = || cat(&[query("SET statement_timeout = '1min'"), query("SET work_mem = '7MB'")]);
    let mut sequences = Vec::new();
    for reset in [
        "SET work_mem = '9MB'",
        "DISCARD ALL",
        "RESET ALL",
        "RESET work_mem",
        "SET statement_timeout TO DEFAULT",
    ] {
        sequences.push((reset, vec![set(), cat(&[pbe(reset), pbe("SELECT 1/0"), sync()]), query(SHOW)]));
    }
    assert_same(differ_with(&h, &a, &SHARED_SETTINGS, &options, &sequences).await);
}

/// Batches that end outside a transaction block with SETs in them, some undone on the server
/// by a later error or ROLLBACK in the same batch (which abort its implicit transaction too),
/// some made permanent by a COMMIT before that: after tenant b used the one server connection,
/// a's work_mem is what PostgreSQL leaves a session at after the same messages, and b's is
/// the server's default whatever a left. A ROLLBACK TO SAVEPOINT in the batch (same tag as
/// ROLLBACK) drops every SET since the batch's last COMMIT: they lasted that transaction, as
/// a SET in a block does, and only b's side is compared there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_s_sets_are_followed_only_where_they_stuck() {
    let (a, b) = tenant_pair(Isolation::Schema, Access::Write, 1).await;
    let h = start(config(vec![a.clone(), b.clone()])).await;
    let batches: Vec<(&str, Vec<&str>)> = vec![
        ("error after the SET", vec!["SET work_mem = '9MB'", "SELECT 1/0"]),
        ("ROLLBACK with no block", vec!["SET work_mem = '9MB'", "ROLLBACK"]),
        ("ROLLBACK of a block", vec!["BEGIN", "SET work_mem = '9MB'", "ROLLBACK"]),
        (
            "committed block, then an error",
            vec!["BEGIN", "SET work_mem = '9MB'", "COMMIT", "SET work_mem = '11MB'", "SELECT 1/0"],
        ),
        (
            "COMMIT with no block, then ROLLBACK",
            vec!["SET work_mem = '9MB'", "COMMIT", "SET work_mem = '11MB'", "ROLLBACK"],
        ),
        ("DISCARD ALL, then an error", vec!["DISCARD ALL", "SET work_mem = '9MB'", "SELECT 1/0"]),
        ("DISCARD ALL, then a SET", vec!["DISCARD ALL", "SET work_mem = '9MB'"]),
        ("error before the SET", vec!["SELECT 1/0", "SET work_mem = '9MB'"]),
        ("two SETs, no error", vec!["SET work_mem = '9MB'", "SET work_mem = '11MB'"]),
    ];
    let mut failures = Vec::new();
    for (what, statements) in batches.iter().chain([("savepoint", SAVEPOINT_BATCH.to_vec())].iter()) {
        let batch = cat(&statements.iter().map(|s| pbe(s)).chain([sync()]).collect::<Vec<_>>());
        let steps = [query("SET work_mem = '7MB'"), batch];
        let show = [query("SHOW work_mem")];
        let mut direct = direct_with(&a.database, &format!("-c search_path={}", a.id)).await;
        run(&mut direct, &steps).await;
        let (want, _) = run(&mut direct, &show).await;
        let mut ca = raw_proxy(&h, &a.id).await;
        run(&mut ca, &steps).await;
        let cb = h.client(&b.id).await;
        let row = cb
            .query_one("SELECT current_schema()::text, current_setting('work_mem')", &[])
            .await
            .expect("b's query");
        let (schema, work_mem): (String, String) = (row.get(0), row.get(1));
        if schema != b.id || work_mem != "4MB" {
            failures.push(format!("{what}: b got schema {schema:?}, work_mem {work_mem:?}"));
        }
        drop(cb);
        let (got, _) = run(&mut ca, &show).await;
        if *what != "savepoint" && got != want {
            failures.push(format!("{what}: a after the handoff {got:?}, PostgreSQL {want:?}"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// The cause found by the test above is not the restore's alone: a plain extended SET rolled
/// back by a later error in its batch is tracked as if it had stuck, which shows once the
/// client's settings are replayed on a connection (here after b used the one connection):
/// PostgreSQL keeps the SET before the batch (7MB), pgtenant replays the rolled-back one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_extended_set_rolled_back_by_a_later_error_is_not_replayed() {
    let (a, b) = tenant_pair(Isolation::Schema, Access::Write, 1).await;
    let h = start(config(vec![a.clone(), b.clone()])).await;
    let mut ca = raw_proxy(&h, &a.id).await;
    let steps = [
        query("SET work_mem = '7MB'"),
        cat(&[pbe("SET work_mem = '9MB'"), pbe("SELECT 1/0"), sync()]),
        query("SHOW work_mem"),
    ];
    let (first, _) = run(&mut ca, &steps).await;
    assert!(first.contains(&"E(22012)".to_owned()) && first.contains(&"D(7MB)".to_owned()), "{first:?}");
    // b takes the one connection (a is idle between transactions), then a gets it back.
    let cb = h.client(&b.id).await;
    let row = cb.query_one("SELECT current_schema()::text", &[]).await.expect("b's query");
    assert_eq!(row.get::<_, String>(0), b.id);
    drop(cb);
    let (again, _) = run(&mut ca, &[query("SHOW work_mem"), query(SCHEMA)]).await;
    let schema_row = format!("D({})", a.id);
    assert!(again.contains(&schema_row), "a's schema: {again:?}");
    assert!(again.contains(&"D(7MB)".to_owned()), "a's work_mem after the rolled-back SET: {again:?}");
}

/// A forwarder to the cluster that holds back, for `delay`, what pgtenant writes upstream
/// behind a client's simple Query `after` (in the same write: the restore pgtenant queues
/// behind a reset), so the client gets the reset's reply well before the restore's is in.
pub(super) async fn slow_behind(after: Vec<Vec<u8>>, delay: Duration) -> u16 {
    upstream_tap(move |chunk| {
        let split = after
            .iter()
            .find_map(|q| chunk.windows(q.len()).position(|w| w == q.as_slice()).map(|p| p + q.len()));
        (split.unwrap_or(chunk.len()), delay)
    })
    .await
}

/// A client that runs a reset and leaves as soon as it is answered (a pool returning and
/// closing a connection), before the restore pgtenant queued behind the reset is answered (a
/// forwarder holds the restore back 300 ms): the restore is answered without the client, and
/// the server connection goes back to the pool. Before, the Terminate went to the server
/// with the restore still due and the connection was closed (which failed the session-mode
/// settings test now and then on a busy machine). The next client gets the same backend, in
/// its tenant's schema, in session and in transaction mode, after each kind of reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_right_after_a_reset_keeps_the_connection_pooled() {
    let (a, _) = tenant_pair(Isolation::Schema, Access::Write, 1).await;
    let resets = ["RESET ALL", "DISCARD ALL", "RESET search_path", "SET search_path TO DEFAULT"];
    let port = slow_behind(resets.iter().map(|r| query(r)).collect(), Duration::from_millis(300)).await;
    let mut failures = Vec::new();
    for mode in [PoolMode::Session, PoolMode::Transaction] {
        let mut cfg = config(vec![with_mode(a.clone(), mode, 1)]);
        cfg.upstreams[0].port = port;
        let h = start(cfg).await;
        let backend = || async {
            let c = h.client(&a.id).await;
            let row =
                c.query_one("SELECT pg_backend_pid(), current_schema()::text", &[]).await.expect("a's query");
            (row.get::<_, i32>(0), row.get::<_, String>(1))
        };
        let (first, _) = backend().await;
        for reset in resets {
            let mut s = raw_proxy(&h, &a.id).await;
            send(&mut s, &cat(&[query("SET work_mem = '9MB'"), query(reset)])).await;
            let (got, _) = read_ready(&mut s, 2, Duration::from_secs(5)).await;
            assert_eq!(ready_count(&got), 2, "{mode:?} {reset}: {:?}", summary(&got));
            send(&mut s, &terminate()).await;
            let (rest, _) = read_eof(&mut s, Duration::from_secs(5)).await;
            assert!(rest.is_empty(), "{mode:?} {reset}: after the Terminate: {:?}", summary(&rest));
            let (pid, schema) = backend().await;
            if pid != first || schema != a.id {
                failures.push(format!("{mode:?} {reset}: backend {pid} (first {first}), schema {schema:?}"));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
