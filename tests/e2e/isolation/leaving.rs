//! A client that leaves a session-mode (or pinned) server connection however it leaves —
//! Terminate or a bare close, when idle, mid-query, inside a transaction, mid-COPY, mid-pipeline
//! without a Sync — after planting everything a session can keep (a temporary table, a
//! prepared statement, a WITH HOLD cursor, a LISTEN, a session advisory lock, settings by SET
//! and set_config, search_path, SET ROLE). Two tenants share one login role and a pool of
//! one, so the next client of the other tenant, and of the same one, lands on that backend
//! (`pg_backend_pid`) or on a new one where the old was closed; either way its first query
//! must see a clean session and get exactly its own reply (no NotificationResponse of the
//! previous client's LISTEN, no row it was owed).

use std::time::Duration;

use pgtenant::config::{SessionFeatures, TenantConfig};
use pgtenant::model::{Isolation, PoolMode};

use super::*;
use crate::support::raw::*;
use crate::support::*;

/// What every leaving client plants first (one simple query, one ReadyForQuery).
fn plant(role: &str, lock: usize) -> String {
    format!(
        "CREATE TEMP TABLE planted (x int); PREPARE planted_p AS SELECT 'a-secret'; \
         DECLARE planted_c CURSOR WITH HOLD FOR SELECT 'a-secret'; LISTEN planted_ch; \
         SELECT pg_advisory_lock({lock}); SET work_mem = '7MB'; \
         SELECT set_config('statement_timeout', '77s', false), set_config('my.secret', 'a-secret', false), \
         set_config('search_path', 'pg_catalog', false); SET ROLE {role}_low"
    )
}

/// The next client's first query: its backend and everything a previous session may leave.
const CHECK: &str = "SELECT pg_backend_pid(), current_user, session_user, current_setting('search_path'), \
     (SELECT count(*) FROM pg_prepared_statements), (SELECT count(*) FROM pg_cursors), \
     (SELECT count(*) FROM pg_listening_channels()), \
     (SELECT count(*) FROM pg_locks WHERE pid = pg_backend_pid() AND locktype = 'advisory'), \
     (SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema()), \
     current_setting('work_mem') = '7MB', current_setting('statement_timeout'), \
     coalesce(current_setting('my.secret', true), '')";

/// How a client leaves, after the plant.
struct Case {
    name: &'static str,
    /// Sent and answered up to `readies` ReadyForQuerys (0: read until quiet).
    answered: Vec<u8>,
    readies: usize,
    /// The last message of the answer to `answered`, as [`summary`] writes it.
    answer: &'static str,
    /// Sent last, unanswered; then the socket is closed.
    tail: Vec<u8>,
    /// Whether the backend must be the leaving client's (kept) or another (closed).
    kept: bool,
}

fn cases(a: &str) -> Vec<Case> {
    let t = format!("\"{a}\".t");
    vec![
        Case {
            name: "Terminate when idle",
            answered: vec![],
            readies: 0,
            answer: "",
            tail: terminate(),
            kept: true,
        },
        Case { name: "close when idle", answered: vec![], readies: 0, answer: "", tail: vec![], kept: true },
        Case {
            name: "close mid-query",
            answered: vec![],
            readies: 0,
            answer: "",
            tail: query("SELECT 'a-late', pg_sleep(30)"),
            kept: false,
        },
        Case {
            name: "Terminate inside a transaction",
            answered: query(&format!("BEGIN; INSERT INTO {t} VALUES (1, 'a-open')")),
            readies: 1,
            answer: "Z(T)",
            tail: terminate(),
            kept: false,
        },
        Case {
            name: "close mid-COPY",
            answered: query(&format!("COPY {t} FROM STDIN")),
            readies: 0,
            answer: "G",
            tail: copy_data("2\ta-copy\n"),
            kept: false,
        },
        Case {
            name: "Terminate mid-pipeline without Sync",
            answered: vec![],
            readies: 0,
            answer: "",
            tail: cat(&[
                parse("", &format!("INSERT INTO {t} VALUES (3, 'a-unsynced')")),
                bind("", ""),
                execute(""),
                terminate(),
            ]),
            kept: false,
        },
        Case {
            name: "Terminate mid-pipeline after an error, without Sync",
            answered: vec![],
            readies: 0,
            answer: "",
            tail: cat(&[
                parse("", "SELECT 1/0"),
                bind("", ""),
                execute(""),
                parse("", &format!("INSERT INTO {t} VALUES (4, 'a-skipped')")),
                bind("", ""),
                execute(""),
                terminate(),
            ]),
            kept: false,
        },
    ]
}

