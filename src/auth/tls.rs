//! TLS (rustls) both ways. Towards clients: certificates from PEM files, one chosen by the
//! client's server name (SNI) when several are configured, reloaded on SIGHUP without dropping
//! connections. Towards upstreams and the control database: client configurations per
//! `sslmode` (libpq's meaning), built once per (mode, CA file).

use std::io;
use std::path::Path;
use std::sync::{Arc, RwLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use sha2::{Digest, Sha256};

use crate::config::TlsConfig;
use crate::model::SslMode;

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
    /// The `[tls]` section in force (a reload may name other files).
    config: arc_swap::ArcSwap<TlsConfig>,
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
        Ok(Some(Arc::new(Tls {
            config: arc_swap::ArcSwap::from_pointee(config.clone()),
            current: RwLock::new(Arc::new(loaded)),
        })))
    }

    /// Re-reads the certificate files; connections already open keep theirs.
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = self.config.load_full();
        self.reload_from(&config)
    }

    /// Loads the files `config` names and, if they all load, puts them and `config` in
    /// force; else nothing changes.
    pub fn reload_from(&self, config: &TlsConfig) -> Result<(), TlsError> {
        let loaded = load(config)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(loaded);
        self.config.store(Arc::new(config.clone()));
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
        self.config.load().require
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

type ClientConfigs = dashmap::DashMap<(SslMode, Option<String>), Arc<rustls::ClientConfig>>;

/// Client TLS configurations, built once per (mode, CA file).
pub fn client_config(mode: SslMode, root_cert: Option<&str>) -> io::Result<Arc<rustls::ClientConfig>> {
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
