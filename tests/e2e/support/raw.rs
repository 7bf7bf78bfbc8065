//! Raw protocol for tests that send what a driver never would: frontend messages built from
//! bytes, backend messages split and summarized, and read loops that stop at ReadyForQuery,
//! silence or end of stream.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use super::{cluster, Harness};

/// A raw connection: send bytes, read everything until the proxy closes (or `limit`).
pub async fn raw_exchange(addr: SocketAddr, send: &[u8], limit: Duration) -> (Vec<u8>, bool) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(send).await.expect("send");
    read_eof(&mut s, limit).await
}

/// A v3.0 startup packet with the given parameters.
pub fn startup_packet(params: &[(&str, &str)]) -> Vec<u8> {
    startup_packet_version(0x0003_0000, params)
}

/// A startup packet for a given protocol version word (major << 16 | minor).
pub fn startup_packet_version(version: i32, params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = version.to_be_bytes().to_vec();
    for (k, v) in params {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut p = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    p.extend_from_slice(&body);
    p
}

pub fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&i32::try_from(body.len() + 4).expect("small").to_be_bytes());
    m.extend_from_slice(body);
    m
}

pub fn cstrs(parts: &[&[u8]]) -> Vec<u8> {
    let mut b = Vec::new();
    for p in parts {
        b.extend_from_slice(p);
        b.push(0);
    }
    b
}

pub fn query(sql: &str) -> Vec<u8> {
    msg(b'Q', &cstrs(&[sql.as_bytes()]))
}

pub fn parse(name: &str, sql: &str) -> Vec<u8> {
    let mut body = cstrs(&[name.as_bytes(), sql.as_bytes()]);
    body.extend_from_slice(&0i16.to_be_bytes());
    msg(b'P', &body)
}

pub fn bind(portal: &str, stmt: &str) -> Vec<u8> {
    let mut body = cstrs(&[portal.as_bytes(), stmt.as_bytes()]);
    body.extend_from_slice(&[0, 0, 0, 0, 0, 0]); // no formats, no parameters, no result formats
    msg(b'B', &body)
}

pub fn execute(portal: &str) -> Vec<u8> {
    let mut body = cstrs(&[portal.as_bytes()]);
    body.extend_from_slice(&0i32.to_be_bytes());
    msg(b'E', &body)
}

pub fn describe(kind: u8, name: &str) -> Vec<u8> {
    let mut body = vec![kind];
    body.extend_from_slice(&cstrs(&[name.as_bytes()]));
    msg(b'D', &body)
}

pub fn close(kind: u8, name: &str) -> Vec<u8> {
    let mut body = vec![kind];
    body.extend_from_slice(&cstrs(&[name.as_bytes()]));
    msg(b'C', &body)
}

pub fn sync() -> Vec<u8> {
    msg(b'S', &[])
}

pub fn flush() -> Vec<u8> {
    msg(b'H', &[])
}

pub fn copy_data(data: &str) -> Vec<u8> {
    msg(b'd', data.as_bytes())
}

pub fn copy_done() -> Vec<u8> {
    msg(b'c', &[])
}

pub fn copy_fail(why: &str) -> Vec<u8> {
    msg(b'f', &cstrs(&[why.as_bytes()]))
}

pub fn terminate() -> Vec<u8> {
    msg(b'X', &[])
}

pub fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

/// The whole backend messages at the start of `bytes` (tag, body).
pub fn messages(bytes: &[u8]) -> Vec<(u8, &[u8])> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while rest.len() >= 5 {
        let len = i32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        if len < 4 || rest.len() < len + 1 {
            break;
        }
        out.push((rest[0], &rest[5..len + 1]));
        rest = &rest[len + 1..];
    }
    out
}

pub fn field(body: &[u8], code: u8) -> Option<String> {
    body.split(|b| *b == 0)
        .find_map(|f| f.strip_prefix(&[code][..]).map(|v| String::from_utf8_lossy(v).into_owned()))
}

/// A transcript as comparable words: `E(<sqlstate>)`, `Z(<status>)`, `C(<tag>)`,
/// `D(<values>)`, the bare tag otherwise. ParameterStatus and BackendKeyData are left out
/// (pgtenant reports its own); so are notices (pgtenant's setup may cause some).
pub fn summary(bytes: &[u8]) -> Vec<String> {
    messages(bytes)
        .into_iter()
        .filter(|(tag, _)| !matches!(tag, b'S' | b'K' | b'N'))
        .map(|(tag, body)| match tag {
            b'E' => format!(
                "E({}{})",
                field(body, b'C').unwrap_or_default(),
                if field(body, b'V').as_deref() == Some("FATAL") { ",FATAL" } else { "" }
            ),
            b'Z' => format!("Z({})", body.first().map(|b| *b as char).unwrap_or('?')),
            b'C' => format!("C({})", String::from_utf8_lossy(body.strip_suffix(b"\0").unwrap_or(body))),
            b'D' => format!("D({})", data_row(body).join("|")),
            other => (other as char).to_string(),
        })
        .collect()
}

