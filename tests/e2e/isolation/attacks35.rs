//! A hostile client of tenant a against what the hold-back (`isolation::pipelined`) looks past:
//! Flushes, and copy messages the server ignores outside a copy, behind a unit's end do not
//! hide it (commit 009d4ae), and a Flush is never held back. Built on the scene of `attacks34`
//! (a slow query of a's keeping the pool's one connection while tenant b loops behind it).
//! What a pipelines must get PostgreSQL's replies, in order and without a stall; a COPY's data
//! is never what waits; b never sees a's session.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::AsyncReadExt;

use super::attacks34::{direct, expect, scene, words, Scene, SLOW, SLOW_WORDS};
use super::*;
use crate::support::raw::*;

/// a's schema as [`words`] shows it in a row, with `suffix`.
fn mine(s: &Scene, suffix: &str) -> String {
    format!("D({}{suffix})", s.a.id)
}

/// a is still a, and answered at once: its schema.
async fn still_a(s: &mut Scene) {
    send(&mut s.ra, &query("SELECT current_schema()")).await;
    let (got, _) = read_ready(&mut s.ra, 1, Duration::from_secs(10)).await;
    let want = mine(s, "");
    assert_eq!(words(&got), [want.as_str(), "C(SELECT 1)", "Z(I)"]);
}

/// Reads until a CopyInResponse (or 10 s): a driver sends its data only then.
async fn read_copy_in(s: &mut Scene) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = vec![0u8; 16384];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !messages(&got).iter().any(|(t, _)| *t == b'G') {
        match tokio::time::timeout_at(deadline, s.ra.read(&mut buf)).await {
            Ok(Ok(k)) if k > 0 => got.extend_from_slice(&buf[..k]),
            _ => panic!("no CopyInResponse: {:?}", words(&got)),
        }
    }
    got
}

/// A case: what it tries, a's messages sent at once, those held back, ReadyForQuery count.
type Case = (&'static str, Vec<Vec<u8>>, Vec<Vec<u8>>, usize);

/// Stray CopyDone, CopyData and CopyFail (outside any copy: PostgreSQL ignores them) and
/// Flushes behind a's queries: the next query is still held back for b (two resets), and
/// every reply is PostgreSQL's, in order, on one direct session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stray_copy_messages_behind_a_query_do_not_hide_it() {
    let cases: [Case; 3] = [
        (
            "stray messages sent with the slow query",
            vec![query("SELECT 1"), copy_done(), copy_data("stray\n"), copy_fail("stray"), flush()],
            vec![query("SELECT 2"), copy_done(), query("SELECT 3")],
            4,
        ),
        (
            "stray messages behind the slow query alone",
            vec![copy_fail("stray"), copy_data("x"), flush(), copy_done()],
            vec![query("SELECT 1"), copy_fail("y"), copy_data("y"), query("SELECT 2"), flush()],
            3,
        ),
        (
            "stray messages behind an extended batch",
            vec![
                parse("", "SELECT 7"),
                bind("", ""),
                execute(""),
                sync(),
                copy_data("z"),
                flush(),
                copy_done(),
            ],
            vec![bind("", ""), execute(""), sync(), copy_fail("z"), query("SELECT 8")],
            4,
        ),
    ];
    for (what, first, then, readies) in cases {
        let want = direct(&first, &then, readies).await;
        let mut s = scene().await;
        let got = s.run(&first, &then, readies).await;
        assert_eq!(words(&got), want, "{what}: through pgtenant and on PostgreSQL");
        assert!(s.resets() >= 2, "{what}: {} resets: a's next query was not held back for b", s.resets());
        still_a(&mut s).await;
        s.stop_b().await;
    }
}

