//! Placement of decoder layers on nodes for pipeline-parallel training. Pure: no I/O, no
//! clock; the same inputs always give the same placement, whatever the order of the nodes.
//!
//! Two entry points. [`place`] places from scratch, for the best cover: it is used when
//! nothing is placed yet and when the architecture changes (a growth renumbers roles and
//! moves the head, so every span is judged anew: **a growth may re-place every node**).
//! [`place_sticky`] is what the registry runs on every other change: it takes the current
//! placement and moves only what it must (`sticky`: a join or death changes the fewest
//! spans, a healthy holder is never taken off a span to even out counts, a layer short of
//! holders with nobody to spare stays short as a deficit).
//!
//! Every node holds at most one contiguous span of layers. A *pipeline* is a
//! chain of spans covering `[0, L)`; its first stage also holds the token
//! embedding and its last stage the final norm and LM head, so those stages
//! fit fewer layers than the same node would in the middle. A span's role
//! (driver, worker, validator, full) follows from its bounds alone
//! ([`Role::for_span`]).
//!
//! Covering every layer `r` times with one interval per node is possible iff
//! the nodes can be split into `r` disjoint pipelines, so the placement is
//! built pipeline by pipeline:
//!
//! * `exact`: up to [`EXACT_NODE_LIMIT`] usable nodes, a subset DP over all
//!   node sets finds the maximum number of disjoint pipelines (cheapest on
//!   ties). This is exact: whenever `r` disjoint pipelines exist, at least `r`
//!   are formed.
//! * `greedy`: beyond that, nodes are bucketed into capacity classes and a
//!   knapsack over `(layers covered, embedding placed, head placed)` picks the
//!   cheapest next pipeline (fewest stages, then least memory); the same
//!   pattern is repeated while its classes last, which keeps 10,000 nodes in
//!   tens of milliseconds. This path is a heuristic: if it misses the replica
//!   target, other cost functions and tie-breaks are tried before settling for
//!   the best miss.
//! * `layout`: turns the chosen groups into spans. Nodes left over after no
//!   further pipeline can be completed get a partial span over the layers with
//!   the fewest holders, so spare memory still adds replicas instead of idling.
//!
//! `types` holds what goes in and comes out (re-exported here); `fit` turns a
//! node's memory into whole layers per position, the unit both searches count
//! in; `chains` reads the pipelines off a set of spans (sticky placement keeps spans
//! that no search grouped); `testing` is the tests' oracle and instance generator. This
//! module holds the entry points, [`place`], [`place_sticky`] and [`place_model`].
//!
//! [`Role::for_span`]: neuroshard_common::role::Role::for_span

mod chains;
mod exact;
mod fit;
mod greedy;
mod layout;
pub mod preference;
mod sticky;
#[cfg(test)]
mod testing;
mod types;

use std::cmp::Ordering;

use neuroshard_common::ModelConfig;

use fit::Caps;
pub use types::{
    Health, HeldSpan, LayerCosts, LayerDeficit, NodeCapacity, NodeSpan, Pipeline, Placement,
    PlacementError,
};

/// Largest supported `num_layers`: the pattern search packs a layer count
/// into 13 bits of its back-pointer table.
pub const MAX_LAYERS: u32 = 4096;

/// Up to this many usable nodes the exact search is used; its cost grows as
/// 3^n, which is about 2.4 million steps at 14 nodes.
pub const EXACT_NODE_LIMIT: usize = 14;

/// Places `model` on `nodes` when each parameter takes `bytes_per_param` bytes: [`place`]
/// with the model's layer count and costs. Invalid inputs become an internal error, since
/// the model and the nodes are validated before they reach placement.
pub fn place_model(
    model: &ModelConfig,
    nodes: &[NodeCapacity],
    bytes_per_param: u64,
    min_replicas: u32,
) -> Result<Placement, neuroshard_common::Error> {
    place(
        model_layers(model),
        &LayerCosts::of_model(model, bytes_per_param),
        nodes,
        min_replicas,
    )
    .map_err(placement_error)
}

