//! Why a checkout failed, and what the client is told about it.

use std::borrow::Cow;
use std::time::Duration;

use super::UpstreamError;
use crate::model::TenantId;
use crate::protocol::error::{ClientFacing, ErrorKind};
use crate::protocol::SqlState;

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("timed out after {0:?} waiting for a server connection")]
    Timeout(Duration),
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("opening an upstream connection timed out after {0:?}")]
    ConnectTimeout(Duration),
}

/// A checkout that failed, for the tenant it was for.
#[derive(Debug, thiserror::Error)]
#[error("tenant {tenant}: {error}")]
pub struct CheckoutError {
    pub tenant: TenantId,
    pub error: PoolError,
}

impl ClientFacing for CheckoutError {
    fn sqlstate(&self) -> SqlState {
        match &self.error {
            PoolError::Timeout(_) => SqlState::TooManyConnections,
            PoolError::Upstream(_) | PoolError::ConnectTimeout(_) => SqlState::ConnectionFailure,
        }
    }

    fn client_text(&self) -> Cow<'_, str> {
        let tenant = &self.tenant;
        match &self.error {
            PoolError::Timeout(d) => {
                format!("no server connection for tenant \"{tenant}\" became free within {d:?}").into()
            }
            // The cause (addresses, the server's own text) stays in the log; the client gets
            // a reference to find it.
            PoolError::Upstream(_) | PoolError::ConnectTimeout(_) => {
                format!("cannot reach the database of tenant \"{tenant}\"").into()
            }
        }
    }

    fn kind(&self) -> ErrorKind {
        match &self.error {
            PoolError::Timeout(_) => ErrorKind::Proxy,
            PoolError::ConnectTimeout(_) => ErrorKind::Server,
            PoolError::Upstream(e) => e.kind(),
        }
    }

    fn retryable(&self) -> bool {
        match &self.error {
            PoolError::Timeout(_) | PoolError::ConnectTimeout(_) => true,
            PoolError::Upstream(e) => e.retryable(),
        }
    }

    fn hint(&self) -> Option<Cow<'_, str>> {
        matches!(self.error, PoolError::Timeout(_))
            .then_some(Cow::Borrowed("the tenant's pool is exhausted: retry, or raise its pool size"))
    }

    fn hides_cause(&self) -> bool {
        !matches!(self.error, PoolError::Timeout(_))
    }
}
