//! The PostgreSQL wire protocol as pgtenant sees it: frames, startup packets, the few typed
//! messages it reads or writes, and the ErrorResponses the proxy itself sends.
//!
//! Reference: <https://www.postgresql.org/docs/current/protocol-message-formats.html>.

pub mod backend;
pub mod error;
pub mod frame;
pub mod frontend;
pub mod startup;

pub use error::{ClientFacing, ErrorKind, PgError, SqlState};
pub use frame::{Frame, FrameError, FrameReader};
