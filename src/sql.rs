//! SQL text that pgtenant writes itself (quoting of identifiers and literals) and the little
//! it reads of clients' SQL (skipping leading blanks and comments), in one place.
//!
//! Quoting follows PostgreSQL's `quote_ident` / `quote_literal`
//! (<https://www.postgresql.org/docs/current/sql-syntax-lexical.html>): identifiers are
//! double-quoted with `"` doubled; literals are single-quoted with `'` doubled, and written as
//! escape strings (`E'…'`) with `\` doubled when they hold a backslash, so they mean the same
//! whatever `standard_conforming_strings` is.

/// `sql` after its leading whitespace and comments (`-- …` to the end of the line,
/// `/* … */`, nested as PostgreSQL nests them), as PostgreSQL's scanner skips them
/// (<https://www.postgresql.org/docs/current/sql-syntax-lexical.html#SQL-SYNTAX-COMMENTS>).
/// What is left starts at a character boundary when `sql` is UTF-8 (only ASCII is skipped).
pub fn skip_blank(mut sql: &[u8]) -> &[u8] {
    loop {
        let start = sql.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(sql.len());
        sql = &sql[start..];
        if let Some(rest) = sql.strip_prefix(b"--") {
            sql = rest.iter().position(|&b| b == b'\n').map_or(&[][..], |i| &rest[i..]);
        } else if let Some(rest) = sql.strip_prefix(b"/*") {
            sql = after_block_comment(rest);
        } else {
            return sql;
        }
    }
}

