//! How PostgreSQL spells the reportable settings a client gives at startup. pgtenant shows a
//! client its login's ParameterStatus values itself (no server connection yet in transaction
//! mode), so it writes each as the server would report it (`DateStyle=iso` → `ISO, MDY`,
//! `client_encoding=utf-8` → `UTF8`): drivers check what they are told (pgjdbc wants a
//! DateStyle that starts with `ISO`, drivers pick a codec from client_encoding), and a value
//! spelt otherwise than the pool's would make every checkout run a setup that changes
//! nothing. Used once, at login ([`super::vars::ClientVars::new`]); a value this module cannot
//! spell (PostgreSQL would refuse it, or it is beyond what was checked) stays as given, and
//! the server's report after the setup corrects it (`ClientVars::observe`).
//!
//! Every rule here was checked against PostgreSQL 15 by experiment (a login with the value,
//! its ParameterStatus read): see the unit tests, and `tests/e2e/isolation/login_spelling.rs`
//! which compares pgtenant's login with the cluster's.

/// The value PostgreSQL reports for reportable setting `name` given as `value` at startup,
/// when it differs from `value` and this module knows it; `None` keeps `value` as given.
/// `current` is the setting's value before this one (DateStyle keeps the half `value` does
/// not name); `pool` is the pool's ParameterStatus list (its `server_version` and
/// `server_encoding`).
pub fn spelling(name: &str, value: &str, current: Option<&str>, pool: &[(String, String)]) -> Option<String> {
    let is = |n: &str| name.eq_ignore_ascii_case(n);
    let spelt = if is("DateStyle") {
        date_style(value, current)
    } else if is("IntervalStyle") {
        interval_style(value)
    } else if is("standard_conforming_strings") {
        boolean(value).map(|on| if on { "on" } else { "off" }.to_owned())
    } else if is("client_encoding") {
        encoding(value).map(str::to_owned)
    } else if is("TimeZone") {
        time_zone(value).map(str::to_owned)
    } else if is("application_name") {
        let server = |n: &str| pool.iter().find(|(k, _)| k.eq_ignore_ascii_case(n)).map(|(_, v)| v.as_str());
        application_name(value, server("server_version"), server("server_encoding"))
    } else {
        None
    };
    spelt.filter(|s| s != value)
}

/// DateStyle's two halves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Style {
    Iso,
    Sql,
    Postgres,
    German,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Order {
    Dmy,
    Mdy,
    Ymd,
}

/// `ISO, MDY` from a DateStyle list: comma-separated words (spaces around them, a word
/// possibly double-quoted), any case; `ISO`, `SQL`, `Postgres…`, `German` name the style,
/// `DMY`/`Euro…`, `MDY`/`US`/`NonEuro…`, `YMD` the order; two different words for one half
/// are refused. A half not named keeps `current`'s, except that `German` alone means DMY.
/// `None` for what PostgreSQL refuses, for `DEFAULT` (the server's own default, unknown
/// here) and when a half is missing and `current` does not give it.
fn date_style(value: &str, current: Option<&str>) -> Option<String> {
    let (mut style, mut order) = match current.map(parse_date_style) {
        Some(Some((s, o))) => (Some(s), Some(o)),
        _ => (None, None),
    };
    let (mut have_style, mut have_order) = (false, false);
    for word in identifier_list(value)? {
        let w = word.as_str();
        let prefix =
            |p: &str| w.len() >= p.len() && w.as_bytes()[..p.len()].eq_ignore_ascii_case(p.as_bytes());
        let (s, o) = if w.eq_ignore_ascii_case("ISO") {
            (Some(Style::Iso), None)
        } else if w.eq_ignore_ascii_case("SQL") {
            (Some(Style::Sql), None)
        } else if prefix("POSTGRES") {
            (Some(Style::Postgres), None)
        } else if w.eq_ignore_ascii_case("GERMAN") {
            (Some(Style::German), None)
        } else if w.eq_ignore_ascii_case("YMD") {
            (None, Some(Order::Ymd))
        } else if w.eq_ignore_ascii_case("DMY") || prefix("EURO") {
            (None, Some(Order::Dmy))
        } else if w.eq_ignore_ascii_case("MDY") || w.eq_ignore_ascii_case("US") || prefix("NONEURO") {
            (None, Some(Order::Mdy))
        } else {
            return None;
        };
        if let Some(s) = s {
            if have_style && style != Some(s) {
                return None;
            }
            (style, have_style) = (Some(s), true);
            if s == Style::German && !have_order {
                order = Some(Order::Dmy);
            }
        }
        if let Some(o) = o {
            if have_order && order != Some(o) {
                return None;
            }
            (order, have_order) = (Some(o), true);
        }
    }
    let style = match style? {
        Style::Iso => "ISO",
        Style::Sql => "SQL",
        Style::Postgres => "Postgres",
        Style::German => "German",
    };
    let order = match order? {
        Order::Dmy => "DMY",
        Order::Mdy => "MDY",
        Order::Ymd => "YMD",
    };
    Some(format!("{style}, {order}"))
}

