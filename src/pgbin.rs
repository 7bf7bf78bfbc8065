//! Where PostgreSQL's programs are installed, for the throwaway cluster (`initdb`,
//! `postgres`) and for the lifecycle's client tools (`pg_dump`, `pg_restore`).

use std::path::{Path, PathBuf};
use std::process::Command;

/// The directory with `initdb` and `postgres`: `$PGTENANT_PG_BINDIR`, `pg_config --bindir`,
/// PATH, then the newest `/usr/lib/postgresql/*/bin`.
pub fn find_bindir() -> Option<PathBuf> {
    let has_server = |d: &Path| d.join("initdb").is_file() && d.join("postgres").is_file();
    if let Some(d) = std::env::var_os("PGTENANT_PG_BINDIR").map(PathBuf::from) {
        if has_server(&d) {
            return Some(d);
        }
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let d = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && has_server(&d) {
            return Some(d);
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        if let Some(d) = std::env::split_paths(&path).find(|d| has_server(d)) {
            return Some(d);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            has_server(&bin).then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, d)| d)
}
