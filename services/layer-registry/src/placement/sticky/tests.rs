//! Sticky placement: the churn scenarios seen in the local swarm, the donor and rescue rules,
//! and the property that a join or death moves only what the rules name.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::super::testing::*;
use super::super::{HeldSpan, LayerCosts, NodeCapacity, Placement, place, place_sticky};
use super::max_end;
use crate::placement::fit::Caps;

/// Ten bytes a layer, five for the embedding and for the head: `memory(k)` fits `k` layers
/// beside either end and half a layer to spare, as the local swarm sizes its workers.
fn c() -> LayerCosts {
    costs(10, 5, 5)
}

fn memory(layers: u64) -> u64 {
    layers * 10 + 5 + 5
}

fn held(p: &Placement) -> Vec<HeldSpan> {
    p.spans
        .iter()
        .map(|s| HeldSpan {
            node_id: s.node_id.clone(),
            start: s.start,
            end: s.end,
        })
        .collect()
}

fn spans(p: &Placement) -> BTreeMap<String, (u32, u32)> {
    p.spans
        .iter()
        .map(|s| (s.node_id.clone(), (s.start, s.end)))
        .collect()
}

fn at(spans: &[(&str, u32, u32)]) -> Vec<HeldSpan> {
    spans
        .iter()
        .map(|&(id, start, end)| HeldSpan {
            node_id: id.into(),
            start,
            end,
        })
        .collect()
}

/// Nodes that held a span before and hold another (or none) now.
fn moved(before: &Placement, after: &Placement) -> Vec<String> {
    let after = spans(after);
    spans(before)
        .into_iter()
        .filter(|(id, span)| after.get(id).is_some_and(|now| now != span))
        .map(|(id, _)| id)
        .collect()
}

fn without(nodes: &[NodeCapacity], id: &str) -> Vec<NodeCapacity> {
    nodes.iter().filter(|n| n.node_id != id).cloned().collect()
}

/// `neuroshard up --workers 4`: two holders of [0, 2), two of [2, 4); kill -9 one holder of
/// [0, 2). Placing from scratch moved a healthy holder of [2, 4) over, leaving [2, 4) with one
/// holder (and a second kill with no route). Sticky placement moves nobody: [0, 2) stays at
/// one holder, reported as a deficit, until a node is free to take it.
#[test]
fn killing_a_holder_of_one_span_never_moves_the_holders_of_another() {
    let nodes: Vec<NodeCapacity> = ["a1", "a2", "b1", "b2"]
        .iter()
        .map(|id| node(id, memory(2)))
        .collect();
    let before = place_sticky(4, &c(), &nodes, &[], 2).unwrap();
    check_invariants(4, &c(), &nodes, 2, &before);
    let layout = spans(&before);
    let first: Vec<&String> = layout
        .iter()
        .filter(|(_, s)| s.0 == 0)
        .map(|(id, _)| id)
        .collect();
    assert_eq!(first.len(), 2, "{before:?}");
    assert_eq!(before.holders, vec![2, 2, 2, 2]);

    let survivors = without(&nodes, first[0]);
    let after = place_sticky(4, &c(), &survivors, &held(&before), 2).unwrap();
    check_invariants(4, &c(), &survivors, 2, &after);
    assert!(moved(&before, &after).is_empty(), "moved: {after:?}");
    assert_eq!(after.holders, vec![1, 1, 2, 2]);
    assert!(!after.health.is_healthy());

    // The crashed worker comes back (or a new one joins): it takes the short span, alone.
    let mut rejoined = survivors.clone();
    rejoined.push(node("new", memory(2)));
    let healed = place_sticky(4, &c(), &rejoined, &held(&after), 2).unwrap();
    check_invariants(4, &c(), &rejoined, 2, &healed);
    assert!(moved(&after, &healed).is_empty());
    assert_eq!(spans(&healed)["new"], (0, 2));
    assert!(healed.health.is_healthy());
    assert_eq!(healed.pipelines.len(), 2);
}

