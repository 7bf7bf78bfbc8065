//! Reading `src/` as modules: which module each file is, and which modules it names through
//! `crate::`, `super::` and `self::` paths outside `#[cfg(test)]` items.
//!
//! Not a Rust parser: a tokenizer that knows comments, strings, char literals and lifetimes
//! (so that a brace or a `crate::` in a string or a doc comment is not read as code), then
//! two passes over the tokens: drop `#[cfg(test)]` items, then expand every path that starts
//! at `crate`, `super` or `self`, including `use` trees (`crate::{a::{b, c}, d}`).
//! Known blind spot: a path through an alias (`use crate::client; client::relay::run()`)
//! counts as an import of `client` only, which is still the module the `use` names.

use std::path::{Path, PathBuf};

/// A module, as its path below the crate root (`["client", "relay"]`; the root is `[]`).
pub type ModPath = Vec<String>;

/// One module's source file.
pub struct ModFile {
    pub module: ModPath,
    /// Relative to the crate directory, for messages (`src/client/relay.rs`).
    pub file: String,
    pub text: String,
}

/// A path written in a module, made absolute (`crate::` removed, `super`/`self` resolved).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsedPath {
    pub segments: Vec<String>,
    pub line: usize,
}

/// What one file declares and names, with its `#[cfg(test)]` items left out.
#[derive(Debug, Default)]
pub struct FileScan {
    pub paths: Vec<UsedPath>,
    /// `#[cfg(test)] mod name;` declarations: files that belong to tests, not to the crate.
    pub test_modules: Vec<String>,
    /// `#![cfg(test)]` at the top: the whole file is a test module.
    pub whole_file_is_test: bool,
}

/// The library's module files under `src_dir` (the binary's `main.rs` and `src/bin/` are other
/// crates: their `crate::` means something else), sorted by module path.
pub fn library_files(crate_dir: &Path) -> std::io::Result<Vec<ModFile>> {
    let src = crate_dir.join("src");
    let mut files = Vec::new();
    for path in walk(&src)? {
        let rel = path.strip_prefix(&src).expect("walked below src");
        if path.extension().is_none_or(|e| e != "rs") || rel == Path::new("main.rs") || rel.starts_with("bin")
        {
            continue;
        }
        let text = std::fs::read_to_string(&path)?;
        let file = path.strip_prefix(crate_dir).expect("below the crate").display().to_string();
        files.push(ModFile { module: module_of(rel), file, text });
    }
    files.sort_by(|a, b| a.module.cmp(&b.module));
    Ok(files)
}

/// The module a file under `src/` is: `lib.rs` the root, `a/mod.rs` and `a.rs` module `a`.
pub fn module_of(rel: &Path) -> ModPath {
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    if let Some(last) = parts.last_mut() {
        *last = last.trim_end_matches(".rs").to_owned();
    }
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
        parts.pop();
    }
    parts
}