/// Runs `case` for a client of `a`, then checks the next client of `b` and of `a`.
/// `lock` is the advisory lock the plant takes (one per case, so that a backend left running
/// by one case cannot block the next).
async fn leave_then_check(
    h: &Harness,
    a: &TenantConfig,
    b: &TenantConfig,
    case: &Case,
    lock: usize,
    f: &mut Failures,
) {
    let name = case.name;
    let mut ra = raw_proxy(h, &a.id).await;
    send(&mut ra, &query("SELECT pg_backend_pid()")).await;
    let (got, _) = read_ready(&mut ra, 1, Duration::from_secs(5)).await;
    let Some(pid_a) = messages(&got).iter().find(|(t, _)| *t == b'D').map(|(_, d)| data_row(d)[0].clone())
    else {
        return f.0.push(format!("{name}: no pid: {:?}", summary(&got)));
    };
    send(&mut ra, &query(&plant(&a.role, lock))).await;
    let (got, _) = read_ready(&mut ra, 1, Duration::from_secs(5)).await;
    if summary(&got).iter().any(|m| m.starts_with('E')) {
        return f.0.push(format!("{name}: the plant failed: {:?}", summary(&got)));
    }
    if !case.answered.is_empty() {
        send(&mut ra, &case.answered).await;
        let (got, _) = if case.readies > 0 {
            read_ready(&mut ra, case.readies, Duration::from_secs(5)).await
        } else {
            read_quiet(&mut ra, Duration::from_millis(200)).await
        };
        let got = summary(&got);
        if got.last().map(String::as_str) != Some(case.answer) {
            let act = rows(&admin(&a.database).await, "SELECT pid, state, wait_event_type, wait_event, left(query, 60), backend_type FROM pg_stat_activity WHERE datname = current_database()").await;
            return f.0.push(format!(
                "{name}: expected the answer to end {:?}, got {got:?}; pid {pid_a}; {act:?}",
                case.answer
            ));
        }
    }
    send(&mut ra, &case.tail).await;
    drop(ra);
    // (A query left running is the subject of `an_abandoned_query_is_cancelled_every_time`.)
    if !case.kept && !case.name.ends_with("mid-query") {
        // The backend that ran the leaving client's session is gone (its query cancelled,
        // the connection closed), so nothing of that session, its advisory lock say, stays.
        let pid: i32 = pid_a.parse().expect("a pid");
        let gone = eventually(Duration::from_secs(3), || async move { !backend_alive(pid).await }).await;
        f.check(gone, || format!("{name}: backend {pid_a} still runs 3 s after its client left"));
    }
    // A notification for the previous client's channel, while its session is being left.
    admin(&a.database).await.batch_execute("NOTIFY planted_ch, 'a-secret'").await.expect("notify");
    for (next, path) in [(b, b.id.clone()), (a, a.id.clone())] {
        let who = format!("{name}: next client of {}", if next.id == a.id { "a" } else { "b" });
        let mut s = raw_proxy(h, &next.id).await;
        send(&mut s, &query(CHECK)).await;
        let (got, _) = read_ready(&mut s, 1, Duration::from_secs(10)).await;
        let got = summary(&got);
        let row = got.iter().find_map(|m| m.strip_prefix("D(")).map(|r| r.trim_end_matches(')').to_owned());
        let Some(row) = row else {
            f.0.push(format!("{who}: no row: {got:?}"));
            continue;
        };
        let pid = row.split('|').next().unwrap_or_default().to_owned();
        let want = format!("{pid}|{r}|{r}|{path}|0|0|0|0|0|f|0|", r = a.role);
        f.check(got == ["T".to_owned(), format!("D({want})"), "C(SELECT 1)".into(), "Z(I)".into()], || {
            format!("{who}: expected exactly its own clean row {want:?}, got {got:?}")
        });
        if next.id == b.id {
            f.check((pid == pid_a) == case.kept, || {
                format!(
                    "{who}: backend {pid} after {pid_a}, expected it {}",
                    if case.kept { "kept" } else { "closed" }
                )
            });
        }
    }
    let rows: i64 = admin(&a.database)
        .await
        .query_one(&format!("SELECT count(*) FROM \"{}\".t", a.id), &[])
        .await
        .expect("count")
        .get(0);
    f.check(rows == 0, || format!("{name}: {rows} row(s) of the leaving client's unfinished work committed"));
}

