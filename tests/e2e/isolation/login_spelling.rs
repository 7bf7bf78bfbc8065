//! The reportable settings a client gives at startup, as it is shown them at login. pgtenant
//! answers the login itself (transaction mode: no server connection yet), so it must spell
//! each value as PostgreSQL would report it (`DateStyle=iso` → `ISO, MDY`, `utf-8` → `UTF8`,
//! a long application_name cut at 63 bytes …): the same startup packet goes through pgtenant
//! and straight to the cluster, and the ParameterStatus values must agree. A pgjdbc-like
//! `DateStyle=ISO` then equals the pool's value, so its first checkout runs no setup (counted
//! in the server's statement log).

use std::time::Duration;

use pgtenant::model::PoolMode;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UnixStream};

use super::*;
use crate::support::raw::*;
use crate::support::*;

const TEN: Duration = Duration::from_secs(10);

/// Spellings a driver or a user may send, each as a startup parameter and, unless marked,
/// as `-c` in `options` too. (Values PostgreSQL refuses, 22023, are left out: pgtenant shows
/// them as given and the first setup fails with the server's 22023.)
const SPELLINGS: &[(&str, &str)] = &[
    ("DateStyle", "iso"),
    ("DateStyle", "ISO"),
    ("DateStyle", "ISO, MDY"),
    ("DateStyle", "iso,dmy"),
    ("DateStyle", " sql ,  european "),
    ("DateStyle", "German"),
    ("DateStyle", "mdy, german"),
    ("DateStyle", "postgres"),
    ("DateStyle", "ymd"),
    ("DateStyle", "Euro"),
    ("DateStyle", "NonEuropean"),
    ("DateStyle", "US"),
    ("IntervalStyle", "POSTGRES"),
    ("IntervalStyle", "Sql_Standard"),
    ("IntervalStyle", "iso_8601"),
    ("standard_conforming_strings", "true"),
    ("standard_conforming_strings", "yes"),
    ("standard_conforming_strings", "1"),
    ("standard_conforming_strings", "t"),
    ("standard_conforming_strings", "ON"),
    ("standard_conforming_strings", "of"),
    ("client_encoding", "utf-8"),
    ("client_encoding", "unicode"),
    ("client_encoding", "UNICODE"),
    ("client_encoding", "Utf8"),
    ("client_encoding", "latin1"),
    ("client_encoding", "ISO-8859-15"),
    ("client_encoding", "win1252"),
    ("client_encoding", "Windows-1251"),
    ("client_encoding", "sql_ascii"),
    ("client_encoding", "euc-jp"),
    ("client_encoding", "EUC_KR"),
    ("TimeZone", "utc"),
    ("TimeZone", "Gmt"),
    ("TimeZone", "UTC"),
    ("TimeZone", "Europe/Paris"),
    ("application_name", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"),
    ("application_name", "caf\u{e9} \u{1f600}"),
    ("application_name", "a\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}\u{e9}"),
    ("application_name", "tab\there\u{7f}"),
];

/// The value of `name` among the ParameterStatus messages of a login's reply.
fn status(bytes: &[u8], name: &str) -> Option<String> {
    messages(bytes).into_iter().filter(|(t, _)| *t == b'S').find_map(|(_, body)| {
        let mut parts = body.split(|b| *b == 0);
        let k = parts.next()?;
        let v = parts.next()?;
        k.eq_ignore_ascii_case(name.as_bytes()).then(|| String::from_utf8_lossy(v).into_owned())
    })
}

/// Logs in with `params` on `s`; the reply up to the first ReadyForQuery (or the error).
async fn login_reply<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, params: &[(&str, &str)]) -> (S, Vec<u8>) {
    send(&mut s, &startup_packet(params)).await;
    let (got, _) = read_ready(&mut s, 1, TEN).await;
    (s, got)
}

