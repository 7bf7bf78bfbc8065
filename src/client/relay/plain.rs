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
use tokio::io::{AsyncWrite, Interest};
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

/// Whether the socket has something to read, registering `cx`'s waker if not: for a reader
/// that takes a buffer only once bytes are there.
#[inline]
pub(crate) fn poll_readable(tcp: &TcpStream, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
    tcp.poll_read_ready(cx)
}

/// Writes what the socket takes of `bytes`, or registers `cx`'s waker for its next
/// writability.
pub(crate) fn poll_write(tcp: &TcpStream, cx: &mut Context<'_>, bytes: &[u8]) -> Poll<io::Result<usize>> {
    let coop = ready!(coop::poll_proceed(cx));
    loop {
        match moved(tcp, Interest::WRITABLE, bytes.len(), || tcp.try_write(bytes)) {
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
    match moved(tcp, Interest::WRITABLE, bytes.len(), || tcp.try_write(bytes)) {
        Ok(n) => Some(Ok(n)),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
        Err(e) => Some(Err(e)),
    }
}
