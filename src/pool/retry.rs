//! A handoff retry's checkout. When a cross-tenant reset fails, its connection is closed but
//! the session keeps the connection's place (its pool permit, its tenant-cap permit and its
//! places in the upstream and global caps, a [`Slot`]), so the retry never waits behind the
//! pool's queue nor other pools' waiters; and the retry takes only a
//! connection that needs no reset (see [`super::idle::retry_index`]), else opens a new one,
//! closing another tenant's idle connection first if the pool would go past its size.
//! Otherwise a tenant that leaves failing resets on several idle connections of a shared
//! pool would spend another tenant's attempts on them. Only when no connection can be opened
//! (the server refuses it, or the caps stay full until the checkout timeout) does the retry
//! take an idle connection that needs a reset, rather than end the client's session.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::OwnedSemaphorePermit;

use super::cap::CapPermit;
use super::fair::FairPermit;
use super::idle::{pick_for_retry, pick_idle, Idle};
use super::{Checkout, CheckoutError, Pool, PoolManager, ServerConn};
use crate::catalog::Tenant;

/// A closed connection's place in its pool and its tenant's cap, kept for a retry.
pub struct Slot {
    permit: FairPermit<Idle>,
    tenant_permit: CapPermit,
    /// Its places in the upstream and global caps: the connection the retry opens takes
    /// them, rather than queue for them behind other pools' waiters.
    caps: Vec<OwnedSemaphorePermit>,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Slot")
    }
}

impl Checkout {
    /// Closes the connection (its upstream and global places go back with it), keeping its
    /// place in the pool and the tenant's cap for a retry ([`PoolManager::checkout_retry`]).
    /// Dropping the slot gives them back.
    pub fn close_keeping_slot(self) -> Slot {
        let Checkout { mut conn, permit, _tenant_permit, .. } = self;
        let caps = std::mem::take(&mut conn._permits);
        drop(conn);
        Slot { permit, tenant_permit: _tenant_permit, caps }
    }
}

impl PoolManager {
    /// A server connection of `pool` for a handoff retry of `tenant`, in the place `slot`
    /// kept: an idle one last set up for the tenant, or one with no tenant's session (neither
    /// dirty), else a new one in the failed connection's places in the upstream and global
    /// caps (or within them, waiting at most the checkout timeout); only if that fails, an idle connection that needs a cross-tenant reset.
    pub fn checkout_retry<'a>(
        &'a self,
        pool: &'a Arc<Pool>,
        tenant: &'a Tenant,
        slot: Slot,
    ) -> impl Future<Output = Result<Checkout, CheckoutError>> + Send + 'a {
        checkout_retry(pool, tenant, slot)
    }
}

async fn checkout_retry(pool: &Arc<Pool>, tenant: &Tenant, slot: Slot) -> Result<Checkout, CheckoutError> {
    let lifetime_ns = pool.settings.max_lifetime_ns();
    loop {
        let now = Instant::now();
        let (picked, closed) = pick_for_retry(&mut pool.lock_idle(), &tenant.id, lifetime_ns, now);
        if !closed.is_empty() {
            tracing::debug!(tenant = %tenant.id, closed = closed.len(), "closing idle server connections to make room for a handoff retry");
        }
        drop(closed);
        match picked {
            Some(conn) if conn.is_clean() => {
                let Slot { permit, tenant_permit, .. } = slot;
                return Ok(Checkout { conn, permit, _tenant_permit: tenant_permit, taken: now });
            }
            // Died while idle: dropped, as the first checkout drops it.
            Some(_) => tracing::debug!(pool = %pool.key.addr, "dropping a stale idle connection"),
            None => break,
        }
    }
    let deadline = tokio::time::Instant::now() + pool.settings.checkout_timeout();
    let Slot { permit, tenant_permit, caps } = slot;
    let mut conn = match Box::pin(pool.open(Some(deadline), caps)).await {
        Ok(conn) => conn,
        // Refused (the server at its max_connections or the role's limit, which may still
        // count the failed connection's backend as it exits) or out of time: an idle
        // connection that needs a reset serves, as it would a first checkout (the handoff's
        // attempts bound what a tenant's failing resets can cost).
        Err(error) => {
            return match take_any_idle(pool, tenant, lifetime_ns) {
                Some((conn, taken)) => {
                    tracing::debug!(tenant = %tenant.id, %error, "a handoff retry could not open a connection: taking an idle one, reset");
                    Ok(Checkout { conn, permit, _tenant_permit: tenant_permit, taken })
                }
                None => Err(CheckoutError { tenant: tenant.id.clone(), error }),
            };
        }
    };
    let taken = Instant::now();
    conn.live_at(lifetime_ns, taken);
    Ok(Checkout { conn, permit, _tenant_permit: tenant_permit, taken })
}

/// Any live idle connection of `pool` (the tenant's own first, see [`pick_idle`]), for a
/// retry that could not open one; the cross-tenant reset, if it needs one, goes with it.
fn take_any_idle(pool: &Pool, tenant: &Tenant, lifetime_ns: u64) -> Option<(Box<ServerConn>, Instant)> {
    loop {
        let now = Instant::now();
        let conn = pick_idle(&mut pool.lock_idle(), Some(&tenant.id), lifetime_ns, now)?;
        if conn.is_clean() {
            return Some((conn, now));
        }
        tracing::debug!(pool = %pool.key.addr, "dropping a stale idle connection");
    }
}
