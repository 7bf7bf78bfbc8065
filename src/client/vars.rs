//! Session variables a client expects on whatever server connection it is given: the
//! reportable settings it was told at login (or changed since), and the settings it sent in
//! its startup packet. At checkout, the difference from what the server connection carries
//! becomes one `SET …; RESET …` query pipelined in front of the client's first message.

use super::setcmd::SetCmd;
use crate::pool::{ServerConn, ServerParams};
use crate::protocol::startup::{option_words, unescape_option, StartupMessage};
use crate::sql::{quote_literal, quote_literal_ascii};
use crate::tenant::Resolved;

/// Reportable settings pgtenant keeps in step between a client and its server connections
/// (the `GUC_REPORT` settings a client may change: see `src/backend/utils/misc/guc_tables.c`).
pub const SYNCED: [&str; 6] = [
    "application_name",
    "client_encoding",
    "DateStyle",
    "IntervalStyle",
    "TimeZone",
    "standard_conforming_strings",
];

/// Startup parameters that are not settings.
const NOT_SETTINGS: [&str; 4] = ["user", "database", "options", "replication"];

/// What one client expects of its server connections.
///
/// Memory: a client shares its pool's ParameterStatus list (`base`) and keeps only the
/// reportable values in which it differs (most clients: none), so an idle client holds no
/// copy of settings every client of the pool has.
#[derive(Debug, Default, Clone)]
pub struct ClientVars {
    /// The pool's ParameterStatus values, shared by its clients: the reportable settings
    /// among them are this client's, except where `reported` holds its own value.
    base: ServerParams,
    /// Reportable settings this client holds a value of its own for (name and value as the
    /// server spells them, see `super::reported`): sent in its startup packet or reported
    /// since, and not `base`'s.
    reported: Vec<(String, String)>,
    /// Other settings: from the startup packet (`extra_float_digits`, `-c` options …) and
    /// from the tenant's isolation (`search_path`, `pgtenant.tenant_id`, which win).
    other: Vec<(String, String)>,
    /// The startup packet's settings among `other` (not the tenant's), as the login gave
    /// them: what a RESET, RESET ALL or DISCARD ALL brings the client back to, as PostgreSQL
    /// brings a session back to its login's values. Boxed (a pointer), and only when the
    /// login gave any (or named the temporary schema).
    login: Option<Box<Login>>,
    /// An order-independent hash of the reportable settings and `other` (never 0).
    fingerprint: u64,
}

/// The settings a client's startup packet gave (see `ClientVars::login`).
#[derive(Debug, Clone, Default)]
struct Login {
    settings: Vec<(String, String)>,
    /// The reportable settings it gave that differ from the pool's (`TimeZone`, `DateStyle` …),
    /// as the server spells them.
    reported: Vec<(String, String)>,
    /// A startup setting names the temporary schema (`-c search_path=pg_temp`): a plain
    /// CREATE may then make a temporary object on any connection the client gets, each of
    /// which is reset before another client uses it.
    temp_schema: bool,
}

fn synced(name: &str) -> bool {
    SYNCED.iter().any(|s| s.eq_ignore_ascii_case(name))
}

