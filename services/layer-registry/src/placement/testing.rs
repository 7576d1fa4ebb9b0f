//! Test support for placement: small constructors, an invariant checker written from the
//! problem statement, a brute-force oracle for how many pipelines can exist, and the random
//! instances the property tests draw.

use proptest::prelude::*;

use neuroshard_common::role::Role;

use super::types::{Health, LayerCosts, LayerDeficit, NodeCapacity, NodeSpan, Placement};

pub(super) fn node(id: &str, memory_bytes: u64) -> NodeCapacity {
    NodeCapacity {
        node_id: id.to_string(),
        memory_bytes,
        throughput: 1.0,
    }
}

pub(super) fn costs(layer_bytes: u64, embedding_bytes: u64, head_bytes: u64) -> LayerCosts {
    LayerCosts {
        layer_bytes,
        embedding_bytes,
        head_bytes,
    }
}

pub(super) fn nodes_from(memories: &[u64]) -> Vec<NodeCapacity> {
    memories
        .iter()
        .enumerate()
        .map(|(i, &m)| NodeCapacity {
            node_id: format!("n{i}"),
            memory_bytes: m,
            throughput: (i % 3) as f64,
        })
        .collect()
}

pub(super) fn span_of<'a>(a: &'a Placement, id: &str) -> Option<&'a NodeSpan> {
    a.spans.iter().find(|s| s.node_id == id)
}

/// Written from the problem statement rather than from `span_bytes`, so
/// a mistake there cannot hide itself.
pub(super) fn fits(l: u32, c: &LayerCosts, memory: u64, start: u32, end: u32) -> bool {
    let mut need = u128::from(end - start) * u128::from(c.layer_bytes);
    if start == 0 {
        need += u128::from(c.embedding_bytes);
    }
    if end == l {
        need += u128::from(c.head_bytes);
    }
    need <= u128::from(memory)
}

/// Every structural promise of `Placement`, checked from scratch.
pub(super) fn check_invariants(
    l: u32,
    c: &LayerCosts,
    nodes: &[NodeCapacity],
    r: u32,
    a: &Placement,
) {
    let memory_of = |id: &str| {
        nodes
            .iter()
            .find(|n| n.node_id == id)
            .map(|n| n.memory_bytes)
    };
    let mut seen: Vec<&str> = Vec::new();
    for span in &a.spans {
        assert!(span.start < span.end && span.end <= l, "bad span {span:?}");
        let memory = memory_of(&span.node_id).expect("span for unknown node");
        assert!(
            fits(l, c, memory, span.start, span.end),
            "overfull {span:?}"
        );
        assert_eq!(span.role, Role::for_span(span.start, span.end, l));
        seen.push(&span.node_id);
    }
    for id in &a.unassigned {
        let memory = memory_of(id).expect("unknown unassigned node");
        // Leaving a node idle is only acceptable if no span fits it at all.
        assert!(
            (0..l).all(|k| !fits(l, c, memory, k, k + 1)),
            "node {id} could hold a layer but was left unassigned"
        );
        seen.push(id);
    }
    seen.sort_unstable();
    let mut all: Vec<&str> = nodes.iter().map(|n| n.node_id.as_str()).collect();
    all.sort_unstable();
    assert_eq!(seen, all, "each node must appear exactly once");

    let truth: Vec<u32> = (0..l)
        .map(|k| a.spans.iter().filter(|s| s.contains(k)).count() as u32)
        .collect();
    assert_eq!(a.holders, truth);

    let mut in_pipeline: Vec<&str> = Vec::new();
    for p in &a.pipelines {
        assert!(!p.stages.is_empty());
        let mut at = 0;
        for stage in &p.stages {
            assert_eq!(stage.start, at, "pipeline not contiguous: {p:?}");
            assert!(a.spans.contains(stage), "stage missing from spans");
            in_pipeline.push(&stage.node_id);
            at = stage.end;
        }
        assert_eq!(at, l, "pipeline does not reach the last layer");
    }
    let before = in_pipeline.len();
    in_pipeline.sort_unstable();
    in_pipeline.dedup();
    assert_eq!(before, in_pipeline.len(), "node in two pipelines");

    let expected: Vec<LayerDeficit> = truth
        .iter()
        .enumerate()
        .filter(|(_, h)| **h < r)
        .map(|(k, &h)| LayerDeficit {
            layer: k as u32,
            holders: h,
            missing: r - h,
        })
        .collect();
    match &a.health {
        Health::Healthy => assert!(expected.is_empty()),
        Health::Degraded {
            deficits,
            total_missing,
        } => {
            assert_eq!(deficits, &expected);
            assert_eq!(
                *total_missing,
                expected.iter().map(|d| d.missing).sum::<u32>()
            );
        }
    }
}

