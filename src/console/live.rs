//! The clients logged in now, as SHOW CLIENTS lists them and KILL_CLIENT finds them:
//! written at login and logout only, never per message. Each entry carries its session's
//! [`Signal`], through which the proxy's drain and force, a tenant's kick and KILL_CLIENT
//! reach the session.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::Waker;
use std::time::{Duration, Instant, SystemTime};

use dashmap::DashMap;

use crate::model::TenantId;

/// One logged-in client.
#[derive(Clone, Debug)]
pub struct ClientInfo {
    pub id: u64,
    pub tenant: TenantId,
    /// Shared with the session's meter (one copy per client).
    pub user: Arc<str>,
    pub addr: SocketAddr,
    pub connected_at: SystemTime,
    pub tls: bool,
    /// Ends this client's session (idle at once, busy at the end of its transaction).
    pub signal: Arc<Signal>,
    /// When the client started waiting for a server connection ([`now_us`]), 0 when it is
    /// not waiting: written by its meter at each checkout, read by SHOW POOLS and CLIENTS.
    pub wait: Arc<AtomicU64>,
}

impl ClientInfo {
    /// How long the client has been waiting for a server connection (None: not waiting).
    pub fn waiting_for(&self, now: u64) -> Option<Duration> {
        match self.wait.load(Ordering::Relaxed) {
            0 => None,
            since => Some(Duration::from_micros(now.saturating_sub(since))),
        }
    }
}

/// Signal bits, in priority order (the lowest is reported first): the proxy closes every
/// client now, the proxy drains, the session's tenant was kicked or KILL_CLIENT named it.
pub const FORCE: u8 = 1 << 0;
pub const DRAIN: u8 = 1 << 1;
pub const KICK: u8 = 1 << 2;
/// Not an end: the session's server socket may have become readable (raised through the
/// signal's [`Waker`], which the relay registers with that socket; taken, not sticky).
pub const SERVER_READ: u8 = 1 << 3;
/// Likewise for the session's client socket (raised through [`client_waker`]).
pub const CLIENT_READ: u8 = 1 << 4;

/// What ends one session besides its sockets: bits raised by whoever ends it, read by the
/// session with one load per wake-up (no lock, no future per signal, nothing per message).
/// One small allocation per session stands in for a future per cancellation token it used
/// to watch (and a child token for KILL_CLIENT).
pub struct Signal {
    raised: AtomicU8,
    /// The tenant's kick generation when the session was admitted: a tenant's kick reaches
    /// the sessions admitted before it only.
    admitted: u64,
    /// The session task's first waker (set by [`SignalReader`]): a task's waker stays the
    /// same as a rule, so a raise wakes it with two loads and no lock.
    first: OnceLock<Waker>,
    /// Whether the task's waker is another than `first` now: `other` holds it then.
    use_other: AtomicBool,
    other: Mutex<Option<Waker>>,
}

impl std::fmt::Debug for Signal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signal").field("raised", &self.raised.load(Ordering::Relaxed)).finish()
    }
}

impl Signal {
    pub fn new(admitted: u64) -> Arc<Signal> {
        Arc::new(Signal {
            raised: AtomicU8::new(0),
            admitted,
            first: OnceLock::new(),
            use_other: AtomicBool::new(false),
            other: Mutex::new(None),
        })
    }

    /// Raises `bits` and wakes the session if that raised any it did not have.
    pub fn raise(&self, bits: u8) {
        let before = self.raised.fetch_or(bits, Ordering::SeqCst);
        if before | bits != before {
            // Read after the bits are set (all four accesses sequentially consistent, as the
            // reader's in `SignalReader::set_task` and its loads of the bits): a reader that
            // chose its waker before its load of the bits is found here, one that chooses
            // later sees the bits.
            if !self.use_other.load(Ordering::SeqCst) {
                if let Some(w) = self.first.get() {
                    w.wake_by_ref();
                }
            } else if let Some(w) = self.other.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
                w.wake_by_ref();
            }
        }
    }

    pub fn admitted(&self) -> u64 {
        self.admitted
    }

    /// Clears `bit` (one that is taken, not sticky: [`SERVER_READ`]); whether it was raised.
    #[inline]
    pub fn take(&self, bit: u8) -> bool {
        // A load first: clear (the common case), no read-modify-write.
        self.raised.load(Ordering::SeqCst) & bit != 0
            && self.raised.fetch_and(!bit, Ordering::SeqCst) & bit != 0
    }
}

