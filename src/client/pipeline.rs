//! What the server owes the client, message by message. Every client message that earns a
//! reply is queued when it goes to the server; each server reply completes the entry at the
//! front. Entries pgtenant answers itself (a Parse of a statement the server connection
//! already has, a Close of a named statement) are answered when they reach the front, and the
//! replies to messages pgtenant injected (a Parse re-preparing a statement on another server
//! connection) are swallowed.
//!
//! This tracks only reply boundaries (DESIGN.md principle 1): the server stays the source of
//! truth for everything else. Reference: "Extended Query" and "COPY Operations" in
//! <https://www.postgresql.org/docs/current/protocol-flow.html>.

use std::collections::VecDeque;

use std::sync::Arc;

use bytes::Bytes;

use super::setcmd::SetCmd;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Parse,
    Bind,
    Describe,
    Execute,
    Close,
    Sync,
    Query,
    FunctionCall,
    /// CopyDone / CopyFail: no reply of its own; marks where the client ended a COPY.
    CopyEnd,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Forward,
    /// pgtenant's own message: its reply does not reach the client.
    Swallow,
    /// Not sent to the server: pgtenant answers with these bytes, in order.
    Answer(Bytes),
}

#[derive(Clone, Debug)]
struct Entry {
    kind: Kind,
    action: Action,
    /// For a Parse sent to the server: the statement it creates there.
    statement: Option<Arc<str>>,
    /// A session SET this message runs, tracked once it succeeds.
    set: Option<SetCmd>,
    /// An ErrorResponse arrived while this (simple) query ran.
    errored: bool,
}

/// What to do with one server message.
#[derive(Debug, PartialEq, Eq, Default)]
pub struct Route {
    pub forward: bool,
    /// The message did not fit what the queue expected: pgtenant lost track.
    pub unexpected: bool,
    /// Statements whose Parse failed or was skipped after an error: the server connection
    /// does not have them after all.
    pub not_prepared: Vec<Arc<str>>,
    /// A session SET that just completed successfully.
    pub completed_set: Option<SetCmd>,
}

#[derive(Default, Debug)]
pub struct Pipeline {
    queue: VecDeque<Entry>,
    /// Answers that reached the front, for the relay to write to the client (in order, after
    /// whatever it forwarded before them).
    pub answers: Vec<Bytes>,
    /// The server is in COPY FROM STDIN: Syncs the client sends now are ignored by it.
    copy_in: bool,
    /// A COPY started by Execute ended: the server waits for a Sync before it is idle.
    awaiting_sync: bool,
}

impl Pipeline {
    /// Nothing owed: the server connection may be released (as far as replies go).
    pub fn is_idle(&self) -> bool {
        self.queue.is_empty() && !self.copy_in && !self.awaiting_sync && self.answers.is_empty()
    }

    /// ReadyForQuery messages still owed by the server.
    pub fn pending_ready(&self) -> usize {
        self.queue
            .iter()
            .filter(|e| {
                matches!(e.kind, Kind::Sync | Kind::Query | Kind::FunctionCall) && e.action == Action::Forward
            })
            .count()
    }

    pub fn copy_in(&self) -> bool {
        self.copy_in
    }

    /// Records a client message (or an injected one) on its way to the server.
    pub fn push(&mut self, kind: Kind, action: Action) {
        self.push_entry(kind, action, None, None);
    }

    /// Records a Parse that creates `statement` on the server.
    pub fn push_statement(&mut self, kind: Kind, action: Action, statement: Option<Arc<str>>) {
        self.push_entry(kind, action, statement, None);
    }

    /// Records a Query or Execute that runs a session SET.
    pub fn push_set(&mut self, kind: Kind, set: Option<SetCmd>) {
        self.push_entry(kind, Action::Forward, None, set);
    }

    fn push_entry(&mut self, kind: Kind, action: Action, statement: Option<Arc<str>>, set: Option<SetCmd>) {
        match kind {
            // The server ignores Syncs during COPY FROM STDIN (`CopyGetData` in
            // src/backend/commands/copyfromparse.c): no reply to wait for.
            Kind::Sync if self.copy_in => return,
            Kind::Sync => self.awaiting_sync = false,
            Kind::CopyEnd => self.copy_in = false,
            _ => {}
        }
        self.queue.push_back(Entry { kind, action, statement, set, errored: false });
        self.answer_front();
    }

