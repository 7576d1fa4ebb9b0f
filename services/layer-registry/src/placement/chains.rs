//! Pipelines read off a set of spans: the most node-disjoint chains of spans tiling `[0, L)`
//! end to end. Each node holds one span, so these are edge-disjoint paths from boundary 0 to
//! boundary L in the DAG whose edges are spans: a unit-capacity maximum flow, found by
//! augmenting paths and then split into paths. Deterministic: spans are taken in the order
//! given.

use super::types::{NodeSpan, Pipeline};

#[derive(Debug, Clone, Copy)]
struct Edge {
    to: usize,
    /// Remaining capacity (1 or 0).
    capacity: u8,
    /// Index of the reverse edge in `graph[to]`.
    reverse: usize,
    /// The span this edge stands for; `None` for reverse edges.
    span: Option<usize>,
}

/// The most node-disjoint pipelines `spans` form, in the order their first stages appear in
/// `spans`.
pub(super) fn disjoint_pipelines(spans: &[NodeSpan], l: u32) -> Vec<Pipeline> {
    let target = l as usize;
    let graph = maximum_flow(spans.iter().map(|s| (s.start, s.end)), l);

    // Every used forward edge now has capacity 0; walk them from 0 to L, each once.
    let mut taken: Vec<Vec<bool>> = graph.iter().map(|edges| vec![false; edges.len()]).collect();
    let mut pipelines = Vec::new();
    loop {
        let mut at = 0;
        let mut stages = Vec::new();
        while at != target {
            let next = graph[at]
                .iter()
                .enumerate()
                .find(|(i, e)| e.span.is_some() && e.capacity == 0 && !taken[at][*i]);
            let Some((i, edge)) = next else {
                break;
            };
            taken[at][i] = true;
            if let Some(span) = edge.span {
                stages.push(spans[span].clone());
            }
            at = edge.to;
        }
        if at != target || stages.is_empty() {
            break;
        }
        pipelines.push(Pipeline { stages });
    }
    pipelines
}

/// The residual graph of a maximum flow from boundary 0 to boundary `l` through the spans
/// `bounds` (one unit-capacity edge each, `Edge::span` its index in `bounds`).
fn maximum_flow(bounds: impl Iterator<Item = (u32, u32)>, l: u32) -> Vec<Vec<Edge>> {
    let target = l as usize;
    let mut graph: Vec<Vec<Edge>> = vec![Vec::new(); target + 1];
    for (index, (start, end)) in bounds.enumerate() {
        let (from, to) = (start as usize, end as usize);
        if from >= to || to > target {
            continue;
        }
        let forward = graph[from].len();
        let backward = graph[to].len();
        graph[from].push(Edge {
            to,
            capacity: 1,
            reverse: backward,
            span: Some(index),
        });
        graph[to].push(Edge {
            to: from,
            capacity: 0,
            reverse: forward,
            span: None,
        });
    }
    while augment(&mut graph, target) {}
    graph
}

/// Where one more span would add a pipeline to the most that the spans form: a span
/// `[s, e)` does exactly when `from_start[s] && to_end[e]`.
#[derive(Debug)]
pub(super) struct OpenEnds {
    /// Boundary `b` is reachable from 0 in the maximum flow's residual graph.
    pub(super) from_start: Vec<bool>,
    /// Boundary `l` is reachable from `b` in that graph.
    pub(super) to_end: Vec<bool>,
}

impl OpenEnds {
    /// Whether a span `[start, end)` added to the spans would add a pipeline.
    pub(super) fn adds_pipeline(&self, start: u32, end: u32) -> bool {
        self.from_start[start as usize] && self.to_end[end as usize]
    }
}

/// [`OpenEnds`] of `bounds` on an `l`-layer model. With the flow maximum, a new edge
/// `s -> e` raises it iff the residual graph has paths 0 -> s and e -> l: together with the
/// edge they form an augmenting path, and any augmenting path must use the new edge (were
/// the two paths to meet, the flow would not have been maximum).
pub(super) fn open_ends(bounds: impl Iterator<Item = (u32, u32)>, l: u32) -> OpenEnds {
    let graph = maximum_flow(bounds, l);
    let target = l as usize;
    let mut from_start = vec![false; target + 1];
    from_start[0] = true;
    let mut queue = std::collections::VecDeque::from([0usize]);
    while let Some(v) = queue.pop_front() {
        for edge in &graph[v] {
            if edge.capacity > 0 && !from_start[edge.to] {
                from_start[edge.to] = true;
                queue.push_back(edge.to);
            }
        }
    }
    // Backwards: v reaches l when some residual edge v -> w has w reaching l. Every edge
    // w -> v is stored beside its pair v -> w, so walk the pairs from l outwards.
    let mut to_end = vec![false; target + 1];
    to_end[target] = true;
    queue.push_back(target);
    while let Some(w) = queue.pop_front() {
        for edge in &graph[w] {
            let v = edge.to;
            if !to_end[v] && graph[v][edge.reverse].capacity > 0 {
                to_end[v] = true;
                queue.push_back(v);
            }
        }
    }
    OpenEnds { from_start, to_end }
}

