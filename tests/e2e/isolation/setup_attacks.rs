//! A hostile tenant b against the session setup (unsynced BEGIN, `SET search_path`, `SELECT
//! set_config`, COMMIT in front of b's first messages), on a pool of one shared with tenant
//! a: whatever b sends behind a setup that fails runs nowhere; behind one that succeeds b
//! gets exactly what PostgreSQL would answer; each client keeps its own settings at every
//! handoff; and a setting PostgreSQL accepts never makes the setup fail.

use std::time::Duration;

use pgtenant::model::Isolation;

use super::setup::{held_behind_a_setup, ids};
use super::*;
use crate::support::raw::*;
use crate::support::*;

/// b's messages of one write, none of them a Sync before the first INSERT: the server skips
/// them all once the setup fails (a Flush, CopyData, CopyDone and CopyFail included), and
/// what follows b's first Sync is held by pgtenant until the setup's verdict.
fn unsynced_pipelines() -> Vec<(&'static str, Vec<u8>)> {
    let flush = || msg(b'H', b"");
    let insert = |id: u32| format!("INSERT INTO t VALUES ({id}, 'attack')");
    vec![
        ("a Sync alone first", cat(&[sync(), query(&insert(1)), sync()])),
        (
            "flushes around an extended INSERT",
            cat(&[
                flush(),
                parse("", &insert(2)),
                bind("", ""),
                flush(),
                execute(""),
                flush(),
                sync(),
                query(&insert(3)),
            ]),
        ),
        (
            "COPY with its data, then a query",
            cat(&[query("COPY t FROM STDIN"), copy_data("4\tc\n"), copy_done(), query(&insert(5)), sync()]),
        ),
        (
            "COPY failed by the client, then a query",
            cat(&[query("COPY t FROM STDIN"), copy_fail("no"), query(&insert(6))]),
        ),
        ("a multi-statement query", cat(&[query(&format!("{}; {}", insert(7), insert(8))), sync()])),
        ("a FunctionCall (nextval of b's sequence)", cat(&[nextval_call(), query(&insert(12)), sync()])),
        (
            "an extended INSERT and a simple one before the Sync",
            cat(&[
                parse("", &insert(9)),
                bind("", ""),
                execute(""),
                query(&insert(10)),
                sync(),
                query(&insert(11)),
            ]),
        ),
    ]
}

/// A FunctionCall message of `nextval('a_seq')` (nextval(regclass) is OID 1574, its argument
/// in text format).
fn nextval_call() -> Vec<u8> {
    let mut body = 1574i32.to_be_bytes().to_vec();
    body.extend(1i16.to_be_bytes());
    body.extend(0i16.to_be_bytes());
    body.extend(1i16.to_be_bytes());
    body.extend(5i32.to_be_bytes());
    body.extend(b"a_seq");
    body.extend(0i16.to_be_bytes());
    msg(b'F', &body)
}

/// Each pipeline goes behind a setup that fails (b's tracked text search configuration was
/// dropped): b is told why and closed, nothing of it runs, and a is still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_setup_lets_nothing_the_client_sent_run() {
    let mut f = Failures::default();
    for (what, pipeline) in unsynced_pipelines() {
        let (_h, su, ca, b, mut rb) = held_behind_a_setup(true).await;
        send(&mut rb, &pipeline).await;
        let (got, closed) = read_eof(&mut rb, Duration::from_secs(8)).await;
        let s = summary(&got);
        f.check(closed, || format!("{what}: b is not closed: {s:?}"));
        f.check(s.len() == 1 && s[0].starts_with("E(22023"), || format!("{what}: b got {s:?}"));
        let public = ids(&su, "public.t").await;
        f.check(public.is_empty(), || format!("{what}: ran on the reset search_path: {public}"));
        let own = ids(&su, &format!("\"{}\".t", b.id)).await;
        f.check(own.is_empty(), || format!("{what}: ran although the setup failed: {own}"));
        let sql = format!("SELECT is_called FROM \"{}\".a_seq", b.id);
        let called: bool = su.query_one(&sql, &[]).await.expect("b's sequence").get(0);
        f.check(!called, || format!("{what}: b's sequence advanced although the setup failed"));
        let served = ca.query_one("SELECT 1", &[]).await.is_ok();
        f.check(served, || format!("{what}: a is not served after b's failed setup"));
    }
    f.assert_none();
}

