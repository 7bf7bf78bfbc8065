//! What N pgtenant instances cost the control database: each simulated instance holds what a
//! real one holds there (its registry connection and the catalog's LISTEN connection) and the
//! default 3 s heartbeat, watched for 15 s through `pg_stat_database` and the WAL position.
//! Prints one line per N (10 and 100; `REGISTRY_INSTANCES=10,50` to choose), the figures in
//! the README's "Scale beyond one machine".
//!
//! `cargo bench --bench registry_load` (starts its own throwaway PostgreSQL; ~1 minute and
//! 2 connections per simulated instance).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use pgtenant::catalog::ControlCatalog;
use pgtenant::config::Config;
use pgtenant::embedded::Cluster;
use pgtenant::instances::Instances;
use tokio_util::sync::CancellationToken;

const WINDOW: Duration = Duration::from_secs(15);

fn main() {
    let cluster = Cluster::start().expect("cluster");
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let counts: Vec<usize> = std::env::var("REGISTRY_INSTANCES")
        .unwrap_or_else(|_| "10,100".into())
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .collect();
    rt.block_on(async {
        for (i, n) in counts.into_iter().enumerate() {
            measure(&cluster, i, n).await;
        }
    });
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.expect("connect");
    tokio::spawn(conn);
    client
}

async fn stats(control: &tokio_postgres::Client) -> (i64, i64, i64, i64, i64, i64) {
    let r = control
        .query_one(
            "SELECT xact_commit, tup_returned + tup_fetched, tup_updated, tup_deleted,
                    (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint,
                    (SELECT count(*) FROM pg_stat_activity WHERE datname = current_database())
               FROM pg_stat_database WHERE datname = current_database()",
            &[],
        )
        .await
        .expect("stats");
    (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5))
}

async fn measure(cluster: &Cluster, round: usize, n: usize) {
    let db = format!("registry_load_{round}");
    connect(&cluster.superuser_conninfo("postgres"))
        .await
        .batch_execute(&format!("CREATE DATABASE {db}"))
        .await
        .expect("control database");
    let mut cfg = Config::parse("").expect("defaults");
    cfg.catalog.url = cluster.superuser_conninfo(&db);
    let mut control = connect(&cfg.catalog.url).await;
    pgtenant::catalog::migrations::migrate(&mut control).await.expect("migrate");
    cfg.proxy.heartbeat_interval = 3.0;
    let stop = CancellationToken::new();
    let mut held = Vec::new();
    let started = Instant::now();
    for i in 0..n {
        let catalog = ControlCatalog::start(&cfg.catalog, &cfg.pool).await.expect("catalog");
        let addr = SocketAddr::from(([127, 0, 0, 1], 20000 + i as u16));
        let instances = Instances::register(&cfg, addr).await.expect("register");
        instances.spawn_heartbeat(stop.clone());
        held.push((catalog, instances));
    }
    let join = started.elapsed();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let before = stats(&control).await;
    tokio::time::sleep(WINDOW).await;
    let after = stats(&control).await;
    let per_s = |a: i64, b: i64| (b - a) as f64 / WINDOW.as_secs_f64();
    let live = held[0].1.live().await.expect("live").len();
    println!(
        "instances={n} live={live} join_all={join:?} connections={} xact/s={:.1} rows_read/s={:.0} rows_updated/s={:.1} rows_deleted/s={:.1} wal_bytes/s={:.0}",
        after.5,
        per_s(before.0, after.0),
        per_s(before.1, after.1),
        per_s(before.2, after.2),
        per_s(before.3, after.3),
        per_s(before.4, after.4),
    );
    stop.cancel();
    tokio::time::sleep(Duration::from_secs(1)).await;
}
