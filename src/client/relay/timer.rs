//! The fair-share timeouts of a session (query, idle in transaction, client idle): which one
//! applies, and one timer owned by the session for it.
//!
//! None is set by default, and then nothing here reads the clock or touches the timer wheel
//! (except while a cross-tenant reset or a setup is due: [`Limit::Reset`] bounds it).
//! When one is set the timer is moved only when the deadline comes earlier than where it is
//! armed; a later deadline (a client that was active again) is checked when the timer fires,
//! and the timer is then moved to it, so an active client does not re-arm a timer per event.

use std::future::Future;
use std::pin::Pin;
use std::task::Context;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, Sleep};

use super::{PlainTcp, ResetPhase, Session, CLEANUP_TIMEOUT};
use crate::client::pipeline::{Action, Kind};
use crate::protocol::backend::txn;
use crate::protocol::frontend;

/// The fair-share timeouts (`[pool]`, PgBouncer's names), with a tenant's overrides applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Limit {
    Query,
    IdleTransaction,
    ClientIdle,
    /// A cross-tenant reset's or a setup's replies are late (the previous tenant can make
    /// DISCARD ALL wait on a lock, e.g. on the parent of a temporary child table): bounded
    /// whatever the tenant's limits, at [`CLEANUP_TIMEOUT`].
    Reset,
    /// A connection kept for tenant affinity goes back (not an error: see
    /// `Session::keep_for_affinity`).
    Affinity,
}

#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Limits {
    pub query: Option<Duration>,
    pub idle_transaction: Option<Duration>,
    pub client_idle: Option<Duration>,
    pub client_write: Option<Duration>,
}

impl Limits {
    pub fn new(pool: &crate::config::PoolDefaults, tenant: &crate::config::TenantTimeouts) -> Limits {
        let pick = |own: Option<f64>, global: f64| {
            let secs = own.unwrap_or(global);
            (secs > 0.0 && secs.is_finite()).then(|| Duration::from_secs_f64(secs))
        };
        Limits {
            query: pick(tenant.query_timeout, pool.query_timeout),
            idle_transaction: pick(tenant.idle_transaction_timeout, pool.idle_transaction_timeout),
            client_idle: pick(tenant.client_idle_timeout, pool.client_idle_timeout),
            client_write: pick(tenant.client_write_timeout, pool.client_write_timeout),
        }
    }

    /// Whether a limit counts from the last activity (so it must be noted).
    fn reads_activity(&self) -> bool {
        self.idle_transaction.is_some() || self.client_idle.is_some()
    }

    /// Whether a fair-share timeout (query, idle in transaction, client idle) is set.
    fn fair(&self) -> bool {
        self.query.is_some() || self.reads_activity()
    }

    /// What a session keeps for these limits: nothing when none is set (the default), so a
    /// session without limits carries no timer state.
    pub fn timed(self) -> Option<Box<Timed>> {
        let none = self.query.is_none() && !self.reads_activity() && self.client_write.is_none();
        (!none).then(|| {
            Box::new(Timed {
                limits: self,
                timer: Timer::default(),
                last_activity: Instant::now(),
                busy_since: None,
            })
        })
    }
}

/// The limits of a session that has any, its timer, and its last activity (when a limit
/// reads it).
pub(super) struct Timed {
    limits: Limits,
    /// The fair-share timeouts' timer, armed only while one applies.
    timer: Timer,
    /// When the client or the server last sent something (kept only when a limit reads it).
    last_activity: Instant,
    /// Since when the server owes replies (reset at each ReadyForQuery; `query_timeout`).
    pub(super) busy_since: Option<Instant>,
}

/// One timer for the session's lifetime, allocated the first time a limit applies.
#[derive(Default)]
pub(super) struct Timer {
    sleep: Option<Pin<Box<Sleep>>>,
    /// Where `sleep` is armed.
    armed: Option<Instant>,
}

impl Timer {
    /// Makes sure the timer fires no later than `deadline`.
    pub fn arm(&mut self, deadline: Instant) {
        match (&mut self.sleep, self.armed) {
            (Some(_), Some(at)) if at <= deadline => {}
            (Some(sleep), _) => {
                sleep.as_mut().reset(deadline);
                self.armed = Some(deadline);
            }
            (None, _) => {
                self.sleep = Some(Box::pin(tokio::time::sleep_until(deadline)));
                self.armed = Some(deadline);
            }
        }
    }

