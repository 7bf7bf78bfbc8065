//! The one place pgtenant builds the ErrorResponses it sends itself: a named constructor
//! per situation (conventions in DESIGN.md, "Errors the client sees"), and [`ClientFacing`],
//! the trait through which each module's error enum chooses its SQLSTATE, the text a client
//! may see (never its internal Display), its kind and whether retrying can help. Modelled on
//! neon's `proxy/src/error.rs` (`ReportableError` / `UserFacingError`).

use std::borrow::Cow;

use bytes::BytesMut;
use pgwire::messages::response::ErrorResponse;
use pgwire::messages::Message;

/// The SQLSTATEs pgtenant itself raises.
/// <https://www.postgresql.org/docs/current/errcodes-appendix.html>
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SqlState {
    /// 28000: no tenant in the connection, or resolvers disagree.
    InvalidAuthorization,
    /// 28P01: wrong password.
    InvalidPassword,
    /// 3D000: unknown tenant (authentication off), archived or deleted tenant.
    InvalidCatalogName,
    /// 57P03: tenant suspended / pending / migrating.
    CannotConnectNow,
    /// 53300: pool wait timed out, or a client limit reached.
    TooManyConnections,
    /// 53200: clients hold as much of large messages as `large_message_memory` allows.
    OutOfMemory,
    /// 08006: upstream unreachable or dropped.
    ConnectionFailure,
    /// 08001: control database unreachable and tenant not cached.
    UnableToConnect,
    /// 08P01: malformed or oversized message.
    ProtocolViolation,
    /// 57P01: proxy shutting down.
    AdminShutdown,
    /// 0A000: something pgtenant does not do (replication connections, …).
    FeatureNotSupported,
    /// XX000: a bug or an unexpected internal failure.
    Internal,
    /// 26000: a prepared statement the client does not have.
    InvalidSqlStatementName,
    /// 34000: a portal the client does not have.
    InvalidCursorName,
    /// 42P05: a prepared statement name the client already uses.
    DuplicatePreparedStatement,
    /// 54000: a client holds more of something than pgtenant keeps for one client.
    ProgramLimitExceeded,
    /// 57014: query_timeout.
    QueryCanceled,
    /// 25P03: idle_transaction_timeout.
    IdleInTransactionTimeout,
    /// 57P05: client_idle_timeout.
    IdleSessionTimeout,
    /// 22021: a name that is not valid in the client's encoding.
    CharacterNotInRepertoire,
}

impl SqlState {
    pub fn code(self) -> &'static str {
        match self {
            SqlState::InvalidAuthorization => "28000",
            SqlState::InvalidPassword => "28P01",
            SqlState::InvalidCatalogName => "3D000",
            SqlState::CannotConnectNow => "57P03",
            SqlState::TooManyConnections => "53300",
            SqlState::OutOfMemory => "53200",
            SqlState::ConnectionFailure => "08006",
            SqlState::UnableToConnect => "08001",
            SqlState::ProtocolViolation => "08P01",
            SqlState::AdminShutdown => "57P01",
            SqlState::FeatureNotSupported => "0A000",
            SqlState::Internal => "XX000",
            SqlState::InvalidSqlStatementName => "26000",
            SqlState::InvalidCursorName => "34000",
            SqlState::DuplicatePreparedStatement => "42P05",
            SqlState::ProgramLimitExceeded => "54000",
            SqlState::QueryCanceled => "57014",
            SqlState::IdleInTransactionTimeout => "25P03",
            SqlState::IdleSessionTimeout => "57P05",
            SqlState::CharacterNotInRepertoire => "22021",
        }
    }
}

/// Whose fault an error is, for logs and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The client sent something wrong or asked for something it may not have.
    Client,
    /// An upstream server failed or refused.
    Server,
    /// pgtenant itself: its limits, its control database, its configuration, a bug.
    Proxy,
}

impl ErrorKind {
    /// A metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Client => "client",
            ErrorKind::Server => "server",
            ErrorKind::Proxy => "proxy",
        }
    }
}

