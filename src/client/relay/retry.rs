//! A handoff tried again on another server connection. When a cross-tenant reset (or the
//! setup behind it) fails with an error, the server skipped everything pgtenant had sent
//! behind it up to the client's first Sync (`ignore_till_sync`), so nothing of the client
//! ran: pgtenant closes that connection and hands the client's messages, as the client sent
//! them, to another one (checked out again: a new connection carries no previous session),
//! so the client sees only its own replies. Nothing of the failed attempt reaches the client:
//! a handoff's replies are swallowed until its last one is checked
//! (`Session::check_reset_reply`).
//!
//! Only a handoff that carries a reset keeps a copy of the client's bytes (and one whose setup
//! runs under a timeout the connection carries or may carry unseen, which another client's
//! cancel or timer may fail, and one that is itself a retry, whose setup may fail too), only
//! while its replies are due, and only up to [`MAX_KEPT`]: a frame that would pass it (a
//! large message) waits for the handoff's verdict (a Flush asks for it), so that a tenant
//! able to fail the reset (a timeout set inside a function, a cancel landing in it) cannot
//! end the next tenant's session with it. Past [`HANDOFF_ATTEMPTS`], or when what failed is not an error the server
//! answered in place of pgtenant's own statements, the session ends with the error as it did
//! before.

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite};

use super::{PlainTcp, ResetPhase, Session, MAX_CLIENT_BUFFERED};
use crate::client::meter::PreparedCounts;
use crate::client::pipeline::Pipeline;
use crate::client::statements::Effect;
use crate::pool::session::send_cancel;
use crate::pool::Slot;
use crate::protocol::backend::{tag as be, txn};

/// Handoffs a client's first messages get, the first included.
pub(super) const HANDOFF_ATTEMPTS: u8 = 3;

/// Client bytes kept for a retry: what the client buffer holds at most. The bytes came
/// through that buffer; what a client sends past them behind an unconfirmed reset (a large
/// message, a long pipeline of simple queries) waits for the reset's verdict.
const MAX_KEPT: usize = MAX_CLIENT_BUFFERED;

/// A handoff that may be tried again (see the module's documentation).
#[derive(Debug, Default)]
pub(super) struct Retry {
    /// The client's bytes staged behind the handoff, as the client sent them.
    kept: BytesMut,
    /// The handoff this is (1 for the first).
    attempt: u8,
    /// The reset outlived its bound and its backend was sent a cancel (see
    /// [`Session::cancel_late_reset`]).
    cancelled: bool,
    /// The failed connection's place in the pool and the tenant's cap, kept from its close
    /// to the retry's checkout ([`Session::attach`]), so the retry never queues behind the
    /// pool's waiters.
    pub(super) slot: Option<Slot>,
    /// The client's named-statement messages counted in its meter when the first attempt
    /// began: a retry counts the messages it stages again from there.
    mark: PreparedCounts,
}

impl Retry {
    /// Client bytes it may keep still: staging stops short of a frame that would pass
    /// [`MAX_KEPT`] until the handoff's verdict (`Session::stage`).
    pub(super) fn room(&self) -> usize {
        MAX_KEPT.saturating_sub(self.kept.len())
    }

