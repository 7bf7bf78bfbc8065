//! Statements against the control database's `pgtenant.*` tables that the command line, the
//! admin API and the tenant lifecycle run: client credentials, upstream login passwords,
//! master-key rotation, admin tokens, the event log, a tenant's operation lock and the writes
//! to its row; and the one reading of an upstream row's connection columns. Rows come back
//! typed; callers open the connection with [`super::link::ControlLink::open`].
//!
//! Tenant rows (read whole, inserted, settings updated) are in [`tenants`], upstream rows
//! (saved, listed, read with their administrator login) in [`upstreams`], console users in
//! [`console_users`]. The tenant lookups of the proxy stay in [`super::control`] (cached,
//! pooled), the schema in [`super::migrations`]: no statement against `pgtenant.*` lives
//! outside `catalog/`.

pub mod console_users;
pub mod usage;

use std::sync::Arc;

use tokio_postgres::{Client, GenericClient, Row};

use super::secrets::{self, Keys};
use crate::model::{RequireAuth, SslMode, TenantStatus, UpstreamAddr, UpstreamTls};

mod tenants;
mod upstreams;

pub use tenants::{
    insert_tenant, migratable_tenants, tenant, tenants, update_settings, NewTenant, PoolSizeSource,
    SettingsPatch, TenantRow,
};
pub use upstreams::{save_upstream, upstream_admin, upstreams, NewUpstream, UpstreamAdmin, UpstreamRow};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A text column holds a value this binary does not know (a catalog newer than it).
    #[error("unknown {column} {value:?} in the catalog (is this pgtenant older than the catalog?)")]
    Unknown { column: String, value: String },
    #[error(transparent)]
    Db(#[from] tokio_postgres::Error),
    /// A stored secret could not be decrypted with the keys given.
    #[error("{what}: {why}")]
    Secret { what: String, why: String },
}

/// A client credential of a tenant (the verifier itself stays in the catalog).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRow {
    pub username: String,
    pub created_at: String,
}

/// A stored admin token (only its digest is kept, and it is not returned).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminTokenRow {
    pub name: String,
    pub created_at: String,
}

/// How many stored passwords a key rotation re-encrypted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rotated {
    pub tenants: i32,
    pub upstreams: i32,
}

/// Where an upstream is and how to reach it, from the columns `host`, `port`, `sslmode`,
/// `sslrootcert` and `require_auth` of a `pgtenant.upstreams` row, at the positions given: the
/// one reading of those columns, for the proxy's lookups and the lifecycle's administrator
/// links alike. The columns' CHECK constraints keep them parseable; anything else reads as the
/// default (`prefer`, `require_auth` unset).
pub fn upstream_target(
    row: &Row,
    [host, port, sslmode, rootcert, require_auth]: [usize; 5],
) -> (UpstreamAddr, Option<RequireAuth>) {
    let tls = UpstreamTls {
        mode: SslMode::parse(row.get(sslmode)).unwrap_or_default(),
        root_cert: row.get::<_, Option<String>>(rootcert).map(|p| Arc::from(p.as_str())),
    };
    let port = u16::try_from(row.get::<_, i32>(port)).unwrap_or(5432);
    let addr = UpstreamAddr::with_tls(row.get(host), port, tls);
    let require_auth = row.get::<_, Option<String>>(require_auth).and_then(|s| RequireAuth::parse(&s).ok());
    (addr, require_auth)
}

/// Adds (or replaces) a client credential, stored as a SCRAM verifier.
pub async fn add_user(
    db: &impl GenericClient,
    tenant: &str,
    user: &str,
    verifier: &str,
) -> Result<(), tokio_postgres::Error> {
    db.execute(
        "INSERT INTO pgtenant.tenant_users (tenant_id, username, verifier) VALUES ($1, $2, $3)
         ON CONFLICT (tenant_id, username) DO UPDATE SET verifier = EXCLUDED.verifier",
        &[&tenant, &user, &verifier],
    )
    .await?;
    db.execute(
        "INSERT INTO pgtenant.events (tenant_id, kind, detail) VALUES ($1, 'user_added', jsonb_build_object('user', $2::text))",
        &[&tenant, &user],
    )
    .await?;
    Ok(())
}

/// Removes a client credential; false if the tenant has no such user.
pub async fn remove_user(db: &Client, tenant: &str, user: &str) -> Result<bool, tokio_postgres::Error> {
    let n = db
        .execute(
            "DELETE FROM pgtenant.tenant_users WHERE tenant_id = $1 AND username = $2",
            &[&tenant, &user],
        )
        .await?;
    if n != 1 {
        return Ok(false);
    }
    db.execute(
        "INSERT INTO pgtenant.events (tenant_id, kind, detail) VALUES ($1, 'user_removed', jsonb_build_object('user', $2::text))",
        &[&tenant, &user],
    )
    .await?;
    Ok(true)
}

