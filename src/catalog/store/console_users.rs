//! `pgtenant.console_users` (migration 10): console users kept in the control database
//! besides `[admin]` in the config file. Written by `pgtenant console-user`, read by the
//! proxy once per console login ([`console_user`]), so a change holds from the next login.

use tokio_postgres::{Client, GenericClient};

use super::StoreError;
use crate::config::ConsoleRole;

/// A stored console user as listed (the verifier stays in the catalog).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleUserRow {
    pub name: String,
    pub role: ConsoleRole,
    pub created_at: String,
}

/// What a console login needs of a stored user: its role and SCRAM-SHA-256 verifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleCredential {
    pub role: ConsoleRole,
    pub verifier: String,
}

fn role(value: String) -> Result<ConsoleRole, StoreError> {
    ConsoleRole::parse(&value).ok_or(StoreError::Unknown { column: "console_users.role".into(), value })
}

/// Adds a console user, or replaces the verifier and role of one of that name (the CLI's
/// `add` doubles as a password change), and records it in the event log.
pub async fn add_console_user(
    db: &Client,
    name: &str,
    verifier: &str,
    role: ConsoleRole,
) -> Result<(), tokio_postgres::Error> {
    db.execute(
        "INSERT INTO pgtenant.console_users (name, verifier, role) VALUES ($1, $2, $3)
         ON CONFLICT (name) DO UPDATE SET verifier = EXCLUDED.verifier, role = EXCLUDED.role",
        &[&name, &verifier, &role.as_str()],
    )
    .await?;
    db.execute(
        "INSERT INTO pgtenant.events (kind, detail)
         VALUES ('console_user_saved', jsonb_build_object('name', $1::text, 'role', $2::text))",
        &[&name, &role.as_str()],
    )
    .await?;
    Ok(())
}

/// Removes a console user; false if there is none by that name.
pub async fn remove_console_user(db: &Client, name: &str) -> Result<bool, tokio_postgres::Error> {
    let n = db.execute("DELETE FROM pgtenant.console_users WHERE name = $1", &[&name]).await?;
    if n != 1 {
        return Ok(false);
    }
    db.execute(
        "INSERT INTO pgtenant.events (kind, detail) VALUES ('console_user_removed', jsonb_build_object('name', $1::text))",
        &[&name],
    )
    .await?;
    Ok(true)
}

/// The stored console users, by name.
pub async fn console_users(db: &Client) -> Result<Vec<ConsoleUserRow>, StoreError> {
    let rows = db
        .query("SELECT name, role, created_at::text FROM pgtenant.console_users ORDER BY name", &[])
        .await?;
    rows.iter()
        .map(|r| Ok(ConsoleUserRow { name: r.get(0), role: role(r.get(1))?, created_at: r.get(2) }))
        .collect()
}

/// The role and verifier of console user `name`, if stored (one statement: the proxy runs it
/// on a pooled connection per console login).
pub async fn console_user(
    db: &impl GenericClient,
    name: &str,
) -> Result<Option<ConsoleCredential>, StoreError> {
    let row =
        db.query_opt("SELECT role, verifier FROM pgtenant.console_users WHERE name = $1", &[&name]).await?;
    row.map(|r| Ok(ConsoleCredential { role: role(r.get(0))?, verifier: r.get(1) })).transpose()
}
