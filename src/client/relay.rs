//! The relay: client frames go to a server connection and server frames come back, as their
//! original bytes, streamed (a 10 MB row is never held whole). pgtenant reads only frame
//! headers, plus the few messages that decide when a server connection may be released:
//! ReadyForQuery (and the Query/Sync/FunctionCall that each earn one), ParameterStatus,
//! CopyInResponse and ErrorResponse.
//!
//! Deadlock note: while bytes wait to be written to the server, the server is still read
//! (one event loop polls both), so a server blocked writing results to us never stops us
//! from writing a long pipeline to it.

use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_util::io::poll_read_buf;
use tokio_util::sync::WaitForCancellationFutureOwned;

use super::vars::{forget_unreported, ClientVars};
use super::LoggedIn;
use crate::cancel::{CancelTarget, ClientKey};
use crate::catalog::Tenant;
use crate::config::PoolMode;
use crate::pool::{cancel_backend, Checkout, Pool, ServerParams};
use crate::protocol::backend::{parse_error_fields, parse_parameter_status};
use crate::protocol::frame::{header, FrameReader, DEFAULT_MAX_MESSAGE, HEADER_LEN};
use crate::protocol::{frontend, PgError, SqlState};
use crate::server::{Proxy, TenantAdmission};

/// Bytes read per socket read.
const READ_CHUNK: usize = 16 * 1024;
/// Client bytes buffered before pgtenant stops reading the client (back-pressure).
const MAX_CLIENT_BUFFERED: usize = 256 * 1024;
/// How long cleanup (reset query, cancel) may take when a client leaves.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(5);

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
}

/// The signals a session watches besides its sockets.
struct Signals {
    drain: Pin<Box<WaitForCancellationFutureOwned>>,
    kick: Pin<Box<WaitForCancellationFutureOwned>>,
    force: Pin<Box<WaitForCancellationFutureOwned>>,
}

/// Why the relay stopped.
enum Exit {
    /// The client left (Terminate, end of stream, or a failed write).
    Client,
    /// pgtenant ends the session with this error.
    Error(PgError),
    /// The server connection failed or broke the protocol.
    ServerLost,
    /// pgtenant's own setup query failed; the server's ErrorResponse goes to the client.
    SetupFailed(Bytes),
}

