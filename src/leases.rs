//! Caps that belong to the whole service (a tenant's `max_clients` and explicit
//! `max_server_connections`, an upstream's `max_connections`), shared out between the live
//! instances of the registry ([`crate::instances`]) so that together they never exceed them.
//!
//! A *view* is the set of registered instances, by slot. In a view of `n` instances, the
//! instance of rank `r` (slot order) holds `floor(cap / n)`, plus one while `r < cap % n`:
//! the shares of a view sum to the cap exactly ([`share`]).
//!
//! Views change as instances join and leave, and each instance learns of a change at its own
//! heartbeat. Growing a share before every peer has shrunk its own would overshoot, so each
//! instance keeps the view it last *settled* on and the views it has seen since, and holds
//! the smallest of its shares over all of them ([`Leases::limit`]); a view it is not a member
//! of gives it nothing, so a joining instance starts with nothing. Every heartbeat reports the
//! newest view the instance has applied (`seen`). Once every member of the current view
//! reports that view, every member holds at most its share of it, and the instance settles on
//! it: it may then grow to that share. Shrinking never waits.
//!
//! An instance that cannot reach the control database learns of no view, so it keeps its
//! limits; its peers cannot settle on a view that drops it until its row is removed, which
//! only a peer that has reached the control database for a whole expiry window does
//! (`store_instances::beat`).

use std::sync::Arc;

use arc_swap::ArcSwap;

/// The registered instances as one heartbeat saw them: distinct slots, ascending.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct View(Vec<u16>);

impl View {
    pub fn new(mut slots: Vec<u16>) -> View {
        slots.sort_unstable();
        slots.dedup();
        View(slots)
    }

    /// How a view is reported in the registry's `seen` column: the slots, comma-separated.
    pub fn key(&self) -> String {
        let mut s = String::with_capacity(self.0.len() * 4);
        for (i, slot) in self.0.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            s.push_str(&slot.to_string());
        }
        s
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn rank(&self, slot: u16) -> Option<usize> {
        self.0.binary_search(&slot).ok()
    }
}

/// The share of `cap` held by the instance of rank `rank` among `n` (`None`: not a member,
/// nothing). Shares over all ranks sum to `cap`.
pub fn share_of(cap: usize, n: usize, rank: Option<usize>) -> usize {
    match rank {
        Some(r) if r < n => cap / n + usize::from(r < cap % n),
        _ => 0,
    }
}

/// The share of `cap` that `slot` holds in `view`.
pub fn share(cap: usize, view: &View, slot: u16) -> usize {
    share_of(cap, view.len(), view.rank(slot))
}

/// One instance's leases: the view it settled on and those it has seen since.
#[derive(Clone, Debug)]
pub struct Leases {
    slot: u16,
    settled: Option<View>,
    /// Views seen since `settled`, oldest first, without repeats; the last one is what the
    /// instance reports as seen.
    pending: Vec<View>,
}

/// What [`Leases::limit`] needs, in a form cheap enough to read per login: (members,
/// this instance's rank) of every view whose share bounds this instance's limits.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Bounds(Vec<(usize, Option<usize>)>);

impl Bounds {
    /// No bound: the instance is alone with the caps (no registry).
    pub fn whole() -> Bounds {
        Bounds(vec![(1, Some(0))])
    }

    /// This instance's limit under `cap`.
    #[inline]
    pub fn limit(&self, cap: usize) -> usize {
        self.0.iter().map(|&(n, r)| share_of(cap, n, r)).min().unwrap_or(0)
    }
}

impl Leases {
    /// A newly registered instance: nothing settled, so its limits are all 0 until it has
    /// settled on a view.
    pub fn new(slot: u16) -> Leases {
        Leases { slot, settled: None, pending: Vec::new() }
    }

    pub fn slot(&self) -> u16 {
        self.slot
    }

    /// Whether the instance holds its full share of the newest view it saw.
    pub fn settled(&self) -> bool {
        self.settled.is_some() && self.pending.is_empty()
    }

    /// The newest view applied: what the next heartbeat reports as seen ("" before any).
    pub fn seen(&self) -> String {
        self.pending.last().or(self.settled.as_ref()).map(View::key).unwrap_or_default()
    }

    /// The bounds in force: the settled view's share (nothing if none) and each pending one's.
    pub fn bounds(&self) -> Bounds {
        let views = self.settled.iter().chain(&self.pending);
        let mut b: Vec<(usize, Option<usize>)> = views.map(|v| (v.len(), v.rank(self.slot))).collect();
        if self.settled.is_none() {
            b.push((1, None));
        }
        Bounds(b)
    }

    /// This instance's limit under `cap`.
    pub fn limit(&self, cap: usize) -> usize {
        self.bounds().limit(cap)
    }

    /// Takes in what a heartbeat read: every registered instance as (slot, the view it last
    /// reported as seen), this one's entry carrying what this heartbeat reported. Returns
    /// whether the bounds changed.
    pub fn observe(&mut self, rows: &[(u16, &str)]) -> bool {
        let before = self.bounds();
        let view = View::new(rows.iter().map(|r| r.0).collect());
        if self.settled.as_ref() != Some(&view) || !self.pending.is_empty() {
            if !self.pending.contains(&view) {
                self.pending.push(view.clone());
            } else if self.pending.last() != Some(&view) {
                // Seen before and again now (A, B, A): the newest is what is reported.
                self.pending.retain(|v| v != &view);
                self.pending.push(view.clone());
            }
        }
        let key = view.key();
        if view.rank(self.slot).is_some() && rows.iter().all(|r| r.1 == key) {
            self.settled = Some(view);
            self.pending.clear();
        }
        self.bounds() != before
    }
}

/// An instance's limits as sessions read them: one lock-free load per login or checkout, no
/// control-database round trip. Changes are announced to whoever resizes what it caps
/// ([`Shares::subscribe`]: the pools).
pub struct Shares {
    bounds: ArcSwap<Bounds>,
    changed: tokio::sync::watch::Sender<u64>,
}

impl Shares {
    /// Limits equal to the caps (one instance, or no registry).
    pub fn whole() -> Arc<Shares> {
        Shares::with(Bounds::whole())
    }

    /// Nothing yet: a newly registered instance's limits.
    pub fn none() -> Arc<Shares> {
        Shares::with(Bounds::default())
    }

    fn with(bounds: Bounds) -> Arc<Shares> {
        Arc::new(Shares { bounds: ArcSwap::from_pointee(bounds), changed: tokio::sync::watch::channel(0).0 })
    }

    /// This instance's limit under the service-wide `cap`.
    #[inline]
    pub fn limit(&self, cap: usize) -> usize {
        self.bounds.load().limit(cap)
    }

    /// Puts `bounds` in force and tells the subscribers.
    pub fn set(&self, bounds: Bounds) {
        self.bounds.store(Arc::new(bounds));
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Fires after each [`Shares::set`].
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

#[cfg(test)]
mod tests;