/// Sends `bytes` to a raw session and reads until `syncs` ReadyForQuerys.
async fn transcript<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    s: &mut S,
    bytes: &[u8],
    syncs: usize,
) -> Vec<String> {
    send(s, bytes).await;
    let (got, _) = read_ready(s, syncs, Duration::from_secs(8)).await;
    summary(&got)
}

/// b's first messages behind a setup that succeeds are transaction control and statements of
/// its own unnamed statement: `COMMIT` with no transaction, `BEGIN` and a `SELECT` in one
/// Sync, a simple `COMMIT`, a session SET, a multi-statement query, an Execute of a portal
/// gone with its transaction and a Describe of the unnamed statement. b gets exactly what
/// PostgreSQL answers the same bytes on a fresh session (none of the setup's BEGIN/COMMIT
/// replies, none taken for its own), and its INSERT then lands in its own schema.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_statements_behind_a_setup_are_answered_as_postgres_answers_them() {
    let (_h, su, _ca, b, mut rb) = held_behind_a_setup(false).await;
    let pipeline = cat(&[
        parse("", "COMMIT"),
        bind("", ""),
        execute(""),
        sync(),
        parse("", "BEGIN"),
        bind("", ""),
        execute(""),
        parse("", "SELECT 1"),
        bind("", ""),
        describe(b'P', ""),
        execute(""),
        sync(),
        query("COMMIT"),
        parse("", "SET extra_float_digits TO 1"),
        bind("", ""),
        execute(""),
        sync(),
        query("SELECT 1; SELECT 2"),
        execute(""),
        sync(),
        describe(b'S', ""),
        sync(),
    ]);
    let syncs = 7;
    let proxied = transcript(&mut rb, &pipeline, syncs).await;
    let mut direct = raw_direct(&b.database).await;
    let expected = transcript(&mut direct, &pipeline, syncs).await;
    assert_eq!(proxied, expected, "b's transcript differs from PostgreSQL's");
    let inserted = transcript(&mut rb, &query("INSERT INTO t VALUES (42, 'b')"), 1).await;
    assert_eq!(inserted, ["C(INSERT 0 1)", "Z(I)"]);
    assert_eq!(ids(&su, &format!("\"{}\".t", b.id)).await, "42");
    assert_eq!(ids(&su, "public.t").await, "");
    // The FunctionCall the failing pipelines carry does run behind a setup that succeeds.
    let called = transcript(&mut rb, &nextval_call(), 1).await;
    assert_eq!(called, ["V", "Z(I)"], "b's FunctionCall");
    let sql = format!("SELECT is_called FROM \"{}\".a_seq", b.id);
    assert!(su.query_one(&sql, &[]).await.expect("b's sequence").get::<_, bool>(0));
}

/// The setup's own unnamed statement and portal (its COMMIT's, last) are out of b's reach:
/// a Bind of the unnamed statement, a Describe or Execute of the unnamed portal and a Close
/// of it, as b's first messages behind the setup, are answered as on a fresh PostgreSQL
/// session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_setups_unnamed_statement_and_portal_are_out_of_reach() {
    let (_h, _su, _ca, b, mut rb) = held_behind_a_setup(false).await;
    let pipeline = cat(&[
        describe(b'P', ""),
        sync(),
        execute(""),
        sync(),
        bind("", ""),
        execute(""),
        sync(),
        describe(b'S', ""),
        sync(),
        close(b'P', ""),
        sync(),
    ]);
    let proxied = transcript(&mut rb, &pipeline, 5).await;
    let mut direct = raw_direct(&b.database).await;
    let expected = transcript(&mut direct, &pipeline, 5).await;
    assert_eq!(proxied, expected, "b reached something of the setup's");
}

