//! The relay's plain-socket path (reads and writes under the socket's readiness, see
//! `src/client/relay/plain.rs`) under the loads that break such a path: short reads of
//! large queries, short writes to clients that read slowly, many sessions on a
//! multi-thread runtime (a lost wake-up hangs one of them), and a session whose bytes
//! are always ready next to a client running SELECT 1 on a single-threaded proxy (the
//! cooperative budget must make the flooding session yield).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pgtenant::config::Config;
use pgtenant::model::PoolMode;
use pgtenant::proxy::Proxy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::raw::{self, messages, query, raw_proxy};
use crate::support::*;

/// A query text of about `len` bytes that the server checks byte for byte.
fn large_query(id: usize, len: usize) -> (String, usize) {
    let unit = format!("ab{id}.");
    let n = len / unit.len();
    (
        format!("SELECT '{}' = repeat('{unit}', {n}), length('{}')", unit.repeat(n), unit.repeat(n)),
        n * unit.len(),
    )
}

/// Sends a query whose result is `rows` rows of 8 kB and reads it in small pieces with pauses
/// (the proxy's writes to this client come out short); checks every row arrived, in order.
async fn slow_reader(s: &mut TcpStream, rows: usize) {
    let sql = format!("SELECT lpad(g::text, 8000, 'y') FROM generate_series(1, {rows}) g");
    s.write_all(&query(&sql)).await.expect("send");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let mut reads = 0;
    while !got.ends_with(b"Z\0\0\0\x05I") {
        let n = s.read(&mut buf).await.expect("read");
        assert!(n > 0, "closed mid-result");
        got.extend_from_slice(&buf[..n]);
        reads += 1;
        if reads % 4 == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let data: Vec<&[u8]> = messages(&got).into_iter().filter(|(t, _)| *t == b'D').map(|(_, b)| b).collect();
    assert_eq!(data.len(), rows, "every row arrived");
    for (i, body) in data.iter().enumerate() {
        let value = std::str::from_utf8(&body[6..]).expect("text");
        assert_eq!(value.trim_start_matches('y'), (i + 1).to_string(), "row {i} in order");
    }
}

/// Many sessions at once on two workers, with a pool smaller than the clients (transaction
/// mode: server connections change hands between sessions): large queries (short reads from
/// the client), large results to clients that read slowly (short writes), small queries in
/// between. Every session must finish: a read or write whose wake-up was lost hangs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_sessions_with_short_reads_and_writes_all_finish() {
    let t = with_mode(tenant_db("plainstress").await, PoolMode::Transaction, 3);
    let h = start(config(vec![t.clone()])).await;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for id in 0..8 {
        let conninfo = h.conninfo(&t.id);
        tasks.push(tokio::spawn(async move {
            let c = connect_str(&conninfo).await;
            for round in 0..4 {
                let (sql, len) = large_query(id, 200_000 + round * 37_001);
                let row = c.simple_query(&sql).await.expect("large query");
                let row = row
                    .iter()
                    .find_map(|m| match m {
                        tokio_postgres::SimpleQueryMessage::Row(r) => Some(r),
                        _ => None,
                    })
                    .expect("a row");
                assert_eq!(row.get(0), Some("t"), "the query text arrived intact");
                assert_eq!(row.get(1), Some(len.to_string().as_str()));
                let rows = c
                    .query("SELECT repeat('r', 4000) || g FROM generate_series(1, 300) g", &[])
                    .await
                    .expect("large result");
                assert_eq!(rows.len(), 300);
                assert_eq!(rows[299].get::<_, String>(0), format!("{}300", "r".repeat(4000)));
                let v: i32 = c.query_one("SELECT $1::int + 1", &[&(id as i32)]).await.expect("small").get(0);
                assert_eq!(v, id as i32 + 1);
            }
        }));
    }
    for _ in 0..4 {
        let mut s = raw_proxy(&h, &t.id).await;
        tasks.push(tokio::spawn(async move {
            for _ in 0..2 {
                slow_reader(&mut s, 400).await;
            }
        }));
    }
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(120), task)
            .await
            .unwrap_or_else(|_| panic!("a session hung (after {:?})", started.elapsed()))
            .expect("session");
    }
}