/// An error that may reach a client. Implementations list their texts explicitly (an
/// allow-list): a cause's Display (addresses, a server's own message, an i/o error) is never
/// part of [`client_text`](ClientFacing::client_text); it goes to the log through
/// [`PgError::report`], tied to the client's message by a reference.
pub trait ClientFacing: std::fmt::Display {
    fn sqlstate(&self) -> SqlState;
    /// Text safe to show a client.
    fn client_text(&self) -> Cow<'_, str>;
    fn kind(&self) -> ErrorKind;
    /// Whether the same request may succeed if retried (a timeout, an unreachable server).
    fn retryable(&self) -> bool {
        false
    }
    fn hint(&self) -> Option<Cow<'_, str>> {
        None
    }
    /// The client text leaves out a cause that only the log has: [`PgError::report`] logs it
    /// and gives the client a reference to find it.
    fn hides_cause(&self) -> bool {
        false
    }
}

/// An error on its way to a client. Errors that end the session are FATAL, as Postgres
/// sends them; the others are ERROR.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgError {
    pub state: SqlState,
    pub fatal: bool,
    pub message: String,
    pub hint: Option<String>,
}

impl PgError {
    fn fatal(state: SqlState, message: impl Into<String>) -> Self {
        PgError { state, fatal: true, message: message.into(), hint: None }
    }

    /// An error that ends the statement, not the session.
    fn error(state: SqlState, message: impl Into<String>) -> Self {
        PgError { state, fatal: false, message: message.into(), hint: None }
    }

    /// The FATAL ErrorResponse for `e`, as `e` chooses it. When `e` hides its cause, the cause
    /// is logged with a reference the client is given.
    pub fn report<E: ClientFacing + ?Sized>(e: &E) -> Self {
        Self::report_with(e, "")
    }

    /// [`report`](Self::report), the client text behind `context` (`"invalid startup packet: "`).
    fn report_with<E: ClientFacing + ?Sized>(e: &E, context: &str) -> Self {
        let text = e.client_text();
        let message = if e.hides_cause() {
            let reference = Self::reference();
            tracing::warn!(
                kind = e.kind().as_str(),
                retryable = e.retryable(),
                %reference,
                error = %e,
                "error reported to a client without its cause"
            );
            format!("{context}{text} (ref {reference})")
        } else {
            format!("{context}{text}")
        };
        PgError { state: e.sqlstate(), fatal: true, message, hint: e.hint().map(Cow::into_owned) }
    }

    /// A startup packet that cannot be read.
    pub fn invalid_startup_packet<E: ClientFacing + ?Sized>(e: &E) -> Self {
        Self::report_with(e, "invalid startup packet: ")
    }

    /// A malformed frame from a logged-in client.
    pub fn invalid_client_message<E: ClientFacing + ?Sized>(e: &E) -> Self {
        Self::report_with(e, "invalid message from client: ")
    }

    /// A malformed frame during authentication.
    pub fn invalid_auth_message<E: ClientFacing + ?Sized>(e: &E) -> Self {
        Self::report_with(e, "invalid message: ")
    }

    /// A SASL message that breaks the SCRAM exchange.
    pub fn invalid_sasl_message<E: ClientFacing + ?Sized>(e: &E) -> Self {
        Self::report_with(e, "invalid SASL message: ")
    }

    /// A message other than a password/SASL response during authentication.
    pub fn expected_sasl_response() -> Self {
        PgError::fatal(SqlState::ProtocolViolation, "expected a SASL response")
    }

    /// Login took longer than `startup_timeout`.
    pub fn startup_timed_out() -> Self {
        PgError::fatal(SqlState::ProtocolViolation, "startup timed out")
    }

    /// TLS is required and the client did not ask for it.
    pub fn tls_required() -> Self {
        PgError::fatal(SqlState::InvalidAuthorization, "TLS is required")
            .with_hint("connect with sslmode=require (or verify-full)")
    }

