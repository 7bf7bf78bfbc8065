//! Containment of prepared statements and portals: each belongs to the client that made it;
//! another client naming it gets what PostgreSQL would say to a session without it.

use std::time::Duration;

use pgtenant::model::PoolMode;
use tokio::io::AsyncRead;
use tokio::net::{TcpStream, UnixStream};

use super::*;
use crate::support::raw::*;
use crate::support::*;

// ---- d. statements and portals belong to their client -------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_and_portals_belong_to_their_client() {
    let t = with_mode(tenant_db("cnstmt").await, PoolMode::Transaction, 1);
    admin(&t.database)
        .await
        .batch_execute(&format!("CREATE TABLE marks (x int); ALTER TABLE marks OWNER TO \"{}\"", t.role))
        .await
        .expect("table");
    let h = start_quick(vec![t.clone()]).await;
    let mut f = Failures::default();

    // Another client of the same tenant plants server-side state on the one backend: an SQL
    // statement prepared inside a DO block (with a side effect), a WITH HOLD cursor, and a
    // protocol-level statement of its own.
    let planter = h.client(&t.id).await;
    let p0 = pid(&planter).await;
    planter
        .batch_execute("DO $$BEGIN EXECUTE 'PREPARE s_planted AS INSERT INTO marks VALUES (1)'; END$$")
        .await
        .expect("plant a statement");
    plant_cursor(&t.database, &planter, "held", "held-secret").await;
    let own = planter.prepare("SELECT 'planter-secret'::text").await.expect("prepare");
    assert_eq!(planter.query_one(&own, &[]).await.expect("own").get::<_, String>(0), "planter-secret");
    let planted = rows(
        &planter,
        "SELECT (SELECT count(*) FROM pg_prepared_statements WHERE name = 's_planted'),
                (SELECT count(*) FROM pg_cursors WHERE name = 'held'),
                (SELECT name FROM pg_prepared_statements WHERE statement LIKE '%planter-secret%' LIMIT 1),
                pg_backend_pid()",
    )
    .await
    .expect("planted state");
    assert_eq!(planted[0][0..2], ["1", "1"], "the planted statement and cursor exist: {planted:?}");
    assert_eq!(planted[0][3], p0.to_string(), "same backend");
    let server_name = planted[0][2].clone();
    assert_ne!(server_name, "NULL", "the planter's statement is on the server: {planted:?}");

    // The client under test, raw; the same sequences go straight to PostgreSQL (where none of
    // the planted state exists) for the reference answers.
    let mut s = raw_proxy(&h, &t.id).await;
    let mut direct = raw_direct(&t.database).await;
    let mut transcript = Vec::new();
    let planted_steps: Vec<(&str, Vec<u8>)> = vec![
        (
            "Bind+Execute of a statement planted by another client",
            cat(&[bind("", "s_planted"), execute(""), sync()]),
        ),
        ("Describe of a statement planted by another client", cat(&[describe(b'S', "s_planted"), sync()])),
        (
            "Bind of another client's server-side statement name",
            cat(&[bind("", &server_name), execute(""), sync()]),
        ),
        (
            "Describe of another client's server-side statement name",
            cat(&[describe(b'S', &server_name), sync()]),
        ),
        ("Close of another client's server-side statement name", cat(&[close(b'S', &server_name), sync()])),
        ("Execute of a portal never bound", cat(&[execute("p_never"), sync()])),
        ("Execute of another client's WITH HOLD cursor", cat(&[execute("held"), sync()])),
        ("Describe of another client's WITH HOLD cursor", cat(&[describe(b'P', "held"), sync()])),
        // A Bind refused before it reaches the server makes no portal: the name stays
        // another client's.
        (
            "a refused Bind naming another client's WITH HOLD cursor, then Execute of it",
            cat(&[bind("held", "s_never"), sync(), execute("held"), sync()]),
        ),
        (
            "a refused Bind of the unnamed statement naming that cursor, then Execute of it",
            cat(&[bind("held", ""), sync(), execute("held"), sync(), describe(b'P', "held"), sync()]),
        ),
        ("duplicate named Parse", cat(&[parse("dup", "SELECT 1"), parse("dup", "SELECT 2"), sync()])),
        ("the duplicate's first statement still runs", cat(&[bind("", "dup"), execute(""), sync()])),
        ("prepare a text", cat(&[parse("s_a", "SELECT 42"), sync()])),
        (
            "Parse of an already-prepared text in an aborted transaction",
            cat(&[query("BEGIN"), query("SELECT 1/0"), parse("s_b", "SELECT 42"), sync(), query("ROLLBACK")]),
        ),
        (
            "the statement skipped in the aborted transaction does not exist",
            cat(&[bind("", "s_b"), execute(""), sync()]),
        ),
        // After an error the server skips to Sync: Parses behind it (of a text the server
        // connection has, of one it lacks, of the failing text again) prepare nothing.
        (
            "Parses behind a failing Parse",
            cat(&[
                parse("s_bad", "SELECT * FROM no_such_table"),
                parse("s_e", "SELECT 42"),
                parse("s_f", "SELECT 43"),
                parse("s_g", "SELECT * FROM no_such_table"),
                sync(),
            ]),
        ),
        (
            "the skipped statements do not exist",
            cat(&[
                bind("", "s_e"),
                execute(""),
                sync(),
                bind("", "s_f"),
                execute(""),
                sync(),
                describe(b'S', "s_g"),
                sync(),
            ]),
        ),
        // Issue 16 on the wire: the error has reached the client before it sends the rest of
        // its pipeline and the Sync.
        (
            "an error flushed before the rest of the pipeline",
            cat(&[parse("s_h0", "SELECT * FROM no_such_table"), msg(b'H', &[])]),
        ),
        (
            "the rest of that pipeline, then its Sync",
            cat(&[
                parse("s_h", "SELECT 44"),
                bind("", "s_h"),
                execute(""),
                parse("s_a2", "SELECT 42"),
                sync(),
            ]),
        ),
        (
            "statements skipped after the flushed error do not exist",
            cat(&[bind("", "s_h"), execute(""), sync(), describe(b'S', "s_a2"), sync()]),
        ),
        (
            "the same names prepare afterwards",
            cat(&[
                parse("s_h", "SELECT 44"),
                parse("s_a2", "SELECT 42"),
                bind("", "s_h"),
                execute(""),
                bind("", "s_a2"),
                execute(""),
                sync(),
            ]),
        ),
    ];
    compare_steps(&mut f, &mut direct, &mut s, &planted_steps, &mut transcript).await;
    for secret in [&b"held-secret"[..], b"planter-secret"] {
        f.check(!transcript.windows(secret.len()).any(|w| w == secret), || {
            format!("the client received another client's rows ({})", String::from_utf8_lossy(secret))
        });
    }
    // The server never ran the planted statement; the planted statement and cursor are intact.
    let after = rows(
        &planter,
        "SELECT (SELECT count(*) FROM marks),
                (SELECT count(*) FROM pg_prepared_statements WHERE name = 's_planted'),
                (SELECT count(*) FROM pg_cursors WHERE name = 'held'),
                pg_backend_pid()",
    )
    .await;
    match after {
        Ok(after) => {
            f.check(after[0][0] == "0", || {
                format!("the planted statement ran: {} row(s) in marks", after[0][0])
            });
            f.check(after[0][1..] == [String::from("1"), "1".into(), p0.to_string()], || {
                format!("the planted state changed (statement, cursor, pid): {:?}", &after[0][1..])
            });
        }
        Err(e) => f.0.push(format!("the planter's check failed: {}", why(&e))),
    }
    match planter.query_one(&own, &[]).await {
        Ok(r) => f.check(r.get::<_, String>(0) == "planter-secret", || "planter's own statement".into()),
        Err(e) => f.0.push(format!("the planter's own statement no longer works: {}", why(&e))),
    }

    // DEALLOCATE ALL / DISCARD ALL end the client's statements (they run on the server too).
    let reset_steps: Vec<(&str, Vec<u8>)> = vec![
        (
            "DEALLOCATE ALL, then Bind of the old name",
            cat(&[
                parse("s_c", "SELECT 7"),
                sync(),
                query("DEALLOCATE ALL"),
                bind("", "s_c"),
                execute(""),
                sync(),
            ]),
        ),
        (
            "DISCARD ALL, then Bind of the old name",
            cat(&[
                parse("s_d", "SELECT 8"),
                sync(),
                query("DISCARD ALL"),
                bind("", "s_d"),
                execute(""),
                sync(),
            ]),
        ),
        // Pipelined behind an earlier Sync: that Sync's ReadyForQuery comes while DEALLOCATE
        // ALL still runs (it sleeps first), and must not settle what the client's names are.
        (
            "Sync, then a slow DEALLOCATE ALL, then Parse of a deallocated name, pipelined",
            cat(&[
                parse("s_p", "SELECT 10"),
                sync(),
                bind("", "s_p"),
                execute(""),
                sync(),
                query("SELECT pg_sleep(0.3); DEALLOCATE ALL"),
                parse("s_p", "SELECT 11"),
                bind("", "s_p"),
                execute(""),
                sync(),
            ]),
        ),
        (
            "Sync, then a slow DEALLOCATE ALL, then Bind of a deallocated name, pipelined",
            cat(&[
                parse("s_q", "SELECT 12"),
                bind("", "s_q"),
                execute(""),
                sync(),
                query("SELECT pg_sleep(0.3); DEALLOCATE ALL"),
                bind("", "s_q"),
                execute(""),
                sync(),
            ]),
        ),
        // DEALLOCATE ALL in an unnamed Parse, behind an earlier Sync and with no Sync of its
        // own yet: the earlier Sync's ReadyForQuery settles nothing, and the Bind of a
        // deallocated name behind it in the same batch fails naming the client's statement.
        (
            "Sync, then DEALLOCATE ALL in a Parse, then Bind of a deallocated name, one batch",
            cat(&[
                parse("s_e", "SELECT 14"),
                sync(),
                parse("", "DEALLOCATE ALL"),
                bind("", ""),
                execute(""),
                bind("", "s_e"),
                execute(""),
                sync(),
            ]),
        ),
        // Statement texts that name DEALLOCATE or DISCARD (here in a literal) followed in the
        // same Sync batch by a Bind of a named statement or a simple query: what waits for
        // their replies must not wait for a Sync behind it (the server sends nothing before).
        (
            "a text naming DISCARD, then a simple query, one batch",
            cat(&[parse("", "SELECT 'discard'"), bind("", ""), execute(""), query("SELECT 15"), sync()]),
        ),
        (
            "a named statement naming DEALLOCATE bound twice in one batch",
            cat(&[
                parse("s_f", "SELECT 'deallocate'::text"),
                bind("", "s_f"),
                execute(""),
                bind("", "s_f"),
                execute(""),
                sync(),
            ]),
        ),
        (
            "a named Parse whose text contains 'discarded', alone",
            cat(&[parse("s_g", "SELECT 'discarded'::text"), sync()]),
        ),
        // The same behind a COPY FROM STDIN the client ended in the batch: the server holds
        // the COPY's CommandComplete until a Sync or Flush too.
        (
            "a COPY naming DISCARD ended by CopyDone, then Bind of a named statement, one batch",
            cat(&[
                parse("s_h", "SELECT 16"),
                sync(),
                parse("", "COPY marks FROM STDIN -- discard"),
                bind("", ""),
                execute(""),
                copy_done(),
                bind("", "s_h"),
                execute(""),
                sync(),
            ]),
        ),
        (
            "the client can prepare again afterwards",
            cat(&[parse("s_c", "SELECT 9"), bind("", "s_c"), execute(""), sync()]),
        ),
    ];
    let mut reset_transcript = Vec::new();
    compare_steps(&mut f, &mut direct, &mut s, &reset_steps, &mut reset_transcript).await;
    // The client named no statement of pgtenant's: no reply names one either (a Bind sent
    // with a stale server name would fail naming it).
    f.check(!reset_transcript.windows(4).any(|w| w == b"pgt_"), || {
        format!("a reply names pgtenant's statements: {:?}", String::from_utf8_lossy(&reset_transcript))
    });
    drop(s);
    // pgtenant knows its server statements went with them: the planter's statement works.
    match planter.query_one(&own, &[]).await {
        Ok(r) => f.check(r.get::<_, String>(0) == "planter-secret", || "planter's own statement".into()),
        Err(e) => f.0.push(format!(
            "after another client's DEALLOCATE ALL, the planter's statement fails: {}",
            why(&e)
        )),
    }
    f.assert_none();
}

