//! Taking a server connection for the session and giving it back: the checkout (after any
//! PAUSE of the tenant; a wait ended at once by the client leaving or by a kill), the
//! cross-tenant reset and session setup queued in front of the client's first message, and
//! the release at the end of a transaction.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite};

use super::plain::PlainTcp;
use super::retry::Retry;
use super::scan::ClientScan;
use super::{
    buffers, shutting_down, timed_out, Event, Exit, ResetPhase, Session, Signals, MAX_CLIENT_BUFFERED,
};
use crate::client::meter::Meter;
use crate::console::live::{Signal, SignalReader, CLIENT_READ, FORCE, KICK};
use crate::pool::handoff::{
    bounds_setup, first_due, hand_over, needs_reset, part, queue_reseed, queue_reset, queue_setup,
};
use crate::pool::session::{acts_while_idle, retire, Retire};
use crate::pool::Checkout;
use crate::protocol::backend::txn;
use crate::protocol::PgError;

/// Transaction ends not held for (tenant affinity) after holds the client let run out: one
/// after a first miss, doubling with each miss in a row up to this. A client that came back
/// late once (its process waited for a core) is held for again at once, so a busy machine
/// does not turn one late reply into a string of cross-tenant resets; one that is always
/// slower than the hold idles a connection at one transaction end in seventeen at most.
const HOLD_SKIP_AFTER_MISSES: u8 = 16;

/// How long after its checkout a connection may still be held for its client while others
/// wait. Tenant affinity: at a transaction end past it the connection goes to the next waiter
/// whatever `affinity_transactions` allows, so a client whose transactions are long (a second
/// each) keeps others waiting for one or two of them, not for 32. A hold granted just before
/// it still runs its course (`affinity_hold`, then the transaction it serves). Short
/// transactions mostly reach `affinity_transactions` first: in `benches/tenants.sh` case B
/// (a third of a millisecond each, many more on a loaded machine) the bound took the resets
/// a transaction from 0.032–0.035 to 0.036–0.042. A client that always has a query in flight
/// (a pipeline that never drains) reaches no idle transaction end at all: past this bound its
/// next transaction is held back until the server is idle, and the connection goes back (see
/// `Progress::yielding`).
pub(super) const HOLD_STREAK: Duration = Duration::from_millis(50);

impl<S: AsyncRead + AsyncWrite + Unpin + Send + PlainTcp> Session<S> {
    pub(super) async fn attach(&mut self) -> Result<(), Exit> {
        // The turn's clock as the checkout starts: read again only after a wait here.
        let asked = self.meter.now();
        // A handoff retry takes the place its failed connection kept (see `retry`). One
        // test of a pointer that is null unless a handoff is being retried.
        if self.progress.retry.is_some() {
            if let Some(retry) = self.retry_checkout(asked) {
                return retry.await;
            }
        }
        // The common case (a free connection) takes no future, watches nothing.
        if let Some(co) = self.proxy.pools.checkout_now(&self.pool, &self.tenant, &mut self.tenant_cap, asked)
        {
            self.meter.checked_out(Some((asked, co.taken())));
            self.hand_to_session(co);
            return Ok(());
        }
        // Otherwise it may wait: a pause, a full pool, a connection to open.
        let mut start = asked;
        if self.proxy.pools.pauses.is_paused(&self.tenant.id) {
            self.meter.waiting();
            // Boxed: rare, and its state must not size every client's task.
            if let Err(exit) = Box::pin(self.paused()).await {
                self.meter.checked_out(None);
                return Err(exit);
            }
            start = Instant::now();
        }
        // A checkout that waits (a full pool) notices what ends a waiting client at once:
        // KILL_CLIENT or a kick of its tenant, a forced shutdown, and the client leaving (end
        // of stream, a read error) or breaking the protocol with nothing before the bad frame
        // (what precedes one runs first, as PostgreSQL runs it); its query then never runs, and its
        // place in the queue is given back. What the client sends meanwhile is read (within
        // the usual bound) and kept for after the wait. One that finds a connection at once
        // polls neither the signals nor the client's socket.
        let (waited, read) = {
            let checkout =
                self.proxy.pools.checkout_at(&self.pool, &self.tenant, &mut self.tenant_cap, start);
            // A client that already sent Terminate, or broke the protocol, is not read: what
            // it sent before runs, as it would with a free connection.
            let watch = !self.terminated && self.broken.is_none();
            let client = watch.then_some(WaitingClient {
                stream: &mut self.client,
                waker: &self.client_waker,
                scan: client_scan!(self),
                read: 0,
            });
            let checkout = std::pin::pin!(checkout);
            let meter = Some(&mut self.meter);
            Watched { checkout, signal: &self.signal, reader: None, client, meter }.await
        };
        if read > 0 {
            self.meter.bytes_in(read);
            self.touch();
        }
        let checkout = match waited {
            Ok(r) => r,
            Err(stop) => {
                self.meter.checked_out(None);
                return Err(match stop {
                    Stop::Force => Exit::Error(shutting_down()),
                    Stop::Kick => {
                        Exit::Error(self.admission.sessions.kick_reason().unwrap_or_else(shutting_down))
                    }
                    Stop::Client => self.broken.take().map_or(Exit::Client, |e| Exit::Error(*e)),
                });
            }
        };
        self.meter.checked_out(checkout.as_ref().ok().map(|co| (asked, co.taken())));
        let co = checkout.map_err(|e| Exit::Error(PgError::report(&e)))?;
        self.hand_to_session(co);
        Ok(())
    }

