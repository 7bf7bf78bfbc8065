//! Settings at a handoff. A client shares its pool's ParameterStatus list and keeps only the
//! values of its own (`client::vars::ClientVars`); what one client sets — reportable settings
//! (application_name, TimeZone, DateStyle, IntervalStyle, client_encoding,
//! default_transaction_read_only) and others (search_path, statement_timeout,
//! extra_float_digits) — by SET in session or transaction scope, through set_config, in its
//! startup packet, or undone by RESET ALL / DISCARD ALL, never reaches the next client of
//! the server connection: not in a ParameterStatus message, not in SHOW, not in
//! current_setting. Checked in transaction and session mode, for a client of another tenant
//! and for another client of the same tenant (SET follows the client, it is not left behind),
//! and after the pool's server connections were replaced.

use std::collections::BTreeMap;
use std::time::Duration;

use pgtenant::model::{Isolation, PoolMode};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::*;
use crate::support::raw::*;
use crate::support::*;

/// What the first client sets: (name, value as SET takes it).
const SETS: [(&str, &str); 9] = [
    ("application_name", "a-secret-app"),
    ("TimeZone", "Pacific/Chatham"),
    ("DateStyle", "SQL, DMY"),
    ("IntervalStyle", "iso_8601"),
    ("client_encoding", "LATIN1"),
    ("default_transaction_read_only", "on"),
    ("statement_timeout", "4242s"),
    ("extra_float_digits", "3"),
    ("search_path", "a_secret_schema"),
];

/// The settings of [`SETS`] the server does not report.
const UNREPORTED: [&str; 3] = ["statement_timeout", "extra_float_digits", "search_path"];

const TEN: Duration = Duration::from_secs(10);

/// A raw client of `tenant` with extra startup parameters: the stream and the ParameterStatus
/// values it was shown at login.
async fn raw_login(h: &Harness, tenant: &str, extra: &[(&str, &str)]) -> (TcpStream, Vec<(String, String)>) {
    let user = format!("app.{tenant}");
    let mut params = vec![("user", user.as_str())];
    params.extend_from_slice(extra);
    let mut s = TcpStream::connect(h.addr).await.expect("connect proxy");
    send(&mut s, &startup_packet(&params)).await;
    let (got, closed) = read_ready(&mut s, 1, TEN).await;
    assert!(!closed && ready_count(&got) == 1, "login of {tenant} failed: {:?}", summary(&got));
    (s, statuses(&got))
}

/// The ParameterStatus messages in `bytes`.
fn statuses(bytes: &[u8]) -> Vec<(String, String)> {
    messages(bytes)
        .into_iter()
        .filter(|(t, _)| *t == b'S')
        .filter_map(|(_, body)| {
            let mut parts = body.split(|b| *b == 0);
            let k = String::from_utf8_lossy(parts.next()?).into_owned();
            let v = String::from_utf8_lossy(parts.next()?).into_owned();
            Some((k, v))
        })
        .collect()
}

/// Runs one simple query; returns everything the client got (an error is a failure).
async fn run(s: &mut TcpStream, sql: &str, f: &mut Failures, who: &str) -> Vec<u8> {
    send(s, &query(sql)).await;
    let (got, closed) = read_ready(s, 1, TEN).await;
    f.check(!closed && ready_count(&got) == 1 && sqlstate(&got).is_none(), || {
        format!("{who}: `{sql}` got {:?}", summary(&got))
    });
    got
}

/// What a client sees of every setting in [`SETS`]: current_setting and SHOW (which must
/// agree), its backend pid, and the ParameterStatus messages that came with them.
struct Seen {
    values: BTreeMap<String, String>,
    pid: String,
    statuses: Vec<(String, String)>,
}

async fn look(s: &mut TcpStream, f: &mut Failures, who: &str) -> Seen {
    let settings: Vec<String> = SETS.iter().map(|(n, _)| format!("current_setting('{n}')")).collect();
    let shows: Vec<String> = SETS.iter().map(|(n, _)| format!("SHOW {n}")).collect();
    let sql = format!("SELECT {}, pg_backend_pid(); {}", settings.join(", "), shows.join("; "));
    let got = run(s, &sql, f, who).await;
    let rows: Vec<Vec<String>> =
        messages(&got).iter().filter(|(t, _)| *t == b'D').map(|(_, b)| data_row(b)).collect();
    let mut values = BTreeMap::new();
    let mut pid = String::new();
    if let Some((first, shown)) = rows.split_first() {
        for (i, (name, _)) in SETS.iter().enumerate() {
            let current = first.get(i).cloned().unwrap_or_default();
            let show = shown.get(i).and_then(|r| r.first()).cloned().unwrap_or_default();
            f.check(current == show, || format!("{who}: current_setting({name}) {current:?}, SHOW {show:?}"));
            values.insert(name.to_string(), current);
        }
        pid = first.get(SETS.len()).cloned().unwrap_or_default();
    }
    Seen { values, pid, statuses: statuses(&got) }
}

