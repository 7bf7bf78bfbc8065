//! The HTTP admin API end to end: the real proxy over a control database, the API on port 0
//! in-process, driven by a minimal HTTP/1.1 client; tenants checked through the proxy with
//! tokio-postgres and on the upstream itself.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use pgtenant::admin::http::{AdminState, OPENAPI, PROBLEM_TYPE_PREFIX};
use pgtenant::admin::{new_token, token_sha256};
use pgtenant::config::Config;
use pgtenant::proxy::Proxy;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::support::*;

// ---- a tiny HTTP/1.1 client ----

struct Reply {
    status: u16,
    /// Names lowercased.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// Asserts a 2xx JSON answer with `status` and returns its body.
    fn ok(&self, status: u16) -> Value {
        assert_eq!(self.status, status, "{}", self.text());
        assert_eq!(self.header("content-type"), Some("application/json"), "{}", self.text());
        self.json()
    }

    /// Asserts an RFC 9457 problem of `status` and type `…:<slug>`; returns its body.
    fn problem(&self, status: u16, slug: &str) -> Value {
        assert_eq!(self.status, status, "{}", self.text());
        assert_eq!(self.header("content-type"), Some("application/problem+json"), "{}", self.text());
        let p = self.json();
        assert_eq!(p["type"], format!("{PROBLEM_TYPE_PREFIX}{slug}"), "{p}");
        assert_eq!(p["status"], status, "{p}");
        assert!(p["title"].as_str().is_some_and(|t| !t.is_empty()), "{p}");
        assert!(p["detail"].as_str().is_some_and(|t| !t.is_empty()), "{p}");
        p
    }

    /// The slug of a problem's type, or "" for anything else.
    fn problem_slug(&self) -> String {
        if self.header("content-type") != Some("application/problem+json") {
            return String::new();
        }
        self.json()["type"]
            .as_str()
            .and_then(|t| t.strip_prefix(PROBLEM_TYPE_PREFIX))
            .unwrap_or("")
            .to_owned()
    }
}

