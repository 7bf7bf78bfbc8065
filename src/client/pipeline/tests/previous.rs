//! The reply model as it was before routes left effects in the pipeline and SETs were boxed
//! (main at 1bdefc8), kept as the reference the property test holds the current one to.

#![allow(dead_code)] // the oracle keeps the whole previous interface

use std::collections::VecDeque;

use bytes::Bytes;

use super::super::{Action, Kind};
use crate::client::setcmd::SetCmd;
use crate::client::statements::Effect;
use crate::protocol::backend::tag as be;

#[derive(Clone, Debug)]
struct Entry {
    kind: Kind,
    action: Action,
    effect: Vec<Effect>,
    /// A session SET this message runs, tracked once it succeeds.
    set: Option<SetCmd>,
    /// An ErrorResponse arrived while this (simple) query ran.
    errored: bool,
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

/// What to do with one server message.
#[derive(Debug, PartialEq, Eq, Default)]
pub struct Route {
    pub forward: bool,
    /// Bytes to send the client instead of the message.
    pub replace: Option<Bytes>,
    /// The message did not fit what the queue expected: pgtenant lost track.
    pub unexpected: bool,
    /// Effects of messages that failed or were skipped, to undo, in the order they happened
    /// (undo them last first).
    pub undo: Vec<Effect>,
    /// Effects of messages that completed.
    pub done: Vec<Effect>,
    /// A session SET that just completed successfully.
    pub completed_set: Option<SetCmd>,
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
    /// Effects of entries skipped or answered while advancing, handed out with the next route.
    undo: Vec<Effect>,
    done: Vec<Effect>,
    /// pgtenant cannot tell what the server still owes: the connection is never reused.
    uncertain: bool,
    /// An extended-protocol message was sent since the last ReadyForQuery: the server holds
    /// an implicit transaction (or skips) until a Sync, even once it owes no reply (a Sync
    /// read by a COPY does not end it).
    open: bool,
    /// The message pushed last was consumed as it was pushed (added with the current
    /// model's `attach_effects`).
    last_consumed: bool,
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
            last_consumed: false,
        }
    }
}

/// What the relay passes as the SQLSTATE of the error a CopyFail raises (57014 with "COPY from
/// stdin failed: …"): unlike a cancel's 57014, it needs something read to be raised.
#[allow(dead_code)]
pub const COPY_FAIL_CODE: &str = "57014:copyfail";

impl Pipeline {
    /// Nothing owed and nothing pending: the server connection may be released (as far as
    /// replies go).
    pub fn is_idle(&self) -> bool {
        self.owes_nothing() && !self.uncertain && !self.open
    }

    /// The server owes no reply to anything sent, and is not waiting for copy data.
    pub fn owes_nothing(&self) -> bool {
        self.queue.is_empty() && !matches!(self.mode, Mode::CopyIn { .. })
    }

    pub fn uncertain(&self) -> bool {
        self.uncertain
    }

    /// ReadyForQuery messages still owed by the server (at least).
    pub fn pending_ready(&self) -> usize {
        self.queue.iter().filter(|e| matches!(e.kind, Kind::Sync | Kind::Query | Kind::FunctionCall)).count()
    }

    /// In COPY FROM STDIN.
    pub fn copy_in(&self) -> bool {
        matches!(self.mode, Mode::CopyIn { .. })
    }

    /// Records a client message forwarded as it is.
    pub fn push(&mut self, kind: Kind, action: Action) {
        self.push_full(kind, action, Vec::new(), None);
    }

    /// Records a message with an effect to undo should it fail or be skipped.
    pub fn push_effect(&mut self, kind: Kind, action: Action, effect: Vec<Effect>) {
        self.push_full(kind, action, effect, None);
    }

    /// Records a Query or Execute that runs a session SET.
    pub fn push_set(&mut self, kind: Kind, set: Option<SetCmd>) {
        self.push_full(kind, Action::Forward, Vec::new(), set);
    }

    /// Adds effects to the message recorded last (added to this oracle with the current
    /// model's method of the same name; it changes nothing else).
    pub fn attach_effects(&mut self, effects: Vec<Effect>) {
        match self.queue.back_mut() {
            Some(back) if !self.last_consumed => back.effect.extend(effects),
            // The message went as it was pushed (skipped): its effects are undone.
            _ => self.undo.extend(effects),
        }
    }

    fn push_full(&mut self, kind: Kind, action: Action, effect: Vec<Effect>, set: Option<SetCmd>) {
        // Consecutive copy data count as one: only its position between other messages matters.
        if kind == Kind::CopyData && self.queue.back().is_some_and(|b| b.kind == Kind::CopyData) {
            return;
        }
        if kind.extended() && kind != Kind::Flush {
            self.open = true;
        }
        self.queue.push_back(Entry { kind, action, effect, set, errored: false });
        self.advance();
        self.last_consumed = self.queue.is_empty();
    }

