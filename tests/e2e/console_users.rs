//! Console users kept in the control database (issue 13): `pgtenant console-user
//! add|list|remove` writes them, the proxy reads them at each console login after `[admin]`
//! (which wins for a name it knows), psql logs in with them over SCRAM, and a control
//! database that does not answer leaves the config's users working and refuses the others
//! with the 28P01 of a wrong password.

use std::time::Duration;

use pgtenant::auth::Verifier;
use pgtenant::config::{Config, ConsoleRole, ConsoleUserConfig};
use pgtenant::model::AuthMethod;
use tokio::process::Command;

use crate::support::*;

const OPS_PW: &str = "ops-from-the-config";

/// SCRAM for everyone; one console user in the config file (`ops`, admin).
fn scram_config() -> Config {
    let mut c = config(Vec::new());
    c.proxy.auth = AuthMethod::ScramSha256;
    c.admin.users = vec![ConsoleUserConfig {
        name: "ops".into(),
        verifier: Verifier::hash(OPS_PW),
        password_env: String::new(),
        role: ConsoleRole::Admin,
    }];
    c
}

fn conninfo(h: &Harness, user: &str, password: &str) -> String {
    format!("host=127.0.0.1 port={} user={user} password={password} dbname=pgbouncer", h.addr.port())
}

