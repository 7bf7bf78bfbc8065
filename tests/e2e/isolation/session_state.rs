//! Containment of session state: what one client sets (SET, isolation level, session
//! characteristics) never reaches the next client of the connection, of its tenant or another.

use pgtenant::model::{Isolation, PoolMode};

use super::*;
use crate::support::*;

// ---- a. session state and a handoff to another tenant -----------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_state_never_survives_a_handoff_to_another_tenant() {
    let mut f = Failures::default();
    for mode in [Isolation::Schema, Isolation::Shared] {
        let (a, b) = tenant_pair(mode, Access::Write, 1).await;
        let h = start_quick(vec![a.clone(), b.clone()]).await;
        let (ca, cb) = (h.client(&a.id).await, h.client(&b.id).await);
        let p0 = pid(&ca).await;
        assert_eq!(pid(&cb).await, p0, "{mode:?}: the two tenants must share the one server connection");

        // Runs `sql` as tenant a (simple protocol), then `check` as tenant b on the same backend.
        macro_rules! handoff {
            ($what:expr, $sql:expr, $check:expr) => {{
                let what = format!("{mode:?}: {}", $what);
                match ca.simple_query($sql).await {
                    Ok(_) => {}
                    Err(e) => f.0.push(format!("{what}: tenant a's `{}` failed: {}", $sql, why(&e))),
                }
                match cb.query_one("SELECT pg_backend_pid()", &[]).await.map(|r| r.get::<_, i32>(0)) {
                    Ok(p) if p == p0 => {}
                    other => f.0.push(format!("{what}: tenant b not on the shared backend {p0}: {other:?}")),
                }
                let check = $check;
                let r = rows(&cb, check).await;
                (what, r)
            }};
        }

        // Temporary table (made by SELECT INTO, so nothing sees a CREATE TEMP statement).
        let (what, r) =
            handoff!("temp table", "SELECT 'leak'::text AS owner INTO TEMP items", "SELECT owner FROM items");
        match r {
            Ok(r) => f.check(r.len() == 3 && r.iter().all(|row| row[0] == b.id), || {
                format!("{what}: tenant b's `SELECT owner FROM items` saw {r:?}")
            }),
            Err(e) => f.0.push(format!("{what}: tenant b's query failed: {}", why(&e))),
        }

        // Settings changed without a SET tag: set_config, and inside a DO block.
        let (what, r) = handoff!(
            "set_config / DO settings",
            "DO $$BEGIN PERFORM set_config('bytea_output','escape',false); END$$; \
             SELECT set_config('statement_timeout','1',false)",
            "SELECT current_setting('statement_timeout'), current_setting('bytea_output')"
        );
        match r {
            Ok(r) => f.check(r == vec![vec!["0".to_owned(), "hex".to_owned()]], || {
                format!("{what}: tenant b sees statement_timeout, bytea_output = {r:?}")
            }),
            Err(e) => f.0.push(format!("{what}: tenant b's SHOW failed: {}", why(&e))),
        }

        // LISTEN inside a DO block.
        let (what, r) = handoff!(
            "LISTEN in DO",
            "DO $$BEGIN EXECUTE 'LISTEN chan_x'; END$$",
            "SELECT count(*) FROM pg_listening_channels()"
        );
        match r {
            Ok(r) => {
                f.check(r == vec![vec!["0".to_owned()]], || format!("{what}: tenant b listens to {r:?}"))
            }
            Err(e) => f.0.push(format!("{what}: tenant b's query failed: {}", why(&e))),
        }

        // A WITH HOLD cursor declared by a function (which pgtenant does not see).
        plant_cursor(&a.database, &ca, "c", "cursor-of-a").await;
        let (what, r) = handoff!("WITH HOLD cursor", "SELECT count(*) FROM pg_cursors", "FETCH ALL FROM c");
        match r {
            Ok(r) => f.0.push(format!("{what}: tenant b fetched tenant a's cursor: {r:?}")),
            Err(e) => f.check(code(&e) == "34000", || format!("{what}: expected 34000, got {e}")),
        }

        // lastval().
        let (what, r) = handoff!("lastval", "SELECT nextval('a_seq')", "SELECT lastval()");
        match r {
            Ok(r) => f.0.push(format!("{what}: tenant b's lastval() = {r:?}")),
            Err(e) => f.check(code(&e) == "55000", || format!("{what}: expected 55000, got {e}")),
        }

        // Advisory locks.
        let (what, r) = handoff!(
            "advisory lock",
            "SELECT pg_advisory_lock(42)",
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
        );
        match r {
            Ok(r) => f.check(r == vec![vec!["0".to_owned()]], || {
                format!("{what}: tenant b holds advisory locks: {r:?}")
            }),
            Err(e) => f.0.push(format!("{what}: tenant b's query failed: {}", why(&e))),
        }

        // A protocol-level prepared statement (tokio-postgres prepares a named statement).
        let what = format!("{mode:?}: prepared statement");
        match ca.prepare("SELECT 'prepared-by-a'::text").await {
            Ok(stmt) => {
                if let Err(e) = ca.query(&stmt, &[]).await {
                    f.0.push(format!("{what}: tenant a's statement failed: {}", why(&e)));
                }
            }
            Err(e) => f.0.push(format!("{what}: tenant a's prepare failed: {}", why(&e))),
        }
        match rows(
            &cb,
            "SELECT count(*), string_agg(statement, ' / '), pg_backend_pid() FROM pg_prepared_statements",
        )
        .await
        {
            Ok(r) => f.check(r.first().is_some_and(|row| row[0] == "0" && row[2] == p0.to_string()), || {
                format!("{what}: tenant b sees prepared statements (count, text, pid): {r:?}")
            }),
            Err(e) => f.0.push(format!("{what}: tenant b's query failed: {}", why(&e))),
        }
        // Tenant a's own isolation is set up again after the resets (and its temporary table
        // went with the first handoff to b).
        match rows(&ca, "SELECT owner FROM items").await {
            Ok(r) => f.check(r.len() == 3 && r.iter().all(|row| row[0] == a.id), || {
                format!("{mode:?}: tenant a afterwards sees {r:?}")
            }),
            Err(e) => f.0.push(format!("{mode:?}: tenant a afterwards: {}", why(&e))),
        }
    }
    f.assert_none();
}

