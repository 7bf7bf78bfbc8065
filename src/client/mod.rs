//! One client session: handshake (startup packet, SSL/GSS refusal, cancel requests) →
//! resolve the tenant → look it up → authenticate → login messages → relay.

mod classify;
mod console;
#[cfg(test)]
mod future_size;
mod meter;
mod pipeline;
mod relay;
mod reported;
mod restore;
mod rewrite;
mod setcmd;
mod statements;
pub mod stream;
pub mod vars;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::OwnedSemaphorePermit;

use crate::auth::hex;
use crate::auth::scram::ScramError;
use crate::auth::scram::{self, ServerExchange};
use crate::auth::Verifier;
use crate::cancel::ClientKey;
use crate::catalog::Tenant;
use crate::config::secs;
use crate::console::live::Signal;
use crate::model::AuthMethod;
use crate::pool::{Pool, ServerParams};
use crate::protocol::error::{ClientFacing, ErrorKind};
use crate::protocol::frame::{FrameReader, MAX_AUTH_MESSAGE};
use crate::protocol::startup::{self, StartupPacket};
use crate::protocol::{backend, frontend};
use crate::protocol::{FrameError, PgError, SqlState};
use crate::proxy::{Proxy, TenantAdmission};
use crate::tenant;
use stream::{ClientStream, TlsInfo};
use tokio::net::TcpStream;

use vars::ClientVars;

/// Serves one accepted connection to its end. `prelogin` is its place under
/// `max_prelogin_connections`, given back once it has logged in (or failed to); a logged-in
/// client then holds a place under `max_client_conn` until it leaves.
pub async fn serve(tcp: TcpStream, peer: SocketAddr, proxy: Arc<Proxy>, prelogin: OwnedSemaphorePermit) {
    // Boxed: what login leaves behind (and a console session) takes no room in every tenant
    // client's task for as long as it is connected; the session is a plain local, moved
    // into its await (an async fn keeps room for a local it still might use, and for
    // every argument, for the whole of its run).
    let Some(session) = Box::pin(start(tcp, peer, &proxy, prelogin)).await else { return };
    session.await;
}

/// Logs the client in: a tenant client's session to run, or `None` once a console client
/// was served or the client left or was refused.
async fn start(
    tcp: TcpStream,
    peer: SocketAddr,
    proxy: &Arc<Proxy>,
    prelogin: OwnedSemaphorePermit,
) -> Option<impl Future<Output = ()> + Send + use<>> {
    let force = proxy.shutdown.force.clone();
    let login = tokio::select! {
        // Boxed: the login's state is large and only needed while it runs.
        login = Box::pin(login(tcp, peer, proxy)) => login,
        // A forced shutdown ends logins in progress too (they are bounded by the startup
        // timeout anyway, but that may be longer than the shutdown timeout).
        _ = force.cancelled() => None,
    };
    drop(prelogin);
    let (stream, buffered, login, meter, permit) = login?;
    match (login, meter) {
        (Admitted::Tenant(login), Some(meter)) => {
            Some(tenant_session(TenantClient { stream, buffered, login, meter, permit, peer }, proxy))
        }
        // `login` gives every tenant client its meter.
        (Admitted::Tenant(_), None) => None,
        (Admitted::Console(access), _) => {
            // Boxed: a console session is rare.
            Box::pin(serve_console(stream, buffered, access, peer, proxy)).await;
            drop(permit);
            None
        }
    }
}

/// A logged-in tenant client, before its session starts.
struct TenantClient {
    stream: ClientStream,
    buffered: BytesMut,
    login: LoggedIn,
    meter: meter::Meter,
    permit: OwnedSemaphorePermit,
    peer: SocketAddr,
}

/// Lists a tenant client in the console's registry and builds its session.
fn tenant_session(client: TenantClient, proxy: &Arc<Proxy>) -> impl Future<Output = ()> + Send + use<> {
    let TenantClient { stream, buffered, login, meter, permit, peer } = client;
    tracing::debug!(%peer, tenant = %login.tenant.id, "client logged in");
    let (meter, wait) = meter.with_wait_clock();
    let signal = Signal::new(login.admission.generation);
    let listed = proxy.list_session(
        crate::console::live::ClientInfo {
            id: 0,
            tenant: login.tenant.id.clone(),
            user: login.user.clone(),
            addr: peer,
            connected_at: std::time::SystemTime::now(),
            tls: login.tls,
            signal: signal.clone(),
            wait,
        },
        &login.admission,
    );
    relay::Session::new(stream, buffered, login, meter, proxy.clone(), signal, (listed, permit)).run()
}

