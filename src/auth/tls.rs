//! TLS for clients (rustls): certificates from PEM files, one chosen by the client's server
//! name (SNI) when several are configured, reloaded on SIGHUP without dropping connections.

use std::path::Path;
use std::sync::{Arc, RwLock};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

use crate::config::TlsConfig;

/// ALPN protocol of PostgreSQL 17's direct TLS negotiation.
pub const ALPN_POSTGRESQL: &[u8] = b"postgresql";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {why}")]
    Read { path: String, why: String },
    #[error("{0}")]
    Config(String),
}

/// A certificate with its key, and the `tls-server-end-point` channel-binding data for it.
#[derive(Debug)]
struct Identity {
    key: Arc<CertifiedKey>,
    end_point: Vec<u8>,
}

/// Picks the certificate for a client's server name: the longest matching suffix, else the
/// default one.
#[derive(Debug)]
struct SniResolver {
    default: Identity,
    by_suffix: Vec<(String, Identity)>,
}

impl SniResolver {
    fn pick(&self, server_name: Option<&str>) -> &Identity {
        let Some(name) = server_name else { return &self.default };
        self.by_suffix
            .iter()
            .filter(|(suffix, _)| name == suffix || name.ends_with(&format!(".{suffix}")))
            .max_by_key(|(suffix, _)| suffix.len())
            .map_or(&self.default, |(_, id)| id)
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.pick(hello.server_name()).key.clone())
    }
}

/// The current TLS setup; swapped whole on reload.
pub struct Tls {
    config: TlsConfig,
    current: RwLock<Arc<Loaded>>,
}

struct Loaded {
    acceptor: tokio_rustls::TlsAcceptor,
    resolver: Arc<SniResolver>,
}

impl Tls {
    /// `None` when no certificate is configured (TLS off).
    pub fn new(config: &TlsConfig) -> Result<Option<Arc<Tls>>, TlsError> {
        if config.cert.is_empty() {
            return Ok(None);
        }
        let loaded = load(config)?;
        Ok(Some(Arc::new(Tls { config: config.clone(), current: RwLock::new(Arc::new(loaded)) })))
    }

    /// Re-reads the certificate files; connections already open keep theirs.
    pub fn reload(&self) -> Result<(), TlsError> {
        let loaded = load(&self.config)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(loaded);
        Ok(())
    }

    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        self.current.read().unwrap_or_else(|e| e.into_inner()).acceptor.clone()
    }

    /// The `tls-server-end-point` channel-binding data (RFC 5929) of the certificate a client
    /// with this server name was given: SHA-256 of the certificate.
    pub fn end_point(&self, server_name: Option<&str>) -> Vec<u8> {
        let current = self.current.read().unwrap_or_else(|e| e.into_inner()).clone();
        current.resolver.pick(server_name).end_point.clone()
    }

    pub fn required(&self) -> bool {
        self.config.require
    }
}

fn load(config: &TlsConfig) -> Result<Loaded, TlsError> {
    let default = identity(&config.cert, &config.key)?;
    let mut by_suffix = Vec::new();
    for c in &config.certs {
        by_suffix.push((c.suffix.trim_start_matches('.').to_owned(), identity(&c.cert, &c.key)?));
    }
    let resolver = Arc::new(SniResolver { default, by_suffix });
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(resolver.clone());
    server.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
    Ok(Loaded { acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)), resolver })
}

fn identity(cert: &str, key: &str) -> Result<Identity, TlsError> {
    let read = |path: &str, why: String| TlsError::Read { path: path.to_owned(), why };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(Path::new(cert))
        .map_err(|e| read(cert, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| read(cert, e.to_string()))?;
    let Some(leaf) = certs.first() else {
        return Err(read(cert, "no certificate in the file".into()));
    };
    let end_point = Sha256::digest(leaf.as_ref()).to_vec();
    let key_der = PrivateKeyDer::from_pem_file(Path::new(key)).map_err(|e| read(key, e.to_string()))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key_der)
        .map_err(|e| TlsError::Config(format!("{key}: {e}")))?;
    Ok(Identity { key: Arc::new(CertifiedKey::new(certs, signing)), end_point })
}