/// Both halves of a DateStyle as the server reports it (`ISO, MDY`).
fn parse_date_style(reported: &str) -> Option<(Style, Order)> {
    let (style, order) = reported.split_once(", ")?;
    let style = match style {
        "ISO" => Style::Iso,
        "SQL" => Style::Sql,
        "Postgres" => Style::Postgres,
        "German" => Style::German,
        _ => return None,
    };
    let order = match order {
        "DMY" => Order::Dmy,
        "MDY" => Order::Mdy,
        "YMD" => Order::Ymd,
        _ => return None,
    };
    Some((style, order))
}

/// The words of a comma-separated list of identifiers as a list setting is read: spaces
/// around each, a word double-quoted (`""` a quote inside) or plain (up to a space or a
/// comma); an empty list is fine, an empty word is not.
fn identifier_list(value: &str) -> Option<Vec<String>> {
    let mut words = Vec::new();
    let mut rest = value.trim_start_matches(|c: char| c.is_ascii_whitespace());
    if rest.is_empty() {
        return Some(words);
    }
    loop {
        if let Some(quoted) = rest.strip_prefix('"') {
            let mut word = String::new();
            let mut chars = quoted.char_indices();
            let end = loop {
                match chars.next()? {
                    (i, '"') if quoted[i + 1..].starts_with('"') => {
                        word.push('"');
                        chars.next();
                    }
                    (i, '"') => break i + 1,
                    (_, c) => word.push(c),
                }
            };
            if word.is_empty() {
                return None;
            }
            words.push(word);
            rest = &quoted[end..];
        } else {
            let end = rest.find(|c: char| c == ',' || c.is_ascii_whitespace()).unwrap_or(rest.len());
            if end == 0 {
                return None;
            }
            words.push(rest[..end].to_owned());
            rest = &rest[end..];
        }
        rest = rest.trim_start_matches(|c: char| c.is_ascii_whitespace());
        match rest.strip_prefix(',') {
            Some(next) => rest = next.trim_start_matches(|c: char| c.is_ascii_whitespace()),
            None if rest.is_empty() => return Some(words),
            None => return None,
        }
    }
}

/// IntervalStyle's names in lower case (any case is taken, nothing around them).
fn interval_style(value: &str) -> Option<String> {
    ["postgres", "postgres_verbose", "sql_standard", "iso_8601"]
        .into_iter()
        .find(|s| s.eq_ignore_ascii_case(value))
        .map(str::to_owned)
}

/// A boolean setting's value: `on`/`off`, `1`/`0`, and `true`, `false`, `yes`, `no` or a
/// prefix of one (`t`, `ye`, `n`), `of` (not `o`); any case, nothing around it.
fn boolean(value: &str) -> Option<bool> {
    let v = value.to_ascii_lowercase();
    let prefix_of = |word: &str, min: usize| v.len() >= min && word.starts_with(v.as_str());
    if v == "1" || prefix_of("true", 1) || prefix_of("yes", 1) || prefix_of("on", 2) {
        Some(true)
    } else if v == "0" || prefix_of("false", 1) || prefix_of("no", 1) || prefix_of("off", 2) {
        Some(false)
    } else {
        None
    }
}

