//! Cursors and the other session-level features a statement can start anywhere in a query, not
//! only as its first word: a client that makes one keeps its server connection (`pin`) or is
//! refused (`refuse`), and a cursor made where pgtenant sees the word DECLARE (a DO block) is
//! closed before the connection serves another client of the tenant.

use pgtenant::model::PoolMode;

use super::*;
use crate::support::*;

/// A WITH HOLD cursor `held` reading ten rows of `held-secret`.
const HELD: &str = "DECLARE held CURSOR WITH HOLD FOR SELECT 'held-secret'::text FROM generate_series(1, 10)";

/// What another client of the tenant tries on a cursor it did not declare, and what
/// PostgreSQL answers a session without it.
const PROBES: [&str; 3] = ["FETCH 1 FROM held", "MOVE FORWARD 3 IN held", "CLOSE held"];

/// Runs the probes as `c`; each must fail with 34000 (no such cursor).
async fn probe(f: &mut Failures, c: &Client, what: &str) {
    for sql in PROBES {
        match c.simple_query(sql).await {
            Ok(r) => {
                f.0.push(format!("{what}: `{sql}` reached another client's cursor: {} messages", r.len()))
            }
            Err(e) => {
                f.check(code(&e) == "34000", || format!("{what}: `{sql}`: expected 34000, got {}", why(&e)))
            }
        }
    }
}

/// A WITH HOLD cursor declared inside a DO block (pgtenant cannot pin for what runs inside
/// code) does not outlive the transaction for the next client of the tenant on the same
/// server connection: FETCH, MOVE and CLOSE of it get 34000, as on a session without it.
/// Before, the second client read the first one's rows (`held-secret`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_declared_in_code_is_closed_before_the_next_client() {
    let t = with_mode(tenant_db("curdo").await, PoolMode::Transaction, 1);
    let h = start_quick(vec![t.clone()]).await;
    let mut f = Failures::default();
    let planter = h.client(&t.id).await;
    let other = h.client(&t.id).await;
    let p0 = pid(&planter).await;
    let quoted = HELD.replace('\'', "''");
    let plant_simple = format!("DO $$BEGIN EXECUTE '{quoted}'; END$$");
    // The same block through Parse/Bind/Execute.
    planter.execute(plant_simple.as_str(), &[]).await.expect("plant through the extended protocol");
    probe(&mut f, &other, "DO through Parse").await;
    planter.batch_execute(&plant_simple).await.expect("plant by a simple query");
    probe(&mut f, &other, "DO by a simple query").await;
    f.check(pid(&other).await == p0, || "the two clients must share the one server connection".into());
    match rows(&other, "SELECT count(*) FROM pg_cursors").await {
        Ok(r) => {
            f.check(r == vec![vec!["0".to_owned()]], || format!("cursors left on the connection: {r:?}"))
        }
        Err(e) => f.0.push(format!("pg_cursors: {}", why(&e))),
    }
    f.assert_none();
}

/// Ways an application declares a WITH HOLD cursor that the first word of its query does not
/// show, or that split WITH and HOLD: each is a session-level feature as much as a query
/// starting `DECLARE … WITH HOLD`.
fn hidden_declarations() -> Vec<String> {
    vec![
        format!("BEGIN; {HELD}; COMMIT"),
        format!("SELECT 1; {HELD}"),
        HELD.replace("WITH HOLD", "WITH\n  HOLD"),
        HELD.replace("WITH HOLD", "/* c */ with /* d */ hold"),
        format!("/* outer /* nested */ comment */ {HELD}"),
    ]
}

/// Under `pin` (the default) a client that declares a WITH HOLD cursor anywhere in a query
/// keeps its server connection: its cursor still answers in its next transactions, and
/// another client of the tenant (on the pool's other connection) gets 34000 naming it.
/// Before, only a query starting with DECLARE pinned; with a pool of one the other client
/// fetched the rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_with_hold_cursor_anywhere_in_a_query_pins_its_client() {
    let t = with_mode(tenant_db("curpin").await, PoolMode::Transaction, 2);
    let h = start_quick(vec![t.clone()]).await;
    let mut f = Failures::default();
    for sql in hidden_declarations() {
        let planter = h.client(&t.id).await;
        if let Err(e) = planter.batch_execute(&sql).await {
            f.0.push(format!("{sql:?}: {}", why(&e)));
            continue;
        }
        let other = h.client(&t.id).await;
        probe(&mut f, &other, &sql).await;
        match rows(&planter, "FETCH ALL FROM held").await {
            Ok(r) => f.check(r.len() == 10 && r.iter().all(|row| row[0] == "held-secret"), || {
                format!("{sql:?}: the planter's own cursor: {} rows", r.len())
            }),
            Err(e) => f.0.push(format!("{sql:?}: the planter lost its cursor: {}", why(&e))),
        }
    }
    f.assert_none();
}

/// Under `refuse`, the same queries get 0A000 and declare nothing; so do LISTEN, a temporary
/// table and SQL PREPARE after a first statement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_features_after_a_first_statement_are_refused() {
    let (_t, _h, c) = refusing("currefuse").await;
    let mut f = Failures::default();
    let mut queries = hidden_declarations();
    queries.extend(
        [
            "SELECT 1; LISTEN jobs",
            "BEGIN; CREATE TEMP TABLE scratch (x int); COMMIT",
            "SELECT 1; create temporary table scratch (x int)",
            "SELECT 1; PREPARE p AS SELECT 1",
        ]
        .map(String::from),
    );
    expect_refused(&mut f, &c, &queries).await;
    match rows(
        &c,
        "SELECT (SELECT count(*) FROM pg_cursors), (SELECT count(*) FROM pg_listening_channels()),
                (SELECT count(*) FROM pg_prepared_statements WHERE name = 'p'), to_regclass('pg_temp.scratch') IS NULL",
    )
    .await
    {
        Ok(r) => f.check(r == vec![vec!["0".to_owned(), "0".into(), "0".into(), "t".into()]], || {
            format!("left on the server (cursors, listens, statements, no temp table): {r:?}")
        }),
        Err(e) => f.0.push(format!("state check: {}", why(&e))),
    }
    f.assert_none();
}
