//! Containment end to end (DESIGN.md "Containment", issue 10): two tenants share one login
//! role and a pool of ONE server connection (transaction mode), so every transaction of either
//! lands on the same backend — checked with `pg_backend_pid()` — and nothing of one session may
//! reach the other: session state, replies, statements. Raw-protocol clients send what a
//! driver never would (COPY with stray Syncs, names they never prepared, Terminate behind a
//! query); where PostgreSQL's own answer is the reference, the same bytes go straight to the
//! cluster over its Unix socket and the two transcripts are compared message by message.
//!
//! The files: `session_state` (what a session sets never reaches the next client),
//! `parameters` (settings and ParameterStatus at a handoff, both pool modes), `login_spelling`
//! (startup settings shown at login as PostgreSQL spells them),
//! `replies` (no reply crosses clients, even after COPY/Sync orderings PostgreSQL
//! answers irregularly, a FATAL or a Terminate), `statements` (prepared statements and
//! portals belong to their client), `cursors` (WITH HOLD cursors and other session features
//! anywhere in a query pin or are refused; a cursor declared in code is closed), `quoted` (a `;` in a string, a comment or a code body starts no statement; a DO block's cursors are closed however it spells DECLARE), `unnamed` (the unnamed statement left on a server
//! connection is usable only by the client that parsed it), `waits` (the wait clock and a cancel while waiting), `barriers` (a client leaving mid-pipeline around DEALLOCATE/DISCARD and portal names made twice leaves nothing to the next client), `leaving` (a session-mode or pinned client leaving however it leaves), `custom_reset` (a configured `reset_query` keeps or closes a connection, never hands on a reply or a transaction), `setup` (a session setup that fails on a later connection), `retry` (a handoff whose reset fails goes to another connection, the client's messages sent once), `setup_empty` (the SET-alone setup's empty query against the client's own empty query and failures), `seed` (the state of `random()` a tenant seeds never reaches the next one), `crash` (an Execute that would crash PostgreSQL is never sent), `oversized` (a message longer than PostgreSQL accepts for its type ends only its session), `reseed_attacks` (a hostile tenant against the reseed of `random()` and the setup guard), `attacks28` (a hostile tenant against the guard sent only where a timeout was seen, the retry's kept place, and the affinity backoff), `attacks29` (a hostile tenant against the restore behind a reset: where it runs, what the client is sent, what the next tenant finds), `attacks30` (a hostile tenant against a batch's SET tracking: chained, flushed and failed batches followed as PostgreSQL keeps them, and those not followed never reaching another client), `encoding` (a name that is not UTF-8 fails only its own message), `attacks32` (a hostile client against the handoff's `SET application_name`: values, encodings and standard_conforming_strings left on the connection, every route of changing it, pipelines behind it, both pool modes), `attacks33` (tenant affinity's 50 ms streak bound against transactions ending just under it and clients of a taking turns; clients with their own 1 ms statement timeout across the unguarded `SET application_name`), `pipelined` (a client that always has a query in flight lets waiters in between its transactions, never inside one), `attacks34` (a hostile client against that hold-back: statements, settings, transactions begun or failed in flight, pins, COPY, a lone Flush, FunctionCall and Terminate behind the held-back message, PAUSE, the tenant's cap, counters), `attacks35` (what that hold-back looks past: stray copy messages and Flushes behind a unit's end, a COPY's data never held back, extended COPYs and a query inside a pending copy). The pair of tenants is `support::tenant_pair` with
//! write access and a pool of one.

mod affinity;
mod attacks28;
mod attacks29;
mod attacks30;
mod attacks31;
mod attacks32;
mod attacks33;
mod attacks34;
mod attacks35;
mod barriers;
mod crash;
mod cursors;
mod custom_reset;
mod cuts;
mod encoding;
mod guard;
mod leaving;
mod login_spelling;
mod oversized;
mod parameters;
mod pipelined;
mod quoted;
mod replies;
mod reseed_attacks;
mod reset;
mod resync_hold;
mod retry;
mod retry_attacks;
mod retry_poisoned;
mod seed;
mod session_state;
mod setup;
mod setup_attacks;
mod setup_empty;
mod statements;
mod temporary;
mod unnamed;
mod waits;

