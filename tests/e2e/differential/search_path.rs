//! Found by the concurrent run (`concurrent`): what a session reset (DISCARD ALL, RESET ALL,
//! RESET, SET … TO DEFAULT) leaves of a schema tenant's search_path, a shared tenant's
//! setting and a client's own SETs, against PostgreSQL, whose reset takes a setting back to
//! the login's value. The client's SETs are forgotten; the tenant's setting is set again by
//! pgtenant right behind the reset, on the same server connection, before the client's next
//! statement (`client::restore`), in both pool modes.

use super::*;

/// Resets of the search_path a session got with its login.
const RESETS: [&str; 5] = [
    "DISCARD ALL",
    "RESET ALL",
    "RESET search_path",
    "SET search_path TO DEFAULT",
    "SET SESSION search_path = DEFAULT",
];

/// Sequences with a reset (`R`, replaced by each of [`RESETS`]) and statements on the tenant's
/// table behind it, each with the writes it is cut into: separately, in the same write, simple
/// and extended, before and after a Sync.
fn reset_sequences(reset: &'static str) -> Vec<(Vec<Msg>, Vec<Vec<usize>>)> {
    use Msg::*;
    const COUNT: &str = "SELECT count(*) FROM fz";
    const SCHEMA: &str = "SELECT current_schema()";
    vec![
        // Simple queries, in separate writes and pipelined in one.
        (
            vec![Query(reset), Query(COUNT), Query(SCHEMA), Terminate],
            vec![vec![1, 1, 2], vec![4], vec![3, 1]],
        ),
        // The reset, then an extended batch (Npgsql prepends its DISCARD ALL so).
        (
            vec![
                Query(reset),
                Parse("", COUNT),
                Bind("", ""),
                Execute("", 0),
                Sync,
                Query(SCHEMA),
                Terminate,
            ],
            vec![vec![7], vec![1, 6], vec![5, 2]],
        ),
        // The reset in an extended batch, statements behind it before and after its Sync.
        (
            vec![
                Parse("", reset),
                Bind("", ""),
                Execute("", 0),
                Parse("s1", COUNT),
                Bind("", "s1"),
                Execute("", 0),
                Sync,
                Parse("", SCHEMA),
                Bind("", ""),
                Execute("", 0),
                Sync,
                Query(COUNT),
                Terminate,
            ],
            vec![vec![13], vec![7, 6], vec![3, 10]],
        ),
        // A reset run by the extended protocol, then an error before the Sync: DISCARD ALL,
        // committed as it completes, stays; RESET ALL is rolled back.
        (
            vec![
                Parse("", reset),
                Bind("", ""),
                Execute("", 0),
                Query("SET search_path TO public"),
                Parse("", reset),
                Bind("", ""),
                Execute("", 0),
                Parse("", "SELECT 1/0"),
                Bind("", ""),
                Execute("", 0),
                Sync,
                Query(SCHEMA),
                Query(COUNT),
                Terminate,
            ],
            vec![vec![14], vec![4, 10]],
        ),
        // The reset's unnamed statement bound again behind the reset: the client's, not
        // pgtenant's.
        (
            vec![
                Parse("", reset),
                Bind("", ""),
                Execute("", 0),
                Bind("p", ""),
                Execute("p", 0),
                Sync,
                Query(SCHEMA),
                Terminate,
            ],
            vec![vec![8]],
        ),
        // In a transaction block: rolled back, the reset and pgtenant's restore both go.
        (
            vec![
                Query("BEGIN"),
                Query("SET LOCAL search_path TO public"),
                Query(reset),
                Query(SCHEMA),
                Query("ROLLBACK"),
                Query(SCHEMA),
                Query(COUNT),
                Terminate,
            ],
            vec![vec![8], vec![2, 6]],
        ),
        // In a failed transaction block: the reset fails, and so only the client's error.
        (
            vec![
                Query("BEGIN"),
                Query("SELECT 1/0"),
                Query(reset),
                Query("ROLLBACK"),
                Query(COUNT),
                Terminate,
            ],
            vec![vec![6]],
        ),
    ]
}