/// A [`Waker`] for the session's client socket: a wake-up raises [`CLIENT_READ`] on
/// `signal` and wakes the session's task (see [`Signal`]'s own `Wake`, for the server's).
pub fn client_waker(signal: &Arc<Signal>) -> Waker {
    Waker::from(Arc::new(ClientReadable(signal.clone())))
}

struct ClientReadable(Arc<Signal>);

impl std::task::Wake for ClientReadable {
    fn wake(self: Arc<Self>) {
        self.0.raise(CLIENT_READ);
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.raise(CLIENT_READ);
    }
}

/// The signal as a [`Waker`] for the session's server socket: a wake-up raises
/// [`SERVER_READ`] and wakes the session's task, so the relay knows which socket woke it and
/// polls the server's only then (see `Session::next_event`).
impl std::task::Wake for Signal {
    fn wake(self: Arc<Self>) {
        self.raise(SERVER_READ);
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.raise(SERVER_READ);
    }
}

/// One reader of a session's [`Signal`] (each bit is reported to it once). All readers of
/// one signal run in the session's task: they share the one waker slot.
pub struct SignalReader {
    shared: Arc<Signal>,
    reported: u8,
    /// The waker `shared` holds, to notice without a lock when the task's waker changes.
    task: Option<Waker>,
}

impl SignalReader {
    pub fn new(shared: Arc<Signal>) -> SignalReader {
        SignalReader { shared, reported: 0, task: None }
    }

    /// The first (lowest) bit of `mask` raised and not yet reported to this reader. A bit
    /// outside `mask` raised meanwhile is reported once a later call's mask includes it.
    #[inline]
    pub fn poll(&mut self, cx: &mut std::task::Context<'_>, mask: u8) -> Option<u8> {
        if !self.task.as_ref().is_some_and(|t| t.will_wake(cx.waker())) {
            self.set_task(cx.waker());
        }
        let fresh = self.shared.raised.load(Ordering::SeqCst) & mask & !self.reported;
        if fresh == 0 {
            return None;
        }
        let bit = fresh & fresh.wrapping_neg();
        self.reported |= bit;
        Some(bit)
    }

    /// The task's waker changed (or is seen for the first time): `shared` wakes the new one.
    #[cold]
    #[inline(never)]
    fn set_task(&mut self, waker: &Waker) {
        let w = waker.clone();
        let shared = &self.shared;
        if shared.first.get_or_init(|| w.clone()).will_wake(&w) {
            shared.use_other.store(false, Ordering::SeqCst);
        } else {
            *shared.other.lock().unwrap_or_else(|e| e.into_inner()) = Some(w.clone());
            shared.use_other.store(true, Ordering::SeqCst);
        }
        self.task = Some(w);
    }

    /// Waits until a bit of `mask` is raised.
    pub async fn raised(&mut self, mask: u8) -> u8 {
        std::future::poll_fn(|cx| match self.poll(cx, mask) {
            Some(bit) => std::task::Poll::Ready(bit),
            None => std::task::Poll::Pending,
        })
        .await
    }
}

/// Microseconds since the first call in this process, never 0 (0 means "not waiting").
pub fn now_us() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_micros()).unwrap_or(u64::MAX).max(1)
}

#[derive(Default)]
pub struct LiveClients {
    next: AtomicU64,
    clients: DashMap<u64, ClientInfo>,
}

