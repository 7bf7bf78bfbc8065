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
