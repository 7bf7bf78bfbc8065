//! Containment of replies: after COPY/Sync orderings that PostgreSQL answers irregularly, a
//! server FATAL or a Terminate, every client gets exactly its own replies, never another's.

use std::time::{Duration, Instant};

use pgtenant::model::{Isolation, PoolMode};
use tokio::io::AsyncWriteExt;

use super::*;
use crate::support::raw::*;
use crate::support::*;

// ---- c. replies never cross clients -------------------------------------------------------

/// A COPY failing on its data with Syncs behind that data (see
/// [`a_copy_failing_behind_syncs_never_leaves_a_query_unanswered`]).
fn uncertain(name: &str) -> bool {
    name.contains("bad row")
}

/// Pipelines that derail a reply count made of "one ReadyForQuery per Sync": Syncs that the
/// server swallows during COPY IN, Syncs that each earn a ReadyForQuery after an error in a
/// simple-query COPY, then a query whose rows would reach the next client.
fn derailing_sequences(slow: bool) -> Vec<(&'static str, Vec<u8>)> {
    // Slow, the forged rows come after pgtenant has settled its count (and, on a model that
    // counted short, after it released the connection to the next client).
    let forged = query(if slow {
        "SELECT 104 AS id, 'forged' AS owner FROM pg_sleep(0.3)"
    } else {
        "SELECT 104 AS id, 'forged' AS owner"
    });
    let copy = "COPY t FROM STDIN";
    vec![
        (
            "Query COPY, Sync, CopyFail, Sync, forged query",
            cat(&[query(copy), sync(), copy_fail("stop"), sync(), forged.clone()]),
        ),
        (
            "Query COPY, bad row, Sync, CopyDone, forged query",
            cat(&[query(copy), copy_data("oops\n"), sync(), copy_done(), forged.clone()]),
        ),
        (
            "Query COPY, bad row, Sync, Sync, CopyDone, forged query",
            cat(&[query(copy), copy_data("oops\n"), sync(), sync(), copy_done(), forged.clone()]),
        ),
        (
            "Execute COPY, Sync, CopyFail, Sync, Sync, forged query",
            cat(&[
                parse("", copy),
                bind("", ""),
                execute(""),
                sync(),
                copy_fail("stop"),
                sync(),
                sync(),
                forged.clone(),
            ]),
        ),
        (
            "Execute COPY, row, Sync, Sync, CopyDone, Sync, forged query",
            cat(&[
                parse("", copy),
                bind("", ""),
                execute(""),
                copy_data("1\tok\n"),
                sync(),
                sync(),
                copy_done(),
                sync(),
                forged.clone(),
            ]),
        ),
        (
            "Execute COPY, bad row, Sync, Sync, CopyDone, Sync, forged query",
            cat(&[
                parse("", copy),
                bind("", ""),
                execute(""),
                copy_data("oops\n"),
                sync(),
                sync(),
                copy_done(),
                sync(),
                forged,
            ]),
        ),
    ]
}

