//! A hostile tenant against the SET tracking of a batch (`client::rewrite::sets`), the reseed
//! by a FunctionCall (`pool::handoff::queue_reseed`) and a client leaving while only
//! pgtenant's own replies are due (`client::relay::ending`): what a client's next server
//! connection replays is what PostgreSQL kept, another client of the tenant never finds a
//! SET it did not run, and the reseed is answered as a FunctionCall, seen by nobody.

use std::time::Duration;

use pgtenant::model::Isolation;
use tokio::io::{AsyncRead, AsyncWrite};

use super::*;
use crate::support::raw::*;
use crate::support::*;

use super::attacks29::{direct_with, pbe, replies};

/// [`replies`] within 10 s each, summarised.
async fn run<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, steps: &[Vec<u8>]) -> Vec<String> {
    summary(&replies(s, steps, Duration::from_secs(10)).await)
}

/// Where a run of `steps` went wrong: a SET another client found (`leaks`), or `a`'s
/// work_mem after a handoff other than PostgreSQL's (`differs`).
#[derive(Default)]
struct Found {
    leaks: Vec<String>,
    differs: Vec<String>,
}

/// `steps` run by a client of `a` (after `SET work_mem = '7MB'`) and straight on PostgreSQL;
/// then another client of `a` and one of `b` take the one server connection (each must find
/// the default work_mem and its own schema), and `a` asks its work_mem again, on a
/// connection its settings are replayed on.
async fn differ(
    h: &Harness,
    a: &TenantConfig,
    b: &TenantConfig,
    what: &str,
    steps: &[Vec<u8>],
    found: &mut Found,
) {
    let mut steps = steps.to_vec();
    steps.insert(0, query("SET work_mem = '7MB'"));
    let show = [query("SHOW work_mem")];
    let mut direct = direct_with(&a.database, &format!("-c search_path={}", a.id)).await;
    run(&mut direct, &steps).await;
    let want = run(&mut direct, &show).await;
    let mut ca = raw_proxy(h, &a.id).await;
    run(&mut ca, &steps).await;
    for (who, tenant) in [("another client of a", a), ("b", b)] {
        let c = h.client(&tenant.id).await;
        let row = c.query_one("SELECT current_schema()::text, current_setting('work_mem')", &[]).await;
        match row {
            Ok(row) => {
                let (schema, work_mem): (String, String) = (row.get(0), row.get(1));
                if schema != tenant.id || work_mem != "4MB" {
                    found.leaks.push(format!("{what}: {who} got schema {schema:?}, work_mem {work_mem:?}"));
                }
            }
            Err(e) => found.leaks.push(format!("{what}: {who} failed: {e:?}")),
        }
    }
    let got = run(&mut ca, &show).await;
    if got != want {
        found.differs.push(format!("{what}: a after the handoff {got:?}, PostgreSQL {want:?}"));
    }
}

fn batch(statements: &[&str]) -> Vec<u8> {
    cat(&statements.iter().map(|s| pbe(s)).chain([sync()]).collect::<Vec<_>>())
}

