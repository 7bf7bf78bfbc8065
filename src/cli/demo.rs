//! `pgtenant demo`: a throwaway PostgreSQL, a control database in it, three tenants created
//! through the lifecycle operations (two databases, one schema), and the proxy in front.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::config::{Config, ProxyConfig};
use crate::embedded::{Cluster, SUPERUSER_PASSWORD};
use crate::lifecycle::{CreateTenant, Lifecycle};
use crate::model::{Isolation, PoolMode};
use crate::proxy::Proxy;

/// The demo tenants: (id, isolation, pool mode, pool size).
const DEMO_TENANTS: [(&str, Isolation, PoolMode, u32); 3] = [
    ("acme", Isolation::Database, PoolMode::Transaction, 10),
    ("globex", Isolation::Database, PoolMode::Session, 70),
    ("initech", Isolation::Schema, PoolMode::Transaction, 10),
];

/// The migrations and seed every demo tenant gets (written to a directory the demo owns, as
/// `[lifecycle] migrations` / `seeds` would name).
const MIGRATIONS: [(&str, &str); 2] = [
    (
        "V001__create_products.sql",
        "CREATE TABLE products (id serial PRIMARY KEY, name text NOT NULL, price numeric(10,2) NOT NULL);\n",
    ),
    ("V002__products_sku.sql", "ALTER TABLE products ADD COLUMN sku text;\n"),
];
const SEED: &str = "INSERT INTO products (name, price, sku)
SELECT current_setting('pgtenant.tenant_id') || ' ' || n, p, upper(left(n, 3)) || '-1'
  FROM (VALUES ('widget', 9.99), ('gadget', 24.50), ('gizmo', 3.75)) AS v (n, p);
";