    /// A handoff retry's checkout, when its failed connection kept a place (see
    /// [`Session::attach_retry`]). Out of line and boxed: rare, and neither its code nor its
    /// state must weigh on every checkout.
    #[cold]
    #[inline(never)]
    #[allow(clippy::type_complexity)] // A boxed future, spelt out once.
    fn retry_checkout(
        &mut self,
        asked: Instant,
    ) -> Option<Pin<Box<dyn Future<Output = Result<(), Exit>> + Send + '_>>> {
        let slot = self.progress.retry.as_mut()?.slot.take()?;
        // A pause landed since the handoff failed: the place goes back, and the retry waits
        // at the pause as any checkout does (an operator pauses to restart or move the
        // upstream: nothing may open a connection to it meanwhile).
        if self.proxy.pools.pauses.is_paused(&self.tenant.id) {
            drop(slot);
            return None;
        }
        Some(Box::pin(self.attach_retry(slot, asked)))
    }

    /// A handoff retry's checkout (see `retry`), in the place `slot` its failed connection
    /// kept: never a connection that needs a cross-tenant reset, and no wait behind the
    /// pool's queue; opening a connection is watched as a waiting checkout is.
    async fn attach_retry(&mut self, slot: crate::pool::Slot, asked: Instant) -> Result<(), Exit> {
        // Watched as `attach` watches a waiting checkout (its own copy, as is the end of
        // `attach` below: with both shared, the relay's hot loop came out 50 instructions per
        // transaction longer, benches/instructions.sh, pgbench -S).
        let (waited, read) = {
            let checkout = self.proxy.pools.checkout_retry(&self.pool, &self.tenant, slot);
            let watch = !self.terminated && self.broken.is_none();
            let client = watch.then_some(WaitingClient {
                stream: &mut self.client,
                waker: &self.client_waker,
                scan: client_scan!(self),
                read: 0,
            });
            let checkout = std::pin::pin!(checkout);
            let meter = Some(&mut self.meter);
            Watched { checkout, signal: &self.signal, reader: None, client, meter }.await
        };
        self.attach_waited(waited, read, asked)
    }

    /// The end of a retry's watched checkout (as of `attach`'s): the session's connection,
    /// or why the session ends.
    fn attach_waited(
        &mut self,
        waited: Result<Result<Checkout, crate::pool::CheckoutError>, Stop>,
        read: usize,
        asked: Instant,
    ) -> Result<(), Exit> {
        if read > 0 {
            self.meter.bytes_in(read);
            self.touch();
        }
        let checkout = match waited {
            Ok(r) => r,
            Err(stop) => {
                self.meter.checked_out(None);
                return Err(match stop {
                    Stop::Force => Exit::Error(shutting_down()),
                    Stop::Kick => {
                        Exit::Error(self.admission.sessions.kick_reason().unwrap_or_else(shutting_down))
                    }
                    Stop::Client => self.broken.take().map_or(Exit::Client, |e| Exit::Error(*e)),
                });
            }
        };
        self.meter.checked_out(checkout.as_ref().ok().map(|co| (asked, co.taken())));
        let co = checkout.map_err(|e| Exit::Error(PgError::report(&e)))?;
        self.hand_to_session(co);
        Ok(())
    }

    /// Makes `co` the session's server connection: any cross-tenant reset and the session's
    /// setup queued in front of the client's first message.
    fn hand_to_session(&mut self, mut co: Checkout) {
        // The server's two buffers, in one visit to the spare list.
        buffers::take_all([&mut self.out, &mut self.sbuf]);
        let reset = needs_reset(co.conn_ref(), &self.tenant.id);
        let mut guarded = false;
        if reset {
            // A handoff to another tenant starts from a clean session (DESIGN.md,
            // containment rule 2): DISCARD ALL with the setup and the client's first messages
            // behind it in one write, its replies swallowed and checked (see `hold`).
            self.proxy.metrics.global().reset();
            guarded = queue_reset(co.conn(), &mut self.out, &self.pool_params);
        }
        let conn = co.conn();
        hand_over(conn, self.id, &self.tenant.id, &self.tenant.session_vars);
        // The setup goes in the same write as the client's first messages, up to the
        // client's first Sync: if it fails, the server skips them (see `queue_setup`).
        let mut parts = if reset { part::RESET } else { 0 };
        // Looked at only when a setup is due (most checkouts need none), before it is worked
        // out: what the connection carries while the setup runs.
        let guard = conn.vars_fingerprint() != self.vars.fingerprint() && bounds_setup(conn);
        if let Some(setup) = self.vars.sync_query(conn, &self.pool_params) {
            let sets = [setup.set_search_path.as_deref(), setup.set_application_name.as_deref()];
            parts |= queue_setup(conn, &mut self.out, sets, setup.select.as_deref(), guard, reset);
        }
        if reset {
            // Last: it commits what the handoff ran before it and makes the server flush the
            // replies (unsynced statements' replies would otherwise wait for the client's
            // first Sync, behind its first statement). A reset or setup that failed makes the
            // server skip it, like the client's messages.
            queue_reseed(&mut self.out);
            parts |= part::RESEED;
        }
        if self.vars.temp_schema() {
            conn.mark_dirty();
        }
        // The guard's ReadyForQuery comes first, when it was sent; DISCARD ALL's replies then.
        self.progress.reset = match (guarded, parts) {
            (true, _) => ResetPhase::Guard(parts),
            (false, 0) => ResetPhase::Done,
            (false, _) => ResetPhase::Replies(first_due(0, parts), parts),
        };
        if self.progress.reset != ResetPhase::Done {
            self.progress.reset_synced = false;
            self.progress.reset_since = Some(tokio::time::Instant::now());
            // The client's bytes sent behind it are kept, should it fail (see `retry`): behind
            // a reset, and behind a setup under a timeout the connection carries or may carry
            // unseen (`bounds_setup`: another client's cancel still pending, or its timer,
            // fails the SET with 57014; PostgreSQL would cost that client one statement, not
            // its session).
            let kept = reset || guard;
            self.progress.retry = Retry::arm(self.progress.retry.take(), kept, self.meter.prepared_mark());
        }
        self.progress.status = txn::IDLE;
        // No read of this connection is registered by this session yet.
        self.progress.server_armed = false;
        self.server = Some(co);
        if self.progress.reset == ResetPhase::Done {
            // A retry that needs no reset nor setup here has nothing left to keep. (Tested
            // first: the drop of a kept retry is out of line, a call per checkout.)
            if self.progress.retry.is_some() {
                self.progress.retry = None;
            }
            self.attach_key();
        }
    }

    /// Points the client's cancel key at its server connection's backend: at the checkout
    /// when pgtenant sends nothing of its own first, else once the reset and setup are
    /// answered (`check_reset_reply`). A cancel landing in them would fail them; one sent
    /// before is dropped, as PostgreSQL drops a cancel that comes before its statement.
    pub(super) fn attach_key(&mut self) {
        if let Some(server) = self.server.as_ref() {
            let (addr, pid, secret) = server.conn_ref().cancel_key();
            self.key.attach(addr, pid, secret);
        }
    }

    /// Waits while the tenant is paused (console PAUSE, or the HTTP API's), noticing what
    /// ends a waiting client at once rather than after RESUME: KILL_CLIENT or a kick of its
    /// tenant, a shutdown, and the client leaving (end of stream, a read error) or breaking
    /// the protocol with nothing before the bad frame; the session then ends, and with it the client's entry in SHOW CLIENTS and
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
                    // After a Terminate the client is not read again; what it sent before
                    // runs after RESUME, as PostgreSQL runs what precedes a Terminate.
                    self.scan_client();
                    // A bad frame ends the session now only with nothing before it: what
                    // precedes it runs after RESUME, then its FATAL (as PostgreSQL).
                    if self.broken.is_some() && self.c_scanned == 0 {
                        return Err(self.broken.take().map_or(Exit::Client, |e| Exit::Error(*e)));
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
    /// cross-tenant reset, setup and reseed), for at most `affinity_transactions`
    /// transactions in a row, and never while the tenant is paused or the session ends. The
    /// hold ends when the client sends its next message (the connection serves it, with no
    /// checkout and no reset) or when the timer fires (`Limit::Affinity`), then it goes back;
    /// a client that let a hold run out is not held for at its next few transaction ends
    /// ([`HOLD_SKIP_AFTER_MISSES`]), so a client that is slow to come back does not idle
    /// a connection others wait for after each transaction; nor past [`HOLD_STREAK`] since
    /// the connection's checkout.
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
            || self.meter.held_longer_than(HOLD_STREAK)
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

    /// The affinity hold ran out unused: the next few transaction ends are not held for.
    pub(super) fn hold_missed(&mut self) {
        let p = &mut self.progress;
        p.hold_until = None;
        p.held = u8::MAX;
        p.hold_skip = (1u8 << p.misses.min(4)).min(HOLD_SKIP_AFTER_MISSES);
        p.misses = p.misses.saturating_add(1);
    }

    /// The client sent something: whether it ends an affinity hold (the client came back
    /// within it, so its next miss skips one transaction end again).
    #[inline]
    pub(super) fn hold_used(&mut self) -> bool {
        let used = self.progress.hold_until.take().is_some();
        if used {
            self.progress.misses = 0;
        }
        used
    }

    /// Transaction mode: the server connection goes back once the client's transaction is
    /// over (or is reset first, or closed: see [`retire`]).
    pub(super) fn release(&mut self) {
        let Some(co) = self.server.take() else { return };
        self.progress.server_armed = false;
        self.statements.forget_portals();
        // The turn's clock (read at the ReadyForQuery just routed, as a rule) for the meter's
        // hold and the pool's lifetime check.
        let now = self.meter.now();
        self.meter.released_at(now);
        self.key.detach();
        let cancel = self.key.cancel_in_flight();
        let reset = co.conn_ref().is_dirty().then(|| self.proxy.config().pool.reset_query.clone());
        if reset.is_some() {
            self.proxy.metrics.global().reset();
        }
        if reset.is_none() && !cancel && !co.conn_ref().has_cursors() && !acts_while_idle(co.conn_ref()) {
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

/// Why a waiting checkout ended without a connection.
enum Stop {
    /// A forced shutdown.
    Force,
    /// KILL_CLIENT, or the tenant suspended.
    Kick,
    /// The client left (end of stream, an error) or broke the protocol.
    Client,
}

/// A checkout, until it ends or what ends a waiting client comes first (see [`Stop`]), with
/// the client bytes read meanwhile. The signals and the client's socket are watched only
/// once the checkout is pending (the signals' reader in a box made then), so a checkout that
/// finds a connection at once costs no system call more. Dropping the checkout gives back
/// its place in the queue.
struct Watched<'a, F, S> {
    checkout: Pin<&'a mut F>,
    signal: &'a Arc<Signal>,
    /// The session's signals read for this wait, made once the checkout is pending.
    reader: Option<Box<SignalReader>>,
    /// The client's side, unless it is not read (see [`Session::attach`]).
    client: Option<WaitingClient<'a, S>>,
    /// The client's meter, told once the checkout waits (SHOW CLIENTS' `wait`, SHOW POOLS'
    /// `cl_waiting`): a checkout that finds a connection at once does not read the clock
    /// for it.
    meter: Option<&'a mut Meter>,
}

/// The client of a waiting checkout: its socket read into the session's client buffer as
/// the relay reads it (see `Session::next_event`), each read walked by [`ClientScan`].
struct WaitingClient<'a, S> {
    stream: &'a mut S,
    /// The plain TCP socket's own waker (CLIENT_READ).
    waker: &'a Waker,
    scan: ClientScan<'a>,
    /// Bytes read during the wait.
    read: usize,
}

impl<S: AsyncRead + Unpin + PlainTcp> WaitingClient<'_, S> {
    /// Reads what the client sent until its socket has no more; ready once it left (end of
    /// stream, an error) or broke the protocol with nothing before the bad frame. Past the
    /// client buffer's bound it is not read (nor watched) until the wait ends, as the relay
    /// holds back a client whose bytes are not going out. After a Terminate or a bad frame
    /// nothing more is read either: what the client sent before it runs once a connection
    /// frees, as PostgreSQL runs what precedes a Terminate or a malformed message.
    fn poll_left(&mut self, cx: &mut Context<'_>, signal: &Signal) -> Poll<()> {
        loop {
            let scan = &mut self.scan;
            if scan.cbuf.len() >= MAX_CLIENT_BUFFERED || *scan.terminated || scan.broken.is_some() {
                return Poll::Pending;
            }
            // As in `next_event`: a plain socket's pending read stays registered until its
            // wake-up raises CLIENT_READ.
            let fired = signal.take(CLIENT_READ);
            if scan.progress.client_armed && !fired {
                return Poll::Pending;
            }
            scan.progress.client_armed = false;
            buffers::room(scan.cbuf);
            let plain = scan.progress.client_plain;
            let read = if plain {
                let mut own = Context::from_waker(self.waker);
                buffers::poll_read(self.stream, &mut own, scan.cbuf)
            } else {
                buffers::poll_read(self.stream, cx, scan.cbuf)
            };
            match read {
                Poll::Ready(Ok(0) | Err(_)) => return Poll::Ready(()),
                Poll::Ready(Ok(n)) => {
                    self.read += n;
                    scan.reborrow().run();
                    if scan.broken.is_some() && *scan.c_scanned == 0 {
                        // A bad frame with nothing before it: the session ends now. What
                        // precedes one runs first (the wait goes on, nothing more is read),
                        // as PostgreSQL runs it before its FATAL.
                        return Poll::Ready(());
                    }
                }
                Poll::Pending => {
                    scan.progress.client_armed = plain;
                    return Poll::Pending;
                }
            }
        }
    }
}

