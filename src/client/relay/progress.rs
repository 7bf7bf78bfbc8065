//! Where a session's server connection stands beyond its reply queue: swallowed setup
//! replies, the extended-protocol and transaction state, a cross-tenant reset under way.

/// Where the server connection stands, beyond the reply queue.
#[derive(Debug, Default)]
pub(super) struct Progress {
    /// A Parse, Bind, Describe, Close or Execute went out and no Sync since (a Flush alone
    /// opens no batch).
    pub(super) extended_open: bool,
    /// A reply arrived that the queue did not expect: pgtenant lost track, so the connection
    /// is never returned to the pool.
    pub(super) desync: bool,
    /// A CopyInResponse came and no ReadyForQuery since: the server may be reading copy data,
    /// where a resync marker would end the client's copy with 08P01 and FATAL.
    pub(super) copy_in: bool,
    /// A statement of the client's last Query starts with COPY, or an Execute came after it
    /// once the client parsed a COPY, with no CopyDone or CopyFail since (transaction mode,
    /// set as they are staged): the server may be (or be about to be) in a COPY FROM STDIN.
    pub(super) copy_may_open: bool,
    /// The client staged a Parse of a statement starting with COPY (for as long as the
    /// session lasts): only then may an Execute of its start a COPY FROM STDIN (PREPARE and
    /// cursors cannot hold one; code that runs cannot copy from the client, the reading a
    /// Query's class makes too), so only then does an Execute set `copy_may_open`. Every
    /// Execute did: an idle client whose last message was one kept a connection pgtenant lost
    /// track of from the marker, and from every other client of the pool, for as long as it
    /// stayed connected (e2e isolation::resync_hold). A client that parsed a COPY once still
    /// can, with Executes of anything: closing that needs the statement each portal runs.
    pub(super) copy_parsed: bool,
    /// Transaction status of the last ReadyForQuery.
    pub(super) status: u8,
    /// The server sent a FATAL error: it closes the connection, and nothing is added to it.
    pub(super) fatal: bool,
    /// Where a queued cross-tenant reset and setup stand.
    pub(super) reset: ResetPhase,
    /// A client Sync went out behind an unconfirmed reset or setup: the client's later
    /// messages wait until their replies are checked (a failed one makes the server skip
    /// only up to that Sync).
    pub(super) reset_synced: bool,
    /// What a handoff whose replies are due keeps to be tried again on another connection
    /// should it fail (see `retry`); between a failed attempt and the next checkout, the
    /// attempt that failed.
    pub(super) retry: Option<Box<super::retry::Retry>>,
    /// When the queued reset went out: its replies are due within
    /// [`crate::pool::session::CLEANUP_TIMEOUT`] (see [`super::timer::Limit::Reset`]).
    pub(super) reset_since: Option<tokio::time::Instant>,
    /// Tenant affinity: until when the client keeps its idle server connection for its next
    /// transaction (see `Session::keep_for_affinity`).
    pub(super) hold_until: Option<tokio::time::Instant>,
    /// Transactions in a row the client kept its connection for.
    pub(super) held: u8,
    /// After a hold the client did not use (its next transaction came later), transaction
    /// ends left before it is held for again.
    pub(super) hold_skip: u8,
    /// Holds in a row the client let run out (see `HOLD_SKIP_AFTER_MISSES`).
    pub(super) misses: u8,
    /// The client's next transaction was held back (others wait, and it kept the connection
    /// past `HOLD_STREAK` with a query always in flight): the connection goes back once the
    /// server is idle, and that transaction waits for a connection as any other.
    pub(super) yielding: bool,
    /// A read of the server connection now held is registered with the session's signal as
    /// its waker and has not fired (see `Session::next_event`).
    pub(super) server_armed: bool,
    /// Likewise for the client's socket, whose reads are left registered only when it is
    /// plain TCP (`client_plain`).
    pub(super) client_armed: bool,
    pub(super) client_plain: bool,
}

/// A handoff's replies (a cross-tenant reset, the session's setup), swallowed and checked
/// (see [`crate::pool::handoff::queue_reset`] and [`crate::pool::handoff::queue_setup`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) enum ResetPhase {
    /// None queued, or its replies checked.
    #[default]
    Done,
    /// Until the reset's guard query's ReadyForQuery; then the replies of the given parts
    /// (`pool::handoff::part`).
    Guard(u16),
    /// The next expected reply (an index in `pool::handoff::HANDOFF_REPLIES`) and the parts.
    Replies(u8, u16),
}
