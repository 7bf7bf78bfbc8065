//! What the instance registry costs the control database, measured (README, "Scale beyond
//! one machine"): N simulated instances in this process, each with the connections a real
//! one holds there (its registry connection and the catalog's LISTEN connection) and the
//! default 3 s heartbeat, watched for a while through `pg_stat_database` and the WAL
//! position. Ignored by default (it takes a minute and 200 connections):
//! `cargo test --test e2e registry_cost -- --ignored --nocapture`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use pgtenant::catalog::ControlCatalog;
use pgtenant::instances::Instances;
use tokio_util::sync::CancellationToken;

use crate::support::*;

const WINDOW: Duration = Duration::from_secs(15);

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

async fn measure(n: usize) {
    let mut cfg = config(vec![]);
    let control = control_db(&mut cfg).await;
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

#[tokio::test]
#[ignore = "a measurement for the README, not a check: run it alone with --ignored --nocapture"]
async fn registry_cost_at_10_and_100_instances() {
    measure(10).await;
    measure(100).await;
}
