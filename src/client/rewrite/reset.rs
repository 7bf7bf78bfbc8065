//! The resets a client runs, seen as its messages are staged, with pgtenant's restore of the
//! settings they take queued behind them (see [`crate::client::restore`]).

use super::Stage;
use crate::client::restore;
use crate::client::setcmd::SetCmd;
use crate::client::statements::Portal;
use crate::protocol::backend::cstr;
use crate::protocol::frame::HEADER_LEN;
use crate::protocol::frontend::tag as fe;
use crate::protocol::frontend::{bind_parts, execute_portal};

impl Stage<'_> {
    /// Session mode, for a client whose connection carries settings a reset takes (see
    /// [`super::restore`]): a Query that resets, or an Execute of the unnamed statement that
    /// does (followed from its Parse and Bind), is forwarded with the restore behind it (true);
    /// anything else is left to [`Stage::forward_session`] (false). A named statement that
    /// resets is not followed (README).
    #[cold]
    #[inline(never)]
    pub(super) fn session_reset(&mut self, tag: u8, frame: &[u8]) -> bool {
        let body = frame.get(HEADER_LEN..).unwrap_or_default();
        match tag {
            fe::QUERY => {
                // The server drops the unnamed statement.
                self.sets.unnamed = None;
                let Some(cmd) = restore::reset_in(body) else { return false };
                let settings = self.vars.after_reset(&cmd, self.tenant_vars);
                self.statements.simple_query();
                self.forward(tag, frame);
                restore::queue_query(self.out, self.pipeline, &settings);
                return true;
            }
            // The unnamed statement's text is read to its end only when its first word may
            // be a reset's.
            fe::PARSE if body.first() == Some(&0) => {
                let sql = &body[1..];
                self.sets.unnamed = restore::may_reset(sql)
                    .then(|| cstr(sql).and_then(|(sql, _)| restore::reset_in(sql)))
                    .flatten()
                    .map(Box::new);
            }
            fe::BIND if self.sets.unnamed.is_some() || self.sets.bound.is_some() => {
                self.sets.bound = match bind_parts(frame) {
                    Some((portal, b"", _)) => {
                        self.sets.unnamed.as_ref().map(|set| Box::new((portal.into(), SetCmd::clone(set))))
                    }
                    _ => None,
                };
            }
            fe::EXECUTE => {
                let Some(bound) = self.sets.bound.as_ref() else { return false };
                if execute_portal(frame) != Some(&bound.0[..]) {
                    return false;
                }
                let settings = self.vars.after_reset(&bound.1, self.tenant_vars);
                let commit = bound.1 == SetCmd::DiscardAll;
                // An Execute of the unnamed portal the client has not bound is answered as
                // `forward_session` answers it.
                if bound.0.is_empty() && self.statements.executes_portal(b"") != Portal::Owned {
                    return false;
                }
                self.forward(tag, frame);
                restore::queue_unsynced(self.out, self.pipeline, &settings, commit);
                return true;
            }
            _ => {}
        }
        false
    }

    /// Transaction mode: behind the client's Query `frame` (staged, and a reset), the restore
    /// of what it takes, if anything. Its text is parsed again here: nothing is kept for it
    /// on the way of the Queries that are no reset.
    #[cold]
    #[inline(never)]
    pub(super) fn restore_behind_query(&mut self, frame: &[u8]) {
        let text = frame.get(HEADER_LEN..frame.len().saturating_sub(1)).unwrap_or_default();
        if let Some(settings) = restore::reset_in(text).and_then(|set| self.restores(&set)) {
            restore::queue_query(self.out, self.pipeline, &settings);
        }
    }

    /// What a reset the client runs in transaction mode takes that is set again behind it
    /// (see [`super::restore`]); `None` for a SET, or a reset of nothing kept.
    #[cold]
    #[inline(never)]
    pub(super) fn restores(&self, set: &SetCmd) -> Option<Vec<(String, String)>> {
        if matches!(set, SetCmd::Set { .. }) {
            return None;
        }
        Some(self.vars.after_reset(set, self.tenant_vars)).filter(|s| !s.is_empty())
    }
}
