//! `pgtenant.usage` (migration 7): usage per tenant and minute. Rows written are deltas
//! that ADD to what is stored (several instances, and a shutdown flush of a minute that
//! continues after a restart, write the same minute); reads come back per minute with
//! RFC 3339 timestamps. Time parsing and formatting are PostgreSQL's, so `from` / `to`
//! take any timestamp PostgreSQL reads (RFC 3339 among them).

use tokio_postgres::Client;

use crate::metrics::UsageRow;

/// One stored minute of a tenant's usage.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct UsageRecord {
    pub tenant_id: String,
    /// Start of the minute, RFC 3339 in UTC.
    pub minute: String,
    pub transactions: i64,
    pub queries: i64,
    pub bytes_in: i64,
    pub bytes_out: i64,
    pub server_conn_seconds: f64,
    pub client_conn_seconds: f64,
    pub errors: i64,
}

fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Adds `rows` to the stored minutes, in one statement (all or nothing). Rows must not
/// repeat a (tenant, minute): merge them first.
pub async fn add_usage(db: &Client, rows: &[UsageRow]) -> Result<u64, tokio_postgres::Error> {
    if rows.is_empty() {
        return Ok(0);
    }
    let tenant: Vec<&str> = rows.iter().map(|r| r.tenant.as_str()).collect();
    let minute: Vec<i64> = rows.iter().map(|r| i64_of(r.minute)).collect();
    let col = |f: fn(&UsageRow) -> u64| -> Vec<i64> { rows.iter().map(|r| i64_of(f(r))).collect() };
    let secs = |f: fn(&UsageRow) -> u64| -> Vec<f64> { rows.iter().map(|r| f(r) as f64 / 1e6).collect() };
    db.execute(
        "INSERT INTO pgtenant.usage AS u (tenant_id, minute, transactions, queries, bytes_in, bytes_out,
                                          server_conn_seconds, client_conn_seconds, errors)
         SELECT t, to_timestamp(m), tx, q, bi, bo, sc, cc, e
           FROM unnest($1::text[], $2::int8[], $3::int8[], $4::int8[], $5::int8[], $6::int8[],
                       $7::float8[], $8::float8[], $9::int8[]) AS r(t, m, tx, q, bi, bo, sc, cc, e)
         ON CONFLICT (tenant_id, minute) DO UPDATE SET
             transactions = u.transactions + EXCLUDED.transactions,
             queries = u.queries + EXCLUDED.queries,
             bytes_in = u.bytes_in + EXCLUDED.bytes_in,
             bytes_out = u.bytes_out + EXCLUDED.bytes_out,
             server_conn_seconds = u.server_conn_seconds + EXCLUDED.server_conn_seconds,
             client_conn_seconds = u.client_conn_seconds + EXCLUDED.client_conn_seconds,
             errors = u.errors + EXCLUDED.errors",
        &[
            &tenant,
            &minute,
            &col(|r| r.totals.transactions),
            &col(|r| r.totals.queries),
            &col(|r| r.totals.bytes_in),
            &col(|r| r.totals.bytes_out),
            &secs(|r| r.totals.server_conn_us),
            &secs(|r| r.totals.client_conn_us),
            &col(|r| r.totals.errors),
        ],
    )
    .await
}

/// Deletes the minutes older than `days` days; returns how many.
pub async fn delete_usage_before(db: &Client, days: u32) -> Result<u64, tokio_postgres::Error> {
    let days = f64::from(days);
    db.execute(
        "DELETE FROM pgtenant.usage WHERE minute < now() - make_interval(days => $1::float8::int)",
        &[&days],
    )
    .await
}

/// A tenant's minutes in `[from, to)` (each a timestamp PostgreSQL reads; `None`: the last
/// 24 hours up to now), oldest first.
pub async fn usage(
    db: &Client,
    tenant: &str,
    from: Option<&str>,
    to: Option<&str>,
) -> Result<Vec<UsageRecord>, tokio_postgres::Error> {
    let rows = db
        .query(
            "SELECT tenant_id,
                    to_char(minute AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),
                    transactions, queries, bytes_in, bytes_out,
                    server_conn_seconds, client_conn_seconds, errors
               FROM pgtenant.usage
              WHERE tenant_id = $1
                AND minute >= coalesce($2::text::timestamptz, now() - interval '1 day')
                AND minute < coalesce($3::text::timestamptz, now() + interval '1 minute')
              ORDER BY minute",
            &[&tenant, &from, &to],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| UsageRecord {
            tenant_id: r.get(0),
            minute: r.get(1),
            transactions: r.get(2),
            queries: r.get(3),
            bytes_in: r.get(4),
            bytes_out: r.get(5),
            server_conn_seconds: r.get(6),
            client_conn_seconds: r.get(7),
            errors: r.get(8),
        })
        .collect())
}

/// `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)` (RFC 3339's `date-time`; `t`, `z` and a space for
/// `T` are accepted, as the RFC allows).
pub fn is_rfc3339(s: &str) -> bool {
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| b.get(r).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    let at = |i: usize, c: &[u8]| b.get(i).is_some_and(|x| c.contains(x));
    if !(digits(0..4) && at(4, b"-") && digits(5..7) && at(7, b"-") && digits(8..10) && at(10, b"Tt "))
        || !(digits(11..13) && at(13, b":") && digits(14..16) && at(16, b":") && digits(17..19))
    {
        return false;
    }
    let mut i = 19;
    if at(i, b".") {
        i += 1;
        let start = i;
        while at(i, b"0123456789") {
            i += 1;
        }
        if i == start {
            return false;
        }
    }
    match b.get(i) {
        Some(b'Z' | b'z') => i + 1 == b.len(),
        Some(b'+' | b'-') => {
            digits(i + 1..i + 3) && at(i + 3, b":") && digits(i + 4..i + 6) && i + 6 == b.len()
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::is_rfc3339;

    #[test]
    fn rfc3339_timestamps() {
        for ok in ["2026-01-31T09:00:00Z", "2026-01-31t09:00:00.123+02:00", "2026-01-31 09:00:00-05:30"] {
            assert!(is_rfc3339(ok), "{ok}");
        }
        for bad in [
            "2026-01-31",
            "yesterday",
            "2026-01-31T09:00:00",
            "2026-01-31T09:00:00.Z",
            "2026-01-31T09:00:00Z;",
        ] {
            assert!(!is_rfc3339(bad), "{bad}");
        }
    }
}