    /// What a handoff whose replies are due keeps for a retry: the first one only when it
    /// carries a reset or a setup under a timeout the connection carries (`keep`), with the
    /// meter's named-statement counts then (`mark`); a retry (`before`) while attempts are left.
    pub(super) fn arm(before: Option<Box<Retry>>, keep: bool, mark: PreparedCounts) -> Option<Box<Retry>> {
        match before {
            Some(mut r) if r.attempt < HANDOFF_ATTEMPTS => {
                r.kept.clear();
                r.cancelled = false;
                Some(r)
            }
            Some(_) => None,
            None => (keep && HANDOFF_ATTEMPTS > 1)
                .then(|| Box::new(Retry { attempt: 1, mark, ..Retry::default() })),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + PlainTcp> Session<S> {
    /// Client bytes that may be staged now: behind a handoff whose replies are due and that
    /// may be retried, what it can keep still ([`Retry::room`]); otherwise no bound.
    #[inline(always)]
    pub(super) fn retry_room(&self) -> usize {
        match &self.progress.retry {
            Some(r) if self.progress.reset != ResetPhase::Done => r.room(),
            _ => usize::MAX,
        }
    }

    /// Keeps the first `n` bytes of the client buffer, just staged behind a handoff whose
    /// replies are due, for a retry; past [`MAX_KEPT`] none are kept and the handoff is not
    /// retried. Called at every staging: one test when no handoff is due.
    #[inline(always)]
    pub(super) fn keep_staged(&mut self, n: usize) {
        if self.progress.retry.is_some() {
            self.keep_staged_now(n);
        }
    }

    #[cold]
    #[inline(never)]
    fn keep_staged_now(&mut self, n: usize) {
        let Some(r) = self.progress.retry.as_mut() else { return };
        if r.kept.len() + n > MAX_KEPT {
            tracing::debug!(tenant = %self.tenant.id, "too much sent behind a handoff to keep it for a retry");
            self.progress.retry = None;
            return;
        }
        r.kept.extend_from_slice(&self.cbuf[..n]);
    }

    /// After a handoff's reset or setup failed with an error (the server answered it in
    /// place of one of pgtenant's statements, and skips what follows up to the client's first
    /// Sync): closes the connection and puts the client's messages back to be handed to
    /// another one, if the handoff kept them (see [`Retry::arm`]). Whether it did; if not, the
    /// caller ends the session as before.
    pub(super) fn retry_handoff(&mut self) -> bool {
        let Some(mut r) = self.progress.retry.take() else { return false };
        let Some(co) = self.server.take() else { return false };
        // The client's cancel key was never pointed at it (only once a handoff is confirmed).
        self.key.detach();
        tracing::info!(
            tenant = %self.tenant.id,
            attempt = r.attempt,
            pid = co.conn_ref().backend_pid(),
            "session reset or setup failed: closing the server connection and handing the client's messages to another"
        );
        // Closed, its place kept: the retry takes it with a connection that needs no reset
        // (`PoolManager::checkout_retry`), never one of the idle connections another tenant
        // may have left failing resets on.
        r.slot = Some(co.close_keeping_slot());
        let now = self.meter.now();
        self.meter.released_at(now);
        // The client's messages are counted again as they are staged again.
        self.meter.rewind_prepared(r.mark);
        // The model settles the client's messages as the server did: skipped.
        let (undo, done) = skip_all(&mut self.pipeline);
        self.pipeline = Pipeline::default();
        self.apply_effects(undo, done);
        self.pipeline.settle_barrier(&mut self.statements);
        // Nothing more goes to the old connection, and nothing more of it is read.
        self.out.clear();
        self.sbuf.clear();
        self.s_remaining = 0;
        self.s_discard = false;
        // The client's bytes go back in front of what it sent since, to be staged again (a
        // frame that was streaming is read afresh from its header, kept with it).
        let mut kept = std::mem::take(&mut r.kept);
        self.c_scanned += kept.len();
        kept.extend_from_slice(&self.cbuf);
        self.cbuf = kept;
        self.stage_remaining = 0;
        // A Terminate is sent again behind them (the server skipped it too).
        self.sent_terminate = false;
        let p = &mut self.progress;
        p.reset = ResetPhase::Done;
        p.reset_synced = false;
        p.reset_since = None;
        p.status = txn::IDLE;
        p.server_armed = false;
        p.fatal = false;
        r.attempt += 1;
        p.retry = Some(r);
        self.proxy.metrics.global().handoff_retried();
        true
    }

    /// The reset's bound ([`super::Limit::Reset`]) passed. A handoff that may be retried has
    /// its backend sent a cancel, once, and is given the bound again: the cancel fails the
    /// statement that waits (the server then skips the client's messages, and the handoff is
    /// retried when its error comes) or, if the handoff's statements had just finished, the
    /// client's first statement, which then fails as after a statement timeout. Whether it
    /// did; if not, the session ends as before (08006, the connection cancelled and closed).
    pub(super) fn cancel_late_reset(&mut self) -> bool {
        let late = |s: &Self| {
            s.proxy.metrics.global().handoff_failed();
            tracing::warn!(tenant = %s.tenant.id, "cross-tenant reset did not finish in time: cancelling it and closing the server connection");
            false
        };
        let due = self.progress.retry.as_mut().filter(|r| !r.cancelled && r.attempt < HANDOFF_ATTEMPTS);
        let (Some(r), Some(server)) = (due, self.server.as_mut()) else {
            return late(self);
        };
        r.cancelled = true;
        // The cancel may reach the backend after the reset ended by itself and the
        // connection went on: it lands on this client's statements (as documented), never on
        // the next client's (the connection is closed at its release).
        server.conn().retire();
        let c = server.conn_ref();
        let (addr, pid, secret) = c.cancel_key();
        let addr = addr.clone();
        tracing::warn!(tenant = %self.tenant.id, pid, "cross-tenant reset did not finish in time: cancelling it, to hand the client's messages to another server connection");
        tokio::spawn(async move {
            send_cancel(&addr, pid, secret).await;
        });
        self.progress.reset_since = Some(tokio::time::Instant::now());
        true
    }
}

/// Settles every message in `pipeline` as skipped by the server (they went behind a handoff
/// that failed): routed an error and a ReadyForQuery at a time, as the server answers a
/// failed statement and the Sync it skips to, until it owes nothing or cannot tell. Each
/// round ends at least one message (or the model loses track), so it ends. The effects to
/// undo, and those done (a Sync's). (`Pipeline::route` is inlined always: with this second
/// caller it was not inlined into the relay's, 84 instructions more per transaction.)
fn skip_all(pipeline: &mut Pipeline) -> (Vec<Effect>, Vec<Effect>) {
    let (mut undo, mut done) = (Vec::new(), Vec::new());
    loop {
        let (u, d) = pipeline.take_effects();
        undo.extend(u);
        done.extend(d);
        if pipeline.owes_nothing() || pipeline.uncertain() {
            return (undo, done);
        }
        pipeline.route(be::ERROR_RESPONSE, "");
        pipeline.route(be::READY_FOR_QUERY, "");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::pipeline::{Action, Kind};

    #[test]
    fn a_retry_is_kept_only_behind_a_reset_and_for_so_many_attempts() {
        assert!(Retry::arm(None, false, PreparedCounts::default()).is_none(), "no reset: nothing kept");
        let mut r =
            Retry::arm(None, true, PreparedCounts::default()).expect("a reset keeps the client's bytes");
        assert_eq!(r.attempt, 1);
        r.kept.extend_from_slice(b"Q\0\0\0\x05x");
        r.cancelled = true;
        r.attempt = 2;
        let r =
            Retry::arm(Some(r), false, PreparedCounts::default()).expect("a retry keeps them, reset or not");
        assert!(r.kept.is_empty() && !r.cancelled);
        let mut last = r;
        last.attempt = HANDOFF_ATTEMPTS;
        assert!(Retry::arm(Some(last), true, PreparedCounts::default()).is_none(), "attempts used up");
    }

    #[test]
    fn skipped_messages_leave_the_model_owing_nothing() {
        // Up to a Sync (an extended batch behind the reset), simple queries (no Sync: the
        // server skips them all), and an extended batch whose Sync has not come.
        let batches: [&[Kind]; 3] = [
            &[Kind::Parse, Kind::Bind, Kind::Execute, Kind::Sync],
            &[Kind::Query, Kind::Query],
            &[Kind::Parse, Kind::Bind, Kind::DescribePortal, Kind::Execute],
        ];
        for batch in batches {
            let mut p = Pipeline::default();
            for kind in batch {
                p.push(*kind, Action::Forward);
            }
            let (undo, done) = skip_all(&mut p);
            assert!(undo.is_empty() && done.is_empty(), "{batch:?}");
            assert!(p.owes_nothing() || p.uncertain(), "{batch:?}");
        }
    }
    #[test]
    fn skipping_any_sequence_of_messages_ends() {
        // Every sequence of up to six client messages (any kind, either action), settled
        // as skipped: the loop of `skip_all` ends within a round per message (a hostile
        // client chooses what goes behind a reset; a loop that did not end would hold a
        // worker for ever).
        let kinds = crate::client::pipeline::tests::ALL_KINDS;
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            let n = (seed >> 60) as usize % 7;
            let mut p = Pipeline::default();
            let mut batch = Vec::new();
            for i in 0..n {
                let k = kinds[(seed >> (i * 5)) as usize % kinds.len()];
                let own = (seed >> (40 + i)) & 1 == 1;
                p.push(k, if own { Action::Swallow } else { Action::Forward });
                batch.push((k, own));
            }
            let mut rounds = 0;
            while !p.owes_nothing() && !p.uncertain() {
                p.route(be::ERROR_RESPONSE, "");
                p.route(be::READY_FOR_QUERY, "");
                let _ = p.take_effects();
                rounds += 1;
                assert!(rounds <= n + 1, "{batch:?} does not end");
            }
        }
    }
}
