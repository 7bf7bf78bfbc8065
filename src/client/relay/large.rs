//! The memory clients together may hold of large messages that pgtenant reads whole (`[proxy]
//! large_message_memory`). A Query, Parse, Bind, Describe, Close, Execute, Sync or Flush must
//! arrive whole before it goes on (pgtenant reads or rewrites it); each client buffers up to
//! [`FREE`] bytes as a matter of course, and what its buffers (the client's and the
//! server-bound one) hold past that comes from one budget shared by every client, taken as the
//! bytes arrive and given back as they go on: past the budget the client's session ends with
//! 53200 (out of memory) instead of the process growing by `max_message_size` per client.
//! Nothing is taken from a length prefix ahead of its bytes (DESIGN, Containment 4): a header
//! alone would let five bytes hold the whole budget for as long as their connection stays
//! open. A message that could never fit is refused from its header. Messages that stream
//! through (copy data, function calls, rows) never count: they are held back by back-pressure.

use std::sync::Arc;

use super::MAX_CLIENT_BUFFERED;
use crate::proxy::MessageBudget;

/// What a client buffers without taking from the budget.
pub(super) const FREE: usize = MAX_CLIENT_BUFFERED;

/// What one session holds of the budget (only while it holds some: boxed in the session).
#[derive(Debug)]
pub(super) struct Held {
    budget: Arc<MessageBudget>,
    bytes: usize,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.budget.give(self.bytes);
    }
}

/// A frame of `len` bytes that must arrive whole is in the client's buffer (whole or not), the
/// session's buffers holding `buffered` bytes: takes from the budget what they hold past
/// [`FREE`] and it does not hold yet (false: the budget cannot hold them, or the frame could
/// never fit; nothing taken).
pub(super) fn hold(
    held: &mut Option<Box<Held>>,
    budget: &Arc<MessageBudget>,
    len: usize,
    buffered: usize,
) -> bool {
    if len <= FREE {
        return true;
    }
    if len - FREE > budget.size() {
        return false;
    }
    let need = buffered.saturating_sub(FREE);
    let have = held.as_ref().map_or(0, |h| h.bytes);
    if need <= have {
        return true;
    }
    if !budget.take(need - have) {
        return false;
    }
    held.get_or_insert_with(|| Box::new(Held { budget: budget.clone(), bytes: 0 })).bytes = need;
    true
}

/// Gives back what the session holds past what its buffers (`buffered`: the client's and the
/// server-bound bytes) still keep beyond [`FREE`].
#[inline]
pub(super) fn settle(held: &mut Option<Box<Held>>, buffered: usize) {
    let Some(h) = held.as_deref_mut() else { return };
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

    /// A large message takes what arrived of it past the free part, never its length ahead;
    /// is refused past the budget (nothing taken), and from its header when it could never
    /// fit; gives back as the buffers drain, and when the session ends.
    #[test]
    fn large_messages_take_what_arrived_and_give_it_back() {
        let budget = MessageBudget::new(3 * FREE);
        let (mut a, mut b) = (None, None);
        assert!(hold(&mut a, &budget, FREE, FREE), "a message within the free part takes nothing");
        assert!(hold(&mut a, &budget, 3 * FREE, 5));
        assert!(a.is_none() && budget.held() == 0, "a header alone takes nothing");
        assert!(hold(&mut a, &budget, 3 * FREE, 2 * FREE));
        assert!(hold(&mut a, &budget, 3 * FREE, 2 * FREE), "the same bytes again: taken once");
        assert_eq!(budget.held(), FREE);
        assert!(hold(&mut a, &budget, 3 * FREE, 3 * FREE));
        assert_eq!(budget.held(), 2 * FREE, "what arrived past the free part");
        assert!(hold(&mut b, &budget, 3 * FREE, 2 * FREE));
        assert!(!hold(&mut b, &budget, 3 * FREE, 2 * FREE + 1), "past the budget");
        assert_eq!(budget.held(), 3 * FREE, "a refusal takes nothing");
        assert!(!hold(&mut None, &budget, 4 * FREE + 1, 5), "could never fit: refused from its header");
        settle(&mut a, 2 * FREE);
        assert_eq!(budget.held(), 2 * FREE, "what the buffers keep past the free part");
        settle(&mut a, FREE);
        assert!(a.is_none(), "drained: nothing held");
        drop(b);
        assert_eq!(budget.held(), 0, "a session that ends gives back what it held");
    }
}
