//! The admin console on the proxy's port: database `pgbouncer` reaches it, SCRAM for
//! console users, PgBouncer's SHOW columns over both protocols, PAUSE/RESUME holding and
//! releasing checkouts, KILL_CLIENT, and a PgBouncer exporter from PyPI scraping it.

use std::time::Duration;

use pgtenant::auth::Verifier;
use pgtenant::config::{Config, ConsoleRole, ConsoleUserConfig, TenantConfig};
use pgtenant::model::{AuthMethod, PoolMode};
use tokio::process::Command;

use crate::support::*;

pub(crate) const OPS_PW: &str = "ops-s3cret";
const WATCH_PW: &str = "watch-s3cret";

/// SCRAM for the console; the tenants log in with trust (their own setting).
pub(crate) fn console_config(tenants: Vec<TenantConfig>) -> Config {
    let mut c = config(tenants);
    c.proxy.auth = AuthMethod::ScramSha256;
    c.admin.users = vec![
        ConsoleUserConfig {
            name: "ops".into(),
            verifier: Verifier::hash(OPS_PW),
            password_env: String::new(),
            role: ConsoleRole::Admin,
        },
        ConsoleUserConfig {
            name: "watch".into(),
            verifier: Verifier::hash(WATCH_PW),
            password_env: String::new(),
            role: ConsoleRole::Stats,
        },
    ];
    c
}

pub(crate) async fn trusted_tenant(prefix: &str, mode: PoolMode, size: usize) -> TenantConfig {
    let mut t = with_mode(tenant_db(prefix).await, mode, size);
    t.auth = Some(AuthMethod::Trust);
    t
}

pub(crate) fn console_conninfo(h: &Harness, user: &str, password: &str) -> String {
    format!("host=127.0.0.1 port={} user={user} password={password} dbname=pgbouncer", h.addr.port())
}

