use super::*;

use proptest::prelude::*;

fn fwd(p: &mut Pipeline, kinds: &[Kind]) {
    for k in kinds {
        p.push(*k, Action::Forward);
    }
}

fn route(p: &mut Pipeline, tags: &[u8]) {
    for &t in tags {
        let code = if t == b'E' { "42P01" } else { "" };
        let r = p.route(t, code);
        assert!(!r.unexpected, "unexpected {:?}", t as char);
        assert!(r.forward, "swallowed {:?}", t as char);
    }
}

#[test]
fn extended_round_trip() {
    let mut p = Pipeline::default();
    fwd(&mut p, &[Kind::Parse, Kind::Bind, Kind::DescribePortal, Kind::Execute, Kind::Sync]);
    route(&mut p, b"12TDDC");
    assert!(!p.is_idle());
    assert_eq!(p.pending_ready(), 1);
    route(&mut p, b"Z");
    assert!(p.is_idle());
}

/// `unit_pending`: only while replies are owed to a message that ends a unit (where a client
/// that pipelines may be held back), never inside an extended batch or a copy the client has
/// not ended.
#[test]
fn a_unit_is_pending_only_behind_a_query_function_call_or_sync() {
    let mut p = Pipeline::default();
    assert!(!p.unit_pending(), "nothing owed");
    fwd(&mut p, &[Kind::Parse, Kind::Bind]);
    assert!(!p.unit_pending(), "an extended batch without its Sync");
    fwd(&mut p, &[Kind::Execute, Kind::Flush]);
    assert!(!p.unit_pending(), "a flushed batch is still open");
    fwd(&mut p, &[Kind::Sync]);
    assert!(p.unit_pending());
    route(&mut p, b"12C");
    assert!(p.unit_pending(), "the Sync's ReadyForQuery is still owed");
    route(&mut p, b"Z");
    assert!(!p.unit_pending() && p.is_idle());
    fwd(&mut p, &[Kind::FunctionCall]);
    assert!(p.unit_pending());
    route(&mut p, b"VZ");
    fwd(&mut p, &[Kind::Query]);
    assert!(p.unit_pending());
    route(&mut p, b"G");
    assert!(!p.unit_pending(), "COPY FROM STDIN under way");
    fwd(&mut p, &[Kind::CopyData]);
    assert!(!p.unit_pending(), "the copy waits for more data");
    fwd(&mut p, &[Kind::CopyDone]);
    assert!(p.unit_pending(), "a Query's copy the client ended: answered without another message");
    route(&mut p, b"CZ");
    assert!(!p.unit_pending() && p.is_idle());
    // A Flush, or copy messages outside a copy (ignored by the server), behind a unit's end.
    fwd(&mut p, &[Kind::Query, Kind::CopyDone, Kind::Flush, Kind::CopyData]);
    assert!(p.unit_pending(), "stray messages behind a Query");
    fwd(&mut p, &[Kind::Parse, Kind::Flush]);
    assert!(!p.unit_pending(), "an extended batch opened behind it");
    // An Execute's copy, ended: its CommandComplete comes only at the Sync that follows.
    let mut p = Pipeline::default();
    fwd(&mut p, &[Kind::Parse, Kind::Bind, Kind::Execute]);
    route(&mut p, b"12G");
    fwd(&mut p, &[Kind::CopyData, Kind::CopyDone]);
    assert!(!p.unit_pending(), "an Execute's copy waits for its Sync");
}

#[test]
fn the_unnamed_parse_is_reported_when_it_completes_not_when_skipped() {
    let mut p = Pipeline::default();
    p.push_unnamed_parse(false, Vec::new());
    p.push(Kind::Sync, Action::Forward);
    assert!(p.unnamed_pending());
    let r = p.route(b'1', "");
    assert!(r.forward && r.unnamed_parsed, "the client's unnamed statement is on the server");
    assert!(!p.unnamed_pending());
    assert!(!p.route(b'Z', "").unnamed_parsed);
    // Skipped after an error: never reported, and no longer pending.
    p.push(Kind::Parse, Action::Forward);
    p.push_unnamed_parse(false, Vec::new());
    p.push(Kind::Sync, Action::Forward);
    assert!(!p.route(b'E', "42P01").unnamed_parsed);
    assert!(!p.unnamed_pending(), "skipped");
    assert!(!p.route(b'Z', "").unnamed_parsed);
    assert!(p.is_idle());
    // Its effect is undone when it is skipped (also when pushed while the server skips),
    // done when it completes.
    for pushed_while_skipping in [false, true] {
        p.push(Kind::Parse, Action::Forward);
        if pushed_while_skipping {
            assert!(!p.route(b'E', "42P01").unnamed_parsed);
        }
        p.push_unnamed_parse(false, vec![Effect::UnnamedParse]);
        p.push(Kind::Sync, Action::Forward);
        if !pushed_while_skipping {
            p.route(b'E', "42P01");
        }
        assert_eq!(p.take_effects(), (vec![Effect::UnnamedParse], vec![]));
        p.route(b'Z', "");
    }
    p.push_unnamed_parse(false, vec![Effect::UnnamedParse]);
    p.push(Kind::Sync, Action::Forward);
    assert!(p.route(b'1', "").unnamed_parsed);
    assert_eq!(p.take_effects(), (vec![], vec![Effect::UnnamedParse]));
}

