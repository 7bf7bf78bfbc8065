//! The relay: client frames go to a server connection and server frames come back, streamed
//! (a 10 MB row is never held whole). pgtenant reads frame headers, the few messages that
//! decide when a server connection may be released (ReadyForQuery, ParameterStatus,
//! CopyInResponse, ErrorResponse, CommandComplete tags), and in transaction mode the names in
//! Parse/Bind/Describe/Close, which it rewrites so named statements follow the client across
//! server connections ([`super::statements`], [`super::pipeline`]).
//!
//! Deadlock note: while bytes wait to be written to the server, the server is still read
//! (one event loop polls both), so a server blocked writing results to us never stops us
//! from writing a long pipeline to it.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::task::Waker;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::meter::Meter;
use super::pipeline::{Action, Kind, Pipeline};
use super::rewrite::{self, SetTracking, Stage};
use super::statements::Effect;
use super::statements::Statements;
use super::vars::ClientVars;
use super::LoggedIn;
use crate::cancel::ClientKey;
use crate::catalog::Tenant;
use crate::console::live::{client_waker, LiveGuard, Signal, SignalReader, FORCE};
use crate::model::PoolMode;
use crate::pool::handoff::{first_due, reset_step, ResetStep};
use crate::pool::session::{retire_running, Retire, CLEANUP_TIMEOUT};
use crate::pool::{Checkout, Pool, ServerParams, TenantCap};
use crate::protocol::backend::txn;
use crate::protocol::frame::header;
use crate::protocol::frontend::tag as fe;
use crate::protocol::{frontend, PgError};
use crate::proxy::{Proxy, TenantAdmission, FORCE_CLOSE_TIMEOUT};
use tokio::sync::OwnedSemaphorePermit;

/// The session's client-scan state as a [`ClientScan`], borrowed field by field (a method
/// would borrow the whole session, and a waiting checkout also lends out the client socket).
macro_rules! client_scan {
    ($s:ident) => {
        ClientScan {
            cbuf: &mut $s.cbuf,
            c_scanned: &mut $s.c_scanned,
            c_remaining: &mut $s.c_remaining,
            terminated: &mut $s.terminated,
            broken: &mut $s.broken,
            progress: &mut $s.progress,
            max_message: $s.max_message,
            large: &mut $s.large,
            budget: &$s.admission.sessions.large,
            out_len: $s.out.len(),
        }
    };
}

mod buffers;
mod checkout;
mod ending;
pub(crate) mod large;
mod plain;
mod progress;
mod retry;
mod scan;
mod server_side;
mod timer;
mod wait;

use plain::PlainTcp;
use progress::{Progress, ResetPhase};
use scan::ClientScan;

use timer::{Limit, Limits, Timed};

/// Bytes read per socket read.
const READ_CHUNK: usize = 16 * 1024;
/// Client bytes buffered before pgtenant stops reading the client (back-pressure).
const MAX_CLIENT_BUFFERED: usize = 256 * 1024;
/// Bytes staged for the server before staging (and so reading the client) pauses: a server
/// that does not read (busy in a long query) holds the client back instead of pgtenant's
/// memory growing.
const MAX_SERVER_BOUND: usize = 256 * 1024;
/// An ErrorResponse is routed once this much of it arrived (its SQLSTATE and severity come
/// first); the rest streams through, so a huge error is never held whole.
const ERROR_PREFIX: usize = 16 * 1024;

enum Event {
    Client(io::Result<usize>),
    ServerRead(io::Result<usize>),
    ServerWrote(io::Result<usize>),
    /// pgtenant is shutting down: end the session once it is idle.
    Drain,
    /// The tenant stopped being active: end the session once it is idle.
    Kick,
    /// End the session now.
    Force,
    /// A fair-share timeout expired.
    Timeout(Limit),
}

/// The signals a session watches besides its sockets (force, drain, kick: see
/// [`crate::console::live::Signal`]).
type Signals = SignalReader;