/// Tenant a's raw client sends each derailing pipeline and then sits idle, still connected;
/// tenant b then uses the pool of one. b must get exactly its own results and no error: not a
/// reply a's pipeline earned (containment rule 1), and not a 53300 because a's idle session
/// kept the only server connection (rule 5; issue 16: an ordinary error must not take a
/// connection out of the pool). Then a's next query must not receive b's rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_never_cross_to_another_tenant_after_irregular_copy_and_sync() {
    let mut f = Failures::default();
    for mode in [Isolation::Schema, Isolation::Shared] {
        let (a, b) = tenant_pair(mode, Access::Write, 1).await;
        let h = start_quick(vec![a.clone(), b.clone()]).await;
        {
            let (ca, cb) = (h.client(&a.id).await, h.client(&b.id).await);
            assert_eq!(pid(&ca).await, pid(&cb).await, "{mode:?}: one shared server connection");
        }
        for (n, (name, bytes)) in derailing_sequences(true).into_iter().enumerate() {
            let what = format!("{mode:?}, {name}");
            let cb = h.client(&b.id).await;
            let mut attacker = raw_proxy(&h, &a.id).await;
            send(&mut attacker, &bytes).await;
            let (mut seen_by_a, _) = read_quiet(&mut attacker, Duration::from_millis(500)).await;
            let failures_before = f.0.len();
            // Tenant b now uses the pool of one: only its own results, no error. Its first
            // query is a simple one, which would take any rows that arrive as its own.
            for i in 0..4i32 {
                let secret = format!("b-secret-{n}-{i}");
                match rows(&cb, &format!("SELECT {i} AS id, '{secret}' AS owner")).await {
                    Ok(r) => f.check(r == vec![vec![i.to_string(), secret.clone()]], || {
                        format!("{what}: tenant b's simple query {i} returned {r:?}")
                    }),
                    Err(e) => f.0.push(format!("{what}: tenant b's simple query {i} failed: {}", why(&e))),
                }
                match cb.query("SELECT $1::int AS id, $2::text AS owner", &[&i, &secret]).await {
                    Ok(r) => {
                        let got: Vec<(i32, String)> = r.iter().map(|r| (r.get(0), r.get(1))).collect();
                        f.check(got == vec![(i, secret.clone())], || {
                            format!("{what}: tenant b's query {i} returned {got:?}")
                        });
                    }
                    Err(e) => f.0.push(format!("{what}: tenant b's query {i} failed: {}", why(&e))),
                }
                match rows(&cb, "SELECT owner FROM items").await {
                    Ok(r) => f.check(r.len() == 3 && r.iter().all(|row| row[0] == b.id), || {
                        format!("{what}: tenant b's items query {i} returned {r:?}")
                    }),
                    Err(e) => f.0.push(format!("{what}: tenant b's items query {i} failed: {}", why(&e))),
                }
            }
            if f.0.len() > failures_before {
                f.0.push(format!("{what}: (what tenant a had received: {:?})", summary(&seen_by_a)));
            }
            // The other way round: the attacker's next query must not receive b's results.
            let _ = attacker.write_all(&query("SELECT 'a-own'")).await;
            let (more, _) = read_ready(&mut attacker, 1, Duration::from_secs(3)).await;
            seen_by_a.extend_from_slice(&more);
            let leaked = seen_by_a.windows(8).any(|w| w == b"b-secret");
            f.check(!leaked, || {
                format!("{what}: tenant a received tenant b's rows: {:?}", summary(&seen_by_a))
            });
        }
    }
    f.assert_none();
}

/// COPY/Sync orderings that pgtenant's reply model follows exactly (including Execute of a
/// COPY with two Syncs before CopyDone) get PostgreSQL's replies, in both pool modes, and the
/// pool of one is usable after each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn irregular_copy_and_sync_get_postgres_replies_and_the_pool_survives() {
    copy_against_postgres(false).await;
}

/// A COPY that fails on its data while the client has already sent Syncs behind that data:
/// which Syncs the copy consumed is invisible to pgtenant (see `client/pipeline.rs`), so the
/// server connection is closed rather than reused. The client may then get less than
/// PostgreSQL sends, but never anything else, and never a connection left open with a query
/// that will not be answered. Each ordering runs three times: the outcome depends on whether
/// the error arrives before or after pgtenant queued the later messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_failing_behind_syncs_never_leaves_a_query_unanswered() {
    copy_against_postgres(true).await;
}

