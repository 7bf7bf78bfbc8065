//! The registry end to end: the exposition parsed back, the cardinality cap with many
//! tenants, and usage drains that neither lose nor double-count.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use super::*;

/// One sample: metric name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

/// Parses the text exposition: `name{k="v",…} value` lines, comments skipped.
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

fn samples<'a>(all: &'a [Sample], name: &'a str) -> impl Iterator<Item = &'a Sample> + 'a {
    all.iter().filter(move |(n, _, _)| n == name)
}

fn sum(all: &[Sample], name: &str) -> f64 {
    samples(all, name).map(|(_, _, v)| v).sum()
}

fn value(all: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples(all, name)
        .find(|(_, l, _)| {
            labels.iter().all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v)) && l.len() == labels.len()
        })
        .map(|(_, _, v)| *v)
}

#[test]
fn render_names_labels_and_values() {
    let m = Metrics::new(10);
    let mut c = m.client_session("acme");
    c.set_state(ClientState::Active);
    let s = c.stats();
    s.transaction(Duration::from_millis(3));
    s.query(Duration::from_micros(50));
    s.query(Duration::from_millis(2));
    s.bytes_in(100);
    s.bytes_out(2048);
    s.error(ErrorSource::Server, b"42P01");
    s.error(ErrorSource::Proxy, b"53300");
    s.pool_wait(Duration::from_micros(700));
    s.server_released(Duration::from_secs(2));
    s.prepared(1, 2, 10);
    let pool = m.pool("db1:5432/acme/app");
    pool.checkout();
    let mut conn = pool.server();
    conn.set_state(ServerState::Idle);
    pool.connect_failed();
    m.global().auth_failure();
    m.global().set_control_db_up(true);
    m.global().set_large_messages(300_000, 1 << 30);

    let text = m.render();
    assert!(text.ends_with("# EOF\n"), "{text}");
    let all = parse(&text);
    let t = [("tenant", "acme")];
    assert_eq!(value(&all, "pgtenant_tenant_clients", &[("tenant", "acme"), ("state", "active")]), Some(1.0));
    assert_eq!(value(&all, "pgtenant_tenant_clients", &[("tenant", "acme"), ("state", "idle")]), Some(0.0));
    assert_eq!(value(&all, "pgtenant_tenant_transactions_total", &t), Some(1.0));
    assert_eq!(value(&all, "pgtenant_tenant_queries_total", &t), Some(2.0));
    assert_eq!(value(&all, "pgtenant_tenant_received_bytes_total", &t), Some(100.0));
    assert_eq!(value(&all, "pgtenant_tenant_sent_bytes_total", &t), Some(2048.0));
    assert_eq!(value(&all, "pgtenant_tenant_logins_total", &t), Some(1.0));
    assert_eq!(value(&all, "pgtenant_tenant_server_held_seconds_total", &t), Some(2.0));
    assert_eq!(value(&all, "pgtenant_tenant_client_parses_total", &t), Some(1.0));
    assert_eq!(value(&all, "pgtenant_tenant_server_parses_total", &t), Some(2.0));
    assert_eq!(value(&all, "pgtenant_tenant_binds_total", &t), Some(10.0));
    let err = |source, class| {
        value(
            &all,
            "pgtenant_tenant_errors_total",
            &[("tenant", "acme"), ("source", source), ("class", class)],
        )
    };
    assert_eq!((err("server", "42"), err("proxy", "53"), err("client", "42")), (Some(1.0), Some(1.0), None));
    assert_eq!(value(&all, "pgtenant_tenant_query_seconds_count", &t), Some(2.0));
    assert_eq!(value(&all, "pgtenant_tenant_query_seconds_sum", &t), Some(0.00205));
    let bucket = |le| value(&all, "pgtenant_tenant_query_seconds_bucket", &[("tenant", "acme"), ("le", le)]);
    assert_eq!(
        (bucket("0.0001"), bucket("0.001"), bucket("0.0025"), bucket("+Inf")),
        (Some(1.0), Some(1.0), Some(2.0), Some(2.0))
    );
    assert_eq!(value(&all, "pgtenant_tenant_pool_wait_seconds_count", &t), Some(1.0));
    let p = [("pool", "db1:5432/acme/app")];
    assert_eq!(value(&all, "pgtenant_pool_server_connections", &[p[0], ("state", "idle")]), Some(1.0));
    assert_eq!(value(&all, "pgtenant_pool_server_connections", &[p[0], ("state", "login")]), Some(0.0));
    assert_eq!(value(&all, "pgtenant_pool_checkouts_total", &p), Some(1.0));
    assert_eq!(value(&all, "pgtenant_pool_connects_total", &p), Some(1.0));
    assert_eq!(value(&all, "pgtenant_pool_connect_failures_total", &p), Some(1.0));
    assert_eq!(value(&all, "pgtenant_logins_total", &[]), Some(1.0));
    assert_eq!(value(&all, "pgtenant_auth_failures_total", &[]), Some(1.0));
    assert_eq!(value(&all, "pgtenant_control_db_up", &[]), Some(1.0));
    assert_eq!(value(&all, "pgtenant_large_message_bytes", &[]), Some(300_000.0));
    assert_eq!(value(&all, "pgtenant_large_message_memory_bytes", &[]), Some(f64::from(1u32 << 30)));
    assert_eq!(value(&all, "pgtenant_tenants_tracked", &[]), Some(1.0));
    let snapshots = m.tenants();
    assert_eq!(snapshots.len(), 1);
    assert_eq!(
        (snapshots[0].0.as_str(), snapshots[0].1.queries, snapshots[0].1.pool_wait.mean_us()),
        ("acme", 2, 700)
    );
    assert_eq!(m.pools()[0].1.checkouts, 1);
    // One tenant, under the cap: no `_other`.
    assert!(!text.contains(OTHER));

    drop(conn);
    drop(c);
    let all = parse(&m.render());
    assert_eq!(value(&all, "pgtenant_tenant_clients", &[("tenant", "acme"), ("state", "active")]), Some(0.0));
    assert_eq!(value(&all, "pgtenant_pool_server_connections", &[p[0], ("state", "idle")]), Some(0.0));
}