// ---- b. isolation settings within one tenant ---------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolation_setting_changed_without_set_does_not_reach_the_next_client_of_the_tenant() {
    let mut f = Failures::default();
    for mode in [Isolation::Schema, Isolation::Shared] {
        let (a, b) = tenant_pair(mode, Access::Write, 1).await;
        let h = start_quick(vec![a.clone(), b.clone()]).await;
        // The last ones name neither set_config nor the setting as the text reads: a
        // Unicode-escaped name, and the rule of the pg_settings view (which calls set_config).
        let hijacks = match mode {
            Isolation::Schema => vec![
                format!("SELECT set_config('search_path', '\"{}\"', false)", b.id),
                format!("DO $$BEGIN PERFORM set_config('search_path', '\"{}\"', false); END$$", b.id),
                format!("SELECT U&\"set\\005fconfig\"(U&'search\\005fpath', '\"{}\"', false)", b.id),
                format!("UPDATE pg_settings SET setting = '\"{}\"' WHERE name LIKE 'search%'", b.id),
            ],
            _ => vec![
                format!("SELECT set_config('pgtenant.tenant_id', '{}', false)", b.id),
                format!("DO $$BEGIN PERFORM set_config('pgtenant.tenant_id', '{}', false); END$$", b.id),
                format!("SELECT U&\"set\\005fconfig\"(U&'pgtenant.tenant\\005fid', '{}', false)", b.id),
            ],
        };
        let first = h.client(&a.id).await;
        let p0 = pid(&first).await;
        let existing = h.client(&a.id).await;
        for hijack in &hijacks {
            // The hijack takes effect for the client that ran it (so the check below means
            // something): in the same query it reads tenant b's rows on this backend.
            let own = rows(&first, &format!("{hijack}; SELECT owner FROM items")).await.expect("hijack runs");
            // The last three rows are the items (set_config's own row comes first).
            let own = &own[own.len().saturating_sub(3)..];
            f.check(own.iter().all(|r| r[0] == b.id) && !own.is_empty(), || {
                format!("{mode:?} `{hijack}`: did not take effect for its own client ({own:?}): the check is void")
            });
            let new = h.client(&a.id).await;
            for (who, c) in [("a new client", &new), ("an existing client", &existing)] {
                match rows(c, "SELECT owner, pg_backend_pid() FROM items").await {
                    Ok(r) => f.check(
                        r.len() == 3 && r.iter().all(|row| row[0] == a.id && row[1] == p0.to_string()),
                        || format!("{mode:?} after `{hijack}`: {who} of tenant a saw (owner, pid) {r:?}, backend {p0}"),
                    ),
                    Err(e) => f.0.push(format!("{mode:?} after `{hijack}`: {who}: {}", why(&e))),
                }
                // The hijacker uses the connection again before the next check.
                let _ = first.batch_execute(hijack).await;
            }
        }
    }
    f.assert_none();
}