/// One breadth-first augmenting path from 0 to `target`; false when none is left.
fn augment(graph: &mut [Vec<Edge>], target: usize) -> bool {
    if target == 0 {
        return false;
    }
    // came[v] = (vertex, edge index) the search reached v through.
    let mut came: Vec<Option<(usize, usize)>> = vec![None; graph.len()];
    let mut queue = std::collections::VecDeque::from([0usize]);
    let mut seen = vec![false; graph.len()];
    seen[0] = true;
    while let Some(v) = queue.pop_front() {
        if v == target {
            break;
        }
        for (i, edge) in graph[v].iter().enumerate() {
            if edge.capacity > 0 && !seen[edge.to] {
                seen[edge.to] = true;
                came[edge.to] = Some((v, i));
                queue.push_back(edge.to);
            }
        }
    }
    if !seen[target] {
        return false;
    }
    let mut v = target;
    while let Some((from, i)) = came[v] {
        let reverse = graph[from][i].reverse;
        graph[from][i].capacity -= 1;
        graph[v][reverse].capacity += 1;
        v = from;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use neuroshard_common::role::Role;

    fn span(id: &str, start: u32, end: u32) -> NodeSpan {
        span_of(id, start, end, 4)
    }

    fn span_of(id: &str, start: u32, end: u32, l: u32) -> NodeSpan {
        NodeSpan {
            node_id: id.into(),
            start,
            end,
            role: Role::for_span(start, end, l),
        }
    }

    fn ids(p: &Pipeline) -> Vec<&str> {
        p.stages.iter().map(|s| s.node_id.as_str()).collect()
    }

    #[test]
    fn the_most_disjoint_chains_are_found() {
        // Two chains (a+c, b+d); the spare span joins neither.
        let spans = [
            span("a", 0, 2),
            span("b", 0, 3),
            span("c", 2, 4),
            span("d", 3, 4),
            span("spare", 1, 3),
        ];
        let pipelines = disjoint_pipelines(&spans, 4);
        assert_eq!(pipelines.len(), 2);
        let mut found: Vec<Vec<&str>> = pipelines.iter().map(ids).collect();
        found.sort();
        assert_eq!(found, vec![vec!["a", "c"], vec!["b", "d"]]);
    }

    #[test]
    fn spans_that_do_not_tile_form_no_pipeline() {
        let spans = [span("a", 0, 3), span("b", 1, 4), span("c", 0, 3)];
        assert!(disjoint_pipelines(&spans, 4).is_empty());
        let full = [span("f", 0, 4)];
        assert_eq!(disjoint_pipelines(&full, 4).len(), 1);
    }

    proptest::proptest! {
        /// `open_ends` against adding each possible span and counting pipelines again.
        #[test]
        fn open_ends_name_exactly_the_spans_that_add_a_pipeline(
            l in 1u32..7,
            raw in proptest::collection::vec((0u32..7, 1u32..7), 0..9),
        ) {
            let spans: Vec<NodeSpan> = raw
                .iter()
                .enumerate()
                .filter(|(_, (s, len))| s + len <= l)
                .map(|(i, &(s, len))| span_of(&format!("n{i}"), s, s + len, l))
                .collect();
            let before = disjoint_pipelines(&spans, l).len();
            let open = open_ends(spans.iter().map(|s| (s.start, s.end)), l);
            for start in 0..l {
                for end in start + 1..=l {
                    let mut more = spans.clone();
                    more.push(span_of("new", start, end, l));
                    let adds = disjoint_pipelines(&more, l).len() > before;
                    proptest::prop_assert_eq!(open.adds_pipeline(start, end), adds, "[{}, {}) on {:?}", start, end, spans);
                }
            }
        }
    }
}
