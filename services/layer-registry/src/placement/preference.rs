//! Role preferences, honoured after placement when they cost nothing: two placed nodes trade
//! spans when that gives one of them the role it asked for, takes from the other no role it
//! asked for, and both fit the span they get. Coverage, replicas and pipelines are unchanged
//! (the same spans, held by other nodes); every trade satisfies one more preference, so the
//! pass ends, and its result is its own fixed point (publishing again moves nobody).

use std::collections::BTreeMap;

use neuroshard_common::role::Role;

use super::types::{LayerCosts, NodeCapacity, Placement};

/// Trades spans in `placement` so that nodes get the roles in `preferred` where they can.
pub fn honour(
    placement: &mut Placement,
    nodes: &[NodeCapacity],
    preferred: &BTreeMap<String, Role>,
    num_layers: u32,
    costs: &LayerCosts,
) {
    let memory = |id: &str| {
        nodes
            .iter()
            .find(|n| n.node_id == id)
            .map_or(0, |n| u128::from(n.memory_bytes))
    };
    let wants = |id: &str, role: Role| preferred.get(id) == Some(&role);
    // Bounded: each trade satisfies one more preference.
    for _ in 0..=preferred.len() {
        let mut traded = None;
        'search: for (i, a) in placement.spans.iter().enumerate() {
            let Some(&want) = preferred.get(&a.node_id) else {
                continue;
            };
            if a.role == want || a.role == Role::Full {
                continue;
            }
            for (j, b) in placement.spans.iter().enumerate() {
                if b.role != want || wants(&b.node_id, b.role) {
                    continue;
                }
                let fits = |id: &str, start: u32, end: u32| {
                    memory(id) >= costs.span_bytes(num_layers, start, end)
                };
                if fits(&a.node_id, b.start, b.end) && fits(&b.node_id, a.start, a.end) {
                    traded = Some((i, j));
                    break 'search;
                }
            }
        }
        let Some((i, j)) = traded else {
            return;
        };
        let (a, b) = (
            placement.spans[i].node_id.clone(),
            placement.spans[j].node_id.clone(),
        );
        placement.spans[i].node_id.clone_from(&b);
        placement.spans[j].node_id.clone_from(&a);
        for stage in placement
            .pipelines
            .iter_mut()
            .flat_map(|p| p.stages.iter_mut())
        {
            if stage.node_id == a {
                stage.node_id.clone_from(&b);
            } else if stage.node_id == b {
                stage.node_id.clone_from(&a);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::{NodeSpan, Pipeline, place};

    const COSTS: LayerCosts = LayerCosts {
        layer_bytes: 100,
        embedding_bytes: 50,
        head_bytes: 50,
    };

    fn node(id: &str, memory: u64) -> NodeCapacity {
        NodeCapacity {
            node_id: id.into(),
            memory_bytes: memory,
            throughput: 1.0,
        }
    }

    fn role_of(p: &Placement, id: &str) -> Option<Role> {
        p.spans.iter().find(|s| s.node_id == id).map(|s| s.role)
    }

    #[test]
    fn a_preference_is_met_by_a_trade_that_keeps_coverage_and_pipelines() {
        // Four equal nodes, four layers, spans of two: two drivers, two validators.
        let nodes: Vec<NodeCapacity> = ["a", "b", "c", "d"]
            .iter()
            .map(|id| node(id, 260))
            .collect();
        let mut p = place(4, &COSTS, &nodes, 2).unwrap();
        let validator = p
            .spans
            .iter()
            .find(|s| s.role == Role::Validator)
            .unwrap()
            .node_id
            .clone();
        let before = p.clone();
        let preferred = BTreeMap::from([(validator.clone(), Role::Driver)]);
        honour(&mut p, &nodes, &preferred, 4, &COSTS);
        assert_eq!(role_of(&p, &validator), Some(Role::Driver));
        // The same spans and holders; every pipeline still a cover in order.
        let spans = |p: &Placement| {
            let mut s: Vec<(u32, u32)> = p.spans.iter().map(|s| (s.start, s.end)).collect();
            s.sort();
            s
        };
        assert_eq!(spans(&p), spans(&before));
        assert_eq!(p.holders, before.holders);
        for pipeline in &p.pipelines {
            let mut at = 0;
            for stage in &pipeline.stages {
                assert_eq!(stage.start, at);
                assert_eq!(
                    p.spans
                        .iter()
                        .find(|s| s.node_id == stage.node_id)
                        .map(|s| (s.start, s.end)),
                    Some((stage.start, stage.end))
                );
                at = stage.end;
            }
            assert_eq!(at, 4);
        }
        // Its own fixed point.
        let once = p.clone();
        honour(&mut p, &nodes, &preferred, 4, &COSTS);
        assert_eq!(p, once);
    }

    #[test]
    fn no_trade_takes_a_wanted_role_or_overfills_a_node() {
        let span = |id: &str, start, end, role| NodeSpan {
            node_id: id.into(),
            start,
            end,
            role,
        };
        let placement = Placement {
            spans: vec![
                span("a", 0, 2, Role::Driver),
                span("b", 2, 4, Role::Validator),
            ],
            unassigned: Vec::new(),
            pipelines: vec![Pipeline {
                stages: vec![
                    span("a", 0, 2, Role::Driver),
                    span("b", 2, 4, Role::Validator),
                ],
            }],
            holders: vec![1; 4],
            health: crate::placement::Health::Healthy,
        };
        let nodes = [node("a", 250), node("b", 250)];
        // b wants the driver role, but a wants it too: no trade.
        let both = BTreeMap::from([("a".to_string(), Role::Driver), ("b".into(), Role::Driver)]);
        let mut p = placement.clone();
        honour(&mut p, &nodes, &both, 4, &COSTS);
        assert_eq!(p, placement);
        // b wants it and a does not care, but a cannot hold b's span: no trade.
        let small = [node("a", 250), node("b", 260)];
        let one = BTreeMap::from([("b".to_string(), Role::Driver)]);
        let mut p = placement.clone();
        honour(&mut p, &[node("a", 240), small[1].clone()], &one, 4, &COSTS);
        assert_eq!(p, placement);
        // Both fit: they trade.
        let mut p = placement.clone();
        honour(&mut p, &small, &one, 4, &COSTS);
        assert_eq!(role_of(&p, "b"), Some(Role::Driver));
        assert_eq!(p.pipelines[0].stages[0].node_id, "b");
    }
}