/// A prepared statement that changes the isolation setting is seen when it is parsed, but it
/// runs at each Bind and Execute, on whichever connection the client has then: a run after
/// another client took the connection (which cleared the suspicion its Parse raised) must
/// make the setting be applied again for the next client. Before, the second run's
/// search_path / tenant setting reached the next clients of the tenant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepared_statement_that_changes_the_isolation_setting_is_seen_at_every_run() {
    let mut f = Failures::default();
    for mode in [Isolation::Schema, Isolation::Shared] {
        let (a, b) = tenant_pair(mode, Access::Write, 1).await;
        let h = start_quick(vec![a.clone(), b.clone()]).await;
        let (name, value) = match mode {
            Isolation::Schema => ("search_path", format!("\"{}\"", b.id)),
            _ => ("pgtenant.tenant_id", b.id.clone()),
        };
        let first = h.client(&a.id).await;
        let existing = h.client(&a.id).await;
        let p0 = pid(&first).await;
        let hijack = first
            .prepare(&format!("SELECT set_config('{name}', $1, false)"))
            .await
            .expect("prepare the hijack");
        // The other client takes the connection between the Parse and the runs.
        rows(&existing, "SELECT 1").await.expect("existing client");
        first.query(&hijack, &[&value]).await.expect("hijack runs");
        let own = rows(&first, "SELECT owner FROM items").await.expect("hijacker reads");
        f.check(own.iter().all(|r| r[0] == b.id) && !own.is_empty(), || {
            format!(
                "{mode:?}: the hijack did not take effect for its own client ({own:?}): the check is void"
            )
        });
        let new = h.client(&a.id).await;
        for (who, c) in [("an existing client", &existing), ("a new client", &new)] {
            match rows(c, "SELECT owner, pg_backend_pid() FROM items").await {
                Ok(r) => f.check(
                    r.len() == 3 && r.iter().all(|row| row[0] == a.id && row[1] == p0.to_string()),
                    || format!("{mode:?}: {who} of tenant a saw (owner, pid) {r:?}, backend {p0}"),
                ),
                Err(e) => f.0.push(format!("{mode:?}: {who}: {}", why(&e))),
            }
            first.query(&hijack, &[&value]).await.expect("hijack runs again");
        }
    }
    f.assert_none();
}

// ---- e. session characteristics follow the client -----------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_characteristics_follow_the_client_in_transaction_mode() {
    let t = with_mode(tenant_db("cnchar").await, PoolMode::Transaction, 1);
    let h = start_quick(vec![t.clone()]).await;
    let (x, y) = (h.client(&t.id).await, h.client(&t.id).await);
    let p0 = pid(&x).await;
    x.batch_execute("SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE")
        .await
        .expect("set characteristics");
    let mut f = Failures::default();
    for round in 0..3 {
        // The other client uses the pool of one in between, and sees the default.
        let r =
            rows(&y, "SELECT current_setting('transaction_isolation'), pg_backend_pid()").await.expect("y");
        f.check(r == vec![vec!["read committed".to_owned(), p0.to_string()]], || {
            format!("round {round}: the other client sees (isolation, pid) {r:?}")
        });
        let r = rows(&x, "BEGIN; SELECT current_setting('transaction_isolation'), pg_backend_pid(); COMMIT")
            .await
            .expect("x block");
        f.check(r == vec![vec!["serializable".to_owned(), p0.to_string()]], || {
            format!("round {round}: a transaction block of the client runs at (isolation, pid) {r:?}")
        });
        let r = rows(&x, "SHOW transaction_isolation").await.expect("x show");
        f.check(r == vec![vec!["serializable".to_owned()]], || format!("round {round}: SHOW gives {r:?}"));
    }
    f.assert_none();
}

// ---- f. what a recognised statement changes lasts its transaction --------------------------

