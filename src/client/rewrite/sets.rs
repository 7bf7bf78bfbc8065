//! The session SETs a client's batch ran (transaction mode), followed by the client where
//! they stuck: completed outside a transaction block and not undone later in the batch.

use crate::client::setcmd::SetCmd;
use crate::client::vars::ClientVars;
use crate::pool::ServerConn;
use crate::protocol::backend::txn;

/// Session SETs seen in the current transaction (transaction mode).
#[derive(Default)]
pub(in crate::client) struct SetTracking {
    /// Recognised SET/RESET statements that completed.
    pub(in crate::client) pending: Vec<SetCmd>,
    /// How many of `pending` a COMMIT later in the same batch made permanent (an error or
    /// ROLLBACK after it no longer undoes them).
    pub(in crate::client) committed: u32,
    /// SET/RESET CommandCompletes seen (recognised or not).
    pub(in crate::client) seen: u32,
    /// SET text of the last unnamed Parse, and of the statement bound last with its portal.
    /// Boxed: rare, and every session would otherwise keep room for two.
    pub(in crate::client) unnamed: Option<Box<SetCmd>>,
    pub(in crate::client) bound: Option<Box<(Box<[u8]>, SetCmd)>>,
}

/// The most SETs one batch's tracking keeps (a client could pipeline millions before its
/// Sync): later ones are not followed (counted in `seen`, they leave the connection to be
/// reset before reuse, like a SET in a transaction block).
const MAX_PENDING: usize = 4096;

impl SetTracking {
    /// A recognised SET of the batch completed.
    pub(in crate::client) fn push(&mut self, cmd: SetCmd) {
        if self.pending.len() < MAX_PENDING {
            self.pending.push(cmd);
        }
    }

    /// A CommandComplete while SETs are pending: a COMMIT (or DISCARD ALL or PREPARE
    /// TRANSACTION, which commit too) keeps those before it whatever comes later in the
    /// batch; a ROLLBACK undoes those since the last commit point (see [`Self::undone`]).
    #[inline(never)]
    pub(in crate::client) fn completed(&mut self, tag: &[u8]) {
        match tag {
            b"COMMIT\0" | b"DISCARD ALL\0" | b"PREPARE TRANSACTION\0" => {
                self.committed = self.pending.len() as u32
            }
            b"ROLLBACK\0" => self.undone(),
            _ => {}
        }
    }

    /// The server rolled back the transaction the latest SETs ran in (an error, which in a
    /// batch outside a transaction block aborts its implicit transaction, or a ROLLBACK,
    /// also one outside a block): those since the last commit point did not stick and are
    /// not followed. `seen` still counts them, so the connection is reset before another
    /// client gets it: a ROLLBACK TO SAVEPOINT has the same tag and undoes less.
    #[inline(never)]
    pub(in crate::client) fn undone(&mut self) {
        self.pending.truncate(self.committed as usize);
    }

    /// At a ReadyForQuery: SETs that ended outside a transaction block follow the client;
    /// any other (inside a block, unrecognised, or refused for tracking) leaves the server
    /// connection to be reset before reuse.
    #[inline]
    pub(in crate::client) fn settle(
        &mut self,
        status: u8,
        vars: &mut ClientVars,
        conn: &mut ServerConn,
        tenant_vars: &[(String, String)],
    ) {
        // Nearly every transaction runs no SET: nothing to settle.
        if self.seen == 0 && self.pending.is_empty() {
            return;
        }
        self.settle_sets(status, vars, conn, tenant_vars);
    }

    #[inline(never)]
    fn settle_sets(
        &mut self,
        status: u8,
        vars: &mut ClientVars,
        conn: &mut ServerConn,
        tenant_vars: &[(String, String)],
    ) {
        let mut untracked = self.ended(status);
        for cmd in self.pending.drain(..) {
            untracked |= !vars.apply(&cmd, conn, tenant_vars);
        }
        if untracked {
            conn.mark_dirty();
        }
    }