/// Who sets, and how.
#[derive(Clone, Copy, Debug)]
enum Route {
    /// One `SET` per statement, outside a transaction block (tracked: follows the client).
    SessionSets,
    /// All of them in one transaction block.
    InBlock,
    /// `SET LOCAL` in a transaction block.
    Local,
    /// `set_config(…, false)` (no SET tag).
    SetConfig,
    /// Session SETs, then `RESET ALL`.
    ThenResetAll,
    /// Session SETs, then `DISCARD ALL`.
    ThenDiscardAll,
    /// In the startup packet (application_name and `options`).
    Startup,
}

const ROUTES: [Route; 7] = [
    Route::SessionSets,
    Route::InBlock,
    Route::Local,
    Route::SetConfig,
    Route::ThenResetAll,
    Route::ThenDiscardAll,
    Route::Startup,
];

fn set(name: &str, value: &str) -> String {
    format!("SET {name} = '{value}'")
}

/// Logs a client of tenant `setter` in and has it set everything in [`SETS`] by `route`;
/// returns the client.
async fn setter(h: &Harness, tenant: &str, route: Route, f: &mut Failures, who: &str) -> TcpStream {
    let options: String = SETS
        .iter()
        .filter(|(n, _)| *n != "application_name")
        .map(|(n, v)| format!("-c {n}={}", v.replace(' ', "\\ ")))
        .collect::<Vec<_>>()
        .join(" ");
    let extra: Vec<(&str, &str)> = match route {
        Route::Startup => vec![("application_name", SETS[0].1), ("options", &options)],
        _ => Vec::new(),
    };
    let (mut s, _) = raw_login(h, tenant, &extra).await;
    let sets: Vec<String> = SETS.iter().map(|(n, v)| set(n, v)).collect();
    let mut statements = Vec::new();
    match route {
        Route::SessionSets | Route::ThenResetAll | Route::ThenDiscardAll => statements.extend(sets),
        Route::InBlock => statements.push(format!("BEGIN; {}; COMMIT", sets.join("; "))),
        Route::Local => {
            let locals: Vec<String> = SETS.iter().map(|(n, v)| format!("SET LOCAL {n} = '{v}'")).collect();
            statements.push(format!("BEGIN; {}; COMMIT", locals.join("; ")));
        }
        Route::SetConfig => {
            let calls: Vec<String> =
                SETS.iter().map(|(n, v)| format!("set_config('{n}', '{v}', false)")).collect();
            statements.push(format!("SELECT {}", calls.join(", ")));
        }
        Route::Startup => statements.push("SELECT 1".to_owned()),
    }
    match route {
        Route::ThenResetAll => statements.push("RESET ALL".to_owned()),
        Route::ThenDiscardAll => statements.push("DISCARD ALL".to_owned()),
        _ => {}
    }
    for sql in &statements {
        run(&mut s, sql, f, who).await;
    }
    s
}

/// Compares what a client sees with its `baseline` (what it saw before anyone set anything):
/// values (but those `exempt`), and every ParameterStatus it was sent.
fn compare(seen: &Seen, baseline: &Seen, pid: Option<&str>, exempt: &[&str], f: &mut Failures, who: &str) {
    for (name, want) in baseline.values.iter().filter(|(n, _)| !exempt.contains(&n.as_str())) {
        let got = seen.values.get(name).cloned().unwrap_or_default();
        f.check(&got == want, || format!("{who}: {name} is {got:?}, was {want:?}"));
    }
    for (name, value) in &seen.statuses {
        let want = baseline.values.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v);
        f.check(want.is_none_or(|w| w == value), || {
            format!("{who}: sent ParameterStatus {name} = {value:?}, its value is {want:?}")
        });
    }
    if let Some(pid) = pid {
        f.check(seen.pid == pid, || format!("{who}: on backend {}, not the shared {pid}", seen.pid));
    }
}

async fn terminate(mut s: TcpStream) {
    let _ = s.write_all(&terminate_msg()).await;
    let _ = read_eof(&mut s, Duration::from_secs(5)).await;
}

