//! Upstream login passwords at rest in the control database: encrypted with
//! ChaCha20-Poly1305 (ring) under a master key from a file or the environment, each value
//! tagged with its key id so keys can rotate (`pgtenant catalog rotate-key`).
//!
//! Stored form: `enc:v1:<key id>:<base64(nonce ‖ ciphertext ‖ tag)>`. The key file (or
//! `PGTENANT_MASTER_KEYS`) holds lines `<key id>:<base64 of 32 bytes>`; the first line is the
//! key new values are encrypted with, the others still decrypt.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};

const PREFIX: &str = "enc:v1:";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    #[error("invalid master key line {0} (expected <id>:<base64 of 32 bytes>)")]
    BadKey(usize),
    #[error("no master key configured")]
    NoKey,
    #[error("a stored secret uses key {0:?}, which is not configured")]
    UnknownKey(String),
    #[error("a stored secret is not readable (corrupt, or the wrong key)")]
    Corrupt,
    #[error("a plaintext password is stored in the catalog; encrypt it with `pgtenant tenant set-password`")]
    Plaintext,
}

/// A password as the catalog stores it, readable: decrypted with `keys` when it is encrypted
/// (`enc:…`), as stored when it never was (`plaintext` is told so it can warn). One place for
/// the catalog lookups, the lifecycle operations and the CLI.
pub fn reveal(keys: Option<&Keys>, stored: &str) -> Result<(String, bool), SecretError> {
    match keys {
        Some(k) => match k.decrypt(stored) {
            Ok(p) => Ok((p, false)),
            Err(SecretError::Plaintext) => Ok((stored.to_owned(), true)),
            Err(e) => Err(e),
        },
        None if stored.starts_with("enc:") => Err(SecretError::NoKey),
        None => Ok((stored.to_owned(), true)),
    }
}

/// The master keys.
pub struct Keys {
    keys: Vec<(String, LessSafeKey)>,
}

impl Keys {
    /// Parses `<id>:<base64>` lines (blank lines and `#` comments skipped).
    pub fn parse(text: &str) -> Result<Keys, SecretError> {
        let mut keys = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (id, b64) = line.split_once(':').ok_or(SecretError::BadKey(i + 1))?;
            let raw = B64.decode(b64.trim()).map_err(|_| SecretError::BadKey(i + 1))?;
            let unbound =
                UnboundKey::new(&CHACHA20_POLY1305, &raw).map_err(|_| SecretError::BadKey(i + 1))?;
            if id.is_empty() || id.contains(':') {
                return Err(SecretError::BadKey(i + 1));
            }
            keys.push((id.to_owned(), LessSafeKey::new(unbound)));
        }
        if keys.is_empty() {
            return Err(SecretError::NoKey);
        }
        Ok(Keys { keys })
    }

    /// A new random key line (`pgtenant catalog new-key` prints one).
    pub fn generate_line(id: &str) -> String {
        format!("{id}:{}", B64.encode(rand::random::<[u8; 32]>()))
    }

    pub fn current_id(&self) -> &str {
        &self.keys[0].0
    }

    pub fn encrypt(&self, plaintext: &str) -> String {
        let (id, key) = &self.keys[0];
        let nonce_bytes: [u8; NONCE_LEN] = rand::random();
        let mut data = plaintext.as_bytes().to_vec();
        // Sealing into a Vec only fails for inputs beyond ChaCha20's 256 GiB limit.
        if key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce_bytes),
                Aad::from(id.as_bytes()),
                &mut data,
            )
            .is_err()
        {
            return String::new();
        }
        let mut out = nonce_bytes.to_vec();
        out.extend(data);
        format!("{PREFIX}{id}:{}", B64.encode(out))
    }

    pub fn decrypt(&self, stored: &str) -> Result<String, SecretError> {
        let rest = stored.strip_prefix(PREFIX).ok_or(SecretError::Plaintext)?;
        let (id, b64) = rest.split_once(':').ok_or(SecretError::Corrupt)?;
        let key = self
            .keys
            .iter()
            .find(|(k, _)| k == id)
            .map(|(_, k)| k)
            .ok_or_else(|| SecretError::UnknownKey(id.to_owned()))?;
        let raw = B64.decode(b64).map_err(|_| SecretError::Corrupt)?;
        if raw.len() < NONCE_LEN {
            return Err(SecretError::Corrupt);
        }
        let (nonce, sealed) = raw.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SecretError::Corrupt)?;
        let mut sealed = sealed.to_vec();
        let plain = key
            .open_in_place(nonce, Aad::from(id.as_bytes()), &mut sealed)
            .map_err(|_| SecretError::Corrupt)?;
        String::from_utf8(plain.to_vec()).map_err(|_| SecretError::Corrupt)
    }

    /// Whether a stored value is encrypted under a key other than the current one.
    pub fn needs_rotation(&self, stored: &str) -> bool {
        !stored.starts_with(&format!("{PREFIX}{}:", self.current_id()))
    }
}

/// Loads the master keys: `PGTENANT_MASTER_KEYS` (the lines themselves) or `key_file`.
pub fn load(key_file: &str) -> Result<Option<Keys>, String> {
    if let Ok(text) = std::env::var("PGTENANT_MASTER_KEYS") {
        return Keys::parse(&text).map(Some).map_err(|e| e.to_string());
    }
    if key_file.is_empty() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(key_file).map_err(|e| format!("cannot read {key_file}: {e}"))?;
    Keys::parse(&text).map(Some).map_err(|e| format!("{key_file}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_rotation_and_tampering() {
        let k1 = Keys::generate_line("k1");
        let k2 = Keys::generate_line("k2");
        let old = Keys::parse(&k1).expect("keys");
        let stored = old.encrypt("s3cret");
        assert!(stored.starts_with("enc:v1:k1:") && !stored.contains("s3cret"));
        assert_ne!(stored, old.encrypt("s3cret"), "random nonces");
        // k2 becomes current; k1 still decrypts.
        let both = Keys::parse(&format!("{k2}\n{k1}\n")).expect("keys");
        assert_eq!(both.decrypt(&stored).as_deref(), Ok("s3cret"));
        assert!(both.needs_rotation(&stored));
        let rotated = both.encrypt(&both.decrypt(&stored).expect("decrypt"));
        assert!(!both.needs_rotation(&rotated));
        let only_new = Keys::parse(&k2).expect("keys");
        assert_eq!(only_new.decrypt(&stored), Err(SecretError::UnknownKey("k1".into())));
        let mut tampered = stored.clone();
        tampered.replace_range(tampered.len() - 3.., "AAA");
        assert!(old.decrypt(&tampered).is_err());
        assert_eq!(old.decrypt("plaintext"), Err(SecretError::Plaintext));
        assert!(Keys::parse("k1:short").is_err());
    }
}
