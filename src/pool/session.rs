//! The one owner of how a server connection leaves a client session and how it is made
//! clean for the next one: [`retire`] (back to the pool only when idle, no cancel in flight and
//! any reset verified, and without settings that act while it is idle; otherwise closed),
//! [`queue_reset`] (the DISCARD ALL, checked by the relay, before
//! a connection passes to another tenant) and the strict reading of a reset's reply.

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;

use super::server::{is_idle_setting, names_idle_setting};
use super::{cancel_backend, Checkout, ServerConn, ServerParams};
use crate::model::TenantId;
use crate::protocol::backend::tag as be;
use crate::protocol::backend::{parse_parameter_status, txn};
use crate::protocol::frame::{FrameReader, DEFAULT_MAX_MESSAGE};
use crate::protocol::frontend;

/// How long a reset or a cancel may take when a connection leaves a session.
pub const CLEANUP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// What a connection that passes to another tenant runs first: it drops prepared statements,
/// portals and cursors, temporary tables, LISTENs, advisory locks, sequence state (`lastval`)
/// and plans, and resets every setting and the role (DISCARD ALL; see
/// <https://www.postgresql.org/docs/current/sql-discard.html>).
pub const CROSS_TENANT_RESET: &str = "DISCARD ALL";

/// How a server connection leaves a session.
pub struct Retire {
    /// The server owes nothing and the connection is outside a transaction.
    pub idle: bool,
    /// A cancel for the session may still reach the backend.
    pub cancel: bool,
    /// The reset query to run before reuse, if the session left state behind.
    pub reset: Option<String>,
    pub params: ServerParams,
    pub tenant: TenantId,
}

/// The one way a server connection leaves a client session: back to its pool only when it is
/// idle, no cancel for the session is in flight, and any reset it needs (the reset query, the
/// closing of cursors, the removal of settings that act while idle) succeeded; otherwise
/// closed.
pub async fn retire(mut co: Checkout, r: Retire) {
    if !r.idle || r.cancel {
        // Mid-transaction or mid-query the connection's state is unknown to the next client;
        // with a cancel in flight it could hit the next client's query. Closed (the server
        // rolls back).
        return drop(co);
    }
    if let Some(sql) = &r.reset {
        match tokio::time::timeout(CLEANUP_TIMEOUT, reset_session(&mut co, sql)).await {
            Ok(Ok(())) => {
                forget_unreported(co.conn(), &r.params);
                let conn = co.conn();
                conn.prepared.clear();
                conn.dirty = false;
                if sql.trim().eq_ignore_ascii_case(CROSS_TENANT_RESET) {
                    // Nothing of the tenant is left: any tenant may take it without a reset.
                    conn.tenant = None;
                    conn.cursors = false;
                }
            }
            _ => {
                tracing::info!(tenant = %r.tenant, "reset query failed: closing the server connection");
                return drop(co);
            }
        }
    }
    if co.conn_ref().cursors {
        // A WITH HOLD cursor would outlive the client's transaction: the next client of the
        // tenant could FETCH from it, MOVE or CLOSE it (a pinned client's went with the reset).
        match tokio::time::timeout(CLEANUP_TIMEOUT, reset_session(&mut co, CLOSE_CURSORS)).await {
            Ok(Ok(())) => co.conn().cursors = false,
            _ => {
                tracing::info!(tenant = %r.tenant, "closing cursors failed: closing the server connection");
                return drop(co);
            }
        }
    }
    if acts_while_idle(co.conn_ref()) {
        match tokio::time::timeout(CLEANUP_TIMEOUT, reset_session(&mut co, IDLE_RESET)).await {
            Ok(Ok(())) => {
                let conn = co.conn();
                conn.retain_vars(|k| !is_idle_setting(k));
                conn.vars_fingerprint = 0;
            }
            _ => {
                tracing::info!(tenant = %r.tenant, "resetting idle_session_timeout failed: closing the server connection");
                return drop(co);
            }
        }
    }
    co.release();
}

pub use super::server::IDLE_SETTINGS;

/// What closes the cursors a client may have left (see [`ServerConn::note_cursors`]).
const CLOSE_CURSORS: &str = "CLOSE ALL";

/// What removes [`IDLE_SETTINGS`] before a connection goes back to the pool.
const IDLE_RESET: &str = "RESET idle_session_timeout";

/// Whether `conn` carries a client's value of one of [`IDLE_SETTINGS`], so it must be reset
/// before it goes back to the pool.
#[inline]
pub fn acts_while_idle(conn: &ServerConn) -> bool {
    // Looked up only on a connection where one was ever set (see `ServerConn::idle_setting`).
    conn.idle_setting && IDLE_SETTINGS.iter().any(|s| conn.var(s).is_some_and(|v| v.trim() != "0"))
}