    /// Routes one server message by its tag.
    pub fn route(&mut self, tag: u8) -> Route {
        let forward = Route { forward: true, ..Route::default() };
        match tag {
            // Asynchronous messages belong to no request.
            b'N' | b'A' | b'S' => return forward,
            b'G' => {
                self.start_copy_in();
                return forward;
            }
            _ => {}
        }
        let Some(front) = self.queue.front() else {
            return Route { forward: true, unexpected: true, ..Route::default() };
        };
        let kind = front.kind;
        let forward = front.action != Action::Swallow;
        let complete = match (kind, tag) {
            (Kind::Parse, b'1') | (Kind::Bind, b'2') | (Kind::Close, b'3') => true,
            (Kind::Describe, b't') => false,
            (Kind::Describe, b'T' | b'n') => true,
            (Kind::Execute, b'C' | b'I' | b's') => true,
            (Kind::Execute, b'D' | b'H' | b'd' | b'c' | b'W') => false,
            (Kind::Sync | Kind::Query | Kind::FunctionCall, b'Z') => true,
            (Kind::Query, b'E') => {
                if let Some(e) = self.queue.front_mut() {
                    e.errored = true;
                }
                false
            }
            (Kind::Query, _) | (Kind::FunctionCall, b'V') => false,
            (Kind::FunctionCall, b'E') => false,
            (_, b'E') => {
                // An error in the extended protocol: the server skips everything up to the
                // next Sync, so those messages get no replies (and pgtenant's own answers
                // for them are dropped too). The error itself always reaches the client.
                let mut not_prepared = Vec::new();
                while let Some(e) = self.queue.front() {
                    if e.kind == Kind::Sync {
                        break;
                    }
                    if let Some(e) = self.queue.pop_front() {
                        not_prepared.extend(e.statement);
                    }
                }
                self.copy_in = false;
                self.answer_front();
                return Route { forward: true, not_prepared, ..Route::default() };
            }
            _ => return Route { forward: true, unexpected: true, ..Route::default() },
        };
        let mut completed_set = None;
        if complete {
            if let Some(e) = self.queue.pop_front() {
                if !e.errored && matches!(tag, b'C' | b'Z') {
                    completed_set = e.set;
                }
            }
            self.answer_front();
        }
        if tag == b'Z' {
            self.copy_in = false;
        }
        Route { forward: forward || tag == b'E', completed_set, ..Route::default() }
    }

    /// CopyInResponse: the server now ignores Syncs until the client's CopyDone/CopyFail.
    fn start_copy_in(&mut self) {
        let by_execute = self.queue.front().is_some_and(|e| e.kind == Kind::Execute);
        // Syncs already queued behind the COPY command and before the client ended the COPY
        // will be ignored by the server.
        let end = self.queue.iter().position(|e| e.kind == Kind::CopyEnd);
        let mut i = 1;
        while i < end.unwrap_or(self.queue.len()) {
            if self.queue[i].kind == Kind::Sync {
                self.queue.remove(i);
                if let Some(e) = end.as_ref() {
                    let _ = e;
                }
                continue;
            }
            i += 1;
        }
        let ended = self.queue.iter().any(|e| e.kind == Kind::CopyEnd);
        self.copy_in = !ended;
        if by_execute {
            self.awaiting_sync =
                !self.queue.iter().skip_while(|e| e.kind != Kind::CopyEnd).any(|e| e.kind == Kind::Sync);
        }
    }

