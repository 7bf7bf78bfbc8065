//! The console's result sets: for each SHOW, PgBouncer 1.25's columns (names, order, types,
//! from the `pktbuf_write_RowDescription` calls in its `src/admin.c` and `src/stats.c`), and
//! the encoding of RowDescription, DataRow and CommandComplete in text or binary format.
//!
//! PgBouncer's type letters and what they go out as (`pktbuf.c`): `s` text (25), `i` int4
//! (23), `q` int8 (20), `N` numeric (1700), `T` a timestamp sent as text (25). pgtenant's own
//! views add `bool` (16) where PgBouncer has no flag to follow.

use bytes::{BufMut, BytesMut};

/// One view the console shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum View {
    Pools,
    Stats,
    StatsTotals,
    StatsAverages,
    Clients,
    Servers,
    Databases,
    Users,
    Config,
    Lists,
    Version,
    State,
    /// pgtenant's own: one row per tenant.
    Tenants,
    /// pgtenant's own: usage per tenant and minute.
    Usage,
    /// pgtenant's own: the instances sharing the control database.
    Instances,
}

/// A column's type as it goes out in RowDescription.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColType {
    Text,
    Int4,
    Int8,
    Numeric,
    Bool,
}

impl ColType {
    /// Type OID (`src/include/catalog/pg_type.dat`).
    pub fn oid(self) -> u32 {
        match self {
            ColType::Text => 25,
            ColType::Int4 => 23,
            ColType::Int8 => 20,
            ColType::Numeric => 1700,
            ColType::Bool => 16,
        }
    }