/// A console client, to its end.
async fn serve_console(
    stream: ClientStream,
    buffered: BytesMut,
    access: crate::console::Access,
    peer: SocketAddr,
    proxy: &Arc<Proxy>,
) {
    tracing::info!(%peer, ?access, "console client logged in");
    let source = console::ProxyConsole { proxy: proxy.clone() };
    tokio::select! {
        end = crate::console::serve_console(stream, buffered, &source, access) => {
            tracing::debug!(%peer, ?end, "console client left");
        }
        // Console sessions hold no transaction: they end as soon as a drain starts,
        // so an idle psql on the console does not hold up a shutdown.
        _ = proxy.shutdown.drain.cancelled() => {}
        _ = proxy.shutdown.force.cancelled() => {}
    }
}

/// Everything before the relay, within the startup timeout: TLS, the startup packet,
/// authentication. `None` when the client left or was refused (it has been told why).
async fn login(
    mut tcp: TcpStream,
    peer: SocketAddr,
    proxy: &Arc<Proxy>,
) -> Option<(ClientStream, BytesMut, Admitted, Option<meter::Meter>, OwnedSemaphorePermit)> {
    let timeout = secs(proxy.config().proxy.startup_timeout);
    let started = std::time::Instant::now();
    let deadline = tokio::time::Instant::now() + timeout;
    let timed_out = PgError::startup_timed_out;
    let tls = proxy.tls.as_deref();
    let (stream, prefix, tls_info) =
        match tokio::time::timeout_at(deadline, stream::opening(&mut tcp, tls)).await {
            Ok(Ok(stream::Opening::Plain(prefix))) => (ClientStream::Plain(tcp), prefix, TlsInfo::default()),
            Ok(Ok(stream::Opening::Tls { direct })) => {
                let tls = tls?;
                match tokio::time::timeout_at(deadline, stream::accept(tcp, tls, direct)).await {
                    Ok(Some((stream, info))) => (stream, BytesMut::new(), info),
                    _ => return None,
                }
            }
            Ok(Ok(stream::Opening::Closed)) | Ok(Err(_)) => return None,
            Err(_) => {
                tracing::info!(%peer, "startup timed out");
                send_error(&mut tcp, &timed_out()).await;
                return None;
            }
        };
    // Before login only startup and authentication messages arrive, capped as PostgreSQL
    // caps them: an oversized one is refused as soon as its header is read.
    let mut reader = FrameReader::with_buffer(stream, prefix, MAX_AUTH_MESSAGE);
    let handshake = handshake(&mut reader, proxy, &tls_info, peer);
    let (login, permit) = match tokio::time::timeout_at(deadline, handshake).await {
        Ok(Ok(Some(login))) => login,
        Ok(Ok(None)) => return None,
        Ok(Err(e)) => {
            tracing::info!(%peer, error = %e, "login refused");
            send_error(reader.get_mut(), &e).await;
            return None;
        }
        Err(_) => {
            tracing::info!(%peer, "startup timed out");
            send_error(reader.get_mut(), &timed_out()).await;
            return None;
        }
    };
    // A tenant client's counters and its login line (console clients have neither).
    let meter = match &login {
        Admitted::Console(_) => None,
        Admitted::Tenant(login) => {
            let line = meter::LoginLine {
                tenant: login.tenant.id.as_str(),
                user: &login.user,
                peer,
                tls: tls_info.on,
                method: login.method,
                took: started.elapsed(),
            };
            let log = &proxy.config().log;
            let pool_stats = proxy.metrics.pool(&crate::metrics::pool_name(login.pool.key()));
            Some(meter::Meter::new(
                proxy.metrics.client_session(login.tenant.id.as_str()),
                pool_stats,
                &line,
                log.connections,
                log.disconnections,
            ))
        }
    };
    // The handshake's buffer is not carried into the session: only the bytes read past the
    // login, in a buffer of their size.
    let (stream, buffered) = reader.into_parts();
    Some((stream, buffered, login, meter, permit))
}

/// How long an error for a client that is being refused may take to write: it is small,
/// but a client that does not read must not hold its connection open.
const ERROR_WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

async fn send_error<S: AsyncWrite + Unpin>(stream: &mut S, e: &PgError) {
    let write = async {
        stream.write_all(&e.to_bytes()).await?;
        stream.flush().await
    };
    let _ = tokio::time::timeout(ERROR_WRITE_TIMEOUT, write).await;
}

