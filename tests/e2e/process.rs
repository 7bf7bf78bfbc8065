//! The real binary (`pgtenant serve`) as a process: SIGHUP never ends it, SIGTERM ends it
//! within `shutdown_timeout` + a few seconds even when a client has stopped reading, and
//! running out of file descriptors is warned about at start and neither spins nor floods
//! the log.

use std::time::{Duration, Instant};

use pgtenant::config::TenantConfig;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::support::*;

/// `pgtenant serve` on port 0 with one static tenant, its log collected as it comes.
struct Serve {
    process: ServeProcess,
    _dir: tempfile::TempDir,
}

impl std::ops::Deref for Serve {
    type Target = ServeProcess;
    fn deref(&self) -> &ServeProcess {
        &self.process
    }
}

impl std::ops::DerefMut for Serve {
    fn deref_mut(&mut self) -> &mut ServeProcess {
        &mut self.process
    }
}

impl Serve {
    async fn start(t: &TenantConfig, shutdown_timeout: f64) -> Serve {
        Serve::start_with(t, shutdown_timeout, None).await
    }

    /// With `fd_limit`, the process runs with that soft and hard RLIMIT_NOFILE.
    async fn start_with(t: &TenantConfig, shutdown_timeout: f64, fd_limit: Option<u32>) -> Serve {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("pgtenant.toml");
        let toml = format!(
            r#"[proxy]
listen = "127.0.0.1:0"
shutdown_timeout = {shutdown_timeout}
max_client_conn = 100
max_prelogin_connections = 100
startup_timeout = 30

[[upstreams]]
name = "local"
host = "127.0.0.1"
port = {port}

[[tenants]]
id = "{id}"
upstream = "local"
database = "{db}"
role = "{role}"
password = "{password}"
pool_mode = "session"
"#,
            port = cluster().port,
            id = t.id,
            db = t.database,
            role = t.role,
            password = t.password.as_deref().unwrap_or_default(),
        );
        std::fs::write(&path, toml).expect("write config");
        let mut command = match fd_limit {
            None => pgtenant_command(),
            Some(n) => {
                // bash sets the limit (soft and hard) and execs pgtenant in its place.
                let mut c = Command::new("bash");
                c.arg("-c")
                    .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
                    .arg(env!("CARGO_BIN_EXE_pgtenant"));
                c
            }
        };
        command.arg("serve").arg("--config").arg(&path).env("RUST_LOG", "info");
        Serve { process: ServeProcess::spawn(&mut command).await, _dir: dir }
    }

