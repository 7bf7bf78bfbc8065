//! Named prepared statements in transaction mode. A client's statement names are its own;
//! on the server, statements get pgtenant's names, keyed by content (query text, parameter
//! types and the search_path that decides what the names in it mean), so clients share them
//! and any server connection can be given a statement it lacks by re-sending the Parse.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};

use super::setcmd::{self, SetCmd};
use crate::protocol::backend::cstr;
use crate::protocol::frame::HEADER_LEN;

/// A statement a client prepared, as the server knows it.
#[derive(Debug)]
pub struct Prepared {
    pub server_name: Arc<str>,
    /// The client's Parse, renamed to `server_name`: re-sent to a connection that lacks it.
    pub parse: Bytes,
    /// The session SET the statement runs, if it is one.
    pub set: Option<SetCmd>,
}

/// One client's named statements.
#[derive(Debug, Default)]
pub struct Statements {
    by_name: HashMap<Box<[u8]>, Arc<Prepared>>,
}

impl Statements {
    /// Registers a client Parse (`frame` is the whole message, name non-empty) and returns it
    /// as the server will see it.
    pub fn parse(&mut self, frame: &[u8], search_path: &str) -> Option<Arc<Prepared>> {
        let (name, rest) = cstr(frame.get(HEADER_LEN..)?)?;
        if name.is_empty() {
            return None;
        }
        let mut h = DefaultHasher::new();
        rest.hash(&mut h);
        search_path.hash(&mut h);
        let server_name: Arc<str> = Arc::from(format!("pgt_{:016x}", h.finish()));
        let parse = rename(b'P', &[], server_name.as_bytes(), rest);
        let set = cstr(rest).and_then(|(query, _)| setcmd::parse(query));
        let prepared = Arc::new(Prepared { server_name, parse, set });
        self.by_name.insert(name.into(), prepared.clone());
        Some(prepared)
    }

    pub fn get(&self, name: &[u8]) -> Option<&Arc<Prepared>> {
        self.by_name.get(name)
    }

    pub fn close(&mut self, name: &[u8]) -> bool {
        self.by_name.remove(name).is_some()
    }
}

/// Builds `tag | length | prefix | name \0 | rest`.
pub fn rename(tag: u8, prefix: &[u8], name: &[u8], rest: &[u8]) -> Bytes {
    let body = prefix.len() + name.len() + 1 + rest.len();
    let mut out = BytesMut::with_capacity(HEADER_LEN + body);
    out.put_u8(tag);
    // Bodies come from frames that passed the size check, so they fit in an i32.
    out.put_i32(i32::try_from(body + 4).unwrap_or(i32::MAX));
    out.put_slice(prefix);
    out.put_slice(name);
    out.put_u8(0);
    out.put_slice(rest);
    out.freeze()
}

/// The statement named in a Bind (`portal \0 statement \0 …`): (portal, statement, rest).
pub fn bind_parts(frame: &[u8]) -> Option<(&[u8], &[u8], &[u8])> {
    let (portal, rest) = cstr(frame.get(HEADER_LEN..)?)?;
    let (stmt, rest) = cstr(rest)?;
    Some((portal, stmt, rest))
}

/// Describe / Close: (`S` or `P`, name).
pub fn target_parts(frame: &[u8]) -> Option<(u8, &[u8])> {
    let body = frame.get(HEADER_LEN..)?;
    let (&kind, rest) = body.split_first()?;
    let (name, _) = cstr(rest)?;
    Some((kind, name))
}

/// SQL-level prepared statements cannot follow a client across server connections in
/// transaction mode: `PREPARE`, `EXECUTE` and `DEALLOCATE <name>` are refused (0A000).
/// `DEALLOCATE ALL` passes. Returns the refusal query to send instead.
pub fn sql_prepare_refusal(sql: &[u8]) -> Option<String> {
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
    if !refused {
        return None;
    }
    Some(
        "DO $pgtenant$ BEGIN RAISE EXCEPTION USING ERRCODE = 'feature_not_supported', \
         MESSAGE = 'SQL PREPARE/EXECUTE/DEALLOCATE are not supported in transaction pooling mode', \
         HINT = 'use protocol-level prepared statements (they are tracked), or session pooling mode'; \
         END $pgtenant$"
            .to_owned(),
    )
}

/// A Query message running `sql`.
pub fn query_frame(sql: &str) -> Option<Bytes> {
    let mut out = BytesMut::new();
    crate::protocol::frontend::query(&mut out, sql).ok()?;
    Some(out.freeze())
}

/// A Parse message of `sql` under `name`, without parameter types.
pub fn parse_frame(name: &[u8], sql: &str) -> Bytes {
    let mut rest = sql.as_bytes().to_vec();
    rest.extend_from_slice(&[0, 0, 0]);
    rename(b'P', &[], name, &rest)
}