/// A tenant's client credentials, by name.
pub async fn users(db: &Client, tenant: &str) -> Result<Vec<UserRow>, tokio_postgres::Error> {
    let rows = db
        .query(
            "SELECT username, created_at::text FROM pgtenant.tenant_users WHERE tenant_id = $1 ORDER BY 1",
            &[&tenant],
        )
        .await?;
    Ok(rows.iter().map(|r| UserRow { username: r.get(0), created_at: r.get(1) }).collect())
}

/// Stores a tenant's (encrypted) upstream login password; false if there is no such tenant.
pub async fn set_login_password(
    db: &Client,
    tenant: &str,
    encrypted: &str,
) -> Result<bool, tokio_postgres::Error> {
    let n = db
        .execute("UPDATE pgtenant.tenants SET login_password = $2 WHERE id = $1", &[&tenant, &encrypted])
        .await?;
    Ok(n == 1)
}

/// Re-encrypts every stored password not under the current key (tenants' upstream logins,
/// upstreams' administrator logins) in one transaction, and records the rotation.
pub async fn rotate_keys(db: &mut Client, keys: &Keys) -> Result<Rotated, StoreError> {
    let tx = db.transaction().await?;
    // (table, key, column); all three are constants, never input.
    let mut rotated = [0, 0];
    for (n, (table, key, column)) in
        [("tenants", "id", "login_password"), ("upstreams", "name", "admin_password")].into_iter().enumerate()
    {
        let rows = tx
            .query(
                &format!(
                    "SELECT {key}, {column} FROM pgtenant.{table} WHERE {column} IS NOT NULL FOR UPDATE"
                ),
                &[],
            )
            .await?;
        for row in rows {
            let (id, stored): (String, String) = (row.get(0), row.get(1));
            if !keys.needs_rotation(&stored) {
                continue;
            }
            let (plain, _) = secrets::reveal(Some(keys), &stored)
                .map_err(|why| StoreError::Secret { what: format!("{table} {id}"), why: why.to_string() })?;
            tx.execute(
                &format!("UPDATE pgtenant.{table} SET {column} = $2 WHERE {key} = $1"),
                &[&id, &keys.encrypt(&plain)],
            )
            .await?;
            rotated[n] += 1;
        }
    }
    tx.execute(
        "INSERT INTO pgtenant.events (kind, detail)
         VALUES ('key_rotated', jsonb_build_object('key', $1::text, 'tenants', $2::int, 'upstreams', $3::int))",
        &[&keys.current_id(), &rotated[0], &rotated[1]],
    )
    .await?;
    tx.commit().await?;
    Ok(Rotated { tenants: rotated[0], upstreams: rotated[1] })
}

/// Stores an admin token's SHA-256 (hex) under a name, and records it.
pub async fn create_admin_token(
    db: &Client,
    name: &str,
    sha256_hex: &str,
) -> Result<(), tokio_postgres::Error> {
    db.execute(
        "INSERT INTO pgtenant.admin_tokens (name, token_sha256) VALUES ($1, $2)",
        &[&name, &sha256_hex],
    )
    .await?;
    db.execute(
        "INSERT INTO pgtenant.events (kind, detail) VALUES ('admin_token_created', jsonb_build_object('name', $1::text))",
        &[&name],
    )
    .await?;
    Ok(())
}

/// The stored admin tokens, by name.
pub async fn admin_tokens(db: &Client) -> Result<Vec<AdminTokenRow>, tokio_postgres::Error> {
    let rows =
        db.query("SELECT name, created_at::text FROM pgtenant.admin_tokens ORDER BY name", &[]).await?;
    Ok(rows.iter().map(|r| AdminTokenRow { name: r.get(0), created_at: r.get(1) }).collect())
}

/// Revokes a stored admin token; false if there is none by that name.
pub async fn revoke_admin_token(db: &Client, name: &str) -> Result<bool, tokio_postgres::Error> {
    let n = db.execute("DELETE FROM pgtenant.admin_tokens WHERE name = $1", &[&name]).await?;
    if n != 1 {
        return Ok(false);
    }
    db.execute(
        "INSERT INTO pgtenant.events (kind, detail) VALUES ('admin_token_revoked', jsonb_build_object('name', $1::text))",
        &[&name],
    )
    .await?;
    Ok(true)
}

/// Whether a token with this SHA-256 (lowercase hex) is stored.
pub async fn admin_token_known(db: &Client, sha256_hex: &str) -> Result<bool, tokio_postgres::Error> {
    let row = db
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pgtenant.admin_tokens WHERE lower(token_sha256) = $1)",
            &[&sha256_hex],
        )
        .await?;
    Ok(row.get(0))
}

// ---- a tenant's row and its operation lock (the lifecycle's writes) ----

/// Takes the tenant's operation lock for the life of this connection, if no other operation
/// holds it (session-level advisory lock, released when the connection closes).
pub async fn try_lock_tenant(db: &Client, id: &str) -> Result<bool, tokio_postgres::Error> {
    let row = db
        .query_one("SELECT pg_try_advisory_lock(hashtext('pgtenant.tenant'), hashtext($1))", &[&id])
        .await?;
    Ok(row.get(0))
}

