//! A Sync, Flush, Describe, Close, Execute, CopyDone or CopyFail longer than PostgreSQL accepts
//! (10,000 bytes, `PQ_SMALL_MESSAGE_LIMIT`) ends the backend's session: PostgreSQL 15 logs
//! "invalid message length" and exits (during COPY: "protocol synchronization was lost"), so
//! the bytes of its body are never read as messages. pgtenant refuses such a message from its
//! header (FATAL 08P01), before any of it is buffered or forwarded: the client's session ends
//! as it would on PostgreSQL, what came before is answered, the pooled server connection
//! survives for the next client (another tenant), and what the body carried never runs.

use std::time::Duration;

use pgtenant::model::{Isolation, PoolMode};

use super::*;
use crate::support::raw::*;
use crate::support::*;

/// What an attack is called, what is sent and answered first, the attack, its replies before
/// the error, whether the server connection owes nothing when the session ends.
type Attack<'a> = (&'a str, Vec<u8>, Vec<u8>, &'a [&'a str], bool);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_small_message_ends_only_its_session() {
    for mode in [PoolMode::Transaction, PoolMode::Session] {
        oversized(mode).await;
    }
}

async fn oversized(mode: PoolMode) {
    let (a, b) = tenant_pair(Isolation::Schema, Access::Write, 1).await;
    let (a, b) = (with_mode(a, mode, 1), with_mode(b, mode, 1));
    let h = start_quick(vec![a.clone(), b.clone()]).await;
    let addr = h.addr;
    let login = move |user: String| async move {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        send(&mut s, &startup_packet(&[("user", &user)])).await;
        let (got, closed) = read_ready(&mut s, 1, Duration::from_secs(5)).await;
        assert!(!closed && ready_count(&got) == 1, "{user} logs in: {:?}", summary(&got));
        s
    };
    let (user_a, user_b) = (format!("app.{}", a.id), format!("app.{}", b.id));
    // The server connection both tenants share (a pool of one).
    let backend = |user: String| async move {
        let mut s = login(user).await;
        send(&mut s, &query("SELECT pg_backend_pid()")).await;
        let (got, _) = read_ready(&mut s, 1, Duration::from_secs(3)).await;
        let row = messages(&got).into_iter().find(|(t, _)| *t == b'D').map(|(_, body)| data_row(body));
        row.and_then(|r| r.into_iter().next()).expect("pid")
    };
    let mut before = backend(user_b.clone()).await;
    // Bodies carrying messages of their own: a table created, a transaction ended.
    let smuggled = |n: usize| {
        let mut body = [query(&format!("CREATE TABLE smuggled_{n} ()")), query("COMMIT")].concat();
        body.resize(10_001 - 4, b' ');
        body
    };
    let copy = [
        query("BEGIN"),
        query("CREATE TEMP TABLE ov (a int)"),
        query("COPY ov FROM STDIN"),
        copy_data("1\n"),
    ]
    .concat();
    // The copy is ended by the Terminate that follows it to the server: PostgreSQL answers
    // as it does on its own to the oversized message (an error, then FATAL 08P01 "protocol
    // synchronization was lost"), then pgtenant's FATAL.
    let in_copy: &[&str] =
        &["C(BEGIN)", "Z(T)", "C(CREATE TABLE)", "Z(T)", "G", "E(08P01)", "E(08P01,FATAL)"];
    // (what, sent and answered first, the attack, its replies before the error, whether the
    // server connection owes nothing when the client's session ends: then it is kept, else
    // the server gets a Terminate too, as behind any malformed frame)
    let attacks: Vec<Attack> = vec![
        ("Sync", query("SELECT 1"), msg(b'S', &smuggled(1)), &[], true),
        ("Flush", vec![], msg(b'H', &smuggled(2)), &[], true),
        (
            "Describe in a block",
            query("BEGIN"),
            msg(b'D', &[b"S".as_slice(), &smuggled(3)].concat()),
            &[],
            false,
        ),
        ("Close", vec![], msg(b'C', &[b"P".as_slice(), &smuggled(4)].concat()), &[], true),
        ("Execute", vec![], msg(b'E', &smuggled(5)), &[], true),
        (
            "Sync behind a query",
            vec![],
            [query("SELECT 1"), msg(b'S', &smuggled(6))].concat(),
            &["T", "D(1)", "C(SELECT 1)", "Z(I)"],
            false,
        ),
        ("CopyDone in COPY", vec![], [copy.clone(), msg(b'c', &smuggled(7))].concat(), in_copy, false),
        ("CopyFail in COPY", vec![], [copy.clone(), msg(b'f', &smuggled(8))].concat(), in_copy, false),
        ("Sync in COPY", vec![], [copy.clone(), msg(b'S', &smuggled(9))].concat(), in_copy, false),
    ];
    for (what, first, bytes, answered, survives) in attacks {
        let mut ra = login(user_a.clone()).await;
        if !first.is_empty() {
            send(&mut ra, &first).await;
            let (got, _) = read_ready(&mut ra, 1, Duration::from_secs(3)).await;
            assert!(sqlstate(&got).is_none(), "{mode:?} {what}: {:?}", summary(&got));
        }
        send(&mut ra, &bytes).await;
        let (got, closed) = read_eof(&mut ra, Duration::from_secs(5)).await;
        let s = summary(&got);
        assert!(closed, "{mode:?} {what}: a's session ends: {s:?}");
        let e = messages(&got).into_iter().rev().find(|(t, _)| *t == b'E').map(|(_, body)| body.to_vec());
        let e = e.unwrap_or_default();
        assert_eq!(field(&e, b'C').as_deref(), Some("08P01"), "{mode:?} {what}: {s:?}");
        assert_eq!(field(&e, b'S').as_deref(), Some("FATAL"), "{mode:?} {what}: {s:?}");
        assert!(
            field(&e, b'M').is_some_and(|m| m.contains("exceeds the limit of 10000")),
            "{mode:?} {what}: {:?}",
            field(&e, b'M')
        );
        assert_eq!(
            &s[..s.len() - 1],
            answered,
            "{mode:?} {what}: what came before is answered, nothing else"
        );
        // The next client, the other tenant, gets its own replies, on the same server
        // connection when nothing was owed.
        let after = backend(user_b.clone()).await;
        if survives {
            assert_eq!(after, before, "{mode:?} {what}: the shared server connection survives");
        }
        before = after;
    }
    let direct = admin(&a.database).await;
    let n: i64 = direct
        .query_one("SELECT count(*) FROM pg_class WHERE relname LIKE 'smuggled%'", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(n, 0, "{mode:?}: nothing a body carried ran");
}

/// PostgreSQL refuses a length word over `PQ_LARGE_MESSAGE_LIMIT` (1 GiB − 2) for any message
/// from its header and closes; pgtenant refuses it from its header too (FATAL 08P01), also
/// for a Query, Parse or Bind it would otherwise buffer whole, up to 1 GiB, before the server
/// refused it. A length word of exactly that limit is waited for, as PostgreSQL waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_postgres_large_limit_is_refused_from_its_header() {
    let (a, _) = tenant_pair(Isolation::Schema, Access::Write, 1).await;
    for mode in [PoolMode::Transaction, PoolMode::Session] {
        let mut cfg: Config = config(vec![with_mode(a.clone(), mode, 1)]);
        // The tenant may hold the whole large-message budget: the limit tested is PostgreSQL's.
        cfg.proxy.large_message_memory_per_tenant = Some(cfg.proxy.large_message_memory);
        let h = start(cfg).await;
        let user = format!("app.{}", a.id);
        for (tag, len, refused) in [
            (b'Q', 0x3fff_ffffu32, true),
            (b'P', 0x3fff_ffff, true),
            (b'B', 0x3fff_ffff, true),
            (b'F', 0x3fff_ffff, true),
            (b'd', 0x3fff_ffff, true),
            (b'Q', 0x3fff_fffe, false),
        ] {
            let mut s = tokio::net::TcpStream::connect(h.addr).await.expect("connect");
            send(&mut s, &startup_packet(&[("user", &user)])).await;
            let (got, closed) = read_ready(&mut s, 1, Duration::from_secs(5)).await;
            assert!(!closed && ready_count(&got) == 1, "logs in: {:?}", summary(&got));
            let mut bytes = query("SELECT 1");
            bytes.push(tag);
            bytes.extend_from_slice(&len.to_be_bytes());
            bytes.extend_from_slice(b"SELECT 1");
            send(&mut s, &bytes).await;
            let (got, closed) = read_eof(&mut s, Duration::from_secs(2)).await;
            let what = format!("{mode:?} {} {len:#x}: {:?}", tag as char, summary(&got));
            if !refused {
                assert!(!closed, "{what}: waits for the rest");
                assert_eq!(summary(&got), ["T", "D(1)", "C(SELECT 1)", "Z(I)"], "{what}");
                continue;
            }
            assert!(closed, "{what}: the session ends");
            let s = summary(&got);
            assert_eq!(s[..s.len() - 1], ["T", "D(1)", "C(SELECT 1)", "Z(I)"], "{what}");
            let e = messages(&got).into_iter().rev().find(|(t, _)| *t == b'E').map(|(_, b)| b.to_vec());
            let e = e.unwrap_or_default();
            assert_eq!(field(&e, b'C').as_deref(), Some("08P01"), "{what}");
            assert_eq!(field(&e, b'S').as_deref(), Some("FATAL"), "{what}");
            assert!(field(&e, b'M').is_some_and(|m| m.contains("exceeds the limit of 1073741822")), "{what}");
        }
    }
}
