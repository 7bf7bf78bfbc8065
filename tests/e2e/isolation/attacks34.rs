//! A hostile client of tenant a against the hold-back of a pipelining client's next
//! transaction (`isolation::pipelined`): a raw client of a keeps the pool's one connection
//! busy with a slow query while tenant b loops queries behind it, then sends what a driver
//! would pipeline behind that query. What a sends must get exactly PostgreSQL's replies
//! (transactions whole, its statements and settings following it across the handoff, nothing
//! held forever, PAUSE and the tenant's cap and counters as for any transaction), and b must
//! never see anything of a's session. Where PostgreSQL's answer is the reference, the same
//! messages go to one direct session.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pgtenant::config::TenantConfig;
use pgtenant::model::Isolation;
use tokio::net::TcpStream;

use super::*;
use crate::support::raw::*;

/// What a's first message does: holds the connection long past the 50 ms of `HOLD_STREAK`,
/// with b queued behind it.
pub(super) const SLOW: &str = "SELECT pg_sleep(0.5)";
/// Its replies as [`words`] gives them.
pub(super) const SLOW_WORDS: [&str; 3] = ["D()", "C(SELECT 1)", "Z(I)"];

/// The replies that say what ran: rows, completions, errors, ReadyForQuery, CopyInResponse.
pub(super) fn words(bytes: &[u8]) -> Vec<String> {
    summary(bytes)
        .into_iter()
        .filter(|w| w == "G" || ["D(", "C(", "E(", "Z("].iter().any(|p| w.starts_with(p)))
        .collect()
}

pub(super) fn expect(parts: &[&[&str]]) -> Vec<String> {
    parts.iter().flat_map(|p| p.iter().map(|w| (*w).to_owned())).collect()
}

/// Tenant b's client looping a query until `stop`, so a client of b always waits for the
/// pool's one connection while a holds it: each time it must run as b, and see none of the
/// settings a's session made (a custom setting and statement_timeout). Counts them in `n`.
fn b_loop(
    cb: Client,
    b: String,
    stop: Arc<AtomicBool>,
    n: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        while !stop.load(Ordering::SeqCst) {
            let sql = "SELECT current_schema(), current_setting('statement_timeout'), \
                       coalesce(current_setting('attack34.secret', true), '')";
            let got = rows(&cb, sql).await.unwrap_or_else(|e| panic!("b: {}", why(&e)));
            assert_eq!(got, vec![vec![b.clone(), "0".to_owned(), String::new()]], "b saw a's session");
            n.fetch_add(1, Ordering::SeqCst);
        }
        n.load(Ordering::SeqCst)
    })
}

/// A proxy for the pair over one shared connection, b looping behind it, and a raw client of
/// a.
pub(super) struct Scene {
    pub(super) h: Harness,
    pub(super) a: TenantConfig,
    stop: Arc<AtomicBool>,
    b: tokio::task::JoinHandle<usize>,
    /// b's queries so far.
    pub(super) b_ran: Arc<AtomicUsize>,
    pub(super) ra: TcpStream,
    resets: u64,
}

pub(super) async fn scene() -> Scene {
    let (a, b) = tenant_pair(Isolation::Schema, Access::Write, 1).await;
    let mut cfg = config(vec![a.clone(), b.clone()]);
    cfg.pool.checkout_timeout = 15.0;
    let h = start(cfg).await;
    let ra = raw_proxy(&h, &a.id).await;
    let cb = h.client(&b.id).await;
    let stop = Arc::new(AtomicBool::new(false));
    let b_ran = Arc::new(AtomicUsize::new(0));
    let b = b_loop(cb, b.id.to_string(), stop.clone(), b_ran.clone());
    let resets = h.proxy.metrics.global().resets();
    Scene { h, a, stop, b, b_ran, ra, resets }
}

impl Scene {
    /// Tenant a's counters: its clients (active, waiting, idle), transactions and queries.
    fn a_counts(&self) -> ([i64; 3], u64, u64) {
        let all = self.h.proxy.metrics.tenants();
        let (_, a) = all.iter().find(|(t, _)| *t == self.a.id.as_str()).expect("a's counters");
        (a.clients, a.transactions, a.queries)
    }