    /// Moves answers (and reply-less markers) at the front of the queue out.
    fn answer_front(&mut self) {
        while let Some(front) = self.queue.front() {
            match (&front.action, front.kind) {
                (Action::Answer(bytes), _) => {
                    self.answers.push(bytes.clone());
                    self.queue.pop_front();
                }
                (_, Kind::CopyEnd) => {
                    self.queue.pop_front();
                }
                _ => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fwd(p: &mut Pipeline, kinds: &[Kind]) {
        for k in kinds {
            p.push(*k, Action::Forward);
        }
    }

    #[test]
    fn extended_round_trip() {
        let mut p = Pipeline::default();
        fwd(&mut p, &[Kind::Parse, Kind::Bind, Kind::Describe, Kind::Execute, Kind::Sync]);
        for tag in [b'1', b'2', b'T', b'D', b'D', b'C'] {
            assert_eq!(p.route(tag), Route { forward: true, ..Route::default() });
        }
        assert!(!p.is_idle());
        assert_eq!(p.pending_ready(), 1);
        p.route(b'Z');
        assert!(p.is_idle());
    }

    #[test]
    fn answers_are_placed_in_order_and_injected_replies_swallowed() {
        let mut p = Pipeline::default();
        // Client: Parse (answered locally), Bind on a connection that needed a re-Parse
        // (injected, swallowed), Execute, Sync.
        p.push(Kind::Parse, Action::Answer(Bytes::from_static(b"1\0\0\0\x04")));
        assert_eq!(p.answers.len(), 1, "nothing before it: answered at once");
        p.answers.clear();
        p.push(Kind::Execute, Action::Forward);
        p.push(Kind::Parse, Action::Answer(Bytes::from_static(b"1\0\0\0\x04")));
        assert!(p.answers.is_empty(), "waits behind the Execute");
        p.push(Kind::Parse, Action::Swallow);
        p.push(Kind::Bind, Action::Forward);
        p.push(Kind::Sync, Action::Forward);
        assert!(p.route(b'C').forward);
        assert_eq!(p.answers.len(), 1, "answered once the Execute completed");
        assert!(!p.route(b'1').forward, "injected Parse's reply swallowed");
        assert!(p.route(b'2').forward);
        assert!(p.route(b'Z').forward);
        assert!(p.is_idle() || !p.answers.is_empty());
    }

    #[test]
    fn an_error_skips_to_sync() {
        let mut p = Pipeline::default();
        p.push(Kind::Parse, Action::Swallow);
        p.push(Kind::Bind, Action::Forward);
        p.push(Kind::Close, Action::Answer(Bytes::from_static(b"3\0\0\0\x04")));
        p.push(Kind::Execute, Action::Forward);
        p.push(Kind::Sync, Action::Forward);
        let r = p.route(b'E');
        assert!(r.forward, "the injected Parse's error goes to the client");
        assert!(p.answers.is_empty(), "answers for skipped messages are dropped");
        assert_eq!(p.pending_ready(), 1);
        p.route(b'Z');
        assert!(p.is_idle());
        // Simple query errors do not skip.
        p.push(Kind::Query, Action::Forward);
        p.route(b'E');
        p.route(b'Z');
        assert!(p.is_idle());
    }

    #[test]
    fn copy_from_stdin_by_query_and_by_execute() {
        let mut p = Pipeline::default();
        p.push(Kind::Query, Action::Forward);
        p.route(b'G');
        assert!(p.copy_in());
        p.push(Kind::CopyEnd, Action::Forward);
        p.route(b'C');
        p.route(b'Z');
        assert!(p.is_idle());

        // libpq: Parse/Bind/Execute/Sync, then data, CopyDone, Sync.
        fwd(&mut p, &[Kind::Parse, Kind::Bind, Kind::Execute, Kind::Sync]);
        p.route(b'1');
        p.route(b'2');
        p.route(b'G');
        p.push(Kind::CopyEnd, Action::Forward);
        p.route(b'C');
        assert!(!p.is_idle(), "the server waits for a Sync after an Execute-started COPY");
        p.push(Kind::Sync, Action::Forward);
        p.route(b'Z');
        assert!(p.is_idle());

        // CopyDone sent before the CopyInResponse arrived.
        p.push(Kind::Query, Action::Forward);
        p.push(Kind::CopyEnd, Action::Forward);
        p.route(b'G');
        assert!(!p.copy_in());
        p.route(b'C');
        p.route(b'Z');
        assert!(p.is_idle());
    }

    #[test]
    fn unexpected_replies_are_flagged() {
        let mut p = Pipeline::default();
        assert!(p.route(b'Z').unexpected);
        p.push(Kind::Bind, Action::Forward);
        assert!(p.route(b'1').unexpected);
    }
}