/// Settings that last one transaction (`transaction_isolation`, `transaction_deferrable`,
/// `transaction_read_only`): PostgreSQL takes a session SET of them outside a transaction
/// block and the next transaction starts from the defaults again. A client that sets one
/// must be served at its next handoff, with the defaults in force, not have its session
/// ended by a setup that replays the value after a query (25001 "must be called before
/// any query").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_of_a_transaction_setting_never_fails_the_next_setup() {
    let (a, b) = tenant_pair(Isolation::Schema, Access::Write, 1).await;
    let h = start_quick(vec![a.clone(), b.clone()]).await;
    let mut f = Failures::default();
    for (set, show, want) in [
        ("SET transaction_isolation = 'serializable'", "transaction_isolation", "read committed"),
        ("SET transaction_deferrable = on", "transaction_deferrable", "off"),
        ("SET transaction_read_only = on", "transaction_read_only", "off"),
    ] {
        let cb = h.client(&b.id).await;
        if let Err(e) = cb.batch_execute(set).await {
            f.0.push(format!("{set}: refused ({})", why(&e)));
            continue;
        }
        let ca = h.client(&a.id).await;
        let p0 = pid(&ca).await;
        match rows(&cb, &format!("SELECT current_setting('{show}'), pg_backend_pid()")).await {
            Ok(r) => {
                f.check(r[0][0] == want, || format!("{set}: b's next transaction has {show} = {}", r[0][0]));
                f.check(r[0][1] == p0.to_string(), || format!("{set}: not the pool's one connection"));
            }
            Err(e) => f.0.push(format!("{set}: b's next statement after a handoff failed: {}", why(&e))),
        }
    }
    f.assert_none();
}

/// A `search_path` option PostgreSQL accepts as it is (`$user,public`, the default without
/// its quotes; a mixed-case name, which PostgreSQL folds) in a tenant whose isolation leaves
/// search_path to the client (shared): b's statements run, on the schemas PostgreSQL would
/// search, and see only b's rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_search_path_option_postgres_accepts_never_fails_the_setup() {
    let (a, b) = tenant_pair(Isolation::Shared, Access::Write, 1).await;
    let h = start_quick(vec![a.clone(), b.clone()]).await;
    let mut f = Failures::default();
    for option in ["$user,public", "Public", "public,user"] {
        let cb = connect_str(&format!("{} options='-c search_path={option}'", h.conninfo(&b.id))).await;
        let sql = "SELECT current_schemas(false)::text, (SELECT string_agg(DISTINCT owner, ',') FROM items)";
        match rows(&cb, sql).await {
            Ok(r) => f.check(r == vec![vec!["{public}".to_owned(), b.id.clone()]], || {
                format!("search_path={option}: b sees {r:?}")
            }),
            Err(e) => f.0.push(format!("search_path={option}: b's first statement failed: {}", why(&e))),
        }
    }
    f.assert_none();
}

/// The values of the ParameterStatus messages in a transcript.
fn statuses(bytes: &[u8]) -> Vec<(String, String)> {
    messages(bytes)
        .into_iter()
        .filter(|(t, _)| *t == b'S')
        .filter_map(|(_, body)| {
            let mut parts = body.split(|b| *b == 0).map(|p| String::from_utf8_lossy(p).into_owned());
            Some((parts.next()?, parts.next()?))
        })
        .collect()
}

