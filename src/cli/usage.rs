//! `pgtenant tenant usage ID [--from --to] [--json]`: a tenant's usage per minute from the
//! control database's `pgtenant.usage`, as a table or JSON.

use crate::catalog::store::usage::{is_rfc3339, usage};

use super::lifecycle::Target;

pub async fn tenant_usage(
    tenant: String,
    from: Option<String>,
    to: Option<String>,
    target: Target,
) -> anyhow::Result<()> {
    for (name, v) in [("--from", &from), ("--to", &to)] {
        if let Some(v) = v.as_deref().filter(|v| !is_rfc3339(v)) {
            anyhow::bail!("{name} {v:?} is not an RFC 3339 timestamp (e.g. 2026-01-31T09:00:00Z)");
        }
    }
    let db = super::control_db(target.url.clone(), &target.config_path()).await?;
    let rows = usage(&db, &tenant, from.as_deref(), to.as_deref()).await?;
    if target.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!("minute\ttransactions\tqueries\tbytes_in\tbytes_out\tserver_conn_s\tclient_conn_s\terrors");
    for r in &rows {
        println!(
            "{}\t{}\t{}\t{}\t{}\t{:.3}\t{:.3}\t{}",
            r.minute,
            r.transactions,
            r.queries,
            r.bytes_in,
            r.bytes_out,
            r.server_conn_seconds,
            r.client_conn_seconds,
            r.errors
        );
    }
    Ok(())
}
