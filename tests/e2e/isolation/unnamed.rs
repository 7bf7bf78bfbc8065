//! Containment of the unnamed prepared statement: PostgreSQL keeps it on the backend until the
//! next unnamed Parse or simple Query, so over a pooled connection it would outlive the
//! client that parsed it. A Bind, Describe or Close of the unnamed statement reaches the
//! server only when the statement there is the client's own; any other client gets
//! PostgreSQL's answer for a session without one (26000), never the statement's rows or shape.

use std::time::Duration;

use pgtenant::model::Isolation;
use tokio::net::TcpStream;

use super::*;
use crate::support::raw::*;
use crate::support::*;

/// What A's unnamed statement returns: rows no other client may see.
const SECRET_SQL: &str = "SELECT 'a-secret:' || owner FROM items";
const SECRET: &[u8] = b"a-secret";

/// Sends `bytes`, reads one ReadyForQuery per Sync or Query.
async fn step(s: &mut TcpStream, bytes: &[u8]) -> Vec<u8> {
    let syncs = messages(bytes).iter().filter(|(tag, _)| matches!(tag, b'S' | b'Q')).count();
    send(s, bytes).await;
    let (got, closed) = read_ready(s, syncs, Duration::from_secs(5)).await;
    assert!(!closed && ready_count(&got) == syncs, "no full reply: {:?}", summary(&got));
    got
}

/// The messages of the ErrorResponses in `bytes`.
fn error_messages(bytes: &[u8]) -> Vec<String> {
    messages(bytes).into_iter().filter(|(tag, _)| *tag == b'E').filter_map(|(_, b)| field(b, b'M')).collect()
}

fn leaked(bytes: &[u8]) -> bool {
    bytes.windows(SECRET.len()).any(|w| w == SECRET)
}

/// Bind/Describe/Execute of the unnamed statement without a Parse, Describe('S') of it and a
/// Close('S') of it, by a client that does not own it: PostgreSQL's answers for a session
/// without an unnamed statement, and none of its rows or its shape.
async fn check_refused(f: &mut Failures, who: &str, s: &mut TcpStream) {
    let got = step(s, &cat(&[bind("", ""), describe(b'P', ""), execute(""), sync()])).await;
    f.check(summary(&got) == ["E(26000)", "Z(I)"], || {
        format!("{who}: Bind of another's unnamed statement: {:?}", summary(&got))
    });
    f.check(error_messages(&got) == ["unnamed prepared statement does not exist"], || {
        format!("{who}: Bind error: {:?}", error_messages(&got))
    });
    f.check(!leaked(&got), || format!("{who}: got the other client's rows"));
    let got = step(s, &cat(&[describe(b'S', ""), sync()])).await;
    f.check(summary(&got) == ["E(26000)", "Z(I)"], || {
        format!("{who}: Describe('S') of another's unnamed statement: {:?}", summary(&got))
    });
    f.check(error_messages(&got) == ["unnamed prepared statement does not exist"], || {
        format!("{who}: Describe error: {:?}", error_messages(&got))
    });
    let got = step(s, &cat(&[close(b'S', ""), sync()])).await;
    f.check(summary(&got) == ["3", "Z(I)"], || {
        format!("{who}: Close('S') of another's unnamed statement: {:?}", summary(&got))
    });
}