/// Where the server connection stands in the protocol: what it still owes the client.
#[derive(Debug, Default)]
struct Progress {
    /// ReadyForQuery messages the server owes the client: one per Query, Sync, FunctionCall.
    pending_z: usize,
    /// ReadyForQuery messages of pgtenant's own setup queries, swallowed.
    swallow_z: usize,
    /// An extended-protocol message went out and its Sync has not.
    extended_open: bool,
    /// The server is in COPY FROM STDIN until the client's CopyDone/CopyFail.
    copy_in: bool,
    /// Syncs since the last Execute/Query: the server ignores them if that command turns
    /// out to be COPY FROM STDIN (`CopyGetData` in `src/backend/commands/copyfromparse.c`).
    syncs_since_exec: usize,
    /// The last command went out through Execute (extended protocol): after its COPY ends,
    /// the server waits for a Sync.
    exec_extended: bool,
    /// The client already ended the COPY of the last command (CopyDone/CopyFail sent, maybe
    /// before the server's CopyInResponse arrived).
    copy_ended: bool,
    /// A ReadyForQuery arrived that nothing accounted for: pgtenant's count is off, so the
    /// connection is never returned to the pool.
    desync: bool,
    /// Transaction status of the last ReadyForQuery.
    status: u8,
}

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

    /// Client bytes not yet written to a server; the first `c_scanned` are whole or
    /// streaming frames ready to go.
    cbuf: BytesMut,
    c_scanned: usize,
    /// Bytes of the current client frame not yet received.
    c_remaining: usize,
    /// The client sent Terminate (never forwarded).
    terminated: bool,

    sbuf: BytesMut,
    /// Bytes of the current server frame not yet received, and whether it is swallowed.
    s_remaining: usize,
    s_discard: bool,
    setup_error: Option<Bytes>,

    /// pgtenant's own messages, written to the server before the client's.
    prelude: BytesMut,
    server: Option<Checkout>,
    progress: Progress,
    /// Why the session ends once it is idle (shutdown, or the tenant was suspended).
    draining: Option<PgError>,
    admission: TenantAdmission,
    /// Whether this client's session setup is known to succeed (it carries no settings
    /// from the client, or a server already accepted them), so it may be pipelined.
    setup_trusted: bool,
    force: tokio_util::sync::CancellationToken,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Session<S> {
    pub fn new(client: S, buffered: BytesMut, login: LoggedIn, proxy: Arc<Proxy>) -> Self {
        let LoggedIn { tenant, pool, vars, key, admission } = login;
        let force = proxy.shutdown.force.clone();
        let setup_trusted = !vars.from_client;
        let pool_params = pool.params().unwrap_or_default();
        let mut cbuf = buffered;
        cbuf.reserve(READ_CHUNK);
        Session {
            client,
            mode: tenant.pool_mode,
            max_message: proxy.config.proxy.max_message_size,
            proxy,
            tenant,
            pool,
            pool_params,
            key,
            vars,
            cbuf,
            c_scanned: 0,
            c_remaining: 0,
            terminated: false,
            sbuf: BytesMut::with_capacity(READ_CHUNK),
            s_remaining: 0,
            s_discard: false,
            setup_error: None,
            prelude: BytesMut::new(),
            server: None,
            progress: Progress { status: b'I', ..Progress::default() },
            draining: None,
            admission,
            setup_trusted,
            force,
        }
    }

    pub async fn run(mut self) {
        let mut signals = Signals {
            drain: Box::pin(self.proxy.shutdown.drain.clone().cancelled_owned()),
            kick: Box::pin(self.admission.kick.clone().cancelled_owned()),
            force: Box::pin(self.proxy.shutdown.force.clone().cancelled_owned()),
        };
        let exit = self.relay(&mut signals).await;
        self.finish(exit).await;
    }

    async fn relay(&mut self, signals: &mut Signals) -> Exit {
        if let Err(e) = self.scan_client() {
            return Exit::Error(e);
        }
        loop {
            if let Some(exit) = self.settle().await {
                return exit;
            }
            match self.next_event(signals).await {
                Event::Force => return Exit::Error(shutting_down()),
                Event::Drain => self.draining = Some(shutting_down()),
                Event::Kick => {
                    let reason = self.admission.sessions.kick_reason();
                    self.draining = Some(reason.unwrap_or_else(shutting_down));
                }
                Event::Client(Ok(0) | Err(_)) => return Exit::Client,
                Event::Client(Ok(_)) => {
                    if let Err(e) = self.scan_client() {
                        return Exit::Error(e);
                    }
                }
                Event::ServerWrote(Ok(n)) => self.consume_written(n),
                Event::ServerWrote(Err(_)) | Event::ServerRead(Ok(0) | Err(_)) => return Exit::ServerLost,
                Event::ServerRead(Ok(_)) => {
                    if let Err(exit) = self.pump_server().await {
                        return exit;
                    }
                }
            }
        }
    }

    /// Decisions between events: release an idle server connection (transaction mode),
    /// end a draining or terminated session, check one out when there is work.
    async fn settle(&mut self) -> Option<Exit> {
        if self.server.is_some() && self.mode == PoolMode::Transaction && self.server_idle() {
            self.release();
        }
        let idle = self.server.is_none() || self.server_idle();
        if let (Some(reason), true) = (&self.draining, idle) {
            return Some(Exit::Error(reason.clone()));
        }
        // After Terminate and once everything before it went out, the session is over;
        // replies still owed are not waited for (finish cancels what runs).
        if self.terminated && self.c_scanned == 0 && (idle || self.server.is_some()) {
            return Some(Exit::Client);
        }
        if self.server.is_none() && self.c_scanned > 0 {
            if let Err(e) = self.attach().await {
                return Some(Exit::Error(e));
            }
        }
        None
    }

    /// Nothing in flight: the server owes nothing and the client sent nothing unanswered.
    fn server_idle(&self) -> bool {
        let p = &self.progress;
        p.pending_z == 0
            && !p.desync
            && p.swallow_z == 0
            && !p.extended_open
            && !p.copy_in
            && p.status == b'I'
            && self.s_remaining == 0
            && self.sbuf.is_empty()
            && self.prelude.is_empty()
            && self.c_scanned == 0
            && self.c_remaining == 0
    }

    async fn attach(&mut self) -> Result<(), PgError> {
        let mut co = self
            .proxy
            .pools
            .checkout(&self.pool, &self.tenant)
            .await
            .map_err(|e| e.to_client(self.tenant.id.as_str()))?;
        let conn = co.conn();
        self.key.set_target(Some(CancelTarget {
            addr: conn.addr.clone(),
            pid: conn.backend_pid,
            secret: conn.backend_secret,
        }));
        if let Some(sql) = self.vars.sync_query(conn, &self.pool_params) {
            if frontend::query(&mut self.prelude, &sql).is_ok() {
                self.progress.swallow_z += 1;
            }
        }
        co.conn().tenant = Some(self.tenant.id.clone());
        self.progress.status = b'I';
        self.server = Some(co);
        Ok(())
    }

    fn release(&mut self) {
        let Some(mut co) = self.server.take() else { return };
        self.key.set_target(None);
        if self.key.cancel_in_flight() {
            // A cancel for this client may still reach the backend: it must not land on the
            // next client's query, so the connection is closed instead of reused.
            return;
        }
        if co.conn().dirty {
            // The client changed session state (SET, LISTEN, PREPARE …): reset before reuse,
            // off the client's path.
            let reset = self.proxy.config.pool.reset_query.clone();
            let params = self.pool_params.clone();
            tokio::spawn(async move {
                if let Ok(Ok(())) =
                    tokio::time::timeout(CLEANUP_TIMEOUT, reset_session(&mut co, &reset)).await
                {
                    forget_unreported(co.conn(), &params);
                    co.conn().dirty = false;
                    co.release();
                }
            });
            return;
        }
        co.release();
    }

    async fn next_event(&mut self, signals: &mut Signals) -> Event {
        for buf in [&mut self.cbuf, &mut self.sbuf] {
            if buf.capacity() - buf.len() < 4096 {
                buf.reserve(READ_CHUNK);
            }
        }
        let read_client = !self.terminated && self.cbuf.len() < MAX_CLIENT_BUFFERED;
        let watch_drain = self.draining.is_none();
        poll_fn(|cx| {
            if signals.force.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Event::Force);
            }
            if watch_drain {
                if signals.drain.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Event::Drain);
                }
                if signals.kick.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Event::Kick);
                }
            }
            if let Some(server) = self.server.as_mut() {
                let stream = &mut server.conn().stream;
                // Client bytes wait behind a setup that might fail (settings from the
                // client's startup packet no server has accepted yet): they must not run on
                // a connection whose setup was refused.
                let hold = self.progress.swallow_z > 0 && !self.setup_trusted;
                let out: &[u8] = if !self.prelude.is_empty() {
                    &self.prelude
                } else if hold {
                    &[]
                } else {
                    &self.cbuf[..self.c_scanned]
                };
                if !out.is_empty() {
                    if let Poll::Ready(r) = Pin::new(&mut *stream).poll_write(cx, out) {
                        return Poll::Ready(Event::ServerWrote(r));
                    }
                }
                if let Poll::Ready(r) = poll_read_buf(Pin::new(stream), cx, &mut self.sbuf) {
                    return Poll::Ready(Event::ServerRead(r));
                }
            }
            if read_client {
                if let Poll::Ready(r) = poll_read_buf(Pin::new(&mut self.client), cx, &mut self.cbuf) {
                    return Poll::Ready(Event::Client(r));
                }
            }
            Poll::Pending
        })
        .await
    }

    fn consume_written(&mut self, n: usize) {
        if self.prelude.is_empty() {
            self.cbuf.advance(n);
            self.c_scanned -= n;
        } else {
            self.prelude.advance(n);
        }
    }

    /// Walks the frame headers of newly read client bytes, counting what earns a
    /// ReadyForQuery. Bodies stream through without being read.
    fn scan_client(&mut self) -> Result<(), PgError> {
        let p = &mut self.progress;
        while !self.terminated && self.c_scanned < self.cbuf.len() {
            if self.c_remaining > 0 {
                let n = self.c_remaining.min(self.cbuf.len() - self.c_scanned);
                self.c_scanned += n;
                self.c_remaining -= n;
                continue;
            }
            let Some((tag, len)) = header(&self.cbuf[self.c_scanned..], self.max_message).map_err(|e| {
                PgError::fatal(SqlState::ProtocolViolation, format!("invalid message from client: {e}"))
            })?
            else {
                break;
            };
            match tag {
                b'X' => {
                    // Terminate: never forwarded; the server connection outlives the client.
                    self.terminated = true;
                    self.cbuf.truncate(self.c_scanned);
                    break;
                }
                b'Q' => {
                    p.pending_z += 1;
                    p.syncs_since_exec = 0;
                    p.exec_extended = false;
                    p.copy_ended = false;
                }
                // A Sync the server will ignore (sent during COPY FROM STDIN) earns no
                // ReadyForQuery and does not close the extended-protocol exchange.
                b'S' if !p.copy_in => {
                    p.pending_z += 1;
                    p.extended_open = false;
                    if !p.copy_ended {
                        p.syncs_since_exec += 1;
                    }
                }
                b'F' => p.pending_z += 1,
                b'E' => {
                    p.extended_open = true;
                    p.syncs_since_exec = 0;
                    p.exec_extended = true;
                    p.copy_ended = false;
                }
                b'P' | b'B' | b'D' | b'C' => p.extended_open = true,
                b'c' | b'f' => {
                    p.copy_in = false;
                    p.copy_ended = true;
                    p.extended_open |= p.exec_extended;
                }
                _ => {}
            }
            let take = len.min(self.cbuf.len() - self.c_scanned);
            self.c_scanned += take;
            self.c_remaining = len - take;
        }
        Ok(())
    }

    /// Forwards whole and streaming server frames to the client, swallowing the replies to
    /// pgtenant's own queries and noting what decides release.
    async fn pump_server(&mut self) -> Result<(), Exit> {
        let mut pos = 0;
        let mut from = 0;
        loop {
            let avail = self.sbuf.len() - pos;
            if self.s_remaining > 0 {
                let n = self.s_remaining.min(avail);
                if n == 0 {
                    break;
                }
                if self.s_discard {
                    self.write_client(from, pos).await?;
                    from = pos + n;
                }
                pos += n;
                self.s_remaining -= n;
                continue;
            }
            let Ok(Some((tag, len))) = header(&self.sbuf[pos..], DEFAULT_MAX_MESSAGE) else {
                if header(&self.sbuf[pos..], DEFAULT_MAX_MESSAGE).is_err() {
                    tracing::warn!(tenant = %self.tenant.id, "invalid message from the server");
                    return Err(Exit::ServerLost);
                }
                break;
            };
            let whole = avail >= len;
            if matches!(tag, b'Z' | b'S' | b'E' | b'C') && !whole {
                break;
            }
            let swallow = self.progress.swallow_z > 0;
            let p = &mut self.progress;
            match tag {
                b'Z' => {
                    if len != HEADER_LEN + 1 {
                        return Err(Exit::ServerLost);
                    }
                    p.status = self.sbuf[pos + HEADER_LEN];
                    if swallow {
                        p.swallow_z -= 1;
                    } else if p.pending_z == 0 {
                        tracing::warn!(tenant = %self.tenant.id, "unexpected ReadyForQuery: the server connection will not be reused");
                        p.desync = true;
                    } else {
                        p.pending_z -= 1;
                    }
                }
                b'S' => {
                    if let Some((k, v)) = parse_parameter_status(&self.sbuf[pos + HEADER_LEN..pos + len]) {
                        if let Some(server) = self.server.as_mut() {
                            server.conn().set_var(&k, &v);
                        }
                        self.vars.observe(&k, &v);
                    }
                }
                b'E' => {
                    p.copy_in = false;
                    if swallow {
                        let frame = &self.sbuf[pos..pos + len];
                        let e = parse_error_fields(&frame[HEADER_LEN..]);
                        tracing::warn!(tenant = %self.tenant.id, code = %e.code, message = %e.message, "session setup failed");
                        self.setup_error = Some(Bytes::copy_from_slice(frame));
                    }
                }
                b'G' => {
                    p.pending_z = p.pending_z.saturating_sub(p.syncs_since_exec);
                    p.syncs_since_exec = 0;
                    p.copy_in = !p.copy_ended;
                }
                b'C' if !swallow => {
                    let tag = &self.sbuf[pos + HEADER_LEN..pos + len];
                    if changes_session_state(tag) {
                        if let Some(server) = self.server.as_mut() {
                            server.conn().dirty = true;
                        }
                    }
                }
                _ => {}
            }
            let take = len.min(avail);
            if swallow {
                self.write_client(from, pos).await?;
                from = pos + take;
            }
            pos += take;
            self.s_remaining = len - take;
            self.s_discard = swallow;
        }
        self.write_client(from, pos).await?;
        self.sbuf.advance(pos);
        if self.progress.swallow_z == 0 {
            if let Some(e) = self.setup_error.take() {
                return Err(Exit::SetupFailed(e));
            }
            self.setup_trusted = true;
        }
        Ok(())
    }

    async fn write_client(&mut self, from: usize, to: usize) -> Result<(), Exit> {
        if to <= from {
            return Ok(());
        }
        let res = async {
            self.client.write_all(&self.sbuf[from..to]).await?;
            self.client.flush().await
        };
        // A client that stops reading must not keep a forced shutdown waiting.
        tokio::select! {
            r = res => r.map_err(|_| Exit::Client),
            _ = self.force.cancelled() => Err(Exit::Error(shutting_down())),
        }
    }

    /// Ends the session: tells the client why (when pgtenant ends it), and returns the
    /// server connection to the pool only if it is idle; otherwise cancels what runs on it
    /// and closes it.
    async fn finish(mut self, exit: Exit) {
        let tenant = self.tenant.id.clone();
        let notice: Option<BytesMut> = match &exit {
            Exit::Client => None,
            Exit::Error(e) => Some(e.to_bytes()),
            Exit::ServerLost => Some(
                PgError::fatal(
                    SqlState::ConnectionFailure,
                    format!("lost the connection to the database of tenant \"{tenant}\""),
                )
                .to_bytes(),
            ),
            Exit::SetupFailed(frame) => Some(BytesMut::from(&frame[..])),
        };
        if let Some(bytes) = notice {
            let _ = self.client.write_all(&bytes).await;
            let _ = self.client.flush().await;
        }
        let idle = self.server_idle();
        if let Some(mut co) = self.server.take() {
            self.key.set_target(None);
            match exit {
                Exit::ServerLost | Exit::SetupFailed(_) => drop(co),
                _ if idle => match self.mode {
                    PoolMode::Transaction => co.release(),
                    PoolMode::Session => {
                        let reset = &self.proxy.config.pool.reset_query;
                        match tokio::time::timeout(CLEANUP_TIMEOUT, reset_session(&mut co, reset)).await {
                            Ok(Ok(())) => {
                                forget_unreported(co.conn(), &self.pool_params);
                                co.release();
                            }
                            _ => {
                                tracing::info!(%tenant, "reset query failed: closing the server connection")
                            }
                        }
                    }
                },
                _ => {
                    // Mid-transaction or mid-query: the connection's state is unknown to the
                    // next client, so it is closed (the server rolls back); a running query is
                    // cancelled first so it does not run on unobserved.
                    if self.progress.pending_z > 0 || self.progress.copy_in {
                        let c = co.conn_ref();
                        let (addr, pid, secret) = (c.addr.clone(), c.backend_pid, c.backend_secret);
                        let _ =
                            tokio::time::timeout(CLEANUP_TIMEOUT, cancel_backend(&addr, pid, secret)).await;
                    }
                    drop(co);
                }
            }
        }
        let _ = self.client.shutdown().await;
    }
}

