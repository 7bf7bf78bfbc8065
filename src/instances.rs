//! The instance registry: the pgtenant instances serving one control database know each
//! other through `pgtenant.instances`. Each registers at start (taking a short `slot` number
//! that its cancel keys carry), heartbeats every `heartbeat_interval`, removes rows stale
//! for more than [`EXPIRY_HEARTBEATS`] intervals, and deregisters once it has drained (it
//! stays registered, marked draining, while clients remain, so cancels still reach it). The live
//! peers are cached here (refreshed at every heartbeat) so that a CancelRequest for another
//! instance's key is forwarded to that instance's advertised address (`crate::cancel`).
//!
//! The heartbeat also carries the service-wide caps' leases ([`crate::leases`]): it reports
//! the view of the registry this instance applied to its shares and reads every row, so a
//! join or a leave is settled in a few heartbeats with no other statement. While any view is
//! unsettled the heartbeat runs four times as often.
//!
//! While the control database is unreachable the last cache and the last shares stay in use;
//! the heartbeat reconnects and, if another instance expired this one meanwhile, registers
//! again (keeping its slot when still free) as a newcomer: no shares until settled again.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

use crate::catalog::link::ControlLink;
use crate::catalog::store_instances::{self as store, InstanceRow};
use crate::config::{secs, Config};
use crate::leases::{Leases, Shares};

/// A row whose heartbeat is older than this many intervals is stale.
pub const EXPIRY_HEARTBEATS: f64 = 3.0;

/// How long forwarding a cancel to a peer may take (connect and write).
const FORWARD_TIMEOUT: Duration = Duration::from_secs(2);

/// This instance in the registry, and the cache of its live peers.
pub struct Instances {
    link: ControlLink,
    /// The registry's own control-database connection (heartbeats, listings), reopened
    /// after an error; not the catalog's pool, so lookups never wait behind a heartbeat.
    db: tokio::sync::Mutex<Option<tokio_postgres::Client>>,
    id: String,
    advertised_addr: String,
    /// The slot this instance's new cancel keys carry; changes only if the control database
    /// lost the row and the old slot was taken meanwhile.
    slot: AtomicU16,
    interval: Duration,
    /// Live peers' advertised addresses by slot (this instance included).
    peers: RwLock<HashMap<u16, String>>,
    /// When a cancel for an unknown slot last made the cache reload: at most one such query
    /// per [`UNKNOWN_SLOT_REFRESH`], so CancelRequests with made-up keys cannot turn into a
    /// stream of control-database queries.
    last_on_demand: std::sync::Mutex<Option<Instant>>,
    /// Draining: no longer accepting, still registered while clients remain.
    draining: AtomicBool,
    /// This instance's leases on the service-wide caps (changed by heartbeats only)...
    leases: std::sync::Mutex<Leases>,
    /// ...and the limits they give, as sessions read them.
    shares: Arc<Shares>,
    /// Set once this instance has left the registry: no heartbeat registers it again.
    left: std::sync::atomic::AtomicBool,
}

/// See [`Instances::owner`].
const UNKNOWN_SLOT_REFRESH: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    #[error("control database: {0}")]
    Db(#[from] tokio_postgres::Error),
    #[error("[catalog] url: {0}")]
    Url(String),
}

impl Instances {
    /// Registers this instance. `listen` is the bound address, advertised unless
    /// `[proxy] advertise` says otherwise.
    pub async fn register(config: &Config, listen: SocketAddr) -> Result<Arc<Instances>, InstanceError> {
        let link = ControlLink::parse(&config.catalog.url).map_err(InstanceError::Url)?;
        let p = &config.proxy;
        let id = match p.instance_id.as_str() {
            "" => format!("{:016x}", rand::random::<u64>()),
            id => id.to_owned(),
        };
        let advertised_addr = match p.advertise.as_str() {
            "" => listen.to_string(),
            a => a.to_owned(),
        };
        if p.advertise.is_empty() && listen.ip().is_unspecified() {
            tracing::warn!(%listen, "[proxy] advertise is not set and the listen address is unspecified: peers cannot forward cancel requests here; set [proxy] advertise");
        }
        let me = Instances {
            link,
            db: tokio::sync::Mutex::new(None),
            id,
            advertised_addr,
            slot: AtomicU16::new(0),
            interval: secs(p.heartbeat_interval),
            peers: RwLock::new(HashMap::new()),
            last_on_demand: std::sync::Mutex::new(None),
            draining: AtomicBool::new(false),
            leases: std::sync::Mutex::new(Leases::new(0)),
            shares: Shares::none(),
            left: std::sync::atomic::AtomicBool::new(false),
        };
        me.register_now(None).await?;
        // Report the view read by the first heartbeat with the second: alone, that settles
        // the shares before the first client; with peers, see `wait_settled`.
        me.beat().await?;
        me.beat().await?;
        tracing::info!(id = %me.id, slot = me.slot(), advertise = %me.advertised_addr, "registered in the instance registry");
        Ok(Arc::new(me))
    }