#[test]
fn injected_replies_are_swallowed() {
    let mut p = Pipeline::default();
    p.push(Kind::Execute, Action::Forward);
    p.push(Kind::Parse, Action::Swallow);
    p.push(Kind::Bind, Action::Forward);
    p.push(Kind::Sync, Action::Forward);
    assert!(p.route(b'C', "").forward);
    assert!(!p.route(b'1', "").forward, "injected Parse's reply swallowed");
    assert!(p.route(b'2', "").forward);
    assert!(p.route(b'Z', "").forward);
    assert!(p.is_idle());
}

#[test]
fn an_error_skips_to_sync() {
    let mut p = Pipeline::default();
    p.push(Kind::Parse, Action::Swallow);
    p.push(Kind::Bind, Action::Forward);
    let undo = vec![Effect::ClientParse(b"s1".to_vec().into())];
    p.push_effect(Kind::Close, Action::Forward, undo.clone());
    p.push(Kind::Execute, Action::Forward);
    p.push(Kind::Sync, Action::Forward);
    let r = p.route(b'E', "42601");
    assert!(r.forward, "the injected Parse's error goes to the client");
    assert_eq!(p.take_effects(), (undo, Vec::new()), "effects of skipped messages are undone");
    assert_eq!(p.pending_ready(), 1);
    route(&mut p, b"Z");
    assert!(p.is_idle());
    // Simple query errors do not skip.
    p.push(Kind::Query, Action::Forward);
    route(&mut p, b"EZ");
    assert!(p.is_idle());
}

/// Issue 16: the error arrives before the client sent the rest of its pipeline; what it
/// sends next (up to its Sync) is skipped by the server and must not be waited for.
#[test]
fn messages_sent_after_an_error_arrived_are_skipped_too() {
    let mut p = Pipeline::default();
    fwd(&mut p, &[Kind::Parse, Kind::Bind, Kind::Execute]);
    route(&mut p, b"E");
    let undo = vec![Effect::ClientParse(b"s1".to_vec().into())];
    p.push_effect(Kind::Parse, Action::Forward, undo.clone());
    fwd(&mut p, &[Kind::Bind, Kind::Execute]);
    let (skipped, _) = p.take_effects();
    assert_eq!(skipped, undo, "the skipped Parse is not recorded as prepared");
    assert!(p.queue.is_empty(), "the server skips them: no reply is owed for any");
    assert!(p.owes_nothing());
    assert_eq!(p.pending_ready(), 0);
    assert!(!p.is_idle(), "the failed pipeline is open until its Sync: not releasable");
    assert_eq!(p.take_effects(), (Vec::new(), Vec::new()), "every effect was handed out once");
    fwd(&mut p, &[Kind::Sync]);
    route(&mut p, b"Z");
    assert!(p.is_idle());
    // The next statement is answered normally.
    fwd(&mut p, &[Kind::Parse, Kind::Bind, Kind::Execute, Kind::Sync]);
    route(&mut p, b"12DCZ");
    assert!(p.is_idle());
}

