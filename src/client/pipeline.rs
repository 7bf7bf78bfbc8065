//! What the server still owes, modelled as the server processes it. Every client message that
//! goes to a server connection is queued; the queue is consumed the way PostgreSQL's main loop
//! (`PostgresMain` in `src/backend/tcop/postgres.c`) consumes messages:
//!
//! - normally each message is executed in turn and earns its replies;
//! - after an error in an extended-protocol message the server skips everything up to the next
//!   Sync (`ignore_till_sync`), so skipped messages earn nothing;
//! - during COPY FROM STDIN the server reads CopyData, ignores Sync and Flush, ends the copy at
//!   CopyDone or CopyFail and fails it on any other message (`CopyGetData` in
//!   `src/backend/commands/copyfromparse.c`); outside a copy, CopyData/CopyDone/CopyFail are ignored.
//!
//! Server replies drive the model: the server's own messages say when a command errs, starts a
//! copy or ends. The model is exact except in one case: an error during COPY FROM STDIN while
//! the client has sent Syncs before or between its copy data (or another message, and the
//! error is 08P01). Which of those the server read before failing is not observable (a copy
//! can fail before it reads anything), so the queue is marked uncertain and the connection
//! is not reused until a marker query resynchronises it (DESIGN.md, containment rule 1).
//!
//! pgtenant answers nothing itself: every client message that earns a reply becomes a message
//! the server answers (a Close of a client's statement becomes a Close of a name that never
//! exists), so replies come exactly where and when PostgreSQL sends them. Replies to messages
//! pgtenant injected are swallowed, and probes (injected messages whose error stands for the
//! client's) have their error replaced. Reference: "Extended Query" and "COPY Operations" in
//! <https://www.postgresql.org/docs/current/protocol-flow.html>.

use std::collections::VecDeque;

use bytes::Bytes;

use super::setcmd::SetCmd;
use super::statements::{Barrier, Effect, Statements};
use crate::protocol::backend::tag as be;

mod kind;
pub use kind::Kind;

/// Who gets the replies a message earns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Forward,
    /// pgtenant's own message: its replies do not reach the client (an error does, since it
    /// stands for the client's message that needed it).
    Swallow,
    /// pgtenant's own message standing in for a client message (boxed: rare, and every queue
    /// entry would otherwise carry room for one).
    Probe(Box<Probe>),
}

/// A probe's error: success replies are swallowed and an ErrorResponse with SQLSTATE `code` is
/// replaced by `error` (other errors pass).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    pub code: &'static str,
    pub error: Bytes,
}

impl Action {
    pub fn probe(code: &'static str, error: Bytes) -> Action {
        Action::Probe(Box::new(Probe { code, error }))
    }
}

/// Who gets an entry's replies, in the entry itself (a probe's error is in its [`Extra`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reply {
    Forward,
    Swallow,
    Probe,
}

/// One queued message: 16 bytes, copied in and out of the queue, with what few messages carry
/// (effects, a SET, a probe's error) out of line. Most messages carry none of it: pushing and
/// popping them moves two words and drops nothing.
#[derive(Debug)]
struct Entry {
    extra: Option<Box<Extra>>,
    kind: Kind,
    reply: Reply,
    /// An ErrorResponse arrived while this (simple) query ran.
    errored: bool,
    /// The client's Parse of the unnamed statement: its ParseComplete makes the server's
    /// unnamed statement the client's ([`Route::unnamed_parsed`]).
    unnamed: bool,
    /// A simple query that may drop prepared statements (DEALLOCATE, DISCARD): names wait
    /// until it is answered ([`Pipeline::settle_barrier`]).
    barrier: bool,
}

/// What a message carries beyond its kind and who gets its replies.
#[derive(Debug, Default)]
struct Extra {
    effect: Vec<Effect>,
    /// A session SET this message runs, tracked once it succeeds.
    set: Option<Box<SetCmd>>,
    probe: Option<Box<Probe>>,
}

impl Entry {
    #[inline(always)]
    fn new(kind: Kind, reply: Reply) -> Entry {
        Entry { extra: None, kind, reply, errored: false, unnamed: false, barrier: false }
    }

