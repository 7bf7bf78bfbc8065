//! A hostile client against the `SET application_name TO '…'` a handoff sends beside the
//! tenant's `SET search_path` (no BEGIN, SELECT nor COMMIT of its own; in the guarded
//! transaction where the connection carries a client's timeout): values that could end or
//! bend the statement, after a client of the tenant left `standard_conforming_strings = off`
//! or a client_encoding whose second bytes may be a backslash (SJIS, BIG5); application_name
//! changed by every route before a client leaves; startup settings that need the SELECT;
//! pipelines right behind the setup; both pool modes. Each is compared with what a session
//! straight to PostgreSQL with the same login shows.

use std::time::Duration;

use pgtenant::model::{Isolation, PoolMode};
use tokio::net::TcpStream;

use super::attacks29::{pbe, replies};
use super::setup_attacks::recorded;
use super::*;
use crate::support::raw::*;
use crate::support::*;

/// What a session shows of its application_name (its own and other sessions' view) and of the
/// settings that decide how a literal is read.
const SEES: &str = "SELECT current_setting('application_name'), \
    (SELECT application_name FROM pg_stat_activity WHERE pid = pg_backend_pid()), \
    current_setting('client_encoding'), current_setting('standard_conforming_strings')";

/// A raw client of `tenant` through the proxy with `settings` in its startup packet.
async fn through(h: &Harness, tenant: &str, settings: &[(&str, &str)]) -> TcpStream {
    let user = format!("app.{tenant}");
    let mut params = vec![("user", user.as_str())];
    params.extend_from_slice(settings);
    login(TcpStream::connect(h.addr).await.expect("connect proxy"), &params).await
}

/// A raw session straight to PostgreSQL (database `db`, as the superuser) with `settings`.
async fn straight(db: &str, settings: &[(&str, &str)]) -> tokio::net::UnixStream {
    let sock = cluster().socket_dir.join(format!(".s.PGSQL.{}", cluster().port));
    let s = tokio::net::UnixStream::connect(sock).await.expect("connect socket");
    let mut params = vec![("user", "postgres"), ("database", db)];
    params.extend_from_slice(settings);
    login(s, &params).await
}

/// Values a client may log in with that a `SET … TO '…'` built carelessly would misread: a
/// quote, a backslash before a quote (an escape where standard_conforming_strings is off), a
/// statement's end, control characters, non-ASCII text (whose SJIS/BIG5 encodings have 0x5C
/// as a second byte: `表`, `許`), longer than NAMEDATALEN, and empty.
fn hostile_values() -> Vec<String> {
    vec![
        "it's".to_owned(),
        r"back\slash".to_owned(),
        r"\'; SET search_path = public; --".to_owned(),
        r"ends with \".to_owned(),
        "tab\there\x01bell".to_owned(),
        "café 表 許 ソ".to_owned(),
        "x".repeat(100),
        "é表".repeat(30),
        String::new(),
    ]
}

/// A client of tenant b whose startup gives only application_name, behind a client of b with
/// the same other startup settings (so only application_name differs and goes as the SET
/// alone) or behind a client of a (DISCARD ALL first): whatever the value and whatever
/// client_encoding or standard_conforming_strings the connection carries, b sees its value
/// (in current_setting and pg_stat_activity) as a session straight to PostgreSQL with the
/// same startup packet sees it, and nothing else runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_application_names_arrive_as_postgresql_takes_them_whatever_the_connection_carries() {
    let mut failures = hostile_application_names(PoolMode::Transaction).await;
    failures.extend(hostile_application_names(PoolMode::Session).await);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// [`hostile_application_names_arrive_as_postgresql_takes_them_whatever_the_connection_carries`]
