//! When pgtenant's replies count as PostgreSQL's: equal, or different only as documented.

use super::Msg;

/// The replies agree up to pgtenant's FATAL 08P01 for a final malformed or oversized frame
/// (PostgreSQL closes silently) and its 34000 for an unbound unnamed portal, alone or both (seed 18698911083545).
pub(super) fn agree(direct: &[String], proxied: &[String], msgs: &[Msg]) -> bool {
    let malformed = |e: &String| e.starts_with("E:08P01") && e.contains("invalid message");
    let proxied = match proxied.split_last() {
        Some((e, rest))
            if matches!(msgs.last(), Some(Msg::Malformed | Msg::Oversized(_))) && malformed(e) =>
        {
            rest
        }
        _ => proxied,
    };
    if direct == proxied {
        return true;
    }
    // pgtenant's 34000 for an Execute of an unbound unnamed portal where PostgreSQL says
    // 25P02 (or crashes: see isolation::crash). Only that pair, only then.
    let (_, unbound) = msgs.iter().fold((false, false), |(bound, seen), m| match m {
        Msg::Query(_) => (false, seen),
        Msg::Bind("", _) => (true, seen),
        Msg::Execute("", _) => (bound, seen || !bound),
        _ => (bound, seen),
    });
    let pair = |(d, p): (&String, &String)| d == p || (d == "E:25P02" && p == "E:34000");
    unbound && direct.len() == proxied.len() && direct.iter().zip(proxied).all(pair)
}
