//! A pool's idle connections: kept under the lock of the pool's checkout permits (see
//! [`super::fair`]), taken by preference for the tenant that used them last, and closed
//! rather than kept when they belong to an old login or exceed the pool's size.

use std::time::Instant;

use super::fair::Locked;
use super::ServerConn;
use crate::model::TenantId;

/// A pool's idle connections, most recently used last, and the login generation they must
/// carry: a connection of an older generation is closed instead of kept (so a busy
/// connection opened with an old password is closed when it is released), and so is one
/// that would leave the pool above its size (after the size shrank). Guarded by the lock of
/// the pool's checkout permits (see [`super::fair`]).
pub(super) struct Idle {
    /// Boxed, as in [`super::Checkout`]: a checkout and a release move a pointer, not the connection.
    #[allow(clippy::vec_box)] // On purpose: see above.
    pub(super) conns: Vec<Box<ServerConn>>,
    pub(super) generation: u64,
    /// Busy connections to close as they come back, after the pool size shrank.
    pub(super) retire: usize,
}

/// Keeps `conn` if it was opened with the current login and the pool is within its size;
/// closes it otherwise. The permit of the connection being returned is still held.
pub(super) fn push_idle(idle: &mut Locked<'_, Idle>, conn: Box<ServerConn>) {
    // Permits are not connections: a permit handed to a waiter that has not yet taken the
    // connection pushed before it is still "in use", so the size is checked against what
    // the shrink left to retire and the idle list itself.
    let size = idle.size();
    if conn.generation != idle.generation {
        tracing::debug!(upstream = %conn.addr, "closing a server connection opened with an old login");
    } else if idle.retire > 0 || idle.conns.len() >= size {
        idle.retire = idle.retire.saturating_sub(1);
        tracing::debug!(upstream = %conn.addr, "closing a server connection above the pool size");
    } else {
        idle.conns.push(conn);
    }
}

/// An idle connection, preferring one last set up for `tenant`, then one that needs no
/// reset (no tenant's session on it), else the most recently used (which then gets the
/// cross-tenant reset); connections past their lifetime (`lifetime_ns`, the pool's
/// `max_lifetime`, at `now`) are closed on the way.
pub(super) fn pick_idle(
    idle: &mut Idle,
    tenant: Option<&TenantId>,
    lifetime_ns: u64,
    now: Instant,
) -> Option<Box<ServerConn>> {
    loop {
        let pick = tenant
            .and_then(|t| idle.iter().rposition(|c| c.tenant.as_ref() == Some(t)))
            .or_else(|| idle.iter().rposition(|c| c.tenant.is_none() && !c.dirty))
            .or_else(|| idle.len().checked_sub(1))?;
        let mut conn = idle.remove(pick);
        // Past its lifetime: closed here (the reaper catches the ones never picked).
        if conn.live_at(lifetime_ns, now) {
            return Some(conn);
        }
    }
}

impl std::ops::Deref for Idle {
    type Target = Vec<Box<ServerConn>>;
    fn deref(&self) -> &Vec<Box<ServerConn>> {
        &self.conns
    }
}

impl std::ops::DerefMut for Idle {
    fn deref_mut(&mut self) -> &mut Vec<Box<ServerConn>> {
        &mut self.conns
    }
}
