//! Containment end to end (DESIGN.md "Containment", issue 10): two tenants share one login
//! role and a pool of ONE server connection (transaction mode), so every transaction of either
//! lands on the same backend — checked with `pg_backend_pid()` — and nothing of one session may
//! reach the other: session state, replies, statements. Raw-protocol clients send what a
//! driver never would (COPY with stray Syncs, names they never prepared, Terminate behind a
//! query); where PostgreSQL's own answer is the reference, the same bytes go straight to the
//! cluster over its Unix socket and the two transcripts are compared message by message.

use std::time::{Duration, Instant};

use pgtenant::config::{Config, TenantConfig};
use pgtenant::model::{Isolation, PoolMode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio_postgres::{Client, SimpleQueryMessage};

use crate::support::*;

// ---- setup -------------------------------------------------------------------------------

/// Two tenants sharing one login role, in `mode` (schema or shared isolation), each with
/// `items` (three rows owned by the tenant), `t (id int, owner text)` for COPY and a sequence
/// `a_seq`; transaction mode, pool size 1 (one pool: same upstream, database and role).
async fn shared_pair(mode: Isolation) -> (TenantConfig, TenantConfig) {
    let role = unique("cnrole");
    let password = format!("pw-{role}");
    let admin = admin("postgres").await;
    admin.batch_execute(&format!("CREATE ROLE {role} LOGIN PASSWORD '{password}'")).await.expect("role");
    let dbname = unique("cndb");
    admin.batch_execute(&format!("CREATE DATABASE {dbname}")).await.expect("db");
    let db = connect_str(&cluster().superuser_conninfo(&dbname)).await;
    let a = unique("cna");
    let b = unique("cnb");
    match mode {
        Isolation::Schema => {
            for id in [&a, &b] {
                db.batch_execute(&format!(
                    "CREATE SCHEMA \"{id}\";
                     CREATE TABLE \"{id}\".items (owner text);
                     INSERT INTO \"{id}\".items SELECT '{id}' FROM generate_series(1, 3);
                     CREATE TABLE \"{id}\".t (id int, owner text);
                     CREATE SEQUENCE \"{id}\".a_seq;
                     GRANT USAGE, CREATE ON SCHEMA \"{id}\" TO {role};
                     GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA \"{id}\" TO {role};
                     GRANT USAGE, SELECT, UPDATE ON SEQUENCE \"{id}\".a_seq TO {role};"
                ))
                .await
                .expect("schema");
            }
        }
        Isolation::Shared => {
            db.batch_execute(&format!(
                "CREATE TABLE items (tenant_id text NOT NULL, owner text NOT NULL);
                 INSERT INTO items SELECT '{a}', '{a}' FROM generate_series(1, 3);
                 INSERT INTO items SELECT '{b}', '{b}' FROM generate_series(1, 3);
                 ALTER TABLE items ENABLE ROW LEVEL SECURITY;
                 CREATE POLICY tenant_rows ON items USING (tenant_id = current_setting('pgtenant.tenant_id', true));
                 CREATE TABLE t (id int, owner text);
                 CREATE SEQUENCE a_seq;
                 GRANT CREATE, USAGE ON SCHEMA public TO {role};
                 GRANT SELECT, INSERT, UPDATE ON items, t TO {role};
                 GRANT USAGE, SELECT, UPDATE ON SEQUENCE a_seq TO {role};"
            ))
            .await
            .expect("shared tables");
        }
        Isolation::Database => {
            unreachable!("two tenants of one database share a login role only in schema or shared isolation")
        }
    }
    let tenant = |id: &str| {
        let mut t = TenantConfig::new(id, "local", &dbname, &role, Some(&password));
        t.isolation = mode;
        with_mode(t, PoolMode::Transaction, 1)
    };
    (tenant(&a), tenant(&b))
}

/// A proxy for `tenants` that gives up on a checkout after 3 s (a test that waits longer has
/// failed already).
async fn start_quick(tenants: Vec<TenantConfig>) -> Harness {
    let mut cfg: Config = config(tenants);
    cfg.pool.checkout_timeout = 3.0;
    start(cfg).await
}

async fn pid(c: &Client) -> i32 {
    c.query_one("SELECT pg_backend_pid()", &[]).await.expect("pg_backend_pid").get(0)
}

/// The rows of a simple query, as text (NULL as "NULL").
async fn rows(c: &Client, sql: &str) -> Result<Vec<Vec<String>>, tokio_postgres::Error> {
    Ok(c.simple_query(sql)
        .await?
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).unwrap_or("NULL").to_owned()).collect())
            }
            _ => None,
        })
        .collect())
}

/// An error with its SQLSTATE and message (Display alone says "db error").
fn why(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!("{} {}", d.code().code(), d.message()),
        None => e.to_string(),
    }
}

/// Collects failed expectations, so that one run reports every route that leaks.
#[derive(Default)]
struct Failures(Vec<String>);

impl Failures {
    fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.0.push(what());
        }
    }

    fn assert_none(self) {
        assert!(self.0.is_empty(), "{} failure(s):\n  {}", self.0.len(), self.0.join("\n  "));
    }
}

// ---- raw protocol ------------------------------------------------------------------------

fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&i32::try_from(body.len() + 4).expect("small").to_be_bytes());
    m.extend_from_slice(body);
    m
}

fn cstrs(parts: &[&[u8]]) -> Vec<u8> {
    let mut b = Vec::new();
    for p in parts {
        b.extend_from_slice(p);
        b.push(0);
    }
    b
}

fn query(sql: &str) -> Vec<u8> {
    msg(b'Q', &cstrs(&[sql.as_bytes()]))
}

fn parse(name: &str, sql: &str) -> Vec<u8> {
    let mut body = cstrs(&[name.as_bytes(), sql.as_bytes()]);
    body.extend_from_slice(&0i16.to_be_bytes());
    msg(b'P', &body)
}