/// Encoding names and aliases (letters and digits alone, in lower case: the server ignores
/// case and everything else, `utf-8` is `utf8`), each with the name the server reports. The
/// client encodings a driver sends; each pair was checked against PostgreSQL 15.
const ENCODINGS: &[(&str, &str)] = &[
    ("utf8", "UTF8"),
    ("unicode", "UTF8"),
    ("sqlascii", "SQL_ASCII"),
    ("latin1", "LATIN1"),
    ("latin2", "LATIN2"),
    ("latin3", "LATIN3"),
    ("latin4", "LATIN4"),
    ("latin5", "LATIN5"),
    ("latin6", "LATIN6"),
    ("latin7", "LATIN7"),
    ("latin8", "LATIN8"),
    ("latin9", "LATIN9"),
    ("latin10", "LATIN10"),
    ("iso88591", "LATIN1"),
    ("iso88592", "LATIN2"),
    ("iso88593", "LATIN3"),
    ("iso88594", "LATIN4"),
    ("iso88595", "ISO_8859_5"),
    ("iso88596", "ISO_8859_6"),
    ("iso88597", "ISO_8859_7"),
    ("iso88598", "ISO_8859_8"),
    ("iso88599", "LATIN5"),
    ("iso885910", "LATIN6"),
    ("iso885913", "LATIN7"),
    ("iso885914", "LATIN8"),
    ("iso885915", "LATIN9"),
    ("iso885916", "LATIN10"),
    ("win", "WIN1251"),
    ("win866", "WIN866"),
    ("win874", "WIN874"),
    ("win1250", "WIN1250"),
    ("win1251", "WIN1251"),
    ("win1252", "WIN1252"),
    ("win1253", "WIN1253"),
    ("win1254", "WIN1254"),
    ("win1255", "WIN1255"),
    ("win1256", "WIN1256"),
    ("win1257", "WIN1257"),
    ("win1258", "WIN1258"),
    ("windows866", "WIN866"),
    ("windows874", "WIN874"),
    ("windows1250", "WIN1250"),
    ("windows1251", "WIN1251"),
    ("windows1252", "WIN1252"),
    ("windows1253", "WIN1253"),
    ("windows1254", "WIN1254"),
    ("windows1255", "WIN1255"),
    ("windows1256", "WIN1256"),
    ("windows1257", "WIN1257"),
    ("windows1258", "WIN1258"),
    ("eucjp", "EUC_JP"),
    ("euckr", "EUC_KR"),
    ("euccn", "EUC_CN"),
    ("euctw", "EUC_TW"),
    ("eucjis2004", "EUC_JIS_2004"),
];

/// The name the server reports for a client_encoding. `UNICODE` spelt exactly so is reported
/// as given (the server keeps it for old JDBC drivers); names not in [`ENCODINGS`] stay too.
fn encoding(value: &str) -> Option<&'static str> {
    if value == "UNICODE" || value.len() > 64 {
        return None;
    }
    let clean: String =
        value.chars().filter(char::is_ascii_alphanumeric).map(|c| c.to_ascii_lowercase()).collect();
    ENCODINGS.iter().find(|(alias, _)| *alias == clean).map(|(_, name)| *name)
}

/// `UTC` and `GMT` in any case are reported in capitals; other zone names are left alone
/// (their spelling is the server's time zone database's).
fn time_zone(value: &str) -> Option<&'static str> {
    ["UTC", "GMT"].into_iter().find(|z| z.eq_ignore_ascii_case(value))
}

/// The longest name PostgreSQL keeps (NAMEDATALEN - 1).
const NAME_MAX: usize = 63;