/// Where a successful login goes: a tenant's relay, or the admin console.
pub(crate) enum Admitted {
    Tenant(LoggedIn),
    Console(crate::console::Access),
}

/// What a successful login hands to the relay.
pub(crate) struct LoggedIn {
    /// The user name the client logged in with (SHOW CLIENTS, the disconnect line).
    pub user: Arc<str>,
    pub tls: bool,
    pub tenant: Arc<Tenant>,
    pub pool: Arc<Pool>,
    pub vars: ClientVars,
    pub key: ClientKey,
    pub admission: TenantAdmission,
    /// How the client authenticated (for the login line).
    pub method: AuthMethod,
}

/// The handshake after TLS: startup packet, tenant, authentication, login messages. The
/// client's place under `max_client_conn` is taken once it has authenticated.
async fn handshake<S>(
    reader: &mut FrameReader<S>,
    proxy: &Proxy,
    tls: &TlsInfo,
    peer: SocketAddr,
) -> Result<Option<(Admitted, OwnedSemaphorePermit)>, PgError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let body = match reader.read_startup().await {
        Ok(Some(body)) => body,
        Ok(None) => return Ok(None),
        Err(FrameError::Io(_)) | Err(FrameError::Truncated) => return Ok(None),
        Err(e) => return Err(PgError::invalid_startup_packet(&e)),
    };
    let unsupported =
        |minor| PgError::invalid_startup_packet(&startup::StartupError::UnsupportedProtocol(1234, minor));
    let startup = match startup::parse(&body) {
        Ok(StartupPacket::Startup(m)) => m,
        // TLS was negotiated (or refused) before this reader existed (`stream::opening`),
        // each kind of request once: another is refused, as PostgreSQL refuses it
        // ("unsupported frontend protocol 1234.5679").
        Ok(StartupPacket::SslRequest) => return Err(unsupported(5679)),
        Ok(StartupPacket::GssEncRequest) => return Err(unsupported(5680)),
        Ok(StartupPacket::Cancel { pid, secret }) => {
            proxy.cancel.cancel(pid, &secret).await;
            return Ok(None);
        }
        Err(e) => return Err(PgError::invalid_startup_packet(&e)),
    };
    if !tls.on && proxy.tls.as_ref().is_some_and(|t| t.required()) {
        return Err(PgError::tls_required());
    }
    if proxy.clients_full() {
        return Err(PgError::too_many_clients());
    }
    if startup.wants_replication() {
        return Err(PgError::replication_unsupported());
    }
    let mut out = BytesMut::with_capacity(512);
    // Protocol 3.2 (PostgreSQL 18) differs from 3.0 only in the cancel key: the secret may
    // be longer (pgtenant sends 32 bytes, as PostgreSQL 18 does). Upstream connections stay
    // 3.0, which a 3.2 client reads unchanged. 3.1 was never used: such a client is offered
    // 3.0; a newer minor is offered 3.2.
    let newest_minor = if startup.minor >= 2 { 2 } else { 0 };
    if startup.minor != newest_minor || !startup.protocol_options().is_empty() {
        backend::negotiate_protocol_version(&mut out, newest_minor, startup.protocol_options());
    }
    if console::is_console_database(startup.get("database")) {
        let access = console_login(reader, proxy, &startup, tls, peer, &mut out).await?;
        let permit = proxy.client_permit()?;
        // `out` holds what login left to send: the SCRAM server-final message, or (trusted
        // console users) a NegotiateProtocolVersion.
        crate::console::greeting(&mut out, rand::random(), rand::random());
        reader.get_mut().write_all(&out).await.map_err(io_gone)?;
        return Ok(Some((Admitted::Console(access), permit)));
    }
    let resolved = tenant::resolve(&startup, tls.server_name.as_deref(), &proxy.config().resolver)
        .map_err(|e| PgError::report(&e))?;
    // A tenant that is neither cached nor being looked up costs a control-database query:
    // limited per address, and past the limit the client fails exactly as for an unknown
    // tenant (nothing tells it whether the tenant exists). No await between the check and
    // the lookup, so the lookup is in flight before another client checks.
    let free = proxy.catalog.lookup_is_free(&resolved.tenant);
    let global = proxy.metrics.global();
    if free {
        global.catalog_hit();
    } else {
        global.catalog_miss();
    }
    let limited = !free && !proxy.lookups.allow(peer.ip());
    let lookup = if limited {
        tracing::debug!(tenant = %resolved.tenant, %peer, "catalog lookup refused: over lookup_rate_per_address");
        Ok(None)
    } else {
        if !free {
            global.catalog_lookup();
        }
        proxy.catalog.lookup(&resolved.tenant).await
    };
    let found = match lookup {
        Ok(found) => found,
        Err(e) => return Err(PgError::report(&e)),
    };
    // Authentication comes before anything that tells whether the tenant exists or what
    // state it is in: an unknown tenant or user fails exactly like a wrong password.
    let method = found.as_ref().and_then(|t| t.auth).unwrap_or(proxy.config().proxy.auth);
    if method != AuthMethod::Trust {
        // The attempt takes its slot before the exchange starts (parallel guesses cannot
        // all run), per (tenant, address): other tenants behind the same address are not
        // affected by this one's failures.
        let Some(attempt) = proxy.throttle.begin(peer.ip(), resolved.tenant.as_str()) else {
            return Err(PgError::auth_throttled());
        };
        let user = startup.get("user").unwrap_or_default();
        let name = resolved.role.as_deref().unwrap_or(user);
        let stored = found.as_ref().and_then(|t| t.users.get(name));
        // An unknown tenant or user gets a mock verifier keyed by the names as resolved, not
        // as spelled: `app.acme` and `user=app options=tenant=acme` see the same salt whether
        // or not acme exists, as they would for a real user. Built only when needed.
        let mock_name = || format!("{}\0{name}", resolved.tenant.as_str());
        if let Err(e) = reader.get_mut().write_all(&out).await {
            attempt.abandoned();
            return Err(io_gone(e));
        }
        out.clear();
        let outcome = if method == AuthMethod::Md5 {
            let known = stored.filter(|v| v.starts_with("md5") && v.len() == 35).cloned();
            let accepted = known.is_some();
            let hash = known.unwrap_or_else(|| md5_mock(&mock_secret(proxy), &mock_name()));
            md5_challenge(reader, &hash).await.map(|proved| proved && accepted)
        } else {
            let known = stored.and_then(|v| Verifier::parse(v));
            let accepted = known.is_some();
            let verifier = known.unwrap_or_else(|| Verifier::mock(&mock_secret(proxy), &mock_name()));
            scram(reader, verifier, tls.end_point.as_deref(), &mut out).await.map(|proved| proved && accepted)
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
                proxy.metrics.global().auth_failure();
                tracing::info!(tenant = %resolved.tenant, user, %peer, "client authentication failed");
                return Err(PgError::password_failed());
            }
        }
    }
    let Some(tenant) = found else {
        return Err(PgError::tenant_unknown(resolved.tenant.as_str()));
    };
    if let Some(refusal) = tenant.refusal() {
        return Err(refusal);
    }
    let permit = proxy.client_permit()?;
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
        backend::parameter_status(&mut out, k, v);
    }
    let key = proxy.cancel.register(newest_minor >= 2);
    backend::backend_key_data_bytes(&mut out, key.pid, key.secret());
    backend::ready_for_query_idle(&mut out);
    reader.get_mut().write_all(&out).await.map_err(io_gone)?;
    let user: Arc<str> = startup.get("user").unwrap_or_default().into();
    let login = LoggedIn { user, tls: tls.on, tenant, pool, vars, key, admission, method };
    Ok(Some((Admitted::Tenant(login), permit)))
}

