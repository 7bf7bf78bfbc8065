//! Staging client frames onto a server connection in transaction mode: statement names
//! rewritten to pgtenant's, statements and portals the client does not have refused through
//! probes the server answers, refusals of what cannot be pooled, and the session SETs of the
//! current transaction ([`SetTracking`]). The relay ([`super::relay`]) owns the sockets and
//! the reply model; this module decides what each frame becomes.

mod reset;
mod sets;

pub(super) use sets::SetTracking;

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::classify::{classify, Class, Marks, Refusal};
use super::meter::Meter;
use super::pipeline::{Action, Kind, Pipeline};
use super::restore;
use super::setcmd::SetCmd;
use super::statements::{
    absent_portal, absent_statement, feature_refusal, prepare_refusal, probe_duplicate, probe_statement,
    Lookup, Portal, Statements, MAX_CLIENT_STATEMENTS, MAX_CLIENT_STATEMENT_BYTES,
};
use super::statements::{Bound, Effect};
use super::vars::ClientVars;
use crate::config::SessionFeatures;
use crate::pool::ServerConn;
use crate::protocol::backend::cstr;
use crate::protocol::frame::HEADER_LEN;
use crate::protocol::frontend::tag as fe;
use crate::protocol::frontend::target::{PORTAL, STATEMENT};
use crate::protocol::frontend::{
    bind_parts, execute_portal, invalid_utf8_name, names_are_ascii, parse_frame, query_frame,
    reads_names_as_utf8, rename, rename_into, target_parts,
};
use crate::protocol::{PgError, SqlState};

/// Notes on `conn` what a statement about to run there may leave for the next client: the
/// isolation setting is applied afresh after settings changed without a SET tag; a WITH HOLD
/// cursor (also one a DO block or procedure declares, or one the pin policy did not keep)
/// is closed; a temporary object, or whatever Unicode-escaped names may hide, goes with a
/// reset.
#[inline(always)]
fn mark(conn: &mut ServerConn, marks: Marks) {
    if marks.settings {
        conn.suspect_settings();
    }
    if marks.cursors {
        conn.note_cursors();
    }
    if marks.state {
        conn.mark_dirty();
    }
}

/// Settles what messages did once the server completed (`done`) or failed or skipped them
/// (`undo`, undone last first): the client's names and the statements on `conn`.
pub(super) fn apply_effects(
    statements: &mut Statements,
    mut conn: Option<&mut ServerConn>,
    sets: &mut SetTracking,
    undo: Vec<Effect>,
    done: Vec<Effect>,
) {
    for e in &done {
        if let (Effect::ServerStatement(name), Some(conn)) = (e, conn.as_deref_mut()) {
            conn.prepared_mut().answered(name);
        }
        statements.settle(e, true);
    }
    for e in undo.iter().rev() {
        match e {
            Effect::ServerStatement(name) => {
                if let Some(conn) = conn.as_deref_mut() {
                    conn.prepared_mut().remove(name);
                    conn.prepared_mut().answered(name);
                }
            }
            Effect::UnnamedParse => {
                // Its SET is not what a Bind of the unnamed statement runs (untracked).
                sets.unnamed = None;
                statements.settle(e, false);
            }
            _ => statements.settle(e, false),
        }
    }
}

/// Staging one whole client frame onto a server connection.
pub(super) struct Stage<'a> {
    pub(super) out: &'a mut BytesMut,
    pub(super) pipeline: &'a mut Pipeline,
    pub(super) statements: &'a mut Statements,
    pub(super) conn: &'a mut ServerConn,
    pub(super) search_path: &'a str,
    /// The client's settings and its tenant's, which a reset it runs takes from the server
    /// connection (see [`super::restore`]).
    pub(super) vars: &'a ClientVars,
    pub(super) tenant_vars: &'a [(String, String)],
    pub(super) sets: &'a mut SetTracking,
    pub(super) pinned: &'a mut bool,
    pub(super) policy: SessionFeatures,
    /// Where the Parse messages that prepare pgtenant's statements are counted.
    pub(super) meter: &'a mut Meter,
    /// The client session's id (whose unnamed statement a server connection holds).
    pub(super) session: u64,
    /// The frame [`Stage::rewrite`] staged last is a Parse or a Bind of a named statement
    /// (for the meter: read here, not again from the frame).
    pub(super) names_statement: bool,
    /// The Query or Parse [`Stage::rewrite`] staged last has a statement starting with COPY.
    pub(super) copies: bool,
}

