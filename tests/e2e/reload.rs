//! Live reload of the real binary: SIGHUP re-reads the file; a pool size raised under a
//! running pgbench takes effect with no failed transaction, an invalid file is refused with
//! the old configuration kept, a tenant added to the file can connect, and the log level
//! changes.

use std::time::Duration;

use pgtenant::config::TenantConfig;
use tokio::process::Command;

use crate::support::*;

/// `pgtenant serve` from a file the test rewrites, its log collected as it comes.
pub(crate) struct Served {
    process: ServeProcess,
    path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl std::ops::Deref for Served {
    type Target = ServeProcess;
    fn deref(&self) -> &ServeProcess {
        &self.process
    }
}

/// The file: `[proxy]` on port 0 (`extra_proxy` added to it), the local upstream, `tenants`.
pub(crate) fn toml(extra_proxy: &str, tenants: &[(&TenantConfig, usize)]) -> String {
    let mut s = format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\nstartup_timeout = 30\n{extra_proxy}\n\n\
         [[upstreams]]\nname = \"local\"\nhost = \"127.0.0.1\"\nport = {}\n",
        cluster().port
    );
    for (t, size) in tenants {
        s += &format!(
            "\n[[tenants]]\nid = \"{}\"\nupstream = \"local\"\ndatabase = \"{}\"\nrole = \"{}\"\n\
             password = \"{}\"\npool_mode = \"transaction\"\npool_size = {size}\n",
            t.id,
            t.database,
            t.role,
            t.password.as_deref().unwrap_or_default()
        );
    }
    s
}

impl Served {
    pub(crate) async fn start(text: &str) -> Served {
        Served::start_env(text, &[]).await
    }

    /// [`Served::start`] with environment variables set.
    pub(crate) async fn start_env(text: &str, envs: &[(&str, &str)]) -> Served {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pgtenant.toml");
        std::fs::write(&path, text).expect("write config");
        let mut command = pgtenant_command();
        command
            .arg("serve")
            .arg("--config")
            .arg(&path)
            .env_remove("RUST_LOG")
            .env_remove("PGTENANT_CATALOG_URL")
            .envs(envs.iter().copied());
        Served { process: ServeProcess::spawn(&mut command).await, path, _dir: dir }
    }

    fn url(&self, t: &TenantConfig) -> String {
        format!("postgresql://app.{}@127.0.0.1:{}/{}", t.id, self.addr.port(), t.database)
    }

    pub(crate) fn conninfo(&self, t: &TenantConfig) -> String {
        format!("host=127.0.0.1 port={} user=app.{} dbname={}", self.addr.port(), t.id, t.database)
    }

    /// Writes `text` as the file and sends SIGHUP.
    fn hup(&self, text: &str) {
        std::fs::write(&self.path, text).expect("rewrite config");
        self.signal("HUP");
    }

    /// [`Served::hup`], returning once the reload's outcome (the `n`-th) is logged.
    async fn reload(&self, text: &str, n: usize) {
        self.hup(text);
        let logged = eventually(Duration::from_secs(10), || async {
            let log = self.log();
            log.matches("configuration reloaded").count() + log.matches("reload refused").count() >= n
        })
        .await;
        assert!(logged, "reload {n} not logged: {}", self.log());
    }
}

