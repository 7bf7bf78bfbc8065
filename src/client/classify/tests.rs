use proptest::prelude::*;

use super::*;
use old::{declared_cursors, leaves_state, may_change_settings, words_verdict};

/// The predicates the classifier replaced, as they were (9f0e14b, src/client/statements.rs;
/// the DEALLOCATE/DISCARD test was `Statements::raise_barrier`'s): each scanned the text on
/// its own. Kept as the reference the property tests hold the one pass to, with what the
/// refusals learnt since: they look at every statement (what follows any `;`), and WITH HOLD
/// at a DECLARE's words before FOR.
mod old {
    use super::Refusal;
    use crate::sql::{skip_blank, StatementEnds};

    /// The statements a query may hold: the text, then what follows each `;` that ends one
    /// (every `;` asked in turn).
    fn statements(sql: &[u8]) -> impl Iterator<Item = &[u8]> {
        let mut ends = StatementEnds::default();
        std::iter::once(sql).chain(
            sql.iter()
                .enumerate()
                .filter(|(_, &b)| b == b';')
                .map(|(i, _)| i)
                .collect::<Vec<_>>()
                .into_iter()
                .filter(move |&i| ends.ends_at(sql, i))
                .map(move |i| &sql[i + 1..]),
        )
    }

    /// The first refusal among the statements, in order, whether a statement up to it starts
    /// with code that runs (DO, CALL, EXECUTE), and whether one starts with DECLARE, DO or CALL.
    pub fn words_verdict(sql: &[u8]) -> (Option<Refusal>, bool, bool, bool) {
        let (mut code, mut cursors, mut copy) = (false, false, false);
        for statement in statements(sql) {
            let first = first_words(statement).first().map(|w| w.to_ascii_uppercase());
            let is = |k: &[u8]| first.as_deref() == Some(k);
            cursors |= is(b"DO") || is(b"CALL") || is(b"DECLARE");
            code |= is(b"DO") || is(b"CALL") || is(b"EXECUTE");
            copy |= is(b"COPY");
            let refusal = if sql_prepare_refusal(statement).is_some() {
                Some(Refusal::SqlPrepare)
            } else {
                session_feature(statement).map(Refusal::Feature)
            };
            if refusal.is_some() {
                return (refusal, code, cursors, copy);
            }
        }
        (None, code, cursors, copy)
    }

    /// Whether a DECLARE makes a WITH HOLD cursor: its words (a quoted name as one) listed
    /// before FOR hold WITH, HOLD in a row.
    fn holds(sql: &[u8]) -> bool {
        let mut words: Vec<Vec<u8>> = Vec::new();
        let mut rest = sql;
        loop {
            rest = skip_blank(rest);
            // A quoted name (`"…"`, `U&"…"`) or UESCAPE's string, as one word.
            let unicode = rest.to_ascii_uppercase().starts_with(b"U&\"");
            let from = if unicode { 2 } else { 0 };
            if let Some(&q) = rest.get(from).filter(|&&b| b == b'"' || b == b'\'') {
                let quoted = &rest[from + 1..];
                let end = quoted.iter().position(|&b| b == q).map_or(quoted.len(), |i| i + 1);
                words.push(vec![q]);
                rest = &quoted[end..];
                continue;
            }
            let end =
                rest.iter().position(|b| !(b.is_ascii_alphanumeric() || *b == b'_')).unwrap_or(rest.len());
            if end == 0 {
                break;
            }
            words.push(rest[..end].to_ascii_uppercase());
            rest = &rest[end..];
        }
        let before_for = words.iter().position(|w| w == b"FOR").unwrap_or(words.len());
        words[..before_for].windows(2).any(|w| w[0] == b"WITH" && w[1] == b"HOLD")
    }

