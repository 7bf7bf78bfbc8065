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
