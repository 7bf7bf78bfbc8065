//! Named prepared statements in transaction mode. A client's statement names are its own;
//! on the server, statements get pgtenant's names, keyed by content (query text, parameter
//! types and the search_path that decides what the names in it mean), so clients share them
//! and any server connection can be given a statement it lacks by re-sending the Parse.

use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Arc;

use bytes::Bytes;

use super::classify::Marks;
use super::setcmd::SetCmd;
use crate::hash::KeyedMap;
use crate::protocol::backend::cstr;
use crate::protocol::frame::HEADER_LEN;
use crate::protocol::frontend::{rename, tag};
use crate::protocol::{PgError, SqlState};
use crate::sql::quote_literal;

/// What a message did, to be undone if the server skipped it or it failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// pgtenant's statement `name` is being created on the server connection.
    ServerStatement(Arc<str>),
    /// The client's statement `name` was registered.
    ClientParse(Box<[u8]>),
    /// The client's statement was closed (restored if the Close was skipped).
    ClientClose(Box<[u8]>, Arc<Prepared>),
    /// The client's Bind or DECLARE of this portal name (forgotten if it failed or was
    /// skipped: the name may be another client's cursor on the server).
    ClientPortal(Box<[u8]>),
    /// The client's Parse of the unnamed statement whose SET or cursors were noted when it
    /// was staged: if it fails or is skipped, they are not the unnamed statement's (a skipped
    /// Parse leaves the one parsed before).
    UnnamedParse,
    /// The client's Bind of the unnamed portal, staged when it had sent this many Syncs.
    UnnamedPortal(u64),
}

/// The unnamed portal as the client's messages leave it. PostgreSQL 15 answers an Execute of
/// it that no Bind made since a simple Query with 34000, except in a state a DISCARD ALL and a
/// query of several statements failing in a transaction block leave, where the backend
/// crashes (signal 11) and the postmaster restarts every backend, every tenant's: such an
/// Execute is answered by pgtenant ([`Statements::executes_portal`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum UnnamedPortal {
    /// No simple Query since the client's server connection came (nor in its session, in
    /// session mode), which that state needs: nothing to follow, at no cost per Bind.
    #[default]
    Clean,
    /// A simple Query dropped it (and the client has bound none since).
    None,
    /// Bound when the client had sent this many Syncs, not answered yet.
    Bound(u64),
    Answered,
}

/// A statement a client prepared, as the server knows it.
#[derive(Debug, PartialEq, Eq)]
pub struct Prepared {
    pub server_name: Arc<str>,
    /// The client's Parse, renamed to `server_name`: re-sent to a connection that lacks it.
    pub parse: Bytes,
    /// The session SET the statement runs, if it is one.
    pub set: Option<SetCmd>,
    /// Cursors its text DECLAREs: the client's once an Execute of it completes.
    pub declares: Cursors,
    /// What an Execute of it may leave on the connection (a cursor, settings, temporary
    /// objects: see [`Marks`]), noted at each Bind: it runs on whichever connection its
    /// client has then.
    pub marks: Marks,
}

/// Cursor names a statement's text declares (usually none: no allocation).
pub type Cursors = Box<[Box<[u8]>]>;

/// The cursors of the client's unnamed statement and of the statement it bound last (boxed:
/// rare, and every session would otherwise keep room for them).
#[derive(Debug, Default)]
struct Declaring {
    unnamed: Cursors,
    /// What the unnamed statement may leave (see [`Prepared::marks`]).
    unnamed_marks: Marks,
    bound: Cursors,
    /// The portal `bound` was bound to: only an Execute of it declares them.
    bound_portal: Box<[u8]>,
}

/// The most named statements one client may hold (its map is bounded, like everything a
/// client can make pgtenant keep).
pub const MAX_CLIENT_STATEMENTS: usize = 200_000;
/// The most bytes of statement text one client may hold.
pub const MAX_CLIENT_STATEMENT_BYTES: usize = 32 << 20;
/// The most named portals one client is remembered to have bound.
const MAX_CLIENT_PORTALS: usize = 1_000;