impl ClientVars {
    /// Builds the client's expectations from the pool's remembered ParameterStatus values
    /// and the client's startup packet.
    pub fn new(
        pool_params: &ServerParams,
        startup: &StartupMessage,
        resolved: &Resolved,
        tenant_vars: &[(String, String)],
    ) -> ClientVars {
        let mut vars = ClientVars { base: pool_params.clone(), ..ClientVars::default() };
        // The resolvers may have rewritten `options` (tenant token removed) and
        // application_name (`tenant:acme/worker` → `worker`).
        let options = resolved.options.as_deref().or(startup.get("options"));
        let from_options = options.map(parse_options).unwrap_or_default();
        let app_name = resolved.application_name.clone().map(|a| ("application_name".to_owned(), a));
        // PostgreSQL applies `options` first, then the packet's own parameters over them.
        let packet = startup
            .params
            .iter()
            .filter(|(k, _)| !NOT_SETTINGS.contains(&k.as_str()) && !k.starts_with("_pq_."))
            .filter(|(k, _)| !(resolved.application_name.is_some() && k == "application_name"))
            .cloned()
            .chain(app_name);
        let mut temp_schema = false;
        for (k, v) in from_options.into_iter().chain(packet) {
            if !is_setting_name(&k) || lasts_a_transaction(&k) || is_seed(&k) {
                continue;
            }
            temp_schema |= super::setcmd::names_temporary_schema(&v);
            if synced(&k) {
                // As the server would report it (`iso` → `ISO, MDY`): a client whose value
                // is the pool's, spelt otherwise, then keeps none of its own (no setup).
                let current = vars.reported_value(&k).map(String::as_str);
                let v = super::reported::spelling(&k, &v, current, &vars.base).unwrap_or(v);
                vars.set_reported(&k, v);
            } else {
                vars.other.retain(|(n, _)| !n.eq_ignore_ascii_case(&k));
                vars.other.push((k, v));
            }
        }
        for (k, _) in tenant_vars {
            vars.other.retain(|(n, _)| !n.eq_ignore_ascii_case(k));
        }
        if !vars.other.is_empty() || !vars.reported.is_empty() || temp_schema {
            // Never a tenant's own setting (should a server report it), as in `other`.
            let mut reported = vars.reported.clone();
            reported.retain(|(n, _)| !tenant_vars.iter().any(|(k, _)| k.eq_ignore_ascii_case(n)));
            let settings = vars.other.clone();
            vars.login = Some(Box::new(Login { settings, reported, temp_schema }));
        }
        for (k, v) in tenant_vars {
            vars.other.push((k.clone(), v.clone()));
        }
        vars.reported.shrink_to_fit();
        vars.other.shrink_to_fit();
        vars.refresh_fingerprint();
        vars
    }

    /// The reportable settings this client expects: `base`'s, with its own values instead
    /// where it has any, then its own for settings `base` lacks.
    fn reported(&self) -> impl Iterator<Item = (&String, &String)> {
        let shared = self
            .base
            .iter()
            .filter(|(k, _)| synced(k) && !self.reported.iter().any(|(n, _)| n.eq_ignore_ascii_case(k)));
        shared.chain(self.reported.iter()).map(|(k, v)| (k, v))
    }

