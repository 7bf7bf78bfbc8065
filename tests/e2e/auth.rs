//! Client authentication with SCRAM-SHA-256 against stored verifiers: drivers log in, and a
//! wrong password, an unknown user and an unknown tenant are indistinguishable.

use pgtenant::auth::Verifier;
use pgtenant::config::{Config, TenantConfig, UserConfig};
use pgtenant::model::AuthMethod;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

use crate::support::*;

fn with_user(mut t: TenantConfig, name: &str, password: &str) -> TenantConfig {
    t.users.push(UserConfig { name: name.into(), verifier: Verifier::hash(password) });
    t
}

fn scram_config(tenants: Vec<TenantConfig>) -> Config {
    let mut c = config(tenants);
    c.proxy.auth = AuthMethod::ScramSha256;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drivers_log_in_with_scram() {
    let t = with_user(tenant_db("scram").await, "app", "s3cret-A");
    let h = start(scram_config(vec![t.clone()])).await;
    // tokio-postgres
    let c = connect_str(&format!("{} password=s3cret-A", h.conninfo(&t.id))).await;
    let db: String = c.query_typed("SELECT current_database()", &[]).await.expect("query")[0].get(0);
    assert_eq!(db, t.database);
    // psql
    let out = Command::new("psql")
        .arg(h.url(&format!("app.{}", t.id), &t.database))
        .args(["-X", "-At", "-c", "SELECT 40 + 2"])
        .env("PGPASSWORD", "s3cret-A")
        .output()
        .await
        .expect("psql");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "42");
    // psql without a password is asked for one by the server and gives up.
    let out = Command::new("psql")
        .arg(h.url(&format!("app.{}", t.id), &t.database))
        .args(["-X", "-w", "-c", "SELECT 1"])
        .output()
        .await
        .expect("psql");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("password"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A full SCRAM exchange over a raw socket; returns everything the proxy sent after the
/// client's final message.
async fn raw_login(h: &Harness, user: &str, password: &str) -> Vec<u8> {
    raw_login_from(h, [127, 0, 0, 1], user, password).await
}

/// `raw_login` from a chosen loopback source address.
async fn raw_login_from(h: &Harness, source: [u8; 4], user: &str, password: &str) -> Vec<u8> {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.bind(std::net::SocketAddr::from((source, 0))).expect("bind source");
    let mut s = socket.connect(h.addr).await.expect("connect");
    s.write_all(&startup_packet(&[("user", user), ("database", "x")])).await.expect("startup");
    let mut buf = vec![0u8; 4096];
    let read_msg = async |s: &mut tokio::net::TcpStream| -> Vec<u8> {
        let mut head = [0u8; 5];
        s.read_exact(&mut head).await.expect("header");
        let len = i32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize - 4;
        let mut body = vec![0u8; len];
        s.read_exact(&mut body).await.expect("body");
        let mut m = head.to_vec();
        m.extend(body);
        m
    };
    let sasl = read_msg(&mut s).await;
    if sasl[0] == b'E' {
        return sasl;
    }
    assert_eq!(&sasl[..9], b"R\0\0\0\x17\0\0\0\x0a", "AuthenticationSASL: {sasl:?}");
    let mut client = ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
    let mut first = b"SCRAM-SHA-256\0".to_vec();
    first.extend_from_slice(&(client.message().len() as i32).to_be_bytes());
    first.extend_from_slice(client.message());
    let mut msg = vec![b'p'];
    msg.extend_from_slice(&((first.len() + 4) as i32).to_be_bytes());
    msg.extend(first);
    s.write_all(&msg).await.expect("initial response");
    let cont = read_msg(&mut s).await;
    assert_eq!(&cont[5..9], &11i32.to_be_bytes(), "SASLContinue");
    client.update(&cont[9..]).expect("server-first");
    let mut msg = vec![b'p'];
    msg.extend_from_slice(&((client.message().len() + 4) as i32).to_be_bytes());
    msg.extend_from_slice(client.message());
    s.write_all(&msg).await.expect("final response");
    let mut rest = Vec::new();
    loop {
        match tokio::time::timeout(std::time::Duration::from_secs(5), s.read(&mut buf)).await {
            Ok(Ok(0)) | Err(_) | Ok(Err(_)) => break,
            Ok(Ok(n)) => rest.extend_from_slice(&buf[..n]),
        }
        if rest.windows(6).any(|w| w == b"Z\0\0\0\x05I") {
            break;
        }
    }
    rest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_indistinguishable_and_credentials_stay_with_their_tenant() {
    let a = with_user(tenant_db("scrama").await, "app", "pw-of-a");
    let b = with_user(tenant_db("scramb").await, "app", "pw-of-b");
    let h = start(scram_config(vec![a.clone(), b.clone()])).await;
    let ok = raw_login(&h, &format!("app.{}", a.id), "pw-of-a").await;
    assert_eq!(ok[0], b'R', "SASLFinal then AuthenticationOk: {ok:?}");
    assert!(ok.windows(6).any(|w| w == b"Z\0\0\0\x05I"));

    let wrong_password = raw_login(&h, &format!("app.{}", a.id), "nope").await;
    let unknown_user = raw_login(&h, &format!("ghost.{}", a.id), "pw-of-a").await;
    let unknown_tenant = raw_login(&h, "app.nosuchtenant", "pw-of-a").await;
    // A's credential for tenant B, by the user resolver and by the options resolver.
    let cross_user = raw_login(&h, &format!("app.{}", b.id), "pw-of-a").await;
    assert_eq!(sqlstate(&wrong_password).as_deref(), Some("28P01"));
    for (what, got) in [
        ("unknown user", &unknown_user),
        ("unknown tenant", &unknown_tenant),
        ("A's password on B", &cross_user),
    ] {
        assert_eq!(got, &wrong_password, "{what} must look exactly like a wrong password");
    }
    let e = tokio_postgres::connect(
        &format!(
            "host=127.0.0.1 port={} user=app dbname=x options='tenant={}' password=pw-of-a",
            h.addr.port(),
            b.id
        ),
        tokio_postgres::NoTls,
    )
    .await
    .err()
    .expect("cross-tenant via options");
    assert_eq!(code(&e), "28P01");
}

#[tokio::test]
async fn a_tenant_can_keep_trust_while_the_proxy_requires_scram() {
    let mut open = tenant_db("trustover").await;
    open.auth = Some(AuthMethod::Trust);
    let h = start(scram_config(vec![open.clone()])).await;
    let c = h.client(&open.id).await;
    c.batch_execute("SELECT 1").await.expect("trust tenant");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_users_managed_from_the_cli_apply_at_once() {
    let t = tenant_db("cliuser").await;
    let mut cfg = scram_config(vec![]);
    let control = control_db(&mut cfg).await;
    insert_tenant(&control, &t).await;
    let url = cfg.catalog.url.clone();
    let (h, _catalog) = start_control(cfg).await;
    let login = |pw: &'static str| {
        let conninfo = format!("{} password={pw}", h.conninfo(&t.id));
        async move { tokio_postgres::connect(&conninfo, tokio_postgres::NoTls).await.map(|_| ()) }
    };
    assert_eq!(code(&login("cli-pw").await.expect_err("no user yet")), "28P01");
    let (code, out, err) =
        pgtenant(&["tenant", "user", "add", &t.id, "app", "--url", &url], "cli-pw\n").await;
    assert_eq!(code, 0, "{out}{err}");
    // The catalog's NOTIFY drops the cached tenant: the new credential works at once.
    assert!(eventually(std::time::Duration::from_secs(1), || async { login("cli-pw").await.is_ok() }).await);
    let stored: String = control
        .query_one("SELECT verifier FROM pgtenant.tenant_users WHERE tenant_id = $1", &[&t.id])
        .await
        .expect("row")
        .get(0);
    assert!(stored.starts_with("SCRAM-SHA-256$") && !stored.contains("cli-pw"), "no plaintext stored");
    let (code, out, err) = pgtenant(&["tenant", "user", "list", &t.id, "--url", &url], "").await;
    assert!(code == 0 && out.starts_with("app\t"), "{out}{err}");
    let (code, out, err) = pgtenant(&["tenant", "user", "remove", &t.id, "app", "--url", &url], "").await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(eventually(std::time::Duration::from_secs(1), || async { login("cli-pw").await.is_err() }).await);
    // hash-password prints a verifier the proxy accepts.
    let (code, out, err) = pgtenant(&["hash-password"], "another\n").await;
    assert!(code == 0 && Verifier::parse(out.trim()).is_some(), "{out}{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_are_throttled_per_tenant_and_address() {
    let t = with_user(tenant_db("throttle").await, "app", "right");
    let other = with_user(tenant_db("throttlenat").await, "app", "other-right");
    let mut cfg = scram_config(vec![t.clone(), other.clone()]);
    cfg.proxy.max_auth_failures = 3;
    let h = start(cfg).await;
    let user = format!("app.{}", t.id);
    for _ in 0..3 {
        assert_eq!(
            sqlstate(&raw_login_from(&h, [127, 0, 0, 3], &user, "guess").await).as_deref(),
            Some("28P01")
        );
    }
    // The guessing address is now refused at once for that tenant, even with the right
    // password …
    let refused = raw_login_from(&h, [127, 0, 0, 3], &user, "right").await;
    assert_eq!(sqlstate(&refused).as_deref(), Some("28P01"));
    assert!(String::from_utf8_lossy(&refused).contains("too many failed authentication attempts"));
    // … while another address logs in, and so does another tenant's client behind the same
    // (NAT) address.
    let ok = raw_login_from(&h, [127, 0, 0, 4], &user, "right").await;
    assert!(ok.windows(6).any(|w| w == b"Z\0\0\0\x05I"), "{ok:?}");
    let ok = raw_login_from(&h, [127, 0, 0, 3], &format!("app.{}", other.id), "other-right").await;
    assert!(ok.windows(6).any(|w| w == b"Z\0\0\0\x05I"), "another tenant behind the address: {ok:?}");
}

/// Opens a connection from `source` and runs the startup up to the proxy's first answer:
/// the socket and that answer (AuthenticationSASL when an exchange started).
async fn start_exchange(
    h: &Harness,
    source: [u8; 4],
    params: &[(&str, &str)],
) -> (tokio::net::TcpStream, Vec<u8>) {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.bind(std::net::SocketAddr::from((source, 0))).expect("bind source");
    let mut s = socket.connect(h.addr).await.expect("connect");
    s.write_all(&startup_packet(params)).await.expect("startup");
    let first = read_one(&mut s).await;
    (s, first)
}

async fn read_one(s: &mut tokio::net::TcpStream) -> Vec<u8> {
    let mut head = [0u8; 5];
    s.read_exact(&mut head).await.expect("header");
    let len = (i32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize).saturating_sub(4);
    let mut m = head.to_vec();
    m.resize(5 + len, 0);
    s.read_exact(&mut m[5..]).await.expect("body");
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_guesses_cannot_all_be_tried() {
    let t = with_user(tenant_db("parallel").await, "app", "right");
    let mut cfg = scram_config(vec![t.clone()]);
    cfg.proxy.max_auth_failures = 3;
    let h = start(cfg).await;
    let user = format!("app.{}", t.id);
    // Ten guesses open at once: each takes its slot when its exchange starts, so only three
    // exchanges start and the other seven are refused before any password is looked at.
    let mut started = Vec::new();
    let mut refused = 0;
    for _ in 0..10 {
        let (s, first) = start_exchange(&h, [127, 0, 0, 5], &[("user", &user), ("database", "x")]).await;
        match first[0] {
            b'R' => started.push(s),
            b'E' => {
                assert!(String::from_utf8_lossy(&first).contains("too many failed authentication attempts"));
                refused += 1;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!((started.len(), refused), (3, 7));
    // A client that leaves before sending its proof (libpq does, to ask for a password)
    // gives its slot back.
    drop(started.pop());
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let ok = raw_login_from(&h, [127, 0, 0, 5], &user, "right").await;
    assert!(ok.windows(6).any(|w| w == b"Z\0\0\0\x05I"), "{ok:?}");
}

/// The server-first-message (salt, iterations) the proxy shows for a login.
async fn server_first(h: &Harness, params: &[(&str, &str)]) -> String {
    let (mut s, sasl) = start_exchange(h, [127, 0, 0, 1], params).await;
    assert_eq!(&sasl[..9], b"R\0\0\0\x17\0\0\0\x0a", "AuthenticationSASL: {sasl:?}");
    let client_first = b"n,,n=,r=abcdefghijklmnop";
    let mut body = b"SCRAM-SHA-256\0".to_vec();
    body.extend_from_slice(&(client_first.len() as i32).to_be_bytes());
    body.extend_from_slice(client_first);
    let mut msg = vec![b'p'];
    msg.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    msg.extend(body);
    s.write_all(&msg).await.expect("initial response");
    let cont = read_one(&mut s).await;
    assert_eq!(&cont[5..9], &11i32.to_be_bytes(), "SASLContinue");
    // "r=<nonce>,s=<salt>,i=<iterations>": the nonce is fresh each time; the rest is what
    // must not tell names apart.
    let text = String::from_utf8_lossy(&cont[9..]).into_owned();
    text.split(',').filter(|a| !a.starts_with("r=")).collect::<Vec<_>>().join(",")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_names_show_one_salt_whatever_the_spelling() {
    let t = with_user(tenant_db("salt").await, "app", "pw");
    let mut cfg = scram_config(vec![t.clone()]);
    cfg.proxy.mock_secret = "shared by every proxy of this deployment".into();
    let h = start(cfg.clone()).await;
    let by_user =
        |tenant: &str| vec![("user".to_owned(), format!("app.{tenant}")), ("database".into(), "x".into())];
    let by_options = |tenant: &str| {
        vec![
            ("user".to_owned(), "app".to_owned()),
            ("database".into(), "x".into()),
            ("options".into(), format!("tenant={tenant}")),
        ]
    };
    let first = async |h: &Harness, p: Vec<(String, String)>| {
        let p: Vec<(&str, &str)> = p.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        server_first(h, &p).await
    };
    // A real user: one salt whichever resolver names the tenant.
    let real = first(&h, by_user(&t.id)).await;
    assert_eq!(real, first(&h, by_options(&t.id)).await);
    assert!(real.ends_with(",i=4096"), "{real}");
    // An unknown tenant behaves the same: one stable salt for both spellings (a different
    // salt per spelling would tell an attacker the tenant does not exist) …
    let ghost = first(&h, by_user("nosuchtenant")).await;
    assert_eq!(ghost, first(&h, by_options("nosuchtenant")).await);
    assert_eq!(ghost, first(&h, by_user("nosuchtenant")).await, "stable");
    assert!(ghost.ends_with(",i=4096"), "{ghost}");
    assert_ne!(ghost, real);
    assert_ne!(ghost, first(&h, by_user("othertenant")).await, "keyed by the names");
    // … and so does an unknown user of a real tenant.
    let ghost_user =
        first(&h, vec![("user".into(), format!("ghost.{}", t.id)), ("database".into(), "x".into())]).await;
    let ghost_user_options = first(
        &h,
        vec![
            ("user".into(), "ghost".into()),
            ("database".into(), "x".into()),
            ("options".into(), format!("tenant={}", t.id)),
        ],
    )
    .await;
    assert_eq!(ghost_user, ghost_user_options);
    // With the same configured secret, another proxy (or this one after a restart) shows
    // the same salt for the unknown name, as it would for a real user.
    let h2 = start(cfg).await;
    assert_eq!(ghost, first(&h2, by_user("nosuchtenant")).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_passwords_are_encrypted_at_rest_and_keys_rotate() {
    use pgtenant::catalog::secrets::Keys;
    let t = tenant_db("enc").await;
    let password = t.password.clone().expect("password");
    let mut cfg = config(vec![]);
    let control = control_db(&mut cfg).await;
    let mut row = t.clone();
    row.password = None;
    insert_tenant(&control, &row).await;
    let url = cfg.catalog.url.clone();
    let (k1, k2) = (Keys::generate_line("k1"), Keys::generate_line("k2"));
    // The password goes in under k1 …
    let (code, out, err) = pgtenant_env(
        &["tenant", "set-password", &t.id, "--url", &url],
        &format!("{password}\n"),
        &[("PGTENANT_MASTER_KEYS", &k1)],
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    // … the proxy knows k2 (current) and k1.
    let dir = tempfile::tempdir().expect("tempdir");
    let key_file = dir.path().join("keys");
    std::fs::write(&key_file, format!("{k2}\n{k1}\n")).expect("key file");
    cfg.catalog.key_file = key_file.display().to_string();
    let (h, _catalog) = start_control(cfg).await;
    async fn catalog_dump(c: &tokio_postgres::Client) -> String {
        let rows = c.query("SELECT row_to_json(t)::text FROM pgtenant.tenants t", &[]).await.expect("dump");
        rows.iter().map(|r| r.get::<_, String>(0)).collect::<Vec<_>>().join("\n")
    }
    let before = catalog_dump(&control).await;
    assert!(!before.contains(&password), "plaintext password in the catalog: {before}");
    assert!(before.contains("enc:v1:k1:"));
    h.client(&t.id).await.batch_execute("SELECT 1").await.expect("reachable with a k1 password");
    // An upstream admin password stored in plaintext is encrypted by the rotation too.
    control
        .execute("UPDATE pgtenant.upstreams SET admin_user = 'postgres', admin_password = 'admin-plain'", &[])
        .await
        .expect("admin password");
    // Rotate to k2: every tenant stays reachable.
    let both = format!("{k2}\n{k1}");
    let (code, out, err) =
        pgtenant_env(&["catalog", "rotate-key", "--url", &url], "", &[("PGTENANT_MASTER_KEYS", &both)]).await;
    assert!(code == 0 && out.contains("1 tenant password(s) now under key k2"), "{out}{err}");
    assert!(out.contains("1 upstream admin password(s) now under key k2"), "{out}");
    let admin: String = control
        .query_one("SELECT admin_password FROM pgtenant.upstreams", &[])
        .await
        .expect("admin password")
        .get(0);
    assert!(admin.starts_with("enc:v1:k2:"), "{admin}");
    let after = catalog_dump(&control).await;
    assert!(
        !after.contains(&password) && after.contains("enc:v1:k2:") && !after.contains("enc:v1:k1:"),
        "{after}"
    );
    h.proxy.pools.close_idle();
    assert!(
        eventually(std::time::Duration::from_secs(2), || async {
            match tokio_postgres::connect(&h.conninfo(&t.id), tokio_postgres::NoTls).await {
                Ok((c, conn)) => {
                    tokio::spawn(conn);
                    c.batch_execute("SELECT 1").await.is_ok()
                }
                Err(_) => false,
            }
        })
        .await,
        "tenant unreachable after key rotation"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn md5_for_old_clients_when_a_tenant_opts_in() {
    let mut t = tenant_db("md5client").await;
    t.auth = Some(AuthMethod::Md5);
    let user = format!("app.{}", t.id);
    t.users.push(UserConfig {
        name: "app".into(),
        verifier: postgres_protocol::password::md5(b"old-pw", &user),
    });
    let h = start(scram_config(vec![t.clone()])).await;
    let run = |pw: &'static str| {
        let url = h.url(&user, &t.database);
        async move {
            Command::new("psql")
                .arg(url)
                .args(["-X", "-At", "-w", "-c", "SELECT 40 + 2"])
                .env("PGPASSWORD", pw)
                .output()
                .await
                .expect("psql")
        }
    };
    let ok = run("old-pw").await;
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert_eq!(String::from_utf8_lossy(&ok.stdout).trim(), "42");
    let bad = run("wrong").await;
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("password authentication failed"));
    // The same through tokio-postgres.
    let c = connect_str(&format!("{} password=old-pw", h.conninfo(&t.id))).await;
    c.batch_execute("SELECT 1").await.expect("md5 login");
}
