//! `pgtenant tenant create|list|show|status|suspend|resume|archive|restore|delete`,
//! `pgtenant migrate` and `pgtenant upstream add|list`: the CLI front of `crate::lifecycle`.
//! Tables for people, `--json` for scripts.

use std::io::IsTerminal as _;
use std::path::Path;

use clap::{Args, Subcommand, ValueEnum};

use crate::config::Config;
use crate::lifecycle::{
    CreateTenant, Lifecycle, LifecycleError, MigrateOptions, MigrationOutcome, NewUser, TenantInfo,
    TenantMigration,
};
use crate::model::{AuthMethod, Isolation, LoginKind, PoolMode};

const DEFAULT_CONFIG: &str = "config/pgtenant.toml";

/// Where the control database and the migrations are (flags of every lifecycle command).
#[derive(Args, Debug, Clone)]
pub struct Target {
    /// Connection string of the control database (default: `[catalog] url` of the config).
    #[arg(long, env = "PGTENANT_CATALOG_URL", hide_env_values = true, global = true)]
    pub url: Option<String>,
    /// The configuration file (default: config/pgtenant.toml when it exists).
    #[arg(short, long, env = "PGTENANT_CONFIG", global = true)]
    pub config: Option<std::path::PathBuf>,
    /// Directory of tenant migrations (default: `[lifecycle] migrations`).
    #[arg(long, env = "PGTENANT_MIGRATIONS", global = true)]
    pub migrations: Option<String>,
    /// Directory of seed files (default: `[lifecycle] seeds`).
    #[arg(long, env = "PGTENANT_SEEDS", global = true)]
    pub seeds: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

impl Target {
    /// The configuration file named, or the default one.
    pub fn config_path(&self) -> std::path::PathBuf {
        self.config.clone().unwrap_or_else(|| DEFAULT_CONFIG.into())
    }

