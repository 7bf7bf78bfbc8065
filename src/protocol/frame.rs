//! Frames: a one-byte tag, a four-byte big-endian length (which counts itself but not the
//! tag), and a body. pgtenant forwards frames as their original bytes and decodes only the
//! few it must act on.

use std::borrow::Cow;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::error::{ClientFacing, ErrorKind, SqlState};

/// Tag byte + length word.
pub const HEADER_LEN: usize = 5;

/// PostgreSQL refuses messages of 1 GB or more (`PQ_LARGE_MESSAGE_LIMIT` in
/// `src/include/libpq/libpq.h`), so that is the default ceiling for a frame's length field.
pub const DEFAULT_MAX_MESSAGE: usize = 0x3fff_ffff;

/// `MAX_STARTUP_PACKET_LENGTH` in `src/include/libpq/pqcomm.h`.
pub const MAX_STARTUP_PACKET: usize = 10_000;

/// Authentication messages from a client (PasswordMessage, SASLInitialResponse,
/// SASLResponse) are capped at `PG_MAX_AUTH_TOKEN_LENGTH` (65535) bytes by PostgreSQL
/// (`recv_password_packet` in `src/backend/libpq/auth.c`, `CheckSASLAuth` in
/// `auth-sasl.c`, both through `pq_getmessage`, which compares the length word), and a longer
/// one is refused as soon as its header is read.
pub const MAX_AUTH_MESSAGE: usize = 65_535;

/// What a reader reserves ahead of the bytes it has: a declared length is never reserved
/// up front (a header claiming 1 GiB costs one chunk, not 1 GiB), so memory grows with the
/// bytes that actually arrive (the buffer's own doubling keeps that amortised).
const READ_CHUNK: usize = 8 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("invalid message length {0}")]
    BadLength(i64),
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("connection closed in the middle of a message")]
    Truncated,
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

impl ClientFacing for FrameError {
    fn sqlstate(&self) -> SqlState {
        SqlState::ProtocolViolation
    }

    fn client_text(&self) -> Cow<'_, str> {
        match self {
            FrameError::BadLength(n) => format!("invalid message length {n}").into(),
            FrameError::TooLarge { len, max } => {
                format!("message of {len} bytes exceeds the limit of {max} bytes").into()
            }
            FrameError::Truncated => Cow::Borrowed("connection closed in the middle of a message"),
            // The socket's own error is for the log.
            FrameError::Io(_) => Cow::Borrowed("connection error"),
        }
    }

    fn kind(&self) -> ErrorKind {
        ErrorKind::Client
    }
}

/// Reads the header of the frame at the front of `buf`: its tag and its total size on the wire
/// (tag byte included). `None` until all five header bytes are there.
#[inline]
pub fn header(buf: &[u8], max: usize) -> Result<Option<(u8, usize)>, FrameError> {
    let Some(h) = buf.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let len = i32::from_be_bytes([h[1], h[2], h[3], h[4]]);
    if len < 4 {
        return Err(FrameError::BadLength(len.into()));
    }
    // `len` is positive here, so the cast is lossless.
    let len = len as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    Ok(Some((h[0], len + 1)))
}

/// One whole frame, holding its original bytes (header included).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    bytes: Bytes,
}

impl Frame {
    /// Wraps bytes already known to hold exactly one frame.
    pub fn from_bytes(bytes: Bytes) -> Self {
        debug_assert!(bytes.len() >= HEADER_LEN);
        Frame { bytes }
    }

    pub fn tag(&self) -> u8 {
        self.bytes[0]
    }

    pub fn body(&self) -> &[u8] {
        &self.bytes[HEADER_LEN..]
    }

    pub fn as_bytes(&self) -> &Bytes {
        &self.bytes
    }
}

/// A cancel-safe reader of whole frames: bytes accumulate in a buffer that survives a
/// cancelled `read_frame`, and nothing is consumed until a whole frame is there. The buffer
/// grows with the bytes received, at most [`READ_CHUNK`] ahead of them, never from a
/// length prefix.
///
/// Used where pgtenant reads messages one at a time (startup, upstream authentication);
/// the relay streams frames instead of collecting them.
pub struct FrameReader<R> {
    inner: R,
    buf: BytesMut,
    max: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// A reader that holds no buffer until bytes arrive.
    pub fn new(inner: R, max: usize) -> Self {
        Self::with_buffer(inner, BytesMut::new(), max)
    }