/// A transaction-mode tenant with a pool of one, and a client of it that left a WITH HOLD
/// cursor `held` (reading `held-secret`) on the pool's one server connection.
async fn with_planted_cursor(db: &str) -> (TenantConfig, Harness, tokio_postgres::Client) {
    let t = with_mode(tenant_db(db).await, PoolMode::Transaction, 1);
    let h = start_quick(vec![t.clone()]).await;
    let planter = h.client(&t.id).await;
    plant_cursor(&t.database, &planter, "held", "held-secret").await;
    (t, h, planter)
}

/// Portal names the client does not hold on its current server connection never reach
/// another client's cursor there: a Bind the server rejects (the name is another client's
/// WITH HOLD cursor), a DECLARE that fails, and a portal the client bound in an earlier
/// transaction (on a connection it gave back) all leave the name unknown, so an Execute of it
/// gets 34000 from pgtenant instead of the other client's rows. Each failed on main (the
/// client received `held-secret` or `cur-secret`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn portal_names_never_reach_another_clients_cursor() {
    let (t, h, planter) = with_planted_cursor("cnportal").await;
    let mut s = raw_proxy(&h, &t.id).await;
    let mut f = Failures::default();
    // Each step pipelined whole: the Execute is staged before the reply that decides whether
    // its portal exists.
    let steps: Vec<(&str, Vec<u8>, usize, &str)> = vec![
        (
            "a Bind the server rejects (42P03), then Execute of its portal",
            cat(&[
                parse("s_own", "SELECT 'own'::text"),
                sync(),
                bind("held", "s_own"),
                sync(),
                execute("held"),
                sync(),
            ]),
            3,
            "E(34000)",
        ),
        (
            "a DECLARE that fails (25P01), then Execute of its name",
            cat(&[query("DECLARE held CURSOR FOR SELECT 'mine'::text"), execute("held"), sync()]),
            2,
            "E(34000)",
        ),
        (
            "the client binds portal cur and runs it in one batch",
            cat(&[parse("s_cur", "SELECT 1"), bind("cur", "s_cur"), execute("cur"), sync()]),
            1,
            "C(SELECT 1)",
        ),
    ];
    let mut transcript = Vec::new();
    for (name, bytes, syncs, want) in &steps {
        send(&mut s, bytes).await;
        let (got, _) = read_step(&mut s, *syncs).await;
        let got_summary = summary(&got);
        f.check(got_summary.iter().any(|m| m == want), || format!("{name}: {got_summary:?}, want {want}"));
        transcript.extend_from_slice(&got);
    }
    // Another client plants a cursor under the name this client used before.
    plant_cursor(&t.database, &planter, "cur", "cur-secret").await;
    send(&mut s, &cat(&[execute("cur"), sync()])).await;
    let (got, _) = read_step(&mut s, 1).await;
    f.check(summary(&got).first().is_some_and(|m| m.starts_with("E(34000")), || {
        format!("Execute of a portal bound in an earlier transaction: {:?}", summary(&got))
    });
    transcript.extend_from_slice(&got);
    for secret in [&b"held-secret"[..], b"cur-secret"] {
        f.check(!transcript.windows(secret.len()).any(|w| w == secret), || {
            format!("the client received another client's rows ({})", String::from_utf8_lossy(secret))
        });
    }
    f.assert_none();
}

