//! The console driven by a real driver (tokio-postgres, simple and extended protocol) and
//! by raw frames, over an in-memory stream.

use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio_postgres::types::{FromSql, Type};
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

use super::*;
use crate::console::{Access, ConsoleFuture, ConsoleSource};
use crate::protocol::frame::MAX_STARTUP_PACKET;
use crate::protocol::startup::{self, StartupPacket};

/// A proxy with two tenants, recording the actions asked of it.
#[derive(Default)]
struct Fake {
    actions: Mutex<Vec<Action>>,
}

fn pool_row(tenant: &str, active: i64) -> Vec<Value> {
    let mut row: Vec<Value> = vec![tenant.into(), "app".into(), Value::Int(active), Value::Int(1)];
    row.extend((0..11).map(Value::Int));
    row.push("transaction".into());
    row.push(Value::Null);
    row
}

impl ConsoleSource for Fake {
    fn rows(&self, view: View) -> ConsoleFuture<'_, Vec<Vec<Value>>> {
        Box::pin(async move {
            Ok(match view {
                View::Pools => vec![pool_row("acme", 3), pool_row("globex", 0)],
                View::Lists => vec![vec!["pools".into(), Value::Int(2)]],
                View::StatsTotals => {
                    let mut row = vec![Value::from("acme")];
                    row.extend((1..=12).map(|i| Value::Int(i * 12_345_678)));
                    vec![row]
                }
                // Not as wide as the view: a bug on the proxy's side.
                View::Users => vec![vec!["app".into()]],
                _ => Vec::new(),
            })
        })
    }

    fn act<'a>(&'a self, action: &'a Action) -> ConsoleFuture<'a, ()> {
        Box::pin(async move {
            if *action == Action::Resume(Some("nope".into())) {
                return Err(ConsoleError::NoSuchDatabase("nope".into()));
            }
            self.actions.lock().expect("lock").push(action.clone());
            Ok(())
        })
    }
}

/// The listener's part in the test: answer the startup (refusing SSL), greet, serve.
async fn serve(stream: DuplexStream, fake: Arc<Fake>, access: Access) -> Result<SessionEnd, SessionError> {
    let mut reader = crate::protocol::FrameReader::new(stream, MAX_STARTUP_PACKET);
    loop {
        let packet = reader.read_startup().await?.ok_or(SessionError::Protocol("no startup".into()))?;
        match startup::parse(&packet) {
            Ok(StartupPacket::Startup(_)) => break,
            Ok(StartupPacket::SslRequest | StartupPacket::GssEncRequest) => {
                reader.get_mut().write_all(b"N").await?;
            }
            other => return Err(SessionError::Protocol(format!("{other:?}"))),
        }
    }
    let (mut stream, rest) = reader.into_parts();
    let mut out = BytesMut::new();
    greeting(&mut out, 1, 2);
    stream.write_all(&out).await?;
    serve_console(stream, rest, &*fake, access).await
}

type Served = tokio::task::JoinHandle<Result<SessionEnd, SessionError>>;

async fn connect(access: Access) -> (Client, Arc<Fake>, Served) {
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let fake = Arc::new(Fake::default());
    let served = tokio::spawn(serve(server_io, fake.clone(), access));
    let (client, conn) = tokio_postgres::Config::new()
        .user("admin")
        .dbname("pgbouncer")
        .connect_raw(client_io, NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    (client, fake, served)
}

/// `numeric` in binary, back to an integer (what a driver's decimal type does).
#[derive(Debug, PartialEq)]
struct Numeric(i64);

impl<'a> FromSql<'a> for Numeric {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        let word = |i: usize| -> Result<i64, Box<dyn std::error::Error + Sync + Send>> {
            let b = raw.get(2 * i..2 * i + 2).ok_or("short numeric")?;
            Ok(i16::from_be_bytes([b[0], b[1]]).into())
        };
        let (n, weight, sign) = (word(0)?, word(1)?, word(2)?);
        let mut v = 0i64;
        for i in 0..n {
            v += word(4 + i as usize)? * 10_000i64.pow((weight - i) as u32);
        }
        Ok(Numeric(if sign == 0x4000 { -v } else { v }))
    }
    fn accepts(ty: &Type) -> bool {
        *ty == Type::NUMERIC
    }
}