    /// a sends `first` (behind [`SLOW`]) at once, and `then` 250 ms later, while its slow
    /// query still runs and b waits: what is held back. Returns a's replies, up to `readies`
    /// ReadyForQuery messages in all.
    pub(super) async fn run(&mut self, first: &[Vec<u8>], then: &[Vec<u8>], readies: usize) -> Vec<u8> {
        send(&mut self.ra, &cat(&[query(SLOW), cat(first)])).await;
        tokio::time::sleep(Duration::from_millis(250)).await;
        // a holds the connection now: what passes it on from here is the hold-back (a to b,
        // then b back to a, before a's last reply) or a leaving.
        self.resets = self.h.proxy.metrics.global().resets();
        send(&mut self.ra, &cat(then)).await;
        let (got, closed) = read_ready(&mut self.ra, readies, Duration::from_secs(10)).await;
        assert!(!closed && ready_count(&got) == readies, "a's replies stopped: {:?}", words(&got));
        got
    }

    /// Cross-tenant resets since a's `then` was sent (see [`Scene::run`]).
    pub(super) fn resets(&self) -> u64 {
        self.h.proxy.metrics.global().resets() - self.resets
    }

    /// Stops b's loop; how many queries it ran.
    pub(super) async fn stop_b(self) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        let n =
            tokio::time::timeout(Duration::from_secs(20), self.b).await.expect("b stops").expect("b's loop");
        assert!(n > 0, "b never ran");
        n
    }
}

/// The unnamed statement parsed (and synced) behind the slow query, bound in the held-back
/// batch: the handoff to b (whose reset drops it) and back parses it again where a's Bind
/// lands, as PostgreSQL keeps it across Syncs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_unnamed_statement_follows_its_client_across_the_hold_back() {
    let mut s = scene().await;
    let first = [parse("", "SELECT current_schema()::text || ':unnamed'"), sync()];
    let then = [bind("", ""), execute(""), sync(), bind("", ""), execute(""), sync()];
    let got = s.run(&first, &then, 4).await;
    let mine = format!("D({}:unnamed)", s.a.id);
    let row: [&str; 3] = [&mine, "C(SELECT 1)", "Z(I)"];
    assert_eq!(words(&got), expect(&[&SLOW_WORDS, &["Z(I)"], &row, &row]));
    assert!(s.resets() >= 2, "{} resets: a's Bind was not held back for b", s.resets());
    s.stop_b().await;
}

/// A named statement parsed behind the slow query, bound in the held-back batch, then closed
/// there: it runs as a's, and after the Close it is gone (26000), as on PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_statement_follows_its_client_and_closes_there() {
    let mut s = scene().await;
    let first = [parse("s34", "SELECT current_schema()::text || ':named'"), sync()];
    let then = [
        bind("", "s34"),
        execute(""),
        sync(),
        close(b'S', "s34"),
        sync(),
        bind("", "s34"),
        execute(""),
        sync(),
    ];
    let got = s.run(&first, &then, 5).await;
    let mine = format!("D({}:named)", s.a.id);
    assert_eq!(
        words(&got),
        expect(&[&SLOW_WORDS, &["Z(I)", &mine, "C(SELECT 1)", "Z(I)", "Z(I)", "E(26000)", "Z(I)"]])
    );
    assert!(s.resets() >= 2, "{} resets: a's Bind was not held back for b", s.resets());
    s.stop_b().await;
}

