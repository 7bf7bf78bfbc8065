//! The client side of SCRAM-SHA-256, for pgtenant's own logins to upstream servers.
//!
//! What an upstream can make pgtenant do is bounded: the PBKDF2 iteration count it sends is
//! capped, and the computation runs on Tokio's blocking threads, at most
//! [`pbkdf2_parallelism`] at a time, never on the async workers that relay everyone's
//! traffic. The salted password is cached per (upstream, role, password digest, salt,
//! iterations), so opening a server connection usually costs a few HMACs instead of 4096
//! PBKDF2 rounds — but an entry is added only once the server proved, with its
//! server-final-message, that it holds the verifier for that password: a wrong password (or
//! a hostile server) never fills the cache for a role that other tenants share.

use std::sync::OnceLock;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use dashmap::DashMap;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

/// Salted passwords kept at most (a change of salt or password makes new entries).
const CACHE_MAX: usize = 10_000;

/// (upstream address, role, SHA-256 of the password, salt, iterations). The password is
/// part of the key (as a digest, never in clear) so that two passwords for one role — during
/// a password change, or one of them wrong — never share an entry.
type SaltKey = (String, String, [u8; 32], Vec<u8>, u32);

fn cache() -> &'static DashMap<SaltKey, [u8; 32]> {
    static CACHE: OnceLock<DashMap<SaltKey, [u8; 32]>> = OnceLock::new();
    CACHE.get_or_init(DashMap::new)
}

/// PBKDF2 computations allowed at once: one per core, so a burst of new upstream
/// connections (or a hostile upstream) cannot take every blocking thread either.
pub fn pbkdf2_parallelism() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn pbkdf2_slots() -> &'static Semaphore {
    static SLOTS: OnceLock<Semaphore> = OnceLock::new();
    SLOTS.get_or_init(|| Semaphore::new(pbkdf2_parallelism()))
}

/// Why an exchange with an upstream failed (the text goes to the log, never to a client).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ClientScramError {
    #[error("malformed SCRAM message from the server")]
    Malformed,
    #[error("the server's SCRAM nonce does not extend ours")]
    Nonce,
    #[error(
        "the server asks for {sent} PBKDF2 iterations, more than the {max} allowed (max_scram_iterations)"
    )]
    TooManyIterations { sent: u32, max: u32 },
    #[error("the server's SCRAM signature is wrong: it does not know the password's verifier")]
    ServerSignature,
    #[error("the server sent an error in its SCRAM final message")]
    ServerError,
    #[error("SCRAM message out of order")]
    OutOfOrder,
    #[error("the PBKDF2 computation failed to run")]
    Compute,
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC accepts keys of any length.
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

/// PBKDF2-HMAC-SHA-256 with one output block (RFC 2898), as SCRAM's Hi().
fn hi(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut u = hmac(password, &[salt, &1u32.to_be_bytes()]);
    let mut out = u;
    for _ in 1..iterations {
        u = hmac(password, &[&u]);
        out.iter_mut().zip(u).for_each(|(o, x)| *o ^= x);
    }
    out
}

/// Hi() on a blocking thread, within the PBKDF2 slots.
async fn hi_off_workers(
    password: Vec<u8>,
    salt: Vec<u8>,
    iterations: u32,
) -> Result<[u8; 32], ClientScramError> {
    let _slot = pbkdf2_slots().acquire().await.map_err(|_| ClientScramError::Compute)?;
    tokio::task::spawn_blocking(move || hi(&password, &salt, iterations))
        .await
        .map_err(|_| ClientScramError::Compute)
}

/// What the client-final-message was computed from, kept to check the server's proof.
struct Sent {
    key: SaltKey,
    salted: [u8; 32],
    auth_message: String,
}

/// One exchange with an upstream server.
pub struct ClientExchange {
    password: Vec<u8>,
    /// Which login the salted password belongs to (part of the cache key).
    login: (String, String),
    nonce: String,
    client_first_bare: String,
    sent: Option<Sent>,
    verified: bool,
}

impl ClientExchange {
    /// `login` is (upstream address, role). Returns the exchange and the client-first-message.
    pub fn new(password: &str, login: (String, String)) -> (ClientExchange, Vec<u8>) {
        // SASLprep as PostgreSQL does; a password it rejects is used as it is.
        let password = stringprep::saslprep(password)
            .map_or_else(|_| password.as_bytes().to_vec(), |p| p.as_bytes().to_vec());
        let nonce = B64.encode(rand::random::<[u8; 18]>());
        let client_first_bare = format!("n=,r={nonce}");
        let first = format!("n,,{client_first_bare}").into_bytes();
        let exchange =
            ClientExchange { password, login, nonce, client_first_bare, sent: None, verified: false };
        (exchange, first)
    }

