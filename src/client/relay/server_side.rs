//! The server-to-client half of the relay: server frames forwarded (streamed when large),
//! routed by the reply model, pgtenant's own replies swallowed or replaced, the few messages
//! that decide release read on the way, and writes to the client bounded in time.

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::*;
use crate::client::pipeline::{Rare, COPY_FAIL_CODE};
use crate::client::statements::own_refusal;
use crate::client::vars::fingerprinted;
use crate::metrics::ErrorSource;
use crate::protocol::backend::tag as be;
use crate::protocol::backend::{parse_error_fields, parse_parameter_status};
use crate::protocol::frame::{header, DEFAULT_MAX_MESSAGE, HEADER_LEN};
use crate::protocol::SqlState;

impl<S: AsyncRead + AsyncWrite + Unpin + Send + PlainTcp> Session<S> {
    /// Forwards whole and streaming server frames to the client, swallowing the replies to
    /// pgtenant's own queries and noting what decides release.
    pub(super) async fn pump_server(&mut self) -> Result<(), Exit> {
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
            let (tag, len) = match header(&self.sbuf[pos..], DEFAULT_MAX_MESSAGE) {
                Ok(Some(h)) => h,
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!(tenant = %self.tenant.id, "invalid message from the server");
                    self.write_client(from, pos).await?;
                    self.sbuf.clear();
                    return Err(Exit::ServerLost);
                }
            };
            let whole = avail >= len;
            let needed = if tag == be::ERROR_RESPONSE { len.min(ERROR_PREFIX) } else { len };
            if matches!(
                tag,
                be::READY_FOR_QUERY | be::PARAMETER_STATUS | be::ERROR_RESPONSE | be::COMMAND_COMPLETE
            ) && avail < needed
            {
                break;
            }
            let seen = pos + len.min(avail);
            // Most replies: the client's, none that pgtenant reads (ReadyForQuery,
            // ParameterStatus, ErrorResponse and CommandComplete are read below), while nothing
            // of pgtenant's own is owed (no setup, reset or resync): the reply model alone
            // decides, as it would below.
            if !matches!(
                tag,
                be::READY_FOR_QUERY | be::PARAMETER_STATUS | be::ERROR_RESPONSE | be::COMMAND_COMPLETE
            ) && self.resync.is_none()
                && !self.resync_swallowing
                && self.progress.reset == ResetPhase::Done
            {
                let (swallow, replace) = self.route_reply(tag, "");
                let take = len.min(avail);
                if swallow {
                    self.write_client(from, pos).await?;
                    if let Some(bytes) = replace {
                        self.write_bytes(&bytes).await?;
                    }
                    from = pos + take;
                }
                pos += take;
                self.s_remaining = len - take;
                self.s_discard = swallow;
                continue;
            }
            if let Some(token) = self.resync.as_deref() {
                if !self.resync_swallowing && tag == be::ROW_DESCRIPTION {
                    if !whole {
                        break;
                    }
                    let frame = &self.sbuf[pos..pos + len];
                    self.resync_swallowing = frame.windows(token.len()).any(|w| w == token.as_bytes());
                }
            }
            if self.resync_swallowing {
                if tag == be::READY_FOR_QUERY && !whole {
                    break;
                }
                let take = len.min(avail);
                self.write_client(from, pos).await?;
                from = pos + take;
                if tag == be::READY_FOR_QUERY {
                    // The marker's ReadyForQuery: everything the client sent is answered.
                    if len != HEADER_LEN + 1 {
                        return Err(Exit::ServerLost);
                    }
                    self.progress.status = self.sbuf[pos + HEADER_LEN];
                    self.resync = None;
                    self.resync_swallowing = false;
                    self.pipeline = Pipeline::default();
                    self.progress.desync = false;
                    self.progress.extended_open = false;
                    if let Some(server) = self.server.as_mut() {
                        // What was prepared meanwhile is unknown: prepared afresh when used,
                        // and reset before anyone else gets the connection.
                        server.conn().prepared_mut().clear();
                        server.conn().mark_dirty();
                    }
                    tracing::debug!(tenant = %self.tenant.id, "server connection resynchronised");
                }
                pos += take;
                self.s_remaining = len - take;
                self.s_discard = true;
                continue;
            }
            // Replies to pgtenant's own queries (the reset, the setup) are swallowed.
            let setup = self.progress.reset != ResetPhase::Done;
            if matches!(self.progress.reset, ResetPhase::Replies(..)) {
                match self.check_reset_reply(tag, pos, len, whole) {
                    Ok(false) => {}
                    // Handed to another connection: nothing more of this one is read (and
                    // nothing of it went to the client: a handoff's replies are swallowed).
                    Ok(true) => return Ok(()),
                    Err(failed) => {
                        self.write_client(from, pos).await?;
                        return Err(failed);
                    }
                }
            }
            let error =
                (tag == be::ERROR_RESPONSE).then(|| parse_error_fields(&self.sbuf[pos + HEADER_LEN..seen]));
            if let Some(e) = &error {
                if matches!(e.severity.as_str(), "FATAL" | "PANIC") {
                    self.progress.fatal = true;
                }
            }
            // Replies to pgtenant's reset and setup are swallowed whole; everything else is routed
            // by the reply model.
            let mut replace = None;
            let mut swallow = setup || {
                let code = match &error {
                    Some(e)
                        if e.code == SqlState::QueryCanceled.code()
                            && e.message.starts_with("COPY from stdin failed") =>
                    {
                        COPY_FAIL_CODE
                    }
                    Some(e) => e.code.as_str(),
                    None => "",
                };
                let (swallow, bytes) = self.route_reply(tag, code);
                replace = bytes;
                swallow
            };
            if let (false, true, Some(e)) = (swallow, whole, &error) {
                // pgtenant's refusals are raised by a DO block (so they come where the refused
                // statement's reply would): sent as pgtenant's own error, without its CONTEXT.
                if let Some(own) = own_refusal(&e.code, &e.message) {
                    self.meter.error(ErrorSource::Proxy, own.state.code());
                    replace = Some(Bytes::from(own.to_bytes()));
                    swallow = true;
                } else {
                    self.meter.error(ErrorSource::Server, &e.code);
                }
            }
            let p = &mut self.progress;
            match tag {
                be::READY_FOR_QUERY => {
                    if len != HEADER_LEN + 1 {
                        return Err(Exit::ServerLost);
                    }
                    p.status = self.sbuf[pos + HEADER_LEN];
                    // query_timeout counts from the last ReadyForQuery.
                    if let Some(t) = self.timed.as_deref_mut() {
                        t.busy_since = None;
                    }
                    if !setup {
                        // Only once what it waits for is answered: a DEALLOCATE or DISCARD
                        // pipelined behind this one may still be running, or wait in the
                        // server's output for a Sync or Flush (in a Parse of the client's batch).
                        self.pipeline.settle_barrier(&mut self.statements);
                        self.meter.ready(p.status);
                    }
                    if setup {
                        // The reset's guard query answered: DISCARD ALL's replies are next.
                        if let ResetPhase::Guard(parts) = p.reset {
                            p.reset = ResetPhase::Replies(first_due(0, parts), parts);
                        }
                    } else if let Some(server) = self.server.as_mut() {
                        self.sets.settle(p.status, &mut self.vars, server.conn(), &self.tenant.session_vars);
                    }
                }
                be::PARAMETER_STATUS => {
                    if let Some((k, v)) = parse_parameter_status(&self.sbuf[pos + HEADER_LEN..pos + len]) {
                        let before = self.vars.fingerprint();
                        self.vars.observe(&k, &v);
                        if let Some(server) = self.server.as_mut() {
                            let conn = server.conn();
                            // A reportable setting the fingerprint does not cover, changed
                            // (default_transaction_read_only by SET or set_config …): the
                            // connection matches no client's fingerprint until compared.
                            let uncovered = !fingerprinted(&k) && conn.var(&k) != Some(v.as_str());
                            conn.set_var(&k, &v);
                            // Still in step with this client if it was before the change.
                            let fp = self.vars.fingerprint();
                            let in_step = conn.vars_fingerprint() == before && !uncovered;
                            conn.set_vars_fingerprint(if in_step { fp } else { 0 });
                        }
                    }
                }
                be::ERROR_RESPONSE if matches!(p.reset, ResetPhase::Guard(_)) => {
                    // The guard only keeps the previous session's timeouts from cancelling
                    // DISCARD ALL, which runs anyway and whose own reply decides.
                    if let Some(e) = &error {
                        tracing::info!(tenant = %self.tenant.id, code = %e.code, message = %e.message, "reset guard failed");
                    }
                }
                be::ERROR_RESPONSE if self.mode == PoolMode::Transaction => {
                    if !setup && !self.sets.pending.is_empty() {
                        self.sets.undone();
                    }
                    // DDL changed a prepared statement's result type: the error goes to the
                    // client (as from Postgres) and this connection's statements are prepared
                    // afresh the next time they are used.
                    if let Some(e) = &error {
                        if e.code == SqlState::FeatureNotSupported.code()
                            && e.message.contains("cached plan must not change result type")
                        {
                            if let Some(server) = self.server.as_mut() {
                                server.conn().prepared_mut().clear();
                            }
                        }
                    }
                }
                be::COMMAND_COMPLETE if !setup => {
                    let tag = &self.sbuf[pos + HEADER_LEN..pos + len];
                    if !self.sets.pending.is_empty() {
                        self.sets.completed(tag);
                    }
                    if tag.starts_with(b"SET\0") || tag.starts_with(b"RESET\0") {
                        // Tracked or not is decided at the end of the transaction.
                        self.sets.seen = self.sets.seen.saturating_add(1);
                    } else if changes_session_state(tag) {
                        if let Some(server) = self.server.as_mut() {
                            server.conn().mark_dirty();
                            if tag.starts_with(b"DEALLOCATE") || tag.starts_with(b"DISCARD") {
                                server.conn().prepared_mut().clear();
                            }
                        }
                        if tag == b"DEALLOCATE ALL\0" || tag == b"DISCARD ALL\0" {
                            // The client's statements went with them, as on PostgreSQL.
                            self.statements.clear(tag == b"DISCARD ALL\0");
                        }
                    }
                }
                _ => {}
            }
            let take = len.min(avail);
            if swallow {
                self.write_client(from, pos).await?;
                if let Some(bytes) = replace.take() {
                    self.write_bytes(&bytes).await?;
                }
                from = pos + take;
            }
            pos += take;
            self.s_remaining = len - take;
            self.s_discard = swallow;
        }
        self.write_client(from, pos).await?;
        if pos == self.sbuf.len() {
            // All of it (the common case): the buffer starts over where it is, its room kept.
            self.sbuf.clear();
        } else {
            self.sbuf.advance(pos);
        }
        if self.sbuf.capacity() > 4 * READ_CHUNK && self.sbuf.len() < READ_CHUNK {
            // A large message passed: the buffer goes back to its usual size.
            self.sbuf = BytesMut::from(&self.sbuf[..]);
        }
        Ok(())
    }

    /// Routes one server reply by the reply model, and settles what it completed: whether
    /// the client does not get it (swallowed), and what it gets instead.
    fn route_reply(&mut self, tag: u8, code: &str) -> (bool, Option<Bytes>) {
        let route = self.pipeline.route(tag, code);
        match tag {
            be::COPY_IN_RESPONSE => self.progress.copy_in = true,
            be::READY_FOR_QUERY => self.progress.copy_in = false,
            _ => {}
        }
        tracing::trace!(conn = self.server.as_ref().map(|s| s.conn_ref().backend_pid()), tag = %(tag as char), forward = route.forward, "server message");
        if route.unnamed_parsed {
            // The server's unnamed statement is now this client's latest.
            if let Some(server) = self.server.as_mut() {
                let more = self.statements.unnamed_overlapped() && self.pipeline.unnamed_pending();
                let parse = self.statements.unnamed_parsed(more);
                server.conn().set_unnamed_owner(self.id, parse);
            }
        }
        if self.pipeline.has_effects() {
            let (undo, done) = self.pipeline.take_effects();
            self.apply_effects(undo, done);
        }
        if (route.unexpected || self.pipeline.uncertain()) && !self.progress.desync {
            tracing::warn!(tenant = %self.tenant.id, tag = %(tag as char), "lost track of the server's replies: the server connection stays with this client and will not be reused");
            self.progress.desync = true;
        }
        let mut replace = None;
        if let Some(rare) = route.rare {
            let Rare { replace: bytes, completed_set } = *rare;
            if let Some(set) = completed_set {
                self.sets.push(*set);
            }
            replace = bytes;
        }
        (!route.forward, replace)
    }

    /// Checks one server message that arrives while a handoff's replies are due (DISCARD
    /// ALL's, the setup's): the next of `HANDOFF_REPLIES` (and the right CommandComplete tag)
    /// moves it on, and the last confirms it (the client's held messages may go);
    /// asynchronous messages pass. Anything else means the reset or setup failed, and the
    /// connection is closed. After an error (the server answered it in place of one of
    /// pgtenant's statements and skips the client's messages sent behind them) the client's
    /// messages are handed to another connection when the handoff kept them (`Ok(true)`:
    /// see `retry`); otherwise the session ends with the server's error (or pgtenant's).
    fn check_reset_reply(&mut self, tag: u8, pos: usize, len: usize, whole: bool) -> Result<bool, Exit> {
        let ResetPhase::Replies(next, parts) = self.progress.reset else { return Ok(false) };
        let checked = matches!(tag, be::COMMAND_COMPLETE | be::READY_FOR_QUERY);
        let body = (checked && whole).then(|| &self.sbuf[pos + HEADER_LEN..pos + len]);
        match reset_step(next, parts, tag, body) {
            ResetStep::Pass => return Ok(false),
            ResetStep::Next(n) => {
                self.progress.reset = ResetPhase::Replies(n, parts);
                return Ok(false);
            }
            ResetStep::Done => {
                self.progress.reset = ResetPhase::Done;
                self.progress.reset_synced = false;
                // What was kept for a retry is not needed any more.
                self.progress.retry = None;
                // The client's cancels may reach the backend now.
                self.attach_key();
                return Ok(false);
            }
            ResetStep::Failed => self.proxy.metrics.global().handoff_failed(),
        }
        if tag == be::ERROR_RESPONSE {
            if whole {
                let fields = parse_error_fields(&self.sbuf[pos + HEADER_LEN..pos + len]);
                tracing::warn!(tenant = %self.tenant.id, code = %fields.code, message = %fields.message, "session reset or setup failed: closing the server connection");
            }
            if crate::pool::handoff::skips_the_client(next) && self.retry_handoff() {
                return Ok(true);
            }
        }
        let error = if tag == be::ERROR_RESPONSE && whole {
            Bytes::copy_from_slice(&self.sbuf[pos..pos + len])
        } else {
            tracing::warn!(tenant = %self.tenant.id, tag = %(tag as char), "unexpected reply to the session reset or setup: closing the server connection");
            Bytes::from(PgError::session_setup_failed().to_bytes())
        };
        Err(Exit::SetupFailed(error))
    }

    async fn write_bytes(&mut self, bytes: &[u8]) -> Result<(), Exit> {
        self.meter.bytes_out(bytes.len());
        let limit = self.client_write();
        let flush = !self.progress.client_plain;
        if write_bounded(&mut self.client, bytes, flush, limit, &self.proxy.shutdown.force, &self.tenant.id)
            .await?
        {
            self.meter.next_turn();
        }
        Ok(())
    }

    pub(super) async fn write_client(&mut self, from: usize, to: usize) -> Result<(), Exit> {
        if to <= from {
            return Ok(());
        }
        self.meter.bytes_out(to - from);
        let limit = self.client_write();
        let bytes = &self.sbuf[from..to];
        let flush = !self.progress.client_plain;
        if write_bounded(&mut self.client, bytes, flush, limit, &self.proxy.shutdown.force, &self.tenant.id)
            .await?
        {
            // The write waited for the client: what follows is timed afresh.
            self.meter.next_turn();
        }
        Ok(())
    }
}

