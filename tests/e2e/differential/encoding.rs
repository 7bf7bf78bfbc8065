//! Statement and portal names that are not UTF-8: PostgreSQL reads every name of a Parse,
//! Bind, Describe, Close or Execute in the client's encoding before anything else, and fails
//! one that is not valid there with 22021 (then skips to Sync). In transaction mode pgtenant
//! reads and renames these names itself, so it must fail them at the same point.

use super::found::in_both_modes;
use super::*;

/// Invalid UTF-8 in a name (a lone 0xff, a surrogate, an overlong NUL, a sequence cut short)
/// in each message that carries one, also where PostgreSQL would otherwise fail the message
/// with 08P01 (a Describe target other than S or P, bytes after the name, an Execute's row
/// count cut short) or 26000 (a Bind's statement): PostgreSQL answers 22021 where the
/// message stands, skips to Sync, and keeps what it had (the unnamed statement, a portal);
/// pgtenant answers the same in both pool modes, and the connection it pools serves the next
/// sequence with exactly its own replies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_that_is_not_utf8_fails_with_22021_as_postgres_fails_it() {
    use Msg::*;
    let t = tenant_db("diffutf8").await;
    let bad = "E:22021";
    let cases: &[(&[Msg], &[&str])] = &[
        (
            &[Frame(b'P', b"s\xff\0SELECT 1\0\0\0"), Sync, Query("SELECT 2"), Terminate],
            &[bad, "ZI", "T", "D", "C", "ZI"],
        ),
        (
            &[
                Parse("", "SELECT 1"),
                Sync,
                Frame(b'P', b"s\xed\xa0\x80\0SELECT 1\0\0\0"),
                Bind("", ""),
                Execute("", 0),
                Sync,
                Bind("", ""),
                Execute("", 0),
                Sync,
                Terminate,
            ],
            &["1", "ZI", bad, "ZI", "2", "D", "C", "ZI"],
        ),
        (
            &[Frame(b'P', b"s1\0SELECT '\xff'\0\0\0"), Sync, Describe(b'S', "s1"), Sync, Terminate],
            &[bad, "ZI", "E:26000", "ZI"],
        ),
        (
            &[
                Parse("s1", "SELECT 1"),
                Frame(b'B', b"p\xff\0s1\0\0\0\0\0\0\0"),
                Execute("", 0),
                Sync,
                Terminate,
            ],
            &["1", bad, "ZI"],
        ),
        (
            &[
                Parse("", "SELECT 1"),
                Frame(b'B', b"\0s\xc0\x80\0\0\0\0\0\0\0"),
                Execute("", 0),
                Sync,
                Terminate,
            ],
            &["1", bad, "ZI"],
        ),
        (&[Frame(b'B', b"\0none\xff\0\0\0\0\0\0\0"), Sync, Terminate], &[bad, "ZI"]),
        (&[Frame(b'D', b"Ss\xff\0"), Sync, Terminate], &[bad, "ZI"]),
        (&[Frame(b'D', b"Pp\xff\0"), Sync, Terminate], &[bad, "ZI"]),
        (&[Frame(b'D', b"Xp\xff\0"), Sync, Terminate], &[bad, "ZI"]),
        (&[Frame(b'D', b"Ss\xe2\x82\0zz"), Sync, Terminate], &[bad, "ZI"]),
        (
            &[Parse("s1", "SELECT 1"), Sync, Frame(b'C', b"Ss\xff\0"), Sync, Terminate],
            &["1", "ZI", bad, "ZI"],
        ),
        (&[Frame(b'C', b"Pp\xff\0"), Sync, Query("SELECT 2"), Terminate], &[bad, "ZI", "T", "D", "C", "ZI"]),
        (&[Frame(b'E', b"p\xff\0\0\0\0\0"), Sync, Terminate], &[bad, "ZI"]),
        (&[Frame(b'E', b"p\xff\0\0\0"), Sync, Terminate], &[bad, "ZI"]),
        (
            &[
                Query("BEGIN"),
                Parse("s1", "SELECT 1"),
                Bind("p1", "s1"),
                Sync,
                Frame(b'E', b"p1\xff\0\0\0\0\0"),
                Sync,
                Execute("p1", 0),
                Sync,
                Query("ROLLBACK"),
                Terminate,
            ],
            &["C", "ZT", "1", "2", "ZT", bad, "ZE", "E:25P02", "ZE", "C", "ZI"],
        ),
        (
            &[
                Query("BEGIN"),
                Query("SELECT 1/0"),
                Frame(b'D', b"Ss\xff\0"),
                Sync,
                Query("ROLLBACK"),
                Terminate,
            ],
            &["C", "ZT", "E:22012", "ZE", bad, "ZE", "C", "ZI"],
        ),
        (
            &[
                Parse("s1", "SELECT 1"),
                Bind("", "s1"),
                Frame(b'D', b"Ss\xff\0"),
                Execute("", 0),
                Sync,
                Query("SELECT 3"),
                Terminate,
            ],
            &["1", "2", bad, "ZI", "T", "D", "C", "ZI"],
        ),
        // Valid UTF-8 beyond ASCII is a name like any other.
        (
            &[
                Frame(b'P', "é\0SELECT 1\0\0\0".as_bytes()),
                Frame(b'D', "Sé\0".as_bytes()),
                Frame(b'B', "ü\0é\0\0\0\0\0\0\0".as_bytes()),
                Frame(b'E', "ü\0\0\0\0\0".as_bytes()),
                Frame(b'C', "Sé\0".as_bytes()),
                Sync,
                Terminate,
            ],
            &["1", "t", "T", "2", "D", "C", "3", "ZI"],
        ),
    ];
    let msgs: Vec<&[Msg]> = cases.iter().map(|(m, _)| *m).collect();
    let (postgres, differ) = in_both_modes(&t, &msgs).await;
    for ((msgs, expected), a) in cases.iter().zip(&postgres) {
        assert_eq!(a, expected, "{msgs:?}: PostgreSQL");
    }
    assert!(differ.is_empty(), "{}", differ.join("\n"));
}