    /// Reads the server-first-message; returns the client-final-message. Iteration counts
    /// above `max_iterations` are refused before any work is done.
    pub async fn update(
        &mut self,
        server_first: &[u8],
        max_iterations: u32,
    ) -> Result<Vec<u8>, ClientScramError> {
        if self.sent.is_some() {
            return Err(ClientScramError::OutOfOrder);
        }
        let text = std::str::from_utf8(server_first).map_err(|_| ClientScramError::Malformed)?;
        let mut nonce = None;
        let mut salt = None;
        let mut iterations = None;
        for attr in text.split(',') {
            if let Some(v) = attr.strip_prefix("r=") {
                nonce = Some(v);
            } else if let Some(v) = attr.strip_prefix("s=") {
                salt = B64.decode(v).ok();
            } else if let Some(v) = attr.strip_prefix("i=") {
                iterations = v.parse::<u32>().ok().filter(|i| *i > 0);
            }
        }
        let (Some(nonce), Some(salt), Some(iterations)) = (nonce, salt, iterations) else {
            return Err(ClientScramError::Malformed);
        };
        if !nonce.starts_with(&self.nonce) || nonce.len() == self.nonce.len() {
            return Err(ClientScramError::Nonce);
        }
        if iterations > max_iterations {
            return Err(ClientScramError::TooManyIterations { sent: iterations, max: max_iterations });
        }
        let digest: [u8; 32] = Sha256::digest(&self.password).into();
        let key = (self.login.0.clone(), self.login.1.clone(), digest, salt, iterations);
        let cached = cache().get(&key).map(|s| *s);
        let salted = match cached {
            Some(s) => s,
            None => hi_off_workers(self.password.clone(), key.3.clone(), iterations).await?,
        };
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{},{}", self.client_first_bare, text, without_proof);
        let client_key = hmac(&salted, &[b"Client Key"]);
        let stored_key: [u8; 32] = Sha256::digest(client_key).into();
        let signature = hmac(&stored_key, &[auth_message.as_bytes()]);
        let proof: Vec<u8> = client_key.iter().zip(signature).map(|(k, s)| k ^ s).collect();
        self.sent = Some(Sent { key, salted, auth_message });
        Ok(format!("{without_proof},p={}", B64.encode(proof)).into_bytes())
    }

    /// Checks the server-final-message (the server proves it knew the verifier); only then
    /// is the salted password cached.
    pub fn finish(&mut self, server_final: &[u8]) -> Result<(), ClientScramError> {
        let sent = self.sent.as_ref().ok_or(ClientScramError::OutOfOrder)?;
        if self.verified {
            return Err(ClientScramError::OutOfOrder);
        }
        let text = std::str::from_utf8(server_final).map_err(|_| ClientScramError::Malformed)?;
        if text.starts_with("e=") {
            return Err(ClientScramError::ServerError);
        }
        let v = text.split(',').find_map(|a| a.strip_prefix("v=")).ok_or(ClientScramError::Malformed)?;
        let server_key = hmac(&sent.salted, &[b"Server Key"]);
        let expected = B64.encode(hmac(&server_key, &[sent.auth_message.as_bytes()]));
        // Constant time over the expected length.
        let same = crate::sql::same_bytes(v.as_bytes(), expected.as_bytes());
        if !same {
            return Err(ClientScramError::ServerSignature);
        }
        self.verified = true;
        if cache().len() >= CACHE_MAX {
            cache().clear();
        }
        cache().insert(sent.key.clone(), sent.salted);
        Ok(())
    }

    /// Whether the server's final message was received and verified: AuthenticationOk after
    /// a SCRAM exchange counts only then.
    pub fn verified(&self) -> bool {
        self.verified
    }

    /// Salted passwords cached right now.
    pub fn cached() -> usize {
        cache().len()
    }
}

#[cfg(test)]
mod tests {
    use super::super::scram::{ServerExchange, Verifier};
    use super::*;

    fn key_for(login: &(String, String), password: &str, v: &Verifier) -> SaltKey {
        let digest: [u8; 32] = Sha256::digest(password.as_bytes()).into();
        (login.0.clone(), login.1.clone(), digest, v.salt.clone(), v.iterations)
    }

