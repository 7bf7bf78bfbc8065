//! What pgtenant needs to know about a client's SQL text in transaction mode, read in one pass:
//! the first words (SQL-level PREPARE/EXECUTE/DEALLOCATE, session features such as LISTEN,
//! `SET`/`RESET`, code that runs: DO, CALL) and a few keywords anywhere in the text
//! (set_config, search_path, tenant_id, DEALLOCATE, DISCARD, DECLARE). Every
//! consumer in [`super::rewrite`] reads the one [`Class`] instead of scanning the text again;
//! the rare cases that need more (a SET's value, the names of declared cursors) parse the text
//! only when the class says they are there.
//!
//! The reading is rough by design, as it was before: keywords are found inside quoted strings
//! and comments too. Every such miss errs on the safe side (a connection suspected of changed
//! settings is reset; a barrier only makes names wait; a cursor name too many only lets the
//! client use a portal it may have created). The refusals read words, not keywords: the first
//! words of each statement (one starts after each `;` outside strings, quoted names, dollar
//! quotes and comments: [`StatementEnds`]) and, after DECLARE, its words before FOR (WITH
//! HOLD, whatever blanks or comments split it). A statement inside code (a DO block, a
//! function) is not seen; a DO block or CALL counts as one that may declare cursors.

use super::setcmd::{self, SetCmd};
use crate::sql::{skip_blank, StatementEnds};

/// A statement that cannot run in transaction mode as written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// SQL-level `PREPARE`, `EXECUTE`, `DEALLOCATE <name>` (not `DEALLOCATE ALL`).
    SqlPrepare,
    /// A session-level feature (`LISTEN`, `CREATE TEMP TABLE`, `DECLARE … WITH HOLD`), named
    /// as the refusal's text names it.
    Feature(&'static str),
}

/// One reading of a query text.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Class {
    refusal: Option<Refusal>,
    /// It may change a setting without a SET command tag: it calls set_config or names
    /// search_path / the tenant setting, or runs code (DO, CALL, EXECUTE). A user-defined
    /// function called from a plain SELECT is not recognised (the README says so).
    suspect_settings: bool,
    /// DEALLOCATE or DISCARD occurs: it may drop every prepared statement.
    drops_statements: bool,
    /// DECLARE occurs: it may declare cursors, portals the client may then use.
    declares: bool,
    /// A statement starts with DECLARE, or with DO or CALL: code that runs, which may declare
    /// a cursor whatever its text spells (`EXECUTE 'DECL' || 'ARE …'`).
    cursors: bool,
    /// It starts with SET or RESET.
    set_like: bool,
    /// A statement starts with COPY (which may read copy data from the client).
    copy: bool,
    /// It may make a temporary object (names `pg_temp`, or TEMP follows CREATE, LOCAL,
    /// GLOBAL, REPLACE or INTO anywhere), or spells names with Unicode escapes (`U&"…"`, which
    /// can hide any name looked for): the connection is reset before another client uses it.
    leaves_state: bool,
}

/// What running a statement may leave on its server connection for the next client. Noted
/// on the connection it runs on: at its Query or Parse, and again at every Bind of it (a
/// prepared statement runs on whichever connection its client has then, maybe one that
/// another client used since its Parse).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Marks {
    /// A statement starts with DECLARE, DO or CALL (code may declare a cursor however it
    /// spells it): cursors are closed before the next client.
    pub cursors: bool,
    /// It may change settings without a SET tag (set_config, pg_settings, search_path or the
    /// tenant setting named, code that runs): the isolation setting is applied afresh for the
    /// next client.
    pub settings: bool,
    /// It may make a temporary object, or hides names behind Unicode escapes: the connection
    /// is reset.
    pub state: bool,
    /// It may drop every prepared statement (DEALLOCATE, DISCARD): names behind it wait for
    /// its verdict (see `Statements::raise_barrier`).
    pub drops: bool,
}