/// Two clients of b with settings of their own (TimeZone, DateStyle, application_name, a
/// `-c` option) and a client of a with others take turns on the pool's one connection; each
/// sees exactly its own settings at every turn, including right after its first statement
/// behind a setup failed (a failing single query, or the second of a multi-statement query:
/// the setup's COMMIT keeps it), and no ParameterStatus of another client's value reaches it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_client_keeps_its_own_settings_through_handoffs_and_failing_first_statements() {
    let (a, b) = tenant_pair(Isolation::Schema, Access::Write, 1).await;
    let h = start_quick(vec![a.clone(), b.clone()]).await;
    let user = format!("app.{}", b.id);
    let mut clients = Vec::new();
    for (tz, style, app, digits) in
        [("Asia/Tokyo", "German, DMY", "b-one", "2"), ("America/Lima", "SQL, MDY", "b-two", "-3")]
    {
        let stream = tokio::net::TcpStream::connect(h.addr).await.expect("connect");
        let options = format!("-c extra_float_digits={digits}");
        let params = [
            ("user", user.as_str()),
            ("TimeZone", tz),
            ("DateStyle", style),
            ("application_name", app),
            ("options", &options),
        ];
        let s = login(stream, &params).await;
        let want = format!("{tz}/{style}/{app}/{digits}/{{{}}}", b.id);
        clients.push((s, want, [("TimeZone", tz), ("DateStyle", style), ("application_name", app)]));
    }
    let ca = connect_str(&format!(
        "{} options='-c TimeZone=Europe/Paris -c extra_float_digits=1'",
        h.conninfo(&a.id)
    ))
    .await;
    let state = "SELECT current_setting('TimeZone') || '/' || current_setting('DateStyle') || '/' \
                 || current_setting('application_name') || '/' || current_setting('extra_float_digits') \
                 || '/' || current_schemas(false)::text";
    let mut f = Failures::default();
    for round in 0..3 {
        for (i, (s, want, own)) in clients.iter_mut().enumerate() {
            let seen: Vec<String> =
                rows(&ca, "SELECT current_setting('TimeZone')").await.expect("a").concat();
            f.check(seen == ["Europe/Paris"], || format!("round {round}: a sees {seen:?}"));
            // The first statement behind b's setup fails; the next runs on the same connection
            // with no setup in front of it.
            let failing = if round % 2 == 0 { "SELECT 1/0" } else { "SELECT 1; SELECT 1/0" };
            send(s, &query(failing)).await;
            let (got, _) = read_ready(s, 1, Duration::from_secs(5)).await;
            let first = summary(&got);
            f.check(
                first.last().is_some_and(|z| z == "Z(I)") && first.contains(&"E(22012)".to_owned()),
                || format!("round {round}, b{i}: the failing statement got {first:?}"),
            );
            send(s, &query(state)).await;
            let (got2, _) = read_ready(s, 1, Duration::from_secs(5)).await;
            let second = summary(&got2);
            f.check(second.contains(&format!("D({want})")), || {
                format!("round {round}, b{i}: sees {second:?}")
            });
            for (k, v) in statuses(&[got, got2].concat()) {
                let foreign = own.iter().any(|(n, mine)| n.eq_ignore_ascii_case(&k) && *mine != v);
                f.check(!foreign, || format!("round {round}, b{i}: ParameterStatus {k}={v}"));
            }
        }
    }
    f.assert_none();
}

/// A client's own `SET search_path` in a tenant that leaves search_path to it (shared
/// isolation), in the spellings PostgreSQL takes — a string literal (one name, its case kept,
/// a comma or a space in it), a quoted name, a plain mixed-case one (folded), `$user` — is
/// replayed by the setup at the next handoff with the meaning PostgreSQL gave it: after a's
/// turn on the one connection, b's `SHOW search_path` is what PostgreSQL shows after the same
/// SET.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_search_path_set_by_the_client_is_replayed_with_postgres_meaning() {
    let (a, b) = tenant_pair(Isolation::Shared, Access::Write, 1).await;
    let h = start_quick(vec![a.clone(), b.clone()]).await;
    let direct = admin(&b.database).await;
    let ca = h.client(&a.id).await;
    let mut f = Failures::default();
    for set in [
        "SET search_path = 'MySchema'",
        "SET search_path TO 'My Schema', public",
        "SET search_path TO 'a,b'",
        "SET search_path TO \"Mixed\", public",
        "SET search_path TO Plain, public",
        "SET search_path = \"$user\", 'it''s'",
    ] {
        direct.batch_execute(set).await.expect("PostgreSQL takes the SET");
        let want = rows(&direct, "SHOW search_path").await.expect("SHOW");
        let cb = h.client(&b.id).await;
        if let Err(e) = cb.batch_execute(set).await {
            f.0.push(format!("{set}: refused through pgtenant ({})", why(&e)));
            continue;
        }
        let _ = pid(&ca).await;
        match rows(&cb, "SHOW search_path").await {
            Ok(got) => {
                f.check(got == want, || format!("{set}: b sees {got:?} after a handoff, PostgreSQL {want:?}"))
            }
            Err(e) => f.0.push(format!("{set}: b's next statement after a handoff failed: {}", why(&e))),
        }
    }
    f.assert_none();
}

