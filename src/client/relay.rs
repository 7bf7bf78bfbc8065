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

use super::pipeline::{Action, Kind, Pipeline};
use super::setcmd::{self, SetCmd};
use super::statements::{
    bind_parts, feature_refusal, parse_frame, query_frame, rename, session_feature, sql_prepare_refusal,
    target_parts, Statements,
};
use super::vars::{forget_unreported, ClientVars};
use super::LoggedIn;
use crate::cancel::{CancelTarget, ClientKey};
use crate::catalog::Tenant;
use crate::config::{PoolMode, SessionFeatures};
use crate::pool::{cancel_backend, Checkout, Pool, ServerConn, ServerParams};
use crate::protocol::backend::cstr;
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

/// Where the server connection stands, beyond the reply queue.
#[derive(Debug, Default)]
struct Progress {
    /// ReadyForQuery messages of pgtenant's own setup queries, swallowed.
    swallow_z: usize,
    /// An extended-protocol message went out and its Sync has not.
    extended_open: bool,
    /// A reply arrived that the queue did not expect: pgtenant lost track, so the connection
    /// is never returned to the pool.
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

    /// Client bytes not yet staged for a server; the first `c_scanned` are frames ready to
    /// go (whole, or the streamed part of a large one).
    cbuf: BytesMut,
    c_scanned: usize,
    /// Bytes of the current client frame not yet received.
    c_remaining: usize,
    /// Bytes of the current streamed client frame not yet staged.
    stage_remaining: usize,
    /// Bytes for the server: pgtenant's setup query, then staged client frames.
    out: BytesMut,
    pipeline: Pipeline,
    statements: Statements,
    /// The search_path this client's statements are prepared under (part of their key).
    search_path: String,
    /// Session SETs of the current transaction, tracked once it ends outside a block.
    sets: SetTracking,
    /// The client started a session-level feature (LISTEN …) in transaction mode and keeps
    /// its server connection for the rest of its session.
    pinned: bool,
    /// The client sent Terminate (never forwarded).
    terminated: bool,