/// On PostgreSQL, a session whose search_path came with the login (`options`) gets it back
/// from DISCARD ALL, RESET ALL, RESET search_path and SET search_path TO DEFAULT: the reset
/// value is the login's. Through pgtenant, in transaction and session mode, the statements
/// behind the reset find the tenant's tables too, in a later write or in the same one (simple
/// queries, an extended batch behind the reset, the reset inside an extended batch).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_keeps_the_tenants_search_path_for_the_next_statement() {
    let group = concurrent::tenant_group(1, 1).await;
    let mut differ = Vec::new();
    let (mut runs, mut kept) = (0, false);
    for mode in [PoolMode::Transaction, PoolMode::Session] {
        let h = start(config(vec![with_mode(group[0].clone(), mode, 1)])).await;
        let client = concurrent::clients(&group, 1, h.addr).remove(0);
        for reset in RESETS {
            for (msgs, cuts) in reset_sequences(reset) {
                for chunks in cuts {
                    let a = run_paced(&client.direct, &msgs, &chunks, &[], true).await;
                    let b = run_paced(&client.proxy, &msgs, &chunks, &[], true).await;
                    // The sequences ran: PostgreSQL answered rows (the tenant's schema where
                    // nothing rolled the reset back after a SET).
                    assert!(a.iter().any(|r| r.starts_with("D:")), "{msgs:?}: PostgreSQL {a:?}");
                    kept |= a.contains(&format!("D:{}", group[0].id));
                    runs += 1;
                    if b != a {
                        differ.push(format!(
                            "{mode:?} {msgs:?} in writes {chunks:?}:\n  PostgreSQL {a:?}\n  pgtenant   {b:?}"
                        ));
                    }
                }
            }
        }
    }
    assert!(runs >= 100 && kept, "{runs} runs; PostgreSQL kept the login's search_path: {kept}");
    assert!(differ.is_empty(), "{} of {runs} differ:\n{}", differ.len(), differ.join("\n"));
}

/// What Npgsql does in session mode when it takes a connection from its own pool: the
/// DISCARD ALL it sent when the connection went back, in the same write as the next command
/// (extended protocol). The command reads the tenant's table, every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn npgsql_s_discard_all_keeps_the_tenants_tables_in_session_mode() {
    use Msg::*;
    let group = concurrent::tenant_group(1, 1).await;
    let h = start(config(vec![with_mode(group[0].clone(), PoolMode::Session, 1)])).await;
    let client = concurrent::clients(&group, 1, h.addr).remove(0);
    let command =
        |sql| [Query("DISCARD ALL"), Parse("", sql), Bind("", ""), Describe(b'P', ""), Execute("", 0), Sync];
    let query = "SELECT current_schema(), count(*) FROM fz";
    let mut msgs = vec![Query(query)];
    for _ in 0..3 {
        msgs.extend(command(query));
    }
    msgs.push(Terminate);
    let got = run_paced(&client.proxy, &msgs, &[1, 6, 6, 7], &[], true).await;
    let rows: Vec<&String> = got.iter().filter(|r| r.starts_with("D:")).collect();
    let row = format!("D:{},0", group[0].id);
    assert_eq!(rows, [&row, &row, &row, &row], "{got:?}");
    assert!(!got.iter().any(|r| r.starts_with("E:")), "{got:?}");
    assert_eq!(got, run_paced(&client.direct, &msgs, &[1, 6, 6, 7], &[], true).await, "as on PostgreSQL");
}

/// A shared tenant's setting (`pgtenant.tenant_id`, what its row-level security reads) after
/// RESET ALL, DISCARD ALL or RESET of it is still the tenant's for the client's next
/// statement, as on PostgreSQL when the setting came with the login: never empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_keeps_the_shared_tenants_setting() {
    use Msg::*;
    let mut group = concurrent::tenant_group(1, 1).await;
    group[0].isolation = pgtenant::model::Isolation::Shared;
    let id = group[0].id.clone();
    let setting = "SELECT current_setting('pgtenant.tenant_id', true)";
    let mut differ = Vec::new();
    for mode in [PoolMode::Transaction, PoolMode::Session] {
        let h = start(config(vec![with_mode(group[0].clone(), mode, 1)])).await;
        let mut client = concurrent::clients(&group, 1, h.addr).remove(0);
        if let Target::Direct { options, .. } = &mut client.direct {
            *options = Some(format!("-cpgtenant.tenant_id={id}"));
        }
        for reset in
            ["RESET ALL", "DISCARD ALL", "RESET pgtenant.tenant_id", "SET pgtenant.tenant_id TO DEFAULT"]
        {
            let sequences = [
                vec![Query(reset), Query(setting), Terminate],
                vec![
                    Parse("", reset),
                    Bind("", ""),
                    Execute("", 0),
                    Parse("", setting),
                    Bind("", ""),
                    Execute("", 0),
                    Sync,
                    Terminate,
                ],
            ];
            for msgs in sequences {
                for chunks in [vec![msgs.len()], vec![1, msgs.len() - 1]] {
                    let a = run_paced(&client.direct, &msgs, &chunks, &[], true).await;
                    let b = run_paced(&client.proxy, &msgs, &chunks, &[], true).await;
                    assert!(a.contains(&format!("D:{id}")), "PostgreSQL keeps the login's value: {a:?}");
                    if b != a {
                        differ.push(format!(
                            "{mode:?} {msgs:?} in {chunks:?}: PostgreSQL {a:?}, pgtenant {b:?}"
                        ));
                    }
                }
            }
        }
    }
    assert!(differ.is_empty(), "{}", differ.join("\n"));
}

