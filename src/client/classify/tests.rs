use proptest::prelude::*;

use super::*;
use crate::client::statements::{declared_cursors, may_change_settings, session_feature, sql_prepare_refusal};

/// What the predicates this classifier replaces said about `sql`.
fn old(sql: &[u8]) -> (Option<Refusal>, bool, bool, Vec<Box<[u8]>>) {
    let refusal = if sql_prepare_refusal(sql).is_some() {
        Some(Refusal::SqlPrepare)
    } else {
        session_feature(sql).map(Refusal::Feature)
    };
    // What Statements::raise_barrier looked for.
    let contains = |needle: &[u8]| sql.windows(needle.len()).any(|w| w.eq_ignore_ascii_case(needle));
    let barrier = contains(b"DEALLOCATE") || contains(b"DISCARD");
    (refusal, may_change_settings(sql), barrier, declared_cursors(sql))
}

fn agree(sql: &[u8]) -> Result<(), TestCaseError> {
    let class = classify(sql);
    let (refusal, suspect, drops, cursors) = old(sql);
    prop_assert_eq!(class.refusal(), refusal);
    prop_assert_eq!(class.suspect_settings(), suspect);
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
    "set", "reset", "session", "local", "time", "zone", "to", "=", "all", "role", "prepare", "execute",
    "deallocate", "discard", "listen", "create", "temp", "temporary", "table", "declare", "cursor", "for",
    "with", "hold", "with hold", "do", "call", "select", "set_config", "search_path", "tenant_id",
    "pgtenant.tenant_id", "characteristics", "as", "transaction", "read", "only", "default", "'x'", "'it''s'",
    "E'\\n'", "\"Q d\"", "\"", "'", ";", " ", "\n", "\t", "-- c\n", "--", "/* c */", "/*", "*/", "$$", ".",
    "_", "1", "42", "é", "\0", "(", ")", ",", "x", "c1",
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
