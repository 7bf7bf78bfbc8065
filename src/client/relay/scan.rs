//! The walk over the client's frame headers as its bytes arrive: how far they are whole
//! frames ready to go, a Terminate (never forwarded), a malformed frame. It runs over the
//! session's fields it moves, borrowed one by one, so that a checkout waiting for a full
//! pool (which holds the pool's fields borrowed) runs it too.

use bytes::BytesMut;

use super::progress::Progress;
use crate::protocol::frame::header;
use crate::protocol::frontend::tag as fe;
use crate::protocol::PgError;

/// The session's fields the walk reads and moves (see `Session`'s fields of those names).
pub(super) struct ClientScan<'a> {
    pub(super) cbuf: &'a mut BytesMut,
    pub(super) c_scanned: &'a mut usize,
    pub(super) c_remaining: &'a mut usize,
    pub(super) terminated: &'a mut bool,
    pub(super) broken: &'a mut Option<Box<PgError>>,
    pub(super) progress: &'a mut Progress,
    pub(super) max_message: usize,
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
        }
    }

    /// Walks the frame headers of newly read client bytes. Messages whose content pgtenant
    /// may read or rewrite (Parse, Bind, Describe, Close, Execute, Query, Sync, Flush) must
    /// arrive whole; other bodies stream through. A malformed frame ends reading: what came
    /// before it is still sent and answered, then the session ends with 08P01.
    #[inline]
    pub(super) fn run(self) {
        let ClientScan { cbuf, c_scanned, c_remaining, terminated, broken, progress, max_message } = self;
        while !*terminated && broken.is_none() && *c_scanned < cbuf.len() {
            if *c_remaining > 0 {
                let n = (*c_remaining).min(cbuf.len() - *c_scanned);
                *c_scanned += n;
                *c_remaining -= n;
                continue;
            }
            let (tag, len) = match header(&cbuf[*c_scanned..], max_message) {
                Ok(Some(h)) => h,
                Ok(None) => break,
                Err(e) => {
                    *broken = Some(Box::new(PgError::invalid_client_message(&e)));
                    cbuf.truncate(*c_scanned);
                    break;
                }
            };
            let avail = cbuf.len() - *c_scanned;
            if must_arrive_whole(tag) && avail < len {
                // Grows with the bytes that arrive (read_buf reserves a chunk at a time).
                break;
            }
            match tag {
                fe::TERMINATE => {
                    // Terminate: never forwarded; the server connection outlives the client.
                    *terminated = true;
                    cbuf.truncate(*c_scanned);
                    break;
                }
                fe::SYNC => progress.extended_open = false,
                fe::PARSE | fe::BIND | fe::DESCRIBE | fe::CLOSE | fe::EXECUTE | fe::FLUSH => {
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

/// Frontend messages pgtenant reads (or may rewrite) and so buffers whole; all are small.
fn must_arrive_whole(tag: u8) -> bool {
    matches!(
        tag,
        fe::PARSE | fe::BIND | fe::DESCRIBE | fe::CLOSE | fe::EXECUTE | fe::QUERY | fe::SYNC | fe::FLUSH
    )
}
