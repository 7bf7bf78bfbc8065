//! What the console answers when a statement fails: PgBouncer's texts (`src/admin.c`), all
//! sent as ERROR with SQLSTATE 08P01 as `send_pooler_error` does, the session going on.

use crate::protocol::PgError;

/// A console statement that failed. The texts are PgBouncer's, so scripts written against
/// it read the same thing; they echo only what the console user typed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConsoleError {
    /// Anything the grammar does not accept; carries the whole query.
    #[error("invalid command '{0}', use SHOW HELP;")]
    InvalidCommand(String),
    /// A name or value longer than PgBouncer's buffers.
    #[error("bad arguments")]
    BadArguments,
    /// A stats-only user asked for an action.
    #[error("admin access needed")]
    AdminAccessNeeded,
    #[error("no such database: {0}")]
    NoSuchDatabase(String),
    #[error("cannot pause admin db: {0}")]
    AdminDatabase(String),
    #[error("a database is required")]
    DatabaseRequired,
    #[error("already suspended/paused")]
    AlreadyPaused,
    #[error("pooler is not paused/suspended")]
    NotPaused,
    #[error("database {0} is not paused")]
    DatabaseNotPaused(String),
    #[error("pooler is shutting down")]
    ShuttingDown,
    #[error("invalid client pointer supplied")]
    InvalidClientId,
    #[error("client not found")]
    ClientNotFound,
    /// `SET` of an unknown setting, or one that cannot change live, or a bad value: why.
    #[error("SET failed: {0}")]
    SetFailed(String),
    /// The configuration file could not be read or was refused; the running one is kept.
    #[error("RELOAD failed, see logs for additional details")]
    ReloadFailed,
    /// A PgBouncer command this proxy does not carry out (the text says which).
    #[error("{0}")]
    Unsupported(&'static str),
}

impl ConsoleError {
    /// The ErrorResponse for the client: ERROR, not FATAL; the console session goes on.
    ///
    /// PgBouncer sends RELOAD's failure with F0000 (config_file_error); until
    /// [`SqlState`] has that code it goes out as 08P01 like the others.
    pub fn to_pg_error(&self) -> PgError {
        PgError::console(self.to_string())
    }

    /// A short label for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ConsoleError::InvalidCommand(_) | ConsoleError::BadArguments => "syntax",
            ConsoleError::AdminAccessNeeded => "access",
            ConsoleError::NoSuchDatabase(_)
            | ConsoleError::AdminDatabase(_)
            | ConsoleError::DatabaseRequired
            | ConsoleError::InvalidClientId
            | ConsoleError::ClientNotFound => "target",
            ConsoleError::AlreadyPaused
            | ConsoleError::NotPaused
            | ConsoleError::DatabaseNotPaused(_)
            | ConsoleError::ShuttingDown => "state",
            ConsoleError::SetFailed(_) | ConsoleError::ReloadFailed => "config",
            ConsoleError::Unsupported(_) => "unsupported",
        }
    }
}
