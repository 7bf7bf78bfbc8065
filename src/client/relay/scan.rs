//! The walk over the client's frame headers as its bytes arrive: how far they are whole
//! frames ready to go, a Terminate (never forwarded), a malformed frame. It runs over the
//! session's fields it moves, borrowed one by one, so that a checkout waiting for a full
//! pool (which holds the pool's fields borrowed) runs it too.

use std::sync::Arc;

use bytes::BytesMut;

use super::large;
use super::progress::Progress;
use crate::protocol::frame::{header, FrameError};
use crate::protocol::frontend::{self, tag as fe};
use crate::protocol::PgError;
use crate::proxy::MessageBudget;

/// The session's fields the walk reads and moves (see `Session`'s fields of those names).
pub(super) struct ClientScan<'a> {
    pub(super) cbuf: &'a mut BytesMut,
    pub(super) c_scanned: &'a mut usize,
    pub(super) c_remaining: &'a mut usize,
    pub(super) terminated: &'a mut bool,
    pub(super) broken: &'a mut Option<Box<PgError>>,
    pub(super) progress: &'a mut Progress,
    pub(super) max_message: usize,
    /// What the session holds of the large-message budget, and the budget (its tenant's
    /// share).
    pub(super) large: &'a mut Option<Box<large::Held>>,
    pub(super) budget: &'a Arc<MessageBudget>,
    /// The bytes of the server-bound buffer (they count against the budget with the client's).
    pub(super) out_len: usize,
}

impl ClientScan<'_> {
    /// The same fields, borrowed again for one walk.
    pub(super) fn reborrow(&mut self) -> ClientScan<'_> {
        ClientScan {
            cbuf: self.cbuf,
            c_scanned: self.c_scanned,
            c_remaining: self.c_remaining,
            terminated: self.terminated,
            broken: self.broken,
            progress: self.progress,
            max_message: self.max_message,
            large: self.large,
            budget: self.budget,
            out_len: self.out_len,
        }
    }

    /// Walks the frame headers of newly read client bytes. Messages whose content pgtenant
    /// may read or rewrite (Parse, Bind, Describe, Close, Execute, Query, Sync, Flush) must
    /// arrive whole; other bodies stream through. A malformed frame ends reading: what came
    /// before it is still sent and answered, then the session ends with 08P01.
    #[inline]
    pub(super) fn run(self) {
        let ClientScan {
            cbuf,
            c_scanned,
            c_remaining,
            terminated,
            broken,
            progress,
            max_message,
            large,
            budget,
            out_len,
        } = self;
        while !*terminated && broken.is_none() && *c_scanned < cbuf.len() {
            if *c_remaining > 0 {
                let n = (*c_remaining).min(cbuf.len() - *c_scanned);
                *c_scanned += n;
                *c_remaining -= n;
                continue;
            }
            let (tag, len) =
                match header(&cbuf[*c_scanned..], max_message).and_then(|h| within_limit(h, max_message)) {
                    Ok(Some(h)) => h,
                    Ok(None) => break,
                    Err(e) => {
                        *broken = Some(Box::new(PgError::invalid_client_message(&e)));
                        cbuf.truncate(*c_scanned);
                        break;
                    }
                };
            let avail = cbuf.len() - *c_scanned;
            if must_arrive_whole(tag) {
                // Grows with the bytes that arrive (read_buf reserves a chunk at a time), a
                // large one within the budget all clients share: checked whole too, as its
                // last bytes (or all of them, into a buffer grown for an earlier one) may
                // come in the read that completes it.
                if len > large::FREE {
                    if let Err(full) = large::hold(large, budget, len, cbuf.len() + out_len) {
                        *broken =
                            Some(Box::new(PgError::large_messages_full(len - 1, full.size, full.tenant)));
                        cbuf.truncate(*c_scanned);
                        break;
                    }
                }
                if avail < len {
                    break;
                }
            }
            match tag {
                fe::TERMINATE => {
                    // Terminate: never forwarded; the server connection outlives the client.
                    *terminated = true;
                    cbuf.truncate(*c_scanned);
                    break;
                }
                fe::SYNC => progress.extended_open = false,
                // Not Flush: it only asks for what the server holds, and PostgreSQL starts no
                // transaction for it (postgres.c), so alone it opens no batch that only a Sync
                // would end (a lone Flush kept the connection from the pool for the rest of
                // the session: e2e isolation::attacks34).
                fe::PARSE | fe::BIND | fe::DESCRIBE | fe::CLOSE | fe::EXECUTE => {
                    progress.extended_open = true
                }
                _ => {}
            }
            let take = len.min(avail);
            *c_scanned += take;
            *c_remaining = len - take;
        }
    }
}

