//! Caps for the whole service (issue 15): three instances on one control database, behind a
//! round-robin HAProxy, share a tenant's `max_clients` and an upstream's `max_connections`
//! through leases on the instance registry, and hand a leaving instance's share to the others.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pgtenant::config::TenantConfig;
use pgtenant::model::PoolMode;
use pgtenant::proxy::Proxy;
use tokio::process::Command;
use tokio_postgres::NoTls;

use crate::instances::haproxy;
use crate::support::*;

struct Instance {
    addr: SocketAddr,
    proxy: Arc<Proxy>,
    served: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// `n` instances started as `pgtenant serve` starts them (registry, heartbeats, leaving once
/// drained), over a control database holding `tenant`; `setup` runs on the control database
/// before the first instance starts.
async fn service(n: usize, tenant: &TenantConfig, setup: &str) -> (Vec<Instance>, tokio_postgres::Client) {
    let mut cfg = config(vec![]);
    let control = control_db(&mut cfg).await;
    insert_tenant(&control, tenant).await;
    control.batch_execute(setup).await.expect("setup");
    cfg.proxy.heartbeat_interval = 0.5;
    cfg.pool.checkout_timeout = 20.0;
    let mut out = Vec::new();
    for _ in 0..n {
        let listener = pgtenant::listener::bind(cfg.proxy.listen, 128).expect("bind");
        let addr = listener.local_addr().expect("addr");
        let proxy = Proxy::start_at(cfg.clone(), Some(addr)).await.expect("start");
        let served = tokio::spawn(proxy.clone().serve(listener));
        out.push(Instance { addr, proxy, served });
    }
    (out, control)
}

/// Waits until the registry holds `n` instances, each settled on the view of all of them.
async fn settled(control: &tokio_postgres::Client, n: i64) {
    let all_settled = || async {
        control
            .query_one(
                "SELECT count(*) = $1 AND coalesce(bool_and(settled AND seen =
                        (SELECT string_agg(slot::text, ',' ORDER BY slot) FROM pgtenant.instances)), false)
                   FROM pgtenant.instances",
                &[&n],
            )
            .await
            .expect("registry")
            .get::<_, bool>(0)
    };
    assert!(eventually(Duration::from_secs(20), all_settled).await, "{n} instances settled");
}

fn conninfo(addr: SocketAddr, tenant: &str) -> String {
    format!("host=127.0.0.1 port={} user=app.{tenant} dbname={tenant}", addr.port())
}