    /// The config file with the flags applied. A file named with --config must exist; the
    /// default one may be missing (then the defaults apply, and --url names the catalog).
    pub fn config(&self) -> anyhow::Result<Config> {
        let mut config = match &self.config {
            Some(path) => Config::load(path)?,
            None if Path::new(DEFAULT_CONFIG).exists() => Config::load(Path::new(DEFAULT_CONFIG))?,
            None => Config::parse("")?,
        };
        if let Some(url) = &self.url {
            config.catalog.url = url.clone();
        }
        if let Some(m) = &self.migrations {
            config.lifecycle.migrations = m.clone();
        }
        if let Some(s) = &self.seeds {
            config.lifecycle.seeds = s.clone();
        }
        Ok(config)
    }
}

#[derive(Subcommand, Debug)]
pub enum LifecycleCommand {
    /// Create a tenant: its database or schema and role on the upstream, the migrations, the
    /// seeds, optionally a first client user (password on stdin); then it is active.
    Create(CreateArgs),
    /// List the tenants.
    List,
    /// Show one tenant.
    Show {
        /// The tenant id.
        id: String,
    },
    /// Change a tenant's pool and limits (what `PATCH /tenants/{id}` does); options not
    /// given keep their value. Running proxies apply it within a second.
    Update(UpdateArgs),
    /// Each tenant's migration version and whether it is behind the migrations directory.
    Status { ids: Vec<String> },
    /// Refuse new connections (57P03) and close open sessions at their transaction's end.
    Suspend { id: String },
    /// Let a suspended tenant connect again.
    Resume { id: String },
    /// Take the tenant offline (3D000) and rename its database or schema `archived_…`.
    Archive {
        id: String,
        /// Even with clients connected (they are disconnected).
        #[arg(long)]
        force: bool,
    },
    /// Move a database-isolated tenant to another upstream (pg_dump | pg_restore while it is
    /// offline; the source database is dropped after the catalog points at the copy).
    Move {
        id: String,
        /// The catalog upstream to move to.
        #[arg(long)]
        to: String,
    },
    /// Undo archive (or a soft delete).
    Restore { id: String },
    /// Soft delete (rename `deleted_…`, data kept), or with --hard drop the database or
    /// schema, the tenant's role, its credentials and its catalog row.
    Delete {
        /// The tenant id.
        id: String,
        /// Drop the data (database or schema, role, credentials, catalog row) for good.
        #[arg(long)]
        hard: bool,
        /// Proceed even while clients are connected (they are disconnected).
        #[arg(long)]
        force: bool,
        /// Do not ask for confirmation of --hard on a terminal.
        #[arg(long, short = 'y')]
        yes: bool,
    },
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    /// The tenant id: lowercase `[a-z0-9][a-z0-9_-]{0,47}`.
    pub id: String,
    /// database (its own database), schema (its own schema in a shared database) or
    /// shared (shared tables, row-level security).
    #[arg(long, value_enum, default_value = "database")]
    pub isolation: IsolationArg,
    /// Catalog upstream (default: the only one).
    #[arg(long)]
    pub upstream: Option<String>,
    /// Database (database isolation: default the id; else default `tenants`).
    #[arg(long)]
    pub database: Option<String>,
    /// Schema (schema isolation; default the id).
    #[arg(long)]
    pub schema: Option<String>,
    /// Login role kind (default: per-tenant, shared for shared isolation).
    #[arg(long, value_enum)]
    pub login: Option<LoginArg>,
    /// The login role (required with --login shared).
    #[arg(long)]
    pub login_role: Option<String>,
    /// Environment variable holding the shared login role's password.
    #[arg(long, value_name = "ENV_VAR")]
    pub login_password_env: Option<String>,
    /// CREATE DATABASE … TEMPLATE (database isolation).
    #[arg(long)]
    pub template: Option<String>,
    /// Pool mode (default: `[pool] mode`).
    #[arg(long, value_enum)]
    pub pool_mode: Option<PoolModeArg>,
    /// Server connections per pool (default: `[pool] size`).
    #[arg(long)]
    pub pool_size: Option<u32>,
    /// Server connections the tenant may hold at once (default: the pool size).
    #[arg(long)]
    pub max_server_connections: Option<u32>,
    /// Client connections the tenant may have open at once (default: no limit).
    #[arg(long)]
    pub max_clients: Option<u32>,
    /// Client authentication for this tenant (default: the proxy's).
    #[arg(long, value_enum)]
    pub auth: Option<AuthArg>,
    /// Skip the seed files.
    #[arg(long)]
    pub no_seed: bool,
    /// Create this client user; its password is read from stdin.
    #[arg(long)]
    pub user: Option<String>,
}

#[derive(Args, Debug)]
pub struct UpdateArgs {
    /// The tenant id.
    pub id: String,
    /// Pool mode.
    #[arg(long, value_enum)]
    pub pool_mode: Option<PoolModeArg>,
    /// Server connections per pool.
    #[arg(long)]
    pub pool_size: Option<u32>,
    /// Server connections the tenant may hold at once, across its pools.
    #[arg(long)]
    pub max_server_connections: Option<u32>,
    /// Client connections the tenant may have open at once.
    #[arg(long)]
    pub max_clients: Option<u32>,
    /// Client authentication for this tenant.
    #[arg(long, value_enum)]
    pub auth: Option<AuthArg>,
    /// Schema isolation: put `public` after the tenant's schema on the search_path.
    #[arg(long)]
    pub search_path_public: Option<bool>,
}

impl PoolModeArg {
    fn mode(self) -> PoolMode {
        match self {
            PoolModeArg::Transaction => PoolMode::Transaction,
            PoolModeArg::Session => PoolMode::Session,
        }
    }
}

impl AuthArg {
    fn method(self) -> AuthMethod {
        match self {
            AuthArg::Scram => AuthMethod::ScramSha256,
            AuthArg::Md5 => AuthMethod::Md5,
            AuthArg::Trust => AuthMethod::Trust,
        }
    }
}

#[derive(ValueEnum, Debug, Clone, Copy)]
pub enum IsolationArg {
    Database,
    Schema,
    Shared,
}

#[derive(ValueEnum, Debug, Clone, Copy)]
pub enum LoginArg {
    PerTenant,
    Shared,
}

#[derive(ValueEnum, Debug, Clone, Copy)]
pub enum PoolModeArg {
    Transaction,
    Session,
}

#[derive(ValueEnum, Debug, Clone, Copy)]
pub enum AuthArg {
    #[value(name = "scram-sha-256")]
    Scram,
    Md5,
    Trust,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFailure {
    Continue,
    Stop,
}

/// `pgtenant migrate`.
#[derive(Args, Debug)]
pub struct MigrateArgs {
    /// Migrate this tenant (repeatable).
    #[arg(long = "tenant", value_name = "ID", conflicts_with = "all")]
    pub tenants: Vec<String>,
    /// Migrate every active and suspended tenant.
    #[arg(long)]
    pub all: bool,
    /// Tenants migrated at once (default: `[lifecycle] parallel`, 4).
    #[arg(long)]
    pub parallel: Option<usize>,
    /// Show what would be applied, change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// After a tenant fails: go on with the others, or start no more.
    #[arg(long, value_enum, default_value = "continue")]
    pub on_failure: OnFailure,
    #[command(flatten)]
    pub target: Target,
}

#[derive(Subcommand, Debug)]
pub enum UpstreamCommand {
    /// Add or update an upstream server; the admin password (if any) is read from stdin
    /// and stored encrypted when a master key is configured.
    Add {
        /// The upstream's name, as tenants refer to it.
        name: String,
        /// Host name or IP (or a Unix socket directory, starting with `/`).
        #[arg(long)]
        host: String,
        /// Port of the server.
        #[arg(long, default_value_t = 5432)]
        port: u16,
        /// A role that may create databases and roles there (pgtenant runs migrations as each
        /// tenant through SET ROLE).
        #[arg(long)]
        admin_user: String,
        /// The database the admin role connects to.
        #[arg(long, default_value = "postgres")]
        admin_database: String,
        /// Read the admin password from stdin.
        #[arg(long)]
        admin_password_stdin: bool,
        /// TLS to the server, as libpq's sslmode: disable, prefer, require, verify-ca,
        /// verify-full.
        #[arg(long, default_value = "prefer")]
        sslmode: String,
        /// CA file (PEM) that verify-ca / verify-full check the server's certificate against.
        #[arg(long)]
        sslrootcert: Option<String>,
        /// Server connections pgtenant opens to it across all pools.
        #[arg(long, default_value_t = 100)]
        max_connections: u32,
        /// Authentication methods the server may use for tenants' logins, as libpq's
        /// require_auth (comma-separated scram-sha-256, md5, password, none). Unset:
        /// scram-sha-256, plus none for logins without a password or over a Unix socket.
        #[arg(long)]
        require_auth: Option<String>,
    },
    /// List the upstreams.
    List,
}

/// One line of standard input (a password, a token), without its line end; never empty.
pub(crate) fn read_stdin_line(what: &str) -> anyhow::Result<String> {
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    let line = line.trim_end_matches(['\r', '\n']).to_owned();
    anyhow::ensure!(!line.is_empty(), "no {what} on standard input");
    Ok(line)
}

pub async fn tenant(command: LifecycleCommand, target: Target) -> anyhow::Result<()> {
    let config = target.config()?;
    let lc = Lifecycle::from_config(&config)?;
    let json = target.json;
    // Tenants without a size of their own are shown with the default they get.
    let print_tenants = |tenants: &[TenantInfo], json: bool| {
        let shown: Vec<TenantInfo> =
            tenants.iter().map(|t| t.clone().with_default_pool_size(config.pool.size)).collect();
        print_tenants(&shown, json)
    };
    match command {
        LifecycleCommand::Create(a) => {
            let user = match a.user {
                Some(name) => Some(NewUser { name, password: read_stdin_line("password")? }),
                None => None,
            };
            let login_password = match &a.login_password_env {
                Some(var) => Some(std::env::var(var).map_err(|_| anyhow::anyhow!("{var} is not set"))?),
                None => None,
            };
            let req = CreateTenant {
                id: a.id,
                isolation: Some(match a.isolation {
                    IsolationArg::Database => Isolation::Database,
                    IsolationArg::Schema => Isolation::Schema,
                    IsolationArg::Shared => Isolation::Shared,
                }),
                upstream: a.upstream,
                database: a.database,
                schema: a.schema,
                login: a.login.map(|l| match l {
                    LoginArg::PerTenant => LoginKind::PerTenant,
                    LoginArg::Shared => LoginKind::Shared,
                }),
                login_role: a.login_role,
                login_password,
                template: a.template,
                pool_mode: a.pool_mode.map(PoolModeArg::mode),
                pool_size: a.pool_size,
                max_server_connections: a.max_server_connections,
                max_clients: a.max_clients,
                auth: a.auth.map(AuthArg::method),
                search_path_public: None,
                seed: Some(!a.no_seed),
                user,
            };
            let t = lc.create(req).await?;
            print_tenants(&[t], json)?;
        }
        LifecycleCommand::List => print_tenants(&lc.list().await?, json)?,
        LifecycleCommand::Update(a) => {
            let patch = crate::lifecycle::UpdateTenant {
                pool_mode: a.pool_mode.map(PoolModeArg::mode),
                pool_size: a.pool_size,
                max_server_connections: a.max_server_connections,
                max_clients: a.max_clients,
                auth: a.auth.map(AuthArg::method),
                search_path_public: a.search_path_public,
            };
            print_tenants(&[lc.update(&a.id, patch).await?], json)?;
        }
        LifecycleCommand::Show { id } => print_tenants(&[lc.get(&id).await?], json)?,
        LifecycleCommand::Status { ids } => {
            let status = lc.status(&ids).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                let rows: Vec<Vec<String>> = status
                    .iter()
                    .map(|s| {
                        vec![
                            s.tenant.clone(),
                            s.status.to_string(),
                            version(s.version),
                            version(s.latest),
                            match (&s.error, s.behind, s.latest) {
                                (Some(e), _, _) => format!("unknown: {e}"),
                                (None, _, None) => "- (no migrations directory: --migrations)".to_owned(),
                                (None, _, _) if !s.changed.is_empty() => format!(
                                    "changed after applied: {} (migrate refuses it)",
                                    s.changed.join(", ")
                                ),
                                (None, true, _) => "behind".to_owned(),
                                (None, false, _) => "current".to_owned(),
                            },
                        ]
                    })
                    .collect();
                print_table(&["TENANT", "STATUS", "VERSION", "LATEST", "MIGRATIONS"], &rows);
            }
        }
        LifecycleCommand::Suspend { id } => print_tenants(&[lc.suspend(&id).await?], json)?,
        LifecycleCommand::Resume { id } => print_tenants(&[lc.resume(&id).await?], json)?,
        LifecycleCommand::Archive { id, force } => print_tenants(&[lc.archive(&id, force).await?], json)?,
        LifecycleCommand::Restore { id } => print_tenants(&[lc.restore(&id).await?], json)?,
        LifecycleCommand::Move { id, to } => print_tenants(&[lc.relocate(&id, &to).await?], json)?,
        LifecycleCommand::Delete { id, hard, force, yes } => {
            if hard && !yes {
                confirm_hard_delete(&id)?;
            }
            lc.delete(&id, hard, force).await?;
            if json {
                println!("{}", serde_json::json!({ "deleted": id, "hard": hard }));
            } else {
                println!(
                    "tenant {id} deleted{}",
                    if hard { " (hard: data dropped)" } else { " (data kept)" }
                );
            }
        }
    }
    Ok(())
}

fn version(v: Option<i32>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

fn print_tenants(tenants: &[TenantInfo], json: bool) -> anyhow::Result<()> {
    if json {
        let text = match tenants {
            [one] => serde_json::to_string_pretty(one)?,
            many => serde_json::to_string_pretty(many)?,
        };
        println!("{text}");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = tenants
        .iter()
        .map(|t| {
            vec![
                t.id.clone(),
                t.status.to_string(),
                t.isolation.to_string(),
                t.upstream.clone(),
                t.database.clone(),
                t.schema.clone().unwrap_or_else(|| "-".into()),
                format!("{} ({})", t.login_role, t.login_kind.as_str()),
                t.pool_mode.as_str().to_owned(),
                t.last_error.clone().unwrap_or_default(),
            ]
        })
        .collect();
    print_table(
        &["ID", "STATUS", "ISOLATION", "UPSTREAM", "DATABASE", "SCHEMA", "LOGIN", "POOL", "LAST ERROR"],
        &rows,
    );
    Ok(())
}

/// Left-aligned columns, two spaces apart.
fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}  "));
            }
        }
        println!("{}", s.trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

fn outcome_text(m: &TenantMigration) -> (String, String) {
    match &m.outcome {
        MigrationOutcome::Applied { versions } => {
            ("applied".into(), versions.iter().map(|v| format!("V{v}")).collect::<Vec<_>>().join(", "))
        }
        MigrationOutcome::Current => ("already current".into(), String::new()),
        MigrationOutcome::Failed { error } => ("failed".into(), error.clone()),
        MigrationOutcome::Skipped => {
            ("skipped".into(), "an earlier tenant failed (--on-failure stop)".into())
        }
    }
}

/// `pgtenant migrate`: returns whether every tenant ended current.
pub async fn migrate(args: MigrateArgs) -> anyhow::Result<bool> {
    anyhow::ensure!(args.all || !args.tenants.is_empty(), "name tenants with --tenant ID, or pass --all");
    let config = args.target.config()?;
    let lc = Lifecycle::from_config(&config)?;
    anyhow::ensure!(
        !lc.migrations.migrations.is_empty(),
        "no migrations: pass --migrations DIR or set [lifecycle] migrations"
    );
    let opts = MigrateOptions {
        tenants: args.tenants,
        parallel: args.parallel.unwrap_or(0),
        dry_run: args.dry_run,
        stop_on_failure: args.on_failure == OnFailure::Stop,
    };
    let terminal = std::io::stderr().is_terminal();
    let progress = move |m: &TenantMigration, done: usize, total: usize| {
        let (what, detail) = outcome_text(m);
        if terminal {
            // One line, redrawn: a bar and the last tenant finished.
            let width = 30;
            let filled = (done * width).checked_div(total).unwrap_or(width);
            eprint!(
                "\r\x1b[2K[{}{}] {done}/{total} {}: {what}",
                "#".repeat(filled),
                "-".repeat(width - filled),
                m.tenant
            );
            if done == total {
                eprintln!();
            }
        } else {
            eprintln!("[{done}/{total}] {}: {what} {detail}", m.tenant);
        }
    };
    let results = match lc.migrate(&opts, &progress).await {
        Ok(r) => r,
        Err(LifecycleError::NotFound(id)) => anyhow::bail!("no tenant {id:?}"),
        Err(e) => return Err(e.into()),
    };
    let failed = results.iter().filter(|r| matches!(r.outcome, MigrationOutcome::Failed { .. })).count();
    let skipped = results.iter().filter(|r| matches!(r.outcome, MigrationOutcome::Skipped)).count();
    if args.target.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    } else {
        let rows: Vec<Vec<String>> = results
            .iter()
            .map(|r| {
                let (what, detail) = outcome_text(r);
                vec![r.tenant.clone(), what, version(r.version), detail]
            })
            .collect();
        print_table(&["TENANT", "RESULT", "VERSION", "DETAIL"], &rows);
        let applied =
            results.iter().filter(|r| matches!(r.outcome, MigrationOutcome::Applied { .. })).count();
        println!(
            "{} tenants: {applied} {}, {} already current, {failed} failed, {skipped} skipped",
            results.len(),
            if args.dry_run { "with pending migrations (dry run)" } else { "migrated" },
            results.len() - applied - failed - skipped
        );
    }
    Ok(failed == 0 && skipped == 0)
}