/// A COPY FROM STDIN sent with its first data behind the slow query, the rest of its data,
/// its CopyDone and a query 250 ms later (the server not yet in the copy): the data goes at
/// once (it is never what waits), the query behind it is held back for b, and the replies
/// come in order. With a Sync inside the data (ignored by the copy), the same rows. Before,
/// the query slipped through when the relay looked between the CopyInResponse and the copy's
/// end (`unit_pending` false in any copy): a missed hold-back about one run in three.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_data_behind_a_pending_copy_is_never_held_back() {
    for with_sync in [false, true] {
        let mut s = scene().await;
        let first = [query("COPY t FROM STDIN"), copy_data("1\tc35\n")];
        let mut then = vec![copy_data("2\tc35\n")];
        if with_sync {
            then.extend([sync(), copy_data("3\tc35\n")]);
        }
        then.extend([copy_done(), query("SELECT count(*) FROM t WHERE owner = 'c35'")]);
        let got = s.run(&first, &then, 3).await;
        let (copied, count) = if with_sync { ("C(COPY 3)", "D(3)") } else { ("C(COPY 2)", "D(2)") };
        let want: &[&str] = &["G", copied, "Z(I)", count, "C(SELECT 1)", "Z(I)"];
        assert_eq!(words(&got), expect(&[&SLOW_WORDS, want]), "a Sync in the data: {with_sync}");
        if !with_sync {
            assert!(s.resets() >= 2, "{} resets: the count was not held back for b", s.resets());
        }
        still_a(&mut s).await;
        s.stop_b().await;
    }
}

/// A COPY FROM STDIN held back as a driver sends it (the query alone, its data only once the
/// CopyInResponse came): the copy starts on a's next connection, and a's data, CopyDone and
/// the query behind them run there, with no stall, then the connection goes back to b.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_back_copy_waits_for_its_data_without_a_stall() {
    let mut s = scene().await;
    send(&mut s.ra, &query(SLOW)).await;
    tokio::time::sleep(Duration::from_millis(250)).await;
    send(&mut s.ra, &query("COPY t FROM STDIN")).await;
    let got = read_copy_in(&mut s).await;
    assert_eq!(words(&got), expect(&[&SLOW_WORDS, &["G"]]));
    assert!(s.resets() >= 2, "{} resets: the COPY was not held back for b", s.resets());
    // Well past the 50 ms with b waiting: the data, CopyDone and the query still go through.
    tokio::time::sleep(Duration::from_millis(200)).await;
    send(&mut s.ra, &copy_data("1\theld\n")).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    send(&mut s.ra, &cat(&[copy_data("2\theld\n"), flush(), copy_done()])).await;
    send(&mut s.ra, &query("SELECT count(*) FROM t WHERE owner = 'held'")).await;
    let (got, closed) = read_ready(&mut s.ra, 2, Duration::from_secs(10)).await;
    assert!(!closed, "a's session ended: {:?}", words(&got));
    assert_eq!(words(&got), ["C(COPY 2)", "Z(I)", "D(2)", "C(SELECT 1)", "Z(I)"]);
    let before = s.b_ran.load(Ordering::SeqCst);
    assert!(
        eventually(Duration::from_secs(3), || async { s.b_ran.load(Ordering::SeqCst) > before + 1 }).await,
        "b never got the connection back after a's copy"
    );
    s.stop_b().await;
}

/// A Flush right behind a Sync (and leading the held-back part), then an extended batch: the
/// Flush goes at once (it starts nothing), the batch is held back for b, and every reply comes
/// as on PostgreSQL, the unnamed statement a's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_behind_a_sync_does_not_carry_the_next_batch_along() {
    let cases: [Case; 2] = [
        (
            "the Flush sent with the slow query",
            vec![parse("", "SELECT 41"), bind("", ""), execute(""), sync(), flush()],
            vec![parse("", "SELECT 42"), bind("", ""), execute(""), sync(), flush(), query("SELECT 43")],
            4,
        ),
        (
            "the Flush leading what waits",
            vec![parse("", "SELECT 41"), bind("", ""), execute(""), sync()],
            vec![flush(), flush(), bind("", ""), execute(""), sync(), flush()],
            3,
        ),
    ];
    for (what, first, then, readies) in cases {
        let want = direct(&first, &then, readies).await;
        let mut s = scene().await;
        let got = s.run(&first, &then, readies).await;
        assert_eq!(words(&got), want, "{what}: through pgtenant and on PostgreSQL");
        assert!(s.resets() >= 2, "{what}: {} resets: the batch was not held back for b", s.resets());
        still_a(&mut s).await;
        s.stop_b().await;
    }
    // The batch's statement runs as a (its schema) after the handoff.
    let mut s = scene().await;
    let first = [sync(), flush()];
    let then =
        [flush(), parse("", "SELECT current_schema()::text || ':batch'"), bind("", ""), execute(""), sync()];
    let got = s.run(&first, &then, 3).await;
    let row = mine(&s, ":batch");
    assert_eq!(words(&got), expect(&[&SLOW_WORDS, &["Z(I)", &row, "C(SELECT 1)", "Z(I)"]]));
    assert!(s.resets() >= 2, "{} resets: the batch was not held back for b", s.resets());
    s.stop_b().await;
}