fn pgbench_field(output: &str, prefix: &str) -> Option<u64> {
    let line = output.lines().find(|l| l.starts_with(prefix))?;
    line.split(':').nth(1)?.split(['/', ' ']).find(|w| !w.is_empty())?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_raises_a_pool_size_under_pgbench_without_failures() {
    let t = tenant_db("reload_pool").await;
    let served = Served::start(&toml("", &[(&t, 2)])).await;
    let init = Command::new("pgbench").args(["-i", "-q", "-s", "1"]).arg(served.url(&t)).output().await;
    assert!(init.expect("pgbench -i").status.success());
    // 12 clients on a pool of 2 for 10 s; the pool is raised to 6 while they run.
    let bench = tokio::spawn(
        Command::new("pgbench").args(["-n", "-c", "12", "-j", "2", "-T", "10"]).arg(served.url(&t)).output(),
    );
    let at_two =
        eventually(Duration::from_secs(10), || async { backends_as(&t.database, &t.role).await == 2 }).await;
    assert!(at_two, "the pool never reached its size 2");
    served.reload(&toml("", &[(&t, 6)]), 1).await;
    let at_six =
        eventually(Duration::from_secs(8), || async { backends_as(&t.database, &t.role).await == 6 }).await;
    assert!(at_six, "server connections after the reload: {}", backends_as(&t.database, &t.role).await);
    let out = bench.await.expect("join").expect("pgbench");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert_eq!(pgbench_field(&text, "number of failed transactions"), Some(0), "{text}");
    assert!(
        pgbench_field(&text, "number of transactions actually processed").is_some_and(|n| n > 0),
        "{text}"
    );
    // Never more than the new size.
    assert_eq!(backends_as(&t.database, &t.role).await, 6);
    assert!(served.log().contains("tenants ("), "{}", served.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_file_is_refused_and_a_tenant_added_by_reload_connects() {
    let a = tenant_db("reload_a").await;
    let b = tenant_db("reload_b").await;
    let served = Served::start(&toml("", &[(&a, 2)])).await;
    let open = connect_str(&served.conninfo(&a)).await;
    open.batch_execute("SELECT 1").await.expect("served before");
    assert!(tokio_postgres::connect(&served.conninfo(&b), tokio_postgres::NoTls).await.is_err());

    // An invalid file: refused with the reason, the running configuration kept.
    served.reload("[pool]\nsize = 0\n", 1).await;
    let log = served.log();
    assert!(log.contains("reload refused") && log.contains("pool.size"), "{log}");
    open.batch_execute("SELECT 1").await.expect("open session served after the refused reload");
    let again = connect_str(&served.conninfo(&a)).await;
    let v: i32 = again.query_one("SELECT 7", &[]).await.expect("new session").get(0);
    assert_eq!(v, 7);

    // A valid file adding tenant b: b connects, a still does.
    served.reload(&toml("", &[(&a, 2), (&b, 2)]), 2).await;
    let cb = connect_str(&served.conninfo(&b)).await;
    let db: String = cb.query_one("SELECT current_database()", &[]).await.expect("b").get(0);
    assert_eq!(db, b.database);
    open.batch_execute("SELECT 1").await.expect("a still served");

    // Removing a: its new connections are refused as a tenant never configured is.
    served.reload(&toml("", &[(&b, 2)]), 3).await;
    let refused =
        tokio_postgres::connect(&served.conninfo(&a), tokio_postgres::NoTls).await.err().expect("a is gone");
    let mut never = a.clone();
    never.id = unique("never");
    let unknown = tokio_postgres::connect(&served.conninfo(&never), tokio_postgres::NoTls)
        .await
        .err()
        .expect("unknown");
    assert_eq!(code(&refused), code(&unknown), "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_changes_the_log_level() {
    let t = tenant_db("reload_log").await;
    let served = Served::start(&toml("log_level = \"info\"", &[(&t, 2)])).await;
    connect_str(&served.conninfo(&t)).await.batch_execute("SELECT 1").await.expect("served");
    assert!(!served.log().contains(" DEBUG "), "{}", served.log());
    served.reload(&toml("log_level = \"debug\"", &[(&t, 2)]), 1).await;
    connect_str(&served.conninfo(&t)).await.batch_execute("SELECT 1").await.expect("served");
    let debug = eventually(Duration::from_secs(5), || async { served.log().contains(" DEBUG ") }).await;
    assert!(debug, "no debug line after the reload: {}", served.log());
    // Then warn, in JSON: the reload's own report (info) is not shown any more; a client's
    // login is not either; the next refused reload (an error) is, as JSON.
    // Both clients so far have logged their disconnect line (info) before the level changes.
    let both_left =
        eventually(Duration::from_secs(5), || async { served.log().matches(" disconnect ").count() >= 2 })
            .await;
    assert!(both_left, "no disconnect lines: {}", served.log());
    let before = served.log().len();
    served.hup(&toml("log_level = \"warn\"\nlog_format = \"json\"", &[(&t, 2)]));
    tokio::time::sleep(Duration::from_secs(1)).await;
    connect_str(&served.conninfo(&t)).await.batch_execute("SELECT 1").await.expect("served");
    served.reload("[pool]\nsize = 0\n", 2).await;
    let after = served.log()[before..].to_owned();
    assert!(!after.contains("DEBUG") && !after.contains("INFO"), "{after}");
    let refused = after.lines().find(|l| l.contains("reload refused")).expect("refusal logged");
    assert!(refused.starts_with('{') && refused.contains(r#""level":"ERROR""#), "{refused}");
}

/// SIGHUP with a shorter `[pool] idle_timeout` applies to the pool that already exists:
/// its idle server connection is closed within seconds, where the old 600 s kept it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_shortens_the_idle_timeout_of_an_existing_pool() {
    let t = tenant_db("reload_idle").await;
    let file = |idle: u32| toml("", &[(&t, 2)]) + &format!("\n[pool]\nidle_timeout = {idle}\n");
    let served = Served::start(&file(600)).await;
    let c = connect_str(&served.conninfo(&t)).await;
    c.batch_execute("SELECT 1").await.expect("served");
    drop(c);
    // Transaction mode: the server connection stays in the pool, idle.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(backends_as(&t.database, &t.role).await, 1, "the idle connection is kept under 600 s");
    served.reload(&file(1), 1).await;
    assert!(served.log().contains("idle_timeout"), "{}", served.log());
    let closed =
        eventually(Duration::from_secs(10), || async { backends_as(&t.database, &t.role).await == 0 }).await;
    assert!(closed, "idle server connections after the reload: {}", backends_as(&t.database, &t.role).await);
}
