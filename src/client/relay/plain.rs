//! Reads and writes of a plain TCP socket (client or server) through its readiness directly:
//! `try_read_buf` / `try_write` when tokio already knows the socket ready, and a registration
//! of the waker only when it is not. `AsyncRead::poll_read` on a `TcpStream` goes through
//! `poll_ready` first on every call (the waker's registration check, a `ReadBuf` over the
//! buffer's room), about 150 instructions a read that the relay, woken for that very socket,
//! does not need. Kept as tokio keeps them: the task's cooperative budget (one unit per
//! operation, so a session with bytes always ready still yields), and the socket's readiness
//! cleared after a short read or write (the kernel had no more: the next attempt waits for
//! the next edge instead of costing a syscall that would return EAGAIN), as it stood before
//! the attempt (see [`moved`]). TLS and Unix
//! sockets take the `AsyncRead`/`AsyncWrite` path as before.

use std::io;
use std::task::{ready, Context, Poll};

use std::pin::Pin;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, Interest};
use tokio::net::TcpStream;
use tokio::task::coop;

use crate::client::stream::ClientStream;
use crate::pool::ServerStream;

/// A socket that may be plain TCP.
pub(crate) trait PlainTcp {
    /// The TCP socket, when nothing (TLS) stands between it and the protocol's bytes.
    fn plain_tcp(&self) -> Option<&TcpStream> {
        None
    }
}

impl PlainTcp for ClientStream {
    #[inline]
    fn plain_tcp(&self) -> Option<&TcpStream> {
        match self {
            ClientStream::Plain(tcp) => Some(tcp),
            ClientStream::Tls(_) => None,
        }
    }
}

impl PlainTcp for ServerStream {
    #[inline]
    fn plain_tcp(&self) -> Option<&TcpStream> {
        match self {
            ServerStream::Tcp(tcp) => Some(tcp),
            ServerStream::Unix(_) | ServerStream::Tls(_) => None,
        }
    }
}

/// In-memory streams (tests) take the `AsyncRead`/`AsyncWrite` path.
impl PlainTcp for tokio::io::DuplexStream {}

