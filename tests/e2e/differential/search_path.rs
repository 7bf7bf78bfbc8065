//! Found by the concurrent run (`concurrent`, seeds 0xc0c0_0001 round 56 and 0xc0c0_0002
//! round 11): a schema tenant's session-resetting statement (DISCARD ALL, RESET ALL, RESET
//! search_path) and a statement behind it that names one of the tenant's tables.

use super::*;

/// On PostgreSQL, a session whose search_path came with the login (`options`) gets it back
/// from DISCARD ALL, RESET ALL and RESET search_path: the reset value is the login's. Through
/// pgtenant a schema tenant's search_path is the login's too (it is the tenant's isolation),
/// and a statement after the reset must still find the tenant's tables, whether it comes in
/// the same write or later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_of_the_session_keeps_the_tenants_search_path() {
    use Msg::*;
    let group = concurrent::tenant_group(1, 1).await;
    let mut differ = Vec::new();
    for mode in [PoolMode::Transaction, PoolMode::Session] {
        let h = start(config(vec![with_mode(group[0].clone(), mode, 1)])).await;
        let client = concurrent::clients(&group, 1, h.addr).remove(0);
        for reset in ["DISCARD ALL", "RESET ALL", "RESET search_path"] {
            let msgs = [Query(reset), Query("SELECT count(*) FROM fz"), Terminate];
            for chunks in [&[3][..], &[1, 2]] {
                let a = run(&client.direct, &msgs, chunks).await;
                let b = run(&client.proxy, &msgs, chunks).await;
                assert_eq!(a, ["C", "ZI", "T", "D", "C", "ZI"], "{msgs:?} in {chunks:?}: PostgreSQL");
                if b != a {
                    differ.push(format!(
                        "{mode:?} {msgs:?} in writes {chunks:?}: PostgreSQL {a:?}, pgtenant {b:?}"
                    ));
                }
            }
        }
    }
    assert!(differ.is_empty(), "{}", differ.join("\n"));
}