    pub fn replication_unsupported() -> Self {
        PgError::fatal(SqlState::FeatureNotSupported, "pgtenant does not proxy replication connections")
            .with_hint("connect replication clients to the PostgreSQL server directly")
    }

    /// A client's message that must arrive whole (`len` bytes) would take clients past
    /// `large_message_memory`, or (`tenant`) its tenant's clients past their share of it, of
    /// `size` bytes.
    pub fn large_messages_full(len: usize, size: usize, tenant: bool) -> Self {
        let (message, hint) = if tenant {
            (
                format!("out of memory: a message of {len} bytes would take the tenant's clients past pgtenant's large_message_memory_per_tenant ({size} bytes)"),
                "send the message again when fewer of the tenant's clients send large messages at once",
            )
        } else {
            (
                format!("out of memory: a message of {len} bytes would take clients past pgtenant's large_message_memory ({size} bytes)"),
                "send the message again when fewer clients send large messages at once",
            )
        };
        PgError::fatal(SqlState::OutOfMemory, message).with_hint(hint)
    }

    /// `max_client_conn` is reached.
    pub fn too_many_clients() -> Self {
        PgError::fatal(SqlState::TooManyConnections, "sorry, too many clients already")
            .with_hint("pgtenant's max_client_conn is reached")
    }

    /// `max_prelogin_connections` is reached.
    pub fn too_many_logging_in() -> Self {
        PgError::fatal(SqlState::TooManyConnections, "sorry, too many clients already")
            .with_hint("too many connections are logging in to pgtenant at once (max_prelogin_connections)")
    }

    /// The tenant's `max_clients` is reached.
    pub fn too_many_tenant_clients(tenant: &str) -> Self {
        PgError::fatal(SqlState::TooManyConnections, format!("too many connections for tenant \"{tenant}\""))
            .with_hint("the tenant's max_clients is reached")
    }

    /// Failed logins from this address for this tenant are throttled.
    pub fn auth_throttled() -> Self {
        PgError::fatal(SqlState::InvalidPassword, "too many failed authentication attempts from this address")
            .with_hint("wait a minute before trying again")
    }

    /// A wrong password, or an unknown tenant or user (the same text: no enumeration).
    pub fn password_failed() -> Self {
        PgError::fatal(SqlState::InvalidPassword, "password authentication failed")
    }

    pub fn unsupported_sasl_mechanism() -> Self {
        PgError::fatal(SqlState::InvalidAuthorization, "unsupported SASL mechanism")
            .with_hint("use SCRAM-SHA-256")
    }

    /// The client left before authentication ended (no message reaches it).
    pub fn client_left_during_auth() -> Self {
        PgError::fatal(SqlState::ConnectionFailure, "client left during authentication")
    }

    /// The client's socket failed mid-handshake (no message reaches it).
    pub fn client_connection_lost() -> Self {
        PgError::fatal(SqlState::ConnectionFailure, "client connection lost")
    }

    /// An unknown tenant, with authentication off (or found gone by the catalog watch).
    pub fn tenant_unknown(tenant: &str) -> Self {
        PgError::fatal(SqlState::InvalidCatalogName, format!("tenant \"{tenant}\" does not exist"))
    }

    /// A tenant that is pending, suspended or migrating.
    pub fn tenant_not_active(tenant: &str, status: &str) -> Self {
        PgError::fatal(SqlState::CannotConnectNow, format!("tenant \"{tenant}\" is {status}"))
            .with_hint("connections are accepted again once the tenant is active")
    }

    /// An archived or deleted tenant.
    pub fn tenant_gone(tenant: &str, status: &str) -> Self {
        PgError::fatal(SqlState::InvalidCatalogName, format!("tenant \"{tenant}\" is {status}"))
    }

    /// Ends a session because its tenant stopped being active (`reason` says how).
    pub fn terminating(reason: &PgError) -> Self {
        PgError::fatal(SqlState::AdminShutdown, format!("terminating connection: {}", reason.message))
    }