/// Can these memories form one pipeline? Straight from the definition.
pub(super) fn group_covers(l: u32, c: &LayerCosts, group: &[u64]) -> bool {
    if group.iter().any(|&m| fits(l, c, m, 0, l)) {
        return true;
    }
    if l < 2 {
        return false;
    }
    let lb = c.layer_bytes;
    for (d, &md) in group.iter().enumerate() {
        for (v, &mv) in group.iter().enumerate() {
            if d == v || !fits(l, c, md, 0, 1) || !fits(l, c, mv, l - 1, l) {
                continue;
            }
            let middle: u64 = group
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != d && *i != v)
                .map(|(_, &m)| m / lb)
                .sum();
            let ends = (md - c.embedding_bytes) / lb + (mv - c.head_bytes) / lb;
            if ends + middle >= u64::from(l) {
                return true;
            }
        }
    }
    false
}

/// Brute force: can the nodes be split into `k` groups that each cover?
/// Adding a node to a group never hurts, so unused nodes need no bucket.
pub(super) fn k_covers_possible(l: u32, c: &LayerCosts, memories: &[u64], k: usize) -> bool {
    fn spread(
        i: usize,
        opened: usize,
        memories: &[u64],
        groups: &mut Vec<Vec<u64>>,
        l: u32,
        c: &LayerCosts,
    ) -> bool {
        if i == memories.len() {
            return groups.iter().all(|g| group_covers(l, c, g));
        }
        // Groups are interchangeable: only open them in order.
        for g in 0..(opened + 1).min(groups.len()) {
            groups[g].push(memories[i]);
            if spread(i + 1, opened.max(g + 1), memories, groups, l, c) {
                return true;
            }
            groups[g].pop();
        }
        false
    }
    if k == 0 {
        return true;
    }
    let mut groups = vec![Vec::new(); k];
    spread(0, 0, memories, &mut groups, l, c)
}

pub(super) fn instance() -> impl Strategy<Value = (u32, LayerCosts, Vec<u64>, u32)> {
    (1u32..=16, 1u64..=4, 0u64..=3, 0u64..=3, 1u32..=3).prop_flat_map(
        |(l, lb_units, emb_units, head_units, r)| {
            let c = costs(lb_units * 10, emb_units * 7, head_units * 7);
            let whole = c.span_bytes(l, 0, l) as u64 + c.layer_bytes;
            let memory = prop_oneof![0..=whole, 0..=whole / 3];
            (
                Just(l),
                Just(c),
                prop::collection::vec(memory, 0..=12),
                Just(r),
            )
        },
    )
}

pub(super) fn lcg(x: u64) -> u64 {
    x.wrapping_mul(6_364_136_223_846_793_005)
        .wrapping_add(1_442_695_040_888_963_407)
}

pub(super) fn simulated_nodes(count: usize, min: u64, max: u64, seed: u64) -> Vec<NodeCapacity> {
    let mut x = seed;
    (0..count)
        .map(|i| {
            x = lcg(x);
            NodeCapacity {
                node_id: format!("node-{i:05}"),
                memory_bytes: min + (x >> 11) % (max - min + 1),
                throughput: ((x >> 3) % 1000) as f64,
            }
        })
        .collect()
}
