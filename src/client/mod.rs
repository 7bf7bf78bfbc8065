//! One client session: handshake (startup packet, SSL/GSS refusal, cancel requests) →
//! resolve the tenant → look it up → authenticate → login messages → relay.

mod pipeline;
mod relay;
mod setcmd;
mod statements;
pub mod stream;
pub mod vars;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::OwnedSemaphorePermit;

use crate::auth::hex;
use crate::auth::scram::{self, ServerExchange};
use crate::auth::Verifier;
use crate::cancel::ClientKey;
use crate::catalog::{CatalogError, Tenant};
use crate::config::secs;
use crate::config::AuthMethod;
use crate::pool::{Pool, ServerParams};
use crate::protocol::backend;
use crate::protocol::frame::FrameReader;
use crate::protocol::startup::{self, StartupPacket};
use crate::protocol::{FrameError, PgError, SqlState};
use crate::server::{Proxy, TenantAdmission};
use crate::tenant;
use stream::{ClientStream, TlsInfo};
use tokio::net::TcpStream;

use vars::ClientVars;

/// Serves one accepted connection to its end. `permit` is the client's place under the
/// global cap; without one the client is refused with 53300 once it has said who it is.
pub async fn serve(
    mut tcp: TcpStream,
    peer: SocketAddr,
    proxy: Arc<Proxy>,
    permit: Option<OwnedSemaphorePermit>,
) {
    let timeout = secs(proxy.config.proxy.startup_timeout);
    let deadline = tokio::time::Instant::now() + timeout;
    let timed_out = || PgError::fatal(SqlState::ProtocolViolation, "startup timed out");
    let tls = proxy.tls.as_deref();
    let (stream, prefix, tls_info) =
        match tokio::time::timeout_at(deadline, stream::opening(&mut tcp, tls)).await {
            Ok(Ok(stream::Opening::Plain(prefix))) => (ClientStream::Plain(tcp), prefix, TlsInfo::default()),
            Ok(Ok(stream::Opening::Tls { direct })) => {
                let Some(tls) = tls else { return };
                match tokio::time::timeout_at(deadline, stream::accept(tcp, tls, direct)).await {
                    Ok(Some((stream, info))) => (stream, BytesMut::new(), info),
                    _ => return,
                }
            }
            Ok(Ok(stream::Opening::Closed)) | Ok(Err(_)) => return,
            Err(_) => {
                tracing::info!(%peer, "startup timed out");
                let _ = tcp.write_all(&timed_out().to_bytes()).await;
                return;
            }
        };
    let mut reader = FrameReader::with_buffer(stream, prefix, proxy.config.proxy.max_message_size);
    let handshake = handshake(&mut reader, &proxy, permit.is_some(), &tls_info, peer);
    let login = match tokio::time::timeout_at(deadline, handshake).await {
        Ok(Ok(Some(login))) => login,
        Ok(Ok(None)) => return,
        Ok(Err(e)) => {
            tracing::info!(%peer, error = %e, "login refused");
            let _ = reader.get_mut().write_all(&e.to_bytes()).await;
            let _ = reader.get_mut().flush().await;
            return;
        }
        Err(_) => {
            tracing::info!(%peer, "startup timed out");
            let _ = reader.get_mut().write_all(&timed_out().to_bytes()).await;
            let _ = reader.get_mut().flush().await;
            return;
        }
    };
    tracing::debug!(%peer, tenant = %login.tenant.id, tls = tls_info.on, "client logged in");
    let (stream, buffered) = reader.into_parts();
    relay::Session::new(stream, buffered, login, proxy).run().await;
    drop(permit);
}

/// What a successful login hands to the relay.
pub(crate) struct LoggedIn {
    pub tenant: Arc<Tenant>,
    pub pool: Arc<Pool>,
    pub vars: ClientVars,
    pub key: ClientKey,
    pub admission: TenantAdmission,
}