/// Batches whose SETs PostgreSQL keeps or undoes by chained transactions, failed commands,
/// pipelines flushed and ended by a Query, resets undone by an error: pgtenant follows what
/// PostgreSQL kept, and nothing reaches another client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chained_and_flushed_batches_are_followed_as_postgresql_keeps_them() {
    let (a, b) = tenant_pair(Isolation::Schema, Access::Write, 1).await;
    let h = start(config(vec![a.clone(), b.clone()])).await;
    let flushed = || cat(&[pbe("SET work_mem = '9MB'"), flush()]);
    let cases: Vec<(&str, Vec<Vec<u8>>)> = vec![
        ("COMMIT AND CHAIN with no block", vec![batch(&["SET work_mem = '9MB'", "COMMIT AND CHAIN"])]),
        (
            "COMMIT AND CHAIN, then ROLLBACK",
            vec![batch(&[
                "BEGIN",
                "SET work_mem = '9MB'",
                "COMMIT AND CHAIN",
                "SET work_mem = '11MB'",
                "ROLLBACK",
            ])],
        ),
        (
            "ROLLBACK AND CHAIN, then COMMIT",
            vec![batch(&[
                "BEGIN",
                "SET work_mem = '9MB'",
                "ROLLBACK AND CHAIN",
                "SET work_mem = '11MB'",
                "COMMIT",
            ])],
        ),
        ("COMMIT PREPARED of nothing", vec![batch(&["SET work_mem = '9MB'", "COMMIT PREPARED 'none'"])]),
        ("SET LOCAL with no block", vec![batch(&["SET LOCAL work_mem = '9MB'"])]),
        ("SET SESSION, then an error", vec![batch(&["SET SESSION work_mem = '9MB'", "SELECT 1/0"])]),
        (
            "RESET undone by an error",
            vec![batch(&["SET work_mem = '9MB'"]), batch(&["RESET work_mem", "SELECT 1/0"])],
        ),
        (
            "SET TO DEFAULT undone by ROLLBACK",
            vec![batch(&["SET work_mem = '9MB'"]), batch(&["SET work_mem TO DEFAULT", "ROLLBACK"])],
        ),
        ("flushed, then an error", vec![flushed(), batch(&["SELECT 1/0"])]),
        ("flushed, then a Query", vec![flushed(), query("SELECT 1"), sync()]),
        ("flushed, then a failing Query", vec![flushed(), query("SELECT 1/0"), sync()]),
        ("flushed, then ROLLBACK", vec![flushed(), query("ROLLBACK"), sync()]),
        ("simple, then an error", vec![query("SET work_mem = '9MB'; SELECT 1/0")]),
        (
            "VACUUM, then an error",
            vec![batch(&["SET work_mem = '9MB'", "VACUUM pg_catalog.pg_am", "SELECT 1/0"])],
        ),
        ("simple PREPARE TRANSACTION", vec![query("SET work_mem = '9MB'; PREPARE TRANSACTION 'x'")]),
        (
            "named statement",
            vec![cat(&[
                parse("s1", "SET work_mem = '9MB'"),
                parse("", "SET work_mem = '11MB'"),
                bind("", "s1"),
                execute(""),
                close(b'S', "s1"),
                sync(),
            ])],
        ),
    ];
    let mut found = Found::default();
    for (what, steps) in &cases {
        differ(&h, &a, &b, what, steps, &mut found).await;
    }
    assert!(found.leaks.is_empty() && found.differs.is_empty(), "{:#?}\n{:#?}", found.leaks, found.differs);
}

/// Batches whose SETs pgtenant does not follow although PostgreSQL keeps them (README: a
/// SET among other statements in one Query, after a ROLLBACK TO SAVEPOINT, run by a portal
/// bound before the last unnamed Parse, or before a PREPARE TRANSACTION outside a block,
/// which PostgreSQL answers ROLLBACK after committing): the client loses them on its next
/// connection, and the connection they are on is reset before anyone else gets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sets_pgtenant_cannot_follow_never_reach_another_client() {
    let (a, b) = tenant_pair(Isolation::Schema, Access::Write, 1).await;
    let h = start(config(vec![a.clone(), b.clone()])).await;
    let cases: Vec<(&str, Vec<Vec<u8>>)> = vec![
        (
            "simple, COMMIT, then an error",
            vec![query("SET work_mem = '9MB'; COMMIT; SET work_mem = '11MB'; SELECT 1/0")],
        ),
        ("simple block", vec![query("BEGIN; SET work_mem = '9MB'; COMMIT; SET work_mem = '11MB'")]),
        (
            "savepoint rolled back after an error",
            vec![
                batch(&["BEGIN", "SET work_mem = '9MB'", "SAVEPOINT s", "SELECT 1/0"]),
                batch(&["ROLLBACK TO s", "COMMIT"]),
            ],
        ),
        (
            "PREPARE TRANSACTION with no block",
            vec![batch(&["SET work_mem = '9MB'", "PREPARE TRANSACTION 'x'"])],
        ),
        (
            "portal of an earlier statement",
            vec![cat(&[
                parse("", "SET work_mem = '9MB'"),
                bind("p1", ""),
                parse("", "SET work_mem = '11MB'"),
                bind("p2", ""),
                execute("p1"),
                sync(),
            ])],
        ),
        ("savepoint rolled back, then COMMIT", vec![batch(&super::attacks29::SAVEPOINT_BATCH)]),
        ("block across batches", vec![batch(&["BEGIN", "SET work_mem = '9MB'"]), batch(&["COMMIT"])]),
    ];
    let mut found = Found::default();
    for (what, steps) in &cases {
        differ(&h, &a, &b, what, steps, &mut found).await;
    }
    assert!(found.leaks.is_empty(), "{:#?}", found.leaks);
    // They do differ from PostgreSQL (so this test sees the sequences it means to).
    assert_eq!(found.differs.len(), cases.len(), "{:#?}", found.differs);
}

