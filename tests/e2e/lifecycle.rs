//! Tenant lifecycle end to end: create in each isolation mode and connect through the proxy
//! at once, failed creates that leave nothing behind, migrations across 50 tenants with one
//! failing (through the `pgtenant migrate` binary), archive / restore, hard delete.

use std::path::Path;
use std::time::Duration;

use pgtenant::lifecycle::{CreateTenant, LifecycleError, MigrateOptions, MigrationOutcome, NewUser};
use pgtenant::model::{Isolation, LoginKind, TenantStatus};
use tokio_postgres::Client;

use crate::support::*;

const PRODUCTS: &str = "CREATE TABLE products (
    id serial PRIMARY KEY,
    tenant_id text DEFAULT current_setting('pgtenant.tenant_id', true),
    name text NOT NULL
);";

fn create(id: &str, isolation: Isolation) -> CreateTenant {
    CreateTenant { id: id.to_owned(), isolation: Some(isolation), ..CreateTenant::default() }
}

fn names(rows: &[tokio_postgres::Row]) -> Vec<String> {
    rows.iter().map(|r| r.get(0)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_in_each_mode_then_connect_at_once() {
    let s = Setup::new(&[
        ("V001__products.sql", PRODUCTS),
        ("V002__sku.sql", "ALTER TABLE products ADD COLUMN sku text;"),
    ])
    .await;
    s.seed("01_products.sql", "INSERT INTO products (name) VALUES ('widget'), ('gadget');");
    let lc = s.lifecycle();
    let (db_t, sch_a, sch_b, sh_a, sh_b) =
        (unique("lcdb"), unique("lcscha"), unique("lcschb"), unique("lcsha"), unique("lcshb"));
    let schema_db = unique("lcschemas");
    let shared_db = unique("lcshared");
    let shared_role = unique("lcsharedrole");
    admin("postgres")
        .await
        .batch_execute(&format!("CREATE ROLE {shared_role} LOGIN PASSWORD 'pw-{shared_role}'"))
        .await
        .expect("shared role");

    let t = lc.create(create(&db_t, Isolation::Database)).await.expect("database tenant");
    assert_eq!((t.status.as_str(), t.login_kind.as_str()), ("active", "per_tenant"));
    for id in [&sch_a, &sch_b] {
        let req = CreateTenant { database: Some(schema_db.clone()), ..create(id, Isolation::Schema) };
        lc.create(req).await.expect("schema tenant");
    }
    for id in [&sh_a, &sh_b] {
        let req = CreateTenant {
            database: Some(shared_db.clone()),
            login: Some(LoginKind::Shared),
            login_role: Some(shared_role.clone()),
            login_password: Some(format!("pw-{shared_role}")),
            ..create(id, Isolation::Shared)
        };
        lc.create(req).await.expect("shared tenant");
    }
    // A second create of an existing tenant is refused.
    let again = lc.create(create(&db_t, Isolation::Database)).await;
    assert!(matches!(again, Err(LifecycleError::Conflict(_))), "{again:?}");

    let (h, _catalog) = start_control(s.cfg.clone()).await;
    for id in [&db_t, &sch_a, &sch_b] {
        let c = h.client(id).await;
        let rows = c.query("SELECT name FROM products ORDER BY id", &[]).await.expect("products");
        assert_eq!(names(&rows), ["widget", "gadget"], "tenant {id}");
        let v: Vec<i32> = c
            .query("SELECT version FROM pgtenant_migrations ORDER BY 1", &[])
            .await
            .expect("history")
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(v, [1, 2], "tenant {id}");
        // The migrations ran as the tenant's own role: it owns its table.
        let owner: String = c
            .query_one("SELECT tableowner::text FROM pg_tables WHERE tablename = 'products' AND schemaname = current_schema()", &[])
            .await
            .expect("owner")
            .get(0);
        assert_eq!(&owner, id);
    }
    // Per-tenant schema roles cannot read another tenant's schema, even by qualified name.
    let a = h.client(&sch_a).await;
    let err = a.query(&format!("SELECT * FROM {sch_b}.products"), &[]).await.expect_err("cross-schema read");
    assert_eq!(code(&err), "42501", "{err}");
    // A client asking for another search_path still gets its own schema (the proxy sets it).
    let other = connect_str(&format!(
        "host=127.0.0.1 port={} user=app.{sch_a} dbname={sch_a} options='-c search_path={sch_b}'",
        h.addr.port()
    ))
    .await;
    let schema: String = other.query_one("SELECT current_schema()::text", &[]).await.expect("schema").get(0);
    assert_eq!(schema, sch_a);

    // Shared mode: one history for the database, each tenant's seed rows tagged with its id.
    for id in [&sh_a, &sh_b] {
        let c = h.client(id).await;
        let rows = c
            .query("SELECT name FROM products WHERE tenant_id = current_setting('pgtenant.tenant_id') ORDER BY id", &[])
            .await
            .expect("shared products");
        assert_eq!(names(&rows), ["widget", "gadget"], "tenant {id}");
    }
    let history: i64 = admin(&shared_db)
        .await
        .query_one("SELECT count(*) FROM public.pgtenant_migrations", &[])
        .await
        .expect("shared history")
        .get(0);
    assert_eq!(history, 2);
    let created: i64 = s
        .control
        .query_one("SELECT count(*) FROM pgtenant.events WHERE kind = 'created'", &[])
        .await
        .expect("events")
        .get(0);
    assert_eq!(created, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_create_leaves_nothing_behind() {
    let s =
        Setup::new(&[("V001__products.sql", PRODUCTS), ("V002__broken.sql", "SELECT no_such_function();")])
            .await;
    let lc = s.lifecycle();
    let (db_t, sch_t) = (unique("lcfaildb"), unique("lcfailsch"));
    let schema_db = unique("lcfailschemas");

    let err = lc.create(create(&db_t, Isolation::Database)).await.expect_err("migration fails");
    assert!(matches!(err, LifecycleError::Failed(_)), "{err:?}");
    assert!(err.to_string().contains("V002__broken.sql") && err.to_string().contains("42883"), "{err}");
    assert!(!database_exists(&db_t).await, "database left behind");
    assert!(!role_exists(&db_t).await, "role left behind");

    let req = CreateTenant { database: Some(schema_db.clone()), ..create(&sch_t, Isolation::Schema) };
    lc.create(req.clone()).await.expect_err("migration fails");
    assert!(!schema_exists(&schema_db, &sch_t).await, "schema left behind");
    assert!(!role_exists(&sch_t).await, "role left behind");

    // Requests that cannot be honoured are refused before anything is made.
    let bad = [
        CreateTenant { login: Some(LoginKind::PerTenant), ..create(&unique("lcbad"), Isolation::Shared) },
        CreateTenant { database: Some("archived_x".into()), ..create(&unique("lcbad"), Isolation::Database) },
        CreateTenant { database: Some("Bad Name".into()), ..create(&unique("lcbad"), Isolation::Database) },
        CreateTenant { id: "Bad..Id".into(), ..CreateTenant::default() },
    ];
    for req in bad {
        let err = lc.create(req.clone()).await.expect_err("refused");
        assert!(matches!(err, LifecycleError::Invalid(_)), "{req:?}: {err:?}");
        assert!(matches!(
            lc.get(&req.id).await,
            Err(LifecycleError::NotFound(_) | LifecycleError::Invalid(_))
        ));
    }

    // The tenant stays pending with the reason, and cannot be reached.
    let info = lc.get(&db_t).await.expect("pending row");
    assert_eq!(info.status, TenantStatus::Pending);
    assert!(info.last_error.as_deref().is_some_and(|e| e.contains("no_such_function")), "{info:?}");

    // Fixed, the same create finishes.
    s.migration("V002__broken.sql", "ALTER TABLE products ADD COLUMN sku text;");
    let lc = s.lifecycle();
    assert_eq!(
        lc.create(create(&db_t, Isolation::Database)).await.expect("retry").status,
        TenantStatus::Active
    );
    assert_eq!(lc.create(req).await.expect("retry").status, TenantStatus::Active);
    assert!(database_exists(&db_t).await && schema_exists(&schema_db, &sch_t).await);

    // A database that existed before is never dropped by a failed create.
    let taken = unique("lctaken");
    admin("postgres").await.batch_execute(&format!("CREATE DATABASE {taken}")).await.expect("db");
    let req =
        CreateTenant { database: Some(taken.clone()), ..create(&unique("lctaken"), Isolation::Database) };
    let err = lc.create(req.clone()).await.expect_err("database exists");
    assert!(err.to_string().contains("42P04"), "{err}");
    assert!(database_exists(&taken).await, "pre-existing database dropped");
    assert!(!role_exists(&req.id).await, "role left behind");
    // Delete removes the pending row.
    lc.delete(&req.id, true, false).await.expect("delete pending");
    assert!(matches!(lc.get(&req.id).await, Err(LifecycleError::NotFound(_))));
    assert!(database_exists(&taken).await);
}

/// Runs the `pgtenant` binary over the config file `config`; returns (exit code, stdout, stderr).
async fn pgtenant_at(args: &[&str], config: &Path) -> (i32, String, String) {
    let config = config.to_str().expect("a UTF-8 temporary path");
    pgtenant(&[args, &["--config", config]].concat(), "").await
}

fn write_config(s: &Setup) -> std::path::PathBuf {
    let path = s.dir.path().join("pgtenant.toml");
    std::fs::write(
        &path,
        format!(
            "[catalog]\nurl = {:?}\n[lifecycle]\nmigrations = {:?}\nseeds = {:?}\n",
            s.cfg.catalog.url, s.cfg.lifecycle.migrations, s.cfg.lifecycle.seeds
        ),
    )
    .expect("write config");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_fifty_tenants_with_one_failing() {
    let s = Setup::new(&[("V001__products.sql", PRODUCTS)]).await;
    let lc = s.lifecycle();
    let db = unique("lcfifty");
    let prefix = unique("m50x");
    let ids: Vec<String> = (0..50).map(|i| format!("{prefix}t{i:02}")).collect();
    for id in &ids {
        let req = CreateTenant { database: Some(db.clone()), ..create(id, Isolation::Schema) };
        lc.create(req).await.expect("create");
    }
    // The tenant that will fail already has the column the migration adds.
    let bad = &ids[17];
    admin(&db)
        .await
        .batch_execute(&format!("ALTER TABLE {bad}.products ADD COLUMN sku int"))
        .await
        .expect("alter");
    s.migration(
        "V002__sku.sql",
        "ALTER TABLE products ADD COLUMN sku text;\nCREATE INDEX ON products (sku);",
    );
    let config = write_config(&s);

    let (code, out, err) = pgtenant_at(&["tenant", "status", "--json"], &config).await;
    assert_eq!(code, 0, "{err}");
    let status: Vec<pgtenant::lifecycle::MigrationStatus> = serde_json::from_str(&out).expect("status json");
    assert_eq!(status.len(), 50);
    assert!(status.iter().all(|t| t.behind && t.version == Some(1) && t.latest == Some(2)), "{out}");

    let (code, out, err) = pgtenant_at(&["migrate", "--all", "--parallel", "4"], &config).await;
    assert_ne!(code, 0, "a failed tenant must fail the run:\n{out}\n{err}");
    assert!(out.contains("50 tenants: 49 migrated, 0 already current, 1 failed"), "{out}");
    let line = out.lines().find(|l| l.starts_with(bad.as_str())).expect("the failed tenant's line");
    assert!(line.contains("failed") && line.contains("42701") && line.contains("V002__sku.sql"), "{line}");
    // Progress lines on a non-terminal stderr, one per tenant.
    assert_eq!(err.lines().filter(|l| l.starts_with('[')).count(), 50, "{err}");
    let versions = |db: String, ids: Vec<String>| async move {
        let a = admin(&db).await;
        let mut out = Vec::new();
        for id in ids {
            let v: Option<i32> = a
                .query_one(&format!("SELECT max(version) FROM {id}.pgtenant_migrations"), &[])
                .await
                .expect("history")
                .get(0);
            out.push(v);
        }
        out
    };
    let after = versions(db.clone(), ids.clone()).await;
    for (id, v) in ids.iter().zip(&after) {
        assert_eq!(*v, Some(if id == bad { 1 } else { 2 }), "tenant {id}");
    }

    // Fixed, the re-run migrates only that tenant.
    admin(&db)
        .await
        .batch_execute(&format!("ALTER TABLE {bad}.products DROP COLUMN sku"))
        .await
        .expect("fix");
    let (code, out, err) = pgtenant_at(&["migrate", "--all", "--parallel", "4", "--json"], &config).await;
    assert_eq!(code, 0, "{out}\n{err}");
    let results: Vec<pgtenant::lifecycle::TenantMigration> = serde_json::from_str(&out).expect("json");
    let applied: Vec<&str> = results
        .iter()
        .filter(|r| matches!(r.outcome, MigrationOutcome::Applied { .. }))
        .map(|r| r.tenant.as_str())
        .collect();
    assert_eq!(applied, [bad.as_str()]);
    assert_eq!(results.iter().filter(|r| r.outcome == MigrationOutcome::Current).count(), 49);
    assert!(versions(db, ids).await.iter().all(|v| *v == Some(2)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_are_checked_locked_and_stoppable() {
    let s = Setup::new(&[("V001__products.sql", PRODUCTS)]).await;
    let lc = s.lifecycle();
    let db = unique("lcchk");
    let ids: Vec<String> = (0..3).map(|_| unique("lcchk")).collect();
    for id in &ids {
        lc.create(CreateTenant { database: Some(db.clone()), ..create(id, Isolation::Schema) })
            .await
            .expect("create");
    }
    // An edited applied migration is an error for every tenant that has it.
    s.migration("V001__products.sql", &format!("{PRODUCTS}\n-- edited"));
    let lc = s.lifecycle();
    // `tenant status` says so, not "current" (the version is the latest one).
    let st = lc.status(&ids).await.expect("status");
    assert!(
        st.iter().all(|t| !t.behind && t.version == Some(1) && t.changed == ["V001__products.sql"]),
        "{st:?}"
    );
    let args: Vec<&str> = ["tenant", "status"].into_iter().chain(ids.iter().map(String::as_str)).collect();
    let (code, out, err) = pgtenant_at(&args, &write_config(&s)).await;
    assert_eq!(code, 0, "{err}");
    let edited = out.lines().filter(|l| l.contains("changed after applied: V001__products.sql")).count();
    assert_eq!(edited, ids.len(), "{out}");
    assert!(!out.contains("current"), "{out}");
    let out = lc
        .migrate(&MigrateOptions { tenants: ids.clone(), ..Default::default() }, &|_, _, _| {})
        .await
        .expect("run");
    for r in &out {
        match &r.outcome {
            MigrationOutcome::Failed { error } => {
                assert!(error.contains("was changed after it was applied"), "{error}")
            }
            other => panic!("{}: {other:?}", r.tenant),
        }
    }
    s.migration("V001__products.sql", PRODUCTS);
    s.migration("V002__broken.sql", "SELECT 1/0;");
    s.migration(
        "V003__index.sql",
        "-- pgtenant:no-transaction\nCREATE INDEX CONCURRENTLY products_name ON products (name);\n\
         CREATE INDEX CONCURRENTLY products_id_name ON products (id, name);",
    );
    let lc = s.lifecycle();
    // --on-failure stop with one at a time: the first fails, the others are skipped.
    let opts =
        MigrateOptions { tenants: ids.clone(), parallel: 1, stop_on_failure: true, ..Default::default() };
    let out = lc.migrate(&opts, &|_, _, _| {}).await.expect("run");
    assert!(
        matches!(out[0].outcome, MigrationOutcome::Failed { ref error } if error.contains("22012")),
        "{out:?}"
    );
    assert!(out[1..].iter().all(|r| r.outcome == MigrationOutcome::Skipped), "{out:?}");

    // Dry run lists what would be applied and changes nothing.
    s.migration("V002__broken.sql", "SELECT 1;");
    let lc = s.lifecycle();
    let dry = MigrateOptions { tenants: ids.clone(), dry_run: true, ..Default::default() };
    let out = lc.migrate(&dry, &|_, _, _| {}).await.expect("dry run");
    assert!(out.iter().all(|r| r.outcome == MigrationOutcome::Applied { versions: vec![2, 3] }), "{out:?}");
    let st = lc.status(&ids).await.expect("status");
    assert!(st.iter().all(|t| t.version == Some(1) && t.behind));

    // A migrator holding a tenant's lock makes another wait, not collide.
    let holder = admin(&db).await;
    let history = format!("\"{}\".pgtenant_migrations", ids[0]);
    holder
        .execute("SELECT pg_advisory_lock(hashtext('pgtenant.migrate'), hashtext($1))", &[&history])
        .await
        .expect("lock");
    let opts = MigrateOptions { tenants: vec![ids[0].clone()], ..Default::default() };
    let lc2 = s.lifecycle();
    let run = tokio::spawn(async move { lc2.migrate(&opts, &|_, _, _| {}).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!run.is_finished(), "the second migrator must wait for the lock");
    holder
        .execute("SELECT pg_advisory_unlock(hashtext('pgtenant.migrate'), hashtext($1))", &[&history])
        .await
        .expect("unlock");
    let out = run.await.expect("join").expect("run");
    assert_eq!(out[0].outcome, MigrationOutcome::Applied { versions: vec![2, 3] });
    let index: Option<String> = admin(&db)
        .await
        .query_one("SELECT to_regclass($1)::text", &[&format!("\"{}\".products_name", ids[0])])
        .await
        .expect("index")
        .get(0);
    assert!(index.is_some(), "the no-transaction migration ran");
    let index: Option<String> = admin(&db)
        .await
        .query_one("SELECT to_regclass($1)::text", &[&format!("\"{}\".products_id_name", ids[0])])
        .await
        .expect("index")
        .get(0);
    assert!(index.is_some(), "its second statement ran too");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_cannot_borrow_the_migrators_privileges() {
    let s = Setup::new(&[("V001__products.sql", PRODUCTS)]).await;
    let (h, _catalog) = start_control(s.cfg.clone()).await;
    let lc = s.lifecycle();
    let id = unique("lcevil");
    lc.create(create(&id, Isolation::Database)).await.expect("create");
    // The tenant owns its history table: it plants a trigger that tries to make itself a
    // superuser when the next migration is recorded, and a view-like trap on reads.
    let c = h.client(&id).await;
    c.batch_execute(&format!(
        "CREATE FUNCTION grab() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN RESET ROLE; ALTER ROLE \"{id}\" SUPERUSER; RETURN NEW; END $$;
         CREATE TRIGGER grab BEFORE INSERT ON pgtenant_migrations FOR EACH ROW EXECUTE FUNCTION grab();"
    ))
    .await
    .expect("plant the trigger");
    s.migration("V002__sku.sql", "ALTER TABLE products ADD COLUMN sku text;");
    let lc = s.lifecycle();
    let out = lc
        .migrate(&MigrateOptions { tenants: vec![id.clone()], ..Default::default() }, &|_, _, _| {})
        .await
        .expect("run");
    match &out[0].outcome {
        MigrationOutcome::Failed { error } => assert!(error.contains("42501"), "{error}"),
        other => panic!("the trigger must fail as the tenant: {other:?}"),
    }
    let superuser: bool = admin("postgres")
        .await
        .query_one("SELECT rolsuper FROM pg_roles WHERE rolname = $1", &[&id])
        .await
        .expect("role")
        .get(0);
    assert!(!superuser, "the tenant became a superuser through the migrator");
    lc.status(std::slice::from_ref(&id)).await.expect("status reads the history as the tenant");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspend_archive_restore_and_hard_delete() {
    let s = Setup::new(&[("V001__products.sql", PRODUCTS)]).await;
    let (h, _catalog) = start_control(s.cfg.clone()).await;
    let lc = s.lifecycle().with_sessions(h.proxy.clone());
    let (db_t, sch_t) = (unique("lcarch"), unique("lcarchs"));
    let schema_db = unique("lcarchdb");
    lc.create(CreateTenant {
        user: Some(NewUser { name: "app".into(), password: "secret".into() }),
        ..create(&db_t, Isolation::Database)
    })
    .await
    .expect("create");
    lc.create(CreateTenant { database: Some(schema_db.clone()), ..create(&sch_t, Isolation::Schema) })
        .await
        .expect("create");
    for id in [&db_t, &sch_t] {
        let c = h.client(id).await;
        c.batch_execute("INSERT INTO products (name) VALUES ('kept')").await.expect("insert");
    }

    // Suspend: 57P03 for new clients; resume lets them back.
    lc.suspend(&db_t).await.expect("suspend");
    let refused = |id: String| {
        let conninfo = h.conninfo(&id);
        async move { tokio_postgres::connect(&conninfo, tokio_postgres::NoTls).await.err().map(|e| code(&e)) }
    };
    assert!(
        eventually(Duration::from_secs(3), || async {
            refused(db_t.clone()).await.as_deref() == Some("57P03")
        })
        .await
    );
    assert!(
        matches!(lc.suspend(&db_t).await, Ok(ref t) if t.status == TenantStatus::Suspended),
        "idempotent"
    );
    assert!(
        matches!(lc.resume(&sch_t).await, Ok(ref t) if t.status == TenantStatus::Active),
        "already active"
    );
    lc.resume(&db_t).await.expect("resume");
    assert!(eventually(Duration::from_secs(3), || async { refused(db_t.clone()).await.is_none() }).await);

    // Archive is refused while a client is connected, unless forced.
    let held = h.client(&sch_t).await;
    held.batch_execute("SELECT 1").await.expect("query");
    let err = lc.archive(&sch_t, false).await.expect_err("client connected");
    assert!(matches!(err, LifecycleError::Conflict(ref m) if m.contains("1 connected client")), "{err}");
    drop(held);
    assert!(eventually(Duration::from_secs(3), || async { h.proxy.tenant_clients(&sch_t) == 0 }).await);
    for id in [&db_t, &sch_t] {
        let t = lc.archive(id, false).await.expect("archive");
        assert_eq!(t.status, TenantStatus::Archived);
        assert!(
            eventually(Duration::from_secs(3), || async {
                refused(id.to_string()).await.as_deref() == Some("3D000")
            })
            .await
        );
    }
    assert!(database_exists(&format!("archived_{db_t}")).await && !database_exists(&db_t).await);
    assert!(schema_exists(&schema_db, &format!("archived_{sch_t}")).await);
    assert!(matches!(lc.resume(&db_t).await, Err(LifecycleError::Conflict(_))), "resume is not restore");
    // Migrations skip archived tenants unless named, and then say why.
    let out = lc
        .migrate(&MigrateOptions { tenants: vec![db_t.clone()], ..Default::default() }, &|_, _, _| {})
        .await
        .expect("run");
    assert!(matches!(out[0].outcome, MigrationOutcome::Failed { ref error } if error.contains("archived")));

    for id in [&db_t, &sch_t] {
        assert_eq!(lc.restore(id).await.expect("restore").status, TenantStatus::Active);
        assert!(
            eventually(Duration::from_secs(3), || async { refused(id.to_string()).await.is_none() }).await
        );
        let c = h.client(id).await;
        let rows = c.query("SELECT name FROM products", &[]).await.expect("data intact");
        assert_eq!(names(&rows), ["kept"], "tenant {id}");
    }

    // Soft delete keeps the data under deleted_…; restore brings it back.
    lc.delete(&sch_t, false, true).await.expect("soft delete");
    assert_eq!(lc.get(&sch_t).await.expect("row kept").status, TenantStatus::Deleted);
    assert!(schema_exists(&schema_db, &format!("deleted_{sch_t}")).await);
    lc.restore(&sch_t).await.expect("restore soft-deleted");

    // Hard delete leaves nothing: database / schema, role, credentials, catalog row.
    for id in [&db_t, &sch_t] {
        lc.delete(id, true, true).await.expect("hard delete");
        assert!(matches!(lc.get(id).await, Err(LifecycleError::NotFound(_))));
        assert!(!role_exists(id).await, "role of {id} left");
        assert!(
            eventually(Duration::from_secs(3), || async { refused(id.to_string()).await.is_some() }).await
        );
    }
    assert!(!database_exists(&db_t).await);
    assert!(!schema_exists(&schema_db, &sch_t).await);
    let users: i64 = s
        .control
        .query_one("SELECT count(*) FROM pgtenant.tenant_users WHERE tenant_id = $1", &[&db_t])
        .await
        .expect("users")
        .get(0);
    assert_eq!(users, 0);
    let kinds: Vec<String> = names(
        &s.control
            .query("SELECT kind FROM pgtenant.events WHERE tenant_id = $1 ORDER BY id", &[&db_t])
            .await
            .expect("events"),
    );
    assert_eq!(kinds, ["user_added", "created", "suspended", "resumed", "archived", "restored", "deleted"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_creates_lists_and_deletes() {
    let s = Setup::new(&[("V001__products.sql", PRODUCTS)]).await;
    let config = write_config(&s);
    let id = unique("lccli");
    let (code, out, err) =
        pgtenant_at(&["tenant", "create", &id, "--isolation", "database", "--json"], &config).await;
    assert_eq!(code, 0, "{err}");
    let t: pgtenant::lifecycle::TenantInfo = serde_json::from_str(&out).expect("json");
    assert_eq!((t.id.as_str(), t.status.as_str()), (id.as_str(), "active"));
    let (code, out, _) = pgtenant_at(&["tenant", "list"], &config).await;
    assert_eq!(code, 0);
    assert!(out.lines().next().is_some_and(|l| l.starts_with("ID") && l.contains("STATUS")), "{out}");
    assert!(out.lines().any(|l| l.starts_with(id.as_str()) && l.contains("active")), "{out}");
    let (code, _, err) = pgtenant_at(&["tenant", "suspend", &id], &config).await;
    assert_eq!(code, 0, "{err}");
    let (code, out, _) = pgtenant_at(&["tenant", "show", &id, "--json"], &config).await;
    assert_eq!(code, 0);
    assert!(out.contains("\"status\": \"suspended\""), "{out}");
    let (code, _, err) = pgtenant_at(&["tenant", "show", "no-such-tenant"], &config).await;
    assert_ne!(code, 0);
    assert!(err.contains("no tenant \"no-such-tenant\""), "{err}");
    let (code, _, err) = pgtenant_at(&["tenant", "delete", &id, "--hard"], &config).await;
    assert_eq!(code, 0, "{err}");
    assert!(!database_exists(&id).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_change_live_and_operations_take_turns() {
    let s = Setup::new(&[("V001__products.sql", PRODUCTS)]).await;
    let (h, _catalog) = start_control(s.cfg.clone()).await;
    let lc = s.lifecycle().with_sessions(h.proxy.clone());
    let id = unique("lclimit");
    lc.create(CreateTenant { max_clients: Some(2), ..create(&id, Isolation::Database) })
        .await
        .expect("create");
    let first = h.client(&id).await;
    first.batch_execute("SELECT 1").await.expect("query");
    assert_eq!(h.proxy.tenant_clients(&id), 1);

    // Lowering max_clients applies to the next login; the open session stays counted and
    // reachable (a suspend still closes it).
    let patch = pgtenant::lifecycle::UpdateTenant { max_clients: Some(1), ..Default::default() };
    assert_eq!(lc.update(&id, patch).await.expect("update").max_clients, Some(1));
    let md5 = pgtenant::lifecycle::UpdateTenant {
        auth: Some(pgtenant::model::AuthMethod::Md5),
        ..Default::default()
    };
    assert_eq!(lc.update(&id, md5).await.expect("md5 auth").auth, Some(pgtenant::model::AuthMethod::Md5));
    let trust = pgtenant::lifecycle::UpdateTenant {
        auth: Some(pgtenant::model::AuthMethod::Trust),
        ..Default::default()
    };
    lc.update(&id, trust).await.expect("back to trust");
    let conninfo = h.conninfo(&id);
    let over = || {
        let conninfo = conninfo.clone();
        async move { tokio_postgres::connect(&conninfo, tokio_postgres::NoTls).await.err().map(|e| code(&e)) }
    };
    assert!(eventually(Duration::from_secs(3), || async { over().await.as_deref() == Some("53300") }).await);
    assert_eq!(h.proxy.tenant_clients(&id), 1);
    let err = lc.archive(&id, false).await.expect_err("a client is connected");
    assert!(matches!(err, LifecycleError::Conflict(_)), "{err}");
    lc.suspend(&id).await.expect("suspend");
    assert!(
        eventually(Duration::from_secs(3), || async { first.batch_execute("SELECT 1").await.is_err() }).await,
        "the session opened under the old limit is closed by the suspend"
    );
    assert!(eventually(Duration::from_secs(3), || async { h.proxy.tenant_clients(&id) == 0 }).await);

    // A second operation on a tenant waits for the first; one that outlasts the wait gets a
    // conflict rather than running alongside.
    let holder = connect_str(&s.cfg.catalog.url).await;
    holder
        .execute("SELECT pg_advisory_lock(hashtext('pgtenant.tenant'), hashtext($1))", &[&id])
        .await
        .expect("lock");
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        holder
    });
    let waiting = lc.resume(&id);
    let holder = release.await.expect("join");
    let unlock = async {
        holder
            .execute("SELECT pg_advisory_unlock(hashtext('pgtenant.tenant'), hashtext($1))", &[&id])
            .await
            .expect("unlock");
    };
    let (resumed, ()) = tokio::join!(waiting, unlock);
    assert_eq!(resumed.expect("resumed after the other operation").status, TenantStatus::Active);
    holder
        .execute("SELECT pg_advisory_lock(hashtext('pgtenant.tenant'), hashtext($1))", &[&id])
        .await
        .expect("lock");
    let err = lc.suspend(&id).await.expect_err("held past the wait");
    assert!(matches!(err, LifecycleError::Conflict(ref m) if m.contains("in progress")), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_tenant_moves_to_another_upstream() {
    let s = Setup::new(&[("V001__products.sql", PRODUCTS)]).await;
    let other = second_upstream(&s.control, "other").await;
    let (h, _catalog) = start_control(s.cfg.clone()).await;
    let lc = s.lifecycle();
    let id = unique("lcmove");
    lc.create(CreateTenant { upstream: Some("local".into()), ..create(&id, Isolation::Database) })
        .await
        .expect("create");
    let c = h.client(&id).await;
    c.batch_execute("INSERT INTO products (name) SELECT 'p' || g FROM generate_series(1, 500) g")
        .await
        .expect("rows");
    let port = |c: Client| async move {
        c.query_one("SELECT current_setting('port')", &[]).await.expect("port").get::<_, String>(0)
    };
    assert_eq!(port(c).await, cluster().port.to_string());

    let err = lc.relocate(&id, "nowhere").await.expect_err("unknown upstream");
    assert!(matches!(err, LifecycleError::Invalid(_)), "{err}");
    assert_eq!(
        lc.get(&id).await.expect("row").status,
        TenantStatus::Active,
        "a refused move changes nothing"
    );

    let moved = lc.relocate(&id, "other").await.expect("move");
    assert_eq!((moved.upstream.as_str(), moved.status.as_str()), ("other", "active"));
    // Through the proxy: the same rows, now served from the other server, owned by the tenant.
    assert!(
        eventually(Duration::from_secs(5), || async {
            match tokio_postgres::connect(&h.conninfo(&id), tokio_postgres::NoTls).await {
                Ok((c, conn)) => {
                    tokio::spawn(conn);
                    c.query_one("SELECT current_setting('port')", &[])
                        .await
                        .is_ok_and(|r| r.get::<_, String>(0) == other.port.to_string())
                }
                Err(_) => false,
            }
        })
        .await
    );
    let c = h.client(&id).await;
    let n: i64 = c.query_one("SELECT count(*) FROM products", &[]).await.expect("count").get(0);
    assert_eq!(n, 500);
    let owner: String = c
        .query_one("SELECT tableowner::text FROM pg_tables WHERE tablename = 'products'", &[])
        .await
        .expect("owner")
        .get(0);
    assert_eq!(owner, id);
    assert!(!database_exists(&id).await, "the source database is dropped");
    assert!(!role_exists(&id).await, "the source role is dropped");
    // Migrations follow it there.
    s.migration("V002__sku.sql", "ALTER TABLE products ADD COLUMN sku text;");
    let out = s
        .lifecycle()
        .migrate(&MigrateOptions { tenants: vec![id.clone()], ..Default::default() }, &|_, _, _| {})
        .await
        .expect("migrate");
    assert_eq!(out[0].outcome, MigrationOutcome::Applied { versions: vec![2] });
    drop(c);
    lc.delete(&id, true, true).await.expect("hard delete on the new upstream");
    tokio::task::spawn_blocking(move || drop(other)).await.expect("stop the second cluster");
}
