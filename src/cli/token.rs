//! `pgtenant admin …`: bearer tokens of the HTTP admin API, stored in the control database
//! (`token create | list | revoke`) or digested for `[admin] token_sha256` (`token-hash`).

use std::path::{Path, PathBuf};

use clap::Subcommand;

use super::control_db;
use crate::admin;
use crate::catalog::store;

/// `pgtenant admin …`.
#[derive(Subcommand, Debug)]
pub enum AdminCommand {
    /// Bearer tokens of the HTTP admin API stored in the control database.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Print the SHA-256 (hex) of a token read from standard input, for `[admin] token_sha256`.
    TokenHash,
}

#[derive(Subcommand, Debug)]
pub enum TokenCommand {
    /// Generate a token, print it once, and store its SHA-256 in `pgtenant.admin_tokens`.
    Create {
        /// A name for the token (who or what uses it; `revoke` takes it).
        name: String,
        /// Connection string of the control database (default: `[catalog] url` of the config).
        #[arg(long, env = "PGTENANT_CATALOG_URL", hide_env_values = true)]
        url: Option<String>,
        #[arg(short, long, env = "PGTENANT_CONFIG", default_value = "config/pgtenant.toml")]
        config: PathBuf,
    },
    /// List the stored tokens (names and creation times; the tokens themselves are not kept).
    List {
        #[arg(long, env = "PGTENANT_CATALOG_URL", hide_env_values = true)]
        url: Option<String>,
        #[arg(short, long, env = "PGTENANT_CONFIG", default_value = "config/pgtenant.toml")]
        config: PathBuf,
    },
    /// Revoke a stored token: the API refuses it from the next request on.
    Revoke {
        name: String,
        #[arg(long, env = "PGTENANT_CATALOG_URL", hide_env_values = true)]
        url: Option<String>,
        #[arg(short, long, env = "PGTENANT_CONFIG", default_value = "config/pgtenant.toml")]
        config: PathBuf,
    },
}

/// Runs an `admin` command.
pub async fn command(command: AdminCommand) -> anyhow::Result<()> {
    match command {
        AdminCommand::TokenHash => {
            let token = super::lifecycle::read_stdin_line("token")?;
            println!("{}", admin::token_sha256(&token));
            Ok(())
        }
        AdminCommand::Token { command: TokenCommand::Create { name, url, config } } => {
            token_create(&name, url, &config).await
        }
        AdminCommand::Token { command: TokenCommand::List { url, config } } => {
            let db = control_db(url, &config).await?;
            for token in store::admin_tokens(&db).await? {
                println!("{}\t{}", token.name, token.created_at);
            }
            Ok(())
        }
        AdminCommand::Token { command: TokenCommand::Revoke { name, url, config } } => {
            let db = control_db(url, &config).await?;
            anyhow::ensure!(store::revoke_admin_token(&db, &name).await?, "no admin token named {name:?}");
            println!("admin token {name:?} revoked");
            Ok(())
        }
    }
}

async fn token_create(name: &str, url: Option<String>, config: &Path) -> anyhow::Result<()> {
    anyhow::ensure!(!name.trim().is_empty(), "the token needs a name");
    let db = control_db(url, config).await?;
    let token = admin::new_token();
    store::create_admin_token(&db, name, &admin::token_sha256(&token)).await.map_err(|e| match e.code() {
        Some(c) if *c == tokio_postgres::error::SqlState::UNIQUE_VIOLATION => {
            anyhow::anyhow!("a token named {name:?} exists already")
        }
        Some(c) if *c == tokio_postgres::error::SqlState::UNDEFINED_TABLE => {
            anyhow::anyhow!("the control database has no pgtenant.admin_tokens: run `pgtenant catalog init`")
        }
        _ => e.into(),
    })?;
    // The token alone on stdout, for scripts; the advice on stderr.
    println!("{token}");
    eprintln!("admin token {name:?} stored; it is not shown again (send it as `Authorization: Bearer …`)");
    Ok(())
}
