//! "From the demo to production", as a new user meets it: `serve` takes
//! `PGTENANT_CATALOG_URL` as the other commands do, `check-config` reports what `serve` would
//! refuse or ignore, `--help` shows no secret from the environment, a file error is printed
//! once, `demo --help` counts its tenants right.

use crate::reload::{toml, Served};
use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_takes_the_catalog_url_from_the_environment() {
    let t = tenant_db("env_catalog").await;
    let mut cfg = config(vec![]);
    let control = control_db(&mut cfg).await;
    insert_tenant(&control, &t).await;
    // The file has no [catalog] url: the environment names the control database.
    let served = Served::start_env(&toml("", &[]), &[("PGTENANT_CATALOG_URL", &cfg.catalog.url)]).await;
    let c = connect_str(&served.conninfo(&t)).await;
    let db: String = c.query_one("SELECT current_database()", &[]).await.expect("served").get(0);
    assert_eq!(db, t.database, "{}", served.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_reports_what_serve_would_refuse_or_ignore() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("p.toml");
    let path_s = path.to_str().expect("utf-8");
    let run = |text: &'static str| {
        std::fs::write(&path, text).expect("write");
        let path = path_s.to_owned();
        async move { pgtenant_env(&["check-config", "--config", &path], "", &[]).await }
    };
    let (code, _, err) = run("[tls]\ncert = '/nonexistent/c.pem'\nkey = '/nonexistent/k.pem'\n").await;
    assert_ne!(code, 0);
    assert!(err.contains("error: [tls]") && err.contains("/nonexistent/c.pem"), "{err}");
    let (code, _, err) = run("[catalog]\nkey_file = '/nonexistent/keys'\n").await;
    assert_ne!(code, 0);
    assert!(err.contains("key_file") && err.contains("/nonexistent/keys"), "{err}");
    let (code, _, err) = run("[admin]\nlisten = '127.0.0.1:0'\ntoken_sha256 = ['abc']\n").await;
    assert_ne!(code, 0);
    assert!(err.contains("token_sha256") && err.contains("\"abc\""), "{err}");
    let (code, _, err) = run("[[upstreams]]\nname = 'u'\nhost = 'h'\nsslmode = 'verify-full'\n").await;
    assert_ne!(code, 0);
    assert!(err.contains("needs sslrootcert"), "{err}");
    // Ignored sections are warnings: the file is usable.
    let (code, out, err) = run("[catalog]\nurl = 'host=127.0.0.1'\n[[upstreams]]\nname = 'u'\nhost = 'h'\n\
         [[tenants]]\nid = 't'\nupstream = 'u'\ndatabase = 'd'\nrole = 'r'\n")
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("warning: [[upstreams]] (1) and [[tenants]] (1) are ignored"), "{err}");
    assert!(out.contains(": ok"), "{out}");
    // A missing file: its error once, not twice.
    let (code, _, err) = pgtenant_env(&["check-config", "--config", "/nonexistent/p.toml"], "", &[]).await;
    assert_ne!(code, 0);
    assert_eq!(err.matches("No such file").count(), 1, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn help_shows_no_secret_from_the_environment() {
    let secret = "postgresql://admin:s3cr3t-pw@db.example/pgtenant";
    let envs = [("PGTENANT_CATALOG_URL", secret), ("PGTENANT_MASTER_KEYS", "k1:c2VjcmV0")];
    for args in [
        &["catalog", "init", "--help"][..],
        &["tenant", "list", "--help"],
        &["upstream", "--help"],
        &["admin", "--help"],
        &["migrate", "--help"],
        &["console-user", "add", "--help"],
    ] {
        let (_, out, err) = pgtenant_env(args, "", &envs).await;
        assert!(!out.contains("s3cr3t") && !err.contains("s3cr3t"), "{args:?}: {out}{err}");
        assert!(!out.contains("c2VjcmV0"), "{args:?}: {out}");
    }
    let (_, out, _) = pgtenant_env(&["--help"], "", &[]).await;
    assert!(out.contains("three demo tenants"), "{out}");
}

/// The Grafana dashboard under `config/` parses and asks only for metric families that
/// `src/metrics/` exposes (a counter's `_total`, a histogram's `_bucket` added by the
/// exposition).
#[test]
fn the_grafana_dashboard_names_only_exposed_metrics() {
    let dashboard: serde_json::Value =
        serde_json::from_str(include_str!("../../config/grafana-dashboard.json")).expect("dashboard JSON");
    let exposition = include_str!("../../src/metrics/exposition.rs");
    let mut names = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            let mut rest = expr;
            while let Some(at) = rest.find("pgtenant_") {
                let name: String =
                    rest[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                rest = &rest[at + name.len()..];
                names.push(name);
            }
        }
    }
    assert!(names.len() >= 15, "{names:?}");
    for name in names {
        let family = ["_total", "_bucket"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(&name);
        assert!(exposition.contains(&format!("\"{family}\"")), "{name}: no such metric in src/metrics/");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_update_changes_pool_and_limits_and_every_option_has_help() {
    let t = tenant_db("cli_update").await;
    let mut cfg = config(vec![]);
    let control = control_db(&mut cfg).await;
    insert_tenant(&control, &t).await;
    let url = cfg.catalog.url.clone();
    let (code, out, err) = pgtenant_env(
        &[
            "tenant",
            "update",
            &t.id,
            "--pool-size",
            "7",
            "--max-clients",
            "9",
            "--pool-mode",
            "session",
            "--url",
            &url,
        ],
        "",
        &[],
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    let row = control
        .query_one("SELECT pool_size, max_clients, pool_mode FROM pgtenant.tenants WHERE id = $1", &[&t.id])
        .await
        .expect("row");
    assert_eq!(row.get::<_, Option<i32>>(0), Some(7));
    assert_eq!(row.get::<_, Option<i32>>(1), Some(9));
    assert_eq!(row.get::<_, String>(2), "session");
    // Options not given keep their value.
    let (code, _, err) =
        pgtenant_env(&["tenant", "update", &t.id, "--max-clients", "3", "--url", &url], "", &[]).await;
    assert_eq!(code, 0, "{err}");
    let row = control
        .query_one("SELECT pool_size, max_clients FROM pgtenant.tenants WHERE id = $1", &[&t.id])
        .await
        .expect("row");
    assert_eq!((row.get::<_, Option<i32>>(0), row.get::<_, Option<i32>>(1)), (Some(7), Some(3)));
    let (code, _, err) =
        pgtenant_env(&["tenant", "update", "nosuch", "--pool-size", "2", "--url", &url], "", &[]).await;
    assert_ne!(code, 0, "{err}");
    // Options and arguments all carry help.
    let (_, help, _) = pgtenant_env(&["tenant", "update", "--help"], "", &[]).await;
    // (clap puts the help after the option, or on the next line, indented further.)
    let lines: Vec<&str> = help.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        let item = line.trim_start();
        if !(item.starts_with("--") || item.starts_with('<') || item.starts_with("-c")) {
            continue;
        }
        let same_line = item.split("  ").filter(|p| !p.trim().is_empty()).count() >= 2;
        let indent = |l: &str| l.len() - l.trim_start().len();
        let next_line = lines.get(i + 1).is_some_and(|n| {
            indent(n) > indent(line) && !n.trim().is_empty() && !n.trim_start().starts_with('-')
        });
        assert!(same_line || next_line, "no help: {line}\n{help}");
    }
    let (_, help, _) = pgtenant_env(&["upstream", "add", "--help"], "", &[]).await;
    assert!(help.contains("--sslrootcert"), "{help}");
}