fn rows_of(messages: Vec<SimpleQueryMessage>) -> Vec<tokio_postgres::SimpleQueryRow> {
    messages
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn show_pools_over_the_simple_protocol() {
    let (client, _, _) = connect(Access::Stats).await;
    let rows = rows_of(client.simple_query("SHOW POOLS").await.expect("show"));
    assert_eq!(rows.len(), 2);
    let names: Vec<_> = rows[0].columns().iter().map(|c| c.name()).collect();
    let want: Vec<_> = View::Pools.columns().iter().map(|c| c.name).collect();
    assert_eq!(names, want);
    assert_eq!(rows[0].get("database"), Some("acme"));
    assert_eq!(rows[0].get("cl_active"), Some("3"));
    assert_eq!(rows[1].get("database"), Some("globex"));
    assert_eq!(rows[1].get("load_balance_hosts"), None);
    let v = rows_of(client.simple_query("show version;").await.expect("version"));
    assert!(v[0].get(0).expect("version").starts_with("PgBouncer 1.25.2 compatible (pgtenant "));
}

#[tokio::test]
async fn show_pools_over_the_extended_protocol() {
    let (client, _, _) = connect(Access::Stats).await;
    let rows = client.query("SHOW POOLS", &[]).await.expect("query");
    assert_eq!(rows.len(), 2);
    let cols = rows[0].columns();
    assert_eq!(cols.len(), 17);
    assert_eq!((cols[0].name(), cols[0].type_()), ("database", &Type::TEXT));
    assert_eq!((cols[2].name(), cols[2].type_()), ("cl_active", &Type::INT4));
    assert_eq!((cols[16].name(), cols[16].type_()), ("load_balance_hosts", &Type::TEXT));
    assert_eq!(rows[0].get::<_, String>("database"), "acme");
    assert_eq!(rows[0].get::<_, i32>("cl_active"), 3);
    assert_eq!(rows[1].get::<_, i32>("maxwait_us"), 10);
    assert_eq!(rows[1].get::<_, Option<String>>("load_balance_hosts"), None);

    // numeric columns, in binary.
    let stmt = client.prepare("show stats_totals").await.expect("prepare");
    assert_eq!(stmt.columns()[1].type_(), &Type::NUMERIC);
    assert_eq!(stmt.params(), &[]);
    let rows = client.query(&stmt, &[]).await.expect("query");
    assert_eq!(rows[0].get::<_, Numeric>("xact_count"), Numeric(2 * 12_345_678));
    assert_eq!(rows[0].get::<_, Numeric>("client_login_count"), Numeric(12 * 12_345_678));
    // The prepared statement runs again.
    assert_eq!(client.query(&stmt, &[]).await.expect("again").len(), 1);
}

#[tokio::test]
async fn errors_leave_the_session_usable() {
    let (client, _, _) = connect(Access::Admin).await;
    for q in ["SHOW FOO", "SHOW POOLS; SHOW STATS"] {
        let e = client.simple_query(q).await.expect_err(q);
        let db = e.as_db_error().expect("db error");
        assert_eq!(db.code().code(), "08P01");
        assert_eq!(db.message(), format!("invalid command '{q}', use SHOW HELP;"));
    }
    let e = client.query("SHOW NOTHING", &[]).await.expect_err("extended");
    assert_eq!(e.as_db_error().expect("db").code().code(), "08P01");
    // A row that does not fit its view is the proxy's bug: XX000, session goes on.
    let e = client.simple_query("SHOW USERS").await.expect_err("bad row");
    assert_eq!(e.as_db_error().expect("db").code().code(), "XX000");
    let e = client.query("SHOW USERS", &[]).await.expect_err("bad row");
    assert_eq!(e.as_db_error().expect("db").code().code(), "XX000");
    assert_eq!(client.query("SHOW LISTS", &[]).await.expect("after errors").len(), 1);
    assert_eq!(rows_of(client.simple_query("SHOW LISTS").await.expect("simple")).len(), 1);
}

#[tokio::test]
async fn actions_reach_the_proxy_for_admins_only() {
    let (client, fake, _) = connect(Access::Admin).await;
    client.simple_query("PAUSE acme").await.expect("pause");
    client.execute("RESUME acme", &[]).await.expect("resume");
    client.simple_query("SET default_pool_size = 5").await.expect("set");
    client.simple_query("SET client_encoding = 'UTF8'").await.expect("ignored set");
    let e = client.simple_query("RESUME nope").await.expect_err("no such tenant");
    assert_eq!(e.as_db_error().expect("db").message(), "no such database: nope");
    assert_eq!(
        *fake.actions.lock().expect("lock"),
        vec![
            Action::Pause(Some("acme".into())),
            Action::Resume(Some("acme".into())),
            Action::Set { key: "default_pool_size".into(), value: "5".into() },
        ]
    );

    let (client, fake, _) = connect(Access::Stats).await;
    for q in ["PAUSE", "RELOAD", "SHUTDOWN"] {
        let e = client.simple_query(q).await.expect_err(q);
        assert_eq!(e.as_db_error().expect("db").message(), "admin access needed");
    }
    let e = client.query("KILL acme", &[]).await.expect_err("extended");
    assert_eq!(e.as_db_error().expect("db").message(), "admin access needed");
    assert!(fake.actions.lock().expect("lock").is_empty());
}

#[tokio::test]
async fn shutdown_ends_the_session_without_a_reply() {
    let (client, fake, served) = connect(Access::Admin).await;
    assert!(client.simple_query("SHUTDOWN").await.is_err());
    assert_eq!(served.await.expect("join").expect("served"), SessionEnd::Shutdown);
    assert_eq!(*fake.actions.lock().expect("lock"), vec![Action::Shutdown(ShutdownMode::Immediate)]);
}

/// Raw frames, after the greeting.
async fn raw(access: Access) -> (DuplexStream, Served) {
    let (client, server) = tokio::io::duplex(64 * 1024);
    let fake = Arc::new(Fake::default());
    let served = tokio::spawn(async move { serve_console(server, BytesMut::new(), &*fake, access).await });
    (client, served)
}

fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&i32::try_from(body.len() + 4).expect("small").to_be_bytes());
    m.extend_from_slice(body);
    m
}