/// Keys that make pgtenant's statement names unguessable: another client cannot compute the
/// server name of a statement from its text, nor name one pgtenant uses as a probe.
struct Keys {
    name: [std::collections::hash_map::RandomState; 2],
    /// A statement name nothing ever prepares: Describe of it fails with 26000.
    absent: Arc<str>,
    /// A portal name nothing ever binds: Describe of it fails with 34000.
    absent_portal: Arc<str>,
    /// A statement pgtenant prepares to learn whether a Parse would succeed here.
    probe: Arc<str>,
    /// A statement pgtenant prepares (and leaves) to raise 42P05 for a duplicate name.
    probe_duplicate: Arc<str>,
}

fn keys() -> &'static Keys {
    static KEYS: std::sync::OnceLock<Keys> = std::sync::OnceLock::new();
    KEYS.get_or_init(|| {
        let r = || format!("{:016x}{:016x}", rand::random::<u64>(), rand::random::<u64>());
        Keys {
            name: [Default::default(), Default::default()],
            absent: format!("pgt_absent_{}", r()).into(),
            absent_portal: format!("pgt_absent_{}", r()).into(),
            probe: format!("pgt_probe_{}", r()).into(),
            probe_duplicate: format!("pgt_probe_{}", r()).into(),
        }
    })
}

/// The statement name that never exists on a server.
pub fn absent_statement() -> &'static Arc<str> {
    &keys().absent
}

/// The portal name that never exists on a server.
pub fn absent_portal() -> &'static Arc<str> {
    &keys().absent_portal
}

/// The statement pgtenant prepares as a probe.
pub fn probe_statement() -> &'static Arc<str> {
    &keys().probe
}

/// The statement pgtenant prepares to raise a duplicate-name error.
pub fn probe_duplicate() -> &'static Arc<str> {
    &keys().probe_duplicate
}

/// What a client statement name stands for right now.
#[derive(Debug)]
pub enum Lookup {
    Known(Arc<Prepared>),
    Unknown,
    /// A change to the name (Parse or Close) awaits the server's verdict and a Sync lies
    /// between: whether the name exists depends on it, so the message waits.
    Wait,
}

/// Whether a portal name is the client's ([`Statements::owns_portal`]).
#[derive(Debug, PartialEq, Eq)]
pub enum Portal {
    Owned,
    Unknown,
    /// Its Bind or DECLARE has not answered and a Sync (or the DECLARE's query) lies between.
    Wait,
}

/// What names wait for after a message that may drop every prepared statement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Barrier {
    None,
    /// Simple queries (marked in the reply model): each is answered with its
    /// ReadyForQuery, which the server sends at once, so names wait for those replies only,
    /// not for extended messages queued behind them (whose replies the server holds until
    /// a Sync or Flush the client may never send).
    Queries,
    /// A Bind of a statement that may drop them, with no Execute staged behind it yet:
    /// nothing is dropped until one runs it, so names do not wait (waiting would need a Flush,
    /// and the client would get replies PostgreSQL holds until its Sync or Flush). An Execute
    /// staged meanwhile (of any portal) raises [`Barrier::All`]. Lifted once the server owes
    /// nothing and no extended-protocol batch is open.
    Bound,
    /// An Execute that may run such a statement: names wait until the server owes nothing.
    All,
}

#[derive(Debug)]
struct Slot {
    current: Option<Arc<Prepared>>,
    /// Changes still in the reply queue.
    pending: u32,
    /// The Sync count when the last change was queued.
    epoch: u64,
}

/// How a portal came about ([`Statements::bind_portal`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bound {
    Bind,
    /// A DECLARE run by a simple query, answered with its ReadyForQuery.
    DeclareQuery,
    /// A DECLARE run by an Execute, whose reply the server may hold until a Sync or Flush.
    DeclareExecute,
}

/// A named portal of the client's: settled (`pending` None) or made by a message not yet
/// answered (how, and for a Bind the Sync count then), and how many more Binds or DECLAREs
/// of the same name are still pending behind the first (a later one stands if an earlier one
/// is skipped).
#[derive(Debug, Clone, Copy)]
struct PortalState {
    pending: Option<(Bound, u64)>,
    again: u32,
}

/// Of two pending makings of one portal name, the one whose verdict a message waits for
/// longer: a DECLARE run by Execute (it needs pgtenant's Flush), then one run by a query
/// (decided at its ReadyForQuery), then the later Bind.
fn longer_wait(a: (Bound, u64), b: (Bound, u64)) -> (Bound, u64) {
    let rank = |p: &(Bound, u64)| match p.0 {
        Bound::DeclareExecute => 2,
        Bound::DeclareQuery => 1,
        Bound::Bind => 0,
    };
    if (rank(&a), a.1) >= (rank(&b), b.1) {
        a
    } else {
        b
    }
}