/// An extended batch flushed but never synced keeps its transaction open on the server (the
/// INSERT's row is not committed, its locks held), with no ReadyForQuery to say so: the last
/// status pgtenant saw is idle. `idle_transaction_timeout` ends it as it ends a client idle in
/// a block (25P03, rolled back), and the pool's one connection goes to the next client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsynced_batch_left_idle_meets_the_idle_transaction_timeout() {
    let mut t = with_mode(tenant_db("unsyncidle").await, pgtenant::model::PoolMode::Transaction, 1);
    t.timeouts.idle_transaction_timeout = Some(1.0);
    let h = start(config(vec![t.clone()])).await;
    let setup = h.client(&t.id).await;
    setup.batch_execute("CREATE TABLE held (x int)").await.expect("table");
    drop(setup);
    // Flushed (its replies in), and not even flushed (the server owes them, to be sent only
    // at a Sync or Flush that never comes).
    for (what, tail) in [("flushed", vec![flush()]), ("unflushed", vec![])] {
        let mut c = raw_proxy(&h, &t.id).await;
        send(&mut c, &cat(&[vec![pbe("INSERT INTO held VALUES (1)")], tail].concat())).await;
        let started = std::time::Instant::now();
        let (got, closed) = read_eof(&mut c, Duration::from_secs(6)).await;
        assert!(closed, "{what}: the client idle in its unsynced batch is disconnected: {:?}", summary(&got));
        assert!(started.elapsed() >= Duration::from_millis(800), "{what}: not before the timeout");
        assert_eq!(sqlstate(&got).as_deref(), Some("25P03"), "{what}: {:?}", summary(&got));
        let other = h.client(&t.id).await;
        let count = other.query_one("SELECT count(*) FROM held", &[]);
        let n: i64 = tokio::time::timeout(Duration::from_secs(3), count)
            .await
            .expect("the next client is served")
            .expect("count")
            .get(0);
        assert_eq!(n, 0, "{what}: the abandoned batch rolled back");
    }
}

