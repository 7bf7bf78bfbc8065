//! The resolvers that find the tenant in a connection: a pure function over the startup
//! parameters and the TLS server name, unit-tested over hostile input. The tenant id itself
//! ([`crate::model::TenantId`]) is a domain type.

mod resolve;

pub use resolve::{resolve, ResolveError, Resolved, Source};