/// Sends COPY/Sync orderings (the uncertain ones, or the others) straight to PostgreSQL and
/// through pgtenant and compares the transcripts; then another client uses the pool of one.
async fn copy_against_postgres(uncertain_ones: bool) {
    let mut f = Failures::default();
    let mut sequences = derailing_sequences(false);
    sequences.push((
        "Execute COPY, Sync, Sync, row, CopyDone, Sync",
        cat(&[
            parse("", "COPY t FROM STDIN"),
            bind("", ""),
            execute(""),
            sync(),
            sync(),
            copy_data("2\ttwo\n"),
            copy_done(),
            sync(),
        ]),
    ));
    sequences.push((
        "Query COPY, Sync, Sync, row, CopyDone, then a query",
        cat(&[
            query("COPY t FROM STDIN"),
            sync(),
            sync(),
            copy_data("3\tthree\n"),
            copy_done(),
            query("SELECT count(*) > 0 FROM t WHERE id = 3"),
        ]),
    ));
    sequences.retain(|(name, _)| uncertain(name) == uncertain_ones);
    let tenants = [
        with_mode(tenant_db("cnsync").await, PoolMode::Transaction, 1),
        with_mode(tenant_db("cnsync").await, PoolMode::Session, 1),
    ];
    for t in &tenants {
        admin(&t.database)
            .await
            .batch_execute(&format!(
                "CREATE TABLE t (id int, owner text); ALTER TABLE t OWNER TO \"{}\"",
                t.role
            ))
            .await
            .expect("table");
    }
    let h = start_quick(tenants.to_vec()).await;
    // PostgreSQL's answers, once per ordering.
    let mut wants = Vec::new();
    for (_, bytes) in &sequences {
        let mut direct = raw_direct(&tenants[0].database).await;
        send(&mut direct, bytes).await;
        wants.push(summary(&read_quiet(&mut direct, Duration::from_millis(300)).await.0));
    }
    for t in &tenants {
        let mode = t.pool_mode.expect("mode");
        let runs = sequences
            .iter()
            .zip(&wants)
            .flat_map(|run| std::iter::repeat_n(run, if uncertain_ones { 3 } else { 1 }));
        for ((name, bytes), want) in runs {
            let what = format!("{mode:?}, {name}");
            let mut s = raw_proxy(&h, &t.id).await;
            send(&mut s, bytes).await;
            let expected_ready = want.iter().filter(|m| m.starts_with('Z')).count();
            let (mut got, mut closed) = read_ready(&mut s, expected_ready, Duration::from_secs(3)).await;
            if !closed {
                let (more, eof) = read_quiet(&mut s, Duration::from_millis(200)).await;
                got.extend_from_slice(&more);
                closed = eof;
            }
            let got = summary(&got);
            if uncertain_ones {
                f.check(got.len() <= want.len() && got[..] == want[..got.len()], || {
                    format!("{what}: not PostgreSQL's replies:\n    PostgreSQL: {want:?}\n    pgtenant:   {got:?}")
                });
                f.check(got == *want || closed, || {
                    format!(
                        "{what}: replies missing, connection still open (3 s):\n    PostgreSQL: {want:?}\n    pgtenant:   {got:?}"
                    )
                });
            } else {
                f.check(got == *want, || {
                    format!("{what}:\n    PostgreSQL: {want:?}\n    pgtenant:   {got:?}")
                });
            }
            drop(s);
            // The pool of one is usable by another client right after.
            let started = Instant::now();
            let next = tokio_postgres::connect(&h.conninfo(&t.id), tokio_postgres::NoTls).await;
            match next {
                Ok((c, conn)) => {
                    tokio::spawn(conn);
                    match c.query_one("SELECT 'next-client'::text", &[]).await {
                        Ok(r) => {
                            f.check(r.get::<_, String>(0) == "next-client", || format!("{what}: next client"))
                        }
                        Err(e) => f.0.push(format!("{what}: the next client's query failed: {}", why(&e))),
                    }
                }
                Err(e) => f.0.push(format!("{what}: the next client could not log in: {}", why(&e))),
            }
            f.check(started.elapsed() < Duration::from_secs(2), || {
                format!("{what}: the next client waited {:?} for the pool of one", started.elapsed())
            });
        }
    }
    f.assert_none();
}