/// b's setup fails at its first checkout in both pool modes, with `search_path_public` (b's
/// search_path is `"b", public`, so a statement run on the reset search_path and one run with
/// the setup both find a `t`): b's startup asks for `default_text_search_config =
/// public.myconf`, dropped before b connects. b is told why and closed, nothing of its
/// pipeline (both Syncs, COPY, Terminate) runs anywhere, and a is served afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_setup_failing_at_the_first_checkout_runs_nothing_in_either_pool_mode() {
    use pgtenant::model::PoolMode;
    let mut f = Failures::default();
    for mode in [PoolMode::Session, PoolMode::Transaction] {
        let (mut a, mut b, su) = super::setup::pair_with_a_configuration().await;
        a.pool_mode = Some(mode);
        b.pool_mode = Some(mode);
        b.search_path_public = true;
        let h = start_quick(vec![a.clone(), b.clone()]).await;
        {
            let ca = h.client(&a.id).await;
            let _ = pid(&ca).await;
        }
        su.batch_execute("DROP TEXT SEARCH CONFIGURATION public.myconf").await.expect("drop");
        let user = format!("app.{}", b.id);
        let stream = tokio::net::TcpStream::connect(h.addr).await.expect("connect");
        let options = "-c default_text_search_config=public.myconf";
        let mut rb = login(stream, &[("user", &user), ("options", options)]).await;
        send(&mut rb, &super::setup::held_pipeline()).await;
        let (got, closed) = read_eof(&mut rb, Duration::from_secs(8)).await;
        let s = summary(&got);
        f.check(closed && s.len() == 1 && s[0].starts_with("E(22023"), || format!("{mode:?}: b got {s:?}"));
        let public = ids(&su, "public.t").await;
        f.check(public.is_empty(), || format!("{mode:?}: ran on the reset search_path: {public}"));
        let own = ids(&su, &format!("\"{}\".t", b.id)).await;
        f.check(own.is_empty(), || format!("{mode:?}: ran although the setup failed: {own}"));
        let served = h.client(&a.id).await.query_one("SELECT 1", &[]).await.is_ok();
        f.check(served, || format!("{mode:?}: a is not served afterwards"));
    }
    f.assert_none();
}

/// The server sends the replies of unsynced statements only when its output is flushed (a
/// Sync's ReadyForQuery, a Flush, a full buffer): the setup's replies would wait for the
/// client's first statement behind them to finish. A first statement after a handoff that
/// runs longer than the reset's bound (5 s) must still run to its end, and the client's
/// cancel must reach it meanwhile (its key is attached once the setup's replies are read).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_first_statement_behind_a_setup_runs_and_can_be_cancelled() {
    let (a, b) = tenant_pair(Isolation::Schema, Access::Write, 1).await;
    let h = start_quick(vec![a.clone(), b.clone()]).await;
    let ca = h.client(&a.id).await;
    let user = format!("app.{}", b.id);

    // A cancel, one second into b's first statement behind the setup.
    let mut rb = tokio::net::TcpStream::connect(h.addr).await.expect("connect");
    send(&mut rb, &startup_packet(&[("user", &user)])).await;
    let (got, _) = read_ready(&mut rb, 1, Duration::from_secs(5)).await;
    let key = messages(&got).into_iter().find(|(t, _)| *t == b'K').map(|(_, k)| k.to_vec()).expect("a key");
    let _ = pid(&ca).await;
    let started = std::time::Instant::now();
    send(&mut rb, &query("SELECT pg_sleep(30)")).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut cancel = 16i32.to_be_bytes().to_vec();
    cancel.extend_from_slice(&80_877_102i32.to_be_bytes());
    cancel.extend_from_slice(&key);
    let _ = raw_exchange(h.addr, &cancel, Duration::from_secs(5)).await;
    let (got, _) = read_ready(&mut rb, 1, Duration::from_secs(10)).await;
    assert_eq!(
        summary(&got),
        ["T", "E(57014)", "Z(I)"],
        "b's cancel of its first statement, after {:?}",
        started.elapsed()
    );
    assert!(started.elapsed() < Duration::from_secs(4), "the cancel took {:?}", started.elapsed());

    // A first statement that runs past the reset's bound.
    let _ = pid(&ca).await;
    let got = transcript(&mut rb, &query("SELECT pg_sleep(6)::text"), 1).await;
    assert_eq!(got, ["T", "D()", "C(SELECT 1)", "Z(I)"], "b's 6 s statement behind its setup");
}