// Keywords looked for anywhere in the text (ASCII, lowercase; matched ignoring case), one bit
// each in the masks below.
// `settings` finds `pg_settings`, whose UPDATE rule calls set_config; `temp` is confirmed by
// [`makes_temporary`].
const KEYWORDS: [&[u8]; 8] = [
    b"set_config",
    b"search_path",
    b"tenant_id",
    b"deallocate",
    b"discard",
    b"declare",
    b"settings",
    b"temp",
];
const SUSPECT: u8 = 0b0100_0111;
const TEMP: u8 = 1 << 7;
const DROPS: u8 = 0b001_1000;
const DECLARE: &[u8] = KEYWORDS[5];
const DECLARES: u8 = 1 << 5;

/// A keyword as two overlapping windows, its first and its last eight bytes (four for one
/// shorter than eight), little-endian: `head`/`tail` the bytes in lower case, `*_case` 0x20
/// at each letter (`b | 0x20` is a lower-case letter exactly when `b` is that letter in either
/// case; other bytes must match exactly). Two compares confirm a keyword at a candidate.
#[derive(Clone, Copy)]
struct Pattern {
    head: u64,
    head_case: u64,
    tail: u64,
    tail_case: u64,
}

const fn window(keyword: &[u8], from: usize, n: usize) -> (u64, u64) {
    let (mut value, mut case) = (0u64, 0u64);
    let mut i = 0;
    while i < n {
        let b = keyword[from + i];
        value |= (b as u64) << (8 * i);
        if b.is_ascii_lowercase() {
            case |= 0x20 << (8 * i);
        }
        i += 1;
    }
    (value, case)
}

const fn patterns() -> [Pattern; KEYWORDS.len()] {
    let mut out = [Pattern { head: 0, head_case: 0, tail: 0, tail_case: 0 }; KEYWORDS.len()];
    let mut k = 0;
    while k < KEYWORDS.len() {
        let keyword = KEYWORDS[k];
        let n = if keyword.len() >= 8 { 8 } else { 4 };
        let (head, head_case) = window(keyword, 0, n);
        let (tail, tail_case) = window(keyword, keyword.len() - n, n);
        out[k] = Pattern { head, head_case, tail, tail_case };
        k += 1;
    }
    out
}
const PATTERNS: [Pattern; KEYWORDS.len()] = patterns();

/// Whether keyword `k` starts at `sql[i]` (ignoring case).
fn keyword_at(sql: &[u8], i: usize, k: usize) -> bool {
    let len = KEYWORDS[k].len();
    let Some(text) = sql.get(i..i + len) else { return false };
    let p = PATTERNS[k];
    if len >= 8 {
        le_u64(&text[..8]) | p.head_case == p.head && le_u64(&text[len - 8..]) | p.tail_case == p.tail
    } else {
        u64::from(le_u32(&text[..4])) | p.head_case == p.head
            && u64::from(le_u32(&text[len - 4..])) | p.tail_case == p.tail
    }
}

/// For each byte, itself upper-cased if it may be part of a first word (a letter, a digit or
/// `_`), else 0.
const WORD_UPPER: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        if c.is_ascii_alphanumeric() || c == b'_' {
            table[b] = c.to_ascii_uppercase();
        }
        b += 1;
    }
    table
};

/// The longest first word [`classify`] looks for (DEALLOCATE).
const LONGEST_FIRST_WORD: usize = 10;

/// Reads `sql` (a Query's text, with or without its NUL, or a Parse's) once.
pub fn classify(sql: &[u8]) -> Class {
    let (found, semicolon, ampersand) = scan(sql);
    let (suspect, drops) = (found & SUSPECT != 0, found & DROPS != 0);
    let declares = found & DECLARES != 0;
    // As `unicode_escapes`, with the `&` already looked for.
    let escaped = ampersand && escapes_after_ampersand(sql);
    let leaves_state = escaped || found & TEMP != 0 && makes_temporary(sql);
    let mut class = Class {
        suspect_settings: suspect || escaped,
        drops_statements: drops,
        declares,
        leaves_state,
        ..Class::default()
    };
    statement(sql, &mut class, true);
    if let Some(at) = semicolon {
        // Not for the usual `;` at the end (a Query's text may keep its NUL).
        if !sql[at + 1..].iter().all(|&b| b.is_ascii_whitespace() || b == 0) {
            later_statements(sql, at, &mut class);
        }
    }
    class
}

