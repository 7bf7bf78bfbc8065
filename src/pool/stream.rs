//! The socket to an upstream (TCP or a Unix socket directory), with TLS negotiated as its
//! `sslmode` asks (libpq's meaning: disable, prefer, require, verify-ca, verify-full).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

use crate::auth::tls::client_config;
use crate::model::{SslMode, UpstreamAddr};
use crate::protocol::backend::encryption;
use crate::protocol::frontend;

impl UpstreamAddr {
    /// A socket to the server, TLS negotiated as `sslmode` asks.
    pub async fn connect(&self) -> io::Result<ServerStream> {
        match self {
            UpstreamAddr::Tcp { host, port, tls } => {
                let mut s = TcpStream::connect((&**host, *port)).await?;
                s.set_nodelay(true)?;
                if tls.mode == SslMode::Disable {
                    return Ok(ServerStream::Tcp(s));
                }
                // SSLRequest; the server answers one byte.
                s.write_all(&frontend::ssl_request()).await?;
                let mut answer = [0u8; 1];
                s.read_exact(&mut answer).await?;
                match (answer[0], tls.mode) {
                    (encryption::ACCEPTED, mode) => {
                        let config = client_config(mode, tls.root_cert.as_deref())?;
                        let name = ServerName::try_from(host.to_string())
                            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
                        let stream = tokio_rustls::TlsConnector::from(config).connect(name, s).await?;
                        Ok(ServerStream::Tls(Box::new(stream)))
                    }
                    (encryption::REFUSED, SslMode::Prefer) => Ok(ServerStream::Tcp(s)),
                    (encryption::REFUSED, _) => {
                        Err(io::Error::other("the upstream does not accept TLS and sslmode requires it"))
                    }
                    _ => Err(io::Error::other("unexpected answer to SSLRequest")),
                }
            }
            UpstreamAddr::Unix { dir, port } => {
                Ok(ServerStream::Unix(UnixStream::connect(Self::socket_path(dir, *port)).await?))
            }
        }
    }
}

/// A socket to an upstream server.
#[derive(Debug)]
pub enum ServerStream {
    Tcp(TcpStream),
    Unix(UnixStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl ServerStream {
    /// Non-blocking read, for checking an idle connection: `WouldBlock` means nothing to read.
    /// (On TLS this reads the socket under TLS: any byte there means the connection is not
    /// idle-clean, and it is discarded anyway.)
    pub fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            ServerStream::Tcp(s) => s.try_read(buf),
            ServerStream::Unix(s) => s.try_read(buf),
            ServerStream::Tls(s) => s.get_ref().0.try_read(buf),
        }
    }

    /// Non-blocking write, for a best-effort Terminate when a connection is dropped (not on
    /// TLS, where a raw write would corrupt the stream: the socket just closes).
    pub fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        match self {
            ServerStream::Tcp(s) => s.try_write(buf),
            ServerStream::Unix(s) => s.try_write(buf),
            ServerStream::Tls(_) => Ok(0),
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, ServerStream::Tls(_))
    }
}

impl AsyncRead for ServerStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerStream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            ServerStream::Unix(s) => Pin::new(s).poll_read(cx, buf),
            ServerStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ServerStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ServerStream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            ServerStream::Unix(s) => Pin::new(s).poll_write(cx, buf),
            ServerStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerStream::Tcp(s) => Pin::new(s).poll_flush(cx),
            ServerStream::Unix(s) => Pin::new(s).poll_flush(cx),
            ServerStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerStream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            ServerStream::Unix(s) => Pin::new(s).poll_shutdown(cx),
            ServerStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