pub async fn demo(listen: SocketAddr, workers: usize) -> anyhow::Result<()> {
    eprintln!("starting a throwaway PostgreSQL …");
    let cluster = tokio::task::spawn_blocking(Cluster::start).await??;
    let (admin, conn) =
        tokio_postgres::connect(&cluster.superuser_conninfo("postgres"), tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    // The control database lives in the same throwaway cluster.
    admin.batch_execute("CREATE DATABASE pgtenant").await?;
    let catalog_url = cluster.superuser_conninfo("pgtenant");
    let mut control =
        crate::catalog::link::ControlLink::parse(&catalog_url).map_err(anyhow::Error::msg)?.open().await?;
    crate::catalog::migrations::migrate(&mut control).await?;

    // Passwords in the catalog are stored encrypted, under a master key kept next to the
    // cluster; the migrations and seed files sit there too.
    let dir = tempfile::tempdir()?;
    let key_file = dir.path().join("master.keys");
    std::fs::write(&key_file, crate::catalog::secrets::Keys::generate_line("demo"))?;
    let keys = crate::catalog::secrets::load(&key_file.display().to_string())
        .map_err(anyhow::Error::msg)?
        .ok_or_else(|| anyhow::anyhow!("no demo key"))?;
    let migrations = dir.path().join("migrations");
    let seeds = dir.path().join("seeds");
    std::fs::create_dir(&migrations)?;
    std::fs::create_dir(&seeds)?;
    for (name, sql) in MIGRATIONS {
        std::fs::write(migrations.join(name), sql)?;
    }
    std::fs::write(seeds.join("01_products.sql"), SEED)?;
    let admin_password = keys.encrypt(SUPERUSER_PASSWORD);
    let upstream = crate::catalog::store::NewUpstream {
        name: "local",
        host: "127.0.0.1",
        port: cluster.port,
        admin_user: Some("postgres"),
        admin_password: Some(&admin_password),
        admin_database: "postgres",
        sslmode: "prefer",
        sslrootcert: None,
        max_connections: 200,
        require_auth: None,
    };
    crate::catalog::store::save_upstream(&control, &upstream).await?;

    let mut config = Config::parse("")?;
    config.catalog.key_file = key_file.display().to_string();
    config.catalog.url = catalog_url.clone();
    config.lifecycle.migrations = migrations.display().to_string();
    config.lifecycle.seeds = seeds.display().to_string();
    config.proxy = ProxyConfig { listen, workers, ..ProxyConfig::default() };
    let lifecycle = Lifecycle::from_config(&config)?;
    for (id, isolation, mode, size) in DEMO_TENANTS {
        lifecycle
            .create(CreateTenant {
                id: id.to_owned(),
                isolation: Some(isolation),
                pool_mode: Some(mode),
                pool_size: Some(size),
                ..CreateTenant::default()
            })
            .await?;
    }

    // The HTTP admin API next to the proxy (port + 1 when free, else any), with a token made
    // for this run.
    let admin_listener =
        match tokio::net::TcpListener::bind((listen.ip(), listen.port().wrapping_add(1))).await {
            Ok(l) => l,
            Err(_) => tokio::net::TcpListener::bind((listen.ip(), 0)).await?,
        };
    let admin_addr = admin_listener.local_addr()?;
    let token = crate::admin::new_token();
    config.admin.token_sha256 = vec![crate::admin::token_sha256(&token)];

    let listener = crate::listener::bind(listen, config.proxy.listen_backlog)?;
    let proxy: Arc<Proxy> = Proxy::start(config).await?;
    let admin_state = crate::admin::http::AdminState::new(proxy.clone(), &proxy.config())?;
    let admin_stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(crate::admin::http::serve(admin_listener, admin_state, admin_stop.clone()));
    let port = listen.port();
    let host = listen.ip();
    let dir_path = dir.path().display();
    let exe = std::env::current_exe().map_or_else(|_| "pgtenant".to_owned(), |p| p.display().to_string());
    println!();
    println!(
        "pgtenant demo is running: PostgreSQL {} on port {}, pgtenant on {listen}",
        cluster.bindir.display(),
        cluster.port
    );
    println!("(superuser password on the PostgreSQL port: {SUPERUSER_PASSWORD})");
    println!();
    for (id, isolation, mode, size) in DEMO_TENANTS {
        println!(
            "  tenant {id:<8} postgresql://app.{id}@{host}:{port}/{id}   {} isolation, pool mode {} (size {size})",
            isolation.as_str(),
            mode.as_str()
        );
    }
    println!();
    println!("try:");
    println!("  psql \"postgresql://app.acme@{host}:{port}/acme\" -c 'SELECT * FROM products'");
    println!("  pgbench -i postgresql://app.acme@{host}:{port}/acme");
    println!("  pgbench -c 16 -j 2 -T 10 -S postgresql://app.acme@{host}:{port}/acme");
    println!("  pgbench -c 16 -j 2 -T 10 -M prepared postgresql://app.globex@{host}:{port}/globex   # after pgbench -i on globex");
    println!();
    println!("tenant lifecycle (the control database is {catalog_url}):");
    println!("  export PGTENANT_CATALOG_URL=\"{catalog_url}\" PGTENANT_MASTER_KEYS=\"$(cat {dir_path}/master.keys)\"");
    println!("  export PGTENANT_MIGRATIONS={dir_path}/migrations PGTENANT_SEEDS={dir_path}/seeds");
    println!("  {exe} tenant list");
    println!("  {exe} tenant create hooli --isolation schema && psql \"postgresql://app.hooli@{host}:{port}/hooli\" -c 'TABLE products'");
    println!("  {exe} tenant suspend acme      # new connections get 57P03, open ones close");
    println!("  echo 'CREATE INDEX ON products (sku);' > {dir_path}/migrations/V003__sku_index.sql && {exe} migrate --all");
    println!("  {exe} tenant status");
    println!();
    println!("the HTTP admin API (OpenAPI document at http://{admin_addr}/openapi.json):");
    println!("  export TOKEN={token}");
    println!("  curl -s -H \"Authorization: Bearer $TOKEN\" http://{admin_addr}/tenants");
    println!(
        "  curl -s -H \"Authorization: Bearer $TOKEN\" -H 'Content-Type: application/json' \\\n       -d '{{\"id\": \"vandelay\", \"isolation\": \"schema\"}}' http://{admin_addr}/tenants"
    );
    println!("  curl -s -H \"Authorization: Bearer $TOKEN\" http://{admin_addr}/tenants/acme/health");
    println!();
    println!("Ctrl-C stops pgtenant and removes the cluster.");
    let drain = proxy.shutdown.drain.clone();
    tokio::spawn(async move {
        crate::server::wait_for_signal().await;
        drain.cancel();
    });
    proxy.serve(listener).await?;
    admin_stop.cancel();
    drop(admin);
    drop(control);
    tokio::task::spawn_blocking(move || drop(cluster)).await?;
    drop(dir);
    eprintln!("demo stopped; the throwaway cluster is gone");
    Ok(())
}