    fn conninfo(&self, t: &TenantConfig) -> String {
        format!("host=127.0.0.1 port={} user=app.{} dbname={}", self.addr.port(), t.id, t.database)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_does_not_end_the_process() {
    let t = tenant_db("sighup").await;
    let mut serve = Serve::start(&t, 5.0).await;
    let before = connect_str(&serve.conninfo(&t)).await;
    before.batch_execute("SELECT 1").await.expect("served before SIGHUP");
    serve.signal("HUP");
    assert!(
        eventually(Duration::from_secs(5), || async { serve.log().contains("SIGHUP") }).await,
        "SIGHUP not logged: {}",
        serve.log()
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(serve.child.try_wait().expect("try_wait").is_none(), "the process ended: {}", serve.log());
    // The open session and new ones are served.
    before.batch_execute("SELECT 1").await.expect("open session served after SIGHUP");
    let after = connect_str(&serve.conninfo(&t)).await;
    let v: i32 = after.query_one("SELECT 5", &[]).await.expect("new session after SIGHUP").get(0);
    assert_eq!(v, 5);
    // A second SIGHUP too.
    serve.signal("HUP");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(serve.child.try_wait().expect("try_wait").is_none());
    drop((before, after));
    serve.signal("TERM");
    let status = tokio::time::timeout(Duration::from_secs(15), serve.child.wait())
        .await
        .expect("exits")
        .expect("wait");
    assert!(status.success(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_the_process_in_time_when_a_client_stops_reading() {
    let t = tenant_db("sigterm").await;
    let shutdown_timeout = 1.0;
    let mut serve = Serve::start(&t, shutdown_timeout).await;
    // A client that asks for a large result and never reads it: the proxy's writes to it
    // block once the socket buffers are full.
    let mut stuck = tokio::net::TcpStream::connect(serve.addr).await.expect("connect");
    stuck
        .write_all(&startup_packet(&[("user", &format!("app.{}", t.id)), ("database", &t.database)]))
        .await
        .expect("startup");
    read_until_ready(&mut stuck).await;
    let big = raw::query("SELECT repeat('x', 1048576) FROM generate_series(1, 400)");
    stuck.write_all(&big).await.expect("query");
    // A well-behaved client too.
    let fine = connect_watched(&serve.conninfo(&t)).await;
    fine.batch_execute("SELECT 1").await.expect("served");
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let started = Instant::now();
    serve.signal("TERM");
    let bound = Duration::from_secs_f64(shutdown_timeout) + Duration::from_secs(5);
    let status = match tokio::time::timeout(bound + Duration::from_secs(10), serve.child.wait()).await {
        Ok(status) => status.expect("wait"),
        Err(_) => panic!("pgtenant still running {:?} after SIGTERM: {}", started.elapsed(), serve.log()),
    };
    let took = started.elapsed();
    eprintln!("SIGTERM to exit: {took:?}\n{}", serve.log());
    assert!(took < bound, "SIGTERM took {took:?} (bound {bound:?}): {}", serve.log());
    assert!(status.success(), "{status:?}: {}", serve.log());
    // The well-behaved client was told why.
    let e = fine.batch_execute("SELECT 1").await.expect_err("closed by the shutdown");
    assert_eq!(fine.closing_code(&e).await, "57P01", "{e}");
    drop(stuck);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_descriptors_is_warned_and_logged_once_per_interval() {
    let t = tenant_db("emfile").await;
    let serve = Serve::start_with(&t, 2.0, Some(64)).await;
    assert!(
        serve.log().contains("open-file limit is below"),
        "no warning about the descriptor limit: {}",
        serve.log()
    );
    // Far more silent sockets than descriptors: the proxy hits EMFILE and the rest wait
    // in the listen backlog.
    let mut silent = Vec::new();
    for _ in 0..150 {
        silent.push(tokio::net::TcpStream::connect(serve.addr).await.expect("connect"));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let log = serve.log();
    let failures = log.lines().filter(|l| l.contains("accept failed")).count();
    assert!(failures >= 1, "EMFILE never seen (the test did not exhaust descriptors): {log}");
    assert!(failures <= 2, "{failures} accept errors logged in 3 s: {log}");
    // Once the sockets go, descriptors are free again and a real client logs in.
    drop(silent);
    let conninfo = serve.conninfo(&t);
    let served = eventually(Duration::from_secs(10), || async {
        match tokio_postgres::connect(&conninfo, tokio_postgres::NoTls).await {
            Ok((c, conn)) => {
                tokio::spawn(conn);
                c.batch_execute("SELECT 1").await.is_ok()
            }
            Err(_) => false,
        }
    })
    .await;
    assert!(served, "no login after the descriptors were freed: {}", serve.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_and_disconnects_are_logged_without_colour() {
    let t = tenant_db("loglines").await;
    let mut serve = Serve::start(&t, 5.0).await;
    let c = connect_str(&serve.conninfo(&t)).await;
    c.batch_execute("SELECT 1").await.expect("select");
    c.batch_execute("SELECT 2").await.expect("select");
    drop(c);
    let line = |needle: &'static str| {
        let log = serve.log();
        log.lines().find(|l| l.contains(needle) && l.contains(&t.id)).map(str::to_owned)
    };
    assert!(
        eventually(Duration::from_secs(5), || async { line(" disconnect ").is_some() }).await,
        "no disconnect line: {}",
        serve.log()
    );
    let login = line(" login ").unwrap_or_else(|| panic!("no login line: {}", serve.log()));
    for field in [&format!("user=app.{}", t.id), "peer=127.0.0.1:", "tls=false", "auth=trust", "login_ms="] {
        assert!(login.contains(field), "{field} missing: {login}");
    }
    let gone = line(" disconnect ").unwrap_or_default();
    for field in [
        "duration_s=",
        "transactions=2",
        "bytes_in=",
        "bytes_out=",
        "reason=\"client closed the connection\"",
    ] {
        assert!(gone.contains(field), "{field} missing: {gone}");
    }
    // stderr is a pipe here: no colour codes.
    assert!(!serve.log().contains('\x1b'), "ANSI codes in a piped log: {:?}", serve.log());
    serve.signal("TERM");
    let status = tokio::time::timeout(Duration::from_secs(15), serve.child.wait())
        .await
        .expect("exits")
        .expect("wait");
    assert!(status.success(), "{status:?}");
}
