use super::*;

fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut f = vec![tag];
    f.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    f.extend_from_slice(body);
    f
}

#[test]
fn parse_is_renamed_by_content_and_search_path() {
    let p = frame(b'P', b"s1\0SELECT $1\0\0\x01\0\0\0\x17");
    let (n, a) = Statements::prepare(&p, "\"acme\"", None, Box::default(), Marks::default()).expect("named");
    assert_eq!(&*n, b"s1");
    let (_, b) = Statements::prepare(
        &frame(b'P', b"other\0SELECT $1\0\0\x01\0\0\0\x17"),
        "\"acme\"",
        None,
        Box::default(),
        Marks::default(),
    )
    .expect("named");
    assert_eq!(a.server_name, b.server_name, "same content, same server statement");
    let (_, c) =
        Statements::prepare(&p, "\"globex\"", None, Box::default(), Marks::default()).expect("named");
    assert_ne!(a.server_name, c.server_name, "another schema, another statement");
    assert_eq!(a.server_name.len(), 4 + 32, "128 keyed bits: {}", a.server_name);
    let (name, rest) = cstr(&a.parse[HEADER_LEN..]).expect("name");
    assert_eq!(name, a.server_name.as_bytes());
    assert_eq!(rest, b"SELECT $1\0\0\x01\0\0\0\x17");
    assert_eq!(
        i32::from_be_bytes([a.parse[1], a.parse[2], a.parse[3], a.parse[4]]) as usize + 1,
        a.parse.len()
    );
    assert!(
        Statements::prepare(&frame(b'P', b"\0SELECT 1\0\0\0"), "", None, Box::default(), Marks::default())
            .is_none(),
        "unnamed: not tracked"
    );
}

/// `s1` as `SELECT 1`, unmarked.
fn prepare_s1() -> (Box<[u8]>, Arc<Prepared>) {
    let p = frame(b'P', b"s1\0SELECT 1\0\0\0");
    Statements::prepare(&p, "", None, Box::default(), Marks::default()).expect("named")
}

#[test]
fn names_wait_only_across_a_sync() {
    let mut s = Statements::default();
    let (n, p) = prepare_s1();
    let parse = s.register(n, p);
    assert!(matches!(s.lookup(b"s1"), Lookup::Known(_)), "same Sync segment: decided together");
    s.sync();
    assert!(matches!(s.lookup(b"s1"), Lookup::Wait), "after a Sync: waits for the verdict");
    s.settle(&parse, false);
    assert!(matches!(s.lookup(b"s1"), Lookup::Unknown), "a skipped Parse leaves nothing");
    let (n, p) = prepare_s1();
    let parse = s.register(n, p);
    s.settle(&parse, true);
    let close = s.close(b"s1").expect("known");
    assert!(matches!(s.lookup(b"s1"), Lookup::Unknown));
    s.settle(&close, false);
    assert!(matches!(s.lookup(b"s1"), Lookup::Known(_)), "a skipped Close restores the statement");
    assert_eq!(keys().absent.len(), "pgt_absent_".len() + 32);
    assert_ne!(absent_statement(), probe_statement());
}

#[test]
fn refusals_are_recognised_as_pgtenant_own() {
    assert!(prepare_refusal().contains("ERRCODE = '0A000'"));
    assert!(feature_refusal("LISTEN").contains("ERRCODE = '0A000'"));
    let listen = PgError::session_feature_unsupported("LISTEN");
    assert_eq!(own_refusal("0A000", &listen.message), Some(listen));
    assert_eq!(
        own_refusal("0A000", &PgError::sql_prepare_unsupported().message),
        Some(PgError::sql_prepare_unsupported())
    );
    assert_eq!(own_refusal("42000", &PgError::sql_prepare_unsupported().message), None);
    assert_eq!(own_refusal("0A000", "cached plan must not change result type"), None);
}