    /// Heartbeats fast until the peers have made room for this instance (it is settled), at
    /// most one expiry window; `pgtenant serve` does this before it serves, so that clients
    /// queue in the listen backlog instead of meeting a share of nothing.
    pub async fn wait_settled(&self) {
        let wait_until = Instant::now() + self.interval.mul_f64(EXPIRY_HEARTBEATS);
        while !self.settled() && Instant::now() < wait_until {
            tokio::time::sleep(self.interval / 4).await;
            if let Err(e) = self.beat().await {
                tracing::debug!(error = %e, "heartbeat while waiting for a share failed");
            }
        }
        if !self.settled() {
            tracing::warn!("peers have not made room yet: starting with no share of the service-wide caps");
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The `host:port` peers forward this instance's cancels to.
    pub fn advertised_addr(&self) -> &str {
        &self.advertised_addr
    }

    /// Whether this instance has stopped accepting and is waiting for its clients to leave.
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// This instance has stopped accepting: it stays registered, marked draining (its
    /// heartbeats say so to its peers: `SHOW INSTANCES`, `GET /instances`), until
    /// [`Instances::leave`].
    pub fn start_draining(&self) {
        if !self.draining.swap(true, Ordering::Relaxed) {
            tracing::info!("draining: staying in the instance registry until the last client leaves");
        }
    }

    /// The slot new cancel keys carry (1..=1023).
    pub fn slot(&self) -> u16 {
        self.slot.load(Ordering::Relaxed)
    }

    /// This instance's limits under the service-wide caps.
    pub fn shares(&self) -> &Arc<Shares> {
        &self.shares
    }

    fn lock_leases(&self) -> std::sync::MutexGuard<'_, Leases> {
        self.leases.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether this instance holds its full shares of the registry it last saw.
    pub fn settled(&self) -> bool {
        self.lock_leases().settled()
    }

    fn expiry_secs(&self) -> f64 {
        self.interval.as_secs_f64() * EXPIRY_HEARTBEATS
    }

    /// Runs `f` on the registry's connection, opening it if needed; an error drops it so the
    /// next call reconnects.
    async fn with_db<T, F>(&self, f: F) -> Result<T, InstanceError>
    where
        F: AsyncFnOnce(&mut tokio_postgres::Client) -> Result<T, tokio_postgres::Error>,
    {
        let mut guard = self.db.lock().await;
        let mut db = match guard.take() {
            Some(db) => db,
            None => self.link.open().await?,
        };
        let r = f(&mut db).await;
        if r.is_ok() {
            *guard = Some(db);
        }
        Ok(r?)
    }

    async fn register_now(&self, prefer: Option<u16>) -> Result<(), InstanceError> {
        let (id, addr) = (&self.id, &self.advertised_addr);
        let prefer = prefer.map(i32::from);
        let slot = self
            .with_db(async |db| store::register(db, id, addr, env!("CARGO_PKG_VERSION"), prefer).await)
            .await?;
        let slot = u16::try_from(slot).unwrap_or(0);
        // A newcomer: its peers may have settled on views without it, so it holds nothing
        // until it has settled on one with it.
        let fresh = Leases::new(slot);
        let bounds = fresh.bounds();
        *self.lock_leases() = fresh;
        self.shares.set(bounds);
        let before = self.slot.swap(slot, Ordering::Relaxed);
        if before != 0 && before != slot {
            tracing::warn!(before, now = slot, "registered again under another slot: cancels for keys issued before reach this instance only directly");
        }
        Ok(())
    }

    /// One heartbeat: record it with the view applied, remove stale rows, read every row
    /// in one round trip; then settle the leases on what it read and refresh the peers
    /// cache. Registers again if the row was expired meanwhile.
    async fn beat(&self) -> Result<(), InstanceError> {
        if self.left.load(Ordering::Acquire) {
            return Ok(());
        }
        let (seen, settled) = {
            let l = self.lock_leases();
            (l.seen(), l.settled())
        };
        let beat = store::Beat {
            id: &self.id,
            seen: &seen,
            settled,
            draining: self.draining(),
            expiry_secs: self.expiry_secs(),
            gap_secs: 2.0 * self.interval.as_secs_f64(),
        };
        match self.with_db(async |db| store::beat(db, &beat).await).await? {
            Some(rows) => {
                // This statement's own report is not in its snapshot: put it in.
                let view: Vec<(u16, &str)> = rows
                    .iter()
                    .filter_map(|r| {
                        let seen = if r.id == self.id { seen.as_str() } else { r.seen.as_str() };
                        Some((u16::try_from(r.slot).ok()?, seen))
                    })
                    .collect();
                let mut leases = self.lock_leases();
                if leases.observe(&view) {
                    let (bounds, settled) = (leases.bounds(), leases.settled());
                    drop(leases);
                    tracing::debug!(?bounds, settled, "shares of the service-wide caps changed");
                    self.shares.set(bounds);
                } else {
                    drop(leases);
                }
                let expiry = self.expiry_secs();
                self.cache(
                    rows.into_iter().filter(|r| r.heartbeat_age <= expiry || r.id == self.id).collect(),
                );
                Ok(())
            }
            None => {
                tracing::warn!("this instance's registry row had expired: registering again");
                self.register_now(Some(self.slot())).await?;
                self.refresh().await
            }
        }
    }

    /// Reloads the peers cache from the live rows.
    async fn refresh(&self) -> Result<(), InstanceError> {
        let rows = self.live().await?;
        self.cache(rows);
        Ok(())
    }

    fn cache(&self, rows: Vec<InstanceRow>) {
        let peers =
            rows.into_iter().filter_map(|r| Some((u16::try_from(r.slot).ok()?, r.advertised_addr))).collect();
        *self.peers.write().unwrap_or_else(|e| e.into_inner()) = peers;
    }

    /// The live instances (this one included), by slot: `SHOW INSTANCES`, `GET /instances`.
    pub async fn live(&self) -> Result<Vec<InstanceRow>, InstanceError> {
        let expiry = self.expiry_secs();
        self.with_db(async |db| store::live(db, expiry).await).await
    }

    /// Heartbeats until `stop` fires, then deregisters.
    pub fn spawn_heartbeat(self: &Arc<Self>, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
        let me: Weak<Instances> = Arc::downgrade(self);
        let interval = self.interval;
        tokio::spawn(async move {
            let mut failing = false;
            loop {
                // Faster while a view is unsettled (a peer joining or leaving), so shares
                // follow within about an interval.
                let pause = match me.upgrade() {
                    Some(me) if !me.settled() => interval / 4,
                    Some(_) => interval,
                    None => return,
                };
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(pause) => {}
                }
                let Some(me) = me.upgrade() else { return };
                match me.beat().await {
                    Ok(()) if failing => {
                        failing = false;
                        tracing::info!("instance registry reachable again");
                    }
                    Ok(()) => {}
                    // Logged once per outage; the last peers cache stays in use.
                    Err(e) if !failing => {
                        failing = true;
                        tracing::warn!(error = %e, "instance heartbeat failed: keeping the last known peers");
                    }
                    Err(_) => {}
                }
            }
            if let Some(me) = me.upgrade() {
                me.leave().await;
            }
        })
    }

    /// Leaves the registry for good (once; later calls do nothing): the row is removed and
    /// no heartbeat registers it again. Called once the instance has drained, so that its
    /// peers take over its shares only when it holds nothing.
    pub async fn leave(&self) {
        if !self.left.swap(true, Ordering::AcqRel) {
            self.deregister().await;
        }
    }

    /// Removes this instance's row, so peers stop forwarding here at once.
    pub async fn deregister(&self) {
        let id = &self.id;
        match self.with_db(async |db| store::deregister(db, id).await).await {
            Ok(_) => tracing::info!(id = %self.id, "deregistered from the instance registry"),
            Err(e) => tracing::warn!(error = %e, "deregistering failed: the row expires by itself"),
        }
    }

    /// The advertised address of the live instance holding `slot`, if any: from the cache,
    /// else (a peer that joined since the last heartbeat) from the control database, at
    /// most once per [`UNKNOWN_SLOT_REFRESH`].
    pub async fn owner(&self, slot: u16) -> Option<String> {
        if let Some(a) = self.peers.read().unwrap_or_else(|e| e.into_inner()).get(&slot) {
            return Some(a.clone());
        }
        {
            let mut last = self.last_on_demand.lock().unwrap_or_else(|e| e.into_inner());
            if last.is_some_and(|t| t.elapsed() < UNKNOWN_SLOT_REFRESH) {
                return None;
            }
            *last = Some(Instant::now());
        }
        if let Err(e) = self.refresh().await {
            tracing::debug!(error = %e, "refreshing the instance registry for a cancel failed");
        }
        self.peers.read().unwrap_or_else(|e| e.into_inner()).get(&slot).cloned()
    }
}

/// Sends `packet` (a whole CancelRequest) to a peer instance and closes. Peers take a
/// CancelRequest without TLS, as PostgreSQL does.
pub async fn forward_cancel(addr: &str, packet: &[u8]) -> std::io::Result<()> {
    let send = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream.write_all(packet).await?;
        stream.shutdown().await
    };
    tokio::time::timeout(FORWARD_TIMEOUT, send)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "forwarding a cancel timed out"))?
}
