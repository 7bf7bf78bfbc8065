//! Temporary objects between clients of one tenant: whatever statement makes one (not only a
//! query starting `CREATE TEMP`), it does not outlive the transaction for the next client of
//! the tenant on the same server connection. Only code pgtenant cannot read (a function, a
//! DO block) may leave one, as the README says.

use pgtenant::model::PoolMode;

use super::*;
use crate::support::*;

/// Statements that make a temporary object whose first words are not `CREATE TEMP`, each
/// with the query that reads the object and the SQLSTATE a session without it gets.
fn hidden_temporaries() -> Vec<(&'static str, &'static str, &'static str)> {
    vec![
        ("CREATE TABLE pg_temp.t1 AS SELECT 'secret'::text AS x", "SELECT x FROM pg_temp.t1", "42P01"),
        ("SELECT 'secret'::text AS x INTO TEMP t2", "SELECT x FROM pg_temp.t2", "42P01"),
        ("SELECT 'secret'::text AS x INTO TEMPORARY TABLE t3", "SELECT x FROM pg_temp.t3", "42P01"),
        ("CREATE LOCAL TEMP TABLE t4 AS SELECT 'secret'::text AS x", "SELECT x FROM pg_temp.t4", "42P01"),
        (
            "CREATE GLOBAL TEMPORARY TABLE t5 AS SELECT 'secret'::text AS x",
            "SELECT x FROM pg_temp.t5",
            "42P01",
        ),
        ("CREATE OR REPLACE TEMP VIEW t6 AS SELECT 'secret'::text AS x", "SELECT x FROM pg_temp.t6", "42P01"),
        (
            "EXPLAIN ANALYZE CREATE TEMP TABLE t7 AS SELECT 'secret'::text AS x",
            "SELECT x FROM pg_temp.t7",
            "42P01",
        ),
        (
            "CREATE TABLE U&\"pg\\005ftemp\".t8 AS SELECT 'secret'::text AS x",
            "SELECT x FROM pg_temp.t8",
            "42P01",
        ),
        (
            "CREATE FUNCTION pg_temp.f9() RETURNS text LANGUAGE sql AS $$ SELECT 'secret'::text $$",
            "SELECT pg_temp.f9()",
            "42883",
        ),
        ("CREATE SEQUENCE \"pg_temp\".s10", "SELECT nextval('pg_temp.s10')::text", "42P01"),
    ]
}

/// Each of [`hidden_temporaries`] run by one client of a transaction-mode tenant with a pool
/// of one: the client reads its object in the same query, and neither another client that
/// was connected already nor a new one can read it afterwards on the same backend. Before,
/// only a query starting `CREATE TEMP` was seen, and both read `secret`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temporary_objects_any_statement_makes_do_not_reach_the_next_client_of_the_tenant() {
    let t = with_mode(tenant_db("tmpany").await, PoolMode::Transaction, 1);
    let h = start_quick(vec![t.clone()]).await;
    let mut f = Failures::default();
    let existing = h.client(&t.id).await;
    let p0 = pid(&existing).await;
    for (make, read, absent) in hidden_temporaries() {
        let maker = h.client(&t.id).await;
        match rows(&maker, &format!("{make}; {read}")).await {
            Ok(r) => f.check(r.iter().any(|row| row[0] == "secret" || row[0] == "1"), || {
                format!("`{make}`: its own client read {r:?}: the check is void")
            }),
            Err(e) => f.0.push(format!("`{make}` failed: {}", why(&e))),
        }
        let new = h.client(&t.id).await;
        for (who, c) in [("a client connected before", &existing), ("a new client", &new)] {
            match rows(c, &format!("SELECT pg_backend_pid()::text; {read}")).await {
                Ok(r) => f.0.push(format!("after `{make}`: {who} read {r:?} (backend {p0})")),
                Err(e) => f.check(code(&e) == absent, || {
                    format!("after `{make}`: {who}: expected {absent}, got {}", why(&e))
                }),
            }
        }
        f.check(pid(&new).await == p0, || "the clients must share the one server connection".into());
    }
    f.assert_none();
}

/// A `search_path` that names `pg_temp` first makes `CREATE TABLE t` temporary: a database
/// tenant's client that sets one (tracked SETs follow their client) must not leave a
/// temporary table for the next client, who would read it as `t` (the temporary schema is
/// searched first). Before, the SET followed the client and the table stayed. (Once the SET
/// does not follow, `tp` may be made in `public`: the check reads `pg_temp.tp`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_search_path_naming_pg_temp_leaves_no_table_for_the_next_client() {
    let t = with_mode(tenant_db("tmppath").await, PoolMode::Transaction, 1);
    let h = start_quick(vec![t.clone()]).await;
    let mut f = Failures::default();
    let existing = h.client(&t.id).await;
    let maker = h.client(&t.id).await;
    maker.batch_execute("SET search_path = pg_temp, public").await.expect("set search_path");
    maker.batch_execute("CREATE TABLE tp AS SELECT 'secret'::text AS x").await.expect("create tp");
    let new = h.client(&t.id).await;
    for (who, c) in [("a client connected before", &existing), ("a new client", &new)] {
        match rows(c, "SELECT x FROM pg_temp.tp").await {
            Ok(r) => f.0.push(format!("{who} read {r:?}")),
            Err(e) => f.check(code(&e) == "42P01", || format!("{who}: expected 42P01, got {}", why(&e))),
        }
    }
    f.assert_none();
}

/// The same `search_path` from the client's startup packet (`options=-c search_path=…`),
/// which pgtenant sets on every connection the client gets: each is reset before another
/// client uses it. Before, the next client read the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_startup_search_path_naming_pg_temp_leaves_no_table_for_the_next_client() {
    let t = with_mode(tenant_db("tmpopt").await, PoolMode::Transaction, 1);
    let h = start_quick(vec![t.clone()]).await;
    let mut f = Failures::default();
    let existing = h.client(&t.id).await;
    let maker = connect_str(&format!("{} options='-c search_path=pg_temp,public'", h.conninfo(&t.id))).await;
    // Nothing in the text names the temporary schema.
    let own = rows(&maker, "CREATE TABLE ts AS SELECT 'secret'::text AS x; SELECT x FROM ts").await;
    f.check(matches!(&own, Ok(r) if r == &vec![vec!["secret".to_owned()]]), || {
        format!("the maker's own table: {own:?}: the check is void")
    });
    let new = h.client(&t.id).await;
    for (who, c) in [("a client connected before", &existing), ("a new client", &new)] {
        match rows(c, "SELECT x FROM pg_temp.ts").await {
            Ok(r) => f.0.push(format!("{who} read {r:?}")),
            Err(e) => f.check(code(&e) == "42P01", || format!("{who}: expected 42P01, got {}", why(&e))),
        }
    }
    f.assert_none();
}
