use super::*;
use proptest::prelude::*;

#[test]
fn shares_of_a_view_sum_to_the_cap_with_the_remainder_by_slot_order() {
    let v = View::new(vec![7, 3, 5]);
    assert_eq!(v.key(), "3,5,7");
    let shares: Vec<usize> = [3, 5, 7].iter().map(|&s| share(10, &v, s)).collect();
    assert_eq!(shares, vec![4, 3, 3]);
    assert_eq!(share(10, &v, 4), 0, "not a member");
    assert_eq!([3, 5, 7].iter().map(|&s| share(2, &v, s)).collect::<Vec<_>>(), vec![1, 1, 0]);
    for cap in 0..50 {
        for n in 1..8 {
            assert_eq!((0..n).map(|r| share_of(cap, n, Some(r))).sum::<usize>(), cap);
        }
    }
}

#[test]
fn a_lone_instance_settles_after_reporting_its_view_once() {
    let mut l = Leases::new(1);
    assert_eq!(l.limit(10), 0, "nothing before a view is settled");
    l.observe(&[(1, "")]);
    assert_eq!((l.limit(10), l.seen().as_str()), (0, "1"));
    l.observe(&[(1, "1")]);
    assert!(l.settled());
    assert_eq!(l.limit(10), 10);
}

#[test]
fn a_joiner_gets_its_share_once_peers_reported_the_new_view() {
    let (mut a, mut b) = (Leases::new(1), Leases::new(2));
    a.observe(&[(1, "")]);
    a.observe(&[(1, "1")]);
    assert_eq!(a.limit(10), 10);
    // b registered: a shrinks at once, b has nothing yet.
    a.observe(&[(1, "1"), (2, "")]);
    assert_eq!(a.limit(10), 5);
    b.observe(&[(1, "1,2"), (2, "")]);
    assert_eq!(b.limit(10), 0);
    // b reports 1,2 and sees a reporting it: settled.
    b.observe(&[(1, "1,2"), (2, "1,2")]);
    assert_eq!((b.limit(10), b.limit(3)), (5, 1));
    assert_eq!(a.limit(3), 2);
    // b leaves: a grows only after reporting the view without b.
    a.observe(&[(1, "1,2")]);
    assert_eq!(a.limit(10), 5);
    a.observe(&[(1, "1")]);
    assert_eq!(a.limit(10), 10);
}

/// One step of the simulated service (see the property below).
#[derive(Clone, Debug)]
enum Op {
    /// A new instance registers with this slot (if free).
    Join(u16),
    /// Instance k (modulo those alive) writes its heartbeat and reads the rows...
    Read(usize),
    /// ...and later applies what it read (other instances may act in between).
    Apply(usize),
    /// Instance k drains and deregisters: it holds nothing and its row is gone.
    Leave(usize),
    /// Instance k dies: it holds nothing; its row stays until expired.
    Crash(usize),
    /// The rows of dead instances are expired.
    Expire,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => (1u16..=6).prop_map(Op::Join),
        4 => (0usize..8).prop_map(Op::Read),
        4 => (0usize..8).prop_map(Op::Apply),
        1 => (0usize..8).prop_map(Op::Leave),
        1 => (0usize..8).prop_map(Op::Crash),
        1 => Just(Op::Expire),
    ]
}

/// The registry's rows as (slot, seen).
type Rows = Vec<(u16, String)>;

struct Sim {
    rows: Rows,
    /// Live instances, and what each read at its last heartbeat, not yet applied.
    alive: Vec<(Leases, Option<Rows>)>,
}

impl Sim {
    fn pick(&self, k: usize) -> Option<usize> {
        (!self.alive.is_empty()).then(|| k % self.alive.len())
    }

    fn step(&mut self, op: &Op) {
        match *op {
            Op::Join(slot) => {
                if self.rows.iter().all(|r| r.0 != slot) {
                    self.rows.push((slot, String::new()));
                    self.alive.push((Leases::new(slot), None));
                }
            }
            Op::Read(k) => {
                let Some(i) = self.pick(k) else { return };
                let (leases, read) = &mut self.alive[i];
                match self.rows.iter_mut().find(|r| r.0 == leases.slot()) {
                    Some(row) => row.1 = leases.seen(),
                    None => return,
                }
                *read = Some(self.rows.clone());
            }
            Op::Apply(k) => {
                let Some(i) = self.pick(k) else { return };
                let (leases, read) = &mut self.alive[i];
                if let Some(rows) = read.take() {
                    let rows: Vec<(u16, &str)> = rows.iter().map(|r| (r.0, r.1.as_str())).collect();
                    leases.observe(&rows);
                }
            }
            Op::Leave(k) => {
                let Some(i) = self.pick(k) else { return };
                let (leases, _) = self.alive.remove(i);
                self.rows.retain(|r| r.0 != leases.slot());
            }
            Op::Crash(k) => {
                let Some(i) = self.pick(k) else { return };
                self.alive.remove(i);
            }
            Op::Expire => {
                let alive: Vec<u16> = self.alive.iter().map(|a| a.0.slot()).collect();
                self.rows.retain(|r| alive.contains(&r.0));
            }
        }
    }

    fn check(&self, when: &str) -> Result<(), TestCaseError> {
        for cap in 0..=13 {
            let sum: usize = self.alive.iter().map(|a| a.0.limit(cap)).sum();
            prop_assert!(sum <= cap, "{when}: shares {sum} over cap {cap}: {:?} {:?}", self.rows, self.alive);
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Whatever the order of joins, leaves, crashes and heartbeats (a heartbeat's read and its
    /// use may be separated by other instances' steps), the limits of the live instances never
    /// sum above the cap; and once the dead are expired and everyone heartbeats a few times,
    /// every instance is settled and the shares sum to the cap exactly.
    #[test]
    fn shares_never_sum_above_the_cap(ops in proptest::collection::vec(op(), 0..120)) {
        let mut sim = Sim { rows: Vec::new(), alive: Vec::new() };
        for op in &ops {
            sim.step(op);
            sim.check(&format!("after {op:?}"))?;
        }
        sim.step(&Op::Expire);
        for _ in 0..3 {
            for k in 0..sim.alive.len() {
                sim.step(&Op::Read(k));
                sim.step(&Op::Apply(k));
                sim.check("healing")?;
            }
        }
        if !sim.alive.is_empty() {
            prop_assert!(sim.alive.iter().all(|a| a.0.settled()), "{:?}", sim.alive);
            for cap in 0..=13 {
                prop_assert_eq!(sim.alive.iter().map(|a| a.0.limit(cap)).sum::<usize>(), cap);
            }
        }
    }
}