// ---- f. FATAL, Terminate and malformed frames ----------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_fatal_and_terminate_deliver_exactly_what_postgres_sends() {
    let mut f = Failures::default();
    for mode in [PoolMode::Transaction, PoolMode::Session] {
        let t = with_mode(tenant_db("cnfatal").await, mode, 1);
        let h = start_quick(vec![t.clone()]).await;
        let terminate_self = "SELECT pg_terminate_backend(pg_backend_pid())";
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("FATAL from the server (simple query)", query(terminate_self)),
            (
                "FATAL from the server (extended query)",
                cat(&[parse("", terminate_self), bind("", ""), execute(""), sync()]),
            ),
            (
                "Query then Terminate",
                cat(&[query("SELECT 'before-terminate' FROM pg_sleep(0.3)"), terminate()]),
            ),
            (
                "extended query then Terminate",
                cat(&[
                    parse("", "SELECT 'ext-before-terminate' FROM pg_sleep(0.3)"),
                    bind("", ""),
                    execute(""),
                    sync(),
                    terminate(),
                ]),
            ),
        ];
        for (name, bytes) in cases {
            let what = format!("{mode:?}, {name}");
            let mut direct = raw_direct(&t.database).await;
            send(&mut direct, &bytes).await;
            let (want, _) = read_eof(&mut direct, Duration::from_secs(5)).await;
            let mut s = raw_proxy(&h, &t.id).await;
            send(&mut s, &bytes).await;
            let (got, closed) = read_eof(&mut s, Duration::from_secs(5)).await;
            let (want, got) = (summary(&want), summary(&got));
            f.check(closed, || format!("{what}: pgtenant did not close the client's connection"));
            f.check(got == want, || format!("{what}:\n    PostgreSQL: {want:?}\n    pgtenant:   {got:?}"));
            f.check(!got.iter().any(|m| m.starts_with("E(08006")), || {
                format!("{what}: pgtenant added 08006: {got:?}")
            });
            // The pool of one serves the next client.
            match tokio_postgres::connect(&h.conninfo(&t.id), tokio_postgres::NoTls).await {
                Ok((c, conn)) => {
                    tokio::spawn(conn);
                    if let Err(e) = c.query_one("SELECT 1", &[]).await {
                        f.0.push(format!("{what}: the next client's query failed: {}", why(&e)));
                    }
                }
                Err(e) => f.0.push(format!("{what}: the next client could not log in: {}", why(&e))),
            }
        }
        // A malformed frame (length word 1) behind a query: the query's replies come first.
        let what = format!("{mode:?}, Query then a malformed frame");
        let bytes = cat(&[query("SELECT 'before-malformed' FROM pg_sleep(0.3)"), b"Q\0\0\0\x01".to_vec()]);
        let mut s = raw_proxy(&h, &t.id).await;
        send(&mut s, &bytes).await;
        let (got, closed) = read_eof(&mut s, Duration::from_secs(5)).await;
        let got = summary(&got);
        let want = ["T", "D(before-malformed)", "C(SELECT 1)", "Z(I)"];
        f.check(closed, || format!("{what}: not closed"));
        f.check(
            got.len() >= 4 && got[..4] == want && got[4..].iter().all(|m| m.starts_with("E(08P01")),
            || format!("{what}: expected {want:?} (then at most a protocol error), got {got:?}"),
        );
    }
    f.assert_none();
}

/// A connection pgtenant has lost track of (a COPY failing behind a Sync) gets its resync
/// marker query only between the client's messages: a CopyData that is half forwarded when the
/// server's replies reveal the loss must not take the marker's bytes inside it (they would
/// shift the client's remaining bytes into messages pgtenant never read).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_resync_marker_never_lands_inside_a_half_sent_message() {
    let t = with_mode(tenant_db("rsmid").await, PoolMode::Transaction, 1);
    admin(&t.database)
        .await
        .batch_execute(&format!("CREATE TABLE t (id int, owner text); ALTER TABLE t OWNER TO \"{}\"", t.role))
        .await
        .expect("table");
    let h = start_quick(vec![t.clone()]).await;
    let mut s = raw_proxy(&h, &t.id).await;
    // A CopyData (ignored by the server outside COPY) declared 200 bytes long.
    let mut partial = vec![b'd'];
    partial.extend_from_slice(&204i32.to_be_bytes());
    partial.extend_from_slice(&[b'x'; 200]);
    let (head, tail) = partial.split_at(105);
    // The uncertain COPY, and the first half of the CopyData behind it, in one write.
    let uncertain = cat(&[query("COPY t FROM STDIN"), copy_data("oops\n"), sync(), copy_done()]);
    send(&mut s, &cat(&[uncertain, head.to_vec()])).await;
    let (_, closed) = read_quiet(&mut s, Duration::from_millis(500)).await;
    assert!(!closed, "the connection closed after the uncertain COPY");
    send(&mut s, &cat(&[tail.to_vec(), query("SELECT 'still-in-step'::text")])).await;
    let (got, closed) = read_ready(&mut s, 1, Duration::from_secs(3)).await;
    let got = summary(&got);
    assert!(!closed, "connection closed: {got:?}");
    assert_eq!(got, ["T", "D(still-in-step)", "C(SELECT 1)", "Z(I)"], "{got:?}");
}

