//! Admin console: the HTTP admin API ([`http`]) and its bearer tokens: how they are made,
//! digested and checked (the `pgtenant admin token …` commands that store them are in the CLI).
//!
//! A token is 32 random bytes, shown once base64url-encoded; only its SHA-256 (hex) is kept,
//! in `[admin] token_sha256` or in the control database's `pgtenant.admin_tokens`, so neither
//! the config file nor the catalog holds anything that logs in.

pub mod http;

use base64::Engine as _;
use sha2::{Digest, Sha256};

/// A fresh token: 32 bytes from the OS-seeded CSPRNG, base64url without padding (43 chars).
pub fn new_token() -> String {
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The SHA-256 of a token's bytes.
pub fn token_digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The lowercase hex form stored in the config and the catalog.
pub fn token_sha256(token: &str) -> String {
    hex(&token_digest(token))
}

pub(crate) use crate::auth::hex;

/// Parses 64 hex digits (either case) into a digest.
pub fn parse_sha256_hex(s: &str) -> Option<[u8; 32]> {
    let s = s.as_bytes();
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        let digit = |c: u8| char::from(c).to_digit(16);
        let (hi, lo) = (digit(pair[0])?, digit(pair[1])?);
        out[i] = u8::try_from(hi * 16 + lo).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_and_digests() {
        let t = new_token();
        assert_eq!(t.len(), 43);
        assert!(t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_ne!(t, new_token());
        // echo -n abc | sha256sum
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(token_sha256("abc"), abc);
        assert_eq!(parse_sha256_hex(abc), Some(token_digest("abc")));
        assert_eq!(parse_sha256_hex(&abc.to_uppercase()), Some(token_digest("abc")));
        for bad in ["", "abc", &abc[1..], &format!("{}g", &abc[1..]), &format!("{abc}0")] {
            assert_eq!(parse_sha256_hex(bad), None, "{bad}");
        }
    }
}
