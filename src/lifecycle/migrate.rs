//! Tenant migrations: a directory of `V<number>__<name>.sql` files applied in version order
//! to one tenant's database or schema, each in its own transaction, recorded with a checksum
//! in a history table that lives with the tenant's data (`<schema>.pgtenant_migrations` in
//! schema isolation, `public.pgtenant_migrations` otherwise: shared-mode tenants of one
//! database share one history). A session advisory lock per history keeps two migrators
//! (two CLIs, a CLI and the HTTP API) from applying the same file twice.

use std::fmt::Write as _;
use std::path::Path;

use sha2::{Digest, Sha256};
use tokio_postgres::Client;

use super::{db_error, LifecycleError};
use crate::sql::quote_ident;

/// First line of a migration that must run outside a transaction block.
pub const NO_TRANSACTION: &str = "-- pgtenant:no-transaction";

/// One SQL file.
#[derive(Debug, Clone)]
pub struct Migration {
    pub version: i32,
    /// The file name, e.g. `V001__create_products.sql`.
    pub name: String,
    pub sql: String,
    /// SHA-256 of the file's bytes, hex.
    pub checksum: String,
    pub transactional: bool,
}

/// The migrations of a directory, in version order.
#[derive(Debug, Clone, Default)]
pub struct MigrationSet {
    pub migrations: Vec<Migration>,
}

impl MigrationSet {
    /// Loads `dir` ("" = no migrations). Every `.sql` file must be named
    /// `V<number>__<name>.sql` with a unique version: a stray file is an error rather than
    /// a migration silently skipped.
    pub fn load(dir: &str) -> Result<MigrationSet, LifecycleError> {
        let mut migrations = Vec::new();
        for (name, sql) in sql_files(dir)? {
            let version = parse_name(&name).ok_or_else(|| {
                LifecycleError::Invalid(format!(
                    "migration file {name} is not named V<number>__<description>.sql"
                ))
            })?;
            if migrations.iter().any(|m: &Migration| m.version == version) {
                return Err(LifecycleError::Invalid(format!("two migration files have version {version}")));
            }
            let transactional = sql.lines().next().is_none_or(|l| l.trim() != NO_TRANSACTION);
            migrations.push(Migration { version, checksum: checksum(&sql), name, sql, transactional });
        }
        migrations.sort_by_key(|m| m.version);
        Ok(MigrationSet { migrations })
    }

    /// The highest version, if there is any migration.
    pub fn latest(&self) -> Option<i32> {
        self.migrations.last().map(|m| m.version)
    }
}

/// `(file name, contents)` of the `.sql` files of `dir`, by name ("" = none).
pub fn sql_files(dir: &str) -> Result<Vec<(String, String)>, LifecycleError> {
    if dir.is_empty() {
        return Ok(Vec::new());
    }
    let read_err = |e: std::io::Error| LifecycleError::Invalid(format!("{dir}: {e}"));
    let mut files = Vec::new();
    for entry in std::fs::read_dir(Path::new(dir)).map_err(read_err)? {
        let path = entry.map_err(read_err)?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()).map(str::to_owned) else { continue };
        if !name.ends_with(".sql") {
            continue;
        }
        let sql = std::fs::read_to_string(&path).map_err(read_err)?;
        files.push((name, sql));
    }
    files.sort();
    Ok(files)
}

fn parse_name(name: &str) -> Option<i32> {
    let rest = name.strip_prefix('V')?.strip_suffix(".sql")?;
    let (number, description) = rest.split_once("__")?;
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) || description.is_empty() {
        return None;
    }
    number.parse().ok()
}

fn checksum(sql: &str) -> String {
    crate::auth::hex(&Sha256::digest(sql.as_bytes()))
}

/// Where one history lives: the tenant's schema (schema isolation) or its database's
/// `public`. The connection given with it is the tenant's own login, never an administrator:
/// the history table and everything the migrations touch belong to the tenant, and a tenant
/// could plant a trigger or a view there that runs with the privileges of whoever reads or
/// writes it (`SET ROLE` on an administrator session is no boundary: `RESET ROLE` undoes it).
#[derive(Debug, Clone)]
pub struct Place {
    pub schema: Option<String>,
    pub tenant: String,
}

impl Place {
    fn history(&self) -> String {
        match &self.schema {
            Some(s) => format!("{}.pgtenant_migrations", quote_ident(s)),
            None => "public.pgtenant_migrations".to_owned(),
        }
    }

    /// Session setup: the search_path the tenant's clients get.
    fn setup(&self) -> String {
        let mut sql = String::from("SET client_min_messages TO warning; ");
        if let Some(s) = &self.schema {
            let _ = write!(sql, "SET search_path TO {}; ", quote_ident(s));
        }
        sql
    }
}

/// What applying the set to one place did (or, on a dry run, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// Versions applied now (or pending, on a dry run).
    pub versions: Vec<i32>,
    /// The highest applied version afterwards.
    pub current: Option<i32>,
}

