//! A control database ready for the tenant lifecycle: its upstream has administrator
//! credentials, there is a migrations and a seeds directory, and a second server can join.

use pgtenant::config::Config;
use pgtenant::lifecycle::Lifecycle;
use tokio_postgres::Client;

use super::{config, control_db};

/// A control database whose upstream `local` has administrator credentials, and a
/// migrations directory.
pub struct Setup {
    pub cfg: Config,
    pub control: Client,
    pub dir: tempfile::TempDir,
}

impl Setup {
    pub async fn new(migrations: &[(&str, &str)]) -> Setup {
        let mut cfg = config(Vec::new());
        let control = control_db(&mut cfg).await;
        control
            .execute(
                "UPDATE pgtenant.upstreams SET admin_user = 'postgres', admin_password = $1",
                &[&pgtenant::embedded::SUPERUSER_PASSWORD],
            )
            .await
            .expect("admin credentials");
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("migrations")).expect("mkdir");
        std::fs::create_dir(dir.path().join("seeds")).expect("mkdir");
        for (name, sql) in migrations {
            std::fs::write(dir.path().join("migrations").join(name), sql).expect("write migration");
        }
        cfg.lifecycle.migrations = dir.path().join("migrations").display().to_string();
        cfg.lifecycle.seeds = dir.path().join("seeds").display().to_string();
        Setup { cfg, control, dir }
    }

    pub fn migration(&self, name: &str, sql: &str) {
        std::fs::write(self.dir.path().join("migrations").join(name), sql).expect("write migration");
    }

    pub fn remove_migration(&self, name: &str) {
        std::fs::remove_file(self.dir.path().join("migrations").join(name)).expect("remove migration");
    }

    pub fn seed(&self, name: &str, sql: &str) {
        std::fs::write(self.dir.path().join("seeds").join(name), sql).expect("write seed");
    }

    pub fn lifecycle(&self) -> Lifecycle {
        Lifecycle::from_config(&self.cfg).expect("lifecycle")
    }
}

/// A second server: its own throwaway cluster, registered in `control` as upstream `name`
/// with administrator credentials.
pub async fn second_upstream(control: &Client, name: &str) -> pgtenant::embedded::Cluster {
    let other = tokio::task::spawn_blocking(pgtenant::embedded::Cluster::start)
        .await
        .expect("join")
        .expect("second cluster");
    control
        .execute(
            "INSERT INTO pgtenant.upstreams (name, host, port, admin_user, admin_password)
             VALUES ($1, '127.0.0.1', $2, 'postgres', $3)",
            &[&name, &i32::from(other.port), &pgtenant::embedded::SUPERUSER_PASSWORD],
        )
        .await
        .expect("second upstream");
    other
}
