//! The memory clients together may hold of large messages that pgtenant reads whole (`[proxy]
//! large_message_memory`). A Query, Parse, Bind, Describe, Close, Execute, Sync or Flush must
//! arrive whole before it goes on (pgtenant reads or rewrites it); each client buffers up to
//! [`FREE`] bytes as a matter of course, and what its buffers (the client's and the
//! server-bound one) hold past that comes from one budget shared by every client, taken as the
//! bytes arrive and given back as they go on: past the budget the client's session ends with
//! 53200 (out of memory) instead of the process growing by `max_message_size` per client.
//! A session takes from its tenant's share (`large_message_memory_per_tenant`), which takes
//! from the whole in turn: one tenant's clients never hold all of it.
//! Nothing is taken from a length prefix ahead of its bytes (DESIGN, Containment 4): a header
//! alone would let five bytes hold the whole budget for as long as their connection stays
//! open. A message that could never fit is refused from its header. Messages that stream
//! through (copy data, function calls, rows) never count: they are held back by back-pressure.

use std::sync::Arc;

use super::MAX_CLIENT_BUFFERED;
use crate::proxy::{BudgetFull, MessageBudget};

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
/// session's buffers holding `buffered` bytes: takes from the budget (the tenant's share)
/// what they hold past [`FREE`] and it does not hold yet; the limit they would pass when it
/// cannot hold them, or the frame could never fit (nothing taken).
pub(super) fn hold(
    held: &mut Option<Box<Held>>,
    budget: &Arc<MessageBudget>,
    len: usize,
    buffered: usize,
) -> Result<(), BudgetFull> {
    if len <= FREE {
        return Ok(());
    }
    if len - FREE > budget.size() {
        return Err(budget.full());
    }
    let need = buffered.saturating_sub(FREE);
    let have = held.as_ref().map_or(0, |h| h.bytes);
    if need <= have {
        return Ok(());
    }
    budget.take(need - have)?;
    held.get_or_insert_with(|| Box::new(Held { budget: budget.clone(), bytes: 0 })).bytes = need;
    Ok(())
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
        let budget = MessageBudget::new(3 * FREE, 3 * FREE);
        let whole = BudgetFull { size: 3 * FREE, tenant: false };
        let (mut a, mut b) = (None, None);
        assert_eq!(hold(&mut a, &budget, FREE, FREE), Ok(()), "a message within the free part takes nothing");
        assert_eq!(hold(&mut a, &budget, 3 * FREE, 5), Ok(()));
        assert!(a.is_none() && budget.held() == 0, "a header alone takes nothing");
        assert_eq!(hold(&mut a, &budget, 3 * FREE, 2 * FREE), Ok(()));
        assert_eq!(hold(&mut a, &budget, 3 * FREE, 2 * FREE), Ok(()), "the same bytes again: taken once");
        assert_eq!(budget.held(), FREE);
        assert_eq!(hold(&mut a, &budget, 3 * FREE, 3 * FREE), Ok(()));
        assert_eq!(budget.held(), 2 * FREE, "what arrived past the free part");
        assert_eq!(hold(&mut b, &budget, 3 * FREE, 2 * FREE), Ok(()));
        assert_eq!(hold(&mut b, &budget, 3 * FREE, 2 * FREE + 1), Err(whole), "past the budget");
        assert_eq!(budget.held(), 3 * FREE, "a refusal takes nothing");
        assert_eq!(
            hold(&mut None, &budget, 4 * FREE + 1, 5),
            Err(whole),
            "could never fit: refused from its header"
        );
        settle(&mut a, 2 * FREE);
        assert_eq!(budget.held(), 2 * FREE, "what the buffers keep past the free part");
        settle(&mut a, FREE);
        assert!(a.is_none(), "drained: nothing held");
        drop(b);
        assert_eq!(budget.held(), 0, "a session that ends gives back what it held");
    }

    /// A tenant's clients take from its share and from the whole: past its share a message
    /// is refused (the tenant's limit named) while another tenant still takes from what is
    /// left; past the whole, the whole is named; a refusal takes from neither, and what a
    /// session gives back returns to both.
    #[test]
    fn one_tenants_clients_hold_at_most_its_share() {
        let all = MessageBudget::new(4 * FREE, 2 * FREE);
        let (one, two, three) =
            (MessageBudget::share(&all), MessageBudget::share(&all), MessageBudget::share(&all));
        let share = BudgetFull { size: 2 * FREE, tenant: true };
        let (mut a, mut b, mut c, mut d) = (None, None, None, None);
        assert_eq!(hold(&mut a, &one, 3 * FREE, 3 * FREE), Ok(()));
        assert_eq!(hold(&mut b, &one, 3 * FREE, 2 * FREE + 1), Err(share), "past the tenant's share");
        assert_eq!((one.held(), all.held()), (2 * FREE, 2 * FREE), "a refusal takes nothing");
        assert_eq!(hold(&mut None, &one, 3 * FREE + 1, 5), Err(share), "could never fit the share");
        assert_eq!(hold(&mut c, &two, 3 * FREE, 3 * FREE), Ok(()), "another tenant takes what is left");
        let whole = BudgetFull { size: 4 * FREE, tenant: false };
        assert_eq!(hold(&mut d, &three, 3 * FREE, 2 * FREE), Err(whole), "past the whole");
        assert_eq!((three.held(), all.held()), (0, 4 * FREE), "nothing taken from the share either");
        drop(a);
        assert_eq!((one.held(), all.held()), (0, 2 * FREE), "given back to the share and the whole");
        assert_eq!(hold(&mut d, &three, 3 * FREE, 2 * FREE), Ok(()));
        drop((c, d));
        assert_eq!(all.held(), 0);
        let large = MessageBudget::new(2 * FREE, 4 * FREE);
        assert_eq!(
            MessageBudget::share(&large).full(),
            BudgetFull { size: 2 * FREE, tenant: false },
            "a share as large as the whole is the whole"
        );
    }

    /// A take the whole refuses never shows its tenant's share as taken, even for an instant:
    /// meanwhile another session of the tenant, within the share and within what the whole has
    /// left, is never refused (and never told it passed the tenant's limit).
    #[test]
    fn a_large_take_the_whole_refuses_never_refuses_the_tenants_other_sessions() {
        let all = MessageBudget::new(3 * FREE, 2 * FREE);
        let (other, one) = (MessageBudget::share(&all), MessageBudget::share(&all));
        let mut others = None;
        assert_eq!(hold(&mut others, &other, 3 * FREE, 3 * FREE), Ok(()), "the whole keeps FREE");
        let stop = std::sync::atomic::AtomicBool::new(false);
        let refused = std::thread::scope(|s| {
            // x: a message of 2 * FREE past the free part, all of its share, never fits.
            let x = s.spawn(|| {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    assert!(hold(&mut None, &one, 3 * FREE, 3 * FREE).is_err());
                }
            });
            // y: half of FREE past the free part, within the share and what the whole has left.
            let mut refused = Vec::new();
            for _ in 0..200_000 {
                let mut y = None;
                if let Err(full) = hold(&mut y, &one, 2 * FREE, FREE + FREE / 2) {
                    refused.push(full);
                }
                settle(&mut y, 0);
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            x.join().map(|()| refused)
        });
        let refused = refused.unwrap_or_else(|e| std::panic::resume_unwind(e));
        assert_eq!(refused.first(), None, "refused {} times", refused.len());
        drop(others);
        assert_eq!((one.held(), all.held()), (0, 0));
    }
}
