//! The differential test with tenants side by side: two or three tenants (schema isolation,
//! one database, one login role, so ONE shared pool) in transaction mode, each round running
//! one random sequence per client at the same time through pgtenant, often in several writes
//! with short pauses, so the clients hand the pool's server connection back and forth in the
//! middle of their sequences. Each client's replies are compared with PostgreSQL's for the
//! same sequence run alone over its own connection (as the role, search_path set to the
//! tenant's schema), under the single-client test's `agree`: a reply that crossed clients, a
//! session state (statement, portal, cursor, setting, COPY, aborted transaction) that
//! outlived a handoff, or a reply model that lost track shows up as a difference.
//!
//! How often the connection really passed between tenants is counted on the wire: pgtenant
//! reaches PostgreSQL through a relay ([`Wire`]) that sees every handoff's `SET search_path`
//! name the next tenant's schema. The tests assert that it passed, and (one client per
//! tenant) that in some rounds a client had the server again after another tenant's client
//! had it, i.e. in the middle of its sequence.
//!
//! `PGTENANT_CONC_CASES` (rounds per test) and `PGTENANT_CONC_SEED` change the run
//! (`PGTENANT_CONC_VERBOSE` prints every round); the longer run is `benches/fuzz.sh`.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use pgtenant::model::Isolation;
use tokio::net::TcpListener;

use super::*;

/// The longest a round may take (each run ends its session; a client waiting on another's
/// open transaction waits only until that one's Terminate).
const ROUND_LIMIT: Duration = Duration::from_secs(30);

/// A TCP relay between pgtenant and PostgreSQL counting, in the bytes pgtenant sends, the
/// times a server connection passes from one tenant to another: every handoff to a tenant
/// sets its search_path, naming its schema quoted (`"schema"`), and a connection whose
/// previous such name was another tenant's has changed hands.
struct Wire {
    port: u16,
    handoffs: Arc<AtomicU64>,
    connections: Arc<AtomicU64>,
    /// The tenants (indexes into the schemas) set up on any connection, in the order seen.
    setups: Arc<std::sync::Mutex<Vec<usize>>>,
}

impl Wire {
    async fn start(schemas: &[String]) -> Wire {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the relay");
        let port = listener.local_addr().expect("relay address").port();
        let handoffs = Arc::new(AtomicU64::new(0));
        let names: Arc<Vec<Vec<u8>>> =
            Arc::new(schemas.iter().map(|s| format!("\"{s}\"").into_bytes()).collect());
        let connections = Arc::new(AtomicU64::new(0));
        let setups = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (counter, opened, seen) = (handoffs.clone(), connections.clone(), setups.clone());
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                opened.fetch_add(1, Relaxed);
                tokio::spawn(relay(inbound, names.clone(), counter.clone(), seen.clone()));
            }
        });
        Wire { port, handoffs, connections, setups }
    }

    fn handoffs(&self) -> u64 {
        self.handoffs.load(Relaxed)
    }

    /// Server connections pgtenant opened.
    fn connections(&self) -> u64 {
        self.connections.load(Relaxed)
    }

    /// How many setups were seen so far.
    fn setups(&self) -> usize {
        self.setups.lock().expect("setups").len()
    }

    /// Whether, among the setups seen since the `from`th, a tenant's comes again after
    /// another tenant's: with one client per tenant, that client's turns on the server
    /// had another tenant's in between.
    fn came_back(&self, from: usize) -> bool {
        let setups = self.setups.lock().expect("setups");
        let mut turns: Vec<usize> = setups[from.min(setups.len())..].to_vec();
        turns.dedup();
        turns.iter().enumerate().any(|(i, t)| turns[..i].contains(t))
    }
}

