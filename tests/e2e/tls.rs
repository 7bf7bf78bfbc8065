//! TLS end to end with psql (libpq): sslmode=require and verify-full against a CA generated
//! here, SNI routing, SNI vs user conflicts, SCRAM-SHA-256-PLUS, require_tls, and
//! PostgreSQL 17's direct TLS negotiation.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use pgtenant::auth::Verifier;
use pgtenant::config::{Config, TenantConfig, UserConfig};
use pgtenant::model::AuthMethod;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls_pki_types::pem::PemObject;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

use crate::support::*;

/// A test CA and a server certificate for `*.db.test` and `localhost`, in `dir`.
pub(crate) fn certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = KeyPair::generate().expect("ca key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "pgtenant test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).expect("ca");
    let leaf_key = KeyPair::generate().expect("leaf key");
    let leaf = CertificateParams::new(vec!["*.db.test".to_owned(), "localhost".to_owned()])
        .expect("leaf params")
        .signed_by(&leaf_key, &ca)
        .expect("leaf");
    let (ca_path, cert_path, key_path) = (dir.join("ca.pem"), dir.join("server.pem"), dir.join("server.key"));
    std::fs::write(&ca_path, ca.pem()).expect("write ca");
    std::fs::write(&cert_path, leaf.pem()).expect("write cert");
    std::fs::write(&key_path, leaf_key.serialize_pem()).expect("write key");
    (ca_path, cert_path, key_path)
}

pub(crate) fn tls_config(tenants: Vec<TenantConfig>, cert: &Path, key: &Path) -> Config {
    let mut c = config(tenants);
    c.proxy.auth = AuthMethod::ScramSha256;
    c.tls.cert = cert.display().to_string();
    c.tls.key = key.display().to_string();
    c.resolver.sni_suffix = "db.test".into();
    c
}