/// [`retire`], cancelling first what still runs on a connection that is not idle, so it
/// does not run on unobserved.
///
/// PostgreSQL ignores a cancel that reaches a backend before it has read the query (one the
/// client sent just before it left), and a statement that writes nothing (`pg_sleep`, a lock
/// wait) would then run on after the connection is closed, holding the session's locks; so
/// is the next of several queries the client left queued. The cancel is therefore sent again
/// after [`CANCEL_RETRIES`] (a backend that ended or moved on ignores it: the key is its own),
/// without keeping the connection, whose close ends a backend waiting for input (a COPY).
pub async fn retire_running(co: Checkout, r: Retire, running: bool) {
    if !r.idle && running {
        let c = co.conn_ref();
        let (addr, pid, secret) = (c.addr.clone(), c.backend_pid, c.backend_secret);
        let _ = tokio::time::timeout(CLEANUP_TIMEOUT, cancel_backend(&addr, pid, secret)).await;
        tokio::spawn(async move {
            for wait in CANCEL_RETRIES {
                tokio::time::sleep(wait).await;
                let _ = tokio::time::timeout(CLEANUP_TIMEOUT, cancel_backend(&addr, pid, secret)).await;
            }
        });
    }
    retire(co, r).await;
}

/// When [`retire_running`] sends its cancel again, each after the one before.
const CANCEL_RETRIES: [std::time::Duration; 2] =
    [std::time::Duration::from_millis(100), std::time::Duration::from_millis(900)];

/// Runs a reset query on a connection, reading until ReadyForQuery and recording the
/// ParameterStatus changes it causes. The reply must be exactly what a successful reset
/// sends and nothing after it; anything else fails it, and the caller closes the connection.
/// pgtenant's own resets (DISCARD ALL, then the reseed; CLOSE ALL; RESET) must complete with
/// their own tag, once. A configured `reset_query` of other statements may return anything but an error or
/// a transaction left open, so a marker query goes behind it (see [`CustomReply`]): a reply
/// the session still owed is then never taken for the reset's.
pub async fn reset_session(co: &mut Checkout, sql: &str) -> Result<(), ()> {
    if sql.trim().is_empty() {
        return Ok(());
    }
    let mut out = BytesMut::new();
    frontend::query(&mut out, sql).map_err(|_| ())?;
    // The tag pgtenant's own resets complete with: another command's completion is a reply the
    // session still owed (a reply model gone wrong), never taken for the reset's.
    let tag = completion_tag(sql);
    let mut custom = match tag {
        Some(_) => None,
        None => {
            let reply = CustomReply::new();
            frontend::query(&mut out, &format!("{} AS \"{}\"", reseed_query(), reply.token))
                .map_err(|_| ())?;
            Some(reply)
        }
    };
    // The replies of pgtenant's own reset, in order: its completion and ReadyForQuery, then
    // for DISCARD ALL the reseed's.
    let mut expected: Vec<(u8, Option<&[u8]>)> = Vec::new();
    if let Some(t) = tag {
        expected.extend([(be::COMMAND_COMPLETE, Some(t)), (be::READY_FOR_QUERY, Some(&b"I"[..]))]);
    }
    if tag == Some(RESET_TAG) {
        frontend::query(&mut out, &reseed_query()).map_err(|_| ())?;
        expected.extend(RESEED_REPLIES);
    }
    let mut at = 0;
    let conn = co.conn();
    conn.stream.write_all(&out).await.map_err(|_| ())?;
    let mut changed = Vec::new();
    let mut reader = FrameReader::new(&mut conn.stream, DEFAULT_MAX_MESSAGE);
    let ok = loop {
        let f = match reader.read_frame().await {
            Ok(Some(f)) => f,
            _ => return Err(()),
        };
        if f.tag() == be::PARAMETER_STATUS {
            changed.extend(parse_parameter_status(f.body()));
        }
        if let Some(reply) = custom.as_mut() {
            match reply.step(f.tag(), f.body()) {
                Some(done) => break done,
                None => continue,
            }
        }
        // Notifications for LISTENs the reset ends belong to the previous client.
        if matches!(f.tag(), be::PARAMETER_STATUS | be::NOTICE_RESPONSE | be::NOTIFICATION_RESPONSE) {
            continue;
        }
        match expected.get(at) {
            Some(&(t, body)) if t == f.tag() && body.is_none_or(|b| b == f.body()) => at += 1,
            _ => break false,
        }
        if at == expected.len() {
            break true;
        }
    };
    let leftover = reader.buffered();
    drop(reader);
    for (k, v) in changed {
        conn.set_var(&k, &v);
    }
    if ok && leftover == 0 {
        Ok(())
    } else {
        Err(())
    }
}

/// What the reseed behind DISCARD ALL answers as a simple query (see [`reseed_query`]).
const RESEED_REPLIES: [(u8, Option<&[u8]>); 4] = [
    (be::ROW_DESCRIPTION, None),
    (be::DATA_ROW, None),
    (be::COMMAND_COMPLETE, Some(b"SELECT 1\0")),
    (be::READY_FOR_QUERY, Some(b"I")),
];