async fn relay(
    inbound: TcpStream,
    names: Arc<Vec<Vec<u8>>>,
    handoffs: Arc<AtomicU64>,
    setups: Arc<std::sync::Mutex<Vec<usize>>>,
) {
    let Ok(outbound) = TcpStream::connect(("127.0.0.1", cluster().port)).await else { return };
    let (mut from_proxy, mut to_proxy) = inbound.into_split();
    let (mut from_server, mut to_server) = outbound.into_split();
    let longest = names.iter().map(Vec::len).max().unwrap_or(1);
    let up = async {
        let mut chunk = vec![0u8; 16 * 1024];
        // The end of what came before, so a name cut between two reads is still seen.
        let mut window: Vec<u8> = Vec::new();
        let mut last: Option<usize> = None;
        loop {
            let n = match from_proxy.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let old = window.len();
            window.extend_from_slice(&chunk[..n]);
            // Each name found (ending in the new bytes), in the order they were sent.
            let mut found: Vec<(usize, usize)> = Vec::new();
            for (tenant, name) in names.iter().enumerate() {
                for at in 0..window.len().saturating_sub(name.len() - 1) {
                    if at + name.len() > old && window[at..].starts_with(name) {
                        found.push((at, tenant));
                    }
                }
            }
            found.sort_unstable();
            for (_, tenant) in found {
                if last.is_some_and(|l| l != tenant) {
                    handoffs.fetch_add(1, Relaxed);
                }
                last = Some(tenant);
                setups.lock().expect("setups").push(tenant);
            }
            let keep = window.len().saturating_sub(longest - 1);
            window.drain(..keep);
            if to_server.write_all(&chunk[..n]).await.is_err() {
                break;
            }
        }
        let _ = to_server.shutdown().await;
    };
    let down = async {
        let _ = tokio::io::copy(&mut from_server, &mut to_proxy).await;
        let _ = to_proxy.shutdown().await;
    };
    tokio::join!(up, down);
}

/// `n` tenants in schemas of one database behind one login role (so one pool), each schema
/// with its own `fz` (owned by the role) for the generated COPYs; transaction mode with a
/// pool of `pool_size`.
pub(super) async fn tenant_group(n: usize, pool_size: usize) -> Vec<TenantConfig> {
    let role = unique("concrole");
    let password = format!("pw-{role}");
    let db = unique("concdb");
    let postgres = admin("postgres").await;
    postgres.batch_execute(&format!("CREATE ROLE {role} LOGIN PASSWORD '{password}'")).await.expect("role");
    postgres.batch_execute(&format!("CREATE DATABASE {db}")).await.expect("database");
    let shared = admin(&db).await;
    let mut tenants = Vec::new();
    for _ in 0..n {
        let id = unique("conct");
        shared
            .batch_execute(&format!(
                "CREATE SCHEMA \"{id}\"; GRANT USAGE ON SCHEMA \"{id}\" TO {role};
                 CREATE TABLE \"{id}\".fz (a int); ALTER TABLE \"{id}\".fz OWNER TO {role};"
            ))
            .await
            .expect("the tenant's schema");
        let mut t = TenantConfig::new(&id, "local", &db, &role, Some(&password));
        t.isolation = Isolation::Schema;
        tenants.push(with_mode(t, PoolMode::Transaction, pool_size));
    }
    tenants
}

/// One client of a round: PostgreSQL as its tenant's role in the tenant's schema, and
/// pgtenant as the tenant.
#[derive(Clone)]
pub(super) struct Client {
    tenant: String,
    pub(super) direct: Target,
    pub(super) proxy: Target,
}

/// `per_tenant` clients of each tenant, through the proxy at `proxy`.
pub(super) fn clients(
    tenants: &[TenantConfig],
    per_tenant: usize,
    proxy: std::net::SocketAddr,
) -> Vec<Client> {
    let c = cluster();
    let socket = c.socket_dir.join(format!(".s.PGSQL.{}", c.port));
    let mut out = Vec::new();
    for _ in 0..per_tenant {
        for t in tenants {
            let options = Some(format!("-csearch_path={}", t.id));
            out.push(Client {
                tenant: t.id.clone(),
                direct: Target::Direct {
                    socket: socket.clone(),
                    user: t.role.clone(),
                    db: t.database.clone(),
                    options,
                },
                proxy: Target::Proxy { addr: proxy, user: format!("app.{}", t.id), db: t.database.clone() },
            });
        }
    }
    out
}

/// One client's part of a round: its sequence, the writes it is cut into, the pause after each
/// write (ms) and before the first (ms, through pgtenant only).
#[derive(Clone, Debug)]
struct Plan {
    msgs: Vec<Msg>,
    chunks: Vec<usize>,
    pauses: Vec<u64>,
    delay: u64,
}