impl Stage<'_> {
    pub(super) fn forward(&mut self, tag: u8, frame: &[u8]) {
        let target = (tag == fe::DESCRIBE).then(|| target_parts(frame).map(|(k, _)| k)).flatten();
        self.pipeline.push(Kind::of(tag, target), Action::Forward);
        self.out.extend_from_slice(frame);
    }

    /// Session mode: the client's messages go as they are, except an Execute of the unnamed
    /// portal that no Bind of it made since a simple Query (or one not answered yet from an
    /// earlier Sync batch): answered with 34000, as PostgreSQL answers it, where PostgreSQL
    /// 15 could crash (see `statements::UnnamedPortal`). Whether the client has one is
    /// followed as in transaction mode.
    pub(super) fn forward_session(&mut self, tag: u8, frame: &[u8]) {
        if self.vars.resets_matter(self.tenant_vars) && self.session_reset(tag, frame) {
            return;
        }
        match tag {
            fe::QUERY => self.statements.simple_query(),
            fe::SYNC => self.statements.sync(),
            fe::BIND if bind_parts(frame).is_some_and(|(portal, _, _)| portal.is_empty()) => {
                let effect = self.statements.bind_portal(b"", Bound::Bind);
                self.pipeline.push_effect(Kind::Bind, Action::Forward, effect.into_iter().collect());
                self.out.extend_from_slice(frame);
                return;
            }
            fe::EXECUTE
                if execute_portal(frame).is_some_and(<[u8]>::is_empty)
                    && self.statements.executes_portal(b"") != Portal::Owned =>
            {
                self.fail_with(PgError::no_such_portal(b""), true);
                return;
            }
            _ => {}
        }
        self.forward(tag, frame);
    }

    /// A Close the server answers for pgtenant: of a name that never exists, so the server
    /// answers CloseComplete exactly where it would have answered the client's Close (or
    /// skips it, or fails a COPY on it), and the client's statement stays on the server for
    /// others.
    fn close_absent(&mut self, portal: bool, effect: Vec<Effect>) {
        let (target, name) = if portal { (PORTAL, absent_portal()) } else { (STATEMENT, absent_statement()) };
        self.out.extend_from_slice(&rename(fe::CLOSE, &[target], name.as_bytes(), &[]));
        self.pipeline.push_effect(Kind::Close, Action::Forward, effect);
    }

    /// An injected Describe that fails on the server (so the server skips to Sync exactly as
    /// it would for the client's message), its error replaced by `error`.
    fn fail_with(&mut self, error: PgError, portal: bool) {
        let (target, name, kind, code) = if portal {
            (PORTAL, absent_portal(), Kind::DescribePortal, SqlState::InvalidCursorName.code())
        } else {
            (STATEMENT, absent_statement(), Kind::DescribeStatement, SqlState::InvalidSqlStatementName.code())
        };
        self.out.extend_from_slice(&rename(fe::DESCRIBE, &[target], name.as_bytes(), &[]));
        let error = Bytes::from(error.to_bytes());
        self.pipeline.push(kind, Action::probe(code, error));
    }

    /// Transaction mode: named statements get pgtenant's content-keyed names; a statement the
    /// server connection lacks is prepared there first (its ParseComplete swallowed). Names
    /// the client does not have are never sent: the client gets PostgreSQL's error, raised
    /// where the server would raise it. Returns false when the message must wait for replies
    /// to earlier ones (see [`Lookup::Wait`]).
    pub(super) fn rewrite(&mut self, tag: u8, frame: &[u8]) -> bool {
        tracing::trace!(conn = self.conn.backend_pid(), tag = %(tag as char), len = frame.len(), "client message");
        // Whatever could drop statements may have completed (or been skipped).
        self.pipeline.settle_barrier(self.statements);
        if self.pipeline.has_effects() {
            // What the server skipped as it was staged (behind an error) is settled before the
            // next message looks up a name.
            let (undo, done) = self.pipeline.take_effects();
            apply_effects(self.statements, Some(&mut *self.conn), self.sets, undo, done);
        }
        self.names_statement = false;
        self.copies = false;
        if self.name_not_utf8(tag, frame) {
            return true;
        }
        match tag {
            fe::PARSE => {
                self.names_statement = frame.get(HEADER_LEN).is_some_and(|&b| b != 0);
                return self.parse(frame);
            }
            fe::BIND => {
                let Some((portal, stmt, rest)) = bind_parts(frame) else {
                    self.forward(tag, frame);
                    return true;
                };
                self.names_statement = !stmt.is_empty();
                // The portal is the client's only if its Bind reaches the server: a name a
                // refused Bind gave may be another client's WITH HOLD cursor there.
                if stmt.is_empty() {
                    match self.unnamed_owned().map(|owned| owned || self.parse_unnamed_again()) {
                        None => return false,
                        Some(true) => {
                            self.sets.bound = self
                                .sets
                                .unnamed
                                .as_ref()
                                .map(|set| Box::new((portal.into(), SetCmd::clone(set))));
                            let marks = self.statements.bind_declares(portal, None);
                            mark(self.conn, marks);
                            if marks.drops {
                                // Names behind its Execute wait for its verdict.
                                self.statements.raise_barrier(false);
                            }
                            let portal = self.statements.bind_portal(portal, Bound::Bind);
                            self.out.extend_from_slice(frame);
                            self.pipeline.push_effect(
                                Kind::Bind,
                                Action::Forward,
                                portal.into_iter().collect(),
                            );
                        }
                        Some(false) => self.refuse_bind(PgError::no_such_statement(stmt)),
                    }
                    return true;
                }
                self.sets.bound = None;
                let prepared = match self.statements.lookup(stmt) {
                    Lookup::Wait => return false,
                    Lookup::Unknown => {
                        self.refuse_bind(PgError::no_such_statement(stmt));
                        return true;
                    }
                    Lookup::Known(p) => p,
                };
                if self.creation_unanswered(&prepared.server_name) {
                    return false;
                }
                self.sets.bound = prepared.set.clone().map(|set| Box::new((portal.into(), set)));
                self.statements.bind_declares(portal, Some(&prepared.declares));
                // What its Execute may leave, on this connection (see `note`).
                mark(self.conn, prepared.marks);
                if prepared.marks.drops {
                    // Names behind its Execute wait for its verdict.
                    self.statements.raise_barrier(false);
                }
                self.ensure(&prepared.server_name, &prepared.parse);
                let effect = self.statements.bind_portal(portal, Bound::Bind);
                // Rewritten straight into the server-bound buffer (no message allocated).
                let name = prepared.server_name.as_bytes();
                rename_into(self.out, fe::BIND, &[portal, b"\0"], name, rest);
                self.pipeline.push_effect(Kind::Bind, Action::Forward, effect.into_iter().collect());
            }
            fe::DESCRIBE | fe::CLOSE => {
                let Some((target, name)) = target_parts(frame) else {
                    // PostgreSQL fails it with 08P01 before using the name.
                    self.forward(tag, frame);
                    return true;
                };
                if target == PORTAL {
                    match self.statements.owns_portal(name) {
                        Portal::Wait => return false,
                        Portal::Owned => self.forward(tag, frame),
                        Portal::Unknown if tag == fe::DESCRIBE => {
                            self.fail_with(PgError::no_such_portal(name), true)
                        }
                        // Closing a portal that does not exist is no error.
                        Portal::Unknown => self.close_absent(true, Vec::new()),
                    }
                    return true;
                }
                if name.is_empty() {
                    if tag == fe::CLOSE {
                        // PostgreSQL drops the client's unnamed statement (if it has one).
                        self.statements.unnamed_dropped();
                    }
                    let again = |st: &mut Self| tag == fe::DESCRIBE && st.parse_unnamed_again();
                    match self.unnamed_owned().map(|owned| owned || again(self)) {
                        None => return false,
                        Some(true) => self.forward(tag, frame),
                        // The unnamed statement on the server is not the client's: closing
                        // what does not exist is no error, and another's stays.
                        Some(false) if tag == fe::CLOSE => self.close_absent(false, Vec::new()),
                        Some(false) => self.fail_with(PgError::no_such_statement(name), false),
                    }
                    return true;
                }
                let prepared = match self.statements.lookup(name) {
                    Lookup::Wait => return false,
                    Lookup::Unknown if tag == fe::CLOSE => {
                        self.close_absent(false, Vec::new());
                        return true;
                    }
                    Lookup::Unknown => {
                        self.fail_with(PgError::no_such_statement(name), false);
                        return true;
                    }
                    Lookup::Known(p) => p,
                };
                if tag == fe::CLOSE {
                    // The server keeps the statement for other clients (and this one, should
                    // it prepare the same again); only the client's name goes.
                    let effect = self.statements.close(name);
                    self.close_absent(false, effect.into_iter().collect());
                    return true;
                }
                if self.creation_unanswered(&prepared.server_name) {
                    return false;
                }
                self.ensure(&prepared.server_name, &prepared.parse);
                rename_into(self.out, fe::DESCRIBE, &[&[STATEMENT]], prepared.server_name.as_bytes(), &[]);
                self.pipeline.push(Kind::DescribeStatement, Action::Forward);
            }
            fe::EXECUTE => {
                let Some(portal) = execute_portal(frame) else {
                    // PostgreSQL fails it with 08P01 before running anything.
                    self.statements.execute();
                    self.forward(tag, frame);
                    return true;
                };
                match self.statements.executes_portal(portal) {
                    Portal::Owned => {}
                    Portal::Wait => return false,
                    Portal::Unknown => {
                        self.fail_with(PgError::no_such_portal(portal), true);
                        return true;
                    }
                }
                self.statements.execute();
                self.out.extend_from_slice(frame);
                // The SET and cursors of the statement bound last are this Execute's only if
                // it runs that portal: an earlier portal runs another statement (its SET
                // then counts as untracked, and its cursors are not the client's).
                let set = match self.sets.bound.take() {
                    Some(bound) if *bound.0 == *portal => Some(Box::new(bound.1)),
                    other => {
                        self.sets.bound = other;
                        None
                    }
                };
                let restore =
                    set.as_deref().and_then(|set| Some((self.restores(set)?, *set == SetCmd::DiscardAll)));
                self.pipeline.push_set(Kind::Execute, set);
                // A DECLARE carried by the extended protocol makes its cursor here: the name
                // is the client's once this Execute completes (not if it fails or is skipped).
                let declares = self.statements.take_bound_declares(portal);
                if !declares.is_empty() {
                    let effects: Vec<Effect> = declares
                        .iter()
                        .filter_map(|c| self.statements.bind_portal(c, Bound::DeclareExecute))
                        .collect();
                    self.pipeline.attach_effects(effects);
                }
                if let Some((settings, commit)) = restore {
                    restore::queue_unsynced(self.out, self.pipeline, &settings, commit);
                }
            }
            fe::SYNC => {
                self.statements.sync();
                self.forward(tag, frame);
            }
            fe::QUERY => {
                if self.statements.barrier_pending() {
                    return false;
                }
                self.statements.simple_query();
                // The server drops the unnamed statement: another client's is parsed again
                // for it where it binds it next (the server answers for the client's own).
                self.unnamed_not_anothers();
                let sql = &frame[HEADER_LEN..];
                let class = classify(sql);
                self.copies = class.copy();
                let refused = self.refusal_for(&class).and_then(|sql| query_frame(&sql));
                // A reset (rare): only a flag here; what it takes is worked out behind `note`.
                let mut resets = false;
                match refused {
                    Some(query) => {
                        self.out.extend_from_slice(&query);
                        self.pipeline.push(Kind::Query, Action::Forward);
                    }
                    None => {
                        let set = frame
                            .get(HEADER_LEN..frame.len() - 1)
                            .and_then(|sql| class.set(sql))
                            .map(Box::new);
                        resets = set.as_deref().is_some_and(|set| !matches!(set, SetCmd::Set { .. }));
                        self.out.extend_from_slice(frame);
                        self.pipeline.push_set(Kind::Query, set);
                    }
                }
                self.note(&class, sql, true);
                if resets {
                    self.restore_behind_query(frame);
                }
            }
            fe::FUNCTION_CALL => {
                // Any function by its OID, with no text to classify (set_config, or one that
                // declares a cursor): treated as a DO block or CALL is.
                mark(self.conn, Marks { cursors: true, settings: true, ..Marks::default() });
                self.forward(tag, frame);
            }
            _ => self.forward(tag, frame),
        }
        true
    }

    /// A name the server would not read (not UTF-8 where the client's encoding is): PostgreSQL
    /// fails the message with 22021 as it reads it, before it looks up or changes anything the
    /// message names (see [`invalid_utf8_name`]), and skips to Sync. The client gets that
    /// error where its message stands, through a probe the server fails (its replies counted
    /// as for any refused name); nothing of the client's is recorded. Names that are ASCII
    /// (nearly all) cost one inline look at their bytes ([`names_are_ascii`]: none for the
    /// unnamed statement and portal); they are read out of line only past it (an inline
    /// search had `rewrite` no longer inlined: +5 % instructions per `-M extended`
    /// transaction; checking the whole frame's bytes, +2 %).
    #[inline]
    fn name_not_utf8(&mut self, tag: u8, frame: &[u8]) -> bool {
        !names_are_ascii(tag, frame) && self.name_not_utf8_slow(tag, frame)
    }

    #[cold]
    #[inline(never)]
    fn name_not_utf8_slow(&mut self, tag: u8, frame: &[u8]) -> bool {
        let Some(bytes) = invalid_utf8_name(tag, frame) else { return false };
        if !reads_names_as_utf8(self.conn.var("client_encoding"), self.conn.var("server_encoding")) {
            return false;
        }
        let e = PgError::invalid_utf8(bytes);
        if tag == fe::BIND {
            // No portal is made, as for a statement the client does not have.
            self.refuse_bind(e);
        } else {
            self.fail_with(e, false);
        }
        true
    }

    /// A Bind pgtenant answers with `e` itself: it makes no portal, and its SET is not noted.
    fn refuse_bind(&mut self, e: PgError) {
        self.sets.bound = None;
        self.statements.bind_nothing();
        self.fail_with(e, false);
    }

    /// Whether the unnamed statement on this server connection is the client's, so a Bind,
    /// Describe or Close of it may reach the server: it is if the client parsed one since its
    /// last Sync (the server skips or fails that Parse and the message together), or if the
    /// client's latest unnamed Parse completed on this connection and no other client's has
    /// since (the connection records whose it holds). `None` while a Parse of the client's
    /// staged before a Sync awaits its reply: the message waits for it. PostgreSQL keeps the
    /// unnamed statement until the next unnamed Parse or simple Query, across transactions,
    /// so without this check a client could run the statement a previous holder of the
    /// connection left there.
    #[inline(always)]
    fn unnamed_owned(&self) -> Option<bool> {
        if self.statements.unnamed_staged() {
            return Some(true);
        }
        if self.pipeline.unnamed_pending() {
            return None;
        }
        Some(self.conn.unnamed_owner() == (self.session, self.statements.unnamed_latest()))
    }

    /// A message that drops the unnamed statement on the server (unless the server skips it)
    /// was staged: if the statement is another client's, the connection no longer holds it
    /// for that client (the client's own stays recorded: the server answers for it, skipped
    /// or not, as PostgreSQL would).
    fn unnamed_not_anothers(&mut self) {
        if self.conn.unnamed_owner().0 != self.session {
            self.conn.forget_unnamed();
        }
    }

    /// The unnamed statement on this connection is not the client's: its latest unnamed Parse
    /// goes again, as the client sent it, its reply swallowed (an error reaches the client,
    /// for the message that needed it), if the client has one PostgreSQL would still keep
    /// (see `Statements::unnamed_again`); false if not.
    fn parse_unnamed_again(&mut self) -> bool {
        let Some(parse) = self.statements.unnamed_again() else { return false };
        self.out.extend_from_slice(parse);
        // A client Parse behind it is not the one its completion reports.
        self.statements.unnamed_again_staged();
        // Nobody's until it completes: failed, it leaves none on the server.
        self.conn.forget_unnamed();
        self.meter.server_parse();
        self.pipeline.push_unnamed_parse(true, Vec::new());
        self.statements.stage_unnamed();
        true
    }

    fn parse(&mut self, frame: &[u8]) -> bool {
        // The extended protocol can carry what a simple query can: the same checks.
        let statement = cstr(&frame[HEADER_LEN..]).and_then(|(name, rest)| Some((name, cstr(rest)?.0)));
        let Some((name, sql)) = statement else {
            return self.prepare(frame, None, Box::default(), Marks::default());
        };
        let class = classify(sql);
        // Counted even if refused (the marker only waits longer).
        self.copies = class.copy();
        if let Some(refusal) = self.refusal_for(&class) {
            // Prepared in its place: the refusal raises when the client executes it. The
            // refused statement never runs, and the refusal changes nothing on the server:
            // neither goes through the checks below (the refusal's text names DEALLOCATE,
            // and a barrier raised for it would hold the client's next Describe until a
            // reply that cannot come before its Sync).
            let replacement = parse_frame(name, &refusal);
            return self.prepare(&replacement, None, Box::default(), Marks::default());
        }
        let set = class.set(sql);
        // Its cursors are declared by an Execute of it, not by the Parse.
        let declares: Box<[Box<[u8]>]> =
            if class.declares() { class.declared_cursors(sql).into() } else { Box::default() };
        // Noted once prepared.
        if !self.prepare(frame, set, declares, class.marks()) {
            return false;
        }
        self.note(&class, sql, false);
        true
    }

    /// What a query or Parse does beyond its own reply: settings it may change untracked,
    /// prepared statements it may drop, cursors it may declare. Called once the message is
    /// recorded in the pipeline: a declared cursor's name is the client's unless that message
    /// fails or is skipped (a refused DECLARE never runs; one that fails may name another
    /// client's cursor).
    #[inline(always)]
    fn note(&mut self, class: &Class, sql: &[u8], query: bool) {
        mark(self.conn, class.marks());
        if query && class.drops_statements() {
            // A Parse's runs at an Execute: its Bind raises the barrier (see `rewrite`).
            self.statements.raise_barrier(true);
            self.pipeline.mark_barrier();
        }
        if query && class.declares() {
            let declared: Vec<Effect> = class
                .declared_cursors(sql)
                .iter()
                .filter_map(|c| self.statements.bind_portal(c, Bound::DeclareQuery))
                .collect();
            self.pipeline.attach_effects(declared);
        }
    }

    /// A Parse after the checks: named statements get pgtenant's names. `set` is the session
    /// SET its text runs, if it is one.
    fn prepare(
        &mut self,
        frame: &[u8],
        set: Option<SetCmd>,
        declares: Box<[Box<[u8]>]>,
        marks: Marks,
    ) -> bool {
        // Statements::prepare reads the name again; the unnamed statement (the common case)
        // skips it, and the copies it would take.
        let named = frame.get(HEADER_LEN).is_some_and(|&b| b != 0);
        let prepared = if named {
            Statements::prepare(frame, self.search_path, set.clone(), declares.clone(), marks)
        } else {
            None
        };
        let Some((name, prepared)) = prepared else {
            // An unnamed statement: remember whether it is a SET, and that the client parsed
            // one (see `unnamed_owned`).
            // What it runs is the unnamed statement's only once the server parsed it.
            let noted = set.is_some() || !declares.is_empty() || marks != Marks::default();
            self.sets.unnamed = set.map(Box::new);
            self.statements.unnamed_declares(declares, marks);
            self.out.extend_from_slice(frame);
            // The server drops the statement it holds before parsing, so a failed Parse leaves
            // none: another client's is parsed again for it where it binds it next.
            self.unnamed_not_anothers();
            self.pipeline
                .push_unnamed_parse(false, if noted { vec![Effect::UnnamedParse] } else { Vec::new() });
            self.statements.stage_unnamed();
            self.statements.stage_unnamed_text(frame);
            return true;
        };
        // The client's query text and parameter types, after its statement name: probes
        // parse the same, so they fail where the client's Parse would.
        let body = cstr(&frame[HEADER_LEN..]).map(|(_, rest)| rest).unwrap_or_default();
        match self.statements.lookup(&name) {
            Lookup::Wait => return false,
            Lookup::Known(_) => {
                // A name the client already uses: the server parses the text as it would the
                // client's (42601, 25P02 … pass as they are), then raises 42P05 on a probe
                // statement that exists once the first probe Parse ran; that error names the
                // client's statement.
                let error = Bytes::from(PgError::duplicate_statement(&name).to_bytes());
                for _ in 0..2 {
                    self.out.extend_from_slice(&rename(fe::PARSE, &[], probe_duplicate().as_bytes(), body));
                    self.pipeline.push(
                        Kind::Parse,
                        Action::probe(SqlState::DuplicatePreparedStatement.code(), error.clone()),
                    );
                }
                return true;
            }
            Lookup::Unknown => {}
        }
        if self.statements.full() {
            let e = PgError::too_many_statements(MAX_CLIENT_STATEMENTS, MAX_CLIENT_STATEMENT_BYTES);
            self.fail_with(e, false);
            return true;
        }
        let server_name = prepared.server_name.clone();
        if self.creation_unanswered(&server_name) {
            return false;
        }
        let client = self.statements.register(name, prepared.clone());
        if self.conn.prepared_mut().touch(&server_name) {
            // The server has the statement: a probe Parse of the same text stands for the
            // client's, so the client gets what PostgreSQL would answer here (ParseComplete,
            // or 25P02 in an aborted transaction, or an error if a table went away).
            let probe = probe_statement();
            self.out.extend_from_slice(&rename(fe::PARSE, &[], probe.as_bytes(), body));
            self.pipeline.push_effect(Kind::Parse, Action::Forward, vec![client]);
            self.out.extend_from_slice(&rename(fe::CLOSE, &[STATEMENT], probe.as_bytes(), &[]));
            self.pipeline.push(Kind::Close, Action::Swallow);
        } else {
            self.evict_for(server_name.clone());
            self.meter.server_parse();
            self.out.extend_from_slice(&prepared.parse);
            self.pipeline.push_effect(
                Kind::Parse,
                Action::Forward,
                vec![Effect::ServerStatement(server_name), client],
            );
        }
        true
    }

    /// What runs instead of `sql` in transaction mode, if it cannot run as it is: SQL-level
    /// prepared statements always, session-level features under the `refuse` policy (under
    /// `pin`, the client keeps its server connection instead).
    fn refusal_for(&mut self, class: &Class) -> Option<String> {
        let feature = match class.refusal()? {
            Refusal::SqlPrepare => return Some(prepare_refusal()),
            Refusal::Feature(feature) => feature,
        };
        match self.policy {
            SessionFeatures::Refuse => Some(feature_refusal(feature)),
            SessionFeatures::Pin => {
                *self.pinned = true;
                None
            }
        }
    }

    /// Whether a message naming `server_name` must wait: a message staged before one of the
    /// client's Syncs since is creating it on this connection and is not answered yet. The
    /// server may skip that creation (behind an error) or fail it and still run what follows
    /// the Sync, where the statement would then not exist (found by the differential test:
    /// a Parse skipped behind an error, a Sync, a Parse of the same text under another name
    /// and a Bind of it, which got 26000). The Sync makes the server send the verdict; then the
    /// message goes, preparing the statement again if it was not created. Within one Sync
    /// batch nothing waits: the server skips the rest of the batch with the creation.
    #[inline]
    fn creation_unanswered(&mut self, server_name: &str) -> bool {
        // Nearly always none is: one load, no call.
        self.conn.prepared_mut().any_unanswered() && self.named_creation_unanswered(server_name)
    }

    #[inline(never)]
    fn named_creation_unanswered(&mut self, server_name: &str) -> bool {
        let prepared = self.conn.prepared_mut();
        if !prepared.unanswered_before(server_name, self.statements.syncs()) {
            return false;
        }
        if self.pipeline.creates_before_sync(server_name) {
            return true;
        }
        // No such creation is queued (the reply model started afresh without settling it):
        // nothing to wait for.
        prepared.forget_unanswered(server_name);
        false
    }

    /// Prepares a statement on this connection if it lacks it, swallowing the reply.
    fn ensure(&mut self, server_name: &Arc<str>, parse: &[u8]) {
        if self.conn.prepared_mut().touch(server_name) {
            return;
        }
        self.evict_for(server_name.clone());
        self.meter.server_parse();
        self.out.extend_from_slice(parse);
        self.pipeline.push_effect(
            Kind::Parse,
            Action::Swallow,
            vec![Effect::ServerStatement(server_name.clone())],
        );
    }

    /// Records a statement about to be prepared, closing the least recently used one on the
    /// server when the connection holds too many. The statement itself is closed first (a
    /// no-op when absent): after a "cached plan must not change result type" error pgtenant
    /// forgets what a connection holds, and the old statement must not block the new Parse.
    fn evict_for(&mut self, server_name: Arc<str>) {
        self.out.extend_from_slice(&rename(fe::CLOSE, &[STATEMENT], server_name.as_bytes(), &[]));
        self.pipeline.push(Kind::Close, Action::Swallow);
        if let Some(old) = self.conn.prepared_mut().creating(server_name, self.statements.syncs()) {
            self.out.extend_from_slice(&rename(fe::CLOSE, &[STATEMENT], old.as_bytes(), &[]));
            self.pipeline.push(Kind::Close, Action::Swallow);
        }
    }
}
