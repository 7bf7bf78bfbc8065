//! The memory clients together may hold of large messages that pgtenant reads whole (`[proxy]
//! large_message_memory`). A Query, Parse, Bind, Describe, Close, Execute, Sync or Flush must
//! arrive whole before it goes on (pgtenant reads or rewrites it); each client buffers up to
//! [`FREE`] bytes as a matter of course, and a message longer than that takes its length from
//! one budget shared by every client as its header arrives, before its body: past the budget
//! the client's session ends with 53200 (out of memory) instead of the process growing by
//! `max_message_size` per client. Messages that stream through (copy data, function calls,
//! rows) never count: they are held back by back-pressure instead.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::MAX_CLIENT_BUFFERED;

/// What a client buffers without taking from the budget.
pub(super) const FREE: usize = MAX_CLIENT_BUFFERED;

/// The bytes of large messages still free for all clients together.
#[derive(Debug)]
pub struct MessageBudget {
    left: AtomicUsize,
    size: usize,
}

impl MessageBudget {
    pub fn new(size: usize) -> Arc<MessageBudget> {
        Arc::new(MessageBudget { left: AtomicUsize::new(size), size })
    }

    /// Takes `n` bytes; false (nothing taken) when fewer are left.
    fn take(&self, n: usize) -> bool {
        self.left.fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| left.checked_sub(n)).is_ok()
    }

    fn give(&self, n: usize) {
        self.left.fetch_add(n, Ordering::AcqRel);
    }

    /// Bytes clients hold now.
    pub fn held(&self) -> usize {
        self.size - self.left.load(Ordering::Acquire).min(self.size)
    }

    pub fn size(&self) -> usize {
        self.size
    }
}

/// What one session holds of the budget (only while it holds some: boxed in the session).
#[derive(Debug)]
pub(super) struct Held {
    budget: Arc<MessageBudget>,
    bytes: usize,
    /// The large message being read (the first incomplete frame of the client's buffer) took
    /// its length already.
    arriving: bool,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.budget.give(self.bytes);
    }
}

/// A frame of `len` bytes that must arrive whole is incomplete in the client's buffer: takes
/// its length from the budget the first time (false: the budget cannot hold it).
pub(super) fn arriving(held: &mut Option<Box<Held>>, budget: &Arc<MessageBudget>, len: usize) -> bool {
    if len <= FREE || held.as_ref().is_some_and(|h| h.arriving) {
        return true;
    }
    if !budget.take(len) {
        return false;
    }
    let h = held.get_or_insert_with(|| Box::new(Held { budget: budget.clone(), bytes: 0, arriving: false }));
    h.bytes += len;
    h.arriving = true;
    true
}

/// A frame of `len` bytes that had to arrive whole did.
#[inline]
pub(super) fn arrived(held: &mut Option<Box<Held>>, len: usize) {
    if len > FREE {
        if let Some(h) = held.as_deref_mut() {
            h.arriving = false;
        }
    }
}

/// Gives back what the session holds past what its buffers (`buffered`: the client's and the
/// server-bound bytes) still keep beyond [`FREE`], unless a large message is arriving.
#[inline]
pub(super) fn settle(held: &mut Option<Box<Held>>, buffered: usize) {
    let Some(h) = held.as_deref_mut() else { return };
    if h.arriving {
        return;
    }
    let need = buffered.saturating_sub(FREE);
    if need < h.bytes {
        h.budget.give(h.bytes - need);
        h.bytes = need;
    }
    if h.bytes == 0 {
        *held = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A large message takes its length once while it arrives, is refused past the budget
    /// (nothing taken), and is given back as the buffers drain, and when the session ends.
    #[test]
    fn large_messages_take_from_one_budget_and_give_it_back() {
        let budget = MessageBudget::new(3 * FREE);
        let (mut a, mut b) = (None, None);
        assert!(arriving(&mut a, &budget, FREE), "a message within the free part takes nothing");
        assert!(a.is_none() && budget.held() == 0);
        assert!(arriving(&mut a, &budget, 2 * FREE));
        assert!(arriving(&mut a, &budget, 2 * FREE), "the same message again: taken once");
        assert_eq!(budget.held(), 2 * FREE);
        assert!(!arriving(&mut b, &budget, 2 * FREE), "past the budget");
        assert!(b.is_none() && budget.held() == 2 * FREE, "a refusal takes nothing");
        settle(&mut a, 0);
        assert_eq!(budget.held(), 2 * FREE, "kept while it arrives");
        arrived(&mut a, 2 * FREE);
        settle(&mut a, 2 * FREE);
        assert_eq!(budget.held(), FREE, "what the buffers keep past the free part");
        assert!(arriving(&mut b, &budget, 2 * FREE), "room again");
        settle(&mut a, FREE);
        assert!(a.is_none(), "drained: nothing held");
        drop(b);
        assert_eq!(budget.held(), 0, "a session that ends gives back what it held");
    }
}