/// The longest unnamed Parse kept to be parsed again (a longer one is not: a Bind of it in a
/// later round trip on another connection gets 26000, as before).
const UNNAMED_KEPT: usize = 16 * 1024;

/// The client's unnamed Parse messages: PostgreSQL keeps the unnamed statement across Syncs
/// until the next unnamed Parse, a simple Query or a Close of it, and a client may bind it in a
/// later round trip, which in transaction mode may run on a connection where it is not (see
/// `Stage::unnamed_owned`): that connection parses the kept message again first.
#[derive(Debug, Default)]
struct UnnamedText {
    /// The latest unnamed Parse staged.
    staged: Vec<u8>,
    /// The message of the client's unnamed statement, for completed Parse number `kept_for`
    /// (0: none usable).
    kept: Vec<u8>,
    kept_for: u32,
    /// An unnamed Parse staged since has no verdict yet: until it completes, what the client's
    /// unnamed statement is stays unknown (a failed Parse leaves none on PostgreSQL).
    pending: bool,
    /// One was staged while another had no verdict: a completion is the latest one's only
    /// when no other is on its way (the reply model says; not asked otherwise).
    overlapped: bool,
}

/// One client's named statements and portals.
#[derive(Debug)]
pub struct Statements {
    by_name: KeyedMap<Box<[u8]>, Slot>,
    /// Syncs staged so far: changes queued before the last one are decided separately from
    /// messages after it.
    syncs: u64,
    /// Named portals (see [`PortalState`]): a DECLARE's outcome the next messages must wait
    /// for whatever comes between; a Bind's only across a Sync.
    portals: KeyedMap<Box<[u8]>, PortalState>,
    /// A DEALLOCATE or DISCARD is on its way: whether the client's names survive it is known
    /// at its completion, so names wait for it (see [`Barrier`]).
    barrier: Barrier,
    /// The client sent a Parse of the unnamed statement since its last Sync: a Bind of it in
    /// the same Sync batch goes with that Parse (the server skips or fails both together).
    unnamed_staged: bool,
    /// The client's unnamed Parses that completed (wrapping): the latest one is the client's
    /// unnamed statement, usable where the server connection says it holds that one.
    unnamed_parsed: u32,
    /// Bytes of the Parse messages held.
    bytes: usize,
    /// The client's unnamed statement as it parsed it, to parse it again on a server
    /// connection that does not hold it (transaction mode; only once it parsed one).
    unnamed_text: Option<Box<UnnamedText>>,
    unnamed_portal: UnnamedPortal,
    /// Cursors the unnamed and the last bound statement declare, if any does.
    declaring: Option<Box<Declaring>>,
}

impl Default for Statements {
    fn default() -> Self {
        Statements {
            by_name: crate::hash::map(),
            syncs: 0,
            portals: crate::hash::map(),
            barrier: Barrier::None,
            unnamed_staged: false,
            unnamed_parsed: 0,
            bytes: 0,
            unnamed_text: None,
            declaring: None,
            unnamed_portal: UnnamedPortal::Clean,
        }
    }
}

impl Statements {
    /// The server-side form of a client Parse (`frame` is the whole message, name
    /// non-empty); `search_path` is part of the statement's identity, `set` is the session SET
    /// its text runs (see [`super::classify::Class::set`]).
    pub fn prepare(
        frame: &[u8],
        search_path: &str,
        set: Option<SetCmd>,
        declares: Cursors,
        marks: Marks,
    ) -> Option<(Box<[u8]>, Arc<Prepared>)> {
        let (name, rest) = cstr(frame.get(HEADER_LEN..)?)?;
        if name.is_empty() {
            return None;
        }
        let k = &keys().name;
        let hash = |state: &std::collections::hash_map::RandomState| {
            let mut h = state.build_hasher();
            rest.hash(&mut h);
            search_path.hash(&mut h);
            h.finish()
        };
        let server_name: Arc<str> = Arc::from(format!("pgt_{:016x}{:016x}", hash(&k[0]), hash(&k[1])));
        let parse = rename(tag::PARSE, &[], server_name.as_bytes(), rest);
        Some((name.into(), Arc::new(Prepared { server_name, parse, set, declares, marks })))
    }

