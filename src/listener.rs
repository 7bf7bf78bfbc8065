//! The listening socket and what keeps accepting healthy under load: a configurable listen
//! backlog, the file-descriptor limit raised to what the configuration needs (or a warning
//! saying why it cannot be), and recurring events (accept errors such as EMFILE, refused
//! connections) logged once per interval instead of once per occurrence.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpSocket};

use crate::config::Config;

/// Binds `addr` and listens with `backlog` pending connections (the kernel caps it at
/// `net.core.somaxconn`). Must run inside a Tokio runtime.
pub fn bind(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    bind_with(addr, backlog, false)
}

/// [`bind`], with SO_REUSEPORT when `reuse_port`: several processes then listen on one
/// address and the kernel spreads new connections over them, which is what lets a new
/// instance start before the old one stops (`[proxy] reuse_port`).
pub fn bind_with(addr: SocketAddr, backlog: u32, reuse_port: bool) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    // As std's `TcpListener::bind` does on Unix: a restart must not wait out TIME_WAIT.
    socket.set_reuseaddr(true)?;
    if reuse_port {
        socket.set_reuseport(true)?;
    }
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// Sets TCP_NODELAY on the listening socket, which Linux hands down to every connection it
/// accepts (the accepted socket starts as a copy of the listener's): one `setsockopt` per
/// listener instead of one per connection. Works on a listener taken over from another
/// instance too. `false` where that is not so (another system, or the call failed): then
/// each accepted connection must be set itself.
pub fn nodelay_on_accept(listener: &TcpListener) -> bool {
    cfg!(target_os = "linux") && rustix::net::sockopt::set_tcp_nodelay(listener, true).is_ok()
}