/// A pair in schema isolation with a pool of one in `mode`, a role `<login role>_low` the login
/// role may SET ROLE to, and a proxy that waits for a checkout long enough for a reset.
async fn pair(mode: PoolMode, features: SessionFeatures) -> (TenantConfig, TenantConfig, Harness) {
    let (mut a, mut b) = tenant_pair(Isolation::Schema, Access::Write, 1).await;
    a.pool_mode = Some(mode);
    b.pool_mode = Some(mode);
    admin("postgres")
        .await
        .batch_execute(&format!("CREATE ROLE {r}_low; GRANT {r}_low TO {r}", r = a.role))
        .await
        .expect("a role to SET ROLE to");
    admin(&a.database)
        .await
        .batch_execute(&format!(
            "GRANT USAGE ON SCHEMA \"{id}\" TO {r}_low; GRANT INSERT, SELECT ON \"{id}\".t TO {r}_low",
            id = a.id,
            r = a.role
        ))
        .await
        .expect("the low role may write a's t");
    let mut cfg = config(vec![a.clone(), b.clone()]);
    cfg.pool.checkout_timeout = 10.0;
    cfg.pool.session_features = features;
    (a, b, start(cfg).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_mode_client_leaves_nothing_however_it_leaves() {
    let (a, b, h) = pair(PoolMode::Session, SessionFeatures::Pin).await;
    let mut f = Failures::default();
    for (lock, case) in cases(&a.id).iter().enumerate() {
        leave_then_check(&h, &a, &b, case, lock, &mut f).await;
    }
    f.assert_none();
}

/// The same for transaction-mode clients that the plant pins (LISTEN, a temporary table, a
/// WITH HOLD cursor).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_client_leaves_nothing_however_it_leaves() {
    let (a, b, h) = pair(PoolMode::Transaction, SessionFeatures::Pin).await;
    let mut f = Failures::default();
    for (lock, case) in cases(&a.id).iter().enumerate() {
        leave_then_check(&h, &a, &b, case, lock, &mut f).await;
    }
    f.assert_none();
}

/// A session-mode client sends a long query (it holds a session advisory lock) and closes at
/// once, four times: pgtenant must cancel the query every time (README: a connection left
/// mid-query is closed, the running query cancelled), so that the backend ends and its lock
/// with it, and the next client of the tenant, which takes the same lock, is not held up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_query_is_cancelled_every_time() {
    let (a, _b, h) = pair(PoolMode::Session, SessionFeatures::Pin).await;
    let mut f = Failures::default();
    for round in 0..4 {
        let mut ra = raw_proxy(&h, &a.id).await;
        send(&mut ra, &query("SELECT pg_advisory_lock(99), pg_backend_pid()")).await;
        let (got, _) = read_ready(&mut ra, 1, Duration::from_secs(5)).await;
        let row = messages(&got).iter().find(|(t, _)| *t == b'D').map(|(_, d)| data_row(d));
        let pid: i32 = row.and_then(|r| r.get(1).and_then(|p| p.parse().ok())).expect("a pid");
        send(&mut ra, &query("SELECT 'a-late', pg_sleep(30)")).await;
        drop(ra);
        let gone = eventually(Duration::from_secs(3), || async move { !backend_alive(pid).await }).await;
        let act = rows(
            &admin(&a.database).await,
            "SELECT pid, state, wait_event, query FROM pg_stat_activity WHERE datname = current_database()",
        )
        .await;
        f.check(gone, || {
            format!("round {round}: backend {pid} still runs 3 s after its client left: {act:?}")
        });
    }
    f.assert_none();
}

/// The cancels `retire_running` sends again (100 ms and 1 s after the first) carry the
/// abandoned backend's key: they must never reach the next client's query. A session-mode
/// client of a leaves a `pg_sleep(30)` running; at once the next client (of a, then of b) takes
/// the pool's one place and runs `pg_sleep(1.5)` across both retries: it completes (no 57014)
/// on another backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_repeated_cancels_never_reach_the_next_client() {
    let (a, b, h) = pair(PoolMode::Session, SessionFeatures::Pin).await;
    for next in [&a, &b] {
        let mut ra = raw_proxy(&h, &a.id).await;
        send(&mut ra, &query("SELECT pg_backend_pid()")).await;
        let (got, _) = read_ready(&mut ra, 1, Duration::from_secs(5)).await;
        let row = messages(&got).iter().find(|(t, _)| *t == b'D').map(|(_, d)| data_row(d));
        let pid_a = row.and_then(|r| r.first().cloned()).expect("a pid");
        send(&mut ra, &query("SELECT pg_sleep(30)")).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(ra);
        let mut rn = raw_proxy(&h, &next.id).await;
        send(&mut rn, &query("SELECT pg_backend_pid()::text || '/' || pg_sleep(1.5)::text")).await;
        let (got, _) = read_ready(&mut rn, 1, Duration::from_secs(8)).await;
        let got = summary(&got);
        let row = got.iter().find_map(|m| m.strip_prefix("D(")).map(|r| r.trim_end_matches(')').to_owned());
        let pid_next = row.as_deref().and_then(|r| r.split('/').next()).unwrap_or_default().to_owned();
        assert_eq!(got, ["T".to_owned(), format!("D({pid_next}/)"), "C(SELECT 1)".into(), "Z(I)".into()]);
        assert_ne!(pid_next, pid_a, "the abandoned backend was handed on");
    }
}
