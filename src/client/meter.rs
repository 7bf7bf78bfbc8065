//! What one logged-in client records into its tenant's metrics, and its login and
//! disconnect log lines. The relay calls it at read/write batches and transaction
//! boundaries only: each call is a few `Relaxed` atomic adds on the tenant's counters
//! (looked up once, at login) and at most one `Instant::now()`.

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
    since: Instant,
    /// When the current query (round up to ReadyForQuery) and transaction started.
    query: Option<Instant>,
    transaction: Option<Instant>,
    /// When the server connection now held was checked out.
    held: Option<Instant>,
    /// When the current wait for a server connection began (`live::now_us`; 0: none),
    /// shared with the client's entry in the console's registry.
    wait: Arc<AtomicU64>,
    /// This client's own totals, for its disconnect line.
    transactions: u64,
    bytes_in: u64,
    bytes_out: u64,
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
            since: Instant::now(),
            query: None,
            transaction: None,
            held: None,
            wait: Arc::default(),
            transactions: 0,
            bytes_in: 0,
            bytes_out: 0,
        }
    }

    /// Bytes read from the client in one read.
    #[inline]
    pub fn bytes_in(&mut self, n: usize) {
        self.bytes_in += n as u64;
        self.session.stats().bytes_in(n);
    }

    /// Bytes written to the client in one write.
    #[inline]
    pub fn bytes_out(&mut self, n: usize) {
        self.bytes_out += n as u64;
        self.session.stats().bytes_out(n);
    }

    /// Client bytes go to the server: a query starts unless one is running.
    #[inline]
    pub fn query_started(&mut self) {
        if self.query.is_none() {
            let now = Instant::now();
            self.query = Some(now);
            self.transaction.get_or_insert(now);
        }
    }

    /// A ReadyForQuery for the client (not one of pgtenant's own): a query ended, and with
    /// status `I` a transaction. Every one counts; a query the client pipelined behind an
    /// earlier one (sent before that one's ReadyForQuery) has no start of its own and is
    /// timed as 0.
    pub fn ready(&mut self, status: u8) {
        let now = Instant::now();
        let started = self.query.take().unwrap_or(now);
        let stats = self.session.stats();
        stats.query(now.saturating_duration_since(started));
        if status == txn::IDLE {
            let began = self.transaction.take().unwrap_or(started);
            stats.transaction(now.saturating_duration_since(began));
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

    /// The client waits for a server connection.
    pub fn waiting(&mut self) {
        self.wait.store(crate::console::live::now_us(), Ordering::Relaxed);
        self.session.set_state(ClientState::Waiting);
    }

    /// The wait ended: with a connection (`Ok`, after `waited`) or without.
    pub fn checked_out(&mut self, waited: Option<Duration>) {
        self.wait.store(0, Ordering::Relaxed);
        match waited {
            Some(w) => {
                self.pool.checkout();
                self.session.stats().pool_wait(w);
                self.held = Some(Instant::now());
                self.session.set_state(ClientState::Active);
            }
            None => self.session.set_state(ClientState::Idle),
        }
    }

    /// The server connection went back (or away).
    pub fn released(&mut self) {
        if let Some(held) = self.held.take() {
            self.session.stats().server_released(held.elapsed());
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
        if self.log_disconnect {
            tracing::info!(
                tenant = %tenant,
                user = %self.user,
                peer = %self.peer,
                duration_s = self.since.elapsed().as_secs_f64(),
                transactions = self.transactions,
                bytes_in = self.bytes_in,
                bytes_out = self.bytes_out,
                reason,
                "disconnect"
            );
        }
    }
}
