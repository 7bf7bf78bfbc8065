//! The listener: accept loop, the cap on connections logging in, and shutdown (stop
//! accepting, let transactions finish up to a timeout, then close everyone with 57P01,
//! bounded even for clients that stopped reading). The state sessions share is
//! [`crate::proxy`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::tls::Tls;
use crate::config::{secs, Config};
use crate::listener::{accept_backoff, Every};
use crate::protocol::PgError;
use crate::proxy::{Proxy, FORCE_CLOSE_TIMEOUT};

/// The accept loop lives with the listener; the state it serves lives in [`crate::proxy`].
impl Proxy {
    /// Accepts clients until shutdown starts, then drains. Returns once every session ended,
    /// or, for sessions that do not end when told (a client that stopped reading), at most
    /// [`FORCE_CLOSE_TIMEOUT`] after the shutdown timeout.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) -> std::io::Result<()> {
        let tracker = TaskTracker::new();
        let (drain, stop) = (self.shutdown.drain.clone(), self.shutdown.stop_accepting.clone());
        // Accept errors (EMFILE when descriptors run out) and pre-login refusals come in
        // bursts of thousands: logged once per interval, with a count.
        let mut accept_errors = Every::new(Duration::from_secs(10));
        let mut refusals = Every::new(Duration::from_secs(10));
        let mut backoff = Duration::ZERO;
        // TCP_NODELAY once on the listener rather than once per accepted connection.
        let nodelay =
            if crate::listener::nodelay_on_accept(&listener) { NoDelay::Inherited } else { NoDelay::SetEach };
        loop {
            let (stream, peer) = tokio::select! {
                _ = drain.cancelled() => break,
                _ = stop.cancelled() => break,
                r = listener.accept() => match r {
                    Ok(x) => {
                        backoff = Duration::ZERO;
                        x
                    }
                    Err(e) => {
                        backoff = accept_backoff(backoff);
                        if let Some(suppressed) = accept_errors.tick() {
                            tracing::warn!(error = %e, suppressed, retry_in = ?backoff, "accept failed");
                        }
                        tokio::select! {
                            _ = drain.cancelled() => break,
                            _ = stop.cancelled() => break,
                            _ = tokio::time::sleep(backoff) => continue,
                        }
                    }
                },
            };
            self.take_client(&tracker, stream, peer, nodelay, &mut refusals);
        }
        if let Some(instances) = &self.instances {
            instances.start_draining();
        }
        // Connections the kernel has already queued are served, not reset by the close
        // (SO_REUSEPORT without net.ipv4.tcp_migrate_req; after a handover the socket stays
        // open in the new instance and these are simply taken first).
        // At most a backlog's worth: after a handover the new instance fills it as fast.
        let queued = self.config().proxy.listen_backlog;
        match listener.into_std() {
            Ok(listener) => {
                for _ in 0..queued {
                    let Ok((stream, peer)) = listener.accept() else { break };
                    match stream.set_nonblocking(true).and_then(|()| TcpStream::from_std(stream)) {
                        Ok(stream) => self.take_client(&tracker, stream, peer, nodelay, &mut refusals),
                        Err(e) => {
                            tracing::warn!(%peer, error = %e, "a queued connection could not be served")
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not take the connections left in the accept queue"),
        }
        tracker.close();
        let grace = secs(self.config().proxy.shutdown_timeout);
        tracing::info!(clients = self.client_count(), ?grace, "shutting down: draining clients");
        if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
            tracing::warn!(clients = self.client_count(), "shutdown timeout: closing remaining clients");
            self.shutdown.force.cancel();
            // Each session ends itself within FORCE_CLOSE_TIMEOUT of the force signal
            // (`client::serve`); the extra second is for the tasks to be scheduled.
            let bound = FORCE_CLOSE_TIMEOUT + Duration::from_secs(1);
            if tokio::time::timeout(bound, tracker.wait()).await.is_err() {
                tracing::warn!(
                    sessions = tracker.len(),
                    "sessions still open after the forced close: leaving them to the runtime's end"
                );
            }
        }
        self.pools.close_idle();
        // Drained: the registry may now hand this instance's shares to its peers.
        if let Some(instances) = &self.instances {
            instances.leave().await;
        }
        self.shutdown.drained.cancel();
        tracing::info!("shutdown complete");
        Ok(())
    }
}

impl Proxy {
    /// Serves one accepted connection, within `max_prelogin_connections`.
    fn take_client(
        self: &Arc<Self>,
        tracker: &TaskTracker,
        stream: TcpStream,
        peer: SocketAddr,
        nodelay: NoDelay,
        refusals: &mut Every,
    ) {
        let Some(prelogin) = self.prelogin_permit() else {
            refuse_prelogin(&stream);
            if let Some(suppressed) = refusals.tick() {
                tracing::warn!(
                    %peer,
                    suppressed,
                    max_prelogin_connections = self.config().proxy.max_prelogin_connections,
                    "too many connections logging in: new ones are closed at once"
                );
            }
            return;
        };
        if nodelay == NoDelay::SetEach {
            let _ = stream.set_nodelay(true);
        }
        let proxy = self.clone();
        tracker.spawn(async move {
            crate::client::serve(stream, peer, proxy, prelogin).await;
        });
    }
}

/// Whether accepted connections come with TCP_NODELAY from the listener
/// ([`crate::listener::nodelay_on_accept`]) or must each be set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NoDelay {
    Inherited,
    SetEach,
}

/// A connection past `max_prelogin_connections`: one try at a short 53300 (no waiting: a
/// socket that cannot take it at once is not worth waiting for), then it is closed by the
/// caller dropping it. Nothing is read from it.
fn refuse_prelogin(stream: &TcpStream) {
    let _ = stream.try_write(&PgError::too_many_logging_in().to_bytes());
}

/// Binds the configured address and serves until SIGTERM or SIGINT.
pub async fn run(config: Config) -> anyhow::Result<()> {
    run_from(config, None).await
}

/// [`run`], with the file the configuration was read from: SIGHUP re-reads it
/// ([`crate::reload`]).
pub async fn run_from(config: Config, path: Option<std::path::PathBuf>) -> anyhow::Result<()> {
    // SIGHUP never ends the process (its default action would): installed before anything
    // can take time, and served below once the proxy exists.
    let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| anyhow::anyhow!("cannot install the SIGHUP handler: {e}"))?;
    crate::listener::apply_fd_limit(&config);
    let handover = match config.proxy.handover.as_str() {
        "" => None,
        path => Some(std::path::PathBuf::from(path)),
    };
    let takeover = match &handover {
        Some(path) => crate::handover::take_over(path)
            .map_err(|e| anyhow::anyhow!("[proxy] handover = {}: {e}", path.display()))?,
        None => None,
    };
    let (listener, predecessor) = match takeover {
        Some((listener, predecessor)) => (TcpListener::from_std(listener)?, Some(predecessor)),
        None => (
            crate::listener::bind_with(
                config.proxy.listen,
                config.proxy.listen_backlog,
                config.proxy.reuse_port,
            )
            .map_err(|e| anyhow::anyhow!("[proxy] listen = {}: {e}", config.proxy.listen))?,
            None,
        ),
    };
    let addr: SocketAddr = listener.local_addr()?;
    if predecessor.is_some() && config.proxy.listen.port() != 0 && addr != config.proxy.listen {
        anyhow::bail!(
            "[proxy] handover: the running instance listens on {addr}, not on [proxy] listen = {}; stop it first to change the address",
            config.proxy.listen
        );
    }
    if predecessor.is_none() && config.proxy.reuse_port {
        crate::listener::warn_without_migration(handover.is_some());
    }
    // Certificate problems stop the start here, with the reason.
    Tls::new(&config.tls)?;
    if config.proxy.auth == crate::model::AuthMethod::Trust {
        tracing::warn!("client authentication is TRUST: anyone who can reach {} and name a tenant gets in; set [proxy] auth = \"scram-sha-256\"", config.proxy.listen);
    }
    // Bound before the proxy starts, so that a taken admin port stops the start too. Shared
    // (SO_REUSEPORT) when the proxy's own socket can be: the next instance of a rolling
    // restart binds them while this one drains.
    let share = config.proxy.reuse_port || handover.is_some();
    let admin_listener = match config.admin.listen.as_str() {
        "" => None,
        listen => Some(
            crate::listener::bind_side(listen, share)
                .await
                .map_err(|e| anyhow::anyhow!("[admin] listen = {listen:?}: {e}"))?,
        ),
    };
    let metrics_listener = match config.metrics.listen.as_str() {
        "" => None,
        listen => Some(
            crate::listener::bind_side(listen, share)
                .await
                .map_err(|e| anyhow::anyhow!("[metrics] listen = {listen:?}: {e}"))?,
        ),
    };
    let proxy = Proxy::start_at(config, Some(addr)).await?;
    if let Some(path) = path {
        proxy.set_config_path(path);
    }
    // The next instance takes the socket over from here; the previous one (if this one took
    // it over) stops accepting once this one does.
    if let Some(path) = &handover {
        let unix = crate::handover::listen(path)
            .map_err(|e| anyhow::anyhow!("[proxy] handover = {}: {e}", path.display()))?;
        let socket = std::os::fd::AsFd::as_fd(&listener).try_clone_to_owned()?;
        tokio::spawn(crate::handover::serve(unix, socket, proxy.clone()));
    }
    let took_over = predecessor.is_some();
    if let Some(p) = predecessor {
        if let Err(e) = p.go(&proxy).await {
            tracing::warn!(error = %e, "handover: telling the previous instance to drain failed; it serves on");
        }
    }
    tracing::info!(%addr, took_over, "pgtenant listening");
    let report_stop = CancellationToken::new();
    let usage = tokio::spawn(crate::report::flush_usage(proxy.clone(), report_stop.clone()));
    tokio::spawn(crate::report::log_stats(proxy.clone(), report_stop.clone()));
    if let Some(listener) = metrics_listener {
        tracing::info!(addr = %listener.local_addr()?, "metrics listening");
        tokio::spawn(crate::admin::http::metrics::serve(listener, proxy.clone(), report_stop.clone()));
    }
    // The admin API answers through the drain (readyz says 503 then) and stops once the
    // proxy has drained; it then lets the requests in flight finish.
    let admin_stop = CancellationToken::new();
    let admin = match admin_listener {
        Some(listener) => {
            let state = crate::admin::http::AdminState::new(proxy.clone(), &proxy.config())?;
            tracing::info!(addr = %listener.local_addr()?, "admin API listening");
            Some(tokio::spawn(crate::admin::http::serve(listener, state, admin_stop.clone())))
        }
        None => None,
    };
    let drain = proxy.shutdown.drain.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("signal received");
        drain.cancel();
    });
    // SIGQUIT: a fast shutdown (as PostgreSQL's): every client gets 57P01 now, without
    // waiting for its transaction; the process still ends cleanly.
    let quit = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::quit())
        .map_err(|e| anyhow::anyhow!("cannot install the SIGQUIT handler: {e}"))?;
    let shutdown = proxy.shutdown.clone();
    tokio::spawn(async move {
        let mut quit = quit;
        if quit.recv().await.is_some() {
            tracing::info!("SIGQUIT: fast shutdown, closing every client now");
            shutdown.drain.cancel();
            shutdown.force.cancel();
        }
    });
    tokio::spawn(reload_on_hangup(hup, Arc::downgrade(&proxy)));
    let served = proxy.clone().serve(listener).await;
    admin_stop.cancel();
    if let Some(admin) = admin {
        // A lifecycle operation in flight gets the shutdown timeout to finish.
        match tokio::time::timeout(secs(proxy.config().proxy.shutdown_timeout), admin).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::error!(error = %e, "admin API failed"),
            Ok(Err(e)) => tracing::error!(error = %e, "admin API task failed"),
            Err(_) => tracing::warn!("admin API: requests still running at the shutdown timeout"),
        }
    }
    // Sessions are over: the usage they recorded is complete, and flushed now.
    report_stop.cancel();
    let _ = usage.await;
    served?;
    Ok(())
}

