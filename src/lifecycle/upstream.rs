//! Administrator connections to an upstream server, for creating and dropping tenant
//! databases, schemas and roles and for running migrations. They use the same socket code as
//! the data path (TCP with the upstream's sslmode, or a Unix socket), so an upstream
//! reachable by the proxy is reachable here.

use std::time::Duration;

use tokio_postgres::{Client, NoTls};

use super::{db_error, LifecycleError};
use crate::catalog::secrets::Keys;
use crate::pool::{SslMode, UpstreamAddr, UpstreamTls};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// An upstream as the catalog's `upstreams` row describes it.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub name: String,
    pub addr: UpstreamAddr,
    pub admin_user: String,
    pub admin_password: Option<String>,
    pub admin_database: String,
}

impl Upstream {
    /// Reads upstream `name` from the control database.
    pub async fn load(control: &Client, name: &str, keys: Option<&Keys>) -> Result<Upstream, LifecycleError> {
        let row = control
            .query_opt(
                "SELECT host, port, sslmode, sslrootcert, admin_user, admin_password, admin_database
                   FROM pgtenant.upstreams WHERE name = $1",
                &[&name],
            )
            .await
            .map_err(|e| LifecycleError::Catalog(super::db_text(&e)))?
            .ok_or_else(|| LifecycleError::Invalid(format!("no upstream named {name:?} in the catalog")))?;
        let admin_user: Option<String> = row.get(4);
        let admin_user = admin_user.ok_or_else(|| {
            LifecycleError::Invalid(format!(
                "upstream {name:?} has no admin_user: pgtenant needs an administrator login there \
                 (pgtenant upstream add --admin-user …)"
            ))
        })?;
        let stored: Option<String> = row.get(5);
        let admin_password = stored
            .map(|s| crate::catalog::secrets::reveal(keys, &s).map(|(p, _)| p))
            .transpose()
            .map_err(|e| LifecycleError::Invalid(format!("upstream {name:?}, the admin password: {e}")))?;
        let port = u16::try_from(row.get::<_, i32>(1)).unwrap_or(5432);
        let tls = UpstreamTls {
            mode: SslMode::parse(row.get(2)).unwrap_or_default(),
            root_cert: row.get::<_, Option<String>>(3).map(|p| p.as_str().into()),
        };
        Ok(Upstream {
            name: name.to_owned(),
            addr: UpstreamAddr::with_tls(row.get(0), port, tls),
            admin_user,
            admin_password,
            admin_database: row.get(6),
        })
    }

    /// The same server under another login (a tenant's own role).
    pub fn login_as(&self, user: &str, password: Option<String>) -> Upstream {
        Upstream { admin_user: user.to_owned(), admin_password: password, ..self.clone() }
    }

    /// A session on `database` (as the administrator, unless made by `login_as`).
    pub async fn connect(&self, database: &str) -> Result<Client, LifecycleError> {
        let unreachable = |what: String| {
            LifecycleError::Upstream(format!("upstream {} ({}): {what}", self.name, self.addr))
        };
        let connect = async {
            let stream = self.addr.connect().await.map_err(|e| unreachable(e.to_string()))?;
            let mut config = tokio_postgres::Config::new();
            config
                .user(&self.admin_user)
                .dbname(database)
                .application_name("pgtenant lifecycle")
                .ssl_mode(tokio_postgres::config::SslMode::Disable);
            if let Some(p) = &self.admin_password {
                config.password(p);
            }
            let (client, conn) = config.connect_raw(stream, NoTls).await.map_err(|e| {
                LifecycleError::Upstream(format!(
                    "upstream {} ({}), database {database:?}: {}",
                    self.name,
                    self.addr,
                    super::db_text(&e)
                ))
            })?;
            tokio::spawn(conn);
            Ok(client)
        };
        tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| unreachable(format!("no answer within {CONNECT_TIMEOUT:?}")))?
    }

    /// Runs `sql` (one utility statement, which may not run in a transaction block) on the
    /// administrator database.
    pub async fn admin(&self, sql: &str) -> Result<(), LifecycleError> {
        let db = self.connect(&self.admin_database).await?;
        db.batch_execute(sql).await.map_err(|e| db_error(sql_head(sql), &e))
    }
}

/// The first words of a statement, for error messages that must not echo passwords.
pub fn sql_head(sql: &str) -> &str {
    let end = sql.char_indices().filter(|(_, c)| c.is_whitespace()).nth(2).map_or(sql.len(), |(i, _)| i);
    &sql[..end]
}
