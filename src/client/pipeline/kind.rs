//! A client message's kind, as far as the replies it earns go.

use crate::protocol::frontend::tag as fe;
use crate::protocol::frontend::target::PORTAL;

/// A client message, as far as replies go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Parse,
    Bind,
    /// Describe of a statement (ParameterDescription, then RowDescription or NoData).
    DescribeStatement,
    /// Describe of a portal (RowDescription or NoData).
    DescribePortal,
    Execute,
    Close,
    Sync,
    Query,
    FunctionCall,
    CopyData,
    CopyDone,
    CopyFail,
    /// Flush: no reply in any state; kept so a copy sees what came between its data.
    Flush,
    /// A message type the server does not know: it ends the session (FATAL).
    Unknown,
}

impl Kind {
    /// The kind of a frontend message tag.
    pub fn of(tag: u8, describe_target: Option<u8>) -> Kind {
        match tag {
            fe::PARSE => Kind::Parse,
            fe::BIND => Kind::Bind,
            fe::DESCRIBE if describe_target == Some(PORTAL) => Kind::DescribePortal,
            fe::DESCRIBE => Kind::DescribeStatement,
            fe::EXECUTE => Kind::Execute,
            fe::CLOSE => Kind::Close,
            fe::SYNC => Kind::Sync,
            fe::QUERY => Kind::Query,
            fe::FUNCTION_CALL => Kind::FunctionCall,
            fe::COPY_DATA => Kind::CopyData,
            fe::COPY_DONE => Kind::CopyDone,
            fe::COPY_FAIL => Kind::CopyFail,
            fe::FLUSH => Kind::Flush,
            _ => Kind::Unknown,
        }
    }

    /// Messages of the extended protocol: an error in one starts the skip to Sync.
    pub(super) fn extended(self) -> bool {
        matches!(
            self,
            Kind::Parse
                | Kind::Bind
                | Kind::DescribeStatement
                | Kind::DescribePortal
                | Kind::Execute
                | Kind::Close
                | Kind::Flush
        )
    }

    /// Messages the server answers with a ReadyForQuery: each ends a unit of work.
    pub fn readies(self) -> bool {
        matches!(self, Kind::Sync | Kind::Query | Kind::FunctionCall)
    }
}