/// Binds a side listener (`[admin] listen`, `[metrics] listen`: `host:port`), with
/// SO_REUSEPORT when `shared` so that the next instance of a rolling restart can bind it
/// while this one drains.
pub async fn bind_side(listen: &str, shared: bool) -> std::io::Result<TcpListener> {
    if !shared {
        return TcpListener::bind(listen).await;
    }
    let mut last = std::io::Error::new(std::io::ErrorKind::InvalidInput, "no address");
    for addr in tokio::net::lookup_host(listen).await? {
        match bind_with(addr, 1024, true) {
            Ok(l) => return Ok(l),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Where Linux says whether closing one of several SO_REUSEPORT listeners hands the
/// connections queued on it to the others (1) or resets them (0, the default; Linux 5.14+).
const MIGRATE_REQ: &str = "/proc/sys/net/ipv4/tcp_migrate_req";

/// With `reuse_port` and no handover, a rolling restart closes the old instance's socket:
/// warns at start when the kernel then resets the connections queued on it.
pub fn warn_without_migration(handover: bool) {
    let migrates = std::fs::read_to_string(MIGRATE_REQ).is_ok_and(|v| v.trim() == "1");
    if !migrates && !handover {
        tracing::warn!(
            "[proxy] reuse_port without [proxy] handover: when an instance stops, the kernel resets the \
             connections still queued on its socket unless net.ipv4.tcp_migrate_req = 1 (Linux 5.14+); \
             set [proxy] handover for rolling restarts"
        );
    }
}

/// File descriptors the configuration can use at once: every logged-in client, every client
/// still logging in, every server connection, the control database's pool and LISTEN
/// connection, plus a reserve for listeners, the admin API, logs and the like.
pub fn fds_needed(config: &Config) -> u64 {
    const RESERVE: usize = 64;
    let p = &config.proxy;
    [
        p.max_client_conn,
        p.max_prelogin_connections,
        config.pool.max_server_connections,
        config.catalog.pool_size,
        RESERVE,
    ]
    .into_iter()
    .fold(0u64, |sum, n| sum.saturating_add(n as u64))
}

/// The soft `RLIMIT_NOFILE` before and after [`raise_fd_limit`], and what limits it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdLimit {
    pub before: u64,
    pub now: u64,
    pub hard: u64,
    pub needed: u64,
}

/// Raises the soft `RLIMIT_NOFILE` to `needed`, or as far as the hard limit allows; never
/// lowers it.
pub fn raise_fd_limit(needed: u64) -> std::io::Result<FdLimit> {
    use rlimit::Resource;
    let (soft, hard) = Resource::NOFILE.get()?;
    let mut now = soft;
    if soft < needed {
        let target = needed.min(hard);
        Resource::NOFILE.set(target, hard)?;
        now = Resource::NOFILE.get()?.0;
    }
    Ok(FdLimit { before: soft, now, hard, needed })
}

/// [`raise_fd_limit`] for `config`, logged: the new limit, or a warning with the reason when
/// the configuration can use more descriptors than the process may open.
pub fn apply_fd_limit(config: &Config) {
    let needed = fds_needed(config);
    match raise_fd_limit(needed) {
        Ok(l) if l.now >= l.needed => {
            if l.now > l.before {
                tracing::info!(from = l.before, to = l.now, "raised the open-file limit (RLIMIT_NOFILE)");
            }
        }
        Ok(l) => tracing::warn!(
            limit = l.now,
            hard_limit = l.hard,
            needed = l.needed,
            "the open-file limit is below what max_client_conn + max_prelogin_connections + \
             pool.max_server_connections need, and the hard limit stops pgtenant raising it: past it \
             new connections fail to be accepted; raise the hard limit (LimitNOFILE= in systemd, \
             ulimit -Hn, /etc/security/limits.conf) or lower those settings"
        ),
        Err(e) => tracing::warn!(
            error = %e,
            needed,
            "cannot read or raise the open-file limit (RLIMIT_NOFILE); connections past it will fail to be accepted"
        ),
    }
}

/// Lets a recurring event be logged at most once per interval: [`Every::tick`] says when to
/// log, and how many occurrences were not logged since.
#[derive(Debug)]
pub struct Every {
    interval: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl Every {
    pub fn new(interval: Duration) -> Every {
        Every { interval, last: None, suppressed: 0 }
    }

    /// `Some(occurrences not logged since the last report)` when this one should be logged.
    pub fn tick(&mut self) -> Option<u64> {
        self.tick_at(Instant::now())
    }

    fn tick_at(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.saturating_duration_since(last) < self.interval => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

/// The wait before the next `accept` after one failed: from 5 ms doubling to one second, so
/// that running out of descriptors (EMFILE) neither spins the accept loop nor leaves the
/// backlog waiting long once descriptors are free again.
pub fn accept_backoff(previous: Duration) -> Duration {
    (previous * 2).clamp(Duration::from_millis(5), Duration::from_secs(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reuse_port_lets_a_second_listener_share_the_address() {
        let first = bind_with(SocketAddr::from(([127, 0, 0, 1], 0)), 16, true).expect("first");
        let addr = first.local_addr().expect("addr");
        assert!(bind(addr, 16).is_err(), "without SO_REUSEPORT the address is taken");
        let second = bind_with(addr, 16, true).expect("a second instance binds beside the first");
        // The old one stops; the new one takes every connection.
        drop(first);
        let client = tokio::net::TcpStream::connect(addr);
        let (accepted, connected) = tokio::join!(second.accept(), client);
        assert!(accepted.is_ok() && connected.is_ok());
    }

    #[tokio::test]
    async fn connections_accepted_after_nodelay_on_accept_have_tcp_nodelay() {
        async fn accepted(listener: &TcpListener) -> tokio::net::TcpStream {
            let addr = listener.local_addr().expect("addr");
            let (accepted, client) = tokio::join!(listener.accept(), tokio::net::TcpStream::connect(addr));
            client.expect("connect");
            accepted.expect("accept").0
        }
        let listener = bind("127.0.0.1:0".parse().expect("addr"), 16).expect("bind");
        assert!(!accepted(&listener).await.nodelay().expect("nodelay"), "off unless set");
        assert!(nodelay_on_accept(&listener));
        for _ in 0..2 {
            assert!(accepted(&listener).await.nodelay().expect("nodelay"));
        }
    }

    #[test]
    fn every_logs_once_per_interval_and_counts_the_rest() {
        let mut e = Every::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(e.tick_at(t0), Some(0));
        for n in 1..=500 {
            assert_eq!(e.tick_at(t0 + Duration::from_millis(n)), None);
        }
        assert_eq!(e.tick_at(t0 + Duration::from_secs(10)), Some(500));
        assert_eq!(e.tick_at(t0 + Duration::from_secs(11)), None);
    }

    #[test]
    fn accept_backoff_grows_and_is_bounded() {
        let mut d = Duration::ZERO;
        let mut seen = Vec::new();
        for _ in 0..20 {
            d = accept_backoff(d);
            seen.push(d);
        }
        assert_eq!(seen[0], Duration::from_millis(5));
        assert_eq!(seen[1], Duration::from_millis(10));
        assert_eq!(*seen.last().expect("some"), Duration::from_secs(1));
    }

    #[test]
    fn fd_limit_is_raised_within_the_hard_limit_and_never_lowered() {
        let (soft, hard) = rlimit::Resource::NOFILE.get().expect("getrlimit");
        // Asking for less than the current limit changes nothing.
        let l = raise_fd_limit(soft.min(16)).expect("raise");
        assert_eq!((l.before, l.now), (soft, soft));
        // Asking for more than the hard limit stops at the hard limit.
        let l = raise_fd_limit(u64::MAX).expect("raise");
        assert_eq!(l.now, hard);
        assert!(l.now >= soft);
    }

    #[test]
    fn fds_needed_adds_up_the_caps() {
        let mut c = Config::parse("").expect("defaults");
        c.proxy.max_client_conn = 100;
        c.proxy.max_prelogin_connections = 50;
        c.pool.max_server_connections = 20;
        c.catalog.pool_size = 4;
        assert_eq!(fds_needed(&c), 100 + 50 + 20 + 4 + 64);
    }

    #[tokio::test]
    async fn the_listen_backlog_is_the_configured_one() {
        let listener = bind("127.0.0.1:0".parse().expect("addr"), 77).expect("bind");
        let port = listener.local_addr().expect("addr").port();
        // For a listening socket, `ss` reports the backlog as Send-Q.
        let out = std::process::Command::new("ss")
            .args(["-Hltn", &format!("sport = :{port}")])
            .output()
            .expect("run ss (iproute2)");
        let text = String::from_utf8_lossy(&out.stdout);
        let send_q: Vec<&str> = text.lines().filter_map(|l| l.split_whitespace().nth(2)).collect();
        assert_eq!(send_q, ["77"], "ss -ltn: {text}");
    }
}