/// [`place_sticky`] for `model`, as [`place_model`] is [`place`] for it.
pub fn place_model_sticky(
    model: &ModelConfig,
    nodes: &[NodeCapacity],
    current: &[HeldSpan],
    bytes_per_param: u64,
    min_replicas: u32,
) -> Result<Placement, neuroshard_common::Error> {
    place_sticky(
        model_layers(model),
        &LayerCosts::of_model(model, bytes_per_param),
        nodes,
        current,
        min_replicas,
    )
    .map_err(placement_error)
}

fn model_layers(model: &ModelConfig) -> u32 {
    u32::try_from(model.num_layers.max(0)).unwrap_or(u32::MAX)
}

fn placement_error(e: PlacementError) -> neuroshard_common::Error {
    neuroshard_common::Error::internal(format!("placement: {e}"))
}

/// Places the layers on `nodes` starting from `current`, the spans nodes hold now for this
/// same architecture, moving only what it must (see `sticky`). Spans of nodes that are gone
/// (dead, draining) are dropped, as are spans a node no longer fits. With nothing held yet it
/// places from scratch ([`place`]) and then applies the same repair, so that its result is
/// already what repairing it again would give: publishing an unchanged swarm never moves a
/// node.
pub fn place_sticky(
    num_layers: u32,
    costs: &LayerCosts,
    nodes: &[NodeCapacity],
    current: &[HeldSpan],
    min_replicas: u32,
) -> Result<Placement, PlacementError> {
    validate(num_layers, costs, nodes)?;
    let mut order: Vec<&NodeCapacity> = nodes.iter().collect();
    order.sort_by(|a, b| node_order(a, b));
    let holds_any = current
        .iter()
        .any(|held| nodes.iter().any(|n| n.node_id == held.node_id));
    let fresh;
    let start: &[HeldSpan] = if holds_any {
        current
    } else {
        fresh = place(num_layers, costs, nodes, min_replicas)?
            .spans
            .into_iter()
            .map(|s| HeldSpan {
                node_id: s.node_id,
                start: s.start,
                end: s.end,
            })
            .collect::<Vec<_>>();
        &fresh
    };
    Ok(sticky::repair(
        num_layers,
        costs,
        &order,
        start,
        min_replicas,
    ))
}

/// Places the layers of a `num_layers`-layer model on `nodes`, aiming for every
/// layer to be held by at least `min_replicas` nodes.
///
/// The result depends only on the set of nodes, not on their order in
/// `nodes`. `min_replicas == 0` is accepted and simply never reports deficits.
pub fn place(
    num_layers: u32,
    costs: &LayerCosts,
    nodes: &[NodeCapacity],
    min_replicas: u32,
) -> Result<Placement, PlacementError> {
    place_with_exact_limit(num_layers, costs, nodes, min_replicas, EXACT_NODE_LIMIT)
}

/// Split out so tests can force the large-instance path on small inputs.
fn place_with_exact_limit(
    num_layers: u32,
    costs: &LayerCosts,
    nodes: &[NodeCapacity],
    min_replicas: u32,
    exact_limit: usize,
) -> Result<Placement, PlacementError> {
    validate(num_layers, costs, nodes)?;
    let l = num_layers;

    let mut order: Vec<&NodeCapacity> = nodes.iter().collect();
    order.sort_by(|a, b| node_order(a, b));
    let caps: Vec<Caps> = order
        .iter()
        .map(|n| Caps::of(n.memory_bytes, l, costs))
        .collect();
    let usable: Vec<usize> = (0..order.len()).filter(|&i| caps[i].worker > 0).collect();

    let lay_out = |groups| layout::lay_out(&order, &caps, &usable, groups, l, min_replicas);

    // The subset DP indexes node sets by bitmask, hence the hard 20-node stop
    // regardless of what a caller asks for.
    if usable.len() <= exact_limit.min(20) {
        return Ok(lay_out(exact::pipeline_groups(&caps, &usable, l)));
    }
    // Each greedy objective has blind spots (see `Objective`), so the others
    // are tried, with ties broken both ways, until one meets the replica
    // target. That costs little: a degraded run formed fewer than
    // `min_replicas` pipelines, so it solved at most that many knapsacks.
    let mut best: Option<Placement> = None;
    let variants = greedy::Objective::ALL
        .into_iter()
        .flat_map(|objective| [(objective, true), (objective, false)]);
    for (objective, big_first) in variants {
        let candidate = lay_out(greedy::pipeline_groups(
            &caps, &usable, l, objective, big_first,
        ));
        if candidate.health.is_healthy() {
            return Ok(candidate);
        }
        if best
            .as_ref()
            .is_none_or(|b| quality(&candidate) > quality(b))
        {
            best = Some(candidate);
        }
    }
    Ok(best.unwrap_or_else(|| lay_out(Vec::new())))
}

