//! `pgtenant console-user add|list|remove`: console users (database `pgbouncer` or
//! `pgtenant` on the proxy's port) kept in the control database's `pgtenant.console_users`,
//! besides `[admin]` in the config file (which wins for a name it knows). Passwords come
//! from an environment variable, standard input or a terminal prompt, never an argument,
//! and are stored as SCRAM-SHA-256 verifiers. Running proxies see a change at the next login.

use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};

use super::control_db;
use crate::catalog::store::console_users as store;
use crate::config::ConsoleRole;

/// Where the control database is (flags of every `console-user` command).
#[derive(Args, Debug, Clone)]
pub struct ControlTarget {
    /// Connection string of the control database (default: `[catalog] url` of the config).
    #[arg(long, env = "PGTENANT_CATALOG_URL", hide_env_values = true, global = true)]
    pub url: Option<String>,
    /// The configuration file naming the control database.
    #[arg(short, long, env = "PGTENANT_CONFIG", default_value = "config/pgtenant.toml", global = true)]
    pub config: PathBuf,
}

#[derive(Subcommand, Debug)]
pub enum ConsoleUserCommand {
    /// Add a console user, or replace the password and role of the one of that name; the
    /// password (from --password-env, else standard input, or a prompt on a terminal) is
    /// stored as a SCRAM-SHA-256 verifier.
    Add {
        /// The name console clients log in with.
        name: String,
        /// admin (every console command) or stats (SHOW only).
        #[arg(long, value_enum)]
        role: RoleArg,
        /// Read the password from this environment variable instead of standard input.
        #[arg(long, value_name = "VAR")]
        password_env: Option<String>,
    },
    /// List the console users of the control database (name, role, creation time).
    List,
    /// Remove a console user: its next login is refused (sessions open now go on).
    Remove {
        /// The console user's name.
        name: String,
    },
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoleArg {
    /// Every console command (PgBouncer's admin_users).
    Admin,
    /// SHOW only (PgBouncer's stats_users).
    Stats,
}

impl RoleArg {
    fn role(self) -> ConsoleRole {
        match self {
            RoleArg::Admin => ConsoleRole::Admin,
            RoleArg::Stats => ConsoleRole::Stats,
        }
    }
}

/// Runs a `console-user` command.
pub async fn command(command: ConsoleUserCommand, target: ControlTarget) -> anyhow::Result<()> {
    // The password is read before connecting: a prompt does not hold a connection open.
    let password = match &command {
        ConsoleUserCommand::Add { password_env, .. } => Some(password(password_env.as_deref())?),
        _ => None,
    };
    let db = control_db(target.url, &target.config).await?;
    let missing_table = |e: tokio_postgres::Error| match e.code() {
        Some(c) if *c == tokio_postgres::error::SqlState::UNDEFINED_TABLE => {
            anyhow::anyhow!("the control database has no pgtenant.console_users: run `pgtenant catalog init`")
        }
        _ => e.into(),
    };
    match command {
        ConsoleUserCommand::Add { name, role, .. } => {
            anyhow::ensure!(!name.is_empty(), "the console user needs a name");
            let verifier = crate::auth::Verifier::hash(&password.unwrap_or_default());
            store::add_console_user(&db, &name, &verifier, role.role()).await.map_err(missing_table)?;
            println!("console user {name} ({}) saved", role.role().as_str());
        }
        ConsoleUserCommand::List => {
            for u in store::console_users(&db).await? {
                println!("{}\t{}\t{}", u.name, u.role.as_str(), u.created_at);
            }
        }
        ConsoleUserCommand::Remove { name } => {
            anyhow::ensure!(
                store::remove_console_user(&db, &name).await.map_err(missing_table)?,
                "no console user {name:?}"
            );
            println!("console user {name} removed");
        }
    }
    Ok(())
}

/// The new password: from the environment variable `env` if named, else a prompt (asked
/// twice, not echoed) when standard input is a terminal, else one line of standard input.
fn password(env: Option<&str>) -> anyhow::Result<String> {
    if let Some(var) = env {
        return from_env(var, std::env::var(var).ok());
    }
    if !std::io::stdin().is_terminal() {
        return super::lifecycle::read_stdin_line("password");
    }
    let first = prompt("password: ")?;
    let again = prompt("again: ")?;
    anyhow::ensure!(first == again, "the two passwords differ");
    anyhow::ensure!(!first.is_empty(), "empty password");
    Ok(first)
}

/// The password held by environment variable `var` (`value`): set and not empty.
fn from_env(var: &str, value: Option<String>) -> anyhow::Result<String> {
    match value {
        Some(v) if !v.is_empty() => Ok(v),
        Some(_) => anyhow::bail!("{var} is empty"),
        None => anyhow::bail!("{var} is not set (or not UTF-8)"),
    }
}

/// One line from the terminal on standard input, with echo off while it is typed.
fn prompt(what: &str) -> anyhow::Result<String> {
    use rustix::termios::{tcgetattr, tcsetattr, LocalModes, OptionalActions};
    let stdin = std::io::stdin();
    let before = tcgetattr(&stdin)?;
    let mut quiet = before.clone();
    quiet.local_modes.remove(LocalModes::ECHO);
    eprint!("{what}");
    std::io::stderr().flush()?;
    tcsetattr(&stdin, OptionalActions::Flush, &quiet)?;
    let mut line = String::new();
    let read = stdin.read_line(&mut line);
    // Echo back on whatever the read gave.
    let restored = tcsetattr(&stdin, OptionalActions::Now, &before);
    eprintln!();
    read?;
    restored?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[test]
    fn add_takes_a_role_and_never_a_password_argument() {
        let cli = crate::cli::Cli::try_parse_from([
            "pgtenant",
            "console-user",
            "add",
            "ops",
            "--role",
            "admin",
            "--password-env",
            "OPS_PW",
        ])
        .expect("parses");
        let crate::cli::Command::ConsoleUser {
            command: ConsoleUserCommand::Add { name, role, password_env },
            ..
        } = cli.command
        else {
            panic!("not console-user add");
        };
        assert_eq!(
            (name.as_str(), role.role(), password_env.as_deref()),
            ("ops", ConsoleRole::Admin, Some("OPS_PW"))
        );
        for bad in [
            &["pgtenant", "console-user", "add", "ops"][..],
            &["pgtenant", "console-user", "add", "ops", "--role", "root"],
            &["pgtenant", "console-user", "add", "ops", "--role", "stats", "--password", "pw"],
        ] {
            assert!(crate::cli::Cli::try_parse_from(bad).is_err(), "{bad:?}");
        }
        let cli =
            crate::cli::Cli::try_parse_from(["pgtenant", "console-user", "remove", "ops", "--url", "x"])
                .expect("parses");
        assert!(matches!(
            cli.command,
            crate::cli::Command::ConsoleUser { command: ConsoleUserCommand::Remove { .. }, target }
                if target.url.as_deref() == Some("x")
        ));
    }

    #[test]
    fn every_console_user_option_has_help() {
        use clap::CommandFactory as _;
        let cli = crate::cli::Cli::command();
        let group = cli.find_subcommand("console-user").expect("console-user");
        assert!(group.get_about().is_some());
        let mut seen = 0;
        for sub in group.get_subcommands() {
            assert!(sub.get_about().is_some(), "{}", sub.get_name());
            for arg in sub.get_arguments().chain(group.get_arguments()) {
                let id = arg.get_id().as_str();
                if id != "help" {
                    assert!(arg.get_help().is_some(), "console-user {} {id}", sub.get_name());
                    seen += 1;
                }
            }
        }
        assert!(seen >= 5, "{seen}");
    }

    #[test]
    fn a_password_from_the_environment_must_be_set_and_not_empty() {
        assert_eq!(from_env("V", Some("pw".into())).expect("set"), "pw");
        assert!(from_env("V", Some(String::new())).is_err());
        assert!(from_env("V", None).is_err());
    }
}