    /// SQL-level prepared statements cannot follow a client across server connections in
    /// transaction mode: `PREPARE`, `EXECUTE` and `DEALLOCATE <name>` are refused (0A000).
    /// `DEALLOCATE ALL` passes. Returns the refusal query to send instead.
    fn sql_prepare_refusal(sql: &[u8]) -> Option<()> {
        let words = first_words(sql);
        let first = words.first()?.to_ascii_uppercase();
        let refused = match first.as_slice() {
            b"PREPARE" | b"EXECUTE" => true,
            b"DEALLOCATE" => {
                let second = words.get(1).map(|w| w.to_ascii_uppercase());
                let second = match second.as_deref() {
                    Some(b"PREPARE") => words.get(2).map(|w| w.to_ascii_uppercase()),
                    other => other.map(<[u8]>::to_vec),
                };
                second.as_deref() != Some(b"ALL")
            }
            _ => false,
        };
        refused.then_some(())
    }

    /// Session-level features that cannot survive transaction pooling, recognised by how a
    /// statement starts: `LISTEN`, `CREATE TEMP[ORARY] TABLE`, `DECLARE ... WITH HOLD`.
    fn session_feature(sql: &[u8]) -> Option<&'static str> {
        let words: Vec<Vec<u8>> = first_words(sql).iter().map(|w| w.to_ascii_uppercase()).collect();
        match words.first().map(Vec::as_slice) {
            Some(b"LISTEN") => Some("LISTEN"),
            Some(b"CREATE") if matches!(words.get(1).map(Vec::as_slice), Some(b"TEMP" | b"TEMPORARY")) => {
                Some("temporary tables")
            }
            Some(b"DECLARE") if holds(sql) => Some("WITH HOLD cursors"),
            _ => None,
        }
    }

    /// Cursor names a query declares (`DECLARE name … CURSOR`, in any of its statements): they
    /// are portals the client may then use through the protocol (psycopg's server-side cursors
    /// describe them). Quoting and comments are handled roughly: a name too many only lets the
    /// client use a portal it might have created.
    pub fn declared_cursors(sql: &[u8]) -> Vec<Box<[u8]>> {
        let mut names = Vec::new();
        // Most queries declare nothing: one scan, no allocation.
        if !contains_ignore_case(sql, b"DECLARE") {
            return names;
        }
        for statement in sql.split(|&b| b == b';') {
            let words = first_words(statement);
            if !words.first().is_some_and(|w| w.eq_ignore_ascii_case(b"DECLARE")) {
                continue;
            }
            let rest = trim_start(&statement[statement.len() - trim_start(statement).len()..]);
            let after = rest.get(words[0].len()..).map(trim_start).unwrap_or_default();
            let name: Vec<u8> = if let Some(quoted) = after.strip_prefix(b"\"") {
                let end = quoted.iter().position(|&b| b == b'"').unwrap_or(quoted.len());
                quoted[..end].to_vec()
            } else {
                words.get(1).map(|w| w.to_ascii_lowercase()).unwrap_or_default()
            };
            if !name.is_empty() {
                names.push(name.into_boxed_slice());
            }
        }
        names
    }

    /// Whether a query may change a setting without a SET command tag: it calls set_config or
    /// names search_path / the tenant setting, or runs code (DO, CALL, EXECUTE: see
    /// [`words_verdict`]). A user-defined function called from a plain SELECT is not
    /// recognised (the README says so).
    pub fn may_change_settings(sql: &[u8]) -> bool {
        let contains = |needle: &[u8]| contains_ignore_case(sql, needle);
        contains(b"set_config")
            || contains(b"search_path")
            || contains(b"tenant_id")
            || contains(b"settings")
            || unicode(sql)
            || words_verdict(sql).1
    }

    /// Whether `sql` holds `U&'` or `U&"` (either case).
    pub fn unicode(sql: &[u8]) -> bool {
        sql.windows(3).any(|w| w[..2].eq_ignore_ascii_case(b"u&") && (w[2] == b'"' || w[2] == b'\''))
    }

    /// Whether a query may leave a temporary object, or hides names behind Unicode escapes.
    pub fn leaves_state(sql: &[u8]) -> bool {
        unicode(sql) || contains_ignore_case(sql, b"temp") && super::super::makes_temporary(sql)
    }

    /// Whether `needle` (ASCII) occurs in `hay`, ignoring case; no allocation.
    fn contains_ignore_case(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w.eq_ignore_ascii_case(needle))
    }

    /// The first words of a query, skipping whitespace and comments.
    fn first_words(mut sql: &[u8]) -> Vec<&[u8]> {
        let mut words = Vec::new();
        while words.len() < 3 {
            sql = skip_blank(sql);
            let end =
                sql.iter().position(|b| !(b.is_ascii_alphanumeric() || *b == b'_')).unwrap_or(sql.len());
            if end == 0 {
                break;
            }
            words.push(&sql[..end]);
            sql = &sql[end..];
        }
        words
    }

    fn trim_start(s: &[u8]) -> &[u8] {
        let i = s.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(s.len());
        &s[i..]
    }
}