/// in `mode`: what differs from PostgreSQL. In transaction mode, behind b's own client, the
/// value must go as the SET alone.
async fn hostile_application_names(mode: PoolMode) -> Vec<String> {
    let (a, b) = tenant_pair(Isolation::Schema, Access::Write, 1).await;
    let (a, b) = (with_mode(a, mode, 1), with_mode(b, mode, 1));
    let (h, sent) = recorded(vec![a.clone(), b.clone()]).await;
    let limit = Duration::from_secs(5);
    let startups: [&[(&str, &str)]; 6] = [
        &[],
        &[("client_encoding", "SJIS")],
        &[("client_encoding", "BIG5")],
        &[("standard_conforming_strings", "off")],
        &[("client_encoding", "SJIS"), ("standard_conforming_strings", "off")],
        &[("client_encoding", "LATIN1"), ("standard_conforming_strings", "off")],
    ];
    let mut failures = Vec::new();
    for startup in startups {
        for value in hostile_values() {
            for prev in [&b, &a] {
                let mut settings = startup.to_vec();
                settings.push(("application_name", "prev"));
                let mut p = through(&h, &prev.id, &settings).await;
                replies(&mut p, &[query(SEES)], limit).await;
                drop(p);
                let before = sent.lock().expect("lock").len();
                settings.pop();
                settings.push(("application_name", value.as_str()));
                let mut c = through(&h, &b.id, &settings).await;
                let got = summary(&replies(&mut c, &[query(SEES)], limit).await);
                drop(c);
                let mut d = straight(&b.database, &settings).await;
                let want = summary(&replies(&mut d, &[query(SEES)], limit).await);
                let wrote = String::from_utf8_lossy(&sent.lock().expect("lock")[before..]).into_owned();
                // Behind b's own client only application_name differs: the SET alone.
                let alone = wrote.contains("SET application_name TO") && !wrote.contains("BEGIN");
                if got != want || (mode == PoolMode::Transaction && prev.id == b.id && !alone) {
                    failures.push(format!(
                        "{mode:?} {startup:?} {value:?} after {}:\n  pgtenant {got:?}\n  direct   {want:?}\n  wrote {wrote:?}",
                        prev.id
                    ));
                }
            }
        }
    }
    failures
}

/// What a client does to its application_name before it leaves, query by query (a reset among
/// other statements of one Query is not followed: the README says so).
const CHANGES: [&[&str]; 11] = [
    &["SET application_name = 'evil'"],
    &["SET application_name = 'evil'", "RESET application_name"],
    &["SET application_name = 'evil'", "SET application_name TO DEFAULT"],
    &["SET application_name = 'evil'", "RESET ALL"],
    &["SET application_name = 'evil'", "DISCARD ALL"],
    &["BEGIN; SET LOCAL application_name = 'evil'; COMMIT"],
    &["BEGIN; SET application_name = 'evil'; ROLLBACK"],
    &["BEGIN; SET application_name = 'evil'; SAVEPOINT s; SET application_name = 'evil2'; ROLLBACK TO s; COMMIT"],
    &["SELECT set_config('application_name', 'evil', false)"],
    &["DO $$BEGIN PERFORM set_config('application_name', 'evil', false); END$$"],
    &["BEGIN; SELECT set_config('application_name', 'evil', false); ROLLBACK"],
];

/// The application_name a session shows itself and in pg_stat_activity.
const APP: &str = "SELECT current_setting('application_name'), \
    (SELECT application_name FROM pg_stat_activity WHERE pid = pg_backend_pid())";

