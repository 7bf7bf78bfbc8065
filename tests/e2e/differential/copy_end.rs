//! A session that ends inside a COPY FROM STDIN with a malformed or oversized message: the
//! one place where pgtenant's final errors differ from PostgreSQL's (README, "Replies are
//! accounted exactly"), checked against PostgreSQL so `agree` accepts no more than that.

use pgtenant::model::PoolMode;

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_or_oversized_message_inside_a_copy_ends_it_as_documented() {
    use Msg::*;
    let t = tenant_db("diffcopyend").await;
    fz_table(&t).await;
    let direct = direct_target(&t);
    let mut cases: Vec<Vec<Msg>> = Vec::new();
    let ends = b"QdcSX".map(Malformed).into_iter().chain(b"SHXDCEcf".map(Oversized));
    for end in ends {
        cases.push(vec![Query("COPY fz FROM STDIN"), end.clone()]);
        cases.push(vec![
            Parse("", "COPY fz FROM STDIN"),
            Bind("", ""),
            Execute("", 0),
            CopyData("1\n"),
            end.clone(),
        ]);
    }
    for mode in [PoolMode::Session, PoolMode::Transaction] {
        let h = start(config(vec![with_mode(t.clone(), mode, 1)])).await;
        let proxy = Target::Proxy { addr: h.addr, user: format!("app.{}", t.id), db: t.database.clone() };
        for msgs in &cases {
            let whole = [msgs.len()];
            let (a, b) = (run(&direct, msgs, &whole).await, run(&proxy, msgs, &whole).await);
            let code = match msgs.last() {
                Some(Malformed(tag) | Oversized(tag)) if b"dcfSH".contains(tag) => "E:08006",
                _ => "E:08P01",
            };
            let before: &[&str] = if msgs.len() == 2 { &["G"] } else { &["1", "2", "G"] };
            let expected: Vec<&str> = before.iter().copied().chain([code, "E:08P01"]).collect();
            assert_eq!(a, expected, "{mode:?} {msgs:?}: PostgreSQL");
            assert_eq!(b.len(), a.len() + 1, "{mode:?} {msgs:?}: pgtenant {b:?}");
            assert!(agree::agree(&a, &b, msgs), "{mode:?} {msgs:?}: PostgreSQL {a:?}, pgtenant {b:?}");
            // Nothing wider: the same replies with another error before the FATAL do not agree.
            let mut other = b.clone();
            other[a.len() - 2] = "E:22P02".into();
            assert!(!agree::agree(&a, &other, msgs), "{mode:?} {msgs:?}: {other:?} accepted");
        }
    }
}
