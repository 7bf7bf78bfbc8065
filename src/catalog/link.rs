//! The connection to the control database, with TLS as its URL asks: `sslmode` (disable,
//! prefer, require, verify-ca, verify-full, as libpq reads them) and `sslrootcert` (the CA
//! file for the verifying modes), through rustls — the same client configurations as the
//! links to upstreams. tokio-postgres itself knows only disable/prefer/require and no
//! `sslrootcert`, so both are taken out of the URL here and the rest is handed to it.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};

use crate::model::SslMode;

/// How long opening a control-database connection may take when its URL sets no
/// `connect_timeout`: a control database that does not answer must not hang a CLI command,
/// an admin request or a catalog lookup forever.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A control database: where it is, and how to secure the connection.
#[derive(Clone, Debug)]
pub struct ControlLink {
    pub config: tokio_postgres::Config,
    pub tls: ControlTls,
}

impl ControlLink {
    /// Reads a URL (`postgresql://…?sslmode=verify-full&sslrootcert=/ca.pem`) or a
    /// key=value connection string.
    pub fn parse(url: &str) -> Result<ControlLink, String> {
        let (rest, sslmode, rootcert) = take_tls_params(url)?;
        let mode = match sslmode.as_deref() {
            None => SslMode::Prefer,
            Some(m) => SslMode::parse(m).ok_or_else(|| format!("unknown sslmode {m:?}"))?,
        };
        if matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull) && rootcert.is_none() {
            return Err(format!("sslmode={} needs sslrootcert (a CA file)", mode.as_str()));
        }
        let mut config: tokio_postgres::Config = rest.parse().map_err(|e| format!("{e}"))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        config.ssl_mode(match mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        });
        let tls = match mode {
            SslMode::Disable => ControlTls(None),
            _ => ControlTls(Some(
                crate::auth::tls::client_config(mode, rootcert.as_deref()).map_err(|e| e.to_string())?,
            )),
        };
        Ok(ControlLink { config, tls })
    }

    /// Opens a connection whose `Connection` half runs in a task of its own: the one way
    /// pgtenant opens the control database for queries (within the connect timeout, TLS as
    /// the URL asks).
    pub async fn open(&self) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, conn) = self.connect().await?;
        tokio::spawn(conn);
        Ok(client)
    }

    /// Opens a connection; the caller drives its `Connection` half (LISTEN reads
    /// notifications from it).
    pub async fn connect(
        &self,
    ) -> Result<
        (tokio_postgres::Client, tokio_postgres::Connection<tokio_postgres::Socket, ControlStream>),
        tokio_postgres::Error,
    > {
        self.config.connect(self.tls.clone()).await
    }
}

/// Splits `sslmode` and `sslrootcert` off a URL or key=value string.
fn take_tls_params(url: &str) -> Result<(String, Option<String>, Option<String>), String> {
    let (mut mode, mut root) = (None, None);
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let Some((base, query)) = url.split_once('?') else { return Ok((url.to_owned(), None, None)) };
        let mut kept = Vec::new();
        for pair in query.split('&') {
            match pair.split_once('=') {
                Some(("sslmode", v)) => mode = Some(percent_decode(v)?),
                Some(("sslrootcert", v)) => root = Some(percent_decode(v)?),
                _ => kept.push(pair),
            }
        }
        let rest = if kept.is_empty() { base.to_owned() } else { format!("{base}?{}", kept.join("&")) };
        return Ok((rest, mode, root));
    }
    let mut kept = Vec::new();
    for (key, value) in conninfo_pairs(url)? {
        match key.as_str() {
            "sslmode" => mode = Some(value),
            "sslrootcert" => root = Some(value),
            _ => kept.push(format!("{key}='{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))),
        }
    }
    Ok((kept.join(" "), mode, root))
}

/// The key=value pairs of a libpq connection string (values optionally single-quoted, with
/// backslash escapes).
fn conninfo_pairs(s: &str) -> Result<Vec<(String, String)>, String> {
    let mut pairs = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(pairs);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(format!("missing \"=\" after {key:?} in the connection string"));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    Some('\\') => value.push(chars.next().ok_or("unterminated quoted value")?),
                    Some('\'') => break,
                    Some(c) => value.push(c),
                    None => return Err("unterminated quoted value".into()),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.push(chars.next().ok_or("dangling backslash")?);
                } else {
                    value.push(c);
                }
            }
        }
        pairs.push((key, value));
    }
}

fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
            let byte = hex.and_then(|h| u8::from_str_radix(h, 16).ok()).ok_or("bad %-escape in the URL")?;
            out.push(byte);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "the URL is not UTF-8 once decoded".into())
}

/// rustls for tokio-postgres (`None`: sslmode=disable).
#[derive(Clone)]
pub struct ControlTls(Option<Arc<rustls::ClientConfig>>);

impl std::fmt::Debug for ControlTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "ControlTls(rustls)" } else { "ControlTls(off)" })
    }
}

/// A connector for one host.
pub struct ControlTlsConnect {
    config: Option<Arc<rustls::ClientConfig>>,
    /// Not a valid name (a Unix socket's "" — PostgreSQL answers its SSLRequest with N and no
    /// handshake happens — or a malformed host): an error only if a handshake is attempted.
    name: Result<ServerName<'static>, String>,
}

impl<S> MakeTlsConnect<S> for ControlTls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = ControlStream<S>;
    type TlsConnect = ControlTlsConnect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> io::Result<ControlTlsConnect> {
        let name = ServerName::try_from(domain.to_owned()).map_err(|e| format!("host {domain:?}: {e}"));
        Ok(ControlTlsConnect { config: self.0.clone(), name })
    }
}

impl<S> TlsConnect<S> for ControlTlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = ControlStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<ControlStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let config = self.config.ok_or_else(|| io::Error::other("TLS is off (sslmode=disable)"))?;
            let name = self.name.map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            let tls = tokio_rustls::TlsConnector::from(config).connect(name, stream).await?;
            Ok(ControlStream(Box::new(tls)))
        })
    }
}

/// A TLS connection to the control database.
pub struct ControlStream<S = tokio_postgres::Socket>(Box<tokio_rustls::client::TlsStream<S>>);

impl<S: AsyncRead + AsyncWrite + Unpin> tokio_postgres::tls::TlsStream for ControlStream<S> {
    /// No channel binding: its hash depends on the certificate's signature algorithm, which
    /// is not worth parsing certificates for here; SCRAM then runs unbound (flag "n"),
    /// which PostgreSQL accepts unless the role requires binding.
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for ControlStream<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.get_mut().0.as_mut()).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for ControlStream<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(self.get_mut().0.as_mut()).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.get_mut().0.as_mut()).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.get_mut().0.as_mut()).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_url_tls_params_are_taken_out() {
        let (rest, mode, root) = take_tls_params(
            "postgresql://u@h:5/db?application_name=x&sslmode=verify-full&sslrootcert=%2Fca%20dir%2Fca.pem",
        )
        .expect("url");
        assert_eq!(rest, "postgresql://u@h:5/db?application_name=x");
        assert_eq!((mode.as_deref(), root.as_deref()), (Some("verify-full"), Some("/ca dir/ca.pem")));
        let (rest, mode, root) =
            take_tls_params("host=h port=5 sslmode=verify-ca sslrootcert='/a b/c\\'s.pem' dbname=x")
                .expect("kv");
        assert_eq!(rest, "host='h' port='5' dbname='x'");
        assert_eq!((mode.as_deref(), root.as_deref()), (Some("verify-ca"), Some("/a b/c's.pem")));
        assert!(ControlLink::parse("host=h sslmode=verify-full").is_err(), "needs sslrootcert");
        assert!(ControlLink::parse("host=h sslmode=bogus").is_err());
        assert!(ControlLink::parse("host=h sslmode=disable").is_ok());
        assert!(ControlLink::parse("host='unterminated").is_err());
        assert!(take_tls_params("postgresql://h/db?sslrootcert=%zz").is_err());
    }
}