/// A DECLARE carried by Parse/Bind/Execute declares its cursor at the Execute, not at the
/// Parse: when that Execute fails (42P03: the name is another client's WITH HOLD cursor on
/// this connection) and a ROLLBACK TO SAVEPOINT keeps the transaction going, an Execute of
/// the name must not reach the other client's cursor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declare_through_parse_that_fails_at_execute_leaves_the_name_unknown() {
    let (t, h, _planter) = with_planted_cursor("cnpdecl").await;
    let mut s = raw_proxy(&h, &t.id).await;
    let mut transcript = Vec::new();
    let steps: Vec<(Vec<u8>, usize)> = vec![
        (query("BEGIN; SAVEPOINT sp"), 1),
        (
            cat(&[
                parse("", "DECLARE held CURSOR FOR SELECT 'mine'::text"),
                bind("", ""),
                execute(""),
                sync(),
            ]),
            1,
        ),
        (query("ROLLBACK TO SAVEPOINT sp"), 1),
        (cat(&[execute("held"), sync()]), 1),
        (query("ROLLBACK"), 1),
    ];
    for (bytes, syncs) in &steps {
        send(&mut s, bytes).await;
        let (got, _) = read_step(&mut s, *syncs).await;
        transcript.extend_from_slice(&got);
    }
    let secret = b"held-secret";
    assert!(
        !transcript.windows(secret.len()).any(|w| w == secret),
        "the client received another client's cursor rows: {:?}",
        summary(&transcript)
    );
}

