//! Administrator connections to an upstream server, for creating and dropping tenant
//! databases, schemas and roles and for running migrations. They use the same socket code as
//! the data path (TCP with the upstream's sslmode, or a Unix socket), so an upstream
//! reachable by the proxy is reachable here — and the same authentication policy: the
//! upstream's `require_auth` is enforced on these logins too ([`AuthGuard`]), so a server
//! cannot get the administrator's password in clear, or set the PBKDF2 cost, unless allowed.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use tokio_postgres::{Client, NoTls};

use super::{db_error, LifecycleError};
use crate::catalog::secrets::Keys;
use crate::model::{RequireAuth, UpstreamAddr, DEFAULT_MAX_SCRAM_ITERATIONS};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// An upstream as the catalog's `upstreams` row describes it.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub name: String,
    pub addr: UpstreamAddr,
    pub admin_user: String,
    pub admin_password: Option<String>,
    pub admin_database: String,
    /// The upstream's `require_auth` (`None`: the default for the login, see
    /// [`RequireAuth`]).
    pub require_auth: Option<RequireAuth>,
}

impl Upstream {
    /// Reads upstream `name` from the control database.
    pub async fn load(control: &Client, name: &str, keys: Option<&Keys>) -> Result<Upstream, LifecycleError> {
        let row = crate::catalog::store::upstream_admin(control, name, keys)
            .await
            .map_err(super::store_error)?
            .ok_or_else(|| LifecycleError::Invalid(format!("no upstream named {name:?} in the catalog")))?;
        let admin_user = row.admin_user.ok_or_else(|| {
            LifecycleError::Invalid(format!(
                "upstream {name:?} has no admin_user: pgtenant needs an administrator login there \
                 (pgtenant upstream add --admin-user …)"
            ))
        })?;
        Ok(Upstream {
            name: name.to_owned(),
            addr: row.addr,
            admin_user,
            admin_password: row.admin_password,
            admin_database: row.admin_database,
            require_auth: row.require_auth,
        })
    }

    /// The same server under another login (a tenant's own role).
    pub fn login_as(&self, user: &str, password: Option<String>) -> Upstream {
        Upstream { admin_user: user.to_owned(), admin_password: password, ..self.clone() }
    }

    /// A session on `database` (as the administrator, unless made by `login_as`).
    pub async fn connect(&self, database: &str) -> Result<Client, LifecycleError> {
        let unreachable = |what: String| {
            LifecycleError::Upstream(format!("upstream {} ({}): {what}", self.name, self.addr))
        };
        let connect = async {
            let stream = self.addr.connect().await.map_err(|e| unreachable(e.to_string()))?;
            let unix = matches!(self.addr, UpstreamAddr::Unix { .. });
            let allowed = self
                .require_auth
                .unwrap_or_else(|| RequireAuth::default_for(self.admin_password.is_some(), unix));
            let stream = AuthGuard::new(stream, allowed, DEFAULT_MAX_SCRAM_ITERATIONS);
            let mut config = tokio_postgres::Config::new();
            config
                .user(&self.admin_user)
                .dbname(database)
                .application_name("pgtenant lifecycle")
                .ssl_mode(tokio_postgres::config::SslMode::Disable);
            if let Some(p) = &self.admin_password {
                config.password(p);
            }
            let (client, conn) = config.connect_raw(stream, NoTls).await.map_err(|e| {
                LifecycleError::Upstream(format!(
                    "upstream {} ({}), database {database:?}: {}",
                    self.name,
                    self.addr,
                    super::db_text(&e)
                ))
            })?;
            tokio::spawn(conn);
            Ok(client)
        };
        tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| unreachable(format!("no answer within {CONNECT_TIMEOUT:?}")))?
    }

    /// Runs `sql` (one utility statement, which may not run in a transaction block) on the
    /// administrator database.
    pub async fn admin(&self, sql: &str) -> Result<(), LifecycleError> {
        let db = self.connect(&self.admin_database).await?;
        db.batch_execute(sql).await.map_err(|e| db_error(sql_head(sql), &e))
    }
}

/// The first words of a statement, for error messages that must not echo passwords.
pub fn sql_head(sql: &str) -> &str {
    let end = sql.char_indices().filter(|(_, c)| c.is_whitespace()).nth(2).map_or(sql.len(), |(i, _)| i);
    &sql[..end]
}

/// Watches what a server sends during login and fails the read — before tokio-postgres can
/// answer — when it asks for an authentication method `require_auth` does not allow, skips
/// authentication without being allowed to (`none`), or asks for more PBKDF2 iterations than
/// the cap. tokio-postgres itself insists on a verified SCRAM final message. Once
/// AuthenticationOk has passed, bytes go through untouched.
pub struct AuthGuard<S> {
    inner: S,
    allowed: RequireAuth,
    max_iterations: u32,
    /// The current message: header bytes seen, then its body (kept only for 'R' messages,
    /// which are small during login).
    header: [u8; 5],
    have: usize,
    /// Body bytes of the current message seen so far.
    seen: usize,
    body: Vec<u8>,
    asked: bool,
    done: bool,
}

/// The largest authentication message looked at (PostgreSQL's are tens of bytes).
const MAX_AUTH_MESSAGE: usize = 4096;

impl<S> AuthGuard<S> {
    pub fn new(inner: S, allowed: RequireAuth, max_iterations: u32) -> AuthGuard<S> {
        AuthGuard {
            inner,
            allowed,
            max_iterations,
            header: [0; 5],
            have: 0,
            seen: 0,
            body: Vec::new(),
            asked: false,
            done: false,
        }
    }