/// Two tenants sharing one server connection (pool of one), and a second client of the first
/// tenant. Client A parses an unnamed statement reading its tenant's rows and syncs; the other
/// clients then use "the" unnamed statement without a Parse of their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_clients_unnamed_statement_cannot_be_used() {
    let (a, b) = tenant_pair(Isolation::Schema, Access::Write, 1).await;
    let h = start_quick(vec![a.clone(), b.clone()]).await;
    let mut f = Failures::default();
    let mut ca = raw_proxy(&h, &a.id).await;
    let mut same = raw_proxy(&h, &a.id).await;
    let mut other = raw_proxy(&h, &b.id).await;

    let got = step(&mut ca, &cat(&[parse("", SECRET_SQL), sync()])).await;
    assert_eq!(summary(&got), ["1", "Z(I)"], "A's Parse");
    // A client of the same tenant: no reset runs between the two, the statement is there.
    check_refused(&mut f, "same tenant", &mut same).await;
    // The statement is still A's (the other client's Close did not touch it): A binds it.
    let got = step(&mut ca, &cat(&[bind("", ""), execute(""), sync()])).await;
    f.check(leaked(&got) && summary(&got).ends_with(&["C(SELECT 3)".into(), "Z(I)".into()]), || {
        format!("A's own Bind after another client held the connection: {:?}", summary(&got))
    });
    // Another tenant on the same server connection.
    step(&mut ca, &cat(&[parse("", SECRET_SQL), sync()])).await;
    check_refused(&mut f, "other tenant", &mut other).await;

    // A's Parse and Bind in one batch; then Parse, Sync and Bind pipelined (the Bind waits
    // for the ParseComplete, the connection is held meanwhile); then the same with the
    // Parse's reply read before the Bind is sent.
    let got = step(&mut ca, &cat(&[parse("", SECRET_SQL), bind("", ""), execute(""), sync()])).await;
    f.check(sqlstate(&got).is_none() && leaked(&got), || {
        format!("Parse+Bind in one batch: {:?}", summary(&got))
    });
    let got = step(&mut ca, &cat(&[parse("", SECRET_SQL), sync(), bind("", ""), execute(""), sync()])).await;
    f.check(sqlstate(&got).is_none() && leaked(&got), || {
        format!("Parse, Sync, Bind pipelined: {:?}", summary(&got))
    });
    step(&mut ca, &cat(&[parse("", SECRET_SQL), sync()])).await;
    let got = step(&mut ca, &cat(&[bind("", ""), describe(b'S', ""), execute(""), sync()])).await;
    f.check(leaked(&got) && sqlstate(&got).is_none(), || {
        format!("Parse, Sync, then Bind in the next round trip: {:?}", summary(&got))
    });

    // An unnamed Parse skipped after an error does not replace the statement on the server:
    // a Bind after it must not run the previous holder's (A's) statement.
    step(&mut ca, &cat(&[parse("", SECRET_SQL), sync()])).await;
    for pipelined in [false, true] {
        let failing = cat(&[parse("s_bad", "SELECT * FROM no_such_table"), parse("", "SELECT 1"), sync()]);
        let use_it = cat(&[bind("", ""), execute(""), sync()]);
        let got = if pipelined {
            step(&mut same, &cat(&[failing, use_it])).await
        } else {
            let mut got = step(&mut same, &failing).await;
            got.extend(step(&mut same, &use_it).await);
            got
        };
        f.check(summary(&got) == ["E(42P01)", "Z(I)", "E(26000)", "Z(I)"] && !leaked(&got), || {
            format!("skipped Parse (pipelined: {pipelined}), then Bind: {:?}", summary(&got))
        });
    }
    f.assert_none();
}

/// A DECLARE sent while the server skips to Sync (after an error in a Flush batch) never runs:
/// its cursor name is not the client's, and a later Execute of it gets PostgreSQL's answer
/// (34000) at once instead of waiting for a verdict that never comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declare_skipped_at_once_leaves_its_name_unknown() {
    let t = with_mode(tenant_db("skipdecl").await, pgtenant::model::PoolMode::Transaction, 1);
    let h = start_quick(vec![t.clone()]).await;
    let mut direct = raw_direct(&t.database).await;
    let mut proxied = raw_proxy(&h, &t.id).await;
    let steps = [
        cat(&[parse("s_bad", "SELECT * FROM no_such_table"), msg(b'H', &[])]),
        cat(&[query("DECLARE c CURSOR WITH HOLD FOR SELECT 'skipped'"), sync()]),
        cat(&[query("BEGIN"), execute("c"), sync(), query("ROLLBACK")]),
    ];
    for (i, bytes) in steps.iter().enumerate() {
        send(&mut direct, bytes).await;
        let want = summary(&read_quiet(&mut direct, Duration::from_millis(300)).await.0);
        send(&mut proxied, bytes).await;
        let got = summary(&read_quiet(&mut proxied, Duration::from_millis(300)).await.0);
        assert_eq!(got, want, "step {i}: pgtenant's answer differs from PostgreSQL's");
    }
}