impl Plan {
    /// Half the time a random sequence as the single-client test sends, else whole turns
    /// ([`generate_turns`]) cut at some of the turns' ends.
    fn new(rng: &mut Rng) -> Plan {
        let (msgs, chunks) = if rng.below(2) == 0 {
            let msgs = generate(rng, true);
            let chunks = cut(rng, &msgs);
            (msgs, chunks)
        } else {
            let (msgs, ends) = generate_turns(rng, SESSION_QUERIES);
            let mut cuts: Vec<usize> = ends.into_iter().filter(|_| rng.below(2) == 0).collect();
            cuts.push(msgs.len() - 1);
            cuts.dedup();
            (msgs.clone(), chunks_at(&cuts, msgs.len()))
        };
        // A Terminate alone comes once the replies before it are in, as a rule (a Terminate
        // that finds the server still owing replies goes to the server, which then exits:
        // the connection is lost, and the next client waits for a new one, which its own
        // early Terminate may lose again).
        let mut pauses: Vec<u64> = chunks.iter().map(|_| rng.below(16) as u64).collect();
        if chunks.len() > 1 && chunks.last() == Some(&1) {
            pauses[chunks.len() - 2] = 40 + rng.below(60) as u64;
        }
        Plan { msgs, chunks, pauses, delay: rng.below(8) as u64 }
    }

    /// The plan without message `i`, its writes cut again.
    fn without(&self, i: usize) -> Plan {
        let mut msgs = self.msgs.clone();
        msgs.remove(i);
        let chunks = chunks_for(&msgs, &self.chunks);
        Plan { msgs, chunks, ..self.clone() }
    }
}

/// Queries whose rows show the session they run in (compared value by value here): its
/// tenant's schema, and a setting each client may change for itself. A search_path or SET
/// of another client's showing through differs from PostgreSQL's, where each sequence has a
/// session of its own.
const SESSION_QUERIES: &[&str] = &[
    "SELECT current_schema()",
    "SHOW statement_timeout",
    "SET statement_timeout = '7s'",
    "SET statement_timeout = '8s'",
    "RESET statement_timeout",
    "BEGIN; SET LOCAL statement_timeout = '9s'; SHOW statement_timeout",
    "SELECT current_schema(), current_setting('statement_timeout')",
];

/// The writes of a sequence: a third of the time as `split` cuts them (mostly one write),
/// else cut after some of its Syncs and Queries (where a transaction may end, so the connection
/// goes back to the pool during the pause and another tenant's client takes it), now and then
/// elsewhere, and often before its last message (a Terminate behind the last ReadyForQuery
/// leaves the connection in the pool; in the same write it is closed, owing that reply).
fn cut(rng: &mut Rng, msgs: &[Msg]) -> Vec<usize> {
    let len = msgs.len();
    if len < 2 || rng.below(3) == 0 {
        return split(rng, len);
    }
    let mut cuts: Vec<usize> = (1..len)
        .filter(|&i| match msgs[i - 1] {
            Msg::Sync | Msg::Query(_) => rng.below(2) == 0,
            _ => rng.below(12) == 0,
        })
        .collect();
    if rng.below(3) != 0 {
        cuts.push(len - 1);
    }
    cuts.sort_unstable();
    cuts.dedup();
    chunks_at(&cuts, len)
}

/// The writes of `len` messages cut at `cuts` (ascending, each in 1..len).
fn chunks_at(cuts: &[usize], len: usize) -> Vec<usize> {
    let mut chunks = Vec::new();
    let mut prev = 0;
    for &c in cuts.iter().chain([&len]) {
        if c > prev {
            chunks.push(c - prev);
            prev = c;
        }
    }
    chunks
}

type Replies = Vec<Vec<String>>;

/// Each client's replies from PostgreSQL (every sequence alone on its own connection) and
/// from pgtenant (all clients at once); pgtenant's are None if the round did not end within
/// [`ROUND_LIMIT`].
async fn round(clients: &[Client], plans: &[Plan]) -> (Replies, Option<Replies>) {
    let direct = all_at_once(clients, plans, |c| &c.direct).await.expect("PostgreSQL's runs end");
    let proxied = all_at_once(clients, plans, |c| &c.proxy).await;
    (direct, proxied)
}

