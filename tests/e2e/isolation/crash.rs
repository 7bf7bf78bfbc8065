//! PostgreSQL 15 crashes a backend (signal 11), and with it every backend of the cluster (the
//! postmaster restarts them all: every tenant's sessions end), on an Execute of the unnamed
//! portal in the state a DISCARD ALL and a query of several statements failing in a
//! transaction block leave (found by the differential test's generator, reproduced on a
//! direct connection). pgtenant never sends such an Execute: it answers 34000 itself, as
//! PostgreSQL answers an Execute of an unnamed portal that no Bind made.

use std::time::Duration;

use pgtenant::model::{Isolation, PoolMode};

use super::*;
use crate::support::raw::*;
use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_tenant_crashes_the_cluster_through_the_unnamed_portal() {
    for mode in [PoolMode::Transaction, PoolMode::Session] {
        unnamed_portal_attacks(mode).await;
    }
}

async fn unnamed_portal_attacks(mode: PoolMode) {
    let (a, b) = tenant_pair(Isolation::Schema, Access::Write, 2).await;
    let (a, b) = (with_mode(a, mode, 2), with_mode(b, mode, 2));
    let h = start_quick(vec![a.clone(), b.clone()]).await;
    let cb = h.client(&b.id).await;
    let pb = pid(&cb).await;
    cb.batch_execute("BEGIN").await.expect("b's transaction");
    let pre = [query("BEGIN"), query("DISCARD ALL"), query("SELECT 1; SELECT 2"), sync()].concat();
    let attacks: [(&str, Vec<u8>); 3] = [
        ("Execute", [pre.clone(), execute(""), sync()].concat()),
        (
            "failed Bind, Sync, Execute",
            [pre.clone(), parse("", "SELECT 1"), bind("", ""), sync(), execute(""), sync()].concat(),
        ),
        ("Execute, Terminate", [pre.clone(), execute(""), terminate()].concat()),
    ];
    for (what, bytes) in attacks {
        let user = format!("app.{}", a.id);
        let mut ra = tokio::net::TcpStream::connect(h.addr).await.expect("connect");
        send(&mut ra, &startup_packet(&[("user", &user)])).await;
        let (_, closed) = read_ready(&mut ra, 1, Duration::from_secs(5)).await;
        assert!(!closed, "{mode:?} {what}: a logs in");
        send(&mut ra, &bytes).await;
        let (got, _) = read_ready(&mut ra, 6, Duration::from_secs(3)).await;
        let s = summary(&got);
        if !what.ends_with("Terminate") {
            assert!(
                s.contains(&"E(34000)".to_owned()),
                "{mode:?} {what}: a must get 34000 for the unnamed portal: {s:?}"
            );
        }
        drop(ra);
        // b's transaction, on its own backend, is still there: nothing crashed.
        let still = cb.query_one("SELECT pg_backend_pid()", &[]).await.map(|r| r.get::<_, i32>(0));
        assert_eq!(still.ok(), Some(pb), "{mode:?} {what}: b's session must survive");
    }
    cb.batch_execute("COMMIT").await.expect("b commits");
}

/// The same state reached, then left by its transaction's end (ROLLBACK, or the client
/// leaving mid-transaction), or passed through a COPY that fails (a trigger raising 08P01 or
/// another SQLSTATE, Syncs and Flushes in its data), or a Describe and Close of the unnamed
/// portal: an Execute of it after that, by the same client or by the next client of the
/// connection (a pool of one), must not crash the cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_copy_failure_or_transaction_end_reopens_the_crash() {
    for mode in [PoolMode::Transaction, PoolMode::Session] {
        crash_after_copy_or_end(mode).await;
    }
}