impl LiveClients {
    /// Registers a client; it stays listed until the returned guard drops.
    pub fn register(self: &Arc<Self>, mut info: ClientInfo) -> LiveGuard {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        info.id = id;
        self.clients.insert(id, info);
        LiveGuard { id, registry: self.clone() }
    }

    pub fn list(&self) -> Vec<ClientInfo> {
        let mut v: Vec<ClientInfo> = self.clients.iter().map(|c| c.value().clone()).collect();
        v.sort_by_key(|c| c.id);
        v
    }

    /// Ends one client's session; false when no client has that id.
    pub fn kill(&self, id: u64) -> bool {
        self.clients.get(&id).map(|c| c.signal.raise(KICK)).is_some()
    }

    /// Raises `bits` on every listed session (the proxy's drain or force).
    pub fn raise_all(&self, bits: u8) {
        for c in self.clients.iter() {
            c.signal.raise(bits);
        }
    }

    /// Kicks the sessions of `tenant` admitted before its kick generation became
    /// `generation` (later ones are not affected).
    pub fn kick_tenant(&self, tenant: &TenantId, generation: u64) {
        for c in self.clients.iter() {
            if c.tenant == *tenant && c.signal.admitted() < generation {
                c.signal.raise(KICK);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.clients.len()
    }

    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }
}

/// Removes its client from the registry when the session ends.
pub struct LiveGuard {
    id: u64,
    registry: Arc<LiveClients>,
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.registry.clients.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Context;

    #[test]
    fn bits_are_reported_once_lowest_first_within_the_mask() {
        let signal = Signal::new(0);
        let mut r = SignalReader::new(signal.clone());
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert_eq!(r.poll(&mut cx, FORCE | DRAIN | KICK), None);
        signal.raise(KICK | DRAIN);
        // Outside the mask: not reported, and not lost.
        assert_eq!(r.poll(&mut cx, FORCE), None);
        signal.raise(FORCE);
        assert_eq!(r.poll(&mut cx, FORCE | DRAIN | KICK), Some(FORCE));
        assert_eq!(r.poll(&mut cx, FORCE | DRAIN | KICK), Some(DRAIN));
        assert_eq!(r.poll(&mut cx, FORCE | DRAIN | KICK), Some(KICK));
        assert_eq!(r.poll(&mut cx, FORCE | DRAIN | KICK), None);
        // A second reader of the same signal sees every bit itself.
        let mut other = SignalReader::new(signal);
        assert_eq!(other.poll(&mut cx, FORCE), Some(FORCE));
    }

    /// A waker that counts its wake-ups.
    struct Count(AtomicU64);

    impl std::task::Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A raise wakes the waker the reader saw last, whether it is the task's first one
    /// (no lock) or another (the locked slot), and back again.
    #[test]
    fn a_raise_wakes_the_readers_current_waker() {
        let signal = Signal::new(0);
        let mut r = SignalReader::new(signal.clone());
        let (a, b) = (Arc::new(Count(AtomicU64::new(0))), Arc::new(Count(AtomicU64::new(0))));
        let (wa, wb) = (Waker::from(a.clone()), Waker::from(b.clone()));
        let woken = || (a.0.load(Ordering::SeqCst), b.0.load(Ordering::SeqCst));
        assert_eq!(r.poll(&mut Context::from_waker(&wa), FORCE), None);
        signal.raise(CLIENT_READ);
        assert_eq!(woken(), (1, 0));
        assert!(signal.take(CLIENT_READ));
        assert_eq!(r.poll(&mut Context::from_waker(&wb), FORCE), None);
        signal.raise(CLIENT_READ);
        assert_eq!(woken(), (1, 1), "the second waker, not the first");
        assert!(signal.take(CLIENT_READ));
        assert_eq!(r.poll(&mut Context::from_waker(&wa), FORCE), None);
        signal.raise(SERVER_READ);
        // Raised already: no second wake-up.
        signal.raise(SERVER_READ);
        assert_eq!(woken(), (2, 1), "back to the first");
    }