/// A named statement that DECLAREs a cursor, prepared in one transaction and executed in a
/// later one (on a connection checked out again), declares the cursor there: PostgreSQL then
/// answers an Execute and a Describe of the cursor's portal; so must pgtenant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepared_declare_run_in_a_later_transaction_makes_its_portal() {
    let steps: Vec<(&str, Vec<u8>)> = vec![
        ("prepare", cat(&[parse("s_decl", "DECLARE c CURSOR FOR SELECT 'row'::text"), sync()])),
        ("begin", query("BEGIN")),
        (
            "run the DECLARE, then Describe and Execute its portal",
            cat(&[bind("", "s_decl"), execute(""), describe(b'P', "c"), execute("c"), sync()]),
        ),
        ("commit", query("COMMIT")),
    ];
    same_as_postgres("cnpdecl2", &steps).await;
}

/// Messages that wait for a pending portal (a DECLARE's reply, a Bind across a Sync) in
/// batches that end in Flush, not Sync: PostgreSQL answers each at once; pgtenant must not
/// hang them until a timeout, nor answer otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_portals_in_flush_batches_answer_as_postgres() {
    let flush = || msg(b'H', &[]);
    let steps: Vec<(&str, Vec<u8>)> = vec![
        ("begin", query("BEGIN")),
        (
            "unnamed Parse of a DECLARE, Execute of the cursor, Flush",
            cat(&[
                parse("", "DECLARE c1 CURSOR FOR SELECT 'one'::text"),
                bind("", ""),
                execute(""),
                execute("c1"),
                flush(),
            ]),
        ),
        ("sync", sync()),
        (
            "named Parse of a DECLARE, Describe of the cursor, Flush",
            cat(&[
                parse("s_d2", "DECLARE c2 CURSOR FOR SELECT 'two'::text"),
                bind("", "s_d2"),
                execute(""),
                describe(b'P', "c2"),
                execute("c2"),
                flush(),
            ]),
        ),
        ("sync 2", sync()),
        (
            "a Bind across a Sync, then Execute with Flush",
            cat(&[parse("s_b", "SELECT 'three'::text"), bind("p3", "s_b"), sync(), execute("p3"), flush()]),
        ),
        ("sync 3", sync()),
        (
            "a DECLARE by query, then Execute with Flush",
            cat(&[query("DECLARE c4 CURSOR FOR SELECT 4"), execute("c4"), flush()]),
        ),
        ("sync 4", sync()),
        ("rollback", query("ROLLBACK")),
    ];
    same_as_postgres("cnpflush", &steps).await;
}

