//! A server connection handed to a client session: whether it needs the cross-tenant reset,
//! what pgtenant queues in front of the client's first messages (the reset, the reseed of
//! `random()`, the session's setup) and the exact replies that confirm them.

use bytes::BytesMut;

use super::server::names_idle_setting;
use super::ServerConn;
use crate::model::TenantId;
use crate::protocol::backend::tag as be;
use crate::protocol::frontend;

/// What a connection that passes to another tenant runs first: it drops prepared statements,
/// portals and cursors, temporary tables, LISTENs, advisory locks, sequence state (`lastval`)
/// and plans, and resets every setting and the role (DISCARD ALL; see
/// <https://www.postgresql.org/docs/current/sql-discard.html>).
pub const CROSS_TENANT_RESET: &str = "DISCARD ALL";

/// Queues what goes with every reset that clears a tenant's session (last in a handoff, and
/// behind a configured reset query): a fresh seed for `random()`, whose state DISCARD ALL
/// keeps, so that a session that seeded it (`setseed()`, `SET seed`) cannot know what the next
/// one draws. pgtenant's own random value, sent as a FunctionCall of `setseed` by its OID
/// ([`frontend::function_call`]): in a statement's text it would show in
/// `pg_stat_activity.query` to every session of the login role, and as a parameter of `SELECT
/// pg_catalog.setseed($1)` the server parses and plans a statement for it: 61,000
/// instructions of a PostgreSQL 15 backend (39 % of a handoff) where the call costs ~3,000.
/// Answered FunctionCallResponse and an idle ReadyForQuery, after which the server flushes:
/// it commits and flushes a handoff's statements before it (see [`queue_setup`]).
pub fn queue_reseed(out: &mut BytesMut) {
    // 53 random bits spread over [-1, 1), the range setseed takes; sent as float8's binary
    // form (IEEE 754, big-endian), exact and with nothing to format.
    let seed = (rand::random::<u64>() >> 11) as f64 / (1u64 << 52) as f64 - 1.0;
    frontend::function_call(out, SETSEED_OID, &seed.to_bits().to_be_bytes());
}

/// `pg_catalog.setseed(double precision)`: built-in functions' OIDs are fixed in PostgreSQL's
/// catalog (`pg_proc.dat`), and a tenant cannot shadow one by name through its search_path.
pub const SETSEED_OID: u32 = 1599;

/// What keeps the previous session's statement timeout from cancelling DISCARD ALL (its
/// timer starts with the statement, before DISCARD ALL resets the setting). A lock timeout
/// needs no guard: DISCARD ALL's RESET ALL restores it before anything in it waits for a lock;
/// a reset that waits too long is bounded by the session instead (`Limit::Reset`). Sent only
/// when the connection may carry a client's timeout (see [`needs_guard`]).
pub const RESET_GUARD: &str = "SET statement_timeout = 0";

