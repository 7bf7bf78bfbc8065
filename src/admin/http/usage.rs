//! `GET /tenants/{id}/usage?from=&to=`: a tenant's usage per minute from the control
//! database's `pgtenant.usage` (RFC 3339 bounds; by default the last 24 hours).

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use crate::catalog::store::usage::usage;

use super::extract::{Params, TenantPath};
use super::problem::{Kind, Problem};
use super::AdminState;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Range {
    from: Option<String>,
    to: Option<String>,
}

pub(super) async fn tenant_usage(
    State(state): State<AdminState>,
    TenantPath(id): TenantPath,
    Params(range): Params<Range>,
) -> Result<Response, Problem> {
    for (name, v) in [("from", &range.from), ("to", &range.to)] {
        if let Some(v) = v.as_deref().filter(|v| !is_rfc3339(v)) {
            return Err(Problem::new(
                Kind::InvalidRequest,
                format!("{name}={v:?} is not an RFC 3339 timestamp (e.g. 2026-01-31T09:00:00Z)"),
            ));
        }
    }
    let Some(control) = &state.inner.control else {
        return Err(Problem::new(
            Kind::CatalogUnavailable,
            "this proxy has no control database ([catalog] url): usage is kept in memory only (see /metrics)",
        ));
    };
    let (from, to) = (range.from.as_deref(), range.to.as_deref());
    let minutes = control
        .within(|db| async move { usage(&db, &id, from, to).await })
        .await
        .map_err(|e| Problem::new(Kind::CatalogUnavailable, format!("cannot read usage: {e}")))?;
    Ok(Json(json!({ "minutes": minutes })).into_response())
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
        Some(b'+' | b'-') => digits(i + 1..i + 3) && at(i + 3, b":") && digits(i + 4..i + 6) && i + 6 == b.len(),
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
        for bad in ["2026-01-31", "yesterday", "2026-01-31T09:00:00", "2026-01-31T09:00:00.Z", "2026-01-31T09:00:00Z;"] {
            assert!(!is_rfc3339(bad), "{bad}");
        }
    }
}