    #[tokio::test]
    async fn scram_against_the_server_side_and_cached_after_the_proof() {
        let verifier = Verifier::parse(&Verifier::hash("pa55")).expect("verifier");
        let login = ("test-upstream:1".to_owned(), "role-a".to_owned());
        for round in 0..2 {
            let (mut client, first) = ClientExchange::new("pa55", login.clone());
            let (server, server_first) =
                ServerExchange::start(verifier.clone(), &first, None, false).expect("start");
            let last = client.update(server_first.as_bytes(), 4096).await.expect("update");
            if round == 0 {
                assert!(!cache().contains_key(&key_for(&login, "pa55", &verifier)), "not before the proof");
            }
            let server_final = server.finish(&last).expect("finish").expect("proof accepted");
            client.finish(server_final.as_bytes()).expect("server verified");
            assert!(client.verified());
            assert!(cache().contains_key(&key_for(&login, "pa55", &verifier)), "round {round}");
        }
        // A wrong password is refused by the server, and nothing is cached for it.
        let login_b = ("test-upstream:1".to_owned(), "role-b".to_owned());
        let (mut client, first) = ClientExchange::new("nope", login_b.clone());
        let (server, server_first) =
            ServerExchange::start(verifier.clone(), &first, None, false).expect("start");
        let last = client.update(server_first.as_bytes(), 4096).await.expect("update");
        assert_eq!(server.finish(&last), Ok(None));
        assert!(!cache().contains_key(&key_for(&login_b, "nope", &verifier)));
    }

    #[tokio::test]
    async fn scram_hostile_servers() {
        let login = ("test-upstream:2".to_owned(), "role-c".to_owned());
        // Too many iterations: refused before any PBKDF2 work.
        let (mut client, first) = ClientExchange::new("pw", login.clone());
        let nonce = std::str::from_utf8(&first).expect("utf8").rsplit("r=").next().expect("nonce").to_owned();
        let server_first = format!("r={nonce}xyz,s=c2FsdA==,i=10000000");
        assert_eq!(
            client.update(server_first.as_bytes(), 100_000).await,
            Err(ClientScramError::TooManyIterations { sent: 10_000_000, max: 100_000 })
        );
        // A wrong server signature, an error, or a final message before the first.
        let (mut client, first) = ClientExchange::new("pw", login.clone());
        assert_eq!(client.finish(b"v=AAAA"), Err(ClientScramError::OutOfOrder));
        let nonce = std::str::from_utf8(&first).expect("utf8").rsplit("r=").next().expect("nonce").to_owned();
        let server_first = format!("r={nonce}xyz,s=c2FsdA==,i=4096");
        client.update(server_first.as_bytes(), 100_000).await.expect("update");
        assert_eq!(client.finish(b"v=AAAA"), Err(ClientScramError::ServerSignature));
        assert_eq!(client.finish(b"e=invalid-proof"), Err(ClientScramError::ServerError));
        assert!(!client.verified());
        // A nonce that does not extend ours, and garbage.
        let (mut client, _) = ClientExchange::new("pw", login);
        assert_eq!(client.update(b"r=other,s=c2FsdA==,i=4096", 100_000).await, Err(ClientScramError::Nonce));
        assert_eq!(client.update(b"\xff", 100_000).await, Err(ClientScramError::Malformed));
    }

    /// On a single-threaded runtime, a task keeps running while a PBKDF2 computation is
    /// awaited: it happens on a blocking thread, not on the async worker.
    #[tokio::test(flavor = "current_thread")]
    async fn scram_pbkdf2_runs_off_the_async_workers() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        let ticks = Arc::new(AtomicUsize::new(0));
        let ticker = {
            let ticks = ticks.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                    ticks.fetch_add(1, Ordering::Relaxed);
                }
            })
        };
        tokio::task::yield_now().await;
        let (mut client, first) = ClientExchange::new("pw", ("test-upstream:3".into(), "role-d".into()));
        let nonce = std::str::from_utf8(&first).expect("utf8").rsplit("r=").next().expect("nonce").to_owned();
        let salt = B64.encode(rand::random::<[u8; 16]>());
        let server_first = format!("r={nonce}xyz,s={salt},i=100000");
        let started = std::time::Instant::now();
        client.update(server_first.as_bytes(), 100_000).await.expect("update");
        let (elapsed, seen) = (started.elapsed(), ticks.load(Ordering::Relaxed));
        ticker.abort();
        assert!(elapsed > std::time::Duration::from_millis(10), "100,000 iterations took only {elapsed:?}");
        assert!(seen > 0, "the runtime's only worker was blocked for {elapsed:?}");
    }

    #[test]
    fn pbkdf2_known_answer() {
        // RFC 7914 section 11, PBKDF2-HMAC-SHA256 "passwd"/"salt", 1 iteration (first block).
        let out = hi(b"passwd", b"salt", 1);
        assert_eq!(out[..8], [0x55, 0xac, 0x04, 0x6e, 0x56, 0xe3, 0x08, 0x9f]);
    }
}