    /// An entry with what `action`, `effect` and `set` carry (out of line if anything).
    fn full(kind: Kind, action: Action, effect: Vec<Effect>, set: Option<Box<SetCmd>>) -> Entry {
        let (reply, probe) = match action {
            Action::Forward => (Reply::Forward, None),
            Action::Swallow => (Reply::Swallow, None),
            Action::Probe(probe) => (Reply::Probe, Some(probe)),
        };
        let mut entry = Entry::new(kind, reply);
        if !effect.is_empty() || set.is_some() || probe.is_some() {
            entry.extra = Some(Box::new(Extra { effect, set, probe }));
        }
        entry
    }

    /// The probe standing for this message, if it is one.
    fn probe(&self) -> Option<&Probe> {
        self.extra.as_ref().and_then(|x| x.probe.as_deref())
    }

    /// Its effects, if it has any.
    fn into_effects(self) -> Vec<Effect> {
        self.extra.map(|x| x.effect).unwrap_or_default()
    }
}

/// Where the server stands in processing the queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Normal,
    /// After an error in the extended protocol: messages up to the next Sync are skipped.
    Skip,
    /// COPY FROM STDIN, started by a simple Query or by Execute.
    CopyIn {
        extended: bool,
    },
}

/// What to do with one server message: two words, returned in registers. Effects of the
/// messages it completed, failed or skipped stay in the pipeline until taken
/// ([`Pipeline::take_effects`]): most messages have none, and a route carries nothing to drop
/// then.
#[derive(Debug, PartialEq, Eq, Default)]
pub struct Route {
    pub forward: bool,
    /// The message did not fit what the queue expected: pgtenant lost track.
    pub unexpected: bool,
    /// The client's Parse of the unnamed statement just completed.
    pub unnamed_parsed: bool,
    /// A probe's replacement or a completed SET (rare: boxed).
    pub rare: Option<Box<Rare>>,
}

/// The rare parts of a [`Route`].
#[derive(Debug, PartialEq, Eq, Default)]
pub struct Rare {
    /// Bytes to send the client instead of the message.
    pub replace: Option<Bytes>,
    /// A session SET that just completed successfully.
    pub completed_set: Option<Box<SetCmd>>,
}

#[cfg(test)]
impl Route {
    /// Bytes to send the client instead of the message.
    pub fn replace(&self) -> Option<&Bytes> {
        self.rare.as_ref().and_then(|r| r.replace.as_ref())
    }
}

#[derive(Debug)]
pub struct Pipeline {
    queue: VecDeque<Entry>,
    mode: Mode,
    /// The front entry has started replying (a Query, Execute, FunctionCall or statement
    /// Describe in progress).
    started: bool,
    /// The front entry is in COPY TO STDOUT.
    copy_out: bool,
    /// Effects of messages that failed or were skipped, to undo, in the order they happened
    /// (undo them last first), and of messages that completed: handed out by
    /// [`Pipeline::take_effects`].
    undo: Vec<Effect>,
    done: Vec<Effect>,
    /// pgtenant cannot tell what the server still owes: the connection is never reused.
    uncertain: bool,
    /// An extended-protocol message was sent since the last ReadyForQuery: the server holds
    /// an implicit transaction (or skips) until a Sync, even once it owes no reply (a Sync
    /// read by a COPY does not end it).
    open: bool,
    /// The message recorded last was consumed as it was pushed (skipped: see
    /// [`Pipeline::attach_effects`]).
    last_skipped: bool,
}

impl Default for Pipeline {
    fn default() -> Self {
        Pipeline {
            queue: VecDeque::new(),
            mode: Mode::Normal,
            started: false,
            copy_out: false,
            undo: Vec::new(),
            done: Vec::new(),
            uncertain: false,
            open: false,
            last_skipped: false,
        }
    }
}

/// What the relay passes as the SQLSTATE of the error a CopyFail raises (57014 with "COPY from
/// stdin failed: …"): unlike a cancel's 57014, it needs something read to be raised.
pub const COPY_FAIL_CODE: &str = "57014:copyfail";

/// A reply that does not complete the front entry.
fn reply(forward: bool) -> Route {
    Route { forward, ..Route::default() }
}

/// An ErrorResponse for an entry that does not end it (`probe`: the entry's, if a probe).
fn error_reply(probe: Option<&Probe>, code: &str) -> Route {
    match probe {
        Some(probe) if probe.code == code => Route {
            rare: Some(Box::new(Rare { replace: Some(probe.error.clone()), completed_set: None })),
            ..Route::default()
        },
        _ => reply(true),
    }
}