async fn handshake<S>(
    reader: &mut FrameReader<S>,
    proxy: &Proxy,
    admitted: bool,
    tls: &TlsInfo,
    peer: SocketAddr,
) -> Result<Option<LoggedIn>, PgError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let startup = loop {
        let body = match reader.read_startup().await {
            Ok(Some(body)) => body,
            Ok(None) => return Ok(None),
            Err(FrameError::Io(_)) | Err(FrameError::Truncated) => return Ok(None),
            Err(e) => {
                return Err(PgError::fatal(
                    SqlState::ProtocolViolation,
                    format!("invalid startup packet: {e}"),
                ))
            }
        };
        match startup::parse(&body) {
            // TLS was negotiated (or refused) before this reader existed (`stream::opening`);
            // a late SSLRequest/GSSENCRequest is answered N and the client goes on as it is.
            Ok(StartupPacket::SslRequest | StartupPacket::GssEncRequest) => {
                let mut out = BytesMut::with_capacity(1);
                backend::refuse_encryption(&mut out);
                reader.get_mut().write_all(&out).await.map_err(io_gone)?;
            }
            Ok(StartupPacket::Cancel { pid, secret }) => {
                proxy.cancel.cancel(pid, &secret).await;
                return Ok(None);
            }
            Ok(StartupPacket::Startup(m)) => break m,
            Err(e) => {
                return Err(PgError::fatal(
                    SqlState::ProtocolViolation,
                    format!("invalid startup packet: {e}"),
                ))
            }
        }
    };
    if !tls.on && proxy.tls.as_ref().is_some_and(|t| t.required()) {
        return Err(PgError::fatal(SqlState::InvalidAuthorization, "TLS is required")
            .with_hint("connect with sslmode=require (or verify-full)"));
    }
    if !admitted {
        return Err(PgError::fatal(SqlState::TooManyConnections, "sorry, too many clients already")
            .with_hint("pgtenant's max_client_conn is reached"));
    }
    if startup.wants_replication() {
        return Err(PgError::fatal(
            SqlState::FeatureNotSupported,
            "pgtenant does not proxy replication connections",
        )
        .with_hint("connect replication clients to the PostgreSQL server directly"));
    }
    let mut out = BytesMut::with_capacity(512);
    if startup.minor > 0 || !startup.protocol_options().is_empty() {
        backend::negotiate_protocol_version(&mut out, startup.protocol_options());
    }
    let resolved = tenant::resolve(&startup, tls.server_name.as_deref(), &proxy.config.resolver)
        .map_err(|e| e.to_client())?;
    let found = match proxy.catalog.lookup(&resolved.tenant).await {
        Ok(found) => found,
        Err(CatalogError::Unavailable(why)) => {
            let reference = PgError::reference();
            tracing::warn!(tenant = %resolved.tenant, %reference, error = %why, "catalog lookup failed");
            return Err(PgError::fatal(
                SqlState::UnableToConnect,
                format!(
                    "cannot look up tenant \"{}\": the control database is unreachable (ref {reference})",
                    resolved.tenant
                ),
            ));
        }
    };
    // Authentication comes before anything that tells whether the tenant exists or what
    // state it is in: an unknown tenant or user fails exactly like a wrong password.
    let method = found.as_ref().and_then(|t| t.auth).unwrap_or(proxy.config.proxy.auth);
    if method != AuthMethod::Trust {
        // The attempt takes its slot before the exchange starts (parallel guesses cannot
        // all run), per (tenant, address): other tenants behind the same address are not
        // affected by this one's failures.
        let Some(attempt) = proxy.throttle.begin(peer.ip(), resolved.tenant.as_str()) else {
            return Err(PgError::fatal(
                SqlState::InvalidPassword,
                "too many failed authentication attempts from this address",
            )
            .with_hint("wait a minute before trying again"));
        };
        let user = startup.get("user").unwrap_or_default();
        let name = resolved.role.as_deref().unwrap_or(user);
        let stored = found.as_ref().and_then(|t| t.users.get(name));
        // An unknown tenant or user gets a mock verifier keyed by the names as resolved, not
        // as spelled: `app.acme` and `user=app options=tenant=acme` see the same salt whether
        // or not acme exists, as they would for a real user.
        let mock_name = format!("{}\0{name}", resolved.tenant.as_str());
        let secret = mock_secret(proxy);
        if let Err(e) = reader.get_mut().write_all(&out).await {
            attempt.abandoned();
            return Err(io_gone(e));
        }
        out.clear();
        let outcome = if method == AuthMethod::Md5 {
            let known = stored.filter(|v| v.starts_with("md5") && v.len() == 35).cloned();
            let accepted = known.is_some();
            let hash = known.unwrap_or_else(|| md5_mock(&secret, &mock_name));
            md5_challenge(reader, &hash).await.map(|proved| proved && accepted)
        } else {
            let known = stored.and_then(|v| Verifier::parse(v));
            let accepted = known.is_some();
            let verifier = known.unwrap_or_else(|| Verifier::mock(&secret, &mock_name));
            scram(reader, verifier, tls.end_point.as_deref()).await.map(|proved| proved && accepted)
        };
        match outcome {
            Ok(true) => attempt.succeeded(),
            // Left before sending a proof (libpq does this to prompt for a password): no
            // guess was made.
            Err(e) if e.state == SqlState::ConnectionFailure => {
                attempt.abandoned();
                return Err(e);
            }
            Err(e) => return Err(e),
            Ok(false) => {
                drop(attempt);
                tracing::info!(tenant = %resolved.tenant, user, %peer, "client authentication failed");
                return Err(PgError::fatal(SqlState::InvalidPassword, "password authentication failed"));
            }
        }
    }
    let Some(tenant) = found else {
        return Err(PgError::fatal(
            SqlState::InvalidCatalogName,
            format!("tenant \"{}\" does not exist", resolved.tenant),
        ));
    };
    if let Some(refusal) = tenant.refusal() {
        return Err(refusal);
    }
    let admission = proxy.admit(&tenant)?;
    backend::authentication_ok(&mut out);
    // Catalog changes reach this proxy's pools from now on (started once, on the first
    // login: before it there are no pools to change).
    proxy.pools.follow(proxy.catalog.clone());
    let pool = proxy.pools.pool_for(&tenant);
    let pool_params = match pool.params() {
        Some(p) => p,
        None => learn_params(proxy, &pool, &tenant).await?,
    };
    let vars = ClientVars::new(&pool_params, &startup, &resolved, &tenant.session_vars);
    for (k, v) in vars.login_params(&pool_params) {
        backend::parameter_status(&mut out, &k, &v);
    }
    let key = proxy.cancel.register();
    backend::backend_key_data(&mut out, key.pid, key.secret());
    backend::ready_for_query_idle(&mut out);
    reader.get_mut().write_all(&out).await.map_err(io_gone)?;
    Ok(Some(LoggedIn { tenant, pool, vars, key, admission }))
}

