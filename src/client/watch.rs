//! Shutdown and kick signals watched by a session without touching them on every wake-up.
//!
//! A `CancellationToken`'s future takes the token's mutex (and, while registered, its
//! `Notify`'s) each time it is polled, and those tokens are process-wide (drain, force) or
//! tenant-wide (kick): polling them on every wake of every session is a shared lock per
//! message. Here they are polled once to register, with a waker of our own that notes in a
//! session-local flag that one of them fired before waking the task; after that a wake-up
//! costs one relaxed load of that flag, and the futures are polled again only when it is set.
//! This works whoever cancels the token (nothing has to be bumped at the cancel site).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// Set by any watched token's wake-up; carries the task's waker to pass the wake-up on.
struct Flag {
    fired: AtomicBool,
    task: Mutex<Option<Waker>>,
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // Set before the task runs again, so its poll sees the flag.
        self.fired.store(true, Ordering::Release);
        if let Some(w) = self.task.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            w.wake_by_ref();
        }
    }
}

/// Up to `N` cancellation tokens, in priority order; see the module note.
pub(crate) struct Watch<const N: usize> {
    futures: [Pin<Box<WaitForCancellationFutureOwned>>; N],
    /// Tokens already reported (each is reported once).
    done: [bool; N],
    flag: Arc<Flag>,
    /// The waker the futures were registered with (wakes through `flag`).
    waker: Waker,
    /// A copy of the task's waker that `flag` holds, to notice (without a lock) when the
    /// task's waker changes.
    task: Option<Waker>,
}

impl<const N: usize> Watch<N> {
    pub fn new(tokens: [&CancellationToken; N]) -> Self {
        let flag = Arc::new(Flag { fired: AtomicBool::new(true), task: Mutex::new(None) });
        Watch {
            futures: tokens.map(|t| Box::pin(t.clone().cancelled_owned())),
            done: [false; N],
            waker: Waker::from(flag.clone()),
            flag,
            task: None,
        }
    }

    /// The first of the first `upto` tokens that fired and was not reported yet (a token
    /// past `upto` is not watched: if it fires meanwhile, it is never reported). Cheap unless
    /// one of them fired since the last call.
    pub fn poll(&mut self, cx: &mut Context<'_>, upto: usize) -> Option<usize> {
        if !self.task.as_ref().is_some_and(|t| t.will_wake(cx.waker())) {
            let w = cx.waker().clone();
            *self.flag.task.lock().unwrap_or_else(|e| e.into_inner()) = Some(w.clone());
            self.task = Some(w);
        }
        if !self.flag.fired.load(Ordering::Acquire) {
            return None;
        }
        self.flag.fired.store(false, Ordering::Relaxed);
        let mut own = Context::from_waker(&self.waker);
        let mut fired = None;
        for i in 0..N.min(upto) {
            if self.done[i] {
                continue;
            }
            if self.futures[i].as_mut().poll(&mut own).is_ready() {
                if fired.is_none() {
                    self.done[i] = true;
                    fired = Some(i);
                } else {
                    // Reported on the next call: keep the flag up.
                    self.flag.fired.store(true, Ordering::Relaxed);
                }
            }
        }
        fired
    }

    /// Waits until one of the tokens fires (for a watch that is only awaited).
    pub async fn fired(&mut self) -> usize {
        std::future::poll_fn(|cx| match self.poll(cx, N) {
            Some(i) => Poll::Ready(i),
            None => Poll::Pending,
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reports_each_token_once_in_priority_order() {
        let (a, b) = (CancellationToken::new(), CancellationToken::new());
        let mut w = Watch::new([&a, &b]);
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert_eq!(w.poll(&mut cx, 2), None);
        // Not fired: the flag stays down and the futures are not polled again.
        assert_eq!(w.poll(&mut cx, 2), None);
        b.cancel();
        a.cancel();
        assert_eq!(w.poll(&mut cx, 2), Some(0));
        assert_eq!(w.poll(&mut cx, 2), Some(1));
        assert_eq!(w.poll(&mut cx, 2), None);
    }

    #[tokio::test]
    async fn an_unwatched_token_does_not_hide_a_watched_one() {
        let (force, drain) = (CancellationToken::new(), CancellationToken::new());
        let mut w = Watch::new([&force, &drain]);
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert_eq!(w.poll(&mut cx, 1), None);
        drain.cancel();
        assert_eq!(w.poll(&mut cx, 1), None);
        force.cancel();
        assert_eq!(w.poll(&mut cx, 1), Some(0));
    }

    #[tokio::test]
    async fn a_cancel_wakes_the_waiting_task() {
        let t = CancellationToken::new();
        let mut w = Watch::new([&t]);
        let t2 = t.clone();
        tokio::spawn(async move {
            tokio::task::yield_now().await;
            t2.cancel();
        });
        assert_eq!(tokio::time::timeout(std::time::Duration::from_secs(5), w.fired()).await.ok(), Some(0));
    }
}