impl Pipeline {
    /// Nothing owed or pending: the server connection may be released (as far as replies go).
    pub fn is_idle(&self) -> bool {
        self.owes_nothing() && !self.uncertain && !self.open
    }

    /// The server owes no reply to anything sent, and is not waiting for copy data.
    pub fn owes_nothing(&self) -> bool {
        self.queue.is_empty() && !matches!(self.mode, Mode::CopyIn { .. })
    }

    /// Every reply owed is to pgtenant's own messages, and due without a later Sync or Flush.
    pub fn owes_only_its_own(&self) -> bool {
        !self.unflushed() && !self.copy_in() && self.queue.iter().all(|e| e.reply != Reply::Forward)
    }

    pub fn uncertain(&self) -> bool {
        self.uncertain
    }

    /// The last message sent is one the server answers only at a later Sync or Flush: of the
    /// extended protocol, or a COPY's CopyDone or CopyFail (a Flush during copy data is ignored).
    pub fn unflushed(&self) -> bool {
        self.queue.back().is_some_and(|e| match e.kind {
            Kind::Flush => false,
            Kind::CopyDone | Kind::CopyFail => true,
            kind => kind.extended(),
        })
    }

    /// Replies are owed, and the last message sent ends a unit (see [`Kind::readies`]): a
    /// message sent now begins the next. Flushes, and copy messages outside a copy (which the
    /// server ignores), after it do not count: a client sending them behind each query must not
    /// look always inside a unit. In a copy a Query started, only once the client ended it (its
    /// CopyDone or CopyFail sent): the server answers the rest without another message, and
    /// what comes next must not slip through while the CopyInResponse is read. Not in one an
    /// Execute started: its CommandComplete reaches the client only at the Sync that follows.
    pub fn unit_pending(&self) -> bool {
        let ended = |e: &Entry| matches!(e.kind, Kind::CopyDone | Kind::CopyFail);
        (!self.copy_in() || (self.mode == Mode::CopyIn { extended: false } && self.queue.iter().any(ended)))
            && self
                .queue
                .iter()
                .rev()
                .find(|e| !matches!(e.kind, Kind::Flush | Kind::CopyData | Kind::CopyDone | Kind::CopyFail))
                .is_some_and(|e| e.kind.readies())
    }

    /// ReadyForQuery messages still owed by the server (at least).
    pub fn pending_ready(&self) -> usize {
        self.queue.iter().filter(|e| e.kind.readies()).count()
    }

    /// In COPY FROM STDIN.
    pub fn copy_in(&self) -> bool {
        matches!(self.mode, Mode::CopyIn { .. })
    }

    /// Records a client message forwarded as it is.
    #[inline]
    pub fn push(&mut self, kind: Kind, action: Action) {
        match action {
            // Inlined with the caller's constant: the common entries are built in place.
            Action::Forward => self.push_plain(kind, Reply::Forward),
            Action::Swallow => self.push_plain(kind, Reply::Swallow),
            action => self.push_full(kind, action, Vec::new(), None),
        }
    }

    /// Records a message with an effect to undo should it fail or be skipped.
    pub fn push_effect(&mut self, kind: Kind, action: Action, effect: Vec<Effect>) {
        self.push_full(kind, action, effect, None);
    }

    /// Adds effects to the message recorded last (to undo should it fail or be skipped). One
    /// the server skips as it arrives (behind an error, before the Sync) left the queue as
    /// it was pushed: its effects are undone at once.
    pub fn attach_effects(&mut self, effects: Vec<Effect>) {
        if effects.is_empty() {
            return;
        }
        match self.queue.back_mut() {
            Some(back) if !self.last_skipped => {
                back.extra.get_or_insert_with(Box::default).effect.extend(effects)
            }
            _ => self.undo.extend(effects),
        }
    }

    /// Marks the message recorded last (a simple query) as one that may drop prepared
    /// statements.
    pub fn mark_barrier(&mut self) {
        if let Some(back) = self.queue.back_mut() {
            back.barrier = true;
        }
    }

    /// Lifts the statements' barrier once what it waits for is answered (see
    /// [`Statements::barrier`]).
    #[inline]
    pub fn settle_barrier(&self, statements: &mut Statements) {
        let answered = match statements.barrier() {
            Barrier::None => return,
            Barrier::All => self.owes_nothing(),
            // At the batch's ReadyForQuery, as the barrier raised at the Bind used to be
            // lifted (a named portal kept in a transaction block and run in a later round
            // trip raises none).
            Barrier::Bound => self.is_idle(),
            // No simple query that may drop prepared statements is still unanswered.
            Barrier::Queries => !self.queue.iter().any(|e| e.barrier),
        };
        if answered {
            statements.lift_barrier();
        }
    }