pub fn data_row(body: &[u8]) -> Vec<String> {
    let mut values = Vec::new();
    if body.len() < 2 {
        return values;
    }
    let n = i16::from_be_bytes([body[0], body[1]]);
    let mut rest = &body[2..];
    for _ in 0..n {
        if rest.len() < 4 {
            break;
        }
        let len = i32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
        rest = &rest[4..];
        if len < 0 {
            values.push("NULL".into());
            continue;
        }
        let len = (len as usize).min(rest.len());
        values.push(String::from_utf8_lossy(&rest[..len]).into_owned());
        rest = &rest[len..];
    }
    values
}

pub fn ready_count(bytes: &[u8]) -> usize {
    messages(bytes).iter().filter(|(t, _)| *t == b'Z').count()
}

/// Reads until `n` ReadyForQuery messages have arrived, the peer closes, or `limit` passes;
/// returns what was read and whether the peer closed.
pub async fn read_ready<S: AsyncRead + Unpin>(s: &mut S, n: usize, limit: Duration) -> (Vec<u8>, bool) {
    let mut got = Vec::new();
    let mut buf = vec![0u8; 16384];
    let deadline = tokio::time::Instant::now() + limit;
    while ready_count(&got) < n {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (got, true),
            Ok(Ok(k)) => got.extend_from_slice(&buf[..k]),
            Err(_) => break,
        }
    }
    (got, false)
}

/// Reads until nothing arrives for `quiet`, the peer closes, or 10 s pass.
pub async fn read_quiet<S: AsyncRead + Unpin>(s: &mut S, quiet: Duration) -> (Vec<u8>, bool) {
    let mut got = Vec::new();
    let mut buf = vec![0u8; 16384];
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        match tokio::time::timeout(quiet, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (got, true),
            Ok(Ok(k)) => got.extend_from_slice(&buf[..k]),
            Err(_) => break,
        }
    }
    (got, false)
}

/// Reads until the peer closes (or `limit`); returns what was read and whether it closed.
pub async fn read_eof<S: AsyncRead + Unpin>(s: &mut S, limit: Duration) -> (Vec<u8>, bool) {
    let mut got = Vec::new();
    let mut buf = vec![0u8; 16384];
    let closed = tokio::time::timeout(limit, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(k) => got.extend_from_slice(&buf[..k]),
            }
        }
    })
    .await
    .is_ok();
    (got, closed)
}

/// Logs in with a raw startup packet; returns the stream after the first ReadyForQuery.
pub async fn login<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, params: &[(&str, &str)]) -> S {
    s.write_all(&startup_packet(params)).await.expect("startup");
    let (got, closed) = read_ready(&mut s, 1, Duration::from_secs(10)).await;
    assert!(!closed && ready_count(&got) == 1, "login failed: {:?}", summary(&got));
    s
}

/// A raw client of `tenant` through the proxy (trust authentication).
pub async fn raw_proxy(h: &Harness, tenant: &str) -> TcpStream {
    let user = format!("app.{tenant}");
    login(TcpStream::connect(h.addr).await.expect("connect proxy"), &[("user", &user)]).await
}

/// A raw session straight to the cluster (Unix socket, trust) as the superuser.
pub async fn raw_direct(db: &str) -> UnixStream {
    let sock = cluster().socket_dir.join(format!(".s.PGSQL.{}", cluster().port));
    let s = UnixStream::connect(sock).await.expect("connect socket");
    login(s, &[("user", "postgres"), ("database", db)]).await
}

pub async fn send<S: AsyncWrite + Unpin>(s: &mut S, bytes: &[u8]) {
    s.write_all(bytes).await.expect("send");
}

/// The SQLSTATE of the first ErrorResponse in a byte stream.
pub fn sqlstate(bytes: &[u8]) -> Option<String> {
    messages(bytes).into_iter().filter(|(tag, _)| *tag == b'E').find_map(|(_, body)| field(body, b'C'))
}

/// Reads from a raw connection until a ReadyForQuery(I) arrives; returns what was read.
pub async fn read_until_ready(s: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(6).any(|w| w == b"Z\0\0\0\x05I") {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("reply in time")
            .expect("read");
        assert!(n > 0, "closed before ReadyForQuery: {got:?}");
        got.extend_from_slice(&buf[..n]);
    }
    got
}