    sbuf: BytesMut,
    /// Bytes of the current server frame not yet received, and whether it is swallowed.
    s_remaining: usize,
    s_discard: bool,
    setup_error: Option<Bytes>,

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
        let search_path = vars
            .other
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("search_path"))
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
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
            stage_remaining: 0,
            out: BytesMut::with_capacity(READ_CHUNK),
            pipeline: Pipeline::default(),
            statements: Statements::default(),
            search_path,
            sets: SetTracking::default(),
            pinned: false,
            terminated: false,
            sbuf: BytesMut::with_capacity(READ_CHUNK),
            s_remaining: 0,
            s_discard: false,
            setup_error: None,
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
        if self.server.is_some() && self.mode == PoolMode::Transaction && !self.pinned && self.server_idle() {
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
        // Client bytes wait behind a setup that might fail (settings from the client's
        // startup packet no server has accepted yet): they must not run on a connection
        // whose setup was refused.
        let hold = self.progress.swallow_z > 0 && !self.setup_trusted;
        if self.server.is_some() && self.c_scanned > 0 && !hold {
            self.stage();
        }
        if let Err(exit) = self.flush_answers().await {
            return Some(exit);
        }
        None
    }

    /// Nothing in flight: the server owes nothing and the client sent nothing unanswered.
    fn server_idle(&self) -> bool {
        let p = &self.progress;
        self.pipeline.is_idle()
            && !p.desync
            && p.swallow_z == 0
            && !p.extended_open
            && p.status == b'I'
            && self.s_remaining == 0
            && self.sbuf.is_empty()
            && self.out.is_empty()
            && self.c_scanned == 0
            && self.c_remaining == 0
            && self.stage_remaining == 0
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
            // The setup goes out in the same write as the client's first message.
            if frontend::query(&mut self.out, &sql).is_ok() {
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
                    co.conn().prepared.clear();
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
        // Keep reading while nothing is ready to go: a frame that must arrive whole may be
        // larger than the buffer limit.
        let read_client = !self.terminated && (self.cbuf.len() < MAX_CLIENT_BUFFERED || self.c_scanned == 0);
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
                let out: &[u8] = &self.out;
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
        self.out.advance(n);
    }

    /// Walks the frame headers of newly read client bytes. Messages whose content pgtenant
    /// may rewrite (Parse, Bind, Describe, Close, Query) must arrive whole; other bodies
    /// stream through.
    fn scan_client(&mut self) -> Result<(), PgError> {
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
            let avail = self.cbuf.len() - self.c_scanned;
            if matches!(tag, b'P' | b'B' | b'D' | b'C' | b'Q') && avail < len {
                self.cbuf.reserve(len - avail);
                break;
            }
            match tag {
                b'X' => {
                    // Terminate: never forwarded; the server connection outlives the client.
                    self.terminated = true;
                    self.cbuf.truncate(self.c_scanned);
                    break;
                }
                b'S' => self.progress.extended_open = false,
                b'P' | b'B' | b'D' | b'C' | b'E' => self.progress.extended_open = true,
                _ => {}
            }
            let take = len.min(avail);
            self.c_scanned += take;
            self.c_remaining = len - take;
        }
        Ok(())
    }

    /// Moves scanned client frames into the server-bound buffer, queueing the replies each
    /// earns, and in transaction mode rewriting statement names (see [`Session::stage_frame`]).
    fn stage(&mut self) {
        let Some(server) = self.server.as_mut() else { return };
        let conn = server.conn();
        let mut pos = 0;
        while pos < self.c_scanned {
            if self.stage_remaining > 0 {
                let n = self.stage_remaining.min(self.c_scanned - pos);
                self.out.extend_from_slice(&self.cbuf[pos..pos + n]);
                pos += n;
                self.stage_remaining -= n;
                continue;
            }
            // scan_client checked every header up to c_scanned.
            let Ok(Some((tag, len))) = header(&self.cbuf[pos..self.c_scanned], usize::MAX) else { break };
            let avail = self.c_scanned - pos;
            if avail < len {
                // A large frame streaming through (never one that is rewritten).
                push_kind(&mut self.pipeline, tag);
                self.out.extend_from_slice(&self.cbuf[pos..self.c_scanned]);
                self.stage_remaining = len - avail;
                pos = self.c_scanned;
                continue;
            }
            let frame = &self.cbuf[pos..pos + len];
            let mut st = Stage {
                out: &mut self.out,
                pipeline: &mut self.pipeline,
                statements: &mut self.statements,
                conn,
                search_path: &self.search_path,
                sets: &mut self.sets,
                pinned: &mut self.pinned,
                policy: self.proxy.config.pool.session_features,
            };
            if self.mode == PoolMode::Transaction {
                st.rewrite(tag, frame);
            } else {
                st.forward(tag, frame);
            }
            pos += len;
        }
        self.cbuf.advance(pos);
        self.c_scanned -= pos;
    }

    /// Writes the replies pgtenant gives itself, once they are due.
    async fn flush_answers(&mut self) -> Result<(), Exit> {
        if self.pipeline.answers.is_empty() {
            return Ok(());
        }
        let answers = std::mem::take(&mut self.pipeline.answers);
        let res = async {
            for a in &answers {
                self.client.write_all(a).await?;
            }
            self.client.flush().await
        };
        res.await.map_err(|_| Exit::Client)
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
            let setup = self.progress.swallow_z > 0;
            // Replies to pgtenant's setup query are swallowed whole; everything else is routed
            // by the reply queue.
            let swallow = setup
                || {
                    let mut route = self.pipeline.route(tag);
                    tracing::trace!(conn = self.server.as_ref().map(|s| s.conn_ref().backend_pid), tag = %(tag as char), forward = route.forward, "server message");
                    self.sets.pending.extend(route.completed_set.take());
                    if let Some(server) = self.server.as_mut() {
                        for name in &route.not_prepared {
                            server.conn().prepared.remove(name);
                        }
                    }
                    if route.unexpected && !self.progress.desync {
                        tracing::warn!(tenant = %self.tenant.id, tag = %(tag as char), "unexpected reply: the server connection will not be reused");
                        self.progress.desync = true;
                    }
                    !route.forward
                };
            let p = &mut self.progress;
            match tag {
                b'Z' => {
                    if len != HEADER_LEN + 1 {
                        return Err(Exit::ServerLost);
                    }
                    p.status = self.sbuf[pos + HEADER_LEN];
                    if setup {
                        p.swallow_z -= 1;
                    } else if let Some(server) = self.server.as_mut() {
                        self.sets.settle(p.status, &mut self.vars, server.conn(), &self.tenant.session_vars);
                    }
                }
                b'S' => {
                    if let Some((k, v)) = parse_parameter_status(&self.sbuf[pos + HEADER_LEN..pos + len]) {
                        let before = self.vars.fingerprint();
                        self.vars.observe(&k, &v);
                        if let Some(server) = self.server.as_mut() {
                            let conn = server.conn();
                            conn.set_var(&k, &v);
                            // Still in step with this client if it was before the change.
                            let fp = self.vars.fingerprint();
                            conn.vars_fingerprint = if conn.vars_fingerprint == before { fp } else { 0 };
                        }
                    }
                }
                b'E' if setup => {
                    let frame = &self.sbuf[pos..pos + len];
                    let e = parse_error_fields(&frame[HEADER_LEN..]);
                    tracing::warn!(tenant = %self.tenant.id, code = %e.code, message = %e.message, "session setup failed");
                    self.setup_error = Some(Bytes::copy_from_slice(frame));
                }
                b'E' if self.mode == PoolMode::Transaction => {
                    // DDL changed a prepared statement's result type: the error goes to the
                    // client (as from Postgres) and this connection's statements are prepared
                    // afresh the next time they are used.
                    let e = parse_error_fields(&self.sbuf[pos + HEADER_LEN..pos + len]);
                    if e.code == "0A000" && e.message.contains("cached plan must not change result type") {
                        if let Some(server) = self.server.as_mut() {
                            server.conn().prepared.clear();
                        }
                    }
                }
                b'C' if !setup => {
                    let tag = &self.sbuf[pos + HEADER_LEN..pos + len];
                    if tag.starts_with(b"SET\0") || tag.starts_with(b"RESET\0") {
                        // Tracked or not is decided at the end of the transaction.
                        self.sets.seen += 1;
                    } else if changes_session_state(tag) {
                        if let Some(server) = self.server.as_mut() {
                            server.conn().dirty = true;
                            if tag.starts_with(b"DEALLOCATE") || tag.starts_with(b"DISCARD") {
                                server.conn().prepared.clear();
                            }
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
            if self.s_remaining == 0 && !self.pipeline.answers.is_empty() {
                // pgtenant's own replies go right after the message that completed the one
                // before them.
                self.write_client(from, pos).await?;
                from = pos;
                self.flush_answers().await?;
            }
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
                _ if idle => match (self.mode, self.pinned) {
                    (PoolMode::Transaction, false) => co.release(),
                    (PoolMode::Session, _) | (PoolMode::Transaction, true) => {
                        let reset = &self.proxy.config.pool.reset_query;
                        match tokio::time::timeout(CLEANUP_TIMEOUT, reset_session(&mut co, reset)).await {
                            Ok(Ok(())) => {
                                forget_unreported(co.conn(), &self.pool_params);
                                co.conn().prepared.clear();
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
                    if self.pipeline.pending_ready() > 0 || self.pipeline.copy_in() {
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

/// ParseComplete and CloseComplete, for the messages pgtenant answers itself.
const PARSE_COMPLETE: &[u8] = b"1\0\0\0\x04";
const CLOSE_COMPLETE: &[u8] = b"3\0\0\0\x04";

/// Queues the reply a forwarded message earns.
fn push_kind(pipeline: &mut Pipeline, tag: u8) {
    let kind = match tag {
        b'P' => Kind::Parse,
        b'B' => Kind::Bind,
        b'D' => Kind::Describe,
        b'E' => Kind::Execute,
        b'C' => Kind::Close,
        b'S' => Kind::Sync,
        b'Q' => Kind::Query,
        b'F' => Kind::FunctionCall,
        b'c' | b'f' => Kind::CopyEnd,
        // Flush, CopyData and unknown messages earn no reply of their own.
        _ => return,
    };
    pipeline.push(kind, Action::Forward);
}

/// Session SETs seen in the current transaction (transaction mode).
#[derive(Default)]
struct SetTracking {
    /// Recognised SET/RESET statements that completed.
    pending: Vec<SetCmd>,
    /// SET/RESET CommandCompletes seen (recognised or not).
    seen: usize,
    /// SET text of the last unnamed Parse, and of the statement bound last.
    unnamed: Option<SetCmd>,
    bound: Option<SetCmd>,
}

impl SetTracking {
    /// At a ReadyForQuery: SETs that ended outside a transaction block follow the client;
    /// any other (inside a block, unrecognised, or refused for tracking) leaves the server
    /// connection to be reset before reuse.
    fn settle(
        &mut self,
        status: u8,
        vars: &mut ClientVars,
        conn: &mut ServerConn,
        tenant_vars: &[(String, String)],
    ) {
        if self.seen == 0 && self.pending.is_empty() {
            return;
        }
        let mut untracked = self.seen.saturating_sub(self.pending.len()) > 0;
        if status == b'I' {
            for cmd in self.pending.drain(..) {
                untracked |= !vars.apply(&cmd, conn, tenant_vars);
            }
        } else {
            untracked = true;
            self.pending.clear();
        }
        if untracked {
            conn.dirty = true;
        }
        self.seen = 0;
    }
}

/// Staging one whole client frame onto a server connection.
struct Stage<'a> {
    out: &'a mut BytesMut,
    pipeline: &'a mut Pipeline,
    statements: &'a mut Statements,
    conn: &'a mut ServerConn,
    search_path: &'a str,
    sets: &'a mut SetTracking,
    pinned: &'a mut bool,
    policy: SessionFeatures,
}

impl Stage<'_> {
    fn forward(&mut self, tag: u8, frame: &[u8]) {
        push_kind(self.pipeline, tag);
        self.out.extend_from_slice(frame);
    }

    /// Transaction mode: named statements get pgtenant's content-keyed names; a statement the
    /// server connection lacks is prepared there first (its ParseComplete swallowed); a Parse
    /// of a statement it has, and a Close of a named statement, are answered locally.
    fn rewrite(&mut self, tag: u8, frame: &[u8]) {
        tracing::trace!(conn = self.conn.backend_pid, tag = %(tag as char), len = frame.len(), "client message");
        match tag {
            b'P' => {
                // The extended protocol can carry what a simple query can: the same checks.
                let statement =
                    cstr(&frame[HEADER_LEN..]).and_then(|(name, rest)| Some((name, cstr(rest)?.0)));
                if let Some((name, sql)) = statement {
                    if let Some(refusal) = self.refusal_for(sql) {
                        // Prepared in its place: the refusal raises when the client executes it.
                        let replacement = parse_frame(name, &refusal);
                        return self.rewrite(tag, &replacement);
                    }
                }
                let Some(prepared) = self.statements.parse(frame, self.search_path) else {
                    // An unnamed statement: remember whether it is a SET.
                    self.sets.unnamed = cstr(&frame[HEADER_LEN..])
                        .and_then(|(_, rest)| cstr(rest))
                        .and_then(|(query, _)| setcmd::parse(query));
                    return self.forward(tag, frame);
                };
                if self.conn.prepared.touch(&prepared.server_name) {
                    self.pipeline.push(Kind::Parse, Action::Answer(Bytes::from_static(PARSE_COMPLETE)));
                } else {
                    self.evict_for(prepared.server_name.clone());
                    self.out.extend_from_slice(&prepared.parse);
                    self.pipeline.push_statement(
                        Kind::Parse,
                        Action::Forward,
                        Some(prepared.server_name.clone()),
                    );
                }
            }
            b'B' => {
                let Some((portal, stmt, rest)) = bind_parts(frame) else { return self.forward(tag, frame) };
                self.sets.bound = if stmt.is_empty() { self.sets.unnamed.clone() } else { None };
                let Some(prepared) = self.statements.get(stmt).cloned() else {
                    return self.forward(tag, frame);
                };
                self.sets.bound.clone_from(&prepared.set);
                self.ensure(&prepared.server_name, &prepared.parse);
                let mut prefix = portal.to_vec();
                prefix.push(0);
                self.out.extend_from_slice(&rename(b'B', &prefix, prepared.server_name.as_bytes(), rest));
                self.pipeline.push(Kind::Bind, Action::Forward);
            }
            b'D' | b'C' => {
                let Some((b'S', name)) = target_parts(frame) else { return self.forward(tag, frame) };
                let Some(prepared) = self.statements.get(name).cloned() else {
                    return self.forward(tag, frame);
                };
                if tag == b'C' {
                    // The server keeps the statement for other clients (and this one, should
                    // it prepare the same again); only the client's name goes.
                    self.statements.close(name);
                    self.pipeline.push(Kind::Close, Action::Answer(Bytes::from_static(CLOSE_COMPLETE)));
                    return;
                }
                self.ensure(&prepared.server_name, &prepared.parse);
                self.out.extend_from_slice(&rename(b'D', b"S", prepared.server_name.as_bytes(), &[]));
                self.pipeline.push(Kind::Describe, Action::Forward);
            }
            b'Q' => {
                let refused = self.refusal_for(&frame[HEADER_LEN..]).and_then(|sql| query_frame(&sql));
                match refused {
                    Some(query) => {
                        self.out.extend_from_slice(&query);
                        self.pipeline.push(Kind::Query, Action::Forward);
                    }
                    None => {
                        let set = frame.get(HEADER_LEN..frame.len() - 1).and_then(setcmd::parse);
                        self.out.extend_from_slice(frame);
                        self.pipeline.push_set(Kind::Query, set);
                    }
                }
            }
            b'E' => {
                self.out.extend_from_slice(frame);
                self.pipeline.push_set(Kind::Execute, self.sets.bound.take());
            }
            _ => self.forward(tag, frame),
        }
    }

    /// What runs instead of `sql` in transaction mode, if it cannot run as it is: SQL-level
    /// prepared statements always, session-level features under the `refuse` policy (under
    /// `pin`, the client keeps its server connection instead).
    fn refusal_for(&mut self, sql: &[u8]) -> Option<String> {
        if let Some(refusal) = sql_prepare_refusal(sql) {
            return Some(refusal);
        }
        let feature = session_feature(sql)?;
        match self.policy {
            SessionFeatures::Refuse => Some(feature_refusal(feature)),
            SessionFeatures::Pin => {
                *self.pinned = true;
                None
            }
        }
    }

    /// Prepares a statement on this connection if it lacks it, swallowing the reply.
    fn ensure(&mut self, server_name: &Arc<str>, parse: &[u8]) {
        if self.conn.prepared.touch(server_name) {
            return;
        }
        self.evict_for(server_name.clone());
        self.out.extend_from_slice(parse);
        self.pipeline.push_statement(Kind::Parse, Action::Swallow, Some(server_name.clone()));
    }

    /// Records a statement about to be prepared, closing the least recently used one on the
    /// server when the connection holds too many. The statement itself is closed first (a
    /// no-op when absent): after a "cached plan must not change result type" error pgtenant
    /// forgets what a connection holds, and the old statement must not block the new Parse.
    fn evict_for(&mut self, server_name: Arc<str>) {
        self.out.extend_from_slice(&rename(b'C', b"S", server_name.as_bytes(), &[]));
        self.pipeline.push(Kind::Close, Action::Swallow);
        if let Some(old) = self.conn.prepared.insert(server_name) {
            self.out.extend_from_slice(&rename(b'C', b"S", old.as_bytes(), &[]));
            self.pipeline.push(Kind::Close, Action::Swallow);
        }
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
