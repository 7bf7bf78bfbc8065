//! A client that leaves mid-pipeline around the statement-name barrier (DEALLOCATE/DISCARD by
//! a simple Query or by Bind/Execute) and the portal names it makes twice (Bind or DECLARE of
//! a name already pending, the first failing or skipped): it leaves by Terminate, by closing
//! its connection, or in the middle of a message, always before its Sync. Then the pool's
//! one server connection serves another client of the same tenant and a client of the other
//! tenant at once (no wait that never ends), with none of the leaver's prepared statements,
//! portals or cursors: `pg_cursors` and `pg_prepared_statements` are empty, FETCH of the
//! leaver's cursor gets 34000, and the name is free to DECLARE.

use std::time::Duration;

use pgtenant::model::Isolation;

use super::*;
use crate::support::raw::*;
use crate::support::*;

/// A WITH HOLD cursor `held` reading the leaver's rows.
const HELD: &str = "DECLARE held CURSOR WITH HOLD FOR SELECT 'a-secret'::text FROM generate_series(1, 5)";

fn flush() -> Vec<u8> {
    msg(b'H', &[])
}

/// What the leaver sends before it leaves (never its last Sync).
fn leavings() -> Vec<(&'static str, Vec<u8>)> {
    let s1 = || parse("s1", "SELECT 'a-secret'::text");
    vec![
        (
            "simple DEALLOCATE ALL, then Close/Bind/Execute of s1",
            cat(&[s1(), sync(), query("DEALLOCATE ALL"), close(b'P', "p1"), bind("p1", "s1"), execute("p1")]),
        ),
        (
            "DEALLOCATE ALL by Bind/Execute, then s1 again and its portal",
            cat(&[
                s1(),
                sync(),
                parse("", "DEALLOCATE ALL"),
                bind("", ""),
                execute(""),
                s1(),
                bind("p1", "s1"),
                execute("p1"),
                flush(),
            ]),
        ),
        (
            "DISCARD ALL by Bind/Execute, then a statement and a held cursor",
            cat(&[
                s1(),
                sync(),
                parse("", "DISCARD ALL"),
                bind("", ""),
                execute(""),
                parse("s2", "SELECT 'a-secret'::text"),
                sync(),
                query(HELD),
                bind("p1", "s2"),
            ]),
        ),
        (
            "DECLARE WITH HOLD by Execute, no Sync",
            cat(&[parse("", HELD), bind("", ""), execute(""), describe(b'P', "held"), flush()]),
        ),
        (
            "DECLARE WITH HOLD by Execute twice, the second failing",
            cat(&[parse("d", HELD), bind("", "d"), execute(""), bind("", "d"), execute(""), flush()]),
        ),
        (
            "DECLARE failing at commit, then the same name again",
            cat(&[
                query("DECLARE held CURSOR WITH HOLD FOR SELECT 1/0"),
                query(HELD),
                parse("", "FETCH 1 FROM held"),
                bind("", ""),
                execute(""),
            ]),
        ),
        (
            "DECLARE skipped behind an error, then the same DECLARE committed",
            cat(&[
                query("BEGIN"),
                describe(b'S', "nosuch"),
                query(HELD),
                sync(),
                query(HELD),
                query("COMMIT"),
                describe(b'P', "held"),
            ]),
        ),
        (
            "a portal bound twice, the first skipped",
            cat(&[
                query("BEGIN"),
                s1(),
                sync(),
                describe(b'S', "nosuch"),
                bind("p1", "s1"),
                sync(),
                bind("p1", "s1"),
                execute("p1"),
                query("DEALLOCATE ALL"),
                bind("p1", "s1"),
            ]),
        ),
        (
            "a held cursor, then simple DEALLOCATE ALL and DECLARE of the same name",
            cat(&[
                query(HELD),
                s1(),
                query("DEALLOCATE ALL; DECLARE held CURSOR FOR SELECT 1"),
                bind("", "s1"),
            ]),
        ),
    ]
}