/// The reply to a configured reset query followed by a marker query (the reseed, see
/// [`reseed_query`], as a column named with a random token no client can guess). The server answers in order, so the
/// marker's RowDescription comes after every reply the connection owed; what comes before it
/// may be rows, completions and idle ReadyForQuerys, never an error, a copy or a transaction
/// left open.
#[derive(Debug)]
struct CustomReply {
    token: Box<str>,
    /// Replies of the marker seen: 0 before its RowDescription, then 1, 2, 3.
    marker: u8,
}

impl CustomReply {
    fn new() -> Self {
        let token = format!("pgtenant_reset_{:032x}", rand::random::<u128>()).into();
        CustomReply { token, marker: 0 }
    }

    /// Reads one server message: `Some(true)` once the marker's ReadyForQuery confirms the
    /// reset, `Some(false)` when it failed, `None` while replies are due.
    fn step(&mut self, tag: u8, body: &[u8]) -> Option<bool> {
        if matches!(tag, be::NOTICE_RESPONSE | be::NOTIFICATION_RESPONSE | be::PARAMETER_STATUS) {
            return None;
        }
        let expected = match self.marker {
            0 => {
                return match tag {
                    be::ROW_DESCRIPTION
                        if body.windows(self.token.len()).any(|w| w == self.token.as_bytes()) =>
                    {
                        self.marker = 1;
                        None
                    }
                    be::ROW_DESCRIPTION | be::DATA_ROW | be::EMPTY_QUERY_RESPONSE | be::COMMAND_COMPLETE => {
                        None
                    }
                    be::READY_FOR_QUERY if body == [txn::IDLE] => None,
                    _ => Some(false),
                };
            }
            1 => tag == be::DATA_ROW,
            2 => tag == be::COMMAND_COMPLETE && body == b"SELECT 1\0",
            _ => return Some(tag == be::READY_FOR_QUERY && body == [txn::IDLE]),
        };
        if !expected {
            return Some(false);
        }
        self.marker += 1;
        None
    }
}

/// The CommandComplete tag of a reset query pgtenant knows (DISCARD ALL, CLOSE ALL, RESET of
/// a setting); `None` for another (a configured `reset_query` of several statements).
fn completion_tag(sql: &str) -> Option<&'static [u8]> {
    let sql = sql.trim();
    if sql.eq_ignore_ascii_case(CROSS_TENANT_RESET) {
        Some(RESET_TAG)
    } else if sql.eq_ignore_ascii_case(CLOSE_CURSORS) {
        Some(b"CLOSE CURSOR ALL\0")
    } else if sql.eq_ignore_ascii_case(IDLE_RESET) {
        Some(b"RESET\0")
    } else {
        None
    }
}

/// What goes with every reset (behind DISCARD ALL, and as a configured reset's marker): a
/// fresh seed for `random()`, whose state DISCARD ALL keeps, so that a session that seeded it
/// (`setseed()`, `SET seed`) cannot know what the next one draws. pgtenant's own random value,
/// quoted (no operator of the search_path is looked up for it).
pub fn reseed_query() -> String {
    // 53 random bits spread over [-1, 1), the range setseed takes.
    let seed = (rand::random::<u64>() >> 11) as f64 / (1u64 << 52) as f64 - 1.0;
    format!("SELECT pg_catalog.setseed('{seed}'::pg_catalog.float8)")
}

/// What keeps the previous session's statement timeout from cancelling DISCARD ALL (its
/// timer starts with the statement, before DISCARD ALL resets the setting). A lock timeout
/// needs no guard: DISCARD ALL's RESET ALL restores it before anything in it waits for a lock;
/// a reset that waits too long is bounded by the session instead (`Limit::Reset`).
pub const RESET_GUARD: &str = "SET statement_timeout = 0";

/// Whether `conn` must be reset before `tenant` uses it: another tenant used it last, or a
/// client left session state on it.
pub fn needs_reset(conn: &ServerConn, tenant: &TenantId) -> bool {
    conn.dirty || conn.tenant.as_ref().is_some_and(|t| t != tenant)
}

/// Hands `conn` to client session `client` of `tenant`. When another client ran something
/// that may have changed settings without a SET (set_config, a DO block), the tenant's
/// isolation settings are forgotten so that they are applied afresh.
pub fn hand_over(conn: &mut ServerConn, client: u64, tenant: &TenantId, tenant_vars: &[(String, String)]) {
    if conn.last_client != client && conn.settings_suspect && !tenant_vars.is_empty() {
        conn.settings_suspect = false;
        conn.vars.retain(|(k, _)| !tenant_vars.iter().any(|(t, _)| t.eq_ignore_ascii_case(k)));
        conn.vars_fingerprint = 0;
    }
    conn.last_client = client;
    // The tenant's own connection, as a rule (the idle pick prefers it): nothing to replace.
    if conn.tenant.as_ref() != Some(tenant) {
        conn.tenant = Some(tenant.clone());
    }
}

