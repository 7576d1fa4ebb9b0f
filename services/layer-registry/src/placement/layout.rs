//! From chosen node groups to spans: each pipeline's layers are split over its stages as
//! evenly as their limits allow, leftover nodes get the partial span over the layers with the
//! fewest holders, and health is counted from the final spans.

use neuroshard_common::role::Role;

use super::fit::Caps;
use super::types::{Health, LayerDeficit, NodeCapacity, NodeSpan, Pipeline, Placement};

/// Lays out the chosen pipelines (`groups` of node indices in stage order), then hands
/// leftover nodes partial spans.
pub(super) fn lay_out(
    order: &[&NodeCapacity],
    caps: &[Caps],
    usable: &[usize],
    groups: Vec<Vec<usize>>,
    l: u32,
    min_replicas: u32,
) -> Placement {
    let mut assigned = vec![false; order.len()];
    let mut spans = Vec::with_capacity(order.len());
    let mut pipelines = Vec::with_capacity(groups.len());
    let mut holders = vec![0u32; l as usize];
    for group in groups {
        let limits = stage_limits(caps, &group, l);
        let parts = split_layers(&limits, l);
        let mut stages = Vec::with_capacity(group.len());
        let mut start = 0;
        for (&node, &len) in group.iter().zip(&parts) {
            let end = start + len;
            stages.push(make_span(order[node], start, end, l));
            add_holder(&mut holders, start, end);
            assigned[node] = true;
            start = end;
        }
        spans.extend(stages.iter().cloned());
        pipelines.push(Pipeline { stages });
    }

    for &node in usable {
        if assigned[node] {
            continue;
        }
        if let Some((start, end)) = best_partial_window(&caps[node], &holders, l, min_replicas) {
            spans.push(make_span(order[node], start, end, l));
            add_holder(&mut holders, start, end);
            assigned[node] = true;
        }
    }

    let unassigned = order
        .iter()
        .zip(&assigned)
        .filter(|(_, done)| !**done)
        .map(|(n, _)| n.node_id.clone())
        .collect();
    // Recounted from the final spans so the reported numbers cannot drift
    // from what was actually assigned.
    let holders = count_holders(&spans, l);
    let health = health_of(&holders, min_replicas);
    Placement {
        spans,
        unassigned,
        pipelines,
        holders,
        health,
    }
}

/// Per-stage layer limits of a covering group in stage order.
fn stage_limits(caps: &[Caps], stages: &[usize], l: u32) -> Vec<u32> {
    let last = stages.len().saturating_sub(1);
    stages
        .iter()
        .enumerate()
        .map(|(position, &node)| match position {
            _ if last == 0 => l,
            0 => caps[node].driver,
            p if p == last => caps[node].validator,
            _ => caps[node].worker,
        })
        .collect()
}

/// Splits `L` layers over stages with the given limits, trimming the slack
/// from the largest stages first so stage loads end up as even as possible.
/// Callers guarantee the limits sum to at least `L`, every limit is at least
/// one and there are at most `L` stages.
fn split_layers(limits: &[u32], l: u32) -> Vec<u32> {
    let mut parts: Vec<u32> = limits.iter().map(|&c| c.min(l)).collect();
    let total: u64 = parts.iter().map(|&p| u64::from(p)).sum();
    let mut excess = total.saturating_sub(u64::from(l));
    while excess > 0 {
        let Some((index, _)) = parts
            .iter()
            .enumerate()
            .filter(|(_, p)| **p > 1)
            .max_by_key(|(index, p)| (**p, std::cmp::Reverse(*index)))
        else {
            break;
        };
        parts[index] -= 1;
        excess -= 1;
    }
    parts
}

