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

/// What a retry's pick reads of an idle connection: the tenant whose session it carries,
/// and whether a client left it dirty. (A trait, so the picks are tested without sockets.)
pub(super) trait Carried {
    fn carried(&self) -> (Option<&TenantId>, bool);
}

impl Carried for Box<ServerConn> {
    fn carried(&self) -> (Option<&TenantId>, bool) {
        (self.tenant.as_ref(), self.dirty)
    }
}

/// The idle connection a handoff retry for `tenant` may take: one last set up for `tenant`,
/// else one with no tenant's session, neither dirty; never one that needs a cross-tenant
/// reset (another tenant's session on it, or dirty): a tenant that leaves failing resets on
/// several idle connections would otherwise spend the next tenant's attempts on them.
pub(super) fn retry_index<C: Carried>(conns: &[C], tenant: &TenantId) -> Option<usize> {
    conns
        .iter()
        .rposition(|c| c.carried() == (Some(tenant), false))
        .or_else(|| conns.iter().rposition(|c| c.carried() == (None, false)))
}

/// The idle connection to close to make room for a retry's new one: the least recently
/// used of those that need a reset for `tenant` (none other is left when a retry opens).
pub(super) fn evict_index<C: Carried>(conns: &[C], tenant: &TenantId) -> Option<usize> {
    conns.iter().position(|c| {
        let (t, dirty) = c.carried();
        dirty || t.is_some_and(|t| t != tenant)
    })
}

/// How many idle connections to close before a retry opens one: the pool's connections
/// (`idle`, and one per permit `in_use`, the retry's own among them) must stay within its
/// `size`. None as a rule (the failed connection, closed, left its place to the retry);
/// some after the pool shrank, or while a released connection waits for a woken waiter.
pub(super) fn excess(idle: usize, in_use: usize, size: usize) -> usize {
    (idle + in_use).saturating_sub(size)
}

/// A retry's idle connection (see [`retry_index`]), past-lifetime ones closed on the way;
/// when there is none, closes idle connections of other tenants (see [`excess`]) so that
/// the connection the retry opens keeps the pool within its size. What it closes is
/// returned, to be dropped outside the lock.
#[allow(clippy::vec_box)] // The idle list's own boxes, moved out.
pub(super) fn pick_for_retry(
    idle: &mut Locked<'_, Idle>,
    tenant: &TenantId,
    lifetime_ns: u64,
    now: Instant,
) -> (Option<Box<ServerConn>>, Vec<Box<ServerConn>>) {
    let mut closed = Vec::new();
    while let Some(i) = retry_index(&idle.conns, tenant) {
        let mut conn = idle.conns.remove(i);
        if conn.live_at(lifetime_ns, now) {
            return (Some(conn), closed);
        }
        closed.push(conn);
    }
    for _ in 0..excess(idle.conns.len(), idle.in_use(), idle.size()) {
        let Some(i) = evict_index(&idle.conns, tenant) else { break };
        closed.push(idle.conns.remove(i));
    }
    (None, closed)
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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// An idle connection as a retry's pick sees it.
    #[derive(Debug, Clone)]
    struct Fake(Option<TenantId>, bool);

    impl Carried for Fake {
        fn carried(&self) -> (Option<&TenantId>, bool) {
            (self.0.as_ref(), self.1)
        }
    }

    fn id(s: &str) -> TenantId {
        TenantId::parse(s).expect("tenant id")
    }

    /// Idle lists of up to eight connections, each carrying tenant a, b, c or none, dirty
    /// or not.
    fn idle_lists() -> impl Strategy<Value = Vec<Fake>> {
        let conn = (0u8..4, any::<bool>())
            .prop_map(|(t, dirty)| Fake((t > 0).then(|| id(["", "a", "b", "c"][usize::from(t)])), dirty));
        proptest::collection::vec(conn, 0..8)
    }

    proptest! {
        /// A retry for b never takes a connection that would need a reset (another tenant's
        /// session, or dirty); takes b's own when there is one (the most recent), else a
        /// clean one with no session, and finds one whenever one of those is idle.
        #[test]
        fn a_retry_never_takes_another_tenants_or_a_dirty_connection(conns in idle_lists()) {
            let b = id("b");
            let fit = |c: &Fake| c.carried() == (Some(&b), false) || c.carried() == (None, false);
            match retry_index(&conns, &b) {
                Some(i) => {
                    prop_assert!(fit(&conns[i]), "{:?} at {} needs a reset", conns[i], i);
                    let own = conns.iter().rposition(|c| c.carried() == (Some(&b), false));
                    prop_assert!(own.is_none_or(|o| o == i), "b's own connection comes first");
                }
                None => prop_assert!(!conns.iter().any(fit), "a fitting connection was left"),
            }
            // The one closed to make room is never one the retry could have taken.
            if let Some(i) = evict_index(&conns, &b) {
                prop_assert!(!fit(&conns[i]));
                prop_assert!(conns[..i].iter().all(fit), "the least recently used first");
            } else {
                prop_assert!(conns.iter().all(fit));
            }
        }
    }

    #[test]
    fn a_retry_closes_idle_connections_only_past_the_pool_size() {
        // The failed connection closed left its place: nothing to close.
        assert_eq!(excess(2, 1, 3), 0);
        assert_eq!(excess(0, 3, 3), 0);
        // A released connection not yet taken by the waiter it woke, or a shrunk pool.
        assert_eq!(excess(3, 1, 3), 1);
        assert_eq!(excess(3, 3, 2), 4);
    }
}
