//! Strict links to upstreams: fake upstream servers (a TcpListener speaking just enough of
//! the protocol) that try to cut authentication short, ask for the password in clear or for
//! an absurd PBKDF2 cost are refused with 08006 and a log line, while the proxy's other
//! clients carry on.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use pgtenant::config::{TenantConfig, UpstreamConfig};
use pgtenant::model::SslMode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::raw::msg;
use crate::support::*;

#[derive(Clone, Copy, Debug)]
enum Hostile {
    /// Runs SCRAM up to the client's proof, then says AuthenticationOk without SASLFinal.
    OkWithoutSaslFinal,
    /// Sends a SASLFinal whose server signature is wrong.
    WrongServerSignature,
    /// Asks for the password in clear.
    Cleartext,
    /// Asks for md5.
    Md5,
    /// Says AuthenticationOk at once, though pgtenant has a password to prove.
    Trust,
    /// Asks for 10,000,000 PBKDF2 iterations.
    Iterations,
}

/// What a fake upstream saw.
#[derive(Default)]
struct Seen {
    connections: usize,
    /// Password messages (cleartext or md5) it received.
    passwords: Vec<Vec<u8>>,
    /// Client-final messages (SCRAM proofs) it received.
    proofs: usize,
}

struct FakeUpstream {
    port: u16,
    seen: Arc<Mutex<Seen>>,
}

impl FakeUpstream {
    async fn start(mode: Hostile) -> FakeUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let state = seen.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                state.lock().expect("seen").connections += 1;
                let state = state.clone();
                tokio::spawn(async move {
                    let _ = serve(s, mode, state).await;
                });
            }
        });
        FakeUpstream { port, seen }
    }
}

async fn read_startup(s: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let len = s.read_u32().await? as usize;
    let mut body = vec![0u8; len.saturating_sub(4).min(10_000)];
    s.read_exact(&mut body).await?;
    Ok(body)
}

async fn read_message(s: &mut TcpStream) -> std::io::Result<(u8, Vec<u8>)> {
    let tag = s.read_u8().await?;
    let len = s.read_u32().await? as usize;
    let mut body = vec![0u8; len.saturating_sub(4).min(100_000)];
    s.read_exact(&mut body).await?;
    Ok((tag, body))
}

fn auth(code: u32, data: &[u8]) -> Vec<u8> {
    let mut body = code.to_be_bytes().to_vec();
    body.extend_from_slice(data);
    msg(b'R', &body)
}

fn ok_and_ready() -> Vec<u8> {
    let mut m = auth(0, b"");
    m.extend(msg(b'K', &[0, 0, 0, 1, 0, 0, 0, 2]));
    m.extend(msg(b'Z', b"I"));
    m
}

