//! Driver compatibility matrix: real drivers through the proxy, in transaction and session
//! mode (pool size 5 each). The Python, Node and Java drivers run the scripts in
//! tests/compat (installed by tests/compat/setup.sh, once per test binary); sqlx runs here.
//! Each driver checks parameterized queries, named statements over many transactions,
//! rollback/commit, an error and recovery, COPY, binary values, 50 concurrent clients,
//! cancellation and session state. tests/compat/MATRIX.md has the results.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use pgtenant::model::PoolMode;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgListener, PgPoolOptions, PgValueFormat};
use sqlx::{Connection, Row};
use tokio::process::Command;

use crate::support::*;

fn manifest() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Where setup.sh installs the Python and Node packages.
fn compat_dir() -> PathBuf {
    manifest().join("target").join("compat")
}

/// Runs tests/compat/setup.sh once per test binary; every test gets its outcome.
async fn setup() {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    let outcome =
        tokio::task::spawn_blocking(|| DONE.get_or_init(run_setup).clone()).await.expect("setup task");
    if let Err(e) = outcome {
        panic!("tests/compat/setup.sh failed:\n{e}");
    }
}

fn run_setup() -> Result<(), String> {
    let script = manifest().join("tests/compat/setup.sh");
    let out = std::process::Command::new("bash")
        .arg(&script)
        .env("COMPAT_DIR", compat_dir())
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("could not run {}: {e}", script.display()))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{} ({}):\n{text}", script.display(), out.status))
    }
}

fn python() -> Command {
    let mut c = Command::new(std::env::var("PYTHON").unwrap_or_else(|_| "python3".into()));
    c.env("PYTHONPATH", compat_dir().join("python")).env("PYTHONDONTWRITEBYTECODE", "1");
    c
}

/// The final line a driver run must end with: "<driver>: N passed, 0 failed", N > 0.
fn all_passed(output: &str, driver: &str) -> bool {
    let prefix = format!("{driver}: ");
    output.lines().rev().find(|l| l.starts_with(&prefix)).is_some_and(|l| {
        let rest = &l[prefix.len()..];
        let passed = rest.split(' ').next().and_then(|n| n.parse::<u32>().ok());
        rest.ends_with(" passed, 0 failed") && passed.is_some_and(|n| n > 0)
    })
}