fn terminate_msg() -> Vec<u8> {
    crate::support::raw::terminate()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_never_reach_the_next_client_in_transaction_mode() {
    let mut f = Failures::default();
    for iso in [Isolation::Schema, Isolation::Shared] {
        let (a, b) = tenant_pair(iso, Access::Read, 1).await;
        let h = start_quick(vec![a.clone(), b.clone()]).await;
        // Clients that stay: one of the other tenant, one of the same tenant.
        let (mut other_tenant, _) = raw_login(&h, &b.id, &[]).await;
        let (mut same_tenant, _) = raw_login(&h, &a.id, &[]).await;
        let base_b = look(&mut other_tenant, &mut f, "baseline b").await;
        let base_a = look(&mut same_tenant, &mut f, "baseline a").await;
        let p0 = base_b.pid.clone();
        // Each route twice: the next client of the connection is of the same tenant (no
        // reset: the setup query must undo what the setter left), then of the other (DISCARD
        // ALL first).
        for (route, next) in ROUTES.iter().flat_map(|r| [(*r, 0), (*r, 1)]) {
            let who = |w: &str| format!("{iso:?} {route:?}: {w}");
            let mut s = setter(&h, &a.id, route, &mut f, &who("setter")).await;
            if matches!(route, Route::SessionSets | Route::Startup) {
                // The check below means something: the settings took effect, and follow the client.
                let own = look(&mut s, &mut f, &who("setter")).await;
                let changed =
                    SETS.iter().filter(|(n, _)| own.values.get(*n) != base_a.values.get(*n)).count();
                f.check(changed >= SETS.len() - 1, || {
                    format!("{}: only {changed} settings took effect: {:?}", who("setter"), own.values)
                });
            }
            let (c, base, w) = match next {
                0 => (&mut same_tenant, &base_a, "another client of a"),
                _ => (&mut other_tenant, &base_b, "tenant b"),
            };
            // What the README says may pass between clients of a tenant: settings changed
            // without a SET tag that the server does not report.
            let exempt: &[&str] = match (route, next) {
                (Route::SetConfig, 0) => &UNREPORTED,
                _ => &[],
            };
            let seen = look(c, &mut f, &who(w)).await;
            compare(&seen, base, Some(&p0), exempt, &mut f, &who(w));
            terminate(s).await;
        }
    }
    f.assert_none();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_never_reach_the_next_client_in_session_mode() {
    let mut f = Failures::default();
    let (mut a, mut b) = tenant_pair(Isolation::Schema, Access::Read, 1).await;
    a.pool_mode = Some(PoolMode::Session);
    b.pool_mode = Some(PoolMode::Session);
    let h = start_quick(vec![a.clone(), b.clone()]).await;
    let baseline = |id: String| {
        let h = &h;
        async move {
            let mut f = Failures::default();
            let (mut s, _) = raw_login(h, &id, &[]).await;
            let seen = look(&mut s, &mut f, "baseline").await;
            terminate(s).await;
            f.assert_none();
            seen
        }
    };
    let base_a = baseline(a.id.clone()).await;
    let base_b = baseline(b.id.clone()).await;
    for route in ROUTES {
        let who = |w: &str| format!("session {route:?}: {w}");
        let s = setter(&h, &a.id, route, &mut f, &who("setter")).await;
        terminate(s).await;
        for (id, base, w) in [(&b.id, &base_b, "tenant b"), (&a.id, &base_a, "another client of a")] {
            let (mut s, login) = raw_login(&h, id, &[]).await;
            let mut seen = look(&mut s, &mut f, &who(w)).await;
            seen.statuses.extend(login);
            compare(&seen, base, Some(&base_b.pid), &[], &mut f, &who(w));
            terminate(s).await;
        }
    }
    f.assert_none();
}

/// The pool's server connections are replaced (every backend terminated, as a server restart
/// does; then RECONNECT): a client that set everything before gets its settings on the new
/// connection, and the other clients, logged in before or after, still see only their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_stay_with_their_client_when_server_connections_are_replaced() {
    let mut f = Failures::default();
    let (a, b) = tenant_pair(Isolation::Schema, Access::Read, 1).await;
    let h = start_quick(vec![a.clone(), b.clone()]).await;
    let (mut other_tenant, _) = raw_login(&h, &b.id, &[]).await;
    let (mut same_tenant, _) = raw_login(&h, &a.id, &[]).await;
    let base_b = look(&mut other_tenant, &mut f, "baseline b").await;
    let base_a = look(&mut same_tenant, &mut f, "baseline a").await;
    let mut s = setter(&h, &a.id, Route::SessionSets, &mut f, "setter").await;
    let before = look(&mut s, &mut f, "setter").await;
    let su = admin("postgres").await;
    let mut current = before.pid.clone();
    for replace in ["terminated", "RECONNECT"] {
        if replace == "terminated" {
            let old: i32 = current.parse().unwrap_or_default();
            su.execute("SELECT pg_terminate_backend($1)", &[&old]).await.expect("terminate");
            let gone = eventually(Duration::from_secs(5), || async {
                su.query_one("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", &[&old])
                    .await
                    .expect("pg_stat_activity")
                    .get::<_, i64>(0)
                    == 0
            })
            .await;
            assert!(gone, "backend {old} still there");
        } else {
            // What the console's RECONNECT does.
            for pool in h.proxy.pools.pools() {
                pool.reconnect();
            }
        }
        // A client that logs in now shares the pool's new ParameterStatus list.
        let (mut newcomer, _) = raw_login(&h, &a.id, &[]).await;
        let own = look(&mut s, &mut f, &format!("{replace}: setter")).await;
        f.check(own.values == before.values, || {
            format!(
                "{replace}: the setter's settings on the new connection: {:?}, before {:?}",
                own.values, before.values
            )
        });
        f.check(own.pid != current, || format!("{replace}: still backend {}", own.pid));
        current = own.pid.clone();
        for (c, base, w) in [
            (&mut other_tenant, &base_b, "tenant b"),
            (&mut same_tenant, &base_a, "another client of a"),
            (&mut newcomer, &base_a, "a client of a logged in since"),
        ] {
            let who = format!("{replace}: {w}");
            let seen = look(c, &mut f, &who).await;
            compare(&seen, base, Some(&own.pid), &[], &mut f, &who);
        }
    }
    f.assert_none();
}