/// Writes `bytes` to the client. What the socket takes at once is written without a timer;
/// only a write that would block waits, under `client_write_timeout` and the force signal:
/// a client that stops reading must not keep a forced shutdown waiting, nor hold its server
/// connection beyond the timeout. `Ok(true)` when the write waited. A plain TCP socket
/// (`flush` false) has nothing to flush: its flush is skipped.
async fn write_bounded<S: AsyncWrite + Unpin + PlainTcp>(
    client: &mut S,
    mut bytes: &[u8],
    flush: bool,
    limit: Option<Duration>,
    force: &tokio_util::sync::CancellationToken,
    tenant: &crate::model::TenantId,
) -> Result<bool, Exit> {
    use futures_util::FutureExt;
    while !bytes.is_empty() {
        match plain::write_now(client, bytes) {
            Some(Ok(0) | Err(_)) => return Err(Exit::Client),
            Some(Ok(n)) => bytes = &bytes[n..],
            None => break,
        }
    }
    if bytes.is_empty() {
        if !flush {
            return Ok(false);
        }
        if let Some(r) = client.flush().now_or_never() {
            return r.map(|()| false).map_err(|_| Exit::Client);
        }
    }
    // Boxed: its state (a timer and the write) is needed only while a write waits.
    Box::pin(write_blocked(client, bytes, limit, force, tenant)).await.map(|()| true)
}

/// The rest of [`write_bounded`], once the client's socket is full.
async fn write_blocked<S: AsyncWrite + Unpin>(
    client: &mut S,
    bytes: &[u8],
    limit: Option<Duration>,
    force: &tokio_util::sync::CancellationToken,
    tenant: &crate::model::TenantId,
) -> Result<(), Exit> {
    let res = async {
        client.write_all(bytes).await?;
        client.flush().await
    };
    let limit = limit.unwrap_or(Duration::from_secs(86_400 * 365));
    tokio::select! {
        r = tokio::time::timeout(limit, res) => match r {
            Ok(r) => r.map_err(|_| Exit::Client),
            Err(_) => {
                tracing::info!(%tenant, "client stopped reading: disconnected at client_write_timeout");
                Err(Exit::Client)
            }
        },
        _ = force.cancelled() => Err(Exit::Error(shutting_down())),
    }
}