/// Runs a SCRAM-SHA-256 exchange with the client: whether it proved it knows the password
/// behind `verifier`. The server-final message is sent only on success.
async fn scram<S>(
    reader: &mut FrameReader<S>,
    verifier: Verifier,
    binding: Option<&[u8]>,
) -> Result<bool, PgError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let bad = |e: String| PgError::fatal(SqlState::ProtocolViolation, format!("invalid SASL message: {e}"));
    let mut out = BytesMut::with_capacity(128);
    // Over TLS, SCRAM-SHA-256-PLUS (channel binding tls-server-end-point) is offered first.
    let mechanisms: &[&str] =
        if binding.is_some() { &[scram::MECHANISM_PLUS, scram::MECHANISM] } else { &[scram::MECHANISM] };
    backend::sasl_mechanisms(&mut out, mechanisms);
    reader.get_mut().write_all(&out).await.map_err(io_gone)?;
    // SASLInitialResponse: mechanism, length of the data (or -1), data.
    let first = read_password_message(reader).await?;
    let (mechanism, rest) = backend::cstr(first.body()).ok_or_else(|| bad("no mechanism".into()))?;
    let plus = match mechanism {
        m if m == scram::MECHANISM.as_bytes() => false,
        m if m == scram::MECHANISM_PLUS.as_bytes() && binding.is_some() => true,
        _ => {
            return Err(PgError::fatal(SqlState::InvalidAuthorization, "unsupported SASL mechanism")
                .with_hint("use SCRAM-SHA-256"))
        }
    };
    let data = rest.get(4..).ok_or_else(|| bad("no data".into()))?;
    let (exchange, server_first) =
        ServerExchange::start(verifier, data, binding, plus).map_err(|e| bad(e.to_string()))?;
    out.clear();
    backend::sasl_continue(&mut out, server_first.as_bytes());
    reader.get_mut().write_all(&out).await.map_err(io_gone)?;
    let last = read_password_message(reader).await?;
    match exchange.finish(last.body()).map_err(|e| bad(e.to_string()))? {
        Some(server_final) => {
            out.clear();
            backend::sasl_final(&mut out, server_final.as_bytes());
            reader.get_mut().write_all(&out).await.map_err(io_gone)?;
            Ok(true)
        }
        None => Ok(false),
    }
}