    /// The value this client expects for a reportable setting, if it has one: its own, else
    /// `base`'s (the same answer as searching [`Self::reported`], without its filter per entry).
    fn reported_value(&self, name: &str) -> Option<&String> {
        if let Some((_, v)) = self.reported.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)) {
            return Some(v);
        }
        if !synced(name) {
            return None;
        }
        self.base.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v)
    }

    /// Sets the client's value of a reportable setting: kept as its own unless `base` has
    /// the same (the name is spelt as `base` spells it).
    fn set_reported(&mut self, name: &str, value: String) {
        let shared = self.base.iter().find(|(n, _)| n.eq_ignore_ascii_case(name));
        self.reported.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        match shared {
            Some((_, v)) if *v == value => {}
            Some((n, _)) => self.reported.push((n.clone(), value)),
            None => self.reported.push((name.to_owned(), value)),
        }
    }

    /// A non-reported setting the client expects (from its startup packet, its SETs or the
    /// tenant's isolation).
    pub fn setting(&self, name: &str) -> Option<&str> {
        self.other.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// A startup setting names the temporary schema (see [`Login`]).
    pub fn temp_schema(&self) -> bool {
        self.login.as_ref().is_some_and(|l| l.temp_schema)
    }

    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    fn refresh_fingerprint(&mut self) {
        use std::hash::{Hash, Hasher};
        let mut fp = 0u64;
        let mut lower = [0u8; 64];
        for (k, v) in self.reported().chain(self.other.iter().map(|(k, v)| (k, v))) {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            // The name without case, lowercased through a stack buffer (no allocation; one
            // hasher call a chunk, not one a byte: ~40 instructions each).
            for chunk in k.as_bytes().chunks(lower.len()) {
                let lower = &mut lower[..chunk.len()];
                lower.copy_from_slice(chunk);
                lower.make_ascii_lowercase();
                h.write(lower);
            }
            h.write_u8(0xff);
            v.hash(&mut h);
            fp ^= h.finish();
        }
        self.fingerprint = fp | 1;
    }

    /// The ParameterStatus list a client is shown at login: the pool's, with the client's
    /// own values where it sent any.
    pub fn login_params<'a>(
        &'a self,
        pool_params: &'a [(String, String)],
    ) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        // `pool_params` is `base` (see `new`): a name the client has no value of its own for
        // keeps the pool's, without the search of `base` that `reported_value` makes.
        pool_params.iter().map(|(k, v)| {
            let own = self.reported.iter().find(|(n, _)| n.eq_ignore_ascii_case(k));
            (k.as_str(), own.map_or(v, |(_, v)| v).as_str())
        })
    }

    /// Tracks a session SET/RESET the client ran outside a transaction block, so it follows
    /// the client onto its next server connection; `conn` (which ran it) is updated to match.
    /// Returns false for what is not tracked: the tenant's own isolation settings (a client
    /// cannot make them stick) and RESET ALL (which also resets them).
    pub fn apply(&mut self, cmd: &SetCmd, conn: &mut ServerConn, tenant_vars: &[(String, String)]) -> bool {
        let in_sync = conn.vars_fingerprint() == self.fingerprint;
        let tracked = self.apply_cmd(cmd, conn, tenant_vars);
        self.refresh_fingerprint();
        // A RESET back to a login value leaves `conn` with its own default: not in step.
        let matches = !matches!(cmd, SetCmd::Reset { name } if self.login_value(name).is_some());
        conn.set_vars_fingerprint(if in_sync && tracked && matches { self.fingerprint } else { 0 });
        tracked
    }

    /// What a reset (`RESET name`, `RESET ALL`, `DISCARD ALL`) takes from a server connection
    /// that PostgreSQL would keep, as values the login gave: the tenant's isolation settings
    /// and the client's startup settings it resets (see [`super::restore`]).
    pub fn after_reset(&self, cmd: &SetCmd, tenant_vars: &[(String, String)]) -> Vec<(String, String)> {
        match cmd {
            SetCmd::ResetAll | SetCmd::DiscardAll => {
                let mut all = tenant_vars.to_vec();
                if let Some(login) = self.login.as_deref() {
                    all.extend(login.settings.iter().chain(&login.reported).cloned());
                }
                all
            }
            SetCmd::Reset { name } => {
                let tenant = tenant_vars.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).cloned();
                let login = || self.login_value(name).map(|v| (name.clone(), v.clone()));
                tenant.or_else(login).into_iter().collect()
            }
            SetCmd::Set { .. } => Vec::new(),
        }
    }

    /// Whether a reset may take from a server connection what this client keeps from its
    /// login or its tenant (see [`Self::after_reset`]).
    pub fn resets_matter(&self, tenant_vars: &[(String, String)]) -> bool {
        !tenant_vars.is_empty() || self.login.is_some()
    }

    /// The value the client's login gave a setting, if it gave one.
    fn login_value(&self, name: &str) -> Option<&String> {
        let login = self.login.as_deref()?;
        let mut all = login.settings.iter().chain(&login.reported);
        all.find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v)
    }

    fn apply_cmd(&mut self, cmd: &SetCmd, conn: &mut ServerConn, tenant_vars: &[(String, String)]) -> bool {
        let is_tenant_var = |name: &str| tenant_vars.iter().any(|(k, _)| k.eq_ignore_ascii_case(name));
        match cmd {
            // Nothing of it outlives the transaction: nothing to track, nothing to reset.
            SetCmd::Set { name, .. } | SetCmd::Reset { name } if lasts_a_transaction(name) => true,
            // Replayed, it would restart the client's `random()` sequence at every handoff;
            // reset (set_config to NULL) for the next client, it would seed that one with the
            // fixed default. Untracked instead: the connection is reset, and reseeded (see
            // `pool::handoff::queue_reseed`), before another client uses it.
            SetCmd::Set { name, .. } | SetCmd::Reset { name } if is_seed(name) => false,
            SetCmd::Set { name, value } if !is_tenant_var(name) => {
                if self.reported_value(name).is_some() {
                    // The server reports these; its ParameterStatus carries the normalised value.
                    return true;
                }
                self.other.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
                self.other.push((name.clone(), value.clone()));
                conn.set_var(name, value);
                true
            }
            SetCmd::Reset { name } if !is_tenant_var(name) => {
                if self.reported_value(name).is_some() {
                    // The server reported its own default; the client's is its login's.
                    if let Some(v) = self.login_value(name).cloned() {
                        self.set_reported(name, v);
                    }
                    return true;
                }
                self.other.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
                // The server went back to its own default; the client's is its login's,
                // applied at its next checkout.
                conn.retain_vars(|n| !n.eq_ignore_ascii_case(name));
                if let Some(v) = self.login_value(name).cloned() {
                    self.other.push((name.clone(), v));
                }
                true
            }
            // RESET ALL, and DISCARD ALL (which runs it): back to the login's settings.
            // Untracked: the connection keeps its own defaults, and is reset before reuse.
            SetCmd::ResetAll | SetCmd::DiscardAll => {
                self.other.retain(|(n, _)| is_tenant_var(n));
                if let Some(login) = self.login.take() {
                    self.other.extend(login.settings.iter().cloned());
                    for (k, v) in &login.reported {
                        self.set_reported(k, v.clone());
                    }
                    self.login = Some(login);
                }
                false
            }
            _ => false,
        }
    }

    /// Records a ParameterStatus the server sent while this client held it.
    pub fn observe(&mut self, name: &str, value: &str) {
        if self.reported_value(name).is_some_and(|v| v != value) {
            self.set_reported(name, value.to_owned());
            self.refresh_fingerprint();
        }
    }

    /// The statements that bring `conn` in line with this client, updating what `conn`
    /// remembers; `None` when it already is. `pool_params` names the reportable settings
    /// (anything else `conn` carries was applied by pgtenant for a client and may need a
    /// reset). They go as unsynced extended statements ([`crate::pool::handoff::queue_setup`]).
    pub fn sync_query(&self, conn: &mut ServerConn, pool_params: &[(String, String)]) -> Option<Setup> {
        if conn.vars_fingerprint() == self.fingerprint {
            return None;
        }
        let setup = self.diff(conn, pool_params);
        conn.set_vars_fingerprint(self.fingerprint);
        setup
    }

    fn diff(&self, conn: &mut ServerConn, pool_params: &[(String, String)]) -> Option<Setup> {
        // A search_path made of identifiers (what tenant isolation sets) goes as `SET
        // search_path TO …`, each name quoted (see `quoted_identifier_list`), which shows it
        // as SET does, and application_name as `SET application_name TO '…'` unless the
        // SELECT is due anyway (see `Setup::set_application_name`). Anything else goes
        // through set_config, which parses the value as a configuration file would, so list
        // settings keep their meaning and no value can end the statement.
        //
        // The server reads the text in the client_encoding the connection has before the
        // setup (another client's, of the tenant): unless that is UTF-8, the text is ASCII
        // alone, a value beyond ASCII escaped (see `quote_literal_ascii`).
        let utf8 = conn.var("client_encoding").is_some_and(|e| e.eq_ignore_ascii_case("UTF8"));
        let literal = |v: &str| if utf8 { quote_literal(v) } else { quote_literal_ascii(v) };
        let mut set_search_path = None;
        let mut application_name = None;
        let mut sets = Vec::new();
        for (k, v) in self.reported().chain(self.other.iter().map(|(k, v)| (k, v))) {
            if conn.var(k) != Some(v.as_str()) {
                let listed = (k.eq_ignore_ascii_case("search_path") && (utf8 || v.is_ascii()))
                    .then(|| quoted_identifier_list(v))
                    .flatten();
                if let Some(list) = listed {
                    set_search_path = Some(format!("SET search_path TO {list}"));
                } else if k.eq_ignore_ascii_case("application_name") {
                    // A plain string setting: `SET … TO '…'` gives it the literal's value, as
                    // set_config does (see `Setup::set_application_name`).
                    application_name = Some(literal(v));
                } else {
                    sets.push(format!("pg_catalog.set_config({}, {}, false)", literal(k), literal(v)));
                }
                conn.set_var(k, v);
            }
        }
        // What `conn` carries that this client does not expect: settings pgtenant applied for
        // another client, and reportable settings that are not kept in step one by one
        // (`default_transaction_read_only` …) whose value is not the pool's.
        let stale: Vec<(String, Option<&String>)> = conn
            .vars()
            .iter()
            .enumerate()
            .filter(|(_, (k, _))| !self.other.iter().any(|(o, _)| o.eq_ignore_ascii_case(k)))
            .map(|(i, (k, v))| {
                // After a reset the connection's settings are the pool's, in its order.
                let same = pool_params.get(i).filter(|(p, _)| p == k);
                (k, v, same.or_else(|| pool_params.iter().find(|(p, _)| p.eq_ignore_ascii_case(k))))
            })
            .filter_map(|(k, v, pool)| match pool {
                None => Some((k.clone(), None)),
                Some((_, pool)) if pool != v && !synced(k) && settable_reported(k) => {
                    Some((k.clone(), Some(pool)))
                }
                Some(_) => None,
            })
            .collect();
        for (k, pool) in stale {
            // A NULL value resets the setting (as RESET does).
            sets.push(format!("pg_catalog.set_config({}, NULL, false)", literal(&k)));
            match pool {
                // The server reports the value the reset restores (the connection's default,
                // the pool's value): remembered as such.
                Some(v) => conn.set_var(&k, v),
                None => conn.retain_vars(|n| n != k),
            }
        }
        // application_name goes as a SET of its own unless a SELECT is due anyway.
        let set_application_name = match application_name {
            Some(v) if !sets.is_empty() => {
                sets.push(format!("pg_catalog.set_config('application_name', {v}, false)"));
                None
            }
            v => v.map(|v| format!("SET application_name TO {v}")),
        };
        let select = (!sets.is_empty()).then(|| format!("SELECT {}", sets.join(", ")));
        (set_search_path.is_some() || set_application_name.is_some() || select.is_some()).then_some(Setup {
            set_search_path,
            set_application_name,
            select,
        })
    }
}