#[test]
fn copy_from_stdin_by_query_and_by_execute() {
    let mut p = Pipeline::default();
    p.push(Kind::Query, Action::Forward);
    route(&mut p, b"G");
    assert!(p.copy_in());
    fwd(&mut p, &[Kind::CopyData, Kind::CopyData, Kind::CopyDone]);
    route(&mut p, b"CZ");
    assert!(p.is_idle());

    // libpq: Parse/Bind/Execute/Sync, then data, CopyDone, Sync.
    fwd(&mut p, &[Kind::Parse, Kind::Bind, Kind::Execute, Kind::Sync]);
    route(&mut p, b"12G");
    fwd(&mut p, &[Kind::CopyData, Kind::CopyDone]);
    route(&mut p, b"C");
    assert!(!p.is_idle(), "the server waits for a Sync after an Execute-started COPY");
    fwd(&mut p, &[Kind::Sync]);
    route(&mut p, b"Z");
    assert!(p.is_idle());

    // CopyDone sent before the CopyInResponse arrived.
    fwd(&mut p, &[Kind::Query, Kind::CopyData, Kind::CopyDone]);
    route(&mut p, b"GCZ");
    assert!(p.is_idle());

    // COPY TO STDOUT.
    fwd(&mut p, &[Kind::Query]);
    route(&mut p, b"HddcCZ");
    assert!(p.is_idle());
}

/// Issue 10: Execute of a COPY followed by two Syncs before CopyDone used to index past the
/// end of the queue.
#[test]
fn syncs_inside_a_copy_are_consumed_by_it() {
    let mut p = Pipeline::default();
    fwd(&mut p, &[Kind::Parse, Kind::Bind, Kind::Execute, Kind::Sync, Kind::Sync]);
    route(&mut p, b"12G");
    fwd(&mut p, &[Kind::CopyData, Kind::Sync, Kind::CopyDone, Kind::Sync]);
    route(&mut p, b"CZ");
    assert!(p.is_idle());
}

/// A bad row while Syncs sit between the copy data: which ones the server read is not
/// observable, so the connection must never be reused.
#[test]
fn an_error_inside_an_irregular_copy_is_uncertain() {
    let mut p = Pipeline::default();
    fwd(&mut p, &[Kind::Query]);
    route(&mut p, b"G");
    fwd(&mut p, &[Kind::CopyData, Kind::Sync, Kind::CopyData, Kind::Sync, Kind::CopyFail, Kind::Sync]);
    p.route(b'E', "22P02");
    assert!(p.uncertain());
    p.route(b'Z', "");
    assert!(!p.is_idle(), "never idle again");

    // The same with no Sync inside the data is exact.
    let mut p = Pipeline::default();
    fwd(&mut p, &[Kind::Query]);
    route(&mut p, b"G");
    fwd(&mut p, &[Kind::CopyData, Kind::CopyData, Kind::CopyDone, Kind::Sync]);
    p.route(b'E', "22P02");
    assert!(!p.uncertain());
    route(&mut p, b"ZZ");
    assert!(p.is_idle());

    // A copy that fails on its data (22P02, not the 08P01 a copy reading another message
    // raises) did not read the query behind it: the server runs it (fuzz seed 2590956725360).
    // Behind an 08P01 the copy may have read it: uncertain.
    for (code, certain) in [("22P02", true), ("08P01", false)] {
        let mut p = Pipeline::default();
        fwd(&mut p, &[Kind::Query]);
        route(&mut p, b"G");
        fwd(&mut p, &[Kind::CopyData, Kind::Query, Kind::DescribePortal]);
        p.route(b'E', code);
        assert_eq!(p.uncertain(), !certain, "{code}");
        if certain {
            route(&mut p, b"ZTDCZT");
            assert!(p.is_idle());
        }
    }

    // With a Sync in the data it is uncertain; a Describe probe (of a name no server has)
    // still takes only its error: the query's RowDescription is the client's.
    let mut p = Pipeline::default();
    fwd(&mut p, &[Kind::Query]);
    route(&mut p, b"G");
    fwd(&mut p, &[Kind::CopyData, Kind::Sync, Kind::Query]);
    p.push(Kind::DescribePortal, Action::probe("34000", Bytes::from_static(b"E-client")));
    p.route(b'E', "22P02");
    assert!(p.uncertain());
    assert!(b"ZZTDCZ".iter().all(|&t| p.route(t, "").forward));
    assert_eq!(p.route(b'E', "34000").replace(), Some(&Bytes::from_static(b"E-client")));

    // libpq's extended COPY ended by CopyFail: the Sync before the data may have been read
    // by the copy, or after an error raised before the copy read anything (a statement
    // trigger can raise this very error): uncertain.
    let mut p = Pipeline::default();
    fwd(&mut p, &[Kind::Parse, Kind::Bind, Kind::Execute, Kind::Sync]);
    route(&mut p, b"12G");
    fwd(&mut p, &[Kind::CopyData, Kind::CopyFail, Kind::Sync]);
    p.route(b'E', COPY_FAIL_CODE);
    assert!(p.uncertain());

    // A COPY into a view fails after CopyInResponse, before reading: the Sync sent ahead of
    // the data is read afterwards and earns a ReadyForQuery the model cannot place.
    let mut p = Pipeline::default();
    fwd(&mut p, &[Kind::Query, Kind::Sync, Kind::CopyData, Kind::CopyDone, Kind::Query]);
    route(&mut p, b"G");
    p.route(b'E', "42809");
    assert!(p.uncertain());
    p.route(b'Z', "");
    p.route(b'Z', "");
    assert!(!p.is_idle(), "never idle while the model cannot place the replies");

    // A cancel can come before the server read the leading Sync.
    let mut p = Pipeline::default();
    fwd(&mut p, &[Kind::Parse, Kind::Bind, Kind::Execute, Kind::Sync]);
    route(&mut p, b"12G");
    fwd(&mut p, &[Kind::CopyData, Kind::CopyDone, Kind::Sync]);
    p.route(b'E', "57014");
    assert!(p.uncertain());
}

