//! What one logged-in client records into its tenant's metrics, and its login and
//! disconnect log lines. The relay calls it at reads, writes, ReadyForQuery and transaction
//! boundaries: what happens per read or write (bytes, named-statement messages) is counted
//! in the meter and added to the tenant's shared counters once a transaction's replies went
//! out, so no shared counter is written per message (threads serving one tenant would
//! otherwise pass its counters' cache line back and forth); per query and per transaction
//! it is a few `Relaxed` atomic adds on the tenant's counters (looked up once, at login) and
//! at most one `Instant::now()`, which the calls of one turn of the session share (see
//! [`Meter::now`]).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::metrics::{ClientSession, ClientState, ErrorSource, PoolStats};
use crate::model::AuthMethod;
use crate::protocol::backend::txn;
use crate::protocol::{PgError, SqlState};

/// A client's meter, from login to disconnect.
pub(crate) struct Meter {
    session: ClientSession,
    /// The counters of the client's pool (for checkouts).
    pool: Arc<PoolStats>,
    /// For the disconnect line (the tenant is passed then: the session holds it).
    user: Arc<str>,
    peer: SocketAddr,
    log_disconnect: bool,
    /// When the current query (round up to ReadyForQuery) and transaction started.
    query: Option<Instant>,
    transaction: Option<Instant>,
    /// When the server connection now held was checked out.
    held: Option<Instant>,
    /// The clock as read in the session's current turn (see [`Meter::now`]).
    turn: Option<Instant>,
    /// When the current wait for a server connection began (`live::now_us`; 0: none),
    /// shared with the client's entry in the console's registry.
    wait: Arc<AtomicU64>,
    /// Named-statement messages not yet added to the tenant's counters.
    prepared: PreparedCounts,
    /// This client's own totals, for its disconnect line.
    transactions: u64,
    bytes_in: u64,
    bytes_out: u64,
    /// Bytes from and to the client not yet added to the tenant's counters (see
    /// [`Meter::bytes_out`]); each below [`FLUSH_BYTES`].
    pending_in: u32,
    pending_out: u32,
}

/// Bytes counted in the meter before they go to the tenant's counters whatever the
/// transaction does (a long COPY or result stays visible in the metrics as it goes).
const FLUSH_BYTES: u64 = 1 << 20;

/// Messages of named prepared statements (PgBouncer counts those only: its
/// `total_client_parse_count`, `total_server_parse_count` and `total_bind_count`), counted in
/// the client's own task as they go by and added to the tenant's shared counters at the next
/// ReadyForQuery (or at disconnect, or when one would overflow), so a message costs a local
/// increment, not a shared write. `u16`s: they fit in the meter's padding, so counting adds
/// nothing to a client's memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct PreparedCounts {
    /// Parse messages of named statements from the client.
    client_parses: u16,
    /// Parse messages that prepare a named statement on a server: the client's own (session
    /// mode), pgtenant's under its names (transaction mode), and its re-preparations on a
    /// server connection that lacks the statement.
    server_parses: u16,
    /// Bind messages of named statements from the client.
    binds: u16,
}

/// Who logged in and how, for the login line.
pub(crate) struct LoginLine<'a> {
    pub tenant: &'a str,
    pub user: &'a Arc<str>,
    pub peer: SocketAddr,
    pub tls: bool,
    pub method: AuthMethod,
    pub took: Duration,
}