    pub fn shutting_down() -> Self {
        PgError::fatal(SqlState::AdminShutdown, "terminating connection: pgtenant is shutting down")
    }

    /// The upstream connection dropped under a session.
    pub fn upstream_lost(tenant: &str) -> Self {
        PgError::fatal(
            SqlState::ConnectionFailure,
            format!("lost the connection to the database of tenant \"{tenant}\""),
        )
    }

    /// pgtenant's session setup (or the reset before it) failed and the server's own error
    /// did not arrive whole.
    pub fn session_setup_failed() -> Self {
        PgError::fatal(SqlState::ConnectionFailure, "the session setup failed")
    }

    /// A session panicked.
    pub fn internal(tenant: &str) -> Self {
        PgError::fatal(SqlState::Internal, format!("internal error in the session of tenant \"{tenant}\""))
    }

    pub fn query_timeout(tenant: &str) -> Self {
        PgError::fatal(
            SqlState::QueryCanceled,
            format!("canceling statement due to query_timeout of tenant \"{tenant}\""),
        )
    }

    pub fn idle_transaction_timeout(tenant: &str) -> Self {
        PgError::fatal(
            SqlState::IdleInTransactionTimeout,
            format!("terminating connection due to idle_transaction_timeout of tenant \"{tenant}\""),
        )
    }

    pub fn client_idle_timeout(tenant: &str) -> Self {
        PgError::fatal(
            SqlState::IdleSessionTimeout,
            format!("terminating connection due to client_idle_timeout of tenant \"{tenant}\""),
        )
    }

    /// A client holds as many prepared statements (or as much of their text) as pgtenant
    /// keeps for one client.
    pub fn too_many_statements(max: usize, max_bytes: usize) -> Self {
        PgError::error(
            SqlState::ProgramLimitExceeded,
            format!(
                "a client may hold at most {max} prepared statements or {} MiB of their text",
                max_bytes >> 20
            ),
        )
    }

    /// SQL-level PREPARE / EXECUTE / DEALLOCATE in transaction pooling mode.
    pub fn sql_prepare_unsupported() -> Self {
        PgError::error(
            SqlState::FeatureNotSupported,
            "SQL PREPARE/EXECUTE/DEALLOCATE are not supported in transaction pooling mode",
        )
        .with_hint("use protocol-level prepared statements (they are tracked), or session pooling mode")
    }

    /// A session-level feature (LISTEN, temporary tables …) under `session_features = "refuse"`.
    pub fn session_feature_unsupported(feature: &str) -> Self {
        PgError::error(
            SqlState::FeatureNotSupported,
            format!("{feature} does not work in transaction pooling mode"),
        )
        .with_hint("use session pooling for this client, or set pool.session_features to pin")
    }

    /// PostgreSQL's error for a prepared statement the client does not have (the unnamed
    /// one has its own text: `exec_bind_message` in `src/backend/tcop/postgres.c`).
    pub fn no_such_statement(name: &[u8]) -> Self {
        if name.is_empty() {
            return PgError::error(
                SqlState::InvalidSqlStatementName,
                "unnamed prepared statement does not exist",
            );
        }
        let name = String::from_utf8_lossy(name);
        PgError::error(
            SqlState::InvalidSqlStatementName,
            format!("prepared statement \"{name}\" does not exist"),
        )
    }

    /// PostgreSQL's error for a portal the client does not have.
    pub fn no_such_portal(name: &[u8]) -> Self {
        let name = String::from_utf8_lossy(name);
        PgError::error(SqlState::InvalidCursorName, format!("portal \"{name}\" does not exist"))
    }

    /// PostgreSQL's error for a statement name the client already uses.
    pub fn duplicate_statement(name: &[u8]) -> Self {
        let name = String::from_utf8_lossy(name);
        PgError::error(
            SqlState::DuplicatePreparedStatement,
            format!("prepared statement \"{name}\" already exists"),
        )
    }

