//! The listener: accept loop, the global client cap, and shutdown (stop accepting, let
//! transactions finish up to a timeout, then close everyone with 57P01).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cancel::CancelRegistry;
use crate::catalog::{Catalog, StaticCatalog};
use crate::config::{secs, Config};
use crate::pool::PoolManager;

/// Shutdown signals every session watches.
#[derive(Clone, Default)]
pub struct Shutdown {
    /// Stop taking work: idle clients are closed at once, busy ones when their transaction
    /// (transaction mode) or current query (session mode) ends.
    pub drain: CancellationToken,
    /// Close every client now.
    pub force: CancellationToken,
}

/// What every session shares.
pub struct Proxy {
    pub config: Arc<Config>,
    pub catalog: Arc<dyn Catalog>,
    pub pools: Arc<PoolManager>,
    pub cancel: Arc<CancelRegistry>,
    pub shutdown: Shutdown,
    clients: Arc<Semaphore>,
}

impl Proxy {
    /// A proxy over the static catalog of `config`. Must run inside a Tokio runtime (it
    /// starts the pool maintenance task).
    pub fn new(config: Config) -> Arc<Proxy> {
        let catalog = Arc::new(StaticCatalog::from_config(&config));
        Proxy::with_catalog(config, catalog)
    }

    pub fn with_catalog(config: Config, catalog: Arc<dyn Catalog>) -> Arc<Proxy> {
        let pools = PoolManager::new(&config.pool);
        pools.spawn_maintenance();
        Arc::new(Proxy {
            clients: Arc::new(Semaphore::new(config.proxy.max_client_conn)),
            config: Arc::new(config),
            catalog,
            pools,
            cancel: CancelRegistry::new(),
            shutdown: Shutdown::default(),
        })
    }

    /// Client connections open right now.
    pub fn client_count(&self) -> usize {
        self.config.proxy.max_client_conn - self.clients.available_permits()
    }

    /// Accepts clients until shutdown starts, then drains. Returns once every session ended.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) -> std::io::Result<()> {
        let tracker = TaskTracker::new();
        let drain = self.shutdown.drain.clone();
        loop {
            let (stream, peer) = tokio::select! {
                _ = drain.cancelled() => break,
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let permit = self.clients.clone().try_acquire_owned().ok();
            let proxy = self.clone();
            tracker.spawn(async move {
                crate::client::serve(stream, peer, proxy, permit).await;
            });
        }
        drop(listener);
        tracker.close();
        let grace = secs(self.config.proxy.shutdown_timeout);
        tracing::info!(
            clients = self.client_count(),
            ?grace,
            "shutting down: draining clients"
        );
        if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
            tracing::warn!(
                clients = self.client_count(),
                "shutdown timeout: closing remaining clients"
            );
            self.shutdown.force.cancel();
            tracker.wait().await;
        }
        self.pools.close_idle();
        tracing::info!("shutdown complete");
        Ok(())
    }
}

/// Binds the configured address and serves until SIGTERM or SIGINT.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let listener = TcpListener::bind(config.proxy.listen).await?;
    let addr: SocketAddr = listener.local_addr()?;
    let proxy = Proxy::new(config);
    tracing::info!(%addr, "pgtenant listening");
    let drain = proxy.shutdown.drain.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("signal received");
        drain.cancel();
    });
    proxy.serve(listener).await?;
    Ok(())
}

/// Resolves on SIGTERM or SIGINT.
pub async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