    pub fn lookup(&self, name: &[u8]) -> Lookup {
        if self.barrier_pending() {
            return Lookup::Wait;
        }
        match self.by_name.get(name) {
            None => Lookup::Unknown,
            Some(slot) if slot.pending > 0 && slot.epoch != self.syncs => Lookup::Wait,
            Some(Slot { current: Some(p), .. }) => Lookup::Known(p.clone()),
            Some(_) => Lookup::Unknown,
        }
    }

    /// Whether another statement may be registered.
    pub fn full(&self) -> bool {
        self.by_name.len() >= MAX_CLIENT_STATEMENTS || self.bytes >= MAX_CLIENT_STATEMENT_BYTES
    }

    /// Registers a statement about to be prepared; the effect settles it.
    pub fn register(&mut self, name: Box<[u8]>, prepared: Arc<Prepared>) -> Effect {
        let slot = self.by_name.entry(name.clone()).or_insert(Slot { current: None, pending: 0, epoch: 0 });
        self.bytes += prepared.parse.len();
        if let Some(old) = slot.current.replace(prepared) {
            self.bytes -= old.parse.len();
        }
        slot.pending += 1;
        slot.epoch = self.syncs;
        Effect::ClientParse(name)
    }

    /// Closes a statement the client has; the effect settles it.
    pub fn close(&mut self, name: &[u8]) -> Option<Effect> {
        let syncs = self.syncs;
        let slot = self.by_name.get_mut(name)?;
        let prev = slot.current.take()?;
        self.bytes -= prev.parse.len();
        slot.pending += 1;
        slot.epoch = syncs;
        Some(Effect::ClientClose(name.into(), prev))
    }

    /// The server completed (`ok`) or skipped the message that had `effect`.
    pub fn settle(&mut self, effect: &Effect, ok: bool) {
        let (name, restore) = match effect {
            Effect::ClientParse(name) => (name, None),
            Effect::ClientClose(name, prev) => (name, Some(prev.clone())),
            // The server connection's (see `client::rewrite::apply_effects`).
            Effect::ServerStatement(_) => return,
            Effect::UnnamedParse => {
                if !ok {
                    self.unnamed_unknown();
                }
                return;
            }
            Effect::UnnamedPortal(epoch) => {
                if self.unnamed_portal == UnnamedPortal::Bound(*epoch) {
                    self.unnamed_portal = if ok { UnnamedPortal::Answered } else { UnnamedPortal::None };
                }
                return;
            }
            Effect::ClientPortal(name) => {
                let Some(state) = self.portals.get_mut(name) else { return };
                if ok {
                    state.pending = None;
                } else if state.pending.is_some() && state.again == 0 {
                    // Skipped or failed, and no later one of the name is pending (one that
                    // completed before stays: the portal exists).
                    self.portals.remove(name);
                    return;
                }
                state.again = state.again.saturating_sub(1);
                return;
            }
        };
        let Some(slot) = self.by_name.get_mut(name) else { return };
        slot.pending = slot.pending.saturating_sub(1);
        if !ok {
            if let Some(p) = &restore {
                self.bytes += p.parse.len();
            }
            if let Some(old) = std::mem::replace(&mut slot.current, restore) {
                self.bytes -= old.parse.len();
            }
        }
        if slot.pending == 0 && slot.current.is_none() {
            self.by_name.remove(name);
        }
    }

    /// A statement that may drop every prepared statement (DEALLOCATE, DISCARD) was staged,
    /// by a simple query (`query`, marked in the reply model) or by a Bind of a statement
    /// whose text does (it runs at an Execute behind the Bind: [`Barrier::Bound`] until one
    /// is staged, see [`Statements::execute`]). A barrier is never weakened: any two but two
    /// of the same make [`Barrier::All`].
    pub fn raise_barrier(&mut self, query: bool) {
        let raised = if query { Barrier::Queries } else { Barrier::Bound };
        self.barrier = match self.barrier {
            Barrier::None => raised,
            now if now == raised => raised,
            _ => Barrier::All,
        };
    }

    /// An Execute was staged: one behind a Bind of a statement that may drop every prepared
    /// statement may run it.
    #[inline]
    pub fn execute(&mut self) {
        if self.barrier == Barrier::Bound {
            self.barrier = Barrier::All;
        }
    }

