//! Metrics and usage end to end: `/metrics` scraped over HTTP and parsed (a tenant's series
//! equal what the test ran), the pools' connect counters, the cardinality cap with 20 tenants
//! and `top_tenants = 5`, and `pgtenant.usage` rows after a pgbench run equal to pgbench's own
//! transaction count, read through SQL, the CLI and the admin API.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use ::pgtenant::config::TenantConfig;
use ::pgtenant::model::PoolMode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use crate::support::*;

type Sample = (String, BTreeMap<String, String>, f64);

/// The samples of an OpenMetrics text exposition.
fn parse(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let (series, value) = line.rsplit_once(' ').expect("value");
        let value: f64 = value.parse().expect("number");
        let (name, labels) = match series.split_once('{') {
            None => (series.to_owned(), BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').expect("closing brace");
                let labels = body
                    .split(',')
                    .filter(|p| !p.is_empty())
                    .map(|p| {
                        let (k, v) = p.split_once('=').expect("label");
                        (k.to_owned(), v.trim_matches('"').to_owned())
                    })
                    .collect();
                (name.to_owned(), labels)
            }
        };
        out.push((name, labels, value));
    }
    out
}

fn value(all: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    all.iter()
        .find(|(n, l, _)| n == name && labels.iter().all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v)))
        .map(|s| s.2)
}

/// `GET /metrics` on the token-free metrics listener: status line, content type, body.
async fn scrape(addr: SocketAddr) -> (String, String, String) {
    let mut s = TcpStream::connect(addr).await.expect("connect to /metrics");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: pgtenant\r\nConnection: close\r\n\r\n").await.expect("send");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw))
        .await
        .expect("reply in time")
        .expect("read");
    let raw = String::from_utf8(raw).expect("utf-8");
    let (head, body) = raw.split_once("\r\n\r\n").expect("head and body");
    let status = head.lines().next().unwrap_or_default().to_owned();
    let ctype = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-type: ").map(str::to_owned))
        .unwrap_or_default();
    (status, ctype, body.to_owned())
}