/// Queues the reset and records the connection as the reset leaves it (its reportable
/// settings back to the pool's values, nothing of pgtenant's). The guard goes as a simple
/// Query (one ReadyForQuery, swallowed; its failure changes nothing, since DISCARD ALL resets
/// what it sets), DISCARD ALL as an unsynced extended statement ([`frontend::unsynced`]): the
/// caller swallows and checks its four replies ([`HANDOFF_REPLIES`]) and may send the client's
/// messages behind it up to the client's first Sync, which a failed reset makes the server
/// skip (the caller holds the rest until the reset's reply is checked; an ErrorResponse ends
/// the session and closes the connection).
pub fn queue_reset(conn: &mut ServerConn, out: &mut BytesMut, params: &[(String, String)]) {
    if frontend::query(out, RESET_GUARD).is_ok() {
        frontend::unsynced(out, CROSS_TENANT_RESET);
        frontend::unsynced(out, &reseed_query());
    }
    conn.vars = params.to_vec();
    conn.idle_setting |= names_idle_setting(&conn.vars);
    conn.vars_fingerprint = 0;
    conn.prepared.clear();
    // The reset's own unnamed statement replaces, then closes, any client's.
    conn.unnamed = (0, 0);
    conn.dirty = false;
    conn.tenant = None;
    conn.settings_suspect = false;
    conn.cursors = false;
}

/// Queues the session's setup (behind a reset, if one is queued): `SET search_path TO …`
/// and/or a `SELECT pg_catalog.set_config(…), …` (see `ClientVars::sync_query`), each an
/// unsynced extended statement. Like the reset it is answered without a ReadyForQuery of its
/// own; if it fails (a value the server refuses, a cancel or a timeout landing in it), the
/// server skips every message up to the next Sync, simple queries included, so nothing of
/// the client sent behind it runs without it. What commits it before the client's messages
/// (so that a client statement that fails does not roll it back):
/// - the SET alone (the tenant's search_path: the usual handoff) is followed by an empty
///   simple query, which commits the implicit transaction and flushes the replies (the
///   server sends unsynced statements' replies only at a Sync, a Flush or a ReadyForQuery);
/// - with the SELECT (which takes a snapshot) the statements go between `BEGIN ISOLATION
///   LEVEL READ COMMITTED` and `COMMIT`, then a Flush.
///
/// Returns the [`part`]s queued, whose replies the caller checks ([`reset_step`]).
pub fn queue_setup(conn: &mut ServerConn, out: &mut BytesMut, set: Option<&str>, select: Option<&str>) -> u8 {
    // The setup's unnamed statement replaces any client's, and is closed.
    conn.unnamed = (0, 0);
    let Some(select) = select else {
        let Some(set) = set else { return 0 };
        frontend::unsynced(out, set);
        // An empty query: EmptyQueryResponse and ReadyForQuery, nothing parsed.
        let _ = frontend::query(out, "");
        return part::SET | part::EMPTY;
    };
    let mut parts = part::BEGIN | part::SELECT | part::COMMIT;
    frontend::unsynced(out, SETUP_BEGIN);
    if let Some(sql) = set {
        frontend::unsynced(out, sql);
        parts |= part::SET;
    }
    frontend::unsynced(out, select);
    frontend::unsynced(out, "COMMIT");
    out.extend_from_slice(frontend::FLUSH_MESSAGE);
    parts
}

/// How the setup's transaction starts: read committed whatever defaults a previous client of
/// the tenant left (a serializable, read-only, deferrable one's first snapshot would wait for
/// every concurrent serializable read-write transaction to end). Not READ WRITE, which a hot
/// standby refuses; nothing in the setup writes.
const SETUP_BEGIN: &str = "BEGIN ISOLATION LEVEL READ COMMITTED";

/// The parts of a handoff, as bits: which segments of [`HANDOFF_REPLIES`] are due.
pub mod part {
    /// DISCARD ALL and the reseed ([`super::queue_reset`]).
    pub const RESET: u8 = 1;
    pub const BEGIN: u8 = 2;
    /// `SET search_path TO …`.
    pub const SET: u8 = 4;
    /// `SELECT pg_catalog.set_config(…), …`.
    pub const SELECT: u8 = 8;
    pub const COMMIT: u8 = 16;
    /// The empty query behind a SET alone.
    pub const EMPTY: u8 = 32;
}

