//! The one owner of how a server connection leaves a client session and how it is made
//! clean for the next one: [`retire`] (back to the pool only when idle, no cancel in flight and
//! any reset verified, and without settings that act while it is idle; otherwise closed) and
//! the strict reading of a reset's reply. What goes in front of the next client's messages is
//! [`super::handoff`]'s.

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;

use super::server::is_idle_setting;
use super::{cancel_backend, Checkout, ServerConn, ServerParams};
use crate::model::TenantId;
use crate::protocol::backend::tag as be;
use crate::protocol::backend::{parse_parameter_status, txn};
use crate::protocol::frame::{FrameReader, DEFAULT_MAX_MESSAGE};
use crate::protocol::frontend;

use super::handoff::{queue_reseed, CROSS_TENANT_RESET, RESET_TAG};

/// How long a reset or a cancel may take when a connection leaves a session.
pub const CLEANUP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

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
        send_cancel(&addr, pid, secret).await;
        tokio::spawn(async move {
            for wait in CANCEL_RETRIES {
                tokio::time::sleep(wait).await;
                send_cancel(&addr, pid, secret).await;
            }
        });
    }
    retire(co, r).await;
}

/// Sends backend `pid` a cancel, giving up after [`CLEANUP_TIMEOUT`] (a server that does not
/// answer the cancel's connection must not hold what waits for it).
pub async fn send_cancel(addr: &crate::model::UpstreamAddr, pid: i32, secret: i32) {
    let _ = tokio::time::timeout(CLEANUP_TIMEOUT, cancel_backend(addr, pid, secret)).await;
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
    let mut reply = ResetReply::new(tag);
    if let Reply::Custom(r) = &reply.reply {
        frontend::query(&mut out, &format!("SELECT 1 AS \"{}\"", r.token)).map_err(|_| ())?;
    }
    if reply.then.is_some() {
        queue_reseed(&mut out);
    }
    let conn = co.conn();
    conn.forget_unnamed();
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
        if let Some(done) = reply.step(f.tag(), f.body()) {
            break done;
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

/// How a reset's reply is read: pgtenant's own query's, or a configured one's.
#[derive(Debug)]
enum Reply {
    Own(OwnReply),
    Custom(CustomReply),
}

/// The reply to a release's reset ([`reset_session`]), then, for a reset that clears a
/// tenant's session (DISCARD ALL, a configured one), the reseed's behind it (a FunctionCall).
#[derive(Debug)]
struct ResetReply {
    reply: Reply,
    then: Option<OwnReply>,
}

impl ResetReply {
    /// For a reset of pgtenant's whose tag is `tag`, or a configured one (`None`).
    fn new(tag: Option<&'static [u8]>) -> Self {
        let reply = match tag {
            Some(tag) => Reply::Own(OwnReply::new(tag)),
            None => Reply::Custom(CustomReply::new()),
        };
        let reseeds = tag.is_none_or(|t| t == RESET_TAG);
        ResetReply { reply, then: reseeds.then(OwnReply::reseed) }
    }

    /// Reads one server message: `Some(true)` once the reset's reply and the reseed's are
    /// confirmed, `Some(false)` when either failed, `None` while replies are due.
    fn step(&mut self, tag: u8, body: &[u8]) -> Option<bool> {
        let step = match &mut self.reply {
            Reply::Own(r) => r.step(tag, body),
            Reply::Custom(r) => r.step(tag, body),
        };
        match step {
            Some(true) => match self.then.take() {
                Some(next) => {
                    self.reply = Reply::Own(next);
                    None
                }
                None => Some(true),
            },
            other => other,
        }
    }
}

/// The reply to one of pgtenant's own reset queries ([`completion_tag`]): exactly its
/// completion (another command's is a reply the session still owed) and an idle
/// ReadyForQuery; or the reseed's ([`RESEED_REPLIES`]). Asynchronous messages aside
/// (notifications for LISTENs the reset ends belong to the previous client).
#[derive(Debug)]
struct OwnReply {
    expected: Vec<(u8, Option<&'static [u8]>)>,
    /// How many of `expected` came.
    at: usize,
}

impl OwnReply {
    fn new(tag: &'static [u8]) -> Self {
        let expected = vec![(be::COMMAND_COMPLETE, Some(tag)), (be::READY_FOR_QUERY, Some(&b"I"[..]))];
        OwnReply { expected, at: 0 }
    }

    fn reseed() -> Self {
        OwnReply { expected: RESEED_REPLIES.to_vec(), at: 0 }
    }

    /// Reads one server message: `Some(true)` once the last expected one came, `Some(false)`
    /// at any other, `None` while replies are due.
    fn step(&mut self, tag: u8, body: &[u8]) -> Option<bool> {
        if matches!(tag, be::PARAMETER_STATUS | be::NOTICE_RESPONSE | be::NOTIFICATION_RESPONSE) {
            return None;
        }
        match self.expected.get(self.at) {
            Some(&(t, want)) if t == tag && want.is_none_or(|b| b == body) => self.at += 1,
            _ => return Some(false),
        }
        (self.at == self.expected.len()).then_some(true)
    }
}

/// What the reseed behind a release's reset answers (see [`queue_reseed`]).
const RESEED_REPLIES: [(u8, Option<&'static [u8]>); 2] =
    [(be::FUNCTION_CALL_RESPONSE, None), (be::READY_FOR_QUERY, Some(b"I"))];

/// The reply to a configured reset query followed by a marker query (`SELECT 1` as a column
/// named with a random token no client can guess). The server answers in order, so the
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

    fn run_own(tag: &'static [u8], msgs: &[(u8, &[u8])]) -> Option<bool> {
        let mut reply = ResetReply::new(Some(tag));
        msgs.iter().find_map(|(t, b)| reply.step(*t, b))
    }

    #[test]
    fn discard_all_is_confirmed_with_the_reseed_only() {
        let ok: [(u8, &[u8]); 5] = [(b'C', RESET_TAG), (b'S', b"x"), (b'Z', IDLE), (b'V', b""), (b'Z', IDLE)];
        assert_eq!(run_own(RESET_TAG, &ok), Some(true));
        // Without the reseed's reply, not yet; an error or the old reseed's reply (a SELECT's)
        // where it is due, or its ReadyForQuery in a transaction: failed.
        assert_eq!(run_own(RESET_TAG, &ok[..3]), None);
        assert_eq!(run_own(RESET_TAG, &ok[..4]), None);
        assert_eq!(run_own(RESET_TAG, &[&ok[..3], &[(b'E', b"")]].concat()), Some(false));
        assert_eq!(run_own(RESET_TAG, &[&ok[..3], &[(b'1', b"")]].concat()), Some(false));
        assert_eq!(run_own(RESET_TAG, &[&ok[..4], &[(b'Z', b"T")]].concat()), Some(false));
        // A configured reset: the marker's reply, then the reseed's.
        let mut custom = ResetReply::new(None);
        let Reply::Custom(c) = &custom.reply else { panic!("a configured reset's reply") };
        let marker_row = format!("\0\x01{}\0", c.token).into_bytes();
        let marker: [(u8, &[u8]); 4] =
            [(b'T', &marker_row), (b'D', b""), (b'C', b"SELECT 1\0"), (b'Z', IDLE)];
        assert_eq!(marker.iter().find_map(|(t, b)| custom.step(*t, b)), None);
        assert_eq!(ok[3..].iter().find_map(|(t, b)| custom.step(*t, b)), Some(true));
        // CLOSE ALL: its completion and ReadyForQuery, no reseed.
        assert_eq!(run_own(CLOSE_CURSORS_TAG, &[(b'C', CLOSE_CURSORS_TAG), (b'Z', IDLE)]), Some(true));
        assert_eq!(run_own(CLOSE_CURSORS_TAG, &[(b'C', CLOSE_CURSORS_TAG), (b'Z', b"T")]), Some(false));
    }

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

    const CLOSE_CURSORS_TAG: &[u8] = b"CLOSE CURSOR ALL\0";

    /// What DISCARD ALL's reply (with the reseed) should decide, read off the whole list: its
    /// essential messages (asynchronous ones aside) begin with the eight expected ones (bodies
    /// compared for CommandComplete and ReadyForQuery only), else fail at the first other one.
    fn own_oracle(msgs: &[(u8, Vec<u8>)]) -> Option<bool> {
        let want: [(u8, Option<&[u8]>); 4] =
            [(b'C', Some(RESET_TAG)), (b'Z', Some(IDLE)), (b'V', None), (b'Z', Some(IDLE))];
        let essential: Vec<&(u8, Vec<u8>)> =
            msgs.iter().filter(|(t, _)| !matches!(*t, b'N' | b'A' | b'S')).collect();
        for (i, (tag, body)) in want.iter().enumerate() {
            let (t, b) = essential.get(i)?;
            if t != tag || body.is_some_and(|w| w != &b[..]) {
                return Some(false);
            }
        }
        Some(true)
    }

    fn own_msg() -> impl Strategy<Value = (u8, Vec<u8>)> {
        let tag = prop_oneof![4 => proptest::sample::select(b"CZ123DSNAIEV".to_vec()), 1 => any::<u8>()];
        let body = prop_oneof![
            2 => Just(RESET_TAG.to_vec()),
            2 => Just(b"I".to_vec()),
            1 => Just(b"T".to_vec()),
            2 => Just(b"SELECT 1\0".to_vec()),
            1 => proptest::collection::vec(any::<u8>(), 0..8),
        ];
        (tag, body)
    }

    proptest! {
        /// Arbitrary replies confirm a release's DISCARD ALL exactly when they are its
        /// completion, an idle ReadyForQuery and the reseed's two replies, asynchronous
        /// messages aside; never a panic. Half the cases start with the exact list, so
        /// confirmations and near misses (an edit behind it) come up.
        #[test]
        fn arbitrary_replies_confirm_discard_all_only_with_the_reseed(
            exact in any::<bool>(),
            at in 0..5usize,
            msgs in proptest::collection::vec(own_msg(), 0..10),
        ) {
            let mut all: Vec<(u8, Vec<u8>)> = Vec::new();
            if exact {
                all = [(b'C', RESET_TAG), (b'Z', IDLE), (b'V', b"" as &[u8]), (b'Z', IDLE)]
                    .iter()
                    .map(|(t, b)| (*t, b.to_vec()))
                    .collect();
                all.truncate(at);
            }
            all.extend(msgs);
            let view: Vec<(u8, &[u8])> = all.iter().map(|(t, b)| (*t, &b[..])).collect();
            prop_assert_eq!(run_own(RESET_TAG, &view), own_oracle(&all));
        }

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

    }
}