/// Runs `op` (a read or write returning how much it moved, of `len` possible) under the
/// socket's readiness for `interest`, and forgets that readiness after a short one, as tokio
/// does: `try_io` clears it when its closure reports `WouldBlock`, and only as it read it
/// before `op` ran, so a readiness event the driver (another worker) recorded meanwhile
/// stays. `Ok(0)` with nothing possible is returned as is.
#[inline]
fn moved(
    tcp: &TcpStream,
    interest: Interest,
    len: usize,
    op: impl FnOnce() -> io::Result<usize>,
) -> io::Result<usize> {
    let mut n = 0;
    let res = tcp.try_io(interest, || {
        n = op()?;
        if n > 0 && n < len {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    });
    match res {
        // The short move's own WouldBlock (n is set only by a move that succeeded).
        Err(_) if n > 0 => Ok(n),
        other => other,
    }
}

/// Reads into `buf`'s room (as `tokio_util::io::poll_read_buf`: a full buffer gets 64 bytes
/// more), or registers `cx`'s waker for the socket's next readiness.
pub(crate) fn poll_read(
    tcp: &TcpStream,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
) -> Poll<io::Result<usize>> {
    let coop = ready!(coop::poll_proceed(cx));
    loop {
        let room = buf.capacity() - buf.len();
        match moved(tcp, Interest::READABLE, room, || tcp.try_read_buf(buf)) {
            Ok(n) => {
                coop.made_progress();
                return Poll::Ready(Ok(n));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Poll::Ready(Err(e)),
        }
        // Not ready (the readiness was cleared by the attempt): the waker is registered, or
        // the socket turned ready meanwhile and is tried again.
        ready!(tcp.poll_read_ready(cx))?;
    }
}

/// [`poll_read`] for a socket the caller last read itself (not woken for it since): that
/// read was short, so its readiness was cleared, and the waker is registered first, without
/// the attempt that would find it cleared (a budget unit, the readiness check, the
/// `WouldBlock` made and matched: ~100 instructions a registration). After a read that
/// filled the buffer (the readiness kept) or on a socket new to the caller, the readiness
/// says ready and the read is made as by [`poll_read`].
#[inline]
pub(crate) fn poll_read_again(
    tcp: &TcpStream,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
) -> Poll<io::Result<usize>> {
    ready!(tcp.poll_read_ready(cx))?;
    poll_read(tcp, cx, buf)
}

/// Writes what the socket takes of `bytes`, or registers `cx`'s waker for its next
/// writability.
pub(crate) fn poll_write(tcp: &TcpStream, cx: &mut Context<'_>, bytes: &[u8]) -> Poll<io::Result<usize>> {
    let coop = ready!(coop::poll_proceed(cx));
    loop {
        match moved(tcp, Interest::WRITABLE, bytes.len(), || send(tcp, bytes)) {
            Ok(n) => {
                coop.made_progress();
                return Poll::Ready(Ok(n));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Poll::Ready(Err(e)),
        }
        ready!(tcp.poll_write_ready(cx))?;
    }
}

/// One `send(2)` of `bytes`, made by rustix's raw system call rather than std's (glibc's
/// `send`): pgtenant has threads, so glibc wraps each of its `send`s as a cancellation point
/// (two atomic read-modify-writes around the call, ~80 instructions a send by callgrind) that
/// a single-threaded PgBouncer skips. MSG_NOSIGNAL as std's: a closed peer is an error, never
/// a SIGPIPE.
#[inline]
fn send(tcp: &TcpStream, bytes: &[u8]) -> io::Result<usize> {
    Ok(rustix::net::send(tcp, bytes, rustix::net::SendFlags::NOSIGNAL)?)
}

/// [`poll_read`] on a plain TCP socket, `tokio_util::io::poll_read_buf` on any other.
#[inline]
pub(crate) fn poll_read_any<R: AsyncRead + Unpin + PlainTcp>(
    stream: &mut R,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
) -> Poll<io::Result<usize>> {
    match stream.plain_tcp() {
        Some(tcp) => poll_read(tcp, cx, buf),
        None => tokio_util::io::poll_read_buf(Pin::new(stream), cx, buf),
    }
}

/// [`poll_write`] on a plain TCP socket, `AsyncWrite::poll_write` on any other.
#[inline]
pub(crate) fn poll_write_any<W: AsyncWrite + Unpin + PlainTcp>(
    stream: &mut W,
    cx: &mut Context<'_>,
    bytes: &[u8],
) -> Poll<io::Result<usize>> {
    match stream.plain_tcp() {
        Some(tcp) => poll_write(tcp, cx, bytes),
        None => Pin::new(stream).poll_write(cx, bytes),
    }
}

/// Writes what the socket takes of `bytes` now, without a waker: `None` when it takes
/// nothing (full), for a writer that then waits its own way.
#[inline]
pub(crate) fn write_now<W: AsyncWrite + Unpin + PlainTcp>(
    stream: &mut W,
    bytes: &[u8],
) -> Option<io::Result<usize>> {
    use futures_util::FutureExt;
    let Some(tcp) = stream.plain_tcp() else {
        return tokio::io::AsyncWriteExt::write(stream, bytes).now_or_never();
    };
    match moved(tcp, Interest::WRITABLE, bytes.len(), || send(tcp, bytes)) {
        Ok(n) => Some(Ok(n)),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
        Err(e) => Some(Err(e)),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::{Wake, Waker};
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// A waker that counts its wake-ups (as the session's Signal raises a bit).
    #[derive(Default)]
    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let a = TcpStream::connect(l.local_addr().expect("addr")).await.expect("connect");
        let (b, _) = l.accept().await.expect("accept");
        (a, b)
    }

    /// Waits (up to 5 s) until `count` has been woken more than `seen` times.
    async fn woken(count: &Count, seen: usize) {
        for _ in 0..500 {
            if count.0.load(Ordering::SeqCst) > seen {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the registered waker was never woken (a lost wake-up)");
    }

    /// After a short read (the readiness cleared), bytes that arrive later wake the waker that
    /// was registered, and are read; the end of stream after them is seen, not waited for.
    /// A socket read "first" with [`poll_read`], then `read` again: pending (the read was
    /// short, the waker registered); "second" wakes it and `read` takes it. Returns the peer,
    /// the socket, the waker's count and the buffer (`firstsecond`).
    async fn short_read_then_woken(read: Read) -> (TcpStream, TcpStream, Arc<Count>, BytesMut) {
        let (mut peer, tcp) = pair().await;
        let count = Arc::new(Count::default());
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let mut buf = BytesMut::with_capacity(4096);
        peer.write_all(b"first").await.expect("write");
        tcp.readable().await.expect("readable");
        assert!(matches!(poll_read(&tcp, &mut cx, &mut buf), Poll::Ready(Ok(5))));
        // Short: the readiness is gone, the next attempt registers the waker.
        assert!(read(&tcp, &mut cx, &mut buf).is_pending());
        let seen = count.0.load(Ordering::SeqCst);
        peer.write_all(b"second").await.expect("write");
        woken(&count, seen).await;
        assert!(matches!(read(&tcp, &mut cx, &mut buf), Poll::Ready(Ok(6))));
        assert_eq!(&buf[..], b"firstsecond");
        (peer, tcp, count, buf)
    }

    type Read = fn(&TcpStream, &mut Context<'_>, &mut BytesMut) -> Poll<io::Result<usize>>;

    #[tokio::test]
    async fn a_short_read_then_later_bytes_wake_the_registered_waker() {
        let (mut peer, tcp, count, mut buf) = short_read_then_woken(poll_read).await;
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        peer.write_all(b"last").await.expect("write");
        peer.shutdown().await.expect("shutdown");
        drop(peer);
        let seen = count.0.load(Ordering::SeqCst);
        if poll_read(&tcp, &mut cx, &mut buf).is_pending() {
            woken(&count, seen).await;
        }
        for _ in 0..2 {
            loop {
                match poll_read(&tcp, &mut cx, &mut buf) {
                    Poll::Ready(Ok(0)) => break,
                    Poll::Ready(Ok(_)) => continue,
                    Poll::Ready(Err(e)) => panic!("{e}"),
                    Poll::Pending => tokio::time::sleep(Duration::from_millis(5)).await,
                }
            }
        }
        assert_eq!(&buf[..], b"firstsecondlast", "the end is seen, and seen again");
    }

    /// After the caller's own short read, `poll_read_again` registers the waker without an
    /// attempt, and bytes that arrive later wake it and are read; after a read that filled
    /// the buffer (readiness kept), it reads what is left at once.
    #[tokio::test]
    async fn read_again_registers_after_a_short_read_and_reads_after_a_full_one() {
        let (mut peer, tcp, count, _) = short_read_then_woken(poll_read_again).await;
        let waker = Waker::from(count);
        let mut cx = Context::from_waker(&waker);
        // A read that fills the buffer keeps the readiness: the rest is read, not waited for.
        let mut small = BytesMut::with_capacity(8);
        peer.write_all(&[9u8; 64]).await.expect("write");
        tcp.readable().await.expect("readable");
        let full = small.capacity();
        assert!(matches!(poll_read(&tcp, &mut cx, &mut small), Poll::Ready(Ok(n)) if n == full));
        small.clear();
        assert!(matches!(poll_read_again(&tcp, &mut cx, &mut small), Poll::Ready(Ok(n)) if n > 0));
    }

    /// A peer that resets the connection gives an error, not a read that waits forever.
    #[tokio::test]
    async fn a_reset_is_an_error() {
        let (peer, tcp) = pair().await;
        let waker = Waker::from(Arc::new(Count::default()));
        let mut cx = Context::from_waker(&waker);
        let mut buf = BytesMut::with_capacity(4096);
        assert!(poll_read(&tcp, &mut cx, &mut buf).is_pending());
        peer.set_zero_linger().expect("linger");
        drop(peer);
        let got = tokio::time::timeout(
            Duration::from_secs(5),
            std::future::poll_fn(|_| poll_read(&tcp, &mut cx, &mut buf)),
        )
        .await
        .expect("the reset is seen");
        assert_eq!(got.expect_err("an error").kind(), io::ErrorKind::ConnectionReset);
    }

    /// A write to a peer that reset the connection is an error (the raw send with
    /// MSG_NOSIGNAL: no SIGPIPE, which would end the process were it not ignored), and
    /// `write_now` reports it rather than a full socket.
    #[tokio::test]
    async fn a_write_to_a_reset_peer_is_an_error() {
        let (peer, tcp) = pair().await;
        peer.set_zero_linger().expect("linger");
        drop(peer);
        let waker = Waker::from(Arc::new(Count::default()));
        let mut cx = Context::from_waker(&waker);
        let got = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match poll_write(&tcp, &mut cx, b"Q\0\0\0\x05x") {
                    Poll::Ready(Err(e)) => return e,
                    _ => tokio::time::sleep(Duration::from_millis(5)).await,
                }
            }
        })
        .await
        .expect("the reset is seen");
        assert!(matches!(got.kind(), io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe), "{got}");
        let mut stream = crate::client::stream::ClientStream::Plain(tcp);
        assert!(matches!(write_now(&mut stream, b"x"), Some(Err(_))));
    }

    /// Writes into a socket whose peer does not read come out short, then wait; once the peer
    /// drains, the registered waker is woken and the rest goes.
    #[tokio::test]
    async fn a_full_socket_wakes_the_writer_once_drained() {
        let (mut peer, tcp) = pair().await;
        let count = Arc::new(Count::default());
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let chunk = vec![7u8; 1 << 20];
        let mut sent = 0usize;
        loop {
            match poll_write(&tcp, &mut cx, &chunk) {
                Poll::Ready(Ok(n)) => sent += n,
                Poll::Ready(Err(e)) => panic!("{e}"),
                Poll::Pending => break,
            }
            // Budget: each write is one unit; yield so the loop is not cut by it.
            tokio::task::yield_now().await;
        }
        assert!(sent > 0);
        let seen = count.0.load(Ordering::SeqCst);
        let mut sink = vec![0u8; 1 << 16];
        let mut drained = 0;
        while drained < sent {
            drained += peer.read(&mut sink).await.expect("drain");
            if count.0.load(Ordering::SeqCst) > seen {
                break;
            }
        }
        woken(&count, seen).await;
        assert!(matches!(poll_write(&tcp, &mut cx, &chunk), Poll::Ready(Ok(n)) if n > 0));
    }

    /// A session whose socket always has bytes still runs out of budget: the read says
    /// pending within the task's budget, and wakes the context it was given (the session's
    /// Signal for the server's socket: a wake-up elsewhere would leave its read armed and
    /// never polled again), without registering it with the socket.
    #[tokio::test]
    async fn reads_always_ready_yield_within_the_budget_and_wake_their_context() {
        let (mut peer, tcp) = pair().await;
        peer.write_all(&vec![1u8; 1 << 20]).await.expect("write");
        tcp.readable().await.expect("readable");
        let count = Arc::new(Count::default());
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let mut reads = 0;
        let mut buf = BytesMut::with_capacity(64);
        let yielded = std::future::poll_fn(|_| loop {
            buf.clear();
            match poll_read(&tcp, &mut cx, &mut buf) {
                Poll::Ready(Ok(n)) => {
                    assert!(n > 0);
                    reads += 1;
                    if reads > 10_000 {
                        return Poll::Ready(false);
                    }
                }
                Poll::Ready(Err(e)) => panic!("{e}"),
                Poll::Pending => return Poll::Ready(true),
            }
        })
        .await;
        assert!(yielded, "{reads} reads of a ready socket without a yield");
        assert!(reads <= 128, "{reads} reads before the yield");
        woken(&count, 0).await;
    }
}