    /// `typlen`: -1 for variable length.
    fn len(self) -> i16 {
        match self {
            ColType::Text | ColType::Numeric => -1,
            ColType::Int4 => 4,
            ColType::Int8 => 8,
            ColType::Bool => 1,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Column {
    pub name: &'static str,
    pub ty: ColType,
}

/// A cell of a row the proxy reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    Null,
    Int(i64),
    Text(String),
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Text(s.to_owned())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::Text(s)
    }
}

impl From<i64> for Value {
    fn from(i: i64) -> Self {
        Value::Int(i)
    }
}

impl From<u64> for Value {
    /// Counters past i64::MAX saturate (they would take centuries to get there).
    fn from(i: u64) -> Self {
        Value::Int(i64::try_from(i).unwrap_or(i64::MAX))
    }
}

impl From<i32> for Value {
    fn from(i: i32) -> Self {
        Value::Int(i.into())
    }
}

impl From<u32> for Value {
    fn from(i: u32) -> Self {
        Value::Int(i.into())
    }
}

impl From<usize> for Value {
    fn from(i: usize) -> Self {
        Value::Int(i64::try_from(i).unwrap_or(i64::MAX))
    }
}

impl From<bool> for Value {
    /// PgBouncer shows flags as int 0/1.
    fn from(b: bool) -> Self {
        Value::Int(b.into())
    }
}

/// A `bool` column's cell, as PostgreSQL's text form spells it (`t` / `f`); PgBouncer's own
/// flags are ints ([`From<bool>`]).
pub fn flag(b: bool) -> Value {
    Value::Text(if b { "t" } else { "f" }.to_owned())
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}

/// Why a row could not be encoded: the proxy handed the console a row that does not fit the
/// view (a bug on the proxy's side, reported to the client as an internal error).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ShowError {
    #[error("row of {got} values for {want} columns")]
    RowWidth { got: usize, want: usize },
    #[error("value {value:?} does not fit column {column}")]
    BadValue { column: &'static str, value: String },
    #[error("{got} result formats for {want} columns")]
    Formats { got: usize, want: usize },
    #[error("unknown result format {0}")]
    UnknownFormat(i16),
}

const fn col(name: &'static str, ty: ColType) -> Column {
    Column { name, ty }
}

use ColType::{Bool as B, Int4 as I, Numeric as N, Text as S};

/// `admin_show_pools`: "ssiiiiiiiiiiiiiss".
const POOLS: &[Column] = &[
    col("database", S),
    col("user", S),
    col("cl_active", I),
    col("cl_waiting", I),
    col("cl_active_cancel_req", I),
    col("cl_waiting_cancel_req", I),
    col("sv_active", I),
    col("sv_active_cancel", I),
    col("sv_being_canceled", I),
    col("sv_idle", I),
    col("sv_used", I),
    col("sv_tested", I),
    col("sv_login", I),
    col("maxwait", I),
    col("maxwait_us", I),
    col("pool_mode", S),
    col("load_balance_hosts", S),
];

/// `admin_database_stats` (stats.c): "s" then 24 × "N".
const STATS: &[Column] = &[
    col("database", S),
    col("total_server_assignment_count", N),
    col("total_xact_count", N),
    col("total_query_count", N),
    col("total_received", N),
    col("total_sent", N),
    col("total_xact_time", N),
    col("total_query_time", N),
    col("total_wait_time", N),
    col("total_client_parse_count", N),
    col("total_server_parse_count", N),
    col("total_bind_count", N),
    col("total_client_login_count", N),
    col("avg_server_assignment_count", N),
    col("avg_xact_count", N),
    col("avg_query_count", N),
    col("avg_recv", N),
    col("avg_sent", N),
    col("avg_xact_time", N),
    col("avg_query_time", N),
    col("avg_wait_time", N),
    col("avg_client_parse_count", N),
    col("avg_server_parse_count", N),
    col("avg_bind_count", N),
    col("avg_client_login_count", N),
];

/// `admin_database_stats_totals`: "s" then 12 × "N".
const STATS_TOTALS: &[Column] = &[
    col("database", S),
    col("server_assignment_count", N),
    col("xact_count", N),
    col("query_count", N),
    col("bytes_received", N),
    col("bytes_sent", N),
    col("xact_time", N),
    col("query_time", N),
    col("wait_time", N),
    col("client_parse_count", N),
    col("server_parse_count", N),
    col("bind_count", N),
    col("client_login_count", N),
];

/// `admin_database_stats_averages`: "s" then 12 × "N".
const STATS_AVERAGES: &[Column] = &[
    col("database", S),
    col("server_assignment_count", N),
    col("xact_count", N),
    col("query_count", N),
    col("bytes_received", N),
    col("bytes_sent", N),
    col("xact_time", N),
    col("query_time", N),
    col("wait_time", N),
    col("avg_client_parse_count", N),
    col("avg_server_parse_count", N),
    col("avg_bind_count", N),
    col("avg_client_login_count", N),
];

/// `SKF_STD` for SHOW CLIENTS and SHOW SERVERS: "ssssssisiTTiiississii".
const SOCKETS: &[Column] = &[
    col("type", S),
    col("user", S),
    col("database", S),
    col("replication", S),
    col("state", S),
    col("addr", S),
    col("port", I),
    col("local_addr", S),
    col("local_port", I),
    col("connect_time", S),
    col("request_time", S),
    col("wait", I),
    col("wait_us", I),
    col("close_needed", I),
    col("ptr", S),
    col("link", S),
    col("remote_pid", I),
    col("tls", S),
    col("application_name", S),
    col("prepared_statements", I),
    col("id", I),
];

/// `admin_show_databases`: "ssissiiiissiiiiii".
const DATABASES: &[Column] = &[
    col("name", S),
    col("host", S),
    col("port", I),
    col("database", S),
    col("force_user", S),
    col("pool_size", I),
    col("min_pool_size", I),
    col("reserve_pool_size", I),
    col("server_lifetime", I),
    col("pool_mode", S),
    col("load_balance_hosts", S),
    col("max_connections", I),
    col("current_connections", I),
    col("max_client_connections", I),
    col("current_client_connections", I),
    col("paused", I),
    col("disabled", I),
];

/// `admin_show_users`: "ssssiiii" (pool sizes are text, empty when not set per user).
const USERS: &[Column] = &[
    col("name", S),
    col("pool_size", S),
    col("reserve_pool_size", S),
    col("pool_mode", S),
    col("max_user_connections", I),
    col("current_connections", I),
    col("max_user_client_connections", I),
    col("current_client_connections", I),
];

/// `admin_show_config`: "ssss"; `changeable` is `yes`/`no`.
const CONFIG: &[Column] = &[col("key", S), col("value", S), col("default", S), col("changeable", S)];

/// `admin_show_lists`: "si".
const LISTS: &[Column] = &[col("list", S), col("items", I)];

const VERSION: &[Column] = &[col("version", S)];

/// `admin_show_state`: "ss"; keys `active`, `paused`, `suspended` with `yes`/`no`.
const STATE: &[Column] = &[col("key", S), col("value", S)];

/// pgtenant's SHOW TENANTS. Counts as PgBouncer's pools have them; rates and waits numeric
/// as PgBouncer's stats are.
const TENANTS: &[Column] = &[
    col("tenant", S),
    col("status", S),
    col("isolation", S),
    col("cl_active", I),
    col("cl_waiting", I),
    col("sv_active", I),
    col("sv_idle", I),
    col("xact_per_sec", N),
    col("total_xact_count", N),
    col("avg_wait_us", N),
    col("max_wait_us", N),
];

/// pgtenant's SHOW USAGE: one row per tenant and minute (`minute` as text, like PgBouncer's
/// timestamps); seconds are whole connection-seconds.
const USAGE: &[Column] = &[
    col("tenant", S),
    col("minute", S),
    col("xact_count", N),
    col("query_count", N),
    col("bytes_received", N),
    col("bytes_sent", N),
    col("server_seconds", N),
    col("client_seconds", N),
    col("errors", N),
];

/// pgtenant's SHOW INSTANCES: the proxies registered in the control database; `draining`:
/// stopped accepting, waiting for its clients to leave.
const INSTANCES: &[Column] = &[
    col("instance", S),
    col("addr", S),
    col("started", S),
    col("last_seen", S),
    col("cl_active", I),
    col("sv_active", I),
    col("draining", B),
];

impl View {
    pub const ALL: &'static [View] = &[
        View::Pools,
        View::Stats,
        View::StatsTotals,
        View::StatsAverages,
        View::Clients,
        View::Servers,
        View::Databases,
        View::Users,
        View::Config,
        View::Lists,
        View::Version,
        View::State,
        View::Tenants,
        View::Usage,
        View::Instances,
    ];