fn bind(portal: &str, stmt: &str) -> Vec<u8> {
    let mut body = cstrs(&[portal.as_bytes(), stmt.as_bytes()]);
    body.extend_from_slice(&[0, 0, 0, 0, 0, 0]); // no formats, no parameters, no result formats
    msg(b'B', &body)
}

fn execute(portal: &str) -> Vec<u8> {
    let mut body = cstrs(&[portal.as_bytes()]);
    body.extend_from_slice(&0i32.to_be_bytes());
    msg(b'E', &body)
}

fn describe(kind: u8, name: &str) -> Vec<u8> {
    let mut body = vec![kind];
    body.extend_from_slice(&cstrs(&[name.as_bytes()]));
    msg(b'D', &body)
}

fn close(kind: u8, name: &str) -> Vec<u8> {
    let mut body = vec![kind];
    body.extend_from_slice(&cstrs(&[name.as_bytes()]));
    msg(b'C', &body)
}

fn sync() -> Vec<u8> {
    msg(b'S', &[])
}

fn copy_data(data: &str) -> Vec<u8> {
    msg(b'd', data.as_bytes())
}

fn copy_done() -> Vec<u8> {
    msg(b'c', &[])
}

fn copy_fail(why: &str) -> Vec<u8> {
    msg(b'f', &cstrs(&[why.as_bytes()]))
}

fn terminate() -> Vec<u8> {
    msg(b'X', &[])
}

fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

/// The whole backend messages at the start of `bytes` (tag, body).
fn messages(bytes: &[u8]) -> Vec<(u8, &[u8])> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while rest.len() >= 5 {
        let len = i32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        if len < 4 || rest.len() < len + 1 {
            break;
        }
        out.push((rest[0], &rest[5..len + 1]));
        rest = &rest[len + 1..];
    }
    out
}

fn field(body: &[u8], code: u8) -> Option<String> {
    body.split(|b| *b == 0)
        .find_map(|f| f.strip_prefix(&[code][..]).map(|v| String::from_utf8_lossy(v).into_owned()))
}

/// A transcript as comparable words: `E(<sqlstate>)`, `Z(<status>)`, `C(<tag>)`,
/// `D(<values>)`, the bare tag otherwise. ParameterStatus and BackendKeyData are left out
/// (pgtenant reports its own); so are notices (pgtenant's setup may cause some).
fn summary(bytes: &[u8]) -> Vec<String> {
    messages(bytes)
        .into_iter()
        .filter(|(tag, _)| !matches!(tag, b'S' | b'K' | b'N'))
        .map(|(tag, body)| match tag {
            b'E' => format!(
                "E({}{})",
                field(body, b'C').unwrap_or_default(),
                if field(body, b'V').as_deref() == Some("FATAL") { ",FATAL" } else { "" }
            ),
            b'Z' => format!("Z({})", body.first().map(|b| *b as char).unwrap_or('?')),
            b'C' => format!("C({})", String::from_utf8_lossy(body.strip_suffix(b"\0").unwrap_or(body))),
            b'D' => format!("D({})", data_row(body).join("|")),
            other => (other as char).to_string(),
        })
        .collect()
}

fn data_row(body: &[u8]) -> Vec<String> {
    let mut values = Vec::new();
    if body.len() < 2 {
        return values;
    }
    let n = i16::from_be_bytes([body[0], body[1]]);
    let mut rest = &body[2..];
    for _ in 0..n {
        if rest.len() < 4 {
            break;
        }
        let len = i32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
        rest = &rest[4..];
        if len < 0 {
            values.push("NULL".into());
            continue;
        }
        let len = (len as usize).min(rest.len());
        values.push(String::from_utf8_lossy(&rest[..len]).into_owned());
        rest = &rest[len..];
    }
    values
}

fn ready_count(bytes: &[u8]) -> usize {
    messages(bytes).iter().filter(|(t, _)| *t == b'Z').count()
}

/// Reads until `n` ReadyForQuery messages have arrived, the peer closes, or `limit` passes;
/// returns what was read and whether the peer closed.
async fn read_ready<S: AsyncRead + Unpin>(s: &mut S, n: usize, limit: Duration) -> (Vec<u8>, bool) {
    let mut got = Vec::new();
    let mut buf = vec![0u8; 16384];
    let deadline = tokio::time::Instant::now() + limit;
    while ready_count(&got) < n {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (got, true),
            Ok(Ok(k)) => got.extend_from_slice(&buf[..k]),
            Err(_) => break,
        }
    }
    (got, false)
}

/// Reads until nothing arrives for `quiet`, the peer closes, or 10 s pass.
async fn read_quiet<S: AsyncRead + Unpin>(s: &mut S, quiet: Duration) -> (Vec<u8>, bool) {
    let mut got = Vec::new();
    let mut buf = vec![0u8; 16384];
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        match tokio::time::timeout(quiet, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (got, true),
            Ok(Ok(k)) => got.extend_from_slice(&buf[..k]),
            Err(_) => break,
        }
    }
    (got, false)
}

/// Reads until the peer closes (or `limit`); returns what was read and whether it closed.
async fn read_eof<S: AsyncRead + Unpin>(s: &mut S, limit: Duration) -> (Vec<u8>, bool) {
    let mut got = Vec::new();
    let mut buf = vec![0u8; 16384];
    let closed = tokio::time::timeout(limit, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(k) => got.extend_from_slice(&buf[..k]),
            }
        }
    })
    .await
    .is_ok();
    (got, closed)
}

/// Logs in with a raw startup packet; returns the stream after the first ReadyForQuery.
async fn login<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, params: &[(&str, &str)]) -> S {
    s.write_all(&startup_packet(params)).await.expect("startup");
    let (got, closed) = read_ready(&mut s, 1, Duration::from_secs(10)).await;
    assert!(!closed && ready_count(&got) == 1, "login failed: {:?}", summary(&got));
    s
}