async fn all_at_once(clients: &[Client], plans: &[Plan], target: fn(&Client) -> &Target) -> Option<Replies> {
    let proxied = matches!(clients.first().map(target), Some(Target::Proxy { .. }));
    let tasks: Vec<_> = clients
        .iter()
        .zip(plans)
        .map(|(c, p)| {
            let (target, p) = (target(c).clone(), p.clone());
            tokio::spawn(async move {
                if proxied {
                    tokio::time::sleep(Duration::from_millis(p.delay)).await;
                }
                run_paced(&target, &p.msgs, &p.chunks, &p.pauses, true).await
            })
        })
        .collect();
    let aborts: Vec<_> = tasks.iter().map(|t| t.abort_handle()).collect();
    match tokio::time::timeout(ROUND_LIMIT, futures_util::future::join_all(tasks)).await {
        Ok(done) => Some(done.into_iter().map(|r| r.expect("a client's run")).collect()),
        Err(_) => {
            aborts.iter().for_each(|a| a.abort());
            None
        }
    }
}

/// The clients whose replies through pgtenant do not agree with PostgreSQL's (all of them if
/// the round did not end), the known difference below aside.
fn differing(plans: &[Plan], direct: &Replies, proxied: &Option<Replies>) -> Vec<usize> {
    (0..plans.len())
        .filter(|&i| {
            proxied.as_ref().is_none_or(|p| {
                !agree(&direct[i], &p[i], &plans[i].msgs)
                    && accepted(&direct[i], &p[i], &plans[i].msgs).is_none()
            })
        })
        .collect()
}

/// The differences the run accepts (where `agree` does not), by name: one the README
/// documents. (A search_path lost behind a client's DISCARD ALL is no longer one: pgtenant
/// sets the tenant's again behind it, `search_path::a_reset_keeps_the_tenants_search_path_for_the_next_statement`.)
fn accepted(direct: &[String], proxied: &[String], msgs: &[Msg]) -> Option<&'static str> {
    if unnamed_not_parsed_again(direct, proxied, msgs) {
        Some("the documented unnamed-statement difference (README: not parsed again after a skipped Parse)")
    } else {
        None
    }
}

/// README ("The unnamed statement"): on another server connection than the one it was
/// parsed on, a client's unnamed statement is parsed again in front of its Bind or Describe,
/// except when the client's latest unnamed Parse was skipped after an error (pgtenant does not
/// tell that from a failed one): the client gets 26000 where PostgreSQL, whose session kept
/// the previous unnamed statement, uses that one. Alone on a connection a client keeps it
/// (the single-client test never sees this); clients at once move between connections. Only
/// that: an unnamed Parse that may have been skipped (something before it since the last
/// Sync), a Bind or Describe of the unnamed statement after it, every earlier reply the
/// same, and the first different one pgtenant's 26000.
fn unnamed_not_parsed_again(direct: &[String], proxied: &[String], msgs: &[Msg]) -> bool {
    let (mut batch, mut skippable, mut used) = (0, false, false);
    for m in msgs {
        match m {
            Msg::Sync => batch = 0,
            Msg::Parse("", _) if batch > 0 => skippable = true,
            Msg::Bind(_, "") | Msg::Describe(b'S', "") if skippable => used = true,
            _ => {}
        }
        if !matches!(m, Msg::Sync) {
            batch += 1;
        }
    }
    let first = (0..proxied.len()).find(|&i| direct.get(i) != proxied.get(i));
    used && first.is_some_and(|i| proxied[i] == "E:26000")
}

fn report(clients: &[Client], plans: &[Plan], direct: &Replies, proxied: &Option<Replies>) -> String {
    let differ = differing(plans, direct, proxied);
    let mut out = String::new();
    for (i, (c, p)) in clients.iter().zip(plans).enumerate() {
        let mark = if differ.contains(&i) { "DIFFERS" } else { "agrees" };
        let got =
            proxied.as_ref().map_or_else(|| "(the round did not end)".to_owned(), |r| format!("{:?}", r[i]));
        out += &format!(
            "client {i} (tenant {}) {mark}: {:?}\n  in writes {:?}, pausing {:?} ms, starting after {} ms\n  PostgreSQL {:?}\n  pgtenant   {got}\n",
            c.tenant, p.msgs, p.chunks, p.pauses, p.delay, direct[i]
        );
    }
    out
}