/// The span a leftover node should take: the one covering the most layers at
/// the current minimum holder count, then the most layers below `r`, then the
/// most layers. Only maximal windows are scored since any shorter window is
/// contained in one of them and can never score higher.
fn best_partial_window(caps: &Caps, holders: &[u32], l: u32, r: u32) -> Option<(u32, u32)> {
    let min_level = holders.iter().copied().min().unwrap_or(0);
    let mut at_min = Vec::with_capacity(holders.len() + 1);
    let mut below_r = Vec::with_capacity(holders.len() + 1);
    at_min.push(0u32);
    below_r.push(0u32);
    for &h in holders {
        at_min.push(at_min[at_min.len() - 1] + u32::from(h == min_level));
        below_r.push(below_r[below_r.len() - 1] + u32::from(h < r));
    }
    let score = |start: u32, end: u32| {
        let (a, b) = (start as usize, end as usize);
        (at_min[b] - at_min[a], below_r[b] - below_r[a], end - start)
    };

    let mut windows = Vec::new();
    if caps.full {
        windows.push((0, l));
    }
    if l >= 2 && caps.driver > 0 {
        windows.push((0, caps.driver.min(l - 1)));
    }
    if l >= 3 && caps.worker > 0 {
        let len = caps.worker.min(l - 2);
        windows.extend((1..l - len).map(|start| (start, start + len)));
    }
    if l >= 2 && caps.validator > 0 {
        windows.push((l - caps.validator.min(l - 1), l));
    }
    // `min_by_key` keeps the first of equal keys: ties go to the earliest window.
    windows
        .into_iter()
        .min_by_key(|&(start, end)| std::cmp::Reverse(score(start, end)))
}

pub(super) fn make_span(node: &NodeCapacity, start: u32, end: u32, l: u32) -> NodeSpan {
    NodeSpan {
        node_id: node.node_id.clone(),
        start,
        end,
        role: Role::for_span(start, end, l),
    }
}

fn add_holder(holders: &mut [u32], start: u32, end: u32) {
    for h in &mut holders[start as usize..end as usize] {
        *h += 1;
    }
}

pub(super) fn count_holders(spans: &[NodeSpan], l: u32) -> Vec<u32> {
    let mut delta = vec![0i64; l as usize + 1];
    for span in spans {
        delta[span.start as usize] += 1;
        delta[span.end as usize] -= 1;
    }
    let mut running = 0i64;
    delta[..l as usize]
        .iter()
        .map(|d| {
            running += d;
            running as u32
        })
        .collect()
}

pub(super) fn health_of(holders: &[u32], min_replicas: u32) -> Health {
    let deficits: Vec<LayerDeficit> = holders
        .iter()
        .enumerate()
        .filter(|(_, h)| **h < min_replicas)
        .map(|(layer, &h)| LayerDeficit {
            layer: layer as u32,
            holders: h,
            missing: min_replicas - h,
        })
        .collect();
    if deficits.is_empty() {
        Health::Healthy
    } else {
        let total_missing = deficits.iter().map(|d| d.missing).sum();
        Health::Degraded {
            deficits,
            total_missing,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slack_is_trimmed_from_the_largest_stages_first() {
        // 12 layers of room for 8: ties go to the earlier stage, so the 5 and the 4 shrink
        // to 3 first, then the first stage gives up one more.
        assert_eq!(split_layers(&[5, 3, 4], 8), vec![2, 3, 3]);
        assert_eq!(split_layers(&[8], 8), vec![8]);
        // No stage drops below one layer, even when that leaves slack.
        assert_eq!(split_layers(&[1, 9], 2), vec![1, 1]);
    }

    #[test]
    fn holders_are_counted_from_spans() {
        let span = |start, end| NodeSpan {
            node_id: format!("{start}-{end}"),
            start,
            end,
            role: Role::for_span(start, end, 4),
        };
        let spans = [span(0, 4), span(0, 2), span(1, 3)];
        assert_eq!(count_holders(&spans, 4), vec![2, 3, 2, 1]);
        assert_eq!(
            health_of(&[2, 3, 2, 1], 2),
            Health::Degraded {
                deficits: vec![LayerDeficit {
                    layer: 3,
                    holders: 1,
                    missing: 1
                }],
                total_missing: 1,
            }
        );
        assert!(health_of(&[2, 3, 2, 1], 1).is_healthy());
    }

    #[test]
    fn a_leftover_node_covers_the_least_held_layers_it_can() {
        let caps = Caps {
            cost: 2,
            worker: 2,
            driver: 1,
            validator: 1,
            full: false,
        };
        // Layers 2 and 3 have one holder; as a worker the node covers 1..3 (one of them, and
        // the most layers), as a validator only 3..4.
        assert_eq!(
            best_partial_window(&caps, &[2, 2, 1, 1], 4, 2),
            Some((1, 3))
        );
        // Only layer 0 is short: the driver window is the one that reaches it.
        assert_eq!(
            best_partial_window(&caps, &[1, 2, 2, 2], 4, 2),
            Some((0, 1))
        );
    }
}