/// Session-level features that cannot survive transaction pooling, recognised by how a
/// statement starts: `LISTEN`, `CREATE TEMP[ORARY] TABLE`, `DECLARE ... WITH HOLD`.
pub fn session_feature(sql: &[u8]) -> Option<&'static str> {
    let words: Vec<Vec<u8>> = first_words(sql).iter().map(|w| w.to_ascii_uppercase()).collect();
    match words.first().map(Vec::as_slice) {
        Some(b"LISTEN") => Some("LISTEN"),
        Some(b"CREATE") if matches!(words.get(1).map(Vec::as_slice), Some(b"TEMP" | b"TEMPORARY")) => {
            Some("temporary tables")
        }
        Some(b"DECLARE") if sql.to_ascii_uppercase().windows(9).any(|w| w == b"WITH HOLD") => {
            Some("WITH HOLD cursors")
        }
        _ => None,
    }
}

/// SQL that fails with 0A000 saying `feature` needs session pooling.
pub fn feature_refusal(feature: &str) -> String {
    format!(
        "DO $pgtenant$ BEGIN RAISE EXCEPTION USING ERRCODE = 'feature_not_supported', \
         MESSAGE = '{feature} does not work in transaction pooling mode', \
         HINT = 'use session pooling for this client, or set pool.session_features to pin'; END $pgtenant$"
    )
}

/// The first words of a query, skipping whitespace and comments.
fn first_words(mut sql: &[u8]) -> Vec<&[u8]> {
    let mut words = Vec::new();
    while words.len() < 3 {
        loop {
            sql = trim_start(sql);
            if let Some(rest) = sql.strip_prefix(b"--") {
                sql = rest.iter().position(|&b| b == b'\n').map_or(&[][..], |i| &rest[i..]);
            } else if let Some(rest) = sql.strip_prefix(b"/*") {
                sql = rest.windows(2).position(|w| w == b"*/").map_or(&[][..], |i| &rest[i + 2..]);
            } else {
                break;
            }
        }
        let end = sql.iter().position(|b| !(b.is_ascii_alphanumeric() || *b == b'_')).unwrap_or(sql.len());
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

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut f = vec![tag];
        f.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        f.extend_from_slice(body);
        f
    }

    #[test]
    fn parse_is_renamed_by_content_and_search_path() {
        let mut s = Statements::default();
        let p = frame(b'P', b"s1\0SELECT $1\0\0\x01\0\0\0\x17");
        let a = s.parse(&p, "\"acme\"").expect("named");
        let b = s.parse(&frame(b'P', b"other\0SELECT $1\0\0\x01\0\0\0\x17"), "\"acme\"").expect("named");
        assert_eq!(a.server_name, b.server_name, "same content, same server statement");
        let c = s.parse(&p, "\"globex\"").expect("named");
        assert_ne!(a.server_name, c.server_name, "another schema, another statement");
        let (name, rest) = cstr(&a.parse[HEADER_LEN..]).expect("name");
        assert_eq!(name, a.server_name.as_bytes());
        assert_eq!(rest, b"SELECT $1\0\0\x01\0\0\0\x17");
        assert_eq!(
            i32::from_be_bytes([a.parse[1], a.parse[2], a.parse[3], a.parse[4]]) as usize + 1,
            a.parse.len()
        );
        assert!(s.parse(&frame(b'P', b"\0SELECT 1\0\0\0"), "").is_none(), "unnamed: not tracked");
        assert!(s.close(b"s1") && !s.close(b"s1"));
    }

    #[test]
    fn bind_and_target_parts() {
        let b = frame(b'B', b"portal\0s1\0\0\0\0\0\0\0");
        assert_eq!(bind_parts(&b).map(|(p, s, _)| (p, s)), Some((&b"portal"[..], &b"s1"[..])));
        assert_eq!(target_parts(&frame(b'D', b"Ss1\0")), Some((b'S', &b"s1"[..])));
        assert_eq!(bind_parts(&frame(b'B', b"no-terminator")), None);
    }

    #[test]
    fn session_features_are_recognised() {
        let q = |s: &str| s.as_bytes().to_vec();
        assert_eq!(session_feature(&q("LISTEN jobs")), Some("LISTEN"));
        assert_eq!(session_feature(&q("create temporary table t (x int)")), Some("temporary tables"));
        assert_eq!(session_feature(&q("DECLARE c CURSOR WITH HOLD FOR SELECT 1")), Some("WITH HOLD cursors"));
        assert_eq!(session_feature(&q("DECLARE c CURSOR FOR SELECT 1")), None);
        assert_eq!(session_feature(&q("SELECT 'LISTEN'")), None);
        assert!(feature_refusal("LISTEN").contains("feature_not_supported"));
        let p = parse_frame(b"s1", "SELECT 1");
        assert_eq!(&p[..], &frame(b'P', b"s1\0SELECT 1\0\0\0")[..]);
    }

    #[test]
    fn sql_prepare_is_refused_but_deallocate_all_passes() {
        for q in
            ["PREPARE p AS SELECT 1", "  execute p", "/* c */ -- x\n DEALLOCATE p", "deallocate prepare p"]
        {
            assert!(sql_prepare_refusal(q.as_bytes()).is_some(), "{q}");
        }
        for q in ["DEALLOCATE ALL", "deallocate prepare all", "SELECT 'PREPARE'", "EXPLAIN SELECT 1", ""] {
            assert!(sql_prepare_refusal(q.as_bytes()).is_none(), "{q}");
        }
    }
}