/// What the statements after the first add to `class`: a session-level feature counts
/// wherever a statement starts, after a `;` (the first at `at`) outside quoted text and
/// comments. The quoting is read only up to a `;` whose statement would change the class
/// (most queries have none, or one at their end).
#[inline(never)]
fn later_statements(sql: &[u8], mut at: usize, class: &mut Class) {
    let mut ends = StatementEnds::default();
    while class.refusal.is_none() {
        let rest = &sql[at + 1..];
        let mut next = *class;
        statement(rest, &mut next, false);
        if next != *class && ends.ends_at(sql, at) {
            *class = next;
        }
        let Some(n) = rest.iter().position(|&b| b == b';') else { return };
        at += 1 + n;
    }
}

/// What the first words of one statement (at the start of `sql`) add to `class`; SET and
/// RESET count only as the query's `first` statement.
#[inline(always)]
fn statement(sql: &[u8], class: &mut Class, first: bool) {
    // The first word decides nearly everything; the next two matter after DEALLOCATE and
    // CREATE only. Upper-cased into a buffer as long as the longest first word looked for,
    // so one `match` compares it with all of them.
    let mut upper = [0u8; LONGEST_FIRST_WORD];
    let mut n = 0;
    let sql = skip_blank(sql);
    for &b in sql {
        let u = WORD_UPPER[usize::from(b)];
        if u == 0 {
            break;
        }
        let Some(slot) = upper.get_mut(n) else { return };
        *slot = u;
        n += 1;
    }
    let mut words = [&[][..]; 3];
    match &upper[..n] {
        b"PREPARE" => class.refusal = Some(Refusal::SqlPrepare),
        b"EXECUTE" => {
            class.refusal = Some(Refusal::SqlPrepare);
            class.suspect_settings = true;
        }
        b"DEALLOCATE" => {
            let n = first_words(sql, &mut words);
            let word = |i: usize, k: &[u8]| i < n && words[i].eq_ignore_ascii_case(k);
            let all = if word(1, b"PREPARE") { word(2, b"ALL") } else { word(1, b"ALL") };
            class.refusal = (!all).then_some(Refusal::SqlPrepare);
        }
        b"LISTEN" => class.refusal = Some(Refusal::Feature("LISTEN")),
        b"CREATE" => {
            let n = first_words(sql, &mut words[..2]);
            if n == 2
                && (words[1].eq_ignore_ascii_case(b"TEMP") || words[1].eq_ignore_ascii_case(b"TEMPORARY"))
            {
                class.refusal = Some(Refusal::Feature("temporary tables"));
            }
        }
        b"DECLARE" => {
            class.cursors = true;
            if holds(&sql[n..]) {
                class.refusal = Some(Refusal::Feature("WITH HOLD cursors"));
            }
        }
        b"DO" | b"CALL" => {
            class.suspect_settings = true;
            class.cursors = true;
        }
        b"SET" | b"RESET" | b"DISCARD" if first => class.set_like = true,
        b"COPY" => class.copy = true,
        _ => {}
    }
}

/// Whether a DECLARE (`sql` is what follows the word) makes a WITH HOLD cursor: `WITH HOLD`
/// among its words before FOR, whatever blanks and comments separate them. The name may be
/// quoted, also with Unicode escapes (`U&"…"`, then maybe `UESCAPE '…'`).
fn holds(mut sql: &[u8]) -> bool {
    let mut with = false;
    loop {
        sql = skip_blank(sql);
        let unicode = sql.len() >= 3 && sql[..2].eq_ignore_ascii_case(b"U&") && sql[2] == b'"';
        let quoted = if unicode { &sql[2..] } else { sql };
        if let Some(q @ (b'"' | b'\'')) = quoted.first() {
            let rest = &quoted[1..];
            let end = rest.iter().position(|b| b == q).map_or(rest.len(), |i| i + 1);
            sql = &rest[end..];
            with = false;
            continue;
        }
        let end = sql.iter().position(|&b| WORD_UPPER[usize::from(b)] == 0).unwrap_or(sql.len());
        if end == 0 {
            return false;
        }
        let word = &sql[..end];
        if word.eq_ignore_ascii_case(b"FOR") {
            return false;
        }
        if with && word.eq_ignore_ascii_case(b"HOLD") {
            return true;
        }
        with = word.eq_ignore_ascii_case(b"WITH");
        sql = &sql[end..];
    }
}

