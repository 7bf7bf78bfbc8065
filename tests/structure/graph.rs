//! The module import graph and its cycles: strongly connected components (Tarjan), each
//! shown as one shortest cycle plus every edge inside it, with the line that makes each edge.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Where an edge comes from: the first line seen that makes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evidence {
    pub file: String,
    pub line: usize,
    pub path: String,
}

/// Module → module it imports → the first import seen.
#[derive(Debug, Default)]
pub struct Graph {
    edges: BTreeMap<String, BTreeMap<String, Evidence>>,
}

impl Graph {
    /// Records that `from` imports `to` (the first evidence of an edge is kept).
    pub fn add(&mut self, from: &str, to: &str, evidence: Evidence) {
        if from != to {
            self.edges.entry(from.to_owned()).or_default().entry(to.to_owned()).or_insert(evidence);
        }
    }

    fn targets(&self, from: &str) -> impl Iterator<Item = &String> {
        self.edges.get(from).into_iter().flat_map(|m| m.keys())
    }

    fn nodes(&self) -> BTreeSet<&String> {
        self.edges.iter().flat_map(|(from, to)| std::iter::once(from).chain(to.keys())).collect()
    }

    /// The groups of modules that reach each other through imports (more than one module
    /// each), members sorted, groups in order of their first member.
    pub fn cycles(&self) -> Vec<Vec<String>> {
        let mut t = Tarjan::default();
        for node in self.nodes() {
            if !t.index.contains_key(node) {
                t.visit(self, node);
            }
        }
        let mut groups: Vec<Vec<String>> = t.groups.into_iter().filter(|g| g.len() > 1).collect();
        for g in &mut groups {
            g.sort();
        }
        groups.sort();
        groups
    }

    /// One shortest cycle through `group[0]`, staying inside `group`: [a, b, …, a].
    pub fn shortest_cycle(&self, group: &[String]) -> Vec<String> {
        let inside: BTreeSet<&String> = group.iter().collect();
        let start = &group[0];
        let mut came_from: BTreeMap<&String, &String> = BTreeMap::new();
        let mut queue = VecDeque::from([start]);
        while let Some(node) = queue.pop_front() {
            for next in self.targets(node).filter(|n| inside.contains(n)) {
                if next == start {
                    let mut cycle = vec![start.clone(), node.clone()];
                    let mut at = node;
                    while let Some(prev) = came_from.get(at) {
                        cycle.push((*prev).clone());
                        at = prev;
                    }
                    cycle.reverse();
                    return cycle;
                }
                if next != start && !came_from.contains_key(next) {
                    came_from.insert(next, node);
                    queue.push_back(next);
                }
            }
        }
        Vec::new()
    }

    /// A readable account of every cycle: members, one cycle, and the edges inside the group
    /// with the import that makes each.
    pub fn report(&self) -> String {
        let mut out = String::new();
        for group in self.cycles() {
            out += &format!("cycle among {{{}}}\n", group.join(", "));
            out += &format!("  e.g. {}\n", self.shortest_cycle(&group).join(" -> "));
            for from in &group {
                for (to, ev) in self.edges.get(from).into_iter().flatten() {
                    if group.contains(to) {
                        out +=
                            &format!("  {from} -> {to}    ({}:{}: crate::{})\n", ev.file, ev.line, ev.path);
                    }
                }
            }
        }
        out
    }
}

#[derive(Default)]
struct Tarjan<'g> {
    next: usize,
    index: BTreeMap<&'g String, usize>,
    low: BTreeMap<&'g String, usize>,
    stack: Vec<&'g String>,
    on_stack: BTreeSet<&'g String>,
    groups: Vec<Vec<String>>,
}

impl<'g> Tarjan<'g> {
    fn visit(&mut self, g: &'g Graph, v: &'g String) {
        self.index.insert(v, self.next);
        self.low.insert(v, self.next);
        self.next += 1;
        self.stack.push(v);
        self.on_stack.insert(v);
        for w in g.targets(v) {
            if !self.index.contains_key(w) {
                self.visit(g, w);
                let low = self.low[v].min(self.low[w]);
                self.low.insert(v, low);
            } else if self.on_stack.contains(w) {
                let low = self.low[v].min(self.index[w]);
                self.low.insert(v, low);
            }
        }
        if self.low[v] == self.index[v] {
            let mut group = Vec::new();
            while let Some(w) = self.stack.pop() {
                self.on_stack.remove(w);
                group.push(w.clone());
                if w == v {
                    break;
                }
            }
            self.groups.push(group);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(edges: &[(&str, &str)]) -> Graph {
        let mut g = Graph::default();
        for (i, (a, b)) in edges.iter().enumerate() {
            g.add(a, b, Evidence { file: format!("src/{a}.rs"), line: i + 1, path: format!("{b}::X") });
        }
        g
    }

    #[test]
    fn a_cycle_is_found_and_shown() {
        let g = graph(&[
            ("server", "client"),
            ("client", "pool"),
            ("pool", "config"),
            ("client", "server"),
            ("admin", "server"),
        ]);
        assert_eq!(g.cycles(), [["client", "server"]]);
        assert_eq!(g.shortest_cycle(&g.cycles()[0]), ["client", "server", "client"]);
        let report = g.report();
        assert!(report.contains("client -> server    (src/client.rs:4: crate::server::X)"), "{report}");
        assert!(report.contains("server -> client    (src/server.rs:1: crate::client::X)"), "{report}");
    }

    #[test]
    fn a_longer_cycle_is_one_group() {
        let g = graph(&[
            ("catalog", "config"),
            ("config", "pool"),
            ("pool", "catalog"),
            ("pool", "auth"),
            ("x", "y"),
            ("y", "x"),
        ]);
        assert_eq!(g.cycles(), [vec!["catalog", "config", "pool"], vec!["x", "y"]]);
        assert_eq!(g.shortest_cycle(&g.cycles()[0]), ["catalog", "config", "pool", "catalog"]);
    }

    #[test]
    fn no_cycle_in_a_layered_graph() {
        let g = graph(&[
            ("server", "client"),
            ("client", "pool"),
            ("server", "pool"),
            ("pool", "model"),
            ("client", "model"),
        ]);
        assert!(g.cycles().is_empty());
        assert_eq!(g.report(), "");
    }

    #[test]
    fn an_import_of_itself_is_no_cycle() {
        let g = graph(&[("a", "a"), ("a", "b")]);
        assert!(g.cycles().is_empty());
    }
}
