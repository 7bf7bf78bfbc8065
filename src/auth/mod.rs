//! Client authentication: SCRAM-SHA-256 against the verifiers stored for a tenant's users.

pub mod scram;
pub mod scram_client;
pub mod throttle;
pub mod tls;

pub use scram::{ScramError, Verifier};