/// A raw client of `tenant` through the proxy (trust authentication).
async fn raw_proxy(h: &Harness, tenant: &str) -> TcpStream {
    let user = format!("app.{tenant}");
    login(TcpStream::connect(h.addr).await.expect("connect proxy"), &[("user", &user)]).await
}

/// A raw session straight to the cluster (Unix socket, trust) as the superuser.
async fn raw_direct(db: &str) -> UnixStream {
    let sock = cluster().socket_dir.join(format!(".s.PGSQL.{}", cluster().port));
    let s = UnixStream::connect(sock).await.expect("connect socket");
    login(s, &[("user", "postgres"), ("database", db)]).await
}

async fn send<S: AsyncWrite + Unpin>(s: &mut S, bytes: &[u8]) {
    s.write_all(bytes).await.expect("send");
}

// ---- a. session state and a handoff to another tenant -----------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_state_never_survives_a_handoff_to_another_tenant() {
    let mut f = Failures::default();
    for mode in [Isolation::Schema, Isolation::Shared] {
        let (a, b) = shared_pair(mode).await;
        let h = start_quick(vec![a.clone(), b.clone()]).await;
        let (ca, cb) = (h.client(&a.id).await, h.client(&b.id).await);
        let p0 = pid(&ca).await;
        assert_eq!(pid(&cb).await, p0, "{mode:?}: the two tenants must share the one server connection");

        // Runs `sql` as tenant a (simple protocol), then `check` as tenant b on the same backend.
        macro_rules! handoff {
            ($what:expr, $sql:expr, $check:expr) => {{
                let what = format!("{mode:?}: {}", $what);
                match ca.simple_query($sql).await {
                    Ok(_) => {}
                    Err(e) => f.0.push(format!("{what}: tenant a's `{}` failed: {}", $sql, why(&e))),
                }
                match cb.query_one("SELECT pg_backend_pid()", &[]).await.map(|r| r.get::<_, i32>(0)) {
                    Ok(p) if p == p0 => {}
                    other => f.0.push(format!("{what}: tenant b not on the shared backend {p0}: {other:?}")),
                }
                let check = $check;
                let r = rows(&cb, check).await;
                (what, r)
            }};
        }

        // Temporary table (in a transaction block, so nothing sees a CREATE TEMP statement).
        let (what, r) = handoff!(
            "temp table",
            "BEGIN; CREATE TEMP TABLE items AS SELECT 'leak'::text AS owner; COMMIT",
            "SELECT owner FROM items"
        );
        match r {
            Ok(r) => f.check(r.len() == 3 && r.iter().all(|row| row[0] == b.id), || {
                format!("{what}: tenant b's `SELECT owner FROM items` saw {r:?}")
            }),
            Err(e) => f.0.push(format!("{what}: tenant b's query failed: {}", why(&e))),
        }

        // Settings changed without a SET tag: set_config, and inside a DO block.
        let (what, r) = handoff!(
            "set_config / DO settings",
            "DO $$BEGIN PERFORM set_config('bytea_output','escape',false); END$$; \
             SELECT set_config('statement_timeout','1',false)",
            "SELECT current_setting('statement_timeout'), current_setting('bytea_output')"
        );
        match r {
            Ok(r) => f.check(r == vec![vec!["0".to_owned(), "hex".to_owned()]], || {
                format!("{what}: tenant b sees statement_timeout, bytea_output = {r:?}")
            }),
            Err(e) => f.0.push(format!("{what}: tenant b's SHOW failed: {}", why(&e))),
        }

        // LISTEN inside a DO block.
        let (what, r) = handoff!(
            "LISTEN in DO",
            "DO $$BEGIN EXECUTE 'LISTEN chan_x'; END$$",
            "SELECT count(*) FROM pg_listening_channels()"
        );
        match r {
            Ok(r) => {
                f.check(r == vec![vec!["0".to_owned()]], || format!("{what}: tenant b listens to {r:?}"))
            }
            Err(e) => f.0.push(format!("{what}: tenant b's query failed: {}", why(&e))),
        }

        // A WITH HOLD cursor declared inside a transaction block.
        let (what, r) = handoff!(
            "WITH HOLD cursor",
            "BEGIN; DECLARE c CURSOR WITH HOLD FOR SELECT 'cursor-of-a'; COMMIT",
            "FETCH ALL FROM c"
        );
        match r {
            Ok(r) => f.0.push(format!("{what}: tenant b fetched tenant a's cursor: {r:?}")),
            Err(e) => f.check(code(&e) == "34000", || format!("{what}: expected 34000, got {e}")),
        }

        // lastval().
        let (what, r) = handoff!("lastval", "SELECT nextval('a_seq')", "SELECT lastval()");
        match r {
            Ok(r) => f.0.push(format!("{what}: tenant b's lastval() = {r:?}")),
            Err(e) => f.check(code(&e) == "55000", || format!("{what}: expected 55000, got {e}")),
        }

        // Advisory locks.
        let (what, r) = handoff!(
            "advisory lock",
            "SELECT pg_advisory_lock(42)",
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
        );
        match r {
            Ok(r) => f.check(r == vec![vec!["0".to_owned()]], || {
                format!("{what}: tenant b holds advisory locks: {r:?}")
            }),
            Err(e) => f.0.push(format!("{what}: tenant b's query failed: {}", why(&e))),
        }

        // A protocol-level prepared statement (tokio-postgres prepares a named statement).
        let what = format!("{mode:?}: prepared statement");
        match ca.prepare("SELECT 'prepared-by-a'::text").await {
            Ok(stmt) => {
                if let Err(e) = ca.query(&stmt, &[]).await {
                    f.0.push(format!("{what}: tenant a's statement failed: {}", why(&e)));
                }
            }
            Err(e) => f.0.push(format!("{what}: tenant a's prepare failed: {}", why(&e))),
        }
        match rows(
            &cb,
            "SELECT count(*), string_agg(statement, ' / '), pg_backend_pid() FROM pg_prepared_statements",
        )
        .await
        {
            Ok(r) => f.check(r.first().is_some_and(|row| row[0] == "0" && row[2] == p0.to_string()), || {
                format!("{what}: tenant b sees prepared statements (count, text, pid): {r:?}")
            }),
            Err(e) => f.0.push(format!("{what}: tenant b's query failed: {}", why(&e))),
        }
        // Tenant a's own isolation is set up again after the resets (and its temporary table
        // went with the first handoff to b).
        match rows(&ca, "SELECT owner FROM items").await {
            Ok(r) => f.check(r.len() == 3 && r.iter().all(|row| row[0] == a.id), || {
                format!("{mode:?}: tenant a afterwards sees {r:?}")
            }),
            Err(e) => f.0.push(format!("{mode:?}: tenant a afterwards: {}", why(&e))),
        }
    }
    f.assert_none();
}

