//! Upstream rows: saved by `upstream add` and the demo, listed by `upstream list`, read with
//! their administrator login by the lifecycle.

use tokio_postgres::Client;

use super::{upstream_target, StoreError};
use crate::catalog::secrets::{self, Keys};
use crate::model::{RequireAuth, UpstreamAddr};

/// What `upstream add` saves (an existing upstream of that name is replaced).
#[derive(Debug, Clone)]
pub struct NewUpstream<'a> {
    pub name: &'a str,
    pub host: &'a str,
    pub port: u16,
    pub admin_user: Option<&'a str>,
    /// The administrator password as stored (encrypted when a master key is configured).
    pub admin_password: Option<&'a str>,
    pub admin_database: &'a str,
    /// In the catalog's spelling (checked by its CHECK constraint).
    pub sslmode: &'a str,
    pub sslrootcert: Option<&'a str>,
    pub max_connections: i32,
    /// In the canonical spelling (`RequireAuth`'s Display).
    pub require_auth: Option<&'a str>,
}

/// Saves an upstream (insert, or replace every column of the one with that name).
pub async fn save_upstream(db: &Client, u: &NewUpstream<'_>) -> Result<(), tokio_postgres::Error> {
    db.execute(
        "INSERT INTO pgtenant.upstreams (name, host, port, admin_user, admin_password, admin_database,
             sslmode, sslrootcert, max_connections, require_auth)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
         ON CONFLICT (name) DO UPDATE SET host = EXCLUDED.host, port = EXCLUDED.port,
             admin_user = EXCLUDED.admin_user, admin_password = EXCLUDED.admin_password,
             admin_database = EXCLUDED.admin_database, sslmode = EXCLUDED.sslmode,
             sslrootcert = EXCLUDED.sslrootcert, max_connections = EXCLUDED.max_connections,
             require_auth = EXCLUDED.require_auth",
        &[
            &u.name,
            &u.host,
            &i32::from(u.port),
            &u.admin_user,
            &u.admin_password,
            &u.admin_database,
            &u.sslmode,
            &u.sslrootcert,
            &u.max_connections,
            &u.require_auth,
        ],
    )
    .await
    .map(drop)
}

/// An upstream as `upstream list` shows it (no secrets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamRow {
    pub name: String,
    pub host: String,
    pub port: i32,
    pub sslmode: String,
    pub admin_user: Option<String>,
    pub max_connections: i32,
}

/// Every upstream, by name.
pub async fn upstreams(db: &Client) -> Result<Vec<UpstreamRow>, tokio_postgres::Error> {
    let rows = db
        .query("SELECT name, host, port, sslmode, admin_user, max_connections FROM pgtenant.upstreams ORDER BY name", &[])
        .await?;
    Ok(rows
        .iter()
        .map(|r| UpstreamRow {
            name: r.get(0),
            host: r.get(1),
            port: r.get(2),
            sslmode: r.get(3),
            admin_user: r.get(4),
            max_connections: r.get(5),
        })
        .collect())
}

/// An upstream with its administrator login, the password revealed with `keys`.
#[derive(Debug, Clone)]
pub struct UpstreamAdmin {
    pub addr: UpstreamAddr,
    pub require_auth: Option<RequireAuth>,
    pub admin_user: Option<String>,
    pub admin_password: Option<String>,
    pub admin_database: String,
}

/// Upstream `name` with its administrator login, if the catalog has it.
pub async fn upstream_admin(
    db: &Client,
    name: &str,
    keys: Option<&Keys>,
) -> Result<Option<UpstreamAdmin>, StoreError> {
    let Some(row) = db
        .query_opt(
            "SELECT host, port, sslmode, sslrootcert, admin_user, admin_password, admin_database, require_auth
               FROM pgtenant.upstreams WHERE name = $1",
            &[&name],
        )
        .await?
    else {
        return Ok(None);
    };
    let stored: Option<String> = row.get(5);
    let admin_password =
        stored.map(|s| secrets::reveal(keys, &s).map(|(p, _)| p)).transpose().map_err(|e| {
            StoreError::Secret { what: format!("upstream {name:?}, the admin password"), why: e.to_string() }
        })?;
    let (addr, require_auth) = upstream_target(&row, [0, 1, 2, 3, 7]);
    Ok(Some(UpstreamAdmin {
        addr,
        require_auth,
        admin_user: row.get(4),
        admin_password,
        admin_database: row.get(6),
    }))
}
