//! Catalog changes reach the pools on their own (NOTIFY → lookup → pool): a new upstream
//! password drains the connections opened with the old one and the next client gets a
//! connection with the new one; a changed pool size is honoured, in both directions.

use std::time::Duration;

use pgtenant::model::PoolMode;
use tokio_postgres::{Client, NoTls};

use crate::support::*;

/// A client that has run a query through the proxy, or the SQLSTATE it got.
async fn session(h: &Harness, tenant: &str) -> Result<Client, String> {
    let (c, conn) = tokio_postgres::connect(&h.conninfo(tenant), NoTls).await.map_err(|e| code(&e))?;
    tokio::spawn(conn);
    c.batch_execute("SELECT 1").await.map_err(|e| code(&e))?;
    Ok(c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_upstream_password_applies_without_a_restart() {
    let t = tenant_db("setpw").await;
    let mut cfg = config(vec![]);
    let control = control_db(&mut cfg).await;
    insert_tenant(&control, &t).await;
    // Two proxies over one control database.
    let (h, _catalog) = start_control(cfg.clone()).await;
    let (h2, _catalog2) = start_control(cfg).await;
    drop(session(&h, &t.id).await.expect("first client"));
    drop(session(&h2, &t.id).await.expect("first client of the second proxy"));
    // Their server connections stay idle in the pools; a client of the first proxy takes
    // one into a transaction.
    assert!(eventually(Duration::from_secs(2), || async { backends(&t.database).await == 2 }).await);
    let busy = session(&h, &t.id).await.expect("busy client");
    busy.batch_execute("BEGIN; SELECT 1").await.expect("begin");
    assert_eq!(backends(&t.database).await, 2);
    // The password changes on the server and in the catalog (what `tenant set-password`
    // writes, here in plaintext as a catalog without a key file keeps it).
    admin("postgres")
        .await
        .batch_execute(&format!("ALTER ROLE \"{}\" PASSWORD 'the-new-one'", t.role))
        .await
        .expect("alter role");
    control
        .execute("UPDATE pgtenant.tenants SET login_password = 'the-new-one' WHERE id = $1", &[&t.id])
        .await
        .expect("set password");
    // The idle connection opened with the old password is drained without any client
    // arriving; the busy one stays with its client …
    assert!(
        eventually(Duration::from_secs(5), || async { backends(&t.database).await == 1 }).await,
        "the idle connection opened with the old password is still in the pool"
    );
    // … and is closed when it is released, not returned to the pool.
    busy.batch_execute("COMMIT").await.expect("commit");
    assert!(
        eventually(Duration::from_secs(5), || async { backends(&t.database).await == 0 }).await,
        "the busy connection opened with the old password went back to the pool"
    );
    // A new client of either proxy is served by a connection opened with the new password.
    for h in [&h, &h2] {
        let c = session(h, &t.id).await.expect("a new client after the password change");
        let who: String = c.query_one("SELECT current_user::text", &[]).await.expect("query").get(0);
        assert_eq!(who, t.role);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_pool_size_and_server_connection_cap_are_honoured() {
    let t = with_mode(tenant_db("resize").await, PoolMode::Session, 2);
    let mut cfg = config(vec![]);
    cfg.pool.checkout_timeout = 0.5;
    let control = control_db(&mut cfg).await;
    insert_tenant(&control, &t).await;
    let (h, _catalog) = start_control(cfg).await;
    // Session mode: each client holds a server connection while it is connected.
    let mut held = vec![session(&h, &t.id).await.expect("1"), session(&h, &t.id).await.expect("2")];
    assert_eq!(session(&h, &t.id).await.err().as_deref(), Some("53300"), "pool_size 2 is full");
    control.execute("UPDATE pgtenant.tenants SET pool_size = 4 WHERE id = $1", &[&t.id]).await.expect("grow");
    // The new size (and the tenant's server-connection cap, which follows it) applies.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while held.len() < 4 && tokio::time::Instant::now() < deadline {
        match session(&h, &t.id).await {
            Ok(c) => held.push(c),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    let grown = held.len() == 4;
    assert!(grown, "only {} sessions after growing the pool to 4", held.len());
    assert_eq!(backends(&t.database).await, 4);
    assert_eq!(session(&h, &t.id).await.err().as_deref(), Some("53300"), "pool_size 4 is full");
    // Shrinking: the connections in use are closed as their clients leave, down to the new
    // size.
    control
        .execute("UPDATE pgtenant.tenants SET pool_size = 1 WHERE id = $1", &[&t.id])
        .await
        .expect("shrink");
    assert!(
        eventually(Duration::from_secs(5), || async { h.proxy.pools.pools().iter().any(|p| p.size() == 1) })
            .await,
        "the pool did not take the new size"
    );
    held.clear();
    assert!(
        eventually(Duration::from_secs(5), || async { backends(&t.database).await <= 1 }).await,
        "{} server connections for a pool of 1",
        backends(&t.database).await
    );
    let one = session(&h, &t.id).await.expect("one session");
    assert_eq!(session(&h, &t.id).await.err().as_deref(), Some("53300"), "pool_size 1 is full");
    // The tenant's own cap, changed on its own, applies too: a pool of 3 under a cap of 2.
    control
        .execute(
            "UPDATE pgtenant.tenants SET pool_size = 3, max_server_connections = 2 WHERE id = $1",
            &[&t.id],
        )
        .await
        .expect("cap");
    let mut held = vec![one];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while held.len() < 2 && tokio::time::Instant::now() < deadline {
        match session(&h, &t.id).await {
            Ok(c) => held.push(c),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    assert_eq!(held.len(), 2, "the pool did not grow");
    assert_eq!(
        session(&h, &t.id).await.err().as_deref(),
        Some("53300"),
        "max_server_connections 2 holds below pool_size 3"
    );
    assert_eq!(backends(&t.database).await, 2);
}