/// What [`Session::settle`] decided.
enum Settle {
    /// Nothing more to do before the next event (or the write of what was staged).
    Done,
    /// A server connection is to be checked out; then the client's frames are staged.
    Attach,
    /// The session ends.
    Exit(Exit),
}

/// Why the relay stopped.
enum Exit {
    /// The client left (Terminate, end of stream, or a failed write).
    Client,
    /// pgtenant ends the session with this error.
    Error(PgError),
    /// The server connection failed or broke the protocol.
    ServerLost,
    /// pgtenant's own reset or setup failed; the server's ErrorResponse goes to the client.
    SetupFailed(Bytes),
    /// A bug: the session panicked. Its server connection is closed.
    Panicked,
}

/// Session ids, so a server connection knows whether the next client is the one it served.
static SESSION_IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

pub(crate) struct Session<S> {
    client: S,
    proxy: Arc<Proxy>,
    tenant: Arc<Tenant>,
    pool: Arc<Pool>,
    pool_params: ServerParams,
    mode: PoolMode,
    key: ClientKey,
    vars: ClientVars,
    max_message: usize,
    /// What the session holds of the large-message budget (see `large`), only while it holds
    /// some.
    large: Option<Box<large::Held>>,

    /// Client bytes not yet staged for a server; the first `c_scanned` are frames ready to
    /// go (whole, or the streamed part of a large one).
    cbuf: BytesMut,
    c_scanned: usize,
    /// Bytes of the current client frame not yet received.
    c_remaining: usize,
    /// Bytes of the current streamed client frame not yet staged.
    stage_remaining: usize,
    /// Bytes for the server: pgtenant's reset and setup, then staged client frames.
    out: BytesMut,
    pipeline: Pipeline,
    statements: Statements,
    /// Session SETs of the current transaction, tracked once it ends outside a block.
    sets: SetTracking,
    /// The client started a session-level feature (LISTEN …) in transaction mode and keeps
    /// its server connection for the rest of its session.
    pinned: bool,
    /// The client sent Terminate (never forwarded).
    terminated: bool,
    /// The client sent a malformed frame: what came before it is answered, then this error.
    /// (Boxed, as `draining`: rare, and an idle session should not carry its room.)
    broken: Option<Box<PgError>>,
    /// The client's Terminate was passed to the server (which then closes).
    sent_terminate: bool,
    /// After pgtenant lost track of a connection: the column name of the marker query it
    /// sent behind everything the client sent, and whether its reply is being swallowed.
    resync: Option<Box<str>>,
    resync_swallowing: bool,
    /// The fair-share timeouts, their timer and the last activity; `None` when no limit
    /// applies (the default).
    timed: Option<Box<Timed>>,
    /// This session's id (see [`SESSION_IDS`]).
    id: u64,

    sbuf: BytesMut,
    /// Bytes of the current server frame not yet received, and whether it is swallowed.
    s_remaining: usize,
    s_discard: bool,