async fn psql(conninfo: &str, password: &str) -> (bool, String, String) {
    let out = Command::new("psql")
        .arg(conninfo)
        .args(["-X", "-At", "-w", "-c", "SELECT current_database()"])
        .env("PGPASSWORD", password)
        .output()
        .await
        .expect("psql");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_over_tls_with_verify_full_sni_and_channel_binding() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca, cert, key) = certificates(dir.path());
    let mut acme = tenant_db("tlsacme").await;
    acme.users.push(UserConfig { name: "app".into(), verifier: Verifier::hash("pw-acme") });
    let other = tenant_db("tlsother").await;
    let h = start(tls_config(vec![acme.clone(), other.clone()], &cert, &key)).await;
    let port = h.addr.port();
    let ca = ca.display();
    let id = &acme.id;

    // verify-full against the test CA, the tenant from SNI alone, SCRAM-SHA-256-PLUS required.
    let (ok, db, err) = psql(
        &format!("host={id}.db.test hostaddr=127.0.0.1 port={port} user=app dbname=x sslmode=verify-full sslrootcert={ca} channel_binding=require"),
        "pw-acme",
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(db, acme.database);
    // sslmode=require with the user resolver.
    let (ok, db, err) =
        psql(&format!("host=127.0.0.1 port={port} user=app.{id} dbname=x sslmode=require"), "pw-acme").await;
    assert!(ok, "{err}");
    assert_eq!(db, acme.database);
    // SNI names one tenant, the user another: refused, naming both.
    let (ok, _, err) = psql(
        &format!("host={id}.db.test hostaddr=127.0.0.1 port={port} user=app.{} dbname=x sslmode=verify-full sslrootcert={ca}", other.id),
        "pw-acme",
    )
    .await;
    assert!(!ok && err.contains("conflicts") && err.contains("TLS server name"), "{err}");
    // A wrong password over TLS: 28P01 as in plaintext.
    let (ok, _, err) =
        psql(&format!("host=127.0.0.1 port={port} user=app.{id} dbname=x sslmode=require"), "wrong").await;
    assert!(!ok && err.contains("password authentication failed"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_tls_refuses_plaintext_and_direct_tls_works() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca, cert, key) = certificates(dir.path());
    let mut t = tenant_db("tlsreq").await;
    t.users.push(UserConfig { name: "app".into(), verifier: Verifier::hash("pw") });
    let mut cfg = tls_config(vec![t.clone()], &cert, &key);
    cfg.tls.require = true;
    let h = start(cfg).await;
    let port = h.addr.port();
    let (ok, _, err) =
        psql(&format!("host=127.0.0.1 port={port} user=app.{} dbname=x sslmode=disable", t.id), "pw").await;
    assert!(!ok && err.contains("TLS is required"), "{err}");

    // Direct TLS (PostgreSQL 17 clients, sslnegotiation=direct): TLS from the first byte,
    // ALPN "postgresql", then the startup packet inside TLS.
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_file_iter(&ca).expect("ca file") {
        roots.add(c.expect("ca cert")).expect("add root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.alpn_protocols = vec![b"postgresql".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
    let tcp = tokio::net::TcpStream::connect(h.addr).await.expect("connect");
    let name = rustls_pki_types::ServerName::try_from(format!("{}.db.test", t.id)).expect("name");
    let mut tls = connector.connect(name, tcp).await.expect("direct TLS handshake");
    tls.write_all(&startup_packet(&[("user", "app"), ("database", "x")])).await.expect("startup");
    let mut head = [0u8; 9];
    tls.read_exact(&mut head).await.expect("auth request");
    assert_eq!(&head[..1], b"R");
    assert_eq!(&head[5..9], &10i32.to_be_bytes(), "AuthenticationSASL over direct TLS (tenant from SNI)");
}

/// Bytes a client sends after its SSLRequest, before the TLS handshake, were not encrypted
/// and may have been injected: the connection is closed without an `S`, as PostgreSQL does
/// (CVE-2021-23214). An SSLRequest alone still gets its `S`.
#[tokio::test]
async fn bytes_after_an_ssl_request_before_the_handshake_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_ca, cert, key) = certificates(dir.path());
    let t = tenant_db("tlsinject").await;
    let h = start(tls_config(vec![t.clone()], &cert, &key)).await;
    const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

    let mut alone = tokio::net::TcpStream::connect(h.addr).await.expect("connect");
    alone.write_all(&SSL_REQUEST).await.expect("send");
    let mut answer = [0u8; 1];
    alone.read_exact(&mut answer).await.expect("answer");
    assert_eq!(&answer, b"S");

    let mut bytes = SSL_REQUEST.to_vec();
    bytes.extend_from_slice(&startup_packet(&[("user", &format!("app.{}", t.id))]));
    let mut injected = tokio::net::TcpStream::connect(h.addr).await.expect("connect");
    injected.write_all(&bytes).await.expect("send");
    let mut got = Vec::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(5), injected.read_to_end(&mut got)).await;
    assert!(read.is_ok(), "connection not closed");
    assert!(got.is_empty(), "answered {got:?}");
}