/// MD5 challenge-response against `stored` (`md5` + 32 hex digits): the client answers
/// `md5` + md5(hex part + salt).
async fn md5_challenge<S>(reader: &mut FrameReader<S>, stored: &str) -> Result<bool, PgError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    use md5::{Digest, Md5};
    let salt: [u8; 4] = rand::random();
    let mut out = BytesMut::with_capacity(16);
    backend::md5_password_request(&mut out, salt);
    reader.get_mut().write_all(&out).await.map_err(io_gone)?;
    let answer = read_password_message(reader).await?;
    let answer = backend::cstr(answer.body()).map(|(a, _)| a).unwrap_or_default();
    let mut h = Md5::new();
    h.update(&stored.as_bytes()[3..]);
    h.update(salt);
    let expected = format!("md5{}", hex(&h.finalize()));
    // Constant time over the expected length.
    let same = answer.len() == expected.len()
        && answer.iter().zip(expected.as_bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
    Ok(same)
}

/// The key of the mock verifiers: `[proxy] mock_secret` when set (the same on every proxy,
/// and across restarts, so unknown names keep their salt as real users do), else the
/// per-process secret.
fn mock_secret(proxy: &Proxy) -> std::borrow::Cow<'_, [u8]> {
    match proxy.config.proxy.mock_secret.as_str() {
        "" => std::borrow::Cow::Borrowed(proxy.auth_secret()),
        configured => std::borrow::Cow::Owned(configured.as_bytes().to_vec()),
    }
}

/// The stored MD5 value an unknown user is checked against (no match is possible in practice).
fn md5_mock(secret: &[u8], user: &str) -> String {
    let v = Verifier::mock(secret, user);
    format!("md5{}", hex(&v.stored_key[..16]))
}

/// The next message during authentication, which must be a PasswordMessage-family 'p'.
async fn read_password_message<S>(reader: &mut FrameReader<S>) -> Result<crate::protocol::Frame, PgError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match reader.read_frame().await {
        Ok(Some(f)) if f.tag() == b'p' => Ok(f),
        Ok(Some(_)) => Err(PgError::fatal(SqlState::ProtocolViolation, "expected a SASL response")),
        Ok(None) | Err(FrameError::Io(_)) | Err(FrameError::Truncated) => {
            Err(PgError::fatal(SqlState::ConnectionFailure, "client left during authentication"))
        }
        Err(e) => Err(PgError::fatal(SqlState::ProtocolViolation, format!("invalid message: {e}"))),
    }
}

/// Opens (or borrows) a server connection so the pool learns the server's ParameterStatus
/// values, which clients are shown at login.
async fn learn_params(proxy: &Proxy, pool: &Arc<Pool>, tenant: &Tenant) -> Result<ServerParams, PgError> {
    let co = proxy.pools.checkout(pool, tenant).await.map_err(|e| e.to_client(tenant.id.as_str()))?;
    let params = Arc::new(co.conn_ref().vars.clone());
    co.release();
    Ok(params)
}

/// A client that vanished mid-handshake needs no message; this only satisfies the types.
fn io_gone(e: std::io::Error) -> PgError {
    PgError::fatal(SqlState::ConnectionFailure, format!("client connection lost: {e}"))
}