async fn serve(mut s: TcpStream, mode: Hostile, seen: Arc<Mutex<Seen>>) -> std::io::Result<()> {
    read_startup(&mut s).await?;
    match mode {
        Hostile::Trust => s.write_all(&ok_and_ready()).await?,
        Hostile::Cleartext | Hostile::Md5 => {
            let request = match mode {
                Hostile::Cleartext => auth(3, b""),
                _ => auth(5, b"salt"),
            };
            s.write_all(&request).await?;
            let (_, body) = read_message(&mut s).await?;
            seen.lock().expect("seen").passwords.push(body);
            s.write_all(&ok_and_ready()).await?;
        }
        Hostile::OkWithoutSaslFinal | Hostile::WrongServerSignature | Hostile::Iterations => {
            s.write_all(&auth(10, b"SCRAM-SHA-256\0\0")).await?;
            let (_, body) = read_message(&mut s).await?;
            let text = String::from_utf8_lossy(&body).into_owned();
            let nonce = text.rsplit("r=").next().unwrap_or_default().to_owned();
            let iterations = if matches!(mode, Hostile::Iterations) { 10_000_000 } else { 4096 };
            let first = format!("r={nonce}fake,s={},i={iterations}", B64.encode(b"fake-salt"));
            s.write_all(&auth(11, first.as_bytes())).await?;
            let _proof = read_message(&mut s).await?;
            seen.lock().expect("seen").proofs += 1;
            if matches!(mode, Hostile::WrongServerSignature) {
                s.write_all(&auth(12, format!("v={}", B64.encode([0u8; 32])).as_bytes())).await?;
            }
            s.write_all(&ok_and_ready()).await?;
        }
    }
    // Hold the connection until pgtenant closes it.
    let mut sink = [0u8; 64];
    while s.read(&mut sink).await? > 0 {}
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_upstreams_are_refused_and_other_clients_carry_on() {
    let logs = logs();
    let real = tenant_db("linkok").await;
    let mut cfg = config(vec![real.clone()]);
    let cases = [
        (Hostile::OkWithoutSaslFinal, "AuthenticationOk before a verified SCRAM final message"),
        (Hostile::WrongServerSignature, "SCRAM signature is wrong"),
        (Hostile::Cleartext, "asks for cleartext password authentication"),
        (Hostile::Md5, "asks for md5 authentication"),
        (Hostile::Trust, "asks for no authentication"),
        (Hostile::Iterations, "10000000 PBKDF2 iterations, more than the 100000 allowed"),
    ];
    let mut fakes = Vec::new();
    for (mode, _) in cases {
        let fake = FakeUpstream::start(mode).await;
        let name = unique("fake");
        cfg.upstreams.push(UpstreamConfig {
            name: name.clone(),
            host: "127.0.0.1".into(),
            port: fake.port,
            max_connections: 5,
            sslmode: SslMode::Disable,
            sslrootcert: None,
            require_auth: None,
        });
        let id = unique("hostile");
        cfg.tenants.push(TenantConfig::new(&id, &name, "db", "role", Some("the-password")));
        fakes.push((id, fake));
    }
    let h = start(cfg).await;
    let other = h.client(&real.id).await;
    for ((mode, expected), (id, fake)) in cases.into_iter().zip(&fakes) {
        let started = Instant::now();
        let e = tokio_postgres::connect(&h.conninfo(id), tokio_postgres::NoTls)
            .await
            .err()
            .unwrap_or_else(|| panic!("{mode:?}: the login must be refused"));
        assert_eq!(code(&e), "08006", "{mode:?}: {e}");
        let message = e.as_db_error().map(|d| d.message().to_owned()).unwrap_or_default();
        assert!(!message.contains(expected), "{mode:?}: the upstream's story stays in the log: {message}");
        assert!(started.elapsed() < Duration::from_secs(4), "{mode:?}: refused at once");
        assert!(fake.seen.lock().expect("seen").connections >= 1, "{mode:?}: the fake was reached");
        assert!(
            eventually(Duration::from_secs(2), || async { !logs.lines_with(&[id, expected]).is_empty() })
                .await,
            "{mode:?}: no log line names tenant {id} and says {expected:?}"
        );
        // The proxy's other clients are unaffected.
        let v: i32 = other.query_one("SELECT 7", &[]).await.expect("other client").get(0);
        assert_eq!(v, 7, "{mode:?}");
    }
    // The password never left pgtenant in a reusable form, and no proof was computed for
    // the absurd iteration count.
    for ((mode, _), (_, fake)) in cases.iter().zip(&fakes) {
        let seen = fake.seen.lock().expect("seen");
        assert!(seen.passwords.is_empty(), "{mode:?}: a password was sent: {:?}", seen.passwords);
        if matches!(mode, Hostile::Iterations) {
            assert_eq!(seen.proofs, 0, "no SCRAM proof for 10,000,000 iterations");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_auth_lets_an_upstream_use_what_it_allows() {
    // An upstream that says cleartext is allowed gets the password (a legacy server behind
    // TLS, say): the opt-in works, and only for that upstream.
    let fake = FakeUpstream::start(Hostile::Cleartext).await;
    let mut cfg = config(vec![]);
    cfg.upstreams.push(UpstreamConfig {
        name: "legacy".into(),
        host: "127.0.0.1".into(),
        port: fake.port,
        max_connections: 5,
        sslmode: SslMode::Disable,
        sslrootcert: None,
        require_auth: Some(pgtenant::model::RequireAuth::parse("password").expect("require_auth")),
    });
    let id = unique("legacy");
    cfg.tenants.push(TenantConfig::new(&id, "legacy", "db", "role", Some("clear-pw")));
    let h = start(cfg).await;
    // The fake answers no queries; the login itself (which opens a server connection to
    // learn its parameters) is what must succeed.
    let (_client, conn) =
        tokio_postgres::connect(&h.conninfo(&id), tokio_postgres::NoTls).await.expect("login");
    drop(conn);
    let seen = fake.seen.lock().expect("seen");
    assert_eq!(seen.passwords, vec![b"clear-pw\0".to_vec()]);
    assert!(pgtenant::model::RequireAuth::parse("kerberos").is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn administrator_logins_follow_require_auth_too() {
    use pgtenant::lifecycle::upstream::Upstream;
    use pgtenant::model::{UpstreamAddr, UpstreamTls};
    for mode in [Hostile::Cleartext, Hostile::Md5, Hostile::Trust, Hostile::Iterations] {
        let fake = FakeUpstream::start(mode).await;
        let upstream = Upstream {
            name: "fake".into(),
            addr: UpstreamAddr::with_tls(
                "127.0.0.1",
                fake.port,
                UpstreamTls { mode: SslMode::Disable, root_cert: None },
            ),
            admin_user: "postgres".into(),
            admin_password: Some("the-admin-password".into()),
            admin_database: "postgres".into(),
            require_auth: None,
        };
        let e = upstream.connect("postgres").await.err().unwrap_or_else(|| panic!("{mode:?}: connected"));
        let text = e.to_string();
        // The iteration cap refuses a SCRAM upstream; require_auth refuses the others.
        let why = if matches!(mode, Hostile::Iterations) { "PBKDF2 iterations" } else { "require_auth" };
        assert!(text.contains(why), "{mode:?}: {text}");
        let seen = fake.seen.lock().expect("seen");
        assert!(seen.passwords.is_empty(), "{mode:?}: the admin password was sent: {:?}", seen.passwords);
        assert_eq!(seen.proofs, 0, "{mode:?}");
    }
    // The real cluster over TCP (SCRAM) is fine with the default.
    let upstream = Upstream {
        name: "local".into(),
        addr: UpstreamAddr::with_tls("127.0.0.1", cluster().port, UpstreamTls::default()),
        admin_user: "postgres".into(),
        admin_password: Some(pgtenant::embedded::SUPERUSER_PASSWORD.into()),
        admin_database: "postgres".into(),
        require_auth: None,
    };
    let c = upstream.connect("postgres").await.expect("SCRAM administrator login");
    c.batch_execute("SELECT 1").await.expect("query");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_does_not_poison_a_shared_role() {
    // One login role for two tenants' databases; the first tenant's catalog entry has a wrong
    // password. Its failed login must leave nothing behind that the second tenant (right
    // password, same role on the same server) would reuse.
    let role = unique("sharedrole");
    let admin = admin("postgres").await;
    admin.batch_execute(&format!("CREATE ROLE {role} LOGIN PASSWORD 'right-pw'")).await.expect("role");
    let (db_a, db_b) = (unique("poisona"), unique("poisonb"));
    for db in [&db_a, &db_b] {
        admin.batch_execute(&format!("CREATE DATABASE {db} OWNER {role}")).await.expect("db");
    }
    let wrong = TenantConfig::new(&db_a, "local", &db_a, &role, Some("wrong-pw"));
    let right = TenantConfig::new(&db_b, "local", &db_b, &role, Some("right-pw"));
    let h = start(config(vec![wrong.clone(), right.clone()])).await;
    let e =
        tokio_postgres::connect(&h.conninfo(&wrong.id), tokio_postgres::NoTls).await.err().expect("refused");
    assert_eq!(code(&e), "08006");
    let c = h.client(&right.id).await;
    let who: String = c.query_one("SELECT current_user::text", &[]).await.expect("query").get(0);
    assert_eq!(who, role);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_auth_from_the_cli_reaches_the_catalog() {
    let mut cfg = config(vec![]);
    let control = control_db(&mut cfg).await;
    let url = cfg.catalog.url.clone();
    let run = |require_auth: &'static str| {
        let add = ["upstream", "add", "legacy", "--host", "127.0.0.1", "--admin-user", "postgres"];
        let args = [&add[..], &["--require-auth", require_auth, "--url", &url]].concat();
        async move { pgtenant(&args, "").await }
    };
    let (code, _, err) = run("md5, none").await;
    assert_eq!(code, 0, "{err}");
    let stored: Option<String> = control
        .query_one("SELECT require_auth FROM pgtenant.upstreams WHERE name = 'legacy'", &[])
        .await
        .expect("row")
        .get(0);
    assert_eq!(stored.as_deref(), Some("md5,none"));
    let (code, _, _) = run("kerberos").await;
    assert_ne!(code, 0, "an unknown method is refused");
    // The catalog itself refuses what the proxy could not read.
    let bad = control
        .execute("UPDATE pgtenant.upstreams SET require_auth = 'md5;drop' WHERE name = 'legacy'", &[])
        .await;
    assert!(bad.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_auth_from_the_catalog_applies_at_once() {
    let fake = FakeUpstream::start(Hostile::Cleartext).await;
    let mut cfg = config(vec![]);
    let control = control_db(&mut cfg).await;
    control
        .execute(
            "INSERT INTO pgtenant.upstreams (name, host, port, sslmode) VALUES ('legacy', '127.0.0.1', $1, 'disable')",
            &[&i32::from(fake.port)],
        )
        .await
        .expect("upstream row");
    let id = unique("catlegacy");
    insert_tenant(&control, &TenantConfig::new(&id, "legacy", "db", "role", Some("clear-pw"))).await;
    let (h, _catalog) = start_control(cfg).await;
    // The default refuses cleartext …
    let e = tokio_postgres::connect(&h.conninfo(&id), tokio_postgres::NoTls).await.err().expect("refused");
    assert_eq!(code(&e), "08006");
    assert!(fake.seen.lock().expect("seen").passwords.is_empty());
    // … the upstream row allows it, and the next login uses it.
    control
        .execute("UPDATE pgtenant.upstreams SET require_auth = 'password' WHERE name = 'legacy'", &[])
        .await
        .expect("allow cleartext");
    let logged_in = eventually(Duration::from_secs(3), || async {
        tokio_postgres::connect(&h.conninfo(&id), tokio_postgres::NoTls).await.is_ok()
    })
    .await;
    assert!(logged_in, "require_auth from the catalog did not apply");
    assert_eq!(
        fake.seen.lock().expect("seen").passwords.first().map(Vec::as_slice),
        Some(&b"clear-pw\0"[..])
    );
}
