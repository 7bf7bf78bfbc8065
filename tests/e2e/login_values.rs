//! A client's session settings after RESET, RESET ALL and DISCARD ALL: back
//! to what its login gave them (its startup packet's `options`), as PostgreSQL brings a session
//! back, on the client's next server connection; nothing it SET before survives them. Each
//! step is run on PostgreSQL directly with the same login and the two answers compared.

use pgtenant::model::PoolMode;
use tokio_postgres::{Client, SimpleQueryMessage};

use crate::support::*;

/// The first column of the first row `sql` returns.
async fn value(c: &Client, sql: &str) -> String {
    let rows = c.simple_query(sql).await.expect(sql);
    rows.iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .expect("a row")
}

/// The settings the steps look at, each read in a transaction of its own.
async fn settings(c: &Client) -> Vec<String> {
    let mut out = Vec::new();
    for name in ["work_mem", "lock_timeout", "statement_timeout"] {
        out.push(format!("{name}={}", value(c, &format!("SHOW {name}")).await));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_brings_the_clients_login_settings_back() {
    let t = tenant_db("loginvals").await;
    let h = start(config(vec![with_mode(t.clone(), PoolMode::Transaction, 2)])).await;
    let options = "options='-c work_mem=1MB -c lock_timeout=3s'";
    let proxy = connect_str(&format!("{} {options}", h.conninfo(&t.id))).await;
    let c = cluster();
    let direct = connect_str(&format!(
        "host={} port={} user={} dbname={} {options}",
        c.socket_dir.display(),
        c.port,
        t.role,
        t.database
    ))
    .await;
    // Another client of the tenant between the steps, so that connections change hands.
    let other = h.client(&t.id).await;
    let steps: [&[&str]; 5] = [
        &[],
        &["SET work_mem = '2MB'", "SET statement_timeout = '7s'"],
        &["RESET work_mem"],
        &["SET work_mem = '3MB'", "SET lock_timeout = '9s'", "RESET ALL"],
        &["SET work_mem = '5MB'", "SET statement_timeout = '8s'", "DISCARD ALL"],
    ];
    let mut seen = Vec::new();
    for step in steps {
        for sql in step {
            proxy.simple_query(sql).await.expect(sql);
            direct.simple_query(sql).await.expect(sql);
        }
        other.simple_query("SET work_mem = '7MB'").await.expect("other client");
        let (a, b) = (settings(&direct).await, settings(&proxy).await);
        assert_eq!(b, a, "after {step:?}: pgtenant against PostgreSQL");
        seen.push(a);
    }
    // The steps showed what they are about: the login's values, a SET over them, and back.
    assert_eq!(seen[0], ["work_mem=1MB", "lock_timeout=3s", "statement_timeout=0"]);
    assert_eq!(seen[1], ["work_mem=2MB", "lock_timeout=3s", "statement_timeout=7s"]);
    assert_eq!(seen[2], ["work_mem=1MB", "lock_timeout=3s", "statement_timeout=7s"]);
    assert_eq!(seen[3], seen[0]);
    assert_eq!(seen[4], seen[0]);
}

/// The same steps with no other client between them (the connection stays the client's, in
/// transaction mode, and in session mode): after RESET, SET … TO DEFAULT, RESET ALL and
/// DISCARD ALL the client sees its login's values, as on PostgreSQL (pgtenant sets them again
/// behind the reset), also in a statement sent in the same write as the reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_on_a_connection_the_client_keeps_brings_its_login_settings_back() {
    for mode in [PoolMode::Transaction, PoolMode::Session] {
        let t = tenant_db("loginkeep").await;
        let h = start(config(vec![with_mode(t.clone(), mode, 1)])).await;
        let options = "options='-c work_mem=1MB -c lock_timeout=3s'";
        let proxy = connect_str(&format!("{} {options}", h.conninfo(&t.id))).await;
        let steps: [&[&str]; 4] = [
            &["SET work_mem = '2MB'", "RESET work_mem"],
            &["SET work_mem = '4MB'", "SET work_mem TO DEFAULT"],
            &["SET work_mem = '3MB'", "SET lock_timeout = '9s'", "RESET ALL"],
            &["SET work_mem = '5MB'", "DISCARD ALL"],
        ];
        for step in steps {
            for sql in step {
                proxy.simple_query(sql).await.expect(sql);
            }
            let got = settings(&proxy).await;
            assert_eq!(
                got,
                ["work_mem=1MB", "lock_timeout=3s", "statement_timeout=0"],
                "{mode:?} after {step:?}"
            );
        }
        // In the same write as the reset (tokio-postgres pipelines the queries it is given
        // at once): the login's value already.
        let (reset, show) = tokio::join!(
            proxy.simple_query("RESET ALL"),
            value(&proxy, "SELECT current_setting('work_mem')")
        );
        reset.expect("RESET ALL");
        assert_eq!(show, "1MB", "{mode:?}: a statement pipelined behind RESET ALL");
    }
}

/// A client of tenant b whose startup packet names tenant a's isolation setting (its schema
/// in `search_path`, or its `pgtenant.tenant_id`): the tenant's own value wins at login, and
/// RESET, RESET ALL and DISCARD ALL never bring the client's value back (a tenant's setting
/// is no login value): each next transaction sees only b's rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_never_brings_back_a_login_value_for_the_tenants_own_setting() {
    use pgtenant::model::Isolation;
    for mode in [Isolation::Schema, Isolation::Shared] {
        let (a, b) = tenant_pair(mode, Access::Read, 1).await;
        let h = start(config(vec![a.clone(), b.clone()])).await;
        let (name, hostile) = match mode {
            Isolation::Schema => ("search_path", format!("\"{}\"", a.id)),
            _ => ("pgtenant.tenant_id", a.id.clone()),
        };
        let options = format!("options='-c {name}={}'", hostile.replace('"', "\\\""));
        let c = connect_str(&format!("{} {options}", h.conninfo(&b.id))).await;
        let other = h.client(&a.id).await;
        for step in ["SELECT 1", "RESET ALL", "DISCARD ALL", &format!("RESET \"{name}\"")] {
            c.simple_query(step).await.expect(step);
            // Tenant a's client between the steps: the connection changes hands.
            other.simple_query("SELECT 1").await.expect("a");
            let owners = value(&c, "SELECT string_agg(DISTINCT owner, ',') FROM items").await;
            assert_eq!(owners, b.id, "{mode:?} after {step:?}: b sees only its own rows");
        }
    }
}

/// A reported setting (`TimeZone`) from the login: RESET, RESET ALL and DISCARD ALL bring it
/// back to the login's value, as PostgreSQL does, not to the pool's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_of_a_reported_setting_brings_its_login_value_back() {
    for mode in [PoolMode::Transaction, PoolMode::Session] {
        let t = tenant_db("loginrep").await;
        let h = start(config(vec![with_mode(t.clone(), mode, 2)])).await;
        let options = "options='-c TimeZone=Asia/Tokyo'";
        let proxy = connect_str(&format!("{} {options}", h.conninfo(&t.id))).await;
        let other = h.client(&t.id).await;
        for reset in ["RESET TimeZone", "RESET ALL", "DISCARD ALL"] {
            for step in ["SET TimeZone = 'Europe/Paris'", reset] {
                proxy.simple_query(step).await.expect(step);
                other.simple_query("SET TimeZone = 'America/Lima'").await.expect("other");
            }
            let shown = value(&proxy, "SHOW TimeZone").await;
            assert_eq!(shown, "Asia/Tokyo", "{mode:?} {reset}: the login's value");
        }
    }
}