/// Session state changed by statements pgtenant reads, in ways it does not replay (a role,
/// a SET in a transaction block or around a savepoint, SET LOCAL) or that a function's own
/// SET clause undoes when it fails: a client connected before and a new one, on the same
/// backend, see the defaults.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recognised_session_changes_do_not_reach_the_next_client_of_the_tenant() {
    let t = with_mode(tenant_db("cnlast").await, PoolMode::Transaction, 1);
    let other = unique("cnother");
    admin("postgres")
        .await
        .batch_execute(&format!("CREATE ROLE {other}; GRANT {other} TO \"{}\"", t.role))
        .await
        .expect("a role to switch to");
    admin(&t.database)
        .await
        .batch_execute(
            "CREATE FUNCTION public.fails() RETURNS int LANGUAGE plpgsql SET work_mem = '7MB' \
             AS $$BEGIN RAISE EXCEPTION 'no'; END$$",
        )
        .await
        .expect("a failing function with a SET clause");
    let h = start_quick(vec![t.clone()]).await;
    let mut f = Failures::default();
    let existing = h.client(&t.id).await;
    let p0 = pid(&existing).await;
    let check = "SELECT current_user::text, current_setting('statement_timeout'), \
                 current_setting('work_mem'), pg_backend_pid()::text";
    let defaults = vec![vec![t.role.clone(), "0".to_owned(), "4MB".to_owned(), p0.to_string()]];
    for change in [
        format!("SET ROLE {other}"),
        format!("SET SESSION ROLE {other}; SET statement_timeout = 4321"),
        "BEGIN; SAVEPOINT s; SET work_mem = '1234kB'; ROLLBACK TO s; SET statement_timeout = 4321; COMMIT"
            .to_owned(),
        "BEGIN; SET LOCAL statement_timeout = 4321; SET work_mem = '5MB'; COMMIT".to_owned(),
        "BEGIN; SET work_mem = '5MB'; ROLLBACK".to_owned(),
        "SELECT public.fails()".to_owned(),
    ] {
        let changer = h.client(&t.id).await;
        let _ = changer.batch_execute(&change).await;
        let new = h.client(&t.id).await;
        for (who, c) in [("a client connected before", &existing), ("a new client", &new)] {
            match rows(c, check).await {
                Ok(r) => f.check(r == defaults, || format!("after `{change}`: {who} sees {r:?}")),
                Err(e) => f.0.push(format!("after `{change}`: {who}: {}", why(&e))),
            }
        }
    }
    f.assert_none();
}

/// A SET run through a portal other than the one bound last: client a binds two portals of
/// two SET statements and executes the first. What a's session now has is the first SET's
/// value, whatever pgtenant tracks; another client of the tenant that set the second value
/// itself must still see its own value on the shared connection, never a's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_executed_through_an_earlier_portal_is_not_taken_for_the_last_bound() {
    use crate::support::raw::*;
    let t = with_mode(tenant_db("setportal").await, PoolMode::Transaction, 1);
    let h = start_quick(vec![t.clone()]).await;
    let other = h.client(&t.id).await;
    other.batch_execute("SET work_mem = '2222kB'").await.expect("the other client's SET");
    let mut a = raw_proxy(&h, &t.id).await;
    let batch = cat(&[
        parse("s_first", "SET work_mem = '1111kB'"),
        parse("s_second", "SET work_mem = '2222kB'"),
        bind("p_first", "s_first"),
        bind("p_second", "s_second"),
        execute("p_first"),
        sync(),
    ]);
    send(&mut a, &batch).await;
    let (got, _) = read_ready(&mut a, 1, std::time::Duration::from_secs(3)).await;
    assert_eq!(summary(&got), ["1", "1", "2", "2", "C(SET)", "Z(I)"], "a's batch");
    // a's own session never has the value of the SET that did not run (pgtenant does not
    // track which portal ran: the SET counts as untracked and the connection is reset).
    send(&mut a, &query("SHOW work_mem")).await;
    let (got, _) = read_ready(&mut a, 1, std::time::Duration::from_secs(3)).await;
    let got = summary(&got);
    assert!(got.len() == 4 && got[1] != "D(2222kB)", "a's work_mem: {got:?}");
    // The other client, on the same backend, has its own.
    let r = rows(&other, "SHOW work_mem").await.expect("the other client's SHOW");
    assert_eq!(r, vec![vec!["2222kB".to_owned()]], "the other client sees a's work_mem");
}