/// Messages that wait for the server's verdict on a statement name (a Parse or Close across
/// a Sync, the unnamed statement's Parse across a Sync, a query or Parse whose text may
/// DEALLOCATE or DISCARD) in batches that end in Flush: answered at once, as PostgreSQL
/// answers them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_statements_in_flush_batches_answer_as_postgres() {
    let flush = || msg(b'H', &[]);
    let steps: Vec<(&str, Vec<u8>)> = vec![
        ("begin", query("BEGIN")),
        ("prepare s_w", cat(&[parse("s_w", "SELECT 'w'::text"), sync()])),
        (
            "a named Parse across a Sync, then Bind/Execute with Flush",
            cat(&[parse("s_n", "SELECT 'n'::text"), sync(), bind("", "s_n"), execute(""), flush()]),
        ),
        ("sync 1", sync()),
        (
            "an unnamed Parse across a Sync, then Bind/Execute with Flush",
            cat(&[parse("", "SELECT 'u'::text"), sync(), bind("", ""), execute(""), flush()]),
        ),
        ("sync 2", sync()),
        (
            "a query that may DISCARD, then Bind/Execute of a named statement with Flush",
            cat(&[query("SELECT 'discard'::text"), bind("", "s_w"), execute(""), flush()]),
        ),
        ("sync 3", sync()),
        (
            "a Parse that may DEALLOCATE, then Bind/Execute of a named statement with Flush",
            cat(&[
                parse("", "SELECT 'deallocate'::text"),
                bind("", ""),
                execute(""),
                bind("", "s_w"),
                execute(""),
                flush(),
            ]),
        ),
        ("sync 4", sync()),
        (
            "a Close across a Sync, then Describe of the name with Flush",
            cat(&[close(b'S', "s_n"), sync(), describe(b'S', "s_n"), flush()]),
        ),
        ("sync 5", sync()),
        ("rollback", query("ROLLBACK")),
    ];
    same_as_postgres("cnsflush", &steps).await;
}