#[test]
fn probes_replace_the_servers_error() {
    let mut p = Pipeline::default();
    let error = Bytes::from_static(b"E-client");
    p.push(Kind::DescribeStatement, Action::probe("26000", error.clone()));
    p.push(Kind::Bind, Action::Forward);
    p.push(Kind::Sync, Action::Forward);
    let r = p.route(b'E', "26000");
    assert!(!r.forward);
    assert_eq!(r.replace(), Some(&error));
    route(&mut p, b"Z");
    assert!(p.is_idle());
    // Another SQLSTATE (an aborted transaction) passes as the server sent it.
    p.push(Kind::Parse, Action::probe("42P05", Bytes::from_static(b"x")));
    p.push(Kind::Sync, Action::Forward);
    let r = p.route(b'E', "25P02");
    assert!(r.forward && r.replace().is_none());
}

#[test]
fn unexpected_replies_are_flagged() {
    let mut p = Pipeline::default();
    assert!(p.route(b'Z', "").unexpected);
    let mut p = Pipeline::default();
    p.push(Kind::Bind, Action::Forward);
    assert!(p.route(b'1', "").unexpected);
    assert!(p.uncertain() && !p.is_idle());
}

// ---- Property tests: a model of the server against the reply queue ----

/// What the simulated server does with one client message.
#[derive(Clone, Copy, Debug)]
enum Msg {
    Parse(bool),
    Bind(bool),
    Describe(bool, bool),
    Execute(Exec),
    Close(bool),
    Sync(bool),
    Flush,
    Query(Simple),
    FunctionCall(bool),
    CopyData(bool),
    CopyDone(bool),
    CopyFail,
}

#[derive(Clone, Copy, Debug)]
enum Exec {
    Rows(u8),
    Error,
    CopyIn,
    CopyOut(u8),
    Suspended,
}

#[derive(Clone, Copy, Debug)]
enum Simple {
    Rows,
    Error,
    CopyIn,
    Empty,
}

fn msg() -> impl Strategy<Value = Msg> {
    let b = || prop::bool::weighted(0.2);
    prop_oneof![
        b().prop_map(Msg::Parse),
        b().prop_map(Msg::Bind),
        (any::<bool>(), b()).prop_map(|(p, f)| Msg::Describe(p, f)),
        prop_oneof![
            (0u8..3).prop_map(Exec::Rows),
            Just(Exec::Error),
            Just(Exec::CopyIn),
            (0u8..3).prop_map(Exec::CopyOut),
            Just(Exec::Suspended)
        ]
        .prop_map(Msg::Execute),
        b().prop_map(Msg::Close),
        b().prop_map(Msg::Sync),
        Just(Msg::Flush),
        prop_oneof![Just(Simple::Rows), Just(Simple::Error), Just(Simple::CopyIn), Just(Simple::Empty)]
            .prop_map(Msg::Query),
        b().prop_map(Msg::FunctionCall),
        b().prop_map(Msg::CopyData),
        b().prop_map(Msg::CopyDone),
        Just(Msg::CopyFail),
    ]
}