/// A DEALLOCATE run by a simple query: names wait for its reply only, not for extended
/// messages queued behind it (the server holds theirs until a Sync or Flush), so no
/// Flush is needed. One run by Bind/Execute waits for everything, and needs the Flush.
#[test]
fn a_query_barrier_waits_for_its_own_reply_and_a_parse_barrier_for_all() {
    use crate::client::pipeline::{Action, Kind, Pipeline};
    let mut s = Statements::default();
    let mut p = Pipeline::default();
    p.push(Kind::Query, Action::Forward);
    s.raise_barrier(true);
    p.mark_barrier();
    p.push(Kind::Close, Action::Forward);
    p.settle_barrier(&mut s);
    assert!(s.barrier_pending() && matches!(s.lookup(b"s1"), Lookup::Wait));
    assert!(!s.wait_needs_flush());
    p.route(b'C', "");
    p.settle_barrier(&mut s);
    assert!(s.barrier_pending(), "lifted before the query's ReadyForQuery");
    p.route(b'Z', "");
    p.settle_barrier(&mut s);
    assert!(!s.barrier_pending() && !p.owes_nothing(), "the Close behind it is still owed");

    // A Bind of a statement that runs DEALLOCATE ALL: it runs at the Execute behind it.
    p.push(Kind::Parse, Action::Forward);
    p.push(Kind::Bind, Action::Forward);
    s.raise_barrier(false);
    p.settle_barrier(&mut s);
    assert!(!s.barrier_pending() && !s.wait_needs_flush(), "nothing dropped before an Execute");
    assert!(matches!(s.lookup(b"s1"), Lookup::Unknown));
    p.push(Kind::Execute, Action::Forward);
    s.execute();
    assert!(s.barrier_pending() && s.wait_needs_flush());
    // A simple query's barrier raised meanwhile does not weaken it.
    s.raise_barrier(true);
    assert!(s.wait_needs_flush());
    for tag in [b'3', b'1', b'2'] {
        p.route(tag, "");
        p.settle_barrier(&mut s);
        assert!(s.barrier_pending(), "lifted at {}", tag as char);
    }
    p.route(b'C', "");
    p.settle_barrier(&mut s);
    assert!(!s.barrier_pending() && p.owes_nothing());
}

/// The cursors of the statement bound last go with an Execute of its portal only: an
/// Execute of an earlier portal runs another statement, which declares none of them.
#[test]
fn bound_cursors_go_with_their_portal_only() {
    let mut s = Statements::default();
    let cursors: Cursors = vec![b"c".to_vec().into_boxed_slice()].into();
    s.bind_declares(b"p_first", Some(&Cursors::default()));
    s.bind_declares(b"p_second", Some(&cursors));
    assert!(s.take_bound_declares(b"p_first").is_empty(), "another portal's cursors");
    assert_eq!(s.take_bound_declares(b"p_second"), cursors);
    assert!(s.take_bound_declares(b"p_second").is_empty(), "once");
}

/// The same portal name made twice while the first is pending: a later one stands if the
/// earlier is skipped; one that fails after an earlier one completed leaves the portal.
#[test]
fn a_portal_made_again_while_pending_stands_if_the_first_is_skipped() {
    let mut s = Statements::default();
    let first = s.bind_portal(b"c", Bound::DeclareQuery).expect("first");
    s.sync();
    let second = s.bind_portal(b"c", Bound::DeclareQuery).expect("second, while the first is pending");
    assert_eq!(s.owns_portal(b"c"), Portal::Wait);
    s.settle(&first, false);
    assert_eq!(s.owns_portal(b"c"), Portal::Wait, "the second is still pending");
    s.settle(&second, true);
    assert_eq!(s.owns_portal(b"c"), Portal::Owned);
    // Completed, then one that fails (the server refuses the name): the portal stays.
    assert!(s.bind_portal(b"c", Bound::Bind).is_none(), "a settled name: nothing pending");
    let mut s = Statements::default();
    let first = s.bind_portal(b"p", Bound::Bind).expect("first");
    let second = s.bind_portal(b"p", Bound::Bind).expect("second");
    s.settle(&first, true);
    s.settle(&second, false);
    assert_eq!(s.owns_portal(b"p"), Portal::Owned);
    // Both skipped: gone. An Execute-made one keeps the wait that needs a Flush.
    let mut s = Statements::default();
    let first = s.bind_portal(b"q", Bound::DeclareExecute).expect("first");
    let second = s.bind_portal(b"q", Bound::DeclareQuery).expect("second");
    assert!(s.wait_needs_flush());
    s.settle(&first, false);
    s.settle(&second, false);
    assert_eq!(s.owns_portal(b"q"), Portal::Unknown);
}