    pub fn with_buffer(inner: R, buf: BytesMut, max: usize) -> Self {
        FrameReader { inner, buf, max }
    }

    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// The stream and whatever bytes were read past the last frame returned, in a buffer
    /// of their own size: what the reader grew to (say for a large authentication message)
    /// is not carried into the rest of the connection.
    pub fn into_parts(self) -> (R, BytesMut) {
        let rest = if self.buf.is_empty() { BytesMut::new() } else { BytesMut::from(&self.buf[..]) };
        (self.inner, rest)
    }

    /// The next whole frame; `Ok(None)` on a clean end of stream between frames.
    pub async fn read_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        loop {
            if let Some((_, len)) = header(&self.buf, self.max)? {
                if self.buf.len() >= len {
                    return Ok(Some(Frame::from_bytes(self.buf.split_to(len).freeze())));
                }
                // Not `reserve(len - buffered)`: the length is the peer's claim, the bytes
                // are what it paid (`fill` grows the buffer one chunk at a time).
            }
            if self.fill().await? == 0 {
                return if self.buf.is_empty() { Ok(None) } else { Err(FrameError::Truncated) };
            }
        }
    }

    /// The next untagged startup-phase packet (length word + body), body returned;
    /// `Ok(None)` on a clean end of stream before any byte.
    pub async fn read_startup(&mut self) -> Result<Option<Bytes>, FrameError> {
        loop {
            if let Some(h) = self.buf.get(..4) {
                let len = i32::from_be_bytes([h[0], h[1], h[2], h[3]]);
                // The smallest packet is a CancelRequest-sized code word: length 8.
                if len < 8 {
                    return Err(FrameError::BadLength(len.into()));
                }
                let len = len as usize;
                if len > MAX_STARTUP_PACKET {
                    return Err(FrameError::TooLarge { len, max: MAX_STARTUP_PACKET });
                }
                if self.buf.len() >= len {
                    let mut packet = self.buf.split_to(len);
                    packet.advance(4);
                    return Ok(Some(packet.freeze()));
                }
            }
            if self.fill().await? == 0 {
                return if self.buf.is_empty() { Ok(None) } else { Err(FrameError::Truncated) };
            }
        }
    }

    /// Bytes buffered but not yet returned as a frame.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Bytes the buffer holds room for (what the reader costs in memory, besides frames it
    /// returned that are still alive).
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Changes the largest frame accepted from here on.
    pub fn set_max(&mut self, max: usize) {
        self.max = max;
    }

    /// Reads what is there, after making room for at most one chunk more than is buffered.
    async fn fill(&mut self) -> Result<usize, FrameError> {
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(READ_CHUNK);
        }
        Ok(self.inner.read_buf(&mut self.buf).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn header_rejects_short_and_huge_lengths() {
        assert!(header(b"Q\0\0", 100).expect("partial").is_none());
        assert!(matches!(header(b"Q\0\0\0\x03", 100), Err(FrameError::BadLength(3))));
        assert!(matches!(header(b"Q\xff\xff\xff\xff", 100), Err(FrameError::BadLength(-1))));
        assert!(matches!(
            header(b"Q\x7f\xff\xff\xff", DEFAULT_MAX_MESSAGE),
            Err(FrameError::TooLarge { .. })
        ));
        assert_eq!(header(b"Z\0\0\0\x05I", 100).expect("ok"), Some((b'Z', 6)));
    }

    #[tokio::test]
    async fn frames_split_across_reads_and_cancelled_reads_lose_nothing() {
        let (mut tx, rx) = tokio::io::duplex(64);
        let mut reader = FrameReader::new(rx, 1024);
        tx.write_all(b"Q\0\0\0\x09SEL").await.expect("write");
        // A read that times out (is cancelled) must not consume the partial frame.
        let r = tokio::time::timeout(std::time::Duration::from_millis(20), reader.read_frame()).await;
        assert!(r.is_err());
        tx.write_all(b"\0\0Z\0\0\0\x05I").await.expect("write");
        let f = reader.read_frame().await.expect("frame").expect("some");
        assert_eq!(f.tag(), b'Q');
        assert_eq!(f.body(), b"SEL\0\0");
        assert_eq!(f.as_bytes().len(), 10);
        let f = reader.read_frame().await.expect("frame").expect("some");
        assert_eq!((f.tag(), f.body()), (b'Z', &b"I"[..]));
        drop(tx);
        assert!(reader.read_frame().await.expect("eof").is_none());
    }

    #[tokio::test]
    async fn truncated_frame_is_an_error() {
        let (mut tx, rx) = tokio::io::duplex(64);
        let mut reader = FrameReader::new(rx, 1024);
        tx.write_all(b"Q\0\0\0\x20abc").await.expect("write");
        drop(tx);
        assert!(matches!(reader.read_frame().await, Err(FrameError::Truncated)));
    }

    #[tokio::test]
    async fn startup_packet_limits() {
        let (mut tx, rx) = tokio::io::duplex(64);
        let mut reader = FrameReader::new(rx, 1024);
        tx.write_all(&[0x7f, 0xff, 0xff, 0xff]).await.expect("write");
        assert!(matches!(reader.read_startup().await, Err(FrameError::TooLarge { .. })));
        let (mut tx, rx) = tokio::io::duplex(64);
        let mut reader = FrameReader::new(rx, 1024);
        tx.write_all(&[0, 0, 0, 8, 4, 0xd2, 0x16, 0x2f]).await.expect("write");
        let p = reader.read_startup().await.expect("ok").expect("packet");
        assert_eq!(&p[..], &[4, 0xd2, 0x16, 0x2f]);
    }

    #[tokio::test]
    async fn a_declared_gigabyte_reserves_a_chunk_not_the_length() {
        let (mut tx, rx) = tokio::io::duplex(64);
        let mut reader = FrameReader::new(rx, DEFAULT_MAX_MESSAGE);
        // A SASLInitialResponse header claiming 1 GiB - 1, then ten bytes.
        tx.write_all(b"p\x3f\xff\xff\xffSCRAM-SHA-").await.expect("write");
        let r = tokio::time::timeout(std::time::Duration::from_millis(20), reader.read_frame()).await;
        assert!(r.is_err(), "no frame yet");
        assert_eq!(reader.buffered(), 15);
        assert!(reader.capacity() <= 2 * READ_CHUNK, "capacity {}", reader.capacity());
    }

    #[tokio::test]
    async fn authentication_messages_are_capped_at_pg_max_auth_token_length() {
        let (mut tx, rx) = tokio::io::duplex(64);
        let mut reader = FrameReader::new(rx, MAX_AUTH_MESSAGE);
        // 65536 is one past the cap: refused as soon as the header is there.
        tx.write_all(b"p\0\x01\0\0").await.expect("write");
        assert!(matches!(reader.read_frame().await, Err(FrameError::TooLarge { len: 65_536, max: 65_535 })));
        // 65535 itself is accepted.
        let (mut tx, rx) = tokio::io::duplex(1 << 17);
        let mut reader = FrameReader::new(rx, MAX_AUTH_MESSAGE);
        let mut msg = b"p\0\0\xff\xff".to_vec();
        msg.resize(65_536, b'x');
        tx.write_all(&msg).await.expect("write");
        let f = reader.read_frame().await.expect("frame").expect("some");
        assert_eq!(f.body().len(), 65_531);
    }

    #[tokio::test]
    async fn into_parts_hands_over_the_rest_in_a_small_buffer() {
        let (mut tx, rx) = tokio::io::duplex(1 << 17);
        let mut reader = FrameReader::new(rx, MAX_AUTH_MESSAGE);
        let mut msg = b"p\0\0\xff\xff".to_vec();
        msg.resize(65_536, b'x');
        // The start of the next frame.
        msg.extend_from_slice(b"Q\0\0");
        tx.write_all(&msg).await.expect("write");
        reader.read_frame().await.expect("frame").expect("some");
        for _ in 0..100 {
            if reader.buffered() == 3 {
                break;
            }
            let more = tokio::time::timeout(std::time::Duration::from_millis(20), reader.read_frame()).await;
            assert!(more.is_err(), "a partial frame is no frame");
        }
        let (_, rest) = reader.into_parts();
        assert_eq!(&rest[..], b"Q\0\0");
        assert!(rest.capacity() < 1024, "capacity {}", rest.capacity());
    }

    /// Hands out the input in the given chunk sizes (cycled), then end of stream.
    struct Chunked {
        data: Vec<u8>,
        pos: usize,
        sizes: Vec<usize>,
        turn: usize,
    }

    impl AsyncRead for Chunked {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            let me = &mut *self;
            let size = me.sizes.get(me.turn % me.sizes.len().max(1)).copied().unwrap_or(1).max(1);
            me.turn += 1;
            let end = (me.pos + size).min(me.data.len());
            let n = (end - me.pos).min(buf.remaining());
            buf.put_slice(&me.data[me.pos..me.pos + n]);
            me.pos += n;
            std::task::Poll::Ready(Ok(()))
        }
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().build().expect("runtime").block_on(f)
    }

    /// Frames: a tag and a body, encoded with a correct length word.
    fn frames_strategy() -> impl proptest::strategy::Strategy<Value = Vec<(u8, Vec<u8>)>> {
        use proptest::prelude::*;
        proptest::collection::vec((any::<u8>(), proptest::collection::vec(any::<u8>(), 0..300)), 0..8)
    }

    proptest::proptest! {
        /// Whatever the bytes and however they are split, reading never panics, every frame
        /// returned is a whole frame of the input in order, and it ends in an error or a clean
        /// end of stream.
        #[test]
        fn any_bytes_never_panic(
            data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2048),
            sizes in proptest::collection::vec(1usize..600, 1..6),
            max in 0usize..4096,
        ) {
            let mut reader = FrameReader::new(Chunked { data: data.clone(), pos: 0, sizes: sizes.clone(), turn: 0 }, max);
            let mut consumed = 0;
            block_on(async {
                while let Ok(Some(f)) = reader.read_frame().await {
                    let bytes = f.as_bytes();
                    assert!(bytes.len() >= HEADER_LEN && bytes.len() <= max + 1);
                    assert_eq!(&data[consumed..consumed + bytes.len()], &bytes[..]);
                    consumed += bytes.len();
                }
            });
            let mut reader = FrameReader::new(Chunked { data: data.clone(), pos: 0, sizes, turn: 0 }, max);
            block_on(async {
                while let Ok(Some(p)) = reader.read_startup().await {
                    assert!(p.len() + 4 <= MAX_STARTUP_PACKET);
                }
            });
        }

        /// Well-formed frames come back exactly as sent, however they are split.
        #[test]
        fn frames_round_trip(frames in frames_strategy(), sizes in proptest::collection::vec(1usize..700, 1..6)) {
            let mut data = Vec::new();
            for (tag, body) in &frames {
                data.push(*tag);
                data.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
                data.extend_from_slice(body);
            }
            let mut reader = FrameReader::new(Chunked { data, pos: 0, sizes, turn: 0 }, 1024);
            let got = block_on(async {
                let mut got = Vec::new();
                while let Some(f) = reader.read_frame().await.expect("well-formed") {
                    got.push((f.tag(), f.body().to_vec()));
                }
                got
            });
            proptest::prop_assert_eq!(got, frames);
        }

        /// A header may claim up to the 1 GiB cap; with only a few bytes behind it the reader
        /// holds well under 1 MiB, whatever the claim and however the bytes are split.
        #[test]
        fn declared_lengths_are_not_reserved(
            len in 5u32..0x3fff_ffff,
            tag in proptest::prelude::any::<u8>(),
            sent in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
            sizes in proptest::collection::vec(1usize..64, 1..4),
        ) {
            let mut data = vec![tag];
            data.extend_from_slice(&len.to_be_bytes());
            data.extend_from_slice(&sent);
            let whole = data.len() > len as usize;
            // The bytes arrive in the given pieces, then the stream ends: the reader has
            // then seen everything it will, and reports the frame as truncated.
            let mut reader = FrameReader::new(Chunked { data, pos: 0, sizes, turn: 0 }, DEFAULT_MAX_MESSAGE);
            let capacity = block_on(async {
                while let Ok(Some(_)) = reader.read_frame().await {}
                reader.capacity()
            });
            proptest::prop_assert!(whole || capacity < (1 << 20), "capacity {} for a claim of {}", capacity, len);
        }
    }
}
