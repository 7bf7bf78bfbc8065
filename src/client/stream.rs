//! The client's socket, plaintext or TLS, and the negotiation that decides which: an
//! SSLRequest answered `S` (TLS configured) or `N`, a GSSENCRequest answered `N`, or
//! PostgreSQL 17's direct TLS (the first byte is a TLS handshake record, ALPN `postgresql`).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use crate::auth::tls::{Tls, ALPN_POSTGRESQL};
use crate::protocol::backend::encryption;
use crate::protocol::startup::{GSSENC_REQUEST_CODE, SSL_REQUEST_CODE};

pub enum ClientStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// What TLS tells about the client.
#[derive(Debug, Default, Clone)]
pub struct TlsInfo {
    pub on: bool,
    /// The server name the client asked for (SNI).
    pub server_name: Option<String>,
    /// `tls-server-end-point` channel-binding data of the certificate it was given.
    pub end_point: Option<Vec<u8>>,
}

/// What the first bytes of a connection asked for.
pub enum Opening {
    /// Plaintext; these bytes begin the startup packet.
    Plain(BytesMut),
    /// TLS: after an SSLRequest (`direct` false) or directly.
    Tls {
        direct: bool,
    },
    Closed,
}

/// Bytes read at once while the opening is read: an SSLRequest and a typical startup packet
/// fit, so each arrives in one read, and a read that returns less than this tells tokio the
/// socket is drained (no extra read that would only find nothing).
const OPENING_READ: usize = 1024;

/// Reads the connection's opening, answering SSLRequest/GSSENCRequest. Cancel-safe only in
/// the sense that a timeout leaves `tcp` usable for an error message.
///
/// With TLS configured, the first byte is peeked at (a direct TLS handshake must stay in the
/// socket for the TLS layer); without, nothing can be handed to a TLS layer, so the first
/// read takes what is there, one `recvfrom` fewer per connection. After that, reads take
/// what is there. Bytes that follow an SSLRequest answered `S` before the handshake are
/// refused, as PostgreSQL refuses them (they were not encrypted, and may have been
/// injected); after an `N` they are the next packet's. Each kind of request is answered once,
/// as PostgreSQL answers it: a second one goes to the startup reader, which refuses it.
pub async fn opening(tcp: &mut TcpStream, tls: Option<&Tls>) -> io::Result<Opening> {
    let mut buf = BytesMut::with_capacity(OPENING_READ);
    // The requests answered `N` so far (SSLRequest, GSSENCRequest).
    let (mut ssl_done, mut gss_done) = (false, false);
    if tls.is_some() {
        let mut first = [0u8; 1];
        if tcp.peek(&mut first).await? == 0 {
            return Ok(Opening::Closed);
        }
        // A TLS handshake record: direct TLS negotiation.
        if first[0] == 0x16 {
            return Ok(Opening::Tls { direct: true });
        }
    } else if tcp.read_buf(&mut buf).await? == 0 || buf.first() == Some(&0x16) {
        // Closed before a byte, or a direct TLS handshake without TLS configured.
        return Ok(Opening::Closed);
    }
    loop {
        while buf.len() < 8 {
            if buf.capacity() == buf.len() {
                buf.reserve(OPENING_READ);
            }
            if tcp.read_buf(&mut buf).await? == 0 {
                // Fewer than 8 bytes: let the startup reader report the truncated packet.
                return Ok(Opening::Plain(buf));
            }
        }
        let len = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
        let code = i32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
        match (len, code, tls) {
            (8, SSL_REQUEST_CODE, Some(_)) => {
                if buf.len() > 8 {
                    tracing::debug!("bytes after an SSLRequest, before the TLS handshake: refused");
                    return Ok(Opening::Closed);
                }
                tcp.write_all(&[encryption::ACCEPTED]).await?;
                return Ok(Opening::Tls { direct: false });
            }
            (8, SSL_REQUEST_CODE, _) if !ssl_done => {
                tcp.write_all(b"N").await?;
                ssl_done = true;
                let _ = buf.split_to(8);
            }
            (8, GSSENC_REQUEST_CODE, _) if !gss_done => {
                tcp.write_all(b"N").await?;
                gss_done = true;
                let _ = buf.split_to(8);
            }
            _ => return Ok(Opening::Plain(buf)),
        }
    }
}

