//! Recognising session `SET` / `RESET` statements a client runs in transaction mode, so the
//! setting can follow the client onto its next server connection (what PgBouncer's
//! `track_extra_parameters` and PgDog's SET tracking do). Only a statement that is exactly one
//! `SET [SESSION] name {TO|=} value`, `SET TIME ZONE value`, `RESET name`, `RESET ALL` or
//! `DISCARD ALL` (which runs RESET ALL) is recognised; anything else (SET LOCAL, SET ROLE,
//! several statements) is left alone.

/// A session setting change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SetCmd {
    /// `value` as set_config takes it.
    Set {
        name: String,
        value: String,
    },
    Reset {
        name: String,
    },
    ResetAll,
    /// `DISCARD ALL`: RESET ALL, among what else it drops (which is not a setting), committed
    /// as soon as it completes (it cannot run in a transaction block).
    DiscardAll,
}

/// Parses a query text (without its trailing NUL).
pub fn parse(sql: &[u8]) -> Option<SetCmd> {
    let sql = std::str::from_utf8(sql).ok()?;
    let mut t = Tokens { s: sql };
    let first = t.word()?.to_ascii_lowercase();
    match first.as_str() {
        // DISCARD ALL runs RESET ALL (with what else it drops, which is not a setting).
        "discard" => {
            let all = t.word()?.eq_ignore_ascii_case("all");
            t.end()?;
            all.then_some(SetCmd::DiscardAll)
        }
        "reset" => {
            let name = t.name()?;
            t.end()?;
            if name == "all" {
                Some(SetCmd::ResetAll)
            } else {
                settable(&name).then_some(SetCmd::Reset { name })
            }
        }
        "set" => {
            let mut name = t.name()?;
            if name == "session" {
                name = t.name()?;
                if name == "characteristics" {
                    return characteristics(&mut t);
                }
            }
            if name == "local" {
                return None;
            }
            if name == "time" {
                if !t.word()?.eq_ignore_ascii_case("zone") {
                    return None;
                }
                name = "timezone".to_owned();
            } else {
                t.skip_ws();
                if let Some(rest) = t.s.strip_prefix('=') {
                    t.s = rest;
                } else if !t.word()?.eq_ignore_ascii_case("to") {
                    return None;
                }
            }
            if !settable(&name) {
                return None;
            }
            let value = if quotes_list(&name) { list_value(t.raw()?)? } else { t.value()? };
            if names_temporary_schema(&value) {
                return None;
            }
            if value.eq_ignore_ascii_case("default")
                || value.eq_ignore_ascii_case("local") && name == "timezone"
            {
                return Some(SetCmd::Reset { name });
            }
            Some(SetCmd::Set { name, value })
        }
        _ => None,
    }
}

/// A value that names the temporary schema (`pg_temp` first on a search_path makes a plain
/// CREATE temporary), or may through Unicode escapes: not tracked, so it lasts the
/// transaction and the connection is reset, instead of following the client onto
/// connections that the next client of the tenant then gets with its temporary tables.
pub(super) fn names_temporary_schema(value: &str) -> bool {
    let v = value.as_bytes();
    v.windows(7).any(|w| w.eq_ignore_ascii_case(b"pg_temp"))
        || v.windows(2).any(|w| w.eq_ignore_ascii_case(b"u&"))
}

/// `SET SESSION CHARACTERISTICS AS TRANSACTION <one mode>` (what pgjdbc's
/// `setTransactionIsolation` sends): the same as setting the matching `default_transaction_*`.
fn characteristics(t: &mut Tokens<'_>) -> Option<SetCmd> {
    if !t.word()?.eq_ignore_ascii_case("as") || !t.word()?.eq_ignore_ascii_case("transaction") {
        return None;
    }
    let mut words = Vec::new();
    while let Some(w) = t.word() {
        words.push(w.to_ascii_lowercase());
    }
    t.end()?;
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    let (name, value) = match words.as_slice() {
        ["isolation", "level", "serializable"] => ("default_transaction_isolation", "serializable"),
        ["isolation", "level", "repeatable", "read"] => ("default_transaction_isolation", "repeatable read"),
        ["isolation", "level", "read", "committed"] => ("default_transaction_isolation", "read committed"),
        ["isolation", "level", "read", "uncommitted"] => {
            ("default_transaction_isolation", "read uncommitted")
        }
        ["read", "only"] => ("default_transaction_read_only", "on"),
        ["read", "write"] => ("default_transaction_read_only", "off"),
        ["deferrable"] => ("default_transaction_deferrable", "on"),
        ["not", "deferrable"] => ("default_transaction_deferrable", "off"),
        _ => return None,
    };
    Some(SetCmd::Set { name: name.to_owned(), value: value.to_owned() })
}