/// Waits for the tenant's operation lock (migration runs queue behind other operations).
pub async fn lock_tenant(db: &Client, id: &str) -> Result<(), tokio_postgres::Error> {
    db.execute("SELECT pg_advisory_lock(hashtext('pgtenant.tenant'), hashtext($1))", &[&id]).await.map(|_| ())
}

/// Releases what [`lock_tenant`] took.
pub async fn unlock_tenant(db: &Client, id: &str) -> Result<(), tokio_postgres::Error> {
    db.execute("SELECT pg_advisory_unlock(hashtext('pgtenant.tenant'), hashtext($1))", &[&id])
        .await
        .map(|_| ())
}

/// Appends to the event log; an empty tenant id records an event of no tenant.
pub async fn record_event(
    db: &impl GenericClient,
    tenant: &str,
    kind: &str,
    detail: &serde_json::Value,
) -> Result<(), tokio_postgres::Error> {
    db.execute(
        "INSERT INTO pgtenant.events (tenant_id, kind, detail) VALUES (nullif($1, ''), $2, $3::text::jsonb)",
        &[&tenant, &kind, &detail.to_string()],
    )
    .await
    .map(|_| ())
}

/// Sets a tenant's status (the row's trigger tells every proxy).
pub async fn set_status(db: &Client, id: &str, status: TenantStatus) -> Result<(), tokio_postgres::Error> {
    db.execute("UPDATE pgtenant.tenants SET status = $2 WHERE id = $1", &[&id, &status.as_str()])
        .await
        .map(|_| ())
}

/// Sets a tenant's status at the end of an operation that succeeded, clearing its last error.
pub async fn finish_status(db: &Client, id: &str, status: TenantStatus) -> Result<(), tokio_postgres::Error> {
    db.execute(
        "UPDATE pgtenant.tenants SET status = $2, last_error = NULL WHERE id = $1",
        &[&id, &status.as_str()],
    )
    .await
    .map(|_| ())
}

/// Records why the tenant's last operation failed.
pub async fn set_last_error(db: &Client, id: &str, error: &str) -> Result<(), tokio_postgres::Error> {
    db.execute("UPDATE pgtenant.tenants SET last_error = $2 WHERE id = $1", &[&id, &error]).await.map(|_| ())
}

/// Points a moved tenant at its new upstream, with its status back and no last error.
pub async fn set_upstream(
    db: &Client,
    id: &str,
    upstream: &str,
    status: TenantStatus,
) -> Result<(), tokio_postgres::Error> {
    db.execute(
        "UPDATE pgtenant.tenants SET upstream = $2, status = $3, last_error = NULL WHERE id = $1",
        &[&id, &upstream, &status.as_str()],
    )
    .await
    .map(|_| ())
}

/// Removes a tenant's row (its credentials go with it; its events stay).
pub async fn delete_tenant(db: &Client, id: &str) -> Result<(), tokio_postgres::Error> {
    db.execute("DELETE FROM pgtenant.tenants WHERE id = $1", &[&id]).await.map(|_| ())
}

/// A tenant's stored (encrypted) upstream login password.
pub async fn login_password(db: &Client, id: &str) -> Result<Option<String>, tokio_postgres::Error> {
    Ok(db.query_one("SELECT login_password FROM pgtenant.tenants WHERE id = $1", &[&id]).await?.get(0))
}

/// A tenant's status as its row has it (None: no row), before the row is read whole.
pub async fn tenant_status(db: &Client, id: &str) -> Result<Option<String>, tokio_postgres::Error> {
    Ok(db.query_opt("SELECT status FROM pgtenant.tenants WHERE id = $1", &[&id]).await?.map(|r| r.get(0)))
}

/// The names of every upstream, in order.
pub async fn upstream_names(db: &Client) -> Result<Vec<String>, tokio_postgres::Error> {
    let rows = db.query("SELECT name FROM pgtenant.upstreams ORDER BY name", &[]).await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Records on a tenant's row an object pgtenant made for it (`database`, `schema`, `role`),
/// so that undoing a failed create drops only what it made.
pub async fn record_created(db: &Client, id: &str, object: &str) -> Result<(), tokio_postgres::Error> {
    db.execute(
        "UPDATE pgtenant.tenants SET created_objects = array_append(created_objects, $2) WHERE id = $1",
        &[&id, &object],
    )
    .await
    .map(|_| ())
}

/// The objects [`record_created`] recorded.
pub async fn created_objects(db: &Client, id: &str) -> Result<Vec<String>, tokio_postgres::Error> {
    Ok(db.query_one("SELECT created_objects FROM pgtenant.tenants WHERE id = $1", &[&id]).await?.get(0))
}

/// Forgets the recorded objects once they are dropped.
pub async fn clear_created(db: &Client, id: &str) -> Result<(), tokio_postgres::Error> {
    db.execute("UPDATE pgtenant.tenants SET created_objects = '{}' WHERE id = $1", &[&id]).await.map(|_| ())
}