/// b1 leaves serializable, read-only, deferrable transaction defaults on the pool's one
/// connection (`SET SESSION CHARACTERISTICS`, tracked); b2, another client of b, gets it with
/// a setup in front of its first statement. The setup's transaction must not take b1's
/// defaults: a serializable read-only deferrable transaction's first snapshot waits for every
/// concurrent serializable read-write transaction to end, and b2's statement would wait with
/// it (until the reset's bound ended b2's session), where on PostgreSQL b2 runs at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_setups_transaction_never_waits_for_a_previous_clients_deferrable_default() {
    let (a, b) = tenant_pair(Isolation::Schema, Access::Write, 1).await;
    let h = start_quick(vec![a.clone(), b.clone()]).await;
    let b1 = h.client(&b.id).await;
    for mode in ["ISOLATION LEVEL SERIALIZABLE", "READ ONLY", "DEFERRABLE"] {
        b1.batch_execute(&format!("SET SESSION CHARACTERISTICS AS TRANSACTION {mode}"))
            .await
            .expect("b1's default");
    }
    let p0 = pid(&b1).await;
    let writer = admin(&b.database).await;
    writer
        .batch_execute("BEGIN ISOLATION LEVEL SERIALIZABLE; SELECT count(*) FROM pg_class")
        .await
        .expect("a serializable read-write transaction, left open");
    let b2 = connect_str(&format!("{} application_name=b-two", h.conninfo(&b.id))).await;
    let started = std::time::Instant::now();
    let got = tokio::time::timeout(
        Duration::from_secs(8),
        rows(&b2, "SELECT pg_backend_pid()::text, current_setting('transaction_isolation')"),
    )
    .await;
    let waited = started.elapsed();
    writer.batch_execute("COMMIT").await.expect("commit");
    let got = got.expect("b2's statement ends").map_err(|e| why(&e));
    assert_eq!(got, Ok(vec![vec![p0.to_string(), "read committed".to_owned()]]), "after {waited:?}");
    assert!(waited < Duration::from_secs(2), "b2 waited {waited:?}");
}

/// b1 of tenant b leaves `client_encoding = LATIN1` on the pool's one connection; b2 of b, a
/// UTF-8 client with non-ASCII settings of its own (application_name `café`, a `-c` option
/// `Zürich`), gets it with a setup in front of its first statement. The server reads the
/// setup's text in the encoding the connection has then (b1's): b2's values must arrive as
/// b2 gave them, not read as LATIN1 (`ZÃ¼rich`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_setup_keeps_non_ascii_values_whatever_encoding_the_previous_client_left() {
    let (a, b) = tenant_pair(Isolation::Schema, Access::Write, 1).await;
    let h = start_quick(vec![a.clone(), b.clone()]).await;
    let b1 = connect_str(&format!("{} options='-c client_encoding=LATIN1'", h.conninfo(&b.id))).await;
    let p0 = pid(&b1).await;
    let b2 =
        connect_str(&format!("{} application_name=café options='-c myapp.city=Zürich'", h.conninfo(&b.id)))
            .await;
    let sql = "SELECT pg_backend_pid()::text, current_setting('application_name'), \
               current_setting('myapp.city'), current_setting('client_encoding')";
    let got = rows(&b2, sql).await.map_err(|e| why(&e));
    // application_name as PostgreSQL shows `café` (printable ASCII kept, `?` for each other
    // byte of the UTF-8 text): read as LATIN1 it would have four.
    let want = [p0.to_string(), "caf??".to_owned(), "Zürich".to_owned(), "UTF8".to_owned()];
    assert_eq!(got, Ok(vec![want.to_vec()]));
}

/// A proxy for `tenants` (giving up on a checkout after 3 s) whose connections to the cluster
/// go through a forwarder that keeps a copy of everything pgtenant writes upstream.
pub(super) async fn recorded(
    tenants: Vec<TenantConfig>,
) -> (Harness, std::sync::Arc<std::sync::Mutex<Vec<u8>>>) {
    let sent = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = sent.clone();
    let port = upstream_tap(move |chunk| {
        record.lock().expect("lock").extend_from_slice(chunk);
        (chunk.len(), Duration::ZERO)
    })
    .await;
    let mut cfg = config(tenants);
    cfg.pool.checkout_timeout = 3.0;
    cfg.upstreams[0].port = port;
    (start(cfg).await, sent)
}

