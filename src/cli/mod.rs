//! The command line: `serve`, `demo`, `check-config`, `catalog …`, `tenant …`, `migrate`,
//! `upstream …` (the lifecycle commands are in [`lifecycle`]), `admin …`, `console-user …`.

mod check;
pub mod console_user;
mod demo;
pub mod lifecycle;
pub mod token;
mod usage;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::catalog::store;
use crate::config::{Config, LogFormat};

#[derive(Parser, Debug)]
#[command(
    name = "pgtenant",
    version,
    about = "A tenant-routing proxy that speaks the PostgreSQL wire protocol"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the proxy with a configuration file.
    Serve {
        /// Path of the TOML configuration (see config/pgtenant.toml); SIGHUP re-reads it.
        #[arg(short, long, env = "PGTENANT_CONFIG", default_value = "config/pgtenant.toml")]
        config: PathBuf,
    },
    /// Start a throwaway PostgreSQL with three demo tenants and the proxy in front of it.
    Demo {
        /// Where the proxy listens.
        #[arg(long, default_value = "127.0.0.1:6432")]
        listen: SocketAddr,
        /// Tokio worker threads (0 = automatic, 1 = single-threaded).
        #[arg(long, default_value_t = 0)]
        workers: usize,
    },
    /// Load and validate a configuration file, check the files it names (TLS, key file,
    /// CA files) and what it makes ignored, then exit (non-zero on an error).
    CheckConfig {
        /// Path of the TOML configuration.
        #[arg(short, long, env = "PGTENANT_CONFIG", default_value = "config/pgtenant.toml")]
        config: PathBuf,
    },
    /// Print the SCRAM-SHA-256 verifier of a password (read from stdin), for
    /// `[[tenants.users]] verifier` or `pgtenant.tenant_users.verifier`.
    HashPassword {
        /// Print the MD5 form instead (for `auth = "md5"` tenants): needs the user name the
        /// client sends, e.g. `app.acme`.
        #[arg(long, value_name = "CLIENT_USER")]
        md5_user: Option<String>,
    },
    /// The control database.
    Catalog {
        #[command(subcommand)]
        command: CatalogCommand,
    },
    /// Tenants in the control database.
    Tenant {
        #[command(subcommand)]
        command: TenantCommand,
        #[command(flatten)]
        target: lifecycle::Target,
    },
    /// Apply the migrations directory to tenants (each in its own transaction per file,
    /// recorded per tenant); exits non-zero if any tenant failed.
    Migrate(lifecycle::MigrateArgs),
    /// Upstream servers in the control database.
    Upstream {
        #[command(subcommand)]
        command: lifecycle::UpstreamCommand,
        #[command(flatten)]
        target: lifecycle::Target,
    },
    /// Bearer tokens of the HTTP admin API (`[admin]`).
    Admin {
        #[command(subcommand)]
        command: token::AdminCommand,
    },
    /// Console users (database `pgbouncer` on the proxy's port) in the control database,
    /// besides `[admin]` in the config file.
    ConsoleUser {
        #[command(subcommand)]
        command: console_user::ConsoleUserCommand,
        #[command(flatten)]
        target: console_user::ControlTarget,
    },
}

#[derive(Subcommand, Debug)]
pub enum TenantCommand {
    /// A tenant's client credentials.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Store a tenant's upstream login password (read from stdin), encrypted with the
    /// current master key.
    SetPassword { tenant: String },
    /// A tenant's usage per minute (transactions, queries, bytes, connection seconds,
    /// errors) from the control database; by default the last 24 hours.
    Usage {
        tenant: String,
        /// Start (RFC 3339, e.g. 2026-01-31T09:00:00Z).
        #[arg(long)]
        from: Option<String>,
        /// End, exclusive (RFC 3339).
        #[arg(long)]
        to: Option<String>,
    },
    #[command(flatten)]
    Lifecycle(lifecycle::LifecycleCommand),
}

#[derive(Subcommand, Debug)]
pub enum UserCommand {
    /// Add (or replace) a user of a tenant; the password is read from standard input and
    /// stored as a SCRAM-SHA-256 verifier.
    Add { tenant: String, user: String },
    /// Remove a user of a tenant.
    Remove { tenant: String, user: String },
    /// List a tenant's users.
    List { tenant: String },
}