/// A client parses its unnamed statement without a Sync (Flush, or nothing) and leaves
/// (closing, or with a Terminate): the next clients on the pool's one connection, of its
/// tenant and of the other one, get 26000 for a Bind of the unnamed statement, never its rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unnamed_statement_left_without_a_sync_is_nobody_elses() {
    let (a, b) = tenant_pair(Isolation::Schema, Access::Write, 1).await;
    let h = start_quick(vec![a.clone(), b.clone()]).await;
    let mut f = Failures::default();
    let mut same = raw_proxy(&h, &a.id).await;
    let mut other = raw_proxy(&h, &b.id).await;
    for (flush, leave_by_terminate) in [(true, false), (true, true), (false, false), (false, true)] {
        let what = format!("Flush: {flush}, Terminate: {leave_by_terminate}");
        let mut leaver = raw_proxy(&h, &a.id).await;
        let mut bytes = parse("", SECRET_SQL);
        if flush {
            bytes.extend_from_slice(&msg(b'H', &[]));
        }
        send(&mut leaver, &bytes).await;
        if flush {
            let (got, _) = read_quiet(&mut leaver, Duration::from_millis(100)).await;
            f.check(summary(&got) == ["1"], || format!("{what}: the Parse's reply: {:?}", summary(&got)));
        }
        if leave_by_terminate {
            send(&mut leaver, &terminate()).await;
        }
        drop(leaver);
        for (who, s) in [("same tenant", &mut same), ("other tenant", &mut other)] {
            let got = step(s, &cat(&[bind("", ""), execute(""), sync()])).await;
            f.check(summary(&got) == ["E(26000)", "Z(I)"] && !leaked(&got), || {
                format!("{what}: {who}'s Bind of the unnamed statement: {:?}", summary(&got))
            });
        }
    }
    f.assert_none();
}

/// A client's own unnamed statement outlives its round trip as on PostgreSQL, whichever
/// connection its next round trip gets (a pool of one that the other tenant used meanwhile,
/// with a reset between): pgtenant parses it again there from the client's own Parse, so a
/// Bind or Describe of it runs the client's statement, never the other client's. Where
/// PostgreSQL has none (after a simple Query, a Close of it, a failed Parse) it is 26000 still.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_unnamed_statement_follows_it_to_the_next_connection() {
    let (a, b) = tenant_pair(Isolation::Schema, Access::Write, 1).await;
    let h = start_quick(vec![a.clone(), b.clone()]).await;
    let mut f = Failures::default();
    let mut ca = raw_proxy(&h, &a.id).await;
    let mut cb = raw_proxy(&h, &b.id).await;
    let own = |who: &str| format!("SELECT '{who}-own:' || owner FROM items");
    let rows_of =
        |got: &[u8], who: &str| got.windows(who.len() + 5).any(|w| w == format!("{who}-own:").as_bytes());
    let use_it = cat(&[bind("", ""), execute(""), sync()]);

    let got = step(&mut ca, &cat(&[parse("", &own("a")), describe(b'S', ""), sync()])).await;
    assert_eq!(summary(&got)[..1], ["1".to_owned()], "a's Parse: {:?}", summary(&got));
    let got = step(&mut cb, &cat(&[parse("", &own("b")), sync()])).await;
    assert_eq!(summary(&got), ["1", "Z(I)"], "b's Parse on the same connection");
    for round in 0..2 {
        let got = step(&mut ca, &use_it).await;
        f.check(sqlstate(&got).is_none() && rows_of(&got, "a") && !rows_of(&got, "b"), || {
            format!("round {round}: a's Bind after b's Parse: {:?}", summary(&got))
        });
        let got = step(&mut cb, &cat(&[describe(b'S', ""), bind("", ""), execute(""), sync()])).await;
        f.check(sqlstate(&got).is_none() && rows_of(&got, "b") && !rows_of(&got, "a"), || {
            format!("round {round}: b's Describe and Bind after a's: {:?}", summary(&got))
        });
    }
    // Where PostgreSQL has dropped it: a simple Query, a Close of it, a failed Parse.
    let drops: [(&str, Vec<u8>); 3] = [
        ("a simple Query", query("SELECT 1")),
        ("a Close", cat(&[close(b'S', ""), sync()])),
        ("a failed Parse", cat(&[parse("", "SELEC broken"), sync()])),
    ];
    for (what, drop) in drops {
        step(&mut ca, &cat(&[parse("", &own("a")), sync()])).await;
        step(&mut ca, &drop).await;
        step(&mut cb, &cat(&[parse("", &own("b")), sync()])).await;
        let got = step(&mut ca, &use_it).await;
        f.check(summary(&got) == ["E(26000)", "Z(I)"] && !rows_of(&got, "b"), || {
            format!("after {what}, a's Bind: {:?}", summary(&got))
        });
    }
    f.assert_none();
}