/// A transaction a opened behind the slow query (its BEGIN in flight, its status still idle
/// by the last ReadyForQuery) and went on in the held-back queries, with a pause in it: never
/// split across connections (each reply says T, one txid), and b is let in only after COMMIT.
/// The same with BEGIN in a multi-statement Query and in an extended batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_begun_in_flight_is_never_split() {
    for (i, begin) in [
        query("BEGIN"),
        query("BEGIN; SELECT 1"),
        cat(&[parse("", "BEGIN"), bind("", ""), execute(""), sync()]),
    ]
    .into_iter()
    .enumerate()
    {
        let mut s = scene().await;
        let begun: &[&str] = match i {
            0 => &["C(BEGIN)", "Z(T)"],
            1 => &["C(BEGIN)", "D(1)", "C(SELECT 1)", "Z(T)"],
            _ => &["C(BEGIN)", "Z(T)"],
        };
        let then = [
            query("INSERT INTO t SELECT 1, txid_current()::text"),
            query("SELECT pg_sleep(0.2)"),
            query("SAVEPOINT p; INSERT INTO t SELECT 2, txid_current()::text; RELEASE p"),
            query("SELECT count(*), count(DISTINCT owner) FROM t"),
            query("COMMIT"),
        ];
        let got = s.run(&[begin], &then, 7).await;
        let body: &[&str] = &[
            "C(INSERT 0 1)",
            "Z(T)",
            "D()",
            "C(SELECT 1)",
            "Z(T)",
            "C(SAVEPOINT)",
            "C(INSERT 0 1)",
            "C(RELEASE)",
            "Z(T)",
            "D(2|1)",
            "C(SELECT 1)",
            "Z(T)",
            "C(COMMIT)",
            "Z(I)",
        ];
        assert_eq!(words(&got), expect(&[&SLOW_WORDS, begun, body]), "BEGIN as {i}");
        s.stop_b().await;
    }
}

/// The transaction itself held back (its BEGIN the first message behind the slow query),
/// with b still waiting once a has the connection again and a pause inside: it runs whole on
/// the connection a gets next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_back_transaction_runs_whole_on_its_next_connection() {
    let mut s = scene().await;
    let then = [
        query("BEGIN"),
        query("INSERT INTO t SELECT 1, txid_current()::text"),
        query("SELECT pg_sleep(0.2)"),
        query("INSERT INTO t SELECT 2, txid_current()::text"),
        query("SELECT count(*), count(DISTINCT owner) FROM t"),
        query("COMMIT"),
    ];
    let got = s.run(&[], &then, 7).await;
    let body: &[&str] = &[
        "C(BEGIN)",
        "Z(T)",
        "C(INSERT 0 1)",
        "Z(T)",
        "D()",
        "C(SELECT 1)",
        "Z(T)",
        "C(INSERT 0 1)",
        "Z(T)",
        "D(2|1)",
        "C(SELECT 1)",
        "Z(T)",
        "C(COMMIT)",
        "Z(I)",
    ];
    assert_eq!(words(&got), expect(&[&SLOW_WORDS, body]));
    assert!(s.resets() >= 2, "{} resets: a's BEGIN was not held back for b", s.resets());
    // Counted once each, the held-back ones too: seven queries, two transactions (the slow
    // query's and a's own), a's one client idle again.
    let counted = eventually(Duration::from_secs(2), || async { s.a_counts() == ([0, 0, 1], 2, 7) }).await;
    assert!(counted, "a's counters (clients, transactions, queries): {:?}", s.a_counts());
    s.stop_b().await;
}

/// A transaction failed behind the slow query (status E at its ReadyForQuery): the held-back
/// queries stay on its connection and get 25P02 until the ROLLBACK, as on PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_transaction_keeps_its_connection_to_its_rollback() {
    let mut s = scene().await;
    let then = [query("SELECT 1"), query("ROLLBACK"), query("SELECT 2")];
    let got = s.run(&[query("BEGIN; SELECT 1/0")], &then, 5).await;
    let want: &[&str] = &[
        "C(BEGIN)",
        "E(22012)",
        "Z(E)",
        "E(25P02)",
        "Z(E)",
        "C(ROLLBACK)",
        "Z(I)",
        "D(2)",
        "C(SELECT 1)",
        "Z(I)",
    ];
    assert_eq!(words(&got), expect(&[&SLOW_WORDS, want]));
    s.stop_b().await;
}

/// Settings a makes in flight (a session SET by Query, a custom one by an extended batch; one
/// statement each, as the README says pgtenant follows them) follow a to the connection its
/// held-back query lands on; b's loop (`b_loop`) checks it never sees them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_made_in_flight_follow_their_client_and_reach_nobody_else() {
    let mut s = scene().await;
    let first = [
        query("SET statement_timeout = 4321"),
        cat(&[parse("", "SET attack34.secret = 'a-only'"), bind("", ""), execute(""), sync()]),
    ];
    let then = [query("SELECT current_setting('statement_timeout'), current_setting('attack34.secret')")];
    let got = s.run(&first, &then, 4).await;
    let want: &[&str] = &["C(SET)", "Z(I)", "C(SET)", "Z(I)", "D(4321ms|a-only)", "C(SELECT 1)", "Z(I)"];
    assert_eq!(words(&got), expect(&[&SLOW_WORDS, want]));
    assert!(s.resets() >= 2, "{} resets: a's query was not held back for b", s.resets());
    s.stop_b().await;
}