/// What the second client checks; a failure or a wait of more than 6 s is a failure.
async fn check_clean(f: &mut Failures, c: &Client, what: &str) {
    let probe = async {
        let mut seen = Vec::new();
        for sql in [
            "SELECT count(*) FROM pg_cursors",
            "SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE '%a-secret%' OR name = 's1'",
        ] {
            match rows(c, sql).await {
                Ok(r) => seen.push(format!("{r:?}")),
                Err(e) => seen.push(why(&e)),
            }
        }
        match c.simple_query("FETCH 1 FROM held").await {
            Ok(r) => seen.push(format!("FETCH ran: {} messages", r.len())),
            Err(e) => seen.push(code(&e)),
        }
        match rows(c, "BEGIN; DECLARE held CURSOR FOR SELECT 'b'::text; FETCH 1 FROM held; COMMIT").await {
            Ok(r) => seen.push(format!("{r:?}")),
            Err(e) => seen.push(why(&e)),
        }
        match c.query_one("SELECT $1::text", &[&"b-own"]).await {
            Ok(r) => seen.push(r.get::<_, String>(0)),
            Err(e) => seen.push(why(&e)),
        }
        seen
    };
    match tokio::time::timeout(Duration::from_secs(6), probe).await {
        Ok(seen) => {
            let want = [
                r#"[["0"]]"#.to_owned(),
                r#"[["0"]]"#.to_owned(),
                "34000".to_owned(),
                r#"[["b"]]"#.to_owned(),
                "b-own".to_owned(),
            ];
            f.check(seen == want, || format!("{what}: saw {seen:?}, want {want:?}"));
        }
        Err(_) => f.0.push(format!("{what}: no answer in 6 s (a wait that never ends?)")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_mid_pipeline_leaves_no_barrier_portal_or_cursor() {
    let (a, b) = tenant_pair(Isolation::Schema, Access::Read, 1).await;
    let h = start_quick(vec![a.clone(), b.clone()]).await;
    let mut f = Failures::default();
    let mut kept = Vec::new();
    for (name, bytes) in leavings() {
        for ending in ["Terminate", "close", "half a message", "Sync, Terminate", "Sync, close"] {
            let mut leaver = raw_proxy(&h, &a.id).await;
            send(&mut leaver, &query("SELECT pg_backend_pid()")).await;
            let got = read_until_ready(&mut leaver).await;
            let p0 = messages(&got).into_iter().find(|(t, _)| *t == b'D').map(|(_, d)| data_row(d));
            match ending {
                "Terminate" => send(&mut leaver, &cat(&[bytes.clone(), terminate()])).await,
                "close" => send(&mut leaver, &bytes).await,
                "Sync, Terminate" => send(&mut leaver, &cat(&[bytes.clone(), sync(), terminate()])).await,
                "Sync, close" => send(&mut leaver, &cat(&[bytes.clone(), sync()])).await,
                _ => send(&mut leaver, &cat(&[bytes.clone(), sync()[..3].to_vec()])).await,
            }
            // Some of the replies, then leave before the Sync.
            let _ = read_quiet(&mut leaver, Duration::from_millis(100)).await;
            drop(leaver);
            let same = h.client(&a.id).await;
            if p0 == Some(vec![pid(&same).await.to_string()]) {
                kept.push(format!("{name}, {ending}"));
            }
            check_clean(&mut f, &same, &format!("{name}, {ending}: the same tenant")).await;
            drop(same);
            let other = h.client(&b.id).await;
            check_clean(&mut f, &other, &format!("{name}, {ending}: the other tenant")).await;
        }
    }
    // The leavers that end with their Sync leave the server connection usable: the checks
    // above ran on the same backend for them.
    f.check(kept.iter().any(|k| k.contains("Sync")), || format!("no leaver kept the connection: {kept:?}"));
    eprintln!("kept the server connection: {kept:?}");
    f.assert_none();
}

/// Another client of the tenant drops every prepared statement of the server connection
/// (DEALLOCATE ALL / DISCARD ALL, by a Query or by Bind/Execute, in a transaction that rolls
/// back, behind or before an error — prepared statements are not transactional, so a
/// DEALLOCATE that ran stays run), parses the same text again, and leaves. A statement the
/// first client prepared before (shared on the server, keyed by content) still runs for it:
/// pgtenant must not take it to be on the server connection when it is not (26000).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_survives_another_clients_deallocate_all() {
    let (a, _b) = tenant_pair(Isolation::Schema, Access::Read, 1).await;
    let h = start_quick(vec![a.clone()]).await;
    let text = "SELECT $1::text || '-x'";
    let again = || cat(&[parse("s1", text), bind("", "s1"), execute("")]);
    let runs: Vec<(&str, Vec<u8>)> = vec![
        ("Query DEALLOCATE ALL", cat(&[query("DEALLOCATE ALL"), again(), sync()])),
        ("Query DISCARD ALL", cat(&[query("DISCARD ALL"), again(), sync()])),
        (
            "Bind DEALLOCATE ALL",
            cat(&[parse("", "DEALLOCATE ALL"), bind("", ""), execute(""), again(), sync()]),
        ),
        ("DEALLOCATE ALL then an error", cat(&[query("DEALLOCATE ALL; SELECT 1/0"), again(), sync()])),
        (
            "Bind DEALLOCATE ALL then an error",
            cat(&[
                parse("", "DEALLOCATE ALL"),
                bind("", ""),
                execute(""),
                parse("", "SELECT 1/0"),
                bind("", ""),
                execute(""),
                sync(),
                again(),
                sync(),
            ]),
        ),
        ("DEALLOCATE ALL rolled back", cat(&[query("BEGIN; DEALLOCATE ALL; ROLLBACK"), again(), sync()])),
        (
            "DEALLOCATE ALL in a transaction, rolled back",
            cat(&[query("BEGIN"), query("DEALLOCATE ALL"), query("ROLLBACK"), again(), sync()]),
        ),
        (
            "Bind DEALLOCATE ALL in a transaction, rolled back",
            cat(&[
                query("BEGIN"),
                parse("", "DEALLOCATE ALL"),
                bind("", ""),
                execute(""),
                sync(),
                query("ROLLBACK"),
                again(),
                sync(),
            ]),
        ),
        (
            "DEALLOCATE ALL skipped",
            cat(&[query("BEGIN; SELECT 1/0; DEALLOCATE ALL"), query("ROLLBACK"), again(), sync()]),
        ),
    ];
    let mut f = Failures::default();
    for (name, bytes) in runs {
        for ending in ["read, Terminate", "Terminate", "close"] {
            let what = format!("{name}, {ending}");
            let first = h.client(&a.id).await;
            let stmt = first.prepare(text).await.expect("prepare");
            let p0 = pid(&first).await;
            let mut leaver = raw_proxy(&h, &a.id).await;
            send(&mut leaver, &bytes).await;
            match ending {
                "read, Terminate" => {
                    let (got, _) = read_quiet(&mut leaver, Duration::from_millis(300)).await;
                    f.check(!summary(&got).iter().any(|m| m.contains("26000")), || {
                        format!("{what}: the leaver's own Bind: {:?}", summary(&got))
                    });
                    send(&mut leaver, &terminate()).await;
                }
                "Terminate" => send(&mut leaver, &terminate()).await,
                _ => {}
            }
            drop(leaver);
            let run = async {
                let mut seen = Vec::new();
                for i in 0..2 {
                    match first.query_one(&stmt, &[&format!("b{i}")]).await {
                        Ok(r) => seen.push(r.get::<_, String>(0)),
                        Err(e) => seen.push(why(&e)),
                    }
                }
                seen
            };
            match tokio::time::timeout(Duration::from_secs(6), run).await {
                Ok(seen) => {
                    f.check(seen == ["b0-x", "b1-x"], || format!("{what}: the statement gave {seen:?}"))
                }
                Err(_) => f.0.push(format!("{what}: no answer in 6 s")),
            }
            if ending == "read, Terminate" {
                f.check(pid(&first).await == p0, || format!("{what}: the server connection was replaced"));
            }
        }
    }
    f.assert_none();
}

/// Another client's WITH HOLD cursor `held` on the pool's one server connection (planted where
/// pgtenant cannot see it), and a client that makes a portal of that name twice: the first
/// skipped or failing (42P03), the second failing or skipped, by Bind or by DECLARE, in or
/// out of a transaction, after closing the name. An Execute or Describe of portal `held` after
/// its Sync never reaches the other client's cursor (pgtenant's 34000, or the client's own
/// portal). (SQL `FETCH` of such a cursor is the README's documented gap: a WITH HOLD cursor a
/// function declares passes between clients of a tenant.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_portal_made_twice_never_reaches_another_clients_cursor() {
    let t = with_mode(tenant_db("barportal").await, pgtenant::model::PoolMode::Transaction, 1);
    let h = start_quick(vec![t.clone()]).await;
    let planter = h.client(&t.id).await;
    plant_cursor(&t.database, &planter, "held", "held-secret").await;
    let own = || cat(&[parse("s_own", "SELECT 'own'::text"), sync()]);
    let steps: Vec<(&str, Vec<u8>)> = vec![
        (
            "Bind skipped, then Bind failing",
            cat(&[
                own(),
                describe(b'S', "nosuch"),
                bind("held", "s_own"),
                sync(),
                bind("held", "s_own"),
                sync(),
            ]),
        ),
        ("two Binds in one batch", cat(&[own(), bind("held", "s_own"), bind("held", "s_own"), sync()])),
        ("Close, then Bind", cat(&[own(), close(b'P', "held"), bind("held", "s_own"), sync()])),
        (
            "DECLARE failing, then DECLARE by Execute",
            cat(&[
                query("BEGIN; DECLARE held CURSOR FOR SELECT 'mine'::text"),
                query("ROLLBACK"),
                query("BEGIN"),
                parse("", "DECLARE held CURSOR FOR SELECT 'mine'::text"),
                bind("", ""),
                execute(""),
                sync(),
            ]),
        ),
        (
            "DECLARE by Execute twice in a batch",
            cat(&[
                query("BEGIN"),
                parse("d", "DECLARE held CURSOR FOR SELECT 'mine'::text"),
                bind("", "d"),
                execute(""),
                bind("", "d"),
                execute(""),
                sync(),
            ]),
        ),
        (
            "DECLARE skipped, then DECLARE",
            cat(&[
                query("BEGIN"),
                describe(b'S', "nosuch"),
                query("DECLARE held CURSOR FOR SELECT 'mine'::text"),
                sync(),
                query("DECLARE held CURSOR FOR SELECT 'mine'::text"),
            ]),
        ),
        (
            "Bind failing, then DEALLOCATE ALL, then Bind",
            cat(&[
                own(),
                bind("held", "s_own"),
                sync(),
                query("DEALLOCATE ALL"),
                own(),
                bind("held", "s_own"),
                sync(),
            ]),
        ),
    ];
    let mut f = Failures::default();
    for (name, bytes) in steps {
        let mut s = raw_proxy(&h, &t.id).await;
        send(
            &mut s,
            &cat(&[bytes, execute("held"), sync(), describe(b'P', "held"), sync(), query("ROLLBACK")]),
        )
        .await;
        let (got, closed) = read_quiet(&mut s, Duration::from_millis(1500)).await;
        let seen = summary(&got);
        f.check(!got.windows(11).any(|w| w == b"held-secret"), || {
            format!("{name}: read the other client's rows: {seen:?}")
        });
        f.check(!closed && seen.last().is_some_and(|m| m.starts_with('Z')), || {
            format!("{name}: not answered: {seen:?}")
        });
        drop(s);
    }
    match rows(&planter, "SELECT 1").await {
        Ok(r) => f.check(r == vec![vec!["1".to_owned()]], || format!("the planter: {r:?}")),
        Err(e) => f.0.push(format!("the planter: {}", why(&e))),
    }
    f.assert_none();
}