/// Whether the reset of `conn` goes behind [`RESET_GUARD`]: a client set a timeout on it
/// (tracked), or ran something that may have set one without a SET (`set_config`, a DO
/// block): see [`bounds_setup`]. Otherwise its statement timeout is the
/// one the connection was opened with, and the guard (a statement of its own, with a
/// ReadyForQuery the server flushes on its own) would cost the server a seventh of the
/// handoff (21,500 of 155,600 instructions in callgrind of a PostgreSQL 15 backend). A
/// timeout set where pgtenant cannot see it (inside a function) that cancels DISCARD ALL
/// fails the reset like any other error: the connection is closed and the client's messages
/// go to another one (the relay's `retry`).
pub fn needs_guard(conn: &ServerConn) -> bool {
    // `settings_unseen`, which `bounds_setup` reads, is set whenever `settings_suspect` is and
    // outlives it.
    bounds_setup(conn)
}

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
/// settings back to the pool's values, nothing of pgtenant's); returns whether the guard was
/// queued ([`needs_guard`]). The guard goes as a simple Query (one ReadyForQuery, swallowed;
/// its failure changes nothing, since DISCARD ALL resets what it sets), DISCARD ALL as an
/// unsynced extended statement ([`frontend::unsynced`]), first in its implicit transaction;
/// the caller queues the setup and the reseed ([`queue_reseed`]) behind it, swallows and
/// checks their replies ([`HANDOFF_REPLIES`]) and may send the client's
/// messages behind it up to the client's first Sync, which a failed reset makes the server
/// skip (the caller holds the rest until the reset's reply is checked). After an
/// ErrorResponse the caller closes the connection and sends the client's messages, which it
/// kept for that, on another connection (the relay's `retry`); when it kept none, or the
/// attempts are used up, the session ends with the error.
pub fn queue_reset(conn: &mut ServerConn, out: &mut BytesMut, params: &[(String, String)]) -> bool {
    let guard = needs_guard(conn);
    if guard {
        // A constant without a NUL: never refused.
        let _ = frontend::query(out, RESET_GUARD);
    }
    frontend::unsynced(out, CROSS_TENANT_RESET);
    // In place: the connection's strings keep their room (a reset per handoff would
    // otherwise allocate two strings a setting).
    conn.vars.truncate(params.len());
    for (slot, (k, v)) in conn.vars.iter_mut().zip(params) {
        slot.0.clone_from(k);
        slot.1.clone_from(v);
    }
    let kept = conn.vars.len();
    conn.vars.extend_from_slice(&params[kept..]);
    conn.idle_setting |= names_idle_setting(&conn.vars);
    conn.vars_fingerprint = 0;
    conn.prepared.clear();
    // The reset's own unnamed statement replaces, then closes, any client's.
    conn.forget_unnamed();
    conn.dirty = false;
    conn.tenant = None;
    conn.settings_suspect = false;
    conn.settings_unseen = false;
    conn.cursors = false;
    guard
}

/// Queues the session's setup (behind a reset, if one is queued): `SET search_path TO …`,
/// `SET application_name TO …` and/or a `SELECT pg_catalog.set_config(…), …` (see
/// `ClientVars::sync_query`), each an unsynced extended statement. Like the reset it is
/// answered without a ReadyForQuery of its own; if it fails (a value the server refuses, a
/// cancel or a timeout landing in it), the server skips every message up to the next Sync,
/// simple queries included, so nothing of the client sent behind it runs without it. What
/// commits it before the client's messages (so that a client statement that fails does not
/// roll it back):
/// - SETs alone (the tenant's search_path, the client's application_name: the usual
///   handoff) are followed by an empty simple query, which commits the implicit transaction
///   and flushes the replies (the server sends unsynced statements' replies only at a Sync, a
///   Flush or a ReadyForQuery), or, behind a reset (`reseed`), by the reseed, which does both.
///   A SET takes no snapshot and these two check their value without the catalogs;
/// - with the SELECT (which takes a snapshot) the statements go between `BEGIN ISOLATION
///   LEVEL READ COMMITTED` and `COMMIT`, then a Flush (or the reseed). With `guard` (see
///   [`bounds_setup`]) the timeouts are lifted for that transaction first ([`SETUP_GUARD`]),
///   so that another client's cannot cancel the setup.
///
/// Returns the [`part`]s queued, whose replies the caller checks ([`reset_step`]).
pub fn queue_setup(
    conn: &mut ServerConn,
    out: &mut BytesMut,
    sets: [Option<&str>; 2],
    select: Option<&str>,
    guard: bool,
    reseed: bool,
) -> u16 {
    // The setup's unnamed statement replaces any client's, and is closed.
    conn.forget_unnamed();
    let [set, app] = sets;
    let queue_sets = |out: &mut BytesMut| {
        let mut parts = 0;
        for (sql, bit) in [(set, part::SET), (app, part::APP)] {
            if let Some(sql) = sql {
                frontend::unsynced(out, sql);
                parts |= bit;
            }
        }
        parts
    };
    // Without the SELECT, no guard: no catalog lookup to wait in, and every timeout the
    // connection carries is this client's own (another client's would be reset by the SELECT).
    if select.is_none() {
        let parts = queue_sets(out);
        if parts == 0 || reseed {
            // Nothing, or the reseed behind it commits and flushes.
            return parts;
        }
        // An empty query: EmptyQueryResponse and ReadyForQuery, nothing parsed.
        let _ = frontend::query(out, "");
        return parts | part::EMPTY;
    }
    let mut parts = part::BEGIN | part::COMMIT;
    frontend::unsynced(out, SETUP_BEGIN);
    if guard {
        for sql in SETUP_GUARD {
            frontend::unsynced(out, sql);
        }
        parts |= part::GUARD;
    }
    parts |= queue_sets(out);
    if let Some(select) = select {
        frontend::unsynced(out, select);
        parts |= part::SELECT;
    }
    frontend::unsynced(out, "COMMIT");
    if !reseed {
        out.extend_from_slice(frontend::FLUSH_MESSAGE);
    }
    parts
}