/// Reads frames until ReadyForQuery or end of stream; returns their tags.
async fn tags_until_ready(s: &mut DuplexStream) -> Vec<u8> {
    let mut tags = Vec::new();
    loop {
        let mut h = [0u8; 5];
        if s.read_exact(&mut h).await.is_err() {
            return tags;
        }
        let len = i32::from_be_bytes([h[1], h[2], h[3], h[4]]) as usize;
        let mut body = vec![0; len - 4];
        s.read_exact(&mut body).await.expect("body");
        tags.push(h[0]);
        if h[0] == b'Z' {
            return tags;
        }
    }
}

#[tokio::test]
async fn execute_with_a_row_limit_suspends_the_portal() {
    let (mut s, _) = raw(Access::Stats).await;
    let mut m = msg(b'P', b"\0SHOW POOLS\0\0\0");
    m.extend(msg(b'B', b"\0\0\0\0\0\0\0\0"));
    m.extend(msg(b'E', b"\0\0\0\0\x01"));
    m.extend(msg(b'E', b"\0\0\0\0\x01"));
    m.extend(msg(b'E', b"\0\0\0\0\x01"));
    m.extend(msg(b'S', b""));
    s.write_all(&m).await.expect("write");
    // The second Execute sends the last row and, knowing there is no more, completes; a
    // third completes again with nothing.
    assert_eq!(tags_until_ready(&mut s).await, b"12DsDCCZ");
    // Portals end with the implicit transaction.
    let mut m = msg(b'E', b"\0\0\0\0\0");
    m.extend(msg(b'S', b""));
    s.write_all(&m).await.expect("write");
    assert_eq!(tags_until_ready(&mut s).await, b"EZ");
    // Parameters where the console takes none: 08P01, then everything up to Sync skipped.
    let mut m = msg(b'P', b"\0show lists\0\0\0");
    m.extend(msg(b'B', b"\0\0\0\0\0\x01\0\0\0\x011\0\0"));
    m.extend(msg(b'E', b"\0\0\0\0\0"));
    // A simple Query before Sync is discarded too, as PostgreSQL does.
    m.extend(msg(b'Q', b"SHOW LISTS\0"));
    m.extend(msg(b'S', b""));
    s.write_all(&m).await.expect("write");
    let mut got = vec![0u8; 5];
    s.read_exact(&mut got).await.expect("parse complete");
    assert_eq!(got[0], b'1');
    let mut h = [0u8; 5];
    s.read_exact(&mut h).await.expect("error");
    let mut body = vec![0; i32::from_be_bytes([h[1], h[2], h[3], h[4]]) as usize - 4];
    s.read_exact(&mut body).await.expect("error body");
    let fields = crate::protocol::backend::parse_error_fields(&body);
    assert_eq!((h[0], fields.code.as_str()), (b'E', "08P01"));
    assert_eq!(fields.message, "bind message supplies 1 parameters, but prepared statement requires 0");
    assert_eq!(tags_until_ready(&mut s).await, b"Z");
    // Describe of a statement: no parameters, then the columns; Close; Flush sends.
    let mut m = msg(b'P', b"st\0show lists\0\0\0");
    m.extend(msg(b'D', b"Sst\0"));
    m.extend(msg(b'C', b"Sst\0"));
    m.extend(msg(b'H', b""));
    s.write_all(&m).await.expect("write");
    let mut got = vec![0u8; 5 + 4 + 5 + 6 + 5 + 4];
    s.read_exact(&mut got).await.expect("flushed");
    assert_eq!(got[0], b'1');
    assert_eq!(got[5], b't');
}