/// What the server answers a handoff's unsynced statements, in order (asynchronous messages
/// aside): the message tag and, for a CommandComplete its command tag, for a ReadyForQuery
/// its status. Each [`part`] is a segment (see [`SEGMENTS`]): a statement's Parse, Bind and
/// Execute replies and the Close of the unnamed statement (two statements for the reset), or
/// the empty query's replies.
pub const HANDOFF_REPLIES: [(u8, &[u8]); 28] = [
    (be::PARSE_COMPLETE, b""),
    (be::BIND_COMPLETE, b""),
    (be::COMMAND_COMPLETE, RESET_TAG),
    (be::CLOSE_COMPLETE, b""),
    (be::PARSE_COMPLETE, b""),
    (be::BIND_COMPLETE, b""),
    (be::DATA_ROW, b""),
    (be::COMMAND_COMPLETE, b"SELECT 1\0"),
    (be::CLOSE_COMPLETE, b""),
    (be::PARSE_COMPLETE, b""),
    (be::BIND_COMPLETE, b""),
    (be::COMMAND_COMPLETE, b"BEGIN\0"),
    (be::CLOSE_COMPLETE, b""),
    (be::PARSE_COMPLETE, b""),
    (be::BIND_COMPLETE, b""),
    (be::COMMAND_COMPLETE, b"SET\0"),
    (be::CLOSE_COMPLETE, b""),
    (be::PARSE_COMPLETE, b""),
    (be::BIND_COMPLETE, b""),
    (be::DATA_ROW, b""),
    (be::COMMAND_COMPLETE, b"SELECT 1\0"),
    (be::CLOSE_COMPLETE, b""),
    (be::PARSE_COMPLETE, b""),
    (be::BIND_COMPLETE, b""),
    (be::COMMAND_COMPLETE, b"COMMIT\0"),
    (be::CLOSE_COMPLETE, b""),
    (be::EMPTY_QUERY_RESPONSE, b""),
    (be::READY_FOR_QUERY, b"I"),
];

/// Where each [`part`]'s segment of [`HANDOFF_REPLIES`] starts (bit `i` of the mask: segment
/// `i`), and the end.
pub const SEGMENTS: [u8; 7] = [0, 9, 13, 17, 22, 26, 28];

/// The first reply at or after `i` that `parts` are due; [`HANDOFF_REPLIES`]' length when none.
pub fn first_due(mut i: u8, parts: u8) -> u8 {
    for (seg, bounds) in SEGMENTS.windows(2).enumerate() {
        if i < bounds[1] {
            if parts & (1 << seg) != 0 {
                return i.max(bounds[0]);
            }
            i = bounds[1];
        }
    }
    SEGMENTS[SEGMENTS.len() - 1]
}

/// The CommandComplete tag of [`CROSS_TENANT_RESET`].
pub const RESET_TAG: &[u8] = b"DISCARD ALL\0";

/// What one server message means for a handoff whose reply `next` of [`HANDOFF_REPLIES`] is
/// due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetStep {
    /// An asynchronous message (notice, notification, parameter status): still due `next`.
    Pass,
    /// The expected reply: the one given is due now.
    Next(u8),
    /// The last expected reply: the reset and setup succeeded.
    Done,
    /// Anything else (an error, a ReadyForQuery, another tag or CommandComplete): it failed.
    Failed,
}

/// Reads one server message (`tag`, and its body where it is a CommandComplete or a
/// ReadyForQuery) while reply `next` of a handoff of `parts` is due (`next` as [`first_due`]
/// gives it).
pub fn reset_step(next: u8, parts: u8, tag: u8, body: Option<&[u8]>) -> ResetStep {
    if matches!(tag, be::NOTICE_RESPONSE | be::NOTIFICATION_RESPONSE | be::PARAMETER_STATUS) {
        return ResetStep::Pass;
    }
    let checked = matches!(tag, be::COMMAND_COMPLETE | be::READY_FOR_QUERY);
    match HANDOFF_REPLIES.get(usize::from(next)) {
        Some((t, want)) if *t == tag && (!checked || body == Some(want)) => {}
        _ => return ResetStep::Failed,
    }
    match first_due(next + 1, parts) {
        n if usize::from(n) >= HANDOFF_REPLIES.len() => ResetStep::Done,
        n => ResetStep::Next(n),
    }
}