impl<F: Future, S: AsyncRead + Unpin + PlainTcp> Future for Watched<'_, F, S> {
    type Output = (Result<F::Output, Stop>, usize);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let read = this.client.as_ref().map_or(0, |c| c.read);
        if let Poll::Ready(r) = this.checkout.as_mut().poll(cx) {
            return Poll::Ready((Ok(r), read));
        }
        if this.reader.is_none() {
            // The first time the checkout is pending: the client waits.
            if let Some(meter) = this.meter.as_deref_mut() {
                meter.waiting();
            }
        }
        let reader = this.reader.get_or_insert_with(|| Box::new(SignalReader::new(this.signal.clone())));
        if let Some(bit) = reader.poll(cx, FORCE | KICK) {
            return Poll::Ready((Err(if bit == FORCE { Stop::Force } else { Stop::Kick }), read));
        }
        if let Some(client) = this.client.as_mut() {
            if client.poll_left(cx, this.signal).is_ready() {
                return Poll::Ready((Err(Stop::Client), client.read));
            }
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::BytesMut;
    use tokio::io::AsyncWriteExt;

    use super::super::progress::Progress;
    use super::*;
    use crate::console::live::client_waker;

    /// The session's client-side fields a waiting checkout borrows.
    #[derive(Default)]
    struct Fields {
        cbuf: BytesMut,
        c_scanned: usize,
        c_remaining: usize,
        terminated: bool,
        broken: Option<Box<PgError>>,
        progress: Progress,
        large: Option<Box<super::super::large::Held>>,
    }

    /// A client's meter, as a session has one.
    fn meter(m: &crate::metrics::Metrics) -> Meter {
        let user: Arc<str> = Arc::from("app");
        let login = crate::client::meter::LoginLine {
            tenant: "acme",
            user: &user,
            peer: std::net::SocketAddr::from(([127, 0, 0, 1], 5)),
            tls: false,
            method: crate::model::AuthMethod::Trust,
            took: Duration::ZERO,
        };
        Meter::new(m.client_session("acme"), m.pool("p"), &login, false, false)
    }

    /// A checkout that ends when `tx` sends, watched with the client `stream`: the outcome,
    /// the bytes read.
    async fn wait(
        checkout: tokio::sync::oneshot::Receiver<()>,
        stream: &mut tokio::io::DuplexStream,
        f: &mut Fields,
    ) -> (Result<bool, Stop>, usize) {
        let metrics = crate::metrics::Metrics::new(10);
        wait_metered(checkout, stream, f, &mut meter(&metrics)).await
    }

    /// [`wait`] with the client's `meter`.
    async fn wait_metered(
        checkout: tokio::sync::oneshot::Receiver<()>,
        stream: &mut tokio::io::DuplexStream,
        f: &mut Fields,
        meter: &mut Meter,
    ) -> (Result<bool, Stop>, usize) {
        let signal = Signal::new(0);
        let waker = client_waker(&signal);
        let client = WaitingClient {
            stream,
            waker: &waker,
            scan: ClientScan {
                cbuf: &mut f.cbuf,
                c_scanned: &mut f.c_scanned,
                c_remaining: &mut f.c_remaining,
                terminated: &mut f.terminated,
                broken: &mut f.broken,
                progress: &mut f.progress,
                max_message: 1 << 20,
                large: &mut f.large,
                budget: &crate::proxy::MessageBudget::new(1 << 30, 1 << 30),
                out_len: 0,
            },
            read: 0,
        };
        let checkout = std::pin::pin!(checkout);
        let meter = Some(meter);
        let (r, read) =
            Watched { checkout, signal: &signal, reader: None, client: Some(client), meter }.await;
        (r.map(|got| got.is_ok()), read)
    }

    /// A checkout that finds a connection at once leaves the client's wait clock unread and
    /// its state as it was; one that waits starts the clock (SHOW CLIENTS' `wait`) and shows
    /// the client waiting (SHOW POOLS' `cl_waiting`).
    #[tokio::test]
    async fn only_a_checkout_that_waits_shows_the_client_waiting() {
        use crate::metrics::ClientState;
        use std::sync::atomic::Ordering;
        let metrics = crate::metrics::Metrics::new(10);
        let (mut m, clock) = meter(&metrics).with_wait_clock();
        let (_peer, mut stream) = tokio::io::duplex(1024);

        let (tx, rx) = tokio::sync::oneshot::channel();
        tx.send(()).expect("send");
        let (r, _) = wait_metered(rx, &mut stream, &mut Fields::default(), &mut m).await;
        assert!(matches!(r, Ok(true)));
        assert_eq!(clock.load(Ordering::Relaxed), 0, "no wait clock for an immediate checkout");
        assert_eq!(m.state(), ClientState::Idle);

        let (tx, rx) = tokio::sync::oneshot::channel();
        let later = async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            tx.send(()).expect("send");
        };
        let mut f = Fields::default();
        let ((r, _), ()) = tokio::join!(wait_metered(rx, &mut stream, &mut f, &mut m), later);
        assert!(matches!(r, Ok(true)));
        assert_ne!(clock.load(Ordering::Relaxed), 0, "the wait clock started");
        assert_eq!(m.state(), ClientState::Waiting);
    }

    const QUERY: &[u8] = b"Q\0\0\0\x0dSELECT 1\0";
    const TERMINATE: &[u8] = b"X\0\0\0\x04";

    #[tokio::test]
    async fn a_checkout_that_finds_a_connection_does_not_read_the_client() {
        let (mut peer, mut stream) = tokio::io::duplex(1024);
        peer.write_all(QUERY).await.expect("write");
        let (tx, rx) = tokio::sync::oneshot::channel();
        tx.send(()).expect("send");
        let mut f = Fields::default();
        let (r, read) = wait(rx, &mut stream, &mut f).await;
        assert!(matches!(r, Ok(true)));
        assert_eq!((read, f.cbuf.len()), (0, 0));
    }

    #[tokio::test]
    async fn what_a_waiting_client_sends_is_kept_and_scanned() {
        let (mut peer, mut stream) = tokio::io::duplex(1024);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let mut f = Fields::default();
        let sender = async {
            peer.write_all(QUERY).await.expect("write");
            tokio::time::sleep(Duration::from_millis(20)).await;
            peer.write_all(QUERY).await.expect("write");
            tokio::time::sleep(Duration::from_millis(20)).await;
            tx.send(()).expect("send");
            peer
        };
        let ((r, read), _peer) = tokio::join!(wait(rx, &mut stream, &mut f), sender);
        assert!(matches!(r, Ok(true)));
        assert_eq!(read, 2 * QUERY.len());
        assert_eq!(&f.cbuf[..], [QUERY, QUERY].concat());
        assert_eq!((f.c_scanned, f.terminated), (2 * QUERY.len(), false));
    }

    #[tokio::test]
    async fn a_waiting_client_that_closes_ends_the_wait() {
        let (mut peer, mut stream) = tokio::io::duplex(1024);
        let (_tx, rx) = tokio::sync::oneshot::channel();
        let mut f = Fields::default();
        let sender = async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            peer.write_all(QUERY).await.expect("write");
            peer.shutdown().await.expect("close");
            peer
        };
        let waited = tokio::time::timeout(Duration::from_secs(2), wait(rx, &mut stream, &mut f));
        let (waited, _peer) = tokio::join!(waited, sender);
        let (r, _) = waited.expect("the wait ends while the checkout is still pending");
        assert!(matches!(r, Err(Stop::Client)));
    }

    /// A client that sends a query and then `last` while its checkout waits: the outcome of
    /// the wait (which completes 90 ms in), the bytes read, and the session's fields. Another
    /// query is sent after `last`.
    async fn wait_behind(last: &[u8]) -> (Result<bool, Stop>, usize, Fields) {
        let (mut peer, mut stream) = tokio::io::duplex(1024);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let mut f = Fields::default();
        let sender = async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            peer.write_all(&[QUERY, last].concat()).await.expect("write");
            tokio::time::sleep(Duration::from_millis(20)).await;
            peer.write_all(QUERY).await.expect("write");
            tokio::time::sleep(Duration::from_millis(50)).await;
            tx.send(()).expect("send");
            peer
        };
        let ((r, read), _peer) = tokio::join!(wait(rx, &mut stream, &mut f), sender);
        (r, read, f)
    }

    /// A Terminate behind a query does not end the wait: the query runs once a connection
    /// frees (as PostgreSQL runs what precedes a Terminate), and nothing after it is read.
    #[tokio::test]
    async fn a_waiting_client_that_terminates_keeps_its_query() {
        let (r, read, f) = wait_behind(TERMINATE).await;
        assert!(matches!(r, Ok(true)), "the checkout completed");
        assert_eq!(read, QUERY.len() + TERMINATE.len(), "nothing read after the Terminate");
        assert!(f.terminated);
        assert_eq!(f.c_scanned, QUERY.len(), "the query is ready to go, the Terminate is not");
    }

    /// A bad frame behind a query does not end the wait (the query runs first, then the
    /// FATAL, as PostgreSQL answers), and nothing after it is read; a bad frame with nothing
    /// before it ends the wait at once.
    #[tokio::test]
    async fn a_bad_frame_ends_the_wait_only_with_nothing_before_it() {
        const BAD: &[u8] = b"Q\0\0\0\x02";
        let (r, read, f) = wait_behind(BAD).await;
        assert!(matches!(r, Ok(true)), "the checkout completed");
        assert_eq!(read, QUERY.len() + BAD.len(), "nothing read after the bad frame");
        assert!(f.broken.is_some());
        assert_eq!(f.c_scanned, QUERY.len(), "the query is ready to go");

        let (mut peer, mut stream) = tokio::io::duplex(1024);
        let (_tx, rx) = tokio::sync::oneshot::channel();
        let mut f = Fields::default();
        peer.write_all(BAD).await.expect("write");
        let waited = tokio::time::timeout(Duration::from_secs(2), wait(rx, &mut stream, &mut f)).await;
        let (r, _) = waited.expect("the wait ends while the checkout is still pending");
        assert!(matches!(r, Err(Stop::Client)));
    }
}
