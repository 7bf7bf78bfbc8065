//! Two tenants behind one login role, each seeing only its own rows: the fixture of every
//! test about what one tenant's session may and may not reach of another's.

use pgtenant::config::TenantConfig;
use pgtenant::model::{Isolation, PoolMode};

use super::{admin, cluster, connect_str, unique};

/// What the pair may do besides reading its `items`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// SELECT on `items`.
    Read,
    /// Also INSERT and UPDATE on `items`, a table `t (id int, owner text)` for COPY, a
    /// sequence `a_seq`, and CREATE in the tenant's schema.
    Write,
}

/// Two tenants sharing one login role in `mode`, each with `items` (three rows whose owner is
/// the tenant id), in transaction mode with a pool of `pool_size`.
/// Database isolation: one database each; schema: one schema each in a shared database;
/// shared: one table with row-level security on `pgtenant.tenant_id`.
pub async fn tenant_pair(mode: Isolation, access: Access, pool_size: usize) -> (TenantConfig, TenantConfig) {
    let role = unique("pairrole");
    let password = format!("pw-{role}");
    let admin = admin("postgres").await;
    admin.batch_execute(&format!("CREATE ROLE {role} LOGIN PASSWORD '{password}'")).await.expect("role");
    let (a, b) = (unique("paira"), unique("pairb"));
    let write = access == Access::Write;
    // The rest of the namespace a tenant writes to, `q` being its qualifier ("" or "\"id\".").
    let writable = |q: &str| {
        format!(
            "CREATE TABLE {q}t (id int, owner text);
             CREATE SEQUENCE {q}a_seq;
             GRANT INSERT, UPDATE ON {q}items, {q}t TO {role};
             GRANT SELECT ON {q}t TO {role};
             GRANT USAGE, SELECT, UPDATE ON SEQUENCE {q}a_seq TO {role};"
        )
    };
    let shared_db = match mode {
        Isolation::Database => None,
        Isolation::Schema | Isolation::Shared => {
            let dbname = unique("pairdb");
            admin.batch_execute(&format!("CREATE DATABASE {dbname}")).await.expect("db");
            Some(dbname)
        }
    };
    match mode {
        Isolation::Database => {
            for id in [&a, &b] {
                admin.batch_execute(&format!("CREATE DATABASE {id}")).await.expect("db");
                let db = connect_str(&cluster().superuser_conninfo(id)).await;
                let mut sql = format!(
                    "CREATE TABLE items (owner text); INSERT INTO items SELECT '{id}' FROM generate_series(1, 3);
                     GRANT SELECT ON items TO {role};"
                );
                if write {
                    sql += &writable("");
                    sql += &format!("GRANT CREATE, USAGE ON SCHEMA public TO {role};");
                }
                db.batch_execute(&sql).await.expect("items");
            }
        }
        Isolation::Schema => {
            let db = connect_str(&cluster().superuser_conninfo(shared_db.as_deref().expect("db"))).await;
            for id in [&a, &b] {
                let q = format!("\"{id}\".");
                let mut sql = format!(
                    "CREATE SCHEMA \"{id}\"; CREATE TABLE {q}items (owner text);
                     INSERT INTO {q}items SELECT '{id}' FROM generate_series(1, 3);
                     GRANT USAGE ON SCHEMA \"{id}\" TO {role}; GRANT SELECT ON {q}items TO {role};"
                );
                if write {
                    sql += &writable(&q);
                    sql += &format!("GRANT CREATE ON SCHEMA \"{id}\" TO {role};");
                }
                db.batch_execute(&sql).await.expect("schema");
            }
        }
        Isolation::Shared => {
            let db = connect_str(&cluster().superuser_conninfo(shared_db.as_deref().expect("db"))).await;
            let mut sql = format!(
                "CREATE TABLE items (tenant_id text NOT NULL, owner text NOT NULL);
                 INSERT INTO items SELECT '{a}', '{a}' FROM generate_series(1, 3);
                 INSERT INTO items SELECT '{b}', '{b}' FROM generate_series(1, 3);
                 ALTER TABLE items ENABLE ROW LEVEL SECURITY;
                 CREATE POLICY tenant_rows ON items USING (tenant_id = current_setting('pgtenant.tenant_id', true));
                 GRANT SELECT ON items TO {role};"
            );
            if write {
                sql += &writable("");
                sql += &format!("GRANT CREATE, USAGE ON SCHEMA public TO {role};");
            }
            db.batch_execute(&sql).await.expect("shared table");
        }
    }
    let tenant = |id: &str| {
        let database = shared_db.as_deref().unwrap_or(id);
        let mut t = TenantConfig::new(id, "local", database, &role, Some(&password));
        t.isolation = mode;
        t.pool_mode = Some(PoolMode::Transaction);
        t.pool_size = Some(pool_size);
        t
    };
    (tenant(&a), tenant(&b))
}
