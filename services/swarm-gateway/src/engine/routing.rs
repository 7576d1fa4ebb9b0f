//! Route choice, pure: a route is a chain of nodes whose spans tile `[from, to)` end to end.
//! Every routable node is an edge from its span's start to its end; the route is the cheapest
//! path through those edges (a DAG over layer boundaries, so one pass in boundary order).
//!
//! A hop's cost is its expected time: the gateway's measured latency for that node (or a prior
//! from the throughput the node reported), times one plus the requests this gateway already has
//! on it, so concurrent requests spread over replicas. Suspect and backed-off nodes cost much
//! more, so they are used only when nothing else covers their layers: a gateway's own failure
//! signal (a timeout under load, say) must not take the swarm's last holder of a layer out of
//! service. Nodes a request already failed on (`exclude`) are not used at all.
//! A small per-hop constant prefers fewer hops; a caller-supplied jitter breaks ties between
//! equal replicas.

use std::collections::{HashMap, HashSet};

use neuroshard_proto::registry::v1::NodeState;

use super::view::NodeView;

/// What this gateway knows about a node's current load.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct NodeLoad {
    /// Recent per-hop latency this gateway measured (decode steps).
    pub latency_ms: Option<f64>,
    /// Requests of this gateway currently open on the node.
    pub in_flight: u32,
    /// True while the node is backed off after a failure.
    pub backed_off: bool,
}

/// Added to every hop: one more network round trip.
const HOP_OVERHEAD_MS: f64 = 0.5;
/// A suspect node is used only when the alternative is no route.
const SUSPECT_FACTOR: f64 = 50.0;
/// A backed-off node, likewise; after suspects, whose state the registry vouches for.
const BACKED_OFF_FACTOR: f64 = 2_500.0;

/// Expected cost of sending one decode step through `node`.
pub fn hop_cost(node: &NodeView, load: NodeLoad) -> f64 {
    let prior = if node.tokens_per_s > 0.0 {
        1000.0 / node.tokens_per_s
    } else {
        10.0
    };
    let latency = load.latency_ms.unwrap_or(prior).max(0.01);
    let state = if node.state == NodeState::Suspect {
        SUSPECT_FACTOR
    } else {
        1.0
    };
    let backed_off = if load.backed_off {
        BACKED_OFF_FACTOR
    } else {
        1.0
    };
    (latency * (1.0 + f64::from(load.in_flight)) + HOP_OVERHEAD_MS) * state * backed_off
}

/// The cheapest chain of node indices (into `nodes`) tiling `[from, to)`, or `None` when the
/// usable nodes leave a gap. `jitter` is called once per candidate and multiplies its cost
/// (return 1.0 for none).
pub fn best_chain(
    nodes: &[NodeView],
    loads: &HashMap<String, NodeLoad>,
    from: u32,
    to: u32,
    exclude: &HashSet<String>,
    mut jitter: impl FnMut() -> f64,
) -> Option<Vec<usize>> {
    if from >= to {
        return None;
    }
    let width = (to - from) as usize;
    // best[b - from] = (cost to reach boundary b, index of the node that reached it)
    let mut best: Vec<Option<(f64, usize)>> = vec![None; width + 1];
    best[0] = Some((0.0, usize::MAX));
    let mut usable: Vec<(usize, f64)> = nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| n.routable() && n.start >= from && n.end <= to && !exclude.contains(&n.id))
        .map(|(i, n)| {
            let load = loads.get(&n.id).copied().unwrap_or_default();
            (i, hop_cost(n, load) * jitter())
        })
        .collect();
    usable.sort_by_key(|(i, _)| nodes[*i].start);
    for (i, cost) in usable {
        let node = &nodes[i];
        let Some((reached, _)) = best[(node.start - from) as usize] else {
            continue;
        };
        let slot = &mut best[(node.end - from) as usize];
        let total = reached + cost;
        if slot.is_none_or(|(c, _)| total < c) {
            *slot = Some((total, i));
        }
    }
    let mut chain = Vec::new();
    let mut boundary = to;
    while boundary > from {
        let (_, i) = best[(boundary - from) as usize]?;
        chain.push(i);
        boundary = nodes[i].start;
    }
    chain.reverse();
    Some(chain)
}

/// The spans of `[from, to)` that no usable node covers, as half-open `(start, end)` runs,
/// for the "no route" message: `[(2, 4)]`, not `[2, 3]`, so the message names the same span
/// whether the request looked before or after the holder died.
pub fn uncovered(
    nodes: &[NodeView],
    from: u32,
    to: u32,
    exclude: &HashSet<String>,
) -> Vec<(u32, u32)> {
    let mut spans: Vec<(u32, u32)> = Vec::new();
    for layer in from..to {
        let covered = nodes
            .iter()
            .any(|n| n.routable() && !exclude.contains(&n.id) && n.start <= layer && layer < n.end);
        if covered {
            continue;
        }
        match spans.last_mut() {
            Some((_, end)) if *end == layer => *end = layer + 1,
            _ => spans.push((layer, layer + 1)),
        }
    }
    spans
}

#[cfg(test)]
mod tests {
    use neuroshard_proto::common::v1::Role;

    use super::*;

    fn node(id: &str, start: u32, end: u32, state: NodeState) -> NodeView {
        NodeView {
            id: id.into(),
            endpoint: format!("http://{id}"),
            start,
            end,
            role: Role::Worker,
            state,
            tokens_per_s: 1000.0,
            observed_tokens_per_s: 0.0,
            memory_bytes: 1,
        }
    }

    fn ids(nodes: &[NodeView], chain: &[usize]) -> Vec<String> {
        chain.iter().map(|&i| nodes[i].id.clone()).collect()
    }

