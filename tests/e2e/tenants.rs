//! Tenant routing: the resolver chain end to end, the three isolation modes under a shared
//! login role, the control database (NOTIFY, outages, lookup storms), statuses, and many
//! tenants over a global cap.

use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgtenant::config::{Config, ResolverKind, TenantConfig};
use pgtenant::model::{Isolation, PoolMode, TenantStatus};
use tokio::process::Command;
use tokio_postgres::Client;

use crate::support::*;

fn rows_owner(rows: &[tokio_postgres::Row]) -> Vec<String> {
    rows.iter().map(|r| r.get::<_, String>(0)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_resolver_and_conflict_end_to_end() {
    let t = tenant_db("res").await;
    let other = tenant_db("resother").await;
    let mut cfg = config(vec![t.clone(), other.clone()]);
    cfg.resolver.order.push(ResolverKind::Database);
    let h = start(cfg).await;
    let port = h.addr.port();
    let id = &t.id;
    let db_of = |c: &str| {
        let c = c.to_owned();
        async move {
            let client = connect_str(&c).await;
            let row = client
                .query_typed("SELECT current_database(), current_setting('application_name')", &[])
                .await
                .expect("query")
                .remove(0);
            (row.get::<_, String>(0), row.get::<_, String>(1))
        }
    };
    // user role.tenant (the database name also names the tenant: they agree).
    assert_eq!(db_of(&format!("host=127.0.0.1 port={port} user=app.{id} dbname={id}")).await.0, t.database);
    // options tenant=…, the token removed before forwarding (the -c setting still applies).
    let c = connect_str(&format!(
        "host=127.0.0.1 port={port} user=app dbname={id} options='tenant={id} -c statement_timeout=777'"
    ))
    .await;
    let st: String = c.query_typed("SHOW statement_timeout", &[]).await.expect("show")[0].get(0);
    assert_eq!(st, "777ms");
    // application_name tenant:…/worker forwards "worker".
    let (db, app) = db_of(&format!(
        "host=127.0.0.1 port={port} user=app dbname={id} application_name=tenant:{id}/worker"
    ))
    .await;
    assert_eq!((db, app.as_str()), (t.database.clone(), "worker"));
    // database (enabled in this config).
    assert_eq!(db_of(&format!("host=127.0.0.1 port={port} user=app dbname={id}")).await.0, t.database);

    // Conflicts: 28000 naming both sources.
    let oid = &other.id;
    for (conninfo, a, b) in [
        (format!("user=app.{id} dbname={oid}"), "user name", "database name"),
        (format!("user=app.{id} dbname={id} options='tenant={oid}'"), "options", "user name"),
        (format!("user=app.{id} dbname={id} application_name=tenant:{oid}"), "user name", "application_name"),
    ] {
        let e =
            tokio_postgres::connect(&format!("host=127.0.0.1 port={port} {conninfo}"), tokio_postgres::NoTls)
                .await
                .err()
                .expect("conflict refused");
        assert_eq!(code(&e), "28000", "{conninfo}");
        let msg = e.as_db_error().map(|d| d.message().to_owned()).unwrap_or_default();
        assert!(msg.contains(a) && msg.contains(b) && msg.contains("conflicts"), "{msg}");
    }
    // No tenant at all (default resolvers: no database resolver): 28000 with the accepted
    // forms in the hint (psql shows it).
    let plain = start(config(vec![t.clone()])).await;
    let out = Command::new("psql")
        .arg(format!("host=127.0.0.1 port={} user=nobody dbname=x", plain.addr.port()))
        .args(["-X", "-c", "SELECT 1"])
        .output()
        .await
        .expect("psql");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("no tenant") && err.contains("tenant:<tenant>"), "{err}");
    // psql with each resolver.
    for conninfo in [
        format!("host=127.0.0.1 port={port} user=app.{id} dbname={id}"),
        format!("host=127.0.0.1 port={port} user=app dbname={id} options=tenant={id}"),
        format!("host=127.0.0.1 port={port} user=app dbname={id} application_name=tenant:{id}/psql-job"),
    ] {
        let out = Command::new("psql")
            .arg(&conninfo)
            .args([
                "-X",
                "-At",
                "-c",
                "SELECT current_database() || ' ' || current_setting('application_name')",
            ])
            .output()
            .await
            .expect("psql");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.starts_with(&t.database),
            "{conninfo}: {stdout} {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // psql with a conflict.
    let out = Command::new("psql")
        .arg(format!("host=127.0.0.1 port={port} user=app.{id} dbname={oid}"))
        .args(["-X", "-c", "SELECT 1"])
        .output()
        .await
        .expect("psql");
    assert!(String::from_utf8_lossy(&out.stderr).contains("conflicts"));
}

#[tokio::test]
async fn user_format_tenant_takes_the_whole_user_name() {
    let t = tenant_db("wholeuser").await;
    let mut cfg = config(vec![t.clone()]);
    cfg.resolver.user_format = pgtenant::config::UserFormat::Tenant;
    let h = start(cfg).await;
    let c = connect_str(&format!("host=127.0.0.1 port={} user={} dbname=x", h.addr.port(), t.id)).await;
    let db: String = c.query_typed("SELECT current_database()", &[]).await.expect("q")[0].get(0);
    assert_eq!(db, t.database);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolation_modes_never_cross_under_concurrency() {
    for mode in [Isolation::Schema, Isolation::Shared, Isolation::Database] {
        let (a, b) = tenant_pair(mode, Access::Read, 4).await;
        let h = start(config(vec![a.clone(), b.clone()])).await;
        let queries = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicI64::new(0));
        let watcher = {
            let (db, role, peak) = (a.database.clone(), a.role.clone(), peak.clone());
            tokio::spawn(async move {
                loop {
                    peak.fetch_max(backends_as(&db, &role).await, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
            })
        };
        let mut tasks = Vec::new();
        for i in 0..32 {
            let t = if i % 2 == 0 { a.clone() } else { b.clone() };
            let conninfo = h.conninfo(&t.id);
            let queries = queries.clone();
            tasks.push(tokio::spawn(async move {
                let c = connect_str(&conninfo).await;
                for n in 0..100 {
                    let owners = if n % 10 == 0 {
                        // A transaction block: setup must hold across it too.
                        let msgs =
                            c.simple_query("BEGIN; SELECT owner FROM items; COMMIT").await.expect("tx");
                        msgs.iter()
                            .filter_map(|m| match m {
                                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                                _ => None,
                            })
                            .collect()
                    } else {
                        rows_owner(&c.query_typed("SELECT owner FROM items", &[]).await.expect("select"))
                    };
                    assert_eq!(owners.len(), 3, "{mode:?}: tenant {} saw {owners:?}", t.id);
                    assert!(owners.iter().all(|o| *o == t.id), "{mode:?}: tenant {} saw {owners:?}", t.id);
                    queries.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        for t in tasks {
            t.await.expect("no cross-tenant rows");
        }
        watcher.abort();
        assert_eq!(queries.load(Ordering::Relaxed), 3200);
        let peak = peak.load(Ordering::Relaxed);
        assert!(peak <= 4, "{mode:?}: {peak} server connections for a pool of 4");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_state_changed_by_a_client_is_reset_before_another_tenant_uses_the_connection() {
    for mode in [Isolation::Schema, Isolation::Shared] {
        let (a, b) = tenant_pair(mode, Access::Read, 1).await;
        let h = start(config(vec![a.clone(), b.clone()])).await;
        let ca = h.client(&a.id).await;
        let cb = h.client(&b.id).await;
        // Tenant a's client points its session at b's data (the shared role can: isolation
        // then relies on the application, as documented) …
        let hijack = match mode {
            Isolation::Schema => format!("SET search_path TO \"{}\"", b.id),
            _ => format!("SET pgtenant.tenant_id TO '{}'", b.id),
        };
        ca.batch_execute(&hijack).await.expect("set");
        // … but the next user of that one server connection, of either tenant, gets its own.
        for _ in 0..3 {
            let owners = rows_owner(&cb.query_typed("SELECT owner FROM items", &[]).await.expect("b"));
            assert!(owners.iter().all(|o| *o == b.id) && !owners.is_empty(), "{mode:?}: {owners:?}");
            let owners = rows_owner(&ca.query_typed("SELECT owner FROM items", &[]).await.expect("a"));
            assert!(owners.iter().all(|o| *o == a.id) && !owners.is_empty(), "{mode:?}: {owners:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_changes_and_new_tenants_apply_within_a_second() {
    let t = tenant_db("status").await;
    let mut cfg = config(vec![]);
    let control = control_db(&mut cfg).await;
    insert_tenant(&control, &t).await;
    let (h, _catalog) = start_control(cfg).await;
    let idle = h.watched_client(&t.id).await;
    idle.batch_execute("CREATE TABLE log (x int)").await.expect("create");
    let busy = h.watched_client(&t.id).await;
    busy.batch_execute("BEGIN; INSERT INTO log VALUES (1)").await.expect("busy tx");

    // Suspend: new logins get 57P03 within a second, the idle session is closed at once, the
    // busy one after its transaction.
    let started = Instant::now();
    control
        .execute("UPDATE pgtenant.tenants SET status = 'suspended' WHERE id = $1", &[&t.id])
        .await
        .expect("suspend");
    let refused = eventually(Duration::from_secs(1), || async {
        matches!(tokio_postgres::connect(&h.conninfo(&t.id), tokio_postgres::NoTls).await, Err(e) if code(&e) == "57P03")
    })
    .await;
    assert!(refused, "suspension not applied within 1 s");
    // The kick reaches the session either between these probes (then it ends the connection
    // task) or as the reply to one; either way it must be a 57P01.
    let refused_probe = std::sync::Mutex::new(None);
    let closed = eventually(Duration::from_secs(1), || async {
        if idle.is_closed() {
            return true;
        }
        let probe = idle.batch_execute("SELECT 1").await;
        probe.map_err(|e| *refused_probe.lock().expect("lock") = Some(e)).is_err()
    })
    .await;
    assert!(closed, "idle session of a suspended tenant not closed");
    let why = match refused_probe.into_inner().expect("lock") {
        Some(e) => idle.closing_code(&e).await,
        None => idle.ended_with().await,
    };
    assert_eq!(why, "57P01", "the idle session is told why");
    busy.batch_execute("INSERT INTO log VALUES (2); COMMIT").await.expect("the open transaction may finish");
    let e = busy.batch_execute("SELECT 1").await.expect_err("closed after its transaction");
    assert_eq!(busy.closing_code(&e).await, "57P01", "{e}");
    assert!(started.elapsed() < Duration::from_secs(3));
    let n: i64 = admin(&t.database).await.query_one("SELECT count(*) FROM log", &[]).await.expect("n").get(0);
    assert_eq!(n, 2, "the busy transaction committed");

    // Archived: 3D000. Active again: connects.
    control
        .execute("UPDATE pgtenant.tenants SET status = 'archived' WHERE id = $1", &[&t.id])
        .await
        .expect("archive");
    assert!(
        eventually(Duration::from_secs(1), || async {
            matches!(tokio_postgres::connect(&h.conninfo(&t.id), tokio_postgres::NoTls).await, Err(e) if code(&e) == "3D000")
        })
        .await
    );
    control
        .execute("UPDATE pgtenant.tenants SET status = 'active' WHERE id = $1", &[&t.id])
        .await
        .expect("resume");
    assert!(
        eventually(Duration::from_secs(1), || async {
            tokio_postgres::connect(&h.conninfo(&t.id), tokio_postgres::NoTls).await.is_ok()
        })
        .await
    );

    // A new tenant row: unknown (and negatively cached) first, reachable within a second after
    // the INSERT.
    let fresh = tenant_db("newrow").await;
    let e =
        tokio_postgres::connect(&h.conninfo(&fresh.id), tokio_postgres::NoTls).await.err().expect("unknown");
    assert_eq!(code(&e), "3D000");
    insert_tenant(&control, &fresh).await;
    let started = Instant::now();
    assert!(
        eventually(Duration::from_secs(1), || async {
            tokio_postgres::connect(&h.conninfo(&fresh.id), tokio_postgres::NoTls).await.is_ok()
        })
        .await,
        "new tenant not reachable within 1 s"
    );
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_database_outage_serves_cached_tenants_and_recovers() {
    let cached = tenant_db("outcached").await;
    let uncached = tenant_db("outuncached").await;
    let forwarder = Forwarder::start(cluster().port).await;
    let mut cfg = config(vec![]);
    let control = control_db(&mut cfg).await;
    insert_tenant(&control, &cached).await;
    insert_tenant(&control, &uncached).await;
    // The proxy reaches the control database through the forwarder, over TCP.
    let db = catalog_dbname(&cfg);
    cfg.catalog.url = format!(
        "host=127.0.0.1 port={} user=postgres password={} dbname={db} connect_timeout=1",
        forwarder.port,
        pgtenant::embedded::SUPERUSER_PASSWORD
    );
    cfg.catalog.cache_ttl = 0.2;
    cfg.catalog.lookup_timeout = 0.5;
    let (h, catalog) = start_control(cfg).await;
    assert!(catalog.listening());
    h.client(&cached.id).await.batch_execute("SELECT 1").await.expect("cached once");

    forwarder.stop();
    tokio::time::sleep(Duration::from_millis(300)).await; // past the cache TTL
                                                          // Cached: still served (stale). Uncached: 08001.
    let c = h.client(&cached.id).await;
    c.batch_execute("SELECT 1").await.expect("cached tenant works while the control database is down");
    let e = tokio_postgres::connect(&h.conninfo(&uncached.id), tokio_postgres::NoTls)
        .await
        .err()
        .expect("uncached");
    assert_eq!(code(&e), "08001");
    assert!(
        !catalog.listening() || eventually(Duration::from_secs(2), || async { !catalog.listening() }).await
    );

    // Back: LISTEN resumes, invalidation works again.
    forwarder.resume().await;
    assert!(
        eventually(Duration::from_secs(10), || async { catalog.listening() }).await,
        "LISTEN did not resume"
    );
    h.client(&uncached.id).await.batch_execute("SELECT 1").await.expect("uncached tenant after recovery");
    control
        .execute("UPDATE pgtenant.tenants SET status = 'suspended' WHERE id = $1", &[&cached.id])
        .await
        .expect("suspend");
    assert!(
        eventually(Duration::from_secs(1), || async {
            matches!(tokio_postgres::connect(&h.conninfo(&cached.id), tokio_postgres::NoTls).await, Err(e) if code(&e) == "57P03")
        })
        .await,
        "invalidation after recovery"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_storm_for_an_uncached_tenant_makes_one_catalog_query() {
    let t = tenant_db("storm").await;
    let mut cfg = config(vec![]);
    let control = control_db(&mut cfg).await;
    insert_tenant(&control, &with_mode(t.clone(), PoolMode::Transaction, 10)).await;
    cfg.proxy.startup_timeout = 30.0;
    cfg.pool.checkout_timeout = 30.0;
    let (h, catalog) = start_control(cfg).await;
    let before = catalog.fetches();
    let mut tasks = Vec::new();
    let gate = Arc::new(tokio::sync::Barrier::new(500));
    for _ in 0..500 {
        let (conninfo, gate) = (h.conninfo(&t.id), gate.clone());
        tasks.push(tokio::spawn(async move {
            gate.wait().await;
            let (client, conn) =
                tokio_postgres::connect(&conninfo, tokio_postgres::NoTls).await.expect("login");
            tokio::spawn(conn);
            client
        }));
    }
    let mut clients: Vec<Client> = Vec::new();
    for t in tasks {
        clients.push(t.await.expect("task"));
    }
    assert_eq!(clients.len(), 500);
    assert_eq!(catalog.fetches() - before, 1, "500 logins, one catalog query");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_schema_tenants_share_a_global_cap_of_twenty() {
    let role = unique("manyrole");
    let dbname = unique("manydb");
    let admin = admin("postgres").await;
    admin.batch_execute(&format!("CREATE ROLE {role} LOGIN PASSWORD 'pw'")).await.expect("role");
    admin.batch_execute(&format!("CREATE DATABASE {dbname}")).await.expect("db");
    let db = connect_str(&cluster().superuser_conninfo(&dbname)).await;
    let mut sql = String::new();
    let ids: Vec<String> = (0..1000).map(|i| format!("m{i}")).collect();
    for (i, id) in ids.iter().enumerate() {
        sql.push_str(&format!(
            "CREATE SCHEMA {id}; CREATE TABLE {id}.t (v int); INSERT INTO {id}.t VALUES ({i});
             GRANT USAGE ON SCHEMA {id} TO {role}; GRANT SELECT, UPDATE ON {id}.t TO {role};"
        ));
    }
    db.batch_execute(&sql).await.expect("1000 schemas");
    let tenants: Vec<TenantConfig> = ids
        .iter()
        .map(|id| {
            let mut t = TenantConfig::new(id, "local", &dbname, &role, Some("pw"));
            t.isolation = Isolation::Schema;
            t.pool_size = Some(20);
            t
        })
        .collect();
    let mut cfg: Config = config(tenants);
    cfg.pool.max_server_connections = 20;
    cfg.pool.checkout_timeout = 30.0;
    let h = start(cfg).await;
    let peak = Arc::new(AtomicI64::new(0));
    let watcher = {
        let (db, role, peak) = (dbname.clone(), role.clone(), peak.clone());
        tokio::spawn(async move {
            loop {
                peak.fetch_max(backends_as(&db, &role).await, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        })
    };
    // 2,000 clients (two per tenant), at most 250 connected at once.
    let slots = Arc::new(tokio::sync::Semaphore::new(250));
    let ok = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        for _ in 0..2 {
            let (conninfo, slots, ok) = (h.conninfo(id), slots.clone(), ok.clone());
            tasks.push(tokio::spawn(async move {
                let _slot = slots.acquire_owned().await.expect("slot");
                let c = connect_str(&conninfo).await;
                for _ in 0..5 {
                    let msgs = c
                        .simple_query("BEGIN; UPDATE t SET v = v; SELECT v FROM t; COMMIT")
                        .await
                        .expect("tx");
                    let v = msgs.iter().find_map(|m| match m {
                        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                        _ => None,
                    });
                    assert_eq!(v, Some(i.to_string()), "tenant m{i} read another tenant's row");
                }
                ok.fetch_add(1, Ordering::Relaxed);
            }));
        }
    }
    for t in tasks {
        t.await.expect("client");
    }
    watcher.abort();
    assert_eq!(ok.load(Ordering::Relaxed), 2000);
    let peak = peak.load(Ordering::Relaxed);
    assert!(peak <= 20, "{peak} upstream connections over a global cap of 20");
    assert_eq!(TenantStatus::Active.as_str(), "active");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkout_prefers_a_connection_already_set_up_for_the_tenant() {
    let (a, b) = tenant_pair(Isolation::Schema, Access::Read, 2).await;
    let h = start(config(vec![a.clone(), b.clone()])).await;
    let (ca, cb) = (h.client(&a.id).await, h.client(&b.id).await);
    // Open both connections at once (each tenant sets one up) …
    let pid = "SELECT pg_backend_pid() FROM pg_sleep(0.2)";
    let (ra, rb) = tokio::join!(ca.query_typed(pid, &[]), cb.query_typed(pid, &[]));
    let (pa, pb): (i32, i32) = (ra.expect("a")[0].get(0), rb.expect("b")[0].get(0));
    assert_ne!(pa, pb);
    // … then alternate: each tenant keeps getting the connection set up for it, even though
    // the other one was used more recently.
    for _ in 0..5 {
        let p: i32 = ca.query_typed("SELECT pg_backend_pid()", &[]).await.expect("a")[0].get(0);
        assert_eq!(p, pa);
        let p: i32 = cb.query_typed("SELECT pg_backend_pid()", &[]).await.expect("b")[0].get(0);
        assert_eq!(p, pb);
    }
}
