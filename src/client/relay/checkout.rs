//! Taking a server connection for the session and giving it back: the checkout (after any
//! PAUSE of the tenant), the cross-tenant reset and session setup queued in front of the
//! client's first message, and the release at the end of a transaction.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite};

use super::{buffers, shutting_down, timed_out, Event, Exit, ResetPhase, Session, Signals};
use crate::cancel::CancelTarget;
use crate::console::live::{Signal, SignalReader, FORCE, KICK};
use crate::pool::session::{acts_while_idle, hand_over, needs_reset, queue_reset, retire, Retire};
use crate::protocol::backend::txn;
use crate::protocol::{frontend, PgError};

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Session<S> {
    pub(super) async fn attach(&mut self) -> Result<(), Exit> {
        self.meter.waiting();
        let asked = Instant::now();
        // The clock as the checkout starts: read again only after a wait here.
        let mut start = asked;
        if self.proxy.pools.pauses.is_paused(&self.tenant.id) {
            // Boxed: rare, and its state must not size every client's task.
            if let Err(exit) = Box::pin(self.paused()).await {
                self.meter.checked_out(None);
                return Err(exit);
            }
            start = Instant::now();
        }
        let checkout = self.proxy.pools.checkout_at(&self.pool, &self.tenant, &mut self.tenant_cap, start);
        tokio::pin!(checkout);
        // A checkout that waits (a full pool) notices what ends a waiting client at once:
        // KILL_CLIENT or a kick of its tenant, a forced shutdown; its query then never runs,
        // and its place in the queue is given back. One that finds a connection at once
        // polls no signal.
        let checkout = match (Watched { checkout, signal: &self.signal, reader: None }).await {
            Ok(r) => r,
            Err(forced) => {
                self.meter.checked_out(None);
                let kicked = (!forced).then(|| self.admission.sessions.kick_reason()).flatten();
                return Err(Exit::Error(kicked.unwrap_or_else(shutting_down)));
            }
        };
        self.meter.checked_out(checkout.as_ref().ok().map(|co| (asked, co.taken())));
        let mut co = checkout.map_err(|e| Exit::Error(PgError::report(&e)))?;
        if self.out.capacity() == 0 {
            self.out = buffers::take();
        }
        if needs_reset(co.conn_ref(), &self.tenant.id) {
            // A handoff to another tenant starts from a clean session (DESIGN.md,
            // containment rule 2): DISCARD ALL with the setup and the client's first messages
            // behind it in one write, its replies swallowed and checked (see `hold`).
            self.proxy.metrics.global().reset();
            queue_reset(co.conn(), &mut self.out, &self.pool_params);
            self.progress.swallow_z += 1;
            self.progress.reset = ResetPhase::Guard;
            self.progress.reset_synced = false;
            self.progress.reset_since = Some(tokio::time::Instant::now());
        }
        let conn = co.conn();
        let (addr, pid, secret) = conn.cancel_key();
        self.key.set_target(Some(CancelTarget { addr: addr.clone(), pid, secret }));
        hand_over(conn, self.id, &self.tenant.id, &self.tenant.session_vars);
        if let Some(sql) = self.vars.sync_query(conn, &self.pool_params) {
            // The setup goes out in the same write as the client's first message.
            if frontend::query(&mut self.out, &sql).is_ok() {
                self.progress.swallow_z += 1;
            }
        }
        self.progress.status = txn::IDLE;
        // No read of this connection is registered by this session yet.
        self.progress.server_armed = false;
        self.server = Some(co);
        Ok(())
    }

    /// Waits while the tenant is paused (console PAUSE, or the HTTP API's), noticing what
    /// ends a waiting client at once rather than after RESUME: KILL_CLIENT or a kick of its
    /// tenant, a shutdown, and the client leaving (end of stream, Terminate) or breaking the
    /// protocol; the session then ends, and with it the client's entry in SHOW CLIENTS and
    /// its `cl_waiting` count. What the client sends meanwhile is read (within the usual
    /// bound) and kept for after the wait.
    ///
    /// A PAUSE that lands between the check in [`Session::attach`] and the checkout's own
    /// gate is waited for inside the checkout, unwatched; that gap holds no await.
    async fn paused(&mut self) -> Result<(), Exit> {
        let (proxy, tenant) = (self.proxy.clone(), self.tenant.clone());
        // Its own watch of the session's signals: the relay's is not passed down to every
        // checkout for this rare wait. A drain that fired earlier is reported again here,
        // where it ends the session as it would have (a draining session is not attached).
        let mut signals = Signals::new(self.signal.clone());
        let resumed = proxy.pools.pauses.wait(&tenant.id);
        tokio::pin!(resumed);
        loop {
            // `next_event` is cancel-safe: an event it has taken is returned, never dropped.
            let event = tokio::select! {
                biased;
                () = &mut resumed => return Ok(()),
                event = self.next_event(&mut signals) => event,
            };
            match event {
                Event::Client(Ok(0) | Err(_)) => return Err(Exit::Client),
                Event::Client(Ok(n)) => {
                    self.meter.bytes_in(n);
                    self.touch();
                    self.scan_client();
                    if self.terminated {
                        return Err(Exit::Client);
                    }
                    if let Some(e) = self.broken.take() {
                        return Err(Exit::Error(*e));
                    }
                }
                Event::Force | Event::Drain => return Err(Exit::Error(shutting_down())),
                Event::Kick => {
                    let reason = self.admission.sessions.kick_reason();
                    return Err(Exit::Error(reason.unwrap_or_else(shutting_down)));
                }
                Event::Timeout(limit) => return Err(Exit::Error(timed_out(limit, &tenant.id))),
                // No server connection is held while waiting.
                Event::ServerRead(_) | Event::ServerWrote(_) => {}
            }
        }
    }

    /// Tenant affinity (`[pool] affinity_hold`): whether the client keeps its idle server
    /// connection a moment longer instead of releasing it. Only when clients of another tenant
    /// wait for the pool (released now, the connection would pass to one of them, with a
    /// cross-tenant reset of three statements), for at most `affinity_transactions`
    /// transactions in a row, and never while the tenant is paused or the session ends. The
    /// hold ends when the client sends its next message (the connection serves it, with no
    /// checkout and no reset) or when the timer fires (`Limit::Affinity`), then it goes back;
    /// a client that let a hold run out is not held for at its next few transaction ends
    /// ([`super::HOLD_SKIP_AFTER_MISS`]), so a client that is slow to come back does not idle
    /// a connection others wait for after each transaction.
    pub(super) fn keep_for_affinity(&mut self) -> bool {
        let p = &mut self.progress;
        if p.hold_until.is_some() {
            return true;
        }
        if p.hold_skip > 0 {
            p.hold_skip -= 1;
            p.held = 0;
            return false;
        }
        let waiting = self.pool.others_waiting(&self.tenant.id);
        let (hold, most) = if waiting {
            let s = self.pool.settings();
            (s.affinity_hold, s.affinity_transactions)
        } else {
            (Duration::ZERO, 0)
        };
        if hold.is_zero()
            || p.held >= most
            || self.terminated
            || self.broken.is_some()
            || self.draining.is_some()
            || self.proxy.pools.pauses.is_paused(&self.tenant.id)
        {
            p.held = 0;
            return false;
        }
        p.held += 1;
        p.hold_until = Some(tokio::time::Instant::now() + hold);
        true
    }

    /// Transaction mode: the server connection goes back once the client's transaction is
    /// over (or is reset first, or closed: see [`retire`]).
    pub(super) fn release(&mut self) {
        let Some(co) = self.server.take() else { return };
        self.progress.server_armed = false;
        // One clock read for the meter's hold and the pool's lifetime check.
        let now = Instant::now();
        self.meter.released_at(now);
        self.key.set_target(None);
        let cancel = self.key.cancel_in_flight();
        let reset = co.conn_ref().is_dirty().then(|| self.proxy.config().pool.reset_query.clone());
        if reset.is_some() {
            self.proxy.metrics.global().reset();
        }
        if reset.is_none() && !cancel && !acts_while_idle(co.conn_ref()) {
            co.release_at(now);
            return;
        }
        let params = self.pool_params.clone();
        tokio::spawn(retire(
            co,
            Retire { idle: true, cancel, reset, params, tenant: self.tenant.id.clone() },
        ));
    }
}

/// A checkout, until it ends or what ends a waiting client fires first: `Err(true)` for a
/// forced shutdown, `Err(false)` for a kick (KILL_CLIENT, the tenant suspended). The tokens
/// are watched only once the checkout is pending, in a box made then (so a checkout that
/// finds a connection at once costs nothing more). Dropping the checkout gives back its
/// place in the queue.
struct Watched<'a, F> {
    checkout: Pin<&'a mut F>,
    signal: &'a std::sync::Arc<Signal>,
    /// The session's signals read for this wait, made once the checkout is pending.
    reader: Option<Box<SignalReader>>,
}

impl<F: Future> Future for Watched<'_, F> {
    type Output = Result<F::Output, bool>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if let Poll::Ready(r) = this.checkout.as_mut().poll(cx) {
            return Poll::Ready(Ok(r));
        }
        let reader = this.reader.get_or_insert_with(|| Box::new(SignalReader::new(this.signal.clone())));
        match reader.poll(cx, FORCE | KICK) {
            Some(bit) => Poll::Ready(Err(bit == FORCE)),
            None => Poll::Pending,
        }
    }
}
