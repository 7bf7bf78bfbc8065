//! The HTTP admin API end to end: the real proxy over a control database, the API on port 0
//! in-process, driven by a minimal HTTP/1.1 client; tenants checked through the proxy with
//! tokio-postgres and on the upstream itself.
//!
//! `surface`: tokens, the documented routes and probes, bad input; `tenant_life`: tenants
//! created, changed, moved and deleted over HTTP. Here: the HTTP client and the harness.

mod surface;
mod tenant_life;

use std::net::SocketAddr;
use std::time::Duration;

use pgtenant::admin::http::{AdminState, PROBLEM_TYPE_PREFIX};
use pgtenant::admin::{new_token, token_sha256};
use pgtenant::config::Config;
use pgtenant::proxy::Proxy;
use serde_json::Value;
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
    /// The control database, the migrations directory and the config (with the token).
    setup: Setup,
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
        let mut setup = Setup::new(migrations).await;
        let token = new_token();
        setup.cfg.admin.token_sha256 = vec![token_sha256(&token)];
        let (h, _catalog) = start_control(setup.cfg.clone()).await;
        let (addr, stop) = serve(h.proxy.clone(), &setup.cfg).await;
        Api { addr, h, setup, token, stop }
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

/// Starts the API for `proxy` on port 0; it stops when the token is cancelled.
async fn serve(proxy: std::sync::Arc<Proxy>, cfg: &Config) -> (SocketAddr, CancellationToken) {
    let state = AdminState::new(proxy, cfg).expect("admin state");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let stop = CancellationToken::new();
    tokio::spawn(pgtenant::admin::http::serve(listener, state, stop.clone()));
    (addr, stop)
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

const PRODUCTS: &str = "CREATE TABLE products (id serial PRIMARY KEY, name text NOT NULL);";