/// What [`ClientVars::sync_query`] sends a server connection before the client's messages:
/// `SET search_path TO …`, `SET application_name TO …` and one `SELECT
/// pg_catalog.set_config(…), …` (a NULL value resetting), at least one of them.
#[derive(Debug, PartialEq, Eq)]
pub struct Setup {
    pub set_search_path: Option<String>,
    /// The client's application_name (most clients send one at login: psql, pgbench, JDBC
    /// …), as a SET when nothing else needs the SELECT: the setup then goes without the
    /// transaction the SELECT's snapshot needs (BEGIN, COMMIT), which halves what a handoff
    /// to such a client costs the server (`benches/handoff_cost.sh`: 187,600 instructions of
    /// a PostgreSQL 15 backend above the client's SELECT, 99,900 with the SET). The setting
    /// is a plain string whose check needs no catalog, like search_path's. On PostgreSQL 15
    /// and older, `pg_stat_statements` (with `track_utility`, its default) keeps an entry per
    /// distinct SET text (16 replaces SET's constants): one per tenant's search_path already,
    /// and one per distinct application_name now.
    pub set_application_name: Option<String>,
    pub select: Option<String>,
}

/// Reportable settings no client can change with SET or set_config (a RESET of them fails).
/// Every other reportable setting a client may change — `default_transaction_read_only`
/// (PostgreSQL 14+), `scram_iterations` (16+), `search_path` (18+) … — is reset for a
/// client that does not expect the value a server connection carries.
const FIXED_REPORTED: [&str; 6] = [
    "server_version",
    "server_encoding",
    "integer_datetimes",
    "in_hot_standby",
    "is_superuser",
    "session_authorization",
];