/// Whether a round of `plans` differs in one of `tries` runs (the interleaving is never the
/// same twice).
async fn fails(clients: &[Client], plans: &[Plan], tries: usize) -> bool {
    for _ in 0..tries {
        let (d, p) = round(clients, plans).await;
        if !differing(plans, &d, &p).is_empty() {
            return true;
        }
    }
    false
}

/// Shorter sequences on which some client still differs: messages dropped one at a time from
/// each client's sequence (its last message, which ends the session, kept), each candidate
/// tried up to three times; gives up shortening after `budget`.
async fn minimise(clients: &[Client], mut plans: Vec<Plan>, budget: Duration) -> Vec<Plan> {
    let end = tokio::time::Instant::now() + budget;
    let mut changed = true;
    while changed && tokio::time::Instant::now() < end {
        changed = false;
        for c in 0..plans.len() {
            let mut i = 0;
            while i + 1 < plans[c].msgs.len() && tokio::time::Instant::now() < end {
                let mut shorter = plans.clone();
                shorter[c] = plans[c].without(i);
                if fails(clients, &shorter, 3).await {
                    plans = shorter;
                    changed = true;
                } else {
                    i += 1;
                }
            }
        }
    }
    plans
}

/// `rounds` rounds of `per_tenant` clients of each of `tenants` tenants at once over a shared
/// pool of `pool_size`; panics on the first round where a client's replies differ.
async fn interleave(tenants: usize, per_tenant: usize, pool_size: usize, seed: u64, rounds: usize) {
    let name = format!("{tenants} tenants x {per_tenant} client(s), pool of {pool_size}");
    let group = tenant_group(tenants, pool_size).await;
    let wire = Wire::start(&group.iter().map(|t| t.id.clone()).collect::<Vec<_>>()).await;
    let mut cfg = config(group.clone());
    cfg.upstreams[0].port = wire.port;
    cfg.proxy.startup_timeout = 5.0;
    let h = start(cfg).await;
    let clients = clients(&group, per_tenant, h.addr);
    let verbose = std::env::var_os("PGTENANT_CONC_VERBOSE").is_some();
    let mut rng = Rng(seed);
    let (mut interleaved, mut split_runs) = (0, 0);
    let mut known = std::collections::BTreeMap::new();
    let started = tokio::time::Instant::now();
    for r in 0..rounds {
        let plans: Vec<Plan> = clients.iter().map(|_| Plan::new(&mut rng)).collect();
        let (before, opened, setups) = (wire.handoffs(), wire.connections(), wire.setups());
        let (direct, proxied) = round(&clients, &plans).await;
        let passed = wire.handoffs() - before;
        interleaved += (per_tenant == 1 && wire.came_back(setups)) as usize;
        split_runs += plans.iter().filter(|p| p.chunks.len() > 1).count();
        if let Some(p) = &proxied {
            for (i, plan) in
                plans.iter().enumerate().filter(|(i, plan)| !agree(&direct[*i], &p[*i], &plan.msgs))
            {
                if let Some(what) = accepted(&direct[i], &p[i], &plan.msgs) {
                    *known.entry(what).or_insert(0usize) += 1;
                }
            }
        }
        if verbose {
            let opened = wire.connections() - opened;
            println!(
                "{name}, round {r}: {passed} handoffs, {opened} connections opened\n{}",
                report(&clients, &plans, &direct, &proxied)
            );
        }
        if differing(&plans, &direct, &proxied).is_empty() {
            continue;
        }
        let full = report(&clients, &plans, &direct, &proxied);
        let mut alone = String::new();
        for i in differing(&plans, &direct, &proxied) {
            let p = &plans[i];
            let b = run_paced(&clients[i].proxy, &p.msgs, &p.chunks, &p.pauses, true).await;
            let verdict = if agree(&direct[i], &b, &p.msgs) { "agrees" } else { "DIFFERS" };
            alone += &format!("client {i} alone through pgtenant {verdict}: {b:?}\n");
        }
        let budget = Duration::from_secs(env_or("PGTENANT_CONC_MINIMISE_SECS", 120));
        let small = minimise(&clients, plans.clone(), budget).await;
        let (sd, sp) = round(&clients, &small).await;
        panic!(
            "{name}: round {r} (PGTENANT_CONC_SEED={seed}, PGTENANT_CONC_CASES={}) differs.\n{full}{alone}\
             shortest found (each step differed in at least 1 of 3 runs; one more run of it, which may agree):\n{}",
            r + 1,
            report(&clients, &small, &sd, &sp)
        );
    }
    let handoffs = wire.handoffs();
    println!(
        "{name}: {rounds} rounds (seed {seed}) in {:.1} s, {} sequences ({split_runs} in several writes), {} server connections, \
         {handoffs} handoffs between tenants, {interleaved} rounds where a client had the server again after another tenant; \
         accepted differences: {known:?}",
        started.elapsed().as_secs_f64(),
        rounds * clients.len(),
        wire.connections(),
    );
    // The pool really was shared, and (one client per tenant) clients really took turns on it
    // within their sequences.
    assert!(handoffs * 2 >= rounds as u64, "{handoffs} handoffs between tenants in {rounds} rounds");
    if per_tenant == 1 {
        assert!(interleaved * 20 >= rounds, "{interleaved} of {rounds} rounds interleaved mid-sequence");
    }
}

