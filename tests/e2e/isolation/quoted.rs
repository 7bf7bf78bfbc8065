//! What a `;` inside quoted text or a code body starts is no statement of the query: a
//! string, a comment, a dollar-quoted function body or DO block that holds `; EXECUTE …`,
//! `; LISTEN …` or `; CREATE TEMP …` runs through pgtenant as on PostgreSQL (neither refused
//! nor pinned). And what a DO block runs, however its text is spelled, leaves no cursor for the
//! next client of the tenant.

use pgtenant::model::PoolMode;

use super::*;
use crate::support::*;

/// Queries PostgreSQL runs as one statement whose quoted text or body holds `;` followed by a
/// word pgtenant refuses or pins for at the start of a statement.
fn quoted_queries() -> Vec<&'static str> {
    vec![
        // Migrations: a PL/pgSQL function or DO block with dynamic SQL.
        "CREATE OR REPLACE FUNCTION public.bump(t text) RETURNS void LANGUAGE plpgsql AS \
         $$BEGIN PERFORM 1; EXECUTE format('SELECT %L', t); END$$",
        "DO $$BEGIN PERFORM 1; EXECUTE 'SELECT 1'; END$$",
        "CREATE OR REPLACE FUNCTION public.scratch() RETURNS void LANGUAGE plpgsql AS \
         $body$BEGIN DROP TABLE IF EXISTS scratch; CREATE TEMP TABLE scratch (x int); END$body$",
        "CREATE OR REPLACE FUNCTION public.wake() RETURNS void LANGUAGE plpgsql AS \
         $$BEGIN PERFORM 1; LISTEN jobs; END$$",
        // Values written into the text (simple-protocol drivers, ORMs without server-side
        // prepares), comments, quoted names.
        "SELECT 'step one; execute step two'",
        "SELECT 'it''s done; prepare the next'",
        "SELECT 'note; listen later' AS x",
        "SELECT 1 /* one; deallocate two */",
        "SELECT 1 -- one; create temp table t (x int)\n",
        "SELECT 1 AS \"a; listen b\"",
    ]
}

/// Each of [`quoted_queries`] succeeds on PostgreSQL and through pgtenant (transaction mode,
/// `refuse`), and the client keeps sharing the one server connection with another client.
/// Before, every one of them was refused with 0A000 (SQL PREPARE for `; EXECUTE`, `; prepare`,
/// `; deallocate`; a session feature for the others).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_semicolon_in_quoted_text_starts_no_statement() {
    let (t, _h, c) = refusing("quoted").await;
    let direct = admin(&t.id).await;
    let mut f = Failures::default();
    for sql in quoted_queries() {
        // Rolled back: the tenant's role creates the functions through pgtenant.
        if let Err(e) = direct.batch_execute(&format!("BEGIN;\n{sql}\n;ROLLBACK")).await {
            f.0.push(format!("{sql:?} fails on PostgreSQL: {}", why(&e)));
            continue;
        }
        if let Err(e) = c.batch_execute(sql).await {
            f.0.push(format!("{sql:?}: {}", why(&e)));
        }
    }
    f.assert_none();
}

/// Under `pin` (the default), a string holding `; listen` does not pin its client: with a
/// pool of one, another client of the tenant still gets the connection. Before, the other
/// client waited out the checkout timeout (53300).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_semicolon_in_a_string_does_not_pin() {
    let t = with_mode(tenant_db("quotedpin").await, PoolMode::Transaction, 1);
    let h = start_quick(vec![t.clone()]).await;
    let mut f = Failures::default();
    for sql in ["SELECT 'note; listen later'", "SELECT $t$x; CREATE TEMP TABLE y (z int)$t$"] {
        // Fresh clients each time: a pinned one keeps the only connection until it leaves.
        let (first, other) = (h.client(&t.id).await, h.client(&t.id).await);
        first.batch_execute(sql).await.expect("the string query");
        match rows(&other, "SELECT 1").await {
            Ok(r) => f.check(r == vec![vec!["1".to_owned()]], || format!("after {sql:?}: {r:?}")),
            Err(e) => f.0.push(format!("after {sql:?} the other client got {}", why(&e))),
        }
    }
    f.assert_none();
}