fn kind(m: Msg) -> Kind {
    match m {
        Msg::Parse(_) => Kind::Parse,
        Msg::Bind(_) => Kind::Bind,
        Msg::Describe(true, _) => Kind::DescribePortal,
        Msg::Describe(false, _) => Kind::DescribeStatement,
        Msg::Execute(_) => Kind::Execute,
        Msg::Close(_) => Kind::Close,
        Msg::Sync(_) => Kind::Sync,
        Msg::Flush => Kind::Flush,
        Msg::Query(_) => Kind::Query,
        Msg::FunctionCall(_) => Kind::FunctionCall,
        Msg::CopyData(_) => Kind::CopyData,
        Msg::CopyDone(_) => Kind::CopyDone,
        Msg::CopyFail => Kind::CopyFail,
    }
}

/// PostgreSQL's main loop over `msgs`: each reply with the index of the message the server
/// had read when it sent it, and whether the server ends in COPY FROM STDIN (waiting for the
/// client's data, not owing a reply).
fn simulate(msgs: &[Msg]) -> (Vec<(usize, u8, &'static str)>, bool) {
    #[derive(PartialEq)]
    enum S {
        Normal,
        Skip,
        CopyIn(bool),
    }
    let mut out = Vec::new();
    let mut s = S::Normal;
    for (i, &m) in msgs.iter().enumerate() {
        let mut emit = |tags: &[u8], code: &'static str| {
            for &t in tags {
                out.push((i, t, if t == b'E' { code } else { "" }));
            }
        };
        match s {
            S::Skip => {
                if let Msg::Sync(_) = m {
                    emit(b"Z", "");
                    s = S::Normal;
                }
            }
            S::CopyIn(ext) => {
                let failed = match m {
                    Msg::CopyData(true) => Some("22P02"),
                    Msg::CopyData(false) | Msg::Sync(_) | Msg::Flush => None,
                    Msg::CopyDone(true) => Some("23505"),
                    Msg::CopyDone(false) => {
                        emit(if ext { b"C" } else { b"CZ" }, "");
                        s = S::Normal;
                        None
                    }
                    Msg::CopyFail => Some(COPY_FAIL_CODE),
                    _ => Some("08P01"),
                };
                if let Some(code) = failed {
                    emit(b"E", code);
                    if ext {
                        s = S::Skip;
                    } else {
                        emit(b"Z", "");
                        s = S::Normal;
                    }
                }
            }
            S::Normal => {
                let ext_fail = |emit: &mut dyn FnMut(&[u8], &'static str), s: &mut S| {
                    emit(b"E", "42000");
                    *s = S::Skip;
                };
                match m {
                    Msg::Parse(true) | Msg::Bind(true) | Msg::Describe(_, true) | Msg::Close(true) => {
                        ext_fail(&mut emit, &mut s)
                    }
                    Msg::Parse(false) => emit(b"1", ""),
                    Msg::Bind(false) => emit(b"2", ""),
                    Msg::Describe(true, false) => emit(b"T", ""),
                    Msg::Describe(false, false) => emit(b"tn", ""),
                    Msg::Close(false) => emit(b"3", ""),
                    Msg::Execute(Exec::Rows(n)) => {
                        for _ in 0..n {
                            emit(b"D", "");
                        }
                        emit(b"C", "");
                    }
                    Msg::Execute(Exec::Error) => {
                        emit(b"D", "");
                        ext_fail(&mut emit, &mut s)
                    }
                    Msg::Execute(Exec::CopyIn) => {
                        emit(b"G", "");
                        s = S::CopyIn(true);
                    }
                    Msg::Execute(Exec::CopyOut(n)) => {
                        emit(b"H", "");
                        for _ in 0..n {
                            emit(b"d", "");
                        }
                        emit(b"cC", "");
                    }
                    Msg::Execute(Exec::Suspended) => emit(b"Ds", ""),
                    Msg::Sync(fail) => emit(if fail { b"EZ" } else { b"Z" }, "40001"),
                    Msg::Flush | Msg::CopyData(_) | Msg::CopyDone(_) | Msg::CopyFail => {}
                    Msg::Query(Simple::Rows) => emit(b"TDCZ", ""),
                    Msg::Query(Simple::Error) => emit(b"EZ", "42P01"),
                    Msg::Query(Simple::Empty) => emit(b"IZ", ""),
                    Msg::Query(Simple::CopyIn) => {
                        emit(b"G", "");
                        s = S::CopyIn(false);
                    }
                    Msg::FunctionCall(fail) => emit(if fail { b"EZ" } else { b"VZ" }, "22012"),
                }
            }
        }
    }
    (out, matches!(s, S::CopyIn(_)))
}