/// The default rounds per test: about 13 s each (the two run side by side) on 2 cores.
const ROUNDS: u64 = 60;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_tenants_sharing_one_server_connection_match_postgres() {
    let rounds = env_or("PGTENANT_CONC_CASES", ROUNDS) as usize;
    interleave(3, 1, 1, env_or("PGTENANT_CONC_SEED", 0xc0c0_0001), rounds).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tenants_with_two_clients_each_sharing_two_server_connections_match_postgres() {
    let rounds = env_or("PGTENANT_CONC_CASES", ROUNDS) as usize;
    interleave(2, 2, 2, env_or("PGTENANT_CONC_SEED", 0xc0c0_0002), rounds).await;
}

/// The accepted differences are no wider than their rules: each only with its cause in the
/// sequence and only as the first different reply.
#[test]
fn the_accepted_differences_need_their_cause() {
    use Msg::*;
    let v = |r: &[&str]| r.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    // The tenant's search_path lost behind a DISCARD ALL is a difference (no longer
    // accepted: pgtenant sets it again behind the reset).
    let copy = [Query("DISCARD ALL"), Query("COPY fz FROM STDIN"), CopyFail, Sync, Terminate];
    let (pg, ours) = (v(&["C", "ZI", "G", "E:57014", "ZI", "ZI"]), v(&["C", "ZI", "E:42P01", "ZI", "ZI"]));
    assert!(accepted(&pg, &ours, &copy).is_none());
    let schema = [Query("DISCARD ALL"), Query("SELECT current_schema()"), Terminate];
    let pg = v(&["C", "ZI", "T", "D:conct1", "C", "ZI"]);
    assert!(accepted(&pg, &v(&["C", "ZI", "T", "D:public", "C", "ZI"]), &schema).is_none());
    assert!(
        accepted(&pg, &v(&["C", "ZI", "T", "D:conct2", "C", "ZI"]), &schema).is_none(),
        "another tenant's schema"
    );
    let unnamed =
        [Parse("", "SELECT 1"), Execute("c", 0), Parse("", "SELECT 2"), Sync, Bind("", ""), Sync, Terminate];
    let pg = v(&["1", "E:34000", "ZI", "2", "ZI"]);
    assert!(accepted(&pg, &v(&["1", "E:34000", "ZI", "E:26000", "ZI"]), &unnamed).is_some());
    let set = [
        Query("SET statement_timeout = '7s'"),
        Query("DISCARD ALL"),
        Query("SHOW statement_timeout"),
        Terminate,
    ];
    // A SET that comes back after the client's DISCARD ALL is a difference (no longer
    // accepted: `search_path::a_reset_of_the_session_forgets_the_clients_settings`).
    let pg = v(&["C", "ZI", "C", "ZI", "T", "D:0", "C", "ZI"]);
    assert!(accepted(&pg, &v(&["C", "ZI", "C", "ZI", "T", "D:7s", "C", "ZI"]), &set).is_none());
    let parsed_first = [Parse("", "SELECT 1"), Sync, Bind("", ""), Sync, Terminate];
    let pg = v(&["1", "ZI", "2", "ZI"]);
    assert!(
        accepted(&pg, &v(&["1", "ZI", "E:26000", "ZI"]), &parsed_first).is_none(),
        "a Parse that was not skipped"
    );
}
