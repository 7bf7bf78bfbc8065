//! Giving a server connection back the settings a client's reset took from it. PostgreSQL
//! resets a setting (`RESET name`, `SET name TO DEFAULT`, `RESET ALL`, `DISCARD ALL`) to the
//! value the session's login gave it; pgtenant's server connections log in with user and
//! database alone and get the tenant's isolation setting (`search_path`,
//! `pgtenant.tenant_id`) and the client's startup settings by a SET, which the reset undoes.
//! So right behind the client's reset pgtenant queues a statement of its own that sets them
//! again, before anything the client sent after it (the tenant's isolation holds for every
//! statement of the client's):
//!
//! - behind a simple Query, a simple Query (its replies swallowed; in a failed transaction
//!   block, where the client's reset failed too, its 25P02 is dropped);
//! - behind an Execute, unsynced Parse, Bind, Execute and two Closes under names of
//!   pgtenant's (the client's unnamed statement and portal are left alone), inside the
//!   client's batch: an error later in it rolls back the reset and the restore together;
//!   behind DISCARD ALL, which PostgreSQL commits as it completes, the restore is committed
//!   too (see [`queue_unsynced`]).
//!
//! Only a reset recognised as one statement (see [`super::setcmd`]) is followed, where
//! `rewrite::reset` and `Stage::rewrite` see it; the README says what is not (a reset among
//! other statements in one Query, a named statement running one in session mode). Nothing is
//! added to a transaction that runs no reset: the reset is recognised where SETs already are
//! (transaction mode), or, in session mode, only for clients whose connection carries such
//! settings, by the first letter of a Query or unnamed Parse.

use bytes::{Bytes, BytesMut};

use super::pipeline::{Action, Kind, Pipeline};
use super::setcmd::{self, SetCmd};

/// `in_failed_sql_transaction`.
const IN_FAILED_TRANSACTION: &str = "25P02";

/// A reset statement in `sql` (a Query's text or a Parse's, without its NUL), looked for only
/// when its first word may be `RESET`, `DISCARD` or `SET` (session mode: see the module).
pub(super) fn reset_in(sql: &[u8]) -> Option<SetCmd> {
    if !may_reset(sql) {
        return None;
    }
    setcmd::parse(sql.strip_suffix(b"\0").unwrap_or(sql)).filter(|c| !matches!(c, SetCmd::Set { .. }))
}

/// Whether the statement `sql` starts (after blanks and comments) may be a reset: its first
/// letter is that of `RESET`, `DISCARD` or `SET`.
#[inline]
pub(super) fn may_reset(sql: &[u8]) -> bool {
    matches!(crate::sql::skip_blank(sql).first(), Some(b'r' | b'R' | b'd' | b'D' | b's' | b'S'))
}

/// Queues, behind a client's Query that resets, a Query setting `settings` again.
pub(super) fn queue_query(out: &mut BytesMut, pipeline: &mut Pipeline, settings: &[(String, String)]) {
    let statements = statements(settings);
    if statements.is_empty() || crate::protocol::frontend::query(out, &statements.join("; ")).is_err() {
        return;
    }
    // In a failed transaction block the client's reset failed as well: nothing to restore,
    // and the client gets only its own error.
    pipeline.push(Kind::Query, Action::probe(IN_FAILED_TRANSACTION, Bytes::new()));
}

