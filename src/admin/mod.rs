//! Admin console: the HTTP admin API ([`http`]) and its bearer tokens (`pgtenant admin …`).
//!
//! A token is 32 random bytes, shown once base64url-encoded; only its SHA-256 (hex) is kept,
//! in `[admin] token_sha256` or in the control database's `pgtenant.admin_tokens`, so neither
//! the config file nor the catalog holds anything that logs in.

pub mod http;

use std::path::{Path, PathBuf};

use base64::Engine as _;
use clap::Subcommand;
use sha2::{Digest, Sha256};

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
        #[arg(long, env = "PGTENANT_CATALOG_URL")]
        url: Option<String>,
        #[arg(short, long, env = "PGTENANT_CONFIG", default_value = "config/pgtenant.toml")]
        config: PathBuf,
    },
    /// List the stored tokens (names and creation times; the tokens themselves are not kept).
    List {
        #[arg(long, env = "PGTENANT_CATALOG_URL")]
        url: Option<String>,
        #[arg(short, long, env = "PGTENANT_CONFIG", default_value = "config/pgtenant.toml")]
        config: PathBuf,
    },
    /// Revoke a stored token: the API refuses it from the next request on.
    Revoke {
        name: String,
        #[arg(long, env = "PGTENANT_CATALOG_URL")]
        url: Option<String>,
        #[arg(short, long, env = "PGTENANT_CONFIG", default_value = "config/pgtenant.toml")]
        config: PathBuf,
    },
}

/// A fresh token: 32 bytes from the OS-seeded CSPRNG, base64url without padding (43 chars).
pub fn new_token() -> String {
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The SHA-256 of a token's bytes.
pub fn token_digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The lowercase hex form stored in the config and the catalog.
pub fn token_sha256(token: &str) -> String {
    hex(&token_digest(token))
}

pub(crate) use crate::auth::hex;

/// Parses 64 hex digits (either case) into a digest.
pub fn parse_sha256_hex(s: &str) -> Option<[u8; 32]> {
    let s = s.as_bytes();
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        let digit = |c: u8| char::from(c).to_digit(16);
        let (hi, lo) = (digit(pair[0])?, digit(pair[1])?);
        out[i] = u8::try_from(hi * 16 + lo).ok()?;
    }
    Some(out)
}

/// Runs an `admin` command.
pub async fn command(command: AdminCommand) -> anyhow::Result<()> {
    match command {
        AdminCommand::TokenHash => {
            let token = crate::cli::lifecycle::read_stdin_line("token")?;
            println!("{}", token_sha256(&token));
            Ok(())
        }
        AdminCommand::Token { command: TokenCommand::Create { name, url, config } } => {
            token_create(&name, url, &config).await
        }
        AdminCommand::Token { command: TokenCommand::List { url, config } } => {
            let db = control(url, &config).await?;
            for row in db
                .query("SELECT name, created_at::text FROM pgtenant.admin_tokens ORDER BY name", &[])
                .await?
            {
                println!("{}\t{}", row.get::<_, String>(0), row.get::<_, String>(1));
            }
            Ok(())
        }
        AdminCommand::Token { command: TokenCommand::Revoke { name, url, config } } => {
            let db = control(url, &config).await?;
            let n = db.execute("DELETE FROM pgtenant.admin_tokens WHERE name = $1", &[&name]).await?;
            anyhow::ensure!(n == 1, "no admin token named {name:?}");
            db.execute(
                "INSERT INTO pgtenant.events (kind, detail) VALUES ('admin_token_revoked', jsonb_build_object('name', $1::text))",
                &[&name],
            )
            .await?;
            println!("admin token {name:?} revoked");
            Ok(())
        }
    }
}

/// A connection to the control database named by `--url` or the config.
async fn control(url: Option<String>, config: &Path) -> anyhow::Result<tokio_postgres::Client> {
    crate::cli::control_db(url, config).await
}

async fn token_create(name: &str, url: Option<String>, config: &Path) -> anyhow::Result<()> {
    anyhow::ensure!(!name.trim().is_empty(), "the token needs a name");
    let db = control(url, config).await?;
    let token = new_token();
    db.execute(
        "INSERT INTO pgtenant.admin_tokens (name, token_sha256) VALUES ($1, $2)",
        &[&name, &token_sha256(&token)],
    )
    .await
    .map_err(|e| match e.code() {
        Some(c) if *c == tokio_postgres::error::SqlState::UNIQUE_VIOLATION => {
            anyhow::anyhow!("a token named {name:?} exists already")
        }
        Some(c) if *c == tokio_postgres::error::SqlState::UNDEFINED_TABLE => {
            anyhow::anyhow!("the control database has no pgtenant.admin_tokens: run `pgtenant catalog init`")
        }
        _ => e.into(),
    })?;
    db.execute(
        "INSERT INTO pgtenant.events (kind, detail) VALUES ('admin_token_created', jsonb_build_object('name', $1::text))",
        &[&name],
    )
    .await?;
    // The token alone on stdout, for scripts; the advice on stderr.
    println!("{token}");
    eprintln!("admin token {name:?} stored; it is not shown again (send it as `Authorization: Bearer …`)");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_and_digests() {
        let t = new_token();
        assert_eq!(t.len(), 43);
        assert!(t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_ne!(t, new_token());
        // echo -n abc | sha256sum
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(token_sha256("abc"), abc);
        assert_eq!(parse_sha256_hex(abc), Some(token_digest("abc")));
        assert_eq!(parse_sha256_hex(&abc.to_uppercase()), Some(token_digest("abc")));
        for bad in ["", "abc", &abc[1..], &format!("{}g", &abc[1..]), &format!("{abc}0")] {
            assert_eq!(parse_sha256_hex(bad), None, "{bad}");
        }
    }
}