    #[tokio::test]
    async fn a_raise_wakes_the_waiting_task() {
        let signal = Signal::new(0);
        let mut r = SignalReader::new(signal.clone());
        tokio::spawn(async move {
            tokio::task::yield_now().await;
            signal.raise(DRAIN);
        });
        let got = tokio::time::timeout(Duration::from_secs(5), r.raised(FORCE | DRAIN)).await.ok();
        assert_eq!(got, Some(DRAIN));
    }

    #[tokio::test]
    async fn the_signal_as_a_socket_waker_raises_server_read_once_and_wakes_the_task() {
        let signal = Signal::new(0);
        let mut r = SignalReader::new(signal.clone());
        // A real socket's read registers the signal as its waker; the peer's bytes wake it.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let mut peer =
            tokio::net::TcpStream::connect(listener.local_addr().expect("addr")).await.expect("connect");
        let (mut sock, _) = listener.accept().await.expect("accept");
        let socket_waker = Waker::from(signal.clone());
        let mut buf = [0u8; 8];
        let mut rb = tokio::io::ReadBuf::new(&mut buf);
        let mut own = std::task::Context::from_waker(&socket_waker);
        let first = tokio::io::AsyncRead::poll_read(std::pin::Pin::new(&mut sock), &mut own, &mut rb);
        assert!(first.is_pending(), "nothing sent yet");
        assert!(!signal.take(SERVER_READ));
        tokio::spawn(async move {
            tokio::task::yield_now().await;
            tokio::io::AsyncWriteExt::write_all(&mut peer, b"x").await.expect("write");
            peer
        });
        // The task waits on its reader (which keeps the signal's task waker current) and is
        // woken by the socket's wake-up alone.
        let woken = std::future::poll_fn(|cx| {
            assert_eq!(r.poll(cx, FORCE | DRAIN | KICK), None, "a socket's wake-up ends nothing");
            if signal.take(SERVER_READ) {
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }
        });
        tokio::time::timeout(Duration::from_secs(5), woken).await.expect("woken by the socket");
        assert!(!signal.take(SERVER_READ), "taken once");
        let mut rb = tokio::io::ReadBuf::new(&mut buf);
        let second = tokio::io::AsyncRead::poll_read(std::pin::Pin::new(&mut sock), &mut own, &mut rb);
        assert!(matches!(second, std::task::Poll::Ready(Ok(()))) && rb.filled() == b"x");
    }

    fn info(registry: &Arc<LiveClients>, tenant: &str, admitted: u64) -> (LiveGuard, Arc<Signal>) {
        let signal = Signal::new(admitted);
        let guard = registry.register(ClientInfo {
            id: 0,
            tenant: TenantId::parse(tenant).expect("tenant id"),
            user: "app".into(),
            addr: "127.0.0.1:1".parse().expect("addr"),
            connected_at: SystemTime::now(),
            tls: false,
            signal: signal.clone(),
            wait: Arc::default(),
        });
        (guard, signal)
    }

    #[test]
    fn a_tenant_kick_reaches_its_earlier_sessions_only() {
        let registry = Arc::new(LiveClients::default());
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let (_a, before) = info(&registry, "acme", 0);
        let (_b, later) = info(&registry, "acme", 1);
        let (c, other) = info(&registry, "globex", 0);
        registry.kick_tenant(&TenantId::parse("acme").expect("tenant id"), 1);
        let mut raised = |s: &Arc<Signal>| SignalReader::new(s.clone()).poll(&mut cx, KICK);
        assert_eq!(raised(&before), Some(KICK));
        assert_eq!(raised(&later), None);
        assert_eq!(raised(&other), None);
        registry.raise_all(DRAIN);
        assert_eq!(SignalReader::new(other.clone()).poll(&mut cx, DRAIN), Some(DRAIN));
        assert!(registry.kill(c.id));
        assert_eq!(SignalReader::new(other).poll(&mut cx, KICK), Some(KICK));
    }
}