/// Every file below `dir`, recursively.
pub fn walk(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d)? {
            let path = entry?.path();
            if path.is_dir() {
                todo.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The paths `module`'s source names, outside `#[cfg(test)]` items.
pub fn scan(module: &[String], text: &str) -> FileScan {
    let tokens = tokenize(text);
    let mut scan = FileScan::default();
    let tokens = drop_test_items(&tokens, &mut scan);
    let mut i = 0;
    while i < tokens.len() {
        let starts_path = matches!(&tokens[i].tok, Tok::Ident(w) if w == "crate" || w == "super" || w == "self")
            && matches!(tokens.get(i + 1).map(|t| &t.tok), Some(Tok::PathSep))
            && !matches!(i.checked_sub(1).map(|p| &tokens[p].tok), Some(Tok::PathSep))
            // `pub(in crate::x)` names a visibility, not an import.
            && !matches!(i.checked_sub(1).map(|p| &tokens[p].tok), Some(Tok::Ident(w)) if w == "in");
        if starts_path {
            let line = tokens[i].line;
            let mut raw = Vec::new();
            i = use_tree(&tokens, i, &[], &mut raw);
            for segments in raw {
                if let Some(segments) = absolute(module, &segments) {
                    scan.paths.push(UsedPath { segments, line });
                }
            }
        } else {
            i += 1;
        }
    }
    scan
}

/// `segments` as written (starting at `crate`, `super` or `self`) made absolute from `module`;
/// None for a `super` above the root.
fn absolute(module: &[String], segments: &[String]) -> Option<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    let mut rest = segments;
    match rest.first().map(String::as_str) {
        Some("crate") => rest = &rest[1..],
        Some("self" | "super") => {
            out = module.to_vec();
            while let Some("self" | "super") = rest.first().map(String::as_str) {
                if rest[0] == "super" {
                    out.pop()?;
                }
                rest = &rest[1..];
            }
        }
        _ => return None,
    }
    // `self` inside a group names the group's prefix (`crate::pool::{self, X}`).
    out.extend(rest.iter().filter(|s| *s != "self").cloned());
    Some(out)
}

/// Expands the use tree (or plain path) at `i` into full paths under `prefix`; returns the
/// index after it.
fn use_tree(tokens: &[Token], mut i: usize, prefix: &[String], out: &mut Vec<Vec<String>>) -> usize {
    let mut path = prefix.to_vec();
    loop {
        match tokens.get(i).map(|t| &t.tok) {
            Some(Tok::Ident(w)) => {
                path.push(w.clone());
                i += 1;
                if !matches!(tokens.get(i).map(|t| &t.tok), Some(Tok::PathSep)) {
                    break;
                }
                i += 1;
            }
            Some(Tok::Punct('{')) => {
                i += 1;
                loop {
                    match tokens.get(i).map(|t| &t.tok) {
                        None => return i,
                        Some(Tok::Punct('}')) => return i + 1,
                        Some(Tok::Punct(',')) => i += 1,
                        Some(Tok::Ident(_)) | Some(Tok::Punct('{')) => {
                            i = use_tree(tokens, i, &path, out);
                            // `x as y`, `*`: skip to the next item of the group.
                            while !matches!(tokens.get(i).map(|t| &t.tok), None | Some(Tok::Punct(',' | '}')))
                            {
                                i += 1;
                            }
                        }
                        Some(_) => i += 1,
                    }
                }
            }
            // `*`, `<` of a turbofish, or anything else ends the path.
            _ => break,
        }
    }
    out.push(path);
    i
}

/// The tokens with every item under `#[cfg(test)]` (or `#[cfg(all(test, …))]`) removed, and
/// test-only `mod name;` declarations recorded.
fn drop_test_items(tokens: &[Token], scan: &mut FileScan) -> Vec<Token> {
    let mut kept = Vec::with_capacity(tokens.len());
    let mut i = 0;
    while i < tokens.len() {
        if let Some((inner, after)) = test_attribute(tokens, i) {
            if inner {
                scan.whole_file_is_test = true;
                return Vec::new();
            }
            i = after;
            // Further attributes of the same item.
            while let Some(end) = attribute_end(tokens, i) {
                i = end;
            }
            let start = i;
            i = item_end(tokens, i);
            let item: Vec<&Tok> = tokens[start..i].iter().map(|t| &t.tok).collect();
            if let Some(name) = mod_declaration(&item) {
                scan.test_modules.push(name);
            }
        } else {
            kept.push(tokens[i].clone());
            i += 1;
        }
    }
    kept
}

/// At `#[cfg(test)]` or `#![cfg(test)]`: (inner?, index after it).
fn test_attribute(tokens: &[Token], i: usize) -> Option<(bool, usize)> {
    let end = attribute_end(tokens, i)?;
    let inner = matches!(tokens.get(i + 1).map(|t| &t.tok), Some(Tok::Punct('!')));
    let body: Vec<&Tok> = tokens[i..end].iter().map(|t| &t.tok).skip(if inner { 3 } else { 2 }).collect();
    let is = |t: &Tok, w: &str| matches!(t, Tok::Ident(x) if x == w);
    let cfg_test = body.len() >= 4
        && is(body[0], "cfg")
        && matches!(body[1], Tok::Punct('('))
        && (is(body[2], "test") && matches!(body[3], Tok::Punct(')'))
            || is(body[2], "all")
                && body.iter().any(|t| is(t, "test"))
                && !body.iter().any(|t| is(t, "not") || is(t, "any")));
    cfg_test.then_some((inner, end))
}

/// At `#[…]` or `#![…]`: the index after its closing bracket.
fn attribute_end(tokens: &[Token], i: usize) -> Option<usize> {
    if !matches!(tokens.get(i).map(|t| &t.tok), Some(Tok::Punct('#'))) {
        return None;
    }
    let mut j = i + 1;
    if matches!(tokens.get(j).map(|t| &t.tok), Some(Tok::Punct('!'))) {
        j += 1;
    }
    if !matches!(tokens.get(j).map(|t| &t.tok), Some(Tok::Punct('['))) {
        return None;
    }
    Some(balanced_end(tokens, j))
}

/// The index after the item starting at `i`: after its `;` at depth 0, or after the `}` that
/// closes its first block at depth 0.
fn item_end(tokens: &[Token], mut i: usize) -> usize {
    while i < tokens.len() {
        match tokens[i].tok {
            Tok::Punct(';') => return i + 1,
            Tok::Punct('{') => return balanced_end(tokens, i),
            Tok::Punct('(' | '[') => i = balanced_end(tokens, i),
            _ => i += 1,
        }
    }
    i
}

/// At an opening bracket: the index after its matching close (or the end).
fn balanced_end(tokens: &[Token], i: usize) -> usize {
    let mut depth = 0usize;
    for (j, t) in tokens.iter().enumerate().skip(i) {
        match t.tok {
            Tok::Punct('(' | '[' | '{') => depth += 1,
            Tok::Punct(')' | ']' | '}') => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return j + 1;
                }
            }
            _ => {}
        }
    }
    tokens.len()
}