async fn connect(addr: SocketAddr, tenant: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(&conninfo(addr, tenant), NoTls).await?;
    tokio::spawn(conn);
    client.simple_query("SELECT 1").await?;
    Ok(client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_clients_holds_across_three_instances_and_follows_a_leave() {
    let t = with_mode(tenant_db("lease_cl").await, PoolMode::Transaction, 4);
    let setup = format!("UPDATE pgtenant.tenants SET max_clients = 10 WHERE id = '{}'", t.id);
    let (service, control) = service(3, &t, &setup).await;
    settled(&control, 3).await;
    let limits: Vec<usize> = service.iter().map(|i| i.proxy.limit(10)).collect();
    assert_eq!(limits, vec![4, 3, 3], "shares by slot order");

    // Ten clients through the balancer (round robin: 4, 3, 3), each logged in and served.
    let lb = haproxy(&service.iter().map(|i| i.addr).collect::<Vec<_>>()).await;
    // Where HAProxy's rotation starts is its own business: probe until the next connection
    // goes to the first instance (the one with the extra client).
    let no_clients = || async { service.iter().all(|i| i.proxy.tenant_clients(&t.id) == 0) };
    for _ in 0..3 {
        let probe = connect(lb.addr, &t.id).await.expect("probe");
        let landed = service.iter().position(|i| i.proxy.tenant_clients(&t.id) == 1).expect("landed");
        drop(probe);
        assert!(eventually(Duration::from_secs(5), no_clients).await, "probe gone");
        if landed == 2 {
            break;
        }
    }
    let mut clients = Vec::new();
    for n in 0..10 {
        let c = connect(lb.addr, &t.id).await;
        clients.push(c.unwrap_or_else(|e| panic!("client {n}: {} {e}", code(&e))));
    }
    let per_instance: Vec<usize> = service.iter().map(|i| i.proxy.tenant_clients(&t.id)).collect();
    assert_eq!(per_instance, vec![4, 3, 3]);
    // The eleventh is refused whichever instance it lands on: three tries, one per instance.
    for n in 0..3 {
        let e = connect(lb.addr, &t.id).await.err().unwrap_or_else(|| panic!("try {n} admitted"));
        assert_eq!(code(&e), "53300", "try {n}: {e}");
    }

    // The third instance drains (its clients are closed) and leaves the registry once
    // drained; the other two take its share (5 and 5) once both have seen it go.
    let mut service = service;
    let third = service.remove(2);
    third.proxy.shutdown.drain.cancel();
    let served = tokio::time::timeout(Duration::from_secs(10), third.served).await;
    assert!(matches!(served, Ok(Ok(Ok(())))), "drained: {served:?}");
    settled(&control, 2).await;
    let limits: Vec<usize> = service.iter().map(|i| i.proxy.limit(10)).collect();
    assert_eq!(limits, vec![5, 5]);
    // Directly to each: the first had 4 and takes one more, the second had 3 and takes two;
    // then both refuse. Ten in all again.
    for (i, more) in [(0, 1), (1, 2)] {
        for n in 0..more {
            clients.push(connect(service[i].addr, &t.id).await.unwrap_or_else(|e| panic!("{i}/{n}: {e}")));
        }
        let e = connect(service[i].addr, &t.id)
            .await
            .err()
            .unwrap_or_else(|| panic!("instance {i} over its share"));
        assert_eq!(code(&e), "53300");
    }
    let total: usize = service.iter().map(|i| i.proxy.tenant_clients(&t.id)).sum();
    assert_eq!(total, 10);
}

fn failed_transactions(output: &str) -> Option<u64> {
    let line = output.lines().find(|l| l.starts_with("number of failed transactions"))?;
    line.split(':').nth(1)?.split_whitespace().next()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_capped_at_20_never_sees_more_under_pgbench_through_three_instances() {
    let setup = |_: &str| "UPDATE pgtenant.upstreams SET max_connections = 20".to_owned();
    capped_under_pgbench("lease_up", &setup, 20, vec![7, 7, 6], 30).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_max_server_connections_holds_across_three_instances_under_pgbench() {
    let setup =
        |id: &str| format!("UPDATE pgtenant.tenants SET max_server_connections = 9 WHERE id = '{id}'");
    capped_under_pgbench("lease_sv", &setup, 9, vec![3, 3, 3], 15).await;
}

/// Three instances behind HAProxy, each with a pool of 20 (without shared caps they could
/// open 60), a cap of `cap` set by `setup` (given the tenant id), and pgbench with `clients`
/// through the balancer: the upstream never sees more than `cap` backends of the tenant's
/// role, and no transaction fails (a client waiting for a connection is not an error).
async fn capped_under_pgbench(
    prefix: &str,
    setup: &dyn Fn(&str) -> String,
    cap: i64,
    shares: Vec<usize>,
    clients: usize,
) {
    let t = with_mode(tenant_db(prefix).await, PoolMode::Transaction, 20);
    let (service, control) = service(3, &t, &setup(&t.id)).await;
    settled(&control, 3).await;
    let limits: Vec<usize> = service.iter().map(|i| i.proxy.limit(cap as usize)).collect();
    assert_eq!(limits, shares);
    let lb = haproxy(&service.iter().map(|i| i.addr).collect::<Vec<_>>()).await;
    let url = format!("postgresql://app.{}@127.0.0.1:{}/{}", t.id, lb.addr.port(), t.id);
    let init =
        Command::new("pgbench").args(["-i", "-q", "-s", "1"]).arg(&url).output().await.expect("pgbench -i");
    assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));

    // Backends of the tenant's role, sampled every 20 ms on one connection while pgbench runs.
    let most = Arc::new(AtomicI64::new(0));
    let stop = tokio_util::sync::CancellationToken::new();
    let sampler = {
        let (most, stop, db, role) = (most.clone(), stop.clone(), t.database.clone(), t.role.clone());
        tokio::spawn(async move {
            let admin = admin("postgres").await;
            let mut samples = 0u64;
            while !stop.is_cancelled() {
                let n: i64 = admin
                    .query_one(
                        "SELECT count(*) FROM pg_stat_activity
                          WHERE datname = $1 AND usename = $2 AND backend_type = 'client backend'",
                        &[&db, &role],
                    )
                    .await
                    .expect("sample")
                    .get(0);
                most.fetch_max(n, Ordering::Relaxed);
                samples += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            samples
        })
    };
    let out = Command::new("pgbench")
        .args(["-n", "-c", &clients.to_string(), "-j", "2", "-T", "8"])
        .arg(&url)
        .output()
        .await
        .expect("pgbench");
    stop.cancel();
    let samples = sampler.await.expect("sampler");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert_eq!(failed_transactions(&text), Some(0), "{text}");
    let most = most.load(Ordering::Relaxed);
    assert!(samples > 50, "sampled {samples} times");
    assert!(most <= cap, "the upstream saw {most} backends of the tenant's role (cap {cap}): {text}");
    // More than one instance's share was in use at once: the cap was shared, not split idle.
    let one = shares.iter().max().copied().unwrap_or(0) as i64;
    assert!(most > one, "only {most} backends at most: {text}");
}