/// The bytes of one request (`Connection: close`, so the answer ends at EOF).
fn request_bytes(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    for (name, value) in headers {
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

async fn http(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    let mut s = TcpStream::connect(addr).await.expect("connect to the admin API");
    // A server that answers before reading the whole body (413) may close early: what it
    // answered is still there to read.
    let _ = s.write_all(&request_bytes(method, path, headers, body)).await;
    let mut raw = Vec::new();
    let read = async {
        let mut buf = [0u8; 8192];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => raw.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), read).await.expect("answer within a minute");
    parse_reply(&raw)
}

fn parse_reply(raw: &[u8]) -> Reply {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("end of headers");
    let head = std::str::from_utf8(&raw[..end]).expect("ASCII head");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("status line");
    let mut parts = status_line.splitn(3, ' ');
    assert_eq!(parts.next(), Some("HTTP/1.1"), "{status_line}");
    let status = parts.next().and_then(|s| s.parse().ok()).expect("status code");
    let headers: Vec<(String, String)> = lines
        .map(|l| {
            let (n, v) = l.split_once(':').expect("header line");
            (n.trim().to_ascii_lowercase(), v.trim().to_owned())
        })
        .collect();
    let mut body = raw[end + 4..].to_vec();
    let chunked = headers.iter().any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    Reply { status, headers, body }
}

fn dechunk(mut rest: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let eol = rest.windows(2).position(|w| w == b"\r\n").expect("chunk size line");
        let size_text = std::str::from_utf8(&rest[..eol]).expect("chunk size");
        let size =
            usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16).expect("hex size");
        rest = &rest[eol + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

// ---- the API over a proxy over a control database ----

struct Api {
    addr: SocketAddr,
    h: Harness,
    cfg: Config,
    control: Client,
    dir: tempfile::TempDir,
    /// In `[admin] token_sha256`.
    token: String,
    stop: CancellationToken,
}

impl Drop for Api {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Api {
    async fn start(migrations: &[(&str, &str)]) -> Api {
        // A control database whose upstream has admin credentials, and the migrations.
        let crate::lifecycle::Setup { mut cfg, control, dir } =
            crate::lifecycle::Setup::new(migrations).await;
        let token = new_token();
        cfg.admin.token_sha256 = vec![token_sha256(&token)];
        let (h, _catalog) = start_control(cfg.clone()).await;
        let (addr, stop) = serve(h.proxy.clone(), &cfg).await;
        Api { addr, h, cfg, control, dir, token, stop }
    }

    fn migration(&self, name: &str, sql: &str) {
        std::fs::write(api_dir(&self.cfg).join(name), sql).expect("write migration");
    }

    fn remove_migration(&self, name: &str) {
        std::fs::remove_file(api_dir(&self.cfg).join(name)).expect("remove migration");
    }

    /// A request with the configured token; `body` is sent as application/json.
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Reply {
        let auth = format!("Bearer {}", self.token);
        match body {
            Some(b) => {
                let headers = [("Authorization", auth.as_str()), ("Content-Type", "application/json")];
                http(self.addr, method, path, &headers, b.to_string().as_bytes()).await
            }
            None => http(self.addr, method, path, &[("Authorization", auth.as_str())], b"").await,
        }
    }
}

fn api_dir(cfg: &Config) -> PathBuf {
    PathBuf::from(&cfg.lifecycle.migrations)
}

/// Starts the API for `proxy` on port 0; it stops when the token is cancelled.
async fn serve(proxy: std::sync::Arc<Proxy>, cfg: &Config) -> (SocketAddr, CancellationToken) {
    let state = AdminState::new(proxy, cfg).expect("admin state");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let stop = CancellationToken::new();
    tokio::spawn(pgtenant::admin::http::serve(listener, state, stop.clone()));
    (addr, stop)
}

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

/// Runs the `pgtenant` binary with `stdin`; returns (exit code, stdout, stderr).
async fn pgtenant(args: &[&str], stdin: &str) -> (i32, String, String) {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgtenant"))
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run pgtenant");
    let mut input = child.stdin.take().expect("stdin");
    input.write_all(stdin.as_bytes()).await.expect("write stdin");
    drop(input);
    let out = child.wait_with_output().await.expect("pgtenant output");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The SQLSTATE a new connection to `tenant` through the proxy fails with (None: it works).
async fn refusal(h: &Harness, tenant: &str) -> Option<String> {
    match connect_within(&h.conninfo(tenant)).await {
        Ok((c, conn)) => {
            tokio::spawn(conn);
            let query = tokio::time::timeout(Duration::from_secs(10), c.batch_execute("SELECT 1"));
            query.await.expect("an answer within 10 s").err().map(|e| code(&e))
        }
        Err(e) => Some(code(&e)),
    }
}

/// A connection through the proxy; a proxy that does not answer fails the test instead of
/// hanging it.
async fn connect_within(
    conninfo: &str,
) -> Result<
    (Client, tokio_postgres::Connection<tokio_postgres::Socket, tokio_postgres::tls::NoTlsStream>),
    tokio_postgres::Error,
> {
    tokio::time::timeout(Duration::from_secs(10), tokio_postgres::connect(conninfo, tokio_postgres::NoTls))
        .await
        .expect("the proxy answers a login within 10 s")
}

async fn schema_exists(db: &str, name: &str) -> bool {
    admin(db)
        .await
        .query_opt("SELECT 1 FROM pg_namespace WHERE nspname = $1", &[&name])
        .await
        .expect("pg_namespace")
        .is_some()
}

async fn role_exists(name: &str) -> bool {
    admin("postgres")
        .await
        .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&name])
        .await
        .expect("pg_roles")
        .is_some()
}

const PRODUCTS: &str = "CREATE TABLE products (id serial PRIMARY KEY, name text NOT NULL);";

// ---- tests ----

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
    let config_file = api.dir.path().join("pgtenant.toml");
    std::fs::write(&config_file, format!("[catalog]\nurl = {:?}\n", api.cfg.catalog.url)).expect("config");
    let config_arg = config_file.display().to_string();
    let (status, stdout, stderr) =
        pgtenant(&["admin", "token", "create", "ops", "--config", &config_arg], "").await;
    assert_eq!(status, 0, "{stderr}");
    let made = stdout.trim().to_owned();
    assert_eq!(made.len(), 43, "{stdout:?}");
    assert!(stderr.contains("not shown again"), "{stderr}");
    let stored: String = api
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
    let mut down = api.cfg.clone();
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
    let mut fixed = api.cfg.clone();
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
    let mut bad = api.cfg.clone();
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
    assert_eq!((&patched["max_clients"], &patched["pool_size"]), (&json!(1), &json!(3)));
    assert!(patched["version"].as_i64() > info["version"].as_i64(), "{patched}");
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
    api.migration("V002__sku.sql", "ALTER TABLE products ADD COLUMN sku text;");
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
    api.migration(
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
    api.remove_migration("V003__v3.sql");

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
    let other = crate::lifecycle::second_upstream(&api.control, "other").await;
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
