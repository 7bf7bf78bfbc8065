//! A client that leaves at any point of a pipelined batch: cut at every byte of what it sends
//! (the connection closed there, or a Terminate at each message boundary), with server replies
//! that span reads (a 100 kB row, a 40 kB notice, a ParameterStatus) in the middle. The next
//! client on the pool's one connection, of the other tenant and of the same one, gets exactly
//! its own answer and none of the leaver's settings, cursors or statements.

use std::time::Duration;

use pgtenant::model::Isolation;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::support::raw::*;
use crate::support::*;

/// Execute of `portal` returning at most `rows` rows (PortalSuspended after them).
fn execute_limited(portal: &str, rows: i32) -> Vec<u8> {
    let mut body = cstrs(&[portal.as_bytes()]);
    body.extend_from_slice(&rows.to_be_bytes());
    msg(b'E', &body)
}

/// The leaver's batch, message by message: a tracked SET, a transaction with a named
/// statement run through a portal suspended after one row, a Flush, an unnamed statement
/// returning a 100 kB row, a 40 kB notice, a SET reported by ParameterStatus, a cursor.
fn batch() -> Vec<Vec<u8>> {
    vec![
        query("SET work_mem = '1111kB'"),
        query("BEGIN"),
        parse("s_leaver", "SELECT 'a-secret-' || g FROM generate_series(1, 3) g"),
        bind("p_leaver", "s_leaver"),
        describe(b'P', "p_leaver"),
        execute_limited("p_leaver", 1),
        msg(b'H', &[]),
        parse("", "SELECT repeat('a-big', 20000)"),
        bind("", ""),
        execute(""),
        sync(),
        query("DO $$BEGIN RAISE NOTICE '%', repeat('a-notice', 5000); END$$"),
        query("SET application_name = 'a-app'; DECLARE a_cur CURSOR FOR SELECT 'a-cursor'"),
        query("COMMIT"),
    ]
}

/// What a client sees of the leaver's session: work_mem, application_name, the leaver's
/// cursors, and (other tenant) the prepared statements; then its own value.
const CHECK: &str = "SELECT current_setting('work_mem'), current_setting('application_name'), \
     (SELECT count(*) FROM pg_cursors), \
     (SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE '%a-secret%'), 'own'";

/// Two tenants on one server connection; a client of tenant a sends each prefix of the batch
/// and leaves (closing; or, at message boundaries, with a Terminate), then a client of b and
/// another client of a run [`CHECK`] on that connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_anywhere_in_a_batch_leaves_nothing_to_the_next() {
    let (a, b) = tenant_pair(Isolation::Schema, Access::Write, 1).await;
    let h = start_quick(vec![a.clone(), b.clone()]).await;
    let (cb, same) = (h.client(&b.id).await, h.client(&a.id).await);
    let base_b = rows(&cb, CHECK).await.expect("b's first check");
    let base_same = rows(&same, CHECK).await.expect("a's other client's first check");
    assert_eq!(base_b[0][2..], ["0", "0", "own"], "b's baseline");
    let messages = batch();
    let bytes = messages.concat();
    let mut boundaries = vec![0];
    for m in &messages {
        boundaries.push(boundaries.last().copied().unwrap_or(0) + m.len());
    }
    // Every byte, leaving at once; every message boundary, leaving with a Terminate or
    // after the replies so far arrived (the server ran the prefix, a reply may be half read).
    let mut cuts: Vec<(usize, Leave)> = (0..=bytes.len()).map(|k| (k, Leave::Close)).collect();
    for &k in &boundaries {
        cuts.extend([
            (k, Leave::Terminate),
            (k, Leave::AfterReplies),
            (k.saturating_sub(1), Leave::AfterReplies),
        ]);
    }
    let mut f = Failures::default();
    for (k, leave) in cuts {
        let what = format!("cut at byte {k} of {}, {leave:?}", bytes.len());
        let mut leaver = raw_proxy(&h, &a.id).await;
        let mut sent = bytes[..k].to_vec();
        if leave == Leave::Terminate {
            sent.extend_from_slice(&terminate());
        }
        let _ = leaver.write_all(&sent).await;
        if leave == Leave::AfterReplies {
            // Some of the replies, not necessarily all: the 100 kB row may be cut.
            let mut buf = vec![0u8; 8192];
            let _ = tokio::time::timeout(Duration::from_millis(30), leaver.read(&mut buf)).await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        drop(leaver);
        for (who, c, base) in [("b", &cb, &base_b), ("a's other client", &same, &base_same)] {
            match rows(c, CHECK).await {
                Ok(r) => f.check(r == *base, || format!("{what}: {who} saw {r:?}, expected {base:?}")),
                Err(e) => f.0.push(format!("{what}: {who}'s check failed: {}", why(&e))),
            }
        }
    }
    f.assert_none();
}

/// How the leaver leaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Leave {
    /// Closes its socket right after writing.
    Close,
    /// Sends Terminate after what it wrote.
    Terminate,
    /// Reads the first replies, then closes.
    AfterReplies,
}

/// The cleanups pgtenant runs at release (CLOSE ALL after a DO block, RESET of
/// idle_session_timeout, DISCARD ALL after a DISCARD) are read as their own replies: the
/// connection goes back to the pool and serves the next transaction (same backend).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_cleanups_keep_the_connection() {
    let t = with_mode(tenant_db("cleanups").await, pgtenant::model::PoolMode::Transaction, 1);
    let h = start_quick(vec![t.clone()]).await;
    let c = h.client(&t.id).await;
    let p0 = pid(&c).await;
    for sql in ["DO $$BEGIN NULL; END$$", "SET idle_session_timeout = '500s'", "DISCARD PLANS"] {
        c.batch_execute(sql).await.expect("the statement");
        // The cleanup runs after the release, in the background: let it finish.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(pid(&c).await, p0, "after `{sql}` the connection was not kept");
    }
}
