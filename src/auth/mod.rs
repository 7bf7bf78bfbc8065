//! Client authentication: SCRAM-SHA-256 against the verifiers stored for a tenant's users.

pub mod scram;
pub mod scram_client;
pub mod throttle;
pub mod tls;

pub use scram::{ScramError, Verifier};

/// Lowercase hex of a digest (MD5 passwords, token and migration checksums).
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}
