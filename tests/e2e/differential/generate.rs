//! The random sequences: which frontend messages, in what proportions, and how a sequence is
//! cut into writes.

use super::Msg;

/// A small deterministic generator (splitmix64).
pub(super) struct Rng(pub(super) u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub(super) fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
}

const QUERIES: &[&str] = &[
    "SELECT 1",
    "SELECT generate_series(1, 3)",
    "SELECT 1/0",
    "",
    "BEGIN",
    "COMMIT",
    "ROLLBACK",
    "SELECT 1; SELECT 2",
    "SELECT 1; SELECT 1/0; SELECT 3",
    "COPY fz FROM STDIN",
    "COPY (SELECT 1) TO STDOUT",
    "SET statement_timeout = 0",
    "DEALLOCATE ALL",
    "DISCARD ALL",
    "BEGIN; DECLARE c CURSOR FOR SELECT 1",
    "SELEC broken",
];

const STATEMENTS: &[&str] = &[
    "SELECT 1",
    "SELECT $1::int",
    "SELECT 1/0",
    "SELECT generate_series(1, 3)",
    "COPY fz FROM STDIN",
    "COPY (SELECT 2) TO STDOUT",
    "BEGIN",
    "COMMIT",
    "",
    "SELEC broken",
    "DEALLOCATE ALL",
    "DECLARE c CURSOR FOR SELECT 1",
];

const NAMES: &[&str] = &["", "s1", "s2"];
const BIND_NAMES: &[&str] = &["", "s1", "s2", "s3"];
const PORTALS: &[&str] = &["", "p1", "c"];

pub(super) fn generate(rng: &mut Rng, transaction_mode: bool) -> Vec<Msg> {
    let len = 1 + rng.below(12);
    let mut msgs = Vec::with_capacity(len + 3);
    let mut copy_from = false;
    for _ in 0..len {
        let m = match rng.below(20) {
            0..=1 => Msg::Query(rng.pick(QUERIES)),
            2 => Msg::Query(rng.pick(&["COPY fz FROM STDIN", "COPY (SELECT 1) TO STDOUT"])),
            3..=4 => Msg::Parse(rng.pick(NAMES), rng.pick(STATEMENTS)),
            5..=6 => Msg::Bind(rng.pick(PORTALS), rng.pick(BIND_NAMES)),
            7 => Msg::Describe(rng.pick(b"SP"), rng.pick(BIND_NAMES)),
            8..=9 => Msg::Execute(rng.pick(PORTALS), rng.pick(&[0, 0, 1])),
            10 => Msg::Close(rng.pick(b"SP"), rng.pick(BIND_NAMES)),
            11..=13 => Msg::Sync,
            14 => Msg::Flush,
            15 => Msg::FunctionCall,
            16 => Msg::CopyData(rng.pick(&["1\n", "2\n", "x\n"])),
            17 => Msg::CopyDone,
            18 => Msg::CopyFail,
            _ => match rng.below(20) {
                0..=4 => Msg::Unknown,
                5..=6 => {
                    let (tag, body) = rng.pick(UNREADABLE);
                    Msg::Frame(tag, body)
                }
                _ => Msg::Query(rng.pick(QUERIES)),
            },
        };
        copy_from |= matches!(m, Msg::Query(q) | Msg::Parse(_, q) if q.contains("FROM STDIN"));
        msgs.push(m);
    }
    // In transaction mode copy data is kept in one piece, ended by CopyDone or CopyFail: a
    // Sync or other message between copy data makes what the server read before an error
    // unobservable; pgtenant then keeps that connection with the client until a marker query
    // shows where its replies end, and the client's statements may see pgtenant's own
    // replies meanwhile (covered by the pipeline's unit tests and tests/e2e/isolation.rs; the
    // session-mode run includes these sequences).
    if transaction_mode {
        let mut i = 0;
        while i < msgs.len() {
            let next_is_copy =
                matches!(msgs.get(i + 1), Some(Msg::CopyData(_) | Msg::CopyDone | Msg::CopyFail));
            if matches!(msgs[i], Msg::CopyData(_)) && !next_is_copy {
                msgs.insert(i + 1, if rng.below(2) == 0 { Msg::CopyDone } else { Msg::CopyFail });
            }
            i += 1;
        }
    }
    // A copy left open is ended, so both sides finish.
    if copy_from {
        msgs.push(Msg::CopyFail);
        msgs.push(Msg::Sync);
    }
    msgs.push(match rng.below(50) {
        0 => Msg::Malformed(b'Q'),
        1 => Msg::Oversized(rng.pick(b"SHXDCEcf")),
        2..=3 => return end_inside_copy(rng, msgs),
        _ => Msg::Terminate,
    });
    msgs
}

/// A few sequences end inside a COPY FROM STDIN (after its CopyInResponse, unless what came
/// before keeps the COPY from starting) with a malformed or oversized message: a type the copy
/// reads (CopyData, CopyDone, Sync) or another (README: PostgreSQL answers 08006 or 08P01, then
/// FATAL 08P01; pgtenant ends the copy with a Terminate instead).
fn end_inside_copy(rng: &mut Rng, mut msgs: Vec<Msg>) -> Vec<Msg> {
    msgs.push(Msg::Sync);
    let copy = "COPY fz FROM STDIN";
    if rng.below(2) == 0 {
        msgs.push(Msg::Query(copy));
    } else {
        msgs.extend([Msg::Parse("", copy), Msg::Bind("", ""), Msg::Execute("", 0)]);
    }
    for _ in 0..rng.below(3) {
        msgs.push(Msg::CopyData(rng.pick(&["1\n", "2\n", "x\n"])));
    }
    msgs.push(match rng.below(3) {
        0 => Msg::Malformed(rng.pick(b"QdcSX")),
        _ => Msg::Oversized(rng.pick(b"SHXDCEcf")),
    });
    msgs
}

