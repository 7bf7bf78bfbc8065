//! Where an upstream lives (TCP or a Unix socket directory), the socket to it, and TLS to it
//! (`sslmode` as libpq reads it: disable, prefer, require, verify-ca, verify-full).

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

use crate::protocol::backend::encryption;
use crate::protocol::frontend;

/// An upstream server address, as libpq reads `host`: a path starting with `/` is the
/// directory of the server's Unix socket.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum UpstreamAddr {
    Tcp { host: Arc<str>, port: u16, tls: UpstreamTls },
    Unix { dir: Arc<str>, port: u16 },
}

/// TLS to an upstream: the mode and, for the verifying modes, the CA file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct UpstreamTls {
    pub mode: SslMode,
    pub root_cert: Option<Arc<str>>,
}

impl UpstreamAddr {
    pub fn new(host: &str, port: u16) -> Self {
        Self::with_tls(host, port, UpstreamTls::default())
    }

    pub fn with_tls(host: &str, port: u16, tls: UpstreamTls) -> Self {
        if host.starts_with('/') {
            UpstreamAddr::Unix { dir: Arc::from(host), port }
        } else {
            UpstreamAddr::Tcp { host: Arc::from(host), port, tls }
        }
    }

    /// `<dir>/.s.PGSQL.<port>`, the socket file Postgres creates.
    pub fn socket_path(dir: &str, port: u16) -> PathBuf {
        PathBuf::from(format!("{dir}/.s.PGSQL.{port}"))
    }

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

impl fmt::Display for UpstreamAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpstreamAddr::Tcp { host, port, .. } => write!(f, "{host}:{port}"),
            UpstreamAddr::Unix { dir, port } => write!(f, "{dir}/.s.PGSQL.{port}"),
        }
    }
}

impl fmt::Debug for UpstreamAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
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

/// How much TLS to insist on, as libpq's `sslmode`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    Disable,
    /// TLS if the server offers it, unverified.
    #[default]
    Prefer,
    /// TLS or nothing, unverified.
    Require,
    /// TLS with the server certificate checked against the CA file, any host name.
    VerifyCa,
    /// TLS with the certificate checked against the CA file and the host name.
    VerifyFull,
}

impl SslMode {
    /// libpq's name for the mode.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    pub fn parse(s: &str) -> Option<SslMode> {
        match s {
            "disable" => Some(SslMode::Disable),
            "prefer" => Some(SslMode::Prefer),
            "require" => Some(SslMode::Require),
            "verify-ca" => Some(SslMode::VerifyCa),
            "verify-full" => Some(SslMode::VerifyFull),
            _ => None,
        }
    }
}

type ClientConfigs = dashmap::DashMap<(SslMode, Option<String>), Arc<rustls::ClientConfig>>;

/// Client TLS configurations, built once per (mode, CA file).
pub(crate) fn client_config(mode: SslMode, root_cert: Option<&str>) -> io::Result<Arc<rustls::ClientConfig>> {
    static CACHE: std::sync::OnceLock<ClientConfigs> = std::sync::OnceLock::new();
    let cache = CACHE.get_or_init(dashmap::DashMap::new);
    let key = (mode, root_cert.map(str::to_owned));
    if let Some(c) = cache.get(&key) {
        return Ok(c.clone());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?;
    let config = match mode {
        SslMode::Disable | SslMode::Prefer | SslMode::Require => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
            .with_no_client_auth(),
        SslMode::VerifyCa | SslMode::VerifyFull => {
            let path = root_cert
                .ok_or_else(|| io::Error::other("sslmode verify-ca/verify-full needs sslrootcert"))?;
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(path).map_err(io::Error::other)? {
                roots.add(cert.map_err(io::Error::other)?).map_err(io::Error::other)?;
            }
            let webpki =
                rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .map_err(io::Error::other)?;
            if mode == SslMode::VerifyFull {
                builder.with_webpki_verifier(webpki).with_no_client_auth()
            } else {
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(AnyName(webpki)))
                    .with_no_client_auth()
            }
        }
    };
    let config = Arc::new(config);
    cache.insert(key, config.clone());
    Ok(config)
}

/// `prefer` / `require`: encryption without authentication of the server, as libpq does.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to the CA; the name is not checked.
#[derive(Debug)]
struct AnyName(Arc<rustls::client::WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.0.verify_server_cert(end_entity, intermediates, name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName))
            | Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForNameContext {
                ..
            })) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
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