fn settable_reported(name: &str) -> bool {
    !FIXED_REPORTED.iter().any(|f| f.eq_ignore_ascii_case(name))
}

/// Whether a ParameterStatus of `name` changes what a client's fingerprint covers (the
/// reportable settings kept in step one by one): when it does not but changes the server
/// connection, the connection no longer matches any client's fingerprint.
pub fn fingerprinted(name: &str) -> bool {
    synced(name)
}

/// `-c name=value` and `--name=value` settings from the `options` startup parameter
/// (space-separated, backslash escapes a space as in libpq).
pub fn parse_options(options: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut it = option_words(options).map(|w| unescape_option(w).into_owned());
    while let Some(w) = it.next() {
        let setting = if w == "-c" {
            it.next()
        } else {
            w.strip_prefix("-c").or_else(|| w.strip_prefix("--")).map(str::to_owned)
        };
        if let Some((k, v)) = setting.as_deref().and_then(|s| s.split_once('=')) {
            out.push((k.replace('-', "_"), v.to_owned()));
        }
    }
    out
}

/// `"a", b, "c d"` (double-quoted or plain identifiers separated by commas, nothing else) as
/// the list `SET search_path TO` takes, each name quoted: a plain one lowercased, as the
/// server reads a plain name in the setting's value. Quoted, a name the SQL grammar would
/// refuse plain (`$user`, a keyword such as `user`, `1a`), which the setting's value accepts,
/// does not fail the setup; `SHOW` shows a name quoted only where it must be, as after SET.
/// `None` for anything else.
pub(super) fn quoted_identifier_list(v: &str) -> Option<String> {
    if v.trim().is_empty() {
        return None;
    }
    let mut items = Vec::new();
    for item in v.split(',') {
        let item = item.trim();
        match item.strip_prefix('"').and_then(|i| i.strip_suffix('"')) {
            Some(inner) if !inner.is_empty() && !inner.contains('"') => items.push(item.to_owned()),
            Some(_) => return None,
            None if !item.is_empty()
                && item.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'$') =>
            {
                items.push(format!("\"{}\"", item.to_ascii_lowercase()));
            }
            None => return None,
        }
    }
    Some(items.join(", "))
}