    /// Names wait ([`Barrier::Bound`] makes none wait).
    pub fn barrier_pending(&self) -> bool {
        matches!(self.barrier, Barrier::Queries | Barrier::All)
    }

    /// What names wait for (see [`crate::client::pipeline::Pipeline::settle_barrier`]).
    pub fn barrier(&self) -> Barrier {
        self.barrier
    }

    /// What the barrier waited for is answered: what came before is settled.
    pub fn lift_barrier(&mut self) {
        self.barrier = Barrier::None;
    }

    /// A message waits (see [`Lookup::Wait`], [`Portal::Wait`]) for a reply the server may
    /// hold until a Sync or Flush: a statement-dropping Execute's, or a DECLARE's run by an
    /// Execute. Other waits are for replies a Sync or simple query already staged behind
    /// them makes the server send. The relay then sends a Flush (the client's own replies
    /// come earlier than without pgtenant, never ones it did not ask for).
    pub fn wait_needs_flush(&self) -> bool {
        self.barrier == Barrier::All
            || self.portals.values().any(|p| matches!(p.pending, Some((Bound::DeclareExecute, _))))
    }

    /// The Syncs staged so far.
    pub fn syncs(&self) -> u64 {
        self.syncs
    }

    /// A simple Query was staged: the server drops the unnamed portal, and the unnamed
    /// statement.
    #[inline]
    pub fn simple_query(&mut self) {
        self.unnamed_portal = UnnamedPortal::None;
        self.unnamed_dropped();
    }

    /// The client's unnamed statement is gone (a simple Query, a Close of it): nothing is
    /// parsed again for it.
    pub fn unnamed_dropped(&mut self) {
        if let Some(t) = self.unnamed_text.as_deref_mut() {
            (t.kept_for, t.pending, t.overlapped) = (0, false, false);
        }
    }

    /// The client's unnamed Parse `frame` was staged (transaction mode).
    #[inline]
    pub fn stage_unnamed_text(&mut self, frame: &[u8]) {
        let t = self.unnamed_text.get_or_insert_with(Default::default);
        t.overlapped |= t.pending;
        t.staged.clear();
        if frame.len() <= UNNAMED_KEPT {
            t.staged.extend_from_slice(frame);
        }
        t.pending = true;
    }

    /// pgtenant's Parse again of the kept message was staged: a client Parse staged behind it
    /// before it completes is overlapped (its completion is not that Parse's).
    pub fn unnamed_again_staged(&mut self) {
        if let Some(t) = self.unnamed_text.as_deref_mut() {
            t.overlapped = true;
        }
    }

    /// The message to parse the client's unnamed statement again with, on a connection that
    /// does not hold it: its latest unnamed Parse if that completed and nothing dropped it
    /// since.
    pub fn unnamed_again(&self) -> Option<&[u8]> {
        let t = self.unnamed_text.as_deref()?;
        (!t.pending && t.kept_for != 0 && t.kept_for == self.unnamed_parsed && !t.kept.is_empty())
            .then_some(t.kept.as_slice())
    }

    /// A Sync was staged.
    pub fn sync(&mut self) {
        self.syncs += 1;
        self.unnamed_staged = false;
    }

    /// A Parse of the unnamed statement was staged.
    pub fn stage_unnamed(&mut self) {
        self.unnamed_staged = true;
    }

    /// The cursors the client's latest unnamed Parse declares, and what it may leave (see
    /// [`Prepared::marks`]).
    pub fn unnamed_declares(&mut self, cursors: Cursors, marks: Marks) {
        if !cursors.is_empty() || marks != Marks::default() || self.declaring.is_some() {
            let d = self.declaring.get_or_insert_with(Default::default);
            d.unnamed = cursors;
            d.unnamed_marks = marks;
        }
    }

    /// A Parse of the unnamed statement failed or was skipped: what the server's unnamed
    /// statement declares or leaves is not known (none of its cursors are the client's, and
    /// an Execute of it may declare some, change settings or leave state).
    fn unnamed_unknown(&mut self) {
        let d = self.declaring.get_or_insert_with(Default::default);
        d.unnamed = Cursors::default();
        d.unnamed_marks = Marks { cursors: true, settings: true, state: true, drops: false };
    }