/// Turns TLS on in the test cluster, once per test binary (ssl can change with a reload;
/// plaintext clients of other tests keep working), with a certificate for `localhost`;
/// returns the CA file that signed it.
pub(crate) async fn cluster_tls() -> PathBuf {
    static ON: tokio::sync::OnceCell<PathBuf> = tokio::sync::OnceCell::const_new();
    ON.get_or_init(|| async {
        let dir = tempfile::tempdir().expect("tempdir");
        let (ca, cert, key) = certificates(dir.path());
        let data = &cluster().data_dir;
        let (server_crt, server_key, ca_copy) =
            (data.join("upstream.crt"), data.join("upstream.key"), data.join("test-ca.pem"));
        std::fs::copy(&cert, &server_crt).expect("copy cert");
        std::fs::copy(&key, &server_key).expect("copy key");
        std::fs::copy(&ca, &ca_copy).expect("copy ca");
        for f in [&server_crt, &server_key] {
            let ok =
                std::process::Command::new("chown").arg("postgres:postgres").arg(f).status().expect("chown");
            assert!(ok.success());
            let ok = std::process::Command::new("chmod").arg("600").arg(f).status().expect("chmod");
            assert!(ok.success());
        }
        let admin = admin("postgres").await;
        for sql in [
            format!("ALTER SYSTEM SET ssl_cert_file = '{}'", server_crt.display()),
            format!("ALTER SYSTEM SET ssl_key_file = '{}'", server_key.display()),
            "ALTER SYSTEM SET ssl = on".to_owned(),
            "SELECT pg_reload_conf()".to_owned(),
        ] {
            admin.simple_query(&sql).await.expect("enable ssl");
        }
        assert!(
            eventually(std::time::Duration::from_secs(5), || async {
                let c = crate::support::admin("postgres").await;
                c.query_one("SHOW ssl", &[]).await.map(|r| r.get::<_, String>(0) == "on").unwrap_or(false)
            })
            .await,
            "ssl did not turn on"
        );
        ca_copy
    })
    .await
    .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_over_tls_with_verify_full() {
    let ca = cluster_tls().await;
    let mut t = tenant_db("uptls").await;
    t.upstream = "tls".into();
    let mut wrong = tenant_db("uptlswrong").await;
    wrong.upstream = "wrongca".into();
    let mut cfg = config(vec![t.clone(), wrong.clone()]);
    let other_ca = tempfile::tempdir().expect("tempdir");
    let (other_ca_path, _, _) = certificates(other_ca.path());
    for (name, ca_file) in [("tls", &ca), ("wrongca", &other_ca_path)] {
        cfg.upstreams.push(pgtenant::config::UpstreamConfig {
            name: name.into(),
            host: "localhost".into(),
            port: cluster().port,
            max_connections: 10,
            sslmode: pgtenant::model::SslMode::VerifyFull,
            sslrootcert: Some(ca_file.display().to_string()),
            require_auth: None,
        });
    }
    let h = start(cfg).await;
    let c = h.client(&t.id).await;
    let ssl: bool =
        c.query_typed("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[]).await.expect("query")
            [0]
        .get(0);
    assert!(ssl, "the upstream connection is not encrypted");
    // An idle TLS connection passes the check at checkout (nothing unread under TLS) and is
    // reused by the next client.
    let first: i32 = c.query_one("SELECT pg_backend_pid()", &[]).await.expect("pid").get(0);
    drop(c);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let next: i32 =
        h.client(&t.id).await.query_one("SELECT pg_backend_pid()", &[]).await.expect("pid").get(0);
    assert_eq!(next, first, "the idle upstream TLS connection was not reused");
    // A CA that did not sign the server's certificate: refused.
    let e =
        tokio_postgres::connect(&h.conninfo(&wrong.id), tokio_postgres::NoTls).await.err().expect("refused");
    assert_eq!(code(&e), "08006");
}

/// tokio-postgres over rustls, with the `tls-server-end-point` channel binding it needs for
/// SCRAM-SHA-256-PLUS (what crates like tokio-postgres-rustls provide).
mod pg_rustls {
    use std::future::Future;
    use std::io;
    use std::pin::Pin;
    use std::sync::Arc;
    use std::task::{Context, Poll};

    use sha2::{Digest, Sha256};
    use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
    use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};

    pub struct MakeRustls(pub Arc<rustls::ClientConfig>);
    pub struct Connector(Arc<rustls::ClientConfig>, String);
    pub struct Stream<S>(tokio_rustls::client::TlsStream<S>);

    impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> MakeTlsConnect<S> for MakeRustls {
        type Stream = Stream<S>;
        type TlsConnect = Connector;
        type Error = io::Error;
        fn make_tls_connect(&mut self, domain: &str) -> io::Result<Connector> {
            Ok(Connector(self.0.clone(), domain.to_owned()))
        }
    }

    impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> TlsConnect<S> for Connector {
        type Stream = Stream<S>;
        type Error = io::Error;
        type Future = Pin<Box<dyn Future<Output = io::Result<Stream<S>>> + Send>>;
        fn connect(self, stream: S) -> Self::Future {
            Box::pin(async move {
                let name = rustls_pki_types::ServerName::try_from(self.1)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
                Ok(Stream(tokio_rustls::TlsConnector::from(self.0).connect(name, stream).await?))
            })
        }
    }

    impl<S: AsyncRead + AsyncWrite + Unpin> tokio_postgres::tls::TlsStream for Stream<S> {
        fn channel_binding(&self) -> ChannelBinding {
            match self.0.get_ref().1.peer_certificates().and_then(|c| c.first()) {
                Some(cert) => ChannelBinding::tls_server_end_point(Sha256::digest(cert.as_ref()).to_vec()),
                None => ChannelBinding::none(),
            }
        }
    }

    impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Stream<S> {
        fn poll_read(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
        }
    }

    impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Stream<S> {
        fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
        }
        fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.get_mut().0).poll_flush(cx)
        }
        fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokio_postgres_over_tls_with_scram_plus() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca, cert, key) = certificates(dir.path());
    let mut t = tenant_db("tpgtls").await;
    t.users.push(UserConfig { name: "app".into(), verifier: Verifier::hash("tp-secret") });
    let h = start(tls_config(vec![t.clone()], &cert, &key)).await;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_file_iter(&ca).expect("ca file") {
        roots.add(c.expect("ca cert")).expect("add root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tls = pg_rustls::MakeRustls(Arc::new(client));
    let conninfo = format!(
        "host={}.db.test hostaddr=127.0.0.1 port={} user=app dbname=x password=tp-secret sslmode=require channel_binding=require",
        t.id,
        h.addr.port()
    );
    let (c, conn) = tokio_postgres::connect(&conninfo, tls).await.expect("TLS + SCRAM-SHA-256-PLUS login");
    tokio::spawn(conn);
    let db: String = c.query_typed("SELECT current_database()", &[]).await.expect("query")[0].get(0);
    assert_eq!(db, t.database, "routed by SNI");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_chosen_by_sni_and_reloaded_without_dropping_connections() {
    let default_dir = tempfile::tempdir().expect("tempdir");
    let (_, cert, key) = certificates(default_dir.path());
    // A second CA and a certificate for *.other.test, chosen by SNI suffix.
    let other_dir = tempfile::tempdir().expect("tempdir");
    let other_ca_key = KeyPair::generate().expect("key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // A name of its own: a leaf whose issuer name equals its subject looks self-signed.
    ca_params.distinguished_name.push(DnType::CommonName, "other test CA");
    let other_ca = CertifiedIssuer::self_signed(ca_params, other_ca_key).expect("ca");
    let leaf_key = KeyPair::generate().expect("key");
    let leaf = CertificateParams::new(vec!["*.other.test".to_owned()])
        .expect("params")
        .signed_by(&leaf_key, &other_ca)
        .expect("leaf");
    let (other_ca_path, other_cert, other_key) =
        (other_dir.path().join("ca.pem"), other_dir.path().join("c.pem"), other_dir.path().join("c.key"));
    std::fs::write(&other_ca_path, other_ca.pem()).expect("write");
    std::fs::write(&other_cert, leaf.pem()).expect("write");
    std::fs::write(&other_key, leaf_key.serialize_pem()).expect("write");

    let mut t = tenant_db("multicert").await;
    t.users.push(UserConfig { name: "app".into(), verifier: Verifier::hash("pw") });
    let mut cfg = tls_config(vec![t.clone()], &cert, &key);
    cfg.tls.certs.push(pgtenant::config::SniCertConfig {
        suffix: "other.test".into(),
        cert: other_cert.display().to_string(),
        key: other_key.display().to_string(),
    });
    let h = start(cfg).await;
    let port = h.addr.port();
    let via = |name: &str, ca: &Path| {
        format!(
            "host={name} hostaddr=127.0.0.1 port={port} user=app.{} dbname=x sslmode=verify-full sslrootcert={}",
            t.id,
            ca.display()
        )
    };
    // x.other.test gets the second certificate (only its CA verifies it).
    let (ok, _, err) = psql(&via("x.other.test", &other_ca_path), "pw").await;
    assert!(ok, "{err}");

    // An open connection survives a reload that replaces the default certificate.
    let open = Command::new("psql")
        .arg(via(&format!("{}.db.test", t.id), &default_dir.path().join("ca.pem")))
        .args(["-X", "-At", "-w", "-c", "SELECT pg_sleep(1.5), 'still here'"])
        .env("PGPASSWORD", "pw")
        .output();
    let reload = async {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let new_dir = tempfile::tempdir().expect("tempdir");
        let (new_ca, new_cert, new_key) = certificates(new_dir.path());
        std::fs::copy(&new_cert, &cert).expect("replace cert");
        std::fs::copy(&new_key, &key).expect("replace key");
        h.proxy.tls.as_ref().expect("tls on").reload().expect("reload");
        (new_dir, new_ca)
    };
    let (open, (_new_dir, new_ca)) = tokio::join!(open, reload);
    let open = open.expect("psql");
    assert!(
        open.status.success() && String::from_utf8_lossy(&open.stdout).contains("still here"),
        "{}",
        String::from_utf8_lossy(&open.stderr)
    );
    // New connections get the new certificate: the new CA verifies it, the old one does not.
    let (ok, _, err) = psql(&via(&format!("{}.db.test", t.id), &new_ca), "pw").await;
    assert!(ok, "{err}");
    let (ok, _, _) = psql(&via(&format!("{}.db.test", t.id), &default_dir.path().join("ca.pem")), "pw").await;
    assert!(!ok, "the old certificate is still served after the reload");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_database_over_tls_with_verify_full() {
    let ca = cluster_tls().await;
    let t = tenant_db("ctltls").await;
    let mut cfg = config(vec![]);
    let control = control_db(&mut cfg).await;
    insert_tenant(&control, &t).await;
    let db: String = control.query_one("SELECT current_database()::text", &[]).await.expect("db").get(0);
    let url = |ca: &Path| {
        format!(
            "host=localhost port={} user=postgres password={} dbname={db} sslmode=verify-full sslrootcert={}",
            cluster().port,
            pgtenant::embedded::SUPERUSER_PASSWORD,
            ca.display()
        )
    };
    // A CA that did not sign the server's certificate: the catalog does not start.
    let other = tempfile::tempdir().expect("tempdir");
    let (other_ca, _, _) = certificates(other.path());
    let mut wrong = cfg.clone();
    wrong.catalog.url = url(&other_ca);
    assert!(
        pgtenant::catalog::ControlCatalog::start(&wrong.catalog, &wrong.pool).await.is_err(),
        "a control database with a certificate from another CA was trusted"
    );
    // The right CA: the proxy runs on the control database over TLS.
    cfg.catalog.url = url(&ca);
    let (h, catalog) = start_control(cfg).await;
    assert!(catalog.listening(), "the LISTEN connection is up");
    h.client(&t.id).await.batch_execute("SELECT 1").await.expect("a tenant from the catalog");
    let (plain, encrypted): (i64, i64) = {
        let row = admin("postgres")
            .await
            .query_one(
                "SELECT count(*) FILTER (WHERE NOT s.ssl), count(*) FILTER (WHERE s.ssl)
                   FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
                  WHERE a.datname = $1 AND a.backend_type = 'client backend' AND a.client_addr IS NOT NULL",
                &[&db],
            )
            .await
            .expect("count");
        (row.get(0), row.get(1))
    };
    assert!(
        encrypted >= 1 && plain == 0,
        "control connections over TCP: {encrypted} with TLS, {plain} without"
    );
}