/// SIGHUP re-reads the configuration file and applies what can change live
/// ([`crate::reload`]); an invalid file is refused with the reason and the running
/// configuration kept. It never ends the process.
async fn reload_on_hangup(mut hup: tokio::signal::unix::Signal, proxy: std::sync::Weak<Proxy>) {
    while hup.recv().await.is_some() {
        let Some(proxy) = proxy.upgrade() else { return };
        match crate::reload::reload(&proxy).await {
            Ok(report) => {
                tracing::info!(%report, "SIGHUP: configuration reloaded");
                for setting in &report.restart_needed {
                    tracing::warn!(setting, "SIGHUP: changed in the file, but only a restart applies it");
                }
            }
            Err(crate::reload::ReloadError::NoFile) => {
                // Started without a file (`demo`, tests): the certificates can still renew.
                if let Some(tls) = &proxy.tls {
                    match tls.reload() {
                        Ok(()) => tracing::info!("SIGHUP: TLS certificates reloaded"),
                        Err(e) => {
                            tracing::error!(error = %e, "SIGHUP: TLS reload failed; keeping the previous certificates")
                        }
                    }
                } else {
                    tracing::info!("SIGHUP: nothing to reload (no configuration file)");
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "SIGHUP: reload refused; the running configuration is kept")
            }
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