/// Drops what a reset query (`DISCARD ALL`) returned to defaults: every setting pgtenant
/// applied that the server does not report.
pub fn forget_unreported(conn: &mut ServerConn, pool_params: &[(String, String)]) {
    conn.vars_fingerprint = 0;
    conn.vars.retain(|(k, _)| pool_params.iter().any(|(p, _)| p.eq_ignore_ascii_case(k)));
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Runs `msgs` through [`reset_step`] for a handoff of `parts`: Some(true) done,
    /// Some(false) failed, None still due.
    fn run_parts(parts: u8, msgs: &[(u8, Option<&[u8]>)]) -> Option<bool> {
        let mut next = first_due(0, parts);
        for (tag, body) in msgs {
            match reset_step(next, parts, *tag, *body) {
                ResetStep::Pass => {}
                ResetStep::Next(n) => next = n,
                ResetStep::Done => return Some(true),
                ResetStep::Failed => return Some(false),
            }
        }
        None
    }

    /// A reset alone.
    fn run(msgs: &[(u8, Option<&[u8]>)]) -> Option<bool> {
        run_parts(part::RESET, msgs)
    }

    /// One statement's replies: Parse, Bind, a row for a SELECT, `tag`, Close.
    fn statement(tag: &'static [u8]) -> Vec<(u8, Option<&'static [u8]>)> {
        let mut replies = vec![(b'1', None), (b'2', None)];
        if tag == b"SELECT 1\0" {
            replies.push((b'D', None));
        }
        replies.extend([(b'C', Some(tag)), (b'3', None)]);
        replies
    }

    #[test]
    fn only_the_exact_replies_confirm_a_setup() {
        let both = part::BEGIN | part::SET | part::SELECT | part::COMMIT;
        let setup: Vec<(u8, Option<&[u8]>)> =
            [statement(b"BEGIN\0"), statement(b"SET\0"), statement(b"SELECT 1\0"), statement(b"COMMIT\0")]
                .concat();
        assert_eq!(run_parts(both, &setup), Some(true));
        // Parameter statuses (a reported setting) and notices pass anywhere.
        let mut chatty = setup.clone();
        chatty.insert(12, (b'S', None));
        chatty.insert(3, (b'N', None));
        assert_eq!(run_parts(both, &chatty), Some(true));
        // Without the SET, or without the SELECT.
        let no_set = [statement(b"BEGIN\0"), statement(b"SELECT 1\0"), statement(b"COMMIT\0")].concat();
        assert_eq!(run_parts(both & !part::SET, &no_set), Some(true));
        assert_eq!(run_parts(both, &no_set), Some(false));
        let no_select = [statement(b"BEGIN\0"), statement(b"SET\0"), statement(b"COMMIT\0")].concat();
        assert_eq!(run_parts(both & !part::SELECT, &no_select), Some(true));
        // The setup refused: an error where its DataRow was due, no ReadyForQuery.
        assert_eq!(run_parts(both, &[&setup[..10], &[(b'E', None)]].concat()), Some(false));
        // A ReadyForQuery (some Sync went first) or the COMMIT missing: not confirmed.
        assert_eq!(run_parts(both, &[&setup[..13], &[(b'Z', None)]].concat()), Some(false));
        assert_eq!(run_parts(both, &setup[..16]), None);
        // A ROLLBACK instead of COMMIT (the transaction failed): failed.
        let rolled = [&setup[..13], &statement(b"ROLLBACK\0")[..]].concat();
        assert_eq!(run_parts(both, &rolled), Some(false));
        // A SET alone, committed by an empty query: its replies, EmptyQueryResponse, an idle
        // ReadyForQuery.
        let alone = part::SET | part::EMPTY;
        let empty: Vec<(u8, Option<&[u8]>)> =
            [statement(b"SET\0"), vec![(b'I', None), (b'S', None), (b'Z', Some(&b"I"[..]))]].concat();
        assert_eq!(run_parts(alone, &empty), Some(true));
        let in_failed: Vec<(u8, Option<&[u8]>)> =
            [statement(b"SET\0"), vec![(b'I', None), (b'Z', Some(&b"E"[..]))]].concat();
        assert_eq!(run_parts(alone, &in_failed), Some(false));
        assert_eq!(run_parts(alone, &[(b'1', None), (b'2', None), (b'E', None)]), Some(false));
        assert_eq!(run_parts(alone, &empty[..4]), None);
        // Behind a reset: DISCARD ALL's and the reseed's replies, then the setup's.
        let reset = [statement(RESET_TAG), statement(b"SELECT 1\0")].concat();
        assert_eq!(run_parts(both | part::RESET, &[reset.clone(), setup.clone()].concat()), Some(true));
        assert_eq!(run_parts(both | part::RESET, &reset), None);
        // A reset alone is done after the reseed's; not before it.
        assert_eq!(run_parts(part::RESET, &[reset.clone(), setup].concat()), Some(true));
        assert_eq!(run_parts(part::RESET, &reset[..4]), None);
        assert_eq!(run_parts(part::RESET, &[&reset[..4], &statement(b"SET\0")].concat()), Some(false));
    }

    #[test]
    fn only_the_exact_replies_confirm_a_reset() {
        let ok: Vec<(u8, Option<&[u8]>)> = vec![
            (b'1', None),
            (b'S', None),
            (b'2', None),
            (b'C', Some(RESET_TAG)),
            (b'N', None),
            (b'3', None),
        ];
        let ok = [ok, statement(b"SELECT 1\0")].concat();
        assert_eq!(run(&ok), Some(true));
        let wrong_tag: Vec<(u8, Option<&[u8]>)> =
            vec![(b'1', None), (b'2', None), (b'C', Some(b"SELECT 1\0"))];
        assert_eq!(run(&wrong_tag), Some(false));
        assert_eq!(run(&[(b'1', None), (b'E', None)]), Some(false));
        assert_eq!(run(&[(b'Z', None)]), Some(false));
        assert_eq!(run(&[(b'1', None), (b'2', None)]), None);
    }

    /// Runs `msgs` through a [`CustomReply`] whose marker column is `token`-named when a
    /// message's body is `None` (a RowDescription then carries the token).
    fn run_custom(msgs: &[(u8, Option<&[u8]>)]) -> Option<bool> {
        let mut reply = CustomReply::new();
        let marker_row = format!("\0\x01{}\0", reply.token).into_bytes();
        for (tag, body) in msgs {
            let body = match (tag, body) {
                (b'T', None) => &marker_row[..],
                (_, Some(b)) => b,
                (_, None) => &[][..],
            };
            if let Some(done) = reply.step(*tag, body) {
                return Some(done);
            }
        }
        None
    }

    const IDLE: &[u8] = b"I";

    #[test]
    fn a_configured_reset_is_confirmed_by_its_marker_only() {
        let marker: [(u8, Option<&[u8]>); 4] =
            [(b'T', None), (b'D', Some(b"\0\x01")), (b'C', Some(b"SELECT 1\0")), (b'Z', Some(IDLE))];
        // `SELECT pg_advisory_unlock_all(); RESET ALL`, then the marker.
        let mut ok: Vec<(u8, Option<&[u8]>)> = vec![
            (b'T', Some(b"\0\x01unlock\0")),
            (b'D', Some(b"")),
            (b'C', Some(b"SELECT 1\0")),
            (b'S', Some(b"")),
            (b'C', Some(b"RESET\0")),
            (b'Z', Some(IDLE)),
        ];
        ok.extend(marker);
        assert_eq!(run_custom(&ok), Some(true));
        // Replies the session still owed come first: taken, and the marker still confirms.
        let mut stale: Vec<(u8, Option<&[u8]>)> = vec![(b'C', Some(b"SET\0")), (b'Z', Some(IDLE))];
        stale.extend(&ok);
        assert_eq!(run_custom(&stale), Some(true));
        // Without the marker's reply nothing is confirmed, however many ReadyForQuerys.
        assert_eq!(run_custom(&ok[..ok.len() - 1]), None);
        assert_eq!(run_custom(&[(b'C', Some(b"RESET\0")), (b'Z', Some(IDLE)), (b'Z', Some(IDLE))]), None);
        // An error, a transaction left open, a copy: failed.
        assert_eq!(run_custom(&[(b'E', Some(b""))]), Some(false));
        assert_eq!(run_custom(&[(b'C', Some(b"BEGIN\0")), (b'Z', Some(b"T"))]), Some(false));
        assert_eq!(run_custom(&[(b'H', Some(b""))]), Some(false));
        // The marker's reply must be exact.
        assert_eq!(run_custom(&[(b'T', None), (b'C', Some(b"SELECT 1\0"))]), Some(false));
        assert_eq!(run_custom(&[(b'T', None), (b'D', Some(b"")), (b'C', Some(b"SELECT 2\0"))]), Some(false));
        assert_eq!(
            run_custom(&[(b'T', None), (b'D', Some(b"")), (b'C', Some(b"SELECT 1\0")), (b'Z', Some(b"E"))]),
            Some(false)
        );
    }

    /// Mostly the tags a reset's reply has (so the exact sequence comes up), sometimes any byte.
    fn reply_tag() -> impl Strategy<Value = u8> {
        prop_oneof![
            4 => proptest::sample::select(b"123CDINASEZ".to_vec()),
            1 => any::<u8>(),
        ]
    }

    /// A server message for [`run_custom`]: `None` bodies make a RowDescription the marker's.
    fn custom_msg() -> impl Strategy<Value = (u8, Option<Vec<u8>>)> {
        let tag = prop_oneof![4 => proptest::sample::select(b"TDCZINASEHG".to_vec()), 1 => any::<u8>()];
        let body = prop_oneof![
            2 => Just(None),
            1 => Just(Some(b"I".to_vec())),
            1 => Just(Some(b"T".to_vec())),
            1 => Just(Some(b"SELECT 1\0".to_vec())),
            1 => proptest::collection::vec(any::<u8>(), 0..8).prop_map(Some),
        ];
        (tag, body)
    }

    /// What a configured reset's reply should decide, read off the whole list: the
    /// essential messages (asynchronous ones aside) up to the marker's RowDescription may be
    /// rows, completions, empty queries and idle ReadyForQuerys; then exactly DataRow,
    /// `SELECT 1` and an idle ReadyForQuery.
    fn custom_oracle(msgs: &[(u8, Option<&[u8]>)]) -> Option<bool> {
        let essential: Vec<&(u8, Option<&[u8]>)> =
            msgs.iter().filter(|(t, _)| !matches!(*t, b'N' | b'A' | b'S')).collect();
        let Some(at) = essential.iter().position(|(t, b)| *t == b'T' && b.is_none()) else {
            let bad = essential.iter().any(|(t, b)| {
                !matches!(*t, b'T' | b'D' | b'I' | b'C' | b'Z') || (*t == b'Z' && *b != Some(IDLE))
            });
            return bad.then_some(false);
        };
        let before_ok = essential[..at]
            .iter()
            .all(|(t, b)| matches!(*t, b'T' | b'D' | b'I' | b'C') || (*t == b'Z' && *b == Some(IDLE)));
        if !before_ok {
            return Some(false);
        }
        let want: [(u8, Option<&[u8]>); 3] = [(b'D', None), (b'C', Some(b"SELECT 1\0")), (b'Z', Some(IDLE))];
        for (i, (tag, body)) in want.iter().enumerate() {
            let (t, b) = essential.get(at + 1 + i)?;
            if t != tag || (body.is_some() && b != body) {
                return Some(false);
            }
        }
        Some(true)
    }

    proptest! {
        /// Arbitrary replies confirm a configured reset exactly when they hold the marker's
        /// reply after nothing but rows, completions and idle ReadyForQuerys; an error, a copy
        /// or an open transaction fails it; never a panic. Half the cases carry the marker's
        /// exact reply between random messages, so confirmations come up.
        #[test]
        fn arbitrary_replies_confirm_a_configured_reset_only_through_its_marker(
            before in proptest::collection::vec(custom_msg(), 0..8),
            marked in any::<bool>(),
            after in proptest::collection::vec(custom_msg(), 0..4),
        ) {
            let mut msgs = before;
            if marked {
                msgs.extend([
                    (b'T', None),
                    (b'D', Some(vec![0, 1])),
                    (b'N', Some(vec![])),
                    (b'C', Some(b"SELECT 1\0".to_vec())),
                    (b'Z', Some(b"I".to_vec())),
                ]);
            }
            msgs.extend(after);
            let view: Vec<(u8, Option<&[u8]>)> = msgs.iter().map(|(t, b)| (*t, b.as_deref())).collect();
            prop_assert_eq!(run_custom(&view), custom_oracle(&view));
        }

        /// Arbitrary server messages never confirm a handoff (any mix of reset, SET and
        /// SELECT) unless its replies came in order with the right command tags
        /// (asynchronous messages aside), and never panic. Half the cases are the exact
        /// replies with one message changed, left out or added, so near misses come up.
        #[test]
        fn arbitrary_replies_confirm_only_the_exact_sequence(
            reset in any::<bool>(),
            setup in 0..4u8,
            random in proptest::collection::vec(reply_tag(), 0..24),
            near in any::<bool>(),
            at in any::<usize>(),
            edit in 0..3u8,
            other in reply_tag(),
        ) {
            // setup 0: none; 1: SET and the empty query; else BEGIN, SELECT, COMMIT, and SET
            // (3).
            let mut parts = if reset { part::RESET } else { 0 };
            parts |= match setup {
                0 => 0,
                1 => part::SET | part::EMPTY,
                2 => part::BEGIN | part::SELECT | part::COMMIT,
                _ => part::BEGIN | part::SET | part::SELECT | part::COMMIT,
            };
            if parts == 0 {
                parts = part::RESET;
            }
            // The oracle's list: the segments of the parts, read off SEGMENTS directly.
            let exact: Vec<(u8, &[u8])> = SEGMENTS
                .windows(2)
                .enumerate()
                .filter(|(seg, _)| parts & (1 << seg) != 0)
                .flat_map(|(_, b)| HANDOFF_REPLIES[usize::from(b[0])..usize::from(b[1])].iter().copied())
                .collect();
            let msgs: Vec<(u8, &[u8])> = if near {
                let mut m = exact.clone();
                let i = at % (m.len() + 1);
                match edit {
                    0 if i < m.len() => m[i].0 = other,
                    1 if i < m.len() => { m.remove(i); }
                    _ => m.insert(i, (other, b"SELECT 1\0")),
                }
                m
            } else {
                random.iter().map(|t| (*t, &b"COMMIT\0"[..])).collect()
            };
            let checked = |t: u8| matches!(t, b'C' | b'Z');
            let view: Vec<(u8, Option<&[u8]>)> =
                msgs.iter().map(|(t, b)| (*t, checked(*t).then_some(*b))).collect();
            let outcome = run_parts(parts, &view);
            let essential: Vec<(u8, &[u8])> = msgs
                .iter()
                .filter(|(t, _)| !matches!(*t, b'N' | b'A' | b'S'))
                .map(|(t, b)| (*t, if checked(*t) { *b } else { &b""[..] }))
                .collect();
            let want: Vec<(u8, &[u8])> =
                exact.iter().map(|(t, b)| (*t, if checked(*t) { *b } else { &b""[..] })).collect();
            let confirmed = essential.len() >= want.len() && essential[..want.len()] == want[..];
            prop_assert_eq!(outcome == Some(true), confirmed);
        }
    }
}