/// A Bind or Describe('S') that parses the client's unnamed statement again, followed in the
/// same batch by a new unnamed Parse of the client's that fails: PostgreSQL then has no
/// unnamed statement (26000 for a Bind of it in a later round trip), so pgtenant must not take
/// the failed Parse for the statement to parse again (the injected Parse's completion is not
/// the new one's), neither to fail it again nor to run it once it would parse (here: a table
/// it reads was created since).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parse_failing_behind_a_parse_again_leaves_no_statement() {
    let (a, b) = tenant_pair(Isolation::Schema, Access::Write, 1).await;
    let h = start_quick(vec![a.clone(), b.clone()]).await;
    let mut f = Failures::default();
    let mut ca = raw_proxy(&h, &a.id).await;
    let mut cb = raw_proxy(&h, &b.id).await;
    let own = |who: &str| format!("SELECT '{who}-own:' || owner FROM items");
    let use_it = cat(&[bind("", ""), execute(""), sync()]);
    let cases = [
        (cat(&[bind("", ""), execute("")]), "SELEC broken".to_owned(), "42601", None),
        (describe(b'S', ""), "SELEC broken".to_owned(), "42601", None),
        (cat(&[bind("", ""), execute("")]), "SELECT 'late:' || x FROM late1".into(), "42P01", Some("late1")),
        (describe(b'S', ""), "SELECT 'late:' || x FROM late2".into(), "42P01", Some("late2")),
    ];
    for (i, (first, failing, code, table)) in cases.into_iter().enumerate() {
        step(&mut ca, &cat(&[parse("", &own("a")), sync()])).await;
        step(&mut cb, &cat(&[parse("", &own("b")), sync()])).await;
        // Parsed again for the Bind/Describe, then the client's failing Parse.
        let got = step(&mut ca, &cat(&[first, parse("", &failing), bind("", ""), execute(""), sync()])).await;
        f.check(sqlstate(&got).as_deref() == Some(code), || format!("{i}: the batch: {:?}", summary(&got)));
        if let Some(t) = table {
            // Named statements only: the unnamed one stays as it is.
            let create = format!("CREATE TABLE {t} AS SELECT 'x' AS x");
            let got = step(&mut ca, &cat(&[parse("mk", &create), bind("", "mk"), execute(""), sync()])).await;
            assert_eq!(sqlstate(&got), None, "{i}: {t} created: {:?}", summary(&got));
            step(&mut ca, &cat(&[close(b'S', "mk"), sync()])).await;
        }
        // B holds the connection meanwhile: A's next Bind runs where its statement is not.
        step(&mut cb, &cat(&[parse("", &own("b")), sync()])).await;
        let got = step(&mut ca, &use_it).await;
        f.check(summary(&got) == ["E(26000)", "Z(I)"], || {
            format!("{i}: A's Bind after its failed Parse (PostgreSQL: 26000): {:?}", summary(&got))
        });
    }
    f.assert_none();
}