/// The TLS handshake; `None` when it fails or a direct-TLS client did not ask for ALPN
/// `postgresql` (as PostgreSQL requires).
pub async fn accept(tcp: TcpStream, tls: &Tls, direct: bool) -> Option<(ClientStream, TlsInfo)> {
    let stream = match tls.acceptor().accept(tcp).await {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(error = %e, "TLS handshake failed");
            return None;
        }
    };
    let conn = stream.get_ref().1;
    if direct && conn.alpn_protocol() != Some(ALPN_POSTGRESQL) {
        tracing::debug!("direct TLS without ALPN postgresql refused");
        return None;
    }
    let server_name = conn.server_name().map(str::to_owned);
    let end_point = Some(tls.end_point(server_name.as_deref()));
    Some((ClientStream::Tls(Box::new(stream)), TlsInfo { on: true, server_name, end_point }))
}

impl AsyncRead for ClientStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_flush(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A connected pair: (pgtenant's side, the client's side).
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (accepted, client) = tokio::join!(listener.accept(), TcpStream::connect(addr));
        (accepted.expect("accept").0, client.expect("connect"))
    }

    #[tokio::test]
    async fn without_tls_an_ssl_request_is_refused_and_the_startup_packet_read() {
        let (mut server, mut client) = pair().await;
        let startup = b"\0\0\0\x0d\0\x03\0\0user\0";
        client.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]).await.expect("SSLRequest");
        let opened = tokio::spawn(async move { opening(&mut server, None).await });
        let mut answer = [0u8; 1];
        client.read_exact(&mut answer).await.expect("answer");
        assert_eq!(&answer, b"N");
        client.write_all(startup).await.expect("startup");
        match opened.await.expect("task").expect("opening") {
            Opening::Plain(prefix) => assert_eq!(&prefix[..], startup),
            _ => panic!("expected a plaintext opening"),
        }
    }

    #[tokio::test]
    async fn without_tls_a_direct_tls_handshake_or_nothing_closes_the_connection() {
        let (mut server, mut client) = pair().await;
        client.write_all(&[0x16, 3, 1, 0, 5]).await.expect("TLS record");
        assert!(matches!(opening(&mut server, None).await, Ok(Opening::Closed)));
        let (mut server, client) = pair().await;
        drop(client);
        assert!(matches!(opening(&mut server, None).await, Ok(Opening::Closed)));
    }

    const SSL: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
    const GSS: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30];
    const STARTUP: &[u8] = b"\0\0\0\x0d\0\x03\0\0user\0";

    /// Sends `chunks` apart (a pause after each), then closes the client's write side.
    /// Returns what `opening` gave, what the client was answered, and the bytes left in
    /// the socket after the opening.
    async fn open_with(chunks: Vec<Vec<u8>>) -> (Opening, Vec<u8>, Vec<u8>) {
        let (mut server, mut client) = pair().await;
        client.set_nodelay(true).expect("nodelay");
        let writer = tokio::spawn(async move {
            for c in chunks {
                client.write_all(&c).await.expect("write");
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
            client.shutdown().await.expect("shutdown");
            let mut answers = Vec::new();
            client.read_to_end(&mut answers).await.expect("answers");
            answers
        });
        let opened = opening(&mut server, None).await.expect("opening");
        let mut rest = Vec::new();
        server.read_to_end(&mut rest).await.expect("rest");
        drop(server);
        (opened, writer.await.expect("writer"), rest)
    }

    /// The bytes the startup reader gets: what `opening` read past the requests, then the rest.
    fn plain(opened: Opening, rest: &[u8]) -> Vec<u8> {
        match opened {
            Opening::Plain(prefix) => {
                assert!(prefix.capacity() <= 2 * OPENING_READ, "capacity {}", prefix.capacity());
                [&prefix[..], rest].concat()
            }
            Opening::Tls { .. } => panic!("TLS without TLS configured"),
            Opening::Closed => panic!("closed"),
        }
    }

    /// GSSENCRequest, SSLRequest, startup packet and a query, split at every byte (two
    /// writes) and sent a byte at a time: two `N`s, and exactly the startup packet and the
    /// query reach the startup reader, nothing lost or doubled.
    #[tokio::test]
    async fn without_tls_the_opening_is_the_same_however_it_is_split() {
        let after = [STARTUP, b"Q\0\0\0\x0dSELECT 1\0"].concat();
        let all = [&GSS[..], &SSL[..], &after].concat();
        let mut splits: Vec<Vec<Vec<u8>>> =
            (1..all.len()).map(|k| vec![all[..k].to_vec(), all[k..].to_vec()]).collect();
        splits.push(all.iter().map(|b| vec![*b]).collect());
        splits.push(vec![all.clone()]);
        for chunks in splits {
            let sizes: Vec<usize> = chunks.iter().map(Vec::len).collect();
            let (opened, answers, rest) = open_with(chunks).await;
            assert_eq!(answers, b"NN", "split {sizes:?}");
            assert_eq!(plain(opened, &rest), after, "split {sizes:?}");
        }
    }

    /// Lengths no packet has — 1 GiB, 2 GiB - 1, zero, negative, 7 — go to the startup reader
    /// as they are (it refuses them) without anything reserved from them; an SSLRequest's
    /// code with another length is no SSLRequest; a TLS record after an `N` is bytes.
    #[tokio::test]
    async fn without_tls_bad_lengths_pass_to_the_startup_reader_unreserved() {
        for head in [
            [0x40, 0, 0, 0, 0, 3, 0, 0],
            [0x7f, 0xff, 0xff, 0xff, 0, 3, 0, 0],
            [0, 0, 0, 0, 0, 3, 0, 0],
            [0xff, 0xff, 0xff, 0xf0, 0, 3, 0, 0],
            [0, 0, 0, 7, 0x04, 0xd2, 0x16, 0x2f],
            [0, 0, 0, 9, 0x04, 0xd2, 0x16, 0x2f],
            [0x40, 0, 0, 0, 0x04, 0xd2, 0x16, 0x2f],
        ] {
            let (opened, answers, rest) = open_with(vec![head.to_vec()]).await;
            assert_eq!(answers, b"", "{head:?}");
            assert_eq!(plain(opened, &rest), head, "{head:?}");
        }
        let record = [0x16, 3, 1, 0x40, 0];
        let (opened, answers, rest) = open_with(vec![[&SSL[..], &record].concat()]).await;
        assert_eq!(answers, b"N");
        assert_eq!(plain(opened, &rest), record);
    }

    /// Many requests in one write, past one read's worth: the first of each kind is
    /// answered `N` (as PostgreSQL answers them), and everything from the first repeated one
    /// on goes to the startup reader as it came, which refuses it.
    #[tokio::test]
    async fn without_tls_each_request_is_answered_once() {
        let n = 3 * OPENING_READ / 8 + 3;
        let mut all: Vec<u8> = (0..n).flat_map(|i| if i % 2 == 0 { SSL } else { GSS }).collect();
        all.extend_from_slice(STARTUP);
        let (opened, answers, rest) = open_with(vec![all.clone()]).await;
        assert_eq!(answers, b"NN");
        assert_eq!(plain(opened, &rest), &all[16..]);
        for twice in [[SSL, SSL].concat(), [GSS, SSL, GSS].concat()] {
            let (opened, answers, rest) = open_with(vec![twice.clone()]).await;
            assert_eq!(answers, vec![b'N'; twice.len() / 8 - 1]);
            assert_eq!(plain(opened, &rest), &twice[twice.len() - 8..]);
        }
    }

    /// A client that sends one byte and waits is waited for (the startup timeout around
    /// `opening` ends it), not closed and not answered; its next bytes complete the opening.
    #[tokio::test]
    async fn without_tls_one_byte_then_silence_waits() {
        let (mut server, mut client) = pair().await;
        client.write_all(&SSL[..1]).await.expect("one byte");
        let opened = tokio::spawn(async move { (opening(&mut server, None).await, server) });
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert!(!opened.is_finished(), "the opening ended on one byte");
        client.write_all(&SSL[1..]).await.expect("the rest");
        let mut answer = [0u8; 1];
        client.read_exact(&mut answer).await.expect("answer");
        assert_eq!(&answer, b"N");
        client.write_all(STARTUP).await.expect("startup");
        let (opened, _server) = opened.await.expect("task");
        match opened.expect("opening") {
            Opening::Plain(prefix) => assert_eq!(&prefix[..], STARTUP),
            _ => panic!("expected a plaintext opening"),
        }
    }
}