/// Whether `conn` carries a client's `statement_timeout` or `lock_timeout` (the values in
/// force when the setup runs; another client's, of the tenant, as a rule), which could cancel
/// the setup, or end a wait of its for a lock (`client_encoding`'s check looks up
/// `pg_conversion`), before its SELECT resets them: the next client would get the error
/// of a setting it never made. Called before the setup is worked out. A client since the
/// last cross-tenant reset that may have set one where pgtenant could not see it
/// (`settings_unseen`: set_config, a DO block) counts too: neither the setup nor the next
/// client's SET undoes it, so it stays in force for every client of the tenant after it.
pub fn bounds_setup(conn: &ServerConn) -> bool {
    conn.settings_unseen || TIMEOUTS.iter().any(|k| conn.var(k).is_some_and(|v| v.trim() != "0"))
}

const TIMEOUTS: [&str; 2] = ["statement_timeout", "lock_timeout"];

/// What lifts [`TIMEOUTS`] for the setup's transaction (the setup's SELECT, or the values
/// `conn` had, apply from its COMMIT on): `SET LOCAL`, which looks nothing up in the catalogs
/// (a function call would, and could wait on a lock under the very timeouts it lifts).
const SETUP_GUARD: [&str; 2] = ["SET LOCAL statement_timeout = 0", "SET LOCAL lock_timeout = 0"];

/// How the setup's transaction starts: read committed whatever defaults a previous client of
/// the tenant left (a serializable, read-only, deferrable one's first snapshot would wait for
/// every concurrent serializable read-write transaction to end). Not READ WRITE, which a hot
/// standby refuses; nothing in the setup writes.
const SETUP_BEGIN: &str = "BEGIN ISOLATION LEVEL READ COMMITTED";

/// The parts of a handoff, as bits: which segments of [`HANDOFF_REPLIES`] are due.
pub mod part {
    /// DISCARD ALL ([`super::queue_reset`]).
    pub const RESET: u16 = 1;
    pub const BEGIN: u16 = 2;
    /// The timeouts lifted for the setup ([`super::SETUP_GUARD`]: two statements).
    pub const GUARD: u16 = 4;
    /// `SET search_path TO …`.
    pub const SET: u16 = 8;
    /// `SET application_name TO …`.
    pub const APP: u16 = 16;
    /// `SELECT pg_catalog.set_config(…), …`.
    pub const SELECT: u16 = 32;
    pub const COMMIT: u16 = 64;
    /// The empty query behind SETs alone.
    pub const EMPTY: u16 = 128;
    /// The reseed behind a reset ([`super::queue_reseed`]), last.
    pub const RESEED: u16 = 256;
}

/// What the server answers a handoff's unsynced statements, in order (asynchronous messages
/// aside): the message tag and, for a CommandComplete its command tag, for a ReadyForQuery
/// its status. Each [`part`] is a segment (see [`SEGMENTS`]): a statement's Parse, Bind and
/// Execute replies and the Close of the unnamed statement, the empty query's replies, or the
/// reseed's.
pub const HANDOFF_REPLIES: [(u8, &[u8]); 37] = [
    (be::PARSE_COMPLETE, b""),
    (be::BIND_COMPLETE, b""),
    (be::COMMAND_COMPLETE, RESET_TAG),
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
    (be::COMMAND_COMPLETE, b"SET\0"),
    (be::CLOSE_COMPLETE, b""),
    (be::PARSE_COMPLETE, b""),
    (be::BIND_COMPLETE, b""),
    (be::COMMAND_COMPLETE, b"SET\0"),
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
    (be::FUNCTION_CALL_RESPONSE, b""),
    (be::READY_FOR_QUERY, b"I"),
];