    server: Option<Checkout>,
    /// The tenant's server-connection cap, once a checkout found it.
    tenant_cap: TenantCap,
    progress: Progress,
    /// Why the session ends once it is idle (shutdown, or the tenant was suspended).
    draining: Option<Box<PgError>>,
    admission: TenantAdmission,
    /// Raised to end the session (see [`Signals`]).
    signal: Arc<Signal>,
    /// The waker the client socket's reads register when it is plain TCP (see `next_event`).
    client_waker: Waker,
    /// The client's entry in the console's registry and its place under `max_client_conn`,
    /// held until the session ends.
    _places: (LiveGuard, OwnedSemaphorePermit),
    meter: Meter,
    /// `[pool] session_features` as it was when the session started (read once, not per
    /// message; a reload applies to sessions that start after it).
    policy: crate::config::SessionFeatures,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + PlainTcp> Session<S> {
    pub fn new(
        client: S,
        buffered: BytesMut,
        login: LoggedIn,
        meter: Meter,
        proxy: Arc<Proxy>,
        signal: Arc<Signal>,
        places: (LiveGuard, OwnedSemaphorePermit),
    ) -> Self
    where
        S: 'static,
    {
        // Only a plain TCP client's reads are left registered between polls (a TLS read may
        // register a write, which the writes to the client would replace).
        let client_plain = (&client as &dyn std::any::Any)
            .downcast_ref::<super::stream::ClientStream>()
            .is_some_and(|c| matches!(c, super::stream::ClientStream::Plain(_)));
        let LoggedIn { tenant, pool, vars, key, admission, .. } = login;
        let pool_params = pool.params().unwrap_or_default();
        let cbuf = buffered;
        let config = proxy.config();
        let timed = Limits::new(&config.pool, &tenant.timeouts).timed();
        let policy = config.pool.session_features;
        let max_message = config.proxy.max_message_size;
        drop(config);
        Session {
            client,
            mode: tenant.pool_mode,
            max_message,
            large: None,
            policy,
            proxy,
            tenant,
            pool,
            pool_params,
            key,
            vars,
            cbuf,
            c_scanned: 0,
            c_remaining: 0,
            stage_remaining: 0,
            out: BytesMut::new(),
            pipeline: Pipeline::default(),
            statements: Statements::default(),
            sets: SetTracking::default(),
            pinned: false,
            terminated: false,
            broken: None,
            sent_terminate: false,
            resync: None,
            resync_swallowing: false,
            timed,
            id: SESSION_IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            sbuf: BytesMut::new(),
            s_remaining: 0,
            s_discard: false,
            server: None,
            tenant_cap: TenantCap::default(),
            progress: Progress { status: txn::IDLE, client_plain, ..Progress::default() },
            draining: None,
            admission,
            client_waker: client_waker(&signal),
            signal,
            _places: places,
            meter,
        }
    }

    /// Runs the session to its end. Not an `async fn`: an async fn's state holds its
    /// arguments twice (as passed and as moved into the body), and a session lives for as
    /// long as its client is connected; the block below holds the session once.
    #[allow(clippy::manual_async_fn)] // On purpose: see above.
    pub fn run(mut self) -> impl Future<Output = ()> + Send {
        async move {
            let mut cut = SignalReader::new(self.signal.clone());
            let peer = self.meter.peer();
            tokio::select! {
                // Biased: the session first (no random draw per wake-up); the cut is still
                // polled on every wake-up where the session is pending.
                biased;
                _ = self.drive() => {}
                // The session answers a forced shutdown itself (57P01, then close); a client
                // that has stopped reading cannot take that message, and must not hold up the
                // shutdown.
                _ = async {
                    // Polled on every wake-up of the session: one load of the signal's bits.
                    cut.raised(FORCE).await;
                    // Boxed: the timer is needed only once a forced shutdown began.
                    Box::pin(tokio::time::sleep(FORCE_CLOSE_TIMEOUT)).await;
                } => tracing::info!(%peer, "client not reading at the forced shutdown: connection cut"),
            }
        }
    }

    async fn drive(&mut self) {
        use futures_util::FutureExt;
        let mut signals = Signals::new(self.signal.clone());
        // A bug in one session must not leak pool capacity: after a panic the session's
        // server connection is closed (never reused) and its slot returned.
        let exit = match std::panic::AssertUnwindSafe(self.relay(&mut signals)).catch_unwind().await {
            Ok(exit) => exit,
            Err(_) => {
                tracing::error!(tenant = %self.tenant.id, "session panicked: closing it and its server connection");
                Exit::Panicked
            }
        };
        // Boxed: the final retire's state is large and runs once.
        Box::pin(self.finish(exit)).await;
    }

    async fn relay(&mut self, signals: &mut Signals) -> Exit {
        self.scan_client();
        loop {
            // Settled without an await unless a connection is to be checked out (an async
            // call per turn costs a state machine's poll, several times a round trip).
            let attach = match self.settle() {
                Settle::Done => false,
                Settle::Attach => true,
                Settle::Exit(exit) => return exit,
            };
            if attach {
                if let Err(exit) = self.attach().await {
                    return exit;
                }
                if let Some(exit) = self.stage_when_ready() {
                    return exit;
                }
            }
            // What was just staged goes to the server now, without a turn through
            // `next_event` (which would find the socket writable and return the same write).
            match self.write_server_now().await {
                Ok(true) => continue,
                Ok(false) => {}
                Err(exit) => return exit,
            }
            let event = if self.terminated || self.broken.is_some() {
                // Replies owed after the client left are waited for a bounded time only.
                // Boxed: rare, and the timeout's state would otherwise be in every session.
                match Box::pin(tokio::time::timeout(CLEANUP_TIMEOUT, self.next_event(signals))).await {
                    Ok(e) => e,
                    Err(_) => return self.broken.take().map_or(Exit::Client, |e| Exit::Error(*e)),
                }
            } else {
                self.next_event(signals).await
            };
            self.meter.next_turn();
            match event {
                // The connection goes back at the next settle.
                Event::Timeout(Limit::Affinity) => self.hold_missed(),
                // A late reset may be cancelled and its handoff retried (see `retry`).
                Event::Timeout(Limit::Reset) if self.cancel_late_reset() => {}
                // An unsynced batch's statement may still run: its replies asked for first.
                Event::Timeout(Limit::IdleTransaction) if self.flush_unsynced() => {}
                Event::Timeout(limit) => return Exit::Error(timed_out(limit, &self.tenant.id)),
                Event::Force => return Exit::Error(shutting_down()),
                Event::Drain => self.draining = Some(Box::new(shutting_down())),
                Event::Kick => {
                    let reason = self.admission.sessions.kick_reason();
                    self.draining = Some(Box::new(reason.unwrap_or_else(shutting_down)));
                }
                Event::Client(Ok(0) | Err(_)) => return Exit::Client,
                Event::Client(Ok(n)) => {
                    if self.hold_used()
                        && self.server_idle()
                        && self.proxy.pools.pauses.is_paused(&self.tenant.id)
                    {
                        // A PAUSE landed during an affinity hold: the connection goes back
                        // and the client's next transaction waits at the pause like any other.
                        self.progress.held = 0;
                        self.release();
                    }
                    self.meter.bytes_in(n);
                    self.touch();
                    self.scan_client();
                }
                Event::ServerWrote(Ok(n)) => self.consume_written(n),
                Event::ServerRead(Ok(0)) if self.sent_terminate => {
                    // The server closed after the client's Terminate, as it would have.
                    self.server = None;
                    return self.broken.take().map_or(Exit::Client, |e| Exit::Error(*e));
                }
                Event::ServerWrote(Err(_)) | Event::ServerRead(Ok(0) | Err(_)) => return Exit::ServerLost,
                Event::ServerRead(Ok(_)) => {
                    self.touch();
                    if let Err(exit) = self.pump_server().await {
                        return exit;
                    }
                }
            }
        }
    }

    /// Decisions between events: release an idle server connection (transaction mode),
    /// end a draining or terminated session, check one out when there is work (the caller
    /// does, told by [`Settle::Attach`], then stages what waits: see
    /// [`Session::stage_when_ready`]).
    fn settle(&mut self) -> Settle {
        // A connection pgtenant lost track of (an uncertain COPY) stays with this client until
        // a marker query, sent once the client is quiet, shows where its replies end.
        if self.progress.desync {
            self.maybe_resync();
        }
        if self.server.is_some() && self.mode == PoolMode::Transaction && !self.pinned {
            if self.server_idle() && !self.keep_for_affinity() {
                self.release();
            } else if self.progress.yielding && self.idle_but_for_client() {
                // Its next transaction, held back, waits for a connection as any other.
                self.progress.yielding = false;
                self.progress.held = 0;
                self.release();
            }
        }
        if let Some(reason) = self.draining.as_ref().filter(|_| self.server.is_none() || self.server_idle()) {
            return Settle::Exit(Exit::Error(PgError::clone(reason)));
        }
        if let Some(exit) = self.ended() {
            return Settle::Exit(exit);
        }
        if self.server.is_none() && self.c_scanned > 0 {
            return Settle::Attach;
        }
        self.stage_when_ready().map_or(Settle::Done, Settle::Exit)
    }

    /// The rest of [`Session::settle`], with a server connection (or none needed): stages
    /// the client's frames unless they must wait.
    fn stage_when_ready(&mut self) -> Option<Exit> {
        // Behind a cross-tenant reset and the session's setup the client's messages go in
        // the same write up to its first Sync (a failed DISCARD ALL or setup makes the server
        // skip them: they never run on the previous tenant's session, nor without the
        // setup); what follows that Sync waits for their verdict.
        // Behind a resync marker they wait for its ReadyForQuery: the reply model starts
        // afresh there, and would not know it owes them anything.
        let p = &self.progress;
        let hold = (p.reset != ResetPhase::Done && p.reset_synced) || self.resync.is_some();
        if self.server.is_some() && self.c_scanned > 0 && !hold {
            self.stage();
        }
        self.ended()
    }

    /// pgtenant lost track of what the server owes (an error inside a COPY with Syncs in the
    /// data): once the client is quiet between transactions and the server owes nothing it
    /// knows of, a marker query goes behind
    /// everything it sent. The server answers in order, so everything before the marker's
    /// RowDescription (its column named with a random token no client can guess) is the
    /// client's; the marker's reply is swallowed and the model starts afresh.
    fn maybe_resync(&mut self) {
        let p = &self.progress;
        if !p.desync
            || self.resync.is_some()
            || self.server.is_none()
            || self.mode != PoolMode::Transaction
            || self.pinned
            || self.terminated
            || self.broken.is_some()
            || p.extended_open
            || p.status != txn::IDLE
            // The marker must not reach the server inside a copy the client started (it
            // would end it with 08P01 and FATAL): not while a CopyInResponse is unanswered,
            // nor while the client's last Query or Execute may have started one it has not
            // ended (replies cannot say whether the server read it yet: the model may have
            // given it a ReadyForQuery it did not expect), nor while the model owes a reply.
            || p.copy_in
            || p.copy_may_open
            || !self.quiet()
            || self.c_scanned != 0
            // A message of the client's is half forwarded: the marker would land inside it.
            || self.c_remaining != 0
            || self.stage_remaining != 0
            || !self.cbuf.is_empty()
            || !self.out.is_empty()
        {
            return;
        }
        let token = format!("pgtenant_resync_{:032x}", rand::random::<u128>());
        if frontend::query(&mut self.out, &format!("SELECT 1 AS \"{token}\"")).is_ok() {
            tracing::debug!(tenant = %self.tenant.id, "resynchronising a server connection");
            self.resync = Some(token.into());
            if let Some(server) = self.server.as_mut() {
                server.conn().forget_unnamed();
            }
        }
    }

    /// Walks the frame headers of newly read client bytes (see [`ClientScan::run`]).
    fn scan_client(&mut self) {
        client_scan!(self).run()
    }

    /// Moves scanned client frames into the server-bound buffer, queueing the replies each
    /// earns, and in transaction mode rewriting statement names (see [`Stage::rewrite`]).
    fn stage(&mut self) {
        // A frame past what a retry can keep waits for the handoff's verdict, asked with a Flush.
        let room = self.retry_room();
        // A client that always has a query in flight never leaves its connection idle between
        // transactions: while others wait, once `HOLD_STREAK` passed since its checkout, its
        // next transaction is held back and the connection goes back when the server is idle
        // (see `Progress::yielding`). Never inside a transaction (the last ReadyForQuery's
        // status), an extended batch or a copy, nor on a connection that would not go back.
        // Only while something is in flight (`unit_pending`): once it is answered, either the
        // connection goes back (`settle`) or this runs again and stages.
        let transaction = self.mode == PoolMode::Transaction;
        let p = &mut self.progress;
        p.yielding = false;
        let may_yield = transaction
            && p.status == txn::IDLE
            && !self.pinned
            && !p.desync
            && p.reset == ResetPhase::Done
            && !self.terminated
            && self.draining.is_none()
            && (self.pool.anyone_waiting() || self.tenant_cap.anyone_waiting());
        let Some(server) = self.server.as_mut() else { return };
        self.meter.query_started();
        // Built once for all the frames staged now.
        let mut st = Stage {
            out: &mut self.out,
            pipeline: &mut self.pipeline,
            statements: &mut self.statements,
            conn: server.conn(),
            search_path: self.vars.setting("search_path").unwrap_or_default(),
            vars: &self.vars,
            tenant_vars: &self.tenant.session_vars,
            sets: &mut self.sets,
            pinned: &mut self.pinned,
            policy: self.policy,
            meter: &mut self.meter,
            session: self.id,
            names_statement: false,
            copies: false,
        };
        let mut pos = 0;
        while pos < self.c_scanned && st.out.len() < MAX_SERVER_BOUND {
            if self.stage_remaining > 0 {
                let n = self.stage_remaining.min(self.c_scanned - pos);
                st.out.extend_from_slice(&self.cbuf[pos..pos + n]);
                pos += n;
                self.stage_remaining -= n;
                continue;
            }
            // scan_client checked every header up to c_scanned.
            let Ok(Some((tag, len))) = header(&self.cbuf[pos..self.c_scanned], usize::MAX) else { break };
            // Not looking at `copy_may_open` (an Execute after any COPY the client parsed sets
            // it): a COPY FROM STDIN the unit in flight starts shows in its CopyInResponse
            // (`unit_pending` is false from then on, unless the client already ended a copy a
            // Query started, and this runs again), and copy data is never held back.
            if may_yield
                && frontend::starts_unit(tag)
                && st.pipeline.unit_pending()
                && st.meter.held_longer_than(checkout::HOLD_STREAK)
            {
                self.progress.yielding = true;
                break;
            }
            if pos + len > room {
                st.out.extend_from_slice(frontend::FLUSH_MESSAGE);
                st.pipeline.push(Kind::Flush, Action::Swallow);
                self.progress.reset_synced = true;
                break;
            }
            let avail = self.c_scanned - pos;
            if avail < len {
                // A large frame streaming through (never one that is read or rewritten).
                st.pipeline.push(Kind::of(tag, None), Action::Forward);
                st.out.extend_from_slice(&self.cbuf[pos..self.c_scanned]);
                self.stage_remaining = len - avail;
                pos = self.c_scanned;
                continue;
            }
            let frame = &self.cbuf[pos..pos + len];
            let named = if transaction {
                if !st.rewrite(tag, frame) {
                    // Waits for the server's verdict on an earlier message (see Lookup::Wait).
                    // When the server holds it (until a Sync or Flush; none of the client's
                    // lies between), a Flush (no reply) gets it; not otherwise: what the client
                    // has not asked the server to send yet (it may end first) it does not get.
                    if st.pipeline.unflushed() && st.statements.wait_needs_flush() {
                        st.out.extend_from_slice(frontend::FLUSH_MESSAGE);
                        st.pipeline.push(Kind::Flush, Action::Swallow);
                    }
                    break;
                }
                // Whether the server may be in a COPY FROM STDIN the client started (what the
                // resync marker waits for): its last Query starting a COPY, or an Execute once
                // it parsed one (see `Progress::copy_parsed`), with no CopyDone or CopyFail since.
                match tag {
                    fe::QUERY => self.progress.copy_may_open = st.copies,
                    fe::PARSE => self.progress.copy_parsed |= st.copies,
                    fe::EXECUTE => self.progress.copy_may_open = self.progress.copy_parsed,
                    fe::COPY_DONE | fe::COPY_FAIL => self.progress.copy_may_open = false,
                    _ => {}
                }
                st.names_statement
            } else {
                st.forward_session(tag, frame);
                frontend::names_statement(tag, frame)
            };
            st.meter.client_message(tag, named, !transaction);
            pos += len;
            if tag == fe::SYNC && self.progress.reset != ResetPhase::Done {
                // The rest waits for the reset's verdict (see `settle`).
                self.progress.reset_synced = true;
                break;
            }
        }
        self.keep_staged(pos);
        buffers::consume(&mut self.cbuf, pos);
        self.c_scanned -= pos;
        if self.pipeline.has_effects() {
            let (undo, done) = self.pipeline.take_effects();
            self.apply_effects(undo, done);
        }
    }

    /// Settles what messages did once the server completed or skipped them (see
    /// [`rewrite::apply_effects`]).
    fn apply_effects(&mut self, undo: Vec<Effect>, done: Vec<Effect>) {
        let conn = self.server.as_mut().map(|s| s.conn());
        rewrite::apply_effects(&mut self.statements, conn, &mut self.sets, undo, done);
    }

    /// Ends the session: tells the client why (when pgtenant ends it), and returns the
    /// server connection to the pool only if it is idle (through [`retire`]).
    async fn finish(&mut self, exit: Exit) {
        let tenant = self.tenant.id.clone();
        let sent_error = !matches!(exit, Exit::Client);
        let reason = match &exit {
            Exit::Client => "client closed the connection",
            Exit::Error(e) => {
                self.meter.ended_with(e);
                e.state.code()
            }
            Exit::ServerLost => "server connection lost",
            Exit::SetupFailed(_) => "session setup failed",
            Exit::Panicked => {
                self.proxy.metrics.global().panic_caught();
                "panic"
            }
        };
        let notice: Option<BytesMut> = match &exit {
            Exit::Client => None,
            Exit::Error(e) => Some(e.to_bytes()),
            // The server said why itself: nothing is added after its FATAL.
            Exit::ServerLost if self.progress.fatal => None,
            Exit::ServerLost => Some(PgError::upstream_lost(tenant.as_str()).to_bytes()),
            Exit::SetupFailed(frame) => Some(BytesMut::from(&frame[..])),
            Exit::Panicked => Some(PgError::internal(tenant.as_str()).to_bytes()),
        };
        if let Some(bytes) = notice {
            let write = async {
                self.client.write_all(&bytes).await?;
                self.client.flush().await
            };
            let _ = tokio::time::timeout(CLEANUP_TIMEOUT, write).await;
        }
        let idle = !matches!(exit, Exit::Panicked) && self.server_idle();
        if let Some(co) = self.server.take() {
            self.key.detach();
            match exit {
                Exit::ServerLost | Exit::SetupFailed(_) => drop(co),
                _ => {
                    // A session-mode (or pinned) client leaves its session state behind: reset.
                    let keeps_state =
                        self.mode == PoolMode::Session || self.pinned || co.conn_ref().is_dirty();
                    let retiring = Retire {
                        idle,
                        cancel: self.key.cancel_in_flight(),
                        reset: keeps_state.then(|| self.proxy.config().pool.reset_query.clone()),
                        params: self.pool_params.clone(),
                        tenant: tenant.clone(),
                    };
                    // A reset still running is cancelled too: once it fails, the server skips
                    // the client's messages sent behind it, which must not run after the
                    // session ended.
                    let running = self.pipeline.pending_ready() > 0
                        || self.pipeline.copy_in()
                        || self.progress.reset != ResetPhase::Done;
                    retire_running(co, retiring, running).await;
                }
            }
        }
        // After an error pgtenant sent, the shutdown makes sure it is delivered (a close with
        // unread client bytes would reset the connection); a TLS client gets its close_notify.
        // A plaintext client that left needs neither: the close alone ends the connection
        // (one syscall less per connection).
        if sent_error || !self.progress.client_plain {
            let _ = tokio::time::timeout(CLEANUP_TIMEOUT, self.client.shutdown()).await;
        }
        self.meter.disconnected(tenant.as_str(), reason);
    }
}

/// CommandComplete tags of commands that change session state a later client would see:
/// `SET`, `RESET`, `DISCARD …`, `DEALLOCATE …`, `LISTEN`, `PREPARE`. Decided by the first
/// byte before any comparison (one per CommandComplete: most tags, SELECT, INSERT, UPDATE,
/// BEGIN, COMMIT, go no further, or one compare).
fn changes_session_state(tag: &[u8]) -> bool {
    match tag.first() {
        Some(b'S') => tag.starts_with(b"SET\0"),
        Some(b'R') => tag.starts_with(b"RESET\0"),
        Some(b'D') => tag.starts_with(b"DISCARD") || tag.starts_with(b"DEALLOCATE"),
        Some(b'L') => tag.starts_with(b"LISTEN\0"),
        Some(b'P') => tag.starts_with(b"PREPARE\0"),
        _ => false,
    }
}

fn timed_out(limit: Limit, tenant: &crate::model::TenantId) -> PgError {
    match limit {
        Limit::Query => PgError::query_timeout(tenant.as_str()),
        Limit::IdleTransaction => PgError::idle_transaction_timeout(tenant.as_str()),
        Limit::ClientIdle => PgError::client_idle_timeout(tenant.as_str()),
        // An affinity hold ending is no error; the relay handles it before this.
        Limit::Reset | Limit::Affinity => PgError::session_setup_failed(),
    }
}

fn shutting_down() -> PgError {
    PgError::shutting_down()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    /// The list `changes_session_state` decides by first byte.
    fn by_list(tag: &[u8]) -> bool {
        const TAGS: [&[u8]; 6] = [b"SET\0", b"RESET\0", b"DISCARD", b"DEALLOCATE", b"LISTEN\0", b"PREPARE\0"];
        TAGS.iter().any(|t| tag.starts_with(t))
    }

    #[test]
    fn session_state_tags() {
        for tag in [
            &b"SET\0"[..],
            b"RESET\0",
            b"DISCARD ALL\0",
            b"DISCARD TEMP\0",
            b"DEALLOCATE\0",
            b"DEALLOCATE ALL\0",
            b"LISTEN\0",
            b"PREPARE\0",
        ] {
            assert!(super::changes_session_state(tag), "{tag:?}");
        }
        for tag in [
            &b"SELECT 1\0"[..],
            b"SET",
            b"SETX\0",
            b"RESET",
            b"INSERT 0 1\0",
            b"PREPARE TRANSACTION\0",
            b"LISTENER\0",
            b"",
            b"D",
        ] {
            assert!(!super::changes_session_state(tag), "{tag:?}");
        }
    }

    proptest! {
        /// The same answer as the list, for tags built from the listed ones' pieces and for
        /// any bytes.
        #[test]
        fn as_the_list_decides(
            head in prop::sample::select(vec![&b"SET"[..], b"RESET", b"DISCARD", b"DEALLOCATE", b"LISTEN", b"PREPARE", b"SELECT", b"S", b"D", b"", b"UPDATE"]),
            tail in prop::collection::vec(prop::sample::select(vec![0u8, b' ', b'A', b'1', b'T']), 0..4),
            any in prop::collection::vec(any::<u8>(), 0..12),
        ) {
            let tag = [head, &tail[..]].concat();
            prop_assert_eq!(super::changes_session_state(&tag), by_list(&tag));
            prop_assert_eq!(super::changes_session_state(&any), by_list(&any));
        }
    }
}