/// Found by the concurrent run (seed 22, round 1818, 3 tenants on a pool of one; it happens
/// alone too): a client's own SET, then its DISCARD ALL or RESET ALL, then SHOW. On PostgreSQL
/// the reset takes the setting back to the login's value; through pgtenant the SET must not
/// come back on the client's next server connection or transaction either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_of_the_session_forgets_the_clients_settings() {
    use Msg::*;
    let group = concurrent::tenant_group(1, 1).await;
    let mut differ = Vec::new();
    for mode in [PoolMode::Transaction, PoolMode::Session] {
        let h = start(config(vec![with_mode(group[0].clone(), mode, 1)])).await;
        let client = concurrent::clients(&group, 1, h.addr).remove(0);
        for reset in ["DISCARD ALL", "RESET ALL", "RESET statement_timeout"] {
            let msgs = [
                Query("SET statement_timeout = '7s'"),
                Query(reset),
                Query("SHOW statement_timeout"),
                Terminate,
            ];
            for chunks in [&[4][..], &[1, 1, 2]] {
                let a = run_paced(&client.direct, &msgs, chunks, &[], true).await;
                let b = run_paced(&client.proxy, &msgs, chunks, &[], true).await;
                assert_eq!(
                    a,
                    ["C", "ZI", "C", "ZI", "T", "D:0", "C", "ZI"],
                    "{msgs:?} in {chunks:?}: PostgreSQL"
                );
                if b != a {
                    differ.push(format!(
                        "{mode:?} {msgs:?} in writes {chunks:?}: PostgreSQL {a:?}, pgtenant {b:?}"
                    ));
                }
            }
        }
    }
    assert!(differ.is_empty(), "{}", differ.join("\n"));
}

/// The COMMIT that ends pgtenant's restore behind a DISCARD ALL run by the extended protocol
/// warns that no transaction is in progress: the client is not sent that warning (the
/// differential's replies leave notices out, so the bytes are read here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_restore_behind_an_extended_discard_all_sends_the_client_no_notice() {
    use Msg::*;
    let group = concurrent::tenant_group(1, 1).await;
    for mode in [PoolMode::Transaction, PoolMode::Session] {
        let h = start(config(vec![with_mode(group[0].clone(), mode, 1)])).await;
        let mut s = TcpStream::connect(h.addr).await.expect("proxy");
        let user = format!("app.{}", group[0].id);
        let params = [("user", user.as_str()), ("database", group[0].database.as_str())];
        s.write_all(&startup_packet(&params)).await.expect("startup");
        let msgs = [
            Parse("", "DISCARD ALL"),
            Bind("", ""),
            Execute("", 0),
            Parse("", "SELECT current_schema()"),
            Bind("", ""),
            Execute("", 0),
            Sync,
            Terminate,
        ];
        let mut out = Vec::new();
        for m in &msgs {
            encode(m, &mut out);
        }
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        // The login, to its ReadyForQuery; then the sequence, to the end of the connection.
        while !buf.ends_with(&[b'Z', 0, 0, 0, 5, b'I']) {
            let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
                .await
                .expect("login")
                .expect("read");
            assert!(n > 0, "closed during login");
            buf.extend_from_slice(&chunk[..n]);
        }
        buf.clear();
        s.write_all(&out).await.expect("write");
        loop {
            match tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk)).await.expect("replies") {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let mut tags = Vec::new();
        let mut pos = 0;
        while buf.len() >= pos + 5 {
            let len = i32::from_be_bytes([buf[pos + 1], buf[pos + 2], buf[pos + 3], buf[pos + 4]]) as usize;
            tags.push(buf[pos] as char);
            pos += 1 + len;
        }
        let schema = group[0].id.as_bytes();
        assert!(buf.windows(schema.len()).any(|w| w == schema), "{mode:?}: the tenant's schema");
        assert_eq!(tags.iter().collect::<String>(), "12C12DCZ", "{mode:?}: no notice, no error");
    }
}