proptest! {
    // PROPTEST_CASES raises it (benches/fuzz.sh).
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(2000)
    ))]

    /// For any message sequence and any interleaving of the server's replies with the
    /// client's later messages: no panic; every reply is routed as expected until the model
    /// says it is uncertain; whenever the queue says idle, the server owes nothing for what
    /// was sent; and at the end, unless it declared itself uncertain, it owes nothing, or is
    /// in COPY FROM STDIN exactly when the server is.
    #[test]
    fn the_reply_queue_follows_the_server(msgs in proptest::collection::vec(msg(), 0..24),
                                          schedule in proptest::collection::vec(any::<bool>(), 0..80)) {
        let (replies, server_in_copy) = simulate(&msgs);
        let mut p = Pipeline::default();
        let (mut pushed, mut delivered) = (0, 0);
        let mut steps = schedule.into_iter().chain(std::iter::repeat(true));
        while pushed < msgs.len() || delivered < replies.len() {
            let can_deliver = delivered < replies.len() && replies[delivered].0 < pushed;
            let push = pushed < msgs.len() && (!can_deliver || steps.next().unwrap_or(true));
            if push {
                p.push(kind(msgs[pushed]), Action::Forward);
                pushed += 1;
            } else {
                prop_assert!(can_deliver);
                let (_, tag, code) = replies[delivered];
                let was_uncertain = p.uncertain();
                let r = p.route(tag, code);
                if !was_uncertain {
                    prop_assert!(!r.unexpected, "unexpected {} at reply {delivered} of {replies:?}", tag as char);
                    prop_assert!(r.forward);
                }
                delivered += 1;
            }
            if p.is_idle() {
                let owed = replies[delivered..].iter().any(|r| r.0 < pushed);
                prop_assert!(!owed, "idle while replies are owed: {msgs:?} pushed {pushed} delivered {delivered}");
            }
        }
        let (_, _) = p.take_effects();
        if !p.uncertain() {
            prop_assert_eq!(p.copy_in(), server_in_copy, "{:?}", msgs);
            // In COPY the COPY's own entry waits for the client's data; otherwise every reply
            // has arrived and nothing may still be expected.
            if !server_in_copy {
                prop_assert!(p.owes_nothing(), "replies still expected after all arrived: {:?}", msgs);
            }
        }
    }

    /// Arbitrary server tags never panic the queue, whatever was pushed.
    #[test]
    fn any_server_bytes_are_survived(kinds in proptest::collection::vec(0u8..14, 0..20),
                                     tags in proptest::collection::vec(any::<u8>(), 0..40)) {
        let all = [Kind::Parse, Kind::Bind, Kind::DescribeStatement, Kind::DescribePortal, Kind::Execute,
            Kind::Close, Kind::Sync, Kind::Query, Kind::FunctionCall, Kind::CopyData, Kind::CopyDone,
            Kind::CopyFail, Kind::Flush, Kind::Unknown];
        let mut p = Pipeline::default();
        for (i, t) in tags.iter().enumerate() {
            if let Some(k) = kinds.get(i) {
                p.push(all[*k as usize], Action::Forward);
            }
            let _ = p.route(*t, "XX000");
            let _ = p.is_idle();
        }
    }
}

mod previous;

/// One step of a session, as the relay drives the pipeline.
#[derive(Clone, Debug)]
enum Step {
    Push {
        kind: usize,
        action: usize,
        effect: bool,
        set: bool,
    },
    /// The client's Parse of the unnamed statement.
    Unnamed,
    /// Effects added to the message pushed last (a DECLARE's cursors).
    Attach,
    Route {
        tag: u8,
        code: usize,
    },
}