    /// PostgreSQL's error for a name that is not valid UTF-8 (`report_invalid_encoding` in
    /// `src/backend/utils/mb/mbutils.c`): `bytes` is the sequence it names, from
    /// [`super::frontend::invalid_utf8`].
    pub fn invalid_utf8(bytes: &[u8]) -> Self {
        use std::fmt::Write as _;
        let mut shown = String::with_capacity(bytes.len() * 5);
        for (i, b) in bytes.iter().enumerate() {
            let sep = if i > 0 { " " } else { "" };
            let _ = write!(shown, "{sep}0x{b:02x}");
        }
        PgError::error(
            SqlState::CharacterNotInRepertoire,
            format!("invalid byte sequence for encoding \"UTF8\": {shown}"),
        )
    }

    /// An admin console error: PgBouncer answers every console error with ERROR 08P01 and
    /// keeps the session (its `admin.c`); the text is the console's own, never an internal one.
    pub fn console(text: impl Into<String>) -> Self {
        PgError::error(SqlState::ProtocolViolation, text)
    }

    /// The admin console ends a session that broke the protocol (FATAL 08P01).
    pub fn console_fatal(text: impl Into<String>) -> Self {
        PgError::fatal(SqlState::ProtocolViolation, text)
    }

    /// The admin console's cap on named statements or portals (54000).
    pub fn console_limit(max: usize, what: &str) -> Self {
        PgError::error(
            SqlState::ProgramLimitExceeded,
            format!("the admin console keeps at most {max} {what}"),
        )
    }

    /// The admin console could not encode a result; the detail is logged under `reference`.
    pub fn console_internal(reference: &str) -> Self {
        PgError::error(
            SqlState::Internal,
            format!("internal error in the admin console (reference {reference})"),
        )
    }

    /// A short random reference that ties a client's error message to the log line with
    /// the details pgtenant does not send to clients.
    pub fn reference() -> String {
        format!("{:08x}", rand::random::<u32>())
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Appends the ErrorResponse frame to `buf`.
    pub fn encode(&self, buf: &mut BytesMut) {
        let severity = if self.fatal { "FATAL" } else { "ERROR" };
        let mut fields = vec![
            (b'S', severity.to_owned()),
            (b'V', severity.to_owned()),
            (b'C', self.state.code().to_owned()),
            (b'M', self.message.clone()),
        ];
        if let Some(hint) = &self.hint {
            fields.push((b'H', hint.clone()));
        }
        // Encoding into a BytesMut only fails on lengths over i32::MAX, which our texts are not.
        if let Err(e) = ErrorResponse::new(fields).encode(buf) {
            tracing::error!(error = %e, "could not encode an ErrorResponse");
        }
    }

    pub fn to_bytes(&self) -> BytesMut {
        let mut buf = BytesMut::with_capacity(64 + self.message.len());
        self.encode(&mut buf);
        buf
    }
}

impl std::fmt::Display for PgError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.state.code(), self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_response_bytes() {
        let e = PgError::fatal(SqlState::TooManyConnections, "busy").with_hint("wait");
        let b = e.to_bytes();
        assert_eq!(b[0], b'E');
        let len = i32::from_be_bytes([b[1], b[2], b[3], b[4]]) as usize;
        assert_eq!(len + 1, b.len());
        let body = &b[5..];
        assert_eq!(body, &b"SFATAL\0VFATAL\0C53300\0Mbusy\0Hwait\0\0"[..]);
    }

    /// The text PostgreSQL 15 sends (measured), naming the bytes of the first bad sequence.
    #[test]
    fn invalid_utf8_reads_as_postgres_words_it() {
        let e = PgError::invalid_utf8(&[0xed, 0xa0, 0x80]);
        assert_eq!((e.state.code(), e.fatal), ("22021", false));
        assert_eq!(e.message, "invalid byte sequence for encoding \"UTF8\": 0xed 0xa0 0x80");
        assert_eq!(
            PgError::invalid_utf8(&[0xff]).message,
            "invalid byte sequence for encoding \"UTF8\": 0xff"
        );
    }
}
