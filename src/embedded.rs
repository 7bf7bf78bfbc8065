//! A throwaway PostgreSQL cluster: `initdb` into a temporary directory, a free port, a
//! socket directory of its own. Used by `pgtenant demo` and by the tests.
//!
//! The server runs under a small `sh` watchdog that stops it and removes the directory when
//! the owning process exits, however it exits (test binaries never run destructors of
//! statics). As root, the server runs as the `postgres` system user (through `setpriv`).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    #[error("no PostgreSQL server binaries found (looked at $PGTENANT_PG_BINDIR, `pg_config --bindir`, PATH and /usr/lib/postgresql/*/bin); install the postgresql package")]
    NoBinaries,
    #[error("running as root but there is no `postgres` system user to run the server as")]
    NoPostgresUser,
    #[error("{what} failed: {detail}")]
    Command { what: &'static str, detail: String },
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("the server did not become ready within {0:?}")]
    NotReady(Duration),
}

/// Password of the cluster's superuser `postgres` over TCP (the socket is `trust`).
pub const SUPERUSER_PASSWORD: &str = "pgtenant-superuser";

/// A running throwaway cluster.
pub struct Cluster {
    pub bindir: PathBuf,
    pub port: u16,
    pub socket_dir: PathBuf,
    pub data_dir: PathBuf,
    watchdog: Option<Child>,
}

impl Cluster {
    /// initdb + start; blocks until the server accepts connections.
    pub fn start() -> Result<Cluster, EmbeddedError> {
        let bindir = crate::pgbin::find_bindir().ok_or(EmbeddedError::NoBinaries)?;
        let as_root = is_root();
        if as_root && user_ids("postgres").is_none() {
            return Err(EmbeddedError::NoPostgresUser);
        }
        let top = tempfile::Builder::new().prefix("pgtenant-pg-").tempdir()?.keep();
        let data_dir = top.join("data");
        let socket_dir = top.join("sock");
        std::fs::create_dir(&data_dir)?;
        std::fs::create_dir(&socket_dir)?;
        if let (true, Some((uid, gid))) = (as_root, user_ids("postgres")) {
            for d in [&top, &data_dir, &socket_dir] {
                std::os::unix::fs::chown(d, Some(uid), Some(gid))?;
            }
        }
        let pwfile = top.join("pw");
        std::fs::write(&pwfile, SUPERUSER_PASSWORD)?;
        if let (true, Some((uid, gid))) = (as_root, user_ids("postgres")) {
            std::os::unix::fs::chown(&pwfile, Some(uid), Some(gid))?;
        }
        let mut initdb = as_server_user(&bindir.join("initdb"), as_root);
        initdb
            .args(["-D"])
            .arg(&data_dir)
            .args(["-U", "postgres", "-E", "UTF8", "--no-locale", "--no-sync", "--no-instructions"])
            .args(["--auth-local=trust", "--auth-host=scram-sha-256"])
            .arg(format!("--pwfile={}", pwfile.display()));
        run(initdb, "initdb")?;
        std::fs::remove_file(&pwfile)?;
        // md5_user logs in with md5 and trust_user without a password over TCP, to exercise
        // those upstream methods; every other role uses SCRAM.
        let hba = "local all all trust\n\
                   host all md5_user 127.0.0.1/32 md5\n\
                   host all trust_user 127.0.0.1/32 trust\n\
                   host all all 127.0.0.1/32 scram-sha-256\n";
        std::fs::write(data_dir.join("pg_hba.conf"), hba)?;

        let port = free_port()?;
        let postgres = bindir.join("postgres");
        let mut server: Vec<String> = Vec::new();
        if as_root {
            server.extend(
                ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups"].map(String::from),
            );
        }
        server.push(postgres.display().to_string());
        server.extend(
            [
                "-D".to_owned(),
                data_dir.display().to_string(),
                "-p".to_owned(),
                port.to_string(),
                "-k".to_owned(),
                socket_dir.display().to_string(),
            ]
            .into_iter()
            .chain(
                [
                    "listen_addresses=127.0.0.1",
                    "max_connections=300",
                    "fsync=off",
                    "synchronous_commit=off",
                    "full_page_writes=off",
                    "shared_buffers=128MB",
                    "log_min_messages=warning",
                    "logging_collector=off",
                ]
                .into_iter()
                .flat_map(|s| ["-c".to_owned(), s.to_owned()]),
            ),
        );
        // The watchdog: stop the server (fast shutdown) on TERM/INT or when the owner exits,
        // then remove the directory.
        let script = r#"
            "$@" &
            pg=$!
            trap 'kill -INT $pg 2>/dev/null' TERM INT
            while kill -0 "$PGT_OWNER" 2>/dev/null && kill -0 $pg 2>/dev/null; do sleep 0.3; done
            kill -INT $pg 2>/dev/null
            wait $pg
            rm -rf "$PGT_TOP"
        "#;
        let log = std::fs::File::create(top.join("server.log"))?;
        let watchdog = Command::new("sh")
            .arg("-c")
            .arg(script)
            .arg("sh")
            .args(&server)
            .env("PGT_OWNER", std::process::id().to_string())
            .env("PGT_TOP", &top)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let mut cluster = Cluster { bindir, port, socket_dir, data_dir, watchdog: Some(watchdog) };
        cluster.wait_ready(Duration::from_secs(30))?;
        Ok(cluster)
    }

    fn wait_ready(&mut self, limit: Duration) -> Result<(), EmbeddedError> {
        let start = Instant::now();
        let sock = self.socket_dir.join(format!(".s.PGSQL.{}", self.port));
        while start.elapsed() < limit {
            if let Some(w) = self.watchdog.as_mut() {
                if let Ok(Some(status)) = w.try_wait() {
                    return Err(EmbeddedError::Command {
                        what: "postgres",
                        detail: format!("exited with {status}"),
                    });
                }
            }
            if sock.exists() {
                let ready = Command::new(self.bindir.join("pg_isready"))
                    .arg("-q")
                    .arg("-h")
                    .arg(&self.socket_dir)
                    .args(["-p", &self.port.to_string()])
                    .status()?;
                if ready.success() {
                    return Ok(());
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(EmbeddedError::NotReady(limit))
    }

    /// A libpq connection string to this cluster as the superuser, over the socket.
    pub fn superuser_conninfo(&self, dbname: &str) -> String {
        format!("host={} port={} user=postgres dbname={dbname}", self.socket_dir.display(), self.port)
    }

    /// Stops the server and removes its directory; waits for both.
    pub fn stop(&mut self) {
        if let Some(mut w) = self.watchdog.take() {
            let _ = Command::new("kill").arg("-TERM").arg(w.id().to_string()).status();
            let _ = w.wait();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(mut cmd: Command, what: &'static str) -> Result<(), EmbeddedError> {
    let out = cmd.output()?;
    if out.status.success() {
        Ok(())
    } else {
        let detail = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        Err(EmbeddedError::Command { what, detail })
    }
}

fn as_server_user(program: &Path, as_root: bool) -> Command {
    if as_root {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=postgres", "--regid=postgres", "--init-groups"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// Whether the effective uid is 0 (the second field of `Uid:` in /proc/self/status).
fn is_root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .is_some_and(|euid| euid == "0")
}

/// uid and gid of a system user, from /etc/passwd.
fn user_ids(name: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let mut f = line.split(':');
        if f.next()? != name {
            return None;
        }
        let _pw = f.next()?;
        Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
    })
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