/// What follows the block comment whose opening `/*` precedes `rest`: its `*/`, counting
/// the comments nested in it; nothing if it is not closed.
fn after_block_comment(rest: &[u8]) -> &[u8] {
    let (mut depth, mut i) = (1usize, 0);
    while let Some(pair) = rest.get(i..i + 2) {
        match pair {
            b"/*" => depth += 1,
            b"*/" => depth -= 1,
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
        if depth == 0 {
            return &rest[i..];
        }
    }
    &[]
}

/// Which `;` of a query end a statement, read as PostgreSQL's scanner reads them
/// (`src/backend/parser/scan.l`): one inside a string, a quoted name, a dollar-quoted string
/// or a comment does not. Asked about `;`s in increasing order, it reads the text forward
/// once, a name (whose `$`s open nothing: `a$b$`) or a parameter (`$1`) as one token. Where
/// its reading could differ from the server's, every later `;` counts (a statement too many,
/// never one hidden): a backslash in a string (an escape or not, as `E'…'` and
/// `standard_conforming_strings` say), a `$` in what follows a digit (`1$x$`, `1e$x$`: a
/// number then a dollar quote, or a name, as the server's version lexes numbers) or right
/// after the last byte of what may be a multibyte character of the client's encoding. An unclosed
/// quote or comment runs to the end, as the server reads it (it then runs nothing of the
/// query).
#[derive(Debug, Default)]
pub struct StatementEnds {
    /// Where the reading stands: outside anything quoted, at the start of a token.
    pos: usize,
    /// The reading may differ from the server's from here on: every later `;` counts.
    lost: bool,
}

impl StatementEnds {
    /// Whether the `;` at `at` (not before an earlier question's) ends a statement.
    pub fn ends_at(&mut self, sql: &[u8], at: usize) -> bool {
        while !self.lost && self.pos < at {
            let i = self.pos;
            let next = sql.get(i + 1).copied();
            self.pos = match sql[i] {
                b'\'' => match quoted_end(sql, i + 1, b'\'') {
                    Some(end) => end,
                    None => {
                        self.lost = true;
                        i + 1
                    }
                },
                b'"' => quoted_end(sql, i + 1, b'"').unwrap_or(sql.len()),
                b'-' if next == Some(b'-') => {
                    sql[i..].iter().position(|&b| b == b'\n' || b == b'\r').map_or(sql.len(), |n| i + n)
                }
                b'/' if next == Some(b'*') => sql.len() - after_block_comment(&sql[i + 2..]).len(),
                b'$' if next.is_some_and(|b| b.is_ascii_digit()) => {
                    run_end(sql, i + 1, |b| b.is_ascii_digit())
                }
                // A non-name byte right after a non-ASCII one may end a character of a
                // client encoding (Shift JIS 0x83 0x5C, BIG5, GBK, JOHAB): the server may
                // read the `$` as part of a name.
                b'$' if i >= 2
                    && sql[i - 2] >= 0x80
                    && !is_name_byte(sql[i - 1])
                    && !sql[i - 1].is_ascii_whitespace() =>
                {
                    self.lost = true;
                    i + 1
                }
                b'$' => dollar_quoted_end(sql, i),
                b if b.is_ascii_digit() => {
                    let end = run_end(sql, i, |b| is_name_byte(b) || b == b'.');
                    self.lost = sql[i..end].contains(&b'$');
                    end
                }
                b if is_name_byte(b) => run_end(sql, i, is_name_byte),
                _ => i + 1,
            };
        }
        if self.lost {
            return true;
        }
        // Past `at`: it lay inside something quoted.
        let ends = self.pos == at;
        if ends {
            self.pos = at + 1;
        }
        ends
    }
}

/// Where the run of bytes `part` accepts from `from` ends.
fn run_end(sql: &[u8], from: usize, part: impl Fn(u8) -> bool) -> usize {
    sql[from..].iter().position(|&b| !part(b)).map_or(sql.len(), |n| from + n)
}

/// Where the `'…'` or `"…"` whose text starts at `from` ends (after its closing quote; a
/// doubled quote closes and reopens it); the end of `sql` if unclosed; `None` for a string
/// holding a backslash before its close.
fn quoted_end(sql: &[u8], from: usize, quote: u8) -> Option<usize> {
    for (n, &b) in sql[from..].iter().enumerate() {
        if b == quote {
            return Some(from + n + 1);
        }
        if b == b'\\' && quote == b'\'' {
            return None;
        }
    }
    Some(sql.len())
}

/// Where what starts with the `$` at `i` (not before a digit) ends: after the closing
/// delimiter of a dollar-quoted string (`$$…$$`, `$tag$…$tag$`; the end of `sql` if
/// unclosed), or right after the `$` when it opens none.
fn dollar_quoted_end(sql: &[u8], i: usize) -> usize {
    let tag = run_end(sql, i + 1, |b| is_name_byte(b) && b != b'$');
    if sql.get(tag) != Some(&b'$') {
        return i + 1;
    }
    let delimiter = &sql[i..=tag];
    let mut from = tag + 1;
    while let Some(n) = sql[from..].iter().position(|&b| b == b'$') {
        if sql[from + n..].starts_with(delimiter) {
            return from + n + delimiter.len();
        }
        from += n + 1;
    }
    sql.len()
}

/// A byte that may continue a name (PostgreSQL's `ident_cont`: letters, digits, `_`, `$` and
/// every non-ASCII byte); all but digits and `$` may start one.
fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

/// A double-quoted SQL identifier (one name part).
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A possibly dotted name (`pgtenant.tenant_id`), quoted part by part.
pub fn quote_dotted(name: &str) -> String {
    name.split('.').map(quote_ident).collect::<Vec<_>>().join(".")
}

/// A string literal that means the same whatever `standard_conforming_strings` is.
pub fn quote_literal(v: &str) -> String {
    if v.contains('\\') {
        format!("E'{}'", v.replace('\\', "\\\\").replace('\'', "''"))
    } else {
        format!("'{}'", v.replace('\'', "''"))
    }
}

/// [`quote_literal`] in ASCII alone: a character beyond ASCII goes as an escape of an E''
/// string (`\u00E9`), which means the same whatever `client_encoding` the server reads the
/// text in (and whatever `standard_conforming_strings`). For text sent while the
/// connection's client_encoding may not be UTF-8 (another client's).
pub fn quote_literal_ascii(v: &str) -> String {
    use std::fmt::Write as _;
    if v.is_ascii() {
        return quote_literal(v);
    }
    let mut out = String::with_capacity(v.len() + 8);
    out.push_str("E'");
    for c in v.chars() {
        match c {
            '\\' => out.push_str(r"\\"),
            '\'' => out.push_str("''"),
            c if c.is_ascii() => out.push(c),
            c if u32::from(c) <= 0xFFFF => {
                let _ = write!(out, r"\u{:04X}", u32::from(c));
            }
            c => {
                let _ = write!(out, r"\U{:08X}", u32::from(c));
            }
        }
    }
    out.push('\'');
    out
}

/// Byte-wise equality that takes the same time wherever the first difference is (the lengths
/// are not secret).
pub fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq as _;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ascii_literals_escape_what_is_beyond_ascii() {
        assert_eq!(quote_literal_ascii("plain 'q'"), "'plain ''q'''");
        assert_eq!(quote_literal_ascii("caf\u{e9} \\ 'x'"), r"E'caf\u00E9 \\ ''x'''");
        assert_eq!(quote_literal_ascii("\u{1F600}"), r"E'\U0001F600'");
        assert!(quote_literal_ascii("Z\u{fc}rich \u{4e2d}").is_ascii());
    }

    #[test]
    fn blanks_and_comments_are_skipped() {
        assert_eq!(skip_blank(b"  -- a\n /* b */\tSET x"), b"SET x");
        assert_eq!(skip_blank(b"/* open"), b"");
        assert_eq!(skip_blank(b"-- only"), b"");
        assert_eq!(skip_blank(b"SELECT 1"), b"SELECT 1");
        // Nested, as PostgreSQL reads them; `/*/` opens only.
        assert_eq!(skip_blank(b"/* a /* b */ c */ DECLARE"), b"DECLARE");
        assert_eq!(skip_blank(b"/* a /* b */ DECLARE"), b"");
        assert_eq!(skip_blank(b"/*/ x */ y"), b"y");
        assert_eq!(skip_blank(b"/**/x"), b"x");
    }

    /// The `;`s of `sql` that end a statement, by position.
    fn ends(sql: &[u8]) -> Vec<usize> {
        let mut e = StatementEnds::default();
        (0..sql.len()).filter(|&i| sql[i] == b';').filter(|&i| e.ends_at(sql, i)).collect()
    }

    #[test]
    fn statements_end_at_semicolons_outside_quotes() {
        assert_eq!(ends(b"SELECT 1; SELECT 2;"), [8, 18]);
        assert_eq!(ends(b"SELECT 'a;b'; x"), [12]);
        assert_eq!(ends(b"SELECT 'it''s;'; x"), [15]);
        assert_eq!(ends(b"SELECT \"a;\"\"b\"; x"), [14]);
        assert_eq!(ends(b"SELECT 1 -- a;b\n; x"), [16]);
        assert_eq!(ends(b"SELECT 1 /* a /* ; */ ; */; x"), [26]);
        assert_eq!(ends(b"DO $$BEGIN x; y; END$$; z"), [22]);
        assert_eq!(ends(b"DO $f$ $$; $g$; $f$; z"), [19]);
        // A `$` inside a name opens nothing; a parameter neither.
        assert_eq!(ends(b"SELECT 1 AS a$x$; b; '$x$'"), [16, 19]);
        assert_eq!(ends(b"SELECT $1; $2"), [9]);
        assert_eq!(ends(b"SELECT $1$x$; $x$; y"), [17]);
        assert_eq!(ends(b"SELECT x1$x$; $x$; y"), [12]);
        // After a digit a `$` may open a dollar quote or continue a name: every `;` counts.
        assert_eq!(ends(b"SELECT 1$x$; $x$; y"), [11, 16]);
        assert_eq!(ends(b"SELECT 1e$x$; $x$; y"), [12, 17]);
        // A backslash in a string: every later `;` counts (E'\'' closes after the second
        // quote, '\' at the first, as the server may read either).
        assert_eq!(ends(b"SELECT E'\\''; x; '"), [12, 15]);
        assert_eq!(ends(b"SELECT 'a\\'; x; ';'"), [11, 14, 17]);
        // Shift JIS ソ (0x83 0x5C) then `$x$`: a name on the server.
        assert_eq!(ends(b"SELECT 1 AS \x83\x5c$x$; y; '$x$'"), [17, 20]);
        assert_eq!(ends(b"SELECT '\xc3\xa9', $x$;$x$; y"), [20]);
        // Unclosed: nothing after counts (the server runs nothing of the query).
        assert_eq!(ends(b"SELECT 'a; b"), [0usize; 0]);
        assert_eq!(ends(b"SELECT $q$ a; b"), [0usize; 0]);
        assert_eq!(ends(b"SELECT /* a; b"), [0usize; 0]);
    }

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_dotted("pgtenant.tenant_id"), "\"pgtenant\".\"tenant_id\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal("a\\b'"), "E'a\\\\b'''");
    }

    #[test]
    fn same_bytes_compares_all() {
        assert!(same_bytes(b"abc", b"abc"));
        assert!(!same_bytes(b"abc", b"abd"));
        assert!(!same_bytes(b"abc", b"ab"));
        assert!(!same_bytes(b"", b"a"));
    }
}