/// `[pub[(…)]] mod name;` → name.
fn mod_declaration(item: &[&Tok]) -> Option<String> {
    let at = item.iter().position(|t| matches!(t, Tok::Ident(w) if w == "mod"))?;
    match (item.get(at + 1), item.get(at + 2), item.len() == at + 3) {
        (Some(Tok::Ident(name)), Some(Tok::Punct(';')), true) => Some(name.clone()),
        _ => None,
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Ident(String),
    /// `::`
    PathSep,
    Punct(char),
    /// Numbers and literals: present so that neighbours are not mistaken for paths.
    Literal,
}

#[derive(Debug, Clone)]
struct Token {
    tok: Tok,
    line: usize,
}

/// Rust source as identifiers, `::` and punctuation; comments dropped, strings and chars as
/// `Literal`.
fn tokenize(text: &str) -> Vec<Token> {
    let c: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut line = 1;
    let mut i = 0;
    let at = |j: usize| c.get(j).copied().unwrap_or('\0');
    while i < c.len() {
        let ch = c[i];
        let start_line = line;
        if ch == '\n' {
            line += 1;
            i += 1;
        } else if ch.is_whitespace() {
            i += 1;
        } else if ch == '/' && at(i + 1) == '/' {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if ch == '/' && at(i + 1) == '*' {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && at(i + 1) == '*' {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    line += usize::from(c[i] == '\n');
                    i += 1;
                }
            }
        } else if let Some(hashes) = raw_string_start(&c, i) {
            // r"…", r#"…"#, br#"…"#: ends at a quote followed by the same number of #.
            i = c[i..].iter().position(|&x| x == '"').map_or(c.len(), |p| i + p + 1);
            while i < c.len() && !(c[i] == '"' && (1..=hashes).all(|k| at(i + k) == '#')) {
                line += usize::from(c[i] == '\n');
                i += 1;
            }
            i = (i + 1 + hashes).min(c.len());
            out.push(Token { tok: Tok::Literal, line: start_line });
        } else if ch == '"' || (matches!(ch, 'b' | 'c') && at(i + 1) == '"') {
            i += if ch == '"' { 1 } else { 2 };
            while i < c.len() && c[i] != '"' {
                line += usize::from(c[i] == '\n');
                i += if c[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push(Token { tok: Tok::Literal, line: start_line });
        } else if ch == '\'' || (ch == 'b' && at(i + 1) == '\'') {
            let q = if ch == 'b' { i + 1 } else { i };
            if at(q + 1) == '\\' {
                // '\n', '\'', '\u{…}'
                i = q + 3;
                while i < c.len() && c[i] != '\'' {
                    i += 1;
                }
                i += 1;
                out.push(Token { tok: Tok::Literal, line });
            } else if at(q + 2) == '\'' {
                i = q + 3;
                out.push(Token { tok: Tok::Literal, line });
            } else {
                // A lifetime or label: the quote, then the name as an identifier.
                out.push(Token { tok: Tok::Punct('\''), line });
                i = q + 1;
            }
        } else if ch == 'r' && at(i + 1) == '#' && (at(i + 2).is_alphabetic() || at(i + 2) == '_') {
            let s = i + 2;
            i = s;
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
            out.push(Token { tok: Tok::Ident(c[s..i].iter().collect()), line });
        } else if ch.is_alphabetic() || ch == '_' {
            let s = i;
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
            out.push(Token { tok: Tok::Ident(c[s..i].iter().collect()), line });
        } else if ch.is_ascii_digit() {
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
            out.push(Token { tok: Tok::Literal, line });
        } else if ch == ':' && at(i + 1) == ':' {
            out.push(Token { tok: Tok::PathSep, line });
            i += 2;
        } else {
            out.push(Token { tok: Tok::Punct(ch), line });
            i += 1;
        }
    }
    out
}

/// At `r"`, `r#…"`, `br"` or `br#…"`: the number of `#`.
fn raw_string_start(c: &[char], i: usize) -> Option<usize> {
    let r = match (c.get(i), c.get(i + 1)) {
        (Some('r'), _) => i,
        (Some('b'), Some('r')) => i + 1,
        _ => return None,
    };
    // Not the tail of an identifier (`bar"` cannot occur, but `for` followed by `#` can't either).
    if i > 0 && (c[i - 1].is_alphanumeric() || c[i - 1] == '_') {
        return None;
    }
    let hashes = c[r + 1..].iter().take_while(|&&x| x == '#').count();
    (c.get(r + 1 + hashes) == Some(&'"')).then_some(hashes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(module: &[&str], text: &str) -> Vec<String> {
        let module: Vec<String> = module.iter().map(|s| s.to_string()).collect();
        scan(&module, text).paths.into_iter().map(|p| p.segments.join("::")).collect()
    }

    #[test]
    fn use_trees_expand_to_full_paths() {
        let got = paths(&["server"], "use crate::{client::{self, relay::run}, pool::Pool as P, config};");
        assert_eq!(got, ["client", "client::relay::run", "pool::Pool", "config"]);
    }

    #[test]
    fn super_and_self_resolve_against_the_module() {
        let got = paths(
            &["client", "relay"],
            "use super::pipeline::Pipeline; fn f() { self::g(); super::super::pool::x(); }",
        );
        assert_eq!(got, ["client::pipeline::Pipeline", "client::relay::g", "pool::x"]);
    }

    #[test]
    fn expression_paths_count_and_visibility_does_not() {
        let got = paths(&["a"], "pub(in crate::a) fn f() { crate::b::c::<u8>(); let x: crate::d::D; }");
        assert_eq!(got, ["b::c", "d::D"]);
    }

    #[test]
    fn comments_strings_and_chars_are_not_code() {
        let text = r####"
            // use crate::a;
            /* crate::b /* nested crate::c */ crate::d */
            /// [`crate::e`]
            const S: &str = "crate::f { ";
            const R: &str = r#"crate::g " }"#;
            const C: char = '{';
            const Q: char = '\'';
            fn l<'a>(x: &'a str) -> &'a str { crate::h::x(x) }
        "####;
        assert_eq!(paths(&["m"], text), ["h::x"]);
    }

    #[test]
    fn cfg_test_items_are_left_out_and_test_modules_recorded() {
        let text = "
            use crate::a::A;
            #[cfg(test)]
            mod tests { use crate::b::B; fn f() { let _ = '}'; } }
            #[cfg(test)]
            #[path = \"x.rs\"]
            mod more;
            #[cfg(all(test, unix))]
            use crate::c::C;
            #[cfg(not(test))]
            use crate::d::D;
            fn after() { crate::e::e(); }
        ";
        let s = scan(&["m".to_owned()], text);
        let got: Vec<String> = s.paths.iter().map(|p| p.segments.join("::")).collect();
        assert_eq!(got, ["a::A", "d::D", "e::e"]);
        assert_eq!(s.test_modules, ["more"]);
        assert_eq!(s.paths[2].line, 12);
    }

    #[test]
    fn files_map_to_modules() {
        assert_eq!(module_of(Path::new("lib.rs")), Vec::<String>::new());
        assert_eq!(module_of(Path::new("pool/mod.rs")), ["pool"]);
        assert_eq!(module_of(Path::new("client/relay.rs")), ["client", "relay"]);
    }
}
