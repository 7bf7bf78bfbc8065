//! The relay's plain-socket path (reads and writes under the socket's readiness, see
//! `src/client/relay/plain.rs`) under the loads that break such a path: short reads of
//! large queries, short writes to clients that read slowly, many sessions on a
//! multi-thread runtime (a lost wake-up hangs one of them). That a session whose bytes are
//! always ready still yields (the cooperative budget) is tested in-process, in `plain.rs`:
//! a flood next to a SELECT 1 loop here loaded the machine enough to upset timing-sensitive
//! tests running beside it, and passed without the budget too.

use std::time::{Duration, Instant};

use pgtenant::model::PoolMode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::raw::{messages, query, raw_proxy};
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