/// Settings a SET of which is tracked (not roles or authorisation, whose meaning goes beyond a
/// value pgtenant can replay).
fn settable(name: &str) -> bool {
    !matches!(name, "role" | "session_authorization" | "transaction" | "constraints")
        && !name.is_empty()
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
}

/// Settings whose value is a list of names, each quoted as needed (`GUC_LIST_QUOTE` in
/// `src/backend/utils/misc/guc_tables.c`): SET takes a string literal as one name, its case
/// and any comma or space in it kept.
fn quotes_list(name: &str) -> bool {
    matches!(
        name,
        "search_path" | "temp_tablespaces" | "local_preload_libraries" | "session_preload_libraries"
    )
}

/// The list SET was given (`'My Schema', "Mixed", plain`) as set_config takes it, the value
/// SET leaves: a string literal becomes a quoted name (`"My Schema"`), a quoted or plain name
/// is kept (the server folds a plain one). `None` for what is not such a list (an E'' string,
/// a quote inside a plain word): not tracked.
fn list_value(text: &str) -> Option<String> {
    let mut items = Vec::new();
    let mut rest = text;
    loop {
        rest = rest.trim_start();
        let (item, after) = if let Some(r) = rest.strip_prefix('\'') {
            let end = closing(r, b'\'')?;
            let name = r[..end].replace("''", "'");
            (format!("\"{}\"", name.replace('"', "\"\"")), &r[end + 1..])
        } else if let Some(r) = rest.strip_prefix('"') {
            let end = closing(r, b'"')?;
            (format!("\"{}\"", &r[..end]), &r[end + 1..])
        } else {
            let end = rest.find(|c: char| c == ',' || c.is_whitespace()).unwrap_or(rest.len());
            let word = &rest[..end];
            if word.is_empty() || word.contains(['\'', '"', '\\']) {
                return None;
            }
            (word.to_owned(), &rest[end..])
        };
        items.push(item);
        let after = after.trim_start();
        match after.strip_prefix(',') {
            Some(r) => rest = r,
            None if after.is_empty() => return Some(items.join(", ")),
            None => return None,
        }
    }
}

/// Where the quoted text `s` (after its opening `quote`) ends: the first `quote` not doubled.
fn closing(s: &str, quote: u8) -> Option<usize> {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == quote {
            if b.get(i + 1) == Some(&quote) {
                i += 2;
                continue;
            }
            return Some(i);
        }
        i += 1;
    }
    None
}

struct Tokens<'a> {
    s: &'a str,
}

impl<'a> Tokens<'a> {
    fn skip_ws(&mut self) {
        let skipped = self.s.len() - crate::sql::skip_blank(self.s.as_bytes()).len();
        // skip_blank stops only after ASCII or at the start of a character.
        self.s = self.s.get(skipped..).unwrap_or_default();
    }