/// Frames PostgreSQL cannot read, each failing there with 08P01 before any name in it is used
/// (a Bind's statement is looked up first: 26000 if it does not exist): a Describe or Close
/// with a target other than S or P, bytes after the name, no NUL, no body; an Execute whose
/// row count is cut short or followed by more; a Bind whose counts do not match what follows
/// (or a name without its NUL); a Parse whose parameter types are cut short.
const UNREADABLE: &[(u8, &[u8])] = &[
    (b'D', b"Xs1\0"),
    (b'D', b"Ss1\0zz"),
    (b'D', b"P\0z"),
    (b'D', b"Ss1"),
    (b'C', b"Q\0"),
    (b'C', b"Ss2\0zz"),
    (b'C', b"Pp1\0z"),
    (b'E', b"p1\0\0\0"),
    (b'E', b"\0\0"),
    (b'E', b"\0\0\0\0\0zz"),
    (b'D', b""),
    (b'C', b"S"),
    (b'E', b""),
    // A statement name without its NUL.
    (b'B', b"\0s1"),
    // One parameter type, its OID missing.
    (b'P', b"s1\0SELECT 1\0\0\x01"),
    (b'P', b"\0SELECT $1::int\0\0\x01\0\0"),
    // One parameter format, its code missing.
    (b'B', b"\0s1\0\0\x01"),
    // Two parameter formats for no parameters.
    (b'B', b"\0\0\0\x02\0\0\0\0\0\0\0\0"),
    // One parameter, its value cut short.
    (b'B', b"p1\0s1\0\0\0\0\x01\0\0\0\x01"),
    // Bytes after the result formats.
    (b'B', b"\0s2\0\0\0\0\0\0\0zz"),
    // One result format, its code missing.
    (b'B', b"c\0\0\0\0\0\0\0\x01"),
];

pub(super) fn split(rng: &mut Rng, len: usize) -> Vec<usize> {
    if len < 2 || rng.below(6) != 0 {
        return vec![len];
    }
    let parts = 2 + rng.below(2.min(len - 1));
    let mut cuts: Vec<usize> = (0..parts - 1).map(|_| 1 + rng.below(len - 1)).collect();
    cuts.sort_unstable();
    cuts.dedup();
    let mut chunks = Vec::new();
    let mut prev = 0;
    for c in cuts.into_iter().chain([len]) {
        chunks.push(c - prev);
        prev = c;
    }
    chunks
}

/// A sequence of whole turns, for clients that hand a shared connection on between them (see
/// `concurrent`): simple queries (a COPY FROM STDIN with its data and end), FunctionCalls, and
/// extended-protocol messages up to a Sync, then Terminate. A random sequence mostly leaves
/// something unanswered or irregular at its end, and pgtenant closes that server connection
/// rather than pass it on; these turns end where the connection may go back to the pool.
/// Some of the simple queries are the caller's `queries`. Returns the messages and where each
/// turn ends.
pub(super) fn generate_turns(rng: &mut Rng, queries: &[&'static str]) -> (Vec<Msg>, Vec<usize>) {
    let mut msgs = Vec::new();
    let mut ends = Vec::new();
    for _ in 0..1 + rng.below(6) {
        match rng.below(10) {
            8..=9 if !queries.is_empty() => msgs.push(Msg::Query(rng.pick(queries))),
            0..=2 | 8..=9 => {
                let q = rng.pick(QUERIES);
                msgs.push(Msg::Query(q));
                if q.contains("FROM STDIN") {
                    copy_data(rng, &mut msgs);
                }
            }
            3 => msgs.push(Msg::FunctionCall),
            _ => {
                for _ in 0..1 + rng.below(4) {
                    let m = match rng.below(6) {
                        0 => Msg::Parse(rng.pick(NAMES), rng.pick(STATEMENTS)),
                        1 => Msg::Bind(rng.pick(PORTALS), rng.pick(BIND_NAMES)),
                        2 => Msg::Describe(rng.pick(b"SP"), rng.pick(BIND_NAMES)),
                        3 => Msg::Close(rng.pick(b"SP"), rng.pick(BIND_NAMES)),
                        4 => Msg::Execute(rng.pick(PORTALS), rng.pick(&[0, 0, 1])),
                        _ => Msg::Flush,
                    };
                    let copy = match m {
                        Msg::Parse(name, q) if q.contains("FROM STDIN") => Some(name),
                        _ => None,
                    };
                    msgs.push(m);
                    if let Some(name) = copy {
                        // Run at once, so the copy it starts ends before the Sync.
                        msgs.extend([Msg::Bind("", name), Msg::Execute("", 0)]);
                        copy_data(rng, &mut msgs);
                        break;
                    }
                }
                msgs.push(Msg::Sync);
            }
        }
        ends.push(msgs.len());
    }
    msgs.push(Msg::Terminate);
    (msgs, ends)
}

/// Up to two rows of copy data, then CopyDone or CopyFail.
fn copy_data(rng: &mut Rng, msgs: &mut Vec<Msg>) {
    for _ in 0..rng.below(3) {
        msgs.push(Msg::CopyData(rng.pick(&["1\n", "2\n", "x\n"])));
    }
    msgs.push(if rng.below(2) == 0 { Msg::CopyDone } else { Msg::CopyFail });
}