impl Meter {
    /// The client's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    pub fn new(
        session: ClientSession,
        pool: Arc<PoolStats>,
        login: &LoginLine<'_>,
        log_connect: bool,
        log_disconnect: bool,
    ) -> Meter {
        if log_connect {
            tracing::info!(
                tenant = %login.tenant,
                user = %login.user,
                peer = %login.peer,
                tls = login.tls,
                auth = %login.method.as_str(),
                login_ms = login.took.as_secs_f64() * 1e3,
                "login"
            );
        }
        Meter {
            session,
            pool,
            user: login.user.clone(),
            peer: login.peer,
            log_disconnect,
            query: None,
            transaction: None,
            held: None,
            turn: None,
            wait: Arc::default(),
            prepared: PreparedCounts::default(),
            transactions: 0,
            bytes_in: 0,
            bytes_out: 0,
            pending_in: 0,
            pending_out: 0,
        }
    }

    /// Bytes read from the client in one read: counted here, added to the tenant's counters
    /// with the transaction's replies (see [`Meter::bytes_out`]).
    #[inline]
    pub fn bytes_in(&mut self, n: usize) {
        self.bytes_in += n as u64;
        let pending = u64::from(self.pending_in) + n as u64;
        match u32::try_from(pending) {
            Ok(p) if pending < FLUSH_BYTES => self.pending_in = p,
            _ => {
                self.pending_in = 0;
                self.session.stats().bytes_in(pending);
            }
        }
    }

    /// Bytes written to the client in one write. A write made with no query or transaction
    /// running (the one that carries a transaction's last ReadyForQuery, or pgtenant's own
    /// answer to a client between transactions) adds what the meter counted to the
    /// tenant's counters: once a transaction, not once a message.
    #[inline]
    pub fn bytes_out(&mut self, n: usize) {
        self.bytes_out += n as u64;
        let pending = u64::from(self.pending_out) + n as u64;
        match u32::try_from(pending) {
            Ok(p) if pending < FLUSH_BYTES && (self.query.is_some() || self.transaction.is_some()) => {
                self.pending_out = p;
            }
            _ => {
                self.pending_out = 0;
                self.session.stats().bytes_out(pending);
                self.flush_bytes_in();
            }
        }
    }

    /// Adds the client's bytes counted since the last flush to the tenant's counters.
    fn flush_bytes(&mut self) {
        if self.pending_out != 0 {
            self.session.stats().bytes_out(u64::from(std::mem::take(&mut self.pending_out)));
        }
        self.flush_bytes_in();
    }

    #[inline]
    fn flush_bytes_in(&mut self) {
        if self.pending_in != 0 {
            self.session.stats().bytes_in(u64::from(std::mem::take(&mut self.pending_in)));
        }
    }

    /// The clock for this turn of the session: read once per turn (one event handled, with
    /// what it set off), and shared by what the turn records, e.g. a ReadyForQuery and the
    /// release of the connection that follows it, or a checkout and the query it serves.
    /// A turn's readings are microseconds apart; a turn that waits starts a new one
    /// ([`Meter::next_turn`]).
    #[inline]
    pub fn now(&mut self) -> Instant {
        *self.turn.get_or_insert_with(Instant::now)
    }

    /// The session's next turn (an event arrived, or a write to the client waited): the
    /// clock is read afresh when next needed.
    #[inline]
    pub fn next_turn(&mut self) {
        self.turn = None;
    }

    /// Client bytes go to the server: a query starts unless one is running.
    #[inline]
    pub fn query_started(&mut self) {
        if self.query.is_none() {
            let now = self.now();
            self.query = Some(now);
            self.transaction.get_or_insert(now);
        }
    }

    /// A client message that was staged for a server, if it names a statement (`named`): a
    /// Parse or a Bind. In session mode a Parse goes to the server as it is (`forwarded`).
    #[inline]
    pub fn client_message(&mut self, tag: u8, named: bool, forwarded: bool) {
        if !named {
            return;
        }
        let p = &mut self.prepared;
        match tag {
            crate::protocol::frontend::tag::PARSE => {
                p.client_parses += 1;
                p.server_parses += u16::from(forwarded);
            }
            crate::protocol::frontend::tag::BIND => p.binds += 1,
            _ => return,
        }
        self.flush_if_full();
    }

    /// pgtenant sends a server a Parse of a named statement (its own name for the client's).
    #[inline]
    pub fn server_parse(&mut self) {
        self.prepared.server_parses += 1;
        self.flush_if_full();
    }

    /// Flushes before a count can overflow (a client pipelining thousands of messages
    /// without a Sync); each count is below `u16::MAX` after this.
    #[inline]
    fn flush_if_full(&mut self) {
        let p = &self.prepared;
        if p.client_parses.max(p.server_parses).max(p.binds) >= u16::MAX - 1 {
            self.flush_prepared();
        }
    }

    /// The named-statement messages counted and not yet added to the tenant's: where a
    /// handoff that may be retried starts (see [`Meter::rewind_prepared`]).
    pub fn prepared_mark(&self) -> PreparedCounts {
        self.prepared
    }

    /// A handoff failed and the server skipped the client's messages behind it: they are
    /// staged (and counted) again on the next connection, so what was counted since `mark`
    /// goes. The counts go to the tenant's only at a client's ReadyForQuery, which the
    /// skipped messages never get, or near `u16::MAX` (over 65,000 named messages, where a
    /// retry keeps 256 KiB of them at most): none goes out between a mark and its rewind. A
    /// count found below its mark (one went out all the same) is left as it is.
    pub fn rewind_prepared(&mut self, mark: PreparedCounts) {
        let p = &self.prepared;
        if p.client_parses >= mark.client_parses
            && p.server_parses >= mark.server_parses
            && p.binds >= mark.binds
        {
            self.prepared = mark;
        }
    }

    /// Adds the named-statement counts to the tenant's (only when there are some).
    fn flush_prepared(&mut self) {
        if self.prepared != PreparedCounts::default() {
            let p = std::mem::take(&mut self.prepared);
            let stats = self.session.stats();
            stats.prepared(p.client_parses.into(), p.server_parses.into(), p.binds.into());
        }
    }

    /// A ReadyForQuery for the client (not one of pgtenant's own): a query ended, and with
    /// status `I` a transaction. Every one counts; a query the client pipelined behind an
    /// earlier one (sent before that one's ReadyForQuery) has no start of its own and is
    /// timed as 0.
    pub fn ready(&mut self, status: u8) {
        let now = self.now();
        let started = self.query.take().unwrap_or(now);
        self.flush_prepared();
        let stats = self.session.stats();
        let took = now.saturating_duration_since(started);
        stats.query(took);
        if status == txn::IDLE {
            // A transaction of one query began with it: its time is the query's (subtracting
            // two `Instant`s costs ~40 instructions).
            let began = self.transaction.take().unwrap_or(started);
            stats.transaction(if began == started { took } else { now.saturating_duration_since(began) });
            self.transactions += 1;
        }
    }

    /// The meter, and the wait clock the console reads (SHOW POOLS `maxwait`, SHOW CLIENTS
    /// `wait`). By value: a borrow of the meter in the client's task would keep a second
    /// copy of it in the task's future for the whole session.
    pub fn with_wait_clock(self) -> (Meter, Arc<AtomicU64>) {
        let wait = self.wait.clone();
        (self, wait)
    }

    /// The client's state (as SHOW CLIENTS shows it).
    #[cfg(test)]
    pub fn state(&self) -> ClientState {
        self.session.state()
    }

    /// The client waits for a server connection (called once a checkout is found to wait,
    /// not for one that finds a connection at once; again during the same wait, it keeps
    /// the wait's start).
    pub fn waiting(&mut self) {
        if self.wait.load(Ordering::Relaxed) == 0 {
            self.wait.store(crate::console::live::now_us(), Ordering::Relaxed);
        }
        self.session.set_state(ClientState::Waiting);
    }

    /// The wait that began at `asked` ended: with a connection taken at `taken` (`Some`, the
    /// two readings of the clock as the checkout made them), or without.
    pub fn checked_out(&mut self, asked_taken: Option<(Instant, Instant)>) {
        self.wait.store(0, Ordering::Relaxed);
        match asked_taken {
            Some((asked, taken)) => {
                // The end of the wait is the start of the hold, and the turn's clock.
                self.pool.checkout();
                let waited =
                    if taken == asked { Duration::ZERO } else { taken.saturating_duration_since(asked) };
                self.session.stats().pool_wait(waited);
                self.held = Some(taken);
                self.turn = Some(taken);
                self.session.set_state(ClientState::Active);
            }
            None => self.session.set_state(ClientState::Idle),
        }
    }

    /// Whether the server connection held now was checked out more than `limit` ago (by the
    /// turn's clock).
    pub fn held_longer_than(&mut self, limit: Duration) -> bool {
        match self.held {
            Some(since) => self.now().saturating_duration_since(since) > limit,
            None => false,
        }
    }

    /// The server connection went back (or away).
    pub fn released(&mut self) {
        if self.held.is_some() {
            self.released_at(Instant::now());
        } else {
            self.session.set_state(ClientState::Idle);
        }
    }

    /// [`Meter::released`] with the clock already read (`now`).
    pub fn released_at(&mut self, now: Instant) {
        if let Some(held) = self.held.take() {
            self.session.stats().server_released(now.saturating_duration_since(held));
        }
        self.session.set_state(ClientState::Idle);
    }

    /// An ErrorResponse on its way to the client.
    pub fn error(&self, source: ErrorSource, sqlstate: &str) {
        self.session.stats().error(source, sqlstate.as_bytes());
    }

    /// pgtenant ends the session with `e`: the client's fault when it broke the protocol or
    /// one of its timeouts, else pgtenant's.
    pub fn ended_with(&self, e: &PgError) {
        let source = match e.state {
            SqlState::ProtocolViolation
            | SqlState::QueryCanceled
            | SqlState::IdleInTransactionTimeout
            | SqlState::IdleSessionTimeout => ErrorSource::Client,
            _ => ErrorSource::Proxy,
        };
        self.error(source, e.state.code());
    }

    /// The session of a client of `tenant` is over: the disconnect line.
    pub fn disconnected(&mut self, tenant: &str, reason: &str) {
        self.released();
        self.flush_prepared();
        self.flush_bytes();
        if self.log_disconnect {
            tracing::info!(
                tenant = %tenant,
                user = %self.user,
                peer = %self.peer,
                duration_s = self.session.started().elapsed().as_secs_f64(),
                transactions = self.transactions,
                bytes_in = self.bytes_in,
                bytes_out = self.bytes_out,
                reason,
                "disconnect"
            );
        }
    }
}

