//! When a session whose client left (Terminate, a malformed frame) ends, and whether its
//! server connection is idle enough to go back to the pool.

use tokio::io::{AsyncRead, AsyncWrite};

use super::plain::PlainTcp;
use super::{Exit, ResetPhase, Session};
use crate::protocol::backend::txn;
use crate::protocol::frontend;

impl<S: AsyncRead + AsyncWrite + Unpin + Send + PlainTcp> Session<S> {
    /// After Terminate or a malformed frame, and once everything before it went out: with
    /// nothing owed the session ends; otherwise the server gets the Terminate too, so the
    /// client gets exactly what PostgreSQL sends before it exits (errors, but not replies it
    /// still buffered), and the session ends when the server closes.
    #[inline(always)]
    pub(super) fn ended(&mut self) -> Option<Exit> {
        // Checked at every settle, twice: the common case (a client still there) inline.
        if !(self.terminated || self.broken.is_some()) || self.c_scanned != 0 {
            return None;
        }
        self.ended_now()
    }

    #[cold]
    #[inline(never)]
    fn ended_now(&mut self) -> Option<Exit> {
        let exit = match self.server.as_ref() {
            None => true,
            Some(_) if self.out.is_empty() && self.quiet() && !self.sent_terminate => true,
            // Only pgtenant's own replies are due (the restore behind a reset the client ran
            // last): they come without the client, and the connection then goes back to the
            // pool as after any client that leaves between transactions.
            Some(_) if self.out.is_empty() && !self.sent_terminate && self.only_own_replies_due() => false,
            Some(_) => {
                if !self.sent_terminate {
                    frontend::terminate(&mut self.out);
                    self.sent_terminate = true;
                }
                false
            }
        };
        exit.then(|| self.broken.take().map_or(Exit::Client, |e| Exit::Error(*e)))
    }

    /// The server owes nothing for what was sent (by the reply model) and nothing is
    /// half-read.
    pub(super) fn quiet(&self) -> bool {
        self.pipeline.owes_nothing()
            && self.progress.reset == ResetPhase::Done
            && self.s_remaining == 0
            && self.sbuf.is_empty()
            && self.stage_remaining == 0
    }

    /// Nothing in flight: the server owes nothing and the client sent nothing unanswered.
    /// Never after a FATAL: the server is closing the connection, which must not go back to
    /// the pool (the reply model may owe nothing once the error was routed).
    pub(super) fn server_idle(&self) -> bool {
        let p = &self.progress;
        // Effect-free loads, the ones that fail most often (in a transaction, bytes waiting) first.
        p.status == txn::IDLE
            && self.c_scanned == 0
            && self.out.is_empty()
            && self.c_remaining == 0
            && !p.extended_open
            && !self.sent_terminate
            && !p.fatal
            && !p.desync
            && self.pipeline.is_idle()
            && self.quiet()
    }

    /// [`Session::server_idle`] but for client messages held back (see `Progress::yielding`):
    /// what was sent is answered and ended its transaction.
    pub(super) fn idle_but_for_client(&self) -> bool {
        let p = &self.progress;
        p.status == txn::IDLE
            && self.out.is_empty()
            && !self.sent_terminate
            && !p.fatal
            && !p.desync
            && self.pipeline.is_idle()
            && self.quiet()
    }

    /// What the server still owes answers pgtenant's own messages only, with nothing half-read
    /// or unsent, and comes without another message from the client (no Sync or Flush due).
    fn only_own_replies_due(&self) -> bool {
        self.pipeline.owes_only_its_own()
            && self.progress.reset == ResetPhase::Done
            && self.s_remaining == 0
            && self.stage_remaining == 0
            && !self.progress.fatal
            && !self.progress.desync
    }
}