async fn crash_after_copy_or_end(mode: PoolMode) {
    let (a, b) = tenant_pair(Isolation::Schema, Access::Write, 1).await;
    let (a, b) = (with_mode(a, mode, 1), with_mode(b, mode, 1));
    let h = start_quick(vec![a.clone(), b.clone()]).await;
    // A session of its own on the cluster, outside pgtenant: ended by any backend's crash.
    let cb = admin(&b.database).await;
    let pb = pid(&cb).await;
    cb.batch_execute("BEGIN").await.expect("a transaction");
    let pre = [query("BEGIN"), query("DISCARD ALL"), query("SELECT 1; SELECT 2"), sync()].concat();
    let copy = |row: &str| [query("BEGIN"), query("COPY cz FROM STDIN"), copy_data(row)].concat();
    let flush = msg(b'H', &[]);
    let tail = [query("DISCARD ALL"), query("SELECT 1; SELECT 2"), sync(), execute(""), sync()].concat();
    // (what, first client's bytes, second client's bytes after the first left)
    let attacks: Vec<(&str, Vec<u8>, Vec<u8>)> = vec![
        ("ROLLBACK, Execute", [pre.clone(), query("ROLLBACK"), execute(""), sync()].concat(), vec![]),
        (
            "leave mid-transaction, next client Executes",
            [pre.clone(), terminate()].concat(),
            [execute(""), sync()].concat(),
        ),
        (
            "Describe, Close, Execute",
            [pre.clone(), describe(b'P', ""), close(b'P', ""), sync(), execute(""), sync()].concat(),
            vec![],
        ),
        (
            "Close, Bind, Execute",
            [pre.clone(), close(b'P', ""), bind("", ""), execute(""), sync()].concat(),
            vec![],
        ),
        ("copy 08P01, queries behind", [copy("8\n"), tail.clone()].concat(), vec![]),
        ("copy 22023, queries behind", [copy("7\n"), tail.clone()].concat(), vec![]),
        (
            "copy 08P01, Sync, Flush, queries behind",
            [copy("8\n"), sync(), flush.clone(), tail.clone()].concat(),
            vec![],
        ),
        (
            "copy 22023, Sync, Flush, queries behind",
            [copy("7\n"), sync(), flush.clone(), tail.clone()].concat(),
            vec![],
        ),
        (
            "copy 08P01, Bind and Execute behind",
            [
                copy("8\n"),
                sync(),
                query("DISCARD ALL"),
                query("SELECT 1; SELECT 2"),
                parse("", "SELECT 1"),
                bind("", ""),
                execute(""),
                sync(),
                execute(""),
                sync(),
            ]
            .concat(),
            vec![],
        ),
        (
            "extended copy 08P01, queries behind",
            [
                query("BEGIN"),
                parse("", "COPY cz FROM STDIN"),
                bind("", ""),
                execute(""),
                copy_data("8\n"),
                sync(),
                tail.clone(),
            ]
            .concat(),
            [execute(""), sync()].concat(),
        ),
        (
            "crash state, leave, next client Executes",
            [pre.clone(), query("ROLLBACK"), terminate()].concat(),
            [execute(""), sync()].concat(),
        ),
    ];
    let user = format!("app.{}", a.id);
    let user_b = format!("app.{}", b.id);
    let addr = h.addr;
    let login = move |user: &str| {
        let user = user.to_owned();
        async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
            send(&mut s, &startup_packet(&[("user", &user)])).await;
            let (got, closed) = read_ready(&mut s, 1, Duration::from_secs(5)).await;
            assert!(!closed && ready_count(&got) == 1, "{mode:?}: {user} logs in: {:?}", summary(&got));
            s
        }
    };
    let mut rs = login(&user).await;
    send(
        &mut rs,
        &query(
            "CREATE TABLE cz (a int); \
         CREATE FUNCTION cz_raise() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
         RAISE EXCEPTION 'raised' USING ERRCODE = CASE NEW.a WHEN 8 THEN '08P01' ELSE '22023' END; \
         END $$; \
         CREATE TRIGGER cz_t BEFORE INSERT ON cz FOR EACH ROW EXECUTE FUNCTION cz_raise()",
        ),
    )
    .await;
    let (got, _) = read_ready(&mut rs, 1, Duration::from_secs(5)).await;
    assert_eq!(summary(&got).last().map(String::as_str), Some("Z(I)"), "setup: {:?}", summary(&got));
    assert!(sqlstate(&got).is_none(), "setup: {:?}", summary(&got));
    drop(rs);
    for (what, first, second) in attacks {
        let mut ra = login(&user).await;
        send(&mut ra, &first).await;
        let (got, _) = read_ready(&mut ra, 12, Duration::from_secs(2)).await;
        let first_got = summary(&got);
        drop(ra);
        let mut second_got = Vec::new();
        if !second.is_empty() {
            let mut rs = login(&user).await;
            send(&mut rs, &second).await;
            let (got, _) = read_ready(&mut rs, 1, Duration::from_secs(3)).await;
            second_got = summary(&got);
        }
        // The copies did fail with the trigger's SQLSTATE (the path under attack was taken).
        for code in ["08P01", "22023"] {
            if what.contains(code) {
                assert!(first_got.contains(&format!("E({code})")), "{mode:?} {what}: {first_got:?}");
            }
        }
        let still = cb.query_one("SELECT pg_backend_pid()", &[]).await.map(|r| r.get::<_, i32>(0));
        assert_eq!(
            still.ok(),
            Some(pb),
            "{mode:?} {what}: the cluster's other sessions must survive (first client got {first_got:?}, second {second_got:?})"
        );
        // The next client of the connection, another tenant's, gets exactly its own replies.
        let mut rn = login(&user_b).await;
        send(&mut rn, &query("SELECT 'next'")).await;
        let (got, _) = read_ready(&mut rn, 1, Duration::from_secs(3)).await;
        let s = summary(&got);
        assert!(
            s.len() == 4 && s[0].starts_with('T') && s[2] == "C(SELECT 1)",
            "{mode:?} {what}: the next client's reply: {s:?} (first client got {first_got:?}, second {second_got:?})"
        );
    }
    cb.batch_execute("COMMIT").await.expect("commit");
}
