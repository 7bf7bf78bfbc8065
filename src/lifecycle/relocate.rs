//! Moving a tenant to another upstream: pg_dump from the source, pg_restore on the target,
//! then the catalog row switched over.

use super::report::TenantInfo;
use super::upstream::Upstream;
use super::{catalog_error, db_error, parse_id, Lifecycle, LifecycleError};
use crate::catalog::store;
use crate::model::{Isolation, TenantStatus};
use crate::sql::{quote_ident, quote_literal};

impl Lifecycle {
    /// Moves a `database` tenant to another upstream: offline (status `migrating`, 57P03 for
    /// new clients), the same role and password on the target, `pg_dump | pg_restore` of its
    /// database (objects owned by the tenant's role), then the catalog points at the target
    /// and the source database (and the tenant's own role there) is dropped. On failure what
    /// was made on the target is dropped and the tenant goes back as it was. Needs `pg_dump`
    /// and `pg_restore` (PATH, `$PGTENANT_PG_BINDIR` or /usr/lib/postgresql/*/bin) no older
    /// than either server.
    pub async fn relocate(&self, id: &str, to: &str) -> Result<TenantInfo, LifecycleError> {
        let id = parse_id(id)?;
        let db = self.locked(&id).await?;
        let info = Self::info(&db, &id).await?;
        if info.isolation != Isolation::Database {
            return Err(LifecycleError::Invalid(format!(
                "tenant {id:?} uses {} isolation: only database tenants are moved (dump and restore of a \
                 schema between shared databases is not built)",
                info.isolation
            )));
        }
        if !matches!(info.status, TenantStatus::Active | TenantStatus::Suspended) {
            return Err(LifecycleError::Conflict(format!(
                "tenant {id:?} is {}: it cannot be moved",
                info.status
            )));
        }
        if info.upstream == to {
            return Ok(info);
        }
        let source = Upstream::load(&db, &info.upstream, self.upstream_keys()).await?;
        let target = Upstream::load(&db, to, self.upstream_keys()).await?;
        let (dump, restore) = (tool("pg_dump")?, tool("pg_restore")?);
        store::set_status(&db, &id, TenantStatus::Migrating).await.map_err(catalog_error)?;
        let moved = async {
            let role = quote_ident(&info.login_role);
            let database = quote_ident(&info.database);
            let mut made_role = false;
            if info.per_tenant() {
                // The same password: the proxies' stored one keeps working.
                let stored = store::login_password(&db, &id).await.map_err(catalog_error)?;
                let password = self.reveal(&id, stored)?.unwrap_or_default();
                let verifier = crate::auth::Verifier::hash(&password);
                target.admin(&format!("CREATE ROLE {role} LOGIN PASSWORD {}", quote_literal(&verifier))).await?;
                made_role = true;
                target.admin(&format!("GRANT {role} TO CURRENT_USER")).await?;
            }
            let copied = async {
                target.admin(&format!("CREATE DATABASE {database} OWNER {role}")).await?;
                target.admin(&format!("REVOKE CONNECT, TEMPORARY ON DATABASE {database} FROM PUBLIC")).await?;
                target.admin(&format!("GRANT CONNECT, TEMPORARY ON DATABASE {database} TO {role}")).await?;
                // The proxies' idle connections to the source go now; nothing writes there
                // while it is copied (the tenant is offline).
                let admin = source.connect(&source.admin_database).await?;
                admin
                    .execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                        &[&info.database],
                    )
                    .await
                    .map_err(|e| db_error("closing connections", &e))?;
                dump_restore(&dump, &restore, &source, &target, &info.database, &info.login_role).await
            }
            .await;
            if let Err(e) = copied {
                let _ = target.admin(&format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)")).await;
                if made_role {
                    let _ = target.admin(&format!("DROP ROLE IF EXISTS {role}")).await;
                }
                return Err(e);
            }
            Ok(())
        }
        .await;
        if let Err(e) = moved {
            store::set_status(&db, &id, info.status).await.map_err(catalog_error)?;
            self.failed(&db, &id, "move_failed", &e).await?;
            return Err(e);
        }
        store::set_upstream(&db, &id, to, info.status).await.map_err(catalog_error)?;
        Self::event(&db, &id, "moved", serde_json::json!({ "from": info.upstream, "to": to })).await?;
        // The copy is in place and the catalog points at it: the source goes.
        if let Err(e) = self.drop_objects(&source, &info, true, false, info.per_tenant()).await {
            tracing::warn!(tenant = %id, error = %e, "moved, but the source database is still there");
        }
        Self::info(&db, &id).await
    }
}

/// A PostgreSQL client program: `$PGTENANT_PG_BINDIR`, the newest /usr/lib/postgresql/*/bin,
/// or PATH.
fn tool(name: &str) -> Result<std::path::PathBuf, LifecycleError> {
    let mut dirs: Vec<std::path::PathBuf> = Vec::new();
    if let Some(d) = std::env::var_os("PGTENANT_PG_BINDIR") {
        dirs.push(d.into());
    }
    if let Some(d) = crate::pgbin::find_bindir() {
        dirs.push(d);
    }
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file()).ok_or_else(|| {
        LifecycleError::Invalid(format!("moving a tenant needs {name}, which is not installed"))
    })
}