/// A SET in an unnamed Parse that the server skips (an error earlier in its batch) does not
/// replace the unnamed statement: a later Bind of it runs the SET parsed before. pgtenant must
/// not take the skipped one's value for what ran; another client of the tenant that set that
/// value itself must still see its own value on the shared connection, never a's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_skipped_unnamed_set_is_not_taken_for_the_one_that_runs() {
    use crate::support::raw::*;
    let t = with_mode(tenant_db("setskip").await, PoolMode::Transaction, 1);
    let h = start_quick(vec![t.clone()]).await;
    let other = h.client(&t.id).await;
    other.batch_execute("SET work_mem = '2222kB'").await.expect("the other client's SET");
    let mut a = raw_proxy(&h, &t.id).await;
    let limit = std::time::Duration::from_secs(3);
    let steps: [(Vec<u8>, &[&str]); 3] = [
        (cat(&[parse("", "SET work_mem = '1111kB'"), sync()]), &["1", "Z(I)"]),
        (
            cat(&[
                parse("s_bad", "SELECT * FROM no_such_table"),
                parse("", "SET work_mem = '2222kB'"),
                sync(),
            ]),
            &["E(42P01)", "Z(I)"],
        ),
        (cat(&[bind("", ""), execute(""), sync()]), &["2", "C(SET)", "Z(I)"]),
    ];
    for (bytes, want) in steps {
        send(&mut a, &bytes).await;
        let (got, _) = read_ready(&mut a, 1, limit).await;
        assert_eq!(summary(&got), want, "a's step");
    }
    send(&mut a, &query("SHOW work_mem")).await;
    let (got, _) = read_ready(&mut a, 1, limit).await;
    let got = summary(&got);
    assert!(got.len() == 4 && got[1] != "D(2222kB)", "a's work_mem: {got:?}");
    let r = rows(&other, "SHOW work_mem").await.expect("the other client's SHOW");
    assert_eq!(r, vec![vec!["2222kB".to_owned()]], "the other client sees a's work_mem");
}

/// The isolation setting changed through the protocol's FunctionCall (set_config by its OID,
/// 2078), which carries no SQL text to classify: the next client of the tenant on the same
/// backend still gets its own tenant's rows, never the ones the hijacker pointed it at.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolation_setting_changed_by_a_function_call_does_not_reach_the_next_client() {
    use crate::support::raw::*;
    let mut f = Failures::default();
    for mode in [Isolation::Schema, Isolation::Shared] {
        let (a, b) = tenant_pair(mode, Access::Write, 1).await;
        let h = start_quick(vec![a.clone(), b.clone()]).await;
        let (name, value) = match mode {
            Isolation::Schema => ("search_path", format!("\"{}\"", b.id)),
            _ => ("pgtenant.tenant_id", b.id.to_string()),
        };
        // FunctionCall: OID, no argument formats (text), three arguments, text result.
        let mut body = 2078i32.to_be_bytes().to_vec();
        body.extend_from_slice(&0i16.to_be_bytes());
        body.extend_from_slice(&3i16.to_be_bytes());
        for arg in [name, value.as_str(), "false"] {
            body.extend_from_slice(&i32::try_from(arg.len()).expect("short").to_be_bytes());
            body.extend_from_slice(arg.as_bytes());
        }
        body.extend_from_slice(&0i16.to_be_bytes());
        let existing = h.client(&a.id).await;
        let p0 = pid(&existing).await;
        let mut hijacker = raw_proxy(&h, &a.id).await;
        send(&mut hijacker, &cat(&[msg(b'F', &body), query("SELECT owner FROM items LIMIT 1")])).await;
        let (got, _) = read_ready(&mut hijacker, 2, std::time::Duration::from_secs(3)).await;
        let got = summary(&got);
        // The call took effect for the hijacker (so the check below means something).
        f.check(got.contains(&format!("D({})", b.id)), || {
            format!("{mode:?}: the hijack did not take: {got:?}")
        });
        let new = h.client(&a.id).await;
        for (who, c) in [("a new client", &new), ("an existing client", &existing)] {
            match rows(c, "SELECT owner, pg_backend_pid() FROM items").await {
                Ok(r) => f.check(
                    r.len() == 3 && r.iter().all(|row| row[0] == a.id && row[1] == p0.to_string()),
                    || format!("{mode:?}: {who} of tenant a saw (owner, pid) {r:?}, backend {p0}"),
                ),
                Err(e) => f.0.push(format!("{mode:?}: {who}: {}", why(&e))),
            }
            send(&mut hijacker, &msg(b'F', &body)).await;
            let _ = read_ready(&mut hijacker, 1, std::time::Duration::from_secs(3)).await;
        }
    }
    f.assert_none();
}