/// application_name as PostgreSQL 15 keeps it from a startup packet, whose bytes it takes
/// unconverted: cut to 63 bytes (not inside a character of the database's encoding: a UTF-8
/// one in a UTF8 database, a byte in a single-byte one such as LATIN1), then each byte outside
/// printable ASCII shown as `?`. The setup then sends ASCII alone, which no database encoding
/// refuses (`表` sent as such to a LATIN1 database fails the setup with 22P05, where
/// PostgreSQL takes the startup packet). Checked on 15 alone (16 escapes such bytes instead),
/// so for another server version, or a value beyond ASCII in a multi-byte database encoding
/// other than UTF8 (`EUC_JP` …, where the cut depends on how it reads UTF-8 bytes), `None`.
fn application_name(
    value: &str,
    server_version: Option<&str>,
    server_encoding: Option<&str>,
) -> Option<String> {
    let printable = |b: u8| (0x20..0x7f).contains(&b);
    if value.len() <= NAME_MAX && value.bytes().all(printable) {
        return None;
    }
    let major: u32 = server_version?.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()?;
    let utf8 = server_encoding.is_some_and(|e| e.eq_ignore_ascii_case("UTF8"));
    let single_byte = server_encoding.is_some_and(|e| {
        let e = e.to_ascii_uppercase();
        !(e == "UTF8" || e == "MULE_INTERNAL" || e.starts_with("EUC_"))
    });
    if major != 15 || !(value.is_ascii() || utf8 || single_byte) {
        return None;
    }
    let mut end = value.len().min(NAME_MAX);
    while utf8 && !value.is_char_boundary(end) {
        end -= 1;
    }
    Some(value.as_bytes()[..end].iter().map(|&b| if printable(b) { b as char } else { '?' }).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool() -> Vec<(String, String)> {
        [("server_version", "15.18 (Debian 15.18-0+deb12u1)"), ("server_encoding", "UTF8")]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .to_vec()
    }

    /// `value` of `name` as reported, after `current` ("ISO, MDY" when not said).
    fn shown(name: &str, value: &str) -> String {
        spelling(name, value, Some("ISO, MDY"), &pool()).unwrap_or_else(|| value.to_owned())
    }

    #[test]
    fn date_styles_as_postgres_reports_them() {
        for (given, want) in [
            ("iso", "ISO, MDY"),
            ("ISO", "ISO, MDY"),
            ("sql", "SQL, MDY"),
            ("german", "German, DMY"),
            ("postgres", "Postgres, MDY"),
            ("postgresXYZ", "Postgres, MDY"),
            ("european", "ISO, DMY"),
            ("Euro", "ISO, DMY"),
            ("us", "ISO, MDY"),
            ("noneuropean", "ISO, MDY"),
            ("dmy", "ISO, DMY"),
            ("ymd", "ISO, YMD"),
            ("iso,dmy", "ISO, DMY"),
            (" iso ,  dmy ", "ISO, DMY"),
            ("German, YMD", "German, YMD"),
            ("ymd, german", "German, YMD"),
            ("german,mdy", "German, MDY"),
            ("sql,european", "SQL, DMY"),
            ("iso,iso", "ISO, MDY"),
            ("\"iso\" ,dmy", "ISO, DMY"),
            ("", "ISO, MDY"),
            ("  ", "ISO, MDY"),
        ] {
            assert_eq!(shown("DateStyle", given), want, "{given:?}");
        }
        // The half not given is the current one.
        assert_eq!(spelling("datestyle", "iso", Some("SQL, DMY"), &[]).as_deref(), Some("ISO, DMY"));
        assert_eq!(spelling("DateStyle", "ymd", Some("German, DMY"), &[]).as_deref(), Some("German, YMD"));
        assert_eq!(spelling("DateStyle", "iso", None, &[]), None);
        assert_eq!(spelling("DateStyle", "iso, dmy", None, &[]).as_deref(), Some("ISO, DMY"));
        // What PostgreSQL refuses (22023), and DEFAULT (the server's), stay as given.
        for refused in [
            "iso dmy",
            "dmy iso",
            "iso,sql",
            "dmy,ymd",
            "us,dmy",
            "german,iso",
            "german,mdy,dmy",
            "foo",
            "eur",
            "noneur",
            "usa",
            "postgre",
            "iso , ",
            ",iso",
            "iso,,dmy",
            "ISO,DMY,",
            "\"\"",
            "\"iso\"\"\"",
            "iso\"x\"",
            "ISO;DMY",
            "default",
            "iso, default",
        ] {
            assert_eq!(spelling("DateStyle", refused, Some("ISO, MDY"), &[]), None, "{refused:?}");
        }
    }

    #[test]
    fn other_settings_as_postgres_reports_them() {
        for (name, given, want) in [
            ("IntervalStyle", "POSTGRES", "postgres"),
            ("intervalstyle", "Sql_Standard", "sql_standard"),
            ("IntervalStyle", " iso_8601", " iso_8601"),
            ("IntervalStyle", "iso-8601", "iso-8601"),
            ("standard_conforming_strings", "true", "on"),
            ("standard_conforming_strings", "yes", "on"),
            ("standard_conforming_strings", "1", "on"),
            ("standard_conforming_strings", "t", "on"),
            ("standard_conforming_strings", "tr", "on"),
            ("standard_conforming_strings", "Y", "on"),
            ("standard_conforming_strings", "ON", "on"),
            ("standard_conforming_strings", "of", "off"),
            ("standard_conforming_strings", "OFF", "off"),
            ("standard_conforming_strings", "fa", "off"),
            ("standard_conforming_strings", "n", "off"),
            ("standard_conforming_strings", "0", "off"),
            ("standard_conforming_strings", "o", "o"),
            ("standard_conforming_strings", " on", " on"),
            ("standard_conforming_strings", "01", "01"),
            ("standard_conforming_strings", "yess", "yess"),
            ("standard_conforming_strings", "", ""),
            ("client_encoding", "utf-8", "UTF8"),
            ("client_encoding", "unicode", "UTF8"),
            ("client_encoding", "Unicode", "UTF8"),
            ("client_encoding", "UNICODE", "UNICODE"),
            ("client_encoding", "Utf8", "UTF8"),
            ("client_encoding", " utf8 ", "UTF8"),
            ("client_encoding", "latin1", "LATIN1"),
            ("client_encoding", "Latin-1", "LATIN1"),
            ("client_encoding", "iso_8859_15", "LATIN9"),
            ("client_encoding", "iso88595", "ISO_8859_5"),
            ("client_encoding", "win1252", "WIN1252"),
            ("client_encoding", "windows-1252", "WIN1252"),
            ("client_encoding", "win", "WIN1251"),
            ("client_encoding", "SQL-ASCII", "SQL_ASCII"),
            ("client_encoding", "EUC-KR", "EUC_KR"),
            ("client_encoding", "eucjis2004", "EUC_JIS_2004"),
            ("client_encoding", "cp1252", "cp1252"),
            ("client_encoding", "shift_jis", "shift_jis"),
            ("TimeZone", "utc", "UTC"),
            ("timezone", "Gmt", "GMT"),
            ("TimeZone", " UTC", " UTC"),
            ("TimeZone", "europe/paris", "europe/paris"),
            ("TimeZone", "uct", "uct"),
            ("search_path", "ISO", "ISO"),
        ] {
            assert_eq!(shown(name, given), want, "{name}={given:?}");
        }
    }

    #[test]
    fn application_names_as_postgres_15_keeps_them() {
        let a = |n: usize| "a".repeat(n);
        assert_eq!(shown("application_name", &a(63)), a(63));
        assert_eq!(shown("application_name", &a(64)), a(63));
        assert_eq!(shown("application_name", &a(100)), a(63));
        assert_eq!(shown("application_name", &"é".repeat(40)), "?".repeat(62));
        assert_eq!(
            shown("application_name", &format!("a{}", "é".repeat(40))),
            format!("a{}", "?".repeat(62))
        );
        assert_eq!(shown("application_name", &"😀".repeat(20)), "?".repeat(60));
        assert_eq!(
            shown("application_name", &format!("aaa{}", "😀".repeat(20))),
            format!("aaa{}", "?".repeat(60))
        );
        assert_eq!(shown("application_name", "tab\there"), "tab?here");
        assert_eq!(shown("application_name", "café"), "caf??");
        assert_eq!(shown("application_name", "x\u{7f}y"), "x?y");
        assert_eq!(shown("application_name", " lead"), " lead");
        // Another server version, or a multi-byte database encoding other than UTF8: as given.
        let v16 = [("server_version".to_owned(), "16.2".to_owned())];
        assert_eq!(spelling("application_name", "café", None, &v16), None);
        assert_eq!(spelling("application_name", "café", None, &[]), None);
        let euc = [pool()[0].clone(), ("server_encoding".to_owned(), "EUC_JP".to_owned())];
        assert_eq!(spelling("application_name", "café", None, &euc), None);
        assert_eq!(spelling("application_name", "tab\t", None, &euc).as_deref(), Some("tab?"));
        // A single-byte database encoding: the startup packet's bytes, cut at 63 bytes.
        let latin1 = [pool()[0].clone(), ("server_encoding".to_owned(), "LATIN1".to_owned())];
        let in_latin1 = |v: &str| spelling("application_name", v, None, &latin1);
        assert_eq!(in_latin1("café").as_deref(), Some("caf??"));
        assert_eq!(in_latin1("表 and ü").as_deref(), Some("??? and ??"));
        assert_eq!(in_latin1(&"é".repeat(40)), Some("?".repeat(63)));
        assert_eq!(in_latin1("tab\t").as_deref(), Some("tab?"));
    }

    proptest::proptest! {
        #[test]
        fn spelling_never_panics_and_is_idempotent(
            name in proptest::sample::select(vec![
                "DateStyle", "IntervalStyle", "standard_conforming_strings", "client_encoding",
                "TimeZone", "application_name", "search_path",
            ]),
            value in "(?s).{0,80}|[ ,\"a-zA-Z]{0,24}|(iso|sql|german|postgres|dmy|mdy|ymd|euro|us|[ ,\"]){0,6}",
            current in proptest::option::of("(ISO|SQL|Postgres|German), (DMY|MDY|YMD)|.{0,12}"),
        ) {
            let pool = pool();
            let once = spelling(name, &value, current.as_deref(), &pool);
            if let Some(once) = once {
                proptest::prop_assert_ne!(&once, &value);
                proptest::prop_assert_eq!(spelling(name, &once, current.as_deref(), &pool), None);
            }
        }
    }
}