// ---- b. isolation settings within one tenant ---------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolation_setting_changed_without_set_does_not_reach_the_next_client_of_the_tenant() {
    let mut f = Failures::default();
    for mode in [Isolation::Schema, Isolation::Shared] {
        let (a, b) = shared_pair(mode).await;
        let h = start_quick(vec![a.clone(), b.clone()]).await;
        let hijacks = match mode {
            Isolation::Schema => [
                format!("SELECT set_config('search_path', '\"{}\"', false)", b.id),
                format!("DO $$BEGIN PERFORM set_config('search_path', '\"{}\"', false); END$$", b.id),
            ],
            _ => [
                format!("SELECT set_config('pgtenant.tenant_id', '{}', false)", b.id),
                format!("DO $$BEGIN PERFORM set_config('pgtenant.tenant_id', '{}', false); END$$", b.id),
            ],
        };
        let first = h.client(&a.id).await;
        let p0 = pid(&first).await;
        let existing = h.client(&a.id).await;
        for hijack in &hijacks {
            first.batch_execute(hijack).await.expect("hijack runs");
            // The hijack took effect for the client that ran it (so the check below means
            // something): it now reads tenant b's rows on this backend.
            let own = rows(&first, "SELECT owner FROM items").await.expect("hijacker reads");
            f.check(own.iter().all(|r| r[0] == b.id) && !own.is_empty(), || {
                format!("{mode:?} `{hijack}`: did not take effect for its own client ({own:?}): the check is void")
            });
            let new = h.client(&a.id).await;
            for (who, c) in [("a new client", &new), ("an existing client", &existing)] {
                match rows(c, "SELECT owner, pg_backend_pid() FROM items").await {
                    Ok(r) => f.check(
                        r.len() == 3 && r.iter().all(|row| row[0] == a.id && row[1] == p0.to_string()),
                        || format!("{mode:?} after `{hijack}`: {who} of tenant a saw (owner, pid) {r:?}, backend {p0}"),
                    ),
                    Err(e) => f.0.push(format!("{mode:?} after `{hijack}`: {who}: {}", why(&e))),
                }
                // The hijacker uses the connection again before the next check.
                let _ = first.batch_execute(hijack).await;
            }
        }
    }
    f.assert_none();
}

// ---- c. replies never cross clients -------------------------------------------------------

/// A COPY failing on its data with Syncs behind that data (see
/// [`a_copy_failing_behind_syncs_never_leaves_a_query_unanswered`]).
fn uncertain(name: &str) -> bool {
    name.contains("bad row")
}

/// Pipelines that derail a reply count made of "one ReadyForQuery per Sync": Syncs that the
/// server swallows during COPY IN, Syncs that each earn a ReadyForQuery after an error in a
/// simple-query COPY, then a query whose rows would reach the next client.
fn derailing_sequences(slow: bool) -> Vec<(&'static str, Vec<u8>)> {
    // Slow, the forged rows come after pgtenant has settled its count (and, on a model that
    // counted short, after it released the connection to the next client).
    let forged = query(if slow {
        "SELECT 104 AS id, 'forged' AS owner FROM pg_sleep(0.3)"
    } else {
        "SELECT 104 AS id, 'forged' AS owner"
    });
    let copy = "COPY t FROM STDIN";
    vec![
        (
            "Query COPY, Sync, CopyFail, Sync, forged query",
            cat(&[query(copy), sync(), copy_fail("stop"), sync(), forged.clone()]),
        ),
        (
            "Query COPY, bad row, Sync, CopyDone, forged query",
            cat(&[query(copy), copy_data("oops\n"), sync(), copy_done(), forged.clone()]),
        ),
        (
            "Query COPY, bad row, Sync, Sync, CopyDone, forged query",
            cat(&[query(copy), copy_data("oops\n"), sync(), sync(), copy_done(), forged.clone()]),
        ),
        (
            "Execute COPY, Sync, CopyFail, Sync, Sync, forged query",
            cat(&[
                parse("", copy),
                bind("", ""),
                execute(""),
                sync(),
                copy_fail("stop"),
                sync(),
                sync(),
                forged.clone(),
            ]),
        ),
        (
            "Execute COPY, row, Sync, Sync, CopyDone, Sync, forged query",
            cat(&[
                parse("", copy),
                bind("", ""),
                execute(""),
                copy_data("1\tok\n"),
                sync(),
                sync(),
                copy_done(),
                sync(),
                forged.clone(),
            ]),
        ),
        (
            "Execute COPY, bad row, Sync, Sync, CopyDone, Sync, forged query",
            cat(&[
                parse("", copy),
                bind("", ""),
                execute(""),
                copy_data("oops\n"),
                sync(),
                sync(),
                copy_done(),
                sync(),
                forged,
            ]),
        ),
    ]
}