/// Applies the missing migrations of `set` at `place` over `db` (the tenant's own login to
/// its database). Stops at the first failure, which names the file.
pub async fn apply(
    db: &Client,
    place: &Place,
    set: &MigrationSet,
    dry_run: bool,
) -> Result<Applied, LifecycleError> {
    let history = place.history();
    // One migrator per history: the lock is per database (advisory locks are) and keyed by
    // the history's table name.
    db.execute("SELECT pg_advisory_lock(hashtext('pgtenant.migrate'), hashtext($1))", &[&history])
        .await
        .map_err(|e| db_error("taking the migration lock", &e))?;
    let result = apply_locked(db, place, &history, set, dry_run).await;
    // Also released when the connection closes, which callers do right after.
    let _ = db
        .execute("SELECT pg_advisory_unlock(hashtext('pgtenant.migrate'), hashtext($1))", &[&history])
        .await;
    result
}

async fn apply_locked(
    db: &Client,
    place: &Place,
    history: &str,
    set: &MigrationSet,
    dry_run: bool,
) -> Result<Applied, LifecycleError> {
    db.batch_execute(&place.setup()).await.map_err(|e| db_error("setting up the session", &e))?;
    if !dry_run {
        db.batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {history} (
                 version    integer PRIMARY KEY,
                 name       text NOT NULL,
                 checksum   text NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now()
             )"
        ))
        .await
        .map_err(|e| db_error("creating the migration history", &e))?;
    }
    let done = recorded(db, place).await?;
    let mut out = Applied { versions: Vec::new(), current: done.iter().map(|d| d.0).max() };
    for m in &set.migrations {
        if let Some((_, _, sum)) = done.iter().find(|d| d.0 == m.version) {
            if *sum != m.checksum {
                return Err(LifecycleError::Failed(format!(
                    "{} was changed after it was applied (checksum {} recorded, {} now); \
                     add a new migration instead of editing an applied one",
                    m.name,
                    short(sum),
                    short(&m.checksum)
                )));
            }
            continue;
        }
        out.versions.push(m.version);
        if dry_run {
            continue;
        }
        let record = format!("INSERT INTO {history} (version, name, checksum) VALUES ($1, $2, $3)");
        let failed = |e: tokio_postgres::Error| db_error(&m.name, &e);
        if m.transactional {
            db.batch_execute("BEGIN").await.map_err(failed)?;
            let run = async {
                db.batch_execute(&m.sql).await?;
                db.execute(&record, &[&m.version, &m.name, &m.checksum]).await?;
                db.batch_execute("COMMIT").await
            };
            if let Err(e) = run.await {
                let _ = db.batch_execute("ROLLBACK").await;
                return Err(failed(e));
            }
        } else {
            // One statement per query: several in one simple Query would run as one implicit
            // transaction, which CREATE INDEX CONCURRENTLY and friends refuse. A failure
            // leaves the statements before it applied, and a re-run starts the file from the
            // top: the error says so.
            for (i, statement) in statements(&m.sql).iter().enumerate() {
                db.batch_execute(statement).await.map_err(|e| {
                    LifecycleError::Failed(format!(
                        "{} (no-transaction; statement {} failed, the ones before it stay applied): {}",
                        m.name,
                        i + 1,
                        super::db_text(&e)
                    ))
                })?;
            }
            db.execute(&record, &[&m.version, &m.name, &m.checksum]).await.map_err(failed)?;
        }
        out.current = out.current.max(Some(m.version));
    }
    Ok(out)
}

/// `(version, name, checksum)` already applied at `place` (none if there is no history yet).
async fn recorded(db: &Client, place: &Place) -> Result<Vec<(i32, String, String)>, LifecycleError> {
    let exists: Option<String> = db
        .query_one("SELECT to_regclass($1)::text", &[&place.history()])
        .await
        .map_err(|e| db_error("reading the migration history", &e))?
        .get(0);
    if exists.is_none() {
        return Ok(Vec::new());
    }
    let rows = db
        .query(&format!("SELECT version, name, checksum FROM {} ORDER BY version", place.history()), &[])
        .await
        .map_err(|e| db_error("reading the migration history", &e))?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect())
}

/// The highest version applied at `place` (None: nothing yet), and the applied migrations
/// whose file changed since (checksum differs: what `migrate` refuses to go past).
pub async fn applied_state(
    db: &Client,
    place: &Place,
    set: &MigrationSet,
) -> Result<(Option<i32>, Vec<String>), LifecycleError> {
    let done = recorded(db, place).await?;
    let changed = set
        .migrations
        .iter()
        .filter(|m| done.iter().any(|d| d.0 == m.version && d.2 != m.checksum))
        .map(|m| m.name.clone())
        .collect();
    Ok((done.iter().map(|d| d.0).max(), changed))
}