/// Another client of the same tenant (no reset between) drops the unnamed statement on the
/// shared connection with a simple Query or a failed unnamed Parse: A's own statement must
/// still answer A's Bind, as on A's own PostgreSQL session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_clients_drop_of_the_unnamed_statement_is_not_as() {
    let (a, b) = tenant_pair(Isolation::Schema, Access::Write, 1).await;
    let h = start_quick(vec![a.clone(), b.clone()]).await;
    let mut f = Failures::default();
    let mut ca = raw_proxy(&h, &a.id).await;
    let mut same = raw_proxy(&h, &a.id).await;
    let drops: [(&str, Vec<u8>); 3] = [
        ("a simple Query", query("SELECT 1")),
        ("a failed Parse", cat(&[parse("", "SELEC broken"), sync()])),
        ("a Parse failing at Bind", cat(&[parse("", "SELECT 1/$1::int"), bind("", ""), sync()])),
    ];
    for (what, drop) in drops {
        step(&mut ca, &cat(&[parse("", SECRET_SQL), sync()])).await;
        step(&mut same, &drop).await;
        let got = step(&mut ca, &cat(&[bind("", ""), execute(""), sync()])).await;
        f.check(sqlstate(&got).is_none() && leaked(&got), || {
            format!("A's Bind after another client's {what}: {:?}", summary(&got))
        });
    }
    f.assert_none();
}

/// The Parse again runs on the connection as set up for its client, after the other tenant's
/// reset: an unqualified table reads the client's own tenant's rows, never the tenant that
/// held the connection before; with a Flush instead of a Sync each message gets exactly its
/// reply (the injected Parse's swallowed, none lost), and the other tenant pipelining around
/// it gets only its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parse_again_reads_its_own_tenant_and_answers_each_message_once() {
    let (a, b) = tenant_pair(Isolation::Schema, Access::Write, 1).await;
    let h = start_quick(vec![a.clone(), b.clone()]).await;
    let mut f = Failures::default();
    let mut ca = raw_proxy(&h, &a.id).await;
    let mut cb = raw_proxy(&h, &b.id).await;
    let rows = |who: &str| -> Vec<String> {
        let mut r = vec!["2".to_owned()];
        r.extend(std::iter::repeat_n(format!("D({who})"), 3));
        r.push("C(SELECT 3)".into());
        r
    };
    let sql = "SELECT owner FROM items";
    step(&mut ca, &cat(&[parse("", sql), sync()])).await;
    step(&mut cb, &cat(&[parse("", sql), sync()])).await;
    for round in 0..3 {
        // A: Bind with a Flush (the connection is held), then the Sync.
        send(&mut ca, &cat(&[bind("", ""), execute(""), msg(b'H', &[])])).await;
        let (got, _) = read_quiet(&mut ca, Duration::from_millis(300)).await;
        f.check(summary(&got) == rows(&a.id), || format!("{round}: A's flushed Bind: {:?}", summary(&got)));
        let got = step(&mut ca, &sync()).await;
        f.check(summary(&got) == ["Z(I)"], || format!("{round}: A's Sync: {:?}", summary(&got)));
        // B: Describe('S'), then Bind of its own statement, two round trips pipelined.
        let batch = cat(&[describe(b'S', ""), sync(), bind("", ""), execute(""), sync()]);
        let got = step(&mut cb, &batch).await;
        let mut want = vec!["t".to_owned(), "T".into(), "Z(I)".into()];
        want.extend(rows(&b.id));
        want.push("Z(I)".into());
        f.check(summary(&got) == want, || format!("{round}: B's round trips: {:?}", summary(&got)));
        f.check(!got.windows(a.id.len()).any(|w| w == a.id.as_bytes()), || format!("{round}: B saw A's"));
    }
    f.assert_none();
}