/// Authenticates a console user (database `pgbouncer` or `pgtenant`): SCRAM against the
/// verifier of `[admin]` or `pgtenant.console_users`, or none when the proxy's auth is
/// trust. An unknown user or a wrong password fails exactly as a tenant's wrong password
/// does, through the same throttle.
async fn console_login<S>(
    reader: &mut FrameReader<S>,
    proxy: &Proxy,
    startup: &startup::StartupMessage,
    tls: &TlsInfo,
    peer: SocketAddr,
    out: &mut BytesMut,
) -> Result<crate::console::Access, PgError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let user = startup.get("user").unwrap_or_default();
    if console::console_trusts(proxy) {
        return match console::console_user(proxy, user).await {
            Some((access, _)) => Ok(access),
            None => {
                tracing::info!(user, %peer, "console login refused: not a console user");
                Err(console::refused())
            }
        };
    }
    let db = startup.get("database").unwrap_or_default();
    let Some(attempt) = proxy.throttle.begin(peer.ip(), db) else {
        return Err(PgError::auth_throttled());
    };
    if let Err(e) = reader.get_mut().write_all(out).await {
        attempt.abandoned();
        return Err(io_gone(e));
    }
    out.clear();
    // Looked up once the attempt holds its slot: throttled guesses cost the control database
    // nothing.
    let found = console::console_user(proxy, user).await;
    let known = found.as_ref().and_then(|(_, v)| v.as_deref()).and_then(Verifier::parse);
    let accepted = known.is_some();
    let mock_name = format!("{db}\0{user}");
    let verifier = known.unwrap_or_else(|| Verifier::mock(&mock_secret(proxy), &mock_name));
    let outcome =
        scram(reader, verifier, tls.end_point.as_deref(), out).await.map(|proved| proved && accepted);
    match outcome {
        Ok(true) => {
            attempt.succeeded();
            Ok(found.map(|(a, _)| a).unwrap_or(crate::console::Access::Stats))
        }
        Err(e) if e.state == SqlState::ConnectionFailure => {
            attempt.abandoned();
            Err(e)
        }
        Err(e) => Err(e),
        Ok(false) => {
            drop(attempt);
            tracing::info!(user, %peer, "console authentication failed");
            Err(console::refused())
        }
    }
}