/// What the predicates this classifier replaces said about `sql`.
fn old(sql: &[u8]) -> (Option<Refusal>, bool, bool, Vec<Box<[u8]>>) {
    let refusal = words_verdict(sql).0;
    // What Statements::raise_barrier looked for.
    let contains = |needle: &[u8]| sql.windows(needle.len()).any(|w| w.eq_ignore_ascii_case(needle));
    let barrier = contains(b"DEALLOCATE") || contains(b"DISCARD");
    (refusal, may_change_settings(sql), barrier, declared_cursors(sql))
}

fn agree(sql: &[u8]) -> Result<(), TestCaseError> {
    let class = classify(sql);
    let (refusal, suspect, drops, cursors) = old(sql);
    prop_assert_eq!(class.refusal(), refusal);
    prop_assert_eq!(class.may_declare(), words_verdict(sql).2);
    prop_assert_eq!(class.suspect_settings(), suspect);
    prop_assert_eq!(class.leaves_state(), leaves_state(sql));
    prop_assert_eq!(class.drops_statements(), drops);
    prop_assert_eq!(class.declared_cursors(sql), cursors);
    prop_assert_eq!(class.set(sql), setcmd::parse(sql));
    // A Query's text carries its NUL; the SET is parsed without it.
    let mut with_nul = sql.to_vec();
    with_nul.push(0);
    prop_assert_eq!(classify(&with_nul), class);
    Ok(())
}

/// Pieces of SQL the classifier reacts to, and some it must not.
const TOKENS: &[&str] = &[
    "set",
    "reset",
    "session",
    "local",
    "time",
    "zone",
    "to",
    "=",
    "all",
    "role",
    "prepare",
    "execute",
    "deallocate",
    "discard",
    "listen",
    "create",
    "temp",
    "temporary",
    "table",
    "declare",
    "cursor",
    "for",
    "with",
    "hold",
    "with hold",
    "without",
    "/* /*",
    "do",
    "call",
    "select",
    "set_config",
    "search_path",
    "tenant_id",
    "pgtenant.tenant_id",
    "pg_temp",
    "pg_settings",
    "into",
    "insert",
    "global",
    "replace",
    "u&'",
    "&",
    "characteristics",
    "as",
    "transaction",
    "read",
    "only",
    "default",
    "'x'",
    "'it''s'",
    "E'\\n'",
    "\"Q d\"",
    "U&\"q\"",
    "uescape",
    "\"",
    "'",
    ";",
    " ",
    "\n",
    "\t",
    "-- c\n",
    "--",
    "/* c */",
    "/*",
    "*/",
    "$$",
    "$q$",
    "$1",
    "a$",
    "\\",
    ".",
    "_",
    "1",
    "42",
    "é",
    "\0",
    "(",
    ")",
    ",",
    "x",
    "c1",
];
const SEPARATORS: &[&str] = &["", " ", "  ", "\n", "\t"];