/// The acceptance scenario at the pure level: six workers on a 6-layer model (three spans,
/// two holders each); one holder of the middle span dies, then a node joins. Nobody moves;
/// the newcomer takes the span the death left short.
#[test]
fn a_death_then_a_join_change_one_span_in_six_workers() {
    let nodes: Vec<NodeCapacity> = (0..6).map(|i| node(&format!("w{i}"), memory(2))).collect();
    let before = place_sticky(6, &c(), &nodes, &[], 2).unwrap();
    assert_eq!(before.holders, vec![2; 6]);
    assert_eq!(before.pipelines.len(), 2);
    let victim = before
        .spans
        .iter()
        .find(|s| s.start == 2)
        .unwrap()
        .node_id
        .clone();
    let survivors = without(&nodes, &victim);
    let after_death = place_sticky(6, &c(), &survivors, &held(&before), 2).unwrap();
    assert!(moved(&before, &after_death).is_empty());
    assert_eq!(after_death.holders, vec![2, 2, 1, 1, 2, 2]);
    let mut joined = survivors;
    joined.push(node("joiner", memory(2)));
    let after_join = place_sticky(6, &c(), &joined, &held(&after_death), 2).unwrap();
    check_invariants(6, &c(), &joined, 2, &after_join);
    assert!(moved(&after_death, &after_join).is_empty());
    assert_eq!(spans(&after_join)["joiner"], (2, 4));
    assert_eq!(after_join.pipelines.len(), 2);
}

/// A span with three holders may give one up to a span a death left short; one moves, and
/// the span it leaves keeps two.
#[test]
fn a_third_holder_moves_to_cover_a_deficit() {
    let nodes: Vec<NodeCapacity> = ["a1", "a2", "a3", "b1", "b2"]
        .iter()
        .map(|id| node(id, memory(2)))
        .collect();
    let current = at(&[
        ("a1", 0, 2),
        ("a2", 0, 2),
        ("a3", 0, 2),
        ("b1", 2, 4),
        ("b2", 2, 4),
    ]);
    let before = place_sticky(4, &c(), &nodes, &current, 2).unwrap();
    assert_eq!(held(&before).len(), 5);
    assert_eq!(
        spans(&before),
        spans(&place_sticky(4, &c(), &nodes, &held(&before), 2).unwrap())
    );
    let survivors = without(&nodes, "b1");
    let after = place_sticky(4, &c(), &survivors, &held(&before), 2).unwrap();
    check_invariants(4, &c(), &survivors, 2, &after);
    let moved = moved(&before, &after);
    assert_eq!(moved.len(), 1, "{after:?}");
    assert!(moved[0].starts_with('a'));
    assert_eq!(spans(&after)[&moved[0]], (2, 4));
    assert_eq!(after.holders, vec![2, 2, 2, 2]);
}

/// With two holders per span and nobody free, a layer nobody holds any more (no route at
/// all) may take a node from a span that keeps another holder; a layer that keeps one
/// holder may not.
#[test]
fn only_a_layer_nobody_holds_may_take_a_holder_down_to_one() {
    let nodes: Vec<NodeCapacity> = ["a1", "a2", "b1", "b2"]
        .iter()
        .map(|id| node(id, memory(2)))
        .collect();
    let current = at(&[("a1", 0, 2), ("a2", 0, 2), ("b1", 2, 4), ("b2", 2, 4)]);
    let both_gone: Vec<NodeCapacity> = without(&without(&nodes, "b1"), "b2");
    let before = place_sticky(4, &c(), &nodes, &current, 2).unwrap();
    let after = place_sticky(4, &c(), &both_gone, &current, 2).unwrap();
    check_invariants(4, &c(), &both_gone, 2, &after);
    assert_eq!(moved(&before, &after).len(), 1);
    assert_eq!(after.holders, vec![1, 1, 1, 1]);
    assert_eq!(after.pipelines.len(), 1);
}

#[test]
fn windows_only_where_the_node_fits() {
    let caps = Caps {
        cost: 2,
        worker: 2,
        driver: 1,
        validator: 2,
        full: false,
    };
    assert_eq!(max_end(&caps, 0, 4), Some(1));
    assert_eq!(max_end(&caps, 1, 4), Some(3));
    assert_eq!(max_end(&caps, 2, 4), Some(4));
    assert_eq!(max_end(&caps, 3, 4), Some(4));
    let tiny = Caps {
        cost: 0,
        worker: 0,
        driver: 0,
        validator: 0,
        full: false,
    };
    assert!((0..4).all(|s| max_end(&tiny, s, 4).is_none()));
}

/// Missing replicas summed over layers, and layers nobody holds.
fn shortfall(holders: &[u32], r: u32) -> (u32, u32) {
    let missing = holders.iter().map(|&h| r.saturating_sub(h)).sum();
    let unheld = holders.iter().filter(|&&h| h == 0).count() as u32;
    (missing, unheld)
}

fn holders_of(spans: &BTreeMap<String, (u32, u32)>, l: u32) -> Vec<u32> {
    (0..l)
        .map(|k| spans.values().filter(|&&(s, e)| s <= k && k < e).count() as u32)
        .collect()
}

