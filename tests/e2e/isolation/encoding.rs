//! Names that are not UTF-8 on a shared server connection: PostgreSQL fails a Parse, Bind,
//! Describe, Close or Execute naming one with 22021 and skips to Sync; pgtenant answers the
//! client that sent it the same, and the tenant sharing the connection gets exactly its own
//! replies. Under a client encoding where the bytes are characters (LATIN1) the names work.

use std::time::Duration;

use pgtenant::model::Isolation;
use tokio::net::TcpStream;

use super::*;
use crate::support::raw::*;
use crate::support::*;

/// Sends `bytes`, reads one ReadyForQuery per Sync.
async fn replies(s: &mut TcpStream, syncs: usize) -> Vec<u8> {
    let (got, closed) = read_ready(s, syncs, Duration::from_secs(5)).await;
    assert!(!closed && ready_count(&got) == syncs, "no full reply: {:?}", summary(&got));
    got
}

fn rows(who: &str) -> Vec<String> {
    let mut r = vec!["2".to_owned()];
    r.extend(std::iter::repeat_n(format!("D({who})"), 3));
    r.push("C(SELECT 3)".into());
    r
}

/// Tenant A pipelines messages with names that are not UTF-8 between its own Binds of a named
/// statement while tenant B pipelines its Bind of the same statement text on the one pooled
/// connection: A gets 22021 with PostgreSQL's text for each, then its rows; B only its rows.
/// A client of A in LATIN1 names a statement, a portal and runs them with the same bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_that_is_not_utf8_fails_only_its_own_message() {
    let (a, b) = tenant_pair(Isolation::Schema, Access::Write, 1).await;
    let h = start_quick(vec![a.clone(), b.clone()]).await;
    let mut f = Failures::default();
    let mut ca = raw_proxy(&h, &a.id).await;
    let mut cb = raw_proxy(&h, &b.id).await;
    let sql = "SELECT owner FROM items";
    for c in [&mut ca, &mut cb] {
        send(c, &cat(&[parse("s1", sql), sync()])).await;
        let got = replies(c, 1).await;
        assert_eq!(summary(&got), ["1", "Z(I)"]);
    }
    let batch_a = cat(&[
        msg(b'B', b"p\xff\0s1\0\0\0\0\0\0\0"),
        execute(""),
        sync(),
        bind("", "s1"),
        msg(b'D', b"Ss\xff\0"),
        execute(""),
        sync(),
        msg(b'C', b"Ss\xff\0"),
        sync(),
        msg(b'E', b"p\xff\0\0\0\0\0"),
        sync(),
        bind("", "s1"),
        execute(""),
        sync(),
    ]);
    let mut want_a: Vec<String> =
        ["E(22021)", "Z(I)", "2", "E(22021)", "Z(I)", "E(22021)", "Z(I)", "E(22021)", "Z(I)"]
            .map(String::from)
            .into();
    want_a.extend(rows(&a.id));
    want_a.push("Z(I)".into());
    let mut want_b = rows(&b.id);
    want_b.push("Z(I)".into());
    for round in 0..3 {
        send(&mut ca, &batch_a).await;
        send(&mut cb, &cat(&[bind("", "s1"), execute(""), sync()])).await;
        let (got_a, got_b) = tokio::join!(replies(&mut ca, 5), replies(&mut cb, 1));
        f.check(summary(&got_a) == want_a, || format!("{round}: A: {:?}", summary(&got_a)));
        let texts: Vec<String> = messages(&got_a)
            .into_iter()
            .filter(|(t, _)| *t == b'E')
            .filter_map(|(_, m)| field(m, b'M'))
            .collect();
        f.check(texts.iter().all(|t| t == "invalid byte sequence for encoding \"UTF8\": 0xff"), || {
            format!("{round}: A's errors: {texts:?}")
        });
        f.check(summary(&got_b) == want_b, || format!("{round}: B: {:?}", summary(&got_b)));
    }
    let user = format!("app.{}", a.id);
    let stream = TcpStream::connect(h.addr).await.expect("connect proxy");
    let mut latin1 = login(stream, &[("user", &user), ("client_encoding", "LATIN1")]).await;
    let named = cat(&[
        msg(b'P', b"s\xff\0SELECT owner FROM items\0\0\0"),
        msg(b'B', b"p\xff\0s\xff\0\0\0\0\0\0\0"),
        msg(b'E', b"p\xff\0\0\0\0\0"),
        msg(b'C', b"Ss\xff\0"),
        sync(),
    ]);
    send(&mut latin1, &named).await;
    let got = replies(&mut latin1, 1).await;
    let mut want = vec!["1".to_owned()];
    want.extend(rows(&a.id));
    want.extend(["3".to_owned(), "Z(I)".into()]);
    f.check(summary(&got) == want, || format!("LATIN1 client: {:?}", summary(&got)));
    f.assert_none();
}

/// The connection's client_encoding follows the client that holds it: a LATIN1 client of
/// tenant A uses the pool's one connection (its names are characters), then a UTF8 client of
/// tenant B and a UTF8 client of A send the same bytes (22021 for them, nothing recorded),
/// then the LATIN1 client again (its names still work), in turns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_encoding_never_judges_another_clients_names() {
    let (a, b) = tenant_pair(Isolation::Schema, Access::Write, 1).await;
    let h = start_quick(vec![a.clone(), b.clone()]).await;
    let mut f = Failures::default();
    let named = cat(&[
        msg(b'P', b"s\xff\0SELECT owner FROM items\0\0\0"),
        msg(b'B', b"p\xff\0s\xff\0\0\0\0\0\0\0"),
        msg(b'E', b"p\xff\0\0\0\0\0"),
        msg(b'C', b"Ss\xff\0"),
        sync(),
    ]);
    let user = format!("app.{}", a.id);
    let stream = TcpStream::connect(h.addr).await.expect("connect proxy");
    let mut latin1 = login(stream, &[("user", &user), ("client_encoding", "LATIN1")]).await;
    let mut utf8_b = raw_proxy(&h, &b.id).await;
    let mut utf8_a = raw_proxy(&h, &a.id).await;
    let mut want_latin1 = vec!["1".to_owned()];
    want_latin1.extend(rows(&a.id));
    want_latin1.extend(["3".to_owned(), "Z(I)".into()]);
    for round in 0..3 {
        send(&mut latin1, &named).await;
        let got = replies(&mut latin1, 1).await;
        f.check(summary(&got) == want_latin1, || format!("{round}: LATIN1 A: {:?}", summary(&got)));
        for (who, c) in [("UTF8 B", &mut utf8_b), ("UTF8 A", &mut utf8_a)] {
            send(c, &named).await;
            let got = replies(c, 1).await;
            f.check(summary(&got) == ["E(22021)", "Z(I)"], || format!("{round}: {who}: {:?}", summary(&got)));
        }
    }
    f.assert_none();
}