/// Queues, behind a client's Execute that resets, unsynced statements setting `settings`
/// again (see the module). Behind DISCARD ALL (`commit`), which PostgreSQL commits as it
/// completes, they are committed too, before the client's next statement: a later error in
/// the batch must not roll them back without the reset, nor may they make a statement
/// behind them that cannot run in a transaction block fail. COMMIT there warns that no
/// transaction block is open: the warning is not sent (`client_min_messages` raised for
/// that transaction alone).
pub(super) fn queue_unsynced(
    out: &mut BytesMut,
    pipeline: &mut Pipeline,
    settings: &[(String, String)],
    commit: bool,
) {
    let mut statements = statements(settings);
    if commit && !statements.is_empty() {
        statements.push("SELECT pg_catalog.set_config('client_min_messages', 'error', true)".to_owned());
        statements.push("COMMIT".to_owned());
    }
    for sql in statements {
        let name = format!("pgt_restore_{:016x}{:016x}", rand::random::<u64>(), rand::random::<u64>());
        crate::protocol::frontend::unsynced_named(out, name.as_bytes(), &sql);
        for kind in [Kind::Parse, Kind::Bind, Kind::Execute, Kind::Close, Kind::Close] {
            pipeline.push(kind, Action::Swallow);
        }
    }
}

/// The statements that set `settings`: a search_path of identifiers as `SET search_path TO …`
/// (shown as SET shows it, as the handoff's setup sets it), the rest through one
/// `set_config` each in one SELECT (see `ClientVars::sync_query`). The text is ASCII, any
/// other character escaped: the server reads it in the client_encoding the reset left, which
/// pgtenant does not know.
fn statements(settings: &[(String, String)]) -> Vec<String> {
    use crate::sql::quote_literal_ascii as literal;
    let mut out = Vec::new();
    let mut calls = Vec::new();
    for (k, v) in settings {
        let listed = (k.eq_ignore_ascii_case("search_path") && v.is_ascii())
            .then(|| super::vars::quoted_identifier_list(v))
            .flatten();
        match listed {
            Some(list) => out.push(format!("SET search_path TO {list}")),
            None => calls.push(format!("pg_catalog.set_config({}, {}, false)", literal(k), literal(v))),
        }
    }
    if !calls.is_empty() {
        out.push(format!("SELECT {}", calls.join(", ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::frontend::tag as fe;

    #[test]
    fn resets_are_found_by_their_first_word() {
        assert_eq!(reset_in(b"  DISCARD ALL\0"), Some(SetCmd::DiscardAll));
        assert_eq!(reset_in(b"reset all;"), Some(SetCmd::ResetAll));
        assert_eq!(reset_in(b"RESET search_path"), Some(SetCmd::Reset { name: "search_path".into() }));
        assert_eq!(
            reset_in(b"SET SESSION search_path = DEFAULT"),
            Some(SetCmd::Reset { name: "search_path".into() })
        );
        for other in
            [&b"SET search_path TO x"[..], b"SELECT 1", b"DISCARD PLANS", b"", b"RESET ALL; SELECT 1"]
        {
            assert_eq!(reset_in(other), None, "{other:?}");
        }
    }

    #[test]
    fn statements_set_each_setting() {
        let s = |v: &[(&str, &str)]| {
            let v: Vec<(String, String)> = v.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            statements(&v)
        };
        assert_eq!(s(&[("search_path", "\"acme\", public")]), ["SET search_path TO \"acme\", \"public\""]);
        assert_eq!(
            s(&[("pgtenant.tenant_id", "acme"), ("work_mem", "64kB")]),
            ["SELECT pg_catalog.set_config('pgtenant.tenant_id', 'acme', false), pg_catalog.set_config('work_mem', '64kB', false)"]
        );
        assert!(s(&[]).is_empty());
    }

    /// The injected extended statements are whole frames the pipeline expects five replies of.
    #[test]
    fn unsynced_frames_are_well_formed() {
        let mut out = BytesMut::new();
        let mut pipeline = Pipeline::default();
        queue_unsynced(&mut out, &mut pipeline, &[("search_path".into(), "\"a\"".into())], false);
        let mut pos = 0;
        let mut tags = Vec::new();
        while let Ok(Some((tag, len))) = crate::protocol::frame::header(&out[pos..], usize::MAX) {
            tags.push(tag);
            pos += len;
        }
        assert_eq!(pos, out.len());
        assert_eq!(tags, [fe::PARSE, fe::BIND, fe::EXECUTE, fe::CLOSE, fe::CLOSE]);
        assert!(!pipeline.owes_nothing());
    }
}