    /// The word after SHOW.
    pub fn name(self) -> &'static str {
        match self {
            View::Pools => "pools",
            View::Stats => "stats",
            View::StatsTotals => "stats_totals",
            View::StatsAverages => "stats_averages",
            View::Clients => "clients",
            View::Servers => "servers",
            View::Databases => "databases",
            View::Users => "users",
            View::Config => "config",
            View::Lists => "lists",
            View::Version => "version",
            View::State => "state",
            View::Tenants => "tenants",
            View::Usage => "usage",
            View::Instances => "instances",
        }
    }

    pub fn columns(self) -> &'static [Column] {
        match self {
            View::Pools => POOLS,
            View::Stats => STATS,
            View::StatsTotals => STATS_TOTALS,
            View::StatsAverages => STATS_AVERAGES,
            View::Clients | View::Servers => SOCKETS,
            View::Databases => DATABASES,
            View::Users => USERS,
            View::Config => CONFIG,
            View::Lists => LISTS,
            View::Version => VERSION,
            View::State => STATE,
            View::Tenants => TENANTS,
            View::Usage => USAGE,
            View::Instances => INSTANCES,
        }
    }
}

/// What `SHOW VERSION` answers: PgBouncer's `PACKAGE_STRING` shape first, so tools that
/// parse `PgBouncer x.y.z` for features see the version whose console this one follows.
pub fn version_string() -> String {
    format!("PgBouncer 1.25.2 compatible (pgtenant {})", env!("CARGO_PKG_VERSION"))
}