/// The proxy on a thread of its own with a single-threaded runtime (`workers = 1`), so that
/// a session that never waits starves the others unless it yields; the test's clients run
/// on the test's runtime.
fn start_single_threaded(config: Config) -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async move {
            let listener =
                pgtenant::listener::bind(config.proxy.listen, config.proxy.listen_backlog).expect("bind");
            tx.send(listener.local_addr().expect("addr")).expect("addr sent");
            let _ = Proxy::new(config).serve(listener).await;
        });
    });
    rx.recv().expect("proxy started")
}

/// On a single-threaded proxy, sessions whose bytes are always ready (a result streamed
/// without end to a client reading as fast as it can, a COPY whose data never pauses) must
/// leave room for a client running SELECT 1 in a loop: each of its queries is answered
/// within a bounded time, and it gets many answers while the floods go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_session_leaves_room_on_a_single_threaded_proxy() {
    let t = with_mode(tenant_db("plainflood").await, PoolMode::Session, 4);
    let mut cfg = config(vec![t.clone()]);
    cfg.proxy.workers = 1;
    let addr = start_single_threaded(cfg);
    let setup =
        connect_str(&format!("host=127.0.0.1 port={} user=app.{} dbname={}", addr.port(), t.id, t.id)).await;
    setup.batch_execute("CREATE UNLOGGED TABLE sink (line text)").await.expect("table");
    let probe = setup;
    let stop = Arc::new(AtomicBool::new(false));
    let user = format!("app.{}", t.id);
    let params = [("user", user.as_str()), ("database", t.id.as_str())];
    let login = |s: TcpStream| raw::login(s, &params);

    // A result that does not end (the set-returning function in the select list streams
    // its rows, one in FROM would be materialized first): the server's socket always has
    // bytes for the proxy.
    let mut out = login(TcpStream::connect(addr).await.expect("connect")).await;
    out.write_all(&query("SELECT repeat('z', 8000), generate_series(1, 100000000)")).await.expect("send");
    let stop_out = stop.clone();
    let streamed = tokio::spawn(async move {
        let mut buf = vec![0u8; 256 * 1024];
        let mut total = 0u64;
        while !stop_out.load(Ordering::Relaxed) {
            match out.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n as u64,
            }
        }
        total
    });
    // A COPY whose data never pauses: the client's socket always has bytes for the proxy.
    let mut copy = login(TcpStream::connect(addr).await.expect("connect")).await;
    copy.write_all(&query("COPY sink FROM STDIN")).await.expect("copy");
    let mut head = [0u8; 64];
    let n = copy.read(&mut head).await.expect("CopyInResponse");
    assert_eq!(head.first(), Some(&b'G'), "{:?}", &head[..n]);
    let stop_copy = stop.clone();
    let copied = tokio::spawn(async move {
        let chunk = raw::copy_data(&"0123456789abcde\n".repeat(4096));
        let mut total = 0u64;
        while !stop_copy.load(Ordering::Relaxed) {
            if copy.write_all(&chunk).await.is_err() {
                break;
            }
            total += chunk.len() as u64;
        }
        total
    });

    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut worst = Duration::ZERO;
    let mut answered = 0;
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        let asked = Instant::now();
        let v: i32 = tokio::time::timeout(Duration::from_secs(20), probe.query_one("SELECT 1", &[]))
            .await
            .expect("SELECT 1 starved for 20 s")
            .expect("SELECT 1")
            .get(0);
        assert_eq!(v, 1);
        worst = worst.max(asked.elapsed());
        answered += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let streamed = streamed.await.expect("reader");
    let copied = copied.await.expect("writer");
    eprintln!("SELECT 1: {answered} answers, worst {worst:?}; streamed {streamed} B, copied {copied} B");
    assert!(streamed > 10 << 20 && copied > 10 << 20, "the floods ran: {streamed} B out, {copied} B in");
    assert!(worst < Duration::from_secs(1), "a SELECT 1 waited {worst:?} behind the floods");
    assert!(answered >= 10, "only {answered} SELECT 1 in 2 s");
}