    /// Records a Query or Execute that runs a session SET.
    #[inline]
    pub fn push_set(&mut self, kind: Kind, set: Option<Box<SetCmd>>) {
        match set {
            None => self.push_plain(kind, Reply::Forward),
            set => self.push_full(kind, Action::Forward, Vec::new(), set),
        }
    }

    /// An unnamed Parse, the client's or pgtenant's (`own`), with effects undone if it fails.
    #[inline(always)]
    pub fn push_unnamed_parse(&mut self, own: bool, effect: Vec<Effect>) {
        let extra = (!effect.is_empty()).then(|| Box::new(Extra { effect, ..Extra::default() }));
        let reply = if own { Reply::Swallow } else { Reply::Forward };
        self.push_entry(Entry { unnamed: true, extra, ..Entry::new(Kind::Parse, reply) });
    }

    /// Whether a message creating server statement `name` (see [`Effect::ServerStatement`])
    /// awaits its reply with a Sync queued behind it. The server gets to it without more from
    /// the client, and its verdict comes by that Sync's ReadyForQuery at the latest: earlier
    /// with an error or a copy start (a COPY that reads the Sync), which the server sends at
    /// once. Scanned only for a name the connection says is being created.
    pub fn creates_before_sync(&self, name: &str) -> bool {
        let creates = |e: &Entry| {
            e.extra.as_ref().is_some_and(|x| {
                x.effect.iter().any(|f| matches!(f, Effect::ServerStatement(n) if &**n == name))
            })
        };
        self.queue.iter().skip_while(|e| !creates(e)).any(|e| e.kind == Kind::Sync)
    }

    /// Whether a Parse of the unnamed statement still awaits its reply (or its skip).
    pub fn unnamed_pending(&self) -> bool {
        self.queue.iter().any(|e| e.unnamed)
    }

    #[inline(never)]
    fn push_full(&mut self, kind: Kind, action: Action, effect: Vec<Effect>, set: Option<Box<SetCmd>>) {
        // Consecutive copy data count as one: only its position between other messages matters.
        if kind == Kind::CopyData && self.queue.back().is_some_and(|b| b.kind == Kind::CopyData) {
            return;
        }
        self.push_entry(Entry::full(kind, action, effect, set));
    }

    #[inline(always)]
    fn push_plain(&mut self, kind: Kind, reply: Reply) {
        if kind == Kind::CopyData && self.queue.back().is_some_and(|b| b.kind == Kind::CopyData) {
            return;
        }
        self.push_entry(Entry::new(kind, reply));
    }

    #[inline(always)]
    fn push_entry(&mut self, entry: Entry) {
        if entry.kind.extended() && entry.kind != Kind::Flush {
            self.open = true;
        }
        // The front is left as `advance` would leave it (an entry behind others waits for them).
        let first = self.queue.is_empty();
        self.queue.push_back(entry);
        self.last_skipped = false;
        if first {
            self.advance();
            self.last_skipped = self.queue.is_empty();
        }
    }

    /// Effects of the messages routing (or pushing, which may skip) completed, failed or
    /// skipped since they were last taken: (to undo, done).
    pub fn take_effects(&mut self) -> (Vec<Effect>, Vec<Effect>) {
        (std::mem::take(&mut self.undo), std::mem::take(&mut self.done))
    }

    /// Whether [`Pipeline::take_effects`] has anything to hand out.
    pub fn has_effects(&self) -> bool {
        !self.undo.is_empty() || !self.done.is_empty()
    }

    /// Consumes entries that earn no reply in the server's current state.
    #[inline(always)]
    fn advance(&mut self) {
        // Nearly always nothing to consume: the front entry is running, or earns a reply.
        let consumable =
            |kind| matches!(kind, Kind::CopyData | Kind::CopyDone | Kind::CopyFail | Kind::Flush);
        match (self.started, self.mode, self.queue.front()) {
            (true, _, _) | (_, _, None) | (_, Mode::CopyIn { .. }, _) => {}
            (_, Mode::Normal, Some(front)) if !consumable(front.kind) => {}
            _ => self.advance_slow(),
        }
    }