/// What stays a statement however it is quoted around it: a `$` inside a name does not open
/// a dollar quote, a doubled quote does not close a string, and a statement after a string
/// is still one. Under `refuse` each gets 0A000 (checked against what is left on the server).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_after_quoted_text_is_still_refused() {
    let (_t, _h, c) = refusing("quotedrefuse").await;
    let mut f = Failures::default();
    let queries = [
        "SELECT 1 AS a$x$; LISTEN jobs; SELECT '$x$'",
        "SELECT 'it''s'; LISTEN jobs",
        "SELECT $$a;b$$; LISTEN jobs",
        "SELECT \"x;y\" FROM (SELECT 1 AS \"x;y\") s; LISTEN jobs",
        "SELECT 1 /* a /* nested; */ still */; LISTEN jobs",
        "SELECT E'\\''; LISTEN jobs; SELECT ''",
    ];
    expect_refused(&mut f, &c, queries).await;
    match rows(&c, "SELECT count(*) FROM pg_listening_channels()").await {
        Ok(r) => f.check(r == vec![vec!["0".to_owned()]], || format!("listening: {r:?}")),
        Err(e) => f.0.push(format!("listening: {}", why(&e))),
    }
    f.assert_none();
}

/// A WITH HOLD cursor a DO block declares through dynamic SQL whose text never spells DECLARE
/// (`'DECL' || 'ARE …'`) is closed before the next client of the tenant uses the server
/// connection, like one whose text does. Before, the other client fetched `held-secret`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_a_do_block_spells_apart_is_closed_too() {
    let t = with_mode(tenant_db("curspell").await, PoolMode::Transaction, 1);
    let h = start_quick(vec![t.clone()]).await;
    let mut f = Failures::default();
    let planter = h.client(&t.id).await;
    let other = h.client(&t.id).await;
    let p0 = pid(&planter).await;
    let plant = "DO $$BEGIN EXECUTE 'DECL' || 'ARE held CURSOR WITH HOLD FOR \
                 SELECT ''held-secret''::text FROM generate_series(1, 10)'; END$$";
    planter.batch_execute(plant).await.expect("plant by a simple query");
    f.check(pid(&other).await == p0, || "the two clients must share the one server connection".into());
    match rows(&other, "FETCH 1 FROM held").await {
        Ok(r) => f.0.push(format!("the other client fetched another's cursor: {r:?}")),
        Err(e) => f.check(code(&e) == "34000", || format!("FETCH: expected 34000, got {}", why(&e))),
    }
    planter.execute(plant, &[]).await.expect("plant through the extended protocol");
    match rows(&other, "SELECT count(*) FROM pg_cursors").await {
        Ok(r) => f.check(r == vec![vec!["0".to_owned()]], || format!("cursors left (extended): {r:?}")),
        Err(e) => f.0.push(format!("pg_cursors: {}", why(&e))),
    }
    f.assert_none();
}

/// A WITH HOLD cursor whose name is a Unicode-escaped identifier (`U&"…"`, with or without
/// UESCAPE) is one as much as `DECLARE held …`: under `refuse` it gets 0A000 and leaves no
/// cursor. Before, its DECLARE ran (pgtenant read no word after `U&`), and the cursor was
/// left until CLOSE ALL at the end of the transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unicode_escaped_cursor_name_is_still_with_hold() {
    let (_t, _h, c) = refusing("curuesc").await;
    let mut f = Failures::default();
    for sql in [
        "DECLARE U&\"held\" CURSOR WITH HOLD FOR SELECT 1",
        "DECLARE u&\"h!0065ld\" UESCAPE '!' CURSOR WITH HOLD FOR SELECT 1",
    ] {
        expect_refused(&mut f, &c, [format!("BEGIN; {sql}; FETCH 1 FROM held; COMMIT")]).await;
        let _ = c.batch_execute("ROLLBACK").await;
    }
    f.assert_none();
}