fn sqlish() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec((0..TOKENS.len(), any::<u32>(), 0..SEPARATORS.len()), 0..14).prop_map(|parts| {
        let mut s = String::new();
        for (t, case, sep) in parts {
            for (i, c) in TOKENS[t].chars().enumerate() {
                s.push(if case >> (i % 32) & 1 == 1 { c.to_ascii_uppercase() } else { c });
            }
            s.push_str(SEPARATORS[sep]);
        }
        s.into_bytes()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

    #[test]
    fn one_pass_agrees_with_the_old_predicates(sql in sqlish()) {
        agree(&sql)?;
    }

    #[test]
    fn one_pass_agrees_on_any_bytes(sql in prop::collection::vec(any::<u8>(), 0..200)) {
        agree(&sql)?;
    }
}

/// A COPY is seen where a statement starts with it, after any `;` that ends one, never inside
/// a string or as part of another word.
#[test]
fn a_copy_is_seen_where_a_statement_starts() {
    for sql in [
        "COPY t FROM STDIN",
        "  copy t from stdin;",
        "SELECT 1; COPY t FROM STDIN",
        "/* x */ Copy t FROM STDIN",
    ] {
        assert!(classify(sql.as_bytes()).copy(), "{sql}");
    }
    for sql in ["SELECT 'copy'", "SELECT copy FROM t", "SELECT ';COPY t FROM STDIN'", "COPYING", "SELECT 1"] {
        assert!(!classify(sql.as_bytes()).copy(), "{sql}");
    }
}

fn set(name: &str, value: &str) -> Option<SetCmd> {
    Some(SetCmd::Set { name: name.into(), value: value.into() })
}

/// The cases the old predicates were tested with, and more, against the one pass.
#[test]
fn explicit_cases() {
    let prep = Some(Refusal::SqlPrepare);
    let feature = |f| Some(Refusal::Feature(f));
    // (sql, refusal, suspect_settings, drops_statements, declared cursors, SET)
    #[allow(clippy::type_complexity)]
    let cases: Vec<(&str, Option<Refusal>, bool, bool, Vec<&[u8]>, Option<SetCmd>)> = vec![
        ("SELECT 1", None, false, false, vec![], None),
        ("INSERT INTO t VALUES (1)", None, false, false, vec![], None),
        ("BEGIN", None, false, false, vec![], None),
        ("UPDATE t SET x = 1", None, false, false, vec![], None),
        ("SELECT set_config('search_path', 'b', false)", None, true, false, vec![], None),
        ("do $$ begin perform 1; end $$", None, true, false, vec![], None),
        ("CALL p()", None, true, false, vec![], None),
        ("select current_setting('pgtenant.TENANT_ID')", None, true, false, vec![], None),
        ("PREPARE p AS SELECT 1", prep, false, false, vec![], None),
        ("  execute p", prep, true, false, vec![], None),
        ("/* c */ -- x\n DEALLOCATE p", prep, false, true, vec![], None),
        ("deallocate prepare p", prep, false, true, vec![], None),
        ("DEALLOCATE", prep, false, true, vec![], None),
        ("DEALLOCATE ALL", None, false, true, vec![], None),
        ("deallocate prepare all", None, false, true, vec![], None),
        ("DISCARD ALL", None, false, true, vec![], Some(SetCmd::DiscardAll)),
        ("SELECT 'PREPARE'", None, false, false, vec![], None),
        ("SELECT 'discard'", None, false, true, vec![], None),
        ("EXPLAIN SELECT 1", None, false, false, vec![], None),
        ("", None, false, false, vec![], None),
        ("LISTEN jobs", feature("LISTEN"), false, false, vec![], None),
        ("create temporary table t (x int)", feature("temporary tables"), false, false, vec![], None),
        ("CREATE TEMP TABLE t (x int)", feature("temporary tables"), false, false, vec![], None),
        ("CREATE TABLE temp (x int)", None, false, false, vec![], None),
        ("SELECT 'LISTEN'", None, false, false, vec![], None),
        (
            "DECLARE \"pg3_Cur\" CURSOR WITH HOLD FOR SELECT 1",
            feature("WITH HOLD cursors"),
            false,
            false,
            vec![b"pg3_Cur"],
            None,
        ),
        (
            "DECLARE c CURSOR with  hold FOR SELECT 1",
            feature("WITH HOLD cursors"),
            false,
            false,
            vec![b"c"],
            None,
        ),
        (
            "BEGIN; DECLARE c CURSOR /* x */ WITH\n HOLD FOR SELECT 1; COMMIT",
            feature("WITH HOLD cursors"),
            false,
            false,
            vec![b"c"],
            None,
        ),
        (
            "DECLARE \"for\" NO SCROLL CURSOR WITH HOLD FOR SELECT 1",
            feature("WITH HOLD cursors"),
            false,
            false,
            vec![b"for"],
            None,
        ),
        ("DECLARE c CURSOR WITHOUT HOLD FOR SELECT 1", None, false, false, vec![b"c"], None),
        (
            "DECLARE U&\"c\" CURSOR WITH HOLD FOR SELECT 1",
            feature("WITH HOLD cursors"),
            true,
            false,
            vec![b"u"],
            None,
        ),
        (
            "DECLARE u&\"!0063\" UESCAPE '!' CURSOR WITH HOLD FOR SELECT 1",
            feature("WITH HOLD cursors"),
            true,
            false,
            vec![b"u"],
            None,
        ),
        // Read roughly: `u&"` inside a quoted name counts as an escape (a reset too many).
        ("DECLARE \"u&\" CURSOR WITHOUT HOLD FOR SELECT 1", None, true, false, vec![b"u&"], None),
        ("DECLARE c CURSOR FOR SELECT 'with hold'", None, false, false, vec![b"c"], None),
        (
            "/* a /* b */ */ DECLARE c CURSOR WITH HOLD FOR SELECT 1",
            feature("WITH HOLD cursors"),
            false,
            false,
            vec![b"c"],
            None,
        ),
        ("SELECT 1; LISTEN x", feature("LISTEN"), false, false, vec![], None),
        (
            "SELECT 'a;b'; create temp table t (x int)",
            feature("temporary tables"),
            false,
            false,
            vec![],
            None,
        ),
        ("SELECT 1; PREPARE p AS SELECT 1", prep, false, false, vec![], None),
        // A `;` in quoted text or a comment starts no statement (a function body, a value).
        ("DO $$BEGIN PERFORM 1; EXECUTE 'SELECT 1'; END$$", None, true, false, vec![], None),
        ("CREATE FUNCTION f() RETURNS void AS $b$ SELECT 1; LISTEN x $b$", None, false, false, vec![], None),
        ("SELECT 'step one; execute step two'", None, false, false, vec![], None),
        ("SELECT 1 /* a; prepare b */", None, false, false, vec![], None),
        ("SELECT 1 AS \"a; listen b\"", None, false, false, vec![], None),
        ("SELECT 'x'; LISTEN y", feature("LISTEN"), false, false, vec![], None),
        ("SELECT 1 AS a$x$; LISTEN y; SELECT '$x$'", feature("LISTEN"), false, false, vec![], None),
        ("SELECT E'\\''; LISTEN y; SELECT ''", feature("LISTEN"), false, false, vec![], None),
        ("SELECT 1; DEALLOCATE ALL", None, false, true, vec![], None),
        ("SELECT 1; DO $$ $$", None, true, false, vec![], None),
        ("SELECT 'x; DO'", None, false, false, vec![], None),
        ("SELECT 1; SET x = 1", None, false, false, vec![], None),
        ("BEGIN; declare C1 cursor for select 1", None, false, false, vec![b"c1"], None),
        ("SELECT 'DECLARE'", None, false, false, vec![], None),
        ("SET statement_timeout = 5000", None, false, false, vec![], set("statement_timeout", "5000")),
        ("/* orm */ SET search_path TO a, \"B\"", None, true, false, vec![], set("search_path", "a, \"B\"")),
        ("RESET ALL;", None, false, false, vec![], Some(SetCmd::ResetAll)),
        ("reset work_mem", None, false, false, vec![], Some(SetCmd::Reset { name: "work_mem".into() })),
        ("SET LOCAL work_mem = '1MB'", None, false, false, vec![], None),
        ("SET ROLE admin", None, false, false, vec![], None),
        ("set.x = 1", None, false, false, vec![], None),
    ];
    for (sql, refusal, suspect, drops, cursors, set) in cases {
        let class = classify(sql.as_bytes());
        assert_eq!(class.refusal(), refusal, "{sql}");
        assert_eq!(class.suspect_settings(), suspect, "{sql}");
        assert_eq!(class.drops_statements(), drops, "{sql}");
        let cursors: Vec<Box<[u8]>> = cursors.into_iter().map(Into::into).collect();
        assert_eq!(class.declared_cursors(sql.as_bytes()), cursors, "{sql}");
        assert_eq!(class.set(sql.as_bytes()), set, "{sql}");
        agree(sql.as_bytes()).unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
}

/// The one-pass classifier as it was before its scan tested letter pairs (main at 1bdefc8):
/// the reference the faster scan and first-word match are held to.
mod previous {
    use super::super::{
        first_words, makes_temporary, unicode_escapes, Class, DECLARES, DROPS, KEYWORDS, SUSPECT, TEMP,
    };
    use super::words_verdict;

    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;

    /// For each byte, the keywords whose letter at `pos` it is (either case).
    const fn letter_table(pos: usize) -> [u8; 256] {
        let mut table = [0u8; 256];
        let mut k = 0;
        while k < KEYWORDS.len() {
            let c = KEYWORDS[k][pos];
            table[c as usize] |= 1 << k;
            table[c.to_ascii_uppercase() as usize] |= 1 << k;
            k += 1;
        }
        table
    }
    const FIRST_LETTER: [u8; 256] = letter_table(0);
    const SECOND_LETTER: [u8; 256] = letter_table(1);

    pub fn classify(sql: &[u8]) -> Class {
        let mut found = 0u8;
        // Every keyword's second letter is an `e` or an `i`: eight bytes at a time, only those
        // are looked at (`j`, a possible second letter), and only where the letter before fits
        // too is a keyword compared.
        let mut start = 1;
        while start < sql.len() {
            let (mut candidates, span) = match sql.get(start..start + 8).map(<[u8; 8]>::try_from) {
                Some(Ok(eight)) => (e_or_i(u64::from_le_bytes(eight)), 8),
                // The last few bytes: each is looked at.
                _ => {
                    let span = sql.len() - start;
                    (HIGHS & ((1u64 << (8 * span)) - 1), span)
                }
            };
            while candidates != 0 {
                let j = start + (candidates.trailing_zeros() / 8) as usize;
                candidates &= candidates - 1;
                let i = j - 1;
                let mut maybe =
                    FIRST_LETTER[usize::from(sql[i])] & SECOND_LETTER[usize::from(sql[j])] & !found;
                while maybe != 0 {
                    let k = maybe.trailing_zeros() as usize;
                    maybe &= maybe - 1;
                    if sql[i..].get(..KEYWORDS[k].len()).is_some_and(|w| w.eq_ignore_ascii_case(KEYWORDS[k]))
                    {
                        found |= 1 << k;
                    }
                }
            }
            start += span;
        }
        let (suspect, drops) = (found & SUSPECT != 0, found & DROPS != 0);
        let declares = found & DECLARES != 0;
        // The words decide the refusal and whether code runs (the reference's reading since
        // the refusals look at every statement); SET/RESET only as the first word.
        let (refusal, code, cursors, copy) = words_verdict(sql);
        let mut words = [&[][..]; 1];
        let n = first_words(sql, &mut words);
        let word = |k: &str| n == 1 && words[0].eq_ignore_ascii_case(k.as_bytes());
        let escaped = unicode_escapes(sql);
        Class {
            refusal,
            suspect_settings: suspect || code || escaped,
            drops_statements: drops,
            declares,
            cursors,
            set_like: word("SET") || word("RESET") || word("DISCARD"),
            leaves_state: escaped || found & TEMP != 0 && makes_temporary(sql),
            copy,
        }
    }

    fn e_or_i(w: u64) -> u64 {
        const LOW7: u64 = !HIGHS;
        // `| 0x20` maps `E` to `e` and `I` to `i` (and no other byte to either).
        let lower = w | (ONES * 0x20);
        // A byte's high bit, once all its low bits are set too, is clear only when it was zero
        // (no carry leaves a byte: (b & 0x7f) + 0x7f <= 0xfe).
        let zero = |v: u64| !(((v & LOW7).wrapping_add(LOW7)) | v | LOW7);
        zero(lower ^ (ONES * u64::from(b'e'))) | zero(lower ^ (ONES * u64::from(b'i')))
    }
}

/// Which keywords occur in `sql`, searched for one position at a time.
fn keywords_bytewise(sql: &[u8]) -> u8 {
    let mut found = 0;
    for (k, keyword) in KEYWORDS.iter().enumerate() {
        if sql.windows(keyword.len()).any(|w| w.eq_ignore_ascii_case(keyword)) {
            found |= 1 << k;
        }
    }
    found
}

/// Bytes drawn mostly from the keywords' letters (either case), so that keywords and near
/// misses occur often, with zeros, 0x01 bytes (the filter's borrow) and any other byte.
fn keyword_soup() -> impl Strategy<Value = Vec<u8>> {
    let alphabet: &[u8] = b"dDsStTwWeEiI_ ca\0\x01lhoHz";
    let piece = prop_oneof![
        4 => prop::sample::select(KEYWORDS.to_vec()).prop_map(|k| k.to_vec()),
        4 => prop::collection::vec(prop::sample::select(alphabet.to_vec()), 1..4),
        1 => prop::collection::vec(any::<u8>(), 1..3),
    ];
    (prop::collection::vec((piece, any::<u32>()), 0..12)).prop_map(|parts| {
        let mut s = Vec::new();
        for (p, case) in parts {
            s.extend(p.iter().enumerate().map(|(i, b)| {
                if case >> (i % 32) & 1 == 1 {
                    b.to_ascii_uppercase()
                } else {
                    *b
                }
            }));
        }
        s
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

    #[test]
    fn scan_finds_what_a_bytewise_search_finds(sql in keyword_soup()) {
        prop_assert_eq!(keywords(&sql), keywords_bytewise(&sql));
        prop_assert_eq!(classify(&sql), previous::classify(&sql));
    }

    #[test]
    fn scan_agrees_on_any_bytes(sql in prop::collection::vec(any::<u8>(), 0..64)) {
        prop_assert_eq!(keywords(&sql), keywords_bytewise(&sql));
        prop_assert_eq!(scan(&sql).1, sql.iter().position(|&b| b == b';'));
        prop_assert_eq!(scan(&sql).2, sql.contains(&b'&'));
        prop_assert_eq!(classify(&sql), previous::classify(&sql));
    }

    #[test]
    fn classify_agrees_with_the_previous_scan(sql in sqlish()) {
        prop_assert_eq!(classify(&sql), previous::classify(&sql));
    }
}

/// The first `;` at every offset and text length around the eight-byte steps and the padded
/// tail, with `;`s after it and bytes that differ from `;` in one bit (`:`, `{`, `3`) or
/// that the word-wide test may mark after a match (0x3a) around it.
#[test]
fn first_semicolon_at_every_offset_and_length() {
    for fill in [b'x', b':', b'{', b'3', 0x3a, 0] {
        for len in 0..40 {
            let mut sql = vec![fill; len];
            assert_eq!(scan(&sql).1, None, "{sql:?}");
            for at in 0..len {
                sql[at] = b';';
                assert_eq!(scan(&sql).1, Some(at), "{sql:?}");
                sql[at] = fill;
            }
            for at in 0..len {
                let mut two = sql.clone();
                two[at] = b';';
                two[len - 1] = b';';
                assert_eq!(scan(&two).1, Some(at), "{two:?}");
            }
        }
    }
}

/// Every keyword at every offset and text length around the eight-byte steps and the padded
/// tail, in both cases: found exactly where it is whole.
#[test]
fn keywords_at_every_offset_and_length() {
    for (k, keyword) in KEYWORDS.iter().enumerate() {
        for len in 0..40 {
            for at in 0..len {
                let mut sql = vec![b'x'; len];
                let end = (at + keyword.len()).min(len);
                sql[at..end].copy_from_slice(&keyword[..end - at]);
                for upper in [false, true] {
                    if upper {
                        sql.make_ascii_uppercase();
                    }
                    let expect = if end - at == keyword.len() { 1 << k } else { 0 };
                    assert_eq!(keywords(&sql), expect, "{:?}", String::from_utf8_lossy(&sql));
                    assert_eq!(keywords_bytewise(&sql), expect);
                }
            }
        }
    }
}

/// What may make a cursor on the server: a statement starting with DECLARE (a real one: not
/// inside a string), DO or CALL; a column that merely contains the word does not.
#[test]
fn what_may_declare_a_cursor() {
    for (sql, may) in [
        ("DECLARE c CURSOR FOR SELECT 1", true),
        ("BEGIN; declare c cursor with hold for select 1; COMMIT", true),
        ("DO $$BEGIN EXECUTE 'DECL' || 'ARE c CURSOR WITH HOLD FOR SELECT 1'; END$$", true),
        ("SELECT 1; CALL p()", true),
        ("SELECT declared_at FROM shipments", false),
        ("UPDATE t SET undeclared = true", false),
        ("SELECT 'x; DECLARE c CURSOR FOR SELECT 1'", false),
    ] {
        assert_eq!(classify(sql.as_bytes()).may_declare(), may, "{sql}");
    }
}

/// What may leave a temporary object or hide names (the connection is reset), and what only
/// looks like it; and what may change settings without naming set_config.
#[test]
fn what_may_leave_temporary_objects_or_hide_names() {
    for (sql, leaves, suspect) in [
        ("CREATE TABLE pg_temp.t (x int)", true, false),
        ("create sequence \"PG_TEMP\".s", true, false),
        ("SELECT 1 AS x INTO TEMP t", true, false),
        ("select 1 as x into temporary table t", true, false),
        ("CREATE LOCAL TEMP TABLE t (x int)", true, false),
        ("CREATE GLOBAL TEMPORARY TABLE t (x int)", true, false),
        ("CREATE OR REPLACE TEMP VIEW v AS SELECT 1", true, false),
        ("EXPLAIN ANALYZE CREATE TEMP TABLE t AS SELECT 1", true, false),
        ("SET search_path = pg_temp, public", true, true),
        ("CREATE TABLE U&\"pg\\005ftemp\".t (x int)", true, true),
        ("SELECT U&\"set\\005fconfig\"('a.b', 'c', false)", true, true),
        ("SELECT u&'x'", true, true),
        ("UPDATE pg_settings SET setting = 'x' WHERE name LIKE 'search%'", false, true),
        ("INSERT INTO temp VALUES (1)", false, false),
        ("MERGE INTO temp USING s ON true WHEN MATCHED THEN DELETE", false, false),
        ("SELECT temperature, template FROM readings", false, false),
        ("CREATE TABLE temp (x int)", false, false),
        ("SELECT a & b FROM t", false, false),
        // Read roughly, inside strings too (a reset too many).
        ("SELECT 'U&' FROM t", true, true),
    ] {
        let class = classify(sql.as_bytes());
        assert_eq!(class.leaves_state(), leaves, "{sql}");
        assert_eq!(class.suspect_settings(), suspect, "{sql}");
        assert_eq!(
            class.marks(),
            Marks { cursors: false, settings: suspect, state: leaves, drops: false },
            "{sql}"
        );
    }
}

/// The first `;` and whether there is a `&`, with one or two of each before, after or
/// without the other, at every offset of short texts (one search finds the first of both,
/// a second the other past it).
#[test]
fn semicolon_and_ampersand_in_any_order() {
    for len in 0..24 {
        for semi in 0..=len {
            for amp in 0..=len {
                let mut sql = vec![b'x'; len];
                if amp < len {
                    sql[amp] = b'&';
                }
                if semi < len {
                    sql[semi] = b';';
                }
                if len > 0 && semi + 3 < len {
                    sql[len - 1] = b';';
                }
                let (_, found_semi, found_amp) = scan(&sql);
                assert_eq!(found_semi, sql.iter().position(|&b| b == b';'), "{sql:?}");
                assert_eq!(found_amp, sql.contains(&b'&'), "{sql:?}");
            }
        }
    }
}
