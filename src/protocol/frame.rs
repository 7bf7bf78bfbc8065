//! Frames: a one-byte tag, a four-byte big-endian length (which counts itself but not the
//! tag), and a body. pgtenant forwards frames as their original bytes and decodes only the
//! few it must act on.

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Tag byte + length word.
pub const HEADER_LEN: usize = 5;

/// PostgreSQL refuses messages of 1 GB or more (`PQ_LARGE_MESSAGE_LIMIT` in
/// `src/include/libpq/libpq.h`), so that is the default ceiling for a frame's length field.
pub const DEFAULT_MAX_MESSAGE: usize = 0x3fff_ffff;

/// `MAX_STARTUP_PACKET_LENGTH` in `src/include/libpq/pqcomm.h`.
pub const MAX_STARTUP_PACKET: usize = 10_000;

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
/// cancelled `read_frame`, and nothing is consumed until a whole frame is there.
///
/// Used where pgtenant reads messages one at a time (startup, upstream authentication);
/// the relay streams frames instead of collecting them.
pub struct FrameReader<R> {
    inner: R,
    buf: BytesMut,
    max: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(inner: R, max: usize) -> Self {
        Self::with_buffer(inner, BytesMut::with_capacity(8 * 1024), max)
    }

    pub fn with_buffer(inner: R, buf: BytesMut, max: usize) -> Self {
        FrameReader { inner, buf, max }
    }

    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// The stream and whatever bytes were read past the last frame returned.
    pub fn into_parts(self) -> (R, BytesMut) {
        (self.inner, self.buf)
    }

    /// The next whole frame; `Ok(None)` on a clean end of stream between frames.
    pub async fn read_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        loop {
            if let Some((_, len)) = header(&self.buf, self.max)? {
                if self.buf.len() >= len {
                    return Ok(Some(Frame::from_bytes(self.buf.split_to(len).freeze())));
                }
                self.buf.reserve(len - self.buf.len());
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

    async fn fill(&mut self) -> Result<usize, FrameError> {
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(8 * 1024);
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
}