/// Whether a text in which `temp` occurs may make a temporary object: it names `pg_temp`
/// (the temporary schema, as a qualifier or on a search_path, which makes a plain CREATE
/// temporary), or the word TEMP or TEMPORARY follows CREATE, LOCAL, GLOBAL, REPLACE or INTO
/// (not INSERT INTO or MERGE INTO), anywhere: `EXPLAIN ANALYZE CREATE TEMP TABLE …`,
/// `SELECT … INTO TEMP t`, `CREATE OR REPLACE TEMP VIEW …`. Strings and comments are read
/// too: a reset too many, never one missed.
#[inline(never)]
pub(super) fn makes_temporary(sql: &[u8]) -> bool {
    if sql.windows(7).any(|w| w.eq_ignore_ascii_case(b"pg_temp")) {
        return true;
    }
    let is = |w: &[u8], k: &[u8]| w.eq_ignore_ascii_case(k);
    let mut prev: [&[u8]; 2] = [&[], &[]];
    for word in sql.split(|&b| !(b.is_ascii_alphanumeric() || b == b'_')).filter(|w| !w.is_empty()) {
        if is(word, b"TEMP") || is(word, b"TEMPORARY") {
            let [before, last] = prev;
            let into = is(last, b"INTO") && !is(before, b"INSERT") && !is(before, b"MERGE");
            if into || [&b"CREATE"[..], b"LOCAL", b"GLOBAL", b"REPLACE"].iter().any(|k| is(last, k)) {
                return true;
            }
        }
        prev = [prev[1], word];
    }
    false
}

/// Whether `sql` may spell a name or string with Unicode escapes (`U&"…"`, `U&'…'`:
/// `U&"set\005fconfig"` is set_config), which no keyword search sees.
#[inline]
#[cfg(test)]
pub(super) fn unicode_escapes(sql: &[u8]) -> bool {
    // Nearly every query has no `&` at all: one fast search.
    sql.contains(&b'&') && escapes_after_ampersand(sql)
}

#[inline(never)]
fn escapes_after_ampersand(sql: &[u8]) -> bool {
    sql.windows(3).any(|w| w[0] | 0x20 == b'u' && w[1] == b'&' && matches!(w[2], b'"' | b'\''))
}

/// Which of [`KEYWORDS`] occur in `sql` (ignoring case), one bit each.
#[cfg(test)]
fn keywords(sql: &[u8]) -> u8 {
    scan(sql).0
}

/// Which of [`KEYWORDS`] occur in `sql` (ignoring case), one bit each, where its first `;` is,
/// and whether it holds a `&` (see [`semicolon_and_ampersand`]).
///
/// Every keyword is four bytes or longer (`temp`), so it holds one of every [`STRIDE`]-th position
/// among its first [`STRIDE`] bytes, and the byte after that one: only those positions are
/// read, the two bytes there looked up in [`PAIR_CLASS`] (the keywords and offsets whose
/// letters they may be, and the letters that may follow), and a keyword is compared only
/// where one may start. About two bytes in three of a query's text are read here (with
/// keywords of seven bytes or more and a step of 6, callgrind gave pgbench -N `classify`
/// 1,903 instructions a transaction of five queries, 3,042 with the 8-byte-wide test of every
/// letter pair this replaced). The `;` and `&` are found by `memchr`. The
/// tests hold it to a byte-by-byte search and to the scans it replaced, on any bytes.
fn scan(sql: &[u8]) -> (u8, Option<usize>, bool) {
    let (semicolon, ampersand) = semicolon_and_ampersand(sql);
    let mut found = 0u8;
    let mut at = 0;
    while let Some(&[a, b]) = sql.get(at..at + 2) {
        let class = usize::from(PAIR_CLASS[pair(a, b)]);
        if class != 0 {
            // The byte after the pair, as a letter (0 past the end): most pairs a class lets
            // through ("h_" of pgbench_accounts, "SE" of SELECT) are ruled out by it.
            let third = sql.get(at + 2).map_or(0, |&c| LETTER[usize::from(c)]);
            if THIRDS[class] >> third & 1 != 0 {
                found |= confirm(sql, at, CLASSES[class], found);
            }
        }
        at += STRIDE;
    }
    (found, semicolon, ampersand)
}