    /// A Bind to `portal` of the unnamed statement (`None`) or of a named one: an Execute of
    /// that portal declares its cursors. For the unnamed statement, what it may leave.
    pub fn bind_declares(&mut self, portal: &[u8], named: Option<&Cursors>) -> Marks {
        if self.declaring.is_none() && named.is_none_or(|c| c.is_empty()) {
            return Marks::default();
        }
        let d = self.declaring.get_or_insert_with(Default::default);
        d.bound = match named {
            Some(c) => c.clone(),
            None => d.unnamed.clone(),
        };
        d.bound_portal = portal.into();
        if named.is_none() {
            d.unnamed_marks
        } else {
            Marks::default()
        }
    }

    /// A Bind that makes no portal from the client's statement (refused or failed here).
    pub fn bind_nothing(&mut self) {
        if let Some(d) = self.declaring.as_mut() {
            d.bound = Box::default();
        }
    }

    /// An Execute of `portal`: the cursors its statement declares if it is the portal bound
    /// last (once; a portal runs once), none otherwise.
    pub fn take_bound_declares(&mut self, portal: &[u8]) -> Cursors {
        match self.declaring.as_mut() {
            Some(d) if *d.bound_portal == *portal => std::mem::take(&mut d.bound),
            _ => Cursors::default(),
        }
    }

    /// Whether a Parse of the unnamed statement was staged since the last Sync.
    pub fn unnamed_staged(&self) -> bool {
        self.unnamed_staged
    }

    /// Whether an unnamed Parse completing may not be the latest staged (see
    /// [`Statements::unnamed_parsed`]'s `more`).
    #[inline]
    pub fn unnamed_overlapped(&self) -> bool {
        self.unnamed_text.as_deref().is_some_and(|t| t.overlapped)
    }

    /// A Parse of the unnamed statement completed (`more`: another is still on its way):
    /// returns its number, which the server connection records as its owner's.
    pub fn unnamed_parsed(&mut self, more: bool) -> u32 {
        self.unnamed_parsed = self.unnamed_parsed.wrapping_add(1).max(1);
        if let Some(t) = self.unnamed_text.as_deref_mut() {
            if t.pending && !more {
                // The latest staged one: its message is the statement's.
                std::mem::swap(&mut t.kept, &mut t.staged);
                (t.kept_for, t.pending, t.overlapped) = (self.unnamed_parsed, false, false);
            } else if !t.pending && t.kept_for != 0 {
                // Parsed again from the kept message.
                t.kept_for = self.unnamed_parsed;
            }
            if !more && !t.pending {
                t.overlapped = false;
            }
        }
        self.unnamed_parsed
    }

    /// The number of the client's latest completed unnamed Parse (0: none).
    pub fn unnamed_latest(&self) -> u32 {
        self.unnamed_parsed
    }

    /// DEALLOCATE ALL / DISCARD ALL completed: the client has no statements left, and after
    /// DISCARD ALL (`portals`) no portals either (DEALLOCATE ALL leaves them: a portal keeps
    /// its statement's plan, as on PostgreSQL).
    pub fn clear(&mut self, portals: bool) {
        self.bytes = 0;
        self.by_name.clear();
        if portals {
            self.portals.clear();
        }
    }

    /// A Bind or DECLARE (`by`) of a named portal that goes to the server: the
    /// name is the client's from now, and the effect (when it was not already) forgets it
    /// should the server fail or skip the message. Until then the name is pending (see
    /// [`Statements::owns_portal`]).
    pub fn bind_portal(&mut self, portal: &[u8], by: Bound) -> Option<Effect> {
        if portal.is_empty() {
            if by != Bound::Bind {
                return None;
            }
            if self.unnamed_portal == UnnamedPortal::Clean {
                return None;
            }
            self.unnamed_portal = UnnamedPortal::Bound(self.syncs);
            return Some(Effect::UnnamedPortal(self.syncs));
        }
        let pending = (by, self.syncs);
        if let Some(state) = self.portals.get_mut(portal) {
            // Settled: the server refuses the name again (42P03), nothing changes. Pending:
            // this one stands should the earlier one be skipped; a message waits for the
            // longer of the two.
            let earlier = state.pending?;
            state.again = state.again.saturating_add(1);
            state.pending = Some(longer_wait(earlier, pending));
            return Some(Effect::ClientPortal(portal.into()));
        }
        if self.portals.len() >= MAX_CLIENT_PORTALS {
            return None;
        }
        let name: Box<[u8]> = portal.into();
        self.portals.insert(name.clone(), PortalState { pending: Some(pending), again: 0 });
        Some(Effect::ClientPortal(name))
    }