#[test]
fn the_unnamed_portal_is_executed_only_behind_a_bind_of_it() {
    let mut s = Statements::default();
    // Before any simple Query nothing is followed (no effect per Bind).
    assert_eq!(s.executes_portal(b""), Portal::Owned);
    assert_eq!(s.bind_portal(b"", Bound::Bind), None);
    s.simple_query();
    assert_eq!(s.executes_portal(b""), Portal::Unknown, "none bound since the Query");
    let effect = s.bind_portal(b"", Bound::Bind).expect("an effect");
    assert_eq!(s.executes_portal(b""), Portal::Owned, "in the Bind's Sync batch");
    s.sync();
    assert_eq!(s.executes_portal(b""), Portal::Wait, "across a Sync, once answered");
    s.settle(&effect, true);
    assert_eq!(s.executes_portal(b""), Portal::Owned);
    s.simple_query();
    assert_eq!(s.executes_portal(b""), Portal::Unknown, "a simple Query drops it");
    // A Bind that failed or was skipped leaves none; an earlier Bind's verdict does not
    // stand for a later one.
    let first = s.bind_portal(b"", Bound::Bind).expect("an effect");
    s.sync();
    let second = s.bind_portal(b"", Bound::Bind).expect("an effect");
    s.sync();
    s.settle(&first, true);
    assert_eq!(s.executes_portal(b""), Portal::Wait);
    s.settle(&second, false);
    assert_eq!(s.executes_portal(b""), Portal::Unknown);
    s.forget_portals();
    assert_eq!(s.executes_portal(b""), Portal::Owned, "a new server connection: nothing to follow");
}

/// The client's unnamed Parse is kept to be parsed again only once it completed as the latest
/// one, and not after PostgreSQL would have dropped it (a simple Query, a Close of it) or while
/// a later one has no verdict (a failed Parse leaves none; a skipped one is not told apart).
#[test]
fn the_unnamed_statement_is_parsed_again_only_while_postgres_would_keep_it() {
    let mut s = Statements::default();
    let (p1, p2) = (frame(b'P', b"\0SELECT 1\0\0\0"), frame(b'P', b"\0SELECT 2\0\0\0"));
    assert_eq!(s.unnamed_again(), None, "none parsed");
    s.stage_unnamed_text(&p1);
    assert_eq!(s.unnamed_again(), None, "no verdict yet");
    s.unnamed_parsed(false);
    assert_eq!(s.unnamed_again(), Some(p1.as_slice()));
    // Parsed again from it (pgtenant's own Parse completes): still the same statement.
    s.unnamed_parsed(false);
    assert_eq!(s.unnamed_again(), Some(p1.as_slice()));
    // Two pipelined: the first's completion with the second on its way keeps nothing.
    s.stage_unnamed_text(&p1);
    assert!(!s.unnamed_overlapped(), "one on its way: its completion is the latest");
    s.stage_unnamed_text(&p2);
    assert!(s.unnamed_overlapped(), "two on their way: the reply model is asked");
    s.unnamed_parsed(true);
    assert_eq!(s.unnamed_again(), None, "the second has no verdict yet");
    s.unnamed_parsed(false);
    assert_eq!(s.unnamed_again(), Some(p2.as_slice()), "the latest");
    assert!(!s.unnamed_overlapped());
    // Parsed again, then a client Parse behind it: the first completion is pgtenant's, and
    // the client's failing leaves nothing to parse again.
    s.unnamed_again_staged();
    s.stage_unnamed_text(&p1);
    assert!(s.unnamed_overlapped());
    s.unnamed_parsed(true);
    assert_eq!(s.unnamed_again(), None, "the client's Parse has no verdict yet");
    s.unnamed_parsed(false);
    assert_eq!(s.unnamed_again(), Some(p1.as_slice()));
    assert!(!s.unnamed_overlapped());
    // A later Parse without a verdict (it failed: PostgreSQL keeps none).
    s.stage_unnamed_text(&p1);
    assert_eq!(s.unnamed_again(), None);
    // Dropped by a simple Query, even if a Parse before it completes afterwards.
    s.unnamed_parsed(false);
    s.stage_unnamed_text(&p2);
    s.simple_query();
    s.unnamed_parsed(false);
    assert_eq!(s.unnamed_again(), None, "a simple Query dropped it");
    s.stage_unnamed_text(&p1);
    s.unnamed_parsed(false);
    s.unnamed_dropped();
    assert_eq!(s.unnamed_again(), None, "a Close of it");
    // Too long to keep.
    let long = frame(b'P', &[b"\0SELECT '".as_slice(), &vec![b'x'; UNNAMED_KEPT], b"'\0\0\0"].concat());
    s.stage_unnamed_text(&long);
    s.unnamed_parsed(false);
    assert_eq!(s.unnamed_again(), None);
}
