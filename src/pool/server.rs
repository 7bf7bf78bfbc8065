//! One upstream server connection: opening it, authenticating (SCRAM-SHA-256, and trust,
//! md5 or cleartext only where the upstream's `require_auth` allows them), and what it
//! remembers of its session.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use postgres_protocol::authentication::{md5_hash, sasl};
use tokio::io::AsyncWriteExt;
use tokio::sync::OwnedSemaphorePermit;

use super::stream::ServerStream;
use crate::auth::scram_client::{ClientExchange, ClientScramError};
use crate::model::{RequireAuth, TenantId, UpstreamAddr};
use crate::protocol::backend::tag as be;
use crate::protocol::backend::{auth, cstr, parse_error_fields, parse_parameter_status, ServerNotice};
use crate::protocol::error::{ClientFacing, ErrorKind};
use crate::protocol::frame::FrameReader;
use crate::protocol::{frontend, FrameError, SqlState};

/// The largest message accepted from an upstream during login.
const MAX_LOGIN_MESSAGE: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: UpstreamAddr, source: std::io::Error },
    #[error("upstream login timed out")]
    Timeout,
    #[error("upstream refused the login: {} {}", .0.code, .0.message)]
    Refused(ServerNotice),
    #[error("upstream asks for a password and none is configured")]
    NoPassword,
    #[error("upstream asks for an unsupported authentication method ({0})")]
    UnsupportedAuth(String),
    /// The server asked for (or skipped to) a method the upstream's `require_auth` refuses.
    #[error("upstream asks for {0} authentication, which its require_auth ({1}) does not allow")]
    NotAllowed(&'static str, RequireAuth),
    #[error("upstream SCRAM exchange: {0}")]
    Scram(#[from] ClientScramError),
    #[error("upstream protocol error: {0}")]
    Protocol(String),
    #[error("upstream connection: {0}")]
    Frame(#[from] FrameError),
    #[error("upstream i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// What a client is told is decided by the pool's [`super::CheckoutError`], which names the
/// tenant; this says whose fault it is and whether a retry can help.
impl ClientFacing for UpstreamError {
    fn sqlstate(&self) -> SqlState {
        SqlState::ConnectionFailure
    }

    fn client_text(&self) -> Cow<'_, str> {
        Cow::Borrowed("cannot reach the upstream database")
    }

    fn kind(&self) -> ErrorKind {
        match self {
            // The upstream's settings in pgtenant's catalog do not fit the server.
            UpstreamError::NoPassword | UpstreamError::NotAllowed(..) => ErrorKind::Proxy,
            _ => ErrorKind::Server,
        }
    }

    fn retryable(&self) -> bool {
        matches!(self, UpstreamError::Connect { .. } | UpstreamError::Timeout | UpstreamError::Io(_))
    }

    fn hides_cause(&self) -> bool {
        true
    }
}

/// The login pgtenant uses upstream.
#[derive(Clone, Debug)]
pub struct Login<'a> {
    pub database: &'a str,
    pub role: &'a str,
    pub password: Option<&'a str>,
    /// The authentication methods the server may use (see [`RequireAuth`]).
    pub require_auth: RequireAuth,
    /// The most PBKDF2 iterations a server may ask for in SCRAM.
    pub max_iterations: u32,
}

/// An authenticated upstream connection. Its session state is private to the pool: clients
/// read it and record what they did through the methods below, and the rules that decide
/// reuse and reset are in [`super::session`].
#[derive(Debug)]
pub struct ServerConn {
    pub(super) stream: ServerStream,
    pub(super) addr: UpstreamAddr,
    /// The upstream backend's cancel key.
    pub(super) backend_pid: i32,
    pub(super) backend_secret: i32,
    /// Session variables known to be in effect: the server's ParameterStatus reports, kept
    /// current, plus the settings pgtenant applied for clients.
    pub(super) vars: Vec<(String, String)>,
    pub(super) created: Instant,
    pub(super) idle_since: Instant,
    /// The pool's `max_lifetime` (nanoseconds) that `expires` was worked out for, as of the
    /// connection's last checkout: its release checks `expires` without a read of the pool's
    /// settings.
    pub(super) lifetime_ns: u64,
    /// When the connection reaches `lifetime_ns` (None: beyond what an `Instant` holds):
    /// worked out once per setting, so a checkout and a release compare two instants rather
    /// than subtract them.
    pub(super) expires: Option<Instant>,
    /// A client changed session state (SET, LISTEN, PREPARE …): reset before reuse.
    pub(super) dirty: bool,
    /// Statements pgtenant prepared on this connection (transaction mode).
    pub(super) prepared: PreparedSet,
    /// Fingerprint of the client settings `vars` is known to match (0: unknown), so a
    /// checkout by a client with the same settings skips comparing them one by one.
    pub(super) vars_fingerprint: u64,
    /// The tenant whose session setup this connection carries (shared login roles).
    pub(super) tenant: Option<TenantId>,
    /// The client session that used this connection last (0: none yet).
    pub(super) last_client: u64,
    /// Whose unnamed statement the server holds, as far as it may be used: the client session
    /// and the number of that client's unnamed Parses completed so far (its latest one), set
    /// at the ParseComplete of a client's unnamed Parse (transaction mode). (0, 0): nobody's.
    pub(super) unnamed: (u64, u32),
    /// A client ran something that may change settings without a SET tag (set_config, a DO
    /// block, CALL …): the tenant's isolation setting is applied afresh for the next client.
    pub(super) settings_suspect: bool,
    /// Likewise, until the next cross-tenant reset: a timeout set that way stays in force for
    /// every later client of the tenant, whose setups run under it (see
    /// `handoff::bounds_setup`).
    pub(super) settings_unseen: bool,
    /// A client ran something that may have declared a cursor (its text names DECLARE, or it
    /// ran a DO block or CALL): a WITH HOLD one would outlive the transaction, so CLOSE ALL
    /// runs before reuse (see `pool::session::retire`).
    pub(super) cursors: bool,
    /// The generation of the pool login it was opened with: one of an older generation is
    /// closed at release instead of returned (see `pool::Idle`).
    pub(super) generation: u64,
    /// Count against the upstream server's and the global connection caps while this
    /// connection lives.
    pub(super) _permits: Vec<OwnedSemaphorePermit>,
    /// Its entry in the pool's listing (SHOW SERVERS) while it lives.
    pub(super) listed: Option<super::listing::Listed>,
    /// Whether `vars` may name one of [`IDLE_SETTINGS`]: set wherever a
    /// setting enters `vars` by that name (never cleared by a filter: an over-estimate), so a
    /// release looks them up only when one was ever set.
    pub(super) idle_setting: bool,
}

/// Settings that act on a server connection while it sits idle in the pool, where they are
/// no client's: `idle_session_timeout` would make the backend end itself there (and the next
/// client would get a dead connection). A client's value still follows it (applied at
/// checkout like any SET); the connection goes back to the pool only without it (see
/// `pool::session::retire`).
pub const IDLE_SETTINGS: [&str; 1] = ["idle_session_timeout"];

/// Whether `name` is one of [`IDLE_SETTINGS`].
pub(super) fn is_idle_setting(name: &str) -> bool {
    IDLE_SETTINGS.iter().any(|s| s.eq_ignore_ascii_case(name))
}

/// Whether `vars` name one of [`IDLE_SETTINGS`].
pub(super) fn names_idle_setting(vars: &[(String, String)]) -> bool {
    vars.iter().any(|(k, _)| is_idle_setting(k))
}

impl ServerConn {
    pub async fn connect(addr: &UpstreamAddr, login: &Login<'_>) -> Result<ServerConn, UpstreamError> {
        let stream =
            addr.connect().await.map_err(|source| UpstreamError::Connect { addr: addr.clone(), source })?;
        let mut reader = FrameReader::new(stream, MAX_LOGIN_MESSAGE);
        let mut out = BytesMut::with_capacity(256);
        frontend::startup(&mut out, &[("user", login.role), ("database", login.database)])?;
        reader.get_mut().write_all(&out).await?;

        let mut scram: Option<ClientExchange> = None;
        // The method the server asked for (`None`: it asked for nothing before
        // AuthenticationOk).
        let mut asked: Option<&'static str> = None;
        let allowed = login.require_auth;
        let refuse = |method: &'static str| UpstreamError::NotAllowed(method, allowed);
        let mut vars = Vec::new();
        let (mut pid, mut secret) = (0, 0);
        loop {
            let Some(frame) = reader.read_frame().await? else {
                return Err(UpstreamError::Protocol("connection closed during login".into()));
            };
            let body = frame.body();
            out.clear();
            match frame.tag() {
                be::AUTHENTICATION => {
                    let (code, data) = split_i32(body)?;
                    match code {
                        auth::OK => match (asked, &scram) {
                            // SCRAM is complete only with the server's verified final
                            // message: an AuthenticationOk without it proves nothing.
                            (Some(_), Some(s)) if !s.verified() => {
                                return Err(UpstreamError::Protocol(
                                    "AuthenticationOk before a verified SCRAM final message".into(),
                                ))
                            }
                            (None, _) if !allowed.none => return Err(refuse("no")),
                            _ => {}
                        },
                        auth::CLEARTEXT_PASSWORD | auth::MD5_PASSWORD | auth::SASL if asked.is_some() => {
                            return Err(UpstreamError::Protocol("a second authentication request".into()))
                        }
                        auth::CLEARTEXT_PASSWORD => {
                            if !allowed.password {
                                return Err(refuse("cleartext password"));
                            }
                            asked = Some("password");
                            frontend::password(&mut out, password(login)?.as_bytes())?
                        }
                        auth::MD5_PASSWORD => {
                            if !allowed.md5 {
                                return Err(refuse("md5"));
                            }
                            asked = Some("md5");
                            let salt: [u8; 4] = data
                                .get(..4)
                                .and_then(|s| s.try_into().ok())
                                .ok_or_else(|| UpstreamError::Protocol("short md5 salt".into()))?;
                            let hash = md5_hash(login.role.as_bytes(), password(login)?.as_bytes(), salt);
                            frontend::password(&mut out, hash.as_bytes())?;
                        }
                        auth::SASL => {
                            if !allowed.scram_sha_256 {
                                return Err(refuse("SCRAM-SHA-256"));
                            }
                            if !sasl_mechanisms(data).any(|m| m == sasl::SCRAM_SHA_256.as_bytes()) {
                                return Err(UpstreamError::UnsupportedAuth(
                                    "SASL without SCRAM-SHA-256".into(),
                                ));
                            }
                            asked = Some("SCRAM-SHA-256");
                            let (s, first) = ClientExchange::new(
                                password(login)?,
                                (addr.to_string(), login.role.to_owned()),
                            );
                            frontend::sasl_initial(&mut out, sasl::SCRAM_SHA_256, &first)?;
                            scram = Some(s);
                        }
                        auth::SASL_CONTINUE => {
                            let s = scram.as_mut().ok_or(ClientScramError::OutOfOrder)?;
                            let last = s.update(data, login.max_iterations).await?;
                            frontend::sasl_response(&mut out, &last)?;
                        }
                        auth::SASL_FINAL => {
                            let s = scram.as_mut().ok_or(ClientScramError::OutOfOrder)?;
                            s.finish(data)?;
                        }
                        other => return Err(UpstreamError::UnsupportedAuth(format!("code {other}"))),
                    }
                    if !out.is_empty() {
                        reader.get_mut().write_all(&out).await?;
                    }
                }
                be::PARAMETER_STATUS => {
                    if let Some(kv) = parse_parameter_status(body) {
                        vars.push(kv);
                    }
                }
                be::BACKEND_KEY_DATA => {
                    let (p, rest) = split_i32(body)?;
                    let (s, _) = split_i32(rest)?;
                    (pid, secret) = (p, s);
                }
                be::ERROR_RESPONSE => return Err(UpstreamError::Refused(parse_error_fields(body))),
                be::NOTICE_RESPONSE | be::NEGOTIATE_PROTOCOL_VERSION => {}
                be::READY_FOR_QUERY => break,
                t => {
                    return Err(UpstreamError::Protocol(format!(
                        "unexpected message {:?} during login",
                        t as char
                    )))
                }
            }
        }
        let (stream, rest) = reader.into_parts();
        if !rest.is_empty() {
            return Err(UpstreamError::Protocol("data after ReadyForQuery during login".into()));
        }
        let now = Instant::now();
        let idle_setting = names_idle_setting(&vars);
        Ok(ServerConn {
            idle_setting,
            stream,
            addr: addr.clone(),
            backend_pid: pid,
            backend_secret: secret,
            vars,
            created: now,
            idle_since: now,
            lifetime_ns: u64::MAX,
            expires: None,
            dirty: false,
            prepared: PreparedSet::default(),
            vars_fingerprint: 0,
            last_client: 0,
            unnamed: (0, 0),
            settings_suspect: false,
            settings_unseen: false,
            cursors: false,
            tenant: None,
            generation: 0,
            _permits: Vec::new(),
            listed: None,
        })
    }

    /// An idle connection must have nothing to say: unread bytes (a notice, a FATAL from
    /// `pg_terminate_backend`) or a closed socket mean it cannot be handed out.
    pub fn is_clean(&self) -> bool {
        let mut probe = [0u8; 1];
        matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }

    /// The upstream backend's cancel key, and where to send a CancelRequest.
    pub fn cancel_key(&self) -> (&UpstreamAddr, i32, i32) {
        (&self.addr, self.backend_pid, self.backend_secret)
    }

    /// Whether the connection is within the pool's `max_lifetime` (`lifetime_ns`) at `now`,
    /// its open time plus the lifetime worked out only when the setting differs from the one
    /// it was worked out for (see `expires`).
    #[inline]
    pub(super) fn live_at(&mut self, lifetime_ns: u64, now: Instant) -> bool {
        if self.lifetime_ns != lifetime_ns {
            self.lifetime_ns = lifetime_ns;
            self.expires = self.created.checked_add(std::time::Duration::from_nanos(lifetime_ns));
        }
        self.expires.is_none_or(|at| now < at)
    }

    #[inline]
    pub fn backend_pid(&self) -> i32 {
        self.backend_pid
    }

    /// Closes the connection at its release instead of pooling it: a cancel sent to its
    /// backend may still be on its way, and would land on whatever the backend runs for the
    /// next client. Its lifetime ends now (checked at release; a checkout works it out anew
    /// only when the pool's `max_lifetime` changes, and this one is never checked out again).
    pub fn retire(&mut self) {
        self.expires = Some(self.created);
    }

    /// The socket, for the relay to read and write client traffic.
    #[inline]
    pub fn stream_mut(&mut self) -> &mut ServerStream {
        &mut self.stream
    }

    /// Statements pgtenant prepared on this connection (transaction mode).
    #[inline]
    pub fn prepared_mut(&mut self) -> &mut PreparedSet {
        &mut self.prepared
    }

    /// Whose unnamed statement the server holds (see the field).
    #[inline]
    pub fn unnamed_owner(&self) -> (u64, u32) {
        self.unnamed
    }

    /// A client's unnamed Parse completed: the unnamed statement is that client's `parse`th.
    #[inline]
    pub fn set_unnamed_owner(&mut self, client: u64, parse: u32) {
        self.unnamed = (client, parse);
    }

    /// pgtenant's own simple query or unnamed Parse goes to the server: whatever unnamed
    /// statement it held is gone or replaced, nobody's (a client's is parsed again for it
    /// where it binds it next).
    #[inline]
    pub fn forget_unnamed(&mut self) {
        self.unnamed = (0, 0);
    }

    /// Whether a client left session state behind (reset before reuse).
    #[inline]
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// A client changed session state (SET, LISTEN, PREPARE …): the connection is reset
    /// before anyone else uses it.
    #[inline]
    pub fn mark_dirty(&mut self) {
        self.dirty = true;
    }

    /// A client ran something that may change settings without a SET tag: the tenant's
    /// isolation settings are applied afresh for the next client.
    #[inline]
    pub fn suspect_settings(&mut self) {
        self.settings_suspect = true;
        self.settings_unseen = true;
    }

    /// A client ran something that may declare a cursor (transaction mode): the connection's
    /// cursors are closed before anyone else uses it.
    #[inline]
    pub fn note_cursors(&mut self) {
        self.cursors = true;
    }

    /// Whether cursors must be closed before the connection is reused.
    #[inline]
    pub fn has_cursors(&self) -> bool {
        self.cursors
    }

    /// Session variables known to be in effect.
    #[inline]
    pub fn vars(&self) -> &[(String, String)] {
        &self.vars
    }

    /// Forgets the variables `keep` refuses (they are back to the server's defaults).
    pub fn retain_vars(&mut self, mut keep: impl FnMut(&str) -> bool) {
        self.vars.retain(|(k, _)| keep(k));
    }

    /// The fingerprint of the client settings `vars` is known to match (0: unknown).
    #[inline]
    pub fn vars_fingerprint(&self) -> u64 {
        self.vars_fingerprint
    }

    #[inline]
    pub fn set_vars_fingerprint(&mut self, fingerprint: u64) {
        self.vars_fingerprint = fingerprint;
    }

    pub fn var(&self, name: &str) -> Option<&str> {
        self.vars.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn set_var(&mut self, name: &str, value: &str) {
        match self.vars.iter_mut().find(|(k, _)| k.eq_ignore_ascii_case(name)) {
            Some(slot) => value.clone_into(&mut slot.1),
            None => {
                self.idle_setting |= is_idle_setting(name);
                self.vars.push((name.to_owned(), value.to_owned()))
            }
        }
    }
}

/// The statements prepared on one server connection, least recently used evicted first.
#[derive(Debug)]
pub struct PreparedSet {
    names: crate::hash::KeyedMap<Arc<str>, u64>,
    tick: u64,
    /// The name found by the last [`PreparedSet::touch`] (one of `names`): touching it again,
    /// as a client binding one statement over and over does, skips hashing its 36 bytes and
    /// leaves its tick alone. The order stays exactly least recently used: nothing else is
    /// touched or inserted during such a run (either ends it), so the run's first tick ranks
    /// the name among the others as its last would.
    hot: Option<Arc<str>>,
    /// Names being created by messages the server has not answered yet (it may skip or fail
    /// them): how many, and the Sync count of the client holding the connection when the
    /// earliest was staged (see [`PreparedSet::unanswered_before`]). Empty between
    /// transactions: a connection goes back only once the server owes nothing.
    unanswered: crate::hash::KeyedMap<Arc<str>, (u32, u64)>,
}

impl Default for PreparedSet {
    fn default() -> Self {
        PreparedSet { names: crate::hash::map(), tick: 0, hot: None, unanswered: crate::hash::map() }
    }
}

impl PreparedSet {
    /// Statements kept per server connection.
    pub const CAPACITY: usize = 256;

    /// Whether `name` is prepared here (and marks it used).
    pub fn touch(&mut self, name: &Arc<str>) -> bool {
        if let Some(hot) = &self.hot {
            if Arc::ptr_eq(hot, name) || **hot == **name {
                return true;
            }
        }
        self.tick += 1;
        let tick = self.tick;
        match self.names.get_mut(&**name) {
            Some(t) => {
                *t = tick;
                self.hot = Some(name.clone());
                true
            }
            None => {
                self.hot = None;
                false
            }
        }
    }

    /// Records `name`; returns the statement evicted to stay within capacity, which the
    /// caller closes on the server.
    pub fn insert(&mut self, name: Arc<str>) -> Option<Arc<str>> {
        self.insert_within(name, Self::CAPACITY)
    }

    fn insert_within(&mut self, name: Arc<str>, capacity: usize) -> Option<Arc<str>> {
        self.hot = None;
        self.tick += 1;
        self.names.insert(name, self.tick);
        if self.names.len() <= capacity {
            return None;
        }
        let oldest = self.names.iter().min_by_key(|(_, t)| **t).map(|(n, _)| n.clone())?;
        self.names.remove(&oldest);
        Some(oldest)
    }

    /// Records `name` as being created by a message staged now, when the client holding the
    /// connection has sent `syncs` Syncs: it counts as prepared (a message behind the creation
    /// fails or is skipped with it) and is unanswered until [`PreparedSet::answered`]. Returns
    /// the statement evicted, as [`PreparedSet::insert`] does.
    pub fn creating(&mut self, name: Arc<str>, syncs: u64) -> Option<Arc<str>> {
        self.unanswered.entry(name.clone()).or_insert((0, syncs)).0 += 1;
        self.insert(name)
    }

    /// The server answered (or skipped) one creation of `name`.
    pub fn answered(&mut self, name: &str) {
        if let Some(n) = self.unanswered.get_mut(name) {
            n.0 = n.0.saturating_sub(1);
            if n.0 == 0 {
                self.unanswered.remove(name);
            }
        }
    }

    /// Whether any creation is unanswered.
    #[inline]
    pub fn any_unanswered(&self) -> bool {
        !self.unanswered.is_empty()
    }

    /// Whether a creation of `name` staged before the client's latest Sync (it has sent
    /// `syncs`) is unanswered: the server may skip it behind an error, or fail it, and still
    /// run what follows the Sync, so a message there cannot count on the statement yet.
    #[inline]
    pub fn unanswered_before(&self, name: &str, syncs: u64) -> bool {
        !self.unanswered.is_empty() && self.unanswered.get(name).is_some_and(|&(_, at)| at < syncs)
    }

    /// Forgets the creations of `name` pending (their answers were not modelled: see
    /// [`crate::client`]'s use).
    pub fn forget_unanswered(&mut self, name: &str) {
        self.unanswered.remove(name);
    }

    pub fn remove(&mut self, name: &str) {
        if self.hot.as_deref() == Some(name) {
            self.hot = None;
        }
        self.names.remove(name);
    }

    pub fn clear(&mut self) {
        self.hot = None;
        self.names.clear();
        // Nothing counts as prepared: a creation still unanswered changes nothing.
        self.unanswered.clear();
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

impl Drop for ServerConn {
    /// Best-effort Terminate so the server logs a clean disconnect; the socket closes anyway.
    fn drop(&mut self) {
        let _ = self.stream.try_write(frontend::TERMINATE_MESSAGE);
    }
}

/// Sends a CancelRequest for an upstream backend over a fresh connection.
pub async fn cancel_backend(addr: &UpstreamAddr, pid: i32, secret: i32) -> std::io::Result<()> {
    let mut stream = addr.connect().await?;
    let mut buf = BytesMut::with_capacity(16);
    frontend::cancel_request(&mut buf, pid, secret);
    stream.write_all(&buf).await?;
    stream.flush().await?;
    // The server closes the connection without answering; waiting for that tells us it read
    // the request.
    let mut sink = [0u8; 16];
    let _ = tokio::io::AsyncReadExt::read(&mut stream, &mut sink).await;
    Ok(())
}

fn password<'a>(login: &Login<'a>) -> Result<&'a str, UpstreamError> {
    login.password.ok_or(UpstreamError::NoPassword)
}

fn split_i32(body: &[u8]) -> Result<(i32, &[u8]), UpstreamError> {
    body.split_first_chunk::<4>()
        .map(|(n, rest)| (i32::from_be_bytes(*n), rest))
        .ok_or_else(|| UpstreamError::Protocol("message too short".into()))
}

fn sasl_mechanisms(mut data: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        let (m, rest) = cstr(data)?;
        if m.is_empty() {
            return None;
        }
        data = rest;
        Some(m)
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// A small capacity, so that evictions come often and depend on every tick.
    const CAPACITY: usize = 4;

    /// What a connection holds, as a plain least-recently-used list (most recent last).
    #[derive(Default)]
    struct Lru(Vec<Arc<str>>);

    impl Lru {
        fn touch(&mut self, name: &str) -> bool {
            let Some(i) = self.0.iter().position(|n| &**n == name) else { return false };
            let n = self.0.remove(i);
            self.0.push(n);
            true
        }

        fn insert(&mut self, name: Arc<str>) -> Option<Arc<str>> {
            self.0.retain(|n| *n != name);
            self.0.push(name);
            (self.0.len() > CAPACITY).then(|| self.0.remove(0))
        }
    }

    #[test]
    fn a_creation_is_unanswered_until_settled_and_waits_only_behind_a_later_sync() {
        let mut set = PreparedSet::default();
        let name: Arc<str> = Arc::from("pgt_a");
        assert_eq!(set.creating(name.clone(), 3), None);
        assert!(set.touch(&name), "counts as prepared at once");
        assert!(!set.unanswered_before("pgt_a", 3), "the same Sync batch");
        assert!(set.unanswered_before("pgt_a", 4), "behind a later Sync");
        assert!(!set.unanswered_before("pgt_b", 4));
        set.creating(name.clone(), 4);
        set.answered("pgt_a");
        assert!(set.unanswered_before("pgt_a", 5), "one of two answered");
        set.answered("pgt_a");
        assert!(!set.unanswered_before("pgt_a", 5));
        set.creating(name.clone(), 5);
        set.remove("pgt_a");
        assert!(set.unanswered_before("pgt_a", 6), "undone: still unanswered until settled");
        set.forget_unanswered("pgt_a");
        assert!(!set.unanswered_before("pgt_a", 6));
        set.creating(name, 6);
        set.clear();
        assert!(!set.unanswered_before("pgt_a", 7), "nothing counts as prepared");
    }

    proptest! {
        /// A run of touches of one name skips the map, yet evictions follow exact
        /// least-recently-used order, as with a tick written on every touch. Names come as
        /// fresh Arcs or shared ones (pointer-equal or only equal by text), a few more of
        /// them than the capacity.
        #[test]
        fn evicts_least_recently_used(ops in proptest::collection::vec((0u8..5, 0u16..7, any::<bool>()), 1..400)) {
            let shared: Vec<Arc<str>> = (0..7).map(|i| Arc::from(format!("pgt_{i:032x}"))).collect();
            let (mut set, mut model) = (PreparedSet::default(), Lru::default());
            for (op, i, fresh) in ops {
                let name = if fresh { Arc::from(&*shared[usize::from(i)]) } else { shared[usize::from(i)].clone() };
                match op {
                    0..=2 => prop_assert_eq!(set.touch(&name), model.touch(&name)),
                    3 => prop_assert_eq!(set.insert_within(name.clone(), CAPACITY), model.insert(name)),
                    _ if i == 0 => {
                        set.clear();
                        model.0.clear();
                    }
                    _ => {
                        set.remove(&name);
                        model.0.retain(|n| *n != name);
                    }
                }
                prop_assert_eq!(set.len(), model.0.len());
            }
        }
    }
}