/// Whether a node of `memory` fits some window covering a layer that `wanted` accepts.
fn could_cover(l: u32, c: &LayerCosts, memory: u64, wanted: impl Fn(u32) -> bool) -> bool {
    (0..l).any(|s| (s + 1..=l).any(|e| fits(l, c, memory, s, e) && (s..e).any(&wanted)))
}

#[derive(Debug, Clone)]
enum Event {
    Join(u64),
    Death(usize),
}

/// A swarm's history: the nodes joined one by one (each publish repairing the last), or all
/// placed at once; then one more join or death.
fn churn() -> impl Strategy<Value = (u32, LayerCosts, Vec<u64>, u32, bool, Event)> {
    instance().prop_flat_map(|(l, c, memories, r)| {
        let whole = c.span_bytes(l, 0, l) as u64 + c.layer_bytes;
        let n = memories.len();
        let event = if n == 0 {
            (0..=whole).prop_map(Event::Join).boxed()
        } else {
            prop_oneof![
                (0..=whole).prop_map(Event::Join),
                (0..n).prop_map(Event::Death)
            ]
            .boxed()
        };
        (
            Just(l),
            Just(c),
            Just(memories),
            Just(r),
            any::<bool>(),
            event,
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// For a placement the swarm reached and one join or death:
    /// - nobody is robbed: every layer keeps at least min(r, the holders it had right after
    ///   the event), except that a layer nobody held may take a node down to one holder;
    /// - the nodes whose span changed are exactly the idle nodes that were placed plus the
    ///   donors that moved; a join moves nobody unless a deficit it cannot fill is filled by a
    ///   holder its arrival freed, a death that leaves every layer at r holders moves nobody,
    ///   and (no layer unheld) there are never more moves than missing replicas filled;
    /// - a layer left short could not be covered: no idle node fits it, and no node whose
    ///   layers all keep more than r holders fits it;
    /// - the result repairs to itself (publishing again moves nobody).
    #[test]
    fn a_join_or_death_moves_only_what_it_must(
        (l, c, memories, r, one_by_one, event) in churn()
    ) {
        let mut nodes = nodes_from(&memories);
        let mut before = place_sticky(l, &c, &[], &[], r).unwrap();
        if one_by_one {
            for i in 0..nodes.len() {
                before = place_sticky(l, &c, &nodes[..=i], &held(&before), r).unwrap();
            }
        } else {
            before = place_sticky(l, &c, &nodes, &[], r).unwrap();
        }
        check_invariants(l, &c, &nodes, r, &before);
        let again = place_sticky(l, &c, &nodes, &held(&before), r).unwrap();
        prop_assert_eq!(&again, &before, "repairing a repaired placement changed it");

        let mut new_node = None;
        match event {
            Event::Join(m) => {
                nodes.push(NodeCapacity { node_id: "joiner".into(), memory_bytes: m, throughput: 1.0 });
                new_node = Some(m);
            }
            Event::Death(i) => {
                nodes.remove(i);
            }
        }
        let old = spans(&before);
        let kept: BTreeMap<String, (u32, u32)> = old
            .iter()
            .filter(|(id, _)| nodes.iter().any(|n| &n.node_id == *id))
            .map(|(id, s)| (id.clone(), *s))
            .collect();
        let h0 = holders_of(&kept, l);
        let after = place_sticky(l, &c, &nodes, &held(&before), r).unwrap();
        check_invariants(l, &c, &nodes, r, &after);
        let now = spans(&after);
        let h1 = after.holders.clone();

        let moved: Vec<&String> = kept.keys().filter(|id| now.get(*id) != kept.get(*id)).collect();
        let placed: Vec<&String> = now.keys().filter(|id| !kept.contains_key(*id)).collect();
        let changed = now.iter().filter(|(id, s)| kept.get(*id) != Some(s)).count();
        prop_assert_eq!(changed, moved.len() + placed.len());
        prop_assert!(moved.iter().all(|id| now.contains_key(*id)), "a live node lost its span");

        let (missing0, unheld0) = shortfall(&h0, r);
        let (missing1, unheld1) = shortfall(&h1, r);
        prop_assert!(unheld1 <= unheld0);
        let rescued = unheld1 < unheld0;
        for k in 0..l as usize {
            let floor = if rescued { h0[k].min(1) } else { h0[k].min(r) };
            prop_assert!(h1[k] >= floor, "layer {} robbed: {:?} -> {:?}", k, h0, h1);
        }
        if missing0 == 0 {
            prop_assert!(moved.is_empty(), "moves without a deficit: {:?}", moved);
        }
        if unheld0 == 0 {
            prop_assert!(missing1 <= missing0);
            prop_assert!(moved.len() as u32 <= missing0 - missing1, "{} moves fill {} replicas", moved.len(), missing0 - missing1);
        }
        if let Some(m) = new_node {
            let coverable = could_cover(l, &c, m, |k| h0[k as usize] < r);
            if coverable {
                let (s, e) = now["joiner"];
                prop_assert!((s..e).any(|k| h0[k as usize] < r), "the newcomer ignored the deficit");
            }
            if missing0 == 0 {
                prop_assert!(moved.is_empty());
            }
        }

        // Whatever is still short could not be covered under the rules.
        let short = |k: u32| h1[k as usize] < r;
        for n in &nodes {
            match now.get(&n.node_id) {
                None => prop_assert!(!could_cover(l, &c, n.memory_bytes, short)),
                Some(&(s, e)) => {
                    let fewest = (s..e).map(|k| h1[k as usize]).min().unwrap_or(0);
                    let others = |k: u32| if (s..e).contains(&k) { h1[k as usize] - 1 } else { h1[k as usize] };
                    if fewest > r {
                        prop_assert!(
                            !could_cover(l, &c, n.memory_bytes, |k| others(k) < r),
                            "{} could have moved to a deficit: {:?}", n.node_id, after
                        );
                    }
                    if fewest >= 2 {
                        prop_assert!(!could_cover(l, &c, n.memory_bytes, |k| others(k) == 0));
                    }
                }
            }
        }
        prop_assert_eq!(&place_sticky(l, &c, &nodes, &held(&after), r).unwrap(), &after);
    }
}

/// A scale check for the repair: the greedy from-scratch placement of 1,000 nodes, then
/// one death and one join at a time.
#[test]
#[ignore]
fn bench_sticky_repair() {
    let c = costs(1_000_000_000, 500_000_000, 1_500_000_000);
    for count in [100, 1_000] {
        let nodes = simulated_nodes(count, 2_000_000_000, 40_000_000_000, 7);
        let started = std::time::Instant::now();
        let fresh = place(64, &c, &nodes, 2).unwrap();
        let scratch = started.elapsed();
        let first = place_sticky(64, &c, &nodes, &held(&fresh), 2).unwrap();
        let survivors = without(&nodes, &first.spans[0].node_id);
        let started = std::time::Instant::now();
        let after = place_sticky(64, &c, &survivors, &held(&first), 2).unwrap();
        let death = started.elapsed();
        let mut joined = survivors.clone();
        joined.push(NodeCapacity {
            node_id: "joiner".into(),
            memory_bytes: 20_000_000_000,
            throughput: 1.0,
        });
        let started = std::time::Instant::now();
        let rejoined = place_sticky(64, &c, &joined, &held(&after), 2).unwrap();
        let join = started.elapsed();
        println!(
            "nodes={count:>5} from scratch {scratch:>10.3?}  death {death:>10.3?} (moved {})  join {join:>10.3?} (moved {})",
            moved(&first, &after).len(),
            moved(&after, &rejoined).len(),
        );
    }
}

/// Identical workers joining in any batches (each batch one publish, as registrations
/// arrive between publishes) end with as many pipelines as placing them all at once. Before
/// windows were judged by whether they add a pipeline, four 2-layer workers on a 3-layer
/// model joining three then one ended as [0,2) [0,1) [1,3) [1,3): every layer twice held,
/// one pipeline.
#[test]
fn identical_workers_joining_in_any_batches_form_the_most_pipelines() {
    let c = costs(100, 23, 23);
    for l in 2..=6u32 {
        for layers in 1..=4u64 {
            let memory = layers * 100 + 23 + 50;
            for n in 1..=8usize {
                let all: Vec<NodeCapacity> =
                    (0..n).map(|i| node(&format!("n{i}"), memory)).collect();
                let at_once = place(l, &c, &all, 2).unwrap().pipelines.len();
                // Bit i of `cuts` set: a publish after node i joins; the last always publishes.
                for cuts in 0..(1u32 << (n - 1)) {
                    let mut last = place_sticky(l, &c, &[], &[], 2).unwrap();
                    for i in 0..n {
                        if i == n - 1 || cuts & (1 << i) != 0 {
                            last = place_sticky(l, &c, &all[..=i], &held(&last), 2).unwrap();
                        }
                    }
                    assert_eq!(
                        last.pipelines.len(),
                        at_once,
                        "l={l}, {layers}-layer workers, {n} joining with publishes after {cuts:b}: {:?}",
                        spans(&last)
                    );
                }
            }
        }
    }
}