const POOLS_COLUMNS: &str = "database|user|cl_active|cl_waiting|cl_active_cancel_req|cl_waiting_cancel_req|\
sv_active|sv_active_cancel|sv_being_canceled|sv_idle|sv_used|sv_tested|sv_login|maxwait|maxwait_us|\
pool_mode|load_balance_hosts";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_and_tokio_postgres_read_show_pools() {
    let t = trusted_tenant("cons", PoolMode::Transaction, 2).await;
    let h = start(console_config(vec![t.clone()])).await;
    let app = h.client(&t.id).await;
    app.simple_query("SELECT 1").await.expect("tenant query");
    // psql, simple protocol.
    let out = Command::new("psql")
        .arg(format!("postgresql://ops@127.0.0.1:{}/pgbouncer", h.addr.port()))
        .args(["-X", "-A", "-c", "SHOW POOLS"])
        .env("PGPASSWORD", OPS_PW)
        .output()
        .await
        .expect("psql");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut lines = stdout.lines();
    assert_eq!(lines.next(), Some(POOLS_COLUMNS));
    let row = lines.find(|l| l.starts_with(&format!("{}|", t.id))).expect("a row for the tenant");
    let cells: Vec<&str> = row.split('|').collect();
    assert_eq!(cells[1], t.role, "user is the tenant's login role: {row}");
    assert_eq!(cells[2], "1", "one active client: {row}");
    assert_eq!(cells[15], "transaction", "{row}");
    // tokio-postgres, extended protocol.
    let c = connect_str(&console_conninfo(&h, "watch", WATCH_PW)).await;
    let rows = c.query("SHOW POOLS", &[]).await.expect("extended SHOW POOLS");
    let names: Vec<&str> = rows[0].columns().iter().map(|c| c.name()).collect();
    assert_eq!(names.join("|"), POOLS_COLUMNS);
    let mine = rows.iter().find(|r| r.get::<_, String>(0) == t.id).expect("tenant row");
    assert_eq!(mine.get::<_, i32>(2), 1);
    let clients = c.query("SHOW CLIENTS", &[]).await.expect("SHOW CLIENTS");
    assert!(clients.iter().any(|r| r.get::<_, String>(2) == t.id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_and_unknown_user_get_28p01_and_stats_users_cannot_pause() {
    let t = trusted_tenant("consauth", PoolMode::Transaction, 2).await;
    let h = start(console_config(vec![t.clone()])).await;
    // The message a wrong tenant password gets.
    let tenant_wrong = PgErrorText::of(
        tokio_postgres::connect(
            &format!("{} password=nope", h.conninfo("nosuchtenant")),
            tokio_postgres::NoTls,
        )
        .await
        .err()
        .expect("refused"),
    );
    for (user, pw) in [("ops", "wrong"), ("nobody", OPS_PW)] {
        let e = tokio_postgres::connect(&console_conninfo(&h, user, pw), tokio_postgres::NoTls)
            .await
            .err()
            .expect("refused");
        assert_eq!(code(&e), "28P01", "{user}: {e}");
        assert_eq!(PgErrorText::of(e), tenant_wrong, "{user}");
    }
    let c = connect_str(&console_conninfo(&h, "watch", WATCH_PW)).await;
    let e = c.simple_query("PAUSE").await.expect_err("stats user may not pause");
    assert_eq!(code(&e), "08P01");
    assert!(message(&e).contains("admin access needed"), "{e}");
    // The session goes on.
    c.simple_query("SHOW STATE").await.expect("SHOW after a refusal");
}

struct PgErrorText;
impl PgErrorText {
    fn of(e: tokio_postgres::Error) -> String {
        message(&e)
    }
}

/// The server's message text (`Display` of the error says only "db error").
pub(crate) fn message(e: &tokio_postgres::Error) -> String {
    e.as_db_error().map(|d| d.message().to_owned()).unwrap_or_else(|| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_holds_new_transactions_and_resume_releases_them() {
    let t = trusted_tenant("conspause", PoolMode::Transaction, 2).await;
    let h = start(console_config(vec![t.clone()])).await;
    let app = h.client(&t.id).await;
    app.simple_query("SELECT 1").await.expect("before pause");
    let ops = connect_str(&console_conninfo(&h, "ops", OPS_PW)).await;
    // A transaction running when PAUSE arrives finishes; PAUSE answers once it has.
    app.simple_query("BEGIN").await.expect("begin");
    let pause = tokio::spawn({
        let ops_info = console_conninfo(&h, "ops", OPS_PW);
        let tenant = t.id.clone();
        async move {
            let ops = connect_str(&ops_info).await;
            ops.simple_query(&format!("PAUSE {tenant}")).await.map(|_| ())
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!pause.is_finished(), "PAUSE must wait for the running transaction");
    app.simple_query("SELECT 2; COMMIT").await.expect("running transaction finishes");
    tokio::time::timeout(Duration::from_secs(5), pause)
        .await
        .expect("PAUSE answered")
        .expect("task")
        .expect("PAUSE");
    // A new transaction waits, without an error.
    let held = tokio::spawn(async move {
        let started = std::time::Instant::now();
        let r = app.simple_query("SELECT 3").await.map(|_| ());
        (r, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!held.is_finished(), "a paused tenant's query must wait");
    let state = ops.query("SHOW DATABASES", &[]).await.expect("SHOW DATABASES");
    let row = state.iter().find(|r| r.get::<_, String>(0) == t.id).expect("tenant row");
    assert_eq!(row.get::<_, i32>(15), 1, "paused");
    ops.simple_query(&format!("RESUME {}", t.id)).await.expect("RESUME");
    let (r, waited) =
        tokio::time::timeout(Duration::from_secs(5), held).await.expect("released").expect("task");
    r.expect("the held query succeeds after RESUME");
    assert!(waited >= Duration::from_millis(1400), "waited {waited:?}");
    let e = ops.simple_query(&format!("RESUME {}", t.id)).await.expect_err("not paused");
    assert!(message(&e).contains("is not paused"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_client_closes_that_client_only() {
    let t = trusted_tenant("conskill", PoolMode::Transaction, 2).await;
    let h = start(console_config(vec![t.clone()])).await;
    let victim = h.watched_client(&t.id).await;
    victim.client.simple_query("SELECT 1").await.expect("victim");
    let other = h.client(&t.id).await;
    let ops = connect_str(&console_conninfo(&h, "ops", OPS_PW)).await;
    let before: Vec<i32> = ops
        .query("SHOW CLIENTS", &[])
        .await
        .expect("SHOW CLIENTS")
        .iter()
        .map(|r| r.get::<_, i32>("id"))
        .collect();
    assert_eq!(before.len(), 2, "{before:?}");
    let victim_id = before[0];
    ops.simple_query(&format!("KILL_CLIENT {victim_id}")).await.expect("KILL_CLIENT");
    let code = victim.ended_with().await;
    assert_eq!(code, "57P01");
    other.simple_query("SELECT 1").await.expect("the other client goes on");
    assert!(
        eventually(Duration::from_secs(3), || async {
            ops.query("SHOW CLIENTS", &[]).await.map(|r| r.len() == 1).unwrap_or(false)
        })
        .await
    );
    let e = ops.simple_query("KILL_CLIENT 999999").await.expect_err("no such client");
    assert!(message(&e).contains("client not found"), "{e}");
}

/// `SHUTDOWN WAIT_FOR_CLIENTS` (PgBouncer's meaning): new connections are refused at once,
/// a connected idle client is told nothing and goes on running transactions, and the proxy
/// stops when the last client has left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_wait_for_clients_keeps_idle_clients_until_they_leave() {
    let t = trusted_tenant("conswait", PoolMode::Transaction, 2).await;
    let h = start(console_config(vec![t.clone()])).await;
    let stays = h.client(&t.id).await;
    stays.simple_query("SELECT 1").await.expect("before");
    let ops = connect_str(&console_conninfo(&h, "ops", OPS_PW)).await;
    ops.simple_query("SHUTDOWN WAIT_FOR_CLIENTS").await.expect("SHUTDOWN WAIT_FOR_CLIENTS");
    drop(ops);
    assert!(
        eventually(Duration::from_secs(3), || async {
            tokio_postgres::connect(&h.conninfo(&t.id), tokio_postgres::NoTls).await.is_err()
        })
        .await,
        "new connections must be refused after SHUTDOWN WAIT_FOR_CLIENTS"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..3 {
        let r = stays.query_one("SELECT $1::int + 1", &[&i]).await.expect("the idle client goes on");
        assert_eq!(r.get::<_, i32>(0), i + 1);
    }
    assert!(!h.served.is_finished(), "the proxy stopped while a client was still connected");
    drop(stays);
    let ended = tokio::time::timeout(Duration::from_secs(10), h.served).await;
    assert!(matches!(ended, Ok(Ok(Ok(())))), "the proxy must stop once the last client left: {ended:?}");
}

/// spreaker's prometheus-pgbouncer-exporter 2.1.2 from PyPI, unchanged, scraping pgtenant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pypi_pgbouncer_exporter_scrapes_pgtenant() {
    let root = env!("CARGO_MANIFEST_DIR");
    let setup = Command::new("bash")
        .arg(format!("{root}/tests/console/exporter-setup.sh"))
        .output()
        .await
        .expect("exporter setup");
    assert!(setup.status.success(), "exporter setup: {}", String::from_utf8_lossy(&setup.stderr));
    let t = trusted_tenant("consexp", PoolMode::Transaction, 2).await;
    let h = start(console_config(vec![t.clone()])).await;
    let app = h.client(&t.id).await;
    app.simple_query("SELECT 1").await.expect("tenant query");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
        l.local_addr().expect("addr").port()
    };
    let dir = std::env::temp_dir().join(unique("pgtenant-exporter-"));
    std::fs::create_dir_all(&dir).expect("dir");
    let cfg = dir.join("config.yml");
    std::fs::write(
        &cfg,
        format!(
            "exporter_host: 127.0.0.1\nexporter_port: {port}\npgbouncers:\n  - dsn: postgresql://ops:{OPS_PW}@127.0.0.1:{}/pgbouncer\n    connect_timeout: 5\n",
            h.addr.port()
        ),
    )
    .expect("config");
    let mut exporter = Command::new(format!("{root}/target/pgbouncer-exporter/bin/pgbouncer-exporter"))
        .arg("--config")
        .arg(&cfg)
        .kill_on_drop(true)
        .spawn()
        .expect("start the exporter");
    let url = format!("http://127.0.0.1:{port}/metrics");
    let mut body = String::new();
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let out = Command::new("curl").args(["-sf", &url]).output().await.expect("curl");
        if out.status.success() {
            body = String::from_utf8_lossy(&out.stdout).into_owned();
            break;
        }
    }
    let _ = exporter.kill().await;
    assert!(body.lines().any(|l| l == "pgbouncer_up 1.0" || l == "pgbouncer_up 1"), "{body}");
    let series = format!("pgbouncer_stats_queries_total{{database=\"{}\"", t.id);
    assert!(body.contains(&series), "no {series} in:\n{body}");
    let pools =
        format!("pgbouncer_pools_client_active_connections{{database=\"{}\",user=\"{}\"}} 1", t.id, t.role);
    assert!(body.contains(&pools), "no {pools} in:\n{body}");
    assert!(body.contains("pgbouncer_config_max_client_conn "), "{body}");
}

/// `POST /tenants/{id}/pause` holds the tenant's next transaction as the console's PAUSE
/// does; `DELETE` lets it go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_pause_and_unpause_a_tenant() {
    let t = trusted_tenant("conshttp", PoolMode::Transaction, 2).await;
    let token = pgtenant::admin::new_token();
    let mut cfg = console_config(vec![t.clone()]);
    cfg.admin.token_sha256 = vec![pgtenant::admin::token_sha256(&token)];
    let h = start(cfg.clone()).await;
    let state = pgtenant::admin::http::AdminState::new(h.proxy.clone(), &cfg).expect("admin state");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let api = listener.local_addr().expect("addr");
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(pgtenant::admin::http::serve(listener, state, stop.clone()));
    let app = h.client(&t.id).await;
    app.simple_query("SELECT 1").await.expect("before pause");
    let call = |method: &'static str, path: String| {
        let token = token.clone();
        async move {
            let out = Command::new("curl")
                .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", method])
                .arg("-H")
                .arg(format!("Authorization: Bearer {token}"))
                .arg(format!("http://{api}{path}"))
                .output()
                .await
                .expect("curl");
            String::from_utf8_lossy(&out.stdout).into_owned()
        }
    };
    assert_eq!(call("POST", format!("/tenants/{}/pause", t.id)).await, "200");
    assert_eq!(call("POST", "/tenants/nosuchtenant/pause".into()).await, "404");
    let held = tokio::spawn(async move { app.simple_query("SELECT 2").await.map(|_| ()) });
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(!held.is_finished(), "a paused tenant's query must wait");
    assert_eq!(call("DELETE", format!("/tenants/{}/pause", t.id)).await, "200");
    tokio::time::timeout(Duration::from_secs(5), held)
        .await
        .expect("released")
        .expect("task")
        .expect("query");
    stop.cancel();
}

/// pgbench through pgtenant, PAUSE for ~2 s mid-run: no transaction fails, and the longest
/// transaction took at least the pause.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_mid_pgbench_holds_and_resume_releases_without_failures() {
    let t = trusted_tenant("consbench", PoolMode::Transaction, 4).await;
    let h = start(console_config(vec![t.clone()])).await;
    let dir = std::env::temp_dir().join(unique("pgtenant-bench-"));
    std::fs::create_dir_all(&dir).expect("dir");
    let script = dir.join("tx.sql");
    std::fs::write(&script, "\\set x random(1, 1000)\nBEGIN;\nSELECT :x;\nSELECT :x + 1;\nCOMMIT;\n")
        .expect("script");
    let bench = Command::new("pgbench")
        .args(["-n", "-T", "6", "-c", "4", "-l", "-h", "127.0.0.1"])
        .arg("-p")
        .arg(h.addr.port().to_string())
        .arg("-U")
        .arg(format!("app.{}", t.id))
        .arg("-f")
        .arg(&script)
        .arg("--log-prefix")
        .arg(dir.join("log"))
        .arg(&t.database)
        .current_dir(&dir)
        .output();
    let ops_info = console_conninfo(&h, "ops", OPS_PW);
    let tenant = t.id.clone();
    let pauser = async move {
        let ops = connect_str(&ops_info).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        ops.simple_query(&format!("PAUSE {tenant}")).await.expect("PAUSE");
        tokio::time::sleep(Duration::from_secs(2)).await;
        ops.simple_query(&format!("RESUME {tenant}")).await.expect("RESUME");
    };
    let (out, ()) = tokio::join!(bench, pauser);
    let out = out.expect("pgbench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("number of failed transactions: 0 "), "{stdout}");
    // Per-transaction log: client, transaction, latency (µs), script, epoch, µs.
    let mut max_us = 0u64;
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).expect("logs") {
        let path = entry.expect("entry").path();
        if !path.file_name().is_some_and(|n| n.to_string_lossy().starts_with("log")) {
            continue;
        }
        for line in std::fs::read_to_string(&path).expect("log").lines() {
            let us: u64 = line.split(' ').nth(2).and_then(|v| v.parse().ok()).expect("latency field");
            max_us = max_us.max(us);
            count += 1;
        }
    }
    assert!(count > 100, "{count} transactions");
    assert!(max_us >= 1_800_000, "longest transaction {max_us} µs, the pause was 2 s");
}

/// A SHOW over the simple protocol, each row by column name (numeric columns come as text,
/// which tokio-postgres' typed rows cannot decode).
pub(crate) async fn show(
    c: &tokio_postgres::Client,
    what: &str,
) -> Vec<std::collections::BTreeMap<String, String>> {
    let mut rows = Vec::new();
    for m in c.simple_query(what).await.unwrap_or_else(|e| panic!("{what}: {e}")) {
        if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
            let row = r
                .columns()
                .iter()
                .enumerate()
                .map(|(i, col)| (col.name().to_owned(), r.get(i).unwrap_or("").to_owned()))
                .collect();
            rows.push(row);
        }
    }
    rows
}

pub(crate) fn num(row: &std::collections::BTreeMap<String, String>, col: &str) -> i64 {
    row.get(col).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{col} in {row:?}"))
}

/// A client waiting for the tenant's only server connection shows in SHOW POOLS (`cl_waiting`,
/// `maxwait`) and SHOW CLIENTS (`waiting`, `wait_us`); its wait is in SHOW STATS' totals and
/// averages. Then `SET query_wait_timeout = 1` shortens the wait of the existing pool: the
/// next waiter gets 53300 after a second, not the configured 30, and SHOW CONFIG says so.
/// Unknown and restart-only settings are refused with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waits_are_shown_and_set_shortens_the_wait_of_an_existing_pool() {
    let t = trusted_tenant("consset", PoolMode::Transaction, 1).await;
    let mut cfg = console_config(vec![t.clone()]);
    cfg.pool.checkout_timeout = 30.0;
    let h = start(cfg).await;
    let ops = connect_str(&console_conninfo(&h, "ops", OPS_PW)).await;
    let holder = h.client(&t.id).await;
    holder.simple_query("SELECT 1").await.expect("the pool exists");
    h.proxy.metrics.roll_averages();

    // A waiter behind an open transaction, released by its COMMIT after ~700 ms.
    holder.simple_query("BEGIN").await.expect("begin");
    let waiter = h.client(&t.id).await;
    let wait = tokio::spawn(async move {
        let r = waiter.simple_query("SELECT 2").await.map(|_| ());
        (r, waiter)
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    let pools = show(&ops, "SHOW POOLS").await;
    let row = pools.iter().find(|r| r["database"] == t.id).expect("pool row");
    assert_eq!((num(row, "cl_active"), num(row, "cl_waiting")), (1, 1), "{row:?}");
    let maxwait = num(row, "maxwait") * 1_000_000 + num(row, "maxwait_us");
    assert!((500_000..30_000_000).contains(&maxwait), "maxwait {maxwait} µs: {row:?}");
    let clients = show(&ops, "SHOW CLIENTS").await;
    let waiting: Vec<_> = clients.iter().filter(|r| r["state"] == "waiting").collect();
    assert_eq!(waiting.len(), 1, "{clients:?}");
    assert!(num(waiting[0], "wait") * 1_000_000 + num(waiting[0], "wait_us") >= 500_000, "{waiting:?}");
    holder.simple_query("COMMIT").await.expect("commit");
    let (r, waiter) =
        tokio::time::timeout(Duration::from_secs(5), wait).await.expect("served").expect("task");
    r.expect("the waiter is served after the COMMIT");
    h.proxy.metrics.roll_averages();
    let totals = show(&ops, "SHOW STATS_TOTALS").await;
    let row = totals.iter().find(|r| r["database"] == t.id).expect("totals row");
    assert!(num(row, "wait_time") >= 500_000, "{row:?}");
    assert_eq!(num(row, "server_assignment_count"), 3, "{row:?}");
    let stats = show(&ops, "SHOW STATS").await;
    let row = stats.iter().find(|r| r["database"] == t.id).expect("stats row");
    // Two assignments in the period, one of them waited ~700 ms.
    assert!(num(row, "avg_wait_time") >= 250_000, "{row:?}");
    assert!(num(row, "total_wait_time") >= 500_000, "{row:?}");
    let averages = show(&ops, "SHOW STATS_AVERAGES").await;
    let row = averages.iter().find(|r| r["database"] == t.id).expect("averages row");
    assert!(num(row, "wait_time") >= 250_000 && num(row, "xact_time") > 0, "{row:?}");

    // SET: refusals say why and change nothing.
    for (set, why) in [
        ("SET listen_addr = '0.0.0.0'", "restart"),
        ("SET no_such_setting = 1", "unknown setting"),
        ("SET query_wait_timeout = 'soon'", "not a number"),
        ("SET default_pool_size = 0", "pool.size"),
    ] {
        let e = ops.simple_query(set).await.expect_err(set);
        assert_eq!(code(&e), "08P01", "{set}");
        assert!(message(&e).starts_with("SET failed") && message(&e).contains(why), "{set}: {e}");
    }
    let watch = connect_str(&console_conninfo(&h, "watch", WATCH_PW)).await;
    let e = watch.simple_query("SET query_wait_timeout = 1").await.expect_err("stats user");
    assert!(message(&e).contains("admin access needed"), "{e}");
    ops.simple_query("SET query_wait_timeout = 1").await.expect("SET");
    let config = show(&ops, "SHOW CONFIG").await;
    let row = config.iter().find(|r| r["key"] == "query_wait_timeout").expect("config row");
    assert_eq!((row["value"].as_str(), row["changeable"].as_str()), ("1", "yes"), "{row:?}");

    holder.simple_query("BEGIN").await.expect("begin");
    let started = std::time::Instant::now();
    let e = waiter.simple_query("SELECT 3").await.expect_err("no connection within 1 s");
    let took = started.elapsed();
    assert_eq!(code(&e), "53300", "{e}");
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(5), "waited {took:?}");
    holder.simple_query("COMMIT").await.expect("commit");
}

/// SHOW SERVERS lists the tenant's server connections, busy and idle, with their backend
/// pids; RECONNECT closes the idle ones at once and the busy one when its client releases
/// it (SHOW SERVERS marks it `close_needed` until then); the next transaction gets a new
/// backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_closes_busy_connections_when_released() {
    let t = trusted_tenant("consrecon", PoolMode::Transaction, 2).await;
    let h = start(console_config(vec![t.clone()])).await;
    let ops = connect_str(&console_conninfo(&h, "ops", OPS_PW)).await;
    let app = h.client(&t.id).await;
    app.batch_execute("BEGIN").await.expect("begin");
    let busy: i32 = app.query_one("SELECT pg_backend_pid()", &[]).await.expect("pid").get(0);
    let other = h.client(&t.id).await;
    let idle: i32 = other.query_one("SELECT pg_backend_pid()", &[]).await.expect("pid").get(0);
    // Released just after the client got its ReadyForQuery.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let servers = show(&ops, "SHOW SERVERS").await;
    let row = |pid: i32| servers.iter().find(|r| num(r, "remote_pid") == i64::from(pid)).cloned();
    let b = row(busy).unwrap_or_else(|| panic!("no row for {busy}: {servers:?}"));
    assert_eq!(
        (b["type"].as_str(), b["state"].as_str(), b["database"].as_str()),
        ("S", "active", t.id.as_str())
    );
    assert_eq!((b["user"].as_str(), b["close_needed"].as_str()), (t.role.as_str(), "0"), "{b:?}");
    let i = row(idle).unwrap_or_else(|| panic!("no row for {idle}: {servers:?}"));
    assert_eq!(i["state"], "idle", "{i:?}");
    ops.simple_query(&format!("RECONNECT {}", t.id)).await.expect("RECONNECT");
    let servers = show(&ops, "SHOW SERVERS").await;
    assert_eq!(servers.len(), 1, "the idle one is closed at once: {servers:?}");
    assert_eq!((num(&servers[0], "remote_pid"), num(&servers[0], "close_needed")), (i64::from(busy), 1));
    assert!(backend_alive(busy).await, "the busy connection stays until released");
    app.batch_execute("COMMIT").await.expect("commit");
    let closed = eventually(Duration::from_secs(5), || async { !backend_alive(busy).await }).await;
    assert!(closed, "backend {busy} still open after its release");
    let next: i32 = app.query_one("SELECT pg_backend_pid()", &[]).await.expect("pid").get(0);
    assert_ne!(next, busy);
    let e = ops.simple_query("RECONNECT nosuchtenant").await.expect_err("unknown");
    assert!(message(&e).contains("no such database"), "{e}");
}

/// With a control database, `SET default_pool_size` reaches the tenants without a size of
/// their own: their catalog entries are read again and their existing pool resized.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_default_pool_size_resizes_a_control_catalog_tenants_pool() {
    let mut t = tenant_db("consdef").await;
    t.pool_size = None;
    let mut cfg = console_config(Vec::new());
    cfg.proxy.auth = AuthMethod::Trust;
    let control = control_db(&mut cfg).await;
    insert_tenant(&control, &t).await;
    let (h, _catalog) = start_control(cfg).await;
    let app = h.client(&t.id).await;
    app.simple_query("SELECT 1").await.expect("query");
    let ops = connect_str(&console_conninfo(&h, "ops", OPS_PW)).await;
    let pool_size = |rows: Vec<std::collections::BTreeMap<String, String>>| {
        rows.iter().find(|r| r["name"] == t.id).map(|r| num(r, "pool_size")).expect("database row")
    };
    assert_eq!(pool_size(show(&ops, "SHOW DATABASES").await), 20);
    ops.simple_query("SET default_pool_size = 3").await.expect("SET");
    let resized = eventually(Duration::from_secs(5), || async {
        h.proxy.pools.pools().iter().any(|p| p.key().database == t.database && p.size() == 3)
    })
    .await;
    assert!(resized, "the tenant's pool kept its size");
    assert_eq!(pool_size(show(&ops, "SHOW DATABASES").await), 3);
    app.simple_query("SELECT 2").await.expect("served after the resize");
}