/// Runs a SCRAM-SHA-256 exchange with the client: whether it proved it knows the password
/// behind `verifier`. On success the server-final message is appended to `done`, which the
/// caller sends with AuthenticationOk and what follows it, in one write (as PostgreSQL
/// flushes them together).
async fn scram<S>(
    reader: &mut FrameReader<S>,
    verifier: Verifier,
    binding: Option<&[u8]>,
    done: &mut BytesMut,
) -> Result<bool, PgError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let bad = |e: SaslError| PgError::invalid_sasl_message(&e);
    let mut out = BytesMut::with_capacity(128);
    // Over TLS, SCRAM-SHA-256-PLUS (channel binding tls-server-end-point) is offered first.
    let mechanisms: &[&str] =
        if binding.is_some() { &[scram::MECHANISM_PLUS, scram::MECHANISM] } else { &[scram::MECHANISM] };
    backend::sasl_mechanisms(&mut out, mechanisms);
    reader.get_mut().write_all(&out).await.map_err(io_gone)?;
    // SASLInitialResponse: mechanism, length of the data (or -1), data.
    let first = read_password_message(reader).await?;
    let (mechanism, rest) = backend::cstr(first.body()).ok_or_else(|| bad(SaslError::NoMechanism))?;
    let plus = match mechanism {
        m if m == scram::MECHANISM.as_bytes() => false,
        m if m == scram::MECHANISM_PLUS.as_bytes() && binding.is_some() => true,
        _ => return Err(PgError::unsupported_sasl_mechanism()),
    };
    let data = rest.get(4..).ok_or_else(|| bad(SaslError::NoData))?;
    let (exchange, server_first) =
        ServerExchange::start(verifier, data, binding, plus).map_err(|e| bad(SaslError::Scram(e)))?;
    out.clear();
    backend::sasl_continue(&mut out, server_first.as_bytes());
    reader.get_mut().write_all(&out).await.map_err(io_gone)?;
    let last = read_password_message(reader).await?;
    match exchange.finish(last.body()).map_err(|e| bad(SaslError::Scram(e)))? {
        Some(server_final) => {
            backend::sasl_final(done, server_final.as_bytes());
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
    let same = crate::sql::same_bytes(answer, expected.as_bytes());
    Ok(same)
}

/// The key of the mock verifiers: `[proxy] mock_secret` when set (the same on every proxy,
/// and across restarts, so unknown names keep their salt as real users do), else the
/// per-process secret.
fn mock_secret(proxy: &Proxy) -> std::borrow::Cow<'_, [u8]> {
    match proxy.config().proxy.mock_secret.as_str() {
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
        Ok(Some(f)) if f.tag() == frontend::tag::PASSWORD => Ok(f),
        Ok(Some(_)) => Err(PgError::expected_sasl_response()),
        Ok(None) | Err(FrameError::Io(_)) | Err(FrameError::Truncated) => {
            Err(PgError::client_left_during_auth())
        }
        Err(e) => Err(PgError::invalid_auth_message(&e)),
    }
}