    fn word(&mut self) -> Option<&'a str> {
        self.skip_ws();
        let end = self
            .s
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
            .unwrap_or(self.s.len());
        if end == 0 {
            return None;
        }
        let (w, rest) = self.s.split_at(end);
        self.s = rest;
        Some(w)
    }

    /// A setting name: lowercased unless double-quoted.
    fn name(&mut self) -> Option<String> {
        self.skip_ws();
        if let Some(rest) = self.s.strip_prefix('"') {
            let end = rest.find('"')?;
            let name = rest[..end].to_owned();
            self.s = &rest[end + 1..];
            return Some(name);
        }
        Some(self.word()?.to_ascii_lowercase())
    }

    /// The value up to the end of the statement, as set_config takes it: a single quoted
    /// literal is unquoted, anything else (numbers, identifiers, lists) is kept as written.
    fn value(&mut self) -> Option<String> {
        let text = self.raw()?;
        if let Some(inner) = text.strip_prefix('\'').and_then(|t| t.strip_suffix('\'')) {
            if !inner.replace("''", "").contains('\'') {
                return Some(inner.replace("''", "'"));
            }
        }
        if text.starts_with(['E', 'e']) && text[1..].starts_with('\'') {
            return None;
        }
        Some(text.to_owned())
    }

    /// The value up to the end of the statement as written, if it is one statement.
    fn raw(&mut self) -> Option<&'a str> {
        self.skip_ws();
        let text = self.s.trim_end();
        let text = text.strip_suffix(';').unwrap_or(text).trim_end();
        if text.is_empty() {
            return None;
        }
        // One statement only: no ';' outside quotes.
        let mut quote: Option<char> = None;
        for c in text.chars() {
            match (quote, c) {
                (None, '\'' | '"') => quote = Some(c),
                (Some(q), c) if c == q => quote = None,
                (None, ';') => return None,
                _ => {}
            }
        }
        if quote.is_some() {
            return None;
        }
        Some(text)
    }

    fn end(&mut self) -> Option<()> {
        self.skip_ws();
        let rest = self.s.strip_prefix(';').unwrap_or(self.s);
        rest.trim().is_empty().then_some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(name: &str, value: &str) -> Option<SetCmd> {
        Some(SetCmd::Set { name: name.into(), value: value.into() })
    }

    #[test]
    fn recognises_session_sets() {
        let cases: Vec<(&str, Option<SetCmd>)> = vec![
            ("SET statement_timeout = 5000", set("statement_timeout", "5000")),
            ("set Statement_Timeout to '5s';", set("statement_timeout", "5s")),
            ("SET SESSION work_mem TO '64MB'", set("work_mem", "64MB")),
            ("/* orm */ SET search_path TO a, \"B\"", set("search_path", "a, \"B\"")),
            ("SET TIME ZONE 'Asia/Tokyo'", set("timezone", "Asia/Tokyo")),
            ("SET application_name = 'it''s'", set("application_name", "it's")),
            ("SET myapp.user_id = 42", set("myapp.user_id", "42")),
            ("SET statement_timeout TO DEFAULT", Some(SetCmd::Reset { name: "statement_timeout".into() })),
            ("RESET work_mem", Some(SetCmd::Reset { name: "work_mem".into() })),
            ("RESET ALL;", Some(SetCmd::ResetAll)),
            ("DISCARD ALL", Some(SetCmd::DiscardAll)),
            ("discard all ;", Some(SetCmd::DiscardAll)),
            ("DISCARD PLANS", None),
            ("DISCARD ALL; SELECT 1", None),
            ("SET LOCAL work_mem = '1MB'", None),
            ("SET ROLE admin", None),
            ("SET SESSION AUTHORIZATION bob", None),
            ("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", None),
            (
                "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL REPEATABLE READ",
                set("default_transaction_isolation", "repeatable read"),
            ),
            (
                "set session characteristics as transaction read only",
                set("default_transaction_read_only", "on"),
            ),
            ("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY, DEFERRABLE", None),
            ("SET work_mem = '1MB'; DROP TABLE t", None),
            ("SET search_path = pg_temp, public", None),
            ("SET search_path TO \"PG_TEMP\"", None),
            ("SET search_path = U&\"pg\\005ftemp\"", None),
            ("SET search_path = app, public", set("search_path", "app, public")),
            // A string literal in a list of names is one name, quoted as SET quotes it.
            ("SET search_path = 'MySchema'", set("search_path", "\"MySchema\"")),
            ("SET search_path TO 'My Schema',public", set("search_path", "\"My Schema\", public")),
            ("SET search_path TO 'a,b'", set("search_path", "\"a,b\"")),
            (
                "SET search_path TO \"$user\", 'it''s', 'q\"'",
                set("search_path", "\"$user\", \"it's\", \"q\"\"\""),
            ),
            ("SET search_path TO 'default'", set("search_path", "\"default\"")),
            ("SET search_path TO DEFAULT", Some(SetCmd::Reset { name: "search_path".into() })),
            ("SET search_path TO a, E'b'", None),
            ("SET search_path TO a b", None),
            ("SET search_path TO a,", None),
            ("SET temp_tablespaces = 'Fast One'", set("temp_tablespaces", "\"Fast One\"")),
            ("SET work_mem = 'unterminated", None),
            ("SELECT 1", None),
            ("SET", None),
        ];
        for (sql, want) in cases {
            assert_eq!(parse(sql.as_bytes()), want, "{sql}");
        }
    }
}