/// The startup parameters that give `name=value` the two ways: as itself, and in `options`
/// (whitespace and backslashes escaped as libpq reads them).
fn ways(name: &str, value: &str) -> [(String, String); 2] {
    let mut escaped = String::new();
    for c in value.chars() {
        if c == '\\' || c.is_ascii_whitespace() {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    [(name.to_owned(), value.to_owned()), ("options".to_owned(), format!("-c {name}={escaped}"))]
}

#[tokio::test]
async fn the_login_spells_startup_settings_as_postgres_reports_them() {
    let t = with_mode(tenant_db("spell").await, PoolMode::Transaction, 2);
    let h = start_quick(vec![t.clone()]).await;
    let user = format!("app.{}", t.id);
    let sock = cluster().socket_dir.join(format!(".s.PGSQL.{}", cluster().port));
    let mut f = Failures::default();
    let mut cases: Vec<(String, Vec<(String, String)>)> = Vec::new();
    for (name, value) in SPELLINGS {
        for (k, v) in ways(name, value) {
            cases.push((name.to_string(), vec![(k, v)]));
        }
    }
    // Given twice: PostgreSQL applies `options` first, then the packet's own parameters (a
    // missing half of DateStyle keeps the half set before).
    cases.push((
        "application_name".into(),
        vec![
            ("application_name".into(), "packet".into()),
            ("options".into(), "-c application_name=options".into()),
        ],
    ));
    cases.push((
        "DateStyle".into(),
        vec![("DateStyle".into(), "dmy".into()), ("options".into(), "-c DateStyle=sql".into())],
    ));
    for (name, extra) in &cases {
        let extra: Vec<(&str, &str)> = extra.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let mut direct_params = vec![("user", "postgres"), ("database", t.database.as_str())];
        direct_params.extend_from_slice(&extra);
        let (_d, direct) =
            login_reply(UnixStream::connect(&sock).await.expect("socket"), &direct_params).await;
        let mut proxy_params = vec![("user", user.as_str())];
        proxy_params.extend_from_slice(&extra);
        let (_p, proxied) =
            login_reply(TcpStream::connect(h.addr).await.expect("proxy"), &proxy_params).await;
        let want = status(&direct, name);
        f.check(want.is_some() && sqlstate(&direct).is_none(), || {
            format!("{extra:?}: PostgreSQL refused it: {:?}", summary(&direct))
        });
        let got = status(&proxied, name);
        f.check(got == want, || format!("{extra:?}: pgtenant showed {name} {got:?}, PostgreSQL {want:?}"));
    }
    f.assert_none();
}

/// The backend pid of a raw session (a simple query).
async fn backend_pid(s: &mut TcpStream) -> String {
    send(s, &query("SELECT pg_backend_pid()")).await;
    let (got, closed) = read_ready(s, 1, TEN).await;
    assert!(!closed && sqlstate(&got).is_none(), "{:?}", summary(&got));
    let row = messages(&got).into_iter().find(|(t, _)| *t == b'D').map(|(_, b)| data_row(b));
    row.and_then(|r| r.into_iter().next()).expect("a pid")
}

/// The server log's lines of backend `pid` that run a setup's set_config.
fn logged_setups(pid: &str) -> Vec<String> {
    let log = cluster().data_dir.parent().expect("the cluster's directory").join("server.log");
    let text = std::fs::read_to_string(log).expect("the server log");
    let tag = format!("[{pid}]");
    text.lines().filter(|l| l.contains(&tag) && l.contains("set_config")).map(str::to_owned).collect()
}

#[tokio::test]
async fn a_pgjdbc_like_datestyle_needs_no_setup_at_checkout() {
    let t = with_mode(tenant_db("jdbcds").await, PoolMode::Transaction, 1);
    // Every statement of the tenant's server connections goes to the server log.
    admin("postgres")
        .await
        .batch_execute(&format!("ALTER ROLE \"{}\" SET log_statement = 'all'", t.role))
        .await
        .expect("log the role's statements");
    let h = start_quick(vec![t.clone()]).await;
    let user = format!("app.{}", t.id);
    // pgjdbc's startup parameters (less extra_float_digits, a setting of its own to set up).
    let jdbc = [("user", user.as_str()), ("client_encoding", "UTF8"), ("DateStyle", "ISO")];
    let (mut s, reply) = login_reply(TcpStream::connect(h.addr).await.expect("proxy"), &jdbc).await;
    let pid = backend_pid(&mut s).await;
    let pid_again = backend_pid(&mut s).await;
    assert_eq!(pid, pid_again, "a pool of one");
    assert_eq!(logged_setups(&pid), Vec::<String>::new(), "the pgjdbc-like client was set up");
    assert_eq!(status(&reply, "DateStyle").as_deref(), Some("ISO, MDY"), "{:?}", summary(&reply));
    send(&mut s, &terminate()).await;
    // The control: a DateStyle that is not the pool's is set up, and the log shows it.
    let other = [("user", user.as_str()), ("DateStyle", "SQL")];
    let (mut s, _) = login_reply(TcpStream::connect(h.addr).await.expect("proxy"), &other).await;
    let pid = backend_pid(&mut s).await;
    let setups = logged_setups(&pid);
    assert!(setups.iter().any(|l| l.contains("DateStyle")), "{setups:?}");
}