    #[test]
    fn chains_tile_the_range_and_prefer_fewer_hops() {
        let nodes = vec![
            node("a", 0, 2, NodeState::Live),
            node("b", 2, 4, NodeState::Live),
            node("full", 0, 4, NodeState::Live),
        ];
        let none = HashSet::new();
        let chain = best_chain(&nodes, &HashMap::new(), 0, 4, &none, || 1.0).unwrap();
        assert_eq!(ids(&nodes, &chain), ["full"]);
        let exclude = HashSet::from(["full".to_string()]);
        let chain = best_chain(&nodes, &HashMap::new(), 0, 4, &exclude, || 1.0).unwrap();
        assert_eq!(ids(&nodes, &chain), ["a", "b"]);
        // A sub-range (one hop's span) for failover.
        let chain = best_chain(&nodes, &HashMap::new(), 2, 4, &exclude, || 1.0).unwrap();
        assert_eq!(ids(&nodes, &chain), ["b"]);
    }

    #[test]
    fn gaps_dead_and_excluded_nodes_give_no_route() {
        let nodes = vec![
            node("a", 0, 2, NodeState::Live),
            node("b", 2, 4, NodeState::Dead),
            node("c", 2, 4, NodeState::Live),
        ];
        let loads = HashMap::new();
        let exclude = HashSet::from(["c".to_string()]);
        assert_eq!(best_chain(&nodes, &loads, 0, 4, &exclude, || 1.0), None);
        assert_eq!(
            uncovered(&nodes, 0, 4, &HashSet::from(["c".into()])),
            [(2, 4)]
        );
        let gappy = vec![
            node("a", 1, 2, NodeState::Live),
            node("b", 3, 4, NodeState::Live),
        ];
        assert_eq!(
            uncovered(&gappy, 0, 5, &HashSet::new()),
            [(0, 1), (2, 3), (4, 5)]
        );
    }

    #[test]
    fn backed_off_nodes_are_the_last_resort_not_a_gap() {
        let nodes = vec![
            node("a", 0, 4, NodeState::Live),
            node("b", 0, 4, NodeState::Live),
            node("s", 0, 4, NodeState::Suspect),
        ];
        let none = HashSet::new();
        let backed_off = NodeLoad {
            backed_off: true,
            ..NodeLoad::default()
        };
        let mut loads = HashMap::from([("a".to_string(), backed_off)]);
        // A busy live replica still beats a backed-off idle one.
        loads.insert(
            "b".to_string(),
            NodeLoad {
                in_flight: 8,
                ..NodeLoad::default()
            },
        );
        let chain = best_chain(&nodes, &loads, 0, 4, &none, || 1.0).unwrap();
        assert_eq!(ids(&nodes, &chain), ["b"]);
        // Every live holder backed off: a suspect first, then the backed-off one.
        loads.insert("b".to_string(), backed_off);
        let chain = best_chain(&nodes, &loads, 0, 4, &none, || 1.0).unwrap();
        assert_eq!(ids(&nodes, &chain), ["s"]);
        let exclude = HashSet::from(["s".to_string(), "b".to_string()]);
        let chain = best_chain(&nodes, &loads, 0, 4, &exclude, || 1.0).unwrap();
        assert_eq!(ids(&nodes, &chain), ["a"]);
    }

    #[test]
    fn load_spreads_over_replicas_and_suspects_are_a_last_resort() {
        let nodes = vec![
            node("r1", 0, 4, NodeState::Live),
            node("r2", 0, 4, NodeState::Live),
            node("s", 0, 4, NodeState::Suspect),
        ];
        let none = HashSet::new();
        let mut loads = HashMap::new();
        loads.insert(
            "r1".to_string(),
            NodeLoad {
                in_flight: 2,
                ..NodeLoad::default()
            },
        );
        let chain = best_chain(&nodes, &loads, 0, 4, &none, || 1.0).unwrap();
        assert_eq!(ids(&nodes, &chain), ["r2"]);
        let exclude = HashSet::from(["r1".to_string(), "r2".to_string()]);
        let chain = best_chain(&nodes, &loads, 0, 4, &exclude, || 1.0).unwrap();
        assert_eq!(ids(&nodes, &chain), ["s"]);
    }

    #[test]
    fn measured_latency_beats_the_capacity_prior() {
        let nodes = vec![
            node("slow", 0, 4, NodeState::Live),
            node("fast", 0, 4, NodeState::Live),
        ];
        let loads = HashMap::from([
            (
                "slow".to_string(),
                NodeLoad {
                    latency_ms: Some(30.0),
                    ..NodeLoad::default()
                },
            ),
            (
                "fast".to_string(),
                NodeLoad {
                    latency_ms: Some(3.0),
                    ..NodeLoad::default()
                },
            ),
        ]);
        let chain = best_chain(&nodes, &loads, 0, 4, &HashSet::new(), || 1.0).unwrap();
        assert_eq!(ids(&nodes, &chain), ["fast"]);
    }

    #[test]
    fn the_result_is_always_a_contiguous_tiling() {
        // Many overlapping spans; whatever is chosen must tile [0, 8) exactly.
        let mut nodes = Vec::new();
        for s in 0..8 {
            for e in (s + 1)..=8 {
                if (s + e) % 3 != 0 {
                    nodes.push(node(&format!("n{s}-{e}"), s, e, NodeState::Live));
                }
            }
        }
        let mut seed = 7u64;
        for _ in 0..50 {
            let chain = best_chain(&nodes, &HashMap::new(), 0, 8, &HashSet::new(), || {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                0.5 + (seed >> 33) as f64 / (1u64 << 31) as f64
            })
            .unwrap();
            let mut at = 0;
            for &i in &chain {
                assert_eq!(nodes[i].start, at);
                at = nodes[i].end;
            }
            assert_eq!(at, 8);
        }
    }
}
