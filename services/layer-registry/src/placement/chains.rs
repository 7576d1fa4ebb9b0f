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
    let mut graph: Vec<Vec<Edge>> = vec![Vec::new(); target + 1];
    for (index, span) in spans.iter().enumerate() {
        let (from, to) = (span.start as usize, span.end as usize);
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
        NodeSpan {
            node_id: id.into(),
            start,
            end,
            role: Role::for_span(start, end, 4),
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
}