/// Settings whose value lasts one transaction (`transaction_isolation`, `transaction_read_only`,
/// `transaction_deferrable`): a session SET or startup value of one outside a transaction block
/// leaves nothing behind on PostgreSQL (the next transaction starts from the defaults), and
/// replayed by a setup after its first query the server would refuse it (25001), so they are
/// never tracked nor replayed.
fn lasts_a_transaction(name: &str) -> bool {
    ["transaction_isolation", "transaction_read_only", "transaction_deferrable"]
        .iter()
        .any(|t| t.eq_ignore_ascii_case(name))
}

/// The seed of `random()`: never replayed (see `apply_cmd`); from a startup packet it is
/// dropped, as no connection the client gets is seeded for it alone.
fn is_seed(name: &str) -> bool {
    name.eq_ignore_ascii_case("seed")
}

/// Setting names are identifiers, possibly dotted (`pgtenant.tenant_id`).
fn is_setting_name(k: &str) -> bool {
    !k.is_empty() && k.len() <= 63 && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_parse_like_libpq() {
        assert_eq!(
            parse_options("-c search_path=a,b --statement-timeout=5s -cwork_mem=64kB x"),
            vec![
                ("search_path".into(), "a,b".into()),
                ("statement_timeout".into(), "5s".into()),
                ("work_mem".into(), "64kB".into())
            ]
        );
        assert_eq!(
            parse_options("-c application_name=a\\ b"),
            vec![("application_name".into(), "a b".into())]
        );
    }

    #[test]
    fn identifier_lists() {
        let quoted = |v: &str| quoted_identifier_list(v);
        assert_eq!(quoted("\"acme\", public").as_deref(), Some("\"acme\", \"public\""));
        assert_eq!(quoted("a,B").as_deref(), Some("\"a\", \"b\""));
        // Names the grammar refuses plain, which the setting's value takes.
        assert_eq!(quoted("$user,public").as_deref(), Some("\"$user\", \"public\""));
        assert_eq!(quoted("public, user, 1a").as_deref(), Some("\"public\", \"user\", \"1a\""));
        for bad in ["", "\"a\"; DROP TABLE t", "'x'", "\"a\"\"b\"", "a b", "\"\"", "a,,b"] {
            assert_eq!(quoted(bad), None, "{bad}");
        }
    }

    #[test]
    fn settings_that_last_a_transaction_are_neither_kept_nor_replayed() {
        let pool = std::sync::Arc::new(vec![("TimeZone".to_owned(), "UTC".to_owned())]);
        let startup = StartupMessage {
            major: 3,
            minor: 0,
            params: vec![
                ("user".into(), "a.b".into()),
                ("options".into(), "-c transaction_read_only=on -c work_mem=64kB".into()),
            ],
        };
        let resolved = crate::tenant::resolve(&startup, None, &Default::default()).expect("resolves");
        let v = ClientVars::new(&pool, &startup, &resolved, &[]);
        assert_eq!(v.other, vec![("work_mem".to_owned(), "64kB".to_owned())]);
        for name in ["transaction_isolation", "Transaction_Deferrable", "transaction_read_only"] {
            assert!(lasts_a_transaction(name), "{name}");
        }
        assert!(!lasts_a_transaction("default_transaction_isolation"));
    }

    #[test]
    fn literals_and_names_are_quoted() {
        assert!(!is_setting_name("x; DROP TABLE t"));
    }

    #[test]
    fn client_values_override_pool_values() {
        let pool = std::sync::Arc::new(vec![
            ("TimeZone".to_owned(), "UTC".to_owned()),
            ("server_version".to_owned(), "15.1".to_owned()),
            ("application_name".to_owned(), "".to_owned()),
        ]);
        let startup = StartupMessage {
            major: 3,
            minor: 0,
            params: vec![
                ("user".into(), "a.b".into()),
                ("application_name".into(), "psql".into()),
                ("extra_float_digits".into(), "3".into()),
                ("bad name;".into(), "x".into()),
            ],
        };
        let resolved = crate::tenant::resolve(&startup, None, &Default::default()).expect("resolves");
        let v = ClientVars::new(&pool, &startup, &resolved, &[]);
        assert_eq!(v.other, vec![("extra_float_digits".to_owned(), "3".to_owned())]);
        let shown: Vec<_> = v.login_params(&pool).collect();
        assert!(shown.contains(&("application_name", "psql")));
        assert!(shown.contains(&("server_version", "15.1")));
    }

    #[test]
    fn clients_keep_only_values_of_their_own() {
        let pool = std::sync::Arc::new(vec![
            ("TimeZone".to_owned(), "UTC".to_owned()),
            ("application_name".to_owned(), "".to_owned()),
        ]);
        let startup = |params: Vec<(String, String)>| StartupMessage { major: 3, minor: 0, params };
        let plain = startup(vec![("user".into(), "a.b".into())]);
        let named = startup(vec![("user".into(), "a.b".into()), ("application_name".into(), "psql".into())]);
        let resolve =
            |s: &StartupMessage| crate::tenant::resolve(s, None, &Default::default()).expect("resolves");
        let a = ClientVars::new(&pool, &plain, &resolve(&plain), &[]);
        let mut b = ClientVars::new(&pool, &named, &resolve(&named), &[]);
        assert!(a.reported.is_empty(), "{:?}", a.reported);
        assert_eq!(b.reported, vec![("application_name".to_owned(), "psql".to_owned())]);
        assert_ne!(a.fingerprint(), b.fingerprint());
        assert_eq!(b.login_params(&pool).nth(1).map(|(_, v)| v), Some("psql"));
        // Back to the pool's value: nothing of its own left, and the same as `a`.
        b.observe("application_name", "");
        assert!(b.reported.is_empty());
        assert_eq!(a.fingerprint(), b.fingerprint());
        b.observe("TimeZone", "Europe/Paris");
        assert_eq!(b.reported_value("timezone").map(String::as_str), Some("Europe/Paris"));
    }

    #[test]
    fn startup_values_are_kept_as_the_server_reports_them() {
        let pool = std::sync::Arc::new(vec![
            ("DateStyle".to_owned(), "ISO, MDY".to_owned()),
            ("client_encoding".to_owned(), "UTF8".to_owned()),
            ("application_name".to_owned(), "".to_owned()),
        ]);
        let login = |params: Vec<(&str, &str)>| {
            let params = params.into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
            let startup = StartupMessage { major: 3, minor: 0, params };
            let resolved = crate::tenant::resolve(&startup, None, &Default::default()).expect("resolves");
            ClientVars::new(&pool, &startup, &resolved, &[])
        };
        // pgjdbc's spelling of the pool's values: nothing of its own, so no setup.
        let jdbc = login(vec![("user", "a.b"), ("DateStyle", "ISO"), ("client_encoding", "utf-8")]);
        assert!(jdbc.reported.is_empty(), "{:?}", jdbc.reported);
        assert_eq!(jdbc.fingerprint(), login(vec![("user", "a.b")]).fingerprint());
        // `options` first, the packet's parameters over them; a DateStyle half kept.
        let both = login(vec![
            ("user", "a.b"),
            ("application_name", "packet"),
            ("DateStyle", "dmy"),
            ("options", "-c application_name=options -c DateStyle=sql"),
        ]);
        let shown: Vec<_> = both.login_params(&pool).collect();
        assert_eq!(
            shown,
            vec![("DateStyle", "SQL, DMY"), ("client_encoding", "UTF8"), ("application_name", "packet")]
        );
    }
}
