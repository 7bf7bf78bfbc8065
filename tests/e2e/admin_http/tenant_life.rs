//! Tenants through their whole life over HTTP: created, suspended, archived, restored, moved
//! and deleted, checked through the proxy and on the upstream; operations outlive their client.

use std::time::Duration;

use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::*;
use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_tenant_through_its_whole_life() {
    let api = Api::start(&[("V001__products.sql", PRODUCTS)]).await;
    let (t, t2, db) = (unique("admlife"), unique("admlife"), unique("admlifedb"));
    let create = |id: &str| json!({ "id": id, "isolation": "schema", "database": db });

    // Create: 201, Location, active, and a client connects through the proxy at once and
    // sees the migration's table in the tenant's schema.
    let r = api.call("POST", "/tenants", Some(create(&t))).await;
    let info = r.ok(201);
    assert_eq!(r.header("location"), Some(format!("/tenants/{t}").as_str()));
    assert_eq!(
        (&info["id"], &info["status"], &info["isolation"], &info["schema"], &info["database"]),
        (&json!(t), &json!("active"), &json!("schema"), &json!(t), &json!(db))
    );
    // No size of its own: shown with the default it gets (`[pool] size`), not null.
    let default_size = api.setup.cfg.pool.size as i64;
    assert_eq!(
        (&info["pool_size"], &info["pool_size_source"]),
        (&json!(default_size), &json!("default")),
        "{info}"
    );
    // The catalog row's version is `row_version`; `version` stays, deprecated, the same.
    assert_eq!(info["row_version"], info["version"], "{info}");
    let c = api.h.client(&t).await;
    let row = c
        .query_one("SELECT current_schema()::text, (SELECT count(*) FROM products)", &[])
        .await
        .expect("products through the proxy");
    assert_eq!((row.get::<_, String>(0), row.get::<_, i64>(1)), (t.clone(), 0));
    drop(c);
    assert!(schema_exists(&db, &t).await);
    api.call("POST", "/tenants", Some(create(&t))).await.problem(409, "conflict");
    api.call("POST", "/tenants", Some(create(&t2))).await.ok(201);
    // Only database tenants move.
    let p = api
        .call("POST", &format!("/tenants/{t}/move"), Some(json!({ "to": "local" })))
        .await
        .problem(400, "invalid-request");
    assert!(p["detail"].as_str().is_some_and(|d| d.contains("schema isolation")), "{p}");

    // Read.
    let list = api.call("GET", "/tenants", None).await.ok(200);
    let ids: Vec<&str> = list.as_array().expect("array").iter().filter_map(|t| t["id"].as_str()).collect();
    assert_eq!(ids, [t.as_str(), t2.as_str()]);
    assert_eq!(api.call("GET", &format!("/tenants/{t}"), None).await.ok(200), info);

    // PATCH: the new limit applies through the proxy.
    let patched =
        api.call("PATCH", &format!("/tenants/{t}"), Some(json!({ "max_clients": 1, "pool_size": 3 }))).await;
    let patched = patched.ok(200);
    assert_eq!(
        (&patched["max_clients"], &patched["pool_size"], &patched["pool_size_source"]),
        (&json!(1), &json!(3), &json!("tenant"))
    );
    assert!(patched["row_version"].as_i64() > info["row_version"].as_i64(), "{patched}");
    assert_eq!(patched["row_version"], patched["version"], "{patched}");
    assert_eq!(api.call("GET", &format!("/tenants/{t}"), None).await.ok(200), patched);
    assert!(
        eventually(Duration::from_secs(5), || async {
            // The first may still find an earlier session in the one seat: then try again.
            let first = connect_within(&api.h.conninfo(&t)).await;
            let Ok((_first, conn)) = first else { return false };
            tokio::spawn(conn);
            refusal(&api.h, &t).await.as_deref() == Some("53300")
        })
        .await,
        "max_clients = 1 did not apply"
    );
    api.call("PATCH", &format!("/tenants/{t}"), Some(json!({ "max_clients": 0 })))
        .await
        .problem(400, "invalid-request");
    api.call("PATCH", &format!("/tenants/{t}"), Some(json!({ "max_clients": 10 }))).await.ok(200);

    // Suspend: new clients get 57P03; resume lets them back.
    let s = api.call("POST", &format!("/tenants/{t}/suspend"), None).await.ok(200);
    assert_eq!(s["status"], "suspended");
    assert!(
        eventually(Duration::from_secs(5), || async {
            refusal(&api.h, &t).await.as_deref() == Some("57P03")
        })
        .await,
        "suspended tenant still connects"
    );
    let r = api.call("POST", &format!("/tenants/{t}/resume"), None).await.ok(200);
    assert_eq!(r["status"], "active");
    assert!(eventually(Duration::from_secs(5), || async { refusal(&api.h, &t).await.is_none() }).await);
    api.call("POST", &format!("/tenants/{t}/restore"), None).await.problem(409, "conflict");

    // Health and migrations: a new file is picked up without a restart.
    let health = api.call("GET", &format!("/tenants/{t}/health"), None).await.ok(200);
    assert_eq!(
        (&health["reachable"], &health["version"], &health["latest"], &health["current"]),
        (&json!(true), &json!(1), &json!(1), &json!(true)),
        "{health}"
    );
    api.setup.migration("V002__sku.sql", "ALTER TABLE products ADD COLUMN sku text;");
    let health = api.call("GET", &format!("/tenants/{t}/health"), None).await.ok(200);
    assert_eq!((&health["latest"], &health["current"]), (&json!(2), &json!(false)), "{health}");
    let sku_columns = || async {
        let c = api.h.client(&t).await;
        c.query_one(
            "SELECT count(*) FROM information_schema.columns
              WHERE table_schema = current_schema() AND table_name = 'products' AND column_name = 'sku'",
            &[],
        )
        .await
        .expect("columns")
        .get::<_, i64>(0)
    };
    for dry in [
        api.call("POST", &format!("/tenants/{t}/migrate?dry_run=true"), None).await,
        api.call("POST", &format!("/tenants/{t}/migrate"), Some(json!({ "dry_run": true }))).await,
    ] {
        let line = dry.ok(200);
        assert_eq!(
            (&line["tenant"], &line["result"], &line["versions"]),
            (&json!(t), &json!("applied"), &json!([2]))
        );
    }
    assert_eq!(sku_columns().await, 0, "a dry run changed the schema");
    let line = api.call("POST", &format!("/tenants/{t}/migrate"), None).await.ok(200);
    assert_eq!(
        (&line["result"], &line["versions"], &line["version"]),
        (&json!("applied"), &json!([2]), &json!(2))
    );
    assert_eq!(sku_columns().await, 1);
    let line = api.call("POST", &format!("/tenants/{t}/migrate"), None).await.ok(200);
    assert_eq!((&line["result"], &line["version"]), (&json!("current"), &json!(2)));
    let health = api.call("GET", &format!("/tenants/{t}/health"), None).await.ok(200);
    assert_eq!((&health["version"], &health["current"]), (&json!(2), &json!(true)), "{health}");

    // Across tenants: one fails, the answer is still 200 with the count.
    api.setup.migration(
        "V003__v3.sql",
        &format!(
            "DO $$ BEGIN IF current_schema() = '{t2}' THEN RAISE EXCEPTION 'no V003 for {t2}'; END IF; END $$;
             CREATE TABLE v3 (x int);"
        ),
    );
    let p = api.call("POST", &format!("/tenants/{t2}/migrate"), None).await.problem(422, "operation-failed");
    assert_eq!((&p["migration"]["tenant"], &p["migration"]["result"]), (&json!(t2), &json!("failed")), "{p}");
    assert!(p["detail"].as_str().is_some_and(|d| d.contains("no V003")), "{p}");
    let dry =
        api.call("POST", "/migrate", Some(json!({ "tenants": [t, t2], "dry_run": true }))).await.ok(200);
    assert_eq!((&dry["dry_run"], &dry["failed"]), (&json!(true), &json!(0)), "{dry}");
    let run = api
        .call(
            "POST",
            "/migrate",
            Some(json!({ "tenants": [t2, t], "parallel": 2, "on_failure": "continue" })),
        )
        .await
        .ok(200);
    assert_eq!(run["failed"], 1, "{run}");
    let results = run["results"].as_array().expect("results");
    assert_eq!((&results[0]["tenant"], &results[0]["result"]), (&json!(t), &json!("applied")), "{run}");
    assert_eq!(results[0]["versions"], json!([3]));
    assert_eq!((&results[1]["tenant"], &results[1]["result"]), (&json!(t2), &json!("failed")), "{run}");
    assert!(results[1]["error"].as_str().is_some_and(|e| e.contains("no V003")), "{run}");
    // on_failure stop, one at a time: t2 fails first, so t is not attempted.
    let stopped = api
        .call("POST", "/migrate", Some(json!({ "tenants": [t2, t], "parallel": 1, "on_failure": "stop" })))
        .await
        .ok(200);
    let results = stopped["results"].as_array().expect("results");
    assert_eq!(
        (&results[0]["result"], &results[1]["result"]),
        (&json!("skipped"), &json!("failed")),
        "{stopped}"
    );
    api.setup.remove_migration("V003__v3.sql");

    // Archive: refused while a client is connected, forced otherwise; then 3D000.
    let held = api.h.client(&t).await;
    held.batch_execute("SELECT 1").await.expect("query");
    let p = api.call("POST", &format!("/tenants/{t}/archive"), None).await.problem(409, "conflict");
    assert!(p["detail"].as_str().is_some_and(|d| d.contains("connected client")), "{p}");
    let a = api.call("POST", &format!("/tenants/{t}/archive?force=true"), None).await.ok(200);
    assert_eq!(a["status"], "archived");
    assert!(schema_exists(&db, &format!("archived_{t}")).await && !schema_exists(&db, &t).await);
    assert!(
        eventually(Duration::from_secs(5), || async {
            refusal(&api.h, &t).await.as_deref() == Some("3D000")
        })
        .await,
        "archived tenant still connects"
    );
    drop(held);
    api.call("POST", &format!("/tenants/{t}/suspend"), None).await.problem(409, "conflict");
    let r = api.call("POST", &format!("/tenants/{t}/restore"), None).await.ok(200);
    assert_eq!(r["status"], "active");
    assert!(eventually(Duration::from_secs(5), || async { refusal(&api.h, &t).await.is_none() }).await);
    assert_eq!(sku_columns().await, 1, "data came back with the restore");

    // Soft delete keeps the data under another name; restore brings it back.
    let r = api.call("DELETE", &format!("/tenants/{t2}"), None).await;
    assert_eq!(r.status, 204, "{}", r.text());
    assert!(r.body.is_empty());
    assert_eq!(api.call("GET", &format!("/tenants/{t2}"), None).await.ok(200)["status"], "deleted");
    assert!(schema_exists(&db, &format!("deleted_{t2}")).await);
    assert!(eventually(Duration::from_secs(5), || async { refusal(&api.h, &t2).await.is_some() }).await);
    api.call("POST", &format!("/tenants/{t2}/restore"), None).await.ok(200);

    // Hard delete: the schema, the role and the row are gone.
    for id in [&t, &t2] {
        let r = api.call("DELETE", &format!("/tenants/{id}?hard=true&force=true"), None).await;
        assert_eq!(r.status, 204, "{}", r.text());
        api.call("GET", &format!("/tenants/{id}"), None).await.problem(404, "not-found");
        assert!(!schema_exists(&db, id).await, "schema {id} left behind");
        assert!(!role_exists(id).await, "role {id} left behind");
    }
    assert_eq!(api.call("GET", "/tenants", None).await.ok(200), json!([]));
    let events: i64 = api
        .setup
        .control
        .query_one("SELECT count(*) FROM pgtenant.events WHERE tenant_id = $1 AND kind = 'deleted'", &[&t])
        .await
        .expect("events")
        .get(0);
    assert_eq!(events, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operation_completes_when_the_client_goes_away() {
    let api = Api::start(&[("V001__products.sql", PRODUCTS)]).await;
    let (t, db) = (unique("admgone"), unique("admgonedb"));
    let body = json!({ "id": t, "isolation": "schema", "database": db }).to_string();
    let auth = format!("Bearer {}", api.token);
    let headers = [("Authorization", auth.as_str()), ("Content-Type", "application/json")];
    {
        let mut s = TcpStream::connect(api.addr).await.expect("connect");
        s.write_all(&request_bytes("POST", "/tenants", &headers, body.as_bytes())).await.expect("send");
        // Long enough for the request to be read, far shorter than creating a tenant takes.
        tokio::time::sleep(Duration::from_millis(20)).await;
        // Dropped here: the client hangs up without reading the answer.
    }
    assert!(
        eventually(Duration::from_secs(30), || async {
            let r = api.call("GET", &format!("/tenants/{t}"), None).await;
            r.status == 200 && r.json()["status"] == "active"
        })
        .await,
        "the create was abandoned with its client"
    );
    let c = api.h.client(&t).await;
    let n: i64 = c.query_one("SELECT count(*) FROM products", &[]).await.expect("products").get(0);
    assert_eq!(n, 0);
    let events: Vec<String> = api
        .setup
        .control
        .query("SELECT kind FROM pgtenant.events WHERE tenant_id = $1 ORDER BY id", &[&t])
        .await
        .expect("events")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(events, ["created"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_tenant_moves_over_http() {
    let api = Api::start(&[("V001__products.sql", PRODUCTS)]).await;
    let other = second_upstream(&api.setup.control, "other").await;
    let t = unique("admmove");
    let info = api.call("POST", "/tenants", Some(json!({ "id": t, "upstream": "local" }))).await.ok(201);
    let c = api.h.client(&t).await;
    c.batch_execute("INSERT INTO products (name) SELECT 'p' || g FROM generate_series(1, 100) g")
        .await
        .expect("rows");
    drop(c);

    // An unknown upstream is refused and changes nothing; the one it is on already is a no-op.
    let p = api
        .call("POST", &format!("/tenants/{t}/move"), Some(json!({ "to": "nowhere" })))
        .await
        .problem(400, "invalid-request");
    assert!(p["detail"].as_str().is_some_and(|d| d.contains("nowhere")), "{p}");
    assert_eq!(api.call("GET", &format!("/tenants/{t}"), None).await.ok(200), info);
    let same = api.call("POST", &format!("/tenants/{t}/move"), Some(json!({ "to": "local" }))).await.ok(200);
    assert_eq!(same, info);

    let moved = api.call("POST", &format!("/tenants/{t}/move"), Some(json!({ "to": "other" }))).await.ok(200);
    assert_eq!((&moved["upstream"], &moved["status"]), (&json!("other"), &json!("active")), "{moved}");
    assert_eq!(api.call("GET", &format!("/tenants/{t}"), None).await.ok(200), moved);
    // Through the proxy: the same rows, now served from the other server.
    assert!(
        eventually(Duration::from_secs(5), || async {
            match connect_within(&api.h.conninfo(&t)).await {
                Ok((c, conn)) => {
                    tokio::spawn(conn);
                    c.query_one("SELECT current_setting('port'), (SELECT count(*) FROM products)", &[])
                        .await
                        .is_ok_and(|r| {
                            (r.get::<_, String>(0), r.get::<_, i64>(1)) == (other.port.to_string(), 100)
                        })
                }
                Err(_) => false,
            }
        })
        .await,
        "the moved tenant is not served from the other upstream"
    );
    assert!(!role_exists(&t).await, "the source role is dropped");

    let r = api.call("DELETE", &format!("/tenants/{t}?hard=true&force=true"), None).await;
    assert_eq!(r.status, 204, "{}", r.text());
    tokio::task::spawn_blocking(move || drop(other)).await.expect("stop the second cluster");
}