/// Runs one driver script against `url` in `mode`; its whole output on success.
async fn run_script(driver: &str, mut cmd: Command, url: &str, mode: &str) -> Result<String, String> {
    cmd.arg(url).arg(mode).stdin(Stdio::null()).kill_on_drop(true);
    let started = Instant::now();
    let out = tokio::time::timeout(Duration::from_secs(150), cmd.output())
        .await
        .map_err(|_| format!("{driver}, {mode} mode: no result within 150 s"))?
        .map_err(|e| format!("{driver}, {mode} mode: could not run {cmd:?}: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let text = format!("{stdout}{stderr}");
    if out.status.success() && all_passed(&stdout, driver) {
        Ok(format!("--- {driver}, {mode} mode ({:.1} s) ---\n{text}", started.elapsed().as_secs_f64()))
    } else {
        Err(format!("--- {driver}, {mode} mode: FAILED ({}) ---\n{text}", out.status))
    }
}

/// Two tenants (transaction and session mode, pool size 5) behind one proxy; `run` is called
/// for each with the tenant's URL and the mode. Both modes run before the test fails.
async fn both_modes<F, Fut>(prefix: &str, run: F)
where
    F: Fn(String, &'static str) -> Fut,
    Fut: std::future::Future<Output = Result<String, String>>,
{
    let tx = with_mode(tenant_db(&format!("{prefix}_tx")).await, PoolMode::Transaction, 5);
    let se = with_mode(tenant_db(&format!("{prefix}_se")).await, PoolMode::Session, 5);
    let mut cfg = config(vec![tx.clone(), se.clone()]);
    // Session mode serves the 50 concurrent clients five at a time: on a loaded machine the
    // last ones wait longer than the default 5 s for a server connection.
    cfg.pool.checkout_timeout = 30.0;
    let h = start(cfg).await;
    let mut failures = Vec::new();
    for (t, mode) in [(&tx, "transaction"), (&se, "session")] {
        match run(h.url(&format!("app.{}", t.id), &t.database), mode).await {
            Ok(out) => eprintln!("{out}"),
            Err(e) => failures.push(e),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compat_psycopg() {
    setup().await;
    let script = manifest().join("tests/compat/psycopg_compat.py");
    both_modes("cpsycopg", |url, mode| {
        let mut cmd = python();
        cmd.arg(&script);
        async move { run_script("psycopg", cmd, &url, mode).await }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compat_asyncpg() {
    setup().await;
    let script = manifest().join("tests/compat/asyncpg_compat.py");
    both_modes("casyncpg", |url, mode| {
        let mut cmd = python();
        cmd.arg(&script);
        async move { run_script("asyncpg", cmd, &url, mode).await }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compat_node_postgres() {
    setup().await;
    let script = manifest().join("tests/compat/node_pg_compat.js");
    both_modes("cnodepg", |url, mode| {
        let mut cmd = Command::new("node");
        cmd.arg(&script).env("NODE_PATH", compat_dir().join("node").join("node_modules"));
        async move { run_script("node-postgres", cmd, &url, mode).await }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compat_pgjdbc() {
    setup().await;
    let script = manifest().join("tests/compat/jdbc.sh");
    both_modes("cpgjdbc", |url, mode| {
        let mut cmd = Command::new("bash");
        cmd.arg(&script);
        async move { run_script("pgjdbc", cmd, &url, mode).await }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compat_sqlx() {
    both_modes("csqlx", |url, mode| async move {
        let out = sqlx_checks(&url, mode).await;
        if all_passed(&out, "sqlx") {
            Ok(format!("--- sqlx, {mode} mode ---\n{out}"))
        } else {
            Err(format!("--- sqlx, {mode} mode: FAILED ---\n{out}"))
        }
    })
    .await;
}

// ---- sqlx -----------------------------------------------------------------------------
// sqlx prepares every query that has a bind list as a named statement (its per-connection
// statement cache), uses binary formats for parameters and results, and sends a lone Sync as
// its pool's liveness check: transaction mode's statement tracking gets all of it.

const T: &str = "sqlx_";

/// Runs the sqlx checks; returns one line per check and the final "sqlx: N passed, M failed".
async fn sqlx_checks(url: &str, mode: &str) -> String {
    let mut report = Report::default();
    let mut c = match sqlx_setup(url).await {
        Ok(c) => c,
        Err(e) => {
            report.record("setup", Instant::now(), Err(e));
            return report.finish();
        }
    };
    macro_rules! check {
        ($name:expr, $body:expr) => {{
            let started = Instant::now();
            let r = match tokio::time::timeout(Duration::from_secs(60), $body).await {
                Ok(r) => r,
                Err(_) => Err(anyhow::anyhow!("no result within 60 s")),
            };
            report.record($name, started, r);
        }};
    }
    check!("parameterized queries", parameterized(&mut c));
    check!("named statements reused across 60 transactions", prepared(&mut c));
    check!("statement cache eviction (capacity 4)", eviction(url));
    check!("transaction rollback (explicit, on drop, savepoint)", rollback(&mut c));
    check!("transaction commit (seen from another connection)", commit(&mut c, url));
    check!("error (22012) and recovery on the same connection", error(&mut c));
    check!("COPY FROM STDIN / TO STDOUT", copy(&mut c));
    check!("binary results: bytea, int8, numeric, timestamptz", binary(&mut c));
    check!("50 concurrent connections x 10 transactions", concurrent(url));
    check!("PgPool: 50 tasks x 10 transactions, ping before acquire", pool(url, mode));
    check!("statement_timeout (57014; sqlx has no CancelRequest API)", timeout_57014(url));
    check!(
        &format!("session SET across transactions, another client busy ({mode} mode)"),
        session_set(url, mode)
    );
    check!(
        &format!("temporary table across transactions, another client busy ({mode} mode)"),
        temp_table(url)
    );
    check!("LISTEN/NOTIFY (PgListener)", listen_notify(url));
    let _ = c.close().await;
    report.finish()
}

#[derive(Default)]
struct Report {
    lines: Vec<String>,
    passed: usize,
    failed: usize,
}

impl Report {
    fn record(&mut self, name: &str, started: Instant, r: Result<String>) {
        let secs = started.elapsed().as_secs_f64();
        match r {
            Ok(detail) if detail.is_empty() => self.lines.push(format!("ok   {name} ({secs:.2}s)")),
            Ok(detail) => self.lines.push(format!("ok   {name} ({secs:.2}s): {detail}")),
            Err(e) => {
                let state = e
                    .downcast_ref::<sqlx::Error>()
                    .and_then(|e| e.as_database_error())
                    .and_then(|d| d.code())
                    .map(|c| format!(" [{c}]"))
                    .unwrap_or_default();
                self.lines.push(format!("FAIL {name}:{state} {e:#}"));
                self.failed += 1;
                return;
            }
        }
        self.passed += 1;
    }

    fn finish(self) -> String {
        let mut out = self.lines.join("\n");
        out.push_str(&format!("\nsqlx: {} passed, {} failed\n", self.passed, self.failed));
        out
    }
}

async fn connect_sqlx(url: &str) -> Result<PgConnection> {
    Ok(PgConnection::connect(url).await?)
}

fn sqlstate(e: &sqlx::Error) -> Option<String> {
    e.as_database_error().and_then(|d| d.code()).map(|c| c.into_owned())
}

/// Runs `q` and requires it to fail with SQLSTATE `code`.
fn expect_code<T>(r: std::result::Result<T, sqlx::Error>, code: &str) -> Result<()> {
    match r {
        Ok(_) => bail!("expected SQLSTATE {code}, got success"),
        Err(e) => {
            ensure!(sqlstate(&e).as_deref() == Some(code), "expected SQLSTATE {code}, got {e}");
            Ok(())
        }
    }
}

async fn sqlx_setup(url: &str) -> Result<PgConnection> {
    let mut c = connect_sqlx(url).await.context("connect")?;
    sqlx::raw_sql(&format!(
        "DROP TABLE IF EXISTS {T}kv, {T}acct, {T}copy, {T}load;
         CREATE TABLE {T}kv (k int PRIMARY KEY, v text NOT NULL);
         CREATE TABLE {T}acct (id int PRIMARY KEY, note text);
         CREATE TABLE {T}copy (id int PRIMARY KEY, name text, amount numeric(12,2));
         CREATE TABLE {T}load (client int, n int, PRIMARY KEY (client, n))"
    ))
    .execute(&mut c)
    .await
    .context("create tables")?;
    Ok(c)
}

async fn parameterized(c: &mut PgConnection) -> Result<String> {
    let row = sqlx::query("SELECT $1::int4 + $2::int4, $3::text || 'x', $4::text IS NULL")
        .bind(40i32)
        .bind(2i32)
        .bind("a'b")
        .bind(None::<String>)
        .fetch_one(&mut *c)
        .await?;
    ensure!(row.try_get::<i32, _>(0)? == 42, "sum");
    ensure!(row.try_get::<String, _>(1)? == "a'bx", "text");
    ensure!(row.try_get::<bool, _>(2)?, "null");
    // The simple query protocol (raw_sql): several statements, text results.
    sqlx::raw_sql("SELECT 1; SELECT 'déjà vu'").execute(&mut *c).await?;
    Ok(String::new())
}

async fn prepared(c: &mut PgConnection) -> Result<String> {
    for i in 0..60i32 {
        let mut tx = c.begin().await?;
        sqlx::query(&format!("INSERT INTO {T}kv VALUES ($1, $2)"))
            .bind(i)
            .bind(format!("v{i}"))
            .execute(&mut *tx)
            .await?;
        let v: String = sqlx::query_scalar(&format!("SELECT v FROM {T}kv WHERE k = $1"))
            .bind(i)
            .fetch_one(&mut *tx)
            .await?;
        ensure!(v == format!("v{i}"), "row {i}: {v}");
        if i == 59 {
            // Whatever server connection this transaction has, the statement is prepared on it.
            let n: i64 =
                sqlx::query_scalar("SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE $1")
                    .bind(format!("%{T}kv WHERE k = $1%"))
                    .fetch_one(&mut *tx)
                    .await?;
            ensure!(n >= 1, "statement not prepared on the server");
        }
        tx.commit().await?;
    }
    let (n, s): (i64, i64) =
        sqlx::query_as(&format!("SELECT count(*), sum(k) FROM {T}kv")).fetch_one(&mut *c).await?;
    ensure!((n, s) == (60, 1770), "rows {n} {s}");
    Ok(format!("{} cached statements", c.cached_statements_size()))
}

async fn eviction(url: &str) -> Result<String> {
    let opts: PgConnectOptions = url.parse::<PgConnectOptions>()?.statement_cache_capacity(4);
    let mut c = PgConnection::connect_with(&opts).await?;
    for round in 0..3i32 {
        for j in 0..10i32 {
            let got: i32 =
                sqlx::query_scalar(&format!("SELECT $1::int4 + {j}")).bind(round).fetch_one(&mut c).await?;
            ensure!(got == round + j, "round {round} statement {j}: {got}");
        }
    }
    ensure!(c.cached_statements_size() <= 4, "cache size {}", c.cached_statements_size());
    c.close().await?;
    Ok("evicted statements are closed (Close message)".into())
}

async fn count(c: &mut PgConnection, sql: &str) -> Result<i64> {
    Ok(sqlx::query_scalar(sql).fetch_one(c).await?)
}

async fn rollback(c: &mut PgConnection) -> Result<String> {
    let mut tx = c.begin().await?;
    sqlx::query(&format!("INSERT INTO {T}acct VALUES ($1, 'rolled back')"))
        .bind(1i32)
        .execute(&mut *tx)
        .await?;
    ensure!(
        count(&mut tx, &format!("SELECT count(*) FROM {T}acct WHERE id = 1")).await? == 1,
        "visible inside"
    );
    tx.rollback().await?;
    ensure!(count(c, &format!("SELECT count(*) FROM {T}acct WHERE id = 1")).await? == 0, "row still there");
    // Dropped without commit: sqlx rolls back (on the next use of the connection).
    {
        let mut tx = c.begin().await?;
        sqlx::query(&format!("INSERT INTO {T}acct VALUES ($1, 'dropped')"))
            .bind(5i32)
            .execute(&mut *tx)
            .await?;
    }
    ensure!(
        count(c, &format!("SELECT count(*) FROM {T}acct WHERE id = 5")).await? == 0,
        "dropped tx kept its row"
    );
    // A nested transaction is a savepoint.
    let mut tx = c.begin().await?;
    sqlx::query(&format!("INSERT INTO {T}acct VALUES (3, 'outer')")).execute(&mut *tx).await?;
    {
        let mut inner = tx.begin().await?;
        sqlx::query(&format!("INSERT INTO {T}acct VALUES (4, 'inner')")).execute(&mut *inner).await?;
        inner.rollback().await?;
    }
    tx.commit().await?;
    ensure!(
        count(c, &format!("SELECT count(*) FROM {T}acct WHERE id IN (3, 4)")).await? == 1,
        "savepoint rollback"
    );
    Ok(String::new())
}

async fn commit(c: &mut PgConnection, url: &str) -> Result<String> {
    let mut tx = c.begin().await?;
    sqlx::query(&format!("INSERT INTO {T}acct VALUES (2, $1)")).bind("committed").execute(&mut *tx).await?;
    tx.commit().await?;
    let mut other = connect_sqlx(url).await?;
    let note: String =
        sqlx::query_scalar(&format!("SELECT note FROM {T}acct WHERE id = 2")).fetch_one(&mut other).await?;
    ensure!(note == "committed", "{note}");
    other.close().await?;
    Ok(String::new())
}

async fn error(c: &mut PgConnection) -> Result<String> {
    for _ in 0..3 {
        expect_code(
            sqlx::query_scalar::<_, i32>("SELECT 10 / $1::int4").bind(0).fetch_one(&mut *c).await,
            "22012",
        )?;
        let v: i32 = sqlx::query_scalar("SELECT 10 / $1::int4").bind(5).fetch_one(&mut *c).await?;
        ensure!(v == 2, "after error: {v}");
    }
    let mut tx = c.begin().await?;
    expect_code(sqlx::query("SELECT 1 / 0").execute(&mut *tx).await, "22012")?;
    expect_code(sqlx::query("SELECT $1::int4").bind(1).execute(&mut *tx).await, "25P02")?;
    tx.rollback().await?;
    ensure!(count(c, "SELECT 7::int8").await? == 7, "after rollback");
    Ok(String::new())
}

/// The rows COPY loads, as COPY text, and the `id:name:amount` join the server compares.
fn copy_rows(n: i32) -> (String, String) {
    let mut text = String::new();
    let mut joined = Vec::new();
    for i in 1..=n {
        let name = if i % 97 == 0 { format!("name {i}\t\\ é\n\"x\"") } else { format!("name {i}") };
        let amount = format!("{}.{:02}", i * 7 % 10000, i % 100);
        let esc = name.replace('\\', "\\\\").replace('\t', "\\t").replace('\n', "\\n");
        text.push_str(&format!("{i}\t{esc}\t{amount}\n"));
        joined.push(format!("{i}:{name}:{amount}"));
    }
    (text, joined.join(","))
}

async fn copy(c: &mut PgConnection) -> Result<String> {
    use futures_util::TryStreamExt;
    let n = 5000;
    let (text, joined) = copy_rows(n);
    let mut copy_in = c.copy_in_raw(&format!("COPY {T}copy (id, name, amount) FROM STDIN")).await?;
    // In two chunks split mid-row: CopyData boundaries need not be row boundaries.
    let (a, b) = text.as_bytes().split_at(text.len() / 2 + 3);
    copy_in.send(a).await?;
    copy_in.send(b).await?;
    let loaded = copy_in.finish().await?;
    ensure!(loaded == n as u64, "COPY FROM loaded {loaded}");
    let (rows, same, sum): (i64, bool, String) = sqlx::query_as(&format!(
        "SELECT count(*), md5(string_agg(id || ':' || name || ':' || amount, ',' ORDER BY id)) = md5($1),
                md5(string_agg(id || ':' || name || ':' || amount, ',' ORDER BY id))
         FROM {T}copy"
    ))
    .bind(&joined)
    .fetch_one(&mut *c)
    .await?;
    ensure!(rows == n as i64 && same, "server-side count/checksum: {rows} rows, checksum equal: {same}");
    let chunks: Vec<bytes::Bytes> = c
        .copy_out_raw(&format!("COPY (SELECT id, name, amount FROM {T}copy ORDER BY id) TO STDOUT"))
        .await?
        .try_collect()
        .await?;
    let out: Vec<u8> = chunks.concat();
    ensure!(out == text.as_bytes(), "COPY TO output differs from what was loaded ({} bytes)", out.len());
    Ok(format!("{n} rows, md5 {}", &sum[..12]))
}

/// A binary NUMERIC as decimal text (ndigits, weight, sign, dscale, base-10000 digits).
fn numeric_text(b: &[u8]) -> Result<String> {
    ensure!(b.len() >= 8, "short numeric");
    let word = |i: usize| i16::from_be_bytes([b[i], b[i + 1]]);
    let (ndigits, weight, sign, dscale) =
        (word(0) as usize, word(2) as i64, word(4) as u16, word(6) as usize);
    ensure!(b.len() == 8 + 2 * ndigits, "numeric length");
    if sign == 0xC000 {
        return Ok("NaN".into());
    }
    let digit = |i: i64| if i >= 0 && (i as usize) < ndigits { word(8 + 2 * i as usize) } else { 0 };
    let mut int = String::new();
    for i in 0..=weight {
        if int.is_empty() {
            int = digit(i).to_string();
        } else {
            int.push_str(&format!("{:04}", digit(i)));
        }
    }
    if int.is_empty() {
        int.push('0');
    }
    let mut frac = String::new();
    let mut m = 1;
    while frac.len() < dscale {
        frac.push_str(&format!("{:04}", digit(weight + m)));
        m += 1;
    }
    frac.truncate(dscale);
    let sign = if sign == 0x4000 { "-" } else { "" };
    Ok(if dscale > 0 { format!("{sign}{int}.{frac}") } else { format!("{sign}{int}") })
}

async fn binary(c: &mut PgConnection) -> Result<String> {
    let blob: Vec<u8> = (0..96 * 1024u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let num = "-12345678901234567890.123456789012345678901234567890";
    let row = sqlx::query(
        "SELECT $1::bytea, length($1::bytea), $2::int8, $3::int8, $4::text::numeric, $5::text::timestamptz,
                'NaN'::numeric, 0.000012::numeric",
    )
    .bind(&blob)
    .bind(i64::MIN)
    .bind(i64::MAX)
    .bind(num)
    .bind("2024-02-29 23:59:58.123456+05:30")
    .fetch_one(&mut *c)
    .await?;
    ensure!(row.try_get_raw(0)?.format() == PgValueFormat::Binary, "results not in binary format");
    ensure!(row.try_get::<Vec<u8>, _>(0)? == blob, "bytea round trip");
    ensure!(row.try_get::<i32, _>(1)? == blob.len() as i32, "bytea length on the server");
    ensure!(row.try_get::<i64, _>(2)? == i64::MIN && row.try_get::<i64, _>(3)? == i64::MAX, "int8");
    // sqlx decodes NUMERIC and TIMESTAMPTZ only with its bigdecimal/chrono features: read the
    // binary wire values directly.
    let raw = |i: usize| -> Result<Vec<u8>> {
        Ok(row.try_get_raw(i)?.as_bytes().map_err(|e| anyhow::anyhow!("{e}"))?.to_vec())
    };
    ensure!(numeric_text(&raw(4)?)? == num, "numeric {}", numeric_text(&raw(4)?)?);
    let micros = i64::from_be_bytes(raw(5)?.as_slice().try_into()?);
    ensure!(micros == 762_546_598_123_456, "timestamptz: {micros} µs after 2000-01-01 UTC");
    ensure!(numeric_text(&raw(6)?)? == "NaN", "NaN");
    ensure!(numeric_text(&raw(7)?)? == "0.000012", "small numeric {}", numeric_text(&raw(7)?)?);
    Ok(format!("bytea {} bytes", blob.len()))
}

async fn client_transactions(c: &mut PgConnection, cid: i32) -> Result<()> {
    for n in 0..10i32 {
        let mut tx = c.begin().await?;
        sqlx::query(&format!("INSERT INTO {T}load VALUES ($1, $2)"))
            .bind(cid)
            .bind(n)
            .execute(&mut *tx)
            .await?;
        let (cnt, sum): (i64, i64) =
            sqlx::query_as(&format!("SELECT count(*), sum(n) FROM {T}load WHERE client = $1"))
                .bind(cid)
                .fetch_one(&mut *tx)
                .await?;
        tx.commit().await?;
        ensure!(
            (cnt, sum) == (n as i64 + 1, (n * (n + 1) / 2) as i64),
            "client {cid} transaction {n}: {cnt} {sum}"
        );
    }
    Ok(())
}

async fn concurrent(url: &str) -> Result<String> {
    let mut tasks = Vec::new();
    for cid in 0..50 {
        let url = url.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut c = connect_sqlx(&url).await?;
            client_transactions(&mut c, cid).await?;
            c.close().await?;
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let mut c = connect_sqlx(url).await?;
    let (n, clients): (i64, i64) =
        sqlx::query_as(&format!("SELECT count(*), count(DISTINCT client) FROM {T}load WHERE client < 1000"))
            .fetch_one(&mut c)
            .await?;
    ensure!((n, clients) == (500, 50), "{n} rows, {clients} clients");
    Ok(String::new())
}

async fn pool(url: &str, mode: &str) -> Result<String> {
    // In session mode every pooled connection holds a server connection for good: the pool
    // must fit in the tenant's pool_size (5, one of which the main connection holds).
    let size = if mode == "transaction" { 20 } else { 4 };
    let pool = PgPoolOptions::new()
        .max_connections(size)
        .acquire_timeout(Duration::from_secs(20))
        .test_before_acquire(true)
        .connect(url)
        .await?;
    let mut tasks = Vec::new();
    for cid in 1000..1050 {
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            for n in 0..10i32 {
                let mut tx = pool.begin().await?;
                sqlx::query(&format!("INSERT INTO {T}load VALUES ($1, $2)"))
                    .bind(cid)
                    .bind(n)
                    .execute(&mut *tx)
                    .await?;
                let cnt: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {T}load WHERE client = $1"))
                    .bind(cid)
                    .fetch_one(&mut *tx)
                    .await?;
                tx.commit().await?;
                ensure!(cnt == n as i64 + 1, "client {cid} transaction {n}: {cnt}");
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {T}load WHERE client >= 1000"))
        .fetch_one(&pool)
        .await?;
    pool.close().await;
    ensure!(n == 500, "{n} rows");
    Ok(format!("PgPool max_connections={size}"))
}

async fn timeout_57014(url: &str) -> Result<String> {
    let mut c = connect_sqlx(url).await?;
    sqlx::query("SET statement_timeout = '300ms'").execute(&mut c).await?;
    let started = Instant::now();
    expect_code(sqlx::query("SELECT pg_sleep(10)").execute(&mut c).await, "57014")?;
    let elapsed = started.elapsed();
    ensure!(elapsed < Duration::from_secs(3), "took {elapsed:?}");
    ensure!(count(&mut c, "SELECT 5::int8").await? == 5, "connection usable after the timeout");
    c.close().await?;
    Ok(format!("{:.2}s", elapsed.as_secs_f64()))
}

// The two checks below let another client open a transaction and keep it while this client
// goes on: in transaction mode that client gets the most recently used idle server connection,
// which is this client's own unless pgtenant pinned the client to it. sqlx::query runs
// everything as named statements (extended protocol).

async fn session_set(url: &str, mode: &str) -> Result<String> {
    let mut c = connect_sqlx(url).await?;
    let mut other = connect_sqlx(url).await?;
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&mut c).await?;
    sqlx::query("SET statement_timeout = '4321ms'").execute(&mut c).await?;
    let mut busy = other.begin().await?;
    let other_sees: String = sqlx::query_scalar("SHOW statement_timeout").fetch_one(&mut *busy).await?;
    let checks = async {
        for _ in 0..3 {
            let s: String = sqlx::query_scalar("SHOW statement_timeout").fetch_one(&mut c).await?;
            ensure!(s == "4321ms", "SET lost: {s}");
        }
        ensure!(other_sees == "0", "another client sees this client's setting: {other_sees}");
        if mode == "session" {
            let again: i32 = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&mut c).await?;
            ensure!(again == pid, "session mode changed the backend");
        }
        anyhow::Ok(())
    }
    .await;
    busy.rollback().await?;
    other.close().await?;
    c.close().await?;
    checks.map(|()| String::new())
}

async fn temp_table(url: &str) -> Result<String> {
    let mut c = connect_sqlx(url).await?;
    let mut other = connect_sqlx(url).await?;
    sqlx::query("CREATE TEMP TABLE scratch (x int)").execute(&mut c).await?;
    let mut busy = other.begin().await?;
    let leaked: bool =
        sqlx::query_scalar("SELECT to_regclass('pg_temp.scratch') IS NOT NULL").fetch_one(&mut *busy).await?;
    let checks = async {
        for i in 0..3i32 {
            sqlx::query("INSERT INTO scratch VALUES ($1)").bind(i).execute(&mut c).await?;
        }
        ensure!(count(&mut c, "SELECT count(*) FROM scratch").await? == 3, "temp table rows");
        ensure!(!leaked, "another client sees this client's temporary table");
        anyhow::Ok(())
    }
    .await;
    busy.rollback().await?;
    other.close().await?;
    c.close().await?;
    checks.map(|()| String::new())
}

async fn listen_notify(url: &str) -> Result<String> {
    let mut listener = PgListener::connect(url).await?;
    listener.listen(&format!("{T}chan")).await?;
    let mut other = connect_sqlx(url).await?;
    for i in 0..3 {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(format!("{T}chan"))
            .bind(format!("n{i}"))
            .execute(&mut other)
            .await?;
        let n = tokio::time::timeout(Duration::from_secs(3), listener.recv())
            .await
            .with_context(|| format!("notification {i} not delivered within 3s"))??;
        ensure!(n.payload() == format!("n{i}"), "payload {}", n.payload());
    }
    other.close().await?;
    Ok(String::new())
}

/// psycopg (libpq from the psycopg-binary wheel) logs in with SCRAM through pgtenant, in
/// plaintext and over TLS with verify-full and SCRAM-SHA-256-PLUS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg_logs_in_with_scram_and_tls() {
    setup().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca, cert, key) = crate::tls::certificates(dir.path());
    let mut t = tenant_db("pyscram").await;
    t.users.push(pgtenant::config::UserConfig {
        name: "app".into(),
        verifier: pgtenant::auth::Verifier::hash("py-secret"),
    });
    let h = start(crate::tls::tls_config(vec![t.clone()], &cert, &key)).await;
    let port = h.addr.port();
    let script = "import sys, psycopg\n\
                  try:\n    c = psycopg.connect(sys.argv[1])\n\
                  except psycopg.OperationalError as e:\n    print('refused:', e); sys.exit(3)\n\
                  print(c.execute('select current_database(), 40 + 2').fetchone())\n";
    let id = &t.id;
    let ca = ca.display();
    for (conninfo, ok) in [
        (
            format!("host=127.0.0.1 port={port} user=app.{id} dbname=x password=py-secret sslmode=disable"),
            true,
        ),
        (
            format!(
                "host={id}.db.test hostaddr=127.0.0.1 port={port} user=app dbname=x password=py-secret \
                 sslmode=verify-full sslrootcert={ca} channel_binding=require"
            ),
            true,
        ),
        (format!("host=127.0.0.1 port={port} user=app.{id} dbname=x password=wrong sslmode=require"), false),
    ] {
        let out = python().arg("-c").arg(script).arg(&conninfo).output().await.expect("python");
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        if ok {
            assert!(
                out.status.success() && text.contains(&format!("('{}', 42)", t.database)),
                "{conninfo}: {text}"
            );
        } else {
            assert!(text.contains("password authentication failed"), "{conninfo}: {text}");
        }
    }
}