/// A LISTEN behind the slow query pins a's connection: what it pipelines next runs there at
/// once (same backend, no handoff), not held back for b, and b gets in once a leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_session_is_never_held_back() {
    let mut s = scene().await;
    let first = [query("SELECT pg_backend_pid()"), query("LISTEN attack34")];
    let then = [query("SELECT pg_backend_pid()")];
    let got = s.run(&first, &then, 4).await;
    let w = words(&got);
    assert_eq!(w.len(), 3 + 3 + 2 + 3, "{w:?}");
    assert_eq!(w[3], w[8], "the pinned client's queries ran on two backends: {w:?}");
    assert_eq!(w[6..8], ["C(LISTEN)".to_owned(), "Z(I)".to_owned()]);
    assert_eq!(s.resets(), 0, "b got the connection of a pinned session");
    send(&mut s.ra, &terminate()).await;
    s.stop_b().await;
}

/// Terminate right behind the held-back query: the query still runs (as PostgreSQL runs what
/// precedes a Terminate), once, and the session then ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminate_behind_the_held_back_query_still_runs_it() {
    let mut s = scene().await;
    send(&mut s.ra, &query(SLOW)).await;
    tokio::time::sleep(Duration::from_millis(250)).await;
    send(&mut s.ra, &cat(&[query("INSERT INTO t VALUES (34, 'before-terminate')"), terminate()])).await;
    let (got, closed) = read_eof(&mut s.ra, Duration::from_secs(10)).await;
    assert!(closed, "the session did not end: {:?}", words(&got));
    assert_eq!(words(&got), expect(&[&SLOW_WORDS, &["C(INSERT 0 1)", "Z(I)"]]));
    let ca = s.h.client(&s.a.id).await;
    let got = rows(&ca, "SELECT count(*) FROM t WHERE owner = 'before-terminate'").await.expect("count");
    assert_eq!(got, vec![vec!["1".to_owned()]]);
    s.stop_b().await;
}

/// A COPY FROM STDIN pipelined with its data behind the slow query, then a Flush and a
/// failing extended batch: held back as one, answered as PostgreSQL answers them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_and_a_failed_batch_held_back_are_answered_in_order() {
    let mut s = scene().await;
    let then = [
        query("COPY t FROM STDIN"),
        copy_data("1\tcopied\n2\tcopied\n"),
        copy_done(),
        flush(),
        parse("", "SELECT 1/0"),
        bind("", ""),
        execute(""),
        parse("", "SELECT 'skipped'"),
        sync(),
        query("SELECT count(*) FROM t WHERE owner = 'copied'"),
    ];
    let got = s.run(&[], &then, 4).await;
    let want: &[&str] = &["G", "C(COPY 2)", "Z(I)", "E(22012)", "Z(I)", "D(2)", "C(SELECT 1)", "Z(I)"];
    assert_eq!(words(&got), expect(&[&SLOW_WORDS, want]));
    assert!(s.resets() >= 2, "{} resets: a's COPY was not held back for b", s.resets());
    s.stop_b().await;
}

/// A Flush alone held back behind the slow query (it asks for nothing: PostgreSQL starts no
/// transaction for it), then a query: once answered, a's connection goes back to b. Before,
/// the scan took the Flush for the start of an extended batch that only a Sync ends, and a
/// kept the pool's one connection for as long as it stayed connected (b's 15 s checkout
/// timeout, 53300); so did a lone Flush not held back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_flush_held_back_leaves_no_connection_behind() {
    let mut s = scene().await;
    let got = s.run(&[], &[flush(), query("SELECT 3")], 2).await;
    assert_eq!(words(&got), expect(&[&SLOW_WORDS, &["D(3)", "C(SELECT 1)", "Z(I)"]]));
    for round in 0..2 {
        let before = s.b_ran.load(Ordering::SeqCst);
        assert!(
            eventually(Duration::from_secs(3), || async { s.b_ran.load(Ordering::SeqCst) > before + 1 })
                .await,
            "round {round}: b never got the connection back from a, idle after its Flush"
        );
        // And a lone Flush on a connection a holds, then a query.
        send(&mut s.ra, &cat(&[flush(), query("SELECT 4")])).await;
        let (got, _) = read_ready(&mut s.ra, 1, Duration::from_secs(10)).await;
        assert_eq!(words(&got), ["D(4)", "C(SELECT 1)", "Z(I)"]);
    }
    s.stop_b().await;
}