    /// Whether a message carrying the test's unnamed-Parse marker is queued.
    pub fn has_marker(&self) -> bool {
        let marker = super::unnamed_marker();
        self.queue.iter().any(|e| e.effect.contains(&marker))
    }

    /// Effects to undo of entries skipped since the last route (the relay collects them after
    /// staging too, since pushing may skip).
    pub fn take_effects(&mut self) -> (Vec<Effect>, Vec<Effect>) {
        (std::mem::take(&mut self.undo), std::mem::take(&mut self.done))
    }

    /// Whether [`Pipeline::take_effects`] has anything to hand out.
    pub fn has_effects(&self) -> bool {
        !self.undo.is_empty() || !self.done.is_empty()
    }

    /// Consumes entries that earn no reply in the server's current state.
    fn advance(&mut self) {
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
                        self.undo.extend(e.effect);
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

    /// Routes one server message by its tag; `code` is the SQLSTATE of an ErrorResponse.
    pub fn route(&mut self, tag: u8, code: &str) -> Route {
        let mut route = self.route_inner(tag, code);
        // Most messages carry no effect: nothing is moved then.
        if !self.undo.is_empty() {
            route.undo.append(&mut self.undo);
        }
        if !self.done.is_empty() {
            route.done.append(&mut self.done);
        }
        if route.unexpected {
            self.uncertain = true;
        }
        route
    }

    fn route_inner(&mut self, tag: u8, code: &str) -> Route {
        // Asynchronous messages belong to no request.
        if matches!(tag, be::NOTICE_RESPONSE | be::NOTIFICATION_RESPONSE | be::PARAMETER_STATUS) {
            return Route { forward: true, ..Route::default() };
        }
        self.advance();
        // Built only when returned (a Route built and dropped costs on every message).
        let unexpected = || Route { forward: true, unexpected: true, ..Route::default() };
        let Some(front) = self.queue.front_mut() else { return unexpected() };
        let action = front.action.clone();
        let kind = front.kind;
        if kind == Kind::Unknown && !matches!(self.mode, Mode::CopyIn { .. }) {
            // "invalid frontend message type": FATAL, then the server closes.
            return if tag == be::ERROR_RESPONSE { self.complete(&action, tag, false) } else { unexpected() };
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
                        self.complete(&action, tag, false)
                    } else {
                        self.reply(&action, tag, false)
                    }
                }
                be::ERROR_RESPONSE => {
                    self.copy_failed(code);
                    if extended {
                        self.fail(&action, code)
                    } else {
                        if let Some(f) = self.queue.front_mut() {
                            f.errored = true;
                        }
                        self.error_reply(&action, code)
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
            return self.complete(&action, tag, false);
        }
        let describe = matches!(kind, Kind::DescribeStatement | Kind::DescribePortal);
        if describe && matches!(action, Action::Probe(_)) && tag != be::ERROR_RESPONSE {
            return unexpected();
        }
        match (kind, tag) {
            (Kind::Parse, be::PARSE_COMPLETE)
            | (Kind::Bind, be::BIND_COMPLETE)
            | (Kind::Close, be::CLOSE_COMPLETE) => self.complete(&action, tag, false),
            (Kind::DescribeStatement, be::PARAMETER_DESCRIPTION) if !self.started => {
                self.started = true;
                self.reply(&action, tag, false)
            }
            (Kind::DescribeStatement, be::ROW_DESCRIPTION | be::NO_DATA) if self.started => {
                self.complete(&action, tag, false)
            }
            (Kind::DescribePortal, be::ROW_DESCRIPTION | be::NO_DATA) => self.complete(&action, tag, false),
            (Kind::Execute, be::DATA_ROW) if !self.copy_out => {
                self.started = true;
                self.reply(&action, tag, false)
            }
            (Kind::Execute | Kind::Query, be::COPY_OUT_RESPONSE) if !self.copy_out => {
                self.started = true;
                self.copy_out = true;
                self.reply(&action, tag, false)
            }
            (Kind::Execute | Kind::Query, be::COPY_DATA) if self.copy_out => self.reply(&action, tag, false),
            (Kind::Execute | Kind::Query, be::COPY_DONE) if self.copy_out => {
                self.copy_out = false;
                self.reply(&action, tag, false)
            }
            (Kind::Execute, be::COMMAND_COMPLETE | be::EMPTY_QUERY_RESPONSE | be::PORTAL_SUSPENDED)
                if !self.copy_out =>
            {
                let ok = !front.errored;
                self.complete(&action, tag, ok)
            }
            (Kind::Execute | Kind::Query, be::COPY_IN_RESPONSE) if !self.copy_out => {
                self.started = true;
                self.mode = Mode::CopyIn { extended: kind == Kind::Execute };
                self.reply(&action, tag, false)
            }
            (
                Kind::Query,
                be::ROW_DESCRIPTION | be::DATA_ROW | be::COMMAND_COMPLETE | be::EMPTY_QUERY_RESPONSE,
            ) if !self.copy_out => {
                self.started = true;
                self.reply(&action, tag, false)
            }
            (Kind::Query | Kind::FunctionCall | Kind::Sync, be::ERROR_RESPONSE) => {
                // Not extended: no skip; ReadyForQuery follows.
                self.started = kind != Kind::Sync;
                self.copy_out = false;
                front.errored = true;
                self.error_reply(&action, code)
            }
            (Kind::FunctionCall, be::FUNCTION_CALL_RESPONSE) if !self.started => {
                self.started = true;
                self.reply(&action, tag, false)
            }
            (Kind::Query | Kind::FunctionCall | Kind::Sync, be::READY_FOR_QUERY) if !self.copy_out => {
                let ok = !front.errored;
                self.complete(&action, tag, ok)
            }
            (k, be::ERROR_RESPONSE) if k.extended() => self.fail(&action, code),
            _ => unexpected(),
        }
    }

    /// A reply that does not complete the front entry.
    fn reply(&mut self, action: &Action, _tag: u8, _ok: bool) -> Route {
        Route { forward: *action == Action::Forward, ..Route::default() }
    }

    /// An ErrorResponse for the front entry that does not end it.
    fn error_reply(&mut self, action: &Action, code: &str) -> Route {
        match action {
            Action::Probe(probe) if probe.code == code => {
                Route { forward: false, replace: Some(probe.error.clone()), ..Route::default() }
            }
            _ => Route { forward: true, ..Route::default() },
        }
    }

    /// The reply that completes the front entry.
    fn complete(&mut self, action: &Action, tag: u8, ok: bool) -> Route {
        let mut route = Route { forward: *action == Action::Forward, ..Route::default() };
        if tag == be::READY_FOR_QUERY {
            self.open = false;
        }
        if let Some(e) = self.queue.pop_front() {
            if ok && matches!(tag, be::COMMAND_COMPLETE | be::READY_FOR_QUERY) {
                route.completed_set = e.set;
            }
            if !e.effect.is_empty() {
                if e.errored {
                    route.undo.extend(e.effect);
                } else {
                    route.done.extend(e.effect);
                }
            }
        }
        self.started = false;
        self.copy_out = false;
        self.advance();
        route
    }

    /// An error in an extended-protocol message: it ends, and the server skips to Sync.
    fn fail(&mut self, action: &Action, code: &str) -> Route {
        let mut route = self.error_reply(action, code);
        if let Some(e) = self.queue.pop_front() {
            if !e.effect.is_empty() {
                route.undo.extend(e.effect);
            }
        }
        self.started = false;
        self.copy_out = false;
        self.mode = Mode::Skip;
        self.advance();
        route
    }

    /// COPY FROM STDIN failed: decides which queued messages the copy consumed. Copy data,
    /// CopyDone and CopyFail earn nothing whether the copy read them or not; a Sync or another
    /// message read after copy data may or may not have been read by the copy.
    fn copy_failed(&mut self, code: &str) {
        self.mode = Mode::Normal;
        let stream: Vec<Kind> = self.queue.iter().skip(1).map(|e| e.kind).collect();
        // The copy reads up to the first message that ends it (CopyDone, CopyFail, or any
        // other message, which fails it with 08P01: behind another SQLSTATE it did not read
        // that message, fuzz seed 2590956725360).
        let end = stream.iter().position(|k| !matches!(k, Kind::CopyData | Kind::Sync | Kind::Flush));
        let read = match end {
            Some(e) if matches!(stream[e], Kind::CopyDone | Kind::CopyFail) => e + 1,
            Some(e) if code.is_empty() || code == "08P01" => e + 1,
            Some(e) => e,
            None => stream.len(),
        };
        let segment = &stream[..read];
        // Whether the copy read a Sync or failed before it (an error raised before the copy
        // reads anything: a view, a statement trigger, a cancel) is not observable, and the
        // error says nothing of it (a trigger may raise any SQLSTATE and message): a Sync
        // there makes the replies uncertain. Copy data, CopyDone, CopyFail and Flush earn
        // nothing either way.
        let certain = segment
            .iter()
            .all(|k| matches!(k, Kind::CopyData | Kind::CopyDone | Kind::CopyFail | Kind::Flush));
        if !certain {
            self.uncertain = true;
        }
        let n = segment.len();
        self.queue.drain(1..1 + n);
    }
}