/// Tenant a's raw client sends each derailing pipeline and then sits idle, still connected;
/// tenant b then uses the pool of one. b must get exactly its own results and no error: not a
/// reply a's pipeline earned (containment rule 1), and not a 53300 because a's idle session
/// kept the only server connection (rule 5; issue 16: an ordinary error must not take a
/// connection out of the pool). Then a's next query must not receive b's rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_never_cross_to_another_tenant_after_irregular_copy_and_sync() {
    let mut f = Failures::default();
    for mode in [Isolation::Schema, Isolation::Shared] {
        let (a, b) = shared_pair(mode).await;
        let h = start_quick(vec![a.clone(), b.clone()]).await;
        {
            let (ca, cb) = (h.client(&a.id).await, h.client(&b.id).await);
            assert_eq!(pid(&ca).await, pid(&cb).await, "{mode:?}: one shared server connection");
        }
        for (n, (name, bytes)) in derailing_sequences(true).into_iter().enumerate() {
            let what = format!("{mode:?}, {name}");
            let cb = h.client(&b.id).await;
            let mut attacker = raw_proxy(&h, &a.id).await;
            send(&mut attacker, &bytes).await;
            let (mut seen_by_a, _) = read_quiet(&mut attacker, Duration::from_millis(500)).await;
            let failures_before = f.0.len();
            // Tenant b now uses the pool of one: only its own results, no error. Its first
            // query is a simple one, which would take any rows that arrive as its own.
            for i in 0..4i32 {
                let secret = format!("b-secret-{n}-{i}");
                match rows(&cb, &format!("SELECT {i} AS id, '{secret}' AS owner")).await {
                    Ok(r) => f.check(r == vec![vec![i.to_string(), secret.clone()]], || {
                        format!("{what}: tenant b's simple query {i} returned {r:?}")
                    }),
                    Err(e) => f.0.push(format!("{what}: tenant b's simple query {i} failed: {}", why(&e))),
                }
                match cb.query("SELECT $1::int AS id, $2::text AS owner", &[&i, &secret]).await {
                    Ok(r) => {
                        let got: Vec<(i32, String)> = r.iter().map(|r| (r.get(0), r.get(1))).collect();
                        f.check(got == vec![(i, secret.clone())], || {
                            format!("{what}: tenant b's query {i} returned {got:?}")
                        });
                    }
                    Err(e) => f.0.push(format!("{what}: tenant b's query {i} failed: {}", why(&e))),
                }
                match rows(&cb, "SELECT owner FROM items").await {
                    Ok(r) => f.check(r.len() == 3 && r.iter().all(|row| row[0] == b.id), || {
                        format!("{what}: tenant b's items query {i} returned {r:?}")
                    }),
                    Err(e) => f.0.push(format!("{what}: tenant b's items query {i} failed: {}", why(&e))),
                }
            }
            if f.0.len() > failures_before {
                f.0.push(format!("{what}: (what tenant a had received: {:?})", summary(&seen_by_a)));
            }
            // The other way round: the attacker's next query must not receive b's results.
            let _ = attacker.write_all(&query("SELECT 'a-own'")).await;
            let (more, _) = read_ready(&mut attacker, 1, Duration::from_secs(3)).await;
            seen_by_a.extend_from_slice(&more);
            let leaked = seen_by_a.windows(8).any(|w| w == b"b-secret");
            f.check(!leaked, || {
                format!("{what}: tenant a received tenant b's rows: {:?}", summary(&seen_by_a))
            });
        }
    }
    f.assert_none();
}

/// COPY/Sync orderings that pgtenant's reply model follows exactly (including Execute of a
/// COPY with two Syncs before CopyDone) get PostgreSQL's replies, in both pool modes, and the
/// pool of one is usable after each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn irregular_copy_and_sync_get_postgres_replies_and_the_pool_survives() {
    copy_against_postgres(false).await;
}

/// A COPY that fails on its data while the client has already sent Syncs behind that data:
/// which Syncs the copy consumed is invisible to pgtenant (see `client/pipeline.rs`), so the
/// server connection is closed rather than reused. The client may then get less than
/// PostgreSQL sends, but never anything else, and never a connection left open with a query
/// that will not be answered. Each ordering runs three times: the outcome depends on whether
/// the error arrives before or after pgtenant queued the later messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_failing_behind_syncs_never_leaves_a_query_unanswered() {
    copy_against_postgres(true).await;
}