/// The tenant's connection cap as what others wait for (`TenantCap::anyone_waiting`): a pool
/// of two for a alone, a cap of one, and a second client of a looping behind a raw client
/// that always has a query in flight for 3 s. Each of the other client's queries runs within
/// the raw client's next 0.25 s query, not after the 3 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_waiting_at_its_tenants_cap_is_let_in() {
    let (mut a, _b) = tenant_pair(Isolation::Schema, Access::Write, 2).await;
    a.max_server_connections = Some(1);
    let mut cfg = config(vec![a.clone()]);
    cfg.pool.checkout_timeout = 15.0;
    let h = start(cfg).await;
    let mut ra = raw_proxy(&h, &a.id).await;
    let other = h.client(&a.id).await;
    let slow = query("SELECT pg_sleep(0.25)");
    send(&mut ra, &slow).await;
    let (stop, longest) = (Arc::new(AtomicBool::new(false)), Arc::new(std::sync::Mutex::new(Duration::ZERO)));
    let waiter = {
        let (stop, longest, schema) = (stop.clone(), longest.clone(), a.id.to_string());
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                let t = std::time::Instant::now();
                let got =
                    rows(&other, "SELECT current_schema()").await.unwrap_or_else(|e| panic!("{}", why(&e)));
                assert_eq!(got, vec![vec![schema.clone()]]);
                let took = t.elapsed();
                let mut l = longest.lock().expect("longest");
                *l = (*l).max(took);
                n += 1;
            }
            n
        })
    };
    // Twelve slow queries, the next sent while the last runs: always one in flight.
    for _ in 0..12 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        send(&mut ra, &slow).await;
    }
    let (got, closed) = read_ready(&mut ra, 13, Duration::from_secs(20)).await;
    assert!(!closed && ready_count(&got) == 13, "the raw client's replies stopped: {:?}", words(&got));
    stop.store(true, Ordering::SeqCst);
    let n = tokio::time::timeout(Duration::from_secs(20), waiter).await.expect("stops").expect("waiter");
    let longest = *longest.lock().expect("longest");
    eprintln!("the other client ran {n} queries, its longest {longest:?}");
    assert!(n >= 3, "the other client ran {n} queries");
    assert!(longest < Duration::from_millis(1500), "the other client waited {longest:?} at the cap");
}

/// PAUSE of a while its next query is held back: the slow query ends, the connection goes
/// back (the PAUSE settles: a holds none) and b goes on, the held-back query waits at the
/// pause like any new transaction of a's, and runs, as a's, after RESUME.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_while_held_back_settles_and_resume_runs_the_query() {
    let mut s = scene().await;
    let ta = pgtenant::model::TenantId::parse(&s.a.id).expect("tenant id");
    send(&mut s.ra, &query(SLOW)).await;
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(s.h.proxy.pools.pauses.pause(Some(&ta)), "PAUSE a");
    send(&mut s.ra, &query("SELECT current_schema()::text || ':after-resume'")).await;
    let (got, _) = read_ready(&mut s.ra, 2, Duration::from_millis(1500)).await;
    assert_eq!(words(&got), expect(&[&SLOW_WORDS]), "a's held-back query ran while a was paused");
    let settled =
        eventually(Duration::from_secs(2), || async { s.h.proxy.pools.checked_out(Some(&ta)) == 0 }).await;
    assert!(settled, "PAUSE a did not settle: a kept its connection");
    assert_eq!(s.a_counts().0, [0, 1, 0], "a's client waits at the pause (active, waiting, idle)");
    let before = s.b_ran.load(Ordering::SeqCst);
    assert!(
        eventually(Duration::from_secs(2), || async { s.b_ran.load(Ordering::SeqCst) > before + 1 }).await,
        "b stopped while a was paused"
    );
    assert!(s.h.proxy.pools.pauses.resume(Some(&ta)), "RESUME a");
    let (got, _) = read_ready(&mut s.ra, 1, Duration::from_secs(10)).await;
    let mine = format!("D({}:after-resume)", s.a.id);
    assert_eq!(words(&got), [mine.as_str(), "C(SELECT 1)", "Z(I)"]);
    s.stop_b().await;
}