/// Runs the seed files in one transaction over the tenant's own login, with its search_path
/// and `pgtenant.tenant_id` set.
pub async fn seed(db: &Client, place: &Place, seeds: &[(String, String)]) -> Result<(), LifecycleError> {
    if seeds.is_empty() {
        return Ok(());
    }
    db.batch_execute(&place.setup()).await.map_err(|e| db_error("setting up the session", &e))?;
    db.batch_execute("BEGIN").await.map_err(|e| db_error("seeding", &e))?;
    db.execute("SELECT set_config('pgtenant.tenant_id', $1, true)", &[&place.tenant])
        .await
        .map_err(|e| db_error("seeding", &e))?;
    for (name, sql) in seeds {
        if let Err(e) = db.batch_execute(sql).await {
            let _ = db.batch_execute("ROLLBACK").await;
            return Err(db_error(&format!("seed {name}"), &e));
        }
    }
    db.batch_execute("COMMIT").await.map_err(|e| db_error("seeding", &e))
}

/// Splits SQL text into statements at the semicolons outside quotes, dollar quotes and
/// comments (statements without anything but whitespace and comments are dropped).
pub fn statements(sql: &str) -> Vec<&str> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let (mut start, mut i) = (0, 0);
    let mut push = |from: usize, to: usize| {
        let piece = sql[from..to].trim();
        let has_code = piece.lines().any(|l| {
            let l = l.trim();
            !l.is_empty() && !l.starts_with("--")
        });
        if has_code {
            out.push(piece);
        }
    };
    while i < b.len() {
        match b[i] {
            b'\'' | b'"' => {
                let q = b[i];
                i += 1;
                while i < b.len() && b[i] != q {
                    i += 1;
                }
                i += 1;
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                    i += 1;
                }
                i += 2;
            }
            b'$' => {
                // $tag$ … $tag$ (tag: letters, digits, underscores; not a $1 parameter).
                let tag_end = b[i + 1..].iter().position(|c| !(c.is_ascii_alphanumeric() || *c == b'_'));
                match tag_end.map(|n| i + 1 + n) {
                    Some(end) if b[end] == b'$' && !b.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                        let tag = &sql[i..=end];
                        i = sql[end + 1..].find(tag).map_or(b.len(), |p| end + 1 + p + tag.len());
                    }
                    _ => i += 1,
                }
            }
            b';' => {
                push(start, i);
                i += 1;
                start = i;
            }
            _ => i += 1,
        }
    }
    push(start.min(b.len()), b.len());
    out
}

fn short(sum: &str) -> &str {
    sum.get(..12).unwrap_or(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(parse_name("V001__create_products.sql"), Some(1));
        assert_eq!(parse_name("V20__x.sql"), Some(20));
        assert_eq!(parse_name("V1_x.sql"), None);
        assert_eq!(parse_name("v1__x.sql"), None);
        assert_eq!(parse_name("V__x.sql"), None);
        assert_eq!(parse_name("V1__.sql"), None);
        assert_eq!(parse_name("V1a__x.sql"), None);
        assert_eq!(parse_name("V99999999999__x.sql"), None);
    }

    #[test]
    fn splits_statements() {
        let sql = "-- pgtenant:no-transaction\nCREATE INDEX CONCURRENTLY a ON t (x);\n\
                   CREATE INDEX CONCURRENTLY b ON t ((x || ';'));\n\
                   /* ; */ DO $body$ BEGIN PERFORM 1; END $body$;\n\
                   SELECT $1, \"a;b\" FROM t; -- trailing ; comment\n";
        assert_eq!(
            statements(sql),
            [
                "-- pgtenant:no-transaction\nCREATE INDEX CONCURRENTLY a ON t (x)",
                "CREATE INDEX CONCURRENTLY b ON t ((x || ';'))",
                "/* ; */ DO $body$ BEGIN PERFORM 1; END $body$",
                "SELECT $1, \"a;b\" FROM t",
            ]
        );
        assert!(statements("-- only a comment\n;  ;").is_empty());
        assert_eq!(statements("SELECT 'unterminated;"), ["SELECT 'unterminated;"]);
        assert_eq!(statements("SELECT $$x"), ["SELECT $$x"]);
    }

    #[test]
    fn loads_a_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("V002__b.sql"),
            format!("{NO_TRANSACTION}\nCREATE INDEX CONCURRENTLY i ON t (x);"),
        )
        .expect("write");
        std::fs::write(dir.path().join("V001__a.sql"), "CREATE TABLE t (x int);").expect("write");
        std::fs::write(dir.path().join("README.md"), "not a migration").expect("write");
        let set = MigrationSet::load(&dir.path().display().to_string()).expect("load");
        let v: Vec<_> = set.migrations.iter().map(|m| (m.version, m.transactional)).collect();
        assert_eq!(v, [(1, true), (2, false)]);
        assert_eq!(set.latest(), Some(2));
        assert_eq!(set.migrations[0].checksum.len(), 64);

        std::fs::write(dir.path().join("V01__dup.sql"), "SELECT 1").expect("write");
        let err = MigrationSet::load(&dir.path().display().to_string()).expect_err("duplicate");
        assert!(err.to_string().contains("version 1"), "{err}");
        std::fs::remove_file(dir.path().join("V01__dup.sql")).expect("rm");
        std::fs::write(dir.path().join("create.sql"), "SELECT 1").expect("write");
        let err = MigrationSet::load(&dir.path().display().to_string()).expect_err("stray");
        assert!(err.to_string().contains("create.sql"), "{err}");
    }
}
