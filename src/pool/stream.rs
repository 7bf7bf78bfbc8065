//! Where an upstream lives (TCP or a Unix socket directory) and the socket to it.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

/// An upstream server address, as libpq reads `host`: a path starting with `/` is the
/// directory of the server's Unix socket.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum UpstreamAddr {
    Tcp { host: Arc<str>, port: u16 },
    Unix { dir: Arc<str>, port: u16 },
}

impl UpstreamAddr {
    pub fn new(host: &str, port: u16) -> Self {
        if host.starts_with('/') {
            UpstreamAddr::Unix { dir: Arc::from(host), port }
        } else {
            UpstreamAddr::Tcp { host: Arc::from(host), port }
        }
    }

    /// `<dir>/.s.PGSQL.<port>`, the socket file Postgres creates.
    pub fn socket_path(dir: &str, port: u16) -> PathBuf {
        PathBuf::from(format!("{dir}/.s.PGSQL.{port}"))
    }

    pub async fn connect(&self) -> io::Result<ServerStream> {
        match self {
            UpstreamAddr::Tcp { host, port } => {
                let s = TcpStream::connect((&**host, *port)).await?;
                s.set_nodelay(true)?;
                Ok(ServerStream::Tcp(s))
            }
            UpstreamAddr::Unix { dir, port } => {
                Ok(ServerStream::Unix(UnixStream::connect(Self::socket_path(dir, *port)).await?))
            }
        }
    }
}

impl fmt::Display for UpstreamAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpstreamAddr::Tcp { host, port } => write!(f, "{host}:{port}"),
            UpstreamAddr::Unix { dir, port } => write!(f, "{dir}/.s.PGSQL.{port}"),
        }
    }
}

impl fmt::Debug for UpstreamAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A socket to an upstream server. (TLS to upstreams adds a variant here.)
#[derive(Debug)]
pub enum ServerStream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl ServerStream {
    /// Non-blocking read, for checking an idle connection: `WouldBlock` means nothing to read.
    pub fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            ServerStream::Tcp(s) => s.try_read(buf),
            ServerStream::Unix(s) => s.try_read(buf),
        }
    }

    /// Non-blocking write, for a best-effort Terminate when a connection is dropped.
    pub fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        match self {
            ServerStream::Tcp(s) => s.try_write(buf),
            ServerStream::Unix(s) => s.try_write(buf),
        }
    }
}

impl AsyncRead for ServerStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerStream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            ServerStream::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ServerStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ServerStream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            ServerStream::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerStream::Tcp(s) => Pin::new(s).poll_flush(cx),
            ServerStream::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ServerStream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            ServerStream::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