/// Where `sql`'s first `;` is and whether it holds a `&`, by one search for either byte and
/// a second only past the first one found (a query's `;` is mostly its last byte or two):
/// pgbench -N `classify` with its `memchr`s went from 2,700 to 2,385 instructions a transaction
/// of five queries (`sql.contains(&b'&')` was a second whole pass, by `core`'s slower search).
#[inline]
fn semicolon_and_ampersand(sql: &[u8]) -> (Option<usize>, bool) {
    let Some(first) = memchr::memchr2(b';', b'&', sql) else { return (None, false) };
    let rest = sql.get(first + 1..).unwrap_or_default();
    if sql.get(first) == Some(&b';') {
        // Mostly a NUL or a newline after the `;`: `core`'s search is a plain byte loop on
        // so few bytes, where the `memchr` crate's costs a call and its set-up.
        let amp = if rest.len() < 16 { rest.contains(&b'&') } else { memchr::memchr(b'&', rest).is_some() };
        (Some(first), amp)
    } else {
        (memchr::memchr(b';', rest).map(|at| first + 1 + at), true)
    }
}

/// The step between the positions [`scan`] reads: a keyword `L` bytes long holds the first
/// byte of a sampled pair among its first `L - 1` bytes when the step is at most `L - 1`.
const STRIDE: usize = 3;
const _: () = {
    let mut k = 0;
    while k < KEYWORDS.len() {
        assert!(KEYWORDS[k].len() > STRIDE);
        k += 1;
    }
};

/// Each byte's letter (1..=26, either case), 27 for `_`, 0 for every byte no keyword holds.
const LETTER: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        if c.is_ascii_alphabetic() {
            table[b] = c & 0x1F;
        } else if c == b'_' {
            table[b] = 27;
        }
        b += 1;
    }
    table
};

/// Two bytes as an index into [`PAIR_CLASS`].
#[inline(always)]
const fn pair(a: u8, b: u8) -> usize {
    (LETTER[a as usize] as usize) << 5 | LETTER[b as usize] as usize
}

/// For each pair of bytes (see [`pair`]), its class: 0 for a pair at no keyword's offsets
/// 0..STRIDE, else an index into [`CLASSES`], whose bit `8 * k + o` says that keyword `k`
/// has the pair at offset `o`, and into [`THIRDS`], whose bit `l` says that one of those
/// keywords has the letter `l` (see [`LETTER`]) after the pair, every bit when one ends
/// with the pair.
const PAIR_CLASSES: ([u8; 1024], [u64; 64], [u32; 64]) = {
    let (mut of, mut classes, mut thirds, mut n) = ([0u8; 1024], [0u64; 64], [0u32; 64], 1);
    let mut k = 0;
    while k < KEYWORDS.len() {
        let mut o = 0;
        while o < STRIDE {
            let p = pair(KEYWORDS[k][o], KEYWORDS[k][o + 1]);
            if of[p] == 0 {
                of[p] = n;
                n += 1;
            }
            classes[of[p] as usize] |= 1 << (8 * k + o);
            thirds[of[p] as usize] |=
                if o + 2 < KEYWORDS[k].len() { 1 << LETTER[KEYWORDS[k][o + 2] as usize] } else { !0 };
            o += 1;
        }
        k += 1;
    }
    (of, classes, thirds)
};
static PAIR_CLASS: [u8; 1024] = PAIR_CLASSES.0;
static CLASSES: [u64; 64] = PAIR_CLASSES.1;
static THIRDS: [u32; 64] = PAIR_CLASSES.2;

/// The keywords, not in `found` yet, that start where the class `maybe` of the pair at `at`
/// says they may.
#[inline(never)]
fn confirm(sql: &[u8], at: usize, mut maybe: u64, found: u8) -> u8 {
    let mut new = 0;
    while maybe != 0 {
        let bit = maybe.trailing_zeros() as usize;
        maybe &= maybe - 1;
        let (k, offset) = (bit / 8, bit % 8);
        if found & (1 << k) == 0 && offset <= at && keyword_at(sql, at - offset, k) {
            new |= 1 << k;
        }
    }
    new
}