/// A client whose connection pgtenant lost track of (a COPY failing behind a Sync), and whose
/// resync marker is still owed (behind a slow query), sends more queries: they go behind the
/// marker. Once the marker's reply is in, the connection must not be released while they are
/// owed: the reset at release would take the first one's reply (a DO block: CommandComplete
/// and ReadyForQuery) for its own, and the next client of the pool of one (same tenant) would
/// get the second one's rows as the answer to its query. The client must get both answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_sent_behind_the_resync_marker_are_answered_to_their_client() {
    let t = with_mode(tenant_db("rsbehind").await, PoolMode::Transaction, 1);
    admin(&t.database)
        .await
        .batch_execute(&format!("CREATE TABLE t (id int, owner text); ALTER TABLE t OWNER TO \"{}\"", t.role))
        .await
        .expect("table");
    let h = start_quick(vec![t.clone()]).await;
    let other = h.client(&t.id).await;
    let mut s = raw_proxy(&h, &t.id).await;
    // The uncertain COPY, then a query that keeps the marker (sent once the error is routed)
    // waiting 300 ms on the server.
    let uncertain = cat(&[
        query("COPY t FROM STDIN"),
        copy_data("oops\n"),
        sync(),
        copy_done(),
        query("SELECT pg_sleep(0.3)"),
    ]);
    send(&mut s, &uncertain).await;
    // Its error and two ReadyForQuery (the copy's, the Sync's) come at once.
    let (mut mine, _) = read_ready(&mut s, 2, Duration::from_secs(3)).await;
    // Behind the marker: a DO block, then a query whose rows are this client's only.
    let behind = cat(&[
        query("DO $$BEGIN PERFORM pg_sleep(0.4); END$$"),
        query("SELECT 'a-secret'::text FROM pg_sleep(0.4)"),
    ]);
    send(&mut s, &behind).await;
    // The other client asks for the pool's one connection meanwhile.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let got = tokio::time::timeout(Duration::from_secs(5), rows(&other, "SELECT 'b-own'::text")).await;
    let (more, _) = read_ready(&mut s, 5 - ready_count(&mine), Duration::from_secs(3)).await;
    mine.extend_from_slice(&more);
    let mut f = Failures::default();
    match got {
        Ok(Ok(r)) => f.check(r == vec![vec!["b-own".to_owned()]], || {
            format!("the other client's query returned {r:?}")
        }),
        Ok(Err(e)) => f.0.push(format!("the other client's query failed: {}", why(&e))),
        Err(_) => f.0.push("the other client's query got no answer in 5 s".into()),
    }
    let mine = summary(&mine);
    let want = [
        "G",
        "E(22P02)",
        "Z(I)",
        "Z(I)",
        "T",
        "D()",
        "C(SELECT 1)",
        "Z(I)",
        "C(DO)",
        "Z(I)",
        "T",
        "D(a-secret)",
        "C(SELECT 1)",
        "Z(I)",
    ];
    f.check(mine == want, || format!("the client's own replies: {mine:?}, expected {want:?}"));
    f.assert_none();
}

/// A COPY FROM STDIN that fails before it reads any data (into a view: the error comes after
/// CopyInResponse, from the copy's own checks) with a Sync sent ahead of the data: the server
/// reads that Sync after the error and answers it with a ReadyForQuery of its own. pgtenant
/// must not take that ReadyForQuery for the next query's and release the connection while the
/// query still runs: the next client of the tenant would get its rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_failing_before_its_data_does_not_hand_a_query_to_the_next_client() {
    let t = with_mode(tenant_db("cpview").await, PoolMode::Transaction, 1);
    admin(&t.database)
        .await
        .batch_execute(&format!("CREATE VIEW v AS SELECT 1 AS x; ALTER VIEW v OWNER TO \"{}\"", t.role))
        .await
        .expect("view");
    let h = start_quick(vec![t.clone()]).await;
    let bytes = cat(&[
        query("COPY v FROM STDIN"),
        sync(),
        copy_data("1\n"),
        copy_done(),
        query("SELECT 'a-secret'::text FROM pg_sleep(0.5)"),
    ]);
    let mut direct = raw_direct(&t.database).await;
    send(&mut direct, &bytes).await;
    let want = summary(&read_ready(&mut direct, 3, Duration::from_secs(3)).await.0);
    let other = h.client(&t.id).await;
    let mut s = raw_proxy(&h, &t.id).await;
    send(&mut s, &bytes).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut f = Failures::default();
    match tokio::time::timeout(Duration::from_secs(5), rows(&other, "SELECT 'b-own'::text")).await {
        Ok(Ok(r)) => f.check(r == vec![vec!["b-own".to_owned()]], || {
            format!("the other client's query returned {r:?}")
        }),
        Ok(Err(e)) => f.0.push(format!("the other client's query failed: {}", why(&e))),
        Err(_) => f.0.push("the other client's query got no answer in 5 s".into()),
    }
    let got = summary(&read_ready(&mut s, 3, Duration::from_secs(3)).await.0);
    f.check(got == want, || {
        format!("the client's replies:\n    PostgreSQL: {want:?}\n    pgtenant:   {got:?}")
    });
    f.assert_none();
}