/// CommandComplete tags of commands that change session state a later client would see.
fn changes_session_state(tag: &[u8]) -> bool {
    const TAGS: [&[u8]; 6] = [b"SET\0", b"RESET\0", b"DISCARD", b"DEALLOCATE", b"LISTEN\0", b"PREPARE\0"];
    TAGS.iter().any(|t| tag.starts_with(t))
}

fn shutting_down() -> PgError {
    PgError::fatal(SqlState::AdminShutdown, "terminating connection: pgtenant is shutting down")
}

/// Runs the reset query on a connection a session-mode client left, reading until
/// ReadyForQuery and recording the ParameterStatus changes it causes.
async fn reset_session(co: &mut Checkout, sql: &str) -> Result<(), ()> {
    if sql.trim().is_empty() {
        return Ok(());
    }
    let mut out = BytesMut::new();
    frontend::query(&mut out, sql).map_err(|_| ())?;
    let conn = co.conn();
    conn.stream.write_all(&out).await.map_err(|_| ())?;
    let mut changed = Vec::new();
    let mut reader = FrameReader::new(&mut conn.stream, DEFAULT_MAX_MESSAGE);
    let ok = loop {
        match reader.read_frame().await {
            Ok(Some(f)) => match f.tag() {
                b'S' => changed.extend(parse_parameter_status(f.body())),
                b'E' => break false,
                b'Z' => break f.body() == b"I",
                _ => {}
            },
            _ => return Err(()),
        }
    };
    let leftover = reader.buffered();
    drop(reader);
    for (k, v) in changed {
        conn.set_var(&k, &v);
    }
    if ok && leftover == 0 {
        Ok(())
    } else {
        Err(())
    }
}
