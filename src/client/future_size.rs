//! How large a client's task is: the whole `serve` future lives in one allocation for as
//! long as the client is connected, so its size is the floor of an idle client's memory.
//! Rare, large steps (login, connecting upstream, the final retire) are boxed so that they
//! cost only while they run; this test keeps it that way.

use std::future::Future;
use std::mem::size_of;

/// The size of the future `f` returns, without calling it.
fn returned_size<A, B, C, D, F, Fut>(_: &F) -> usize
where
    F: FnOnce(A, B, C, D) -> Fut,
    Fut: Future,
{
    size_of::<Fut>()
}

#[test]
fn the_client_task_stays_small() {
    // 8,920 bytes before the boxing; 2,520 after; 3,136 with the client's meter (metrics,
    // usage, the disconnect line) and its entry in the console's client registry (Rust 1.95,
    // x86_64). The console session itself is boxed. 2,912 once the session's limits and
    // timer (absent unless a limit applies) and its rare errors were boxed. 2,608 once the
    // signals were one shared word and the server connection a pointer; 1,888 once the login's
    // leftovers (kept in the task for as long as the client stayed) went with its box; 1,808
    // with the SET texts of the unnamed and the bound statement boxed. 1,952 merged with the
    // session's tenant cap, tenant affinity and the watched checkout; still 1,952 with the
    // server socket's waker (16 bytes) once `busy_since` went into the boxed limits. 2,032
    // with the client's socket watched by a waiting checkout (its fields borrowed, 80 bytes);
    // 1,920 once the timers of a checkout's waits (tenant cap, full pool) were boxed. 1,936
    // with the cursors a DECLARE carried by Parse declares at its Execute (one boxed pointer
    // in `Statements`, 8 bytes). 1,952 with what a handoff keeps to be retried on another
    // connection (a boxed pointer in the session's `Progress`, absent unless a reset is due: 8
    // bytes, and 8 more of the relay's state).
    let serve = returned_size(&super::serve);
    assert!(serve <= 1_952, "serve future: {serve} bytes");
}
