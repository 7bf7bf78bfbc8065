//! Real client programs through the proxy: psql and pgbench.

use pgtenant::model::PoolMode;
use tokio::process::Command;

use crate::support::*;

async fn run(cmd: &mut Command) -> String {
    let out = cmd.output().await.expect("run client program");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{cmd:?} failed:\n{stdout}\n{stderr}");
    stdout + &stderr
}

fn failed_transactions(output: &str) -> Option<u64> {
    let line = output.lines().find(|l| l.starts_with("number of failed transactions"))?;
    line.split(':').nth(1)?.split_whitespace().next()?.parse().ok()
}

fn processed(output: &str) -> Option<u64> {
    let line = output.lines().find(|l| l.starts_with("number of transactions actually processed"))?;
    line.split(':').nth(1)?.split('/').next()?.trim().parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_runs_scripts_and_meta_commands() {
    let t = tenant_db("psql").await;
    let h = start(config(vec![t.clone()])).await;
    let url = h.url(&format!("app.{}", t.id), &t.database);
    let out = run(Command::new("psql").arg(&url).args([
        "-X",
        "-v",
        "ON_ERROR_STOP=1",
        "-At",
        "-c",
        "CREATE TABLE kv (k text PRIMARY KEY, v int)",
        "-c",
        "INSERT INTO kv SELECT 'k' || g, g FROM generate_series(1, 1000) g",
        "-c",
        "\\copy kv TO STDOUT",
        "-c",
        "SELECT sum(v) FROM kv",
        "-c",
        "\\di",
    ]))
    .await;
    assert!(out.contains("500500"), "{out}");
    assert!(out.lines().filter(|l| l.starts_with('k')).count() >= 1000, "{out}");
    assert!(out.contains("kv_pkey"), "{out}");
    // An error is reported and psql exits non-zero, the proxy stays up.
    let failed = Command::new("psql")
        .arg(&url)
        .args(["-X", "-c", "SELECT * FROM missing"])
        .output()
        .await
        .expect("psql");
    assert!(!failed.status.success());
    assert!(String::from_utf8_lossy(&failed.stderr).contains("does not exist"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_through_both_pool_modes_without_failures() {
    let tx = with_mode(tenant_db("bench_tx").await, PoolMode::Transaction, 4);
    let se = with_mode(tenant_db("bench_se").await, PoolMode::Session, 8);
    let h = start(config(vec![tx.clone(), se.clone()])).await;
    for t in [&tx, &se] {
        run(Command::new("pgbench")
            .args(["-i", "-q", "-s", "1"])
            .arg(h.url(&format!("app.{}", t.id), &t.database)))
        .await;
    }
    let cases = [(&tx, "simple"), (&tx, "extended"), (&se, "prepared")];
    for (t, protocol) in cases {
        let url = h.url(&format!("app.{}", t.id), &t.database);
        let out = run(Command::new("pgbench")
            .args(["-n", "-c", "8", "-j", "2", "-t", "100", "-M", protocol])
            .arg(&url))
        .await;
        assert_eq!(failed_transactions(&out), Some(0), "{protocol}: {out}");
        assert_eq!(processed(&out), Some(800), "{protocol}: {out}");
    }
    // The upstream saw the transactions: the TPC-B history table has one row per transaction.
    let c = h.client(&tx.id).await;
    let n: i64 = c.query_one("SELECT count(*) FROM pgbench_history", &[]).await.expect("history").get(0);
    assert_eq!(n, 1600);
    // A new connection per transaction (-C) works too.
    let url = h.url(&format!("app.{}", tx.id), &tx.database);
    let out =
        run(Command::new("pgbench").args(["-n", "-C", "-S", "-c", "4", "-j", "2", "-t", "50"]).arg(&url))
            .await;
    assert_eq!(failed_transactions(&out), Some(0), "{out}");
}