    #[inline(never)]
    fn advance_slow(&mut self) {
        while !self.started {
            let Some(front) = self.queue.front() else { return };
            if front.kind == Kind::Unknown {
                // The server ends the session on it (FATAL), whatever its state.
                return;
            }
            match self.mode {
                Mode::CopyIn { .. } => return,
                Mode::Skip => {
                    if front.kind == Kind::Sync {
                        return;
                    }
                    if let Some(e) = self.queue.pop_front() {
                        self.undo.extend(e.into_effects());
                    }
                }
                Mode::Normal => match front.kind {
                    Kind::CopyData | Kind::CopyDone | Kind::CopyFail | Kind::Flush => {
                        self.queue.pop_front();
                    }
                    _ => return,
                },
            }
        }
    }

    /// Routes a server message by tag (`code`: an ErrorResponse's SQLSTATE); effects wait for `take_effects`.
    #[inline(always)]
    pub fn route(&mut self, tag: u8, code: &str) -> Route {
        if let Some(route) = self.route_simple_query(tag) {
            return route;
        }
        if let Some(route) = self.route_extended(tag) {
            return route;
        }
        let route = self.route_inner(tag, code);
        if route.unexpected {
            self.uncertain = true;
        }
        route
    }

    /// The common case, routed as [`Pipeline::route_inner`] would route it, with fewer
    /// tests: a simple Query running normally (no COPY), and one of its rows, its end or the
    /// ReadyForQuery that completes it. None for anything else.
    #[inline(always)]
    fn route_simple_query(&mut self, tag: u8) -> Option<Route> {
        if self.mode != Mode::Normal || self.copy_out {
            return None;
        }
        let front = self.queue.front()?;
        if front.kind != Kind::Query {
            return None;
        }
        let forward = front.reply == Reply::Forward;
        match tag {
            be::ROW_DESCRIPTION | be::DATA_ROW | be::COMMAND_COMPLETE | be::EMPTY_QUERY_RESPONSE => {
                self.started = true;
                Some(reply(forward))
            }
            be::READY_FOR_QUERY => {
                let ok = !front.errored;
                Some(self.complete(forward, tag, ok))
            }
            _ => None,
        }
    }

    /// The replies of an extended-protocol batch, routed as [`Pipeline::route_inner`] would,
    /// with fewer tests: the server running normally (no COPY, no skip to Sync) and a success
    /// reply the front entry expects (not a probe's Describe). None for anything else (errors,
    /// asynchronous messages, COPY), which takes the general path. Here `advance` has nothing
    /// to consume at the front, so skipping it changes nothing; never `unexpected`. Out of
    /// line: the simple Query's path above stays as short as it was.
    #[inline(never)]
    fn route_extended(&mut self, tag: u8) -> Option<Route> {
        if self.mode != Mode::Normal || self.copy_out {
            return None;
        }
        let front = self.queue.front()?;
        let forward = front.reply == Reply::Forward;
        match (front.kind, tag) {
            (Kind::DescribeStatement | Kind::DescribePortal, _) if front.reply == Reply::Probe => None,
            (Kind::Execute, be::DATA_ROW) => {
                self.started = true;
                Some(reply(forward))
            }
            (Kind::DescribeStatement, be::PARAMETER_DESCRIPTION) if !self.started => {
                self.started = true;
                Some(reply(forward))
            }
            (Kind::Sync, be::READY_FOR_QUERY)
            | (Kind::Execute, be::COMMAND_COMPLETE | be::EMPTY_QUERY_RESPONSE | be::PORTAL_SUSPENDED) => {
                let ok = !front.errored;
                Some(self.complete_inline(forward, tag, ok))
            }
            (Kind::Parse, be::PARSE_COMPLETE)
            | (Kind::Bind, be::BIND_COMPLETE)
            | (Kind::Close, be::CLOSE_COMPLETE)
            | (Kind::DescribePortal, be::ROW_DESCRIPTION | be::NO_DATA) => {
                Some(self.complete_inline(forward, tag, false))
            }
            (Kind::DescribeStatement, be::ROW_DESCRIPTION | be::NO_DATA) if self.started => {
                Some(self.complete_inline(forward, tag, false))
            }
            _ => None,
        }
    }

