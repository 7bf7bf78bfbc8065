//! Structure checks that run with `cargo test` (issue 12): arrows between modules point one
//! way, and no source or test file grows past what a reader can hold.
//!
//! The import graph is read from `src/` (see `source.rs`): module A imports module B when A's
//! code outside `#[cfg(test)]` names a path into B through `crate::`, `super::` or `self::`.
//! A module and its own submodules are one unit (the parent declares its children and they use
//! its items), so imports between them are not edges. Two granularities are checked: top-level
//! modules (`client` ⇄ `server`) and full module paths (`client::relay` ⇄ `client::rewrite`).

mod graph;
mod source;

use std::collections::BTreeSet;
use std::path::Path;

use graph::{Evidence, Graph};
use source::ModPath;

/// The longest a file under `src/` or `tests/` may be.
const MAX_LINES: usize = 800;

fn crate_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// One import between two library modules, outside tests.
struct Import {
    from: ModPath,
    to: ModPath,
    evidence: Evidence,
}

/// Every import between distinct, unrelated modules of the library.
fn imports() -> Vec<Import> {
    let files = source::library_files(crate_dir()).expect("read src/");
    let scans: Vec<_> = files.iter().map(|f| (f, source::scan(&f.module, &f.text))).collect();

    // Files that only exist for tests (`#[cfg(test)] mod tests;` and below) are not the crate.
    let mut test_roots: Vec<ModPath> = Vec::new();
    for (f, s) in &scans {
        if s.whole_file_is_test {
            test_roots.push(f.module.clone());
        }
        for name in &s.test_modules {
            test_roots.push([f.module.clone(), vec![name.clone()]].concat());
        }
    }
    let is_test = |m: &ModPath| test_roots.iter().any(|t| m.starts_with(t));
    let modules: BTreeSet<&ModPath> = files.iter().map(|f| &f.module).filter(|m| !is_test(m)).collect();

    let mut out = Vec::new();
    for (f, s) in scans.iter().filter(|(f, _)| modules.contains(&f.module)) {
        for used in &s.paths {
            // The module a path lands in: its longest prefix that is a module (`crate::pool::Pool`
            // is in `pool`).
            let to = (0..=used.segments.len())
                .rev()
                .map(|n| used.segments[..n].to_vec())
                .find(|p| modules.contains(p))
                .expect("the root is a module");
            if to.starts_with(&f.module) || f.module.starts_with(&to) {
                continue;
            }
            let evidence = Evidence { file: f.file.clone(), line: used.line, path: used.segments.join("::") };
            out.push(Import { from: f.module.clone(), to, evidence });
        }
    }
    out
}

/// The import graph with each module named by its first `depth` segments (None: full paths).
fn import_graph(depth: Option<usize>) -> Graph {
    let name = |m: &ModPath| m[..depth.unwrap_or(m.len()).min(m.len())].join("::");
    let mut g = Graph::default();
    for i in imports() {
        g.add(&name(&i.from), &name(&i.to), i.evidence);
    }
    g
}

#[test]
fn no_import_cycles_between_top_level_modules() {
    let report = import_graph(Some(1)).report();
    assert!(report.is_empty(), "top-level modules import each other back:\n{report}");
}

#[test]
fn no_import_cycles_between_modules() {
    let report = import_graph(None).report();
    assert!(report.is_empty(), "modules import each other back:\n{report}");
}

#[test]
fn no_file_under_src_or_tests_is_over_800_lines() {
    let mut long = Vec::new();
    for dir in ["src", "tests"] {
        for path in source::walk(&crate_dir().join(dir)).expect("walk") {
            // Text files only; a binary fixture has no lines to read.
            let Ok(text) = std::fs::read_to_string(&path) else { continue };
            let lines = text.lines().count();
            if lines > MAX_LINES {
                let rel = path.strip_prefix(crate_dir()).expect("below the crate");
                long.push(format!("  {} ({lines} lines)", rel.display()));
            }
        }
    }
    assert!(
        long.is_empty(),
        "files over {MAX_LINES} lines (split them by what they own):\n{}",
        long.join("\n")
    );
}

/// The checks above read the real tree; this one makes sure they see it (a walker that found
/// no files would pass them all).
#[test]
fn the_graph_is_read_from_the_real_source() {
    let imports = imports();
    let names: BTreeSet<String> = imports.iter().map(|i| i.from.join("::")).collect();
    assert!(imports.len() > 20, "only {} imports found", imports.len());
    assert!(names.iter().any(|n| n.starts_with("client")), "{names:?}");
    assert!(names.iter().any(|n| n.starts_with("pool")), "{names:?}");
}