/// A session ended without [`Meter::disconnected`] (its task cut at a forced shutdown) still
/// adds what it counted.
impl Drop for Meter {
    fn drop(&mut self) {
        self.flush_prepared();
        self.flush_bytes();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use crate::protocol::frontend::tag;

    fn meter(m: &Metrics) -> Meter {
        let user: Arc<str> = Arc::from("app");
        let login = LoginLine {
            tenant: "acme",
            user: &user,
            peer: SocketAddr::from(([127, 0, 0, 1], 5)),
            tls: false,
            method: AuthMethod::Trust,
            took: Duration::ZERO,
        };
        Meter::new(m.client_session("acme"), m.pool("p"), &login, false, false)
    }

    fn counts(m: &Metrics) -> (u64, u64, u64) {
        let (_, s) = m.tenants().into_iter().find(|(n, _)| n == "acme").expect("tenant");
        (s.client_parses, s.server_parses, s.binds)
    }

    #[test]
    fn named_statement_counts_reach_the_tenant_at_ready_for_query() {
        let m = Metrics::new(10);
        let mut meter = meter(&m);
        meter.client_message(tag::PARSE, true, false);
        meter.server_parse();
        meter.client_message(tag::PARSE, false, false);
        meter.client_message(tag::EXECUTE, true, false);
        for _ in 0..3 {
            meter.client_message(tag::BIND, true, false);
        }
        meter.client_message(tag::BIND, false, false);
        assert_eq!(counts(&m), (0, 0, 0), "kept in the meter until a ReadyForQuery");
        meter.ready(txn::IDLE);
        assert_eq!(counts(&m), (1, 1, 3));
        meter.client_message(tag::PARSE, true, true);
        meter.disconnected("acme", "test");
        assert_eq!(counts(&m), (2, 2, 3), "a session-mode Parse counts on both sides; flushed at disconnect");
    }

    /// A failed handoff's messages, counted as they were staged, are taken back to where it
    /// began; what was counted before stays, and so does everything once counts went out.
    #[test]
    fn a_rewind_takes_back_what_the_failed_attempt_counted() {
        let m = Metrics::new(10);
        let mut meter = meter(&m);
        meter.client_message(tag::BIND, true, false);
        let mark = meter.prepared_mark();
        meter.client_message(tag::PARSE, true, false);
        meter.server_parse();
        meter.client_message(tag::BIND, true, false);
        meter.rewind_prepared(mark);
        meter.client_message(tag::PARSE, true, false);
        meter.server_parse();
        meter.client_message(tag::BIND, true, false);
        meter.ready(txn::IDLE);
        assert_eq!(counts(&m), (1, 1, 2), "the retried Parse and Bind once, the Bind before them too");
        // A count below its mark (they went out between): left as it is, nothing counted twice.
        meter.client_message(tag::BIND, true, false);
        let mark = meter.prepared_mark();
        meter.ready(txn::IDLE);
        meter.client_message(tag::PARSE, true, false);
        meter.rewind_prepared(mark);
        meter.disconnected("acme", "test");
        assert_eq!(counts(&m), (2, 1, 3), "the Bind once, the Parse after the flush kept");
    }

    /// A turn's clock is read once and shared until the next turn.
    #[test]
    fn a_turn_reads_the_clock_once() {
        let m = Metrics::new(10);
        let mut meter = meter(&m);
        let first = meter.now();
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(meter.now(), first, "the same turn: the same reading");
        meter.next_turn();
        assert!(meter.now() >= first + Duration::from_millis(2), "a new turn reads the clock afresh");
    }

    fn bytes(m: &Metrics) -> (u64, u64) {
        let (_, s) = m.tenants().into_iter().find(|(n, _)| n == "acme").expect("tenant");
        (s.bytes_in, s.bytes_out)
    }

    /// Bytes stay in the meter while a transaction runs and reach the tenant with the write
    /// that carries its last ReadyForQuery, or once they pass FLUSH_BYTES, or at the end.
    #[test]
    fn bytes_reach_the_tenant_once_a_transaction() {
        let m = Metrics::new(10);
        let mut meter = meter(&m);
        meter.bytes_in(30);
        meter.query_started();
        meter.bytes_out(100);
        meter.ready(txn::IN_TRANSACTION);
        meter.bytes_out(7);
        meter.bytes_in(20);
        meter.query_started();
        meter.bytes_out(50);
        assert_eq!(bytes(&m), (0, 0), "kept in the meter while the transaction runs");
        meter.ready(txn::IDLE);
        meter.bytes_out(6);
        assert_eq!(bytes(&m), (50, 163), "the write after the transaction's end adds all");
        // pgtenant's own answer between transactions (no query running) counts at once.
        meter.bytes_in(5);
        meter.bytes_out(9);
        assert_eq!(bytes(&m), (55, 172));
        // A long transaction's bytes show as they pass the bound.
        meter.query_started();
        for _ in 0..80 {
            meter.bytes_out(16 * 1024);
            meter.bytes_in(16 * 1024);
        }
        let (i, o) = bytes(&m);
        assert_eq!(
            (i, o),
            (55 + 63 * 16 * 1024, 172 + FLUSH_BYTES),
            "added when the writes passed the bound"
        );
        meter.bytes_in(1);
        drop(meter);
        assert_eq!(bytes(&m), (55 + 80 * 16 * 1024 + 1, 172 + 80 * 16 * 1024), "the rest at the end");
    }

    #[test]
    fn counts_flush_before_they_overflow() {
        let m = Metrics::new(10);
        let mut meter = meter(&m);
        for _ in 0..200_000 {
            meter.client_message(tag::BIND, true, false);
        }
        meter.ready(txn::IDLE);
        assert_eq!(counts(&m).2, 200_000);
    }
}