/// Eight bytes, little-endian (`bytes` is eight long).
fn le_u64(bytes: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(bytes);
    u64::from_le_bytes(w)
}

/// Four bytes, little-endian (`bytes` is four long).
fn le_u32(bytes: &[u8]) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(bytes);
    u32::from_le_bytes(w)
}

impl Class {
    pub fn refusal(&self) -> Option<Refusal> {
        self.refusal
    }

    #[cfg(test)]
    pub fn suspect_settings(&self) -> bool {
        self.suspect_settings
    }

    pub fn drops_statements(&self) -> bool {
        self.drops_statements
    }

    /// DECLARE occurs: [`Class::declared_cursors`] may find names.
    pub fn declares(&self) -> bool {
        self.declares
    }

    /// A statement starts with COPY: the server may be reading copy data once it runs.
    pub fn copy(&self) -> bool {
        self.copy
    }

    /// It may make a cursor on the server: a statement starts with DECLARE, DO or CALL (code
    /// may declare one however it spells it). A column named `declared_at` does not count.
    #[cfg(test)]
    pub fn may_declare(&self) -> bool {
        self.cursors
    }

    /// It may make a temporary object, or hides names behind Unicode escapes.
    #[cfg(test)]
    pub fn leaves_state(&self) -> bool {
        self.leaves_state
    }

    /// What running it may leave on its connection (see [`Marks`]).
    pub fn marks(&self) -> Marks {
        Marks {
            cursors: self.cursors,
            settings: self.suspect_settings,
            state: self.leaves_state,
            drops: self.drops_statements,
        }
    }

    /// The session SET/RESET `sql` (the text this class was read from, without a trailing
    /// NUL) runs, if it is one.
    #[inline]
    pub fn set(&self, sql: &[u8]) -> Option<SetCmd> {
        if self.set_like {
            setcmd::parse(sql)
        } else {
            None
        }
    }

    /// Cursor names `sql` declares (`DECLARE name … CURSOR`, in any of its statements): they
    /// are portals the client may then use through the protocol (psycopg's server-side
    /// cursors describe them). Quoting and comments are handled roughly: a name too many
    /// only lets the client use a portal it might have created.
    pub fn declared_cursors(&self, sql: &[u8]) -> Vec<Box<[u8]>> {
        let mut names = Vec::new();
        // Most queries declare nothing: no second scan, no allocation.
        if !self.declares {
            return names;
        }
        for statement in sql.split(|&b| b == b';') {
            let mut words = [&[][..]; 3];
            let n = first_words(statement, &mut words);
            if n == 0 || !words[0].eq_ignore_ascii_case(DECLARE) {
                continue;
            }
            let rest = trim_start(&statement[statement.len() - trim_start(statement).len()..]);
            let after = rest.get(words[0].len()..).map(trim_start).unwrap_or_default();
            let name: Vec<u8> = if let Some(quoted) = after.strip_prefix(b"\"") {
                let end = quoted.iter().position(|&b| b == b'"').unwrap_or(quoted.len());
                quoted[..end].to_vec()
            } else if n > 1 {
                words[1].to_ascii_lowercase()
            } else {
                Vec::new()
            };
            if !name.is_empty() {
                names.push(name.into_boxed_slice());
            }
        }
        names
    }
}

/// The first words of a query (letters, digits, `_`), skipping whitespace and comments before
/// each; stops at anything else. Returns how many of `words` it filled.
fn first_words<'a>(mut sql: &'a [u8], words: &mut [&'a [u8]]) -> usize {
    let mut n = 0;
    while n < words.len() {
        sql = skip_blank(sql);
        let end = sql.iter().position(|b| !(b.is_ascii_alphanumeric() || *b == b'_')).unwrap_or(sql.len());
        if end == 0 {
            break;
        }
        words[n] = &sql[..end];
        n += 1;
        sql = &sql[end..];
    }
    n
}

fn trim_start(s: &[u8]) -> &[u8] {
    let i = s.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(s.len());
    &s[i..]
}

#[cfg(test)]
mod tests;