/// Whether column `i` goes out in binary, from a Bind's result format codes (none: all
/// text; one: all columns; else one per column).
pub fn is_binary(formats: &[i16], i: usize) -> Result<bool, ShowError> {
    let code = match formats {
        [] => 0,
        [one] => *one,
        many => many.get(i).copied().unwrap_or(0),
    };
    match code {
        0 => Ok(false),
        1 => Ok(true),
        other => Err(ShowError::UnknownFormat(other)),
    }
}

/// Checks a Bind's result formats against the columns, as PostgreSQL does at Bind.
pub fn check_formats(columns: &[Column], formats: &[i16]) -> Result<(), ShowError> {
    if formats.len() > 1 && formats.len() != columns.len() {
        return Err(ShowError::Formats { got: formats.len(), want: columns.len() });
    }
    (0..columns.len().max(formats.len())).try_for_each(|i| is_binary(formats, i).map(|_| ()))
}

/// Writes a frame: tag, a length word patched in after the body.
pub(super) fn frame(buf: &mut BytesMut, tag: u8, body: impl FnOnce(&mut BytesMut)) {
    buf.put_u8(tag);
    let at = buf.len();
    buf.put_i32(0);
    body(buf);
    // Console frames are small (rows of a few dozen short cells); a length past i32 would
    // mean a bug, and is written as i32::MAX rather than wrapping.
    let len = i32::try_from(buf.len() - at).unwrap_or(i32::MAX);
    buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

pub(super) fn cstring(buf: &mut BytesMut, s: &str) {
    buf.put_slice(s.as_bytes());
    buf.put_u8(0);
}

/// RowDescription ('T'), with each column's format code.
pub fn row_description(buf: &mut BytesMut, columns: &[Column], formats: &[i16]) -> Result<(), ShowError> {
    let binary: Vec<bool> = (0..columns.len()).map(|i| is_binary(formats, i)).collect::<Result<_, _>>()?;
    frame(buf, b'T', |b| {
        b.put_i16(i16::try_from(columns.len()).unwrap_or(i16::MAX));
        for (c, bin) in columns.iter().zip(binary) {
            cstring(b, c.name);
            b.put_u32(0); // table OID
            b.put_i16(0); // column number
            b.put_u32(c.ty.oid());
            b.put_i16(c.ty.len());
            b.put_i32(-1); // typmod
            b.put_i16(bin.into());
        }
    });
    Ok(())
}

/// DataRow ('D'): each value in its column's type and format.
pub fn data_row(
    buf: &mut BytesMut,
    columns: &[Column],
    row: &[Value],
    formats: &[i16],
) -> Result<(), ShowError> {
    if row.len() != columns.len() {
        return Err(ShowError::RowWidth { got: row.len(), want: columns.len() });
    }
    let mut body = BytesMut::with_capacity(16 * row.len());
    body.put_i16(i16::try_from(row.len()).unwrap_or(i16::MAX));
    for (i, (c, v)) in columns.iter().zip(row).enumerate() {
        if *v == Value::Null {
            body.put_i32(-1);
            continue;
        }
        let cell = if is_binary(formats, i)? { binary_cell(c, v)? } else { text_cell(v) };
        body.put_i32(i32::try_from(cell.len()).unwrap_or(i32::MAX));
        body.put_slice(&cell);
    }
    frame(buf, b'D', |b| b.put_slice(&body));
    Ok(())
}

fn text_cell(v: &Value) -> Vec<u8> {
    match v {
        Value::Null => Vec::new(),
        Value::Int(i) => i.to_string().into_bytes(),
        Value::Text(s) => s.as_bytes().to_vec(),
    }
}

fn binary_cell(c: &Column, v: &Value) -> Result<Vec<u8>, ShowError> {
    let bad = || ShowError::BadValue { column: c.name, value: format!("{v:?}") };
    let int = || match v {
        Value::Int(i) => Ok(*i),
        Value::Text(s) => s.trim().parse::<i64>().map_err(|_| bad()),
        Value::Null => Err(bad()),
    };
    Ok(match c.ty {
        ColType::Text => text_cell(v),
        ColType::Int4 => i32::try_from(int()?).map_err(|_| bad())?.to_be_bytes().to_vec(),
        ColType::Int8 => int()?.to_be_bytes().to_vec(),
        ColType::Numeric => numeric_binary(int()?),
        // `boolsend`: one byte, 1 or 0.
        ColType::Bool => match v {
            Value::Text(t) if t == "t" => vec![1],
            Value::Text(t) if t == "f" => vec![0],
            Value::Int(i @ (0 | 1)) => vec![u8::from(*i == 1)],
            _ => return Err(bad()),
        },
    })
}

/// An integer in `numeric`'s binary form (`numeric_send` in `src/backend/utils/adt/numeric.c`):
/// ndigits, weight, sign, dscale, then base-10000 digits, most significant first, trailing
/// zero digits dropped as PostgreSQL drops them.
fn numeric_binary(n: i64) -> Vec<u8> {
    let mut digits = Vec::new();
    let mut rest = n.unsigned_abs();
    while rest > 0 {
        // < 10000, so the cast is lossless.
        digits.push((rest % 10_000) as i16);
        rest /= 10_000;
    }
    digits.reverse();
    // At most five base-10000 digits for a u64, so these fit an i16.
    let weight = digits.len() as i16 - 1;
    while digits.last() == Some(&0) {
        digits.pop();
    }
    let mut out = Vec::with_capacity(8 + 2 * digits.len());
    out.extend_from_slice(&(digits.len() as i16).to_be_bytes());
    out.extend_from_slice(&(if n == 0 { 0 } else { weight }).to_be_bytes());
    out.extend_from_slice(&(if n < 0 { 0x4000u16 } else { 0 }).to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
    for d in digits {
        out.extend_from_slice(&d.to_be_bytes());
    }
    out
}

/// CommandComplete ('C').
pub fn command_complete(buf: &mut BytesMut, tag: &str) {
    frame(buf, b'C', |b| cstring(b, tag));
}

/// A whole result set for a simple Query: RowDescription (text), DataRows, `SHOW`.
pub fn result_set(buf: &mut BytesMut, columns: &[Column], rows: &[Vec<Value>]) -> Result<(), ShowError> {
    // Encoded apart first, so that a bad row leaves `buf` as it was.
    let mut out = BytesMut::new();
    row_description(&mut out, columns, &[])?;
    for row in rows {
        data_row(&mut out, columns, row, &[])?;
    }
    command_complete(&mut out, "SHOW");
    buf.extend_from_slice(&out);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_view_has_unique_column_names() {
        for v in View::ALL {
            let cols = v.columns();
            assert!(!cols.is_empty());
            let mut names: Vec<_> = cols.iter().map(|c| c.name).collect();
            names.sort_unstable();
            names.dedup();
            assert_eq!(names.len(), cols.len(), "{v:?}");
        }
        assert_eq!(POOLS.len(), 17);
        assert_eq!(STATS.len(), 25);
        assert_eq!(SOCKETS.len(), 21);
        assert_eq!(DATABASES.len(), 17);
    }

    #[test]
    fn result_set_bytes() {
        let mut b = BytesMut::new();
        result_set(&mut b, LISTS, &[vec!["pools".into(), Value::Int(3)], vec!["users".into(), Value::Null]])
            .expect("encodes");
        let want: &[u8] = b"T\0\0\0\x35\0\x02list\0\0\0\0\0\0\0\0\0\0\x19\xff\xff\xff\xff\xff\xff\0\0\
items\0\0\0\0\0\0\0\0\0\0\x17\0\x04\xff\xff\xff\xff\0\0\
D\0\0\0\x14\0\x02\0\0\0\x05pools\0\0\0\x013\
D\0\0\0\x13\0\x02\0\0\0\x05users\xff\xff\xff\xff\
C\0\0\0\x09SHOW\0";
        assert_eq!(&b[..], want);
    }

    #[test]
    fn bad_rows_leave_the_buffer_alone() {
        let mut b = BytesMut::new();
        assert_eq!(
            result_set(&mut b, LISTS, &[vec!["x".into()]]),
            Err(ShowError::RowWidth { got: 1, want: 2 })
        );
        assert!(b.is_empty());
        let e = data_row(&mut b, LISTS, &["x".into(), "many".into()], &[1]);
        assert!(matches!(e, Err(ShowError::BadValue { column: "items", .. })));
    }

    #[test]
    fn binary_cells() {
        let mut b = BytesMut::new();
        let cols = &[col("a", I), col("b", ColType::Int8), col("c", N), col("d", S)];
        data_row(
            &mut b,
            cols,
            &[Value::Int(-2), Value::Int(1 << 40), Value::Int(123_450_000), "x".into()],
            &[1],
        )
        .expect("encodes");
        let body = &b[7..];
        assert_eq!(&body[..8], b"\0\0\0\x04\xff\xff\xff\xfe");
        assert_eq!(&body[8..20], &[0, 0, 0, 8, 0, 0, 1, 0, 0, 0, 0, 0]);
        // 123450000 = 1.2345 × 10000²: digits [1, 2345] (0000 dropped), weight 2.
        assert_eq!(&body[20..36], &[0, 0, 0, 12, 0, 2, 0, 2, 0, 0, 0, 0, 0, 1, 0x09, 0x29]);
        assert_eq!(numeric_binary(0), vec![0; 8]);
        assert_eq!(numeric_binary(-5), vec![0, 1, 0, 0, 0x40, 0, 0, 0, 0, 5]);
    }

    #[test]
    fn bool_cells_in_text_and_binary() {
        let cols = &[col("a", B), col("b", B)];
        let mut text = BytesMut::new();
        data_row(&mut text, cols, &[flag(true), flag(false)], &[]).expect("text");
        assert_eq!(&text[7..], b"\0\0\0\x01t\0\0\0\x01f");
        let mut bin = BytesMut::new();
        data_row(&mut bin, cols, &[flag(true), Value::Int(0)], &[1]).expect("binary");
        assert_eq!(&bin[7..], &[0, 0, 0, 1, 1, 0, 0, 0, 1, 0]);
        for bad in [Value::Int(2), "yes".into()] {
            let e = data_row(&mut bin, cols, &[bad, flag(true)], &[1]);
            assert!(matches!(e, Err(ShowError::BadValue { column: "a", .. })), "{e:?}");
        }
        let mut desc = BytesMut::new();
        row_description(&mut desc, &cols[..1], &[]).expect("description");
        // Name, table OID, column number, then type OID 16 and typlen 1.
        assert_eq!(&desc[7..15], b"a\0\0\0\0\0\0\0");
        assert_eq!(&desc[15..21], &[0, 0, 0, 16, 0, 1]);
    }

    #[test]
    fn formats_are_checked() {
        assert_eq!(check_formats(LISTS, &[]), Ok(()));
        assert_eq!(check_formats(LISTS, &[1]), Ok(()));
        assert_eq!(check_formats(LISTS, &[0, 1]), Ok(()));
        assert_eq!(check_formats(LISTS, &[0, 1, 1]), Err(ShowError::Formats { got: 3, want: 2 }));
        assert_eq!(check_formats(LISTS, &[2]), Err(ShowError::UnknownFormat(2)));
    }
}