/// What PostgreSQL answers to the same messages on one session (no pool), as [`words`].
pub(super) async fn direct(first: &[Vec<u8>], then: &[Vec<u8>], readies: usize) -> Vec<String> {
    let mut d = raw_direct("postgres").await;
    send(&mut d, &cat(&[query(SLOW), cat(first), cat(then)])).await;
    let (got, closed) = read_ready(&mut d, readies, Duration::from_secs(10)).await;
    assert!(!closed && ready_count(&got) == readies, "PostgreSQL: {:?}", words(&got));
    words(&got)
}

/// A case: what it tries, a's messages sent at once, those held back, ReadyForQuery count.
type Case = (&'static str, Vec<Vec<u8>>, Vec<Vec<u8>>, usize);

/// What the statements a left in flight became (a failed unnamed Parse leaves none; DISCARD
/// ALL and DEALLOCATE ALL drop the named ones) decides what its held-back Binds find on the
/// next connection, as on one PostgreSQL session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_dropped_in_flight_stay_dropped_after_the_hold_back() {
    let cases: [Case; 3] = [
        (
            "a failed unnamed Parse",
            vec![parse("", "SELECT 1"), sync(), parse("", "SELEC oops"), sync()],
            vec![bind("", ""), execute(""), sync()],
            4,
        ),
        (
            "DISCARD ALL",
            vec![parse("s34", "SELECT 34"), sync(), query("DISCARD ALL")],
            vec![bind("", "s34"), execute(""), sync(), query("SELECT 1")],
            5,
        ),
        (
            "DEALLOCATE ALL",
            vec![parse("s34", "SELECT 34"), sync(), query("DEALLOCATE ALL")],
            vec![
                bind("", "s34"),
                execute(""),
                sync(),
                parse("s34", "SELECT 35"),
                bind("", "s34"),
                execute(""),
                sync(),
            ],
            5,
        ),
    ];
    for (what, first, then, readies) in cases {
        let want = direct(&first, &then, readies).await;
        let mut s = scene().await;
        let got = s.run(&first, &then, readies).await;
        assert_eq!(words(&got), want, "{what}: through pgtenant and on PostgreSQL");
        assert!(s.resets() >= 2, "{what}: {} resets: the Bind was not held back for b", s.resets());
        // And a is still a (after DISCARD ALL too: its schema is set again).
        send(&mut s.ra, &query("SELECT current_schema()")).await;
        let (got, _) = read_ready(&mut s.ra, 1, Duration::from_secs(10)).await;
        let mine = format!("D({})", s.a.id);
        assert_eq!(words(&got), [mine.as_str(), "C(SELECT 1)", "Z(I)"], "{what}");
        s.stop_b().await;
    }
}

/// A FunctionCall (`pg_backend_pid`, oid 2026) and a Query of 1 MB (streamed through, never
/// held whole) held back: each answered as on PostgreSQL once a has a connection again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_call_and_a_streamed_query_held_back_are_answered() {
    let mut call = 2026i32.to_be_bytes().to_vec();
    call.extend_from_slice(&[0, 0, 0, 0, 0, 0]); // no argument formats, no arguments, text result
    let big = format!("SELECT length('{}')", "x".repeat(1 << 20));
    let then = [msg(b'F', &call), query(&big), query("SELECT 1")];
    let want = direct(&[], &then, 4).await;
    let mut s = scene().await;
    let got = s.run(&[], &then, 4).await;
    // The backend's pid differs: the FunctionCall's result (V) is only checked to be there.
    let tags = summary(&got);
    assert_eq!(tags.iter().filter(|w| *w == "V").count(), 1, "{tags:?}");
    assert_eq!(words(&got), want, "through pgtenant and on PostgreSQL");
    assert!(s.resets() >= 2, "{} resets: the FunctionCall was not held back for b", s.resets());
    s.stop_b().await;
}
