//! The admin API's surface: who may call it (tokens from the config, the catalog and the
//! CLI), every documented route and the probes, and bad input answered with a problem.

use pgtenant::admin::http::{AdminState, OPENAPI};
use pgtenant::admin::token_sha256;
use pgtenant::proxy::Proxy;
use serde_json::{json, Value};

use super::*;
use crate::support::*;

/// (method, path template, public) of every operation in the OpenAPI document.
fn documented_routes() -> Vec<(String, String, bool)> {
    let doc: Value = serde_json::from_str(OPENAPI).expect("openapi.json");
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in ["get", "post", "put", "patch", "delete"] {
            if let Some(op) = item.get(method) {
                let public = op.get("security").is_some_and(|s| s.as_array().is_some_and(Vec::is_empty));
                out.push((method.to_uppercase(), path.clone(), public));
            }
        }
    }
    assert!(out.len() >= 15, "{out:?}");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_is_required_from_the_config_or_the_catalog() {
    let api = Api::start(&[]).await;

    let none = http(api.addr, "GET", "/tenants", &[], b"").await;
    none.problem(401, "unauthorized");
    assert_eq!(none.header("www-authenticate"), Some("Bearer realm=\"pgtenant\""));
    for auth in ["Bearer wrong-token", "Basic dXNlcjpwYXNz", "Bearer", &format!("Bearer {}x", api.token)] {
        let r = http(api.addr, "GET", "/tenants", &[("Authorization", auth)], b"").await;
        r.problem(401, "unauthorized");
        assert!(r.header("www-authenticate").is_some_and(|v| v.starts_with("Bearer")), "{auth}");
    }
    // The configured token, with the scheme in any case.
    let listed =
        http(api.addr, "GET", "/tenants", &[("Authorization", &format!("bearer {}", api.token))], b"")
            .await
            .ok(200);
    assert_eq!(listed, json!([]));

    // Every authenticated route refuses a request without a token before looking at it; the
    // public ones answer.
    for (method, path, public) in documented_routes() {
        let path = path.replace("{id}", "nosuch");
        let r = http(api.addr, &method, &path, &[], b"").await;
        if public {
            assert_eq!(r.status, 200, "{method} {path}: {}", r.text());
        } else {
            r.problem(401, "unauthorized");
        }
    }

    // A token made by `pgtenant admin token create` works at once; `revoke` takes effect at
    // once too.
    let config_file = api.setup.dir.path().join("pgtenant.toml");
    std::fs::write(&config_file, format!("[catalog]\nurl = {:?}\n", api.setup.cfg.catalog.url))
        .expect("config");
    let config_arg = config_file.display().to_string();
    let (status, stdout, stderr) =
        pgtenant(&["admin", "token", "create", "ops", "--config", &config_arg], "").await;
    assert_eq!(status, 0, "{stderr}");
    let made = stdout.trim().to_owned();
    assert_eq!(made.len(), 43, "{stdout:?}");
    assert!(stderr.contains("not shown again"), "{stderr}");
    let stored: String = api
        .setup
        .control
        .query_one("SELECT token_sha256 FROM pgtenant.admin_tokens WHERE name = 'ops'", &[])
        .await
        .expect("token row")
        .get(0);
    assert_eq!(stored, token_sha256(&made));
    let auth = format!("Bearer {made}");
    http(api.addr, "GET", "/tenants", &[("Authorization", &auth)], b"").await.ok(200);
    let (status, _, stderr) =
        pgtenant(&["admin", "token", "create", "ops", "--config", &config_arg], "").await;
    assert_ne!(status, 0);
    assert!(stderr.contains("exists already"), "{stderr}");
    // `token-hash` prints what `[admin] token_sha256` wants.
    let (status, stdout, stderr) = pgtenant(&["admin", "token-hash"], &format!("{made}\n")).await;
    assert_eq!((status, stdout.trim()), (0, stored.as_str()), "{stderr}");

    let (status, stdout, _) = pgtenant(&["admin", "token", "list", "--config", &config_arg], "").await;
    assert!(status == 0 && stdout.starts_with("ops\t"), "{stdout}");
    let (status, _, stderr) =
        pgtenant(&["admin", "token", "revoke", "ops", "--config", &config_arg], "").await;
    assert_eq!(status, 0, "{stderr}");
    let (status, _, stderr) =
        pgtenant(&["admin", "token", "revoke", "ops", "--config", &config_arg], "").await;
    assert!(status != 0 && stderr.contains("no admin token named"), "{stderr}");
    http(api.addr, "GET", "/tenants", &[("Authorization", &auth)], b"").await.problem(401, "unauthorized");
    // The configured one is unaffected.
    api.call("GET", "/tenants", None).await.ok(200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_route_exists_and_the_probes_answer() {
    let api = Api::start(&[]).await;

    assert_eq!(http(api.addr, "GET", "/healthz", &[], b"").await.ok(200), json!({ "status": "ok" }));
    assert_eq!(http(api.addr, "GET", "/readyz", &[], b"").await.ok(200), json!({ "status": "ready" }));
    let doc = http(api.addr, "GET", "/openapi.json", &[], b"").await.ok(200);
    assert_eq!(doc, serde_json::from_str::<Value>(OPENAPI).expect("openapi"));

    // Each documented route is served: whatever it answers (a 404 for the unknown tenant, a
    // 415 for the missing body), it is never the router's own 404 or 405, nor a 5xx.
    for (method, path, _) in documented_routes() {
        let path = path.replace("{id}", "nosuch");
        let r = api.call(&method, &path, None).await;
        let slug = r.problem_slug();
        assert!(
            r.status < 500 && r.status != 405 && slug != "no-such-route" && slug != "method-not-allowed",
            "{method} {path}: {} {}",
            r.status,
            r.text()
        );
        if r.status >= 400 {
            assert!(!slug.is_empty(), "{method} {path}: not a problem: {}", r.text());
        }
    }

    // The router's own answers are problems too, with or without a token.
    for r in [http(api.addr, "GET", "/nope", &[], b"").await, api.call("GET", "/tenants/a/b/c", None).await] {
        r.problem(404, "no-such-route");
    }
    let r = api.call("PUT", "/tenants", None).await;
    r.problem(405, "method-not-allowed");
    let allow = r.header("allow").expect("Allow header").to_owned();
    assert!(allow.contains("GET") && allow.contains("POST"), "{allow}");
    http(api.addr, "DELETE", "/healthz", &[], b"").await.problem(405, "method-not-allowed");
    api.call("GET", "/migrate", None).await.problem(405, "method-not-allowed");

    // A control database that does not answer: not ready, tenant routes 503, and a token
    // that is not in the config cannot be checked (503, not a 401 that would be a lie).
    let closed_port = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        l.local_addr().expect("addr").port()
    };
    let mut down = api.setup.cfg.clone();
    down.catalog.url = format!("host=127.0.0.1 port={closed_port} user=postgres dbname=nowhere");
    let (down_addr, down_stop) = serve(Proxy::new(down.clone()), &down).await;
    http(down_addr, "GET", "/healthz", &[], b"").await.ok(200);
    let p = http(down_addr, "GET", "/readyz", &[], b"").await.problem(503, "not-ready");
    assert!(p["detail"].as_str().is_some_and(|d| d.contains("control database")), "{p}");
    let auth = format!("Bearer {}", api.token);
    http(down_addr, "GET", "/tenants", &[("Authorization", &auth)], b"")
        .await
        .problem(503, "catalog-unavailable");
    http(down_addr, "GET", "/tenants", &[("Authorization", "Bearer other")], b"")
        .await
        .problem(503, "catalog-unavailable");
    down_stop.cancel();

    // Without a control database: ready (the static catalog cannot be down), tenant routes
    // 503, tokens only from the config.
    let mut fixed = api.setup.cfg.clone();
    fixed.catalog.url = String::new();
    let (fixed_addr, fixed_stop) = serve(Proxy::new(fixed.clone()), &fixed).await;
    http(fixed_addr, "GET", "/readyz", &[], b"").await.ok(200);
    http(fixed_addr, "GET", "/tenants", &[("Authorization", &auth)], b"")
        .await
        .problem(503, "catalog-unavailable");
    http(fixed_addr, "GET", "/tenants", &[("Authorization", "Bearer other")], b"")
        .await
        .problem(401, "unauthorized");
    fixed_stop.cancel();

    // A digest that is not one is refused at start.
    let mut bad = api.setup.cfg.clone();
    bad.admin.token_sha256 = vec!["not-a-digest".into()];
    let err = AdminState::new(api.h.proxy.clone(), &bad).err().expect("bad digest refused");
    assert!(err.to_string().contains("not-a-digest"), "{err}");

    // Draining: no longer ready, still alive.
    api.h.proxy.shutdown.drain.cancel();
    http(api.addr, "GET", "/readyz", &[], b"").await.problem(503, "not-ready");
    http(api.addr, "GET", "/healthz", &[], b"").await.ok(200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_a_problem_never_a_500() {
    let api = Api::start(&[]).await;
    let auth = format!("Bearer {}", api.token);
    let raw = |method: &'static str, path: &'static str, content_type: &'static str, body: Vec<u8>| {
        let auth = auth.clone();
        let addr = api.addr;
        async move {
            http(addr, method, path, &[("Authorization", &auth), ("Content-Type", content_type)], &body).await
        }
    };

    // Bodies.
    raw("POST", "/tenants", "application/json", b"{\"id\": ".to_vec()).await.problem(400, "malformed-json");
    let p = api
        .call("POST", "/tenants", Some(json!({ "id": "x", "bogus": 1 })))
        .await
        .problem(400, "invalid-body");
    assert!(p["detail"].as_str().is_some_and(|d| d.contains("bogus")), "{p}");
    api.call("POST", "/tenants", Some(json!({ "isolation": "schema" }))).await.problem(400, "invalid-body");
    api.call("POST", "/tenants", Some(json!({ "id": "x", "isolation": "sideways" })))
        .await
        .problem(400, "invalid-body");
    api.call("POST", "/tenants", Some(json!({ "id": "x", "pool_size": -1 })))
        .await
        .problem(400, "invalid-body");
    api.call("POST", "/tenants", Some(json!(["x"]))).await.problem(400, "invalid-body");
    raw("POST", "/tenants", "text/plain", b"{\"id\":\"x\"}".to_vec())
        .await
        .problem(415, "unsupported-media-type");
    api.call("POST", "/tenants", None).await.problem(415, "unsupported-media-type");
    raw("POST", "/tenants", "application/json", vec![b' '; 2_097_152 + 1])
        .await
        .problem(413, "payload-too-large");
    let p =
        api.call("POST", "/tenants", Some(json!({ "id": "Bad..Id" }))).await.problem(400, "invalid-request");
    assert!(p["detail"].as_str().is_some_and(|d| d.contains("invalid tenant id")), "{p}");
    api.call("POST", "/tenants", Some(json!({ "id": "ok", "schema": "s" })))
        .await
        .problem(400, "invalid-request");
    api.call("PATCH", "/tenants/nosuch", Some(json!({ "pool_size": "big" })))
        .await
        .problem(400, "invalid-body");
    api.call("POST", "/tenants/nosuch/move", Some(json!({}))).await.problem(400, "invalid-body");
    let p = api
        .call("POST", "/tenants/nosuch/move", Some(json!({ "to": "local", "bogus": 1 })))
        .await
        .problem(400, "invalid-body");
    assert!(p["detail"].as_str().is_some_and(|d| d.contains("bogus")), "{p}");
    api.call("POST", "/tenants/nosuch/move", None).await.problem(415, "unsupported-media-type");

    // Ids in the path.
    for (method, path) in [
        ("GET", "/tenants/Bad..Id"),
        ("DELETE", "/tenants/Bad..Id"),
        ("POST", "/tenants/Bad..Id/suspend"),
        ("POST", "/tenants/Bad..Id/resume"),
        ("POST", "/tenants/Bad..Id/archive"),
        ("POST", "/tenants/Bad..Id/restore"),
        ("POST", "/tenants/Bad..Id/migrate"),
        ("GET", "/tenants/Bad..Id/health"),
        ("GET", "/tenants/%FF"),
    ] {
        let p = api.call(method, path, None).await.problem(400, "invalid-request");
        assert!(p["detail"].is_string(), "{method} {path}");
    }
    api.call("PATCH", "/tenants/Bad..Id", Some(json!({}))).await.problem(400, "invalid-request");
    api.call("POST", "/tenants/Bad..Id/move", Some(json!({ "to": "local" })))
        .await
        .problem(400, "invalid-request");

    // Unknown tenants.
    for (method, path) in [
        ("GET", "/tenants/nosuch"),
        ("DELETE", "/tenants/nosuch"),
        ("DELETE", "/tenants/nosuch?hard=true"),
        ("POST", "/tenants/nosuch/suspend"),
        ("POST", "/tenants/nosuch/resume"),
        ("POST", "/tenants/nosuch/archive"),
        ("POST", "/tenants/nosuch/restore"),
        ("POST", "/tenants/nosuch/migrate"),
        ("GET", "/tenants/nosuch/health"),
    ] {
        let p = api.call(method, path, None).await.problem(404, "not-found");
        assert!(p["detail"].as_str().is_some_and(|d| d.contains("nosuch")), "{method} {path}: {p}");
    }
    api.call("PATCH", "/tenants/nosuch", Some(json!({ "max_clients": 3 }))).await.problem(404, "not-found");
    let p = api
        .call("POST", "/tenants/nosuch/move", Some(json!({ "to": "local" })))
        .await
        .problem(404, "not-found");
    assert!(p["detail"].as_str().is_some_and(|d| d.contains("nosuch")), "{p}");

    // Query parameters.
    for path in [
        "/tenants/nosuch/archive?force=maybe",
        "/tenants/nosuch/archive?bogus=1",
        "/tenants/nosuch/migrate?dry_run=2",
    ] {
        api.call("POST", path, None).await.problem(400, "invalid-request");
    }
    api.call("DELETE", "/tenants/nosuch?hard=yes", None).await.problem(400, "invalid-request");

    // POST /migrate.
    api.call("POST", "/migrate", Some(json!({ "parallel": 0 }))).await.problem(400, "invalid-request");
    api.call("POST", "/migrate", Some(json!({ "parallel": 100000 }))).await.problem(400, "invalid-request");
    api.call("POST", "/migrate", Some(json!({ "on_failure": "explode" }))).await.problem(400, "invalid-body");
    api.call("POST", "/migrate", Some(json!({ "tenants": ["Bad..Id"] })))
        .await
        .problem(400, "invalid-request");
    api.call("POST", "/migrate", Some(json!({ "tenants": ["nosuch"] }))).await.problem(404, "not-found");
    raw("POST", "/migrate", "text/plain", b"{}".to_vec()).await.problem(415, "unsupported-media-type");
    raw("POST", "/migrate", "application/json", b"[".to_vec()).await.problem(400, "malformed-json");
    // An empty body is the defaults: every tenant (none here).
    let r = api.call("POST", "/migrate", None).await.ok(200);
    assert_eq!(r, json!({ "dry_run": false, "results": [], "failed": 0 }));
}