/// Where each [`part`]'s segment of [`HANDOFF_REPLIES`] starts (bit `i` of the mask: segment
/// `i`), and the end.
pub const SEGMENTS: [u8; 10] = [0, 4, 8, 16, 20, 24, 29, 33, 35, 37];

/// Whether an error in place of reply `next` of [`HANDOFF_REPLIES`] leaves the client's
/// messages sent behind the handoff unrun: after each of the handoff's unsynced statements the
/// server skips up to the client's first Sync, but the empty query and the reseed (simple-protocol
/// messages, which only an interrupt or a revoked EXECUTE fails) are followed by the client's
/// messages as usual.
pub fn skips_the_client(next: u8) -> bool {
    next < SEGMENTS[part::EMPTY.trailing_zeros() as usize]
}

/// The first reply at or after `i` that `parts` are due; [`HANDOFF_REPLIES`]' length when none.
pub fn first_due(mut i: u8, parts: u16) -> u8 {
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
pub fn reset_step(next: u8, parts: u16, tag: u8, body: Option<&[u8]>) -> ResetStep {
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Runs `msgs` through [`reset_step`] for a handoff of `parts`: Some(true) done,
    /// Some(false) failed, None still due.
    fn run_parts(parts: u16, msgs: &[(u8, Option<&[u8]>)]) -> Option<bool> {
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

    /// A reset alone (DISCARD ALL and the reseed).
    fn run(msgs: &[(u8, Option<&[u8]>)]) -> Option<bool> {
        run_parts(part::RESET | part::RESEED, msgs)
    }

    /// The reseed's replies: FunctionCallResponse, an idle ReadyForQuery.
    fn reseed() -> Vec<(u8, Option<&'static [u8]>)> {
        vec![(b'V', None), (b'Z', Some(&b"I"[..]))]
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
    fn only_an_error_before_the_empty_query_leaves_the_client_unrun() {
        // Every reply of the reset and of the unsynced setup statements; not the empty query's.
        let empty = SEGMENTS[part::EMPTY.trailing_zeros() as usize];
        assert!((0..empty).all(skips_the_client));
        assert!(!skips_the_client(empty) && !skips_the_client(empty + 1));
        assert_eq!(HANDOFF_REPLIES[usize::from(empty)].0, be::EMPTY_QUERY_RESPONSE);
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
        // With the timeouts lifted: their SELECT right after BEGIN, and only then.
        let guarded = [&setup[..4], &statement(b"SET\0"), &statement(b"SET\0"), &setup[4..]].concat();
        assert_eq!(run_parts(both | part::GUARD, &guarded), Some(true));
        assert_eq!(run_parts(both | part::GUARD, &setup), Some(false));
        assert_eq!(run_parts(both, &guarded), Some(false));
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
        // Both SETs (search_path, application_name): two SET replies, then the empty query's;
        // one SET's replies are not enough, a third is an error.
        let both_sets = part::SET | part::APP | part::EMPTY;
        let two: Vec<(u8, Option<&[u8]>)> =
            [statement(b"SET\0"), statement(b"SET\0"), empty[4..].to_vec()].concat();
        assert_eq!(run_parts(both_sets, &two), Some(true));
        assert_eq!(run_parts(both_sets, &empty), Some(false));
        assert_eq!(run_parts(part::APP | part::EMPTY, &empty), Some(true));
        assert_eq!(run_parts(part::APP | part::EMPTY, &two), Some(false));
        // Behind a reset: DISCARD ALL's replies, the setup's, then the reseed's (which commits
        // and flushes in place of the empty query or the Flush).
        let reset = statement(RESET_TAG);
        let with = both | part::RESET | part::RESEED;
        assert_eq!(run_parts(with, &[reset.clone(), setup.clone(), reseed()].concat()), Some(true));
        assert_eq!(run_parts(with, &[reset.clone(), setup.clone()].concat()), None);
        assert_eq!(run_parts(with, &[reset.clone(), reseed(), setup.clone()].concat()), Some(false));
        let alone_reset = part::SET | part::RESET | part::RESEED;
        assert_eq!(
            run_parts(alone_reset, &[reset.clone(), statement(b"SET\0"), reseed()].concat()),
            Some(true)
        );
        assert_eq!(run_parts(alone_reset, &[reset.clone(), empty.clone()].concat()), Some(false));
        // A reset alone is done after the reseed's; not before it.
        assert_eq!(run(&[reset.clone(), reseed()].concat()), Some(true));
        assert_eq!(run(&reset), None);
        assert_eq!(run(&[&reset[..], &statement(b"SET\0")].concat()), Some(false));
        // The reseed refused (EXECUTE revoked): an error in place of its reply.
        assert_eq!(run(&[&reset[..], &[(b'E', None)]].concat()), Some(false));
        let reseed_at = SEGMENTS[part::RESEED.trailing_zeros() as usize];
        assert!(!skips_the_client(reseed_at), "the reseed, like the empty query, skips nothing");
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
        let ok = [ok, reseed()].concat();
        assert_eq!(run(&ok), Some(true));
        // The reseed of the old form (a SELECT) is not the reseed.
        assert_eq!(run(&[&ok[..6], &statement(b"SELECT 1\0")].concat()), Some(false));
        let wrong_tag: Vec<(u8, Option<&[u8]>)> =
            vec![(b'1', None), (b'2', None), (b'C', Some(b"SELECT 1\0"))];
        assert_eq!(run(&wrong_tag), Some(false));
        assert_eq!(run(&[(b'1', None), (b'E', None)]), Some(false));
        assert_eq!(run(&[(b'Z', None)]), Some(false));
        assert_eq!(run(&[(b'1', None), (b'2', None)]), None);
    }

    /// Mostly the tags a reset's reply has (so the exact sequence comes up), sometimes any byte.
    fn reply_tag() -> impl Strategy<Value = u8> {
        prop_oneof![
            4 => proptest::sample::select(b"123CDINASEVZ".to_vec()),
            1 => any::<u8>(),
        ]
    }

    proptest! {
        /// Arbitrary server messages never confirm a handoff (any mix of reset, SET and
        /// SELECT) unless its replies came in order with the right command tags
        /// (asynchronous messages aside), and never panic. Half the cases are the exact
        /// replies with one message changed, left out or added, so near misses come up.
        #[test]
        fn arbitrary_replies_confirm_only_the_exact_sequence(
            reset in any::<bool>(),
            setup in 0..8u8,
            random in proptest::collection::vec(reply_tag(), 0..24),
            near in any::<bool>(),
            at in any::<usize>(),
            edit in 0..3u8,
            other in reply_tag(),
        ) {
            // setup 0: none; 1: SET and the empty query; 5: both SETs, 6: the
            // application_name SET alone (with the empty query); else BEGIN, SELECT, COMMIT,
            // and SET (3), and the guard (4), and both SETs (7).
            // As the relay queues them: behind a reset the reseed comes last, in place of
            // the empty query.
            let mut parts = if reset { part::RESET | part::RESEED } else { 0 };
            parts |= match setup {
                0 => 0,
                1 if reset => part::SET,
                1 => part::SET | part::EMPTY,
                2 => part::BEGIN | part::SELECT | part::COMMIT,
                3 => part::BEGIN | part::SET | part::SELECT | part::COMMIT,
                4 => part::BEGIN | part::GUARD | part::SET | part::SELECT | part::COMMIT,
                5 if reset => part::SET | part::APP,
                5 => part::SET | part::APP | part::EMPTY,
                6 if reset => part::APP,
                6 => part::APP | part::EMPTY,
                _ => part::BEGIN | part::GUARD | part::SET | part::APP | part::SELECT | part::COMMIT,
            };
            if parts == 0 {
                parts = part::RESET | part::RESEED;
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
