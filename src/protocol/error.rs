//! The one place pgtenant builds the ErrorResponses it sends itself. Every module's error
//! type turns into a [`PgError`] with a SQLSTATE and text that is safe to show a client
//! (conventions in DESIGN.md, "Errors the client sees").

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
}

impl SqlState {
    pub fn code(self) -> &'static str {
        match self {
            SqlState::InvalidAuthorization => "28000",
            SqlState::InvalidPassword => "28P01",
            SqlState::InvalidCatalogName => "3D000",
            SqlState::CannotConnectNow => "57P03",
            SqlState::TooManyConnections => "53300",
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
        }
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
    pub fn fatal(state: SqlState, message: impl Into<String>) -> Self {
        PgError { state, fatal: true, message: message.into(), hint: None }
    }

    /// An error that ends the statement, not the session.
    pub fn error(state: SqlState, message: impl Into<String>) -> Self {
        PgError { state, fatal: false, message: message.into(), hint: None }
    }

    /// PostgreSQL's error for a prepared statement the client does not have.
    pub fn no_such_statement(name: &[u8]) -> Self {
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
}