/// A client that leaves (Terminate) inside a transaction block right after a reset, the
/// restore pgtenant queued behind it held back (so only pgtenant's own replies are due when
/// the Terminate comes): pgtenant waits for them, and the connection, in the client's open
/// block (or its failed one), is closed, never pooled: the block rolls back and the next
/// client of either tenant gets another backend, outside any transaction, in its schema.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_in_a_block_behind_its_reset_never_pools_the_block() {
    use pgtenant::model::PoolMode;
    let (a, b) = tenant_pair(Isolation::Schema, Access::Write, 1).await;
    let resets = ["RESET ALL", "RESET search_path"];
    let port =
        super::attacks29::slow_behind(resets.iter().map(|r| query(r)).collect(), Duration::from_millis(300))
            .await;
    let mut failures = Vec::new();
    for mode in [PoolMode::Session, PoolMode::Transaction] {
        let mut cfg = config(vec![with_mode(a.clone(), mode, 1), with_mode(b.clone(), mode, 1)]);
        cfg.upstreams[0].port = port;
        let h = start(cfg).await;
        for reset in resets {
            for (what, block) in [
                ("open", "BEGIN; INSERT INTO t VALUES (1, 'left')"),
                ("failed", "BEGIN; INSERT INTO t VALUES (1, 'left'); SELECT 1/0"),
            ] {
                let ca = h.client(&a.id).await;
                let pid: i32 = ca.query_one("SELECT pg_backend_pid()", &[]).await.expect("pid").get(0);
                drop(ca);
                let mut s = raw_proxy(&h, &a.id).await;
                send(&mut s, &cat(&[query(block), query(reset)])).await;
                let (got, _) = read_ready(&mut s, 2, Duration::from_secs(5)).await;
                assert_eq!(ready_count(&got), 2, "{mode:?} {reset} {what}: {:?}", summary(&got));
                send(&mut s, &terminate()).await;
                let _ = read_eof(&mut s, Duration::from_secs(5)).await;
                for tenant in [&a, &b] {
                    let c = h.client(&tenant.id).await;
                    let sql = "SELECT pg_backend_pid(), current_schema()::text, \
                               pg_current_xact_id_if_assigned() IS NULL, \
                               (SELECT count(*) FROM t WHERE owner = 'left')";
                    let row = c.query_one(sql, &[]).await.expect("the next client's query");
                    let (next, schema, fresh, left): (i32, String, bool, i64) =
                        (row.get(0), row.get(1), row.get(2), row.get(3));
                    if next == pid || schema != tenant.id || !fresh || left != 0 {
                        failures.push(format!(
                            "{mode:?} {reset} {what}: {} got backend {next} (a's {pid}), schema {schema:?}, \
                             no xid {fresh}, rows left {left}",
                            tenant.id
                        ));
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// The reseed refused (EXECUTE on setseed revoked from PUBLIC, which only a superuser can
/// do): the FunctionCall is a simple-protocol message, so its error does not make the server
/// skip what follows, and the client's simple queries sent behind the handoff run on that
/// connection. pgtenant then ends the session with the server's error and never hands those
/// queries to another connection as well: b's INSERT is in at most once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_reseed_never_runs_the_clients_queries_twice() {
    let (a, b) = tenant_pair(Isolation::Schema, Access::Write, 1).await;
    let su = admin(&a.database).await;
    su.batch_execute("REVOKE EXECUTE ON FUNCTION pg_catalog.setseed(double precision) FROM PUBLIC")
        .await
        .expect("revoke");
    let h = start(config(vec![a.clone(), b.clone()])).await;
    let ca = h.client(&a.id).await;
    ca.query_one("SELECT 1", &[]).await.expect("a's query");
    drop(ca);
    let mut cb = raw_proxy(&h, &b.id).await;
    send(
        &mut cb,
        &cat(&[query("INSERT INTO t VALUES (1, 'once')"), query("INSERT INTO t VALUES (2, 'once')")]),
    )
    .await;
    let (got, _) = read_eof(&mut cb, Duration::from_secs(8)).await;
    assert_eq!(sqlstate(&got).as_deref(), Some("42501"), "{:?}", summary(&got));
    let counts =
        format!("SELECT count(*) FILTER (WHERE id = 1), count(*) FILTER (WHERE id = 2) FROM {}.t", b.id);
    let row = su.query_one(&counts, &[]).await.expect("count");
    let (one, two): (i64, i64) = (row.get(0), row.get(1));
    su.batch_execute("GRANT EXECUTE ON FUNCTION pg_catalog.setseed(double precision) TO PUBLIC")
        .await
        .expect("grant");
    assert!(one <= 1 && two <= 1, "b's inserts ran {one} and {two} times");
}