/// Sends COPY/Sync orderings (the uncertain ones, or the others) straight to PostgreSQL and
/// through pgtenant and compares the transcripts; then another client uses the pool of one.
async fn copy_against_postgres(uncertain_ones: bool) {
    let mut f = Failures::default();
    let mut sequences = derailing_sequences(false);
    sequences.push((
        "Execute COPY, Sync, Sync, row, CopyDone, Sync",
        cat(&[
            parse("", "COPY t FROM STDIN"),
            bind("", ""),
            execute(""),
            sync(),
            sync(),
            copy_data("2\ttwo\n"),
            copy_done(),
            sync(),
        ]),
    ));
    sequences.push((
        "Query COPY, Sync, Sync, row, CopyDone, then a query",
        cat(&[
            query("COPY t FROM STDIN"),
            sync(),
            sync(),
            copy_data("3\tthree\n"),
            copy_done(),
            query("SELECT count(*) > 0 FROM t WHERE id = 3"),
        ]),
    ));
    sequences.retain(|(name, _)| uncertain(name) == uncertain_ones);
    let tenants = [
        with_mode(tenant_db("cnsync").await, PoolMode::Transaction, 1),
        with_mode(tenant_db("cnsync").await, PoolMode::Session, 1),
    ];
    for t in &tenants {
        admin(&t.database)
            .await
            .batch_execute(&format!(
                "CREATE TABLE t (id int, owner text); ALTER TABLE t OWNER TO \"{}\"",
                t.role
            ))
            .await
            .expect("table");
    }
    let h = start_quick(tenants.to_vec()).await;
    // PostgreSQL's answers, once per ordering.
    let mut wants = Vec::new();
    for (_, bytes) in &sequences {
        let mut direct = raw_direct(&tenants[0].database).await;
        send(&mut direct, bytes).await;
        wants.push(summary(&read_quiet(&mut direct, Duration::from_millis(300)).await.0));
    }
    for t in &tenants {
        let mode = t.pool_mode.expect("mode");
        let runs = sequences
            .iter()
            .zip(&wants)
            .flat_map(|run| std::iter::repeat_n(run, if uncertain_ones { 3 } else { 1 }));
        for ((name, bytes), want) in runs {
            let what = format!("{mode:?}, {name}");
            let mut s = raw_proxy(&h, &t.id).await;
            send(&mut s, bytes).await;
            let expected_ready = want.iter().filter(|m| m.starts_with('Z')).count();
            let (mut got, mut closed) = read_ready(&mut s, expected_ready, Duration::from_secs(3)).await;
            if !closed {
                let (more, eof) = read_quiet(&mut s, Duration::from_millis(200)).await;
                got.extend_from_slice(&more);
                closed = eof;
            }
            let got = summary(&got);
            if uncertain_ones {
                f.check(got.len() <= want.len() && got[..] == want[..got.len()], || {
                    format!("{what}: not PostgreSQL's replies:\n    PostgreSQL: {want:?}\n    pgtenant:   {got:?}")
                });
                f.check(got == *want || closed, || {
                    format!(
                        "{what}: replies missing, connection still open (3 s):\n    PostgreSQL: {want:?}\n    pgtenant:   {got:?}"
                    )
                });
            } else {
                f.check(got == *want, || {
                    format!("{what}:\n    PostgreSQL: {want:?}\n    pgtenant:   {got:?}")
                });
            }
            drop(s);
            // The pool of one is usable by another client right after.
            let started = Instant::now();
            let next = tokio_postgres::connect(&h.conninfo(&t.id), tokio_postgres::NoTls).await;
            match next {
                Ok((c, conn)) => {
                    tokio::spawn(conn);
                    match c.query_one("SELECT 'next-client'::text", &[]).await {
                        Ok(r) => {
                            f.check(r.get::<_, String>(0) == "next-client", || format!("{what}: next client"))
                        }
                        Err(e) => f.0.push(format!("{what}: the next client's query failed: {}", why(&e))),
                    }
                }
                Err(e) => f.0.push(format!("{what}: the next client could not log in: {}", why(&e))),
            }
            f.check(started.elapsed() < Duration::from_secs(2), || {
                format!("{what}: the next client waited {:?} for the pool of one", started.elapsed())
            });
        }
    }
    f.assert_none();
}