#[test]
fn a_thousand_tenants_make_at_most_n_plus_one_series_with_exact_totals() {
    let n = 100;
    let m = Metrics::new(n);
    let mut held = Vec::new();
    let (mut xacts, mut bytes, mut errors, mut waits) = (0u64, 0u64, 0u64, 0u64);
    for i in 0..1000u64 {
        let tenant = format!("tenant{i:04}");
        let mut c = m.client_session(&tenant);
        let s = c.stats();
        for _ in 0..=(i % 37) {
            s.transaction(Duration::from_micros(i * 10));
            xacts += 1;
        }
        s.bytes_in(i * 3);
        bytes += i * 3;
        if i % 7 == 0 {
            s.error(ErrorSource::Client, b"08P01");
            errors += 1;
        }
        s.pool_wait(Duration::from_micros(i));
        waits += 1;
        if i % 2 == 0 {
            c.set_state(ClientState::Waiting);
            held.push(c);
        }
    }
    for scrape in 0..3 {
        let text = m.render();
        let all = parse(&text);
        let mut tenants = HashSet::new();
        for (_, labels, _) in &all {
            if let Some(t) = labels.get("tenant") {
                tenants.insert(t.clone());
            }
        }
        assert!(tenants.len() <= n + 1, "scrape {scrape}: {} tenant label values", tenants.len());
        assert!(tenants.contains(OTHER));
        assert_eq!(sum(&all, "pgtenant_tenant_transactions_total"), xacts as f64);
        assert_eq!(sum(&all, "pgtenant_tenant_received_bytes_total"), bytes as f64);
        assert_eq!(sum(&all, "pgtenant_tenant_errors_total"), errors as f64);
        assert_eq!(sum(&all, "pgtenant_tenant_logins_total"), 1000.0);
        assert_eq!(sum(&all, "pgtenant_tenant_pool_wait_seconds_count"), waits as f64);
        assert_eq!(sum(&all, "pgtenant_tenant_transaction_seconds_count"), xacts as f64);
        let waiting: f64 = samples(&all, "pgtenant_tenant_clients")
            .filter(|(_, l, _)| l.get("state").map(String::as_str) == Some("waiting"))
            .map(|(_, _, v)| v)
            .sum();
        assert_eq!(waiting, 500.0);
        // The busiest tenants (36 transactions and more) are among those shown.
        assert!(tenants.contains("tenant0036"), "scrape {scrape}");
    }
}

#[test]
fn the_top_follows_current_activity() {
    let m = Metrics::new(2);
    for t in ["a", "b", "c"] {
        m.tenant(t).transaction(Duration::ZERO);
    }
    let quiet = m.tenant("a");
    let busy = m.tenant("c");
    let shown = |m: &Metrics| -> HashSet<String> {
        parse(&m.render())
            .into_iter()
            .filter_map(|(n, l, _)| (n == "pgtenant_tenant_transactions_total").then(|| l["tenant"].clone()))
            .collect()
    };
    let first = shown(&m);
    assert_eq!(first.len(), 3);
    assert!(first.contains(OTHER));
    for _ in 0..5 {
        for _ in 0..100 {
            busy.transaction(Duration::ZERO);
        }
        let now = shown(&m);
        assert!(now.contains("c"), "{now:?}");
        assert_eq!(now.len(), 3);
    }
    drop(quiet);
}