/// A header whose length PostgreSQL refuses for its message type (`frontend::length_limit`)
/// is a malformed frame, refused before its body arrives.
fn within_limit(h: Option<(u8, usize)>, max: usize) -> Result<Option<(u8, usize)>, FrameError> {
    let Some((tag, frame_len)) = h else { return Ok(None) };
    let limit = frontend::length_limit(tag, max);
    if frame_len - 1 > limit {
        return Err(FrameError::TooLarge { len: frame_len - 1, max: limit });
    }
    Ok(h)
}

/// Frontend messages pgtenant reads (or may rewrite) and so buffers whole; all are small.
fn must_arrive_whole(tag: u8) -> bool {
    matches!(
        tag,
        fe::PARSE | fe::BIND | fe::DESCRIBE | fe::CLOSE | fe::EXECUTE | fe::QUERY | fe::SYNC | fe::FLUSH
    )
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::protocol::frame::DEFAULT_MAX_MESSAGE;

    fn frame_header(tag: u8, len: usize) -> Vec<u8> {
        let mut b = vec![tag];
        b.extend_from_slice(&(len as i32).to_be_bytes());
        b
    }

    /// Walks `bytes` once; returns how far they were whole frames, the bytes left and the
    /// error that ended reading.
    fn walk(bytes: &[u8]) -> (usize, usize, Option<PgError>) {
        walk_within(bytes, &MessageBudget::new(1 << 30, 1 << 30), &mut None)
    }

    /// [`walk`] with a large-message `budget` and what the session holds of it.
    fn walk_within(
        bytes: &[u8],
        budget: &Arc<MessageBudget>,
        large: &mut Option<Box<large::Held>>,
    ) -> (usize, usize, Option<PgError>) {
        let mut cbuf = BytesMut::from(bytes);
        let (mut scanned, mut remaining, mut terminated, mut broken) = (0, 0, false, None);
        let mut progress = Progress::default();
        ClientScan {
            cbuf: &mut cbuf,
            c_scanned: &mut scanned,
            c_remaining: &mut remaining,
            terminated: &mut terminated,
            broken: &mut broken,
            progress: &mut progress,
            max_message: DEFAULT_MAX_MESSAGE,
            large,
            budget,
            out_len: 0,
        }
        .run();
        (scanned, cbuf.len(), broken.map(|e| *e))
    }

    /// A Sync, Flush, Terminate, Describe, Close, Execute, CopyDone or CopyFail whose length
    /// PostgreSQL refuses (it ends the session there) is refused from its header alone: what
    /// came before is kept to go out, nothing of it is buffered or forwarded. At the limit it
    /// passes, and a Query, Parse, Bind or CopyData may be longer.
    #[test]
    fn a_small_message_over_postgres_limit_is_refused_from_its_header() {
        let query = [b"Q\0\0\0\x0dSELECT 1\0".as_slice()].concat();
        for tag in [
            fe::SYNC,
            fe::FLUSH,
            fe::TERMINATE,
            fe::DESCRIBE,
            fe::CLOSE,
            fe::EXECUTE,
            fe::COPY_DONE,
            fe::COPY_FAIL,
        ] {
            let bytes = [query.as_slice(), &frame_header(tag, 10_001)].concat();
            let (scanned, kept, broken) = walk(&bytes);
            assert_eq!((scanned, kept), (query.len(), query.len()), "{}", tag as char);
            let e = broken.expect("refused");
            assert_eq!((e.state.code(), e.fatal), ("08P01", true), "{}", tag as char);
            assert!(e.message.contains("10001 bytes exceeds the limit of 10000"), "{}", e.message);

            let (_, _, broken) = walk(&[query.as_slice(), &frame_header(tag, 10_000)].concat());
            assert!(broken.is_none(), "{}: at the limit", tag as char);
        }
        for tag in [fe::QUERY, fe::PARSE, fe::BIND, fe::COPY_DATA, fe::FUNCTION_CALL] {
            let (_, _, broken) = walk(&frame_header(tag, 1_000_000));
            assert!(broken.is_none(), "{}", tag as char);
            // Over PostgreSQL's limit for every message (1 GiB - 2): refused, never buffered.
            let (_, _, broken) = walk(&frame_header(tag, 0x3fff_ffff));
            assert!(broken.is_some_and(|e| e.message.contains("limit of 1073741822")), "{}", tag as char);
            let (_, _, broken) = walk(&frame_header(tag, 0x3fff_fffe));
            assert!(broken.is_none(), "{}", tag as char);
        }
    }

    /// A Query longer than a client buffers freely takes from the shared budget what arrived
    /// of it past the free part (nothing from its header alone), once however often its
    /// bytes are walked; one the budget cannot hold is refused (53200), what came before kept
    /// to go out; one that could never fit is refused from its header.
    #[test]
    fn a_large_message_takes_from_the_budget_or_is_refused() {
        let budget = MessageBudget::new(large::FREE * 2, large::FREE * 2);
        let query = b"Q\0\0\0\x0dSELECT 1\0".to_vec();
        let big = frame_header(fe::QUERY, 3 * large::FREE - 1);
        let (mut a, mut b) = (None, None);
        walk_within(&[query.as_slice(), &big].concat(), &budget, &mut a);
        assert!(a.is_none() && budget.held() == 0, "a header alone takes nothing");
        let arrived = [query.as_slice(), &big, &vec![b'x'; 2 * large::FREE]].concat();
        for _ in 0..2 {
            let (_, _, broken) = walk_within(&arrived, &budget, &mut a);
            assert!(broken.is_none());
            assert_eq!(budget.held(), arrived.len() - large::FREE, "taken once (what arrived)");
        }
        let (scanned, kept, broken) = walk_within(&arrived, &budget, &mut b);
        let e = broken.expect("past the budget");
        assert_eq!((e.state.code(), e.fatal), ("53200", true));
        assert_eq!((scanned, kept), (query.len(), query.len()), "the earlier query still goes");
        assert!(b.is_none());
        drop(a);
        assert_eq!(budget.held(), 0);
        let (_, _, broken) = walk_within(&arrived, &budget, &mut b);
        assert!(broken.is_none(), "room again once the first session ended");
        let never = frame_header(fe::QUERY, 3 * large::FREE);
        let (_, _, broken) = walk_within(&never, &budget, &mut None);
        assert_eq!(broken.map(|e| e.state.code()), Some("53200"), "could never fit: refused from its header");
        drop(b);
        let mut whole = frame_header(fe::QUERY, 2 * large::FREE - 1);
        whole.resize(2 * large::FREE, b'x');
        let (mut c, budget) = (None, MessageBudget::new(large::FREE * 2, large::FREE * 2));
        let (scanned, _, broken) = walk_within(&whole, &budget, &mut c);
        assert!(broken.is_none() && scanned == whole.len());
        assert_eq!(budget.held(), large::FREE, "one that arrived in a single read counts too");
    }

    proptest! {
        /// Any bytes: the walk never passes the buffer, keeps only whole frames' worth before a
        /// refused one, and never lets a header over its type's limit through.
        #[test]
        fn the_walk_never_passes_a_refused_length(bytes in proptest::collection::vec(any::<u8>(), 0..64), tag in any::<u8>(), len in 0u32..20_000) {
            let mut all = bytes.clone();
            all.extend_from_slice(&frame_header(tag, len as usize));
            let (scanned, kept, broken) = walk(&all);
            prop_assert!(scanned <= kept && kept <= all.len());
            if broken.is_some() {
                prop_assert_eq!(scanned, kept);
            }
            let mut pos = 0;
            while let Ok(Some((tag, len))) = header(&all[pos..scanned.max(pos)], usize::MAX) {
                prop_assert!(len - 1 <= frontend::length_limit(tag, DEFAULT_MAX_MESSAGE));
                pos += len;
                if pos >= scanned {
                    break;
                }
            }
        }
    }
}