/// `tenant delete --hard` on a terminal: the tenant's id typed back, or nothing is done.
/// Without a terminal (scripts) it goes ahead, as `--yes` does.
fn confirm_hard_delete(id: &str) -> anyhow::Result<()> {
    use std::io::{BufRead, IsTerminal, Write};
    if !std::io::stdin().is_terminal() {
        return Ok(());
    }
    eprint!("This drops tenant {id}'s data for good. Type the tenant id to confirm: ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    anyhow::ensure!(answer.trim() == id, "not confirmed: nothing deleted");
    Ok(())
}

pub async fn upstream(command: UpstreamCommand, target: Target) -> anyhow::Result<()> {
    let config = target.config()?;
    let db = super::control_db(Some(config.catalog.url.clone()), Path::new("")).await?;
    match command {
        UpstreamCommand::Add {
            name,
            host,
            port,
            admin_user,
            admin_database,
            admin_password_stdin,
            sslmode,
            sslrootcert,
            max_connections,
            require_auth,
        } => {
            let mode = crate::model::SslMode::parse(&sslmode)
                .ok_or_else(|| anyhow::anyhow!("unknown sslmode {sslmode:?}"))?;
            if matches!(mode, crate::model::SslMode::VerifyCa | crate::model::SslMode::VerifyFull) {
                let ca = sslrootcert
                    .as_deref()
                    .ok_or_else(|| anyhow::anyhow!("--sslmode {sslmode} needs --sslrootcert"))?;
                crate::auth::tls::client_config(mode, Some(ca))
                    .map_err(|e| anyhow::anyhow!("--sslrootcert {ca}: {e}"))?;
            }
            // Stored in the catalog's canonical spelling (its CHECK allows no spaces).
            let require_auth = require_auth
                .map(|r| crate::model::RequireAuth::parse(&r).map(|r| r.to_string()))
                .transpose()
                .map_err(anyhow::Error::msg)?;
            let password = if admin_password_stdin { Some(read_stdin_line("password")?) } else { None };
            let keys = crate::catalog::secrets::load(&config.catalog.key_file).map_err(anyhow::Error::msg)?;
            let stored = password.map(|p| keys.as_ref().map_or(p.clone(), |k| k.encrypt(&p)));
            let max = i32::try_from(max_connections)?;
            let upstream = crate::catalog::store::NewUpstream {
                name: &name,
                host: &host,
                port,
                admin_user: Some(&admin_user),
                admin_password: stored.as_deref(),
                admin_database: &admin_database,
                sslmode: &sslmode,
                sslrootcert: sslrootcert.as_deref(),
                max_connections: max,
                require_auth: require_auth.as_deref(),
            };
            crate::catalog::store::save_upstream(&db, &upstream).await?;
            println!("upstream {name} saved");
        }
        UpstreamCommand::List => {
            let rows: Vec<Vec<String>> = crate::catalog::store::upstreams(&db)
                .await?
                .into_iter()
                .map(|u| {
                    vec![
                        u.name,
                        u.host,
                        u.port.to_string(),
                        u.sslmode,
                        u.admin_user.unwrap_or_else(|| "-".into()),
                        u.max_connections.to_string(),
                    ]
                })
                .collect();
            print_table(&["NAME", "HOST", "PORT", "SSLMODE", "ADMIN", "MAX CONNECTIONS"], &rows);
        }
    }
    Ok(())
}
