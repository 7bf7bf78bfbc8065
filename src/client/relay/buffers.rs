//! The session's buffers are held only while the client has something in flight: an idle
//! client holds none (it waits for readability and reads into the stack), and buffers given
//! back go to a small per-thread spare list that the next active session takes them from,
//! so a transaction costs no malloc/free of its buffers.

use std::cell::RefCell;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use tokio::io::{AsyncRead, ReadBuf};

use super::plain::{self, PlainTcp};
use super::READ_CHUNK;

/// Spare buffers kept per thread: bounded, so what idle clients gave back is not all kept.
const SPARE_MAX: usize = 64;

thread_local! {
    static SPARE: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

/// A buffer with room for a read chunk, from the spare list when it has one.
pub(super) fn take() -> BytesMut {
    let spare = SPARE.try_with(|s| s.borrow_mut().pop()).ok().flatten();
    let mut buf = spare.unwrap_or_default();
    // Spare buffers have the room already (see `give_all`): this allocates only a new one.
    buf.reserve(READ_CHUNK);
    buf
}

/// Buffers for each of `bufs` that has none (its capacity 0), from the spare list when it
/// has them: one visit to the list for all of them.
pub(super) fn take_all<const N: usize>(bufs: [&mut BytesMut; N]) {
    let _ = SPARE.try_with(|s| {
        let mut s = s.borrow_mut();
        for buf in bufs {
            if buf.capacity() == 0 {
                *buf = s.pop().unwrap_or_else(|| BytesMut::with_capacity(READ_CHUNK));
            }
        }
    });
}

/// Gives `buf` back (leaving it empty, with no capacity) if it holds nothing.
pub(super) fn give(buf: &mut BytesMut) {
    give_all([buf]);
}

/// Gives back each of `bufs` that holds nothing (leaving it empty, with no capacity): one
/// visit to the spare list for all of them (a transaction's end gives back three).
pub(super) fn give_all<const N: usize>(bufs: [&mut BytesMut; N]) {
    if bufs.iter().all(|b| !b.is_empty() || b.capacity() == 0) {
        return;
    }
    let _ = SPARE.try_with(|s| {
        let mut s = s.borrow_mut();
        for buf in bufs {
            if !buf.is_empty() || buf.capacity() == 0 {
                continue;
            }
            let mut buf = std::mem::take(buf);
            // Buffers that grew for a large message are freed, not kept; the others start
            // over at their beginning (a buffer advanced past what it held is given its room
            // back here, not by a reserve at the next take).
            if buf.capacity() <= 4 * READ_CHUNK && s.len() < SPARE_MAX {
                if buf.capacity() < READ_CHUNK {
                    buf.reserve(READ_CHUNK);
                }
                s.push(buf);
            }
        }
    });
    // Without the thread's list (its destructor ran) the buffers are freed.
}

/// Drops the first `n` bytes of `buf` (all of them: it starts over where it is, its room
/// kept). One that grew for a large message and keeps little now moves that little to a buffer
/// of its own: an advance keeps the whole allocation behind a `capacity()` counted from the
/// new start (which the next reserve takes back), so a client that sent a large message and
/// then a few bytes more would hold it while idle, with nothing left of it counted against
/// `large_message_memory`. Keeping a large remainder in place keeps `capacity()` large, so
/// the next consume still sees the allocation (one compare in the common case).
#[inline(always)]
pub(super) fn consume(buf: &mut BytesMut, n: usize) {
    if buf.capacity() > 4 * READ_CHUNK {
        consume_large(buf, n);
    } else if n == buf.len() {
        buf.clear();
    } else {
        bytes::Buf::advance(buf, n);
    }
}

/// [`consume`] of a buffer that grew for a large message.
#[cold]
#[inline(never)]
fn consume_large(buf: &mut BytesMut, n: usize) {
    if n != 0 && buf.len() - n <= 4 * READ_CHUNK {
        *buf = BytesMut::from(&buf[n..]);
    } else if n == buf.len() {
        buf.clear();
    } else {
        bytes::Buf::advance(buf, n);
    }
}

/// Makes sure `buf` has room for a read (taking a buffer if it has none).
pub(super) fn room(buf: &mut BytesMut) {
    if buf.capacity() == 0 {
        *buf = take();
    } else if buf.capacity() - buf.len() < READ_CHUNK / 4 {
        buf.reserve(READ_CHUNK);
    }
}

/// Reads from `stream` into `buf`; when `buf` has no capacity (an idle client), the read goes
/// to the stack and a buffer is taken only for the bytes that arrived.
pub(super) fn poll_read<R: AsyncRead + Unpin + PlainTcp>(
    stream: &mut R,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
) -> Poll<std::io::Result<usize>> {
    if buf.capacity() != 0 {
        return plain::poll_read_any(stream, cx, buf);
    }
    if let Some(tcp) = stream.plain_tcp() {
        // Idle: a buffer is taken once the socket is readable, and given back if the read
        // finds nothing after all (or the end).
        std::task::ready!(tcp.poll_read_ready(cx))?;
        *buf = take();
        let read = plain::poll_read(tcp, cx, buf);
        if buf.is_empty() {
            give(buf);
        }
        return read;
    }
    let mut scratch = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
    let mut rb = ReadBuf::uninit(&mut scratch);
    match Pin::new(stream).poll_read(cx, &mut rb) {
        Poll::Ready(Ok(())) => {
            let got = rb.filled();
            if !got.is_empty() {
                *buf = take();
                buf.extend_from_slice(got);
            }
            Poll::Ready(Ok(got.len()))
        }
        Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        Poll::Pending => Poll::Pending,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_go_round_without_reallocating() {
        let mut a = take();
        assert!(a.capacity() >= READ_CHUNK);
        let ptr = a.as_ptr();
        give(&mut a);
        assert_eq!(a.capacity(), 0);
        let b = take();
        assert_eq!(b.as_ptr(), ptr);
    }

    /// A buffer whose start was advanced past what it held goes back with its room, and
    /// buffers taken together come from the spare list.
    #[test]
    fn buffers_given_back_together_keep_their_room() {
        use bytes::Buf;
        let (mut a, mut b) = (take(), take());
        a.extend_from_slice(&[1; 1000]);
        a.advance(1000);
        assert!(a.capacity() < READ_CHUNK);
        let ptrs = [a.as_ptr() as usize - 1000, b.as_ptr() as usize];
        give_all([&mut a, &mut b]);
        assert_eq!((a.capacity(), b.capacity()), (0, 0));
        let (mut c, mut d) = (BytesMut::new(), BytesMut::new());
        take_all([&mut c, &mut d]);
        assert!(c.capacity() >= READ_CHUNK && d.capacity() >= READ_CHUNK);
        let mut got = [c.as_ptr() as usize, d.as_ptr() as usize];
        got.sort_unstable();
        let mut want = ptrs;
        want.sort_unstable();
        assert_eq!(got, want, "the same allocations, not new ones");
    }

    /// A buffer that grew for a large message and was consumed past it (at once or in steps,
    /// the last bytes of a next message behind it or none) frees that allocation: an advance
    /// alone keeps it whole behind a small `capacity()` (the next reserve takes it back), an
    /// idle client holding it with nothing counted against `large_message_memory`.
    #[test]
    fn consuming_a_large_message_frees_its_allocation() {
        let large = vec![1; 1 << 20];
        for (rest, step) in [(0, 1 << 20), (100, 1 << 20), (100, 3 * READ_CHUNK)] {
            let mut buf = BytesMut::new();
            buf.extend_from_slice(&large);
            buf.extend_from_slice(&vec![2; rest]);
            while buf.len() > rest {
                let n = step.min(buf.len() - rest);
                consume(&mut buf, n);
            }
            assert_eq!(&buf[..], &vec![2; rest][..]);
            buf.reserve(READ_CHUNK);
            assert!(buf.capacity() <= 4 * READ_CHUNK, "rest {rest}, step {step}: {}", buf.capacity());
        }
    }

    #[test]
    fn a_buffer_holding_bytes_is_kept() {
        let mut a = take();
        a.extend_from_slice(b"x");
        give(&mut a);
        assert_eq!(&a[..], b"x");
    }

    #[tokio::test]
    async fn an_idle_read_takes_a_buffer_only_for_what_arrived() {
        let (mut c, mut s) = tokio::io::duplex(64);
        let mut buf = BytesMut::new();
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(poll_read(&mut s, &mut cx, &mut buf).is_pending());
        assert_eq!(buf.capacity(), 0);
        tokio::io::AsyncWriteExt::write_all(&mut c, b"Q\0\0\0\x05x").await.ok();
        match poll_read(&mut s, &mut cx, &mut buf) {
            Poll::Ready(Ok(6)) => assert_eq!(&buf[..], b"Q\0\0\0\x05x"),
            other => panic!("unexpected {other:?}"),
        }
    }

    /// The plain TCP path of an idle client: no buffer while nothing arrived, one for the
    /// bytes that did, and none kept when the read finds the end of stream.
    #[tokio::test]
    async fn an_idle_plain_client_holds_a_buffer_only_for_what_arrived() {
        use tokio::io::AsyncWriteExt;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let mut peer = tokio::net::TcpStream::connect(l.local_addr().expect("addr")).await.expect("connect");
        let mut s = crate::client::stream::ClientStream::Plain(l.accept().await.expect("accept").0);
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut buf = BytesMut::new();
        assert!(poll_read(&mut s, &mut cx, &mut buf).is_pending());
        assert_eq!(buf.capacity(), 0, "nothing arrived: no buffer");
        peer.write_all(b"Q\0\0\0\x05x").await.expect("write");
        let read = std::future::poll_fn(|cx| poll_read(&mut s, cx, &mut buf)).await;
        assert_eq!(read.expect("read"), 6);
        assert_eq!(&buf[..], b"Q\0\0\0\x05x");
        let mut buf = BytesMut::new();
        assert!(poll_read(&mut s, &mut cx, &mut buf).is_pending());
        assert_eq!(buf.capacity(), 0, "read out: no buffer again");
        peer.shutdown().await.expect("shutdown");
        let read = std::future::poll_fn(|cx| poll_read(&mut s, cx, &mut buf)).await;
        assert_eq!(read.expect("the end"), 0);
        assert_eq!(buf.capacity(), 0, "the end: the buffer was given back");
    }
}