    fn route_inner(&mut self, tag: u8, code: &str) -> Route {
        // Asynchronous messages belong to no request.
        if matches!(tag, be::NOTICE_RESPONSE | be::NOTIFICATION_RESPONSE | be::PARAMETER_STATUS) {
            return reply(true);
        }
        self.advance();
        // Built only when returned (a Route built and dropped costs on every message).
        let unexpected = || Route { forward: true, unexpected: true, ..Route::default() };
        let Some(front) = self.queue.front_mut() else { return unexpected() };
        let forward = front.reply == Reply::Forward;
        let kind = front.kind;
        if kind == Kind::Unknown && !matches!(self.mode, Mode::CopyIn { .. }) {
            // "invalid frontend message type": FATAL, then the server closes.
            return if tag == be::ERROR_RESPONSE { self.complete(forward, tag, false) } else { unexpected() };
        }
        if let Mode::CopyIn { extended } = self.mode {
            return match tag {
                be::COMMAND_COMPLETE => {
                    // The copy ended at the client's CopyDone, which the server has read:
                    // Syncs and data before it went into the copy.
                    let copying = |e: &Entry| matches!(e.kind, Kind::CopyData | Kind::Sync | Kind::Flush);
                    let Some(end) = self.queue.iter().skip(1).position(|e| !copying(e)) else {
                        return unexpected();
                    };
                    if self.queue[end + 1].kind != Kind::CopyDone {
                        return unexpected();
                    }
                    self.queue.drain(1..end + 2);
                    self.mode = Mode::Normal;
                    if extended {
                        self.complete(forward, tag, false)
                    } else {
                        reply(forward)
                    }
                }
                be::ERROR_RESPONSE => {
                    self.copy_failed(code);
                    if extended {
                        self.fail(code)
                    } else {
                        let Some(f) = self.queue.front_mut() else { return reply(true) };
                        f.errored = true;
                        error_reply(f.probe(), code)
                    }
                }
                _ => unexpected(),
            };
        }
        if self.mode == Mode::Skip {
            // advance() left the Sync at the front.
            if tag != be::READY_FOR_QUERY || kind != Kind::Sync {
                return unexpected();
            }
            self.mode = Mode::Normal;
            return self.complete(forward, tag, false);
        }
        // A probe Describes a name no server has: anything but its error is another's reply.
        let describe = matches!(kind, Kind::DescribeStatement | Kind::DescribePortal);
        if describe && front.reply == Reply::Probe && tag != be::ERROR_RESPONSE {
            return unexpected();
        }
        match (kind, tag) {
            (Kind::Parse, be::PARSE_COMPLETE)
            | (Kind::Bind, be::BIND_COMPLETE)
            | (Kind::Close, be::CLOSE_COMPLETE) => self.complete(forward, tag, false),
            (Kind::DescribeStatement, be::PARAMETER_DESCRIPTION) if !self.started => {
                self.started = true;
                reply(forward)
            }
            (Kind::DescribeStatement, be::ROW_DESCRIPTION | be::NO_DATA) if self.started => {
                self.complete(forward, tag, false)
            }
            (Kind::DescribePortal, be::ROW_DESCRIPTION | be::NO_DATA) => self.complete(forward, tag, false),
            (Kind::Execute, be::DATA_ROW) if !self.copy_out => {
                self.started = true;
                reply(forward)
            }
            (Kind::Execute | Kind::Query, be::COPY_OUT_RESPONSE) if !self.copy_out => {
                self.started = true;
                self.copy_out = true;
                reply(forward)
            }
            (Kind::Execute | Kind::Query, be::COPY_DATA) if self.copy_out => reply(forward),
            (Kind::Execute | Kind::Query, be::COPY_DONE) if self.copy_out => {
                self.copy_out = false;
                reply(forward)
            }
            (Kind::Execute, be::COMMAND_COMPLETE | be::EMPTY_QUERY_RESPONSE | be::PORTAL_SUSPENDED)
                if !self.copy_out =>
            {
                let ok = !front.errored;
                self.complete(forward, tag, ok)
            }
            (Kind::Execute | Kind::Query, be::COPY_IN_RESPONSE) if !self.copy_out => {
                self.started = true;
                self.mode = Mode::CopyIn { extended: kind == Kind::Execute };
                reply(forward)
            }
            (
                Kind::Query,
                be::ROW_DESCRIPTION | be::DATA_ROW | be::COMMAND_COMPLETE | be::EMPTY_QUERY_RESPONSE,
            ) if !self.copy_out => {
                self.started = true;
                reply(forward)
            }
            (Kind::Query | Kind::FunctionCall | Kind::Sync, be::ERROR_RESPONSE) => {
                // Not extended: no skip; ReadyForQuery follows.
                self.started = kind != Kind::Sync;
                self.copy_out = false;
                front.errored = true;
                error_reply(front.probe(), code)
            }
            (Kind::FunctionCall, be::FUNCTION_CALL_RESPONSE) if !self.started => {
                self.started = true;
                reply(forward)
            }
            (Kind::Query | Kind::FunctionCall | Kind::Sync, be::READY_FOR_QUERY) if !self.copy_out => {
                let ok = !front.errored;
                self.complete(forward, tag, ok)
            }
            (k, be::ERROR_RESPONSE) if k.extended() => self.fail(code),
            _ => unexpected(),
        }
    }