/// psql on the console as `user`, running each of `commands` in one session (stopping at the
/// first error, which is reported with its SQLSTATE): (success, stdout, stderr).
async fn psql(h: &Harness, user: &str, password: &str, commands: &[&str]) -> (bool, String, String) {
    let mut cmd = Command::new("psql");
    cmd.arg(format!("postgresql://{user}@127.0.0.1:{}/pgbouncer", h.addr.port()))
        .args(["-X", "-A", "-v", "ON_ERROR_STOP=1", "-v", "VERBOSITY=verbose"])
        .env("PGPASSWORD", password)
        .env_remove("PGUSER");
    for c in commands {
        cmd.args(["-c", c]);
    }
    let out = cmd.output().await.expect("psql");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The SQLSTATE and message a console login gets, or None if it logged in.
async fn refusal(h: &Harness, user: &str, password: &str) -> Option<(String, String)> {
    match tokio_postgres::connect(&conninfo(h, user, password), tokio_postgres::NoTls).await {
        Ok(_) => None,
        Err(e) => {
            let message = e.as_db_error().map(|d| d.message().to_owned()).unwrap_or_else(|| e.to_string());
            Some((code(&e), message))
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_console_users_log_in_over_scram_with_their_role_until_removed() {
    let mut cfg = scram_config();
    let control = control_db(&mut cfg).await;
    let url = cfg.catalog.url.clone();
    // Added through the CLI: a password on standard input, one from an environment variable.
    let (rc, out, err) =
        pgtenant(&["console-user", "add", "dbadmin", "--role", "admin", "--url", &url], "admin-pw\n").await;
    assert_eq!(rc, 0, "{out}{err}");
    assert!(out.contains("console user dbadmin (admin) saved"), "{out}");
    let (rc, out, err) = pgtenant_env(
        &["console-user", "add", "dbstats", "--role", "stats", "--password-env", "STATS_PW", "--url", &url],
        "",
        &[("STATS_PW", "stats-pw")],
    )
    .await;
    assert_eq!(rc, 0, "{out}{err}");
    // A name the config file knows: the config wins, this password never logs in.
    let (rc, _, err) =
        pgtenant(&["console-user", "add", "ops", "--role", "admin", "--url", &url], "db-pw-for-ops\n").await;
    assert_eq!(rc, 0, "{err}");
    // Stored as verifiers, never the passwords.
    let stored: Vec<String> = control
        .query("SELECT verifier FROM pgtenant.console_users", &[])
        .await
        .expect("rows")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(stored.len(), 3);
    assert!(stored.iter().all(|v| v.starts_with("SCRAM-SHA-256$") && !v.contains("-pw")), "{stored:?}");
    let (rc, out, err) = pgtenant(&["console-user", "list", "--url", &url], "").await;
    assert_eq!(rc, 0, "{err}");
    let names: Vec<(&str, &str)> =
        out.lines().map(|l| l.split('\t').collect::<Vec<_>>()).map(|c| (c[0], c[1])).collect();
    assert_eq!(names, [("dbadmin", "admin"), ("dbstats", "stats"), ("ops", "admin")], "{out}");
    assert!(!out.contains("SCRAM") && !out.contains("-pw"), "the list shows no verifier: {out}");

    let (h, _catalog) = start_control(cfg).await;
    // The admin from the control database: SHOW, PAUSE and RESUME.
    let (ok, out, err) = psql(&h, "dbadmin", "admin-pw", &["SHOW POOLS", "PAUSE", "RESUME"]).await;
    assert!(ok, "{out}{err}");
    assert!(out.starts_with("database|user|cl_active|"), "{out}");
    let tags: Vec<&str> = out.lines().filter(|l| matches!(*l, "PAUSE" | "RESUME")).collect();
    assert_eq!(tags, ["PAUSE", "RESUME"], "{out}");
    assert!(!h.proxy.pools.pauses.all_paused(), "RESUME undid the PAUSE");
    // The stats user: SHOW yes, PAUSE refused as for a stats user of the config.
    let (ok, out, err) = psql(&h, "dbstats", "stats-pw", &["SHOW STATS", "PAUSE"]).await;
    assert!(!ok, "PAUSE must be refused: {out}");
    assert!(out.starts_with("database|total_server_assignment_count|"), "SHOW ran first: {out}");
    assert!(err.contains("08P01") && err.contains("admin access needed"), "{err}");
    // Wrong passwords, the database's password of a config user, and unknown users all get
    // the same refusal.
    let unknown = refusal(&h, "nobody", "admin-pw").await.expect("unknown user refused");
    assert_eq!(unknown.0, "28P01", "{unknown:?}");
    for (user, pw) in [("dbadmin", "wrong"), ("dbstats", "admin-pw"), ("ops", "db-pw-for-ops")] {
        assert_eq!(refusal(&h, user, pw).await.as_ref(), Some(&unknown), "{user}");
    }
    assert_eq!(refusal(&h, "ops", OPS_PW).await, None, "the config's password logs in");

    // Removed: the next login is refused, no restart needed.
    let (rc, out, err) = pgtenant(&["console-user", "remove", "dbstats", "--url", &url], "").await;
    assert_eq!(rc, 0, "{err}");
    assert!(out.contains("console user dbstats removed"), "{out}");
    assert_eq!(refusal(&h, "dbstats", "stats-pw").await, Some(unknown.clone()));
    let (rc, _, err) = pgtenant(&["console-user", "remove", "dbstats", "--url", &url], "").await;
    assert!(rc != 0 && err.contains("no console user"), "{err}");
    // Changed in place: the new password logs in from the next login, the old one no more.
    let (rc, _, err) =
        pgtenant(&["console-user", "add", "dbadmin", "--role", "stats", "--url", &url], "new-pw\n").await;
    assert_eq!(rc, 0, "{err}");
    assert_eq!(refusal(&h, "dbadmin", "admin-pw").await, Some(unknown));
    let (ok, _, err) = psql(&h, "dbadmin", "new-pw", &["PAUSE"]).await;
    assert!(!ok && err.contains("admin access needed"), "now a stats user: {err}");
}

/// With the control database gone, `[admin]` users still log in; a user only the database
/// knows is refused exactly as a wrong password is, and the log says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_control_database_config_users_work_and_others_get_28p01() {
    let logs = logs();
    let forwarder = Forwarder::start(cluster().port).await;
    let mut cfg = scram_config();
    let control = control_db(&mut cfg).await;
    let db = catalog_dbname(&cfg);
    control
        .execute(
            "INSERT INTO pgtenant.console_users (name, verifier, role) VALUES ('outage_only', $1, 'admin')",
            &[&Verifier::hash("outage-pw")],
        )
        .await
        .expect("console user row");
    cfg.catalog.url = format!(
        "host=127.0.0.1 port={} user=postgres password={} dbname={db} connect_timeout=1",
        forwarder.port,
        pgtenant::embedded::SUPERUSER_PASSWORD
    );
    cfg.catalog.lookup_timeout = 0.5;
    let (h, _catalog) = start_control(cfg).await;
    assert_eq!(refusal(&h, "outage_only", "outage-pw").await, None, "logs in while the database answers");
    let wrong = refusal(&h, "outage_only", "wrong").await.expect("wrong password refused");
    assert_eq!(wrong.0, "28P01");

    forwarder.stop();
    let started = std::time::Instant::now();
    assert_eq!(refusal(&h, "outage_only", "outage-pw").await, Some(wrong), "refused as a wrong password");
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    let (ok, out, err) = psql(&h, "ops", OPS_PW, &["SHOW STATE", "PAUSE", "RESUME"]).await;
    assert!(ok, "the config's admin works without the control database: {out}{err}");
    let why = logs.lines_with(&["cannot read pgtenant.console_users", "outage_only"]);
    assert!(!why.is_empty(), "no log line says why outage_only was refused");

    forwarder.resume().await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            refusal(&h, "outage_only", "outage-pw").await.is_none()
        })
        .await,
        "logs in again once the control database is back"
    );
}