/// Steps of the extended protocol and the replies its messages expect (and errors), so that
/// runs of well-formed batches, which the fast path routes, come up often.
fn extended_step() -> impl Strategy<Value = Step> {
    // Parse, Bind, DescribeStatement, DescribePortal, Execute, Close, Sync, Query, Flush.
    let kinds = vec![0usize, 1, 2, 3, 4, 5, 6, 7, 12];
    let tags: Vec<u8> = b"123tnTDCIsEZ".to_vec();
    prop_oneof![
        (prop::sample::select(kinds), 0..4usize, any::<bool>(), prop::bool::weighted(0.1))
            .prop_map(|(kind, action, effect, set)| Step::Push { kind, action, effect, set }),
        (prop::sample::select(tags), prop_oneof![6 => Just(0usize), 1 => 1..3usize])
            .prop_map(|(tag, code)| Step::Route { tag, code }),
        Just(Step::Unnamed),
        Just(Step::Attach),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    // The backend tags the model knows, and any byte.
    let tags: Vec<u8> = b"123tnTDCIsEZcdGHAVNS".to_vec();
    prop_oneof![
        (0..14usize, 0..4usize, any::<bool>(), prop::bool::weighted(0.2))
            .prop_map(|(kind, action, effect, set)| Step::Push { kind, action, effect, set }),
        (prop_oneof![4 => prop::sample::select(tags), 1 => any::<u8>()], 0..4usize)
            .prop_map(|(tag, code)| Step::Route { tag, code }),
        Just(Step::Unnamed),
        Just(Step::Attach),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(2000)
    ))]

    /// The reply model routes every message, settles every effect and tracks every SET as
    /// the model before it did (routes that leave effects in the pipeline, boxed SETs, the
    /// inlined advance, the simple-query fast path against the general match it bypasses),
    /// for any sequence of client messages and server replies.
    #[test]
    fn the_reply_model_agrees_with_the_previous_one(steps in proptest::collection::vec(step(), 0..40)) {
        agrees_with_the_previous_model(&steps)?;
    }

    /// The same, over runs of extended-protocol batches and their replies: the fast path
    /// (`route_extended`) routes them as the previous model's general match did.
    #[test]
    fn extended_batches_are_routed_as_by_the_previous_model(
        steps in proptest::collection::vec(extended_step(), 0..60)
    ) {
        agrees_with_the_previous_model(&steps)?;
    }
}

/// Every kind of client message the model knows.
pub(crate) const ALL_KINDS: [Kind; 14] = [
    Kind::Parse,
    Kind::Bind,
    Kind::DescribeStatement,
    Kind::DescribePortal,
    Kind::Execute,
    Kind::Close,
    Kind::Sync,
    Kind::Query,
    Kind::FunctionCall,
    Kind::CopyData,
    Kind::CopyDone,
    Kind::CopyFail,
    Kind::Flush,
    Kind::Unknown,
];

fn agrees_with_the_previous_model(steps: &[Step]) -> Result<(), TestCaseError> {
    let all = ALL_KINDS;
    let codes = ["", "42601", "26000", COPY_FAIL_CODE];
    let mut new = Pipeline::default();
    let mut old = previous::Pipeline::default();
    for (n, s) in steps.iter().enumerate() {
        match *s {
            Step::Push { kind, action, effect, set } => {
                let action = match action {
                    0 | 1 => Action::Forward,
                    2 => Action::Swallow,
                    _ => Action::probe("26000", Bytes::from_static(b"probe")),
                };
                let effect =
                    if effect { vec![Effect::ClientParse(vec![n as u8].into())] } else { Vec::new() };
                let set = set.then(|| SetCmd::Set { name: format!("v{n}"), value: "1".into() });
                let kind = all[kind];
                if let Some(set) = set {
                    new.push_set(kind, Some(Box::new(set.clone())));
                    old.push_set(kind, Some(set));
                } else {
                    new.push_effect(kind, action.clone(), effect.clone());
                    old.push_effect(kind, action, effect);
                }
                prop_assert_eq!(new.take_effects(), unmarked(old.take_effects()).0);
            }
            Step::Unnamed => {
                // The previous model knew no unnamed Parse: there it is a Parse whose marker
                // effect shows when it completes (done) or is skipped (undone).
                new.push_unnamed_parse(false, Vec::new());
                old.push_effect(Kind::Parse, Action::Forward, vec![unnamed_marker()]);
                prop_assert_eq!(new.take_effects(), unmarked(old.take_effects()).0);
            }
            Step::Attach => {
                let effect = vec![Effect::ClientPortal(vec![n as u8].into())];
                new.attach_effects(effect.clone());
                old.attach_effects(effect);
            }
            Step::Route { tag, code } => {
                let r = new.route(tag, codes[code]);
                let o = old.route(tag, codes[code]);
                prop_assert_eq!(r.forward, o.forward, "step {}", n);
                prop_assert_eq!(r.replace(), o.replace.as_ref());
                prop_assert_eq!(r.unexpected, o.unexpected);
                let completed_set = r.rare.and_then(|rare| rare.completed_set);
                prop_assert_eq!(completed_set.map(|s| *s), o.completed_set);
                let (effects, parsed) = unmarked((o.undo, o.done));
                prop_assert_eq!(r.unnamed_parsed, parsed, "step {}", n);
                prop_assert_eq!(new.take_effects(), effects);
            }
        }
        prop_assert_eq!(new.unnamed_pending(), old.has_marker());
        prop_assert_eq!(new.is_idle(), old.is_idle());
        prop_assert_eq!(new.owes_nothing(), old.owes_nothing());
        prop_assert_eq!(new.uncertain(), old.uncertain());
        prop_assert_eq!(new.pending_ready(), old.pending_ready());
        prop_assert_eq!(new.copy_in(), old.copy_in());
        // Where a pipelining client may be held back: only while a ReadyForQuery is owed that
        // needs no further message of the client's.
        if new.unit_pending() {
            prop_assert!(new.pending_ready() > 0 && !new.owes_nothing(), "step {}", n);
            // In a copy, only a Query's the client already ended.
            if new.copy_in() {
                prop_assert!(new.mode == Mode::CopyIn { extended: false }, "step {}", n);
                prop_assert!(
                    new.queue.iter().any(|e| matches!(e.kind, Kind::CopyDone | Kind::CopyFail)),
                    "step {}",
                    n
                );
            }
        }
    }
    Ok(())
}

