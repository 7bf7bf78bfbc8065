//! The client side of SCRAM-SHA-256, for pgtenant's own logins to upstream servers, with
//! the salted password cached per (upstream, role, salt, iterations): opening a server
//! connection then costs a few HMACs instead of 4096 PBKDF2 rounds each time.

use std::sync::OnceLock;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use dashmap::DashMap;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

use super::scram::ScramError;

/// Salted passwords kept at most (a change of salt or password makes new entries).
const CACHE_MAX: usize = 10_000;

type SaltKey = (String, String, Vec<u8>, u32);

fn cache() -> &'static DashMap<SaltKey, [u8; 32]> {
    static CACHE: OnceLock<DashMap<SaltKey, [u8; 32]>> = OnceLock::new();
    CACHE.get_or_init(DashMap::new)
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

/// One exchange with an upstream server.
pub struct ClientExchange {
    password: Vec<u8>,
    /// Which login the salted password belongs to (part of the cache key).
    login: (String, String),
    nonce: String,
    client_first_bare: String,
    state: Option<([u8; 32], String)>,
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
        (ClientExchange { password, login, nonce, client_first_bare, state: None }, first)
    }

    /// Reads the server-first-message; returns the client-final-message.
    pub fn update(&mut self, server_first: &[u8]) -> Result<Vec<u8>, ScramError> {
        let text = std::str::from_utf8(server_first).map_err(|_| ScramError::Malformed)?;
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
            return Err(ScramError::Malformed);
        };
        if !nonce.starts_with(&self.nonce) || nonce.len() == self.nonce.len() {
            return Err(ScramError::Nonce);
        }
        let key = (self.login.0.clone(), self.login.1.clone(), salt, iterations);
        let salted = match cache().get(&key) {
            Some(s) => *s,
            None => {
                let s = hi(&self.password, &key.2, iterations);
                if cache().len() >= CACHE_MAX {
                    cache().clear();
                }
                cache().insert(key, s);
                s
            }
        };
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{},{}", self.client_first_bare, text, without_proof);
        let client_key = hmac(&salted, &[b"Client Key"]);
        let stored_key: [u8; 32] = Sha256::digest(client_key).into();
        let signature = hmac(&stored_key, &[auth_message.as_bytes()]);
        let proof: Vec<u8> = client_key.iter().zip(signature).map(|(k, s)| k ^ s).collect();
        self.state = Some((salted, auth_message));
        Ok(format!("{without_proof},p={}", B64.encode(proof)).into_bytes())
    }

    /// Checks the server-final-message (the server proves it knew the verifier).
    pub fn finish(&self, server_final: &[u8]) -> Result<(), ScramError> {
        let (salted, auth_message) = self.state.as_ref().ok_or(ScramError::Malformed)?;
        let text = std::str::from_utf8(server_final).map_err(|_| ScramError::Malformed)?;
        let v = text.strip_prefix("v=").ok_or(ScramError::Malformed)?;
        let server_key = hmac(salted, &[b"Server Key"]);
        let expected = hmac(&server_key, &[auth_message.as_bytes()]);
        if B64.encode(expected) == v.trim_end_matches(',') {
            Ok(())
        } else {
            Err(ScramError::Malformed)
        }
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

    #[test]
    fn against_the_server_side_and_cached() {
        let verifier = Verifier::parse(&Verifier::hash("pa55")).expect("verifier");
        let login = ("test-upstream:1".to_owned(), "role-a".to_owned());
        for round in 0..2 {
            let (mut client, first) = ClientExchange::new("pa55", login.clone());
            let (server, server_first) =
                ServerExchange::start(verifier.clone(), &first, None, false).expect("start");
            let last = client.update(server_first.as_bytes()).expect("update");
            let server_final = server.finish(&last).expect("finish").expect("proof accepted");
            client.finish(server_final.as_bytes()).expect("server verified");
            assert!(
                cache().contains_key(&(login.0.clone(), login.1.clone(), verifier.salt.clone(), 4096)),
                "round {round}"
            );
        }
        // A wrong password is refused by the server.
        let (mut client, first) = ClientExchange::new("nope", ("test-upstream:1".into(), "role-b".into()));
        let (server, server_first) = ServerExchange::start(verifier, &first, None, false).expect("start");
        let last = client.update(server_first.as_bytes()).expect("update");
        assert_eq!(server.finish(&last), Ok(None));
    }

    #[test]
    fn pbkdf2_known_answer() {
        // RFC 7914 section 11, PBKDF2-HMAC-SHA256 "passwd"/"salt", 1 iteration (first block).
        let out = hi(b"passwd", b"salt", 1);
        assert_eq!(out[..8], [0x55, 0xac, 0x04, 0x6e, 0x56, 0xe3, 0x08, 0x9f]);
    }
}