#[tokio::test]
async fn malformed_and_unsupported_messages_end_the_session_with_08p01() {
    for bad in [
        msg(b'F', b"\0\0\0\0"),
        msg(b'd', b"copy"),
        msg(b'B', b"\0\0\0\x05"),
        msg(b'Q', b"SHOW POOLS"),
        msg(b'E', b"\0\0\0"),
        b"Q\x7f\xff\xff\xff".to_vec(),
        b"Q\0\0\0\x01".to_vec(),
    ] {
        let (mut s, served) = raw(Access::Admin).await;
        s.write_all(&bad).await.expect("write");
        let mut reply = Vec::new();
        s.read_to_end(&mut reply).await.expect("read");
        assert_eq!(reply.first(), Some(&b'E'), "{bad:?}");
        let fields = crate::protocol::backend::parse_error_fields(&reply[5..]);
        assert_eq!((fields.severity.as_str(), fields.code.as_str()), ("FATAL", "08P01"), "{bad:?}");
        assert!(matches!(served.await.expect("join"), Err(SessionError::Protocol(_))));
    }
}

#[tokio::test]
async fn terminate_and_end_of_stream_end_cleanly() {
    let (mut s, served) = raw(Access::Admin).await;
    s.write_all(&msg(b'X', b"")).await.expect("write");
    assert_eq!(served.await.expect("join").expect("ok"), SessionEnd::ClientClosed);
    let (s, served) = raw(Access::Admin).await;
    drop(s);
    assert_eq!(served.await.expect("join").expect("ok"), SessionEnd::ClientClosed);
}

proptest::proptest! {
    /// Whatever bytes a client sends after login, the session ends (or waits) without panic.
    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async {
            let (mut s, served) = raw(Access::Admin).await;
            let _ = s.write_all(&data).await;
            drop(s);
            let _ = served.await.expect("no panic");
        });
    }
}

/// psql, the tool operators reach for first, over TCP: its table and its error output.
#[tokio::test]
async fn psql_shows_pools_and_reports_errors() {
    let psql = std::path::Path::new("/usr/lib/postgresql/15/bin/psql");
    if !psql.exists() {
        eprintln!("skipped: no psql at {}", psql.display());
        return;
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        for _ in 0..2 {
            let (tcp, _) = listener.accept().await.expect("accept");
            let (a, b) = tokio::io::duplex(64 * 1024);
            tokio::spawn(serve(b, Arc::new(Fake::default()), Access::Stats));
            tokio::spawn(async move {
                let (mut tcp, mut a) = (tcp, a);
                let _ = tokio::io::copy_bidirectional(&mut tcp, &mut a).await;
            });
        }
    });
    // std::process on a blocking thread: the runtime is built without tokio's `process`.
    let run = |sql: &'static str| {
        let mut psql = std::process::Command::new(psql);
        psql.args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "admin",
            "-d",
            "pgbouncer",
            "-X",
            "-A",
            "-F",
            ",",
        ])
        .args(["-v", "ON_ERROR_STOP=1", "-c", sql])
        .env("PGSSLMODE", "disable");
        tokio::task::spawn_blocking(move || psql.output())
    };
    let out = run("SHOW POOLS").await.expect("joined").expect("psql");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout} {}", String::from_utf8_lossy(&out.stderr));
    let mut lines = stdout.lines();
    assert_eq!(
        lines.next(),
        Some(View::Pools.columns().iter().map(|c| c.name).collect::<Vec<_>>().join(",").as_str())
    );
    assert_eq!(lines.next(), Some("acme,app,3,1,0,1,2,3,4,5,6,7,8,9,10,transaction,"));
    let out = run("PAUSE").await.expect("joined").expect("psql");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("ERROR:  admin access needed"));
}