/// Clients whose only setting of their own is application_name (psql, pgbench, most
/// drivers) get it at every handoff as a `SET application_name` beside the tenant's `SET
/// search_path`, with no transaction of its own (no BEGIN ... COMMIT): values with a quote,
/// a backslash and non-ASCII text arrive as the client gave them, after a client of its
/// tenant left LATIN1 on the connection and after a client of the other tenant; a client
/// without one gets the pool's back; another session sees each in `pg_stat_activity`; behind
/// a client with the same statement timeout as its own, too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_application_name_alone_is_set_without_a_transaction_and_arrives_as_given() {
    let (a, b) = tenant_pair(Isolation::Schema, Access::Write, 1).await;
    let (h, sent) = recorded(vec![a.clone(), b.clone()]).await;
    let a0 = h.client(&a.id).await;
    let p0 = pid(&a0).await;
    let pool_value = rows(&a0, "SELECT current_setting('application_name')").await.expect("a0")[0][0].clone();
    let b1 = connect_str(&format!("{} options='-c client_encoding=LATIN1'", h.conninfo(&b.id))).await;
    assert_eq!(pid(&b1).await, p0);
    let admin = admin("postgres").await;
    let shown = |pid: i32| {
        let admin = &admin;
        async move {
            let row = admin
                .query_one("SELECT application_name FROM pg_stat_activity WHERE pid = $1", &[&pid])
                .await
                .expect("pg_stat_activity");
            row.get::<_, String>(0)
        }
    };
    let sql = "SELECT pg_backend_pid()::text, current_setting('application_name'), current_schema()";
    // b2 after b1 (same tenant, LATIN1 left), a2 after b2 (another tenant: DISCARD ALL first),
    // a3 without a value of its own after a2.
    let cases = [
        (&b, Some(r"it\'s a \\ café"), "it's a \\ caf??", b.id.as_str()),
        (&a, Some("a-app"), "a-app", a.id.as_str()),
        (&a, None, pool_value.as_str(), a.id.as_str()),
    ];
    for (tenant, app, want, schema) in cases {
        let before = sent.lock().expect("lock").len();
        let conninfo = match app {
            Some(app) => format!("{} application_name='{app}'", h.conninfo(&tenant.id)),
            None => h.conninfo(&tenant.id),
        };
        let c = connect_str(&conninfo).await;
        let got = rows(&c, sql).await.map_err(|e| why(&e));
        let want_row = vec![p0.to_string(), want.to_owned(), schema.to_owned()];
        assert_eq!(got, Ok(vec![want_row]), "{app:?}");
        assert_eq!(shown(p0).await, want, "{app:?} in pg_stat_activity");
        let wrote = String::from_utf8_lossy(&sent.lock().expect("lock")[before..]).into_owned();
        assert!(wrote.contains("SET application_name TO "), "{app:?}: {wrote:?}");
        assert!(!wrote.contains("BEGIN") && !wrote.contains("set_config"), "{app:?}: {wrote:?}");
        drop(c);
    }
    // Behind a client of the tenant with a statement timeout (one the next client has too,
    // so nothing else is due, and the timeout in force is the client's own), the SET goes
    // alone still: no BEGIN, no guard.
    let timeout = "options='-c statement_timeout=5s'";
    let slow = connect_str(&format!("{} {timeout}", h.conninfo(&a.id))).await;
    assert_eq!(pid(&slow).await, p0);
    drop(slow);
    let before = sent.lock().expect("lock").len();
    let c = connect_str(&format!("{} application_name=a-four {timeout}", h.conninfo(&a.id))).await;
    let got =
        rows(&c, "SELECT current_setting('application_name'), current_setting('statement_timeout')").await;
    assert_eq!(got.map_err(|e| why(&e)), Ok(vec![vec!["a-four".to_owned(), "5s".to_owned()]]));
    let wrote = String::from_utf8_lossy(&sent.lock().expect("lock")[before..]).into_owned();
    assert!(wrote.contains("SET application_name TO"), "{wrote:?}");
    assert!(!wrote.contains("BEGIN") && !wrote.contains("SET LOCAL"), "{wrote:?}");
    assert!(!wrote.contains("set_config"), "{wrote:?}");
}