/// What stands for the client's unnamed Parse in the previous model.
fn unnamed_marker() -> Effect {
    Effect::ClientParse(b"\0unnamed".to_vec().into())
}

/// Effects without the unnamed Parse's markers, and whether one completed (was done).
fn unmarked((undo, done): (Vec<Effect>, Vec<Effect>)) -> ((Vec<Effect>, Vec<Effect>), bool) {
    let marker = unnamed_marker();
    let parsed = done.contains(&marker);
    let keep = |e: &Effect| *e != marker;
    ((undo.into_iter().filter(keep).collect(), done.into_iter().filter(keep).collect()), parsed)
}

#[test]
fn unflushed_until_a_sync_or_flush_follows_an_extended_message() {
    let mut p = Pipeline::default();
    assert!(!p.unflushed(), "nothing sent");
    p.push(Kind::Parse, Action::Forward);
    assert!(p.unflushed(), "the server holds the ParseComplete");
    p.push(Kind::Flush, Action::Swallow);
    assert!(!p.unflushed());
    p.push(Kind::Bind, Action::Forward);
    p.push(Kind::Sync, Action::Forward);
    assert!(!p.unflushed());
    p.push(Kind::Query, Action::Forward);
    assert!(!p.unflushed(), "a simple query's ReadyForQuery flushes");
    p.push(Kind::CopyData, Action::Forward);
    assert!(!p.unflushed(), "copy data: a Flush would go to the COPY");
    p.push(Kind::CopyDone, Action::Forward);
    assert!(p.unflushed(), "the COPY's CommandComplete waits in the server's output");
}

#[test]
fn a_creation_is_behind_a_sync_until_answered_or_skipped() {
    let create = |name: &str| vec![Effect::ServerStatement(name.into())];
    let mut p = Pipeline::default();
    p.push_effect(Kind::Parse, Action::Forward, create("pgt_a"));
    p.push(Kind::Bind, Action::Forward);
    assert!(!p.creates_before_sync("pgt_a"), "in the same Sync batch it is skipped with the creation");
    p.push(Kind::Sync, Action::Forward);
    assert!(p.creates_before_sync("pgt_a"));
    assert!(!p.creates_before_sync("pgt_b"), "another statement");
    route(&mut p, b"1");
    assert!(!p.creates_before_sync("pgt_a"), "answered");
    // Skipped behind an error: settled as the error arrives, before the Sync's reply.
    let mut p = Pipeline::default();
    p.push(Kind::DescribeStatement, Action::Forward);
    p.push_effect(Kind::Parse, Action::Forward, create("pgt_a"));
    p.push(Kind::Sync, Action::Forward);
    assert!(p.creates_before_sync("pgt_a"));
    route(&mut p, b"E");
    assert!(!p.creates_before_sync("pgt_a"), "skipped");
    assert_eq!(p.take_effects().0, create("pgt_a"), "undone");
}