#[test]
fn usage_drains_neither_lose_nor_double_count() {
    let m = Metrics::new(10);
    let stop = AtomicBool::new(false);
    let recorded = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..4)
            .map(|w| {
                let m = m.clone();
                let stop = &stop;
                scope.spawn(move || {
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let c = m.client_session(&format!("t{}", n % 5 + w * 5));
                        c.stats().transaction(Duration::ZERO);
                        c.stats().query(Duration::ZERO);
                        c.stats().bytes_out(7);
                        c.stats().server_released(Duration::from_micros(3));
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        let mut rows = Vec::new();
        let start = SystemTime::now();
        for i in 0..50u64 {
            // Drains as if a minute passed between each: every minute before "now" is done.
            rows.extend(m.drain_usage_at(start + Duration::from_secs(60 * i)));
            std::thread::sleep(Duration::from_millis(1));
        }
        stop.store(true, Ordering::Relaxed);
        let n: u64 = workers.into_iter().map(|w| w.join().expect("worker")).sum();
        rows.extend(m.flush_usage_at(start + Duration::from_secs(60 * 50)));
        (n, rows)
    });
    let (n, rows) = recorded;
    assert!(n > 0);
    let total = rows.iter().fold(UsageTotals::default(), |mut acc, r| {
        acc.transactions += r.totals.transactions;
        acc.queries += r.totals.queries;
        acc.bytes_out += r.totals.bytes_out;
        acc.server_conn_us += r.totals.server_conn_us;
        acc.client_conn_us += r.totals.client_conn_us;
        acc
    });
    assert_eq!(
        (total.transactions, total.queries, total.bytes_out, total.server_conn_us),
        (n, n, 7 * n, 3 * n)
    );
    // A (tenant, minute) row is reported once: a minute is handed out only when finished.
    let mut keys = HashSet::new();
    for r in &rows {
        assert!(keys.insert((r.tenant.clone(), r.minute)), "{} {} twice", r.tenant, r.minute);
    }
    // Nothing left once flushed.
    assert!(m.flush_usage_at(start_of(&rows)).iter().all(|r| r.totals.transactions == 0));
}

fn start_of(rows: &[UsageRow]) -> SystemTime {
    std::time::UNIX_EPOCH + Duration::from_secs(rows.iter().map(|r| r.minute).max().unwrap_or(0) + 60)
}

#[test]
fn client_time_is_counted_per_minute_while_connected() {
    let m = Metrics::new(10);
    let c = m.client_session("acme");
    std::thread::sleep(Duration::from_millis(20));
    let t0 = SystemTime::now();
    let first = m.drain_usage_at(t0 + Duration::from_secs(60));
    // Nothing was drained before: the first drain files everything under its own minute,
    // which is not finished yet.
    assert!(first.is_empty(), "{first:?}");
    let rows = m.drain_usage_at(t0 + Duration::from_secs(120));
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].tenant, "acme");
    assert_eq!(rows[0].minute, usage::minute_of(t0 + Duration::from_secs(60)));
    assert!(rows[0].totals.client_conn_us >= 20_000);
    drop(c);
    let rest: u64 = m.flush_usage().iter().map(|r| r.totals.client_conn_us).sum();
    let after: u64 = m.flush_usage().iter().map(|r| r.totals.client_conn_us).sum();
    assert!(rest < 1_000_000);
    assert_eq!(after, 0, "a closed connection stops counting");
}

#[test]
fn quiet_tenants_leave_memory_but_not_the_totals() {
    let m = Metrics::new(1);
    for t in ["a", "b", "c"] {
        let c = m.client_session(t);
        c.stats().transaction(Duration::ZERO);
    }
    let held = m.tenant("b");
    let now = SystemTime::now();
    for _ in 0..=SWEEP_AFTER_QUIET_DRAINS {
        m.drain_usage_at(now);
    }
    let all = parse(&m.render());
    assert_eq!(value(&all, "pgtenant_tenants_tracked", &[]), Some(1.0), "only the held tenant stays");
    assert_eq!(sum(&all, "pgtenant_tenant_transactions_total"), 3.0);
    assert_eq!(sum(&all, "pgtenant_tenant_logins_total"), 3.0);
    // A tenant that comes back starts again, and totals go on adding up.
    m.tenant("a").transaction(Duration::ZERO);
    assert_eq!(sum(&parse(&m.render()), "pgtenant_tenant_transactions_total"), 4.0);
    drop(held);
}