// ---- d. statements and portals belong to their client -------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_and_portals_belong_to_their_client() {
    let t = with_mode(tenant_db("cnstmt").await, PoolMode::Transaction, 1);
    admin(&t.database)
        .await
        .batch_execute(&format!("CREATE TABLE marks (x int); ALTER TABLE marks OWNER TO \"{}\"", t.role))
        .await
        .expect("table");
    let h = start_quick(vec![t.clone()]).await;
    let mut f = Failures::default();

    // Another client of the same tenant plants server-side state on the one backend: an SQL
    // statement prepared inside a DO block (with a side effect), a WITH HOLD cursor, and a
    // protocol-level statement of its own.
    let planter = h.client(&t.id).await;
    let p0 = pid(&planter).await;
    planter
        .batch_execute("DO $$BEGIN EXECUTE 'PREPARE s_planted AS INSERT INTO marks VALUES (1)'; END$$")
        .await
        .expect("plant a statement");
    planter
        .batch_execute("BEGIN; DECLARE held CURSOR WITH HOLD FOR SELECT 'held-secret'::text; COMMIT")
        .await
        .expect("plant a cursor");
    let own = planter.prepare("SELECT 'planter-secret'::text").await.expect("prepare");
    assert_eq!(planter.query_one(&own, &[]).await.expect("own").get::<_, String>(0), "planter-secret");
    let planted = rows(
        &planter,
        "SELECT (SELECT count(*) FROM pg_prepared_statements WHERE name = 's_planted'),
                (SELECT count(*) FROM pg_cursors WHERE name = 'held'),
                (SELECT name FROM pg_prepared_statements WHERE statement LIKE '%planter-secret%' LIMIT 1),
                pg_backend_pid()",
    )
    .await
    .expect("planted state");
    assert_eq!(planted[0][0..2], ["1", "1"], "the planted statement and cursor exist: {planted:?}");
    assert_eq!(planted[0][3], p0.to_string(), "same backend");
    let server_name = planted[0][2].clone();
    assert_ne!(server_name, "NULL", "the planter's statement is on the server: {planted:?}");

    // The client under test, raw; the same sequences go straight to PostgreSQL (where none of
    // the planted state exists) for the reference answers.
    let mut s = raw_proxy(&h, &t.id).await;
    let mut direct = raw_direct(&t.database).await;
    let mut transcript = Vec::new();
    let planted_steps: Vec<(&str, Vec<u8>)> = vec![
        (
            "Bind+Execute of a statement planted by another client",
            cat(&[bind("", "s_planted"), execute(""), sync()]),
        ),
        ("Describe of a statement planted by another client", cat(&[describe(b'S', "s_planted"), sync()])),
        (
            "Bind of another client's server-side statement name",
            cat(&[bind("", &server_name), execute(""), sync()]),
        ),
        (
            "Describe of another client's server-side statement name",
            cat(&[describe(b'S', &server_name), sync()]),
        ),
        ("Close of another client's server-side statement name", cat(&[close(b'S', &server_name), sync()])),
        ("Execute of a portal never bound", cat(&[execute("p_never"), sync()])),
        ("Execute of another client's WITH HOLD cursor", cat(&[execute("held"), sync()])),
        ("Describe of another client's WITH HOLD cursor", cat(&[describe(b'P', "held"), sync()])),
        ("duplicate named Parse", cat(&[parse("dup", "SELECT 1"), parse("dup", "SELECT 2"), sync()])),
        ("the duplicate's first statement still runs", cat(&[bind("", "dup"), execute(""), sync()])),
        ("prepare a text", cat(&[parse("s_a", "SELECT 42"), sync()])),
        (
            "Parse of an already-prepared text in an aborted transaction",
            cat(&[query("BEGIN"), query("SELECT 1/0"), parse("s_b", "SELECT 42"), sync(), query("ROLLBACK")]),
        ),
        (
            "the statement skipped in the aborted transaction does not exist",
            cat(&[bind("", "s_b"), execute(""), sync()]),
        ),
        // After an error the server skips to Sync: Parses behind it (of a text the server
        // connection has, of one it lacks, of the failing text again) prepare nothing.
        (
            "Parses behind a failing Parse",
            cat(&[
                parse("s_bad", "SELECT * FROM no_such_table"),
                parse("s_e", "SELECT 42"),
                parse("s_f", "SELECT 43"),
                parse("s_g", "SELECT * FROM no_such_table"),
                sync(),
            ]),
        ),
        (
            "the skipped statements do not exist",
            cat(&[
                bind("", "s_e"),
                execute(""),
                sync(),
                bind("", "s_f"),
                execute(""),
                sync(),
                describe(b'S', "s_g"),
                sync(),
            ]),
        ),
        // Issue 16 on the wire: the error has reached the client before it sends the rest of
        // its pipeline and the Sync.
        (
            "an error flushed before the rest of the pipeline",
            cat(&[parse("s_h0", "SELECT * FROM no_such_table"), msg(b'H', &[])]),
        ),
        (
            "the rest of that pipeline, then its Sync",
            cat(&[
                parse("s_h", "SELECT 44"),
                bind("", "s_h"),
                execute(""),
                parse("s_a2", "SELECT 42"),
                sync(),
            ]),
        ),
        (
            "statements skipped after the flushed error do not exist",
            cat(&[bind("", "s_h"), execute(""), sync(), describe(b'S', "s_a2"), sync()]),
        ),
        (
            "the same names prepare afterwards",
            cat(&[
                parse("s_h", "SELECT 44"),
                parse("s_a2", "SELECT 42"),
                bind("", "s_h"),
                execute(""),
                bind("", "s_a2"),
                execute(""),
                sync(),
            ]),
        ),
    ];
    compare_steps(&mut f, &mut direct, &mut s, &planted_steps, &mut transcript).await;
    for secret in [&b"held-secret"[..], b"planter-secret"] {
        f.check(!transcript.windows(secret.len()).any(|w| w == secret), || {
            format!("the client received another client's rows ({})", String::from_utf8_lossy(secret))
        });
    }
    // The server never ran the planted statement; the planted statement and cursor are intact.
    let after = rows(
        &planter,
        "SELECT (SELECT count(*) FROM marks),
                (SELECT count(*) FROM pg_prepared_statements WHERE name = 's_planted'),
                (SELECT count(*) FROM pg_cursors WHERE name = 'held'),
                pg_backend_pid()",
    )
    .await;
    match after {
        Ok(after) => {
            f.check(after[0][0] == "0", || {
                format!("the planted statement ran: {} row(s) in marks", after[0][0])
            });
            f.check(after[0][1..] == [String::from("1"), "1".into(), p0.to_string()], || {
                format!("the planted state changed (statement, cursor, pid): {:?}", &after[0][1..])
            });
        }
        Err(e) => f.0.push(format!("the planter's check failed: {}", why(&e))),
    }
    match planter.query_one(&own, &[]).await {
        Ok(r) => f.check(r.get::<_, String>(0) == "planter-secret", || "planter's own statement".into()),
        Err(e) => f.0.push(format!("the planter's own statement no longer works: {}", why(&e))),
    }

    // DEALLOCATE ALL / DISCARD ALL end the client's statements (they run on the server too).
    let reset_steps: Vec<(&str, Vec<u8>)> = vec![
        (
            "DEALLOCATE ALL, then Bind of the old name",
            cat(&[
                parse("s_c", "SELECT 7"),
                sync(),
                query("DEALLOCATE ALL"),
                bind("", "s_c"),
                execute(""),
                sync(),
            ]),
        ),
        (
            "DISCARD ALL, then Bind of the old name",
            cat(&[
                parse("s_d", "SELECT 8"),
                sync(),
                query("DISCARD ALL"),
                bind("", "s_d"),
                execute(""),
                sync(),
            ]),
        ),
        (
            "the client can prepare again afterwards",
            cat(&[parse("s_c", "SELECT 9"), bind("", "s_c"), execute(""), sync()]),
        ),
    ];
    compare_steps(&mut f, &mut direct, &mut s, &reset_steps, &mut transcript).await;
    drop(s);
    // pgtenant knows its server statements went with them: the planter's statement works.
    match planter.query_one(&own, &[]).await {
        Ok(r) => f.check(r.get::<_, String>(0) == "planter-secret", || "planter's own statement".into()),
        Err(e) => f.0.push(format!(
            "after another client's DEALLOCATE ALL, the planter's statement fails: {}",
            why(&e)
        )),
    }
    f.assert_none();
}

/// Reads the replies to one step: up to `syncs` ReadyForQuery messages, or, for a step
/// without a Sync (ending in Flush), until the replies stop.
async fn read_step<S: AsyncRead + Unpin>(s: &mut S, syncs: usize) -> (Vec<u8>, bool) {
    if syncs == 0 {
        read_quiet(s, Duration::from_millis(300)).await
    } else {
        read_ready(s, syncs, Duration::from_secs(5)).await
    }
}