    /// Feeds bytes the server sent; an error names what is refused.
    fn inspect(&mut self, mut bytes: &[u8]) -> Result<(), String> {
        while !self.done && !bytes.is_empty() {
            if self.have < 5 {
                let n = (5 - self.have).min(bytes.len());
                self.header[self.have..self.have + n].copy_from_slice(&bytes[..n]);
                self.have += n;
                bytes = &bytes[n..];
                if self.have < 5 {
                    continue;
                }
            }
            let [tag, a, b, c, d] = self.header;
            let len =
                usize::try_from(u32::from_be_bytes([a, b, c, d])).unwrap_or(usize::MAX).saturating_sub(4);
            let n = (len - self.seen.min(len)).min(bytes.len());
            if tag == b'R' {
                if len > MAX_AUTH_MESSAGE {
                    return Err(format!("an authentication message of {len} bytes"));
                }
                self.body.extend_from_slice(&bytes[..n]);
            }
            self.seen += n;
            bytes = &bytes[n..];
            if self.seen == len {
                if tag == b'R' {
                    let body = std::mem::take(&mut self.body);
                    self.check(&body)?;
                }
                self.seen = 0;
                self.have = 0;
            }
        }
        Ok(())
    }

    fn check(&mut self, body: &[u8]) -> Result<(), String> {
        let Some((code, data)) = body.split_first_chunk::<4>() else {
            return Err("a short authentication message".into());
        };
        let refuse = |m: &str| {
            Err(format!(
                "asks for {m} authentication, which its require_auth ({}) does not allow",
                self.allowed
            ))
        };
        match i32::from_be_bytes(*code) {
            0 => {
                self.done = true;
                if !self.asked && !self.allowed.none {
                    return refuse("no");
                }
            }
            3 if !self.allowed.password => return refuse("cleartext password"),
            5 if !self.allowed.md5 => return refuse("md5"),
            10 if !self.allowed.scram_sha_256 => return refuse("SCRAM-SHA-256"),
            3 | 5 | 10 => self.asked = true,
            11 => {
                let text = String::from_utf8_lossy(data);
                let iterations =
                    text.split(',').find_map(|a| a.strip_prefix("i=")).and_then(|i| i.parse::<u64>().ok());
                if iterations.is_some_and(|i| i > u64::from(self.max_iterations)) {
                    return Err(format!(
                        "asks for {} PBKDF2 iterations, more than the {} allowed",
                        iterations.unwrap_or_default(),
                        self.max_iterations
                    ));
                }
            }
            _ => {}
        }
        Ok(())
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthGuard<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut me.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) if !me.done => {
                let fresh = buf.filled()[before..].to_vec();
                match me.inspect(&fresh) {
                    Ok(()) => Poll::Ready(Ok(())),
                    Err(why) => {
                        // Nothing of it reaches tokio-postgres.
                        buf.set_filled(before);
                        Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::PermissionDenied,
                            format!("the upstream {why}"),
                        )))
                    }
                }
            }
            other => other,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthGuard<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(code: i32, data: &[u8]) -> Vec<u8> {
        let mut m = vec![b'R'];
        m.extend_from_slice(&(i32::try_from(data.len()).expect("len") + 8).to_be_bytes());
        m.extend_from_slice(&code.to_be_bytes());
        m.extend_from_slice(data);
        m
    }

    fn guard(allowed: &str) -> AuthGuard<()> {
        AuthGuard::new((), RequireAuth::parse(allowed).expect("require_auth"), 100_000)
    }

    #[test]
    fn admin_logins_follow_require_auth() {
        assert!(guard("scram-sha-256").inspect(&auth(3, b"")).is_err(), "cleartext");
        assert!(guard("scram-sha-256").inspect(&auth(5, b"salt")).is_err(), "md5");
        assert!(guard("scram-sha-256").inspect(&auth(0, b"")).is_err(), "trust");
        assert!(guard("none").inspect(&auth(0, b"")).is_ok());
        assert!(guard("password").inspect(&auth(3, b"")).is_ok());
        // SCRAM, fed one byte at a time, with a notice in between; then too many iterations.
        let mut g = guard("scram-sha-256");
        let mut bytes = auth(10, b"SCRAM-SHA-256\0\0");
        bytes.extend_from_slice(b"N\0\0\0\x06ab");
        bytes.extend(auth(11, b"r=abc,s=c2FsdA==,i=4096"));
        for b in &bytes {
            g.inspect(std::slice::from_ref(b)).expect("allowed");
        }
        assert!(g.inspect(&auth(11, b"r=abc,s=c2FsdA==,i=10000000")).is_err(), "iterations");
        // After AuthenticationOk everything passes untouched.
        let mut g = guard("scram-sha-256");
        g.inspect(&auth(10, b"SCRAM-SHA-256\0\0")).expect("sasl");
        g.inspect(&auth(0, b"")).expect("ok");
        g.inspect(&auth(3, b"")).expect("not looked at any more");
        // Hostile lengths never panic.
        assert!(guard("scram-sha-256").inspect(b"R\xff\xff\xff\xff\0\0").is_err());
        assert!(guard("scram-sha-256").inspect(b"R\0\0\0\0").is_err(), "no code");
        assert!(guard("scram-sha-256").inspect(b"E\x7f\xff\xff\xffxyz").is_ok(), "only counted");
    }
}