/// The proxy's token-free metrics listener, on port 0.
async fn metrics_listener(h: &Harness) -> (SocketAddr, CancellationToken) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let stop = CancellationToken::new();
    tokio::spawn(::pgtenant::admin::http::metrics::serve(listener, h.proxy.clone(), stop.clone()));
    (addr, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_a_tenant_ran() {
    let t = with_mode(tenant_db("metrics").await, PoolMode::Transaction, 2);
    let h = start(config(vec![t.clone()])).await;
    let (addr, _stop) = metrics_listener(&h).await;
    let c = h.client(&t.id).await;
    // tokio-postgres returns an error before its ReadyForQuery: the next statement waits
    // until the server connection went back, so that each statement has a checkout.
    let e = c.batch_execute("SELECT 1/0").await.expect_err("division by zero");
    assert_eq!(code(&e), "22012");
    let settled = eventually(Duration::from_secs(5), || async {
        let all = parse(&scrape(addr).await.2);
        value(&all, "pgtenant_tenant_clients", &[("tenant", &t.id), ("state", "idle")]) == Some(1.0)
    })
    .await;
    assert!(settled);
    // Simple-protocol statements: one ReadyForQuery each.
    for _ in 0..7 {
        c.batch_execute("SELECT 1").await.expect("select");
    }
    c.batch_execute("BEGIN").await.expect("begin");
    c.batch_execute("SELECT 2").await.expect("in transaction");
    c.batch_execute("COMMIT").await.expect("commit");
    // The server connection goes back to the pool just after the client got its
    // ReadyForQuery: the client is idle once that happened.
    let idle = eventually(Duration::from_secs(5), || async {
        let all = parse(&scrape(addr).await.2);
        value(&all, "pgtenant_tenant_clients", &[("tenant", &t.id), ("state", "idle")]) == Some(1.0)
    })
    .await;
    assert!(idle);
    let (status, ctype, body) = scrape(addr).await;
    assert!(status.contains(" 200 "), "{status}");
    assert!(ctype.starts_with("application/openmetrics-text"), "{ctype}");
    let all = parse(&body);
    let tenant = [("tenant", t.id.as_str())];
    // 7 + BEGIN…COMMIT + the failed statement.
    assert_eq!(value(&all, "pgtenant_tenant_transactions_total", &tenant), Some(9.0), "{body}");
    assert_eq!(value(&all, "pgtenant_tenant_queries_total", &tenant), Some(11.0), "{body}");
    assert_eq!(value(&all, "pgtenant_tenant_logins_total", &tenant), Some(1.0), "{body}");
    let errors = [("tenant", t.id.as_str()), ("source", "server"), ("class", "22")];
    assert_eq!(value(&all, "pgtenant_tenant_errors_total", &errors), Some(1.0), "{body}");
    assert!(value(&all, "pgtenant_tenant_received_bytes_total", &tenant).is_some_and(|b| b > 0.0));
    assert!(value(&all, "pgtenant_tenant_sent_bytes_total", &tenant).is_some_and(|b| b > 0.0));
    assert_eq!(value(&all, "pgtenant_tenant_transaction_seconds_count", &tenant), Some(9.0), "{body}");
    assert_eq!(value(&all, "pgtenant_tenant_pool_wait_seconds_count", &tenant), Some(9.0), "{body}");
    assert!(value(&all, "pgtenant_logins_total", &[]).is_some_and(|n| n >= 1.0), "{body}");
    // The tenant's pool handed out a connection per transaction, and holds one at most.
    let pool = all
        .iter()
        .find(|(n, l, _)| {
            n == "pgtenant_pool_checkouts_total"
                && l["pool"].ends_with(&format!("/{}/{}", t.database, t.role))
        })
        .unwrap_or_else(|| panic!("no pool series: {body}"));
    assert_eq!(pool.2, 9.0, "{body}");
    let servers: f64 = all
        .iter()
        .filter(|(n, l, _)| n == "pgtenant_pool_server_connections" && l["pool"] == pool.1["pool"])
        .map(|s| s.2)
        .sum();
    assert_eq!(servers, 1.0, "{body}");
    assert!(value(&all, "pgtenant_catalog_cache_hits_total", &[]).is_some_and(|n| n >= 1.0), "{body}");
    assert!(value(&all, "pgtenant_resident_memory_bytes", &[]).is_some_and(|n| n > 0.0), "{body}");
    drop(c);
    // The client left: no client gauge stays up.
    let gone = eventually(Duration::from_secs(5), || async {
        let all = parse(&scrape(addr).await.2);
        value(&all, "pgtenant_tenant_clients", &[("tenant", &t.id), ("state", "idle")]) == Some(0.0)
    })
    .await;
    assert!(gone);
}

/// The per-pool connect counters: a working tenant's pool counts the connection it opened;
/// a tenant whose upstream login fails counts each failed attempt, and opens nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_connects_and_connect_failures_are_counted() {
    let good = with_mode(tenant_db("connects").await, PoolMode::Transaction, 2);
    let mut bad = with_mode(tenant_db("connfail").await, PoolMode::Transaction, 2);
    bad.password = Some("not-the-password".into());
    let h = start(config(vec![good.clone(), bad.clone()])).await;
    let (addr, _stop) = metrics_listener(&h).await;
    let c = h.client(&good.id).await;
    for _ in 0..5 {
        c.batch_execute("SELECT 1").await.expect("select");
    }
    for _ in 0..2 {
        let conninfo = h.conninfo(&bad.id);
        let failed = match tokio_postgres::connect(&conninfo, tokio_postgres::NoTls).await {
            Err(e) => code(&e),
            Ok((client, conn)) => {
                tokio::spawn(conn);
                code(&client.batch_execute("SELECT 1").await.expect_err("upstream login fails"))
            }
        };
        assert_eq!(failed, "08006");
    }
    let (_, _, body) = scrape(addr).await;
    let all = parse(&body);
    let pool_of = |t: &TenantConfig| {
        all.iter()
            .find(|(n, l, _)| {
                n == "pgtenant_pool_connects_total"
                    && l["pool"].ends_with(&format!("/{}/{}", t.database, t.role))
            })
            .map(|s| s.1["pool"].clone())
            .unwrap_or_else(|| panic!("no pool series for {}: {body}", t.id))
    };
    let (good_pool, bad_pool) = (pool_of(&good), pool_of(&bad));
    let get = |name: &str, pool: &str| value(&all, name, &[("pool", pool)]).unwrap_or(-1.0);
    assert_eq!(get("pgtenant_pool_connects_total", &good_pool), 1.0, "{body}");
    assert_eq!(get("pgtenant_pool_connect_failures_total", &good_pool), 0.0, "{body}");
    assert_eq!(get("pgtenant_pool_connects_total", &bad_pool), 0.0, "{body}");
    assert!(get("pgtenant_pool_connect_failures_total", &bad_pool) >= 2.0, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_series_are_capped_and_totals_stay_exact() {
    let base = tenant_db("cap").await;
    // 20 tenants on one database: the cap is about tenants, not databases.
    let tenants: Vec<TenantConfig> = (0..20)
        .map(|i| {
            let mut t = base.clone();
            t.id = format!("{}_{i}", base.id);
            t
        })
        .collect();
    let mut cfg = config(tenants.clone());
    cfg.metrics.top_tenants = 5;
    let h = start(cfg).await;
    let (addr, _stop) = metrics_listener(&h).await;
    let mut total = 0;
    for (i, t) in tenants.iter().enumerate() {
        let conninfo =
            format!("host=127.0.0.1 port={} user=app.{} dbname={}", h.addr.port(), t.id, t.database);
        let c = connect_str(&conninfo).await;
        for _ in 0..=i {
            c.batch_execute("SELECT 1").await.expect("select");
            total += 1;
        }
    }
    let (_, _, body) = scrape(addr).await;
    let all = parse(&body);
    let series: Vec<&Sample> =
        all.iter().filter(|(n, _, _)| n == "pgtenant_tenant_transactions_total").collect();
    let labels: BTreeSet<&str> =
        series.iter().filter_map(|(_, l, _)| l.get("tenant").map(String::as_str)).collect();
    assert!(labels.len() <= 6, "{labels:?}");
    assert!(labels.contains("_other"), "{labels:?}");
    // The busiest five have their own series.
    for t in &tenants[15..] {
        assert!(labels.contains(t.id.as_str()), "{} missing from {labels:?}", t.id);
    }
    let sum: f64 = series.iter().map(|s| s.2).sum();
    assert_eq!(sum, f64::from(total), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_rows_match_pgbench_transactions() {
    let t = with_mode(tenant_db("usage").await, PoolMode::Transaction, 4);
    let mut cfg = config(Vec::new());
    let control = control_db(&mut cfg).await;
    insert_tenant(&control, &t).await;
    cfg.usage.flush_interval = 0.5;
    let (h, _catalog) = start_control(cfg.clone()).await;
    let stop = CancellationToken::new();
    let flusher = tokio::spawn(::pgtenant::report::flush_usage(h.proxy.clone(), stop.clone()));
    let dir = tempfile::tempdir().expect("tempdir");
    let script = dir.path().join("one.sql");
    std::fs::write(&script, "SELECT 1;\n").expect("script");
    let url = h.url(&format!("app.{}", t.id), &t.database);
    let out = Command::new("pgbench")
        .args(["-n", "-c", "4", "-j", "2", "-t", "150", "-f"])
        .arg(&script)
        .arg(&url)
        .output()
        .await
        .expect("pgbench");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    let processed: i64 = text
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|v| v.split('/').next())
        .and_then(|v| v.trim().parse().ok())
        .expect("processed count");
    assert_eq!(processed, 600, "{text}");
    // Part of it flushed by the interval, the rest by the shutdown flush.
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.cancel();
    flusher.await.expect("flusher");
    let row = control
        .query_one(
            "SELECT coalesce(sum(transactions), 0)::int8, coalesce(sum(queries), 0)::int8,
                    coalesce(sum(bytes_in), 0)::int8, coalesce(sum(client_conn_seconds), 0)
               FROM pgtenant.usage WHERE tenant_id = $1",
            &[&t.id],
        )
        .await
        .expect("usage");
    let (txs, queries, bytes_in, client_secs): (i64, i64, i64, f64) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    assert_eq!(txs, processed);
    assert_eq!(queries, processed);
    assert!(bytes_in > 0 && client_secs > 0.0, "{bytes_in} {client_secs}");
    // The CLI reads the same rows.
    let (rc, stdout, stderr) =
        pgtenant(&["tenant", "usage", &t.id, "--json", "--url", &cfg.catalog.url], "").await;
    assert_eq!(rc, 0, "{stderr}");
    let rows: serde_json::Value = serde_json::from_str(&stdout).expect("json");
    let cli_txs: i64 =
        rows.as_array().expect("rows").iter().map(|r| r["transactions"].as_i64().unwrap_or(0)).sum();
    assert_eq!(cli_txs, processed, "{stdout}");
    let (rc, _, stderr) =
        pgtenant(&["tenant", "usage", &t.id, "--from", "yesterday", "--url", &cfg.catalog.url], "").await;
    assert_ne!(rc, 0);
    assert!(stderr.contains("RFC 3339"), "{stderr}");

    // And the admin API: `GET /tenants/{id}/usage?from=&to=` over a window around the run
    // sums to the same count; a window after it holds nothing; a bad bound is a 400.
    let token = ::pgtenant::admin::new_token();
    cfg.admin.token_sha256 = vec![::pgtenant::admin::token_sha256(&token)];
    let state = ::pgtenant::admin::http::AdminState::new(h.proxy.clone(), &cfg).expect("admin state");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let api = listener.local_addr().expect("addr");
    let api_stop = CancellationToken::new();
    tokio::spawn(::pgtenant::admin::http::serve(listener, state, api_stop.clone()));
    let stamp = |offset: &'static str| {
        let control = &control;
        async move {
            let sql = format!(
                "SELECT to_char((now() + interval '{offset}') AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')"
            );
            control.query_one(&sql, &[]).await.expect("timestamp").get::<_, String>(0)
        }
    };
    let get = |query: String| {
        let (token, id) = (token.clone(), t.id.clone());
        async move {
            let out = Command::new("curl")
                .args(["-s", "-w", "\n%{http_code}", "-H"])
                .arg(format!("Authorization: Bearer {token}"))
                .arg(format!("http://{api}/tenants/{id}/usage?{query}"))
                .output()
                .await
                .expect("curl");
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let (body, status) = text.rsplit_once('\n').expect("status line");
            (status.to_owned(), body.to_owned())
        }
    };
    let (status, body) = get(format!("from={}&to={}", stamp("-1 hour").await, stamp("1 hour").await)).await;
    assert_eq!(status, "200", "{body}");
    let doc: serde_json::Value = serde_json::from_str(&body).expect("json");
    let minutes = doc["minutes"].as_array().expect("minutes");
    let http_txs: i64 = minutes.iter().map(|m| m["transactions"].as_i64().unwrap_or(0)).sum();
    assert_eq!(http_txs, processed, "{body}");
    let (status, body) = get(format!("from={}", stamp("1 hour").await)).await;
    assert_eq!(status, "200", "{body}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).expect("json")["minutes"],
        serde_json::json!([])
    );
    let (status, body) = get("from=yesterday".into()).await;
    assert_eq!(status, "400", "{body}");
    assert!(body.contains("RFC 3339"), "{body}");
    api_stop.cancel();
}