/// Reads the replies to one step: up to `syncs` ReadyForQuery messages, or, for a step
/// without a Sync (ending in Flush), until the replies stop.
async fn read_step<S: AsyncRead + Unpin>(s: &mut S, syncs: usize) -> (Vec<u8>, bool) {
    if syncs == 0 {
        read_quiet(s, Duration::from_millis(300)).await
    } else {
        read_ready(s, syncs, Duration::from_secs(5)).await
    }
}

/// Reads the replies to a step with `syncs` Syncs or Queries and, when it ends in Flush after
/// them (`tail`), also what the messages after the last Sync answer, so that where the
/// replies split between steps does not depend on timing.
async fn read_replies<S: AsyncRead + Unpin>(s: &mut S, syncs: usize, tail: bool) -> (Vec<u8>, bool) {
    let (mut got, closed) = read_step(s, syncs).await;
    if tail && syncs > 0 && !closed {
        let (more, closed) = read_quiet(s, Duration::from_millis(300)).await;
        got.extend_from_slice(&more);
        return (got, closed);
    }
    (got, closed)
}

/// Sends each step to PostgreSQL and through pgtenant, reading up to one ReadyForQuery per
/// Sync or Query (and, for a step ending in Flush, what follows), and records any difference.
/// A transaction-mode tenant (a pool of one, database named after `db`) and a raw client of
/// it: each of `steps` sent whole, through pgtenant and straight to PostgreSQL, must be
/// answered the same.
async fn same_as_postgres(db: &str, steps: &[(&str, Vec<u8>)]) {
    let t = with_mode(tenant_db(db).await, PoolMode::Transaction, 1);
    let h = start_quick(vec![t.clone()]).await;
    let mut s = raw_proxy(&h, &t.id).await;
    let mut direct = raw_direct(&t.database).await;
    let mut f = Failures::default();
    compare_steps(&mut f, &mut direct, &mut s, steps, &mut Vec::new()).await;
    f.assert_none();
}

async fn compare_steps(
    f: &mut Failures,
    direct: &mut UnixStream,
    proxied: &mut TcpStream,
    steps: &[(&str, Vec<u8>)],
    transcript: &mut Vec<u8>,
) {
    for (name, bytes) in steps {
        let tags: Vec<u8> = messages(bytes).iter().map(|(tag, _)| *tag).collect();
        let syncs = tags.iter().filter(|tag| matches!(tag, b'S' | b'Q')).count();
        let tail = tags.last() == Some(&b'H');
        send(direct, bytes).await;
        let (want, _) = read_replies(direct, syncs, tail).await;
        send(proxied, bytes).await;
        let (got, closed) = read_replies(proxied, syncs, tail).await;
        transcript.extend_from_slice(&got);
        let (want, got) = (summary(&want), summary(&got));
        f.check(!closed && got == want, || {
            format!("{name}:\n    PostgreSQL: {want:?}\n    pgtenant:   {got:?}")
        });
    }
}
