//! Tenant ids and the resolvers that find the tenant in a connection: a pure function over
//! the startup parameters and the TLS server name, unit-tested over hostile input.

mod resolve;

pub use resolve::{resolve, ResolveError, Resolved, Source};

use std::fmt;
use std::sync::Arc;

/// Longest tenant id: 48 characters, so `tenant_<id>` and friends stay within Postgres'
/// 63-byte identifier limit.
pub const MAX_TENANT_ID: usize = 48;

/// A validated tenant id: lowercase `[a-z0-9][a-z0-9_-]{0,47}`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(Arc<str>);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TenantIdError {
    #[error("tenant id is empty")]
    Empty,
    #[error("tenant id is longer than {MAX_TENANT_ID} characters")]
    TooLong,
    #[error("tenant id must be lowercase letters, digits, '_' or '-', starting with a letter or digit")]
    BadCharacter,
}

impl TenantId {
    pub fn parse(s: &str) -> Result<TenantId, TenantIdError> {
        let bytes = s.as_bytes();
        let Some(first) = bytes.first() else {
            return Err(TenantIdError::Empty);
        };
        if bytes.len() > MAX_TENANT_ID {
            return Err(TenantIdError::TooLong);
        }
        let ok_first = first.is_ascii_lowercase() || first.is_ascii_digit();
        let ok_rest =
            bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_' || *b == b'-');
        if !(ok_first && ok_rest) {
            return Err(TenantIdError::BadCharacter);
        }
        Ok(TenantId(Arc::from(s)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TenantId({})", self.0)
    }
}