#[derive(Subcommand, Debug)]
pub enum CatalogCommand {
    /// Create or upgrade the `pgtenant` schema in the control database.
    Init {
        /// Connection string of the control database (default: `[catalog] url` of the config).
        #[arg(long, env = "PGTENANT_CATALOG_URL", hide_env_values = true)]
        url: Option<String>,
        #[arg(short, long, env = "PGTENANT_CONFIG", default_value = "config/pgtenant.toml")]
        config: PathBuf,
    },
    /// Re-encrypt every stored password (tenants' upstream logins, upstreams' admin logins)
    /// with the current master key (the first line of the key file / PGTENANT_MASTER_KEYS);
    /// plaintext ones get encrypted too.
    RotateKey {
        #[arg(long, env = "PGTENANT_CATALOG_URL", hide_env_values = true)]
        url: Option<String>,
        #[arg(short, long, env = "PGTENANT_CONFIG", default_value = "config/pgtenant.toml")]
        config: PathBuf,
    },
    /// Print a new random master key line `<id>:<base64>`.
    NewKey { id: String },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { config: path } => {
            Config::load_for_serve(&path).map_err(anyhow::Error::from).and_then(|c| {
                crate::logging::init(c.proxy.log_format, &c.proxy.log_level);
                runtime(c.proxy.workers)?.block_on(crate::server::run_from(c, Some(path)))
            })
        }
        Command::CheckConfig { config } => {
            Config::load_for_serve(&config).map_err(anyhow::Error::from).and_then(|c| {
                let found = check::check(&c);
                for w in &found.warnings {
                    eprintln!("warning: {w}");
                }
                for e in &found.errors {
                    eprintln!("error: {e}");
                }
                anyhow::ensure!(
                    found.errors.is_empty(),
                    "{}: {} error(s): `serve` would refuse it or fail connections",
                    config.display(),
                    found.errors.len()
                );
                println!(
                    "{}: ok ({} upstreams, {} tenants)",
                    config.display(),
                    c.upstreams.len(),
                    c.tenants.len()
                );
                Ok(())
            })
        }
        Command::Catalog { command: CatalogCommand::Init { url, config } } => {
            init_logging(LogFormat::Human);
            runtime(1).and_then(|rt| rt.block_on(catalog_init(url, &config)))
        }
        Command::Tenant { command: TenantCommand::User { command }, target } => {
            init_logging(LogFormat::Human);
            runtime(1)
                .and_then(|rt| rt.block_on(tenant_user(command, target.url.clone(), &target.config_path())))
        }
        Command::Tenant { command: TenantCommand::SetPassword { tenant }, target } => {
            init_logging(LogFormat::Human);
            runtime(1)
                .and_then(|rt| rt.block_on(set_password(tenant, target.url.clone(), &target.config_path())))
        }
        Command::Tenant { command: TenantCommand::Usage { tenant, from, to }, target } => {
            init_logging(LogFormat::Human);
            runtime(1).and_then(|rt| rt.block_on(usage::tenant_usage(tenant, from, to, target)))
        }
        Command::Tenant { command: TenantCommand::Lifecycle(command), target } => {
            init_logging(LogFormat::Human);
            runtime(1).and_then(|rt| rt.block_on(lifecycle::tenant(command, target)))
        }
        Command::Upstream { command, target } => {
            init_logging(LogFormat::Human);
            runtime(1).and_then(|rt| rt.block_on(lifecycle::upstream(command, target)))
        }
        Command::Admin { command } => {
            init_logging(LogFormat::Human);
            runtime(1).and_then(|rt| rt.block_on(token::command(command)))
        }
        Command::ConsoleUser { command, target } => {
            init_logging(LogFormat::Human);
            runtime(1).and_then(|rt| rt.block_on(console_user::command(command, target)))
        }
        Command::Migrate(args) => {
            init_logging(LogFormat::Human);
            match runtime(1).and_then(|rt| rt.block_on(lifecycle::migrate(args))) {
                Ok(true) => Ok(()),
                Ok(false) => return ExitCode::from(2),
                Err(e) => Err(e),
            }
        }
        Command::Catalog { command: CatalogCommand::RotateKey { url, config } } => {
            init_logging(LogFormat::Human);
            runtime(1).and_then(|rt| rt.block_on(rotate_key(url, &config)))
        }
        Command::Catalog { command: CatalogCommand::NewKey { id } } => {
            println!("{}", crate::catalog::secrets::Keys::generate_line(&id));
            Ok(())
        }
        Command::HashPassword { md5_user } => {
            lifecycle::read_stdin_line("password").map(|password| match &md5_user {
                Some(user) => println!("{}", postgres_protocol::password::md5(password.as_bytes(), user)),
                None => println!("{}", crate::auth::Verifier::hash(&password)),
            })
        }
        Command::Demo { listen, workers } => {
            init_logging(LogFormat::Human);
            runtime(workers).and_then(|rt| rt.block_on(demo::demo(listen, workers)))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pgtenant: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A connection to the control database named by `--url` or the config.
pub(crate) async fn control_db(
    url: Option<String>,
    config: &std::path::Path,
) -> anyhow::Result<tokio_postgres::Client> {
    let url = match url {
        Some(u) => u,
        None => Config::load(config)?.catalog.url,
    };
    anyhow::ensure!(!url.is_empty(), "no control database: pass --url or set [catalog] url");
    // TLS as the URL's sslmode / sslrootcert ask.
    let link = crate::catalog::link::ControlLink::parse(&url)
        .map_err(|e| anyhow::anyhow!("control database URL: {e}"))?;
    Ok(link.open().await?)
}

async fn tenant_user(
    command: UserCommand,
    url: Option<String>,
    config: &std::path::Path,
) -> anyhow::Result<()> {
    let db = control_db(url, config).await?;
    match command {
        UserCommand::Add { tenant, user } => {
            let password = lifecycle::read_stdin_line("password")?;
            store::add_user(&db, &tenant, &user, &crate::auth::Verifier::hash(&password)).await?;
            println!("user {user} of tenant {tenant} saved");
        }
        UserCommand::Remove { tenant, user } => {
            anyhow::ensure!(
                store::remove_user(&db, &tenant, &user).await?,
                "tenant {tenant} has no user {user}"
            );
            println!("user {user} of tenant {tenant} removed");
        }
        UserCommand::List { tenant } => {
            for user in store::users(&db, &tenant).await? {
                println!("{}\t{}", user.username, user.created_at);
            }
        }
    }
    Ok(())
}

/// The master keys named by the environment or the config (required).
fn master_keys(config: &std::path::Path) -> anyhow::Result<crate::catalog::secrets::Keys> {
    let key_file = if std::env::var_os("PGTENANT_MASTER_KEYS").is_some() {
        String::new()
    } else {
        Config::load(config).map(|c| c.catalog.key_file).unwrap_or_default()
    };
    crate::catalog::secrets::load(&key_file)
        .map_err(anyhow::Error::msg)?
        .ok_or_else(|| anyhow::anyhow!("no master key: set PGTENANT_MASTER_KEYS or [catalog] key_file"))
}

async fn set_password(tenant: String, url: Option<String>, config: &std::path::Path) -> anyhow::Result<()> {
    let keys = master_keys(config)?;
    let password = lifecycle::read_stdin_line("password")?;
    let db = control_db(url, config).await?;
    let stored = store::set_login_password(&db, &tenant, &keys.encrypt(&password)).await?;
    anyhow::ensure!(stored, "no tenant {tenant}");
    println!("upstream password of tenant {tenant} stored (key {})", keys.current_id());
    Ok(())
}

async fn rotate_key(url: Option<String>, config: &std::path::Path) -> anyhow::Result<()> {
    let keys = master_keys(config)?;
    let mut db = control_db(url, config).await?;
    let rotated = store::rotate_keys(&mut db, &keys).await?;
    println!("{} tenant password(s) now under key {}", rotated.tenants, keys.current_id());
    println!("{} upstream admin password(s) now under key {}", rotated.upstreams, keys.current_id());
    Ok(())
}

async fn catalog_init(url: Option<String>, config: &std::path::Path) -> anyhow::Result<()> {
    let mut client = control_db(url, config).await?;
    let applied = crate::catalog::migrations::migrate(&mut client).await?;
    if applied.is_empty() {
        println!("catalog is up to date");
    } else {
        println!("applied catalog migrations {applied:?}");
    }
    Ok(())
}

/// Logs go to stderr; the level comes from `RUST_LOG` (default `info`).
pub fn init_logging(format: LogFormat) {
    crate::logging::init(format, "");
}

/// Worker threads: 1 gives a single-threaded runtime; 0 picks: single-threaded on machines
/// with two cores or fewer (where pgtenant shares the cores with Postgres and clients, and
/// benches/compare.sh measured it faster), one worker per core above that.
pub fn runtime(workers: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let workers = match workers {
        0 if cores <= 2 => 1,
        0 => cores,
        n => n,
    };
    let rt = if workers == 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()?
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(workers).enable_all().build()?
    };
    Ok(rt)
}