/// Opens (or borrows) a server connection so the pool learns the server's ParameterStatus
/// values, which clients are shown at login.
async fn learn_params(proxy: &Proxy, pool: &Arc<Pool>, tenant: &Tenant) -> Result<ServerParams, PgError> {
    let mut cap = crate::pool::TenantCap::default();
    let co = proxy.pools.checkout(pool, tenant, &mut cap).await.map_err(|e| PgError::report(&e))?;
    let params = Arc::new(co.conn_ref().vars().to_vec());
    co.release();
    Ok(params)
}

/// A client that vanished mid-handshake needs no message; this only satisfies the types.
fn io_gone(e: std::io::Error) -> PgError {
    tracing::debug!(error = %e, "client connection lost during the handshake");
    PgError::client_connection_lost()
}

/// What breaks a client's SCRAM exchange.
#[derive(Debug, thiserror::Error)]
enum SaslError {
    #[error("no mechanism")]
    NoMechanism,
    #[error("no data")]
    NoData,
    #[error(transparent)]
    Scram(ScramError),
}

impl ClientFacing for SaslError {
    fn sqlstate(&self) -> SqlState {
        SqlState::ProtocolViolation
    }

    fn client_text(&self) -> std::borrow::Cow<'_, str> {
        match self {
            SaslError::NoMechanism => "no mechanism".into(),
            SaslError::NoData => "no data".into(),
            SaslError::Scram(e) => e.client_text(),
        }
    }

    fn kind(&self) -> ErrorKind {
        ErrorKind::Client
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, UserConfig};
    use tokio::io::AsyncReadExt;

    fn startup(user: &str) -> Vec<u8> {
        let mut body = 0x0003_0000i32.to_be_bytes().to_vec();
        body.extend_from_slice(b"user\0");
        body.extend_from_slice(user.as_bytes());
        body.extend_from_slice(b"\0\0");
        let mut p = ((body.len() + 4) as i32).to_be_bytes().to_vec();
        p.extend_from_slice(&body);
        p
    }

    /// A proxy with one SCRAM tenant `acme` (user `app`), in memory.
    fn proxy() -> Arc<Proxy> {
        let mut c = Config::parse("[[upstreams]]\nname='u'\nhost='127.0.0.1'").expect("config");
        let mut t = crate::config::TenantConfig::new("acme", "u", "d", "r", None);
        t.users = vec![UserConfig { name: "app".into(), verifier: Verifier::hash("secret") }];
        c.tenants.push(t);
        c.proxy.auth = AuthMethod::ScramSha256;
        Proxy::new(c)
    }

    /// Runs the handshake against `client_bytes` (sent after the AuthenticationSASL request
    /// is read); returns the error it ended with and how much the reader held at its end.
    async fn refused(user: &str, client_bytes: &[u8]) -> (PgError, usize) {
        let proxy = proxy();
        let (mut client, server) = tokio::io::duplex(1 << 16);
        client.write_all(&startup(user)).await.expect("startup");
        let peer: SocketAddr = "192.0.2.9:5000".parse().expect("addr");
        let mut reader = FrameReader::new(server, MAX_AUTH_MESSAGE);
        let tls = TlsInfo::default();
        let run = handshake(&mut reader, &proxy, &tls, peer);
        let talk = async {
            // AuthenticationSASL: 'R', length, 10, mechanisms.
            let mut head = [0u8; 9];
            client.read_exact(&mut head).await.expect("auth request");
            assert_eq!((head[0], head[8]), (b'R', 10));
            client.write_all(client_bytes).await.expect("send");
            client
        };
        let (result, _client) = tokio::join!(run, talk);
        let e = result.err().expect("refused");
        (e, reader.capacity())
    }

    #[tokio::test]
    async fn an_oversized_sasl_message_is_refused_with_08p01_at_once() {
        for user in ["app.acme", "app.nosuchtenant"] {
            // A SASLInitialResponse header declaring 1 GiB - 1, and a few bytes of it.
            let (e, held) = refused(user, b"p\x3f\xff\xff\xffSCRAM-SHA-256\0").await;
            assert_eq!(e.state, SqlState::ProtocolViolation, "{user}: {e}");
            assert!(held < 64 * 1024, "{user}: the reader held {held} bytes");
            // One past PG_MAX_AUTH_TOKEN_LENGTH.
            let (e, _) = refused(user, b"p\0\x01\0\0SCRAM-SHA-256\0").await;
            assert_eq!(e.state, SqlState::ProtocolViolation, "{user}: {e}");
        }
    }
}