/// An extended COPY (Parse of a COPY FROM STDIN, Bind, Execute, its data, CopyDone, Sync)
/// behind the slow query: held back whole and run on a's next connection; sent with the slow
/// query and its data 250 ms later, with a Sync before the data (read by the copy, as
/// PostgreSQL reads it) or only after it; answered in order, the count behind it right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_extended_copy_behind_the_slow_query_runs_whole() {
    let count = |owner: &str| query(&format!("SELECT count(*) FROM t WHERE owner = '{owner}'"));
    let ext = || vec![parse("", "COPY t FROM STDIN"), bind("", ""), execute("")];
    let cases: [Case; 3] = [
        (
            "held back whole",
            vec![],
            {
                let mut v = ext();
                v.extend([copy_data("1\te1\n2\te1\n"), copy_done(), sync(), count("e1")]);
                v
            },
            3,
        ),
        (
            "a Sync before its data",
            [ext(), vec![sync()]].concat(),
            { vec![copy_data("1\te2\n2\te2\n"), copy_done(), sync(), count("e2")] },
            3,
        ),
        (
            "a Flush before its data",
            [ext(), vec![flush()]].concat(),
            { vec![copy_data("1\te3\n"), flush(), copy_data("2\te3\n"), copy_done(), sync(), count("e3")] },
            3,
        ),
    ];
    for (what, first, then, readies) in cases {
        let mut s = scene().await;
        let got = s.run(&first, &then, readies).await;
        let want: &[&str] = &["G", "C(COPY 2)", "Z(I)", "D(2)", "C(SELECT 1)", "Z(I)"];
        assert_eq!(words(&got), expect(&[&SLOW_WORDS, want]), "{what}");
        if first.is_empty() {
            assert!(s.resets() >= 2, "{what}: {} resets: the COPY was not held back for b", s.resets());
        }
        still_a(&mut s).await;
        s.stop_b().await;
    }
}

/// A query a sends inside a copy it started with the slow query, before the server is in it
/// (held back then, as the copy's Query ends a unit): it goes once the copy starts, not held
/// forever, and PostgreSQL answers it as on one direct session (an ERROR, then a FATAL: the
/// protocol is lost). The session ends there; b goes on, and a's next client is a.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_inside_a_pending_copy_is_not_held_forever() {
    let first = [query("COPY t FROM STDIN"), copy_data("1\tinside\n")];
    let then = [query("SELECT 35"), copy_data("2\tinside\n"), copy_done()];
    let mut d = raw_direct("postgres").await;
    send(&mut d, &query("CREATE TEMP TABLE t (id int, owner text)")).await;
    read_ready(&mut d, 1, Duration::from_secs(10)).await;
    send(&mut d, &cat(&[query(SLOW), cat(&first), cat(&then)])).await;
    let (want, closed) = read_eof(&mut d, Duration::from_secs(10)).await;
    assert!(closed, "PostgreSQL kept the session: {:?}", words(&want));
    let mut s = scene().await;
    send(&mut s.ra, &cat(&[query(SLOW), cat(&first)])).await;
    tokio::time::sleep(Duration::from_millis(250)).await;
    send(&mut s.ra, &cat(&then)).await;
    let (got, closed) = read_eof(&mut s.ra, Duration::from_secs(10)).await;
    assert!(closed, "a's session did not end: {:?}", words(&got));
    assert_eq!(words(&got), words(&want), "through pgtenant and on PostgreSQL");
    assert_eq!(words(&got), expect(&[&SLOW_WORDS, &["G", "E(08P01)", "E(08P01,FATAL)"]]));
    let ca = s.h.client(&s.a.id).await;
    let got =
        rows(&ca, "SELECT current_schema(), count(*) FROM t WHERE owner = 'inside'").await.expect("count");
    assert_eq!(got, vec![vec![s.a.id.to_string(), "0".to_owned()]], "the failed copy left rows");
    let before = s.b_ran.load(Ordering::SeqCst);
    assert!(
        eventually(Duration::from_secs(3), || async { s.b_ran.load(Ordering::SeqCst) > before + 1 }).await,
        "b stopped after a's session ended"
    );
    s.stop_b().await;
}