/// Sends each step to PostgreSQL and through pgtenant, reading up to one ReadyForQuery per
/// Sync or Query, and records any difference.
async fn compare_steps(
    f: &mut Failures,
    direct: &mut UnixStream,
    proxied: &mut TcpStream,
    steps: &[(&str, Vec<u8>)],
    transcript: &mut Vec<u8>,
) {
    for (name, bytes) in steps {
        let syncs = messages(bytes).iter().filter(|(tag, _)| matches!(tag, b'S' | b'Q')).count();
        send(direct, bytes).await;
        let (want, _) = read_step(direct, syncs).await;
        send(proxied, bytes).await;
        let (got, closed) = read_step(proxied, syncs).await;
        transcript.extend_from_slice(&got);
        let (want, got) = (summary(&want), summary(&got));
        f.check(!closed && got == want, || {
            format!("{name}:\n    PostgreSQL: {want:?}\n    pgtenant:   {got:?}")
        });
    }
}

// ---- e. session characteristics follow the client -----------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_characteristics_follow_the_client_in_transaction_mode() {
    let t = with_mode(tenant_db("cnchar").await, PoolMode::Transaction, 1);
    let h = start_quick(vec![t.clone()]).await;
    let (x, y) = (h.client(&t.id).await, h.client(&t.id).await);
    let p0 = pid(&x).await;
    x.batch_execute("SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE")
        .await
        .expect("set characteristics");
    let mut f = Failures::default();
    for round in 0..3 {
        // The other client uses the pool of one in between, and sees the default.
        let r =
            rows(&y, "SELECT current_setting('transaction_isolation'), pg_backend_pid()").await.expect("y");
        f.check(r == vec![vec!["read committed".to_owned(), p0.to_string()]], || {
            format!("round {round}: the other client sees (isolation, pid) {r:?}")
        });
        let r = rows(&x, "BEGIN; SELECT current_setting('transaction_isolation'), pg_backend_pid(); COMMIT")
            .await
            .expect("x block");
        f.check(r == vec![vec!["serializable".to_owned(), p0.to_string()]], || {
            format!("round {round}: a transaction block of the client runs at (isolation, pid) {r:?}")
        });
        let r = rows(&x, "SHOW transaction_isolation").await.expect("x show");
        f.check(r == vec![vec!["serializable".to_owned()]], || format!("round {round}: SHOW gives {r:?}"));
    }
    f.assert_none();
}

// ---- f. FATAL, Terminate and malformed frames ----------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_fatal_and_terminate_deliver_exactly_what_postgres_sends() {
    let mut f = Failures::default();
    for mode in [PoolMode::Transaction, PoolMode::Session] {
        let t = with_mode(tenant_db("cnfatal").await, mode, 1);
        let h = start_quick(vec![t.clone()]).await;
        let terminate_self = "SELECT pg_terminate_backend(pg_backend_pid())";
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("FATAL from the server (simple query)", query(terminate_self)),
            (
                "FATAL from the server (extended query)",
                cat(&[parse("", terminate_self), bind("", ""), execute(""), sync()]),
            ),
            (
                "Query then Terminate",
                cat(&[query("SELECT 'before-terminate' FROM pg_sleep(0.3)"), terminate()]),
            ),
            (
                "extended query then Terminate",
                cat(&[
                    parse("", "SELECT 'ext-before-terminate' FROM pg_sleep(0.3)"),
                    bind("", ""),
                    execute(""),
                    sync(),
                    terminate(),
                ]),
            ),
        ];
        for (name, bytes) in cases {
            let what = format!("{mode:?}, {name}");
            let mut direct = raw_direct(&t.database).await;
            send(&mut direct, &bytes).await;
            let (want, _) = read_eof(&mut direct, Duration::from_secs(5)).await;
            let mut s = raw_proxy(&h, &t.id).await;
            send(&mut s, &bytes).await;
            let (got, closed) = read_eof(&mut s, Duration::from_secs(5)).await;
            let (want, got) = (summary(&want), summary(&got));
            f.check(closed, || format!("{what}: pgtenant did not close the client's connection"));
            f.check(got == want, || format!("{what}:\n    PostgreSQL: {want:?}\n    pgtenant:   {got:?}"));
            f.check(!got.iter().any(|m| m.starts_with("E(08006")), || {
                format!("{what}: pgtenant added 08006: {got:?}")
            });
            // The pool of one serves the next client.
            match tokio_postgres::connect(&h.conninfo(&t.id), tokio_postgres::NoTls).await {
                Ok((c, conn)) => {
                    tokio::spawn(conn);
                    if let Err(e) = c.query_one("SELECT 1", &[]).await {
                        f.0.push(format!("{what}: the next client's query failed: {}", why(&e)));
                    }
                }
                Err(e) => f.0.push(format!("{what}: the next client could not log in: {}", why(&e))),
            }
        }
        // A malformed frame (length word 1) behind a query: the query's replies come first.
        let what = format!("{mode:?}, Query then a malformed frame");
        let bytes = cat(&[query("SELECT 'before-malformed' FROM pg_sleep(0.3)"), b"Q\0\0\0\x01".to_vec()]);
        let mut s = raw_proxy(&h, &t.id).await;
        send(&mut s, &bytes).await;
        let (got, closed) = read_eof(&mut s, Duration::from_secs(5)).await;
        let got = summary(&got);
        let want = ["T", "D(before-malformed)", "C(SELECT 1)", "Z(I)"];
        f.check(closed, || format!("{what}: not closed"));
        f.check(
            got.len() >= 4 && got[..4] == want && got[4..].iter().all(|m| m.starts_with("E(08P01")),
            || format!("{what}: expected {want:?} (then at most a protocol error), got {got:?}"),
        );
    }
    f.assert_none();
}