    /// The client's transaction ended and its server connection went back: no portal of its
    /// survives there (a Bind's portal ends with its transaction; WITH HOLD cursors pin the
    /// client), and the name may be another client's cursor on the next connection.
    pub fn forget_portals(&mut self) {
        self.unnamed_portal = UnnamedPortal::Clean;
        if !self.portals.is_empty() {
            self.portals.clear();
        }
    }

    /// Whether the client may use this portal name: the unnamed portal, one whose Bind or
    /// DECLARE completed, or one bound since the client's last Sync (the server skips a
    /// message behind a Bind that failed). A portal whose Bind (before a Sync) or DECLARE has
    /// not answered yet: `Wait` (had it failed, the name could be another client's cursor).
    pub fn owns_portal(&self, portal: &[u8]) -> Portal {
        if portal.is_empty() {
            // No unnamed portal outlives its transaction: any is the client's. An Execute of
            // it is guarded apart ([`Statements::executes_portal`]).
            return Portal::Owned;
        }
        match self.portals.get(portal).map(|p| p.pending) {
            None => Portal::Unknown,
            Some(None) => Portal::Owned,
            Some(Some((Bound::Bind, epoch))) if epoch == self.syncs => Portal::Owned,
            Some(Some(_)) => Portal::Wait,
        }
    }

    /// Whether the client may execute this portal: as [`Statements::owns_portal`], and the
    /// unnamed portal only behind a Bind of it that completed, or in its Sync batch; else
    /// pgtenant answers 34000 (see `UnnamedPortal`). A Describe or Close of the unnamed
    /// portal needs no such guard (PostgreSQL 15 answers both, also in the state where an
    /// Execute crashes the backend).
    pub fn executes_portal(&self, portal: &[u8]) -> Portal {
        if !portal.is_empty() {
            return self.owns_portal(portal);
        }
        match self.unnamed_portal {
            UnnamedPortal::Clean | UnnamedPortal::Answered => Portal::Owned,
            UnnamedPortal::Bound(epoch) if epoch == self.syncs => Portal::Owned,
            UnnamedPortal::Bound(_) => Portal::Wait,
            UnnamedPortal::None => Portal::Unknown,
        }
    }
}

/// SQL that fails with 0A000 saying SQL-level prepared statements are not supported.
pub fn prepare_refusal() -> String {
    raise_query(&PgError::sql_prepare_unsupported())
}

/// A query that raises `e` where the server would run the refused statement, so the error
/// comes in its place in the reply stream (and a Parse of it fails at Execute, as the
/// statement would).
fn raise_query(e: &PgError) -> String {
    format!(
        "DO $pgtenant$ BEGIN RAISE EXCEPTION USING ERRCODE = {}, MESSAGE = {}, HINT = {}; END $pgtenant$",
        quote_literal(e.state.code()),
        quote_literal(&e.message),
        quote_literal(e.hint.as_deref().unwrap_or_default()),
    )
}

/// The refusal a server raised for pgtenant ([`raise_query`]), recognised by its SQLSTATE and
/// text: forwarded as pgtenant's own ErrorResponse, without the PL/pgSQL CONTEXT line that
/// the DO block adds. Called for ErrorResponses only (not on the per-message path).
pub fn own_refusal(code: &str, message: &str) -> Option<PgError> {
    if code != SqlState::FeatureNotSupported.code() {
        return None;
    }
    let prepare = PgError::sql_prepare_unsupported();
    if message == prepare.message {
        return Some(prepare);
    }
    let feature = message.strip_suffix(FEATURE_REFUSED)?;
    Some(PgError::session_feature_unsupported(feature)).filter(|e| e.message == message)
}

/// How [`PgError::session_feature_unsupported`]'s text ends.
const FEATURE_REFUSED: &str = " does not work in transaction pooling mode";

/// SQL that fails with 0A000 saying `feature` needs session pooling.
pub fn feature_refusal(feature: &str) -> String {
    raise_query(&PgError::session_feature_unsupported(feature))
}

#[cfg(test)]
mod tests;
