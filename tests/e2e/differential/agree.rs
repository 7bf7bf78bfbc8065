//! When pgtenant's replies count as PostgreSQL's: equal, or different only as documented.

use super::Msg;

/// The replies agree up to pgtenant's FATAL 08P01 for a final malformed or oversized frame
/// (PostgreSQL closes silently; inside a COPY FROM STDIN see `inside_copy`) and its 34000 for
/// an unbound unnamed portal, alone or both (seed 18698911083545).
pub(super) fn agree(direct: &[String], proxied: &[String], msgs: &[Msg]) -> bool {
    if inside_copy(direct, proxied, msgs) {
        return true;
    }
    let malformed = |e: &String| e.starts_with("E:08P01") && e.contains("invalid message");
    let proxied = match proxied.split_last() {
        Some((e, rest))
            if matches!(msgs.last(), Some(Msg::Malformed(_) | Msg::Oversized(_))) && malformed(e) =>
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

/// README ("Replies are accounted exactly"): inside a COPY FROM STDIN PostgreSQL answers a
/// malformed or oversized message of a type the copy reads (CopyData, CopyDone, CopyFail, Sync,
/// Flush) with 08006 and FATAL 08P01; pgtenant ends the copy with a Terminate instead, so its
/// client gets PostgreSQL's 08P01 for that, its FATAL, then pgtenant's FATAL 08P01. Only that:
/// the copy started, every earlier reply is equal, and pgtenant's own FATAL ends its replies.
/// (For another type PostgreSQL's own error is 08P01, and the replies agree as they are.)
fn inside_copy(direct: &[String], proxied: &[String], msgs: &[Msg]) -> bool {
    let copy_type = match msgs.last() {
        Some(Msg::Malformed(tag) | Msg::Oversized(tag)) => b"dcfSH".contains(tag),
        _ => false,
    };
    let (Some((ours, proxied)), true) = (proxied.split_last(), copy_type) else { return false };
    let ours = ours.starts_with("E:08P01") && ours.contains("invalid message");
    match (direct, proxied) {
        ([before @ .., d, dfatal], [same @ .., p, pfatal]) => {
            ours && before == same
                && before.iter().any(|r| r == "G")
                && (d, p) == (&"E:08006".to_string(), &"E:08P01".to_string())
                && dfatal == "E:08P01"
                && pfatal == "E:08P01"
        }
        _ => false,
    }
}
