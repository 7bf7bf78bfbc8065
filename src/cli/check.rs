//! `pgtenant check-config`: what `Config::load` validates, plus what `serve` would refuse
//! or silently ignore when it starts or connects (files that do not load, settings that the
//! rest of the file makes meaningless).

use crate::config::Config;
use crate::model::SslMode;

/// What the check found: problems `serve` would stop on (or fail every connection with),
/// and settings it would ignore.
#[derive(Debug, Default)]
pub struct Findings {
    pub errors: Vec<String>,
    pub warnings: Vec<String>,
}

/// Checks the files `config` names and the settings it makes moot.
pub fn check(config: &Config) -> Findings {
    let mut f = Findings::default();
    if let Err(e) = crate::auth::tls::Tls::new(&config.tls) {
        f.errors.push(format!("[tls]: {e}"));
    }
    if config.tls.cert.is_empty() && (config.tls.require || !config.tls.certs.is_empty()) {
        f.warnings.push("[tls] require / certs are ignored: [tls] cert is not set, so TLS is off".into());
    }
    if !config.catalog.key_file.is_empty() || std::env::var_os("PGTENANT_MASTER_KEYS").is_some() {
        if let Err(e) = crate::catalog::secrets::load(&config.catalog.key_file) {
            f.errors.push(format!("[catalog] key_file: {e}"));
        }
    }
    for u in &config.upstreams {
        let verify = matches!(u.sslmode, SslMode::VerifyCa | SslMode::VerifyFull);
        match (&u.sslrootcert, verify) {
            (None, true) => f.errors.push(format!(
                "upstream {:?}: sslmode {} needs sslrootcert (every connection to it would fail)",
                u.name,
                u.sslmode.as_str()
            )),
            (Some(ca), true) => {
                if let Err(e) = crate::auth::tls::client_config(u.sslmode, Some(ca)) {
                    f.errors.push(format!("upstream {:?}: sslrootcert {ca:?}: {e}", u.name));
                }
            }
            (Some(_), false) => f.warnings.push(format!(
                "upstream {:?}: sslrootcert is ignored with sslmode {}",
                u.name,
                u.sslmode.as_str()
            )),
            (None, false) => {}
        }
    }
    if !config.catalog.url.is_empty() && (!config.upstreams.is_empty() || !config.tenants.is_empty()) {
        f.warnings.push(format!(
            "[[upstreams]] ({}) and [[tenants]] ({}) are ignored: [catalog] url is set, so the control database is the catalog",
            config.upstreams.len(),
            config.tenants.len()
        ));
    }
    if !config.admin.token_sha256.is_empty() && config.admin.listen.is_empty() {
        f.warnings.push("[admin] token_sha256 is ignored: [admin] listen is not set".into());
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_missing_files_and_ignored_sections() {
        let c = Config::parse(
            "[tls]\ncert = '/nonexistent/cert.pem'\nkey = '/nonexistent/key.pem'\n\
             [catalog]\nurl = 'host=x'\nkey_file = '/nonexistent/keys'\n\
             [[upstreams]]\nname = 'u'\nhost = 'h'\nsslmode = 'verify-full'\n",
        )
        .expect("valid");
        let f = check(&c);
        let all = format!("{f:?}");
        assert_eq!(f.errors.len(), 3, "{all}");
        assert!(f.errors.iter().any(|e| e.starts_with("[tls]")), "{all}");
        assert!(f.errors.iter().any(|e| e.contains("key_file")), "{all}");
        assert!(f.errors.iter().any(|e| e.contains("needs sslrootcert")), "{all}");
        assert!(f.warnings.iter().any(|w| w.contains("are ignored: [catalog] url is set")), "{all}");
        assert!(check(&Config::parse("").expect("empty")).errors.is_empty());
    }
}