    /// The reply that completes the front entry.
    #[inline(never)]
    fn complete(&mut self, forward: bool, tag: u8, ok: bool) -> Route {
        self.complete_inline(forward, tag, ok)
    }

    /// [`Pipeline::complete`], inlined where an extended batch's replies are routed (a call
    /// per reply costs as much as the work).
    #[inline(always)]
    fn complete_inline(&mut self, forward: bool, tag: u8, ok: bool) -> Route {
        let mut route = reply(forward);
        if tag == be::READY_FOR_QUERY {
            self.open = false;
        }
        if let Some(e) = self.queue.pop_front() {
            route.unnamed_parsed = e.unnamed;
            if let Some(extra) = e.extra {
                route.rare = self.settle(
                    *extra,
                    e.errored,
                    ok && matches!(tag, be::COMMAND_COMPLETE | be::READY_FOR_QUERY),
                );
            }
        }
        self.started = false;
        self.copy_out = false;
        self.advance();
        route
    }

    /// What a completed message carried: its effects done (undone if a simple query raised an
    /// error: its implicit transaction rolled back, it ran none of it), its SET if it succeeded.
    #[inline(never)]
    fn settle(&mut self, extra: Extra, errored: bool, succeeded: bool) -> Option<Box<Rare>> {
        if errored {
            self.undo.extend(extra.effect);
        } else {
            self.done.extend(extra.effect);
        }
        let completed_set = extra.set.filter(|_| succeeded)?;
        Some(Box::new(Rare { replace: None, completed_set: Some(completed_set) }))
    }

    /// An error in an extended-protocol message at the front: it ends; the server skips to Sync.
    fn fail(&mut self, code: &str) -> Route {
        let Some(e) = self.queue.pop_front() else { return reply(true) };
        let route = error_reply(e.probe(), code);
        self.undo.extend(e.into_effects());
        self.started = false;
        self.copy_out = false;
        self.mode = Mode::Skip;
        self.advance();
        route
    }

    /// COPY FROM STDIN failed: decides which queued messages the copy consumed. A copy that
    /// reads a message other than copy data, Sync or Flush fails with 08P01 (`CopyGetData`,
    /// `src/backend/commands/copyfromparse.c`): behind an error with another SQLSTATE, the
    /// server reads that message afterwards as usual.
    fn copy_failed(&mut self, code: &str) {
        self.mode = Mode::Normal;
        let stream: Vec<Kind> = self.queue.iter().skip(1).map(|e| e.kind).collect();
        let end = stream.iter().position(|k| !matches!(k, Kind::CopyData | Kind::Sync | Kind::Flush));
        let read = match end {
            Some(e) if matches!(stream[e], Kind::CopyDone | Kind::CopyFail) => e + 1,
            Some(e) if code.is_empty() || code == "08P01" => e + 1,
            Some(e) => e,
            None => stream.len(),
        };
        let segment = &stream[..read];
        // Whether the copy read a Sync or failed before it (an error raised before the copy
        // reads anything: a view, a statement trigger, a cancel) is not observable, nor whether
        // it read another message behind an 08P01 (a trigger may raise any SQLSTATE): either
        // makes the replies uncertain. Copy data, CopyDone, CopyFail and Flush earn nothing.
        let earn_nothing =
            |k: &Kind| matches!(k, Kind::CopyData | Kind::CopyDone | Kind::CopyFail | Kind::Flush);
        self.uncertain |= !segment.iter().all(earn_nothing);
        self.queue.drain(1..1 + segment.len());
    }
}

#[cfg(test)]
pub(crate) mod tests;
