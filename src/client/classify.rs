//! What pgtenant needs to know about a client's SQL text in transaction mode, read in one pass:
//! the first words (SQL-level PREPARE/EXECUTE/DEALLOCATE, session features such as LISTEN,
//! `SET`/`RESET`, code that runs: DO, CALL) and a few keywords anywhere in the text
//! (set_config, search_path, tenant_id, DEALLOCATE, DISCARD, DECLARE, WITH HOLD). Every
//! consumer in [`super::rewrite`] reads the one [`Class`] instead of scanning the text again;
//! the rare cases that need more (a SET's value, the names of declared cursors) parse the text
//! only when the class says they are there.
//!
//! The reading is rough by design, as it was before: keywords are found inside quoted strings
//! and comments too. Every such miss errs on the safe side (a connection suspected of changed
//! settings is reset; a barrier only makes names wait; a cursor name too many only lets the
//! client use a portal it may have created), except the refusals, which look at first words
//! only, as PgBouncer does.

use super::setcmd::{self, SetCmd};
use crate::sql::skip_blank;

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
    /// It starts with SET or RESET.
    set_like: bool,
}

// Keywords looked for anywhere in the text (ASCII, lowercase; matched ignoring case), one bit
// each in the masks below.
const KEYWORDS: [&[u8]; 7] =
    [b"set_config", b"search_path", b"tenant_id", b"deallocate", b"discard", b"declare", b"with hold"];
const SUSPECT: u8 = 0b000_0111;
const DROPS: u8 = 0b001_1000;
const DECLARE: &[u8] = KEYWORDS[5];
const DECLARES: u8 = 1 << 5;
const WITH_HOLD: u8 = 1 << 6;

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

/// Reads `sql` (a Query's text, with or without its NUL, or a Parse's) once.
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
            let mut maybe = FIRST_LETTER[usize::from(sql[i])] & SECOND_LETTER[usize::from(sql[j])] & !found;
            while maybe != 0 {
                let k = maybe.trailing_zeros() as usize;
                maybe &= maybe - 1;
                if sql[i..].get(..KEYWORDS[k].len()).is_some_and(|w| w.eq_ignore_ascii_case(KEYWORDS[k])) {
                    found |= 1 << k;
                }
            }
        }
        start += span;
    }
    let (suspect, drops) = (found & SUSPECT != 0, found & DROPS != 0);
    let (declares, with_hold) = (found & DECLARES != 0, found & WITH_HOLD != 0);
    // The first word decides nearly everything; the next two matter after DEALLOCATE and
    // CREATE only.
    let mut words = [&[][..]; 3];
    let mut n = first_words(sql, &mut words[..1]);
    if n == 1 && (words[0].eq_ignore_ascii_case(b"DEALLOCATE") || words[0].eq_ignore_ascii_case(b"CREATE")) {
        n = first_words(sql, &mut words);
    }
    let word = |i: usize, k: &str| i < n && words[i].eq_ignore_ascii_case(k.as_bytes());
    let refusal = if word(0, "PREPARE") || word(0, "EXECUTE") {
        Some(Refusal::SqlPrepare)
    } else if word(0, "DEALLOCATE") {
        let all = if word(1, "PREPARE") { word(2, "ALL") } else { word(1, "ALL") };
        (!all).then_some(Refusal::SqlPrepare)
    } else if word(0, "LISTEN") {
        Some(Refusal::Feature("LISTEN"))
    } else if word(0, "CREATE") && (word(1, "TEMP") || word(1, "TEMPORARY")) {
        Some(Refusal::Feature("temporary tables"))
    } else if word(0, "DECLARE") && with_hold {
        Some(Refusal::Feature("WITH HOLD cursors"))
    } else {
        None
    };
    Class {
        refusal,
        suspect_settings: suspect || word(0, "DO") || word(0, "CALL") || word(0, "EXECUTE"),
        drops_statements: drops,
        declares,
        set_like: word(0, "SET") || word(0, "RESET"),
    }
}

impl Class {
    pub fn refusal(&self) -> Option<Refusal> {
        self.refusal
    }

    pub fn suspect_settings(&self) -> bool {
        self.suspect_settings
    }

    pub fn drops_statements(&self) -> bool {
        self.drops_statements
    }

    /// The session SET/RESET `sql` (the text this class was read from, without a trailing
    /// NUL) runs, if it is one.
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

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// The high bit of each of the eight bytes of `w` (little-endian: byte 0 lowest) that is `e`,
/// `E`, `i` or `I`, the only second letters of [`KEYWORDS`]; exactly those.
fn e_or_i(w: u64) -> u64 {
    const LOW7: u64 = !HIGHS;
    // `| 0x20` maps `E` to `e` and `I` to `i` (and no other byte to either).
    let lower = w | (ONES * 0x20);
    // A byte's high bit, once all its low bits are set too, is clear only when it was zero
    // (no carry leaves a byte: (b & 0x7f) + 0x7f <= 0xfe).
    let zero = |v: u64| !(((v & LOW7).wrapping_add(LOW7)) | v | LOW7);
    zero(lower ^ (ONES * u64::from(b'e'))) | zero(lower ^ (ONES * u64::from(b'i')))
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