/// libpq environment for an administrator connection to `u`.
fn libpq_env(u: &Upstream, cmd: &mut std::process::Command) {
    let (host, port, sslmode) = match &u.addr {
        crate::model::UpstreamAddr::Tcp { host, port, tls } => {
            if let Some(ca) = &tls.root_cert {
                cmd.env("PGSSLROOTCERT", &**ca);
            }
            (host.to_string(), *port, tls.mode.as_str())
        }
        crate::model::UpstreamAddr::Unix { dir, port } => (dir.to_string(), *port, "disable"),
    };
    cmd.env("PGHOST", host)
        .env("PGPORT", port.to_string())
        .env("PGUSER", &u.admin_user)
        .env("PGSSLMODE", sslmode);
    match &u.admin_password {
        Some(p) => cmd.env("PGPASSWORD", p),
        None => cmd.env_remove("PGPASSWORD"),
    };
}

/// `pg_dump -Fc source | pg_restore` into the same-named database on the target, every
/// object owned by `role`. The programs run under `std::process` on a blocking thread (the
/// runtime has no child-process reaper of its own); if this future is dropped (the caller
/// gave up), both are killed, as they would be with `kill_on_drop`.
async fn dump_restore(
    dump: &std::path::Path,
    restore: &std::path::Path,
    source: &Upstream,
    target: &Upstream,
    database: &str,
    role: &str,
) -> Result<(), LifecycleError> {
    let mut d = std::process::Command::new(dump);
    libpq_env(source, &mut d);
    d.args(["--format=custom", "--no-owner", "--no-privileges", "--dbname", database]);
    let mut r = std::process::Command::new(restore);
    libpq_env(target, &mut r);
    r.args([
        "--no-owner",
        "--no-privileges",
        "--exit-on-error",
        "--single-transaction",
        "--role",
        role,
        "--dbname",
        database,
    ]);
    let abandoned = KillOnDrop::default();
    let flag = abandoned.0.clone();
    tokio::task::spawn_blocking(move || pipe(d, r, &flag))
        .await
        .map_err(|e| LifecycleError::Failed(format!("pg_dump | pg_restore: {e}")))?
}

/// Set when the future waiting for the programs is dropped: the blocking side kills them.
#[derive(Default)]
struct KillOnDrop(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Release);
    }
}

/// How often the blocking side looks at the programs and at the abandon flag.
const PIPE_POLL: std::time::Duration = std::time::Duration::from_millis(20);

/// Runs `dump | restore` to their end (blocking): both must succeed; their stderr is read
/// while they run (a full pipe would stop them) and goes into the error.
fn pipe(
    mut dump: std::process::Command,
    mut restore: std::process::Command,
    abandoned: &std::sync::atomic::AtomicBool,
) -> Result<(), LifecycleError> {
    use std::process::Stdio;
    let failed = |what: &str, e: std::io::Error| LifecycleError::Failed(format!("{what}: {e}"));
    dump.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut dumping = dump.spawn().map_err(|e| failed("pg_dump", e))?;
    let stop = |c: &mut std::process::Child| {
        let _ = c.kill();
        let _ = c.wait();
    };
    let Some(out) = dumping.stdout.take() else {
        stop(&mut dumping);
        return Err(LifecycleError::Failed("pg_dump: no output".into()));
    };
    restore.stdin(out).stdout(Stdio::null()).stderr(Stdio::piped());
    let restoring = restore.spawn();
    // The command holds the pipe's read end: dropped, so that pg_dump sees a broken pipe
    // (rather than blocking on a full one) if pg_restore exits early.
    drop(restore);
    let restoring = match restoring {
        Ok(c) => c,
        Err(e) => {
            stop(&mut dumping);
            return Err(failed("pg_restore", e));
        }
    };
    let mut children = [("pg_dump", dumping), ("pg_restore", restoring)];
    std::thread::scope(|scope| {
        // Each stderr is read on its own thread until the program closes it (it exits).
        let readers = children.each_mut().map(|(_, c)| {
            let err = c.stderr.take();
            scope.spawn(move || {
                let mut text = Vec::new();
                if let Some(mut err) = err {
                    let _ = std::io::Read::read_to_end(&mut err, &mut text);
                }
                text
            })
        });
        let mut status: [Option<std::process::ExitStatus>; 2] = [None, None];
        let mut lost = None;
        while lost.is_none() && status.iter().any(Option::is_none) {
            if abandoned.load(std::sync::atomic::Ordering::Acquire) {
                // The caller gave up: the programs go, as with `kill_on_drop`.
                for (_, c) in children.iter_mut() {
                    let _ = c.kill();
                }
            }
            for (i, (what, c)) in children.iter_mut().enumerate() {
                if status[i].is_none() {
                    match c.try_wait() {
                        Ok(s) => status[i] = s,
                        Err(e) => lost = Some(failed(what, e)),
                    }
                }
            }
            if lost.is_none() && status.iter().any(Option::is_none) {
                std::thread::sleep(PIPE_POLL);
            }
        }
        if let Some(e) = lost {
            // A program that cannot be waited for: both go (their stderr then closes).
            for (i, (_, c)) in children.iter_mut().enumerate() {
                if status[i].is_none() {
                    stop(c);
                }
            }
            return Err(e);
        }
        let stderr = readers.map(|r| r.join().unwrap_or_default());
        for (i, (what, _)) in children.iter().enumerate() {
            if let Some(s) = status[i].filter(|s| !s.success()) {
                return Err(LifecycleError::Failed(format!(
                    "{what} failed ({s}): {}",
                    String::from_utf8_lossy(&stderr[i]).trim()
                )));
            }
        }
        Ok(())
    })
}