    /// The batch ended with `status`: leaves in `pending` the SETs to follow, and says
    /// whether the connection holds SETs that are not followed.
    fn ended(&mut self, status: u8) -> bool {
        let untracked = self.seen as usize > self.pending.len() || status != txn::IDLE;
        if status != txn::IDLE {
            self.pending.clear();
        }
        self.seen = 0;
        self.committed = 0;
        untracked
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::client::setcmd;

    /// A statement of one extended batch (Parse/Bind/Execute each, one Sync at the end).
    #[derive(Clone, Copy, Debug)]
    enum Stmt {
        /// A SET pgtenant recognises.
        Set,
        /// A SET it does not (`seen` only).
        Unrecognised,
        Begin,
        Commit,
        Rollback,
        Savepoint,
        RollbackTo,
        Select,
        Error,
    }

    #[derive(Clone, Debug, PartialEq)]
    enum Entry {
        Set(SetCmd),
        Unrecognised,
        Mark,
    }

    /// What PostgreSQL keeps of the batch (its SETs committed, in order) and its status at
    /// the Sync, next to what the relay tells [`SetTracking`] about the same replies.
    fn run(batch: &[Stmt]) -> (Vec<Entry>, u8, SetTracking, bool) {
        let mut t = SetTracking::default();
        let (mut kept, mut open, mut block, mut failed) = (Vec::new(), Vec::new(), false, false);
        let mut rolled_to = false;
        for (i, stmt) in batch.iter().enumerate() {
            let tag: &[u8] = match stmt {
                Stmt::Set => {
                    let cmd = setcmd::parse(format!("SET work_mem = '{i}MB'").as_bytes()).expect("a SET");
                    open.push(Entry::Set(cmd.clone()));
                    t.push(cmd);
                    b"SET\0"
                }
                Stmt::Unrecognised => {
                    open.push(Entry::Unrecognised);
                    b"SET\0"
                }
                Stmt::Begin => {
                    block = true;
                    b"BEGIN\0"
                }
                Stmt::Commit => {
                    kept.append(&mut open);
                    block = false;
                    b"COMMIT\0"
                }
                Stmt::Rollback => {
                    open.clear();
                    block = false;
                    b"ROLLBACK\0"
                }
                Stmt::Savepoint if block => {
                    open.push(Entry::Mark);
                    b"SAVEPOINT\0"
                }
                Stmt::RollbackTo if block && open.contains(&Entry::Mark) => {
                    let mark = open.iter().rposition(|e| *e == Entry::Mark).expect("a mark");
                    open.truncate(mark + 1);
                    rolled_to = true;
                    b"ROLLBACK\0"
                }
                Stmt::Select => b"SELECT 1\0",
                // An error, or a savepoint statement outside a block or naming none.
                _ => {
                    failed = true;
                    if !block {
                        open.clear();
                    }
                    // As the relay: an ErrorResponse while SETs are pending.
                    if !t.pending.is_empty() {
                        t.undone();
                    }
                    break;
                }
            };
            // As the relay: the CommandComplete of each.
            if !t.pending.is_empty() {
                t.completed(tag);
            }
            if tag == b"SET\0" {
                t.seen += 1;
            }
        }
        let status = match (block, failed) {
            (false, _) => {
                kept.append(&mut open);
                txn::IDLE
            }
            (true, false) => b'T',
            (true, true) => b'E',
        };
        kept.retain(|e| *e != Entry::Mark);
        (kept, status, t, rolled_to)
    }

    fn stmt() -> impl Strategy<Value = Stmt> {
        prop_oneof![
            3 => Just(Stmt::Set),
            1 => Just(Stmt::Unrecognised),
            2 => Just(Stmt::Begin),
            2 => Just(Stmt::Commit),
            2 => Just(Stmt::Rollback),
            1 => Just(Stmt::Savepoint),
            1 => Just(Stmt::RollbackTo),
            1 => Just(Stmt::Select),
            1 => Just(Stmt::Error),
        ]
    }

    proptest! {
        /// Whatever the batch, the SETs followed are ones PostgreSQL kept, in its order; all of
        /// them unless a ROLLBACK TO SAVEPOINT ran; and the connection is reset before reuse
        /// whenever it holds a SET the client does not follow.
        #[test]
        fn only_sets_that_stuck_are_followed(batch in proptest::collection::vec(stmt(), 0..14)) {
            let (kept, status, mut t, rolled_to) = run(&batch);
            let untracked = t.ended(status);
            let followed: Vec<Entry> = t.pending.drain(..).map(Entry::Set).collect();
            if status != txn::IDLE {
                prop_assert!(followed.is_empty() && untracked);
            }
            let mut rest = kept.iter();
            prop_assert!(followed.iter().all(|f| rest.any(|k| k == f)), "{followed:?} not within {kept:?}");
            if !rolled_to && status == txn::IDLE {
                let recognised: Vec<Entry> = kept.iter().filter(|e| matches!(e, Entry::Set(_))).cloned().collect();
                prop_assert_eq!(&followed, &recognised);
            }
            prop_assert!(untracked || followed == kept, "kept {:?}, followed {:?}", kept, followed);
            prop_assert_eq!((t.seen, t.committed), (0, 0));
        }
    }

    #[test]
    fn an_error_after_a_commit_keeps_what_the_commit_made_permanent() {
        use Stmt::*;
        let (kept, status, mut t, _) = run(&[Set, Commit, Set, Error]);
        assert_eq!(status, txn::IDLE);
        assert!(t.ended(status), "the undone SET leaves the connection to be reset");
        assert_eq!(t.pending, [setcmd::parse(b"SET work_mem = '0MB'").expect("a SET")]);
        assert_eq!(kept, [Entry::Set(t.pending[0].clone())]);
    }

    #[test]
    fn a_batch_of_more_sets_than_kept_leaves_the_connection_to_be_reset() {
        let mut t = SetTracking::default();
        let cmd = setcmd::parse(b"SET work_mem = '9MB'").expect("a SET");
        for _ in 0..MAX_PENDING + 10 {
            t.push(cmd.clone());
            t.seen = t.seen.saturating_add(1);
        }
        assert_eq!(t.pending.len(), MAX_PENDING);
        assert!(t.ended(txn::IDLE), "not all followed: the connection is reset");
    }
}
