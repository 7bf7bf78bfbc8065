//! Tenant b against the SET-alone setup shape (the usual schema handoff): the `SET
//! search_path` goes unsynced with an empty simple query behind it, whose EmptyQueryResponse
//! and ReadyForQuery pgtenant swallows. b's own empty query is never taken for pgtenant's,
//! b's failing statements behind the setup are answered as PostgreSQL answers them, and the
//! SET is committed by the empty query even when b's first statement fails.

use std::time::Duration;

use super::setup::{ids, pair_with_a_configuration};
use super::*;
use crate::support::raw::*;
use crate::support::*;

/// Sends `bytes` to a raw session and reads until `syncs` ReadyForQuerys.
async fn transcript<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    s: &mut S,
    bytes: &[u8],
    syncs: usize,
) -> Vec<String> {
    send(s, bytes).await;
    let (got, _) = read_ready(s, syncs, Duration::from_secs(8)).await;
    summary(&got)
}

/// b logged in (raw), then a used the one server connection: b's next write goes behind a
/// cross-tenant schema handoff. Also a superuser client of the shared database (with a
/// `public.t`) and b's tenant.
async fn b_behind_a() -> (Harness, Client, TenantConfig, tokio::net::TcpStream) {
    let (a, b, su) = pair_with_a_configuration().await;
    let h = start_quick(vec![a.clone(), b.clone()]).await;
    let rb = raw_proxy(&h, &b.id).await;
    let ca = h.client(&a.id).await;
    let _ = pid(&ca).await;
    (h, su, b, rb)
}

/// b's own empty query, in the same write as a SELECT, right behind the handoff: b gets
/// exactly EmptyQueryResponse, ReadyForQuery 'I', then its row (its own schema), the
/// same shape PostgreSQL answers for the same bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clients_own_empty_query_is_not_taken_for_the_setups() {
    let (_h, _su, b, mut rb) = b_behind_a().await;
    let pipeline = cat(&[query(""), query("SELECT current_schemas(false)")]);
    let proxied = transcript(&mut rb, &pipeline, 2).await;
    let mut direct = raw_direct(&b.database).await;
    let expected = transcript(&mut direct, &pipeline, 2).await;
    // The superuser's session straight to the cluster sees public, b its own schema.
    assert_eq!(expected, ["I", "Z(I)", "T", "D({public})", "C(SELECT 1)", "Z(I)"], "PostgreSQL's answer");
    let own = format!("D({{{}}})", b.id);
    assert_eq!(proxied, ["I", "Z(I)", "T", own.as_str(), "C(SELECT 1)", "Z(I)"], "b's transcript");
}

/// b's explicit transaction failing behind the handoff, pipelined in one write: the
/// transcript equals PostgreSQL's and the rolled-back row is nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_transaction_behind_the_handoff_is_answered_as_postgres_answers_it() {
    let (_h, su, b, mut rb) = b_behind_a().await;
    let pipeline =
        cat(&[query("BEGIN; INSERT INTO t VALUES (1, 'b')"), query("SELECT 1/0"), query("COMMIT")]);
    let proxied = transcript(&mut rb, &pipeline, 3).await;
    let mut direct = raw_direct(&b.database).await;
    let expected = transcript(&mut direct, &pipeline, 3).await;
    assert_eq!(
        expected,
        ["C(BEGIN)", "C(INSERT 0 1)", "Z(T)", "E(22012)", "Z(E)", "C(ROLLBACK)", "Z(I)"],
        "PostgreSQL's answer"
    );
    assert_eq!(proxied, expected, "b's transcript differs from PostgreSQL's");
    assert_eq!(ids(&su, "public.t").await, "", "b's row in public.t");
    assert_eq!(ids(&su, &format!("\"{}\".t", b.id)).await, "", "b's rolled-back row in its t");
}

/// b's first statement behind the handoff fails; its next write, an INSERT, lands in b's own
/// t: the SET was committed by the setup's empty query, not rolled back with b's failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_first_statement_does_not_roll_the_setup_back() {
    let (_h, su, b, mut rb) = b_behind_a().await;
    let failed = transcript(&mut rb, &query("SELECT 1/0"), 1).await;
    assert_eq!(failed, ["E(22012)", "Z(I)"], "b's failing first statement");
    let inserted = transcript(&mut rb, &query("INSERT INTO t VALUES (3, 'b')"), 1).await;
    assert_eq!(inserted, ["C(INSERT 0 1)", "Z(I)"], "b's INSERT");
    assert_eq!(ids(&su, &format!("\"{}\".t", b.id)).await, "3", "b's row in its own t");
    assert_eq!(ids(&su, "public.t").await, "", "b's row in public.t");
}