    /// Whether `deadline` passed; when the timer fired early (armed for an earlier deadline),
    /// it is moved to `deadline` and waits again.
    pub fn poll_expired(&mut self, cx: &mut Context<'_>, deadline: Instant) -> bool {
        let Some(sleep) = self.sleep.as_mut() else { return false };
        if sleep.as_mut().poll(cx).is_pending() {
            return false;
        }
        if Instant::now() >= deadline {
            return true;
        }
        sleep.as_mut().reset(deadline);
        self.armed = Some(deadline);
        // Registers the wake-up at the new deadline.
        let _ = sleep.as_mut().poll(cx);
        false
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + PlainTcp> Session<S> {
    /// Notes that the client or the server sent something (for the limits that count from
    /// the last activity).
    pub(super) fn touch(&mut self) {
        if let Some(t) = self.timed.as_mut().filter(|t| t.limits.reads_activity()) {
            t.last_activity = Instant::now();
        }
    }

    /// `client_write_timeout`, if set.
    pub(super) fn client_write(&self) -> Option<Duration> {
        self.timed.as_ref().and_then(|t| t.limits.client_write)
    }

    /// Arms the timer for `deadline` (see [`Timer::arm`]); a session without limits gets
    /// its timer here the first time one is needed (a cross-tenant reset's bound).
    pub(super) fn arm_timer(&mut self, deadline: Instant) {
        let t = self.timed.get_or_insert_with(|| {
            Box::new(Timed {
                limits: Limits::default(),
                timer: Timer::default(),
                last_activity: Instant::now(),
                busy_since: None,
            })
        });
        t.timer.arm(deadline);
    }

    /// Whether `deadline` passed (see [`Timer::poll_expired`]).
    pub(super) fn timer_expired(
        timed: &mut Option<Box<Timed>>,
        cx: &mut Context<'_>,
        deadline: Instant,
    ) -> bool {
        timed.as_mut().is_some_and(|t| t.timer.poll_expired(cx, deadline))
    }

    /// The timeout that applies now, and when it expires: the reset's bound while a
    /// cross-tenant reset is due, if it comes first, else a fair-share timeout.
    #[inline]
    pub(super) fn next_limit(&mut self) -> Option<(Limit, Instant)> {
        if self.timed.as_ref().is_none_or(|t| !t.limits.fair())
            && self.progress.reset == ResetPhase::Done
            && self.progress.hold_until.is_none()
        {
            // The common case, inline: no fair-share timeout, no reset due, no hold.
            return None;
        }
        self.next_limit_now()
    }

    fn next_limit_now(&mut self) -> Option<(Limit, Instant)> {
        let fair = if self.timed.as_ref().is_some_and(|t| t.limits.fair()) {
            self.fair_limit()
        } else {
            // Without a fair-share timeout (the default; `client_write_timeout` alone is
            // applied where a write waits) nothing here reads the clock.
            None
        };
        if fair.is_none() && self.progress.reset == ResetPhase::Done && self.progress.hold_until.is_none() {
            return None;
        }
        let reset = match (self.progress.reset, self.progress.reset_since) {
            (ResetPhase::Done, _) | (_, None) => None,
            (_, Some(since)) => Some((Limit::Reset, since + CLEANUP_TIMEOUT)),
        };
        let hold = self.progress.hold_until.filter(|_| self.server.is_some()).map(|at| (Limit::Affinity, at));
        [fair, reset, hold].into_iter().flatten().min_by_key(|(_, at)| *at)
    }

    /// At idle_transaction_timeout in an unsynced batch whose replies the server holds until a
    /// Sync or Flush: its statement may still be running (the server is not idle, as
    /// PostgreSQL counts it), so pgtenant asks for the replies with a Flush of its own (they
    /// earn nothing more, and PostgreSQL may send them unasked anyway) instead of
    /// disconnecting; the idle bound then counts from the server's answer (see [`Self::touch`]).
    /// False (the timeout stands) once flushed, or with a frame half-staged.
    pub(super) fn flush_unsynced(&mut self) -> bool {
        let flush = self.server.is_some()
            && self.progress.extended_open
            && self.pipeline.unflushed()
            && !self.pipeline.copy_in()
            && self.progress.reset == ResetPhase::Done
            && self.c_scanned == 0
            && self.c_remaining == 0
            && self.stage_remaining == 0;
        if flush {
            self.out.extend_from_slice(frontend::FLUSH_MESSAGE);
            self.pipeline.push(Kind::Flush, Action::Swallow);
        }
        flush
    }

    /// The fair-share timeout that applies now, and when it expires.
    fn fair_limit(&mut self) -> Option<(Limit, Instant)> {
        let owes = self.server.is_some() && !self.quiet();
        // An extended batch the client has not synced keeps the server's transaction open
        // (its rows uncommitted, its locks held) behind the last ReadyForQuery's idle status:
        // in it, once the server answered what was flushed (or while it owes only what it
        // sends at the client's next Sync or Flush), the client is idle in a transaction.
        let unsynced = self.server.is_some() && self.progress.extended_open;
        let in_transaction = unsynced || (self.server.is_some() && self.progress.status != txn::IDLE);
        // What the server owes it sends only at the client's next Sync or Flush.
        let owes_the_client_a_word = owes && unsynced && self.pipeline.unflushed();
        let t = self.timed.as_deref_mut()?;
        let l = t.limits;
        if !owes {
            t.busy_since = None;
        } else if t.busy_since.is_none() && l.query.is_some() {
            t.busy_since = Some(Instant::now());
        }
        let at = |since: Option<Instant>, after: Option<Duration>| Some(since? + after?);
        if owes {
            // An unsynced batch's idle client is timed too, whichever comes first.
            let idle = at(Some(t.last_activity), l.idle_transaction).filter(|_| owes_the_client_a_word);
            let query = at(t.busy_since, l.query);
            return match (query, idle) {
                (Some(q), Some(i)) if i < q => Some((Limit::IdleTransaction, i)),
                (Some(q), _) => Some((Limit::Query, q)),
                (None, i) => i.map(|i| (Limit::IdleTransaction, i)),
            };
        }
        // Without an idle_transaction_timeout, an unsynced batch stays under client_idle as before.
        let idle_in_block = self.progress.status != txn::IDLE || l.idle_transaction.is_some();
        let (limit, since, after) = if in_transaction && idle_in_block {
            (Limit::IdleTransaction, Some(t.last_activity), l.idle_transaction)
        } else if self.c_scanned == 0 && self.cbuf.is_empty() {
            (Limit::ClientIdle, Some(t.last_activity), l.client_idle)
        } else {
            return None;
        };
        at(since, after).map(|at| (limit, at))
    }
}