/// A client that logged in as `b1` changes its application_name by each route (SET, RESET,
/// DEFAULT, RESET ALL, SET LOCAL, a rolled-back SET, a savepoint, set_config, a DO block) and
/// sees what PostgreSQL shows such a session; then it leaves, and the next clients — of its
/// tenant with another name, with the same name as its login, with none, and of the other
/// tenant — each see their own, in both pool modes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_application_name_changed_by_any_route_stays_with_its_client() {
    let mut failures = Vec::new();
    for mode in [PoolMode::Transaction, PoolMode::Session] {
        let (a, b) = tenant_pair(Isolation::Schema, Access::Write, 1).await;
        let (a, b) = (with_mode(a, mode, 1), with_mode(b, mode, 1));
        let h = start_quick(vec![a.clone(), b.clone()]).await;
        let c0 = h.client(&b.id).await;
        let pool_value =
            rows(&c0, "SELECT current_setting('application_name')").await.expect("c0")[0][0].clone();
        drop(c0);
        let named = |t: &str, app: Option<&str>| match app {
            Some(app) => format!("{} application_name={app}", h.conninfo(t)),
            None => h.conninfo(t),
        };
        for change in CHANGES {
            let b1 = connect_str(&named(&b.id, Some("b1"))).await;
            let d =
                connect_str(&format!("{} application_name=b1", cluster().superuser_conninfo(&b.database)))
                    .await;
            let (mut got, mut want) = (Ok(()), Ok(()));
            for sql in change {
                got = got.and(b1.batch_execute(sql).await.map_err(|e| why(&e)));
                want = want.and(d.batch_execute(sql).await.map_err(|e| why(&e)));
            }
            let (got_app, want_app) =
                (rows(&b1, APP).await.map_err(|e| why(&e)), rows(&d, APP).await.map_err(|e| why(&e)));
            if (got.clone(), got_app.clone()) != (want.clone(), want_app.clone()) {
                failures.push(format!(
                    "{mode:?} {change:?}: pgtenant {got:?} {got_app:?}, direct {want:?} {want_app:?}"
                ));
            }
            drop((b1, d));
            let next = [
                (&b.id, Some("b2"), "b2"),
                (&b.id, Some("b1"), "b1"),
                (&b.id, None, pool_value.as_str()),
                (&a.id, Some("a1"), "a1"),
                (&b.id, Some("b1"), "b1"),
            ];
            for (tenant, app, want) in next {
                let c = connect_str(&named(tenant, app)).await;
                let got = rows(&c, APP).await.map_err(|e| why(&e));
                if got != Ok(vec![vec![want.to_owned(), want.to_owned()]]) {
                    failures.push(format!("{mode:?} after {change:?}: {tenant} {app:?} sees {got:?}"));
                }
                drop(c);
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A client with application_name and other startup settings (`-c work_mem=…`): its setup
/// needs the SELECT, which carries application_name too (no SET of it beside), and the client
/// sees both, behind a client of its tenant with other values and behind the other tenant;
/// behind a client with its work_mem, application_name goes as the SET alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_application_name_beside_other_startup_settings_goes_in_the_select() {
    let (a, b) = tenant_pair(Isolation::Schema, Access::Write, 1).await;
    let (h, sent) = recorded(vec![a.clone(), b.clone()]).await;
    let sql = "SELECT current_setting('application_name'), current_setting('work_mem'), current_schema()";
    // The last: work_mem as the connection has it, so application_name goes as the SET alone.
    let cases = [
        (&b, "b-one", "1MB", true),
        (&b, "b-two", "2MB", true),
        (&a, "a-one", "3MB", true),
        (&b, "b-two", "2MB", true),
        (&b, "b-three", "2MB", false),
    ];
    for (tenant, app, work_mem, select) in cases {
        let before = sent.lock().expect("lock").len();
        let conninfo =
            format!("{} application_name={app} options='-c work_mem={work_mem}'", h.conninfo(&tenant.id));
        let c = connect_str(&conninfo).await;
        let got = rows(&c, sql).await.map_err(|e| why(&e));
        assert_eq!(got, Ok(vec![vec![app.to_owned(), work_mem.to_owned(), tenant.id.clone()]]), "{app}");
        let wrote = String::from_utf8_lossy(&sent.lock().expect("lock")[before..]).into_owned();
        assert_eq!(wrote.contains("set_config('application_name'"), select, "{app}: {wrote:?}");
        assert_eq!(wrote.contains("SET application_name TO"), !select, "{app}: {wrote:?}");
        drop(c);
    }
}

/// b pipelines (extended protocol with Flushes, an error, no Sync until late, then a simple
/// query; or a Flush, a Sync and an empty query alone first) right behind a setup of `SET application_name` alone (after another client of b),
/// with `SET search_path` (after a client of b that ran set_config), and behind DISCARD ALL
/// and the reseed (after a client of a): b's replies are exactly those of a session straight
/// to PostgreSQL with the same login, and no ParameterStatus of the setup reaches b.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_behind_the_application_name_set_is_answered_as_postgresql_answers_it() {
    let (a, b) = tenant_pair(Isolation::Schema, Access::Write, 1).await;
    let (a, b) = (with_mode(a, PoolMode::Transaction, 1), with_mode(b, PoolMode::Transaction, 1));
    let h = start_quick(vec![a.clone(), b.clone()]).await;
    let limit = Duration::from_secs(5);
    let steps = || {
        vec![
            cat(&[pbe("SELECT current_setting('application_name')"), flush()]),
            cat(&[pbe("SELECT 1/0"), pbe("SELECT 'skipped'"), flush()]),
            sync(),
            cat(&[pbe("SELECT current_setting('application_name')"), query("SELECT 'simple'"), sync()]),
            cat(&[parse("", "SELECT $1::text"), bind_text("x'\\"), execute(""), sync()]),
        ]
    };
    let befores: [(&str, &str, &str); 3] = [
        (&b.id, "b_prev", "SELECT 1"),
        (&b.id, "b_prev", "SELECT set_config('work_mem', '2MB', false)"),
        (&a.id, "a_prev", "SELECT 1"),
    ];
    // Behind the setup's empty query: b's Flush, Sync and empty query alone first.
    let bare = || {
        vec![flush(), sync(), query(""), cat(&[pbe("SELECT current_setting('application_name')"), sync()])]
    };
    let settings = [("application_name", "b_next it's \\")];
    let mut failures = Vec::new();
    for (steps, (tenant, app, sql)) in befores.iter().flat_map(|before| [(steps(), before), (bare(), before)])
    {
        let mut d = straight(&b.database, &settings).await;
        let want = summary(&replies(&mut d, &steps, limit).await);
        assert!(want.iter().any(|m| m == "D(b_next it's \\)"), "{want:?}");
        let mut p = through(&h, tenant, &[("application_name", app)]).await;
        replies(&mut p, &[query(sql)], limit).await;
        drop(p);
        let mut c = through(&h, &b.id, &settings).await;
        let raw = replies(&mut c, &steps, limit).await;
        let statuses: Vec<String> = messages(&raw)
            .iter()
            .filter(|(t, _)| *t == b'S')
            .map(|(_, b)| String::from_utf8_lossy(b).into_owned())
            .collect();
        let got = summary(&raw);
        // No ParameterStatus of the setup's SET reaches b (PostgreSQL sends none here).
        if got != want || !statuses.is_empty() {
            failures.push(format!(
                "after {tenant} {sql:?}:\n  pgtenant {got:?} {statuses:?}\n  direct   {want:?}"
            ));
        }
        drop(c);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Bind of the unnamed statement to the unnamed portal with one text parameter.
fn bind_text(v: &str) -> Vec<u8> {
    let mut body = b"\0\0".to_vec();
    body.extend_from_slice(&0i16.to_be_bytes());
    body.extend_from_slice(&1i16.to_be_bytes());
    body.extend_from_slice(&(v.len() as i32).to_be_bytes());
    body.extend_from_slice(v.as_bytes());
    body.extend_from_slice(&0i16.to_be_bytes());
    msg(b'B', &body)
}

/// A client of b leaves a 1 ms statement timeout where pgtenant cannot see it (set_config in a
/// DO block), over and over, so that each next client's setup (`SET search_path`, `SET
/// application_name`, the empty query) runs under it. Each next client of b inserts a row
/// stamped with the application_name (and statement timeout) it runs under: whatever the timeout cancels (the setup
/// or the client's own statement, 57014), no row is ever stamped with another client's name,
/// and a client told its INSERT ran has its row; a client of a after them is unharmed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unseen_statement_timeout_never_runs_a_client_without_its_application_name() {
    let (a, b) = tenant_pair(Isolation::Schema, Access::Write, 1).await;
    let h = start_quick(vec![a.clone(), b.clone()]).await;
    let plant = "DO $$BEGIN PERFORM set_config('statement_timeout', '1ms', false); END$$";
    let mut told_ok = Vec::new();
    let mut failures = Vec::new();
    for k in 0..30 {
        let app = format!("b{k}");
        let c = connect_str(&format!("{} application_name={app}", h.conninfo(&b.id))).await;
        match c.batch_execute(&format!("INSERT INTO t VALUES ({k}, current_setting('application_name') || ':' || current_setting('statement_timeout'))")).await {
            Ok(()) => told_ok.push(k),
            Err(e) if code(&e) == "57014" => {}
            Err(e) => failures.push(format!("{app}: {}", why(&e))),
        }
        // Planted by a client that stays long enough to plant it (its own statements may be
        // cancelled by the timeout it planted before).
        let p = connect_str(&format!("{} application_name=planter", h.conninfo(&b.id))).await;
        for _ in 0..5 {
            if p.batch_execute(plant).await.is_ok() {
                break;
            }
        }
        drop((c, p));
    }
    let stamped =
        rows(&admin(&b.database).await, &format!("SELECT id::text, owner FROM \"{}\".t ORDER BY id", b.id))
            .await
            .expect("b's rows");
    for row in &stamped {
        if row[1].split(':').next() != Some(format!("b{}", row[0]).as_str()) {
            failures.push(format!("row {row:?} stamped with another client's application_name"));
        }
    }
    // The attack took: clients ran under the planted timeout.
    if !stamped.iter().any(|r| r[1].ends_with(":1ms")) {
        failures.push(format!("no client ran under the planted timeout: {stamped:?}"));
    }
    for k in &told_ok {
        if !stamped.iter().any(|r| r[0] == k.to_string()) {
            failures.push(format!("b{k} was told its INSERT ran, no row"));
        }
    }
    let ca = connect_str(&format!("{} application_name=a-after", h.conninfo(&a.id))).await;
    let got = rows(
        &ca,
        "SELECT current_setting('application_name'), current_setting('statement_timeout'), current_schema()",
    )
    .await
    .map_err(|e| why(&e));
    if got != Ok(vec![vec!["a-after".to_owned(), "0".to_owned(), a.id.clone()]]) {
        failures.push(format!("a after b: {got:?}"));
    }
    assert!(failures.is_empty(), "{} ok of 30: {}", told_ok.len(), failures.join("\n"));
}

/// A client of b leaves an idle_session_timeout of 50 ms where pgtenant cannot see it (a DO
/// block): the backend ends itself idle in the pool. The next client of b (an application_name
/// of its own, so a setup is due) and then a client of a each get their own session on a
/// working connection, not the dead one's error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unseen_idle_session_timeout_costs_the_next_clients_nothing() {
    let (a, b) = tenant_pair(Isolation::Schema, Access::Write, 1).await;
    let h = start_quick(vec![a.clone(), b.clone()]).await;
    let sql = "SELECT current_setting('application_name'), current_schema(), current_setting('idle_session_timeout')";
    for (tenant, app) in [(&b, "b-next"), (&a, "a-next"), (&b, "b-last")] {
        let p = connect_str(&format!("{} application_name=planter", h.conninfo(&b.id))).await;
        p.batch_execute("DO $$BEGIN PERFORM set_config('idle_session_timeout', '50ms', false); END$$")
            .await
            .expect("plant");
        drop(p);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let c = connect_str(&format!("{} application_name={app}", h.conninfo(&tenant.id))).await;
        let got = rows(&c, sql).await.map_err(|e| why(&e));
        // The backend the timeout was planted on ended itself: the client's is another one.
        let want = vec![app.to_owned(), tenant.id.clone(), "0".to_owned()];
        assert_eq!(got, Ok(vec![want]), "{app}");
    }
}

/// A tenant whose database is not UTF8 (LATIN1, as `CREATE DATABASE … ENCODING` allows): a
/// client whose application_name has characters LATIN1 lacks (and control characters, and more
/// than 63 bytes) logs in and runs its statements, seeing the value as a session straight to
/// PostgreSQL with the same startup packet sees it; PostgreSQL takes the startup packet's bytes
/// without converting them, so no value it accepts may fail the setup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_application_name_beyond_a_latin1_databases_characters_is_taken_as_postgresql_takes_it() {
    let id = unique("latin");
    let admin = admin("postgres").await;
    admin.batch_execute(&format!("CREATE ROLE \"{id}\" LOGIN PASSWORD 'pw-{id}'")).await.expect("role");
    let create = format!(
        "CREATE DATABASE \"{id}\" OWNER \"{id}\" ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0"
    );
    admin.batch_execute(&create).await.expect("a LATIN1 database");
    let t = TenantConfig::new(&id, "local", &id, &id, Some(&format!("pw-{id}")));
    let t = with_mode(t, PoolMode::Transaction, 1);
    let h = start_quick(vec![t.clone()]).await;
    let limit = Duration::from_secs(5);
    let mut failures = Vec::new();
    for value in ["café", "表 and ü", "tab\there", &"é".repeat(40), &format!("a{}", "表".repeat(30))] {
        for encoding in [None, Some("LATIN1")] {
            let mut settings = vec![("application_name", value)];
            settings.extend(encoding.map(|e| ("client_encoding", e)));
            let mut c = through(&h, &id, &settings).await;
            let got = summary(&replies(&mut c, &[query(APP)], limit).await);
            let mut d = straight(&id, &settings).await;
            let want = summary(&replies(&mut d, &[query(APP)], limit).await);
            if got != want {
                failures.push(format!("{value:?} {encoding:?}:\n  pgtenant {got:?}\n  direct   {want:?}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
