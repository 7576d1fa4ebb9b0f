//! Candidate routes from an assignment: each complete pipeline is a route; hops are weighted
//! by capacity over queue depth, and suspect nodes are down-weighted so traffic drains away
//! from them before they are declared dead.

use neuroshard_proto::registry::v1::{AssignmentSnapshot, Hop, NodeAssignment, NodeState, Route};

use crate::trust::effective_tokens_per_second;

/// Weight of one hop: throughput (the claim, or what observers measured when lower) shared
/// by the work already queued there.
pub fn hop_weight(node: &NodeAssignment) -> f64 {
    let claimed = node.capacity.as_ref().map_or(0.0, |c| c.tokens_per_second);
    let throughput =
        effective_tokens_per_second(claimed, Some(node.observed_tokens_per_second)).max(1.0);
    let penalty = if node.state == NodeState::Suspect as i32 {
        0.1
    } else {
        1.0
    };
    throughput * penalty / (1.0 + f64::from(node.queue_depth))
}

/// Up to `max_routes` routes, best first (by the weight of their weakest hop).
pub fn routes(snapshot: &AssignmentSnapshot, max_routes: usize) -> Vec<Route> {
    let by_id = |id: &str| snapshot.nodes.iter().find(|n| n.node_id == id);
    let mut routes: Vec<(f64, Route)> = snapshot
        .pipelines
        .iter()
        .filter_map(|pipeline| {
            let hops: Option<Vec<Hop>> = pipeline
                .node_ids
                .iter()
                .map(|id| {
                    by_id(id).map(|node| Hop {
                        node_id: node.node_id.clone(),
                        endpoint: node.endpoint.clone(),
                        span: node.span,
                        weight: hop_weight(node),
                    })
                })
                .collect();
            let hops = hops?;
            let bottleneck = hops.iter().map(|h| h.weight).fold(f64::INFINITY, f64::min);
            Some((bottleneck, Route { hops }))
        })
        .collect();
    routes.sort_by(|a, b| b.0.total_cmp(&a.0));
    routes
        .into_iter()
        .take(max_routes)
        .map(|(_, r)| r)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use neuroshard_proto::registry::v1::Capacity;

    #[test]
    fn an_observed_figure_below_the_claim_sets_the_weight() {
        let node = |claimed: f64, observed: f64| NodeAssignment {
            state: NodeState::Live as i32,
            capacity: Some(Capacity {
                tokens_per_second: claimed,
                ..Capacity::default()
            }),
            observed_tokens_per_second: observed,
            queue_depth: 1,
            ..NodeAssignment::default()
        };
        assert_eq!(hop_weight(&node(1000.0, 0.0)), 500.0);
        assert_eq!(hop_weight(&node(1000.0, 40.0)), 20.0);
        assert_eq!(hop_weight(&node(10.0, 40.0)), 5.0);
    }
}