/// Fewest missing replicas first, then the most complete pipelines.
fn quality(a: &Placement) -> (std::cmp::Reverse<u32>, usize) {
    let missing = match &a.health {
        Health::Healthy => 0,
        Health::Degraded { total_missing, .. } => *total_missing,
    };
    (std::cmp::Reverse(missing), a.pipelines.len())
}

fn validate(
    num_layers: u32,
    costs: &LayerCosts,
    nodes: &[NodeCapacity],
) -> Result<(), PlacementError> {
    if num_layers == 0 {
        return Err(PlacementError::ZeroLayers);
    }
    if num_layers > MAX_LAYERS {
        return Err(PlacementError::TooManyLayers {
            num_layers,
            max: MAX_LAYERS,
        });
    }
    if costs.layer_bytes == 0 {
        return Err(PlacementError::ZeroLayerBytes);
    }
    let mut ids: Vec<&str> = nodes.iter().map(|n| n.node_id.as_str()).collect();
    ids.sort_unstable();
    // Reporting the smallest duplicate keeps the error independent of input order.
    if let Some(pair) = ids.windows(2).find(|pair| pair[0] == pair[1]) {
        return Err(PlacementError::DuplicateNodeId(pair[0].to_string()));
    }
    Ok(())
}

/// Total order used for every internal tie-break: memory desc, throughput
/// desc, id asc. Ids are unique after validation, so no two nodes compare equal.
fn node_order(a: &NodeCapacity, b: &NodeCapacity) -> Ordering {
    b.memory_bytes
        .cmp(&a.memory_bytes)
        .then_with(|| b.throughput.total_cmp(&a.throughput))
        .then_with(|| a.node_id.cmp(&b.node_id))
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;
    use neuroshard_common::role::Role;
    use proptest::prelude::*;
    use std::time::Instant;

    #[test]
    fn three_three_one_one_forms_two_pipelines() {
        let nodes = vec![node("a", 3), node("b", 3), node("c", 1), node("d", 1)];
        for limit in [EXACT_NODE_LIMIT, 0] {
            let a = place_with_exact_limit(4, &costs(1, 0, 0), &nodes, 2, limit).unwrap();
            check_invariants(4, &costs(1, 0, 0), &nodes, 2, &a);
            assert_eq!(a.pipelines.len(), 2, "limit {limit}: {a:?}");
            assert_eq!(a.holders, vec![2, 2, 2, 2]);
            assert!(a.health.is_healthy());
        }
    }

    #[test]
    fn single_big_node_is_full() {
        let c = costs(10, 5, 7);
        let nodes = vec![node("big", 4 * 10 + 5 + 7)];
        let a = place(4, &c, &nodes, 1).unwrap();
        assert_eq!(
            a.spans,
            vec![NodeSpan {
                node_id: "big".into(),
                start: 0,
                end: 4,
                role: Role::Full
            }]
        );
        assert_eq!(a.pipelines.len(), 1);
        assert!(a.health.is_healthy());
    }

    #[test]
    fn one_byte_short_of_full_is_not_full() {
        let c = costs(10, 5, 7);
        let nodes = vec![node("almost", 4 * 10 + 5 + 7 - 1)];
        let a = place(4, &c, &nodes, 1).unwrap();
        check_invariants(4, &c, &nodes, 1, &a);
        assert!(a.pipelines.is_empty());
        let span = span_of(&a, "almost").unwrap();
        assert_ne!(span.role, Role::Full);
    }

    #[test]
    fn exactly_twice_the_model_gives_two_replicas() {
        let c = costs(10, 5, 5);
        // Each pipeline: driver 3 layers + embedding, worker 2, validator 3 + head.
        let nodes = vec![
            node("d1", 35),
            node("d2", 35),
            node("w1", 20),
            node("w2", 20),
            node("v1", 35),
            node("v2", 35),
        ];
        let a = place(8, &c, &nodes, 2).unwrap();
        check_invariants(8, &c, &nodes, 2, &a);
        assert_eq!(a.pipelines.len(), 2);
        assert_eq!(a.holders, vec![2; 8]);
        assert!(a.health.is_healthy());
    }

    #[test]
    fn insufficient_capacity_reports_exact_deficits() {
        let c = costs(1, 0, 0);
        let nodes = vec![node("full", 4), node("half", 2)];
        let a = place(4, &c, &nodes, 2).unwrap();
        check_invariants(4, &c, &nodes, 2, &a);
        assert_eq!(a.pipelines.len(), 1);
        assert_eq!(a.holders, vec![2, 2, 1, 1]);
        assert_eq!(
            a.health,
            Health::Degraded {
                deficits: vec![
                    LayerDeficit {
                        layer: 2,
                        holders: 1,
                        missing: 1
                    },
                    LayerDeficit {
                        layer: 3,
                        holders: 1,
                        missing: 1
                    },
                ],
                total_missing: 2,
            }
        );
    }

    #[test]
    fn no_nodes_means_every_layer_is_missing_everything() {
        let a = place(3, &costs(1, 0, 0), &[], 2).unwrap();
        assert_eq!(a.holders, vec![0, 0, 0]);
        let Health::Degraded {
            deficits,
            total_missing,
        } = a.health
        else {
            panic!("expected degraded");
        };
        assert_eq!(total_missing, 6);
        assert!(deficits.iter().all(|d| d.holders == 0 && d.missing == 2));
        assert_eq!(deficits.len(), 3);
    }

    #[test]
    fn role_extras_shrink_driver_and_validator_spans() {
        let c = costs(10, 5, 5);
        // "small" fits 4 layers as a worker but only 3 beside the embedding or head.
        let nodes = vec![node("small", 40), node("other", 45)];
        let a = place(7, &c, &nodes, 1).unwrap();
        check_invariants(7, &c, &nodes, 1, &a);
        assert_eq!(a.pipelines.len(), 1);
        let small = span_of(&a, "small").unwrap();
        assert_eq!(small.layer_count(), 3);
        assert!(matches!(small.role, Role::Driver | Role::Validator));
        assert!(a.health.is_healthy());
    }

    #[test]
    fn a_worker_keeps_its_full_layer_count() {
        let c = costs(10, 5, 5);
        let nodes = vec![node("d", 25), node("mid", 40), node("v", 25)];
        let a = place(8, &c, &nodes, 1).unwrap();
        check_invariants(8, &c, &nodes, 1, &a);
        let mid = span_of(&a, "mid").unwrap();
        assert_eq!((mid.start, mid.end, mid.role), (2, 6, Role::Worker));
    }

    #[test]
    fn zero_memory_node_is_unassigned() {
        let c = costs(10, 0, 0);
        let nodes = vec![node("empty", 0), node("tiny", 9), node("ok", 40)];
        let a = place(4, &c, &nodes, 1).unwrap();
        check_invariants(4, &c, &nodes, 1, &a);
        assert_eq!(a.unassigned, vec!["tiny".to_string(), "empty".to_string()]);
    }

    #[test]
    fn one_layer_model_needs_full_nodes() {
        let c = costs(10, 3, 3);
        let nodes = vec![node("full", 16), node("no_room", 15)];
        let a = place(1, &c, &nodes, 1).unwrap();
        check_invariants(1, &c, &nodes, 1, &a);
        assert_eq!(a.pipelines.len(), 1);
        assert_eq!(a.unassigned, vec!["no_room".to_string()]);
    }

    #[test]
    fn spare_capacity_forms_more_pipelines_then_partial_spans() {
        let c = costs(1, 0, 0);
        let mut nodes: Vec<NodeCapacity> = (0..5).map(|i| node(&format!("f{i}"), 4)).collect();
        nodes.push(node("scrap", 1));
        let a = place(4, &c, &nodes, 2).unwrap();
        check_invariants(4, &c, &nodes, 2, &a);
        assert_eq!(a.pipelines.len(), 5);
        assert!(span_of(&a, "scrap").is_some());
        assert_eq!(a.holders.iter().sum::<u32>(), 21);
    }

    #[test]
    fn invalid_inputs_are_errors() {
        let c = costs(1, 0, 0);
        assert_eq!(place(0, &c, &[], 1), Err(PlacementError::ZeroLayers));
        assert_eq!(
            place(4, &costs(0, 0, 0), &[], 1),
            Err(PlacementError::ZeroLayerBytes)
        );
        assert!(matches!(
            place(MAX_LAYERS + 1, &c, &[], 1),
            Err(PlacementError::TooManyLayers { .. })
        ));
        let nodes = vec![node("b", 1), node("a", 1), node("b", 2), node("a", 3)];
        let err = place(4, &c, &nodes, 1).unwrap_err();
        assert_eq!(err, PlacementError::DuplicateNodeId("a".into()));
        assert!(err.to_string().contains("\"a\""));
        assert!(PlacementError::ZeroLayers.to_string().contains("zero"));
    }

    #[test]
    fn input_order_does_not_matter() {
        let c = costs(7, 3, 5);
        let nodes = nodes_from(&[30, 45, 12, 80, 33, 7, 21, 60, 9, 14, 50, 38]);
        let mut reversed = nodes.clone();
        reversed.reverse();
        let a = place(10, &c, &nodes, 2).unwrap();
        check_invariants(10, &c, &nodes, 2, &a);
        assert_eq!(a, place(10, &c, &reversed, 2).unwrap());
    }

    proptest! {
        #[test]
        fn shuffled_input_gives_identical_output(
            (l, c, nodes, shuffled, r) in instance().prop_flat_map(|(l, c, memories, r)| {
                let nodes = nodes_from(&memories);
                (Just(l), Just(c), Just(nodes.clone()), Just(nodes).prop_shuffle(), Just(r))
            })
        ) {
            prop_assert_eq!(place(l, &c, &nodes, r), place(l, &c, &shuffled, r));
            prop_assert_eq!(
                place_with_exact_limit(l, &c, &nodes, r, 0),
                place_with_exact_limit(l, &c, &shuffled, r, 0)
            );
        }
    }

    #[test]
    #[ignore]
    fn bench_assignment_scaling() {
        const GB: u64 = 1_000_000_000;
        let cases = [
            (64, costs(GB, GB / 2, 3 * GB / 2), 2 * GB, 80 * GB),
            (256, costs(GB / 4, GB / 2, 3 * GB / 2), 2 * GB, 80 * GB),
        ];
        // The exact path's worst case: as many usable nodes as it accepts.
        for count in [12, EXACT_NODE_LIMIT] {
            let nodes = simulated_nodes(count, 2 * GB, 40 * GB, 42);
            let c = costs(GB, GB / 2, 3 * GB / 2);
            let started = Instant::now();
            let a = place(64, &c, &nodes, 2).unwrap();
            println!(
                "exact path: L= 64 nodes={count:>6} time={:>10.3?} pipelines={:>5}",
                started.elapsed(),
                a.pipelines.len()
            );
        }
        for (l, c, min, max) in cases {
            for count in [100, 1_000, 10_000] {
                let nodes = simulated_nodes(count, min, max, 42);
                let mut best = None;
                let mut result = None;
                for _ in 0..3 {
                    let started = Instant::now();
                    let a = place(l, &c, &nodes, 2).unwrap();
                    let elapsed = started.elapsed();
                    best = Some(best.map_or(elapsed, |b: std::time::Duration| b.min(elapsed)));
                    result = Some(a);
                }
                let a = result.unwrap();
                check_invariants(l, &c, &nodes, 2, &a);
                let total: u64 = nodes.iter().map(|n| n.memory_bytes).sum();
                let bound = total as f64 / c.span_bytes(l, 0, l) as f64;
                println!(
                    "L={l:>3} nodes={count:>6} time={:>10.3?} pipelines={:>5} (memory bound {:>7.1}) \
                     partial={:>3} unassigned={:>3} min_holders={} healthy={}",
                    best.unwrap(),
                    a.pipelines.len(),
                    bound,
                    a.spans.len() - a.pipelines.iter().map(|p| p.stages.len()).sum::<usize>(),
                    a.unassigned.len(),
                    a.holders.iter().min().unwrap(),
                    a.health.is_healthy(),
                );
            }
        }
    }
}