use pgtenant::config::{Config, TenantConfig};
use tokio_postgres::{Client, SimpleQueryMessage};

use crate::support::*;

/// A proxy for `tenants` that gives up on a checkout after 3 s (a test that waits longer has
/// failed already).
async fn start_quick(tenants: Vec<TenantConfig>) -> Harness {
    let mut cfg: Config = config(tenants);
    cfg.pool.checkout_timeout = 3.0;
    start(cfg).await
}

/// A proxy whose transaction-mode tenant (a pool of one, in a database named after `db`)
/// refuses session-level features (`session_features = "refuse"`), and a client of it.
async fn refusing(db: &str) -> (TenantConfig, Harness, Client) {
    let t = with_mode(tenant_db(db).await, pgtenant::model::PoolMode::Transaction, 1);
    let mut cfg = config(vec![t.clone()]);
    cfg.pool.checkout_timeout = 3.0;
    cfg.pool.session_features = pgtenant::config::SessionFeatures::Refuse;
    let h = start(cfg).await;
    let c = h.client(&t.id).await;
    (t, h, c)
}

/// Runs each of `queries` as `c`: each must be refused (0A000), not run.
async fn expect_refused<Q: AsRef<str>>(f: &mut Failures, c: &Client, queries: impl IntoIterator<Item = Q>) {
    for sql in queries {
        let sql = sql.as_ref();
        match c.batch_execute(sql).await {
            Ok(()) => f.0.push(format!("{sql:?} ran")),
            Err(e) => f.check(code(&e) == "0A000", || format!("{sql:?}: expected 0A000, got {}", why(&e))),
        }
    }
}

async fn pid(c: &Client) -> i32 {
    c.query_one("SELECT pg_backend_pid()", &[]).await.expect("pg_backend_pid").get(0)
}

/// The rows of a simple query, as text (NULL as "NULL").
async fn rows(c: &Client, sql: &str) -> Result<Vec<Vec<String>>, tokio_postgres::Error> {
    Ok(c.simple_query(sql)
        .await?
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).unwrap_or("NULL").to_owned()).collect())
            }
            _ => None,
        })
        .collect())
}

/// Makes client `c` leave a WITH HOLD cursor `name` reading `secret` on its server connection
/// (of a tenant in database `db`) through an SQL function: the one way pgtenant cannot see
/// (the README says so: it neither pins for it nor closes it), so what stands between that
/// cursor and another client of the tenant is the portal check, or the reset at a handoff to
/// another tenant.
async fn plant_cursor(db: &str, c: &Client, name: &str, secret: &str) {
    let function = format!("public.plant_{name}");
    admin(db)
        .await
        .batch_execute(&format!(
            "CREATE OR REPLACE FUNCTION {function}() RETURNS int LANGUAGE sql AS \
             $f$ DECLARE {name} CURSOR WITH HOLD FOR SELECT '{secret}'::text; SELECT 1 $f$"
        ))
        .await
        .expect("the planting function");
    c.batch_execute(&format!("SELECT {function}()")).await.expect("plant a cursor");
}

/// An error with its SQLSTATE and message (Display alone says "db error").
fn why(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!("{} {}", d.code().code(), d.message()),
        None => e.to_string(),
    }
}

/// Collects failed expectations, so that one run reports every route that leaks.
#[derive(Default)]
struct Failures(Vec<String>);

impl Failures {
    fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.0.push(what());
        }
    }

    fn assert_none(self) {
        assert!(self.0.is_empty(), "{} failure(s):\n  {}", self.0.len(), self.0.join("\n  "));
    }
}
